"""srigl_np: Structured RigL (SRigL) dynamic sparse training in NumPy + Cython.

The folders are the architecture, from the ground up (the README's tour has a line per
module; tests/test_imports.py pins which folder may import which):
    ground        backend (devices), validation (argument checks), fileio (atomic
                  writes), cli (the commands' kit), data (datasets), kernels (each
                  kernel defined once, with its Cython and CUDA overrides: _kernels,
                  cuda), dst/trail.py (the audit-record schema, a leaf)
    nn/           layers, normalization, losses, optim, models
    dst/          the algorithm as pure functions (masks, steps, updates, invariants,
                  the authors' rules), and sparsity.py, DynamicSparsity, its stateful
                  wrapper over nn
    formats/      files: npz (the one .npz reader), checkpoint, scipy_npz, the PyTorch
                  reader (torch_*), importing, sniff
    inference/    condensed layers, CondensedModel and its file, the condense pass
    testing/      the conformance kit (strategies, boundary, reference, assertions, check_update)
    bench/        the benchmark package behind python -m srigl_np.bench
    commands      train (+ train_config), audit (+ model_audit), condense, explain (+ explain_text),
                  experiments/ (grids of runs: grid, runs, runner, executors, report,
                  command), erk_table: ``python -m srigl_np.<command>``
Importing the package imports none of these (only thread_waits, to put OpenMP's idle threads
to sleep); CuPy is imported only when a GPU is used.
"""

__version__ = "0.1.0"

# OpenMP's idle threads sleep unless the user said otherwise (see thread_waits): set
# before any module of the package loads libgomp.
from . import thread_waits as _thread_waits  # noqa: E402

_thread_waits.set_library_defaults()


def openmp_enabled():
    """True when the compiled kernels were built with OpenMP."""
    from .kernels import openmp_enabled as _enabled
    return _enabled()
