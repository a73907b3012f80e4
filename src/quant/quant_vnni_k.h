/* quant_vnni_k.h - the VNNI several-row dot products of the K-quants with
 * 32-element scale groups and 16-element ones (Q4_K, Q5_K, Q6_K): short
 * prompts, several rows of x against each row of W. Included by
 * quant_avx512.c and quant_avxvnni.c after they define vnni_dpbusd,
 * vnni_dpwssd (acc + the s16 x s16 products, 2 a lane) and quant_vnni.h's
 * masked operations; the one-row products stay the AVX2 kernels
 * (quant_avx2.c: decoding is memory-bound).
 *
 * Same bits as those one-row kernels (contract: quant.h): a block's
 * integer sums are exact in any order, and the float expression is theirs,
 * op for op, 8 blocks at a time in the lanes they use (block b in lane
 * b mod 8). The integer sums: vpdpbusd takes 4 code x activation products
 * a lane (one lane = 4 elements of one scale group), two such results are
 * packed to 16 bits (exact: |lane| <= 4 * 63 * 127 = 32004) and vpdpwssd
 * multiplies them by their groups' scales and adds. Per block and row of x
 * that is 8 vpdpbusd, 4 vpackssdw and 4 vpdpwssd for 256 elements, where
 * the AVX2 kernels take 8 vpmaddubsw, 8 vpmaddwd, 8 additions and two
 * horizontal sums; the block sums of 8 blocks are reduced together.
 */
#ifndef TNN_QUANT_VNNI_K_H
#define TNN_QUANT_VNNI_K_H

#ifndef KROWS
#define KROWS 8 /* rows of x a pass */
#endif

/* The scale word pattern of chunk c for vpdpwssd after vpackssdw(P0, P1):
 * in each 128-bit lane, words 0-3 come from P0 (group g0) and 4-7 from P1
 * (group g1). pick_words(w0, w1, w2, w3): lane 0 takes words w0 (x4), w1
 * (x4) of the source, lane 1 words w2, w3. */
INL __m256i pick_words(int w0, int w1, int w2, int w3) {
    const char a0 = (char)(2 * w0), b0 = (char)(2 * w1), a1 = (char)(2 * w2), b1 = (char)(2 * w3);
    return _mm256_setr_epi8(a0, a0 + 1, a0, a0 + 1, a0, a0 + 1, a0, a0 + 1, b0, b0 + 1, b0, b0 + 1,
                            b0, b0 + 1, b0, b0 + 1, a1, a1 + 1, a1, a1 + 1, a1, a1 + 1, a1, a1 + 1,
                            b1, b1 + 1, b1, b1 + 1, b1, b1 + 1, b1, b1 + 1);
}

/* acc + sc . [the integer dots of q0 against x0 and q1 against x1 by 4s] */
INL __m256i scaled_pair(__m256i acc, __m256i q0, const int8_t *x0, __m256i q1, const int8_t *x1,
                        __m256i sc) {
    const __m256i z = _mm256_setzero_si256();
    __m256i p0 = vnni_dpbusd(z, q0, _mm256_loadu_si256((const __m256i *)x0));
    __m256i p1 = vnni_dpbusd(z, q1, _mm256_loadu_si256((const __m256i *)x1));
    return vnni_dpwssd(acc, _mm256_packs_epi32(p0, p1), sc);
}

/* [sum v[0], ..., sum v[7]] (int32 lanes). */
INL __m256i sums8(const __m256i v[8]) {
    __m256i w0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i w1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(w0, w1, 0x20),
                            _mm256_permute2x128_si256(w0, w1, 0x31));
}

/* From v[k] = hadd(a_k, s_k) for 8 blocks: [sum a_0, ..., sum a_7] in *A
 * and the same of the s_k in *S. */
INL void sums8_pairs(const __m256i v[8], __m256i *A, __m256i *S) {
    __m256i t[2];
    for (int h = 0; h < 2; h++) {
        /* [a_k lo, s_k lo, a_k+1 lo, s_k+1 lo | the same of the hi lanes] */
        __m256i u0 = _mm256_hadd_epi32(v[4 * h], v[4 * h + 1]);
        __m256i u1 = _mm256_hadd_epi32(v[4 * h + 2], v[4 * h + 3]);
        /* [A, S of blocks 4h .. 4h + 3, interleaved] */
        t[h] = _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                                _mm256_permute2x128_si256(u0, u1, 0x31));
    }
    /* lanes [0, 1, 4, 5 | 2, 3, 6, 7] of the even (A) and odd (S) words,
     * then the 64-bit pairs in order */
    __m256 f0 = _mm256_castsi256_ps(t[0]), f1 = _mm256_castsi256_ps(t[1]);
    __m256i a = _mm256_castps_si256(_mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(2, 0, 2, 0)));
    __m256i s = _mm256_castps_si256(_mm256_shuffle_ps(f0, f1, _MM_SHUFFLE(3, 1, 3, 1)));
    *A = _mm256_permute4x64_epi64(a, _MM_SHUFFLE(3, 1, 2, 0));
    *S = _mm256_permute4x64_epi64(s, _MM_SHUFFLE(3, 1, 2, 0));
}

/* Blocks b .. b + n - 1 (n <= 8, b a multiple of 8) of one row of W (blk:
 * block b) against R rows of x, into each row's 8 float lanes. Q4_K/Q5_K:
 * per block (d * dx) * s1 - (dmin * dx) * s2, s1 the scaled code sums, s2
 * the mins times x's sums; Q6_K: (d * dx) * s, s = the scaled code sums -
 * 32 * the scales times x's sums (dot_qk45, dot_q6_K in quant_avx2.c). */
INL void kgroup(int type, int R, const tnn_qact *a, const uint8_t *blk, int64_t b, int n,
                __m256 *lanes) {
    const bool q6 = type == TNN_QT_Q6_K, five = type == TNN_QT_Q5_K;
    const size_t bsz = q6     ? sizeof(tnn_block_q6_K)
                       : five ? sizeof(tnn_block_q5_K)
                              : sizeof(tnn_block_q4_K);
    __m256i v[KROWS][8];
    for (int k = 0; k < 8; k++) {
        if (k >= n) {
            for (int i = 0; i < R; i++)
                v[i][k] = _mm256_setzero_si256();
            continue;
        }
        const uint8_t *B = blk + k * bsz;
        const int64_t e0 = 256 * (b + k);
        if (q6) {
            const tnn_block_q6_K *Q = (const tnn_block_q6_K *)B;
            __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)Q->scales));
            __m256i acc[KROWS];
            for (int i = 0; i < R; i++)
                acc[i] = _mm256_madd_epi16(
                    sc16, _mm256_loadu_si256((const __m256i *)(a[i].bsum + 16 * (b + k))));
            for (int i = 0; i < R; i++) /* - 32 * (the scales times x's sums) */
                acc[i] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(acc[i], 5));
            for (int h = 0; h < 2; h++) {
                __m256i q[4];
                q6k_half(Q, h, q);
                /* groups 8h + 2g (lanes 0-3) and 8h + 2g + 1 (lanes 4-7)
                 * of code vector g; pairs (0, 1) and (2, 3) */
                __m256i half = _mm256_permute2x128_si256(sc16, sc16, h ? 0x11 : 0x00);
                __m256i s01 = _mm256_shuffle_epi8(half, pick_words(0, 2, 1, 3));
                __m256i s23 = _mm256_shuffle_epi8(half, pick_words(4, 6, 5, 7));
                for (int i = 0; i < R; i++) {
                    const int8_t *x = a[i].q + e0 + 128 * h;
                    acc[i] = scaled_pair(acc[i], q[0], x, q[1], x + 32, s01);
                    acc[i] = scaled_pair(acc[i], q[2], x + 64, q[3], x + 96, s23);
                }
            }
            for (int i = 0; i < R; i++)
                v[i][k] = acc[i];
            continue;
        }
        const uint8_t *qs = five ? B + 48 : B + 16;
        __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(B + 16)) : _mm256_setzero_si256();
        __m128i sm = scales_k(B + 4);
        __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
        __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
        __m256i mnd = combine(_mm_unpacklo_epi16(mn16, mn16), _mm_unpackhi_epi16(mn16, mn16));
        __m256i acc[KROWS];
        for (int i = 0; i < R; i++)
            acc[i] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i q[2];
            qk45_codes(qs, c, five ? &qh : NULL, q);
            /* sub-blocks 2c (low nibbles) and 2c + 1 */
            __m256i sc = _mm256_shuffle_epi8(sc16, pick_words(2 * c, 2 * c + 1, 2 * c, 2 * c + 1));
            for (int i = 0; i < R; i++) {
                const int8_t *x = a[i].q + e0 + 64 * c;
                acc[i] = scaled_pair(acc[i], q[0], x, q[1], x + 32, sc);
            }
        }
        for (int i = 0; i < R; i++)
            v[i][k] = _mm256_hadd_epi32(
                acc[i], _mm256_madd_epi16(mnd, _mm256_loadu_si256(
                                                   (const __m256i *)(a[i].bsum + 16 * (b + k)))));
    }
    /* d (and dmin) of the 8 blocks: Q4_K/Q5_K's first 4 bytes, Q6_K's last 2
     * (read as the high half of the word 2 bytes before, inside the block) */
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32((int)bsz));
    const uint8_t *base = q6 ? blk + offsetof(tnn_block_q6_K, d) - 2 : blk;
    __m256i dm = n == 8 ? _mm256_i32gather_epi32((const int *)base, idx, 1)
                        : vnni_gather_live(base, idx, n);
    __m256 dw = _mm256_cvtph_ps(vnni_low16(q6 ? _mm256_srli_epi32(dm, 16) : dm));
    __m256 mw = _mm256_cvtph_ps(vnni_low16(_mm256_srli_epi32(dm, 16)));
    for (int i = 0; i < R; i++) {
        __m256 dx = vnni_load_live_ps(a[i].d + b, n), p;
        if (q6) {
            p = _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(sums8(v[i])));
        } else {
            __m256i s1, s2;
            sums8_pairs(v[i], &s1, &s2);
            p = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(s1)),
                              _mm256_mul_ps(_mm256_mul_ps(mw, dx), _mm256_cvtepi32_ps(s2)));
        }
        lanes[i] = n == 8 ? _mm256_add_ps(lanes[i], p) : vnni_add_live(lanes[i], p, n);
    }
}

/* y[i * ldy + r] for R rows of x and `rows` rows of W. */
INL void krows(int type, int R, const tnn_qact *a, const void *w, size_t rb, int64_t rows,
               float *y, int64_t ldy) {
    const size_t bsz = type == TNN_QT_Q6_K   ? sizeof(tnn_block_q6_K)
                       : type == TNN_QT_Q5_K ? sizeof(tnn_block_q5_K)
                                             : sizeof(tnn_block_q4_K);
    const int64_t nb = a->n / TNN_QK_K;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *wr = (const uint8_t *)w + r * rb;
        __m256 lanes[KROWS];
        for (int i = 0; i < R; i++)
            lanes[i] = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b += 8) {
            int n = nb - b < 8 ? (int)(nb - b) : 8;
            tnn__qprefetch(wr + b * bsz, (size_t)n * bsz);
            kgroup(type, R, a, wr + b * bsz, b, n, lanes);
        }
        for (int i = 0; i < R; i++) {
            float l[8];
            _mm256_storeu_ps(l, lanes[i]);
            y[i * ldy + r] = tnn__qreduce8(l);
        }
    }
}

/* nx rows of x, KROWS at a time. */
INL void dotn_k(int type, const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,
                float *y, int64_t ldy) {
    for (int64_t i = 0; i < nx; i += KROWS, a += KROWS, y += KROWS * ldy)
        switch (nx - i < KROWS ? nx - i : KROWS) {
        case 1: krows(type, 1, a, w, rb, rows, y, ldy); break;
        case 2: krows(type, 2, a, w, rb, rows, y, ldy); break;
        case 3: krows(type, 3, a, w, rb, rows, y, ldy); break;
        case 4: krows(type, 4, a, w, rb, rows, y, ldy); break;
        case 5: krows(type, 5, a, w, rb, rows, y, ldy); break;
        case 6: krows(type, 6, a, w, rb, rows, y, ldy); break;
        case 7: krows(type, 7, a, w, rb, rows, y, ldy); break;
        default: krows(type, KROWS, a, w, rb, rows, y, ldy); break;
        }
}

static void dotn_k_q4_K(const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,
                        float *y, int64_t ldy) {
    dotn_k(TNN_QT_Q4_K, a, nx, w, rb, rows, y, ldy);
}
static void dotn_k_q5_K(const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,
                        float *y, int64_t ldy) {
    dotn_k(TNN_QT_Q5_K, a, nx, w, rb, rows, y, ldy);
}
static void dotn_k_q6_K(const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,
                        float *y, int64_t ldy) {
    dotn_k(TNN_QT_Q6_K, a, nx, w, rb, rows, y, ldy);
}

/* The kernel set part `var`: these several-row products, then `more_`. */
#define TNN_VNNI_K_KERNELS(var, name_, more_)                                                      \
    static const tnn_qkernels var = {                                                              \
        .name = name_,                                                                             \
        .more = more_,                                                                             \
        .dotn = {[TNN_QT_Q4_K] = dotn_k_q4_K, [TNN_QT_Q5_K] = dotn_k_q5_K,                         \
                 [TNN_QT_Q6_K] = dotn_k_q6_K},                                                     \
    };

#endif
