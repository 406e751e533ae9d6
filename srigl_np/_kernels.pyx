# cython: language_level=3
"""Compiled kernels of srigl_np (the project's one Cython module).

Design
------
* Each public ``def`` validates its arguments in Python (dtype, contiguity, shapes,
  index ranges) and allocates the output; only then does it call a private typed
  ``cdef ... nogil`` function that trusts its input. No kernel re-validates inside
  a loop, and no kernel can read out of bounds when called through its ``def``.
* Parallelism is OpenMP ``prange`` over independent work items (images of a batch,
  output rows); every work item writes a disjoint slice of the output, so no
  atomics or reductions across threads are needed.
* ``threads=0`` means OpenMP's default (``omp_get_max_threads()``). Callers that
  may also run BLAS should hold BLAS to one thread (``threadpoolctl``) so the two
  pools never multiply.
* Built without OpenMP (e.g. Apple clang) everything still works, single-threaded;
  ``openmp_enabled()`` reports which build this is.

Each kernel's header lists its arrays with shapes in brackets, e.g. ``x[batch, n_in]``.
"""

from cython.parallel cimport prange
from cython cimport floating

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define SRIGL_NP_OPENMP 1
    #else
    #define SRIGL_NP_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int SRIGL_NP_OPENMP
    int omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """True when this build of the kernels was compiled with OpenMP."""
    return bool(SRIGL_NP_OPENMP)


def max_threads():
    """OpenMP's default thread count (1 in a build without OpenMP)."""
    return omp_get_max_threads()


cdef int _resolve_threads(int threads) except -1:
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 = OpenMP default), got {threads}")
    return threads if threads > 0 else omp_get_max_threads()


def _check_float_array(name, a, ndim):
    if not hasattr(a, "dtype") or not hasattr(a, "ndim"):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{name} must be float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def conv_output_size(int size, int kernel, int stride, int padding):
    """Spatial output size of a convolution or pool: floor((size + 2p - kernel) / s) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def _check_conv_geometry(int height, int width, int kh, int kw, int stride, int padding):
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel size must be >= 1, got ({kh}, {kw})")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    out_h = conv_output_size(height, kh, stride, padding)
    out_w = conv_output_size(width, kw, stride, padding)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"kernel ({kh}, {kw}) with padding {padding} does not fit input ({height}, {width})")
    return out_h, out_w


# ---------------------------------------------------------------------------
# im2col / col2im for Conv2d
#
# The column matrix puts one output pixel per row and one (channel, ki, kj) tap
# per column, so a convolution is one GEMM: out[rows, c_out] = cols @ W.T with
# W[c_out, c_in*kh*kw] the flattened filter bank, exactly the layout a conv
# weight's constant fan-in is defined over.
# ---------------------------------------------------------------------------

cdef void _im2col_image(const floating[:, :, :, ::1] x, floating[:, ::1] cols, Py_ssize_t b,
                        int kh, int kw, int stride, int padding,
                        Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    cdef Py_ssize_t channels = x.shape[1], height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t oh, ow, c, i, j, h, w, row, col
    for oh in range(out_h):
        for ow in range(out_w):
            row = (b * out_h + oh) * out_w + ow
            col = 0
            for c in range(channels):
                for i in range(kh):
                    h = oh * stride - padding + i
                    for j in range(kw):
                        w = ow * stride - padding + j
                        if 0 <= h < height and 0 <= w < width:
                            cols[row, col] = x[b, c, h, w]
                        else:
                            cols[row, col] = 0
                        col = col + 1


cdef void _col2im_image(const floating[:, ::1] cols, floating[:, :, :, ::1] x, Py_ssize_t b,
                        int kh, int kw, int stride, int padding,
                        Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    cdef Py_ssize_t channels = x.shape[1], height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t oh, ow, c, i, j, h, w, row, col
    for oh in range(out_h):
        for ow in range(out_w):
            row = (b * out_h + oh) * out_w + ow
            col = 0
            for c in range(channels):
                for i in range(kh):
                    h = oh * stride - padding + i
                    for j in range(kw):
                        w = ow * stride - padding + j
                        if 0 <= h < height and 0 <= w < width:
                            x[b, c, h, w] += cols[row, col]
                        col = col + 1


cdef void _im2col(const floating[:, :, :, ::1] x, floating[:, ::1] cols, int kh, int kw,
                  int stride, int padding, Py_ssize_t out_h, Py_ssize_t out_w,
                  int threads) noexcept nogil:
    cdef Py_ssize_t b
    for b in prange(x.shape[0], schedule="static", num_threads=threads):
        _im2col_image(x, cols, b, kh, kw, stride, padding, out_h, out_w)


cdef void _col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x, int kh, int kw,
                  int stride, int padding, Py_ssize_t out_h, Py_ssize_t out_w,
                  int threads) noexcept nogil:
    cdef Py_ssize_t b
    for b in prange(x.shape[0], schedule="static", num_threads=threads):
        _col2im_image(cols, x, b, kh, kw, stride, padding, out_h, out_w)


def im2col(x, int kh, int kw, int stride=1, int padding=0, int threads=0):
    """Unfold image patches into rows.

    x[batch, channels, height, width] (float32/float64, C-contiguous)
    -> cols[batch*out_h*out_w, channels*kh*kw], same dtype; taps outside the
    image (padding) are 0. Row ``(b*out_h + oh)*out_w + ow`` holds the patch of
    output pixel (oh, ow) of image b, columns ordered (channel, ki, kj).
    Parallel over the batch.
    """
    _check_float_array("x", x, 4)
    batch, channels, height, width = x.shape
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, padding)
    cdef int n_threads = _resolve_threads(threads)
    cols = np.empty((batch * out_h * out_w, channels * kh * kw), dtype=x.dtype)
    if x.dtype == np.float32:
        _im2col[float](x, cols, kh, kw, stride, padding, out_h, out_w, n_threads)
    else:
        _im2col[double](x, cols, kh, kw, stride, padding, out_h, out_w, n_threads)
    return cols


def col2im(cols, x_shape, int kh, int kw, int stride=1, int padding=0, int threads=0):
    """Fold rows back into images, summing overlapping taps (the adjoint of im2col).

    cols[batch*out_h*out_w, channels*kh*kw] (float32/float64, C-contiguous)
    -> x[batch, channels, height, width] with x_shape = (batch, channels, height, width).
    Taps that fell in the padding are dropped. Parallel over the batch.
    """
    _check_float_array("cols", cols, 2)
    if len(x_shape) != 4 or any(int(s) < 1 for s in x_shape):
        raise ValueError(f"x_shape must be 4 positive sizes, got {tuple(x_shape)}")
    batch, channels, height, width = (int(s) for s in x_shape)
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, padding)
    expected = (batch * out_h * out_w, channels * kh * kw)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected} for x_shape {tuple(x_shape)}, "
                         f"got {cols.shape}")
    cdef int n_threads = _resolve_threads(threads)
    x = np.zeros((batch, channels, height, width), dtype=cols.dtype)
    if cols.dtype == np.float32:
        _col2im[float](cols, x, kh, kw, stride, padding, out_h, out_w, n_threads)
    else:
        _col2im[double](cols, x, kh, kw, stride, padding, out_h, out_w, n_threads)
    return x
