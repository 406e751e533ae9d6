"""Running a grid on an executor, and stopping it when told.

``run_grid`` submits one ``runs.execute`` task per run to any
``concurrent.futures.Executor`` (its own thread pool of ``jobs`` threads when none is
given: the trainers are processes, the threads only wait on them), reports each
outcome with the grid's progress, and returns the outcomes. A KeyboardInterrupt, or
``Interrupted`` (what ``signals_interrupt`` turns SIGINT and SIGTERM into), stops the
whole grid before going on to the caller: the stop file tells every task to end its
trainer, queued runs are cancelled, and the tasks this process can see are waited for
(at most STOP_SECONDS). A rerun of the same grid resumes where it stopped.
"""

import concurrent.futures
import contextlib
import os
import signal
import threading

from ..fileio import lock_directory
from .grid import run_name
from .runs import (Outcome, clear_stop, clock, execute, mismatched, refusal, request_stop,
                   runner_identity)

STOP_SECONDS = 4.0
INTERRUPTED = "interrupted; rerun the same command to resume"


class Interrupted(BaseException):
    """A signal asked the runner to stop; ``status`` is the shell's 128 + signal."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


@contextlib.contextmanager
def signals_interrupt():
    """Within the block SIGINT and SIGTERM raise ``Interrupted`` in the main thread (the
    previous handlers come back after it). Elsewhere than the main thread: nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class Progress:
    """The grid's progress after each outcome: runs done, running, failed and queued, and
    the ETA (the mean time of the runs trained so far, times the runs left, over the runs
    running now). A run counts as running once its task has written its log header: the
    log changed since the grid started (a test that holds for any executor on the
    shared OUT)."""

    def __init__(self, runs, root, say):
        self.root, self.say, self.total = root, say, len(runs)
        self.done = self.failed = 0
        self.trained = []   # seconds of the runs trained in this grid
        self.logs = {run_name(r): self._stamp(run_name(r)) for r in runs}

    def _stamp(self, name):
        try:
            stat = os.stat(os.path.join(self.root, name + ".log"))
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def report(self, outcome, pending):
        """Print ``outcome`` with the counts; ``pending``: names of runs not yet done."""
        self.done += 1
        self.failed += outcome.failed
        if outcome.seconds and outcome.state in ("finished", "failed"):
            self.trained.append(outcome.seconds)
        running = sum(self._stamp(name) != self.logs.get(name) for name in pending)
        if not pending:
            eta = "0:00"
        elif self.trained:
            eta = clock(sum(self.trained) / len(self.trained) * len(pending) / max(running, 1))
        else:
            eta = "?"
        self.say(f"[{self.done}/{self.total}] {outcome}  ({self.done - self.failed} done, "
                 f"{running} running, {self.failed} failed, {len(pending) - running} "
                 f"queued; ETA {eta})")


def run_grid(runs, root, dataset, threads=1, executor=None, jobs=1, say=print,
             holder="srigl_np.experiments.run_grid"):
    """Train ``runs`` (dicts of ``grid.grid``) under ``root`` on ``dataset`` with
    ``--threads threads`` each, through ``executor`` (any concurrent.futures.Executor;
    None: a pool of ``jobs`` threads of this process), holding ``root``'s lock as
    ``holder`` (one runner per directory: another is refused, ValueError). Returns the
    Outcomes in the order they came. ValueError (nothing started) when a run directory
    holds another configuration than requested. Any exception (KeyboardInterrupt,
    ``Interrupted``, an executor's own error) goes on to the caller once the grid is
    stopped."""
    with lock_directory(root, holder, advice="wait for it or choose another --out"):
        found = mismatched(runs, root, dataset)
        if found:
            raise ValueError(refusal(*found[0], others=len(found) - 1))
        clear_stop(root)   # left by a grid stopped before
        own = executor is None
        if own:
            executor = concurrent.futures.ThreadPoolExecutor(jobs)
        futures = {}
        try:
            outcomes = _run(runs, root, dataset, threads, executor, futures, say)
        except BaseException:   # KeyboardInterrupt, Interrupted, a lost cluster: stop all
            _stop(root, futures, executor if own else None)
            raise
        if own:
            executor.shutdown()
        return outcomes


def _run(runs, root, dataset, threads, executor, futures, say):
    """Submit a task per run (into ``futures``: future -> run) and report each outcome
    as it comes; the outcomes."""
    progress, outcomes = Progress(runs, root, say), []
    position = {run_name(run): i for i, run in enumerate(runs)}
    me = runner_identity()
    for run in runs:
        futures[executor.submit(execute, run, root, dataset, threads, me)] = run
    pending = set(futures)
    while pending:
        done, pending = concurrent.futures.wait(
            pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in sorted(done, key=lambda f: position[run_name(futures[f])]):
            outcomes.append(_outcome(future, futures[future]))
            progress.report(outcomes[-1], [run_name(futures[f]) for f in pending])
    return outcomes


def _outcome(future, run):
    """The Outcome of a finished future: the task's own, or a failure the executor
    reports (a Dask worker that died too often, a Slurm job that failed)."""
    if future.cancelled():
        return Outcome(run_name(run), "stopped")
    error = future.exception()
    if error is not None:
        text = " ".join(str(error).split())[:300]
        return Outcome(run_name(run), "failed", f"{type(error).__name__}: {text}")
    return future.result()


def _stop(root, futures, own_executor):
    """Stop the grid: the stop file first (every task, here or on a cluster, ends its
    trainer), then the queued runs cancelled, then the running ones waited for. Further
    SIGINT and SIGTERM are ignored meanwhile."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        request_stop(root)
        for future in futures:
            future.cancel()
        concurrent.futures.wait([f for f in futures if not f.done()], timeout=STOP_SECONDS)
        if own_executor is not None:
            own_executor.shutdown(wait=False, cancel_futures=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
