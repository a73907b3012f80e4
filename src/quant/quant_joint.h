/* quant_joint.h - the one-row dot products' runs of rows whose tails of
 * 2, 4 or 6 blocks (past the last whole group of 8) are taken together
 * (quant_x86.h: joint tails). Included by quant_avx2.c (block kernels) and
 * quant_vnni.h (pair kernels) after they define
 *   row_groups(type, a, wr, full)       the 8 lane sums of the row at wr's
 *                                       blocks 0 .. full - 1 (full a multiple
 *                                       of 8), block b in lane b mod 8
 *   joint_sums(type, a, w, rb, b, n, v) group v's 8 integer block sums
 */
#ifndef TNN_QUANT_JOINT_H
#define TNN_QUANT_JOINT_H

/* y[r] for runs of tail_rows(n) rows, each row's whole groups, then their
 * tails together; returns the rows done (fewer than a run are left). */
INL int64_t rows_joint(int type, const tnn_qact *a, const void *w, size_t rb, int64_t rows,
                       float *y, int n) {
    const int64_t full = a->n / TNN_QK - n;
    const int G = tail_rows(n);
    int64_t r = 0;
    for (; r + G <= rows; r += G) {
        const uint8_t *w0 = (const uint8_t *)w + r * rb;
        __m256 acc[4];
        for (int g = 0; g < G; g++)
            acc[g] = row_groups(type, a, w0 + g * rb, full);
        _Pragma("GCC unroll 4") for (int v = 0; v < tail_groups(n); v++)
            tail_finish(type, a, w0, rb, full, n, v, joint_sums(type, a, w0, rb, full, n, v), acc);
        for (int g = 0; g < G; g++) {
            float lanes[8];
            _mm256_storeu_ps(lanes, acc[g]);
            y[r + g] = tnn__qreduce8(lanes);
        }
    }
    return r;
}

/* The rows rows_joint does for this row width (0 when its tail is odd or
 * none, or rows are too far apart for the gather's 32-bit offsets). */
INL int64_t dot_joint(int type, const tnn_qact *a, const void *w, size_t rb, int64_t rows,
                      float *y) {
    if (rb > INT32_MAX / 8)
        return 0;
    switch (a->n / TNN_QK % 8) {
    case 2: return rows_joint(type, a, w, rb, rows, y, 2);
    case 4: return rows_joint(type, a, w, rb, rows, y, 4);
    case 6: return rows_joint(type, a, w, rb, rows, y, 6);
    default: return 0;
    }
}

#endif
