/* gemm_avx2.c - the AVX2 + FMA GEMM micro-kernel (a 6x16 tile of C held in
 * twelve ymm accumulators) and the transposing pack (8x8 register
 * transposes). This file alone is compiled with -mavx2 -mfma and is only
 * called after gemm.c has checked that the CPU has both.
 */
#include "gemm.h"

#if defined(TNN_GEMM_X86)
#if !defined(__AVX2__) || !defined(__FMA__)
#error "gemm_avx2.c must be compiled with -mavx2 -mfma (see CMakeLists.txt)"
#endif

#include <immintrin.h>
#include <string.h>

#define MR 6
#define NR 16

/* One k step: two 8-wide rows of B, six broadcasts of A, twelve FMAs.
 * _mm256_fmadd_ps rounds once, like fmaf in the scalar twin. */
#define STEP(ap, bp)                                                                          \
    do {                                                                                      \
        __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps((bp) + 8), av;                    \
        av = _mm256_broadcast_ss((ap) + 0);                                                   \
        c00 = _mm256_fmadd_ps(av, b0, c00);                                                   \
        c01 = _mm256_fmadd_ps(av, b1, c01);                                                   \
        av = _mm256_broadcast_ss((ap) + 1);                                                   \
        c10 = _mm256_fmadd_ps(av, b0, c10);                                                   \
        c11 = _mm256_fmadd_ps(av, b1, c11);                                                   \
        av = _mm256_broadcast_ss((ap) + 2);                                                   \
        c20 = _mm256_fmadd_ps(av, b0, c20);                                                   \
        c21 = _mm256_fmadd_ps(av, b1, c21);                                                   \
        av = _mm256_broadcast_ss((ap) + 3);                                                   \
        c30 = _mm256_fmadd_ps(av, b0, c30);                                                   \
        c31 = _mm256_fmadd_ps(av, b1, c31);                                                   \
        av = _mm256_broadcast_ss((ap) + 4);                                                   \
        c40 = _mm256_fmadd_ps(av, b0, c40);                                                   \
        c41 = _mm256_fmadd_ps(av, b1, c41);                                                   \
        av = _mm256_broadcast_ss((ap) + 5);                                                   \
        c50 = _mm256_fmadd_ps(av, b0, c50);                                                   \
        c51 = _mm256_fmadd_ps(av, b1, c51);                                                   \
    } while (0)

static void ukr_avx2_6x16(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                          int load_c) {
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (load_c) {
        c00 = _mm256_loadu_ps(c + 0 * ldc), c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc), c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = _mm256_setzero_ps();
        c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
    /* Not unrolled by hand: GCC then keeps all twelve accumulators and both
     * B rows in registers (a 4x unroll made it spill). */
    for (int64_t k = 0; k < kc; k++) {
        STEP(a, b);
        a += MR;
        b += NR;
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* The first m (1..5) rows of a 6x16 tile (the packed A panel keeps its
 * stride of 6 per k): the last rows of a block whose row count is not a
 * multiple of 6 (64 = 10 x 6 + 4), written straight into C instead of
 * through the edge buffer with a whole tile's work. m is a constant once
 * inlined, so the unused rows vanish. Same chains as ukr_avx2_6x16, hence
 * the same bits. */
static inline __attribute__((always_inline)) void ukr_rows_m(const int m, int64_t kc,
                                                             const float *a, const float *b,
                                                             float *c, int64_t ldc, int load_c) {
    /* Named accumulators, not an array: GCC kept an array on the stack. */
    __m256 z = _mm256_setzero_ps();
    __m256 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z, c40 = z,
           c41 = z;
#define ROWS_EACH(X) X(0, c00, c01) X(1, c10, c11) X(2, c20, c21) X(3, c30, c31) X(4, c40, c41)
#define ROW_LOAD(i, x0, x1)                                                                    \
    if (i < m && load_c) x0 = _mm256_loadu_ps(c + i * ldc), x1 = _mm256_loadu_ps(c + i * ldc + 8);
#define ROW_FMA(i, x0, x1)                                                                     \
    if (i < m) {                                                                               \
        __m256 av = _mm256_broadcast_ss(a + i);                                                \
        x0 = _mm256_fmadd_ps(av, b0, x0);                                                      \
        x1 = _mm256_fmadd_ps(av, b1, x1);                                                      \
    }
#define ROW_STORE(i, x0, x1)                                                                   \
    if (i < m) _mm256_storeu_ps(c + i * ldc, x0), _mm256_storeu_ps(c + i * ldc + 8, x1);
    ROWS_EACH(ROW_LOAD)
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        ROWS_EACH(ROW_FMA)
        a += MR;
        b += NR;
    }
    ROWS_EACH(ROW_STORE)
#undef ROWS_EACH
#undef ROW_LOAD
#undef ROW_FMA
#undef ROW_STORE
}

static void ukr_avx2_rows(int m, int64_t kc, const float *a, const float *b, float *c,
                          int64_t ldc, int load_c) {
    switch (m) {
    case 1: ukr_rows_m(1, kc, a, b, c, ldc, load_c); break;
    case 2: ukr_rows_m(2, kc, a, b, c, ldc, load_c); break;
    case 3: ukr_rows_m(3, kc, a, b, c, ldc, load_c); break;
    case 4: ukr_rows_m(4, kc, a, b, c, ldc, load_c); break;
    default: ukr_rows_m(5, kc, a, b, c, ldc, load_c); break;
    }
}

/* ------------------------------------------------------------------------ */
/* Transposing pack: 8 source rows x 8 k at a time through an 8x8 transpose  */
/* ------------------------------------------------------------------------ */

/* In: r0..r7 = rows 0..7 at k..k+7. Out: r0..r7 = rows 0..7 at k+0 .. k+7. */
#define TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7)                                            \
    do {                                                                                      \
        __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);              \
        __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);              \
        __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);              \
        __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);              \
        __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));                       \
        __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));                       \
        __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));                       \
        __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));                       \
        __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));                       \
        __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));                       \
        __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));                       \
        __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));                       \
        r0 = _mm256_permute2f128_ps(s0, s4, 0x20);                                            \
        r1 = _mm256_permute2f128_ps(s1, s5, 0x20);                                            \
        r2 = _mm256_permute2f128_ps(s2, s6, 0x20);                                            \
        r3 = _mm256_permute2f128_ps(s3, s7, 0x20);                                            \
        r4 = _mm256_permute2f128_ps(s0, s4, 0x31);                                            \
        r5 = _mm256_permute2f128_ps(s1, s5, 0x31);                                            \
        r6 = _mm256_permute2f128_ps(s2, s6, 0x31);                                            \
        r7 = _mm256_permute2f128_ps(s3, s7, 0x31);                                            \
    } while (0)

/* Stores the first n (1..8) lanes of v at d. */
static inline __attribute__((always_inline)) void store_lanes(float *d, __m256 v, int n) {
    if (n == 8) {
        _mm256_storeu_ps(d, v);
    } else if (n == 6) {
        _mm_storeu_ps(d, _mm256_castps256_ps128(v));
        _mm_storel_pi((__m64 *)(d + 4), _mm256_extractf128_ps(v, 1));
    } else if (n == 4) {
        _mm_storeu_ps(d, _mm256_castps256_ps128(v));
    } else {
        float tmp[8];
        _mm256_storeu_ps(tmp, v);
        for (int i = 0; i < n; i++) d[i] = tmp[i];
    }
}

/* One group of up to 8 source rows (rows read, g lanes stored, both
 * constants after inlining), k = 0 .. k8-1 in steps of 8. */
static inline __attribute__((always_inline)) void pack_group(float *dst, const float *s,
                                                             int64_t lds, int64_t k8, int w,
                                                             int rows, int g) {
    const __m256 z = _mm256_setzero_ps();
    for (int64_t k = 0; k < k8; k += 8) {
        __m256 r0 = rows > 0 ? _mm256_loadu_ps(s + k) : z;
        __m256 r1 = rows > 1 ? _mm256_loadu_ps(s + lds + k) : z;
        __m256 r2 = rows > 2 ? _mm256_loadu_ps(s + 2 * lds + k) : z;
        __m256 r3 = rows > 3 ? _mm256_loadu_ps(s + 3 * lds + k) : z;
        __m256 r4 = rows > 4 ? _mm256_loadu_ps(s + 4 * lds + k) : z;
        __m256 r5 = rows > 5 ? _mm256_loadu_ps(s + 5 * lds + k) : z;
        __m256 r6 = rows > 6 ? _mm256_loadu_ps(s + 6 * lds + k) : z;
        __m256 r7 = rows > 7 ? _mm256_loadu_ps(s + 7 * lds + k) : z;
        TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
        float *d = dst + k * w;
        store_lanes(d, r0, g);
        store_lanes(d + w, r1, g);
        store_lanes(d + 2 * w, r2, g);
        store_lanes(d + 3 * w, r3, g);
        store_lanes(d + 4 * w, r4, g);
        store_lanes(d + 5 * w, r5, g);
        store_lanes(d + 6 * w, r6, g);
        store_lanes(d + 7 * w, r7, g);
    }
}

void tnn__gemm_pack_t_avx2(float *dst, const float *src, int64_t lds, int64_t kc, int w,
                           int valid) {
    int64_t k8 = kc & ~(int64_t)7;
    for (int c0 = 0; c0 < w; c0 += 8) {
        int g = w - c0 < 8 ? w - c0 : 8;                                 /* lanes stored */
        int rows = valid - c0 < 0 ? 0 : valid - c0 < 8 ? valid - c0 : 8; /* rows read */
        const float *s = src + c0 * lds;
        float *d = dst + c0;
        if (rows == 8 && g == 8 && w == 16) pack_group(d, s, lds, k8, 16, 8, 8);
        else if (rows == 8 && g == 8 && w == 32) pack_group(d, s, lds, k8, 32, 8, 8);
        else if (rows == 6 && g == 6 && w == 6) pack_group(d, s, lds, k8, 6, 6, 6);
        else if (rows == 4 && g == 4 && w == 12) pack_group(d, s, lds, k8, 12, 4, 4);
        else if (rows == 8 && g == 8) pack_group(d, s, lds, k8, w, 8, 8);
        else { /* edge panels */
            for (int64_t k = 0; k < k8; k++)
                for (int i = 0; i < g; i++) d[k * w + i] = i < rows ? s[i * lds + k] : 0.0f;
        }
        for (int64_t k = k8; k < kc; k++)
            for (int i = 0; i < g; i++) d[k * w + i] = i < rows ? s[i * lds + k] : 0.0f;
    }
}

/* The same pack for bf16 sources (bf16 products that widen their weights):
 * 8 bf16 of a row widened to 8 f32 (a 16-bit shift, exact), then the same
 * 8x8 transposes. */
static inline __attribute__((always_inline)) __m256 widen8(const uint16_t *s) {
    __m128i h = _mm_loadu_si128((const __m128i *)s);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float widen1(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

void tnn__gemm_bf16_pack_t_widen_avx2(float *dst, const uint16_t *src, int64_t lds, int64_t kc,
                                      int w, int valid) {
    int64_t k8 = kc & ~(int64_t)7;
    for (int c0 = 0; c0 < w; c0 += 8) {
        int g = w - c0 < 8 ? w - c0 : 8;                                 /* lanes stored */
        int rows = valid - c0 < 0 ? 0 : valid - c0 < 8 ? valid - c0 : 8; /* rows read */
        const uint16_t *s = src + c0 * lds;
        float *d = dst + c0;
        int64_t k = 0;
        if (rows == 8 && g == 8) {
            for (; k < k8; k += 8) {
                __m256 r0 = widen8(s + k), r1 = widen8(s + lds + k);
                __m256 r2 = widen8(s + 2 * lds + k), r3 = widen8(s + 3 * lds + k);
                __m256 r4 = widen8(s + 4 * lds + k), r5 = widen8(s + 5 * lds + k);
                __m256 r6 = widen8(s + 6 * lds + k), r7 = widen8(s + 7 * lds + k);
                TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
                float *o = d + k * w;
                _mm256_storeu_ps(o, r0);
                _mm256_storeu_ps(o + w, r1);
                _mm256_storeu_ps(o + 2 * w, r2);
                _mm256_storeu_ps(o + 3 * w, r3);
                _mm256_storeu_ps(o + 4 * w, r4);
                _mm256_storeu_ps(o + 5 * w, r5);
                _mm256_storeu_ps(o + 6 * w, r6);
                _mm256_storeu_ps(o + 7 * w, r7);
            }
        }
        for (; k < kc; k++) /* edge panels and the k tail */
            for (int i = 0; i < g; i++)
                d[k * w + i] = i < rows ? widen1(s[i * lds + k]) : 0.0f;
    }
}

/* ------------------------------------------------------------------------ */
/* Skinny products (M <= TNN_GEMM_SKINNY_M rows of op(A)): op(B) streams once */
/* ------------------------------------------------------------------------ */

#define INL static inline __attribute__((always_inline))

/* B's elements are f32, or bf16 (h) widened exactly as they are loaded: the
 * bf16 products that widen their weights take the same skinny kernels, with
 * the same bits as their packed path (the f32 product on widen(B)). h is a
 * constant in every instance. */
INL const void *bat(const void *b, bool h, int64_t i) {
    return h ? (const void *)((const uint16_t *)b + i) : (const void *)((const float *)b + i);
}
INL __m256 bload8(const void *b, bool h, int64_t i) {
    return h ? widen8((const uint16_t *)b + i) : _mm256_loadu_ps((const float *)b + i);
}
INL float bload1(const void *b, bool h, int64_t i) {
    return h ? widen1(((const uint16_t *)b)[i]) : ((const float *)b)[i];
}

/* Short rows (K at most this) are too short for the hardware prefetcher to
 * ramp up on each: the next 8 rows (one contiguous block of at most 32 KiB)
 * are prefetched while the current ones are used. Longer rows: each of the
 * 8 is prefetched 2 KiB ahead (SmolLM2 with f32 weights decoding, 1536-long
 * rows: 40.7 -> 43.2 tok/s on 2 threads). */
#define SKINNY_PF_K 1024

/* B stored N x K (tb): 8 columns are 8 rows of B; 8 k at a time are loaded
 * and transposed so that lane r carries column j+r, then every row of op(A)
 * adds its broadcast value times them: each C element is one fma chain in
 * ascending k. M is a constant after inlining. */
INL void skinny_tb_8(int M, bool h, int64_t K, const float *ap, const void *b, int64_t ldb,
                     float *C, int64_t ldc, bool pf_next) {
    __m256 acc[TNN_GEMM_SKINNY_M];
    for (int i = 0; i < M; i++) acc[i] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if (pf_next) { /* the next 8 rows, contiguous when ldb == K: 4 (bf16: 2) lines a step */
            const char *p = (const char *)bat(b, h, 8 * ldb + 8 * k);
            for (int l = 0; l < (h ? 2 : 4); l++) _mm_prefetch(p + 64 * l, _MM_HINT_T0);
        } else if (k % 16 == 0) { /* long rows: each of the 8, 2 KiB ahead */
            for (int r = 0; r < 8; r++)
                _mm_prefetch((const char *)bat(b, h, r * ldb + k) + 2048, _MM_HINT_T0);
        }
        __m256 r0 = bload8(b, h, k), r1 = bload8(b, h, ldb + k);
        __m256 r2 = bload8(b, h, 2 * ldb + k), r3 = bload8(b, h, 3 * ldb + k);
        __m256 r4 = bload8(b, h, 4 * ldb + k), r5 = bload8(b, h, 5 * ldb + k);
        __m256 r6 = bload8(b, h, 6 * ldb + k), r7 = bload8(b, h, 7 * ldb + k);
        TRANSPOSE8(r0, r1, r2, r3, r4, r5, r6, r7);
        const __m256 t[8] = {r0, r1, r2, r3, r4, r5, r6, r7};
        const float *a = ap + k * M;
        for (int kk = 0; kk < 8; kk++)
            for (int i = 0; i < M; i++)
                acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + kk * M + i), t[kk], acc[i]);
    }
    for (; k < K; k++) {
        __m256 bv = _mm256_setr_ps(bload1(b, h, k), bload1(b, h, ldb + k), bload1(b, h, 2 * ldb + k),
                                   bload1(b, h, 3 * ldb + k), bload1(b, h, 4 * ldb + k),
                                   bload1(b, h, 5 * ldb + k), bload1(b, h, 6 * ldb + k),
                                   bload1(b, h, 7 * ldb + k));
        for (int i = 0; i < M; i++)
            acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(ap + k * M + i), bv, acc[i]);
    }
    for (int i = 0; i < M; i++) _mm256_storeu_ps(C + i * ldc, acc[i]);
}

/* Eight rows of op(A), B stored N x K, 8 columns: a vector holds one k's 8
 * values of op(A) (the packed layout as it is) and each column has its own
 * accumulator, fed its B element broadcast, so the loop has no transpose
 * and keeps 10 registers live (skinny_tb_8 with M = 8 holds 8 transposed B
 * vectors and 8 accumulators, more than AVX2's 16 registers; in L2 this
 * form runs about 1.25x faster). bf16 B: the 4 bytes at an even k hold
 * elements k and k + 1, both widened by one broadcast, a shift and a mask.
 * The accumulators (columns) are transposed into C's rows at the end; each
 * C element is the same one fma chain in ascending k. pf_next: prefetch the
 * next 8 rows of B (short rows, see SKINNY_PF_K). */
INL void skinny_tb_m8(bool h, int64_t K, const float *ap, const void *b, int64_t ldb, float *C,
                      int64_t ldc, bool pf_next) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    int64_t k = 0;
    const int pf_every = h ? 32 : 16; /* k per 64-byte line of a row */
    if (h) {
        const uint16_t *bh = (const uint16_t *)b;
        const __m256i hi = _mm256_set1_epi32((int)0xFFFF0000u);
        for (; k + 2 <= K; k += 2) {
            if (pf_next && k % pf_every == 0)
                for (int r = 0; r < 8; r++)
                    _mm_prefetch((const char *)(bh + (8 + r) * ldb + k), _MM_HINT_T0);
            __m256 a0 = _mm256_loadu_ps(ap + k * 8), a1 = _mm256_loadu_ps(ap + k * 8 + 8);
            for (int r = 0; r < 8; r++) {
                uint32_t pair;
                memcpy(&pair, bh + r * ldb + k, sizeof pair);
                __m256i p = _mm256_set1_epi32((int)pair);
                acc[r] = _mm256_fmadd_ps(a0, _mm256_castsi256_ps(_mm256_slli_epi32(p, 16)), acc[r]);
                acc[r] = _mm256_fmadd_ps(a1, _mm256_castsi256_ps(_mm256_and_si256(p, hi)), acc[r]);
            }
        }
    } else {
        const float *bf = (const float *)b;
        for (; k < K; k++) {
            if (pf_next && k % pf_every == 0)
                for (int r = 0; r < 8; r++)
                    _mm_prefetch((const char *)(bf + (8 + r) * ldb + k), _MM_HINT_T0);
            __m256 av = _mm256_loadu_ps(ap + k * 8);
            for (int r = 0; r < 8; r++)
                acc[r] = _mm256_fmadd_ps(av, _mm256_broadcast_ss(bf + r * ldb + k), acc[r]);
        }
    }
    for (; k < K; k++) { /* bf16, odd K: the last k */
        __m256 av = _mm256_loadu_ps(ap + k * 8);
        for (int r = 0; r < 8; r++)
            acc[r] = _mm256_fmadd_ps(av, _mm256_set1_ps(bload1(b, h, r * ldb + k)), acc[r]);
    }
    TRANSPOSE8(acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(C + i * ldc, acc[i]);
}

/* 9-16 rows of op(A) (M), B stored N x K, 4 columns: skinny_tb_m8's form
 * with two vectors of op(A) per k (the second's lanes past M masked off)
 * and two accumulators per column: 8 chains, 2 loads of op(A) and 4
 * broadcasts of B (bf16: 4 per two k) for 8 fmas. The 4 x 16 sums go to C
 * through a small tile. */
INL void skinny_tb_m16(int M, bool h, int64_t K, const float *ap, const void *b, int64_t ldb,
                       float *C, int64_t ldc) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i hmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(M - 8), lanes);
    __m256 acc[4][2];
    for (int c = 0; c < 4; c++) acc[c][0] = acc[c][1] = _mm256_setzero_ps();
#define M16_A(kk, lo, hi)                                                                     \
    __m256 lo = _mm256_loadu_ps(ap + (kk) * M);                                               \
    __m256 hi = M == 16 ? _mm256_loadu_ps(ap + (kk) * M + 8)                                  \
                        : _mm256_maskload_ps(ap + (kk) * M + 8, hmask)
    int64_t k = 0;
    if (h) {
        const uint16_t *bh = (const uint16_t *)b;
        const __m256i himask = _mm256_set1_epi32((int)0xFFFF0000u);
        for (; k + 2 <= K; k += 2) {
            M16_A(k, a0, a1);
            M16_A(k + 1, a2, a3);
            for (int c = 0; c < 4; c++) {
                uint32_t pair;
                memcpy(&pair, bh + c * ldb + k, sizeof pair);
                __m256i p = _mm256_set1_epi32((int)pair);
                __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(p, 16));
                __m256 w1 = _mm256_castsi256_ps(_mm256_and_si256(p, himask));
                acc[c][0] = _mm256_fmadd_ps(a0, w0, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(a1, w0, acc[c][1]);
                acc[c][0] = _mm256_fmadd_ps(a2, w1, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(a3, w1, acc[c][1]);
            }
        }
    } else {
        const float *bf = (const float *)b;
        for (; k < K; k++) {
            M16_A(k, a0, a1);
            for (int c = 0; c < 4; c++) {
                __m256 w = _mm256_broadcast_ss(bf + c * ldb + k);
                acc[c][0] = _mm256_fmadd_ps(a0, w, acc[c][0]);
                acc[c][1] = _mm256_fmadd_ps(a1, w, acc[c][1]);
            }
        }
    }
    for (; k < K; k++) { /* bf16, odd K: the last k */
        M16_A(k, a0, a1);
        for (int c = 0; c < 4; c++) {
            __m256 w = _mm256_set1_ps(bload1(b, h, c * ldb + k));
            acc[c][0] = _mm256_fmadd_ps(a0, w, acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(a1, w, acc[c][1]);
        }
    }
#undef M16_A
    float t[4][16];
    for (int c = 0; c < 4; c++) {
        _mm256_storeu_ps(t[c], acc[c][0]);
        _mm256_storeu_ps(t[c] + 8, acc[c][1]);
    }
    for (int i = 0; i < M; i++)
        for (int c = 0; c < 4; c++) C[i * ldc + c] = t[c][i];
}

/* g (<= 4) rows of C from row r0, 16 columns from j, through kn rows of B:
 * 8 accumulators, and per k two loads of B and g broadcasts of A for 2g
 * fmas (a broadcast served 8 columns before; three vectors, 12
 * accumulators, measured slower: too few registers left). first: start
 * from +0. */
#define NBV 2
INL void skinny_nb_rows(int g, int M, bool h, int r0, int kn, const float *a, const void *b,
                        int64_t ldb, float *C, int64_t ldc, int64_t j, bool first) {
    __m256 acc[4][NBV];
    for (int i = 0; i < g; i++)
        for (int v = 0; v < NBV; v++)
            acc[i][v] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(C + (r0 + i) * ldc + j + 8 * v);
    for (int t = 0; t < kn; t++) {
        __m256 bv[NBV];
        for (int v = 0; v < NBV; v++) bv[v] = bload8(b, h, t * ldb + j + 8 * v);
        for (int i = 0; i < g; i++) {
            __m256 av = _mm256_broadcast_ss(a + t * M + r0 + i);
            for (int v = 0; v < NBV; v++) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < g; i++)
        for (int v = 0; v < NBV; v++) _mm256_storeu_ps(C + (r0 + i) * ldc + j + 8 * v, acc[i][v]);
}

/* B stored K x N: 8 rows of B at a time (8 sequential streams), each
 * 8-column vector of C carried in a register through them and stored back
 * (the stored float continues the chain exactly). More than 4 rows of C:
 * 16 columns at a time in groups of 4 rows (the second group reads the
 * same 8 x 16 of B from L1), which halves the loads per fma. (Blocks of 16
 * rows of B, and prefetching the next block, measured slower from memory.) */
INL void skinny_nb(int M, bool h, int64_t K, const float *ap, const void *B, int64_t ldb,
                   float *C, int64_t ldc, int64_t n0, int64_t n1) {
    int64_t nv = n0 + (n1 - n0) / 8 * 8;
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
        int kn = K - k0 < 8 ? (int)(K - k0) : 8;
        const void *b = bat(B, h, k0 * ldb);
        const float *a = ap + k0 * M;
        int64_t j = n0;
        const int g0 = M > 4 ? 4 : M; /* rows of the first group */
        if (M > 1) {
            /* The second group runs one step behind the first (columns
             * j - 16): right after the first group stores C at columns j,
             * loads of B at the same columns share those stores' address
             * bits 0-11 when B's and C's rows are 4 KiB multiples apart,
             * and the core holds such a load until the store has gone. (On
             * its own this took 8x4096x4096 on one thread from 3.4 to 5.1
             * GB/s; gemm.c's buffer for such C does the rest.) */
            int64_t jp = -1; /* the first group's previous columns */
            for (; j + 8 * NBV <= nv; j += 8 * NBV) {
                if (kn == 8) {
                    skinny_nb_rows(g0, M, h, 0, 8, a, b, ldb, C, ldc, j, k0 == 0);
                    if (M > 4 && jp >= 0)
                        skinny_nb_rows(M - 4, M, h, 4, 8, a, b, ldb, C, ldc, jp, k0 == 0);
                } else {
                    skinny_nb_rows(g0, M, h, 0, kn, a, b, ldb, C, ldc, j, k0 == 0);
                    if (M > 4 && jp >= 0)
                        skinny_nb_rows(M - 4, M, h, 4, kn, a, b, ldb, C, ldc, jp, k0 == 0);
                }
                jp = j;
            }
            if (M > 4 && jp >= 0)
                skinny_nb_rows(M - 4, M, h, 4, kn, a, b, ldb, C, ldc, jp, k0 == 0);
        }
        for (; j < nv; j += 8) {
            __m256 acc[TNN_GEMM_SKINNY_M];
            for (int i = 0; i < M; i++)
                acc[i] = k0 ? _mm256_loadu_ps(C + i * ldc + j) : _mm256_setzero_ps();
            if (kn == 8) { /* unrolled */
                for (int t = 0; t < 8; t++) {
                    __m256 bv = bload8(b, h, t * ldb + j);
                    for (int i = 0; i < M; i++)
                        acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + t * M + i), bv, acc[i]);
                }
            } else {
                for (int t = 0; t < kn; t++) {
                    __m256 bv = bload8(b, h, t * ldb + j);
                    for (int i = 0; i < M; i++)
                        acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(a + t * M + i), bv, acc[i]);
                }
            }
            for (int i = 0; i < M; i++) _mm256_storeu_ps(C + i * ldc + j, acc[i]);
        }
        for (j = nv; j < n1; j++) /* last columns: the same chain in scalar */
            for (int i = 0; i < M; i++) {
                float c = k0 ? C[i * ldc + j] : 0.0f;
                for (int t = 0; t < kn; t++)
                    c = __builtin_fmaf(a[t * M + i], bload1(b, h, t * ldb + j), c);
                C[i * ldc + j] = c;
            }
    }
}

INL void skinny_m(int M, bool h, bool tb, int64_t K, const float *ap, const void *B, int64_t ldb,
                  float *C, int64_t ldc, int64_t n0, int64_t n1) {
    if (!tb && M <= 8) { /* (more rows come only with B transposed: gemm.c, skinny_fits) */
        skinny_nb(M, h, K, ap, B, ldb, C, ldc, n0, n1);
        return;
    }
    int64_t j = n0;
    if (M > 8)
        for (; j + 4 <= n1; j += 4) skinny_tb_m16(M, h, K, ap, bat(B, h, j * ldb), ldb, C + j, ldc);
    else
        for (; j + 8 <= n1; j += 8) {
            bool pf = ldb == K && K <= SKINNY_PF_K && j + 16 <= n1;
            if (M == 8)
                skinny_tb_m8(h, K, ap, bat(B, h, j * ldb), ldb, C + j, ldc, pf);
            else
                skinny_tb_8(M, h, K, ap, bat(B, h, j * ldb), ldb, C + j, ldc, pf);
        }
    for (; j < n1; j++) /* last columns: one chain each, fmaf = the same FMA */
        for (int i = 0; i < M; i++) {
            float c = 0.0f;
            for (int64_t k = 0; k < K; k++)
                c = __builtin_fmaf(ap[k * M + i], bload1(B, h, j * ldb + k), c);
            C[i * ldc + j] = c;
        }
}

/* M as a constant in each instance. */
#define SKINNY_BY_M(h)                                                                        \
    switch (M) {                                                                              \
    case 1: skinny_m(1, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 2: skinny_m(2, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 3: skinny_m(3, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 4: skinny_m(4, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 5: skinny_m(5, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 6: skinny_m(6, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 7: skinny_m(7, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 8: skinny_m(8, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 9: skinny_m(9, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                         \
    case 10: skinny_m(10, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    case 11: skinny_m(11, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    case 12: skinny_m(12, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    case 13: skinny_m(13, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    case 14: skinny_m(14, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    case 15: skinny_m(15, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    default: skinny_m(16, h, tb, K, ap, B, ldb, C, ldc, n0, n1); break;                       \
    }

void tnn__gemm_skinny_avx2(bool tb, int64_t M, int64_t K, const float *ap, const float *B,
                           int64_t ldb, float *C, int64_t ldc, int64_t n0, int64_t n1) {
    SKINNY_BY_M(false)
}

void tnn__gemm_skinny_widen_avx2(bool tb, int64_t M, int64_t K, const float *ap,
                                 const uint16_t *B, int64_t ldb, float *C, int64_t ldc,
                                 int64_t n0, int64_t n1) {
    SKINNY_BY_M(true)
}

const tnn__gemm_kernel tnn__gemm_kernel_avx2 = {
    .name = "avx2",
    .mr = MR, .nr = NR,
    /* A block 96 x 384 (144 KiB) and B micro-panel 384 x 16 (24 KiB) for L2
     * and L1; B panel 384 x 1536 (L3), or 384 x 512 when A is one block.
     * Deeper K blocks mean fewer passes reloading C (measured on Zen 4: ~5%
     * over 256 deep, 3072 wide at 512x768x3072). With A one block and B
     * transposed, panels of 64 columns (96 KiB, in L2 when the micro-kernels
     * read it; 512 is 768 KiB): 9-96 rows against 576-4096 x 1536-49152,
     * +5-25% on 2 threads, +3-15% on one (A/B in one process). A
     * non-transposed B keeps 512: its pack reads rows of the panel's width,
     * and 64 made it slower (16x4096x4096: 0.9x). */
    .mc = 96, .kc = 384, .nc = 1536, .nc_small = 512, .nc_small_t = 64,
    .ukr = ukr_avx2_6x16,
    .ukr_rows = ukr_avx2_rows,
    .pack_t = tnn__gemm_pack_t_avx2,
    .skinny = tnn__gemm_skinny_avx2,
    .pack_t_widen = tnn__gemm_bf16_pack_t_widen_avx2,
    .skinny_widen = tnn__gemm_skinny_widen_avx2,
};

#else
typedef int tnn__gemm_avx2_unused; /* not x86: nothing to build */
#endif
