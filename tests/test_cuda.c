/* test_cuda.c - the CUDA backend against the CPU: every op forward, the
 * gradients of the differentiable ones through tnn_backward, optimizer
 * steps, quantized weights, the KV cache, faults found by kernels, and the
 * training step's traffic. Each case builds the same graph in a CPU
 * session and a CUDA session from the same inputs and compares the results
 * with a stated tolerance (the kernels sum in other orders than the CPU's
 * and use the GPU's exp, so bits differ; the tolerances are relative to the
 * largest value of the result).
 *
 * Linked with the real library it runs on a GPU and is skipped (exit 77)
 * without one; linked with the emulator build (test_cuda_emu) it runs the
 * same kernels on the CPU.
 */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"

#include "ops/kernels.h"
#include "quant/quant.h"

#include <pthread.h>
#include <unistd.h>

#define SKIP 77
#define MAXIN 6

typedef struct {
    int dtype; /* TNN_F32 or TNN_I32 (values in [0, imax); imax < 0: all -imax) */
    int ndim;
    int64_t shape[4];
    int imax;
    bool param; /* a parameter: its gradient is compared too */
} in_spec;

typedef tnn_tensor *(*build_fn)(tnn_session *s, tnn_tensor **in);

static int64_t numel(const in_spec *sp) {
    int64_t n = 1;
    for (int i = 0; i < sp->ndim; i++) n *= sp->shape[i];
    return n;
}

/* Runs `build` on backend `cuda` with inputs from `seed`; returns the
 * result and the parameters' gradients, concatenated, as doubles. */
static double *run_on(int cuda, build_fn build, const in_spec *ins, int nin, bool grads,
                      uint64_t seed, int64_t *n_out) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *in[MAXIN];
    th_seed(seed);
    for (int i = 0; i < nin; i++) {
        in[i] = tnn_tensor_new(s, ins[i].dtype, ins[i].ndim, ins[i].shape);
        if (ins[i].param) tnn_set_param(in[i]);
    }
    tnn_tensor *out = build(s, in);
    if (!out) {
        fprintf(stderr, "build failed: %s\n", tnn_last_error());
        tnn_session_free(s);
        return NULL;
    }
    tnn_tensor *loss = NULL;
    if (grads) {
        loss = tnn_sum(s, out);
        if (tnn_backward(s, loss) != TNN_OK) {
            fprintf(stderr, "backward failed: %s\n", tnn_last_error());
            tnn_session_free(s);
            return NULL;
        }
    }
    tnn_set_output(out);
    int rc = tnn_realize(s, loss ? loss : out);
    for (int i = 0; i < nin && rc == TNN_OK; i++) {
        int64_t n = numel(&ins[i]);
        if (ins[i].dtype == TNN_I32) {
            int32_t *v = malloc((size_t)n * sizeof *v);
            for (int64_t k = 0; k < n; k++)
                v[k] = ins[i].imax < 0 ? -ins[i].imax : (int32_t)(th_uniform() * ins[i].imax);
            rc = tnn_upload_i32(s, in[i], v, (size_t)n);
            free(v);
        } else {
            float *v = malloc((size_t)n * sizeof *v);
            for (int64_t k = 0; k < n; k++) v[k] = (float)th_sym(1.0);
            rc = tnn_upload_f32(s, in[i], v, (size_t)n);
            free(v);
        }
    }
    if (rc == TNN_OK) rc = tnn_compute(s);
    if (rc != TNN_OK) {
        fprintf(stderr, "%s run failed: %s\n", cuda ? "cuda" : "cpu", tnn_last_error());
        tnn_session_free(s);
        return NULL;
    }
    int64_t total = tnn_tensor_nelements(out);
    for (int i = 0; i < nin; i++)
        if (grads && ins[i].param) total += numel(&ins[i]);
    double *res = th_alloc((size_t)total);
    float *buf = malloc((size_t)total * sizeof *buf);
    int64_t at = tnn_tensor_nelements(out);
    tnn_download_f32(s, out, buf, (size_t)at);
    for (int i = 0; i < nin; i++) {
        if (!grads || !ins[i].param) continue;
        int64_t n = numel(&ins[i]);
        tnn_download_f32(s, tnn_grad(s, in[i]), buf + at, (size_t)n);
        at += n;
    }
    for (int64_t k = 0; k < total; k++) res[k] = buf[k];
    free(buf);
    tnn_session_free(s);
    *n_out = total;
    return res;
}

/* The same graph on both backends: max |gpu - cpu| <= tol * max |cpu|. */
static void twin(const char *name, build_fn build, const in_spec *ins, int nin, bool grads,
                 double tol) {
    int64_t nc = 0, ng = 0;
    double *c = run_on(0, build, ins, nin, grads, 7, &nc);
    double *g = run_on(1, build, ins, nin, grads, 7, &ng);
    CHECK(c && g && nc == ng, "%s: a run failed", name);
    if (c && g && nc == ng) {
        double scale = 1e-30;
        for (int64_t i = 0; i < nc; i++) scale = fmax(scale, fabs(c[i]));
        double err = th_err(g, c, (size_t)nc, tol * scale, 0.0);
        CHECK(err <= 1.0, "%s: error %.3g of the tolerance %.1e (scale %.3g)", name, err, tol, scale);
    }
    free(c);
    free(g);
}

#define F(nd, ...) {TNN_F32, nd, {__VA_ARGS__}, 0, false}
#define P(nd, ...) {TNN_F32, nd, {__VA_ARGS__}, 0, true}
#define I(n, mx) {TNN_I32, 1, {n}, mx, false}

/* ------------------------------------------------------------------------ */
/* Cases                                                                    */
/* ------------------------------------------------------------------------ */

static tnn_tensor *b_add(tnn_session *s, tnn_tensor **x) { return tnn_add(s, x[0], x[1]); }
static tnn_tensor *b_sub(tnn_session *s, tnn_tensor **x) { return tnn_sub(s, x[0], x[1]); }
static tnn_tensor *b_mul(tnn_session *s, tnn_tensor **x) { return tnn_mul(s, x[0], x[1]); }
static tnn_tensor *b_unary(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *a = tnn_gelu(s, x[0]), *b = tnn_silu(s, tnn_scale(s, x[0], -1.5));
    return tnn_add(s, tnn_mul(s, a, b), tnn_gelu_back(s, x[0], tnn_silu_back(s, x[0], x[1])));
}
static tnn_tensor *b_swiglu(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_swiglu(s, x[0], x[1]), tnn_add(s, x[0], x[1]));
}
static tnn_tensor *b_rows(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *y = tnn_softmax(s, x[0]);
    tnn_tensor *a = tnn_softmax_back(s, x[1], y);
    tnn_tensor *b = tnn_rms_norm(s, x[0], x[2], 1e-5);
    tnn_tensor *c = tnn_rms_norm_back(s, x[1], x[0], 1e-5);
    tnn_tensor *d = tnn_layer_norm(s, x[0], x[2], x[3], 1e-5);
    tnn_tensor *e = tnn_layer_norm(s, x[1], NULL, NULL, 1e-5);
    return tnn_add(s, tnn_add(s, tnn_add(s, a, b), tnn_add(s, c, d)), tnn_scale(s, e, 0.5));
}
static tnn_tensor *b_mm_nn(tnn_session *s, tnn_tensor **x) { return tnn_matmul_nn(s, x[0], x[1]); }
static tnn_tensor *b_mm_nt(tnn_session *s, tnn_tensor **x) { return tnn_matmul_nt(s, x[0], x[1]); }
static tnn_tensor *b_mm_tn(tnn_session *s, tnn_tensor **x) { return tnn_matmul_tn(s, x[0], x[1]); }
static tnn_tensor *b_mm_seed(tnn_session *s, tnn_tensor **x) { return tnn_matmul(s, x[0], x[1]); }
static tnn_tensor *b_shape(tnn_session *s, tnn_tensor **x) {
    int axes[4] = {2, 0, 3, 1};
    tnn_tensor *p = tnn_permute(s, x[0], axes); /* (4, 2, 5, 3) */
    int64_t sh[2] = {20, 6};
    tnn_tensor *r = tnn_reshape(s, p, 2, sh);
    tnn_tensor *t = tnn_transpose(s, r);                         /* (6, 20) */
    tnn_tensor *c = tnn_concat(s, t, tnn_narrow(s, t, 0, 1, 3), 0); /* (9, 20) */
    return tnn_concat(s, c, tnn_narrow(s, c, 1, 4, 7), 1);          /* (9, 27) */
}
static tnn_tensor *b_reduce(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *a = tnn_add(s, tnn_sum(s, x[0]), tnn_mean(s, x[0]));
    return tnn_mul(s, x[1], a);
}
static tnn_tensor *b_embed(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *e = tnn_get_rows(s, x[0], x[1]);
    return tnn_add(s, e, tnn_get_rows(s, tnn_get_rows_back(s, x[2], x[1], x[0]), x[1]));
}
static tnn_tensor *b_rope(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *a = tnn_rope(s, x[0], 2, 4, 10000.0, 0);
    tnn_tensor *b = tnn_rope(s, x[0], 2, 4, 500000.0, 1);
    tnn_tensor *c = tnn_rope_ext(s, x[0], 2, x[1], 10000.0, 1, x[2]);
    return tnn_add(s, tnn_add(s, a, b), c);
}
static tnn_tensor *b_attn(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 4, 2, 6), x[3]);
}
/* T = 160: past ATTN_GEMM_MIN_T (the cuBLAS path by default for head size
 * 8), and with head size 64 two whole 64-row tiles of the tensor-core
 * kernels and a part */
static tnn_tensor *b_attn_long(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 4, 2, 160), x[3]);
}
/* T = 515: the cuBLAS path in 4 row blocks of 129, 129, 129, 128 queries */
static tnn_tensor *b_attn_blocks(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 4, 2, 515), x[3]);
}
/* head size 300, beyond the warp kernels' 256 */
static tnn_tensor *b_attn_wide(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 1, 1, 128), x[3]);
}
/* head size 32 on the tensor cores: one kv head for two, T = 70 */
static tnn_tensor *b_attn_fa32(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 2, 1, 70), x[3]);
}
/* 8193 sequences of one token, 8 heads of 32: more blocks than a grid
 * column takes, so the tensor-core path hands it to the warp kernels */
static tnn_tensor *b_attn_many(tnn_session *s, tnn_tensor **x) {
    return tnn_mul(s, tnn_attention(s, x[0], x[1], x[2], 8, 8, 1), x[3]);
}
/* x read by three products (as h by q, k and v): its gradient is a sum of
 * three products, two of them added by the GEMM into the running sum */
static tnn_tensor *b_three(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *q = tnn_matmul_nt(s, x[0], x[1]), *k = tnn_matmul_nt(s, x[0], x[2]);
    tnn_tensor *v = tnn_matmul_nt(s, x[0], x[3]);
    return tnn_add(s, tnn_mul(s, q, k), tnn_silu(s, v));
}
/* the same in mixed precision (model.c's --bf16): bf16 products of the
 * rounded x and weights; the gradient sums added by the bf16 GEMMs */
static tnn_tensor *b_three_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_to_bf16(s, x[0]);
    tnn_tensor *q = tnn_matmul_nt(s, h, tnn_to_bf16(s, x[1]));
    tnn_tensor *k = tnn_matmul_nt(s, h, tnn_to_bf16(s, x[2]));
    tnn_tensor *v = tnn_matmul_nt(s, h, tnn_to_bf16(s, x[3]));
    return tnn_add(s, tnn_mul(s, q, k), tnn_silu(s, v));
}
/* a residual around a normalized product: x's gradient is the residual's
 * plus rms_norm's dx, which its kernel adds into the running sum */
static tnn_tensor *b_resnorm(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_rms_norm(s, x[0], x[1], 1e-5);
    return tnn_mul(s, tnn_add(s, tnn_matmul_nt(s, h, x[2]), x[0]), x[3]);
}
/* a residual add whose result is normalized next (and read again) */
static tnn_tensor *b_addnorm(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *r = tnn_add(s, x[0], x[1]);
    return tnn_mul(s, tnn_add(s, tnn_rms_norm(s, r, x[2], 1e-5), r), x[3]);
}
static tnn_tensor *b_ce(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_matmul_nt(s, x[0], x[1]);
    return tnn_scale(s, tnn_cross_entropy(s, h, x[2], 3), 1.0);
}
/* Mixed precision's forward: a norm, a SwiGLU product, and a residual add
 * with the norm after it, each read only through tnn_to_bf16 by bf16
 * products: their kernels write the rounded values themselves. In b_resid
 * the add's second input is a product read by nothing after the add, so the
 * add runs alone (the rounded rows could land on it) and the norm with its
 * rounding; in b_leaves both inputs are leaves and the three are one. */
static tnn_tensor *mm16(tnn_session *s, tnn_tensor *x16, tnn_tensor *w) {
    return tnn_matmul_nt(s, x16, tnn_to_bf16(s, w));
}
static tnn_tensor *b_norm_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_to_bf16(s, tnn_rms_norm(s, x[0], x[1], 1e-5));
    return tnn_mul(s, mm16(s, h, x[2]), x[3]);
}
static tnn_tensor *b_swiglu_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *f = tnn_to_bf16(s, tnn_swiglu(s, x[0], x[1]));
    return tnn_mul(s, mm16(s, f, x[2]), x[3]);
}
static tnn_tensor *b_resid_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *r = tnn_add(s, x[0], mm16(s, tnn_to_bf16(s, x[0]), x[2]));
    tnn_tensor *h = tnn_to_bf16(s, tnn_rms_norm(s, r, x[1], 1e-5));
    return tnn_mul(s, mm16(s, h, x[2]), x[3]);
}
static tnn_tensor *b_leaves_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *r = tnn_add(s, x[0], x[3]);
    tnn_tensor *h = tnn_to_bf16(s, tnn_rms_norm(s, r, x[1], 1e-5));
    return tnn_mul(s, mm16(s, h, x[2]), x[3]);
}
static int ce_classes; /* cross-entropy over the first ce_classes columns (0: all) */
/* a bf16 LM head (mixed precision): the logits' gradient rounded for the
 * bf16 gradient products, by cross-entropy's backward kernel itself; with
 * ce_classes over that many of the columns (padding) */
static tnn_tensor *b_ce_bf16(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_matmul_nt(s, tnn_to_bf16(s, x[0]), tnn_to_bf16(s, x[1]));
    return ce_classes ? tnn_cross_entropy_padded(s, h, x[2], 3, ce_classes)
                      : tnn_cross_entropy(s, h, x[2], 3);
}
/* A little transformer-like block: every differentiable op on one path. */
static tnn_tensor *b_block(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *h = tnn_rms_norm(s, x[0], x[1], 1e-5);
    tnn_tensor *q = tnn_rope(s, tnn_matmul_nt(s, h, x[2]), 2, 4, 10000.0, 0);
    tnn_tensor *a = tnn_attention(s, q, q, h, 2, 2, 4);
    tnn_tensor *g = tnn_gelu(s, tnn_layer_norm(s, tnn_add(s, a, x[0]), NULL, x[1], 1e-5));
    tnn_tensor *y = tnn_mul(s, tnn_silu(s, g), tnn_softmax(s, tnn_transpose(s, tnn_transpose(s, g))));
    return tnn_cross_entropy(s, tnn_matmul_nn(s, y, x[3]), x[4], -1);
}

/* The tensor-core backward reading the log-sum-exp its forward kept (and D
 * from the forward's output) gives the same bits as running the forward
 * again for them (TNN_CUDA_FLASH_LSE=0), in both precisions. */
static void flash_lse_same(const char *name, build_fn build, const in_spec *ins) {
    for (int tf32 = 0; tf32 < 2; tf32++) {
        if (tf32) setenv("TNN_CUDA_TF32", "1", 1);
        int64_t na = 0, nb = 0;
        double *a = run_on(1, build, ins, 4, true, 9, &na);
        setenv("TNN_CUDA_FLASH_LSE", "0", 1);
        double *b = run_on(1, build, ins, 4, true, 9, &nb);
        unsetenv("TNN_CUDA_FLASH_LSE");
        unsetenv("TNN_CUDA_TF32");
        int64_t diff = -1;
        for (int64_t i = 0; a && b && na == nb && i < na && diff < 0; i++)
            if (a[i] != b[i]) diff = i;
        CHECK(a && b && na == nb && diff < 0,
              "attention %s%s: the kept log-sum-exp's gradients differ from the recomputed "
              "one's at value %lld (%.9g vs %.9g)", name, tf32 ? " (TF32)" : "",
              (long long)diff, diff >= 0 ? a[diff] : 0.0, diff >= 0 ? b[diff] : 0.0);
        free(a);
        free(b);
    }
}

#ifdef TNN_TEST_EMU
void tnn__cu_emu_counts(long *launches, long *d2h, long *graphs);
#endif

/* Kernels launched so far (the emulator counts them; 0 on a GPU). */
static long launches(void) {
    long l = 0;
#ifdef TNN_TEST_EMU
    long d, g;
    tnn__cu_emu_counts(&l, &d, &g);
#endif
    return l;
}

/* Nodes folded into the kernel of the node before them (gradient sums into
 * a GEMM with beta = 1 or into rms_norm_back, adding into the running sum
 * planned in place; swiglu's two gradients; a residual add and the RMS norm
 * after it) against each node its own kernel (TNN_CUDA_FUSE=0): the same
 * values (on a GPU to cuBLAS's rounding of the epilogue), and in the
 * emulator `fewer` launches. */
static void fused_same(const char *name, build_fn build, const in_spec *ins, int nin,
                       int fewer) {
    int64_t na = 0, nb = 0;
    long l0 = launches();
    double *a = run_on(1, build, ins, nin, true, 13, &na);
    long l1 = launches();
    setenv("TNN_CUDA_FUSE", "0", 1);
    double *b = run_on(1, build, ins, nin, true, 13, &nb);
    unsetenv("TNN_CUDA_FUSE");
    long l2 = launches();
    double worst = 0.0, scale = 1e-30;
    for (int64_t i = 0; a && b && na == nb && i < na; i++) {
        worst = fmax(worst, fabs(a[i] - b[i]));
        scale = fmax(scale, fabs(b[i]));
    }
    CHECK(a && b && na == nb && worst <= 1e-6 * scale,
          "%s: %.3g from each node's own kernel (of %.3g)", name, worst, scale);
#ifdef TNN_TEST_EMU
    CHECK(worst == 0.0, "%s: not the emulator's bits (%.3g)", name, worst);
    CHECK((l2 - l1) - (l1 - l0) == fewer, "%s: %ld launches, %ld unfused (want %d fewer)", name,
          l1 - l0, l2 - l1, fewer);
#endif
    (void)l0, (void)l1, (void)l2;
    free(a);
    free(b);
}

static void test_ops(void) {
    in_spec same[2] = {P(2, 7, 33), P(2, 7, 33)};
    in_spec bc[2] = {P(3, 3, 1, 5), P(2, 4, 1)};
    twin("add", b_add, same, 2, true, 1e-6);
    twin("sub broadcast", b_sub, bc, 2, true, 1e-6);
    twin("mul broadcast", b_mul, bc, 2, true, 1e-6);
    in_spec un[2] = {P(2, 5, 300), F(2, 5, 300)};
    twin("gelu/silu and backs", b_unary, un, 2, false, 1e-5);
    in_spec sw[2] = {P(2, 5, 300), P(2, 5, 300)};
    twin("swiglu and its gradients", b_swiglu, sw, 2, true, 1e-5);
    fused_same("swiglu's two gradients", b_swiglu, sw, 2, 1);
    in_spec rows[4] = {P(2, 6, 37), P(2, 6, 37), P(1, 37), P(1, 37)};
    twin("softmax/rms_norm/layer_norm and backs", b_rows, rows, 4, false, 1e-5);
    in_spec nn[2] = {P(3, 2, 5, 7), P(2, 7, 9)};
    in_spec nt[2] = {P(4, 2, 3, 5, 7), P(4, 1, 3, 9, 7)};
    in_spec tn[2] = {P(3, 2, 7, 5), P(3, 1, 7, 4)};
    in_spec sd[2] = {P(2, 6, 8), P(2, 5, 8)};
    twin("matmul_nn batched", b_mm_nn, nn, 2, true, 1e-5);
    twin("matmul_nt broadcast batches", b_mm_nt, nt, 2, true, 1e-5);
    twin("matmul_tn", b_mm_tn, tn, 2, true, 1e-5);
    twin("tnn_matmul (seed layout)", b_mm_seed, sd, 2, true, 1e-5);
    /* TF32 products (inputs rounded to 10-bit mantissas on the tensor
     * cores: about 2^-11 relative each, so 3e-3 of the largest value) */
    setenv("TNN_CUDA_TF32", "1", 1);
    twin("TF32: matmul_nn batched", b_mm_nn, nn, 2, true, 3e-3);
    twin("TF32: matmul_nt broadcast batches", b_mm_nt, nt, 2, true, 3e-3);
    twin("TF32: matmul_tn", b_mm_tn, tn, 2, true, 3e-3);
    unsetenv("TNN_CUDA_TF32");
    /* tinynn's own GEMM kernel (machines without cuBLAS) on the same shapes */
    setenv("TNN_CUDA_GEMM", "own", 1);
    twin("own GEMM: matmul_nn batched", b_mm_nn, nn, 2, true, 1e-5);
    twin("own GEMM: matmul_nt broadcast batches", b_mm_nt, nt, 2, true, 1e-5);
    twin("own GEMM: matmul_tn", b_mm_tn, tn, 2, true, 1e-5);
    in_spec big[2] = {P(2, 70, 33), P(2, 130, 33)};
    twin("own GEMM: 70 x 33 x 130 (several tiles)", b_mm_nt, big, 2, true, 1e-5);
    in_spec bfo[2] = {P(2, 5, 16), {TNN_BF16, 2, {7, 16}, 0, false}};
    twin("own GEMM: bf16 weights widened", b_mm_nt, bfo, 2, true, 5e-3);
    /* bf16 activations too: both widened for the f32 product (exact values,
     * f32 sums on both sides) */
    in_spec bb[2] = {{TNN_BF16, 3, {2, 5, 16}, 0, false}, {TNN_BF16, 2, {7, 16}, 0, false}};
    twin("own GEMM: bf16 activations and weights widened", b_mm_nt, bb, 2, false, 1e-5);
    unsetenv("TNN_CUDA_GEMM");
    /* ... and on the tensor cores, read as they are (no rounding pass) */
    twin("matmul_nt, bf16 activations and weights", b_mm_nt, bb, 2, false, 1e-5);
    in_spec bbn[2] = {{TNN_BF16, 2, {5, 16}, 0, false}, {TNN_BF16, 2, {16, 7}, 0, false}};
    twin("matmul_nn, bf16 activations and weights", b_mm_nn, bbn, 2, false, 1e-5);
    /* bf16 weights: the GPU widens them and multiplies in f32; a CPU with
     * AVX512_BF16 also rounds the activations to bf16 (2^-9 relative each) */
    in_spec bf[2] = {P(3, 2, 5, 16), {TNN_BF16, 2, {7, 16}, 0, false}};
    twin("matmul_nt with bf16 weights", b_mm_nt, bf, 2, true, 5e-3);
    in_spec bfn[2] = {P(2, 5, 16), {TNN_BF16, 2, {16, 7}, 0, false}};
    twin("matmul_nn with bf16 weights", b_mm_nn, bfn, 2, true, 5e-3);
    in_spec sh[1] = {P(4, 2, 3, 4, 5)};
    twin("permute/reshape/transpose/concat/narrow", b_shape, sh, 1, true, 1e-7);
    in_spec rd[2] = {P(2, 9, 70), P(2, 3, 1)};
    twin("sum/mean/expand/reduce_to", b_reduce, rd, 2, true, 1e-6);
    in_spec em[3] = {P(2, 11, 6), I(9, 11), P(2, 9, 6)};
    twin("get_rows/get_rows_back", b_embed, em, 3, true, 1e-6);
    in_spec ro[3] = {P(2, 8, 16), I(8, 100), F(1, 4)};
    twin("rope modes, rope_ext", b_rope, ro, 3, true, 1e-5);
    in_spec ro72[3] = {P(2, 72, 16), I(72, 1000), F(1, 4)}; /* a thread per pair, every head */
    twin("rope modes, rope_ext, 72 rows", b_rope, ro72, 3, true, 1e-5);
    in_spec at[4] = {P(2, 12, 32), P(2, 12, 16), P(2, 12, 16), F(2, 12, 32)};
    twin("attention GQA forward/backward", b_attn, at, 4, true, 1e-5);
    /* the score matrices through cuBLAS (the default from T = 128), forced
     * here at T = 6 and on a block; the warp kernels forced at T = 160 */
    in_spec al[4] = {P(2, 320, 32), P(2, 320, 16), P(2, 320, 16), F(2, 320, 32)};
    in_spec aw[4] = {P(2, 256, 300), P(2, 256, 300), P(2, 256, 300), F(2, 256, 300)};
    in_spec bl[5] = {P(2, 8, 8), P(1, 8), P(2, 8, 8), P(2, 8, 12), I(8, 12)};
    setenv("TNN_CUDA_ATTN", "gemm", 1);
    twin("attention GQA forward/backward, cuBLAS path", b_attn, at, 4, true, 1e-5);
    twin("block: gradients of every parameter, cuBLAS attention", b_block, bl, 5, true, 1e-4);
    setenv("TNN_CUDA_GEMM", "own", 1); /* its alpha, beta and row length of C */
    twin("attention GQA forward/backward, own GEMM kernel", b_attn, at, 4, true, 1e-5);
    unsetenv("TNN_CUDA_GEMM");
    setenv("TNN_CUDA_ATTN", "rows", 1);
    twin("attention T = 160, warp kernels", b_attn_long, al, 4, true, 1e-5);
    unsetenv("TNN_CUDA_ATTN");
    twin("attention T = 160 (cuBLAS path)", b_attn_long, al, 4, true, 1e-5);
    setenv("TNN_CUDA_TF32", "1", 1);
    twin("attention T = 160 (cuBLAS path, TF32)", b_attn_long, al, 4, true, 5e-3);
    unsetenv("TNN_CUDA_TF32");
    twin("attention head size 300, T = 128 (cuBLAS path)", b_attn_wide, aw, 4, true, 1e-5);
    /* the tensor-core kernels (3xTF32, and one TF32 pass), and the other
     * paths on the same shapes */
    in_spec f64[4] = {P(2, 320, 256), P(2, 320, 128), P(2, 320, 128), F(2, 320, 256)};
    in_spec f32[4] = {P(2, 210, 64), P(2, 210, 32), P(2, 210, 32), F(2, 210, 64)};
    twin("attention head size 64, T = 160 (tensor cores)", b_attn_long, f64, 4, true, 1e-5);
    twin("attention head size 32, MQA, T = 70 (tensor cores)", b_attn_fa32, f32, 4, true, 1e-5);
    setenv("TNN_CUDA_TF32", "1", 1);
    twin("attention head size 64, T = 160 (tensor cores, TF32)", b_attn_long, f64, 4, true,
         5e-3);
    twin("attention head size 32, MQA, T = 70 (tensor cores, TF32)", b_attn_fa32, f32, 4, true,
         5e-3);
    unsetenv("TNN_CUDA_TF32");
    flash_lse_same("head size 64", b_attn_long, f64);
    flash_lse_same("head size 32, MQA", b_attn_fa32, f32);
    in_spec many[4] = {F(2, 8193, 256), F(2, 8193, 256), F(2, 8193, 256), F(2, 8193, 256)};
    twin("attention of 8193 x 8 heads (past the tensor-core kernels' grid)", b_attn_many, many, 4,
         false, 1e-5);
    setenv("TNN_CUDA_ATTN", "gemm", 1);
    twin("attention head size 64, T = 160 (cuBLAS path)", b_attn_long, f64, 4, true, 1e-5);
    setenv("TNN_CUDA_ATTN", "rows", 1);
    twin("attention head size 32, MQA, T = 70 (warp kernels)", b_attn_fa32, f32, 4, true, 1e-5);
    unsetenv("TNN_CUDA_ATTN");
    in_spec ab[4] = {P(2, 1030, 32), P(2, 1030, 16), P(2, 1030, 16), F(2, 1030, 32)};
    twin("attention T = 515, 4 row blocks (cuBLAS path)", b_attn_blocks, ab, 4, true, 1e-5);
    setenv("TNN_CUDA_ATTN_BLOCKS", "1", 1);
    twin("attention T = 515, one row block (cuBLAS path)", b_attn_blocks, ab, 4, true, 1e-5);
    setenv("TNN_CUDA_ATTN_BLOCKS", "7", 1);
    twin("attention T = 515, 7 row blocks (cuBLAS path)", b_attn_blocks, ab, 4, true, 1e-5);
    unsetenv("TNN_CUDA_ATTN_BLOCKS");
    in_spec three[4] = {P(2, 40, 24), P(2, 16, 24), P(2, 16, 24), P(2, 16, 24)};
    twin("three products of one input (gradient sums in the GEMMs)", b_three, three, 4, true,
         1e-5);
    fused_same("gradient sums in the GEMMs", b_three, three, 4, 2);
    twin("three bf16 products of one rounded input (bf16 gradient products)", b_three_bf16,
         three, 4, true, 5e-3);
    fused_same("gradient sums in the bf16 GEMMs", b_three_bf16, three, 4, 2);
    in_spec rn[4] = {P(2, 40, 24), P(1, 24), P(2, 24, 24), F(2, 40, 24)};
    twin("a residual around a normalized product (dx summed in rms_norm_back)", b_resnorm, rn,
         4, true, 1e-5);
    fused_same("a gradient sum in rms_norm_back", b_resnorm, rn, 4, 1);
    in_spec an[4] = {P(2, 40, 24), P(2, 40, 24), P(1, 24), F(2, 40, 24)};
    twin("a residual add and the RMS norm after it", b_addnorm, an, 4, true, 1e-5);
    fused_same("a residual add and the RMS norm after it", b_addnorm, an, 4, 1);
    in_spec nb[4] = {P(2, 40, 24), P(1, 24), P(2, 24, 24), F(2, 40, 24)};
    twin("a norm read by bf16 products", b_norm_bf16, nb, 4, true, 5e-3);
    fused_same("a norm written rounded to bf16", b_norm_bf16, nb, 4, 1);
    twin("a residual add and a norm read by bf16 products", b_resid_bf16, nb, 4, true, 5e-3);
    fused_same("a residual add, then a norm written rounded to bf16", b_resid_bf16, nb, 4, 1);
    in_spec lb[4] = {F(2, 40, 24), P(1, 24), P(2, 24, 24), F(2, 40, 24)};
    twin("a residual add of leaves and a norm read by bf16 products", b_leaves_bf16, lb, 4, true,
         5e-3);
    fused_same("a residual add and a norm written rounded to bf16: one kernel", b_leaves_bf16, lb,
               4, 2);
    in_spec sb[4] = {P(2, 40, 24), P(2, 40, 24), P(2, 16, 24), F(2, 40, 16)};
    twin("a SwiGLU product read by bf16 products", b_swiglu_bf16, sb, 4, true, 5e-3);
    /* (and its two gradients in one pass) */
    fused_same("a SwiGLU product written rounded to bf16", b_swiglu_bf16, sb, 4, 2);
    /* the logits are a product's, not kept: cross-entropy's gradient is
     * written over them, past the backward kernel's shared-memory row too */
    in_spec cebig[3] = {P(2, 6, 8), P(2, 60001, 8), I(6, 60001)};
    twin("cross_entropy over 60001 classes, its gradient over the logits", b_ce, cebig, 3,
         true, 1e-5);
    in_spec ce[3] = {P(2, 10, 8), P(2, 13, 8), I(10, 13)};
    twin("cross_entropy (ignore 3)", b_ce, ce, 3, true, 1e-5);
    twin("a bf16 LM head (cross_entropy's gradient rounded in its kernel)", b_ce_bf16, ce, 3,
         true, 5e-3);
    fused_same("cross_entropy's gradient rounded to bf16 in its kernel (13 columns)", b_ce_bf16,
               ce, 3, 1);
    in_spec ce2[3] = {P(2, 10, 8), P(2, 4099, 8), I(10, 4099)};
    fused_same("cross_entropy's gradient rounded to bf16 in its kernel (4099 columns)",
               b_ce_bf16, ce2, 3, 1);
    in_spec ce3[3] = {P(2, 10, 8), P(2, 16, 8), I(10, 13)};
    ce_classes = 13;
    twin("a padded bf16 LM head (13 of 16 columns)", b_ce_bf16, ce3, 3, true, 5e-3);
    fused_same("cross_entropy_padded's gradient rounded to bf16 in its kernel (13 of 16)",
               b_ce_bf16, ce3, 3, 1);
    ce_classes = 0;
    twin("block: gradients of every parameter", b_block, bl, 5, true, 1e-4);
}

/* ------------------------------------------------------------------------ */
/* Embedding gradients, bit for bit                                         */
/* ------------------------------------------------------------------------ */

/* get_rows_back of n rows of d on a CUDA session into out (V x d); returns
 * tnn_compute's status, its message (if any) copied into msg. */
static int grb_gpu(int n, int d, int V, const int32_t *idx, const float *dout, float *out,
                   char *msg, size_t msg_size) {
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *g = tnn_input_2d_f32(s, n, d), *ix = tnn_input_1d_i32(s, n);
    tnn_tensor *tab = tnn_input_2d_f32(s, V, d);
    tnn_tensor *r = tnn_get_rows_back(s, g, ix, tab);
    tnn_set_output(r);
    int rc = tnn_realize(s, r);
    if (rc == TNN_OK) rc = tnn_upload_f32(s, g, dout, (size_t)n * d);
    if (rc == TNN_OK) rc = tnn_upload_i32(s, ix, idx, (size_t)n);
    int crc = rc == TNN_OK ? tnn_compute(s) : rc;
    snprintf(msg, msg_size, "%s", crc == TNN_OK ? "" : tnn_last_error());
    if (rc == TNN_OK) CHECK_OK(tnn_download_f32(s, r, out, (size_t)V * d));
    tnn_session_free(s);
    return crc;
}

/* One case: random values of many magnitudes (so that another order of the
 * sums gives other bits), the result against a serial loop in i from +0
 * (what the CPU computes), compared bit for bit. bad_at >= 0: the first
 * row whose index is out of range, which the compute must report (the
 * other rows still summed). */
static void grb_case(const char *name, int n, int d, int V, const int32_t *idx, int bad_at) {
    float *dout = malloc((size_t)n * d * sizeof *dout);
    float *ref = calloc((size_t)V * d, sizeof *ref), *got = malloc((size_t)V * d * sizeof *got);
    th_seed(11);
    for (int64_t k = 0; k < (int64_t)n * d; k++)
        dout[k] = (float)(th_sym(1.0) * ldexp(1.0, (int)(th_uniform() * 24) - 12));
    for (int i = 0; i < n; i++)
        if (idx[i] >= 0 && idx[i] < V)
            for (int j = 0; j < d; j++) ref[(int64_t)idx[i] * d + j] += dout[(int64_t)i * d + j];
    char msg[512], want[128];
    int rc = grb_gpu(n, d, V, idx, dout, got, msg, sizeof msg);
    if (bad_at < 0) {
        CHECK(rc == TNN_OK, "%s: compute failed: %s", name, msg);
    } else {
        snprintf(want, sizeof want, "idx[%d] = %d is outside [0, %d)", bad_at, idx[bad_at], V);
        CHECK(rc == TNN_ERR_RANGE && strstr(msg, want), "%s: got %d '%s', want '%s'", name, rc,
              msg, want);
    }
    int64_t diff = 0, first = -1;
    for (int64_t k = 0; k < (int64_t)V * d; k++)
        if (memcmp(&got[k], &ref[k], sizeof(float))) {
            if (first < 0) first = k;
            diff++;
        }
    CHECK(diff == 0, "%s: %lld of %lld values differ from the serial sums (first: row %lld "
          "col %lld, %.9g vs %.9g)", name, (long long)diff, (long long)V * d,
          (long long)(first / d), (long long)(first % d), first >= 0 ? got[first] : 0.0,
          first >= 0 ? ref[first] : 0.0);
    free(dout);
    free(ref);
    free(got);
}

static void test_get_rows_back(void) {
    enum { N = 2500, NR = 3000 }; /* past the kernel's chunks of 1024 rows */
    static int32_t idx[NR];
    for (int i = 0; i < N; i++) idx[i] = 3;
    grb_case("get_rows_back, one index for all 2500 rows", N, 37, 5, idx, -1);
    for (int i = 0; i < N; i++) idx[i] = i % 7;
    grb_case("get_rows_back, indices 0..6 interleaved", N, 37, 9, idx, -1);
    /* runs, repeats far apart and single rows */
    th_seed(5);
    for (int i = 0; i < NR; i++)
        idx[i] = i % 500 < 40 ? 7 : th_uniform() < 0.5 ? (int32_t)(th_uniform() * 300)
                                                         : (int32_t)(300 + th_uniform() * 900);
    grb_case("get_rows_back, random repeats", NR, 70, 1200, idx, -1);
    idx[0] = 2;
    grb_case("get_rows_back, one row", 1, 3, 4, idx, -1);
    for (int i = 0; i < 1500; i++) idx[i] = (int32_t)(th_uniform() * 50);
    idx[1100] = -1; /* the first bad row: past the first chunk */
    idx[1101] = 50;
    idx[1300] = -1;
    idx[1400] = 1000;
    grb_case("get_rows_back, indices out of range", 1500, 5, 50, idx, 1100);
}

/* ------------------------------------------------------------------------ */
/* Cross-entropy rows                                                       */
/* ------------------------------------------------------------------------ */

static int ce_ign;
/* The logits a product of the inputs, so that the backward pass writes a
 * buffer of its own (of garbage until then), not a zeroed gradient; with
 * ce_classes, over that many of each row's columns. */
static tnn_tensor *b_ce_rows(tnn_session *s, tnn_tensor **x) {
    tnn_tensor *lg = tnn_scale(s, x[0], 2.0);
    return ce_classes ? tnn_cross_entropy_padded(s, lg, x[1], ce_ign, ce_classes)
                      : tnn_cross_entropy(s, lg, x[1], ce_ign);
}

/* The loss (to 1e-6 of the CPU's, whose sums are in double) and the
 * logits' gradient (to 1e-5 of its largest value) of N rows of V logits,
 * targets in [0, imax) (imax < 0: all -imax), ignore index ign. */
static void ce_case(const char *name, int N, int V, int imax, int ign) {
    in_spec in[2] = {P(2, N, V), I(N, imax)};
    int64_t nc = 0, ng = 0;
    ce_ign = ign;
    double *c = run_on(0, b_ce_rows, in, 2, true, 9, &nc);
    double *g = run_on(1, b_ce_rows, in, 2, true, 9, &ng);
    CHECK(c && g && nc == ng && nc == 1 + (int64_t)N * V, "%s: a run failed", name);
    if (c && g && nc == ng) {
        CHECK(fabs(g[0] - c[0]) <= 1e-6 * fabs(c[0]), "%s: loss %.9g, CPU %.9g", name, g[0],
              c[0]);
        double scale = 1e-30;
        for (int64_t i = 1; i < nc; i++) scale = fmax(scale, fabs(c[i]));
        double err = th_err(g + 1, c + 1, (size_t)nc - 1, 1e-5 * scale, 0.0);
        CHECK(err <= 1.0, "%s: gradient error %.3g of the tolerance (scale %.3g)", name, err,
              scale);
    }
    free(c);
    free(g);
}

/* Two computes on one session, the second with rows 1 and 4 ignored: the
 * backward pass must write those rows' zeros over the first compute's
 * values (buffers are zeroed only when allocated). Into out: the loss and
 * the logits' gradient of the second compute. */
enum { CE2_N = 6, CE2_V = 4099 };
static void ce_twice(int cuda, float *out) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x = tnn_input_2d_f32(s, CE2_N, CE2_V), *tg = tnn_input_1d_i32(s, CE2_N);
    tnn_set_param(x);
    tnn_tensor *loss = tnn_cross_entropy(s, tnn_scale(s, x, 2.0), tg, 5);
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    float *xv = malloc((size_t)CE2_N * CE2_V * sizeof *xv);
    th_seed(21);
    for (int64_t k = 0; k < (int64_t)CE2_N * CE2_V; k++) xv[k] = (float)th_sym(3.0);
    int32_t a[CE2_N] = {0, 7, 4098, 2, 4000, 1}, b[CE2_N] = {0, 5, 4098, 2, 5, 1};
    CHECK_OK(tnn_upload_f32(s, x, xv, (size_t)CE2_N * CE2_V));
    CHECK_OK(tnn_upload_i32(s, tg, a, CE2_N));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_upload_i32(s, tg, b, CE2_N));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, loss, out, 1));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), out + 1, (size_t)CE2_N * CE2_V));
    free(xv);
    tnn_session_free(s);
}

static void test_ce_rows(void) {
    enum { n = 1 + CE2_N * CE2_V };
    static float c[n], g[n];
    ce_twice(0, c);
    ce_twice(1, g);
    double worst = 0.0, scale = 1e-30;
    for (int k = 1; k < n; k++) {
        worst = fmax(worst, fabs((double)g[k] - c[k]));
        scale = fmax(scale, fabs(c[k]));
    }
    CHECK(fabs(g[0] - c[0]) <= 1e-6 * fabs(c[0]) && worst <= 1e-5 * scale,
          "cross_entropy, rows ignored on the second compute: loss %.9g (CPU %.9g), gradient "
          "off by %.3g of %.3g", g[0], c[0], worst, scale);

    /* odd V: rows start at every 4-byte offset of a 16-byte group */
    ce_case("cross_entropy, V = 20001, 6 rows", 6, 20001, 20001, -1);
    /* past the 226 KiB the emulator's backward keeps of a row */
    ce_case("cross_entropy, V = 60001, 5 rows, ignored rows", 5, 60001, 3, 1);
    ce_case("cross_entropy, V = 7, ignored rows", 8, 7, 7, 3);
    ce_case("cross_entropy, V = 3", 5, 3, 3, 0);
    ce_case("cross_entropy, V = 5, 1030 rows", 1030, 5, 5, 4); /* rows past 1024 threads */
    ce_case("cross_entropy, every row ignored", 4, 9, -2, 2);
    /* padded rows: classes then zeros, both row ends off and on 16 bytes */
    ce_classes = 60001;
    ce_case("cross_entropy_padded, 60001 of 60032 columns", 5, 60032, 60001, 1);
    ce_classes = 7;
    ce_case("cross_entropy_padded, 7 of 13 columns, ignored rows", 9, 13, 7, 2);
    ce_classes = 50257;
    ce_case("cross_entropy_padded, 50257 of 50304 columns", 3, 50304, 50257, -1);
    ce_classes = 0;
}

/* ------------------------------------------------------------------------ */
/* RoPE angles                                                              */
/* ------------------------------------------------------------------------ */

/* RoPE of rows of pairs (1, 0): the results are the cosines and sines
 * themselves. Positions up to 130000, two bases, frequency factors, both
 * pairings. Into out: RT_N values. */
enum { RT_R = 64, RT_H = 2, RT_HD = 32, RT_W = RT_H * RT_HD, RT_N = 3 * RT_R * RT_W };
static void rope_table(int cuda, float *out) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x0 = tnn_input_2d_f32(s, RT_R, RT_W), *x1 = tnn_input_2d_f32(s, RT_R, RT_W);
    tnn_tensor *pos = tnn_input_1d_i32(s, RT_R), *fac = tnn_input_1d_f32(s, RT_HD / 2);
    tnn_tensor *y[3] = {tnn_rope_ext(s, x0, RT_H, pos, 500000.0, 0, fac),
                        tnn_rope_ext(s, x0, RT_H, pos, 10000.0, 0, NULL),
                        tnn_rope(s, x1, RT_H, RT_R, 10000.0, 1)};
    for (int k = 0; k < 3; k++) {
        tnn_set_output(y[k]);
        CHECK_OK(tnn_realize(s, y[k]));
    }
    float a[RT_R * RT_W], b[RT_R * RT_W], f[RT_HD / 2];
    int32_t p[RT_R];
    for (int k = 0; k < RT_R * RT_W; k++) {
        int i = k % RT_HD;
        a[k] = i % 2 ? 0.0f : 1.0f;          /* pairs (2i, 2i + 1) */
        b[k] = i < RT_HD / 2 ? 1.0f : 0.0f; /* pairs (i, i + hd/2) */
    }
    for (int r = 0; r < RT_R; r++) p[r] = r * 2039 + 7;
    for (int i = 0; i < RT_HD / 2; i++) f[i] = 1.0f + 0.37f * (float)i;
    CHECK_OK(tnn_upload_f32(s, x0, a, RT_R * RT_W));
    CHECK_OK(tnn_upload_f32(s, x1, b, RT_R * RT_W));
    CHECK_OK(tnn_upload_i32(s, pos, p, RT_R));
    CHECK_OK(tnn_upload_f32(s, fac, f, RT_HD / 2));
    CHECK_OK(tnn_compute(s));
    for (int k = 0; k < 3; k++)
        CHECK_OK(tnn_download_f32(s, y[k], out + k * RT_R * RT_W, RT_R * RT_W));
    tnn_session_free(s);
}

/* Floats apart, counting each representable value between (+0 and -0 the
 * same). */
static int64_t ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return llabs((int64_t)ia - ib);
}

/* The GPU's cosines and sines are the CPU's floats: the same bits on the
 * emulator (the same libm), within an ulp on a GPU (its double cos, sin and
 * pow are within 2 ulps of the double value before rounding to float). */
static void test_rope_angles(void) {
    static float c[RT_N], g[RT_N];
    rope_table(0, c);
    rope_table(1, g);
    int64_t worst = 0, at = 0;
    for (int k = 0; k < RT_N; k++)
        if (ulps(g[k], c[k]) > worst) worst = ulps(g[k], c[k]), at = k;
#ifdef TNN_TEST_EMU
    int64_t allowed = 0;
#else
    int64_t allowed = 1;
#endif
    CHECK(worst <= allowed, "RoPE cos/sin: %lld ulps from the CPU's (value %d: %.9g vs %.9g)",
          (long long)worst, (int)at, g[at], c[at]);
}

/* ------------------------------------------------------------------------ */
/* Optimizer steps                                                          */
/* ------------------------------------------------------------------------ */

/* AdamW (lr 0.05, weight decay 0.1) or SGD (lr 0.1, momentum 0.9, decay
 * 0.01) on s's parameters, clipping at `clip`, and the realized loss. */
static void optim_setup(tnn_session *s, tnn_tensor *loss, int adamw, double clip) {
    CHECK_OK(tnn_backward(s, loss));
    if (adamw)
        CHECK_OK(tnn_optimizer_adamw(s, 0.05, 0.9, 0.999, 1e-8, 0.1));
    else
        CHECK_OK(tnn_optimizer_sgd(s, 0.1, 0.9, 0.01));
    CHECK_OK(tnn_set_grad_clip(s, clip));
    CHECK_OK(tnn_realize(s, loss));
}

/* Three AdamW (or SGD) steps of a tiny regression on both backends. */
static void optim_run(int cuda, int adamw, float *out, int64_t *losses_ok) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x = tnn_input_2d_f32(s, 6, 5), *w = tnn_input_2d_f32(s, 4, 5);
    tnn_tensor *b = tnn_input_1d_f32(s, 4);
    tnn_set_param(w);
    tnn_set_param(b);
    tnn_set_no_decay(b);
    tnn_tensor *loss = tnn_mean(s, tnn_mul(s, tnn_add(s, tnn_matmul_nt(s, x, w), b),
                                           tnn_add(s, tnn_matmul_nt(s, x, w), b)));
    optim_setup(s, loss, adamw, 0.5);
    float xv[30], wv[20], bv[4];
    th_seed(3);
    for (int i = 0; i < 30; i++) xv[i] = (float)th_sym(1.0);
    for (int i = 0; i < 20; i++) wv[i] = (float)th_sym(1.0);
    for (int i = 0; i < 4; i++) bv[i] = (float)th_sym(1.0);
    CHECK_OK(tnn_upload_f32(s, x, xv, 30));
    CHECK_OK(tnn_upload_f32(s, w, wv, 20));
    CHECK_OK(tnn_upload_f32(s, b, bv, 4));
    for (int k = 0; k < 3; k++) CHECK_OK(tnn_compute(s));
    *losses_ok = tnn_optimizer_steps(s);
    CHECK_OK(tnn_download_f32(s, w, out, 20));
    CHECK_OK(tnn_download_f32(s, b, out + 20, 4));
    CHECK_OK(tnn_optimizer_get_state(s, w, 0, out + 24, 20));
    tnn_session_free(s);
}

static void test_optim(void) {
    for (int adamw = 0; adamw < 2; adamw++) {
        float c[44], g[44];
        int64_t sc = 0, sg = 0;
        optim_run(0, adamw, c, &sc);
        optim_run(1, adamw, g, &sg);
        double worst = 0.0;
        for (int i = 0; i < 44; i++) worst = fmax(worst, fabs((double)c[i] - g[i]));
        CHECK(sc == 3 && sg == 3, "steps %lld / %lld", (long long)sc, (long long)sg);
        CHECK(worst < 1e-5, "%s: parameters and moments differ by %.3g", adamw ? "AdamW" : "SGD",
              worst);
    }
}

/* Parameters across the GPU optimizer's chunk edges (4096 values), some
 * without weight decay, clipped, with a step in the middle whose loss is
 * not finite: both backends skip that one step, leave every parameter and
 * moment as it was, and agree before and after. */
enum { N_OPT = 5 };
static const int64_t optim_sizes[N_OPT] = {1, 4095, 4096, 4097, 9000};
#define OPT_VALS (1 + 4095 + 4096 + 4097 + 9000)

typedef struct {
    float w[OPT_VALS], m[OPT_VALS], v[OPT_VALS];
    int64_t steps, skipped;
    double nan_norm, norm;
    int kept; /* the skipped step left w, m and v as they were, bit for bit */
} optim_out;

static void optim_state(tnn_session *s, tnn_tensor **w, int adamw, float *dw, float *dm,
                        float *dv) {
    for (int k = 0, o = 0; k < N_OPT; o += (int)optim_sizes[k], k++) {
        size_t n = (size_t)optim_sizes[k];
        CHECK_OK(tnn_download_f32(s, w[k], dw + o, n));
        CHECK_OK(tnn_optimizer_get_state(s, w[k], 0, dm + o, n));
        if (adamw) CHECK_OK(tnn_optimizer_get_state(s, w[k], 1, dv + o, n));
    }
}

static void optim_many_run(int cuda, int adamw, optim_out *r) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x[N_OPT], *w[N_OPT], *loss = NULL;
    for (int k = 0; k < N_OPT; k++) {
        x[k] = tnn_input_1d_f32(s, optim_sizes[k]);
        w[k] = tnn_input_1d_f32(s, optim_sizes[k]);
        tnn_set_param(w[k]);
        if (k & 1) tnn_set_no_decay(w[k]);
        tnn_tensor *y = tnn_mul(s, w[k], x[k]), *term = tnn_sum(s, tnn_mul(s, y, y));
        loss = loss ? tnn_add(s, loss, term) : term;
    }
    optim_setup(s, loss, adamw, 1.0);
    static float xv[OPT_VALS], wv[OPT_VALS], w0[OPT_VALS], m0[OPT_VALS], v0[OPT_VALS];
    th_seed(11);
    for (int i = 0; i < OPT_VALS; i++) xv[i] = (float)th_sym(1.0);
    for (int i = 0; i < OPT_VALS; i++) wv[i] = (float)th_sym(1.0);
    for (int k = 0, o = 0; k < N_OPT; o += (int)optim_sizes[k], k++) {
        CHECK_OK(tnn_upload_f32(s, x[k], xv + o, (size_t)optim_sizes[k]));
        CHECK_OK(tnn_upload_f32(s, w[k], wv + o, (size_t)optim_sizes[k]));
    }
    CHECK_OK(tnn_compute(s));
    optim_state(s, w, adamw, w0, m0, v0);
    float bad = NAN; /* one input value not finite: so are the loss and the norm */
    CHECK_OK(tnn_upload_f32(s, x[0], &bad, 1));
    CHECK_OK(tnn_compute(s));
    r->nan_norm = tnn_grad_norm(s);
    optim_state(s, w, adamw, r->w, r->m, r->v);
    r->kept = !memcmp(w0, r->w, sizeof w0) && !memcmp(m0, r->m, sizeof m0) &&
              (!adamw || !memcmp(v0, r->v, sizeof v0));
    CHECK_OK(tnn_upload_f32(s, x[0], xv, 1));
    for (int k = 0; k < 3; k++) CHECK_OK(tnn_compute(s));
    r->norm = tnn_grad_norm(s);
    r->steps = tnn_optimizer_steps(s);
    r->skipped = tnn_optimizer_skipped(s);
    optim_state(s, w, adamw, r->w, r->m, r->v);
    tnn_session_free(s);
}

static void test_optim_many(void) {
    static optim_out c, g;
    for (int adamw = 0; adamw < 2; adamw++) {
        optim_many_run(0, adamw, &c);
        optim_many_run(1, adamw, &g);
        const char *name = adamw ? "AdamW" : "SGD";
        CHECK(c.steps == 4 && g.steps == 4 && c.skipped == 1 && g.skipped == 1,
              "%s: steps %lld / %lld, skipped %lld / %lld", name, (long long)c.steps,
              (long long)g.steps, (long long)c.skipped, (long long)g.skipped);
        CHECK(c.kept && g.kept, "%s: the skipped step changed the state (CPU %d, CUDA %d)", name,
              !c.kept, !g.kept);
        CHECK(isnan(c.nan_norm) && isnan(g.nan_norm), "%s: norms of the skipped step %g / %g",
              name, c.nan_norm, g.nan_norm);
        CHECK(c.norm > 1.0 && fabs(c.norm - g.norm) <= 1e-9 * c.norm,
              "%s: gradient norms %.17g / %.17g (want > the clip, 1)", name, c.norm, g.norm);
        double worst = 0.0;
        for (int i = 0; i < OPT_VALS; i++) {
            worst = fmax(worst, fabs((double)c.w[i] - g.w[i]));
            worst = fmax(worst, fabs((double)c.m[i] - g.m[i]));
            if (adamw) worst = fmax(worst, fabs((double)c.v[i] - g.v[i]));
        }
        CHECK(worst < 1e-6, "%s: parameters and moments differ by %.3g", name, worst);
    }
}

/* A CUDA session with a linear classifier, cross-entropy of x (n x d) W^T
 * against n targets, its backward graph and AdamW. */
static tnn_session *classifier(int64_t n, int64_t d, int64_t classes, double lr, double wd,
                               tnn_tensor **x, tnn_tensor **w, tnn_tensor **tg,
                               tnn_tensor **loss) {
    tnn_session *s = tnn_session_new(1);
    *x = tnn_input_2d_f32(s, n, d);
    *w = tnn_input_2d_f32(s, classes, d);
    *tg = tnn_input_1d_i32(s, n);
    tnn_set_param(*w);
    *loss = tnn_cross_entropy(s, tnn_matmul_nt(s, *x, *w), *tg, -1);
    CHECK_OK(tnn_backward(s, *loss));
    CHECK_OK(tnn_optimizer_adamw(s, lr, 0.9, 0.999, 1e-8, wd));
    return s;
}

/* A kernel fault (a target out of range) fails the compute and the step is
 * not taken: parameters and moments as they were, no step counted. */
static void test_optim_fault(void) {
    tnn_tensor *x, *w, *tg, *loss;
    tnn_session *s = classifier(4, 6, 3, 0.05, 0.1, &x, &w, &tg, &loss);
    CHECK_OK(tnn_realize(s, loss));
    float xv[24], wv[18], w1[18], w2[18], m1[18], m2[18];
    th_seed(5);
    for (int i = 0; i < 24; i++) xv[i] = (float)th_sym(1.0);
    for (int i = 0; i < 18; i++) wv[i] = (float)th_sym(1.0);
    int32_t good[4] = {0, 1, 2, 0}, bad[4] = {0, 1, 3, 0};
    CHECK_OK(tnn_upload_f32(s, x, xv, 24));
    CHECK_OK(tnn_upload_f32(s, w, wv, 18));
    CHECK_OK(tnn_upload_i32(s, tg, good, 4));
    for (int k = 0; k < 2; k++) CHECK_OK(tnn_compute(s)); /* the second records the graph */
    CHECK_OK(tnn_download_f32(s, w, w1, 18));
    CHECK_OK(tnn_optimizer_get_state(s, w, 0, m1, 18));
    CHECK_OK(tnn_upload_i32(s, tg, bad, 4));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "targets[2] = 3");
    CHECK_OK(tnn_download_f32(s, w, w2, 18));
    CHECK_OK(tnn_optimizer_get_state(s, w, 0, m2, 18));
    CHECK(!memcmp(w1, w2, sizeof w1) && !memcmp(m1, m2, sizeof m1),
          "the faulted compute changed the parameters or moments");
    CHECK(tnn_optimizer_steps(s) == 2 && tnn_optimizer_skipped(s) == 0,
          "after a fault: steps %lld, skipped %lld", (long long)tnn_optimizer_steps(s),
          (long long)tnn_optimizer_skipped(s));
    CHECK_OK(tnn_upload_i32(s, tg, good, 4));
    CHECK_OK(tnn_compute(s));
    CHECK(tnn_optimizer_steps(s) == 3, "steps %lld", (long long)tnn_optimizer_steps(s));
    tnn_session_free(s);
}

/* Sessions on two host threads at once (they share the device's stream and
 * scratch): each gets the parameters a lone run gets, bit for bit. */
typedef struct {
    int seed;
    float w[20];
    int rc;
} thread_run;

static void *train_thread(void *p) {
    thread_run *r = p;
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *x = tnn_input_2d_f32(s, 64, 32), *w = tnn_input_2d_f32(s, 20, 32);
    tnn_tensor *tg = tnn_input_1d_i32(s, 64);
    tnn_set_param(w);
    tnn_tensor *loss = tnn_cross_entropy(s, tnn_gelu(s, tnn_matmul_nt(s, x, w)), tg, -1);
    r->rc = tnn_backward(s, loss);
    if (!r->rc) r->rc = tnn_optimizer_adamw(s, 0.01, 0.9, 0.999, 1e-8, 0.01);
    if (!r->rc) r->rc = tnn_realize(s, loss);
    float xv[64 * 32], wv[20 * 32];
    int32_t t[64];
    for (int i = 0; i < 64 * 32; i++) xv[i] = (float)(((i + r->seed) * 37 % 101) - 50) / 50.0f;
    for (int i = 0; i < 20 * 32; i++) wv[i] = (float)(((i + r->seed) * 53 % 97) - 48) / 96.0f;
    for (int i = 0; i < 64; i++) t[i] = (i + r->seed) % 20;
    if (!r->rc) r->rc = tnn_upload_f32(s, x, xv, 64 * 32);
    if (!r->rc) r->rc = tnn_upload_f32(s, w, wv, 20 * 32);
    if (!r->rc) r->rc = tnn_upload_i32(s, tg, t, 64);
    for (int k = 0; k < 6 && !r->rc; k++) r->rc = tnn_compute(s);
    float all[20 * 32];
    if (!r->rc) r->rc = tnn_download_f32(s, w, all, 20 * 32);
    memcpy(r->w, all, sizeof r->w);
    tnn_session_free(s);
    return NULL;
}

/* A fault is its own session's: one thread computes with a target out of
 * range while another computes with good ones (both share the device's
 * stream); every compute of the first fails with the range error, none of
 * the second's does. */
typedef struct {
    int bad, fails, oks;
} fault_run;

static void *fault_thread(void *p) {
    fault_run *r = p;
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *lg = tnn_input_2d_f32(s, 4, 3), *tg = tnn_input_1d_i32(s, 4);
    tnn_tensor *ce = tnn_cross_entropy(s, lg, tg, -1);
    float lv[12] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f, 1.1f, 1.2f};
    int32_t good[4] = {0, 1, 2, 2}, bad[4] = {0, 1, 5, 2};
    if (tnn_realize(s, ce) || tnn_upload_f32(s, lg, lv, 12) ||
        tnn_upload_i32(s, tg, r->bad ? bad : good, 4)) {
        tnn_session_free(s);
        return NULL;
    }
    for (int k = 0; k < 300; k++) {
        int rc = tnn_compute(s);
        r->oks += rc == TNN_OK;
        r->fails += rc == TNN_ERR_RANGE;
    }
    tnn_session_free(s);
    return NULL;
}

/* fn(a) and fn(b) on two threads at once, both joined. */
static void two_threads(void *(*fn)(void *), void *a, void *b) {
    pthread_t ta, tb;
    pthread_create(&ta, NULL, fn, a);
    pthread_create(&tb, NULL, fn, b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
}

static void test_fault_threads(void) {
    fault_run a = {.bad = 1}, b = {.bad = 0};
    two_threads(fault_thread, &a, &b);
    CHECK(a.fails == 300 && a.oks == 0 && b.oks == 300 && b.fails == 0,
          "faults across sessions: the faulting one failed %d and passed %d of 300, the other "
          "passed %d and failed %d", a.fails, a.oks, b.oks, b.fails);
}

static void test_threads(void) {
    thread_run lone_a = {.seed = 1}, lone_b = {.seed = 2}, a = {.seed = 1}, b = {.seed = 2};
    train_thread(&lone_a);
    train_thread(&lone_b);
    for (int round = 0; round < 3; round++) {
        two_threads(train_thread, &a, &b);
        CHECK(lone_a.rc == 0 && lone_b.rc == 0 && a.rc == 0 && b.rc == 0,
              "a threaded run failed: %d %d %d %d", lone_a.rc, lone_b.rc, a.rc, b.rc);
        CHECK(!memcmp(lone_a.w, a.w, sizeof a.w) && !memcmp(lone_b.w, b.w, sizeof b.w),
              "sessions trained on two threads at once differ from lone runs (round %d)", round);
    }
}

/* ------------------------------------------------------------------------ */
/* Quantized weights, KV cache                                              */
/* ------------------------------------------------------------------------ */

static const int qtypes[] = {TNN_GGML_F16,     TNN_GGML_BF16, 8 /* Q8_0 */,  2 /* Q4_0 */,
                             3 /* Q4_1 */,     6 /* Q5_0 */,  7 /* Q5_1 */,  12 /* Q4_K */,
                             13 /* Q5_K */,    14 /* Q6_K */, 20 /* IQ4_NL */, 10 /* Q2_K */,
                             11 /* Q3_K */,    23 /* IQ4_XS */};
#define NQ (int)(sizeof qtypes / sizeof *qtypes)
/* QK_BIG: 8 rows of it (64 KiB) are more than the GPU's decoding kernel
 * stages in shared memory, so those products take the other kernel */
enum { QM = 6, QK = 256, QK_BIG = 2048 };

/* Two (QM, k) matrices of a type, named w<ti>/u<ti> (k = QK) or W<ti>/U<ti>
 * (k = QK_BIG): quantized from random values where tinynn quantizes the
 * type, else random blocks with sane scales; u holds w's rows in reverse. */
static void add_qpair(tnn_gguf_writer *wr, int ti, int64_t k) {
    int type = qtypes[ti];
    int64_t rb = tnn__qtype_row_bytes(type, k);
    unsigned char *q = malloc((size_t)(rb * QM)), *u = malloc((size_t)(rb * QM));
    float *x = malloc((size_t)k * sizeof *x);
    for (int r = 0; r < QM; r++) {
        unsigned char *row = q + r * rb;
        if (tnn__qtype(type)->can_quantize) {
            for (int64_t c = 0; c < k; c++) x[c] = (float)th_sym(1.0);
            tnn__quantize_row(type, x, row, k);
        } else {
            for (int64_t c = 0; c < rb; c++) row[c] = (unsigned char)(th_uniform() * 256);
            uint16_t d = tnn__f32_to_f16(0.01f);
            /* each block's f16 fields: d (and dmin) where the layout has them */
            const tnn_qtype_info *qi = tnn__qtype(type);
            int at[2] = {0, -1};
            if (type == 12 || type == 13) at[1] = 2;  /* Q4_K, Q5_K: d, dmin */
            if (type == 14) at[0] = 208;              /* Q6_K: d last */
            if (type == 10) at[0] = 80, at[1] = 82;   /* Q2_K */
            if (type == 11) at[0] = 108;              /* Q3_K */
            for (int64_t b = 0; b < k / qi->block; b++)
                for (int f = 0; f < 2; f++)
                    if (at[f] >= 0) memcpy(row + b * qi->block_bytes + at[f], &d, 2);
        }
    }
    for (int r = 0; r < QM; r++) memcpy(u + r * rb, q + (QM - 1 - r) * rb, (size_t)rb);
    char name[16];
    int64_t shape[2] = {QM, k};
    snprintf(name, sizeof name, k == QK ? "w%d" : "W%d", ti);
    CHECK_OK(tnn_gguf_writer_add_tensor(wr, name, type, 2, shape, q, (size_t)(rb * QM)));
    snprintf(name, sizeof name, k == QK ? "u%d" : "U%d", ti);
    CHECK_OK(tnn_gguf_writer_add_tensor(wr, name, type, 2, shape, u, (size_t)(rb * QM)));
    free(x);
    free(u);
    free(q);
}

/* The test file: both pairs of every type. */
static void write_qfile(const char *path) {
    tnn_gguf_writer *wr = tnn_gguf_writer_new();
    for (int ti = 0; ti < NQ; ti++) {
        add_qpair(wr, ti, QK);
        add_qpair(wr, ti, QK_BIG);
    }
    CHECK_OK(tnn_gguf_writer_write(wr, path));
    tnn_gguf_writer_free(wr);
}

static tnn_gguf *qfile;
static int qcur;
static tnn_tensor *b_qmm(tnn_session *s, tnn_tensor **x) {
    char name[16];
    snprintf(name, sizeof name, "w%d", qcur);
    tnn_tensor *w = tnn_tensor_from_gguf(s, qfile, name);
    return tnn_add(s, tnn_matmul_nt(s, x[0], w), tnn_matmul_nt(s, tnn_get_rows(s, w, x[1]), w));
}

/* x W^T with x trained: its gradient is (n, M) @ W, W still quantized
 * (LoRA on a quantized model). */
static tnn_tensor *b_qgrad(tnn_session *s, tnn_tensor **x) {
    char name[16];
    snprintf(name, sizeof name, "w%d", qcur);
    tnn_tensor *w = tnn_tensor_from_gguf(s, qfile, name);
    return tnn_gelu(s, tnn_matmul_nt(s, x[0], w));
}

/* A decoding product followed by each node the CUDA backend folds into its
 * kernel: SiLU, GELU, a product with another tensor, a bias, a KV cache
 * write (the cache is the result: rows at the position x[2] holds), the
 * gated pair and a set of three products of one x; cases 8-10 put an RMS
 * norm before the products (with the gain x[3], without, and before a
 * product that is the result). */
static int qepi, qbig;
static tnn_tensor *b_qepi(tnn_session *s, tnn_tensor **x) {
    char name[16];
    snprintf(name, sizeof name, qbig ? "W%d" : "w%d", qcur);
    tnn_tensor *w = tnn_tensor_from_gguf(s, qfile, name);
    snprintf(name, sizeof name, qbig ? "U%d" : "u%d", qcur);
    tnn_tensor *u = tnn_tensor_from_gguf(s, qfile, name);
    int64_t sh[2] = {12, QM}, flat[1] = {tnn_tensor_nelements(x[1])};
    tnn_tensor *bias = tnn_narrow(s, tnn_reshape(s, x[1], 1, flat), 0, 0, QM);
    if (qepi == 11) { /* a decoding layer's start: norm, q/k/v, v's cache write, RoPE of
                       * k into its cache (one kernel for one row); the rows the caches
                       * got are read back */
        int64_t csh[2] = {12, QM};
        tnn_tensor *h = tnn_rms_norm(s, x[0], x[3], 1e-5);
        tnn_tensor *q = tnn_matmul_nt(s, h, w), *k = tnn_matmul_nt(s, h, u);
        tnn_tensor *v = tnn_matmul_nt(s, h, w);
        tnn_tensor *vc = tnn_kv_write(s, tnn_tensor_new(s, TNN_F32, 2, csh), v, x[2]);
        k = tnn_rope(s, k, 3, 1, 10000.0, 0);
        tnn_tensor *kc = tnn_kv_write(s, tnn_tensor_new(s, TNN_F32, 2, csh), k, x[2]);
        tnn_tensor *kr = tnn_get_rows(s, kc, x[2]), *vr = tnn_get_rows(s, vc, x[2]);
        return tnn_add(s, tnn_scale(s, kr, 4.0), tnn_add(s, vr, q));
    }
    int kind = qepi < 8 ? qepi : qepi == 8 ? 7 : qepi == 9 ? 6 : -1;
    tnn_tensor *in = qepi < 8 ? x[0] : tnn_rms_norm(s, x[0], qepi == 9 ? NULL : x[3], 1e-5);
    tnn_tensor *y = tnn_matmul_nt(s, in, w);
    if (kind == 6) { /* the gated pair: one kernel */
        y = tnn_silu(s, y);
        return tnn_mul(s, y, tnn_matmul_nt(s, in, u));
    }
    if (kind == 7) { /* three products of one x (one kernel, the last with its bias) */
        tnn_tensor *b = tnn_matmul_nt(s, in, u);
        tnn_tensor *c = tnn_matmul_nt(s, in, w);
        c = tnn_add(s, c, bias);
        return tnn_add(s, tnn_mul(s, y, b), c);
    }
    switch (kind) {
    case 0: return tnn_silu(s, y);
    case 1: return tnn_gelu(s, y);
    case 2: return tnn_mul(s, x[1], y);
    case 3: return tnn_add(s, y, bias);
    case 4:
    case 5: return tnn_kv_write(s, tnn_tensor_new(s, kind == 4 ? TNN_F16 : TNN_F32, 2, sh), y, x[2]);
    default: return y;
    }
}

#ifdef TNN_TEST_EMU
void tnn__cu_emu_counts(long *launches, long *d2h, long *graphs);

/* The kernels one tnn_compute launches (the emulator counts them). */
static long compute_launches(tnn_session *s) {
    long l0, l1, d, g;
    tnn__cu_emu_counts(&l0, &d, &g);
    CHECK_OK(tnn_compute(s));
    tnn__cu_emu_counts(&l1, &d, &g);
    return l1 - l0;
}
#endif

/* The fused pair is one kernel (counted on the emulator), and a cache write
 * that does not fit is still a fault, reported by tnn_compute. */
static void quant_epilogue_launches(void) {
    tnn_session *s = tnn_session_new(1);
    qcur = 3; /* Q4_0 */
    tnn_tensor *x[4] = {tnn_input_2d_f32(s, 2, QK), tnn_input_2d_f32(s, 2, QM),
                        tnn_input_1d_i32(s, 1), tnn_input_1d_f32(s, QK)};
    qepi = 0;
    tnn_tensor *y = b_qepi(s, x);
    CHECK_OK(tnn_realize(s, y));
#ifdef TNN_TEST_EMU
    long n = compute_launches(s);
    CHECK(n == 1, "a product + SiLU launched %ld kernels (want 1)", n);
    {
        /* one row: norm, q/k/v, v's cache write, RoPE of k and its cache write
         * in one kernel, then the reads of the rows written, scale and adds (5) */
        tnn_tensor *x1[4] = {tnn_input_2d_f32(s, 1, QK), x[1], x[2], x[3]};
        int32_t p0 = 5;
        CHECK_OK(tnn_upload_i32(s, x[2], &p0, 1));
        qepi = 11;
        CHECK_OK(tnn_realize(s, b_qepi(s, x1)));
        n = compute_launches(s);
        CHECK(n == 6, "the layer's start launched %ld kernels (want 6)", n);
    }
    for (qepi = 6; qepi < 11; qepi++) {
        CHECK_OK(tnn_realize(s, b_qepi(s, x)));
        /* the sets: narrow, the set's kernel (with the norm), mul, add */
        long want = qepi == 7 || qepi == 8 ? 4 : 1;
        n = compute_launches(s);
        CHECK(n == want, "case %d launched %ld kernels (want %ld)", qepi, n, want);
    }
#endif
    qepi = 4;
    y = b_qepi(s, x);
    CHECK_OK(tnn_realize(s, y));
    int32_t p = 11; /* rows 11 and 12 of a 12-row cache */
    CHECK_OK(tnn_upload_i32(s, x[2], &p, 1));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "do not fit");
    p = 10;
    CHECK_OK(tnn_upload_i32(s, x[2], &p, 1));
    CHECK_OK(tnn_compute(s));
    tnn_session_free(s);
}

static void test_quant_epilogues(void) {
    quant_epilogue_launches();
    static const char *what[] = {"silu",           "gelu",
                                 "mul",            "bias add",
                                 "f16 cache write", "f32 cache write",
                                 "the gated pair", "a set of three",
                                 "RMS norm, a set of three", "RMS norm (no gain), the gated pair",
                                 "RMS norm, the result"};
    in_spec ins[4] = {F(2, 5, QK), F(2, 5, QM), {TNN_I32, 1, {1}, 7, false}, F(1, QK)};
    for (qcur = 0; qfile && qcur < NQ; qcur++)
        for (qepi = 0; qepi < 11; qepi++) {
            char name[96];
            snprintf(name, sizeof name, "quantized %s, 5 rows, then %s",
                     tnn_ggml_type_name(qtypes[qcur]), what[qepi]);
            twin(name, b_qepi, ins, 4, false, qepi == 4 ? 1e-3 : 1e-5);
        }
    in_spec one[4] = {F(2, 1, QK), F(2, 1, QM), {TNN_I32, 1, {1}, -7, false}, F(1, QK)};
    qepi = 11;
    for (qcur = 0; qfile && qcur < NQ; qcur++) {
        char name[112];
        snprintf(name, sizeof name, "quantized %s, 1 row: norm, q/k/v, v and RoPE(k) into "
                 "caches", tnn_ggml_type_name(qtypes[qcur]));
        twin(name, b_qepi, one, 4, false, 2e-2); /* the CPU's 1-row products: 8-bit x */
    }
    /* 8 rows of QK_BIG: the products that read x from global memory */
    in_spec big[4] = {F(2, 8, QK_BIG), F(2, 8, QM), {TNN_I32, 1, {1}, 4, false}, F(1, QK_BIG)};
    qbig = 1;
    for (qcur = 0; qfile && qcur < NQ; qcur++)
        for (qepi = 6; qepi < 11; qepi++) {
            char name[112];
            snprintf(name, sizeof name, "quantized %s, 8 rows of %d, then %s",
                     tnn_ggml_type_name(qtypes[qcur]), QK_BIG, what[qepi]);
            twin(name, b_qepi, big, 4, false, 1e-5);
        }
    qbig = 0;
}

static void test_quant(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/tnn-test-cuda-%d.gguf", (int)getpid());
    th_seed(11);
    write_qfile(path);
    qfile = tnn_gguf_open(path);
    CHECK(qfile != NULL, "open %s: %s", path, tnn_last_error());
    /* Five rows: the CPU multiplies the dequantized weights in f32 as the
     * GPU does (its quantized kernels, which quantize x to 8 bits, set to
     * take at most four rows here, and its bf16 copies of the weights for
     * prompts switched off). One and three rows: they do, hence the
     * wider tolerance. */
    tnn__qmm_set_rows(4);
    tnn__qmm_set_bf16(false);
    in_spec five[2] = {F(2, 5, QK), I(5, QM)}, one[2] = {F(2, 1, QK), I(1, QM)};
    in_spec three[2] = {F(2, 3, QK), I(3, QM)};
    for (qcur = 0; qfile && qcur < NQ; qcur++) {
        char name[64];
        snprintf(name, sizeof name, "quantized %s matmul_nt + get_rows, 5 rows",
                 tnn_ggml_type_name(qtypes[qcur]));
        twin(name, b_qmm, five, 2, false, 1e-5);
        snprintf(name, sizeof name, "quantized %s, x's gradient", tnn_ggml_type_name(qtypes[qcur]));
        in_spec px[1] = {P(2, 6, QK)};
        twin(name, b_qgrad, px, 1, true, 1e-5);
        snprintf(name, sizeof name, "quantized %s, 1 row", tnn_ggml_type_name(qtypes[qcur]));
        twin(name, b_qmm, one, 2, false, 2e-2);
        snprintf(name, sizeof name, "quantized %s, 3 rows", tnn_ggml_type_name(qtypes[qcur]));
        twin(name, b_qmm, three, 2, false, 2e-2);
    }
    test_quant_epilogues();
    tnn__qmm_set_rows(-1);
    tnn__qmm_set_bf16(true);
    tnn_gguf_close(qfile);
    unlink(path);
}

static int kv_f16, kv_ctx = 10, kv_rope, kv_seq = 3; /* kv_seq: RoPE's rows a sequence */
static tnn_tensor *b_kv(tnn_session *s, tnn_tensor **x) {
    int64_t sh[2] = {kv_ctx, tnn_tensor_dim(x[1], 1)};
    tnn_tensor *kc = tnn_tensor_new(s, kv_f16 ? TNN_F16 : TNN_F32, 2, sh);
    tnn_tensor *vc = tnn_tensor_new(s, kv_f16 ? TNN_F16 : TNN_F32, 2, sh);
    /* positions 4..6 of the cache (x[3] holds 4, as a 1-element i32 in [4, 5)) */
    /* kv_rope: the keys through RoPE first (the CUDA backend writes the
     * rotated rows straight into the cache), and q; kv_rope 2: in the
     * decoding layer's order (v's write first) */
    tnn_tensor *vw = kv_rope == 2 ? tnn_kv_write(s, vc, x[2], x[3]) : NULL;
    tnn_tensor *k = kv_rope ? tnn_rope(s, x[1], 2, kv_seq, 10000.0, 0) : x[1];
    tnn_tensor *kw = tnn_kv_write(s, kc, k, x[3]);
    if (!vw) vw = tnn_kv_write(s, vc, x[2], x[3]);
    /* ... and q too (rotated inside the attention kernel) */
    tnn_tensor *q = kv_rope ? tnn_rope(s, x[0], 4, kv_seq, 10000.0, 1) : x[0];
    return tnn_attention_cached(s, q, kw, vw, 4, 2, x[3]);
}

static void test_kv(void) {
    in_spec ins[4] = {F(2, 3, 32), F(2, 3, 16), F(2, 3, 16), {TNN_I32, 1, {1}, 1, false}};
    /* the position input is drawn in [0, 1): 0; rows 0..2 of the cache */
    for (kv_f16 = 0; kv_f16 < 2; kv_f16++)
        twin(kv_f16 ? "kv_write + attention_cached, f16 cache" : "kv_write + attention_cached",
             b_kv, ins, 4, false, 1e-5);
    /* a longer cache: the rows land at a position in [0, 85) and read the
     * (zero) rows before it too, across several 32-key chunks; 3 rows take
     * the decoding path, 12 the per-row one */
    kv_ctx = 100;
    in_spec dec[4] = {F(2, 3, 32), F(2, 3, 16), F(2, 3, 16), {TNN_I32, 1, {1}, 85, false}};
    in_spec pre[4] = {F(2, 12, 32), F(2, 12, 16), F(2, 12, 16), {TNN_I32, 1, {1}, 85, false}};
    for (kv_f16 = 0; kv_f16 < 2; kv_f16++) {
        twin("attention_cached, 3 rows at a later position", b_kv, dec, 4, false, 1e-5);
        twin("attention_cached, 12 rows at a later position", b_kv, pre, 4, false, 1e-5);
    }
    /* keys in three splits of the decoding kernel (rows at 600..602 of 700),
     * with head sizes 8 (vector loads) and 6 */
    kv_ctx = 700;
    in_spec far8[4] = {F(2, 3, 32), F(2, 3, 16), F(2, 3, 16), {TNN_I32, 1, {1}, -600, false}};
    in_spec far6[4] = {F(2, 3, 24), F(2, 3, 12), F(2, 3, 12), {TNN_I32, 1, {1}, -600, false}};
    /* the new rows across two splits (254..256) */
    in_spec edge8[4] = {F(2, 3, 32), F(2, 3, 16), F(2, 3, 16), {TNN_I32, 1, {1}, -254, false}};
    in_spec edge70[4] = {F(2, 70, 32), F(2, 70, 16), F(2, 70, 16), {TNN_I32, 1, {1}, -254, false}};
    for (kv_f16 = 0; kv_f16 < 2; kv_f16++) {
        kv_rope = 1;
        twin("RoPE + kv_write + RoPE + attention_cached, 3 rows at 600", b_kv, far8, 4, false,
             1e-5);
        kv_rope = 2;
        twin("kv_write v, RoPE + kv_write k + RoPE + attention_cached, 3 rows at 600", b_kv,
             far8, 4, false, 1e-5);
        twin("kv_write v, RoPE + kv_write k + RoPE + attention_cached, 3 rows at 254", b_kv,
             edge8, 4, false, 1e-5);
        /* 70 rows: RoPE by a thread per pair walking the heads, into the cache */
        kv_seq = 70;
        twin("kv_write v, RoPE + kv_write k + RoPE + attention_cached, 70 rows at 254", b_kv,
             edge70, 4, false, 1e-5);
        kv_seq = 3;
        twin("kv_write v, RoPE + kv_write k + RoPE + attention_cached, head size 6", b_kv, far6,
             4, false, 1e-5);
        kv_rope = 0;
        twin("attention_cached, 3 rows at 600 (head size 8)", b_kv, far8, 4, false, 1e-5);
        twin("attention_cached, 3 rows at 600 (head size 6)", b_kv, far6, 4, false, 1e-5);
    }
    kv_ctx = 10;
}

/* b_kv's graph on 3 rows of a 700-row cache in session s, realized (the
 * globals set as given; the callers put kv_ctx and kv_rope back). */
static tnn_tensor *kv_graph(tnn_session *s, int rope, int f16, tnn_tensor **x) {
    kv_ctx = 700;
    kv_f16 = f16;
    kv_rope = rope;
    x[0] = tnn_input_2d_f32(s, 3, 32);
    x[1] = tnn_input_2d_f32(s, 3, 16);
    x[2] = tnn_input_2d_f32(s, 3, 16);
    x[3] = tnn_input_1d_i32(s, 1);
    tnn_tensor *y = b_kv(s, x);
    CHECK_OK(tnn_realize(s, y));
    return y;
}

/* The decoding attention's split counters go back to 0 after each run: the
 * same inputs give the same bits on every compute (the third replays the
 * recorded graph), also after a run that faulted. */
static void test_kv_repeat(void) {
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *x[4], *y = kv_graph(s, 1, 1, x);
    float in[96], out[4][96];
    th_seed(5);
    for (int i = 0; i < 96; i++) in[i] = (float)th_sym(1.0);
    CHECK_OK(tnn_upload_f32(s, x[0], in, 96));
    CHECK_OK(tnn_upload_f32(s, x[1], in, 48));
    CHECK_OK(tnn_upload_f32(s, x[2], in + 48, 48));
    int32_t p = 698;
    CHECK_OK(tnn_upload_i32(s, x[3], &p, 1));
    /* the cache write's fault (first in the plan), not attention's */
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "rows 698 .. 700 do not fit");
    p = 600;
    CHECK_OK(tnn_upload_i32(s, x[3], &p, 1));
#ifdef TNN_TEST_EMU
    /* RoPE k into the cache, the v cache write, RoPE q inside attention */
    long n = compute_launches(s);
    CHECK(n == 3, "RoPE + caches + attention launched %ld kernels (want 3)", n);
#endif
    for (int r = 0; r < 4; r++) {
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_f32(s, y, out[r], 96));
    }
    for (int r = 1; r < 4; r++)
        CHECK(memcmp(out[0], out[r], sizeof out[0]) == 0, "compute %d differs from the first", r + 1);
    kv_ctx = 10;
    kv_rope = 0;
    tnn_session_free(s);
}

/* Two decoding steps in the layer's order (kv_rope 2): the second reads
 * the key rows the first wrote into the cache; the steps' outputs on the
 * CPU and the GPU agree. Rows 253..255, then 256..258: across a split. */
static void kv_steps(int cuda, int f16, float out[2][96]) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x[4], *y = kv_graph(s, 2, f16, x);
    th_seed(11);
    for (int step = 0; step < 2; step++) {
        float in[96];
        for (int i = 0; i < 96; i++) in[i] = (float)th_sym(1.0);
        CHECK_OK(tnn_upload_f32(s, x[0], in, 96));
        CHECK_OK(tnn_upload_f32(s, x[1], in, 48));
        CHECK_OK(tnn_upload_f32(s, x[2], in + 48, 48));
        int32_t p = 253 + 3 * step;
        CHECK_OK(tnn_upload_i32(s, x[3], &p, 1));
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_f32(s, y, out[step], 96));
    }
    kv_ctx = 10;
    kv_rope = 0;
    tnn_session_free(s);
}

static void test_kv_steps(void) {
    for (int f16 = 0; f16 < 2; f16++) {
        float c[2][96], g[2][96];
        kv_steps(0, f16, c);
        kv_steps(1, f16, g);
        for (int step = 0; step < 2; step++) {
            double worst = 0.0;
            for (int i = 0; i < 96; i++) worst = fmax(worst, fabs((double)g[step][i] - c[step][i]));
            CHECK(worst <= 1e-5, "%s cache, decoding step %d: GPU and CPU differ by %.3g",
                  f16 ? "f16" : "f32", step + 1, worst);
        }
    }
#ifdef TNN_TEST_EMU
    /* the v cache write, RoPE of k into its cache, attention rotating q */
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *x[4];
    kv_graph(s, 2, 0, x);
    int32_t p = 600;
    CHECK_OK(tnn_upload_i32(s, x[3], &p, 1));
    long n = compute_launches(s);
    CHECK(n == 3, "v write + RoPE + k write + RoPE + attention launched %ld kernels (want 3)", n);
    /* a bad position is the cache writes' error, as on the CPU */
    p = 698;
    CHECK_OK(tnn_upload_i32(s, x[3], &p, 1));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "rows 698 .. 700 do not fit");
    kv_ctx = 10;
    kv_rope = 0;
    tnn_session_free(s);
#endif
}

/* ------------------------------------------------------------------------ */
/* The seed's protocol: host scratch slots, tnn_upload/tnn_download, and    */
/* the scratch kernels, on a CUDA session as on the CPU                     */
/* ------------------------------------------------------------------------ */

static void seed_run(int cuda, double *out) {
    tnn_session *s = tnn_session_new(cuda);
    tnn_tensor *x = tnn_input_2d_f32(s, 2, 3), *w = tnn_input_2d_f32(s, 4, 3);
    tnn_tensor *y = tnn_gelu(s, tnn_matmul(s, x, w)); /* seed layout: (4, 2) */
    CHECK_OK(tnn_realize(s, y));
    for (int i = 0; i < 6; i++) tnn_scratch_set(s, i, 0.25 * i - 0.5);
    CHECK_OK(tnn_upload(s, x));
    for (int i = 0; i < 12; i++) tnn_scratch_set(s, i, 0.125 * (i % 5) - 0.25);
    CHECK_OK(tnn_upload(s, w));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download(s, y));
    for (int i = 0; i < 8; i++) out[i] = tnn_scratch_get(s, i);
    for (int i = 0; i < 8; i++) tnn_scratch_set(s, 8 + i, 1.0 + i);
    tnn_gelu_back_scratch(s, 8); /* x = the result, dh = 1..8 */
    for (int i = 0; i < 8; i++) out[8 + i] = tnn_scratch_get(s, 16 + i);
    tnn_session_free(s);
}

static void test_seed_protocol(void) {
    double c[16], g[16];
    seed_run(0, c);
    seed_run(1, g);
    double err = th_err(g, c, 16, 1e-6, 1e-5);
    CHECK(err <= 1.0, "the seed's scratch protocol on CUDA differs from the CPU: %.3g", err);
}

/* ------------------------------------------------------------------------ */
/* Faults and traffic                                                       */
/* ------------------------------------------------------------------------ */

static void test_faults(void) {
    tnn_session *s = tnn_session_new(1);
    tnn_tensor *tab = tnn_input_2d_f32(s, 5, 3), *idx = tnn_input_1d_i32(s, 2);
    tnn_tensor *e = tnn_get_rows(s, tab, idx);
    CHECK_OK(tnn_realize(s, e));
    int32_t bad[2] = {1, 7}, good[2] = {4, 0};
    CHECK_OK(tnn_upload_i32(s, idx, bad, 2));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "idx[1] = 7 is outside [0, 5)");
    CHECK_OK(tnn_upload_i32(s, idx, good, 2)); /* the session stays usable */
    CHECK_OK(tnn_compute(s));

    int64_t sh[2] = {4, 2};
    tnn_tensor *cache = tnn_tensor_new(s, TNN_F32, 2, sh), *x = tnn_input_2d_f32(s, 2, 2);
    tnn_tensor *pos = tnn_input_1d_i32(s, 1);
    tnn_tensor *w = tnn_kv_write(s, cache, x, pos);
    CHECK_OK(tnn_realize(s, w));
    int32_t p = 3;
    CHECK_OK(tnn_upload_i32(s, pos, &p, 1));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "do not fit a cache of 4");
    p = 2;
    CHECK_OK(tnn_upload_i32(s, pos, &p, 1));
    CHECK_OK(tnn_compute(s));

    tnn_tensor *lg = tnn_input_2d_f32(s, 2, 3), *tg = tnn_input_1d_i32(s, 2);
    tnn_tensor *ce = tnn_cross_entropy(s, lg, tg, -1);
    CHECK_OK(tnn_realize(s, ce));
    int32_t tv[2] = {0, 3};
    CHECK_OK(tnn_upload_i32(s, tg, tv, 2));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "targets[1] = 3");
    tnn_session_free(s);
}

#ifdef TNN_TEST_EMU
void tnn__cu_emu_mem_limit(size_t bytes);

/* The emulator counts what reaches the "device": a training step must run
 * on it (launches) and copy nothing to the host (the optimizer decides on
 * clipping and skipping there; the caller downloads the loss); running out
 * of device memory is a status and the session lives. */
static void test_emu_traffic(void) {
    tnn_tensor *x, *w, *tg, *loss;
    tnn_session *s = classifier(8, 16, 4, 0.01, 0.0, &x, &w, &tg, &loss);
    CHECK_OK(tnn_set_grad_clip(s, 1.0));
    CHECK_OK(tnn_realize(s, loss));
    int32_t t[8] = {0, 1, 2, 3, 0, 1, 2, 3};
    CHECK_OK(tnn_upload_i32(s, tg, t, 8));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_compute(s)); /* the second compute records the plan as a graph */
    long l0, d0, g0, l1, d1, g1;
    tnn__cu_emu_counts(&l0, &d0, &g0);
    CHECK_OK(tnn_compute(s)); /* ... which the third replays */
    tnn__cu_emu_counts(&l1, &d1, &g1);
    CHECK(l1 - l0 >= 8, "a training step launched %ld kernels", l1 - l0);
    CHECK(g1 - g0 == 1, "a training step replayed %ld graphs (want 1)", g1 - g0);
    CHECK(d1 - d0 == 0, "a training step made %ld device-to-host copies (want 0)", d1 - d0);
    float lv = 0.0f;
    CHECK_OK(tnn_download_f32(s, loss, &lv, 1));
    tnn__cu_emu_counts(&l0, &d0, &g0);
    CHECK(d0 - d1 == 1, "downloading the loss made %ld copies", d0 - d1);
    CHECK(tnn_optimizer_steps(s) == 3, "steps %lld", (long long)tnn_optimizer_steps(s));

    tnn__cu_emu_mem_limit(1);
    tnn_tensor *big = tnn_input_2d_f32(s, 64, 64);
    CHECK_ERR(tnn_realize(s, tnn_scale(s, big, 2.0)), TNN_ERR_NOMEM, "out of memory");
    tnn__cu_emu_mem_limit(0);
    CHECK_OK(tnn_realize(s, loss));
    CHECK_OK(tnn_compute(s));
    tnn_session_free(s);
}
#endif

int main(void) {
    tnn_set_log_level(TNN_LOG_ERROR);
    tnn_session *s = tnn_session_new(1);
    bool cuda = s && strcmp(tnn_session_backend(s), "cuda") == 0;
    tnn_session_free(s);
    if (!cuda) {
        printf("test_cuda: skipped (no CUDA backend or no GPU: %s)\n",
               "tnn_session_new(1) gave a CPU session");
        return SKIP;
    }
    test_ops();
    test_get_rows_back();
    test_ce_rows();
    test_rope_angles();
    test_optim();
    test_optim_many();
    test_optim_fault();
    test_threads();
    test_fault_threads();
    test_quant();
    test_kv();
    test_kv_repeat();
    test_kv_steps();
    test_seed_protocol();
    test_faults();
#ifdef TNN_TEST_EMU
    test_emu_traffic();
#endif
    return th_finish("test_cuda");
}
