"""The training CLI: argument errors, defaults, what a run prints before it starts, outputs
(metrics.json's "finished", the checkpoint's record of the layers kept dense), the
progress bar, and bit-identical resume."""

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from srigl_np import data as data_module
from srigl_np import dst
from srigl_np import train as train_module
from srigl_np import train_config
from srigl_np import validation
from srigl_np.formats.checkpoint import read_meta
from train_cli import (ERROR, StopAfterFirstEpoch, lock_holder, rewrite_checkpoint,  # noqa: F401
                       run_main, stop_after_first_epoch)


def _run_cli(*args):
    # Wide help lines, so that no "(default: ...)" is wrapped.
    return subprocess.run([sys.executable, "-m", "srigl_np.train", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "-1"], "--epochs"),
    (["--model", "resnet"], "--model"),
    (["--dataset", "cifar"], "--dataset"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-0.5"], "--lr"),
    (["--sparsity", "1.0"], "--sparsity"),
    (["--batch-size", "0"], "--batch-size"),
    (["--method", "magic"], "--method"),
    (["--method", "dense", "--sparsity", "0.5"],
     "--sparsity 0.5 does not apply to --method dense"),
    (["--epochs", "0"], "--epochs: must be a positive integer, got 0"),
    (["--threads", "100000"], "--threads must be in [0, "),
    (["--epochs", "1" + "0" * 400], "--epochs must be at most 1000000, got 1000"),
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


def test_help_shows_every_default():
    result = _run_cli("--help")
    flags = [a for a in train_module.make_parser()._actions if a.dest != "help"]
    assert result.stdout.count("(default: ") == len(flags)
    for text in ("(default: srigl)", "(default: 0.9)", "(default: erk)", "(default: 100)",
                 "(default: runs/<model>-<method>-s<seed>)"):
        assert text in result.stdout


def _parse(*argv):
    return train_config.config_from_args(train_module.make_parser().parse_args(list(argv)))


def test_the_default_method_is_srigl_at_90_percent():
    config = _parse()
    assert (config["method"], config["sparsity"]) == ("srigl", 0.9)
    assert config["out"] == os.path.join("runs", "mlp-srigl-s0")
    assert _parse("--sparsity", "0.8")["sparsity"] == 0.8
    assert _parse("--method", "rigl")["sparsity"] == 0.9
    # A dense run records the sparsity it has; asking for one with it is refused.
    assert _parse("--method", "dense")["sparsity"] == 0.0
    with pytest.raises(ValueError, match=r"^--sparsity 0.9 does not apply to --method dense"):
        _parse("--method", "dense", "--sparsity", "0.9")


def test_resume_of_missing_run_is_a_one_line_error(tmp_path):
    result = _run_cli("--resume", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


def _config(out, **overrides):
    args = train_module.make_parser().parse_args(
        ["--dataset", "embedded", "--epochs", "2", "--batch-size", "256", "--lr", "0.05",
         "--seed", "3", "--method", "srigl", "--out", str(out)])
    config = train_config.config_from_args(args)
    config.update(overrides)
    return config


def _arrays(path):
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if k != "meta"}


def _without_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


@pytest.mark.parametrize("method, compute", [("dense", "condensed"), ("srigl", "condensed"),
                                             ("srigl", "masked"), ("set", "condensed"),
                                             ("rigl", "condensed")])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, method, compute):
    # SRigL at gamma_sal 0.7 ablates neurons, so the condensed arrays change shape.
    overrides = {"method": method, "delta": 5, "sparsity": 0.8, "compute": compute,
                 "gamma_sal": 0.7}
    full = _config(tmp_path / "full", **overrides)
    metrics_full = train_module.train(full, log=lambda line: None)

    cut = _config(tmp_path / "cut", **overrides)
    with pytest.raises(StopAfterFirstEpoch):
        train_module.train(cut, log=stop_after_first_epoch)
    interrupted = json.load(open(tmp_path / "cut" / "metrics.json"))
    assert interrupted["epochs"][-1]["epoch"] == 1 and interrupted["finished"] is False
    resumed_lines = []
    metrics_resumed = train_module.train(cut, resume=True, log=resumed_lines.append)
    assert metrics_full["finished"] is metrics_resumed["finished"] is True
    assert json.load(open(tmp_path / "cut" / "metrics.json"))["finished"] is True
    # The resumed run says again what it does.
    assert any(line.startswith("method ") for line in resumed_lines)

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
    assert lines[1:10] == _SRIGL_PLAN
    assert any("sparsity" in l and "active neurons" in l and "ITOP" in l for l in lines)
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["finished"] is True
    assert metrics["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"]
    assert 0.5 < metrics["test_accuracy"] <= 1.0  # far above chance (0.1) after one epoch
    assert metrics["config"]["method"] == "srigl" and "embedded" in metrics["data"]["source"]
    with np.load(out / "checkpoint.npz", allow_pickle=False) as saved:
        meta = json.loads(str(saved["meta"]))
    assert meta["kept_dense"] == {"5.weight": "ERK gives it density 1"}
    assert meta["layer_sparsity"]["5.weight"] == 0.0
    assert set(meta["layer_sparsity"]) == {"1.weight", "3.weight", "5.weight"}
    records = [json.loads(l) for l in open(out / "audit.jsonl")]
    assert records and all(r["invariants"] == "ok" for r in records)
    # ERK makes the small output layer (100x10) dense at 90%, so it has no updates.
    assert {r["layer"] for r in records} == {"1.weight", "3.weight"}

    audit = subprocess.run([sys.executable, "-m", "srigl_np.audit", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert audit.returncode == 0, audit.stderr
    assert "1.weight" in audit.stdout and "fan-in" in audit.stdout
    assert "  5.weight  10x100  ERK gives it density 1" in audit.stdout.splitlines()


@pytest.mark.parametrize("compute", ["masked", "condensed"])
def test_failed_invariant_check_stops_the_cli_with_one_line_naming_the_layer(
        tmp_path, monkeypatch, capsys, compute):
    calls = []
    if compute == "masked":
        real_update = dst.srigl_update

        def update(weight, mask, *args, **kwargs):
            # The second update of the (100, 300) layer "3.weight" gains one weight too
            # many.
            result = real_update(weight, mask, *args, **kwargs)
            calls.append(weight.shape)
            if calls.count((100, 300)) != 2 or weight.shape != (100, 300):
                return result
            bad = result.mask.copy()
            bad[0, np.flatnonzero(~bad[0])[0]] = True
            return replace(result, mask=bad)

        monkeypatch.setattr(dst, "srigl_update", update)
        broken = "neuron 0 has "
    else:
        real_update = dst.srigl_update_rows

        def update(values, rows, indices, n_out, dense_fan_in, *args, **kwargs):
            # The same update lists an active neuron as ablated.
            result = real_update(values, rows, indices, n_out, dense_fan_in, *args, **kwargs)
            calls.append((n_out, dense_fan_in))
            if calls.count((100, 300)) != 2 or (n_out, dense_fan_in) != (100, 300):
                return result
            return replace(result, ablated=np.append(result.ablated, result.rows[0]))

        monkeypatch.setattr(dst, "srigl_update_rows", update)
        broken = "ablated neuron 0 has "
    out = tmp_path / "run"
    status = train_module.main(["--dataset", "embedded", "--epochs", "1", "--batch-size", "256",
                                "--method", "srigl", "--delta", "5", "--out", str(out),
                                "--progress", "off", "--compute", compute])
    err = capsys.readouterr().err
    assert status == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("python -m srigl_np.train: error: invariant check failed at "
                               "step 10: layer '3.weight': " + broken)
    assert str(out / "audit.jsonl") in lines[0]
    # The trail gathered so far: both layers at step 5, the first layer at step 10.
    records = [json.loads(line) for line in open(out / "audit.jsonl")]
    assert [(r["step"], r["layer"]) for r in records] == [(5, "1.weight"), (5, "3.weight"),
                                                          (10, "1.weight")]
    assert all(r["invariants"] == "ok" for r in records)
    # It stopped during its first epoch: metrics.json, written before it, says so.
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["finished"] is False and metrics["epochs"] == []
    assert metrics["test_accuracy"] is None


# -- what a run prints before its first step -----------------------------------------------------

# The embedded subset: 5000 images, 40 steps of 128 per epoch; t_end = 75% of 40 = 30.
_SRIGL_PLAN = [
    "method srigl: 90.0% global sparsity, ERK per layer",
    "schedule: a topology update every ΔT = 10 steps below t_end = 30 (75% of 1 epoch x 40 "
    "steps): 2 updates (steps 10..20)",
    "update step: the optimizer also steps on an update step, before it (the authors' loop); "
    "grow score that step's dense gradient",
    "compute: condensed, 2 of 3 layers as values + indices (a step costs in proportion to "
    "the weights kept); dense GEMM (kept dense): 5.weight",
    "  layer     shape    sparsity  fan-in  updates  compute",
    "  --------  -------  --------  ------  -------  ---------",
    "  1.weight  300x784  92.1%     k=62    2        condensed",
    "  3.weight  100x300  77.0%     k=69    2        condensed",
    "kept dense: 5.weight 10x100 (ERK gives it density 1)",
]


def _plan(*argv):
    config = _parse("--dataset", "embedded", "--epochs", "1", "--batch-size", "128", *argv)
    *_, sparsity, steps_per_epoch = train_module._build_run(config)
    return train_module.plan_lines(config, sparsity, steps_per_epoch)


def test_the_plan_names_each_layer_its_updates_and_the_layers_kept_dense():
    assert _plan("--delta", "10") == _SRIGL_PLAN


def test_the_plan_warns_when_the_schedule_makes_no_update():
    lines = _plan()   # ΔT = 100 against 30 steps
    assert lines[1].endswith("(75% of 1 epoch x 40 steps): 0 updates")
    assert [l.split()[-2] for l in lines[6:8]] == ["0", "0"]
    assert lines[-1] == ("warning: the schedule makes no topology update: ΔT = 100 is not "
                         "below t_end = 30 (75% of 1 epoch x 40 steps), so the masks stay as "
                         "initialised; lower --delta or train for more epochs")


def test_the_plan_of_unstructured_static_and_dense_runs():
    rigl = _plan("--method", "rigl", "--distribution", "uniform", "--delta", "10")
    assert rigl[0] == "method rigl: 90.0% global sparsity, uniform per layer"
    assert rigl[3] == ("compute: condensed, 3 of 3 layers as values + indices, rows padded "
                       "to the layer's largest fan-in with slots that hold 0 and never train "
                       "(a step costs in proportion to the slots); a layer runs masked while "
                       "its slots would pass 20% (Linear) / 40% (Conv2d) of its dense size, "
                       "decided again at every update")
    rows = [line.split(maxsplit=5) for line in rigl[6:]]
    assert [row[0] for row in rows] == ["1.weight", "3.weight", "5.weight"]
    for row in rows:   # a random mask: a range of fan-ins, padded to the largest
        low, high = map(int, row[3].split("-"))
        assert low >= 1 and high > low and row[4] == "2"
        padding = re.fullmatch(rf"condensed, padded: k={high}, (\d+)% padding", row[5])
        assert padding and 0 < int(padding[1]) < 100, row[5]
    set_cnn = _plan("--method", "set", "--model", "cnn", "--sparsity", "0.99", "--delta", "10")
    assert set_cnn[3].endswith("decided again at every update; masked: 0.weight")
    # 32 filters padded to 5 of 9 taps: past Conv2d's 40%.
    assert re.fullmatch(r"0\.weight +32x1x3x3 +\S+ +1-5 +2 +masked \(padded to k=5: "
                        r"(\d+)% of dense, \d+% padding\)", set_cnn[6].strip())
    masked = _plan("--compute", "masked", "--delta", "10")
    assert masked[3] == "compute: masked (dense weights with zeros; --compute masked)"
    static = _plan("--method", "static")
    assert static[1] == "schedule: static, the initial masks are kept (no topology updates)"
    assert not any(line.startswith("warning") for line in static)
    assert _plan("--method", "dense") == ["method dense: every weight is trained, no masks"]


# -- the progress bar ----------------------------------------------------------------------------

def test_clock():
    assert [train_module._clock(s) for s in (0, 59.6, 61, 3599, 3725)] == [
        "0:00", "1:00", "1:01", "59:59", "1:02:05"]


def test_the_progress_bar_shows_elapsed_time_and_the_runs_eta(monkeypatch, capsys):
    now = [100.0]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: now[0])
    bar = train_module._Progress(True, start_step=10, total_steps=110)
    now[0] = 130.0   # 30 s for 30 steps: 70 steps left take 70 s
    bar.update(2, 3, 5, 40, 40, 0.5, 1000.0)
    line = capsys.readouterr().err
    assert line.startswith("\repoch 2/3 [###.....................] 5/40 loss 0.5000 1,000 img/s")
    assert line.endswith("elapsed 0:30 ETA 1:10")
    bar.close()
    assert capsys.readouterr().err == "\r" + " " * (len(line) - 1) + "\r"
    silent = train_module._Progress(False, 0, 10)
    silent.update(1, 1, 1, 10, 1, 0.5, 1.0)
    silent.close()
    assert capsys.readouterr().err == ""


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


# -- nothing lost, nothing silent (issue 13) -----------------------------------------------------

_QUICK = ["--dataset", "embedded", "--epochs", "1", "--batch-size", "256", "--progress", "off"]


@pytest.fixture
def one_epoch_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(capsys, *_QUICK, "--out", out)[0] == 0
    return out


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_module.main([*_QUICK, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(trained_once, tmp_path):
    """A copy of a one-epoch run trained once for the module: for tests that spoil it."""
    return Path(shutil.copytree(trained_once, tmp_path / "run"))


@pytest.mark.parametrize("args, fragment", [
    (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["--warmup-epochs", "3", "--epochs", "2"],
     "--warmup-epochs 3 is longer than the run (--epochs 2)"),
    (["--warmup-epochs", "1e308"], "--warmup-epochs 1e+308 is longer than the run"),
] + [([f"{flag}={value}"], f"argument {flag}: must be")
     for flag in ("--lr", "--weight-decay", "--warmup-epochs", "--momentum", "--alpha",
                  "--gamma-sal", "--t-end-frac", "--sparsity")
     for value in ("nan", "inf", "-inf")]
  + [([flag, "0"], f"argument {flag}: must be a positive integer")
     for flag in ("--delta", "--batch-size", "--epochs")])
def test_every_numeric_flag_refuses_bad_values_in_one_line(capsys, args, fragment):
    status, _, line = run_main(capsys, *args)
    assert status == 2 and line.startswith(ERROR) and fragment in line, line


def test_an_out_holding_a_run_is_refused_unless_overwrite(one_epoch_run, capsys):
    checkpoint = (one_epoch_run / "checkpoint.npz").read_bytes()
    status, _, line = run_main(capsys, *_QUICK, "--seed", "1", "--out", one_epoch_run)
    assert status == 1
    assert line == (f"{ERROR}--out {one_epoch_run} already holds a run (checkpoint.npz, "
                    f"metrics.json, audit.jsonl): pass --overwrite to replace it, or "
                    f"--resume {one_epoch_run} to continue it")
    assert (one_epoch_run / "checkpoint.npz").read_bytes() == checkpoint
    # --overwrite clears the run's files and the trainer's temporaries, nothing else.
    (one_epoch_run / ".tmp-abc_1234").write_text("half a checkpoint")
    (one_epoch_run / "notes.txt").write_text("mine")
    (one_epoch_run / "audit.jsonl").write_text('{"stale": true}\n')
    status, _, line = run_main(capsys, *_QUICK, "--method", "dense", "--out", one_epoch_run,
                            "--overwrite")
    assert status == 0, line
    assert sorted(p.name for p in one_epoch_run.iterdir()) == [
        "checkpoint.npz", "metrics.json", "notes.txt"]
    assert read_meta(one_epoch_run / "checkpoint.npz")["config"]["method"] == "dense"


def test_a_second_trainer_on_a_run_in_use_is_refused_and_touches_nothing(
        one_epoch_run, capsys, lock_holder):
    files = {p.name: p.read_bytes() for p in one_epoch_run.iterdir()}
    holder = lock_holder(one_epoch_run)
    # Another process, even with --overwrite, deletes nothing of the holder's run.
    result = _run_cli(*_QUICK, "--out", one_epoch_run, "--overwrite")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"{ERROR}{one_epoch_run} is in use by PID {holder.pid} "
                             f"(python -m srigl_np.train); wait for it or choose another "
                             f"--out\n")
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "2")
    assert status == 1 and line == (f"{ERROR}{one_epoch_run} is in use by PID {holder.pid} "
                                    f"(python -m srigl_np.train); wait for it to finish")
    assert {p.name: p.read_bytes() for p in one_epoch_run.iterdir()} == {
        **files, ".lock": f"{holder.pid} python -m srigl_np.train\n".encode()}
    # A killed holder leaves its lock file behind, and it blocks no one: the OS let go.
    holder.kill()
    holder.wait()
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "2")
    assert status == 0, line
    assert ".lock" not in [p.name for p in one_epoch_run.iterdir()]   # the run's is gone


def test_the_run_holds_its_lock_from_before_the_checks_to_its_end(tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []

    def train(config, resume=False, progress=False):
        with pytest.raises(ValueError, match="is in use by PID"):
            train_module.prepare_out(str(out), overwrite=True)
        seen.append(config["out"])
        return {"test_accuracy": None}

    monkeypatch.setattr(train_module, "train", train)
    assert train_module.main([*_QUICK, "--out", str(out)]) == 0
    assert seen == [str(out)] and list(out.iterdir()) == []   # let go, and the file gone
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="already holds a run"):
        train_module.prepare_out(str(out))
    train_module.prepare_out(str(out), overwrite=True).release()   # a refusal let go too


def test_threads_past_the_cpus_this_process_may_use_are_refused(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    status, _, line = run_main(capsys, *_QUICK, "--threads", "3", "--out", tmp_path / "run")
    assert (status, line) == (2, f"{ERROR}--threads must be in [0, 2] (this process may "
                                 f"use 2 CPUs), got 3")
    assert not (tmp_path / "run").exists()
    assert run_main(capsys, *_QUICK, "--threads", "2", "--out", tmp_path / "run")[0] == 0
    # Resumed where fewer CPUs are: the flag is checked, and so is the run's saved count.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    status, _, line = run_main(capsys, "--resume", tmp_path / "run", "--threads", "2")
    assert (status, line) == (2, f"{ERROR}--threads must be in [0, 1] (this process may "
                                 f"use 1 CPU), got 2")
    status, _, line = run_main(capsys, "--resume", tmp_path / "run")
    assert (status, line) == (1, f"{ERROR}{tmp_path / 'run' / 'checkpoint.npz'}: the run was "
                                 f"started with --threads 2, more than this process may use "
                                 f"(1 CPU): resume it with --threads 0 to 1")
    assert run_main(capsys, "--resume", tmp_path / "run", "--threads", "1")[0] == 0
    monkeypatch.delattr(os, "sched_getaffinity")   # where the OS has no affinity set
    assert validation.usable_cpus() == (os.cpu_count() or 1)


def test_an_empty_existing_out_is_used(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_main(capsys, *_QUICK, "--out", tmp_path / "empty")[0] == 0
    assert (tmp_path / "empty" / "checkpoint.npz").is_file()


def test_resume_removes_the_trainers_stale_temporaries_only(one_epoch_run, capsys):
    for name in (".tmp-k7f2_x9q", ".tmp-notes", "notes.txt"):
        (one_epoch_run / name).write_text("x")
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--progress", "off")
    assert status == 0, line
    assert sorted(p.name for p in one_epoch_run.iterdir()) == [
        ".tmp-notes", "audit.jsonl", "checkpoint.npz", "metrics.json", "notes.txt"]


def test_the_checkpoint_records_its_data_and_resume_refuses_other_data(
        one_epoch_run, capsys, monkeypatch):
    data = read_meta(one_epoch_run / "checkpoint.npz")["data"]
    dataset = data_module.load_dataset("embedded")
    assert data["sha256"] == train_module.data_fingerprint(dataset)
    assert (data["name"], data["n_train"], data["n_test"]) == ("embedded", 5000, 1000)
    assert json.load(open(one_epoch_run / "metrics.json"))["data"] == data
    x_train = dataset.x_train.copy()
    x_train[0, 0, 0] ^= 1   # one pixel
    other = replace(dataset, x_train=x_train, source="/elsewhere")
    assert train_module.data_fingerprint(other) != data["sha256"]
    monkeypatch.setattr(data_module, "load_dataset", lambda *args, **kwargs: other)
    checkpoint = (one_epoch_run / "checkpoint.npz").read_bytes()
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "2")
    assert status == 1
    assert line.startswith(f"{ERROR}{one_epoch_run / 'checkpoint.npz'} was trained on "
                           f"embedded from embedded subset")
    assert (f"but this run loads embedded from /elsewhere (5000 train / 1000 test images, "
            f"sha256 {train_module.data_fingerprint(other)[:12]})") in line
    assert (one_epoch_run / "checkpoint.npz").read_bytes() == checkpoint


def _drop_data_fingerprint(path):
    rewrite_checkpoint(path, lambda meta, arrays: meta["data"].pop("sha256"))


def test_an_older_checkpoint_without_a_data_fingerprint_resumes_with_a_note(
        one_epoch_run, capsys):
    _drop_data_fingerprint(one_epoch_run / "checkpoint.npz")
    status, out, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "2")
    assert status == 0, line
    assert (f"note: {one_epoch_run / 'checkpoint.npz'} does not record a fingerprint of its "
            f"data (an older checkpoint); resuming without checking that the data is the "
            f"same") in out
    assert read_meta(one_epoch_run / "checkpoint.npz")["epoch"] == 2


def test_given_flags_tells_the_users_flags_from_defaults():
    parser = train_module.make_parser()
    assert train_config.given_flags(parser, []) == {}
    assert train_config.given_flags(parser, ["--epochs", "20", "--nesterov", "--seed=0"]) == {
        "epochs": "--epochs", "nesterov": "--nesterov", "seed": "--seed"}


def test_resume_refuses_flags_that_change_the_run_by_name(one_epoch_run, capsys):
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--model", "cnn", "--seed", "0",
                            "--epochs", "2", "--sparsity", "0.5")
    assert status == 2
    assert line.startswith(f"{ERROR}--model, --seed, --sparsity cannot be given with "
                           f"--resume")
    for flag, *value in (["--method", "set"], ["--lr", "1"], ["--out", "x"], ["--overwrite"],
                         ["--delta", "5"], ["--dataset", "mnist"], ["--nesterov"]):
        status, _, line = run_main(capsys, "--resume", one_epoch_run, flag, *value)
        assert status == 2 and line.startswith(f"{ERROR}{flag} cannot be given"), line
    assert read_meta(one_epoch_run / "checkpoint.npz")["epoch"] == 1


def test_resume_honours_and_records_epochs_and_threads(one_epoch_run, capsys):
    status, out, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "2",
                              "--threads", "1", "--progress", "off")
    assert status == 0, line
    assert out[:2] == ["resume: --epochs 1 -> 2", "resume: --threads 0 -> 1"]
    metrics = json.load(open(one_epoch_run / "metrics.json"))
    assert metrics["finished"] is True and [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert (metrics["config"]["epochs"], metrics["config"]["threads"]) == (2, 1)
    assert metrics["config"]["resumes"] == [
        {"epoch": 1, "changed": {"epochs": [1, 2], "threads": [0, 1]}}]
    assert read_meta(one_epoch_run / "checkpoint.npz")["config"] == metrics["config"]
    # Training fewer epochs than are done is refused.
    status, _, line = run_main(capsys, "--resume", one_epoch_run, "--epochs", "1")
    assert status == 1 and line == (f"{ERROR}--epochs 1: the run in {one_epoch_run} has "
                                    f"already trained 2 epochs; give --epochs 2 or more")


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys,
                                                                  monkeypatch):
    real_loss, calls = train_module.softmax_cross_entropy, []

    def loss(logits, labels):   # the 5th step of epoch 2 (20 steps an epoch) diverges
        value, grad = real_loss(logits, labels)
        calls.append(1)
        return (float("nan") if len(calls) == 25 else value), grad

    monkeypatch.setattr(train_module, "softmax_cross_entropy", loss)
    out = tmp_path / "run"
    status, _, line = run_main(capsys, *_QUICK, "--epochs", "3", "--out", out)
    assert status == 1
    assert line == (f"{ERROR}training diverged: the loss is nan at step 24 (epoch 2, "
                    f"batch 5); the last good checkpoint (epoch 1) is kept in "
                    f"{out / 'checkpoint.npz'}; try a lower --lr")
    assert read_meta(out / "checkpoint.npz")["epoch"] == 1
    metrics = json.load(open(out / "metrics.json"))
    assert metrics["finished"] is False and len(metrics["epochs"]) == 1


def test_a_weight_gone_non_finite_at_the_end_of_an_epoch_is_never_checkpointed(
        tmp_path, capsys, monkeypatch):
    class Overflowing(train_module.SGD):   # the epoch's last step (20 an epoch) overflows
        def step(self, grads):
            super().step(grads)
            if self.step_count == 20:
                self.params["3.weight"][0, 0] = np.inf

    monkeypatch.setattr(train_module, "SGD", Overflowing)
    out = tmp_path / "run"
    status, _, line = run_main(capsys, *_QUICK, "--epochs", "2", "--method", "dense",
                               "--out", out)
    assert (status, line) == (1, f"{ERROR}training diverged: parameter '3.weight' holds NaN "
                                 f"or Inf after step 20 (the end of epoch 1); no checkpoint "
                                 f"was written; try a lower --lr")
    assert not (out / "checkpoint.npz").exists()


@pytest.mark.parametrize("array, what", [
    ("param/1.weight", "parameter '1.weight'"),
    ("optim/3.bias/momentum_buffer", "optimizer state '3.bias/momentum_buffer'"),
])
def test_resuming_a_checkpoint_that_holds_nan_names_the_array(run_copy, capsys, array, what):
    checkpoint = run_copy / "checkpoint.npz"

    rewrite_checkpoint(checkpoint, lambda meta, arrays: arrays[array].flat.__setitem__(3, np.nan))
    saved = checkpoint.read_bytes()
    status, _, line = run_main(capsys, "--resume", run_copy, "--epochs", "2")
    index = "(3,)" if "bias" in array else "(0, 3)"
    assert (status, line) == (1, f"{ERROR}{checkpoint}: {what} holds non-finite values (1 NaN "
                                 f"or Inf, first at {index}): the checkpoint is damaged, or "
                                 f"its run had diverged when it was saved; use an earlier one "
                                 f"or start a new run")
    assert checkpoint.read_bytes() == saved   # nothing trained, nothing written


def _set(key, value):
    return lambda meta, arrays: meta["config"].__setitem__(key, value)


# Saved configs and progress records no trainer writes: (change, the error after the path).
BAD_SAVED_RUNS = [
    (_set("batch_size", 0), "meta 'config' 'batch_size' (--batch-size) must be a positive "
                            "integer, got 0"),
    (_set("epochs", 10**12), "meta 'config' 'epochs' (--epochs) must be at most 1000000, "
                             "got 1000000000000"),
    (_set("epochs", float("inf")), "meta 'config' 'epochs' (--epochs) must be an integer, "
                                   "got 'inf'"),
    (_set("lr", "0.1"), "meta 'config' 'lr' (--lr) must be a number, got '0.1'"),
    (_set("momentum", 1.5), "meta 'config' 'momentum' (--momentum) must be in [0, 1), got 1.5"),
    (_set("no_ablation", "no"), "meta 'config' 'no_ablation' (--no-ablation) must be true or "
                                "false, got 'no'"),
    (_set("method", "magic"), "meta 'config' 'method' (--method) must be one of dense, static, "
                              "set, rigl, srigl, got 'magic'"),
    (_set("device", "tpu"), "meta 'config' 'device' (--device) must be 'cpu', 'cuda' or "
                            "'cuda:N', got 'tpu'"),
    (_set("resumes", "x"), "meta 'config' 'resumes' must be a list of records"),
    (_set("grad_accumulation", 500), "meta 'config': --grad-accumulation 500 must be at most "
                                     "--delta 100"),
    (lambda meta, arrays: meta["config"].pop("seed"), "meta 'config' 'seed' (--seed) is "
                                                       "missing"),
    (lambda meta, arrays: meta.__setitem__("config", [1]), "meta 'config' must be a JSON "
                                                           "object, got list"),
    (lambda meta, arrays: meta.__setitem__("epoch", "a"), "meta 'epoch' is 'a'; expected an "
                                                          "integer >= 0"),
    (lambda meta, arrays: meta.__setitem__("history", []), "meta 'history' must hold one "
                                                           "record per epoch done (1)"),
    (lambda meta, arrays: meta.__setitem__("layer_sparsity", 3),
     "meta 'layer_sparsity' must be an object of layer names to sparsities in [0, 1), got 3"),
    (lambda meta, arrays: meta["data"].__setitem__("n_train", 10**40), "meta 'data' must be"),
]


@pytest.mark.parametrize("change, error", BAD_SAVED_RUNS)
def test_resume_refuses_a_saved_run_no_trainer_writes_in_one_line(run_copy, capsys, change,
                                                                   error):
    checkpoint = run_copy / "checkpoint.npz"
    rewrite_checkpoint(checkpoint, change)
    saved = checkpoint.read_bytes()
    status, _, line = run_main(capsys, "--resume", run_copy)
    assert status == 1 and line.startswith(f"{ERROR}{checkpoint}: {error}"), line
    assert checkpoint.read_bytes() == saved


def test_checked_config_fills_in_what_older_trainers_did_not_record(trained_once):
    config = read_meta(trained_once / "checkpoint.npz")["config"]
    assert train_config.checked_config(config, "c") == config
    old = {k: v for k, v in config.items() if k not in train_config.LEGACY_CONFIG}
    assert train_config.checked_config(old, "c") == {**config, **train_config.LEGACY_CONFIG}


def test_an_empty_test_set_is_an_error_not_zero_accuracy(tmp_path, capsys, monkeypatch):
    dataset = data_module.load_dataset("embedded")
    empty = replace(dataset, x_test=dataset.x_test[:0], y_test=dataset.y_test[:0])
    monkeypatch.setattr(data_module, "load_dataset", lambda *args, **kwargs: empty)
    status, _, line = run_main(capsys, *_QUICK, "--out", tmp_path / "run")
    assert status == 1
    assert line == (f"{ERROR}embedded from {dataset.source} has no test images")
    with pytest.raises(ValueError, match="no images to evaluate on"):
        train_module.evaluate(None, dataset.x_test[:0], dataset.y_test[:0])


@pytest.mark.parametrize("where, message", [
    ("file", "--out {out} is not a directory (a file is in the way)"),
    ("file/run", "cannot write in --out {out}: Not a directory"),
])
def test_an_unusable_out_fails_before_any_work(tmp_path, capsys, monkeypatch, where, message):
    (tmp_path / "file").write_text("in the way")

    def no_data(*args, **kwargs):
        raise AssertionError("the data was loaded before --out was checked")

    monkeypatch.setattr(data_module, "load_dataset", no_data)
    out = tmp_path / where
    status, _, line = run_main(capsys, *_QUICK, "--out", out)
    assert status == 1 and line == ERROR + message.format(out=out)
    assert (tmp_path / "file").read_text() == "in the way"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only directories")
def test_a_read_only_out_fails_before_any_work(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        status, _, line = run_main(capsys, *_QUICK, "--out", parent / "run")
    finally:
        parent.chmod(0o755)
    assert status == 1 and line.startswith(f"{ERROR}cannot write in --out {parent / 'run'}")
