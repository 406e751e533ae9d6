"""How long idle OpenMP and OpenBLAS threads spin before sleeping, for training.

Training alternates our OpenMP kernels (im2col/col2im) with BLAS GEMMs in every
layer. A pool's threads keep spinning after their call returns, on the cores the
other pool needs next: OpenBLAS's default (2**28 cycles, ~0.1 s) slowed an im2col
or col2im that followed a GEMM by ~1.8x on 2 cores. ``set_training_defaults``
therefore, unless the user set them, lets OpenMP threads sleep at once
(``OMP_WAIT_POLICY=PASSIVE``) and OpenBLAS threads after 2**18 cycles (~0.1 ms):
short enough to free the cores for a conv kernel, long enough to stay awake
between an MLP's back-to-back GEMMs. Measured on 2 cores, CNN epoch 14% faster,
MLP epoch unchanged; 2**4 (no spinning) made the MLP 12% slower.

Each library reads its variable once, when it loads (libgomp with our
``_kernels``, OpenBLAS with NumPy), so call this before importing NumPy.
"""

import os

TRAINING_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "OPENBLAS_THREAD_TIMEOUT": "18"}


def set_training_defaults(environ=os.environ):
    """Set each of TRAINING_DEFAULTS in ``environ`` that the user has not set."""
    for name, value in TRAINING_DEFAULTS.items():
        environ.setdefault(name, value)
