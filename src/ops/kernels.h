/* kernels.h - the f32 kernels behind the ops, on plain arrays. The graph
 * ops, the seed's scratch kernels and the one-call f64 functions all call
 * these, which is why they give the same numbers.
 *
 * Each kernel splits its work over the thread pool so that every output
 * element is computed by the same sequence of operations for any split.
 */
#ifndef TNN_KERNELS_H
#define TNN_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

enum { TNN_BIN_ADD = 0, TNN_BIN_SUB = 1, TNN_BIN_MUL = 2 };

/* out = a OP b, all of n elements. */
void tnn__k_binary(int op, const float *a, const float *b, float *out, int64_t n);
/* out = a * k */
void tnn__k_scale(const float *a, float k, float *out, int64_t n);
void tnn__k_gelu(const float *x, float *y, int64_t n);
void tnn__k_silu(const float *x, float *y, int64_t n);
/* dx = dy * f'(x) */
void tnn__k_gelu_back(const float *x, const float *dy, float *dx, int64_t n);
void tnn__k_silu_back(const float *x, const float *dy, float *dx, int64_t n);

/* Row kernels over `rows` rows of `cols` contiguous values. */
void tnn__k_softmax(const float *x, float *y, int64_t rows, int64_t cols);
void tnn__k_softmax_back(const float *dy, const float *y, float *dx, int64_t rows, int64_t cols);
/* gamma may be NULL (no gain). */
void tnn__k_rms_norm(const float *x, const float *gamma, float *y, int64_t rows, int64_t cols,
                     double eps);
/* dx of rms_norm; with gamma (NULL: none), of rms_norm(x, gamma). */
void tnn__k_rms_norm_back(const float *dy, const float *x, const float *gamma, float *dx,
                          int64_t rows, int64_t cols, double eps);
/* dgamma of rms_norm(x, gamma) (cols values); TNN_ERR_NOMEM possible. */
int tnn__k_rms_norm_gain(const float *dy, const float *x, float *dgamma, int64_t rows,
                         int64_t cols, double eps);

/* Layer norm of each row (gamma, beta may be NULL), and the input gradient
 * of the plain normalization given g = dL/dy. */
void tnn__k_layer_norm(const float *x, const float *gamma, const float *beta, float *y,
                       int64_t rows, int64_t cols, double eps);
void tnn__k_layer_norm_back(const float *g, const float *x, float *dx, int64_t rows,
                            int64_t cols, double eps);
/* layer_norm_back's row sums: *sx = tnn_vsum_d(x, n), *sg = tnn_vsum_d(g, n),
 * *sgx = tnn_vdot_d(g, x, n) (vmath.h's lane order), through the kernel of
 * the quantized kernels' choice (AVX2, or the portable passes): the same
 * bits. Exposed for the tests. */
void tnn__k_ln_sums(const float *x, const float *g, int64_t n, double *sx, double *sg,
                    double *sgx);

/* out (batch, cols, rows) = transpose of a (batch, rows, cols). */
void tnn__k_transpose(const float *a, float *out, int64_t batch, int64_t rows, int64_t cols);

/* out (n, d) = table[idx]; returns the first bad position, or -1. Nothing
 * is written when an index is out of range. */
int64_t tnn__k_get_rows(const float *table, int64_t V, int64_t d, const int32_t *idx, int64_t n,
                        float *out);
/* out (V, d) = 0, then out[idx[i]] += d_out[i]; same error rule. */
int64_t tnn__k_get_rows_back(const float *d_out, int64_t n, int64_t d, const int32_t *idx,
                             int64_t V, float *out);

/* C (M, N) = op(A) (M, K) @ op(B) (K, N), overwriting C. op(A) = A^T when
 * ta (A is then stored K x M), op(B) = B^T when tb (B stored N x K). Leading
 * dimensions are row strides. Each C element sums over k in ascending order. */
int tnn__gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                  const float *B, int64_t ldb, float *C, int64_t ldc);

/* An epilogue of a product: fn(ctx, i0, i1, j0, j1) is called once C[i0:i1,
 * j0:j1] holds its final values, by the thread that computed them, while
 * they are still in its cache (blocks of C cover it exactly once). The
 * plan runner uses it to apply the element-wise node that follows a product
 * (gemm.c; elementwise.c builds the context). */
typedef struct {
    void (*fn)(void *ctx, int64_t i0, int64_t i1, int64_t j0, int64_t j1);
    void *ctx;
} tnn_gemm_epi;

/* The element-wise node t (add, sub, mul with a same-shape operand or a
 * bias row, scale, gelu, silu) applied as the epilogue of the product prod
 * that it reads: init says whether it can be (f32, t shaped as prod) and
 * fills e; the product sets e->base (its first element) before each GEMM
 * and passes {tnn__ew_epi_fn, e}. */
typedef struct tnn_tensor tnn_tensor;
typedef struct {
    int op;            /* t's op */
    const float *c;    /* the product's output */
    const float *o;    /* the other operand (binary ops) */
    float *out;        /* t's output */
    int64_t N, base;   /* columns of a product row; offset of the current product */
    float k;           /* scale */
    bool o_first;      /* the other operand is t's first */
    bool o_row;        /* the other operand is one row, broadcast */
} tnn_ew_epi;
bool tnn__ew_epi_init(tnn_ew_epi *e, const tnn_tensor *t, const tnn_tensor *prod);
void tnn__ew_epi_fn(void *ctx, int64_t i0, int64_t i1, int64_t j0, int64_t j1);

/* tnn__gemm_f32 with an epilogue (NULL: none). */
int tnn__gemm_f32_epi(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                      const tnn_gemm_epi *epi);

/* For tests: quantized weights of at most this many bytes as f32 are
 * dequantized whole for a prompt's f32 product (default 32 MiB); larger
 * ones go in panels of as many rows as fit in it (at least 64). (The bf16
 * products dequantize a GEMM panel at a time and do not use it.) */
void tnn__qmm_set_full_bytes(int64_t bytes);
/* For tests and benchmarks: products with quantized weights of at most this
 * many rows of x take the quantized matrix-vector kernels (-1: the default). */
void tnn__qmm_set_rows(int64_t rows);
/* For tests: whether a prompt's product may multiply bf16 copies of the
 * dequantized weights where the bf16 products are the faster ones (true by
 * default; false: always the f32 GEMM). */
void tnn__qmm_set_bf16(bool on);

/* Adam, in place (see tnn_adam_step_scratch). */
void tnn__k_adam(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1,
                 double b2, double eps, double omc1, double omc2);

#endif
