/* mat.c - the seed module's methods as one-call functions on caller-owned
 * row-major f64 matrices. Each narrows its inputs to f32 (as the module's
 * staging through the scratch does), runs the same kernels as the graph
 * ops, and widens the result: so both routes give the same numbers.
 */
#include "../core/internal.h"
#include "../ops/common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* Element count of a rows x cols matrix, or a negative status. */
static int64_t mat_count(int rows, int cols, const char *func, const char *what) {
    if (rows <= 0 || cols <= 0)
        return tnn__error(TNN_ERR_ARG, func, "%s is %d x %d: want sizes >= 1", what, rows, cols);
    return (int64_t)rows * (int64_t)cols; /* two ints never overflow int64 */
}

/* One allocation for every f32 temporary of a call. */
typedef struct {
    float *base;
    size_t used, cap;
} tmp_t;

static int tmp_init(tmp_t *t, int64_t total, const char *func) {
    size_t bytes;
    if (total < 0 || !tnn__size_mul_ok((size_t)total, sizeof(float), &bytes))
        return tnn__error(TNN_ERR_OVERFLOW, func, "temporary size overflows");
    t->base = malloc(bytes ? bytes : 1);
    t->used = 0;
    t->cap = (size_t)total;
    if (!t->base) return tnn__error(TNN_ERR_NOMEM, func, "out of memory (%zu bytes)", bytes);
    return TNN_OK;
}

static float *tmp_take(tmp_t *t, int64_t n) {
    float *p = t->base + t->used;
    t->used += (size_t)n;
    assert(t->used <= t->cap);
    return p;
}

/* The conversions are most of a small call's cost: vectorized (an AVX2
 * clone where the CPU has it; conversions round the same in every clone). */
TNN_VEC_CLONES static void narrow_into(float *restrict p, const double *restrict src, int64_t n) {
    for (int64_t i = 0; i < n; i++) p[i] = (float)src[i];
}

static float *narrow(tmp_t *t, const double *src, int64_t n) {
    float *p = tmp_take(t, n);
    narrow_into(p, src, n);
    return p;
}

TNN_VEC_CLONES static void widen(const float *restrict src, double *restrict dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = (double)src[i];
}

#define NEED(p)                                                                               \
    do {                                                                                      \
        if (!(p)) return TNN_ERR(TNN_ERR_ARG, "'%s' is NULL", #p);                            \
    } while (0)

/* Narrows each index to int32 after checking it is in [0, limit). */
static int32_t *narrow_idx(const int64_t *idx, int n, int64_t limit, int *rc, const char *func,
                           const char *what) {
    int32_t *p = malloc((size_t)n * sizeof *p);
    if (!p) {
        *rc = tnn__error(TNN_ERR_NOMEM, func, "out of memory");
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= limit) {
            *rc = tnn__error(TNN_ERR_RANGE, func, "%s[%d] = %lld is outside [0, %lld)", what, i,
                             (long long)idx[i], (long long)limit);
            free(p);
            return NULL;
        }
        p[i] = (int32_t)idx[i];
    }
    return p;
}

/* ------------------------------------------------------------------------ */
/* Products                                                                 */
/* ------------------------------------------------------------------------ */

static int product(bool ta, bool tb, const double *a, int ar, int ac, const double *b, int br,
                   int bc, double *out, const char *func) {
    int64_t na = mat_count(ar, ac, func, "a"), nb = mat_count(br, bc, func, "b");
    if (na < 0) return (int)na;
    if (nb < 0) return (int)nb;
    if (!a || !b || !out)
        return tnn__error(TNN_ERR_ARG, func, "a, b and out must not be NULL");
    int64_t M = ta ? ac : ar, Ka = ta ? ar : ac, N = tb ? br : bc, Kb = tb ? bc : br;
    if (Ka != Kb)
        return tnn__error(TNN_ERR_SHAPE, func, "a is %d x %d and b is %d x %d: inner dimensions "
                          "differ (%lld vs %lld)", ar, ac, br, bc, (long long)Ka, (long long)Kb);
    tmp_t t;
    int rc = tmp_init(&t, na + nb + M * N, func);
    if (rc) return rc;
    float *fa = narrow(&t, a, na), *fb = narrow(&t, b, nb), *fc = tmp_take(&t, M * N);
    rc = tnn__gemm_f32(ta, tb, M, N, Ka, fa, ac, fb, bc, fc, N);
    if (rc == TNN_OK) widen(fc, out, M * N);
    free(t.base);
    return rc;
}

int tnn_mat_matmul(const double *a, int ar, int ac, const double *b, int br, int bc,
                   double *out) {
    return product(false, false, a, ar, ac, b, br, bc, out, __func__);
}
int tnn_mat_matmul_t(const double *a, int ar, int ac, const double *b, int br, int bc,
                     double *out) {
    return product(false, true, a, ar, ac, b, br, bc, out, __func__);
}
int tnn_mat_t_matmul(const double *a, int ar, int ac, const double *b, int br, int bc,
                     double *out) {
    return product(true, false, a, ar, ac, b, br, bc, out, __func__);
}

/* ------------------------------------------------------------------------ */
/* Element-wise and row functions                                           */
/* ------------------------------------------------------------------------ */

enum { U_SCALE, U_GELU, U_SILU, U_SOFTMAX, U_TRANSPOSE };

static int unary(int kind, const double *a, int rows, int cols, double k, double *out,
                 const char *func) {
    int64_t n = mat_count(rows, cols, func, "a");
    if (n < 0) return (int)n;
    if (!a || !out) return tnn__error(TNN_ERR_ARG, func, "a and out must not be NULL");
    tmp_t t;
    int rc = tmp_init(&t, 2 * n, func);
    if (rc) return rc;
    float *x = narrow(&t, a, n), *y = tmp_take(&t, n);
    switch (kind) {
    case U_SCALE: tnn__k_scale(x, (float)k, y, n); break;
    case U_GELU: tnn__k_gelu(x, y, n); break;
    case U_SILU: tnn__k_silu(x, y, n); break;
    case U_SOFTMAX: tnn__k_softmax(x, y, rows, cols); break;
    default: tnn__k_transpose(x, y, 1, rows, cols); break;
    }
    widen(y, out, n);
    free(t.base);
    return TNN_OK;
}

int tnn_mat_scale(const double *a, int rows, int cols, double k, double *out) {
    return unary(U_SCALE, a, rows, cols, k, out, __func__);
}
int tnn_mat_gelu(const double *a, int rows, int cols, double *out) {
    return unary(U_GELU, a, rows, cols, 0, out, __func__);
}
int tnn_mat_silu(const double *a, int rows, int cols, double *out) {
    return unary(U_SILU, a, rows, cols, 0, out, __func__);
}
int tnn_mat_softmax(const double *a, int rows, int cols, double *out) {
    return unary(U_SOFTMAX, a, rows, cols, 0, out, __func__);
}
int tnn_mat_transpose(const double *a, int rows, int cols, double *out) {
    return unary(U_TRANSPOSE, a, rows, cols, 0, out, __func__);
}

enum { B_ADD, B_MUL, B_GELU_BACK, B_SILU_BACK, B_SOFTMAX_BACK, B_RMS_BACK };

static int binary(int kind, const double *a, const double *b, int rows, int cols, double eps,
                  double *out, const char *func) {
    int64_t n = mat_count(rows, cols, func, "the matrices");
    if (n < 0) return (int)n;
    if (!a || !b || !out) return tnn__error(TNN_ERR_ARG, func, "inputs and out must not be NULL");
    tmp_t t;
    int rc = tmp_init(&t, 3 * n, func);
    if (rc) return rc;
    float *x = narrow(&t, a, n), *y = narrow(&t, b, n), *z = tmp_take(&t, n);
    switch (kind) {
    case B_ADD: tnn__k_binary(TNN_BIN_ADD, x, y, z, n); break;
    case B_MUL: tnn__k_binary(TNN_BIN_MUL, x, y, z, n); break;
    case B_GELU_BACK: tnn__k_gelu_back(x, y, z, n); break;
    case B_SILU_BACK: tnn__k_silu_back(x, y, z, n); break;
    case B_SOFTMAX_BACK: tnn__k_softmax_back(y, x, z, rows, cols); break; /* (y, dy) */
    default: tnn__k_rms_norm_back(y, x, NULL, z, rows, cols, eps); break; /* (x, dy) */
    }
    widen(z, out, n);
    free(t.base);
    return TNN_OK;
}

int tnn_mat_add(const double *a, const double *b, int rows, int cols, double *out) {
    return binary(B_ADD, a, b, rows, cols, 0, out, __func__);
}
int tnn_mat_mul(const double *a, const double *b, int rows, int cols, double *out) {
    return binary(B_MUL, a, b, rows, cols, 0, out, __func__);
}
int tnn_mat_gelu_back(const double *x, const double *dh, int rows, int cols, double *out) {
    return binary(B_GELU_BACK, x, dh, rows, cols, 0, out, __func__);
}
int tnn_mat_silu_back(const double *x, const double *dy, int rows, int cols, double *out) {
    return binary(B_SILU_BACK, x, dy, rows, cols, 0, out, __func__);
}
int tnn_mat_softmax_back(const double *y, const double *dy, int rows, int cols, double *out) {
    return binary(B_SOFTMAX_BACK, y, dy, rows, cols, 0, out, __func__);
}
int tnn_mat_rms_norm_back(const double *x, const double *dy, int rows, int cols, double eps,
                          double *out) {
    if (!(eps >= 0.0) || isinf(eps))
        return TNN_ERR(TNN_ERR_ARG, "eps=%g: want a finite value >= 0", eps);
    return binary(B_RMS_BACK, x, dy, rows, cols, eps, out, __func__);
}

int tnn_mat_rms_norm(const double *x, int rows, int cols, const double *gamma, double eps,
                     double *out) {
    int64_t n = mat_count(rows, cols, __func__, "x");
    if (n < 0) return (int)n;
    NEED(x);
    NEED(gamma);
    NEED(out);
    if (!(eps >= 0.0) || isinf(eps))
        return TNN_ERR(TNN_ERR_ARG, "eps=%g: want a finite value >= 0", eps);
    tmp_t t;
    int rc = tmp_init(&t, 2 * n + cols, __func__);
    if (rc) return rc;
    float *fx = narrow(&t, x, n), *fg = narrow(&t, gamma, cols), *fy = tmp_take(&t, n);
    tnn__k_rms_norm(fx, fg, fy, rows, cols, eps);
    widen(fy, out, n);
    free(t.base);
    return TNN_OK;
}

int tnn_mat_cross_entropy_grad(const double *logits, int rows, int cols, const int64_t *targets,
                               int n_pred, double *out) {
    int64_t n = mat_count(rows, cols, __func__, "logits");
    if (n < 0) return (int)n;
    NEED(logits);
    NEED(targets);
    NEED(out);
    if (n_pred <= 0 || n_pred > rows)
        return TNN_ERR(TNN_ERR_ARG, "n_pred=%d: want 1..rows (%d)", n_pred, rows);
    for (int i = 0; i < n_pred; i++)
        if (targets[i] < 0 || targets[i] >= cols)
            return TNN_ERR(TNN_ERR_RANGE, "targets[%d] = %lld is outside [0, %d)", i,
                           (long long)targets[i], cols);
    tmp_t t;
    int rc = tmp_init(&t, 2 * n, __func__);
    if (rc) return rc;
    float *x = narrow(&t, logits, n), *sm = tmp_take(&t, n);
    tnn__k_softmax(x, sm, rows, cols);
    /* The module's composition: scale(sm, 1/n) + scale(one_hot, -1/n). */
    double inv_n = 1.0 / (double)n_pred;
    float pos = (float)inv_n, neg = (float)-inv_n;
    for (int64_t r = 0; r < rows; r++) {
        int64_t tgt = r < n_pred ? targets[r] : -1;
        for (int64_t c = 0; c < cols; c++) {
            /* two statements: no fused multiply-add may merge them */
            float sm_s = sm[r * cols + c] * pos;
            float oh_s = (c == tgt ? 1.0f : 0.0f) * neg;
            out[r * cols + c] = (double)(sm_s + oh_s);
        }
    }
    free(t.base);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Embeddings                                                               */
/* ------------------------------------------------------------------------ */

int tnn_mat_embed_lookup(const double *table, int rows, int cols, const int64_t *indices,
                         int n_idx, double *out) {
    int64_t n = mat_count(rows, cols, __func__, "table");
    if (n < 0) return (int)n;
    if (mat_count(n_idx, cols, __func__, "out") < 0) return tnn_last_status();
    NEED(table);
    NEED(indices);
    NEED(out);
    int rc = TNN_OK;
    int32_t *idx = narrow_idx(indices, n_idx, rows, &rc, __func__, "indices");
    if (!idx) return rc;
    tmp_t t;
    rc = tmp_init(&t, n + (int64_t)n_idx * cols, __func__);
    if (rc == TNN_OK) {
        float *ft = narrow(&t, table, n), *fo = tmp_take(&t, (int64_t)n_idx * cols);
        tnn__k_get_rows(ft, rows, cols, idx, n_idx, fo);
        widen(fo, out, (int64_t)n_idx * cols);
        free(t.base);
    }
    free(idx);
    return rc;
}

int tnn_mat_embed_back(const double *d_out, int n_idx, int cols, const int64_t *indices,
                       int vocab, double *out) {
    int64_t n = mat_count(n_idx, cols, __func__, "d_out");
    if (n < 0) return (int)n;
    int64_t nv = mat_count(vocab, cols, __func__, "out");
    if (nv < 0) return (int)nv;
    NEED(d_out);
    NEED(indices);
    NEED(out);
    int rc = TNN_OK;
    int32_t *idx = narrow_idx(indices, n_idx, vocab, &rc, __func__, "indices");
    if (!idx) return rc;
    tmp_t t;
    rc = tmp_init(&t, n + nv, __func__);
    if (rc == TNN_OK) {
        float *fd = narrow(&t, d_out, n), *fo = tmp_take(&t, nv);
        tnn__k_get_rows_back(fd, n_idx, cols, idx, vocab, fo);
        widen(fo, out, nv);
        free(t.base);
    }
    free(idx);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Optimizer steps                                                          */
/* ------------------------------------------------------------------------ */

int tnn_mat_adam_step(double *param, const double *grad, double *m, double *v, int rows,
                      int cols, double lr, double b1, double b2, double eps, double omc1,
                      double omc2) {
    int64_t n = mat_count(rows, cols, __func__, "param");
    if (n < 0) return (int)n;
    NEED(param);
    NEED(grad);
    NEED(m);
    NEED(v);
    if (!(omc1 > 0.0) || !(omc2 > 0.0))
        return TNN_ERR(TNN_ERR_ARG, "omc1=%g omc2=%g: bias corrections must be > 0", omc1, omc2);
    tmp_t t;
    int rc = tmp_init(&t, 4 * n, __func__);
    if (rc) return rc;
    float *fp = narrow(&t, param, n), *fg = narrow(&t, grad, n);
    float *fm = narrow(&t, m, n), *fv = narrow(&t, v, n);
    tnn__k_adam(fp, fg, fm, fv, n, lr, b1, b2, eps, omc1, omc2);
    widen(fp, param, n);
    widen(fm, m, n);
    widen(fv, v, n);
    free(t.base);
    return TNN_OK;
}

int tnn_mat_sgd_step(const double *param, const double *grad, int rows, int cols, double lr,
                     double *out) {
    int64_t n = mat_count(rows, cols, __func__, "param");
    if (n < 0) return (int)n;
    NEED(param);
    NEED(grad);
    NEED(out);
    tmp_t t;
    int rc = tmp_init(&t, 3 * n, __func__);
    if (rc) return rc;
    float *fp = narrow(&t, param, n), *fg = narrow(&t, grad, n), *fs = tmp_take(&t, n);
    /* The module's composition: add(param, scale(grad, -lr)). */
    tnn__k_scale(fg, (float)-lr, fs, n);
    tnn__k_binary(TNN_BIN_ADD, fp, fs, fs, n);
    widen(fs, out, n);
    free(t.base);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* FFN pipeline                                                             */
/* ------------------------------------------------------------------------ */

int tnn_mat_ffn_pipeline(const double *h, int hr, int hc, const double *w1, int w1c,
                         const double *w2, int w2c, double *out) {
    int64_t nh = mat_count(hr, hc, __func__, "h");
    if (nh < 0) return (int)nh;
    int64_t n1 = mat_count(hc, w1c, __func__, "w1");
    if (n1 < 0) return (int)n1;
    int64_t n2 = mat_count(w1c, w2c, __func__, "w2");
    if (n2 < 0) return (int)n2;
    NEED(h);
    NEED(w1);
    NEED(w2);
    NEED(out);
    int64_t nm = (int64_t)hr * w1c, no = (int64_t)hr * w2c;
    tmp_t t;
    int rc = tmp_init(&t, nh + n1 + n2 + 2 * nm + no, __func__);
    if (rc) return rc;
    float *fh = narrow(&t, h, nh), *f1 = narrow(&t, w1, n1), *f2 = narrow(&t, w2, n2);
    float *pre = tmp_take(&t, nm), *hid = tmp_take(&t, nm), *fo = tmp_take(&t, no);
    rc = tnn__gemm_f32(false, false, hr, w1c, hc, fh, hc, f1, w1c, pre, w1c);
    if (rc == TNN_OK) {
        tnn__k_gelu(pre, hid, nm);
        rc = tnn__gemm_f32(false, false, hr, w2c, w1c, hid, w1c, f2, w2c, fo, w2c);
    }
    if (rc == TNN_OK) widen(fo, out, no);
    free(t.base);
    return rc;
}
