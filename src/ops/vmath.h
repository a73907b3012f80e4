/* vmath.h - exp and tanh for float in portable C, written branch-free (selects
 * only) so GCC vectorizes the loops that call them; used by the element-wise,
 * row, cross-entropy and attention kernels in place of libm's expf/tanhf.
 *
 * Every operation is a plain IEEE float/int32 operation or an fmaf (one
 * rounding; no other libm call, and the build keeps -ffp-contract=off), so
 * scalar code, SSE2 vectors and AVX2 + FMA clones give the same bits for the
 * same input.
 *
 * tnn_vexp(x): x = n ln2 + r with n = round(x / ln2) (ln2 split in two
 * floats, each product fused), |r| <= 0.3466, e^r = 1 + r (1 + r q(r)) with
 * q of degree 4 fitted (weighted minimax, relative error 3.1e-9 in exact
 * arithmetic) in fmaf steps, then scaled by 2^n = 2^(n/2) 2^(n - n/2) built
 * from exponent bits, so n = 128 (x up to 88.72) still works.
 *   x > 88.7228 -> +inf (overflow of the final product); x = +inf -> +inf.
 *   x < -87.33654 (= ln FLT_MIN) -> +0: results that would be denormal are
 *     flushed to zero (and -inf -> +0).
 *   NaN -> NaN.
 *   Measured (tests/test_vmath.c with TNN_VMATH_FULL=1: all 2.24e9 floats in
 *   [-87.33654, 88.7228] against double exp): max relative error 7.71e-8, at
 *   most 0.91 ulp.
 *
 * tnn_vtanh(u): |u| < 0.625: u + u^3 p(u^2), p of degree 4 fitted (relative
 * error 4.4e-9 in exact arithmetic); otherwise 1 - 2/(e^(2|u|) + 1) with the
 * sign of u put back, |u| clamped to 10 (tanh(10) rounds to 1 in float).
 * tanh(+-0) = +-0, tanh(+-inf) = +-1, NaN -> NaN.
 *   Measured (all 2.20e9 floats in [-20, 20] against double tanh; beyond that
 *   the result is +-1): max relative error 1.46e-7 (near |u| = 0.625, on the
 *   exp side), max absolute error 8.1e-8, at most 1.36 ulp.
 * (The test sweeps every 37th float by default and prints what it measures;
 * it checks relative error < 2e-7 for exp, < 3e-7 relative and absolute for
 * tanh, and that scalar, SSE2 and AVX2 + FMA builds give identical bits.)
 */
#ifndef TNN_OPS_VMATH_H
#define TNN_OPS_VMATH_H

#include <math.h>
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

/* 2^k for k in [-126, 127] (unsigned arithmetic: any k is defined). */
static inline float tnn__pow2i(int32_t k) {
    return tnn__f32_from_bits(((uint32_t)k + 127u) << 23);
}

/* The core both exps share, for xc in [-88, 89] or NaN: *n = round(xc / ln2)
 * and the return value p = e^(xc - n ln2), so that e^xc = p 2^n. Every step
 * is one fmaf (one rounding, what a vfmadd lane computes): the reduction and
 * polynomial are 9 fused operations instead of 17 separate ones. On x86 the
 * loops that call this are built for x86-64-v3 (AVX2 + FMA, TNN_VEC_CLONES);
 * other ISAs have an fma instruction; only an x86 CPU without FMA calls
 * libm's fmaf (the same bits, slowly). n is read off the bits of the rounded
 * sum, not converted from a float, so a NaN gives a NaN p and some n, never
 * undefined behaviour. */
static inline float tnn__vexp_core(float xc, int32_t *n_out) {
    const float log2e = 1.44269502f;
    const float ln2_hi = 0.693147182f;    /* float(ln2): n * ln2_hi is exact inside the fma */
    const float ln2_lo = -1.90465421e-9f; /* ln2 - ln2_hi */
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t = fmaf(xc, log2e, round_magic);
    float nf = t - round_magic;
    float r = fmaf(nf, -ln2_hi, xc);
    r = fmaf(nf, -ln2_lo, r);
    /* e^r = 1 + r (1 + r q(r)) */
    float q = 1.38145930e-3f;
    q = fmaf(q, r, 8.36871564e-3f);
    q = fmaf(q, r, 4.16683890e-2f);
    q = fmaf(q, r, 1.66665211e-1f);
    q = fmaf(q, r, 4.99999940e-1f);
    *n_out = (int32_t)(tnn__f32_bits(t) - 0x4b400000u); /* the bits of round_magic */
    return fmaf(r, fmaf(r, q, 1.0f), 1.0f);
}

/* x raised to -88 if below, a NaN kept (the comparison is false for it). */
static inline float tnn__vexp_lo(float x) { return tnn__sel(x < -88.0f, -88.0f, x); }

static inline float tnn_vexp(float x) {
    int32_t n;
    float xc = tnn__vexp_lo(x);
    xc = tnn__sel(xc > 89.0f, 89.0f, xc);
    float p = tnn__vexp_core(xc, &n); /* n in [-127, 128] */
    int32_t n1 = n >> 1; /* floor(n/2): both halves lie in [-64, 64] */
    float y = (p * tnn__pow2i(n1)) * tnn__pow2i(n - n1);
    return tnn__sel(x < -87.33654f, 0.0f, y); /* results that would be denormal: +0 */
}

/* tnn_vexp for x <= 0 (or NaN), as softmax and attention take it (x minus
 * the row's max): no upper clamp, and 2^n in one factor (n lies in [-127, 0]).
 * Both scalings by powers of two are exact while the result is normal and
 * round once when it is not, so this gives the same bits as tnn_vexp for
 * every x <= 0; a positive x gives a wrong result. */
static inline float tnn_vexp_le0(float x) {
    int32_t n;
    float p = tnn__vexp_core(tnn__vexp_lo(x), &n);
    /* pow2i(-127) is +0: flushed below anyway */
    return tnn__sel(x < -87.33654f, 0.0f, p * tnn__pow2i(n));
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

/* 1 / (1 + e^-x) from one exponential of -|x| (tnn_vexp_le0's range):
 * with e = e^-|x|, 1 / (1 + e) for x >= 0 and e / (1 + e) below, so the
 * result keeps its relative accuracy on both sides. 0 for x < -87.34 (e is
 * flushed), 1 for x > 17; NaN -> NaN. */
static inline float tnn_vsigmoid(float x) {
    float e = tnn_vexp_le0(tnn__f32_from_bits(tnn__f32_bits(x) | 0x80000000u));
    return tnn__sel(x >= 0.0f, 1.0f, e) / (1.0f + e);
}

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

/* The float of a key (tnn__fkey's inverse). */
static inline __attribute__((always_inline)) float tnn__fkey_float(int32_t r) {
    return tnn__f32_from_bits((uint32_t)(r ^ ((r >> 31) & 0x7fffffff)));
}

/* The float of the largest of 8 keys. */
static inline __attribute__((always_inline)) float tnn__fkey_max8(const int32_t m[8]) {
    int32_t r = m[0];
    for (int k = 1; k < 8; k++) r = m[k] > r ? m[k] : r;
    return tnn__fkey_float(r);
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
    return tnn__fkey_max8(m);
}

#endif
