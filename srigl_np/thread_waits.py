"""How long idle OpenMP and OpenBLAS threads spin before sleeping.

Every process that imports srigl_np (``set_library_defaults``, run by the package's
``__init__``), unless the user set it: OpenMP threads sleep as soon as a parallel
region ends (``OMP_WAIT_POLICY=PASSIVE``). libgomp's default spins ~300,000 times
first, and on a machine where another process keeps one of the cores busy the
spinning thread and the late one trade whole scheduler time slices: a 3072 -> 768
condensed layer (float32, 90%) on a 2-vCPU Xeon with one CPU-bound neighbour took
9.4-15 ms per batch-1 call at 2 threads against 0.037 ms at 1, and 8.0-12 ms
against 2.0-4.2 ms at batch 256; asleep, 0.044-0.048 ms and 2.2-2.5 ms (a short
spin, ``GOMP_SPINCOUNT=1000``: 0.086-0.095 ms at batch 1; measured in one process
per setting, docs/bench/busy_neighbour.md). Calls too small to pay for waking the
team run on one thread (``thread_policy.team_size``).

Training (``set_training_defaults``) also lets OpenBLAS threads sleep after 2**18
cycles (~0.1 ms) instead of OpenBLAS's default 2**28 (~0.1 s): training alternates our
OpenMP kernels (im2col/col2im) with BLAS GEMMs in every layer, and a pool's threads
spinning after their call returns hold the cores the other pool needs next (an im2col
or col2im that followed a GEMM ran ~1.8x slower on 2 cores). ~0.1 ms is short enough to
free the cores for a conv kernel, long enough to stay awake between an MLP's
back-to-back GEMMs: with ``OPENBLAS_THREAD_TIMEOUT`` set by hand, ``python
benchmarks/bench_train_epoch.py --threads 2 --cnn-samples 2560`` on 2 cores (3
alternating runs each) gave: 18, CNN 14% faster than the default, MLP unchanged; 4 (no
spinning), MLP 12% slower.

Each library reads its variable once, when it loads (libgomp with our ``_kernels``, or
with torch, which shares the same ``libgomp.so.1`` when loaded first; OpenBLAS with
NumPy), so these run before either: a process that loaded libgomp before importing
srigl_np keeps the wait policy it had.
"""

import os

LIBRARY_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
TRAINING_DEFAULTS = {**LIBRARY_DEFAULTS, "OPENBLAS_THREAD_TIMEOUT": "18"}


def set_library_defaults(environ=os.environ):
    """Set each of LIBRARY_DEFAULTS in ``environ`` that the user has not set."""
    for name, value in LIBRARY_DEFAULTS.items():
        environ.setdefault(name, value)


def set_training_defaults(environ=os.environ):
    """Set each of TRAINING_DEFAULTS in ``environ`` that the user has not set."""
    for name, value in TRAINING_DEFAULTS.items():
        environ.setdefault(name, value)
