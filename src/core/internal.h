/* internal.h - private structures of the engine: sessions, tensors, the op
 * table and the backend interface. Nothing here is part of the ABI.
 */
#ifndef TNN_INTERNAL_H
#define TNN_INTERNAL_H

#include "tinynn.h"

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The hot loops get a clone with AVX2 + FMA (GCC 12 and later: x86-64-v3,
 * which adds F16C and BMI) and one with AVX-512 (x86-64-v4: twice the lanes
 * for the compute-bound ones, gelu on 2 threads 0.61 -> 1.06 of the triad on
 * an AVX-512 Xeon), picked at load time where the CPU has them (function
 * multi-versioning), and a baseline one. Contraction stays off and the only
 * fused operations are explicit fmaf calls (vmath.h), so every clone computes
 * the same bits; in the baseline clone fmaf is a libm call (correct, slow:
 * only x86 CPUs without FMA run it). Older GCC and clang clone for "fma"
 * (AVX + FMA): clang 14's resolver never picks an arch= clone on AMD CPUs. */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(TNN_NO_CLONES)
#if !defined(__clang__) && __GNUC__ >= 12
#define TNN_VEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TNN_VEC_CLONES __attribute__((target_clones("fma", "default")))
#endif
#else
#define TNN_VEC_CLONES
#endif

/* ------------------------------------------------------------------------ */
/* Errors and logging (src/core/error.c)                                    */
/* ------------------------------------------------------------------------ */

#if defined(__GNUC__)
#define TNN_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define TNN_PRINTF(a, b)
#endif

/* Records the error for tnn_last_error() and returns `status`. */
int tnn__error(int status, const char *func, const char *fmt, ...) TNN_PRINTF(3, 4);
#define TNN_ERR(status, ...) tnn__error((status), __func__, __VA_ARGS__)
/* Same, for functions that return a pointer. */
#define TNN_ERR_NULL(status, ...) (tnn__error((status), __func__, __VA_ARGS__), NULL)

void tnn__log(int level, const char *fmt, ...) TNN_PRINTF(2, 3);

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool tnn__mul_ok(int64_t a, int64_t b, int64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool tnn__size_mul_ok(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}

/* Largest element count of one tensor: keeps every byte offset in int64. */
#define TNN_MAX_ELEMENTS ((int64_t)1 << 40)

/* ------------------------------------------------------------------------ */
/* Ops                                                                      */
/* ------------------------------------------------------------------------ */

/* Values are fixed and append-only; TNN_OP_COUNT ties the name table. */
typedef enum tnn_op {
    TNN_OP_NONE = 0, /* a leaf: input or parameter */
    TNN_OP_ADD = 1,
    TNN_OP_SUB = 2,
    TNN_OP_MUL = 3,
    TNN_OP_SCALE = 4,
    TNN_OP_GELU = 5,
    TNN_OP_SILU = 6,
    TNN_OP_GELU_BACK = 7,
    TNN_OP_SILU_BACK = 8,
    TNN_OP_SOFTMAX = 9,
    TNN_OP_SOFTMAX_BACK = 10,
    TNN_OP_RMS_NORM = 11,
    TNN_OP_RMS_NORM_BACK = 12, /* (dy, x, gamma?): dx of rms_norm(x[, gamma]) */
    TNN_OP_MATMUL = 13, /* batched, flags in iparam[0] (TNN_MM_*) */
    TNN_OP_TRANSPOSE = 14,
    TNN_OP_GET_ROWS = 15,
    TNN_OP_GET_ROWS_BACK = 16,
    TNN_OP_SUM = 17,        /* all elements -> (1) */
    TNN_OP_MEAN = 18,       /* all elements -> (1) */
    TNN_OP_RESHAPE = 19,    /* same elements, new shape (a copy) */
    TNN_OP_EXPAND = 20,     /* broadcast src0 to this node's shape */
    TNN_OP_REDUCE_TO = 21,  /* sum src0 over the dimensions broadcast to this shape */
    TNN_OP_FILL = 22,       /* every element = fparam[0]; no sources */
    TNN_OP_CROSS_ENTROPY = 23,      /* (logits, targets) -> mean loss (1); iparam: */
    TNN_OP_CROSS_ENTROPY_BACK = 24, /* ignore, classes; (logits, targets, dloss) -> dlogits */
    TNN_OP_ROPE = 25,           /* iparam: n_head, seq_len, mode; fparam: base, sign */
    TNN_OP_ATTENTION = 26,      /* (q, k, v); iparam: n_head, n_kv_head, seq_len */
    /* (q, k, v, dout, the forward node) -> dq (N x qw), then dk and dv (N x kw each) */
    TNN_OP_ATTENTION_BACK = 27,
    TNN_OP_VIEW = 28, /* elements [iparam[0], + this size) of src, in place (an alias) */
    TNN_OP_KV_WRITE = 29,       /* (cache, x, pos): rows of x into the cache; aliases it */
    TNN_OP_ATTENTION_CACHED = 30, /* (q, kcache, vcache, pos) */
    TNN_OP_LAYER_NORM = 31,      /* (x, gamma?, beta?); fparam[0] eps */
    TNN_OP_LAYER_NORM_BACK = 32, /* (g, x) -> dx of plain layer norm, g = dy * gamma */
    TNN_OP_PERMUTE = 33,         /* iparam[0] packs the axis order, 4 bits each */
    TNN_OP_CONCAT = 34,          /* (a, b) along iparam[0] */
    TNN_OP_NARROW = 35,          /* src along iparam[0]: [iparam[1], + this size) */
    TNN_OP_TO_BF16 = 36,         /* f32 src rounded to bf16 (gradient passes through) */
    TNN_OP_RMS_NORM_GAIN = 37,   /* (dy, x) -> gamma's gradient of rms_norm(x, gamma) */
    TNN_OP_SWIGLU = 38,          /* (gate, up) -> silu(gate) * up */
    TNN_OP_SWIGLU_BACK = 39,     /* (dy, gate, up): iparam[0] 0 -> d gate, 1 -> d up */
    TNN_OP_COUNT
} tnn_op;

/* Flags of TNN_OP_MATMUL: which operand is read transposed, and the seed's
 * ggml layout (result = b @ a^T, operands swapped). */
enum { TNN_MM_TA = 1, TNN_MM_TB = 2 };

#define TNN_MAX_SRC 5

enum {
    TNN_FLAG_OUTPUT = 1u << 0,
    TNN_FLAG_PARAM = 1u << 1,
    TNN_FLAG_TRANSIENT = 1u << 2, /* set by realize: memory reused after last read */
    TNN_FLAG_NO_DECAY = 1u << 3,  /* parameter excluded from weight decay */
    TNN_FLAG_EXTERNAL = 1u << 4,  /* leaf whose data is borrowed (a mapped file): read-only */
    TNN_FLAG_ALIAS = 1u << 5,     /* node whose data is in its src[0]'s (an in-place update,
                                     a view) */
    TNN_FLAG_ACCUM = 1u << 6,     /* a gradient sum (autograd): may be planned in place */
    TNN_FLAG_INPLACE = 1u << 7,   /* set by realize: such a sum (or cross-entropy's
                                     gradient) written over its src[0], whose last read
                                     it is (with ALIAS) */
    TNN_FLAG_SHARED = 1u << 8,    /* leaf reading another session's leaf storage
                                     (tnn__tensor_share; with EXTERNAL): never freed here */
};

struct tnn_tensor {
    uint32_t magic; /* TNN_TENSOR_MAGIC while alive */
    tnn_session *sess;
    int32_t id; /* creation index in the session */
    int32_t dtype;
    int32_t ndim;
    int32_t op;
    uint32_t flags;
    int32_t gtype; /* GGML type of TNN_GGML (and gguf F32) tensors, else -1 */
    int64_t shape[TNN_MAX_DIMS];
    int64_t nelem;
    size_t nbytes;
    /* Bytes planned after the data for the backend's own use: what a
     * forward node keeps for its backward (attention: each row's
     * log-sum-exp, where the backend's forward writes it). Never copied in
     * or out. */
    size_t aux_bytes;
    tnn_tensor *src[TNN_MAX_SRC];
    double fparam[2];
    int64_t iparam[4];
    void *data; /* set by realize: leaf storage or a place in the arena */
    const void *host_data; /* a borrowed leaf on a device backend: the mapped file's bytes */
    int64_t arena_off; /* offset in the arena for planned nodes, -1 if none */
    int32_t last_use;  /* planning: index in the plan of the last reader */
    tnn_tensor *grad;  /* parameters, after tnn_backward: the gradient node */
    char name[32];
};

/* The forward kernel of an op: computes t from t->src. Returns TNN_OK or an
 * error (with the message set). */
typedef int (*tnn_forward_fn)(tnn_tensor *t);

/* The backward rule of an op: given t and its gradient dt, builds nodes for
 * the gradient contribution to each source that needs one (need[i]) into
 * dsrc[i]. Returns TNN_OK or an error. Contributions are summed by the
 * caller (src/core/autograd.c), so a rule never accumulates itself. */
typedef int (*tnn_backward_fn)(tnn_session *s, tnn_tensor *t, tnn_tensor *dt, const bool *need,
                               tnn_tensor **dsrc);

typedef struct tnn_op_def {
    const char *name;
    int n_src;
    tnn_forward_fn forward;
    tnn_backward_fn backward; /* NULL: the op has no gradient */
} tnn_op_def;

extern const tnn_op_def tnn__ops[TNN_OP_COUNT];

/* ------------------------------------------------------------------------ */
/* Backends                                                                 */
/* ------------------------------------------------------------------------ */

/* One optimizer step over every parameter (src/core/optimizer.c), for a
 * backend that queues it where the parameters live. The step is skipped
 * when the loss or the gradient norm is not finite, or when a kernel of the
 * same compute recorded a fault; else the gradients are scaled by
 * clip / (norm + 1e-6) when clip > 0 and the norm exceeds it. */
typedef struct tnn_step {
    int adamw;                 /* 1: AdamW (m and v), 0: SGD (m only with momentum) */
    int n;                     /* parameters */
    tnn_tensor *const *params; /* gradients in params[k]->grad; TNN_FLAG_NO_DECAY honoured */
    float *const *m, *const *v;
    const float *loss; /* backend memory */
    double lr, b1, b2, eps, wd, momentum, clip;
    double bc1, bc2; /* 1 - beta^t for the step this one would be */
    bool first;      /* ... the first: the moments are not read */
} tnn_step;

/* What a queued step found, read after the compute has been waited for. */
typedef struct tnn_step_result {
    double loss, norm2; /* the loss and the squared gradient norm it read */
    int applied;        /* 0: skipped */
} tnn_step_result;

/* A backend is a table of functions; CPU and CUDA plug in the same way.
 * Memory handles are plain pointers the backend understands. The hooks
 * after `run` may be NULL on a backend whose memory is the host's: the
 * engine then does that work itself. */
typedef struct tnn_backend {
    const char *name;
    void *(*alloc)(size_t nbytes);                 /* zeroed, 64-byte aligned */
    void (*free)(void *p);
    int (*copy_in)(void *dst, const void *src, size_t nbytes); /* host -> backend */
    int (*copy_out)(void *dst, const void *src, size_t nbytes); /* backend -> host */
    bool (*supports)(const tnn_tensor *t);
    int (*run)(tnn_tensor *t); /* compute one node (may only queue it) */
    bool host_memory;          /* data pointers are host memory */
    /* run_plan may run a node together with the next one (the CUDA backend
     * folds an element-wise node into the product before it): the planner
     * then keeps a node's inputs one node longer. */
    bool fuse_next;
    /* After a compute's last node: waits for the queued work and reports an
     * error a kernel found (a bad index) as the status of the compute. */
    int (*finish)(tnn_session *s);
    /* An optimizer step queued after the plan and before finish, so that
     * the host waits once (NULL: the engine reads the loss and the norm and
     * updates the parameters itself); step_result reads, once finish has
     * waited, what the step found. */
    int (*step)(tnn_session *s, const tnn_step *st);
    int (*step_result)(tnn_session *s, tnn_step_result *r);
    /* Runs the session's plan (NULL: the engine runs it node by node): the
     * whole plan, or where s->part is set only the nodes it marks (no node
     * fused with one it does not mark); and drops what the backend kept for
     * a plan (s->bstate) when the plan goes. */
    int (*run_plan)(tnn_session *s);
    void (*release)(tnn_session *s);
} tnn_backend;

extern const tnn_backend tnn__cpu_backend;
/* The CPU plan runner folds an element-wise node into the product before it
 * (ops/matmul.c): 2 when both ran, 0 when they cannot be fused (nothing
 * ran), or a negative status. */
int tnn__fwd_matmul_then(tnn_tensor *t, tnn_tensor *next);
/* The CPU plan runner's sets of products (ops/matmul.c): plan[i] and the
 * products after it, up to TNN_QMM_SPAN nodes from it, that read the same x
 * through the quantized matrix-vector kernels (q, k and v; gate and up) run
 * as one job, x quantized once. Returns how many nodes from plan[i] the set
 * spans (>= 2; bit m of *members set for plan[i + m] run, the nodes between
 * left for the caller to run next, in order), 0 when plan[i] starts no set
 * (nothing ran), or a negative status. `part`: tnn_compute_to's marks, or
 * NULL. A product joins only where its output overlaps no buffer of the
 * nodes it now runs before, nor x, nor another's output. */
#define TNN_QMM_SPAN 8
int tnn__fwd_qmm_set(tnn_tensor **plan, int32_t np, int32_t i, const uint8_t *part,
                     unsigned *members);
/* Fusion on the CPU: on unless TNN_CPU_FUSE=0; the tests switch it (1, 0;
 * -1: back to the environment's choice). */
void tnn__cpu_set_fuse(int on);
/* How many pairs the CPU plan runner has run fused (the tests look). */
long long tnn__cpu_fused_pairs(void);
/* How many sets of products (tnn__fwd_qmm_set) it has run. */
long long tnn__cpu_fused_sets(void);
/* The CUDA backend, opened on first use; NULL (with the reason logged) when
 * this build has none or no usable GPU is present (src/cuda). */
const tnn_backend *tnn__cuda_backend(void);

/* ------------------------------------------------------------------------ */
/* Sessions                                                                 */
/* ------------------------------------------------------------------------ */

#define TNN_TENSOR_BLOCK 256 /* tensors per allocation block */

struct tnn_session {
    uint32_t magic;
    const tnn_backend *backend;

    /* Tensors live in blocks of TNN_TENSOR_BLOCK; their addresses never move.
     * Creation order is a topological order: a node's sources exist first. */
    tnn_tensor **blocks;
    int32_t n_blocks, cap_blocks;
    int32_t n_tensors;

    /* Scratch slots (4 bytes each: one f32, or one int32 stored by memcpy). */
    float *scratch;
    size_t scratch_len; /* highest slot written + 1 */
    size_t scratch_cap;

    /* The realized plan: nodes to run in order. */
    tnn_tensor **plan;
    int32_t n_plan;
    tnn_tensor *result; /* the tensor given to the last successful tnn_realize */
    bool realized;
    void *arena;
    size_t arena_size;
    void *bstate; /* the backend's own state for the plan (see tnn_backend) */
    /* tnn_compute_to: which plan nodes the tensor `part_of` needs (1: run),
     * kept for the next call on the same tensor; `part` is set only while
     * such a compute runs (NULL: the whole plan). */
    uint8_t *part_mask, *part;
    tnn_tensor *part_of;

    /* Training: the loss given to tnn_backward, and the optimizer run at
     * the end of every compute (src/core/optimizer.c). */
    tnn_tensor *loss;
    struct tnn_optim *optim;
};

/* Drops the realized plan and the arena (graph.c). */
void tnn__release_plan(tnn_session *s);

/* Makes the leaf dst read the storage of the leaf src, a tensor of another
 * session on the same backend with the same dtype and shape, instead of
 * its own (session.c): dst's storage is freed, dst becomes read-only and
 * sees every later change of src. For a model's sampling graph beside its
 * training graph (src/llm): one copy of the weights. dst's session must be
 * freed before src's. */
int tnn__tensor_share(tnn_tensor *dst, tnn_tensor *src);

/* Drops the plan and every tensor made after the first n (session.c): their
 * storage is freed and their handles stop being live. For owners that
 * rebuild part of a graph (lm_llama's prompt graphs), so a long-running
 * session does not grow with every new graph. n > the tensor count: no-op. */
void tnn__session_truncate(tnn_session *s, int32_t n);

/* The optimizer step that tnn_compute runs after the graph: queued on a
 * backend with a step hook before the compute is waited for, then
 * accounted (steps, skips, the norm) once it has been. */
int tnn__optim_queue(tnn_session *s);
int tnn__optim_step(tnn_session *s);
void tnn__optim_free(tnn_session *s);

/* Whether the buffers of a and b (data and aux bytes) overlap. */
static inline bool tnn__overlaps(const tnn_tensor *a, const tnn_tensor *b) {
    const char *a0 = (const char *)a->data, *b0 = (const char *)b->data;
    return a0 < b0 + b->nbytes + b->aux_bytes && b0 < a0 + a->nbytes + a->aux_bytes;
}

static inline tnn_tensor *tnn__tensor_at(const tnn_session *s, int32_t i) {
    return &s->blocks[i / TNN_TENSOR_BLOCK][i % TNN_TENSOR_BLOCK];
}

/* Handle checks. They never dereference a pointer that is not a live
 * session or a tensor of a live session. Each returns TNN_OK or sets the
 * error (naming `func` and `arg`) and returns its status. */
int tnn__check_session(const tnn_session *s, const char *func);
int tnn__check_tensor(const tnn_session *s, const tnn_tensor *t, const char *func,
                      const char *arg);
/* For functions that get only a tensor: finds its live session. */
tnn_session *tnn__tensor_owner(const tnn_tensor *t);

/* A new node of `op` with the given shape and sources (already checked). */
tnn_tensor *tnn__node_new(tnn_session *s, int op, int dtype, int ndim, const int64_t *shape,
                          tnn_tensor *const *src, int n_src);

/* Internal builders used by backward rules (src/ops/reduce.c). */
tnn_tensor *tnn__expand(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape);
tnn_tensor *tnn__reduce_to(tnn_session *s, tnn_tensor *a, int ndim, const int64_t *shape);
tnn_tensor *tnn__fill(tnn_session *s, int ndim, const int64_t *shape, double value);
/* The elements [at, at + the shape's size) of a, in place (an alias). */
tnn_tensor *tnn__view(tnn_session *s, tnn_tensor *a, int64_t at, int ndim, const int64_t *shape);
tnn_tensor *tnn__cross_entropy_back(tnn_session *s, tnn_tensor *ce, tnn_tensor *dloss);
/* reduce_to a's shape, or g itself when the shapes already match. */
tnn_tensor *tnn__sum_like(tnn_session *s, tnn_tensor *g, const tnn_tensor *a);
/* The gradient rule of rms_norm(x, gamma) (src/ops/rows.c): dx, and
 * dgamma in gamma's shape. */
tnn_tensor *tnn__rms_norm_back_gamma(tnn_session *s, tnn_tensor *dy, tnn_tensor *x,
                                     tnn_tensor *gamma, double eps);
tnn_tensor *tnn__rms_norm_gain(tnn_session *s, tnn_tensor *dy, tnn_tensor *x,
                               const tnn_tensor *gamma, double eps);

/* "(2, 3)" into buf, for messages. */
const char *tnn__shape_str(const tnn_tensor *t, char *buf, size_t n);
#define TNN_SHAPE_BUF 64

size_t tnn__dtype_size(int dtype);

#define TNN_SESSION_MAGIC 0x54534e4eu /* "NNST" */
#define TNN_TENSOR_MAGIC 0x54544e4eu  /* "NNTT" */

#endif /* TNN_INTERNAL_H */
