"""How long idle OpenMP and OpenBLAS threads spin before sleeping, for training.

Training alternates our OpenMP kernels (im2col/col2im) with BLAS GEMMs in every
layer. A pool's threads keep spinning after their call returns, on the cores the
other pool needs next: with OpenBLAS's default (2**28 cycles, ~0.1 s) an im2col or
col2im that followed a GEMM ran ~1.8x slower on 2 cores. ``set_training_defaults``
therefore, unless the user set them, lets OpenMP threads sleep at once
(``OMP_WAIT_POLICY=PASSIVE``) and OpenBLAS threads after 2**18 cycles (~0.1 ms):
short enough to free the cores for a conv kernel, long enough to stay awake
between an MLP's back-to-back GEMMs. With ``OPENBLAS_THREAD_TIMEOUT`` set by hand,
``python benchmarks/bench_train_epoch.py --threads 2 --cnn-samples 2560`` on 2 cores
(3 alternating runs each) gave: 18, CNN 14% faster than the default, MLP unchanged;
4 (no spinning), MLP 12% slower.

Each library reads its variable once, when it loads (libgomp with our
``_kernels``, OpenBLAS with NumPy), so call this before importing NumPy.
"""

import os

TRAINING_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "18"}


def set_training_defaults(environ=os.environ):
    """Set each of TRAINING_DEFAULTS in ``environ`` that the user has not set."""
    for name, value in TRAINING_DEFAULTS.items():
        environ.setdefault(name, value)
