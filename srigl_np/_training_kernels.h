/* The C inner loops of srigl_np's condensed training kernels, included by
   srigl_np/_training_kernels.pyx (which holds the validation and the OpenMP loops).

   Layout: every kernel works on "column" arrays, the batch axis last and contiguous:
   xt[n_in, m] (an input transposed, or the transposed im2col matrix of a convolution,
   m = batch * out_h * out_w), yt / dyt[n_rows, m]. The loops over the m columns are then
   unit-stride vector loops; the loops over a neuron's k stored weights gather (or
   scatter) whole column rows. Each function handles one neuron and the column range
   [c0, c1); the Cython caller splits the work so that no two threads write the same
   element.

   Vector code: GCC/Clang vector extensions over 32-byte vectors, eight of them (256
   bytes of columns) held in registers per block. On x86-64 Linux each
   function is compiled three times (target_clones: AVX-512, AVX2+FMA, the baseline)
   and the loader picks the best the CPU runs, so one portable build runs at the CPU's
   width; the Linear forward and SDDMM also have a 64-byte copy for AVX-512 CPUs (see
   SRIGL_TRAIN_WIDE_ATTR). Elsewhere the baseline build alone runs.
   FMA contraction and the vector width may differ between the builds, so results
   agree with the NumPy definition to rounding, not bit for bit across CPUs; on one CPU
   they do not depend on the thread count.

   Generated per (value type T, index type I): f32_i16, f32_i32, f64_i16, f64_i32.
*/
#include <stddef.h>
#include <stdint.h>
#include <string.h>


/* OpenMP shim: SRIGL_TRAIN_OPENMP is 1 in a build with OpenMP; without it
   omp_get_max_threads() is defined here and returns 1. */
#ifdef _OPENMP
#include <omp.h>
#define SRIGL_TRAIN_OPENMP 1
#else
#define SRIGL_TRAIN_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
#endif

#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#  if __has_attribute(target_clones)
#    define SRIGL_TRAIN_CLONES \
         __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#  endif
#endif
#ifndef SRIGL_TRAIN_CLONES
#  define SRIGL_TRAIN_CLONES
#endif

/* The wide copy of the Linear kernels (forward, SDDMM): on x86-64 Linux they are
   compiled a second time with 64-byte vectors for x86-64-v4 (AVX-512) alone, and the
   caller runs that copy when srigl_train_wide() says the CPU has it. Eight 64-byte
   accumulators would spill AVX2's sixteen registers, hence a separate copy rather than
   64-byte vectors in every clone. Elsewhere the wide copy is the 32-byte one, never
   chosen. At the mlp's shapes (batch 128, float32) the 64-byte forward and SDDMM take
   about 0.8x the 32-byte ones' time on an AVX-512 Zen 5. */
#if defined(__x86_64__) && defined(__linux__) && defined(__has_attribute)
#  if __has_attribute(target)
#    define SRIGL_TRAIN_WIDE_ATTR __attribute__((target("arch=x86-64-v4")))
#    define SRIGL_TRAIN_WIDE_BYTES 64
#    define SRIGL_TRAIN_FOLD_WIDE SRIGL_TRAIN_FOLD64
#  endif
#endif
#ifndef SRIGL_TRAIN_WIDE_ATTR
#  define SRIGL_TRAIN_WIDE_ATTR
#  define SRIGL_TRAIN_WIDE_BYTES 32
#  define SRIGL_TRAIN_FOLD_WIDE SRIGL_TRAIN_FOLD32
#endif

/* 1 when the wide copy runs on this CPU (AVX-512 F, VL, BW, DQ, CD: x86-64-v4), else 0. */
static int srigl_train_wide(void)
{
#if SRIGL_TRAIN_WIDE_BYTES == 64
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512cd");
#else
    return 0;
#endif
}

/* An SDDMM accumulator of VB bytes folded to 32 bytes (its halves added) for SUM8. */
#define SRIGL_TRAIN_FOLD32(H, a) (((const H*)&(a))[0])
#define SRIGL_TRAIN_FOLD64(H, a) (((const H*)&(a))[0] + ((const H*)&(a))[1])

#define SRIGL_TRAIN_KERNELS(SUFFIX, T, I, SUM8, VB, FOLD, ATTR)                            \
/* Forward of one neuron: yt[c] = bias + sum_j v[j] * xt[idx[j], c] for c in [c0, c1).  \
   v[k], idx[k] (each in [0, n_in)), xt[n_in, ldx], yt[ldx] (the neuron's row).         \
   Eight vector accumulators (a lane block) stay in registers across the k gathers;    \
   a narrower column range takes four, then one, then scalars. */                      \
ATTR                                                                                       \
static void srigl_train_forward_##SUFFIX(const T* v, const I* idx, ptrdiff_t k,           \
                                         const T* xt, ptrdiff_t ldx, T bias, T* yt,        \
                                         ptrdiff_t c0, ptrdiff_t c1)                       \
{                                                                                          \
    typedef T V __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));           \
    enum { W = VB / sizeof(T) };                                                           \
    ptrdiff_t c = c0, j;                                                                   \
    for (; c + 8 * W <= c1; c += 8 * W) {                                                  \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};  \
        for (j = 0; j < k; j++) {                                                          \
            const V* row = (const V*)(xt + (ptrdiff_t)idx[j] * ldx + c);                   \
            const T w = v[j];                                                              \
            a0 += w * row[0]; a1 += w * row[1]; a2 += w * row[2]; a3 += w * row[3];       \
            a4 += w * row[4]; a5 += w * row[5]; a6 += w * row[6]; a7 += w * row[7];       \
        }                                                                                  \
        V* out = (V*)(yt + c);                                                             \
        out[0] = a0 + bias; out[1] = a1 + bias; out[2] = a2 + bias; out[3] = a3 + bias;    \
        out[4] = a4 + bias; out[5] = a5 + bias; out[6] = a6 + bias; out[7] = a7 + bias;    \
    }                                                                                      \
    for (; c + 4 * W <= c1; c += 4 * W) {                                                  \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                          \
        for (j = 0; j < k; j++) {                                                          \
            const V* row = (const V*)(xt + (ptrdiff_t)idx[j] * ldx + c);                   \
            const T w = v[j];                                                              \
            a0 += w * row[0]; a1 += w * row[1]; a2 += w * row[2]; a3 += w * row[3];       \
        }                                                                                  \
        V* out = (V*)(yt + c);                                                             \
        out[0] = a0 + bias; out[1] = a1 + bias; out[2] = a2 + bias; out[3] = a3 + bias;    \
    }                                                                                      \
    for (; c + W <= c1; c += W) {                                                          \
        V a0 = {0};                                                                        \
        for (j = 0; j < k; j++)                                                            \
            a0 += v[j] * *(const V*)(xt + (ptrdiff_t)idx[j] * ldx + c);                    \
        *(V*)(yt + c) = a0 + bias;                                                         \
    }                                                                                      \
    for (; c < c1; c++) {                                                                  \
        T acc = 0;                                                                         \
        for (j = 0; j < k; j++) acc += v[j] * xt[(ptrdiff_t)idx[j] * ldx + c];             \
        yt[c] = acc + bias;                                                                \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* Forward of two neurons, rows r and r + 1 of C-contiguous v[., k], idx[., k] (v, idx  \
   point at row r): each sums as the one-neuron forward does, over blocks of NB vectors \
   per neuron, both neurons' accumulators in registers at once (16 on AVX-512's 32     \
   registers, 8 on AVX2's 16), so two independent gather streams are in flight. The    \
   rest of the columns runs the one-neuron forward. */                                 \
ATTR                                                                                       \
static void srigl_train_forward2_##SUFFIX(const T* v, const I* idx, ptrdiff_t k,          \
                                          const T* xt, ptrdiff_t ldx, T bias0, T bias1,    \
                                          T* yt0, T* yt1, ptrdiff_t c0, ptrdiff_t c1)      \
{                                                                                          \
    typedef T V __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));           \
    enum { W = VB / sizeof(T), NB = VB == 64 ? 8 : 4 };                                    \
    const T* v1 = v + k;                                                                   \
    const I* idx1 = idx + k;                                                               \
    ptrdiff_t c = c0, j;                                                                   \
    int u;                                                                                 \
    for (; c + NB * W <= c1; c += NB * W) {                                                \
        V a[NB], b[NB];                                                                    \
        for (u = 0; u < NB; u++) a[u] = b[u] = (V){0};                                     \
        for (j = 0; j < k; j++) {                                                          \
            const V* ra = (const V*)(xt + (ptrdiff_t)idx[j] * ldx + c);                    \
            const V* rb = (const V*)(xt + (ptrdiff_t)idx1[j] * ldx + c);                   \
            const T wa = v[j], wb = v1[j];                                                 \
            for (u = 0; u < NB; u++) {                                                     \
                a[u] += wa * ra[u];                                                        \
                b[u] += wb * rb[u];                                                        \
            }                                                                              \
        }                                                                                  \
        for (u = 0; u < NB; u++) {                                                         \
            ((V*)(yt0 + c))[u] = a[u] + bias0;                                             \
            ((V*)(yt1 + c))[u] = b[u] + bias1;                                             \
        }                                                                                  \
    }                                                                                      \
    if (c < c1) {                                                                          \
        srigl_train_forward_##SUFFIX(v, idx, k, xt, ldx, bias0, yt0, c, c1);               \
        srigl_train_forward_##SUFFIX(v1, idx1, k, xt, ldx, bias1, yt1, c, c1);             \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* Weight gradient of one neuron at its stored positions (SDDMM), over columns          \
   [c0, c1): out[j] = sum_c dyt[c] * xt[idx[j], c]. Eight stored weights at a time, one \
   vector accumulator each, so each dyt vector is loaded once for eight rows; SUM8 then \
   reduces the eight accumulators together (a transposed reduction: a few shuffles per \
   eight weights instead of a serial lane sum per weight). A last group of fewer than   \
   eight repeats its last row and drops the extra sums, so every weight is summed in    \
   the same order whatever its slot, and the result does not depend on how the caller  \
   splits neurons. */                                                                   \
ATTR                                                                                       \
static void srigl_train_sddmm_##SUFFIX(const I* idx, ptrdiff_t k, const T* dyt,          \
                                       const T* xt, ptrdiff_t ldx, ptrdiff_t c0,           \
                                       ptrdiff_t c1, T* out)                               \
{                                                                                          \
    typedef T V __attribute__((vector_size(VB), aligned(sizeof(T)), may_alias));           \
    typedef T H __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = VB / sizeof(T) };                                                           \
    ptrdiff_t j0, c, q;                                                                    \
    for (j0 = 0; j0 < k; j0 += 8) {                                                        \
        const ptrdiff_t n = k - j0 < 8 ? k - j0 : 8;                                       \
        const T* r[8];                                                                     \
        for (q = 0; q < 8; q++)                                                            \
            r[q] = xt + (ptrdiff_t)idx[j0 + (q < n ? q : n - 1)] * ldx;                    \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};  \
        for (c = c0; c + W <= c1; c += W) {                                                \
            const V d = *(const V*)(dyt + c);                                              \
            a0 += d * *(const V*)(r[0] + c); a1 += d * *(const V*)(r[1] + c);              \
            a2 += d * *(const V*)(r[2] + c); a3 += d * *(const V*)(r[3] + c);              \
            a4 += d * *(const V*)(r[4] + c); a5 += d * *(const V*)(r[5] + c);              \
            a6 += d * *(const V*)(r[6] + c); a7 += d * *(const V*)(r[7] + c);              \
        }                                                                                  \
        T sums[8], tail[8] = {0};                                                          \
        SUM8(H, FOLD(H, a0), FOLD(H, a1), FOLD(H, a2), FOLD(H, a3), FOLD(H, a4),           \
             FOLD(H, a5), FOLD(H, a6), FOLD(H, a7), sums);                                 \
        for (; c < c1; c++)                                                                \
            for (q = 0; q < 8; q++) tail[q] += dyt[c] * r[q][c];                           \
        for (q = 0; q < n; q++) out[j0 + q] = sums[q] + tail[q];                           \
    }                                                                                      \
}

/* The transposed reductions of SDDMM: sums[q] = the lane sum of a_q, for eight 32-byte
   vectors at once. Each level adds the even and odd halves of pairs, interleaved so that
   the next level pairs whole partial sums: for float (8 lanes) lanes (0+1), then
   (0..3), then (0..7), in a tree; for double (4 lanes) (0+1) then (0..3). */
#define SRIGL_TRAIN_SUM8_F32(V, a0, a1, a2, a3, a4, a5, a6, a7, sums)                      \
    do {                                                                                   \
        typedef int32_t M __attribute__((vector_size(32)));                                \
        const M lo1 = {0, 8, 2, 10, 4, 12, 6, 14}, hi1 = {1, 9, 3, 11, 5, 13, 7, 15};      \
        const M lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};      \
        const M lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};      \
        const V t01 = __builtin_shuffle(a0, a1, lo1) + __builtin_shuffle(a0, a1, hi1);     \
        const V t23 = __builtin_shuffle(a2, a3, lo1) + __builtin_shuffle(a2, a3, hi1);     \
        const V t45 = __builtin_shuffle(a4, a5, lo1) + __builtin_shuffle(a4, a5, hi1);     \
        const V t67 = __builtin_shuffle(a6, a7, lo1) + __builtin_shuffle(a6, a7, hi1);     \
        const V u03 = __builtin_shuffle(t01, t23, lo2) + __builtin_shuffle(t01, t23, hi2); \
        const V u47 = __builtin_shuffle(t45, t67, lo2) + __builtin_shuffle(t45, t67, hi2); \
        *(V*)(sums) = __builtin_shuffle(u03, u47, lo3) + __builtin_shuffle(u03, u47, hi3); \
    } while (0)

#define SRIGL_TRAIN_SUM8_F64(V, a0, a1, a2, a3, a4, a5, a6, a7, sums)                      \
    do {                                                                                   \
        typedef int64_t M __attribute__((vector_size(32)));                                \
        const M lo1 = {0, 4, 2, 6}, hi1 = {1, 5, 3, 7};                                    \
        const M lo2 = {0, 1, 4, 5}, hi2 = {2, 3, 6, 7};                                    \
        const V t01 = __builtin_shuffle(a0, a1, lo1) + __builtin_shuffle(a0, a1, hi1);     \
        const V t23 = __builtin_shuffle(a2, a3, lo1) + __builtin_shuffle(a2, a3, hi1);     \
        const V t45 = __builtin_shuffle(a4, a5, lo1) + __builtin_shuffle(a4, a5, hi1);     \
        const V t67 = __builtin_shuffle(a6, a7, lo1) + __builtin_shuffle(a6, a7, hi1);     \
        *(V*)(sums) = __builtin_shuffle(t01, t23, lo2) + __builtin_shuffle(t01, t23, hi2); \
        *(V*)(sums + 4) =                                                                  \
            __builtin_shuffle(t45, t67, lo2) + __builtin_shuffle(t45, t67, hi2);           \
    } while (0)

SRIGL_TRAIN_KERNELS(f32_i16, float, int16_t, SRIGL_TRAIN_SUM8_F32, 32, SRIGL_TRAIN_FOLD32,
                    SRIGL_TRAIN_CLONES)
SRIGL_TRAIN_KERNELS(f32_i16_wide, float, int16_t, SRIGL_TRAIN_SUM8_F32,
                    SRIGL_TRAIN_WIDE_BYTES, SRIGL_TRAIN_FOLD_WIDE, SRIGL_TRAIN_WIDE_ATTR)
SRIGL_TRAIN_KERNELS(f32_i32, float, int32_t, SRIGL_TRAIN_SUM8_F32, 32, SRIGL_TRAIN_FOLD32,
                    SRIGL_TRAIN_CLONES)
SRIGL_TRAIN_KERNELS(f32_i32_wide, float, int32_t, SRIGL_TRAIN_SUM8_F32,
                    SRIGL_TRAIN_WIDE_BYTES, SRIGL_TRAIN_FOLD_WIDE, SRIGL_TRAIN_WIDE_ATTR)
SRIGL_TRAIN_KERNELS(f64_i16, double, int16_t, SRIGL_TRAIN_SUM8_F64, 32, SRIGL_TRAIN_FOLD32,
                    SRIGL_TRAIN_CLONES)
SRIGL_TRAIN_KERNELS(f64_i16_wide, double, int16_t, SRIGL_TRAIN_SUM8_F64,
                    SRIGL_TRAIN_WIDE_BYTES, SRIGL_TRAIN_FOLD_WIDE, SRIGL_TRAIN_WIDE_ATTR)
SRIGL_TRAIN_KERNELS(f64_i32, double, int32_t, SRIGL_TRAIN_SUM8_F64, 32, SRIGL_TRAIN_FOLD32,
                    SRIGL_TRAIN_CLONES)
SRIGL_TRAIN_KERNELS(f64_i32_wide, double, int32_t, SRIGL_TRAIN_SUM8_F64,
                    SRIGL_TRAIN_WIDE_BYTES, SRIGL_TRAIN_FOLD_WIDE, SRIGL_TRAIN_WIDE_ATTR)

/* The scatter input gradient has one copy, of 32-byte vectors: a 64-byte copy ran 0.8x
   the time at 784 -> 300 (dxt in L2) but 1.2x at 9216 -> 128 (dxt beyond L2), batch
   128, so it was left out. */
#define SRIGL_TRAIN_SCATTER(SUFFIX, T, I)                                                  \
/* Input gradient of one neuron, a scatter: dxt[idx[j], c] += v[j] * dyt[c] for every j  \
   and c in [c0, c1). dyt[ldx] (the neuron's row), dxt[n_in, ldx]. The neuron's dyt    \
   block stays in eight vector registers across the k row updates. */                  \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_scatter_##SUFFIX(const T* v, const I* idx, ptrdiff_t k,           \
                                         const T* dyt, T* dxt, ptrdiff_t ldx,              \
                                         ptrdiff_t c0, ptrdiff_t c1)                       \
{                                                                                          \
    typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = 32 / sizeof(T) };                                                           \
    ptrdiff_t c = c0, j;                                                                   \
    for (; c + 8 * W <= c1; c += 8 * W) {                                                  \
        const V* dp = (const V*)(dyt + c);                                                 \
        const V d0 = dp[0], d1 = dp[1], d2 = dp[2], d3 = dp[3];                            \
        const V d4 = dp[4], d5 = dp[5], d6 = dp[6], d7 = dp[7];                            \
        for (j = 0; j < k; j++) {                                                          \
            V* row = (V*)(dxt + (ptrdiff_t)idx[j] * ldx + c);                              \
            const T w = v[j];                                                              \
            row[0] += w * d0; row[1] += w * d1; row[2] += w * d2; row[3] += w * d3;       \
            row[4] += w * d4; row[5] += w * d5; row[6] += w * d6; row[7] += w * d7;       \
        }                                                                                  \
    }                                                                                      \
    for (; c + W <= c1; c += W) {                                                          \
        const V d0 = *(const V*)(dyt + c);                                                 \
        for (j = 0; j < k; j++)                                                            \
            *(V*)(dxt + (ptrdiff_t)idx[j] * ldx + c) += v[j] * d0;                         \
    }                                                                                      \
    for (; c < c1; c++)                                                                    \
        for (j = 0; j < k; j++) dxt[(ptrdiff_t)idx[j] * ldx + c] += v[j] * dyt[c];         \
}

SRIGL_TRAIN_SCATTER(f32_i16, float, int16_t)
SRIGL_TRAIN_SCATTER(f32_i32, float, int32_t)
SRIGL_TRAIN_SCATTER(f64_i16, double, int16_t)
SRIGL_TRAIN_SCATTER(f64_i32, double, int32_t)

/* One 8 x 8 tile transposed in registers: dst[j * ldd + i] = src[i * lds + j], i, j < 8,
   by vector shuffles (pairs, then quads, then halves: 24 shuffles for float's 8-lane
   rows; two 4 x 4 blocks per half for double's 4-lane ones) in place of 64 scalar
   loads and stores. */
#define SRIGL_TRAIN_TILE8_F32(src, lds, dst, ldd)                                          \
    do {                                                                                   \
        typedef float V __attribute__((vector_size(32), aligned(4), may_alias));           \
        typedef int32_t M __attribute__((vector_size(32)));                                \
        const M lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};      \
        const M lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};      \
        const M lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};      \
        V r[8], t[8], u[8];                                                                \
        int i_;                                                                            \
        for (i_ = 0; i_ < 8; i_++) r[i_] = *(const V*)((src) + i_ * (lds));                \
        for (i_ = 0; i_ < 8; i_ += 2) {                                                    \
            t[i_] = __builtin_shuffle(r[i_], r[i_ + 1], lo1);                              \
            t[i_ + 1] = __builtin_shuffle(r[i_], r[i_ + 1], hi1);                          \
        }                                                                                  \
        for (i_ = 0; i_ < 8; i_ += 4) {                                                    \
            u[i_] = __builtin_shuffle(t[i_], t[i_ + 2], lo2);                              \
            u[i_ + 1] = __builtin_shuffle(t[i_], t[i_ + 2], hi2);                          \
            u[i_ + 2] = __builtin_shuffle(t[i_ + 1], t[i_ + 3], lo2);                      \
            u[i_ + 3] = __builtin_shuffle(t[i_ + 1], t[i_ + 3], hi2);                      \
        }                                                                                  \
        for (i_ = 0; i_ < 4; i_++) {                                                       \
            *(V*)((dst) + i_ * (ldd)) = __builtin_shuffle(u[i_], u[i_ + 4], lo3);          \
            *(V*)((dst) + (i_ + 4) * (ldd)) = __builtin_shuffle(u[i_], u[i_ + 4], hi3);    \
        }                                                                                  \
    } while (0)

#define SRIGL_TRAIN_TILE8_F64(src, lds, dst, ldd)                                          \
    do {                                                                                   \
        typedef double V __attribute__((vector_size(32), aligned(8), may_alias));          \
        typedef int64_t M __attribute__((vector_size(32)));                                \
        const M lo1 = {0, 4, 2, 6}, hi1 = {1, 5, 3, 7};                                    \
        const M lo2 = {0, 1, 4, 5}, hi2 = {2, 3, 6, 7};                                    \
        int bi_, bj_, i_;                                                                  \
        for (bi_ = 0; bi_ < 8; bi_ += 4)                                                   \
            for (bj_ = 0; bj_ < 8; bj_ += 4) {                                             \
                V r[4], t[4];                                                              \
                for (i_ = 0; i_ < 4; i_++)                                                 \
                    r[i_] = *(const V*)((src) + (bi_ + i_) * (lds) + bj_);                 \
                t[0] = __builtin_shuffle(r[0], r[1], lo1);                                 \
                t[1] = __builtin_shuffle(r[0], r[1], hi1);                                 \
                t[2] = __builtin_shuffle(r[2], r[3], lo1);                                 \
                t[3] = __builtin_shuffle(r[2], r[3], hi1);                                 \
                double* d_ = (dst) + bj_ * (ldd) + bi_;                                    \
                *(V*)(d_) = __builtin_shuffle(t[0], t[2], lo2);                            \
                *(V*)(d_ + (ldd)) = __builtin_shuffle(t[1], t[3], lo2);                    \
                *(V*)(d_ + 2 * (ldd)) = __builtin_shuffle(t[0], t[2], hi2);                \
                *(V*)(d_ + 3 * (ldd)) = __builtin_shuffle(t[1], t[3], hi2);                \
            }                                                                              \
    } while (0)

/* Tile transpose: at[c, r] = a[r, c] for r in [r0, r1), all c < cols; a[rows, lda],
   at[cols, ldat]. 8 x 8 tiles in registers (TILE8), scalar at the edges, in 16 x 16
   blocks (columns of tiles, then rows within a block): a 64-byte line of either side is
   finished within one block, at most 16 lines of each side live, so the strided side
   keeps its lines even when its stride is a multiple of 4 KiB (which maps every line to
   one L1 set). On x[128, 9216] -> [9216, 128] and back this took 0.45-0.85x the time of
   8 x 8 tiles swept along a row, copied element by element. */
#define SRIGL_TRAIN_TRANSPOSE(SUFFIX, T, TILE8)                                            \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_transpose_##SUFFIX(const T* a, ptrdiff_t lda, ptrdiff_t r0,        \
                                           ptrdiff_t r1, ptrdiff_t cols, T* at,            \
                                           ptrdiff_t ldat)                                 \
{                                                                                          \
    ptrdiff_t c16, s16, c0, s, r, c;                                                       \
    for (c16 = 0; c16 < cols; c16 += 16)                                                   \
        for (s16 = r0; s16 < r1; s16 += 16)                                                \
            for (c0 = c16; c0 < c16 + 16 && c0 < cols; c0 += 8)                            \
                for (s = s16; s < s16 + 16 && s < r1; s += 8) {                            \
                    const ptrdiff_t c1 = c0 + 8 < cols ? c0 + 8 : cols;                    \
                    const ptrdiff_t s1 = s + 8 < r1 ? s + 8 : r1;                          \
                    if (c1 - c0 == 8 && s1 - s == 8) {                                     \
                        TILE8(a + s * lda + c0, lda, at + c0 * ldat + s, ldat);            \
                    } else {                                                               \
                        for (r = s; r < s1; r++)                                           \
                            for (c = c0; c < c1; c++) at[c * ldat + r] = a[r * lda + c];   \
                    }                                                                      \
                }                                                                          \
}                                                                                          \
                                                                                           \
/* The output columns ow in [*lo, *hi) whose tap j (stride, padding) lands inside a row  \
   of ``width`` pixels. */                                                               \
static void srigl_train_valid_##SUFFIX(ptrdiff_t width, int j, int stride, int padding,   \
                                       ptrdiff_t out_w, ptrdiff_t* lo, ptrdiff_t* hi)      \
{                                                                                          \
    const ptrdiff_t first = padding - j, last = width - 1 + padding - j;                   \
    *lo = first <= 0 ? 0 : (first + stride - 1) / stride;                                 \
    *hi = last < 0 ? 0 : last / stride + 1;                                                \
    if (*hi > out_w) *hi = out_w;                                                          \
    if (*lo > *hi) *lo = *hi;                                                              \
}                                                                                          \
                                                                                           \
/* One row of the column matrix: tap (c, i, j) = ``tap`` of every output pixel,          \
   row[(b*out_h + oh)*out_w + ow] = x[b, c, oh*stride - padding + i,                    \
   ow*stride - padding + j], 0 in the padding. x[batch, channels, height, width]. */     \
static void srigl_train_im2col_row_##SUFFIX(const T* x, ptrdiff_t batch,                  \
        ptrdiff_t channels, ptrdiff_t height, ptrdiff_t width, int kh, int kw,             \
        int stride, int padding, ptrdiff_t out_h, ptrdiff_t out_w, ptrdiff_t tap, T* row)  \
{                                                                                          \
    const ptrdiff_t c = tap / (kh * kw);                                                   \
    const int i = (int)((tap / kw) % kh), j = (int)(tap % kw);                             \
    ptrdiff_t lo, hi, b, oh, ow;                                                           \
    srigl_train_valid_##SUFFIX(width, j, stride, padding, out_w, &lo, &hi);                \
    for (b = 0; b < batch; b++) {                                                          \
        const T* plane = x + (b * channels + c) * height * width;                          \
        for (oh = 0; oh < out_h; oh++) {                                                   \
            const ptrdiff_t h = oh * stride - padding + i;                                 \
            T* out = row + (b * out_h + oh) * out_w;                                       \
            if (h < 0 || h >= height) {                                                    \
                for (ow = 0; ow < out_w; ow++) out[ow] = 0;                                \
                continue;                                                                  \
            }                                                                              \
            const T* src = plane + h * width;                                              \
            const ptrdiff_t shift = j - padding;                                           \
            for (ow = 0; ow < lo; ow++) out[ow] = 0;                                       \
            if (stride == 1)                                                               \
                for (ow = lo; ow < hi; ow++) out[ow] = src[ow + shift];                    \
            else                                                                           \
                for (ow = lo; ow < hi; ow++) out[ow] = src[ow * stride + shift];           \
            for (ow = hi; ow < out_w; ow++) out[ow] = 0;                                   \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* The adjoint for one plane (b, c) of x[batch, channels, height, width]: every tap of   \
   the column matrix cols[channels*kh*kw, ldc] that reads a pixel of it adds into it,   \
   taps in (i, j) order; taps in the padding are dropped. */                             \
static void srigl_train_col2im_plane_##SUFFIX(const T* cols, ptrdiff_t ldc, ptrdiff_t b,  \
        ptrdiff_t c, ptrdiff_t height, ptrdiff_t width, int kh, int kw, int stride,        \
        int padding, ptrdiff_t out_h, ptrdiff_t out_w, T* plane)                           \
{                                                                                          \
    ptrdiff_t lo, hi, oh, ow;                                                              \
    int i, j;                                                                              \
    for (i = 0; i < kh; i++)                                                               \
        for (j = 0; j < kw; j++) {                                                         \
            const T* row = cols + ((c * kh + i) * kw + j) * ldc;                           \
            srigl_train_valid_##SUFFIX(width, j, stride, padding, out_w, &lo, &hi);        \
            for (oh = 0; oh < out_h; oh++) {                                               \
                const ptrdiff_t h = oh * stride - padding + i;                             \
                if (h < 0 || h >= height) continue;                                        \
                const T* src = row + (b * out_h + oh) * out_w;                             \
                T* dst = plane + h * width;                                                \
                for (ow = lo; ow < hi; ow++) dst[ow * stride + j - padding] += src[ow];    \
            }                                                                              \
        }                                                                                  \
}

SRIGL_TRAIN_TRANSPOSE(f32, float, SRIGL_TRAIN_TILE8_F32)
SRIGL_TRAIN_TRANSPOSE(f64, double, SRIGL_TRAIN_TILE8_F64)

/* Direct convolution, straight from the images (no column matrix). A stored weight's
   tap t of neuron n is (c, ki, kj) = (t / (kh*kw), (t / kw) % kh, t % kw); each
   touches one input plane through a shifted, strided window. Per (image, neuron):
     forward      out[oh, ow] = bias + sum_j v[j] x[c_j, oh*s - p + ki_j, ow*s - p + kj_j]
     input grad.  dimage[c_j, h, w] += v[j] dy[oh, ow] at the same positions
     weight grad. dv[j] += sum_{oh, ow} dy[oh, ow] x[c_j, h, w]
   image[channels, height, width], out / dy[out_h, out_w]. */
#define SRIGL_TRAIN_DIRECT(SUFFIX, T, I, VALID)                                            \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_forward_##SUFFIX(const T* v, const I* idx, ptrdiff_t k,      \
        const T* image, ptrdiff_t height, ptrdiff_t width, int kh, int kw, int stride,     \
        int padding, T bias, T* out, ptrdiff_t out_h, ptrdiff_t out_w)                     \
{                                                                                          \
    ptrdiff_t j, oh, ow, lo, hi;                                                           \
    for (ow = 0; ow < out_h * out_w; ow++) out[ow] = 0;                                    \
    for (j = 0; j < k; j++) {                                                              \
        const ptrdiff_t t = idx[j], c = t / (kh * kw);                                     \
        const int ki = (int)((t / kw) % kh), kj = (int)(t % kw);                           \
        const T w = v[j];                                                                  \
        VALID(width, kj, stride, padding, out_w, &lo, &hi);                                \
        for (oh = 0; oh < out_h; oh++) {                                                   \
            const ptrdiff_t h = oh * stride - padding + ki;                                \
            if (h < 0 || h >= height) continue;                                            \
            const T* src = image + (c * height + h) * width + kj - padding;                \
            T* dst = out + oh * out_w;                                                     \
            if (stride == 1)                                                               \
                for (ow = lo; ow < hi; ow++) dst[ow] += w * src[ow];                       \
            else                                                                           \
                for (ow = lo; ow < hi; ow++) dst[ow] += w * src[ow * stride];              \
        }                                                                                  \
    }                                                                                      \
    for (ow = 0; ow < out_h * out_w; ow++) out[ow] += bias;                                \
}                                                                                          \
                                                                                           \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_scatter_##SUFFIX(const T* v, const I* idx, ptrdiff_t k,      \
        const T* dy, ptrdiff_t height, ptrdiff_t width, int kh, int kw, int stride,        \
        int padding, ptrdiff_t out_h, ptrdiff_t out_w, T* dimage)                          \
{                                                                                          \
    ptrdiff_t j, oh, ow, lo, hi;                                                           \
    for (j = 0; j < k; j++) {                                                              \
        const ptrdiff_t t = idx[j], c = t / (kh * kw);                                     \
        const int ki = (int)((t / kw) % kh), kj = (int)(t % kw);                           \
        const T w = v[j];                                                                  \
        VALID(width, kj, stride, padding, out_w, &lo, &hi);                                \
        for (oh = 0; oh < out_h; oh++) {                                                   \
            const ptrdiff_t h = oh * stride - padding + ki;                                \
            if (h < 0 || h >= height) continue;                                            \
            T* dst = dimage + (c * height + h) * width + kj - padding;                     \
            const T* src = dy + oh * out_w;                                                \
            if (stride == 1)                                                               \
                for (ow = lo; ow < hi; ow++) dst[ow] += w * src[ow];                       \
            else                                                                           \
                for (ow = lo; ow < hi; ow++) dst[ow * stride] += w * src[ow];              \
        }                                                                                  \
    }                                                                                      \
}                                                                                          \
                                                                                           \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_wgrad_##SUFFIX(const I* idx, ptrdiff_t k, const T* image,     \
        ptrdiff_t height, ptrdiff_t width, int kh, int kw, int stride, int padding,        \
        const T* dy, ptrdiff_t out_h, ptrdiff_t out_w, T* dv)                              \
{                                                                                          \
    typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = 32 / sizeof(T) };                                                           \
    ptrdiff_t j, oh, ow, lo, hi, t;                                                        \
    for (j = 0; j < k; j++) {                                                              \
        const ptrdiff_t tap = idx[j], c = tap / (kh * kw);                                 \
        const int ki = (int)((tap / kw) % kh), kj = (int)(tap % kw);                       \
        V a0 = {0}, a1 = {0};                                                              \
        T total = 0;                                                                       \
        VALID(width, kj, stride, padding, out_w, &lo, &hi);                                \
        for (oh = 0; oh < out_h; oh++) {                                                   \
            const ptrdiff_t h = oh * stride - padding + ki;                                \
            if (h < 0 || h >= height) continue;                                            \
            const T* src = image + (c * height + h) * width + kj - padding;                \
            const T* g = dy + oh * out_w;                                                  \
            ow = lo;                                                                       \
            if (stride == 1) {                                                             \
                for (; ow + 2 * W <= hi; ow += 2 * W) {                                    \
                    a0 += *(const V*)(g + ow) * *(const V*)(src + ow);                     \
                    a1 += *(const V*)(g + ow + W) * *(const V*)(src + ow + W);             \
                }                                                                          \
                for (; ow + W <= hi; ow += W)                                              \
                    a0 += *(const V*)(g + ow) * *(const V*)(src + ow);                     \
                for (; ow < hi; ow++) total += g[ow] * src[ow];                            \
            } else {                                                                       \
                for (; ow < hi; ow++) total += g[ow] * src[ow * stride];                   \
            }                                                                              \
        }                                                                                  \
        a0 += a1;                                                                          \
        for (t = 0; t < W; t++) total += a0[t];                                            \
        dv[j] += total;                                                                    \
    }                                                                                      \
}

SRIGL_TRAIN_DIRECT(f32_i16, float, int16_t, srigl_train_valid_f32)
SRIGL_TRAIN_DIRECT(f32_i32, float, int32_t, srigl_train_valid_f32)
SRIGL_TRAIN_DIRECT(f64_i16, double, int16_t, srigl_train_valid_f64)
SRIGL_TRAIN_DIRECT(f64_i32, double, int32_t, srigl_train_valid_f64)

/* Direct forward at stride 1 from a zero-padded copy of one image, xpad[channels, hp, wp]
   (the padding border zero, and every row followed by at least 4*W zeros), so a tap's
   window needs no bounds: out[oh, ow] = bias + sum_j v[j] xpad[off[j] + oh*wp + ow], with
   off[j] = (c_j*hp + ki_j)*wp + kj_j. Four vector accumulators (4*W output columns of
   a row) stay in registers across the k taps. */
#define SRIGL_TRAIN_PADDED(SUFFIX, T)                                                      \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_forward_padded_##SUFFIX(const T* v, const int64_t* off,      \
        ptrdiff_t k, const T* xpad, ptrdiff_t wp, T bias, T* out, ptrdiff_t out_h,         \
        ptrdiff_t out_w)                                                                   \
{                                                                                          \
    typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = 32 / sizeof(T) };                                                           \
    ptrdiff_t oh, c0, j, t;                                                                \
    for (oh = 0; oh < out_h; oh++)                                                         \
        for (c0 = 0; c0 < out_w; c0 += 4 * W) {                                            \
            V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                      \
            const T* base = xpad + oh * wp + c0;                                           \
            for (j = 0; j < k; j++) {                                                      \
                const V* src = (const V*)(base + off[j]);                                  \
                const T w = v[j];                                                          \
                a0 += w * src[0]; a1 += w * src[1]; a2 += w * src[2]; a3 += w * src[3];   \
            }                                                                              \
            T lanes[4 * W];                                                                \
            V* l = (V*)lanes;                                                              \
            l[0] = a0; l[1] = a1; l[2] = a2; l[3] = a3;                                    \
            const ptrdiff_t n = out_w - c0 < 4 * W ? out_w - c0 : 4 * W;                   \
            for (t = 0; t < n; t++) out[oh * out_w + c0 + t] = lanes[t] + bias;            \
        }                                                                                  \
}                                                                                          \
                                                                                           \
/* xpad[channels, hp, wp] = x's image (channels, height, width) at (padding, padding),   \
   zero elsewhere; xpad must come zeroed. */                                             \
static void srigl_train_pad_image_##SUFFIX(const T* image, ptrdiff_t channels,            \
        ptrdiff_t height, ptrdiff_t width, int padding, T* xpad, ptrdiff_t hp,             \
        ptrdiff_t wp)                                                                      \
{                                                                                          \
    ptrdiff_t c, h, w;                                                                     \
    for (c = 0; c < channels; c++)                                                         \
        for (h = 0; h < height; h++) {                                                     \
            const T* src = image + (c * height + h) * width;                               \
            T* dst = xpad + (c * hp + h + padding) * wp + padding;                         \
            for (w = 0; w < width; w++) dst[w] = src[w];                                   \
        }                                                                                  \
}

/* The backward on padded copies (stride 1): dyp[out_h, ldy] holds a neuron's output
   gradient with zeros from out_w to ldy (a multiple of 4*W), xpad / dxpad as above.
     weight grad. dv[j] += sum_{oh, ow < ldy} dyp[oh, ow] xpad[off[j] + oh*wp + ow]
     input grad.  dxpad[off[j] + oh*wp + ow] += v[j] dyp[oh, ow]
   (the zero lanes add nothing). */
#define SRIGL_TRAIN_PADDED_BACKWARD(SUFFIX, T)                                             \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_wgrad_padded_##SUFFIX(const int64_t* off, ptrdiff_t k,       \
        const T* xpad, ptrdiff_t wp, const T* dyp, ptrdiff_t ldy, ptrdiff_t out_h, T* dv)   \
{                                                                                          \
    typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = 32 / sizeof(T) };                                                           \
    ptrdiff_t j, oh, c0, t;                                                                \
    for (j = 0; j < k; j++) {                                                              \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                          \
        T total = 0;                                                                       \
        for (oh = 0; oh < out_h; oh++) {                                                   \
            const T* src = xpad + off[j] + oh * wp;                                        \
            const T* g = dyp + oh * ldy;                                                   \
            for (c0 = 0; c0 < ldy; c0 += 4 * W) {                                          \
                const V* s4 = (const V*)(src + c0);                                        \
                const V* g4 = (const V*)(g + c0);                                          \
                a0 += g4[0] * s4[0]; a1 += g4[1] * s4[1];                                  \
                a2 += g4[2] * s4[2]; a3 += g4[3] * s4[3];                                  \
            }                                                                              \
        }                                                                                  \
        a0 += a1; a2 += a3; a0 += a2;                                                      \
        for (t = 0; t < W; t++) total += a0[t];                                            \
        dv[j] += total;                                                                    \
    }                                                                                      \
}                                                                                          \
                                                                                           \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_conv_scatter_padded_##SUFFIX(const T* v, const int64_t* off,      \
        ptrdiff_t k, const T* dyp, ptrdiff_t ldy, ptrdiff_t out_h, T* dxpad, ptrdiff_t wp)  \
{                                                                                          \
    typedef T V __attribute__((vector_size(32), aligned(sizeof(T)), may_alias));           \
    enum { W = 32 / sizeof(T) };                                                           \
    ptrdiff_t j, oh, c0;                                                                   \
    for (oh = 0; oh < out_h; oh++)                                                         \
        for (c0 = 0; c0 < ldy; c0 += 4 * W) {                                              \
            const V* g4 = (const V*)(dyp + oh * ldy + c0);                                 \
            const V g0 = g4[0], g1 = g4[1], g2 = g4[2], g3 = g4[3];                        \
            T* base = dxpad + oh * wp + c0;                                                \
            for (j = 0; j < k; j++) {                                                      \
                V* d = (V*)(base + off[j]);                                                \
                const T w = v[j];                                                          \
                d[0] += w * g0; d[1] += w * g1; d[2] += w * g2; d[3] += w * g3;            \
            }                                                                              \
        }                                                                                  \
}                                                                                          \
                                                                                           \
/* dyp[out_h, ldy] = dy[out_h, out_w] with zeros from out_w on. */                        \
static void srigl_train_pad_rows_##SUFFIX(const T* dy, ptrdiff_t out_h, ptrdiff_t out_w,   \
                                          T* dyp, ptrdiff_t ldy)                           \
{                                                                                          \
    ptrdiff_t oh, ow;                                                                      \
    for (oh = 0; oh < out_h; oh++) {                                                       \
        for (ow = 0; ow < out_w; ow++) dyp[oh * ldy + ow] = dy[oh * out_w + ow];           \
        for (; ow < ldy; ow++) dyp[oh * ldy + ow] = 0;                                     \
    }                                                                                      \
}                                                                                          \
                                                                                           \
/* The interior of dxpad (at (padding, padding)) into dimage[channels, height, width]. */ \
static void srigl_train_crop_image_##SUFFIX(const T* dxpad, ptrdiff_t channels,           \
        ptrdiff_t height, ptrdiff_t width, int padding, ptrdiff_t hp, ptrdiff_t wp,        \
        T* dimage)                                                                         \
{                                                                                          \
    ptrdiff_t c, h, w;                                                                     \
    for (c = 0; c < channels; c++)                                                         \
        for (h = 0; h < height; h++) {                                                     \
            const T* src = dxpad + (c * hp + h + padding) * wp + padding;                  \
            T* dst = dimage + (c * height + h) * width;                                    \
            for (w = 0; w < width; w++) dst[w] = src[w];                                   \
        }                                                                                  \
}

SRIGL_TRAIN_PADDED(f32, float)
SRIGL_TRAIN_PADDED(f64, double)
SRIGL_TRAIN_PADDED_BACKWARD(f32, float)
SRIGL_TRAIN_PADDED_BACKWARD(f64, double)

/* Elementwise layers, one pass over [0, n) of C-contiguous arrays (dst may be src).
   NumPy's maximum(x, 0) and multiply-by-mask, and a dropout mask drawn with
   Generator.random, took 7.9 ms of a 34 ms cnn step at 99% (benchmarks/
   profile_train_step.py, docs/training.md); these passes, 2.9 ms.

   relu:       dst = src if src > 0 or NaN else +0: the bits of np.maximum(src, 0).
   relu_grad:  dst = g * (y > 0), the bits of NumPy's g * (y > 0) (NaN * 0 stays NaN).
   dropout:    dst = src * (u >= threshold ? scale : 0) with u the high 32 bits of
               SplitMix64's finaliser of key + (first + i + 1) * 0x9E3779B97F4A7C15, for
               element first + i of the whole array: a counter-based stream, so any chunk
               of any thread draws the same bits, and the backward pass recomputes the
               mask from the key instead of storing it. */
static inline uint64_t srigl_train_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

#define SRIGL_TRAIN_ELEMENTWISE(SUFFIX, T)                                                 \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_relu_##SUFFIX(const T* src, T* dst, ptrdiff_t n)                   \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) dst[i] = (src[i] > 0) | (src[i] != src[i]) ? src[i] : (T)0;     \
}                                                                                          \
                                                                                           \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_relu_grad_##SUFFIX(const T* g, const T* y, T* dst, ptrdiff_t n)    \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) dst[i] = g[i] * (T)(y[i] > 0);                                 \
}                                                                                          \
                                                                                           \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_dropout_##SUFFIX(const T* src, T* dst, ptrdiff_t n, uint64_t first,\
                                         uint64_t key, uint64_t threshold, T scale)        \
{                                                                                          \
    ptrdiff_t i;                                                                           \
    for (i = 0; i < n; i++) {                                                              \
        const uint64_t u = srigl_train_mix64(                                              \
            key + (first + (uint64_t)i + 1) * 0x9E3779B97F4A7C15ULL) >> 32;                \
        dst[i] = src[i] * (u >= threshold ? scale : (T)0);                                 \
    }                                                                                      \
}

SRIGL_TRAIN_ELEMENTWISE(f32, float)
SRIGL_TRAIN_ELEMENTWISE(f64, double)

/* The 2 x 2 max pool of one plane x[height, width] (both even): y and win[height/2,
   width/2] as _maxpool_plane's (the first maximum in row-major cell order wins; a NaN
   wins and is kept). The scalar loop does not vectorise (6.6 ms forward on the cnn's
   maps, docs/training.md); here each step deinterleaves a window row's two cells from two
   vector loads of each input row (a 32-byte step, then a 16-byte one: the cnn's 12-wide
   output rows are one of each) and picks with masks (0.66 ms). V, I, U: float, integer and
   uint8 vectors of LANES lanes (SRIGL_EVEN/ODD<LANES>: the deinterleaving shuffles). */
#define SRIGL_TRAIN_MAXPOOL2_STEP(T, V, I, U, LANES)                                      \
    for (; j + (ptrdiff_t)(sizeof(V) / sizeof(T)) <= out_w;                                \
         j += (ptrdiff_t)(sizeof(V) / sizeof(T))) {                                        \
        V p0, p1, q0, q1, a, b, c, d;                                                      \
        I best, w = {0}, take;                                                             \
        U wb;                                                                              \
        memcpy(&p0, r0 + 2 * j, sizeof(V));                                                \
        memcpy(&p1, r0 + 2 * j + sizeof(V) / sizeof(T), sizeof(V));                        \
        memcpy(&q0, r1 + 2 * j, sizeof(V));                                                \
        memcpy(&q1, r1 + 2 * j + sizeof(V) / sizeof(T), sizeof(V));                        \
        a = __builtin_shufflevector(p0, p1, SRIGL_EVEN##LANES);                                  \
        b = __builtin_shufflevector(p0, p1, SRIGL_ODD##LANES);                                   \
        c = __builtin_shufflevector(q0, q1, SRIGL_EVEN##LANES);                                  \
        d = __builtin_shufflevector(q0, q1, SRIGL_ODD##LANES);                                   \
        best = (I)a;                                                                       \
        take = ((V)best == (V)best) & ~(b <= (V)best);                                     \
        best = ((I)b & take) | (best & ~take); w = (w & ~take) | (take & 1);               \
        take = ((V)best == (V)best) & ~(c <= (V)best);                                     \
        best = ((I)c & take) | (best & ~take); w = (w & ~take) | (take & 2);               \
        take = ((V)best == (V)best) & ~(d <= (V)best);                                     \
        best = ((I)d & take) | (best & ~take); w = (w & ~take) | (take & 3);               \
        memcpy(yr + j, &best, sizeof(V));                                                  \
        wb = __builtin_convertvector(w, U);                                                \
        memcpy(wr + j, &wb, sizeof(U));                                                    \
    }

#define SRIGL_TRAIN_MAXPOOL2(SUFFIX, T, V32, I32, U32, LANES32, V16, I16, U16, LANES16)     \
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_maxpool2_##SUFFIX(const T* x, T* y, unsigned char* win,            \
                                          ptrdiff_t height, ptrdiff_t width)               \
{                                                                                          \
    const ptrdiff_t out_h = height / 2, out_w = width / 2;                                 \
    ptrdiff_t i, j;                                                                        \
    for (i = 0; i < out_h; i++) {                                                          \
        const T* r0 = x + 2 * i * width;                                                   \
        const T* r1 = r0 + width;                                                          \
        T* yr = y + i * out_w;                                                             \
        unsigned char* wr = win + i * out_w;                                               \
        j = 0;                                                                             \
        SRIGL_TRAIN_MAXPOOL2_STEP(T, V32, I32, U32, LANES32)                                \
        SRIGL_TRAIN_MAXPOOL2_STEP(T, V16, I16, U16, LANES16)                                \
        for (; j < out_w; j++) {                                                           \
            T best = r0[2 * j], v;                                                         \
            unsigned char w = 0;                                                           \
            int take;                                                                      \
            v = r0[2 * j + 1];                                                             \
            take = (best == best) & !(v <= best);                                          \
            best = take ? v : best; w = take ? 1 : w;                                      \
            v = r1[2 * j];                                                                 \
            take = (best == best) & !(v <= best);                                          \
            best = take ? v : best; w = take ? 2 : w;                                      \
            v = r1[2 * j + 1];                                                             \
            take = (best == best) & !(v <= best);                                          \
            best = take ? v : best; w = take ? 3 : w;                                      \
            yr[j] = best;                                                                  \
            wr[j] = w;                                                                     \
        }                                                                                  \
    }                                                                                      \
}

/* Its backward: dx[height, width] = g at each window's winner, 0 at its other cells. A
   step takes LANES outputs, selects each cell's gradient by mask and interleaves the
   even and odd cells back into the two input rows (SRIGL_LOW/HIGH<LANES>). */
#define SRIGL_TRAIN_MAXPOOL2_GRAD_STEP(T, V, I, U, LANES)                                  \
    for (; j + (ptrdiff_t)(sizeof(V) / sizeof(T)) <= out_w;                                \
         j += (ptrdiff_t)(sizeof(V) / sizeof(T))) {                                        \
        V gv, out;                                                                         \
        I w, cell;                                                                         \
        U wb;                                                                              \
        memcpy(&gv, gr + j, sizeof(V));                                                    \
        memcpy(&wb, wr + j, sizeof(U));                                                    \
        w = __builtin_convertvector(wb, I);                                                \
        cell = (I)gv & (w == 0);                                                           \
        const V a = (V)cell;                                                               \
        cell = (I)gv & (w == 1);                                                           \
        const V b = (V)cell;                                                               \
        cell = (I)gv & (w == 2);                                                           \
        const V c = (V)cell;                                                               \
        cell = (I)gv & (w == 3);                                                           \
        const V d = (V)cell;                                                               \
        out = __builtin_shufflevector(a, b, SRIGL_LOW##LANES);                             \
        memcpy(d0 + 2 * j, &out, sizeof(V));                                               \
        out = __builtin_shufflevector(a, b, SRIGL_HIGH##LANES);                            \
        memcpy(d0 + 2 * j + sizeof(V) / sizeof(T), &out, sizeof(V));                       \
        out = __builtin_shufflevector(c, d, SRIGL_LOW##LANES);                             \
        memcpy(d1 + 2 * j, &out, sizeof(V));                                               \
        out = __builtin_shufflevector(c, d, SRIGL_HIGH##LANES);                            \
        memcpy(d1 + 2 * j + sizeof(V) / sizeof(T), &out, sizeof(V));                       \
    }

#define SRIGL_TRAIN_MAXPOOL2_GRAD(SUFFIX, T, V32, I32, U32, LANES32, V16, I16, U16, LANES16)\
SRIGL_TRAIN_CLONES                                                                         \
static void srigl_train_maxpool2_grad_##SUFFIX(const T* g, const unsigned char* win,       \
                                               T* dx, ptrdiff_t height, ptrdiff_t width)   \
{                                                                                          \
    const ptrdiff_t out_h = height / 2, out_w = width / 2;                                 \
    ptrdiff_t i, j;                                                                        \
    for (i = 0; i < out_h; i++) {                                                          \
        const T* gr = g + i * out_w;                                                       \
        const unsigned char* wr = win + i * out_w;                                         \
        T* d0 = dx + 2 * i * width;                                                        \
        T* d1 = d0 + width;                                                                \
        j = 0;                                                                             \
        SRIGL_TRAIN_MAXPOOL2_GRAD_STEP(T, V32, I32, U32, LANES32)                          \
        SRIGL_TRAIN_MAXPOOL2_GRAD_STEP(T, V16, I16, U16, LANES16)                          \
        for (; j < out_w; j++) {                                                           \
            const T gv = gr[j];                                                            \
            const unsigned char w = wr[j];                                                 \
            d0[2 * j] = w == 0 ? gv : (T)0;                                                \
            d0[2 * j + 1] = w == 1 ? gv : (T)0;                                            \
            d1[2 * j] = w == 2 ? gv : (T)0;                                                \
            d1[2 * j + 1] = w == 3 ? gv : (T)0;                                            \
        }                                                                                  \
    }                                                                                      \
}

typedef float srigl_f32x8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t srigl_i32x8 __attribute__((vector_size(32), aligned(4)));
typedef uint8_t srigl_u8x8 __attribute__((vector_size(8), aligned(1)));
typedef float srigl_f32x4 __attribute__((vector_size(16), aligned(4)));
typedef int32_t srigl_i32x4 __attribute__((vector_size(16), aligned(4)));
typedef uint8_t srigl_u8x4 __attribute__((vector_size(4), aligned(1)));
typedef double srigl_f64x4 __attribute__((vector_size(32), aligned(8)));
typedef int64_t srigl_i64x4 __attribute__((vector_size(32), aligned(8)));
typedef double srigl_f64x2 __attribute__((vector_size(16), aligned(8)));
typedef int64_t srigl_i64x2 __attribute__((vector_size(16), aligned(8)));
typedef uint8_t srigl_u8x2 __attribute__((vector_size(2), aligned(1)));
#define SRIGL_EVEN8 0, 2, 4, 6, 8, 10, 12, 14
#define SRIGL_ODD8 1, 3, 5, 7, 9, 11, 13, 15
#define SRIGL_EVEN4 0, 2, 4, 6
#define SRIGL_ODD4 1, 3, 5, 7
#define SRIGL_EVEN2 0, 2
#define SRIGL_ODD2 1, 3
#define SRIGL_LOW8 0, 8, 1, 9, 2, 10, 3, 11
#define SRIGL_HIGH8 4, 12, 5, 13, 6, 14, 7, 15
#define SRIGL_LOW4 0, 4, 1, 5
#define SRIGL_HIGH4 2, 6, 3, 7
#define SRIGL_LOW2 0, 2
#define SRIGL_HIGH2 1, 3

SRIGL_TRAIN_MAXPOOL2(f32, float, srigl_f32x8, srigl_i32x8, srigl_u8x8, 8,
                     srigl_f32x4, srigl_i32x4, srigl_u8x4, 4)
SRIGL_TRAIN_MAXPOOL2(f64, double, srigl_f64x4, srigl_i64x4, srigl_u8x4, 4,
                     srigl_f64x2, srigl_i64x2, srigl_u8x2, 2)
SRIGL_TRAIN_MAXPOOL2_GRAD(f32, float, srigl_f32x8, srigl_i32x8, srigl_u8x8, 8,
                          srigl_f32x4, srigl_i32x4, srigl_u8x4, 4)
SRIGL_TRAIN_MAXPOOL2_GRAD(f64, double, srigl_f64x4, srigl_i64x4, srigl_u8x4, 4,
                          srigl_f64x2, srigl_i64x2, srigl_u8x2, 2)
