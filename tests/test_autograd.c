/* test_autograd.c - tnn_backward on composite graphs checked by central
 * finite differences of the loss (every parameter, sampled elements), the
 * gradient rules of every differentiable op, accumulation over several
 * paths, and the in-graph optimizers against double-precision references.
 */
#include "harness.h"

#include "core/internal.h" /* tnn__tensor_share */

typedef struct {
    tnn_tensor *t;
    int64_t n;
    double *val;
} param_t;

typedef struct {
    tnn_tensor *t; /* an int32 input to fill after realize */
    const int64_t *v;
    size_t n;
} int_input;

static double loss_value(tnn_session *s, tnn_tensor *loss) {
    double v = NAN;
    if (tnn_compute(s) != TNN_OK || tnn_download_to_f64_array(s, loss, &v, 1) != TNN_OK) {
        fprintf(stderr, "compute failed: %s\n", tnn_last_error());
        return NAN;
    }
    return v;
}

/* Adds the backward graph, uploads random values to every parameter,
 * computes analytic gradients and compares sampled elements of each with
 * central differences of the f32 loss: |fd - g| <= tol * (1 + |fd|). */
static void grad_check(const char *name, tnn_session *s, tnn_tensor *loss, param_t *ps, int np,
                       const int_input *ii, double h, double tol) {
    CHECK(loss != NULL, "%s: graph: %s", name, tnn_last_error());
    if (!loss) return;
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    if (ii) CHECK_OK(tnn_upload_from_int_array(s, ii->t, ii->v, ii->n));
    for (int i = 0; i < np; i++) {
        ps[i].val = th_alloc((size_t)ps[i].n);
        th_fill_f32(ps[i].val, (size_t)ps[i].n, 1.0);
        CHECK_OK(tnn_upload_from_float_array(s, ps[i].t, ps[i].val, (size_t)ps[i].n));
    }
    CHECK(np <= 8, "grad_check takes at most 8 parameters");
    /* every analytic gradient at the unperturbed point first */
    loss_value(s, loss);
    double *grads[8] = {NULL};
    for (int i = 0; i < np && i < 8; i++) {
        grads[i] = th_alloc((size_t)ps[i].n);
        tnn_tensor *gt = tnn_grad(s, ps[i].t);
        CHECK(gt != NULL, "%s: no grad for param %d: %s", name, i, tnn_last_error());
        if (gt) CHECK_OK(tnn_download_to_f64_array(s, gt, grads[i], (size_t)ps[i].n));
    }
    double worst = 0.0;
    for (int i = 0; i < np && i < 8; i++) {
        double *g = grads[i];
        int64_t step = ps[i].n > 24 ? ps[i].n / 24 : 1;
        for (int64_t e = 0; e < ps[i].n; e += step) {
            double keep = ps[i].val[e];
            ps[i].val[e] = (double)(float)(keep + h);
            double hp = ps[i].val[e] - keep;
            tnn_upload_from_float_array(s, ps[i].t, ps[i].val, (size_t)ps[i].n);
            double lp = loss_value(s, loss);
            ps[i].val[e] = (double)(float)(keep - h);
            double hm = keep - ps[i].val[e];
            tnn_upload_from_float_array(s, ps[i].t, ps[i].val, (size_t)ps[i].n);
            double lm = loss_value(s, loss);
            ps[i].val[e] = keep;
            tnn_upload_from_float_array(s, ps[i].t, ps[i].val, (size_t)ps[i].n);
            double fd = (lp - lm) / (hp + hm);
            double err = fabs(fd - g[e]) / (tol * (1.0 + fabs(fd)));
            if (!(err <= worst)) worst = err;
            if (!(err <= 1.0))
                fprintf(stderr, "%s: param %d [%lld]: analytic %.6g, finite difference %.6g\n",
                        name, i, (long long)e, g[e], fd);
        }
        free(g);
    }
    CHECK(worst <= 1.0, "%s: gradient off by %.3g tolerances", name, worst);
    for (int i = 0; i < np; i++) free(ps[i].val);
}

static tnn_tensor *param(tnn_session *s, param_t *p, int nd, int64_t d0, int64_t d1, int64_t d2) {
    int64_t shape[3] = {d0, d1, d2};
    p->t = tnn_tensor_new(s, TNN_F32, nd, shape);
    p->n = 1;
    for (int i = 0; i < nd; i++) p->n *= shape[i];
    tnn_set_param(p->t);
    return p->t;
}

/* h = 1e-3: truncation O(h^2) ~1e-6; f32 rounding of the loss / h ~1e-4. */
#define H_STEP 1e-3
#define TOL 3e-3

static void test_mlp_cross_entropy(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    param_t ps[4];
    tnn_tensor *x = param(s, &ps[0], 2, 6, 5, 0);
    tnn_tensor *w1 = param(s, &ps[1], 2, 5, 7, 0);
    tnn_tensor *b1 = param(s, &ps[2], 1, 7, 0, 0);
    tnn_tensor *w2 = param(s, &ps[3], 2, 7, 4, 0);
    tnn_tensor *tg = tnn_input_1d_i32(s, 6);
    tnn_tensor *hid = tnn_gelu(s, tnn_add(s, tnn_matmul_nn(s, x, w1), b1));
    tnn_tensor *loss = tnn_cross_entropy(s, tnn_matmul_nn(s, hid, w2), tg, -1);
    static const int64_t t[6] = {0, 3, -1, 2, 1, 3}; /* row 2 ignored */
    int_input ii = {tg, t, 6};
    grad_check("mlp+cross_entropy", s, loss, ps, 4, &ii, H_STEP, TOL);
    tnn_session_free(s);
}

/* Cross-entropy over the first V of W columns: the loss and gradient of
 * the same logits narrowed to V columns (to 1e-6: the GPU sums the rows in
 * an order that depends on their alignment), the padding's gradient 0 (a
 * finite-difference check alone would pass a softmax that took the padding
 * in); and finite differences through a product. */
static void test_cross_entropy_padded(void) {
    enum { N = 6, W = 9, V = 5 };
    tnn_session *s = tnn_session_new(TH_BACKEND);
    int64_t shape[2] = {N, W};
    tnn_tensor *a = tnn_tensor_new(s, TNN_F32, 2, shape), *b = tnn_tensor_new(s, TNN_F32, 2, shape);
    tnn_tensor *tg = tnn_input_1d_i32(s, N);
    tnn_set_param(a);
    tnn_set_param(b);
    tnn_tensor *lp = tnn_cross_entropy_padded(s, tnn_scale(s, a, 1.5), tg, 2, V);
    tnn_tensor *lu = tnn_cross_entropy(s, tnn_narrow(s, tnn_scale(s, b, 1.5), 1, 0, V), tg, 2);
    tnn_tensor *loss = tnn_add(s, lp, lu);
    CHECK(loss != NULL, "padded cross-entropy graph: %s", tnn_last_error());
    if (!loss) {
        tnn_session_free(s);
        return;
    }
    tnn_set_output(lp);
    tnn_set_output(lu);
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    double x[N * W], ga[N * W], gb[N * W], vp = 0, vu = 0;
    th_fill_f32(x, N * W, 2.0);
    static const int64_t t[N] = {0, 4, 2, 3, 1, 4}; /* row 2 ignored */
    CHECK_OK(tnn_upload_from_float_array(s, a, x, N * W));
    CHECK_OK(tnn_upload_from_float_array(s, b, x, N * W));
    CHECK_OK(tnn_upload_from_int_array(s, tg, t, N));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, lp, &vp, 1));
    CHECK_OK(tnn_download_to_f64_array(s, lu, &vu, 1));
    CHECK_OK(tnn_download_to_f64_array(s, tnn_grad(s, a), ga, N * W));
    CHECK_OK(tnn_download_to_f64_array(s, tnn_grad(s, b), gb, N * W));
    CHECK(fabs(vp - vu) <= 1e-6 * fabs(vu) && vu > 0.1, "padded loss %.9g, narrowed %.9g", vp, vu);
    double worst = 0.0, pad = 0.0;
    for (int i = 0; i < N * W; i++) {
        if (i % W < V)
            worst = fmax(worst, fabs(ga[i] - gb[i]));
        else
            pad = fmax(pad, fabs(ga[i]));
    }
    CHECK(worst <= 1e-6 && pad == 0.0, "padded gradient off by %.3g, padding's largest %.3g",
          worst, pad);
    /* a target in the padding is out of range */
    static const int64_t bad[N] = {0, 4, 2, 5, 1, 4};
    CHECK_OK(tnn_upload_from_int_array(s, tg, bad, N));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "targets[3] = 5 is outside [0, 5)");
    tnn_session_free(s);

    s = tnn_session_new(TH_BACKEND);
    param_t ps[2];
    tnn_tensor *h = param(s, &ps[0], 2, 4, 5, 0);
    tnn_tensor *w = param(s, &ps[1], 2, 7, 5, 0);
    tnn_tensor *tg2 = tnn_input_1d_i32(s, 4);
    tnn_tensor *l2 = tnn_cross_entropy_padded(s, tnn_matmul_nt(s, h, w), tg2, -1, 4);
    static const int64_t t2[4] = {3, 0, 2, 1};
    int_input ii = {tg2, t2, 4};
    grad_check("product + cross_entropy_padded", s, l2, ps, 2, &ii, H_STEP, TOL);
    tnn_session_free(s);
}

/* A llama-style block: RMSNorm with gain, q k^T softmax v, SwiGLU. */
static void test_attention_block(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    param_t ps[7];
    tnn_tensor *x = param(s, &ps[0], 2, 5, 8, 0);
    tnn_tensor *g = param(s, &ps[1], 2, 1, 8, 0);
    tnn_tensor *wq = param(s, &ps[2], 2, 8, 8, 0);
    tnn_tensor *wk = param(s, &ps[3], 2, 8, 8, 0);
    tnn_tensor *wv = param(s, &ps[4], 2, 8, 8, 0);
    tnn_tensor *wg = param(s, &ps[5], 2, 8, 6, 0);
    tnn_tensor *wu = param(s, &ps[6], 2, 8, 6, 0);
    tnn_tensor *n = tnn_rms_norm(s, x, g, 1e-5);
    tnn_tensor *q = tnn_matmul_nn(s, n, wq), *k = tnn_matmul_nn(s, n, wk);
    tnn_tensor *v = tnn_matmul_nn(s, n, wv);
    tnn_tensor *att = tnn_softmax(s, tnn_scale(s, tnn_matmul_nt(s, q, k), 0.35));
    tnn_tensor *o = tnn_add(s, x, tnn_matmul_nn(s, att, v));
    tnn_tensor *ff = tnn_mul(s, tnn_silu(s, tnn_matmul_nn(s, o, wg)), tnn_matmul_nn(s, o, wu));
    tnn_tensor *loss = tnn_mean(s, tnn_mul(s, ff, ff));
    grad_check("attention block", s, loss, ps, 7, NULL, H_STEP, TOL);
    tnn_session_free(s);
}

/* rms_norm(x, gamma)'s gradient rule folds gamma into two kernels (dx, and
 * dgamma summed over the rows); the same gradients as the composition it
 * replaced, rms_norm(x) times gamma: bit for bit on the CPU (the same f32
 * roundings, the rows summed in order), to rounding on a device (which
 * sums in other orders). 300 rows of 70: several column blocks on both. */
static void rms_gain_run(tnn_session *s, bool fused, int gdim, float *out) {
    int64_t xs[3] = {3, 100, 70}, gs[2] = {1, 70};
    tnn_tensor *x = tnn_tensor_new(s, TNN_F32, 3, xs), *w = tnn_tensor_new(s, TNN_F32, 3, xs);
    tnn_tensor *g = tnn_tensor_new(s, TNN_F32, gdim, gdim == 1 ? gs + 1 : gs);
    tnn_set_param(x);
    tnn_set_param(g);
    tnn_tensor *y = fused ? tnn_rms_norm(s, x, g, 1e-5) : tnn_mul(s, tnn_rms_norm(s, x, NULL, 1e-5), g);
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, y, w));
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    double *v = th_alloc(21000);
    th_seed(21);
    th_fill_f32(v, 21000, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, x, v, 21000));
    th_fill_f32(v, 21000, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, w, v, 21000));
    th_fill_f32(v, 70, 2.0);
    CHECK_OK(tnn_upload_from_float_array(s, g, v, 70));
    free(v);
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), out, 21000));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, g), out + 21000, 70));
}

static void test_rms_gain_folded(void) {
    static float a[21070], b[21070];
    for (int gdim = 1; gdim <= 2; gdim++) {
        tnn_session *s = tnn_session_new(TH_BACKEND);
        bool cpu = !strcmp(tnn_session_backend(s), "cpu");
        rms_gain_run(s, true, gdim, a);
        tnn_session_free(s);
        s = tnn_session_new(TH_BACKEND);
        rms_gain_run(s, false, gdim, b);
        tnn_session_free(s);
        double worst = 0.0, scale = 1e-30;
        for (int i = 0; i < 21070; i++) {
            worst = fmax(worst, fabs((double)a[i] - b[i]));
            scale = fmax(scale, fabs((double)b[i]));
        }
        if (cpu)
            CHECK(!memcmp(a, b, sizeof a), "rms_norm gamma %dD: the folded gradients differ from "
                  "the composition's by %.3g (want the same bits)", gdim, worst);
        else
            CHECK(worst <= 1e-6 * scale, "rms_norm gamma %dD: the folded gradients differ from "
                  "the composition's by %.3g of %.3g", gdim, worst, scale);
    }
}

/* tnn_swiglu(gate, up) against tnn_mul(tnn_silu(gate), up): the value and
 * both gradients, with gate and up made by products (the CPU runs swiglu
 * as the up product's epilogue) and read elsewhere too. Bit for bit on the
 * CPU, to rounding on a device. */
static void swiglu_run(tnn_session *s, bool fused, float *out) {
    int64_t xs[2] = {150, 24}, ws[2] = {40, 24};
    tnn_tensor *x = tnn_tensor_new(s, TNN_F32, 2, xs), *wg = tnn_tensor_new(s, TNN_F32, 2, ws);
    tnn_tensor *wu = tnn_tensor_new(s, TNN_F32, 2, ws);
    tnn_set_param(x);
    tnn_set_param(wg);
    tnn_set_param(wu);
    tnn_tensor *g = tnn_matmul_nt(s, x, wg), *u = tnn_matmul_nt(s, x, wu);
    tnn_tensor *f = fused ? tnn_swiglu(s, g, u) : tnn_mul(s, tnn_silu(s, g), u);
    tnn_tensor *loss = tnn_add(s, tnn_sum(s, tnn_mul(s, f, f)), tnn_mean(s, tnn_mul(s, g, u)));
    CHECK_OK(tnn_backward(s, loss));
    tnn_set_output(f);
    CHECK_OK(tnn_realize(s, loss));
    double *v = th_alloc(3600);
    th_seed(33);
    th_fill_f32(v, 3600, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, x, v, 3600));
    th_fill_f32(v, 960, 0.5);
    CHECK_OK(tnn_upload_from_float_array(s, wg, v, 960));
    th_fill_f32(v, 960, 0.5);
    CHECK_OK(tnn_upload_from_float_array(s, wu, v, 960));
    free(v);
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, f, out, 6000));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), out + 6000, 3600));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, wg), out + 9600, 960));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, wu), out + 10560, 960));
}

static void test_swiglu(void) {
    static float a[11520], b[11520];
    tnn_session *s = tnn_session_new(TH_BACKEND);
    bool cpu = !strcmp(tnn_session_backend(s), "cpu");
    swiglu_run(s, true, a);
    int64_t s1[2] = {3, 4}, s2[2] = {4, 3};
    tnn_tensor *p = tnn_tensor_new(s, TNN_F32, 2, s1), *q = tnn_tensor_new(s, TNN_F32, 2, s2);
    CHECK(!tnn_swiglu(s, p, q) && tnn_last_status() == TNN_ERR_SHAPE,
          "tnn_swiglu of (3, 4) and (4, 3): %s", tnn_last_error());
    tnn_session_free(s);
    s = tnn_session_new(TH_BACKEND);
    swiglu_run(s, false, b);
    tnn_session_free(s);
    double worst = 0.0, scale = 1e-30;
    for (int i = 0; i < 11520; i++) {
        worst = fmax(worst, fabs((double)a[i] - b[i]));
        scale = fmax(scale, fabs((double)b[i]));
    }
    if (cpu)
        CHECK(!memcmp(a, b, sizeof a), "swiglu: differs from silu then mul by %.3g (want the "
              "same bits)", worst);
    else
        CHECK(worst <= 1e-6 * scale, "swiglu: differs from silu then mul by %.3g of %.3g", worst,
              scale);
    /* and its gradients against finite differences */
    s = tnn_session_new(TH_BACKEND);
    param_t ps[2];
    tnn_tensor *gt = param(s, &ps[0], 2, 6, 9, 0), *ut = param(s, &ps[1], 2, 6, 9, 0);
    tnn_tensor *f = tnn_swiglu(s, gt, ut);
    grad_check("swiglu", s, tnn_mean(s, tnn_mul(s, f, f)), ps, 2, NULL, H_STEP, TOL);
    tnn_session_free(s);
}

/* Broadcasting, batched products with a broadcast batch, transpose,
 * reshape, sub, scale, sum, and a parameter read twice (accumulation). */
static void test_shapes_and_accumulation(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    param_t ps[5];
    tnn_tensor *a = param(s, &ps[0], 3, 3, 4, 5);
    tnn_tensor *b = param(s, &ps[1], 2, 5, 2, 0);  /* broadcast over the batch */
    tnn_tensor *c = param(s, &ps[2], 3, 3, 1, 2);  /* broadcast over rows */
    tnn_tensor *d = param(s, &ps[3], 1, 2, 0, 0);
    tnn_tensor *e = param(s, &ps[4], 3, 1, 4, 3);
    tnn_tensor *p = tnn_sub(s, tnn_mul(s, tnn_matmul_nn(s, a, b), c), d); /* (3,4,2) */
    tnn_tensor *pt = tnn_transpose(s, p);                                 /* (3,2,4) */
    tnn_tensor *q = tnn_matmul_tn(s, tnn_transpose(s, pt), e);             /* (3,2,3) */
    int64_t flat[2] = {6, 3};
    tnn_tensor *r = tnn_reshape(s, q, 2, flat);
    tnn_tensor *sq = tnn_mul(s, r, r); /* r read twice */
    tnn_tensor *loss =
        tnn_add(s, tnn_sum(s, tnn_scale(s, sq, 0.1)), tnn_mean(s, tnn_matmul_nt(s, r, r)));
    grad_check("broadcast+batched", s, loss, ps, 5, NULL, H_STEP, TOL);
    tnn_session_free(s);
}

static void test_embedding_path(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    param_t ps[2];
    tnn_tensor *tab = param(s, &ps[0], 2, 9, 4, 0);
    tnn_tensor *w = param(s, &ps[1], 2, 8, 3, 0);
    tnn_tensor *idx = tnn_input_1d_i32(s, 6);
    int64_t sh[2] = {3, 8};
    tnn_tensor *emb = tnn_reshape(s, tnn_get_rows(s, tab, idx), 2, sh); /* (3, 8) */
    tnn_tensor *y = tnn_softmax(s, tnn_matmul_nn(s, emb, w));
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, y, tnn_matmul_nn(s, emb, w)));
    static const int64_t ids[6] = {1, 4, 4, 0, 8, 1}; /* repeats accumulate */
    int_input ii = {idx, ids, 6};
    grad_check("embedding", s, loss, ps, 2, &ii, H_STEP, TOL);
    tnn_session_free(s);
}

static void test_unused_param_and_errors(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *a = tnn_input_2d_f32(s, 2, 2), *unused = tnn_input_2d_f32(s, 2, 2);
    tnn_tensor *x = tnn_input_2d_f32(s, 2, 2);
    CHECK_ERR(tnn_backward(s, tnn_sum(s, x)), TNN_ERR_ARG, "no parameter");
    tnn_set_param(a);
    tnn_set_param(unused);
    CHECK_ERR(tnn_backward(s, a), TNN_ERR_SHAPE, "one element");
    CHECK_ERR(tnn_backward(s, tnn_sum(s, tnn_gelu_back(s, a, x))), TNN_ERR_UNSUPPORTED,
              "no gradient rule");
    tnn_session_free(s);

    s = tnn_session_new(TH_BACKEND);
    a = tnn_input_2d_f32(s, 2, 2);
    unused = tnn_input_2d_f32(s, 2, 2);
    tnn_set_param(a);
    tnn_set_param(unused);
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, a, a));
    CHECK_NULL(tnn_grad(s, a), TNN_ERR_STATE, "tnn_backward");
    CHECK_OK(tnn_backward(s, loss));
    CHECK_ERR(tnn_backward(s, loss), TNN_ERR_STATE, "already");
    CHECK_OK(tnn_realize(s, loss));
    double v[4] = {1, -2, 3, 0.5}, g[4];
    CHECK_OK(tnn_upload_from_float_array(s, a, v, 4));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, tnn_grad(s, a), g, 4));
    for (int i = 0; i < 4; i++) CHECK(g[i] == 2 * v[i], "d sum(a*a) = 2a: %g", g[i]);
    CHECK_OK(tnn_download_to_f64_array(s, tnn_grad(s, unused), g, 4));
    CHECK(g[0] == 0 && g[3] == 0, "unused parameter gets zeros");
    tnn_session_free(s);
}


/* RoPE + grouped-query causal attention: forward against a double
 * reference, then gradients by finite differences. */
static void ref_rope(double *x, int N, int H, int hd, int T, double base, int mode) {
    for (int r = 0; r < N; r++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < hd / 2; i++) {
                double th = (r % T) * pow(base, -2.0 * i / hd);
                int a = mode ? i : 2 * i, b = mode ? i + hd / 2 : 2 * i + 1;
                double *v = x + r * H * hd + h * hd, x0 = v[a], x1 = v[b];
                v[a] = x0 * cos(th) - x1 * sin(th);
                v[b] = x0 * sin(th) + x1 * cos(th);
            }
}

static void test_rope_attention(void) {
    const int B = 2, T = 7, H = 4, Hkv = 2, hd = 6, N = B * T;
    for (int mode = 0; mode <= 1; mode++) {
        tnn_session *s = tnn_session_new(TH_BACKEND);
        tnn_tensor *q = tnn_input_2d_f32(s, N, H * hd), *k = tnn_input_2d_f32(s, N, Hkv * hd);
        tnn_tensor *v = tnn_input_2d_f32(s, N, Hkv * hd);
        tnn_tensor *qr = tnn_rope(s, q, H, T, 10000.0, mode), *kr = tnn_rope(s, k, Hkv, T, 10000.0, mode);
        tnn_tensor *o = tnn_attention(s, qr, kr, v, H, Hkv, T);
        CHECK(o != NULL, "attention: %s", tnn_last_error());
        tnn_set_output(qr);
        CHECK_OK(tnn_realize(s, o));
        double *qv = th_alloc(N * H * hd), *kv = th_alloc(N * Hkv * hd), *vv = th_alloc(N * Hkv * hd);
        double *got = th_alloc(N * H * hd), *want = th_alloc(N * H * hd), *qg = th_alloc(N * H * hd);
        th_seed(5 + mode);
        th_fill_f32(qv, N * H * hd, 2.0);
        th_fill_f32(kv, N * Hkv * hd, 2.0);
        th_fill_f32(vv, N * Hkv * hd, 1.0);
        CHECK_OK(tnn_upload_from_float_array(s, q, qv, N * H * hd));
        CHECK_OK(tnn_upload_from_float_array(s, k, kv, N * Hkv * hd));
        CHECK_OK(tnn_upload_from_float_array(s, v, vv, N * Hkv * hd));
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_to_f64_array(s, o, got, N * H * hd));
        CHECK_OK(tnn_download_to_f64_array(s, qr, qg, N * H * hd));
        ref_rope(qv, N, H, hd, T, 10000.0, mode);
        ref_rope(kv, N, Hkv, hd, T, 10000.0, mode);
        CHECK(th_err(qg, qv, N * H * hd, 1e-6, 1e-5) <= 1.0, "rope mode %d", mode);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++) {
                    double sc[16], mx = -1e300, sum = 0;
                    const double *qq = qv + (b * T + t) * H * hd + h * hd;
                    int kh = h / (H / Hkv);
                    for (int j = 0; j <= t; j++) {
                        const double *kk = kv + (b * T + j) * Hkv * hd + kh * hd;
                        sc[j] = 0;
                        for (int d = 0; d < hd; d++) sc[j] += qq[d] * kk[d];
                        sc[j] /= sqrt((double)hd);
                        mx = fmax(mx, sc[j]);
                    }
                    for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                    for (int d = 0; d < hd; d++) {
                        double acc = 0;
                        for (int j = 0; j <= t; j++)
                            acc += sc[j] / sum * vv[(b * T + j) * Hkv * hd + kh * hd + d];
                        want[(b * T + t) * H * hd + h * hd + d] = acc;
                    }
                }
        double e = th_err(got, want, N * H * hd, 1e-5, 1e-4);
        CHECK(e <= 1.0, "attention forward mode %d off by %g tolerances", mode, e);
        free(qv), free(kv), free(vv), free(got), free(want), free(qg);
        tnn_session_free(s);
    }

    /* gradients through projections, rope and attention */
    tnn_session *s = tnn_session_new(TH_BACKEND);
    param_t ps[5];
    const int C = 12;
    tnn_tensor *x = param(s, &ps[0], 2, N, C, 0);
    tnn_tensor *wq = param(s, &ps[1], 2, H * hd, C, 0);
    tnn_tensor *wk = param(s, &ps[2], 2, Hkv * hd, C, 0);
    tnn_tensor *wv = param(s, &ps[3], 2, Hkv * hd, C, 0);
    tnn_tensor *wo = param(s, &ps[4], 2, C, H * hd, 0);
    tnn_tensor *q = tnn_rope(s, tnn_matmul_nt(s, x, wq), H, T, 10000.0, 0);
    tnn_tensor *k = tnn_rope(s, tnn_matmul_nt(s, x, wk), Hkv, T, 10000.0, 0);
    tnn_tensor *v = tnn_matmul_nt(s, x, wv);
    tnn_tensor *o = tnn_matmul_nt(s, tnn_attention(s, q, k, v, H, Hkv, T), wo);
    tnn_tensor *loss = tnn_mean(s, tnn_mul(s, o, tnn_silu(s, x)));
    grad_check("rope+attention", s, loss, ps, 5, NULL, H_STEP, TOL);
    tnn_session_free(s);
}

/* LayerNorm (gain and bias), permute, concat and narrow: forward against
 * references, then gradients by finite differences. */
static void test_layer_norm_and_shapes(void) {
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *x = tnn_input_2d_f32(s, 3, 5), *g = tnn_input_1d_f32(s, 5), *b = tnn_input_1d_f32(s, 5);
    tnn_tensor *ln = tnn_layer_norm(s, x, g, b, 1e-5);
    int axes[2] = {1, 0};
    tnn_tensor *pm = tnn_permute(s, x, axes);
    tnn_tensor *cc = tnn_concat(s, x, ln, 1);
    tnn_tensor *nw = tnn_narrow(s, cc, 1, 3, 4);
    tnn_set_output(pm);
    tnn_set_output(cc);
    tnn_set_output(nw);
    CHECK_OK(tnn_realize(s, ln));
    double xv[15], gv[5], bv[5], y[15], p[15], c[30], w[12];
    th_seed(21);
    th_fill_f32(xv, 15, 2.0);
    th_fill_f32(gv, 5, 1.0);
    th_fill_f32(bv, 5, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, 15));
    CHECK_OK(tnn_upload_from_float_array(s, g, gv, 5));
    CHECK_OK(tnn_upload_from_float_array(s, b, bv, 5));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, ln, y, 15));
    CHECK_OK(tnn_download_to_f64_array(s, pm, p, 15));
    CHECK_OK(tnn_download_to_f64_array(s, cc, c, 30));
    CHECK_OK(tnn_download_to_f64_array(s, nw, w, 12));
    double want[15];
    for (int r = 0; r < 3; r++) {
        double m = 0, v = 0;
        for (int j = 0; j < 5; j++) m += xv[r * 5 + j] / 5;
        for (int j = 0; j < 5; j++) v += (xv[r * 5 + j] - m) * (xv[r * 5 + j] - m) / 5;
        for (int j = 0; j < 5; j++)
            want[r * 5 + j] = (xv[r * 5 + j] - m) / sqrt(v + 1e-5) * gv[j] + bv[j];
    }
    CHECK(th_err(y, want, 15, 1e-6, 1e-5) <= 1.0, "layer norm forward");
    bool ok = true;
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 5; j++) {
            ok &= p[j * 3 + r] == xv[r * 5 + j];
            ok &= c[r * 10 + j] == xv[r * 5 + j] && c[r * 10 + 5 + j] == y[r * 5 + j];
        }
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 4; j++) ok &= w[r * 4 + j] == c[r * 10 + 3 + j];
    CHECK(ok, "permute / concat / narrow moved elements wrongly");
    CHECK_NULL(tnn_narrow(s, x, 1, 3, 3), TNN_ERR_RANGE, "not inside");
    CHECK_NULL(tnn_concat(s, x, pm, 0), TNN_ERR_SHAPE, "cannot be joined");
    int bad[2] = {0, 0};
    CHECK_NULL(tnn_permute(s, x, bad), TNN_ERR_ARG, "permutation");
    tnn_session_free(s);

    s = tnn_session_new(TH_BACKEND);
    param_t ps[4];
    tnn_tensor *a = param(s, &ps[0], 3, 2, 3, 4);
    tnn_tensor *gg = param(s, &ps[1], 1, 4, 0, 0);
    tnn_tensor *bb = param(s, &ps[2], 1, 4, 0, 0);
    tnn_tensor *e = param(s, &ps[3], 3, 2, 3, 2);
    int ax3[3] = {2, 0, 1};
    tnn_tensor *h = tnn_layer_norm(s, a, gg, bb, 1e-5);           /* (2,3,4) */
    tnn_tensor *j = tnn_concat(s, h, e, 2);                       /* (2,3,6) */
    tnn_tensor *k = tnn_narrow(s, tnn_permute(s, j, ax3), 0, 1, 4); /* (4,2,3) */
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, k, tnn_silu(s, k)));
    grad_check("layer_norm+permute+concat+narrow", s, loss, ps, 4, NULL, H_STEP, TOL);
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Optimizers                                                               */
/* ------------------------------------------------------------------------ */

/* loss = sum(w * w * c) so g = 2 c w; AdamW / SGD against the formulas in
 * double. */
static void run_optimizer(int adam, double clip) {
    const int n = 37, steps = 5;
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *w = tnn_input_1d_f32(s, n), *c = tnn_input_1d_f32(s, n);
    tnn_set_param(w);
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, tnn_mul(s, w, w), c));
    CHECK_ERR(tnn_optimizer_adamw(s, 0.1, 0.9, 0.999, 1e-8, 0.0), TNN_ERR_STATE, "tnn_backward");
    CHECK_OK(tnn_backward(s, loss));
    double lr = 0.05, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, mu = 0.9;
    if (adam)
        CHECK_OK(tnn_optimizer_adamw(s, lr, b1, b2, eps, wd));
    else
        CHECK_OK(tnn_optimizer_sgd(s, lr, mu, wd));
    CHECK_OK(tnn_set_grad_clip(s, clip));
    CHECK_OK(tnn_realize(s, loss));
    double wv[37], cv[37], m[37] = {0}, v[37] = {0}, got[37];
    th_seed(11);
    th_fill_f32(wv, n, 1.0);
    for (int i = 0; i < n; i++) cv[i] = (double)(float)(0.5 + th_uniform());
    CHECK_OK(tnn_upload_from_float_array(s, w, wv, n));
    CHECK_OK(tnn_upload_from_float_array(s, c, cv, n));
    for (int t = 1; t <= steps; t++) {
        CHECK_OK(tnn_compute(s));
        double g[37], norm = 0;
        for (int i = 0; i < n; i++) {
            g[i] = (double)(float)(2 * cv[i] * wv[i]);
            norm += g[i] * g[i];
        }
        norm = sqrt(norm);
        double sc = (clip > 0 && norm > clip) ? clip / (norm + 1e-6) : 1.0;
        for (int i = 0; i < n; i++) {
            double gi = g[i] * sc;
            if (adam) {
                double p = wv[i] * (1 - lr * wd);
                m[i] = b1 * m[i] + (1 - b1) * gi;
                v[i] = b2 * v[i] + (1 - b2) * gi * gi;
                wv[i] = p - lr / (1 - pow(b1, t)) * m[i] / (sqrt(v[i]) / sqrt(1 - pow(b2, t)) + eps);
            } else {
                double d = gi + wd * wv[i];
                m[i] = t == 1 ? d : mu * m[i] + d;
                wv[i] -= lr * m[i];
            }
        }
        CHECK(fabs(tnn_grad_norm(s) - norm) <= 1e-5 * norm, "grad norm %g vs %g",
              tnn_grad_norm(s), norm);
    }
    CHECK_OK(tnn_download_to_f64_array(s, w, got, n));
    double e = th_err(got, wv, n, 1e-6, 1e-5);
    CHECK(e <= 1.0, "%s (clip %g): parameters off by %g tolerances", adam ? "adamw" : "sgd",
          clip, e);
    CHECK(tnn_optimizer_steps(s) == steps, "steps %lld", (long long)tnn_optimizer_steps(s));

    /* A non-finite loss skips the step and leaves the weights alone. */
    cv[3] = NAN;
    CHECK_OK(tnn_upload_from_float_array(s, c, cv, n));
    tnn_set_log_level(TNN_LOG_NONE);
    CHECK_OK(tnn_compute(s));
    tnn_set_log_level(TNN_LOG_WARN);
    double after[37];
    CHECK_OK(tnn_download_to_f64_array(s, w, after, n));
    CHECK(memcmp(after, got, sizeof after) == 0, "weights changed on a NaN step");
    CHECK(tnn_optimizer_skipped(s) == 1, "skipped %lld", (long long)tnn_optimizer_skipped(s));
    CHECK(tnn_optimizer_steps(s) == steps, "a skipped step is not counted");
    CHECK_ERR(tnn_set_lr(s, -1), TNN_ERR_ARG, "lr=-1");
    tnn_session_free(s);
}

/* Saving parameters + optimizer state + step count and restoring them into
 * a fresh session continues bit for bit like an uninterrupted run. */
typedef struct {
    tnn_session *s;
    tnn_tensor *w, *c, *loss;
} quad_t;

static void quad_build(quad_t *q, int n) {
    q->s = tnn_session_new(TH_BACKEND);
    q->w = tnn_input_1d_f32(q->s, n);
    q->c = tnn_input_1d_f32(q->s, n);
    tnn_set_param(q->w);
    q->loss = tnn_sum(q->s, tnn_mul(q->s, tnn_mul(q->s, q->w, q->w), tnn_silu(q->s, q->c)));
    CHECK_OK(tnn_backward(q->s, q->loss));
    CHECK_OK(tnn_optimizer_adamw(q->s, 0.05, 0.9, 0.95, 1e-8, 0.1));
    CHECK_OK(tnn_realize(q->s, q->loss));
}

static void test_optimizer_resume(void) {
    enum { N = 29 };
    float w0[N], c0[N];
    for (int i = 0; i < N; i++) w0[i] = (float)th_sym(1.0), c0[i] = (float)(0.5 + th_uniform());
    quad_t a, b;
    quad_build(&a, N);
    CHECK_OK(tnn_upload_f32(a.s, a.w, w0, N));
    CHECK_OK(tnn_upload_f32(a.s, a.c, c0, N));
    for (int i = 0; i < 2; i++) CHECK_OK(tnn_compute(a.s));
    float w[N], m[N], v[N];
    CHECK_OK(tnn_download_f32(a.s, a.w, w, N));
    CHECK_OK(tnn_optimizer_get_state(a.s, a.w, 0, m, N));
    CHECK_OK(tnn_optimizer_get_state(a.s, a.w, 1, v, N));
    int64_t steps = tnn_optimizer_steps(a.s);
    for (int i = 0; i < 3; i++) CHECK_OK(tnn_compute(a.s));
    float wa[N], wb[N];
    CHECK_OK(tnn_download_f32(a.s, a.w, wa, N));

    quad_build(&b, N);
    CHECK_OK(tnn_upload_f32(b.s, b.w, w, N));
    CHECK_OK(tnn_upload_f32(b.s, b.c, c0, N));
    CHECK_OK(tnn_optimizer_set_state(b.s, b.w, 0, m, N));
    CHECK_OK(tnn_optimizer_set_state(b.s, b.w, 1, v, N));
    CHECK_OK(tnn_optimizer_set_steps(b.s, steps));
    for (int i = 0; i < 3; i++) CHECK_OK(tnn_compute(b.s));
    CHECK_OK(tnn_download_f32(b.s, b.w, wb, N));
    CHECK(memcmp(wa, wb, sizeof wa) == 0, "resumed run differs from the uninterrupted one");
    CHECK_ERR(tnn_optimizer_get_state(b.s, b.w, 2, m, N), TNN_ERR_ARG, "which=2");
    CHECK_ERR(tnn_optimizer_get_state(b.s, b.w, 0, m, N - 1), TNN_ERR_SHAPE, "n=28");
    CHECK_ERR(tnn_optimizer_get_state(b.s, b.c, 0, m, N), TNN_ERR_ARG, "not a parameter");
    CHECK_ERR(tnn_optimizer_set_steps(b.s, -1), TNN_ERR_ARG, "steps=-1");
    tnn_session_free(a.s);
    tnn_session_free(b.s);
}

/* tnn_compute_to on a training session: the loss alone (the forward pass:
 * parameters, moments and the step count untouched, the gradients left as
 * the last full compute wrote them, which shows the backward nodes did not
 * run), the gradients without a step (those of the full compute that
 * follows, which then steps), and its refusals. */
static void test_compute_to(void) {
    enum { N = 12, K = 16, H = 24, V = 10 };
    tnn_session *s = tnn_session_new(TH_BACKEND);
    tnn_tensor *x = tnn_input_2d_f32(s, N, K), *w1 = tnn_input_2d_f32(s, H, K);
    tnn_tensor *w2 = tnn_input_2d_f32(s, V, H), *tg = tnn_input_1d_i32(s, N);
    tnn_set_param(w1);
    tnn_set_param(w2);
    tnn_tensor *hid = tnn_gelu(s, tnn_matmul_nt(s, x, w1)); /* fused on the CPU */
    tnn_tensor *loss = tnn_cross_entropy(s, tnn_matmul_nt(s, hid, w2), tg, -1);
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_optimizer_adamw(s, 0.01, 0.9, 0.999, 1e-8, 0.1));
    CHECK_ERR(tnn_compute_to(s, loss), TNN_ERR_STATE, "tnn_realize");
    CHECK_OK(tnn_realize(s, loss));
    double xv[N * K], w1v[H * K], w2v[V * H];
    int64_t t[N];
    th_fill(xv, N * K, 1.0);
    th_fill_f32(w1v, H * K, 0.5);
    th_fill_f32(w2v, V * H, 0.5);
    for (int i = 0; i < N; i++) t[i] = (i * 7) % V;
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, N * K));
    CHECK_OK(tnn_upload_from_float_array(s, w1, w1v, H * K));
    CHECK_OK(tnn_upload_from_float_array(s, w2, w2v, V * H));
    CHECK_OK(tnn_upload_from_int_array(s, tg, t, N));
    tnn_tensor *g1 = tnn_grad(s, w1), *g2 = tnn_grad(s, w2);

    double l_part, l_full, w[H * K], m[H * K];
    CHECK_OK(tnn_compute_to(s, loss));
    CHECK_OK(tnn_download_to_f64_array(s, loss, &l_part, 1));
    CHECK(isfinite(l_part) && l_part > 0.5, "forward-only loss %g", l_part);
    CHECK_OK(tnn_compute_to(s, g1));
    double g1_part[H * K], g1_full[H * K], g2v[V * H], g2_full[V * H];
    CHECK_OK(tnn_download_to_f64_array(s, g1, g1_part, H * K));
    CHECK_OK(tnn_download_to_f64_array(s, w1, w, H * K));
    CHECK(memcmp(w, w1v, sizeof w) == 0, "tnn_compute_to changed a parameter");
    CHECK(tnn_optimizer_steps(s) == 0, "tnn_compute_to stepped: %lld steps",
          (long long)tnn_optimizer_steps(s));
    float mf[H * K];
    CHECK_OK(tnn_optimizer_get_state(s, w1, 0, mf, H * K));
    double mmax = 0;
    for (int i = 0; i < H * K; i++) mmax = fmax(mmax, fabs(mf[i]));
    CHECK(mmax == 0, "tnn_compute_to moved the first moment (max %g)", mmax);

    CHECK_OK(tnn_compute(s)); /* the full step: same loss and gradients, then the update */
    CHECK_OK(tnn_download_to_f64_array(s, loss, &l_full, 1));
    CHECK_OK(tnn_download_to_f64_array(s, g1, g1_full, H * K));
    CHECK_OK(tnn_download_to_f64_array(s, g2, g2_full, V * H));
    CHECK(fabs(l_part - l_full) <= 1e-6 * fabs(l_full), "loss %.9g alone, %.9g in the step",
          l_part, l_full);
    double e = th_err(g1_part, g1_full, H * K, 1e-7, 1e-5);
    CHECK(e <= 1.0, "gradient without a step differs from the step's by %.3g tolerances", e);
    CHECK(tnn_optimizer_steps(s) == 1, "steps %lld after one compute",
          (long long)tnn_optimizer_steps(s));
    CHECK_OK(tnn_download_to_f64_array(s, w1, w, H * K));
    CHECK(memcmp(w, w1v, sizeof w) != 0, "the full compute did not step");
    CHECK_OK(tnn_optimizer_get_state(s, w1, 0, mf, H * K));
    double m_want[H * K]; /* the first step's moment: (1 - beta1) g */
    for (int i = 0; i < H * K; i++) m[i] = mf[i], m_want[i] = 0.1 * g1_full[i];
    e = th_err(m, m_want, H * K, 1e-8, 1e-5);
    CHECK(e <= 1.0, "first moment after one step off by %.3g tolerances", e);

    /* new inputs, the loss alone: it moves, the gradients stay the step's */
    for (int i = 0; i < N * K; i++) xv[i] = -xv[i] * 0.5;
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, N * K));
    double l_new;
    CHECK_OK(tnn_compute_to(s, loss));
    CHECK_OK(tnn_download_to_f64_array(s, loss, &l_new, 1));
    CHECK(fabs(l_new - l_full) > 1e-4, "the loss did not follow the new input (%g, %g)", l_new,
          l_full);
    CHECK_OK(tnn_download_to_f64_array(s, g2, g2v, V * H));
    CHECK(memcmp(g2v, g2_full, sizeof g2v) == 0,
          "a forward-only compute rewrote a gradient (the backward nodes ran)");
    CHECK(tnn_optimizer_steps(s) == 1, "forward-only compute stepped");

    CHECK_ERR(tnn_compute_to(s, hid), TNN_ERR_ARG, "tnn_set_output");
    CHECK_ERR(tnn_compute_to(s, NULL), TNN_ERR_ARG, "tnn_compute_to");
    tnn_session *other = tnn_session_new(TH_BACKEND);
    CHECK_ERR(tnn_compute_to(other, loss), TNN_ERR_ARG, "tnn_compute_to");
    tnn_session_free(other);
    tnn_session_free(s);
}

/* A leaf sharing another session's leaf storage (how a language model's
 * sampling graph reads its training graph's weights): it computes with the
 * other session's current values, step after step, refuses uploads, and
 * freeing both sessions frees the storage once (the sanitizer build
 * checks); shares that cannot be are refused. */
static void test_shared_leaves(void) {
    enum { N = 33 };
    quad_t a;
    quad_build(&a, N);
    float w0[N], c0[N];
    for (int i = 0; i < N; i++) w0[i] = (float)th_sym(1.0), c0[i] = (float)(0.5 + th_uniform());
    CHECK_OK(tnn_upload_f32(a.s, a.w, w0, N));
    CHECK_OK(tnn_upload_f32(a.s, a.c, c0, N));
    tnn_session *b = tnn_session_new(TH_BACKEND);
    tnn_tensor *bw = tnn_input_1d_f32(b, N), *bx = tnn_input_1d_f32(b, N);
    tnn_tensor *y = tnn_mul(b, bw, bx);
    CHECK_OK(tnn_realize(b, y));
    CHECK_OK(tnn__tensor_share(bw, a.w));
    float x[N], got[N], w[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i + 1);
    CHECK_OK(tnn_upload_f32(b, bx, x, N));
    for (int step = 0; step < 3; step++) {
        CHECK_OK(tnn_compute(b));
        CHECK_OK(tnn_download_f32(b, y, got, N));
        CHECK_OK(tnn_download_f32(a.s, a.w, w, N));
        int bad = 0;
        for (int i = 0; i < N; i++) bad += got[i] != w[i] * x[i];
        CHECK(bad == 0, "step %d: %d products not of the other session's current weights", step,
              bad);
        CHECK_OK(tnn_compute(a.s)); /* the weights move */
    }
    CHECK_ERR(tnn_upload_f32(b, bw, x, N), TNN_ERR_ARG, "another session's");
    tnn_tensor *odd = tnn_input_1d_f32(b, N - 1), *self = tnn_input_1d_f32(b, N);
    CHECK_OK(tnn_realize(b, y));
    CHECK_ERR(tnn__tensor_share(odd, a.w), TNN_ERR_SHAPE, "differ");
    CHECK_ERR(tnn__tensor_share(self, bx), TNN_ERR_ARG, "another session");
    CHECK_ERR(tnn__tensor_share(bx, a.loss), TNN_ERR_ARG, "two leaves");
    tnn_session_free(b);
    CHECK_OK(tnn_compute(a.s)); /* a's storage is intact after b is gone */
    CHECK_OK(tnn_download_f32(a.s, a.w, w, N));
    tnn_session_free(a.s);
}

int main(void) {
    TH_USE_CUDA("test_autograd");
    test_mlp_cross_entropy();
    test_cross_entropy_padded();
    test_attention_block();
    test_rms_gain_folded();
    test_swiglu();
    test_shapes_and_accumulation();
    test_embedding_path();
    test_unused_param_and_errors();
    test_rope_attention();
    test_layer_norm_and_shapes();
    run_optimizer(1, 0.0);
    run_optimizer(1, 0.5);
    run_optimizer(0, 0.0);
    run_optimizer(0, 0.5);
    test_optimizer_resume();
    test_compute_to();
    test_shared_leaves();
    return th_finish("test_autograd");
}
