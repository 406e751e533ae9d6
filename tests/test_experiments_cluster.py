"""A grid beyond the runner's own processes: a real Dask cluster (workers in their own
processes) runs it, survives a worker killed mid-run and ends bit-identical to local
processes; submitit's local executor (what ``--slurm`` is where Slurm is absent) runs it
from the command line. Skipped without the ``cluster`` extra."""

import os
import shutil
import signal
import threading
import time

import pytest

import experiment_runs
from experiment_runs import GRID_FLAGS, assert_identical, results, trainers_under
from srigl_np import experiments

# Two of the reference grid's seeds: 4 runs.
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def distributed():
    return pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def submitit():
    return pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    runs, found = experiment_runs.reference(tmp_path_factory)
    mine = [r for r in runs if r["seed"] in SEEDS]
    return mine, {experiments.run_name(r): found[experiments.run_name(r)] for r in mine}


def _kill_a_worker_mid_run(root, killed, stop):
    """Kill (SIGKILL) the Dask worker whose trainer has written its first checkpoint but
    not finished; record (run directory, worker PID) in ``killed``."""
    while not stop.is_set():
        for pid, out in trainers_under(root).items():
            checkpoint = os.path.join(out, "checkpoint.npz")
            if os.path.exists(checkpoint) and not experiments.is_finished({"epochs": 3}, out):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        worker = int(f.read().rsplit(")", 1)[1].split()[1])
                    os.kill(worker, signal.SIGKILL)
                except (OSError, ValueError):
                    continue
                killed.append((out, worker))
                return
        time.sleep(0.005)


def test_a_dask_cluster_runs_the_grid_through_a_killed_worker(distributed, reference,
                                                              tmp_path):
    runs, expected = reference
    killed, stop = [], threading.Event()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        killer = threading.Thread(target=_kill_a_worker_mid_run,
                                  args=(tmp_path, killed, stop))
        killer.start()
        try:
            outcomes = experiments.run_grid(runs, str(tmp_path), "embedded",
                                            executor=client.get_executor(pure=False),
                                            say=lambda line: None)
        finally:
            stop.set()
            killer.join()
    assert len(killed) == 1, "no trainer was caught between its first checkpoint and its end"
    assert sorted(o.state for o in outcomes) == ["finished"] * len(runs)
    # The killed run was taken up by another task, from its checkpoint.
    with open(killed[0][0] + ".log") as log:
        headers = [line.split(": ")[-1].strip() for line in log if line.startswith("== ")]
    assert headers == ["start", "resume"]
    assert_identical(results(tmp_path, runs), expected)


@pytest.mark.skipif(shutil.which("srun") is not None,
                    reason="Slurm is here: --slurm would submit real jobs")
def test_submitit_local_jobs_run_the_grid_from_the_command_line(submitit, reference,
                                                                tmp_path, capsys):
    runs, expected = reference
    flags = GRID_FLAGS[:GRID_FLAGS.index("--seeds") + 1] + list(map(str, SEEDS)) \
        + GRID_FLAGS[GRID_FLAGS.index("--epochs"):]
    assert experiments.main(flags + ["--out", str(tmp_path), "--slurm", "--jobs", "2"]) == 0
    assert capsys.readouterr().out.count(": finished in ") == len(runs)
    assert os.listdir(tmp_path / ".submitit")   # the jobs' own files
    assert_identical(results(tmp_path, runs), expected)
