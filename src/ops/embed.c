/* embed.c - row gather (embedding lookup) and its backward scatter-add.
 * Indices are checked before anything is written: a bad index is an error
 * at compute, never a wild read or write.
 */
#include "common.h"

#include "../quant/quant.h"

#include <string.h>

static int64_t first_bad(const int32_t *idx, int64_t n, int64_t V) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= V) return i;
    return -1;
}

typedef struct {
    const float *src;
    const int32_t *idx;
    float *out;
    int64_t n, d;
} gr_ctx;

static void gather_range(void *p, int64_t lo, int64_t hi) {
    const gr_ctx *c = p;
    for (int64_t i = lo; i < hi; i++)
        memcpy(c->out + i * c->d, c->src + (int64_t)c->idx[i] * c->d, (size_t)c->d * sizeof(float));
}

int64_t tnn__k_get_rows(const float *table, int64_t V, int64_t d, const int32_t *idx, int64_t n,
                        float *out) {
    int64_t bad = first_bad(idx, n, V);
    if (bad >= 0) return bad;
    gr_ctx c = {.src = table, .idx = idx, .out = out, .n = n, .d = d};
    tnn__parallel_for(n, 4096 / d + 1, gather_range, &c);
    return -1;
}

/* Threads split the columns; each walks every index in order, so sums into a
 * repeated row happen in the same order for any split. */
static void scatter_cols(void *p, int64_t j0, int64_t j1) {
    const gr_ctx *c = p;
    for (int64_t i = 0; i < c->n; i++) {
        const float *src = c->src + i * c->d;
        float *dst = c->out + (int64_t)c->idx[i] * c->d;
        for (int64_t j = j0; j < j1; j++) dst[j] += src[j];
    }
}

int64_t tnn__k_get_rows_back(const float *d_out, int64_t n, int64_t d, const int32_t *idx,
                             int64_t V, float *out) {
    int64_t bad = first_bad(idx, n, V);
    if (bad >= 0) return bad;
    memset(out, 0, (size_t)(V * d) * sizeof(float));
    gr_ctx c = {.src = d_out, .idx = idx, .out = out, .n = n, .d = d};
    tnn__parallel_for(d, 64, scatter_cols, &c);
    return -1;
}

tnn_tensor *tnn_get_rows(tnn_session *s, tnn_tensor *table, tnn_tensor *idx) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, table);
    CHECK_TENSOR_NULL(s, idx);
    char bt[TNN_SHAPE_BUF], bi[TNN_SHAPE_BUF];
    tnn__shape_str(table, bt, sizeof bt);
    tnn__shape_str(idx, bi, sizeof bi);
    /* A wrong dtype is an argument error, a wrong rank a shape error. */
    if ((table->dtype != TNN_F32 && table->dtype != TNN_GGML) || table->ndim != 2)
        return TNN_ERR_NULL(table->dtype != TNN_F32 ? TNN_ERR_ARG : TNN_ERR_SHAPE,
                            "table %s: want a 2-D f32 tensor (V, d)", bt);
    if (idx->dtype != TNN_I32 || idx->ndim != 1)
        return TNN_ERR_NULL(idx->dtype != TNN_I32 ? TNN_ERR_ARG : TNN_ERR_SHAPE,
                            "idx %s: want a 1-D i32 tensor", bi);
    int64_t shape[2] = {idx->shape[0], table->shape[1]};
    tnn_tensor *src[2] = {table, idx};
    return tnn__node_new(s, TNN_OP_GET_ROWS, TNN_F32, 2, shape, src, 2);
}

tnn_tensor *tnn_get_rows_back(tnn_session *s, tnn_tensor *d_out, tnn_tensor *idx,
                              tnn_tensor *shape) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, d_out);
    CHECK_TENSOR_NULL(s, idx);
    CHECK_TENSOR_NULL(s, shape);
    char bd[TNN_SHAPE_BUF], bi[TNN_SHAPE_BUF], bs[TNN_SHAPE_BUF];
    tnn__shape_str(d_out, bd, sizeof bd);
    tnn__shape_str(idx, bi, sizeof bi);
    tnn__shape_str(shape, bs, sizeof bs);
    if (d_out->dtype != TNN_F32 || d_out->ndim != 2)
        return TNN_ERR_NULL(d_out->dtype != TNN_F32 ? TNN_ERR_ARG : TNN_ERR_SHAPE,
                            "d_out %s: want a 2-D f32 tensor (n, d)", bd);
    if (idx->dtype != TNN_I32 || idx->ndim != 1 || idx->shape[0] != d_out->shape[0])
        return TNN_ERR_NULL(idx->dtype != TNN_I32 ? TNN_ERR_ARG : TNN_ERR_SHAPE,
                            "idx %s: want a 1-D i32 tensor of %lld indices", bi,
                            (long long)d_out->shape[0]);
    if (shape->ndim != 2 || shape->shape[1] != d_out->shape[1])
        return TNN_ERR_NULL(TNN_ERR_SHAPE, "shape %s: want a 2-D tensor (V, %lld)", bs,
                            (long long)d_out->shape[1]);
    tnn_tensor *src[3] = {d_out, idx, shape};
    return tnn__node_new(s, TNN_OP_GET_ROWS_BACK, TNN_F32, 2, shape->shape, src, 3);
}

static int range_error(const tnn_tensor *t, const tnn_tensor *idx, int64_t bad, int64_t V) {
    return tnn__error(TNN_ERR_RANGE, tnn__ops[t->op].name,
                      "idx[%lld] = %d is outside [0, %lld) (node #%d)", (long long)bad,
                      ((const int32_t *)idx->data)[bad], (long long)V, t->id);
}

/* A GGML-typed table: each selected row is dequantized. */
static int get_rows_ggml(tnn_tensor *t) {
    const tnn_tensor *tab = t->src[0], *idx = t->src[1];
    const int32_t *ix = idx->data;
    int64_t V = tab->shape[0], d = tab->shape[1], n = idx->shape[0];
    int64_t rb = tnn__qtype_row_bytes(tab->gtype, d);
    if (rb < 0) return tnn_last_status();
    for (int64_t i = 0; i < n; i++)
        if (ix[i] < 0 || ix[i] >= V) return range_error(t, idx, i, V);
    for (int64_t i = 0; i < n; i++) {
        int rc = tnn__dequantize_row(tab->gtype, (const char *)tab->data + ix[i] * rb,
                                     F32(t) + i * d, d);
        if (rc) return rc;
    }
    return TNN_OK;
}

int tnn__fwd_get_rows(tnn_tensor *t) {
    const tnn_tensor *tab = t->src[0], *idx = t->src[1];
    if (tab->dtype == TNN_GGML) return get_rows_ggml(t);
    int64_t bad = tnn__k_get_rows(CF32(tab), tab->shape[0], tab->shape[1], idx->data,
                                  idx->shape[0], F32(t));
    return bad >= 0 ? range_error(t, idx, bad, tab->shape[0]) : TNN_OK;
}

int tnn__fwd_get_rows_back(tnn_tensor *t) {
    const tnn_tensor *d = t->src[0], *idx = t->src[1];
    int64_t bad = tnn__k_get_rows_back(CF32(d), d->shape[0], d->shape[1], idx->data,
                                       t->shape[0], F32(t));
    return bad >= 0 ? range_error(t, idx, bad, t->shape[0]) : TNN_OK;
}
