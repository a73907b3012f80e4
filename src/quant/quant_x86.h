/* quant_x86.h - the AVX2 block decoders the x86 quant files share
 * (quant_avx2.c, quant_avx512.c and the VNNI headers): f16 fields, eight
 * horizontal sums at once, the joint tails of short rows, nibbles, the IQ4
 * table, the K-quants' scales and Q6_K's codes. Define INL and include
 * quant_impl.h, <immintrin.h> and <string.h> first; the including file is
 * compiled with AVX2 + F16C at least.
 */
#ifndef TNN_QUANT_X86_H
#define TNN_QUANT_X86_H

INL uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

INL float f16(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

INL __m256i combine(__m128i lo, __m128i hi) {
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* [sum(v0), ..., sum(v7)]: eight sums (of blocks) in one vector. */
INL __m256i hsum8x8(const __m256i v[8]) {
    __m256i u0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i u1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                            _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* Joint tails: the last n blocks (n = 2, 4 or 6) of tail_rows(n) rows of
 * W (4, 2, 4) taken as tail_groups(n) groups of 8 lanes (1, 1, 3): the run's
 * tail blocks in order, lane l of group v at place q = 8 v + l, row q / n's
 * block b + q % n (a row's short tail alone cost as much as a full group).
 * Every lane's product is the one-row kernel's, op for op, and lands in the
 * same lane of its row's sums, once, so the bits do not change. n is a
 * constant where these are inlined. */
INL int tail_rows(int n) { return n == 4 ? 2 : 4; }
INL int tail_groups(int n) { return tail_rows(n) * n / 8; }

/* The row (q / n) and block (q % n) of each lane of group v. */
INL __m256i tail_row(int n, int v) {
    const int q = 8 * v;
    return _mm256_setr_epi32(q / n, (q + 1) / n, (q + 2) / n, (q + 3) / n, (q + 4) / n,
                             (q + 5) / n, (q + 6) / n, (q + 7) / n);
}
INL __m256i tail_blk(int n, int v) {
    const int q = 8 * v;
    return _mm256_setr_epi32(q % n, (q + 1) % n, (q + 2) % n, (q + 3) % n, (q + 4) % n,
                             (q + 5) % n, (q + 6) % n, (q + 7) % n);
}

/* Each lane's block's d and m (the two f16 fields a block starts with; m
 * means nothing for the types without one): rows rb bytes apart (rb <=
 * INT32_MAX / 8), blocks bsz bytes, p at row 0's first tail block. */
INL void tail_dm(const uint8_t *p, size_t rb, size_t bsz, int n, int v, __m256 *dw, __m256 *mw) {
    const __m256i idx =
        _mm256_add_epi32(_mm256_mullo_epi32(tail_row(n, v), _mm256_set1_epi32((int)rb)),
                         _mm256_mullo_epi32(tail_blk(n, v), _mm256_set1_epi32((int)bsz)));
    __m256i dm = _mm256_i32gather_epi32((const int *)p, idx, 1);
    /* the low and high halves of each word, packed to 8 halves (below
     * 2^16, so the unsigned saturation keeps them) */
    __m256i d = _mm256_and_si256(dm, _mm256_set1_epi32(0xffff)), m = _mm256_srli_epi32(dm, 16);
    *dw = _mm256_cvtph_ps(
        _mm_packus_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1)));
    *mw = _mm256_cvtph_ps(
        _mm_packus_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1)));
}

/* all ones in lanes k < n */
INL __m256i tail_live(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* x's per-block values p[0 .. n) (of blocks b .. b + n - 1) in group v's lanes. */
INL __m256 tail_x_ps(const float *p, int n, int v) {
    return _mm256_permutevar8x32_ps(_mm256_maskload_ps(p, tail_live(n)), tail_blk(n, v));
}
INL __m256i tail_x_epi32(const int32_t *p, int n, int v) {
    return _mm256_permutevar8x32_epi32(_mm256_maskload_epi32((const int *)p, tail_live(n)),
                                       tail_blk(n, v));
}

/* acc + row g's products in group v (pr) in the lanes of their blocks; the
 * other lanes stay as they are. */
INL __m256 tail_add(__m256 acc, __m256 pr, int n, int v, int g) {
    const int from = g * n - 8 * v; /* lane of the row's block 0 in pr */
    if (from >= 8 || from + n <= 0)
        return acc; /* none of the row's blocks is in this group */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i src = _mm256_add_epi32(lane, _mm256_set1_epi32(from));
    __m256i live = _mm256_and_si256(
        tail_live(n), _mm256_and_si256(_mm256_cmpgt_epi32(src, _mm256_set1_epi32(-1)),
                                       _mm256_cmpgt_epi32(_mm256_set1_epi32(8), src)));
    __m256 x = _mm256_permutevar8x32_ps(pr, src);
    return _mm256_blendv_ps(acc, _mm256_add_ps(acc, x), _mm256_castsi256_ps(live));
}

/* Group v's products from its 8 integer block sums s (before Q4_0's and
 * Q5_0's offset), each row's added to its sums acc[row]: the one-row
 * kernels' float work, op for op. The including file has quant_impl.h. */
INL void tail_finish(int type, const tnn_qact *a, const uint8_t *w, size_t rb, int64_t b, int n,
                     int v, __m256i s, __m256 *acc) {
    const size_t bsz = tnn__q32_block_bytes(type);
    const int off = tnn__q32_offset(type);
    if (off) {
        __m256i qs = tail_x_epi32(a->qsum + b, n, v);
        s = _mm256_sub_epi32(s, _mm256_slli_epi32(qs, off == 8 ? 3 : 4));
    }
    __m256 dw, mw;
    tail_dm(w + (size_t)b * bsz, rb, bsz, n, v, &dw, &mw);
    __m256 p = _mm256_mul_ps(_mm256_mul_ps(dw, tail_x_ps(a->d + b, n, v)), _mm256_cvtepi32_ps(s));
    if (tnn__q32_has_min(type))
        p = _mm256_add_ps(p, _mm256_mul_ps(mw, tail_x_ps(a->s + b, n, v)));
    _Pragma("GCC unroll 4") for (int g = 0; g < tail_rows(n); g++)
        acc[g] = tail_add(acc[g], p, n, v, g);
}

/* The 32 four-bit codes of 16 bytes, in element order (low nibbles first). */
INL __m256i nibbles32(const uint8_t *qs) {
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(15);
    return combine(_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m));
}

/* The IQ4_NL / IQ4_XS table (quant.h) in both lanes, for vpshufb. */
INL __m256i iq4_table(void) {
    return _mm256_setr_epi64x((long long)0xf6eaddcfbfad9881ull, 0x7159453526190d01ll,
                              (long long)0xf6eaddcfbfad9881ull, 0x7159453526190d01ll);
}

/* The 8 six-bit scales (bytes 0-7) and mins (bytes 8-15) of a Q4_K / Q5_K
 * block (layout in quant.h), built in registers (a store and a wider
 * reload stalled on store forwarding). */
INL __m128i scales_k(const uint8_t *s) {
    uint32_t a0, a1, a2;
    memcpy(&a0, s, 4);
    memcpy(&a1, s + 4, 4);
    memcpy(&a2, s + 8, 4);
    return _mm_setr_epi32((int)(a0 & 0x3f3f3f3fu),
                          (int)((a2 & 0x0f0f0f0fu) | ((a0 >> 2) & 0x30303030u)),
                          (int)(a1 & 0x3f3f3f3fu),
                          (int)(((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 2) & 0x30303030u)));
}

/* The four 32-code groups of half h of a Q6_K block (codes 0..63). */
INL void q6k_half(const tnn_block_q6_K *B, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    __m256i l0 = _mm256_loadu_si256((const __m256i *)(B->ql + 64 * h));
    __m256i l1 = _mm256_loadu_si256((const __m256i *)(B->ql + 64 * h + 32));
    __m256i hb = _mm256_loadu_si256((const __m256i *)(B->qh + 32 * h));
    q[0] =
        _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                           _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                           _mm256_and_si256(hb, _mm256_set1_epi8(0x30)));
    q[3] =
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                        _mm256_srli_epi16(_mm256_and_si256(hb, _mm256_set1_epi8((char)0xc0)), 2));
}

/* The 16 signed scales of a Q3_K block (layout in quant.h) as int8. */
INL __m128i scales_q3k(const uint8_t *s) {
    uint32_t a0, a1, a2;
    memcpy(&a0, s, 4);
    memcpy(&a1, s + 4, 4);
    memcpy(&a2, s + 8, 4);
    /* low nibbles a0, a1, high nibbles a0, a1; a2's bit pairs on top (no
     * store and reload: that stalled the loop on store forwarding) */
    __m128i lo = _mm_setr_epi32((int)a0, (int)a1, (int)(a0 >> 4), (int)(a1 >> 4));
    __m128i hi = _mm_setr_epi32((int)a2, (int)(a2 >> 2), (int)(a2 >> 4), (int)(a2 >> 6));
    __m128i v = _mm_or_si128(_mm_and_si128(lo, _mm_set1_epi8(15)),
                             _mm_slli_epi16(_mm_and_si128(hi, _mm_set1_epi8(3)), 4));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* Q4_K / Q5_K: the 32 codes of sub-blocks 2c (q[0]) and 2c + 1 (q[1]) from
 * chunk c of qs; for Q5_K (qh not NULL: its 32 bytes, shifted along as the
 * sub-blocks use their bits) with the fifth bits. */
INL void qk45_codes(const uint8_t *qs, int c, __m256i *qh, __m256i q[2]) {
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
    q[0] = _mm256_and_si256(v, m4);
    q[1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (qh)
        for (int t = 0; t < 2; t++) {
            q[t] = _mm256_or_si256(q[t], _mm256_slli_epi16(_mm256_and_si256(*qh, one), 4));
            *qh = _mm256_srli_epi16(*qh, 1);
        }
}

/* Q3_K: the next 32 codes (-4..3) in element order from v (a 32-byte load
 * of qs, shifted 2 bits a step) and hm (the hmask, shifted 1 bit a step). */
INL __m256i q3k_step(__m256i *v, __m256i *hm) {
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256i c = _mm256_sub_epi8(
        _mm256_or_si256(_mm256_and_si256(*v, m2), _mm256_slli_epi16(_mm256_and_si256(*hm, one), 2)),
        _mm256_set1_epi8(4));
    *v = _mm256_srli_epi16(*v, 2);
    *hm = _mm256_srli_epi16(*hm, 1);
    return c;
}

#endif
