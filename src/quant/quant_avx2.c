/* quant_avx2.c - AVX2 + FMA + F16C kernels of the GGUF tensor types: integer
 * dot products against the 8-bit activation and vector dequantization. Only
 * this file is compiled with those flags; quant.c calls it when the CPU runs
 * it. Every result has the same bits as the scalar twin (contract: quant.h).
 */
#include "quant_impl.h"

#if defined(TNN_QUANT_X86)

#include <immintrin.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))

#include "quant_x86.h"

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* 8 f16 fields, `stride` bytes apart, widened to f32. */
INL __m256 load_f16x8(const uint8_t *p, size_t stride) {
    __m128i v = _mm_setr_epi16((short)ld16(p), (short)ld16(p + stride), (short)ld16(p + 2 * stride),
                               (short)ld16(p + 3 * stride), (short)ld16(p + 4 * stride),
                               (short)ld16(p + 5 * stride), (short)ld16(p + 6 * stride),
                               (short)ld16(p + 7 * stride));
    return _mm256_cvtph_ps(v);
}

/* 0x10 in byte i where bit i of qh is set. */
INL __m256i bits_0x10(const uint8_t *qh4) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    __m256i v = _mm256_set1_epi32((int)qh);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    v = _mm256_shuffle_epi8(v, shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* 8 int32 partial sums of u * s (u unsigned bytes, s signed; no saturation
 * for |u| <= 63 and |s| <= 127). */
INL __m256i dot_u8i8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

INL int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* ------------------------------------------------------------------------ */
/* Activation quantization (same ops as act_scalar in quant.c, 8 lanes)      */
/* ------------------------------------------------------------------------ */

/* 8 codes of v: clamp (NaN -> -127 as max_ps returns its second operand),
 * truncate, +1 when the fraction is >= 0.5, sign back. */
INL __m256i act_codes8(__m256 v) {
    v = _mm256_max_ps(v, _mm256_set1_ps(-127.0f));
    v = _mm256_min_ps(v, _mm256_set1_ps(127.0f));
    __m256 a = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    __m256i t = _mm256_cvttps_epi32(a);
    __m256 f = _mm256_sub_ps(a, _mm256_cvtepi32_ps(t));
    t = _mm256_sub_epi32(t,
                         _mm256_castps_si256(_mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ)));
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ));
    return _mm256_sub_epi32(_mm256_xor_si256(t, neg), neg);
}

static void act_avx2(const float *x, int64_t nb, int bs, int8_t *q, float *d) {
    const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nb; b++, x += bs, q += bs) {
        __m256 m = _mm256_setzero_ps();
        for (int i = 0; i < bs; i += 8)
            m = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absm), m);
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        float amax = _mm_cvtss_f32(h);
        float db = amax / 127.0f, id = db != 0.0f ? 1.0f / db : 0.0f;
        d[b] = db;
        const __m256 vid = _mm256_set1_ps(id);
        for (int i = 0; i < bs; i += 32) {
            __m256i c0 = act_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i), vid));
            __m256i c1 = act_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vid));
            __m256i c2 = act_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 16), vid));
            __m256i c3 = act_codes8(_mm256_mul_ps(_mm256_loadu_ps(x + i + 24), vid));
            /* packs work per 128-bit lane: bytes end up as dwords 0,2,4,6,1,3,5,7 */
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
            _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, perm));
        }
    }
}

/* ------------------------------------------------------------------------ */
/* 32-element formats                                                       */
/* ------------------------------------------------------------------------ */

/* The 32 codes of a block as bytes (unsigned, before the offset; Q8_0 and
 * IQ4_NL's table values signed). */
INL __m256i codes32(int type, const uint8_t *blk) {
    switch (type) {
    case TNN_QT_Q8_0: return _mm256_loadu_si256((const __m256i *)(blk + 2));
    case TNN_QT_IQ4_NL: return _mm256_shuffle_epi8(iq4_table(), nibbles32(blk + 2));
    case TNN_QT_Q4_0: return nibbles32(blk + 2);
    case TNN_QT_Q4_1: return nibbles32(blk + 4);
    case TNN_QT_Q5_0: return _mm256_or_si256(nibbles32(blk + 6), bits_0x10(blk + 2));
    default: return _mm256_or_si256(nibbles32(blk + 8), bits_0x10(blk + 4));
    }
}

/* 8 int32 partials of the block's integer dot (without the offset term). */
INL __m256i block_dot(int type, const uint8_t *blk, const int8_t *qx) {
    __m256i x = _mm256_loadu_si256((const __m256i *)qx);
    __m256i q = codes32(type, blk);
    if (type == TNN_QT_Q8_0 || type == TNN_QT_IQ4_NL) /* signed: |q| and x with q's sign */
        return dot_u8i8(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
    return dot_u8i8(q, x);
}

/* The 8 lane sums of blocks 0 .. full - 1 (full a multiple of 8) of the
 * row at wr, block b in lane b mod 8. */
INL __m256 row_groups(int type, const tnn_qact *a, const uint8_t *wr, int64_t full) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const int off = tnn__q32_offset(type);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < full; b += 8) {
        const uint8_t *blk = wr + b * bsz;
        tnn__qprefetch(blk, 8 * bsz);
        __m256i v[8];
        for (int k = 0; k < 8; k++)
            v[k] = block_dot(type, blk + k * bsz, a->q + 32 * (b + k));
        __m256i s = hsum8x8(v);
        if (off) {
            __m256i qs = _mm256_loadu_si256((const __m256i *)(a->qsum + b));
            s = _mm256_sub_epi32(s, _mm256_slli_epi32(qs, off == 8 ? 3 : 4));
        }
        __m256 dw = load_f16x8(blk, bsz);
        __m256 p =
            _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_loadu_ps(a->d + b)), _mm256_cvtepi32_ps(s));
        if (tnn__q32_has_min(type)) {
            __m256 mw = load_f16x8(blk + 2, bsz);
            p = _mm256_add_ps(p, _mm256_mul_ps(mw, _mm256_loadu_ps(a->s + b)));
        }
        acc = _mm256_add_ps(acc, p);
    }
    return acc;
}

/* Group v's integer block sums of the joint tails (quant_x86.h) of the run
 * of rows at w, their last n blocks from block b: a block at a time. */
INL __m256i joint_sums(int type, const tnn_qact *a, const uint8_t *w, size_t rb, int64_t b, int n,
                       int v) {
    const size_t bsz = tnn__q32_block_bytes(type);
    __m256i d[8];
    for (int l = 0; l < 8; l++) {
        const int q = 8 * v + l, blk = q % n;
        d[l] = block_dot(type, w + (size_t)(q / n) * rb + (size_t)(b + blk) * bsz,
                         a->q + 32 * (b + blk));
    }
    return hsum8x8(d);
}

#include "quant_joint.h"

/* One block at a time (Q8_0, Q5_0, Q5_1 run faster so on AVX2 than the
 * pair kernels of quant_avx2_q32.c, which take Q4_0, Q4_1 and every type's
 * several rows of x). */
INL void dot_q32(int type, const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const int64_t nb = a->n / TNN_QK;
    const int off = tnn__q32_offset(type);
    int64_t done = dot_joint(type, a, w, rb, rows, y);
    w = (const uint8_t *)w + done * rb;
    y += done;
    rows -= done;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        __m256 acc = row_groups(type, a, wr, nb / 8 * 8);
        float lanes[8];
        _mm256_storeu_ps(lanes, acc);
        for (int64_t b = nb / 8 * 8; b < nb; b++) {
            const uint8_t *blk = wr + b * bsz;
            int32_t s = hsum_i32(block_dot(type, blk, a->q + 32 * b)) - off * a->qsum[b];
            float p = (f16(ld16(blk)) * a->d[b]) * (float)s;
            if (tnn__q32_has_min(type))
                p = p + f16(ld16(blk + 2)) * a->s[b];
            lanes[b & 7] += p;
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

TNN_Q32_DOT(dot_q8_0, TNN_QT_Q8_0, dot_q32)
TNN_Q32_DOT(dot_q5_0, TNN_QT_Q5_0, dot_q32)
TNN_Q32_DOT(dot_q5_1, TNN_QT_Q5_1, dot_q32)
TNN_Q32_DOT(dot_iq4_nl, TNN_QT_IQ4_NL, dot_q32)

/* ------------------------------------------------------------------------ */
/* K-quants                                                                 */
/* ------------------------------------------------------------------------ */

INL void dot_qk45(int five, const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t nb = a->n / TNN_QK_K;
    const size_t bsz = five ? sizeof(tnn_block_q5_K) : sizeof(tnn_block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        float lanes[8] = {0};
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = wr + b * bsz;
            tnn__qprefetch(blk, bsz);
            const uint8_t *scales = blk + 4;
            const uint8_t *qs = five ? blk + 48 : blk + 16;
            const int8_t *qx = a->q + 256 * b;
            const int16_t *bs = a->bsum + 16 * b;
            __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : m4;
            __m256i acc = _mm256_setzero_si256();
            /* int16 scales sc0..sc7 in both lanes; mins duplicated per pair of 16 */
            __m128i sm = scales_k(scales);
            __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
            __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
            __m256i mnd = combine(_mm_unpacklo_epi16(mn16, mn16), _mm_unpackhi_epi16(mn16, mn16));
            int32_t s2 = hsum_i32(_mm256_madd_epi16(mnd, _mm256_loadu_si256((const __m256i *)bs)));
            for (int c = 0; c < 4; c++) {
                __m256i sc0 =
                    _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * 2 * c)));
                __m256i sc1 =
                    _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0302 + 0x0202 * 2 * c)));
                __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                __m256i lo = _mm256_and_si256(v, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                    qh = _mm256_srli_epi16(qh, 1);
                    hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
                    qh = _mm256_srli_epi16(qh, 1);
                }
                __m256i p0 =
                    _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(qx + 64 * c)));
                __m256i p1 = _mm256_maddubs_epi16(
                    hi, _mm256_loadu_si256((const __m256i *)(qx + 64 * c + 32)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p0, sc0));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p1, sc1));
            }
            int32_t s1 = hsum_i32(acc);
            float dx = a->d[b];
            float p = (f16(ld16(blk)) * dx) * (float)s1 - (f16(ld16(blk + 2)) * dx) * (float)s2;
            lanes[b & 7] += p;
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

static void dot_q4_K(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_qk45(0, a, w, rb, rows, y);
}
static void dot_q5_K(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_qk45(1, a, w, rb, rows, y);
}

/* Q2_K, Q3_K (and Q6_K below): 16 groups of 16 with their own scales. The
 * two-bit codes of elements 128h + 32s + l sit at bits 2s of byte 32h + l,
 * so each shift of a 32-byte load gives 32 codes in element order: groups
 * 8h + 2s (low lane) and 8h + 2s + 1 (high lane). `half` holds the 8 int16
 * scales of half h in both lanes; the shuffle picks scale 2s for the low
 * lane, 2s + 1 for the high one. */
INL __m256i group_scales(__m256i half, int s) {
    const __m256i pick = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2,
                                          3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    return _mm256_shuffle_epi8(half, _mm256_add_epi8(pick, _mm256_set1_epi8((char)(4 * s))));
}

static void dot_q2_K(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t nb = a->n / TNN_QK_K;
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(15);
    for (int64_t r = 0; r < rows; r++) {
        const tnn_block_q2_K *B = (const tnn_block_q2_K *)((const uint8_t *)w + r * rb);
        float lanes[8] = {0};
        for (int64_t b = 0; b < nb; b++, B++) {
            tnn__qprefetch(B, sizeof *B);
            const int8_t *qx = a->q + 256 * b;
            __m128i s8 = _mm_loadu_si128((const __m128i *)B->scales);
            __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
            __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
            int32_t s2 = hsum_i32(
                _mm256_madd_epi16(mn16, _mm256_loadu_si256((const __m256i *)(a->bsum + 16 * b))));
            __m256i acc = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
                __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                 : _mm256_permute2x128_si256(sc16, sc16, 0x00);
                for (int s = 0; s < 4; s++, v = _mm256_srli_epi16(v, 2)) {
                    __m256i p = _mm256_maddubs_epi16(
                        _mm256_and_si256(v, m2),
                        _mm256_loadu_si256((const __m256i *)(qx + 128 * h + 32 * s)));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, group_scales(half, s)));
                }
            }
            float dx = a->d[b];
            lanes[b & 7] +=
                (f16(B->d) * dx) * (float)hsum_i32(acc) - (f16(B->dmin) * dx) * (float)s2;
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

/* q + 4 (0..7) is the two low bits with bit e / 32 of hmask[e % 32] as bit
 * 2, so S = sum_g sc_g (sum((q + 4) qx) - 4 bsum_g). */
static void dot_q3_K(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t nb = a->n / TNN_QK_K;
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    for (int64_t r = 0; r < rows; r++) {
        const tnn_block_q3_K *B = (const tnn_block_q3_K *)((const uint8_t *)w + r * rb);
        float lanes[8] = {0};
        for (int64_t b = 0; b < nb; b++, B++) {
            tnn__qprefetch(B, sizeof *B);
            const int8_t *qx = a->q + 256 * b;
            __m256i sc16 = _mm256_cvtepi8_epi16(scales_q3k(B->scales));
            __m256i acc = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(
                    _mm256_madd_epi16(sc16,
                                      _mm256_loadu_si256((const __m256i *)(a->bsum + 16 * b))),
                    2));
            __m256i hm = _mm256_loadu_si256((const __m256i *)B->hmask);
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
                __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                 : _mm256_permute2x128_si256(sc16, sc16, 0x00);
                for (int s = 0; s < 4; s++) {
                    __m256i q = _mm256_or_si256(_mm256_and_si256(v, m2),
                                                _mm256_slli_epi16(_mm256_and_si256(hm, one), 2));
                    v = _mm256_srli_epi16(v, 2);
                    hm = _mm256_srli_epi16(hm, 1);
                    __m256i p = _mm256_maddubs_epi16(
                        q, _mm256_loadu_si256((const __m256i *)(qx + 128 * h + 32 * s)));
                    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, group_scales(half, s)));
                }
            }
            lanes[b & 7] += (f16(B->d) * a->d[b]) * (float)hsum_i32(acc);
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

/* IQ4_XS: each sub-block's 32 table values (signed) against x as Q8_0's
 * codes are, then its scale. */
static void dot_iq4_xs(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t nb = a->n / TNN_QK_K;
    const __m256i kv = iq4_table();
    for (int64_t r = 0; r < rows; r++) {
        const tnn_block_iq4_xs *B = (const tnn_block_iq4_xs *)((const uint8_t *)w + r * rb);
        float lanes[8] = {0};
        for (int64_t b = 0; b < nb; b++, B++) {
            tnn__qprefetch(B, sizeof *B);
            const int8_t *qx = a->q + 256 * b;
            __m256i acc = _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                __m256i q = _mm256_shuffle_epi8(kv, nibbles32(B->qs + 16 * j));
                __m256i x = _mm256_loadu_si256((const __m256i *)(qx + 32 * j));
                __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
                acc = _mm256_add_epi32(
                    acc, _mm256_madd_epi16(p, _mm256_set1_epi16((short)tnn__iq4xs_scale(B, j))));
            }
            lanes[b & 7] += (f16(B->d) * a->d[b]) * (float)hsum_i32(acc);
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

static void dot_q6_K(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t nb = a->n / TNN_QK_K;
    for (int64_t r = 0; r < rows; r++) {
        const tnn_block_q6_K *B = (const tnn_block_q6_K *)((const uint8_t *)w + r * rb);
        float lanes[8] = {0};
        for (int64_t b = 0; b < nb; b++, B++) {
            tnn__qprefetch(B, sizeof *B);
            const int8_t *qx = a->q + 256 * b;
            const int16_t *bs = a->bsum + 16 * b;
            /* int16 scales [s0..s7 | s8..s15]; `half` repeats one half in both lanes */
            __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)B->scales));
            const __m256i pick = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2,
                                                  3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
            /* S2 = sum sc_g * bsum_g, taken out as 32 * S2 from the start */
            __m256i acc = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_slli_epi32(_mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)bs)),
                                  5));
            for (int h = 0; h < 2; h++) {
                __m256i q[4];
                q6k_half(B, h, q);
                __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                 : _mm256_permute2x128_si256(sc16, sc16, 0x00);
                for (int g = 0; g < 4; g++) {
                    int e = 128 * h + 32 * g;
                    __m256i p =
                        _mm256_maddubs_epi16(q[g], _mm256_loadu_si256((const __m256i *)(qx + e)));
                    /* lane lo: int16 scale 2g of this half, lane hi: scale 2g + 1 */
                    __m256i sel = _mm256_add_epi8(pick, _mm256_set1_epi8((char)(4 * g)));
                    acc =
                        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_shuffle_epi8(half, sel)));
                }
            }
            float p = (f16(B->d) * a->d[b]) * (float)hsum_i32(acc);
            lanes[b & 7] += p;
        }
        y[r] = tnn__qreduce8(lanes);
    }
}

/* ------------------------------------------------------------------------ */
/* F32 / F16 / BF16: f32 fused multiply-add, 32 lanes                       */
/* ------------------------------------------------------------------------ */

INL __m256 widen8(int type, const void *w, int64_t i) {
    switch (type) {
    case TNN_QT_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    case TNN_QT_BF16:
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))),
            16));
    default: return _mm256_loadu_ps((const float *)w + i);
    }
}

INL void dot_f(int type, const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    const int64_t n = a->n, n32 = n & ~(int64_t)31;
    const size_t esz = type == TNN_QT_F32 ? 4 : 2;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
        for (int64_t i = 0; i < n32; i += 32) {
            tnn__qprefetch(wr + i * esz, 32 * esz);
            c0 = _mm256_fmadd_ps(widen8(type, wr, i), _mm256_loadu_ps(a->x + i), c0);
            c1 = _mm256_fmadd_ps(widen8(type, wr, i + 8), _mm256_loadu_ps(a->x + i + 8), c1);
            c2 = _mm256_fmadd_ps(widen8(type, wr, i + 16), _mm256_loadu_ps(a->x + i + 16), c2);
            c3 = _mm256_fmadd_ps(widen8(type, wr, i + 24), _mm256_loadu_ps(a->x + i + 24), c3);
        }
        if (n32 < n) { /* tail: zero-padded copies (adding +0 keeps every sum) */
            uint8_t wt[32 * 4] = {0};
            float xt[32] = {0};
            memcpy(wt, wr + n32 * esz, (size_t)(n - n32) * esz);
            memcpy(xt, a->x + n32, (size_t)(n - n32) * sizeof(float));
            c0 = _mm256_fmadd_ps(widen8(type, wt, 0), _mm256_loadu_ps(xt), c0);
            c1 = _mm256_fmadd_ps(widen8(type, wt, 8), _mm256_loadu_ps(xt + 8), c1);
            c2 = _mm256_fmadd_ps(widen8(type, wt, 16), _mm256_loadu_ps(xt + 16), c2);
            c3 = _mm256_fmadd_ps(widen8(type, wt, 24), _mm256_loadu_ps(xt + 24), c3);
        }
        float v[8];
        _mm256_storeu_ps(v, _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
        y[r] = tnn__qreduce8(v);
    }
}

static void dot_f32(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_f(TNN_QT_F32, a, w, rb, rows, y);
}
static void dot_f16(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_f(TNN_QT_F16, a, w, rb, rows, y);
}
static void dot_bf16(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_f(TNN_QT_BF16, a, w, rb, rows, y);
}

/* ------------------------------------------------------------------------ */
/* Dequantization                                                           */
/* ------------------------------------------------------------------------ */

/* The 32 signed byte codes in c, widened to f32: y = d * c, + m, or - m. */
enum { ST_MUL, ST_ADD, ST_SUB };
INL void store32(float *y, __m256i c, __m256 d, __m256 m, int op) {
    __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
    __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[k])));
        if (op == ST_ADD)
            v = _mm256_add_ps(v, m);
        if (op == ST_SUB)
            v = _mm256_sub_ps(v, m);
        _mm256_storeu_ps(y + 8 * k, v);
    }
}

static void deq_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++)
        dst[i] = f16(s[i]);
}

static void deq_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, widen8(TNN_QT_BF16, s, i));
    for (; i < n; i++)
        dst[i] = tnn__bf16_to_f32(s[i]);
}

INL void deq_q32(int type, const void *src, float *dst, int64_t n) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const uint8_t *blk = src;
    const int off = tnn__q32_offset(type);
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / TNN_QK; k++, blk += bsz) {
        __m256i c = codes32(type, blk);
        if (off)
            c = _mm256_sub_epi8(c, _mm256_set1_epi8((char)off));
        __m256 d = _mm256_set1_ps(f16(ld16(blk)));
        if (tnn__q32_has_min(type))
            store32(dst + 32 * k, c, d, _mm256_set1_ps(f16(ld16(blk + 2))), ST_ADD);
        else
            store32(dst + 32 * k, c, d, zero, ST_MUL);
    }
}

#define DEQ32(name, T)                                                                             \
    static void name(const void *src, float *dst, int64_t n) { deq_q32(T, src, dst, n); }
DEQ32(deq_q8_0, TNN_QT_Q8_0)
DEQ32(deq_q4_0, TNN_QT_Q4_0)
DEQ32(deq_q4_1, TNN_QT_Q4_1)
DEQ32(deq_q5_0, TNN_QT_Q5_0)
DEQ32(deq_q5_1, TNN_QT_Q5_1)

DEQ32(deq_iq4_nl, TNN_QT_IQ4_NL)

static void deq_q2_K(const void *src, float *dst, int64_t n) {
    const tnn_block_q2_K *B = src;
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++) {
        float d = f16(B->d), dmin = f16(B->dmin);
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
            for (int s = 0; s < 4; s++, v = _mm256_srli_epi16(v, 2)) {
                int g = 8 * h + 2 * s;
                __m256i c = _mm256_and_si256(v, m2);
                float *yy = dst + 256 * k + 16 * g;
                /* two groups: store the first 16 codes, then the next 16 */
                for (int t = 0; t < 2; t++) {
                    uint8_t sc = B->scales[g + t];
                    __m256 dd = _mm256_set1_ps(d * (float)(sc & 15));
                    __m256 mm = _mm256_set1_ps(dmin * (float)(sc >> 4));
                    __m128i part = t ? _mm256_extracti128_si256(c, 1) : _mm256_castsi256_si128(c);
                    for (int u = 0; u < 2; u++, part = _mm_srli_si128(part, 8)) {
                        __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                        _mm256_storeu_ps(yy + 16 * t + 8 * u,
                                         _mm256_sub_ps(_mm256_mul_ps(dd, q), mm));
                    }
                }
            }
        }
    }
}

static void deq_q3_K(const void *src, float *dst, int64_t n) {
    const tnn_block_q3_K *B = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++) {
        float d = f16(B->d);
        int8_t sc[16];
        _mm_storeu_si128((__m128i *)sc, scales_q3k(B->scales));
        __m256i hm = _mm256_loadu_si256((const __m256i *)B->hmask);
        for (int h = 0; h < 2; h++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(B->qs + 32 * h));
            for (int s = 0; s < 4; s++) {
                int g = 8 * h + 2 * s;
                __m256i c = q3k_step(&v, &hm);
                float *yy = dst + 256 * k + 16 * g;
                for (int t = 0; t < 2; t++) {
                    __m256 dd = _mm256_set1_ps(d * (float)sc[g + t]);
                    __m128i part = t ? _mm256_extracti128_si256(c, 1) : _mm256_castsi256_si128(c);
                    for (int u = 0; u < 2; u++, part = _mm_srli_si128(part, 8)) {
                        __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                        _mm256_storeu_ps(yy + 16 * t + 8 * u, _mm256_mul_ps(dd, q));
                    }
                }
            }
        }
    }
}

static void deq_iq4_xs(const void *src, float *dst, int64_t n) {
    const tnn_block_iq4_xs *B = src;
    const __m256i kv = iq4_table();
    const __m256 zero = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++) {
        float d = f16(B->d);
        for (int j = 0; j < 8; j++)
            store32(dst + 256 * k + 32 * j, _mm256_shuffle_epi8(kv, nibbles32(B->qs + 16 * j)),
                    _mm256_set1_ps(d * (float)tnn__iq4xs_scale(B, j)), zero, ST_MUL);
    }
}

INL void deq_qk45(int five, const void *src, float *dst, int64_t n) {
    const size_t bsz = five ? sizeof(tnn_block_q5_K) : sizeof(tnn_block_q4_K);
    const uint8_t *blk = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, blk += bsz) {
        float d = f16(ld16(blk)), dmin = f16(ld16(blk + 2));
        const uint8_t *qs = five ? blk + 48 : blk + 16;
        __m256i qh =
            five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        float *y = dst + 256 * k;
        for (int c = 0; c < 4; c++) {
            __m256i q[2];
            qk45_codes(qs, c, five ? &qh : NULL, q);
            for (int t = 0; t < 2; t++) {
                int sc, mn;
                tnn__qk_scale_min(blk + 4, 2 * c + t, &sc, &mn);
                store32(y + 64 * c + 32 * t, q[t], _mm256_set1_ps(d * (float)sc),
                        _mm256_set1_ps(dmin * (float)mn), ST_SUB);
            }
        }
    }
}

static void deq_q4_K(const void *src, float *dst, int64_t n) { deq_qk45(0, src, dst, n); }
static void deq_q5_K(const void *src, float *dst, int64_t n) { deq_qk45(1, src, dst, n); }

static void deq_q6_K(const void *src, float *dst, int64_t n) {
    const tnn_block_q6_K *B = src;
    for (int64_t k = 0; k < n / TNN_QK_K; k++, B++) {
        float d = f16(B->d);
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6k_half(B, h, q);
            for (int g = 0; g < 4; g++) {
                int e = 128 * h + 32 * g;
                __m256i c = _mm256_sub_epi8(q[g], _mm256_set1_epi8(32));
                __m256 d0 = _mm256_set1_ps(d * (float)B->scales[e >> 4]);
                __m256 d1 = _mm256_set1_ps(d * (float)B->scales[(e >> 4) + 1]);
                /* two scales per 32 codes: 16 elements each */
                float *yy = dst + 256 * k + e;
                __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
                _mm256_storeu_ps(yy,
                                 _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
                _mm256_storeu_ps(yy + 8, _mm256_mul_ps(d0, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                               _mm_srli_si128(lo, 8)))));
                _mm256_storeu_ps(yy + 16,
                                 _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
                _mm256_storeu_ps(yy + 24, _mm256_mul_ps(d1, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                                                                _mm_srli_si128(hi, 8)))));
            }
        }
    }
}

/* Q4_0 and Q4_1, and the several-row products: quant_avx2_q32.c. */
const tnn_qkernels tnn__qk_avx2 = {
    .name = "avx2",
    .more = &tnn__qk_avx2_q32,
    .act = act_avx2,
    .dot =
        {
            [TNN_QT_F32] = dot_f32,
            [TNN_QT_F16] = dot_f16,
            [TNN_QT_BF16] = dot_bf16,
            [TNN_QT_Q8_0] = dot_q8_0,
            [TNN_QT_Q5_0] = dot_q5_0,
            [TNN_QT_Q5_1] = dot_q5_1,
            [TNN_QT_Q4_K] = dot_q4_K,
            [TNN_QT_Q5_K] = dot_q5_K,
            [TNN_QT_Q6_K] = dot_q6_K,
            [TNN_QT_IQ4_NL] = dot_iq4_nl,
            [TNN_QT_Q2_K] = dot_q2_K,
            [TNN_QT_Q3_K] = dot_q3_K,
            [TNN_QT_IQ4_XS] = dot_iq4_xs,
        },
    .deq =
        {
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

#endif /* TNN_QUANT_X86 */
