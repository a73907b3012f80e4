/* test_graph.c - the graph engine: buffer planning reuses memory along a
 * chain, outputs survive, leaves keep their values across realizes, a node
 * that reads the same tensor twice, repeated computes.
 */
#include "harness.h"

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

int main(void) {
    test_chain_reuses_memory();
    test_outputs_and_reuse();
    test_leaf_only_graph();
    test_tensor_accessors();
    return th_finish("test_graph");
}
