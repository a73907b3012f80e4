/* attn_kern_avx2.c - the KV-cache attention chunk kernel with AVX2, FMA and
 * F16C (only this file is compiled with them; attn_kern.c calls it when the
 * CPU has them). Same bits as the scalar twin (contract: attn_kern.h). Head
 * sizes that are not a multiple of 8 go to the twin.
 *
 * Scores take 8 keys at a time: 8 lane accumulators (one per key) over the
 * head, then one horizontal-add tree turns them into 8 scores. The value sum
 * keeps up to 64 output columns in 8 registers while the keys stream by.
 */
#include "attn_kern.h"

#if defined(TNN_ATTN_X86)

#include "vmath.h"

#include <immintrin.h>
#include <math.h>

#define INL static inline __attribute__((always_inline))

INL const void *at(const void *base, bool f16, int64_t i) {
    if (f16) return (const uint16_t *)base + i;
    return (const float *)base + i;
}

INL __m256 load8(const void *base, bool f16, int64_t i) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + i)));
    return _mm256_loadu_ps((const float *)base + i);
}

/* Lane sums of 8 vectors by the contract's tree, as one vector (x0..x7). */
INL __m256 tree8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6,
                   __m256 a7) {
    __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
    __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    /* u0 = [((a0) low tree) .. (a3) | (a0) high tree .. (a3)], u1 likewise */
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                         _mm256_permute2f128_ps(u0, u1, 0x31));
}

INL float tree1(__m256 a) {
    __m256 t = _mm256_hadd_ps(a, a);
    t = _mm256_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* s[0..8) for 8 keys at k, stride apart. */
INL __m256 scores8(const float *q, const void *k, bool f16, int64_t stride, int64_t hd) {
    __m256 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8) {
        __m256 qv = _mm256_loadu_ps(q + d);
        for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(qv, load8(k, f16, r * stride + d), a[r]);
    }
    return tree8x8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

INL float score1(const float *q, const void *k, bool f16, int64_t hd) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t d = 0; d < hd; d += 8)
        a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), load8(k, f16, d), a);
    return tree1(a);
}

/* o[0 .. 8w) = sum_j p[j] v_j[0 .. 8w) for w <= 8 vectors of columns. */
INL void wsum(const float *p, const void *v, bool f16, int64_t stride, int64_t n, int w,
              float *o) {
    __m256 acc[8];
    for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
    if (w == 8) {
        for (int64_t j = 0; j < n; j++) {
            __m256 pj = _mm256_broadcast_ss(p + j);
            for (int i = 0; i < 8; i++)
                acc[i] = _mm256_fmadd_ps(pj, load8(v, f16, j * stride + 8 * i), acc[i]);
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            __m256 pj = _mm256_broadcast_ss(p + j);
            for (int i = 0; i < w; i++)
                acc[i] = _mm256_fmadd_ps(pj, load8(v, f16, j * stride + 8 * i), acc[i]);
        }
    }
    for (int i = 0; i < w; i++) _mm256_storeu_ps(o + 8 * i, acc[i]);
}

static void chunk(const float *q, const void *k, const void *v, bool f16, int64_t stride,
                  int64_t n, int64_t hd, float scale, float *m, float *l, float *o) {
    float s[TNN_ATTN_CHUNK] __attribute__((aligned(32)));
    const __m256 sc = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_store_ps(s + j,
                        _mm256_mul_ps(scores8(q, at(k, f16, j * stride), f16, stride, hd), sc));
    for (; j < n; j++) s[j] = score1(q, at(k, f16, j * stride), f16, hd) * scale;
    /* the largest score: exact in any order */
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) m8 = _mm256_max_ps(m8, _mm256_load_ps(s + i));
    float mv[8] __attribute__((aligned(32)));
    _mm256_store_ps(mv, m8);
    float mx = -INFINITY;
    for (int r = 0; r < 8; r++) mx = mv[r] > mx ? mv[r] : mx;
    for (; i < n; i++) mx = s[i] > mx ? s[i] : mx;
    for (i = 0; i < n; i++) s[i] = tnn_vexp_le0(s[i] - mx); /* vectorized by the compiler */
    /* lane sums: lane r takes p_j for j % 8 == r, in ascending j */
    __m256 b8 = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) b8 = _mm256_add_ps(b8, _mm256_load_ps(s + i));
    float b[8] __attribute__((aligned(32)));
    _mm256_store_ps(b, b8);
    for (; i < n; i++) b[i % 8] += s[i];
    for (int64_t d = 0; d < hd; d += 64) {
        int w = (int)((hd - d) / 8 < 8 ? (hd - d) / 8 : 8);
        wsum(s, at(v, f16, d), f16, stride, n, w, o + d);
    }
    *m = mx;
    *l = tnn__attn_tree8(b);
}

void tnn__attn_chunk_avx2(const float *q, const void *k, const void *v, bool f16, int64_t stride,
                          int64_t n, int64_t hd, float scale, float *m, float *l, float *o) {
    if (hd % 8) {
        tnn__attn_chunk_scalar(q, k, v, f16, stride, n, hd, scale, m, l, o);
        return;
    }
    chunk(q, k, v, f16, stride, n, hd, scale, m, l, o);
}

#endif /* TNN_ATTN_X86 */
