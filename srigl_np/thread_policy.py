"""How many threads a kernel call runs: the one rule, for our OpenMP team and the BLAS pool.

Three parts, each a pure function so that the tests can feed it fake files and numbers:

* ``default_thread_count(cpus, quota)``: the default team follows the CPUs this process
  may really use, its affinity set (``validation.usable_cpus``: taskset, a container's
  cpuset) and its cgroup CPU quota (``cgroup_cpu_limit``: cgroup v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us / cpu.cfs_period_us``), rounded up as Go, Java and .NET round a
  fractional quota. ``DEFAULT_THREADS`` is it for this process, read once at import;
  with ``OMP_NUM_THREADS`` set in the environment the user's count stands instead.
* ``resolve_threads(threads, openmp_default)``: an explicit count (``threads >= 1``)
  is the user's and is kept; 0 means the default, OpenMP's (``omp_get_max_threads()``,
  which ``threadpoolctl`` may lower) within ``DEFAULT_THREADS``.
* ``team_size(threads, work)``: the grain, as torch's ``at::parallel_for`` has: every
  thread gets at least ``GRAIN_WORK`` multiply-adds, so a call too small to pay for
  waking a team runs on the calling thread alone. With the team asleep between calls
  (``thread_waits``: ``OMP_WAIT_POLICY=PASSIVE``) a wake costs tens of microseconds,
  and a busy machine can delay a sleeping thread by a whole scheduler time slice, which
  the caller then waits out at the region's closing barrier.

``blas_threads()`` applies the same default to the BLAS pool beside ours (OpenBLAS sizes
itself from the affinity set alone, never from a cgroup quota), and ``blas_grain(work)``
the grain rule to one product: NumPy's OpenBLAS (pthreads) waits for a late worker far
worse than libgomp asleep does, so its grain is larger (BLAS_GRAIN_WORK).
"""

import math
import os
from contextlib import contextmanager

from .validation import check_threads, max_thread_count, usable_cpus

# Multiply-adds each thread must get before a call is split across threads (a call with
# less than 2 * GRAIN_WORK runs on one thread). Waking the sleeping team
# (OMP_WAIT_POLICY=PASSIVE) costs ~80 us, more than a bench layer's whole batch-1 call:
# on a 2-vCPU Xeon (KVM, float32, 90% constant fan-in, avx512 lookup), quiet, 3072 -> 768
# (236,000 multiply-adds) took 0.114 ms on 2 woken threads against 0.034 ms on 1 (0.018
# on 2 spinning ones), and beside 1.4 other busy CPUs 2 threads lost to 1 at every
# batch-1 size from 6,400 to 236,000 (1.2-2.4x slower; docs/bench/busy_neighbour.md).
# At 2**20 a thread's share (>= 0.15 ms of these kernels) pays for its wake: batch-1
# calls of the bench's layers run on one thread, batch 256 (6 * 10**7) on all.
GRAIN_WORK = 2**20

# The same for a BLAS product (NumPy's OpenBLAS 0.3.31, pthreads), whose pool waits for a
# late worker far worse than libgomp asleep does: beside other CPU-bound processes on
# a 2-vCPU Xeon (float32, medians of 3 interleaved rounds, 1.4-1.8 other CPUs busy),
# 2 threads against 1 took 0.30 against 0.48 ms for the mlp's 128x784x300 product but
# 40 against 0.9 ms for 256x784x300, 292 against 6.7 ms for the cnn's 128x9216x128 and
# 57 against 24 ms for 512x1024x1024; only from ~2 G multiply-adds did the second
# thread stop losing much (1024x2048x1024: 123 against 85 ms). One mlp training epoch
# (1280 samples) took 740-1180 ms with BLAS on 2 threads against 36-57 ms on 1. On a
# quiet 2-core machine a second thread gained nothing on the mlp's epoch (1.25 against
# 1.26 s, issue 23), so products below 2 * 2**28 multiply-adds (all of the mlp's, the
# cnn's Linear layers) run on one; the convolutions' larger ones keep the pool.
BLAS_GRAIN_WORK = 2**28

# The grain of the training kernels (srigl_np._training_kernels), larger than the
# inference kernels': a training step runs a dozen kernels back to back, each waking the
# sleeping team. The mlp's condensed SRigL step (90%, batch 128, 2-vCPU Xeon, quiet, every
# product 0.1-2.4 M multiply-adds) took 2.8 ms on 2 threads against 1.3 ms on 1 with
# the team woken at every call; spinning instead (GOMP_SPINCOUNT 3000-30000) gave 1.1-1.4
# ms quiet but 3.2-6.7 ms beside one busy neighbour. With 2**21 per thread the mlp runs on
# one thread and the cnn's convolutions (~10**8) on two (benchmarks/bench_train_epoch.py;
# the commands and figures in docs/training.md, "Threads").
TRAINING_GRAIN_WORK = 2**21

CGROUP_ROOT = "/sys/fs/cgroup"
SELF_CGROUP = "/proc/self/cgroup"


# -- the cgroup quota --------------------------------------------------------------------

def parse_cpu_max(text):
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("$QUOTA $PERIOD", QUOTA "max" when
    unlimited): QUOTA / PERIOD as a float, or None for no limit or an unreadable line."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    try:
        quota = int(fields[0])
        period = int(fields[1]) if len(fields) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota_text, period_text):
    """CPUs allowed by cgroup v1's ``cpu.cfs_quota_us`` (-1: unlimited) and
    ``cpu.cfs_period_us``: quota / period, or None for no limit or unreadable text."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _ancestors(path):
    """The cgroup ``path`` ("/a/b") and each folder above it up to "/": a quota set on
    any of them binds the process. A path outside this cgroup namespace ("/../x") gives
    only "/", the namespace's root."""
    parts = [p for p in path.strip().split("/") if p]
    if ".." in parts:
        return ["/"]
    return ["/" + "/".join(parts[:i]) if i else "/" for i in range(len(parts), -1, -1)]


def cgroup_cpu_limit(root=CGROUP_ROOT, self_cgroup=SELF_CGROUP):
    """The smallest CPU quota (in CPUs, a float) over this process's cgroup and its
    ancestors, cgroup v2 or v1, or None when no quota is set or none can be read (not
    Linux, no cgroup file system). ``root`` is where cgroups are mounted and
    ``self_cgroup`` the file naming the process's cgroups (both injectable for tests).

    Inside a container the cgroup named in ``self_cgroup`` may not exist under ``root``
    (its own cgroup namespace is mounted there as "/"): every ancestor path that exists
    is read, "/" included, so the container's own limit is found either way."""
    listing = _read(self_cgroup)
    if listing is None:
        return None
    limits = []
    for line in listing.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":   # v2: "0::/path"
            for folder in _ancestors(path):
                text = _read(os.path.join(root, folder.lstrip("/"), "cpu.max"))
                if text is not None:
                    limits.append(parse_cpu_max(text))
        elif "cpu" in controllers.split(","):   # v1: "4:cpu,cpuacct:/path"
            for mount in (controllers, "cpu,cpuacct", "cpu"):
                for folder in _ancestors(path):
                    base = os.path.join(root, mount, folder.lstrip("/"))
                    quota = _read(os.path.join(base, "cpu.cfs_quota_us"))
                    period = _read(os.path.join(base, "cpu.cfs_period_us"))
                    if quota is not None and period is not None:
                        limits.append(parse_cfs_quota(quota, period))
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


# -- the thread counts -----------------------------------------------------------------------

def default_thread_count(cpus, quota=None):
    """The default team for a process that may run on ``cpus`` CPUs (its affinity set)
    under a cgroup quota of ``quota`` CPUs (None: none): min(cpus, ceil(quota)), >= 1."""
    if quota is None:
        return max(1, cpus)
    return max(1, min(cpus, math.ceil(quota)))


def environment_threads(environ=os.environ):
    """The count the user set in ``OMP_NUM_THREADS`` (its first level, "4,2" -> 4), or
    None when unset or not a positive integer."""
    first = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) > 0 else None


def _process_default():
    user = environment_threads()
    if user is not None:   # the user's OpenMP count stands (within the kernels' bound)
        return min(user, max_thread_count())
    return default_thread_count(usable_cpus(), cgroup_cpu_limit())


# Read once: a kernel call's whole budget is microseconds.
DEFAULT_THREADS = _process_default()
_MAX_THREADS = max_thread_count()
_DEFAULT_CAP = min(DEFAULT_THREADS, _MAX_THREADS)


def resolve_threads(threads, openmp_default, default=None):
    """The thread count for ``threads`` (validated by ``validation.check_threads``): an
    explicit count as given, 0 the smallest of ``openmp_default`` (OpenMP's own),
    ``default`` (None: ``DEFAULT_THREADS``) and ``validation.max_thread_count()``; >= 1."""
    if type(threads) is int and 0 <= threads <= _MAX_THREADS and default is None:
        # The common case (every kernel call), without check_threads' or min's calls:
        # each is ~0.1-0.2 us of a batch-1 call's ~2.
        if threads:
            return threads
        count = openmp_default if openmp_default < _DEFAULT_CAP else _DEFAULT_CAP
        return count if count > 0 else 1
    count = check_threads(threads)
    if count:
        return count
    default = DEFAULT_THREADS if default is None else default
    return max(1, min(openmp_default, default, max_thread_count()))


def team_size(threads, work, grain=None):
    """The threads a call of ``work`` multiply-adds runs on, given ``threads`` resolved
    (``resolve_threads``): as many as get ``grain`` (None: GRAIN_WORK, read at each
    call so tests can lower it) each, at least 1, at most ``threads`` (torch's grain
    rule). A kernel's result never depends on it."""
    grain = GRAIN_WORK if grain is None else grain
    team = work // grain if grain > 1 else work   # plain arithmetic: called per kernel call
    return threads if team >= threads else team if team > 1 else 1


BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                  "OMP_NUM_THREADS")


def blas_threads(threads=0, environ=os.environ):
    """The BLAS pool's count beside ``threads`` of ours, for ``threadpoolctl``'s
    ``threadpool_limits(limits=...)``: an explicit count as given; for 0 (the default)
    ``DEFAULT_THREADS``, or None (leave the pool alone) when the user sized it with one
    of BLAS_VARIABLES."""
    if threads:
        return threads
    if any(environ.get(name, "").strip() for name in BLAS_VARIABLES):
        return None
    return DEFAULT_THREADS


# The BLAS libraries' thread controls (threadpoolctl's), found on first use.
_BLAS_POOLS = []


def _blas_pools():
    if not _BLAS_POOLS:
        from threadpoolctl import ThreadpoolController

        _BLAS_POOLS.append(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _BLAS_POOLS[0]


@contextmanager
def blas_grain(work, grain=None):
    """Context: BLAS products of ``work`` multiply-adds run on ``team_size(current,
    work, grain)`` threads (None: BLAS_GRAIN_WORK), the pool put back after. Never
    raises the pool above what it has (the caller's ``threadpool_limits`` stands)."""
    grain = BLAS_GRAIN_WORK if grain is None else grain
    lowered = []
    for pool in _blas_pools():
        current = pool.get_num_threads()
        if current and team_size(current, work, grain) < current:
            pool.set_num_threads(team_size(current, work, grain))
            lowered.append((pool, current))
    try:
        yield
    finally:
        for pool, current in lowered:
            pool.set_num_threads(current)
