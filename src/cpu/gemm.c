/* gemm.c - f32 matrix product C = op(A) @ op(B) on the CPU.
 *
 * op(B) is first made contiguous as a (K, N) row-major panel when B is
 * transposed; then each thread takes a band of C's rows and accumulates
 * c[i, j] += a[i, k] * b[k, j] over k in ascending order, blocked over j and k
 * so a block of B stays in cache. The inner loop runs along j, so it
 * vectorizes without reordering any sum: every C element is the same
 * sequence of operations whatever the thread split.
 */
#include "../core/internal.h"
#include "../ops/kernels.h"
#include "pool.h"

#include <stdlib.h>
#include <string.h>

#define GEMM_NB 512 /* columns of C per block */
#define GEMM_KB 256 /* depth per block */

typedef struct {
    bool ta;
    int64_t M, N, K;
    const float *A;
    int64_t lda;
    const float *B; /* (K, N) row-major */
    int64_t ldb;
    float *C;
    int64_t ldc;
} gemm_ctx;

static void gemm_rows(void *p, int64_t i0, int64_t i1) {
    const gemm_ctx *g = p;
    for (int64_t i = i0; i < i1; i++) memset(g->C + i * g->ldc, 0, (size_t)g->N * sizeof(float));
    for (int64_t j0 = 0; j0 < g->N; j0 += GEMM_NB) {
        int64_t jn = g->N - j0 < GEMM_NB ? g->N - j0 : GEMM_NB;
        for (int64_t k0 = 0; k0 < g->K; k0 += GEMM_KB) {
            int64_t k1 = g->K - k0 < GEMM_KB ? g->K : k0 + GEMM_KB;
            for (int64_t i = i0; i < i1; i++) {
                float *restrict c = g->C + i * g->ldc + j0;
                for (int64_t k = k0; k < k1; k++) {
                    float a = g->ta ? g->A[k * g->lda + i] : g->A[i * g->lda + k];
                    const float *restrict b = g->B + k * g->ldb + j0;
                    for (int64_t j = 0; j < jn; j++) c[j] += a * b[j];
                }
            }
        }
    }
}

typedef struct {
    const float *B;
    int64_t ldb, K;
    float *Bt;
    int64_t N;
} pack_ctx;

/* Bt[k, j] = B[j, k] for a band of k. */
static void pack_rows(void *p, int64_t k0, int64_t k1) {
    const pack_ctx *c = p;
    for (int64_t k = k0; k < k1; k++)
        for (int64_t j = 0; j < c->N; j++) c->Bt[k * c->N + j] = c->B[j * c->ldb + k];
}

int tnn__gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                  const float *B, int64_t ldb, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return TNN_OK;
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
        return TNN_OK;
    }
    float *packed = NULL;
    if (tb) {
        size_t bytes;
        if (!tnn__size_mul_ok((size_t)K * (size_t)N, sizeof(float), &bytes))
            return TNN_ERR(TNN_ERR_OVERFLOW, "K=%lld N=%lld: panel size overflows", (long long)K,
                           (long long)N);
        packed = malloc(bytes);
        if (!packed)
            return TNN_ERR(TNN_ERR_NOMEM, "out of memory packing a %lld x %lld panel",
                           (long long)K, (long long)N);
        pack_ctx pc = {.B = B, .ldb = ldb, .K = K, .Bt = packed, .N = N};
        tnn__parallel_for(K, 16, pack_rows, &pc);
        B = packed;
        ldb = N;
    }
    gemm_ctx g = {.ta = ta, .M = M, .N = N, .K = K, .A = A, .lda = lda, .B = B, .ldb = ldb,
                  .C = C, .ldc = ldc};
    /* A band of rows should carry at least ~64k multiply-adds. */
    int64_t work = N * K;
    int64_t min_rows = work >= 65536 ? 1 : 65536 / (work ? work : 1) + 1;
    tnn__parallel_for(M, min_rows, gemm_rows, &g);
    free(packed);
    return TNN_OK;
}
