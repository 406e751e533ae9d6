"""python -m srigl_np.experiments: the grid, skipping finished runs, resuming unfinished
ones, and a summary that never pools different settings as seeds."""

import importlib.util
import json
import os

import pytest

from srigl_np import experiments
from train_cli import lock_holder  # noqa: F401  (a fixture)


def test_the_reproduction_grid_names_every_run_once():
    runs = experiments.grid("reproduction")
    names = [experiments.run_name(r) for r in runs]
    assert len(names) == len(set(names))
    assert "mlp-dense-seed0" in names and "mlp-srigl-s0.99-g0.95-skip-seed2" in names
    assert "cnn-srigl-noabl-s0.99-g0.3-skip-seed0" in names
    assert "mlp-static-s0.9-seed1" in names   # no update step: no loop in the name
    dense = [r for r in runs if r["method"] == "dense"]
    assert all(r["sparsity"] == 0.0 and r["gamma_sal"] is None for r in dense)
    # Seed-major: every setting's seed 0 comes before any seed 1.
    seeds = [r["seed"] for r in runs]
    assert seeds == sorted(seeds)


def test_the_cnn_gap_grid_runs_both_loops():
    runs = experiments.grid("cnn-gap")
    names = {experiments.run_name(r) for r in runs}
    assert {"cnn-srigl-s0.99-g0.3-seed1", "cnn-srigl-s0.99-g0.3-skip-seed1",
            "cnn-rigl-s0.99-skip-seed2", "cnn-static-s0.99-seed0",
            "cnn-srigl-noabl-s0.99-g0.3-seed2", "cnn-srigl-s0.99-g0.95-seed0"} <= names
    step = experiments.train_command(next(r for r in runs if r["loop"] == "step"), "o",
                                     "fashion-mnist", 1)
    assert step[step.index("--optimizer-on-update") + 1] == "step"
    static = experiments.train_command(next(r for r in runs if r["method"] == "static"),
                                       "o", "fashion-mnist", 1)
    assert "--optimizer-on-update" not in static


def test_train_command_passes_only_what_the_method_takes():
    run = {"model": "mlp", "method": "srigl-noabl", "sparsity": 0.95, "gamma_sal": 0.3,
           "loop": "skip", "seed": 2, "epochs": 20, "lr": 0.1}
    command = experiments.train_command(run, "out", "fashion-mnist", 1)
    assert command[command.index("--method") + 1] == "srigl" and "--no-ablation" in command
    assert command[command.index("--sparsity") + 1] == "0.95"
    assert command[command.index("--optimizer-on-update") + 1] == "skip"
    dense = experiments.train_command({**run, "method": "dense", "gamma_sal": None,
                                       "loop": None},
                                      "out", "fashion-mnist", 1)
    assert "--sparsity" not in dense and "--gamma-sal" not in dense
    assert "--optimizer-on-update" not in dense


@pytest.fixture
def smoke(tmp_path, monkeypatch):
    out, report = tmp_path / "runs", tmp_path / "report"
    args = ["--preset", "smoke", "--out", str(out), "--dataset", "embedded",
            "--report", str(report)]
    return out, report, args


def test_runs_are_trained_summarised_then_skipped(smoke, capsys):
    out, report, args = smoke
    assert experiments.main(args) == 0
    first = capsys.readouterr().out
    assert first.count(": finished") == 2
    rows = json.loads((report / "results.json").read_text())["rows"]
    assert [(r["method"], len(r["seeds"])) for r in rows] == [("dense", 1), ("srigl", 1)]
    if importlib.util.find_spec("matplotlib") is not None:
        assert (report / "accuracy_vs_sparsity.png").stat().st_size > 0
    else:
        assert "plot skipped: it needs matplotlib" in first
    assert "## Neuron ablation (SRigL)" in (report / "results.md").read_text()
    assert experiments.main(args) == 0
    assert capsys.readouterr().out.count(": done before") == 2


def test_an_unfinished_run_is_resumed(smoke, capsys):
    out, _, args = smoke
    assert experiments.main(args) == 0
    metrics_path = out / "mlp-srigl-s0.9-g0.3-seed0" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["finished"] = False
    metrics_path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert experiments.main(args) == 0
    out_text = capsys.readouterr().out
    assert "mlp-srigl-s0.9-g0.3-seed0: finished" in out_text
    assert "mlp-dense-seed0: done before" in out_text


def test_settings_that_differ_are_never_pooled(tmp_path):
    runs = [{"model": "mlp", "method": "srigl", "sparsity": 0.9, "gamma_sal": g,
             "loop": loop, "seed": seed, "epochs": 1, "lr": 0.1}
            for g, loop in ((0.3, "step"), (0.5, "step"), (0.5, "skip")) for seed in (0, 1)]
    for i, run in enumerate(runs):
        directory = tmp_path / experiments.run_name(run)
        directory.mkdir()
        (directory / "metrics.json").write_text(json.dumps({
            "finished": True, "test_accuracy": 0.8 + 0.01 * i,
            "epochs": [{"active_neurons": 10, "neurons": 10}]}))
    rows = experiments.summarise(runs, tmp_path)
    assert [(r["gamma_sal"], r["loop"], r["seeds"]) for r in rows] == [
        (0.3, "step", [0, 1]), (0.5, "step", [0, 1]), (0.5, "skip", [0, 1])]
    assert rows[0]["mean"] == pytest.approx(80.5) and rows[1]["mean"] == pytest.approx(82.5)
    assert rows[2]["mean"] == pytest.approx(84.5)


def test_a_deeply_nested_metrics_json_is_no_metrics(tmp_path):
    """json.load raised RecursionError (a traceback) on 100,000 nested lists."""
    run = {"model": "mlp", "method": "srigl", "sparsity": 0.9, "gamma_sal": 0.3,
           "loop": "step", "seed": 0, "epochs": 1, "lr": 0.1}
    directory = tmp_path / experiments.run_name(run)
    directory.mkdir()
    (directory / "metrics.json").write_text("[" * 100000 + "]" * 100000)
    assert not experiments.is_finished(run, directory)


@pytest.mark.parametrize("argv, match", [
    (["--jobs", "0"], "--jobs must be in"),
    (["--threads", "100000"], "--threads must be in"),
])
def test_bad_counts_are_one_line_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as stop:
        experiments.main(argv + ["--summary-only"])
    assert stop.value.code == 2 and match in capsys.readouterr().err


def test_a_second_runner_on_the_same_out_is_refused(tmp_path, capsys, lock_holder):
    holder = lock_holder(tmp_path, experiments.PROG)
    assert experiments.main(["--preset", "smoke", "--out", str(tmp_path),
                             "--dataset", "embedded"]) == 1
    assert capsys.readouterr().err == (
        f"{experiments.PROG}: error: {tmp_path} is in use by PID {holder.pid} "
        f"({experiments.PROG}); wait for it or choose another --out\n")
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]   # no run, no log started


@pytest.mark.parametrize("argv, line", [
    (["--jobs", "3"], "--jobs must be in [1, 2] (this process may use 2 CPUs), got 3"),
    (["--threads", "3"], "--threads must be in [0, 2] (this process may use 2 CPUs), got 3"),
    (["--threads", "-1"], "--threads must be in [0, 2] (this process may use 2 CPUs), got -1"),
])
def test_jobs_and_threads_are_held_to_the_cpus_this_process_may_use(argv, line, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    with pytest.raises(SystemExit) as stop:
        experiments.main(argv + ["--summary-only"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"{experiments.PROG}: error: {line}\n"


def test_a_run_that_died_before_its_first_checkpoint_is_started_again(smoke, capsys):
    out, _, args = smoke
    dead = out / "mlp-srigl-s0.9-g0.3-seed0"
    dead.mkdir(parents=True)
    (dead / "metrics.json").write_text(json.dumps({"finished": False, "epochs": []}))
    assert experiments.main(args) == 0
    assert "mlp-srigl-s0.9-g0.3-seed0: finished" in capsys.readouterr().out


def test_an_unusable_report_directory_fails_before_any_run(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop:
        experiments.main(["--preset", "smoke", "--out", str(tmp_path / "runs"),
                          "--report", str(tmp_path / "file" / "report")])
    assert stop.value.code == 2 and "--report" in capsys.readouterr().err
    assert not any((tmp_path / "runs").iterdir())


def test_progress_counts_done_running_failed_queued_and_gives_an_eta(tmp_path):
    from srigl_np.experiments.runner import Progress

    runs = experiments.grid("smoke", seeds=range(3))   # 6 runs
    names = [experiments.run_name(r) for r in runs]
    lines = []
    progress = Progress(runs, str(tmp_path), lines.append)
    (tmp_path / (names[2] + ".log")).write_text("== start\n")   # its task has begun
    progress.report(experiments.Outcome(names[0], "finished", seconds=10.0), names[2:])
    progress.report(experiments.Outcome(names[1], "failed", "exit 1", 20.0), names[2:])
    assert lines == [
        f"[1/6] {names[0]}: finished in 0:10  (1 done, 1 running, 0 failed, 3 queued; "
        f"ETA 0:40)",
        f"[2/6] {names[1]}: FAILED (exit 1)  (1 done, 1 running, 1 failed, 3 queued; "
        f"ETA 1:00)"]
