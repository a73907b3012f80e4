/* test_infer.c - the inference ops: RoPE at explicit positions equals RoPE
 * by row, KV-cache write plus cached attention equals full causal attention
 * (in one call and token by token), quantized matmul and row lookup equal
 * their dequantized f32 twins, and borrowed GGUF tensors are read-only.
 */
#include "harness.h"

#include "core/internal.h"
#include "cpu/gemm.h"
#include "llm/quantize.h"
#include "ops/kernels.h"
#include "quant/quant.h"

#include <unistd.h>

static void fill_session(tnn_session *s, tnn_tensor *t, uint64_t seed, double r) {
    size_t n = (size_t)tnn_tensor_nelements(t);
    double *v = th_alloc(n);
    th_seed(seed);
    th_fill_f32(v, n, r);
    CHECK_OK(tnn_upload_from_float_array(s, t, v, n));
    free(v);
}

static void get(tnn_session *s, tnn_tensor *t, double *out) {
    CHECK_OK(tnn_download_to_f64_array(s, t, out, (size_t)tnn_tensor_nelements(t)));
}

/* The cache path against tnn_attention on the same (rotated) q, k, v. */
static void test_cached_attention(void) {
    const int T = 9, H = 4, Hkv = 2, hd = 8, C = 16;
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *q = tnn_input_2d_f32(s, T, H * hd), *k = tnn_input_2d_f32(s, T, Hkv * hd);
    tnn_tensor *v = tnn_input_2d_f32(s, T, Hkv * hd);
    tnn_tensor *pos = tnn_input_1d_i32(s, T), *p0 = tnn_input_1d_i32(s, 1);
    tnn_tensor *kc = tnn_input_2d_f32(s, C, Hkv * hd), *vc = tnn_input_2d_f32(s, C, Hkv * hd);
    /* reference: rope by row index + full causal attention */
    tnn_tensor *ref = tnn_attention(s, tnn_rope(s, q, H, T, 10000.0, 1),
                                    tnn_rope(s, k, Hkv, T, 10000.0, 1), v, H, Hkv, T);
    tnn_tensor *qr = tnn_rope_ext(s, q, H, pos, 10000.0, 1, NULL);
    tnn_tensor *kr = tnn_rope_ext(s, k, Hkv, pos, 10000.0, 1, NULL);
    tnn_tensor *att = tnn_attention_cached(s, qr, tnn_kv_write(s, kc, kr, p0),
                                           tnn_kv_write(s, vc, v, p0), H, Hkv, p0);
    CHECK(att != NULL, "%s", tnn_last_error());
    tnn_set_output(ref);
    CHECK_OK(tnn_realize(s, att));
    fill_session(s, q, 1, 1.0);
    fill_session(s, k, 2, 1.0);
    fill_session(s, v, 3, 1.0);
    int32_t pv[9], zero = 0;
    for (int i = 0; i < T; i++) pv[i] = i;
    CHECK_OK(tnn_upload_i32(s, pos, pv, T));
    CHECK_OK(tnn_upload_i32(s, p0, &zero, 1));
    CHECK_OK(tnn_compute(s));
    double a[9 * 32], b[9 * 32];
    get(s, ref, a);
    get(s, att, b);
    CHECK(th_err(b, a, T * H * hd, 1e-6, 1e-5) <= 1.0, "cached attention differs from full");
    /* past the cache: refused at compute */
    int32_t big = C - T + 1;
    CHECK_OK(tnn_upload_i32(s, p0, &big, 1));
    CHECK_ERR(tnn_compute(s), TNN_ERR_RANGE, "do not fit");
    tnn_session_free(s);

    /* token by token through one n = 1 graph equals the whole prompt */
    s = tnn_session_new(0);
    tnn_tensor *q1 = tnn_input_2d_f32(s, 1, H * hd), *k1 = tnn_input_2d_f32(s, 1, Hkv * hd);
    tnn_tensor *v1 = tnn_input_2d_f32(s, 1, Hkv * hd);
    tnn_tensor *ps = tnn_input_1d_i32(s, 1), *pp = tnn_input_1d_i32(s, 1);
    kc = tnn_input_2d_f32(s, C, Hkv * hd), vc = tnn_input_2d_f32(s, C, Hkv * hd);
    tnn_tensor *o1 = tnn_attention_cached(
        s, tnn_rope_ext(s, q1, H, ps, 10000.0, 1, NULL),
        tnn_kv_write(s, kc, tnn_rope_ext(s, k1, Hkv, ps, 10000.0, 1, NULL), pp),
        tnn_kv_write(s, vc, v1, pp), H, Hkv, pp);
    CHECK_OK(tnn_realize(s, o1));
    double qa[9 * 32], ka[9 * 16], va[9 * 16], got[32];
    th_seed(1);
    th_fill_f32(qa, T * H * hd, 1.0);
    th_seed(2);
    th_fill_f32(ka, T * Hkv * hd, 1.0);
    th_seed(3);
    th_fill_f32(va, T * Hkv * hd, 1.0);
    double worst = 0;
    for (int t = 0; t < T; t++) {
        CHECK_OK(tnn_upload_from_float_array(s, q1, qa + t * H * hd, H * hd));
        CHECK_OK(tnn_upload_from_float_array(s, k1, ka + t * Hkv * hd, Hkv * hd));
        CHECK_OK(tnn_upload_from_float_array(s, v1, va + t * Hkv * hd, Hkv * hd));
        int32_t pt = t;
        CHECK_OK(tnn_upload_i32(s, ps, &pt, 1));
        CHECK_OK(tnn_upload_i32(s, pp, &pt, 1));
        CHECK_OK(tnn_compute(s));
        get(s, o1, got);
        double e = th_err(got, a + t * H * hd, H * hd, 1e-6, 1e-5);
        if (e > worst) worst = e;
    }
    CHECK(worst <= 1.0, "step-by-step decoding differs from the whole prompt (%g)", worst);
    tnn_session_free(s);
}

/* Runs T positions of random q, k, v through kv_write + attention_cached
 * with an f32 or f16 cache of C rows, `step` rows per compute (T: a prompt
 * in one call, 1: decoding), and returns the (T, H*hd) outputs. */
static float *run_cached(int dtype, int T, int C, int H, int Hkv, int hd, int step,
                         const float *qa, const float *ka, const float *va) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *q = tnn_input_2d_f32(s, step, H * hd), *k = tnn_input_2d_f32(s, step, Hkv * hd);
    tnn_tensor *v = tnn_input_2d_f32(s, step, Hkv * hd), *p0 = tnn_input_1d_i32(s, 1);
    int64_t sh[2] = {C, Hkv * hd};
    tnn_tensor *kc = tnn_tensor_new(s, dtype, 2, sh), *vc = tnn_tensor_new(s, dtype, 2, sh);
    tnn_tensor *o = tnn_attention_cached(s, q, tnn_kv_write(s, kc, k, p0),
                                         tnn_kv_write(s, vc, v, p0), H, Hkv, p0);
    CHECK(o != NULL, "%s", tnn_last_error());
    CHECK_OK(tnn_realize(s, o));
    float *out = malloc(sizeof(float) * (size_t)T * H * hd);
    for (int t = 0; t < T; t += step) {
        CHECK_OK(tnn_upload_f32(s, q, qa + (size_t)t * H * hd, (size_t)step * H * hd));
        CHECK_OK(tnn_upload_f32(s, k, ka + (size_t)t * Hkv * hd, (size_t)step * Hkv * hd));
        CHECK_OK(tnn_upload_f32(s, v, va + (size_t)t * Hkv * hd, (size_t)step * Hkv * hd));
        int32_t pt = t;
        CHECK_OK(tnn_upload_i32(s, p0, &pt, 1));
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_f32(s, o, out + (size_t)t * H * hd, (size_t)step * H * hd));
    }
    if (dtype == TNN_F16) { /* the cache holds the rows rounded to f16 */
        float *all = malloc(sizeof(float) * (size_t)C * Hkv * hd);
        CHECK_OK(tnn_download_f32(s, kc, all, (size_t)C * Hkv * hd));
        int bad = 0;
        for (int i = 0; i < T * Hkv * hd; i++)
            bad += all[i] != tnn__f16_to_f32(tnn__f32_to_f16(ka[i]));
        CHECK(bad == 0, "%d f16 cache values are not the rounded keys", bad);
        free(all);
    }
    tnn_session_free(s);
    return out;
}

/* Long contexts (several 64-key chunks), head sizes with and without a
 * multiple of 8, f32 and f16 caches: a whole prompt (the block path: GEMMs)
 * and token-by-token decoding (chunks in parallel, merged after) against a
 * double reference; every kernel and 1/2/3 threads give the same bits on
 * each path. */
static void test_cached_attention_long(void) {
    const int T = 200, C = 256, H = 6, Hkv = 2;
    static const int hds[] = {64, 12};
    for (int hi = 0; hi < 2; hi++) {
        int hd = hds[hi];
        size_t nq = (size_t)T * H * hd, nk = (size_t)T * Hkv * hd;
        float *qa = malloc(nq * sizeof *qa), *ka = malloc(nk * sizeof *ka);
        float *va = malloc(nk * sizeof *va);
        th_seed(77 + (uint64_t)hd);
        for (size_t i = 0; i < nq; i++) qa[i] = (float)th_sym(2.0);
        for (size_t i = 0; i < nk; i++) ka[i] = (float)th_sym(2.0), va[i] = (float)th_sym(1.0);
        for (int dt = 0; dt < 2; dt++) {
            int dtype = dt ? TNN_F16 : TNN_F32;
            /* double reference on the values the cache holds */
            double *kr = malloc(nk * sizeof *kr), *vr = malloc(nk * sizeof *vr);
            for (size_t i = 0; i < nk; i++) {
                kr[i] = dt ? tnn__f16_to_f32(tnn__f32_to_f16(ka[i])) : ka[i];
                vr[i] = dt ? tnn__f16_to_f32(tnn__f32_to_f16(va[i])) : va[i];
            }
            double *ref = calloc(nq, sizeof *ref), *sc = malloc(T * sizeof *sc);
            for (int t = 0; t < T; t++)
                for (int h = 0; h < H; h++) {
                    int g = h / (H / Hkv);
                    double mx = -INFINITY, sum = 0;
                    for (int j = 0; j <= t; j++) {
                        double d = 0;
                        for (int e = 0; e < hd; e++)
                            d += (double)qa[(size_t)t * H * hd + h * hd + e] *
                                 kr[(size_t)j * Hkv * hd + g * hd + e];
                        sc[j] = d / sqrt((double)hd);
                        if (sc[j] > mx) mx = sc[j];
                    }
                    for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                    for (int j = 0; j <= t; j++)
                        for (int e = 0; e < hd; e++)
                            ref[(size_t)t * H * hd + h * hd + e] +=
                                sc[j] / sum * vr[(size_t)j * Hkv * hd + g * hd + e];
                }
            float *prompt = run_cached(dtype, T, C, H, Hkv, hd, T, qa, ka, va);
            float *dec = run_cached(dtype, T, C, H, Hkv, hd, 1, qa, ka, va);
            double worst = 0, worst_p = 0;
            for (size_t i = 0; i < nq; i++) {
                double e = fabs(dec[i] - ref[i]) / (1e-5 + 1e-5 * fabs(ref[i]));
                double ep = fabs(prompt[i] - ref[i]) / (1e-5 + 1e-5 * fabs(ref[i]));
                if (e > worst) worst = e;
                if (ep > worst_p) worst_p = ep;
            }
            CHECK(worst <= 1.0, "hd %d %s: decoding vs double reference: %g of the bound", hd,
                  dt ? "f16" : "f32", worst);
            CHECK(worst_p <= 1.0, "hd %d %s: a whole prompt vs double reference: %g of the bound",
                  hd, dt ? "f16" : "f32", worst_p);
            for (int kid = 0; kid < TNN_QK_COUNT; kid++) {
                if (!tnn__quant_kernel_supported(kid)) continue;
                CHECK_OK(tnn__quant_set_kernel(kid));
                for (int th = 1; th <= 3; th++) {
                    CHECK_OK(tnn_set_num_threads(th));
                    float *d2 = run_cached(dtype, T, C, H, Hkv, hd, 1, qa, ka, va);
                    CHECK(memcmp(d2, dec, nq * sizeof *dec) == 0,
                          "hd %d %s: kernel %s, %d threads: different bits", hd,
                          dt ? "f16" : "f32", tnn__quant_kernel_name(kid), th);
                    free(d2);
                    float *p2 = run_cached(dtype, T, C, H, Hkv, hd, T, qa, ka, va);
                    CHECK(memcmp(p2, prompt, nq * sizeof *prompt) == 0,
                          "hd %d %s: prompt, kernel %s, %d threads: different bits", hd,
                          dt ? "f16" : "f32", tnn__quant_kernel_name(kid), th);
                    free(p2);
                }
            }
            CHECK_OK(tnn__quant_set_kernel(TNN_QK_AUTO));
            CHECK_OK(tnn_set_num_threads(0));
            free(prompt), free(dec), free(ref), free(sc), free(kr), free(vr);
        }
        free(qa), free(ka), free(va);
    }
}

/* Steps shorter than a block: the chunked paths, whole rows per task (long
 * context, so the per-chunk scratch would be large) or chunks in parallel,
 * give the same bits as decoding token by token. */
static void test_cached_attention_paths(void) {
    const int T = 960, C = 1024, H = 6, Hkv = 2, hd = 64;
    size_t nq = (size_t)T * H * hd, nk = (size_t)T * Hkv * hd;
    float *qa = malloc(nq * sizeof *qa), *ka = malloc(nk * sizeof *ka), *va = malloc(nk * sizeof *va);
    th_seed(31);
    for (size_t i = 0; i < nq; i++) qa[i] = (float)th_sym(2.0);
    for (size_t i = 0; i < nk; i++) ka[i] = (float)th_sym(2.0), va[i] = (float)th_sym(1.0);
    float *rows = run_cached(TNN_F16, T, C, H, Hkv, hd, 48, qa, ka, va);
    float *dec = run_cached(TNN_F16, T, C, H, Hkv, hd, 1, qa, ka, va);
    float *blk = run_cached(TNN_F16, T, C, H, Hkv, hd, T, qa, ka, va);
    CHECK(memcmp(rows, dec, nq * sizeof *dec) == 0, "steps of 48 differ from decoding in bits");
    double worst = 0;
    for (size_t i = 0; i < nq; i++) {
        double e = fabs(blk[i] - dec[i]) / (1e-5 + 1e-5 * fabs(dec[i]));
        if (e > worst) worst = e;
    }
    CHECK(worst <= 1.0, "a 960-row prompt vs decoding: %g of the bound", worst);
    free(rows), free(dec), free(blk), free(qa), free(ka), free(va);
}

/* f16 / bf16 storage tensors through every float transfer: values come back
 * rounded to nearest even (through f32 from doubles), transposed ones in
 * the right places; arithmetic ops refuse them. */
static void test_half_transfers(void) {
    for (int dt = TNN_F16; dt <= TNN_BF16; dt++) {
        tnn_session *s = tnn_session_new(0);
        int64_t sh[2] = {3, 5};
        tnn_tensor *h = tnn_tensor_new(s, dt, 2, sh);
        CHECK(h != NULL, "%s", tnn_last_error());
        CHECK_OK(tnn_realize(s, h));
        double d[15], back[15], want[15];
        float f[15], fb[15];
        for (int i = 0; i < 15; i++) {
            d[i] = (i - 7) * 0.3333333333 + 1e-9;
            float r = (float)d[i];
            want[i] = dt == TNN_F16 ? tnn__f16_to_f32(tnn__f32_to_f16(r))
                                    : tnn__bf16_to_f32(tnn__f32_to_bf16(r));
            f[i] = r;
        }
        CHECK_OK(tnn_upload_from_float_array(s, h, d, 15));
        CHECK_OK(tnn_download_to_f64_array(s, h, back, 15));
        CHECK(memcmp(back, want, sizeof want) == 0, "dtype %d: f64 round trip", dt);
        CHECK_OK(tnn_upload_f32(s, h, f, 15));
        CHECK_OK(tnn_download_f32(s, h, fb, 15));
        int bad = 0;
        for (int i = 0; i < 15; i++) bad += fb[i] != (float)want[i];
        CHECK(bad == 0, "dtype %d: f32 round trip (%d wrong)", dt, bad);
        /* transposed: src (5 x 3) lands as t[j*5 + i] = src[i*3 + j] */
        CHECK_OK(tnn_upload_transposed_f64(s, h, d, 5, 3));
        CHECK_OK(tnn_download_transposed_f64(s, h, back, 5, 3));
        CHECK(memcmp(back, want, sizeof want) == 0, "dtype %d: transposed round trip", dt);
        CHECK_OK(tnn_download_to_f64_array(s, h, back, 15));
        CHECK(back[1 * 5 + 2] == want[2 * 3 + 1], "dtype %d: transposed placement", dt);
        CHECK_ERR(tnn_download_to_f64_array(s, h, back, 14), TNN_ERR_SHAPE, "15 elements");
        tnn_session_free(s);
    }
}

/* A GGUF file with quantized tensors, written here, read back as borrowed
 * leaves: matmul_nt and get_rows against their dequantized f32 twins. */
static void test_quantized_ops(void) {
    const int M = 70, K = 64, N = 6, NG = 30;
    static const int types[] = {TNN_GGML_Q8_0, TNN_GGML_Q4_0, TNN_GGML_Q4_1, TNN_GGML_F16,
                                TNN_GGML_Q5_0, TNN_GGML_Q5_1, TNN_GGML_BF16};
    char path[64];
    snprintf(path, sizeof path, "/tmp/tnn-test-quant-%d.gguf", (int)getpid());
    float *w = malloc(sizeof(float) * M * K);
    th_seed(9);
    for (int i = 0; i < M * K; i++) w[i] = (float)th_sym(1.0);
    tnn_gguf_writer *wr = tnn_gguf_writer_new();
    unsigned char *q = malloc((size_t)M * K * 4);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int64_t rb = tnn__qtype_row_bytes(types[ti], K);
        for (int r = 0; r < M; r++) CHECK_OK(tnn__quantize_row(types[ti], w + r * K, q + r * rb, K));
        char name[32];
        snprintf(name, sizeof name, "w%zu", ti);
        int64_t shape[2] = {M, K};
        CHECK_OK(tnn_gguf_writer_add_tensor(wr, name, types[ti], 2, shape, q, (size_t)(rb * M)));
    }
    CHECK_OK(tnn_gguf_writer_write(wr, path));
    tnn_gguf_writer_free(wr);
    tnn_gguf *g = tnn_gguf_open(path);
    CHECK(g != NULL, "%s", tnn_last_error());
    for (size_t ti = 0; g && ti < sizeof types / sizeof types[0]; ti++) {
        char name[32];
        snprintf(name, sizeof name, "w%zu", ti);
        for (int pass = 0; pass < 5; pass++) {
            /* 1 and 6 rows: the matrix-vector kernels; 30: a GEMM on the
             * dequantized W, on bf16 copies where those are the faster
             * products (pass 2: the GEMM's packs dequantize it); passes 3
             * and 4: the f32 GEMM, on W dequantized in 64-row panels, then
             * whole */
            int n = pass == 0 ? 1 : pass == 1 ? N : NG;
            tnn__qmm_set_full_bytes(pass == 3 ? 0 : (int64_t)32 << 20);
            tnn__qmm_set_bf16(pass < 3);
            tnn__qmm_set_rows(24); /* the paths, not the crossovers (those vary by CPU) */
            bool bf16 = pass < 3 && tnn__gemm_bf16_auto_path() != TNN_GEMM_BF16_WIDEN;
            tnn_session *s = tnn_session_new(0);
            tnn_tensor *W = tnn_tensor_from_gguf(s, g, name);
            CHECK(W && tnn_tensor_dtype(W) == TNN_GGML && tnn_tensor_ggml_type(W) == types[ti],
                  "from_gguf %s", tnn_last_error());
            tnn_tensor *x = tnn_input_2d_f32(s, n, K), *Wf = tnn_input_2d_f32(s, M, K);
            tnn_tensor *idx = tnn_input_1d_i32(s, 3);
            tnn_tensor *y = tnn_matmul_nt(s, x, W), *yref = tnn_matmul_nt(s, x, Wf);
            tnn_tensor *rows = tnn_get_rows(s, W, idx), *rref = tnn_get_rows(s, Wf, idx);
            /* the gradient of x W^T for x: (n, M) @ W */
            tnn_tensor *gi = tnn_input_2d_f32(s, n, M);
            tnn_tensor *dx = tnn_matmul_nn(s, gi, W), *dxref = tnn_matmul_nn(s, gi, Wf);
            CHECK(dx && dxref, "matmul_nn with a GGML b: %s", tnn_last_error());
            tnn_set_output(dx);
            tnn_set_output(dxref);
            tnn_set_output(yref);
            tnn_set_output(rows);
            tnn_set_output(rref);
            CHECK_OK(tnn_realize(s, y));
            /* the f32 twin holds the dequantized weights */
            float *deq = malloc(sizeof(float) * M * K);
            int64_t rb = tnn__qtype_row_bytes(types[ti], K);
            const unsigned char *wd = tnn_gguf_tensor_data(g, tnn_gguf_find_tensor(g, name));
            for (int r = 0; r < M; r++) tnn__dequantize_row(types[ti], wd + r * rb, deq + r * K, K);
            CHECK_OK(tnn_upload_f32(s, Wf, deq, (size_t)M * K));
            fill_session(s, x, 5 + pass, 1.0);
            fill_session(s, gi, 15 + pass, 1.0);
            int32_t ids[3] = {0, M - 1, 17};
            CHECK_OK(tnn_upload_i32(s, idx, ids, 3));
            CHECK_OK(tnn_compute(s));
            double *a = th_alloc((size_t)n * M), *b = th_alloc((size_t)n * M);
            get(s, y, a);
            get(s, yref, b);
            /* the integer paths quantize x to 8 bits: ~1% of the row's scale;
             * bf16 copies round x and W to 8 bits of mantissa */
            double tol = (types[ti] == TNN_GGML_F16 || types[ti] == TNN_GGML_BF16) && n <= 24 ? 1e-5
                         : n > 24 && bf16 ? 1e-2
                         : n > 24         ? 1e-5
                                          : 2e-2;
            CHECK(th_err(a, b, (size_t)n * M, tol * 8, tol) <= 1.0, "%s n=%d: quantized matmul",
                  tnn_ggml_type_name(types[ti]), n);
            if (n > 24 && !bf16) /* the f32 product with the dequantized weights */
                CHECK(memcmp(a, b, sizeof(double) * (size_t)n * M) == 0,
                      "%s n=%d pass %d: not the f32 product's bits", tnn_ggml_type_name(types[ti]),
                      n, pass);
            else if (n > 24) { /* the bf16 product with the dequantized weights rounded */
                float *xf = malloc(sizeof(float) * (size_t)n * K), *yb = malloc(sizeof(float) * n * M);
                uint16_t *wb = malloc(sizeof(uint16_t) * M * K);
                for (int i = 0; i < M * K; i++) wb[i] = tnn__f32_to_bf16(deq[i]);
                CHECK_OK(tnn_download_f32(s, x, xf, (size_t)n * K));
                CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, true, n, M, K, xf, K, wb, K, yb,
                                        M));
                int bad = 0;
                for (int i = 0; i < n * M; i++) bad += (double)yb[i] != a[i];
                CHECK(bad == 0, "%s n=%d pass %d: %d outputs are not the bf16 product's",
                      tnn_ggml_type_name(types[ti]), n, pass, bad);
                free(xf), free(yb), free(wb);
            } else { /* several rows: each row's bits are the one-row kernel's */
                float *xf = malloc(sizeof(float) * (size_t)n * K), *yr = malloc(sizeof(float) * M);
                CHECK_OK(tnn_download_f32(s, x, xf, (size_t)n * K));
                int bad = 0;
                for (int r = 0; r < n; r++) {
                    CHECK_OK(tnn__quant_matvec(types[ti], wd, M, K, xf + r * K, yr, NULL));
                    for (int j = 0; j < M; j++) bad += (double)yr[j] != a[r * M + j];
                }
                CHECK(bad == 0, "%s n=%d: %d outputs differ from the one-row kernel's",
                      tnn_ggml_type_name(types[ti]), n, bad);
                free(xf), free(yr);
            }
            /* dx: the f32 product's bits (W dequantized a panel of columns
             * at a time; pass 3: one block a panel), or the bf16 GEMM's on
             * the dequantized W rounded (its packs dequantizing W's rows) */
            double *da = th_alloc((size_t)n * K), *db = th_alloc((size_t)n * K);
            get(s, dx, da);
            get(s, dxref, db);
            if (bf16) {
                CHECK(th_err(da, db, (size_t)n * K, 8e-2, 1e-2) <= 1.0, "%s n=%d: (n, M) @ W",
                      tnn_ggml_type_name(types[ti]), n);
                float *gf = malloc(sizeof(float) * (size_t)n * M), *yb = malloc(sizeof(float) * n * K);
                uint16_t *wb = malloc(sizeof(uint16_t) * M * K);
                for (int i = 0; i < M * K; i++) wb[i] = tnn__f32_to_bf16(deq[i]);
                CHECK_OK(tnn_download_f32(s, gi, gf, (size_t)n * M));
                CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, false, n, K, M, gf, M, wb, K,
                                        yb, K));
                int bad = 0;
                for (int i = 0; i < n * K; i++) bad += (double)yb[i] != da[i];
                /* (a few rows: tnn__gemm_bf16 takes its skinny kernels) */
                CHECK(bad == 0 || n <= 24, "%s n=%d pass %d: %d of (n, M) @ W are not the bf16 "
                      "GEMM's", tnn_ggml_type_name(types[ti]), n, pass, bad);
                free(gf), free(yb), free(wb);
            } else
                CHECK(memcmp(da, db, sizeof(double) * (size_t)n * K) == 0,
                      "%s n=%d pass %d: (n, M) @ W is not the f32 product's bits",
                      tnn_ggml_type_name(types[ti]), n, pass);
            float *wf = malloc(sizeof(float) * M * K);
            CHECK_OK(tnn_download_f32(s, W, wf, (size_t)M * K));
            CHECK(memcmp(wf, deq, sizeof(float) * M * K) == 0, "%s: download_f32 dequantizes",
                  tnn_ggml_type_name(types[ti]));
            CHECK_ERR(tnn_download_f32(s, W, wf, (size_t)M * K - 1), TNN_ERR_SHAPE, "n");
            free(wf), free(da), free(db);
            double ra[3 * 64], rr[3 * 64];
            get(s, rows, ra);
            get(s, rref, rr);
            CHECK(memcmp(ra, rr, sizeof ra) == 0, "%s: get_rows differs from dequantize",
                  tnn_ggml_type_name(types[ti]));
            CHECK_ERR(tnn_upload_f32(s, W, deq, (size_t)M * K), TNN_ERR_ARG, "read-only");
            CHECK_NULL(tnn_matmul_nn(s, x, W), TNN_ERR_SHAPE, "second operand");
            CHECK_NULL(tnn_matmul_tn(s, gi, W), TNN_ERR_SHAPE, "second operand");
            free(a), free(b), free(deq);
            tnn_session_free(s);
        }
    }
    tnn__qmm_set_full_bytes((int64_t)32 << 20);
    tnn__qmm_set_bf16(true);
    tnn__qmm_set_rows(-1);
    tnn_session *s = tnn_session_new(0);
    CHECK_NULL(tnn_tensor_from_gguf(s, g, "nope"), TNN_ERR_RANGE, "nope");
    CHECK_NULL(tnn_tensor_from_gguf(s, NULL, "w0"), TNN_ERR_ARG, "NULL");
    tnn_session_free(s);
    tnn_gguf_close(g);
    unlink(path);
    free(w), free(q);
}

/* Products of one x through the matrix-vector kernels, with other nodes
 * between them (a bias add, a SiLU: Qwen's q/k/v, the gated FFN), run as
 * one set (tnn__fwd_qmm_set): each output has the bits of the products run
 * one by one, for 1..3 threads and 1 or 5 rows of x; a product of another
 * weight type ends a set. */
static void test_quantized_sets(void) {
    enum { K = 64, MQ = 70, MK = 40 };
    char path[64];
    snprintf(path, sizeof path, "/tmp/tnn-test-qsets-%d.gguf", (int)getpid());
    static const char *const names[4] = {"wq", "wk", "wv", "wd"};
    static const int types[4] = {TNN_GGML_Q4_1, TNN_GGML_Q4_1, TNN_GGML_Q4_1, TNN_GGML_Q8_0};
    const int rows[4] = {MQ, MK, MK, MK};
    float *w = malloc(sizeof(float) * MQ * K);
    unsigned char *q = malloc((size_t)MQ * K * 2);
    tnn_gguf_writer *wr = tnn_gguf_writer_new();
    th_seed(21);
    for (int t = 0; t < 4; t++) {
        int64_t rb = tnn__qtype_row_bytes(types[t], K), shape[2] = {rows[t], K};
        for (int i = 0; i < rows[t] * K; i++) w[i] = (float)th_sym(1.0);
        for (int r = 0; r < rows[t]; r++)
            CHECK_OK(tnn__quantize_row(types[t], w + r * K, q + r * rb, K));
        CHECK_OK(tnn_gguf_writer_add_tensor(wr, names[t], types[t], 2, shape, q,
                                            (size_t)(rb * rows[t])));
    }
    CHECK_OK(tnn_gguf_writer_write(wr, path));
    tnn_gguf_writer_free(wr);
    tnn_gguf *g = tnn_gguf_open(path);
    CHECK(g != NULL, "%s", tnn_last_error());
    tnn__qmm_set_rows(24);
    for (int n = 1; g && n <= 5; n += 4) {
        tnn_session *s = tnn_session_new(0);
        tnn_tensor *W[4];
        for (int t = 0; t < 4; t++) W[t] = tnn_tensor_from_gguf(s, g, names[t]);
        tnn_tensor *x = tnn_input_2d_f32(s, n, K), *bias = tnn_input_1d_f32(s, MQ);
        /* q, its bias, k, its SiLU, v: one set; d (Q8_0) alone */
        tnn_tensor *qb = tnn_add(s, tnn_matmul_nt(s, x, W[0]), bias);
        tnn_tensor *ks = tnn_silu(s, tnn_matmul_nt(s, x, W[1]));
        tnn_tensor *v = tnn_matmul_nt(s, x, W[2]), *d = tnn_matmul_nt(s, x, W[3]);
        /* gate and up (read by nothing else: their buffers are the planner's
         * to reuse) */
        tnn_tensor *gs = tnn_silu(s, tnn_matmul_nt(s, x, W[1]));
        tnn_tensor *f = tnn_mul(s, gs, tnn_matmul_nt(s, x, W[2]));
        /* z, read last by the SiLU between two products: the second
         * product's output may take z's buffer, so it may not run first */
        tnn_tensor *z = tnn_scale(s, d, 2.0), *p1 = tnn_matmul_nt(s, x, W[1]);
        tnn_tensor *zz = tnn_silu(s, tnn_silu(s, z)), *p2 = tnn_matmul_nt(s, x, W[2]);
        f = tnn_add(s, f, tnn_mul(s, tnn_mul(s, p1, zz), p2));
        tnn_tensor *r = tnn_add(s, tnn_add(s, tnn_mul(s, ks, v), d), f);
        tnn_tensor *outs[5] = {qb, ks, v, d, r};
        for (int o = 0; o < 4; o++) tnn_set_output(outs[o]);
        CHECK_OK(tnn_realize(s, r));
        fill_session(s, x, 31 + n, 1.0);
        fill_session(s, bias, 41, 0.5);
        const int64_t sizes[5] = {n * MQ, n * MK, n * MK, n * MK, n * MK};
        float *want[5], *got = malloc(sizeof(float) * n * MQ);
        tnn__cpu_set_fuse(0);
        long long sets0 = tnn__cpu_fused_sets();
        CHECK_OK(tnn_compute(s));
        CHECK(tnn__cpu_fused_sets() == sets0, "n=%d: sets ran with fusion off", n);
        for (int o = 0; o < 5; o++) {
            want[o] = malloc(sizeof(float) * (size_t)sizes[o]);
            CHECK_OK(tnn_download_f32(s, outs[o], want[o], (size_t)sizes[o]));
        }
        tnn__cpu_set_fuse(1);
        for (int th = 1; th <= 3; th++) {
            tnn_set_num_threads(th);
            long long before = tnn__cpu_fused_sets();
            CHECK_OK(tnn_compute(s));
            CHECK(tnn__cpu_fused_sets() - before == 2, "n=%d, %d threads: %lld sets, want 2", n,
                  th, tnn__cpu_fused_sets() - before);
            for (int o = 0; o < 5; o++) {
                CHECK_OK(tnn_download_f32(s, outs[o], got, (size_t)sizes[o]));
                CHECK(memcmp(got, want[o], sizeof(float) * (size_t)sizes[o]) == 0,
                      "n=%d, %d threads: output %d of the sets differs from one by one", n, th, o);
            }
        }
        tnn__cpu_set_fuse(-1);
        tnn_set_num_threads(0);
        for (int o = 0; o < 5; o++) free(want[o]);
        free(got);
        tnn_session_free(s);
    }
    tnn__qmm_set_rows(-1);
    tnn_gguf_close(g);
    unlink(path);
    free(w), free(q);
}

/* x's gradient through a quantized product of transformer widths: g (40,
 * 1100) @ W (1100, 1024), W Q4_0 and Q4_K (whole 256-element blocks), so
 * that the GEMM's packs ask for W's row blocks at several column and row
 * offsets (its depth blocks are 512); the bits of the bf16 GEMM on the dequantized W (or, without a
 * fast bf16 path, of the f32 product). */
static void test_quantized_grad_wide(void) {
    enum { M = 1100, K = 1024, N = 40 };
    static const int types[] = {TNN_GGML_Q4_0, TNN_GGML_Q4_K};
    char path[64];
    snprintf(path, sizeof path, "/tmp/tnn-test-qgrad-%d.gguf", (int)getpid());
    float *w = malloc(sizeof(float) * M * K), *deq = malloc(sizeof(float) * M * K);
    unsigned char *q = malloc((size_t)M * K);
    th_seed(21);
    for (int i = 0; i < M * K; i++) w[i] = (float)th_sym(1.0);
    bool bf16 = tnn__gemm_bf16_auto_path() != TNN_GEMM_BF16_WIDEN;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        int64_t rb = tnn__qtype_row_bytes(types[ti], K), shape[2] = {M, K};
        tnn_gguf_writer *wr = tnn_gguf_writer_new();
        int rc = TNN_OK;
        for (int r = 0; r < M && rc == TNN_OK; r++)
            rc = tnn__quantize_row(types[ti], w + r * K, q + r * rb, K);
        if (rc != TNN_OK) { /* Q4_K has no quantizer here: random blocks decode too */
            tnn_clear_error();
            for (int64_t i = 0; i < rb * M; i++) q[i] = (unsigned char)(th_uniform() * 256);
            for (int r = 0; r < M; r++) /* d and dmin (f16) kept small and finite */
                for (int64_t b = 0; b < rb; b += 144) q[r * rb + b + 1] = 0x10, q[r * rb + b + 3] = 0x10;
        }
        CHECK_OK(tnn_gguf_writer_add_tensor(wr, "w", types[ti], 2, shape, q, (size_t)(rb * M)));
        CHECK_OK(tnn_gguf_writer_write(wr, path));
        tnn_gguf_writer_free(wr);
        for (int r = 0; r < M; r++) CHECK_OK(tnn__dequantize_row(types[ti], q + r * rb, deq + r * K, K));
        tnn_gguf *g = tnn_gguf_open(path);
        tnn_session *s = tnn_session_new(0);
        tnn_tensor *W = tnn_tensor_from_gguf(s, g, "w"), *gi = tnn_input_2d_f32(s, N, M);
        tnn_tensor *dx = tnn_matmul_nn(s, gi, W);
        CHECK_OK(tnn_realize(s, dx));
        fill_session(s, gi, 31, 1.0);
        CHECK_OK(tnn_compute(s));
        float *gf = malloc(sizeof(float) * N * M), *got = malloc(sizeof(float) * N * K);
        float *want = malloc(sizeof(float) * N * K);
        uint16_t *wb = malloc(sizeof(uint16_t) * M * K);
        CHECK_OK(tnn_download_f32(s, gi, gf, (size_t)N * M));
        CHECK_OK(tnn_download_f32(s, dx, got, (size_t)N * K));
        for (int i = 0; i < M * K; i++) wb[i] = tnn__f32_to_bf16(deq[i]);
        CHECK_OK(bf16 ? tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, false, N, K, M, gf, M, wb, K,
                                       want, K)
                      : tnn__gemm_f32(false, false, N, K, M, gf, M, deq, K, want, K));
        int bad = 0;
        for (int i = 0; i < N * K; i++) bad += got[i] != want[i];
        CHECK(bad == 0, "%s: %d of g @ W (%d x %d x %d) differ from the %s GEMM's",
              tnn_ggml_type_name(types[ti]), bad, N, K, M, bf16 ? "bf16" : "f32");
        free(gf), free(got), free(want), free(wb);
        tnn_session_free(s);
        tnn_gguf_close(g);
    }
    unlink(path);
    free(w), free(deq), free(q);
}

/* tnn quantize's engine: metadata copied key by key, weight matrices
 * converted, other tensors copied, file_type set. */
static void test_quantize_file(void) {
    char in[64], out[64];
    snprintf(in, sizeof in, "/tmp/tnn-test-qin-%d.gguf", (int)getpid());
    snprintf(out, sizeof out, "/tmp/tnn-test-qout-%d.gguf", (int)getpid());
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    const char *toks[3] = {"a", "bc", "<s>"};
    int32_t ids[3] = {5, -1, 7};
    CHECK_OK(tnn_gguf_writer_add_str(w, "general.architecture", "llama"));
    CHECK_OK(tnn_gguf_writer_add_u32(w, "general.file_type", 0));
    CHECK_OK(tnn_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f));
    CHECK_OK(tnn_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1));
    CHECK_OK(tnn_gguf_writer_add_u64(w, "x.big", 1ull << 40));
    CHECK_OK(tnn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 3));
    CHECK_OK(tnn_gguf_writer_add_arr(w, "x.ids", TNN_GGUF_INT32, ids, 3));
    float wdat[8 * 64], norm[64];
    th_seed(4);
    for (int i = 0; i < 8 * 64; i++) wdat[i] = (float)th_sym(1.0);
    for (int i = 0; i < 64; i++) norm[i] = 1.0f + (float)i / 64;
    int64_t sh2[2] = {8, 64}, sh1[1] = {64};
    CHECK_OK(tnn_gguf_writer_add_tensor(w, "blk.0.ffn_up.weight", TNN_GGML_F32, 2, sh2, wdat, sizeof wdat));
    CHECK_OK(tnn_gguf_writer_add_tensor(w, "blk.0.ffn_norm.weight", TNN_GGML_F32, 1, sh1, norm, sizeof norm));
    /* a checkpoint's training state, which the inference model leaves out */
    CHECK_OK(tnn_gguf_writer_add_tensor(w, "opt.m.blk.0.ffn_up.weight", TNN_GGML_F32, 2, sh2, wdat,
                                        sizeof wdat));
    CHECK_OK(tnn_gguf_writer_add_i64(w, "tinynn.train.step", 7));
    CHECK_OK(tnn_gguf_writer_write(w, in));
    tnn_gguf_writer_free(w);
    int n = -1;
    CHECK_OK(lm_quantize_file(in, out, TNN_GGML_Q8_0, NULL, 1.0, &n));
    CHECK(n == 1, "%d matrices converted", n);
    tnn_gguf *g = tnn_gguf_open(out);
    CHECK(g != NULL, "%s", tnn_last_error());
    if (g) {
        uint32_t ft = 99;
        const char *str = NULL;
        uint64_t big = 0;
        int b = 0;
        CHECK(tnn_gguf_get_u32(g, "general.file_type", &ft) == TNN_OK && ft == 7, "file_type %u", ft);
        CHECK(tnn_gguf_get_str(g, "general.architecture", &str, NULL) == TNN_OK && !strcmp(str, "llama"),
              "architecture");
        CHECK(tnn_gguf_get_u64(g, "x.big", &big) == TNN_OK && big == 1ull << 40, "u64");
        CHECK(tnn_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == TNN_OK && b == 1, "bool");
        CHECK(tnn_gguf_arr_len(g, "tokenizer.ggml.tokens") == 3 &&
                  tnn_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 2, &str, NULL) == TNN_OK &&
                  !strcmp(str, "<s>"),
              "string array");
        int64_t v = 0;
        CHECK(tnn_gguf_get_arr_i64(g, "x.ids", 1, &v) == TNN_OK && v == -1, "int array %lld",
              (long long)v);
        CHECK(tnn_gguf_n_tensors(g) == 2 && tnn_gguf_find_tensor(g, "opt.m.blk.0.ffn_up.weight") < 0 &&
                  tnn_gguf_find_key(g, "tinynn.train.step") < 0,
              "the optimizer state and training keys are left out (%lld tensors)",
              (long long)tnn_gguf_n_tensors(g));
        int64_t wi = tnn_gguf_find_tensor(g, "blk.0.ffn_up.weight");
        int64_t ni = tnn_gguf_find_tensor(g, "blk.0.ffn_norm.weight");
        CHECK(tnn_gguf_tensor_type(g, wi) == TNN_GGML_Q8_0, "weight type");
        CHECK(tnn_gguf_tensor_type(g, ni) == TNN_GGML_F32 &&
                  !memcmp(tnn_gguf_tensor_data(g, ni), norm, sizeof norm),
              "the norm is copied unchanged");
        float back[8 * 64];
        int64_t rb = tnn__qtype_row_bytes(TNN_GGML_Q8_0, 64);
        for (int r = 0; r < 8; r++)
            tnn__dequantize_row(TNN_GGML_Q8_0, (const char *)tnn_gguf_tensor_data(g, wi) + r * rb,
                                back + r * 64, 64);
        double worst = 0;
        for (int i = 0; i < 8 * 64; i++) worst = fmax(worst, fabs(back[i] - wdat[i]));
        CHECK(worst <= 1.0 / 127, "Q8_0 round trip off by %g", worst);
        tnn_gguf_close(g);
    }
    CHECK_ERR(lm_quantize_file(in, out, TNN_GGML_Q4_K, NULL, 1.0, NULL), TNN_ERR_ARG,
              "not a target");
    CHECK_ERR(lm_quantize_file("/nonexistent.gguf", out, TNN_GGML_Q8_0, NULL, 1.0, NULL),
              TNN_ERR_IO, "nonexistent");
    CHECK(lm_quant_type_from_name("Q4_1") == TNN_GGML_Q4_1 && lm_quant_type_from_name("x") < 0,
          "type names");
    unlink(in);
    unlink(out);
}

int main(void) {
    test_cached_attention();
    test_cached_attention_long();
    test_cached_attention_paths();
    test_half_transfers();
    test_quantized_ops();
    test_quantized_sets();
    test_quantized_grad_wide();
    test_quantize_file();
    return th_finish("test_infer");
}
