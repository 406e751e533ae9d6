"""One audit for any model (python -m srigl_np.audit PATH) and python -m srigl_np.condense."""

import json
import re

import numpy as np
import pytest
import scipy.sparse

from srigl_np import audit, condense as condense_cli, model_audit
from srigl_np.inference.condensing import condense_run
from srigl_np.formats.checkpoint import load_model
from strategies import fan_in_weight


def _audit(capsys, *argv):
    status = audit.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_run_directory_shows_its_trail_and_its_layers(srigl_run, capsys):
    status, out, err = _audit(capsys, srigl_run)
    assert status == 0 and not err
    assert "audit.jsonl" in out and "run, structure from mask" in out
    assert out.count("constant fan-in") == 2 and "VIOLATED" not in out


def test_json_has_one_entry_per_sparse_layer(srigl_run, capsys):
    status, out, _ = _audit(capsys, srigl_run / "checkpoint.npz", "--json")
    report = json.loads(out)
    assert status == 0 and report["kind"] == "checkpoint"
    assert [layer["layer"] for layer in report["layers"]] == ["1.weight", "3.weight"]
    first = report["layers"][0]
    assert first["constant_fan_in"] and first["claimed"] and first["ok"]
    assert first["nnz"] == first["k"] * first["active_neurons"]
    assert first["violations"] == [] and first["outside_mask"] == 0


def _tampered_checkpoint(srigl_run, tmp_path, edit):
    arrays = dict(np.load(srigl_run / "checkpoint.npz"))
    edit(arrays)
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    return tmp_path / "checkpoint.npz"


def test_a_claimed_layer_with_ragged_fan_in_fails_naming_the_neuron(srigl_run, tmp_path, capsys):
    def drop_one_weight(arrays):
        mask = arrays["dst/mask/1.weight"]
        column = np.flatnonzero(mask[4])[0]
        mask[4, column] = False
        arrays["param/1.weight"][4, column] = 0.0
    path = _tampered_checkpoint(srigl_run, tmp_path, drop_one_weight)
    status, out, _ = _audit(capsys, path)
    assert status == 1 and "VIOLATED" in out
    assert "neuron 4" in out and "ragged" in out


def test_weights_outside_the_mask_are_counted(srigl_run, tmp_path, capsys):
    def weight_outside(arrays):
        mask = arrays["dst/mask/3.weight"]
        row, column = np.argwhere(~mask)[0]
        arrays["param/3.weight"][row, column] = 0.5
    path = _tampered_checkpoint(srigl_run, tmp_path, weight_outside)
    status, out, _ = _audit(capsys, path, "--json")
    layer = json.loads(out)["layers"][1]
    assert status == 1 and layer["outside_mask"] == 1
    assert layer["violations"][0]["kind"] == "outside_mask"


def test_a_condensed_file_audits_clean(srigl_run, tmp_path, capsys):
    path = tmp_path / "condensed.npz"
    condense_run(load_model(srigl_run)).save(path)
    status, out, _ = _audit(capsys, path, "--json")
    report = json.loads(out)
    assert status == 0 and report["kind"] == "condensed"
    assert all(layer["claimed"] and layer["constant_fan_in"] for layer in report["layers"])


def test_a_scipy_matrix_keeps_its_explicit_zeros_as_the_mask(tmp_path, capsys):
    rng = np.random.default_rng(0)
    weight = fan_in_weight((6, 20), 4, rng, ablated=(3,))
    csr = scipy.sparse.csr_array(weight)
    csr.data[0] = 0.0                                     # an explicit zero
    scipy.sparse.save_npz(tmp_path / "w.npz", csr)
    status, out, _ = _audit(capsys, tmp_path / "w.npz", "--json")
    layer = json.loads(out)["layers"][0]
    assert status == 0 and json.loads(out)["kind"] == "scipy"
    assert layer["k"] == 4 and layer["ablated"] == [3] and layer["zeros_in_mask"] == 1
    assert not layer["claimed"]


def test_ragged_layers_that_claim_nothing_pass(tmp_path, capsys):
    weight = np.zeros((3, 5), np.float32)
    weight[0, :2] = weight[1, :3] = 1.0
    scipy.sparse.save_npz(tmp_path / "w.npz", scipy.sparse.csr_array(weight))
    status, out, _ = _audit(capsys, tmp_path / "w.npz")
    assert status == 0 and "ragged 2-3" in out


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing.pt", "no such file or directory"),
    (lambda p: p, "audit.jsonl: no such file"),
    (lambda p: (p / "junk.pt").write_bytes(b"not a model at all") and p / "junk.pt", "junk.pt"),
])
def test_a_bad_path_is_one_line(tmp_path, capsys, make, match):
    (tmp_path / "sub").mkdir()
    status, out, err = _audit(capsys, make(tmp_path / "sub"))
    assert status == 1 and not out
    assert len(err.strip().splitlines()) == 1 and match in err


def test_audit_layer_reports_every_violation_of_a_claimed_layer():
    weight = np.ones((4, 6), np.float32)
    mask = np.ones((4, 6), dtype=bool)
    mask[1, :2] = False
    mask[3, :3] = False
    weight[3, 0] = 2.0            # outside the mask
    weight[~mask] = 0.0
    weight[3, 0] = 2.0
    result = model_audit.audit_layer("w", weight, mask, claimed=True)
    assert not result["ok"] and result["fan_in_range"] == [3, 6]
    assert {v["kind"] for v in result["violations"]} == {"outside_mask", "fan_in"}


# --- python -m srigl_np.condense ------------------------------------------------------------

def test_condense_cli_writes_the_model_and_evaluates_it(srigl_run, tmp_path, capsys):
    out = tmp_path / "m.npz"
    lines = []
    assert condense_cli.main([str(srigl_run), "--out", str(out), "--evaluate", "embedded"],
                             log=lines.append) == 0
    assert sum("condensed (constant fan-in; structure from mask" in line
               for line in lines) == 3
    metrics = json.loads((srigl_run / "metrics.json").read_text())
    assert f"condensed accuracy {100 * metrics['test_accuracy']:.2f}%" in lines[-1]
    assert "predictions agree on 100.00%" in lines[-1]
    # An existing file is kept unless --force.
    assert condense_cli.main([str(srigl_run), "--out", str(out)], log=lines.append) == 1
    assert "pass --force" in capsys.readouterr().err
    assert condense_cli.main([str(srigl_run), "--out", str(out), "--force"], log=lines.append) == 0


def test_condense_cli_takes_a_scipy_matrix_and_refuses_a_condensed_file(tmp_path, capsys):
    rng = np.random.default_rng(1)
    scipy.sparse.save_npz(tmp_path / "w.npz",
                          scipy.sparse.csr_array(fan_in_weight((5, 9), 2, rng)))
    assert condense_cli.main([str(tmp_path / "w.npz"), "--out", str(tmp_path / "m.npz")],
                             log=lambda line: None) == 0
    assert condense_cli.main([str(tmp_path / "m.npz"), "--out", str(tmp_path / "n.npz")],
                             log=lambda line: None) == 1
    assert "already a condensed model" in capsys.readouterr().err


# --- a checkpoint of the SRigL authors' format: import, audit, condense, predict ----------

def _authors_file(tmp_path, zeros_in_masks=True):
    """The authors' checkpoint layout (no torch): MnistNet, a RigLConstFanScheduler state;
    a few weights inside the masks are exactly 0, as grown-at-zero weights are."""
    from test_importing import authors_checkpoint, mnist_masks, mnist_state, pruner_state
    from torch_files import write_torch_zip

    masks = mnist_masks(0)
    state = mnist_state(1, masks)
    if zeros_in_masks:
        rows, cols = np.nonzero(masks["fc1"])
        state["fc1.weight"][rows[::50], cols[::50]] = 0.0
    path = tmp_path / "checkpoint.pt.tar"
    write_torch_zip(path, authors_checkpoint(state, pruner_state(masks)))
    return path, masks, state


def test_an_authors_checkpoint_audits_clean_and_condenses_every_layer(tmp_path, capsys):
    from srigl_np.inference.condensed_model import load
    from srigl_np.formats.importing import read_torch_checkpoint
    from srigl_np.formats.model_map import to_model

    path, masks, _ = _authors_file(tmp_path)
    status, out, _ = _audit(capsys, path, "--json")
    report = json.loads(out)
    assert status == 0 and report["kind"] == "torch" and report["structure"] == "mask"
    assert [layer["layer"] for layer in report["layers"]] == ["conv2.weight", "fc1.weight"]
    assert all(layer["claimed"] and layer["ok"] for layer in report["layers"])
    assert report["layers"][1]["zeros_in_mask"] > 0
    lines = []
    assert condense_cli.main([str(path), "--out", str(tmp_path / "m.npz")],
                             log=lines.append) == 0
    layer_lines = [line for line in lines if line.startswith("layer ")]
    assert len(layer_lines) == 4 and all(": condensed (constant fan-in" in line
                                         for line in layer_lines), lines
    # conv2 and fc1 by the pruner's masks; conv1 and fc2 are dense: all-True masks.
    assert all("structure from mask" in line for line in layer_lines)
    model, _, _ = to_model(read_torch_checkpoint(path))
    x = np.random.default_rng(3).standard_normal((6, 1, 28, 28)).astype(np.float32)
    condensed = load(tmp_path / "m.npz")
    assert np.abs(condensed(x) - model.forward(x, training=False)).max() <= 1e-4


def test_an_authors_checkpoint_saved_by_torch_predicts_like_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from srigl_np.inference.condensing import condense
    from srigl_np.formats.importing import read_torch_checkpoint
    from srigl_np.formats.model_map import to_model
    from test_importing import (authors_checkpoint, mnist_masks, pruner_state,
                                trained_sparse_mnist_net)

    masks = mnist_masks(5)
    net, optimizer, scheduler = trained_sparse_mnist_net(torch, masks)
    pruner = pruner_state(masks, bool_array=torch.from_numpy, scalar=torch.tensor)
    path = tmp_path / "best-checkpoint.pt.tar"
    torch.save(authors_checkpoint(net.state_dict(), pruner, optimizer.state_dict(),
                                  scheduler.state_dict(), {}, cfg=None,
                                  checkpoint_dir=None), path)
    model, our_masks, _ = to_model(read_torch_checkpoint(path))
    condensed = condense(model, masks=our_masks)
    assert [e["result"] for e in condensed.report] == ["condensed"] * 4
    x = np.random.default_rng(4).standard_normal((16, 1, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(condensed(x) - expected).max() <= 1e-4
    np.testing.assert_array_equal(condensed.predict(x), expected.argmax(axis=1))


def test_a_dense_run_condenses_by_all_true_masks_and_has_no_sparse_layer(tmp_path, capsys):
    from srigl_np.train import main

    out = tmp_path / "dense"
    assert main(["--model", "mlp", "--method", "dense", "--epochs", "1", "--dataset",
                 "embedded", "--progress", "off", "--out", str(out)]) == 0
    run = load_model(out)
    run.model.layers[3].params["weight"][0, :5] = 0.0     # exact zeros in a dense layer
    assert sorted(run.masks) == ["1.weight", "3.weight", "5.weight"]
    condensed = condense_run(run)
    assert [(e["result"], e["k"]) for e in condensed.report] == [
        ("condensed", 784), ("condensed", 300), ("condensed", 100)]
    status, text, _ = _audit(capsys, out)
    assert status == 0 and "no sparse layers" in text


# --- scipy matrices of every format; sizes the audit would hold densely ------------------

@pytest.mark.parametrize("kind", ["csr", "csc", "coo", "bsr", "dia"])
@pytest.mark.parametrize("as_array", [False, True])
def test_a_scipy_matrix_of_every_format_audits_as_its_csr(tmp_path, capsys, kind, as_array):
    """A DIA file was sniffed as a PyTorch file and refused."""
    weight = fan_in_weight((6, 8), 3, np.random.default_rng(2), ablated=(1,))
    matrix = (scipy.sparse.csr_array if as_array else scipy.sparse.csr_matrix)(weight)
    scipy.sparse.save_npz(tmp_path / "w.npz", matrix.asformat(kind))
    status, out, err = _audit(capsys, tmp_path / "w.npz", "--json")
    assert status == 0 and not err
    report = json.loads(out)
    assert report["kind"] == "scipy" and report["layers"][0]["shape"] == [6, 8]
    if kind != "dia":   # DIA stores no explicit pattern: zeros of its diagonals drop out
        assert report["layers"][0]["k"] == 3 and report["layers"][0]["ablated"] == [1]


def _peak_bytes(function):
    import tracemalloc

    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("kind", ["coo", "csr"])
def test_a_huge_scipy_matrix_is_refused_by_size_before_it_is_made_dense(tmp_path, capsys,
                                                                        kind):
    """A 100000x100000 matrix is 37 GiB dense: a MemoryError traceback before."""
    matrix = scipy.sparse.coo_array((np.ones(3, np.float32), ([0, 5, 99999], [1, 2, 3])),
                                    shape=(100000, 100000))
    scipy.sparse.save_npz(tmp_path / "w.npz", matrix.asformat(kind))
    status = []
    peak = _peak_bytes(lambda: status.append(audit.main([str(tmp_path / "w.npz")])))
    err = capsys.readouterr().err
    assert status == [1] and peak < 50 * 2**20
    assert err == (f"python -m srigl_np.audit: error: {tmp_path / 'w.npz'}: the matrix of "
                   f"shape 100000x100000 is too large to audit: its dense form holds "
                   f"10000000000 weights (37.3 GiB as float32), and the audit holds each "
                   f"layer densely, at most {model_audit.MAX_DENSE_WEIGHTS} weights\n")


def test_condense_takes_a_huge_sparse_matrix_in_memory_of_its_entries(tmp_path):
    """condense never needs the dense form: a 100000x100000 matrix with one entry per row."""
    rows = np.arange(100000)
    matrix = scipy.sparse.coo_array((np.ones(rows.size, np.float32), (rows, rows[::-1])),
                                    shape=(100000, 100000))
    scipy.sparse.save_npz(tmp_path / "w.npz", matrix)
    status = []
    peak = _peak_bytes(lambda: status.append(condense_cli.main(
        [str(tmp_path / "w.npz"), "--out", str(tmp_path / "m.npz")], log=lambda line: None)))
    assert status == [0] and peak < 50 * 2**20


def test_a_condensed_layer_too_large_to_make_dense_is_refused(tmp_path, capsys):
    from srigl_np.inference.condensed import CondensedLinear
    from srigl_np.inference.condensed_model import CondensedModel

    layer = CondensedLinear(np.ones((2, 1), np.float32), np.array([[0], [9]], np.int32),
                            np.array([0, 99999]), 100000, 100000)
    CondensedModel([layer]).save(tmp_path / "m.npz")
    status, out, err = _audit(capsys, tmp_path / "m.npz")
    assert status == 1 and not out
    assert "stage0 of shape 100000x100000 is too large to audit" in err


# --- NaN and infinity, complex and float64 weights: as strict as condense ----------------

def test_a_nan_weight_is_a_violation_even_in_a_layer_that_claims_nothing(tmp_path, capsys):
    """The audit said "check ok" for a matrix condense refuses."""
    weight = fan_in_weight((4, 6), 2, np.random.default_rng(0))
    weight[2, np.flatnonzero(weight[2])[0]] = np.nan
    scipy.sparse.save_npz(tmp_path / "w.npz", scipy.sparse.csr_array(weight))
    status, out, _ = _audit(capsys, tmp_path / "w.npz")
    assert status == 1 and "VIOLATED" in out
    assert "matrix: 1 weights are NaN or infinite; first at neuron 2, input " in out
    assert condense_cli.main([str(tmp_path / "w.npz"), "--out", str(tmp_path / "m.npz")],
                             log=lambda line: None) == 1
    assert "must be finite" in capsys.readouterr().err


def test_infinity_outside_the_audited_layers_fails_the_audit(srigl_run, tmp_path, capsys):
    def infinite_bias(arrays):
        arrays["param/1.bias"][3] = np.inf
    path = _tampered_checkpoint(srigl_run, tmp_path, infinite_bias)
    status, out, _ = _audit(capsys, path, "--json")
    report = json.loads(out)
    assert status == 1 and all(layer["ok"] for layer in report["layers"])
    assert report["not_finite"] == [{
        "array": "1.bias", "count": 1, "size": report["not_finite"][0]["size"],
        "index": [3], "message": f"1.bias: 1 of {report['not_finite'][0]['size']} values "
                                 f"are NaN or infinite; first at index [3]: inf"}]
    status, out, _ = _audit(capsys, path)
    assert status == 1 and "1.bias: 1 of" in out
    assert condense_cli.main([str(path), "--out", str(tmp_path / "m.npz")],
                             log=lambda line: None) == 1
    assert capsys.readouterr().err == (
        "python -m srigl_np.condense: error: 1.bias holds 1 NaN or infinite values (the "
        "first at index [3]: inf); a model with non-finite weights cannot be condensed\n")


def _linear_state_file(path, weight):
    from torch_files import write_torch_zip

    write_torch_zip(path, {"fc.weight": weight, "fc.bias": np.zeros(len(weight), np.float32)})
    return path


def test_complex_weights_are_refused_not_cast_to_their_real_part(tmp_path, capsys):
    weight = fan_in_weight((4, 6), 2, np.random.default_rng(0)).astype(np.complex64)
    path = _linear_state_file(tmp_path / "c.pt", weight)
    why = ("c.pt: model state entry 'fc.weight' holds complex numbers (complex64): weights "
           "are real, and the imaginary parts would be lost\n")
    assert _audit(capsys, path) == (1, "", f"python -m srigl_np.audit: error: {tmp_path}/{why}")
    assert condense_cli.main([str(path), "--out", str(tmp_path / "m.npz")]) == 1
    assert capsys.readouterr().err == f"python -m srigl_np.condense: error: {tmp_path}/{why}"


def test_complex_parameters_of_our_checkpoint_are_refused(srigl_run, tmp_path, capsys):
    def complex_weight(arrays):
        arrays["param/1.weight"] = arrays["param/1.weight"].astype(np.complex64)
    path = _tampered_checkpoint(srigl_run, tmp_path, complex_weight)
    status, out, err = _audit(capsys, path)
    assert status == 1 and not out and len(err.splitlines()) == 1
    assert "1.weight" in err and "complex64" in err, err


def test_float64_weights_beyond_float32_are_out_of_range_not_non_finite(tmp_path, capsys):
    weight = fan_in_weight((4, 6), 2, np.random.default_rng(0)).astype(np.float64)
    weight[1, np.flatnonzero(weight[1])[0]] = -1e300
    expected = ("holds finite values out of float32 range (largest magnitude 1e+300; "
                "float32 holds up to 3.403e+38): srigl_np's weights are float32\n")
    torch_file = _linear_state_file(tmp_path / "w.pt", weight)
    scipy.sparse.save_npz(tmp_path / "w.npz", scipy.sparse.csr_array(weight))
    for path, name in ((torch_file, "fc.weight"), (tmp_path / "w.npz", "matrix")):
        assert _audit(capsys, path)[0] == 0   # finite: the audit reads it as it is
        assert condense_cli.main([str(path), "--out", str(tmp_path / "m.npz")],
                                 log=lambda line: None) == 1
        assert capsys.readouterr().err == (f"python -m srigl_np.condense: error: {path}: "
                                           f"{name} {expected}")


def _resnet_like(tmp_path, stem_kernel):
    """A CIFAR ResNet-18 state_dict at width 4 with a ``stem_kernel`` stem, written
    without torch: constant fan-in k=5 in every weighted layer but the stem."""
    from srigl_np.formats.layouts import cifar_resnet18
    from strategies import fan_in_weight
    from torch_files import write_torch_zip

    rng = np.random.default_rng(3)
    state = {}
    for key, shape in cifar_resnet18(width=4, blocks=(1, 1, 1, 1), num_classes=3).items():
        if key == "conv1.weight":
            shape = (4, 3, stem_kernel, stem_kernel)
            state[key] = rng.standard_normal(shape).astype(np.float32)
        elif len(shape) >= 2:
            state[key] = fan_in_weight(shape, 2 if np.prod(shape[1:]) < 8 else 5, rng)
        else:
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return write_torch_zip(tmp_path / "net.pt", state)


def test_an_unknown_architecture_audits_layer_by_layer_and_says_why_in_one_line(
        tmp_path, capsys):
    path = _resnet_like(tmp_path, 7)
    status, out, _ = _audit(capsys, path, "--expect-constant-fan-in")
    assert status == 0
    assert re.search(r"\nlayer4.0.conv2.weight +32x32x3x3 +160 ", out)   # the per-layer table
    model_line = next(line for line in out.splitlines() if line.startswith("model: "))
    assert model_line == ("model: no srigl_np model for this layout, so it cannot be "
                          "condensed: not cifar_resnet18: its stem 'conv1.weight' is 7x7, "
                          "not 3x3")
    assert "fan-in: constant in every sparse layer" in out
    assert "masks: from weight != 0 (none recorded" in out
    status, out, _ = _audit(capsys, path, "--json")
    report = json.loads(out)
    assert report["model"]["name"] is None and report["expect_constant_fan_in"] is False
    assert report["model"]["dense_layers"] == 1 and report["model"]["sparse_layers"] == 12


def test_arch_names_the_architecture_of_a_pytorch_file_only(srigl_run, tmp_path, capsys):
    path = _resnet_like(tmp_path, 3)
    status, out, _ = _audit(capsys, path, "--json", "--arch", "cifar_resnet18")
    model = json.loads(out)["model"]
    assert status == 0 and model["name"] == "cifar_resnet18"
    assert model["description"] == ("cifar_resnet18 (width=4, blocks=(1, 1, 1, 1), "
                                    "num_classes=3) (named by --arch cifar_resnet18)")
    status, out, _ = _audit(capsys, path, "--arch", "resnet50")
    assert status == 0 and ("model: no srigl_np model for this layout, so it cannot be "
                            "condensed: not resnet50: no 'layer1.0.conv3.weight'") in out
    for source in (srigl_run, srigl_run / "checkpoint.npz"):
        status, out, err = _audit(capsys, source, "--arch", "resnet50")
        assert status == 1 and not out and len(err.strip().splitlines()) == 1
        assert "PyTorch file" in err
    with pytest.raises(SystemExit):
        audit.main([str(path), "--arch", "resnet18"])


def test_layer_summary_counts_active_rows_and_the_rows_off_the_most_common_fan_in():
    from srigl_np.model_audit import layer_summary

    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 1, 0]],
                    bool)
    summary = layer_summary("w", np.where(mask, 0.5, 0.0), mask)
    assert (summary["neurons"], summary["active_neurons"]) == (5, 4)
    assert summary["active_percent"] == 80.0 and summary["fan_in"] == 4
    # fan-ins 2, 3, 2, 3 among the active rows: a tie, the larger count wins
    assert (summary["k"], summary["k_most_common"], summary["fan_in_range"]) == (None, 3, [2, 3])
    assert (summary["off_rows"], summary["first_off_row"]) == (2, 0)
    assert not summary["dense"] and not summary["constant_fan_in"]
    dense = layer_summary("d", np.ones((2, 3, 1, 1)))
    assert dense["dense"] and dense["k"] == 3 and dense["constant_fan_in"]


def test_format_model_keeps_every_line_short():
    from srigl_np.model_audit import Source, format_model, summarise_model

    rng = np.random.default_rng(0)
    layers = [(f"dense{i}.weight", np.ones((4, 3)), None) for i in range(9)]
    ragged = np.ones((3000, 300), bool)
    ragged[rng.choice(3000, 40, replace=False), 0] = False
    layers.append(("big.weight", np.ones((3000, 300)), ragged))
    summary = summarise_model(Source("p", "torch", layers, set(), "mask", [], model="x",
                                     model_line="x (a=1)", mask_source="masks"))
    lines = format_model(summary)
    assert lines[3] == ("dense layers: dense0.weight (k=3), dense1.weight (k=3), dense2.weight "
                        "(k=3), dense3.weight (k=3), dense4.weight (k=3), dense5.weight (k=3), "
                        "and 3 more")
    assert lines[-1] == ("  big.weight: fan-in 299-300; 40 of 3000 active rows are not at "
                         "k=300 (first: row " + str(int(np.flatnonzero(~ragged[:, 0])[0])) + ")")
    assert max(map(len, lines)) < 200


def test_condense_takes_arch_for_a_pytorch_file_and_says_in_one_line_when_it_does_not_fit(
        srigl_run, tmp_path, capsys):
    path = _resnet_like(tmp_path, 3)
    out = str(tmp_path / "m.npz")
    status = condense_cli.main([str(path), "--out", out, "--arch", "vit_b_16"],
                               log=lambda line: None)
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert ("no srigl_np model for this layout, so it cannot be condensed: not vit_b_16: no "
            "'conv_proj.weight' (python -m srigl_np.audit still audits its layers)") in err
    status = condense_cli.main([str(srigl_run), "--out", out, "--arch", "resnet50"],
                               log=lambda line: None)
    assert status == 1 and "--arch names the architecture of a PyTorch file" in (
        capsys.readouterr().err)
