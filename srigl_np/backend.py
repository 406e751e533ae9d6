"""The array namespace (``xp``) helper: NumPy on the CPU, CuPy on an NVIDIA GPU.

Layers, losses, optimizers and the DST updates take their array module from their
inputs, so one code path serves both devices. CuPy is never imported here: an array
is recognised as a CuPy array by its type's module, so ``import srigl_np`` works
(and stays NumPy-only) on machines without CuPy.
"""

import numpy as np


def is_cupy_array(a):
    """True when ``a`` is a CuPy ndarray (checked without importing cupy)."""
    return type(a).__module__.split(".", 1)[0] == "cupy"


def array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if is_cupy_array(a):
            import cupy
            return cupy
    return np


def to_numpy(a):
    """A NumPy copy (or view) of ``a``, whichever device it lives on."""
    return a.get() if is_cupy_array(a) else np.asarray(a)


def on_device_of(value, reference):
    """``value`` as an array on ``reference``'s device: CuPy if ``reference`` is a CuPy
    array, else NumPy. No copy when it already lives there.

    CuPy refuses implicit transfers (``cupy_array[...] = numpy_array`` and
    ``numpy.asarray(cupy_array)`` raise), so code that copies loaded or host-computed
    arrays into existing ones converts explicitly with this first.
    """
    if is_cupy_array(reference):
        return array_module(reference).asarray(value)
    return to_numpy(value)
