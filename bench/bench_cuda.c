/* bench_cuda.c - GEMM on the GPU: tnn_matmul_{nn,nt,tn} in a CUDA session
 * (one graph, computed repeatedly; each compute waits for its result)
 * against cuBLAS called directly on the same shapes, same run, each call
 * also waited for: f32 (sgemm), then bf16 weights with f32 activations
 * (tinynn rounds them each compute) and with bf16 activations, against
 * cublasGemmEx on two bf16 operands. Prints GFLOP/s and the ratio; writes
 * bench/results/cuda_gemm.json. Skips (exit 0) without a GPU.
 * --train: f32 only, at the products of a GPT-2 small training step with
 * 4096 tokens (B 4, T 1024: C 768, SwiGLU 2048, vocabulary 50257: the
 * forward's shapes, the weight gradients' with K = 4096 tokens, the LM
 * head's backward, and the LM head's three at vocabulary 50304, a multiple
 * of 64, to show what rows of an odd length cost the products). With
 * TNN_CUDA_TF32=1 both sides take TF32 inputs (cuBLAS's TF32 math mode).
 * --attn: training attention (forward, forward + backward) by the
 * tensor-core kernels and by the cuBLAS score matrices, f32 and TF32.
 */
#include "tinynn.h"

#include "bench_common.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int M, K, N;
} shape;

/* mode 0: f32; 1: f32 activations, bf16 weights; 2: both bf16. */
static double tnn_gflops(int M, int K, int N, int flags, int reps, int mode) {
    bool bf16 = mode > 0;
    tnn_session *s = tnn_session_new(1);
    int64_t sa[2] = {flags == 2 ? K : M, flags == 2 ? M : K};
    int64_t sb[2] = {flags == 1 ? N : K, flags == 1 ? K : N};
    tnn_tensor *a = tnn_tensor_new(s, mode == 2 ? TNN_BF16 : TNN_F32, 2, sa);
    tnn_tensor *b = tnn_tensor_new(s, bf16 ? TNN_BF16 : TNN_F32, 2, sb);
    tnn_tensor *c = flags == 0 ? tnn_matmul_nn(s, a, b)
                    : flags == 1 ? tnn_matmul_nt(s, a, b)
                                 : tnn_matmul_tn(s, a, b);
    double best = 1e30;
    if (c && tnn_realize(s, c) == TNN_OK) {
        float *x = bench_xalloc((size_t)M * K * sizeof(float) + (size_t)K * N * sizeof(float));
        for (size_t i = 0; i < (size_t)M * K + (size_t)K * N; i++) x[i] = (float)(i % 7) * 0.1f;
        tnn_upload_f32(s, a, x, (size_t)M * K);
        tnn_upload_f32(s, b, x + (size_t)M * K, (size_t)K * N);
        free(x);
        tnn_compute(s);
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now();
            if (tnn_compute(s) != TNN_OK) break;
            double dt = bench_now() - t0;
            best = dt < best ? dt : best;
        }
    }
    tnn_session_free(s);
    return 2.0 * M * K * N / best * 1e-9;
}

/* bf16: both operands bf16 (cublasGemmEx, f32 compute and result). */
static double cublas_gflops(int M, int K, int N, int flags, int reps, bool bf16) {
    cublasHandle_t h;
    float *A, *B, *C;
    size_t es = bf16 ? 2 : sizeof(float);
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return 0.0;
    const char *tf = getenv("TNN_CUDA_TF32"); /* tinynn's TF32 products: the same for cuBLAS */
    if (!bf16 && tf && !strcmp(tf, "1")) cublasSetMathMode(h, CUBLAS_TF32_TENSOR_OP_MATH);
    cudaMalloc((void **)&A, (size_t)M * K * es);
    cudaMalloc((void **)&B, (size_t)K * N * es);
    cudaMalloc((void **)&C, (size_t)M * N * sizeof(float));
    /* the values tinynn's run multiplies (zeros would let the tensor cores
     * run cooler, hence faster, than on real data) */
    size_t na = (size_t)M * K, nb = (size_t)K * N;
    float *x = bench_xalloc((na + nb) * sizeof(float));
    for (size_t i = 0; i < na + nb; i++) x[i] = (float)(i % 7) * 0.1f;
    if (bf16) {
        uint16_t *h16 = (uint16_t *)x; /* in place: element i is read before it is written */
        for (size_t i = 0; i < na + nb; i++) {
            uint32_t u;
            memcpy(&u, &x[i], 4);
            h16[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    }
    cudaMemcpy(A, x, na * es, cudaMemcpyHostToDevice);
    cudaMemcpy(B, (char *)x + na * es, nb * es, cudaMemcpyHostToDevice);
    free(x);
    float one = 1.0f, zero = 0.0f;
    bool ta = flags == 2, tb = flags == 1;
    /* row-major C = op(A) op(B) as column-major C^T = op(B)^T op(A)^T */
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = bench_now();
        if (bf16)
            cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                         K, &one, B, CUDA_R_16BF, tb ? K : N, A, CUDA_R_16BF, ta ? M : K, &zero, C,
                         CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        else
            cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M,
                        K, &one, B, tb ? K : N, A, ta ? M : K, &zero, C, N);
        cudaDeviceSynchronize();
        double dt = bench_now() - t0;
        if (r > 0 && dt < best) best = dt;
    }
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    cublasDestroy(h);
    return 2.0 * M * K * N / best * 1e-9;
}

/* Causal attention of B x T tokens, H query heads and Hkv kv heads of
 * size hd: milliseconds of the forward alone (back 0) or of the forward and
 * backward (back 1), best of reps computes, each waited for. */
static double attn_ms(int B, int T, int H, int Hkv, int hd, int back, int reps) {
    tnn_session *s = tnn_session_new(1);
    int64_t sq[2] = {(int64_t)B * T, (int64_t)H * hd}, sk[2] = {(int64_t)B * T, (int64_t)Hkv * hd};
    tnn_tensor *q = tnn_tensor_new(s, TNN_F32, 2, sq), *k = tnn_tensor_new(s, TNN_F32, 2, sk);
    tnn_tensor *v = tnn_tensor_new(s, TNN_F32, 2, sk), *r = tnn_tensor_new(s, TNN_F32, 2, sq);
    tnn_set_param(q);
    tnn_set_param(k);
    tnn_set_param(v);
    tnn_tensor *o = tnn_attention(s, q, k, v, H, Hkv, T), *root = o;
    if (o && back) {
        root = tnn_sum(s, tnn_mul(s, o, r));
        if (tnn_backward(s, root) != TNN_OK) root = NULL;
    }
    double best = 1e30;
    if (root && tnn_realize(s, root) == TNN_OK) {
        size_t nq = (size_t)B * T * H * hd, nk = (size_t)B * T * Hkv * hd;
        float *x = bench_xalloc((nq + 2) * sizeof(float));
        for (size_t i = 0; i < nq + 2; i++) x[i] = (float)((i * 7919) % 2001) * 1e-3f - 1.0f;
        tnn_upload_f32(s, q, x, nq);
        tnn_upload_f32(s, k, x + 1, nk);
        tnn_upload_f32(s, v, x + 2, nk);
        tnn_upload_f32(s, r, x, nq);
        free(x);
        tnn_compute(s);
        for (int i = 0; i < reps; i++) {
            double t0 = bench_now();
            if (tnn_compute(s) != TNN_OK) break;
            double dt = bench_now() - t0;
            best = dt < best ? dt : best;
        }
    }
    tnn_session_free(s);
    return best * 1e3;
}

/* --attn: training attention by each path and precision, same run. The
 * forward's causal products are 2 B H T^2 hd flops (half the T x T), the
 * backward's 2.5 times that (S again, dP, dQ, dK, dV). */
static int bench_attn(const char *gpu) {
    static const int cfg[][5] = {{4, 1024, 12, 12, 64}, {4, 1024, 9, 3, 64}, {1, 4096, 12, 12, 64}};
    static const char *const path[] = {NULL, "gemm"}, *const prec[] = {NULL, "1"};
    printf("training attention on %s: ms forward / forward+backward (TFLOP/s of the causal "
           "products), best of 10\n", gpu);
    for (size_t c = 0; c < sizeof cfg / sizeof *cfg; c++) {
        const int *g = cfg[c];
        double fl = 2.0 * g[0] * g[2] * (double)g[1] * g[1] * g[4];
        printf("B %d T %d H %d/%d hd %d:\n", g[0], g[1], g[2], g[3], g[4]);
        for (int p = 0; p < 2; p++)
            for (int a = 0; a < 2; a++) {
                if (prec[p]) setenv("TNN_CUDA_TF32", prec[p], 1); else unsetenv("TNN_CUDA_TF32");
                if (path[a]) setenv("TNN_CUDA_ATTN", path[a], 1); else unsetenv("TNN_CUDA_ATTN");
                double f = attn_ms(g[0], g[1], g[2], g[3], g[4], 0, 10);
                double fb = attn_ms(g[0], g[1], g[2], g[3], g[4], 1, 10);
                printf("  %-5s %-28s %8.3f / %8.3f ms (%5.1f / %5.1f)\n", prec[p] ? "TF32" : "f32",
                       path[a] ? "cuBLAS score matrices" : "default (tensor-core kernels)", f, fb,
                       fl / f * 1e-9, 3.5 * fl / fb * 1e-9);
            }
    }
    unsetenv("TNN_CUDA_TF32");
    unsetenv("TNN_CUDA_ATTN");
    return 0;
}

int main(int argc, char **argv) {
    bool train = argc > 1 && !strcmp(argv[1], "--train");
    tnn_session *probe = tnn_session_new(1);
    int cuda = probe && !strcmp(tnn_session_backend(probe), "cuda");
    tnn_session_free(probe);
    if (!cuda) {
        printf("bench_cuda: skipped (no CUDA backend or no GPU)\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    if (argc > 1 && !strcmp(argv[1], "--attn")) return bench_attn(prop.name);
    static const shape shapes[] = {{512, 768, 768},   {512, 768, 3072}, {512, 3072, 768},
                                   {64, 576, 49152},  {1024, 1024, 1024}, {2048, 2048, 2048},
                                   {4096, 4096, 4096}};
    static const shape train_shapes[] = {
        {4096, 768, 768},   {4096, 768, 2048},  {4096, 2048, 768},  {4096, 768, 50257},
        {768, 4096, 768},   {768, 4096, 2048},  {2048, 4096, 768},  {4096, 50257, 768},
        {50257, 4096, 768}, {4096, 768, 50304}, {4096, 50304, 768}, {50304, 4096, 768}};
    const shape *sh = train ? train_shapes : shapes;
    size_t nshapes = train ? sizeof train_shapes / sizeof *train_shapes
                           : sizeof shapes / sizeof *shapes;
    static const char *cases[] = {"NN", "NT", "TN"};
    const char *path = train ? TNN_BENCH_RESULTS "/cuda_gemm_train.json"
                             : TNN_BENCH_RESULTS "/cuda_gemm.json";
    FILE *json = bench_json_open(path, "bench_cuda");
    if (json) fprintf(json, "  \"gpu\": \"%s\",\n  \"results\": [\n", prop.name);
    int first = 1;
    static const char *const types[] = {"f32", "bf16", "bf16_bf16"};
    for (int mode = 0; mode < (train ? 1 : 3); mode++) {
        bool bf16 = mode > 0;
        printf("%s GEMM on %s: GFLOP/s tinynn / cuBLAS (ratio), best of 20%s\n",
               bf16 ? "bf16" : "f32", prop.name,
               mode == 1 ? " (tinynn: f32 activations rounded on the device, bf16 weights; "
                           "cuBLAS: both bf16)"
               : mode == 2 ? " (both operands bf16 on both sides)"
                           : "");
        for (size_t i = 0; i < nshapes; i++) {
            const shape *s = &sh[i];
            printf("%5dx%5dx%5d", s->M, s->K, s->N);
            for (int f = 0; f < 3; f++) {
                double t = tnn_gflops(s->M, s->K, s->N, f, 20, mode);
                double c = cublas_gflops(s->M, s->K, s->N, f, 20, bf16);
                printf("  %s %7.0f/%7.0f (%.2f)", cases[f], t, c, t / c);
                if (json)
                    fprintf(json, "%s    {\"type\": \"%s\", \"M\": %d, \"K\": %d, \"N\": %d, "
                                  "\"case\": \"%s\", \"tinynn_gflops\": %.1f, "
                                  "\"cublas_gflops\": %.1f}",
                            first ? "" : ",\n", types[mode], s->M, s->K, s->N, cases[f],
                            t, c);
                first = 0;
            }
            printf("\n");
        }
    }
    /* device memory bandwidth: the bound of memory-bound kernels */
    size_t bytes = (size_t)1 << 30;
    void *src = NULL, *dst = NULL;
    if (cudaMalloc(&src, bytes) == cudaSuccess && cudaMalloc(&dst, bytes) == cudaSuccess) {
        double best = 1e30;
        for (int r = 0; r < 6; r++) {
            double t0 = bench_now();
            cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
            cudaDeviceSynchronize();
            double dt = bench_now() - t0;
            if (r > 0 && dt < best) best = dt;
        }
        printf("device copy bandwidth (read + write): %.0f GB/s\n", 2.0 * bytes / best * 1e-9);
    }
    cudaFree(src);
    cudaFree(dst);
    if (json) bench_json_close(json, path);
    return 0;
}
