/* quant_vnni_avx2.h - quant_vnni.h's operations with AVX2 vector masks
 * (no AVX-512): shared by quant_avxvnni.c (vpdpbusd from AVX-VNNI) and
 * quant_avx2_q32.c (vpdpbusd composed of vpmaddubsw + vpmaddwd). Define
 * INL and include <immintrin.h> first.
 */
#ifndef TNN_QUANT_VNNI_AVX2_H
#define TNN_QUANT_VNNI_AVX2_H

/* byte i = 0x10 where bit i of m is set: each byte gets the byte of m that
 * holds its bit, then that bit tested */
INL __m256i vnni_bits_0x10(uint32_t m) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

/* all ones in lanes k < n */
INL __m256i live_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
INL __m256i vnni_gather_live(const uint8_t *p, __m256i idx, int n) {
    return _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)p, idx, live_lanes(n),
                                       1);
}
INL __m256i vnni_load_live_epi32(const int32_t *p, int n) {
    return _mm256_maskload_epi32((const int *)p, live_lanes(n));
}
INL __m256 vnni_load_live_ps(const float *p, int n) { return _mm256_maskload_ps(p, live_lanes(n)); }
/* the low 16 bits of each word, packed (unsigned saturation of values
 * below 2^16 keeps them) */
INL __m128i vnni_low16(__m256i v) {
    v = _mm256_and_si256(v, _mm256_set1_epi32(0xffff));
    return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}
INL __m256 vnni_add_live(__m256 acc, __m256 v, int n) {
    return _mm256_blendv_ps(acc, _mm256_add_ps(acc, v), _mm256_castsi256_ps(live_lanes(n)));
}

#endif
