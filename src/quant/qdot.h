/* qdot.h - the scalar twin's matrix-vector arithmetic for one weight row
 * and the activation quantization it reads, as inline functions the CPU
 * (quant.c) and the GPU (src/cuda) both compile: a GPU decoding step then
 * gives the CPU's bits for each product. The contract: quant.h.
 * (Compile without contraction of a*b+c: -ffp-contract=off, nvcc -fmad=false.)
 */
#ifndef TNN_QDOT_H
#define TNN_QDOT_H

#include "qdecode.h"

#include <math.h>
#include <stdbool.h>

TNN_HD static inline bool tnn__qt_is_float(int t) {
    return t == TNN_QT_F32 || t == TNN_QT_F16 || t == TNN_QT_BF16;
}
TNN_HD static inline bool tnn__qt_is_k(int t) {
    return t == TNN_QT_Q4_K || t == TNN_QT_Q5_K || t == TNN_QT_Q6_K;
}
TNN_HD static inline int64_t tnn__round64(int64_t v) { return (v + 63) & ~(int64_t)63; }

/* Points a at its parts inside `work` (tnn__qact_bytes bytes) for n values
 * of x against weights of `wtype`; computes nothing. */
TNN_HD static inline void tnn__qact_layout(tnn_qact *a, int wtype, const float *x, int64_t n,
                                           void *work) {
    a->wtype = wtype;
    a->n = n;
    a->x = x;
    a->q = NULL, a->d = NULL, a->s = NULL, a->qsum = NULL, a->bsum = NULL;
    if (tnn__qt_is_float(wtype)) return;
    uint8_t *p = (uint8_t *)work;
    int64_t nb = n / (tnn__qt_is_k(wtype) ? TNN_QK_K : TNN_QK);
    a->q = (int8_t *)p;
    p += tnn__round64(n);
    a->d = (float *)p;
    p += tnn__round64(nb * 4);
    if (tnn__qt_is_k(wtype)) {
        a->bsum = (int16_t *)p;
    } else {
        a->s = (float *)p;
        p += tnn__round64(nb * 4);
        a->qsum = (int32_t *)p;
    }
}

/* The activation code of v: clamped to [-127, 127] (NaN -> -127), rounded
 * half away from zero. */
TNN_HD static inline int8_t tnn__act_code(float v) {
    v = v > -127.0f ? v : -127.0f;
    v = v < 127.0f ? v : 127.0f;
    float a = fabsf(v);
    int t = (int)a;
    t += (a - (float)t) >= 0.5f;
    return (int8_t)(v < 0.0f ? -t : t);
}

/* One block of bs values: its scale d = amax / 127 and codes. */
TNN_HD static inline void tnn__act_block(const float *x, int bs, int8_t *q, float *d) {
    float amax = 0.0f;
    for (int i = 0; i < bs; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax; /* NaN ignored */
    }
    float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
    *d = db;
    for (int i = 0; i < bs; i++)
        q[i] = tnn__act_code(x[i] * id);
}

/* The sums of block b the kernels read (after its codes and scale). */
TNN_HD static inline void tnn__act_sums(tnn_qact *a, int64_t b) {
    if (!tnn__qt_is_k(a->wtype)) {
        const int8_t *q = a->q + b * TNN_QK;
        int32_t sum = 0;
        for (int i = 0; i < 32; i++)
            sum += q[i];
        a->qsum[b] = sum;
        a->s[b] = a->d[b] * (float)sum;
        return;
    }
    const int8_t *q = a->q + b * TNN_QK_K;
    for (int g = 0; g < 16; g++) {
        int sum = 0;
        for (int i = 0; i < 16; i++)
            sum += q[16 * g + i];
        a->bsum[16 * b + g] = (int16_t)sum;
    }
}

/* The fixed final reduction of 8 partial sums (quant.h contract). */
TNN_HD static inline float tnn__qreduce8(const float v[8]) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

TNN_HD static inline float tnn__qwval(int type, const void *w, int64_t i) {
    switch (type) {
    case TNN_QT_F16: return tnn__h2f(((const uint16_t *)w)[i]);
    case TNN_QT_BF16: return tnn__bf2f(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

/* F32/F16/BF16 rows: 32 fma lanes, folded to 8, reduced. */
TNN_HD static inline float tnn__qdot_row_float(const tnn_qact *a, const void *wr) {
    float acc[32] = {0};
    for (int64_t i = 0; i < a->n; i++)
        acc[i & 31] = fmaf(tnn__qwval(a->wtype, wr, i), a->x[i], acc[i & 31]);
    float v[8];
    for (int l = 0; l < 8; l++)
        v[l] = (acc[l] + acc[l + 8]) + (acc[l + 16] + acc[l + 24]);
    return tnn__qreduce8(v);
}

/* 32-element block types: an exact integer sum per block, scaled. */
TNN_HD static inline float tnn__qdot_row_q32(const tnn_qact *a, const uint8_t *wr) {
    int64_t nb = a->n / TNN_QK;
    int type = a->wtype;
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        int q[32];
        float dw, mw = 0.0f;
        int off = 0;
        bool has_min = false;
        switch (type) {
        case TNN_QT_Q8_0: {
            const tnn_block_q8_0 *B = (const tnn_block_q8_0 *)wr + b;
            for (int i = 0; i < 32; i++)
                q[i] = B->qs[i];
            dw = tnn__h2f(B->d);
            break;
        }
        case TNN_QT_Q4_0: {
            const tnn_block_q4_0 *B = (const tnn_block_q4_0 *)wr + b;
            for (int i = 0; i < 16; i++) {
                q[i] = B->qs[i] & 15;
                q[i + 16] = B->qs[i] >> 4;
            }
            dw = tnn__h2f(B->d);
            off = 8;
            break;
        }
        case TNN_QT_Q4_1: {
            const tnn_block_q4_1 *B = (const tnn_block_q4_1 *)wr + b;
            for (int i = 0; i < 16; i++) {
                q[i] = B->qs[i] & 15;
                q[i + 16] = B->qs[i] >> 4;
            }
            dw = tnn__h2f(B->d);
            mw = tnn__h2f(B->m);
            has_min = true;
            break;
        }
        case TNN_QT_Q5_0: {
            const tnn_block_q5_0 *B = (const tnn_block_q5_0 *)wr + b;
            tnn__q5_codes(B->qh, B->qs, q);
            dw = tnn__h2f(B->d);
            off = 16;
            break;
        }
        default: { /* Q5_1 */
            const tnn_block_q5_1 *B = (const tnn_block_q5_1 *)wr + b;
            tnn__q5_codes(B->qh, B->qs, q);
            dw = tnn__h2f(B->d);
            mw = tnn__h2f(B->m);
            has_min = true;
            break;
        }
        }
        const int8_t *qx = a->q + 32 * b;
        int32_t s = 0;
        for (int i = 0; i < 32; i++)
            s += q[i] * qx[i];
        s -= off * a->qsum[b];
        float p = (dw * a->d[b]) * (float)s;
        if (has_min)
            p = p + mw * a->s[b];
        acc[b & 7] += p;
    }
    return tnn__qreduce8(acc);
}

/* Q4_K / Q5_K rows. */
TNN_HD static inline float tnn__qdot_row_q4K(const tnn_qact *a, const uint8_t *wr) {
    int64_t nb = a->n / TNN_QK_K;
    bool five = a->wtype == TNN_QT_Q5_K;
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t d16, dmin16;
        if (five) {
            const tnn_block_q5_K *B = (const tnn_block_q5_K *)wr + b;
            scales = B->scales, qs = B->qs, qh = B->qh, d16 = B->d, dmin16 = B->dmin;
        } else {
            const tnn_block_q4_K *B = (const tnn_block_q4_K *)wr + b;
            scales = B->scales, qs = B->qs, d16 = B->d, dmin16 = B->dmin;
        }
        const int8_t *qx = a->q + 256 * b;
        const int16_t *bs = a->bsum + 16 * b;
        int32_t s1 = 0, s2 = 0;
        for (int j = 0; j < 8; j++) {
            int sc, mn;
            tnn__qk_scale_min(scales, j, &sc, &mn);
            int32_t sj = 0;
            for (int l = 0; l < 32; l++) {
                int q = tnn__q4k_code(qs, j, l);
                if (qh)
                    q |= ((qh[l] >> j) & 1) << 4;
                sj += q * qx[32 * j + l];
            }
            s1 += sc * sj;
            s2 += mn * (bs[2 * j] + bs[2 * j + 1]);
        }
        float dx = a->d[b];
        float p = (tnn__h2f(d16) * dx) * (float)s1 - (tnn__h2f(dmin16) * dx) * (float)s2;
        acc[b & 7] += p;
    }
    return tnn__qreduce8(acc);
}

/* Q6_K rows. */
TNN_HD static inline float tnn__qdot_row_q6K(const tnn_qact *a, const uint8_t *wr) {
    int64_t nb = a->n / TNN_QK_K;
    const tnn_block_q6_K *B = (const tnn_block_q6_K *)wr;
    float acc[8] = {0};
    for (int64_t b = 0; b < nb; b++, B++) {
        const int8_t *qx = a->q + 256 * b;
        const int16_t *bs = a->bsum + 16 * b;
        int32_t s1 = 0, s2 = 0;
        for (int g = 0; g < 16; g++) {
            int32_t sg = 0;
            for (int i = 0; i < 16; i++)
                sg += tnn__q6k_code(B, 16 * g + i) * qx[16 * g + i];
            s1 += B->scales[g] * sg;
            s2 += B->scales[g] * bs[g];
        }
        float p = (tnn__h2f(B->d) * a->d[b]) * (float)(s1 - 32 * s2);
        acc[b & 7] += p;
    }
    return tnn__qreduce8(acc);
}

/* One row of any supported type. */
TNN_HD static inline float tnn__qdot_row(const tnn_qact *a, const void *wr) {
    switch (a->wtype) {
    case TNN_QT_F32:
    case TNN_QT_F16:
    case TNN_QT_BF16: return tnn__qdot_row_float(a, wr);
    case TNN_QT_Q4_K:
    case TNN_QT_Q5_K: return tnn__qdot_row_q4K(a, (const uint8_t *)wr);
    case TNN_QT_Q6_K: return tnn__qdot_row_q6K(a, (const uint8_t *)wr);
    default: return tnn__qdot_row_q32(a, (const uint8_t *)wr);
    }
}

#endif
