/* tinynn.h - the one public header of tinynn, a small neural-network runtime
 * with a flat C ABI made to be called through FFI.
 *
 * Conventions that hold for every function below:
 *
 *  - Row-major, NumPy order: a tensor of shape (rows, cols) keeps element
 *    (r, c) at flat index r*cols + c; the last dimension is contiguous.
 *    The one exception is the seed's tnn_matmul (see there).
 *  - Handles are opaque pointers. A session owns every tensor made in it;
 *    tnn_session_free releases them all. Free functions accept NULL.
 *  - No function exits, aborts or prints on bad input. Functions that return
 *    int return TNN_OK (0) or a negative tnn_status; functions that return a
 *    pointer return NULL on failure. Either way tnn_last_error() then gives a
 *    message naming the function, the argument and the shapes. Functions that
 *    return void (kept void for ABI compatibility with the seed module) also
 *    leave their error in tnn_last_error()/tnn_last_status().
 *  - Threads: a session is used by one thread at a time. Different sessions
 *    may be used from different threads at once. The error message is kept
 *    per thread. Computation runs on one process-wide thread pool, created on
 *    first use; results are bit-identical for any thread count.
 *  - Ownership: every array passed in is read during the call only and never
 *    kept (it is copied); every array passed out is written during the call
 *    only. Returned strings are owned by the library.
 */
#ifndef TINYNN_H
#define TINYNN_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(TNN_BUILD_SHARED)
#define TNN_API __declspec(dllexport)
#elif defined(_WIN32) && defined(TNN_SHARED)
#define TNN_API __declspec(dllimport)
#elif defined(__GNUC__) && defined(TNN_BUILD_SHARED)
#define TNN_API __attribute__((visibility("default")))
#else
#define TNN_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define TNN_VERSION_MAJOR 0
#define TNN_VERSION_MINOR 1
#define TNN_VERSION_PATCH 0
#define TNN_VERSION_NUMBER \
    (TNN_VERSION_MAJOR * 10000 + TNN_VERSION_MINOR * 100 + TNN_VERSION_PATCH)

/* "MAJOR.MINOR.PATCH" of the library actually loaded. */
TNN_API const char *tnn_version(void);
/* MAJOR*10000 + MINOR*100 + PATCH of the library actually loaded. */
TNN_API int tnn_version_number(void);

/* ------------------------------------------------------------------------ */
/* Status codes, errors and logging                                         */
/* ------------------------------------------------------------------------ */

/* Values are fixed and append-only. */
typedef enum tnn_status {
    TNN_OK = 0,
    TNN_ERR_ARG = -1,         /* NULL handle, bad value, unknown enum value */
    TNN_ERR_SHAPE = -2,       /* shapes that do not fit together */
    TNN_ERR_RANGE = -3,       /* index out of range (at build or compute) */
    TNN_ERR_STATE = -4,       /* wrong call order (e.g. compute before realize) */
    TNN_ERR_NOMEM = -5,       /* allocation failed */
    TNN_ERR_OVERFLOW = -6,    /* a size product or offset overflows */
    TNN_ERR_UNSUPPORTED = -7, /* valid request this build cannot do */
    TNN_ERR_IO = -8,          /* file could not be read or written */
    TNN_ERR_FORMAT = -9,      /* malformed file or data */
    TNN_ERR_INTERNAL = -10,   /* a bug in tinynn: please report it */
    TNN_ERR_DEVICE = -11      /* the GPU or its runtime failed (the message has its error) */
} tnn_status;

/* Static name of a status ("TNN_ERR_SHAPE"); "unknown" for other values. */
TNN_API const char *tnn_status_name(int status);
/* Message of the last failure on the calling thread ("" if none). The
 * pointer stays valid until the next tinynn call on this thread. */
TNN_API const char *tnn_last_error(void);
/* Status of the last failure on the calling thread (TNN_OK if none). */
TNN_API int tnn_last_status(void);
/* Forget the last failure on the calling thread. */
TNN_API void tnn_clear_error(void);

typedef enum tnn_log_level {
    TNN_LOG_DEBUG = 0,
    TNN_LOG_INFO = 1,
    TNN_LOG_WARN = 2,
    TNN_LOG_ERROR = 3,
    TNN_LOG_NONE = 4
} tnn_log_level;

/* Receives every log line at or above the log level. `msg` has no trailing
 * newline and is valid during the call only. May be called from any thread
 * that calls into tinynn. */
typedef void (*tnn_log_fn)(int level, const char *msg, void *user);
/* Install a log callback (process-wide); NULL restores the default, which
 * writes "tinynn: LEVEL: msg" to stderr. */
TNN_API void tnn_set_log_callback(tnn_log_fn fn, void *user);
/* Minimum level that reaches the callback (default TNN_LOG_WARN, or the
 * environment variable TNN_LOG=debug|info|warn|error|none). */
TNN_API void tnn_set_log_level(int level);
TNN_API int tnn_get_log_level(void);

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

/* Number of threads of the process-wide pool. n >= 1; n = 0 means "the
 * default": the environment variable TNN_THREADS if set, else the number of
 * online CPUs. Returns TNN_OK or TNN_ERR_ARG. Must not be called while
 * another thread is inside tnn_compute. Results do not depend on it. */
TNN_API int tnn_set_num_threads(int n);
TNN_API int tnn_get_num_threads(void);

/* ------------------------------------------------------------------------ */
/* Sessions and tensors                                                     */
/* ------------------------------------------------------------------------ */

typedef struct tnn_session tnn_session;
typedef struct tnn_tensor tnn_tensor;

/* Element types. Values are fixed and append-only. F16 and BF16 are storage
 * types (see tnn_tensor_new); GGML types are borrowed model weights. */
typedef enum tnn_dtype {
    TNN_F32 = 0,
    TNN_I32 = 1,
    TNN_F16 = 2,
    TNN_BF16 = 3,
    TNN_GGML = 4, /* a GGUF tensor of any GGML type, borrowed from a file:
                     see tnn_tensor_from_gguf and tnn_tensor_ggml_type */
    TNN_DTYPE_COUNT
} tnn_dtype;

#define TNN_MAX_DIMS 4

/* A new session. prefer_cuda = 0: CPU. prefer_cuda = 1: the CUDA backend
 * when it is built in and a device is present, else the CPU (the reason is
 * logged at TNN_LOG_INFO; this never fails). Returns NULL only when memory
 * runs out. On a CUDA session tensors live on the GPU, every op, the
 * backward graph and the optimizer run there, transfers are copies to and
 * from the device, and tnn_compute returns once the GPU is done (a bad index
 * a kernel found is its TNN_ERR_RANGE; GPU failures are TNN_ERR_DEVICE or
 * TNN_ERR_NOMEM). Results agree with the CPU's to rounding, not bit for
 * bit. Environment: TNN_CUDA_GRAPHS=0 (no CUDA graphs), TNN_CUDA_FUSE=0 (no
 * node folded into the kernel of the node before it: decoding epilogues,
 * gradient sums added by the product before them), TNN_CUDA_GEMM=own
 * (tinynn's GEMM kernel instead of cuBLAS), TNN_CUBLAS=path (the cuBLAS
 * library to open), TNN_CUDA_PROFILE=1 (time each node, report at exit),
 * TNN_CUDA_PDL=0 (no overlapped launches of the decoding kernels on Hopper),
 * TNN_CUDA_ATTN=rows|gemm (training attention by the warp-per-row kernels,
 * or by cuBLAS products of the score matrices, instead of the tensor-core
 * kernels that take head sizes 32 and 64 on sm_80 and later; for other
 * head sizes the default is cuBLAS from sequence length 128;
 * TNN_CUDA_ATTN_BLOCKS=N, 1-16, query row blocks of those products),
 * TNN_CUDA_FLASH_LSE=0 (the tensor-core attention backward runs the forward
 * again for each row's log-sum-exp instead of reading what the forward
 * kept: the same result, for comparison),
 * TNN_CUDA_TF32=1 (f32 products, attention's included, on the tensor cores
 * with TF32 inputs, 10-bit mantissas: faster, about 1e-3 relative error).
 * On the CPU, TNN_CPU_FUSE=0 runs an element-wise node after a product as a
 * pass of its own instead of on each block of the product's output (the
 * same bits either way). */
TNN_API tnn_session *tnn_session_new(int prefer_cuda);
/* Frees the session and every tensor made in it. NULL is a no-op. Using a
 * freed session or its tensors afterwards is refused without touching freed
 * memory (until the allocator hands the same addresses to a new session's
 * tensors, which then look like that session's own). */
TNN_API void tnn_session_free(tnn_session *s);
/* Name of the backend the session runs on: "cpu" or "cuda". */
TNN_API const char *tnn_session_backend(const tnn_session *s);
/* Bytes of the arena that the last tnn_realize planned for the graph's
 * non-leaf tensors (intermediates share it; see tnn_realize). 0 before. */
TNN_API size_t tnn_session_arena_bytes(const tnn_session *s);

/* A leaf tensor of `ndim` (1..4) dimensions, row-major, filled with zeros at
 * realize. Its storage is allocated by tnn_realize and kept across later
 * realizes of the same session. dtype TNN_F32, TNN_I32, TNN_F16 or TNN_BF16
 * (the 16-bit types are storage: KV caches, tnn_reshape, f32 transfers;
 * arithmetic ops want f32 and refuse them, except that the products take a
 * bf16 tensor as their weights operand, see tnn_matmul_nn). */
TNN_API tnn_tensor *tnn_tensor_new(tnn_session *s, int dtype, int ndim,
                                   const int64_t *shape);
/* Seed ABI: a rows x cols f32 tensor (element (r,c) at r*cols + c). */
TNN_API tnn_tensor *tnn_input_2d_f32(tnn_session *s, int rows, int cols);
/* Seed ABI: an f32 vector of n elements. */
TNN_API tnn_tensor *tnn_input_1d_f32(tnn_session *s, int n);
/* Seed ABI: an int32 vector of n elements (row indices). */
TNN_API tnn_tensor *tnn_input_1d_i32(tnn_session *s, int n);

/* Accessors; on a bad handle they return -1 / NULL and set the error. */
TNN_API int tnn_tensor_ndim(const tnn_tensor *t);
TNN_API int64_t tnn_tensor_dim(const tnn_tensor *t, int axis); /* axis < 0 counts from the end */
TNN_API int64_t tnn_tensor_nelements(const tnn_tensor *t);
TNN_API int tnn_tensor_dtype(const tnn_tensor *t);
/* The GGML type id (tnn_ggml_type) of a TNN_GGML or F32 tensor made by
 * tnn_tensor_from_gguf; -1 for other tensors. */
TNN_API int tnn_tensor_ggml_type(const tnn_tensor *t);
/* Name for error messages and debugging (copied, at most 31 bytes kept). */
TNN_API int tnn_tensor_set_name(tnn_tensor *t, const char *name);
TNN_API const char *tnn_tensor_name(const tnn_tensor *t);

/* ------------------------------------------------------------------------ */
/* Ops. Each records a node and returns its result tensor; nothing runs     */
/* until tnn_compute. NULL (with an error) when arguments do not fit.       */
/* Element-wise ops take f32 tensors of 1 to 4 dimensions.                  */
/* ------------------------------------------------------------------------ */

/* Seed ABI, ggml's mul_mat: a is (m, k), b is (n, k) (same k = cols). The
 * result holds sum_k a[i][k]*b[j][k] at flat index j*m + i; as a row-major
 * tensor it is (n, m), i.e. b @ a^T. For NumPy-order products use the
 * tnn_matmul_nn/nt/tn family below. a may be bf16 weights (it is the
 * second operand of tnn_matmul_nt(b, a)). */
TNN_API tnn_tensor *tnn_matmul(tnn_session *s, tnn_tensor *a, tnn_tensor *b);

/* NumPy-order products, batched over the leading dimensions (up to 2 batch
 * dimensions; a batch dimension of 1 broadcasts):
 *   nn: a (..., M, K) @ b (..., K, N)    -> (..., M, N)
 *   nt: a (..., M, K) @ b (..., N, K)^T  -> (..., M, N)
 *   tn: a (..., K, M)^T @ b (..., K, N)  -> (..., M, N)
 * Backward: for C = A@B, dA = dC @ B^T (nt) and dB = A^T @ dC (tn).
 * a is f32; b is f32, or bf16 weights (a TNN_BF16 tensor: f32 result, f32
 * accumulation), and then a may be bf16 too (activations already rounded,
 * e.g. by tnn_to_bf16: widened exactly on the CPU, read as they are by the
 * GPU's tensor cores). Where the CPU has AMX-BF16 a bf16 b runs on the AMX
 * tiles (TNN_KERNEL=amx), and where its vdpbf16ps is the faster path (AMD's
 * AVX512_BF16 CPUs; TNN_KERNEL=avx512bf16 asks for it on any that has it)
 * through that instruction: both round a to bf16 first (relative error about
 * 2^-9 per product; see docs/PERFORMANCE.md). Elsewhere b is widened to f32
 * and the result is bit for bit the f32 product with the widened weights.
 * TNN_KERNEL=avx512 (or lower) forces the widening path. A bf16 b gets a
 * gradient only when it is tnn_to_bf16 of an f32 tensor (which passes it
 * on); an f32 a's gradient works either way. A bf16 a likewise needs
 * tnn_to_bf16 for its gradient, and with it tnn_matmul_tn has none for b
 * (TNN_ERR_UNSUPPORTED from tnn_backward). With both a and b bf16 the
 * gradient products are bf16 too: dC is rounded to bf16 once and both take
 * it (f32 results, f32 accumulation). A 2-D GGML-typed b (quantized
 * weights, tnn_tensor_from_gguf) is taken by nt, and by nn (nt's gradient
 * for a), with a 2-D f32 a. */
TNN_API tnn_tensor *tnn_matmul_nn(tnn_session *s, tnn_tensor *a, tnn_tensor *b);
TNN_API tnn_tensor *tnn_matmul_nt(tnn_session *s, tnn_tensor *a, tnn_tensor *b);
TNN_API tnn_tensor *tnn_matmul_tn(tnn_session *s, tnn_tensor *a, tnn_tensor *b);

/* a + b, a - b, a * b (element-wise). Shapes broadcast as in NumPy
 * (right-aligned; a dimension of 1 repeats). */
TNN_API tnn_tensor *tnn_add(tnn_session *s, tnn_tensor *a, tnn_tensor *b);
TNN_API tnn_tensor *tnn_sub(tnn_session *s, tnn_tensor *a, tnn_tensor *b);
TNN_API tnn_tensor *tnn_mul(tnn_session *s, tnn_tensor *a, tnn_tensor *b);
/* a * k, computed as a * (float)k. */
TNN_API tnn_tensor *tnn_scale(tnn_session *s, tnn_tensor *a, double k);
/* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
TNN_API tnn_tensor *tnn_gelu(tnn_session *s, tnn_tensor *a);
/* x * sigmoid(x) */
TNN_API tnn_tensor *tnn_silu(tnn_session *s, tnn_tensor *a);
/* silu(gate) * up (same shapes, f32): the gated unit of a llama-style
 * feed-forward block, one pass (and two backward nodes instead of three,
 * with no silu(gate) kept for the backward); the same values as
 * tnn_mul(tnn_silu(gate), up). */
TNN_API tnn_tensor *tnn_swiglu(tnn_session *s, tnn_tensor *gate, tnn_tensor *up);
/* a (f32) rounded to bf16 (nearest even, as a bf16 upload rounds): a TNN_BF16
 * tensor for the bf16 products (tnn_matmul_nn/nt/tn's b). Its gradient
 * passes through unchanged (straight through), so a product with
 * tnn_to_bf16(w) of an f32 parameter w trains w: mixed precision, bf16
 * products and f32 master weights (the trainer's --bf16). */
TNN_API tnn_tensor *tnn_to_bf16(tnn_session *s, tnn_tensor *a);
/* Softmax of each row (over the last dimension), max-subtracted. */
TNN_API tnn_tensor *tnn_softmax(tnn_session *s, tnn_tensor *a);
/* Swaps the last two dimensions: (..., r, c) -> (..., c, r), contiguous. */
TNN_API tnn_tensor *tnn_transpose(tnn_session *s, tnn_tensor *a);
/* Each row: x / sqrt(mean(x^2) + eps) * gamma. gamma has `cols` elements
 * (shape (cols) or (1, cols)) and broadcasts over rows; NULL means no gain.
 * eps >= 0; with eps = 0 an all-zero row gives NaN (as the formula says). */
TNN_API tnn_tensor *tnn_rms_norm(tnn_session *s, tnn_tensor *x, tnn_tensor *gamma,
                                 double eps);
/* out[i] = table[idx[i]]: table (V, d) f32, idx int32 (n) -> (n, d). An index
 * outside [0, V) makes tnn_compute fail with TNN_ERR_RANGE. */
TNN_API tnn_tensor *tnn_get_rows(tnn_session *s, tnn_tensor *table, tnn_tensor *idx);

/* Backward ops (seed ABI; mind the argument orders). */
/* Scatter-add: zeros shaped like `shape` (V, d), then out[idx[i]] += d_out[i].
 * Only the shape of `shape` is used (any dtype). */
TNN_API tnn_tensor *tnn_get_rows_back(tnn_session *s, tnn_tensor *d_out,
                                      tnn_tensor *idx, tnn_tensor *shape);
/* GRADIENT FIRST: dx of plain RMSNorm (no gamma) at input x, given dy. */
TNN_API tnn_tensor *tnn_rms_norm_back(tnn_session *s, tnn_tensor *dy, tnn_tensor *x,
                                      double eps);
/* GRADIENT FIRST: y is the softmax output; dx = y * (dy - sum(dy*y)) per row. */
TNN_API tnn_tensor *tnn_softmax_back(tnn_session *s, tnn_tensor *dy, tnn_tensor *y);
/* FORWARD INPUT FIRST: dx = dy * s(x) * (1 + x (1 - s(x))), s = sigmoid. */
TNN_API tnn_tensor *tnn_silu_back(tnn_session *s, tnn_tensor *x, tnn_tensor *dy);
/* FORWARD INPUT FIRST: dx = dy * gelu'(x) (tanh form). */
TNN_API tnn_tensor *tnn_gelu_back(tnn_session *s, tnn_tensor *x, tnn_tensor *dy);

/* Transformer ops. A batch of B sequences of T positions is N = B*T rows,
 * row r = b*T + t (position t = r % seq_len). */
/* Rotary position embedding of x (N, n_head*hd), hd even: each pair
 * (x0, x1) of a head at position t is rotated by t * base^(-2i/hd), i the
 * pair index. mode 0: pairs (2i, 2i+1) (GGUF llama); mode 1: pairs
 * (i, i + hd/2) (NeoX, Hugging Face rotate_half). */
TNN_API tnn_tensor *tnn_rope(tnn_session *s, tnn_tensor *x, int n_head, int seq_len,
                             double base, int mode);
/* RoPE at given positions: x (N, n_head*hd), positions an int32 (N) tensor
 * read at compute time (so one graph serves every decoding step), and
 * optional per-pair frequency divisors freq_factors (hd/2) f32 (NULL: none;
 * Llama 3's rope_freqs): pair i of a row at position p turns by
 * p * base^(-2i/hd) / freq_factors[i]. */
TNN_API tnn_tensor *tnn_rope_ext(tnn_session *s, tnn_tensor *x, int n_head,
                                 tnn_tensor *positions, double base, int mode,
                                 tnn_tensor *freq_factors);
/* KV cache: writes the n rows of x (n, W) into rows pos .. pos+n-1 of the
 * leaf `cache` (ctx, W), pos read from the int32 (1) tensor `pos` at compute
 * time; the result is the cache itself (same storage), to feed
 * tnn_attention_cached after the write. The cache is f32, or f16 (rows
 * rounded to nearest even: half the memory and bandwidth, as llama.cpp
 * keeps its cache). pos + n > ctx fails the compute with TNN_ERR_RANGE. */
TNN_API tnn_tensor *tnn_kv_write(tnn_session *s, tnn_tensor *cache, tnn_tensor *x,
                                 tnn_tensor *pos);
/* Causal attention of one sequence against a KV cache: q (n, n_head*hd)
 * holds the queries at positions pos .. pos+n-1 (pos an int32 (1) tensor
 * read at compute time); kcache and vcache (ctx, n_kv_head*hd), both f32 or
 * both f16, hold keys and values at positions 0 .. pos+n-1. Returns f32
 * (n, n_head*hd). Decoding takes keys in chunks of 64 merged in a fixed
 * order; prompts of 64 rows or more go through GEMMs by blocks of rows. The
 * bits never depend on the thread count. */
TNN_API tnn_tensor *tnn_attention_cached(tnn_session *s, tnn_tensor *q, tnn_tensor *kcache,
                                         tnn_tensor *vcache, int n_head, int n_kv_head,
                                         tnn_tensor *pos);
/* Fused causal self-attention with grouped-query heads: q (N, n_head*hd),
 * k and v (N, n_kv_head*hd), n_head a multiple of n_kv_head (query head h
 * reads kv head h / (n_head/n_kv_head)). Each query at position t attends to
 * the keys at positions <= t of its own sequence, softmax(q k^T / sqrt(hd)) v.
 * Returns (N, n_head*hd). Memory is linear in seq_len: no T x T matrix is
 * kept; the backward pass recomputes the scores. */
TNN_API tnn_tensor *tnn_attention(tnn_session *s, tnn_tensor *q, tnn_tensor *k, tnn_tensor *v,
                                  int n_head, int n_kv_head, int seq_len);

/* Reductions and shape ops. */
/* Sum / mean of all elements -> a (1) tensor. */
TNN_API tnn_tensor *tnn_sum(tnn_session *s, tnn_tensor *a);
TNN_API tnn_tensor *tnn_mean(tnn_session *s, tnn_tensor *a);
/* The same elements in a new shape of the same element count. */
TNN_API tnn_tensor *tnn_reshape(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape);
/* Axes reordered: result dimension i is a's dimension axes[i] (a copy). */
TNN_API tnn_tensor *tnn_permute(tnn_session *s, tnn_tensor *a, const int *axes);
/* a and b joined along `axis` (negative counts from the end); the other
 * dimensions must match. */
TNN_API tnn_tensor *tnn_concat(tnn_session *s, tnn_tensor *a, tnn_tensor *b, int axis);
/* The part [start, start + len) of a along `axis` (a copy). */
TNN_API tnn_tensor *tnn_narrow(tnn_session *s, tnn_tensor *a, int axis, int64_t start,
                               int64_t len);
/* Each row: (x - mean) / sqrt(var + eps) * gamma + beta (biased variance);
 * gamma and beta have `cols` elements, either may be NULL. */
TNN_API tnn_tensor *tnn_layer_norm(tnn_session *s, tnn_tensor *x, tnn_tensor *gamma,
                                   tnn_tensor *beta, double eps);
/* Fused softmax cross-entropy: logits (N, V) f32, targets (N) int32.
 * Returns a (1) tensor: the mean over rows whose target is not
 * `ignore_index` of logsumexp(logits[r]) - logits[r][target[r]] (0 when
 * every row is ignored). A target outside [0, V) (other than ignore_index)
 * makes tnn_compute fail with TNN_ERR_RANGE. */
TNN_API tnn_tensor *tnn_cross_entropy(tnn_session *s, tnn_tensor *logits, tnn_tensor *targets,
                                      int ignore_index);
/* The same over the first n_classes columns of each row (1 <= n_classes <=
 * V): the columns after them are padding, outside the softmax, and their
 * gradient is 0. For logits whose rows are rounded up to an aligned width
 * (a vocabulary of 50257 as 50304 rows: the GPU's products run faster on
 * aligned rows); a target at or past n_classes is a TNN_ERR_RANGE. */
TNN_API tnn_tensor *tnn_cross_entropy_padded(tnn_session *s, tnn_tensor *logits,
                                             tnn_tensor *targets, int ignore_index,
                                             int64_t n_classes);

/* ------------------------------------------------------------------------ */
/* Graph control                                                            */
/* ------------------------------------------------------------------------ */

/* Fixes the graph that ends in `result` (and in every tensor marked with
 * tnn_set_output), orders it, and allocates what it needs: every leaf of
 * the session gets its own zeroed storage (kept from then on, across later
 * realizes); intermediates share one planned arena (a
 * buffer is reused once its last reader has run). `result` and the marked
 * outputs keep their values after compute; other intermediates cannot be
 * downloaded. Call before any upload. May be called again after more ops
 * were added (or with another result): leaves keep their values, the
 * earlier result is no longer computed unless it was marked. */
TNN_API int tnn_realize(tnn_session *s, tnn_tensor *result);
/* Runs the realized graph, then the optimizer step if one is set.
 * TNN_ERR_STATE before tnn_realize. On a compute
 * error (e.g. an index out of range) the outputs are unspecified and the
 * session stays usable. */
TNN_API int tnn_compute(tnn_session *s);
/* Runs only the nodes of the realized graph that t depends on, and no
 * optimizer step: t is the realized result or a tensor marked with
 * tnn_set_output (a loss, logits, a gradient). On a training session,
 * tnn_compute_to(s, loss) is the forward pass alone (a validation loss
 * without a second copy of the weights, parameters and optimizer state
 * untouched), and tnn_compute_to(s, tnn_grad(s, p)) gives gradients
 * without a step. The values of tensors t does not depend on are
 * unspecified afterwards. TNN_ERR_ARG for a tensor whose value is not kept,
 * TNN_ERR_STATE before tnn_realize. */
TNN_API int tnn_compute_to(tnn_session *s, tnn_tensor *t);
/* Keep this tensor's value after compute (it is not reused as a buffer). */
TNN_API void tnn_set_output(tnn_tensor *t);
/* Mark a trainable parameter (a leaf). */
TNN_API void tnn_set_param(tnn_tensor *t);

/* ------------------------------------------------------------------------ */
/* Automatic differentiation and optimizers                                 */
/* ------------------------------------------------------------------------ */

/* Adds the backward graph of `loss` (an f32 tensor of one element): every
 * tensor marked with tnn_set_param that the loss depends on gets a
 * gradient node (tnn_grad), summed over every path. Gradients are
 * recomputed by each tnn_compute (there is nothing to zero). Call once per
 * session, after building the forward graph and before tnn_realize (it
 * drops an earlier realize). A parameter the loss does not depend on gets
 * a zero gradient. An op without a gradient rule on a parameter's path is
 * TNN_ERR_UNSUPPORTED. */
TNN_API int tnn_backward(tnn_session *s, tnn_tensor *loss);
/* The gradient of a parameter (same shape), readable after tnn_compute. */
TNN_API tnn_tensor *tnn_grad(tnn_session *s, tnn_tensor *param);

/* Optimizers run at the end of every tnn_compute, after the graph, on every
 * parameter with a gradient; parameters and moments stay in the session.
 * Call after tnn_backward; a second call replaces the optimizer (and its
 * state). A step whose loss or gradient norm is not finite is skipped with
 * a warning (tnn_optimizer_skipped counts them).
 *   AdamW (as torch.optim.AdamW): p *= 1 - lr*wd; m = b1 m + (1-b1) g;
 *     v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
 *   SGD (as torch.optim.SGD): d = g + wd p; with momentum mu > 0,
 *     buf = d on the first step, else mu buf + d, and d = buf; p -= lr d */
TNN_API int tnn_optimizer_adamw(tnn_session *s, double lr, double beta1, double beta2,
                                double eps, double weight_decay);
TNN_API int tnn_optimizer_sgd(tnn_session *s, double lr, double momentum, double weight_decay);
/* Learning rate for the following steps (for schedules). */
TNN_API int tnn_set_lr(tnn_session *s, double lr);
/* Scale gradients so their global L2 norm is at most max_norm (0 = off),
 * as torch.nn.utils.clip_grad_norm_. */
TNN_API int tnn_set_grad_clip(tnn_session *s, double max_norm);
/* Exclude a parameter from weight decay (norm gains, biases). */
TNN_API void tnn_set_no_decay(tnn_tensor *t);
/* Steps taken, steps skipped (-1 without an optimizer), and the global
 * gradient norm of the last compute, before clipping (NaN without one). */
TNN_API int64_t tnn_optimizer_steps(tnn_session *s);
TNN_API int64_t tnn_optimizer_skipped(tnn_session *s);
TNN_API double tnn_grad_norm(tnn_session *s);
/* Optimizer state, for checkpoints: the first (which = 0: AdamW m, SGD
 * momentum) or second (which = 1: AdamW v) moment of a parameter, n =
 * its element count; and the step count (which sets the bias correction). */
TNN_API int tnn_optimizer_get_state(tnn_session *s, tnn_tensor *param, int which, float *dst,
                                    size_t n);
TNN_API int tnn_optimizer_set_state(tnn_session *s, tnn_tensor *param, int which,
                                    const float *src, size_t n);
TNN_API int tnn_optimizer_set_steps(tnn_session *s, int64_t steps);

/* ------------------------------------------------------------------------ */
/* Moving data                                                              */
/* ------------------------------------------------------------------------ */

/* The session's host scratch: slots, each one f32 or one int32. It has no
 * fixed size: it grows to the highest slot written. A slot never written
 * reads as 0. Errors (negative index, no memory) are reported through
 * tnn_last_error(); tnn_scratch_get then returns 0. */
TNN_API void tnn_scratch_set(tnn_session *s, int i, double v);      /* slot i = (float)v */
TNN_API double tnn_scratch_get(tnn_session *s, int i);              /* slot i as f32, widened */
TNN_API void tnn_scratch_set_i32(tnn_session *s, int i, int v);
TNN_API int tnn_scratch_get_i32(tnn_session *s, int i);
/* Copy nelements(t) slots, from slot 0, into t (as f32 or int32 by the
 * tensor's type). Refused (TNN_ERR_RANGE) when fewer slots were written. */
TNN_API int tnn_upload(tnn_session *s, tnn_tensor *t);
/* Copy t into slots 0 .. nelements(t)-1 (the scratch grows as needed). */
TNN_API int tnn_download(tnn_session *s, tnn_tensor *t);

/* Direct transfers, no scratch. n must equal nelements(t). The float ones
 * take f32 tensors, and f16 / bf16 ones (values narrowed to f32, then
 * rounded to nearest even; widened exactly on the way back); downloads also
 * take int32 tensors. */
TNN_API int tnn_upload_from_float_array(tnn_session *s, tnn_tensor *t,
                                        const double *src, size_t n);
/* int32 tensor from int64 values; a value outside int32 is an error. */
TNN_API int tnn_upload_from_int_array(tnn_session *s, tnn_tensor *t,
                                      const int64_t *src, size_t n);
/* src is row-major nrows x ncols; t (ncols x nrows elements) gets src^T. */
TNN_API int tnn_upload_transposed_f64(tnn_session *s, tnn_tensor *t, const double *src,
                                      int nrows, int ncols);
TNN_API int tnn_download_to_f64_array(tnn_session *s, tnn_tensor *t, double *dst,
                                      size_t n);
/* t holds cols x rows elements (e.g. a tnn_matmul result, flat [j*rows+i]);
 * dst (row-major rows x cols) gets its transpose: dst[i*cols+j] = t[j*rows+i].
 * This is the seed module's download_matmul in one call. */
TNN_API int tnn_download_transposed_f64(tnn_session *s, tnn_tensor *t, double *dst,
                                        int rows, int cols);
/* f32 transfers. n must equal nelements(t); t must be f32, or f16 / bf16
 * (converted: rounded to nearest even on upload, widened exactly on
 * download). A GGML-typed tensor (tnn_tensor_from_gguf) downloads
 * dequantized (the values its products compute with); it takes no upload. */
TNN_API int tnn_upload_f32(tnn_session *s, tnn_tensor *t, const float *src, size_t n);
TNN_API int tnn_download_f32(tnn_session *s, tnn_tensor *t, float *dst, size_t n);
/* int32 transfers. n must equal nelements(t); t must be i32. */
TNN_API int tnn_upload_i32(tnn_session *s, tnn_tensor *t, const int32_t *src, size_t n);
TNN_API int tnn_download_i32(tnn_session *s, tnn_tensor *t, int32_t *dst, size_t n);

/* ------------------------------------------------------------------------ */
/* Host-side kernels on the scratch (seed ABI)                              */
/* ------------------------------------------------------------------------ */

/* Reads x from slots [0,n) and dh from [n,2n); writes dx = dh * gelu'(x)
 * (tanh form) into [2n,3n). Refused if fewer than 2n slots were written. */
TNN_API void tnn_gelu_back_scratch(tnn_session *s, int n);
/* Slots [0,n) param, [n,2n) grad, [2n,3n) m, [3n,4n) v, updated in place:
 *   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g;
 *   param -= lr * (m/omc1) / (sqrt(v/omc2) + eps)
 * omc1 = 1 - b1^t, omc2 = 1 - b2^t. Refused if fewer than 4n slots. */
TNN_API void tnn_adam_step_scratch(tnn_session *s, int n, double lr, double b1, double b2,
                                   double eps, double omc1, double omc2);

/* ------------------------------------------------------------------------ */
/* The seed module's methods as one-call functions on caller-owned          */
/* row-major f64 matrices. Each converts to f32, runs the same kernels as   */
/* the graph ops, and writes the widened result into `out` (which must not  */
/* overlap the inputs unless stated). They give exactly the numbers the     */
/* module's call sequences give through the ABI above. Index arrays are     */
/* int64 (the FFI hosts' integer arrays). Return TNN_OK or a tnn_status.   */
/* ------------------------------------------------------------------------ */

/* out (ar x bc) = a (ar x ac) @ b (br x bc); ac == br. */
TNN_API int tnn_mat_matmul(const double *a, int ar, int ac, const double *b, int br, int bc,
                           double *out);
/* out (ar x br) = a (ar x ac) @ b (br x bc)^T; ac == bc. */
TNN_API int tnn_mat_matmul_t(const double *a, int ar, int ac, const double *b, int br,
                             int bc, double *out);
/* out (ac x bc) = a (ar x ac)^T @ b (br x bc); ar == br. */
TNN_API int tnn_mat_t_matmul(const double *a, int ar, int ac, const double *b, int br,
                             int bc, double *out);
/* Element-wise on rows x cols matrices. */
TNN_API int tnn_mat_add(const double *a, const double *b, int rows, int cols, double *out);
TNN_API int tnn_mat_mul(const double *a, const double *b, int rows, int cols, double *out);
TNN_API int tnn_mat_scale(const double *a, int rows, int cols, double k, double *out);
TNN_API int tnn_mat_gelu(const double *a, int rows, int cols, double *out);
TNN_API int tnn_mat_silu(const double *a, int rows, int cols, double *out);
TNN_API int tnn_mat_softmax(const double *a, int rows, int cols, double *out);
/* out (cols x rows) = a^T. */
TNN_API int tnn_mat_transpose(const double *a, int rows, int cols, double *out);
/* gamma has `cols` values. */
TNN_API int tnn_mat_rms_norm(const double *x, int rows, int cols, const double *gamma,
                             double eps, double *out);
TNN_API int tnn_mat_gelu_back(const double *x, const double *dh, int rows, int cols,
                              double *out);
TNN_API int tnn_mat_silu_back(const double *x, const double *dy, int rows, int cols,
                              double *out);
TNN_API int tnn_mat_softmax_back(const double *y, const double *dy, int rows, int cols,
                                 double *out);
TNN_API int tnn_mat_rms_norm_back(const double *x, const double *dy, int rows, int cols,
                                  double eps, double *out);
/* out[i,v] = (softmax(logits)[i,v] - (i < n_pred && v == targets[i])) / n_pred
 * for logits (rows x cols); targets has n_pred values in [0, cols). */
TNN_API int tnn_mat_cross_entropy_grad(const double *logits, int rows, int cols,
                                       const int64_t *targets, int n_pred, double *out);
/* out (n_idx x cols) = table[indices]; table is (rows x cols). */
TNN_API int tnn_mat_embed_lookup(const double *table, int rows, int cols,
                                 const int64_t *indices, int n_idx, double *out);
/* out (vocab x cols) = zeros, then out[indices[i]] += d_out[i]; d_out is
 * (n_idx x cols). */
TNN_API int tnn_mat_embed_back(const double *d_out, int n_idx, int cols,
                               const int64_t *indices, int vocab, double *out);
/* In place on caller arrays of n = rows*cols values (same rule as
 * tnn_adam_step_scratch): param, m and v are updated. */
TNN_API int tnn_mat_adam_step(double *param, const double *grad, double *m, double *v,
                              int rows, int cols, double lr, double b1, double b2, double eps,
                              double omc1, double omc2);
/* out = param - lr * grad (out may equal param). */
TNN_API int tnn_mat_sgd_step(const double *param, const double *grad, int rows, int cols,
                             double lr, double *out);
/* out (hr x w2c) = gelu(h (hr x hc) @ w1 (hc x w1c)) @ w2 (w1c x w2c), as
 * one fused graph; the intermediate stays f32. */
TNN_API int tnn_mat_ffn_pipeline(const double *h, int hr, int hc, const double *w1, int w1c,
                                 const double *w2, int w2c, double *out);

/* ------------------------------------------------------------------------ */
/* GGUF files: a strict, zero-copy reader and an atomic writer              */
/* ------------------------------------------------------------------------ */

/* A parsed GGUF file (versions 2 and 3, little-endian). The file is
 * memory-mapped read-only and every count, length, type id, shape and data
 * range is checked before anything is trusted; a corrupt or truncated file
 * is refused with TNN_ERR_FORMAT and a message naming the byte offset and
 * the reason ("offset 24: string length 4096 exceeds the 17 bytes left").
 * A handle is read-only after open: it may be shared by threads.
 *
 * Strings: keys and tensor names are NUL-free (the reader refuses a NUL in
 * them); string values may hold any bytes, NUL included (the getters give
 * the length), and UTF-8 is not validated. Returned strings and data
 * pointers belong to the handle and stay valid until tnn_gguf_close.
 *
 * Errors of the getters: a NULL handle or argument gives TNN_ERR_ARG; a
 * missing key or tensor, or an index out of range, TNN_ERR_RANGE; a key
 * whose stored type is not the one asked for, TNN_ERR_FORMAT. The message
 * names the key and both types. */
typedef struct tnn_gguf tnn_gguf;
typedef struct tnn_gguf_writer tnn_gguf_writer;

/* Metadata value types, as stored in the file. Values fixed by the format. */
typedef enum tnn_gguf_value_type {
    TNN_GGUF_UINT8 = 0,
    TNN_GGUF_INT8 = 1,
    TNN_GGUF_UINT16 = 2,
    TNN_GGUF_INT16 = 3,
    TNN_GGUF_UINT32 = 4,
    TNN_GGUF_INT32 = 5,
    TNN_GGUF_FLOAT32 = 6,
    TNN_GGUF_BOOL = 7, /* one byte, 0 or 1 */
    TNN_GGUF_STRING = 8,
    TNN_GGUF_ARRAY = 9,
    TNN_GGUF_UINT64 = 10,
    TNN_GGUF_INT64 = 11,
    TNN_GGUF_FLOAT64 = 12,
    TNN_GGUF_VALUE_TYPE_COUNT
} tnn_gguf_value_type;

/* Tensor types: the GGML type ids of the format (gaps are retired ids, which
 * the reader refuses like any unknown id). A type stores blocks of
 * tnn_ggml_type_block() elements; the innermost dimension is a multiple of
 * the block. */
typedef enum tnn_ggml_type {
    TNN_GGML_F32 = 0,
    TNN_GGML_F16 = 1,
    TNN_GGML_Q4_0 = 2,
    TNN_GGML_Q4_1 = 3,
    TNN_GGML_Q5_0 = 6,
    TNN_GGML_Q5_1 = 7,
    TNN_GGML_Q8_0 = 8,
    TNN_GGML_Q8_1 = 9,
    TNN_GGML_Q2_K = 10,
    TNN_GGML_Q3_K = 11,
    TNN_GGML_Q4_K = 12,
    TNN_GGML_Q5_K = 13,
    TNN_GGML_Q6_K = 14,
    TNN_GGML_Q8_K = 15,
    TNN_GGML_IQ2_XXS = 16,
    TNN_GGML_IQ2_XS = 17,
    TNN_GGML_IQ3_XXS = 18,
    TNN_GGML_IQ1_S = 19,
    TNN_GGML_IQ4_NL = 20,
    TNN_GGML_IQ3_S = 21,
    TNN_GGML_IQ2_S = 22,
    TNN_GGML_IQ4_XS = 23,
    TNN_GGML_I8 = 24,
    TNN_GGML_I16 = 25,
    TNN_GGML_I32 = 26,
    TNN_GGML_I64 = 27,
    TNN_GGML_F64 = 28,
    TNN_GGML_IQ1_M = 29,
    TNN_GGML_BF16 = 30,
    TNN_GGML_TQ1_0 = 34,
    TNN_GGML_TQ2_0 = 35,
    TNN_GGML_MXFP4 = 39,
    TNN_GGML_NVFP4 = 40,
    TNN_GGML_Q1_0 = 41,
    TNN_GGML_TYPE_COUNT /* one past the largest id */
} tnn_ggml_type;

/* "Q4_K" for a known tensor type id, else "unknown". Static string. */
TNN_API const char *tnn_ggml_type_name(int type);
/* Elements per block and bytes per block of a tensor type (F32: 1 and 4;
 * Q4_0: 32 and 18). Either pointer may be NULL. TNN_ERR_ARG for an unknown
 * id. */
TNN_API int tnn_ggml_type_block(int type, int64_t *block_elems, int64_t *block_bytes);
/* "uint32", "string", ... for a metadata value type, else "unknown". */
TNN_API const char *tnn_gguf_value_type_name(int vtype);

/* Opens and checks a GGUF file, mapped read-only: tensor data pointers
 * point into the mapping (nothing is copied). NULL on failure: TNN_ERR_ARG
 * (NULL path), TNN_ERR_IO (cannot open or map; the message has the system's
 * reason), TNN_ERR_FORMAT (malformed; the message has the offset and the
 * reason), TNN_ERR_NOMEM. As with any mapping, the file must not be
 * truncated by another process while the handle is open. */
TNN_API tnn_gguf *tnn_gguf_open(const char *path);
/* Same checks on a file image in memory. The `len` bytes are COPIED (into a
 * page-aligned buffer), so `buf` may be freed once the call returns; data
 * pointers point into the handle's copy. NULL on failure as above. */
TNN_API tnn_gguf *tnn_gguf_open_memory(const void *buf, size_t len);
/* Unmaps / frees everything of the handle; every string and data pointer it
 * gave becomes invalid. NULL is a no-op. */
TNN_API void tnn_gguf_close(tnn_gguf *g);

/* Format version (2 or 3), or TNN_ERR_ARG for a NULL handle. */
TNN_API int tnn_gguf_version(const tnn_gguf *g);
/* The data alignment in bytes (general.alignment, default 32), and the file
 * offset where the data section starts; negative status on a NULL handle. */
TNN_API int64_t tnn_gguf_alignment(const tnn_gguf *g);
TNN_API int64_t tnn_gguf_data_offset(const tnn_gguf *g);

/* ---- metadata ---- */

/* Number of key/value pairs (>= 0), or a negative status. */
TNN_API int64_t tnn_gguf_n_kv(const tnn_gguf *g);
/* Key of pair i (0 <= i < n_kv), in file order; NULL if out of range. */
TNN_API const char *tnn_gguf_key(const tnn_gguf *g, int64_t i);
/* Index of `key`, or TNN_ERR_RANGE if the file has no such key. */
TNN_API int64_t tnn_gguf_find_key(const tnn_gguf *g, const char *key);
/* Value type (tnn_gguf_value_type, >= 0) of `key` / of pair i, or a
 * negative status (TNN_ERR_RANGE when missing). */
TNN_API int tnn_gguf_kv_type(const tnn_gguf *g, const char *key);
TNN_API int tnn_gguf_kv_type_at(const tnn_gguf *g, int64_t i);

/* Typed getters: TNN_OK and *out set, or a status (missing key:
 * TNN_ERR_RANGE; another stored type: TNN_ERR_FORMAT) with *out untouched.
 * The exact type is required, except where stated. */
TNN_API int tnn_gguf_get_u32(const tnn_gguf *g, const char *key, uint32_t *out);
TNN_API int tnn_gguf_get_i32(const tnn_gguf *g, const char *key, int32_t *out);
TNN_API int tnn_gguf_get_u64(const tnn_gguf *g, const char *key, uint64_t *out);
/* Any integer type (u8 .. i64), widened; a uint64 above INT64_MAX gives
 * TNN_ERR_RANGE. */
TNN_API int tnn_gguf_get_i64(const tnn_gguf *g, const char *key, int64_t *out);
TNN_API int tnn_gguf_get_f32(const tnn_gguf *g, const char *key, float *out);
/* float32 or float64, widened. */
TNN_API int tnn_gguf_get_f64(const tnn_gguf *g, const char *key, double *out);
/* *out = 0 or 1. */
TNN_API int tnn_gguf_get_bool(const tnn_gguf *g, const char *key, int *out);
/* *out: the NUL-terminated string (owned by the handle); *len (may be NULL)
 * its length in bytes, which is what counts if the value holds NULs. */
TNN_API int tnn_gguf_get_str(const tnn_gguf *g, const char *key, const char **out,
                             size_t *len);

/* Arrays. The element type (tnn_gguf_value_type) and the element count of
 * an array key; TNN_ERR_FORMAT if the key is not an array. */
TNN_API int tnn_gguf_arr_type(const tnn_gguf *g, const char *key);
TNN_API int64_t tnn_gguf_arr_len(const tnn_gguf *g, const char *key);
/* Element i of a string array (as tnn_gguf_get_str). */
TNN_API int tnn_gguf_get_arr_str(const tnn_gguf *g, const char *key, int64_t i,
                                 const char **out, size_t *len);
/* Element i of an array of any integer type or of bools, widened (a uint64
 * above INT64_MAX gives TNN_ERR_RANGE). */
TNN_API int tnn_gguf_get_arr_i64(const tnn_gguf *g, const char *key, int64_t i,
                                 int64_t *out);
/* Element i of a float32 or float64 array, widened. */
TNN_API int tnn_gguf_get_arr_f64(const tnn_gguf *g, const char *key, int64_t i,
                                 double *out);
/* The raw bytes of a numeric or bool array, as stored (little-endian,
 * packed, NOT necessarily aligned for the element type: read with memcpy).
 * *data points into the handle's buffer; *nbytes = count * element size.
 * TNN_ERR_FORMAT for string arrays and arrays of arrays. */
TNN_API int tnn_gguf_get_arr_data(const tnn_gguf *g, const char *key, const void **data,
                                  size_t *nbytes);

/* ---- tensors ---- */

/* Number of tensors (>= 0), or a negative status. */
TNN_API int64_t tnn_gguf_n_tensors(const tnn_gguf *g);
/* Index of the tensor `name`, or TNN_ERR_RANGE if there is none. */
TNN_API int64_t tnn_gguf_find_tensor(const tnn_gguf *g, const char *name);
/* For tensor i (0 <= i < n_tensors; else TNN_ERR_RANGE / NULL): */
TNN_API const char *tnn_gguf_tensor_name(const tnn_gguf *g, int64_t i);
TNN_API int tnn_gguf_tensor_type(const tnn_gguf *g, int64_t i); /* tnn_ggml_type */
TNN_API int tnn_gguf_tensor_ndim(const tnn_gguf *g, int64_t i); /* 1..4 */
/* GGUF order: ne[0] is the innermost (contiguous) dimension. Writes 4
 * values (unused ones = 1); returns ndim. */
TNN_API int tnn_gguf_tensor_dims(const tnn_gguf *g, int64_t i, int64_t ne[4]);
/* NumPy order (rows, cols): shape[ndim-1] = ne[0]. Writes ndim values;
 * returns ndim. */
TNN_API int tnn_gguf_tensor_shape(const tnn_gguf *g, int64_t i, int64_t shape[4]);
TNN_API int64_t tnn_gguf_tensor_nelements(const tnn_gguf *g, int64_t i);
TNN_API int64_t tnn_gguf_tensor_nbytes(const tnn_gguf *g, int64_t i);
/* Absolute offset of the tensor's data in the file. */
TNN_API int64_t tnn_gguf_tensor_offset(const tnn_gguf *g, int64_t i);
/* The tensor's bytes, as stored (read-only; owned by the handle). Aligned
 * to min(alignment, 4096) bytes. */
TNN_API const void *tnn_gguf_tensor_data(const tnn_gguf *g, int64_t i);

/* A read-only leaf of session s whose data is the GGUF tensor `name`,
 * borrowed (zero-copy): `g` must stay open while the session uses it.
 * F32 tensors become TNN_F32 tensors; every other GGML type a TNN_GGML
 * tensor, which tnn_matmul_nt and tnn_matmul_nn (as their second operand,
 * 2-D, with an f32 first operand: nn is nt's gradient for its first
 * operand) and tnn_get_rows (as the table) accept, and tnn_download_f32
 * dequantizes. Such a leaf is no parameter, but gradients flow through its
 * products to their other operand (LoRA on a quantized model). The shape is
 * NumPy order. NULL with TNN_ERR_RANGE when there is no such tensor,
 * TNN_ERR_UNSUPPORTED for a type without kernels. */
TNN_API tnn_tensor *tnn_tensor_from_gguf(tnn_session *s, const tnn_gguf *g, const char *name);

/* ---- writer ---- */

/* An empty GGUF (version 3) under construction; NULL if memory runs out.
 * Keys and tensors are written in the order added. Every add copies its
 * arguments (strings, arrays and tensor data), so they need not outlive
 * the call. Adds return TNN_OK, TNN_ERR_ARG (NULL or empty key/name, a key
 * over 65535 bytes or a tensor name over 63, a duplicate key or tensor
 * name, an unknown type), TNN_ERR_SHAPE (bad shape or byte count),
 * TNN_ERR_OVERFLOW or TNN_ERR_NOMEM. A failed add leaves the writer as it
 * was. */
TNN_API tnn_gguf_writer *tnn_gguf_writer_new(void);
/* Frees the writer and its copies. NULL is a no-op. */
TNN_API void tnn_gguf_writer_free(tnn_gguf_writer *w);

/* Scalar keys, one per value type. The key "general.alignment" sets the
 * data alignment; it must be added with tnn_gguf_writer_add_u32 and be a
 * non-zero power of two (else TNN_ERR_ARG). */
TNN_API int tnn_gguf_writer_add_u8(tnn_gguf_writer *w, const char *key, uint8_t v);
TNN_API int tnn_gguf_writer_add_i8(tnn_gguf_writer *w, const char *key, int8_t v);
TNN_API int tnn_gguf_writer_add_u16(tnn_gguf_writer *w, const char *key, uint16_t v);
TNN_API int tnn_gguf_writer_add_i16(tnn_gguf_writer *w, const char *key, int16_t v);
TNN_API int tnn_gguf_writer_add_u32(tnn_gguf_writer *w, const char *key, uint32_t v);
TNN_API int tnn_gguf_writer_add_i32(tnn_gguf_writer *w, const char *key, int32_t v);
TNN_API int tnn_gguf_writer_add_u64(tnn_gguf_writer *w, const char *key, uint64_t v);
TNN_API int tnn_gguf_writer_add_i64(tnn_gguf_writer *w, const char *key, int64_t v);
TNN_API int tnn_gguf_writer_add_f32(tnn_gguf_writer *w, const char *key, float v);
TNN_API int tnn_gguf_writer_add_f64(tnn_gguf_writer *w, const char *key, double v);
/* v must be 0 or 1. */
TNN_API int tnn_gguf_writer_add_bool(tnn_gguf_writer *w, const char *key, int v);
/* A NUL-terminated string value. */
TNN_API int tnn_gguf_writer_add_str(tnn_gguf_writer *w, const char *key, const char *v);
/* An array of n numbers or bools of `elem_type` (not STRING or ARRAY), read
 * from `data` in the host's native layout (bools as bytes 0/1). data may be
 * NULL when n = 0. */
TNN_API int tnn_gguf_writer_add_arr(tnn_gguf_writer *w, const char *key, int elem_type,
                                    const void *data, size_t n);
/* An array of n NUL-terminated strings. */
TNN_API int tnn_gguf_writer_add_arr_str(tnn_gguf_writer *w, const char *key,
                                        const char *const *strs, size_t n);
/* A tensor of GGML type `type` and `ndim` (1..4) dimensions given in NumPy
 * order (shape[ndim-1] contiguous; it becomes ne[0] in the file and must be a
 * multiple of the type's block). `data` holds exactly `nbytes` bytes, which
 * must equal the type's size for that shape; it is copied. */
TNN_API int tnn_gguf_writer_add_tensor(tnn_gguf_writer *w, const char *name, int type,
                                       int ndim, const int64_t *shape, const void *data,
                                       size_t nbytes);
/* Writes the file: to a temporary file next to `path`, fsync'd, then renamed
 * over `path` (atomic: readers see the old file or the whole new one). The
 * writer stays usable (write again, or add more). TNN_ERR_ARG, TNN_ERR_IO
 * (with the system's reason; the temporary file is removed), TNN_ERR_NOMEM. */
TNN_API int tnn_gguf_writer_write(tnn_gguf_writer *w, const char *path);

/* ------------------------------------------------------------------------ */
/* Language models: llama-family GGUF inference                             */
/* ------------------------------------------------------------------------ */

/* A GGUF language model (architectures `llama`: SmolLM2, TinyLlama, Llama
 * 3.x; `qwen2`: Qwen2.5) with its tokenizer and a KV cache: the weights stay
 * in the mapped file (quantized ones are used as they are), the cache is
 * allocated once, the decoding graph is built once. One thread at a time
 * per model; several models may run at once. */
typedef struct tnn_llm tnn_llm;

/* Flags of tnn_llm_open. */
enum {
    TNN_LLM_CUDA = 1,   /* run on the GPU (the CPU, logged, where there is none) */
    TNN_LLM_KV_F32 = 2, /* keep the cache in f32 (default f16, as llama.cpp) */
};

/* Opens a model. n_ctx: positions of the KV cache (0: the training context,
 * at most 4096). NULL with the reason (missing key or tensor, unsupported
 * architecture, tensor type or tokenizer) in tnn_last_error(). */
TNN_API tnn_llm *tnn_llm_open(const char *path, int32_t n_ctx, int32_t flags);
/* NULL is a no-op. */
TNN_API void tnn_llm_close(tnn_llm *m);
/* Applies a LoRA adapter file at run time, as llama.cpp's --lora does:
 * llama.cpp's layout (general.type "adapter", adapter.type "lora", the
 * model's architecture, tensors blk.N.attn_q.weight.lora_a (rank, in) and
 * .lora_b (out, rank) for any of a layer's q, k, v, output, gate, up and
 * down projections and for the output matrix (output.weight.lora_a), the
 * embeddings' token_embd.weight.lora_a (n_vocab, rank) and .lora_b
 * (n_embd, rank); f32, f16, bf16 or q8_0), as tnn_lora_export and
 * llama.cpp's convert_lora_to_gguf.py write it. Each adapted projection
 * adds scale * (alpha / rank) * (x A^T) B^T (scale alone where the file has
 * no adapter.lora.alpha), a token's embedding row scale * (alpha / rank) *
 * A[token] B^T (where the embeddings are the output matrix too, the output
 * stays as it was, as in PEFT); the quantized weights stay as they are. Empties
 * the cache (tnn_llm_pos becomes 0). One adapter per model: TNN_ERR_STATE
 * for a second; TNN_ERR_FORMAT for a file that is not an adapter for this
 * model (architecture, tensor names, shapes), which then leaves the model
 * as it was. */
TNN_API int tnn_llm_load_lora(tnn_llm *m, const char *adapter_path, float scale);

/* Sizes; negative status for a NULL model. */
TNN_API int32_t tnn_llm_n_vocab(const tnn_llm *m);
TNN_API int32_t tnn_llm_n_ctx(const tnn_llm *m);
TNN_API int32_t tnn_llm_n_embd(const tnn_llm *m);
TNN_API int32_t tnn_llm_n_layer(const tnn_llm *m);
/* "llama" or "qwen2"; NULL for a NULL model. */
TNN_API const char *tnn_llm_arch(const tnn_llm *m);
/* The model's file, for its metadata (tnn_gguf_get_*): owned by the model,
 * valid until tnn_llm_close. NULL for a NULL model. */
TNN_API const tnn_gguf *tnn_llm_gguf(const tnn_llm *m);

/* ---- the sequence: feed tokens, read the next token's logits ---- */

/* Tokens in the cache, the position of the next one (negative status for a
 * NULL model). */
TNN_API int32_t tnn_llm_pos(const tnn_llm *m);
/* Keeps the first pos tokens of the cache and forgets the rest (0: a new
 * sequence): a conversation that goes on, or a second answer to the same
 * prompt, feeds only what is new. TNN_ERR_RANGE unless 0 <= pos <=
 * tnn_llm_pos. */
TNN_API int tnn_llm_rewind(tnn_llm *m, int32_t pos);
/* Appends n >= 1 tokens (a whole prompt in one call runs as one batch) and
 * writes the logits of the token after the last one to logits[n_vocab]
 * (NULL: none wanted, as for a prompt fed in parts). TNN_ERR_RANGE for an id
 * outside the vocabulary or a full cache (nothing appended). */
TNN_API int tnn_llm_eval(tnn_llm *m, const int32_t *tokens, int32_t n, float *logits);

/* The same, with the logits after every token: logits[n][n_vocab], row i
 * the prediction after tokens[i] (for scoring a text). logits may not be
 * NULL. */
TNN_API int tnn_llm_eval_logits(tnn_llm *m, const int32_t *tokens, int32_t n, float *logits);

/* Perplexity of a text as llama.cpp's perplexity tool measures it: the text
 * tokenized (BOS as the model's flags say), cut into chunks of `chunk`
 * tokens (0: 512, at most the context), each chunk run on an empty cache
 * with its first token made BOS where the model adds one, and the second
 * half of each chunk scored (each token's negative log-likelihood given
 * all before it in the chunk). max_chunks: 0 for all. Writes exp(mean
 * NLL) to *ppl and the tokens scored to *n_scored (may be NULL).
 * TNN_ERR_RANGE when the text has fewer tokens than one chunk. */
TNN_API int tnn_llm_perplexity(tnn_llm *m, const char *text, size_t len, int32_t chunk,
                               int32_t max_chunks, double *ppl, int32_t *n_scored);

/* ---- the tokenizer ---- */

/* Flags of the tokenizer functions. */
enum {
    TNN_TOK_ADD_SPECIAL = 1,    /* tokenize: BOS (and EOS) as the model's flags say */
    TNN_TOK_PARSE_SPECIAL = 2,  /* tokenize: "<|im_start|>" and other control texts
                                 * become their tokens (else they are plain text) */
    TNN_TOK_RENDER_SPECIAL = 4, /* detokenize: control tokens give their text (else
                                 * nothing) */
};

/* Tokenizes len bytes of text (any bytes; invalid UTF-8 goes through byte
 * tokens). Returns how many tokens the text needs and writes the first
 * min(that, cap) to out, as snprintf: a result above cap means the buffer
 * was too small (out may be NULL with cap 0 to ask). Negative status on
 * error. */
TNN_API int32_t tnn_llm_tokenize(const tnn_llm *m, const char *text, size_t len,
                                 int32_t flags, int32_t *out, int32_t cap);
/* Decodes n ids to text (as llama.cpp's detokenizer: SPM's leading space
 * dropped, the clean-up of spaces the vocabulary asks for). Returns the
 * length and writes min(length, cap) bytes, plus a NUL when it fits.
 * TNN_ERR_RANGE for an id outside the vocabulary. */
TNN_API int64_t tnn_llm_detokenize(const tnn_llm *m, const int32_t *ids, size_t n,
                                   int32_t flags, char *out, size_t cap);
/* The bytes one token decodes to (flags: TNN_TOK_RENDER_SPECIAL), which may
 * be part of a UTF-8 character: join a stream's pieces before reading them
 * as text. Same return convention as tnn_llm_detokenize. */
TNN_API int32_t tnn_llm_token_piece(const tnn_llm *m, int32_t id, int32_t flags, char *out,
                                    int32_t cap);
/* The BOS / EOS ids, -1 when the vocabulary has none (negative status for a
 * NULL model). */
TNN_API int32_t tnn_llm_token_bos(const tnn_llm *m);
TNN_API int32_t tnn_llm_token_eos(const tnn_llm *m);
/* 1 if generation ends at id (EOS, end of turn: <|im_end|>, <|eot_id|>,
 * ...), 0 if not, negative status for a NULL model or an id outside the
 * vocabulary. */
TNN_API int tnn_llm_token_is_eog(const tnn_llm *m, int32_t id);

/* ---- chat ---- */

/* Writes a conversation of n >= 1 messages (roles "system", "user",
 * "assistant"; contents as NUL-terminated UTF-8) as the prompt text of the
 * model's chat template, then, when add_assistant, the start of the
 * answer. tmpl: NULL for the model's template (tokenizer.chat_template),
 * or a family name or template text. The families known: "chatml"
 * (SmolLM2, Qwen2.5; the default system message the template writes),
 * "llama3" (Llama 3.x), "zephyr" (TinyLlama-Chat), "llama2"; a template of
 * none of them is TNN_ERR_UNSUPPORTED, naming them. m may be NULL when tmpl
 * is given. The text leaves out the BOS that starts the conversation:
 * tokenize it with TNN_TOK_ADD_SPECIAL | TNN_TOK_PARSE_SPECIAL. Returns the
 * length, writing min(length, cap) bytes plus a NUL when it fits. */
TNN_API int64_t tnn_llm_chat_format(const tnn_llm *m, const char *tmpl,
                                    const char *const *roles, const char *const *contents,
                                    int32_t n, int32_t add_assistant, char *out, size_t cap);

/* ---- sampling ---- */

typedef struct tnn_sampler tnn_sampler;

/* A sampler: temperature (0: greedy, the lowest id on ties), top_k (0:
 * off), top_p (1: off), min_p (0: off), repeat_penalty (1: off; for the
 * ids passed as recent), and the seed of its random numbers: the same seed
 * and logits give the same tokens, at any thread count. NULL with
 * TNN_ERR_ARG for a value out of range. */
TNN_API tnn_sampler *tnn_sampler_new(double temperature, int32_t top_k, double top_p,
                                     double min_p, double repeat_penalty, uint64_t seed);
/* NULL is a no-op. */
TNN_API void tnn_sampler_free(tnn_sampler *s);
/* Picks a token from logits[n_vocab]; recent (n_recent ids, may be NULL
 * when 0) get the repetition penalty. Returns the id, or a negative
 * status. */
TNN_API int32_t tnn_sampler_sample(tnn_sampler *s, const float *logits, int32_t n_vocab,
                                   const int32_t *recent, int32_t n_recent);

/* ---- generation in one call ---- */

/* Receives generated text as it comes: whole UTF-8 characters only, len > 0.
 * Return 0 to go on, anything else to stop. */
typedef int (*tnn_llm_text_fn)(const char *text, size_t len, void *user);

/* Flags of tnn_llm_generate. */
enum {
    TNN_GEN_CHAT = 1,  /* prompt is one user message: format it with the model's
                        * chat template (tnn_llm_chat_format) */
    TNN_GEN_REUSE = 2, /* keep the tokens at the start of the cache that the
                        * prompt's tokens repeat, and compute only the rest: for a
                        * conversation passed whole each turn (the answers may
                        * differ in the last bits from a fresh run's, where the
                        * cached tokens were computed in another batch) */
};

/* Tokenizes the prompt (special texts parsed, BOS as the model's flags
 * say), runs it on an empty cache (or, with TNN_GEN_REUSE, from the first
 * token the cache does not already hold) as one batch, then samples up to
 * max_tokens tokens with s (NULL: greedy; its repetition penalty sees the
 * last 64 tokens, prompt included), stopping early at an end of
 * generation (not part of the text) or when on_text returns non-zero.
 * Generated text goes to on_text (may be NULL) as it is made, and all of it
 * to out: returns the text's length and writes min(length, cap) bytes plus
 * a NUL when it fits; out may be NULL with cap 0. The cache then holds the
 * prompt and the tokens sampled. Negative status on error (TNN_ERR_RANGE:
 * the prompt does not fit the context), with what was generated so far
 * delivered to on_text. Generation that fills the context stops there. */
TNN_API int64_t tnn_llm_generate(tnn_llm *m, tnn_sampler *s, const char *prompt,
                                 int32_t max_tokens, int32_t flags, tnn_llm_text_fn on_text,
                                 void *user, char *out, size_t cap);

/* Figures of the last tnn_llm_generate: prompt tokens computed (not those
 * TNN_GEN_REUSE found in the cache), tokens sampled (an end of generation
 * included) and the seconds each part took. Any pointer may be NULL. */
TNN_API int tnn_llm_last_stats(const tnn_llm *m, int32_t *n_prompt, int32_t *n_generated,
                               double *prompt_s, double *generate_s);

/* ------------------------------------------------------------------------ */
/* Training a language model from text                                      */
/* ------------------------------------------------------------------------ */

/* `tnn train` in a call: a llama-style transformer (RMSNorm, RoPE, SwiGLU,
 * grouped-query attention, tied embeddings) trained from scratch on text
 * files, tokens the files' bytes or a GGUF model's tokenizer's, or a llama
 * or qwen2 GGUF model fine-tuned ("init"); AdamW with warm-up and a cosine
 * schedule, validation on the last 10% of the text, and GGUF checkpoints:
 * a checkpoint made with a tokenizer is a model that tnn_llm_open runs. */
typedef struct tnn_trainer tnn_trainer;

/* A trainer with tnn train's defaults: 4 layers, dim 128, 4 heads (2 kv),
 * ff 352, seq 64, batch 16, 600 steps, warm-up 30, lr 3e-3, seed 1337. NULL
 * on no memory. */
TNN_API tnn_trainer *tnn_trainer_new(void);
/* NULL is a no-op. */
TNN_API void tnn_trainer_free(tnn_trainer *t);
/* Sets an option by the name tnn train gives it, without the dashes, from
 * its text (copied): "data" (adds a text file; at least one; a "*.jsonl"
 * file holds conversations, {"messages": [{"role": ..., "content": ...},
 * ...]} a line, written in the model's chat template, the loss on the
 * assistant's turns only), "init" (a
 * llama or qwen2 GGUF model, any tensor type: training starts from its
 * weights, dequantized to f32, with its shape and tokenizer; "seq" is then
 * the training window, the checkpoint keeps the model's context length;
 * "lr" defaults to 1e-4), "lora" (with "init": the rank of a LoRA run,
 * every weight frozen and a low-rank update of each projection trained,
 * written merged into the checkpoint; "lr" defaults to 1e-3), "lora-alpha"
 * (the update's scale is alpha / rank; 2 rank), "qlora" (0 or 1; with
 * "lora": the frozen embeddings and projections stay as the init file
 * stores them, quantized ones quantized, read in place: QLoRA),
 * "lora-only" (0 or 1; with "lora": checkpoints hold the factors and their
 * AdamW moments alone, not the merged model: a resume reads the rest from
 * the init file again, tnn_lora_export makes the adapter to run; as a
 * model such a checkpoint is refused, TNN_ERR_FORMAT), "steps",
 * "batch", "seq", "layers", "dim", "heads", "kv-heads", "ff", "lr",
 * "warmup", "seed", "bf16" (0 or 1; with "lora" the frozen projections
 * are then held as bf16, half their memory), "eval-every", "sample-every",
 * "sample-len", "prompt", "temp", "top-k", "top-p", "log" (CSV file),
 * "svg" (loss curve), "checkpoint" ("{step}" in the name becomes the step),
 * "checkpoint-every", "resume" (a checkpoint to continue), "tokenizer" (a
 * GGUF model whose tokenizer makes the tokens), "cuda" (0 or 1: on the GPU,
 * the CPU, logged, where there is none). TNN_ERR_ARG for an unknown name or
 * a value out of range, naming the range. */
TNN_API int tnn_trainer_set(tnn_trainer *t, const char *key, const char *value);
/* Trains. The progress lines (losses, tokens/s, samples) go to on_log as
 * they are written (NULL: nowhere). TNN_OK, or a status with the reason
 * (unreadable text, a shape that does not work, a checkpoint that cannot
 * be written, ...). */
TNN_API int tnn_trainer_run(tnn_trainer *t, tnn_llm_text_fn on_log, void *user);
/* Figures of the last successful run: steps done, the training loss of the
 * first and the last step, the validation loss before training and at the
 * end, tokens/s. Any pointer may be NULL. TNN_ERR_STATE before a run has
 * finished. */
TNN_API int tnn_trainer_result(const tnn_trainer *t, int32_t *steps, double *first_loss,
                               double *last_loss, double *first_val_loss, double *val_loss,
                               double *tokens_per_s);
/* Writes the LoRA factors of a LoRA run's checkpoint ("lora") as an
 * adapter file in llama.cpp's layout (general.type "adapter", adapter.type
 * "lora", adapter.lora.alpha; tensors blk.N.attn_q.weight.lora_a, ...,
 * f32): a few MB that llama.cpp applies to the base model (llama-cli -m
 * BASE.gguf --lora ADAPTER.gguf), where the checkpoint is the whole merged
 * model. TNN_ERR_FORMAT for a file that is not a LoRA checkpoint, TNN_ERR_IO
 * when either file cannot be read or written. */
TNN_API int tnn_lora_export(const char *checkpoint, const char *adapter_path);

#ifdef __cplusplus
}
#endif

#endif /* TINYNN_H */
