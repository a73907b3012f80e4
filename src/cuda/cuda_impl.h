/* cuda_impl.h - what the CUDA backend's sources share: the process-wide
 * device state, error conversion, launch shapes and block reductions.
 * Included only by the .cu files of src/cuda (C++: nvcc or the emulator).
 */
#ifndef TNN_CUDA_IMPL_H
#define TNN_CUDA_IMPL_H

#include "cuda_compat.h"

extern "C" {
#include "../core/internal.h"
#include "../quant/qdecode.h"
}

#include <math.h>
#include <stdint.h>

#include <utility>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

/* A bad value a kernel found (an index out of range): the first one wins
 * and tnn_compute reports it once the queued work is done. It lives in
 * pinned host memory, which kernels write directly. */
typedef struct tnn_cu_fault {
    int code; /* 0: none; else the kind below */
    int node;
    long long a, b, c;
} tnn_cu_fault;
enum { CU_FAULT_INDEX = 1, CU_FAULT_TARGET = 2, CU_FAULT_KV = 3, CU_FAULT_CACHE = 4 };

typedef struct tnn_cu_state {
    cudaStream_t stream;
    void *blas;           /* cublasHandle_t */
    tnn_cu_fault *fault;  /* pinned */
    void *scratch;        /* device scratch, grown on demand, stream-ordered */
    size_t scratch_size;
    unsigned scratch_gen; /* bumped when the scratch moves (graphs hold its address) */
    int sm_count;
    int cc_major;         /* compute capability */
    int *counters;        /* CU_COUNTERS ints, 0 between kernels (attention.cu) */
    int pdl;              /* launches through TNN_LAUNCH_PDL overlap (see there) */
} tnn_cu_state;
#define CU_COUNTERS 4096

extern tnn_cu_state tnn__cu;

/* Programmatic dependent launch (Hopper and later; TNN_CUDA_PDL=0 turns it
 * off): a kernel launched with TNN_LAUNCH_PDL may start while the kernel
 * before it on the stream still runs, so that it can read what no kernel of
 * this compute writes (weights, RoPE angles, older KV cache rows, the
 * positions uploaded before the compute) while its predecessor finishes.
 * Such a kernel must call cu_pdl_wait() before it reads anything an earlier
 * kernel wrote and before it writes anything, and then cu_pdl_next(), which
 * lets the kernel after it start the same way; since every kernel passes its
 * wait before that, all work two launches back has finished when a kernel
 * starts. Elsewhere (an older GPU, the emulator, a plain launch) the two
 * calls do nothing and the launch is an ordinary one. */
#if defined(__CUDACC__)
template <class... P, class... A>
static inline void tnn_cu_launch_pdl(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                                     cudaStream_t stream, int pdl, A &&...a) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    cudaLaunchKernelEx(&cfg, k, std::forward<A>(a)...);
}
#define TNN_LAUNCH_PDL(k, grid, block, smem, stream, ...)                                     \
    tnn_cu_launch_pdl(k, dim3(grid), dim3(block), (size_t)(smem), (stream), tnn__cu.pdl,      \
                      __VA_ARGS__)
#else
#define TNN_LAUNCH_PDL TNN_LAUNCH
#endif
__device__ __forceinline__ void cu_pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaGridDependencySynchronize();
#endif
}
__device__ __forceinline__ void cu_pdl_next(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cudaTriggerProgrammaticLaunchCompletion();
#endif
}

/* Whether a kernel may read t before cu_pdl_wait(): a leaf (uploaded data,
 * written by no node) that is not a parameter (an update changes those).
 * Not for KV caches, which KV_WRITE nodes fill in place. NULL: nothing to
 * read, so yes. */
static inline bool cu_settled(const tnn_tensor *t) {
    return !t || (t->op == TNN_OP_NONE && !(t->flags & TNN_FLAG_PARAM));
}

/* TNN_OK, or the CUDA error as a status with a message naming `what`. */
int tnn__cu_status(cudaError_t e, const char *what);
/* The status of the launches just queued (cudaGetLastError). */
int tnn__cu_launched(const char *what);
/* Device scratch of at least `bytes`; NULL (error set) when out of memory.
 * Valid until the next call; work queued before a growth has finished. */
void *tnn__cu_scratch(size_t bytes);
/* Host memory to the device in stream order: small copies through pinned
 * staging without waiting (the source is free at once), larger ones waited
 * for. The caller holds the backend's lock. */
int tnn__cu_upload(void *dst, const void *src, size_t n);

/* f32 GEMM, row-major: C (M x N) = op(A) @ op(B), batched with element
 * strides (0 broadcasts an operand). lda/ldb are the stored row lengths. */
int tnn__cu_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                 int64_t sa, const float *B, int64_t ldb, int64_t sb, float *C, int64_t sc,
                 int64_t batch);
/* The same as C = alpha op(A) @ op(B) + beta C with C's row length ldc (beta
 * 0: C is only written). */
int tnn__cu_gemm_ab(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                    const float *A, int64_t lda, int64_t sa, const float *B, int64_t ldb,
                    int64_t sb, float beta, float *C, int64_t ldc, int64_t sc, int64_t batch);

/* C = op(A) @ op(B) + beta C with bf16 operands on the tensor cores (f32
 * accumulation and result, C's rows N long); TNN_ERR_UNSUPPORTED (no
 * message) where cuBLAS is missing or has no such product, for the caller to
 * widen to f32 instead. */
int tnn__cu_gemm_bf16(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const uint16_t *A,
                      int64_t lda, int64_t sa, const uint16_t *B, int64_t ldb, int64_t sb,
                      float beta, float *C, int64_t sc, int64_t batch);
/* Whether tnn__cu_gemm_bf16 can run (checked before preparing its operands). */
bool tnn__cu_bf16_gemm_ok(void);

/* Whether TNN_CUDA_TF32=1 asked for the f32 products on the tensor cores
 * with TF32 inputs. */
bool tnn__cu_tf32(void);

/* Causal training attention on the tensor cores (flash.cu): whether it
 * takes this head size, GPU, grid (B x H blocks a column) and these
 * operands (16-byte aligned; NULLs skipped), and the run: forward (dout
 * NULL: O into out, and each row's log-sum-exp into lse unless NULL) or
 * backward (dq, then dk and dv, each N rows, into out; lse and o, the forward's
 * output, when that forward ran here and kept lse, else both NULL and the
 * forward runs again). tf32: one TF32 pass, else 3xTF32. */
bool tnn__cu_flash_ok(const float *const *ptrs, int n, int64_t hd, int64_t H, int64_t Hkv,
                      int64_t B);
int tnn__cu_flash(const float *q, const float *k, const float *v, const float *dout, float *out,
                  float *lse, const float *o, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                  int64_t hd, float scale, bool tf32);

/* Rows of the GGML-typed matrix w (rows 0..rows-1, or those idx names) as
 * f32 into out (rows x w->shape[1]); a bad index is a fault of `node`. */
int tnn__cu_dequantize(const tnn_tensor *w, const int32_t *idx, int64_t rows, float *out,
                       int node);

/* The op families (kernels.cu, attention.cu): each launches its kernels for
 * node t on the backend's stream and returns the launch status. */
int tnn__cu_elementwise(tnn_tensor *t);
int tnn__cu_rows(tnn_tensor *t);
int tnn__cu_shape(tnn_tensor *t);
int tnn__cu_reduce(tnn_tensor *t);
int tnn__cu_embed(tnn_tensor *t);
int tnn__cu_matmul(tnn_tensor *t);
/* Runs plan[i] together with the nodes after it that its kernel can take
 * on: element-wise nodes that only finish a decoding product's result, a KV
 * cache write of that or of a RoPE result, the other products of the same
 * x (q, k, v), a gated feed-forward pair, the RMS norm before such
 * products, a RoPE node before attention over the cache. Returns how many
 * nodes it ran (0: none, nothing launched; the caller runs plan[i] alone),
 * or a negative status. */
int tnn__cu_run_fused(tnn_tensor **plan, int32_t np, int32_t i);
/* RoPE node t folded into nx, the only reader of its result (attention.cu):
 * a KV cache write (t writes its rows straight into the cache) or attention
 * over the cache (which rotates q itself). 1 when it did, 0 when nx is
 * neither (nothing launched), or a negative status. */
int tnn__cu_rope_fused(tnn_tensor *t, tnn_tensor *nx);
int tnn__cu_attention(tnn_tensor *t);
/* Queues an optimizer step over every parameter (kernels.cu); the decision
 * it took lands in res, pinned host memory, once the stream gets there. */
int tnn__cu_step(const tnn_step *st, tnn_step_result *res);

/* ------------------------------------------------------------------------ */
/* Device helpers                                                           */
/* ------------------------------------------------------------------------ */

#define CU_THREADS 256
/* Grid-stride loops make results independent of the grid; the emulator
 * runs a few blocks so tests stay fast and still cross block edges. */
#define CU_MAX_BLOCKS (TNN_CUDA_EMULATED ? 3 : 65535)

static inline unsigned cu_blocks(int64_t n, int per = CU_THREADS) {
    int64_t b = (n + per - 1) / per;
    if (b < 1) b = 1;
    return (unsigned)(b < CU_MAX_BLOCKS ? b : CU_MAX_BLOCKS);
}

#define CU_FOR(i, n)                                                                          \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                 \
         i += (int64_t)gridDim.x * blockDim.x)

template <typename T> __device__ __forceinline__ T cu_warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
template <typename T> __device__ __forceinline__ T cu_warp_max(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32), the same value in every
 * thread: warp sums, then the warps' sums in ascending order. `sh` is
 * 32 elements of shared memory. */
template <typename T> __device__ T cu_block_sum(T v, T *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = sh[0];
    for (int i = 1; i < nw; i++) r += sh[i];
    return r;
}
template <typename T> __device__ T cu_block_max(T v, T *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cu_warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    T r = sh[0];
    for (int i = 1; i < nw; i++) r = sh[i] > r ? sh[i] : r;
    return r;
}

__device__ __forceinline__ void cu_fault(tnn_cu_fault *f, int code, int node, long long a,
                                         long long b, long long c) {
    if (atomicCAS(&f->code, 0, code) == 0) {
        f->node = node;
        f->a = a;
        f->b = b;
        f->c = c;
    }
}

/* Shapes right-aligned to 4 dimensions, passed to kernels by value. */
typedef struct {
    int64_t d[4];
} cu_dims;

static inline cu_dims cu_shape4(const tnn_tensor *t) {
    cu_dims s;
    int pad = 4 - t->ndim;
    for (int i = 0; i < 4; i++) s.d[i] = i < pad ? 1 : t->shape[i - pad];
    return s;
}

/* f16 bits to float: the hardware conversion on a GPU (exact, as
 * tnn__h2f is). */
#ifdef __CUDACC__
__device__ __forceinline__ float cu_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
#else
static inline float cu_h2f(uint16_t h) { return tnn__h2f(h); }
#endif

#define CF(t) ((const float *)(t)->data)
#define FP(t) ((float *)(t)->data)

/* A RoPE node's parameters, as a kernel reads them. */
typedef struct {
    const int32_t *pos;     /* per row, or NULL: row % seq_len */
    const float *factors;   /* per pair, or NULL */
    int64_t n_head, hd, seq_len;
    int mode;               /* 0: pairs (2i, 2i+1); 1: (i, i + hd/2) */
    double base, sign;
} cu_rope;

static inline cu_rope rope_params(const tnn_tensor *t) {
    cu_rope r = {t->src[1] ? (const int32_t *)t->src[1]->data : (const int32_t *)NULL,
                 t->src[2] ? CF(t->src[2]) : (const float *)NULL, t->iparam[0],
                 t->shape[1] / t->iparam[0], t->iparam[1], (int)t->iparam[2], t->fparam[0],
                 t->fparam[1]};
    return r;
}

/* The rotation of pair i of row r: its cosine and sine (the angle in
 * double as on the CPU). One sincos: one argument reduction where cos and
 * sin take one each, the same values (CUDA's three share their reduction
 * and polynomials; glibc's likewise). The frequency keeps pow: exp2 of the
 * exponent times log2(base) is cheaper but not the same bits. */
__device__ __forceinline__ void cu_rope_angle(const cu_rope &c, int64_t r, int64_t i, float *cs,
                                              float *sn) {
    double p = c.pos ? (double)c.pos[r] : (double)(r % c.seq_len);
    double th = p * pow(c.base, -2.0 * (double)i / (double)c.hd), s, co;
    if (c.factors) th /= (double)c.factors[i];
    sincos(th, &s, &co);
    *cs = (float)co;
    *sn = (float)(c.sign * s);
}

/* Whether a kernel may read c's positions and factors before cu_pdl_wait(). */
static inline bool rope_settled(const tnn_tensor *t) {
    return cu_settled(t->src[1]) && cu_settled(t->src[2]);
}

#endif
