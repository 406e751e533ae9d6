"""Running ``python -m srigl_np.train`` in-process from the tests (test_train.py,
test_training_loop.py): its one-line error prefix, a run that reports status and
output, a log that stops training after its first epoch, a checkpoint rewritten as no
trainer writes it, and another process that holds a run directory's lock
(``lock_holder``, a fixture)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from srigl_np import train as train_module

ERROR = "python -m srigl_np.train: error: "


def run_main(capsys, *argv):
    """(exit status, stdout lines, the one stderr line) of an in-process CLI run."""
    try:
        status = train_module.main([str(a) for a in argv])
    except SystemExit as exc:   # argparse's exit
        status = exc.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) <= 1 and "Traceback" not in captured.err, captured.err
    return status, captured.out.splitlines(), lines[0] if lines else ""


def rewrite_checkpoint(path, change):
    """Rewrite the checkpoint at ``path`` after ``change(meta, arrays)`` edited its meta
    dict and its {name: array} in place."""
    with np.load(path, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta, arrays)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


class StopAfterFirstEpoch(Exception):
    """Raised by ``stop_after_first_epoch``: a run interrupted after one epoch."""


def stop_after_first_epoch(line):
    """A ``log`` for ``train.train`` that stops the run at its first epoch line."""
    if line.startswith("epoch"):
        raise StopAfterFirstEpoch


# A process that takes a directory's lock as the trainer does, says so, and sleeps.
_HOLD_LOCK = ("import sys, time; from srigl_np.fileio import lock_directory; "
              "lock = lock_directory(sys.argv[1], sys.argv[2], advice=''); "
              "print('locked', flush=True); time.sleep(60)")


@pytest.fixture
def lock_holder():
    """start(directory, command) -> a process holding the directory's lock as ``command``
    (the trainer by default); killed at the end."""
    held = []

    def start(directory, command=train_module.PROG):
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory), command],
                                  stdout=subprocess.PIPE, text=True)
        held.append(holder)
        assert holder.stdout.readline() == "locked\n"
        return holder

    yield start
    for holder in held:
        holder.kill()
        holder.wait()
        holder.stdout.close()
