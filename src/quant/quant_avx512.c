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

INL __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
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

#include "quant_vnni.h"

/* Everything not listed in it runs the next kernel set down (quant.c). */
TNN_VNNI_KERNELS(tnn__qk_avx512, "avx512")

#endif /* TNN_QUANT_X86 */
