/* gemm_avx512bf16.c - the AVX512_BF16 micro-kernel of the bf16 products: a
 * 12x32 tile of C in 24 zmm accumulators, one vdpbf16ps per (row, 16
 * columns, k pair). This file alone is compiled with -mavx512f -mavx512bf16
 * and is only called after gemm.c has checked that the CPU reports
 * AVX512_BF16 and the OS saves the zmm state. Its scalar twin is
 * ukr_dot_scalar in gemm_bf16.c.
 */
#include "gemm.h"
#include "gemm_dot_pack.h"

#if defined(TNN_GEMM_X86)
#if !defined(__AVX512F__) || !defined(__AVX512BF16__)
#error "gemm_avx512bf16.c must be compiled with -mavx512f -mavx512bf16 (see CMakeLists.txt)"
#endif

#include <immintrin.h>

#define MR 12
#define NR 32

/* Each vdpbf16ps lane adds the odd pair half's product, then the even
 * one's, each a rounded FMA with DAZ/FTZ (tnn__gemm_dot_step); a k pair of
 * one row of A is one 32-bit word, broadcast. */
static void ukr_dot_12x32(int64_t kp, const uint32_t *a, const uint32_t *b, float *c,
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
    for (int64_t p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)b);
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(b + 16));
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
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

/* The pair packs, vectorized for AVX-512 by the compiler (same bytes); mr
 * is this kernel's MR, a constant here so that the transpose unrolls. */
static void pack_a_avx512(uint32_t *restrict dst, bool ta, const float *restrict A, int64_t lda,
                          int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr) {
    (void)mr;
    dot_pack_a_impl(dst, ta, A, lda, i0, mc, k0, kc, MR);
}

static void pack_b_avx512(uint32_t *restrict dst, bool tb, const uint16_t *restrict B, int64_t ldb,
                          int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr) {
    dot_pack_b_impl(dst, tb, B, ldb, k0, kc, j0, nc, nr);
}

const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_avx512bf16 = {
    .name = "dot-avx512",
    .mr = MR, .nr = NR,
    /* bf16 halves the bytes of f32: A block 144 x 512 (144 KiB, L2), B
     * micro-panel 512 x 32 (32 KiB, L1), B panel 512 x 3072 (3 MiB, L3), or
     * 512 x 1024 when A is one block. */
    .mc = 144, .kc = 512, .nc = 3072, .nc_small = 1024,
    .ukr = ukr_dot_12x32,
    .pack_a = pack_a_avx512,
    .pack_b = pack_b_avx512,
};

#else
typedef int tnn__gemm_avx512bf16_unused; /* not x86: nothing to build */
#endif
