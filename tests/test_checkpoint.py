"""The training checkpoint format (srigl_np.formats.checkpoint): a round trip restores every
array, and every malformed file is refused with one ValueError naming what is wrong,
before anything is overwritten."""

import json

import numpy as np
import pytest

from srigl_np.formats.checkpoint import (CHECKPOINT_VERSION, check_data, load_checkpoint,
                                         read_meta, save_checkpoint)
from srigl_np.nn.layers import Linear, ReLU, Sequential
from srigl_np.nn.normalization import BatchNorm1d
from srigl_np.nn.losses import softmax_cross_entropy
from srigl_np.nn.optim import SGD
from srigl_np.dst.sparsity import DynamicSparsity

META = {"epoch": 2, "step": 3, "history": [{"loss": 1.5}], "optimizer_step_count": 3}


def build(seed):
    """(model, optimizer, sparsity): Linear(4, 6) - BatchNorm1d - ReLU - Linear(6, 3),
    SGD with momentum, SRigL at 50% sparsity."""
    rng = np.random.default_rng(seed)
    model = Sequential(Linear(4, 6, rng=rng), BatchNorm1d(6), ReLU(), Linear(6, 3, rng=rng))
    optimizer = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    sparsity = DynamicSparsity(model, optimizer, method="srigl", sparsity=0.5,
                               distribution="uniform", delta=2, t_end=10, seed=seed)
    return model, optimizer, sparsity


def train_steps(model, optimizer, sparsity, steps=3):
    """A few real SGD steps (one of them a topology update) so every array holds state."""
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, 3, 8)
    grads = model.named_grads()
    for step in range(steps):
        _, grad = softmax_cross_entropy(model.forward(x, True), y)
        model.backward(grad, input_grad=False)
        if sparsity.before_step(step, grads):
            optimizer.step(grads)
        sparsity.after_step(step, grads)


def every_array(model, optimizer, sparsity):
    arrays = {f"param/{k}": v for k, v in model.named_parameters().items()}
    arrays.update({f"buffer/{k}": v for k, v in model.named_buffers().items()})
    arrays.update({f"optim/{name}/{key}": v for name, state in optimizer.state.items()
                   for key, v in state.items()})
    arrays.update({f"dst/{k}": v for k, v in sparsity.state_dict().items()})
    return {k: np.array(v) for k, v in arrays.items()}


@pytest.fixture
def saved(tmp_path):
    """(path, arrays of the trained model that was saved there)."""
    model, optimizer, sparsity = build(seed=0)
    train_steps(model, optimizer, sparsity)
    sparsity.ablated["0.weight"] = np.array([1, 4], dtype=np.int64)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, META, model, optimizer, sparsity)
    return path, every_array(model, optimizer, sparsity)


def test_round_trip_restores_every_array_and_the_meta(saved):
    path, expected = saved
    model, optimizer, sparsity = build(seed=7)
    assert not all(np.array_equal(expected[k], v)
                   for k, v in every_array(model, optimizer, sparsity).items())
    meta = load_checkpoint(path, model, optimizer, sparsity)
    assert meta == {"version": CHECKPOINT_VERSION, **META}
    assert optimizer.step_count == 3
    restored = every_array(model, optimizer, sparsity)
    assert sorted(restored) == sorted(expected)
    for key, value in expected.items():
        assert restored[key].dtype == value.dtype, key
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
    # Masks and weights agree after the load: training goes on from the same state.
    for name, mask in sparsity.masks.items():
        assert not np.any(model.named_parameters()[name][~mask])


def test_read_meta_reads_the_meta_alone_and_checks_it(saved, tmp_path):
    path, _ = saved
    assert read_meta(path) == {"version": CHECKPOINT_VERSION, **META}
    np.savez(tmp_path / "bad.npz", meta=np.array(json.dumps({"version": 99})))
    with pytest.raises(ValueError, match=r"bad.npz: checkpoint version 99 is not 1$"):
        read_meta(tmp_path / "bad.npz")


DATA = {"name": "mnist", "source": "/data/mnist", "n_train": 60000, "n_test": 10000,
        "sha256": "ab" * 32}


def test_check_data_refuses_other_data_naming_both():
    assert check_data("c.npz", DATA, {**DATA, "source": "/moved/mnist"}) is None
    for change in ({"sha256": "cd" * 32}, {"n_test": 9999}):
        with pytest.raises(ValueError) as info:
            check_data("c.npz", DATA, {**DATA, "name": "fashion-mnist", **change})
        message = str(info.value)
        assert message.startswith("c.npz was trained on mnist from /data/mnist (60000 train / "
                                  "10000 test images, sha256 abababababab), but this run "
                                  "loads fashion-mnist from /data/mnist")
        assert "\n" not in message


@pytest.mark.parametrize("saved_data", [None, {"source": "/data/mnist", "mean": 0.1}])
def test_check_data_lets_an_older_checkpoint_through_with_a_note(saved_data):
    assert check_data("c.npz", saved_data, DATA) == (
        "note: c.npz does not record a fingerprint of its data (an older checkpoint); "
        "resuming without checking that the data is the same")


def test_round_trip_without_sparsity_ignores_the_dst_section(saved):
    path, expected = saved
    model, optimizer, _ = build(seed=7)
    load_checkpoint(path, model, optimizer)
    np.testing.assert_array_equal(model.named_parameters()["3.weight"], expected["param/3.weight"])


# -- malformed files --------------------------------------------------------------------------

def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _with_meta(edit):
    def change(arrays):
        meta = json.loads(str(arrays["meta"]))
        edit(meta)
        arrays["meta"] = np.array(json.dumps(meta))
    return change


def _set(key, value):
    def change(arrays):
        arrays[key] = value(arrays[key]) if callable(value) else value
    return change


def _drop(key):
    return lambda arrays: arrays.pop(key)


@pytest.mark.parametrize("change, message", [
    (_drop("meta"), r"is not a srigl_np checkpoint \(no 'meta'\)"),
    (_set("meta", np.arange(3)),
     r"'meta' must be a JSON string, got a int64 array of shape \(3,\)"),
    (_set("meta", np.array("{epoch: 1")), r"'meta' is not valid JSON"),
    (_set("meta", np.array("[1, 2]")), r"'meta' must be a JSON object, got list"),
    (_with_meta(lambda m: m.update(version=2)), r"checkpoint version 2 is not 1"),
    (_with_meta(lambda m: m.pop("version")), r"checkpoint version None is not 1"),
    (_with_meta(lambda m: m.pop("optimizer_step_count")),
     r"meta 'optimizer_step_count' is missing; expected an integer >= 0"),
    (_with_meta(lambda m: m.update(optimizer_step_count=-1)), r"'optimizer_step_count' is -1"),
    (_with_meta(lambda m: m.update(optimizer_step_count="3")), r"'optimizer_step_count' is '3'"),
    (_with_meta(lambda m: m.update(optimizer_step_count=True)), r"'optimizer_step_count' is True"),
    (_drop("param/0.weight"), r"parameter '0.weight' is missing"),
    (_set("param/0.weight", lambda a: a.T.copy()),
     r"parameter '0.weight' must be float32 \(6, 4\), got float32 \(4, 6\)"),
    (_set("param/3.bias", lambda a: a.astype(np.float64)),
     r"parameter '3.bias' must be float32 \(3,\), got float64 \(3,\)"),
    (_set("param/9.weight", np.zeros(2, np.float32)), r"parameter '9.weight' is not in the model"),
    (_drop("buffer/1.running_var"), r"buffer '1.running_var' is missing"),
    (_drop("optim/3.weight/momentum_buffer"),
     r"optimizer state '3.weight/momentum_buffer' is missing"),
    (_set("optim/1.bias/momentum_buffer", np.zeros(5, np.float32)),
     r"optimizer state '1.bias/momentum_buffer' must be float32 \(6,\), got float32 \(5,\)"),
    (_set("dst/mask/0.weight", lambda a: a.astype(np.uint8)),
     r"sparsity state 'mask/0.weight' must be bool \(6, 4\), got uint8 \(6, 4\)"),
    (_set("dst/mask/3.weight", lambda a: a[:2]),
     r"sparsity state 'mask/3.weight' must be bool \(3, 6\), got bool \(2, 6\)"),
    (_drop("dst/ever_active/3.weight"), r"sparsity state 'ever_active/3.weight' is missing"),
    (_drop("dst/ablated/0.weight"), r"sparsity state 'ablated/0.weight' is missing"),
    (_set("dst/ablated/0.weight", lambda a: a.astype(np.float64)),
     r"sparsity state 'ablated/0.weight' must be a 1-D integer array, got float64 \(2,\)"),
    (_set("dst/ablated/0.weight", np.array([6])),
     r"'ablated/0.weight' must hold neuron indices in \[0, 6\), got values in \[6, 6\]"),
    (_set("dst/mask/5.weight", np.ones((2, 2), bool)), r"sparsity state 'mask/5.weight' is not"),
    # Non-finite values, named by array (issue 20): never restored into a model.
    (_set("param/0.weight", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0,
                                               np.nan, a).astype(a.dtype)),
     r"parameter '0.weight' holds non-finite values \(1 NaN or Inf, first at \(0, 0\)\)"),
    (_set("buffer/1.running_var", lambda a: np.full_like(a, np.inf)),
     r"buffer '1.running_var' holds non-finite values \(6 NaN or Inf, first at \(0,\)\)"),
    (_set("optim/3.weight/momentum_buffer", lambda a: np.full_like(a, -np.inf)),
     r"optimizer state '3.weight/momentum_buffer' holds non-finite values"),
    # Meta records of kinds no trainer writes.
    (_with_meta(lambda m: m.update(epoch=-1)), r"meta 'epoch' is -1; expected an integer >= 0"),
    (_with_meta(lambda m: m.update(step=2**63)), r"meta 'step' is 9223372036854775808"),
    (_with_meta(lambda m: m.update(history={})), r"meta 'history' must be a list"),
    (_with_meta(lambda m: m.update(layer_sparsity={"0.weight": 1.0})),
     r"meta 'layer_sparsity' must be an object of layer names to sparsities in \[0, 1\)"),
    (_with_meta(lambda m: m.update(layer_sparsity={"0.weight": float("nan")})),
     r"meta 'layer_sparsity' must be"),
    (_with_meta(lambda m: m.update(kept_dense={"0.weight": "two\nlines"})),
     r"meta 'kept_dense' must be an object of layer names to reasons \(one printable line"),
    (_with_meta(lambda m: m.update(data={"mean": 0.3, "std": 0.0})), r"meta 'data' must be"),
    (_with_meta(lambda m: m.update(data={"n_test": -1})), r"meta 'data' must be"),
    (_with_meta(lambda m: m.update(data=[1] * 1000)), r"meta 'data' must be .*, got \[1, 1, "
                                                      r"1, .*\.\.\.$"),
])
def test_load_refuses_a_malformed_checkpoint_and_changes_nothing(saved, tmp_path, change, message):
    path, _ = saved
    arrays = _arrays(path)
    change(arrays)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    model, optimizer, sparsity = build(seed=7)
    before = every_array(model, optimizer, sparsity)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(bad, model, optimizer, sparsity)
    assert type(error.value) is ValueError and str(bad) in str(error.value)
    after = every_array(model, optimizer, sparsity)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert optimizer.step_count == 0


def _truncated(path, good):
    path.write_bytes(good.read_bytes()[:200])


@pytest.mark.parametrize("write, message", [
    (lambda path, good: None, r"is not a file \(missing\)"),
    (lambda path, good: path.mkdir(), r"is not a file \(a directory\)"),
    (lambda path, good: path.write_text("epoch,loss\n1,0.5\n"), r"not an .npz archive"),
    (lambda path, good: path.write_bytes(b""), r"not an .npz archive"),
    (_truncated, r"not an .npz archive"),
    (lambda path, good: np.save(path, np.zeros(3)), r"it holds one .npy array, not an .npz"),
])
def test_load_refuses_what_is_not_an_npz_file(saved, tmp_path, write, message):
    good, _ = saved
    path = tmp_path / "other"
    write(path, good)
    if path.with_suffix(".npy").exists():   # np.save appends .npy
        path = path.with_suffix(".npy")
    model, optimizer, sparsity = build(seed=7)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path, model, optimizer, sparsity)
    assert type(error.value) is ValueError and str(path) in str(error.value)


def test_a_member_that_lies_about_its_size_is_refused_before_it_is_read(saved, tmp_path):
    """Checkpoints are read by formats.npz.read_npz: a member whose .npy header claims
    4 TiB is refused by its size, before anything is allocated or restored."""
    import zipfile

    from npz_files import npy_header

    good, _ = saved
    path = tmp_path / "lie.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            lie = info.filename == "param/0.weight.npy"
            target.writestr(info.filename, npy_header((2**40,)) if lie else source.read(info))
    model, optimizer, sparsity = build(seed=7)
    before = every_array(model, optimizer, sparsity)
    with pytest.raises(ValueError, match=r"^cannot read checkpoint .*lie.npz: member "
                                         r"'param/0.weight.npy': its .npy header declares "
                                         r"shape \(1099511627776,\) of float32") as error:
        load_checkpoint(path, model, optimizer, sparsity)
    assert "\n" not in str(error.value)
    after = every_array(model, optimizer, sparsity)
    assert all(np.array_equal(before[k], after[k]) for k in before)


# --- loading a run for inference ------------------------------------------------------------

def test_load_model_needs_no_optimizer_and_condenses_by_the_masks(srigl_run):
    import json

    from srigl_np.inference.condensing import condense_run
    from srigl_np.data import load_dataset
    from srigl_np.formats.checkpoint import load_model

    run = load_model(srigl_run)
    assert run.config["model"] == "mlp" and sorted(run.masks) == ["1.weight", "3.weight",
                                                                 "5.weight"]
    for name, mask in run.masks.items():
        assert not (run.model.named_parameters()[name][~mask]).any()
    condensed = condense_run(run)
    assert [e["result"] for e in condensed.report] == ["condensed"] * 3
    assert {e["structure"] for e in condensed.report} == {"mask"}
    data = load_dataset("embedded")
    # Raw uint8 test images, normalised inside with the run's statistics.
    accuracy = float((condensed.predict(data.x_test) == data.y_test).mean())
    metrics = json.loads((srigl_run / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1e-9)


def test_load_model_falls_back_to_metrics_json_for_older_checkpoints(srigl_run, tmp_path):
    from srigl_np.formats.checkpoint import load_model

    arrays = dict(np.load(srigl_run / "checkpoint.npz"))
    meta = json.loads(str(arrays["meta"]))
    del meta["data"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    assert load_model(tmp_path).input_stats is None          # no metrics.json beside it
    (tmp_path / "metrics.json").write_text((srigl_run / "metrics.json").read_text())
    assert load_model(tmp_path / "checkpoint.npz").input_stats == load_model(
        srigl_run).input_stats
    # Checked as the meta's own are (issue 20).
    (tmp_path / "metrics.json").write_text(json.dumps({"data": {"mean": "x", "std": 0}}))
    with pytest.raises(ValueError, match=r"checkpoint.npz: the input statistics of its run "
                                         r"must be finite numbers, std > 0, got mean 'x', "
                                         r"std 0$"):
        load_model(tmp_path)


@pytest.mark.parametrize("edit, match", [
    (lambda a, m: m["config"].update(model="resnet"), "must name a model"),
    (lambda a, m: a.pop("param/1.weight"), "parameter '1.weight' is missing"),
    (lambda a, m: a.update({"dst/mask/1.weight": a["dst/mask/1.weight"][:, :3]}),
     "must be a bool mask"),
    (lambda a, m: a.update({"dst/mask/9.weight": np.ones(3, bool)}), "must be a bool mask"),
])
def test_load_model_refuses_bad_checkpoints(srigl_run, tmp_path, edit, match):
    from srigl_np.formats.checkpoint import load_model

    arrays = dict(np.load(srigl_run / "checkpoint.npz"))
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "checkpoint.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_model(tmp_path)


def test_a_pickle_is_refused_without_advice_to_unpickle_it(tmp_path):
    import pickle

    path = tmp_path / "checkpoint.npz"
    path.write_bytes(pickle.dumps({"meta": "x"}))
    with pytest.raises(ValueError) as error:
        load_checkpoint(path, None, None)
    assert "srigl_np never unpickles" in str(error.value)
    assert "allow_pickle" not in str(error.value)


def test_masks_that_disagree_with_the_weights_are_refused(saved):
    path, _ = saved
    arrays = dict(np.load(path))
    mask = arrays["dst/mask/0.weight"]
    row, column = np.argwhere(~mask)[0]
    arrays["param/0.weight"][row, column] = 0.5
    np.savez(path, **arrays)
    model, optimizer, sparsity = build(seed=0)
    with pytest.raises(ValueError, match=r"parameter '0.weight' has 1 non-zero weights "
                                         r"outside its mask .*disagree"):
        load_checkpoint(path, model, optimizer, sparsity)


# --- hostile files: refused before they cost memory, in one line ------------------------------

def _copy_run(srigl_run, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(srigl_run, run)
    return run


def _readers(model_built_by):
    """(name, call(path)) of every reader of a checkpoint."""
    from srigl_np.formats.checkpoint import load_model
    return [("load_checkpoint", lambda path: load_checkpoint(path, *model_built_by())),
            ("read_meta", read_meta), ("load_model", load_model)]


STRAY = "is not part of a srigl_np checkpoint"


@pytest.mark.parametrize("member, refusals", [
    # {reader: words of its refusal, or None: never read, so nothing to refuse}
    ("extra.npy", {"load_checkpoint": STRAY, "read_meta": STRAY, "load_model": STRAY}),
    ("optim/x/y.npy", {"load_checkpoint": "optimizer state 'x/y' is not in the model",
                       "read_meta": None, "load_model": "member 'optim/x/y' belongs to none"}),
    ("param/9.weight.npy", {"load_checkpoint": "parameter '9.weight' is not in the model",
                            "read_meta": None, "load_model": "parameter '9.weight' is not"}),
    # load_checkpoint without a DynamicSparsity neither checks nor reads dst/
    ("dst/other/1.weight.npy", {"load_checkpoint": None, "read_meta": None,
                                "load_model": "member 'dst/other/1.weight' belongs to none"}),
])
def test_a_stray_member_is_refused_or_never_inflated(srigl_run, tmp_path, member, refusals):
    """A checkpoint with one more deflated member, 32 MiB of zeros in a few kB: every
    reader refuses it by its name before reading it, or never reads it. The probe: a
    3.7 MB checkpoint with a 1 GB member cost 1 GB and exited 0."""
    from npz_files import add_zeros, npy_header, peak_bytes
    from srigl_np.nn.models import build as build_model

    def model_and_optimizer():
        model = build_model("mlp", rng=np.random.default_rng(0))
        return model, SGD(model.named_parameters(), lr=0.1, momentum=0.9)

    run = _copy_run(srigl_run, tmp_path)
    add_zeros(run / "checkpoint.npz", member, 32 << 20, npy_header((8 << 20,)))
    for reader, call in _readers(model_and_optimizer):
        error, peak = peak_bytes(lambda: call(run / "checkpoint.npz"))
        assert peak < 8 << 20, (reader, peak)
        words = refusals[reader]
        if words is None:
            assert error is None, (reader, error)
        else:
            assert error is not None and words in str(error), (reader, error)
            assert "\n" not in str(error) and str(run) in str(error)


def test_a_member_of_the_wrong_shape_is_refused_before_it_is_read(saved, tmp_path):
    """param/0.weight declaring 32 MiB (a few kB deflated): refused by its declared shape."""
    from npz_files import npy_header, peak_bytes, replace_with_zeros
    path = replace_with_zeros(saved[0], tmp_path / "big.npz", "param/0.weight.npy", 32 << 20,
                              npy_header((4096, 2048)))
    model, optimizer, sparsity = build(seed=7)
    error, peak = peak_bytes(lambda: load_checkpoint(path, model, optimizer, sparsity))
    assert peak < 4 << 20
    assert str(error) == (f"{path}: parameter '0.weight' must be float32 (6, 4), "
                          f"got float32 (4096, 2048)")


def test_a_huge_meta_is_refused_before_it_is_read(saved, tmp_path):
    from npz_files import npy_header, peak_bytes, replace_with_zeros
    path = replace_with_zeros(saved[0], tmp_path / "meta.npz", "meta.npy", 4 * 50_000_000,
                              npy_header((), "<U50000000"))
    error, peak = peak_bytes(lambda: read_meta(path))
    assert peak < 1 << 20
    assert str(error) == (f"{path}: 'meta' declares 50000000 characters of JSON, more than "
                          f"the 4194304 srigl_np reads")


def test_a_deeply_nested_meta_is_one_line_naming_the_file(saved, srigl_run, tmp_path):
    """json.loads raised RecursionError (a traceback) on 50,000 nested lists."""
    for source, readers in [(saved[0], ("load_checkpoint", "read_meta")),
                            (srigl_run / "checkpoint.npz", ("load_model",))]:
        arrays = _arrays(source)
        meta = json.loads(str(arrays["meta"]))
        meta["history"] = "HOLE"
        arrays["meta"] = np.array(json.dumps(meta).replace('"HOLE"', "[" * 50000 + "]" * 50000))
        path = tmp_path / f"deep-{len(readers)}.npz"
        np.savez(path, **arrays)
        for reader, call in _readers(lambda: build(seed=7)[:2]):
            if reader in readers:
                with pytest.raises(ValueError) as error:
                    call(path)
                assert str(error.value) == (f"{path}: 'meta': JSON nested 50001 deep, more "
                                            f"than the 32 levels srigl_np reads")


def test_a_member_that_is_not_npy_is_one_line_from_every_reader_and_command(
        srigl_run, tmp_path, capsys):
    """A checkpoint.npz with a notes.txt member: read_npz refuses it, and every command
    that reads a checkpoint says so in one line (exit 1)."""
    import zipfile

    from srigl_np import audit, condense, explain, train
    run = _copy_run(srigl_run, tmp_path)
    with zipfile.ZipFile(run / "checkpoint.npz", "a") as archive:
        archive.writestr("notes.txt", b"hello")
    expected = (f"cannot read checkpoint {run / 'checkpoint.npz'}: member 'notes.txt' is "
                f"not a .npy array")
    for reader, call in _readers(lambda: build(seed=7)[:2]):
        with pytest.raises(ValueError) as error:
            call(run / "checkpoint.npz")
        assert str(error.value) == expected, reader
    capsys.readouterr()
    for main, argv in [(audit.main, [str(run)]),
                       (condense.main, [str(run), "--out", str(tmp_path / "c.npz")]),
                       (explain.main, ["--checkpoint", str(run), "--layer", "1.weight"]),
                       (train.main, ["--resume", str(run)])]:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.endswith(f": error: {expected}\n") and err.count("\n") == 1, err
