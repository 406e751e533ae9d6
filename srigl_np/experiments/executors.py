"""Where a grid's runs execute: the executors the command line offers.

Any ``concurrent.futures.Executor`` runs a grid (``runner.run_grid``); these are the
command line's three:

- local: a pool of ``--jobs`` threads of the runner, each waiting on one trainer process;
- ``--dask ADDRESS``: a Dask cluster (``distributed.Client`` to its scheduler); each
  worker thread runs one trainer at a time, so start workers with as many threads as
  trainers they should run (``dask worker ADDRESS --nthreads 1``). A worker that dies
  has its task run again elsewhere (Dask's ``allowed-failures``), resuming the run;
- ``--slurm``: one Slurm job per run through submitit, or, where Slurm's commands are
  absent, one local job process per run (at most ``--jobs`` at a time).
Both cluster executors need the ``cluster`` extra (``pip install 'srigl_np[cluster]'``)
and ``OUT`` on a file system every worker or job shares (each task reads and writes
its run directory there).
"""

import collections
import concurrent.futures
import signal
import threading
import time

EXTRA = "pip install 'srigl_np[cluster]'"


def _import(name, flag):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ValueError(f"{flag} needs {name}: {EXTRA}") from None


def dask_executor(address):
    """(executor, close) of the Dask scheduler at ``address``; OSError when it cannot
    be reached."""
    distributed = _import("distributed", "--dask")
    client = distributed.Client(address, timeout="30s", set_as_default=False)
    return client.get_executor(pure=False), client.close


def parse_param(text):
    """``KEY=VALUE`` of ``--slurm-param`` as (key, value), VALUE as an int or float when
    it reads as one; ValueError otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"must be KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value


def slurm_executor(folder, jobs, threads, params=()):
    """(executor, close) running each task as a submitit job (Slurm, or a local process
    where Slurm is absent: then at most ``jobs`` at a time), with its files in
    ``folder``. Defaults: ``cpus_per_task`` ``threads`` (at least 1), ``timeout_min``
    1440; ``params`` ((key, value) pairs, submitit's AutoExecutor parameters such as
    ``slurm_partition``) override them. ValueError for a parameter submitit refuses."""
    submitit = _import("submitit", "--slurm")
    executor = submitit.AutoExecutor(folder=folder)
    settings = {"cpus_per_task": max(threads, 1), "timeout_min": 1440,
                "name": "srigl_np", **dict(params)}
    try:
        executor.update_parameters(**settings)
    except (NameError, TypeError, ValueError) as exc:   # submitit's unknown or bad keys
        raise ValueError(f"--slurm-param: {' '.join(str(exc).split())}") from None
    local = executor.cluster != "slurm"
    pool = JobExecutor(executor, max_running=jobs if local else None)
    return pool, lambda: pool.shutdown(wait=False, cancel_futures=True)


class JobExecutor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` over a submitit executor: each ``submit`` is one
    job. At most ``max_running`` jobs are out at a time (None: all); the rest wait here
    as pending futures, which ``cancel()`` drops. A watcher thread submits jobs and
    polls them every ``poll`` seconds; a job's result or exception becomes its
    future's. ``shutdown(cancel_futures=True)`` also cancels the jobs out."""

    def __init__(self, executor, max_running=None, poll=0.25):
        self.executor, self.max_running, self.poll = executor, max_running, poll
        self._queue = collections.deque()
        self._jobs = {}   # future -> job
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher = None

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()
        with self._lock:
            if self._closed.is_set():
                raise RuntimeError("cannot submit after shutdown")
            self._queue.append((future, fn, args, kwargs))
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, daemon=True,
                                                 name="srigl_np-jobs")
                self._watcher.start()
        return future

    def _launch(self):
        while self._queue and (self.max_running is None
                               or len(self._jobs) < self.max_running):
            future, fn, args, kwargs = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue   # cancelled while it waited here
            try:
                self._jobs[future] = self.executor.submit(fn, *args, **kwargs)
            except Exception as exc:   # sbatch refused it: the run's failure, said once
                future.set_exception(exc)

    def _watch(self):
        # Jobs started from here (submitit's local processes; sbatch) inherit this
        # thread's signal mask: a Ctrl-C at the terminal, sent to the runner's whole
        # process group, reaches the runner alone, which stops the jobs itself.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        while True:
            with self._lock:
                self._launch()
                jobs = list(self._jobs.items())
                if self._closed.is_set() and not jobs and not self._queue:
                    return
            for future, job in jobs:
                if not job.done():
                    continue
                try:
                    future.set_result(job.result())
                except Exception as exc:   # the job failed, was cancelled or timed out
                    future.set_exception(exc)
                with self._lock:
                    del self._jobs[future]
            time.sleep(self.poll)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            self._closed.set()
            if cancel_futures:
                while self._queue:
                    self._queue.popleft()[0].cancel()
                for job in self._jobs.values():
                    try:
                        job.cancel(check=False)
                    except Exception:   # a job that ended meanwhile; scancel missing
                        pass
        if wait and self._watcher is not None:
            self._watcher.join()

