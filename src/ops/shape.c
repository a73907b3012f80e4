/* shape.c - layer norm, and the copies that move elements between shapes:
 * permute, concat and narrow, each with its gradient rule.
 */
#include "common.h"
#include "../quant/quant.h"
#include "vmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TNN_LN_AVX2 1
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------ */
/* Layer norm                                                               */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *x, *g, *gamma, *beta;
    float *out;
    int64_t cols;
    double eps;
} ln_ctx;

/* Mean and 1/sqrt(var + eps) of a row, with the fixed-order lane sums of
 * vmath.h (two passes: the variance is taken about the mean). */
static inline __attribute__((always_inline)) void row_stats(const float *x, int64_t n, double eps,
                                                           double *mean, double *rstd) {
    double m = tnn_vsum_d(x, n) / (double)n;
    *mean = m;
    *rstd = 1.0 / sqrt(tnn_vsqdev_d(x, m, n) / (double)n + eps);
}

TNN_VEC_CLONES static void ln_range(void *p, int64_t lo, int64_t hi) {
    const ln_ctx *c = p;
    int64_t n = c->cols;
    const float *ga = c->gamma, *be = c->beta;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * n;
        float *y = c->out + r * n;
        double mean, rstd;
        row_stats(x, n, c->eps, &mean, &rstd);
        float m = (float)mean, rs = (float)rstd;
        if (ga && be)
            for (int64_t j = 0; j < n; j++) y[j] = ((x[j] - m) * rs) * ga[j] + be[j];
        else if (ga)
            for (int64_t j = 0; j < n; j++) y[j] = ((x[j] - m) * rs) * ga[j];
        else if (be)
            for (int64_t j = 0; j < n; j++) y[j] = ((x[j] - m) * rs) + be[j];
        else
            for (int64_t j = 0; j < n; j++) y[j] = (x[j] - m) * rs;
    }
}

/* sum x, sum g and sum g x, each in tnn_vsum_d's lane order. Three passes
 * over the row (in L1): GCC compiled the three sums in one 8-lane loop with
 * the lanes on the stack (1.08-1.24 ns per element, one core, in cache,
 * against 0.73 for three passes). Each pass is a chain of double adds,
 * 3 cycles per 8 elements; the AVX2 loop below runs the three chains side
 * by side (0.51 ns in cache, 1.52 -> 1.12 from memory). */
TNN_VEC_CLONES static void ln_sums(const float *x, const float *g, int64_t n, double *sx,
                                   double *sg, double *sgx) {
    *sx = tnn_vsum_d(x, n);
    *sg = tnn_vsum_d(g, n);
    *sgx = tnn_vdot_d(g, x, n);
}

#if defined(TNN_LN_AVX2)
/* ln_sums with AVX2: lanes 0-3 and 4-7 of each sum in two registers, the
 * products (double)g * (double)x rounded before they are added, as
 * tnn_vdot_d does (no fused multiply-add): the same bits. */
__attribute__((target("avx2"))) static void ln_sums_avx2(const float *x, const float *g,
                                                         int64_t n, double *sx, double *sg,
                                                         double *sgx) {
    __m256d ax0 = _mm256_setzero_pd(), ax1 = ax0, ag0 = ax0, ag1 = ax0, ap0 = ax0, ap1 = ax0;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 xv = _mm256_loadu_ps(x + j), gv = _mm256_loadu_ps(g + j);
        __m256d x0 = _mm256_cvtps_pd(_mm256_castps256_ps128(xv));
        __m256d x1 = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));
        __m256d g0 = _mm256_cvtps_pd(_mm256_castps256_ps128(gv));
        __m256d g1 = _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1));
        ax0 = _mm256_add_pd(ax0, x0), ax1 = _mm256_add_pd(ax1, x1);
        ag0 = _mm256_add_pd(ag0, g0), ag1 = _mm256_add_pd(ag1, g1);
        ap0 = _mm256_add_pd(ap0, _mm256_mul_pd(g0, x0));
        ap1 = _mm256_add_pd(ap1, _mm256_mul_pd(g1, x1));
    }
    double ax[8], ag[8], agx[8];
    _mm256_storeu_pd(ax, ax0), _mm256_storeu_pd(ax + 4, ax1);
    _mm256_storeu_pd(ag, ag0), _mm256_storeu_pd(ag + 4, ag1);
    _mm256_storeu_pd(agx, ap0), _mm256_storeu_pd(agx + 4, ap1);
    for (int k = 0; j + k < n; k++) {
        double xv = (double)x[j + k], gv = (double)g[j + k];
        ax[k] += xv, ag[k] += gv, agx[k] += gv * xv;
    }
    *sx = TNN_LANES8_REDUCE(ax), *sg = TNN_LANES8_REDUCE(ag), *sgx = TNN_LANES8_REDUCE(agx);
}
#endif

typedef void (*ln_sums_fn)(const float *x, const float *g, int64_t n, double *sx, double *sg,
                           double *sgx);

/* The quantized kernels' choice (TNN_KERNEL=scalar: the portable passes). */
static ln_sums_fn ln_sums_kernel(void) {
#if defined(TNN_LN_AVX2)
    if (tnn__quant_get_kernel() >= TNN_QK_AVX2) return ln_sums_avx2;
#endif
    return ln_sums;
}

void tnn__k_ln_sums(const float *x, const float *g, int64_t n, double *sx, double *sg,
                    double *sgx) {
    ln_sums_kernel()(x, g, n, sx, sg, sgx);
}

/* y = xhat with xhat = (x - mean) rstd; given g = dL/dy:
 * dx = rstd (g - mean(g) - xhat mean(g xhat)), where
 * mean(g xhat) = rstd (sum(g x) - mean sum(g)) / n. */
TNN_VEC_CLONES static void ln_back_range(void *p, int64_t lo, int64_t hi) {
    const ln_ctx *c = p;
    int64_t n = c->cols;
    ln_sums_fn sums = ln_sums_kernel();
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->x + r * n, *g = c->g + r * n;
        float *dx = c->out + r * n;
        double sx, sg, sgx;
        sums(x, g, n, &sx, &sg, &sgx);
        double mean = sx / (double)n;
        double rstd = 1.0 / sqrt(tnn_vsqdev_d(x, mean, n) / (double)n + c->eps);
        double mg = sg / (double)n, mgx = rstd * (sgx - mean * sg) / (double)n;
        /* dx = rstd (g - mg) - (rstd^2 mgx) (x - mean), the row's constants
         * rounded to float once, the per-element arithmetic in float */
        float ka = (float)rstd, kb = (float)mg, kc = (float)(rstd * rstd * mgx), m = (float)mean;
        for (int64_t j = 0; j < n; j++) dx[j] = ka * (g[j] - kb) - kc * (x[j] - m);
    }
}

void tnn__k_layer_norm(const float *x, const float *gamma, const float *beta, float *y,
                       int64_t rows, int64_t cols, double eps) {
    ln_ctx c = {.x = x, .gamma = gamma, .beta = beta, .out = y, .cols = cols, .eps = eps};
    tnn__parallel_for(rows, 4096 / cols + 1, ln_range, &c);
}

void tnn__k_layer_norm_back(const float *g, const float *x, float *dx, int64_t rows,
                            int64_t cols, double eps) {
    ln_ctx c = {.g = g, .x = x, .out = dx, .cols = cols, .eps = eps};
    tnn__parallel_for(rows, 4096 / cols + 1, ln_back_range, &c);
}

static int check_gain(tnn_session *s, const tnn_tensor *x, tnn_tensor *v, const char *name,
                      const char *func) {
    if (!v) return TNN_OK;
    if (tnn__check_tensor(s, v, func, name)) return tnn_last_status();
    if (v->dtype != TNN_F32 || v->nelem != last_dim(x))
        return tnn__error(TNN_ERR_SHAPE, func, "%s: want %lld f32 values (the last dimension)",
                          name, (long long)last_dim(x));
    return TNN_OK;
}

tnn_tensor *tnn_layer_norm(tnn_session *s, tnn_tensor *x, tnn_tensor *gamma, tnn_tensor *beta,
                           double eps) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, x);
    CHECK_F32_NULL(x);
    if (!(eps >= 0.0) || isinf(eps))
        return TNN_ERR_NULL(TNN_ERR_ARG, "eps=%g: want a finite value >= 0", eps);
    if (check_gain(s, x, gamma, "gamma", __func__) || check_gain(s, x, beta, "beta", __func__))
        return NULL;
    tnn_tensor *src[3] = {x, gamma, beta};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_LAYER_NORM, TNN_F32, x->ndim, x->shape, src, 3);
    if (t) t->fparam[0] = eps;
    return t;
}

int tnn__fwd_layer_norm(tnn_tensor *t) {
    tnn__k_layer_norm(CF32(t->src[0]), t->src[1] ? CF32(t->src[1]) : NULL,
                      t->src[2] ? CF32(t->src[2]) : NULL, F32(t), n_rows(t), last_dim(t),
                      t->fparam[0]);
    return TNN_OK;
}

int tnn__fwd_layer_norm_back(tnn_tensor *t) {
    tnn__k_layer_norm_back(CF32(t->src[0]), CF32(t->src[1]), F32(t), n_rows(t), last_dim(t),
                           t->fparam[0]);
    return TNN_OK;
}

int tnn__bwd_layer_norm(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                        tnn_tensor **d) {
    tnn_tensor *x = t->src[0], *gamma = t->src[1], *beta = t->src[2];
    double eps = t->fparam[0];
    if (need[0]) {
        tnn_tensor *src[2] = {gamma ? tnn_mul(s, g, gamma) : g, x};
        d[0] = src[0] ? tnn__node_new(s, TNN_OP_LAYER_NORM_BACK, TNN_F32, x->ndim, x->shape, src, 2)
                      : NULL;
        if (d[0]) d[0]->fparam[0] = eps;
    }
    if (gamma && need[1])
        d[1] = tnn__sum_like(s, tnn_mul(s, g, tnn_layer_norm(s, x, NULL, NULL, eps)), gamma);
    if (beta && need[2]) d[2] = tnn__sum_like(s, g, beta);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Permute                                                                  */
/* ------------------------------------------------------------------------ */

static void unpack_axes(int64_t packed, int nd, int *axes) {
    for (int i = 0; i < nd; i++) axes[i] = (int)((packed >> (4 * i)) & 15);
}

tnn_tensor *tnn_permute(tnn_session *s, tnn_tensor *a, const int *axes) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    CHECK_F32_NULL(a);
    if (!axes) return TNN_ERR_NULL(TNN_ERR_ARG, "axes is NULL");
    bool seen[TNN_MAX_DIMS] = {false};
    int64_t shape[TNN_MAX_DIMS], packed = 0;
    for (int i = 0; i < a->ndim; i++) {
        if (axes[i] < 0 || axes[i] >= a->ndim || seen[axes[i]])
            return TNN_ERR_NULL(TNN_ERR_ARG, "axes[%d]=%d: want a permutation of 0..%d", i,
                                axes[i], a->ndim - 1);
        seen[axes[i]] = true;
        shape[i] = a->shape[axes[i]];
        packed |= (int64_t)axes[i] << (4 * i);
    }
    tnn_tensor *src[1] = {a};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_PERMUTE, TNN_F32, a->ndim, shape, src, 1);
    if (t) t->iparam[0] = packed;
    return t;
}

int tnn__fwd_permute(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    int nd = a->ndim, axes[TNN_MAX_DIMS];
    unpack_axes(t->iparam[0], nd, axes);
    int64_t astride[TNN_MAX_DIMS], st[TNN_MAX_DIMS];
    astride[nd - 1] = 1;
    for (int i = nd - 2; i >= 0; i--) astride[i] = astride[i + 1] * a->shape[i + 1];
    for (int i = 0; i < nd; i++) st[i] = astride[axes[i]]; /* source stride of output dim i */
    const float *x = CF32(a);
    float *y = F32(t);
    for (int64_t f = 0; f < t->nelem; f++) {
        int64_t rem = f, off = 0;
        for (int i = nd - 1; i >= 0; i--) {
            off += (rem % t->shape[i]) * st[i];
            rem /= t->shape[i];
        }
        y[f] = x[off];
    }
    return TNN_OK;
}

int tnn__bwd_permute(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                     tnn_tensor **d) {
    int nd = t->ndim, axes[TNN_MAX_DIMS], inv[TNN_MAX_DIMS];
    unpack_axes(t->iparam[0], nd, axes);
    for (int i = 0; i < nd; i++) inv[axes[i]] = i;
    d[0] = tnn_permute(s, g, inv);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Concat and narrow                                                        */
/* ------------------------------------------------------------------------ */

/* Copies a block view: for each of `outer` blocks, `n` contiguous floats
 * from src (stride src_stride) to dst (stride dst_stride). */
static void copy_blocks(float *dst, int64_t dst_stride, const float *src, int64_t src_stride,
                        int64_t outer, int64_t n) {
    for (int64_t o = 0; o < outer; o++)
        memcpy(dst + o * dst_stride, src + o * src_stride, (size_t)n * sizeof(float));
}

/* Elements per index of `axis` (the product of the dimensions after it) and
 * the number of blocks (the product of those before it). */
static void axis_split(const tnn_tensor *t, int axis, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < axis; i++) *outer *= t->shape[i];
    for (int i = axis + 1; i < t->ndim; i++) *inner *= t->shape[i];
}

static int norm_axis(const tnn_tensor *a, int axis) { return axis < 0 ? a->ndim + axis : axis; }

tnn_tensor *tnn_concat(tnn_session *s, tnn_tensor *a, tnn_tensor *b, int axis) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    CHECK_TENSOR_NULL(s, b);
    CHECK_F32_NULL(a);
    CHECK_F32_NULL(b);
    int ax = norm_axis(a, axis);
    char ba[TNN_SHAPE_BUF], bb[TNN_SHAPE_BUF];
    tnn__shape_str(a, ba, sizeof ba);
    tnn__shape_str(b, bb, sizeof bb);
    bool ok = a->ndim == b->ndim && ax >= 0 && ax < a->ndim;
    for (int i = 0; ok && i < a->ndim; i++) ok = i == ax || a->shape[i] == b->shape[i];
    if (!ok)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "a %s and b %s cannot be joined along axis %d", ba, bb,
                            axis);
    int64_t shape[TNN_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[ax] += b->shape[ax];
    tnn_tensor *src[2] = {a, b};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_CONCAT, TNN_F32, a->ndim, shape, src, 2);
    if (t) t->iparam[0] = ax;
    return t;
}

int tnn__fwd_concat(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    int ax = (int)t->iparam[0];
    int64_t outer, inner;
    axis_split(t, ax, &outer, &inner);
    int64_t na = a->shape[ax] * inner, nb = b->shape[ax] * inner, nt = t->shape[ax] * inner;
    copy_blocks(F32(t), nt, CF32(a), na, outer, na);
    copy_blocks(F32(t) + na, nt, CF32(b), nb, outer, nb);
    return TNN_OK;
}

tnn_tensor *tnn_narrow(tnn_session *s, tnn_tensor *a, int axis, int64_t start, int64_t len) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    CHECK_F32_NULL(a);
    int ax = norm_axis(a, axis);
    if (ax < 0 || ax >= a->ndim)
        return TNN_ERR_NULL(TNN_ERR_ARG, "axis=%d for a tensor of %d dimensions", axis, a->ndim);
    if (start < 0 || len < 1 || start > a->shape[ax] - len)
        return TNN_ERR_NULL(TNN_ERR_RANGE, "[%lld, %lld) is not inside axis %d of size %lld",
                            (long long)start, (long long)(start + len), axis,
                            (long long)a->shape[ax]);
    int64_t shape[TNN_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[ax] = len;
    tnn_tensor *src[1] = {a};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_NARROW, TNN_F32, a->ndim, shape, src, 1);
    if (t) t->iparam[0] = ax, t->iparam[1] = start;
    return t;
}

int tnn__fwd_narrow(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    int ax = (int)t->iparam[0];
    int64_t outer, inner;
    axis_split(a, ax, &outer, &inner);
    int64_t na = a->shape[ax] * inner, nt = t->shape[ax] * inner;
    copy_blocks(F32(t), nt, CF32(a) + t->iparam[1] * inner, na, outer, nt);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Views: a contiguous part of a tensor, in place                           */
/* ------------------------------------------------------------------------ */

tnn_tensor *tnn__view(tnn_session *s, tnn_tensor *a, int64_t at, int ndim, const int64_t *shape) {
    tnn_tensor *src[1] = {a};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_VIEW, a->dtype, ndim, shape, src, 1);
    if (t) {
        t->iparam[0] = at;
        t->flags |= TNN_FLAG_ALIAS;
    }
    return t;
}

int tnn__fwd_view(tnn_tensor *t) {
    (void)t; /* its data is its source's */
    return TNN_OK;
}

/* The two parts of the gradient; along the outermost axis that has more
 * than one element each is a contiguous range of g, taken in place. */
int tnn__bwd_concat(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                    tnn_tensor **d) {
    int ax = (int)t->iparam[0];
    int64_t la = t->src[0]->shape[ax], lb = t->src[1]->shape[ax], outer, inner;
    axis_split(g, ax, &outer, &inner);
    for (int k = 0; k < 2; k++) {
        if (!need[k]) continue;
        const tnn_tensor *part = t->src[k];
        int64_t start = k ? la : 0, len = k ? lb : la;
        d[k] = outer == 1 ? tnn__view(s, g, start * inner, part->ndim, part->shape)
                          : tnn_narrow(s, g, ax, start, len);
    }
    return TNN_OK;
}

/* The gradient of a part: zeros around it, joined along the axis. */
int tnn__bwd_narrow(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                    tnn_tensor **d) {
    const tnn_tensor *a = t->src[0];
    int ax = (int)t->iparam[0];
    int64_t start = t->iparam[1], len = t->shape[ax], after = a->shape[ax] - start - len;
    int64_t shape[TNN_MAX_DIMS];
    tnn_tensor *r = g;
    if (start > 0) {
        memcpy(shape, a->shape, sizeof shape);
        shape[ax] = start;
        r = tnn_concat(s, tnn__fill(s, a->ndim, shape, 0.0), r, ax);
    }
    if (after > 0 && r) {
        memcpy(shape, a->shape, sizeof shape);
        shape[ax] = after;
        r = tnn_concat(s, r, tnn__fill(s, a->ndim, shape, 0.0), ax);
    }
    d[0] = r;
    return TNN_OK;
}
