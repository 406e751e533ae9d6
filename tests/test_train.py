"""The training CLI: argument errors, outputs, and bit-identical resume."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from srigl_np import dst
from srigl_np import train as train_module


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "srigl_np.train", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "-1"], "--epochs"),
    (["--model", "resnet"], "--model"),
    (["--dataset", "cifar"], "--dataset"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.5"], "--lr"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--batch-size", "0"], "--batch-size"),
    (["--method", "magic"], "--method"),
])
def test_invalid_values_exit_with_one_line_error(args, fragment):
    result = _run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_help_documents_every_flag():
    result = _run_cli("--help")
    assert result.returncode == 0
    for action in train_module.make_parser()._actions:
        for flag in action.option_strings:
            assert flag in result.stdout


def test_resume_of_missing_run_is_a_one_line_error(tmp_path):
    result = _run_cli("--resume", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


def _config(out, **overrides):
    args = train_module.make_parser().parse_args(
        ["--dataset", "embedded", "--epochs", "2", "--batch-size", "256", "--lr", "0.05",
         "--seed", "3", "--out", str(out)])
    config = train_module._config_from_args(args)
    config.update(overrides)
    return config


class _StopAfterFirstEpoch(Exception):
    pass


def _stop_after_first_epoch(line):
    if line.startswith("epoch"):
        raise _StopAfterFirstEpoch


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta"}


def _without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize("method", ["dense", "srigl", "set"])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, method):
    overrides = {"method": method, "delta": 5, "sparsity": 0.8}
    full = _config(tmp_path / "full", **overrides)
    metrics_full = train_module.train(full, log=lambda line: None)

    cut = _config(tmp_path / "cut", **overrides)
    with pytest.raises(_StopAfterFirstEpoch):
        train_module.train(cut, log=_stop_after_first_epoch)
    assert json.load(open(tmp_path / "cut" / "metrics.json"))["epochs"][-1]["epoch"] == 1
    metrics_resumed = train_module.train(cut, resume=True, log=lambda line: None)

    a = _arrays(tmp_path / "full" / "checkpoint.npz")
    b = _arrays(tmp_path / "cut" / "checkpoint.npz")
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert _without_seconds(metrics_full["epochs"]) == _without_seconds(metrics_resumed["epochs"])
    if method != "dense":
        assert (open(tmp_path / "full" / "audit.jsonl").read()
                == open(tmp_path / "cut" / "audit.jsonl").read())


def test_cli_run_writes_metrics_checkpoint_and_audit(tmp_path):
    out = tmp_path / "run"
    result = _run_cli("--dataset", "embedded", "--model", "mlp", "--epochs", "1",
                      "--batch-size", "128", "--lr", "0.05", "--method", "srigl",
                      "--delta", "10", "--out", str(out), "--progress", "off")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data: ") and "embedded" in lines[0]
    assert any("sparsity" in l and "active neurons" in l and "ITOP" in l for l in lines)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"]
    assert 0.5 < metrics["test_accuracy"] <= 1.0  # far above chance (0.1) after one epoch
    assert metrics["config"]["method"] == "srigl" and "embedded" in metrics["data"]["source"]
    assert os.path.exists(out / "checkpoint.npz")
    records = [json.loads(l) for l in open(out / "audit.jsonl")]
    assert records and all(r["invariants"] == "ok" for r in records)
    # ERK makes the small output layer (100x10) dense at 90%, so it has no updates.
    assert {r["layer"] for r in records} == {"1.weight", "3.weight"}

    audit = subprocess.run([sys.executable, "-m", "srigl_np.audit", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stderr
    assert "1.weight" in audit.stdout and "fan-in" in audit.stdout


def test_failed_invariant_check_stops_the_cli_with_one_line_naming_the_layer(
        tmp_path, monkeypatch, capsys):
    real_update = dst.srigl_update
    calls = []

    def update(weight, mask, *args, **kwargs):
        # The second update of the (100, 300) layer "3.weight" gains one weight too many.
        result = real_update(weight, mask, *args, **kwargs)
        calls.append(weight.shape)
        if calls.count((100, 300)) != 2 or weight.shape != (100, 300):
            return result
        bad = result.mask.copy()
        bad[0, np.flatnonzero(~bad[0])[0]] = True
        return replace(result, mask=bad)

    monkeypatch.setattr(dst, "srigl_update", update)
    out = tmp_path / "run"
    status = train_module.main(["--dataset", "embedded", "--epochs", "1", "--batch-size", "256",
                                "--method", "srigl", "--delta", "5", "--out", str(out),
                                "--progress", "off"])
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("python -m srigl_np.train: error: invariant check failed at "
                               "step 10: layer '3.weight': neuron 0 has ")
    assert str(out / "audit.jsonl") in lines[0]
    # The trail gathered so far: both layers at step 5, the first layer at step 10.
    records = [json.loads(line) for line in open(out / "audit.jsonl")]
    assert [(r["step"], r["layer"]) for r in records] == [(5, "1.weight"), (5, "3.weight"),
                                                          (10, "1.weight")]
    assert all(r["invariants"] == "ok" for r in records)


@pytest.mark.parametrize("user_env, expected", [
    ({}, {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "18"}),
    ({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "4"},
     {"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "4"}),
])
def test_trainer_sets_thread_waits_before_numpy_loads_unless_the_user_did(user_env, expected):
    # OpenBLAS reads its variable only as NumPy loads it, so record the environment at
    # the moment the trainer first imports numpy.
    probe = """if True:
        import builtins, os
        at_numpy = []
        real_import = builtins.__import__
        def spy(name, *args, **kwargs):
            if name == "numpy" and not at_numpy:
                at_numpy.append((os.environ.get("OMP_WAIT_POLICY"),
                                 os.environ.get("OPENBLAS_THREAD_TIMEOUT")))
            return real_import(name, *args, **kwargs)
        builtins.__import__ = spy
        import srigl_np.train
        print(*at_numpy[0])
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")}
    result = subprocess.run([sys.executable, "-c", probe], env={**env, **user_env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [expected["OMP_WAIT_POLICY"],
                                     expected["OPENBLAS_THREAD_TIMEOUT"]]
