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

#include "quant_vnni_avx2.h"
#include "quant_vnni.h"

/* Everything not listed in it runs the AVX2 kernel set (quant.c). */
TNN_VNNI_KERNELS(tnn__qk_avxvnni, "avxvnni", NULL)

#endif /* TNN_QUANT_X86 */
