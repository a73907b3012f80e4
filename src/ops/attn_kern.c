/* attn_kern.c - the portable scalar twin of the KV-cache attention chunk
 * kernel (the contract is in attn_kern.h) and the run-time choice. */
#include "attn_kern.h"

#include "../quant/quant.h"
#include "vmath.h"

#include <math.h>

static inline float elem(const void *base, bool f16, int64_t i) {
    return f16 ? tnn__f16_to_f32(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

void tnn__attn_chunk_scalar(const float *q, const void *k, const void *v, bool f16,
                            int64_t stride, int64_t n, int64_t hd, float scale, float *m, float *l,
                            float *o) {
    float s[TNN_ATTN_CHUNK];
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        float a[8] = {0};
        for (int64_t d = 0; d < hd; d++)
            a[d % 8] = fmaf(q[d], elem(k, f16, j * stride + d), a[d % 8]);
        s[j] = tnn__attn_tree8(a) * scale;
        mx = s[j] > mx ? s[j] : mx;
    }
    float b[8] = {0};
    for (int64_t j = 0; j < n; j++) {
        s[j] = tnn_vexp_le0(s[j] - mx);
        b[j % 8] += s[j];
    }
    for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
    for (int64_t j = 0; j < n; j++)
        for (int64_t d = 0; d < hd; d++) o[d] = fmaf(s[j], elem(v, f16, j * stride + d), o[d]);
    *m = mx;
    *l = tnn__attn_tree8(b);
}

tnn_attn_chunk_fn tnn__attn_chunk_kernel(void) {
#if defined(TNN_ATTN_X86)
    if (tnn__quant_get_kernel() >= TNN_QK_AVX2) return tnn__attn_chunk_avx2;
#endif
    return tnn__attn_chunk_scalar;
}
