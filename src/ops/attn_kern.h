/* attn_kern.h - the inner kernel of attention over a KV cache: one query row
 * against one chunk of consecutive keys of one kv head, in f32 or f16 cache
 * rows, with a portable scalar twin (attn_kern.c) and an AVX2 + FMA + F16C
 * path (attn_kern_avx2.c) picked at run time with the quantized kernels'
 * choice (TNN_KERNEL=scalar|avx2).
 *
 * Rounding contract (every kernel gives the same bits):
 *   key and value elements are widened exactly to f32 (f16 caches);
 *   score s_j: lanes a_l (l = 0..7) start at +0 and, for d = l, l+8, ... in
 *     ascending order, a_l = fmaf(q[d], k_j[d], a_l); then
 *     s_j = (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) * scale;
 *   m = the largest s_j;  p_j = tnn_vexp_le0(s_j - m) (tnn_vexp's bits);
 *   l: lanes b_l start at +0, b_(j % 8) += p_j in ascending j, then the same
 *     tree as the score;
 *   o[d] starts at +0 and o[d] = fmaf(p_j, v_j[d], o[d]) in ascending j.
 * The chunks of a row are then merged in ascending order by
 * tnn__attn_merge (attention.c), so the result does not depend on which
 * thread computed which chunk.
 */
#ifndef TNN_OPS_ATTN_KERN_H
#define TNN_OPS_ATTN_KERN_H

#include <stdbool.h>
#include <stdint.h>

/* Keys per chunk: the unit of work and of the merge. */
#define TNN_ATTN_CHUNK 64

/* Partial attention of q (hd floats) against keys j = 0 .. n-1 (1 <= n <=
 * TNN_ATTN_CHUNK), key j at k + j*stride and value j at v + j*stride
 * elements (f32, or f16 bits when f16). Writes *m, *l and o[0..hd). */
typedef void (*tnn_attn_chunk_fn)(const float *q, const void *k, const void *v, bool f16,
                                  int64_t stride, int64_t n, int64_t hd, float scale, float *m,
                                  float *l, float *o);

void tnn__attn_chunk_scalar(const float *q, const void *k, const void *v, bool f16,
                            int64_t stride, int64_t n, int64_t hd, float scale, float *m, float *l,
                            float *o);
#if defined(__x86_64__) || defined(__i386__)
#define TNN_ATTN_X86 1
void tnn__attn_chunk_avx2(const float *q, const void *k, const void *v, bool f16, int64_t stride,
                          int64_t n, int64_t hd, float scale, float *m, float *l, float *o);
#endif

/* The kernel of the current choice (see tnn__quant_get_kernel). */
tnn_attn_chunk_fn tnn__attn_chunk_kernel(void);

/* The tree every kernel reduces 8 lanes with. */
static inline float tnn__attn_tree8(const float a[8]) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#endif
