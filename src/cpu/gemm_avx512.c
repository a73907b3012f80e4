/* gemm_avx512.c - the AVX-512F GEMM micro-kernel: a 12x32 tile of C held in
 * 24 zmm accumulators (packing borrows the AVX2 transposing pack), and the
 * skinny products (1-8 rows) with bf16 weights, 16 columns a vector. This file
 * alone is compiled with -mavx512f and is only called after gemm.c has
 * checked that the CPU reports avx512f. Zen 4 runs it at the AVX2 rate.
 */
#include "gemm.h"

#if defined(TNN_GEMM_X86)
#if !defined(__AVX512F__)
#error "gemm_avx512.c must be compiled with -mavx512f (see CMakeLists.txt)"
#endif

#include <immintrin.h>
#include <string.h>

#define MR 12
#define NR 32

/* The loops have constant bounds and are fully unrolled, so acc[][] lives in
 * registers. _mm512_fmadd_ps rounds once, like fmaf in the scalar twin. */
static void ukr_avx512_12x32(int64_t kc, const float *a, const float *b, float *c,
                             int64_t ldc, int load_c) {
    __m512 acc[MR][2];
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        if (load_c) {
            acc[i][0] = _mm512_loadu_ps(c + i * ldc);
            acc[i][1] = _mm512_loadu_ps(c + i * ldc + 16);
        } else {
            acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        }
    }
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512 av = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(av, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(av, b1, acc[i][1]);
        }
        a += MR;
        b += NR;
    }
#pragma GCC unroll 12
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(c + i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
    }
}

/* ------------------------------------------------------------------------ */
/* Skinny products with bf16 B (widened), 16 columns a vector               */
/* ------------------------------------------------------------------------ */

/* The same chains as the AVX2 skinny kernels (and so as the packed widening
 * path): each C element is one fma chain in ascending k over op(A) and the
 * widened weights; only more of them run side by side. */

static inline __m512 widen_lo(__m512i p) { return _mm512_castsi512_ps(_mm512_slli_epi32(p, 16)); }
static inline __m512 widen_hi(__m512i p) {
    return _mm512_castsi512_ps(_mm512_and_si512(p, _mm512_set1_epi32((int)0xFFFF0000u)));
}
static inline float widen1_512(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* 16 rows of 16 k pairs (one 32-bit word each) -> r[q] = pair q of the 16
 * rows: the 16x16 transpose of 32-bit words, in four shuffle stages. */
static inline __attribute__((always_inline)) void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* r[4b + c]: rows 4b..4b+3 (lanes 4-wide per 128-bit block) of pair c +
     * 4 * block; gather the 128-bit blocks */
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0x88);      /* blocks 0, 2 of both */
        t[4 + i] = _mm512_shuffle_i32x4(r[i], r[4 + i], 0xdd);  /* blocks 1, 3 */
        t[8 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0x88);
        t[12 + i] = _mm512_shuffle_i32x4(r[8 + i], r[12 + i], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
        r[4 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0x88);
        r[12 + i] = _mm512_shuffle_i32x4(t[4 + i], t[12 + i], 0xdd);
    }
}

/* B stored N x K: 16 columns of C are 16 rows of B; 32 k of them at a time
 * are transposed so that lane c carries column j + c. pf_next: the rows are
 * short and contiguous (ldb == K <= SKINNY_PF_K512), too short for the
 * hardware prefetcher to ramp up on each, so the next 16 rows (one block)
 * are prefetched a share per step while these are used. */
#define SKINNY_PF_K512 1024
static inline __attribute__((always_inline)) void skinny_tb16(int M, int64_t K, const float *ap,
                                                               const uint16_t *b, int64_t ldb,
                                                               float *C, int64_t ldc,
                                                               bool pf_next) {
    __m512 acc[8];
    for (int i = 0; i < M; i++) acc[i] = _mm512_setzero_ps();
    const char *nb = (const char *)(b + 16 * ldb);
    int64_t lines = 16 * K * 2 / 64, per = (lines + K / 32) / (K / 32 > 0 ? K / 32 : 1) + 1;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        if (pf_next) {
            int64_t l0 = k / 32 * per;
            for (int64_t l = l0; l < l0 + per && l < lines; l++)
                _mm_prefetch(nb + 64 * l, _MM_HINT_T0);
        }
        __m512i r[16];
        for (int c = 0; c < 16; c++) r[c] = _mm512_loadu_si512((const void *)(b + c * ldb + k));
        transpose16(r);
        const float *a = ap + k * M;
        for (int q = 0; q < 16; q++) {
            __m512 lo = widen_lo(r[q]), hi = widen_hi(r[q]);
            for (int i = 0; i < M; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[2 * q * M + i]), lo, acc[i]);
            for (int i = 0; i < M; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(a[(2 * q + 1) * M + i]), hi, acc[i]);
        }
    }
    for (; k < K; k++) {
        float w[16];
        for (int c = 0; c < 16; c++) w[c] = widen1_512(b[c * ldb + k]);
        __m512 bv = _mm512_loadu_ps(w);
        for (int i = 0; i < M; i++)
            acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(ap[k * M + i]), bv, acc[i]);
    }
    for (int i = 0; i < M; i++) _mm512_storeu_ps(C + i * ldc, acc[i]);
}

/* B stored K x N: blocks of 8 rows of B (8 sequential streams), across all
 * the columns, 16 NBV(M) at a time (64 for one or two rows of C: four
 * independent chains a row, 32 else); each C element's running sum is
 * stored back between blocks (the stored float continues the chain
 * exactly), k ascending. */
#define NBV(M) ((M) == 1 ? 8 : (M) <= 2 ? 4 : 2)
static inline __attribute__((always_inline)) void skinny_nb16(int M, int64_t K, const float *ap,
                                                               const uint16_t *B, int64_t ldb,
                                                               float *C, int64_t ldc,
                                                               int64_t n0, int64_t n1) {
    const int V = NBV(M);
    for (int64_t k0 = 0; k0 < K; k0 += 8) {
        int kn = K - k0 < 8 ? (int)(K - k0) : 8;
        for (int64_t j = n0; j < n1; j += 16 * V) {
            __m512 acc[8][8];
            for (int i = 0; i < M; i++)
                for (int v = 0; v < V; v++)
                    acc[i][v] = k0 ? _mm512_loadu_ps(C + i * ldc + j + 16 * v)
                                   : _mm512_setzero_ps();
            if (k0 + 8 < K) /* the next block's rows of these columns */
                for (int t = 0; t < 8 && k0 + 8 + t < K; t++)
                    for (int v = 0; v < V; v += 2)
                        _mm_prefetch((const char *)(B + (k0 + 8 + t) * ldb + j + 16 * v),
                                     _MM_HINT_T0);
            for (int t = 0; t < kn; t++) {
                const uint16_t *row = B + (k0 + t) * ldb + j;
                __m512 bv[8];
                for (int v = 0; v < V; v++)
                    bv[v] = _mm512_castsi512_ps(_mm512_slli_epi32(
                        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 16 * v))),
                        16));
                const float *a = ap + (k0 + t) * M;
                for (int i = 0; i < M; i++) {
                    __m512 av = _mm512_set1_ps(a[i]);
                    for (int v = 0; v < V; v++) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
                }
            }
            for (int i = 0; i < M; i++)
                for (int v = 0; v < V; v++) _mm512_storeu_ps(C + i * ldc + j + 16 * v, acc[i][v]);
        }
    }
}

static inline __attribute__((always_inline)) void skinny_w512(int M, bool tb, int64_t K,
                                                               const float *ap, const uint16_t *B,
                                                               int64_t ldb, float *C, int64_t ldc,
                                                               int64_t n0, int64_t n1) {
    int64_t j = n0;
    if (tb) {
        for (; j + 16 <= n1; j += 16)
            skinny_tb16(M, K, ap, B + j * ldb, ldb, C + j, ldc,
                        ldb == K && K <= SKINNY_PF_K512 && j + 32 <= n1);
    } else {
        j = n0 + (n1 - n0) / (16 * NBV(M)) * (16 * NBV(M));
        if (j > n0) skinny_nb16(M, K, ap, B, ldb, C, ldc, n0, j);
    }
    if (j < n1) tnn__gemm_skinny_widen_avx2(tb, M, K, ap, B, ldb, C, ldc, j, n1);
}

/* M <= 8: the AVX-512 forms above; more rows (B transposed): the AVX2 ones. */
static void skinny_widen_avx512(bool tb, int64_t M, int64_t K, const float *ap,
                                const uint16_t *B, int64_t ldb, float *C, int64_t ldc,
                                int64_t n0, int64_t n1) {
    switch (M) {
    case 1: skinny_w512(1, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 2: skinny_w512(2, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 3: skinny_w512(3, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 4: skinny_w512(4, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 5: skinny_w512(5, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 6: skinny_w512(6, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 7: skinny_w512(7, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    case 8: skinny_w512(8, tb, K, ap, B, ldb, C, ldc, n0, n1); break;
    default: tnn__gemm_skinny_widen_avx2(tb, M, K, ap, B, ldb, C, ldc, n0, n1); break;
    }
}

const tnn__gemm_kernel tnn__gemm_kernel_avx512 = {
    .name = "avx512",
    .mr = MR, .nr = NR,
    /* A block 144 x 256 (147 KiB, in L2), B micro-panel 256 x 32 (32 KiB, in
     * L1), B panel 256 x 3072 (in L3), or 256 x 1024 (in L2) when A is one
     * block. */
    .mc = 144, .kc = 256, .nc = 3072, .nc_small = 1024,
    .ukr = ukr_avx512_12x32,
    .pack_t = tnn__gemm_pack_t_avx2,
    .skinny = tnn__gemm_skinny_avx2,
    .pack_t_widen = tnn__gemm_bf16_pack_t_widen_avx2,
    .skinny_widen = skinny_widen_avx512,
};

#else
typedef int tnn__gemm_avx512_unused; /* not x86: nothing to build */
#endif
