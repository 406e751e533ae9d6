/* One instruction-set variant of srigl_np's condensed kernels. _kernels.h includes
   this file once per variant, with, around each inclusion:

     SRIGL_ISA   the variant's suffix (avx512, avx2, generic): every function defined
                 here is named <name>_<SRIGL_ISA>
     SRIGL_VW    floats per vector register of the variant (16, 8 or 4)

   and, for the x86 variants, a target pragma that lets the compiler use that
   instruction set in these functions only: the rest of the module stays portable
   and _kernels.h picks a variant at import from what the CPU reports. No header
   guard, on purpose.

   The arithmetic is the same in every variant (each output is the same sum of the
   same products, accumulated in a fixed order per variant); only the vector width,
   and so the grouping of the partial sums, differs. The tests compare every variant
   with the NumPy definition on the same case list.

   GCC/Clang vector extensions pin accumulators in registers whatever the
   auto-vectoriser decides (left alone, GCC kept them on the stack); other
   compilers get the scalar code at the end of _kernels.h instead of this file. */

#define SRIGL_CAT_(a, b) a##_##b
#define SRIGL_CAT(a, b) SRIGL_CAT_(a, b)
#define SRIGL_NAME(name) SRIGL_CAT(name, SRIGL_ISA)

typedef float SRIGL_NAME(srigl_vec) __attribute__((vector_size(4 * SRIGL_VW)));
#if SRIGL_VW == 16
/* The 8-wide tile's vector: one 256-bit register. */
typedef float SRIGL_NAME(srigl_vec8) __attribute__((vector_size(32)));
#endif


/* ---------------------------------------------------------------------------
   Batch-1 gather-dot

   float srigl_gather_dot_{i16,i32}_<isa>(v, idx, x, k)

   sum_j v[j] * x[idx[j]] for one output row (batch 1).

   Input arguments:
     const float   v[k]      - the row's kept weights (values[r, :])
     const INDEX_T idx[k]    - their input columns (indices[r, :]), each in [0, n_in)
     const float   x[n_in]   - the input vector
     Py_ssize_t    k         - non-zeros in the row (fan-in)

   Returns:
     float                   - the dot product (no bias)

   VW gathered x values are assembled into one vector and multiplied by VW values
   loaded at once, so a non-zero costs one scalar load (its x) plus an index load
   instead of three loads: on Zen 3, whose three load ports bound the scalar loop at
   one non-zero per cycle, this ran 1.15-1.35x faster (AVX2's gather instruction was
   slower than either). Two vector accumulators break the add dependency chain.
   --------------------------------------------------------------------------- */

#if SRIGL_VW == 16
#define SRIGL_GATHER(x, p) (SRIGL_NAME(srigl_vec)){                                   \
    x[p[0]], x[p[1]], x[p[2]], x[p[3]], x[p[4]], x[p[5]], x[p[6]], x[p[7]],           \
    x[p[8]], x[p[9]], x[p[10]], x[p[11]], x[p[12]], x[p[13]], x[p[14]], x[p[15]]}
#elif SRIGL_VW == 8
#define SRIGL_GATHER(x, p) (SRIGL_NAME(srigl_vec)){                                   \
    x[p[0]], x[p[1]], x[p[2]], x[p[3]], x[p[4]], x[p[5]], x[p[6]], x[p[7]]}
#else
#define SRIGL_GATHER(x, p) (SRIGL_NAME(srigl_vec)){x[p[0]], x[p[1]], x[p[2]], x[p[3]]}
#endif

#define SRIGL_GATHER_DOT(NAME, INDEX_T)                                               \
static float NAME(const float *v, const INDEX_T *idx, const float *x, Py_ssize_t k) { \
    SRIGL_NAME(srigl_vec) a0 = {0}, a1 = {0}, w;                                      \
    Py_ssize_t j = 0;                                                                 \
    float sum = 0.0f;                                                                 \
    int e;                                                                            \
    for (; j + 2 * SRIGL_VW <= k; j += 2 * SRIGL_VW) {                                \
        memcpy(&w, v + j, sizeof w);                                                  \
        a0 += w * SRIGL_GATHER(x, (idx + j));                                         \
        memcpy(&w, v + j + SRIGL_VW, sizeof w);                                       \
        a1 += w * SRIGL_GATHER(x, (idx + j + SRIGL_VW));                              \
    }                                                                                 \
    if (j + SRIGL_VW <= k) {                                                          \
        memcpy(&w, v + j, sizeof w);                                                  \
        a0 += w * SRIGL_GATHER(x, (idx + j));                                         \
        j += SRIGL_VW;                                                                \
    }                                                                                 \
    a0 += a1;                                                                         \
    for (e = 0; e < SRIGL_VW; e++) sum += a0[e];                                      \
    for (; j < k; j++) sum += v[j] * x[idx[j]];                                       \
    return sum;                                                                       \
}
/* The tile transpose: AVX's 8x8 blocks on the x86 paths (defined in _kernels.h after
   the avx2 variant), the scalar loop on the generic one. */
#if SRIGL_VW == 4
#define SRIGL_TRANSPOSE srigl_transpose_scalar
#else
#define SRIGL_TRANSPOSE srigl_transpose_avx2
#endif

#if SRIGL_VW == 16
/* The AVX-512 path reuses the AVX2 gather-dot (_kernels.h includes the avx2 variant
   first). On Zen 5 (batch 1, 90% sparse, 1 thread, timed by thread CPU time) 16-lane
   versions ran 1.1-1.5x slower than it: the 16-lane assembly above, which GCC compiles to
   vgatherdps under AVX-512 (0.130 vs 0.098 ms at 3072x768, 0.58 vs 0.53 ms at
   4096x4096), an explicit _mm512_i32gather_ps loop (0.144 vs 0.094 ms, 0.91 vs 0.67 ms)
   and a scalar loop with 8 accumulators (0.105 vs 0.084 ms, 0.63 vs 0.44 ms). */
#define SRIGL_DOT16 srigl_gather_dot_i16_avx2
#define SRIGL_DOT32 srigl_gather_dot_i32_avx2
#else
SRIGL_GATHER_DOT(SRIGL_NAME(srigl_gather_dot_i16), int16_t)
SRIGL_GATHER_DOT(SRIGL_NAME(srigl_gather_dot_i32), int32_t)
#define SRIGL_DOT16 SRIGL_NAME(srigl_gather_dot_i16)
#define SRIGL_DOT32 SRIGL_NAME(srigl_gather_dot_i32)
#endif


/* ---------------------------------------------------------------------------
   Batch-1 interleaved rows (the avx2 path's batch-1 kernel; the avx512 path carries
   the avx2 one for the tests and benchmarks)

   void srigl_interleaved_group_{i16,i32}_<isa>(iv, ii, k, x, bias, y, n_rows)

   y[l] = bias[l] + sum_j iv[j, l] * x[ii[j, l]] for the lanes l < n_rows of one group of
   8 consecutive output rows, from the group's part of the interleaved layout
   (CondensedWeights._interleaved_layout in _kernels.pyx):

   Input arguments:
     const float   iv[k * 8]     - step j, lane l: the j-th kept weight of the group's
                                   row l (values[8g + l, j]), 0 in lanes past n_rows
     const INDEX_T ii[k * 8]     - its input column (indices[8g + l, j]), each in
                                   [0, n_in); 0 in lanes past n_rows
     Py_ssize_t    k             - the fan-in, the same for every row (constant fan-in:
                                   no padding steps)
     const float   x[n_in]
     const float   bias[n_rows] or NULL  - the group's first bias
     int           n_rows        - rows of the group in use, 1..8
   Output arguments:
     float         y[n_rows]     - the group's outputs

   Why: one step is one contiguous load of 8 weights and one of 8 indices, for 8 rows at
   once, and x is read by 8 scalar loads (no vgatherdps: neither this kernel nor the
   gather-dot issues a hardware gather; see srigl_step_x_*). The gather-dot does the
   same per row, but pays per row a horizontal sum and a scalar tail of k % 8
   non-zeros, and its rows' weights are k floats apart; here the 8 lanes are the 8 rows'
   sums, so the sums go out with no reduction, each lane adding its own row's non-zeros
   in the row's order. Constant fan-in gives every row of a group the same k, so no
   step is padded (only the lanes past n_active in the last group). The kernels alone
   (tools/batch1_microbench.c: AVX2 code on an Intel Xeon with AVX-512, GCC 12, one
   thread, random 90%-sparse rows; docs/bench/batch1_avx2.md), time over the
   gather-dot's at 768->3072 and 3072->768 (4096x4096 in brackets), over two runs: this
   layout with the gather-dot's code 0.85-0.99 (0.57-0.77), 64-bit index loads 0.76-0.89
   (0.53-0.73), broadcast-and-blend 0.64-0.76 (0.50-0.67). Tried and
   dropped: a lookup in 8-float tables (vpermps, 3-bit lane indices packed 8 to a word,
   2.65 lanes per non-zero of padding at 10% density) 1.02-1.5x slower than the gather-dot
   (its 12 bytes per non-zero against 6 left L2 at these sizes), 2.5-3.3x with a loop per
   column block (an unpredictable trip count per block); 8 scalar accumulators 0.97-1.15
   (0.66-0.98). Two accumulators (even and odd steps) break the add chain; padding
   lanes (0 * x[0]) are computed and never stored.
   --------------------------------------------------------------------------- */
#if SRIGL_VW == 8
/* x at the 8 indices of one step. The indices are read 64 bits at a time (4 int16 or 2
   int32 indices a load) and split by shifts, and each x is broadcast from memory
   (vbroadcastss, a load alone) and blended into its lane (vblendps, any of three vector
   ports) rather than inserted (vinsertps, vinsertf128: the one shuffle port, 7 per step,
   which bounded the kernel). Each step cut the kernel's time by 1.1-1.2x (C
   microbenchmark, Intel Xeon, 768->3072 and 3072->768, 1 thread). The indices lie in
   [0, n_in), so their unsigned view is their value. */
#define SRIGL_BLEND_X(a, x, i, lane)                                                  \
    a = _mm256_blend_ps(a, _mm256_broadcast_ss((x) + (i)), 1 << (lane))
static inline __m256 SRIGL_NAME(srigl_step_x_i16)(const float *x, const int16_t *p) {
    uint64_t q0, q1;
    __m256 a;
    memcpy(&q0, p, 8);
    memcpy(&q1, p + 4, 8);
    a = _mm256_broadcast_ss(x + (uint16_t)q0);
    SRIGL_BLEND_X(a, x, (uint16_t)(q0 >> 16), 1);
    SRIGL_BLEND_X(a, x, (uint16_t)(q0 >> 32), 2);
    SRIGL_BLEND_X(a, x, (uint16_t)(q0 >> 48), 3);
    SRIGL_BLEND_X(a, x, (uint16_t)q1, 4);
    SRIGL_BLEND_X(a, x, (uint16_t)(q1 >> 16), 5);
    SRIGL_BLEND_X(a, x, (uint16_t)(q1 >> 32), 6);
    SRIGL_BLEND_X(a, x, (uint16_t)(q1 >> 48), 7);
    return a;
}
static inline __m256 SRIGL_NAME(srigl_step_x_i32)(const float *x, const int32_t *p) {
    uint64_t q0, q1, q2, q3;
    __m256 a;
    memcpy(&q0, p, 8);
    memcpy(&q1, p + 2, 8);
    memcpy(&q2, p + 4, 8);
    memcpy(&q3, p + 6, 8);
    a = _mm256_broadcast_ss(x + (uint32_t)q0);
    SRIGL_BLEND_X(a, x, (uint32_t)(q0 >> 32), 1);
    SRIGL_BLEND_X(a, x, (uint32_t)q1, 2);
    SRIGL_BLEND_X(a, x, (uint32_t)(q1 >> 32), 3);
    SRIGL_BLEND_X(a, x, (uint32_t)q2, 4);
    SRIGL_BLEND_X(a, x, (uint32_t)(q2 >> 32), 5);
    SRIGL_BLEND_X(a, x, (uint32_t)q3, 6);
    SRIGL_BLEND_X(a, x, (uint32_t)(q3 >> 32), 7);
    return a;
}
#undef SRIGL_BLEND_X
#define SRIGL_INTERLEAVED(NAME, INDEX_T, STEP_X)                                      \
static void NAME(const float *iv, const INDEX_T *ii, Py_ssize_t k, const float *x,    \
                 const float *bias, float *y, int n_rows) {                           \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                         \
    float sums[8];                                                                    \
    Py_ssize_t j = 0;                                                                 \
    int l;                                                                            \
    for (; j + 2 <= k; j += 2) {                                                      \
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(iv + 8 * j), STEP_X(x, ii + 8 * j), a0);  \
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(iv + 8 * j + 8), STEP_X(x, ii + 8 * j + 8), \
                             a1);                                                     \
    }                                                                                 \
    if (j < k)                                                                        \
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(iv + 8 * j), STEP_X(x, ii + 8 * j), a0);  \
    _mm256_storeu_ps(sums, _mm256_add_ps(a0, a1));                                    \
    for (l = 0; l < n_rows; l++) y[l] = sums[l] + (bias ? bias[l] : 0.0f);            \
}
SRIGL_INTERLEAVED(SRIGL_NAME(srigl_interleaved_group_i16), int16_t,
                  SRIGL_NAME(srigl_step_x_i16))
SRIGL_INTERLEAVED(SRIGL_NAME(srigl_interleaved_group_i32), int32_t,
                  SRIGL_NAME(srigl_step_x_i32))
#undef SRIGL_INTERLEAVED
#define SRIGL_INTERLEAVED16 SRIGL_NAME(srigl_interleaved_group_i16)
#define SRIGL_INTERLEAVED32 SRIGL_NAME(srigl_interleaved_group_i32)
#elif SRIGL_VW == 16
#define SRIGL_INTERLEAVED16 srigl_interleaved_group_i16_avx2
#define SRIGL_INTERLEAVED32 srigl_interleaved_group_i32_avx2
#else
#define SRIGL_INTERLEAVED16 NULL   /* the generic path keeps the gather-dot */
#define SRIGL_INTERLEAVED32 NULL
#endif
#undef SRIGL_GATHER_DOT
#undef SRIGL_GATHER


/* ---------------------------------------------------------------------------
   Batched block kernel

   Batched condensed forward over one (batch tile, block of rows) work item.

   xt is the tile's slice of the transposed input, xt[n_in][W] (W batch values per
   input column), so an index reads W contiguous floats. Each output row keeps its
   W sums in NV = W / VL registers of VL floats while it streams its non-zeros (a
   kernel that read-modify-writes y per non-zero runs at about half the speed). RG
   rows are interleaved so that RG * NV independent FMA chains hide the FMA latency.

   The rows' non-zeros are visited one column block at a time (packed block-major,
   see CondensedWeights), all SRIGL_ROWS rows of the work item per block, so the part
   of xt in use is column_block * W floats (48 KiB for the 192-column blocks of a
   10%-dense layer at W = 64) instead of the whole tile: random reads into it stay in
   L1/L2 even for wide layers, at the cost of parking each row's W sums in `out`
   between blocks. `out` also stages the sums so that the stores to
   y[batch][n_active] fill whole cache lines instead of striding through the output
   once per row.
   --------------------------------------------------------------------------- */

/* Rows [r, r + RG) in column block `block` (their segments start at s[r + g]): bias or
   the sums parked in `out`, plus the segments; the rows share their shortest segment's
   length n in the interleaved loop, then finish alone. VEC is the accumulator type, of
   VL floats; NV * VL = W. A non-zero's W inputs start at xt + indices[j] * STEP: STEP
   is W for the batched kernel's tiles, 1 for the convolution's offsets (srigl_conv_sums
   below).

   A statement block inside SRIGL_BLOCK, which supplies (from its arguments and locals):
     const float       values[nnz], indices[nnz]  - packed non-zeros
     const Py_ssize_t  s[n_active + 1]            - starts of column block `block`
     const float       bias[n_active] or NULL
     const float       xt[n_in, W]                - the tile of the transposed input
     Py_ssize_t        block, r, r0
     float             out[SRIGL_ROWS, W]         - in/out: rows' running sums,
                                                    out[r - r0 + g, :] for row r + g */
#define SRIGL_ROW_GROUP(VEC, VL, NV, RG, STEP)                                        \
    {                                                                                 \
        VEC acc[RG][NV], xv;                                                          \
        Py_ssize_t g, j, t, n = s[r + 1] - s[r];                                      \
        for (g = 1; g < RG; g++)                                                      \
            if (s[r + g + 1] - s[r + g] < n) n = s[r + g + 1] - s[r + g];             \
        if (block == 0) {                                                             \
            for (g = 0; g < RG; g++) {                                                \
                const float b0 = bias ? bias[r + g] : 0.0f;                           \
                for (t = 0; t < NV; t++) acc[g][t] = b0 + (VEC){0};                   \
            }                                                                         \
        } else {                                                                      \
            memcpy(acc, out + (r - r0) * (VL * NV), sizeof acc);                      \
        }                                                                             \
        for (j = 0; j < n; j++)                                                       \
            for (g = 0; g < RG; g++) {                                                \
                const float w = values[s[r + g] + j];                                 \
                const float *src = xt + (Py_ssize_t)indices[s[r + g] + j] * (STEP);    \
                for (t = 0; t < NV; t++) {                                            \
                    memcpy(&xv, src + VL * t, sizeof xv);                             \
                    acc[g][t] += w * xv;                                              \
                }                                                                     \
            }                                                                         \
        for (g = 0; g < RG; g++)                                                      \
            for (j = s[r + g] + n; j < s[r + g + 1]; j++) {                           \
                const float w = values[j];                                            \
                const float *src = xt + (Py_ssize_t)indices[j] * (STEP);               \
                for (t = 0; t < NV; t++) {                                            \
                    memcpy(&xv, src + VL * t, sizeof xv);                             \
                    acc[g][t] += w * xv;                                              \
                }                                                                     \
            }                                                                         \
        memcpy(out + (r - r0) * (VL * NV), acc, sizeof acc);                          \
    }

/* void srigl_block{W}_{i16,i32}_<isa>(values, indices, starts, n_blocks, n_active,
                                       bias, xt, r0, r1, y, ldy, width)

   y[t, r] = bias[r] + sum over r's non-zeros j of values[j] * xt[indices[j], t]
   for rows r in [r0, r1) of one batch tile of W values, t in [0, width).

   Input arguments:
     const float      values[nnz]                    - non-zeros packed block-major, then
                                                       row, then order in the row
                                                       (CondensedWeights.packed_values)
     const INDEX_T    indices[nnz]                   - their input columns, in [0, n_in)
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
#define SRIGL_BLOCK(NAME, VEC, VL, NV, RG, INDEX_T)                                   \
static void NAME(const float *values, const INDEX_T *indices, const Py_ssize_t *starts, \
                 Py_ssize_t n_blocks, Py_ssize_t n_active, const float *bias,         \
                 const float *xt, Py_ssize_t r0, Py_ssize_t r1, float *y,             \
                 Py_ssize_t ldy, Py_ssize_t width) {                                  \
    float out[SRIGL_ROWS * VL * NV];                                                  \
    Py_ssize_t block, r, t, i;                                                        \
    for (block = 0; block < n_blocks; block++) {                                      \
        const Py_ssize_t *s = starts + block * n_active;                              \
        for (r = r0; r + RG <= r1; r += RG) SRIGL_ROW_GROUP(VEC, VL, NV, RG, VL * NV) \
        for (; r < r1; r++) SRIGL_ROW_GROUP(VEC, VL, NV, 1, VL * NV)                  \
    }                                                                                 \
    for (t = 0; t < width; t++)                                                       \
        for (i = 0; i < r1 - r0; i++) y[t * ldy + r0 + i] = out[i * (VL * NV) + t];   \
}

/* void srigl_conv_sums{W}_<isa>(values, offsets, starts, n_blocks, n_active, bias, src,
                                 r0, r1, out)

   The convolution's block: the same sums, over W consecutive output positions whose
   inputs lie at a fixed offset from each other (SRIGL_CONV_ROWS in _kernels.h), left
   in out[r1 - r0, W] (row r - r0: channel r's W sums, bias included) for the caller to
   store.

   Input arguments:
     const float      values[nnz], starts[...]  - as srigl_block{W}
     const int32_t    offsets[nnz]              - per non-zero, where its W inputs start,
                                                  from src (the tap's offset)
     const float      src[...]                  - the tile's first position
   Output arguments:
     float            out[r1 - r0, W] */
#define SRIGL_CONV_SUMS(NAME, VEC, VL, NV, RG)                                        \
static void NAME(const float *values, const int32_t *indices, const Py_ssize_t *starts, \
                 Py_ssize_t n_blocks, Py_ssize_t n_active, const float *bias,         \
                 const float *xt, Py_ssize_t r0, Py_ssize_t r1, float *out) {         \
    Py_ssize_t block, r;                                                              \
    for (block = 0; block < n_blocks; block++) {                                      \
        const Py_ssize_t *s = starts + block * n_active;                              \
        for (r = r0; r + RG <= r1; r += RG) SRIGL_ROW_GROUP(VEC, VL, NV, RG, 1)       \
        for (; r < r1; r++) SRIGL_ROW_GROUP(VEC, VL, NV, 1, 1)                        \
    }                                                                                 \
}

/* Tile widths 64, 32, 16 and 8: RG rows of NV vectors of VL floats, NV * VL = W, with
   RG * NV >= 8 independent accumulators. */
#if SRIGL_VW == 16
#define SRIGL_W64(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 16, 4, 4, T)
#define SRIGL_W32(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 16, 2, 4, T)
#define SRIGL_W16(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 16, 1, 8, T)
#define SRIGL_W8(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec8), 8, 1, 8, T)
#define SRIGL_C64(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 16, 4, 4)
#define SRIGL_C32(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 16, 2, 4)
#define SRIGL_C16(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 16, 1, 8)
#define SRIGL_C8(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec8), 8, 1, 8)
#elif SRIGL_VW == 8
#define SRIGL_W64(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 8, 8, 1, T)
#define SRIGL_W32(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 8, 4, 2, T)
#define SRIGL_W16(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 8, 2, 4, T)
#define SRIGL_W8(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 8, 1, 8, T)
#define SRIGL_C64(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 8, 8, 1)
#define SRIGL_C32(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 8, 4, 2)
#define SRIGL_C16(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 8, 2, 4)
#define SRIGL_C8(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 8, 1, 8)
#else
#define SRIGL_W64(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 4, 16, 1, T)
#define SRIGL_W32(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 4, 8, 1, T)
#define SRIGL_W16(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 4, 4, 2, T)
#define SRIGL_W8(NAME, T) SRIGL_BLOCK(NAME, SRIGL_NAME(srigl_vec), 4, 2, 4, T)
#define SRIGL_C64(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 4, 16, 1)
#define SRIGL_C32(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 4, 8, 1)
#define SRIGL_C16(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 4, 4, 2)
#define SRIGL_C8(NAME) SRIGL_CONV_SUMS(NAME, SRIGL_NAME(srigl_vec), 4, 2, 4)
#endif

SRIGL_W64(SRIGL_NAME(srigl_block64_i16), int16_t)
SRIGL_W32(SRIGL_NAME(srigl_block32_i16), int16_t)
SRIGL_W16(SRIGL_NAME(srigl_block16_i16), int16_t)
SRIGL_W8(SRIGL_NAME(srigl_block8_i16), int16_t)
SRIGL_W64(SRIGL_NAME(srigl_block64_i32), int32_t)
SRIGL_W32(SRIGL_NAME(srigl_block32_i32), int32_t)
SRIGL_W16(SRIGL_NAME(srigl_block16_i32), int32_t)
SRIGL_W8(SRIGL_NAME(srigl_block8_i32), int32_t)
SRIGL_C64(SRIGL_NAME(srigl_conv_sums64))
SRIGL_C32(SRIGL_NAME(srigl_conv_sums32))
SRIGL_C16(SRIGL_NAME(srigl_conv_sums16))
SRIGL_C8(SRIGL_NAME(srigl_conv_sums8))
SRIGL_CONV_ROWS(SRIGL_NAME(srigl_conv_rows), SRIGL_NAME(srigl_conv_sums8),
                SRIGL_NAME(srigl_conv_sums16), SRIGL_NAME(srigl_conv_sums32),
                SRIGL_NAME(srigl_conv_sums64))

/* The depthwise plane (SRIGL_DEPTHWISE, defined in _kernels.h), compiled for this
   path's instruction set. */
SRIGL_DEPTHWISE(SRIGL_NAME(srigl_depthwise))
/* GELU on this variant's vectors (see _kernels.h): the clamp by comparison masks, as
   GCC turned the scalar ternaries into branches on AVX2 (2.0 ms against 0.26 ms
   vectorised for a (197, 3072) activation, one thread); the tail in a zero-padded
   vector. LayerNorm's plain loops vectorise as they are. */
typedef int32_t SRIGL_NAME(srigl_ivec) __attribute__((vector_size(4 * SRIGL_VW)));
static inline SRIGL_NAME(srigl_vec) SRIGL_NAME(srigl_gelu_vec)(SRIGL_NAME(srigl_vec) v) {
    typedef SRIGL_NAME(srigl_vec) vec;
    typedef SRIGL_NAME(srigl_ivec) ivec;
    const vec hi = (vec){0} + SRIGL_ERF_CLAMP, lo = (vec){0} - SRIGL_ERF_CLAMP;
    vec z = v * 0.70710678118654752f, t, p, q, y;
    ivec m = z < hi;
    z = (vec)((m & (ivec)z) | (~m & (ivec)hi));
    m = z > lo;
    z = (vec)((m & (ivec)z) | (~m & (ivec)lo));
    SRIGL_GELU_TAIL(v, z, t, p, q, y)
    return y;
}
/* Whole vectors by fixed-size copies (a copy of variable size is a libc call), the
   tail once, zero-padded. */
static void SRIGL_NAME(srigl_gelu)(const float *x, Py_ssize_t n, float *out) {
    typedef SRIGL_NAME(srigl_vec) vec;
    Py_ssize_t i = 0;
    for (; i + SRIGL_VW <= n; i += SRIGL_VW) {
        vec v;
        memcpy(&v, x + i, sizeof v);
        v = SRIGL_NAME(srigl_gelu_vec)(v);
        memcpy(out + i, &v, sizeof v);
    }
    if (i < n) {
        vec v = {0};
        memcpy(&v, x + i, (size_t)(n - i) * sizeof(float));
        v = SRIGL_NAME(srigl_gelu_vec)(v);
        memcpy(out + i, &v, (size_t)(n - i) * sizeof(float));
    }
}
SRIGL_LAYER_NORM(SRIGL_NAME(srigl_layer_norm))

/* The softmax of one row (see _kernels.h): exp(x - max) / sum, exp by
   SRIGL_EXP_NONPOSITIVE on this variant's vectors; the row's tail in a zero-padded
   vector whose lanes past the row are left out of the sum. */
static inline SRIGL_NAME(srigl_vec) SRIGL_NAME(srigl_exp_vec)(SRIGL_NAME(srigl_vec) y) {
    typedef SRIGL_NAME(srigl_vec) vec;
    typedef SRIGL_NAME(srigl_ivec) ivec;
    const vec lo = (vec){0} + SRIGL_EXP_LOW;
    vec big, nf, r, p, e;
    ivec m, bits;
    SRIGL_EXP_NONPOSITIVE(y, lo, m, big, nf, r, p, bits, e)
    return e;
}
static void SRIGL_NAME(srigl_softmax)(const float *x, Py_ssize_t n, float *out) {
    typedef SRIGL_NAME(srigl_vec) vec;
    typedef SRIGL_NAME(srigl_ivec) ivec;
    vec top = (vec){0} - INFINITY, acc = {0}, v, e;
    ivec m;
    float row_max = -INFINITY, scale;
    double sum = 0.0;
    Py_ssize_t i = 0, l, whole = n / SRIGL_VW * SRIGL_VW;
    for (; i < whole; i += SRIGL_VW) {
        memcpy(&v, x + i, sizeof v);
        m = v > top;
        top = (vec)((m & (ivec)v) | (~m & (ivec)top));
    }
    for (l = 0; l < SRIGL_VW; l++) row_max = top[l] > row_max ? top[l] : row_max;
    for (; i < n; i++) row_max = x[i] > row_max ? x[i] : row_max;
    for (i = 0; i < whole; i += SRIGL_VW) {
        memcpy(&v, x + i, sizeof v);
        e = SRIGL_NAME(srigl_exp_vec)(v - row_max);
        memcpy(out + i, &e, sizeof e);
        acc += e;
    }
    if (i < n) {
        vec kept = {0};
        v = (vec){0};
        memcpy(&v, x + i, (size_t)(n - i) * sizeof(float));
        e = SRIGL_NAME(srigl_exp_vec)(v - row_max);
        memcpy(out + i, &e, (size_t)(n - i) * sizeof(float));
        memcpy(&kept, &e, (size_t)(n - i) * sizeof(float));
        acc += kept;
    }
    for (l = 0; l < SRIGL_VW; l++) sum += acc[l];
    scale = (float)(1.0 / sum);
    for (i = 0; i < n; i++) out[i] *= scale;
}

#if SRIGL_VW == 16
/* ---------------------------------------------------------------------------
   Batch-1 table lookup (this path only)

   void srigl_lookup_group_avx512(lv, li, steps, n_blocks, x, n_in, rows, bias, y, n_rows)

   y[rows[l]] = bias[rows[l]] + sum over row rows[l]'s non-zeros of value * x[column],
   for the lanes l < n_rows of one row group, from the group's part of the lookup
   layout (CondensedWeights._lookup_layout in _kernels.pyx):

   Input arguments:
     const float   lv[n_steps * 16]    - the group's steps, 16 lanes each: lane l holds
                                         a value of row rows[l], or 0 (padding)
     const uint8_t li[n_steps * 16]    - its column within the step's column block, in
                                         [0, SRIGL_LOOKUP_COLUMNS), or
                                         SRIGL_LOOKUP_COLUMNS (padding)
     const int32_t steps[n_blocks]     - steps per column block; block b covers input
                                         columns [b * 63, b * 63 + 63) and its steps are
                                         the next steps[b] of lv/li
     Py_ssize_t    n_blocks            - ceil(n_in / 63)
     const float   x[n_in]             - the input
     const int32_t rows[n_rows]        - the group's output rows (srigl_lookup_order)
     const float   bias[n_active] or NULL
     int           n_rows              - lanes in use, 1..16

   Output arguments:
     float         y[n_active]         - only y[rows[l]] is written

   Why: the gather-dot assembles x one scalar load at a time (about 1.3 non-zeros per
   cycle on Zen 5 for every variant tried, in C microbenchmarks of the kernels alone). Here a block's 63 inputs sit in four zmm
   registers and one vpermt2ps pair picks 16 of them at once, one per row, so a step
   costs two loads, two permutes, a blend and an FMA for 16 lanes. Lane 63 of the
   table is a zero (the fourth register's last lane is cleared), which is where the
   padding lanes point: 0 * 0 adds nothing even when x holds an inf or a NaN
   elsewhere. A row's non-zeros in a block rarely match its 15 neighbours' counts, so
   the group pays the largest count (the padding, 1.4-1.6x at 10% density with the
   grouping of srigl_lookup_order); _kernels.pyx uses this kernel only where the
   padding is at most LOOKUP_MAX_PADDING. Four accumulators keep the FMA chains apart;
   the order of the sums is fixed by the layout, not by the threads. Blocks wholly
   inside x load their table unmasked, and a block's last 1-3 steps go to fixed
   accumulators (3-8% faster than masked loads everywhere and rotating accumulators,
   C microbenchmark of the kernel alone, 768x3072 and 3072x768, 1 and 2 threads).
   The output goes out by one scatter per group, the bias in by one gather.
   Below AVX-512 there is no two-register permute: an AVX2 version (8 rows a step,
   16- or 32-float tables from vpermps and blends) was measured on Zen 5 against the
   gather-dot in a C microbenchmark: within 0.9-1.15x of it at 768 and 3072 inputs,
   1.6-2.8x slower at 4096, so the other paths keep the gather-dot.
   --------------------------------------------------------------------------- */

static inline __mmask16 srigl_lanes(Py_ssize_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

#define SRIGL_LOOKUP_STEP(acc, o)                                                     \
    {                                                                                 \
        const __m512i i = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(li + (o)))); \
        const __m512 lo = _mm512_permutex2var_ps(t0, i, t1);                          \
        const __m512 hi = _mm512_permutex2var_ps(t2, i, t3);                          \
        const __m512 xv = _mm512_mask_blend_ps(_mm512_test_epi32_mask(i, bit5), lo, hi); \
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(lv + (o)), xv, acc);                    \
    }

static void srigl_lookup_group_avx512(const float *lv, const uint8_t *li,
                                      const int32_t *steps, Py_ssize_t n_blocks,
                                      const float *x, Py_ssize_t n_in, const int32_t *rows,
                                      const float *bias, float *y, int n_rows) {
    const __m512i bit5 = _mm512_set1_epi32(32);
    const __mmask16 lanes = srigl_lanes(n_rows);
    const __m512i out = _mm512_maskz_loadu_epi32(lanes, rows);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, t0, t1, t2, t3, sum;
    Py_ssize_t b, s, n;
    for (b = 0; b < n_blocks; b++) {
        const Py_ssize_t c0 = b * SRIGL_LOOKUP_COLUMNS, left = n_in - c0;
        n = steps[b];
        if (n == 0) continue;
        if (left >= 64) {
            t0 = _mm512_loadu_ps(x + c0);
            t1 = _mm512_loadu_ps(x + c0 + 16);
            t2 = _mm512_loadu_ps(x + c0 + 32);
            t3 = _mm512_maskz_loadu_ps(0x7FFF, x + c0 + 48);
        } else {   /* masked loads: lanes past x's end are neither read nor kept */
            t0 = _mm512_maskz_loadu_ps(srigl_lanes(left), x + c0);
            t1 = _mm512_maskz_loadu_ps(srigl_lanes(left - 16), x + c0 + 16);
            t2 = _mm512_maskz_loadu_ps(srigl_lanes(left - 32), x + c0 + 32);
            t3 = _mm512_maskz_loadu_ps(srigl_lanes(left - 48) & 0x7FFF, x + c0 + 48);
        }
        for (s = 0; s + 4 <= n; s += 4) {
            SRIGL_LOOKUP_STEP(a0, 0)
            SRIGL_LOOKUP_STEP(a1, 16)
            SRIGL_LOOKUP_STEP(a2, 32)
            SRIGL_LOOKUP_STEP(a3, 48)
            lv += 64;
            li += 64;
        }
        switch (n - s) {
        case 3: SRIGL_LOOKUP_STEP(a2, 32) /* fall through */
        case 2: SRIGL_LOOKUP_STEP(a1, 16) /* fall through */
        case 1: SRIGL_LOOKUP_STEP(a0, 0)
        }
        lv += 16 * (n - s);
        li += 16 * (n - s);
    }
    sum = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    if (bias)
        sum = _mm512_add_ps(sum, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes, out,
                                                          bias, 4));
    _mm512_mask_i32scatter_ps(y, lanes, out, sum, 4);
}
#undef SRIGL_LOOKUP_STEP
#define SRIGL_LOOKUP srigl_lookup_group_avx512
#else
#define SRIGL_LOOKUP NULL   /* no two-register permute below AVX-512 */
#endif

/* The variant's function table (srigl_kernels, declared in _kernels.h). */
static const srigl_kernels SRIGL_NAME(srigl_table) = {
    SRIGL_ISA_NAME,
    SRIGL_DOT16, SRIGL_DOT32,
    {SRIGL_NAME(srigl_block8_i16), SRIGL_NAME(srigl_block16_i16),
     SRIGL_NAME(srigl_block32_i16), SRIGL_NAME(srigl_block64_i16)},
    {SRIGL_NAME(srigl_block8_i32), SRIGL_NAME(srigl_block16_i32),
     SRIGL_NAME(srigl_block32_i32), SRIGL_NAME(srigl_block64_i32)},
    SRIGL_NAME(srigl_conv_rows),
    SRIGL_NAME(srigl_depthwise),
    SRIGL_TRANSPOSE,
    SRIGL_LOOKUP,
    SRIGL_INTERLEAVED16, SRIGL_INTERLEAVED32,
    SRIGL_NAME(srigl_gelu), SRIGL_NAME(srigl_layer_norm), SRIGL_NAME(srigl_softmax),
};

#undef SRIGL_TRANSPOSE
#undef SRIGL_LOOKUP
#undef SRIGL_INTERLEAVED16
#undef SRIGL_INTERLEAVED32
#undef SRIGL_DOT16
#undef SRIGL_DOT32
#undef SRIGL_W64
#undef SRIGL_W32
#undef SRIGL_W16
#undef SRIGL_W8
#undef SRIGL_C64
#undef SRIGL_C32
#undef SRIGL_C16
#undef SRIGL_C8
#undef SRIGL_CONV_SUMS
#undef SRIGL_BLOCK
#undef SRIGL_ROW_GROUP
#undef SRIGL_NAME
#undef SRIGL_ISA_NAME
#undef SRIGL_ISA
#undef SRIGL_VW
#undef SRIGL_CAT
#undef SRIGL_CAT_
