/* test_vmath.c - the vectorizable exp/tanh of src/ops/vmath.h: their maximum
 * error against double exp/tanh over a dense bit-pattern sweep, the edge cases,
 * identical bits from a scalar, SSE2 and AVX2 build of the same loop, and gelu,
 * silu and softmax through the public API against double references.
 * TNN_VMATH_FULL=1 sweeps every float instead of every 37th (about 6e7 points
 * per function by default).
 */
#include "harness.h"
#include "ops/kernels.h"
#include "ops/vmath.h"
#include "quant/quant.h"

#include <float.h>

static float bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* The same loop built three ways: vectorized for AVX2 + FMA, vectorized for the
 * baseline ISA, and kept scalar. */
/* The vectorised loops at -O3 whatever the build's level (GCC; clang has
 * no per-function optimize attribute and vectorises them at -O2). */
#if defined(__GNUC__) && !defined(__clang__)
#define O3 __attribute__((optimize("O3")))
#else
#define O3
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HAVE_AVX2_BUILD 1
__attribute__((target("avx2,fma"), optimize("O3"))) static void exp_avx2(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = tnn_vexp(x[i]);
}
__attribute__((target("avx2,fma"), optimize("O3"))) static void tanh_avx2(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = tnn_vtanh(x[i]);
}
#endif
O3 static void exp_vec(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = tnn_vexp(x[i]);
}
O3 static void tanh_vec(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = tnn_vtanh(x[i]);
}
__attribute__((noinline)) static float exp_scalar(float x) { return tnn_vexp(x); }
__attribute__((noinline)) static float tanh_scalar(float x) { return tnn_vtanh(x); }

enum { BLK = 4096 };

typedef struct {
    double max_rel, max_abs, max_ulp;
    float at_rel;
    long long n, mismatched;
} sweep_t;

/* All floats with bits in [lo, hi] (one sign), every `step`-th; f in {exp, tanh}. */
static void sweep(int is_tanh, uint32_t lo, uint32_t hi, uint32_t step, sweep_t *r) {
    static float x[BLK], yv[BLK], ya[BLK];
    uint32_t b = lo;
#ifdef HAVE_AVX2_BUILD
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    while (b <= hi) {
        int n = 0;
        for (; n < BLK && b <= hi; n++, b = (hi - b < step) ? hi + 1 : b + step) x[n] = bits_f(b);
        if (is_tanh) tanh_vec(x, yv, n); else exp_vec(x, yv, n);
#ifdef HAVE_AVX2_BUILD
        if (avx2) {
            if (is_tanh) tanh_avx2(x, ya, n); else exp_avx2(x, ya, n);
        } else {
            memcpy(ya, yv, sizeof(float) * (size_t)n);
        }
#else
        memcpy(ya, yv, sizeof(float) * (size_t)n);
#endif
        for (int i = 0; i < n; i++) {
            float ys = is_tanh ? tanh_scalar(x[i]) : exp_scalar(x[i]);
            if (f_bits(ys) != f_bits(yv[i]) || f_bits(ys) != f_bits(ya[i])) r->mismatched++;
            double ref = is_tanh ? tanh((double)x[i]) : exp((double)x[i]);
            double err = fabs((double)yv[i] - ref), rel = err / fabs(ref);
            /* ulp of the reference's float binade */
            int e;
            frexp(ref, &e);
            double ulp = ldexp(1.0, e - 24);
            if (rel > r->max_rel) r->max_rel = rel, r->at_rel = x[i];
            if (err > r->max_abs) r->max_abs = err;
            if (err / ulp > r->max_ulp) r->max_ulp = err / ulp;
            r->n++;
        }
    }
}

static void test_sweeps(void) {
    const char *full = getenv("TNN_VMATH_FULL");
    uint32_t step = full && full[0] == '1' ? 1 : 37;
    sweep_t e = {0}, t = {0};
    /* exp over [-87.33654, 88.7228]: positive floats 0..88.7228 and negative 0..-87.33654 */
    sweep(0, 0, f_bits(88.7228f), step, &e);
    sweep(0, 0x80000000u, f_bits(-87.33654f), step, &e);
    printf("exp:  %lld points (every %u-th float), max rel %.3g (at %.9g), max %.3f ulp, "
           "%lld differing between scalar/vector/avx2 builds\n",
           e.n, step, e.max_rel, e.at_rel, e.max_ulp, e.mismatched);
    CHECK(e.max_rel < 2e-7, "exp max relative error %.3g at %.9g", e.max_rel, e.at_rel);
    CHECK(e.mismatched == 0, "exp: %lld results differ between builds", e.mismatched);
    /* tanh over every float in [-20, 20] (tiny ones included) */
    sweep(1, 0, f_bits(20.0f), step, &t);
    sweep(1, 0x80000000u, f_bits(-20.0f), step, &t);
    printf("tanh: %lld points, max rel %.3g (at %.9g), max abs %.3g, max %.3f ulp, "
           "%lld differing between builds\n",
           t.n, t.max_rel, t.at_rel, t.max_abs, t.max_ulp, t.mismatched);
    CHECK(t.max_rel < 3e-7, "tanh max relative error %.3g at %.9g", t.max_rel, t.at_rel);
    CHECK(t.max_abs < 3e-7, "tanh max absolute error %.3g", t.max_abs);
    CHECK(t.mismatched == 0, "tanh: %lld results differ between builds", t.mismatched);
}

static bool same_bits(float a, float b) { return f_bits(a) == f_bits(b); }

static void test_edges(void) {
    float inf = INFINITY, nan = NAN;
    CHECK(same_bits(tnn_vexp(0.0f), 1.0f), "exp(0) = %g", tnn_vexp(0.0f));
    CHECK(same_bits(tnn_vexp(-0.0f), 1.0f), "exp(-0) = %g", tnn_vexp(-0.0f));
    CHECK(same_bits(tnn_vexp(inf), inf), "exp(inf) = %g", tnn_vexp(inf));
    CHECK(same_bits(tnn_vexp(-inf), 0.0f), "exp(-inf) = %g", tnn_vexp(-inf));
    CHECK(isnan(tnn_vexp(nan)) && isnan(tnn_vexp(-nan)), "exp(nan) = %g", tnn_vexp(nan));
    CHECK(same_bits(tnn_vexp(88.8f), inf), "exp(88.8) = %g", tnn_vexp(88.8f));
    CHECK(same_bits(tnn_vexp(1e30f), inf), "exp(1e30) = %g", tnn_vexp(1e30f));
    CHECK(same_bits(tnn_vexp(FLT_MAX), inf), "exp(FLT_MAX) = %g", tnn_vexp(FLT_MAX));
    CHECK(isfinite(tnn_vexp(88.72f)) && tnn_vexp(88.72f) > 3e38f, "exp(88.72) = %g",
          tnn_vexp(88.72f));
    /* below ln(FLT_MIN) the denormal results are flushed to +0 */
    CHECK(same_bits(tnn_vexp(-87.5f), 0.0f), "exp(-87.5) = %g", tnn_vexp(-87.5f));
    CHECK(same_bits(tnn_vexp(-1e30f), 0.0f), "exp(-1e30) = %g", tnn_vexp(-1e30f));
    CHECK(same_bits(tnn_vexp(-FLT_MAX), 0.0f), "exp(-FLT_MAX) = %g", tnn_vexp(-FLT_MAX));
    CHECK(tnn_vexp(-87.33f) >= FLT_MIN, "exp(-87.33) = %g", tnn_vexp(-87.33f));
    CHECK(same_bits(tnn_vexp(1e-30f), 1.0f) && same_bits(tnn_vexp(FLT_TRUE_MIN), 1.0f),
          "exp(tiny) = %g", tnn_vexp(1e-30f));
    CHECK(same_bits(tnn_vexp(1.0f), 2.71828183f) || fabs(tnn_vexp(1.0f) - 2.718281828459045) < 3e-7,
          "exp(1) = %.9g", tnn_vexp(1.0f));

    CHECK(same_bits(tnn_vtanh(0.0f), 0.0f), "tanh(0) = %g", tnn_vtanh(0.0f));
    CHECK(same_bits(tnn_vtanh(-0.0f), -0.0f), "tanh(-0) = %g", tnn_vtanh(-0.0f));
    CHECK(same_bits(tnn_vtanh(inf), 1.0f), "tanh(inf) = %g", tnn_vtanh(inf));
    CHECK(same_bits(tnn_vtanh(-inf), -1.0f), "tanh(-inf) = %g", tnn_vtanh(-inf));
    CHECK(isnan(tnn_vtanh(nan)) && isnan(tnn_vtanh(-nan)), "tanh(nan) = %g", tnn_vtanh(nan));
    CHECK(same_bits(tnn_vtanh(1e30f), 1.0f) && same_bits(tnn_vtanh(-1e30f), -1.0f),
          "tanh(+-1e30) = %g", tnn_vtanh(1e30f));
    CHECK(same_bits(tnn_vtanh(1e-30f), 1e-30f) && same_bits(tnn_vtanh(-FLT_TRUE_MIN), -FLT_TRUE_MIN),
          "tanh(tiny) = %g", tnn_vtanh(1e-30f));
    /* odd symmetry holds bit for bit */
    int asym = 0;
    for (float u = 1e-6f; u < 30.0f; u *= 1.001f) asym += !same_bits(tnn_vtanh(-u), -tnn_vtanh(u));
    CHECK(asym == 0, "tanh(-u) != -tanh(u) at %d points", asym);
    /* monotone across the switch point from the polynomial to the exp form */
    float prev = tnn_vtanh(0.62f);
    int nonmono = 0;
    for (uint32_t b = f_bits(0.62f) + 1; b <= f_bits(0.63f); b++) {
        float v = tnn_vtanh(bits_f(b));
        nonmono += v < prev;
        prev = v;
    }
    CHECK(nonmono == 0, "tanh decreases %d times near the 0.625 switch", nonmono);
}

/* gelu, silu and softmax through the public API against double references. */
static void test_ops(void) {
    enum { N = 4099, COLS = 1031 };
    double *x = malloc(N * sizeof *x), *g = malloc(N * sizeof *g), *si = malloc(N * sizeof *si);
    for (int i = 0; i < N; i++) x[i] = -12.0 + 24.0 * i / (N - 1);
    tnn_session *s = tnn_session_new(0);
    int64_t sh[1] = {N}, sh2[2] = {N / COLS, COLS};
    tnn_tensor *tx = tnn_tensor_new(s, TNN_F32, 1, sh);
    tnn_tensor *tg = tnn_gelu(s, tx), *ts = tnn_silu(s, tx);
    tnn_tensor *tx2 = tnn_tensor_new(s, TNN_F32, 2, sh2);
    tnn_tensor *tsm = tnn_softmax(s, tx2);
    CHECK(tg && ts && tsm, "builders: %s", tnn_last_error());
    if (!(tg && ts && tsm)) goto out;
    tnn_set_output(tg);
    tnn_set_output(ts);
    CHECK_OK(tnn_realize(s, tsm));
    CHECK_OK(tnn_upload_from_float_array(s, tx, x, N));
    double *x2 = malloc((size_t)(N / COLS) * COLS * sizeof *x2), *sm = malloc((size_t)N * sizeof *sm);
    for (int i = 0; i < (N / COLS) * COLS; i++) x2[i] = 30.0 * sin(0.37 * i);
    CHECK_OK(tnn_upload_from_float_array(s, tx2, x2, (size_t)(N / COLS) * COLS));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, tg, g, N));
    CHECK_OK(tnn_download_to_f64_array(s, ts, si, N));
    CHECK_OK(tnn_download_to_f64_array(s, tsm, sm, (size_t)(N / COLS) * COLS));
    double U = ldexp(1.0, -24), wg = 0, ws = 0, wsm = 0;
    const double c = sqrt(2.0 / 3.14159265358979323846);
    for (int i = 0; i < N; i++) {
        double xf = (float)x[i];
        double rg = 0.5 * xf * (1.0 + tanh(c * (xf + 0.044715 * xf * xf * xf)));
        double rs = xf / (1.0 + exp(-xf));
        double eg = fabs(g[i] - rg) / (U * fabs(xf) + FLT_MIN);
        double es = fabs(si[i] - rs) / (U * fabs(rs) + FLT_MIN);
        wg = eg > wg ? eg : wg;
        ws = es > ws ? es : ws;
    }
    for (int r = 0; r < N / COLS; r++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < COLS; j++) mx = fmax(mx, (float)x2[r * COLS + j]);
        for (int j = 0; j < COLS; j++) sum += exp((float)x2[r * COLS + j] - mx);
        for (int j = 0; j < COLS; j++) {
            double ref = exp((float)x2[r * COLS + j] - mx) / sum;
            /* x - mx rounds in f32: up to U |x - mx| relative error in e^(x - mx) */
            double d = fabs((float)x2[r * COLS + j] - mx);
            double e = fabs(sm[r * COLS + j] - ref) / (U * (1.0 + d) * ref + FLT_MIN);
            wsm = e > wsm ? e : wsm;
        }
    }
    printf("ops: gelu worst %.2f U|x|, silu worst %.2f U|ref|, softmax worst %.2f U(1+|x-max|)|ref|\n", wg,
           ws, wsm);
    CHECK(wg <= 8, "gelu error %.2f U|x|", wg);
    CHECK(ws <= 6, "silu error %.2f U|ref|", ws);
    CHECK(wsm <= 8, "softmax error %.2f U(1+|x-max|)|ref|", wsm);
    free(x2), free(sm);
out:
    tnn_session_free(s);
    free(x), free(g), free(si);
}

/* The fixed-order row reductions: the max equals a plain scan (NaN comes
 * out), the sums are within double rounding of the exact value and follow
 * the documented lane order exactly. */
static void test_reductions(void) {
    float x[301];
    th_seed(5);
    for (int n = 1; n <= 301; n += (n < 40 ? 1 : 37)) {
        for (int i = 0; i < n; i++) x[i] = (float)th_sym(100.0) - 50.0f;
        float m = x[0];
        for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
        CHECK(tnn_vmax(x, n) == m, "n=%d: max %g, want %g", n, tnn_vmax(x, n), m);
        double lanes[8] = {0}, exact = 0, sq[8] = {0};
        for (int i = 0; i < n; i++) {
            lanes[i % 8] += (double)x[i];
            sq[i % 8] += (double)x[i] * (double)x[i];
            exact += (double)x[i];
        }
        double want = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
                      ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        double want2 = ((sq[0] + sq[1]) + (sq[2] + sq[3])) + ((sq[4] + sq[5]) + (sq[6] + sq[7]));
        CHECK(tnn_vsum_d(x, n) == want, "n=%d: sum not in lane order", n);
        CHECK(tnn_vdot_d(x, x, n) == want2, "n=%d: sum of squares not in lane order", n);
        CHECK(fabs(tnn_vsum_d(x, n) - exact) <= 1e-9 * (1 + fabs(exact)), "n=%d: sum off", n);
    }
    /* all negative, signed zeros, infinities, NaN */
    float neg[5] = {-3, -1, -7, -2, -9};
    CHECK(tnn_vmax(neg, 5) == -1.0f, "all-negative max %g", tnn_vmax(neg, 5));
    float z[3] = {-0.0f, 0.0f, -0.0f};
    CHECK(tnn_vmax(z, 3) == 0.0f && !signbit(tnn_vmax(z, 3)), "max of signed zeros");
    float inf[4] = {-INFINITY, 1, INFINITY, 2};
    CHECK(tnn_vmax(inf, 4) == INFINITY, "max with +inf");
    float nan[11] = {1, 2, 3, 4, 5, 6, 7, 8, NAN, 10, 11};
    CHECK(isnan(tnn_vmax(nan, 11)), "a NaN in the row comes out of the max");
}

/* tnn_vexp_le0 gives tnn_vexp's bits for every x <= 0 (every 97th float of
 * the negative half, the edges, NaN), in a scalar and an AVX2 build. */
#ifdef HAVE_AVX2_BUILD
__attribute__((target("avx2,fma"), optimize("O3"))) static void exp_le0_avx2(const float *x, float *y,
                                                                          int n) {
    for (int i = 0; i < n; i++) y[i] = tnn_vexp_le0(x[i]);
}
#endif
__attribute__((noinline)) static float exp_le0_scalar(float x) { return tnn_vexp_le0(x); }

static void test_exp_le0(void) {
    static float x[BLK], ya[BLK];
    long long bad = 0, n_all = 0;
    for (uint64_t b = 0x80000000u; b <= 0xff800000u;) {
        int n = 0;
        for (; n < BLK && b <= 0xff800000u; n++, b += 97) x[n] = bits_f((uint32_t)b);
#ifdef HAVE_AVX2_BUILD
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) exp_le0_avx2(x, ya, n);
        else
#endif
            for (int i = 0; i < n; i++) ya[i] = exp_le0_scalar(x[i]);
        for (int i = 0; i < n; i++) {
            uint32_t want = f_bits(exp_scalar(x[i]));
            bad += f_bits(exp_le0_scalar(x[i])) != want || f_bits(ya[i]) != want;
        }
        n_all += n;
    }
    float edge[4] = {-0.0f, -87.33654f, -88.0f, -INFINITY};
    for (int i = 0; i < 4; i++) bad += f_bits(exp_le0_scalar(edge[i])) != f_bits(exp_scalar(edge[i]));
    CHECK(isnan(exp_le0_scalar(NAN)), "NaN stays NaN");
    CHECK(bad == 0, "tnn_vexp_le0 differs from tnn_vexp at %lld of %lld points", bad, n_all);
}

/* layer_norm_back's row sums: the AVX2 loop (three chains side by side) and
 * the portable passes (TNN_KERNEL=scalar) give the same bits, on widths
 * with and without a tail of 8, and both agree with a double reference. */
static void test_layer_norm_back_kernels(void) {
    static const int widths[] = {1, 7, 8, 9, 63, 100, 1031};
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
        int n = widths[w], rows = 3;
        size_t len = (size_t)rows * n;
        float *x = malloc(len * sizeof *x), *g = malloc(len * sizeof *g);
        float *d0 = malloc(len * sizeof *d0), *d1 = malloc(len * sizeof *d1);
        for (size_t i = 0; i < len; i++) x[i] = (float)th_sym(3.0) + 0.5f, g[i] = (float)th_sym(1.0);
        /* the sums themselves, bit for bit, in every kernel, on values of
         * magnitudes 2^-40 .. 2^40 (double sums of like floats are exact
         * in any order, so these are what tell the orders apart) */
        float *xw = malloc(len * sizeof *xw), *gw = malloc(len * sizeof *gw);
        for (size_t i = 0; i < len; i++) {
            xw[i] = (float)ldexp(th_sym(1.0), (int)(th_uniform() * 80) - 40);
            gw[i] = (float)ldexp(th_sym(1.0), (int)(th_uniform() * 80) - 40);
        }
        for (int kid = 0; kid < TNN_QK_COUNT; kid++) {
            if (!tnn__quant_kernel_supported(kid)) continue;
            CHECK_OK(tnn__quant_set_kernel(kid));
            double sx, sg, sgx;
            tnn__k_ln_sums(xw, gw, len, &sx, &sg, &sgx);
            CHECK(sx == tnn_vsum_d(xw, len) && sg == tnn_vsum_d(gw, len) &&
                      sgx == tnn_vdot_d(gw, xw, len),
                  "n=%d: kernel %s: row sums not in the lane order", (int)len,
                  tnn__quant_kernel_name(kid));
        }
        free(xw), free(gw);
        CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
        tnn__k_layer_norm_back(g, x, d0, rows, n, 1e-5);
        if (tnn__quant_kernel_supported(TNN_QK_AVX2)) {
            CHECK_OK(tnn__quant_set_kernel(TNN_QK_AVX2));
            tnn__k_layer_norm_back(g, x, d1, rows, n, 1e-5);
            CHECK(memcmp(d0, d1, len * sizeof *d0) == 0, "n=%d: avx2 and portable sums differ", n);
        }
        CHECK_OK(tnn__quant_set_kernel(TNN_QK_AUTO));
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * n, *gr = g + (size_t)r * n;
            double m = 0, v = 0, mg = 0, mgx = 0;
            for (int j = 0; j < n; j++) m += xr[j];
            m /= n;
            for (int j = 0; j < n; j++) v += (xr[j] - m) * (xr[j] - m);
            double rs = 1.0 / sqrt(v / n + 1e-5);
            for (int j = 0; j < n; j++) mg += gr[j], mgx += gr[j] * (xr[j] - m) * rs;
            mg /= n, mgx /= n;
            double worst = 0;
            for (int j = 0; j < n; j++) {
                double xh = (xr[j] - m) * rs, want = rs * (gr[j] - mg - xh * mgx);
                double bound = 1e-5 * (rs * (fabs(gr[j]) + fabs(mg)) + fabs(xh * mgx) * rs) + 1e-30;
                double e = fabs(d0[(size_t)r * n + j] - want) / bound;
                if (e > worst) worst = e;
            }
            CHECK(worst <= 1.0, "n=%d row %d: layer_norm_back vs double: %g of the bound", n, r,
                  worst);
        }
        free(x), free(g), free(d0), free(d1);
    }
}

int main(void) {
    test_reductions();
    test_exp_le0();
    test_edges();
    test_sweeps();
    test_ops();
    test_layer_norm_back_kernels();
    return th_finish("test_vmath");
}
