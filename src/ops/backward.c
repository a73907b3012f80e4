/* backward.c - the gradient rule of every differentiable op, in op order,
 * each built from other ops so the backward graph runs on any backend.
 * Rule contract (internal.h): fill dsrc[i] for each source with need[i];
 * the autograd driver sums contributions. Broadcast operands get their
 * gradient summed back to their own shape (tnn__sum_like).
 */
#include "common.h"

tnn_tensor *tnn__sum_like(tnn_session *s, tnn_tensor *g, const tnn_tensor *a) {
    if (!g) return NULL;
    if (same_shape(g, a)) return g;
    if (g->nelem == a->nelem) return tnn_reshape(s, g, a->ndim, a->shape);
    return tnn__reduce_to(s, g, a->ndim, a->shape);
}

#define A (t->src[0])
#define B (t->src[1])

int tnn__bwd_add(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                 tnn_tensor **d) {
    if (need[0]) d[0] = tnn__sum_like(s, g, A);
    if (need[1]) d[1] = tnn__sum_like(s, g, B);
    return TNN_OK;
}

int tnn__bwd_sub(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                 tnn_tensor **d) {
    if (need[0]) d[0] = tnn__sum_like(s, g, A);
    if (need[1]) d[1] = tnn__sum_like(s, tnn_scale(s, g, -1.0), B);
    return TNN_OK;
}

int tnn__bwd_mul(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                 tnn_tensor **d) {
    if (need[0]) d[0] = tnn__sum_like(s, tnn_mul(s, g, B), A);
    if (need[1]) d[1] = tnn__sum_like(s, tnn_mul(s, g, A), B);
    return TNN_OK;
}

int tnn__bwd_scale(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                   tnn_tensor **d) {
    d[0] = tnn_scale(s, g, t->fparam[0]);
    return TNN_OK;
}

int tnn__bwd_gelu(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                  tnn_tensor **d) {
    d[0] = tnn_gelu_back(s, A, g);
    return TNN_OK;
}

int tnn__bwd_silu(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                  tnn_tensor **d) {
    d[0] = tnn_silu_back(s, A, g);
    return TNN_OK;
}

int tnn__bwd_softmax(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                     tnn_tensor **d) {
    d[0] = tnn_softmax_back(s, g, t);
    return TNN_OK;
}

/* y = n(x) * gamma, n(x) = x / rms(x): dx = n'(x)^T (g * gamma),
 * dgamma = sum over rows of g * n(x). */
int tnn__bwd_rms_norm(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                      tnn_tensor **d) {
    double eps = t->fparam[0];
    tnn_tensor *gamma = t->src[1];
    /* gamma folded into the two kernels (the bits of rms_norm_back of
     * g * gamma, and of summing g * rms_norm(x) over the rows); dx last, so
     * that it is the node just before the sum that adds it to x's other
     * gradients (on a GPU its kernel adds itself there) */
    if (gamma && need[1]) d[1] = tnn__rms_norm_gain(s, g, A, gamma, eps);
    if (need[0]) d[0] = gamma ? tnn__rms_norm_back_gamma(s, g, A, gamma, eps)
                              : tnn_rms_norm_back(s, g, A, eps);
    return TNN_OK;
}

/* C = op(A) @ op(B) with op = transpose where flagged:
 *   nn: dA = dC @ B^T   dB = A^T @ dC
 *   nt: dA = dC @ B     dB = dC^T @ A
 *   tn: dA = B @ dC^T   dB = A @ dC
 * A bf16 (or quantized) B is never a parameter itself. It gets a gradient
 * only when it is tnn_to_bf16 of an f32 tensor (mixed precision): dB is the
 * f32 product of A and dC above, which tnn_to_bf16 passes on to the f32
 * master. Products take a narrow B only as their second operand, so tn's
 * dA is (dC @ B^T)^T, the same fma chains with the factors swapped. A bf16
 * A (with a bf16 B) likewise gets a gradient only through tnn_to_bf16; B's
 * gradient then takes A as the second operand: nn's dB = (dC^T @ A)^T, and
 * tn (A^T @ B) has no such form, so it has none. With both operands bf16
 * (mixed precision with the activations rounded too) dC is rounded to bf16
 * once, by one node, and both gradient products take it: bf16 products
 * throughout, as the forward's. */
int tnn__bwd_matmul(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                    tnn_tensor **d) {
    int f = (int)t->iparam[0];
    tnn_tensor *da = NULL, *db = NULL;
    bool narrow_b = B->dtype != TNN_F32, narrow_a = A->dtype != TNN_F32;
    if ((narrow_b && need[1] && B->op != TNN_OP_TO_BF16) ||
        (narrow_a && need[0] && A->op != TNN_OP_TO_BF16))
        return TNN_ERR(TNN_ERR_UNSUPPORTED,
                       "a %s matmul operand has no gradient (make it tnn_to_bf16 of an f32 "
                       "tensor to train it)",
                       (narrow_b && need[1] ? B : A)->dtype == TNN_BF16 ? "bf16" : "non-f32");
    if (narrow_a && need[1] && f == TNN_MM_TA)
        return TNN_ERR(TNN_ERR_UNSUPPORTED,
                       "tnn_matmul_tn with a bf16 first operand has no gradient for its second");
    if (A->dtype == TNN_BF16 && B->dtype == TNN_BF16 && g->dtype == TNN_F32 &&
        !(g = tnn_to_bf16(s, g)))
        return tnn_last_status();
    /* dB first: dA is then the node just before the sum that adds it to
     * A's other gradients (on a GPU the product adds itself there) */
    if (f == 0) {
        if (need[1])
            db = narrow_a ? tnn_transpose(s, tnn_matmul_tn(s, g, A)) : tnn_matmul_tn(s, A, g);
        if (need[0]) da = tnn_matmul_nt(s, g, B);
    } else if (f == TNN_MM_TB) {
        if (need[1]) db = tnn_matmul_tn(s, g, A);
        if (need[0]) da = tnn_matmul_nn(s, g, B);
    } else if (f == TNN_MM_TA) {
        if (need[1]) db = tnn_matmul_nn(s, A, g);
        if (need[0]) da = narrow_b ? tnn_transpose(s, tnn_matmul_nt(s, g, B))
                                   : tnn_matmul_nt(s, B, g);
    } else {
        return TNN_ERR(TNN_ERR_INTERNAL, "matmul flags %d have no gradient rule", f);
    }
    if (need[1]) d[1] = tnn__sum_like(s, db, B);
    if (need[0]) d[0] = tnn__sum_like(s, da, A);
    return TNN_OK;
}

/* Straight through: the rounding's gradient is taken as 1. */
int tnn__bwd_to_bf16(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                     tnn_tensor **d) {
    (void)s, (void)t;
    if (need[0]) d[0] = g;
    return TNN_OK;
}

int tnn__bwd_transpose(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                       tnn_tensor **d) {
    d[0] = tnn__sum_like(s, tnn_transpose(s, g), A); /* a 1-D source gets a reshape */
    return TNN_OK;
}

int tnn__bwd_get_rows(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                      tnn_tensor **d) {
    if (need[0]) d[0] = tnn_get_rows_back(s, g, B, A);
    return TNN_OK;
}

int tnn__bwd_get_rows_back(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                           tnn_tensor **d) {
    if (need[0]) d[0] = tnn_get_rows(s, g, B);
    /* the third source only gives the shape: its values get no gradient */
    if (need[2]) d[2] = tnn__fill(s, t->src[2]->ndim, t->src[2]->shape, 0.0);
    return TNN_OK;
}

int tnn__bwd_sum(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                 tnn_tensor **d) {
    d[0] = tnn__expand(s, g, A->ndim, A->shape);
    return TNN_OK;
}

int tnn__bwd_mean(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                  tnn_tensor **d) {
    d[0] = tnn_scale(s, tnn__expand(s, g, A->ndim, A->shape), 1.0 / (double)A->nelem);
    return TNN_OK;
}

int tnn__bwd_reshape(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                     tnn_tensor **d) {
    d[0] = tnn_reshape(s, g, A->ndim, A->shape);
    return TNN_OK;
}

int tnn__bwd_expand(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                    tnn_tensor **d) {
    d[0] = tnn__sum_like(s, g, A);
    return TNN_OK;
}

int tnn__bwd_reduce_to(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                       tnn_tensor **d) {
    d[0] = tnn__expand(s, g, A->ndim, A->shape);
    return TNN_OK;
}

int tnn__bwd_cross_entropy(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                           tnn_tensor **d) {
    if (need[0]) d[0] = tnn__cross_entropy_back(s, t, g);
    return TNN_OK;
}

#undef A
#undef B
