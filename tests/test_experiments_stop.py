"""python -m srigl_np.experiments stops when told and refuses what it must: Ctrl-C and
SIGTERM stop a local grid at once with no trainer left and a rerun completes it bit for
bit; a killed runner takes its trainers with it; a grid that failed, a model that does
not exist and a run directory of another configuration are never a silent success."""

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import experiment_runs
from experiment_runs import GRID_FLAGS, assert_identical, results, trainers_under
from srigl_np import experiments
from srigl_np.experiments import runs as runs_module

GRID = GRID_FLAGS + ["--jobs", "2"]


def _start(out, first_line=True):
    """The runner in its own session, as a shell starts a job; once its first progress
    line is out (``first_line``), else once a trainer runs."""
    runner = subprocess.Popen(
        [sys.executable, "-m", "srigl_np.experiments", *GRID, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    if first_line:
        first = runner.stdout.readline()
        assert first.startswith("[1/10] "), first + runner.stderr.read()
        return runner
    deadline = time.monotonic() + 30
    while not trainers_under(out) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trainers_under(out)
    return runner


def _no_trainer_left(out, within=2.0):
    deadline = time.monotonic() + within
    while trainers_under(out) and time.monotonic() < deadline:
        time.sleep(0.05)
    return trainers_under(out) == {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return experiment_runs.reference(tmp_path_factory)


def test_ctrl_c_stops_the_grid_and_the_rerun_completes_it_bit_identically(tmp_path,
                                                                          reference,
                                                                          capsys):
    out = tmp_path / "runs"
    runner = _start(out)
    os.killpg(runner.pid, signal.SIGINT)   # what Ctrl-C at a terminal does
    started = time.monotonic()
    status = runner.wait(timeout=30)
    assert time.monotonic() - started < 5
    assert status == 130
    assert runner.stderr.read() == experiments.INTERRUPTED + "\n"
    assert _no_trainer_left(out)
    grid, expected = reference
    unfinished = [r for r in grid if not experiments.is_finished(r, out / experiments.run_name(r))]
    assert len(unfinished) >= 7   # queued runs never started
    assert experiments.main(GRID + ["--out", str(out)]) == 0
    assert capsys.readouterr().out.count(": done before") == 10 - len(unfinished)
    assert_identical(results(out, grid), expected)


def _unfinished(directories):
    """Whether none of the run ``directories`` finished (its trainer was stopped)."""
    return not any(experiments.is_finished({"epochs": 3}, d) for d in directories)


def test_sigterm_stops_the_grid_with_143(tmp_path):
    runner = _start(tmp_path, first_line=False)
    running = trainers_under(tmp_path).values()
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 143
    assert runner.stderr.read() == experiments.INTERRUPTED + "\n"
    assert _no_trainer_left(tmp_path) and _unfinished(running)


def test_a_runner_killed_with_sigkill_takes_its_trainers_with_it(tmp_path):
    runner = _start(tmp_path, first_line=False)
    running = trainers_under(tmp_path).values()
    runner.kill()
    runner.wait(timeout=30)
    assert _no_trainer_left(tmp_path) and _unfinished(running)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke grid (2 runs, 1 epoch) trained once into a directory the tests only
    read: (its flags, its --out)."""
    out = tmp_path_factory.mktemp("smoke") / "runs"
    args = ["--preset", "smoke", "--out", str(out), "--dataset", "embedded"]
    assert experiments.main(args) == 0
    return args, out


@pytest.mark.parametrize("change, difference", [
    (["--dataset", "mnist"], "dataset: recorded 'embedded', requested 'mnist'"),
    (["--epochs", "2"], "epochs: recorded 1, requested 2"),
])
def test_a_run_directory_of_another_configuration_is_refused(smoke, change, difference,
                                                             capsys):
    capsys.readouterr()
    args, out = smoke
    argv = args[:-2] + change if change[0] == "--dataset" else args + change
    with pytest.raises(SystemExit) as stop:
        experiments.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"{experiments.PROG}: error: {out / 'mlp-dense-seed0'} holds "
                   f"a run of another configuration ({difference}) (and 1 more run directory "
                   f"there); move it away or choose another --out\n")
    # Nor is it summarised as the requested grid's result.
    assert experiments.main(argv + ["--summary-only"]) == 0
    out = capsys.readouterr().out
    assert out.count("| not run |") == 2 and "done before" not in out


def test_a_task_refuses_a_run_directory_of_another_configuration(smoke):
    run = experiments.grid("smoke")[0]
    outcome = experiments.execute(run, str(smoke[1]), "mnist", 1)
    assert outcome.state == "refused" and outcome.failed
    assert "dataset: recorded 'embedded', requested 'mnist'" in outcome.detail


def test_a_grid_whose_runs_all_fail_exits_1(tmp_path, capsys, monkeypatch):
    broken = [sys.executable, "-c",
              "print('python -m srigl_np.train: error: broken on purpose'); exit(1)"]
    monkeypatch.setattr(runs_module, "train_command", lambda *a: broken)
    out = tmp_path / "runs"
    assert experiments.main(["--preset", "smoke", "--out", str(out),
                             "--dataset", "embedded"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("FAILED (exit 1: broken on purpose; see ") == 2
    assert captured.err == (f"2 of 2 runs failed (mlp-dense-seed0, mlp-srigl-s0.9-g0.3-seed0)"
                            f": see their .log in {out}\n")


@pytest.mark.parametrize("models, line", [
    (["resnet"], "--models resnet: --preset smoke has no run of these models "
                 "(its models: mlp)"),
    (["mlp", "resnet"], "--models resnet: no such model (the trainer's: mlp, cnn)"),
])
def test_a_model_that_does_not_exist_is_refused_before_anything(models, line, tmp_path,
                                                               capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.main(["--preset", "smoke", "--out", str(tmp_path / "runs"),
                          "--models", *models])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"{experiments.PROG}: error: {line}\n"
    assert not (tmp_path / "runs").exists()


def test_one_task_at_a_time_works_in_a_run_directory(tmp_path):
    """A second task of a run (a Dask retry, another runner) waits for the first's claim,
    then finds the run finished by it."""
    run = experiments.grid("smoke")[0]
    directory = tmp_path / experiments.run_name(run)
    directory.mkdir()
    with open(directory / runs_module.CLAIM_NAME, "w") as claim:
        fcntl.flock(claim, fcntl.LOCK_EX)
        result = []
        task = threading.Thread(target=lambda: result.append(
            experiments.execute(run, str(tmp_path), "embedded", 1)))
        task.start()
        time.sleep(0.3)
        assert task.is_alive() and not (tmp_path / (experiments.run_name(run) + ".log")).exists()
        fcntl.flock(claim, fcntl.LOCK_UN)
    task.join(timeout=60)
    assert result[0].state == "finished"
    assert experiments.execute(run, str(tmp_path), "embedded", 1).state == "done before"
