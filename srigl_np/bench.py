"""``python -m srigl_np.bench``: condensed inference against its baselines on this machine.

Reproduces the comparison of the SRigL paper (Lasby et al. 2024, Sec. 4.4, Fig. 4) on
single layers condensed from random constant fan-in masks, against what a user would
pick instead:

    dense        x @ W.T with NumPy (BLAS), W the masked (n_out, n_in) weight
    structured   x @ W[active].T: dense over the active neurons only (the paper's
                 "structured" baseline; equal to dense unless --ablated-frac > 0)
    csr          scipy.sparse CSR, the faster of (W_csr @ x.T).T and x @ Wt_csr
                 (Wt_csr = CSR of W.T); the table says which one ran
    torch-dense, torch-csr   the same products in PyTorch, when torch is installed
                 (pip install "torch==2.13.0+cpu": the CPU build; a plain
                 `pip install torch` pulls gigabytes of CUDA libraries)
    mkl-csr      Intel MKL's CSR product through sparse_dot_mkl, both orientations as for
                 csr, when installed (pip install "srigl_np[bench]": sparse_dot_mkl and
                 mkl; the MKL library of pip's mkl wheel is found without setting paths)
    condensed    srigl_np's condensed kernel (ours)

Every row names the best alternative (the fastest implementation that is not ours) and
gives condensed's speedup over it, over the best dense one (dense, structured,
torch-dense) and over the best CSR one (csr, torch-csr, mkl-csr).

The limit: before the rows, the bench measures this machine's read bandwidth (the sum of
a float32 array far larger than the last-level cache) and dense BLAS throughput (a square
float32 sgemm) at each thread count. Each row then states the condensed kernel's
achieved bandwidth (batch < 16: bytes of values + indices + x read per call, over the
median seconds) or GFLOP/s (batch >= 16: 2 * nnz * batch per call) and the fraction of
the machine's figure that is.

Load: during each row the bench counts the CPU time that other processes used (Linux:
busy time of this process's CPUs in /proc/stat, less this process's own CPU time) and
the spread of each implementation's timings (interquartile range over median). A row
with other load or unstable repeats is marked "busy" or "unstable" and its ratios
should not be quoted: rerun on an idle machine.

BLAS, OpenMP, MKL and torch are all held to the row's thread count (threadpoolctl, the
kernel's ``threads=``, ``mkl_set_num_threads``, ``torch.set_num_threads``); scipy.sparse
is single-threaded. Each figure is the median of repeated calls (at least ``--min-time``
seconds and 5 calls per row; with --quick, 3). The implementations of a case take turns:
ROUNDS rounds (QUICK_ROUNDS with --quick), each giving every implementation a warm-up
call and then 1/ROUNDS of its time, so a burst of load from elsewhere on a shared machine
falls on all of them rather than on one. Speedups are ratios of medians taken in the
same run.

Layer construction (``dst.constant_fan_in_mask``): n_active = n_out - round(ablated_frac
* n_out) neurons keep k = floor(budget / n_active) weights each (at most n_in), budget =
floor((1 - sparsity) * n_in * n_out), so the density stays (1 - sparsity) whatever the
ablation, as SRigL redistributes the weights of ablated neurons.
"""

import argparse
import glob
import importlib.util
import math
import os
import platform
import re
import sys
import time
import warnings

from . import thread_waits

# OpenBLAS's idle threads spin for ~0.1 s after each call by default: in the interleaved
# rounds they would spin through the next implementation's turn (measured here, 2
# threads: 0.1 CPU-s burnt in the 0.15 s after a dense call; none with this setting).
# The training default (see thread_waits) keeps them awake between back-to-back calls
# but not into the next turn. It must be set before NumPy loads OpenBLAS, which
# `python -m srigl_np.bench` does just below; a value the user set is kept.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT",
                      thread_waits.TRAINING_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"])

import numpy as np  # noqa: E402

from . import dst  # noqa: E402

DEFAULT_SHAPES = ((768, 3072), (3072, 768), (4096, 4096))
PAPER_FIGURES = ("SRigL paper (Lasby et al. 2024, Fig. 4), condensed at 90% sparsity: "
                 "CPU batch 1 3.4x vs dense and 2.5x vs CSR; CPU batch 256 0.48x vs dense; "
                 "GPU batch 256 1.7x vs dense (13x vs CSR).")
# The project's own development targets (issue 12), printed only with --targets:
# batch -> minimum speedup of condensed vs (NumPy dense, best CSR), at 2 threads, float32,
# 90% sparsity, on DEFAULT_SHAPES.
TARGETS = {1: (3.5, 2.0), 256: (4.0, 2.5)}
# GPU targets at batch 256 (vs cuBLAS dense, vs cuSPARSE CSR) and batch 1 (vs dense).
GPU_TARGETS = {256: (2.0, 15.0), 1: (1.0, None)}
# The bench holds a layer several times over (float64 draw keys, mask, float32 values,
# weight, active rows, two CSR copies): about this many bytes per dense weight element.
BYTES_PER_WEIGHT_ELEMENT = 48
MAX_ELEMENTS = 2**31   # no dense weight or input batch past this many elements

OURS = "condensed"
DENSE_KINDS = ("dense", "structured", "torch-dense")
CSR_KINDS = ("csr", "torch-csr", "mkl-csr")
ALTERNATIVES = DENSE_KINDS + CSR_KINDS

# From this batch on a row's limit is compute (GFLOP/s against sgemm); below it, reading
# the weights dominates (GB/s against the read test).
GFLOPS_FROM_BATCH = 16
READ_PROBE_BYTES = 256 * 2**20   # at least 4x the last-level cache, see probe_bytes
SGEMM_N, QUICK_SGEMM_N = 2048, 1024
PROBE_REPEATS, QUICK_PROBE_REPEATS = 5, 3

# A row is "busy" when other load used more than this many CPUs on average (beyond the
# resolution of /proc/stat's tick counts), "unstable" when an implementation's
# interquartile range exceeds this fraction of its median.
BUSY_CPUS = 0.25
UNSTABLE_SPREAD = 0.30

ROUNDS = 10
# --quick: fewer interleaved rounds (each costs every implementation a warm-up call, and
# at batch 256 on the big layer a call is ~0.1 s) and shorter probes, so that the default
# shapes finish within QUICK_SECONDS on 2 idle cores (see estimate_row_seconds).
QUICK_ROUNDS = 3
QUICK_TURN_REPEATS = 1   # timed calls per turn at least: 3 samples of a slow call
QUICK_SECONDS = 60
QUICK_MIN_TIME = 0.03

# Intel OpenMP's worker threads spin for KMP_BLOCKTIME ms (default 200) after each MKL
# call: in the interleaved rounds they would spin through the next implementation's turn
# on the cores it needs. 1 ms keeps them awake between MKL's back-to-back calls but not
# into the next turn, as libgomp's default spin does for the condensed kernel. Set
# before MKL loads; a value the user set is kept.
MKL_BLOCKTIME_MS = "1"


# -- the machine ----------------------------------------------------------------------

def _cpuinfo():
    """(model name, set of feature flags) from /proc/cpuinfo; ('', set()) elsewhere."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def vector_isa(flags, machine=None):
    """The widest vector instruction set ``flags`` (/proc/cpuinfo) report, with its width:
    'AVX-512 (512-bit)', 'AVX2 (256-bit)', ..., or the machine name when none is known."""
    for flag, name in (("avx512f", "AVX-512 (512-bit)"), ("avx2", "AVX2 (256-bit)"),
                       ("avx", "AVX (256-bit)"), ("sse2", "SSE2 (128-bit)"),
                       ("sve", "SVE (scalable)"), ("asimd", "NEON (128-bit)")):
        if flag in flags:
            return name
    return f"unknown ({machine or platform.machine()})"


def kernel_cpu_path():
    """The condensed kernels' instruction-set path (``srigl_np.kernels.cpu_path()``, e.g.
    'avx512', 'avx2', 'generic'), or 'not reported' for a build without it."""
    from . import kernels

    path = getattr(kernels, "cpu_path", None)
    if callable(path):
        path = path()
    return "not reported" if path is None else str(path)


def machine_info():
    """CPU model, core count, vector ISA, the kernels' CPU path, BLAS library and kernel
    build, for every report."""
    from threadpoolctl import threadpool_info

    from .kernels import max_threads, openmp_enabled

    model, flags = _cpuinfo()
    blas = [f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')})"
            for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return {"cpu": model or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "vector_isa": vector_isa(flags),
            "cpu_path": kernel_cpu_path(), "blas": ", ".join(blas) or "unknown",
            "openmp": openmp_enabled(), "max_threads": max_threads(),
            "python": platform.python_version(), "numpy": np.__version__}


def last_level_cache_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """The largest cache of CPU 0 in bytes (Linux sysfs), or None where it is not listed."""
    sizes = []
    for path in glob.glob(os.path.join(root, "index*", "size")):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def probe_bytes(llc=None, memory=None):
    """Size of the read test's array: READ_PROBE_BYTES, or 4x the last-level cache when
    that is larger (so the test reads memory, not cache), at most 1/8 of memory."""
    size = max(READ_PROBE_BYTES, 4 * llc) if llc else READ_PROBE_BYTES
    if memory:
        size = min(size, memory // 8)
    return max(4, size // 4 * 4)


def read_bandwidth(threads, nbytes=READ_PROBE_BYTES, repeats=PROBE_REPEATS, buffer=None):
    """GB/s (1e9 bytes/s) of reading a float32 array of ``nbytes``: ``threads`` threads
    each sum one slice (NumPy reductions release the GIL, so the slices are read in
    parallel). Median of ``repeats`` timed passes after a warm-up pass. ``buffer``: a
    float32 array to reuse instead of allocating one."""
    from concurrent.futures import ThreadPoolExecutor

    data = buffer if buffer is not None else np.ones(nbytes // 4, dtype=np.float32)
    slices = np.array_split(data, threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        def one_pass():
            list(pool.map(np.add.reduce, slices))
        times = sample_seconds(one_pass, 0.0, repeats, repeats)
    return data.nbytes / float(np.median(times)) / 1e9


def sgemm_gflops(threads, n=SGEMM_N, repeats=PROBE_REPEATS):
    """GFLOP/s of NumPy's BLAS on an (n, n) @ (n, n) float32 product (2 n^3 flops) at
    ``threads`` BLAS threads; median of ``repeats`` after a warm-up call."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(limits=threads):
        times = sample_seconds(lambda: a @ b, 0.0, repeats, repeats)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


def measure_limits(thread_counts, quick=False, meter=None):
    """This machine's own figures at each thread count, measured now:
    {threads: {"read_gb_s", "read_bytes", "sgemm_gflop_s", "sgemm_n", "llc_bytes" (the
    last-level cache, None if unknown), "load_flags", "other_cpus"}}: the read test and
    sgemm of ``read_bandwidth`` / ``sgemm_gflops``, shorter with ``quick``. ``meter``: a
    LoadMeter factory, as for ``run``."""
    meter = meter or LoadMeter
    repeats = QUICK_PROBE_REPEATS if quick else PROBE_REPEATS
    n = QUICK_SGEMM_N if quick else SGEMM_N
    llc = last_level_cache_bytes()
    nbytes = probe_bytes(llc, _memory_bytes())
    buffer = np.ones(nbytes // 4, dtype=np.float32)
    limits = {}
    for threads in thread_counts:
        load = meter()
        with load:
            read = read_bandwidth(threads, repeats=repeats, buffer=buffer)
            gflops = sgemm_gflops(threads, n, repeats)
        limits[threads] = {"read_gb_s": read, "read_bytes": buffer.nbytes,
                           "sgemm_gflop_s": gflops, "sgemm_n": n, "llc_bytes": llc,
                           "other_cpus": load.other_cpus,
                           "load_flags": load_flags(load.other_cpus, load.resolution)}
    return limits


# -- other load on the machine --------------------------------------------------------

# /proc/stat's per-CPU fields: user nice system idle iowait irq softirq steal (guest time
# is already inside user). Busy = all but idle and iowait; steal (a hypervisor running
# someone else on our CPU) is load from elsewhere too.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def read_cpu_busy(path="/proc/stat", cpus=None):
    """Busy clock ticks of ``cpus`` (CPU numbers; None: all, the aggregate line) since
    boot, from /proc/stat, or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    total, per_cpu = None, {}
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu"):
            continue
        try:
            busy = sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
        except ValueError:
            continue
        if name == "cpu":
            total = busy
        elif name[3:].isdigit():
            per_cpu[int(name[3:])] = busy
    if cpus is not None and per_cpu and all(c in per_cpu for c in cpus):
        return sum(per_cpu[c] for c in cpus)
    return total


def own_cpu_seconds():
    """CPU seconds this process (all its threads) has used: user + system."""
    try:
        import resource
    except ImportError:   # not Unix
        t = os.times()
        return t.user + t.system
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def other_cpus(busy_start, busy_end, own_start, own_end, wall, ticks_per_second):
    """The average number of CPUs other load kept busy over ``wall`` seconds: the CPUs'
    busy time (ticks / ticks_per_second) less this process's own CPU seconds; None when
    a /proc/stat reading is missing or no time passed."""
    if busy_start is None or busy_end is None or not wall > 0:
        return None
    machine = (busy_end - busy_start) / ticks_per_second
    return max(0.0, (machine - (own_end - own_start)) / wall)


def _our_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def _ticks_per_second():
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        return 100


class LoadMeter:
    """Context manager: how many CPUs other load used while its block ran.

    After the block: ``other_cpus`` (None where /proc/stat cannot be read), ``wall``
    (seconds) and ``resolution``, the most that ``other_cpus`` can be off by because
    /proc/stat counts whole ticks (one per CPU at each end). Readers are injectable for
    tests: ``read_busy()`` -> busy ticks or None, ``own_cpu()`` -> CPU seconds,
    ``clock()`` -> seconds."""

    def __init__(self, read_busy=None, own_cpu=own_cpu_seconds, clock=time.perf_counter,
                 ticks_per_second=None, n_cpus=None):
        cpus = _our_cpus()
        self._read_busy = read_busy or (lambda: read_cpu_busy(cpus=cpus))
        self._own_cpu, self._clock = own_cpu, clock
        self._ticks = ticks_per_second or _ticks_per_second()
        self._n_cpus = n_cpus or (len(cpus) if cpus else os.cpu_count() or 1)
        self.other_cpus = self.wall = self.resolution = None

    def __enter__(self):
        self._start = (self._read_busy(), self._own_cpu(), self._clock())
        return self

    def __exit__(self, *exc):
        busy, own, now = self._read_busy(), self._own_cpu(), self._clock()
        busy0, own0, start = self._start
        self.wall = now - start
        self.other_cpus = other_cpus(busy0, busy, own0, own, self.wall, self._ticks)
        self.resolution = (2 * self._n_cpus / self._ticks / self.wall
                           if self.wall > 0 else float("inf"))
        return False


def spread(times):
    """Interquartile range of ``times`` over their median; None for fewer than 3."""
    if len(times) < 3:
        return None
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / median) if median > 0 else None


def load_flags(other, resolution, worst_spread=None, worst_name=None):
    """The row's warnings: "busy: ..." when other load used more than BUSY_CPUS CPUs
    beyond the reading's resolution, "unstable: ..." when the worst implementation's
    spread exceeds UNSTABLE_SPREAD. An empty list: nothing noticed."""
    flags = []
    if other is not None and other - (resolution or 0.0) > BUSY_CPUS:
        flags.append(f"busy: other load used {other:.1f} CPUs")
    if worst_spread is not None and worst_spread > UNSTABLE_SPREAD:
        flags.append(f"unstable: {worst_name} IQR {worst_spread:.0%} of its median")
    return flags


# -- the layers and the implementations ------------------------------------------------

def constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng):
    """A (n_out, n_in) float32 weight with constant fan-in and round(ablated_frac * n_out)
    random neurons ablated: ``dst.constant_fan_in_mask`` with ablated=, so the live
    neurons share the layer's whole budget (k = dst.fan_in_after_ablation), and
    standard-normal values on the mask (never exactly 0)."""
    n_ablated = int(round(ablated_frac * n_out))
    if n_ablated >= n_out:
        raise ValueError(f"ablated_frac must leave a neuron active, got {ablated_frac}")
    ablated = rng.choice(n_out, n_ablated, replace=False)
    mask = dst.constant_fan_in_mask((n_out, n_in), sparsity, rng, ablated=ablated)
    values = rng.standard_normal((n_out, n_in), dtype=np.float32)
    values[values == 0] = 1.0
    return np.where(mask, values, np.float32(0))


def sample_seconds(fn, min_time, min_repeats=5, max_repeats=100_000, clock=time.perf_counter):
    """Wall times of fn() (a list) over at least min_time s and min_repeats calls,
    after one warm-up call. ``clock``: seconds (injectable for tests)."""
    fn()
    times = []
    start = clock()
    while len(times) < min_repeats or (clock() - start < min_time
                                       and len(times) < max_repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return times


def median_seconds(fn, min_time, min_repeats=5):
    """Median wall time of fn() over repeats after one warm-up call, and the count."""
    times = sample_seconds(fn, min_time, min_repeats)
    return float(np.median(times)), len(times)


def turn_repeats(rounds):
    """Timed calls each implementation gets at least per turn: 5 calls over the rounds."""
    return -(-5 // rounds)


def estimate_row_seconds(call_seconds, min_time, rounds, min_repeats=None):
    """Seconds ``_time_all`` with ``sample_seconds`` spends on one row whose callables
    take ``call_seconds`` (a list, one per callable; csr-like entries count each
    orientation) each: per round and callable, a warm-up call and then calls until the
    turn's min_time / rounds has passed, at least ``min_repeats`` of them (default
    ``turn_repeats(rounds)``)."""
    turn = min_time / rounds
    least = turn_repeats(rounds) if min_repeats is None else min_repeats
    total = 0.0
    for call in call_seconds:
        calls = max(least, math.ceil(turn / call) if call > 0 else least)
        total += rounds * call * (1 + calls)
    return total


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# -- MKL through sparse_dot_mkl ----------------------------------------------------------

def mkl_rt_candidates():
    """Where pip's ``mkl`` wheel may have put libmkl_rt.so.N: the files the installed
    ``mkl`` distribution lists (its data files land in <environment>/lib), then lib/ of
    this environment and of the user base (``pip install --user``). Newest version first."""
    import site

    paths = []
    try:
        from importlib import metadata

        dist = metadata.distribution("mkl")
        listed = [f for f in dist.files or () if os.path.basename(str(f)).startswith(
            "libmkl_rt.so")]
        paths += sorted((os.path.normpath(str(dist.locate_file(f))) for f in listed),
                        reverse=True)
    except Exception:   # no mkl distribution, or metadata without a file list
        pass
    for lib in (os.path.join(sys.prefix, "lib"), os.path.join(site.USER_BASE or "", "lib")):
        paths += sorted(glob.glob(os.path.join(lib, "libmkl_rt.so*")), reverse=True)
    return list(dict.fromkeys(paths))


def find_mkl_rt(candidates):
    """The first of ``candidates`` that is a file, or None."""
    return next((path for path in candidates if os.path.isfile(path)), None)


def import_sparse_dot_mkl(environ=None, candidates=None):
    """(sparse_dot_mkl, None), or (None, why not) when it is not installed or cannot load
    MKL.

    sparse_dot_mkl finds libmkl_rt through the linker's search path or $MKL_RT; pip's
    mkl wheel puts libmkl_rt.so.N in <environment>/lib, on neither. So, unless the user
    set $MKL_RT, it points $MKL_RT at the wheel's library (``mkl_rt_candidates``) for
    the import, when sparse_dot_mkl loads it, and then removes it again."""
    environ = os.environ if environ is None else environ
    if importlib.util.find_spec("sparse_dot_mkl") is None:
        return None, 'not installed (pip install "srigl_np[bench]")'
    pointed = False
    if "MKL_RT" not in environ:
        path = find_mkl_rt(mkl_rt_candidates() if candidates is None else candidates)
        if path is not None:
            environ["MKL_RT"], pointed = path, True
    environ.setdefault("KMP_BLOCKTIME", MKL_BLOCKTIME_MS)
    try:
        import sparse_dot_mkl
    except (ImportError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"sparse_dot_mkl cannot load MKL: {first}"
    finally:
        if pointed:
            del environ["MKL_RT"]
    return sparse_dot_mkl, None


_MKL = []


def sparse_dot_mkl():
    """``import_sparse_dot_mkl()``, tried once per process."""
    if not _MKL:
        _MKL.append(import_sparse_dot_mkl())
    return _MKL[0]


def mkl_version(mkl):
    """'MKL 2026.2' from MKL's own version string, or 'MKL' when it does not say."""
    try:
        text = mkl.mkl_get_version_string()
    except Exception:   # an old sparse_dot_mkl without it
        return "MKL"
    match = re.search(r"Version\s+(\d[\w.]*)", text or "")
    return f"MKL {match.group(1)}" if match else "MKL"


def baselines():
    """name -> description or why it is missing, for the header: torch and MKL."""
    torch = _torch()
    mkl, why = sparse_dot_mkl()
    return {"torch": (f"torch {torch.__version__}" if torch is not None else
                      'not installed (pip install "torch==2.13.0+cpu")'),
            "mkl": (f"{mkl_version(mkl)} via sparse_dot_mkl "
                    f"{getattr(mkl, '__version__', '?')}" if mkl is not None else why)}


def implementations(weight, layer, batch, threads, rng):
    """name -> (callable, note), or name -> {orientation: callable}, for one layer and
    input batch x (batch, n_in) float32; each callable returns x @ W.T (batch, n_out),
    or the active neurons' (batch, n_active) for structured and condensed."""
    import scipy.sparse

    x = rng.standard_normal((batch, weight.shape[1]), dtype=np.float32)
    x_t = np.ascontiguousarray(x.T)
    w_active = np.ascontiguousarray(weight[layer.active])
    csr = scipy.sparse.csr_array(weight)
    csr_t = scipy.sparse.csr_array(weight.T)
    impls = {
        "dense": (lambda: x @ weight.T, "NumPy BLAS"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T, "x @ Wt_csr": lambda: x @ csr_t},
        "condensed": (lambda: layer.forward(x, threads), condensed_note(layer, batch)),
    }
    torch = _torch()
    if torch is not None:
        tx, tw = torch.from_numpy(x), torch.from_numpy(weight)
        with warnings.catch_warnings():   # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            tw_csr = tw.to_sparse_csr()
        tx_t = torch.from_numpy(x_t)
        impls["torch-dense"] = (lambda: tx @ tw.T, f"torch {torch.__version__}")
        impls["torch-csr"] = (lambda: (tw_csr @ tx_t).T, "(W_csr @ x.T).T")
    mkl, _ = sparse_dot_mkl()
    if mkl is not None:
        product = mkl.dot_product_mkl
        impls["mkl-csr"] = {"(W_csr @ x.T).T": lambda: product(csr, x_t).T,
                            "x @ Wt_csr": lambda: product(x, csr_t)}
    return impls


def _time_all(impls, sampler, min_time, rounds=ROUNDS, min_repeats=None):
    """Records {implementation, median_s, repeats, iqr_over_median, note} for name ->
    (fn, note) or, for csr-like entries, name -> {orientation: fn} (the faster
    orientation is kept and named).

    ``sampler(fn, seconds, min_repeats)`` returns a list of times; every callable gets
    one turn per round (see the module docstring) of at least ``min_repeats`` calls
    (default ``turn_repeats(rounds)``: 5 over the rounds)."""
    least = turn_repeats(rounds) if min_repeats is None else min_repeats
    variants = {name: impl if isinstance(impl, dict) else {impl[1]: impl[0]}
                for name, impl in impls.items()}
    times = {(name, note): [] for name, fns in variants.items() for note in fns}
    for _ in range(rounds):
        for name, fns in variants.items():
            for note, fn in fns.items():
                times[name, note] += sampler(fn, min_time / rounds, least)
    records = []
    for name, fns in variants.items():
        medians = {note: float(np.median(times[name, note])) for note in fns}
        note = min(medians, key=medians.get)
        records.append({"implementation": name, "median_s": medians[note],
                        "repeats": len(times[name, note]),
                        "iqr_over_median": spread(times[name, note]),
                        "note": f"{note} (faster orientation)" if len(fns) > 1 else note})
    return records


def condensed_note(layer, batch):
    """'k=307, int16, lookup' : the fan-in, the index dtype and, at batch 1, the batch-1
    kernel the layer runs (``kernels.vector_kernel``: "lookup" or "gather-dot"); larger
    batches run the tiled kernel."""
    from .kernels import vector_kernel

    note = f"k={layer.k}, {layer.indices.dtype}"
    if batch == 1 and layer.weights is not None:
        note += f", {vector_kernel(layer.weights)}"
    return note


def run_case(weight, layer, batch, threads, min_time, rng, device="cpu", rounds=ROUNDS,
             min_repeats=None):
    """Time every implementation at one (layer, batch, threads); records without speedups.
    On "cuda" the GPU rows are timed with CUDA events and ``threads`` is not used.
    ``rounds``, ``min_repeats``: as for ``_time_all``."""
    if device != "cpu":
        return _time_all(gpu_implementations(weight, layer.to(device), batch, rng),
                         gpu_sample_seconds, min_time, rounds, min_repeats)
    from threadpoolctl import threadpool_limits

    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)
    mkl, _ = sparse_dot_mkl()
    if mkl is not None:   # loaded after threadpoolctl looked, so set it directly
        mkl.mkl_set_num_threads(threads)
    with threadpool_limits(limits=threads):
        return _time_all(implementations(weight, layer, batch, threads, rng),
                         sample_seconds, min_time, rounds, min_repeats)


# -- the GPU rows of ``--device cuda`` ------------------------------------------------

def gpu_sample_seconds(fn, min_time, min_repeats=5, max_repeats=10_000):
    """GPU times of fn() (a list; CUDA events around each call) over at least min_time
    s of GPU time and min_repeats calls, after one warm-up call."""
    from .backend import cupy

    cp = cupy()
    fn()
    cp.cuda.Stream.null.synchronize()
    start_event, stop_event = cp.cuda.Event(), cp.cuda.Event()
    times, spent = [], 0.0
    while len(times) < min_repeats or (spent < min_time and len(times) < max_repeats):
        start_event.record()
        fn()
        stop_event.record()
        stop_event.synchronize()
        seconds = cp.cuda.get_elapsed_time(start_event, stop_event) / 1e3
        times.append(seconds)
        spent += seconds
    return times


def gpu_implementations(weight, layer, batch, rng):
    """name -> (callable, note) for one layer on the GPU (``layer`` already moved there):
    cuBLAS dense, structured, cuSPARSE CSR (both orientations; the bench keeps the
    faster) and condensed (ours)."""
    from .backend import cupy

    cp = cupy()
    import cupyx.scipy.sparse

    x = cp.asarray(rng.standard_normal((batch, weight.shape[1]), dtype=np.float32))
    x_t = cp.ascontiguousarray(x.T)
    w = cp.asarray(weight)
    w_active = cp.asarray(np.ascontiguousarray(weight[layer.active]))
    csr = cupyx.scipy.sparse.csr_matrix(w)
    csr_t = cupyx.scipy.sparse.csr_matrix(cp.ascontiguousarray(w.T))
    return {
        "dense": (lambda: x @ w.T, f"cuBLAS (CuPy {cp.__version__})"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T,
                "(W_csc @ x.T).T": lambda: (csr_t.T @ x_t).T},
        "condensed": (lambda: layer.forward(x),
                      f"k={layer.k}, {layer.indices.dtype}"),
    }


def gpu_name():
    """The current GPU's name, for the bench's machine line."""
    from .backend import cupy

    cp = cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


# -- comparing within a row ---------------------------------------------------------------

def best_of(medians, names):
    """(name, seconds) of the fastest of ``names`` in ``medians`` (implementation ->
    median seconds), or (None, None) when none of them ran."""
    present = [name for name in names if name in medians]
    if not present:
        return None, None
    name = min(present, key=medians.get)
    return name, medians[name]


def compare(case):
    """Adds the row's comparisons to each of its records (in place): speedup_vs_dense,
    speedup_vs_csr, the names best_alternative / best_dense / best_csr (the fastest of
    ALTERNATIVES / DENSE_KINDS / CSR_KINDS that ran; None if none did) and
    speedup_vs_best_alternative / _best_dense / _best_csr: that one's median over the
    record's (> 1: the record's implementation is faster)."""
    medians = {r["implementation"]: r["median_s"] for r in case}
    best = {"alternative": best_of(medians, ALTERNATIVES),
            "dense": best_of(medians, DENSE_KINDS), "csr": best_of(medians, CSR_KINDS)}
    for record in case:
        seconds = record["median_s"]
        record["speedup_vs_dense"] = medians["dense"] / seconds
        record["speedup_vs_csr"] = medians["csr"] / seconds
        for kind, (name, best_s) in best.items():
            record[f"best_{kind}"] = name
            record[f"speedup_vs_best_{kind}"] = None if name is None else best_s / seconds
    return case


def condensed_traffic(nnz, index_bytes, n_in, batch):
    """(bytes read, flops) of one condensed product: the nnz values (4 bytes each) and
    indices (``index_bytes`` each, 2 for int16, 4 for int32), and the input x (4 * n_in
    * batch bytes); 2 * nnz * batch flops (a multiply and an add per weight and input).
    The output's writes are not counted."""
    return 4 * nnz + index_bytes * nnz + 4 * n_in * batch, 2 * nnz * batch


def dense_traffic(n_in, n_out, batch):
    """(bytes read, flops) of one dense product x (batch, n_in) @ W.T (n_in, n_out)."""
    return 4 * n_in * n_out + 4 * n_in * batch, 2 * n_in * n_out * batch


def achieved(nbytes, flops, seconds):
    """(GB/s, GFLOP/s) of moving ``nbytes`` and doing ``flops`` in ``seconds``."""
    return nbytes / seconds / 1e9, flops / seconds / 1e9


def add_limits(case, layer, limits, cpu_path=None):
    """Adds to each record (in place) the machine's figures at the row's thread count
    (machine_read_gb_s, machine_sgemm_gflop_s, llc_bytes: None when not measured), the
    kernels' cpu_path and, for the
    condensed and dense records, bytes_read, flops, achieved_gb_s, achieved_gflop_s and
    their fractions of the machine's figures (read_fraction, sgemm_fraction)."""
    first = case[0]
    (n_in, n_out), batch = first["shape"], first["batch"]
    traffic = {OURS: condensed_traffic(layer.nnz, np.dtype(layer.indices.dtype).itemsize,
                                       n_in, batch),
               "dense": dense_traffic(n_in, n_out, batch)}
    limits = limits or {}
    for record in case:
        record["cpu_path"] = cpu_path
        record["machine_read_gb_s"] = limits.get("read_gb_s")
        record["machine_sgemm_gflop_s"] = limits.get("sgemm_gflop_s")
        record["llc_bytes"] = limits.get("llc_bytes")
        if record["implementation"] not in traffic:
            continue
        nbytes, flops = traffic[record["implementation"]]
        gb_s, gflop_s = achieved(nbytes, flops, record["median_s"])
        record.update(bytes_read=nbytes, flops=flops, achieved_gb_s=gb_s,
                      achieved_gflop_s=gflop_s,
                      read_fraction=(gb_s / limits["read_gb_s"]
                                     if limits.get("read_gb_s") else None),
                      sgemm_fraction=(gflop_s / limits["sgemm_gflop_s"]
                                      if limits.get("sgemm_gflop_s") else None))
    return case


def add_load(case, meter):
    """Adds the row's load figures to each record (in place): other_cpus (None where
    not measured), row_spread / row_spread_of (the least stable implementation) and
    load_flags (a list; empty when nothing was noticed)."""
    spreads = {r["implementation"]: r["iqr_over_median"] for r in case
               if r.get("iqr_over_median") is not None}
    worst = max(spreads, key=spreads.get) if spreads else None
    flags = load_flags(meter.other_cpus, meter.resolution,
                       spreads.get(worst), worst)
    for record in case:
        record.update(other_cpus=meter.other_cpus, row_spread=spreads.get(worst),
                      row_spread_of=worst, load_flags=flags)
    return case


def run(shapes, sparsities, batch_sizes, thread_counts, *, ablated_frac=0.0, min_time=0.5,
        seed=0, device="cpu", log=print, rounds=ROUNDS, min_repeats=None, limits=None,
        meter=None):
    """All records: one per implementation/shape/sparsity/batch/threads.

    ``rounds``, ``min_repeats``: as for ``_time_all``; ``limits``: threads -> the
    machine's figures (``measure_limits``), put beside each row's achieved ones;
    ``meter``: a LoadMeter factory (injectable for tests)."""
    from .condensed import CondensedLinear

    meter = meter or LoadMeter
    path = kernel_cpu_path() if device == "cpu" else None
    rng = np.random.default_rng(seed)
    records = []
    for n_in, n_out in shapes:
        for sparsity in sparsities:
            weight = constant_fan_in_weight(n_in, n_out, sparsity, ablated_frac, rng)
            layer = CondensedLinear.from_dense(weight)
            built = built_sparsity(layer, weight.size)
            for batch in batch_sizes:
                for threads in thread_counts:
                    load = meter()
                    with load:
                        case = run_case(weight, layer, batch, threads, min_time, rng,
                                        device, rounds, min_repeats)
                    for record in case:
                        record.update(
                            shape=[n_in, n_out], sparsity=sparsity,
                            built_sparsity=built, batch=batch,
                            threads=threads, device=device, ablated_frac=ablated_frac)
                    compare(case)
                    add_limits(case, layer, (limits or {}).get(threads), path)
                    add_load(case, load)
                    records.extend(case)
                    log(format_case(case))
    return records


def built_sparsity(layer, size):
    """The sparsity the layer really has, 1 - nnz/size: small layers cannot always hold
    the requested one (k is at least 1 and a whole number per neuron)."""
    return 1.0 - layer.nnz / size


def sparsity_label(record):
    """'sparsity 90%', or the built sparsity with the requested one beside it when the
    layer could not hold the request (tiny shapes, extreme sparsities)."""
    requested = record["sparsity"]
    built = record.get("built_sparsity", requested)
    if abs(built - requested) <= 1e-9:
        return f"sparsity {requested:.0%}"
    return f"sparsity {built:.2%} (requested {requested:.2%})"


def _ratio(value, trusted=True):
    if value is None:
        return "-"
    return f"{value:.2f}x" + ("" if trusted else "?")


def comparison_line(record):
    """'condensed vs best alternative mkl-csr (0.1140 ms): 1.42x; ...' for the condensed
    record of a row; ratios of a flagged row end in '?'."""
    trusted = not record.get("load_flags")
    parts = [f"condensed vs best alternative {record['best_alternative']}: "
             f"{_ratio(record['speedup_vs_best_alternative'], trusted)}"]
    for kind in ("dense", "csr"):
        if record.get(f"best_{kind}") is not None:
            parts.append(f"vs best {kind} ({record[f'best_{kind}']}): "
                         f"{_ratio(record[f'speedup_vs_best_{kind}'], trusted)}")
    return "; ".join(parts)


def limit_line(record):
    """The condensed record's achieved figure against the machine's, or None: GB/s of
    its reads below GFLOPS_FROM_BATCH, GFLOP/s from it on."""
    if record.get("achieved_gb_s") is None:
        return None
    threads = record["threads"]
    where = f"{threads} thread{'s' if threads != 1 else ''}" if record["device"] == "cpu" \
        else record["device"]
    if record["batch"] < GFLOPS_FROM_BATCH:
        text = (f"limit: condensed reads {record['bytes_read'] / 1e6:.3g} MB per call "
                f"(values+indices+x) at {record['achieved_gb_s']:.1f} GB/s")
        if record.get("machine_read_gb_s"):
            text += (f" = {record['read_fraction']:.0%} of this machine's "
                     f"{record['machine_read_gb_s']:.1f} GB/s read ({where})")
        if record.get("llc_bytes") and record["bytes_read"] <= record["llc_bytes"]:
            # Repeated calls find these bytes in cache, so memory is not the bound.
            text += (f"; they fit in the {record['llc_bytes'] / 2**20:.0f} MiB last-level "
                     "cache, which can beat memory")
        return text
    text = (f"limit: condensed runs {record['achieved_gflop_s']:.1f} GFLOP/s "
            f"(2*nnz*batch per call)")
    if record.get("machine_sgemm_gflop_s"):
        text += (f" = {record['sgemm_fraction']:.0%} of dense sgemm's "
                 f"{record['machine_sgemm_gflop_s']:.1f} GFLOP/s ({where})")
    return text


def format_case(case):
    first = case[0]
    n_in, n_out = first["shape"]
    where = (f"threads {first['threads']}" if first["device"] == "cpu"
             else f"device {first['device']}")
    lines = [f"\n{n_in}->{n_out}  {sparsity_label(first)}  batch {first['batch']}  "
             f"{where}",
             f"  {'implementation':<15}{'median ms':>11}{'vs dense':>10}{'vs csr':>9}"
             f"{'IQR':>6}  note"]
    for r in case:
        iqr = r.get("iqr_over_median")
        lines.append(f"  {r['implementation']:<15}{r['median_s'] * 1e3:>11.4f}"
                     f"{r['speedup_vs_dense']:>9.2f}x{r['speedup_vs_csr']:>8.2f}x"
                     f"{'-' if iqr is None else f'{iqr:.0%}':>6}  {r['note']}")
    ours = next((r for r in case if r["implementation"] == OURS), None)
    if ours is not None and "best_alternative" in ours:
        lines.append("  " + comparison_line(ours))
        limit = limit_line(ours)
        if limit:
            lines.append("  " + limit)
    if first.get("load_flags"):
        lines.append(f"  ! {'; '.join(first['load_flags'])}: this row's ratios are "
                     "distorted; rerun on an idle machine")
    return "\n".join(lines)


def summary_lines(records):
    """One line per row: condensed's time, the best alternative, the ratios, the limit
    figure and any load flag."""
    rows = [r for r in records if r["implementation"] == OURS]
    if not rows:
        return []
    lines = [f"  {'layer':<12}{'batch':>6}{'threads':>8}{'condensed ms':>14}  "
             f"{'best alternative':<24}{'ratio':>8}{'vs best dense':>15}{'vs best CSR':>13}  "
             f"{'of limit':<32}flags"]
    for r in rows:
        n_in, n_out = r["shape"]
        trusted = not r.get("load_flags")
        best = "-"
        if r.get("best_alternative"):
            best_ms = r["median_s"] * r["speedup_vs_best_alternative"] * 1e3
            best = f"{r['best_alternative']} {best_ms:.4f}"
        if r.get("read_fraction") is not None and r["batch"] < GFLOPS_FROM_BATCH:
            limit = f"{r['read_fraction']:.0%} of read GB/s"
            if r.get("llc_bytes") and r["bytes_read"] <= r["llc_bytes"]:
                limit += " (in cache)"
        elif r.get("sgemm_fraction") is not None and r["batch"] >= GFLOPS_FROM_BATCH:
            limit = f"{r['sgemm_fraction']:.0%} of sgemm GFLOP/s"
        else:
            limit = "-"
        threads = r["threads"] if r["device"] == "cpu" else r["device"]
        lines.append(f"  {f'{n_in}->{n_out}':<12}{r['batch']:>6}{threads:>8}"
                     f"{r['median_s'] * 1e3:>14.4f}  {best:<24}"
                     f"{_ratio(r.get('speedup_vs_best_alternative'), trusted):>8}"
                     f"{_ratio(r.get('speedup_vs_best_dense'), trusted):>15}"
                     f"{_ratio(r.get('speedup_vs_best_csr'), trusted):>13}  {limit:<32}"
                     + ", ".join(r.get("load_flags") or []))
    return lines


def target_lines(records):
    """The project's development targets (TARGETS, GPU_TARGETS) next to the measured
    ratios: CPU rows of DEFAULT_SHAPES at 2 threads and 90% sparsity, condensed vs NumPy
    dense and vs the best CSR."""
    lines = []
    for r in records:
        if r["implementation"] == "condensed" and r["device"] != "cpu" and (
                abs(r["sparsity"] - 0.9) < 1e-9 and r["batch"] in GPU_TARGETS):
            need_dense, need_csr = GPU_TARGETS[r["batch"]]
            met = r["speedup_vs_dense"] >= need_dense and (
                need_csr is None or r["speedup_vs_csr"] >= need_csr)
            n_in, n_out = r["shape"]
            lines.append(f"  GPU {n_in}->{n_out} batch {r['batch']}: vs dense "
                         f"{r['speedup_vs_dense']:.2f}x (target >= {need_dense}x), vs csr "
                         f"{r['speedup_vs_csr']:.2f}x" + (f" (target >= {need_csr}x)"
                                                          if need_csr else "")
                         + f"  {'met' if met else 'NOT met'}")
            continue
        if (r["implementation"] != "condensed" or r["device"] != "cpu" or r["threads"] != 2
                or abs(r["sparsity"] - 0.9) > 1e-9 or r["batch"] not in TARGETS
                or tuple(r["shape"]) not in DEFAULT_SHAPES):
            continue
        n_in, n_out = r["shape"]
        need_dense, need_csr = TARGETS[r["batch"]]
        vs_csr = r.get("speedup_vs_best_csr") or r["speedup_vs_csr"]
        met = r["speedup_vs_dense"] >= need_dense and vs_csr >= need_csr
        flags = f"  [{'; '.join(r['load_flags'])}]" if r.get("load_flags") else ""
        lines.append(f"  {n_in}->{n_out} batch {r['batch']}: vs dense {r['speedup_vs_dense']:.2f}x"
                     f" (target >= {need_dense}x), vs best csr ({r.get('best_csr', 'csr')}) "
                     f"{vs_csr:.2f}x (target >= {need_csr}x)  {'met' if met else 'NOT met'}"
                     + flags)
    return lines


# -- the plot -----------------------------------------------------------------------------

def _case_label(batch, threads, device):
    if device != "cpu":
        return f"batch {batch}\n{device}"
    return f"batch {batch}\n{threads} thread{'s' if threads != 1 else ''}"


def plot_figure(records, machine=None):
    """The figure of ``plot``: one panel per layer shape; in each, one group of bars per
    (sparsity, batch size, threads) and one bar per implementation giving its speedup
    over NumPy dense (log scale), a dashed line at 1x (dense itself), rows flagged busy
    or unstable marked under their group, and a title naming the CPU, its vector ISA,
    the threads, dtype and sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = machine or {}
    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in records))
    names = [n for n in dict.fromkeys(r["implementation"] for r in records) if n != "dense"]
    sparsities = sorted({r["sparsity"] for r in records})
    fig, axes = plt.subplots(1, len(shapes), figsize=(max(5.0, 4.2 * len(shapes)), 4.6),
                             sharey=True, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, shape in zip(axes[0], shapes):
        rows = [r for r in records if tuple(r["shape"]) == shape]
        cases = sorted({(r["sparsity"], r["batch"], r["threads"]) for r in rows})
        width = 0.8 / max(1, len(names))
        for j, name in enumerate(names):
            speedups = [next((r["speedup_vs_dense"] for r in rows
                              if r["implementation"] == name
                              and (r["sparsity"], r["batch"], r["threads"]) == c), np.nan)
                        for c in cases]
            ax.bar(np.arange(len(cases)) + j * width, speedups, width,
                   label=name + (" (ours)" if name == OURS else ""),
                   color=colors[j % len(colors)], edgecolor="black" if name == OURS else None)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1,
                   label="NumPy dense = 1x")
        labels = []
        for c in cases:
            row = next(r for r in rows if (r["sparsity"], r["batch"], r["threads"]) == c)
            label = _case_label(c[1], c[2], row["device"])
            if len(sparsities) > 1:
                label += f"\nsparsity {c[0]:.0%}"
            if row.get("load_flags"):
                label += "".join(f"\n({f.split(':')[0]})" for f in row["load_flags"])
            labels.append(label)
        ax.set_xticks(np.arange(len(cases)) + width * (len(names) - 1) / 2)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("batch size, threads")
        ax.set_title(f"layer {shape[0]} -> {shape[1]} (inputs -> outputs)", fontsize=10)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0][0].set_ylabel("speedup over NumPy dense (x, log scale)\nhigher is faster")
    handles, legend_labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(len(handles), 5),
               fontsize=8, frameon=False)
    threads = sorted({r["threads"] for r in records if r["device"] == "cpu"})
    where = (f"threads {', '.join(map(str, threads))}" if threads
             else f"GPU {machine.get('gpu', records[0]['device'])}")
    sparsity = ", ".join(sparsity_label({"sparsity": s}).split()[-1] for s in sparsities)
    cpu = machine.get("cpu", "this machine")
    isa = f", {machine['vector_isa']}" if machine.get("vector_isa") else ""
    fig.suptitle(f"Condensed inference vs baselines: {cpu}{isa}\n{where}; float32; "
                 f"sparsity {sparsity}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def plot(records, path, machine=None):
    """``plot_figure`` written atomically to ``path`` (its suffix gives the format; PNG by
    default)."""
    import matplotlib.pyplot as plt

    from .fileio import atomic_write

    fig = plot_figure(records, machine)
    suffix = os.path.splitext(path)[1][1:] or "png"
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format=suffix))
    plt.close(fig)


# -- the command line ---------------------------------------------------------------------

def _shape(text):
    try:
        n_in, n_out = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be N_INxN_OUT, e.g. 768x3072, got {text!r}")
    if n_in < 1 or n_out < 1:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return n_in, n_out


def _memory_bytes():
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def check_sizes(shapes, batch_sizes, memory=None):
    """None, or one line saying which --shape / --batch-sizes could not be allocated:
    a dense weight or input batch over MAX_ELEMENTS elements, or a layer the bench would
    hold in more bytes than this machine has (BYTES_PER_WEIGHT_ELEMENT per element)."""
    memory = _memory_bytes() if memory is None else memory
    for n_in, n_out in shapes:
        size = n_in * n_out
        if size > MAX_ELEMENTS:
            return (f"--shape {n_in}x{n_out}: the dense weight would have {size} elements, "
                    f"over the bench's limit of {MAX_ELEMENTS}")
        need = size * BYTES_PER_WEIGHT_ELEMENT
        if memory and need > memory:
            return (f"--shape {n_in}x{n_out}: the bench would need about {need / 2**30:.1f} "
                    f"GiB for this layer, more than this machine's {memory / 2**30:.1f} GiB")
    widest = max(max(shape) for shape in shapes)
    for batch in batch_sizes:
        size = batch * widest
        if size > MAX_ELEMENTS:
            return (f"--batch-sizes {batch}: a batch of {batch} x {widest} inputs would have "
                    f"{size} elements, over the bench's limit of {MAX_ELEMENTS}")
        need = size * 4 * 4   # x, x.T and the outputs, float32
        if memory and need > memory:
            return (f"--batch-sizes {batch}: the bench would need about {need / 2**30:.1f} "
                    f"GiB for the inputs, more than this machine's {memory / 2**30:.1f} GiB")
    return None


def check_output_path(flag, path):
    """None, or one line saying why ``path`` cannot be written: its directory is missing
    or not a directory, or the path is a directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory; give a file name"
    if not os.path.exists(directory):
        return f"{flag} {path}: directory {directory} does not exist"
    if not os.path.isdir(directory):
        return f"{flag} {path}: {directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"{flag} {path}: directory {directory} is not writable"
    return None


def parse_args(argv=None):
    from .kernels import max_threads

    parser = argparse.ArgumentParser(prog="python -m srigl_np.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_shape, action="append", metavar="N_INxN_OUT",
                        help="layer shape (repeatable); default: 768x3072, 3072x768, 4096x4096")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts; default: 1 and all (OpenMP's default)")
    parser.add_argument("--ablated-frac", type=float, default=0.0,
                        help="fraction of neurons ablated (removed by 'structured' and "
                             "'condensed'); default 0")
    parser.add_argument("--min-time", type=float, default=None,
                        help=f"seconds of timing per row (default 0.5, --quick "
                             f"{QUICK_MIN_TIME})")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short run: under {QUICK_SECONDS} s with the default shapes "
                             f"on 2 idle cores ({QUICK_ROUNDS} rounds, short machine probes)")
    parser.add_argument("--device", default="cpu",
                        help="'cpu', or 'cuda[:N]' for the GPU rows (needs CuPy): cuBLAS "
                             "dense, cuSPARSE CSR, structured and the CUDA condensed kernel, "
                             "timed with CUDA events")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--plot", metavar="PATH", help="bar chart of speedups (matplotlib)")
    parser.add_argument("--targets", action="store_true",
                        help="also print srigl_np's own development targets and whether "
                             "this run meets them")
    parser.add_argument("--cpu-path", default=None,
                        help="run the condensed kernels on this CPU path (avx512, avx2, "
                             "generic; default: the best this CPU supports)")
    args = parser.parse_args(argv)
    if args.cpu_path is not None:
        from .kernels import cpu_paths, set_cpu_path

        try:
            set_cpu_path(args.cpu_path)
        except ValueError as exc:
            parser.error(f"--cpu-path: {exc} (this CPU: {', '.join(cpu_paths())})")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install matplotlib (or srigl_np[plot])")
    for s in args.sparsities:
        if not 0.0 <= s < 1.0:
            parser.error(f"sparsities must be in [0, 1), got {s}")
    if any(b < 1 for b in args.batch_sizes):
        parser.error(f"batch sizes must be >= 1, got {args.batch_sizes}")
    if not 0.0 <= args.ablated_frac < 1.0:
        parser.error(f"--ablated-frac must be in [0, 1), got {args.ablated_frac}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.min_time is not None and not 0.0 <= args.min_time < float("inf"):
        parser.error(f"--min-time must be a finite number of seconds >= 0, got {args.min_time}")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            problem = check_output_path(flag, path)
            if problem:
                parser.error(problem)
    from .backend import parse_device

    try:
        kind, index = parse_device(args.device)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    args.device = "cpu" if kind == "cpu" else f"cuda:{index}"
    if args.device != "cpu":
        args.threads = [0]   # not used on the GPU; one row per case
    if args.threads is None:
        args.threads = sorted({1, max_threads()})
    check_thread_counts(parser, args.threads, minimum=1 if args.device == "cpu" else 0)
    if args.min_time is None:
        args.min_time = QUICK_MIN_TIME if args.quick else 0.5
    args.rounds = QUICK_ROUNDS if args.quick else ROUNDS
    args.min_repeats = QUICK_TURN_REPEATS if args.quick else None
    args.shape = args.shape or list(DEFAULT_SHAPES)
    problem = check_sizes(args.shape, args.batch_sizes)
    if problem:
        parser.error(problem)
    return args


def check_thread_counts(parser, counts, minimum=1):
    """``parser.error`` (one line, exit 2) unless every thread count is >= ``minimum`` and
    within ``validation.check_threads``'s bound."""
    from .validation import check_threads

    if any(t < minimum for t in counts):
        parser.error(f"thread counts must be >= {minimum}, got {counts}")
    for threads in counts:
        try:
            check_threads(threads)
        except ValueError as exc:
            parser.error(f"--{exc}")


def limits_line(limits):
    """'this machine now: 1 thread: read 20.1 GB/s, sgemm 95.0 GFLOP/s; ...'."""
    parts = []
    for threads, figures in limits.items():
        flags = f" [{'; '.join(figures['load_flags'])}]" if figures["load_flags"] else ""
        parts.append(f"{threads} thread{'s' if threads != 1 else ''}: read "
                     f"{figures['read_gb_s']:.1f} GB/s, sgemm "
                     f"{figures['sgemm_gflop_s']:.1f} GFLOP/s{flags}")
    first = next(iter(limits.values()))
    return (f"this machine now (read: sum of a {first['read_bytes'] / 2**20:.0f} MiB float32 "
            f"array; sgemm: float32 {first['sgemm_n']}^3): " + "; ".join(parts))


def main(argv=None):
    started = time.perf_counter()
    args = parse_args(argv)
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores; vectors: {info['vector_isa']}; "
          f"condensed kernel path: {info['cpu_path']}")
    print(f"BLAS: {info['blas']}; kernels built with OpenMP: {info['openmp']} "
          f"(max threads {info['max_threads']})")
    if args.device != "cpu":
        from .backend import DeviceError, select

        try:
            select(args.device)
            info["gpu"] = gpu_name()
        except DeviceError as exc:
            print(f"python -m srigl_np.bench: error: {exc}", file=sys.stderr)
            return 1
        print(f"GPU: {info['gpu']} ({args.device}); times from CUDA events")
    limits = None
    if args.device == "cpu":
        info["baselines"] = baselines()
        # How long idle BLAS/MKL threads spin (see the settings at the top): a run
        # whose user set these differently is not comparable.
        info["idle_spin"] = {name: os.environ.get(name)
                             for name in ("OPENBLAS_THREAD_TIMEOUT", "KMP_BLOCKTIME")}
        print(f"baselines: NumPy dense, structured, scipy CSR; torch: "
              f"{info['baselines']['torch']}; MKL CSR: {info['baselines']['mkl']}")
        limits = measure_limits(args.threads, quick=args.quick)
        info["limits"] = {str(t): figures for t, figures in limits.items()}
        print(limits_line(limits))
    print(f"float32, {'threads ' + str(args.threads) if args.device == 'cpu' else args.device}, "
          f"sparsities {args.sparsities}, batches {args.batch_sizes}, "
          f"ablated fraction {args.ablated_frac}")
    records = run(args.shape, args.sparsities, args.batch_sizes, args.threads,
                  ablated_frac=args.ablated_frac, min_time=args.min_time, seed=args.seed,
                  device=args.device, rounds=args.rounds, min_repeats=args.min_repeats,
                  limits=limits)
    print("\nSummary: condensed against the fastest alternative in each row "
          "(ratio > 1: condensed is faster; '?': a busy or unstable row)")
    print("\n".join(summary_lines(records)))
    flagged = sum(1 for r in records if r["implementation"] == OURS and r["load_flags"])
    if flagged:
        print(f"{flagged} row(s) ran with other load or unstable timings: their ratios are "
              "distorted; rerun on an idle machine before quoting them")
    print("\n" + PAPER_FIGURES)
    if args.targets:
        targets = target_lines(records)
        print("srigl_np's development targets (90% sparsity; CPU rows at 2 threads):"
              + (f" [{args.min_time} s per row: short timings on a shared machine are "
                 "noisy; the default run is the one to quote]" if args.min_time < 0.5 else ""))
        print("\n".join(targets) if targets else "  (no row of this run is a target case)")
    wall = time.perf_counter() - started
    print(f"\nbench took {wall:.1f} s")
    if args.json:
        from .fileio import write_json

        write_json(args.json, {"machine": info, "records": records, "wall_s": wall,
                               "quick": args.quick, "rounds": args.rounds,
                               "min_time": args.min_time})
    if args.plot:
        plot(records, args.plot, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
