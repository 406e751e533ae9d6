/* The batch-1 kernel variants of docs/bench/batch1_avx2.md, alone, in AVX2 code.

     gcc -O2 -mavx2 -mfma -o /tmp/batch1_microbench tools/batch1_microbench.c
     /tmp/batch1_microbench        # every row of each layer
     /tmp/batch1_microbench 2      # the first half of the rows (one thread's share of 2)

   One thread, random constant fan-in rows at 10% density (k = n_in / 10, int16 indices,
   xorshift seed fixed), layers 768->3072, 3072->768, 4096x4096; each variant computes
   y = W x for the rows in turn, 41 repeats, the median printed in ms, and the largest
   difference from the gather-dot's y (a check, not a figure). Variants:

     gather-dot       srigl_gather_dot_*_avx2 of _kernels_isa.h: per row, 8 x assembled
                      from scalar loads into a vector (vmovss/vinsertps), 2 accumulators
     sell8-scalar     rows interleaved by 8 (step j holds the j-th non-zero of each row),
                      8 scalar accumulators
     sell8-vector     the same layout, the gather-dot's vector assembly
     sell8-q64        + the step's 8 indices read as two 64-bit words, split by shifts
     sell8-blend      + each x broadcast from memory and blended into its lane: the
                      kernel kept (srigl_interleaved_group_*_avx2)
     lookup8          8-float tables: per step of 8 lanes a 32-bit word of 3-bit lane
                      indices and the block's offset, x[8b .. 8b+8) permuted (vpermps)
     lookup8-blocks   the same with a loop per 8-column block (its steps counted)

   A scratch tool for re-measuring on another CPU; the kernels the package runs are in
   srigl_np/_kernels_isa.h. */

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v8 __attribute__((vector_size(32)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static uint64_t state = 88172645463325252ull;
static uint64_t rnd(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

#define GATHER(x, p) (v8){x[p[0]], x[p[1]], x[p[2]], x[p[3]], x[p[4]], x[p[5]], x[p[6]], x[p[7]]}

__attribute__((noinline)) static float gather_dot(const float *v, const int16_t *idx,
                                                  const float *x, long k) {
    v8 a0 = {0}, a1 = {0}, w;
    long j = 0;
    float sum = 0;
    for (; j + 16 <= k; j += 16) {
        memcpy(&w, v + j, 32);
        a0 += w * GATHER(x, (idx + j));
        memcpy(&w, v + j + 8, 32);
        a1 += w * GATHER(x, (idx + j + 8));
    }
    if (j + 8 <= k) {
        memcpy(&w, v + j, 32);
        a0 += w * GATHER(x, (idx + j));
        j += 8;
    }
    a0 += a1;
    for (int e = 0; e < 8; e++) sum += a0[e];
    for (; j < k; j++) sum += v[j] * x[idx[j]];
    return sum;
}

__attribute__((noinline)) static void sell8_scalar(const float *v, const int16_t *idx,
                                                   const float *x, long k, float *y) {
    float a[8] = {0};
    for (long j = 0; j < k; j++)
        for (int l = 0; l < 8; l++) a[l] += v[8 * j + l] * x[idx[8 * j + l]];
    memcpy(y, a, sizeof a);
}

/* The interleaved kernels differ only in how a step's x vector is made. */
static inline __m256 x_vector(const float *x, const int16_t *p) {
    v8 a = GATHER(x, p);
    return (__m256)a;
}
static inline __m256 x_q64(const float *x, const int16_t *p) {
    uint64_t a, b;
    memcpy(&a, p, 8);
    memcpy(&b, p + 4, 8);
    v8 r = {x[(uint16_t)a], x[(uint16_t)(a >> 16)], x[(uint16_t)(a >> 32)], x[(uint16_t)(a >> 48)],
            x[(uint16_t)b], x[(uint16_t)(b >> 16)], x[(uint16_t)(b >> 32)], x[(uint16_t)(b >> 48)]};
    return (__m256)r;
}
#define BLEND(a, i, lane) a = _mm256_blend_ps(a, _mm256_broadcast_ss(x + (i)), 1 << (lane))
static inline __m256 x_blend(const float *x, const int16_t *p) {
    uint64_t q0, q1;
    memcpy(&q0, p, 8);
    memcpy(&q1, p + 4, 8);
    __m256 a = _mm256_broadcast_ss(x + (uint16_t)q0);
    BLEND(a, (uint16_t)(q0 >> 16), 1);
    BLEND(a, (uint16_t)(q0 >> 32), 2);
    BLEND(a, (uint16_t)(q0 >> 48), 3);
    BLEND(a, (uint16_t)q1, 4);
    BLEND(a, (uint16_t)(q1 >> 16), 5);
    BLEND(a, (uint16_t)(q1 >> 32), 6);
    BLEND(a, (uint16_t)(q1 >> 48), 7);
    return a;
}
#define INTERLEAVED(NAME, X)                                                          \
    __attribute__((noinline)) static void NAME(const float *v, const int16_t *idx,   \
                                               const float *x, long k, float *y) {    \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                     \
        long j = 0;                                                                   \
        for (; j + 2 <= k; j += 2) {                                                  \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j), X(x, idx + 8 * j), a0);   \
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j + 8), X(x, idx + 8 * j + 8), a1); \
        }                                                                             \
        if (j < k) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * j), X(x, idx + 8 * j), a0); \
        _mm256_storeu_ps(y, _mm256_add_ps(a0, a1));                                   \
    }
INTERLEAVED(sell8_vector, x_vector)
INTERLEAVED(sell8_q64, x_q64)
INTERLEAVED(sell8_blend, x_blend)

/* hdr[s]: bits 0-23 the 8 lanes' columns within the block (3 bits each), bits 24-31 how
   many 8-column blocks past the previous step's block this step's block lies. */
#define LOOKUP_STEP(a, o)                                                             \
    {                                                                                 \
        const uint32_t h = hdr[s + o];                                                \
        xb += 8 * (h >> 24);                                                          \
        const __m256i i = _mm256_srlv_epi32(                                          \
            _mm256_castps_si256(_mm256_broadcast_ss((const float *)(hdr + s + o))), shift); \
        a = _mm256_fmadd_ps(_mm256_loadu_ps(lv + 8 * (s + o)),                        \
                            _mm256_permutevar8x32_ps(_mm256_loadu_ps(xb), i), a);     \
    }
__attribute__((noinline)) static void lookup8(const float *lv, const uint32_t *hdr, long n,
                                              const float *x, float *y) {
    const __m256i shift = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const float *xb = x;
    long s = 0;
    for (; s + 4 <= n; s += 4) {
        { __m256 a = a0; LOOKUP_STEP(a, 0) a0 = a; }
        { __m256 a = a1; LOOKUP_STEP(a, 1) a1 = a; }
        { __m256 a = a2; LOOKUP_STEP(a, 2) a2 = a; }
        { __m256 a = a3; LOOKUP_STEP(a, 3) a3 = a; }
    }
    for (; s < n; s++) { __m256 a = a0; LOOKUP_STEP(a, 0) a0 = a; }
    _mm256_storeu_ps(y, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}
__attribute__((noinline)) static void lookup8_blocks(const float *lv, const uint32_t *li,
                                                     const uint8_t *count, long n_blocks,
                                                     const float *x, float *y) {
    const __m256i shift = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
    __m256 a = _mm256_setzero_ps();
    for (long b = 0; b < n_blocks; b++) {
        const __m256 table = _mm256_loadu_ps(x + 8 * b);
        for (int c = 0; c < count[b]; c++, lv += 8) {
            const __m256i i = _mm256_srlv_epi32(_mm256_set1_epi32((int)*li++), shift);
            a = _mm256_fmadd_ps(_mm256_loadu_ps(lv), _mm256_permutevar8x32_ps(table, i), a);
        }
    }
    _mm256_storeu_ps(y, a);
}

static int by_value(const void *a, const void *b) {
    const double d = *(const double *)a - *(const double *)b;
    return d < 0 ? -1 : d > 0;
}

enum { N_VARIANTS = 7, REPEATS = 41 };
static const char *NAMES[N_VARIANTS] = {"gather-dot", "sell8-scalar", "sell8-vector",
                                        "sell8-q64", "sell8-blend", "lookup8",
                                        "lookup8-blocks"};

static void run_layer(long n_in, long n_out, long divisor) {
    const long k = n_in / 10, n_blocks = (n_in + 7) / 8, n_groups = n_out / 8;
    const long rows = n_out / divisor / 8 * 8, groups = rows / 8;
    float *x = malloc(4 * (n_in + 8)), *v = malloc(4 * n_out * k);
    int16_t *idx = malloc(2 * n_out * k);
    char *used = malloc(n_in);
    for (long i = 0; i < n_in + 8; i++) x[i] = (rnd() % 1000) / 500.0f - 1;
    for (long r = 0; r < n_out; r++) {   /* k distinct sorted columns per row */
        long c = 0;
        memset(used, 0, n_in);
        while (c < k) {
            const long i = rnd() % n_in;
            if (!used[i]) used[i] = 1, c++;
        }
        for (long i = 0, j = 0; i < n_in; i++)
            if (used[i]) idx[r * k + j] = i, v[r * k + j++] = (rnd() % 1000) / 500.0f - 1;
    }
    /* the interleaved layout */
    float *sv = malloc(4 * n_out * k);
    int16_t *si = malloc(2 * n_out * k);
    for (long g = 0; g < n_groups; g++)
        for (long j = 0; j < k; j++)
            for (int l = 0; l < 8; l++) {
                sv[(g * k + j) * 8 + l] = v[(g * 8 + l) * k + j];
                si[(g * k + j) * 8 + l] = idx[(g * 8 + l) * k + j];
            }
    /* the two lookup layouts: per group, block by block, as many steps as the group's
       fullest row has non-zeros in the block */
    long *first = malloc(8 * (n_groups + 1)), steps = 0;
    float *lv = malloc(4 * 8 * n_out * k);
    uint32_t *hdr = malloc(4 * n_out * k), *li = malloc(4 * n_out * k);
    uint8_t *count = malloc(n_groups * n_blocks);
    for (long g = 0; g < n_groups; g++) {
        long at[8] = {0}, last = 0;
        first[g] = steps;
        for (long b = 0; b < n_blocks; b++) {
            int c[8], most = 0;
            for (int l = 0; l < 8; l++) {
                c[l] = 0;
                while (at[l] + c[l] < k && idx[(g * 8 + l) * k + at[l] + c[l]] / 8 == b) c[l]++;
                if (c[l] > most) most = c[l];
            }
            count[g * n_blocks + b] = most;
            for (int st = 0; st < most; st++, steps++) {
                uint32_t h = 0;
                for (int l = 0; l < 8; l++) {
                    float value = 0;
                    int column = 0;
                    if (st < c[l]) {
                        value = v[(g * 8 + l) * k + at[l] + st];
                        column = idx[(g * 8 + l) * k + at[l] + st] % 8;
                    }
                    lv[8 * steps + l] = value;
                    h |= (uint32_t)column << (3 * l);
                }
                li[steps] = h;
                hdr[steps] = h | (uint32_t)(st == 0 ? b - last : 0) << 24;
                if (st == 0) last = b;
            }
            for (int l = 0; l < 8; l++) at[l] += c[l];
        }
    }
    first[n_groups] = steps;
    float *y[N_VARIANTS];
    double t[N_VARIANTS][REPEATS], worst = 0;
    for (int i = 0; i < N_VARIANTS; i++) y[i] = malloc(4 * n_out);
    for (int rep = 0; rep < REPEATS; rep++) {
        double t0 = now();
        for (long r = 0; r < rows; r++) y[0][r] = gather_dot(v + r * k, idx + r * k, x, k);
        t[0][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++) sell8_scalar(sv + g * k * 8, si + g * k * 8, x, k, y[1] + 8 * g);
        t[1][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++) sell8_vector(sv + g * k * 8, si + g * k * 8, x, k, y[2] + 8 * g);
        t[2][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++) sell8_q64(sv + g * k * 8, si + g * k * 8, x, k, y[3] + 8 * g);
        t[3][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++) sell8_blend(sv + g * k * 8, si + g * k * 8, x, k, y[4] + 8 * g);
        t[4][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++)
            lookup8(lv + 8 * first[g], hdr + first[g], first[g + 1] - first[g], x, y[5] + 8 * g);
        t[5][rep] = now() - t0;
        t0 = now();
        for (long g = 0; g < groups; g++)
            lookup8_blocks(lv + 8 * first[g], li + first[g], count + g * n_blocks, n_blocks, x,
                           y[6] + 8 * g);
        t[6][rep] = now() - t0;
    }
    for (int i = 1; i < N_VARIANTS; i++)
        for (long r = 0; r < rows; r++)
            if (fabs(y[i][r] - y[0][r]) > worst) worst = fabs(y[i][r] - y[0][r]);
    printf("%ldx%ld k=%ld, %ld rows, lookup padding %.2f lanes per non-zero\n", n_in, n_out,
           k, rows, 8.0 * steps / ((double)n_groups * 8 * k));
    for (int i = 0; i < N_VARIANTS; i++) {
        qsort(t[i], REPEATS, sizeof(double), by_value);
        printf("  %-15s %.4f ms  (%.2f of gather-dot)\n", NAMES[i], t[i][REPEATS / 2] * 1e3,
               t[i][REPEATS / 2] / t[0][REPEATS / 2]);
    }
    printf("  largest difference from gather-dot %.3g\n", worst);
    for (int i = 0; i < N_VARIANTS; i++) free(y[i]);
    free(x), free(v), free(idx), free(used), free(sv), free(si), free(first), free(lv);
    free(hdr), free(li), free(count);
}

int main(int argc, char **argv) {
    const long divisor = argc > 1 ? atol(argv[1]) : 1;
    if (divisor < 1) {
        fprintf(stderr, "usage: %s [row divisor >= 1]\n", argv[0]);
        return 2;
    }
    run_layer(768, 3072, divisor);
    run_layer(3072, 768, divisor);
    run_layer(4096, 4096, divisor);
    return 0;
}
