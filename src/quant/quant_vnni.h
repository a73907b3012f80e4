/* quant_vnni.h - the VNNI dot products of the 32-element GGUF types
 * (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) against the 8-bit activation, for one row
 * of x or several. Included by quant_avx512.c (AVX-512 VNNI),
 * quant_avxvnni.c (AVX-VNNI, the VEX form Intel's client cores have) and
 * quant_avx2_q32.c (AVX2, vpdpbusd composed of two instructions), each
 * compiled with its own flags, after they define the few operations that
 * differ:
 *   vnni_dpbusd(acc, u, s)      acc + the u8 x s8 products, 4 a lane
 *   vnni_bits_0x10(m)           byte i = 0x10 where bit i of m is set
 *   vnni_gather_live(p, idx, n) the 32-bit words at p + idx[k] for k < n, 0 after
 *   vnni_load_live_epi32/_ps(p, n)  p[0..n), 0 after (nothing read past n)
 *   vnni_low16(v)               the low halves of v's 8 words
 *   vnni_add_live(acc, v, n)    acc + v in lanes k < n, acc in the others
 *
 * Same bits as the scalar twin (contract: quant.h): a block's integer dot is
 * exact in any order, so only how it is summed changes (vpdpbusd, 4 products
 * a step, two blocks a register: the activation codes come in the pair
 * layout prepared beside them, tnn_qact.qp), and the float work after it is
 * the AVX2 kernel's, op for op: per block p = (d_w * d_x) * sum (+ m_w *
 * s_x), into lane b mod 8, the lanes reduced by tnn__qreduce8. 256-bit
 * registers: a 512-bit form ran slower on an AVX-512 Xeon (two ports
 * instead of three). Several rows of x (the dotn entry points: short
 * prompts) share each pair of blocks' decoded codes; every row still gets
 * the one-row operations. One row of x whose rows end in 2, 4 or 6 blocks
 * after whole groups (576-, 896- and 960-wide models) takes the tails of 2
 * or 4 rows of W together (quant_x86.h: joint tails).
 */
#ifndef TNN_QUANT_VNNI_H
#define TNN_QUANT_VNNI_H

#include "quant_x86.h"

INL uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Where a block's 16 bytes of nibbles start. */
INL size_t nibble_at(int type) {
    switch (type) {
    case TNN_QT_Q4_0:
    case TNN_QT_IQ4_NL: return 2;
    case TNN_QT_Q4_1: return 4;
    case TNN_QT_Q5_0: return 6;
    default: return 8;
    }
}

INL int has_high(int type) { return type == TNN_QT_Q5_0 || type == TNN_QT_Q5_1; }

/* The codes of blocks b0 (lane 0) and b1 (lane 1), 0-15 in lo and 16-31 in
 * hi, decoded once for every row of x: u8 operands, and for the signed
 * types (Q8_0, IQ4_NL's table values) the signed codes too (x takes their
 * signs; |w| <= 128, so the composed vpdpbusd does not saturate either). A
 * NULL b1 stands for a block of zeros. */
typedef struct {
    __m256i lo, hi, slo, shi;
} pair_codes;

INL pair_codes decode_pair(int type, const uint8_t *b0, const uint8_t *b1) {
    pair_codes c;
    if (type == TNN_QT_Q8_0) {
        __m128i z = _mm_setzero_si128();
        c.slo = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 2))),
            b1 ? _mm_loadu_si128((const __m128i *)(b1 + 2)) : z, 1);
        c.shi = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + 18))),
            b1 ? _mm_loadu_si128((const __m128i *)(b1 + 18)) : z, 1);
        c.lo = _mm256_abs_epi8(c.slo);
        c.hi = _mm256_abs_epi8(c.shi);
        return c;
    }
    const size_t at = nibble_at(type);
    __m128i v1 = b1 ? _mm_loadu_si128((const __m128i *)(b1 + at)) : _mm_setzero_si128();
    __m256i v = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + at))), v1, 1);
    const __m256i m4 = _mm256_set1_epi8(15);
    c.lo = _mm256_and_si256(v, m4);
    c.hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (type == TNN_QT_IQ4_NL) {
        c.slo = _mm256_shuffle_epi8(iq4_table(), c.lo);
        c.shi = _mm256_shuffle_epi8(iq4_table(), c.hi);
        c.lo = _mm256_abs_epi8(c.slo);
        c.hi = _mm256_abs_epi8(c.shi);
        return c;
    }
    if (has_high(type)) {
        /* bit i of qh is element i's fifth bit */
        const size_t qh_at = type == TNN_QT_Q5_0 ? 2 : 4;
        uint32_t h0 = ld32(b0 + qh_at), h1 = b1 ? ld32(b1 + qh_at) : 0;
        c.lo = _mm256_or_si256(c.lo, vnni_bits_0x10((h0 & 0xffffu) | h1 << 16));
        c.hi = _mm256_or_si256(c.hi, vnni_bits_0x10(h0 >> 16 | (h1 & 0xffff0000u)));
    }
    c.slo = c.shi = _mm256_setzero_si256(); /* unused */
    return c;
}

/* The pair's integer dots, 4 partial sums a block, against xp, its 64
 * activation codes in the pair layout (quant.h: tnn_qact.qp). */
INL __m256i pair_dot(int type, const pair_codes *c, const int8_t *xp) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i xl = _mm256_loadu_si256((const __m256i *)xp);
    __m256i xh = _mm256_loadu_si256((const __m256i *)(xp + 32));
    if (type == TNN_QT_Q8_0 || type == TNN_QT_IQ4_NL) { /* |w| against x with w's sign */
        xl = _mm256_sign_epi8(xl, c->slo);
        xh = _mm256_sign_epi8(xh, c->shi);
    }
    return vnni_dpbusd(vnni_dpbusd(zero, c->lo, xl), c->hi, xh);
}

/* [sum of block 0, ..., sum of block 7] from four pair_dot results
 * (blocks 2k and 2k+1 in p[k]). */
INL __m256i block_sums8(__m256i p0, __m256i p1, __m256i p2, __m256i p3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
    /* lane 0: blocks 0, 2, 4, 6; lane 1: blocks 1, 3, 5, 7 */
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* Rows of x a pass: 4 (16 vector registers: the codes of 4 pairs, a row's
 * 4 pair sums, the loads), 8 where the including file says so (AVX-512's 32
 * registers: Q4_0 in cache 66 -> 73 G multiply-adds/s, Q8_0 57 -> 66). */
#ifndef ROWS_MAX
#define ROWS_MAX 4
#endif

/* Blocks b .. b + n - 1 (n <= 8, b even) of one row of W against R rows of
 * x (R <= ROWS_MAX, a constant after inlining), into each row's 8 lane
 * sums: the codes of the 4 pairs decoded once, then for each row of x the
 * one-row kernel's operations. */
INL void group(int type, int R, const tnn_qact *a, const uint8_t *blk, int64_t b, int n,
               __m256 *acc) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const int off = tnn__q32_offset(type);
    pair_codes c[4];
    for (int k = 0; k < 4; k++) {
        int left = n - 2 * k;
        if (n != 8 && left <= 0) {
            c[k] = (pair_codes){0}; /* unused */
            continue;
        }
        const uint8_t *b0 = blk + 2 * k * bsz;
        c[k] = decode_pair(type, b0, n == 8 || left >= 2 ? b0 + bsz : NULL);
    }
    /* each block's first 4 bytes: d (and m for the types with one) */
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32((int)bsz));
    __m256i dm = n == 8 ? _mm256_i32gather_epi32((const int *)blk, idx, 1)
                        : vnni_gather_live(blk, idx, n);
    __m256 dw = _mm256_cvtph_ps(vnni_low16(dm));
    __m256 mw = _mm256_cvtph_ps(vnni_low16(_mm256_srli_epi32(dm, 16)));
    for (int i = 0; i < R; i++) {
        __m256i p[4];
        for (int k = 0; k < 4; k++)
            p[k] = n != 8 && n - 2 * k <= 0 ? _mm256_setzero_si256()
                                            : pair_dot(type, &c[k], a[i].qp + 32 * b + 64 * k);
        __m256i s = block_sums8(p[0], p[1], p[2], p[3]);
        if (off) {
            __m256i qs = n == 8 ? _mm256_loadu_si256((const __m256i *)(a[i].qsum + b))
                                : vnni_load_live_epi32(a[i].qsum + b, n);
            s = _mm256_sub_epi32(s, _mm256_slli_epi32(qs, off == 8 ? 3 : 4));
        }
        __m256 dx = n == 8 ? _mm256_loadu_ps(a[i].d + b) : vnni_load_live_ps(a[i].d + b, n);
        __m256 pr = _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(s));
        if (tnn__q32_has_min(type)) {
            __m256 sx = n == 8 ? _mm256_loadu_ps(a[i].s + b) : vnni_load_live_ps(a[i].s + b, n);
            pr = _mm256_add_ps(pr, _mm256_mul_ps(mw, sx));
        }
        /* absent blocks leave their lanes as they are */
        acc[i] = n == 8 ? _mm256_add_ps(acc[i], pr) : vnni_add_live(acc[i], pr, n);
    }
}

/* One row of x: the 8 lane sums of blocks 0 .. full - 1 (full a multiple
 * of 8) of the row at wr. */
INL __m256 row_groups(int type, const tnn_qact *a, const uint8_t *wr, int64_t full) {
    const size_t bsz = tnn__q32_block_bytes(type);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < full; b += 8) {
        tnn__qprefetch(wr + b * bsz, 8 * bsz);
        group(type, 1, a, wr + b * bsz, b, 8, &acc);
    }
    return acc;
}

/* One row of x: group v's integer block sums of the joint tails
 * (quant_x86.h) of the run of rows at w, their last n blocks from block b:
 * a pair of blocks at a time. */
INL __m256i joint_sums(int type, const tnn_qact *a, const uint8_t *w, size_t rb, int64_t b, int n,
                       int v) {
    const size_t bsz = tnn__q32_block_bytes(type);
    __m256i p[4];
    for (int k = 0; k < 4; k++) { /* places 8 v + 2 k and the next: one row's pair */
        const int q = 8 * v + 2 * k, blk = q % n;
        const uint8_t *b0 = w + (size_t)(q / n) * rb + (size_t)(b + blk) * bsz;
        pair_codes c = decode_pair(type, b0, b0 + bsz);
        p[k] = pair_dot(type, &c, a->qp + 32 * (b + blk));
    }
    return block_sums8(p[0], p[1], p[2], p[3]);
}

#include "quant_joint.h"

/* y[i * ldy + r] for R rows of x and `rows` rows of W. */
INL void dot_rows(int type, int R, const tnn_qact *a, const void *w, size_t rb, int64_t rows,
                  float *y, int64_t ldy) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const int64_t nb = a->n / TNN_QK;
    if (R == 1) {
        int64_t done = dot_joint(type, a, w, rb, rows, y);
        w = (const uint8_t *)w + done * rb;
        y += done;
        rows -= done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        __m256 acc[ROWS_MAX];
        for (int i = 0; i < R; i++)
            acc[i] = _mm256_setzero_ps();
        int64_t b = 0;
        for (; b + 8 <= nb; b += 8) {
            tnn__qprefetch(wr + b * bsz, 8 * bsz);
            group(type, R, a, wr + b * bsz, b, 8, acc);
        }
        if (b < nb)
            group(type, R, a, wr + b * bsz, b, (int)(nb - b), acc);
        for (int i = 0; i < R; i++) {
            float lanes[8];
            _mm256_storeu_ps(lanes, acc[i]);
            y[i * ldy + r] = tnn__qreduce8(lanes);
        }
    }
}

INL void dot_q32(int type, const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    dot_rows(type, 1, a, w, rb, rows, y, 0);
}

/* nx rows of x, ROWS_MAX at a time: each row the bits of dot_q32. */
INL void dotn_q32(int type, const tnn_qact *a, int64_t nx, const void *w, size_t rb,
                  int64_t rows, float *y, int64_t ldy) {
    int64_t i = 0;
    for (; i + ROWS_MAX <= nx; i += ROWS_MAX)
        dot_rows(type, ROWS_MAX, a + i, w, rb, rows, y + i * ldy, ldy);
    switch (nx - i) {
#if ROWS_MAX > 4
    case 7: dot_rows(type, 7, a + i, w, rb, rows, y + i * ldy, ldy); break;
    case 6: dot_rows(type, 6, a + i, w, rb, rows, y + i * ldy, ldy); break;
    case 5: dot_rows(type, 5, a + i, w, rb, rows, y + i * ldy, ldy); break;
    case 4: dot_rows(type, 4, a + i, w, rb, rows, y + i * ldy, ldy); break;
#endif
    case 3: dot_rows(type, 3, a + i, w, rb, rows, y + i * ldy, ldy); break;
    case 2: dot_rows(type, 2, a + i, w, rb, rows, y + i * ldy, ldy); break;
    case 1: dot_rows(type, 1, a + i, w, rb, rows, y + i * ldy, ldy); break;
    default: break;
    }
}

#define DOTN(name, T)                                                                              \
    static void name(const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,       \
                     float *y, int64_t ldy) {                                                      \
        dotn_q32(T, a, nx, w, rb, rows, y, ldy);                                                   \
    }
DOTN(dotn_q8_0, TNN_QT_Q8_0)
DOTN(dotn_q4_0, TNN_QT_Q4_0)
DOTN(dotn_q4_1, TNN_QT_Q4_1)
DOTN(dotn_q5_0, TNN_QT_Q5_0)
DOTN(dotn_q5_1, TNN_QT_Q5_1)
DOTN(dotn_iq4_nl, TNN_QT_IQ4_NL)

TNN_Q32_DOTS(dot_q32)
TNN_Q32_DOT(dot_iq4_nl, TNN_QT_IQ4_NL, dot_q32)

/* The kernel set `var` named `name`: these types' one-row and several-row
 * dot products (and `more_`'s entries, or NULL). */
#define TNN_VNNI_KERNELS(var, name_, more_)                                                        \
    const tnn_qkernels var = {                                                                     \
        .name = name_,                                                                             \
        .more = more_,                                                                             \
        .dot = {[TNN_QT_Q8_0] = dot_q8_0, [TNN_QT_Q4_0] = dot_q4_0, [TNN_QT_Q4_1] = dot_q4_1,      \
                [TNN_QT_Q5_0] = dot_q5_0, [TNN_QT_Q5_1] = dot_q5_1,                                \
                [TNN_QT_IQ4_NL] = dot_iq4_nl},                                                     \
        .dotn = {[TNN_QT_Q8_0] = dotn_q8_0, [TNN_QT_Q4_0] = dotn_q4_0, [TNN_QT_Q4_1] = dotn_q4_1,  \
                 [TNN_QT_Q5_0] = dotn_q5_0, [TNN_QT_Q5_1] = dotn_q5_1,                             \
                 [TNN_QT_IQ4_NL] = dotn_iq4_nl},                                                   \
    };

#endif
