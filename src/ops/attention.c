/* attention.c - rotary position embedding and fused causal self-attention
 * with grouped-query heads, forward and backward.
 *
 * Layout: a batch of B sequences of T positions is N = B*T rows, row
 * r = b*T + t. q is (N, n_head*hd), k and v are (N, n_kv_head*hd); head h
 * reads kv head h / (n_head/n_kv_head). Scores are never stored as a T x T
 * matrix: each query keeps one row of T scores while it is processed, and
 * the backward pass recomputes them.
 */
#include "attn_kern.h"
#include "common.h"
#include "vmath.h"

#include "../quant/quant.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* The hot loops below get an AVX2 clone (TNN_VEC_CLONES, common.h). */

/* ------------------------------------------------------------------------ */
/* RoPE                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *x;
    float *out;
    const int32_t *pos;   /* positions of the rows, or NULL: r % seq_len */
    const float *factors; /* hd/2 frequency divisors, or NULL */
    int64_t n_head, hd, seq_len, mode;
    double base, sign;
} rope_ctx;

static void rope_range(void *p, int64_t lo, int64_t hi) {
    const rope_ctx *c = p;
    int64_t half = c->hd / 2, width = c->n_head * c->hd;
    float *cs = malloc((size_t)half * 2 * sizeof *cs);
    if (!cs) return; /* cannot happen for sane hd; output left as is */
    float *sn = cs + half;
    for (int64_t r = lo; r < hi; r++) {
        double pos = c->pos ? (double)c->pos[r] : (double)(r % c->seq_len);
        for (int64_t i = 0; i < half; i++) {
            double th = pos * pow(c->base, -2.0 * (double)i / (double)c->hd);
            if (c->factors) th /= (double)c->factors[i];
            cs[i] = (float)cos(th);
            sn[i] = (float)(c->sign * sin(th));
        }
        for (int64_t h = 0; h < c->n_head; h++) {
            const float *x = c->x + r * width + h * c->hd;
            float *o = c->out + r * width + h * c->hd;
            for (int64_t i = 0; i < half; i++) {
                int64_t a = c->mode ? i : 2 * i, b = c->mode ? i + half : 2 * i + 1;
                float x0 = x[a], x1 = x[b];
                o[a] = x0 * cs[i] - x1 * sn[i];
                o[b] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
    free(cs);
}

static tnn_tensor *rope_node(tnn_session *s, tnn_tensor *x, int64_t n_head, int64_t seq_len,
                             int64_t mode, double base, double sign, tnn_tensor *pos,
                             tnn_tensor *factors) {
    tnn_tensor *src[3] = {x, pos, factors};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_ROPE, TNN_F32, 2, x->shape, src, 3);
    if (t) {
        t->iparam[0] = n_head, t->iparam[1] = seq_len, t->iparam[2] = mode;
        t->fparam[0] = base, t->fparam[1] = sign;
    }
    return t;
}

tnn_tensor *tnn_rope(tnn_session *s, tnn_tensor *x, int n_head, int seq_len, double base,
                     int mode) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, x);
    CHECK_F32_NULL(x);
    char b[TNN_SHAPE_BUF];
    tnn__shape_str(x, b, sizeof b);
    if (x->ndim != 2 || n_head <= 0 || x->shape[1] % n_head || (x->shape[1] / n_head) % 2)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "x %s, n_head=%d: want (N, n_head*hd) with hd even",
                            b, n_head);
    if (seq_len <= 0 || x->shape[0] % seq_len)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "x %s, seq_len=%d: rows must be a multiple of seq_len",
                            b, seq_len);
    if (mode != 0 && mode != 1)
        return TNN_ERR_NULL(TNN_ERR_ARG, "mode=%d: want 0 (adjacent pairs) or 1 (NeoX halves)",
                            mode);
    if (!(base > 1.0) || !isfinite(base))
        return TNN_ERR_NULL(TNN_ERR_ARG, "base=%g: want a finite value > 1", base);
    return rope_node(s, x, n_head, seq_len, mode, base, 1.0, NULL, NULL);
}

tnn_tensor *tnn_rope_ext(tnn_session *s, tnn_tensor *x, int n_head, tnn_tensor *positions,
                         double base, int mode, tnn_tensor *freq_factors) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, x);
    CHECK_TENSOR_NULL(s, positions);
    CHECK_F32_NULL(x);
    char b[TNN_SHAPE_BUF], bp[TNN_SHAPE_BUF];
    tnn__shape_str(x, b, sizeof b);
    tnn__shape_str(positions, bp, sizeof bp);
    if (x->ndim != 2 || n_head <= 0 || x->shape[1] % n_head || (x->shape[1] / n_head) % 2)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "x %s, n_head=%d: want (N, n_head*hd) with hd even",
                            b, n_head);
    if (positions->dtype != TNN_I32 || positions->ndim != 1 || positions->shape[0] != x->shape[0])
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "positions %s: want an int32 vector of %lld", bp,
                            (long long)x->shape[0]);
    int64_t hd = x->shape[1] / n_head;
    if (freq_factors) {
        CHECK_TENSOR_NULL(s, freq_factors);
        if (freq_factors->dtype != TNN_F32 || freq_factors->nelem != hd / 2)
            return TNN_ERR_NULL(TNN_ERR_SHAPE, "freq_factors: want %lld f32 values (hd/2)",
                                (long long)(hd / 2));
    }
    if (mode != 0 && mode != 1)
        return TNN_ERR_NULL(TNN_ERR_ARG, "mode=%d: want 0 (adjacent pairs) or 1 (NeoX halves)",
                            mode);
    if (!(base > 1.0) || !isfinite(base))
        return TNN_ERR_NULL(TNN_ERR_ARG, "base=%g: want a finite value > 1", base);
    return rope_node(s, x, n_head, 1, mode, base, 1.0, positions, freq_factors);
}

int tnn__fwd_rope(tnn_tensor *t) {
    rope_ctx c = {.x = CF32(t->src[0]), .out = F32(t), .n_head = t->iparam[0],
                  .pos = t->src[1] ? t->src[1]->data : NULL,
                  .factors = t->src[2] ? CF32(t->src[2]) : NULL,
                  .hd = t->shape[1] / t->iparam[0], .seq_len = t->iparam[1],
                  .mode = t->iparam[2], .base = t->fparam[0], .sign = t->fparam[1]};
    tnn__parallel_for(t->shape[0], 8, rope_range, &c);
    return TNN_OK;
}

/* The rotation is orthogonal: its gradient is the rotation by -theta. */
int tnn__bwd_rope(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                  tnn_tensor **d) {
    d[0] = rope_node(s, g, t->iparam[0], t->iparam[1], t->iparam[2], t->fparam[0],
                     -t->fparam[1], t->src[1], t->src[2]);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Attention                                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *q, *k, *v, *dout;
    float *out;
    int64_t H, Hkv, hd, T, B;
    float scale;
} attn_ctx;

/* Dot product with 8 lane sums combined in a fixed order: the compiler
 * vectorizes it, and the result does not depend on the thread split. */
static inline float dotf(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

/* o[d] = sum over j in [0, n) of p[j] v[j][d], rows of v `stride` apart; each
 * o[d] sums over j in ascending order. Columns go 16 at a time so the sums
 * stay in registers while the rows stream by. */
TNN_VEC_CLONES static void weighted_rows(const float *p, int64_t n, const float *v, int64_t stride,
                          int64_t hd, float *o) {
    int64_t d0 = 0;
    for (; d0 + 16 <= hd; d0 += 16) {
        float acc[16] = {0};
        for (int64_t j = 0; j < n; j++) {
            const float *vj = v + j * stride + d0;
            float pj = p[j];
            for (int k = 0; k < 16; k++) acc[k] += pj * vj[k];
        }
        memcpy(o + d0, acc, sizeof acc);
    }
    for (; d0 < hd; d0++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n; j++) acc += p[j] * v[j * stride + d0];
        o[d0] = acc;
    }
}

/* out[j] = dot(q, row j) * scale for n rows `stride` apart: one cloned loop
 * with the dot product inlined (a call per key would cost more than the
 * 64-element dot itself). */
TNN_VEC_CLONES static void dots(const float *q, const float *rows, int64_t stride, int64_t n,
                                int64_t hd, float scale, float *out) {
    for (int64_t j = 0; j < n; j++) out[j] = dotf(q, rows + j * stride, hd) * scale;
}

/* The largest of p[0 .. n), vectorized (vmath.h). */
TNN_VEC_CLONES static float attn_row_max(const float *p, int64_t n) { return tnn_vmax(p, n); }

/* p[j] = e^(p[j] - mx), vectorized. */
TNN_VEC_CLONES static void attn_exp_shift(float *p, int64_t n, float mx) {
    for (int64_t j = 0; j < n; j++) p[j] = tnn_vexp_le0(p[j] - mx);
}

/* Scores of query row q against keys 0..t, softmaxed in place into p.
 * Returns the row's normalizer 1/sum. */
static void softmax_row(const float *q, const float *k0, int64_t kstride, int64_t t, int64_t hd,
                        float scale, float *p) {
    dots(q, k0, kstride, t + 1, hd, scale, p);
    float mx = attn_row_max(p, t + 1);
    attn_exp_shift(p, t + 1, mx);
    double sum = 0.0;
    for (int64_t j = 0; j <= t; j++) sum += p[j];
    float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j <= t; j++) p[j] *= inv;
}

/* Tasks: (b, h, t) query rows. */
static void attn_fwd_range(void *p, int64_t lo, int64_t hi) {
    const attn_ctx *c = p;
    float *pr = malloc((size_t)c->T * sizeof *pr);
    if (!pr) return;
    int64_t qw = c->H * c->hd, kw = c->Hkv * c->hd, grp = c->H / c->Hkv;
    for (int64_t task = lo; task < hi; task++) {
        int64_t t = task % c->T, h = (task / c->T) % c->H, b = task / (c->T * c->H);
        int64_t row = b * c->T + t;
        const float *q = c->q + row * qw + h * c->hd;
        const float *k0 = c->k + b * c->T * kw + (h / grp) * c->hd;
        const float *v0 = c->v + b * c->T * kw + (h / grp) * c->hd;
        float *o = c->out + row * qw + h * c->hd;
        softmax_row(q, k0, kw, t, c->hd, c->scale, pr);
        weighted_rows(pr, t + 1, v0, kw, c->hd, o);
    }
    free(pr);
}

/* Tasks: (b, kv head). Each owns dk/dv of its kv head and dq of the query
 * heads that read it, and accumulates in a fixed order. */
static void attn_bwd_range(void *p, int64_t lo, int64_t hi) {
    const attn_ctx *c = p;
    float *pr = malloc((size_t)c->T * 2 * sizeof *pr);
    if (!pr) return;
    float *dp = pr + c->T;
    int64_t hd = c->hd, qw = c->H * hd, kw = c->Hkv * hd, grp = c->H / c->Hkv;
    int64_t N = c->B * c->T; /* the output: dq (N x qw), then dk, dv (N x kw each) */
    for (int64_t task = lo; task < hi; task++) {
        int64_t kh = task % c->Hkv, b = task / c->Hkv;
        const float *k0 = c->k + b * c->T * kw + kh * hd;
        const float *v0 = c->v + b * c->T * kw + kh * hd;
        float *dk0 = c->out + N * qw + b * c->T * kw + kh * hd;
        float *dv0 = dk0 + N * kw;
        for (int64_t j = 0; j < c->T; j++) {
            memset(dk0 + j * kw, 0, (size_t)hd * sizeof(float));
            memset(dv0 + j * kw, 0, (size_t)hd * sizeof(float));
        }
        for (int64_t h = kh * grp; h < (kh + 1) * grp; h++) {
            for (int64_t t = 0; t < c->T; t++) {
                int64_t row = b * c->T + t;
                const float *q = c->q + row * qw + h * hd;
                const float *go = c->dout + row * qw + h * hd;
                float *dq = c->out + row * qw + h * hd;
                softmax_row(q, k0, kw, t, hd, c->scale, pr);
                dots(go, v0, kw, t + 1, hd, 1.0f, dp);
                double D = 0.0;
                for (int64_t j = 0; j <= t; j++) D += (double)pr[j] * dp[j];
                float Df = (float)D;
                memset(dq, 0, (size_t)hd * sizeof *dq);
                for (int64_t j = 0; j <= t; j++) {
                    float ds = pr[j] * (dp[j] - Df) * c->scale;
                    const float *kj = k0 + j * kw;
                    float *dkj = dk0 + j * kw, *dvj = dv0 + j * kw;
                    float pj = pr[j];
                    for (int64_t d = 0; d < hd; d++) {
                        dq[d] += ds * kj[d];
                        dkj[d] += ds * q[d];
                        dvj[d] += pj * go[d];
                    }
                }
            }
        }
    }
    free(pr);
}

static void attn_params(const tnn_tensor *t, attn_ctx *c) {
    c->H = t->iparam[0];
    c->Hkv = t->iparam[1];
    c->T = t->iparam[2];
    c->hd = t->src[0]->shape[1] / c->H;
    c->B = t->src[0]->shape[0] / c->T;
    c->scale = (float)(1.0 / sqrt((double)c->hd));
}

tnn_tensor *tnn_attention(tnn_session *s, tnn_tensor *q, tnn_tensor *k, tnn_tensor *v,
                          int n_head, int n_kv_head, int seq_len) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, q);
    CHECK_TENSOR_NULL(s, k);
    CHECK_TENSOR_NULL(s, v);
    CHECK_F32_NULL(q);
    CHECK_F32_NULL(k);
    CHECK_F32_NULL(v);
    char bq[TNN_SHAPE_BUF], bk[TNN_SHAPE_BUF], bv[TNN_SHAPE_BUF];
    tnn__shape_str(q, bq, sizeof bq);
    tnn__shape_str(k, bk, sizeof bk);
    tnn__shape_str(v, bv, sizeof bv);
    if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head)
        return TNN_ERR_NULL(TNN_ERR_ARG, "n_head=%d n_kv_head=%d: n_head must be a positive "
                            "multiple of n_kv_head", n_head, n_kv_head);
    if (q->ndim != 2 || k->ndim != 2 || !same_shape(k, v) || q->shape[0] != k->shape[0] ||
        q->shape[1] % n_head || k->shape[1] * n_head != q->shape[1] * n_kv_head)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "q %s, k %s, v %s with n_head=%d n_kv_head=%d: want q "
                            "(N, n_head*hd), k and v (N, n_kv_head*hd)", bq, bk, bv, n_head,
                            n_kv_head);
    if (seq_len <= 0 || q->shape[0] % seq_len)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "q %s, seq_len=%d: rows must be a multiple of seq_len",
                            bq, seq_len);
    tnn_tensor *src[3] = {q, k, v};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_ATTENTION, TNN_F32, 2, q->shape, src, 3);
    if (t) t->iparam[0] = n_head, t->iparam[1] = n_kv_head, t->iparam[2] = seq_len;
    return t;
}

int tnn__fwd_attention(tnn_tensor *t) {
    attn_ctx c = {.q = CF32(t->src[0]), .k = CF32(t->src[1]), .v = CF32(t->src[2]),
                  .out = F32(t)};
    attn_params(t, &c);
    tnn__parallel_for(c.B * c.H * c.T, 4, attn_fwd_range, &c);
    return TNN_OK;
}

int tnn__fwd_attention_back(tnn_tensor *t) {
    attn_ctx c = {.q = CF32(t->src[0]), .k = CF32(t->src[1]), .v = CF32(t->src[2]),
                  .dout = CF32(t->src[3]), .out = F32(t)};
    attn_params(t, &c);
    tnn__parallel_for(c.B * c.Hkv, 1, attn_bwd_range, &c);
    return TNN_OK;
}

int tnn__bwd_attention(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                       tnn_tensor **d) {
    tnn_tensor *q = t->src[0], *k = t->src[1], *v = t->src[2];
    /* dq (N x qw), dk and dv (N x kw) one after the other: (N + 2 N kw / qw)
     * rows of qw when kw divides qw, as it does (qw = kw * n_head / n_kv) */
    int64_t N = q->shape[0], qw = q->shape[1], kw = k->shape[1];
    int64_t shape[2] = {N + 2 * N * kw / qw, qw};
    /* The forward node is a source: a backend may keep per-row statistics
     * after its output (aux_bytes: one float per (sequence, head, row)) for
     * the backward to read instead of running the forward again. */
    tnn_tensor *src[5] = {q, k, v, g, t};
    tnn_tensor *packed = tnn__node_new(s, TNN_OP_ATTENTION_BACK, TNN_F32, 2, shape, src, 5);
    if (!packed) return tnn_last_status();
    t->aux_bytes = (size_t)t->nelem / (size_t)(q->shape[1] / t->iparam[0]) * sizeof(float);
    memcpy(packed->iparam, t->iparam, sizeof t->iparam);
    int64_t sq[2] = {N, qw}, sk[2] = {N, kw}; /* its parts in place */
    if (need[0]) d[0] = tnn__view(s, packed, 0, 2, sq);
    if (need[1]) d[1] = tnn__view(s, packed, N * qw, 2, sk);
    if (need[2]) d[2] = tnn__view(s, packed, N * qw + N * kw, 2, sk);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* KV cache: write, and attention of one sequence against it               */
/* ------------------------------------------------------------------------ */

tnn_tensor *tnn_kv_write(tnn_session *s, tnn_tensor *cache, tnn_tensor *x, tnn_tensor *pos) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, cache);
    CHECK_TENSOR_NULL(s, x);
    CHECK_TENSOR_NULL(s, pos);
    char bc[TNN_SHAPE_BUF], bx[TNN_SHAPE_BUF];
    tnn__shape_str(cache, bc, sizeof bc);
    tnn__shape_str(x, bx, sizeof bx);
    if (cache->op != TNN_OP_NONE || (cache->dtype != TNN_F32 && cache->dtype != TNN_F16) ||
        cache->ndim != 2 || (cache->flags & TNN_FLAG_EXTERNAL))
        return TNN_ERR_NULL(TNN_ERR_ARG, "cache %s: want a writable 2-D f32 or f16 leaf (ctx, W)",
                            bc);
    if (x->dtype != TNN_F32 || x->ndim != 2 || x->shape[1] != cache->shape[1])
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "x %s: want (n, %lld) f32 rows for cache %s", bx,
                            (long long)cache->shape[1], bc);
    if (pos->dtype != TNN_I32 || pos->nelem != 1)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "pos: want an int32 tensor of one element");
    tnn_tensor *src[3] = {cache, x, pos};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_KV_WRITE, cache->dtype, 2, cache->shape, src, 3);
    if (t) t->flags |= TNN_FLAG_ALIAS;
    return t;
}

int tnn__fwd_kv_write(tnn_tensor *t) {
    const tnn_tensor *cache = t->src[0], *x = t->src[1];
    int64_t p = ((const int32_t *)t->src[2]->data)[0], n = x->shape[0], W = x->shape[1];
    if (p < 0 || p + n > cache->shape[0])
        return tnn__error(TNN_ERR_RANGE, "tnn_kv_write",
                          "rows %lld .. %lld do not fit a cache of %lld positions (node #%d)",
                          (long long)p, (long long)(p + n - 1), (long long)cache->shape[0], t->id);
    if (cache->dtype == TNN_F16) {
        uint16_t *dst = (uint16_t *)t->data + p * W;
        const float *src = CF32(x);
        for (int64_t i = 0; i < n * W; i++) dst[i] = tnn__f32_to_f16(src[i]);
    } else {
        memcpy(F32(t) + p * W, CF32(x), (size_t)(n * W) * sizeof(float));
    }
    return TNN_OK;
}

tnn_tensor *tnn_attention_cached(tnn_session *s, tnn_tensor *q, tnn_tensor *kcache,
                                 tnn_tensor *vcache, int n_head, int n_kv_head,
                                 tnn_tensor *pos) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, q);
    CHECK_TENSOR_NULL(s, kcache);
    CHECK_TENSOR_NULL(s, vcache);
    CHECK_TENSOR_NULL(s, pos);
    char bq[TNN_SHAPE_BUF], bk[TNN_SHAPE_BUF];
    tnn__shape_str(q, bq, sizeof bq);
    tnn__shape_str(kcache, bk, sizeof bk);
    if (n_head <= 0 || n_kv_head <= 0 || n_head % n_kv_head)
        return TNN_ERR_NULL(TNN_ERR_ARG, "n_head=%d n_kv_head=%d: n_head must be a positive "
                            "multiple of n_kv_head", n_head, n_kv_head);
    if (q->dtype != TNN_F32 || (kcache->dtype != TNN_F32 && kcache->dtype != TNN_F16) ||
        vcache->dtype != kcache->dtype || q->ndim != 2 || kcache->ndim != 2 ||
        !same_shape(kcache, vcache) || q->shape[1] % n_head ||
        kcache->shape[1] * n_head != q->shape[1] * n_kv_head)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "q %s, kcache %s, n_head=%d n_kv_head=%d: want f32 q "
                            "(n, n_head*hd) and caches (ctx, n_kv_head*hd) both f32 or both f16",
                            bq, bk, n_head, n_kv_head);
    if (pos->dtype != TNN_I32 || pos->nelem != 1)
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "pos: want an int32 tensor of one element");
    tnn_tensor *src[4] = {q, kcache, vcache, pos};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_ATTENTION_CACHED, TNN_F32, 2, q->shape, src, 4);
    if (t) t->iparam[0] = n_head, t->iparam[1] = n_kv_head;
    return t;
}

/* Keys are taken in chunks of TNN_ATTN_CHUNK; each (query row, head, chunk)
 * gives a partial (m, l, o) (attn_kern.h), and the chunks of a row are merged
 * in ascending order:
 *   M = m_0, L = l_0, O = o_0; then for c = 1, 2, ...: M' = max(M, m_c),
 *   a = e^(M - M'), b = e^(m_c - M'), L = L a + l_c b, O = O a + o_c b;
 *   out = O * (1 / L).
 * Decoding (few query rows) computes the chunks of a row in parallel into a
 * scratch buffer and merges them after; a few rows against a long context
 * (where that scratch would be large) give each task whole rows and merge as
 * they go. Both run the same operations in the same order, so the bits do
 * not depend on which of the two runs or on the thread count. Prompts of
 * CATTN_BLOCK rows or more take the block path below. */
typedef struct {
    const float *q;
    const void *k, *v;
    bool f16;
    float *out;
    int64_t H, Hkv, hd, n, pos, nch;
    float scale;
    float *part; /* split path: per (row, head, chunk) hd + 2 floats, or NULL */
    tnn_attn_chunk_fn kern;
    atomic_int *fail; /* set when a task could not get its buffer */
} cattn_ctx;

static inline void merge(float *M, float *L, float *O, float m, float l, const float *o,
                         int64_t hd) {
    float mx = m > *M ? m : *M;
    float a = tnn_vexp_le0(*M - mx), b = tnn_vexp_le0(m - mx);
    *L = *L * a + l * b;
    for (int64_t d = 0; d < hd; d++) O[d] = O[d] * a + o[d] * b;
    *M = mx;
}

static inline void finish(const float *O, float L, int64_t hd, float *out) {
    float inv = 1.0f / L;
    for (int64_t d = 0; d < hd; d++) out[d] = O[d] * inv;
}

/* The chunk c of query row i, head h: keys [c*CH, min((c+1)*CH, pos+i+1)). */
static void one_chunk(const cattn_ctx *c, int64_t i, int64_t h, int64_t ch, float *m, float *l,
                      float *o) {
    int64_t kw = c->Hkv * c->hd, j0 = ch * TNN_ATTN_CHUNK, last = c->pos + i;
    int64_t nk = last + 1 - j0 < TNN_ATTN_CHUNK ? last + 1 - j0 : TNN_ATTN_CHUNK;
    int64_t off = j0 * kw + (h / (c->H / c->Hkv)) * c->hd;
    size_t es = c->f16 ? 2 : 4;
    c->kern(c->q + i * c->H * c->hd + h * c->hd, (const char *)c->k + (size_t)off * es,
            (const char *)c->v + (size_t)off * es, c->f16, kw, nk, c->hd, c->scale, m, l, o);
}

/* Split path tasks: (row i, chunk, head h), h fastest: a thread's share
 * reads each chunk's keys and values (whole cache rows) once, in order, and
 * a context of one or two chunks still splits across threads by heads (a
 * task of all heads left one thread idle below 64 positions). */
static void cattn_split_range(void *p, int64_t lo, int64_t hi) {
    const cattn_ctx *c = p;
    for (int64_t task = lo; task < hi; task++) {
        int64_t h = task % c->H, ch = task / c->H % c->nch, i = task / c->H / c->nch;
        if (ch * TNN_ATTN_CHUNK > c->pos + i) continue; /* beyond this row's last key */
        float *pt = c->part + ((i * c->H + h) * c->nch + ch) * (c->hd + 2);
        one_chunk(c, i, h, ch, pt, pt + 1, pt + 2);
    }
}

/* Merge tasks: (row i, head h). */
static void cattn_merge_range(void *p, int64_t lo, int64_t hi) {
    const cattn_ctx *c = p;
    for (int64_t task = lo; task < hi; task++) {
        int64_t i = task / c->H, h = task % c->H;
        int64_t nc = (c->pos + i) / TNN_ATTN_CHUNK + 1;
        float *p0 = c->part + task * c->nch * (c->hd + 2), M = p0[0], L = p0[1], *O = p0 + 2;
        for (int64_t ch = 1; ch < nc; ch++) {
            const float *pc = p0 + ch * (c->hd + 2);
            merge(&M, &L, O, pc[0], pc[1], pc + 2, c->hd);
        }
        finish(O, L, c->hd, c->out + i * c->H * c->hd + h * c->hd);
    }
}

/* Row path tasks: (row i, kv head g), merging chunk by chunk. Later rows
 * have more keys, so task t takes rows from both ends in turn (0, n-1, 1,
 * n-2, ...): the pool's contiguous shares then cost about the same. */
static void cattn_row_range(void *p, int64_t lo, int64_t hi) {
    const cattn_ctx *c = p;
    int64_t grp = c->H / c->Hkv;
    float local[512], *buf = c->hd <= 256 ? local : malloc(2 * (size_t)c->hd * sizeof *buf);
    if (!buf) {
        atomic_store(c->fail, 1);
        return;
    }
    float *O = buf, *o = buf + c->hd;
    for (int64_t task = lo; task < hi; task++) {
        int64_t z = task / c->Hkv, g = task % c->Hkv;
        int64_t i = z % 2 ? c->n - 1 - z / 2 : z / 2;
        int64_t nc = (c->pos + i) / TNN_ATTN_CHUNK + 1;
        for (int64_t h = g * grp; h < (g + 1) * grp; h++) {
            float M, L, m, l;
            one_chunk(c, i, h, 0, &M, &L, O);
            for (int64_t ch = 1; ch < nc; ch++) {
                one_chunk(c, i, h, ch, &m, &l, o);
                merge(&M, &L, O, m, l, o, c->hd);
            }
            finish(O, L, c->hd, c->out + i * c->H * c->hd + h * c->hd);
        }
    }
    if (buf != local) free(buf);
}

/* Block path (prompts of at least CATTN_BLOCK rows): tasks are (kv head,
 * block of CATTN_BLOCK query rows). The block's keys and values (positions
 * 0 .. the block's last) are widened to f32 once for the group's heads;
 * then per head S = Q K^T and O = P V are two GEMMs and the softmax runs on
 * whole rows of S in between (keys past a row's position masked). Blocks are
 * taken from both ends in turn so the threads' shares cost the same. The
 * rounding differs from the chunked paths (the GEMM's chains, one softmax
 * per row), so a prompt agrees with token-by-token decoding to rounding,
 * not to the bit; each row is still computed by one task in a fixed way, so
 * the thread count changes nothing. */
#define CATTN_BLOCK 64

typedef struct {
    const cattn_ctx *c;
    int64_t nblk;
    atomic_int rc;
} cblk_ctx;

/* rows x hd values, rows `stride` elements apart, to packed f32 (f16
 * through the F16C dequantization kernel where the CPU has it). */
static void widen_rows(const void *src, bool f16, int64_t rows, int64_t stride, int64_t hd,
                       float *dst) {
    for (int64_t j = 0; j < rows; j++) {
        if (f16)
            tnn__dequantize_row(TNN_QT_F16, (const uint16_t *)src + j * stride, dst + j * hd, hd);
        else
            memcpy(dst + j * hd, (const float *)src + j * stride, (size_t)hd * sizeof(float));
    }
}

/* One row of scores: p = e^(scale s - max) over keys 0 .. last, 0 after;
 * returns 1 / sum. */
TNN_VEC_CLONES static float softmax_scores(float *s, int64_t last, int64_t nk, float scale) {
    for (int64_t j = 0; j <= last; j++) s[j] *= scale;
    float mx = tnn_vmax(s, last + 1);
    for (int64_t j = 0; j <= last; j++) s[j] = tnn_vexp_le0(s[j] - mx);
    for (int64_t j = last + 1; j < nk; j++) s[j] = 0.0f;
    return (float)(1.0 / tnn_vsum_d(s, last + 1));
}

static void cattn_block_range(void *p, int64_t lo, int64_t hi) {
    cblk_ctx *bc = p;
    const cattn_ctx *c = bc->c;
    int64_t kw = c->Hkv * c->hd, qw = c->H * c->hd, grp = c->H / c->Hkv, hd = c->hd;
    size_t es = c->f16 ? 2 : 4;
    int64_t most = c->pos + c->n; /* keys of the last block */
    float *kf = malloc((size_t)(most * hd) * sizeof *kf);
    float *vf = malloc((size_t)(most * hd) * sizeof *vf);
    float *sc = malloc((size_t)(CATTN_BLOCK * most) * sizeof *sc);
    if (!kf || !vf || !sc) {
        atomic_store(&bc->rc, TNN_ERR_NOMEM);
        goto out;
    }
    for (int64_t task = lo; task < hi; task++) {
        int64_t z = task / c->Hkv, g = task % c->Hkv;
        int64_t blk = z % 2 ? bc->nblk - 1 - z / 2 : z / 2;
        int64_t i0 = blk * CATTN_BLOCK, m = c->n - i0 < CATTN_BLOCK ? c->n - i0 : CATTN_BLOCK;
        int64_t nk = c->pos + i0 + m; /* keys 0 .. the block's last row's position */
        widen_rows((const char *)c->k + (size_t)(g * hd) * es, c->f16, nk, kw, hd, kf);
        widen_rows((const char *)c->v + (size_t)(g * hd) * es, c->f16, nk, kw, hd, vf);
        for (int64_t h = g * grp; h < (g + 1) * grp; h++) {
            int rc = tnn__gemm_f32(false, true, m, nk, hd, c->q + i0 * qw + h * hd, qw, kf, hd,
                                   sc, nk);
            for (int64_t r = 0; r < m && rc == TNN_OK; r++) {
                float *row = sc + r * nk, inv = softmax_scores(row, c->pos + i0 + r, nk, c->scale);
                for (int64_t j = 0; j < nk; j++) row[j] *= inv;
            }
            if (rc == TNN_OK)
                rc = tnn__gemm_f32(false, false, m, hd, nk, sc, nk, vf, hd,
                                   c->out + i0 * qw + h * hd, qw);
            if (rc) atomic_store(&bc->rc, rc);
        }
    }
out:
    free(kf), free(vf), free(sc);
}

/* Scratch of the split path at most (bytes); a few rows against a longer
 * context take the row path. */
#define CATTN_SPLIT_BYTES ((int64_t)1 << 20)

int tnn__fwd_attention_cached(tnn_tensor *t) {
    const tnn_tensor *q = t->src[0], *kc = t->src[1];
    cattn_ctx c = {.q = CF32(q), .k = kc->data, .v = t->src[2]->data,
                   .f16 = kc->dtype == TNN_F16, .out = F32(t), .H = t->iparam[0],
                   .Hkv = t->iparam[1], .n = q->shape[0],
                   .pos = ((const int32_t *)t->src[3]->data)[0],
                   .kern = tnn__attn_chunk_kernel()};
    c.hd = q->shape[1] / c.H;
    c.scale = (float)(1.0 / sqrt((double)c.hd));
    if (c.pos < 0 || c.pos + c.n > kc->shape[0])
        return tnn__error(TNN_ERR_RANGE, "tnn_attention_cached",
                          "positions %lld .. %lld do not fit a cache of %lld (node #%d)",
                          (long long)c.pos, (long long)(c.pos + c.n - 1),
                          (long long)kc->shape[0], t->id);
    c.nch = (c.pos + c.n - 1) / TNN_ATTN_CHUNK + 1;
    int64_t part = c.n * c.H * c.nch * (c.hd + 2);
    if (c.n >= CATTN_BLOCK) {
        cblk_ctx bc = {.c = &c, .nblk = (c.n + CATTN_BLOCK - 1) / CATTN_BLOCK};
        atomic_init(&bc.rc, TNN_OK);
        tnn__parallel_for(bc.nblk * c.Hkv, 1, cattn_block_range, &bc);
        int rc = atomic_load(&bc.rc);
        return rc ? TNN_ERR(rc, "tnn_attention_cached: out of memory") : TNN_OK;
    }
    if (part * (int64_t)sizeof(float) <= CATTN_SPLIT_BYTES) {
        c.part = malloc((size_t)part * sizeof(float));
        if (!c.part) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        tnn__parallel_for(c.n * c.nch * c.H, 1, cattn_split_range, &c);
        /* a merge task reads its nch partial results: about 16K values a
         * share at least (a decoding row's merge took ~2K cycles a thread
         * in two shares, about what handing one share over cost) */
        int64_t per = c.nch * (c.hd + 2);
        tnn__parallel_for(c.n * c.H, 16384 / per + 1, cattn_merge_range, &c);
        free(c.part);
    } else {
        atomic_int fail;
        atomic_init(&fail, 0);
        c.fail = &fail;
        tnn__parallel_for(c.n * c.Hkv, 1, cattn_row_range, &c);
        if (atomic_load(&fail))
            return TNN_ERR(TNN_ERR_NOMEM, "tnn_attention_cached: out of memory");
    }
    return TNN_OK;
}
