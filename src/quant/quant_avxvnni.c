/* quant_avxvnni.c - the VNNI dot products (quant_vnni.h) with AVX2 and
 * AVX-VNNI (the VEX-encoded vpdpbusd of Intel's client cores, which lack
 * AVX-512): vector masks for the tails and the fifth bits. Only this file is
 * compiled with those flags; quant.c runs it when the CPU has them (and has
 * no AVX-512 VNNI, whose set comes first) and falls back to the AVX2
 * kernels for everything else. The same bits as the AVX-512 set.
 */
#include "quant_impl.h"

#if defined(TNN_QUANT_X86)

#include <immintrin.h>
#include <string.h>

#define INL static inline __attribute__((always_inline))

INL __m256i vnni_dpbusd(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_avx_epi32(acc, u, s);
}
INL __m256i vnni_dpwssd(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpwssd_avx_epi32(acc, a, b);
}

#include "quant_vnni_avx2.h"
#include "quant_vnni.h"
#include "quant_vnni_k.h"

TNN_VNNI_K_KERNELS(avxvnni_k, "avxvnni-k", NULL)

/* Everything not listed in these runs the AVX2 kernel set (quant.c). */
TNN_VNNI_KERNELS(tnn__qk_avxvnni, "avxvnni", &avxvnni_k)

#endif /* TNN_QUANT_X86 */
