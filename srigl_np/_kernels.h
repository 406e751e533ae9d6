/* The C half of srigl_np's compiled kernels, included by srigl_np/_kernels.pyx
   (``cdef extern from "_kernels.h"``), which declares what it calls from here.

   Contents:
     * the OpenMP shim: SRIGL_NP_OPENMP, and omp_get_max_threads() in a build
       without OpenMP;
     * srigl_gather_dot_{i16,i32}: the batch-1 gather-dot of one output row;
     * srigl_block{1,2,4,8}_{i16,i32} and their dispatch srigl_block_{i16,i32}:
       the batched condensed forward of one (batch tile, block of rows) work item.

   Everything is static (one translation unit, the Cython module, includes it),
   so the compiler sees these functions exactly as it would inline C code.
   Nothing here validates: the Cython ``def`` functions check dtypes, shapes and
   index ranges before calling in (see the module docstring of _kernels.pyx).

   Each kernel's header lists its arguments with shapes in brackets, as scipy's
   sparsetools headers do. Py_ssize_t comes from Python.h. */

#ifndef SRIGL_NP_KERNELS_H
#define SRIGL_NP_KERNELS_H

#include <Python.h>
#include <stdint.h>
#include <string.h>


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
#endif


/* ---------------------------------------------------------------------------
   Batch-1 gather-dot

   float srigl_gather_dot_{i16,i32}(v, idx, x, k)

   sum_j v[j] * x[idx[j]] for one output row (batch 1).

   Input arguments:
     const float   v[k]      - the row's kept weights (values[r, :])
     const INDEX_T idx[k]    - their input columns (indices[r, :]), each in [0, n_in);
                               INDEX_T is int16_t or int32_t
     const float   x[n_in]   - the input vector
     Py_ssize_t    k         - non-zeros in the row (fan-in)

   Returns:
     float                   - the dot product (no bias)

   Eight gathered x values are assembled into one vector and multiplied by
   eight values loaded at once, so a non-zero costs one scalar load (its x)
   plus an index load instead of three loads: on Zen 3, whose three load
   ports bound the scalar loop at one non-zero per cycle, this ran 1.15-1.35x
   faster on the ViT and 4096x4096 rows (AVX2's gather instruction was slower
   than either). Two vector accumulators break the add dependency chain.
   Non-GNU compilers get a scalar loop with four accumulators.
   --------------------------------------------------------------------------- */

#if defined(__GNUC__) || defined(__clang__)
typedef float srigl_dot8 __attribute__((vector_size(32)));
#define SRIGL_GATHER8(x, p) (srigl_dot8){x[p[0]], x[p[1]], x[p[2]], x[p[3]], \
                                         x[p[4]], x[p[5]], x[p[6]], x[p[7]]}
#define SRIGL_GATHER_DOT(NAME, INDEX_T)                                           \
static inline float NAME(const float *v, const INDEX_T *idx, const float *x,      \
                         Py_ssize_t k) {                                         \
    srigl_dot8 a0 = {0}, a1 = {0}, w;                                             \
    Py_ssize_t j = 0;                                                             \
    float sum = 0.0f;                                                             \
    int e;                                                                        \
    for (; j + 16 <= k; j += 16) {                                                \
        memcpy(&w, v + j, sizeof w);                                              \
        a0 += w * SRIGL_GATHER8(x, (idx + j));                                    \
        memcpy(&w, v + j + 8, sizeof w);                                          \
        a1 += w * SRIGL_GATHER8(x, (idx + j + 8));                                \
    }                                                                             \
    if (j + 8 <= k) {                                                             \
        memcpy(&w, v + j, sizeof w);                                              \
        a0 += w * SRIGL_GATHER8(x, (idx + j));                                    \
        j += 8;                                                                   \
    }                                                                             \
    a0 += a1;                                                                     \
    for (e = 0; e < 8; e++) sum += a0[e];                                         \
    for (; j < k; j++) sum += v[j] * x[idx[j]];                                   \
    return sum;                                                                   \
}
#else
#define SRIGL_GATHER_DOT(NAME, INDEX_T)                                           \
static inline float NAME(const float *v, const INDEX_T *idx, const float *x,      \
                         Py_ssize_t k) {                                         \
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                         \
    Py_ssize_t j = 0;                                                             \
    for (; j + 4 <= k; j += 4) {                                                  \
        a0 += v[j] * x[idx[j]];         a1 += v[j + 1] * x[idx[j + 1]];           \
        a2 += v[j + 2] * x[idx[j + 2]]; a3 += v[j + 3] * x[idx[j + 3]];           \
    }                                                                             \
    for (; j < k; j++) a0 += v[j] * x[idx[j]];                                    \
    return (a0 + a1) + (a2 + a3);                                                 \
}
#endif
SRIGL_GATHER_DOT(srigl_gather_dot_i16, int16_t)
SRIGL_GATHER_DOT(srigl_gather_dot_i32, int32_t)


/* ---------------------------------------------------------------------------
   Batched block kernel

   Batched condensed forward over one (batch tile, block of rows) work item.

   xt is the tile's slice of the transposed input, xt[n_in][W] with W = 8*NV
   batch values per input column, so an index reads W contiguous floats.
   Each output row keeps its W sums in NV 8-float registers while it streams
   its non-zeros (a kernel that read-modify-writes y per non-zero runs at
   about half the speed). RG rows are interleaved so that RG*NV independent
   FMA chains hide the FMA latency.

   The rows' non-zeros are visited one column block at a time (packed
   block-major, see CondensedWeights), all SRIGL_ROWS rows of the work item
   per block, so the part of xt in use is column_block*W floats (48 KiB for
   the 192-column blocks of a 10%-dense layer at W = 64) instead of the
   whole tile: random reads into it stay in L1/L2 even for wide layers, at
   the cost of parking each row's W sums in `out` between blocks. `out` also
   stages the sums so that the stores to y[batch][n_active] fill whole cache
   lines instead of striding through the output once per row.

   GCC/Clang vector extensions pin the accumulators in registers whatever
   the auto-vectoriser decides (left alone, GCC kept them on the stack and
   vectorised across non-zeros instead); other compilers get plain loops
   with the same arithmetic.
   --------------------------------------------------------------------------- */

/* Rows per work item: r1 - r0 <= SRIGL_ROWS (Cython's ROWS_PER_BLOCK). */
#define SRIGL_ROWS 128
#if defined(__GNUC__) || defined(__clang__)
typedef float srigl_vec8 __attribute__((vector_size(32)));
#define SRIGL_ACC_DECL(NV, RG) srigl_vec8 acc[RG][NV], x8;
#define SRIGL_ACC_INIT(g, t, value) acc[g][t] = (srigl_vec8){value, value, value, value, \
                                                           value, value, value, value};
#define SRIGL_ACC_FMA(g, t, w, src) { memcpy(&x8, (src) + 8 * (t), sizeof x8); \
                                      acc[g][t] += (w) * x8; }
#else
#define SRIGL_ACC_DECL(NV, RG) float acc[RG][NV][8];
#define SRIGL_ACC_INIT(g, t, value) { int e_; for (e_ = 0; e_ < 8; e_++) \
                                          acc[g][t][e_] = (value); }
#define SRIGL_ACC_FMA(g, t, w, src) { int e_; for (e_ = 0; e_ < 8; e_++) \
                                          acc[g][t][e_] += (w) * (src)[8 * (t) + e_]; }
#endif

/* Rows [r, r + RG) in column block `block` (their segments start at s[r + g]):
   bias or the sums parked in `out`, plus the segments; the rows share their
   shortest segment's length n in the interleaved loop, then finish alone.

   A statement block inside SRIGL_BLOCK, which supplies (from its arguments and
   locals):
     const float       values[nnz], indices[nnz]  - packed non-zeros
     const Py_ssize_t  s[n_active + 1]            - starts of column block `block`
     const float       bias[n_active] or NULL
     const float       xt[n_in, 8*NV]             - the tile of the transposed input
     Py_ssize_t        block, r, r0
     float             out[SRIGL_ROWS, 8*NV]      - in/out: rows' running sums,
                                                    out[r - r0 + g, :] for row r + g */
#define SRIGL_ROW_GROUP(NV, RG, INDEX_T)                                          \
    {                                                                             \
        SRIGL_ACC_DECL(NV, RG)                                                    \
        Py_ssize_t g, j, t, n = s[r + 1] - s[r];                                  \
        for (g = 1; g < RG; g++)                                                  \
            if (s[r + g + 1] - s[r + g] < n) n = s[r + g + 1] - s[r + g];         \
        if (block == 0) {                                                         \
            for (g = 0; g < RG; g++)                                              \
                for (t = 0; t < NV; t++)                                          \
                    SRIGL_ACC_INIT(g, t, bias ? bias[r + g] : 0.0f)               \
        } else {                                                                  \
            memcpy(acc, out + (r - r0) * (8 * NV), sizeof acc);                   \
        }                                                                         \
        for (j = 0; j < n; j++)                                                   \
            for (g = 0; g < RG; g++) {                                            \
                const float w = values[s[r + g] + j];                             \
                const float *src = xt + (Py_ssize_t)indices[s[r + g] + j] * (8 * NV); \
                for (t = 0; t < NV; t++) SRIGL_ACC_FMA(g, t, w, src)              \
            }                                                                     \
        for (g = 0; g < RG; g++)                                                  \
            for (j = s[r + g] + n; j < s[r + g + 1]; j++) {                       \
                const float w = values[j];                                        \
                const float *src = xt + (Py_ssize_t)indices[j] * (8 * NV);        \
                for (t = 0; t < NV; t++) SRIGL_ACC_FMA(g, t, w, src)              \
            }                                                                     \
        memcpy(out + (r - r0) * (8 * NV), acc, sizeof acc);                       \
    }

/* void srigl_block{NV}_{i16,i32}(values, indices, starts, n_blocks, n_active, bias,
                                  xt, r0, r1, y, ldy, width)

   y[t, r] = bias[r] + sum over r's non-zeros j of values[j] * xt[indices[j], t]
   for rows r in [r0, r1) of one batch tile of W = 8*NV values, t in [0, width).
   NV is 8, 4, 2 or 1, with RG = 8 / NV rows interleaved.

   Input arguments:
     const float      values[nnz]                    - non-zeros packed block-major, then
                                                       row, then order in the row
                                                       (CondensedWeights.packed_values)
     const INDEX_T    indices[nnz]                   - their input columns, in [0, n_in)
                                                       (packed_indices; int16_t or int32_t)
     const Py_ssize_t starts[n_blocks*n_active + 1]  - row r of column block c holds
                                                       packed[starts[c*n_active + r] :
                                                              starts[c*n_active + r + 1]]
     Py_ssize_t       n_blocks                       - column blocks
     Py_ssize_t       n_active                       - output rows of the layer
     const float      bias[n_active] or NULL         - NULL: no bias
     const float      xt[n_in, W]                    - this tile of the transposed input,
                                                       xt[i, t] = x[tile*W + t, i]
     Py_ssize_t       r0, r1                         - rows [r0, r1), r1 - r0 <= SRIGL_ROWS
     Py_ssize_t       ldy                            - row stride of y (n_active)
     Py_ssize_t       width                          - batch rows present in the tile, <= W

   Output arguments:
     float            y[width, ldy]                  - this tile's output rows; only
                                                       y[t, r0:r1] is written */
#define SRIGL_BLOCK(NAME, NV, RG, INDEX_T)                                        \
static void NAME(const float *values, const INDEX_T *indices, const Py_ssize_t *starts, \
                 Py_ssize_t n_blocks, Py_ssize_t n_active, const float *bias,     \
                 const float *xt, Py_ssize_t r0, Py_ssize_t r1, float *y,         \
                 Py_ssize_t ldy, Py_ssize_t width) {                              \
    float out[SRIGL_ROWS * 8 * NV];                                               \
    Py_ssize_t block, r, t, i;                                                    \
    for (block = 0; block < n_blocks; block++) {                                  \
        const Py_ssize_t *s = starts + block * n_active;                          \
        for (r = r0; r + RG <= r1; r += RG) SRIGL_ROW_GROUP(NV, RG, INDEX_T)      \
        for (; r < r1; r++) SRIGL_ROW_GROUP(NV, 1, INDEX_T)                       \
    }                                                                             \
    for (t = 0; t < width; t++)                                                   \
        for (i = 0; i < r1 - r0; i++) y[t * ldy + r0 + i] = out[i * (8 * NV) + t]; \
}
SRIGL_BLOCK(srigl_block8_i16, 8, 1, int16_t)
SRIGL_BLOCK(srigl_block4_i16, 4, 2, int16_t)
SRIGL_BLOCK(srigl_block2_i16, 2, 4, int16_t)
SRIGL_BLOCK(srigl_block1_i16, 1, 8, int16_t)
SRIGL_BLOCK(srigl_block8_i32, 8, 1, int32_t)
SRIGL_BLOCK(srigl_block4_i32, 4, 2, int32_t)
SRIGL_BLOCK(srigl_block2_i32, 2, 4, int32_t)
SRIGL_BLOCK(srigl_block1_i32, 1, 8, int32_t)

/* void srigl_block_{i16,i32}(n_vectors, values, indices, starts, n_blocks, n_active,
                              bias, xt, r0, r1, y, ldy, width)

   One entry point per index type: the block for a tile of 8 * n_vectors values.

   Input arguments:
     int  n_vectors      - 8, 4, 2 or 1: the tile width W = 8 * n_vectors (any other
                           value runs the 1-vector block)
     the rest            - as srigl_block{NV}_{i16,i32}, with xt[n_in, 8*n_vectors]

   Output arguments:
     float y[width, ldy] - y[t, r0:r1] for t < width */
#define SRIGL_DISPATCH(NAME, INDEX_T, SUFFIX)                                     \
static void NAME(int n_vectors, const float *values, const INDEX_T *indices,      \
                 const Py_ssize_t *starts, Py_ssize_t n_blocks, Py_ssize_t n_active, \
                 const float *bias, const float *xt, Py_ssize_t r0, Py_ssize_t r1, \
                 float *y, Py_ssize_t ldy, Py_ssize_t width) {                    \
    (n_vectors == 8 ? srigl_block8_##SUFFIX : n_vectors == 4 ? srigl_block4_##SUFFIX \
     : n_vectors == 2 ? srigl_block2_##SUFFIX : srigl_block1_##SUFFIX)(           \
        values, indices, starts, n_blocks, n_active, bias, xt, r0, r1, y, ldy, width); \
}
SRIGL_DISPATCH(srigl_block_i16, int16_t, i16)
SRIGL_DISPATCH(srigl_block_i32, int32_t, i32)

#endif /* SRIGL_NP_KERNELS_H */
