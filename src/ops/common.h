/* common.h - argument checks shared by the op builders. */
#ifndef TNN_OPS_COMMON_H
#define TNN_OPS_COMMON_H

#include "../core/internal.h"
#include "../cpu/pool.h"
#include "kernels.h"

/* The hot loops get a clone with AVX2 + FMA (GCC 12 and later: x86-64-v3,
 * which adds F16C and BMI) and one with AVX-512 (x86-64-v4: twice the lanes
 * for the compute-bound ones, gelu on 2 threads 0.61 -> 1.06 of the triad on
 * an AVX-512 Xeon), picked at load time where the CPU has them (function
 * multi-versioning), and a baseline one. Contraction stays off and the only
 * fused operations are explicit fmaf calls (vmath.h), so every clone computes
 * the same bits; in the baseline clone fmaf is a libm call (correct, slow:
 * only x86 CPUs without FMA run it). Older GCC and clang clone for "fma"
 * (AVX + FMA): clang 14's resolver never picks an arch= clone on AMD CPUs. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(TNN_NO_CLONES)
#if !defined(__clang__) && __GNUC__ >= 12
#define TNN_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TNN_VEC_CLONES __attribute__((target_clones("fma", "default")))
#endif
#else
#define TNN_VEC_CLONES
#endif

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
