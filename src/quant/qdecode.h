/* qdecode.h - the exact value of every GGUF block: f16/bf16 conversion and
 * the dequantization of one block, as inline functions that compile for the
 * CPU (quant.c's scalar twin) and for the GPU (src/cuda), so both read a
 * block the same way and give the same bits. Layouts: quant.h.
 */
#ifndef TNN_QDECODE_H
#define TNN_QDECODE_H

#include "quant.h"

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define TNN_HD __host__ __device__
#elif defined(TNN_CUDA_EMU_BUILD)
#define TNN_HD __host__ __device__ /* no-ops under the emulator (cuda_emu.h) */
#else
#define TNN_HD
#endif

TNN_HD static inline uint32_t tnn__f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
TNN_HD static inline float tnn__bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TNN_HD static inline float tnn__h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1f) {
        /* inf, or NaN made quiet as F16C's vcvtph2ps does */
        x = sign | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0);
    } else if (e) {
        x = sign | ((e + 112) << 23) | (m << 13);
    } else if (!m) {
        x = sign;
    } else { /* subnormal: m * 2^-24, renormalized */
        int s = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            s++;
        }
        x = sign | ((uint32_t)(113 - s) << 23) | ((m & 0x3ffu) << 13);
    }
    return tnn__bits_f32(x);
}

TNN_HD static inline uint16_t tnn__f2h(float f) {
    uint32_t x = tnn__f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu)); /* NaN */
    if (ax >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax >= 0x38800000u) {               /* normal half */
        uint32_t r = ax - 0x38000000u;     /* exponent rebiased */
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (ax <= 0x33000000u)
        return sign; /* <= 2^-25: ties to the even zero */
    /* subnormal half: units of 2^-24, rounded to nearest even */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    int shift = 126 - (int)e; /* 14..24 */
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

TNN_HD static inline float tnn__bf2f(uint16_t h) { return tnn__bits_f32((uint32_t)h << 16); }

TNN_HD static inline uint16_t tnn__f2bf(float f) {
    uint32_t x = tnn__f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* Scale and min of sub-block j (0..7) of a Q4_K / Q5_K super-block. */
TNN_HD static inline void tnn__qk_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* ------------------------------------------------------------------------ */
/* One block -> its values (32 or 256 floats)                               */
/* ------------------------------------------------------------------------ */

TNN_HD static inline void tnn__deq_q8_0(const tnn_block_q8_0 *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int i = 0; i < 32; i++)
        y[i] = d * (float)b->qs[i];
}

TNN_HD static inline void tnn__deq_q4_0(const tnn_block_q4_0 *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)((b->qs[i] & 15) - 8);
        y[i + 16] = d * (float)((b->qs[i] >> 4) - 8);
    }
}

TNN_HD static inline void tnn__deq_q4_1(const tnn_block_q4_1 *b, float *y) {
    float d = tnn__h2f(b->d), m = tnn__h2f(b->m);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)(b->qs[i] & 15) + m;
        y[i + 16] = d * (float)(b->qs[i] >> 4) + m;
    }
}

/* The 32 five-bit codes of a Q5_0 / Q5_1 block. */
TNN_HD static inline uint32_t tnn__q5_high(const uint8_t *qh4) {
    return (uint32_t)qh4[0] | (uint32_t)qh4[1] << 8 | (uint32_t)qh4[2] << 16 |
           (uint32_t)qh4[3] << 24;
}

TNN_HD static inline void tnn__q5_codes(const uint8_t *qh4, const uint8_t *qs, int q[32]) {
    uint32_t qh = tnn__q5_high(qh4);
    for (int i = 0; i < 16; i++) {
        q[i] = (qs[i] & 15) | (int)((qh >> i) & 1u) << 4;
        q[i + 16] = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1u) << 4;
    }
}

TNN_HD static inline void tnn__deq_q5_0(const tnn_block_q5_0 *b, float *y) {
    int q[32];
    tnn__q5_codes(b->qh, b->qs, q);
    float d = tnn__h2f(b->d);
    for (int i = 0; i < 32; i++)
        y[i] = d * (float)(q[i] - 16);
}

TNN_HD static inline void tnn__deq_q5_1(const tnn_block_q5_1 *b, float *y) {
    int q[32];
    tnn__q5_codes(b->qh, b->qs, q);
    float d = tnn__h2f(b->d), m = tnn__h2f(b->m);
    for (int i = 0; i < 32; i++)
        y[i] = d * (float)q[i] + m;
}

/* Code of element l (0..31) of sub-block j (0..7) of a Q4_K / Q5_K block. */
TNN_HD static inline int tnn__q4k_code(const uint8_t *qs, int j, int l) {
    uint8_t v = qs[32 * (j >> 1) + l];
    return (j & 1) ? v >> 4 : v & 15;
}

TNN_HD static inline void tnn__deq_q4_K(const tnn_block_q4_K *b, float *y) {
    float d = tnn__h2f(b->d), dmin = tnn__h2f(b->dmin);
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        tnn__qk_scale_min(b->scales, j, &sc, &mn);
        float d1 = d * (float)sc, m1 = dmin * (float)mn;
        for (int l = 0; l < 32; l++)
            y[32 * j + l] = d1 * (float)tnn__q4k_code(b->qs, j, l) - m1;
    }
}

TNN_HD static inline void tnn__deq_q5_K(const tnn_block_q5_K *b, float *y) {
    float d = tnn__h2f(b->d), dmin = tnn__h2f(b->dmin);
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        tnn__qk_scale_min(b->scales, j, &sc, &mn);
        float d1 = d * (float)sc, m1 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) {
            int q = tnn__q4k_code(b->qs, j, l) | ((b->qh[l] >> j) & 1) << 4;
            y[32 * j + l] = d1 * (float)q - m1;
        }
    }
}

/* Code (0..63, before the -32) of element e (0..255) of a Q6_K block. */
TNN_HD static inline int tnn__q6k_code(const tnn_block_q6_K *b, int e) {
    int h = e >> 7, i = e & 127;
    uint8_t lo = b->ql[64 * h + (i & 63)];
    int q = (i < 64) ? (lo & 15) : (lo >> 4);
    return q | ((b->qh[32 * h + (i & 31)] >> (2 * (i >> 5))) & 3) << 4;
}

TNN_HD static inline void tnn__deq_q6_K(const tnn_block_q6_K *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int e = 0; e < 256; e++)
        y[e] = (d * (float)b->scales[e >> 4]) * (float)(tnn__q6k_code(b, e) - 32);
}

/* Value q (0..15) of the IQ4_NL / IQ4_XS table (quant.h), from two
 * immediates so that GPU code needs no table in memory. */
TNN_HD static inline int tnn__iq4_value(int q) {
    uint64_t t = q < 8 ? 0xf6eaddcfbfad9881ull : 0x7159453526190d01ull;
    return (int)(int8_t)(uint8_t)(t >> (8 * (q & 7)));
}

TNN_HD static inline void tnn__deq_iq4_nl(const tnn_block_iq4_nl *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int i = 0; i < 16; i++) {
        y[i] = d * (float)tnn__iq4_value(b->qs[i] & 15);
        y[i + 16] = d * (float)tnn__iq4_value(b->qs[i] >> 4);
    }
}

/* Two-bit code (0..3) of element e (0..255) of a Q2_K / Q3_K block. */
TNN_HD static inline int tnn__q2k_code(const uint8_t *qs, int e) {
    return (qs[32 * (e >> 7) + (e & 31)] >> (2 * ((e >> 5) & 3))) & 3;
}

TNN_HD static inline void tnn__deq_q2_K(const tnn_block_q2_K *b, float *y) {
    float d = tnn__h2f(b->d), dmin = tnn__h2f(b->dmin);
    for (int g = 0; g < 16; g++) {
        float d1 = d * (float)(b->scales[g] & 15), m1 = dmin * (float)(b->scales[g] >> 4);
        for (int i = 0; i < 16; i++)
            y[16 * g + i] = d1 * (float)tnn__q2k_code(b->qs, 16 * g + i) - m1;
    }
}

/* Signed scale (-32..31) of group g (0..15) of a Q3_K block. */
TNN_HD static inline int tnn__q3k_scale(const uint8_t *s, int g) {
    int lo = (s[g & 7] >> (4 * (g >> 3))) & 15, hi = (s[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
    return (lo | hi << 4) - 32;
}

/* Code (-4..3) of element e of a Q3_K block. */
TNN_HD static inline int tnn__q3k_code(const tnn_block_q3_K *b, int e) {
    return tnn__q2k_code(b->qs, e) - (((b->hmask[e & 31] >> (e >> 5)) & 1) ? 0 : 4);
}

TNN_HD static inline void tnn__deq_q3_K(const tnn_block_q3_K *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int g = 0; g < 16; g++) {
        float d1 = d * (float)tnn__q3k_scale(b->scales, g);
        for (int i = 0; i < 16; i++)
            y[16 * g + i] = d1 * (float)tnn__q3k_code(b, 16 * g + i);
    }
}

/* Scale (ls - 32, -32..31) of sub-block j (0..7) of an IQ4_XS block. */
TNN_HD static inline int tnn__iq4xs_scale(const tnn_block_iq4_xs *b, int j) {
    int lo = (b->scales_l[j >> 1] >> (4 * (j & 1))) & 15, hi = (b->scales_h >> (2 * j)) & 3;
    return (lo | hi << 4) - 32;
}

/* Table index (0..15) of element l (0..31) of sub-block j of an IQ4_XS block. */
TNN_HD static inline int tnn__iq4xs_code(const tnn_block_iq4_xs *b, int j, int l) {
    uint8_t v = b->qs[16 * j + (l & 15)];
    return l < 16 ? v & 15 : v >> 4;
}

TNN_HD static inline void tnn__deq_iq4_xs(const tnn_block_iq4_xs *b, float *y) {
    float d = tnn__h2f(b->d);
    for (int j = 0; j < 8; j++) {
        float d1 = d * (float)tnn__iq4xs_scale(b, j);
        for (int l = 0; l < 32; l++)
            y[32 * j + l] = d1 * (float)tnn__iq4_value(tnn__iq4xs_code(b, j, l));
    }
}

/* Block `k` of a row of `type` into y (1, 32 or 256 values; the float types
 * are blocks of one). False for a type that is not a GGUF tensor type here. */
TNN_HD static inline int tnn__deq_block(int type, const void *row, int64_t k, float *y) {
    switch (type) {
    case TNN_QT_F32: y[0] = ((const float *)row)[k]; return 1;
    case TNN_QT_F16: y[0] = tnn__h2f(((const uint16_t *)row)[k]); return 1;
    case TNN_QT_BF16: y[0] = tnn__bf2f(((const uint16_t *)row)[k]); return 1;
    case TNN_QT_Q8_0: tnn__deq_q8_0((const tnn_block_q8_0 *)row + k, y); return 1;
    case TNN_QT_Q4_0: tnn__deq_q4_0((const tnn_block_q4_0 *)row + k, y); return 1;
    case TNN_QT_Q4_1: tnn__deq_q4_1((const tnn_block_q4_1 *)row + k, y); return 1;
    case TNN_QT_Q5_0: tnn__deq_q5_0((const tnn_block_q5_0 *)row + k, y); return 1;
    case TNN_QT_Q5_1: tnn__deq_q5_1((const tnn_block_q5_1 *)row + k, y); return 1;
    case TNN_QT_Q4_K: tnn__deq_q4_K((const tnn_block_q4_K *)row + k, y); return 1;
    case TNN_QT_Q5_K: tnn__deq_q5_K((const tnn_block_q5_K *)row + k, y); return 1;
    case TNN_QT_Q6_K: tnn__deq_q6_K((const tnn_block_q6_K *)row + k, y); return 1;
    case TNN_QT_IQ4_NL: tnn__deq_iq4_nl((const tnn_block_iq4_nl *)row + k, y); return 1;
    case TNN_QT_Q2_K: tnn__deq_q2_K((const tnn_block_q2_K *)row + k, y); return 1;
    case TNN_QT_Q3_K: tnn__deq_q3_K((const tnn_block_q3_K *)row + k, y); return 1;
    case TNN_QT_IQ4_XS: tnn__deq_iq4_xs((const tnn_block_iq4_xs *)row + k, y); return 1;
    default: return 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Eight values of a block                                                  */
/* ------------------------------------------------------------------------ */

/* Part p of block k of a row (the GPU's matrix-vector kernel gives each lane
 * one part, so a warp reads whole blocks side by side): 8 values, the same
 * bits as the whole block's decoder gives them. 32-value blocks have 4
 * parts, 256-value ones 32. Which values a part holds:
 *   "split" types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL): value v[i] is element 4p + i and
 *   v[4 + i] element 16 + 4p + i (i < 4): the low and high nibbles of the
 *   block's bytes 4p .. 4p+3;  the others: v[i] is element 8p + i. */
TNN_HD static inline int tnn__part_split(int type) {
    return type == TNN_QT_Q4_0 || type == TNN_QT_Q4_1 || type == TNN_QT_Q5_0 ||
           type == TNN_QT_Q5_1 || type == TNN_QT_IQ4_NL;
}
/* Element of value i (0..7) of part p. */
TNN_HD static inline int tnn__part_elem(int split, int p, int i) {
    return split ? (i < 4 ? 4 * p + i : 16 + 4 * p + i - 4) : 8 * p + i;
}

TNN_HD static inline void tnn__deq_part(int type, const void *row, int64_t k, int p, float *v) {
    switch (type) {
    case TNN_QT_Q8_0: {
        const tnn_block_q8_0 *b = (const tnn_block_q8_0 *)row + k;
        float d = tnn__h2f(b->d);
        for (int i = 0; i < 8; i++) v[i] = d * (float)b->qs[8 * p + i];
        break;
    }
    case TNN_QT_Q4_0: {
        const tnn_block_q4_0 *b = (const tnn_block_q4_0 *)row + k;
        float d = tnn__h2f(b->d);
        for (int i = 0; i < 4; i++) {
            uint8_t q = b->qs[4 * p + i];
            v[i] = d * (float)((q & 15) - 8);
            v[4 + i] = d * (float)((q >> 4) - 8);
        }
        break;
    }
    case TNN_QT_Q4_1: {
        const tnn_block_q4_1 *b = (const tnn_block_q4_1 *)row + k;
        float d = tnn__h2f(b->d), m = tnn__h2f(b->m);
        for (int i = 0; i < 4; i++) {
            uint8_t q = b->qs[4 * p + i];
            v[i] = d * (float)(q & 15) + m;
            v[4 + i] = d * (float)(q >> 4) + m;
        }
        break;
    }
    case TNN_QT_Q5_0:
    case TNN_QT_Q5_1: {
        const tnn_block_q5_1 *b1 = (const tnn_block_q5_1 *)row + k;
        const tnn_block_q5_0 *b0 = (const tnn_block_q5_0 *)row + k;
        int one = type == TNN_QT_Q5_1;
        const uint8_t *qs = one ? b1->qs : b0->qs;
        uint32_t qh = tnn__q5_high(one ? b1->qh : b0->qh);
        float d = tnn__h2f(one ? b1->d : b0->d), m = one ? tnn__h2f(b1->m) : 0.0f;
        for (int i = 0; i < 4; i++) {
            int e = 4 * p + i;
            int lo = (qs[e] & 15) | (int)((qh >> e) & 1u) << 4;
            int hi = (qs[e] >> 4) | (int)((qh >> (e + 16)) & 1u) << 4;
            v[i] = one ? d * (float)lo + m : d * (float)(lo - 16);
            v[4 + i] = one ? d * (float)hi + m : d * (float)(hi - 16);
        }
        break;
    }
    case TNN_QT_Q4_K:
    case TNN_QT_Q5_K: {
        const tnn_block_q4_K *b4 = (const tnn_block_q4_K *)row + k;
        const tnn_block_q5_K *b5 = (const tnn_block_q5_K *)row + k;
        int five = type == TNN_QT_Q5_K;
        int j = p >> 2, l0 = (p & 3) * 8, sc, mn;
        tnn__qk_scale_min(five ? b5->scales : b4->scales, j, &sc, &mn);
        float d = tnn__h2f(five ? b5->d : b4->d), dmin = tnn__h2f(five ? b5->dmin : b4->dmin);
        float d1 = d * (float)sc, m1 = dmin * (float)mn;
        for (int i = 0; i < 8; i++) {
            int q = tnn__q4k_code(five ? b5->qs : b4->qs, j, l0 + i);
            if (five) q |= ((b5->qh[l0 + i] >> j) & 1) << 4;
            v[i] = d1 * (float)q - m1;
        }
        break;
    }
    case TNN_QT_Q6_K: {
        const tnn_block_q6_K *b = (const tnn_block_q6_K *)row + k;
        float d = tnn__h2f(b->d);
        for (int i = 0; i < 8; i++) {
            int e = 8 * p + i;
            v[i] = (d * (float)b->scales[e >> 4]) * (float)(tnn__q6k_code(b, e) - 32);
        }
        break;
    }
    case TNN_QT_IQ4_NL: {
        const tnn_block_iq4_nl *b = (const tnn_block_iq4_nl *)row + k;
        float d = tnn__h2f(b->d);
        for (int i = 0; i < 4; i++) {
            uint8_t q = b->qs[4 * p + i];
            v[i] = d * (float)tnn__iq4_value(q & 15);
            v[4 + i] = d * (float)tnn__iq4_value(q >> 4);
        }
        break;
    }
    case TNN_QT_Q2_K: {
        const tnn_block_q2_K *b = (const tnn_block_q2_K *)row + k;
        int g = p >> 1; /* 8 values of one group of 16 */
        float d1 = tnn__h2f(b->d) * (float)(b->scales[g] & 15);
        float m1 = tnn__h2f(b->dmin) * (float)(b->scales[g] >> 4);
        for (int i = 0; i < 8; i++) v[i] = d1 * (float)tnn__q2k_code(b->qs, 8 * p + i) - m1;
        break;
    }
    case TNN_QT_Q3_K: {
        const tnn_block_q3_K *b = (const tnn_block_q3_K *)row + k;
        float d1 = tnn__h2f(b->d) * (float)tnn__q3k_scale(b->scales, p >> 1);
        for (int i = 0; i < 8; i++) v[i] = d1 * (float)tnn__q3k_code(b, 8 * p + i);
        break;
    }
    case TNN_QT_IQ4_XS: {
        const tnn_block_iq4_xs *b = (const tnn_block_iq4_xs *)row + k;
        int j = p >> 2, l0 = (p & 3) * 8;
        float d1 = tnn__h2f(b->d) * (float)tnn__iq4xs_scale(b, j);
        for (int i = 0; i < 8; i++) v[i] = d1 * (float)tnn__iq4_value(tnn__iq4xs_code(b, j, l0 + i));
        break;
    }
    default: break;
    }
}

#endif
