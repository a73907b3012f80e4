/* test_ops.c - every graph op against a double-precision reference written here, every backward
 * op (and the matmul family's backward rule) against finite differences in double, and long or
 * random graphs that exercise buffer reuse; public API only. */
#include "harness.h"

#include <float.h>
#include <stdbool.h>

/* Inputs are exactly representable in f32 (th_fill_f32), so a reference sees what the library
 * sees and a tolerance only has to cover the library's own f32 rounding. Each tolerance is
 * stated where it is used, in units of U = 2^-24. TNN_TEST_VERBOSE=1 prints every check's
 * worst error as a fraction of its tolerance. */

#define U (1.0 / 16777216.0) /* f32 unit roundoff: |fl(v) - v| <= U|v| for one rounding */

/* Gradient checks: |op - fd| <= GRAD_RTOL * (|fd| + scale) + noise, where `scale` is the size
 * of the terms the op's f32 formula adds or cancels (so cancellation, inherent to f32, is
 * allowed for, and nothing more) and `noise` the finite differences' roundoff floor (see
 * fd_gradient; it only matters for gradients near 1e-11). The f32 error is at most ~1e-6 *
 * scale (gelu_back near |x| = 4.5: 1 - tanh^2 of a rounded tanh), typically less; the finite
 * differences (central, one Richardson step, in double) are good to ~1e-10. A wrong formula is off
 * by O(1). */
#define GRAD_RTOL 1e-5

static bool verbose;

/* ------------------------------------------------------------------------ */
/* Shapes                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    int nd;
    int64_t d[TNN_MAX_DIMS];
} shape_t;

/* For the case tables (brace initializers); shp() makes one in an expression. */
#define S1(a)                                                                                      \
    {                                                                                              \
        1, { a }                                                                                   \
    }
#define S2(a, b)                                                                                   \
    {                                                                                              \
        2, { a, b }                                                                                \
    }
#define S3(a, b, c)                                                                                \
    {                                                                                              \
        3, { a, b, c }                                                                             \
    }
#define S4(a, b, c, d)                                                                             \
    {                                                                                              \
        4, { a, b, c, d }                                                                          \
    }
#define NOBATCH                                                                                    \
    {                                                                                              \
        0, { 0 }                                                                                   \
    }

static shape_t shp(int nd, int64_t a, int64_t b, int64_t c, int64_t d) {
    shape_t s = {nd, {a, b, c, d}};
    return s;
}

static size_t numel(shape_t s) {
    size_t n = 1;
    for (int i = 0; i < s.nd; i++) n *= (size_t)s.d[i];
    return n;
}

/* "(3, 1)"; rotating buffers, so a few can appear in one printf. */
static const char *sstr(shape_t s) {
    static char bufs[8][64];
    static int k;
    char *b = bufs[k++ % 8];
    int off = snprintf(b, 64, "(");
    for (int i = 0; i < s.nd; i++)
        off += snprintf(b + off, 64 - off, i ? ", %lld" : "%lld", (long long)s.d[i]);
    snprintf(b + off, 64 - off, ")");
    return b;
}

static shape_t shape_of(const tnn_tensor *t) {
    shape_t s = {0, {0}};
    int nd = tnn_tensor_ndim(t);
    if (nd < 1 || nd > TNN_MAX_DIMS) return s;
    s.nd = nd;
    for (int i = 0; i < nd; i++) s.d[i] = tnn_tensor_dim(t, i);
    return s;
}

static bool same_shape(shape_t a, shape_t b) {
    if (a.nd != b.nd) return false;
    for (int i = 0; i < a.nd; i++)
        if (a.d[i] != b.d[i]) return false;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Comparisons                                                              */
/* ------------------------------------------------------------------------ */

/* |got[i] - ref[i]| <= bound[i] for every i; a NaN fails, a bound of 0 demands equality. */
static void expect_bounded(const char *what, const double *got, const double *ref,
                           const double *bound, size_t n) {
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(got[i] - ref[i]);
        double r = e == 0.0 ? 0.0 : e / bound[i];
        if (isnan(r)) r = INFINITY;
        if (r > worst) {
            worst = r;
            wi = i;
        }
    }
    CHECK(worst <= 1.0,
          "%s: error is %.3g x the tolerance at [%zu]: got %.9g, want %.9g (bound %.3g)", what,
          worst, wi, got[wi], ref[wi], bound[wi]);
    if (verbose) printf("  %-72s %.3g\n", what, worst);
}

/* |got - ref| <= atol + rtol |ref|. */
static void expect_close(const char *what, const double *got, const double *ref, size_t n,
                         double atol, double rtol) {
    double *b = th_alloc(n);
    for (size_t i = 0; i < n; i++) b[i] = atol + rtol * fabs(ref[i]);
    expect_bounded(what, got, ref, b, n);
    free(b);
}

/* Bit-for-bit (copies: transpose, get_rows). */
static void expect_equal(const char *what, const double *got, const double *ref, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!(got[i] == ref[i]) || signbit(got[i]) != signbit(ref[i])) {
            if (!bad) first = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu values differ, first [%zu]: got %.9g, want %.9g", what, bad, n,
          first, got[first], ref[first]);
    if (verbose) printf("  %-72s %s\n", what, bad ? "DIFFERS" : "exact");
}

/* Gradient check, see GRAD_RTOL; `noise` is the finite differences' own roundoff floor. */
static void expect_grad(const char *what, const double *got, const double *fd, const double *noise,
                        const double *scale, size_t n) {
    double *b = th_alloc(n);
    for (size_t i = 0; i < n; i++) b[i] = GRAD_RTOL * (fabs(fd[i]) + scale[i]) + noise[i];
    expect_bounded(what, got, fd, b, n);
    free(b);
}

/* ------------------------------------------------------------------------ */
/* Graph helpers (each failure is a failed check)                           */
/* ------------------------------------------------------------------------ */

static tnn_tensor *leaf(tnn_session *s, shape_t sh) {
    tnn_tensor *t = tnn_tensor_new(s, TNN_F32, sh.nd, sh.d);
    CHECK(t != NULL, "tnn_tensor_new %s: %s", sstr(sh), tnn_last_error());
    return t;
}

/* The builder gave a tensor of the expected shape. */
static bool result_ok(const char *what, const tnn_tensor *t, shape_t want) {
    CHECK(t != NULL, "%s: the builder returned NULL: %s", what, tnn_last_error());
    if (!t) return false;
    shape_t got = shape_of(t);
    CHECK(same_shape(got, want), "%s: result shape %s, want %s", what, sstr(got), sstr(want));
    return same_shape(got, want);
}

static bool put(tnn_session *s, tnn_tensor *t, const double *v) {
    int rc = tnn_upload_from_float_array(s, t, v, (size_t)tnn_tensor_nelements(t));
    CHECK(rc == TNN_OK, "tnn_upload_from_float_array: %s", tnn_last_error());
    return rc == TNN_OK;
}

static bool put_idx(tnn_session *s, tnn_tensor *t, const int64_t *v) {
    int rc = tnn_upload_from_int_array(s, t, v, (size_t)tnn_tensor_nelements(t));
    CHECK(rc == TNN_OK, "tnn_upload_from_int_array: %s", tnn_last_error());
    return rc == TNN_OK;
}

static bool get(tnn_session *s, tnn_tensor *t, double *v) {
    int rc = tnn_download_to_f64_array(s, t, v, (size_t)tnn_tensor_nelements(t));
    CHECK(rc == TNN_OK, "tnn_download_to_f64_array: %s", tnn_last_error());
    return rc == TNN_OK;
}

static bool realize(tnn_session *s, tnn_tensor *t) {
    int rc = tnn_realize(s, t);
    CHECK(rc == TNN_OK, "tnn_realize: %s", tnn_last_error());
    return rc == TNN_OK;
}

/* Computes twice: a kernel must overwrite its output, not accumulate into it (the arena is
 * zeroed when it is allocated, so only a second run shows that). */
static bool compute(tnn_session *s) {
    int rc = tnn_compute(s);
    if (rc == TNN_OK) rc = tnn_compute(s);
    CHECK(rc == TNN_OK, "tnn_compute: %s", tnn_last_error());
    return rc == TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Double-precision references                                              */
/* ------------------------------------------------------------------------ */

static double ref_gelu(double x) {
    const double c = sqrt(2.0 / 3.14159265358979323846);
    return 0.5 * x * (1.0 + tanh(c * (x + 0.044715 * x * x * x)));
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

/* Max-subtracted softmax of one row. */
static void ref_softmax_row(const double *x, double *y, size_t n) {
    double m = x[0], sum = 0.0;
    for (size_t j = 1; j < n; j++) m = x[j] > m ? x[j] : m;
    for (size_t j = 0; j < n; j++) sum += (y[j] = exp(x[j] - m));
    for (size_t j = 0; j < n; j++) y[j] /= sum;
}

/* 1 / sqrt(mean(x^2) + eps) of one row. */
static double ref_rms_inv(const double *x, size_t n, double eps) {
    double ss = 0.0;
    for (size_t j = 0; j < n; j++) ss += x[j] * x[j];
    return 1.0 / sqrt(ss / (double)n + eps);
}

/* NumPy broadcasting: the result shape of a and b (the cases are valid). */
static shape_t bcast_shape(shape_t a, shape_t b) {
    shape_t o = {a.nd > b.nd ? a.nd : b.nd, {0}};
    for (int i = 0; i < o.nd; i++) {
        int ia = i - (o.nd - a.nd), ib = i - (o.nd - b.nd);
        int64_t da = ia >= 0 ? a.d[ia] : 1, db = ib >= 0 ? b.d[ib] : 1;
        o.d[i] = da > db ? da : db;
    }
    return o;
}

/* Flat index in `in` of the element that broadcasts to flat index `o` of `out`. */
static size_t bcast_src(shape_t out, shape_t in, size_t o) {
    int64_t c[TNN_MAX_DIMS];
    for (int i = out.nd - 1; i >= 0; i--) {
        c[i] = (int64_t)(o % (size_t)out.d[i]);
        o /= (size_t)out.d[i];
    }
    size_t f = 0;
    for (int j = 0; j < in.nd; j++)
        f = f * (size_t)in.d[j] + (size_t)(in.d[j] == 1 ? 0 : c[j + out.nd - in.nd]);
    return f;
}

/* ------------------------------------------------------------------------ */
/* 1. Forward ops against references                                        */
/* ------------------------------------------------------------------------ */

/* add, sub, mul: one IEEE operation on f32 inputs, so the result is the exact value correctly
 * rounded: tolerance U|ref| (exact zeros must be exact). */
static void test_binary(void) {
    static const struct {
        shape_t a, b;
    } cases[] = {
        {S1(1), S1(1)},
        {S2(7, 33), S2(7, 33)},
        {S3(3, 5, 127), S3(3, 5, 127)},
        {S2(127, 513), S2(127, 513)}, /* large enough to be split over threads */
        {S2(3, 1), S2(1, 4)},
        {S2(7, 1), S2(1, 7)}, /* equal element counts, different shapes */
        {S1(33), S2(33, 1)},
        {S3(2, 3, 4), S1(4)},
        {S2(5, 7), S2(1, 7)},
        {S1(7), S2(5, 7)}, /* lower rank on the left */
        {S2(33, 1), S1(513)},
        {S2(127, 513), S2(127, 1)},
        {S1(1), S3(3, 7, 33)}, /* a scalar-like operand */
        {S4(2, 1, 3, 1), S3(5, 1, 7)},
        {S4(1, 3, 1, 33), S4(2, 1, 7, 1)},
        {S4(2, 3, 7, 33), S4(2, 3, 7, 1)},
    };
    static const char *names[3] = {"tnn_add", "tnn_sub", "tnn_mul"};
    tnn_tensor *(*const fns[3])(tnn_session *, tnn_tensor *, tnn_tensor *) = {tnn_add, tnn_sub,
                                                                              tnn_mul};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shape_t sa = cases[c].a, sb = cases[c].b, so = bcast_shape(sa, sb);
        size_t na = numel(sa), nb = numel(sb), no = numel(so);
        double *a = th_alloc(na), *b = th_alloc(nb), *got = th_alloc(no), *ref = th_alloc(no);
        th_fill_f32(a, na, 4.0);
        th_fill_f32(b, nb, 4.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *ta = leaf(s, sa), *tb = leaf(s, sb), *r[3] = {NULL, NULL, NULL};
        bool ok = ta && tb;
        char what[160];
        for (int op = 0; op < 3 && ok; op++) {
            snprintf(what, sizeof what, "%s %s, %s", names[op], sstr(sa), sstr(sb));
            r[op] = fns[op](s, ta, tb);
            ok = result_ok(what, r[op], so);
            if (ok) tnn_set_output(r[op]);
        }
        ok = ok && realize(s, r[2]) && put(s, ta, a) && put(s, tb, b) && compute(s);
        for (int op = 0; op < 3 && ok; op++) {
            if (!get(s, r[op], got)) break;
            for (size_t i = 0; i < no; i++) {
                double x = a[bcast_src(so, sa, i)], y = b[bcast_src(so, sb, i)];
                ref[i] = op == 0 ? x + y : op == 1 ? x - y : x * y;
            }
            snprintf(what, sizeof what, "%s %s, %s -> %s", names[op], sstr(sa), sstr(sb), sstr(so));
            expect_close(what, got, ref, no, 0.0, U);
        }
        tnn_session_free(s);
        free(a), free(b), free(got), free(ref);
    }
}

/* scale: a * (float)k, one rounding: tolerance U|ref| with ref = a * (double)(float)k. */
static void test_scale(void) {
    static const shape_t shapes[] = {S1(1), S2(7, 33), S3(3, 5, 127), S2(127, 513)};
    static const double ks[] = {0.1, -3.5, 0.0, 1e-3, 1.0 / 3.0};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
            shape_t sh = shapes[c];
            size_t n = numel(sh);
            double *x = th_alloc(n), *got = th_alloc(n), *ref = th_alloc(n);
            th_fill_f32(x, n, 100.0);
            tnn_session *s = tnn_session_new(TH_BACKEND);
            tnn_tensor *tx = leaf(s, sh), *r = tx ? tnn_scale(s, tx, ks[q]) : NULL;
            char what[160];
            snprintf(what, sizeof what, "tnn_scale %s by %g", sstr(sh), ks[q]);
            if (result_ok(what, r, sh) && realize(s, r) && put(s, tx, x) && compute(s) &&
                get(s, r, got)) {
                for (size_t i = 0; i < n; i++) ref[i] = x[i] * (double)(float)ks[q];
                expect_close(what, got, ref, n, 0.0, U);
            }
            tnn_session_free(s);
            free(x), free(got), free(ref);
        }
    }
}

/* Values where gelu and silu change regime; planted at the start of every input. */
static const double unary_specials[] = {0.0,  -0.0,  1e-3, -1e-3, 0.5,   -0.75,  1.0,  -1.0,
                                        3.0,  -3.0,  8.0,  -8.0,  10.0,  -10.0,  20.0, -20.0,
                                        40.0, -40.0, 87.0, -87.0, 100.0, -100.0, 1e4,  -1e4};
#define N_SPECIALS (sizeof unary_specials / sizeof unary_specials[0])

static void fill_unary_input(double *x, size_t n, double r) {
    th_fill_f32(x, n, r);
    for (size_t i = 0; i < n && i < N_SPECIALS; i++) x[i] = unary_specials[i];
}

/* gelu and silu.
 * gelu = 0.5 x (1 + t): the f32 error of t (tanhf, and the rounded argument through
 *   tanh' = 1 - t^2) is absolute, on the scale of 1, and is multiplied by 0.5|x|; adding the
 *   roundings of 1 + t and of the products gives at most ~5.2 U |x|. Tolerance 8 U |x|.
 * silu = x / (1 + exp(-x)): every step keeps its relative accuracy (expf < 1 ulp, then three
 *   roundings), at most ~5 U |ref|. Tolerance 6 U |ref|.
 * Both: + FLT_MIN, so results in f32's subnormal range (silu(-100) ~ -4e-42) may flush. */
static void test_gelu_silu(void) {
    static const shape_t shapes[] = {S1(1),       S1(N_SPECIALS), S2(3, 7),
                                     S2(33, 127), S3(2, 3, 513),  S4(2, 1, 7, 33)};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        shape_t sh = shapes[c];
        size_t n = numel(sh);
        double *x = th_alloc(n), *g = th_alloc(n), *si = th_alloc(n), *ref = th_alloc(n),
               *bound = th_alloc(n);
        fill_unary_input(x, n, 8.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh);
        tnn_tensor *rg = tx ? tnn_gelu(s, tx) : NULL, *rs = tx ? tnn_silu(s, tx) : NULL;
        char wg[160], ws[160];
        snprintf(wg, sizeof wg, "tnn_gelu %s", sstr(sh));
        snprintf(ws, sizeof ws, "tnn_silu %s", sstr(sh));
        bool ok = (int)result_ok(wg, rg, sh) & (int)result_ok(ws, rs, sh); /* both run */
        if (ok) tnn_set_output(rg);
        if (ok && realize(s, rs) && put(s, tx, x) && compute(s) && get(s, rg, g) &&
            get(s, rs, si)) {
            for (size_t i = 0; i < n; i++) {
                ref[i] = ref_gelu(x[i]);
                bound[i] = 8 * U * fabs(x[i]) + FLT_MIN;
            }
            expect_bounded(wg, g, ref, bound, n);
            for (size_t i = 0; i < n; i++) {
                ref[i] = ref_silu(x[i]);
                bound[i] = 6 * U * fabs(ref[i]) + FLT_MIN;
            }
            expect_bounded(ws, si, ref, bound, n);
        }
        tnn_session_free(s);
        free(x), free(g), free(si), free(ref), free(bound);
    }
}

/* Row generators for softmax. */
enum {
    ROW_NORMAL,
    ROW_WIDE,
    ROW_HUGE,
    ROW_HIGH,
    ROW_LOW,
    ROW_CONST,
    ROW_KINDS,
    ROW_MIXED = ROW_KINDS
};
static const char *row_kind_name[] = {"+-5",     "+-30",      "+-1e4", "1e4+-8",
                                      "-1e4+-8", "const 1e4", "mixed"};

static void fill_row(double *x, size_t n, int kind) {
    for (size_t j = 0; j < n; j++) {
        double v;
        switch (kind) {
        case ROW_NORMAL:
            v = th_sym(5.0);
            break;
        case ROW_WIDE:
            v = th_sym(30.0);
            break;
        case ROW_HUGE:
            v = th_sym(1e4);
            break;
        case ROW_HIGH:
            v = 1e4 + th_sym(8.0);
            break;
        case ROW_LOW:
            v = -1e4 + th_sym(8.0);
            break;
        default:
            v = 1e4;
            break;
        }
        x[j] = (double)(float)v;
    }
}

/* softmax. Per element, the f32 kernel's error is at most U y_j (6 + |x_j - m| + E), E =
 * sum_k y_k |x_k - m|, m the row max: the rounding of x_j - m is amplified by exp (|x_j - m| U),
 * expf (< 2 U), the row sum carries the weighted mean of those (E + 2 U), then 1/sum and the
 * product. Tolerance U y_j (8 + |x_j - m| + E) + FLT_MIN (subnormal results may flush).
 * Rows of +-1e4, or shifted by +-1e4, need the max subtraction (exp(1e4) overflows); a
 * 1-column softmax must be exactly 1. */
static void test_softmax(void) {
    static const struct {
        shape_t sh;
        int kind;
    } cases[] = {
        {S2(1, 1), ROW_NORMAL},     {S2(7, 1), ROW_MIXED},    {S1(7), ROW_HIGH},
        {S2(3, 7), ROW_MIXED},      {S2(33, 127), ROW_MIXED}, {S2(6, 513), ROW_MIXED},
        {S2(127, 33), ROW_NORMAL},  {S2(513, 3), ROW_WIDE},   {S3(2, 3, 33), ROW_MIXED},
        {S4(2, 2, 3, 7), ROW_HUGE}, {S2(3, 513), ROW_LOW},    {S2(2, 127), ROW_CONST},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shape_t sh = cases[c].sh;
        size_t n = numel(sh), cols = (size_t)sh.d[sh.nd - 1], rows = n / cols;
        double *x = th_alloc(n), *got = th_alloc(n), *ref = th_alloc(n), *bound = th_alloc(n);
        for (size_t r = 0; r < rows; r++)
            fill_row(x + r * cols, cols,
                     cases[c].kind == ROW_MIXED ? (int)(r % ROW_KINDS) : cases[c].kind);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *ty = tx ? tnn_softmax(s, tx) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_softmax %s, rows %s", sstr(sh),
                 row_kind_name[cases[c].kind]);
        if (result_ok(what, ty, sh) && realize(s, ty) && put(s, tx, x) && compute(s) &&
            get(s, ty, got)) {
            for (size_t r = 0; r < rows; r++) {
                const double *xr = x + r * cols;
                double *yr = ref + r * cols, m = xr[0], e = 0.0;
                ref_softmax_row(xr, yr, cols);
                for (size_t j = 1; j < cols; j++) m = xr[j] > m ? xr[j] : m;
                for (size_t j = 0; j < cols; j++) e += yr[j] * (m - xr[j]);
                for (size_t j = 0; j < cols; j++)
                    bound[r * cols + j] = U * yr[j] * (8.0 + (m - xr[j]) + e) + FLT_MIN;
            }
            expect_bounded(what, got, ref, bound, n);
            if (cols == 1) expect_equal("tnn_softmax of one column is exactly 1", got, ref, n);
        }
        tnn_session_free(s);
        free(x), free(got), free(ref), free(bound);
    }
}

/* transpose: a copy, so bit-exact. Sizes straddle the kernel's 32-wide tiles. A vector (n) is
 * a (1, n) row and becomes (n, 1). */
static void test_transpose(void) {
    static const shape_t shapes[] = {S2(1, 1),      S2(1, 7),      S2(7, 1),        S2(33, 127),
                                     S2(127, 33),   S2(513, 3),    S2(65, 97),      S3(3, 33, 7),
                                     S3(2, 1, 513), S3(5, 64, 31), S4(2, 3, 7, 33), S1(7),
                                     S1(513)};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        shape_t sh = shapes[c], so = sh;
        if (sh.nd == 1) {
            so = shp(2, sh.d[0], 1, 0, 0);
        } else {
            so.d[sh.nd - 2] = sh.d[sh.nd - 1];
            so.d[sh.nd - 1] = sh.d[sh.nd - 2];
        }
        size_t n = numel(sh);
        size_t rows = sh.nd == 1 ? 1 : (size_t)sh.d[sh.nd - 2], cols = (size_t)sh.d[sh.nd - 1];
        double *x = th_alloc(n), *got = th_alloc(n), *ref = th_alloc(n);
        th_fill_f32(x, n, 10.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *r = tx ? tnn_transpose(s, tx) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_transpose %s -> %s", sstr(sh), sstr(so));
        if (result_ok(what, r, so) && realize(s, r) && put(s, tx, x) && compute(s) &&
            get(s, r, got)) {
            for (size_t b = 0; b < n / (rows * cols); b++)
                for (size_t i = 0; i < rows; i++)
                    for (size_t j = 0; j < cols; j++)
                        ref[b * rows * cols + j * rows + i] = x[b * rows * cols + i * cols + j];
            expect_equal(what, got, ref, n);
        }
        tnn_session_free(s);
        free(x), free(got), free(ref);
    }
}

/* rms_norm: the row's sum of squares is in double; then 1/sqrt rounded to f32 and one or two
 * f32 products: at most 3 roundings, tolerance 4 U |ref| (+ FLT_MIN so exact zeros pass only as
 * zeros of the same order). gamma (cols), (1, cols) or NULL; eps 0 on nonzero rows; an all-zero
 * row (output exactly 0, thanks to eps); a small-magnitude tensor where eps dominates. */
enum { G_NONE, G_VEC, G_ROW };
static void test_rms_norm(void) {
    static const struct {
        shape_t sh;
        int gamma;
        double eps, mag;
        int zero_row; /* index of a row set to zeros, or -1 */
    } cases[] = {
        {S2(1, 1), G_VEC, 1e-6, 3.0, -1},    {S2(3, 7), G_ROW, 1e-5, 3.0, -1},
        {S2(7, 33), G_NONE, 1e-6, 3.0, -1},  {S2(5, 513), G_VEC, 0.0, 3.0, -1},
        {S2(127, 127), G_ROW, 1e-5, 3.0, 0}, {S3(2, 3, 33), G_VEC, 1e-6, 3.0, 4},
        {S2(4, 7), G_VEC, 1e-5, 3.0, 1},     {S2(3, 33), G_ROW, 1e-5, 1e-3, -1},
        {S1(127), G_VEC, 1e-6, 50.0, -1},    {S4(2, 2, 3, 7), G_NONE, 1e-5, 3.0, 2},
    };
    static const char *gname[] = {"no gamma", "gamma (cols)", "gamma (1, cols)"};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shape_t sh = cases[c].sh;
        size_t n = numel(sh), cols = (size_t)sh.d[sh.nd - 1], rows = n / cols;
        double eps = cases[c].eps;
        double *x = th_alloc(n), *g = th_alloc(cols), *got = th_alloc(n), *ref = th_alloc(n);
        th_fill_f32(x, n, cases[c].mag);
        th_fill_f32(g, cols, 2.0);
        if (cases[c].zero_row >= 0)
            memset(x + (size_t)cases[c].zero_row * cols, 0, cols * sizeof *x);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *tg = NULL;
        if (cases[c].gamma == G_VEC) tg = leaf(s, shp(1, (int64_t)cols, 0, 0, 0));
        if (cases[c].gamma == G_ROW) tg = leaf(s, shp(2, 1, (int64_t)cols, 0, 0));
        tnn_tensor *r = tx ? tnn_rms_norm(s, tx, tg, eps) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_rms_norm %s, %s, eps %g%s", sstr(sh),
                 gname[cases[c].gamma], eps, cases[c].zero_row >= 0 ? ", a zero row" : "");
        if (result_ok(what, r, sh) && realize(s, r) && put(s, tx, x) && (!tg || put(s, tg, g)) &&
            compute(s) && get(s, r, got)) {
            for (size_t i = 0; i < rows; i++) {
                const double *xr = x + i * cols;
                double inv = cases[c].zero_row == (int)i ? 0.0 : ref_rms_inv(xr, cols, eps);
                for (size_t j = 0; j < cols; j++)
                    ref[i * cols + j] = xr[j] * inv * (tg ? g[j] : 1.0);
            }
            expect_close(what, got, ref, n, FLT_MIN, 4 * U);
        }
        tnn_session_free(s);
        free(x), free(g), free(got), free(ref);
    }
}

static void fill_indices(int64_t *idx, size_t n, int64_t V) {
    for (size_t i = 0; i < n; i++) idx[i] = (int64_t)(th_uniform() * (double)V);
    idx[0] = V - 1; /* both ends of the table, and a repeat */
    if (n > 1) idx[n - 1] = 0;
    if (n > 2) idx[n / 2] = idx[1];
}

/* get_rows: a copy, bit-exact. get_rows_back: each output element is an f32 sum of the c
 * rows scattered to it (c = that index's count): at most c - 1 roundings, tolerance
 * c U sum|terms| (rows never indexed must be exactly 0). */
static void test_get_rows(void) {
    static const struct {
        int V, d, n;
    } cases[] = {{1, 1, 1},      {1, 7, 5}, {7, 3, 5},    {33, 513, 7},
                 {127, 33, 127}, {3, 7, 1}, {5, 127, 513}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t V = (size_t)cases[c].V, d = (size_t)cases[c].d, n = (size_t)cases[c].n;
        double *tab = th_alloc(V * d), *dout = th_alloc(n * d), *g1 = th_alloc(n * d),
               *r1 = th_alloc(n * d), *g2 = th_alloc(V * d), *r2 = th_alloc(V * d),
               *b2 = th_alloc(V * d);
        int64_t *idx = calloc(n, sizeof *idx);
        th_fill_f32(tab, V * d, 10.0);
        th_fill_f32(dout, n * d, 10.0);
        fill_indices(idx, n, (int64_t)V);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tt = tnn_input_2d_f32(s, (int)V, (int)d), *ti = tnn_input_1d_i32(s, (int)n);
        tnn_tensor *td = tnn_input_2d_f32(s, (int)n, (int)d),
                   *tshape = tnn_input_2d_f32(s, (int)V, (int)d);
        CHECK(tt && ti && td && tshape, "inputs: %s", tnn_last_error());
        tnn_tensor *rg = tt && ti ? tnn_get_rows(s, tt, ti) : NULL;
        tnn_tensor *rb = td && ti && tshape ? tnn_get_rows_back(s, td, ti, tshape) : NULL;
        char w1[160], w2[160];
        snprintf(w1, sizeof w1, "tnn_get_rows table (%zu, %zu), %zu indices", V, d, n);
        snprintf(w2, sizeof w2, "tnn_get_rows_back (%zu, %zu) -> (%zu, %zu), repeated indices", n,
                 d, V, d);
        bool ok = (int)result_ok(w1, rg, shp(2, (int64_t)n, (int64_t)d, 0, 0)) &
                  (int)result_ok(w2, rb, shp(2, (int64_t)V, (int64_t)d, 0, 0)); /* both run */
        if (ok) tnn_set_output(rg);
        if (ok && realize(s, rb) && put(s, tt, tab) && put(s, td, dout) && put_idx(s, ti, idx) &&
            compute(s) && get(s, rg, g1) && get(s, rb, g2)) {
            for (size_t i = 0; i < n; i++)
                memcpy(r1 + i * d, tab + (size_t)idx[i] * d, d * sizeof *r1);
            expect_equal(w1, g1, r1, n * d);
            size_t *cnt = calloc(V, sizeof *cnt);
            for (size_t i = 0; i < n; i++) cnt[idx[i]]++;
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < d; j++) {
                    r2[(size_t)idx[i] * d + j] += dout[i * d + j];
                    b2[(size_t)idx[i] * d + j] += (double)cnt[idx[i]] * U * fabs(dout[i * d + j]);
                }
            expect_bounded(w2, g2, r2, b2, V * d);
            free(cnt);
        }
        tnn_session_free(s);
        free(tab), free(dout), free(g1), free(r1), free(g2), free(r2), free(b2), free(idx);
    }
}

/* Matrix products. Each output element is an f32 dot product of K terms, summed in some
 * order. Tolerance 2 sqrt(K) U sum_k |a_ik b_kj|: the worst case K U of recursive summation
 * for K <= 4; beyond, rounding errors are independent and grow like sqrt(K) (for these
 * zero-mean inputs the typical error is ~0.5 U sum|a b| at any K), so this is > 8 standard
 * deviations, yet it still catches one dropped or repeated term for K up to ~40000. */
static double mm_bound(double abs_sum, size_t K) { return 2.0 * sqrt((double)K) * U * abs_sum; }

/* The seed's tnn_matmul (ggml layout): a (m, k), b (n, k) -> (n, m) holding
 * sum_k a[i][k] b[j][k] at flat j*m + i. */
static void test_matmul_seed(void) {
    static const struct {
        int m, k, n;
    } cases[] = {{1, 1, 1},    {3, 7, 1},       {1, 33, 7},     {7, 3, 33},
                 {33, 127, 7}, {127, 513, 33},  {513, 33, 127}, {1, 513, 513},
                 {513, 1, 3},  {257, 300, 129}, {513, 513, 513}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t m = (size_t)cases[c].m, k = (size_t)cases[c].k, n = (size_t)cases[c].n;
        double *a = th_alloc(m * k), *b = th_alloc(n * k), *got = th_alloc(m * n),
               *ref = th_alloc(m * n), *bound = th_alloc(m * n);
        th_fill_f32(a, m * k, 2.0);
        th_fill_f32(b, n * k, 2.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *ta = tnn_input_2d_f32(s, (int)m, (int)k),
                   *tb = tnn_input_2d_f32(s, (int)n, (int)k);
        CHECK(ta && tb, "inputs: %s", tnn_last_error());
        tnn_tensor *r = ta && tb ? tnn_matmul(s, ta, tb) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_matmul (seed layout) a (%zu, %zu), b (%zu, %zu)", m, k, n,
                 k);
        if (result_ok(what, r, shp(2, (int64_t)n, (int64_t)m, 0, 0)) && realize(s, r) &&
            put(s, ta, a) && put(s, tb, b) && compute(s) && get(s, r, got)) {
            for (size_t i = 0; i < m; i++)
                for (size_t j = 0; j < n; j++) {
                    double acc = 0.0, abs_sum = 0.0;
                    for (size_t q = 0; q < k; q++) {
                        acc += a[i * k + q] * b[j * k + q];
                        abs_sum += fabs(a[i * k + q] * b[j * k + q]);
                    }
                    ref[j * m + i] = acc;
                    bound[j * m + i] = mm_bound(abs_sum, k);
                }
            expect_bounded(what, got, ref, bound, m * n);
        }
        tnn_session_free(s);
        free(a), free(b), free(got), free(ref), free(bound);
    }
}

enum { MM_NN, MM_NT, MM_TN };
static const char *mm_name[] = {"tnn_matmul_nn", "tnn_matmul_nt", "tnn_matmul_tn"};

typedef struct {
    int M, K, N;
    shape_t abat, bbat; /* batch dimensions (0..2 of them) */
} mm_case;

/* The stored shape of an operand: batch dims, then (r, c). */
static shape_t with_batch(shape_t bat, int64_t r, int64_t c) {
    shape_t s = bat;
    s.d[s.nd] = r;
    s.d[s.nd + 1] = c;
    s.nd += 2;
    return s;
}

/* Batch dims right-aligned to two: (B0, B1). */
static void batch2(shape_t bat, int64_t out[2]) {
    out[0] = bat.nd >= 2 ? bat.d[bat.nd - 2] : 1;
    out[1] = bat.nd >= 1 ? bat.d[bat.nd - 1] : 1;
}

/* Reference of op(A) @ op(B), batched with broadcasting; fills ref and, if abs_sum, each
 * element's sum_k |a_ik b_kj|. Returns the result shape (only that when ref is NULL). */
static shape_t ref_matmul(int kind, const mm_case *c, const double *A, const double *B, double *ref,
                          double *abs_sum) {
    size_t M = (size_t)c->M, K = (size_t)c->K, N = (size_t)c->N;
    bool ta = kind == MM_TN, tb = kind == MM_NT;
    int64_t ab[2], bb[2], ob[2];
    batch2(c->abat, ab);
    batch2(c->bbat, bb);
    for (int i = 0; i < 2; i++) ob[i] = ab[i] > bb[i] ? ab[i] : bb[i];
    int nbat = c->abat.nd > c->bbat.nd ? c->abat.nd : c->bbat.nd;
    shape_t os = {0, {0}};
    for (int i = 0; i < nbat; i++) os.d[i] = ob[2 - nbat + i];
    os.nd = nbat;
    os = with_batch(os, (int64_t)M, (int64_t)N);
    if (!ref) return os;
    for (int64_t i0 = 0; i0 < ob[0]; i0++)
        for (int64_t i1 = 0; i1 < ob[1]; i1++) {
            size_t ai = (size_t)((ab[0] > 1 ? i0 : 0) * ab[1] + (ab[1] > 1 ? i1 : 0));
            size_t bi = (size_t)((bb[0] > 1 ? i0 : 0) * bb[1] + (bb[1] > 1 ? i1 : 0));
            const double *a = A + ai * M * K, *b = B + bi * K * N;
            double *o = ref + (size_t)(i0 * ob[1] + i1) * M * N;
            for (size_t i = 0; i < M; i++)
                for (size_t j = 0; j < N; j++) {
                    double acc = 0.0, sa = 0.0;
                    for (size_t k = 0; k < K; k++) {
                        double p =
                            (ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
                        acc += p;
                        sa += fabs(p);
                    }
                    o[i * N + j] = acc;
                    if (abs_sum) abs_sum[(size_t)(o - ref) + i * N + j] = sa;
                }
        }
    return os;
}

static tnn_tensor *mm_build(int kind, tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return kind == MM_NN   ? tnn_matmul_nn(s, a, b)
           : kind == MM_NT ? tnn_matmul_nt(s, a, b)
                           : tnn_matmul_tn(s, a, b);
}

/* nn / nt / tn: a (..., M, K) or (..., K, M) for tn; b (..., K, N) or (..., N, K) for nt. */
static void test_matmul_family(void) {
    static const mm_case cases[] = {
        {1, 1, 1, NOBATCH, NOBATCH},
        {1, 7, 1, NOBATCH, NOBATCH},
        {3, 1, 7, NOBATCH, NOBATCH},
        {7, 33, 3, NOBATCH, NOBATCH},
        {33, 513, 7, NOBATCH, NOBATCH},
        {127, 1, 127, NOBATCH, NOBATCH},
        {127, 127, 513, NOBATCH, NOBATCH},
        {513, 300, 33, NOBATCH, NOBATCH},
        /* 3-D, batch broadcast on either side (a dimension of 1, or none) */
        {7, 33, 5, S1(3), S1(3)},
        {33, 7, 127, S1(3), NOBATCH},
        {5, 3, 7, NOBATCH, S1(4)},
        {7, 33, 5, S1(1), S1(4)},
        {7, 33, 5, S1(4), S1(1)},
        {127, 65, 33, S1(2), S1(2)},
        /* 4-D */
        {7, 5, 9, S2(2, 3), S2(2, 3)},
        {3, 33, 7, S2(2, 1), S2(1, 3)},
        {33, 7, 1, S2(1, 3), S2(2, 1)},
        {7, 5, 9, S2(2, 3), S1(3)},
        {1, 127, 3, S2(2, 3), NOBATCH},
        {5, 7, 3, S2(2, 1), S1(3)},
        {3, 7, 5, S1(3), S2(2, 3)},
        {9, 1, 13, S2(1, 1), S2(2, 3)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const mm_case *mc = &cases[c];
        for (int kind = MM_NN; kind <= MM_TN; kind++) {
            shape_t sa = kind == MM_TN ? with_batch(mc->abat, mc->K, mc->M)
                                       : with_batch(mc->abat, mc->M, mc->K);
            shape_t sb = kind == MM_NT ? with_batch(mc->bbat, mc->N, mc->K)
                                       : with_batch(mc->bbat, mc->K, mc->N);
            shape_t so = ref_matmul(kind, mc, NULL, NULL, NULL, NULL);
            size_t na = numel(sa), nb = numel(sb), no = numel(so);
            double *a = th_alloc(na), *b = th_alloc(nb), *got = th_alloc(no), *ref = th_alloc(no),
                   *bound = th_alloc(no);
            th_fill_f32(a, na, 2.0);
            th_fill_f32(b, nb, 2.0);
            tnn_session *s = tnn_session_new(TH_BACKEND);
            tnn_tensor *ta = leaf(s, sa), *tb = leaf(s, sb);
            tnn_tensor *r = ta && tb ? mm_build(kind, s, ta, tb) : NULL;
            char what[160];
            snprintf(what, sizeof what, "%s %s, %s -> %s", mm_name[kind], sstr(sa), sstr(sb),
                     sstr(so));
            if (result_ok(what, r, so) && realize(s, r) && put(s, ta, a) && put(s, tb, b) &&
                compute(s) && get(s, r, got)) {
                ref_matmul(kind, mc, a, b, ref, bound);
                for (size_t i = 0; i < no; i++) bound[i] = mm_bound(bound[i], (size_t)mc->K);
                expect_bounded(what, got, ref, bound, no);
            }
            tnn_session_free(s);
            free(a), free(b), free(got), free(ref), free(bound);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* 2. Gradient checks by central finite differences (in double)             */
/* ------------------------------------------------------------------------ */

/* Finite differences. loss(ctx, i, &abs) evaluates, in double, the part of L that depends on
 * p[i] (the other terms do not change the difference) and the sum of the absolute values of
 * its terms. g[i]: central differences at h and h/2 with one Richardson step (truncation error
 * O(h^4)). noise[i]: the roundoff floor of that estimate, 64 eps abs / h (the double rounding
 * of the loss, amplified ~3/h by the differencing); gradients below it are not resolved. */
typedef double (*loss_fn)(void *ctx, size_t i, double *abs);

static void fd_gradient(double *p, size_t n, double h, loss_fn loss, void *ctx, double *g,
                        double *noise) {
    for (size_t i = 0; i < n; i++) {
        double x0 = p[i], d[2], abs = 0.0;
        loss(ctx, i, &abs);
        for (int r = 0; r < 2; r++) {
            double xp = x0 + (r ? h / 2 : h), xm = x0 - (r ? h / 2 : h), a;
            p[i] = xp;
            double lp = loss(ctx, i, &a);
            p[i] = xm;
            double lm = loss(ctx, i, &a);
            d[r] = (lp - lm) / (xp - xm);
        }
        p[i] = x0;
        g[i] = (4.0 * d[1] - d[0]) / 3.0;
        noise[i] = 64.0 * DBL_EPSILON * abs / h;
    }
}

/* L = sum(w * f(x)) for the element-wise and row-wise ops. */
typedef struct {
    double *x;
    const double *w;
    size_t n, cols;
    double eps;
} loss_ctx;

static double loss_gelu(void *p, size_t i, double *abs) {
    const loss_ctx *c = p;
    double t = c->w[i] * ref_gelu(c->x[i]);
    *abs = fabs(t);
    return t;
}

static double loss_silu(void *p, size_t i, double *abs) {
    const loss_ctx *c = p;
    double t = c->w[i] * ref_silu(c->x[i]);
    *abs = fabs(t);
    return t;
}

/* The row of element i. */
static double loss_softmax(void *p, size_t i, double *abs) {
    const loss_ctx *c = p;
    size_t r = i / c->cols;
    double L = 0.0, *y = th_alloc(c->cols);
    ref_softmax_row(c->x + r * c->cols, y, c->cols);
    *abs = 0.0;
    for (size_t j = 0; j < c->cols; j++) {
        double t = c->w[r * c->cols + j] * y[j];
        L += t;
        *abs += fabs(t);
    }
    free(y);
    return L;
}

static double loss_rms(void *p, size_t i, double *abs) {
    const loss_ctx *c = p;
    size_t r = i / c->cols;
    const double *x = c->x + r * c->cols;
    double inv = ref_rms_inv(x, c->cols, c->eps), L = 0.0;
    *abs = 0.0;
    for (size_t j = 0; j < c->cols; j++) {
        double t = c->w[r * c->cols + j] * x[j] * inv;
        L += t;
        *abs += fabs(t);
    }
    return L;
}

/* gelu_back(x, dy) and silu_back(x, dy) (forward input first) against the FD gradient of
 * sum(w * f(x)) with dy = w. Scale: |w| (f' is a sum of terms of size <= ~1). */
static void test_grad_gelu_silu(void) {
    static const shape_t shapes[] = {S1(1), S1(N_SPECIALS), S2(7, 33), S3(3, 5, 127)};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        shape_t sh = shapes[c];
        size_t n = numel(sh);
        double *x = th_alloc(n), *w = th_alloc(n), *gg = th_alloc(n), *gs = th_alloc(n),
               *fd = th_alloc(n), *noise = th_alloc(n), *scale = th_alloc(n);
        fill_unary_input(x, n, 6.0);
        th_fill_f32(w, n, 2.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *tw = leaf(s, sh);
        tnn_tensor *rg = tx && tw ? tnn_gelu_back(s, tx, tw) : NULL;
        tnn_tensor *rs = tx && tw ? tnn_silu_back(s, tx, tw) : NULL;
        char wg[160], ws[160];
        snprintf(wg, sizeof wg, "tnn_gelu_back %s vs finite differences", sstr(sh));
        snprintf(ws, sizeof ws, "tnn_silu_back %s vs finite differences", sstr(sh));
        bool ok = (int)result_ok(wg, rg, sh) & (int)result_ok(ws, rs, sh); /* both run */
        if (ok) tnn_set_output(rg);
        if (ok && realize(s, rs) && put(s, tx, x) && put(s, tw, w) && compute(s) &&
            get(s, rg, gg) && get(s, rs, gs)) {
            loss_ctx lc = {x, w, n, n, 0.0};
            for (size_t i = 0; i < n; i++) scale[i] = fabs(w[i]);
            fd_gradient(x, n, 1e-2, loss_gelu, &lc, fd, noise);
            expect_grad(wg, gg, fd, noise, scale, n);
            fd_gradient(x, n, 1e-2, loss_silu, &lc, fd, noise);
            expect_grad(ws, gs, fd, noise, scale, n);
        }
        tnn_session_free(s);
        free(x), free(w), free(gg), free(gs), free(fd), free(noise), free(scale);
    }
}

/* softmax_back(dy, y) (gradient first), with y = tnn_softmax(x) in the same graph, against the
 * FD gradient of sum(w * softmax(x)). Scale: y_j (|w_j| + |sum_k w_k y_k|), the two terms of
 * y * (dy - sum(dy * y)). A 1-column softmax is constant: its gradient must be exactly 0. */
static void test_grad_softmax(void) {
    static const struct {
        shape_t sh;
        double mag;
    } cases[] = {{S2(1, 1), 5.0},   {S2(3, 1), 5.0},     {S2(3, 7), 5.0}, {S2(7, 33), 12.0},
                 {S2(2, 513), 5.0}, {S3(4, 3, 33), 5.0}, {S1(127), 12.0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shape_t sh = cases[c].sh;
        size_t n = numel(sh), cols = (size_t)sh.d[sh.nd - 1];
        double *x = th_alloc(n), *w = th_alloc(n), *got = th_alloc(n), *fd = th_alloc(n),
               *noise = th_alloc(n), *scale = th_alloc(n), *y = th_alloc(n);
        th_fill_f32(x, n, cases[c].mag);
        th_fill_f32(w, n, 2.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *tw = leaf(s, sh);
        tnn_tensor *ty = tx ? tnn_softmax(s, tx) : NULL;
        tnn_tensor *r = ty && tw ? tnn_softmax_back(s, tw, ty) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_softmax_back %s (x in +-%g) vs finite differences",
                 sstr(sh), cases[c].mag);
        if (result_ok(what, r, sh) && realize(s, r) && put(s, tx, x) && put(s, tw, w) &&
            compute(s) && get(s, r, got)) {
            for (size_t row = 0; row < n / cols; row++) {
                double *yr = y + row * cols, d = 0.0;
                const double *wr = w + row * cols;
                ref_softmax_row(x + row * cols, yr, cols);
                for (size_t j = 0; j < cols; j++) d += wr[j] * yr[j];
                for (size_t j = 0; j < cols; j++)
                    scale[row * cols + j] = yr[j] * (fabs(wr[j]) + fabs(d));
            }
            loss_ctx lc = {x, w, n, cols, 0.0};
            fd_gradient(x, n, 1e-2, loss_softmax, &lc, fd, noise);
            if (cols == 1) { /* a constant function: exactly 0 */
                memset(fd, 0, n * sizeof *fd);
                memset(noise, 0, n * sizeof *noise);
                memset(scale, 0, n * sizeof *scale);
            }
            expect_grad(what, got, fd, noise, scale, n);
        }
        tnn_session_free(s);
        free(x), free(w), free(got), free(fd), free(noise), free(scale), free(y);
    }
}

/* rms_norm_back(dy, x, eps) (gradient first) against the FD gradient of
 * sum(w * x / sqrt(mean(x^2) + eps)). Scale: r |w_i| + r^3 |x_i| |sum_j w_j x_j| / n, the two
 * terms the formula subtracts (they cancel almost fully for 1 column). */
static void test_grad_rms_norm(void) {
    static const struct {
        shape_t sh;
        double eps, mag;
    } cases[] = {{S2(1, 1), 1e-6, 2.0},   {S2(3, 7), 1e-5, 2.0},    {S2(7, 33), 1e-6, 2.0},
                 {S2(5, 513), 1e-5, 2.0}, {S3(4, 3, 33), 0.0, 2.0}, {S2(3, 33), 1e-5, 1e-3},
                 {S1(127), 1e-6, 30.0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        shape_t sh = cases[c].sh;
        size_t n = numel(sh), cols = (size_t)sh.d[sh.nd - 1];
        double eps = cases[c].eps;
        double *x = th_alloc(n), *w = th_alloc(n), *got = th_alloc(n), *fd = th_alloc(n),
               *noise = th_alloc(n), *scale = th_alloc(n);
        th_fill_f32(x, n, cases[c].mag);
        th_fill_f32(w, n, 2.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tx = leaf(s, sh), *tw = leaf(s, sh);
        tnn_tensor *r = tx && tw ? tnn_rms_norm_back(s, tw, tx, eps) : NULL;
        char what[160];
        snprintf(what, sizeof what, "tnn_rms_norm_back %s eps %g (x in +-%g) vs finite differences",
                 sstr(sh), eps, cases[c].mag);
        if (result_ok(what, r, sh) && realize(s, r) && put(s, tx, x) && put(s, tw, w) &&
            compute(s) && get(s, r, got)) {
            for (size_t row = 0; row < n / cols; row++) {
                const double *xr = x + row * cols, *wr = w + row * cols;
                double inv = ref_rms_inv(xr, cols, eps), dot = 0.0;
                for (size_t j = 0; j < cols; j++) dot += wr[j] * xr[j];
                for (size_t j = 0; j < cols; j++)
                    scale[row * cols + j] = inv * fabs(wr[j]) + inv * inv * inv * fabs(xr[j]) *
                                                                    fabs(dot) / (double)cols;
            }
            loss_ctx lc = {x, w, n, cols, eps};
            fd_gradient(x, n, 1e-2 * cases[c].mag, loss_rms, &lc, fd, noise);
            expect_grad(what, got, fd, noise, scale, n);
        }
        tnn_session_free(s);
        free(x), free(w), free(got), free(fd), free(noise), free(scale);
    }
}

/* get_rows_back(W, idx, shape) is the gradient of sum(W * get_rows(table, idx)) with respect
 * to table. Scale: sum of |W| over the rows scattered to the element. */
typedef struct {
    double *tab;
    const double *W;
    const int64_t *idx;
    size_t n, d;
} rows_loss_ctx;

/* The terms that read table element e = (v, j): every gathered row i with idx[i] == v. */
static double loss_get_rows(void *p, size_t e, double *abs) {
    const rows_loss_ctx *c = p;
    size_t v = e / c->d, j = e % c->d;
    double L = 0.0;
    *abs = 0.0;
    for (size_t i = 0; i < c->n; i++)
        if ((size_t)c->idx[i] == v) {
            double t = c->W[i * c->d + j] * c->tab[e];
            L += t;
            *abs += fabs(t);
        }
    return L;
}

static void test_grad_get_rows(void) {
    static const struct { int V, d, n; } cases[] = {{1, 3, 4}, {7, 33, 20}, {33, 5, 64}, {5, 1, 9}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t V = (size_t)cases[c].V, d = (size_t)cases[c].d, n = (size_t)cases[c].n;
        double *tab = th_alloc(V * d), *W = th_alloc(n * d), *got = th_alloc(V * d),
               *fd = th_alloc(V * d), *noise = th_alloc(V * d), *scale = th_alloc(V * d);
        int64_t *idx = calloc(n, sizeof *idx);
        th_fill_f32(tab, V * d, 3.0);
        th_fill_f32(W, n * d, 2.0);
        fill_indices(idx, n, (int64_t)V);
        if (V > 3) /* leave row 1 unused: its gradient must be exactly 0 */
            for (size_t i = 0; i < n; i++)
                if (idx[i] == 1) idx[i] = 2;
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tt = tnn_input_2d_f32(s, (int)V, (int)d), *ti = tnn_input_1d_i32(s, (int)n);
        tnn_tensor *tw = tnn_input_2d_f32(s, (int)n, (int)d);
        CHECK(tt && ti && tw, "inputs: %s", tnn_last_error());
        tnn_tensor *r = tt && ti && tw ? tnn_get_rows_back(s, tw, ti, tt) : NULL;
        char what[160];
        snprintf(what, sizeof what,
                 "tnn_get_rows_back V %zu, d %zu, %zu indices vs finite differences", V, d, n);
        if (result_ok(what, r, shp(2, (int64_t)V, (int64_t)d, 0, 0)) && realize(s, r) &&
            put(s, tt, tab) && put(s, tw, W) && put_idx(s, ti, idx) && compute(s) &&
            get(s, r, got)) {
            for (size_t i = 0; i < n; i++)
                for (size_t j = 0; j < d; j++) scale[(size_t)idx[i] * d + j] += fabs(W[i * d + j]);
            rows_loss_ctx lc = {tab, W, idx, n, d};
            fd_gradient(tab, V * d, 1e-2, loss_get_rows, &lc, fd, noise);
            expect_grad(what, got, fd, noise, scale, V * d);
        }
        tnn_session_free(s);
        free(tab), free(W), free(got), free(fd), free(noise), free(scale), free(idx);
    }
}

/* The matmul family's backward rule (header): for C = A @ B, dA = dC @ B^T (tnn_matmul_nt)
 * and dB = A^T @ dC (tnn_matmul_tn). Checked against the FD gradient of L = sum(W * (A @ B))
 * in double with dC = W. Where A or B is broadcast over a batch dimension, its gradient is
 * the sum over that dimension, done here. Scale: sum |W||B| (resp. |A||W|) of the element. */
typedef struct {
    const mm_case *mc;
    double *A, *B;
    const double *W;
    size_t nc;
    double *C, *Cabs;
} mm_loss_ctx;

/* The whole loss (the shapes are small). */
static double loss_matmul(void *p, size_t i_unused, double *abs) {
    const mm_loss_ctx *c = p;
    ref_matmul(MM_NN, c->mc, c->A, c->B, c->C, c->Cabs);
    double L = 0.0;
    *abs = 0.0;
    for (size_t i = 0; i < c->nc; i++) {
        L += c->W[i] * c->C[i];
        *abs += fabs(c->W[i]) * c->Cabs[i];
    }
    return L;
}

/* out (shaped like the operand, batch `bat`) = sum over the output batches that map to each
 * operand batch of src (shaped like the product's gradient, batch `obat`). */
static void reduce_batches(shape_t bat, shape_t obat, const double *src, size_t mat, double *out) {
    int64_t b[2], o[2];
    batch2(bat, b);
    batch2(obat, o);
    memset(out, 0, (size_t)(b[0] * b[1]) * mat * sizeof *out);
    for (int64_t i0 = 0; i0 < o[0]; i0++)
        for (int64_t i1 = 0; i1 < o[1]; i1++) {
            size_t bi = (size_t)((b[0] > 1 ? i0 : 0) * b[1] + (b[1] > 1 ? i1 : 0));
            size_t oi = (size_t)(i0 * o[1] + i1);
            for (size_t e = 0; e < mat; e++) out[bi * mat + e] += src[oi * mat + e];
        }
}

static void test_grad_matmul(void) {
    static const mm_case cases[] = {
        {1, 1, 1, NOBATCH, NOBATCH}, {3, 7, 5, NOBATCH, NOBATCH},   {7, 33, 13, NOBATCH, NOBATCH},
        {5, 3, 7, S1(4), S1(4)},     {4, 6, 3, S2(2, 3), S2(2, 3)}, {5, 6, 3, S1(3), NOBATCH},
        {2, 5, 4, NOBATCH, S1(3)},   {3, 4, 2, S2(2, 1), S1(3)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const mm_case *mc = &cases[c];
        size_t M = (size_t)mc->M, K = (size_t)mc->K, N = (size_t)mc->N;
        shape_t sa = with_batch(mc->abat, mc->M, mc->K), sb = with_batch(mc->bbat, mc->K, mc->N);
        shape_t sc = ref_matmul(MM_NN, mc, NULL, NULL, NULL, NULL);
        shape_t obat = sc;
        obat.nd -= 2;
        size_t na = numel(sa), nb = numel(sb), nc = numel(sc), nbat = nc / (M * N);
        /* the gradients as the ops give them, before any reduction over broadcast batches */
        shape_t sda = with_batch(obat, mc->M, mc->K), sdb = with_batch(obat, mc->K, mc->N);
        double *A = th_alloc(na), *B = th_alloc(nb), *W = th_alloc(nc), *C = th_alloc(nc),
               *Cabs = th_alloc(nc), *nA = th_alloc(na), *nB = th_alloc(nb);
        double *dA = th_alloc(nbat * M * K), *dB = th_alloc(nbat * K * N);
        double *gA = th_alloc(na), *gB = th_alloc(nb), *fdA = th_alloc(na), *fdB = th_alloc(nb);
        double *sA = th_alloc(na), *sB = th_alloc(nb), *tmpA = th_alloc(nbat * M * K),
               *tmpB = th_alloc(nbat * K * N);
        th_fill_f32(A, na, 2.0);
        th_fill_f32(B, nb, 2.0);
        th_fill_f32(W, nc, 2.0);
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tA = leaf(s, sa), *tB = leaf(s, sb), *tW = leaf(s, sc);
        tnn_tensor *rA = tA && tB && tW ? tnn_matmul_nt(s, tW, tB) : NULL;
        tnn_tensor *rB = tA && tB && tW ? tnn_matmul_tn(s, tA, tW) : NULL;
        char wa[200], wb[200];
        snprintf(wa, sizeof wa,
                 "dA = tnn_matmul_nt(dC, B) for C = A %s @ B %s, vs finite differences", sstr(sa),
                 sstr(sb));
        snprintf(wb, sizeof wb,
                 "dB = tnn_matmul_tn(A, dC) for C = A %s @ B %s, vs finite differences", sstr(sa),
                 sstr(sb));
        bool ok = (int)result_ok(wa, rA, sda) & (int)result_ok(wb, rB, sdb); /* both run */
        if (ok) tnn_set_output(rA);
        if (ok && realize(s, rB) && put(s, tA, A) && put(s, tB, B) && put(s, tW, W) && compute(s) &&
            get(s, rA, dA) && get(s, rB, dB)) {
            reduce_batches(mc->abat, obat, dA, M * K, gA);
            reduce_batches(mc->bbat, obat, dB, K * N, gB);
            /* scales: the same products of absolute values, |W| @ |B|^T and |A|^T @ |W| */
            double *aA = th_alloc(na), *aB = th_alloc(nb), *aW = th_alloc(nc);
            for (size_t i = 0; i < na; i++) aA[i] = fabs(A[i]);
            for (size_t i = 0; i < nb; i++) aB[i] = fabs(B[i]);
            for (size_t i = 0; i < nc; i++) aW[i] = fabs(W[i]);
            mm_case ca = {mc->M, mc->N, mc->K, obat, mc->bbat}; /* |W| (M,N) @ |B|^T (N,K) */
            ref_matmul(MM_NT, &ca, aW, aB, tmpA, NULL);
            reduce_batches(mc->abat, obat, tmpA, M * K, sA);
            mm_case cb = {mc->K, mc->M, mc->N, mc->abat, obat}; /* |A|^T (K,M) @ |W| (M,N) */
            ref_matmul(MM_TN, &cb, aA, aW, tmpB, NULL);
            reduce_batches(mc->bbat, obat, tmpB, K * N, sB);
            free(aA), free(aB), free(aW);

            mm_loss_ctx lc = {mc, A, B, W, nc, C, Cabs};
            fd_gradient(A, na, 0.25, loss_matmul, &lc, fdA, nA);
            fd_gradient(B, nb, 0.25, loss_matmul, &lc, fdB, nB);
            expect_grad(wa, gA, fdA, nA, sA, na);
            expect_grad(wb, gB, fdB, nB, sB, nb);
        }
        tnn_session_free(s);
        free(A), free(B), free(W), free(C), free(Cabs), free(nA), free(nB);
        free(dA), free(dB), free(gA), free(gB);
        free(fdA), free(fdB), free(sA), free(sB), free(tmpA), free(tmpB);
    }
}

/* tnn_to_bf16: the rounding (nearest even, on the float's bits), and a
 * mixed-precision product: C = A @ to_bf16(W)^T with W an f32 parameter.
 * dW must be the f32 product dC^T A (the rounding passes the gradient
 * straight through) and dA = dC @ bf16(W), against double references. */
static double bf16_round_ref(double v) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return v; /* NaN stays NaN */
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static void test_to_bf16(void) {
    /* forward: ties both ways, the largest finite, tiny and negative values */
    enum { N = 515 };
    double *x = th_alloc(N), *got = th_alloc(N), *ref = th_alloc(N);
    th_fill_f32(x, N, 1000.0);
    static const double specials[] = {0.0, -0.0, 1.0, -1.0, 1.00390625, 1.01171875, -1.00390625,
                                      3.4e38, -3.4e38, 1e-30, -1e-30, 65504.0, 0.1, -0.3};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) x[i] = specials[i];
    tnn_session *s = tnn_session_new(TH_BACKEND);
    shape_t sh = shp(2, 5, 103, 0, 0);
    tnn_tensor *tx = leaf(s, sh), *r = tx ? tnn_to_bf16(s, tx) : NULL;
    if (result_ok("tnn_to_bf16 (5, 103)", r, sh) && realize(s, r) && put(s, tx, x) &&
        compute(s) && get(s, r, got)) {
        CHECK(tnn_tensor_dtype(r) == TNN_BF16, "tnn_to_bf16: dtype %d", tnn_tensor_dtype(r));
        for (size_t i = 0; i < N; i++) ref[i] = bf16_round_ref(x[i]);
        expect_equal("tnn_to_bf16 (5, 103): round to nearest even", got, ref, N);
    }
    tnn_session_free(s);
    free(x), free(got), free(ref);

    /* mixed precision: gradients through a bf16 product */
    int M = 6, K = 37, Nn = 19;
    size_t na = (size_t)M * K, nw = (size_t)Nn * K, nc = (size_t)M * Nn;
    double *A = th_alloc(na), *W = th_alloc(nw), *G = th_alloc(nc), *dA = th_alloc(na),
           *dW = th_alloc(nw), *rA = th_alloc(na), *rW = th_alloc(nw), *aA = th_alloc(na),
           *aW = th_alloc(nw), *C = th_alloc(nc), *rC = th_alloc(nc), *aC = th_alloc(nc);
    th_fill_f32(A, na, 2.0);
    th_fill_f32(W, nw, 2.0);
    th_fill_f32(G, nc, 2.0);
    s = tnn_session_new(TH_BACKEND);
    tnn_tensor *tA = leaf(s, shp(2, M, K, 0, 0)), *tW = leaf(s, shp(2, Nn, K, 0, 0)),
               *tG = leaf(s, shp(2, M, Nn, 0, 0));
    tnn_set_param(tA);
    tnn_set_param(tW);
    tnn_tensor *tC = tnn_matmul_nt(s, tA, tnn_to_bf16(s, tW));
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, tC, tG)); /* dC = G */
    CHECK(loss != NULL, "mixed-precision graph: %s", tnn_last_error());
    if (loss && tnn_backward(s, loss) == TNN_OK) {
        tnn_tensor *gA = tnn_grad(s, tA), *gW = tnn_grad(s, tW);
        tnn_set_output(gA);
        tnn_set_output(gW);
        tnn_set_output(tC);
        if (realize(s, loss) && put(s, tA, A) && put(s, tW, W) && put(s, tG, G) && compute(s) &&
            get(s, gA, dA) && get(s, gW, dW) && get(s, tC, C)) {
            for (int i = 0; i < M; i++)
                for (int j = 0; j < Nn; j++) {
                    double c = 0, a = 0;
                    for (int k = 0; k < K; k++) {
                        double w = bf16_round_ref(W[j * K + k]);
                        c += A[i * K + k] * w, a += fabs(A[i * K + k] * w);
                    }
                    rC[i * Nn + j] = c, aC[i * Nn + j] = a;
                }
            for (int i = 0; i < M; i++)
                for (int k = 0; k < K; k++) {
                    double v = 0, a = 0;
                    for (int j = 0; j < Nn; j++) {
                        double w = bf16_round_ref(W[j * K + k]);
                        v += G[i * Nn + j] * w, a += fabs(G[i * Nn + j] * w);
                    }
                    rA[i * K + k] = v, aA[i * K + k] = a;
                }
            for (int j = 0; j < Nn; j++)
                for (int k = 0; k < K; k++) {
                    double v = 0, a = 0;
                    for (int i = 0; i < M; i++)
                        v += G[i * Nn + j] * A[i * K + k], a += fabs(G[i * Nn + j] * A[i * K + k]);
                    rW[j * K + k] = v, aW[j * K + k] = a;
                }
            /* f32 sums (or, on a CPU with vdpbf16ps, A rounded to bf16 too: 2^-8) */
            double tol = 1.0 / 256;
            for (size_t i = 0; i < nc; i++) aC[i] *= tol;
            for (size_t i = 0; i < na; i++) aA[i] *= tol;
            for (size_t i = 0; i < nw; i++) aW[i] *= 64 * U;
            expect_bounded("C = A @ bf16(W)^T", C, rC, aC, nc);
            expect_bounded("dA = dC @ bf16(W)", dA, rA, aA, na);
            expect_bounded("dW = dC^T @ A (straight through the rounding)", dW, rW, aW, nw);
        }
    } else {
        CHECK(false, "tnn_backward through tnn_to_bf16: %s", tnn_last_error());
    }
    tnn_session_free(s);
    free(A), free(W), free(G), free(dA), free(dW), free(rA), free(rW), free(aA), free(aW);
    free(C), free(rC), free(aC);
}

/* bf16 activations too: C = bf16(A) @ bf16(W) (nt and nn) with A and W f32
 * parameters behind tnn_to_bf16. Against double sums of the rounded values:
 * C, dA = bf16(dC) @ bf16(W) and dW = bf16(dC)^T @ bf16(A) (nn: its
 * transpose form; the gradient products round dC as the forward rounds its
 * operands); tn has no gradient for its second operand then, and says so. */
static void test_bf16_activations(void) {
    int M = 5, K = 41, Nn = 18;
    size_t na = (size_t)M * K, nw = (size_t)Nn * K, nc = (size_t)M * Nn;
    double *A = th_alloc(na), *W = th_alloc(nw), *G = th_alloc(nc), *got[3], *ref[3], *bnd[3];
    size_t n[3] = {nc, na, nw};
    for (int i = 0; i < 3; i++)
        got[i] = th_alloc(n[i]), ref[i] = th_alloc(n[i]), bnd[i] = th_alloc(n[i]);
    th_fill_f32(A, na, 2.0);
    th_fill_f32(W, nw, 2.0);
    th_fill_f32(G, nc, 2.0);
    for (int nn = 0; nn < 2; nn++) {
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *tA = leaf(s, shp(2, M, K, 0, 0)),
                   *tW = leaf(s, nn ? shp(2, K, Nn, 0, 0) : shp(2, Nn, K, 0, 0)),
                   *tG = leaf(s, shp(2, M, Nn, 0, 0));
        tnn_set_param(tA);
        tnn_set_param(tW);
        tnn_tensor *a16 = tnn_to_bf16(s, tA), *w16 = tnn_to_bf16(s, tW);
        tnn_tensor *tC = nn ? tnn_matmul_nn(s, a16, w16) : tnn_matmul_nt(s, a16, w16);
        tnn_tensor *loss = tnn_sum(s, tnn_mul(s, tC, tG));
        const char *form = nn ? "nn" : "nt";
        if (!loss || tnn_backward(s, loss) != TNN_OK) {
            CHECK(false, "bf16 @ bf16 (%s): %s", form, tnn_last_error());
            tnn_session_free(s);
            continue;
        }
        tnn_tensor *gA = tnn_grad(s, tA), *gW = tnn_grad(s, tW);
        tnn_set_output(gA);
        tnn_set_output(gW);
        tnn_set_output(tC);
        if (realize(s, loss) && put(s, tA, A) && put(s, tW, W) && put(s, tG, G) && compute(s) &&
            get(s, tC, got[0]) && get(s, gA, got[1]) && get(s, gW, got[2])) {
            for (int i = 0; i < 3; i++) {
                memset(ref[i], 0, n[i] * sizeof(double));
                memset(bnd[i], 0, n[i] * sizeof(double));
            }
            for (int i = 0; i < M; i++)
                for (int j = 0; j < Nn; j++)
                    for (int k = 0; k < K; k++) {
                        size_t wi = nn ? (size_t)k * Nn + j : (size_t)j * K + k;
                        double a = bf16_round_ref(A[i * K + k]), w = bf16_round_ref(W[wi]);
                        double g = bf16_round_ref(G[i * Nn + j]);
                        ref[0][i * Nn + j] += a * w, bnd[0][i * Nn + j] += fabs(a * w);
                        ref[1][i * K + k] += g * w, bnd[1][i * K + k] += fabs(g * w);
                        ref[2][wi] += g * a, bnd[2][wi] += fabs(g * a);
                    }
            /* exact products of bf16 values, f32 sums of K <= 41 terms (an
             * unrounded dC would be off by up to 2^-9) */
            for (int i = 0; i < 3; i++)
                for (size_t e = 0; e < n[i]; e++) bnd[i][e] *= 64 * U;
            char what[64];
            snprintf(what, sizeof what, "C = bf16(A) @ bf16(W) (%s)", form);
            expect_bounded(what, got[0], ref[0], bnd[0], nc);
            snprintf(what, sizeof what, "dA of bf16(A) @ bf16(W) (%s)", form);
            expect_bounded(what, got[1], ref[1], bnd[1], na);
            snprintf(what, sizeof what, "dW of bf16(A) @ bf16(W) (%s)", form);
            expect_bounded(what, got[2], ref[2], bnd[2], nw);
        }
        tnn_session_free(s);
    }
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *p = leaf(s, shp(2, K, M, 0, 0)), *q = leaf(s, shp(2, K, Nn, 0, 0));
    tnn_set_param(p);
    tnn_set_param(q);
    tnn_tensor *c = tnn_matmul_tn(s, tnn_to_bf16(s, p), tnn_to_bf16(s, q));
    CHECK(c != NULL, "tnn_matmul_tn of two bf16 tensors: %s", tnn_last_error());
    int rc = c ? tnn_backward(s, tnn_sum(s, c)) : TNN_OK;
    CHECK(rc == TNN_ERR_UNSUPPORTED && strstr(tnn_last_error(), "second"),
          "tn with a bf16 first operand: backward gave %d (%s)", rc, tnn_last_error());
    tnn_session_free(s);
    free(A), free(W), free(G);
    for (int i = 0; i < 3; i++) free(got[i]), free(ref[i]), free(bnd[i]);
}

/* ------------------------------------------------------------------------ */
/* 3. Long and random graphs: buffer reuse                                  */
/* ------------------------------------------------------------------------ */

/* 200 alternating scale/gelu nodes on a 256x256 tensor, plus a read of the first node at the
 * very end (an intermediate that must survive the whole chain) and the middle node kept with
 * tnn_set_output. Against the same chain in double: each step adds a few U of error and the
 * chain does not amplify it much (gelu' <= 1.13 and most values are squashed); tolerance
 * 1e-5 * max|ref| + 1e-4 |ref|, loose, but any reuse of a live buffer is off by O(1). A second
 * compute must give the same bits. */
static void test_chain(void) {
    enum { R = 256, STEPS = 200 };
    static const double ks[4] = {1.5, -1.25, 0.8, -2.0};
    const size_t n = (size_t)R * R;
    double *x = th_alloc(n), *v = th_alloc(n), *first = th_alloc(n), *mid = th_alloc(n),
           *ref = th_alloc(n), *got = th_alloc(n);
    float *xf = malloc(n * sizeof *xf), *g1 = malloc(n * sizeof *g1), *g2 = malloc(n * sizeof *g2);
    th_fill_f32(x, n, 3.0);
    for (size_t i = 0; i < n; i++) xf[i] = (float)x[i];
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *tx = tnn_input_2d_f32(s, R, R), *node = tx, *t_first = NULL, *t_mid = NULL;
    CHECK(tx != NULL, "input: %s", tnn_last_error());
    for (int i = 0; i < STEPS && node; i++) {
        node = i % 2 == 0 ? tnn_scale(s, node, ks[(i / 2) % 4]) : tnn_gelu(s, node);
        if (i == 0) t_first = node;
        if (i == STEPS / 2 - 1) t_mid = node;
    }
    tnn_tensor *out = node ? tnn_add(s, node, t_first) : NULL;
    bool ok = result_ok("chain of 200 scale/gelu nodes (256, 256)", out, shp(2, R, R, 0, 0));
    if (ok) tnn_set_output(t_mid);
    if (ok && realize(s, out) && tnn_upload_f32(s, tx, xf, n) == TNN_OK && compute(s) &&
        tnn_download_f32(s, out, g1, n) == TNN_OK && get(s, t_mid, mid)) {
        memcpy(v, x, n * sizeof *v);
        double *mref = th_alloc(n);
        for (int i = 0; i < STEPS; i++) {
            for (size_t e = 0; e < n; e++)
                v[e] = i % 2 == 0 ? v[e] * (double)(float)ks[(i / 2) % 4] : ref_gelu(v[e]);
            if (i == 0) memcpy(first, v, n * sizeof *v);
            if (i == STEPS / 2 - 1) memcpy(mref, v, n * sizeof *v);
        }
        double mx = 0.0, mmx = 0.0;
        for (size_t e = 0; e < n; e++) {
            ref[e] = v[e] + first[e];
            mx = fmax(mx, fabs(ref[e]));
            mmx = fmax(mmx, fabs(mref[e]));
            got[e] = g1[e];
        }
        expect_close("chain of 200 scale/gelu nodes, result", got, ref, n, 1e-5 * mx, 1e-4);
        expect_close("chain of 200 scale/gelu nodes, middle node (set_output)", mid, mref, n,
                     1e-5 * mmx, 1e-4);
        free(mref);
        bool ok2 = compute(s) && tnn_download_f32(s, out, g2, n) == TNN_OK;
        CHECK(ok2 && memcmp(g1, g2, n * sizeof *g1) == 0, "chain: a second compute differs: %s",
              tnn_last_error());
    } else if (ok) {
        CHECK(0, "chain: realize/upload/compute/download failed: %s", tnn_last_error());
    }
    tnn_session_free(s);
    free(x), free(v), free(first), free(mid), free(ref), free(got), free(xf), free(g1), free(g2);
}

/* A random graph of element-wise ops on intermediates of six shapes ((2, R, C), (R, C),
 * (2, 1, C), (R, 1), (2, 1, 1), (C), mixed by broadcasting; some sizes differ by exactly 2x,
 * so a free block too small by half is there to be misused), with short and long fan-out, the same
 * operand twice, and a random tenth of the nodes kept with tnn_set_output: the planner must never
 * hand a live buffer to a new node, whatever the sizes and lifetimes. Every kept node is compared
 * with the same graph in double. Values stay within the inputs' range (add and sub are followed by
 * a halving, and gelu, silu, mul of values <= 1 do not grow), so errors stay at a few U per
 * step; tolerance 1e-5 max|ref| + 1e-4 |ref|, while a reused buffer is off by O(1). */
enum { G_LEAF, G_ADD, G_SUB, G_MUL, G_SCALE, G_GELU, G_SILU };
typedef struct {
    int op, a, b;
    double k;
    shape_t sh;
} g_node;

static void test_random_graph(void) {
    enum { R = 33, C = 127, NODES = 240, LEAVES = 6 };
    static const shape_t leaf_shapes[LEAVES] = {S3(2, R, C), S2(R, C),    S3(2, 1, C),
                                                S2(R, 1),    S3(2, 1, 1), S1(C)};
    g_node g[NODES];
    tnn_tensor *t[NODES];
    double *v[NODES];
    bool keep[NODES];
    int n = 0;
    tnn_session *s = tnn_session_new(TH_BACKEND);
    bool ok = true;
    for (; n < LEAVES && ok; n++) {
        g[n] = (g_node){G_LEAF, -1, -1, 0.0, leaf_shapes[n]};
        ok = (t[n] = leaf(s, g[n].sh)) != NULL;
    }
    while (n < NODES && ok) {
        /* operands: mostly recent nodes (short lifetimes), sometimes any earlier node */
        int a = th_uniform() < 0.8 ? n - 1 - (int)(th_uniform() * 6) : (int)(th_uniform() * n);
        int b = th_uniform() < 0.8 ? n - 1 - (int)(th_uniform() * 6) : (int)(th_uniform() * n);
        if (a < 0) a = 0;
        if (b < 0) b = 0;
        if (th_uniform() < 0.1) b = a;
        int op = 1 + (int)(th_uniform() * 6);
        g_node nd = {op, a, op <= G_MUL ? b : -1, 0.0, g[a].sh};
        if (op <= G_MUL) nd.sh = bcast_shape(g[a].sh, g[b].sh);
        if (op == G_SCALE) nd.k = 0.25 + 0.75 * th_uniform();
        tnn_tensor *r = op == G_ADD     ? tnn_add(s, t[a], t[b])
                        : op == G_SUB   ? tnn_sub(s, t[a], t[b])
                        : op == G_MUL   ? tnn_mul(s, t[a], t[b])
                        : op == G_SCALE ? tnn_scale(s, t[a], nd.k)
                        : op == G_GELU  ? tnn_gelu(s, t[a])
                                        : tnn_silu(s, t[a]);
        ok = result_ok("random graph node", r, nd.sh);
        g[n] = nd;
        t[n++] = r;
        if (ok && (op == G_ADD || op == G_SUB) && n < NODES) { /* halve: values stay bounded */
            g[n] = (g_node){G_SCALE, n - 1, -1, 0.5, nd.sh};
            t[n] = tnn_scale(s, r, 0.5);
            ok = result_ok("random graph node", t[n], nd.sh);
            n++;
        }
    }
    for (int i = 0; i < n; i++) {
        keep[i] = i >= LEAVES && (i == n - 1 || th_uniform() < 0.1);
        if (ok && keep[i]) tnn_set_output(t[i]);
        v[i] = th_alloc(numel(g[i].sh));
        if (i < LEAVES) th_fill_f32(v[i], numel(g[i].sh), 1.0);
    }
    ok = ok && realize(s, t[n - 1]);
    for (int i = 0; i < LEAVES && ok; i++) ok = put(s, t[i], v[i]);
    ok = ok && compute(s);
    /* the reference */
    for (int i = LEAVES; i < n && ok; i++) {
        size_t m = numel(g[i].sh);
        const g_node *nd = &g[i];
        for (size_t e = 0; e < m; e++) {
            double x = v[nd->a][nd->op <= G_MUL ? bcast_src(nd->sh, g[nd->a].sh, e) : e];
            double y = nd->op <= G_MUL ? v[nd->b][bcast_src(nd->sh, g[nd->b].sh, e)] : 0.0;
            v[i][e] = nd->op == G_ADD     ? x + y
                      : nd->op == G_SUB   ? x - y
                      : nd->op == G_MUL   ? x * y
                      : nd->op == G_SCALE ? x * (double)(float)nd->k
                      : nd->op == G_GELU  ? ref_gelu(x)
                                          : ref_silu(x);
        }
    }
    int checked = 0;
    double worst = 0.0;
    for (int i = LEAVES; i < n && ok; i++) {
        if (!keep[i]) continue;
        size_t m = numel(g[i].sh);
        double *got = th_alloc(m), mx = 0.0;
        for (size_t e = 0; e < m; e++) mx = fmax(mx, fabs(v[i][e]));
        if (get(s, t[i], got)) {
            double err = th_err(got, v[i], m, 1e-5 * mx + 1e-30, 1e-4);
            CHECK(err <= 1.0, "random graph: kept node #%d %s is %.3g x the tolerance off", i,
                  sstr(g[i].sh), err);
            worst = fmax(worst, err);
            checked++;
        }
        free(got);
    }
    CHECK(!ok || checked >= 10, "random graph: only %d nodes checked", checked);
    if (verbose)
        printf("  %-72s %.3g\n", "random graph of 240 element-wise nodes, kept nodes", worst);
    tnn_session_free(s);
    for (int i = 0; i < n; i++) free(v[i]);
}

int main(void) {
    TH_USE_CUDA("test_ops");
    const char *v = getenv("TNN_TEST_VERBOSE");
    verbose = v && *v && strcmp(v, "0") != 0;
    th_seed(20240601);

    test_binary();
    test_scale();
    test_gelu_silu();
    test_softmax();
    test_transpose();
    test_rms_norm();
    test_get_rows();
    test_matmul_seed();
    test_matmul_family();

    test_grad_gelu_silu();
    test_grad_softmax();
    test_grad_rms_norm();
    test_grad_get_rows();
    test_grad_matmul();

    test_chain();
    test_random_graph();
    /* last: their random draws leave the other tests' inputs as they were */
    test_to_bf16();
    test_bf16_activations();
    return th_finish("test_ops");
}
