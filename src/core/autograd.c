/* autograd.c - tnn_backward: adds the backward graph of a scalar loss.
 *
 * Walks the nodes from the loss back to the leaves in reverse creation
 * order (a reverse topological order). Each node with a gradient asks its
 * op's rule (src/ops/backward.c) for its sources' contributions; a source
 * read by several nodes gets their sum. Only tensors that depend on a
 * parameter get gradients. Every parameter's gradient is an output node,
 * recomputed by each tnn_compute (so it is "zeroed" every step).
 */
#include "internal.h"

#include <stdlib.h>

int tnn_backward(tnn_session *s, tnn_tensor *loss) {
    if (tnn__check_session(s, __func__) || tnn__check_tensor(s, loss, __func__, "loss"))
        return tnn_last_status();
    if (s->loss)
        return TNN_ERR(TNN_ERR_STATE, "tnn_backward was already called in this session");
    if (loss->nelem != 1 || loss->dtype != TNN_F32) {
        char b[TNN_SHAPE_BUF];
        return TNN_ERR(TNN_ERR_SHAPE, "loss %s: want an f32 tensor with one element",
                       tnn__shape_str(loss, b, sizeof b));
    }
    int32_t n = s->n_tensors;
    bool *need = calloc((size_t)n, sizeof *need);
    tnn_tensor **grads = calloc((size_t)n, sizeof *grads);
    if (!need || !grads) {
        free(need);
        free(grads);
        return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    }
    int n_params = 0;
    for (int32_t i = 0; i < n; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (t->op == TNN_OP_NONE) {
            need[i] = (t->flags & TNN_FLAG_PARAM) != 0;
            n_params += need[i];
        }
        for (int k = 0; k < TNN_MAX_SRC; k++)
            if (t->src[k] && need[t->src[k]->id]) need[i] = true;
    }
    int rc = TNN_OK;
    if (!need[loss->id])
        rc = TNN_ERR(TNN_ERR_ARG, "no parameter (tnn_set_param) reaches the loss (%d marked)",
                     n_params);
    if (rc == TNN_OK) {
        grads[loss->id] = tnn__fill(s, loss->ndim, loss->shape, 1.0);
        if (!grads[loss->id]) rc = tnn_last_status();
    }
    for (int32_t i = loss->id; i >= 0 && rc == TNN_OK; i--) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        tnn_tensor *g = grads[i];
        if (!g || t->op == TNN_OP_NONE) continue;
        bool sneed[TNN_MAX_SRC] = {false};
        bool any = false;
        for (int k = 0; k < TNN_MAX_SRC; k++) {
            sneed[k] = t->src[k] && need[t->src[k]->id];
            any |= sneed[k];
        }
        if (!any) continue;
        const tnn_op_def *def = &tnn__ops[t->op];
        if (!def->backward) {
            rc = TNN_ERR(TNN_ERR_UNSUPPORTED, "%s (node #%d) has no gradient rule, but a "
                         "parameter's gradient flows through it", def->name, t->id);
            break;
        }
        tnn_tensor *d[TNN_MAX_SRC] = {NULL};
        rc = def->backward(s, t, g, sneed, d);
        for (int k = 0; k < TNN_MAX_SRC && rc == TNN_OK; k++) {
            if (!sneed[k]) continue;
            if (!d[k]) {
                rc = tnn_last_status() ? tnn_last_status()
                                       : TNN_ERR(TNN_ERR_INTERNAL, "the gradient rule of %s "
                                                 "(node #%d) gave nothing for source %d",
                                                 def->name, t->id, k);
                break;
            }
            int32_t sid = t->src[k]->id;
            if (!grads[sid]) {
                grads[sid] = d[k];
                continue;
            }
            /* a sum realize may write over the running sum (or the term) */
            grads[sid] = tnn_add(s, grads[sid], d[k]);
            if (!grads[sid])
                rc = tnn_last_status();
            else
                grads[sid]->flags |= TNN_FLAG_ACCUM;
        }
    }
    for (int32_t i = 0; i < n && rc == TNN_OK; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (t->op != TNN_OP_NONE || !(t->flags & TNN_FLAG_PARAM)) continue;
        tnn_tensor *g = grads[i] ? grads[i] : tnn__fill(s, t->ndim, t->shape, 0.0);
        if (!g) {
            rc = tnn_last_status();
            break;
        }
        /* A gradient that is a leaf or another parameter's gradient gets its
         * own node, so each parameter owns its gradient buffer. */
        if (g->op == TNN_OP_NONE || (g->flags & TNN_FLAG_OUTPUT)) g = tnn_scale(s, g, 1.0);
        g->flags |= TNN_FLAG_OUTPUT;
        t->grad = g;
    }
    free(need);
    free(grads);
    if (rc != TNN_OK) return rc;
    loss->flags |= TNN_FLAG_OUTPUT;
    s->loss = loss;
    /* The plan no longer covers the graph: compute waits for a new realize. */
    tnn__release_plan(s);
    return TNN_OK;
}

tnn_tensor *tnn_grad(tnn_session *s, tnn_tensor *param) {
    if (tnn__check_session(s, __func__) || tnn__check_tensor(s, param, __func__, "param"))
        return NULL;
    if (!param->grad)
        return TNN_ERR_NULL(TNN_ERR_STATE, "tensor #%d has no gradient: mark it with "
                            "tnn_set_param before calling tnn_backward", param->id);
    return param->grad;
}
