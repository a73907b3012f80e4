/* gemm_dot_pack.h - the pair packs of the dot path (see tnn__gemm_dot_pack_a
 * and tnn__gemm_dot_pack_b in gemm.h), as static inline functions that
 * gemm_bf16.c compiles for every CPU and gemm_avx512bf16.c compiles again
 * with AVX-512 enabled. They are integer-only (the rounding works on the
 * f32 bits), so every compilation gives the same bytes; the loops are
 * branch-free and contiguous on at least one side so that the compiler
 * vectorizes them. A pack must cost little beside the dot kernel: every
 * activation is rounded once per column panel, every weight pair moved
 * once per row block.
 */
#ifndef TNN_GEMM_DOT_PACK_H
#define TNN_GEMM_DOT_PACK_H

#include "gemm.h"

#include <string.h>

/* tnn__gemm_bf16_round on the bits of an f32, without branches: NaN -> the
 * upper half with the quiet bit set; zero or subnormal -> a zero of its
 * sign; otherwise nearest even (an overflow becomes the infinity). */
static inline uint32_t dot_round_bits(uint32_t u) {
    uint32_t nearest = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t zero = (u >> 16) & 0x8000u, qnan = (u >> 16) | 0x40u;
    uint32_t r = (u & 0x7f800000u) == 0 ? zero : nearest;
    return (u & 0x7fffffffu) > 0x7f800000u ? qnan : r;
}

static inline uint32_t dot_round_f32(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return dot_round_bits(u);
}

static inline uint32_t dot_load_pair(const uint16_t *s) {
    uint16_t lo, hi;
    memcpy(&lo, s, sizeof lo);
    memcpy(&hi, s + 1, sizeof hi);
    return (uint32_t)lo | (uint32_t)hi << 16;
}

/* Pairs moved per pass of the two-pass packs (a row's run is rounded into
 * a small buffer, then the buffer is transposed into the panel). */
#define DOT_PACK_CHUNK 64

static inline void dot_pack_a_impl(uint32_t *restrict dst, bool ta, const float *restrict A,
                                   int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
                                   int mr) {
    const int64_t kp = (kc + 1) / 2, full = kc / 2; /* pairs; pairs with both halves */
    for (int64_t p = 0; p < mc; p += mr, dst += mr * kp) {
        const int rows = (int)(mc - p < mr ? mc - p : mr);
        if (ta) { /* A[k][r]: the rows of a pair's two k are adjacent */
            for (int64_t q = 0; q < kp; q++) {
                const float *lo = A + (k0 + 2 * q) * lda + i0 + p;
                uint32_t *d = dst + q * mr;
                if (q < full) {
                    const float *hi = lo + lda; /* only where row k + 1 exists */
                    for (int i = 0; i < rows; i++)
                        d[i] = dot_round_f32(lo[i]) | dot_round_f32(hi[i]) << 16;
                } else
                    for (int i = 0; i < rows; i++) d[i] = dot_round_f32(lo[i]);
                for (int i = rows; i < mr; i++) d[i] = 0;
            }
            continue;
        }
        /* A[r][k]: each row's run of k is rounded into buf (a plain map,
         * f32 to bf16, so that a pair is the word at buf[i] + 2q), then
         * the words are transposed so that a pair's mr words are adjacent. */
        uint16_t buf[TNN_GEMM_MR_MAX][2 * DOT_PACK_CHUNK];
        for (int64_t q0 = 0; q0 < kp; q0 += DOT_PACK_CHUNK) {
            const int64_t n = kp - q0 < DOT_PACK_CHUNK ? kp - q0 : DOT_PACK_CHUNK;
            const int64_t len = 2 * q0 + 2 * n <= kc ? 2 * n : kc - 2 * q0; /* odd kc: 2n-1 */
            for (int i = 0; i < rows; i++) {
                const float *s = A + (i0 + p + i) * lda + k0 + 2 * q0;
                uint16_t *b = buf[i];
                for (int64_t j = 0; j < len; j++) b[j] = (uint16_t)dot_round_f32(s[j]);
                b[2 * n - 1] = len < 2 * n ? 0 : b[2 * n - 1];
            }
            for (int i = rows; i < mr; i++) memset(buf[i], 0, sizeof buf[i]);
            uint32_t *d = dst + q0 * mr;
            for (int64_t q = 0; q < n; q++, d += mr)
                for (int i = 0; i < mr; i++) d[i] = dot_load_pair(buf[i] + 2 * q);
        }
    }
}

static inline void dot_pack_b_impl(uint32_t *restrict dst, bool tb, const uint16_t *restrict B,
                                   int64_t ldb, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                                   int nr) {
    const int64_t kp = (kc + 1) / 2, full = kc / 2;
    for (int64_t q0 = 0; q0 < nc; q0 += nr, dst += nr * kp) {
        const int cols = (int)(nc - q0 < nr ? nc - q0 : nr);
        if (tb) { /* B[j][k]: a column's pair is one word of its row (k0 is even) */
            for (int c = 0; c < cols; c++) {
                const uint16_t *s = B + (j0 + q0 + c) * ldb + k0;
                for (int64_t q = 0; q < full; q++) dst[q * nr + c] = dot_load_pair(s + 2 * q);
                if (full < kp) dst[full * nr + c] = s[2 * full];
            }
            for (int64_t q = 0; q < kp; q++)
                for (int c = cols; c < nr; c++) dst[q * nr + c] = 0;
            continue;
        }
        for (int64_t q = 0; q < kp; q++) { /* B[k][j]: two rows give a pair's words */
            const uint16_t *s0 = B + (k0 + 2 * q) * ldb + j0 + q0;
            uint32_t *d = dst + q * nr;
            if (q < full) {
                const uint16_t *s1 = s0 + ldb; /* only where row k + 1 exists */
                for (int c = 0; c < cols; c++) d[c] = (uint32_t)s0[c] | (uint32_t)s1[c] << 16;
            } else
                for (int c = 0; c < cols; c++) d[c] = s0[c];
            for (int c = cols; c < nr; c++) d[c] = 0;
        }
    }
}

#endif
