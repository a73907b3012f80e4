/* quant_impl.h - what quant.c (scalar twin, dispatch) and the x86 files share:
 * the kernel table each instruction-set file fills, and the few small
 * helpers that fix the rounding contract described in quant.h.
 */
#ifndef TNN_QUANT_IMPL_H
#define TNN_QUANT_IMPL_H

#include "qdecode.h"

/* y[r] for r < rows: the dot of row r (rows row_bytes apart) with a. */
typedef void (*tnn_qdot_fn)(const tnn_qact *a, const void *w, size_t row_bytes, int64_t rows,
                            float *y);
/* y[i * ldy + r] for rows of x i < nx (a[i]) and r < rows: each the bits
 * of the one-row dot, the weights' codes decoded once for several rows. */
typedef void (*tnn_qdotn_fn)(const tnn_qact *a, int64_t nx, const void *w, size_t row_bytes,
                             int64_t rows, float *y, int64_t ldy);
/* dst[0..n) from n elements (n a multiple of the block, checked by caller). */
typedef void (*tnn_qdeq_fn)(const void *src, float *dst, int64_t n);
/* The same values rounded to bf16 as tnn__f32_to_bf16 rounds them. */
typedef void (*tnn_qdeq16_fn)(const void *src, uint16_t *dst, int64_t n);

/* Activation quantization: for each of nb blocks of bs (32 or 256) values
 * of x, d[b] = amax / 127 and q = act_code(x * (1 / d[b])), where act_code
 * clamps to [-127, 127] (NaN -> -127) and rounds half away from zero. */
typedef void (*tnn_qact_fn)(const float *x, int64_t nb, int bs, int8_t *q, float *d);

typedef struct tnn_qkernels {
    const char *name;
    const struct tnn_qkernels *more; /* entries missing here, before the next id down */
    tnn_qact_fn act;               /* NULL: the scalar twin runs */
    tnn_qdot_fn dot[TNN_QT_COUNT]; /* NULL: the scalar twin runs */
    tnn_qdotn_fn dotn[TNN_QT_COUNT]; /* NULL: dot a row of x at a time */
    tnn_qdeq_fn deq[TNN_QT_COUNT]; /* NULL: the scalar twin runs */
    tnn_qdeq16_fn deq16[TNN_QT_COUNT]; /* NULL: deq, then the values rounded */
} tnn_qkernels;

extern const tnn_qkernels tnn__qk_scalar;
#if defined(__x86_64__) || defined(__i386__)
#define TNN_QUANT_X86 1
extern const tnn_qkernels tnn__qk_avx2;
extern const tnn_qkernels tnn__qk_avx2_q32; /* tnn__qk_avx2.more */
extern const tnn_qkernels tnn__qk_avxvnni;
extern const tnn_qkernels tnn__qk_avx512;
#endif

/* The 32-element types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) as the x86
 * kernels see them: bytes a block, the offset taken off every code (Q4_0 8,
 * Q5_0 16, else 0), and whether a block has a minimum (m) after its scale. */
static inline size_t tnn__q32_block_bytes(int type) {
    switch (type) {
    case TNN_QT_Q8_0: return sizeof(tnn_block_q8_0);
    case TNN_QT_Q4_0: return sizeof(tnn_block_q4_0);
    case TNN_QT_IQ4_NL: return sizeof(tnn_block_iq4_nl);
    case TNN_QT_Q4_1: return sizeof(tnn_block_q4_1);
    case TNN_QT_Q5_0: return sizeof(tnn_block_q5_0);
    default: return sizeof(tnn_block_q5_1);
    }
}
static inline int tnn__q32_offset(int type) {
    return type == TNN_QT_Q4_0 ? 8 : type == TNN_QT_Q5_0 ? 16 : 0;
}
static inline int tnn__q32_has_min(int type) {
    return type == TNN_QT_Q4_1 || type == TNN_QT_Q5_1;
}

/* An ISA file's five 32-element dot entry points (dot_q8_0 ... dot_q5_1)
 * over its template tmpl(type, a, w, row_bytes, rows, y). */
#define TNN_Q32_DOT(name, T, tmpl)                                                                \
    static void name(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {        \
        tmpl(T, a, w, rb, rows, y);                                                                \
    }
#define TNN_Q32_DOTS(tmpl)                                                                         \
    TNN_Q32_DOT(dot_q8_0, TNN_QT_Q8_0, tmpl)                                                       \
    TNN_Q32_DOT(dot_q4_0, TNN_QT_Q4_0, tmpl)                                                       \
    TNN_Q32_DOT(dot_q4_1, TNN_QT_Q4_1, tmpl)                                                       \
    TNN_Q32_DOT(dot_q5_0, TNN_QT_Q5_0, tmpl)                                                       \
    TNN_Q32_DOT(dot_q5_1, TNN_QT_Q5_1, tmpl)

/* The dot kernels stream their weights once, from memory; the hardware
 * prefetcher alone left the loads waiting (Q4_1 on 1 thread at a third of
 * the triad), so each kernel asks for the bytes this far ahead of those it
 * works on, one request a cache line. Harmless past the end (a prefetch
 * never faults) and when the weights are in cache. */
#define TNN_QPREFETCH_BYTES 2048
static inline void tnn__qprefetch(const void *p, size_t bytes) {
    const char *c = (const char *)p + TNN_QPREFETCH_BYTES;
    for (size_t o = 0; o < bytes; o += 64)
        __builtin_prefetch(c + o, 0, 3);
}

/* The fixed final reduction of 8 partial sums (quant.h contract). */
static inline float tnn__qreduce8(const float v[8]) {
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

#endif
