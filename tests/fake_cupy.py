"""A stand-in for CuPy, so every device branch of srigl_np runs on the CPU.

``fake-cupy`` is a module installed as ``cupy`` whose arrays are NumPy arrays that, like
CuPy's, refuse to mix with host arrays (ufuncs, indexing and assignment raise on a host
array; ``get()`` copies to the host; ``numpy.asarray`` is explicit). The only thing it
cannot do is run a CUDA kernel: the ``device`` fixture replaces the functions that launch
one (``cuda._launch``, the condensed product; ``cuda_training``'s ``_launch_forward``,
``_launch_input_grad`` and ``_launch_weight_grad``, the training products) with the
NumPy definitions, computed on host copies and handed back as device arrays. The fake
launches first assert what the real kernels assume of their operands (device arrays,
C-contiguous, one float dtype, the shapes that go together), so every device test also
checks the arguments the device branches pass. ``cuda`` (marked ``gpu``) repeats a
test with real CuPy and skips, with the reason, when CuPy or a GPU is missing.
"""

import sys
import types

import numpy as np
import pytest

from srigl_np import backend, cuda, cuda_training, kernels, training_kernels

GPU_REASON = "needs CuPy and a CUDA GPU"



def _is_host(a):
    return type(a) is np.ndarray and a.ndim > 0


def _refuse_host(what, values):
    if any(_is_host(v) for v in values):
        raise TypeError(f"{what}: a host (NumPy) array mixed with device arrays")


def _keys(key):
    return key if isinstance(key, tuple) else (key,)


class FakeDeviceArray(np.ndarray):
    """A NumPy array that behaves like cupy.ndarray at the host boundary: ``get()``
    copies to the host; ufuncs, indexing and assignment refuse host arrays."""

    __module__ = "cupy._fake"   # what backend.is_cupy_array looks at

    @property
    def device(self):
        return types.SimpleNamespace(id=0)

    def get(self):
        return self.view(np.ndarray).copy()

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse_host(ufunc.__name__, inputs + (out or ()))
        inputs = tuple(a.view(np.ndarray) if isinstance(a, FakeDeviceArray) else a
                       for a in inputs)
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        result = getattr(ufunc, method)(*inputs, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _to_fake(result)

    def __getitem__(self, key):
        _refuse_host("indexing", _keys(key))
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        _refuse_host("assignment", _keys(key) + (value,))
        super().__setitem__(key, value)


def _to_fake(result):
    if isinstance(result, np.ndarray) and not isinstance(result, FakeDeviceArray):
        return result.view(FakeDeviceArray)
    return result


def _fake_asarray(a, dtype=None):
    """Explicit host -> device copy (no copy for a device array of the right dtype)."""
    if isinstance(a, FakeDeviceArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return np.array(a, dtype=dtype, copy=True).view(FakeDeviceArray)


def _fake_function(function):
    def device_function(*args, **kwargs):
        _refuse_host(getattr(function, "__name__", "function"), args)
        return _to_fake(function(*args, **kwargs))
    return device_function


def _make_fake_cupy():
    fake = types.ModuleType("cupy")
    fake.ndarray = FakeDeviceArray
    fake.asarray = _fake_asarray
    fake.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Device=lambda index=0: types.SimpleNamespace(use=lambda: None, id=index))

    def module_getattr(name):
        attribute = getattr(np, name)
        if isinstance(attribute, type) or not callable(attribute):
            return attribute   # dtypes, constants
        return _fake_function(attribute)
    fake.__getattr__ = module_getattr
    return fake


def _make_fake_cupyx():
    """cupyx.scipy.special with scipy's erf: a ufunc, so it keeps fake device arrays on
    the device (``FakeDeviceArray.__array_ufunc__``) and refuses host ones."""
    import scipy.special
    modules = {name: types.ModuleType(name)
               for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.special")}
    modules["cupyx"].scipy = modules["cupyx.scipy"]
    modules["cupyx.scipy"].special = modules["cupyx.scipy.special"]
    modules["cupyx.scipy.special"].erf = scipy.special.erf
    return modules


def _fake_launch(values, indices, x, bias):
    """cuda._launch on the fake device: the definition, on host copies."""
    return _to_fake(kernels.condensed_reference(values.get(), indices.get(), x.get(),
                                                bias.get()).astype(np.float32))


def _operands(*arrays, dtype):
    """Assert what the CUDA kernels assume: device arrays, C-contiguous, of ``dtype``."""
    for a in arrays:
        assert isinstance(a, FakeDeviceArray) and a.flags.c_contiguous, type(a)
        assert a.dtype == dtype, (a.dtype, dtype)


def _fake_forward(values, indices, x_t, bias):
    """cuda_training._launch_forward: y_t[n, m] from x_t[n_in, m]."""
    _operands(values, x_t, *(() if bias is None else (bias,)), dtype=values.dtype)
    _operands(indices, dtype=indices.dtype)
    assert indices.shape == values.shape and x_t.ndim == 2
    bias = None if bias is None else bias.get()
    y = training_kernels.linear_forward_reference(values.get(), indices.get(), x_t.get().T,
                                                  bias)
    return _to_fake(np.ascontiguousarray(y.T))


def _fake_input_grad(values, transposed, dy_t, n_in):
    """cuda_training._launch_input_grad: dx_t[n_in, m] from dy_t[n, m] and the transposed
    index, from which the indices are read back (so a wrong index gives a wrong dx)."""
    _operands(values, dy_t, dtype=values.dtype)
    indptr, rows, positions = (a.get() for a in transposed)
    assert dy_t.shape[0] == values.shape[0] and indptr.shape == (n_in + 1,)
    flat = np.empty(values.size, dtype=np.int64)
    flat[positions] = np.repeat(np.arange(n_in), np.diff(indptr))
    np.testing.assert_array_equal(rows, positions // max(1, values.shape[1]))
    dx = training_kernels.linear_input_grad_reference(
        values.get(), flat.reshape(values.shape), dy_t.get().T, n_in)
    return _to_fake(np.ascontiguousarray(dx.T))


def _fake_weight_grad(indices, x_t, dy_t):
    """cuda_training._launch_weight_grad: dvalues[n, k] from x_t[n_in, m], dy_t[n, m]."""
    _operands(x_t, dy_t, dtype=x_t.dtype)
    _operands(indices, dtype=indices.dtype)
    assert dy_t.shape == (indices.shape[0], x_t.shape[1])
    return _to_fake(training_kernels.linear_weight_grad_reference(
        indices.get(), x_t.get().T, dy_t.get().T))


FAKE_TRAINING_LAUNCHES = {"_launch_forward": _fake_forward,
                          "_launch_input_grad": _fake_input_grad,
                          "_launch_weight_grad": _fake_weight_grad}


@pytest.fixture(params=["fake-cupy", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request, monkeypatch):
    """"cuda" backed by the fake CuPy, or by real CuPy on a GPU (skipped without one).

    Yields (device name, absolute tolerance for comparisons with the NumPy path).
    """
    if request.param == "fake-cupy":
        monkeypatch.setitem(sys.modules, "cupy", _make_fake_cupy())
        for name, module in _make_fake_cupyx().items():
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(cuda, "_launch", _fake_launch)
        for name, launch in FAKE_TRAINING_LAUNCHES.items():
            monkeypatch.setattr(cuda_training, name, launch)
        yield "cuda", 0.0
    else:
        try:
            backend.cupy()
        except backend.DeviceError:
            pytest.skip(GPU_REASON)
        yield "cuda", 1e-5


@pytest.fixture
def real_cupy():
    """CuPy with a usable GPU (``backend.cupy()``), or a skip saying what is missing: the
    tests marked ``gpu`` that run the compiled kernels."""
    try:
        return backend.cupy()
    except backend.DeviceError:
        pytest.skip(GPU_REASON)
