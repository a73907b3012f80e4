/* quant.h - the GGUF tensor types that model weights come in (F32, F16, BF16,
 * Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
 * IQ4_XS): their block layouts, f16 and
 * bf16 conversion, dequantization, quantization from f32, and the
 * matrix-vector kernels of LLM decoding, each with a portable scalar twin
 * (quant.c) and an AVX2 path (quant_avx2.c) chosen at run time.
 *
 * ------------------------------------------------------------------------
 * Block layouts (as the GGUF format defines them; little-endian; `f16` is an
 * IEEE half, `d` a scale, `m`/`dmin` a minimum; q are the integer codes)
 *
 *   F32   1 element,   4 bytes : f32
 *   F16   1 element,   2 bytes : f16
 *   BF16  1 element,   2 bytes : the high half of an f32
 *   Q8_0  32 elements, 34 bytes: f16 d; i8 qs[32]
 *         x[i] = d * qs[i]
 *   Q4_0  32 elements, 18 bytes: f16 d; u8 qs[16]
 *         x[i] = d * ((qs[i] & 15) - 8), x[i+16] = d * ((qs[i] >> 4) - 8), i < 16
 *   Q4_1  32 elements, 20 bytes: f16 d; f16 m; u8 qs[16]
 *         x[i] = d * (qs[i] & 15) + m, x[i+16] = d * (qs[i] >> 4) + m
 *   Q5_0  32 elements, 22 bytes: f16 d; u8 qh[4]; u8 qs[16]
 *         q[i] = (qs[i] & 15) | bit i of qh << 4, q[i+16] = (qs[i] >> 4) |
 *         bit i+16 of qh << 4 (qh read as a little-endian u32); x = d * (q - 16)
 *   Q5_1  32 elements, 24 bytes: f16 d; f16 m; u8 qh[4]; u8 qs[16]
 *         q as Q5_0; x = d * q + m
 *   IQ4_NL 32 elements, 18 bytes: f16 d; u8 qs[16]; nibbles as Q4_0 (low
 *         nibbles are elements 0-15, high 16-31), each an index into the
 *         fixed table kv = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13,
 *         25, 38, 53, 69, 89, 113}: x[i] = d * kv[q[i]]
 *   Q2_K  256 elements, 84 bytes: u8 scales[16]; u8 qs[64]; f16 d; f16 dmin
 *         16 groups g of 16: sc = scales[g] & 15, mn = scales[g] >> 4.
 *         Element e (0..255), h = e / 128, s = (e % 128) / 32, l = e % 32:
 *         q = (qs[32h + l] >> 2s) & 3;  x = (d * sc) * q - (dmin * mn)
 *   Q3_K  256 elements, 110 bytes: u8 hmask[32]; u8 qs[64]; u8 scales[12];
 *         f16 d. 16 groups g of 16 with a 6-bit scale, low 4 bits from
 *         scales[g % 8] (low nibble for g < 8, else high), high 2 bits
 *         (scales[8 + g % 4] >> 2 * (g / 4)) & 3; sc = that - 32.
 *         Element e: low 2 bits as Q2_K's q, and q = that - 4 unless bit
 *         e / 32 of hmask[e % 32] is set (q in -4..3);  x = (d * sc) * q
 *   Q4_K  256 elements, 144 bytes: f16 d; f16 dmin; u8 scales[12]; u8 qs[128]
 *         8 sub-blocks j of 32 with 6-bit scale sc[j] and min mn[j] packed in
 *         scales: j < 4: sc = scales[j] & 63, mn = scales[j+4] & 63;
 *         j >= 4: sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4,
 *                 mn = (scales[j+4] >> 4) | (scales[j] >> 6) << 4.
 *         qs in 4 chunks of 32 bytes: chunk c holds sub-block 2c in the low
 *         nibbles and 2c+1 in the high nibbles (element l of a sub-block in
 *         byte l of the chunk). x = (d * sc) * q - (dmin * mn)
 *   Q5_K  256 elements, 176 bytes: f16 d; f16 dmin; u8 scales[12]; u8 qh[32];
 *         u8 qs[128]. As Q4_K, and q gets bit j of qh[l] as its bit 4 (sub-block
 *         j, element l). x = (d * sc) * q - (dmin * mn), q in 0..31
 *   Q6_K  256 elements, 210 bytes: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d
 *         two halves h of 128; element e (0..127) of half h:
 *         low 4 bits: ql[64h + e % 64], low nibble if e < 64 else high nibble;
 *         high 2 bits: (qh[32h + e % 32] >> 2 * (e / 32)) & 3;
 *         x = (d * scales[(128h + e) / 16]) * (q - 32)
 *   IQ4_XS 256 elements, 136 bytes: f16 d; u16 scales_h; u8 scales_l[4];
 *         u8 qs[128]. 8 sub-blocks j of 32: ls = ((scales_l[j / 2] >> 4(j % 2))
 *         & 15) | ((scales_h >> 2j) & 3) << 4; sub-block j's codes are the
 *         nibbles of qs[16j .. 16j + 16) as in IQ4_NL;
 *         x = (d * (ls - 32)) * kv[q]
 *
 * Every block's f16 fields are 2-byte aligned when the row is; rows passed
 * here must be 2-byte aligned (GGUF aligns tensor data to 32).
 *
 * ------------------------------------------------------------------------
 * Matrix-vector (y[r] = dot(W row r, x)), strategy and rounding contract
 *
 * F32, F16, BF16: f32 fused multiply-add (no activation quantization).
 *   Weights are widened exactly to f32; 32 accumulators acc[0..31] start at
 *   +0 and element i does acc[i % 32] = fmaf(w[i], x[i], acc[i % 32]) in
 *   ascending i; then v[l] = (acc[l] + acc[l+8]) + (acc[l+16] + acc[l+24])
 *   for l < 8 and y = ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)).
 * All block types: integer dot products. x is quantized once per call to
 *   8-bit codes with one f32 scale per block of B values (B = 32 for Q8_0,
 *   Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; B = 256, "Q8_K", for Q2_K, Q3_K, Q4_K,
 *   Q5_K, Q6_K, IQ4_XS):
 *   dx = amax / 127, qx = clamp(x * (1 / dx), -127, 127) rounded half away
 *   from zero (NaN -> -127; dx = 0 gives codes 0), plus sums of codes
 *   (per block of 32: sx = dx * (float)sum(qx); per 16 for the K types).
 *   Per weight block b, exact integer sums, then one float expression:
 *   Q8_0, Q4_0, Q5_0: S = sum((q - off) * qx), off = 0 / 8 / 16
 *                     p_b = (dw * dx) * (float)S
 *   IQ4_NL:           S = sum(kv[q] * qx);  p_b = (dw * dx) * (float)S
 *   Q4_1, Q5_1:       S = sum(q * qx);  p_b = (dw * dx) * (float)S + mw * sx
 *   Q2_K:             S1 = sum_g sc_g * sum(q * qx over group g of 16),
 *                     S2 = sum_g mn_g * sum(qx over group g),
 *                     p_b = (d * dx) * (float)S1 - (dmin * dx) * (float)S2
 *   Q3_K:             S = sum_g sc_g * sum(q * qx over group g of 16)
 *                     p_b = (d * dx) * (float)S
 *   Q4_K, Q5_K:       S1 = sum_j sc_j * sum(q * qx over sub-block j),
 *                     S2 = sum_j mn_j * sum(qx over sub-block j),
 *                     p_b = (d * dx) * (float)S1 - (dmin * dx) * (float)S2
 *   Q6_K:             S = sum_g sc_g * sum((q - 32) * qx over group g of 16)
 *                     p_b = (d * dx) * (float)S
 *   IQ4_XS:           S = sum_j (ls_j - 32) * sum(kv[q] * qx over sub-block j)
 *                     p_b = (d * dx) * (float)S
 *   then acc[b % 8] += p_b in ascending b from +0, reduced as v above.
 * Every product and sum above is a separate rounding (no contraction). The
 * integer sums are exact in any order and the activation codes are the
 * same in every kernel, so the AVX2 kernels give the SAME BITS as the
 * scalar twin for every type (the tests check it); each y[r] is computed by
 * one thread, so any thread count gives the same bits too. Dequantization
 * is bit-identical across kernels and to the gguf package.
 * Accuracy: against the exact dot of the dequantized row with x, the block
 * types err by at most sum over blocks of amax(x in block) / 254 * sum|w|
 * (the rounding of x's codes) plus f32 rounding; tests/test_quant.c checks
 * this bound against the gguf package's dequantized rows.
 */
#ifndef TNN_QUANT_H
#define TNN_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* GGUF type ids (values fixed by the format; the ones tinynn computes with). */
enum tnn_qtype {
    TNN_QT_F32 = 0,
    TNN_QT_F16 = 1,
    TNN_QT_Q4_0 = 2,
    TNN_QT_Q4_1 = 3,
    TNN_QT_Q5_0 = 6,
    TNN_QT_Q5_1 = 7,
    TNN_QT_Q8_0 = 8,
    TNN_QT_Q2_K = 10,
    TNN_QT_Q3_K = 11,
    TNN_QT_Q4_K = 12,
    TNN_QT_Q5_K = 13,
    TNN_QT_Q6_K = 14,
    TNN_QT_IQ4_NL = 20,
    TNN_QT_IQ4_XS = 23,
    TNN_QT_BF16 = 30,
    TNN_QT_COUNT = 31 /* one past the largest id; not every id below is a type */
};

#define TNN_QK 32    /* elements of a Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / IQ4_NL block */
#define TNN_QK_K 256 /* elements of a K-quant super-block */

/* Block structs (sizes checked by static asserts in quant.c). */
typedef struct {
    uint16_t d;
    int8_t qs[32];
} tnn_block_q8_0;
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} tnn_block_q4_0;
typedef struct {
    uint16_t d, m;
    uint8_t qs[16];
} tnn_block_q4_1;
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
} tnn_block_q5_0;
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
} tnn_block_q5_1;
typedef struct {
    uint16_t d;
    uint8_t qs[16];
} tnn_block_iq4_nl;
typedef struct {
    uint8_t scales[16];
    uint8_t qs[64];
    uint16_t d, dmin;
} tnn_block_q2_K;
typedef struct {
    uint8_t hmask[32];
    uint8_t qs[64];
    uint8_t scales[12];
    uint16_t d;
} tnn_block_q3_K;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
} tnn_block_q4_K;
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
} tnn_block_q5_K;
typedef struct {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
} tnn_block_q6_K;
typedef struct {
    uint16_t d, scales_h;
    uint8_t scales_l[4];
    uint8_t qs[128];
} tnn_block_iq4_xs;

/* ------------------------------------------------------------------------ */
/* Type table                                                               */
/* ------------------------------------------------------------------------ */

typedef struct tnn_qtype_info {
    const char *name;    /* "Q4_0" */
    int32_t block;       /* elements per block */
    int32_t block_bytes; /* bytes per block */
    bool can_quantize;   /* tnn__quantize_row supports it */
} tnn_qtype_info;

/* The entry of a supported type id, or NULL. */
const tnn_qtype_info *tnn__qtype(int type);
/* Bytes of a row of n elements, or -1 (error set) when the type is not
 * supported or n is negative or not a multiple of the block. */
int64_t tnn__qtype_row_bytes(int type, int64_t n);

/* ------------------------------------------------------------------------ */
/* Conversions (exact widening; narrowing rounds to nearest even; NaN stays  */
/* NaN: quiet, sign kept, payload truncated)                                */
/* ------------------------------------------------------------------------ */

float tnn__f16_to_f32(uint16_t h);
uint16_t tnn__f32_to_f16(float f); /* overflow -> inf; subnormals rounded */
float tnn__bf16_to_f32(uint16_t h);
uint16_t tnn__f32_to_bf16(float f);

/* ------------------------------------------------------------------------ */
/* Rows                                                                     */
/* ------------------------------------------------------------------------ */

/* dst[0..n) = the values of the n elements at src (n a multiple of the
 * block). Returns TNN_OK or TNN_ERR_ARG. Same bits from every kernel and
 * the same bits as the gguf package's dequantize. */
int tnn__dequantize_row(int type, const void *src, float *dst, int64_t n);
/* The same values rounded to bf16 (nearest even; NaN stays a quiet NaN). */
int tnn__dequantize_row_bf16(int type, const void *src, uint16_t *dst, int64_t n);
/* Elements k0 .. k0+n of `rows` rows (row_bytes apart from src; any k0 and
 * n >= 0: the blocks around them are decoded) as tnn__dequantize_row_bf16
 * gives them, into dst (rows x n). Returns TNN_OK or TNN_ERR_ARG (bad type,
 * negative k0, n or rows). The prompt GEMM's panels. */
int tnn__dequantize_rows_bf16(int type, const void *src, size_t row_bytes, int64_t rows,
                              int64_t k0, int64_t n, uint16_t *dst);

/* dst = src quantized to `type` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1), byte-identical to the gguf package's quantize. Returns TNN_OK, or
 * TNN_ERR_ARG (type without quantization, bad n). */
int tnn__quantize_row(int type, const float *src, void *dst, int64_t n);

/* ------------------------------------------------------------------------ */
/* Matrix-vector                                                            */
/* ------------------------------------------------------------------------ */

/* x prepared for one weight type: for F32/F16/BF16 x itself; otherwise x
 * quantized to 8 bits (codes q[n], f32 scale d per block of 32 or 256, and the
 * sums the kernels need). Points into caller-owned workspace. */
typedef struct tnn_qact {
    int32_t wtype;
    int64_t n;
    const float *x; /* F32/F16/BF16 */
    int8_t *q;      /* n codes */
    float *d;       /* per block: scale */
    float *s;       /* per 32-block: d * (float)sum(q) */
    int32_t *qsum;  /* per 32-block: sum(q) */
    int8_t *qp;     /* 32-element types: q by pairs of blocks, 64 bytes a pair:
                       block 2i's codes 0-15, 2i+1's 0-15, 2i's 16-31, 2i+1's
                       16-31 (zeros for the block after an odd count) */
    int16_t *bsum;  /* per 16 elements (K types): sum(q) */
} tnn_qact;

/* Workspace bytes tnn__qact_prepare needs for weights of `wtype`, n long
 * (0 for F32/F16/BF16); -1 (error set) when the type or n is bad. */
int64_t tnn__qact_bytes(int wtype, int64_t n);
/* Quantizes x for `wtype` into `work` (tnn__qact_bytes bytes, 64-byte aligned
 * preferred) with the selected kernel (every kernel writes the same bytes).
 * Returns TNN_OK or TNN_ERR_ARG. */
int tnn__qact_prepare(tnn_qact *a, int wtype, const float *x, int64_t n, void *work);

/* y[r] = dot(row r of w, x) for r < rows, rows `row_bytes` apart, on the
 * calling thread with the selected kernel. */
void tnn__qdot_rows(const tnn_qact *a, const void *w, size_t row_bytes, int64_t rows, float *y);

/* y[0..rows) = W x for W (rows x n) of `wtype`, rows contiguous, split
 * across the thread pool by rows. `work` is tnn__qact_bytes(wtype, n) bytes
 * of scratch, or NULL to allocate it for the call. Bit-identical for any
 * thread count. Returns TNN_OK, TNN_ERR_ARG or TNN_ERR_NOMEM. */
int tnn__quant_matvec(int wtype, const void *w, int64_t rows, int64_t n, const float *x, float *y,
                      void *work);
/* The same for nx rows of x (nx x n, contiguous) into y (nx x rows): each
 * row of y has the bits tnn__quant_matvec gives it, and W is read from
 * memory once (tiles of its rows against every row of x). `work` is nx *
 * tnn__qact_bytes(wtype, n) bytes, or NULL. TNN_ERR_RANGE when that size
 * overflows. */
int tnn__quant_matmul(int wtype, const void *w, int64_t rows, int64_t n, const float *x,
                      int64_t nx, float *y, void *work);
/* One product of a set: W (rows x n, rows contiguous) and its y (nx x rows). */
typedef struct {
    const void *w;
    int64_t rows;
    float *y;
} tnn_qmm_part;
/* tnn__quant_matmul for several W of the same type and width against the
 * same x: x is quantized once and the products' rows, one after the other,
 * are split across the pool as one range (one hand-off instead of one a
 * product). Each y has the bits tnn__quant_matmul gives it. */
int tnn__quant_matmul_set(int wtype, int64_t n, const float *x, int64_t nx,
                          const tnn_qmm_part *parts, int n_parts, void *work);
/* Whether the selected kernels decode W once for several rows of x for this
 * type (so that more rows pay off through tnn__quant_matmul). */
bool tnn__quant_rows_shared(int wtype);

/* ------------------------------------------------------------------------ */
/* Kernel choice                                                            */
/* ------------------------------------------------------------------------ */

/* Each id runs its own kernels where it has them and the lower id's for the
 * rest: TNN_QK_AVXVNNI (AVX2 + AVX-VNNI) and TNN_QK_AVX512 (AVX-512
 * F/BW/VL/VNNI) have the 32-element types' dot products (one row of x and
 * several) and the K-quants' and IQ4_XS's for several rows, and take the
 * AVX2 kernels otherwise; TNN_QK_AVX512 also
 * dequantizes to bf16 in one pass where CPUID reports AVX512_BF16. Every
 * kernel gives the scalar twin's bits. */
enum {
    TNN_QK_AUTO = -1,
    TNN_QK_SCALAR = 0,
    TNN_QK_AVX2 = 1,
    TNN_QK_AVXVNNI = 2,
    TNN_QK_AVX512 = 3,
    TNN_QK_COUNT = 4
};

/* Default: env TNN_KERNEL=scalar|avx2|avxvnni|avx512 (read once; avx512bf16
 * and amx, the GEMM's names, mean avx512 here), else the best the CPU runs. */
bool tnn__quant_kernel_supported(int id);
const char *tnn__quant_kernel_name(int id); /* "scalar", "avx2", "avxvnni", "avx512", "?" */
/* For tests and benchmarks: select a kernel for later calls (TNN_QK_AUTO:
 * back to the default). TNN_ERR_ARG when unknown or unsupported here. */
int tnn__quant_set_kernel(int id);
int tnn__quant_get_kernel(void);

#endif /* TNN_QUANT_H */
