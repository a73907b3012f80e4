/* vmath.h - exp and tanh for float in portable C, written branch-free (selects
 * only) so GCC vectorizes the loops that call them; used by the element-wise,
 * row, cross-entropy and attention kernels in place of libm's expf/tanhf.
 *
 * Every operation is a plain IEEE float/int32 operation (no libm, and the build
 * keeps -ffp-contract=off), so scalar code, SSE2 vectors and AVX2 clones give
 * the same bits for the same input.
 *
 * tnn_vexp(x): x = n ln2 + r with n = round(x / ln2) (Cody-Waite split of ln2,
 * |r| <= 0.3466), e^r = 1 + r + r^2 q(r) with q of degree 4 fitted (weighted
 * minimax, relative error 3.1e-9 in exact arithmetic), then scaled by
 * 2^n = 2^(n/2) 2^(n - n/2) built from exponent bits, so n = 128 (x up to
 * 88.72) still works.
 *   x > 88.7228 -> +inf (overflow of the final product); x = +inf -> +inf.
 *   x < -87.33654 (= ln FLT_MIN) -> +0: results that would be denormal are
 *     flushed to zero (and -inf -> +0).
 *   NaN -> NaN (the input is returned).
 *   Measured (tests/test_vmath.c with TNN_VMATH_FULL=1: all 2.24e9 floats in
 *   [-87.33654, 88.7228] against double exp): max relative error 1.19e-7, at
 *   most 1.28 ulp.
 *
 * tnn_vtanh(u): |u| < 0.625: u + u^3 p(u^2), p of degree 4 fitted (relative
 * error 4.4e-9 in exact arithmetic); otherwise 1 - 2/(e^(2|u|) + 1) with the
 * sign of u put back, |u| clamped to 10 (tanh(10) rounds to 1 in float).
 * tanh(+-0) = +-0, tanh(+-inf) = +-1, NaN -> NaN.
 *   Measured (all 2.20e9 floats in [-20, 20] against double tanh; beyond that
 *   the result is +-1): max relative error 1.44e-7 (near |u| = 0.625, on the
 *   exp side), max absolute error 8.0e-8, at most 1.34 ulp.
 * (The test sweeps every 37th float by default and prints what it measures;
 * it checks relative error < 2e-7 for exp, < 3e-7 relative and absolute for
 * tanh, and that scalar, SSE2 and AVX2 builds give identical bits.)
 */
#ifndef TNN_OPS_VMATH_H
#define TNN_OPS_VMATH_H

#include <stdint.h>
#include <string.h>

static inline float tnn__f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint32_t tnn__f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* c ? a : b on the bits, with a mask. GCC does not if-convert a float ?: whose
 * arms it may not compute speculatively (-ftrapping-math), so every select in
 * this file goes through here and the loops stay branch-free. */
static inline float tnn__sel(int c, float a, float b) {
    uint32_t m = -(uint32_t)(c != 0);
    return tnn__f32_from_bits((tnn__f32_bits(a) & m) | (tnn__f32_bits(b) & ~m));
}

/* 2^k for k in [-126, 127]. */
static inline float tnn__pow2i(int32_t k) { return tnn__f32_from_bits((uint32_t)(k + 127) << 23); }

/* The core both exps share, for xc in [-88, 89]: nf = round(xc / ln2) (as a
 * float) and the return value p = e^(xc - nf ln2), so that e^xc = p 2^nf. */
static inline float tnn__vexp_core(float xc, float *nf_out) {
    const float log2e = 1.44269502f;
    const float ln2_hi = 0.693359375f;     /* 11 significant bits: n * ln2_hi is exact */
    const float ln2_lo = -2.12194440e-4f;  /* ln2 - ln2_hi */
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float nf = (xc * log2e + round_magic) - round_magic;
    float r = (xc - nf * ln2_hi) - nf * ln2_lo;
    float q = 1.38145930e-3f;
    q = q * r + 8.36871564e-3f;
    q = q * r + 4.16683890e-2f;
    q = q * r + 1.66665211e-1f;
    q = q * r + 4.99999940e-1f;
    *nf_out = nf;
    return (1.0f + r) + (r * r) * q;
}

/* y for x, except: 0 where the result would be denormal, x itself for NaN
 * (tested on the bits: x != x does not vectorize under -ftrapping-math). */
static inline float tnn__vexp_finish(float x, float y) {
    y = tnn__sel(x < -87.33654f, 0.0f, y);
    return tnn__sel((tnn__f32_bits(x) & 0x7fffffffu) > 0x7f800000u, x, y);
}

static inline float tnn_vexp(float x) {
    /* Clamp so n stays in [-127, 128]; NaN compares false and becomes -88. */
    float xc = tnn__sel(x > -88.0f, x, -88.0f);
    xc = tnn__sel(xc < 89.0f, xc, 89.0f);
    float nf, p = tnn__vexp_core(xc, &nf);
    int32_t n = (int32_t)nf;
    int32_t n1 = n >> 1; /* floor(n/2): both halves lie in [-64, 64] */
    return tnn__vexp_finish(x, (p * tnn__pow2i(n1)) * tnn__pow2i(n - n1));
}

/* tnn_vexp for x <= 0 (or NaN), as softmax and attention take it (x minus
 * the row's max): no upper clamp, and 2^n in one factor (n lies in [-127, 0]).
 * Both scalings by powers of two are exact while the result is normal and
 * round once when it is not, so this gives the same bits as tnn_vexp for
 * every x <= 0; a positive x gives a wrong result. */
static inline float tnn_vexp_le0(float x) {
    float xc = tnn__sel(x > -88.0f, x, -88.0f); /* NaN -> -88 here; put back below */
    float nf, p = tnn__vexp_core(xc, &nf);
    /* pow2i(-127) is +0: flushed by the finish anyway */
    return tnn__vexp_finish(x, p * tnn__pow2i((int32_t)nf));
}

static inline float tnn_vtanh(float u) {
    uint32_t ub = tnn__f32_bits(u);
    float a = tnn__f32_from_bits(ub & 0x7fffffffu); /* |u|; the sign goes back at the end */
    /* small |u|: odd polynomial (keeps the relative error small near 0) */
    float s = a * a;
    float ps = -5.70500037e-3f;
    ps = ps * s + 2.06391010e-2f;
    ps = ps * s - 5.37397191e-2f;
    ps = ps * s + 1.33314416e-1f;
    ps = ps * s - 3.33332807e-1f;
    float small = a + (a * s) * ps;
    /* large |u|: from exp; NaN stays NaN through the clamp */
    float ac = tnn__sel(a > 10.0f, 10.0f, a);
    float big = 1.0f - 2.0f / (tnn_vexp(2.0f * ac) + 1.0f);
    float t = tnn__sel(a < 0.625f, small, big);
    return tnn__f32_from_bits(tnn__f32_bits(t) | (ub & 0x80000000u));
}

/* 1 / (1 + e^-x); 0 for x < -88.7, 1 for x > 17. */
static inline float tnn_vsigmoid(float x) { return 1.0f / (1.0f + tnn_vexp(-x)); }

/* ------------------------------------------------------------------------ */
/* Row reductions in a fixed order                                          */
/* ------------------------------------------------------------------------ */

/* Element j goes to lane j % 8; each lane adds in ascending j (in double);
 * the lanes are then combined as ((l0 + l1) + (l2 + l3)) + ((l4 + l5) +
 * (l6 + l7)). The order depends on n only, so a row's result is the same in
 * every build, clone and thread split, and the loops vectorize. */
#define TNN_LANES8_REDUCE(a)                                                                  \
    ((((a)[0] + (a)[1]) + ((a)[2] + (a)[3])) + (((a)[4] + (a)[5]) + ((a)[6] + (a)[7])))

/* sum x[j] */
static inline __attribute__((always_inline)) double tnn_vsum_d(const float *x, int64_t n) {
    double a[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)x[j + k];
    for (int k = 0; j + k < n; k++) a[k] += (double)x[j + k];
    return TNN_LANES8_REDUCE(a);
}

/* sum x[j] y[j] (y = x: the sum of squares) */
static inline __attribute__((always_inline)) double tnn_vdot_d(const float *x, const float *y,
                                                               int64_t n) {
    double a[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) a[k] += (double)x[j + k] * (double)y[j + k];
    for (int k = 0; j + k < n; k++) a[k] += (double)x[j + k] * (double)y[j + k];
    return TNN_LANES8_REDUCE(a);
}

/* sum (x[j] - m)^2 */
static inline __attribute__((always_inline)) double tnn_vsqdev_d(const float *x, double m,
                                                                 int64_t n) {
    double a[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            double d = (double)x[j + k] - m;
            a[k] += d * d;
        }
    for (int k = 0; j + k < n; k++) {
        double d = (double)x[j + k] - m;
        a[k] += d * d;
    }
    return TNN_LANES8_REDUCE(a);
}

/* The largest x[j] (n >= 1), found on integer keys that order floats as
 * numbers (bits ^ 0x7fffffff when the sign is set), which vectorize as an
 * integer max. A positive NaN is larger than everything, so it comes out
 * as the maximum (and then spreads through softmax); -0 ranks below +0. */
static inline __attribute__((always_inline)) int32_t tnn__fkey(float f) {
    int32_t b = (int32_t)tnn__f32_bits(f);
    return b ^ ((b >> 31) & 0x7fffffff);
}

static inline __attribute__((always_inline)) float tnn_vmax(const float *x, int64_t n) {
    int32_t m[8];
    for (int k = 0; k < 8; k++) m[k] = tnn__fkey(x[0]);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            int32_t v = tnn__fkey(x[j + k]);
            m[k] = v > m[k] ? v : m[k];
        }
    for (int k = 0; j + k < n; k++) {
        int32_t v = tnn__fkey(x[j + k]);
        m[k] = v > m[k] ? v : m[k];
    }
    int32_t r = m[0];
    for (int k = 1; k < 8; k++) r = m[k] > r ? m[k] : r;
    return tnn__f32_from_bits((uint32_t)(r ^ ((r >> 31) & 0x7fffffff)));
}

#endif
