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
* ``threads=0`` means the default team (``thread_policy.resolve_threads``: OpenMP's
  default within the CPUs this process may use, affinity and cgroup quota); an
  explicit count is kept, and a call too small to pay for a team runs on one thread
  (``thread_policy.team_size``). Callers that
  may also run BLAS should hold BLAS to one thread (``threadpoolctl``) so the two
  pools never multiply.
* Built without OpenMP (e.g. Apple clang) everything still works, single-threaded;
  ``openmp_enabled()`` reports which build this is.
* The C lives in ``srigl_np/_kernels.h`` and ``_kernels_isa.h``, headers shipped with
  the package and declared below with ``cdef extern from "_kernels.h"``: the OpenMP
  shim, max pooling of a plane, the convolutions' phase planes and stores, and the
  batch-1 gather-dot, the batched block kernels, the convolution's blocks, the
  depthwise plane and the Vision Transformer's GELU, LayerNorm and softmax (a fitted
  erf and exp, tools/fit_erf.py and tools/fit_exp.py) (GCC/Clang vector extensions,
  hence C rather than Cython) in one variant per CPU path: ``avx512``,
  ``avx2`` (x86-64) and ``generic`` (any CPU). One portable build carries all three;
  the best this CPU supports is chosen at import (``cpu_path()``, ``cpu_paths()``,
  ``set_cpu_path()``). The avx512 path also has a batch-1 table lookup (AVX-512
  two-register permutes), used where its padding is small, and the x86 paths the batch-1
  interleaved rows (``vector_kernel``, ``INTERLEAVED_MIN_ROWS``). This
  file holds the validation, the Cython loops (``prange``) and the layout work (im2col,
  the tiling transpose, the column-block packing, the lookup layout, the convolution's
  tap offsets).

Each kernel's header (a comment in C, the docstring here) lists its inputs and
outputs with shapes in brackets, e.g. ``values[n_active, k]``, ``x[batch, n_in]``,
``xt[n_tiles, n_in, width]``, as scipy's sparsetools headers do.
"""

from cython.parallel cimport prange, threadid
from cython cimport floating
from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t
cimport numpy as cnp

cnp.import_array()

import numpy as np

from srigl_np.thread_policy import resolve_threads, team_size
from srigl_np.validation import check_array

# The C interface of _kernels.h (see its comments for each function's arguments).
cdef extern from "_kernels.h":
    # OpenMP shim: 1 when compiled with OpenMP; omp_get_max_threads() is 1 without it.
    int SRIGL_NP_OPENMP
    int omp_get_max_threads() noexcept nogil

    # CPU paths, best first (0 avx512, 1 avx2, 2 generic); the kernels below run the
    # active one.
    enum: N_PATHS "SRIGL_N_PATHS"
    int srigl_path_supported(int path) noexcept nogil
    int srigl_set_path(int path) noexcept nogil
    int srigl_select_path() noexcept nogil
    const char* srigl_path_name(int path) noexcept nogil

    # Batch-1 gather-dot: sum_j v[j] * x[idx[j]], v[k], idx[k], x[n_in].
    float srigl_gather_dot_i16(const float* v, const int16_t* idx, const float* x,
                               Py_ssize_t k) noexcept nogil
    float srigl_gather_dot_i32(const float* v, const int32_t* idx, const float* x,
                               Py_ssize_t k) noexcept nogil

    # Batch-1 lookup of one group of LOOKUP_ROWS rows from the lookup layout (only on
    # a path where srigl_has_lookup(): avx512).
    enum: LOOKUP_COLUMNS "SRIGL_LOOKUP_COLUMNS"
    enum: LOOKUP_ROWS "SRIGL_LOOKUP_ROWS"
    int srigl_has_lookup() noexcept nogil
    void srigl_lookup_group(const float* lv, const uint8_t* li, const int32_t* steps,
                            Py_ssize_t n_blocks, const float* x, Py_ssize_t n_in,
                            const int32_t* rows, const float* bias, float* y,
                            int n_rows) noexcept nogil
    # Batch-1 interleaved rows: one group of 8 rows from the interleaved layout (only on
    # a path where srigl_has_interleaved(): avx2, avx512).
    enum: INTERLEAVED_ROWS "SRIGL_INTERLEAVED_ROWS"
    int srigl_has_interleaved() noexcept nogil
    void srigl_interleaved_group_i16(const float* iv, const int16_t* ii, Py_ssize_t k,
                                     const float* x, const float* bias, float* y,
                                     int n_rows) noexcept nogil
    void srigl_interleaved_group_i32(const float* iv, const int32_t* ii, Py_ssize_t k,
                                     const float* x, const float* bias, float* y,
                                     int n_rows) noexcept nogil
    # Greedy row groups for the lookup layout: order[n_rows] from counts[n_rows, n_blocks].
    void srigl_lookup_order(const int32_t* counts, Py_ssize_t n_rows, Py_ssize_t n_blocks,
                            Py_ssize_t window, int32_t* order, char* taken,
                            int32_t* top) noexcept nogil

    # ViT's steps (see their section in _kernels.h): the GELU of x[n] into out[n] (out
    # may be x), the LayerNorm of one row x[n] into out[n] (out may be x).
    void srigl_gelu(const float* x, Py_ssize_t n, float* out) noexcept nogil
    void srigl_layer_norm(const float* x, Py_ssize_t n, const float* weight,
                          const float* bias, float eps, float* out) noexcept nogil
    # The softmax of one row x[n] into out[n] (out may be x), n >= 1.
    void srigl_softmax(const float* x, Py_ssize_t n, float* out) noexcept nogil

    # Max pooling of one plane x[height, width] -> y[out_h, out_w] (no padding).
    void srigl_max_pool_plane(const float* x, Py_ssize_t height, Py_ssize_t width, int kh,
                              int kw, int stride, float* y, Py_ssize_t out_h,
                              Py_ssize_t out_w) noexcept nogil

    # The depthwise convolution of one plane from its phases (see _kernels.h):
    # filter[kh, kw], ph[sa, se, hq, wq] and DEPTHWISE_CHUNK more floats ->
    # out[out_h, out_w], acc[grid rounded up to DEPTHWISE_CHUNK] scratch.
    enum: DEPTHWISE_CHUNK "SRIGL_DEPTHWISE_CHUNK"
    void srigl_depthwise(const float* filter, int kh, int kw, int stride, const float* ph,
                         int se, Py_ssize_t hq, Py_ssize_t wq, float bias, int relu,
                         float* acc, float* out, Py_ssize_t out_h,
                         Py_ssize_t out_w) noexcept nogil

    # The convolution's phase planes (see the section below and _kernels.h): one plane
    # x[height, width] -> its phases ph[sa, se, hq, wq].
    void srigl_conv_phase(const float* x, Py_ssize_t height, Py_ssize_t width, int stride,
                          int padding, int sa, int se, Py_ssize_t hq, Py_ssize_t wq,
                          float* ph) noexcept nogil

    # One parallel region per call (see _kernels.h): the batched product and the
    # convolution, each thread making the layout its units read in its own scratch.
    void srigl_matmul_run(const float* values, const void* indices, int short_indices,
                          const Py_ssize_t* starts, Py_ssize_t n_blocks, Py_ssize_t n_active,
                          const float* bias, const float* x, Py_ssize_t batch,
                          Py_ssize_t n_in, Py_ssize_t split, int n_vectors, int tail_vectors,
                          float* xt, int threads, float* y) noexcept nogil
    void srigl_conv_run(const float* values, const int32_t* offsets, const Py_ssize_t* starts,
                        Py_ssize_t n_blocks, Py_ssize_t n_active, const float* bias,
                        const float* x, Py_ssize_t batch, Py_ssize_t channels,
                        Py_ssize_t height, Py_ssize_t width, int stride, int padding, int sa,
                        int se, Py_ssize_t hq, Py_ssize_t wq, int in_place, Py_ssize_t out_h,
                        Py_ssize_t out_w, int n_vectors, int tail_vectors, float* ph,
                        Py_ssize_t ph_size, int threads, const float* residual, int relu,
                        float* y) noexcept nogil


PATH_NAMES = tuple(srigl_path_name(p).decode() for p in range(N_PATHS))
_active_path = srigl_select_path()


def cpu_paths():
    """The CPU paths (kernel variants) this build carries and this CPU runs, best first:
    a tuple drawn from ("avx512", "avx2", "generic")."""
    return tuple(PATH_NAMES[p] for p in range(N_PATHS) if srigl_path_supported(p))


def cpu_path():
    """The CPU path the condensed kernels run: the best of ``cpu_paths()`` unless
    ``set_cpu_path`` chose another."""
    return PATH_NAMES[_active_path]


def set_cpu_path(name):
    """Run the condensed kernels on CPU path ``name`` (one of ``cpu_paths()``) from now
    on; returns the previous path's name. For tests and benchmarks: it is process-wide
    and must not be called while a kernel runs in another thread."""
    global _active_path
    if name not in PATH_NAMES:
        raise ValueError(f"name must be one of {PATH_NAMES}, got {name!r}")
    path = PATH_NAMES.index(name)
    if srigl_set_path(path) != 0:
        raise ValueError(f"CPU path {name!r} is not available here (this build and CPU "
                         f"support {cpu_paths()})")
    previous, _active_path = _active_path, path
    return PATH_NAMES[previous]


def openmp_enabled():
    """True when this build of the kernels was compiled with OpenMP."""
    return bool(SRIGL_NP_OPENMP)


def max_threads():
    """OpenMP's default thread count (1 in a build without OpenMP)."""
    return omp_get_max_threads()


cdef int _resolve_threads(object threads) except -1:
    """The thread count for a prange: ``thread_policy.resolve_threads`` (the one bound
    check, made before any OpenMP region; 0 means the default team)."""
    return resolve_threads(threads, omp_get_max_threads())


def _check_float_array(name, a, ndim):
    """A C-contiguous float32/float64 NumPy array of ``ndim`` dimensions (the package's
    one argument check, ``validation.check_array``)."""
    check_array(name, a, dtypes=(np.float32, np.float64), ndim=ndim, contiguous=True,
                device="cpu")


INT32_MAX = 2**31 - 1


def conv_output_size(size, kernel, stride, padding):
    """Spatial output size of a convolution or pool: floor((size + 2p - kernel) / s) + 1.

    Checked first, in Python (a stride of 0 divided by zero in C and killed the
    process): each argument an int (TypeError otherwise, bools too), kernel and stride
    >= 1, size and padding >= 0, each and size + 2*padding <= INT32_MAX, and a kernel
    that fits the padded size (an output of at least 1); ValueError naming the
    argument otherwise.
    """
    return _output_sizes({"size": size}, {"kernel": kernel}, stride, padding)[0]


def _geometry_int(name, value, minimum):
    """``value`` as a Python int in [minimum, INT32_MAX]: TypeError for a non-int (a bool
    too), ValueError naming ``name`` outside the range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > INT32_MAX:
        raise ValueError(f"{name} must be <= {INT32_MAX}, got {value}")
    return value


def _output_sizes(sizes, kernels, stride, padding):
    """The output size along each axis, every value checked as ``conv_output_size``
    says: sizes {name: size} and kernels {name: kernel}, one pair per axis."""
    sizes = {name: _geometry_int(name, value, 0) for name, value in sizes.items()}
    kernels = {name: _geometry_int(name, value, 1) for name, value in kernels.items()}
    stride = _geometry_int("stride", stride, 1)
    padding = _geometry_int("padding", padding, 0)
    for name, size in sizes.items():
        if size + 2 * padding > INT32_MAX:
            raise ValueError(f"{name} + 2*padding must be <= {INT32_MAX}, got "
                             f"{size} + 2*{padding}")
    if any(size + 2 * padding < kernel
           for size, kernel in zip(sizes.values(), kernels.values())):
        kernel_text = ", ".join(map(str, kernels.values()))
        size_text = ", ".join(map(str, sizes.values()))
        raise ValueError(f"kernel ({kernel_text}) with padding {padding} does not fit input "
                         f"({size_text})")
    return tuple((size + 2 * padding - kernel) // stride + 1
                 for size, kernel in zip(sizes.values(), kernels.values()))


def _check_conv_geometry(height, width, kh, kw, stride, padding):
    """(out_h, out_w) for Python ints, checked in Python before anything becomes a C int
    (``conv_output_size``'s checks, per axis)."""
    return _output_sizes({"height": height, "width": width},
                         {"kernel size kh": kh, "kernel size kw": kw}, stride, padding)


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
    """Unfold the patches of image b.

    Input:   x[batch, channels, height, width]; b, the image; kh, kw, stride, padding;
             out_h, out_w, the output size they give.
    Output:  cols[batch*out_h*out_w, channels*kh*kw], rows b*out_h*out_w ... of image b
             (taps in the padding are 0); other rows are untouched.
    """
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
    """Fold the rows of image b back, summing overlapping taps.

    Input:   cols[batch*out_h*out_w, channels*kh*kw]; b, the image; kh, kw, stride,
             padding; out_h, out_w, the output size they give.
    Output:  x[batch, channels, height, width], image b accumulated into (+=; taps
             in the padding are dropped); other images are untouched.
    """
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
    """im2col of the whole batch, parallel over images (each writes its own rows).

    Input:   x[batch, channels, height, width]; geometry as _im2col_image; threads.
    Output:  cols[batch*out_h*out_w, channels*kh*kw].
    """
    cdef Py_ssize_t b
    for b in prange(x.shape[0], schedule="static", num_threads=threads):
        _im2col_image(x, cols, b, kh, kw, stride, padding, out_h, out_w)


cdef void _col2im(const floating[:, ::1] cols, floating[:, :, :, ::1] x, int kh, int kw,
                  int stride, int padding, Py_ssize_t out_h, Py_ssize_t out_w,
                  int threads) noexcept nogil:
    """col2im of the whole batch, parallel over images (each sums into its own image).

    Input:   cols[batch*out_h*out_w, channels*kh*kw]; geometry as _col2im_image; threads.
    Output:  x[batch, channels, height, width], accumulated into (the caller zeroes it).
    """
    cdef Py_ssize_t b
    for b in prange(x.shape[0], schedule="static", num_threads=threads):
        _col2im_image(cols, x, b, kh, kw, stride, padding, out_h, out_w)


def im2col(x, kh, kw, stride=1, padding=0, threads=0, out=None):
    """Unfold image patches into rows.

    x[batch, channels, height, width] (float32/float64, C-contiguous)
    -> cols[batch*out_h*out_w, channels*kh*kw], same dtype; taps outside the
    image (padding) are 0. Row ``(b*out_h + oh)*out_w + ow`` holds the patch of
    output pixel (oh, ow) of image b, columns ordered (channel, ki, kj).
    Parallel over the batch. ``out``: an array of that shape and dtype (C-contiguous,
    writeable, not overlapping x) to fill and return instead of a new one.
    """
    _check_float_array("x", x, 4)
    batch, channels, height, width = x.shape
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, padding)
    cdef int n_threads = _resolve_threads(threads)
    shape = (batch * out_h * out_w, channels * kh * kw)
    if out is None:
        cols = np.empty(shape, dtype=x.dtype)
    else:
        _check_float_array("out", out, 2)
        if out.dtype != x.dtype:
            raise TypeError(f"out must have x's dtype {x.dtype}, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"out must have shape {shape}, got {out.shape}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if np.may_share_memory(out, x):
            raise ValueError("out must not overlap x")
        cols = out
    if x.dtype == np.float32:
        _im2col[float](x, cols, kh, kw, stride, padding, out_h, out_w, n_threads)
    else:
        _im2col[double](x, cols, kh, kw, stride, padding, out_h, out_w, n_threads)
    return cols


def col2im(cols, x_shape, kh, kw, stride=1, padding=0, threads=0):
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


# ---------------------------------------------------------------------------
# Condensed forward (SRigL's inference representation, paper Sec. 4.4)
#
# A constant fan-in layer keeps, per active neuron r, exactly k weights:
# values[r, j] sits at input column indices[r, j]. The forward pass is
#     y[b, r] = bias[r] + sum_j values[r, j] * x[b, indices[r, j]].
#
# Safety model: the kernels read x at indices[r, j], so the indices must be in
# [0, n_in). ``CondensedWeights`` checks that once, when it is built, and keeps
# its own immutable copy (NumPy arrays over ``bytes``, which cannot be made
# writeable again), so nothing can change an index after the check. Every
# public kernel takes a ``CondensedWeights`` and then only has to check x and
# bias against its shape: O(batch * n_in) work, never O(nnz), per call.
# ---------------------------------------------------------------------------

ctypedef fused index_t:
    int16_t
    int32_t

def _frozen_copy(a, dtype):
    """A C-contiguous, read-only copy of ``a`` that no one can make writeable."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return np.frombuffer(a.tobytes(), dtype=dtype).reshape(a.shape)


cdef inline void* _data(object a):
    """The data pointer of ``a``, a C-contiguous ndarray the caller made or checked:
    no buffer request. With typed memoryviews of x, y, values and indices instead, a
    batch-1 call of a 16 x 16 layer took 2.8 us against 2.0 us (Zen 5)."""
    return cnp.PyArray_DATA(<cnp.ndarray>a)


def _aligned_empty(shape):
    """An uninitialised C-contiguous float32 array of ``shape`` whose data starts on a
    64-byte boundary (a cache line, one AVX-512 vector)."""
    size = 1
    for n in shape:
        size *= n
    raw = np.empty(size + 16, dtype=np.float32)
    start = (-raw.ctypes.data % 64) // 4
    return raw[start:start + size].reshape(shape)


cdef class CondensedWeights:
    """Validated, immutable condensed weights: the only way into the condensed kernels.

    values[n_active, k]   float32, the kept weights of each active neuron.
    indices[n_active, k]  int16 or int32, their input columns, each in [0, n_in).
    n_in                  input width the indices address.

    Construction checks dtypes, shapes and the index range (vectorised, O(nnz),
    once) and stores read-only copies; ``values`` and ``indices`` give them back.
    k >= 1 is required (an active neuron has at least one weight); n_active may be 0.

    For the batched kernel the non-zeros are also kept grouped by column block
    (``column_block`` input columns each, from ``column_block_width``), block-major,
    then row, then their order in the row: ``packed_values[nnz]``,
    ``packed_indices[nnz]`` and ``starts[column_blocks * n_active + 1]``: the
    non-zeros of row r in block c are packed[starts[i] : starts[i + 1]], i = c*n_active + r.
    With one block these are views of values/indices; otherwise they are a second
    copy of the weights.

    On a CPU path with the batch-1 lookup kernel (avx512) the first batch-1 product
    builds a third layout, kept private (see ``_lookup_layout``), when
    ``lookup_padding()`` is at most LOOKUP_MAX_PADDING: 5 bytes per lane, so 7-8 bytes
    per non-zero at 10% density (the weights themselves take 6 with int16 indices),
    built in 0.016 s for 236k non-zeros and 0.17 s for 1.7M (Zen 5; NumPy and one C
    pass). Where the batch-1 product runs the interleaved rows (``vector_kernel``), its
    first call builds their layout instead (``_interleaved_layout``): one more copy of the
    weights, rows padded to a multiple of 8, built in 0.7 ms for 236k non-zeros and 9 ms
    for 1.7M (Intel Xeon).
    """

    cdef readonly object values
    cdef readonly object indices
    cdef readonly Py_ssize_t n_in
    cdef readonly Py_ssize_t n_active
    cdef readonly Py_ssize_t k
    cdef readonly Py_ssize_t column_block
    cdef readonly Py_ssize_t column_blocks
    cdef readonly object packed_values
    cdef readonly object packed_indices
    cdef readonly object starts
    cdef object _lookup            # the lookup layout, None until built
    cdef double _padding           # lookup_padding(), -1 until computed
    # The layout's data, for the kernel call without a buffer request per call (the
    # arrays stay alive in _lookup, read-only).
    cdef const float* _lv
    cdef const uint8_t* _li
    cdef const int32_t* _steps
    cdef const Py_ssize_t* _offsets
    cdef const int32_t* _rows
    cdef object _grouping          # (order, counts) of _lookup_grouping, None until made
    cdef object _interleaved       # the interleaved layout (iv, ii), None until built
    cdef const float* _iv
    cdef const void* _ii
    cdef bint _short               # int16 indices
    cdef dict _tap_offsets         # the convolution's tap offsets per geometry

    def __init__(self, values, indices, n_in):
        if not hasattr(values, "dtype") or values.dtype != np.float32:
            raise TypeError(f"values must be a float32 array, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        if not hasattr(indices, "dtype") or indices.dtype not in (np.int16, np.int32):
            raise TypeError(f"indices must be an int16 or int32 array, got "
                            f"{getattr(indices, 'dtype', type(indices).__name__)}")
        if values.ndim != 2:
            raise ValueError(f"values must be 2-D (n_active, k), got shape {values.shape}")
        if indices.shape != values.shape:
            raise ValueError(f"indices must have the shape of values {values.shape}, "
                             f"got {indices.shape}")
        if values.shape[1] < 1:
            raise ValueError(f"values must have k >= 1 columns, got shape {values.shape}")
        if isinstance(n_in, bool) or not isinstance(n_in, (int, np.integer)) or n_in < 1:
            raise ValueError(f"n_in must be a positive integer, got {n_in!r}")
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= n_in:
                raise ValueError(f"indices must lie in [0, n_in={n_in}), got values in "
                                 f"[{low}, {high}]")
        self.values = _frozen_copy(values, np.float32)
        self.indices = _frozen_copy(indices, indices.dtype)
        self.n_in = n_in
        self.n_active, self.k = values.shape
        self.column_block = column_block_width(n_in, self.k)
        self.column_blocks = (n_in + self.column_block - 1) // self.column_block
        if self.column_blocks == 1:
            self.packed_values = self.values.reshape(-1)
            self.packed_indices = self.indices.reshape(-1)
            self.starts = np.arange(0, self.n_active * self.k + 1, self.k, dtype=np.intp)
        else:
            block = self.indices.reshape(-1).astype(np.intp) // self.column_block
            rows = np.repeat(np.arange(self.n_active, dtype=np.intp), self.k)
            key = block * self.n_active + rows
            order = np.argsort(key, kind="stable")
            self.packed_values = _frozen_copy(self.values.reshape(-1)[order], np.float32)
            self.packed_indices = _frozen_copy(self.indices.reshape(-1)[order],
                                               indices.dtype)
            counts = np.bincount(key, minlength=self.column_blocks * self.n_active)
            self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
        self.starts.flags.writeable = False
        self._lookup = None
        self._grouping = None
        self._interleaved = None
        self._short = self.indices.dtype == np.int16
        self._padding = -1
        self._tap_offsets = {}

    def _conv_offsets(self, kh, kw, stride, sa, se, hq, wq):
        """offsets[nnz] int32, read-only, in packed order: each non-zero's tap (c, i, j)
        as an offset into one image's phase planes ph[channels, sa, se, hq, wq]
        (condensed_conv2d), ((c*sa + i % stride)*se + j % stride)*hq*wq
        + (i // stride)*wq + j // stride. Made once per geometry, then kept: a
        network calls each layer at one image size. The caller checks the geometry
        (n_in = channels*kh*kw)."""
        key = (kh, kw, stride, sa, se, hq, wq)
        offsets = self._tap_offsets.get(key)
        if offsets is None:
            tap = self.packed_indices.astype(np.int64)
            c, i, j = tap // (kh * kw), tap // kw % kh, tap % kw
            offsets = (((c * sa + i % stride) * se + j % stride) * hq * wq
                       + (i // stride) * wq + j // stride)
            if offsets.size and int(offsets.max()) > INT32_MAX:
                raise ValueError(f"x's images are too large for the convolution's int32 "
                                 f"offsets (largest {int(offsets.max())})")
            offsets = offsets.astype(np.int32)
            offsets.flags.writeable = False
            self._tap_offsets[key] = offsets
        return offsets

    def _lookup_grouping(self):
        """(order[n_active] int32, counts[n_active, n_blocks] int32), made once: counts[r, b]
        the non-zeros of row r in column block b (LOOKUP_COLUMNS columns each), order the
        rows grouped LOOKUP_ROWS at a time by srigl_lookup_order (greedy, within a window
        of LOOKUP_WINDOW rows, fewer for very wide layers so that the grouping stays
        under about 2**27 steps)."""
        if self._grouping is not None:
            return self._grouping
        cdef Py_ssize_t n_blocks = (self.n_in + LOOKUP_COLUMNS - 1) // LOOKUP_COLUMNS
        if not self._lookup_fits():
            raise ValueError(f"a layer of {self.n_active} rows over {self.n_in} inputs has "
                             f"too many column blocks ({n_blocks}) for the lookup layout")
        rows = np.repeat(np.arange(self.n_active, dtype=np.intp), self.k)
        key = rows * n_blocks + self.indices.reshape(-1) // LOOKUP_COLUMNS
        counts = np.bincount(key, minlength=self.n_active * n_blocks).astype(np.int32)
        order = np.empty(self.n_active, dtype=np.int32)
        taken = np.zeros(self.n_active, dtype=np.int8)
        top = np.empty(n_blocks, dtype=np.int32)
        cdef Py_ssize_t window = max(16, min(LOOKUP_WINDOW,
                                             2**27 // max(1, self.n_active * n_blocks)))
        cdef const int32_t[::1] counts_view = counts
        cdef int32_t[::1] order_view = order
        cdef int8_t[::1] taken_view = taken
        cdef int32_t[::1] top_view = top
        if self.n_active:
            with nogil:
                srigl_lookup_order(&counts_view[0], self.n_active, n_blocks, window,
                                   &order_view[0], <char*>&taken_view[0], &top_view[0])
        self._grouping = (order, counts.reshape(self.n_active, n_blocks))
        return self._grouping

    def _lookup_steps(self):
        """steps[n_groups, n_blocks] int32: the lookup layout's steps per (row group,
        column block), the most non-zeros any row of the group has in the block."""
        order, counts = self._lookup_grouping()
        n_groups = (self.n_active + LOOKUP_ROWS - 1) // LOOKUP_ROWS
        grouped = np.zeros((n_groups * LOOKUP_ROWS, counts.shape[1]), dtype=np.int32)
        grouped[:self.n_active] = counts[order]
        return grouped.reshape(n_groups, LOOKUP_ROWS, -1).max(axis=1)

    def _lookup_fits(self):
        """Whether the per-(row, column block) counts of the lookup layout take at most
        LOOKUP_MAX_COUNTS entries or 8 per non-zero: a very wide, very sparse layer
        (millions of inputs) would need more memory for them than for its weights, and
        would pad far past LOOKUP_MAX_PADDING anyway."""
        n_blocks = (self.n_in + LOOKUP_COLUMNS - 1) // LOOKUP_COLUMNS
        return self.n_active * n_blocks <= max(LOOKUP_MAX_COUNTS, 8 * self.n_active * self.k)

    def lookup_padding(self):
        """Lanes the batch-1 lookup kernel computes per non-zero (>= 1; the rest multiply
        a padding 0 by a 0): LOOKUP_ROWS * total steps / (n_active * k). 1.4-1.6 at 10%
        density with n_in in the thousands, more for sparser rows; 0.0 for no rows; inf
        for a layer too wide for the layout (``_lookup_fits``)."""
        if self._padding < 0:
            if self.n_active == 0:
                self._padding = 0.0
            elif not self._lookup_fits():
                self._padding = float("inf")
            else:
                steps = self._lookup_steps()
                self._padding = LOOKUP_ROWS * float(steps.sum()) / (self.n_active * self.k)
        return self._padding

    def _lookup_layout(self):
        """The lookup layout (built once, then cached; n_active >= 1), a tuple of
        read-only arrays:

            lv[n_steps * 16]   float32, 64-byte aligned: step s, lane l holds a value
                               of row order[16*g + l] (g the step's group) or 0 (padding)
            li[n_steps * 16]   uint8: its column minus the block's first column
                               (b * LOOKUP_COLUMNS), or LOOKUP_COLUMNS (padding)
            steps[n_groups * n_blocks]  int32, from _lookup_steps
            offsets[n_groups + 1]  intp: group g's steps are [offsets[g], offsets[g+1])
            order[n_active]    int32: the rows, group by group (_lookup_grouping)

        Group by group, block by block: a row's non-zeros in a block fill the block's
        steps in their order in the row, in the row's lane."""
        if self._lookup is not None:
            return self._lookup
        order, counts = self._lookup_grouping()
        steps = self._lookup_steps()
        n_groups, n_blocks = steps.shape
        flat = steps.reshape(-1)
        first_step = np.cumsum(flat) - flat                   # of each (group, block)
        offsets = np.zeros(n_groups + 1, dtype=np.intp)
        np.cumsum(steps.sum(axis=1), out=offsets[1:])
        position = np.empty(self.n_active, dtype=np.intp)    # row -> its lane overall
        position[order] = np.arange(self.n_active)
        rows = np.repeat(np.arange(self.n_active, dtype=np.intp), self.k)
        blocks = self.indices.reshape(-1) // LOOKUP_COLUMNS
        key = rows * n_blocks + blocks
        sort = np.argsort(key, kind="stable")                 # by row, block, position
        key = key[sort]
        per_key = counts.reshape(-1)
        rank = np.arange(key.size) - (np.cumsum(per_key) - per_key)[key]
        rows, blocks = key // n_blocks, key % n_blocks
        lane_of_row = position[rows]
        lane = (first_step[lane_of_row // LOOKUP_ROWS * n_blocks + blocks] + rank) * (
            LOOKUP_ROWS) + lane_of_row % LOOKUP_ROWS
        n_lanes = int(offsets[n_groups]) * LOOKUP_ROWS
        # 64-byte aligned values: every 16-lane step is one cache line.
        lv = _aligned_empty((n_lanes,))
        lv[:] = 0
        lv[lane] = self.values.reshape(-1)[sort]
        li = np.full(n_lanes, LOOKUP_COLUMNS, dtype=np.uint8)
        li[lane] = self.indices.reshape(-1)[sort] - blocks * LOOKUP_COLUMNS
        flat = np.ascontiguousarray(flat, dtype=np.int32)
        for a in (lv, li, flat, offsets, order):
            a.flags.writeable = False
        if self._lookup is not None:
            # Another thread built it while NumPy released the GIL: keep that one, whose
            # arrays a running kernel may be reading.
            return self._lookup
        cdef const float[::1] lv_view = lv
        cdef const uint8_t[::1] li_view = li
        cdef const int32_t[::1] steps_view = flat
        cdef const Py_ssize_t[::1] offsets_view = offsets
        cdef const int32_t[::1] rows_view = order
        self._lv, self._li = &lv_view[0], &li_view[0]
        self._steps, self._offsets = &steps_view[0], &offsets_view[0]
        self._rows = &rows_view[0]
        self._lookup = (lv, li, flat, offsets, order)
        return self._lookup

    def _interleaved_layout(self):
        """The interleaved layout of the batch-1 interleaved-rows kernel (built once, then
        cached; n_active >= 1), a tuple of read-only arrays, group g of 8 rows at
        [g * k * 8, (g + 1) * k * 8):

            iv[n_groups * k * 8]  float32, 64-byte aligned: iv[(g*k + j)*8 + l] =
                                  values[8g + l, j], 0 for rows past n_active
            ii[n_groups * k * 8]  the index dtype: indices[8g + l, j], 0 past n_active

        A second copy of the weights (6 or 8 bytes per non-zero), as the packed layout
        of the batched kernel is."""
        if self._interleaved is not None:
            return self._interleaved
        n_groups = (self.n_active + INTERLEAVED_ROWS - 1) // INTERLEAVED_ROWS
        rows = n_groups * INTERLEAVED_ROWS
        iv = _aligned_empty((n_groups, self.k, INTERLEAVED_ROWS))
        iv[:] = 0
        ii = np.zeros((n_groups, self.k, INTERLEAVED_ROWS), dtype=self.indices.dtype)
        padded = np.zeros((rows, self.k), dtype=np.float32)
        padded[:self.n_active] = self.values
        iv[:] = padded.reshape(n_groups, INTERLEAVED_ROWS, self.k).transpose(0, 2, 1)
        padded = np.zeros((rows, self.k), dtype=self.indices.dtype)
        padded[:self.n_active] = self.indices
        ii[:] = padded.reshape(n_groups, INTERLEAVED_ROWS, self.k).transpose(0, 2, 1)
        iv, ii = iv.reshape(-1), ii.reshape(-1)
        for a in (iv, ii):
            a.flags.writeable = False
        if self._interleaved is not None:   # built by another thread meanwhile: keep it
            return self._interleaved
        self._iv = <const float*>_data(iv)
        self._ii = _data(ii)
        self._interleaved = (iv, ii)
        return self._interleaved

    def __repr__(self):
        return (f"CondensedWeights(n_active={self.n_active}, k={self.k}, n_in={self.n_in}, "
                f"indices={self.indices.dtype})")


cdef inline float _gather_dot(const float* v, const index_t* idx, const float* x,
                              Py_ssize_t k) noexcept nogil:
    """sum_j v[j] * x[idx[j]] for one output row (srigl_gather_dot_* in _kernels.h).

    Input:   v[k] float32, idx[k] int16/int32 (each in [0, n_in)), x[n_in] float32.
    Returns: the dot product, float32.
    """
    if index_t is int16_t:
        return srigl_gather_dot_i16(v, idx, x, k)
    else:
        return srigl_gather_dot_i32(v, idx, x, k)


cdef void _interleaved_vector(const float* iv, const index_t* ii, Py_ssize_t n_active,
                              Py_ssize_t k, const float* x, const float* bias, float* y,
                              int threads) noexcept nogil:
    """y[r] = bias[r] + sum_j values[r, j] * x[indices[r, j]] by the interleaved-rows
    kernel: one srigl_interleaved_group per group of INTERLEAVED_ROWS rows, parallel over
    groups.

    Input:   the interleaved layout (CondensedWeights._interleaved_layout: iv, ii of
             n_groups * k * 8) of n_active >= 1 rows of fan-in k, x[n_in] float32,
             bias[n_active] float32 or NULL, threads.
    Output:  y[n_active] float32.
    """
    cdef Py_ssize_t n_groups = (n_active + INTERLEAVED_ROWS - 1) // INTERLEAVED_ROWS, g
    if threads == 1:   # see _condensed_vector
        for g in range(n_groups):
            _interleaved_item(iv, ii, n_active, k, x, bias, y, g)
    else:
        for g in prange(n_groups, schedule="static", num_threads=threads):
            _interleaved_item(iv, ii, n_active, k, x, bias, y, g)


cdef inline void _interleaved_item(const float* iv, const index_t* ii, Py_ssize_t n_active,
                                   Py_ssize_t k, const float* x, const float* bias, float* y,
                                   Py_ssize_t g) noexcept nogil:
    """Group g of _interleaved_vector: rows [8g, min(8g + 8, n_active))."""
    cdef Py_ssize_t r0 = g * INTERLEAVED_ROWS, step = k * INTERLEAVED_ROWS
    cdef int n_rows = <int>min(<Py_ssize_t>INTERLEAVED_ROWS, n_active - r0)
    cdef const float* b = bias + r0 if bias != NULL else NULL
    if index_t is int16_t:
        srigl_interleaved_group_i16(iv + g * step, ii + g * step, k, x, b, y + r0, n_rows)
    else:
        srigl_interleaved_group_i32(iv + g * step, ii + g * step, k, x, b, y + r0, n_rows)


cdef void _condensed_vector(const float* values, const index_t* indices,
                            Py_ssize_t n_active, Py_ssize_t k, const float* x,
                            const float* bias, float* y, int threads) noexcept nogil:
    """y[r] = bias[r] + sum_j values[r, j] * x[indices[r, j]]: one gather-dot per row,
    parallel over rows (the batch-1 kernel where the lookup kernel is not used).

    Input:   values[n_active, k] float32, indices[n_active, k] int16/int32 (C order),
             x[n_in] float32, bias[n_active] float32 or NULL, threads.
    Output:  y[n_active] float32.
    """
    cdef Py_ssize_t r
    if threads == 1:
        # No parallel region for one thread: entering even a one-thread team took
        # about 0.7 us of a 1.9 us call (1 x 1 layer, Intel Xeon, libgomp).
        for r in range(n_active):
            y[r] = _gather_dot(values + r * k, indices + r * k, x, k) + (
                bias[r] if bias != NULL else 0)
    else:
        for r in prange(n_active, schedule="static", num_threads=threads):
            y[r] = _gather_dot(values + r * k, indices + r * k, x, k) + (
                bias[r] if bias != NULL else 0)


# Column blocks of the batched kernel hold about SEGMENT_NONZEROS non-zeros of a row
# and at least MIN_COLUMN_BLOCK columns (at the widest tile, 128 columns of the
# transposed input are 32 KiB, an L1 cache). Measured on Zen 3 (2 threads, batch
# 256, 64-wide tiles, n_in 768-4096): at 10% density, 16-24 non-zeros per block ran
# 10-20% faster than 32-64 and than 1024-column blocks; at 30% density blocking ran
# 1.5-2x faster than none; at 1% density it made no difference beyond noise.
MIN_COLUMN_BLOCK = 128
SEGMENT_NONZEROS = 16


def column_block_width(Py_ssize_t n_in, Py_ssize_t k):
    """Input columns per column block for a layer of fan-in k over n_in inputs: a
    multiple of 64, at least MIN_COLUMN_BLOCK, about SEGMENT_NONZEROS * n_in / k."""
    cdef Py_ssize_t step = 64 * max(k, 1)
    return max(MIN_COLUMN_BLOCK, (SEGMENT_NONZEROS * n_in + step - 1) // step * 64)


# Tile width of the batched kernel: 8 * n_vectors batch values, 64 or as few as the
# batch needs. Narrower tiles interleave more rows (RG = 8 / n_vectors) to keep 8
# FMA chains going. On Zen 3 (2 threads, batch 256, 90% sparsity, column-blocked)
# 64-wide tiles ran 5-10% faster than 32-wide ones with two rows interleaved: one
# value and index load per 8 FMAs instead of per 4, and half the passes over them.
def tile_vectors(Py_ssize_t batch):
    """The batched kernel's tile width in 8-float vectors (1, 2, 4 or 8)."""
    return 8 if batch > 32 else 4 if batch > 16 else 2 if batch > 8 else 1


cdef int _serial_if_small(int threads, Py_ssize_t work) except -1:
    """The team for a call of ``work`` multiply-adds: ``thread_policy.team_size`` (the
    grain: a call too small to pay for waking the team runs on one thread). One thread
    stays one without the Python call (~0.2 us of a batch-1 call's ~2)."""
    return threads if threads <= 1 else team_size(threads, work)


cdef inline bint _ready(object a, int ndim, Py_ssize_t last):
    """Whether ``a`` is already what a kernel reads: exactly an ndarray, float32 in native
    byte order, aligned and C-contiguous, ``ndim`` dims, the last of size ``last``. A
    C-level test, so that a call with such arrays (the usual case) skips the Python-level
    checks and conversion: 0.35 us of a 1.2 us batch-1 call of a 1 x 1 layer (Intel
    Xeon)."""
    if not cnp.PyArray_CheckExact(a):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32 and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_DIMS(arr)[ndim - 1] == last and cnp.PyArray_ISCARRAY_RO(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr))


def _condensed_input(weights, x, ndim):
    """x as C-contiguous float32 with ``ndim`` dims and last axis n_in (converted if needed)."""
    if not isinstance(weights, CondensedWeights):
        raise TypeError(f"weights must be a CondensedWeights, got {type(weights).__name__}")
    if _ready(x, ndim, (<CondensedWeights>weights).n_in):
        return x
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != ndim or x.shape[ndim - 1] != weights.n_in:
        expected = "(n_in,)" if ndim == 1 else "(batch, n_in)"
        raise ValueError(f"x must have shape {expected} with n_in={weights.n_in}, "
                         f"got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _condensed_bias(CondensedWeights weights not None, bias):
    if bias is None:
        return None
    if _ready(bias, 1, weights.n_active):
        return bias
    if not hasattr(bias, "dtype") or bias.dtype != np.float32:
        raise TypeError(f"bias must be a float32 array or None, got "
                        f"{getattr(bias, 'dtype', type(bias).__name__)}")
    if bias.shape != (weights.n_active,):
        raise ValueError(f"bias must have shape ({weights.n_active},), got {bias.shape}")
    return np.ascontiguousarray(bias)


cdef void _lookup_vector(const float* lv, const uint8_t* li, const int32_t* steps,
                         const Py_ssize_t* offsets, const int32_t* rows, const float* x,
                         Py_ssize_t n_in, const float* bias, float* y, Py_ssize_t n_active,
                         int threads) noexcept nogil:
    """y[r] = bias[r] + sum over row r's non-zeros of value * x[column], by the lookup
    kernel: one srigl_lookup_group per group of LOOKUP_ROWS rows, parallel over groups.

    Input:   the lookup layout of CondensedWeights._lookup_layout (lv[n_steps * 16],
             li[n_steps * 16], steps[n_groups * n_blocks], offsets[n_groups + 1],
             rows[n_active], the order) for
             n_active >= 1 rows over n_in inputs, x[n_in] float32, bias[n_active]
             float32 or NULL, threads.
    Output:  y[n_active] float32.
    """
    cdef Py_ssize_t n_groups = (n_active + LOOKUP_ROWS - 1) // LOOKUP_ROWS
    cdef Py_ssize_t n_blocks = (n_in + LOOKUP_COLUMNS - 1) // LOOKUP_COLUMNS, g, r0
    if threads == 1:   # see _condensed_vector
        for g in range(n_groups):
            r0 = g * LOOKUP_ROWS
            srigl_lookup_group(lv + offsets[g] * LOOKUP_ROWS, li + offsets[g] * LOOKUP_ROWS,
                               steps + g * n_blocks, n_blocks, x, n_in, rows + r0, bias, y,
                               <int>min(<Py_ssize_t>LOOKUP_ROWS, n_active - r0))
    else:
        for g in prange(n_groups, schedule="static", num_threads=threads):
            r0 = g * LOOKUP_ROWS
            srigl_lookup_group(lv + offsets[g] * LOOKUP_ROWS, li + offsets[g] * LOOKUP_ROWS,
                               steps + g * n_blocks, n_blocks, x, n_in, rows + r0, bias, y,
                               <int>min(<Py_ssize_t>LOOKUP_ROWS, n_active - r0))


# The batch-1 lookup kernel is used where it computes at most this many lanes per
# non-zero (CondensedWeights.lookup_padding()). Measured on Zen 5 through the test hook
# (1 thread, random constant fan-in, medians of 15 interleaved rounds), gather-dot time
# over lookup time at that padding: 4096 inputs, k 410: 1.91x at 1.59; k 100: 1.28x at
# 2.26; k 41: 1.00x at 2.99; k 20: 0.88x at 3.83; k 8: 0.63x at 4.84. 768 inputs (13
# blocks of 63 columns, against 66): 2.97x at 1.39 (k 77), 1.88x at 2.04
# (k 8), 2.80x at 2.09 (k 4); near dense (k 700): 3.90x at 1.04.
LOOKUP_MAX_PADDING = 3.0
cdef double _lookup_max_padding = LOOKUP_MAX_PADDING
# Rows srigl_lookup_order looks through for each group member. On random 10%-dense
# layers 512 left a padding of 1.39 / 1.57 / 1.59 where searching the whole layer left
# 1.35 / 1.57 / 1.56 (3072 rows of 768 inputs, 768 of 3072, 4096 of 4096), and it bounds
# the search at n_rows * 512 * n_blocks steps.
LOOKUP_WINDOW = 512
# Entries of the lookup layout's count matrix (n_active * column blocks, int32) allowed
# whatever the non-zeros: 16 MiB.
LOOKUP_MAX_COUNTS = 1 << 22


# The batch-1 interleaved-rows kernel (groups of INTERLEAVED_ROWS = 8 rows, one 8-float
# vector of sums; SRIGL_INTERLEAVED_ROWS in _kernels.h) runs on the avx2 path, and on the
# avx512 path where the lookup does not, for layers of at least INTERLEAVED_MIN_ROWS rows;
# smaller layers take the gather-dot (a group of fewer rows computes padding lanes at the
# full price). Measured on an Intel Xeon with AVX-512 (docs/bench/batch1_avx2.md; 1 and
# 2 threads, medians of 9 interleaved rounds): interleaved over gather-dot time 0.32-0.97
# on every layer of 8 rows or more tried, 8 to 4096 rows, k 1 to 410, on both paths; 7
# rows of 4096 inputs (k 410) even, 1 row 1.9x slower.
INTERLEAVED_MIN_ROWS = 8

cdef Py_ssize_t _interleaved_min_rows = INTERLEAVED_MIN_ROWS

# The batch-1 kernels by number (the ``kernel`` argument below; 0 is "choose").
cdef enum:
    KERNEL_AUTO = 0
    KERNEL_GATHER_DOT = 1
    KERNEL_LOOKUP = 2
    KERNEL_INTERLEAVED = 3
KERNEL_NAMES = {"gather-dot": KERNEL_GATHER_DOT, "lookup": KERNEL_LOOKUP,
                "interleaved": KERNEL_INTERLEAVED}


cdef int _batch1_kernel(CondensedWeights weights, int kernel) except -1:
    """The batch-1 kernel ``weights`` runs: ``kernel`` itself when not KERNEL_AUTO (the
    caller checked the active path has it), else the rule: on a path with the lookup
    (avx512) the lookup where its padding is at most LOOKUP_MAX_PADDING; then, on a path
    with the interleaved rows (avx2, avx512), those for layers of at least
    INTERLEAVED_MIN_ROWS rows; else the gather-dot (and always on the generic path)."""
    if kernel != KERNEL_AUTO:
        return kernel
    if srigl_has_lookup():
        if weights._padding < 0:
            weights.lookup_padding()
        if weights._padding <= _lookup_max_padding:
            return KERNEL_LOOKUP
    if srigl_has_interleaved() and weights.n_active >= _interleaved_min_rows:
        return KERNEL_INTERLEAVED
    return KERNEL_GATHER_DOT


def vector_kernel(CondensedWeights weights not None):
    """The kernel a batch-1 product of ``weights`` runs on the active CPU path:
    "lookup" (AVX-512 table lookup, see ``LOOKUP_MAX_PADDING``), "interleaved" (rows
    interleaved in groups of 8, the avx2 path, see ``INTERLEAVED_MIN_ROWS``) or
    "gather-dot"."""
    if not weights.n_active:
        return "gather-dot"
    cdef int kernel = _batch1_kernel(weights, KERNEL_AUTO)
    return ("lookup" if kernel == KERNEL_LOOKUP else
            "interleaved" if kernel == KERNEL_INTERLEAVED else "gather-dot")


cdef int _vector_dispatch(CondensedWeights weights, const float* x, const float* bias,
                          float* y, int threads, int kernel=KERNEL_AUTO) except -1:
    """The batch-1 product by the kernel _batch1_kernel(weights, kernel) names, for the
    weights' index type (nothing to do when n_active is 0).

    Input:   weights (values[n_active, k], indices[n_active, k]); x[n_in] float32;
             bias[n_active] float32 or NULL; threads; kernel: KERNEL_AUTO or one to force.
    Output:  y[n_active] float32.
    """
    cdef const float* values = <const float*>_data(weights.values)
    cdef const void* indices = _data(weights.indices)
    cdef Py_ssize_t n_active = weights.n_active, k = weights.k
    if n_active == 0:
        return 0
    kernel = _batch1_kernel(weights, kernel)
    if kernel == KERNEL_LOOKUP:
        if weights._lookup is None:
            weights._lookup_layout()
        with nogil:
            _lookup_vector(weights._lv, weights._li, weights._steps, weights._offsets,
                           weights._rows, x, weights.n_in, bias, y, n_active, threads)
    elif kernel == KERNEL_INTERLEAVED:
        if weights._interleaved is None:
            weights._interleaved_layout()
        if weights._short:
            with nogil:
                _interleaved_vector(weights._iv, <const int16_t*>weights._ii, n_active, k,
                                    x, bias, y, threads)
        else:
            with nogil:
                _interleaved_vector(weights._iv, <const int32_t*>weights._ii, n_active, k,
                                    x, bias, y, threads)
    elif weights._short:
        with nogil:
            _condensed_vector(values, <const int16_t*>indices, n_active, k, x, bias, y,
                              threads)
    else:
        with nogil:
            _condensed_vector(values, <const int32_t*>indices, n_active, k, x, bias, y,
                              threads)
    return 0


def condensed_matvec(CondensedWeights weights not None, x, bias=None, threads=0):
    """Condensed forward of one input.

    weights: CondensedWeights (values[n_active, k], indices[n_active, k], n_in);
    x[n_in] (any float dtype and strides; converted to C-contiguous float32);
    bias[n_active] float32 or None -> y[n_active] float32.
    y[r] = bias[r] + sum_j values[r, j] * x[indices[r, j]]. Parallel over rows.
    Runs ``vector_kernel(weights)``: the lookup kernel, the interleaved rows, or a
    gather-dot per row.
    """
    return _matvec(weights, x, bias, threads, KERNEL_AUTO)


def _condensed_matvec_kernel(CondensedWeights weights not None, x, bias=None, threads=0, *,
                             kernel):
    """Test hook: ``condensed_matvec`` forced onto one batch-1 kernel, ``kernel``
    "gather-dot", "lookup" or "interleaved" (keyword-only; "lookup" whatever the
    padding; a ValueError for a kernel the active CPU path lacks, as for any other
    name)."""
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"kernel must be one of {tuple(KERNEL_NAMES)}, got {kernel!r}")
    if ((kernel == "lookup" and not srigl_has_lookup())
            or (kernel == "interleaved" and not srigl_has_interleaved())):
        raise ValueError(f"CPU path {cpu_path()!r} has no {kernel} kernel")
    return _matvec(weights, x, bias, threads, KERNEL_NAMES[kernel])


cdef object _matvec(CondensedWeights weights, x, bias, object threads, int kernel):
    """The body of condensed_matvec and its test hook (kernel as _batch1_kernel's)."""
    x = _condensed_input(weights, x, 1)
    bias = _condensed_bias(weights, bias)
    cdef int n_threads = _serial_if_small(_resolve_threads(threads),
                                          weights.n_active * weights.k)
    y = np.empty(weights.n_active, dtype=np.float32)
    _vector_dispatch(weights, <const float*>_data(x),
                     NULL if bias is None else <const float*>_data(bias),
                     <float*>_data(y), n_threads, kernel)
    return y


cdef object _matmul(CondensedWeights weights, x, bias, object threads, int n_vectors):
    """The body of condensed_matmul, shared with the test hook _condensed_matmul_tiled.

    Input:   weights (packed_values[nnz], packed_indices[nnz], starts, n_active, n_in);
             x[batch, n_in] any float dtype and strides; bias[n_active] float32 or None;
             threads (0 = OpenMP's default); n_vectors: 0 picks the path from the batch
             (batch 1: ``condensed_matvec``'s kernel; else tiles of 8 * tile_vectors(batch) values),
             1, 2, 4 or 8 forces the tiled kernel at tile width 8 * n_vectors for every
             batch, 1 included.
    Output:  y[batch, n_active] float32 (a new array).
    Validates x, bias and threads (the caller validates n_vectors).
    """
    x = _condensed_input(weights, x, 2)
    bias = _condensed_bias(weights, bias)
    cdef int n_threads = _serial_if_small(_resolve_threads(threads),
                                          weights.n_active * weights.k * x.shape[0])
    cdef Py_ssize_t batch = x.shape[0], main, split = batch
    cdef int tail = 1
    cdef const float* b_ptr = NULL
    if bias is not None and weights.n_active:
        b_ptr = <const float*>_data(bias)
    y = np.empty((batch, weights.n_active), dtype=np.float32)
    if batch == 0 or weights.n_active == 0:
        return y
    if n_vectors == 0:
        if batch == 1:
            _vector_dispatch(weights, <const float*>_data(x), b_ptr, <float*>_data(y),
                             n_threads)
            return y
        n_vectors = tile_vectors(batch)
        # Past one 64-wide tile, the rows a last full tile would leave go through tiles
        # of their own width: 197 rows (a ViT image's tokens) take 3 tiles of 64 and one
        # of 8 instead of 4 of 64, a fifth less work.
        main = batch // 64 * 64
        if 0 < main < batch:
            split, tail = main, tile_vectors(batch - main)
    xt = _aligned_empty((n_threads, weights.n_in, 64))
    cdef float* xt_ptr = <float*>_data(xt)
    cdef float* y_ptr = <float*>_data(y)
    cdef const float* x_ptr = <const float*>_data(x)
    cdef const float* values = <const float*>_data(weights.packed_values)
    cdef const void* indices = _data(weights.packed_indices)
    cdef const Py_ssize_t* starts = <const Py_ssize_t*>_data(weights.starts)
    cdef bint short_indices = weights.indices.dtype == np.int16
    cdef Py_ssize_t n_active = weights.n_active, n_blocks = weights.column_blocks
    cdef Py_ssize_t n_in = weights.n_in
    with nogil:
        srigl_matmul_run(values, indices, short_indices, starts, n_blocks, n_active, b_ptr,
                         x_ptr, batch, n_in, split, n_vectors, tail, xt_ptr, n_threads,
                         y_ptr)
    return y


def condensed_matmul(CondensedWeights weights not None, x, bias=None, threads=0):
    """Condensed forward of a batch: y = x @ W.T (+ bias), W the condensed weights.

    weights: CondensedWeights (values[n_active, k], indices[n_active, k], n_in);
    x[batch, n_in] (any float dtype and strides; converted to C-contiguous float32);
    bias[n_active] float32 or None -> y[batch, n_active] float32.

    batch 1 runs ``condensed_matvec``'s kernel (``vector_kernel``). Larger batches go
    through in tiles of ``width`` rows (width = 8 * tile_vectors(batch); past 64 rows,
    tiles of 64 and the rest in tiles of 8 * tile_vectors(rest)), each transposed,
    xt[n_in, width], so that every index reads a contiguous run of ``width`` batch
    values; each output row keeps a width-wide slice in registers while streaming its k
    weights, one column block (``weights.column_block`` inputs) at a time. One parallel
    region (srigl_matmul_run in _kernels.h): each thread takes a run of (tile, block of
    rows) pairs of about equal cost and transposes its tiles itself.
    """
    return _matmul(weights, x, bias, threads, 0)


def _condensed_matmul_tiled(CondensedWeights weights not None, x, bias=None, threads=0, *,
                            n_vectors):
    """Test hook: ``condensed_matmul`` forced onto the batched (tiled) kernel.

    Same arguments, checks and result as ``condensed_matmul``, but every batch, batch 1
    included (no gather-dot), runs the tiled kernel at tile width 8 * n_vectors instead
    of 8 * tile_vectors(batch): n_vectors 1, 2, 4 or 8 (keyword-only; anything else is a
    ValueError). Lets the tests reach each block kernel at every batch size.
    """
    if (isinstance(n_vectors, bool) or not isinstance(n_vectors, (int, np.integer))
            or n_vectors not in (1, 2, 4, 8)):
        raise ValueError(f"n_vectors must be 1, 2, 4 or 8, got {n_vectors!r}")
    return _matmul(weights, x, bias, threads, n_vectors)


# ---------------------------------------------------------------------------
# Condensed convolution on phase planes
#
# A constant fan-in Conv2d keeps, per active output channel r, k taps of its filter:
# values[r, j] at tap indices[r, j] = (c * kh + i) * kw + j' (im2col's column order).
# That is the condensed product over output pixels, each pixel's row its patch. Each
# input plane is copied once, padded and split into its stride x stride phases
# (srigl_conv_phase, _kernels.h); on that layout every tap is a fixed offset from the
# output position, so the batched block kernel reads W consecutive output positions'
# inputs as it reads W batch rows of a transposed tile, straight from the planes
# (srigl_conv_rows): no im2col. The tap offsets replace the indices (int32, in
# CondensedWeights' packed order, made once per geometry and kept). Output and
# residual are NCHW: a channel's pixels are contiguous, so the stores, with the
# residual add and ReLU fused, are row stores.
# ---------------------------------------------------------------------------

def _image_input(x):
    """x[batch, channels, height, width] of any float dtype and strides, as C-contiguous
    float32 (TypeError for other dtypes, ValueError for other ranks)."""
    if not hasattr(x, "dtype") or x.dtype.kind != "f":
        raise TypeError(f"x must be a floating-point array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (batch, channels, height, width), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_relu(relu):
    if not isinstance(relu, (bool, np.bool_)):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__}")
    return bool(relu)


def _residual_input(residual, shape):
    """residual as C-contiguous float32 of the output's ``shape``, or None: TypeError for
    another dtype, ValueError for another shape (both naming ``residual``)."""
    if residual is None:
        return None
    if not hasattr(residual, "dtype") or residual.dtype != np.float32:
        raise TypeError(f"residual must be a float32 array or None, got "
                        f"{getattr(residual, 'dtype', type(residual).__name__)}")
    if residual.shape != shape:
        raise ValueError(f"residual must have the output's shape {shape}, got "
                         f"{residual.shape}")
    return np.ascontiguousarray(residual)


def _phase_geometry(height, width, kh, kw, stride, padding):
    """(sa, se, hq, wq): the phases a plane keeps per axis, min(stride, kernel) (the
    others hold no tap), and the phase grid, ceil((size + 2*padding) / stride)."""
    return (min(stride, kh), min(stride, kw), (height + 2 * padding + stride - 1) // stride,
            (width + 2 * padding + stride - 1) // stride)


def _conv_tile_vectors(Py_ssize_t grid):
    """(n_vectors, tail_vectors): the convolution's tile widths in 8-float vectors for
    a grid of ``grid`` positions per image: the widest of 64, 32, 16, 8 that fits the
    grid (8 below 8), and the narrowest that covers what those leave."""
    cdef int n_vectors = 8
    while n_vectors > 1 and 8 * n_vectors > grid:
        n_vectors //= 2
    cdef Py_ssize_t rest = grid % (8 * n_vectors)
    cdef int tail_vectors = 1
    while 8 * tail_vectors < rest:
        tail_vectors *= 2
    return n_vectors, tail_vectors


def _output_array(out, shape, x, residual):
    """A new float32 array of ``shape``, or ``out`` checked to be one the kernel can
    write: float32 (TypeError), ``shape``, C-contiguous, writeable, not overlapping x,
    and ``residual`` itself or not overlapping it (ValueError, each naming ``out``)."""
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError(f"out must be a float32 NumPy array or None, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != shape:
        raise ValueError(f"out must have the output's shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    if np.may_share_memory(out, x):
        raise ValueError("out must not overlap x")
    if residual is not None and residual is not out and np.may_share_memory(out, residual):
        raise ValueError("out must be residual itself or not overlap it")
    return out


def condensed_conv2d(CondensedWeights weights not None, x, kh, kw, stride=1, padding=0,
                     bias=None, threads=0, *, relu=False, residual=None, out=None):
    """Condensed Conv2d forward on NCHW images, with an optional fused residual add and
    ReLU.

    weights: CondensedWeights over the flattened filters (values[n_active, k],
    indices[n_active, k], n_in = channels*kh*kw, taps ordered (channel, ki, kj));
    x[batch, channels, height, width] (any float dtype and strides; converted to
    C-contiguous float32); bias[n_active] float32 or None; relu (bool, keyword);
    residual[batch, n_active, out_h, out_w] float32 or None (keyword)
    -> y[batch, n_active, out_h, out_w] float32 (NCHW), with
        z[b, r, oh, ow] = bias[r] + sum_j values[r, j] * x[b, c, oh*stride - padding + i,
                                                           ow*stride - padding + j']
        y = relu(z + residual) (each part only when given)
    for tap indices[r, j] = (c*kh + i)*kw + j' (taps in the padding count 0): im2col
    followed by condensed_matmul, up to float32 rounding. So a ResNet block's last
    convolution, its BatchNorm folded into values and bias, is one call:
    ``condensed_conv2d(w, h, 1, 1, bias=b, relu=True, residual=identity)``.
    ``out`` (keyword): an array to write y into and return instead of a new one
    (float32, y's shape, C-contiguous, writeable, not overlapping x); it may be
    ``residual`` itself (each output element is read from residual before it is
    written), so ``out=identity`` adds in place. A graph that reuses its buffers saves
    the page faults of a fresh output per call (at batch 32 a layer's output is tens of
    MB, mapped and zeroed by the OS on every call).

    With stride 1 and no padding x itself is the phase layout and is read in place;
    otherwise it is copied once into padded phase planes (see the section comment).
    Then every (image, tile of output positions, block of 128 channels (SRIGL_ROWS)) is
    one work item, in parallel: batch 1 uses every thread too. The same result at every
    thread count.
    """
    x = _image_input(x)
    batch, channels, height, width = x.shape
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, padding)
    if channels * kh * kw != weights.n_in:
        raise ValueError(f"x must have channels*kh*kw = n_in = {weights.n_in} (kernel "
                         f"({kh}, {kw})), got {channels} channels")
    bias = _condensed_bias(weights, bias)
    relu = _check_relu(relu)
    shape = (batch, weights.n_active, out_h, out_w)
    residual = _residual_input(residual, shape)
    cdef Py_ssize_t n_pixels = batch * out_h * out_w
    cdef int n_threads = _serial_if_small(_resolve_threads(threads),
                                          n_pixels * weights.n_active * weights.k)
    y = _output_array(out, shape, x, residual)
    if y.size == 0:
        return y
    sa, se, hq, wq = _phase_geometry(height, width, kh, kw, stride, padding)
    cdef Py_ssize_t grid = (out_h - 1) * wq + out_w
    cdef int n_vectors, tail_vectors
    n_vectors, tail_vectors = _conv_tile_vectors(grid)
    cdef Py_ssize_t image_size = channels * sa * se * hq * wq
    offsets = weights._conv_offsets(kh, kw, stride, sa, se, hq, wq)
    # Every tile ends within the grid, so reads stay inside an image's planes (the last
    # position plus the largest offset is the last input), except for a grid under 8
    # positions: its one 8-wide tile reads past the grid, into zeroed slack after the
    # last image.
    cdef Py_ssize_t slack = max(0, 8 * n_vectors - grid)
    if image_size + slack > INT32_MAX:
        raise ValueError(f"x's images are too large for the convolution's int32 offsets "
                         f"({channels} channels of {height} x {width})")
    cdef bint in_place = stride == 1 and padding == 0 and slack == 0
    # Each thread copies the images its units read into its own planes (see
    # srigl_conv_run): one image's at a time, so they stay in cache between copy and
    # reads (one buffer of a batch-32 layer's planes, 55 MB at 128 channels of 56 x 56,
    # ran it 2x slower than 32 batch-1 calls).
    cdef Py_ssize_t ph_size = 0 if in_place else image_size + slack
    ph = np.zeros(max(1, n_threads * ph_size), dtype=np.float32)
    cdef float* ph_ptr = <float*>_data(ph)
    cdef const float* x_ptr = <const float*>_data(x)
    cdef float* y_ptr = <float*>_data(y)
    cdef const float* b_ptr = NULL if bias is None else <const float*>_data(bias)
    cdef const float* r_ptr = NULL if residual is None else <const float*>_data(residual)
    cdef const float* values = <const float*>_data(weights.packed_values)
    cdef const int32_t* offset_ptr = <const int32_t*>_data(offsets)
    cdef const Py_ssize_t* starts = <const Py_ssize_t*>_data(weights.starts)
    cdef Py_ssize_t n_active = weights.n_active, n_column_blocks = weights.column_blocks
    cdef Py_ssize_t height_ = height, width_ = width, channels_ = channels, batch_ = batch
    cdef Py_ssize_t hq_ = hq, wq_ = wq, out_h_ = out_h, out_w_ = out_w
    cdef int stride_ = stride, padding_ = padding, relu_ = relu, sa_ = sa, se_ = se
    with nogil:
        srigl_conv_run(values, offset_ptr, starts, n_column_blocks, n_active, b_ptr, x_ptr,
                       batch_, channels_, height_, width_, stride_, padding_, sa_, se_, hq_,
                       wq_, in_place, out_h_, out_w_, n_vectors, tail_vectors, ph_ptr,
                       ph_size, n_threads, r_ptr, relu_, y_ptr)
    return y


# ---------------------------------------------------------------------------
# Depthwise convolution (groups == channels, dense filters: MobileNet's)
#
# Each (image, channel) plane is convolved by its own kh x kw filter: the plane is
# copied into its phases (srigl_conv_phase, as the condensed convolution's planes, in
# a per-thread scratch buffer) and each tap is then one vectorised pass over the
# output grid (srigl_depthwise, _kernels.h).
# ---------------------------------------------------------------------------

cdef void _depthwise_planes(const float* filters, const float* x, Py_ssize_t planes,
                            Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                            int kh, int kw, int stride, int padding, int sa, int se,
                            Py_ssize_t hq, Py_ssize_t wq, const float* bias, int relu,
                            float* y, Py_ssize_t out_h, Py_ssize_t out_w, float* scratch,
                            Py_ssize_t scratch_size, int threads) noexcept nogil:
    """y[p] = the depthwise convolution of plane x[p] by filters[p % channels], parallel
    over planes.

    Input:   filters[channels, kh*kw] float32; x[planes, height, width] float32 (planes
             = batch*channels); the geometry, with sa, se, hq, wq from _phase_geometry;
             bias[channels] or NULL; relu; threads.
    Output:  y[planes, out_h, out_w] float32.
    Scratch: scratch[threads, scratch_size], scratch_size = sa*se*hq*wq
             + DEPTHWISE_CHUNK + grid rounded up to DEPTHWISE_CHUNK: one thread's
             phases, the floats srigl_depthwise may read past them (zeroed by the
             caller: the phase copy never writes them), and its accumulators.
    """
    cdef Py_ssize_t p, c, phase_size = sa * se * hq * wq + DEPTHWISE_CHUNK
    cdef float* own
    for p in prange(planes, schedule="static", num_threads=threads):
        c = p % channels
        own = scratch + threadid() * scratch_size
        srigl_conv_phase(x + p * height * width, height, width, stride, padding, sa, se, hq,
                         wq, own)
        srigl_depthwise(filters + c * kh * kw, kh, kw, stride, own, se, hq, wq,
                        bias[c] if bias != NULL else 0, relu, own + phase_size,
                        y + p * out_h * out_w, out_h, out_w)


def depthwise_conv2d(weight, x, stride=1, padding=0, bias=None, threads=0, *, relu=False):
    """Depthwise Conv2d forward (groups == channels, one dense kh x kw filter per channel).

    weight[channels, 1, kh, kw] (torch's layout) or [channels, kh, kw], float32;
    x[batch, channels, height, width] (any float dtype and strides; converted to
    C-contiguous float32); bias[channels] float32 or None; relu (bool, keyword)
    -> y[batch, channels, out_h, out_w] float32 (NCHW),
        y[b, c, oh, ow] = relu?(bias[c] + sum_{i, j} weight[c, i, j]
                                 * x[b, c, oh*stride - padding + i, ow*stride - padding + j])
    (taps in the padding count 0). Parallel over (image, channel) planes: each is
    copied into its phases (as ``condensed_conv2d``'s planes), then each tap is one
    vectorised pass over the output grid.
    """
    if not hasattr(weight, "dtype") or weight.dtype != np.float32:
        raise TypeError(f"weight must be a float32 array, got "
                        f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.ndim == 4 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if weight.ndim != 3:
        raise ValueError(f"weight must have shape (channels, 1, kh, kw) or (channels, kh, "
                         f"kw), got {weight.shape}")
    x = _image_input(x)
    batch, channels, height, width = x.shape
    if weight.shape[0] != channels:
        raise ValueError(f"weight must have x's {channels} channels, got shape "
                         f"{weight.shape}")
    kh, kw = weight.shape[1], weight.shape[2]
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, padding)
    if bias is not None:
        if not hasattr(bias, "dtype") or bias.dtype != np.float32:
            raise TypeError(f"bias must be a float32 array or None, got "
                            f"{getattr(bias, 'dtype', type(bias).__name__)}")
        if bias.shape != (channels,):
            raise ValueError(f"bias must have shape ({channels},), got {bias.shape}")
        bias = np.ascontiguousarray(bias)
    relu = _check_relu(relu)
    cdef int n_threads = _serial_if_small(_resolve_threads(threads),
                                          batch * channels * kh * kw * out_h * out_w)
    y = np.empty((batch, channels, out_h, out_w), dtype=np.float32)
    if y.size == 0:
        return y
    filters = np.ascontiguousarray(weight.reshape(channels, kh * kw))
    sa, se, hq, wq = _phase_geometry(height, width, kh, kw, stride, padding)
    cdef Py_ssize_t grid = (out_h - 1) * wq + out_w
    cdef Py_ssize_t scratch_size = (sa * se * hq * wq + DEPTHWISE_CHUNK
                                    + (grid + DEPTHWISE_CHUNK - 1) // DEPTHWISE_CHUNK
                                    * DEPTHWISE_CHUNK)
    scratch = np.zeros(n_threads * scratch_size, dtype=np.float32)
    cdef const float* b_ptr = NULL if bias is None else <const float*>_data(bias)
    cdef int kh_ = kh, kw_ = kw, stride_ = stride, padding_ = padding, relu_ = relu
    cdef int sa_ = sa, se_ = se
    cdef Py_ssize_t planes = batch * channels, channels_ = channels, height_ = height
    cdef Py_ssize_t width_ = width, hq_ = hq, wq_ = wq, out_h_ = out_h, out_w_ = out_w
    cdef const float* f_ptr = <const float*>_data(filters)
    cdef const float* x_ptr = <const float*>_data(x)
    cdef float* y_ptr = <float*>_data(y)
    cdef float* s_ptr = <float*>_data(scratch)
    with nogil:
        _depthwise_planes(f_ptr, x_ptr, planes, channels_, height_, width_, kh_, kw_,
                          stride_, padding_, sa_, se_, hq_, wq_, b_ptr, relu_, y_ptr,
                          out_h_, out_w_, s_ptr, scratch_size, n_threads)
    return y


# ---------------------------------------------------------------------------
# Max pooling (inference)
# ---------------------------------------------------------------------------

cdef void _max_pool_planes(const float[:, :, :, ::1] x, float[:, :, :, ::1] y, int kh, int kw,
                           int stride, int threads) noexcept nogil:
    """y[b, c] = srigl_max_pool_plane(x[b, c]) for every (image, channel) plane, in
    parallel.

    Input:   x[batch, channels, height, width] float32; kh, kw, stride; threads.
    Output:  y[batch, channels, out_h, out_w] float32.
    """
    cdef Py_ssize_t channels = x.shape[1], item, b, c
    for item in prange(x.shape[0] * channels, schedule="static", num_threads=threads):
        b = item // channels
        c = item % channels
        srigl_max_pool_plane(&x[b, c, 0, 0], x.shape[2], x.shape[3], kh, kw, stride,
                             &y[b, c, 0, 0], y.shape[2], y.shape[3])


def max_pool2d(x, kh, kw, stride, threads=0):
    """Max pooling without padding, as nn.pooling.MaxPool2d computes it in evaluation.

    x[batch, channels, height, width] (float32, or any float dtype and strides: converted
    to C-contiguous float32) -> y[batch, channels, out_h, out_w] float32,
    out = (size - kernel) // stride + 1. Parallel over the (image, channel) planes.
    """
    x = _image_input(x)
    batch, channels, height, width = x.shape
    out_h, out_w = _check_conv_geometry(height, width, kh, kw, stride, 0)
    cdef int n_threads = _serial_if_small(_resolve_threads(threads), x.size)
    y = np.empty((batch, channels, out_h, out_w), dtype=np.float32)
    cdef const float[:, :, :, ::1] x_view = x
    cdef float[:, :, :, ::1] y_view = y
    cdef int kh_ = kh, kw_ = kw, stride_ = stride
    if y.size:
        with nogil:
            _max_pool_planes(x_view, y_view, kh_, kw_, stride_, n_threads)
    return y


# -- GELU, LayerNorm and softmax (ViT) ------------------------------------------------------------

# Elements per GELU work item: large enough that a thread's OpenMP overhead vanishes,
# small enough that 2 threads share ViT-B/16's (197, 3072) activation evenly.
GELU_CHUNK = 16384
# LayerNorm and softmax below this many elements run on one thread: with OpenMP's
# threads asleep between calls (OMP_WAIT_POLICY=PASSIVE, thread_waits) ViT-B/16's
# (197, 768) tokens took 0.078 ms on one thread and 0.086 ms on two (GELU's (197, 3072):
# 0.55 and 0.28 ms; 2-core Xeon, medians of 300 calls).
ROWWISE_SERIAL = 2**18


def _rowwise_input(x):
    """x as a C-contiguous float32 NumPy array (a non-contiguous one is copied; another
    dtype is a TypeError naming ``x``)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise TypeError(f"x must be a float32 NumPy array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    return np.ascontiguousarray(x)


def _rowwise_output(out, x):
    """A new array like x, or ``out`` checked: a float32 NumPy array (TypeError) of x's
    shape, C-contiguous and writeable, that is x itself or does not overlap it
    (ValueError, each naming ``out``)."""
    if out is None:
        return np.empty_like(x)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        raise TypeError(f"out must be a float32 NumPy array or None, got "
                        f"{getattr(out, 'dtype', type(out).__name__)}")
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {x.shape}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out must be C-contiguous and writeable")
    if out is not x and np.may_share_memory(out, x):
        raise ValueError("out must be x itself or not overlap it")
    return out


def gelu(x, threads=0, out=None):
    """The exact GELU x/2 * (1 + erf(x / sqrt 2)) of float32 x (any shape), erf by the
    rational fit of tools/fit_erf.py (within 1.9e-7 * |x| of the exact GELU, plus
    float32 rounding). x non-contiguous is copied first; out (x's shape, C-contiguous)
    may be x itself, for the step in place. OpenMP over chunks of GELU_CHUNK elements,
    each computed the same way on any thread count (bit-identical across counts)."""
    x = _rowwise_input(x)
    out = _rowwise_output(out, x)
    cdef Py_ssize_t n = x.size
    cdef int n_threads = _serial_if_small(_resolve_threads(threads), n)
    cdef Py_ssize_t chunk = GELU_CHUNK, n_chunks = (n + chunk - 1) // chunk, c, start
    cdef const float* x_ptr = <const float*>_data(x) if n else NULL
    cdef float* out_ptr = <float*>_data(out) if n else NULL
    with nogil:
        for c in prange(n_chunks, schedule="static", num_threads=n_threads):
            start = c * chunk
            srigl_gelu(x_ptr + start, min(chunk, n - start), out_ptr + start)
    return out


def layer_norm(x, weight, bias, eps, threads=0, out=None):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis of float32 x
    (..., n), mean and biased variance per row (two passes, float32 lanes added in
    double); weight, bias (n,) float32, eps a float > 0. x non-contiguous is copied
    first; out (x's shape, C-contiguous) may be x itself. OpenMP over rows, each row
    computed the same way on any thread count."""
    x = _rowwise_input(x)
    if x.ndim < 1:
        raise ValueError("x must have at least one axis")
    cdef Py_ssize_t n = x.shape[x.ndim - 1]
    for name, a in (("weight", weight), ("bias", bias)):
        check_array(name, a, dtypes=(np.float32,), ndim=1, contiguous=True, device="cpu")
    if weight.shape != (n,) or bias.shape != (n,):
        raise ValueError(f"weight and bias must have shape ({n},), got {weight.shape} "
                         f"and {bias.shape}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    out = _rowwise_output(out, x)
    cdef Py_ssize_t rows = x.size // n if n else 0, r
    cdef int n_threads = 1 if x.size < ROWWISE_SERIAL else _resolve_threads(threads)
    cdef float eps_f = eps
    cdef const float* x_ptr = <const float*>_data(x) if rows else NULL
    cdef const float* w_ptr = <const float*>_data(weight)
    cdef const float* b_ptr = <const float*>_data(bias)
    cdef float* out_ptr = <float*>_data(out) if rows else NULL
    with nogil:
        for r in prange(rows, schedule="static", num_threads=n_threads):
            srigl_layer_norm(x_ptr + r * n, n, w_ptr, b_ptr, eps_f, out_ptr + r * n)
    return out


def softmax(x, threads=0, out=None):
    """exp(x - max) / sum exp(x - max) over the last axis of float32 x (..., n), n >= 1
    (attention's scores), exp by the polynomial of tools/fit_exp.py (1.1e-7 relative);
    a row with a NaN gives NaN, a -inf gives 1.6e-38 rather than 0 (its exp is clamped
    at exp(-87)). x non-contiguous is copied first; out (x's shape, C-contiguous) may
    be x itself. OpenMP over rows, each computed the same way on any thread count."""
    x = _rowwise_input(x)
    if x.ndim < 1 or x.shape[x.ndim - 1] < 1:
        raise ValueError(f"x must have a last axis of at least 1, got shape {x.shape}")
    out = _rowwise_output(out, x)
    cdef Py_ssize_t n = x.shape[x.ndim - 1], rows = x.size // n, r
    cdef int n_threads = 1 if x.size < ROWWISE_SERIAL else _resolve_threads(threads)
    cdef const float* x_ptr = <const float*>_data(x) if rows else NULL
    cdef float* out_ptr = <float*>_data(out) if rows else NULL
    with nogil:
        for r in prange(rows, schedule="static", num_threads=n_threads):
            srigl_softmax(x_ptr + r * n, n, out_ptr + r * n)
    return out
