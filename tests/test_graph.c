/* test_graph.c - the graph engine: buffer planning reuses memory along a
 * chain, outputs survive, leaves keep their values across realizes, a node
 * that reads the same tensor twice, repeated computes, and the CPU plan
 * runner's fusion of an element-wise node into the product before it.
 */
#include "harness.h"

#include "core/internal.h"

static void test_chain_reuses_memory(void) {
    tnn_session *s = tnn_session_new(0);
    const int R = 128, C = 256, L = 200;
    tnn_tensor *x = tnn_input_2d_f32(s, R, C);
    tnn_tensor *t = x;
    for (int i = 0; i < L; i++) t = (i % 2) ? tnn_scale(s, t, 1.01) : tnn_silu(s, t);
    CHECK_OK(tnn_realize(s, t));
    size_t one = (size_t)R * C * sizeof(float);
    size_t arena = tnn_session_arena_bytes(s);
    /* a chain needs two live buffers at a time, not L */
    CHECK(arena >= 2 * one && arena <= 3 * one, "arena %zu bytes for %d nodes of %zu bytes",
          arena, L, one);
    double *in = th_alloc((size_t)R * C), *out = th_alloc((size_t)R * C);
    th_seed(1);
    th_fill_f32(in, (size_t)R * C, 3.0);
    CHECK_OK(tnn_upload_from_float_array(s, x, in, (size_t)R * C));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, t, out, (size_t)R * C));
    double worst = 0;
    for (int e = 0; e < R * C; e++) {
        double v = in[e];
        for (int i = 0; i < L; i++) v = (i % 2) ? v * 1.01 : v / (1 + exp(-v));
        double err = fabs(out[e] - v) / (1e-6 + 1e-4 * fabs(v));
        if (err > worst) worst = err;
    }
    CHECK(worst <= 1.0, "chain result off by %g tolerances", worst);
    free(in), free(out);
    tnn_session_free(s);
}

static void test_outputs_and_reuse(void) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 4, 5);
    tnn_tensor *mid = tnn_scale(s, x, 2.0);
    tnn_tensor *mid2 = tnn_scale(s, mid, 3.0);
    tnn_tensor *sq = tnn_mul(s, mid2, mid2); /* the same source twice */
    tnn_tensor *y = tnn_add(s, sq, x);
    tnn_set_output(mid);
    CHECK_OK(tnn_realize(s, y));
    double in[20], got[20];
    for (int i = 0; i < 20; i++) in[i] = i - 7;
    CHECK_OK(tnn_upload_from_float_array(s, x, in, 20));
    for (int rep = 0; rep < 3; rep++) {
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_to_f64_array(s, y, got, 20));
        for (int i = 0; i < 20; i++)
            CHECK(got[i] == 36 * in[i] * in[i] + in[i], "y[%d]=%g rep %d", i, got[i], rep);
        CHECK_OK(tnn_download_to_f64_array(s, mid, got, 20));
        for (int i = 0; i < 20; i++) CHECK(got[i] == 2 * in[i], "mid[%d]=%g", i, got[i]);
    }
    /* mid2 was not kept */
    CHECK_ERR(tnn_download_to_f64_array(s, mid2, got, 20), TNN_ERR_STATE, "reused");

    /* more ops after a realize; leaves keep their values */
    tnn_tensor *z = tnn_scale(s, x, -1.0);
    CHECK_OK(tnn_realize(s, z));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, z, got, 20));
    for (int i = 0; i < 20; i++) CHECK(got[i] == -in[i], "z[%d]=%g", i, got[i]);
    /* y was only the first realize's result: it is not part of this graph,
     * while mid (marked with tnn_set_output) still is */
    CHECK_ERR(tnn_download_to_f64_array(s, y, got, 20), TNN_ERR_STATE, "not part");
    CHECK_OK(tnn_download_to_f64_array(s, mid, got, 20));
    CHECK(got[3] == 2 * in[3], "mid kept: %g", got[3]);
    tnn_session_free(s);
}

static void test_leaf_only_graph(void) {
    /* realize on a leaf: nothing to run, the leaf can be read back */
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_1d_f32(s, 3);
    CHECK_OK(tnn_realize(s, x));
    double v[3] = {1, 2, 3}, w[3];
    CHECK_OK(tnn_upload_from_float_array(s, x, v, 3));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_to_f64_array(s, x, w, 3));
    CHECK(w[0] == 1 && w[1] == 2 && w[2] == 3, "leaf round trip %g %g %g", w[0], w[1], w[2]);
    CHECK(tnn_session_arena_bytes(s) == 0, "arena %zu", tnn_session_arena_bytes(s));
    tnn_session_free(s);
}

static void test_tensor_accessors(void) {
    tnn_session *s = tnn_session_new(0);
    int64_t shape[4] = {2, 3, 4, 5};
    tnn_tensor *t = tnn_tensor_new(s, TNN_F32, 4, shape);
    CHECK(tnn_tensor_ndim(t) == 4, "ndim");
    CHECK(tnn_tensor_dim(t, 0) == 2 && tnn_tensor_dim(t, -1) == 5, "dims");
    CHECK(tnn_tensor_nelements(t) == 120, "nelements");
    CHECK(tnn_tensor_dtype(t) == TNN_F32, "dtype");
    CHECK_OK(tnn_tensor_set_name(t, "activations"));
    CHECK(strcmp(tnn_tensor_name(t), "activations") == 0, "name");
    CHECK(strcmp(tnn_session_backend(s), "cpu") == 0, "backend %s", tnn_session_backend(s));
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Fusion: product + element-wise node, the same bits as two passes          */
/* ------------------------------------------------------------------------ */

enum { F_GELU, F_SILU, F_SCALE, F_ADD_SAME, F_ADD_BIAS_FIRST, F_SUB_BIAS1N, F_SUB_SAME_FIRST,
       F_MUL_SELF, F_ADD_COL, F_COUNT };
static const char *const f_names[F_COUNT] = {"gelu", "silu", "scale", "add same-shape",
                                             "add bias first", "sub bias (1,N)",
                                             "sub same-shape first", "mul by itself",
                                             "add column (not fusable)"};

typedef struct {
    int kind;      /* 0 nn, 1 nt, 2 tn */
    int batch;     /* 0: 2-D; else a (2, 3, M, K) */
    bool bf16;     /* b in bf16 (nt, 2-D) */
    int M, K, N;
} fuse_case;

/* Random values in [-1, 1) for a leaf (after tnn_realize). */
static void fill_leaf(tnn_session *s, tnn_tensor *t) {
    size_t e = (size_t)t->nelem;
    double *v = th_alloc(e);
    th_fill_f32(v, e, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, t, v, e));
    free(v);
}

/* Builds the product and the element-wise node f on it, computes with the
 * fusion on and off at 1, 2 and 3 threads; every result must be the same
 * bits, and the pair must have run fused (except the unfusable column). */
static void fuse_one(const fuse_case *fc, int f) {
    tnn_session *s = tnn_session_new(0);
    int M = fc->M, K = fc->K, N = fc->N;
    int64_t ash[4], bsh[2], osh[4];
    int nd = fc->batch ? 4 : 2, o = nd - 2;
    if (fc->batch) ash[0] = osh[0] = 2, ash[1] = osh[1] = 3;
    ash[o] = fc->kind == 2 ? K : M, ash[o + 1] = fc->kind == 2 ? M : K;
    bsh[0] = fc->kind == 1 ? N : K, bsh[1] = fc->kind == 1 ? K : N;
    osh[o] = M, osh[o + 1] = N;
    int64_t bias_sh[2] = {1, N}, col_sh[2] = {M, 1};
    tnn_tensor *leaves[6] = {
        tnn_tensor_new(s, TNN_F32, nd, ash), tnn_tensor_new(s, fc->bf16 ? TNN_BF16 : TNN_F32, 2, bsh),
        tnn_tensor_new(s, TNN_F32, nd, osh), tnn_tensor_new(s, TNN_F32, 1, bias_sh + 1),
        tnn_tensor_new(s, TNN_F32, 2, bias_sh), tnn_tensor_new(s, TNN_F32, 2, col_sh)};
    tnn_tensor *a = leaves[0], *b = leaves[1], *r = leaves[2], *bias = leaves[3],
               *bias1n = leaves[4], *col = leaves[5];
    tnn_tensor *mm = fc->kind == 0   ? tnn_matmul_nn(s, a, b)
                     : fc->kind == 1 ? tnn_matmul_nt(s, a, b)
                                     : tnn_matmul_tn(s, a, b);
    tnn_tensor *y = NULL;
    switch (f) {
    case F_GELU: y = tnn_gelu(s, mm); break;
    case F_SILU: y = tnn_silu(s, mm); break;
    case F_SCALE: y = tnn_scale(s, mm, 0.37); break;
    case F_ADD_SAME: y = tnn_add(s, mm, r); break;
    case F_ADD_BIAS_FIRST: y = tnn_add(s, bias, mm); break;
    case F_SUB_BIAS1N: y = tnn_sub(s, mm, bias1n); break;
    case F_SUB_SAME_FIRST: y = tnn_sub(s, r, mm); break;
    case F_MUL_SELF: y = tnn_mul(s, mm, mm); break;
    default: y = fc->batch ? tnn_add(s, mm, r) : tnn_add(s, mm, col); break;
    }
    CHECK(y != NULL, "%s: %s", f_names[f], tnn_last_error());
    if (!y) {
        tnn_session_free(s);
        return;
    }
    /* one more node after, so the pair is not the graph's last */
    tnn_tensor *z = tnn_scale(s, y, 2.0);
    tnn_set_output(y);
    CHECK_OK(tnn_realize(s, z));
    th_seed(7);
    for (int i = 0; i < 6; i++) fill_leaf(s, leaves[i]);
    size_t n = (size_t)y->nelem;
    float *want = malloc(n * sizeof *want), *got = malloc(n * sizeof *got);
    tnn__cpu_set_fuse(0);
    tnn_set_num_threads(2);
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, y, want, n));
    for (int th = 1; th <= 3; th++) {
        tnn_set_num_threads(th);
        tnn__cpu_set_fuse(1);
        long long before = tnn__cpu_fused_pairs();
        memset(got, 0, n * sizeof *got);
        CHECK_OK(tnn_compute(s));
        bool fused = tnn__cpu_fused_pairs() > before;
        CHECK_OK(tnn_download_f32(s, y, got, n));
        bool expect = f != F_ADD_COL || fc->batch;
        CHECK(fused == expect, "%s on %dx%dx%d (kind %d, batch %d, bf16 %d): fused %d, want %d",
              f_names[f], M, K, N, fc->kind, fc->batch, fc->bf16, fused, expect);
        CHECK(memcmp(want, got, n * sizeof *got) == 0,
              "%s on %dx%dx%d (kind %d, batch %d, bf16 %d), %d threads: fused result differs",
              f_names[f], M, K, N, fc->kind, fc->batch, fc->bf16, th);
    }
    tnn__cpu_set_fuse(-1);
    tnn_set_num_threads(0);
    free(want), free(got);
    tnn_session_free(s);
}

/* The attention gradient's three parts are views into one buffer: nothing
 * planned while any view is still to be read may take that buffer's
 * memory. Here the parts are read late: each goes back through a chain of
 * nodes that allocate, v's (through a product with a wider input, whose
 * gradient is larger than the whole buffer) and k's before q's. */
static void test_views_keep_buffer(void) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x[3], *c[3];
    for (int i = 0; i < 3; i++) {
        x[i] = tnn_input_2d_f32(s, 16, i == 2 ? 64 : 8);
        tnn_set_param(x[i]);
        c[i] = x[i];
        if (i == 2) {
            tnn_tensor *wv = tnn_input_2d_f32(s, 8, 64);
            tnn_set_param(wv);
            c[i] = tnn_matmul_nt(s, x[i], wv);
        }
        for (int k = 0; k < 6; k++) c[i] = tnn_silu(s, tnn_scale(s, c[i], 0.9));
    }
    tnn_tensor *w = tnn_input_2d_f32(s, 16, 8);
    tnn_tensor *a = tnn_attention(s, c[0], c[1], c[2], 2, 2, 8);
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, a, w));
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    int32_t p = -1, last = -1, views = 0;
    for (int32_t i = 0; i < s->n_plan; i++) {
        tnn_tensor *t = s->plan[i];
        if (t->op == TNN_OP_ATTENTION_BACK) p = i;
        if (t->op == TNN_OP_VIEW) views++;
        for (int k = 0; k < TNN_MAX_SRC; k++)
            if (t->src[k] && t->src[k]->op == TNN_OP_VIEW) last = i;
    }
    CHECK(p >= 0 && views == 3 && last > p + 10, "plan: attention_back at %d, %d views, last "
          "read at %d", p, views, last);
    if (p < 0) {
        tnn_session_free(s);
        return;
    }
    const tnn_tensor *pk = s->plan[p];
    int64_t lo = pk->arena_off, hi = lo + (int64_t)(pk->nbytes + pk->aux_bytes);
    int clashes = 0;
    for (int32_t i = p + 1; i <= last; i++) {
        const tnn_tensor *t = s->plan[i];
        if (t->flags & TNN_FLAG_ALIAS) {
            clashes += t->op == TNN_OP_VIEW && ((char *)t->data < (char *)pk->data ||
                                                (char *)t->data + t->nbytes >
                                                    (char *)pk->data + pk->nbytes);
            continue;
        }
        int64_t a0 = t->arena_off, a1 = a0 + (int64_t)(t->nbytes + t->aux_bytes);
        clashes += a0 < hi && lo < a1;
    }
    CHECK(clashes == 0, "%d nodes planned into the attention gradient's buffer while its views "
          "were still to be read (or a view outside it)", clashes);
    tnn_session_free(s);
}

/* Gradient sums planned in place (the running sum's buffer reused for the
 * sum): x read by three products, so its gradient is dv W3 + dk W2 + dq W1,
 * summed in that order; the same bits as a forward graph that computes it
 * with a buffer for every node, and the overwritten running sum refused to
 * a download. */
static void inplace_inputs(tnn_session *s, tnn_tensor *x, tnn_tensor **w, const double *xv,
                           const double *wv) {
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, 40 * 24));
    for (int i = 0; i < 3; i++)
        CHECK_OK(tnn_upload_from_float_array(s, w[i], wv + i * 384, 384));
}

static void test_inplace_sums(void) {
    double *xv = th_alloc(40 * 24), *wv = th_alloc(3 * 16 * 24), *ov = th_alloc(40 * 16);
    th_seed(17);
    th_fill_f32(xv, 40 * 24, 1.0);
    th_fill_f32(wv, 3 * 16 * 24, 0.5);
    for (int i = 0; i < 40 * 16; i++) ov[i] = 1.0;
    static float got[40 * 24], want[40 * 24];

    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 40, 24), *w[3];
    for (int i = 0; i < 3; i++) w[i] = tnn_input_2d_f32(s, 16, 24);
    tnn_set_param(x);
    tnn_tensor *q = tnn_matmul_nt(s, x, w[0]), *k = tnn_matmul_nt(s, x, w[1]);
    tnn_tensor *v = tnn_matmul_nt(s, x, w[2]);
    tnn_tensor *loss = tnn_sum(s, tnn_add(s, tnn_mul(s, q, k), tnn_silu(s, v)));
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    int inplace = 0;
    tnn_tensor *over = NULL;
    for (int32_t i = 0; i < s->n_plan; i++)
        if (s->plan[i]->flags & TNN_FLAG_INPLACE) {
            inplace++;
            over = s->plan[i]->src[0];
        }
    CHECK(inplace == 2, "%d gradient sums planned in place (want 2)", inplace);
    inplace_inputs(s, x, w, xv, wv);
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), got, 40 * 24));
    if (over)
        CHECK_ERR(tnn_download_f32(s, over, want, (size_t)over->nelem), TNN_ERR_STATE, "");
    tnn_session_free(s);

    s = tnn_session_new(0);
    x = tnn_input_2d_f32(s, 40, 24);
    for (int i = 0; i < 3; i++) w[i] = tnn_input_2d_f32(s, 16, 24);
    tnn_tensor *one = tnn_input_2d_f32(s, 40, 16);
    q = tnn_matmul_nt(s, x, w[0]), k = tnn_matmul_nt(s, x, w[1]), v = tnn_matmul_nt(s, x, w[2]);
    tnn_tensor *dv = tnn_silu_back(s, v, one); /* dq = k, dk = q: the sum's gradient is 1 */
    tnn_tensor *dx = tnn_add(s, tnn_add(s, tnn_matmul_nn(s, dv, w[2]), tnn_matmul_nn(s, q, w[1])),
                             tnn_matmul_nn(s, k, w[0]));
    CHECK_OK(tnn_realize(s, dx));
    inplace_inputs(s, x, w, xv, wv);
    CHECK_OK(tnn_upload_from_float_array(s, one, ov, 40 * 16));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, dx, want, 40 * 24));
    CHECK(!memcmp(got, want, sizeof got), "the in-place gradient sums differ from plain sums");
    tnn_session_free(s);
    free(xv);
    free(wv);
    free(ov);
}

/* Cross-entropy's gradient written over the logits when nothing else reads
 * them later: the same gradients as with the logits kept (their own
 * buffer), and the logits refused to a download. */
static void ce_inplace_run(bool keep, float *out, int *inplace) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 12, 16), *w = tnn_input_2d_f32(s, 300, 16);
    tnn_tensor *tg = tnn_input_1d_i32(s, 12);
    tnn_set_param(x);
    tnn_set_param(w);
    tnn_tensor *lg = tnn_matmul_nt(s, x, w);
    tnn_tensor *loss = tnn_cross_entropy(s, lg, tg, 5);
    CHECK_OK(tnn_backward(s, loss));
    if (keep) tnn_set_output(lg);
    CHECK_OK(tnn_realize(s, loss));
    *inplace = 0;
    for (int32_t i = 0; i < s->n_plan; i++)
        *inplace += s->plan[i]->op == TNN_OP_CROSS_ENTROPY_BACK &&
                    (s->plan[i]->flags & TNN_FLAG_INPLACE);
    double xv[12 * 16], wv[300 * 16];
    int64_t t[12];
    th_seed(23);
    th_fill_f32(xv, 12 * 16, 1.0);
    th_fill_f32(wv, 300 * 16, 1.0);
    for (int i = 0; i < 12; i++) t[i] = (i * 37) % 300;
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, 12 * 16));
    CHECK_OK(tnn_upload_from_float_array(s, w, wv, 300 * 16));
    CHECK_OK(tnn_upload_from_int_array(s, tg, t, 12));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), out, 12 * 16));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, w), out + 12 * 16, 300 * 16));
    static float lv[12 * 300];
    int rc = tnn_download_f32(s, lg, lv, 12 * 300);
    CHECK(keep ? rc == TNN_OK : rc == TNN_ERR_STATE, "logits %s: download status %d",
          keep ? "kept" : "overwritten", rc);
    tnn_session_free(s);
}

static void test_ce_inplace(void) {
    static float a[12 * 16 + 300 * 16], b[12 * 16 + 300 * 16];
    int ia = 0, ib = 0;
    ce_inplace_run(false, a, &ia);
    ce_inplace_run(true, b, &ib);
    CHECK(ia == 1 && ib == 0, "cross-entropy's gradient in place: %d without the logits kept, "
          "%d with", ia, ib);
    CHECK(!memcmp(a, b, sizeof a), "the gradients differ when written over the logits");
}

static void test_cpu_fusion(void) {
    static const fuse_case cases[] = {
        {0, 0, false, 64, 96, 80},    /* packed, edge tiles */
        {1, 0, false, 37, 50, 70},    /* nt */
        {2, 0, false, 33, 50, 70},    /* tn */
        {0, 0, false, 3, 40, 200},    /* skinny */
        {1, 0, false, 5, 64, 300},    /* skinny nt */
        {1, 0, true, 20, 48, 90},     /* bf16 weights */
        {1, 0, true, 4, 48, 90},      /* bf16 weights, skinny */
        {0, 1, false, 10, 24, 40},    /* batched (2, 3) */
        {0, 0, false, 200, 700, 1700} /* K blocks, column panels */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int f = 0; f < F_COUNT; f++) fuse_one(&cases[c], f);
}

int main(void) {
    test_cpu_fusion();
    test_chain_reuses_memory();
    test_outputs_and_reuse();
    test_views_keep_buffer();
    test_inplace_sums();
    test_ce_inplace();
    test_leaf_only_graph();
    test_tensor_accessors();
    return th_finish("test_graph");
}
