/* reduce.c - reductions and shape ops: sum, mean, reshape, expand
 * (broadcast to a shape), reduce_to (sum back over broadcast dimensions),
 * fill, and the fused softmax cross-entropy loss with its backward.
 *
 * Whole-tensor sums run in index order in double on one thread: the
 * result never depends on the thread count.
 */
#include "common.h"
#include "vmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* sum, mean                                                                */
/* ------------------------------------------------------------------------ */

static tnn_tensor *reduce_all(tnn_session *s, tnn_tensor *a, int op, const char *func) {
    if (tnn__check_session(s, func) || tnn__check_tensor(s, a, func, "a")) return NULL;
    if (a->dtype != TNN_F32) {
        char b[TNN_SHAPE_BUF];
        return (tnn__error(TNN_ERR_ARG, func, "a is %s: want an f32 tensor",
                           tnn__shape_str(a, b, sizeof b)),
                NULL);
    }
    int64_t one = 1;
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, op, TNN_F32, 1, &one, src, 1);
}

tnn_tensor *tnn_sum(tnn_session *s, tnn_tensor *a) {
    return reduce_all(s, a, TNN_OP_SUM, __func__);
}
tnn_tensor *tnn_mean(tnn_session *s, tnn_tensor *a) {
    return reduce_all(s, a, TNN_OP_MEAN, __func__);
}

static double sum_f32(const float *x, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; i++) acc += x[i];
    return acc;
}

int tnn__fwd_sum(tnn_tensor *t) {
    F32(t)[0] = (float)sum_f32(CF32(t->src[0]), t->src[0]->nelem);
    return TNN_OK;
}
int tnn__fwd_mean(tnn_tensor *t) {
    F32(t)[0] = (float)(sum_f32(CF32(t->src[0]), t->src[0]->nelem) / (double)t->src[0]->nelem);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* reshape                                                                  */
/* ------------------------------------------------------------------------ */

tnn_tensor *tnn_reshape(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    if (ndim < 1 || ndim > TNN_MAX_DIMS || !shape)
        return TNN_ERR_NULL(TNN_ERR_ARG, "ndim=%d: want 1..%d and a shape", ndim, TNN_MAX_DIMS);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0)
            return TNN_ERR_NULL(TNN_ERR_ARG, "shape[%d]=%lld: want sizes >= 1", i,
                                (long long)shape[i]);
        if (!tnn__mul_ok(n, shape[i], &n))
            return TNN_ERR_NULL(TNN_ERR_OVERFLOW, "shape[%d]=%lld: element count overflows", i,
                                (long long)shape[i]);
    }
    if (n != a->nelem) {
        char b[TNN_SHAPE_BUF];
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "a %s has %lld elements, the new shape %lld",
                            tnn__shape_str(a, b, sizeof b), (long long)a->nelem, (long long)n);
    }
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, TNN_OP_RESHAPE, a->dtype, ndim, shape, src, 1);
}

int tnn__fwd_reshape(tnn_tensor *t) {
    memcpy(t->data, t->src[0]->data, t->nbytes);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* expand, reduce_to                                                        */
/* ------------------------------------------------------------------------ */

/* Right-aligns `small` against `big`: true if every dimension of small is
 * 1 or equal to big's. */
static bool broadcastable(int snd, const int64_t *ss, int bnd, const int64_t *bs) {
    if (snd > bnd) return false;
    for (int i = 0; i < snd; i++) {
        int64_t d = ss[snd - 1 - i], D = bs[bnd - 1 - i];
        if (d != 1 && d != D) return false;
    }
    return true;
}

/* Index of `small` (right-aligned, broadcast) for flat index f of `big`. */
static int64_t small_index(int64_t f, int snd, const int64_t *ss, int bnd, const int64_t *bs) {
    int64_t idx = 0, stride = 1;
    for (int i = 0; i < bnd; i++) {
        int bi = bnd - 1 - i;
        int64_t coord = f % bs[bi];
        f /= bs[bi];
        if (i < snd) {
            int64_t d = ss[snd - 1 - i];
            if (d != 1) idx += coord * stride;
            stride *= d;
        }
    }
    return idx;
}

tnn_tensor *tnn__expand(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape) {
    if (!broadcastable(a->ndim, a->shape, ndim, shape))
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "a cannot be broadcast to the target shape");
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, TNN_OP_EXPAND, TNN_F32, ndim, shape, src, 1);
}

tnn_tensor *tnn__reduce_to(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape) {
    if (!broadcastable(ndim, shape, a->ndim, a->shape))
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "the target shape does not broadcast to a");
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, TNN_OP_REDUCE_TO, TNN_F32, ndim, shape, src, 1);
}

typedef struct {
    const float *a;
    float *out;
    const tnn_tensor *small, *big;
} ex_ctx;

static void expand_range(void *p, int64_t lo, int64_t hi) {
    const ex_ctx *c = p;
    for (int64_t f = lo; f < hi; f++)
        c->out[f] = c->a[small_index(f, c->small->ndim, c->small->shape, c->big->ndim,
                                     c->big->shape)];
}

int tnn__fwd_expand(tnn_tensor *t) {
    ex_ctx c = {.a = CF32(t->src[0]), .out = F32(t), .small = t->src[0], .big = t};
    tnn__parallel_for(t->nelem, 16384, expand_range, &c);
    return TNN_OK;
}

/* Sums in the source's flat order, on one thread: deterministic. */
int tnn__fwd_reduce_to(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    float *out = F32(t);
    const float *x = CF32(a);
    if (t->nelem == 1) {
        out[0] = (float)sum_f32(x, a->nelem);
        return TNN_OK;
    }
    /* Common case: t's shape (leading 1s aside) is a's trailing shape, so
     * whole leading rows are summed (a bias gradient). */
    int lead = 0;
    while (lead < t->ndim - 1 && t->shape[lead] == 1) lead++;
    bool trailing = t->ndim - lead <= a->ndim;
    for (int i = lead; i < t->ndim && trailing; i++)
        trailing = t->shape[i] == a->shape[a->ndim - t->ndim + i];
    if (trailing) {
        int64_t inner = t->nelem, outer = a->nelem / inner;
        double *acc = calloc((size_t)inner, sizeof *acc);
        if (!acc) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        for (int64_t r = 0; r < outer; r++)
            for (int64_t j = 0; j < inner; j++) acc[j] += x[r * inner + j];
        for (int64_t j = 0; j < inner; j++) out[j] = (float)acc[j];
        free(acc);
        return TNN_OK;
    }
    double *acc = calloc((size_t)t->nelem, sizeof *acc);
    if (!acc) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    for (int64_t f = 0; f < a->nelem; f++)
        acc[small_index(f, t->ndim, t->shape, a->ndim, a->shape)] += x[f];
    for (int64_t j = 0; j < t->nelem; j++) out[j] = (float)acc[j];
    free(acc);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* fill                                                                     */
/* ------------------------------------------------------------------------ */

tnn_tensor *tnn__fill(tnn_session *s, int ndim, const int64_t *shape, double value) {
    tnn_tensor *t = tnn__node_new(s, TNN_OP_FILL, TNN_F32, ndim, shape, NULL, 0);
    if (t) t->fparam[0] = value;
    return t;
}

int tnn__fwd_fill(tnn_tensor *t) {
    float v = (float)t->fparam[0];
    float *o = F32(t);
    for (int64_t i = 0; i < t->nelem; i++) o[i] = v;
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Softmax cross-entropy                                                    */
/* ------------------------------------------------------------------------ */

/* loss = mean over rows r with targets[r] != ignore of
 *        logsumexp(logits[r][0..V)) - logits[r][targets[r]]  (0 if no row
 * counts), V = n_classes (iparam[1]) of the row's width; columns past it
 * are padding: no part of the loss, a zero gradient. */
static tnn_tensor *cross_entropy(tnn_session *s, tnn_tensor *logits, tnn_tensor *targets,
                                 int ignore_index, bool all_columns, int64_t n_classes,
                                 const char *op) {
    if (tnn__check_session(s, op) || tnn__check_tensor(s, logits, op, "logits") ||
        tnn__check_tensor(s, targets, op, "targets"))
        return NULL;
    char bl[TNN_SHAPE_BUF], bt[TNN_SHAPE_BUF];
    tnn__shape_str(logits, bl, sizeof bl);
    tnn__shape_str(targets, bt, sizeof bt);
    /* A wrong dtype is an argument error, a wrong shape a shape error. */
    if (logits->dtype != TNN_F32 || logits->ndim != 2) {
        tnn__error(logits->dtype != TNN_F32 ? TNN_ERR_ARG : TNN_ERR_SHAPE, op,
                   "logits %s: want a 2-D f32 tensor (N, V)", bl);
        return NULL;
    }
    if (targets->dtype != TNN_I32 || targets->ndim != 1 || targets->shape[0] != logits->shape[0]) {
        tnn__error(targets->dtype != TNN_I32 ? TNN_ERR_ARG : TNN_ERR_SHAPE, op,
                   "targets %s: want a 1-D i32 tensor of N = %lld", bt,
                   (long long)logits->shape[0]);
        return NULL;
    }
    if (all_columns) n_classes = logits->shape[1];
    if (n_classes < 1 || n_classes > logits->shape[1]) {
        tnn__error(TNN_ERR_ARG, op, "n_classes = %lld: want 1 to the logits' %lld columns",
                   (long long)n_classes, (long long)logits->shape[1]);
        return NULL;
    }
    int64_t one = 1;
    tnn_tensor *src[2] = {logits, targets};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_CROSS_ENTROPY, TNN_F32, 1, &one, src, 2);
    if (t) {
        t->iparam[0] = ignore_index;
        t->iparam[1] = n_classes;
    }
    return t;
}

tnn_tensor *tnn_cross_entropy(tnn_session *s, tnn_tensor *logits, tnn_tensor *targets,
                              int ignore_index) {
    return cross_entropy(s, logits, targets, ignore_index, true, 0, __func__);
}

tnn_tensor *tnn_cross_entropy_padded(tnn_session *s, tnn_tensor *logits, tnn_tensor *targets,
                                     int ignore_index, int64_t n_classes) {
    return cross_entropy(s, logits, targets, ignore_index, false, n_classes, __func__);
}

tnn_tensor *tnn__cross_entropy_back(tnn_session *s, tnn_tensor *ce, tnn_tensor *dloss) {
    tnn_tensor *src[3] = {ce->src[0], ce->src[1], dloss};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_CROSS_ENTROPY_BACK, TNN_F32, 2, ce->src[0]->shape,
                                  src, 3);
    if (t) {
        t->iparam[0] = ce->iparam[0];
        t->iparam[1] = ce->iparam[1];
    }
    return t;
}

/* Checks targets; returns the number of counted rows or a negative status. */
static int64_t ce_count(const tnn_tensor *t) {
    const tnn_tensor *lg = t->src[0];
    const int32_t *tg = t->src[1]->data;
    int64_t N = lg->shape[0], V = t->iparam[1], count = 0;
    int32_t ign = (int32_t)t->iparam[0];
    for (int64_t r = 0; r < N; r++) {
        if (tg[r] == ign) continue;
        if (tg[r] < 0 || tg[r] >= V)
            return tnn__error(TNN_ERR_RANGE, tnn__ops[t->op].name,
                              "targets[%lld] = %d is outside [0, %lld) (ignore_index %d)",
                              (long long)r, tg[r], (long long)V, ign);
        count++;
    }
    return count;
}

typedef struct {
    const float *lg, *dloss;
    const int32_t *tg;
    float *out;   /* per-row losses (forward) or dlogits (backward) */
    int64_t V, W; /* classes; the row's width (V, or more with padding) */
    int32_t ign;
    double scale; /* backward: dloss / count */
} ce_ctx;

/* y[j] = e^(x[j] - mx) for j < n. This file builds at -O2, where GCC only
 * vectorizes loops of a fixed trip count: blocks of CE_BLK, then a tail. */
enum { CE_BLK = 64 };
TNN_VEC_CLONES static void exp_shift(const float *x, float *y, int64_t n, float mx) {
    int64_t j = 0;
    for (; j + CE_BLK <= n; j += CE_BLK) {
        float b[CE_BLK];
        for (int k = 0; k < CE_BLK; k++) b[k] = tnn_vexp_le0(x[j + k] - mx);
        memcpy(y + j, b, sizeof b);
    }
    for (; j < n; j++) y[j] = tnn_vexp_le0(x[j] - mx);
}

TNN_VEC_CLONES static float row_max(const float *x, int64_t V) { return tnn_vmax(x, V); }

static double row_lse(const float *x, int64_t V) {
    float mx = row_max(x, V);
    double sum = 0.0;
    float b[CE_BLK];
    for (int64_t j = 0; j < V; j += CE_BLK) {
        int64_t m = V - j < CE_BLK ? V - j : CE_BLK;
        exp_shift(x + j, b, m, mx);
        for (int64_t k = 0; k < m; k++) sum += b[k];
    }
    return (double)mx + log(sum);
}

static void ce_fwd_range(void *p, int64_t lo, int64_t hi) {
    const ce_ctx *c = p;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->lg + r * c->W;
        c->out[r] = c->tg[r] == c->ign ? 0.0f : (float)(row_lse(x, c->V) - x[c->tg[r]]);
    }
}

int tnn__fwd_cross_entropy(tnn_tensor *t) {
    int64_t count = ce_count(t);
    if (count < 0) return (int)count;
    const tnn_tensor *lg = t->src[0];
    int64_t N = lg->shape[0];
    float *rows = malloc((size_t)N * sizeof *rows);
    if (!rows) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    ce_ctx c = {.lg = CF32(lg), .tg = t->src[1]->data, .out = rows, .V = t->iparam[1],
                .W = lg->shape[1], .ign = (int32_t)t->iparam[0]};
    tnn__parallel_for(N, 1 + 16384 / c.V, ce_fwd_range, &c);
    double total = 0.0;
    for (int64_t r = 0; r < N; r++) total += rows[r];
    free(rows);
    F32(t)[0] = count ? (float)(total / (double)count) : 0.0f;
    return TNN_OK;
}

static void ce_back_range(void *p, int64_t lo, int64_t hi) {
    const ce_ctx *c = p;
    for (int64_t r = lo; r < hi; r++) {
        const float *x = c->lg + r * c->W;
        float *d = c->out + r * c->W;
        memset(d + c->V, 0, (size_t)(c->W - c->V) * sizeof *d); /* padding: after x's last read */
        if (c->tg[r] == c->ign) {
            memset(d, 0, (size_t)c->V * sizeof *d);
            continue;
        }
        /* softmax with the forward's exp, scaled by dloss/count */
        float mx = row_max(x, c->V);
        exp_shift(x, d, c->V, mx);
        double sum = 0.0;
        for (int64_t j = 0; j < c->V; j++) sum += d[j];
        float k = (float)(c->scale / sum);
        for (int64_t j = 0; j < c->V; j++) d[j] *= k;
        d[c->tg[r]] -= (float)c->scale;
    }
}

int tnn__fwd_cross_entropy_back(tnn_tensor *t) {
    int64_t count = ce_count(t);
    if (count < 0) return (int)count;
    const tnn_tensor *lg = t->src[0];
    double dl = CF32(t->src[2])[0];
    ce_ctx c = {.lg = CF32(lg), .tg = t->src[1]->data, .out = F32(t), .V = t->iparam[1],
                .W = lg->shape[1], .ign = (int32_t)t->iparam[0],
                .scale = count ? dl / (double)count : 0.0};
    tnn__parallel_for(lg->shape[0], 1 + 16384 / c.V, ce_back_range, &c);
    return TNN_OK;
}
