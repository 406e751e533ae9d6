"""The condensed training compute of a constant fan-in layer: each product defined once.

A sparse Linear or Conv2d layer between topology updates is ``values[n, k]`` (float32 or
float64) + ``indices[n, k]`` (int16 or int32): neuron r's k weights sit at input columns
``indices[r]`` (for a Conv2d, flattened filter taps ordered (channel, ki, kj), n_in =
channels*kh*kw). Training needs three products and an optimizer step, all O(nnz) in the
weights and never a dense [n, n_in] array:

    operation                definition (NumPy; any     CPU override (Cython,       CUDA override (CuPy
                             array module)              _training_kernels)          arrays, _training.cu)
    forward  y = x W^T + b   linear_forward_reference   forward_columns             forward_columns<T, I>
    input gradient dx = dy W linear_input_grad_         input_grad_columns          input_grad_gather<T>
                             reference                  (scatter) or                (gather over the device
                                                        input_grad_gather           transposed_index)
    weight gradient (SDDMM)  linear_weight_grad_        weight_grad_columns         weight_grad_columns<T, I>
      dvalues[r, j] =        reference                                              (column segments summed
      sum_b dy[b, r] x[b, indices[r, j]]                                            on the device)
    Conv2d, each of the      conv2d_*_reference:        conv_*_direct (from the     im2col_strided (CuPy) + the
    three                    im2col + the linear        images), or im2col_columns  linear kernels (+ col2im_
                             definition (+ col2im)      + the linear kernels        strided), either lowering
    SGD / AdamW steps        sgd_step, adamw_step (elementwise over nnz: one definition,
                             sgd_update/adamw_update, which nn.optim's SGD and AdamW run)

The public functions (``linear_forward``, ``linear_backward``, ``conv2d_forward``,
``conv2d_backward`` and the single products) validate their arguments, then run the
OpenMP kernels for NumPy arrays and the CUDA kernels for CuPy arrays (``cuda_training``:
one launch function per product; every array argument on the device, or TypeError).
Both kinds of kernel work on the batch-last "column" layout (see ``_training_kernels``),
so the public functions transpose the activations once per call; ``linear_backward`` and
``conv2d_backward`` share the transposed input and gradient between both products. On a
GPU the input gradient is always the deterministic gather: over ``transposed``
(``transposed_index`` of the CuPy indices, built on the device once per topology), or
over one built for the call. The CUDA kernels have been compiled with nvcc and run as C++
on the CPU against the definitions (tests/test_cuda_training_source.py), not yet on a GPU.

Invariants (the topology): each row's indices distinct, all in [0, n_in). Every call
checks dtypes, shapes, contiguity and the index range (one O(nnz) pass, against the
O(batch*nnz) products; on a GPU one wait for the device per call); distinctness is
checked by ``check_topology``, once per topology change (a repeated index would simply be
summed, which no dense W represents).

Strides: ``values`` and ``indices`` are the layer's own arrays (updated in place by the
optimizer step), so a non-contiguous one is refused (ValueError) rather than silently
copied; activations ``x`` and ``dy`` (and ``bias``) may have any strides and are copied
into the kernels' layout. Every float argument must have ``values``' dtype (TypeError).
"""

import math

import numpy as np

from . import cuda_training as _cuda
from .backend import array_module, is_cupy_array
from .kernels import col2im_strided, conv_output_size, im2col_strided
from .validation import FLOATING, check_array, check_threads, count

try:
    from . import _training_kernels as _compiled
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only on a broken install
    if exc.name != __package__ + "._training_kernels":
        raise
    raise ImportError("srigl_np's compiled training kernels (srigl_np._training_kernels) are "
                      "not built: rebuild the package with `pip install -e .` (or "
                      "`python setup.py build_ext --inplace`)") from exc

VALUE_DTYPES = (np.float32, np.float64)
INDEX_DTYPES = (np.int16, np.int32)


# -- checks -------------------------------------------------------------------------------

# Dtype objects for the fast acceptance below: ``dtype in`` a tuple of them is an identity
# test, where the scalar types would build a dtype per comparison.
_VALUE_DTYPES = tuple(np.dtype(d) for d in VALUE_DTYPES)
_INDEX_DTYPES = tuple(np.dtype(d) for d in INDEX_DTYPES)


def _check_layer(values, indices):
    # Every call checks the layer: accept NumPy arrays in one expression (~0.3 us), and
    # leave the messages of a refusal to check_array.
    if (type(values) is np.ndarray and type(indices) is np.ndarray
            and values.dtype in _VALUE_DTYPES and values.ndim == 2
            and indices.dtype in _INDEX_DTYPES and indices.shape == values.shape
            and values.flags.c_contiguous and indices.flags.c_contiguous):
        return
    check_array("values", values, dtypes=VALUE_DTYPES, ndim=2, contiguous=True)
    check_array("indices", indices, dtypes=INDEX_DTYPES, shape=values.shape, contiguous=True)


def _check_like(name, a, values, ndim):
    """An activation of ``values``' dtype and ``ndim`` dimensions (any strides)."""
    if type(a) is np.ndarray and a.dtype is values.dtype and a.ndim == ndim:
        return a
    check_array(name, a, dtypes=FLOATING, ndim=ndim)
    if a.dtype != values.dtype:
        raise TypeError(f"{name} must be {values.dtype} like values, got {a.dtype}")
    return a


def _check_bias(bias, values):
    if bias is None:
        return None
    _check_like("bias", bias, values, 1)
    if bias.shape != (values.shape[0],):
        raise ValueError(f"bias must have shape ({values.shape[0]},), got {bias.shape}")
    if type(bias) is np.ndarray and bias.flags.c_contiguous:
        return bias
    return array_module(bias).ascontiguousarray(bias)


def _check_range(indices, n_in):
    """The index range, for the definitions and the CUDA kernels (the compiled CPU
    kernels check it themselves); one transfer from a device."""
    if not indices.size:
        return
    low, high = array_module(indices).stack((indices.min(), indices.max())).tolist()
    if low < 0 or high >= n_in:
        raise ValueError(f"indices must lie in [0, n_in={n_in}), got values in "
                         f"[{low}, {high}]")


def check_topology(indices, n_in):
    """Return ``indices`` after checking the layout invariant once (at a topology
    change): indices[n, k] int16/int32 (int16 only when n_in <= 32768), every index in
    [0, n_in), no index twice in a row. ValueError/TypeError naming ``indices``."""
    check_array("indices", indices, dtypes=INDEX_DTYPES, ndim=2)
    if indices.dtype == np.int16 and n_in > 32768:
        raise TypeError(f"indices must be int32 for n_in={n_in} > 32768, got int16")
    _check_range(indices, n_in)
    ordered = array_module(indices).sort(indices, axis=1)
    if indices.shape[1] > 1 and bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("indices must be distinct within each row (a neuron's k inputs)")
    return indices


def transposed_index(indices, n_in):
    """The stored weights grouped by input, (indptr[n_in + 1], rows[nnz], positions[nnz]):
    pass it as ``transposed=`` to the input gradients to run them as a gather (each
    input's dx row summed in registers and written once) instead of a scatter; same
    sums in the same order, so the same result bit for bit, about 1.5-2.4x faster
    (benchmarks/bench_training_products.py). O(nnz log nnz): build it once per topology
    (at every update); a stale one is refused (ValueError), never read. CuPy indices
    give the same arrays on their device (one device sort, ``cuda_training``)."""
    check_array("indices", indices, dtypes=INDEX_DTYPES, ndim=2, contiguous=True)
    if is_cupy_array(indices):
        n_in = count("n_in", n_in)
        _check_range(indices, n_in)
        return _cuda.transposed_index(indices, n_in)
    return _compiled.transposed_index(indices, n_in)


def _input_grad_columns(values, indices, dyt, n_in, threads, transposed):
    if transposed is None:
        return _compiled.input_grad_columns(values, indices, dyt, n_in, threads)
    return _compiled.input_grad_gather(values, indices, transposed, dyt, n_in, threads)


def _on_device(**arrays):
    """True when any of the named arrays (None skipped) is a CuPy array; then every one
    must be (TypeError naming the first host array): the CUDA launches read them all."""
    if all(a is None or type(a) is np.ndarray for a in arrays.values()):
        return False    # the common case, without a type-name look-up per array
    present = {name: a for name, a in arrays.items() if a is not None}
    if not any(is_cupy_array(a) for a in present.values()):
        return False
    for name, a in present.items():
        check_array(name, a, device="cuda")
    return True


def _columns_of(a):
    """a[rows, cols] -> a^T C-contiguous on a's device: the kernels' column layout."""
    return array_module(a).ascontiguousarray(a.T)


def _device_transposed(indices, n_in, transposed):
    """The transposed index for the device gather: checked when given, else built (one
    device sort of nnz keys per call; pass ``transposed_index``'s to build it once)."""
    if transposed is None:
        return _cuda.transposed_index(indices, n_in)
    _cuda.check_transposed(transposed, indices, n_in)
    return transposed


def _kernel_size(kernel_size):
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, (int, np.integer)) \
        else tuple(kernel_size)
    if len(pair) != 2:
        raise ValueError(f"kernel_size must be an int or a pair, got {kernel_size!r}")
    return pair


def _conv_geometry(values, indices, x, kernel_size, stride, padding):
    """(kh, kw, out_h, out_w) after checking the layer, x[batch, channels, h, w] and that
    n_in = channels*kh*kw bounds the indices."""
    _check_layer(values, indices)
    _check_like("x", x, values, 4)
    kh, kw = _kernel_size(kernel_size)
    out_h = conv_output_size(x.shape[2], kh, stride, padding)
    out_w = conv_output_size(x.shape[3], kw, stride, padding)
    return kh, kw, out_h, out_w


# -- the definitions (the specification; any array module) -----------------------------------

def linear_forward_reference(values, indices, x, bias=None):
    """y[batch, n] with y[b, r] = bias[r] + sum_j values[r, j] * x[b, indices[r, j]].

    values[n, k], indices[n, k] in [0, n_in), x[batch, n_in], bias[n] or None."""
    xp = array_module(values, x)
    y = xp.einsum("brk,rk->br", x[:, indices], values)
    return y if bias is None else y + bias


def linear_input_grad_reference(values, indices, dy, n_in):
    """dx[batch, n_in] with dx[b, i] = sum over (r, j) with indices[r, j] == i of
    dy[b, r] * values[r, j]: the forward's adjoint (dy W for the dense W)."""
    xp = array_module(values, dy)
    batch = dy.shape[0]
    # Every (r, j, b) contribution lands in flat slot indices[r, j] * batch + b of dx^T.
    slots = indices.astype(np.int64)[:, :, None] * batch + xp.arange(batch)
    terms = values[:, :, None] * dy.T[:, None, :]
    summed = xp.bincount(slots.ravel(), weights=terms.ravel(), minlength=n_in * batch)
    return xp.ascontiguousarray(summed.reshape(n_in, batch).T.astype(values.dtype))


def linear_weight_grad_reference(indices, x, dy):
    """dvalues[n, k] with dvalues[r, j] = sum_b dy[b, r] * x[b, indices[r, j]]: the dense
    dW = dy^T x read at the stored positions only."""
    return array_module(x, dy).einsum("br,brk->rk", dy, x[:, indices])


def _rows(dy):
    """dy[batch, n, out_h, out_w] -> [batch*out_h*out_w, n], im2col's row order."""
    return dy.transpose(0, 2, 3, 1).reshape(-1, dy.shape[1])


def conv2d_forward_reference(values, indices, x, kernel_size, stride=1, padding=0,
                             bias=None):
    """y[batch, n, out_h, out_w]: the condensed filters over x[batch, channels, h, w]
    (taps ordered (channel, ki, kj)), defined as im2col then the linear forward."""
    kh, kw = _kernel_size(kernel_size)
    batch, _, height, width = x.shape
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    rows = linear_forward_reference(values, indices, im2col_strided(x, kh, kw, stride, padding),
                                    bias)
    return rows.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)


def conv2d_input_grad_reference(values, indices, dy, x_shape, kernel_size, stride=1,
                                padding=0):
    """dx[x_shape]: the linear input gradient of dy's rows, folded back by col2im."""
    kh, kw = _kernel_size(kernel_size)
    cols = linear_input_grad_reference(values, indices, _rows(dy), x_shape[1] * kh * kw)
    return col2im_strided(cols, x_shape, kh, kw, stride, padding)


def conv2d_weight_grad_reference(indices, x, dy, kernel_size, stride=1, padding=0):
    """dvalues[n, k]: the linear weight gradient over im2col's rows of x and dy's rows."""
    kh, kw = _kernel_size(kernel_size)
    return linear_weight_grad_reference(indices, im2col_strided(x, kh, kw, stride, padding),
                                        _rows(dy))


# -- the public products -----------------------------------------------------------------

def _check_columns(x_columns, shape, values):
    """The column form a forward kept (``keep_columns``), or None."""
    if x_columns is None:
        return None
    _check_like("x_columns", x_columns, values, 2)
    if x_columns.shape != shape:
        raise ValueError(f"x_columns must have shape {shape} (the forward's, for this x), "
                         f"got {x_columns.shape}")
    return x_columns


def linear_forward(values, indices, x, bias=None, threads=0, keep_columns=False):
    """y[batch, n] = x W^T (+ bias) for the condensed W (``linear_forward_reference``).

    values[n, k] float32/float64 and indices[n, k] int16/int32 C-contiguous;
    x[batch, n_in] and bias[n] (or None) of values' dtype, any strides; threads: the
    OpenMP thread count (0 = OpenMP's default). ``keep_columns``: return (y, x_columns),
    x transposed as the kernels read it, for ``linear_backward(x_columns=)`` to skip
    transposing x again (a layer keeps it in place of x). CuPy arrays (all of them, or
    TypeError) run the CUDA kernel (``cuda_training``); threads is then unused."""
    _check_layer(values, indices)
    _check_like("x", x, values, 2)
    bias = _check_bias(bias, values)
    threads = check_threads(threads)
    if _on_device(values=values, indices=indices, x=x, bias=bias):
        _check_range(indices, x.shape[1])
        xt = _columns_of(x)
        y = _columns_of(_cuda._launch_forward(values, indices, xt, bias))
        return (y, xt) if keep_columns else y
    xt = _compiled.transpose(x, threads)
    y = _compiled.transpose(_compiled.forward_columns(values, indices, xt, bias, threads),
                            threads, padded=False)
    return (y, xt) if keep_columns else y


def linear_input_grad(values, indices, dy, n_in, threads=0, transposed=None):
    """dx[batch, n_in] = dy W (``linear_input_grad_reference``); dy[batch, n] any strides;
    ``transposed``: ``transposed_index(indices, n_in)`` to gather instead of scatter. On
    CuPy arrays it is always a gather (built per call when ``transposed`` is None)."""
    _check_layer(values, indices)
    _check_like("dy", dy, values, 2)
    check_array("dy", dy, shape=(None, values.shape[0]))
    n_in = count("n_in", n_in)
    threads = check_threads(threads)
    if _on_device(values=values, indices=indices, dy=dy):
        _check_range(indices, n_in)
        return _columns_of(_cuda._launch_input_grad(
            values, _device_transposed(indices, n_in, transposed), _columns_of(dy), n_in))
    dxt = _input_grad_columns(values, indices, _compiled.transpose(dy, threads), n_in,
                              threads, transposed)
    return _compiled.transpose(dxt, threads, padded=False)


def linear_weight_grad(indices, x, dy, threads=0):
    """dvalues[n, k] = (dy^T x) at the stored positions (``linear_weight_grad_reference``);
    x[batch, n_in], dy[batch, n] of one float dtype, any strides."""
    check_array("indices", indices, dtypes=INDEX_DTYPES, ndim=2, contiguous=True)
    check_array("x", x, dtypes=VALUE_DTYPES, ndim=2)
    _check_like("dy", dy, x, 2)
    check_array("dy", dy, shape=(x.shape[0], indices.shape[0]))
    threads = check_threads(threads)
    if _on_device(indices=indices, x=x, dy=dy):
        _check_range(indices, x.shape[1])
        return _cuda._launch_weight_grad(indices, _columns_of(x), _columns_of(dy))
    return _compiled.weight_grad_columns(indices, _compiled.transpose(x, threads),
                                         _compiled.transpose(dy, threads), threads)


def linear_backward(values, indices, x, dy, threads=0, input_grad=True, transposed=None,
                    x_columns=None):
    """(dx[batch, n_in] or None, dvalues[n, k]): both backward products of a Linear layer
    from its input x and output gradient dy, sharing their transposes. ``input_grad``
    False skips dx (the first layer); ``transposed`` as in ``linear_input_grad``;
    ``x_columns``: what ``linear_forward(x, keep_columns=True)`` returned for this x (it
    must be: a different array of the right shape gives a wrong gradient). The bias
    gradient is dy.sum(0), the caller's."""
    _check_layer(values, indices)
    _check_like("x", x, values, 2)
    _check_like("dy", dy, values, 2)
    if dy.shape != (x.shape[0], values.shape[0]):
        raise ValueError(f"dy must have shape ({x.shape[0]}, {values.shape[0]}), "
                         f"got {dy.shape}")
    threads = check_threads(threads)
    n_in = x.shape[1]
    xt = _check_columns(x_columns, (n_in, x.shape[0]), values)
    if _on_device(values=values, indices=indices, x=x, dy=dy, x_columns=xt):
        _check_range(indices, n_in)
        xt = _columns_of(x) if xt is None else _kept_device_columns(xt)
        dx_t, dvalues = _device_backward(values, indices, xt, _columns_of(dy), n_in,
                                         input_grad, transposed)
        return (None if dx_t is None else _columns_of(dx_t)), dvalues
    dyt = _compiled.transpose(dy, threads)
    dvalues = _compiled.weight_grad_columns(
        indices, _compiled.transpose(x, threads) if xt is None else xt, dyt, threads)
    if not input_grad:
        return None, dvalues
    dxt = _input_grad_columns(values, indices, dyt, n_in, threads, transposed)
    return _compiled.transpose(dxt, threads, padded=False), dvalues


def _kept_device_columns(x_columns):
    """A kept column form on the device, read by the kernels as is: C-contiguous."""
    return check_array("x_columns", x_columns, contiguous=True)


def _device_backward(values, indices, x_columns, dy_t, n_in, input_grad, transposed):
    """(dx_t[n_in, m] or None, dvalues[n, k]) by the CUDA launches from the column forms
    x_columns[n_in, m] and dy_t[n, m]; dx_t is the caller's to lay out."""
    dvalues = _cuda._launch_weight_grad(indices, x_columns, dy_t)
    if not input_grad:
        return None, dvalues
    dx_t = _cuda._launch_input_grad(values, _device_transposed(indices, n_in, transposed),
                                    dy_t, n_in)
    return dx_t, dvalues


LOWERINGS = ("direct", "columns")


def _check_lowering(lowering, **columns_only):
    if lowering not in LOWERINGS:
        raise ValueError(f"lowering must be one of {LOWERINGS}, got {lowering!r}")
    for name, value in columns_only.items():
        if lowering == "direct" and value is not None and value is not False:
            raise ValueError(f"{name} is for lowering='columns'")


def conv2d_forward(values, indices, x, kernel_size, stride=1, padding=0, bias=None,
                   threads=0, lowering="direct", keep_columns=False):
    """y[batch, n, out_h, out_w]: the condensed Conv2d (``conv2d_forward_reference``).

    x[batch, channels, height, width] of values' dtype (any strides); the indices index
    the flattened filter taps, n_in = channels*kh*kw; kernel_size an int or (kh, kw).
    lowering "direct" (the default): straight from the images, each (image, neuron)
    plane summed over the neuron's k taps; "columns": the column matrix
    (``im2col_columns``: channels*kh*kw rows of batch*out_h*out_w) and the linear kernels,
    where ``keep_columns`` returns (y, x_columns) for ``conv2d_backward(x_columns=)``.
    Direct against columns, the cnn's 32->64 3x3 on 26x26 at batch 128, one thread
    (benchmarks/bench_training_products.py): forward 14 against 41 ms at 90%, 5.6
    against 30 ms at 99%; backward 37 against 102 ms and 11 against 82 ms. On CuPy arrays
    either lowering runs im2col_strided and the linear CUDA kernel (no direct GPU kernel);
    ``keep_columns`` (lowering "columns") then returns the device column matrix."""
    _check_lowering(lowering, keep_columns=keep_columns)
    kh, kw, out_h, out_w = _conv_geometry(values, indices, x, kernel_size, stride, padding)
    bias = _check_bias(bias, values)
    threads = check_threads(threads)
    if _on_device(values=values, indices=indices, x=x, bias=bias):
        # Either lowering runs im2col (CuPy) + the linear CUDA kernel on the GPU.
        _check_range(indices, x.shape[1] * kh * kw)
        cols = _columns_of(im2col_strided(x, kh, kw, stride, padding))
        yt = _cuda._launch_forward(values, indices, cols, bias)
        y = array_module(yt).ascontiguousarray(
            yt.reshape(values.shape[0], x.shape[0], out_h, out_w).transpose(1, 0, 2, 3))
        return (y, cols) if keep_columns else y
    if lowering == "direct":
        return _compiled.conv_forward_direct(values, indices, np.ascontiguousarray(x), kh, kw,
                                             stride, padding, bias, threads)
    cols = _compiled.im2col_columns(np.ascontiguousarray(x), kh, kw, stride, padding, threads)
    yt = _compiled.forward_columns(values, indices, cols, bias, threads)
    y = np.ascontiguousarray(
        yt.reshape(values.shape[0], x.shape[0], out_h, out_w).transpose(1, 0, 2, 3))
    return (y, cols) if keep_columns else y


def conv2d_backward(values, indices, x, dy, kernel_size, stride=1, padding=0, threads=0,
                    input_grad=True, lowering="direct", transposed=None, x_columns=None):
    """(dx[x.shape] or None, dvalues[n, k]) of the condensed Conv2d from its input x and
    output gradient dy[batch, n, out_h, out_w] (``conv2d_input_grad_reference``,
    ``conv2d_weight_grad_reference``). lowering "direct": straight from the images (dx:
    each image's planes owned by one thread; dvalues: fixed chunks of images summed in
    order); "columns": the column matrix shared by both products, with
    ``transposed`` (``transposed_index(indices, channels*kh*kw)``) to gather and
    ``x_columns`` (what ``conv2d_forward(x, keep_columns=True)`` returned for this x). On
    CuPy arrays either lowering is im2col_strided, the linear CUDA kernels and
    col2im_strided."""
    _check_lowering(lowering, transposed=transposed, x_columns=x_columns)
    kh, kw, out_h, out_w = _conv_geometry(values, indices, x, kernel_size, stride, padding)
    _check_like("dy", dy, values, 4)
    expected = (x.shape[0], values.shape[0], out_h, out_w)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
    threads = check_threads(threads)
    n_in = x.shape[1] * kh * kw
    cols = _check_columns(x_columns, (n_in, x.shape[0] * out_h * out_w), values)
    if _on_device(values=values, indices=indices, x=x, dy=dy, x_columns=cols):
        # Either lowering: im2col (CuPy), the linear CUDA kernels, col2im (CuPy).
        _check_range(indices, n_in)
        cols = _columns_of(im2col_strided(x, kh, kw, stride, padding)) if cols is None \
            else _kept_device_columns(cols)
        dyt = array_module(dy).ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(
            values.shape[0], -1)
        dcols, dvalues = _device_backward(values, indices, cols, dyt, n_in, input_grad,
                                          transposed)
        dx = None if dcols is None else col2im_strided(dcols.T, x.shape, kh, kw, stride,
                                                        padding)
        return dx, dvalues
    if lowering == "direct":
        return _compiled.conv_backward_direct(values, indices, np.ascontiguousarray(x),
                                               np.ascontiguousarray(dy), kh, kw, stride,
                                               padding, threads, input_grad)
    if cols is None:
        cols = _compiled.im2col_columns(np.ascontiguousarray(x), kh, kw, stride, padding,
                                        threads)
    # dyt[r, (b*out_h + oh)*out_w + ow] = dy[b, r, oh, ow]: the column order of cols.
    dyt = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(values.shape[0], -1)
    dvalues = _compiled.weight_grad_columns(indices, cols, dyt, threads)
    if not input_grad:
        return None, dvalues
    dcols = _input_grad_columns(values, indices, dyt, n_in, threads, transposed)
    return _compiled.col2im_columns(dcols, x.shape, kh, kw, stride, padding, threads), dvalues


# -- optimizer steps on the stored values ----------------------------------------------------

def _check_state(values, grad, **state):
    check_array("values", values, dtypes=VALUE_DTYPES)
    for name, a in (("grad", grad),) + tuple(state.items()):
        _check_like(name, a, values, values.ndim)
        if a.shape != values.shape:
            raise ValueError(f"{name} must have values' shape {values.shape}, got {a.shape}")


def _number(name, value, low, high, high_open=True):
    ok = (isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
          and math.isfinite(value) and (low <= value < high if high_open else low <= value <= high))
    if not ok:
        raise ValueError(f"{name} must be a finite number in [{low}, {high}"
                         f"{')' if high_open else ']'}, got {value!r}")
    return float(value)


def sgd_step(values, grad, momentum_buffer=None, *, lr, momentum=0.0, nesterov=False,
             weight_decay=0.0, scratch=None):
    """One SGD step on the stored values, in place: ``nn.optim.SGD``'s rule (PyTorch's,
    dampening 0) with the same operations in the same order, so a condensed layer's
    values follow the masked dense weights' stored entries bit for bit:

        d = g + weight_decay * p;  buf = momentum * buf + d;
        d = d + momentum * buf if nesterov else buf;  p -= lr * d

    values, grad, momentum_buffer (needed when momentum > 0; updated in place) and
    scratch (optional, to keep the step allocation-free) of one shape and dtype."""
    lr = _number("lr", lr, 0.0, math.inf)
    if lr == 0.0:
        raise ValueError("lr must be > 0, got 0")
    momentum = _number("momentum", momentum, 0.0, 1.0)
    weight_decay = _number("weight_decay", weight_decay, 0.0, math.inf)
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov momentum needs momentum > 0, got momentum 0")
    if momentum and momentum_buffer is None:
        raise ValueError("momentum_buffer is required when momentum > 0")
    state = {"momentum_buffer": momentum_buffer} if momentum else {}
    if scratch is not None:
        state["scratch"] = scratch
    _check_state(values, grad, **state)
    d = array_module(values).empty_like(values) if scratch is None else scratch
    sgd_update(values, grad, d, momentum_buffer, lr=lr, momentum=momentum,
               nesterov=nesterov, weight_decay=weight_decay)
    return values


def sgd_update(p, g, d, momentum_buffer, *, lr, momentum, nesterov, weight_decay):
    """The SGD rule of ``sgd_step`` and ``nn.optim.SGD`` on arrays already checked: p,
    momentum_buffer (None without momentum) updated in place, d scratch, all one shape.
    The one place the rule's operations and their order are written."""
    xp = array_module(p)
    if weight_decay:
        xp.multiply(p, weight_decay, out=d)
        d += g
    else:
        d[...] = g
    if momentum:
        momentum_buffer *= momentum
        momentum_buffer += d
        if nesterov:
            d += momentum * momentum_buffer
        else:
            d[...] = momentum_buffer
    d *= lr
    p -= d


def adamw_step(values, grad, exp_avg, exp_avg_sq, *, step, lr, betas=(0.9, 0.999), eps=1e-8,
               weight_decay=0.01, scratch=None):
    """One AdamW step on the stored values and their moments, in place: ``nn.optim.AdamW``'s
    rule (PyTorch's) with the same operations in the same order. ``step`` is the step
    number counted from 1 (the optimizer's step_count after its increment).

        p *= 1 - lr * weight_decay;  m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)"""
    lr = _number("lr", lr, 0.0, math.inf)
    if lr == 0.0:
        raise ValueError("lr must be > 0, got 0")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair, got {betas!r}")
    beta1 = _number("betas[0]", betas[0], 0.0, 1.0)
    beta2 = _number("betas[1]", betas[1], 0.0, 1.0)
    eps = _number("eps", eps, 0.0, math.inf)
    weight_decay = _number("weight_decay", weight_decay, 0.0, math.inf)
    state = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    if scratch is not None:
        state["scratch"] = scratch
    _check_state(values, grad, **state)
    d = array_module(values).empty_like(values) if scratch is None else scratch
    adamw_update(values, grad, d, exp_avg, exp_avg_sq, step=step, lr=lr, betas=(beta1, beta2),
                 eps=eps, weight_decay=weight_decay)
    return values


def adamw_update(p, g, d, exp_avg, exp_avg_sq, *, step, lr, betas, eps, weight_decay):
    """The AdamW rule of ``adamw_step`` and ``nn.optim.AdamW`` on arrays already checked:
    p and the moments updated in place, d scratch, all one shape; step counted from 1.
    The one place the rule's operations and their order are written."""
    xp = array_module(p)
    beta1, beta2 = betas
    step_size = lr / (1.0 - beta1 ** step)
    sqrt_correction2 = math.sqrt(1.0 - beta2 ** step)
    if weight_decay:
        p *= 1.0 - lr * weight_decay
    exp_avg *= beta1
    xp.multiply(g, 1.0 - beta1, out=d)
    exp_avg += d
    exp_avg_sq *= beta2
    xp.multiply(g, g, out=d)
    d *= 1.0 - beta2
    exp_avg_sq += d
    xp.sqrt(exp_avg_sq, out=d)
    d /= sqrt_correction2
    d += eps
    xp.divide(exp_avg, d, out=d)
    d *= step_size
    p -= d


# -- max pooling ----------------------------------------------------------------------------

def maxpool_tiled(x, kh, kw, threads=0):
    """(y, winner) of a max pool whose kh x kw windows tile x[batch, channels, H, W]
    (stride = window; NumPy float32/float64, any strides): y[b, c, H/kh, W/kw] and
    winner (uint8, y's shape), the row-major cell a*kw + b of each window's first maximum
    (a NaN wins). The compiled override of ``nn.pooling.MaxPool2d``'s tiled path, which
    is the definition."""
    return _compiled.maxpool_tiled(np.ascontiguousarray(x), kh, kw, check_threads(threads))


def maxpool_tiled_grad(grad_out, winner, kh, kw, threads=0):
    """dx[batch, channels, H, W] of ``maxpool_tiled``: grad_out at each window's winner."""
    return _compiled.maxpool_tiled_grad(np.ascontiguousarray(grad_out), winner, kh, kw,
                                        check_threads(threads))


# -- elementwise layers: ReLU and dropout ---------------------------------------------------

def _compiled_elementwise(*arrays):
    """True when the compiled pass applies: NumPy float32/float64 C-contiguous arrays of
    one dtype (anything else runs the definition)."""
    first = arrays[0]
    return all(type(a) is np.ndarray and a.dtype == first.dtype and a.flags.c_contiguous
               for a in arrays) and first.dtype in VALUE_DTYPES


def relu(x, inplace=False):
    """max(x, 0) elementwise, into x when ``inplace``. Defined by ``np.maximum(x, 0)``
    (a NaN kept); one compiled pass with the same bits for NumPy float32/float64
    C-contiguous arrays, about 2x faster."""
    if _compiled_elementwise(x):
        return _compiled.relu(x, x if inplace else np.empty_like(x))
    return array_module(x).maximum(x, 0, out=x if inplace else None)


def relu_grad(grad_out, y, inplace=False):
    """dL/dx of ``relu``: grad_out * (y > 0) (y: relu's output), into grad_out when
    ``inplace``; the compiled pass as ``relu``'s."""
    if _compiled_elementwise(grad_out, y) and grad_out.shape == y.shape:
        return _compiled.relu_grad(grad_out, y, grad_out if inplace else np.empty_like(grad_out))
    return array_module(grad_out).multiply(grad_out, y > 0,
                                           out=grad_out if inplace else None)


def dropout_threshold(p):
    """The 32-bit threshold of drop probability p in [0, 1): an element is dropped when
    its 32 random bits are below it, so P(drop) = round(p * 2**32) / 2**32 (exact for p
    a multiple of 2**-32, e.g. 0.25 or 0.5; within 2**-33 of p otherwise)."""
    return min(int(round(p * 2**32)), 2**32)


def dropout_bits(key, n, xp=np):
    """uint64[n] holding 32 random bits each: element i's are the high half of
    SplitMix64's finaliser of key + (i + 1) * 0x9E3779B97F4A7C15 (mod 2**64), a
    counter-based stream: any element is drawn without the others, so threads and
    devices draw the same bits, and a backward pass recomputes a forward's mask from its
    key. The definition of dropout's randomness (``dropout``)."""
    z = xp.arange(1, n + 1, dtype=xp.uint64) * xp.uint64(_compiled.DROPOUT_MULTIPLIER)
    z += xp.uint64(key)
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(0x94D049BB133111EB)
    return (z ^ (z >> xp.uint64(31))) >> xp.uint64(32)


def dropout(x, key, p):
    """Inverted dropout of x with the mask of ``key``: x * (bits >= dropout_threshold(p))
    / (1 - p), ``bits = dropout_bits(key, x.size)`` in x's C order; the scale is rounded
    to x's dtype first (a float dtype; anything else computes in float32). The same key
    gives the same mask, so the backward pass is ``dropout(grad_out, key, p)``. One
    compiled pass with the same bits for NumPy float32/float64 C-contiguous x; the
    definition elsewhere (CuPy draws the same bits on the device)."""
    threshold = dropout_threshold(p)
    if _compiled_elementwise(x):
        return _compiled.dropout(x, np.empty_like(x), key, threshold, 1.0 / (1.0 - p))
    xp = array_module(x)
    dtype = x.dtype if x.dtype in VALUE_DTYPES else np.dtype(np.float32)
    keep = (dropout_bits(key, x.size, xp) >= threshold).reshape(x.shape)
    return x * xp.multiply(keep, dtype.type(1.0 / (1.0 - p)), dtype=dtype)
