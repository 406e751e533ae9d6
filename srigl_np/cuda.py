"""Optional CuPy backend: device selection and the condensed forward as CUDA kernels.

This module imports CuPy only inside its functions, when a GPU is asked for
(``device="cuda"``, ``--device cuda``), so ``import srigl_np`` never touches CuPy. Without CuPy, or with CuPy but no usable GPU,
asking for the GPU raises one ``DeviceError`` that says what is missing and how to get
it; nothing else in the package changes.

Kernels (float32 values and inputs, int16 or int32 indices, bias fused):

    condensed_warp_rows<I>   values[n_active, k], indices[n_active, k], x[batch, n_in]
                             -> y[batch, n_active]. One warp per output element; lanes
                             stride over the row's k non-zeros (coalesced reads of values
                             and indices), then a shuffle reduction. For batch 1 and small
                             batches, where there is too little work per row to tile.
    condensed_batch_t<I>     values[n_active, k], indices[n_active, k], xT[n_in, batch]
                             -> yT[n_active, batch]. One thread per output element,
                             threads of a warp on consecutive batch columns of the same row:
                             the row's value and index are one broadcast load, each
                             gathered input is a coalesced 128-byte read of xT, and the
                             write of yT is coalesced. ``condensed_forward`` transposes
                             x in and y out around it on every call.

Index ranges are validated once, when a condensed layer is built or loaded (see
``srigl_np.condensed``); the launchers here re-check shapes and dtypes on every call.
"""

import re

import numpy as np

from .backend import is_cupy_array

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda)(?::(\d+))?$")

# Batch sizes up to this use the warp-per-output kernel (no transpose needed).
_SMALL_BATCH = 8

_KERNEL_SOURCE = r"""
template <typename I>
__global__ void condensed_warp_rows(const float* __restrict__ values,
                                    const I* __restrict__ indices,
                                    const float* __restrict__ x,
                                    const float* __restrict__ bias,
                                    float* __restrict__ y,
                                    int n_active, int k, int n_in, int batch)
{
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (warp >= (long long)n_active * batch) return;
    int row = (int)(warp % n_active);
    int b = (int)(warp / n_active);
    const float* v = values + (long long)row * k;
    const I* ix = indices + (long long)row * k;
    const float* xb = x + (long long)b * n_in;
    float acc = 0.0f;
    for (int t = lane; t < k; t += 32) acc += v[t] * xb[ix[t]];
    for (int offset = 16; offset > 0; offset >>= 1)
        acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if (lane == 0) y[(long long)b * n_active + row] = acc + bias[row];
}

template <typename I>
__global__ void condensed_batch_t(const float* __restrict__ values,
                                  const I* __restrict__ indices,
                                  const float* __restrict__ xT,
                                  const float* __restrict__ bias,
                                  float* __restrict__ yT,
                                  int n_active, int k, int batch)
{
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    int row = blockIdx.y * blockDim.y + threadIdx.y;
    if (b >= batch || row >= n_active) return;
    const float* v = values + (long long)row * k;
    const I* ix = indices + (long long)row * k;
    float acc0 = 0.0f, acc1 = 0.0f;
    int t = 0;
    for (; t + 1 < k; t += 2) {  // two chains hide the gather latency
        acc0 += v[t] * xT[(long long)ix[t] * batch + b];
        acc1 += v[t + 1] * xT[(long long)ix[t + 1] * batch + b];
    }
    if (t < k) acc0 += v[t] * xT[(long long)ix[t] * batch + b];
    yT[(long long)row * batch + b] = acc0 + acc1 + bias[row];
}
"""

_NAME_EXPRESSIONS = tuple(f"{kernel}<{ctype}>"
                          for kernel in ("condensed_warp_rows", "condensed_batch_t")
                          for ctype in ("short", "int"))
_CTYPES = {np.dtype(np.int16): "short", np.dtype(np.int32): "int"}
_module_cache = {}


class DeviceError(RuntimeError):
    """The requested device cannot be used (no CuPy, no GPU, bad device index)."""


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
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when no driver is present
        raise DeviceError(f"device 'cuda': CuPy is installed but no CUDA device is usable "
                          f"({exc})") from exc
    if count < 1:
        raise DeviceError("device 'cuda': CuPy is installed but no CUDA device was found")
    return cp


def select(device):
    """Activate ``device`` and return its array module (numpy for "cpu", cupy for "cuda:N")."""
    kind, index = parse_device(device)
    if kind == "cpu":
        return np
    cp = cupy()
    count = cp.cuda.runtime.getDeviceCount()
    if index >= count:
        raise DeviceError(f"device 'cuda:{index}' does not exist ({count} CUDA device(s))")
    cp.cuda.Device(index).use()
    return cp


def to_device(array, device):
    """``array`` on ``device`` ("cpu" -> NumPy, "cuda[:N]" -> CuPy); None passes through."""
    if array is None:
        return None
    kind, _ = parse_device(device)
    if kind == "cpu":
        return array.get() if is_cupy_array(array) else np.asarray(array)
    return select(device).asarray(array)


def _kernel(name, index_dtype):
    cp = cupy()
    device = cp.cuda.Device().id
    module = _module_cache.get(device)
    if module is None:
        module = cp.RawModule(code=_KERNEL_SOURCE, options=("-std=c++14",),
                              name_expressions=_NAME_EXPRESSIONS)
        _module_cache[device] = module
    return module.get_function(f"{name}<{_CTYPES[np.dtype(index_dtype)]}>")


def _check_device_operands(values, indices, bias, n_in_name, n_in):
    for name, a in (("values", values), ("indices", indices)):
        if not is_cupy_array(a):
            raise TypeError(f"{name} must be a CuPy array on the GPU, got {type(a).__name__}")
        if a.ndim != 2 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous 2-D array, got shape {a.shape}")
    if values.dtype != np.float32:
        raise TypeError(f"values must be float32, got {values.dtype}")
    if np.dtype(indices.dtype) not in _CTYPES:
        raise TypeError(f"indices must be int16 or int32, got {indices.dtype}")
    if indices.shape != values.shape:
        raise ValueError(f"indices shape {indices.shape} differs from values shape "
                         f"{values.shape}")
    if bias is not None and (not is_cupy_array(bias) or bias.dtype != np.float32
                             or bias.shape != (values.shape[0],)):
        raise ValueError(f"bias must be a float32 CuPy array of shape ({values.shape[0]},)")
    if n_in < 1:
        raise ValueError(f"{n_in_name} must be >= 1, got {n_in}")


def condensed_forward(values, indices, x, bias=None):
    """y[batch, n_active] = sum_t values[j, t] * x[b, indices[j, t]] (+ bias[j]) on the GPU.

    values[n_active, k] float32, indices[n_active, k] int16/int32 with 0 <= indices < n_in
    (validated when the condensed layer was built), x[batch, n_in] (cast to contiguous
    float32 on the device), bias[n_active] or None. Picks the warp-per-output kernel for
    small batches and the transposed-batch kernel otherwise.
    """
    cp = cupy()
    x = cp.ascontiguousarray(cp.asarray(x, dtype=cp.float32))
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D [batch, n_in], got shape {x.shape}")
    _check_device_operands(values, indices, bias, "x.shape[1]", x.shape[1])
    if x.shape[0] <= _SMALL_BATCH:
        return _forward_small_batch(cp, values, indices, x, bias)
    return condensed_forward_t(values, indices, cp.ascontiguousarray(x.T), bias).T


def _bias_or_zeros(cp, bias, n_active):
    # The kernels always add a bias: a zero vector is cheaper than a second kernel.
    return cp.zeros(n_active, dtype=cp.float32) if bias is None else bias


def _forward_small_batch(cp, values, indices, x, bias):
    n_active, k = values.shape
    batch, n_in = x.shape
    y = cp.empty((batch, n_active), dtype=cp.float32)
    threads = 256
    warps = n_active * batch
    blocks = (warps * 32 + threads - 1) // threads
    _kernel("condensed_warp_rows", indices.dtype)(
        (blocks,), (threads,),
        (values, indices, x, _bias_or_zeros(cp, bias, n_active), y,
         np.int32(n_active), np.int32(k), np.int32(n_in), np.int32(batch)))
    return y


def condensed_forward_t(values, indices, xT, bias=None):
    """Transposed layout: xT[n_in, batch] -> yT[n_active, batch] (float32, on the GPU).

    The layout a condensed model keeps between layers on the GPU.
    """
    cp = cupy()
    if not is_cupy_array(xT) or xT.dtype != np.float32 or xT.ndim != 2 \
            or not xT.flags.c_contiguous:
        raise TypeError("xT must be a C-contiguous float32 2-D CuPy array [n_in, batch]")
    _check_device_operands(values, indices, bias, "xT.shape[0]", xT.shape[0])
    n_active, k = values.shape
    batch = xT.shape[1]
    yT = cp.empty((n_active, batch), dtype=cp.float32)
    block = (32, 8)
    grid = ((batch + block[0] - 1) // block[0], (n_active + block[1] - 1) // block[1])
    _kernel("condensed_batch_t", indices.dtype)(
        grid, block, (values, indices, xT, _bias_or_zeros(cp, bias, n_active), yT,
                      np.int32(n_active), np.int32(k), np.int32(batch)))
    return yT


# -- condensed models on the GPU -----------------------------------------------------

def stage_functions(model, xp, linear_forward):
    """Each stage of a CondensedModel as a function of arrays of module ``xp``.

    ``linear_forward(values, indices, x, bias)`` is the condensed product (the CUDA
    kernel on the GPU; any reference with the same meaning on the CPU, which is how
    the conversion itself is tested without a GPU). Arrays are copied to ``xp`` once.
    """
    from . import condensed as c
    from .layers import im2col_strided

    def linear(layer):
        if layer.n_active == 0:
            return lambda x: xp.zeros((x.shape[0], 0), dtype=xp.float32)
        values, indices = xp.asarray(layer.values), xp.asarray(layer.indices)
        bias = None if layer.bias is None else xp.asarray(layer.bias)
        return lambda x: linear_forward(values, indices, x, bias)

    def dense(weight, bias):
        w_t = xp.asarray(weight.reshape(weight.shape[0], -1).T)
        b = None if bias is None else xp.asarray(bias)
        return lambda x: x @ w_t if b is None else x @ w_t + b

    def conv(rows_fn, stage):
        def forward(x):
            kh, kw = stage.kernel_size
            cols = im2col_strided(x, kh, kw, stage.stride, stage.padding)
            out_h = (x.shape[2] + 2 * stage.padding - kh) // stage.stride + 1
            out_w = (x.shape[3] + 2 * stage.padding - kw) // stage.stride + 1
            rows = rows_fn(cols)
            return xp.ascontiguousarray(
                rows.reshape(x.shape[0], out_h, out_w, -1).transpose(0, 3, 1, 2))
        return forward

    def affine(stage):
        scale, shift = xp.asarray(stage.scale), xp.asarray(stage.shift)

        def forward(x):
            shape = (1, -1) + (1,) * (x.ndim - 2)
            return x * scale.reshape(shape) + shift.reshape(shape)
        return forward

    def scatter(stage):
        positions = xp.asarray(stage.positions)
        removed = xp.asarray(np.setdiff1d(np.arange(stage.constants.size), stage.positions))
        constants = xp.asarray(stage.constants)

        def forward(x):
            out = xp.empty((x.shape[0], constants.size) + x.shape[2:], dtype=xp.float32)
            out[:, positions] = x
            out[:, removed] = constants[removed].reshape((1, -1) + (1,) * (x.ndim - 2))
            return out
        return forward

    functions = []
    for stage in model.stages:
        if isinstance(stage, c.CondensedLinear):
            functions.append(linear(stage))
        elif isinstance(stage, c.CondensedConv2d):
            functions.append(conv(linear(stage.linear), stage))
        elif isinstance(stage, c.DenseLinear):
            functions.append(dense(stage.weight, stage.bias))
        elif isinstance(stage, c.DenseConv2d):
            functions.append(conv(dense(stage.weight, stage.bias), stage))
        elif isinstance(stage, c.Relu):
            functions.append(lambda x: xp.maximum(x, 0))
        elif isinstance(stage, c.MaxPool):
            functions.append(lambda x, pool=stage._pool: pool.forward(x, False))
        elif isinstance(stage, c.FlattenStage):
            functions.append(lambda x: x.reshape(x.shape[0], -1))
        elif isinstance(stage, c.ChannelAffine):
            functions.append(affine(stage))
        elif isinstance(stage, c.Scatter):
            functions.append(scatter(stage))
        else:  # CondensedModel's constructor admits only the types above
            raise TypeError(f"no device version of stage {type(stage).__name__}")
    return functions


class CudaCondensedModel:
    """A ``CondensedModel`` whose arrays live on a GPU (``CondensedModel.to("cuda")``).

    logits(x): x[batch, ...] (NumPy or CuPy, any float dtype) -> CuPy float32
    [batch, n_classes]; predict(x) -> CuPy int64 [batch]. ``to("cpu")`` gives back the
    NumPy model it was made from.
    """

    def __init__(self, model, device="cuda"):
        self.device = device
        self.xp = select(device)
        self._cpu_model = model
        self._functions = stage_functions(model, self.xp, condensed_forward)

    def logits(self, x, threads=0):
        x = self.xp.ascontiguousarray(self.xp.asarray(x, dtype=self.xp.float32))
        for forward in self._functions:
            x = forward(x)
        return x

    def predict(self, x, threads=0):
        return self.logits(x).argmax(axis=1)

    def to(self, device):
        return self._cpu_model.to(device)

    def __repr__(self):
        return f"CudaCondensedModel(device={self.device!r}, {self._cpu_model!r})"


# -- the GPU rows of ``python -m srigl_np.bench --device cuda`` ------------------------

def sample_seconds(fn, min_time, min_repeats=5, max_repeats=10_000):
    """GPU times of fn() (a list; CUDA events around each call) over at least min_time
    s of GPU time and min_repeats calls, after one warm-up call."""
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


def implementations(weight, layer, batch, rng):
    """name -> (callable, note) for one layer on the GPU: cuBLAS dense, structured,
    cuSPARSE CSR (both orientations; the bench keeps the faster) and condensed (ours)."""
    cp = cupy()
    import cupyx.scipy.sparse

    x = cp.asarray(rng.standard_normal((batch, weight.shape[1]), dtype=np.float32))
    x_t = cp.ascontiguousarray(x.T)
    w = cp.asarray(weight)
    w_active = cp.asarray(np.ascontiguousarray(weight[layer.active]))
    csr = cupyx.scipy.sparse.csr_matrix(w)
    csr_t = cupyx.scipy.sparse.csr_matrix(cp.ascontiguousarray(w.T))
    values, indices = cp.asarray(layer.values), cp.asarray(layer.indices)
    return {
        "dense": (lambda: x @ w.T, f"cuBLAS (CuPy {cp.__version__})"),
        "structured": (lambda: x @ w_active.T, f"{layer.n_active} active rows"),
        "csr": {"(W_csr @ x.T).T": lambda: (csr @ x_t).T,
                "(W_csc @ x.T).T": lambda: (csr_t.T @ x_t).T},
        "condensed": (lambda: condensed_forward(values, indices, x),
                      f"k={layer.k}, {layer.indices.dtype}"),
    }


def device_name():
    """The GPU's name, for the bench's machine line."""
    cp = cupy()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
