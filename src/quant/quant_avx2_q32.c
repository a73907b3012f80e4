/* quant_avx2_q32.c - the AVX2 kernel set's dot products of the 32-element
 * types: quant_vnni.h's kernels (pair layout, several rows of x) with
 * vpdpbusd composed of vpmaddubsw and vpmaddwd; and the several-row
 * products of the K-quants and IQ4_XS (quant_vnni_k.h in its KQ_RUNS form,
 * vpdpwssd composed of vpmaddwd and an addition). Exact as vpdpbusd: a
 * pair of u8 x s8 products is at most 2 * 128 * 127 = 32512 in magnitude
 * (Q8_0's |w| <= 128, IQ4_NL's <= 127, the other types' codes <= 31,
 * |x| <= 127), so vpmaddubsw never saturates. Compiled with the AVX2
 * file's flags; the rest of the AVX2 set (activation, one-row K-quant
 * products, floats, dequantization) is quant_avx2.c.
 */
#include "quant_impl.h"

#if defined(TNN_QUANT_X86)

#include <immintrin.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))

INL __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

#include "quant_vnni_avx2.h"

#include "quant_vnni.h"

INL __m256i vnni_dpwssd(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
}
#define KQ_RUNS 1
#include "quant_vnni_k.h"

TNN_VNNI_K_KERNELS(avx2_k, "avx2-k", NULL)

/* Merged into the AVX2 set by quant_avx2.c (tnn__qk_avx2). */
TNN_VNNI_KERNELS(tnn__qk_avx2_q32, "avx2-q32", &avx2_k)

#endif /* TNN_QUANT_X86 */
