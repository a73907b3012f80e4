/* matmul.c - the seed's ggml-layout tnn_matmul, the NumPy-order family
 * (nn, nt, tn; batched over up to two leading dimensions with broadcasting)
 * and transpose.
 *
 * All products are one node, TNN_OP_MATMUL, with flags saying which operand
 * is read transposed: C (..., M, N) = op(src0) @ op(src1). src1 may be bf16
 * (weights) with an f32 src0, or src0 bf16 too (activations already
 * rounded, e.g. tnn_to_bf16's): the bf16 GEMM (src/cpu/gemm.h) runs it, a
 * bf16 src0 widened to f32 first (exact).
 */
#include "common.h"

#include "../cpu/gemm.h"
#include "../quant/quant.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Batch dims right-aligned to 2; shape[0..1] batch, then the matrix. */
static void batch2(const tnn_tensor *t, int64_t out[2]) {
    int nb = t->ndim - 2;
    out[0] = nb >= 2 ? t->shape[nb - 2] : 1;
    out[1] = nb >= 1 ? t->shape[nb - 1] : 1;
}

static tnn_tensor *matmul_build(tnn_session *s, tnn_tensor *a, tnn_tensor *b, int flags,
                                const char *func, const char *an, const char *bn) {
    if (tnn__check_session(s, func)) return NULL;
    if (tnn__check_tensor(s, a, func, an) || tnn__check_tensor(s, b, func, bn)) return NULL;
    char ba[TNN_SHAPE_BUF], bb[TNN_SHAPE_BUF];
    tnn__shape_str(a, ba, sizeof ba);
    tnn__shape_str(b, bb, sizeof bb);
    if (b->dtype == TNN_GGML) {
        /* quantized weights W (M, K): x (N, K) @ W^T (the layer), or g (N, M)
         * @ W (its gradient for x) */
        bool tb = flags == TNN_MM_TB;
        if ((flags != TNN_MM_TB && flags != 0) || a->dtype != TNN_F32 || a->ndim != 2 ||
            b->ndim != 2 || a->shape[1] != b->shape[tb ? 1 : 0])
            return (tnn__error(TNN_ERR_SHAPE, func,
                               "%s %s and %s %s: a GGML-typed operand is only taken as the "
                               "second operand of tnn_matmul_nt, (N, K) @ (M, K)^T, or of "
                               "tnn_matmul_nn, (N, M) @ (M, K), with an f32 first operand",
                               an, ba, bn, bb),
                    NULL);
        int64_t shape[2] = {a->shape[0], b->shape[tb ? 0 : 1]};
        tnn_tensor *src[2] = {a, b};
        tnn_tensor *t = tnn__node_new(s, TNN_OP_MATMUL, TNN_F32, 2, shape, src, 2);
        if (t) t->iparam[0] = flags;
        return t;
    }
    /* f32 @ f32, f32 activations @ bf16 weights (the second operand), or
     * bf16 @ bf16 */
    bool ok = b->dtype == TNN_BF16 ? a->dtype == TNN_F32 || a->dtype == TNN_BF16
                                   : a->dtype == TNN_F32 && b->dtype == TNN_F32;
    if (!ok)
        return (tnn__error(TNN_ERR_ARG, func,
                           "%s %s and %s %s: want f32 tensors, an f32 or bf16 %s with a bf16 "
                           "%s (weights), or both bf16",
                           an, ba, bn, bb, an, bn),
                NULL);
    if (a->ndim < 2 || b->ndim < 2)
        return (tnn__error(TNN_ERR_SHAPE, func, "%s %s and %s %s: want at least 2 dimensions", an,
                           ba, bn, bb),
                NULL);
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int64_t M = (flags & TNN_MM_TA) ? ac : ar, Ka = (flags & TNN_MM_TA) ? ar : ac;
    int64_t N = (flags & TNN_MM_TB) ? br : bc, Kb = (flags & TNN_MM_TB) ? bc : br;
    if (Ka != Kb)
        return (tnn__error(TNN_ERR_SHAPE, func,
                           "%s %s and %s %s: inner dimensions differ (%lld vs %lld)", an, ba, bn,
                           bb, (long long)Ka, (long long)Kb),
                NULL);
    int64_t abat[2], bbat[2], obat[2];
    batch2(a, abat);
    batch2(b, bbat);
    for (int i = 0; i < 2; i++) {
        if (abat[i] != bbat[i] && abat[i] != 1 && bbat[i] != 1)
            return (tnn__error(TNN_ERR_SHAPE, func, "%s %s and %s %s: batch dimensions differ", an,
                               ba, bn, bb),
                    NULL);
        obat[i] = abat[i] > bbat[i] ? abat[i] : bbat[i];
    }
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t shape[TNN_MAX_DIMS];
    if (nd == 4) {
        shape[0] = obat[0];
        shape[1] = obat[1];
    } else if (nd == 3) {
        shape[0] = obat[1];
    }
    shape[nd - 2] = M;
    shape[nd - 1] = N;
    tnn_tensor *src[2] = {a, b};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_MATMUL, TNN_F32, nd, shape, src, 2);
    if (t) t->iparam[0] = flags;
    return t;
}

tnn_tensor *tnn_matmul_nn(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return matmul_build(s, a, b, 0, __func__, "a", "b");
}
tnn_tensor *tnn_matmul_nt(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return matmul_build(s, a, b, TNN_MM_TB, __func__, "a", "b");
}
tnn_tensor *tnn_matmul_tn(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return matmul_build(s, a, b, TNN_MM_TA, __func__, "a", "b");
}

/* Seed ABI: a (m, k), b (n, k) -> (n, m) holding sum_k a[i][k] b[j][k] at
 * [j*m + i], which is b @ a^T. */
tnn_tensor *tnn_matmul(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return matmul_build(s, b, a, TNN_MM_TB, __func__, "b", "a");
}

/* y (N, M) = x (N, K) @ W^T for W (M, K) of a GGML type: up to qmm_rows_max
 * rows go through the quantized matrix-vector kernels (decoding, short
 * prompts: x quantized to 8 bits, W read once for all rows, each row the
 * bits of the one-row product); more rows (prompts) run one GEMM on the
 * dequantized weights: where the bf16 GEMM's automatic path is the AMX tiles
 * or vdpbf16ps, the bf16 GEMM on them rounded to bf16 (within its error
 * bound; 1.8-1.9x the f32 GEMM), its packs dequantizing W a panel at a time
 * (tnn__gemm_bf16_rows: no copy of the whole matrix); elsewhere the f32
 * GEMM, the bits of the f32 product with the dequantized weights, W
 * dequantized first (in parallel, into a per-thread buffer kept between
 * calls; above qmm_full_bytes in panels of as many rows as fit, at least
 * QMM_PANEL).
 *
 * The crossovers, measured on 2 threads of an AVX-512 Xeon with AMX
 * (bench_generate --prompts ... --qmm-rows N, with TNN_KERNEL=avx2 or
 * avx512 for the f32 path; 2048-wide models with random weights from
 * tools/synth_model.py unless named):
 * - QMM_ROWS: types with several-row kernels against the f32 GEMM (the
 *   AVX2 sets: SmolLM2 Q4_1, 32 rows: 616 against 578-582 tokens/s, 48:
 *   612 against 672-680; Q4_K_M, 48: 296 against 261-270);
 *   QMM_ROWS_AVX512 with the AVX-512 set's 8-row kernels (SmolLM2 Q4_1,
 *   64 rows: 847-853 against 821, 96: 827 against 990-1008; Q4_K_M, 96:
 *   537 against 420-441);
 * - QMM_ROWS_Q32_BF16: the 32-element types' VNNI kernels (8 rows of x a
 *   pass with AVX-512) against the bf16 GEMM (SmolLM2 Q4_1, 16 rows: 794
 *   against 708 tokens/s, 20: 782 against 853; Q4_0, 16: 428 against 411,
 *   20: 442 against 500);
 * - QMM_ROWS_K_BF16: Q3_K/Q4_K/Q5_K's (Q4_K_M, 16 rows: 460-473 against
 *   384-398 tokens/s; 20: 455-461 against 474-481; Q3_K_M, 20: 460-466
 *   against 435; 24: 491 against 510);
 * - QMM_ROWS_K2_BF16: Q2_K's and Q6_K's (Q6_K, 20 rows: 426-438 against
 *   371-381 tokens/s; 24: 460 against 434-444; Q2_K, 20: 516 against 398;
 *   24: 534 against 458-472);
 * - QMM_ROWS_IQ4_BF16: IQ4_NL's and IQ4_XS's (SmolLM2 IQ4_XS, IQ4_NL
 *   tensors, 16 rows: 532 against 595; IQ4_XS, 12: 340 against 304, 16:
 *   367-370 against 407);
 * - QMM_ROWS_ONE: kernels taking one row of x at a time against the f32
 *   GEMM (near 20), QMM_ROWS_ONE_BF16 against the bf16 GEMM (Q4_K_M, when
 *   Q4_K had no several-row kernel: at 8 rows 169 against 153 tokens/s, at
 *   12 187 against 215).
 * The bf16 GEMM's cost hardly grows from 12 rows to 24 (dequantizing the
 * weights dominates it); the kernels' grows with every row. */
#define QMM_ROWS 32
#define QMM_ROWS_AVX512 64
#define QMM_ROWS_ONE 16
#define QMM_ROWS_Q32_BF16 16
#define QMM_ROWS_K_BF16 18
#define QMM_ROWS_K2_BF16 24
#define QMM_ROWS_IQ4_BF16 12
#define QMM_ROWS_ONE_BF16 10
#define QMM_PANEL 64
static _Atomic int64_t qmm_full_bytes = (int64_t)32 << 20;
static _Atomic int64_t qmm_rows = -1; /* -1: qmm_rows_max's limits, by type and path */
static atomic_bool qmm_bf16 = true;

/* Whether products on quantized weights run as bf16 products: allowed
 * (tnn__qmm_set_bf16) and faster than f32 ones here (AMX, vdpbf16ps). */
static bool qmm_use_bf16(void) {
    return atomic_load(&qmm_bf16) && tnn__gemm_bf16_auto_path() != TNN_GEMM_BF16_WIDEN;
}

static int64_t qmm_rows_max(int gtype, bool bf16) {
    int64_t set = atomic_load(&qmm_rows);
    if (set >= 0) return set;
    bool shared = tnn__quant_rows_shared(gtype);
    if (!bf16)
        return !shared                                    ? QMM_ROWS_ONE
               : tnn__quant_get_kernel() >= TNN_QK_AVX512 ? QMM_ROWS_AVX512
                                                          : QMM_ROWS;
    if (!shared) return QMM_ROWS_ONE_BF16;
    switch (gtype) {
    case TNN_QT_Q3_K:
    case TNN_QT_Q4_K:
    case TNN_QT_Q5_K: return QMM_ROWS_K_BF16;
    case TNN_QT_Q2_K:
    case TNN_QT_Q6_K: return QMM_ROWS_K2_BF16;
    case TNN_QT_IQ4_NL:
    case TNN_QT_IQ4_XS: return QMM_ROWS_IQ4_BF16;
    default: return QMM_ROWS_Q32_BF16;
    }
}

void tnn__qmm_set_full_bytes(int64_t bytes) { atomic_store(&qmm_full_bytes, bytes); }
void tnn__qmm_set_rows(int64_t rows) { atomic_store(&qmm_rows, rows < 0 ? -1 : rows); }
void tnn__qmm_set_bf16(bool on) { atomic_store(&qmm_bf16, on); }

typedef struct {
    int gtype;
    const char *w;
    int64_t row_bytes, K;
    float *dst; /* the f32 panel */
    atomic_int rc;
} deq_ctx;

static void deq_range(void *p, int64_t lo, int64_t hi) {
    deq_ctx *c = p;
    for (int64_t r = lo; r < hi; r++) {
        int rc = tnn__dequantize_row(c->gtype, c->w + r * c->row_bytes, c->dst + r * c->K, c->K);
        if (rc) atomic_store(&c->rc, rc);
    }
}

/* rows rows of n values, each starting at w + r * row_bytes, dequantized
 * in parallel into dst (n values a row, no gap). */
static int deq_panel(int gtype, const char *w, int64_t row_bytes, int64_t rows, int64_t n,
                     float *dst) {
    deq_ctx c = {.gtype = gtype, .w = w, .row_bytes = row_bytes, .K = n, .dst = dst};
    atomic_init(&c.rc, TNN_OK);
    tnn__parallel_for(rows, 1 + 16384 / n, deq_range, &c);
    return atomic_load(&c.rc);
}

/* The rows of B^T the bf16 GEMM's packs ask for: W's rows dequantized. */
typedef struct {
    int gtype;
    const char *w;
    int64_t row_bytes;
} qrows_ctx;

static void qrows(void *ctx, int64_t j0, int64_t nc, int64_t k0, int64_t kc, uint16_t *dst) {
    const qrows_ctx *c = ctx;
    /* cannot fail: the type and range were checked */
    tnn__dequantize_rows_bf16(c->gtype, c->w + j0 * c->row_bytes, (size_t)c->row_bytes, nc, k0,
                              kc, dst);
}

/* B = W itself, by its rows, for t = g @ W: W's rows k0 .. k0+kc, columns
 * j0 .. j0+nc (the blocks around them decoded). */
static void qrows_k(void *ctx, int64_t j0, int64_t nc, int64_t k0, int64_t kc, uint16_t *dst) {
    const qrows_ctx *c = ctx;
    /* cannot fail: the type and range were checked */
    tnn__dequantize_rows_bf16(c->gtype, c->w + k0 * c->row_bytes, (size_t)c->row_bytes, kc, j0,
                              nc, dst);
}

/* t (N, K) = g (N, M) @ W (M, K) for W of a GGML type: the gradient of x
 * W^T for x (LoRA on quantized frozen weights). Where the bf16 GEMM's
 * automatic path is AMX or vdpbf16ps (as the forward's GEMM), the bf16 GEMM
 * with W's row blocks dequantized by its packs, a panel at a time in cache
 * (the bits of that GEMM on W dequantized to bf16 in memory; 1.07 B model
 * on Q4_K_M: 12% more tokens a second than dequantizing column panels into
 * memory first). Else the f32 product with the dequantized weights, W
 * dequantized a panel of columns at a time (whole blocks of every row, as
 * many as qmm_full_bytes holds, at least one block). */
static int qmatmul_nn(tnn_tensor *t) {
    const tnn_tensor *g = t->src[0], *w = t->src[1];
    int64_t N = g->shape[0], M = w->shape[0], K = w->shape[1];
    const tnn_qtype_info *qi = tnn__qtype(w->gtype);
    int64_t row_bytes = tnn__qtype_row_bytes(w->gtype, K);
    if (!qi || row_bytes < 0) return tnn_last_status() ? tnn_last_status() : TNN_ERR_FORMAT;
    if (qmm_use_bf16()) {
        qrows_ctx qc = {.gtype = w->gtype, .w = (const char *)w->data, .row_bytes = row_bytes};
        tnn_gemm_brows src = {.rows = qrows_k, .ctx = &qc, .by_k = true};
        return tnn__gemm_bf16_rows(TNN_GEMM_BF16_AUTO, N, K, M, CF32(g), M, &src, F32(t), K);
    }
    int64_t bs = qi->block;
    int64_t pn = atomic_load(&qmm_full_bytes) / (M * (int64_t)sizeof(float)) / bs * bs;
    if (pn < bs) pn = bs;
    if (pn > K) pn = K;
    float *panel = tnn__thread_buf(TNN_TBUF_DEQUANT, (size_t)(M * pn));
    if (!panel) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    int rc = TNN_OK;
    for (int64_t k0 = 0; k0 < K && rc == TNN_OK; k0 += pn) {
        int64_t n = K - k0 < pn ? K - k0 : pn;
        /* columns k0 .. k0+n of every row: whole blocks, which decode on
         * their own, so rows of n values starting k0 / bs blocks in */
        rc = deq_panel(w->gtype, (const char *)w->data + k0 / bs * qi->block_bytes, row_bytes,
                       M, n, panel);
        if (rc) break;
        rc = tnn__gemm_f32(false, false, N, n, M, CF32(g), M, panel, n, F32(t) + k0, K);
    }
    return rc;
}

static int qmatmul(tnn_tensor *t) {
    if (!(t->iparam[0] & TNN_MM_TB)) return qmatmul_nn(t);
    const tnn_tensor *x = t->src[0], *w = t->src[1];
    int64_t N = x->shape[0], K = x->shape[1], M = w->shape[0];
    int64_t row_bytes = tnn__qtype_row_bytes(w->gtype, K);
    if (row_bytes < 0) return tnn_last_status();
    /* where bf16 products run faster than f32 ones (AMX, vdpbf16ps), the
     * GEMM runs on bf16 copies of the dequantized weights */
    bool bf16 = qmm_use_bf16();
    if (N <= qmm_rows_max(w->gtype, bf16))
        return tnn__quant_matmul(w->gtype, w->data, M, K, CF32(x), N, F32(t), NULL);
    if (bf16) { /* dequantized by the GEMM's packs, a panel at a time */
        qrows_ctx qc = {.gtype = w->gtype, .w = (const char *)w->data, .row_bytes = row_bytes};
        tnn_gemm_brows src = {.rows = qrows, .ctx = &qc};
        return tnn__gemm_bf16_rows(TNN_GEMM_BF16_AUTO, N, M, K, CF32(x), K, &src, F32(t), M);
    }
    /* the f32 GEMM on W dequantized in panels as large as the budget allows
     * (a multiple of QMM_PANEL rows): each panel's GEMM packs all of x again
     * (64-row panels of a 5632 x 2048 matrix did that 88 times, more than
     * the products took) */
    int64_t budget = atomic_load(&qmm_full_bytes);
    bool full = M * K * (int64_t)sizeof(float) <= budget;
    int64_t pm = full ? M : budget / (K * (int64_t)sizeof(float)) / QMM_PANEL * QMM_PANEL;
    if (pm < QMM_PANEL) pm = QMM_PANEL;
    float *panel = tnn__thread_buf(TNN_TBUF_DEQUANT, (size_t)(pm * K));
    if (!panel) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    int rc = TNN_OK;
    for (int64_t j0 = 0; j0 < M && rc == TNN_OK; j0 += pm) {
        int64_t pr = M - j0 < pm ? M - j0 : pm;
        rc = deq_panel(w->gtype, (const char *)w->data + j0 * row_bytes, row_bytes, pr, K, panel);
        if (rc) break;
        rc = tnn__gemm_f32(false, true, N, pr, K, CF32(x), K, panel, K, F32(t) + j0, M);
    }
    return rc;
}

/* The product t, with the element-wise node of e as its epilogue (or none). */
static int matmul_run(tnn_tensor *t, tnn_ew_epi *e) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    bool ta = t->iparam[0] & TNN_MM_TA, tb = t->iparam[0] & TNN_MM_TB;
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int64_t M = t->shape[t->ndim - 2], N = t->shape[t->ndim - 1];
    int64_t K = ta ? ar : ac;
    int64_t abat[2], bbat[2], obat[2];
    batch2(a, abat);
    batch2(b, bbat);
    batch2(t, obat);
    /* a bf16 first operand: widened to f32 (exact), then the f32 @ bf16
     * product, the same values as an f32 a holding them */
    const float *A = CF32(a);
    float *wa = NULL;
    if (a->dtype == TNN_BF16) {
        if (!(wa = malloc((size_t)a->nelem * sizeof *wa)))
            return TNN_ERR(TNN_ERR_NOMEM, "out of memory widening a bf16 operand (%lld values)",
                           (long long)a->nelem);
        tnn__dequantize_row(TNN_QT_BF16, a->data, wa, a->nelem); /* cannot fail for bf16 */
        A = wa;
    }
    int rc = TNN_OK;
    for (int64_t i0 = 0; i0 < obat[0] && rc == TNN_OK; i0++) {
        for (int64_t i1 = 0; i1 < obat[1] && rc == TNN_OK; i1++) {
            int64_t ai = (abat[0] == 1 ? 0 : i0) * abat[1] + (abat[1] == 1 ? 0 : i1);
            int64_t bi = (bbat[0] == 1 ? 0 : i0) * bbat[1] + (bbat[1] == 1 ? 0 : i1);
            int64_t oi = i0 * obat[1] + i1;
            tnn_gemm_epi epi = {tnn__ew_epi_fn, e};
            if (e) e->base = oi * M * N;
            rc = b->dtype == TNN_BF16
                     ? tnn__gemm_bf16_epi(TNN_GEMM_BF16_AUTO, ta, tb, M, N, K, A + ai * ar * ac,
                                          ac, (const uint16_t *)b->data + bi * br * bc, bc,
                                          F32(t) + oi * M * N, N, e ? &epi : NULL)
                     : tnn__gemm_f32_epi(ta, tb, M, N, K, A + ai * ar * ac, ac,
                                         CF32(b) + bi * br * bc, bc, F32(t) + oi * M * N, N,
                                         e ? &epi : NULL);
        }
    }
    free(wa);
    return rc;
}

int tnn__fwd_matmul(tnn_tensor *t) {
    if (t->src[1]->dtype == TNN_GGML) return qmatmul(t);
    return matmul_run(t, NULL);
}

int tnn__fwd_matmul_then(tnn_tensor *t, tnn_tensor *next) {
    tnn_ew_epi e;
    if (t->op != TNN_OP_MATMUL || t->src[1]->dtype == TNN_GGML ||
        !tnn__ew_epi_init(&e, next, t))
        return 0;
    int rc = matmul_run(t, &e);
    return rc == TNN_OK ? 2 : rc;
}

/* Whether t runs through the quantized matrix-vector kernels (qmatmul's
 * first branch): x (N, K) @ W^T, W a GGML-typed leaf, N small. */
static bool qmv_node(const tnn_tensor *t) {
    if (t->op != TNN_OP_MATMUL || !(t->iparam[0] & TNN_MM_TB)) return false;
    const tnn_tensor *w = t->src[1];
    if (w->dtype != TNN_GGML || w->op != TNN_OP_NONE) return false;
    return t->src[0]->shape[0] <= qmm_rows_max(w->gtype, qmm_use_bf16());
}

/* Whether u, a product with the same x as plan[i]'s, may run with the set
 * (members so far) before the other nodes from plan[i] to plan[j], u's
 * index. */
static bool may_join(tnn_tensor **plan, int32_t i, int32_t j, unsigned members) {
    const tnn_tensor *u = plan[j], *x = u->src[0];
    if (tnn__overlaps(u, x)) return false;
    for (int32_t m = i; m < j; m++) {
        const tnn_tensor *v = plan[m];
        if (tnn__overlaps(u, v)) return false;
        if (members & 1u << (m - i)) continue;
        /* a node between, run after u now: u's output is none of its
         * inputs, and its output is not x */
        if (tnn__overlaps(v, x)) return false;
        for (int k = 0; k < TNN_MAX_SRC; k++)
            if (v->src[k] && tnn__overlaps(u, v->src[k])) return false;
    }
    return true;
}

#define QMM_SET 4 /* products in a set at most */

int tnn__fwd_qmm_set(tnn_tensor **plan, int32_t np, int32_t i, const uint8_t *part,
                     unsigned *members) {
    const tnn_tensor *t = plan[i];
    if (!qmv_node(t)) return 0;
    const tnn_tensor *x = t->src[0], *w = t->src[1];
    tnn_qmm_part parts[QMM_SET] = {{w->data, w->shape[0], F32(plan[i])}};
    int n = 1;
    unsigned in = 1;
    int32_t last = i;
    for (int32_t j = i + 1; j < np && j - i < TNN_QMM_SPAN && n < QMM_SET; j++) {
        if (part && !part[j]) break;
        tnn_tensor *u = plan[j];
        if (u->op != TNN_OP_MATMUL) continue; /* a node between */
        if (!qmv_node(u) || u->src[0] != x || u->src[1]->gtype != w->gtype ||
            !may_join(plan, i, j, in))
            break;
        parts[n++] = (tnn_qmm_part){u->src[1]->data, u->src[1]->shape[0], F32(u)};
        in |= 1u << (j - i);
        last = j;
    }
    if (n < 2) return 0;
    int rc = tnn__quant_matmul_set(w->gtype, x->shape[1], CF32(x), x->shape[0], parts, n, NULL);
    if (rc) return rc;
    *members = in;
    return last - i + 1;
}

/* ------------------------------------------------------------------------ */
/* Transpose of the last two dimensions                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *a;
    float *out;
    int64_t rows, cols;
} tr_ctx;

#define TR_TILE 32

/* Tasks are (batch, row-tile) pairs; tiles keep both sides in cache. */
static void transpose_range(void *p, int64_t lo, int64_t hi) {
    const tr_ctx *c = p;
    int64_t tiles = (c->rows + TR_TILE - 1) / TR_TILE;
    for (int64_t task = lo; task < hi; task++) {
        int64_t bi = task / tiles, r0 = (task % tiles) * TR_TILE;
        int64_t r1 = r0 + TR_TILE < c->rows ? r0 + TR_TILE : c->rows;
        const float *a = c->a + bi * c->rows * c->cols;
        float *o = c->out + bi * c->rows * c->cols;
        for (int64_t c0 = 0; c0 < c->cols; c0 += TR_TILE) {
            int64_t c1 = c0 + TR_TILE < c->cols ? c0 + TR_TILE : c->cols;
            for (int64_t r = r0; r < r1; r++)
                for (int64_t j = c0; j < c1; j++) o[j * c->rows + r] = a[r * c->cols + j];
        }
    }
}

void tnn__k_transpose(const float *a, float *out, int64_t batch, int64_t rows, int64_t cols) {
    tr_ctx c = {.a = a, .out = out, .rows = rows, .cols = cols};
    int64_t tiles = (rows + TR_TILE - 1) / TR_TILE;
    tnn__parallel_for(batch * tiles, 8192 / (TR_TILE * cols) + 1, transpose_range, &c);
}

tnn_tensor *tnn_transpose(tnn_session *s, tnn_tensor *a) {
    CHECK_SESSION_NULL(s);
    CHECK_TENSOR_NULL(s, a);
    CHECK_F32_NULL(a);
    int64_t shape[TNN_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    if (a->ndim == 1) {
        /* a vector is a (1, n) row: its transpose is (n, 1) */
        tnn_tensor *src[1] = {a};
        int64_t sh2[2] = {a->shape[0], 1};
        return tnn__node_new(s, TNN_OP_TRANSPOSE, TNN_F32, 2, sh2, src, 1);
    }
    shape[a->ndim - 2] = a->shape[a->ndim - 1];
    shape[a->ndim - 1] = a->shape[a->ndim - 2];
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, TNN_OP_TRANSPOSE, TNN_F32, a->ndim, shape, src, 1);
}

int tnn__fwd_transpose(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    int64_t rows = a->ndim == 1 ? 1 : a->shape[a->ndim - 2];
    int64_t cols = a->shape[a->ndim - 1];
    tnn__k_transpose(CF32(a), F32(t), a->nelem / (rows * cols), rows, cols);
    return TNN_OK;
}
