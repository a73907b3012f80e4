/* optimizer.c - optimizers that run inside tnn_compute, after the graph:
 * AdamW (decoupled weight decay, bias correction) and SGD with momentum,
 * with global gradient-norm clipping. Parameters, gradients and moments
 * stay in the session; a step with a non-finite loss or gradient is
 * skipped with a warning instead of poisoning the weights.
 *
 * The update formulas follow PyTorch's torch.optim.AdamW / SGD, so a
 * reference run there can be matched step by step.
 */
#include "internal.h"

#include "../cpu/pool.h"
#include "../ops/common.h"
#include "../ops/vmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { OPT_ADAMW = 0, OPT_SGD = 1 };

struct tnn_optim {
    int kind;
    double lr, b1, b2, eps, wd, momentum, clip;
    int64_t step, skipped;
    double last_norm;
    int n;
    tnn_tensor **params;
    float **m, **v; /* AdamW moments; SGD uses m as the momentum buffer */
};

void tnn__optim_free(tnn_session *s) {
    struct tnn_optim *o = s->optim;
    if (!o) return;
    for (int i = 0; i < o->n; i++) {
        if (o->m && o->m[i]) s->backend->free(o->m[i]);
        if (o->v && o->v[i]) s->backend->free(o->v[i]);
    }
    free(o->m);
    free(o->v);
    free(o->params);
    free(o);
    s->optim = NULL;
}

static int optim_new(tnn_session *s, int kind, const char *func) {
    if (tnn__check_session(s, func)) return tnn_last_status();
    if (!s->loss)
        return tnn__error(TNN_ERR_STATE, func, "call tnn_backward before setting an optimizer");
    tnn__optim_free(s);
    struct tnn_optim *o = calloc(1, sizeof *o);
    if (!o) return tnn__error(TNN_ERR_NOMEM, func, "out of memory");
    for (int32_t i = 0; i < s->n_tensors; i++)
        if (tnn__tensor_at(s, i)->grad) o->n++;
    o->params = calloc((size_t)o->n + 1, sizeof *o->params);
    o->m = calloc((size_t)o->n + 1, sizeof *o->m);
    o->v = calloc((size_t)o->n + 1, sizeof *o->v);
    s->optim = o;
    if (!o->params || !o->m || !o->v) {
        tnn__optim_free(s);
        return tnn__error(TNN_ERR_NOMEM, func, "out of memory");
    }
    int k = 0;
    for (int32_t i = 0; i < s->n_tensors; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (!t->grad) continue;
        o->params[k] = t;
        o->m[k] = s->backend->alloc(t->nbytes);
        if (kind == OPT_ADAMW) o->v[k] = s->backend->alloc(t->nbytes);
        if (!o->m[k] || (kind == OPT_ADAMW && !o->v[k])) {
            tnn__optim_free(s);
            return tnn__error(TNN_ERR_NOMEM, func, "out of memory for optimizer state");
        }
        k++;
    }
    o->kind = kind;
    o->clip = 0.0;
    return TNN_OK;
}

static bool finite_nonneg(double x) { return x >= 0.0 && isfinite(x); }

int tnn_optimizer_adamw(tnn_session *s, double lr, double beta1, double beta2, double eps,
                        double weight_decay) {
    if (!finite_nonneg(lr) || !(beta1 >= 0.0 && beta1 < 1.0) || !(beta2 >= 0.0 && beta2 < 1.0) ||
        !(eps > 0.0 && isfinite(eps)) || !finite_nonneg(weight_decay))
        return TNN_ERR(TNN_ERR_ARG,
                       "lr=%g beta1=%g beta2=%g eps=%g weight_decay=%g: want lr >= 0, betas in "
                       "[0, 1), eps > 0, weight_decay >= 0",
                       lr, beta1, beta2, eps, weight_decay);
    int rc = optim_new(s, OPT_ADAMW, __func__);
    if (rc) return rc;
    struct tnn_optim *o = s->optim;
    o->lr = lr, o->b1 = beta1, o->b2 = beta2, o->eps = eps, o->wd = weight_decay;
    return TNN_OK;
}

int tnn_optimizer_sgd(tnn_session *s, double lr, double momentum, double weight_decay) {
    if (!finite_nonneg(lr) || !(momentum >= 0.0 && momentum < 1.0) ||
        !finite_nonneg(weight_decay))
        return TNN_ERR(TNN_ERR_ARG,
                       "lr=%g momentum=%g weight_decay=%g: want lr >= 0, momentum in [0, 1), "
                       "weight_decay >= 0",
                       lr, momentum, weight_decay);
    int rc = optim_new(s, OPT_SGD, __func__);
    if (rc) return rc;
    struct tnn_optim *o = s->optim;
    o->lr = lr, o->momentum = momentum, o->wd = weight_decay;
    return TNN_OK;
}

static struct tnn_optim *get_optim(tnn_session *s, const char *func) {
    if (tnn__check_session(s, func)) return NULL;
    if (!s->optim)
        return (tnn__error(TNN_ERR_STATE, func, "no optimizer: call tnn_optimizer_adamw or "
                           "tnn_optimizer_sgd first"), NULL);
    return s->optim;
}

int tnn_set_lr(tnn_session *s, double lr) {
    struct tnn_optim *o = get_optim(s, __func__);
    if (!o) return tnn_last_status();
    if (!finite_nonneg(lr)) return TNN_ERR(TNN_ERR_ARG, "lr=%g: want a finite value >= 0", lr);
    o->lr = lr;
    return TNN_OK;
}

int tnn_set_grad_clip(tnn_session *s, double max_norm) {
    struct tnn_optim *o = get_optim(s, __func__);
    if (!o) return tnn_last_status();
    if (!finite_nonneg(max_norm))
        return TNN_ERR(TNN_ERR_ARG, "max_norm=%g: want a finite value >= 0 (0 = off)", max_norm);
    o->clip = max_norm;
    return TNN_OK;
}

int64_t tnn_optimizer_steps(tnn_session *s) {
    struct tnn_optim *o = get_optim(s, __func__);
    return o ? o->step : -1;
}

int64_t tnn_optimizer_skipped(tnn_session *s) {
    struct tnn_optim *o = get_optim(s, __func__);
    return o ? o->skipped : -1;
}

double tnn_grad_norm(tnn_session *s) {
    struct tnn_optim *o = get_optim(s, __func__);
    return o ? o->last_norm : NAN;
}

/* The moment buffer `which` (0: m / momentum, 1: v) of a parameter. */
static float *state_buf(tnn_session *s, tnn_tensor *param, int which, size_t n, const char *func) {
    struct tnn_optim *o = get_optim(s, func);
    if (!o) return NULL;
    if (tnn__check_tensor(s, param, func, "param")) return NULL;
    if (which != 0 && which != 1)
        return (tnn__error(TNN_ERR_ARG, func, "which=%d: want 0 (first moment) or 1 (second)",
                           which), NULL);
    if (which == 1 && o->kind != OPT_ADAMW)
        return (tnn__error(TNN_ERR_ARG, func, "SGD keeps no second moment"), NULL);
    if ((int64_t)n != param->nelem)
        return (tnn__error(TNN_ERR_SHAPE, func, "n=%zu but the parameter has %lld elements", n,
                           (long long)param->nelem), NULL);
    for (int k = 0; k < o->n; k++)
        if (o->params[k] == param) return which ? o->v[k] : o->m[k];
    return (tnn__error(TNN_ERR_ARG, func, "tensor #%d is not a parameter of the optimizer",
                       param->id), NULL);
}

int tnn_optimizer_get_state(tnn_session *s, tnn_tensor *param, int which, float *dst, size_t n) {
    float *b = state_buf(s, param, which, n, __func__);
    if (!b) return tnn_last_status();
    if (!dst) return TNN_ERR(TNN_ERR_ARG, "dst is NULL");
    return s->backend->copy_out(dst, b, n * sizeof(float));
}

int tnn_optimizer_set_state(tnn_session *s, tnn_tensor *param, int which, const float *src,
                            size_t n) {
    float *b = state_buf(s, param, which, n, __func__);
    if (!b) return tnn_last_status();
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    return s->backend->copy_in(b, src, n * sizeof(float));
}

int tnn_optimizer_set_steps(tnn_session *s, int64_t steps) {
    struct tnn_optim *o = get_optim(s, __func__);
    if (!o) return tnn_last_status();
    if (steps < 0) return TNN_ERR(TNN_ERR_ARG, "steps=%lld: want >= 0", (long long)steps);
    o->step = steps;
    return TNN_OK;
}

void tnn_set_no_decay(tnn_tensor *t) {
    tnn_session *s = tnn__tensor_owner(t);
    if (!s) {
        TNN_ERR(TNN_ERR_ARG, "tensor %p is not a tensor of a live session", (void *)t);
        return;
    }
    t->flags |= TNN_FLAG_NO_DECAY;
}

/* ------------------------------------------------------------------------ */
/* The step                                                                 */
/* ------------------------------------------------------------------------ */

/* One parameter's update on the host. */
typedef struct {
    int adamw;
    float *p, *m, *v;
    const float *g;
    double lr, b1, b2, eps, wd, momentum, gscale, bc1, bc2;
    bool first;
} host_update;

/* The update loops are vectorized (an AVX2 clone where the CPU has it; the
 * same double operations in every clone, so the same bits). */
TNN_VEC_CLONES static void adamw_range(void *q, int64_t lo, int64_t hi) {
    const host_update *c = q;
    double step_size = c->lr / c->bc1, sq_bc2 = sqrt(c->bc2);
    for (int64_t i = lo; i < hi; i++) {
        double g = (double)c->g[i] * c->gscale;
        double p = (double)c->p[i] * (1.0 - c->lr * c->wd);
        /* the moments start at zero: not read on the first step, so their
         * fresh pages are first touched by a write (no copy-on-write of the
         * zero page and TLB flush per page) */
        double m0 = c->first ? 0.0 : c->m[i], v0 = c->first ? 0.0 : c->v[i];
        double m = c->b1 * m0 + (1.0 - c->b1) * g;
        double v = c->b2 * v0 + (1.0 - c->b2) * g * g;
        c->m[i] = (float)m;
        c->v[i] = (float)v;
        c->p[i] = (float)(p - step_size * m / (sqrt(v) / sq_bc2 + c->eps));
    }
}

TNN_VEC_CLONES static void sgd_range(void *q, int64_t lo, int64_t hi) {
    const host_update *c = q;
    for (int64_t i = lo; i < hi; i++) {
        double d = (double)c->g[i] * c->gscale + c->wd * c->p[i];
        if (c->momentum > 0.0) {
            d = c->first ? d : c->momentum * c->m[i] + d;
            c->m[i] = (float)d;
        }
        c->p[i] = (float)(c->p[i] - c->lr * d);
    }
}

/* The squared gradient norm: each parameter's gradient in blocks of
 * NORM_BLOCK (in parallel), each block a fixed-order lane sum (vmath.h),
 * the blocks and parameters then added in order: the same bits for any
 * thread count. */
#define NORM_BLOCK ((int64_t)1 << 16)

typedef struct {
    const float *g;
    int64_t n;
    double *part;
} norm_ctx;

TNN_VEC_CLONES static void norm_range(void *q, int64_t lo, int64_t hi) {
    const norm_ctx *c = q;
    for (int64_t b = lo; b < hi; b++) {
        int64_t i0 = b * NORM_BLOCK, len = c->n - i0 < NORM_BLOCK ? c->n - i0 : NORM_BLOCK;
        c->part[b] = tnn_vdot_d(c->g + i0, c->g + i0, len);
    }
}

static int grad_norm2(const struct tnn_optim *o, double *out) {
    int64_t most = 1;
    for (int k = 0; k < o->n; k++) {
        int64_t nb = (o->params[k]->nelem + NORM_BLOCK - 1) / NORM_BLOCK;
        most = nb > most ? nb : most;
    }
    double *part = malloc((size_t)most * sizeof *part);
    if (!part) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    double sum = 0.0;
    for (int k = 0; k < o->n; k++) {
        norm_ctx c = {.g = o->params[k]->grad->data, .n = o->params[k]->nelem, .part = part};
        int64_t nb = (c.n + NORM_BLOCK - 1) / NORM_BLOCK;
        tnn__parallel_for(nb, 1, norm_range, &c);
        for (int64_t b = 0; b < nb; b++) sum += part[b];
    }
    free(part);
    *out = sum;
    return TNN_OK;
}

/* 1 - beta^t for the step the next applied one will be. */
static double bias_corr(double beta, const struct tnn_optim *o) {
    return 1.0 - pow(beta, (double)(o->step + 1));
}

int tnn__optim_queue(tnn_session *s) {
    struct tnn_optim *o = s->optim;
    tnn_step st = {.adamw = o->kind == OPT_ADAMW, .n = o->n, .params = o->params, .m = o->m,
                   .v = o->v, .loss = s->loss->data, .lr = o->lr, .b1 = o->b1, .b2 = o->b2,
                   .eps = o->eps, .wd = o->wd, .momentum = o->momentum, .clip = o->clip,
                   .bc1 = bias_corr(o->b1, o), .bc2 = bias_corr(o->b2, o),
                   .first = o->step == 0};
    return s->backend->step(s, &st);
}

int tnn__optim_step(tnn_session *s) {
    struct tnn_optim *o = s->optim;
    bool queued = s->backend->step != NULL;
    double loss = 0.0, norm2 = 0.0;
    tnn_step_result r = {0};
    int rc;
    if (queued) { /* the backend ran it: read what it found */
        rc = s->backend->step_result(s, &r);
        if (rc) return rc;
        loss = r.loss, norm2 = r.norm2;
    } else {
        float l = 0.0f;
        rc = s->backend->copy_out(&l, s->loss->data, sizeof l);
        if (rc) return rc;
        loss = l;
        rc = grad_norm2(o, &norm2);
        if (rc) return rc;
    }
    o->last_norm = sqrt(norm2);
    if (queued ? !r.applied : (!isfinite(loss) || !isfinite(o->last_norm))) {
        o->skipped++;
        /* (a step the device skipped for a fault does not get here: the
         * compute reports the fault instead) */
        tnn__log(TNN_LOG_WARN, "optimizer step skipped: loss %g, gradient norm %g (not finite)",
                 loss, o->last_norm);
        return TNN_OK;
    }
    o->step++;
    if (queued) return TNN_OK;
    double gscale = 1.0;
    if (o->clip > 0.0 && o->last_norm > o->clip) gscale = o->clip / (o->last_norm + 1e-6);
    for (int k = 0; k < o->n; k++) {
        tnn_tensor *p = o->params[k];
        host_update u = {.adamw = o->kind == OPT_ADAMW, .p = p->data, .g = p->grad->data,
                         .m = o->m[k], .v = o->v[k], .lr = o->lr, .b1 = o->b1, .b2 = o->b2,
                         .eps = o->eps, .momentum = o->momentum, .gscale = gscale,
                         .first = o->step == 1,
                         .wd = (p->flags & TNN_FLAG_NO_DECAY) ? 0.0 : o->wd,
                         .bc1 = 1.0 - pow(o->b1, (double)o->step),
                         .bc2 = 1.0 - pow(o->b2, (double)o->step)};
        tnn__parallel_for(p->nelem, 8192, u.adamw ? adamw_range : sgd_range, &u);
    }
    return TNN_OK;
}
