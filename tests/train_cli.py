"""Running ``python -m srigl_np.train`` in-process from the tests (test_train.py,
test_training_loop.py): its one-line error prefix, a run that reports status and
output, and a log that stops training after its first epoch."""

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


class StopAfterFirstEpoch(Exception):
    """Raised by ``stop_after_first_epoch``: a run interrupted after one epoch."""


def stop_after_first_epoch(line):
    """A ``log`` for ``train.train`` that stops the run at its first epoch line."""
    if line.startswith("epoch"):
        raise StopAfterFirstEpoch
