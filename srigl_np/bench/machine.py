"""This machine: its CPU, vector ISA, BLAS and kernel build, and its own limits.

``machine_info`` names what every report states; ``measure_limits`` measures what the
condensed kernel is held against at each thread count: read bandwidth (the sum of a
float32 array far larger than the last-level cache) and dense BLAS throughput (a square
float32 sgemm).
"""

import glob
import os
import platform

import numpy as np

from .load import LoadMeter, load_flags
from .timing import sample_seconds

READ_PROBE_BYTES = 256 * 2**20   # at least 4x the last-level cache, see probe_bytes
SGEMM_N, QUICK_SGEMM_N = 2048, 1024
PROBE_REPEATS, QUICK_PROBE_REPEATS = 5, 3


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
    from .. import kernels

    path = getattr(kernels, "cpu_path", None)
    if callable(path):
        path = path()
    return "not reported" if path is None else str(path)


GDS_PATH = "/sys/devices/system/cpu/vulnerabilities/gather_data_sampling"


def gather_data_sampling(path=GDS_PATH):
    """The kernel's line on Gather Data Sampling ("Downfall"), e.g. "Mitigation:
    Microcode" (gathers microcoded, slow on Skylake to Tiger Lake) or "Not affected",
    or "not reported" where the file is missing (other OS, older kernel)."""
    try:
        with open(path) as f:
            return f.read().strip() or "not reported"
    except OSError:
        return "not reported"


def batch1_kernel(weights):
    """The batch-1 kernel a condensed layer with ``weights`` runs: the kernels' CPU path
    and the kernel it picks there (``kernels.vector_kernel``), e.g. "avx512 lookup"."""
    from .. import kernels

    return f"{kernel_cpu_path()} {kernels.vector_kernel(weights)}"


def machine_info():
    """CPU model, core count, vector ISA, the kernels' CPU path, the kernel's Gather Data
    Sampling line, BLAS library and kernel build, for every report."""
    from threadpoolctl import threadpool_info

    from ..kernels import max_threads, openmp_enabled

    model, flags = _cpuinfo()
    blas = [f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')})"
            for pool in threadpool_info() if pool.get("user_api") == "blas"]
    return {"cpu": model or platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "vector_isa": vector_isa(flags),
            "cpu_path": kernel_cpu_path(), "gather_data_sampling": gather_data_sampling(),
            "blas": ", ".join(blas) or "unknown",
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


def memory_bytes():
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


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
    nbytes = probe_bytes(llc, memory_bytes())
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
