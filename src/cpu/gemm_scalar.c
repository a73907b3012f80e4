/* gemm_scalar.c - the portable reference twin of the GEMM micro-kernels:
 * same 6x16 tile and packing as the AVX2 kernel, plain C. It is the oracle
 * the tests compare the SIMD kernels against, bit for bit.
 */
#include "gemm.h"

#include <math.h>

#define MR 6
#define NR 16

/* fmaf, not a*b + c: fmaf is one correctly rounded operation, exactly what
 * a vfmadd lane computes, so this twin and the AVX2/AVX-512 kernels give the
 * same bits. (With mul + add the product would be rounded first and the
 * results would differ in the last place.) */
static void ukr_scalar(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                       int load_c) {
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = load_c ? c[i * ldc + j] : 0.0f;
    for (int64_t k = 0; k < kc; k++) {
        const float *ak = a + k * MR, *bk = b + k * NR;
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) acc[i][j] = fmaf(ak[i], bk[j], acc[i][j]);
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
}

const tnn__gemm_kernel tnn__gemm_kernel_scalar = {
    .name = "scalar",
    .mr = MR, .nr = NR,
    /* A block 96 x 384 (144 KiB) and B micro-panel 384 x 16 (24 KiB) for L2
     * and L1; B panel 384 x 1536 (L3), or 384 x 512 (L2) when A is one
     * block. Deeper K blocks mean fewer passes reloading C (measured on Zen
     * 4: ~5% over 256 deep, 3072 wide at 512x768x3072). */
    .mc = 96, .kc = 384, .nc = 1536, .nc_small = 512,
    .ukr = ukr_scalar,
};
