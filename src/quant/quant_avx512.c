/* quant_avx512.c - the VNNI dot products (quant_vnni.h) with AVX-512 F/BW/
 * VL/VNNI: masks for the tails and the fifth bits. Only this file is
 * compiled with those flags; quant.c runs it when the CPU has them and falls
 * back to the AVX-VNNI and AVX2 kernels for everything else.
 */
#include "quant_impl.h"

#if defined(TNN_QUANT_X86)

#include <immintrin.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))

#include "quant_x86.h"

INL __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
INL __m256i vnni_dpwssd(__m256i acc, __m256i a, __m256i b) { return _mm256_dpwssd_epi32(acc, a, b); }
INL __m256i vnni_bits_0x10(uint32_t m) { return _mm256_maskz_mov_epi8(m, _mm256_set1_epi8(0x10)); }
INL __mmask8 live_mask(int n) { return (__mmask8)((1u << n) - 1); }
INL __m256i vnni_gather_live(const uint8_t *p, __m256i idx, int n) {
    return _mm256_mmask_i32gather_epi32(_mm256_setzero_si256(), live_mask(n), idx, p, 1);
}
INL __m256i vnni_load_live_epi32(const int32_t *p, int n) {
    return _mm256_maskz_loadu_epi32(live_mask(n), p);
}
INL __m256 vnni_load_live_ps(const float *p, int n) { return _mm256_maskz_loadu_ps(live_mask(n), p); }
INL __m128i vnni_low16(__m256i v) { return _mm256_cvtepi32_epi16(v); }
INL __m256 vnni_add_live(__m256 acc, __m256 v, int n) {
    return _mm256_mask_add_ps(acc, live_mask(n), acc, v);
}

#define ROWS_MAX 8 /* rows of x a pass of the several-row kernels (quant_vnni.h) */
#include "quant_vnni.h"
#include "quant_vnni_k.h"

/* ------------------------------------------------------------------------ */
/* Dequantization straight to bf16 (a prompt's GEMM panels): the values of  */
/* the scalar twin's expressions, rounded by VCVTNE2PS2BF16 (AVX512_BF16),  */
/* 32 at a time, without the f32 values going through memory. Its rounding */
/* is tnn__f32_to_bf16's (nearest even, a NaN made quiet with its upper     */
/* half) except that it flushes f32 subnormals, which no block decodes to:  */
/* every value is 0 or at least 2^-24 in magnitude (f16 scales times small  */
/* integers, exact in f32). quant.c takes these only where CPUID reports    */
/* AVX512_BF16.                                                             */
/* ------------------------------------------------------------------------ */

enum { D_MUL, D_ADD, D_SUB };
/* d * (float)c (+ m or - m) for 16 int32 codes c. */
INL __m512 val16(__m512i c, float d, float m, int op) {
    __m512 v = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(c));
    if (op == D_ADD) v = _mm512_add_ps(v, _mm512_set1_ps(m));
    if (op == D_SUB) v = _mm512_sub_ps(v, _mm512_set1_ps(m));
    return v;
}
/* y[0..32) = bf16 of two runs of 16 values (the instruction puts its second
 * operand in the low half). */
INL void put_bf16(uint16_t *y, __m512 lo, __m512 hi) {
    _mm512_storeu_si512(y, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}
/* 32 signed byte codes (element order) of a 32-value run, one scale. */
INL void put32(uint16_t *y, __m256i c, float d, float m, int op) {
    put_bf16(y, val16(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c)), d, m, op),
             val16(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1)), d, m, op));
}

INL void d16_q32(int type, const void *src, uint16_t *dst, int64_t n) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const uint8_t *b = src;
    const __m256i kv = iq4_table();
    for (int64_t k = 0; k < n / TNN_QK; k++, b += bsz, dst += 32) {
        float d = f16(ld16(b));
        uint32_t qh;
        switch (type) {
        case TNN_QT_Q8_0:
            put32(dst, _mm256_loadu_si256((const __m256i *)(b + 2)), d, 0, D_MUL);
            break;
        case TNN_QT_Q4_0:
            put32(dst, _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8)), d, 0, D_MUL);
            break;
        case TNN_QT_Q4_1: put32(dst, nibbles32(b + 4), d, f16(ld16(b + 2)), D_ADD); break;
        case TNN_QT_IQ4_NL:
            put32(dst, _mm256_shuffle_epi8(kv, nibbles32(b + 2)), d, 0, D_MUL);
            break;
        case TNN_QT_Q5_0:
            memcpy(&qh, b + 2, 4);
            put32(dst, _mm256_sub_epi8(_mm256_or_si256(nibbles32(b + 6), vnni_bits_0x10(qh)),
                                       _mm256_set1_epi8(16)),
                  d, 0, D_MUL);
            break;
        default: /* Q5_1 */
            memcpy(&qh, b + 4, 4);
            put32(dst, _mm256_or_si256(nibbles32(b + 8), vnni_bits_0x10(qh)), d, f16(ld16(b + 2)),
                  D_ADD);
            break;
        }
    }
}
#define D16_Q32(name, T)                                                                           \
    static void name(const void *src, uint16_t *dst, int64_t n) { d16_q32(T, src, dst, n); }
D16_Q32(d16_q8_0, TNN_QT_Q8_0)
D16_Q32(d16_q4_0, TNN_QT_Q4_0)
D16_Q32(d16_q4_1, TNN_QT_Q4_1)
D16_Q32(d16_q5_0, TNN_QT_Q5_0)
D16_Q32(d16_q5_1, TNN_QT_Q5_1)
D16_Q32(d16_iq4_nl, TNN_QT_IQ4_NL)

/* Q4_K / Q5_K: sub-block j's 32 codes (chunk j / 2, low or high nibbles). */
INL void d16_qk45(int five, const void *src, uint16_t *dst, int64_t n) {
    const size_t bsz = five ? sizeof(tnn_block_q5_K) : sizeof(tnn_block_q4_K);
    const uint8_t *b = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, b += bsz, dst += 256) {
        float d = f16(ld16(b)), dmin = f16(ld16(b + 2));
        const uint8_t *qs = five ? b + 48 : b + 16;
        __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q[2];
            qk45_codes(qs, c, five ? &qh : NULL, q);
            for (int t = 0; t < 2; t++) {
                int sc, mn;
                tnn__qk_scale_min(b + 4, 2 * c + t, &sc, &mn);
                put32(dst + 64 * c + 32 * t, q[t], d * (float)sc, dmin * (float)mn, D_SUB);
            }
        }
    }
}
static void d16_q4_K(const void *src, uint16_t *dst, int64_t n) { d16_qk45(0, src, dst, n); }
static void d16_q5_K(const void *src, uint16_t *dst, int64_t n) { d16_qk45(1, src, dst, n); }

/* Q6_K: half h's four runs of 32 (quant.h's layout), 16 values a scale. */
static void d16_q6_K(const void *src, uint16_t *dst, int64_t n) {
    const tnn_block_q6_K *B = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++, dst += 256) {
        float d = f16(B->d);
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6k_half(B, h, q);
            for (int g = 0; g < 4; g++) {
                int e = 128 * h + 32 * g;
                __m256i c = _mm256_sub_epi8(q[g], _mm256_set1_epi8(32));
                put_bf16(dst + e,
                         val16(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c)),
                               d * (float)B->scales[e >> 4], 0, D_MUL),
                         val16(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1)),
                               d * (float)B->scales[(e >> 4) + 1], 0, D_MUL));
            }
        }
    }
}

/* Q2_K / Q3_K: each shift of a 32-byte load gives the two-bit codes of
 * 32 elements in order, groups g and g + 1 of 16 (layout in quant.h). */
static void d16_q2_K(const void *src, uint16_t *dst, int64_t n) {
    const tnn_block_q2_K *B = src;
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++, dst += 256) {
        float d = f16(B->d), dmin = f16(B->dmin);
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
            for (int s = 0; s < 4; s++, v = _mm256_srli_epi16(v, 2)) {
                int g = 8 * h + 2 * s;
                __m256i c = _mm256_and_si256(v, m2);
                put_bf16(dst + 16 * g,
                         val16(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c)),
                               d * (float)(B->scales[g] & 15), dmin * (float)(B->scales[g] >> 4),
                               D_SUB),
                         val16(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1)),
                               d * (float)(B->scales[g + 1] & 15),
                               dmin * (float)(B->scales[g + 1] >> 4), D_SUB));
            }
        }
    }
}

static void d16_q3_K(const void *src, uint16_t *dst, int64_t n) {
    const tnn_block_q3_K *B = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++, dst += 256) {
        float d = f16(B->d);
        int8_t sc[16];
        _mm_storeu_si128((__m128i *)sc, scales_q3k(B->scales));
        __m256i hm = _mm256_loadu_si256((const __m256i *)B->hmask);
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
            for (int s = 0; s < 4; s++) {
                int g = 8 * h + 2 * s;
                __m256i c = q3k_step(&v, &hm);
                put_bf16(dst + 16 * g,
                         val16(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(c)),
                               d * (float)sc[g], 0, D_MUL),
                         val16(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(c, 1)),
                               d * (float)sc[g + 1], 0, D_MUL));
            }
        }
    }
}

static void d16_iq4_xs(const void *src, uint16_t *dst, int64_t n) {
    const tnn_block_iq4_xs *B = src;
    const __m256i kv = iq4_table();
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++, dst += 256) {
        float d = f16(B->d);
        for (int j = 0; j < 8; j++)
            put32(dst + 32 * j, _mm256_shuffle_epi8(kv, nibbles32(B->qs + 16 * j)),
                  d * (float)tnn__iq4xs_scale(B, j), 0, D_MUL);
    }
}

TNN_VNNI_K_KERNELS(avx512_k, "avx512-k", NULL)

static const tnn_qkernels avx512_deq16 = {
    .name = "avx512-deq16",
    .more = &avx512_k,
    .deq16 = {[TNN_QT_Q8_0] = d16_q8_0, [TNN_QT_Q4_0] = d16_q4_0, [TNN_QT_Q4_1] = d16_q4_1,
              [TNN_QT_Q5_0] = d16_q5_0, [TNN_QT_Q5_1] = d16_q5_1, [TNN_QT_IQ4_NL] = d16_iq4_nl,
              [TNN_QT_Q4_K] = d16_q4_K, [TNN_QT_Q5_K] = d16_q5_K, [TNN_QT_Q6_K] = d16_q6_K,
              [TNN_QT_Q2_K] = d16_q2_K, [TNN_QT_Q3_K] = d16_q3_K, [TNN_QT_IQ4_XS] = d16_iq4_xs},
};

/* Everything not listed in it runs the next kernel set down (quant.c). */
TNN_VNNI_KERNELS(tnn__qk_avx512, "avx512", &avx512_deq16)

#endif /* TNN_QUANT_X86 */
