"""The CUDA override of the condensed training products (``training_kernels`` on CuPy).

``training_kernels``' public functions validate their arguments (dtypes, shapes,
contiguity, the index range) and, for CuPy arrays, transpose the activations into the
batch-last column layout and call the three launches here, one per product; the
products themselves are defined once, by ``training_kernels.linear_*_reference``. The
kernels (``srigl_np/_training.cu``, compiled at first use with CuPy's ``RawModule``,
once per device, for float32/float64 values and int16/int32 indices):

    _launch_forward      forward_columns<T, I>      x_t[n_in, m] -> y_t[n, m]
    _launch_input_grad   input_grad_gather<T>       dy_t[n, m] -> dx_t[n_in, m], a
                                                    gather over the transposed index
    _launch_weight_grad  weight_grad_columns<T, I>  x_t, dy_t -> dvalues[n, k] (SDDMM)

The launches trust their operands (the one place that checks them is
``training_kernels``); the tests replace them with the NumPy definitions to run every
device branch on the CPU (tests/fake_cupy.py), and run the kernel source itself as C++
(tests/cuda_emulation.py). The input gradient's transposed index is built on the device
by ``transposed_index`` (one sort of nnz keys) and checked against the indices by
``check_transposed`` (no sort: O(n_in + nnz log n_in)).

CuPy is imported only when these functions run (``backend.cupy()``).
"""

import os

import numpy as np

from .backend import array_module, cuda_module, cupy
from .validation import check_array

_KERNEL_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_training.cu")
_VALUE_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INDEX_CTYPES = {np.dtype(np.int16): "short", np.dtype(np.int32): "int"}
NAME_EXPRESSIONS = (
    tuple(f"{kernel}<{value}, {index}>" for kernel in ("forward_columns", "weight_grad_columns")
          for value in _VALUE_CTYPES.values() for index in _INDEX_CTYPES.values())
    + tuple(f"input_grad_gather<{value}>" for value in _VALUE_CTYPES.values()))
# Threads per block; a block of the row kernels is (columns, rows) with this product.
BLOCK_THREADS = 256
# CUDA's limit on gridDim.y; the kernels stride over the rows (segments) beyond it.
MAX_GRID_Y = 65535
# The weight gradient splits the column axis into segments of at least MIN_SEGMENT
# columns until about TARGET_THREADS threads run (a GPU holds ~10^5 resident threads).
MIN_SEGMENT = 256
TARGET_THREADS = 1 << 18
_module_cache = {}


def _kernel(name_expression):
    return cuda_module(_KERNEL_FILE, NAME_EXPRESSIONS, _module_cache).get_function(
        name_expression)


def _name(kernel, values_dtype, index_dtype=None):
    value = _VALUE_CTYPES[np.dtype(values_dtype)]
    if index_dtype is None:
        return f"{kernel}<{value}>"
    return f"{kernel}<{value}, {_INDEX_CTYPES[np.dtype(index_dtype)]}>"


def row_launch_shape(n_rows, m):
    """(grid, block) of the row kernels over out[n_rows, m] (n_rows, m >= 1): blocks of
    BLOCK_THREADS threads, as many on the columns as a power of two up to 32 covers
    (batch 1 keeps a block busy on 256 rows instead of 1 column), at most MAX_GRID_Y
    blocks on the rows (the kernels loop over the rest)."""
    columns = min(32, 1 << (int(m) - 1).bit_length())
    block = (columns, BLOCK_THREADS // columns)
    grid = (-(-int(m) // block[0]), min(MAX_GRID_Y, -(-int(n_rows) // block[1])))
    return grid, block


def weight_grad_split(nnz, m):
    """(segments, segment): the column axis m >= 1 cut into ``segments`` runs of
    ``segment`` columns (the last one shorter) for nnz >= 1 stored weights: one segment
    unless nnz threads leave the GPU idle, never a segment under MIN_SEGMENT columns, at
    most MAX_GRID_Y segments."""
    wanted = max(1, min(-(-TARGET_THREADS // int(nnz)), int(m) // MIN_SEGMENT, MAX_GRID_Y))
    segment = -(-int(m) // wanted)
    return -(-int(m) // segment), segment


def _launch_forward(values, indices, x_t, bias):
    """y_t[n, m] = forward_columns(values[n, k], indices[n, k], x_t[n_in, m], bias[n]):
    checked, C-contiguous device operands of values' dtype (bias None: zeros)."""
    cp = cupy()
    n, k = values.shape
    m = x_t.shape[1]
    bias = cp.zeros(n, dtype=values.dtype) if bias is None else bias
    y_t = cp.empty((n, m), dtype=values.dtype)
    if y_t.size:
        grid, block = row_launch_shape(n, m)
        _kernel(_name("forward_columns", values.dtype, indices.dtype))(
            grid, block, (values, indices, x_t, bias, y_t, np.int32(n), np.int32(k),
                          np.int64(m)))
    return y_t


def _launch_input_grad(values, transposed, dy_t, n_in):
    """dx_t[n_in, m] = input_grad_gather(values[n, k], transposed, dy_t[n, m]):
    ``transposed`` = (indptr, rows, positions) checked against the indices."""
    cp = cupy()
    indptr, rows, positions = transposed
    m = dy_t.shape[1]
    dx_t = cp.empty((n_in, m), dtype=values.dtype)
    if dx_t.size:
        grid, block = row_launch_shape(n_in, m)
        _kernel(_name("input_grad_gather", values.dtype))(
            grid, block, (values, indptr, rows, positions, dy_t, dx_t, np.int32(n_in),
                          np.int64(m)))
    return dx_t


def _launch_weight_grad(indices, x_t, dy_t):
    """dvalues[n, k] = weight_grad_columns(indices[n, k], x_t[n_in, m], dy_t[n, m]),
    the column segments summed on the device."""
    cp = cupy()
    n, k = indices.shape
    nnz, m = n * k, x_t.shape[1]
    if nnz == 0 or m == 0:
        return cp.zeros((n, k), dtype=x_t.dtype)
    segments, segment = weight_grad_split(nnz, m)
    partial = cp.empty((segments, nnz), dtype=x_t.dtype)
    block = (BLOCK_THREADS, 1)
    grid = (-(-nnz // BLOCK_THREADS), min(segments, MAX_GRID_Y))
    _kernel(_name("weight_grad_columns", x_t.dtype, indices.dtype))(
        grid, block, (indices, x_t, dy_t, partial, np.int64(nnz), np.int32(k), np.int64(m),
                      np.int64(segment)))
    dvalues = partial[0] if segments == 1 else partial.sum(axis=0)
    return dvalues.reshape(n, k)


def transposed_index(indices, n_in):
    """(indptr[n_in + 1] int64, rows[nnz] int32, positions[nnz] int64) on the device:
    ``training_kernels.transposed_index``'s arrays (the same values) for CuPy indices,
    built with one device sort. indices: checked C-contiguous [n, k] CuPy int16/int32 in
    [0, n_in). Entries sorted by (input, flat position): the key input * nnz + position
    is unique, so the result does not depend on the sort's stability."""
    xp = array_module(indices)
    k = indices.shape[1]
    flat = indices.ravel().astype(xp.int64)
    nnz = flat.size
    positions = xp.argsort(flat * nnz + xp.arange(nnz, dtype=xp.int64)).astype(xp.int64)
    counts = xp.bincount(flat, minlength=n_in) if nnz else xp.zeros(n_in, dtype=xp.int64)
    indptr = xp.concatenate([xp.zeros(1, dtype=xp.int64), xp.cumsum(counts).astype(xp.int64)])
    rows = (positions // max(1, k)).astype(xp.int32)
    return indptr, rows, positions


def check_transposed(transposed, indices, n_in):
    """ValueError unless ``transposed`` is ``transposed_index(indices, n_in)`` of these
    device indices: dtypes and shapes, then on the device (two waits for its answers, O(n_in
    + nnz log n_in): a search of indptr gives each entry's input) that indptr counts each
    input's entries, each entry e of input i names a stored weight
    p = positions[e] with indices.flat[p] == i and rows[e] == p // k, and the positions
    rise within each input (so each stored weight appears once)."""
    if not isinstance(transposed, (tuple, list)) or len(transposed) != 3:
        raise TypeError("transposed must be the (indptr, rows, positions) tuple of "
                        "transposed_index(indices, n_in)")
    indptr, rows, positions = transposed
    nnz, k = indices.size, indices.shape[1]
    for name, a, dtype, size in (("indptr", indptr, np.int64, n_in + 1),
                                 ("rows", rows, np.int32, nnz),
                                 ("positions", positions, np.int64, nnz)):
        check_array(name, a, dtypes=(dtype,), ndim=1, contiguous=True, device="cuda")
        if a.shape != (size,):
            raise ValueError(f"transposed must be transposed_index(indices, n_in={n_in}) for "
                             f"indices of shape {indices.shape}")
    xp = array_module(indices)
    flat = indices.ravel()
    counts = xp.bincount(flat.astype(xp.int64), minlength=n_in) if nnz else \
        xp.zeros(n_in, dtype=xp.int64)
    ok = bool((indptr[0] == 0) & (indptr[1:] - indptr[:-1] == counts).all())
    if ok and nnz:
        inside = (positions >= 0) & (positions < nnz)
        safe = xp.where(inside, positions, 0)
        entry_input = xp.searchsorted(indptr, xp.arange(nnz, dtype=xp.int64), side="right") - 1
        rises = (positions[1:] > positions[:-1]) | (entry_input[1:] != entry_input[:-1])
        ok = bool(inside.all() & (flat[safe] == entry_input).all()
                  & (rows == safe // k).all() & rises.all())
    if not ok:
        raise ValueError("transposed does not match indices: rebuild it with "
                         "transposed_index(indices, n_in) after every topology change")
