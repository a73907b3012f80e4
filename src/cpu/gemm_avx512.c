/* gemm_avx512.c - the AVX-512F GEMM micro-kernel: a 12x32 tile of C held in
 * 24 zmm accumulators (packing borrows the AVX2 transposing pack). This file
 * alone is compiled with -mavx512f and is only called after gemm.c has
 * checked that the CPU reports avx512f. Zen 4 runs it at the AVX2 rate.
 */
#include "gemm.h"

#if defined(TNN_GEMM_X86)
#if !defined(__AVX512F__)
#error "gemm_avx512.c must be compiled with -mavx512f (see CMakeLists.txt)"
#endif

#include <immintrin.h>

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
    .skinny_widen = tnn__gemm_skinny_widen_avx2,
};

#else
typedef int tnn__gemm_avx512_unused; /* not x86: nothing to build */
#endif
