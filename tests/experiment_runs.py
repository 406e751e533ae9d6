"""Helpers of the experiments tests (test_experiments_stop.py,
test_experiments_cluster.py): what a grid's runs ended with, compared bit for bit, and
the trainers still alive under a directory (a /proc scan, no psutil)."""

import json
import os

import numpy as np

from srigl_np.experiments import run_name


def results(root, runs):
    """{run name: (metrics without the timings and paths, {array name: array} of the
    checkpoint)}: what two executions of a grid must agree on, bit for bit."""
    found = {}
    for run in runs:
        out = os.path.join(root, run_name(run))
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        for record in metrics["epochs"]:
            record.pop("seconds")
        metrics["config"].pop("out")
        with np.load(os.path.join(out, "checkpoint.npz"), allow_pickle=False) as saved:
            arrays = {k: saved[k] for k in saved.files if k != "meta"}
        found[run_name(run)] = (metrics, arrays)
    return found


def assert_identical(got, expected):
    assert sorted(got) == sorted(expected)
    for name, (metrics, arrays) in expected.items():
        assert got[name][0] == metrics, name
        assert sorted(got[name][1]) == sorted(arrays), name
        for key, array in arrays.items():
            assert got[name][1][key].dtype == array.dtype, (name, key)
            assert np.array_equal(got[name][1][key], array), (name, key)


def trainers_under(root):
    """{PID: its run directory} of the live ``python -m srigl_np.train`` processes
    writing under ``root``."""
    root = os.fsencode(str(root))
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and b"srigl_np.train" in argv and any(root in a for a in argv):
            pids[int(entry)] = os.fsdecode(next(a for a in argv if root in a))
    return pids


# The grid the stop and cluster tests train: 10 runs (smoke: dense and SRigL, 5 seeds),
# 3 epochs each, so a run can be caught between its first checkpoint and its end.
SEEDS, EPOCHS = range(5), 3
GRID_FLAGS = ["--preset", "smoke", "--seeds", *map(str, SEEDS), "--epochs", str(EPOCHS),
              "--dataset", "embedded"]
_REFERENCE = {}


def reference(tmp_path_factory):
    """(runs, results) of the grid trained uninterrupted by local processes, once per
    test session."""
    if not _REFERENCE:
        from srigl_np.experiments import grid, run_grid

        root = tmp_path_factory.mktemp("reference")
        runs = grid("smoke", epochs=EPOCHS, seeds=SEEDS)
        outcomes = run_grid(runs, str(root), "embedded", jobs=2, say=lambda line: None)
        assert [o.state for o in outcomes] == ["finished"] * len(runs)
        _REFERENCE.update(runs=runs, results=results(root, runs))
    return _REFERENCE["runs"], _REFERENCE["results"]
