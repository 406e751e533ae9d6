"""benchmarks/bench_condensed_model.py on tiny untrained models: the torch network is the
same computation as our dense model, and the table and JSON have their structure.
Runs without torch (its tests are skipped; the table shows "-" for its column)."""

import json

import numpy as np
import pytest

from srigl_np.inference.condensing import condense
from srigl_np.nn.layers import Conv2d, Flatten, Linear, ReLU, Sequential
from srigl_np.nn.normalization import BatchNorm1d, BatchNorm2d
from srigl_np.nn.models import build
from srigl_np.nn.optim import SGD
from srigl_np.dst.sparsity import DynamicSparsity
from scripts import load_script

@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/bench_condensed_model.py")


def sparse_model(name, seed=0):
    """models.build(name) with SRigL masks at 90% (DynamicSparsity), and its condensed form."""
    rng = np.random.default_rng(seed)
    model = build(name, rng=rng)
    sparsity = DynamicSparsity(model, SGD(model.named_parameters(), lr=0.1), method="srigl",
                               sparsity=0.9, t_end=100, seed=seed)
    return model, condense(model, masks=sparsity, warn=False)


def inputs(script, batch_sizes, seed=1):
    return script.make_inputs(batch_sizes, np.random.default_rng(seed))


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_torch_network_computes_the_dense_models_logits(script, name):
    torch = pytest.importorskip("torch")
    model, _ = sparse_model(name)
    tmodel = script.torch_sequential(model, torch)
    assert not tmodel.training
    assert len(tmodel) == len(model.layers)
    diffs = script.check_torch(model, tmodel, inputs(script, [1, 3]), torch)
    assert set(diffs) == {1, 3}
    assert all(0 <= d <= script.TOLERANCE for d in diffs.values())


def test_torch_network_takes_batchnorm_running_statistics(script):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    model = Sequential(Conv2d(1, 4, 3, rng=rng), BatchNorm2d(4), ReLU(), Flatten(),
                       Linear(4 * 26 * 26, 6, rng=rng), BatchNorm1d(6), ReLU(),
                       Linear(6, 3, rng=rng))
    for layer in model.layers:
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
            n = layer.num_features
            layer.params["weight"][:] = rng.uniform(0.5, 2, n)
            layer.params["bias"][:] = rng.standard_normal(n)
            layer.buffers["running_mean"][:] = rng.standard_normal(n)
            layer.buffers["running_var"][:] = rng.uniform(0.5, 2, n)
    tmodel = script.torch_sequential(model, torch)
    diffs = script.check_torch(model, tmodel, inputs(script, [2]), torch)
    assert diffs[2] <= script.TOLERANCE


def test_a_different_network_is_refused_before_timing(script):
    torch = pytest.importorskip("torch")
    model, _ = sparse_model("mlp")
    tmodel = script.torch_sequential(model, torch)
    model.layers[5].params["bias"] += 1e-2          # ours changes, torch's copy does not
    with pytest.raises(script.TorchMismatch, match="differ from the dense model's"):
        script.check_torch(model, tmodel, inputs(script, [1]), torch)


def test_a_layer_without_a_torch_equivalent_is_a_type_error(script):
    torch = pytest.importorskip("torch")
    from srigl_np.nn.layers import Layer

    class Odd(Layer):
        pass

    with pytest.raises(TypeError, match="layer 1"):
        script.torch_sequential(Sequential(Flatten(), Odd()), torch)


@pytest.mark.parametrize("with_torch", [False, True])
def test_rows_and_table(script, with_torch):
    torch = pytest.importorskip("torch") if with_torch else None
    model, condensed = sparse_model("mlp")
    tmodel = script.torch_sequential(model, torch) if with_torch else None
    rows = script.run_rows(model, condensed, inputs(script, [1, 3]), [1, 2], 0.001,
                           tmodel=tmodel, torch=torch, rounds=2)
    assert [(r["batch"], r["threads"]) for r in rows] == [(1, 1), (1, 2), (3, 1), (3, 2)]
    for r in rows:
        assert r["dense_s"] > 0 and r["condensed_s"] > 0
        assert r["dense_repeats"] >= 2 and r["condensed_repeats"] >= 2
        assert r["speedup_vs_dense"] == pytest.approx(r["dense_s"] / r["condensed_s"])
        assert r["same_predictions"] is True
        if with_torch:
            assert r["torch_s"] > 0
            assert r["speedup_vs_torch"] == pytest.approx(r["torch_s"] / r["condensed_s"])
        else:
            assert r["torch_s"] is None and r["speedup_vs_torch"] is None
    lines = script.format_table(rows)
    assert lines[0].split() == ["batch", "threads", "dense", "ms", "torch", "ms",
                                "condensed", "ms", "vs", "dense", "vs", "torch"]
    assert len(lines) == 1 + len(rows)
    for line, r in zip(lines[1:], rows):
        # A row timed beside other load names its flags and marks its ratios "?".
        table, _, flags = line.partition("  [")
        assert flags == (f"{'; '.join(r['flags'])}]" if r["flags"] else "")
        mark = "?" if r["flags"] else ""
        cells = table.split()
        assert len(cells) == 7 and cells[:2] == [str(r["batch"]), str(r["threads"])]
        assert cells[5].endswith("x" + mark)
        assert (cells[3] != "-" and cells[6].endswith("x" + mark)) if with_torch \
            else cells[3] == cells[6] == "-"


def test_implementations_take_turns(script):
    model, condensed = sparse_model("mlp")
    calls = []

    def sampler(fn, seconds, min_repeats):
        calls.append(fn)
        fn()
        return [1e-3] * min_repeats

    rows = script.run_rows(model, condensed, inputs(script, [2]), [1], 0.001,
                           rounds=3, sampler=sampler)
    assert len(calls) == 2 * 3 and calls[:2] * 3 == calls     # dense, condensed, dense, ...
    assert rows[0]["speedup_vs_dense"] == 1.0


def test_table_flags_rows_whose_predictions_differ(script):
    row = {"batch": 1, "threads": 1, "dense_s": 2e-3, "torch_s": None, "condensed_s": 1e-3,
           "speedup_vs_dense": 2.0, "speedup_vs_torch": None, "same_predictions": False}
    assert script.format_table([row])[1].endswith("PREDICTIONS DIFFER")


def test_cpu_path_is_unknown_when_the_kernels_do_not_say(script, monkeypatch):
    from srigl_np import kernels

    monkeypatch.delattr(kernels, "cpu_path", raising=False)
    assert script.cpu_path() == "unknown"
    monkeypatch.setattr(kernels, "cpu_path", "avx2", raising=False)
    assert script.cpu_path() == "avx2"
    monkeypatch.setattr(kernels, "cpu_path", lambda: "avx512", raising=False)
    assert script.cpu_path() == "avx512"


@pytest.mark.parametrize("no_torch", [True, False])
def test_main_prints_the_header_and_writes_json(script, tmp_path, capsys, no_torch):
    path = tmp_path / "model.json"
    argv = ["--model", "mlp", "--batch-sizes", "1", "2", "--threads", "1", "--min-time",
            "0.001", "--rounds", "2", "--json", str(path)] + (["--no-torch"] if no_torch else [])
    assert script.main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    has_torch = not no_torch and report["torch"].get("version") is not None
    assert "machine:" in out and "kernel ISA path:" in out and "dtype float32" in out
    assert "batch [1, 2]; threads [1]" in out
    assert report["dtype"] == "float32" and report["machine"]["isa"]
    assert [(r["batch"], r["threads"]) for r in report["rows"]] == [(1, 1), (2, 1)]
    if has_torch:
        assert "torch vs dense, max |logit diff|" in out
        assert set(report["torch"]["max_abs_logit_diff"]) == {"1", "2"}
        assert all(r["torch_s"] > 0 for r in report["rows"])
    else:
        assert "torch column skipped" in out and "skipped" in report["torch"]
        assert all(r["torch_s"] is None for r in report["rows"])


def test_main_refuses_bad_arguments(script):
    for argv in (["--threads", "0"], ["--batch-sizes", "0"], ["--rounds", "0"],
                 ["--json", "/nonexistent-dir/x.json"]):
        with pytest.raises(SystemExit):
            script.parse_args(argv)
