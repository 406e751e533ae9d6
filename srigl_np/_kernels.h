/* The C half of srigl_np's compiled kernels, included by srigl_np/_kernels.pyx
   (``cdef extern from "_kernels.h"``), which declares what it calls from here.

   Contents:
     * the OpenMP shim: SRIGL_NP_OPENMP, and omp_get_max_threads() in a build
       without OpenMP;
     * the depthwise convolution of one plane, SRIGL_DEPTHWISE, a macro each path
       instantiates;
     * the condensed convolution's phase planes and stores (srigl_conv_phase,
       srigl_conv_store);
     * the condensed kernels (batch-1 gather-dot, batched blocks, the convolution's
       blocks, the depthwise plane)
       in up to three instruction-set variants ("CPU paths"), each a table of
       functions (srigl_kernels) defined by _kernels_isa.h:
         avx512   16-float vectors (AVX-512F), x86-64 with GCC or Clang
         avx2     8-float vectors (AVX2 + FMA), x86-64 with GCC or Clang
         generic  4-float vectors of the compiler's baseline target (SSE2 on x86-64,
                  NEON on arm64), or scalar loops for compilers without GCC's
                  vector extensions
       The x86 variants are compiled with a target pragma around their inclusion,
       so one portable binary carries all three; srigl_select_path() picks the best
       the CPU supports at import (__builtin_cpu_supports checks the CPU and that the
       OS saves its vector registers), and srigl_set_path() switches (tests, bench);
     * srigl_gather_dot_{i16,i32}, srigl_block_{i16,i32}, srigl_conv_rows,
       srigl_depthwise and srigl_lookup_group: the entry points the Cython code calls, which go through the
       active table (the batch-1 table lookup, srigl_lookup_group, exists on the avx512
       path only: srigl_has_lookup(); the batch-1 interleaved rows,
       srigl_interleaved_group_{i16,i32}, on the x86 paths: srigl_has_interleaved());
     * srigl_lookup_order: the greedy row grouping of that lookup's layout;
     * srigl_max_pool_plane: max pooling of one plane (inference), one portable
       version.
     * the GELU of a chunk and the LayerNorm and softmax of one row (ViT), in each
       path's table too: srigl_gelu, srigl_layer_norm, srigl_softmax.

   Everything is static (one translation unit, the Cython module, includes it).
   Nothing here validates: the Cython ``def`` functions check dtypes, shapes and
   index ranges before calling in (see the module docstring of _kernels.pyx).

   Each kernel's header lists its arguments with shapes in brackets, as scipy's sparsetools headers do. Py_ssize_t comes from Python.h. */

#ifndef SRIGL_NP_KERNELS_H
#define SRIGL_NP_KERNELS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>


/* ---------------------------------------------------------------------------
   OpenMP shim

   SRIGL_NP_OPENMP is 1 in a build compiled with OpenMP, else 0; without OpenMP
   omp_get_max_threads() is defined here and returns 1 (Cython's prange then
   runs serially).
   --------------------------------------------------------------------------- */

#ifdef _OPENMP
#include <omp.h>
#define SRIGL_NP_OPENMP 1
#else
#define SRIGL_NP_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif


/* ---------------------------------------------------------------------------
   GELU and LayerNorm (ViT's element-wise and row-wise steps)

   void srigl_gelu_<path>(x, n, out)
     out[i] = x[i]/2 * (1 + erf(x[i] / sqrt 2)), erf(z) = z P(z^2) / Q(z^2) on
     |z| <= SRIGL_ERF_CLAMP and +-1 beyond (the clamp happens on z; float32 erf rounds
     to 1 there). P, Q of degree 5 were fitted by tools/fit_erf.py (linearised least
     squares, then Lawson's iteration towards the minimax error): max |erf error|
     1.6e-8 in exact arithmetic, 3.8e-7 evaluated in float32 as here, so the GELU is
     within 1.9e-7 * |x| (plus float32 rounding) of the exact one. No libm call and no
     branch: the vector variants (_kernels_isa.h) clamp by masks on GCC vectors of the
     path's width, the tail in one zero-padded vector, so every element is computed
     the same way wherever it falls; SRIGL_GELU_TAIL is the arithmetic all share.
     NaN stays NaN; +inf gives +inf.
       const float x[n], float out[n] (out may be x: in place)

   void srigl_layer_norm_<path>(x, n, weight, bias, eps, out)
     one row: out[j] = (x[j] - mean) / sqrt(var + eps) * weight[j] + bias[j], mean and
     the (biased) variance over the row's n values, the variance from the centred
     values (two passes, no cancellation). Each sum runs in 16 float32 lanes (16
     interleaved partial sums, which vectorise without -ffast-math) added in double.
       const float x[n], weight[n], bias[n]; float eps > 0; float out[n] (may be x)

   void srigl_softmax_<path>(x, n, out)
     one row (attention's scores): out[j] = exp(x[j] - max) / sum_j exp(x[j] - max),
     exp(y) for y <= 0 by SRIGL_EXP_NONPOSITIVE: y clamped below at SRIGL_EXP_LOW
     (exp(-87) = 1.6e-38, still a normal float: a y of -inf gives that, not 0),
     n = round(y / ln 2) by adding 1.5 * 2^23, r = y - n ln 2 with ln 2 split in two
     floats (exact for |n| <= 126), exp(r) by a degree-6 polynomial fitted by
     tools/fit_exp.py (1.9e-9 in exact arithmetic, 1.1e-7 relative in float32), times
     2^n built in the exponent bits. The sum in float32 lanes added in double. A NaN
     makes the row NaN. n >= 1.
       const float x[n], float out[n] (may be x)
   --------------------------------------------------------------------------- */

#define SRIGL_EXP_LOW (-87.0f)
/* e = exp(y) for a vector y <= 0 (or NaN); m, big, nf, r, p, bits: temporaries, lo the
   vector of SRIGL_EXP_LOW. */
#define SRIGL_EXP_NONPOSITIVE(y, lo, m, big, nf, r, p, bits, e)                       \
    m = y < lo;                                                                       \
    y = (__typeof__(y))((m & (__typeof__(m))lo) | (~m & (__typeof__(m))y));          \
    big = y * 1.44269504088896341f + 12582912.0f;                                     \
    nf = big - 12582912.0f;                                                           \
    r = (y - nf * 0.693145751953125f) - nf * 1.428606765e-06f;                        \
    p = r * 1.383669245e-03f + 8.374889697e-03f;                                      \
    p = p * r + 4.166823209e-02f;                                                     \
    p = p * r + 1.666641930e-01f;                                                     \
    p = p * r + 4.999999203e-01f;                                                     \
    p = p * r + 1.000000037e+00f;                                                     \
    p = p * r + 1.000000001e+00f;                                                     \
    bits = ((__typeof__(m))big - 0x4B400000 + 127) << 23;                             \
    e = p * (__typeof__(y))bits;

#define SRIGL_ERF_CLAMP 3.92f
/* out = x/2 * (1 + erf(z)) from v = x and z = x / sqrt 2 clamped to +-SRIGL_ERF_CLAMP,
   on float scalars or GCC vectors alike (t, p, q: temporaries of v's type). */
#define SRIGL_GELU_TAIL(v, z, t, p, q, out)                                           \
    t = z * z;                                                                        \
    p = t * 2.034828935e-06f + 2.874791884e-04f;                                      \
    p = p * t + 3.868134251e-03f;                                                     \
    p = p * t + 5.305990119e-02f;                                                     \
    p = p * t + 1.927590075e-01f;                                                     \
    p = p * t + 1.128379022e+00f;                                                     \
    q = t * 3.807160180e-05f + 1.188075963e-03f;                                      \
    q = q * t + 1.517190667e-02f;                                                     \
    q = q * t + 1.150826113e-01f;                                                     \
    q = q * t + 5.041598897e-01f;                                                     \
    q = q * t + 1.0f;                                                                 \
    out = 0.5f * v * (1.0f + z * p / q);
#define SRIGL_LANES 16
/* GELU: the scalar loop (the vector variants define their own, _kernels_isa.h). */
#define SRIGL_GELU_SCALAR(GELU)                                                      \
static void GELU(const float *x, Py_ssize_t n, float *out) {                          \
    Py_ssize_t i;                                                                     \
    for (i = 0; i < n; i++) {                                                         \
        float v = x[i], z = v * 0.70710678118654752f, t, p, q;                        \
        z = z < SRIGL_ERF_CLAMP ? z : SRIGL_ERF_CLAMP;                                \
        z = z > -SRIGL_ERF_CLAMP ? z : -SRIGL_ERF_CLAMP;                              \
        SRIGL_GELU_TAIL(v, z, t, p, q, out[i])                                        \
    }                                                                                 \
}
#define SRIGL_LAYER_NORM(LAYER_NORM)                                                 \
static void LAYER_NORM(const float *x, Py_ssize_t n, const float *weight,             \
                       const float *bias, float eps, float *out) {                    \
    float acc[SRIGL_LANES], mean, inv;                                                \
    double sum = 0.0;                                                                 \
    Py_ssize_t j, l, whole = n / SRIGL_LANES * SRIGL_LANES;                           \
    for (l = 0; l < SRIGL_LANES; l++) acc[l] = 0.0f;                                  \
    for (j = 0; j < whole; j += SRIGL_LANES)                                          \
        for (l = 0; l < SRIGL_LANES; l++) acc[l] += x[j + l];                         \
    for (l = 0; l < SRIGL_LANES; l++) sum += acc[l];                                  \
    for (j = whole; j < n; j++) sum += x[j];                                          \
    mean = (float)(sum / (double)n);                                                  \
    sum = 0.0;                                                                        \
    for (l = 0; l < SRIGL_LANES; l++) acc[l] = 0.0f;                                  \
    for (j = 0; j < whole; j += SRIGL_LANES)                                          \
        for (l = 0; l < SRIGL_LANES; l++) {                                           \
            float d = x[j + l] - mean;                                                \
            acc[l] += d * d;                                                          \
        }                                                                             \
    for (l = 0; l < SRIGL_LANES; l++) sum += acc[l];                                  \
    for (j = whole; j < n; j++) sum += (double)(x[j] - mean) * (double)(x[j] - mean);  \
    inv = (float)(1.0 / sqrt(sum / (double)n + (double)eps));                         \
    for (j = 0; j < n; j++) out[j] = (x[j] - mean) * inv * weight[j] + bias[j];       \
}


/* ---------------------------------------------------------------------------
   The kernel table of one CPU path
   --------------------------------------------------------------------------- */

/* Rows per work item of the batched kernel: r1 - r0 <= SRIGL_ROWS (Cython's
   ROWS_PER_BLOCK). */
#define SRIGL_ROWS 128

typedef float (*srigl_gather_dot_i16_fn)(const float *, const int16_t *, const float *,
                                         Py_ssize_t);
typedef float (*srigl_gather_dot_i32_fn)(const float *, const int32_t *, const float *,
                                         Py_ssize_t);
typedef void (*srigl_block_i16_fn)(const float *, const int16_t *, const Py_ssize_t *,
                                   Py_ssize_t, Py_ssize_t, const float *, const float *,
                                   Py_ssize_t, Py_ssize_t, float *, Py_ssize_t, Py_ssize_t);
typedef void (*srigl_block_i32_fn)(const float *, const int32_t *, const Py_ssize_t *,
                                   Py_ssize_t, Py_ssize_t, const float *, const float *,
                                   Py_ssize_t, Py_ssize_t, float *, Py_ssize_t, Py_ssize_t);
typedef void (*srigl_conv_rows_fn)(int, const float *, const int32_t *, const Py_ssize_t *,
                                   Py_ssize_t, Py_ssize_t, const float *, const float *,
                                   Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                   Py_ssize_t, Py_ssize_t, Py_ssize_t, const float *, int,
                                   float *);

typedef void (*srigl_depthwise_fn)(const float *, int, int, int, const float *, int,
                                   Py_ssize_t, Py_ssize_t, float, int, float *, float *,
                                   Py_ssize_t, Py_ssize_t);

typedef void (*srigl_transpose_fn)(const float *, Py_ssize_t, Py_ssize_t, Py_ssize_t,
                                   float *, Py_ssize_t);

typedef void (*srigl_gelu_fn)(const float *, Py_ssize_t, float *);
typedef void (*srigl_layer_norm_fn)(const float *, Py_ssize_t, const float *, const float *,
                                    float, float *);
typedef void (*srigl_softmax_fn)(const float *, Py_ssize_t, float *);

/* Input columns per block of the batch-1 lookup layout: 63 and a zero make the
   64-float table of four AVX-512 registers (see srigl_lookup_group_avx512). */
#define SRIGL_LOOKUP_COLUMNS 63
#define SRIGL_LOOKUP_ROWS 16
/* Rows per group of the batch-1 interleaved-rows kernel (srigl_interleaved_group_*). */
#define SRIGL_INTERLEAVED_ROWS 8

typedef void (*srigl_lookup_fn)(const float *, const uint8_t *, const int32_t *, Py_ssize_t,
                                const float *, Py_ssize_t, const int32_t *, const float *,
                                float *, int);
typedef void (*srigl_interleaved_i16_fn)(const float *, const int16_t *, Py_ssize_t,
                                         const float *, const float *, float *, int);
typedef void (*srigl_interleaved_i32_fn)(const float *, const int32_t *, Py_ssize_t,
                                         const float *, const float *, float *, int);

/* name; the batch-1 gather-dots; the batched blocks for tiles of 8, 16, 32, 64; the
   convolution's rows (its blocks at those widths and their store); the depthwise
   convolution of one plane;
   the tile transpose; the batch-1 lookup
   of one row group, or NULL on a path without one; the batch-1 interleaved-rows
   group (8 rows), or NULL on a path without it; the GELU of a chunk, the
   LayerNorm and the softmax of one row. */
typedef struct {
    const char *name;
    srigl_gather_dot_i16_fn gather_dot_i16;
    srigl_gather_dot_i32_fn gather_dot_i32;
    srigl_block_i16_fn block_i16[4];
    srigl_block_i32_fn block_i32[4];
    srigl_conv_rows_fn conv_rows;
    srigl_depthwise_fn depthwise;
    srigl_transpose_fn transpose;
    srigl_lookup_fn lookup_group;
    srigl_interleaved_i16_fn interleaved_i16;
    srigl_interleaved_i32_fn interleaved_i32;
    srigl_gelu_fn gelu;
    srigl_layer_norm_fn layer_norm;
    srigl_softmax_fn softmax;
} srigl_kernels;


/* ---------------------------------------------------------------------------
   Depthwise convolution of one plane

   void srigl_depthwise_<path>(filter, kh, kw, stride, ph, se, hq, wq, bias, relu, acc,
                               out, out_h, out_w)

     out[oh, ow] = relu?(bias + sum_{i, j} filter[i, j]
                                * x[oh*stride - padding + i, ow*stride - padding + j])

   from the plane's phases ph (srigl_conv_phase, with sa = min(stride, kh) and
   se = min(stride, kw)): as in the condensed convolution, tap (i, j) of grid position
   g = oh*wq + ow reads ph at g + a fixed offset, so each tap is one pass of
   acc[g] += w * src[g] over the whole grid ((out_h - 1)*wq + out_w positions, the
   columns ow >= out_w dropped at the end): one long vectorised loop per tap where
   a pass per output row (7 to 14 wide at MobileNet's small planes) ran 3-7x slower
   than torch on them. The grid is rounded up to whole SRIGL_DEPTHWISE_CHUNKs, so the
   passes have no scalar remainder (GCC's, 9 of a 7 x 7 grid's 73 positions, took
   most of the time): the positions past the grid read up to SRIGL_DEPTHWISE_CHUNK - 1
   floats past the phases, which the caller provides.

   Input arguments:
     const float filter[kh, kw]
     int         kh, kw, stride
     const float ph[sa, se, hq, wq]       - the plane's phases, then
                                            SRIGL_DEPTHWISE_CHUNK readable floats
     float       bias
     int         relu                     - 1: a ReLU (a NaN stays NaN)
     Py_ssize_t  out_h, out_w
   Scratch:
     float       acc[(out_h - 1)*wq + out_w, rounded up to SRIGL_DEPTHWISE_CHUNK]
   Output arguments:
     float       out[out_h, out_w]
   --------------------------------------------------------------------------- */
#define SRIGL_DEPTHWISE_CHUNK 16
#define SRIGL_DEPTHWISE(NAME)                                                         \
static void NAME(const float *filter, int kh, int kw, int stride, const float *ph,    \
                 int se, Py_ssize_t hq, Py_ssize_t wq, float bias, int relu,          \
                 float *__restrict acc, float *__restrict out, Py_ssize_t out_h,      \
                 Py_ssize_t out_w) {                                                  \
    const Py_ssize_t grid = ((out_h - 1) * wq + out_w + SRIGL_DEPTHWISE_CHUNK - 1)    \
                            / SRIGL_DEPTHWISE_CHUNK * SRIGL_DEPTHWISE_CHUNK;          \
    Py_ssize_t g, oh, ow;                                                             \
    int i, j, e;                                                                      \
    for (g = 0; g < grid; g++) acc[g] = bias;                                         \
    for (i = 0; i < kh; i++)                                                          \
        for (j = 0; j < kw; j++) {                                                    \
            const float w = filter[i * kw + j];                                       \
            const float *__restrict src = ph + ((i % stride) * se + j % stride) * hq * wq \
                                          + (i / stride) * wq + j / stride;           \
            for (g = 0; g < grid; g += SRIGL_DEPTHWISE_CHUNK)                         \
                for (e = 0; e < SRIGL_DEPTHWISE_CHUNK; e++)                           \
                    acc[g + e] += w * src[g + e];                                     \
        }                                                                             \
    for (oh = 0; oh < out_h; oh++)                                                    \
        for (ow = 0; ow < out_w; ow++) {                                              \
            const float v = acc[oh * wq + ow];                                        \
            out[oh * out_w + ow] = relu && v < 0.0f ? 0.0f : v;                       \
        }                                                                             \
}
/* ---------------------------------------------------------------------------
   Tile transpose (the batched kernel's input layout)

   void srigl_transpose_<path>(x, ldx, rows, count, xt, width)

   xt[i, t] = x[t, i] for t < rows, i < count, and xt[i, t] = 0 for rows <= t < width:
   one (batch tile, block of input columns) of the transposed input.

   Input arguments:
     const float x[rows, ldx]     - the tile's batch rows, from the block's first column
     Py_ssize_t  ldx              - row stride of x (n_in)
     Py_ssize_t  rows             - batch rows present, <= width
     Py_ssize_t  count            - input columns of the block
     Py_ssize_t  width            - the tile width W
   Output arguments:
     float       xt[count, width] - row stride width

   The x86 paths transpose 8x8 blocks in AVX registers (srigl_transpose_avx2); this one
   is the scalar loop, for the generic path and for the edges.
   --------------------------------------------------------------------------- */
static void srigl_transpose_scalar(const float *x, Py_ssize_t ldx, Py_ssize_t rows,
                                   Py_ssize_t count, float *xt, Py_ssize_t width) {
    Py_ssize_t t, i;
    for (t = 0; t < width; t++) {
        float *dst = xt + t;
        if (t < rows) {
            const float *src = x + t * ldx;
            for (i = 0; i < count; i++) dst[i * width] = src[i];
        } else {
            for (i = 0; i < count; i++) dst[i * width] = 0.0f;
        }
    }
}


/* ---------------------------------------------------------------------------
   Condensed convolution on phase planes

   A convolution is the condensed product over output pixels, each pixel's row its
   patch. Lay each input plane out padded and split into its stride x stride phases,

     ph[a, e, y, z] = x[y*stride + a - padding, z*stride + e - padding]   (0 outside),

   a grid of hq x wq per phase, and index output pixels on that grid,
   g = oh*wq + ow (columns ow >= out_w are computed and dropped). Then tap (c, i, j)
   of output g reads plane c's phase (a, e) = (i % stride, j % stride) at
   g + (i / stride) * wq + j / stride: a fixed offset per tap. So W consecutive output
   positions read W consecutive floats at every tap, which is the batched block
   kernel's access to its transposed tiles with the tile replaced by the phase planes
   themselves: no im2col, not even of a tile (packing 64-pixel tiles ran at 0.5 of the
   3x3 convolutions' time and half the stem's, the copies too short to pay for their
   bookkeeping). The input is copied once, into the phase layout; the zero border
   makes the padding free.

   Only the phases a < sa = min(stride, kh), e < se = min(stride, kw) hold taps (a 1x1
   convolution of stride 2 reads one phase of four), so only those are made.

   void srigl_conv_phase(x, height, width, stride, padding, sa, se, hq, wq, ph)

   Input arguments:
     const float x[height, width]              - one (image, channel) plane
     int         stride, padding
     int         sa, se                        - phases kept per axis
     Py_ssize_t  hq, wq                        - ceil((size + 2*padding) / stride)
   Output arguments:
     float       ph[sa, se, hq, wq]            - its phases, as above
   --------------------------------------------------------------------------- */
static void srigl_conv_phase(const float *x, Py_ssize_t height, Py_ssize_t width, int stride,
                             int padding, int sa, int se, Py_ssize_t hq, Py_ssize_t wq,
                             float *__restrict ph) {
    int a, e;
    Py_ssize_t y, z;
    for (a = 0; a < sa; a++)
        for (e = 0; e < se; e++) {
            /* phase columns z with 0 <= z*stride + e - padding < width */
            const Py_ssize_t first = e - padding;
            Py_ssize_t lo = first < 0 ? (-first + stride - 1) / stride : 0;
            Py_ssize_t hi = first > width - 1 ? 0 : (width - 1 - first) / stride + 1;
            if (hi > wq) hi = wq;
            if (lo > hi) lo = hi;
            for (y = 0; y < hq; y++) {
                float *__restrict o = ph + ((a * se + e) * hq + y) * wq;
                const Py_ssize_t h = y * stride + a - padding;
                if (h < 0 || h >= height) {
                    memset(o, 0, wq * sizeof(float));
                    continue;
                }
                const float *row = x + h * width;
                for (z = 0; z < lo; z++) o[z] = 0.0f;
                if (stride == 1)
                    memcpy(o + lo, row + first + lo, (hi - lo) * sizeof(float));
                else
                    for (z = lo; z < hi; z++) o[z] = row[first + z * stride];
                for (z = hi; z < wq; z++) o[z] = 0.0f;
            }
        }
}

/* void srigl_conv_store(out, W, n_rows, g0, first, count, wq, out_w, plane, residual,
                         relu, y)

     y[r, oh, ow] = relu?(out[r, t] + residual[r, oh, ow]) for the tile's grid positions
     g0 + t = oh*wq + ow with ow < out_w, first <= t < count, rows r < n_rows (residual
     NULL: no add; relu 0: no ReLU; a NaN stays NaN, as torch.relu keeps it).

   Input arguments:
     const float out[n_rows, W]               - the sums (bias in)
     Py_ssize_t  g0, first, count             - the tile's grid positions, and those it
                                                stores (a last tile moved back to end at
                                                the grid's end stores only its new ones)
     Py_ssize_t  wq, out_w, plane             - grid row length, output row length,
                                                out_h*out_w
     const float residual[n_rows, plane] or NULL  - may be y itself
     int         relu
   Output arguments:
     float       y[n_rows, plane]             - the tile's pixels of the rows
   --------------------------------------------------------------------------- */
static inline void srigl_conv_store(const float *out, Py_ssize_t W, Py_ssize_t n_rows,
                             Py_ssize_t g0, Py_ssize_t first, Py_ssize_t count,
                             Py_ssize_t wq, Py_ssize_t out_w, Py_ssize_t plane,
                             const float *residual, int relu, float *y) {
    Py_ssize_t t = first, i, u;
    while (t < count) {
        const Py_ssize_t oh = (g0 + t) / wq, ow = (g0 + t) % wq;
        const Py_ssize_t left = count - t < wq - ow ? count - t : wq - ow;
        const Py_ssize_t run = ow >= out_w ? 0 : (out_w - ow < left ? out_w - ow : left);
        for (i = 0; i < n_rows && run > 0; i++) {
            const Py_ssize_t at = i * plane + oh * out_w + ow;
            /* y may be the residual array itself (an in-place add): add and dst may
               alias, element for element, so neither is restrict. */
            const float *__restrict src = out + i * W + t;
            float *dst = y + at;
            if (residual) {
                const float *add = residual + at;
                if (relu)
                    for (u = 0; u < run; u++) {
                        const float v = src[u] + add[u];
                        dst[u] = v < 0.0f ? 0.0f : v;
                    }
                else
                    for (u = 0; u < run; u++) dst[u] = src[u] + add[u];
            } else if (relu) {
                for (u = 0; u < run; u++) dst[u] = src[u] < 0.0f ? 0.0f : src[u];
            } else {
                memcpy(dst, src, run * sizeof(float));
            }
        }
        t += left;
    }
}

/* void srigl_conv_rows_<path>(n_vectors, values, offsets, starts, n_blocks, n_active,
                               bias, src, r0, r1, g0, first, count, wq, out_w, plane,
                               residual, relu, y)

   Output channels [r0, r1) (r1 - r0 <= SRIGL_ROWS) of one image at the W = 8 * n_vectors
   grid positions [g0, g0 + W) (n_vectors 8, 4, 2, anything else 1), stored at
   [g0 + first, g0 + count) (count <= W): the path's srigl_conv_sums{W} from src = the
   image's phase planes + g0, then srigl_conv_store into the image's output
   y[n_active, plane] and residual (both from channel 0; rows r0... are used). Each
   path instantiates it, so the store, inlined, is vectorised at the path's width
   (compiled once for the portable baseline, 4 floats on x86-64, the store took 15% of
   ResNet-50's batch-1 time).

   Input arguments:
     const float      values[nnz], starts[n_blocks*n_active + 1]
                                             - CondensedWeights' packed layout
     const int32_t    offsets[nnz]           - each non-zero's tap offset in the phase
                                               planes (see srigl_conv_phase)
     const float      bias[n_active] or NULL
     const float      src[...]               - the image's phase planes, from g0; every
                                               src[offset + t], t < W, inside them
     the rest                                - as srigl_conv_store
   Output arguments:
     float            y[n_active, plane]     - rows [r0, r1), the tile's pixels */
#define SRIGL_CONV_ROWS(NAME, SUMS8, SUMS16, SUMS32, SUMS64)                          \
static void NAME(int n_vectors, const float *values, const int32_t *offsets,          \
                 const Py_ssize_t *starts, Py_ssize_t n_blocks, Py_ssize_t n_active,  \
                 const float *bias, const float *src, Py_ssize_t r0, Py_ssize_t r1,   \
                 Py_ssize_t g0, Py_ssize_t first, Py_ssize_t count, Py_ssize_t wq,    \
                 Py_ssize_t out_w, Py_ssize_t plane, const float *residual, int relu, \
                 float *y) {                                                          \
    float out[SRIGL_ROWS * 64];                                                       \
    Py_ssize_t W = 8;                                                                 \
    if (n_vectors == 8) {                                                             \
        W = 64;                                                                       \
        SUMS64(values, offsets, starts, n_blocks, n_active, bias, src, r0, r1, out);  \
    } else if (n_vectors == 4) {                                                      \
        W = 32;                                                                       \
        SUMS32(values, offsets, starts, n_blocks, n_active, bias, src, r0, r1, out);  \
    } else if (n_vectors == 2) {                                                      \
        W = 16;                                                                       \
        SUMS16(values, offsets, starts, n_blocks, n_active, bias, src, r0, r1, out);  \
    } else {                                                                          \
        SUMS8(values, offsets, starts, n_blocks, n_active, bias, src, r0, r1, out);   \
    }                                                                                 \
    srigl_conv_store(out, W, r1 - r0, g0, first, count, wq, out_w, plane,             \
                     residual ? residual + r0 * plane : NULL, relu, y + r0 * plane);  \
}

#if defined(__GNUC__) || defined(__clang__)

#if defined(__x86_64__)
#define SRIGL_X86 1

/* avx2 first: the avx512 variant reuses its gather-dot (see _kernels_isa.h). */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#include <immintrin.h>
/* The 8x8 blocks of srigl_transpose (see srigl_transpose_scalar) in AVX registers: the
   scalar loop took 20% of a 3072 -> 768 layer's batch-256 time in a portable build
   (perf, one thread, Zen 5). */
static void srigl_transpose_avx2(const float *x, Py_ssize_t ldx, Py_ssize_t rows,
                                 Py_ssize_t count, float *xt, Py_ssize_t width) {
    Py_ssize_t t0 = 0, i0, t, i;
    for (; t0 + 8 <= rows; t0 += 8) {
        for (i0 = 0; i0 + 8 <= count; i0 += 8) {
            __m256 r0 = _mm256_loadu_ps(x + (t0 + 0) * ldx + i0);
            __m256 r1 = _mm256_loadu_ps(x + (t0 + 1) * ldx + i0);
            __m256 r2 = _mm256_loadu_ps(x + (t0 + 2) * ldx + i0);
            __m256 r3 = _mm256_loadu_ps(x + (t0 + 3) * ldx + i0);
            __m256 r4 = _mm256_loadu_ps(x + (t0 + 4) * ldx + i0);
            __m256 r5 = _mm256_loadu_ps(x + (t0 + 5) * ldx + i0);
            __m256 r6 = _mm256_loadu_ps(x + (t0 + 6) * ldx + i0);
            __m256 r7 = _mm256_loadu_ps(x + (t0 + 7) * ldx + i0);
            __m256 u0 = _mm256_unpacklo_ps(r0, r1), u1 = _mm256_unpackhi_ps(r0, r1);
            __m256 u2 = _mm256_unpacklo_ps(r2, r3), u3 = _mm256_unpackhi_ps(r2, r3);
            __m256 u4 = _mm256_unpacklo_ps(r4, r5), u5 = _mm256_unpackhi_ps(r4, r5);
            __m256 u6 = _mm256_unpacklo_ps(r6, r7), u7 = _mm256_unpackhi_ps(r6, r7);
            __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
            __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
            __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
            __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
            float *d = xt + i0 * width + t0;
            _mm256_storeu_ps(d + 0 * width, _mm256_permute2f128_ps(v0, v4, 0x20));
            _mm256_storeu_ps(d + 1 * width, _mm256_permute2f128_ps(v1, v5, 0x20));
            _mm256_storeu_ps(d + 2 * width, _mm256_permute2f128_ps(v2, v6, 0x20));
            _mm256_storeu_ps(d + 3 * width, _mm256_permute2f128_ps(v3, v7, 0x20));
            _mm256_storeu_ps(d + 4 * width, _mm256_permute2f128_ps(v0, v4, 0x31));
            _mm256_storeu_ps(d + 5 * width, _mm256_permute2f128_ps(v1, v5, 0x31));
            _mm256_storeu_ps(d + 6 * width, _mm256_permute2f128_ps(v2, v6, 0x31));
            _mm256_storeu_ps(d + 7 * width, _mm256_permute2f128_ps(v3, v7, 0x31));
        }
        for (t = t0; t < t0 + 8; t++)   /* the block's last count % 8 columns */
            for (i = i0; i < count; i++) xt[i * width + t] = x[t * ldx + i];
    }
    for (t = t0; t < width; t++)   /* the last rows % 8 rows, and zeros past the batch */
        for (i = 0; i < count; i++) xt[i * width + t] = t < rows ? x[t * ldx + i] : 0.0f;
}
#define SRIGL_ISA avx2
#define SRIGL_ISA_NAME "avx2"
#define SRIGL_VW 8
#include "_kernels_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
#define SRIGL_ISA avx512
#define SRIGL_ISA_NAME "avx512"
#define SRIGL_VW 16
#include "_kernels_isa.h"
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
#define SRIGL_X86 0
#endif

#define SRIGL_ISA generic
#define SRIGL_ISA_NAME "generic"
#define SRIGL_VW 4
#include "_kernels_isa.h"

#else   /* no vector extensions: scalar loops with the same arithmetic per output */

#define SRIGL_X86 0

#define SRIGL_SCALAR_DOT(NAME, INDEX_T)                                               \
static float NAME(const float *v, const INDEX_T *idx, const float *x, Py_ssize_t k) { \
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                             \
    Py_ssize_t j = 0;                                                                 \
    for (; j + 4 <= k; j += 4) {                                                      \
        a0 += v[j] * x[idx[j]];         a1 += v[j + 1] * x[idx[j + 1]];               \
        a2 += v[j + 2] * x[idx[j + 2]]; a3 += v[j + 3] * x[idx[j + 3]];               \
    }                                                                                 \
    for (; j < k; j++) a0 += v[j] * x[idx[j]];                                        \
    return (a0 + a1) + (a2 + a3);                                                     \
}
SRIGL_SCALAR_DOT(srigl_gather_dot_i16_generic, int16_t)
SRIGL_SCALAR_DOT(srigl_gather_dot_i32_generic, int32_t)

/* One row at a time, W sums in `out` (the layout of the vector variants); a non-zero's
   W inputs start at xt + index * STEP (STEP as in SRIGL_ROW_GROUP, _kernels_isa.h). */
#define SRIGL_SCALAR_SUMS(INDEX_T, W, STEP)                                           \
    Py_ssize_t block, r, t, j;                                                        \
    for (r = r0; r < r1; r++)                                                         \
        for (t = 0; t < W; t++) out[(r - r0) * W + t] = bias ? bias[r] : 0.0f;       \
    for (block = 0; block < n_blocks; block++) {                                      \
        const Py_ssize_t *s = starts + block * n_active;                              \
        for (r = r0; r < r1; r++)                                                     \
            for (j = s[r]; j < s[r + 1]; j++) {                                       \
                const float *src = xt + (Py_ssize_t)indices[j] * (STEP);              \
                for (t = 0; t < W; t++) out[(r - r0) * W + t] += values[j] * src[t];  \
            }                                                                         \
    }
#define SRIGL_SCALAR_BLOCK(NAME, W, INDEX_T)                                          \
static void NAME(const float *values, const INDEX_T *indices, const Py_ssize_t *starts, \
                 Py_ssize_t n_blocks, Py_ssize_t n_active, const float *bias,         \
                 const float *xt, Py_ssize_t r0, Py_ssize_t r1, float *y,             \
                 Py_ssize_t ldy, Py_ssize_t width) {                                  \
    float out[SRIGL_ROWS * W];                                                        \
    SRIGL_SCALAR_SUMS(INDEX_T, W, W)                                                  \
    for (t = 0; t < width; t++)                                                       \
        for (r = r0; r < r1; r++) y[t * ldy + r] = out[(r - r0) * W + t];             \
}
#define SRIGL_SCALAR_CONV_SUMS(NAME, W)                                               \
static void NAME(const float *values, const int32_t *indices, const Py_ssize_t *starts, \
                 Py_ssize_t n_blocks, Py_ssize_t n_active, const float *bias,         \
                 const float *xt, Py_ssize_t r0, Py_ssize_t r1, float *out) {         \
    SRIGL_SCALAR_SUMS(int32_t, W, 1)                                                  \
}
SRIGL_SCALAR_BLOCK(srigl_block8_i16_generic, 8, int16_t)
SRIGL_SCALAR_BLOCK(srigl_block16_i16_generic, 16, int16_t)
SRIGL_SCALAR_BLOCK(srigl_block32_i16_generic, 32, int16_t)
SRIGL_SCALAR_BLOCK(srigl_block64_i16_generic, 64, int16_t)
SRIGL_SCALAR_BLOCK(srigl_block8_i32_generic, 8, int32_t)
SRIGL_SCALAR_BLOCK(srigl_block16_i32_generic, 16, int32_t)
SRIGL_SCALAR_BLOCK(srigl_block32_i32_generic, 32, int32_t)
SRIGL_SCALAR_BLOCK(srigl_block64_i32_generic, 64, int32_t)
SRIGL_SCALAR_CONV_SUMS(srigl_conv_sums8_generic, 8)
SRIGL_SCALAR_CONV_SUMS(srigl_conv_sums16_generic, 16)
SRIGL_SCALAR_CONV_SUMS(srigl_conv_sums32_generic, 32)
SRIGL_SCALAR_CONV_SUMS(srigl_conv_sums64_generic, 64)
SRIGL_CONV_ROWS(srigl_conv_rows_generic, srigl_conv_sums8_generic, srigl_conv_sums16_generic,
                srigl_conv_sums32_generic, srigl_conv_sums64_generic)

SRIGL_DEPTHWISE(srigl_depthwise_generic)
SRIGL_GELU_SCALAR(srigl_gelu_generic)
SRIGL_LAYER_NORM(srigl_layer_norm_generic)
/* The softmax without vector extensions: libm's expf (a compiler this old has no
   cheaper exact one to offer). */
static void srigl_softmax_generic(const float *x, Py_ssize_t n, float *out) {
    float row_max = -INFINITY, scale;
    double sum = 0.0;
    Py_ssize_t i;
    for (i = 0; i < n; i++) row_max = x[i] > row_max ? x[i] : row_max;
    for (i = 0; i < n; i++) {
        out[i] = expf(x[i] - row_max);
        sum += out[i];
    }
    scale = (float)(1.0 / sum);
    for (i = 0; i < n; i++) out[i] *= scale;
}

static const srigl_kernels srigl_table_generic = {
    "generic", srigl_gather_dot_i16_generic, srigl_gather_dot_i32_generic,
    {srigl_block8_i16_generic, srigl_block16_i16_generic, srigl_block32_i16_generic,
     srigl_block64_i16_generic},
    {srigl_block8_i32_generic, srigl_block16_i32_generic, srigl_block32_i32_generic,
     srigl_block64_i32_generic},
    srigl_conv_rows_generic,
    srigl_depthwise_generic, srigl_transpose_scalar,
    NULL, NULL, NULL,
    srigl_gelu_generic, srigl_layer_norm_generic, srigl_softmax_generic,
};

#endif


/* ---------------------------------------------------------------------------
   CPU paths: which variants this build and CPU have, and the active one

   Paths are numbered best first: 0 avx512, 1 avx2, 2 generic.
   --------------------------------------------------------------------------- */

#define SRIGL_N_PATHS 3

/* The path's table, or NULL when this build does not carry it. */
static const srigl_kernels *srigl_path_table(int path) {
#if SRIGL_X86
    if (path == 0) return &srigl_table_avx512;
    if (path == 1) return &srigl_table_avx2;
#endif
    return path == 2 ? &srigl_table_generic : NULL;
}

/* 1 when this build carries the path and this CPU (and OS) can run it. */
static int srigl_path_supported(int path) {
    if (srigl_path_table(path) == NULL) return 0;
#if SRIGL_X86
    __builtin_cpu_init();
    if (path == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
               && __builtin_cpu_supports("fma");
    if (path == 1) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 1;
}

static const srigl_kernels *srigl_active = NULL;

/* Make `path` active; returns 0, or -1 (nothing changed) when it is not supported. */
static int srigl_set_path(int path) {
    if (path < 0 || path >= SRIGL_N_PATHS || !srigl_path_supported(path)) return -1;
    srigl_active = srigl_path_table(path);
    return 0;
}

/* Make the best supported path active; returns its number. */
static int srigl_select_path(void) {
    int path;
    for (path = 0; path < SRIGL_N_PATHS; path++)
        if (srigl_set_path(path) == 0) return path;
    return -1;   /* unreachable: generic is always supported */
}

static const char *srigl_path_name(int path) {
    const srigl_kernels *table = srigl_path_table(path);
    return table ? table->name : (path == 0 ? "avx512" : path == 1 ? "avx2" : "generic");
}


/* ---------------------------------------------------------------------------
   Entry points (the active path)

   float srigl_gather_dot_{i16,i32}(v, idx, x, k): see _kernels_isa.h.

   void srigl_block_{i16,i32}(n_vectors, values, indices, starts, n_blocks, n_active,
                              bias, xt, r0, r1, y, ldy, width)
     the batched block for a tile of W = 8 * n_vectors values, n_vectors 1, 2, 4 or 8
     (any other value runs the 8-wide block); the rest as srigl_block{W}_* in
     _kernels_isa.h, with xt[n_in, W].
   --------------------------------------------------------------------------- */

static inline float srigl_gather_dot_i16(const float *v, const int16_t *idx, const float *x,
                                         Py_ssize_t k) {
    return srigl_active->gather_dot_i16(v, idx, x, k);
}
static inline float srigl_gather_dot_i32(const float *v, const int32_t *idx, const float *x,
                                         Py_ssize_t k) {
    return srigl_active->gather_dot_i32(v, idx, x, k);
}

static inline int srigl_tile_slot(int n_vectors) {
    return n_vectors == 8 ? 3 : n_vectors == 4 ? 2 : n_vectors == 2 ? 1 : 0;
}

static void srigl_block_i16(int n_vectors, const float *values, const int16_t *indices,
                            const Py_ssize_t *starts, Py_ssize_t n_blocks, Py_ssize_t n_active,
                            const float *bias, const float *xt, Py_ssize_t r0, Py_ssize_t r1,
                            float *y, Py_ssize_t ldy, Py_ssize_t width) {
    srigl_active->block_i16[srigl_tile_slot(n_vectors)](
        values, indices, starts, n_blocks, n_active, bias, xt, r0, r1, y, ldy, width);
}
static void srigl_block_i32(int n_vectors, const float *values, const int32_t *indices,
                            const Py_ssize_t *starts, Py_ssize_t n_blocks, Py_ssize_t n_active,
                            const float *bias, const float *xt, Py_ssize_t r0, Py_ssize_t r1,
                            float *y, Py_ssize_t ldy, Py_ssize_t width) {
    srigl_active->block_i32[srigl_tile_slot(n_vectors)](
        values, indices, starts, n_blocks, n_active, bias, xt, r0, r1, y, ldy, width);
}

/* ---------------------------------------------------------------------------
   Row groups of the batch-1 lookup layout

   void srigl_lookup_order(counts, n_rows, n_blocks, window, order, taken, top)

   A greedy grouping of rows into groups of SRIGL_LOOKUP_ROWS that share their
   padding: each group starts at the first row not yet taken, then adds, one at a
   time, the row among the next `window` untaken ones that raises the group's
   per-block maximum the least (the first such row on ties; a row that raises nothing
   ends the search). The lookup kernel pays, per group and column block, the most
   non-zeros any of its rows has there; on random 10%-dense rows this grouping cut
   that padding from 1.69 to 1.39 lanes per non-zero (768 inputs, 3072 rows) and from
   1.70 to 1.57-1.59 (3072 and 4096 inputs), and the kernel's time with it (a C
   microbenchmark of the kernel alone, 2 threads, Zen 5: 14.5 to 10.8 us and 115 to
   100 us). Deterministic: no ties broken at
   random. Cost: n_rows * window * n_blocks steps at most.

   Input arguments:
     const int32_t counts[n_rows * n_blocks]  - non-zeros of row r in column block b
     Py_ssize_t    n_rows, n_blocks, window   - window >= 1
   Output arguments:
     int32_t       order[n_rows]              - the rows, group by group (a permutation)
   Scratch:
     char          taken[n_rows]              - zeroed by the caller
     int32_t       top[n_blocks]
   --------------------------------------------------------------------------- */
static void srigl_lookup_order(const int32_t *counts, Py_ssize_t n_rows, Py_ssize_t n_blocks,
                               Py_ssize_t window, int32_t *order, char *taken, int32_t *top) {
    Py_ssize_t placed = 0, first = 0, b;
    while (placed < n_rows) {
        Py_ssize_t member;
        while (taken[first]) first++;
        taken[first] = 1;
        order[placed++] = (int32_t)first;
        memcpy(top, counts + first * n_blocks, n_blocks * sizeof *top);
        for (member = 1; member < SRIGL_LOOKUP_ROWS && placed < n_rows; member++) {
            Py_ssize_t c, seen = 0, best_row = -1, best = 0;
            for (c = first + 1; c < n_rows && seen < window; c++) {
                const int32_t *row = counts + c * n_blocks;
                Py_ssize_t raise = 0;
                if (taken[c]) continue;
                seen++;
                for (b = 0; b < n_blocks; b++)
                    if (row[b] > top[b]) raise += row[b] - top[b];
                if (best_row < 0 || raise < best) {
                    best_row = c;
                    best = raise;
                    if (raise == 0) break;
                }
            }
            taken[best_row] = 1;
            order[placed++] = (int32_t)best_row;
            for (b = 0; b < n_blocks; b++)
                if (counts[best_row * n_blocks + b] > top[b])
                    top[b] = counts[best_row * n_blocks + b];
        }
    }
}


/* ---------------------------------------------------------------------------
   Max pooling of one plane (inference)

   void srigl_max_pool_plane(x, height, width, kh, kw, stride, y, out_h, out_w)

   y[oh, ow] = max over x[oh*stride + i, ow*stride + j], i < kh, j < kw; a NaN in a
   window gives NaN, as np.maximum does.

   Input arguments:
     const float x[height, width]     - one (image, channel) plane
     int         kh, kw, stride       - window and step; out_h = (height - kh) / stride
                                        + 1 and out_w likewise (no padding)
   Output arguments:
     float       y[out_h, out_w]

   Window taps are the outer loops and output columns the inner one, so each pass is
   one vectorisable sweep of an output row (per-pixel window loops ran 5x slower).
   --------------------------------------------------------------------------- */
static void srigl_max_pool_plane(const float *x, Py_ssize_t height, Py_ssize_t width, int kh,
                                 int kw, int stride, float *__restrict y, Py_ssize_t out_h,
                                 Py_ssize_t out_w) {
    Py_ssize_t oh, ow;
    int i, j;
    (void)height;   /* the caller's geometry check keeps every window inside the plane */
    for (oh = 0; oh < out_h; oh++) {
        float *__restrict o = y + oh * out_w;
        const float *first = x + oh * stride * width;
        for (ow = 0; ow < out_w; ow++) o[ow] = first[ow * stride];
        for (i = 0; i < kh; i++) {
            const float *__restrict row = x + (oh * stride + i) * width;
            for (j = 0; j < kw; j++)
                for (ow = 0; ow < out_w; ow++) {
                    const float v = row[ow * stride + j];
                    o[ow] = (v > o[ow] || v != v) ? v : o[ow];
                }
        }
    }
}


/* void srigl_conv_rows(...): srigl_conv_rows_<path> (SRIGL_CONV_ROWS above) on the
   active path. */
static inline void srigl_conv_rows(int n_vectors, const float *values, const int32_t *offsets,
                                   const Py_ssize_t *starts, Py_ssize_t n_blocks,
                                   Py_ssize_t n_active, const float *bias, const float *src,
                                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t g0,
                                   Py_ssize_t first, Py_ssize_t count, Py_ssize_t wq,
                                   Py_ssize_t out_w, Py_ssize_t plane, const float *residual,
                                   int relu, float *y) {
    srigl_active->conv_rows(n_vectors, values, offsets, starts, n_blocks, n_active, bias, src,
                            r0, r1, g0, first, count, wq, out_w, plane, residual, relu, y);
}

/* void srigl_depthwise(...): the depthwise convolution of one plane on the active path;
   arguments as srigl_depthwise_<path> (SRIGL_DEPTHWISE above). */
static inline void srigl_depthwise(const float *filter, int kh, int kw, int stride,
                                   const float *ph, int se, Py_ssize_t hq, Py_ssize_t wq,
                                   float bias, int relu, float *acc, float *out,
                                   Py_ssize_t out_h, Py_ssize_t out_w) {
    srigl_active->depthwise(filter, kh, kw, stride, ph, se, hq, wq, bias, relu, acc, out,
                            out_h, out_w);
}

/* 1 when the active path has the batch-1 lookup kernel (avx512), else 0. */
/* The GELU of x[n] into out[n], and the LayerNorm of one row x[n] into out[n], on the
   active path. */
static inline void srigl_gelu(const float *x, Py_ssize_t n, float *out) {
    srigl_active->gelu(x, n, out);
}
static inline void srigl_layer_norm(const float *x, Py_ssize_t n, const float *weight,
                                    const float *bias, float eps, float *out) {
    srigl_active->layer_norm(x, n, weight, bias, eps, out);
}

static inline void srigl_softmax(const float *x, Py_ssize_t n, float *out) {
    srigl_active->softmax(x, n, out);
}

static inline int srigl_has_lookup(void) { return srigl_active->lookup_group != NULL; }

/* void srigl_lookup_group(...): srigl_lookup_group_avx512 (see _kernels_isa.h) on the
   active path; call only when srigl_has_lookup(). */
static inline void srigl_lookup_group(const float *lv, const uint8_t *li, const int32_t *steps,
                                      Py_ssize_t n_blocks, const float *x, Py_ssize_t n_in,
                                      const int32_t *rows, const float *bias, float *y,
                                      int n_rows) {
    srigl_active->lookup_group(lv, li, steps, n_blocks, x, n_in, rows, bias, y, n_rows);
}

static inline int srigl_has_interleaved(void) {
    return srigl_active->interleaved_i16 != NULL;
}

/* void srigl_interleaved_group_{i16,i32}(...): the active path's batch-1 interleaved
   group (see _kernels_isa.h); call only when srigl_has_interleaved(). */
static inline void srigl_interleaved_group_i16(const float *iv, const int16_t *ii,
                                               Py_ssize_t k, const float *x,
                                               const float *bias, float *y, int n_rows) {
    srigl_active->interleaved_i16(iv, ii, k, x, bias, y, n_rows);
}
static inline void srigl_interleaved_group_i32(const float *iv, const int32_t *ii,
                                               Py_ssize_t k, const float *x,
                                               const float *bias, float *y, int n_rows) {
    srigl_active->interleaved_i32(iv, ii, k, x, bias, y, n_rows);
}

/* void srigl_transpose(...): srigl_transpose_* of the active path. */
static inline void srigl_transpose(const float *x, Py_ssize_t ldx, Py_ssize_t rows,
                                   Py_ssize_t count, float *xt, Py_ssize_t width) {
    srigl_active->transpose(x, ldx, rows, count, xt, width);
}

/* ---------------------------------------------------------------------------
   One parallel region per call

   On this project's shared 2-vCPU hosts a thread of the team is often descheduled
   for a time slice while another job runs, and every barrier (each parallel
   region's end) then waits that slice out: a batched product that went through
   transpose and multiply regions per chunk took 33-45 ms instead of 1.5 ms on 2
   threads of a loaded host, where torch's one region per GEMM took 8-12 ms. So the
   batched product and the convolution run as one region with no barrier inside:
   the work units (batch tile or image tile, block of SRIGL_ROWS rows) are split
   into one contiguous run per thread of about equal cost (tile width x rows), and
   each thread makes the layout its units read itself (the tile's transpose, the
   image's phase planes) in its own scratch, redoing it where a tile or image is
   split between two threads. Each unit's result is the same whoever computes it, so
   results do not depend on the thread count.

   srigl_share(cost_before, cost, total, t, n): 1 when the unit whose cost runs from
   cost_before to cost_before + cost belongs to thread t of n (its midpoint falls in
   the thread's share of total).
   --------------------------------------------------------------------------- */
static inline int srigl_share(Py_ssize_t cost_before, Py_ssize_t cost, Py_ssize_t total,
                              int t, int n) {
    const double middle = (double)cost_before + 0.5 * (double)cost;
    return middle >= (double)total * t / n && middle < (double)total * (t + 1) / n;
}

/* void srigl_matmul_run(values, indices, short_indices, starts, n_blocks, n_active,
                         bias, x, batch, n_in, split, n_vectors, tail_vectors, xt,
                         threads, y)

   y = x @ W.T (+ bias) by the batched block kernel: rows [0, split) in tiles of
   W = 8 * n_vectors (the last one partial), rows [split, batch) in tiles of
   8 * tail_vectors; units (tile, block of SRIGL_ROWS rows) as above.

   Input arguments:
     const float      values[nnz], starts[n_blocks*n_active + 1]  - packed weights
     const void       indices[nnz]           - int16 (short_indices) or int32
     const float      bias[n_active] or NULL
     const float      x[batch, n_in]
     Py_ssize_t       split                  - 0 < split <= batch
     int              n_vectors, tail_vectors, threads
   Scratch:
     float            xt[threads, n_in, 64]  - each thread's transposed tile
   Output arguments:
     float            y[batch, n_active] */
static void srigl_matmul_run(const float *values, const void *indices, int short_indices,
                             const Py_ssize_t *starts, Py_ssize_t n_blocks,
                             Py_ssize_t n_active, const float *bias, const float *x,
                             Py_ssize_t batch, Py_ssize_t n_in, Py_ssize_t split,
                             int n_vectors, int tail_vectors, float *xt, int threads,
                             float *y) {
    const Py_ssize_t wa = 8 * n_vectors, wb = 8 * tail_vectors;
    const Py_ssize_t tiles_a = (split + wa - 1) / wa;
    const Py_ssize_t tiles = tiles_a + (batch - split + wb - 1) / wb;
    const Py_ssize_t row_blocks = (n_active + SRIGL_ROWS - 1) / SRIGL_ROWS;
    const Py_ssize_t total = (tiles_a * wa + (tiles - tiles_a) * wb) * n_active;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        float *own = xt + (Py_ssize_t)t * n_in * 64;
        Py_ssize_t tile, block, before = 0, made = -1;
        for (tile = 0; tile < tiles; tile++) {
            const int in_a = tile < tiles_a;
            const Py_ssize_t w = in_a ? wa : wb;
            const Py_ssize_t row0 = in_a ? tile * wa : split + (tile - tiles_a) * wb;
            const Py_ssize_t rows = (in_a ? split : batch) - row0 < w
                                    ? (in_a ? split : batch) - row0 : w;
            for (block = 0; block < row_blocks; block++) {
                const Py_ssize_t r0 = block * SRIGL_ROWS;
                const Py_ssize_t r1 = r0 + SRIGL_ROWS < n_active ? r0 + SRIGL_ROWS : n_active;
                const Py_ssize_t cost = w * (r1 - r0);
                if (srigl_share(before, cost, total, t, n)) {
                    if (made != tile) {
                        Py_ssize_t c;
                        for (c = 0; c < n_in; c += 64)
                            srigl_transpose(x + row0 * n_in + c, n_in, rows,
                                            n_in - c < 64 ? n_in - c : 64, own + c * w, w);
                        made = tile;
                    }
                    if (short_indices)
                        srigl_block_i16(in_a ? n_vectors : tail_vectors, values,
                                        (const int16_t *)indices, starts, n_blocks, n_active,
                                        bias, own, r0, r1, y + row0 * n_active, n_active,
                                        rows);
                    else
                        srigl_block_i32(in_a ? n_vectors : tail_vectors, values,
                                        (const int32_t *)indices, starts, n_blocks, n_active,
                                        bias, own, r0, r1, y + row0 * n_active, n_active,
                                        rows);
                }
                before += cost;
            }
        }
    }
}

/* void srigl_conv_run(values, offsets, starts, n_blocks, n_active, bias, x, batch,
                       channels, height, width, stride, padding, sa, se, hq, wq, in_place,
                       out_h, out_w, n_vectors, tail_vectors, ph, ph_size, threads,
                       residual, relu, y)

   The condensed convolution (see srigl_conv_phase and srigl_conv_rows): units (image,
   tile of grid positions, block of SRIGL_ROWS channels) as above; per image the
   tiles are grid / W of W = 8 * n_vectors positions, then, when W does not divide
   the grid and the grid is wider than W, one of 8 * tail_vectors moved back to end at
   the grid's end (it stores only the positions the others left); a grid under W has
   one tile.

   Input arguments:
     const float      values[nnz], starts  - packed weights
     const int32_t    offsets[nnz]          - their taps' offsets in an image's phases
     const float      bias[n_active] or NULL
     const float      x[batch, channels, height, width]
     int              stride, padding, sa, se
     Py_ssize_t       hq, wq                - the phase geometry (_phase_geometry)
     int              in_place              - x is its own phase layout (stride 1, no
                                              padding, grid >= 8): read it there
     Py_ssize_t       out_h, out_w
     int              n_vectors, tail_vectors, threads
     const float      residual[batch, n_active, out_h*out_w] or NULL
     int              relu
   Scratch:
     float            ph[threads, ph_size]  - each thread's phase planes of one image
                                              (channels*sa*se*hq*wq) and the zeroed
                                              floats its last tile may read past them
   Output arguments:
     float            y[batch, n_active, out_h*out_w] */
static void srigl_conv_run(const float *values, const int32_t *offsets,
                           const Py_ssize_t *starts, Py_ssize_t n_blocks, Py_ssize_t n_active,
                           const float *bias, const float *x, Py_ssize_t batch,
                           Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                           int stride, int padding, int sa, int se, Py_ssize_t hq,
                           Py_ssize_t wq, int in_place, Py_ssize_t out_h, Py_ssize_t out_w,
                           int n_vectors, int tail_vectors, float *ph, Py_ssize_t ph_size,
                           int threads, const float *residual, int relu, float *y) {
    const Py_ssize_t w = 8 * n_vectors, grid = (out_h - 1) * wq + out_w;
    const Py_ssize_t full = grid / w;
    const Py_ssize_t tiles = grid <= w ? 1 : full + (grid % w != 0);
    const Py_ssize_t row_blocks = (n_active + SRIGL_ROWS - 1) / SRIGL_ROWS;
    const Py_ssize_t plane = out_h * out_w, image = channels * sa * se * hq * wq;
    const Py_ssize_t per_image = (full * w + (tiles - full) * 8 * tail_vectors) * n_active;
    const Py_ssize_t total = batch * per_image;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        float *own = ph + (Py_ssize_t)t * ph_size;
        Py_ssize_t b, tile, block, before = 0, made = -1;
        const double lo = (double)total * t / n, hi = (double)total * (t + 1) / n;
        for (b = 0; b < batch; b++) {
            if (before + per_image <= lo || before >= hi) {   /* no unit of b is ours */
                before += per_image;
                continue;
            }
            for (tile = 0; tile < tiles; tile++) {
                const int narrow = tile >= full && grid > w;
                const Py_ssize_t g0 = narrow ? grid - 8 * tail_vectors : tile * w;
                const Py_ssize_t first = narrow ? full * w - g0 : 0;
                const Py_ssize_t count = narrow ? 8 * tail_vectors : (grid < w ? grid : w);
                const Py_ssize_t cost_w = narrow ? 8 * tail_vectors : w;
                for (block = 0; block < row_blocks; block++) {
                    const Py_ssize_t r0 = block * SRIGL_ROWS;
                    const Py_ssize_t r1 = r0 + SRIGL_ROWS < n_active ? r0 + SRIGL_ROWS
                                                                    : n_active;
                    const Py_ssize_t cost = cost_w * (r1 - r0);
                    if (srigl_share(before, cost, total, t, n)) {
                        const float *src;
                        if (in_place) {
                            src = x + b * image;
                        } else {
                            if (made != b) {
                                Py_ssize_t c;
                                for (c = 0; c < channels; c++)
                                    srigl_conv_phase(x + (b * channels + c) * height * width,
                                                     height, width, stride, padding, sa, se,
                                                     hq, wq, own + c * sa * se * hq * wq);
                                made = b;
                            }
                            src = own;
                        }
                        srigl_conv_rows(narrow ? tail_vectors : n_vectors, values, offsets,
                                        starts, n_blocks, n_active, bias, src + g0, r0, r1,
                                        g0, first, count, wq, out_w, plane,
                                        residual ? residual + b * n_active * plane : NULL,
                                        relu, y + b * n_active * plane);
                    }
                    before += cost;
                }
            }
        }
    }
}

#endif /* SRIGL_NP_KERNELS_H */
