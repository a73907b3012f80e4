/* test_seed.c - seed conformance: each TinyNN module method replayed call for call through
 * the C ABI, bit-identical to its one-call tnn_mat_* twin and close to a double reference;
 * the persistent-session workflow; the unbounded scratch and transfers past 16 MiB. */
#include "harness.h"

#include <stdbool.h>

/* ------------------------------------------------------------------------ */
/* The module's Mat, and checks on the calls a replay makes                 */
/* ------------------------------------------------------------------------ */

/* The project's Mat: a row-major f64 matrix. */
typedef struct {
    int nrows, ncols;
    double *flat;
} Mat;

static Mat mat_new(int r, int c) { /* zeros, like Mat.new */
    Mat m = {r, c, th_alloc((size_t)r * (size_t)c)};
    return m;
}
static void mat_free(Mat *m) {
    free(m->flat);
    m->flat = NULL;
}
/* Values in [-range, range) that are exact in f32, so the references see the
 * numbers the library sees. */
static Mat mat_rand(int r, int c, double range) {
    Mat m = mat_new(r, c);
    th_fill_f32(m.flat, (size_t)r * (size_t)c, range);
    return m;
}
static size_t mat_n(const Mat *m) { return (size_t)m->nrows * (size_t)m->ncols; }

static const double U = 5.9604644775390625e-08; /* 2^-24: f32 unit roundoff */
/* One correctly rounded f32 operation: u relative (0.1% slack for evaluating
 * the bound itself in double). */
static const double ONE_ROUNDING = 5.9604644775390625e-08 * 1.001;
static int verbose;

/* A call inside a replay that must succeed. The replays call exactly what the
 * module calls; these wrappers only look at what comes back. */
static int call_failed(const char *expr, int line, int rc) {
    th_fail++;
    fprintf(stderr, "FAIL %s:%d: %s -> %s: %s\n", __FILE__, line, expr, tnn_status_name(rc),
            tnn_last_error());
    return rc;
}
#define S_OK(expr)                                                                            \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        if (rc_ != TNN_OK) call_failed(#expr, __LINE__, rc_);                                 \
    } while (0)
static void *nn_(void *p, const char *expr, int line) {
    if (!p) call_failed(expr, line, tnn_last_status());
    return p;
}
#define NN(expr) nn_((expr), #expr, __LINE__)

/* Start and end of a replay: the void calls (tnn_scratch_set, ...) report
 * through tnn_last_status, so nothing may have failed in between. */
static void replay_begin(void) { tnn_clear_error(); }
static void replay_end(const char *method) {
    CHECK(tnn_last_status() == TNN_OK, "TinyNN.%s: a call failed: %s", method, tnn_last_error());
}

/* ------------------------------------------------------------------------ */
/* Comparisons                                                              */
/* ------------------------------------------------------------------------ */

/* The contract: the module's sequence and the one-call function give the
 * same numbers, bit for bit. */
static void check_same(const char *what, const double *seed, const double *one, size_t n) {
    size_t bad = n;
    if (memcmp(seed, one, n * sizeof(double)) != 0)
        for (size_t i = 0; i < n && bad == n; i++)
            if (memcmp(&seed[i], &one[i], sizeof(double)) != 0) bad = i;
    CHECK(bad == n, "%s: module sequence and one-call function differ at [%zu]: %.17g vs %.17g",
          what, bad, bad < n ? seed[bad] : 0.0, bad < n ? one[bad] : 0.0);
}

/* |got - ref| <= bound[i] for every element (a per-element error bound). */
static void check_bound(const char *what, const double *got, const double *ref,
                        const double *bound, size_t n) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - ref[i]);
        double e = d == 0 ? 0 : d / bound[i];
        if (!(e <= worst)) worst = e, at = i; /* NaN becomes the worst */
        if (isnan(e)) break;
    }
    CHECK(worst <= 1.0, "%s: [%zu] = %.9g, reference %.9g, bound %.3g (%.3g bounds off)", what,
          at, got[at], ref[at], bound[at], worst);
    if (verbose) printf("  %-44s err/bound %.3g\n", what, worst);
}

/* Same, with bound = atol + rtol * |ref|. */
static void check_rel(const char *what, const double *got, const double *ref, size_t n,
                      double atol, double rtol) {
    double *b = th_alloc(n);
    for (size_t i = 0; i < n; i++) b[i] = atol + rtol * fabs(ref[i]);
    check_bound(what, got, ref, b, n);
    free(b);
}

static void check_exact(const char *what, const double *got, const double *ref, size_t n) {
    size_t bad = n;
    for (size_t i = 0; i < n && bad == n; i++)
        if (!(got[i] == ref[i])) bad = i;
    CHECK(bad == n, "%s: [%zu] = %.17g, want exactly %.17g", what, bad, bad < n ? got[bad] : 0.0,
          bad < n ? ref[bad] : 0.0);
}

/* ------------------------------------------------------------------------ */
/* Double-precision references                                              */
/* ------------------------------------------------------------------------ */

/* ref (M x N) = op(A) @ op(B) with op(A)[i][k] = ta ? A[k*M+i] : A[i*K+k] and
 * op(B)[k][j] = tb ? B[j*K+k] : B[k*N+j]; bound = the f32 error bound of a
 * K-term sum of products, (K+2) u sum|a||b|. */
static void ref_product(bool ta, bool tb, const double *A, const double *B, int M, int N, int K,
                        double *ref, double *bound) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, as = 0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * M + i] : A[(size_t)i * K + k];
                double b = tb ? B[(size_t)j * K + k] : B[(size_t)k * N + j];
                s += a * b;
                as += fabs(a * b);
            }
            ref[(size_t)i * N + j] = s;
            if (bound) bound[(size_t)i * N + j] = (K + 2) * U * as + 1e-300;
        }
}

static const double PI = 3.14159265358979323846;
static double gelu_ref(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / PI) * (x + 0.044715 * x * x * x)));
}
static double gelu_grad_ref(double x) {
    double c = sqrt(2.0 / PI), u = c * (x + 0.044715 * x * x * x), t = tanh(u);
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
}
static double sigmoid_ref(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Row softmax; spread[i] = max(row) - x[i] (the f32 subtraction's error
 * grows with it). */
static void softmax_ref(const double *x, int rows, int cols, double *y, double *spread) {
    for (int r = 0; r < rows; r++) {
        const double *xr = x + (size_t)r * cols;
        double mx = xr[0], s = 0;
        for (int j = 1; j < cols; j++) mx = xr[j] > mx ? xr[j] : mx;
        for (int j = 0; j < cols; j++) s += exp(xr[j] - mx);
        for (int j = 0; j < cols; j++) {
            y[(size_t)r * cols + j] = exp(xr[j] - mx) / s;
            if (spread) spread[(size_t)r * cols + j] = mx - xr[j];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* The module's internal helpers, as the Ruby code does them                */
/* ------------------------------------------------------------------------ */

/* TinyNN.stage_row_major_and_upload */
static void stage_row_major_and_upload(tnn_session *sess, tnn_tensor *target, const Mat *m) {
    int n = m->nrows * m->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, m->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, target));
}

/* TinyNN.stage_transposed_and_upload */
static void stage_transposed_and_upload(tnn_session *sess, tnn_tensor *target, const Mat *b) {
    S_OK(tnn_upload_transposed_f64(sess, target, b->flat, b->nrows, b->ncols));
}

/* The result readback every element-wise method ends with. */
static Mat read_row_major(tnn_session *sess, int rows, int cols) {
    Mat out = mat_new(rows, cols);
    int n = rows * cols;
    int i = 0;
    while (i < n) {
        out.flat[i] = tnn_scratch_get(sess, i);
        i = i + 1;
    }
    return out;
}

/* The matmul readback: out[i][j] = scratch[j*m + i]. */
static Mat read_matmul(tnn_session *sess, int m, int n) {
    Mat out = mat_new(m, n);
    int i = 0;
    while (i < m) {
        int j = 0;
        while (j < n) {
            out.flat[i * n + j] = tnn_scratch_get(sess, j * m + i);
            j = j + 1;
        }
        i = i + 1;
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* The module's methods, replayed call for call                             */
/* ------------------------------------------------------------------------ */

/* TinyNN.matmul: a @ b, b staged transposed element by element. */
static Mat seed_matmul(const Mat *a, const Mat *b) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a->nrows, a->ncols));
    tnn_tensor *tb_t = NN(tnn_input_2d_f32(sess, b->ncols, b->nrows));
    tnn_tensor *tc = NN(tnn_matmul(sess, ta, tb_t));
    S_OK(tnn_realize(sess, tc));
    int i = 0;
    int na = a->nrows * a->ncols;
    while (i < na) {
        tnn_scratch_set(sess, i, a->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, ta));
    int bc = b->ncols, br = b->nrows;
    i = 0;
    while (i < br) {
        int j = 0;
        while (j < bc) {
            tnn_scratch_set(sess, j * br + i, b->flat[i * bc + j]);
            j = j + 1;
        }
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tb_t));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_matmul(sess, a->nrows, b->ncols);
    tnn_session_free(sess);
    replay_end("matmul");
    return out;
}

/* TinyNN.matmul_t: a @ b^T, both staged row-major. */
static Mat seed_matmul_t(const Mat *a, const Mat *b) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a->nrows, a->ncols));
    tnn_tensor *tb = NN(tnn_input_2d_f32(sess, b->nrows, b->ncols));
    tnn_tensor *tc = NN(tnn_matmul(sess, ta, tb));
    S_OK(tnn_realize(sess, tc));
    stage_row_major_and_upload(sess, ta, a);
    stage_row_major_and_upload(sess, tb, b);
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_matmul(sess, a->nrows, b->nrows);
    tnn_session_free(sess);
    replay_end("matmul_t");
    return out;
}

/* TinyNN.t_matmul: a^T @ b, both uploaded transposed. */
static Mat seed_t_matmul(const Mat *a, const Mat *b) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta_t = NN(tnn_input_2d_f32(sess, a->ncols, a->nrows));
    tnn_tensor *tb_t = NN(tnn_input_2d_f32(sess, b->ncols, b->nrows));
    tnn_tensor *tc = NN(tnn_matmul(sess, ta_t, tb_t));
    S_OK(tnn_realize(sess, tc));
    stage_transposed_and_upload(sess, ta_t, a);
    stage_transposed_and_upload(sess, tb_t, b);
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_matmul(sess, a->ncols, b->ncols);
    tnn_session_free(sess);
    replay_end("t_matmul");
    return out;
}

/* TinyNN.add and TinyNN.mul: both staged element by element. */
static Mat seed_binary(const Mat *a, const Mat *b, bool mul) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a->nrows, a->ncols));
    tnn_tensor *tb = NN(tnn_input_2d_f32(sess, b->nrows, b->ncols));
    tnn_tensor *tc = mul ? NN(tnn_mul(sess, ta, tb)) : NN(tnn_add(sess, ta, tb));
    S_OK(tnn_realize(sess, tc));
    int n = a->nrows * a->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, a->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, ta));
    i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, b->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tb));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, a->nrows, a->ncols);
    tnn_session_free(sess);
    replay_end(mul ? "mul" : "add");
    return out;
}
static Mat seed_add(const Mat *a, const Mat *b) { return seed_binary(a, b, false); }
static Mat seed_mul(const Mat *a, const Mat *b) { return seed_binary(a, b, true); }

/* TinyNN.scale, gelu, silu, softmax: one input staged element by element. */
enum { UN_SCALE, UN_GELU, UN_SILU, UN_SOFTMAX };
static const char *const un_name[] = {"scale", "gelu", "silu", "softmax"};

static Mat seed_unary(int kind, const Mat *a, double s) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a->nrows, a->ncols));
    tnn_tensor *tc = NULL;
    switch (kind) {
    case UN_SCALE: tc = NN(tnn_scale(sess, ta, s)); break;
    case UN_GELU: tc = NN(tnn_gelu(sess, ta)); break;
    case UN_SILU: tc = NN(tnn_silu(sess, ta)); break;
    default: tc = NN(tnn_softmax(sess, ta)); break;
    }
    S_OK(tnn_realize(sess, tc));
    int n = a->nrows * a->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, a->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, ta));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, a->nrows, a->ncols);
    tnn_session_free(sess);
    replay_end(un_name[kind]);
    return out;
}
static Mat seed_scale(const Mat *a, double s) { return seed_unary(UN_SCALE, a, s); }
static Mat seed_gelu(const Mat *a) { return seed_unary(UN_GELU, a, 0); }
static Mat seed_silu(const Mat *a) { return seed_unary(UN_SILU, a, 0); }
static Mat seed_softmax(const Mat *a) { return seed_unary(UN_SOFTMAX, a, 0); }

/* TinyNN.transpose */
static Mat seed_transpose(const Mat *a) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a->nrows, a->ncols));
    tnn_tensor *tc = NN(tnn_transpose(sess, ta));
    S_OK(tnn_realize(sess, tc));
    int n = a->nrows * a->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, a->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, ta));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = mat_new(a->ncols, a->nrows);
    int rin = a->nrows, cin = a->ncols;
    i = 0;
    while (i < cin) {
        int j = 0;
        while (j < rin) {
            out.flat[i * rin + j] = tnn_scratch_get(sess, i * rin + j);
            j = j + 1;
        }
        i = i + 1;
    }
    tnn_session_free(sess);
    replay_end("transpose");
    return out;
}

/* TinyNN.rms_norm: gamma is an Array<Float> of x.ncols values. */
static Mat seed_rms_norm(const Mat *x, const double *gamma, double eps) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *tx = NN(tnn_input_2d_f32(sess, x->nrows, x->ncols));
    tnn_tensor *tg = NN(tnn_input_2d_f32(sess, 1, x->ncols));
    tnn_tensor *tc = NN(tnn_rms_norm(sess, tx, tg, eps));
    S_OK(tnn_realize(sess, tc));
    int nx = x->nrows * x->ncols;
    int i = 0;
    while (i < nx) {
        tnn_scratch_set(sess, i, x->flat[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tx));
    i = 0;
    while (i < x->ncols) {
        tnn_scratch_set(sess, i, gamma[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tg));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, x->nrows, x->ncols);
    tnn_session_free(sess);
    replay_end("rms_norm");
    return out;
}

/* TinyNN.gelu_back: the scratch kernel, x at [0,n), dh at [n,2n), dx at [2n,3n). */
static Mat seed_gelu_back(const Mat *x, const Mat *dh) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    int n = x->nrows * x->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, x->flat[i]);
        i = i + 1;
    }
    i = 0;
    while (i < n) {
        tnn_scratch_set(sess, n + i, dh->flat[i]);
        i = i + 1;
    }
    tnn_gelu_back_scratch(sess, n);
    Mat out = mat_new(x->nrows, x->ncols);
    i = 0;
    while (i < n) {
        out.flat[i] = tnn_scratch_get(sess, 2 * n + i);
        i = i + 1;
    }
    tnn_session_free(sess);
    replay_end("gelu_back");
    return out;
}

/* TinyNN.silu_back: (x, dy), forward input first. */
static Mat seed_silu_back(const Mat *x, const Mat *dy) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *tx = NN(tnn_input_2d_f32(sess, x->nrows, x->ncols));
    tnn_tensor *tdy = NN(tnn_input_2d_f32(sess, dy->nrows, dy->ncols));
    tnn_tensor *tc = NN(tnn_silu_back(sess, tx, tdy));
    S_OK(tnn_realize(sess, tc));
    stage_row_major_and_upload(sess, tx, x);
    stage_row_major_and_upload(sess, tdy, dy);
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, x->nrows, x->ncols);
    tnn_session_free(sess);
    replay_end("silu_back");
    return out;
}

/* TinyNN.softmax_back: tensors made and passed gradient first (dy, y). */
static Mat seed_softmax_back(const Mat *a_softmax, const Mat *dy) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *tdy = NN(tnn_input_2d_f32(sess, dy->nrows, dy->ncols));
    tnn_tensor *ta = NN(tnn_input_2d_f32(sess, a_softmax->nrows, a_softmax->ncols));
    tnn_tensor *tc = NN(tnn_softmax_back(sess, tdy, ta));
    S_OK(tnn_realize(sess, tc));
    stage_row_major_and_upload(sess, tdy, dy);
    stage_row_major_and_upload(sess, ta, a_softmax);
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, a_softmax->nrows, a_softmax->ncols);
    tnn_session_free(sess);
    replay_end("softmax_back");
    return out;
}

/* TinyNN.rms_norm_back: tensors made and passed gradient first (dy, x). */
static Mat seed_rms_norm_back(const Mat *x, const Mat *dy, double eps) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *tdy = NN(tnn_input_2d_f32(sess, dy->nrows, dy->ncols));
    tnn_tensor *tx = NN(tnn_input_2d_f32(sess, x->nrows, x->ncols));
    tnn_tensor *tc = NN(tnn_rms_norm_back(sess, tdy, tx, eps));
    S_OK(tnn_realize(sess, tc));
    stage_row_major_and_upload(sess, tdy, dy);
    stage_row_major_and_upload(sess, tx, x);
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tc));
    Mat out = read_row_major(sess, x->nrows, x->ncols);
    tnn_session_free(sess);
    replay_end("rms_norm_back");
    return out;
}

/* TinyNN.cross_entropy_grad: one-hot on the host, then softmax, scale,
 * scale and add, each through its own one-shot method. */
static Mat seed_cross_entropy_grad(const Mat *logits, const int64_t *targets, int n_pred) {
    Mat oh = mat_new(logits->nrows, logits->ncols);
    int i = 0;
    while (i < n_pred) {
        oh.flat[i * logits->ncols + targets[i]] = 1.0;
        i = i + 1;
    }
    Mat sm = seed_softmax(logits);
    double inv_n = 1.0 / (double)n_pred;
    Mat sm_s = seed_scale(&sm, inv_n);
    Mat oh_s = seed_scale(&oh, -inv_n);
    Mat out = seed_add(&sm_s, &oh_s);
    mat_free(&oh), mat_free(&sm), mat_free(&sm_s), mat_free(&oh_s);
    return out;
}

/* TinyNN.embed_lookup */
static Mat seed_embed_lookup(const Mat *table, const int64_t *indices, int n_idx) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *ttab = NN(tnn_input_2d_f32(sess, table->nrows, table->ncols));
    tnn_tensor *tidx = NN(tnn_input_1d_i32(sess, n_idx));
    tnn_tensor *tout = NN(tnn_get_rows(sess, ttab, tidx));
    S_OK(tnn_realize(sess, tout));
    stage_row_major_and_upload(sess, ttab, table);
    int i = 0;
    while (i < n_idx) {
        tnn_scratch_set_i32(sess, i, (int)indices[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tidx));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tout));
    Mat out = read_row_major(sess, n_idx, table->ncols);
    tnn_session_free(sess);
    replay_end("embed_lookup");
    return out;
}

/* TinyNN.embed_back: the result's shape comes from a fresh (vocab, d) leaf. */
static Mat seed_embed_back(const Mat *d_out, const int64_t *indices, int n_idx, int vocab_size) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    tnn_tensor *td = NN(tnn_input_2d_f32(sess, d_out->nrows, d_out->ncols));
    tnn_tensor *tidx = NN(tnn_input_1d_i32(sess, n_idx));
    tnn_tensor *tshape = NN(tnn_input_2d_f32(sess, vocab_size, d_out->ncols));
    tnn_tensor *tout = NN(tnn_get_rows_back(sess, td, tidx, tshape));
    S_OK(tnn_realize(sess, tout));
    stage_row_major_and_upload(sess, td, d_out);
    int i = 0;
    while (i < n_idx) {
        tnn_scratch_set_i32(sess, i, (int)indices[i]);
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tidx));
    S_OK(tnn_compute(sess));
    S_OK(tnn_download(sess, tout));
    Mat out = read_row_major(sess, vocab_size, d_out->ncols);
    tnn_session_free(sess);
    replay_end("embed_back");
    return out;
}

/* TinyNN.adam_step: param, grad, m, v staged at [0,n), [n,2n), [2n,3n), [3n,4n). */
typedef struct {
    Mat param, m, v;
} AdamStepResult;

static AdamStepResult seed_adam_step(const Mat *param, const Mat *grad, const Mat *m,
                                     const Mat *v, double lr, double b1, double b2, double eps,
                                     double omc1, double omc2) {
    replay_begin();
    tnn_session *sess = NN(tnn_session_new(0));
    int n = param->nrows * param->ncols;
    int i = 0;
    while (i < n) {
        tnn_scratch_set(sess, i, param->flat[i]);
        i = i + 1;
    }
    i = 0;
    while (i < n) {
        tnn_scratch_set(sess, n + i, grad->flat[i]);
        i = i + 1;
    }
    i = 0;
    while (i < n) {
        tnn_scratch_set(sess, 2 * n + i, m->flat[i]);
        i = i + 1;
    }
    i = 0;
    while (i < n) {
        tnn_scratch_set(sess, 3 * n + i, v->flat[i]);
        i = i + 1;
    }
    tnn_adam_step_scratch(sess, n, lr, b1, b2, eps, omc1, omc2);
    AdamStepResult r = {mat_new(param->nrows, param->ncols), mat_new(param->nrows, param->ncols),
                        mat_new(param->nrows, param->ncols)};
    i = 0;
    while (i < n) {
        r.param.flat[i] = tnn_scratch_get(sess, i);
        r.m.flat[i] = tnn_scratch_get(sess, 2 * n + i);
        r.v.flat[i] = tnn_scratch_get(sess, 3 * n + i);
        i = i + 1;
    }
    tnn_session_free(sess);
    replay_end("adam_step");
    return r;
}

/* TinyNN.sgd_step = add(param, scale(grad, -lr)) */
static Mat seed_sgd_step(const Mat *param, const Mat *grad, double lr) {
    Mat s = seed_scale(grad, -lr);
    Mat out = seed_add(param, &s);
    mat_free(&s);
    return out;
}

/* TinyNN.ffn_pipeline = matmul(gelu(matmul(h, w1)), w2), three one-shot calls. */
static Mat seed_ffn_pipeline(const Mat *h, const Mat *w1, const Mat *w2) {
    Mat pre = seed_matmul(h, w1);
    Mat hidden = seed_gelu(&pre);
    Mat out = seed_matmul(&hidden, w2);
    mat_free(&pre), mat_free(&hidden);
    return out;
}

/* ------------------------------------------------------------------------ */
/* The persistent-session helpers, as the Ruby code does them               */
/* ------------------------------------------------------------------------ */

static tnn_session *persistent_new(int prefer_cuda) { return NN(tnn_session_new(prefer_cuda)); }
static void persistent_free(tnn_session *sess) { tnn_session_free(sess); }
static tnn_tensor *alloc_2d(tnn_session *sess, int rows, int cols) {
    return NN(tnn_input_2d_f32(sess, rows, cols));
}
static tnn_tensor *alloc_1d_i32(tnn_session *sess, int n) {
    return NN(tnn_input_1d_i32(sess, n));
}
static tnn_tensor *build_matmul(tnn_session *sess, tnn_tensor *ta, tnn_tensor *tb) {
    return NN(tnn_matmul(sess, ta, tb));
}
static tnn_tensor *build_add(tnn_session *sess, tnn_tensor *ta, tnn_tensor *tb) {
    return NN(tnn_add(sess, ta, tb));
}
static tnn_tensor *build_gelu(tnn_session *sess, tnn_tensor *ta) {
    return NN(tnn_gelu(sess, ta));
}
static tnn_tensor *build_softmax(tnn_session *sess, tnn_tensor *ta) {
    return NN(tnn_softmax(sess, ta));
}
static tnn_tensor *build_scale(tnn_session *sess, tnn_tensor *ta, double s) {
    return NN(tnn_scale(sess, ta, s));
}
static tnn_tensor *build_rms_norm(tnn_session *sess, tnn_tensor *tx, tnn_tensor *tgamma,
                                  double eps) {
    return NN(tnn_rms_norm(sess, tx, tgamma, eps));
}
static void realize(tnn_session *sess, tnn_tensor *result) { S_OK(tnn_realize(sess, result)); }
static void compute(tnn_session *sess) { S_OK(tnn_compute(sess)); }

/* TinyNN.upload_row_major: one call, no scratch. */
static void upload_row_major(tnn_session *sess, tnn_tensor *tensor, const Mat *mat) {
    S_OK(tnn_upload_from_float_array(sess, tensor, mat->flat, mat_n(mat)));
}
/* TinyNN.upload_transposed: the per-element scratch version. */
static void upload_transposed(tnn_session *sess, tnn_tensor *tensor, const Mat *mat) {
    int br = mat->nrows, bc = mat->ncols;
    int i = 0;
    while (i < br) {
        int j = 0;
        while (j < bc) {
            tnn_scratch_set(sess, j * br + i, mat->flat[i * bc + j]);
            j = j + 1;
        }
        i = i + 1;
    }
    S_OK(tnn_upload(sess, tensor));
}
/* TinyNN.upload_int_array */
static void upload_int_array(tnn_session *sess, tnn_tensor *tensor, const int64_t *indices,
                             int length) {
    S_OK(tnn_upload_from_int_array(sess, tensor, indices, (size_t)length));
}
/* TinyNN.download_matmul: transposed readback through the scratch. */
static Mat download_matmul(tnn_session *sess, tnn_tensor *tensor, int m, int n) {
    S_OK(tnn_download(sess, tensor));
    return read_matmul(sess, m, n);
}
/* TinyNN.download_row_major */
static Mat download_row_major(tnn_session *sess, tnn_tensor *dl_handle, int rows, int cols) {
    S_OK(tnn_download(sess, dl_handle));
    return read_row_major(sess, rows, cols);
}
/* TinyNN.download_to_mat: one call, no scratch. */
static Mat download_to_mat(tnn_session *sess, tnn_tensor *dl_handle, int rows, int cols) {
    Mat out = mat_new(rows, cols);
    S_OK(tnn_download_to_f64_array(sess, dl_handle, out.flat, (size_t)rows * (size_t)cols));
    return out;
}

/* ------------------------------------------------------------------------ */
/* Part 1: every method, module sequence vs one-call vs reference           */
/* ------------------------------------------------------------------------ */

static char lbl[128];
static const char *label(const char *method, const char *part, int r, int c) {
    snprintf(lbl, sizeof lbl, "%s %dx%d %s", method, r, c, part);
    return lbl;
}

/* (rows, cols) for the element-wise and row methods. */
static const int EW_SHAPES[][2] = {{1, 1}, {1, 7}, {3, 33}, {7, 65}, {33, 7},
                                   {65, 1}, {65, 65}, {127, 513}};
#define N_EW (int)(sizeof EW_SHAPES / sizeof EW_SHAPES[0])

/* (M, K, N) for the products. */
static const int MM_SHAPES[][3] = {{1, 1, 1},   {1, 7, 3},   {3, 1, 7},    {7, 33, 1},
                                   {33, 65, 7}, {65, 3, 33}, {7, 65, 65},  {65, 65, 65},
                                   {3, 300, 520}};
#define N_MM (int)(sizeof MM_SHAPES / sizeof MM_SHAPES[0])

static void test_products(void) {
    for (int s = 0; s < N_MM; s++) {
        int M = MM_SHAPES[s][0], K = MM_SHAPES[s][1], N = MM_SHAPES[s][2];
        size_t mn = (size_t)M * N;
        double *one = th_alloc(mn), *ref = th_alloc(mn), *bound = th_alloc(mn);

        /* matmul: a (M x K) @ b (K x N) */
        Mat a = mat_rand(M, K, 1.0), b = mat_rand(K, N, 1.0);
        Mat got = seed_matmul(&a, &b);
        CHECK_OK(tnn_mat_matmul(a.flat, M, K, b.flat, K, N, one));
        check_same(label("matmul", "one-call", M, N), got.flat, one, mn);
        ref_product(false, false, a.flat, b.flat, M, N, K, ref, bound);
        check_bound(label("matmul", "reference", M, N), got.flat, ref, bound, mn);
        mat_free(&a), mat_free(&b), mat_free(&got);

        /* matmul_t: a (M x K) @ b (N x K)^T */
        a = mat_rand(M, K, 1.0), b = mat_rand(N, K, 1.0);
        got = seed_matmul_t(&a, &b);
        CHECK_OK(tnn_mat_matmul_t(a.flat, M, K, b.flat, N, K, one));
        check_same(label("matmul_t", "one-call", M, N), got.flat, one, mn);
        ref_product(false, true, a.flat, b.flat, M, N, K, ref, bound);
        check_bound(label("matmul_t", "reference", M, N), got.flat, ref, bound, mn);
        mat_free(&a), mat_free(&b), mat_free(&got);

        /* t_matmul: a (K x M)^T @ b (K x N) */
        a = mat_rand(K, M, 1.0), b = mat_rand(K, N, 1.0);
        got = seed_t_matmul(&a, &b);
        CHECK(got.nrows == M && got.ncols == N, "t_matmul shape %dx%d", got.nrows, got.ncols);
        CHECK_OK(tnn_mat_t_matmul(a.flat, K, M, b.flat, K, N, one));
        check_same(label("t_matmul", "one-call", M, N), got.flat, one, mn);
        ref_product(true, false, a.flat, b.flat, M, N, K, ref, bound);
        check_bound(label("t_matmul", "reference", M, N), got.flat, ref, bound, mn);
        mat_free(&a), mat_free(&b), mat_free(&got);

        free(one), free(ref), free(bound);
    }
}

static void test_elementwise(void) {
    for (int s = 0; s < N_EW; s++) {
        int R = EW_SHAPES[s][0], C = EW_SHAPES[s][1];
        size_t n = (size_t)R * C;
        double *one = th_alloc(n), *ref = th_alloc(n), *bound = th_alloc(n);
        Mat a = mat_rand(R, C, 4.0), b = mat_rand(R, C, 4.0);

        /* add, mul: one correctly rounded f32 operation on exact operands */
        Mat got = seed_add(&a, &b);
        CHECK_OK(tnn_mat_add(a.flat, b.flat, R, C, one));
        check_same(label("add", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) ref[i] = a.flat[i] + b.flat[i];
        check_rel(label("add", "reference", R, C), got.flat, ref, n, 1e-300, ONE_ROUNDING);
        mat_free(&got);

        got = seed_mul(&a, &b);
        CHECK_OK(tnn_mat_mul(a.flat, b.flat, R, C, one));
        check_same(label("mul", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) ref[i] = a.flat[i] * b.flat[i];
        check_rel(label("mul", "reference", R, C), got.flat, ref, n, 1e-300, ONE_ROUNDING);
        mat_free(&got);

        /* scale: a * (float)k, k = 0.37 is not exact in f32 (two roundings) */
        const double ks[2] = {0.37, -2.0};
        for (int q = 0; q < 2; q++) {
            got = seed_scale(&a, ks[q]);
            CHECK_OK(tnn_mat_scale(a.flat, R, C, ks[q], one));
            check_same(label("scale", "one-call", R, C), got.flat, one, n);
            for (size_t i = 0; i < n; i++) ref[i] = a.flat[i] * ks[q];
            check_rel(label("scale", "reference", R, C), got.flat, ref, n, 1e-300, 2.01 * U);
            mat_free(&got);
        }

        /* gelu: f32 tanh form; 1 + tanh cancels for negative x, so the bound
         * is absolute in |x|: 4 u (1 + |x|) */
        got = seed_gelu(&a);
        CHECK_OK(tnn_mat_gelu(a.flat, R, C, one));
        check_same(label("gelu", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) {
            ref[i] = gelu_ref(a.flat[i]);
            bound[i] = 4 * U * (1 + fabs(a.flat[i]));
        }
        check_bound(label("gelu", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&got);

        /* silu: relative 8 u */
        got = seed_silu(&a);
        CHECK_OK(tnn_mat_silu(a.flat, R, C, one));
        check_same(label("silu", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) ref[i] = a.flat[i] * sigmoid_ref(a.flat[i]);
        check_rel(label("silu", "reference", R, C), got.flat, ref, n, 1e-300, 8 * U);
        mat_free(&got);

        /* transpose: exact */
        got = seed_transpose(&a);
        CHECK(got.nrows == C && got.ncols == R, "transpose shape %dx%d", got.nrows, got.ncols);
        CHECK_OK(tnn_mat_transpose(a.flat, R, C, one));
        check_same(label("transpose", "one-call", R, C), got.flat, one, n);
        for (int i = 0; i < R; i++)
            for (int j = 0; j < C; j++) ref[(size_t)j * R + i] = a.flat[(size_t)i * C + j];
        check_exact(label("transpose", "reference", R, C), got.flat, ref, n);
        mat_free(&got);

        mat_free(&a), mat_free(&b);
        free(one), free(ref), free(bound);
    }
}

/* Softmax bound: 8 u relative, plus u |max - x| from the f32 subtraction
 * inside exp; absolute 1e-37 for results that underflow f32. */
static void softmax_case(const Mat *a) {
    int R = a->nrows, C = a->ncols;
    size_t n = mat_n(a);
    double *one = th_alloc(n), *ref = th_alloc(n), *bound = th_alloc(n);
    Mat got = seed_softmax(a);
    CHECK_OK(tnn_mat_softmax(a->flat, R, C, one));
    check_same(label("softmax", "one-call", R, C), got.flat, one, n);
    softmax_ref(a->flat, R, C, ref, bound);
    for (size_t i = 0; i < n; i++) bound[i] = fabs(ref[i]) * U * (8 + 2 * bound[i]) + 1e-37;
    check_bound(label("softmax", "reference", R, C), got.flat, ref, bound, n);
    for (int r = 0; r < R; r++) {
        double sum = 0;
        for (int j = 0; j < C; j++) sum += got.flat[(size_t)r * C + j];
        CHECK(fabs(sum - 1.0) <= 1e-5, "softmax %dx%d row %d sums to %.9g", R, C, r, sum);
    }
    mat_free(&got);
    free(one), free(ref), free(bound);
}

static void test_softmax(void) {
    for (int s = 0; s < N_EW; s++) {
        Mat a = mat_rand(EW_SHAPES[s][0], EW_SHAPES[s][1], 6.0);
        softmax_case(&a);
        mat_free(&a);
    }
    /* Extremes: rows near +1000 and -1000 (exp overflows without the max
     * subtraction), a constant row, a row spread over [-80, 80]. */
    Mat a = mat_new(4, 33);
    for (int j = 0; j < 33; j++) {
        a.flat[j] = (double)(float)(1000.0 + th_sym(20.0));
        a.flat[33 + j] = (double)(float)(-1000.0 + th_sym(20.0));
        a.flat[66 + j] = 5.0;
        a.flat[99 + j] = (double)(float)th_sym(80.0);
    }
    softmax_case(&a);
    mat_free(&a);
}

static void test_rms_norm(void) {
    for (int s = 0; s < N_EW; s++) {
        int R = EW_SHAPES[s][0], C = EW_SHAPES[s][1];
        size_t n = (size_t)R * C;
        double *one = th_alloc(n), *ref = th_alloc(n), *gamma = th_alloc((size_t)C);
        Mat x = mat_rand(R, C, 3.0);
        th_fill_f32(gamma, (size_t)C, 2.0);
        if (R > 1) /* a zero row: eps keeps it finite, the result is 0 */
            for (int j = 0; j < C; j++) x.flat[(size_t)C + j] = 0.0;
        double eps = s % 2 ? 1e-5 : 1e-6;
        Mat got = seed_rms_norm(&x, gamma, eps);
        CHECK_OK(tnn_mat_rms_norm(x.flat, R, C, gamma, eps, one));
        check_same(label("rms_norm", "one-call", R, C), got.flat, one, n);
        for (int r = 0; r < R; r++) {
            double ss = 0;
            for (int j = 0; j < C; j++) ss += x.flat[(size_t)r * C + j] * x.flat[(size_t)r * C + j];
            double sc = 1.0 / sqrt(ss / C + eps);
            for (int j = 0; j < C; j++)
                ref[(size_t)r * C + j] = x.flat[(size_t)r * C + j] * sc * gamma[j];
        }
        check_rel(label("rms_norm", "reference", R, C), got.flat, ref, n, 1e-300, 6 * U);
        mat_free(&x), mat_free(&got);
        free(one), free(ref), free(gamma);
    }
}

static void test_backward(void) {
    for (int s = 0; s < N_EW; s++) {
        int R = EW_SHAPES[s][0], C = EW_SHAPES[s][1];
        size_t n = (size_t)R * C;
        double *one = th_alloc(n), *ref = th_alloc(n), *bound = th_alloc(n);
        Mat x = mat_rand(R, C, 4.0), dy = mat_rand(R, C, 1.0);

        /* gelu_back: f32 tanh form; 1 - t^2 and 1 + t cancel, so absolute
         * 8 u |dy| (1 + x^2) */
        Mat got = seed_gelu_back(&x, &dy);
        CHECK_OK(tnn_mat_gelu_back(x.flat, dy.flat, R, C, one));
        check_same(label("gelu_back", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) {
            ref[i] = dy.flat[i] * gelu_grad_ref(x.flat[i]);
            bound[i] = 8 * U * fabs(dy.flat[i]) * (1 + x.flat[i] * x.flat[i]) + 1e-300;
        }
        check_bound(label("gelu_back", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&got);

        /* silu_back: dy s (1 + x (1 - s)); 1 - s cancels for large x:
         * absolute 4 u |dy| (1 + |x|) */
        got = seed_silu_back(&x, &dy);
        CHECK_OK(tnn_mat_silu_back(x.flat, dy.flat, R, C, one));
        check_same(label("silu_back", "one-call", R, C), got.flat, one, n);
        for (size_t i = 0; i < n; i++) {
            double sg = sigmoid_ref(x.flat[i]);
            ref[i] = dy.flat[i] * sg * (1 + x.flat[i] * (1 - sg));
            bound[i] = 4 * U * fabs(dy.flat[i]) * (1 + fabs(x.flat[i])) + 1e-300;
        }
        check_bound(label("silu_back", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&got);

        /* softmax_back: y (dy - sum(dy y)); the difference cancels:
         * absolute 4 u |y| (|dy| + |sum|) */
        Mat y = mat_new(R, C);
        softmax_ref(x.flat, R, C, y.flat, NULL);
        for (size_t i = 0; i < n; i++) y.flat[i] = (double)(float)y.flat[i];
        got = seed_softmax_back(&y, &dy);
        CHECK_OK(tnn_mat_softmax_back(y.flat, dy.flat, R, C, one));
        check_same(label("softmax_back", "one-call", R, C), got.flat, one, n);
        for (int r = 0; r < R; r++) {
            const double *yr = y.flat + (size_t)r * C, *dr = dy.flat + (size_t)r * C;
            double dot = 0;
            for (int j = 0; j < C; j++) dot += yr[j] * dr[j];
            for (int j = 0; j < C; j++) {
                ref[(size_t)r * C + j] = yr[j] * (dr[j] - dot);
                bound[(size_t)r * C + j] = 4 * U * fabs(yr[j]) * (fabs(dr[j]) + fabs(dot)) + 1e-300;
            }
        }
        check_bound(label("softmax_back", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&got), mat_free(&y);

        /* rms_norm_back: r dy - r^3 x sum(dy x)/n; absolute
         * 4 u (|r dy| + |r^3 x sum/n|). A zero row (dx = dy / sqrt(eps)). */
        if (R > 1)
            for (int j = 0; j < C; j++) x.flat[(size_t)C + j] = 0.0;
        double eps = 1e-5;
        got = seed_rms_norm_back(&x, &dy, eps);
        CHECK_OK(tnn_mat_rms_norm_back(x.flat, dy.flat, R, C, eps, one));
        check_same(label("rms_norm_back", "one-call", R, C), got.flat, one, n);
        for (int r = 0; r < R; r++) {
            const double *xr = x.flat + (size_t)r * C, *dr = dy.flat + (size_t)r * C;
            double ss = 0, dot = 0;
            for (int j = 0; j < C; j++) ss += xr[j] * xr[j], dot += dr[j] * xr[j];
            double rr = 1.0 / sqrt(ss / C + eps), c = rr * rr * rr * dot / C;
            for (int j = 0; j < C; j++) {
                ref[(size_t)r * C + j] = rr * dr[j] - c * xr[j];
                bound[(size_t)r * C + j] =
                    4 * U * (fabs(rr * dr[j]) + fabs(c * xr[j])) + 1e-300;
            }
        }
        check_bound(label("rms_norm_back", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&got);

        mat_free(&x), mat_free(&dy);
        free(one), free(ref), free(bound);
    }
}

static void test_cross_entropy_grad(void) {
    /* (rows, cols, n_pred, logit range); n_pred < rows leaves rows without a target */
    static const int cases[][4] = {{1, 1, 1, 3},    {3, 7, 3, 3},      {7, 33, 5, 3},
                                   {33, 65, 33, 8}, {65, 7, 64, 3},    {2, 513, 2, 1000},
                                   {127, 65, 127, 30}};
    for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) {
        int R = cases[q][0], C = cases[q][1], np = cases[q][2];
        size_t n = (size_t)R * C;
        double *one = th_alloc(n), *ref = th_alloc(n), *bound = th_alloc(n);
        Mat lg = mat_rand(R, C, cases[q][3]);
        int64_t *tg = malloc((size_t)R * sizeof *tg);
        for (int i = 0; i < R; i++) tg[i] = (int64_t)(th_uniform() * C) % C;
        tg[0] = C - 1;
        Mat got = seed_cross_entropy_grad(&lg, tg, np);
        CHECK_OK(tnn_mat_cross_entropy_grad(lg.flat, R, C, tg, np, one));
        check_same(label("cross_entropy_grad", "one-call", R, C), got.flat, one, n);
        /* (softmax - one_hot) / n_pred: the softmax bound (scaled), the
         * rounding of 1/n_pred twice, and the subtraction's rounding */
        softmax_ref(lg.flat, R, C, ref, bound);
        for (int i = 0; i < R; i++)
            for (int j = 0; j < C; j++) {
                size_t e = (size_t)i * C + j;
                double sm = ref[e], oh = (i < np && j == tg[i]) ? 1.0 : 0.0;
                ref[e] = (sm - oh) / np;
                bound[e] = (sm * U * (10 + 2 * bound[e]) + 3 * U * (sm + oh)) / np + 1e-37;
            }
        check_bound(label("cross_entropy_grad", "reference", R, C), got.flat, ref, bound, n);
        mat_free(&lg), mat_free(&got);
        free(tg), free(one), free(ref), free(bound);
    }
}

/* Values k/1024 in [-8, 8]: sums of a few of them are exact in f32, so the
 * scatter-add reference is exact. */
static Mat mat_dyadic(int r, int c) {
    Mat m = mat_new(r, c);
    for (size_t i = 0; i < mat_n(&m); i++) m.flat[i] = floor(th_sym(8.0) * 1024.0) / 1024.0;
    return m;
}

static void test_embeddings(void) {
    /* (vocab, d, n_idx) */
    static const int cases[][3] = {{1, 1, 1}, {7, 3, 7}, {65, 33, 7}, {3, 65, 65}, {33, 7, 1},
                                   {65, 65, 127}};
    for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) {
        int V = cases[q][0], D = cases[q][1], NI = cases[q][2];
        int64_t *idx = malloc((size_t)NI * sizeof *idx);
        for (int i = 0; i < NI; i++) idx[i] = (int64_t)(th_uniform() * V) % V;
        idx[0] = V - 1; /* the last row, and repeats once NI > V */
        if (NI > 2) idx[NI - 1] = 0, idx[1] = idx[NI - 1];

        Mat table = mat_rand(V, D, 2.0);
        double *one = th_alloc((size_t)NI * D), *ref = th_alloc((size_t)NI * D);
        Mat got = seed_embed_lookup(&table, idx, NI);
        CHECK_OK(tnn_mat_embed_lookup(table.flat, V, D, idx, NI, one));
        check_same(label("embed_lookup", "one-call", NI, D), got.flat, one, (size_t)NI * D);
        for (int i = 0; i < NI; i++)
            memcpy(ref + (size_t)i * D, table.flat + (size_t)idx[i] * D,
                   (size_t)D * sizeof(double));
        check_exact(label("embed_lookup", "reference", NI, D), got.flat, ref, (size_t)NI * D);
        mat_free(&got), mat_free(&table);
        free(one), free(ref);

        Mat d_out = mat_dyadic(NI, D);
        one = th_alloc((size_t)V * D), ref = th_alloc((size_t)V * D);
        got = seed_embed_back(&d_out, idx, NI, V);
        CHECK(got.nrows == V && got.ncols == D, "embed_back shape %dx%d", got.nrows, got.ncols);
        CHECK_OK(tnn_mat_embed_back(d_out.flat, NI, D, idx, V, one));
        check_same(label("embed_back", "one-call", V, D), got.flat, one, (size_t)V * D);
        for (int i = 0; i < NI; i++)
            for (int j = 0; j < D; j++)
                ref[(size_t)idx[i] * D + j] += d_out.flat[(size_t)i * D + j];
        check_exact(label("embed_back", "reference", V, D), got.flat, ref, (size_t)V * D);
        mat_free(&got), mat_free(&d_out);
        free(one), free(ref), free(idx);
    }
}

static void test_optimizers(void) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = 1e-3;
    for (int s = 0; s < N_EW; s++) {
        int R = EW_SHAPES[s][0], C = EW_SHAPES[s][1];
        size_t n = (size_t)R * C;
        double *ref = th_alloc(3 * n);
        /* Adam: three steps; each starts both routes from the same state
         * (the module's previous result) and must agree bit for bit. Each
         * output is one f32 rounding of a double computation: 2 u relative. */
        Mat p = mat_rand(R, C, 1.0), m = mat_new(R, C), v = mat_new(R, C);
        double bc1 = 1, bc2 = 1;
        for (int t = 1; t <= 3; t++) {
            Mat g = mat_rand(R, C, 1.0);
            bc1 *= b1, bc2 *= b2;
            double omc1 = 1 - bc1, omc2 = 1 - bc2;
            AdamStepResult r = seed_adam_step(&p, &g, &m, &v, lr, b1, b2, eps, omc1, omc2);
            double *op = th_alloc(n), *om = th_alloc(n), *ov = th_alloc(n);
            memcpy(op, p.flat, n * sizeof(double));
            memcpy(om, m.flat, n * sizeof(double));
            memcpy(ov, v.flat, n * sizeof(double));
            CHECK_OK(tnn_mat_adam_step(op, g.flat, om, ov, R, C, lr, b1, b2, eps, omc1, omc2));
            check_same(label("adam_step", "one-call param", R, C), r.param.flat, op, n);
            check_same(label("adam_step", "one-call m", R, C), r.m.flat, om, n);
            check_same(label("adam_step", "one-call v", R, C), r.v.flat, ov, n);
            for (size_t i = 0; i < n; i++) {
                double gi = g.flat[i];
                double mi = b1 * m.flat[i] + (1 - b1) * gi;
                double vi = b2 * v.flat[i] + (1 - b2) * gi * gi;
                ref[i] = p.flat[i] - lr * (mi / omc1) / (sqrt(vi / omc2) + eps);
                ref[n + i] = mi;
                ref[2 * n + i] = vi;
            }
            check_rel(label("adam_step", "reference param", R, C), r.param.flat, ref, n, 1e-300,
                      2 * U);
            check_rel(label("adam_step", "reference m", R, C), r.m.flat, ref + n, n, 1e-300, 2 * U);
            check_rel(label("adam_step", "reference v", R, C), r.v.flat, ref + 2 * n, n, 1e-300,
                      2 * U);
            mat_free(&p), mat_free(&m), mat_free(&v), mat_free(&g);
            p = r.param, m = r.m, v = r.v;
            free(op), free(om), free(ov);
        }
        mat_free(&p), mat_free(&m), mat_free(&v);

        /* SGD: param - lr * grad; lr = 0.3 is not exact in f32. Bound
         * 3 u (|lr g| + |result|). */
        const double lrs[2] = {0.01, 0.3};
        for (int q = 0; q < 2; q++) {
            Mat pp = mat_rand(R, C, 1.0), gg = mat_rand(R, C, 1.0);
            double *one = th_alloc(n), *bound = th_alloc(n);
            Mat got = seed_sgd_step(&pp, &gg, lrs[q]);
            CHECK_OK(tnn_mat_sgd_step(pp.flat, gg.flat, R, C, lrs[q], one));
            check_same(label("sgd_step", "one-call", R, C), got.flat, one, n);
            for (size_t i = 0; i < n; i++) {
                ref[i] = pp.flat[i] - lrs[q] * gg.flat[i];
                bound[i] = 3 * U * (fabs(lrs[q] * gg.flat[i]) + fabs(ref[i])) + 1e-300;
            }
            check_bound(label("sgd_step", "reference", R, C), got.flat, ref, bound, n);
            /* out may equal param */
            CHECK_OK(tnn_mat_sgd_step(pp.flat, gg.flat, R, C, lrs[q], pp.flat));
            check_same(label("sgd_step", "one-call in place", R, C), got.flat, pp.flat, n);
            mat_free(&pp), mat_free(&gg), mat_free(&got);
            free(one), free(bound);
        }
        free(ref);
    }
}

static void test_ffn_pipeline(void) {
    /* (hr, hc, w1c, w2c) */
    static const int cases[][4] = {{1, 1, 1, 1},   {3, 7, 33, 1},  {7, 33, 65, 3},
                                   {33, 65, 7, 33}, {65, 3, 65, 65}, {1, 65, 127, 7}};
    for (size_t q = 0; q < sizeof cases / sizeof cases[0]; q++) {
        int HR = cases[q][0], HC = cases[q][1], W1C = cases[q][2], W2C = cases[q][3];
        Mat h = mat_rand(HR, HC, 1.0), w1 = mat_rand(HC, W1C, 1.0), w2 = mat_rand(W1C, W2C, 1.0);
        size_t no = (size_t)HR * W2C, nm = (size_t)HR * W1C;
        double *one = th_alloc(no), *ref = th_alloc(no), *bound = th_alloc(no);
        Mat got = seed_ffn_pipeline(&h, &w1, &w2);
        CHECK_OK(tnn_mat_ffn_pipeline(h.flat, HR, HC, w1.flat, W1C, w2.flat, W2C, one));
        check_same(label("ffn_pipeline", "one-call", HR, W2C), got.flat, one, no);
        /* Reference in double. Bound: the first product's bound carried
         * through gelu (|gelu'| < 1.13) plus gelu's own f32 error, weighted by
         * |w2|, plus the second product's bound; times 1.5. */
        double *pre = th_alloc(nm), *b1 = th_alloc(nm), *hid = th_alloc(nm);
        ref_product(false, false, h.flat, w1.flat, HR, W1C, HC, pre, b1);
        for (size_t i = 0; i < nm; i++) {
            hid[i] = gelu_ref(pre[i]);
            b1[i] = 1.13 * b1[i] + 4 * U * (1 + fabs(pre[i]));
        }
        for (int i = 0; i < HR; i++)
            for (int c = 0; c < W2C; c++) {
                double s = 0, carried = 0, as = 0;
                for (int j = 0; j < W1C; j++) {
                    double w = w2.flat[(size_t)j * W2C + c], x = hid[(size_t)i * W1C + j];
                    s += x * w;
                    as += fabs(x * w);
                    carried += fabs(w) * b1[(size_t)i * W1C + j];
                }
                ref[(size_t)i * W2C + c] = s;
                bound[(size_t)i * W2C + c] = 1.5 * (carried + (W1C + 2) * U * as) + 1e-300;
            }
        check_bound(label("ffn_pipeline", "reference", HR, W2C), got.flat, ref, bound, no);
        mat_free(&h), mat_free(&w1), mat_free(&w2), mat_free(&got);
        free(one), free(ref), free(bound), free(pre), free(b1), free(hid);
    }
}

/* ------------------------------------------------------------------------ */
/* Part 2: the persistent-session workflow                                  */
/* ------------------------------------------------------------------------ */

static void test_persistent(int prefer_cuda) {
    const int T = 7, D = 33, H = 65, V = 65, STEPS = 4;
    const double EPS = 1e-5, SC = 0.37;
    char what[96];
    tnn_clear_error();
    tnn_session *sess = persistent_new(prefer_cuda);
    const char *be = tnn_session_backend(sess);
    CHECK(be && strcmp(be, "cpu") == 0, "persistent_new(%d): backend %s", prefer_cuda,
          be ? be : "(null)");

    /* Leaves: the per-step input and residual, weights, gamma, a table. */
    tnn_tensor *tx = alloc_2d(sess, T, D);
    tnn_tensor *tr = alloc_2d(sess, T, D);
    tnn_tensor *tw_t = alloc_2d(sess, H, D);  /* W (D x H) uploaded transposed (one call) */
    tnn_tensor *tw_s = alloc_2d(sess, H, D);  /* W again, via the scratch upload_transposed */
    tnn_tensor *tw2 = alloc_2d(sess, H, D);   /* W2 (H x D) row-major: x @ W2^T */
    tnn_tensor *tg = alloc_2d(sess, 1, D);
    tnn_tensor *ttab = alloc_2d(sess, V, D);
    tnn_tensor *tidx = alloc_1d_i32(sess, T);

    /* The graph, built once. */
    tnn_tensor *mm = build_matmul(sess, tx, tw_t);    /* x @ W, (T x H) read transposed */
    tnn_tensor *mm_s = build_matmul(sess, tx, tw_s);  /* the same, weights staged per element */
    tnn_tensor *mm2 = build_matmul(sess, tx, tw2);    /* x @ W2^T */
    tnn_tensor *ge = build_gelu(sess, mm);            /* gelu(x @ W), same layout */
    tnn_tensor *sum = build_add(sess, tx, tr);        /* row-major */
    tnn_tensor *sm = build_softmax(sess, sum);
    tnn_tensor *sc = build_scale(sess, sm, SC);
    tnn_tensor *rn = build_rms_norm(sess, sum, tg, EPS);
    tnn_tensor *mm_rn = build_matmul(sess, rn, tw_t); /* rms_norm -> matmul chain */
    tnn_tensor *emb = NN(tnn_get_rows(sess, ttab, tidx));
    tnn_tensor *outs[] = {mm, mm_s, mm2, ge, sum, sm, sc, rn, emb};
    for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) tnn_set_output(outs[i]);
    realize(sess, mm_rn);

    /* Weights, uploaded once. */
    Mat W = mat_rand(D, H, 1.0), W2 = mat_rand(H, D, 1.0), G = mat_rand(1, D, 2.0);
    Mat TAB = mat_rand(V, D, 2.0);
    stage_transposed_and_upload(sess, tw_t, &W);
    upload_transposed(sess, tw_s, &W);
    upload_row_major(sess, tw2, &W2);
    upload_row_major(sess, tg, &G);
    upload_row_major(sess, ttab, &TAB);
    CHECK(tnn_last_status() == TNN_OK, "persistent setup: %s", tnn_last_error());

    size_t nth = (size_t)T * H, ntd = (size_t)T * D;
    double *one = th_alloc(nth), *one2 = th_alloc(nth), *ref = th_alloc(nth);
    double *bound = th_alloc(nth), *dl = th_alloc((size_t)H * D);
    for (int step = 0; step < STEPS; step++) {
        Mat x = mat_rand(T, D, 1.5), r = mat_rand(T, D, 1.5);
        int64_t ids[7];
        for (int i = 0; i < T; i++) ids[i] = (int64_t)(th_uniform() * V) % V;
        ids[step % T] = V - 1;
        upload_row_major(sess, tx, &x);
        upload_row_major(sess, tr, &r);
        upload_int_array(sess, tidx, ids, T);
        compute(sess);

        /* x @ W: scratch readback, the one-call transposed download, the
         * one-call product, the per-element staged weights, the reference. */
        Mat got = download_matmul(sess, mm, T, H);
        snprintf(what, sizeof what, "persistent(%d) step %d matmul", prefer_cuda, step);
        CHECK_OK(tnn_download_transposed_f64(sess, mm, dl, T, H));
        check_same(what, got.flat, dl, nth);
        CHECK_OK(tnn_mat_matmul(x.flat, T, D, W.flat, D, H, one));
        check_same(what, got.flat, one, nth);
        ref_product(false, false, x.flat, W.flat, T, H, D, ref, bound);
        check_bound(what, got.flat, ref, bound, nth);
        Mat got_s = download_matmul(sess, mm_s, T, H);
        check_same(what, got_s.flat, got.flat, nth);
        mat_free(&got_s);

        /* gelu(x @ W) in the matmul layout */
        Mat got_ge = download_matmul(sess, ge, T, H);
        CHECK_OK(tnn_mat_gelu(one, T, H, one2));
        snprintf(what, sizeof what, "persistent(%d) step %d gelu(matmul)", prefer_cuda, step);
        check_same(what, got_ge.flat, one2, nth);
        mat_free(&got_ge);

        /* x @ W2^T (the workflow of the module page: weights row-major) */
        Mat got2 = download_matmul(sess, mm2, T, H);
        snprintf(what, sizeof what, "persistent(%d) step %d matmul_t", prefer_cuda, step);
        CHECK_OK(tnn_mat_matmul_t(x.flat, T, D, W2.flat, H, D, one2));
        check_same(what, got2.flat, one2, nth);
        ref_product(false, true, x.flat, W2.flat, T, H, D, ref, bound);
        check_bound(what, got2.flat, ref, bound, nth);
        mat_free(&got2);

        /* x + r, softmax, scale: download_row_major and download_to_mat */
        Mat got_sum = download_row_major(sess, sum, T, D);
        snprintf(what, sizeof what, "persistent(%d) step %d add", prefer_cuda, step);
        CHECK_OK(tnn_mat_add(x.flat, r.flat, T, D, one));
        check_same(what, got_sum.flat, one, ntd);
        for (size_t i = 0; i < ntd; i++) ref[i] = x.flat[i] + r.flat[i];
        check_rel(what, got_sum.flat, ref, ntd, 1e-300, ONE_ROUNDING);
        memcpy(ref, got_sum.flat, ntd * sizeof(double)); /* the f32 sum the next ops see */

        Mat got_sm = download_row_major(sess, sm, T, D);
        snprintf(what, sizeof what, "persistent(%d) step %d softmax", prefer_cuda, step);
        CHECK_OK(tnn_mat_softmax(got_sum.flat, T, D, one2));
        check_same(what, got_sm.flat, one2, ntd);
        softmax_ref(ref, T, D, one, bound);
        for (size_t i = 0; i < ntd; i++) bound[i] = fabs(one[i]) * U * (8 + 2 * bound[i]) + 1e-37;
        check_bound(what, got_sm.flat, one, bound, ntd);

        Mat got_sc = download_to_mat(sess, sc, T, D);
        Mat got_sc2 = download_row_major(sess, sc, T, D);
        snprintf(what, sizeof what, "persistent(%d) step %d scale", prefer_cuda, step);
        check_same(what, got_sc.flat, got_sc2.flat, ntd);
        CHECK_OK(tnn_mat_scale(got_sm.flat, T, D, SC, one2));
        check_same(what, got_sc.flat, one2, ntd);
        mat_free(&got_sc), mat_free(&got_sc2), mat_free(&got_sm);

        /* rms_norm(x + r) * gamma, then @ W */
        Mat got_rn = download_to_mat(sess, rn, T, D);
        snprintf(what, sizeof what, "persistent(%d) step %d rms_norm", prefer_cuda, step);
        CHECK_OK(tnn_mat_rms_norm(got_sum.flat, T, D, G.flat, EPS, one2));
        check_same(what, got_rn.flat, one2, ntd);
        for (int i = 0; i < T; i++) {
            double ss = 0;
            for (int j = 0; j < D; j++) ss += ref[i * D + j] * ref[i * D + j];
            double s = 1.0 / sqrt(ss / D + EPS);
            for (int j = 0; j < D; j++) bound[i * D + j] = ref[i * D + j] * s * G.flat[j];
        }
        check_rel(what, got_rn.flat, bound, ntd, 1e-300, 8 * U);
        Mat got_mr = download_matmul(sess, mm_rn, T, H);
        snprintf(what, sizeof what, "persistent(%d) step %d matmul(rms_norm)", prefer_cuda, step);
        CHECK_OK(tnn_mat_matmul(got_rn.flat, T, D, W.flat, D, H, one2));
        check_same(what, got_mr.flat, one2, nth);
        mat_free(&got_mr), mat_free(&got_rn), mat_free(&got_sum);

        /* the embedding lookup, indices uploaded with upload_int_array */
        Mat got_e = download_row_major(sess, emb, T, D);
        snprintf(what, sizeof what, "persistent(%d) step %d embed", prefer_cuda, step);
        CHECK_OK(tnn_mat_embed_lookup(TAB.flat, V, D, ids, T, one2));
        check_same(what, got_e.flat, one2, ntd);
        for (int i = 0; i < T; i++)
            memcpy(ref + (size_t)i * D, TAB.flat + (size_t)ids[i] * D, (size_t)D * sizeof(double));
        check_exact(what, got_e.flat, ref, ntd);
        mat_free(&got_e);

        /* the weights were uploaded once and are still there */
        Mat w_back = download_to_mat(sess, tw2, H, D);
        snprintf(what, sizeof what, "persistent(%d) step %d weights kept", prefer_cuda, step);
        check_exact(what, w_back.flat, W2.flat, (size_t)H * D);
        CHECK_OK(tnn_download_transposed_f64(sess, tw_t, dl, D, H));
        check_exact(what, dl, W.flat, (size_t)D * H);
        mat_free(&w_back);

        mat_free(&got), mat_free(&x), mat_free(&r);
    }
    CHECK(tnn_last_status() == TNN_OK, "persistent(%d): a call failed: %s", prefer_cuda,
          tnn_last_error());
    persistent_free(sess);
    mat_free(&W), mat_free(&W2), mat_free(&G), mat_free(&TAB);
    free(one), free(one2), free(ref), free(bound), free(dl);
}

/* ------------------------------------------------------------------------ */
/* Part 3: the scratch has no fixed size; big transfers are never truncated */
/* ------------------------------------------------------------------------ */

static void test_scratch_unbounded(void) {
    const int FAR = 5000000; /* slot 5M: 20 MB of f32, past the old 16 MiB */
    tnn_clear_error();
    tnn_session *s = tnn_session_new(0);
    tnn_scratch_set(s, FAR, 3.25);
    tnn_scratch_set(s, 17, 0.1);
    CHECK(tnn_last_status() == TNN_OK, "scratch_set at %d: %s", FAR, tnn_last_error());
    CHECK(tnn_scratch_get(s, FAR) == 3.25, "slot %d reads %.9g", FAR, tnn_scratch_get(s, FAR));
    CHECK(tnn_scratch_get(s, 17) == (double)0.1f, "slot 17 reads %.17g, want (float)0.1",
          tnn_scratch_get(s, 17));
    CHECK(tnn_scratch_get(s, FAR - 1) == 0.0 && tnn_scratch_get(s, FAR + 1) == 0.0 &&
              tnn_scratch_get(s, 4194304) == 0.0,
          "unwritten slots must read 0");
    tnn_scratch_set_i32(s, FAR + 2, -123456789);
    CHECK(tnn_scratch_get_i32(s, FAR + 2) == -123456789, "i32 slot reads %d",
          tnn_scratch_get_i32(s, FAR + 2));
    CHECK(tnn_last_status() == TNN_OK, "scratch reads: %s", tnn_last_error());

    /* the whole span moves into a tensor and back */
    tnn_tensor *t = tnn_input_1d_f32(s, FAR + 1);
    CHECK_OK(tnn_realize(s, t));
    CHECK_OK(tnn_upload(s, t));
    double *back = th_alloc((size_t)FAR + 1);
    CHECK_OK(tnn_download_to_f64_array(s, t, back, (size_t)FAR + 1));
    size_t nonzero = 0;
    for (size_t i = 0; i <= (size_t)FAR; i++) nonzero += back[i] != 0.0;
    CHECK(back[FAR] == 3.25 && back[17] == (double)0.1f && nonzero == 2,
          "tensor of %d slots: [FAR]=%g [17]=%g, %zu non-zero (want 2)", FAR + 1, back[FAR],
          back[17], nonzero);
    free(back);
    tnn_session_free(s);
}

/* Qwen2.5-0.5B's ffn_gate: 896 x 4864 = 4,358,144 f32 (17.4 MB), the
 * tensor the original library truncated at 4M floats. */
static void test_big_transfer(void) {
    const int DM = 896, DF = 4864, T = 3;
    const size_t N = (size_t)DM * DF;
    const size_t OLD_LIMIT = 4u << 20; /* 16 MiB of f32 */
    CHECK(N > OLD_LIMIT, "the test tensor must be larger than the old scratch");
    Mat W = mat_rand(DM, DF, 1.0); /* a Mat (d_model x d_ff), as the model code holds it */
    Mat x = mat_rand(T, DM, 1.0);
    double *back = th_alloc(N);

    tnn_clear_error();
    tnn_session *sess = persistent_new(0);
    tnn_tensor *tx = alloc_2d(sess, T, DM);
    tnn_tensor *tw_t = alloc_2d(sess, DF, DM);
    tnn_tensor *tc = build_matmul(sess, tx, tw_t);
    realize(sess, tc);

    /* refused, not truncated: an upload from a scratch that is too short */
    tnn_scratch_set(sess, 0, 1.0);
    CHECK_ERR(tnn_upload(sess, tw_t), TNN_ERR_RANGE, "slots");
    tnn_clear_error();

    stage_transposed_and_upload(sess, tw_t, &W);
    /* every element, the tail past 4M included */
    CHECK_OK(tnn_download_to_f64_array(sess, tw_t, back, N));
    size_t bad = N;
    for (size_t f = 0; f < N && bad == N; f++) {
        size_t j = f / DM, i = f % DM;
        if (back[f] != W.flat[i * DF + j]) bad = f;
    }
    CHECK(bad == N, "upload_transposed_f64 of %zu floats: element %zu is %g", N, bad,
          bad < N ? back[bad] : 0.0);
    CHECK_OK(tnn_download_transposed_f64(sess, tw_t, back, DM, DF));
    check_exact("big tensor transposed round trip", back, W.flat, N);
    /* and through the (now larger than 16 MiB) scratch */
    CHECK_OK(tnn_download(sess, tw_t));
    const size_t probes[] = {0, OLD_LIMIT - 1, OLD_LIMIT, OLD_LIMIT + 1, N - DM, N - 1};
    for (size_t q = 0; q < sizeof probes / sizeof probes[0]; q++) {
        size_t f = probes[q], j = f / DM, i = f % DM;
        double v = tnn_scratch_get(sess, (int)f);
        CHECK(v == W.flat[i * DF + j], "scratch slot %zu after download: %g, want %g", f, v,
              W.flat[i * DF + j]);
    }

    /* the matmul that produced 1e+37 garbage when the tail was missing */
    upload_row_major(sess, tx, &x);
    compute(sess);
    Mat got = download_matmul(sess, tc, T, DF);
    double *one = th_alloc((size_t)T * DF), *ref = th_alloc((size_t)T * DF);
    double *bound = th_alloc((size_t)T * DF);
    CHECK_OK(tnn_mat_matmul(x.flat, T, DM, W.flat, DM, DF, one));
    check_same("big matmul (persistent vs one-call)", got.flat, one, (size_t)T * DF);
    ref_product(false, false, x.flat, W.flat, T, DF, DM, ref, bound);
    check_bound("big matmul reference", got.flat, ref, bound, (size_t)T * DF);
    CHECK(tnn_last_status() == TNN_OK, "big transfer: %s", tnn_last_error());
    persistent_free(sess);

    /* the module's one-shot matmul stages all 4.36M weights through the
     * scratch, element by element */
    Mat got2 = seed_matmul(&x, &W);
    check_same("big matmul (module sequence vs one-call)", got2.flat, one, (size_t)T * DF);
    mat_free(&got2), mat_free(&got), mat_free(&W), mat_free(&x);
    free(back), free(one), free(ref), free(bound);
}

/* ------------------------------------------------------------------------ */
/* Part 4: tnn_session_new(1) in a build without CUDA                       */
/* ------------------------------------------------------------------------ */

static char log_seen[1024];
static void log_sink(int level, const char *msg, void *user) {
    if (level == TNN_LOG_INFO && strstr(msg, "tnn_session_new")) {
        snprintf(log_seen, sizeof log_seen, "%s", msg);
    }
}

static void test_prefer_cuda(void) {
    tnn_set_log_callback(log_sink, NULL);
    tnn_set_log_level(TNN_LOG_INFO);
    tnn_session *s = tnn_session_new(1);
    tnn_set_log_level(TNN_LOG_WARN);
    tnn_set_log_callback(NULL, NULL);
    CHECK(s != NULL, "tnn_session_new(1) returned NULL: %s", tnn_last_error());
    if (!s) return;
    const char *be = tnn_session_backend(s);
    CHECK(be && strcmp(be, "cpu") == 0, "tnn_session_new(1): backend %s", be ? be : "(null)");
    CHECK(strstr(log_seen, "CPU") != NULL || strstr(log_seen, "cpu") != NULL,
          "tnn_session_new(1) must say through the log that it uses the CPU (got \"%s\")",
          log_seen);
    /* and it computes */
    tnn_tensor *a = tnn_input_2d_f32(s, 2, 3), *b = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *c = tnn_matmul(s, a, b);
    CHECK_OK(tnn_realize(s, c));
    const double av[6] = {1, 2, 3, 4, 5, 6}, bv[6] = {1, 0, -1, 2, 1, 0};
    CHECK_OK(tnn_upload_from_float_array(s, a, av, 6));
    CHECK_OK(tnn_upload_from_float_array(s, b, bv, 6));
    CHECK_OK(tnn_compute(s));
    double out[4];
    CHECK_OK(tnn_download_transposed_f64(s, c, out, 2, 2));
    /* out[i][j] = a_i . b_j */
    CHECK(out[0] == -2 && out[1] == 4 && out[2] == -2 && out[3] == 13,
          "prefer_cuda=1 matmul gives %g %g %g %g", out[0], out[1], out[2], out[3]);
    tnn_session_free(s);
}

int main(void) {
    verbose = getenv("TNN_TEST_VERBOSE") != NULL;
    th_seed(20240611);
    test_products();
    test_elementwise();
    test_softmax();
    test_rms_norm();
    test_backward();
    test_cross_entropy_grad();
    test_embeddings();
    test_optimizers();
    test_ffn_pipeline();
    test_persistent(0);
    test_persistent(1);
    test_scratch_unbounded();
    test_big_transfer();
    test_prefer_cuda();
    return th_finish("test_seed");
}
