"""The update trace (``trace=True`` of dst's updates) and ``python -m srigl_np.explain``.

The trace is recorded by the updates on their own code path, so the tests check that
it changes nothing, that its numbers agree with the result (nnz, k, the ablated
neurons, every per-neuron count) on drawn layers, and one case by hand. The CLI tests
run ``explain.main`` in-process; the --checkpoint ones train a one-epoch run first.
"""

import dataclasses
import math
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_cupy import device  # noqa: F401  (a fixture)
from srigl_np import backend, dst, explain, testing
from srigl_np import train as train_module
from strategies import any_mask_layers, sample_values
from train_cli import rewrite_checkpoint

FIELDS = ("mask", "weight", "pruned", "grown", "regrown", "ablated")


@st.composite
def unstructured_inputs(draw):
    """UpdateInputs on any mask (a RigL checkpoint's, say): neurons over k get capped."""
    layer = draw(any_mask_layers(shapes=testing.linear_shapes, dtypes=st.just(np.float64)))
    grad = sample_values(np.random.default_rng(layer.seed + 1), layer.weight.shape,
                         layer.ties, np.float64)
    return testing.UpdateInputs(layer.weight, layer.mask, grad, draw(st.floats(0.0, 1.0)),
                                draw(st.floats(0.0, 0.95)), draw(st.floats(0.0, 1.0)),
                                draw(st.booleans()))


update_cases = st.one_of(testing.update_inputs(), unstructured_inputs())


def _same(a, b):
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field
        assert np.array_equal(np.signbit(x), np.signbit(y)), field   # -0.0 vs +0.0
    assert a.fan_in == b.fan_in


def _rows(array):
    return array.reshape(array.shape[0], -1)


# -- the trace --------------------------------------------------------------------------

@settings(max_examples=80)
@given(case=update_cases)
def test_the_trace_changes_no_result(case):
    for update, kwargs in [
            (dst.srigl_update, case.kwargs("srigl")),
            (dst.rigl_update, case.kwargs("rigl"))]:
        plain = update(case.weight, case.mask, case.grad, **kwargs)
        traced = update(case.weight, case.mask, case.grad, trace=True, **kwargs)
        _same(plain, traced)
        assert plain.trace is None and isinstance(traced.trace, dst.UpdateTrace)
    plain = dst.set_update(case.weight, case.mask, drop_fraction=case.drop_fraction,
                           rng=np.random.default_rng(3))
    traced = dst.set_update(case.weight, case.mask, drop_fraction=case.drop_fraction,
                            rng=np.random.default_rng(3), trace=True)
    _same(plain, traced)


@settings(max_examples=120)
@given(case=update_cases)
def test_the_srigl_trace_agrees_with_the_result(case):
    r = dst.srigl_update(case.weight, case.mask, case.grad, trace=True, **case.kwargs())
    t = r.trace
    n, dense_fan_in = _rows(case.mask).shape
    old, new, regrown = _rows(case.mask), _rows(r.mask), _rows(r.regrown)
    # Step 1.
    assert t.method == "srigl" and t.drop_fraction == case.drop_fraction
    assert t.n_ones == int(case.mask.sum()) and t.n_prune == t.n_ones - t.n_keep
    assert t.n_nonzero == int(np.count_nonzero(case.weight[case.mask]))
    assert t.n_keep == min(t.n_ones - math.floor(t.n_ones * case.drop_fraction), t.n_nonzero)
    assert int(t.kept_by_magnitude.sum()) == t.n_keep and not (t.kept_by_magnitude & ~old).any()
    # Step 2.
    assert t.budget == case.budget and t.k0 == case.budget // n
    assert np.array_equal(t.active, ~np.isin(np.arange(n), r.ablated))
    assert np.array_equal(t.ablated, r.ablated)
    if case.ablation:
        assert np.array_equal(t.salient_counts, t.salient.sum(axis=1))
        assert not (t.kept_by_magnitude & ~t.salient).any()
        assert int(t.salient.sum()) <= t.n_keep + t.n_prune
        assert t.threshold == max(1, math.floor(case.gamma_sal * t.k0))
        assert t.threshold_used <= t.threshold
        assert t.threshold_lowered == (t.threshold_used < t.threshold)
        assert t.min_active == min(n, case.budget // dense_fan_in + 1)
        assert t.max_active == max(1, case.budget)
        assert np.all(t.salient_counts[t.active] >= t.threshold_used)
        reaching = int(np.count_nonzero(t.salient_counts >= t.threshold_used))
        assert int(t.active.sum()) == min(reaching, t.max_active) >= min(t.min_active,
                                                                          t.max_active)
    else:
        assert t.salient is None and t.threshold is None and t.threshold_lowered is None
        assert t.active.all()
    # Steps 3-5: k, what each neuron kept, lost to the cap and grew.
    assert t.fan_in == r.fan_in
    kept = old & new & ~regrown
    assert np.array_equal(t.kept_counts, kept.sum(axis=1))
    assert np.array_equal(t.grown_counts, (_rows(r.grown) | regrown).sum(axis=1))
    assert np.array_equal(t.capped_counts, t.removed_by_cap.sum(axis=1))
    assert not (t.removed_by_cap & ~(old & ~new)).any()          # cap removals are pruned
    assert np.all(t.kept_counts[t.active] + t.grown_counts[t.active] == t.fan_in)
    assert np.all((t.kept_counts + t.grown_counts + t.capped_counts)[~t.active] == 0)
    capped = t.capped_counts > 0
    assert np.all(t.kept_counts[capped] == t.fan_in) and np.all(t.grown_counts[capped] == 0)
    assert int(r.mask.sum()) == t.fan_in * int(t.active.sum())
    # regrown: dropped, grown back, old value kept; neither pruned nor grown.
    assert not (regrown & ~(old & new)).any()
    assert np.array_equal(r.weight[r.regrown], case.weight[r.regrown])


@settings(max_examples=60)
@given(case=update_cases)
def test_the_rigl_and_set_traces_hold_their_steps_only(case):
    for method in ("rigl", "set"):
        if method == "rigl":
            r = dst.rigl_update(case.weight, case.mask, case.grad,
                                drop_fraction=case.drop_fraction, trace=True)
        else:
            r = dst.set_update(case.weight, case.mask, drop_fraction=case.drop_fraction,
                               rng=np.random.default_rng(0), trace=True)
        t = r.trace
        old, new, regrown = _rows(case.mask), _rows(r.mask), _rows(r.regrown)
        assert t.method == method and t.n_ones == int(case.mask.sum())
        assert np.array_equal(t.kept_counts, (old & new & ~regrown).sum(axis=1))
        assert np.array_equal(t.kept_counts, t.kept_by_magnitude.sum(axis=1))
        assert int(t.grown_counts.sum()) == t.n_prune
        assert np.array_equal(t.kept_counts + t.grown_counts, new.sum(axis=1))
        for field in ("budget", "k0", "gamma_sal", "salient", "salient_counts", "threshold",
                      "threshold_used", "min_active", "max_active", "active", "fan_in",
                      "removed_by_cap", "capped_counts"):
            assert getattr(t, field) is None, field
        assert t.ablated.size == 0 and t.threshold_lowered is None


def test_the_trace_by_hand():
    # 3 neurons x 4 at sparsity 0.5: B = 6, k0 = 2; drop 0.5 of 6: n_keep = n_prune = 3.
    # Kept by |W|: (0,0) .9, (1,1) .8, (1,2) .7; top |G|: (1,3) .6, (0,2) .5, (2,0) .4.
    # Salient [2, 3, 1]; gamma 1: threshold 2, min_active 6 // 4 + 1 = 2 -> neuron 2
    # ablated, k = 3. Neuron 0 keeps 1 and grows 2, neuron 1 keeps 2 and grows 1.
    weight = np.array([[0.9, 0.1, 0.0, 0.0], [0.0, 0.8, 0.7, 0.0], [0.0, 0.0, 0.2, 0.3]])
    grad = np.array([[0.0, 0.0, 0.5, 0.1], [0.05, 0.0, 0.0, 0.6], [0.4, 0.3, 0.0, 0.0]])
    t = dst.srigl_update(weight, weight != 0, grad, drop_fraction=0.5, sparsity=0.5,
                         gamma_sal=1.0, trace=True).trace
    assert (t.n_ones, t.n_keep, t.n_prune, t.n_nonzero) == (6, 3, 3, 6)
    assert np.argwhere(t.kept_by_magnitude).tolist() == [[0, 0], [1, 1], [1, 2]]
    assert np.argwhere(t.salient).tolist() == [[0, 0], [0, 2], [1, 1], [1, 2], [1, 3],
                                               [2, 0]]
    assert t.salient_counts.tolist() == [2, 3, 1]
    assert (t.budget, t.k0, t.threshold, t.threshold_used, t.min_active, t.max_active) == \
        (6, 2, 2, 2, 2, 6)
    assert t.active.tolist() == [True, True, False] and t.fan_in == 3
    assert t.kept_counts.tolist() == [1, 2, 0] and t.grown_counts.tolist() == [2, 1, 0]
    assert t.capped_counts.tolist() == [0, 0, 0]


def test_a_capped_neuron_by_hand():
    # B = 4, k = 2: the 3 weights kept by |W| are neuron 0's; it keeps .9 and .8 and the
    # cap removes (0,2) .7. Neuron 1 grows (1,1) .3 and regrows (1,0), keeping its .1.
    weight = np.array([[0.9, 0.8, 0.7, 0.0], [0.1, 0.0, 0.0, 0.0]])
    grad = np.array([[0.0, 0.0, 0.0, 1.0], [0.2, 0.3, 0.1, 0.0]])
    r = dst.srigl_update(weight, weight != 0, grad, drop_fraction=0.25, sparsity=0.5,
                         ablation=False, trace=True)
    assert np.argwhere(r.trace.removed_by_cap).tolist() == [[0, 2]]
    assert r.trace.capped_counts.tolist() == [1, 0]
    assert r.trace.kept_counts.tolist() == [2, 0] and r.trace.grown_counts.tolist() == [0, 2]
    assert np.argwhere(r.regrown).tolist() == [[1, 0]] and r.weight[1, 0] == 0.1


def test_the_trace_stays_on_the_host_and_regrown_on_the_device(device):  # noqa: F811
    name, _ = device
    rng = np.random.default_rng(4)
    weight, mask, grad, _ = explain.random_layer((10, 12), 0.8, 3, rng)
    host = dst.srigl_update(weight, mask, grad, drop_fraction=0.3, sparsity=0.8, trace=True)
    moved = dst.srigl_update(*(backend.to_device(a, name) for a in (weight, mask, grad)),
                             drop_fraction=0.3, sparsity=0.8, trace=True)
    assert backend.is_cupy_array(moved.regrown)
    assert np.array_equal(backend.to_numpy(moved.regrown), host.regrown)
    moved_values, host_values = _trace_values(moved.trace), _trace_values(host.trace)
    assert moved_values.keys() == host_values.keys()
    for name, expected in host_values.items():
        value = moved_values[name]
        if isinstance(expected, np.ndarray):
            assert type(value) is np.ndarray and np.array_equal(value, expected), name
        else:
            assert value == expected, name


def _trace_values(trace):
    """{name: value} of a trace's fields, a step record's fields named "record.field"."""
    values = {}
    for field in dataclasses.fields(trace):
        value = getattr(trace, field.name)
        if hasattr(value, "_asdict"):   # a step's NamedTuple record
            values.update({f"{field.name}.{key}": item for key, item in value._asdict().items()})
        else:
            values[field.name] = value
    return values


# -- the command line ---------------------------------------------------------------------

def _explain(capsys, *argv):
    status = explain.main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0 and err == "", err
    return out


def _grid_rows(out):
    """{neuron: (before, after, counts...)} from the grid table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("neuron  before"))
    table = {}
    for line in lines[start + 1:]:
        cells = line.split()
        if not cells or not cells[0].isdigit():
            break
        table[int(cells[0])] = cells[1:]
    return table


def test_the_default_run_shows_an_ablated_and_a_capped_neuron(capsys):
    out = _explain(capsys)
    steps = [line.split(".")[0] for line in out.splitlines() if line[:2] in
             ("0.", "1.", "2.", "3.", "4.", "5.", "6.")]
    assert steps == ["1", "2", "3", "4", "5"]                     # dst.steps.STEPS
    assert "10 neurons x 12 inputs" in out and "neurons [0, 5, 6] ablated" in out
    assert "n_ones = 21, n_prune = floor(21·0.3) = 6, n_keep = 15" in out
    assert "threshold = max(1, floor(γ_sal·k0)) = max(1, floor(0.3·2)) = 1" in out
    assert "ablated: neuron 9 (0 salient)" in out
    assert "back: neurons 0 (1 salient), 5 (3 salient), 6 (1 salient) had no weights" in out
    assert "floor(24/9))) = 2 (was 3)" in out
    assert "neuron 1 kept 3 > k = 2, drops input 10" in out
    assert "regrown (dropped, then grown back with its old value): neuron 8 input 5" in out
    assert "result: nnz 18 = k·n_active = 2·9 (budget 24)" in out
    grid = _grid_rows(out)
    assert grid[9][:2] == ["..#.....#.#.", "x" * 12]              # ablated: its 3 removed
    assert grid[1][1] == "....##....c." and grid[1][4] == "1"     # capped: one weight
    assert set(grid[0][1]) == {".", "+"}                          # back: grows 2
    assert grid[8][1] == ".#...r.....-"                           # a regrown weight
    # The printed counts are the trace's.
    layer = explain.random_layer((10, 12), 0.8, 3, np.random.default_rng(69))
    r = dst.srigl_update(*layer[:3], drop_fraction=0.3, sparsity=0.8, trace=True)
    assert sorted(grid) == list(range(10))
    for i, cells in grid.items():
        assert cells[2:] == [str(r.trace.salient_counts[i]), str(r.trace.kept_counts[i]),
                             str(r.trace.capped_counts[i]), str(r.trace.grown_counts[i])]


def test_the_same_flags_give_the_same_output_and_the_seed_changes_it(capsys):
    assert _explain(capsys) == _explain(capsys, "--seed", "69")
    assert _explain(capsys, "--seed", "5") != _explain(capsys)


@pytest.mark.parametrize("argv, expected, absent", [
    (["--method", "rigl"], ["RigL update", "5. regrow by gradient: the 6 largest |G|",
                            "nnz 21 (unchanged)"], ["salient", "4. per-neuron cap"]),
    (["--method", "set"], ["SET update", "5. regrow at random: 6 positions"], ["salient"]),
    (["--no-ablation"], ["ablation off (--no-ablation)", "ablated []"], ["salient weights"]),
    (["--shape", "8x12", "--sparsity", "0.75", "--gamma-sal", "1", "--ablated-before", "0",
      "--seed", "0"],
     ["max(1, floor(1·3)) = 3 salient weights", "ablated: neurons 0 (2 salient), 3"], []),
    (["--shape", "4x2x3x3", "--sparsity", "0.8", "--ablated-before", "1"],
     ["4 neurons x 18 inputs (2x3x3 per filter)", "budget B = floor(N·(1 - s)) = "
                                                  "floor(72·0.2) = 14"], []),
    (["--drop-fraction", "0.5"], ["d = 0.5 (given", "n_prune = floor(21·0.5) = 10"], []),
    (["--step", "50", "--t-end", "100", "--alpha", "0.4"],
     ["= 0.4/2·(1 + cos(π·50/100)) = 0.2"], []),
    (["--shape", "30x100", "--sparsity", "0.9", "--max-rows", "5"],
     ["(F = 100 > --max-cols 40", "(25 more neurons not shown"], []),
])
def test_flags(capsys, argv, expected, absent):
    out = _explain(capsys, *argv)
    for text in expected:
        assert text in out, text
    for text in absent:
        assert text not in out, text


def test_a_threshold_lowered_to_keep_the_fewest_neurons_is_explained(capsys):
    # 6 neurons x 4 at 50%: B = 12, k0 = 2; gamma 1 asks for 2 salient weights, which 3
    # neurons reach, fewer than 12 // 4 + 1 = 4: lowered to the 4th largest count, 1.
    out = _explain(capsys, "--shape", "6x4", "--sparsity", "0.5", "--gamma-sal", "1",
                   "--ablated-before", "0", "--seed", "2")
    assert "salient weights per neuron: 0:2 1:1 2:1 3:1 4:2 5:2" in out
    assert "min(6, floor(12/4) + 1) = 4 neurons stay active:" in out
    assert ("only 3 reach 2, so the threshold is lowered to 1, the count of the 4th most "
            "salient neuron") in out
    assert "ablated: none" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--shape", "3x"], "argument --shape: must be NxF or NxCxHxW"),
    (["--shape", "0x4"], "argument --shape: must be NxF or NxCxHxW"),
    (["--sparsity", "1"], "argument --sparsity: must be in [0, 1)"),
    (["--gamma-sal", "nan"], "argument --gamma-sal: must be in"),
    (["--drop-fraction", "x"], "argument --drop-fraction: must be a number, got 'x'"),
    (["--method", "magic"], "argument --method: invalid choice: 'magic'"),
    (["--ablated-before", "-1"], "argument --ablated-before: must be in"),
])
def test_bad_flags_are_one_line_errors(capsys, argv, fragment):
    with pytest.raises(SystemExit) as info:
        explain.main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("python -m srigl_np.explain: error: ")
    assert fragment in err


@pytest.mark.parametrize("argv, fragment", [
    (["--layer", "1.weight"], "--layer needs --checkpoint RUN_DIR"),
    (["--gradient", "backward"], "--gradient backward needs --checkpoint"),
    (["--ablated-before", "10"], "--ablated-before must leave one of the 10 neurons active"),
    (["--shape", "1x1", "--ablated-before", "1"],
     "--ablated-before must leave one of the 1 neurons active, got 1"),
    # A MemoryError traceback before: the layer was drawn before anything was checked.
    (["--shape", "200000x200000"], "--shape 200000x200000 has 40000000000 weights, more "
                                   "than the 16777216 the random layer may have"),
    (["--shape", f"{2**12 + 1}x{2**12}"], "has 16781312 weights, more than the 16777216"),
    (["--shape", "1000x1000x1000x1000"], "has 1000000000000 weights"),
    (["--step", "200"], "--step must be <= T_end = 100 (--t-end), got 200"),
    (["--checkpoint", "no/such/run", "--layer", "1.weight"], "no/such/run"),
    (["--plot", "picture.nosuchformat"], "unknown image format 'nosuchformat'"),
])
def test_bad_combinations_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, fragment):
    if "--plot" in argv:
        pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    assert explain.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("python -m srigl_np.explain: error: ") and fragment in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape, n_ablated", [("1x1", 0), ("2x6", 1), ("3x2x1x1", 2),
                                              ("4x6", 3), ("10x12", 3)])
def test_the_default_ablated_before_fits_a_small_layer(capsys, shape, n_ablated):
    """--shape 1x1 was refused for --ablated-before, a flag the user never gave."""
    out = _explain(capsys, "--shape", shape)
    before = next(line for line in out.splitlines() if "as a previous update left it" in line)
    if n_ablated:
        listed = before.split("neurons [")[1].split("]")[0]
        assert len(listed.split(", ")) == n_ablated, before
    else:
        assert "every neuron at fan-in" in before


def test_help_shows_every_flag_and_its_default(capsys):
    parser = explain.make_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.option_strings[0] in text
        assert "default" in (action.help or ""), action.dest
    for default in ("10x12", "0.8", "(default: 3)", "0.3", "srigl", "(default: 64)",
                    "(default: 69)"):
        assert default in text, default


def test_plot_writes_a_png(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "update.png"
    out = _explain(capsys, "--plot", str(path))
    assert out.rstrip().endswith(f"plot: {path}")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["update.png"]   # atomic: no temp left


def test_plot_without_matplotlib_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails
    assert explain.main(["--plot", str(tmp_path / "update.png")]) == 1
    err = capsys.readouterr().err
    assert err == ("python -m srigl_np.explain: error: --plot needs matplotlib: pip install "
                   "matplotlib (or srigl_np[plot])\n")
    assert not (tmp_path / "update.png").exists()


# -- a layer of a training run --------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    status = train_module.main(["--dataset", "embedded", "--epochs", "1", "--method", "srigl",
                                "--batch-size", "256", "--delta", "5", "--seed", "0",
                                "--out", str(out), "--progress", "off"])
    assert status == 0
    return out


def test_checkpoint_explains_a_layer_of_the_run(capsys, run_dir):
    from srigl_np.formats.checkpoint import load_model

    out = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "3.weight",
                   "--max-rows", "4")
    assert f"SRigL update of layer 3.weight of {run_dir} (srigl run, epoch 1), 100 neurons " \
           f"x 300 inputs" in out
    run = load_model(run_dir)
    mask = run.masks["3.weight"]
    assert f"nnz {int(mask.sum())} of N = 30000" in out
    sparsity = dst.erk_sparsities([(300, 784), (100, 300), (10, 100)], 0.9)[1]
    assert f"target sparsity {sparsity:.3g}" in out
    assert ("gradient: one backward pass on 64 training images of the run's embedded "
            "Fashion-MNIST subset") in out
    assert "2. saliency and ablation:" in out and "(4 more neurons" not in out
    assert "(96 more neurons not shown" in out
    # Deterministic: the same command, the same explanation; --gradient random differs.
    assert _explain(capsys, "--checkpoint", str(run_dir), "--layer", "3.weight",
                    "--max-rows", "4") == out
    random = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "3.weight",
                      "--gradient", "random", "--max-rows", "4")
    assert "gradient: seeded standard normal (seed 69)" in random


def test_checkpoint_replays_the_runs_last_update_with_its_drop_fraction(capsys, run_dir):
    """1 epoch of 20 steps, T_end 15, ΔT 5: the checkpoint (step 20) is past T_end, so the
    update replayed is the run's last, at step 10, with the drop fraction it recorded."""
    from srigl_np.dst.trail import read_trail

    out = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "3.weight",
                   "--max-rows", "4")
    recorded = [r for r in read_trail(run_dir / "audit.jsonl") if r["layer"] == "3.weight"]
    assert recorded[-1]["step"] == 10
    assert ("note: step: the checkpoint is at step 20, past T_end = 15 where updates stop: "
            "the run's last update step, 10, replayed on the checkpoint's weights") in out
    d = recorded[-1]["drop_fraction"]
    assert f"cos(π·10/15)) = {d:.3g}" in out
    # --step still chooses, and then no note claims the checkpoint's step.
    chosen = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "3.weight",
                      "--step", "5", "--max-rows", "4")
    assert "cos(π·5/15))" in chosen and "note: step:" not in chosen


def test_checkpoint_step_is_the_checkpoints_own_below_t_end():
    from types import SimpleNamespace

    mid_run = SimpleNamespace(meta={"step": 7}, config={"delta": 5})
    assert explain.checkpoint_step(mid_run, 15) == (7, "the update at the checkpoint's step 7")
    finished = SimpleNamespace(meta={"step": 30}, config={"delta": 5})
    assert explain.checkpoint_step(finished, 15)[0] == 10
    assert explain.checkpoint_step(finished, 16)[0] == 15


def test_the_gradient_comes_from_the_runs_own_dataset_or_says_what_it_uses(tmp_path):
    from types import SimpleNamespace

    embedded = SimpleNamespace(meta={"data": {"name": "embedded"}}, config={})
    dataset, what = explain.run_dataset(embedded)
    assert what == "the run's embedded Fashion-MNIST subset" and len(dataset.x_train) > 0
    missing = SimpleNamespace(meta={"data": {"name": "fashion-mnist"}},
                              config={"data_path": str(tmp_path)})
    dataset, what = explain.run_dataset(missing)
    assert what == ("the embedded Fashion-MNIST subset (the run's fashion-mnist is not found "
                    "on this machine)")


def test_the_figures_rows_mark_returned_neurons_and_show_fan_in_and_saliency(tmp_path):
    """The data the right-hand panel draws, for the default layer (neurons 0, 5 and 6
    return, 9 is ablated), and the figure drawn headless."""
    pytest.importorskip("matplotlib")
    args = explain.make_parser().parse_args([])
    layer = explain.build_layer(args)
    result = explain.run_update(layer, 0.3, args.seed)
    facts = explain.row_facts(layer, result)
    trace = result.trace
    assert np.flatnonzero(facts.returned).tolist() == [0, 5, 6]
    assert np.flatnonzero(facts.newly_ablated).tolist() == result.ablated.tolist() == [9]
    assert (facts.fan_in_before[facts.returned] == 0).all()
    assert facts.fan_in_after[~facts.ablated].tolist() == [result.fan_in] * 9
    assert facts.salient.tolist() == trace.salient_counts.tolist()
    assert facts.threshold == trace.threshold_used
    # Below the threshold means ablated, here where it was not lowered.
    assert ((facts.salient < facts.threshold) == facts.ablated).all()
    assert explain.row_status(facts).tolist() == (
        ["returned"] + ["active"] * 4 + ["returned"] * 2 + ["active"] * 2 + ["newly ablated"])
    explain.plot(str(tmp_path / "update.png"), layer, result)
    assert (tmp_path / "update.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_output_layer_is_never_ablated(capsys, run_dir):
    out = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "5.weight")
    assert "5.weight is the output layer: never ablated" in out
    assert "ablation off (the output layer)" in out
    assert "the run keeps 5.weight dense" in out        # ERK gives it density 1


def test_checkpoint_plot_and_method_override(capsys, run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = _explain(capsys, "--checkpoint", str(run_dir), "--layer", "1.weight",
                   "--method", "rigl", "--plot", str(tmp_path / "layer.svg"))
    assert out.startswith("RigL update of layer 1.weight")
    assert (tmp_path / "layer.svg").read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize("argv, fragment", [
    ([], "--checkpoint needs --layer NAME"),
    (["--layer", "9.weight"], "--layer must be one of the run's sparse layers (1.weight, "
                              "3.weight, 5.weight), got '9.weight'"),
    (["--layer", "1.weight", "--ablated-before", "1"], "--ablated-before shapes the random"),
])
def test_checkpoint_errors_are_one_line(capsys, run_dir, argv, fragment):
    assert explain.main(["--checkpoint", str(run_dir), *argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err


def _config(key, value):
    return lambda meta, arrays: meta["config"].__setitem__(key, value)


def _weight_outside_mask(meta, arrays):
    row, column = np.argwhere(~arrays["dst/mask/3.weight"])[0]
    arrays["param/3.weight"][row, column] = 0.5


@pytest.mark.parametrize("change, error", [
    (_config("batch_size", 0), "meta 'config' 'batch_size' (--batch-size) must be a positive "
                               "integer, got 0"),
    (_config("epochs", 10**12), "meta 'config' 'epochs' (--epochs) must be at most 1000000"),
    (_config("epochs", float("inf")), "meta 'config' 'epochs' (--epochs) must be an integer"),
    (_config("t_end_frac", -5), "meta 'config' 't_end_frac' (--t-end-frac) must be in [0, 1]"),
    (_config("alpha", "x"), "meta 'config' 'alpha' (--alpha) must be a number, got 'x'"),
    (_config("distribution", 3), "meta 'config' 'distribution' (--distribution) must be one"),
    (_config("no_ablation", "no"), "meta 'config' 'no_ablation' (--no-ablation) must be true"),
    (_config("method", 5), "meta 'config' 'method' (--method) must be one of"),
    (_weight_outside_mask, "parameter '3.weight' has 1 non-zero weights outside its mask"),
    (lambda meta, arrays: arrays["param/3.weight"].flat.__setitem__(0, np.inf),
     "parameter '3.weight' holds non-finite values (1 NaN or Inf, first at (0, 0))"),
    (lambda meta, arrays: meta.__setitem__("layer_sparsity", 3),
     "meta 'layer_sparsity' must be an object of layer names to sparsities in [0, 1)"),
    (lambda meta, arrays: meta["data"].__setitem__("n_train", 10**40), "meta 'data' must be"),
    (lambda meta, arrays: meta.__setitem__("kept_dense", 3), "meta 'kept_dense' must be"),
])
def test_a_checkpoint_is_trusted_no_further_than_resume_trusts_it(capsys, run_dir, tmp_path,
                                                                  change, error):
    """The config as the trainer's flags check it, the masks covering the weights, no
    NaN: before issue 20 these crashed with a traceback or explained a silent wrong
    update."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    rewrite_checkpoint(run / "checkpoint.npz", change)
    assert explain.main(["--checkpoint", str(run), "--layer", "3.weight"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(f"{explain.PROG}: error: {run / 'checkpoint.npz'}: {error}")
