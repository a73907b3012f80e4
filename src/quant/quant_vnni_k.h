/* quant_vnni_k.h - the several-row dot products of the K-quants and
 * IQ4_XS (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS): short prompts, up to
 * KROWS rows of x against each row of W, each block decoded once for all
 * of them. Included by quant_avx512.c and quant_avxvnni.c after they
 * define vnni_dpbusd, vnni_dpwssd (acc + the s16 x s16 products, 2 a lane)
 * and quant_vnni.h's masked operations, and by quant_avx2_q32.c in the
 * KQ_RUNS form (no vpdpbusd); the one-row products stay the AVX2 kernels
 * of quant_avx2.c (decoding is memory-bound).
 *
 * Same bits as those one-row kernels (contract: quant.h): a block's
 * integer sums are exact in any order, and the float expression is theirs,
 * op for op, 8 blocks at a time in the lanes they use (block b in lane
 * b mod 8). The integer sums: vpdpbusd takes 4 code x activation products
 * a lane (one lane = 4 elements of one scale group; codes unsigned, an
 * offset taken out through x's sums of 16 as the AVX2 kernels do), two
 * such results are packed to 16 bits (exact: |lane| <= 4 * 63 * 127 =
 * 32004) and vpdpwssd multiplies them by their groups' scales and adds:
 * per block and row of x, 8 vpdpbusd, 4 vpackssdw and 4 vpdpwssd for 256
 * elements (KQ_RUNS: 8 vpmaddubsw by pairs, 8 vpmaddwd with the scales, 8
 * additions). The sums of 8 blocks are reduced together, where the one-row
 * kernels take two horizontal sums a block. IQ4_XS's table values reach
 * 127 in magnitude, so 4 products would not fit 16 bits: vpmaddubsw by
 * pairs, then vpdpwssd, in both forms.
 */
#ifndef TNN_QUANT_VNNI_K_H
#define TNN_QUANT_VNNI_K_H

/* rows of x a pass: 4 ran Q4_K at 56 G multiply-adds/s, 8 at 69 (AVX-512
 * set); 8 also in the AVX2 form, 16 registers or not (4: 42, 8: 48) */
#define KROWS 8

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

/* One block of W decoded for every row of x: its 8 runs of 32 codes in
 * element order (run t: elements 32t .. 32t + 31), the scale words for the
 * vpdpwssd of runs 2p and 2p + 1 (sc[p]; IQ4_XS: of run t, sc[t]), the
 * words that multiply x's sums of 16 (mn) and, for IQ4_XS, the signed
 * table values (sq) whose magnitudes are q. */
typedef struct {
    __m256i q[8], sc[8], mn, sq[8];
} kblock;

/* KQ_RUNS (the AVX2 form, no vpdpbusd): each run's codes times x by pairs
 * with vpmaddubsw (at most 2 * 63 * 127 in magnitude), then its scale
 * words, one per 128-bit lane (sc[t]: run t's group in each lane), by
 * vpdpwssd as the including file composes it. */
#ifndef KQ_RUNS
#define KQ_RUNS 0
#endif

/* The types' shapes: scale groups of 16 (Q2_K, Q3_K, Q6_K) or 32; a second
 * sum with its own float factor dmin (Q2_K, Q4_K, Q5_K: the mins times x's
 * sums); codes stored with an offset 2^kshift taken out as 2^kshift times
 * the scales times x's sums (Q3_K: 4, Q6_K: 32). */
INL bool kgroups16(int type) {
    return type == TNN_QT_Q2_K || type == TNN_QT_Q3_K || type == TNN_QT_Q6_K;
}
INL bool kmins(int type) {
    return type == TNN_QT_Q2_K || type == TNN_QT_Q4_K || type == TNN_QT_Q5_K;
}
INL int kshift(int type) { return type == TNN_QT_Q6_K ? 5 : type == TNN_QT_Q3_K ? 2 : 0; }

INL size_t kbytes(int type) {
    switch (type) {
    case TNN_QT_Q2_K: return sizeof(tnn_block_q2_K);
    case TNN_QT_Q3_K: return sizeof(tnn_block_q3_K);
    case TNN_QT_Q4_K: return sizeof(tnn_block_q4_K);
    case TNN_QT_Q5_K: return sizeof(tnn_block_q5_K);
    case TNN_QT_Q6_K: return sizeof(tnn_block_q6_K);
    default: return sizeof(tnn_block_iq4_xs);
    }
}

/* Where a 32-bit load holding d (the low half, dmin the high one; or d the
 * high half where kd_high) sits in a block, inside the block. */
INL size_t kd_at(int type) {
    switch (type) {
    case TNN_QT_Q2_K: return offsetof(tnn_block_q2_K, d);
    case TNN_QT_Q3_K: return offsetof(tnn_block_q3_K, d) - 2;
    case TNN_QT_Q6_K: return offsetof(tnn_block_q6_K, d) - 2;
    default: return 0; /* Q4_K, Q5_K: d, dmin; IQ4_XS: d, scales_h */
    }
}
INL bool kd_high(int type) { return type == TNN_QT_Q3_K || type == TNN_QT_Q6_K; }

INL void kdecode(int type, const uint8_t *B, kblock *k) {
    if (kgroups16(type)) {
        __m256i sc16;
        if (type == TNN_QT_Q6_K) {
            const tnn_block_q6_K *Q = (const tnn_block_q6_K *)B;
            sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)Q->scales));
            q6k_half(Q, 0, k->q);
            q6k_half(Q, 1, k->q + 4);
            k->mn = sc16;
        } else if (type == TNN_QT_Q3_K) {
            const tnn_block_q3_K *Q = (const tnn_block_q3_K *)B;
            sc16 = _mm256_cvtepi8_epi16(scales_q3k(Q->scales));
            __m256i hm = _mm256_loadu_si256((const __m256i *)Q->hmask);
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(Q->qs + 32 * h));
                for (int s = 0; s < 4; s++) /* q3k_step's codes + 4 */
                    k->q[4 * h + s] = _mm256_add_epi8(q3k_step(&v, &hm), _mm256_set1_epi8(4));
            }
            k->mn = sc16;
        } else { /* Q2_K */
            const tnn_block_q2_K *Q = (const tnn_block_q2_K *)B;
            const __m128i m4 = _mm_set1_epi8(15);
            __m128i s8 = _mm_loadu_si128((const __m128i *)Q->scales);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
            k->mn = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)(Q->qs + 32 * h));
                for (int s = 0; s < 4; s++, v = _mm256_srli_epi16(v, 2))
                    k->q[4 * h + s] = _mm256_and_si256(v, _mm256_set1_epi8(3));
            }
        }
        for (int h = 0; h < 2; h++) {
            /* (the immediate spelled out: clang wants a constant, not h ? : ) */
            __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                             : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            if (KQ_RUNS) /* run 4h + u: group 8h + 2u (low lane), 8h + 2u + 1 */
                for (int u = 0; u < 4; u++)
                    k->sc[4 * h + u] =
                        _mm256_shuffle_epi8(half, pick_words(2 * u, 2 * u, 2 * u + 1, 2 * u + 1));
            else { /* runs 2p, 2p + 1: groups 4p, 4p + 2 (low lanes), 4p + 1, 4p + 3 */
                k->sc[2 * h] = _mm256_shuffle_epi8(half, pick_words(0, 2, 1, 3));
                k->sc[2 * h + 1] = _mm256_shuffle_epi8(half, pick_words(4, 6, 5, 7));
            }
        }
        return;
    }
    if (type == TNN_QT_IQ4_XS) {
        const tnn_block_iq4_xs *Q = (const tnn_block_iq4_xs *)B;
        for (int t = 0; t < 8; t++) {
            k->sq[t] = _mm256_shuffle_epi8(iq4_table(), nibbles32(Q->qs + 16 * t));
            k->q[t] = _mm256_sign_epi8(k->sq[t], k->sq[t]);
            k->sc[t] = _mm256_set1_epi16((short)tnn__iq4xs_scale(Q, t));
        }
        return;
    }
    /* Q4_K, Q5_K: sub-blocks 2c (low nibbles of chunk c) and 2c + 1 */
    const bool five = type == TNN_QT_Q5_K;
    const uint8_t *qs = five ? B + 48 : B + 16;
    __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(B + 16)) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++)
        qk45_codes(qs, c, five ? &qh : NULL, k->q + 2 * c);
    __m128i sm = scales_k(B + 4);
    __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(sm));
    for (int c = 0; c < (KQ_RUNS ? 8 : 4); c++) /* KQ_RUNS: run c is sub-block c */
        k->sc[c] = KQ_RUNS ? _mm256_shuffle_epi8(sc16, pick_words(c, c, c, c))
                           : _mm256_shuffle_epi8(
                                 sc16, pick_words(2 * c, 2 * c + 1, 2 * c, 2 * c + 1));
    /* the mins, each twice (its sub-block's two sums of 16) */
    __m128i mn16 = _mm_cvtepu8_epi16(_mm_srli_si128(sm, 8));
    k->mn = combine(_mm_unpacklo_epi16(mn16, mn16), _mm_unpackhi_epi16(mn16, mn16));
}

/* The block's integer sums against one row of x (x: its 256 codes, bs: its
 * 16 sums): int32 lanes summing to s (the types without mins), or
 * hadd(lanes of s1, lanes of s2). */
INL __m256i kdot(int type, const kblock *k, const int8_t *x, const int16_t *bs) {
    __m256i acc = _mm256_setzero_si256();
    if (type == TNN_QT_IQ4_XS) {
        /* a pair of table values times x is at most 2 * 127 * 127 in
         * magnitude: vpmaddubsw does not saturate, 4 would not fit 16 bits */
        for (int t = 0; t < 8; t++) {
            __m256i xt = _mm256_loadu_si256((const __m256i *)(x + 32 * t));
            acc = vnni_dpwssd(acc, _mm256_maddubs_epi16(k->q[t], _mm256_sign_epi8(xt, k->sq[t])),
                              k->sc[t]);
        }
        return acc;
    }
    if (kshift(type)) { /* - 2^kshift * (the scales times x's sums) */
        __m256i s = _mm256_madd_epi16(k->mn, _mm256_loadu_si256((const __m256i *)bs));
        acc = _mm256_sub_epi32(acc, _mm256_slli_epi32(s, kshift(type)));
    }
    if (KQ_RUNS)
        for (int t = 0; t < 8; t++) {
            __m256i xt = _mm256_loadu_si256((const __m256i *)(x + 32 * t));
            acc = vnni_dpwssd(acc, _mm256_maddubs_epi16(k->q[t], xt), k->sc[t]);
        }
    else
        for (int p = 0; p < 4; p++)
            acc = scaled_pair(acc, k->q[2 * p], x + 64 * p, k->q[2 * p + 1], x + 64 * p + 32,
                              k->sc[p]);
    if (kmins(type))
        acc = _mm256_hadd_epi32(
            acc, _mm256_madd_epi16(k->mn, _mm256_loadu_si256((const __m256i *)bs)));
    return acc;
}

/* Blocks b .. b + n - 1 (n <= 8, b a multiple of 8) of one row of W (blk:
 * block b) against R rows of x, into each row's 8 float lanes: per block
 * (d * dx) * s1 - (dmin * dx) * s2 (the types with mins) or (d * dx) * s,
 * as the one-row kernels form them (quant_avx2.c). */
INL void kgroup(int type, int R, const tnn_qact *a, const uint8_t *blk, int64_t b, int n,
                __m256 *lanes) {
    const size_t bsz = kbytes(type);
    __m256i v[KROWS][8];
    for (int j = 0; j < 8; j++) {
        if (j >= n) {
            for (int i = 0; i < R; i++)
                v[i][j] = _mm256_setzero_si256();
            continue;
        }
        kblock k;
        kdecode(type, blk + j * bsz, &k);
        for (int i = 0; i < R; i++)
            v[i][j] = kdot(type, &k, a[i].q + 256 * (b + j), a[i].bsum + 16 * (b + j));
    }
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32((int)bsz));
    const uint8_t *base = blk + kd_at(type);
    __m256i dm = n == 8 ? _mm256_i32gather_epi32((const int *)base, idx, 1)
                        : vnni_gather_live(base, idx, n);
    __m256 dw = _mm256_cvtph_ps(vnni_low16(kd_high(type) ? _mm256_srli_epi32(dm, 16) : dm));
    __m256 mw = _mm256_cvtph_ps(vnni_low16(_mm256_srli_epi32(dm, 16)));
    for (int i = 0; i < R; i++) {
        __m256 dx = vnni_load_live_ps(a[i].d + b, n), p;
        if (kmins(type)) {
            __m256i s1, s2;
            sums8_pairs(v[i], &s1, &s2);
            p = _mm256_sub_ps(_mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(s1)),
                              _mm256_mul_ps(_mm256_mul_ps(mw, dx), _mm256_cvtepi32_ps(s2)));
        } else {
            p = _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(hsum8x8(v[i])));
        }
        lanes[i] = n == 8 ? _mm256_add_ps(lanes[i], p) : vnni_add_live(lanes[i], p, n);
    }
}

/* y[i * ldy + r] for R rows of x and `rows` rows of W. */
INL void krows(int type, int R, const tnn_qact *a, const void *w, size_t rb, int64_t rows,
               float *y, int64_t ldy) {
    const size_t bsz = kbytes(type);
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

#define KDOTN(name, T)                                                                             \
    static void name(const tnn_qact *a, int64_t nx, const void *w, size_t rb, int64_t rows,       \
                     float *y, int64_t ldy) {                                                      \
        dotn_k(T, a, nx, w, rb, rows, y, ldy);                                                     \
    }
KDOTN(dotn_k_q2_K, TNN_QT_Q2_K)
KDOTN(dotn_k_q3_K, TNN_QT_Q3_K)
KDOTN(dotn_k_q4_K, TNN_QT_Q4_K)
KDOTN(dotn_k_q5_K, TNN_QT_Q5_K)
KDOTN(dotn_k_q6_K, TNN_QT_Q6_K)
KDOTN(dotn_k_iq4_xs, TNN_QT_IQ4_XS)

/* The kernel set part `var`: these several-row products, then `more_`. */
#define TNN_VNNI_K_KERNELS(var, name_, more_)                                                      \
    static const tnn_qkernels var = {                                                              \
        .name = name_,                                                                             \
        .more = more_,                                                                             \
        .dotn = {[TNN_QT_Q2_K] = dotn_k_q2_K, [TNN_QT_Q3_K] = dotn_k_q3_K,                         \
                 [TNN_QT_Q4_K] = dotn_k_q4_K, [TNN_QT_Q5_K] = dotn_k_q5_K,                         \
                 [TNN_QT_Q6_K] = dotn_k_q6_K, [TNN_QT_IQ4_XS] = dotn_k_iq4_xs},                    \
    };

#endif
