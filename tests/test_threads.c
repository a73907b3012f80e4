/* test_threads.c - results are bit-identical for 1, 2 and 3 threads on every
 * op, TNN_THREADS / tnn_set_num_threads behave, and sessions can be used
 * from several threads at once.
 */
#include "harness.h"

#include <pthread.h>

/* Builds a graph that touches every op, runs it, returns the outputs. */
typedef struct {
    double *outs[12];
    size_t sizes[12];
    int n;
} run_out;

static void run_all_ops(run_out *r) {
    tnn_session *s = tnn_session_new(0);
    const int M = 67, K = 129, N = 71, V = 50;
    tnn_tensor *a = tnn_input_2d_f32(s, M, K), *b = tnn_input_2d_f32(s, K, N);
    tnn_tensor *bt = tnn_input_2d_f32(s, N, K), *g = tnn_input_1d_f32(s, K);
    tnn_tensor *tab = tnn_input_2d_f32(s, V, K), *idx = tnn_input_1d_i32(s, M);
    tnn_tensor *outs[12];
    int n = 0;
    outs[n++] = tnn_matmul_nn(s, a, b);
    outs[n++] = tnn_matmul(s, a, bt);
    outs[n++] = tnn_matmul_tn(s, tnn_transpose(s, a), b);
    outs[n++] = tnn_softmax(s, tnn_gelu(s, a));
    outs[n++] = tnn_rms_norm(s, tnn_silu(s, a), g, 1e-5);
    outs[n++] = tnn_rms_norm_back(s, a, tnn_scale(s, a, 0.5), 1e-5);
    outs[n++] = tnn_softmax_back(s, a, tnn_softmax(s, a));
    outs[n++] = tnn_add(s, tnn_mul(s, a, g), tnn_sub(s, a, g));
    outs[n++] = tnn_get_rows(s, tab, idx);
    outs[n++] = tnn_get_rows_back(s, a, idx, tab);
    outs[n++] = tnn_gelu_back(s, a, tnn_silu_back(s, a, a));
    for (int i = 0; i < n; i++) tnn_set_output(outs[i]);
    CHECK_OK(tnn_realize(s, outs[0]));

    th_seed(42);
    double *buf = th_alloc((size_t)M * K + (size_t)K * N + (size_t)V * K);
    th_fill(buf, (size_t)M * K, 2.0);
    CHECK_OK(tnn_upload_from_float_array(s, a, buf, (size_t)M * K));
    th_fill(buf, (size_t)K * N, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, b, buf, (size_t)K * N));
    CHECK_OK(tnn_upload_from_float_array(s, bt, buf, (size_t)K * N));
    th_fill(buf, (size_t)K, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, g, buf, (size_t)K));
    th_fill(buf, (size_t)V * K, 1.0);
    CHECK_OK(tnn_upload_from_float_array(s, tab, buf, (size_t)V * K));
    int64_t ids[67];
    for (int i = 0; i < M; i++) ids[i] = (i * 7) % V;
    CHECK_OK(tnn_upload_from_int_array(s, idx, ids, (size_t)M));
    free(buf);
    CHECK_OK(tnn_compute(s));
    r->n = n;
    for (int i = 0; i < n; i++) {
        size_t len = (size_t)tnn_tensor_nelements(outs[i]);
        r->outs[i] = th_alloc(len);
        r->sizes[i] = len;
        CHECK_OK(tnn_download_to_f64_array(s, outs[i], r->outs[i], len));
    }
    tnn_session_free(s);
}

static void free_run(run_out *r) {
    for (int i = 0; i < r->n; i++) free(r->outs[i]);
}

static void test_bit_identical(void) {
    run_out ref, other;
    CHECK_OK(tnn_set_num_threads(1));
    CHECK(tnn_get_num_threads() == 1, "got %d", tnn_get_num_threads());
    run_all_ops(&ref);
    for (int nt = 2; nt <= 3; nt++) {
        CHECK_OK(tnn_set_num_threads(nt));
        CHECK(tnn_get_num_threads() == nt, "got %d", tnn_get_num_threads());
        run_all_ops(&other);
        CHECK(other.n == ref.n, "op count");
        for (int i = 0; i < ref.n; i++)
            CHECK(memcmp(ref.outs[i], other.outs[i], ref.sizes[i] * sizeof(double)) == 0,
                  "output %d differs between 1 and %d threads", i, nt);
        free_run(&other);
    }
    /* the one-call functions too */
    th_seed(7);
    double *a = th_alloc(300 * 200), *b = th_alloc(200 * 90), *c1 = th_alloc(300 * 90),
           *c3 = th_alloc(300 * 90);
    th_fill(a, 300 * 200, 1.0);
    th_fill(b, 200 * 90, 1.0);
    CHECK_OK(tnn_set_num_threads(1));
    CHECK_OK(tnn_mat_matmul(a, 300, 200, b, 200, 90, c1));
    CHECK_OK(tnn_set_num_threads(3));
    CHECK_OK(tnn_mat_matmul(a, 300, 200, b, 200, 90, c3));
    CHECK(memcmp(c1, c3, 300 * 90 * sizeof(double)) == 0, "tnn_mat_matmul 1 vs 3 threads");
    free(a), free(b), free(c1), free(c3);
    free_run(&ref);
}

static void test_thread_count_api(void) {
    CHECK_ERR(tnn_set_num_threads(-1), TNN_ERR_ARG, "n=-1");
    CHECK_ERR(tnn_set_num_threads(100000), TNN_ERR_ARG, "n=100000");
    CHECK_OK(tnn_set_num_threads(0)); /* back to the default */
    CHECK(tnn_get_num_threads() >= 1, "default threads %d", tnn_get_num_threads());
}

/* Several sessions used at once from different threads. */
static void *session_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    int bad = 0;
    for (int rep = 0; rep < 20; rep++) {
        tnn_session *s = tnn_session_new(0);
        tnn_tensor *a = tnn_input_2d_f32(s, 33, 17), *b = tnn_input_2d_f32(s, 17, 9);
        tnn_tensor *c = tnn_matmul_nn(s, a, b);
        if (!c || tnn_realize(s, c)) bad++;
        double av[33 * 17], bv[17 * 9], cv[33 * 9];
        for (int i = 0; i < 33 * 17; i++) av[i] = (i % 5) + id;
        for (int i = 0; i < 17 * 9; i++) bv[i] = (i % 3) - 1;
        if (tnn_upload_from_float_array(s, a, av, 33 * 17) ||
            tnn_upload_from_float_array(s, b, bv, 17 * 9) || tnn_compute(s) ||
            tnn_download_to_f64_array(s, c, cv, 33 * 9))
            bad++;
        for (int i = 0; i < 33 && !bad; i++)
            for (int j = 0; j < 9; j++) {
                double ref = 0;
                for (int k = 0; k < 17; k++) ref += av[i * 17 + k] * bv[k * 9 + j];
                if (cv[i * 9 + j] != ref) bad++;
            }
        tnn_session_free(s);
    }
    return (void *)(intptr_t)bad;
}

static void test_concurrent_sessions(void) {
    CHECK_OK(tnn_set_num_threads(2));
    pthread_t th[4];
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, session_worker, (void *)(intptr_t)i);
    for (int i = 0; i < 4; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        CHECK((intptr_t)ret == 0, "thread %d saw %ld bad results", i, (long)(intptr_t)ret);
    }
}

int main(void) {
    test_thread_count_api();
    test_bit_identical();
    test_concurrent_sessions();
    return th_finish("test_threads");
}
