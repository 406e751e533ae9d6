"""The kernels' one front door: each operation defined once, with the fast paths that override it.

    operation                  definition (any array module)   CPU override (NumPy)        GPU override (CuPy)
    condensed product          condensed_reference             _kernels.condensed_matmul   cuda.condensed_product
    condensed convolution      im2col + the condensed product  _kernels.condensed_conv2d   (the definition)
    depthwise convolution      depthwise_reference             _kernels.depthwise_conv2d   (the definition)
    im2col / col2im            im2col_strided / col2im_strided _kernels.im2col / col2im    (the definition)
    max pooling (inference)    pooling.MaxPool2d.forward       _kernels.max_pool2d         (the definition)
    GELU, LayerNorm (float32)  stages.Gelu / LayerNorm         _kernels.gelu / layer_norm  (the definition)
    softmax (float32)          graph.Attention's NumPy lines   _kernels.softmax            (the definition)

The pattern is thinc's ``Ops`` / ``NumpyOps`` / ``CupyOps``: the plain array-module
function *is* the specification; the Cython kernels override it for NumPy arrays and the
CUDA kernels for CuPy arrays, and the dispatchers here (``condensed_product``, ``im2col``,
``col2im``) pick the override from the type of their arguments, falling back to the
definition where no override applies (an empty layer). Callers, stages and layers call
only these, so no forward pass exists twice. The tests run one case list over every
backend (tests/test_condensed_kernels.py).

Every kernel is entered with validated, immutable weights (``CondensedWeights`` on the
CPU, ``cuda.CudaCondensedWeights`` on the GPU): no public function takes raw indices.
CuPy is imported only when a CuPy array or GPU weights object arrives.

The CPU override comes in one variant per instruction set, its "CPU path" (``avx512``,
``avx2``, ``generic``), all in one portable build: ``cpu_path()`` is the one running (the
best the CPU supports, picked at import), ``cpu_paths()`` those available and
``set_cpu_path(name)`` switches (tests and benchmarks run each). At batch 1 the avx512
path has a table lookup in registers, which it runs where that pays, and the x86 paths
the interleaved rows (8 rows a step, no hardware gather), which the avx2 path runs for
layers of 8 rows or more and the avx512 path where the lookup does not pay; the rest runs
a gather-dot per row (``vector_kernel(weights)`` names the one a layer gets).
"""

# The compiled module is imported first, so that an unbuilt tree says so before anything
# else it needs (numpy, through the modules below) can fail first.
try:
    from ._kernels import (  # noqa: F401
        CondensedWeights,
        col2im as _col2im_cpu,
        column_block_width,
        condensed_conv2d as _condensed_conv2d_cpu,
        depthwise_conv2d as _depthwise_conv2d_cpu,
        gelu,
        condensed_matmul,
        condensed_matvec,
        conv_output_size,
        cpu_path,
        cpu_paths,
        im2col as _im2col_cpu,
        layer_norm,
        max_pool2d,
        max_threads,
        openmp_enabled,
        set_cpu_path,
        softmax,
        tile_vectors,
        vector_kernel,
    )
except ModuleNotFoundError as exc:  # pragma: no cover - exercised only on a broken install
    if exc.name != __package__ + "._kernels":
        raise  # the extension is there but something it needs (numpy) is not
    import os

    _tree = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _hint = ""
    if os.path.exists(os.path.join(_tree, "setup.py")):
        # `pip install .` builds into site-packages, but Python imports the package from
        # the current directory first, so running from the checkout finds no extension.
        _hint = (f" This is the unbuilt source tree in {_tree}: build it in place with "
                 "`pip install -e .`, or run from another directory to use a copy "
                 "installed with `pip install .`.")
    raise ImportError(
        "srigl_np's compiled kernels (srigl_np._kernels) are not built. Install the "
        "package with `pip install .` or `pip install -e .` from the source tree "
        "(needs a C compiler, Cython >= 3 and numpy >= 2)." + _hint
    ) from exc

from .backend import array_module, is_cupy_array  # noqa: E402
from .validation import FLOATING, INTEGER, check_array  # noqa: E402


# -- the condensed product -----------------------------------------------------------

def condensed_reference(values, indices, x, bias=None):
    """The definition of the condensed product, in plain array operations.

    values[n_active, k], indices[n_active, k] (each in [0, n_in)), x[batch, n_in],
    bias[n_active] or None -> y[batch, n_active] with
        y[b, r] = bias[r] + sum_j values[r, j] * x[b, indices[r, j]]
    in the dtype NumPy's promotion gives (float32 for float32 operands). Works on any
    array module; O(batch * n_active * k) memory, so it is the specification and the
    fallback for empty layers, not a fast path. Its indices are checked on every call
    (NumPy would wrap a negative one), since no validated weights object stands before it.
    """
    check_array("values", values, dtypes=FLOATING, ndim=2)
    check_array("indices", indices, dtypes=INTEGER, shape=values.shape)
    check_array("x", x, dtypes=FLOATING, ndim=2)
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= x.shape[1]):
        raise ValueError(f"indices must lie in [0, n_in={x.shape[1]}), got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    if bias is not None:
        check_array("bias", bias, dtypes=FLOATING, shape=(values.shape[0],))
    xp = array_module(values, indices, x)
    y = xp.einsum("brk,rk->br", x[:, indices], values)
    return y if bias is None else y + bias


def condensed_product(weights, x, bias=None, threads=0):
    """y[batch, n_active] = x @ W.T (+ bias) for condensed weights W, on their device.

    weights: a ``CondensedWeights`` (x a NumPy array: the OpenMP kernels, ``threads``
    of them, 0 = OpenMP's default) or a ``cuda.CudaCondensedWeights`` (x a CuPy array:
    the CUDA kernels; ``threads`` unused). x[batch, n_in] of any float dtype and
    strides is converted to C-contiguous float32; bias[n_active] float32 or None;
    y is float32. Weights and x on different devices are a TypeError.

    A fully dense layer (k == n_in) runs the same kernels, not BLAS. Alone, BLAS was
    at most 1.3x faster on one thread and about even on two (Zen 5, batch 256, 2
    threads: 768 -> 3072 5.6-5.7 ms by BLAS against 5.7-6.9 ms, 1024 -> 128 0.32-0.35
    against 0.30-0.31 ms); but
    BLAS's thread pool and the kernels' OpenMP team, called one after the other, fight
    for the cores while the idle one spins: a condensed 768 -> 3072 layer followed by a
    dense 3072 -> 768 one by BLAS took 17.2-18.7 ms at batch 256 on 2 threads against
    7.4-7.8 ms for the two alone.
    """
    if isinstance(weights, CondensedWeights):
        if is_cupy_array(x):
            raise TypeError("x is a CuPy array but the weights live on the CPU: move the "
                            "layer with .to('cuda') or the input with .get()")
        return condensed_matmul(weights, x, bias, threads)
    from . import cuda

    if isinstance(weights, cuda.CudaCondensedWeights):
        return cuda.condensed_product(weights, x, bias)
    raise TypeError(f"weights must be a CondensedWeights or cuda.CudaCondensedWeights, "
                    f"got {type(weights).__name__}")


# -- the condensed convolution ---------------------------------------------------------

def condensed_conv(weights, x, kernel_size, stride=1, padding=0, bias=None, threads=0, *,
                   relu=False, residual=None, out=None):
    """y[batch, n_active, out_h, out_w]: a condensed Conv2d of x[batch, channels, h, w].

    weights: condensed weights over the flattened filters (n_in = channels*kh*kw, taps
    ordered (channel, ki, kj)); kernel_size (kh, kw); bias[n_active] float32 or None;
    float32 out, NCHW in and out. Keyword-only epilogue, for a condensed graph that
    folds BatchNorm into values and bias: ``residual`` (an array of y's shape, added
    after the bias) and ``relu`` (applied last), so ``relu(conv(x) + bias + residual)``
    (a ResNet block's last convolution and its shortcut add) is one call. ``out``
    (keyword, NumPy only): a float32 array of y's shape to write into and return, which
    may be ``residual`` itself (``out=identity`` adds in place); see
    ``_kernels.condensed_conv2d``.

    The definition is im2col followed by the condensed product, the rows then put back
    in NCHW order (the CuPy path); NumPy input takes the CPU kernel, which packs the
    transposed im2col of one tile of output pixels at a time (in cache) and fuses the
    epilogue into its stores (``_kernels.condensed_conv2d``).
    """
    kh, kw = kernel_size
    if isinstance(weights, CondensedWeights) and not is_cupy_array(x):
        return _condensed_conv2d_cpu(weights, x, kh, kw, stride, padding, bias, threads,
                                     relu=relu, residual=residual, out=out)
    if out is not None:
        raise TypeError("out is for NumPy input (the CPU kernel) only")
    xp = array_module(x)
    batch, _, height, width = x.shape
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    rows = condensed_product(weights, im2col(x, kh, kw, stride, padding, threads), bias,
                             threads)
    y = xp.ascontiguousarray(
        rows.reshape(batch, out_h, out_w, rows.shape[1]).transpose(0, 3, 1, 2))
    return _epilogue(y, relu, residual)


def _epilogue(y, relu, residual):
    """The definition of the fused epilogue: relu(y + residual), each part when asked."""
    if residual is not None:
        check_array("residual", residual, dtypes=(y.dtype,), shape=y.shape)
        y += residual
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    if relu:
        xp = array_module(y)
        y = xp.where(y < 0, xp.zeros((), y.dtype), y)
    return y


# -- the depthwise convolution ---------------------------------------------------------

def depthwise_reference(weight, x, stride=1, padding=0, bias=None, *, relu=False):
    """The definition of the depthwise convolution (groups == channels), any array module.

    weight[channels, 1, kh, kw] or [channels, kh, kw]; x[batch, channels, height, width];
    bias[channels] or None -> y[batch, channels, out_h, out_w],
        y[b, c] = relu?(bias[c] + sum_{i, j} weight[c, i, j] * padded[b, c, oh*s + i, ow*s + j]).
    One strided slice of the padded input per filter tap.
    """
    xp = array_module(x)
    weight = weight.reshape(weight.shape[0], weight.shape[-2], weight.shape[-1])
    batch, channels, height, width = x.shape
    kh, kw = weight.shape[1:]
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    padded = xp.zeros((batch, channels, height + 2 * padding, width + 2 * padding),
                      dtype=x.dtype)
    padded[:, :, padding:padding + height, padding:padding + width] = x
    y = xp.zeros((batch, channels, out_h, out_w), dtype=xp.result_type(x, weight))
    for i in range(kh):
        for j in range(kw):
            y += weight[None, :, i, j, None, None] * _tap(padded, i, j, stride, out_h, out_w)
    if bias is not None:
        y += bias[None, :, None, None]
    return _epilogue(y, relu, None)


def depthwise_conv(weight, x, stride=1, padding=0, bias=None, threads=0, *, relu=False):
    """y[batch, channels, out_h, out_w]: a depthwise Conv2d (groups == channels, dense
    kh x kw filters, as MobileNet-V3 uses) of x[batch, channels, h, w], NCHW in and out.

    weight[channels, 1, kh, kw] (torch's layout) or [channels, kh, kw] float32;
    bias[channels] float32 or None; ``relu`` (keyword) fuses a ReLU. NumPy input runs
    ``_kernels.depthwise_conv2d`` (one vectorised pass per tap over each plane, parallel
    over (image, channel) planes, ``threads`` of them); CuPy input the definition,
    ``depthwise_reference``.
    """
    if is_cupy_array(x):
        return depthwise_reference(weight, x, stride, padding, bias, relu=relu)
    return _depthwise_conv2d_cpu(weight, x, stride, padding, bias, threads, relu=relu)


# -- image patches ---------------------------------------------------------------------

def _tap(padded, i, j, stride, out_h, out_w):
    """padded[:, :, oh*stride + i, ow*stride + j] for every output pixel: (b, c, out_h, out_w)."""
    return padded[:, :, i:i + stride * (out_h - 1) + 1:stride,
                  j:j + stride * (out_w - 1) + 1:stride]


def im2col_strided(x, kh, kw, stride=1, padding=0):
    """The definition of im2col, for any array module (the CuPy path).

    x: (batch, channels, height, width) -> cols: (batch*out_h*out_w, channels*kh*kw),
    row (b*out_h + oh)*out_w + ow, columns ordered (c, ki, kj), like the Cython kernel.
    Python loops over the kh*kw kernel taps only; each tap is one strided copy of the
    whole (padded) input.
    """
    xp = array_module(x)
    batch, channels, height, width = x.shape
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    if padding:
        padded = xp.zeros((batch, channels, height + 2 * padding, width + 2 * padding),
                          dtype=x.dtype)
        padded[:, :, padding:padding + height, padding:padding + width] = x
    else:
        padded = x
    cols = xp.empty((batch, out_h, out_w, channels, kh, kw), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[..., i, j] = _tap(padded, i, j, stride, out_h, out_w).transpose(0, 2, 3, 1)
    return cols.reshape(batch * out_h * out_w, channels * kh * kw)


def col2im_strided(cols, x_shape, kh, kw, stride=1, padding=0):
    """The definition of col2im, for any array module: the adjoint of im2col_strided.

    cols: (batch*out_h*out_w, channels*kh*kw) -> x: x_shape, C-contiguous; overlapping
    windows sum. Within one kernel tap no two output pixels read the same input pixel,
    so each tap is one strided in-place add (no scatter-add needed).
    """
    xp = array_module(cols)
    batch, channels, height, width = x_shape
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    cols6 = cols.reshape(batch, out_h, out_w, channels, kh, kw)
    padded = xp.zeros((batch, channels, height + 2 * padding, width + 2 * padding),
                      dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = _tap(padded, i, j, stride, out_h, out_w)
            tap += cols6[..., i, j].transpose(0, 3, 1, 2)
    if not padding:
        return padded
    return xp.ascontiguousarray(padded[:, :, padding:padding + height, padding:padding + width])


def im2col(x, kh, kw, stride=1, padding=0, threads=0, out=None):
    """x[batch, channels, height, width] -> cols[batch*out_h*out_w, channels*kh*kw].

    NumPy input runs the Cython kernel (``threads``, and ``out`` to refill a buffer; see
    ``_kernels.im2col``); CuPy input runs ``im2col_strided`` (a new array each call).
    """
    if is_cupy_array(x):
        return im2col_strided(x, kh, kw, stride, padding)
    return _im2col_cpu(x, kh, kw, stride, padding, threads, out)


def col2im(cols, x_shape, kh, kw, stride=1, padding=0, threads=0):
    """The adjoint of ``im2col``: the Cython kernel for NumPy, ``col2im_strided`` for CuPy."""
    if is_cupy_array(cols):
        return col2im_strided(cols, x_shape, kh, kw, stride, padding)
    return _col2im_cpu(cols, x_shape, kh, kw, stride, padding, threads)
