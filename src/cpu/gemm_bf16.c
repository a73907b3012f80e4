/* gemm_bf16.c - the portable parts of the bf16 products (tnn__gemm_bf16, run
 * by gemm.c's loop nest): the activation rounding and the VDPBF16PS step,
 * the packs that widen bf16 weights to f32 or lay them out in k pairs, and
 * the scalar twin of the dot micro-kernel (the oracle for
 * gemm_avx512bf16.c, bit for bit).
 */
#include "gemm.h"
#include "gemm_dot_pack.h"

#include <math.h>
#include <string.h>

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
/* bf16 -> f32: the upper half of an f32, exact. */
static inline float widen(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* ------------------------------------------------------------------------ */
/* Rounding and the dot step                                                */
/* ------------------------------------------------------------------------ */

uint16_t tnn__gemm_bf16_round(float x) { return (uint16_t)dot_round_bits(f32_bits(x)); }

/* DAZ: a subnormal is a zero of its sign. */
static inline float daz(float x) {
    return (f32_bits(x) & 0x7f800000u) == 0 ? copysignf(0.0f, x) : x;
}

/* See gemm.h. fmaf gives the exact a*b + acc rounded once on the f32 grid
 * with subnormals; what remains is the flush. A result below 2^-126 is tiny
 * however tininess is detected. A result of exactly 2^-126 can come from an
 * exact value v just below it: x86 detects tininess after rounding, i.e.
 * when v rounded to 24 bits with an unbounded exponent is below 2^-126,
 * which holds for |v| < 2^-126 - 2^-151 (2^-126 - 2^-151 itself ties to
 * 2^-126). That case is settled with v held exactly as a double sum s + e
 * (a*b is exact in double; TwoSum adds acc without error). */
static inline float dot_step(float acc, float a, float b) {
    acc = daz(acc), a = daz(a), b = daz(b);
    float r = fmaf(a, b, acc);
    float m = fabsf(r);
    if (m < 0x1p-126f) return copysignf(0.0f, r);
    if (m == 0x1p-126f) {
        double p = (double)a * (double)b, q = (double)acc;
        double s = p + q, z = s - p;
        double e = (p - (s - z)) + (q - z);
        if (r < 0) s = -s, e = -e;
        const double edge = 0x1p-126 - 0x1p-151;
        if (s < edge || (s == edge && e < 0)) return copysignf(0.0f, r);
    }
    return r;
}

float tnn__gemm_dot_step(float acc, float a, float b) { return dot_step(acc, a, b); }

/* ------------------------------------------------------------------------ */
/* Widening packs (the WIDEN path)                                          */
/* ------------------------------------------------------------------------ */

void tnn__gemm_bf16_pack_t_widen(float *restrict dst, const uint16_t *restrict src, int64_t lds,
                                 int64_t kc, int w, int valid) {
    for (int c = 0; c < w; c++) {
        if (c < valid) {
            const uint16_t *s = src + c * lds;
            for (int64_t k = 0; k < kc; k++) dst[k * w + c] = widen(s[k]);
        } else {
            for (int64_t k = 0; k < kc; k++) dst[k * w + c] = 0.0f;
        }
    }
}

/* d[0:w] = s[0:m] widened, zero past m (one row of a panel). */
static inline void widen_row(float *restrict d, const uint16_t *restrict s, int64_t m, int w) {
    int64_t c = 0;
    for (; c < m; c++) d[c] = widen(s[c]);
    for (; c < w; c++) d[c] = 0.0f;
}

void tnn__gemm_bf16_pack_n_widen(float *restrict dst, const uint16_t *restrict src, int64_t lds,
                                 int64_t kc, int64_t n, int w) {
    int64_t k = 0;
    for (; k + TNN_GEMM_PACK_ROWS <= kc; k += TNN_GEMM_PACK_ROWS)
        for (int64_t q = 0; q < n; q += w) {
            int64_t m = n - q < w ? n - q : w;
            for (int r = 0; r < TNN_GEMM_PACK_ROWS; r++)
                widen_row(dst + q * kc + (k + r) * w, src + (k + r) * lds + q, m, w);
        }
    for (; k < kc; k++)
        for (int64_t q = 0; q < n; q += w)
            widen_row(dst + q * kc + k * w, src + k * lds + q, n - q < w ? n - q : w, w);
}

/* ------------------------------------------------------------------------ */
/* Pair packs (the DOT paths)                                               */
/* ------------------------------------------------------------------------ */

void tnn__gemm_dot_pack_a(uint32_t *restrict dst, bool ta, const float *restrict A, int64_t lda,
                          int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr) {
    dot_pack_a_impl(dst, ta, A, lda, i0, mc, k0, kc, mr);
}

void tnn__gemm_dot_pack_b(uint32_t *restrict dst, bool tb, const uint16_t *restrict B, int64_t ldb,
                          int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr) {
    dot_pack_b_impl(dst, tb, B, ldb, k0, kc, j0, nc, nr);
}

/* ------------------------------------------------------------------------ */
/* The scalar twin of the dot micro-kernel                                  */
/* ------------------------------------------------------------------------ */

#define MR 6
#define NR 16

static void ukr_dot_scalar(int64_t kp, const uint32_t *a, const uint32_t *b, float *c,
                           int64_t ldc, int load_c) {
    float acc[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = load_c ? c[i * ldc + j] : 0.0f;
    for (int64_t p = 0; p < kp; p++, a += MR, b += NR)
        for (int i = 0; i < MR; i++) {
            float alo = widen((uint16_t)a[i]), ahi = widen((uint16_t)(a[i] >> 16));
            for (int j = 0; j < NR; j++) {
                float blo = widen((uint16_t)b[j]), bhi = widen((uint16_t)(b[j] >> 16));
                acc[i][j] = dot_step(dot_step(acc[i][j], ahi, bhi), alo, blo);
            }
        }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = acc[i][j];
}

const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_scalar = {
    .name = "dot-scalar",
    .mr = MR, .nr = NR,
    .mc = 96, .kc = 384, .nc = 1536, .nc_small = 512,
    .ukr = ukr_dot_scalar,
};
