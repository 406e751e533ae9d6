# cython: language_level=3
"""Compiled kernels of the condensed training products (forward, input gradient, weight
gradient of a constant fan-in layer), beside the inference kernels of ``_kernels``.

Design
------
* Everything works on column arrays, the batch axis last: xt[n_in, m], yt / dyt[n, m]
  (m = batch for a Linear, batch*out_h*out_w for a Conv2d), so the loops over the m
  columns are unit-stride vector loops and a neuron's k weights gather (forward, weight
  gradient) or scatter (input gradient) whole rows. ``srigl_np.training_kernels`` does
  the transposes (``transpose``, ``im2col_columns``) and is the public face.
* Each ``def`` checks what memory safety needs (dtypes, C-contiguity, shapes, every
  index in [0, n_in), one O(nnz) pass without the GIL) and allocates the output; a
  private ``nogil`` function then runs OpenMP ``prange`` loops over work items that
  write disjoint parts of the output, so no atomics are needed:
    forward        items (column block, neuron): each writes yt[neuron, block]
                   (``column_block``: the xt block a neuron gathers from stays in L2);
    input gradient items column blocks: each owns dxt[:, block] and scatters every
                   neuron into it, neurons in order (the same sum for any thread count);
    weight grad.   items (column segment, neuron): each writes partial[segment, neuron, :],
                   the segments then summed in order (their width depends on n_in and
                   the dtype only, so the result does not depend on the thread count).
* The inner loops are C (``_training_kernels.h``: fixed-width lane blocks, compiled per
  instruction set with ``target_clones`` where the toolchain has it).
* ``threads=0`` means the default team (``thread_policy.resolve_threads``).
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport int16_t, int32_t, int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

import numpy as np

from srigl_np import thread_policy
from srigl_np.thread_policy import resolve_threads, team_size

cdef extern from "_training_kernels.h":
    int SRIGL_TRAIN_OPENMP
    int omp_get_max_threads() noexcept nogil

    void srigl_train_forward_f32_i16(const float* v, const int16_t* idx, Py_ssize_t k,
                                     const float* xt, Py_ssize_t ldx, float bias, float* yt,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f32_i32(const float* v, const int32_t* idx, Py_ssize_t k,
                                     const float* xt, Py_ssize_t ldx, float bias, float* yt,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f64_i16(const double* v, const int16_t* idx, Py_ssize_t k,
                                     const double* xt, Py_ssize_t ldx, double bias,
                                     double* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f64_i32(const double* v, const int32_t* idx, Py_ssize_t k,
                                     const double* xt, Py_ssize_t ldx, double bias,
                                     double* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil

    void srigl_train_scatter_f32_i16(const float* v, const int16_t* idx, Py_ssize_t k,
                                     const float* dyt, float* dxt, Py_ssize_t ldx,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_scatter_f32_i32(const float* v, const int32_t* idx, Py_ssize_t k,
                                     const float* dyt, float* dxt, Py_ssize_t ldx,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_scatter_f64_i16(const double* v, const int16_t* idx, Py_ssize_t k,
                                     const double* dyt, double* dxt, Py_ssize_t ldx,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_scatter_f64_i32(const double* v, const int32_t* idx, Py_ssize_t k,
                                     const double* dyt, double* dxt, Py_ssize_t ldx,
                                     Py_ssize_t c0, Py_ssize_t c1) noexcept nogil

    void srigl_train_sddmm_f32_i16(const int16_t* idx, Py_ssize_t k, const float* dyt,
                                   const float* xt, Py_ssize_t ldx, Py_ssize_t c0,
                                   Py_ssize_t c1, float* out) noexcept nogil
    void srigl_train_sddmm_f32_i32(const int32_t* idx, Py_ssize_t k, const float* dyt,
                                   const float* xt, Py_ssize_t ldx, Py_ssize_t c0,
                                   Py_ssize_t c1, float* out) noexcept nogil
    void srigl_train_sddmm_f64_i16(const int16_t* idx, Py_ssize_t k, const double* dyt,
                                   const double* xt, Py_ssize_t ldx, Py_ssize_t c0,
                                   Py_ssize_t c1, double* out) noexcept nogil
    void srigl_train_sddmm_f64_i32(const int32_t* idx, Py_ssize_t k, const double* dyt,
                                   const double* xt, Py_ssize_t ldx, Py_ssize_t c0,
                                   Py_ssize_t c1, double* out) noexcept nogil

    # The forward and SDDMM with 64-byte vectors (AVX-512), run when srigl_train_wide().
    void srigl_train_forward_f32_i16_wide(
            const float* v, const int16_t* idx, Py_ssize_t k, const float* xt,
            Py_ssize_t ldx, float bias, float* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f32_i32_wide(
            const float* v, const int32_t* idx, Py_ssize_t k, const float* xt,
            Py_ssize_t ldx, float bias, float* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f64_i16_wide(
            const double* v, const int16_t* idx, Py_ssize_t k, const double* xt,
            Py_ssize_t ldx, double bias, double* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil
    void srigl_train_forward_f64_i32_wide(
            const double* v, const int32_t* idx, Py_ssize_t k, const double* xt,
            Py_ssize_t ldx, double bias, double* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil

    void srigl_train_sddmm_f32_i16_wide(
            const int16_t* idx, Py_ssize_t k, const float* dyt, const float* xt,
            Py_ssize_t ldx, Py_ssize_t c0, Py_ssize_t c1, float* out) noexcept nogil
    void srigl_train_sddmm_f32_i32_wide(
            const int32_t* idx, Py_ssize_t k, const float* dyt, const float* xt,
            Py_ssize_t ldx, Py_ssize_t c0, Py_ssize_t c1, float* out) noexcept nogil
    void srigl_train_sddmm_f64_i16_wide(
            const int16_t* idx, Py_ssize_t k, const double* dyt, const double* xt,
            Py_ssize_t ldx, Py_ssize_t c0, Py_ssize_t c1, double* out) noexcept nogil
    void srigl_train_sddmm_f64_i32_wide(
            const int32_t* idx, Py_ssize_t k, const double* dyt, const double* xt,
            Py_ssize_t ldx, Py_ssize_t c0, Py_ssize_t c1, double* out) noexcept nogil

    # Two neurons per pass (the forward of C-contiguous rows r and r + 1).
    void srigl_train_forward2_f32_i16(
            const float* v, const int16_t* idx, Py_ssize_t k, const float* xt, Py_ssize_t ldx,
            float bias0, float bias1, float* yt0, float* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f32_i16_wide(
            const float* v, const int16_t* idx, Py_ssize_t k, const float* xt, Py_ssize_t ldx,
            float bias0, float bias1, float* yt0, float* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f32_i32(
            const float* v, const int32_t* idx, Py_ssize_t k, const float* xt, Py_ssize_t ldx,
            float bias0, float bias1, float* yt0, float* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f32_i32_wide(
            const float* v, const int32_t* idx, Py_ssize_t k, const float* xt, Py_ssize_t ldx,
            float bias0, float bias1, float* yt0, float* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f64_i16(
            const double* v, const int16_t* idx, Py_ssize_t k, const double* xt, Py_ssize_t ldx,
            double bias0, double bias1, double* yt0, double* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f64_i16_wide(
            const double* v, const int16_t* idx, Py_ssize_t k, const double* xt, Py_ssize_t ldx,
            double bias0, double bias1, double* yt0, double* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f64_i32(
            const double* v, const int32_t* idx, Py_ssize_t k, const double* xt, Py_ssize_t ldx,
            double bias0, double bias1, double* yt0, double* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    void srigl_train_forward2_f64_i32_wide(
            const double* v, const int32_t* idx, Py_ssize_t k, const double* xt, Py_ssize_t ldx,
            double bias0, double bias1, double* yt0, double* yt1, Py_ssize_t c0,
            Py_ssize_t c1) noexcept nogil
    int srigl_train_wide() noexcept nogil

    void srigl_train_relu_f32(const float* src, float* dst, Py_ssize_t n) noexcept nogil
    void srigl_train_relu_f64(const double* src, double* dst, Py_ssize_t n) noexcept nogil
    void srigl_train_relu_grad_f32(const float* g, const float* y, float* dst,
                                   Py_ssize_t n) noexcept nogil
    void srigl_train_relu_grad_f64(const double* g, const double* y, double* dst,
                                   Py_ssize_t n) noexcept nogil
    void srigl_train_dropout_f32(const float* src, float* dst, Py_ssize_t n, uint64_t first,
                                 uint64_t key, uint64_t threshold, float scale) noexcept nogil
    void srigl_train_dropout_f64(const double* src, double* dst, Py_ssize_t n, uint64_t first,
                                 uint64_t key, uint64_t threshold, double scale) noexcept nogil
    void srigl_train_maxpool2_f32(const float* x, float* y, unsigned char* win,
                                  Py_ssize_t height, Py_ssize_t width) noexcept nogil
    void srigl_train_maxpool2_f64(const double* x, double* y, unsigned char* win,
                                  Py_ssize_t height, Py_ssize_t width) noexcept nogil
    void srigl_train_maxpool2_grad_f32(const float* g, const unsigned char* win, float* dx,
                                       Py_ssize_t height, Py_ssize_t width) noexcept nogil
    void srigl_train_maxpool2_grad_f64(const double* g, const unsigned char* win, double* dx,
                                       Py_ssize_t height, Py_ssize_t width) noexcept nogil

    void srigl_train_transpose_f32(const float* a, Py_ssize_t lda, Py_ssize_t r0,
                                   Py_ssize_t r1, Py_ssize_t cols, float* at,
                                   Py_ssize_t ldat) noexcept nogil
    void srigl_train_transpose_f64(const double* a, Py_ssize_t lda, Py_ssize_t r0,
                                   Py_ssize_t r1, Py_ssize_t cols, double* at,
                                   Py_ssize_t ldat) noexcept nogil

    void srigl_train_im2col_row_f32(const float* x, Py_ssize_t batch, Py_ssize_t channels,
                                    Py_ssize_t height, Py_ssize_t width, int kh, int kw,
                                    int stride, int padding, Py_ssize_t out_h,
                                    Py_ssize_t out_w, Py_ssize_t tap, float* row) noexcept nogil
    void srigl_train_im2col_row_f64(const double* x, Py_ssize_t batch, Py_ssize_t channels,
                                    Py_ssize_t height, Py_ssize_t width, int kh, int kw,
                                    int stride, int padding, Py_ssize_t out_h,
                                    Py_ssize_t out_w, Py_ssize_t tap, double* row) noexcept nogil
    void srigl_train_col2im_plane_f32(const float* cols, Py_ssize_t ldc, Py_ssize_t b,
                                      Py_ssize_t c, Py_ssize_t height, Py_ssize_t width,
                                      int kh, int kw, int stride, int padding,
                                      Py_ssize_t out_h, Py_ssize_t out_w,
                                      float* plane) noexcept nogil
    void srigl_train_col2im_plane_f64(const double* cols, Py_ssize_t ldc, Py_ssize_t b,
                                      Py_ssize_t c, Py_ssize_t height, Py_ssize_t width,
                                      int kh, int kw, int stride, int padding,
                                      Py_ssize_t out_h, Py_ssize_t out_w,
                                      double* plane) noexcept nogil

    void srigl_train_conv_forward_f32_i16(const float* v, const int16_t* idx, Py_ssize_t k,
            const float* image, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, float bias, float* out, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_conv_scatter_f32_i16(const float* v, const int16_t* idx, Py_ssize_t k,
            const float* dy, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, Py_ssize_t out_h, Py_ssize_t out_w, float* dimage) noexcept nogil
    void srigl_train_conv_wgrad_f32_i16(const int16_t* idx, Py_ssize_t k, const float* image,
            Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride, int padding,
            const float* dy, Py_ssize_t out_h, Py_ssize_t out_w, float* dv) noexcept nogil
    void srigl_train_conv_forward_f32_i32(const float* v, const int32_t* idx, Py_ssize_t k,
            const float* image, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, float bias, float* out, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_conv_scatter_f32_i32(const float* v, const int32_t* idx, Py_ssize_t k,
            const float* dy, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, Py_ssize_t out_h, Py_ssize_t out_w, float* dimage) noexcept nogil
    void srigl_train_conv_wgrad_f32_i32(const int32_t* idx, Py_ssize_t k, const float* image,
            Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride, int padding,
            const float* dy, Py_ssize_t out_h, Py_ssize_t out_w, float* dv) noexcept nogil
    void srigl_train_conv_forward_f64_i16(const double* v, const int16_t* idx, Py_ssize_t k,
            const double* image, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, double bias, double* out, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_conv_scatter_f64_i16(const double* v, const int16_t* idx, Py_ssize_t k,
            const double* dy, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, Py_ssize_t out_h, Py_ssize_t out_w, double* dimage) noexcept nogil
    void srigl_train_conv_wgrad_f64_i16(const int16_t* idx, Py_ssize_t k, const double* image,
            Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride, int padding,
            const double* dy, Py_ssize_t out_h, Py_ssize_t out_w, double* dv) noexcept nogil
    void srigl_train_conv_forward_f64_i32(const double* v, const int32_t* idx, Py_ssize_t k,
            const double* image, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, double bias, double* out, Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_conv_scatter_f64_i32(const double* v, const int32_t* idx, Py_ssize_t k,
            const double* dy, Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride,
            int padding, Py_ssize_t out_h, Py_ssize_t out_w, double* dimage) noexcept nogil
    void srigl_train_conv_wgrad_f64_i32(const int32_t* idx, Py_ssize_t k, const double* image,
            Py_ssize_t height, Py_ssize_t width, int kh, int kw, int stride, int padding,
            const double* dy, Py_ssize_t out_h, Py_ssize_t out_w, double* dv) noexcept nogil

    void srigl_train_conv_forward_padded_f32(const float* v, const int64_t* off,
            Py_ssize_t k, const float* xpad, Py_ssize_t wp, float bias, float* out,
            Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_conv_forward_padded_f64(const double* v, const int64_t* off,
            Py_ssize_t k, const double* xpad, Py_ssize_t wp, double bias, double* out,
            Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil
    void srigl_train_pad_image_f32(const float* image, Py_ssize_t channels,
            Py_ssize_t height, Py_ssize_t width, int padding, float* xpad, Py_ssize_t hp,
            Py_ssize_t wp) noexcept nogil
    void srigl_train_pad_image_f64(const double* image, Py_ssize_t channels,
            Py_ssize_t height, Py_ssize_t width, int padding, double* xpad, Py_ssize_t hp,
            Py_ssize_t wp) noexcept nogil
    void srigl_train_conv_wgrad_padded_f32(const int64_t* off, Py_ssize_t k,
            const float* xpad, Py_ssize_t wp, const float* dyp, Py_ssize_t ldy, Py_ssize_t out_h,
            float* dv) noexcept nogil
    void srigl_train_conv_scatter_padded_f32(const float* v, const int64_t* off, Py_ssize_t k,
            const float* dyp, Py_ssize_t ldy, Py_ssize_t out_h, float* dxpad,
            Py_ssize_t wp) noexcept nogil
    void srigl_train_pad_rows_f32(const float* dy, Py_ssize_t out_h, Py_ssize_t out_w,
            float* dyp, Py_ssize_t ldy) noexcept nogil
    void srigl_train_crop_image_f32(const float* dxpad, Py_ssize_t channels, Py_ssize_t height,
            Py_ssize_t width, int padding, Py_ssize_t hp, Py_ssize_t wp,
            float* dimage) noexcept nogil
    void srigl_train_conv_wgrad_padded_f64(const int64_t* off, Py_ssize_t k,
            const double* xpad, Py_ssize_t wp, const double* dyp, Py_ssize_t ldy, Py_ssize_t out_h,
            double* dv) noexcept nogil
    void srigl_train_conv_scatter_padded_f64(const double* v, const int64_t* off, Py_ssize_t k,
            const double* dyp, Py_ssize_t ldy, Py_ssize_t out_h, double* dxpad,
            Py_ssize_t wp) noexcept nogil
    void srigl_train_pad_rows_f64(const double* dy, Py_ssize_t out_h, Py_ssize_t out_w,
            double* dyp, Py_ssize_t ldy) noexcept nogil
    void srigl_train_crop_image_f64(const double* dxpad, Py_ssize_t channels, Py_ssize_t height,
            Py_ssize_t width, int padding, Py_ssize_t hp, Py_ssize_t wp,
            double* dimage) noexcept nogil

ctypedef fused index_t:
    int16_t
    int32_t

# Columns per work item: a block of xt (n_in rows x width columns) should stay in L2
# while every neuron gathers from it, so the width is the largest multiple of
# COLUMN_QUANTUM (a register block of float32) whose block fits BLOCK_BYTES, within
# [COLUMN_QUANTUM, MAX_COLUMN_BLOCK]. It depends on n_in and the dtype only, never on
# the thread count: the weight gradient sums its column segments in order, so its
# result is the same for any thread count.
COLUMN_QUANTUM = 64
MAX_COLUMN_BLOCK = 512
BLOCK_BYTES = 1 << 20


def column_block(n_in, itemsize):
    """The column block width for an xt of n_in rows of ``itemsize``-byte floats."""
    fit = BLOCK_BYTES // max(1, n_in * itemsize) // COLUMN_QUANTUM * COLUMN_QUANTUM
    return min(MAX_COLUMN_BLOCK, max(COLUMN_QUANTUM, fit))

# Rows per work item of the transpose.
cdef Py_ssize_t _TRANSPOSE_ROWS = 32


def openmp_enabled():
    """True when this build of the training kernels was compiled with OpenMP."""
    return bool(SRIGL_TRAIN_OPENMP)


cdef int _resolve_threads(object threads, Py_ssize_t work=-1) except -1:
    """The team for a call of ``work`` multiply-adds (or element copies): the resolved
    thread count cut by thread_policy.TRAINING_GRAIN_WORK per thread (a kernel's result
    never depends on it); ``work`` -1: no cut."""
    cdef int n = resolve_threads(threads, omp_get_max_threads())
    if work < 0 or n == 1:
        return n
    return team_size(n, work, thread_policy.TRAINING_GRAIN_WORK)


# -- argument checks (memory safety: what the nogil code relies on) ---------------------

def _check(name, a, dtypes, ndim, contiguous=True):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(np.dtype(d)) for d in dtypes)}, "
                        f"got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def _check_rows(name, a, dtypes=None):
    """A 2-D float array whose rows are contiguous (a C-contiguous array, or a view of
    the first columns of one: the padded column arrays this module returns)."""
    _check(name, a, dtypes or _FLOATS, 2, contiguous=False)
    if a.size and (a.strides[1] != a.itemsize or a.strides[0] % a.itemsize
                   or a.strides[0] < a.shape[1] * a.itemsize):
        raise ValueError(f"{name} must have contiguous, non-overlapping rows")


cdef inline Py_ssize_t _ld(a):
    """The row stride of a row-contiguous 2-D array, in elements."""
    return a.strides[0] // a.itemsize if a.shape[1] else 1


def leading_dimension(m, itemsize):
    """The row length to allocate for a column array of m columns: m rounded up to a
    cache line and, for rows of 4 KiB or more, moved off a multiple of 4 KiB (such rows
    would all map to the same L1 sets, and stores to one row would falsely wait on loads
    from another: the scatter ran 7x slower on 73728-column rows)."""
    line = 64 // itemsize
    ld = -(-m // line) * line
    if ld * itemsize >= 4096:
        ld = -(-ld * itemsize // 4096) * 4096 // itemsize + line
    return ld


def _columns(rows, m, dtype, zeroed=False):
    """A [rows, m] view of a padded [rows, leading_dimension(m)] array whose rows start on
    64-byte boundaries (a 64-byte vector of a misaligned row straddles two cache lines:
    the AVX-512 scatter into a 4.7 MB dxt ran 1.2x slower than the 32-byte one so)."""
    itemsize = np.dtype(dtype).itemsize
    ld = leading_dimension(m, itemsize)
    nbytes = rows * ld * itemsize
    raw = np.zeros(nbytes + 64, dtype=np.uint8) if zeroed else np.empty(nbytes + 64,
                                                                        dtype=np.uint8)
    offset = -raw.__array_interface__["data"][0] % 64
    return raw[offset:offset + nbytes].view(dtype).reshape(rows, ld)[:, :m]


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INDICES = (np.dtype(np.int16), np.dtype(np.int32))


cdef int _index_range(const index_t[:, ::1] indices, Py_ssize_t n_in) noexcept nogil:
    """1 when every index lies in [0, n_in), else 0 (one pass over the nnz indices,
    branch-free min / max so that it vectorises: it runs on every call)."""
    cdef Py_ssize_t i, nnz = indices.shape[0] * indices.shape[1]
    cdef const index_t* flat
    cdef index_t low, high, x
    if nnz == 0:
        return 1
    flat = &indices[0, 0]
    low = high = flat[0]
    for i in range(nnz):
        x = flat[i]
        low = x if x < low else low
        high = x if x > high else high
    return low >= 0 and high < n_in


def _check_indices(indices, n_in, values=None):
    """indices[n, k] int16/int32 C-contiguous, values' shape when given, every index in
    [0, n_in)."""
    _check("indices", indices, _INDICES, 2)
    if values is not None and indices.shape != values.shape:
        raise ValueError(f"indices must have values' shape {values.shape}, got {indices.shape}")
    cdef int ok
    if indices.dtype == np.int16:
        ok = _range16(indices, n_in)
    else:
        ok = _range32(indices, n_in)
    if not ok:
        raise ValueError(f"indices must lie in [0, n_in={n_in}), got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")


cdef int _range16(const int16_t[:, ::1] indices, Py_ssize_t n_in):
    with nogil:
        return _index_range(indices, n_in)


cdef int _range32(const int32_t[:, ::1] indices, Py_ssize_t n_in):
    with nogil:
        return _index_range(indices, n_in)


def _same_dtype(name, a, reference):
    if a.dtype != reference.dtype:
        raise TypeError(f"{name} must be {reference.dtype} like values, got {a.dtype}")


# -- the per-neuron C kernels, one entry per type pair ---------------------------------

# Whether the Linear kernels run their 64-byte (AVX-512) copy: the CPU's answer, fixed at
# import (the tests switch it with ``_use_wide`` to check both copies on one CPU).
cdef bint _WIDE = srigl_train_wide()


def _use_wide(flag):
    """Run the 64-byte copy when ``flag`` and the CPU has it, else the 32-byte one; returns
    the previous setting. For the tests: not thread-safe against running kernels."""
    global _WIDE
    previous = bool(_WIDE)
    _WIDE = bool(flag) and bool(srigl_train_wide())
    return previous


cdef inline void _forward_row(const floating* v, const index_t* idx, Py_ssize_t k,
                              const floating* xt, Py_ssize_t ldx, floating bias,
                              floating* yt, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_forward_f32_i16_wide(v, idx, k, xt, ldx, bias, yt, c0, c1)
            else:
                srigl_train_forward_f32_i16(v, idx, k, xt, ldx, bias, yt, c0, c1)
        else:
            if _WIDE:
                srigl_train_forward_f32_i32_wide(v, idx, k, xt, ldx, bias, yt, c0, c1)
            else:
                srigl_train_forward_f32_i32(v, idx, k, xt, ldx, bias, yt, c0, c1)
    else:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_forward_f64_i16_wide(v, idx, k, xt, ldx, bias, yt, c0, c1)
            else:
                srigl_train_forward_f64_i16(v, idx, k, xt, ldx, bias, yt, c0, c1)
        else:
            if _WIDE:
                srigl_train_forward_f64_i32_wide(v, idx, k, xt, ldx, bias, yt, c0, c1)
            else:
                srigl_train_forward_f64_i32(v, idx, k, xt, ldx, bias, yt, c0, c1)


cdef inline void _forward_pair(const floating* v, const index_t* idx, Py_ssize_t k,
                               const floating* xt, Py_ssize_t ldx, floating bias0,
                               floating bias1, floating* yt0, floating* yt1, Py_ssize_t c0,
                               Py_ssize_t c1) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_forward2_f32_i16_wide(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                                  c0, c1)
            else:
                srigl_train_forward2_f32_i16(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                             c0, c1)
        else:
            if _WIDE:
                srigl_train_forward2_f32_i32_wide(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                                  c0, c1)
            else:
                srigl_train_forward2_f32_i32(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                             c0, c1)
    else:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_forward2_f64_i16_wide(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                                  c0, c1)
            else:
                srigl_train_forward2_f64_i16(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                             c0, c1)
        else:
            if _WIDE:
                srigl_train_forward2_f64_i32_wide(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                                  c0, c1)
            else:
                srigl_train_forward2_f64_i32(v, idx, k, xt, ldx, bias0, bias1, yt0, yt1,
                                             c0, c1)


cdef inline void _scatter_row(const floating* v, const index_t* idx, Py_ssize_t k,
                              const floating* dyt, floating* dxt, Py_ssize_t ldx,
                              Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            srigl_train_scatter_f32_i16(v, idx, k, dyt, dxt, ldx, c0, c1)
        else:
            srigl_train_scatter_f32_i32(v, idx, k, dyt, dxt, ldx, c0, c1)
    else:
        if index_t is int16_t:
            srigl_train_scatter_f64_i16(v, idx, k, dyt, dxt, ldx, c0, c1)
        else:
            srigl_train_scatter_f64_i32(v, idx, k, dyt, dxt, ldx, c0, c1)


cdef inline void _sddmm_row(const index_t* idx, Py_ssize_t k, const floating* dyt,
                            const floating* xt, Py_ssize_t ldx, Py_ssize_t c0,
                            Py_ssize_t c1, floating* out) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_sddmm_f32_i16_wide(idx, k, dyt, xt, ldx, c0, c1, out)
            else:
                srigl_train_sddmm_f32_i16(idx, k, dyt, xt, ldx, c0, c1, out)
        else:
            if _WIDE:
                srigl_train_sddmm_f32_i32_wide(idx, k, dyt, xt, ldx, c0, c1, out)
            else:
                srigl_train_sddmm_f32_i32(idx, k, dyt, xt, ldx, c0, c1, out)
    else:
        if index_t is int16_t:
            if _WIDE:
                srigl_train_sddmm_f64_i16_wide(idx, k, dyt, xt, ldx, c0, c1, out)
            else:
                srigl_train_sddmm_f64_i16(idx, k, dyt, xt, ldx, c0, c1, out)
        else:
            if _WIDE:
                srigl_train_sddmm_f64_i32_wide(idx, k, dyt, xt, ldx, c0, c1, out)
            else:
                srigl_train_sddmm_f64_i32(idx, k, dyt, xt, ldx, c0, c1, out)


# -- the three products on column arrays ----------------------------------------------
#
# Column arrays (xt, dyt, dxt, cols) may be padded: rows contiguous, row stride ld >= m
# elements (``leading_dimension``); the functions below take a base pointer and ld.

cdef void _forward(const floating[:, ::1] values, const index_t[:, ::1] indices,
                   const floating* xt, Py_ssize_t ldx, Py_ssize_t m,
                   const floating[::1] bias, floating[:, ::1] yt, Py_ssize_t width,
                   int threads) noexcept nogil:
    """values[n, k], indices[n, k], xt[n_in, m] (row stride ldx), bias[n] -> yt[n, m],
    in work items of (column block of ``width``, neuron pair 2p, 2p + 1; the last alone
    when n is odd)."""
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1]
    cdef Py_ssize_t pairs = (n + 1) // 2
    cdef Py_ssize_t n_blocks = (m + width - 1) // width
    cdef Py_ssize_t item, block, r, c0, c1
    for item in prange(n_blocks * pairs, schedule="static", num_threads=threads):
        block = item // pairs
        r = 2 * (item - block * pairs)
        c0 = block * width
        c1 = min(c0 + width, m)
        if r + 1 < n:
            _forward_pair(&values[r, 0], &indices[r, 0], k, xt, ldx, bias[r], bias[r + 1],
                          &yt[r, 0], &yt[r + 1, 0], c0, c1)
        else:
            _forward_row(&values[r, 0], &indices[r, 0], k, xt, ldx, bias[r], &yt[r, 0], c0,
                         c1)


cdef void _input_grad(const floating[:, ::1] values, const index_t[:, ::1] indices,
                      const floating* dyt, Py_ssize_t ldy, floating* dxt, Py_ssize_t ldx,
                      Py_ssize_t m, Py_ssize_t width, int threads) noexcept nogil:
    """values[n, k], indices[n, k], dyt[n, m] (row stride ldy) -> dxt[n_in, m] (row
    stride ldx, zeroed by the caller), parallel over column blocks of ``width``, each
    thread owning its columns."""
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1]
    cdef Py_ssize_t n_blocks = (m + width - 1) // width
    cdef Py_ssize_t block, r, c0, c1
    for block in prange(n_blocks, schedule="static", num_threads=threads):
        c0 = block * width
        c1 = min(c0 + width, m)
        for r in range(n):
            _scatter_row(&values[r, 0], &indices[r, 0], k, dyt + r * ldy, dxt, ldx, c0, c1)


cdef void _weight_grad(const index_t[:, ::1] indices, const floating* xt, Py_ssize_t ldx,
                       const floating* dyt, Py_ssize_t ldy, Py_ssize_t m,
                       floating[:, :, ::1] partial, Py_ssize_t width,
                       int threads) noexcept nogil:
    """indices[n, k], xt[n_in, m] (row stride ldx), dyt[n, m] (row stride ldy) ->
    partial[n_segments, n, k], the weight gradient of each ``width``-wide segment."""
    cdef Py_ssize_t n = indices.shape[0], k = indices.shape[1]
    cdef Py_ssize_t n_segments = partial.shape[0]
    cdef Py_ssize_t item, segment, r, c0, c1
    for item in prange(n_segments * n, schedule="static", num_threads=threads):
        segment = item // n
        r = item - segment * n
        c0 = segment * width
        c1 = min(c0 + width, m)
        _sddmm_row(&indices[r, 0], k, dyt + r * ldy, xt, ldx, c0, c1, &partial[segment, r, 0])


def _nonempty(*shape):
    return all(s > 0 for s in shape)


def forward_columns(values, indices, xt, bias=None, threads=0):
    """yt[n, m] = values . xt[indices] (+ bias), per column: yt[r, c] = bias[r] +
    sum_j values[r, j] * xt[indices[r, j], c].

    values[n, k] float32/float64 and indices[n, k] int16/int32 in [0, n_in), C-contiguous;
    xt[n_in, m] of values' dtype with contiguous rows (C-contiguous, or a padded view
    from ``transpose`` / ``im2col_columns``); bias[n] or None. Returns a new C-contiguous yt.
    """
    _check("values", values, _FLOATS, 2)
    _check_rows("xt", xt)
    _same_dtype("xt", xt, values)
    _check_indices(indices, xt.shape[0], values)
    n, k = values.shape
    if bias is None:
        bias = np.zeros(n, dtype=values.dtype)
    else:
        _check("bias", bias, _FLOATS, 1)
        _same_dtype("bias", bias, values)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    cdef int n_threads = _resolve_threads(threads, n * k * xt.shape[1])
    m = xt.shape[1]
    if not _nonempty(n, k, m):
        return np.zeros((n, m), dtype=values.dtype) + bias[:, None]
    yt = np.empty((n, m), dtype=values.dtype)
    _dispatch_forward(values, indices, xt, _ld(xt), bias, yt,
                      column_block(xt.shape[0], xt.itemsize), n_threads)
    return yt


def input_grad_columns(values, indices, dyt, n_in, threads=0):
    """dxt[n_in, m] with dxt[i, c] = sum over (r, j) with indices[r, j] == i of
    values[r, j] * dyt[r, c]: the transposed product, a scatter.

    values[n, k], indices[n, k] in [0, n_in) C-contiguous; dyt[n, m] of values' dtype
    with contiguous rows. Returns a padded view (rows contiguous, ``leading_dimension``).
    """
    _check("values", values, _FLOATS, 2)
    _check_rows("dyt", dyt)
    _same_dtype("dyt", dyt, values)
    n_in = int(n_in)
    if n_in < 0:
        raise ValueError(f"n_in must be >= 0, got {n_in}")
    _check_indices(indices, n_in, values)
    n, k = values.shape
    if dyt.shape[0] != n:
        raise ValueError(f"dyt must have {n} rows (values' neurons), got shape {dyt.shape}")
    cdef int n_threads = _resolve_threads(threads, n * k * dyt.shape[1])
    m = dyt.shape[1]
    dxt = _columns(n_in, m, values.dtype, zeroed=True)
    if not _nonempty(n, k, m):
        return dxt
    # Enough column blocks for every thread, each a whole number of lane blocks.
    per_thread = -(-m // n_threads)
    width = min(column_block(n_in, values.itemsize),
                -(-per_thread // COLUMN_QUANTUM) * COLUMN_QUANTUM)
    _dispatch_input_grad(values, indices, dyt, _ld(dyt), dxt, _ld(dxt), width, n_threads)
    return dxt


def weight_grad_columns(indices, xt, dyt, threads=0):
    """dvalues[n, k] with dvalues[r, j] = sum_c dyt[r, c] * xt[indices[r, j], c]: the
    weight gradient at the stored positions only (an SDDMM).

    indices[n, k] in [0, n_in) C-contiguous; xt[n_in, m] and dyt[n, m] of one float
    dtype with contiguous rows.
    """
    _check_rows("xt", xt)
    _check_rows("dyt", dyt)
    _same_dtype("dyt", dyt, xt)
    _check_indices(indices, xt.shape[0])
    n, k = indices.shape
    m = xt.shape[1]
    if dyt.shape != (n, m):
        raise ValueError(f"dyt must have shape ({n}, {m}), got {dyt.shape}")
    cdef int n_threads = _resolve_threads(threads, n * k * m)
    if not _nonempty(n, k, m):
        return np.zeros((n, k), dtype=xt.dtype)
    width = column_block(xt.shape[0], xt.itemsize)
    n_segments = -(-m // width)
    partial = np.empty((n_segments, n, k), dtype=xt.dtype)
    _dispatch_weight_grad(indices, xt, _ld(xt), dyt, _ld(dyt), partial, width, n_threads)
    return partial[0] if n_segments == 1 else partial.sum(axis=0)


cdef int _check_transposed(const index_t[:, ::1] indices, const floating[:, ::1] values,
                           const long long[::1] indptr, const int32_t[::1] rows,
                           const long long[::1] positions,
                           floating[::1] values_t) noexcept nogil:
    """1 when (indptr, rows, positions) is the transposed index of ``indices``: input i's
    entries e in [indptr[i], indptr[i+1]) name stored weights p = positions[e] =
    rows[e]*k + q with rows[e] in [0, n), q in [0, k) and indices[rows[e], q] == i;
    else 0. Checked entries are gathered as it goes: values_t[e] = values.flat[p].
    O(n_in + nnz), without a division (it runs on every gather)."""
    cdef Py_ssize_t n = indices.shape[0], k = indices.shape[1], nnz = n * k
    cdef Py_ssize_t n_in = indptr.shape[0] - 1, i, e
    cdef long long p, r, q
    if indptr[0] != 0 or indptr[n_in] != nnz:
        return 0
    for i in range(n_in):
        # Bounded as well as ordered before positions[e] is read for e < indptr[i + 1].
        if indptr[i + 1] < indptr[i] or indptr[i + 1] > nnz:
            return 0
        for e in range(indptr[i], indptr[i + 1]):
            p = positions[e]
            r = rows[e]
            q = p - r * k
            if r < 0 or r >= n or q < 0 or q >= k or indices[r, q] != i:
                return 0
            values_t[e] = values[r, q]
    return 1


cdef void _input_grad_gather(const floating[::1] values_t, const int32_t[::1] rows,
                             const long long[::1] indptr, const floating* dyt,
                             Py_ssize_t ldy, Py_ssize_t m, floating* dxt, Py_ssize_t ldx,
                             Py_ssize_t width, int threads) noexcept nogil:
    """dxt[i, c] = sum_e values_t[e] * dyt[rows[e], c] over input i's entries e: the
    forward kernel run on the transposed index, parallel over (column block, input)."""
    cdef Py_ssize_t n_in = indptr.shape[0] - 1
    cdef Py_ssize_t n_blocks = (m + width - 1) // width
    cdef Py_ssize_t item, block, i, c0, c1
    cdef floating zero = 0
    for item in prange(n_blocks * n_in, schedule="static", num_threads=threads):
        block = item // n_in
        i = item - block * n_in
        c0 = block * width
        c1 = min(c0 + width, m)
        _forward_row(&values_t[0] + indptr[i], &rows[0] + indptr[i], indptr[i + 1] - indptr[i],
                     dyt, ldy, zero, dxt + i * ldx, c0, c1)


def transposed_index(indices, n_in):
    """(indptr[n_in + 1] int64, rows[nnz] int32, positions[nnz] int64): the stored
    weights grouped by input, for ``input_grad_gather``. Input i's entries are
    e in [indptr[i], indptr[i+1]), each the weight at flat position positions[e] of
    neuron rows[e], in (neuron, slot) order. Build it once per topology: O(nnz log nnz)."""
    _check_indices(indices, n_in)
    flat = indices.ravel()
    positions = np.argsort(flat, kind="stable").astype(np.int64)
    indptr = np.zeros(int(n_in) + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=int(n_in)), out=indptr[1:])
    rows = (positions // max(1, indices.shape[1])).astype(np.int32)
    return indptr, rows, positions


def input_grad_gather(values, indices, transposed, dyt, n_in, threads=0):
    """``input_grad_columns`` as a gather: each input's row of dxt is summed in registers
    from the dyt rows of the neurons that read it (``transposed``, from
    ``transposed_index(indices, n_in)``), written once, in the same order as the
    scatter. The index is checked against ``indices`` on every call (O(nnz)), so a stale
    one is refused rather than read. Returns a padded view like ``input_grad_columns``."""
    _check("values", values, _FLOATS, 2)
    _check_rows("dyt", dyt)
    _same_dtype("dyt", dyt, values)
    n_in = int(n_in)
    _check_indices(indices, n_in, values)
    indptr, rows, positions = transposed
    _check("indptr", indptr, (np.dtype(np.int64),), 1)
    _check("rows", rows, (np.dtype(np.int32),), 1)
    _check("positions", positions, (np.dtype(np.int64),), 1)
    n, k = values.shape
    if indptr.shape != (n_in + 1,) or rows.shape != (n * k,) or positions.shape != (n * k,):
        raise ValueError(f"transposed must be transposed_index(indices, n_in={n_in}) for "
                         f"indices of shape {indices.shape}")
    values_t = np.empty(n * k, dtype=values.dtype)
    if not _dispatch_check_transposed(indices, values, indptr, rows, positions, values_t):
        raise ValueError("transposed does not match indices: rebuild it with "
                         "transposed_index(indices, n_in) after every topology change")
    if dyt.shape[0] != n:
        raise ValueError(f"dyt must have {n} rows (values' neurons), got shape {dyt.shape}")
    cdef int n_threads = _resolve_threads(threads, n * k * dyt.shape[1])
    m = dyt.shape[1]
    dxt = _columns(n_in, m, values.dtype, zeroed=not _nonempty(n, k, m))
    if not _nonempty(n_in, m) or not _nonempty(n, k):
        return dxt
    _dispatch_gather(values_t, rows, indptr, dyt, _ld(dyt), dxt, _ld(dxt),
                     column_block(n, values.itemsize), n_threads)
    return dxt


def _dispatch_check_transposed(const index_t[:, ::1] indices, const floating[:, ::1] values,
                               const long long[::1] indptr, const int32_t[::1] rows,
                               const long long[::1] positions, floating[::1] values_t):
    cdef int ok
    with nogil:
        ok = _check_transposed(indices, values, indptr, rows, positions, values_t)
    return ok


def _dispatch_gather(const floating[::1] values_t, const int32_t[::1] rows,
                     const long long[::1] indptr, const floating[:, :] dyt, Py_ssize_t ldy,
                     floating[:, :] dxt, Py_ssize_t ldx, Py_ssize_t width, int threads):
    with nogil:
        _input_grad_gather(values_t, rows, indptr, &dyt[0, 0], ldy, dyt.shape[1],
                           &dxt[0, 0], ldx, width, threads)


# Cython picks a fused specialisation from typed arguments; these defs give it them. The
# column arrays arrive as strided memoryviews (rows contiguous, checked above).
def _dispatch_forward(const floating[:, ::1] values, const index_t[:, ::1] indices,
                      const floating[:, :] xt, Py_ssize_t ldx, const floating[::1] bias,
                      floating[:, ::1] yt, Py_ssize_t width, int threads):
    with nogil:
        _forward(values, indices, &xt[0, 0], ldx, xt.shape[1], bias, yt, width, threads)


def _dispatch_input_grad(const floating[:, ::1] values, const index_t[:, ::1] indices,
                         const floating[:, :] dyt, Py_ssize_t ldy, floating[:, :] dxt,
                         Py_ssize_t ldx, Py_ssize_t width, int threads):
    with nogil:
        _input_grad(values, indices, &dyt[0, 0], ldy, &dxt[0, 0], ldx, dyt.shape[1], width,
                    threads)


def _dispatch_weight_grad(const index_t[:, ::1] indices, const floating[:, :] xt,
                          Py_ssize_t ldx, const floating[:, :] dyt, Py_ssize_t ldy,
                          floating[:, :, ::1] partial, Py_ssize_t width, int threads):
    with nogil:
        _weight_grad(indices, &xt[0, 0], ldx, &dyt[0, 0], ldy, xt.shape[1], partial, width,
                     threads)


# -- layout: transpose, and im2col / col2im in column form ---------------------------

cdef void _transpose(const floating* a, Py_ssize_t lda, Py_ssize_t rows, Py_ssize_t cols,
                     floating* at, Py_ssize_t ldat, int threads) noexcept nogil:
    cdef Py_ssize_t n_blocks = (rows + _TRANSPOSE_ROWS - 1) // _TRANSPOSE_ROWS
    cdef Py_ssize_t block, r0, r1
    for block in prange(n_blocks, schedule="static", num_threads=threads):
        r0 = block * _TRANSPOSE_ROWS
        r1 = min(r0 + _TRANSPOSE_ROWS, rows)
        if floating is float:
            srigl_train_transpose_f32(a, lda, r0, r1, cols, at, ldat)
        else:
            srigl_train_transpose_f64(a, lda, r0, r1, cols, at, ldat)


def _dispatch_transpose(const floating[:, :] a, Py_ssize_t lda, floating[:, :] at,
                        Py_ssize_t ldat, int threads):
    with nogil:
        _transpose(&a[0, 0], lda, a.shape[0], a.shape[1], &at[0, 0], ldat, threads)


def transpose(a, threads=0, padded=True):
    """a[rows, cols] float32/float64 -> a.T as [cols, rows] with contiguous rows: a
    padded view (``leading_dimension``) by default, a C-contiguous array when ``padded``
    is False. ``a`` with contiguous rows is read in place, any other is copied first.
    32-row blocks in parallel, 8 x 8 tiles within."""
    _check("a", a, _FLOATS, 2, contiguous=False)
    if a.size and (a.strides[1] != a.itemsize or a.strides[0] % a.itemsize
                   or a.strides[0] < a.shape[1] * a.itemsize):
        a = np.ascontiguousarray(a)
    cdef int n_threads = _resolve_threads(threads, a.size)
    rows, cols = a.shape
    at = _columns(cols, rows, a.dtype) if padded else np.empty((cols, rows), dtype=a.dtype)
    if a.size:
        _dispatch_transpose(a, _ld(a), at, _ld(at), n_threads)
    return at


cdef void _im2col_columns(const floating* x, Py_ssize_t batch, Py_ssize_t channels,
                          Py_ssize_t height, Py_ssize_t width, floating* cols,
                          Py_ssize_t ldc, Py_ssize_t n_taps, int kh, int kw, int stride,
                          int padding, Py_ssize_t out_h, Py_ssize_t out_w,
                          int threads) noexcept nogil:
    cdef Py_ssize_t tap
    for tap in prange(n_taps, schedule="static", num_threads=threads):
        if floating is float:
            srigl_train_im2col_row_f32(x, batch, channels, height, width, kh, kw, stride,
                                       padding, out_h, out_w, tap, cols + tap * ldc)
        else:
            srigl_train_im2col_row_f64(x, batch, channels, height, width, kh, kw, stride,
                                       padding, out_h, out_w, tap, cols + tap * ldc)


cdef void _col2im_columns(const floating* cols, Py_ssize_t ldc, floating* x,
                          Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height,
                          Py_ssize_t width, int kh, int kw, int stride, int padding,
                          Py_ssize_t out_h, Py_ssize_t out_w, int threads) noexcept nogil:
    cdef Py_ssize_t plane, b, c
    for plane in prange(batch * channels, schedule="static", num_threads=threads):
        b = plane // channels
        c = plane - b * channels
        if floating is float:
            srigl_train_col2im_plane_f32(cols, ldc, b, c, height, width, kh, kw, stride,
                                         padding, out_h, out_w, x + plane * height * width)
        else:
            srigl_train_col2im_plane_f64(cols, ldc, b, c, height, width, kh, kw, stride,
                                         padding, out_h, out_w, x + plane * height * width)


def _dispatch_im2col(const floating[:, :, :, ::1] x, floating[:, :] cols, Py_ssize_t ldc,
                     int kh, int kw, int stride, int padding, Py_ssize_t out_h,
                     Py_ssize_t out_w, int threads):
    with nogil:
        _im2col_columns(&x[0, 0, 0, 0], x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                        &cols[0, 0], ldc, cols.shape[0], kh, kw, stride, padding, out_h,
                        out_w, threads)


def _dispatch_col2im(const floating[:, :] cols, Py_ssize_t ldc, floating[:, :, :, ::1] x,
                     int kh, int kw, int stride, int padding, Py_ssize_t out_h,
                     Py_ssize_t out_w, int threads):
    with nogil:
        _col2im_columns(&cols[0, 0], ldc, &x[0, 0, 0, 0], x.shape[0], x.shape[1],
                        x.shape[2], x.shape[3], kh, kw, stride, padding, out_h, out_w,
                        threads)


def _geometry(shape, kh, kw, stride, padding):
    """(out_h, out_w) after checking the convolution's geometry (Python ints, kernel and
    stride >= 1, padding >= 0, a kernel that fits the padded image)."""
    for name, value, low in (("kh", kh, 1), ("kw", kw, 1), ("stride", stride, 1),
                             ("padding", padding, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not low <= value < 2**20:
            raise ValueError(f"{name} must be in [{low}, {2**20}), got {value}")
    _, _, height, width = shape
    if height + 2 * padding < kh or width + 2 * padding < kw:
        raise ValueError(f"kernel ({kh}, {kw}) with padding {padding} does not fit input "
                         f"({height}, {width})")
    return ((height + 2 * padding - kh) // stride + 1,
            (width + 2 * padding - kw) // stride + 1)


def im2col_columns(x, kh, kw, stride=1, padding=0, threads=0):
    """x[batch, channels, height, width] (float32/float64, C-contiguous) ->
    cols[channels*kh*kw, batch*out_h*out_w], a padded view: the transpose of
    ``kernels.im2col``'s matrix, built directly (one row per filter tap (c, ki, kj), one
    column per output pixel (b, oh, ow)), parallel over rows."""
    _check("x", x, _FLOATS, 4)
    out_h, out_w = _geometry(x.shape, kh, kw, stride, padding)
    cdef int n_threads = _resolve_threads(threads, x.size * kh * kw)
    batch, channels = x.shape[:2]
    cols = _columns(channels * kh * kw, batch * out_h * out_w, x.dtype)
    if cols.size:
        _dispatch_im2col(x, cols, _ld(cols), kh, kw, stride, padding, out_h, out_w,
                         n_threads)
    return cols


def col2im_columns(cols, x_shape, kh, kw, stride=1, padding=0, threads=0):
    """The adjoint of ``im2col_columns``: cols[channels*kh*kw, batch*out_h*out_w] (rows
    contiguous) -> x[x_shape], overlapping taps summed, taps in the padding dropped;
    parallel over (image, channel) planes."""
    _check_rows("cols", cols)
    if len(x_shape) != 4 or any(int(s) < 0 for s in x_shape):
        raise ValueError(f"x_shape must be 4 sizes >= 0, got {tuple(x_shape)}")
    x_shape = tuple(int(s) for s in x_shape)
    out_h, out_w = _geometry(x_shape, kh, kw, stride, padding)
    batch, channels = x_shape[:2]
    expected = (channels * kh * kw, batch * out_h * out_w)
    if cols.shape != expected:
        raise ValueError(f"cols must have shape {expected} for x_shape {x_shape}, "
                         f"got {cols.shape}")
    cdef int n_threads = _resolve_threads(threads, cols.size)
    x = np.zeros(x_shape, dtype=cols.dtype)
    if cols.size:
        _dispatch_col2im(cols, _ld(cols), x, kh, kw, stride, padding, out_h, out_w, n_threads)
    return x


# -- direct convolution (straight from the images) -----------------------------------
#
# Work items: forward (image, neuron) -> its output plane; input gradient an image ->
# its planes of dx (every neuron scatters into them, in order); weight gradient a fixed
# chunk of IMAGES_PER_CHUNK images -> partial[chunk] (summed in order afterwards, so the
# result does not depend on the thread count). An image (channels x h x w) stays in L2
# while the neurons read it.

IMAGES_PER_CHUNK = 4


cdef inline void _conv_forward_item(const floating* v, const index_t* idx, Py_ssize_t k,
                                    const floating* image, Py_ssize_t height,
                                    Py_ssize_t width, int kh, int kw, int stride,
                                    int padding, floating bias, floating* out,
                                    Py_ssize_t out_h, Py_ssize_t out_w) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            srigl_train_conv_forward_f32_i16(v, idx, k, image, height, width, kh, kw, stride,
                                             padding, bias, out, out_h, out_w)
        else:
            srigl_train_conv_forward_f32_i32(v, idx, k, image, height, width, kh, kw, stride,
                                             padding, bias, out, out_h, out_w)
    else:
        if index_t is int16_t:
            srigl_train_conv_forward_f64_i16(v, idx, k, image, height, width, kh, kw, stride,
                                             padding, bias, out, out_h, out_w)
        else:
            srigl_train_conv_forward_f64_i32(v, idx, k, image, height, width, kh, kw, stride,
                                             padding, bias, out, out_h, out_w)


cdef inline void _conv_scatter_item(const floating* v, const index_t* idx, Py_ssize_t k,
                                    const floating* dy, Py_ssize_t height, Py_ssize_t width,
                                    int kh, int kw, int stride, int padding,
                                    Py_ssize_t out_h, Py_ssize_t out_w,
                                    floating* dimage) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            srigl_train_conv_scatter_f32_i16(v, idx, k, dy, height, width, kh, kw, stride,
                                             padding, out_h, out_w, dimage)
        else:
            srigl_train_conv_scatter_f32_i32(v, idx, k, dy, height, width, kh, kw, stride,
                                             padding, out_h, out_w, dimage)
    else:
        if index_t is int16_t:
            srigl_train_conv_scatter_f64_i16(v, idx, k, dy, height, width, kh, kw, stride,
                                             padding, out_h, out_w, dimage)
        else:
            srigl_train_conv_scatter_f64_i32(v, idx, k, dy, height, width, kh, kw, stride,
                                             padding, out_h, out_w, dimage)


cdef inline void _conv_wgrad_item(const index_t* idx, Py_ssize_t k, const floating* image,
                                  Py_ssize_t height, Py_ssize_t width, int kh, int kw,
                                  int stride, int padding, const floating* dy,
                                  Py_ssize_t out_h, Py_ssize_t out_w,
                                  floating* dv) noexcept nogil:
    if floating is float:
        if index_t is int16_t:
            srigl_train_conv_wgrad_f32_i16(idx, k, image, height, width, kh, kw, stride,
                                           padding, dy, out_h, out_w, dv)
        else:
            srigl_train_conv_wgrad_f32_i32(idx, k, image, height, width, kh, kw, stride,
                                           padding, dy, out_h, out_w, dv)
    else:
        if index_t is int16_t:
            srigl_train_conv_wgrad_f64_i16(idx, k, image, height, width, kh, kw, stride,
                                           padding, dy, out_h, out_w, dv)
        else:
            srigl_train_conv_wgrad_f64_i32(idx, k, image, height, width, kh, kw, stride,
                                           padding, dy, out_h, out_w, dv)


def _dispatch_conv_forward(const floating[:, ::1] values, const index_t[:, ::1] indices,
                           const floating[:, :, :, ::1] x, const floating[::1] bias,
                           floating[:, :, :, ::1] y, int kh, int kw, int stride, int padding,
                           int threads):
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1], item, b, r
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    with nogil:
        for item in prange(x.shape[0] * n, schedule="static", num_threads=threads):
            b = item // n
            r = item - b * n
            _conv_forward_item(&values[r, 0], &indices[r, 0], k, &x[b, 0, 0, 0], height,
                               width, kh, kw, stride, padding, bias[r], &y[b, r, 0, 0],
                               y.shape[2], y.shape[3])


def _dispatch_conv_input_grad(const floating[:, ::1] values, const index_t[:, ::1] indices,
                              const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                              int kh, int kw, int stride, int padding, int threads):
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1], b, r
    with nogil:
        for b in prange(dx.shape[0], schedule="static", num_threads=threads):
            for r in range(n):
                _conv_scatter_item(&values[r, 0], &indices[r, 0], k, &dy[b, r, 0, 0],
                                   dx.shape[2], dx.shape[3], kh, kw, stride, padding,
                                   dy.shape[2], dy.shape[3], &dx[b, 0, 0, 0])


def _dispatch_conv_weight_grad(const index_t[:, ::1] indices, const floating[:, :, :, ::1] x,
                               const floating[:, :, :, ::1] dy, floating[:, :, ::1] partial,
                               int kh, int kw, int stride, int padding, Py_ssize_t per_chunk,
                               int threads):
    cdef Py_ssize_t n = indices.shape[0], k = indices.shape[1], chunk, b, r
    cdef Py_ssize_t batch = x.shape[0]
    with nogil:
        for chunk in prange(partial.shape[0], schedule="static", num_threads=threads):
            for b in range(chunk * per_chunk, min(chunk * per_chunk + per_chunk, batch)):
                for r in range(n):
                    _conv_wgrad_item(&indices[r, 0], k, &x[b, 0, 0, 0], x.shape[2],
                                     x.shape[3], kh, kw, stride, padding, &dy[b, r, 0, 0],
                                     dy.shape[2], dy.shape[3], &partial[chunk, r, 0])


def _check_direct(values, indices, x, kh, kw, stride, padding, dy=None):
    """(out_h, out_w) after the direct kernels' checks: x[batch, channels, h, w] and dy
    [batch, n, out_h, out_w] C-contiguous of values' dtype, indices in [0, channels*kh*kw)."""
    if values is not None:
        _check("values", values, _FLOATS, 2)
    _check("x", x, _FLOATS, 4)
    out_h, out_w = _geometry(x.shape, kh, kw, stride, padding)
    if values is not None:
        _same_dtype("x", x, values)
    _check_indices(indices, x.shape[1] * kh * kw, values)
    if dy is not None:
        _check("dy", dy, _FLOATS, 4)
        _same_dtype("dy", dy, x)
        expected = (x.shape[0], indices.shape[0], out_h, out_w)
        if dy.shape != expected:
            raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
    return out_h, out_w


def conv_forward_direct(values, indices, x, kh, kw, stride=1, padding=0, bias=None,
                        threads=0):
    """y[batch, n, out_h, out_w] = the condensed convolution of x[batch, channels, h, w]
    computed straight from the images, one (image, neuron) plane per work item."""
    out_h, out_w = _check_direct(values, indices, x, kh, kw, stride, padding)
    n, k = values.shape
    if bias is None:
        bias = np.zeros(n, dtype=values.dtype)
    else:
        _check("bias", bias, _FLOATS, 1)
        _same_dtype("bias", bias, values)
        if bias.shape != (n,):
            raise ValueError(f"bias must have shape ({n},), got {bias.shape}")
    cdef int n_threads = _resolve_threads(
        threads, x.shape[0] * n * values.shape[1] * out_h * out_w)
    y = np.empty((x.shape[0], n, out_h, out_w), dtype=values.dtype)
    if not _nonempty(n, k, x.shape[0]):
        y[...] = bias[:, None, None]
        return y
    if stride == 1:
        # A zero-padded copy per image (in L2) with every row followed by a 32-byte
        # vector block x 4 of zeros: the taps' windows then need no bounds checks.
        hp, wp, offsets = _padded_geometry(x.shape, indices, kh, kw, padding, x.itemsize)
        _dispatch_conv_forward_padded(values, offsets, x, bias, y, padding, hp, wp, n_threads)
    else:
        _dispatch_conv_forward(values, indices, x, bias, y, kh, kw, stride, padding, n_threads)
    return y


def conv_input_grad_direct(values, indices, dy, x_shape, kh, kw, stride=1, padding=0,
                           threads=0):
    """dx[x_shape] of the condensed convolution from dy[batch, n, out_h, out_w], straight
    into the images: each image's planes owned by one thread, neurons scattered in order."""
    _check("values", values, _FLOATS, 2)
    if len(x_shape) != 4 or any(int(s) < 0 for s in x_shape):
        raise ValueError(f"x_shape must be 4 sizes >= 0, got {tuple(x_shape)}")
    x_shape = tuple(int(s) for s in x_shape)
    out_h, out_w = _geometry(x_shape, kh, kw, stride, padding)
    _check_indices(indices, x_shape[1] * kh * kw, values)
    _check("dy", dy, _FLOATS, 4)
    _same_dtype("dy", dy, values)
    expected = (x_shape[0], values.shape[0], out_h, out_w)
    if dy.shape != expected:
        raise ValueError(f"dy must have shape {expected}, got {dy.shape}")
    cdef int n_threads = _resolve_threads(threads, dy.size * values.shape[1])
    dx = np.zeros(x_shape, dtype=values.dtype)
    if _nonempty(*values.shape) and _nonempty(*x_shape):
        _dispatch_conv_input_grad(values, indices, dy, dx, kh, kw, stride, padding, n_threads)
    return dx


def conv_weight_grad_direct(indices, x, dy, kh, kw, stride=1, padding=0, threads=0):
    """dvalues[n, k] of the condensed convolution from x and dy, straight from the images:
    chunks of IMAGES_PER_CHUNK images in parallel, their partial sums added in order."""
    _check_direct(None, indices, x, kh, kw, stride, padding, dy)
    cdef int n_threads = _resolve_threads(threads, dy.size * indices.shape[1])
    n, k = indices.shape
    batch = x.shape[0]
    n_chunks = max(1, -(-batch // IMAGES_PER_CHUNK))
    partial = np.zeros((n_chunks, n, k), dtype=x.dtype)
    if _nonempty(n, k, batch):
        _dispatch_conv_weight_grad(indices, x, dy, partial, kh, kw, stride, padding,
                                   IMAGES_PER_CHUNK, n_threads)
    return partial[0] if n_chunks == 1 else partial.sum(axis=0)


def _dispatch_conv_forward_padded(const floating[:, ::1] values, const int64_t[:, ::1] offsets,
                                  const floating[:, :, :, ::1] x, const floating[::1] bias,
                                  floating[:, :, :, ::1] y, int padding, Py_ssize_t hp,
                                  Py_ssize_t wp, int threads):
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1], b, r
    cdef Py_ssize_t channels = x.shape[1], size = x.shape[1] * hp * wp
    cdef floating* xpad
    cdef int failed = 0
    with nogil:
        for b in prange(x.shape[0], schedule="static", num_threads=threads):
            xpad = <floating*>calloc(size, sizeof(floating))
            if xpad == NULL:
                failed = 1
                continue
            if floating is float:
                srigl_train_pad_image_f32(&x[b, 0, 0, 0], channels, x.shape[2], x.shape[3],
                                          padding, xpad, hp, wp)
            else:
                srigl_train_pad_image_f64(&x[b, 0, 0, 0], channels, x.shape[2], x.shape[3],
                                          padding, xpad, hp, wp)
            for r in range(n):
                if floating is float:
                    srigl_train_conv_forward_padded_f32(&values[r, 0], &offsets[r, 0], k, xpad,
                                                        wp, bias[r], &y[b, r, 0, 0],
                                                        y.shape[2], y.shape[3])
                else:
                    srigl_train_conv_forward_padded_f64(&values[r, 0], &offsets[r, 0], k, xpad,
                                                        wp, bias[r], &y[b, r, 0, 0],
                                                        y.shape[2], y.shape[3])
            free(xpad)
    if failed:
        raise MemoryError("conv_forward_direct: no memory for a padded image")


def _padded_geometry(x_shape, indices, kh, kw, padding, itemsize):
    """(hp, wp, offsets[n, k] int64) of the padded stride-1 kernels: rows of the padded
    image followed by 4 vectors of zeros, each stored tap's offset in it."""
    lanes = 4 * (32 // itemsize)
    hp, wp = x_shape[2] + 2 * padding, x_shape[3] + 2 * padding + lanes
    channel, tap = np.divmod(indices.astype(np.int64), kh * kw)
    return hp, wp, (channel * hp + tap // kw) * wp + tap % kw


def _dispatch_conv_backward_padded(const floating[:, ::1] values,
                                   const int64_t[:, ::1] offsets,
                                   const floating[:, :, :, ::1] x,
                                   const floating[:, :, :, ::1] dy,
                                   floating[:, :, ::1] partial, floating[:, :, :, ::1] dx,
                                   bint input_grad, int padding, Py_ssize_t hp, Py_ssize_t wp,
                                   Py_ssize_t ldy, Py_ssize_t per_chunk, int threads):
    """Per chunk of images (one thread each): the weight gradient into partial[chunk]
    and, when input_grad, each image's dx (through a padded buffer, then cropped)."""
    cdef Py_ssize_t n = values.shape[0], k = values.shape[1], chunk, b, r
    cdef Py_ssize_t batch = x.shape[0], channels = x.shape[1]
    cdef Py_ssize_t out_h = dy.shape[2], out_w = dy.shape[3]
    cdef Py_ssize_t size = channels * hp * wp
    cdef floating* xpad
    cdef floating* dxpad
    cdef floating* dyp
    cdef int failed = 0
    with nogil:
        for chunk in prange(partial.shape[0], schedule="static", num_threads=threads):
            xpad = <floating*>calloc(size, sizeof(floating))
            dxpad = <floating*>calloc(size, sizeof(floating))
            dyp = <floating*>calloc(out_h * ldy, sizeof(floating))
            if xpad == NULL or dxpad == NULL or dyp == NULL:
                failed = 1
            else:
                for b in range(chunk * per_chunk, min(chunk * per_chunk + per_chunk, batch)):
                    if floating is float:
                        srigl_train_pad_image_f32(&x[b, 0, 0, 0], channels, x.shape[2],
                                                  x.shape[3], padding, xpad, hp, wp)
                    else:
                        srigl_train_pad_image_f64(&x[b, 0, 0, 0], channels, x.shape[2],
                                                  x.shape[3], padding, xpad, hp, wp)
                    if input_grad:
                        memset(dxpad, 0, size * sizeof(floating))
                    for r in range(n):
                        if floating is float:
                            srigl_train_pad_rows_f32(&dy[b, r, 0, 0], out_h, out_w, dyp, ldy)
                            srigl_train_conv_wgrad_padded_f32(&offsets[r, 0], k, xpad, wp, dyp,
                                                              ldy, out_h, &partial[chunk, r, 0])
                            if input_grad:
                                srigl_train_conv_scatter_padded_f32(&values[r, 0], &offsets[r, 0],
                                                                    k, dyp, ldy, out_h, dxpad, wp)
                        else:
                            srigl_train_pad_rows_f64(&dy[b, r, 0, 0], out_h, out_w, dyp, ldy)
                            srigl_train_conv_wgrad_padded_f64(&offsets[r, 0], k, xpad, wp, dyp,
                                                              ldy, out_h, &partial[chunk, r, 0])
                            if input_grad:
                                srigl_train_conv_scatter_padded_f64(&values[r, 0], &offsets[r, 0],
                                                                    k, dyp, ldy, out_h, dxpad, wp)
                    if input_grad:
                        if floating is float:
                            srigl_train_crop_image_f32(dxpad, channels, x.shape[2], x.shape[3],
                                                       padding, hp, wp, &dx[b, 0, 0, 0])
                        else:
                            srigl_train_crop_image_f64(dxpad, channels, x.shape[2], x.shape[3],
                                                       padding, hp, wp, &dx[b, 0, 0, 0])
            free(xpad)
            free(dxpad)
            free(dyp)
    if failed:
        raise MemoryError("conv_backward_direct: no memory for the padded buffers")


def conv_backward_direct(values, indices, x, dy, kh, kw, stride=1, padding=0, threads=0,
                         input_grad=True):
    """(dx[x.shape] or None, dvalues[n, k]) of the condensed convolution straight from
    the images. Stride 1 runs both in one pass over chunks of IMAGES_PER_CHUNK images on
    zero-padded copies (vector loops without bounds); other strides call
    ``conv_input_grad_direct`` and ``conv_weight_grad_direct``."""
    out_h, out_w = _check_direct(values, indices, x, kh, kw, stride, padding, dy)
    if stride != 1:
        dvalues = conv_weight_grad_direct(indices, x, dy, kh, kw, stride, padding, threads)
        dx = (conv_input_grad_direct(values, indices, dy, x.shape, kh, kw, stride, padding,
                                     threads) if input_grad else None)
        return dx, dvalues
    cdef int n_threads = _resolve_threads(threads, dy.size * values.shape[1])
    n, k = values.shape
    batch = x.shape[0]
    n_chunks = max(1, -(-batch // IMAGES_PER_CHUNK))
    partial = np.zeros((n_chunks, n, k), dtype=x.dtype)
    dx = np.zeros(x.shape, dtype=x.dtype) if input_grad else None
    if _nonempty(n, k, batch) and _nonempty(*x.shape):
        hp, wp, offsets = _padded_geometry(x.shape, indices, kh, kw, padding, x.itemsize)
        lanes = 4 * (32 // x.itemsize)
        ldy = -(-out_w // lanes) * lanes
        _dispatch_conv_backward_padded(values, offsets, x, dy, partial,
                                       dx if input_grad else np.zeros((1, 1, 1, 1), x.dtype),
                                       input_grad, padding, hp, wp, ldy, IMAGES_PER_CHUNK,
                                       n_threads)
    return dx, (partial[0] if n_chunks == 1 else partial.sum(axis=0))


# -- max pooling over windows that tile the image -------------------------------------------
# The cnn's MaxPool2d(2) runs on every training step whatever the sparsity: its NumPy form
# (strided maxima, then a winner mask) took 50 ms of a 99%-sparse condensed cnn step of
# 110 ms (batch 128, 64 x 24 x 24 maps, one thread). One pass per plane here.

cdef void _maxpool_plane(const floating* x, floating* y, unsigned char* win, Py_ssize_t height,
                         Py_ssize_t width, Py_ssize_t kh, Py_ssize_t kw) noexcept nogil:
    cdef Py_ssize_t out_h = height // kh, out_w = width // kw, i, j, a, b, w
    cdef floating best, v
    cdef bint take
    for i in range(out_h):
        for j in range(out_w):
            best = x[i * kh * width + j * kw]
            w = 0
            for a in range(kh):
                for b in range(kw):
                    v = x[(i * kh + a) * width + j * kw + b]
                    # The first maximum wins ties; a NaN wins and is then kept (as
                    # PyTorch propagates it). Selects, not branches: on real maps the
                    # winner is a coin toss and mispredicted branches cost 5x.
                    take = (best == best) & (not (v <= best))
                    best = v if take else best
                    w = (a * kw + b) if take else w
            y[i * out_w + j] = best
            win[i * out_w + j] = <unsigned char>w


cdef void _maxpool_grad_plane(const floating* g, const unsigned char* win, floating* dx,
                              Py_ssize_t height, Py_ssize_t width, Py_ssize_t kh,
                              Py_ssize_t kw) noexcept nogil:
    cdef Py_ssize_t out_h = height // kh, out_w = width // kw, i, j, w
    memset(dx, 0, height * width * sizeof(floating))
    for i in range(out_h):
        for j in range(out_w):
            w = win[i * out_w + j]
            dx[(i * kh + w // kw) * width + j * kw + w % kw] = g[i * out_w + j]


cdef inline void _maxpool2_plane(const floating* x, floating* y, unsigned char* win,
                                 Py_ssize_t height, Py_ssize_t width) noexcept nogil:
    # The 2 x 2 window written out (_training_kernels.h): the same maxima and winners.
    if floating is float:
        srigl_train_maxpool2_f32(x, y, win, height, width)
    else:
        srigl_train_maxpool2_f64(x, y, win, height, width)


cdef inline void _maxpool2_grad_plane(const floating* g, const unsigned char* win, floating* dx,
                                      Py_ssize_t height, Py_ssize_t width) noexcept nogil:
    if floating is float:
        srigl_train_maxpool2_grad_f32(g, win, dx, height, width)
    else:
        srigl_train_maxpool2_grad_f64(g, win, dx, height, width)


def _dispatch_maxpool(const floating[:, :, ::1] x, floating[:, :, ::1] y,
                      unsigned char[:, :, ::1] win, Py_ssize_t kh, Py_ssize_t kw, int threads):
    cdef Py_ssize_t p, planes = x.shape[0], height = x.shape[1], width = x.shape[2]
    cdef bint two = kh == 2 and kw == 2
    for p in prange(planes, nogil=True, num_threads=threads, schedule="static"):
        if two:
            _maxpool2_plane(&x[p, 0, 0], &y[p, 0, 0], &win[p, 0, 0], height, width)
        else:
            _maxpool_plane(&x[p, 0, 0], &y[p, 0, 0], &win[p, 0, 0], height, width, kh, kw)


def _dispatch_maxpool_grad(const floating[:, :, ::1] g, const unsigned char[:, :, ::1] win,
                           floating[:, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw, int threads):
    cdef Py_ssize_t p, planes = dx.shape[0], height = dx.shape[1], width = dx.shape[2]
    cdef bint two = kh == 2 and kw == 2
    for p in prange(planes, nogil=True, num_threads=threads, schedule="static"):
        if two:
            _maxpool2_grad_plane(&g[p, 0, 0], &win[p, 0, 0], &dx[p, 0, 0], height, width)
        else:
            _maxpool_grad_plane(&g[p, 0, 0], &win[p, 0, 0], &dx[p, 0, 0], height, width, kh,
                                kw)


def _check_window(kh, kw):
    """A winner is a uint8 cell index: at most 256 cells."""
    if not (1 <= kh and 1 <= kw and kh * kw <= 256):
        raise ValueError(f"the window must hold 1 to 256 cells, got {kh}x{kw}")


def _check_tiles(x_shape, kh, kw):
    _check_window(kh, kw)
    if len(x_shape) != 4 or x_shape[2] % kh or x_shape[3] % kw:
        raise ValueError(f"x must be (batch, channels, height, width) with height and width "
                         f"multiples of the window {kh}x{kw}, got {tuple(x_shape)}")


def maxpool_tiled(x, kh, kw, threads=0):
    """(y[b, c, H/kh, W/kw], winner uint8 of y's shape): the max of each kh x kw window of
    x[b, c, H, W] (C-contiguous float32/float64; windows tile x: stride = window), and
    which cell (a*kw + b, row-major) holds its first maximum (a NaN wins)."""
    _check("x", x, (np.float32, np.float64), 4)
    _check_tiles(x.shape, kh, kw)
    cdef int n_threads = _resolve_threads(threads, x.size)
    b, c, height, width = x.shape
    y = np.empty((b, c, height // kh, width // kw), dtype=x.dtype)
    winner = np.empty(y.shape, dtype=np.uint8)
    if y.size:
        _dispatch_maxpool(x.reshape(b * c, height, width), y.reshape(b * c, height // kh, -1),
                          winner.reshape(b * c, height // kh, -1), kh, kw, n_threads)
    return y, winner


def maxpool_tiled_grad(grad_out, winner, kh, kw, threads=0):
    """dx[b, c, H, W]: each window's gradient ``grad_out`` at its ``winner`` cell, 0 in the
    others (``maxpool_tiled``'s backward; grad_out C-contiguous of winner's shape)."""
    _check("grad_out", grad_out, (np.float32, np.float64), 4)
    _check("winner", winner, (np.uint8,), 4)
    if grad_out.shape != winner.shape:
        raise ValueError(f"grad_out must have winner's shape {winner.shape}, got "
                         f"{grad_out.shape}")
    _check_window(kh, kw)
    if winner.size and int(winner.max()) >= kh * kw:
        raise ValueError(f"winner must index the {kh}x{kw} window's cells, got "
                         f"{int(winner.max())}")
    cdef int n_threads = _resolve_threads(threads, grad_out.size * kh * kw)
    b, c, out_h, out_w = winner.shape
    dx = np.empty((b, c, out_h * kh, out_w * kw), dtype=grad_out.dtype)
    if dx.size:
        _dispatch_maxpool_grad(grad_out.reshape(b * c, out_h, out_w),
                               winner.reshape(b * c, out_h, out_w),
                               dx.reshape(b * c, out_h * kh, -1), kh, kw, n_threads)
    return dx


# -- elementwise layers: ReLU and dropout ---------------------------------------------------
# One pass over the flat array in chunks (the C loops in _training_kernels.h, which say
# why). Every element's result depends on it alone (dropout's bits on its flat index), so
# the thread count never changes a result.

cdef Py_ssize_t _CHUNK = 1 << 14
DROPOUT_MULTIPLIER = 0x9E3779B97F4A7C15   # the stream's step: SplitMix64's (the golden ratio)


def _check_elementwise(name, a, reference=None):
    """A C-contiguous float32/float64 array of any shape (of ``reference``'s shape and
    dtype); returns its flat view."""
    _check(name, a, _FLOATS, getattr(a, "ndim", None))
    if reference is not None and (a.shape != reference.shape or a.dtype != reference.dtype):
        raise ValueError(f"{name} must be {reference.dtype} of shape {reference.shape}, got "
                         f"{a.dtype} {a.shape}")
    return a.reshape(-1)


def _dispatch_relu(const floating[::1] src, floating[::1] dst, int threads):
    cdef Py_ssize_t n = src.shape[0], c, start
    for c in prange((n + _CHUNK - 1) // _CHUNK, nogil=True, num_threads=threads,
                    schedule="static"):
        start = c * _CHUNK
        if floating is float:
            srigl_train_relu_f32(&src[start], &dst[start], min(_CHUNK, n - start))
        else:
            srigl_train_relu_f64(&src[start], &dst[start], min(_CHUNK, n - start))


def _dispatch_relu_grad(const floating[::1] g, const floating[::1] y, floating[::1] dst,
                        int threads):
    cdef Py_ssize_t n = g.shape[0], c, start
    for c in prange((n + _CHUNK - 1) // _CHUNK, nogil=True, num_threads=threads,
                    schedule="static"):
        start = c * _CHUNK
        if floating is float:
            srigl_train_relu_grad_f32(&g[start], &y[start], &dst[start], min(_CHUNK, n - start))
        else:
            srigl_train_relu_grad_f64(&g[start], &y[start], &dst[start], min(_CHUNK, n - start))


def _dispatch_dropout(const floating[::1] src, floating[::1] dst, uint64_t key,
                      uint64_t threshold, floating scale, int threads):
    cdef Py_ssize_t n = src.shape[0], c, start
    for c in prange((n + _CHUNK - 1) // _CHUNK, nogil=True, num_threads=threads,
                    schedule="static"):
        start = c * _CHUNK
        if floating is float:
            srigl_train_dropout_f32(&src[start], &dst[start], min(_CHUNK, n - start), start,
                                    key, threshold, scale)
        else:
            srigl_train_dropout_f64(&src[start], &dst[start], min(_CHUNK, n - start), start,
                                    key, threshold, scale)


def relu(x, out, threads=0):
    """out = max(x, 0) elementwise, with np.maximum(x, 0)'s bits (a NaN kept, -0.0 -> 0);
    x and out C-contiguous float32/float64 of one shape and dtype (out may be x).
    Returns out."""
    flat = _check_elementwise("x", x)
    flat_out = _check_elementwise("out", out, x)
    _dispatch_relu(flat, flat_out, _resolve_threads(threads, x.size))
    return out


def relu_grad(grad_out, y, out, threads=0):
    """out = grad_out * (y > 0), NumPy's bits (a NaN gradient stays NaN); all three
    C-contiguous float32/float64 of one shape and dtype (out may be grad_out). Returns
    out."""
    flat = _check_elementwise("grad_out", grad_out)
    flat_y = _check_elementwise("y", y, grad_out)
    flat_out = _check_elementwise("out", out, grad_out)
    _dispatch_relu_grad(flat, flat_y, flat_out, _resolve_threads(threads, grad_out.size))
    return out


def dropout(x, out, key, threshold, scale, threads=0):
    """out = x * (u >= threshold ? scale : 0) elementwise, u the 32 bits
    ``training_kernels.dropout_keep`` defines for (key, flat index); x and out
    C-contiguous float32/float64 of one shape and dtype (out may be x); key in
    [0, 2**64), threshold in [0, 2**32]. Returns out."""
    flat = _check_elementwise("x", x)
    flat_out = _check_elementwise("out", out, x)
    if not 0 <= key < 2**64:
        raise ValueError(f"key must be in [0, 2**64), got {key}")
    if not 0 <= threshold <= 2**32:
        raise ValueError(f"threshold must be in [0, 2**32], got {threshold}")
    _dispatch_dropout(flat, flat_out, key, threshold, x.dtype.type(scale),
                      _resolve_threads(threads, x.size))
    return out
