/* common.h - argument checks shared by the op builders. */
#ifndef TNN_OPS_COMMON_H
#define TNN_OPS_COMMON_H

#include "../core/internal.h"
#include "../cpu/pool.h"
#include "kernels.h"

/* TNN_VEC_CLONES (the hot loops' AVX2 and AVX-512 clones): core/internal.h. */

#define CHECK_SESSION_NULL(s)                                                                 \
    do {                                                                                      \
        if (tnn__check_session((s), __func__)) return NULL;                                   \
    } while (0)
#define CHECK_TENSOR_NULL(s, t)                                                               \
    do {                                                                                      \
        if (tnn__check_tensor((s), (t), __func__, #t)) return NULL;                           \
    } while (0)
#define CHECK_F32_NULL(t)                                                                     \
    do {                                                                                      \
        if ((t)->dtype != TNN_F32) {                                                          \
            char b_[TNN_SHAPE_BUF];                                                           \
            return TNN_ERR_NULL(TNN_ERR_ARG, "'%s' is %s: want an f32 tensor", #t,            \
                                tnn__shape_str((t), b_, sizeof b_));                          \
        }                                                                                     \
    } while (0)

static inline bool same_shape(const tnn_tensor *a, const tnn_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return false;
    return true;
}

/* Rows (product of all but the last dimension) and the last dimension. */
static inline int64_t last_dim(const tnn_tensor *t) { return t->shape[t->ndim - 1]; }
static inline int64_t n_rows(const tnn_tensor *t) { return t->nelem / last_dim(t); }

#define F32(t) ((float *)(t)->data)
#define CF32(t) ((const float *)(t)->data)

#endif
