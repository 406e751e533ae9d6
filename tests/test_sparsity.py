"""DynamicSparsity: masks at start, the update schedule, optimizer-state clearing, ITOP,
audit records, and invariant failures raised as exceptions."""

from dataclasses import replace

import numpy as np
import pytest

from srigl_np import dst
from srigl_np.dst import sparsity as sparsity_module
from srigl_np.dst.trail import KEYS, check_record
from srigl_np.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential, kaiming_normal
from srigl_np.nn.losses import softmax_cross_entropy
from srigl_np.nn.optim import SGD, AdamW
from srigl_np.dst.sparsity import DynamicSparsity, sparse_parameter_names


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return Sequential(Conv2d(1, 4, 3, rng=rng), ReLU(), Flatten(),
                      Linear(4 * 6 * 6, 32, rng=rng), ReLU(), Linear(32, 5, rng=rng))


def _batch(seed=1, n=16):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, n)


def _train(model, optimizer, ds, steps):
    """The trainer's loop body, on one fixed batch; returns the audit records."""
    x, y = _batch()
    records = []
    for step in range(steps):
        logits = model.forward(x, training=True)
        _, grad = softmax_cross_entropy(logits, y)
        model.backward(grad)
        grads = model.named_grads()
        if ds.before_step(step, grads):
            optimizer.step(grads)
        records += ds.after_step(step, grads)
    return records


def test_sparse_parameters_are_linear_and_conv_weights():
    assert sparse_parameter_names(_model()) == ["0.weight", "3.weight", "5.weight"]


def test_srigl_starts_with_constant_fan_in_and_sparse_aware_init():
    model = _model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1, momentum=0.9),
                         method="srigl", sparsity=0.8, distribution="uniform", t_end=100,
                         seed=0)
    params = model.named_parameters()
    for name, mask in ds.masks.items():
        rows = mask.reshape(mask.shape[0], -1)
        counts = rows.sum(axis=1)
        assert np.all(counts == counts[0]) and counts[0] >= 1
        assert np.all(params[name][~mask] == 0)
        # Kaiming from the actual fan-in k: std ≈ sqrt(2 / k), not sqrt(2 / dense fan-in).
        active = params[name][mask]
        if active.size > 50:
            assert active.std() == pytest.approx(np.sqrt(2.0 / counts[0]), rel=0.3)


def test_update_schedule_and_optimizer_step_skipped_on_update_steps():
    model = _model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="rigl",
                         sparsity=0.5, delta=3, t_end=10, seed=0)
    assert [s for s in range(15) if ds.is_update_step(s)] == [3, 6, 9]
    static = DynamicSparsity(_model(), SGD(_model().named_parameters(), lr=0.1),
                             method="static", sparsity=0.5, delta=3, t_end=10)
    assert not any(static.is_update_step(s) for s in range(15))


@pytest.mark.parametrize("method", ["srigl", "rigl", "set"])
@pytest.mark.parametrize("optimizer_class", [SGD, AdamW])
def test_updates_keep_invariants_and_clear_optimizer_state(method, optimizer_class):
    model = _model()
    kwargs = {"momentum": 0.9} if optimizer_class is SGD else {}
    optimizer = optimizer_class(model.named_parameters(), lr=0.05, **kwargs)
    ds = DynamicSparsity(model, optimizer, method=method, sparsity=0.8, delta=2, alpha=0.5,
                         t_end=12, distribution="uniform", seed=4)
    nnz_start = {n: int(m.sum()) for n, m in ds.masks.items()}
    records = _train(model, optimizer, ds, steps=14)
    assert [r["step"] for r in records[::3]] == [2, 4, 6, 8, 10]
    params = model.named_parameters()
    for r in records:
        assert r["invariants"] == "ok"
        if method != "srigl":  # nnz is conserved, so every pruned position is refilled
            assert r["pruned"] == r["grown"]
    # Late updates of the tiny conv layer may prune nothing (floor(7 * d) = 0 once d is
    # small), but the run as a whole must have changed the topology.
    assert sum(r["pruned"] for r in records) > 0 and sum(r["grown"] for r in records) > 0
    for name, mask in ds.masks.items():
        assert np.all(params[name][~mask] == 0)
        for buffer in optimizer.state[name].values():
            assert np.all(buffer[~mask] == 0)
        if method != "srigl":
            assert int(mask.sum()) == nnz_start[name]
    summary = ds.summary()
    assert summary["itop"] > 1 - summary["sparsity"] - 1e-9


def test_momentum_is_cleared_exactly_where_the_mask_changed():
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    ds = DynamicSparsity(model, optimizer, method="rigl", sparsity=0.8, delta=3, alpha=0.5,
                         t_end=100, distribution="uniform", seed=2, optimizer_on_update="skip")
    _train(model, optimizer, ds, steps=3)   # steps 0..2: plain steps build momentum
    before = {n: optimizer.state[n]["momentum_buffer"].copy() for n in ds.names}
    masks_before = {n: m.copy() for n, m in ds.masks.items()}
    x, y = _batch()
    _, grad = softmax_cross_entropy(model.forward(x, training=True), y)
    model.backward(grad)
    grads = model.named_grads()
    assert not ds.before_step(3, grads)          # update step: no optimizer step
    ds.after_step(3, grads)
    for name in ds.names:
        changed = masks_before[name] != ds.masks[name]
        buffer = optimizer.state[name]["momentum_buffer"]
        assert changed.any()
        assert np.all(buffer[changed] == 0)
        assert np.array_equal(buffer[~changed], before[name][~changed])


def test_output_layer_is_never_ablated():
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05)
    ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.95, delta=1,
                         alpha=0.9, gamma_sal=1.0, t_end=6, distribution="uniform", seed=1)
    records = _train(model, optimizer, ds, steps=6)
    assert all(r["ablated"] == [] for r in records if r["layer"] == "5.weight")
    # With γ_sal = 1 the hidden layers do ablate, and SRigL's fan-in grows to hold the budget.
    hidden = [r for r in records if r["layer"] == "3.weight"]
    assert any(r["ablated"] for r in hidden)
    for r in hidden:
        k = r["fan_in_after"][0]
        assert r["fan_in_after"][0] == r["fan_in_after"][1]
        assert k == dst.fan_in_after_ablation((32, 144), ds.layer_sparsity["3.weight"],
                                              len(r["ablated"]))


def test_no_ablation_flag_keeps_every_neuron():
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05)
    ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.95, delta=1, alpha=0.9,
                         gamma_sal=1.0, ablation=False, t_end=6, distribution="uniform", seed=1)
    records = _train(model, optimizer, ds, steps=6)
    assert all(r["ablated"] == [] and r["active_neurons"] == r["neurons"] for r in records)


def test_dense_method_has_no_masks_and_same_seed_same_masks():
    model = _model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="dense")
    assert ds.masks == {} and ds.summary()["sparsity"] == 0.0
    m1, m2 = _model(), _model()
    a = DynamicSparsity(m1, SGD(m1.named_parameters(), lr=0.1), method="srigl", t_end=100,
                        seed=7)
    b = DynamicSparsity(m2, SGD(m2.named_parameters(), lr=0.1), method="srigl", t_end=100,
                        seed=7)
    for name in a.names:
        assert np.array_equal(a.masks[name], b.masks[name])
        assert np.array_equal(m1.named_parameters()[name], m2.named_parameters()[name])


@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "lottery"}, "method"), ({"sparsity": 1.0}, "sparsity"),
    ({"distribution": "gaussian"}, "distribution"), ({"delta": 0}, "delta"),
    ({"alpha": 1.5}, "alpha"), ({"t_end": -1}, "t_end"),
])
def test_bad_arguments_are_refused(kwargs, fragment):
    model = _model()
    with pytest.raises(ValueError, match=fragment):
        DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), **{"t_end": 10, **kwargs})


@pytest.mark.parametrize("method", ["set", "rigl", "srigl"])
def test_dynamic_methods_require_t_end(method):
    model = _model()
    with pytest.raises(ValueError, match=f"t_end is required for method '{method}'.*75%"):
        DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method=method)


@pytest.mark.parametrize("method", ["dense", "static"])
def test_dense_and_static_need_no_t_end(method):
    model = _model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method=method)
    assert not any(ds.is_update_step(s) for s in range(300))


def test_initial_masks_and_weights_come_from_the_dst_and_layers_functions():
    """SRigL starts from dst.constant_fan_in_mask, the others from dst.random_mask; the
    weights are layers.kaiming_normal at each neuron's fan-in, zero off the mask."""
    seed, mask_purpose, init_purpose = 3, sparsity_module._RNG_MASK, sparsity_module._RNG_INIT
    for method, make_mask in (("srigl", dst.constant_fan_in_mask), ("rigl", dst.random_mask)):
        model = _model()
        ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method=method,
                             sparsity=0.8, t_end=10, seed=seed)
        for i, name in enumerate(ds.names):
            weight = model.named_parameters()[name]
            mask = make_mask(weight.shape, ds.layer_sparsity[name],
                             np.random.default_rng([seed, mask_purpose, i]))
            counts = np.maximum(mask.reshape(mask.shape[0], -1).sum(axis=1), 1)
            init = kaiming_normal(mask.shape, counts,
                                  np.random.default_rng([seed, init_purpose, i]), weight.dtype)
            assert np.array_equal(ds.masks[name], mask)
            assert np.array_equal(weight, np.where(mask, init, 0))


def test_records_follow_the_audit_schema():
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05)
    ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.8, delta=2, t_end=6,
                         distribution="uniform", seed=0)
    records = _train(model, optimizer, ds, steps=6)
    assert records == ds.audit_records and len(records) == 2 * 3
    for r in records:
        assert tuple(r) == KEYS and r["invariants"] == "ok"
        check_record(r, "record")


def _break_layer(monkeypatch, shape):
    """Make every SRigL update of a layer of ``shape`` return one weight too many."""
    real_update = dst.srigl_update

    def update(weight, mask, *args, **kwargs):
        result = real_update(weight, mask, *args, **kwargs)
        if weight.shape != shape:
            return result
        bad = result.mask.copy()
        bad[0, np.flatnonzero(~bad[0])[0]] = True
        return replace(result, mask=bad)

    monkeypatch.setattr(dst, "srigl_update", update)


def test_a_failed_invariant_check_raises_out_of_after_step(monkeypatch):
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05)
    ds = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.8, delta=2, t_end=10,
                         distribution="uniform", seed=0)
    _break_layer(monkeypatch, (32, 144))   # "3.weight", the second of three layers
    with pytest.raises(dst.InvariantError,
                       match=r"layer '3\.weight': neuron 0 has \d+ active weights, "
                             r"expected fan-in"):
        _train(model, optimizer, ds, steps=3)
    # The layer updated before it in that step kept its record; the failed one has none.
    assert [(r["step"], r["layer"]) for r in ds.audit_records] == [(2, "0.weight")]


# -- what the schedule will do, and the new record fields --------------------------------------

def test_update_steps_are_the_steps_with_an_update():
    model = _model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="srigl",
                         sparsity=0.5, delta=3, t_end=10, distribution="uniform")
    assert list(ds.update_steps()) == [3, 6, 9]
    assert [s for s in range(30) if ds.is_update_step(s)] == list(ds.update_steps())
    # ΔT not below t_end (the embedded subset's 40 steps x 75% against ΔT = 100): none.
    late = DynamicSparsity(_model(), SGD(_model().named_parameters(), lr=0.1), method="set",
                           sparsity=0.5, delta=100, t_end=30)
    assert len(late.update_steps()) == 0
    static = DynamicSparsity(_model(), SGD(_model().named_parameters(), lr=0.1),
                             method="static", sparsity=0.5, delta=3, t_end=10)
    assert len(static.update_steps()) == 0


def _plan_model():
    """A wide first layer and a 3x32 output, small enough for ERK to make it dense."""
    rng = np.random.default_rng(0)
    return Sequential(Flatten(), Linear(64, 256, rng=rng), ReLU(), Linear(256, 32, rng=rng),
                      ReLU(), Linear(32, 3, rng=rng))


@pytest.mark.parametrize("kwargs, expected", [
    ({"distribution": "erk", "sparsity": 0.9}, {"5.weight": "ERK gives it density 1"}),
    ({"distribution": "uniform", "sparsity": 0.9}, {}),
    ({"distribution": "uniform", "sparsity": 0.9, "dense_layers": [2]},
     {"5.weight": "listed in dense_layers"}),
    ({"distribution": "erk", "sparsity": 0.0},
     {name: "the global sparsity is 0" for name in ("1.weight", "3.weight", "5.weight")}),
])
def test_kept_dense_names_the_layers_at_sparsity_0_and_why(kwargs, expected):
    model = _plan_model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="srigl",
                         t_end=10, **kwargs)
    assert ds.kept_dense() == expected
    assert {n for n, s in ds.layer_sparsity.items() if s == 0.0} == set(expected)


@pytest.mark.parametrize("method", ["srigl", "rigl", "static"])
def test_plan_gives_shape_sparsity_fan_in_and_updates_per_layer(method):
    model = _plan_model()
    ds = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method=method,
                         sparsity=0.9, delta=4, t_end=30, seed=1)
    plan = ds.plan()
    assert [p["layer"] for p in plan] == ds.names
    updates = 7 if method != "static" else 0   # steps 4, 8, ..., 28
    for p in plan:
        mask = ds.masks[p["layer"]]
        counts = mask.sum(axis=1)
        active = counts[counts > 0]   # a random mask may leave a neuron empty
        assert p["shape"] == list(mask.shape)
        assert p["sparsity"] == pytest.approx(1 - mask.mean())
        assert p["fan_in"] == [active.min(), active.max()]
        if p["layer"] == "5.weight":
            assert p["kept_dense"] == "ERK gives it density 1" and p["updates"] == 0
            assert p["sparsity"] == 0.0
        else:
            assert p["kept_dense"] is None and p["updates"] == updates
    if method == "srigl":
        assert all(p["fan_in"][0] == p["fan_in"][1] for p in plan)   # constant k


@pytest.mark.parametrize("method", ["srigl", "rigl", "set"])
def test_records_count_regrown_and_zeros_inside_the_mask(monkeypatch, method):
    """regrown is the update's own count; zeros_in_mask is counted on the layer after the
    update, and holds at least the grown weights (they start at 0)."""
    results = []
    real_update = getattr(dst, f"{method}_update")

    def spy(weight, mask, *args, **kwargs):
        results.append(real_update(weight, mask, *args, **kwargs))
        return results[-1]

    monkeypatch.setattr(dst, f"{method}_update", spy)
    model = _model()
    optimizer = SGD(model.named_parameters(), lr=0.05, momentum=0.9)
    ds = DynamicSparsity(model, optimizer, method=method, sparsity=0.8, delta=2, alpha=0.5,
                         t_end=12, distribution="uniform", seed=4)
    x, y = _batch()
    records = []
    for step in range(12):
        _, grad = softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(grad)
        grads = model.named_grads()
        if ds.before_step(step, grads):
            optimizer.step(grads)
        new = ds.after_step(step, grads)
        weights = model.named_parameters()
        for r in new:   # straight after the update, before any optimizer step
            mask = ds.masks[r["layer"]]
            assert r["zeros_in_mask"] == int((mask & (weights[r["layer"]] == 0)).sum())
        records += new
    assert len(results) == len(records) == 5 * 3
    for result, r in zip(results, records):
        assert r["regrown"] == int(result.regrown.sum())
        assert r["zeros_in_mask"] >= r["grown"]
    assert sum(r["regrown"] for r in records) > 0   # drop-and-regrow happens at all
