"""Argument checks for every public boundary: one helper per kind of value, one message style.

Each check raises ``TypeError`` for a value of the wrong kind (not an array, wrong dtype)
and ``ValueError`` for a value of the right kind that is out of range (shape, ndim,
contiguity, NaN/Inf, a negative count), with a message that names the argument, says what
was expected and shows what came: ``values must be float32, got float64``. Kernels and
stages check their inputs here once, before any work, so nothing past the boundary
re-validates (scikit-learn's ``check_array`` discipline).

Arrays may be NumPy or CuPy (``device=`` says which is allowed); CuPy is never imported
here, arrays are recognised by their type (``backend.is_cupy_array``).
"""

import os

import numpy as np

from .backend import array_module, is_cupy_array

FLOATING = "floating"
INTEGER = "integer"
# The largest finite float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _dtype_text(dtypes):
    if dtypes == FLOATING:
        return "a floating-point dtype"
    if dtypes == INTEGER:
        return "an integer dtype"
    names = [np.dtype(d).name for d in dtypes]
    return names[0] if len(names) == 1 else " or ".join([", ".join(names[:-1]), names[-1]])


def _dtype_ok(dtype, dtypes):
    if dtypes == FLOATING:
        return dtype.kind == "f"
    if dtypes == INTEGER:
        return dtype.kind in "iu"
    return any(dtype == np.dtype(d) for d in dtypes)


def check_array(name, a, *, dtypes=None, ndim=None, shape=None, contiguous=False,
                finite=False, device=None):
    """Return ``a`` unchanged after checking it; raise naming ``name`` otherwise.

    dtypes: a tuple of dtypes, or FLOATING / INTEGER for any of that kind; None: any.
    ndim: the number of dimensions; shape: the exact shape (``None`` entries match any
    length); contiguous: C-contiguous required; finite: no NaN or Inf (float arrays);
    device: "cpu" (a NumPy array), "cuda" (a CuPy array) or None (either).
    """
    on_gpu = is_cupy_array(a)
    if device == "cpu" and not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if device == "cuda" and not on_gpu:
        raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(a).__name__}")
    if not (isinstance(a, np.ndarray) or on_gpu):
        raise TypeError(f"{name} must be an array, got {type(a).__name__}")
    if dtypes is not None and not _dtype_ok(a.dtype, dtypes):
        raise TypeError(f"{name} must be {_dtype_text(dtypes)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension{'s' * (ndim != 1)}, "
                         f"got shape {a.shape}")
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != a.ndim or any(want is not None and want != got
                                       for want, got in zip(shape, a.shape)):
            wanted = "(" + ", ".join("any" if s is None else str(s) for s in shape) + \
                     ("," if len(shape) == 1 else "") + ")"
            raise ValueError(f"{name} must have shape {wanted}, got {a.shape}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if finite and a.dtype.kind in "fc" and not bool(array_module(a).isfinite(a).all()):
        raise ValueError(f"{name} must be finite, found NaN or Inf")
    return a


def check_float32_range(name, a):
    """Return the NumPy array ``a`` unchanged when float32 holds its finite values; a
    wider float beyond float32's range (a cast would make it infinite) is a ValueError
    naming ``name`` and the largest magnitude. NaN and infinity pass: they are
    ``check_array(finite=True)``'s to refuse."""
    if a.dtype.kind == "f" and a.dtype.itemsize > 4 and a.size:
        magnitude = np.abs(a[np.isfinite(a)])
        largest = float(magnitude.max()) if magnitude.size else 0.0
        if largest > FLOAT32_MAX:
            raise ValueError(f"{name} holds finite values out of float32 range (largest "
                             f"magnitude {largest:.4g}; float32 holds up to "
                             f"{FLOAT32_MAX:.4g}): srigl_np's weights are float32")
    return a


def _integer(name, value, minimum, what):
    """``value`` as a Python int >= ``minimum``: TypeError for a bool or a non-integer,
    ValueError below ``minimum``, both saying ``name must be {what}, got {value!r}``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def positive_int(name, value):
    """An integer >= 1 (TypeError for a non-integer, bools included; ValueError below 1)."""
    return _integer(name, value, 1, "a positive integer")


def count(name, value):
    """An integer >= 0 (TypeError for a non-integer, bools included; ValueError below 0)."""
    return _integer(name, value, 0, "an integer >= 0")


def usable_cpus():
    """The CPUs this process may run on: its affinity set where the OS keeps one (taskset,
    a container's cpuset), else ``os.cpu_count()``; at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_thread_flag(flag, threads, minimum=0):
    """A command's thread or process count ``threads`` (an int, from ``flag``) in
    [minimum, usable_cpus()]: more would only queue on the same CPUs, and a count in the
    thousands starts that many threads. ValueError otherwise, naming the flag and the
    bound: "--threads must be in [0, 2] (this process may use 2 CPUs), got 100000"."""
    cpus = usable_cpus()
    if not minimum <= threads <= cpus:
        raise ValueError(f"{flag} must be in [{minimum}, {cpus}] (this process may use "
                         f"{cpus} CPU{'s' * (cpus != 1)}), got {threads}")
    return threads


# A kernel may run more threads than CPUs (the tests run 2 on one CPU to show that the
# result does not depend on the count), up to this many per CPU; 0 means OpenMP's
# default, capped the same way. Read once: a kernel call's whole budget is microseconds.
THREADS_PER_CPU = 4
_MAX_THREADS = THREADS_PER_CPU * usable_cpus()


def max_thread_count():
    """The largest thread count a kernel accepts: THREADS_PER_CPU x the CPUs this process
    could use at import (``usable_cpus``)."""
    return _MAX_THREADS


def check_threads(threads):
    """``threads`` as a Python int in [0, max_thread_count()] (0 = OpenMP's default).

    The one check of a kernel's thread count, made before any OpenMP region: a bool or a
    non-integer is a TypeError, a negative count or one past the bound a ValueError (libgomp
    would abort the process on a count it cannot start, and thousands of threads on a few
    CPUs crawl)."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an integer (0 = OpenMP default), got {threads!r}")
    bound = max_thread_count()
    if not 0 <= threads <= bound:
        raise ValueError(f"threads must be in [0, {bound}] (0 = OpenMP default; at most "
                         f"{THREADS_PER_CPU} per CPU this process may use), got {threads!r}")
    return int(threads)
