"""The condensed compute path (DynamicSparsity(compute="condensed")) against the masked one.

Same algorithm: in float64 both paths make the same topology decisions after every update
and end at the same weights and optimizer state (<= 1e-9 relative) over >= 5 updates, for
the mlp and a small cnn, SGD and AdamW, both update loops, grow-score windows of 1 and 3
mini-batches, with ablation (neurons leaving and coming back) and without; and for RigL,
SET and static, condensed padded to each layer's largest fan-in, with the padding slots'
values and optimizer state exactly 0 after every step.
"""

import numpy as np
import pytest
from scripts import load_script

from srigl_np.dst import GrowScore
from srigl_np.dst.sparsity import DynamicSparsity, train_step
from srigl_np.nn import condensed_compute
from srigl_np.nn.layers import Conv2d, Linear, Sequential
from srigl_np.nn.models import build, cnn_layers
from srigl_np.nn.optim import SGD, AdamW

STEPS, DELTA, T_END = 18, 3, 17   # updates at steps 3, 6, 9, 12, 15


def _grow_score(compute):
    """The dense gradient the condensed layer kept for the grow score, read whole."""
    score = GrowScore(compute.shape, compute.layer.params["weight"].dtype, 1)
    compute.add_grow_term(score)
    return score.dense()

def _model(name, dtype=np.float64):
    rng = np.random.default_rng(1)
    if name == "mlp":
        return build("mlp", rng=rng, dtype=dtype)
    model = cnn_layers((4, 8), 16, rng=rng, dtype=dtype)
    model.set_rng(np.random.default_rng(2))
    return model


def _run(compute, model_name, *, method="srigl", optimizer="sgd", nesterov=False, ga=1,
         on_update="step", gamma_sal=0.3, ablation=True, sparsity=0.9, dtype=np.float64):
    model = _model(model_name, dtype)
    params = model.named_parameters()
    opt = (SGD(params, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=5e-4)
           if optimizer == "sgd" else AdamW(params, lr=0.01))
    ds = DynamicSparsity(model, opt, method=method, sparsity=sparsity, delta=DELTA,
                         t_end=T_END, gamma_sal=gamma_sal, ablation=ablation, seed=3,
                         optimizer_on_update=on_update, grad_accumulation=ga,
                         compute=compute)
    rng = np.random.default_rng(5)
    masks, paths = [], [sorted(ds.condensed)]
    for step in range(STEPS):
        model.set_rng(np.random.default_rng([7, step]))
        x = rng.standard_normal((8, 1, 28, 28)).astype(dtype)
        y = rng.integers(0, 10, 8)
        if train_step(model, opt, ds, x, y, step)[1]:
            masks.append({k: m.copy() for k, m in ds.masks.items()})
            paths.append(sorted(ds.condensed))
        _assert_padding_is_zero(ds, opt)
    with ds.dense_view():
        params = {k: v.copy() for k, v in model.named_parameters().items()}
        state = {(k, key): a.copy() for k, s in opt.state.items() for key, a in s.items()}
    return ds, masks, params, state, paths


def _assert_padding_is_zero(ds, opt):
    """Every padding slot's value, gradient and optimizer state is exactly 0."""
    for name, compute in ds.condensed.items():
        if compute.valid is None:
            continue
        padding = ~compute.valid
        arrays = {"value": compute.layer.params["weight"],
                  "grad": compute.layer.grads["weight"], **opt.state[name]}
        for key, array in arrays.items():
            assert not array[padding].any(), (name, key)


def _relative(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))


def _assert_same_run(masked, condensed, n_updates):
    assert len(masked[1]) == len(condensed[1]) == n_updates
    for before, after in zip(masked[1], condensed[1]):
        assert before.keys() == after.keys()
        for name in before:
            assert np.array_equal(before[name], after[name]), name
    for name, value in masked[2].items():
        assert _relative(value, condensed[2][name]) <= 1e-9, name
    for key, value in masked[3].items():
        assert _relative(value, condensed[3][key]) <= 1e-9, key
    assert masked[0].audit_records == condensed[0].audit_records


CASES = {
    "sgd": {},
    "sgd-nesterov-skip-window3": {"nesterov": True, "on_update": "skip", "ga": 3},
    "adamw-window3": {"optimizer": "adamw", "ga": 3},
    "adamw-skip": {"optimizer": "adamw", "on_update": "skip"},
    "ablation": {"gamma_sal": 0.9},
    "no-ablation": {"ablation": False, "sparsity": 0.95},
}


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_condensed_path_makes_the_masked_paths_decisions(model_name, case):
    masked = _run("masked", model_name, **CASES[case])
    condensed = _run("condensed", model_name, **CASES[case])
    ds = condensed[0]
    assert ds.condensed and all(c == "condensed" for c in map(ds.compute_of, ds.condensed))
    assert all(compute.valid is None for compute in ds.condensed.values())   # no padding
    _assert_same_run(masked, condensed, 5)


UNSTRUCTURED_CASES = {
    "rigl-sgd": {"method": "rigl"},
    "rigl-nesterov-window3": {"method": "rigl", "nesterov": True, "ga": 3},
    "rigl-adamw-window3-skip": {"method": "rigl", "optimizer": "adamw", "ga": 3,
                                "on_update": "skip"},
    "rigl-98": {"method": "rigl", "sparsity": 0.98},   # neurons left with no weight
    "set-nesterov": {"method": "set", "nesterov": True},
    "set-adamw": {"method": "set", "optimizer": "adamw"},
    "static-nesterov": {"method": "static", "nesterov": True},
    "static-adamw": {"method": "static", "optimizer": "adamw"},
}


@pytest.fixture
def always_padded(monkeypatch):
    """Every padded layer condensed, however much padding it carries."""
    for kind in condensed_compute.PADDED_SLOT_LIMIT:
        monkeypatch.setitem(condensed_compute.PADDED_SLOT_LIMIT, kind, 1.0)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("case", list(UNSTRUCTURED_CASES))
def test_unstructured_methods_run_condensed_padded_to_the_masked_paths_decisions(
        model_name, case, always_padded):
    masked = _run("masked", model_name, **UNSTRUCTURED_CASES[case])
    condensed = _run("condensed", model_name, **UNSTRUCTURED_CASES[case])
    ds = condensed[0]
    assert all(path == sorted(ds.condensed_candidates()) for path in condensed[4])
    padded = [c for c in ds.condensed.values() if c.valid is not None]
    assert padded and all(0 < c.padding_fraction() < 1 for c in padded)
    _assert_same_run(masked, condensed, 0 if ds.method == "static" else 5)


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("case", ["rigl-sgd", "rigl-adamw-window3-skip", "set-adamw"])
def test_layers_whose_padding_stops_paying_switch_to_masked_and_back(model_name, case):
    """With the real PADDED_SLOT_LIMIT, layers change path at updates as their masks
    drift; the run still makes the masked path's decisions."""
    masked = _run("masked", model_name, **UNSTRUCTURED_CASES[case])
    condensed = _run("condensed", model_name, **UNSTRUCTURED_CASES[case])
    ds = condensed[0]
    layers = ds._weight_layers()
    for path, masks in zip(condensed[4][1:], condensed[1]):
        assert set(path) == {name for name in ds.condensed_candidates()
                             if condensed_compute.worth_padding(layers[name], masks[name])}
    _assert_same_run(masked, condensed, 5)


def test_a_layer_changes_path_at_an_update_both_ways():
    paths = [set(path) for path in _run("condensed", "mlp", method="rigl", sparsity=0.98)[4]]
    assert any(a - b for a, b in zip(paths, paths[1:])), paths   # condensed -> masked
    assert any(b - a for a, b in zip(paths, paths[1:])), paths   # masked -> condensed


def test_worth_padding_keeps_a_padded_layer_condensed_up_to_its_slot_limit():
    layer = Linear(10, 4, rng=np.random.default_rng(0))
    limit = condensed_compute.PADDED_SLOT_LIMIT[Linear]
    mask = np.zeros((4, 10), dtype=bool)
    assert not condensed_compute.worth_padding(layer, mask)   # nothing to condense
    mask[:, :9] = True   # constant fan-in, no padding: always
    assert condensed_compute.worth_padding(layer, mask)
    mask[:] = False
    mask[0, :int(limit * 10)] = True
    mask[1:, 0] = True   # 4 rows padded to k: 4 * k slots = limit * 40
    assert condensed_compute.worth_padding(layer, mask)
    mask[0, int(limit * 10)] = True   # one slot more per row: past the limit
    assert not condensed_compute.worth_padding(layer, mask)
    conv = Conv2d(2, 4, 3, rng=np.random.default_rng(1))
    conv_mask = np.zeros((4, 2, 3, 3), dtype=bool)
    conv_mask.reshape(4, -1)[0, :7] = True
    conv_mask.reshape(4, -1)[1:, 0] = True   # 4 * 7 of 72 slots: within Conv2d's limit
    assert (4 * 7 <= condensed_compute.PADDED_SLOT_LIMIT[Conv2d] * 72
            ) is condensed_compute.worth_padding(conv, conv_mask) is True


def test_ablated_neurons_leave_the_arrays_and_come_back():
    ds = _run("condensed", "mlp", gamma_sal=0.9)[0]
    name = "1.weight"
    ablated = [set(r["ablated"]) for r in ds.audit_records if r["layer"] == name]
    assert any(a - b for a, b in zip(ablated, ablated[1:])), "no neuron came back"
    compute = ds.condensed[name]
    assert set(compute.rows) == set(range(300)) - ablated[-1]
    assert compute.layer.params["weight"].shape == (len(compute.rows), ds.audit_records[-2]
                                                    ["fan_in_after"][0])


def test_an_ablated_neurons_output_is_its_bias_and_its_bias_trains():
    rng = np.random.default_rng(0)
    layer = Linear(6, 4, rng=rng, dtype=np.float64)
    layer.params["bias"][:] = [1.0, 2.0, 3.0, 4.0]
    mask = np.zeros((4, 6), dtype=bool)
    mask[[0, 2], :3] = True   # neurons 1 and 3 ablated
    weight = layer.params["weight"] * mask
    dense = Linear(6, 4, rng=rng, dtype=np.float64)
    dense.params["weight"][...] = weight
    dense.params["bias"][...] = layer.params["bias"]
    compute = condensed_compute.attach(layer, weight, mask)
    assert list(compute.rows) == [0, 2] and compute.indices.shape == (2, 3)
    x = rng.standard_normal((5, 6))
    y = layer.forward(x, training=True)
    np.testing.assert_allclose(y, dense.forward(x, training=True), rtol=1e-12)
    np.testing.assert_array_equal(y[:, 1], 2.0)
    g = rng.standard_normal((5, 4))
    compute.want_dense_grad = True
    dx = layer.backward(g)
    np.testing.assert_allclose(dx, dense.backward(g), rtol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], g.sum(0), rtol=1e-12)
    np.testing.assert_allclose(_grow_score(compute), dense.grads["weight"], rtol=1e-12)
    np.testing.assert_allclose(layer.grads["weight"], compute.gather(dense.grads["weight"]),
                               rtol=1e-12)


def test_a_condensed_conv_matches_the_dense_one_with_an_ablated_channel():
    rng = np.random.default_rng(4)
    layer = Conv2d(3, 5, 3, stride=2, padding=1, rng=rng, dtype=np.float64)
    dense = Conv2d(3, 5, 3, stride=2, padding=1, rng=rng, dtype=np.float64)
    mask = np.zeros((5, 3, 3, 3), dtype=bool)
    for r in (0, 1, 3, 4):   # channel 2 ablated; 7 taps each
        mask[r].flat[rng.choice(27, 7, replace=False)] = True
    layer.params["bias"][:] = rng.standard_normal(5)
    dense.params["bias"][...] = layer.params["bias"]
    weight = layer.params["weight"] * mask
    dense.params["weight"][...] = weight
    compute = condensed_compute.attach(layer, weight, mask)
    x = rng.standard_normal((2, 3, 7, 7))
    np.testing.assert_allclose(layer.forward(x, True), dense.forward(x, True), rtol=1e-12)
    g = rng.standard_normal((2, 5, 4, 4))
    compute.want_dense_grad = True
    np.testing.assert_allclose(layer.backward(g), dense.backward(g), rtol=1e-12)
    np.testing.assert_allclose(_grow_score(compute), dense.grads["weight"], rtol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], dense.grads["bias"], rtol=1e-12)
    np.testing.assert_allclose(compute.expand(layer.grads["weight"]),
                               dense.grads["weight"] * mask, rtol=1e-12, atol=1e-15)


def test_condense_rows_is_canonical_and_refuses_a_ragged_mask():
    mask = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=bool)
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) * mask
    rows, indices, values = condensed_compute.condense_rows(weight, mask)
    assert rows.tolist() == [0, 2] and indices.tolist() == [[1, 2], [0, 3]]
    assert indices.dtype == np.int16 and values.tolist() == [[1, 2], [8, 11]]
    mask[2, 2] = True
    with pytest.raises(ValueError, match="one fan-in"):
        condensed_compute.condense_rows(weight, mask)
    with pytest.raises(ValueError, match="no active neuron"):
        condensed_compute.condense_rows(weight, np.zeros_like(mask))
    wide = np.zeros((1, 40000), dtype=bool)
    wide[0, [5, 39999]] = True
    assert condensed_compute.condense_rows(wide.astype(np.float32), wide)[1].dtype == np.int32


def _padded_case():
    """A hand-worked ragged mask: counts 3, 0 (ablated), 1, 2 and 5 = F."""
    mask = np.array([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 1],
                     [1, 1, 1, 1, 1]], dtype=bool)
    return mask, (np.arange(25, dtype=np.float64).reshape(5, 5) + 1) * mask


def test_condense_rows_padded_fills_each_row_with_its_lowest_unused_columns():
    mask, weight = _padded_case()
    rows, indices, values, valid = condensed_compute.condense_rows_padded(weight, mask)
    assert rows.tolist() == [0, 2, 3, 4]   # row 1 holds nothing: not in the arrays
    # k = F = 5: the full row; the others padded at their lowest unused columns,
    # merged into ascending order.
    assert indices.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4],
                                [0, 1, 2, 3, 4]]
    assert valid.tolist() == mask[rows].tolist()
    assert values.tolist() == (weight[rows]).tolist()
    short = mask[:4, :3]   # counts 2, 0, 0, 1: k = 2 < F
    rows, indices, values, valid = condensed_compute.condense_rows_padded(
        weight[:4, :3], short)
    assert rows.tolist() == [0, 3] and indices.tolist() == [[1, 2], [0, 1]]
    assert valid.tolist() == [[True, True], [True, False]] and values.tolist() == [[2, 3], [16, 0]]
    assert indices.dtype == np.int16 and values.dtype == np.float64
    with pytest.raises(ValueError, match="no active neuron"):
        condensed_compute.condense_rows_padded(weight, np.zeros_like(mask))


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
def test_a_padded_layout_is_canonical_distinct_and_round_trips(sparsity):
    from srigl_np import dst
    from srigl_np.training_kernels import check_topology

    rng = np.random.default_rng(int(sparsity * 100))
    mask = dst.random_mask((64, 3, 3, 3), sparsity, rng)
    weight = rng.standard_normal(mask.shape) * mask
    rows, indices, values, valid = condensed_compute.condense_rows_padded(weight, mask)
    counts = mask.reshape(64, -1).sum(axis=1)
    assert rows.tolist() == np.flatnonzero(counts).tolist()
    assert indices.shape == (rows.size, counts.max())
    check_topology(indices, 27)   # distinct within each row, in range
    assert (np.diff(indices, axis=1) > 0).all()   # ascending
    flat = mask.reshape(64, -1)
    assert np.array_equal(valid, flat[rows[:, None], indices])   # padding: outside the mask
    assert np.array_equal(valid.sum(axis=1), counts[rows]) and not values[~valid].any()
    # Canonical: a function of the mask, whatever the weight's values.
    again = condensed_compute.condense_rows_padded(rng.standard_normal(mask.shape) * mask, mask)
    assert np.array_equal(again[1], indices) and np.array_equal(again[3], valid)
    layer = Conv2d(3, 64, 3, rng=rng, dtype=np.float64)
    compute = condensed_compute.attach(layer, weight, mask, padded=True)
    assert np.array_equal(compute.dense_weight(), weight)
    dense = rng.standard_normal(mask.shape)
    gathered = compute.gather(dense)
    assert not gathered[~valid].any() and np.array_equal(gathered[valid], dense.reshape(64, -1)[
        rows[:, None], indices][valid])
    assert np.array_equal(compute.expand(gathered), dense * mask)
    assert compute.padding_fraction() == pytest.approx((~valid).mean())


def test_a_padded_layers_padding_gets_no_gradient_and_its_products_are_the_dense_ones():
    rng = np.random.default_rng(6)
    mask, _ = _padded_case()
    layer = Linear(5, 5, rng=rng, dtype=np.float64)
    dense = Linear(5, 5, rng=rng, dtype=np.float64)
    weight = rng.standard_normal((5, 5)) * mask
    dense.params["weight"][...] = weight
    dense.params["bias"][...] = layer.params["bias"]
    compute = condensed_compute.attach(layer, weight, mask, padded=True)
    x = rng.standard_normal((7, 5))
    np.testing.assert_allclose(layer.forward(x, True), dense.forward(x, True), rtol=1e-12)
    g = rng.standard_normal((7, 5))
    compute.want_dense_grad = True
    np.testing.assert_allclose(layer.backward(g), dense.backward(g), rtol=1e-12)
    assert not layer.grads["weight"][~compute.valid].any()
    np.testing.assert_allclose(compute.expand(layer.grads["weight"]),
                               dense.grads["weight"] * mask, rtol=1e-12)
    np.testing.assert_allclose(_grow_score(compute), dense.grads["weight"], rtol=1e-12)
    # Unpadded, a ragged mask is refused.
    with pytest.raises(ValueError, match="one fan-in"):
        condensed_compute.attach(Linear(5, 5, rng=rng), weight, mask)


def test_every_sparse_linear_and_conv_layer_is_condensed_and_the_plan_gives_its_padding(
        always_padded):
    model = _model("cnn")
    opt = SGD(model.named_parameters(), lr=0.1)
    ds = DynamicSparsity(model, opt, method="rigl", sparsity=0.9, t_end=10, compute="condensed")
    assert set(ds.condensed) == set(ds.names)
    for p in ds.plan():
        compute = ds.condensed[p["layer"]]
        assert p["compute"] == "condensed"
        assert p["padding"] == pytest.approx(compute.padding_fraction(), abs=1e-12)
        assert p["slots"] == compute.indices.size / ds.masks[p["layer"]].size
        low, high = p["fan_in"]
        assert compute.indices.shape[1] == high
        assert (p["padding"] > 0) == (low < high)
    ds = DynamicSparsity(_model("cnn"), SGD(_model("cnn").named_parameters(), lr=0.1),
                         method="static", sparsity=0.9)
    assert ds.compute == "masked"
    with pytest.raises(ValueError, match="compute must be one of"):
        DynamicSparsity(model, opt, method="srigl", t_end=10, compute="sparse")
    grouped = Sequential(Conv2d(4, 4, 3, groups=2, rng=np.random.default_rng(0)),
                         Linear(4, 2, rng=np.random.default_rng(1)))
    assert not condensed_compute.condensable(grouped["0"])
    with pytest.raises(TypeError, match="groups-1 Conv2d"):
        condensed_compute.attach(grouped["0"], grouped["0"].params["weight"],
                                 np.ones((4, 2, 3, 3), dtype=bool))


def test_optimizer_rebind_checks_its_arguments():
    p = {"w": np.ones(3)}
    opt = SGD(p, lr=0.1, momentum=0.9)
    with pytest.raises(KeyError, match="no parameter 'v'"):
        opt.rebind("v", np.ones(2))
    with pytest.raises(ValueError, match="state keys"):
        opt.rebind("w", np.ones(2), {"exp_avg": np.ones(2)})
    opt.rebind("w", np.ones(2))
    assert opt.state["w"]["momentum_buffer"].shape == (2,)


def test_a_step_outside_a_window_touches_nothing_of_the_dense_size():
    """A 4096 x 4096 layer at 99%: dense weights are 64 MiB (float32); a condensed step
    allocates under 2 MiB, one inside a grow-score window too, and the update under
    twice the dense weight. The layer, the step and the measurement are
    benchmarks/update_memory.py's, which reports the figures."""
    script = load_script("benchmarks/update_memory.py")
    model, opt, ds, rng = script.build(4096, 4096, 0.99, 2, "condensed")
    # 1 is kept dense (k = F): a Linear of that kind stays on the dense GEMM.
    assert list(ds.condensed) == ["0.weight"] and ds.compute_of("1.weight") == "masked"
    x = rng.standard_normal((4, 4096)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    script.step(model, opt, ds, x, y, 0)   # warm-up: the kernels' buffers
    # Steps 1-8 need no grow score, 9 is in the window of the update at 10 (its dy and
    # x are kept, not dy^T x), 10 updates in row blocks of 1024 x 4096 (16 MiB): a few
    # blocks, never a dense-sized array per step as the masked path's update (~530 MiB
    # here when the condensed update expanded to dense).
    peaks = [script.step(model, opt, ds, x, y, index)[0] for index in range(1, 12)]
    assert max(peaks[:9] + peaks[10:]) < 2 * 2**20, peaks
    assert peaks[9] < 2 * 64 * 2**20, peaks
    assert ds.audit_records[-1]["step"] == 10 and ds.audit_records[-1]["pruned"] > 0


@pytest.mark.parametrize("compute", ["masked", "condensed"])
def test_runs_of_either_path_audit_condense_and_explain_alike(tmp_path, compute, capsys):
    from srigl_np import audit, condense, explain, train, train_config

    out = tmp_path / compute
    args = train_config.make_parser().parse_args(
        ["--dataset", "embedded", "--epochs", "1", "--delta", "10", "--sparsity", "0.99",
         "--gamma-sal", "0.7", "--compute", compute, "--out", str(out), "--progress", "off"])
    config = train_config.config_from_args(args)
    metrics = train.train(config, log=lambda line: None)
    assert metrics["config"]["compute"] == compute and metrics["test_accuracy"] > 0.5
    assert audit.main([str(out)]) == 0
    assert condense.main([str(out), "--out", str(tmp_path / f"{compute}.npz")],
                         log=lambda line: None) == 0
    assert explain.main(["--checkpoint", str(out), "--layer", "1.weight"]) == 0
    assert "ablated" in capsys.readouterr().out


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("case", ["ablation", "adamw-window3"])
def test_the_condensed_update_in_many_row_blocks_makes_the_same_decisions(
        monkeypatch, model_name, case):
    """With gradient blocks of a single row (the default covers these layers in one), the
    grow score is read in up to hundreds of blocks: still the masked path's decisions."""
    from srigl_np.dst import masks
    monkeypatch.setattr(masks, "_BLOCK_ENTRIES", 1)
    masked = _run("masked", model_name, **CASES[case])
    condensed = _run("condensed", model_name, **CASES[case])
    assert all(score.block_rows == 1 for score in condensed[0].grow_scores.values())
    _assert_same_run(masked, condensed, 5)
