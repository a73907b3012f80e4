/* rows.c - ops that work on each row (the last dimension): softmax,
 * RMSNorm and their backward rules. Row sums are accumulated in double in a
 * fixed order of 8 lanes (vmath.h), so a row's result never depends on the
 * thread split or the clone, and the loops vectorize.
 */
#include "common.h"
#include "vmath.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    const float *x, *y, *dy, *gamma;
    float *out;
    int64_t cols;
    double eps;
} row_ctx;

static int64_t min_rows(int64_t cols) { return 4096 / cols + 1; }

/* ------------------------------------------------------------------------ */
/* Softmax                                                                  */
/* ------------------------------------------------------------------------ */

/* y[j] = e^(x[j] - mx) for j < n, and the largest xn[j] (tnn_vmax of the
 * next row): that row's first pass, a wait on memory, runs under this
 * row's exponentials instead of after them. One flat loop with a single
 * key maximum (an integer max: any order gives the same result): written
 * as 8 lanes, GCC checked y against x and xn on every 8 elements and kept
 * the lanes on the stack (1.18 -> 0.79 ns per element in L1, one core).
 * (Hand-written AVX2 with the row sum in the same loop was no faster: the
 * loop is bound by its floating-point operations, not the sum's latency.) */
static inline __attribute__((always_inline)) float exp_row_max_next(const float *x, float mx,
                                                                   float *y, const float *xn,
                                                                   int64_t n) {
    int32_t mk = tnn__fkey(xn[0]);
    for (int64_t j = 0; j < n; j++) {
        y[j] = tnn_vexp_le0(x[j] - mx);
        int32_t v = tnn__fkey(xn[j]);
        mk = v > mk ? v : mk;
    }
    return tnn__fkey_float(mk);
}

TNN_VEC_CLONES static void softmax_range(void *p, int64_t lo, int64_t hi) {
    const row_ctx *c = p;
    int64_t n = c->cols;
    float mx = lo < hi ? tnn_vmax(c->x + lo * n, n) : 0.0f;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * n;
        float *y = c->out + r * n, mnext = 0.0f;
        if (r + 1 < hi && (y <= x || y >= x + 2 * n)) { /* y does not overlap row r+1 */
            mnext = exp_row_max_next(x, mx, y, x + n, n);
        } else {
            for (int64_t j = 0; j < n; j++) y[j] = tnn_vexp_le0(x[j] - mx);
            if (r + 1 < hi) mnext = tnn_vmax(x + n, n);
        }
        float inv = (float)(1.0 / tnn_vsum_d(y, n));
        for (int64_t j = 0; j < n; j++) y[j] *= inv;
        mx = mnext;
    }
}

void tnn__k_softmax(const float *x, float *y, int64_t rows, int64_t cols) {
    row_ctx c = {.x = x, .out = y, .cols = cols};
    tnn__parallel_for(rows, min_rows(cols), softmax_range, &c);
}

TNN_VEC_CLONES static void softmax_back_range(void *p, int64_t lo, int64_t hi) {
    const row_ctx *c = p;
    int64_t n = c->cols;
    for (int64_t r = lo; r < hi; r++) {
        const float *dy = c->dy + r * n, *y = c->y + r * n;
        float *dx = c->out + r * n;
        float d = (float)tnn_vdot_d(dy, y, n);
        for (int64_t j = 0; j < n; j++) dx[j] = y[j] * (dy[j] - d);
    }
}

void tnn__k_softmax_back(const float *dy, const float *y, float *dx, int64_t rows, int64_t cols) {
    row_ctx c = {.dy = dy, .y = y, .out = dx, .cols = cols};
    tnn__parallel_for(rows, min_rows(cols), softmax_back_range, &c);
}

/* ------------------------------------------------------------------------ */
/* RMSNorm                                                                  */
/* ------------------------------------------------------------------------ */

TNN_VEC_CLONES static void rms_norm_range(void *p, int64_t lo, int64_t hi) {
    const row_ctx *c = p;
    int64_t n = c->cols;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * n;
        float *y = c->out + r * n;
        float scale = (float)(1.0 / sqrt(tnn_vdot_d(x, x, n) / (double)n + c->eps));
        if (c->gamma) {
            const float *g = c->gamma;
            for (int64_t j = 0; j < n; j++) y[j] = (x[j] * scale) * g[j];
        } else {
            for (int64_t j = 0; j < n; j++) y[j] = x[j] * scale;
        }
    }
}

void tnn__k_rms_norm(const float *x, const float *gamma, float *y, int64_t rows, int64_t cols,
                     double eps) {
    row_ctx c = {.x = x, .gamma = gamma, .out = y, .cols = cols, .eps = eps};
    tnn__parallel_for(rows, min_rows(cols), rms_norm_range, &c);
}

/* y = x * r with r = (mean(x^2) + eps)^-1/2:
 * dx_i = r * dy_i - r^3 * x_i * sum_j(dy_j x_j) / n
 * With gamma, dy_j is first dy_j * gamma_j (rounded to f32, as a separate
 * multiplication node would give it): the backward of rms_norm(x, gamma). */
/* tnn_vdot_d(dy * g, x) with each dy_j g_j rounded to f32 first: the
 * same lanes, so the bits of a dot with a stored product. */
static inline __attribute__((always_inline)) double vdot_gained_d(const float *dy,
                                                                  const float *g,
                                                                  const float *x, int64_t n) {
    double a[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            float d = dy[j + k] * g[j + k];
            a[k] += (double)d * (double)x[j + k];
        }
    for (int k = 0; j + k < n; k++) {
        float d = dy[j + k] * g[j + k];
        a[k] += (double)d * (double)x[j + k];
    }
    return TNN_LANES8_REDUCE(a);
}

TNN_VEC_CLONES static void rms_norm_back_range(void *p, int64_t lo, int64_t hi) {
    const row_ctx *c = p;
    int64_t n = c->cols;
    const float *g = c->gamma;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * n, *dy = c->dy + r * n;
        float *dx = c->out + r * n;
        double ss = tnn_vdot_d(x, x, n), dot = g ? vdot_gained_d(dy, g, x, n) : tnn_vdot_d(dy, x, n);
        double rr = 1.0 / sqrt(ss / (double)n + c->eps);
        float a = (float)rr, b = (float)(rr * rr * rr * dot / (double)n);
        if (g) {
            for (int64_t j = 0; j < n; j++) {
                float d = dy[j] * g[j];
                dx[j] = a * d - b * x[j];
            }
        } else {
            for (int64_t j = 0; j < n; j++) dx[j] = a * dy[j] - b * x[j];
        }
    }
}

void tnn__k_rms_norm_back(const float *dy, const float *x, const float *gamma, float *dx,
                          int64_t rows, int64_t cols, double eps) {
    row_ctx c = {.dy = dy, .x = x, .gamma = gamma, .out = dx, .cols = cols, .eps = eps};
    tnn__parallel_for(rows, min_rows(cols), rms_norm_back_range, &c);
}

/* The gradient of rms_norm's gamma: dgamma_j = sum over rows r of
 * dy_rj * (x_rj * r_r), each product rounded to f32 as the forward's
 * normalized value and a multiplication node give it, summed in double in
 * row order (reduce_to's order): the bits of those three nodes, in two
 * passes (the rows' scales, then the columns in blocks). */
typedef struct {
    const float *dy, *x;
    float *scale, *out;
    int64_t rows, cols;
    double eps;
} gain_ctx;

#define GAIN_COLS 64

TNN_VEC_CLONES static void gain_scale_range(void *p, int64_t lo, int64_t hi) {
    const gain_ctx *c = p;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * c->cols;
        c->scale[r] = (float)(1.0 / sqrt(tnn_vdot_d(x, x, c->cols) / (double)c->cols + c->eps));
    }
}

TNN_VEC_CLONES static void gain_cols_range(void *p, int64_t lo, int64_t hi) {
    const gain_ctx *c = p;
    for (int64_t b = lo; b < hi; b++) {
        int64_t j0 = b * GAIN_COLS, w = c->cols - j0 < GAIN_COLS ? c->cols - j0 : GAIN_COLS;
        double acc[GAIN_COLS] = {0};
        for (int64_t r = 0; r < c->rows; r++) {
            const float *x = c->x + r * c->cols + j0, *dy = c->dy + r * c->cols + j0;
            float sc = c->scale[r];
            for (int64_t j = 0; j < w; j++) {
                float nrm = x[j] * sc, prod = dy[j] * nrm;
                acc[j] += prod;
            }
        }
        for (int64_t j = 0; j < w; j++) c->out[j0 + j] = (float)acc[j];
    }
}

int tnn__k_rms_norm_gain(const float *dy, const float *x, float *dgamma, int64_t rows,
                         int64_t cols, double eps) {
    float *scale = malloc((size_t)(rows > 0 ? rows : 1) * sizeof *scale);
    if (!scale) return TNN_ERR(TNN_ERR_NOMEM, "out of memory (%lld row scales)", (long long)rows);
    gain_ctx c = {.dy = dy, .x = x, .scale = scale, .out = dgamma, .rows = rows, .cols = cols,
                  .eps = eps};
    tnn__parallel_for(rows, min_rows(cols), gain_scale_range, &c);
    tnn__parallel_for((cols + GAIN_COLS - 1) / GAIN_COLS, 1, gain_cols_range, &c);
    free(scale);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Builders and forwards                                                    */
/* ------------------------------------------------------------------------ */

tnn_tensor *tnn__pair_build(tnn_session *s, tnn_tensor *x, tnn_tensor *y, int op,
                            const char *func, const char *xn, const char *yn);

static int check_eps(double eps, const char *func) {
    if (!(eps >= 0.0) || isinf(eps))
        return tnn__error(TNN_ERR_ARG, func, "eps=%g: want a finite value >= 0", eps);
    return TNN_OK;
}

tnn_tensor *tnn_softmax(tnn_session *s, tnn_tensor *a) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    CHECK_F32_NULL(a);
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, TNN_OP_SOFTMAX, TNN_F32, a->ndim, a->shape, src, 1);
}

tnn_tensor *tnn_softmax_back(tnn_session *s, tnn_tensor *dy, tnn_tensor *y) {
    return tnn__pair_build(s, dy, y, TNN_OP_SOFTMAX_BACK, __func__, "dy", "y");
}

tnn_tensor *tnn_rms_norm(tnn_session *s, tnn_tensor *x, tnn_tensor *gamma, double eps) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, x);
    CHECK_F32_NULL(x);
    if (check_eps(eps, __func__)) return NULL;
    if (gamma) {
        CHECK_TENSOR_NULL(s, gamma);
        CHECK_F32_NULL(gamma);
        char bx[TNN_SHAPE_BUF], bg[TNN_SHAPE_BUF];
        bool ok = gamma->nelem == last_dim(x) &&
                  (gamma->ndim == 1 || (gamma->ndim == 2 && gamma->shape[0] == 1));
        if (!ok)
            return TNN_ERR_NULL(TNN_ERR_SHAPE, "x %s, gamma %s: gamma must be (%lld) or (1, %lld)",
                                tnn__shape_str(x, bx, sizeof bx),
                                tnn__shape_str(gamma, bg, sizeof bg), (long long)last_dim(x),
                                (long long)last_dim(x));
    }
    tnn_tensor *src[2] = {x, gamma};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_RMS_NORM, TNN_F32, x->ndim, x->shape, src,
                                  gamma ? 2 : 1);
    if (t) t->fparam[0] = eps;
    return t;
}

tnn_tensor *tnn_rms_norm_back(tnn_session *s, tnn_tensor *dy, tnn_tensor *x, double eps) {
    if (check_eps(eps, __func__)) return NULL;
    tnn_tensor *t = tnn__pair_build(s, dy, x, TNN_OP_RMS_NORM_BACK, __func__, "dy", "x");
    if (t) t->fparam[0] = eps;
    return t;
}

int tnn__fwd_softmax(tnn_tensor *t) {
    tnn__k_softmax(CF32(t->src[0]), F32(t), n_rows(t), last_dim(t));
    return TNN_OK;
}
int tnn__fwd_softmax_back(tnn_tensor *t) {
    tnn__k_softmax_back(CF32(t->src[0]), CF32(t->src[1]), F32(t), n_rows(t), last_dim(t));
    return TNN_OK;
}
int tnn__fwd_rms_norm(tnn_tensor *t) {
    const float *g = t->src[1] ? CF32(t->src[1]) : NULL;
    tnn__k_rms_norm(CF32(t->src[0]), g, F32(t), n_rows(t), last_dim(t), t->fparam[0]);
    return TNN_OK;
}
int tnn__fwd_rms_norm_back(tnn_tensor *t) {
    const float *g = t->src[2] ? CF32(t->src[2]) : NULL;
    tnn__k_rms_norm_back(CF32(t->src[0]), CF32(t->src[1]), g, F32(t), n_rows(t), last_dim(t),
                         t->fparam[0]);
    return TNN_OK;
}

/* The gradient rule's nodes of rms_norm(x, gamma): dx (dy and x, with gamma
 * taken into dy row by row) and dgamma (gamma's shape). */
tnn_tensor *tnn__rms_norm_back_gamma(tnn_session *s, tnn_tensor *dy, tnn_tensor *x,
                                     tnn_tensor *gamma, double eps) {
    tnn_tensor *src[3] = {dy, x, gamma};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_RMS_NORM_BACK, TNN_F32, x->ndim, x->shape, src, 3);
    if (t) t->fparam[0] = eps;
    return t;
}

tnn_tensor *tnn__rms_norm_gain(tnn_session *s, tnn_tensor *dy, tnn_tensor *x,
                               const tnn_tensor *gamma, double eps) {
    tnn_tensor *src[2] = {dy, x};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_RMS_NORM_GAIN, TNN_F32, gamma->ndim, gamma->shape,
                                  src, 2);
    if (t) t->fparam[0] = eps;
    return t;
}

int tnn__fwd_rms_norm_gain(tnn_tensor *t) {
    const tnn_tensor *x = t->src[1];
    int64_t cols = last_dim(x);
    return tnn__k_rms_norm_gain(CF32(t->src[0]), CF32(x), F32(t), x->nelem / cols, cols,
                                t->fparam[0]);
}
