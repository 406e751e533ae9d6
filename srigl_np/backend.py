"""Devices: the array namespace (``xp``) of an array, device names, and device selection.

Layers, losses, optimizers, the DST updates and the condensed stages take their array
module from their inputs (``array_module``), so one code path serves NumPy on the CPU
and CuPy on an NVIDIA GPU. CuPy is imported only by ``cupy()`` / ``select()``, when a
GPU is asked for: an array is recognised as a CuPy array by its type's module, so
``import srigl_np`` works (and stays NumPy-only) on machines without CuPy.

Device names are "cpu", "cuda" (the current GPU, index 0 unless changed) and "cuda:N".
Without CuPy, or with CuPy but no usable GPU, asking for the GPU raises one
``DeviceError`` that says what is missing and how to get it.
"""

import re

import numpy as np

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU, bad device index)."""


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


def parse_device(device):
    """Normalise a device string: "cpu", "cuda" or "cuda:N" -> ("cpu"|"cuda", index).

    Pure string handling (no CuPy); raises ValueError naming the bad value.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', "
                        f"got {type(device).__name__}")
    match = _DEVICE_PATTERN.match(device.strip().lower())
    if match is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index is not None:
            raise ValueError(f"device 'cpu' takes no index, got {device!r}")
        return "cpu", None
    return "cuda", int(index or 0)


def cupy():
    """Import and return CuPy with a usable GPU, or raise one clear ``DeviceError``."""
    try:
        import cupy as cp
    except ImportError as exc:
        raise DeviceError(
            "device 'cuda' needs CuPy, which is not installed: install the GPU extra, "
            "e.g. `pip install 'srigl_np[gpu]'` or the wheel for your CUDA version "
            "(`pip install cupy-cuda12x`)") from exc
    try:
        n_devices = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError (a CuPy class) when no driver is present
        raise DeviceError(f"device 'cuda': CuPy is installed but no CUDA device is usable "
                          f"({exc})") from exc
    if n_devices < 1:
        raise DeviceError("device 'cuda': CuPy is installed but no CUDA device was found")
    return cp


def cuda_module(path, name_expressions, cache):
    """CuPy's ``RawModule`` of the CUDA source file ``path`` for the current device,
    compiled at its first use on that device and kept in ``cache`` ({device id:
    module}, the caller's: one per source file); ``name_expressions`` are the template
    instantiations to compile."""
    cp = cupy()
    device = cp.cuda.Device().id
    module = cache.get(device)
    if module is None:
        with open(path) as f:
            source = f.read()
        module = cp.RawModule(code=source, options=("-std=c++14",),
                              name_expressions=name_expressions)
        cache[device] = module
    return module


def select(device):
    """Activate ``device`` and return its array module (numpy for "cpu", cupy for "cuda:N")."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return np
    cp = cupy()
    n_devices = cp.cuda.runtime.getDeviceCount()
    if index >= n_devices:
        raise DeviceError(f"device 'cuda:{index}' does not exist ({n_devices} CUDA device(s))")
    cp.cuda.Device(index).use()
    return cp


def to_device(array, device):
    """``array`` on ``device`` ("cpu" -> NumPy, "cuda[:N]" -> CuPy); None passes through."""
    if array is None:
        return None
    kind, _ = parse_device(device)
    if kind == "cpu":
        return to_numpy(array)
    return select(device).asarray(array)
