/* quant.c - GGUF tensor types: the type table, f16/bf16 conversion, the
 * portable scalar twin of every kernel (the test oracle), quantization of
 * weights and activations, and the run-time kernel choice and threaded
 * matrix-vector entry point. Layouts and the rounding contract: quant.h.
 */
#include "quant_impl.h"

#include "../core/internal.h"
#include "../cpu/pool.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(TNN_QUANT_X86)
#include <cpuid.h>
#endif

_Static_assert(sizeof(tnn_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(tnn_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(tnn_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(tnn_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(tnn_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(tnn_block_q4_K) == 144, "Q4_K block");
_Static_assert(sizeof(tnn_block_q5_K) == 176, "Q5_K block");
_Static_assert(sizeof(tnn_block_q6_K) == 210, "Q6_K block");
_Static_assert(sizeof(tnn_block_iq4_nl) == 18, "IQ4_NL block");
_Static_assert(sizeof(tnn_block_q2_K) == 84, "Q2_K block");
_Static_assert(sizeof(tnn_block_q3_K) == 110, "Q3_K block");
_Static_assert(sizeof(tnn_block_iq4_xs) == 136, "IQ4_XS block");

/* ------------------------------------------------------------------------ */
/* Type table                                                               */
/* ------------------------------------------------------------------------ */

static const tnn_qtype_info qtypes[TNN_QT_COUNT] = {
    [TNN_QT_F32] = {"F32", 1, 4, true},
    [TNN_QT_F16] = {"F16", 1, 2, true},
    [TNN_QT_Q4_0] = {"Q4_0", TNN_QK, sizeof(tnn_block_q4_0), true},
    [TNN_QT_Q4_1] = {"Q4_1", TNN_QK, sizeof(tnn_block_q4_1), true},
    [TNN_QT_Q5_0] = {"Q5_0", TNN_QK, sizeof(tnn_block_q5_0), true},
    [TNN_QT_Q5_1] = {"Q5_1", TNN_QK, sizeof(tnn_block_q5_1), true},
    [TNN_QT_Q8_0] = {"Q8_0", TNN_QK, sizeof(tnn_block_q8_0), true},
    [TNN_QT_IQ4_NL] = {"IQ4_NL", TNN_QK, sizeof(tnn_block_iq4_nl), false},
    [TNN_QT_Q2_K] = {"Q2_K", TNN_QK_K, sizeof(tnn_block_q2_K), false},
    [TNN_QT_Q3_K] = {"Q3_K", TNN_QK_K, sizeof(tnn_block_q3_K), false},
    [TNN_QT_Q4_K] = {"Q4_K", TNN_QK_K, sizeof(tnn_block_q4_K), false},
    [TNN_QT_Q5_K] = {"Q5_K", TNN_QK_K, sizeof(tnn_block_q5_K), false},
    [TNN_QT_Q6_K] = {"Q6_K", TNN_QK_K, sizeof(tnn_block_q6_K), false},
    [TNN_QT_IQ4_XS] = {"IQ4_XS", TNN_QK_K, sizeof(tnn_block_iq4_xs), false},
    [TNN_QT_BF16] = {"BF16", 1, 2, true},
};

const tnn_qtype_info *tnn__qtype(int type) {
    if (type < 0 || type >= TNN_QT_COUNT || !qtypes[type].name)
        return NULL;
    return &qtypes[type];
}

int64_t tnn__qtype_row_bytes(int type, int64_t n) {
    const tnn_qtype_info *t = tnn__qtype(type);
    if (!t)
        return TNN_ERR(TNN_ERR_ARG, "type %d is not a supported GGUF tensor type", type), -1;
    if (n < 0 || n > TNN_MAX_ELEMENTS || n % t->block)
        return TNN_ERR(TNN_ERR_ARG, "%s row of %lld elements: want a multiple of %d", t->name,
                       (long long)n, (int)t->block),
               -1;
    return n / t->block * t->block_bytes;
}

/* ------------------------------------------------------------------------ */
/* Conversions                                                              */
/* ------------------------------------------------------------------------ */

float tnn__f16_to_f32(uint16_t h) { return tnn__h2f(h); }
uint16_t tnn__f32_to_f16(float f) { return tnn__f2h(f); }
float tnn__bf16_to_f32(uint16_t h) { return tnn__bf2f(h); }
uint16_t tnn__f32_to_bf16(float f) { return tnn__f2bf(f); }

#define F16(h) tnn__h2f(h)

/* ------------------------------------------------------------------------ */
/* Scalar dequantization (qdecode.h decodes each block)                     */
/* ------------------------------------------------------------------------ */

static void deq_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void deq_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = F16(s[i]);
}

static void deq_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = tnn__bf2f(s[i]);
}

#define DEQ_BLOCKS(name, type, bs)                                                            \
    static void deq_##name(const void *src, float *dst, int64_t n) {                          \
        const type *b = src;                                                                  \
        for (int64_t k = 0; k < n / (bs); k++)                                                \
            tnn__deq_##name(b + k, dst + (bs) * k);                                           \
    }
DEQ_BLOCKS(q8_0, tnn_block_q8_0, TNN_QK)
DEQ_BLOCKS(q4_0, tnn_block_q4_0, TNN_QK)
DEQ_BLOCKS(q4_1, tnn_block_q4_1, TNN_QK)
DEQ_BLOCKS(q5_0, tnn_block_q5_0, TNN_QK)
DEQ_BLOCKS(q5_1, tnn_block_q5_1, TNN_QK)
DEQ_BLOCKS(q4_K, tnn_block_q4_K, TNN_QK_K)
DEQ_BLOCKS(q5_K, tnn_block_q5_K, TNN_QK_K)
DEQ_BLOCKS(q6_K, tnn_block_q6_K, TNN_QK_K)
DEQ_BLOCKS(iq4_nl, tnn_block_iq4_nl, TNN_QK)
DEQ_BLOCKS(q2_K, tnn_block_q2_K, TNN_QK_K)
DEQ_BLOCKS(q3_K, tnn_block_q3_K, TNN_QK_K)
DEQ_BLOCKS(iq4_xs, tnn_block_iq4_xs, TNN_QK_K)
#undef DEQ_BLOCKS

/* ------------------------------------------------------------------------ */
/* Quantization of weights (byte-identical to the gguf package)             */
/* ------------------------------------------------------------------------ */

/* Index of the first element of largest magnitude (numpy argmax of |x|). */
static int absmax_index(const float *x, int n) {
    int k = 0;
    float amax = fabsf(x[0]);
    for (int i = 1; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            k = i;
        }
    return k;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
    }
    *mn = lo;
    *mx = hi;
}

/* trunc(v) as an unsigned code clamped to [0, top] (v is >= 0 for finite input). */
static inline int trunc_code(float v, int top) {
    if (!(v > 0.0f))
        return 0;
    if (v >= (float)top)
        return top;
    return (int)v;
}

static void quant_q8_0(const float *x, void *dst, int64_t n) {
    tnn_block_q8_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        for (int i = 0; i < 32; i++) {
            float v = roundf(x[i] * id);
            v = v > -128.0f ? v : -128.0f;
            v = v < 127.0f ? v : 127.0f;
            b->qs[i] = (int8_t)v;
        }
    }
}

static void quant_q4_0(const float *x, void *dst, int64_t n) {
    tnn_block_q4_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float mx = x[absmax_index(x, 32)];
        float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        for (int i = 0; i < 16; i++) {
            int q0 = trunc_code(x[i] * id + 8.5f, 15);
            int q1 = trunc_code(x[i + 16] * id + 8.5f, 15);
            b->qs[i] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quant_q4_1(const float *x, void *dst, int64_t n) {
    tnn_block_q4_1 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float lo, hi;
        minmax(x, 32, &lo, &hi);
        float d = (hi - lo) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        b->m = tnn__f32_to_f16(lo);
        for (int i = 0; i < 16; i++) {
            int q0 = trunc_code((x[i] - lo) * id + 0.5f, 15);
            int q1 = trunc_code((x[i + 16] - lo) * id + 0.5f, 15);
            b->qs[i] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void pack_q5(const int q[32], uint8_t qh[4], uint8_t qs[16]) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++)
        h |= (uint32_t)((q[i] >> 4) & 1) << i;
    for (int i = 0; i < 4; i++)
        qh[i] = (uint8_t)(h >> (8 * i));
    for (int i = 0; i < 16; i++)
        qs[i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
}

static void quant_q5_0(const float *x, void *dst, int64_t n) {
    tnn_block_q5_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float mx = x[absmax_index(x, 32)];
        float d = mx / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int i = 0; i < 32; i++)
            q[i] = trunc_code(x[i] * id + 16.5f, 31);
        b->d = tnn__f32_to_f16(d);
        pack_q5(q, b->qh, b->qs);
    }
}

static void quant_q5_1(const float *x, void *dst, int64_t n) {
    tnn_block_q5_1 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float lo, hi;
        minmax(x, 32, &lo, &hi);
        float d = (hi - lo) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int i = 0; i < 32; i++)
            q[i] = trunc_code((x[i] - lo) * id + 0.5f, 31);
        b->d = tnn__f32_to_f16(d);
        b->m = tnn__f32_to_f16(lo);
        pack_q5(q, b->qh, b->qs);
    }
}

int tnn__quantize_row(int type, const float *src, void *dst, int64_t n) {
    if (tnn__qtype_row_bytes(type, n) < 0)
        return TNN_ERR_ARG;
    if (n && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    switch (type) {
    case TNN_QT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return TNN_OK;
    case TNN_QT_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = tnn__f32_to_f16(src[i]);
        return TNN_OK;
    case TNN_QT_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = tnn__f32_to_bf16(src[i]);
        return TNN_OK;
    case TNN_QT_Q8_0: quant_q8_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q4_0: quant_q4_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q4_1: quant_q4_1(src, dst, n); return TNN_OK;
    case TNN_QT_Q5_0: quant_q5_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q5_1: quant_q5_1(src, dst, n); return TNN_OK;
    default:
        return TNN_ERR(TNN_ERR_ARG, "quantization to %s is not implemented",
                       tnn__qtype(type)->name);
    }
}

/* ------------------------------------------------------------------------ */
/* Activations: x quantized to 8 bits for the integer dot products          */
/* ------------------------------------------------------------------------ */

static bool is_float_type(int t) { return t == TNN_QT_F32 || t == TNN_QT_F16 || t == TNN_QT_BF16; }
/* The types whose activations are quantized by 256 ("Q8_K"). */
static bool is_k_type(int t) { return tnn__qtype(t) && tnn__qtype(t)->block == TNN_QK_K; }

static int64_t round64(int64_t v) { return (v + 63) & ~(int64_t)63; }

int64_t tnn__qact_bytes(int wtype, int64_t n) {
    if (tnn__qtype_row_bytes(wtype, n) < 0)
        return -1;
    if (is_float_type(wtype))
        return 0;
    if (is_k_type(wtype)) {
        int64_t nb = n / TNN_QK_K;
        return round64(n) + round64(nb * 4) + round64(nb * 16 * 2);
    }
    int64_t nb = n / TNN_QK;
    return round64(n) + 3 * round64(nb * 4) + (nb + 1) / 2 * 64;
}

/* One activation code: v clamped to [-127, 127] (NaN -> -127), rounded half
 * away from zero (= roundf; exact, as a - t is exact below 2^23). */
static inline int8_t act_code(float v) {
    v = v > -127.0f ? v : -127.0f;
    v = v < 127.0f ? v : 127.0f;
    float a = fabsf(v);
    int t = (int)a;
    t += (a - (float)t) >= 0.5f;
    return (int8_t)(v < 0.0f ? -t : t);
}

static void act_scalar(const float *x, int64_t nb, int bs, int8_t *q, float *d) {
    for (int64_t b = 0; b < nb; b++, x += bs, q += bs) {
        float amax = 0.0f;
        for (int i = 0; i < bs; i++) {
            float a = fabsf(x[i]);
            amax = a > amax ? a : amax; /* NaN ignored */
        }
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        for (int i = 0; i < bs; i++)
            q[i] = act_code(x[i] * id);
    }
}

static tnn_qact_fn act_fn(int id);
static int prepare(tnn_qact *a, int kernel, int wtype, const float *x, int64_t n, void *work);

int tnn__qact_prepare(tnn_qact *a, int wtype, const float *x, int64_t n, void *work) {
    return prepare(a, tnn__quant_get_kernel(), wtype, x, n, work);
}

static int prepare(tnn_qact *a, int kernel, int wtype, const float *x, int64_t n, void *work) {
    int64_t bytes = tnn__qact_bytes(wtype, n);
    if (bytes < 0)
        return TNN_ERR_ARG;
    memset(a, 0, sizeof *a);
    a->wtype = wtype;
    a->n = n;
    a->x = x;
    if (bytes == 0)
        return TNN_OK;
    if (!work)
        return TNN_ERR(TNN_ERR_ARG, "NULL workspace");
    uint8_t *p = work;
    a->q = (int8_t *)p;
    p += round64(n);
    int bs = is_k_type(wtype) ? TNN_QK_K : TNN_QK;
    int64_t nb = n / bs;
    a->d = (float *)p;
    p += round64(nb * 4);
    if (is_k_type(wtype)) {
        a->bsum = (int16_t *)p;
    } else {
        a->s = (float *)p;
        p += round64(nb * 4);
        a->qsum = (int32_t *)p;
        p += round64(nb * 4);
        a->qp = (int8_t *)p;
    }
    act_fn(kernel)(x, nb, bs, a->q, a->d);
    if (bs == TNN_QK) /* the pair layout (a copy: O(n) against the O(rows n) products) */
        for (int64_t b = 0; b < nb; b += 2) {
            int8_t *pp = a->qp + 32 * b;
            const int8_t *q0 = a->q + 32 * b, *q1 = q0 + 32;
            memcpy(pp, q0, 16);
            memcpy(pp + 32, q0 + 16, 16);
            if (b + 1 < nb) {
                memcpy(pp + 16, q1, 16);
                memcpy(pp + 48, q1 + 16, 16);
            } else {
                memset(pp + 16, 0, 16);
                memset(pp + 48, 0, 16);
            }
        }
    for (int64_t b = 0; b < nb; b++) {
        const int8_t *q = a->q + b * bs;
        if (bs == TNN_QK) {
            int32_t sum = 0;
            for (int i = 0; i < 32; i++)
                sum += q[i];
            a->qsum[b] = sum;
            a->s[b] = a->d[b] * (float)sum;
        } else {
            for (int g = 0; g < 16; g++) {
                int sum = 0;
                for (int i = 0; i < 16; i++)
                    sum += q[16 * g + i];
                a->bsum[16 * b + g] = (int16_t)sum;
            }
        }
    }
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Scalar dot products (the oracle: quant.h states the contract)            */
/* ------------------------------------------------------------------------ */

static float wval(int type, const void *w, int64_t i) {
    switch (type) {
    case TNN_QT_F16: return F16(((const uint16_t *)w)[i]);
    case TNN_QT_BF16: return tnn__bf16_to_f32(((const uint16_t *)w)[i]);
    default: return ((const float *)w)[i];
    }
}

static void dot_float(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    for (int64_t r = 0; r < rows; r++) {
        const void *wr = (const uint8_t *)w + r * rb;
        float acc[32] = {0};
        for (int64_t i = 0; i < a->n; i++)
            acc[i & 31] = fmaf(wval(a->wtype, wr, i), a->x[i], acc[i & 31]);
        float v[8];
        for (int l = 0; l < 8; l++)
            v[l] = (acc[l] + acc[l + 8]) + (acc[l + 16] + acc[l + 24]);
        y[r] = tnn__qreduce8(v);
    }
}

/* The exact integer sum of one 32-element block: q_w codes (offset already
 * applied by the caller through qsum) times the activation codes. */
static inline int32_t idot32(const int *q, const int8_t *qx) {
    int32_t s = 0;
    for (int i = 0; i < 32; i++)
        s += q[i] * qx[i];
    return s;
}

/* The row loop of every block type: each block's p_b (its own float
 * expression, quant.h) added to acc[b % 8] in ascending b, then reduced. */
typedef float (*block_dot_fn)(const tnn_qact *a, const uint8_t *blk, int64_t b);

static void dot_blocks(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y,
                       block_dot_fn f) {
    const tnn_qtype_info *qi = tnn__qtype(a->wtype);
    int64_t nb = a->n / qi->block;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        float acc[8] = {0};
        for (int64_t b = 0; b < nb; b++)
            acc[b & 7] += f(a, wr + b * qi->block_bytes, b);
        y[r] = tnn__qreduce8(acc);
    }
}

/* The 32 four-bit codes of 16 bytes: low nibbles first (Q4_0, Q4_1, IQ4_NL). */
static void nibble_codes(const uint8_t *qs, int q[32]) {
    for (int i = 0; i < 16; i++) {
        q[i] = qs[i] & 15;
        q[i + 16] = qs[i] >> 4;
    }
}

static float blk_q32(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    int q[32];
    float dw, mw = 0.0f;
    int off = 0;
    bool has_min = false;
    switch (a->wtype) {
    case TNN_QT_Q8_0: {
        const tnn_block_q8_0 *B = (const tnn_block_q8_0 *)blk;
        for (int i = 0; i < 32; i++)
            q[i] = B->qs[i];
        dw = F16(B->d);
        break;
    }
    case TNN_QT_Q4_0: {
        const tnn_block_q4_0 *B = (const tnn_block_q4_0 *)blk;
        nibble_codes(B->qs, q);
        dw = F16(B->d);
        off = 8;
        break;
    }
    case TNN_QT_Q4_1: {
        const tnn_block_q4_1 *B = (const tnn_block_q4_1 *)blk;
        nibble_codes(B->qs, q);
        dw = F16(B->d);
        mw = F16(B->m);
        has_min = true;
        break;
    }
    case TNN_QT_Q5_0: {
        const tnn_block_q5_0 *B = (const tnn_block_q5_0 *)blk;
        tnn__q5_codes(B->qh, B->qs, q);
        dw = F16(B->d);
        off = 16;
        break;
    }
    default: { /* Q5_1 */
        const tnn_block_q5_1 *B = (const tnn_block_q5_1 *)blk;
        tnn__q5_codes(B->qh, B->qs, q);
        dw = F16(B->d);
        mw = F16(B->m);
        has_min = true;
        break;
    }
    }
    int32_t s = idot32(q, a->q + 32 * b) - off * a->qsum[b];
    float p = (dw * a->d[b]) * (float)s;
    if (has_min)
        p = p + mw * a->s[b];
    return p;
}

static float blk_iq4_nl(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const tnn_block_iq4_nl *B = (const tnn_block_iq4_nl *)blk;
    int q[32];
    nibble_codes(B->qs, q);
    for (int i = 0; i < 32; i++)
        q[i] = tnn__iq4_value(q[i]);
    return (F16(B->d) * a->d[b]) * (float)idot32(q, a->q + 32 * b);
}

static float blk_q2_K(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const tnn_block_q2_K *B = (const tnn_block_q2_K *)blk;
    const int8_t *qx = a->q + 256 * b;
    const int16_t *bs = a->bsum + 16 * b;
    int32_t s1 = 0, s2 = 0;
    for (int g = 0; g < 16; g++) {
        int32_t sg = 0;
        for (int i = 0; i < 16; i++)
            sg += tnn__q2k_code(B->qs, 16 * g + i) * qx[16 * g + i];
        s1 += (B->scales[g] & 15) * sg;
        s2 += (B->scales[g] >> 4) * bs[g];
    }
    float dx = a->d[b];
    return (F16(B->d) * dx) * (float)s1 - (F16(B->dmin) * dx) * (float)s2;
}

static float blk_q3_K(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const tnn_block_q3_K *B = (const tnn_block_q3_K *)blk;
    const int8_t *qx = a->q + 256 * b;
    int32_t s = 0;
    for (int g = 0; g < 16; g++) {
        int32_t sg = 0;
        for (int i = 0; i < 16; i++)
            sg += tnn__q3k_code(B, 16 * g + i) * qx[16 * g + i];
        s += tnn__q3k_scale(B->scales, g) * sg;
    }
    return (F16(B->d) * a->d[b]) * (float)s;
}

static float blk_q4_K(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const uint8_t *scales, *qs, *qh = NULL;
    uint16_t d16, dmin16;
    if (a->wtype == TNN_QT_Q5_K) {
        const tnn_block_q5_K *B = (const tnn_block_q5_K *)blk;
        scales = B->scales, qs = B->qs, qh = B->qh, d16 = B->d, dmin16 = B->dmin;
    } else {
        const tnn_block_q4_K *B = (const tnn_block_q4_K *)blk;
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
    return (F16(d16) * dx) * (float)s1 - (F16(dmin16) * dx) * (float)s2;
}

static float blk_q6_K(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const tnn_block_q6_K *B = (const tnn_block_q6_K *)blk;
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
    return (F16(B->d) * a->d[b]) * (float)(s1 - 32 * s2);
}

static float blk_iq4_xs(const tnn_qact *a, const uint8_t *blk, int64_t b) {
    const tnn_block_iq4_xs *B = (const tnn_block_iq4_xs *)blk;
    const int8_t *qx = a->q + 256 * b;
    int32_t s = 0;
    for (int j = 0; j < 8; j++) {
        int32_t sj = 0;
        for (int l = 0; l < 32; l++)
            sj += tnn__iq4_value(tnn__iq4xs_code(B, j, l)) * qx[32 * j + l];
        s += tnn__iq4xs_scale(B, j) * sj;
    }
    return (F16(B->d) * a->d[b]) * (float)s;
}

#define DOT_BLOCKS(name)                                                                           \
    static void dot_##name(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {  \
        dot_blocks(a, w, rb, rows, y, blk_##name);                                                 \
    }
DOT_BLOCKS(q32)
DOT_BLOCKS(iq4_nl)
DOT_BLOCKS(q2_K)
DOT_BLOCKS(q3_K)
DOT_BLOCKS(q4_K)
DOT_BLOCKS(q6_K)
DOT_BLOCKS(iq4_xs)
#undef DOT_BLOCKS

const tnn_qkernels tnn__qk_scalar = {
    .name = "scalar",
    .act = act_scalar,
    .dot =
        {
            [TNN_QT_F32] = dot_float,
            [TNN_QT_F16] = dot_float,
            [TNN_QT_BF16] = dot_float,
            [TNN_QT_Q8_0] = dot_q32,
            [TNN_QT_Q4_0] = dot_q32,
            [TNN_QT_Q4_1] = dot_q32,
            [TNN_QT_Q5_0] = dot_q32,
            [TNN_QT_Q5_1] = dot_q32,
            [TNN_QT_Q4_K] = dot_q4_K,
            [TNN_QT_Q5_K] = dot_q4_K,
            [TNN_QT_Q6_K] = dot_q6_K,
            [TNN_QT_IQ4_NL] = dot_iq4_nl,
            [TNN_QT_Q2_K] = dot_q2_K,
            [TNN_QT_Q3_K] = dot_q3_K,
            [TNN_QT_IQ4_XS] = dot_iq4_xs,
        },
    .deq =
        {
            [TNN_QT_F32] = deq_f32,
            [TNN_QT_F16] = deq_f16,
            [TNN_QT_BF16] = deq_bf16,
            [TNN_QT_Q8_0] = deq_q8_0,
            [TNN_QT_Q4_0] = deq_q4_0,
            [TNN_QT_Q4_1] = deq_q4_1,
            [TNN_QT_Q5_0] = deq_q5_0,
            [TNN_QT_Q5_1] = deq_q5_1,
            [TNN_QT_Q4_K] = deq_q4_K,
            [TNN_QT_Q5_K] = deq_q5_K,
            [TNN_QT_Q6_K] = deq_q6_K,
            [TNN_QT_IQ4_NL] = deq_iq4_nl,
            [TNN_QT_Q2_K] = deq_q2_K,
            [TNN_QT_Q3_K] = deq_q3_K,
            [TNN_QT_IQ4_XS] = deq_iq4_xs,
        },
};

/* ------------------------------------------------------------------------ */
/* Kernel choice                                                            */
/* ------------------------------------------------------------------------ */

static const char *const kernel_names[TNN_QK_COUNT] = {"scalar", "avx2", "avxvnni", "avx512"};
_Static_assert(sizeof kernel_names / sizeof kernel_names[0] == TNN_QK_COUNT, "kernel names");

#if defined(TNN_QUANT_X86)
/* CPUID.1:ECX bit 29 (some compilers' __builtin_cpu_supports lack "f16c"). */
static bool has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}

/* CPUID.(7,1):EAX bit 4 (clang 14's __builtin_cpu_supports lacks "avxvnni"). */
static bool has_avxvnni(void) {
    unsigned a, b, c, d;
    return __get_cpuid_max(0, NULL) >= 7 && __get_cpuid_count(7, 1, &a, &b, &c, &d) &&
           (a & (1u << 4));
}
#endif

bool tnn__quant_kernel_supported(int id) {
    switch (id) {
    case TNN_QK_SCALAR: return true;
#if defined(TNN_QUANT_X86)
    case TNN_QK_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    case TNN_QK_AVXVNNI:
        return tnn__quant_kernel_supported(TNN_QK_AVX2) && has_avxvnni();
    case TNN_QK_AVX512:
        return tnn__quant_kernel_supported(TNN_QK_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    default: return false;
    }
}

const char *tnn__quant_kernel_name(int id) {
    return id >= 0 && id < TNN_QK_COUNT ? kernel_names[id] : "?";
}

static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;
static int default_kernel; /* written once under kernel_once */
static atomic_int current_kernel;

static void kernel_init(void) {
    int best = TNN_QK_SCALAR;
    for (int id = TNN_QK_COUNT - 1; id > TNN_QK_SCALAR && best == TNN_QK_SCALAR; id--)
        if (tnn__quant_kernel_supported(id))
            best = id;
    int pick = best;
    const char *e = getenv("TNN_KERNEL");
    if (e && *e) {
        /* the GEMM's names: "avx512" and up ask for the AVX-512 kernels */
        int want = strcmp(e, "scalar") == 0    ? TNN_QK_SCALAR
                   : strcmp(e, "avx2") == 0    ? TNN_QK_AVX2
                   : strcmp(e, "avxvnni") == 0 ? TNN_QK_AVXVNNI
                   : strcmp(e, "avx512") == 0 || strcmp(e, "avx512bf16") == 0 ||
                           strcmp(e, "amx") == 0
                       ? TNN_QK_AVX512
                       : -1;
        if (want < 0)
            tnn__log(TNN_LOG_WARN,
                     "TNN_KERNEL=%s is not one of scalar, avx2, avxvnni, avx512, avx512bf16, amx; "
                     "quantized kernels use %s",
                     e, kernel_names[best]);
        else if (want > best)
            tnn__log(TNN_LOG_WARN, "TNN_KERNEL=%s is not supported on this CPU; "
                                   "quantized kernels use %s", e, kernel_names[best]);
        else
            pick = want;
    }
    default_kernel = pick;
    atomic_store(&current_kernel, pick);
}

int tnn__quant_get_kernel(void) {
    pthread_once(&kernel_once, kernel_init);
    return atomic_load_explicit(&current_kernel, memory_order_relaxed);
}

int tnn__quant_set_kernel(int id) {
    pthread_once(&kernel_once, kernel_init);
    if (id == TNN_QK_AUTO) {
        atomic_store(&current_kernel, default_kernel);
        return TNN_OK;
    }
    if (!tnn__quant_kernel_supported(id))
        return TNN_ERR(TNN_ERR_ARG, "quant kernel %d (%s) is unknown or not supported here", id,
                       tnn__quant_kernel_name(id));
    atomic_store(&current_kernel, id);
    return TNN_OK;
}

static const tnn_qkernels *kernels(int id) {
#if defined(TNN_QUANT_X86)
    if (id == TNN_QK_AVX2)
        return &tnn__qk_avx2;
    if (id == TNN_QK_AVXVNNI)
        return &tnn__qk_avxvnni;
    if (id == TNN_QK_AVX512)
        return &tnn__qk_avx512;
#endif
    (void)id;
    return &tnn__qk_scalar;
}

/* Each kernel set fills what it speeds up (with its `more` part); the rest
 * comes from the set below it (AVX-512 -> AVX-VNNI -> AVX2 -> the scalar
 * twin). FIND(field) is the first non-NULL entry in that order. The sets
 * below are searched whatever the CPU has, so the AVX-512 set lists every
 * entry the AVX-VNNI set has (a CPU with AVX-512 VNNI may lack AVX-VNNI). */
#define FIND(field)                                                                                \
    for (; id > TNN_QK_SCALAR; id--)                                                               \
        for (const tnn_qkernels *k = kernels(id); k; k = k->more)                                  \
            if (k->field)                                                                          \
                return k->field;

static tnn_qdot_fn dot_fn(int id, int type) {
    FIND(dot[type])
    return tnn__qk_scalar.dot[type];
}

static tnn_qdotn_fn dotn_fn(int id, int type) {
    FIND(dotn[type])
    return NULL;
}

static tnn_qdeq_fn deq_fn(int id, int type) {
    FIND(deq[type])
    return tnn__qk_scalar.deq[type];
}

#if defined(TNN_QUANT_X86)
/* AVX512_BF16 (CPUID leaf 7 subleaf 1 EAX bit 5; the AVX-512 set's bf16
 * dequantization uses it), asked once: CPUID traps in some VMs. */
static bool avx512bf16;
static pthread_once_t avx512bf16_once = PTHREAD_ONCE_INIT;
static void avx512bf16_probe(void) {
    unsigned a, b, c, d;
    avx512bf16 = __get_cpuid_max(0, NULL) >= 7 && __get_cpuid_count(7, 1, &a, &b, &c, &d) &&
                 (a & (1u << 5));
}
#endif

/* Only the AVX-512 set has these, and only with AVX512_BF16. */
static tnn_qdeq16_fn deq16_fn(int id, int type) {
#if defined(TNN_QUANT_X86)
    pthread_once(&avx512bf16_once, avx512bf16_probe);
    if (!avx512bf16)
        return NULL;
    FIND(deq16[type])
#else
    (void)id, (void)type;
#endif
    return NULL;
}

static tnn_qact_fn act_fn(int id) {
    FIND(act)
    return act_scalar;
}
#undef FIND

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

int tnn__dequantize_row(int type, const void *src, float *dst, int64_t n) {
    if (tnn__qtype_row_bytes(type, n) < 0)
        return TNN_ERR_ARG;
    if (n && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    deq_fn(tnn__quant_get_kernel(), type)(src, dst, n);
    return TNN_OK;
}

/* y = tnn__f2bf(x) for n values, branch-free so that the clones vectorize. */
TNN_VEC_CLONES static void round_bf16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16, q = (u >> 16) | 0x40u;
        y[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? q : r);
    }
}

/* The kernel pieces of a bf16 dequantization, looked up once. */
typedef struct {
    const tnn_qtype_info *qi;
    tnn_qdeq16_fn d16; /* or NULL: */
    tnn_qdeq_fn deq;   /* f32 values, then rounded */
} deq_bf16_fns;

static deq_bf16_fns bf16_fns(int type) {
    int kernel = tnn__quant_get_kernel();
    deq_bf16_fns f = {tnn__qtype(type), deq16_fn(kernel, type), NULL};
    if (!f.d16)
        f.deq = deq_fn(kernel, type);
    return f;
}

/* n values (a multiple of the block) from whole blocks at src. */
static void deq_bf16_blocks(const deq_bf16_fns *f, const uint8_t *src, uint16_t *dst, int64_t n) {
    if (f->d16) {
        f->d16(src, dst, n);
        return;
    }
    float tmp[256]; /* a multiple of every block */
    for (int64_t e = 0; e < n; e += 256) {
        int64_t c = n - e < 256 ? n - e : 256;
        f->deq(src + e / f->qi->block * f->qi->block_bytes, tmp, c);
        round_bf16(tmp, dst + e, c);
    }
}

int tnn__dequantize_row_bf16(int type, const void *src, uint16_t *dst, int64_t n) {
    if (tnn__qtype_row_bytes(type, n) < 0)
        return TNN_ERR_ARG;
    if (n && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    deq_bf16_fns f = bf16_fns(type);
    deq_bf16_blocks(&f, src, dst, n);
    return TNN_OK;
}

/* Rows this far ahead are asked for (the walk over W with a stride of a
 * row is one the hardware prefetcher does not follow). */
#define RANGE_AHEAD 4

int tnn__dequantize_rows_bf16(int type, const void *src, size_t row_bytes, int64_t rows,
                              int64_t k0, int64_t n, uint16_t *dst) {
    const tnn_qtype_info *qi = tnn__qtype(type);
    if (!qi || k0 < 0 || n < 0 || rows < 0)
        return TNN_ERR(TNN_ERR_ARG, "dequantize rows: type %d, rows %lld, k0 %lld, n %lld", type,
                       (long long)rows, (long long)k0, (long long)n);
    if (n && rows && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    deq_bf16_fns f = bf16_fns(type);
    const int64_t bs = qi->block;
    const int64_t b0 = k0 / qi->block * qi->block_bytes;
    const int64_t span = ((k0 + n + bs - 1) / bs - k0 / bs) * qi->block_bytes;
    for (int64_t r = 0; r < rows; r++, dst += n) {
        const uint8_t *s = (const uint8_t *)src + r * row_bytes;
        if (r + RANGE_AHEAD < rows)
            for (int64_t o = 0; o < span; o += 64)
                __builtin_prefetch(s + RANGE_AHEAD * row_bytes + b0 + o, 0, 0);
        /* a partial first block, the whole blocks, a partial last block */
        int64_t k = k0, left = n;
        uint16_t *d = dst;
        while (left > 0) {
            int64_t b = k / bs, off = k - b * bs;
            int64_t whole = off ? 0 : left / bs * bs;
            if (whole) {
                deq_bf16_blocks(&f, s + b * qi->block_bytes, d, whole);
            } else {
                uint16_t t[TNN_QK_K];
                whole = bs - off < left ? bs - off : left;
                deq_bf16_blocks(&f, s + b * qi->block_bytes, t, bs);
                memcpy(d, t + off, (size_t)whole * sizeof *t);
            }
            k += whole, d += whole, left -= whole;
        }
    }
    return TNN_OK;
}

void tnn__qdot_rows(const tnn_qact *a, const void *w, size_t row_bytes, int64_t rows, float *y) {
    if (rows > 0)
        dot_fn(tnn__quant_get_kernel(), a->wtype)(a, w, row_bytes, rows, y);
}

typedef struct {
    const tnn_qact *a; /* nx prepared rows of x */
    int64_t nx, tile;
    const tnn_qmm_part *parts; /* the products, their rows one range */
    int n_parts;
    size_t rb;
    tnn_qdot_fn fn;
    tnn_qdotn_fn fnn; /* several rows of x at once, or NULL */
} matvec_job;

/* Rows [begin, end) of one product's W against every row of x: a tile of
 * W's rows (in L1 after the first row of x streamed it) against each row of
 * x in turn. */
static void matvec_rows(const matvec_job *j, const tnn_qmm_part *p, int64_t begin, int64_t end) {
    const uint8_t *w = p->w;
    if (j->nx == 1) {
        j->fn(j->a, w + begin * j->rb, j->rb, end - begin, p->y + begin);
        return;
    }
    for (int64_t r0 = begin; r0 < end; r0 += j->tile) {
        int64_t rr = end - r0 < j->tile ? end - r0 : j->tile;
        if (j->fnn)
            j->fnn(j->a, j->nx, w + r0 * j->rb, j->rb, rr, p->y + r0, p->rows);
        else
            for (int64_t i = 0; i < j->nx; i++)
                j->fn(j->a + i, w + r0 * j->rb, j->rb, rr, p->y + i * p->rows + r0);
    }
}

/* Rows [begin, end) of the products' rows one after the other. */
static void matvec_range(void *ctx, int64_t begin, int64_t end) {
    const matvec_job *j = ctx;
    int64_t r0 = 0; /* the first of this product's rows in the range of all */
    for (int k = 0; k < j->n_parts && begin < end; r0 += j->parts[k].rows, k++) {
        int64_t r1 = r0 + j->parts[k].rows;
        if (begin >= r1) continue;
        int64_t e = end < r1 ? end : r1;
        matvec_rows(j, &j->parts[k], begin - r0, e - r0);
        begin = e;
    }
}

int tnn__quant_matmul(int wtype, const void *w, int64_t rows, int64_t n, const float *x,
                      int64_t nx, float *y, void *work) {
    tnn_qmm_part part = {w, rows, y};
    return tnn__quant_matmul_set(wtype, n, x, nx, &part, 1, work);
}

int tnn__quant_matmul_set(int wtype, int64_t n, const float *x, int64_t nx,
                          const tnn_qmm_part *parts, int n_parts, void *work) {
    int64_t rb = tnn__qtype_row_bytes(wtype, n);
    if (rb < 0)
        return TNN_ERR_ARG;
    if (n_parts < 1 || !parts)
        return TNN_ERR(TNN_ERR_ARG, "%d products: want at least one", n_parts);
    int64_t rows = 0;
    for (int k = 0; k < n_parts; k++) {
        if (parts[k].rows < 0 || nx < 0)
            return TNN_ERR(TNN_ERR_ARG, "rows %lld, rows of x %lld: want >= 0",
                           (long long)parts[k].rows, (long long)nx);
        if (parts[k].rows > INT64_MAX - rows)
            return TNN_ERR(TNN_ERR_RANGE, "the products' rows overflow");
        if (parts[k].rows && (!parts[k].w || !parts[k].y))
            return TNN_ERR(TNN_ERR_ARG, "NULL weights or y");
        rows += parts[k].rows;
    }
    if (rows == 0 || nx == 0)
        return TNN_OK;
    if (n && !x)
        return TNN_ERR(TNN_ERR_ARG, "NULL x");
    int64_t wb = tnn__qact_bytes(wtype, n);
    if ((wb > 0 && nx > INT64_MAX / wb) || nx > INT64_MAX / (int64_t)sizeof(tnn_qact))
        return TNN_ERR(TNN_ERR_RANGE, "%lld rows of x: workspace size overflows", (long long)nx);
    tnn_qact one, *a = nx == 1 ? &one : malloc((size_t)nx * sizeof *a);
    void *own = NULL;
    if (wb > 0 && !work) {
        own = aligned_alloc(64, (size_t)(wb * nx));
        work = own;
    }
    if (!a || (wb > 0 && !work)) {
        if (a != &one)
            free(a);
        free(own);
        return TNN_ERR(TNN_ERR_NOMEM, "%lld bytes of activation workspace",
                       (long long)(wb * nx));
    }
    int kernel = tnn__quant_get_kernel();
    int rc = TNN_OK;
    for (int64_t i = 0; i < nx && rc == TNN_OK; i++)
        rc = prepare(a + i, kernel, wtype, x + i * n, n, (uint8_t *)work + i * wb);
    if (rc == TNN_OK) {
        /* tiles of about 8 KiB of weights: L1 holds one with the rows of x */
        int64_t tile = rb > 0 ? (8192 + rb - 1) / rb : rows;
        matvec_job job = {a, nx, tile < 1 ? 1 : tile, parts, n_parts, (size_t)rb,
                          dot_fn(kernel, wtype), dotn_fn(kernel, wtype)};
        /* ~32 KiB of weights per chunk at least: smaller jobs stay on one thread
         * (64 KiB kept a 576-wide model's k and v products on one: 5% slower) */
        int64_t min_rows = rb > 0 ? (32768 + rb - 1) / rb : rows;
        tnn__parallel_for(rows, min_rows < 1 ? 1 : min_rows, matvec_range, &job);
    }
    if (a != &one)
        free(a);
    free(own);
    return rc;
}

bool tnn__quant_rows_shared(int wtype) {
    return tnn__qtype(wtype) && dotn_fn(tnn__quant_get_kernel(), wtype) != NULL;
}

int tnn__quant_matvec(int wtype, const void *w, int64_t rows, int64_t n, const float *x, float *y,
                      void *work) {
    return tnn__quant_matmul(wtype, w, rows, n, x, 1, y, work);
}
