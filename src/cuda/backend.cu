/* backend.cu - the CUDA backend: device memory, the stream every node runs
 * on, cuBLAS (loaded at run time, so the library loads on machines without
 * it), the node dispatch and the reports of faults kernels found.
 *
 * Everything is opened on the first request for a CUDA session; a machine
 * with no driver or no GPU gets NULL and a logged reason, never a crash.
 */
#include "cuda_impl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

tnn_cu_state tnn__cu;

/* Sessions on other host threads share the stream, the scratch, the cuBLAS
 * handle and the fault record: every entry point of the backend holds this
 * lock, so one session's nodes (or capture, or copy) never interleave with
 * another's. */
static pthread_mutex_t cu_mu = PTHREAD_MUTEX_INITIALIZER;
struct cu_lock {
    cu_lock() { pthread_mutex_lock(&cu_mu); }
    ~cu_lock() { pthread_mutex_unlock(&cu_mu); }
    cu_lock(const cu_lock &) = delete;
    cu_lock &operator=(const cu_lock &) = delete;
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

int tnn__cu_status(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return TNN_OK;
    int st = e == cudaErrorMemoryAllocation ? TNN_ERR_NOMEM : TNN_ERR_DEVICE;
    return tnn__error(st, what, "CUDA error %s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
}

int tnn__cu_launched(const char *what) { return tnn__cu_status(cudaGetLastError(), what); }

void *tnn__cu_scratch(size_t bytes) {
    if (bytes <= tnn__cu.scratch_size) return tnn__cu.scratch;
    size_t want = bytes + bytes / 4;
    if (tnn__cu.scratch) cudaFree(tnn__cu.scratch); /* waits for the work using it */
    tnn__cu.scratch = NULL;
    tnn__cu.scratch_size = 0;
    cudaError_t e = cudaMalloc(&tnn__cu.scratch, want);
    if (e != cudaSuccess) {
        tnn__cu_status(e, "tnn_compute");
        tnn__cu.scratch = NULL;
        return NULL;
    }
    tnn__cu.scratch_size = want;
    tnn__cu.scratch_gen++;
    return tnn__cu.scratch;
}

/* ------------------------------------------------------------------------ */
/* cuBLAS, loaded at run time                                               */
/* ------------------------------------------------------------------------ */

typedef int (*blas_create_fn)(void **);
typedef int (*blas_stream_fn)(void *, cudaStream_t);
typedef int (*blas_sgemm_sb_fn)(void *, int, int, int, int, int, const float *, const float *,
                                int, long long, const float *, int, long long, const float *,
                                float *, int, long long, int);

typedef int (*blas_gemm_ex_fn)(void *, int, int, int, int, int, const void *, const void *, int,
                               int, long long, const void *, int, int, long long, const void *,
                               void *, int, int, long long, int, int, int);

static struct {
    blas_create_fn create;
    blas_stream_fn set_stream;
    blas_sgemm_sb_fn sgemm;
    blas_gemm_ex_fn gemm_ex; /* optional: bf16 products on the tensor cores */
    int (*set_workspace)(void *, void *, size_t); /* optional */
} blas;

enum { BLAS_OP_N = 0, BLAS_OP_T = 1 };
/* cudaDataType, cublasComputeType_t and cublasGemmAlgo_t values */
enum { DT_R_32F = 0, DT_R_16BF = 14, COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77,
       GEMM_DEFAULT = -1 };

#if TNN_CUDA_EMULATED
/* The emulator's cuBLAS: the column-major reference product, so the
 * row-major mapping in tnn__cu_gemm is tested as it runs on a GPU. */
static cudaStream_t emu_stream;
static int emu_create(void **h) {
    static int token;
    *h = &token;
    return 0;
}
static int emu_set_stream(void *h, cudaStream_t s) {
    emu_stream = s;
    return 0;
}
/* One "thread" runs the product (f32, or bf16 operands with f32 sums),
 * launched on the handle's stream as cuBLAS's kernels are, so a stream
 * capture records it. */
static inline float emu_val(float x) { return x; }
static inline float emu_val(uint16_t x) { return tnn__bf2f(x); }

template <typename T>
static __global__ void k_emu_gemm(int ta, int tb, int m, int n, int k, float alpha, const T *A,
                                  int lda, long long sa, const T *B, int ldb, long long sb,
                                  float beta, float *C, int ldc, long long sc, int batch) {
    for (int p = 0; p < batch; p++)
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float acc = 0.0f;
                for (int l = 0; l < k; l++) {
                    T a = ta ? A[p * sa + i * lda + l] : A[p * sa + l * lda + i];
                    T b = tb ? B[p * sb + l * ldb + j] : B[p * sb + j * ldb + l];
                    acc += emu_val(a) * emu_val(b);
                }
                float *c = &C[p * sc + j * ldc + i];
                *c = alpha * acc + (beta != 0.0f ? beta * *c : 0.0f);
            }
}
static int emu_sgemm(void *h, int ta, int tb, int m, int n, int k, const float *alpha,
                     const float *A, int lda, long long sa, const float *B, int ldb, long long sb,
                     const float *beta, float *C, int ldc, long long sc, int batch) {
    TNN_LAUNCH(k_emu_gemm<float>, 1, 1, 0, emu_stream, ta, tb, m, n, k, *alpha, A, lda, sa, B,
               ldb, sb, *beta, C, ldc, sc, batch);
    return 0;
}
/* cublasGemmStridedBatchedEx for bf16 A and B, f32 C and compute. */
static int emu_gemm_ex(void *h, int ta, int tb, int m, int n, int k, const void *alpha,
                       const void *A, int at, int lda, long long sa, const void *B, int bt,
                       int ldb, long long sb, const void *beta, void *C, int ct, int ldc,
                       long long sc, int batch, int compute, int algo) {
    if (at == DT_R_32F && bt == DT_R_32F && ct == DT_R_32F &&
        (compute == COMPUTE_32F || compute == COMPUTE_32F_FAST_TF32)) /* TF32 not emulated */
        return emu_sgemm(h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda, sa,
                         (const float *)B, ldb, sb, (const float *)beta, (float *)C, ldc, sc,
                         batch);
    if (at != DT_R_16BF || bt != DT_R_16BF || ct != DT_R_32F || compute != COMPUTE_32F) return 7;
    TNN_LAUNCH(k_emu_gemm<uint16_t>, 1, 1, 0, emu_stream, ta, tb, m, n, k, *(const float *)alpha,
               (const uint16_t *)A, lda, sa, (const uint16_t *)B, ldb, sb, *(const float *)beta,
               (float *)C, ldc, sc, batch);
    return 0;
}
static bool blas_open(void) {
    blas.create = emu_create;
    blas.set_stream = emu_set_stream;
    blas.sgemm = emu_sgemm;
    blas.gemm_ex = emu_gemm_ex;
    return true;
}
#else
static bool blas_open(void) {
    static const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
                                  "libcublas.so"};
    /* the loader's path, then the toolkit's usual place; TNN_CUBLAS names a file */
    static const char *dirs[] = {"", "/usr/local/cuda/lib64/",
                                 "/usr/local/cuda/targets/x86_64-linux/lib/"};
    const char *env = getenv("TNN_CUBLAS");
    void *lib = env && *env ? dlopen(env, RTLD_NOW | RTLD_LOCAL) : NULL;
    for (size_t d = 0; d < sizeof dirs / sizeof *dirs && !lib; d++)
        for (size_t i = 0; i < sizeof names / sizeof *names && !lib; i++) {
            char path[256];
            snprintf(path, sizeof path, "%s%s", dirs[d], names[i]);
            lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
    if (!lib) {
        tnn__log(TNN_LOG_WARN, "CUDA backend: cuBLAS not found (%s)", dlerror());
        return false;
    }
    blas.create = (blas_create_fn)dlsym(lib, "cublasCreate_v2");
    blas.set_stream = (blas_stream_fn)dlsym(lib, "cublasSetStream_v2");
    blas.sgemm = (blas_sgemm_sb_fn)dlsym(lib, "cublasSgemmStridedBatched");
    blas.gemm_ex = (blas_gemm_ex_fn)dlsym(lib, "cublasGemmStridedBatchedEx");
    blas.set_workspace = (int (*)(void *, void *, size_t))dlsym(lib, "cublasSetWorkspace_v2");
    if (!blas.create || !blas.set_stream || !blas.sgemm) {
        tnn__log(TNN_LOG_WARN, "CUDA backend: cuBLAS lacks a needed function");
        return false;
    }
    return true;
}
#endif

/* tinynn's own product, for machines without cuBLAS (and TNN_CUDA_GEMM=own):
 * 64 x 64 tiles of C per block of 256 threads, each thread 4 x 4 of them,
 * K in steps of 16 through shared memory; z is the batch. */
#define GT 64
#define GK 16

template <bool TA, bool TB>
__global__ void k_sgemm(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                        int64_t sa, const float *B, int64_t ldb, int64_t sb, float beta, float *C,
                        int64_t ldc, int64_t sc) {
    __shared__ float As[GK][GT + 4];
    __shared__ float Bs[GK][GT + 4];
    A += (int64_t)blockIdx.z * sa;
    B += (int64_t)blockIdx.z * sb;
    C += (int64_t)blockIdx.z * sc;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    int64_t r0 = (int64_t)blockIdx.y * GT, c0 = (int64_t)blockIdx.x * GT;
    float acc[4][4] = {{0}};
    for (int64_t k0 = 0; k0 < K; k0 += GK) {
        for (int i = threadIdx.x; i < GT * GK; i += blockDim.x) {
            int r = i / GK, k = i % GK;
            int64_t gr = r0 + r, gk = k0 + k;
            As[k][r] = gr < M && gk < K ? (TA ? A[gk * lda + gr] : A[gr * lda + gk]) : 0.0f;
            int c = i % GT, kb = i / GT;
            int64_t gc = c0 + c, gkb = k0 + kb;
            Bs[kb][c] = gc < N && gkb < K ? (TB ? B[gc * ldb + gkb] : B[gkb * ldb + gc]) : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < GK; k++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[k][ty * 4 + i];
            for (int j = 0; j < 4; j++) b[j] = Bs[k][tx * 4 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            int64_t r = r0 + ty * 4 + i, c = c0 + tx * 4 + j;
            if (r < M && c < N) {
                float *o = &C[r * ldc + c];
                *o = alpha * acc[i][j] + (beta != 0.0f ? beta * *o : 0.0f);
            }
        }
}

static int own_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                    int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch) {
    if ((M + GT - 1) / GT > 65535 || batch > 65535)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "a product of %lld rows in %lld batches is beyond "
                       "the grid of tinynn's own GEMM kernel", (long long)M, (long long)batch);
    dim3 grid((unsigned)((N + GT - 1) / GT), (unsigned)((M + GT - 1) / GT), (unsigned)batch);
    cudaStream_t st = tnn__cu.stream;
#define OWN_GEMM(TA, TB)                                                                      \
    TNN_LAUNCH(k_sgemm<TA COMMA TB>, grid, 256, 0, st, M, N, K, alpha, A, lda, sa, B, ldb, sb, \
               beta, C, ldc, sc)
    if (ta && tb)
        OWN_GEMM(true, true);
    else if (ta)
        OWN_GEMM(true, false);
    else if (tb)
        OWN_GEMM(false, true);
    else
        OWN_GEMM(false, false);
#undef OWN_GEMM
    return tnn__cu_launched("tnn_compute");
}

/* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS
 * gets B first, each operand flagged as stored (a row-major matrix is the
 * transpose of the column-major one in the same bytes). Without cuBLAS, or
 * with TNN_CUDA_GEMM=own, tinynn's own kernel runs. */
int tnn__cu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                 int64_t sa, const float *B, int64_t ldb, int64_t sb, float *C, int64_t sc,
                 int64_t batch) {
    return tnn__cu_gemm_ab(ta, tb, M, N, K, 1.0f, A, lda, sa, B, ldb, sb, 0.0f, C, N, sc, batch);
}

bool tnn__cu_tf32(void) {
    const char *tf = getenv("TNN_CUDA_TF32");
    return tf && !strcmp(tf, "1");
}

int tnn__cu_gemm_ab(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                    int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch) {
    if (M == 0 || N == 0 || batch == 0) return TNN_OK;
    const char *e = getenv("TNN_CUDA_GEMM");
    if (!tnn__cu.blas || (e && !strcmp(e, "own")))
        return own_gemm(ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
    const int64_t lim = INT32_MAX;
    if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || ldc > lim || batch > lim)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "a product of %lld x %lld x %lld is beyond cuBLAS's "
                       "32-bit sizes", (long long)M, (long long)N, (long long)K);
    /* TNN_CUDA_TF32=1: the f32 products on the tensor cores with TF32
     * inputs (10-bit mantissas, f32 sums), as PyTorch's allow_tf32 and
     * llm.c's default f32 build do */
    int rc;
    if (tnn__cu_tf32() && blas.gemm_ex)
        rc = blas.gemm_ex(tnn__cu.blas, tb ? BLAS_OP_T : BLAS_OP_N, ta ? BLAS_OP_T : BLAS_OP_N,
                          (int)N, (int)M, (int)K, &alpha, B, DT_R_32F, (int)ldb, sb, A, DT_R_32F,
                          (int)lda, sa, &beta, C, DT_R_32F, (int)ldc, sc, (int)batch,
                          COMPUTE_32F_FAST_TF32, GEMM_DEFAULT);
    else
        rc = blas.sgemm(tnn__cu.blas, tb ? BLAS_OP_T : BLAS_OP_N, ta ? BLAS_OP_T : BLAS_OP_N,
                        (int)N, (int)M, (int)K, &alpha, B, (int)ldb, sb, A, (int)lda, sa, &beta,
                        C, (int)ldc, sc, (int)batch);
    if (rc != 0) return TNN_ERR(TNN_ERR_DEVICE, "cuBLAS sgemm failed (status %d)", rc);
    return tnn__cu_launched("tnn_compute");
}
/* The same product with bf16 operands (f32 accumulation and result) on
 * cuBLAS's tensor-core path; TNN_ERR_UNSUPPORTED when this cuBLAS has none
 * (the caller then widens to f32). */
bool tnn__cu_bf16_gemm_ok(void) {
    const char *e = getenv("TNN_CUDA_GEMM");
    return tnn__cu.blas && blas.gemm_ex && !(e && !strcmp(e, "own"));
}

int tnn__cu_gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                      int64_t lda, int64_t sa, const uint16_t *B, int64_t ldb, int64_t sb,
                      float beta, float *C, int64_t sc, int64_t batch) {
    if (!tnn__cu_bf16_gemm_ok()) return TNN_ERR_UNSUPPORTED;
    if (M == 0 || N == 0 || batch == 0) return TNN_OK;
    const int64_t lim = INT32_MAX;
    if (M > lim || N > lim || K > lim || lda > lim || ldb > lim || batch > lim)
        return TNN_ERR_UNSUPPORTED;
    float one = 1.0f;
    int rc = blas.gemm_ex(tnn__cu.blas, tb ? BLAS_OP_T : BLAS_OP_N, ta ? BLAS_OP_T : BLAS_OP_N,
                          (int)N, (int)M, (int)K, &one, B, DT_R_16BF, (int)ldb, sb, A, DT_R_16BF,
                          (int)lda, sa, &beta, C, DT_R_32F, (int)N, sc, (int)batch, COMPUTE_32F,
                          GEMM_DEFAULT);
    if (rc != 0) return TNN_ERR(TNN_ERR_DEVICE, "cuBLAS bf16 GEMM failed (status %d)", rc);
    return tnn__cu_launched("tnn_compute");
}

/* ------------------------------------------------------------------------ */
/* Memory                                                                   */
/* ------------------------------------------------------------------------ */

static void *cu_alloc(size_t nbytes) {
    cu_lock held;
    void *p = NULL;
    size_t n = nbytes ? nbytes : 1;
    if (cudaMalloc(&p, n) != cudaSuccess) {
        cudaGetLastError(); /* an allocation failure is not sticky: clear it */
        return NULL;
    }
    if (cudaMemsetAsync(p, 0, n, tnn__cu.stream) != cudaSuccess) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free(void *p) {
    cu_lock held;
    if (p) cudaFree(p);
}

static bool profiling(void);
static void prof_copy(int dir, double t0);
static double now_s(void);

/* Small uploads (a decoding step's token and positions) go through pinned
 * staging memory: copied there, then queued on the stream, so the caller's
 * buffer is free at once and the host does not wait. A slot is reused only
 * after the stream has been waited for (a download, the end of a compute).
 * Larger uploads copy from the caller's memory and wait. */
#define STAGE_BYTES ((size_t)1 << 20)
#define STAGE_MAX (STAGE_BYTES / 16) /* larger uploads are not staged */
static struct {
    char *buf; /* pinned, STAGE_BYTES */
    size_t used;
} stage;

static cudaError_t synced(void) {
    cudaError_t e = cudaStreamSynchronize(tnn__cu.stream);
    if (e == cudaSuccess) stage.used = 0;
    return e;
}

int tnn__cu_upload(void *dst, const void *src, size_t n) {
    cudaError_t e = cudaSuccess;
    if (n <= STAGE_MAX && !stage.buf &&
        cudaMallocHost((void **)&stage.buf, STAGE_BYTES) != cudaSuccess) {
        cudaGetLastError(); /* no staging: the waiting path below */
        stage.buf = NULL;
    }
    if (n <= STAGE_MAX && stage.buf) {
        if (stage.used + n > STAGE_BYTES) e = synced();
        if (e == cudaSuccess) {
            char *slot = stage.buf + stage.used;
            memcpy(slot, src, n);
            stage.used += (n + 63) & ~(size_t)63;
            e = cudaMemcpyAsync(dst, slot, n, cudaMemcpyHostToDevice, tnn__cu.stream);
        }
    } else {
        e = cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, tnn__cu.stream);
        if (e == cudaSuccess) e = synced();
    }
    return tnn__cu_status(e, "upload");
}

static int cu_copy_in(void *dst, const void *src, size_t n) {
    cu_lock held;
    double t0 = now_s();
    int rc = tnn__cu_upload(dst, src, n);
    prof_copy(0, t0);
    return rc;
}

static int cu_copy_out(void *dst, const void *src, size_t n) {
    cu_lock held;
    double t0 = now_s();
    cudaError_t e = cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, tnn__cu.stream);
    if (e == cudaSuccess) e = synced();
    prof_copy(1, t0);
    return tnn__cu_status(e, "download");
}

/* ------------------------------------------------------------------------ */
/* Nodes                                                                    */
/* ------------------------------------------------------------------------ */

static int cu_run(tnn_tensor *t) {
    switch (t->op) {
    case TNN_OP_ADD:
    case TNN_OP_SUB:
    case TNN_OP_MUL:
    case TNN_OP_SCALE:
    case TNN_OP_GELU:
    case TNN_OP_SILU:
    case TNN_OP_GELU_BACK:
    case TNN_OP_SILU_BACK:
    case TNN_OP_TO_BF16:
    case TNN_OP_SWIGLU:
    case TNN_OP_SWIGLU_BACK:
    case TNN_OP_FILL: return tnn__cu_elementwise(t);
    case TNN_OP_SOFTMAX:
    case TNN_OP_SOFTMAX_BACK:
    case TNN_OP_RMS_NORM:
    case TNN_OP_RMS_NORM_BACK:
    case TNN_OP_RMS_NORM_GAIN:
    case TNN_OP_LAYER_NORM:
    case TNN_OP_LAYER_NORM_BACK:
    case TNN_OP_CROSS_ENTROPY:
    case TNN_OP_CROSS_ENTROPY_BACK: return tnn__cu_rows(t);
    case TNN_OP_TRANSPOSE:
    case TNN_OP_RESHAPE:
    case TNN_OP_EXPAND:
    case TNN_OP_PERMUTE:
    case TNN_OP_CONCAT:
    case TNN_OP_NARROW: return tnn__cu_shape(t);
    case TNN_OP_VIEW: return TNN_OK; /* its data is its source's */
    case TNN_OP_SUM:
    case TNN_OP_MEAN:
    case TNN_OP_REDUCE_TO: return tnn__cu_reduce(t);
    case TNN_OP_GET_ROWS:
    case TNN_OP_GET_ROWS_BACK: return tnn__cu_embed(t);
    case TNN_OP_MATMUL: return tnn__cu_matmul(t);
    case TNN_OP_ROPE:
    case TNN_OP_ATTENTION:
    case TNN_OP_ATTENTION_BACK:
    case TNN_OP_KV_WRITE:
    case TNN_OP_ATTENTION_CACHED: return tnn__cu_attention(t);
    default:
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "op %s (node #%d) has no CUDA kernel",
                       tnn__ops[t->op].name, t->id);
    }
}

/* A plan's CUDA graph: the second compute of a realized plan records its
 * launches (the first runs them directly and sizes the scratch), every
 * later one replays the recording in one launch, which spares a decoding
 * step hundreds of kernel launches. A plan whose capture fails (or with
 * TNN_CUDA_GRAPHS=0) runs node by node. Kernel arguments are fixed once
 * realized: positions and the like are read on the device. */
typedef struct {
    cudaGraphExec_t exec;
    unsigned scratch_gen; /* the scratch the recording uses */
    int runs;
    bool eager;
    bool fuse;             /* TNN_CUDA_FUSE, when the plan first ran */
    tnn_step_result *step; /* pinned: what the optimizer step found */
    tnn_cu_fault *fault;   /* pinned: the faults of this session's kernels */
} cu_plan;

/* While a session's kernels are launched (or recorded into its graph), the
 * fault record they get is the session's own, so that a session's compute
 * reports its own faults even when sessions on other threads share the
 * stream; the process-wide record is back once the scope ends. */
struct fault_scope {
    tnn_cu_fault *saved;
    explicit fault_scope(tnn_cu_fault *f) : saved(tnn__cu.fault) {
        if (f) tnn__cu.fault = f;
    }
    ~fault_scope() { tnn__cu.fault = saved; }
};

/* TNN_CUDA_PROFILE=1: plans run node by node, each waited for and timed
 * (launch + run + the wait), and the totals per op go to stderr at exit. */
#define PROF_SHAPES 32
typedef struct {
    int64_t M, K, N, batch;
    int flags;
    long count;
    double seconds;
} prof_shape;
static struct {
    double seconds[TNN_OP_COUNT], copy_s[2];
    long count[TNN_OP_COUNT], copies[2];
    prof_shape mm[PROF_SHAPES]; /* products by shape, the first PROF_SHAPES shapes */
    int n_mm;
} prof;

/* A product node's time under its shape (M x K x N, transposes, batch). */
static void prof_matmul(const tnn_tensor *t, double sec) {
    const tnn_tensor *a = t->src[0];
    int flags = (int)t->iparam[0];
    int64_t M = t->shape[t->ndim - 2], N = t->shape[t->ndim - 1];
    int64_t K = a->shape[a->ndim - ((flags & TNN_MM_TA) ? 2 : 1)], batch = t->nelem / (M * N);
    for (int i = 0; i < prof.n_mm; i++) {
        prof_shape *e = &prof.mm[i];
        if (e->M == M && e->K == K && e->N == N && e->batch == batch && e->flags == flags) {
            e->count++;
            e->seconds += sec;
            return;
        }
    }
    if (prof.n_mm < PROF_SHAPES) prof.mm[prof.n_mm++] = (prof_shape){M, K, N, batch, flags, 1, sec};
}

static void prof_copy(int dir, double t0) {
    if (!profiling()) return;
    prof.copy_s[dir] += now_s() - t0;
    prof.copies[dir]++;
}

static void prof_report(void) {
    double total = 0.0;
    for (int i = 0; i < TNN_OP_COUNT; i++) total += prof.seconds[i];
    fprintf(stderr, "tinynn CUDA profile: %.3f s in nodes (a fused kernel counts as its first "
                    "node)\n", total);
    for (int d = 0; d < 2; d++)
        fprintf(stderr, "  %-22s %8ld copies %9.3f ms %8.2f us each\n", d ? "downloads" : "uploads",
                prof.copies[d], prof.copy_s[d] * 1e3,
                prof.copies[d] ? prof.copy_s[d] / prof.copies[d] * 1e6 : 0.0);
    for (int i = 0; i < TNN_OP_COUNT; i++)
        if (prof.count[i])
            fprintf(stderr, "  %-22s %8ld nodes %10.3f ms %8.2f us each\n", tnn__ops[i].name,
                    prof.count[i], prof.seconds[i] * 1e3, prof.seconds[i] / prof.count[i] * 1e6);
    for (int i = 0; i < prof.n_mm; i++) {
        const prof_shape *e = &prof.mm[i];
        fprintf(stderr,
                "  product %lldx%lldx%lld %s%s batch %lld: %ld nodes %9.3f ms, %.0f GFLOP/s\n",
                (long long)e->M, (long long)e->K, (long long)e->N,
                (e->flags & TNN_MM_TA) ? "T" : "N", (e->flags & TNN_MM_TB) ? "T" : "N",
                (long long)e->batch, e->count, e->seconds * 1e3,
                2.0 * e->M * e->K * e->N * e->batch * e->count / e->seconds * 1e-9);
    }
}

static bool profiling(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("TNN_CUDA_PROFILE");
        on = e && *e && strcmp(e, "0");
        if (on) atexit(prof_report);
    }
    return on;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* TNN_CUDA_FUSE=0: every node its own kernel (no epilogues folded into the
 * decoding products, no gradient sums into the products before them); read
 * when a plan first runs. */
static bool fusing(void) {
    const char *e = getenv("TNN_CUDA_FUSE");
    return !(e && !strcmp(e, "0"));
}

static int run_nodes(tnn_session *s, bool fuse) {
    bool prof_on = profiling();
    for (int32_t i = 0; i < s->n_plan; i++) {
        if (s->part && !s->part[i]) continue; /* tnn_compute_to: not needed */
        double t0 = prof_on ? now_s() : 0.0;
        tnn_tensor *t = s->plan[i];
        /* nodes a kernel can take on run inside it */
        int rc = fuse ? tnn__cu_run_fused(s->plan, s->n_plan, i) : 0;
        if (rc > 0)
            i += rc - 1;
        else if (rc == 0)
            rc = cu_run(t);
        if (rc < 0) return rc;
        if (prof_on) {
            cudaStreamSynchronize(tnn__cu.stream);
            double sec = now_s() - t0;
            prof.seconds[t->op] += sec;
            prof.count[t->op]++;
            if (t->op == TNN_OP_MATMUL) prof_matmul(t, sec);
        }
    }
    return TNN_OK;
}

static void cu_release(tnn_session *s) {
    cu_lock held;
    cu_plan *g = (cu_plan *)s->bstate;
    if (!g) return;
    if (g->exec) cudaGraphExecDestroy(g->exec);
    if (g->step) cudaFreeHost(g->step);
    if (g->fault) cudaFreeHost(g->fault);
    free(g);
    s->bstate = NULL;
}

static int cu_run_plan(tnn_session *s) {
    cu_lock held;
    cu_plan *g = (cu_plan *)s->bstate;
    if (!g) {
        g = (cu_plan *)calloc(1, sizeof *g);
        if (!g) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        const char *e = getenv("TNN_CUDA_GRAPHS");
        g->eager = (e && !strcmp(e, "0")) || profiling();
        g->fuse = fusing();
        cudaError_t e2 = cudaMallocHost((void **)&g->fault, sizeof *g->fault);
        if (e2 != cudaSuccess) {
            free(g);
            cudaGetLastError();
            return tnn__cu_status(e2, "tnn_compute");
        }
        memset(g->fault, 0, sizeof *g->fault);
        s->bstate = g;
    }
    fault_scope own(g->fault);
    /* part of the plan (tnn_compute_to): node by node, nothing fused (a
     * fused group could hold a node the part does not need), not recorded */
    if (s->part) return run_nodes(s, false);
    cudaStream_t st = tnn__cu.stream;
    if (g->exec && g->scratch_gen == tnn__cu.scratch_gen)
        return tnn__cu_status(cudaGraphLaunch(g->exec, st), "tnn_compute");
    if (g->exec) { /* the scratch moved: record again */
        cudaGraphExecDestroy(g->exec);
        g->exec = NULL;
    }
    if (g->eager || g->runs++ == 0) return run_nodes(s, g->fuse);
    unsigned gen = tnn__cu.scratch_gen;
    cudaGraph_t graph = NULL;
    int rc = TNN_ERR_DEVICE;
    if (cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
        rc = run_nodes(s, g->fuse);
        if (cudaStreamEndCapture(st, &graph) != cudaSuccess) rc = TNN_ERR_DEVICE;
    }
    if (rc == TNN_OK && gen == tnn__cu.scratch_gen &&
        cudaGraphInstantiate(&g->exec, graph, 0) == cudaSuccess) {
        cudaGraphDestroy(graph);
        g->scratch_gen = gen;
        return tnn__cu_status(cudaGraphLaunch(g->exec, st), "tnn_compute");
    }
    /* not recordable: this plan runs node by node from now on */
    if (graph) cudaGraphDestroy(graph);
    g->exec = NULL;
    g->eager = true;
    cudaGetLastError();
    tnn__log(TNN_LOG_DEBUG, "CUDA backend: the plan could not be recorded as a graph");
    return run_nodes(s, g->fuse);
}

static bool cu_supports(const tnn_tensor *t) { return t->op > TNN_OP_NONE && t->op < TNN_OP_COUNT; }

/* Waits for the queued nodes; a fault one of the session's kernels recorded
 * (or one launched outside any plan) becomes the status, and the record is
 * cleared for the next compute. */
static int cu_finish(tnn_session *s) {
    cu_lock held;
    int rc = tnn__cu_status(synced(), "tnn_compute");
    if (rc) return rc;
    cu_plan *g = (cu_plan *)s->bstate;
    tnn_cu_fault *rec = g && g->fault && g->fault->code ? g->fault : tnn__cu.fault;
    tnn_cu_fault f = *rec;
    if (!f.code) return TNN_OK;
    memset(rec, 0, sizeof f);
    switch (f.code) {
    case CU_FAULT_INDEX:
        return tnn__error(TNN_ERR_RANGE, "tnn_compute",
                          "idx[%lld] = %lld is outside [0, %lld) (node #%d)", f.a, f.b, f.c,
                          f.node);
    case CU_FAULT_TARGET:
        return tnn__error(TNN_ERR_RANGE, "tnn_compute",
                          "targets[%lld] = %lld is outside [0, %lld) (node #%d)", f.a, f.b, f.c,
                          f.node);
    case CU_FAULT_KV:
        return tnn__error(TNN_ERR_RANGE, "tnn_kv_write",
                          "rows %lld .. %lld do not fit a cache of %lld positions (node #%d)",
                          f.a, f.b, f.c, f.node);
    default:
        return tnn__error(TNN_ERR_RANGE, "tnn_attention_cached",
                          "positions %lld .. %lld do not fit a cache of %lld (node #%d)", f.a,
                          f.b, f.c, f.node);
    }
}

/* The optimizer step, queued behind the plan (run_plan made the session's
 * cu_plan); a session keeps its own result block, so sessions on other
 * threads sharing the stream do not read each other's. */
static int cu_step(tnn_session *s, const tnn_step *st) {
    cu_lock held;
    cu_plan *g = (cu_plan *)s->bstate;
    if (!g) return TNN_ERR(TNN_ERR_STATE, "the optimizer step needs a realized plan");
    if (!g->step) {
        cudaError_t e = cudaMallocHost((void **)&g->step, sizeof *g->step);
        if (e != cudaSuccess) {
            g->step = NULL;
            cudaGetLastError();
            return tnn__cu_status(e, "optimizer");
        }
    }
    memset(g->step, 0, sizeof *g->step);
    fault_scope own(g->fault); /* the step skips on this session's faults */
    return tnn__cu_step(st, g->step);
}

static int cu_step_result(tnn_session *s, tnn_step_result *r) {
    cu_lock held;
    cu_plan *g = (cu_plan *)s->bstate;
    if (!g || !g->step) return TNN_ERR(TNN_ERR_STATE, "no optimizer step was queued");
    *r = *g->step;
    return TNN_OK;
}

static const tnn_backend cuda_backend = {
    .name = "cuda",
    .alloc = cu_alloc,
    .free = cu_free,
    .copy_in = cu_copy_in,
    .copy_out = cu_copy_out,
    .supports = cu_supports,
    .run = cu_run,
    .host_memory = false,
    .fuse_next = true,
    .finish = cu_finish,
    .step = cu_step,
    .step_result = cu_step_result,
    .run_plan = cu_run_plan,
    .release = cu_release,
};

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */
/* ------------------------------------------------------------------------ */

static pthread_once_t open_once = PTHREAD_ONCE_INIT;
static const tnn_backend *opened;

static void open_backend(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1) {
        tnn__log(TNN_LOG_INFO, "CUDA backend: no usable GPU (%s)",
                 e != cudaSuccess ? cudaGetErrorString(e) : "no device");
        cudaGetLastError();
        return;
    }
    cudaDeviceProp prop;
    if (cudaSetDevice(0) != cudaSuccess || cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaStreamCreateWithFlags(&tnn__cu.stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaMallocHost((void **)&tnn__cu.fault, sizeof *tnn__cu.fault) != cudaSuccess ||
        cudaMalloc((void **)&tnn__cu.counters, CU_COUNTERS * sizeof(int)) != cudaSuccess ||
        cudaMemset(tnn__cu.counters, 0, CU_COUNTERS * sizeof(int)) != cudaSuccess) {
        tnn__log(TNN_LOG_WARN, "CUDA backend: device setup failed (%s)",
                 cudaGetErrorString(cudaGetLastError()));
        return;
    }
    memset(tnn__cu.fault, 0, sizeof *tnn__cu.fault);
    tnn__cu.sm_count = prop.multiProcessorCount;
    tnn__cu.cc_major = prop.major;
    const char *pdl = getenv("TNN_CUDA_PDL");
    tnn__cu.pdl = prop.major >= 9 && !(pdl && !strcmp(pdl, "0"));
    if (!blas_open() || blas.create(&tnn__cu.blas) != 0 ||
        blas.set_stream(tnn__cu.blas, tnn__cu.stream) != 0) {
        tnn__cu.blas = NULL;
        tnn__log(TNN_LOG_WARN, "CUDA backend: no cuBLAS; products use tinynn's own GEMM kernel");
    } else if (blas.set_workspace) {
        /* products recorded into a CUDA graph cannot allocate: give cuBLAS
         * its workspace up front (32 MiB, NVIDIA's figure for Hopper) */
        void *ws = NULL;
        size_t wsz = (size_t)32 << 20;
        if (cudaMalloc(&ws, wsz) == cudaSuccess && blas.set_workspace(tnn__cu.blas, ws, wsz) != 0) {
            cudaFree(ws);
            tnn__log(TNN_LOG_DEBUG, "CUDA backend: cuBLAS refused a workspace");
        }
        cudaGetLastError();
    }
    tnn__log(TNN_LOG_INFO, "CUDA backend: %s (sm_%d%d, %d SMs, %.1f GiB%s)%s", prop.name,
             prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1 << 30), tnn__cu.pdl ? ", overlapped launches" : "",
             TNN_CUDA_EMULATED ? " [emulated]" : "");
    opened = &cuda_backend;
}

extern "C" const tnn_backend *tnn__cuda_backend(void) {
    pthread_once(&open_once, open_backend);
    return opened;
}

#if TNN_CUDA_EMULATED
/* Test hooks of the emulator build (tests/test_cuda.c, TNN_TEST_EMU). */
extern "C" void tnn__cu_emu_counts(long *launches, long *d2h, long *graphs) {
    *launches = tnn_emu_launch_count();
    *d2h = tnn_emu_copy_count(cudaMemcpyDeviceToHost);
    *graphs = tnn_emu_graph_launch_count();
}
extern "C" void tnn__cu_emu_mem_limit(size_t bytes) { tnn_emu_set_mem_limit(bytes); }
#endif
