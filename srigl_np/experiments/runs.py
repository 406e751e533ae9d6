"""One run of a grid, wherever it executes: ``execute`` is the task every executor runs
(a thread of the runner, a Dask worker, a Slurm job), on the shared ``OUT``.

The task works in its run directory ``OUT/<name>`` under the directory's claim
(``.claim``, an ``flock`` held while the task lives: a second task of the same run, a
Dask retry or another runner's, waits for it, so one trainer at a time writes the
directory; the trainer's own ``.lock`` refuses anyone else). Then: a directory whose
recorded configuration differs from the requested run is refused (``refused``, never
"done before"); a finished run is skipped; one with a checkpoint resumes from it
(``python -m srigl_np.train --resume``, bit-identical to an uninterrupted run); anything
else starts afresh (``--overwrite`` clears what a run that died in its first epoch
left). The trainer's output is appended to ``OUT/<name>.log``, each attempt under a
``==`` header line.

A trainer runs in its own process group (a Ctrl-C at the terminal reaches the runner,
not the trainers) and, on Linux, with a parent-death signal: it is killed with the
process that started it, so no trainer outlives its task, even one killed with
SIGKILL. The runner stops a grid by creating ``OUT/.stop`` (``request_stop``): every
task polls it every POLL_SECONDS, ends its trainer (SIGTERM to the group, SIGKILL after
GRACE_SECONDS) and returns ``stopped``; a task that starts afterwards returns at once.
A task on the runner's machine stops the same way when the runner has died (a local
submitit job outlives a runner killed with SIGKILL, its trainer does not).
Locks are ``flock``s, which die with their holder: a crashed task or trainer leaves no
stale lock.
"""

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ..fileio import LOCK_NAME, MAX_JSON_CHARS, file_kind, not_a_file, parse_json
from ..formats.checkpoint import read_meta
from ..train_config import LEGACY_CONFIG
from .grid import WHERE_NOT_WHAT, requested_config, run_name, train_command

STOP_NAME = ".stop"     # in OUT: the runner asks every task of the grid to stop
CLAIM_NAME = ".claim"   # in a run directory: held by the task that runs it
POLL_SECONDS = 0.1
GRACE_SECONDS = 2.0     # from SIGTERM to SIGKILL of a trainer's process group
STATES = ("finished", "done before", "failed", "refused", "stopped")
# The directory above the srigl_np package: trainers import the same srigl_np as the task.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Starts a trainer (argv[2:]) that is killed with SIGKILL when its parent (PID argv[1])
# dies: prctl(PR_SET_PDEATHSIG) persists through exec. A fresh interpreter, not a
# preexec_fn, so that no Python code (nor a signal handler of the runner) runs in the
# child between fork and exec.
_DIE_WITH_PARENT = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9, 0, 0, 0); "
                    "os.getppid() == int(sys.argv[1]) or os._exit(1); "
                    "os.execv(sys.argv[2], sys.argv[2:])")


@dataclass(frozen=True)
class Outcome:
    """What ``execute`` did with a run: ``state`` is one of STATES, ``detail`` says why
    for failed and refused, ``seconds`` is the training time of this task (0 when it
    trained nothing)."""
    name: str
    state: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self):
        return self.state in ("failed", "refused")

    def __str__(self):
        if self.state == "finished":
            return f"{self.name}: finished in {clock(self.seconds)}"
        if self.failed:
            return f"{self.name}: {self.state.upper()} ({self.detail})"
        return f"{self.name}: {self.state}"


def clock(seconds):
    """'m:ss', or 'h:mm:ss' from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- what a run directory holds ----------------------------------------------------------------

def read_metrics(out):
    """The run's metrics.json as a dict, or None (missing, unreadable, not a file)."""
    path = os.path.join(out, "metrics.json")
    if file_kind(path) != "a regular file":   # missing, or a FIFO that would block a read
        return None
    try:
        with open(path, "rb") as f:
            metrics = parse_json(f.read(MAX_JSON_CHARS + 1), path)   # bounded: deep or
    except (OSError, ValueError):                                    # huge is no metrics
        return None
    return metrics if isinstance(metrics, dict) else None


def is_finished(run, out):
    """metrics.json says the run finished (older trainers: it holds every epoch)."""
    metrics = read_metrics(out)
    if not metrics:
        return False
    return metrics.get("finished", len(metrics.get("epochs", ())) >= run["epochs"]) is True


def recorded_config(out):
    """The config the trainer recorded in ``out`` (metrics.json, else the checkpoint's
    meta), or None when it holds neither."""
    metrics = read_metrics(out)
    if metrics is not None and isinstance(metrics.get("config"), dict):
        return metrics["config"]
    checkpoint = os.path.join(out, "checkpoint.npz")
    if file_kind(checkpoint) != "a regular file":
        return None
    try:
        config = read_meta(checkpoint).get("config")
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def config_difference(run, out, dataset):
    """How the run recorded in ``out`` differs from ``run`` on ``dataset``, as
    "key: recorded X, requested Y" phrases joined by "; ", or None when it is the same
    run or nothing is recorded. Where and how fast it ran (WHERE_NOT_WHAT) may differ."""
    recorded = recorded_config(out)
    if recorded is None:
        return None
    recorded = {**LEGACY_CONFIG, **recorded}
    missing = object()
    phrases = [f"{key}: recorded {recorded.get(key, 'nothing')!r}, requested {value!r}"
               for key, value in requested_config(run, dataset).items()
               if recorded.get(key, missing) != value and key not in WHERE_NOT_WHAT]
    return "; ".join(phrases) or None


def refusal(out, difference, others=0):
    """The one-line refusal of the run directory ``out`` (and ``others`` more)."""
    more = ("" if not others else f" (and {others} more run director"
            f"{'ies' if others > 1 else 'y'} there)")
    return (f"{out} holds a run of another configuration ({difference}){more}; move it "
            f"away or choose another --out")


def mismatched(runs, root, dataset):
    """[(run directory, difference)] of the runs whose directory under ``root`` holds
    another configuration than requested."""
    found = []
    for run in runs:
        out = os.path.join(root, run_name(run))
        difference = config_difference(run, out, dataset) if os.path.isdir(out) else None
        if difference:
            found.append((out, difference))
    return found


# -- stopping a grid ---------------------------------------------------------------------------

def request_stop(root):
    """Ask every task of the grid in ``root`` to stop (creates OUT/.stop)."""
    with open(os.path.join(root, STOP_NAME), "w") as f:
        f.write(f"{os.getpid()} {socket.gethostname()}\n")


def clear_stop(root):
    try:
        os.unlink(os.path.join(root, STOP_NAME))
    except FileNotFoundError:
        pass


def stop_requested(root, runner=None):
    """The grid in ``root`` was asked to stop, or its ``runner`` (``runner_identity``)
    has died."""
    return os.path.exists(os.path.join(root, STOP_NAME)) or (
        runner is not None and runner_gone(runner))


def runner_identity():
    """What tells this process from any other on this machine, for ``runner_gone``:
    (boot id, PID namespace, PID, start time) from /proc, or None without /proc."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    start = _start_time(os.getpid())
    return None if start is None else (boot, namespace, os.getpid(), start)


def runner_gone(runner):
    """True when the process ``runner`` (``runner_identity``) ran on this machine, in
    this PID namespace, and has ended: a task of a runner killed with SIGKILL (a local
    submitit job, a Dask worker beside it) then stops as if asked. A runner on another
    machine is never judged gone."""
    if runner is None:
        return False
    boot, namespace, pid, start = runner
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            if f.read().strip() != boot or os.readlink("/proc/self/ns/pid") != namespace:
                return False
    except OSError:
        return False
    now = _start_time(pid)
    if now is None:   # gone, or hidden from this user (/proc mounted with hidepid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:   # alive, another user's
            pass
        return False
    return now != start   # another process under a reused PID


def _start_time(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# -- the task --------------------------------------------------------------------------------

def execute(run, root, dataset, threads, runner=None):
    """Bring ``run`` to its end under ``root`` (see the module's docstring); returns its
    Outcome. ``runner``: the ``runner_identity`` of the process that submitted it (the
    task stops when it dies). Picklable by reference: what Dask workers and Slurm jobs
    run."""
    name, started = run_name(run), time.monotonic()
    out = os.path.join(root, name)
    if stop_requested(root, runner):
        return Outcome(name, "stopped")
    try:
        os.makedirs(out, exist_ok=True)
        claim = _wait_for(lambda: _try_lock(os.path.join(out, CLAIM_NAME), create=True),
                          root, runner)
    except OSError as exc:
        return Outcome(name, "failed", f"cannot claim {out}: {exc.strerror or exc}")
    if claim is None:
        return Outcome(name, "stopped")
    try:
        os.ftruncate(claim, 0)   # who holds it, for a person looking
        os.pwrite(claim, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return _execute_claimed(run, root, out, dataset, threads, started, runner)
    finally:
        os.close(claim)


def _execute_claimed(run, root, out, dataset, threads, started, runner):
    name = run_name(run)
    difference = config_difference(run, out, dataset)
    if difference:
        return Outcome(name, "refused", refusal(out, difference))
    # A trainer of this run may still be dying (its task killed a moment ago).
    if not _wait_for(lambda: _lock_is_free(os.path.join(out, LOCK_NAME)), root, runner):
        return Outcome(name, "stopped")
    if is_finished(run, out):
        return Outcome(name, "done before")
    resume = os.path.exists(os.path.join(out, "checkpoint.npz"))
    if resume:
        command = [sys.executable, "-m", "srigl_np.train", "--resume", out]
    else:
        command = train_command(run, out, dataset, threads) + ["--overwrite"]
    log_path = os.path.join(root, name + ".log")
    if not_a_file(log_path):   # a FIFO would block the open, a device take the log
        return Outcome(name, "failed", f"{log_path}: {not_a_file(log_path)}")
    with open(log_path, "a") as log:
        log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} "
                  f"pid {os.getpid()}: {'resume' if resume else 'start'}\n")
        log.flush()
        status = _run_trainer(command, log, root, runner)
        if status is None:
            log.write("== stopped by the runner; rerun it to resume\n")
    seconds = time.monotonic() - started
    if status is None:
        return Outcome(name, "stopped", seconds=seconds)
    if status == 0 and is_finished(run, out):
        return Outcome(name, "finished", seconds=seconds)
    error = _error_line(log_path)
    return Outcome(name, "failed", f"exit {status}" + (f": {error}" if error else "")
                   + f"; see {name}.log", seconds)


def _wait_for(take, root, runner):
    """``take()`` until it returns something other than None (polling), or None once the
    grid is asked to stop."""
    while True:
        taken = take()
        if taken is not None:
            return taken
        if stop_requested(root, runner):
            return None
        time.sleep(POLL_SECONDS)


def _try_lock(path, create):
    """A descriptor holding an exclusive ``flock`` on ``path``, or None while another
    holds it. FileNotFoundError when ``path`` is missing and not ``create``."""
    flags = os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _lock_is_free(path):
    """True when no trainer holds the run's lock (None while one does, for _wait_for)."""
    try:
        fd = _try_lock(path, create=False)
    except FileNotFoundError:
        return True
    if fd is None:
        return None
    os.close(fd)
    return True


def _run_trainer(command, log, root, runner):
    """Run the trainer ``command`` with its output to ``log``; its exit status, or None
    when the grid was asked to stop (the trainer then ended)."""
    if sys.platform == "linux":
        command = [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid())] + command
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [_PACKAGE_PARENT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    trainer = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        while True:
            try:
                return trainer.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            if stop_requested(root, runner):
                end_process_group(trainer)
                return None
    except BaseException:   # a KeyboardInterrupt in this process (a local submitit job)
        end_process_group(trainer)
        raise


def end_process_group(process, grace=GRACE_SECONDS):
    """SIGTERM the process group ``process`` leads, SIGKILL it after ``grace`` seconds,
    and reap ``process``."""
    for sig, timeout in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:   # the group is gone, its leader not yet reaped
            pass
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _error_line(path, tail=8192):
    """The trainer's one-line error (``python -m srigl_np.train: error: ...``, its prefix
    dropped) among the last ``tail`` bytes of its log at ``path``, else the last line;
    at most 160 characters."""
    try:
        with open(path, "rb") as f:
            f.seek(max(os.fstat(f.fileno()).st_size - tail, 0))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    prefix = "python -m srigl_np.train: error: "
    errors = [line[len(prefix):] for line in lines if line.startswith(prefix)]
    line = (errors or lines or [""])[-1].strip()
    return line if len(line) <= 160 else line[:157] + "..."
