"""The CUDA override of the condensed product, and the validated GPU weights it reads.

``kernels.condensed_product`` sends a ``CudaCondensedWeights`` and a CuPy input here;
the operation itself is defined once, by ``kernels.condensed_reference``. The kernels
(``srigl_np/_condensed.cu``, compiled at first use with CuPy's ``RawModule``, once per
device) are:

    condensed_warp_rows<I>   x[batch, n_in] -> y[batch, n_active], one warp per output;
                             batches up to SMALL_BATCH.
    condensed_batch_t<I>     xT[n_in, batch] -> yT[n_active, batch], one thread per
                             output; larger batches (x is transposed in and y out).

Safety model, as on the CPU (``CondensedWeights``): ``CudaCondensedWeights`` checks
dtypes, shapes and the index range once, when it is built, and keeps private device
copies that its properties never hand out, so no index can change after the check;
``condensed_product`` then checks only x and bias against its shape. No public
function takes raw index arrays.

CuPy is imported only when this module's functions run on a GPU (``backend.cupy()``).
"""

import os

import numpy as np

from .backend import array_module, cuda_module, cupy, is_cupy_array
from .validation import FLOATING, check_array, positive_int

# Batch sizes up to this use the warp-per-output kernel (no transpose needed).
SMALL_BATCH = 8
INDEX_DTYPES = (np.int16, np.int32)
_KERNEL_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_condensed.cu")
_CTYPES = {np.dtype(np.int16): "short", np.dtype(np.int32): "int"}
_NAME_EXPRESSIONS = tuple(f"{kernel}<{ctype}>"
                          for kernel in ("condensed_warp_rows", "condensed_batch_t")
                          for ctype in _CTYPES.values())
_module_cache = {}


class CudaCondensedWeights:
    """Validated condensed weights on a GPU: the only way into the CUDA kernels.

    values[n_active, k]   float32, the kept weights of each active neuron.
    indices[n_active, k]  int16 or int32, their input columns, each in [0, n_in).
    n_in                  input width the indices address.

    Arrays may be NumPy or CuPy; they are copied to the current GPU once. k >= 1 and
    n_active >= 1 (an empty layer needs no kernel). ``values`` and ``indices`` return
    copies (CuPy arrays cannot be made read-only, so the checked ones are never handed
    out).
    """

    def __init__(self, values, indices, n_in):
        for name, a in (("values", values), ("indices", indices)):
            if not (isinstance(a, np.ndarray) or is_cupy_array(a)):
                raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(a).__name__}")
        check_array("values", values, dtypes=(np.float32,), ndim=2)
        check_array("indices", indices, dtypes=INDEX_DTYPES, shape=values.shape)
        if values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(f"values must have n_active >= 1 rows and k >= 1 columns, "
                             f"got shape {values.shape}")
        self.n_in = positive_int("n_in", n_in)
        xp = array_module(values, indices)
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= self.n_in:
            raise ValueError(f"indices must lie in [0, n_in={self.n_in}), got values in "
                             f"[{low}, {high}]")
        cp = _device_module(xp)
        # Private C-contiguous copies, also of CuPy input, so the caller's arrays can
        # change without changing what was checked.
        self._values = cp.asarray(values).copy(order="C")
        self._indices = cp.asarray(indices).copy(order="C")
        self.n_active, self.k = values.shape
        self.index_dtype = np.dtype(indices.dtype)
        check_array("values", self._values, finite=True)

    @property
    def device(self):
        """"cuda:N", the GPU holding the weights."""
        return f"cuda:{self._values.device.id}"

    @classmethod
    def from_host(cls, weights):
        """The GPU copy of a ``CondensedWeights`` (validated again: it is cheap on the GPU)."""
        return cls(weights.values, weights.indices, weights.n_in)

    @property
    def values(self):
        """A copy of values[n_active, k] (CuPy float32)."""
        return self._values.copy()

    @property
    def indices(self):
        """A copy of indices[n_active, k] (CuPy int16/int32)."""
        return self._indices.copy()

    def __repr__(self):
        return (f"CudaCondensedWeights(n_active={self.n_active}, k={self.k}, "
                f"n_in={self.n_in}, indices={self.index_dtype})")


def _device_module(xp):
    """The GPU array module: CuPy (checked usable) for host input too."""
    return xp if xp is not np else cupy()


def condensed_product(weights, x, bias=None):
    """y[batch, n_active] = x @ W.T (+ bias) on the GPU (see kernels.condensed_product).

    weights: CudaCondensedWeights; x[batch, n_in] a CuPy float array (cast to
    contiguous float32 on the device); bias[n_active] float32 CuPy array or None.
    """
    if not isinstance(weights, CudaCondensedWeights):
        raise TypeError(f"weights must be a CudaCondensedWeights, got {type(weights).__name__}")
    check_array("x", x, dtypes=FLOATING, device="cuda")
    if x.ndim != 2 or x.shape[1] != weights.n_in:
        raise ValueError(f"x must have shape (batch, n_in) with n_in={weights.n_in}, "
                         f"got {x.shape}")
    if bias is not None:
        check_array("bias", bias, dtypes=(np.float32,), shape=(weights.n_active,),
                    device="cuda")
    xp = array_module(x)
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    bias = xp.zeros(weights.n_active, dtype=xp.float32) if bias is None else \
        xp.ascontiguousarray(bias)
    if x.shape[0] == 0:
        return xp.empty((0, weights.n_active), dtype=xp.float32)
    return _launch(weights._values, weights._indices, x, bias)


def _kernel(name, index_dtype):
    module = cuda_module(_KERNEL_FILE, _NAME_EXPRESSIONS, _module_cache)
    return module.get_function(f"{name}<{_CTYPES[np.dtype(index_dtype)]}>")


def _launch(values, indices, x, bias):
    """Run the kernel for this batch size on checked operands (the only CUDA call).

    values[n_active, k] float32, indices[n_active, k], x[batch, n_in] float32
    C-contiguous, bias[n_active] float32 -> y[batch, n_active] float32.
    """
    cp = cupy()
    n_active, k = values.shape
    batch, n_in = x.shape
    if batch <= SMALL_BATCH:
        y = cp.empty((batch, n_active), dtype=cp.float32)
        threads = 256
        blocks = (n_active * batch * 32 + threads - 1) // threads
        _kernel("condensed_warp_rows", indices.dtype)(
            (blocks,), (threads,),
            (values, indices, x, bias, y,
             np.int32(n_active), np.int32(k), np.int32(n_in), np.int32(batch)))
        return y
    x_t = cp.ascontiguousarray(x.T)
    y_t = cp.empty((n_active, batch), dtype=cp.float32)
    block = (32, 8)
    grid = ((batch + block[0] - 1) // block[0], (n_active + block[1] - 1) // block[1])
    _kernel("condensed_batch_t", indices.dtype)(
        grid, block, (values, indices, x_t, bias, y_t,
                      np.int32(n_active), np.int32(k), np.int32(batch)))
    return y_t.T
