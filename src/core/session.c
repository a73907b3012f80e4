/* session.c - sessions, tensors and handle checks.
 *
 * A session owns its tensors (in blocks whose addresses never move) and
 * their storage. Live sessions are kept in a small registry so that a
 * freed or foreign handle is refused without dereferencing it.
 */
#include "internal.h"

#include "../quant/quant.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Registry of live sessions                                                */
/* ------------------------------------------------------------------------ */

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static tnn_session **reg;
static size_t reg_len, reg_cap;

static bool reg_add(tnn_session *s) {
    bool ok = true;
    pthread_mutex_lock(&reg_mu);
    if (reg_len == reg_cap) {
        size_t cap = reg_cap ? reg_cap * 2 : 16;
        tnn_session **r = realloc(reg, cap * sizeof *r);
        if (r) {
            reg = r;
            reg_cap = cap;
        } else {
            ok = false;
        }
    }
    if (ok) reg[reg_len++] = s;
    pthread_mutex_unlock(&reg_mu);
    return ok;
}

static void reg_remove(const tnn_session *s) {
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < reg_len; i++) {
        if (reg[i] == s) {
            reg[i] = reg[--reg_len];
            break;
        }
    }
    if (reg_len == 0) {
        free(reg);
        reg = NULL;
        reg_cap = 0;
    }
    pthread_mutex_unlock(&reg_mu);
}

/* Called with reg_mu held. */
static bool reg_has(const tnn_session *s) {
    for (size_t i = 0; i < reg_len; i++)
        if (reg[i] == s) return true;
    return false;
}

static bool session_owns(const tnn_session *s, const tnn_tensor *t) {
    uintptr_t p = (uintptr_t)t;
    for (int32_t b = 0; b < s->n_blocks; b++) {
        uintptr_t lo = (uintptr_t)s->blocks[b];
        uintptr_t hi = lo + (uintptr_t)TNN_TENSOR_BLOCK * sizeof(tnn_tensor);
        if (p >= lo && p < hi) {
            if ((p - lo) % sizeof(tnn_tensor) != 0) return false;
            /* Slots not yet handed out are zero, so their magic is 0. */
            return t->magic == TNN_TENSOR_MAGIC;
        }
    }
    return false;
}

int tnn__check_session(const tnn_session *s, const char *func) {
    if (!s) return tnn__error(TNN_ERR_ARG, func, "session is NULL");
    pthread_mutex_lock(&reg_mu);
    bool live = reg_has(s);
    pthread_mutex_unlock(&reg_mu);
    if (!live)
        return tnn__error(TNN_ERR_ARG, func,
                          "session %p is not a live session (freed, or not made by "
                          "tnn_session_new)",
                          (const void *)s);
    return TNN_OK;
}

int tnn__check_tensor(const tnn_session *s, const tnn_tensor *t, const char *func,
                      const char *arg) {
    if (!t) return tnn__error(TNN_ERR_ARG, func, "tensor '%s' is NULL", arg);
    if (!session_owns(s, t)) {
        tnn_session *owner = tnn__tensor_owner(t);
        tnn_clear_error();
        if (owner)
            return tnn__error(TNN_ERR_ARG, func,
                              "tensor '%s' belongs to another session (%p), not %p", arg,
                              (void *)owner, (const void *)s);
        return tnn__error(TNN_ERR_ARG, func,
                          "tensor '%s' (%p) is not a tensor of a live session (freed?)", arg,
                          (const void *)t);
    }
    return TNN_OK;
}

tnn_session *tnn__tensor_owner(const tnn_tensor *t) {
    if (!t) return NULL;
    tnn_session *found = NULL;
    pthread_mutex_lock(&reg_mu);
    for (size_t i = 0; i < reg_len && !found; i++)
        if (session_owns(reg[i], t)) found = reg[i];
    pthread_mutex_unlock(&reg_mu);
    return found;
}

/* ------------------------------------------------------------------------ */
/* Sessions                                                                 */
/* ------------------------------------------------------------------------ */

tnn_session *tnn_session_new(int prefer_cuda) {
    tnn_session *s = calloc(1, sizeof *s);
    if (!s) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory for a session");
    s->magic = TNN_SESSION_MAGIC;
    s->backend = &tnn__cpu_backend;
    if (prefer_cuda) {
        /* tnn__cuda_backend logs why when it cannot give one */
        const tnn_backend *cuda = tnn__cuda_backend();
        if (cuda)
            s->backend = cuda;
        else
            tnn__log(TNN_LOG_INFO, "tnn_session_new(prefer_cuda=%d): no CUDA backend; "
                                   "using the CPU", prefer_cuda);
    }
    if (!reg_add(s)) {
        free(s);
        return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory for the session registry");
    }
    return s;
}

/* Whether freeing the session frees t's storage: not where it is another
 * session's (shared) or a mapped file's on a host-memory backend (a device
 * backend holds its own copy of a file's bytes). */
static bool owns_storage(const tnn_session *s, const tnn_tensor *t) {
    if (t->flags & TNN_FLAG_SHARED) return false;
    return !(t->flags & TNN_FLAG_EXTERNAL) || !s->backend->host_memory;
}

void tnn_session_free(tnn_session *s) {
    if (!s) return;
    if (tnn__check_session(s, __func__) != TNN_OK) return;
    reg_remove(s);
    tnn__optim_free(s);
    tnn__release_plan(s);
    for (int32_t i = 0; i < s->n_tensors; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        bool owned = owns_storage(s, t);
        if (t->op == TNN_OP_NONE && t->data && owned) s->backend->free(t->data);
    }
    for (int32_t b = 0; b < s->n_blocks; b++) free(s->blocks[b]);
    free(s->blocks);
    free(s->scratch);
    s->magic = 0;
    free(s);
}

void tnn__session_truncate(tnn_session *s, int32_t n) {
    if (n < 0 || n >= s->n_tensors || s->optim) return; /* an optimizer keeps its tensors */
    tnn__release_plan(s);
    for (int32_t i = 0; i < n; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (t->grad && t->grad->id >= n) t->grad = NULL;
    }
    if (s->loss && s->loss->id >= n) s->loss = NULL;
    for (int32_t i = n; i < s->n_tensors; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        bool owned = owns_storage(s, t);
        if (t->op == TNN_OP_NONE && t->data && owned) s->backend->free(t->data);
        memset(t, 0, sizeof *t); /* magic 0: the handle is no longer live */
    }
    s->n_tensors = n;
}

const char *tnn_session_backend(const tnn_session *s) {
    if (tnn__check_session(s, __func__) != TNN_OK) return NULL;
    return s->backend->name;
}

size_t tnn_session_arena_bytes(const tnn_session *s) {
    if (tnn__check_session(s, __func__) != TNN_OK) return 0;
    return s->arena_size;
}

/* ------------------------------------------------------------------------ */
/* Tensors                                                                  */
/* ------------------------------------------------------------------------ */

size_t tnn__dtype_size(int dtype) {
    switch (dtype) {
    case TNN_F32: return 4;
    case TNN_I32: return 4;
    case TNN_F16: return 2;
    case TNN_BF16: return 2;
    default: return 0;
    }
}

static const char *dtype_name(int dtype) {
    switch (dtype) {
    case TNN_F32: return "f32";
    case TNN_I32: return "i32";
    case TNN_F16: return "f16";
    case TNN_BF16: return "bf16";
    case TNN_GGML: return "ggml";
    default: return "?";
    }
}

const char *tnn__shape_str(const tnn_tensor *t, char *buf, size_t n) {
    size_t off = 0;
    off += (size_t)snprintf(buf + off, n - off, "%s(", dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, i ? ", %lld" : "%lld",
                                (long long)t->shape[i]);
    if (off < n) snprintf(buf + off, n - off, ")");
    return buf;
}

/* Validates a shape and returns its element count, or a negative status. */
static int64_t shape_count(int ndim, const int64_t *shape, const char *func) {
    if (ndim < 1 || ndim > TNN_MAX_DIMS)
        return tnn__error(TNN_ERR_ARG, func, "ndim=%d: want 1..%d", ndim, TNN_MAX_DIMS);
    if (!shape) return tnn__error(TNN_ERR_ARG, func, "shape is NULL");
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0)
            return tnn__error(TNN_ERR_ARG, func, "shape[%d]=%lld: sizes must be >= 1", i,
                              (long long)shape[i]);
        if (!tnn__mul_ok(n, shape[i], &n) || n > TNN_MAX_ELEMENTS)
            return tnn__error(TNN_ERR_OVERFLOW, func,
                              "shape[%d]=%lld: element count overflows (max %lld)", i,
                              (long long)shape[i], (long long)TNN_MAX_ELEMENTS);
    }
    return n;
}

static tnn_tensor *tensor_alloc(tnn_session *s, const char *func) {
    if (s->n_tensors >= INT32_MAX - TNN_TENSOR_BLOCK)
        return (tnn__error(TNN_ERR_OVERFLOW, func, "too many tensors in one session"), NULL);
    if (s->n_tensors == s->n_blocks * TNN_TENSOR_BLOCK) {
        tnn_tensor *blk = calloc(TNN_TENSOR_BLOCK, sizeof(tnn_tensor));
        if (!blk) return (tnn__error(TNN_ERR_NOMEM, func, "out of memory for tensors"), NULL);
        /* The block list is read by owner lookups from other threads. */
        pthread_mutex_lock(&reg_mu);
        bool ok = true;
        if (s->n_blocks == s->cap_blocks) {
            int32_t cap = s->cap_blocks ? s->cap_blocks * 2 : 8;
            tnn_tensor **nb = realloc(s->blocks, (size_t)cap * sizeof *nb);
            if (nb) {
                s->blocks = nb;
                s->cap_blocks = cap;
            } else {
                ok = false;
            }
        }
        if (ok) s->blocks[s->n_blocks++] = blk;
        pthread_mutex_unlock(&reg_mu);
        if (!ok) {
            free(blk);
            return (tnn__error(TNN_ERR_NOMEM, func, "out of memory for tensors"), NULL);
        }
    }
    tnn_tensor *t = tnn__tensor_at(s, s->n_tensors);
    memset(t, 0, sizeof *t);
    t->id = s->n_tensors++;
    t->gtype = -1;
    t->magic = TNN_TENSOR_MAGIC;
    t->sess = s;
    t->arena_off = -1;
    return t;
}

static tnn_tensor *tensor_new(tnn_session *s, int op, int dtype, int ndim, const int64_t *shape,
                              const char *func) {
    int64_t n = shape_count(ndim, shape, func);
    if (n < 0) return NULL;
    size_t esz = tnn__dtype_size(dtype);
    if (esz == 0) return (tnn__error(TNN_ERR_ARG, func, "dtype=%d is not a tensor type", dtype), NULL);
    tnn_tensor *t = tensor_alloc(s, func);
    if (!t) return NULL;
    t->op = op;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nelem = n;
    t->nbytes = (size_t)n * esz;
    return t;
}

tnn_tensor *tnn__node_new(tnn_session *s, int op, int dtype, int ndim, const int64_t *shape,
                          tnn_tensor *const *src, int n_src) {
    tnn_tensor *t = tensor_new(s, op, dtype, ndim, shape, tnn__ops[op].name);
    if (!t) return NULL;
    for (int i = 0; i < n_src && i < TNN_MAX_SRC; i++) t->src[i] = src[i];
    return t;
}

tnn_tensor *tnn_tensor_new(tnn_session *s, int dtype, int ndim, const int64_t *shape) {
    if (tnn__check_session(s, __func__)) return NULL;
    if (dtype != TNN_F32 && dtype != TNN_I32 && dtype != TNN_F16 && dtype != TNN_BF16)
        return TNN_ERR_NULL(dtype >= 0 && dtype < TNN_DTYPE_COUNT ? TNN_ERR_UNSUPPORTED : TNN_ERR_ARG,
                            "dtype=%d: tensors of TNN_F32, TNN_I32, TNN_F16 or TNN_BF16 can be "
                            "made (GGML types come from tnn_tensor_from_gguf)", dtype);
    return tensor_new(s, TNN_OP_NONE, dtype, ndim, shape, __func__);
}

tnn_tensor *tnn_input_2d_f32(tnn_session *s, int rows, int cols) {
    if (tnn__check_session(s, __func__)) return NULL;
    int64_t shape[2] = {rows, cols};
    return tensor_new(s, TNN_OP_NONE, TNN_F32, 2, shape, __func__);
}

tnn_tensor *tnn_input_1d_f32(tnn_session *s, int n) {
    if (tnn__check_session(s, __func__)) return NULL;
    int64_t shape[1] = {n};
    return tensor_new(s, TNN_OP_NONE, TNN_F32, 1, shape, __func__);
}

tnn_tensor *tnn_input_1d_i32(tnn_session *s, int n) {
    if (tnn__check_session(s, __func__)) return NULL;
    int64_t shape[1] = {n};
    return tensor_new(s, TNN_OP_NONE, TNN_I32, 1, shape, __func__);
}

/* Accessors take only the tensor: find its session first. */
static const tnn_tensor *live_tensor(const tnn_tensor *t, const char *func) {
    if (!t) return (tnn__error(TNN_ERR_ARG, func, "tensor is NULL"), NULL);
    if (!tnn__tensor_owner(t))
        return (tnn__error(TNN_ERR_ARG, func,
                           "tensor %p is not a tensor of a live session (freed?)",
                           (const void *)t),
                NULL);
    return t;
}

int tnn__tensor_share(tnn_tensor *dst, tnn_tensor *src) {
    if (!live_tensor(dst, __func__) || !live_tensor(src, __func__)) return tnn_last_status();
    tnn_session *s = dst->sess;
    if (dst->op != TNN_OP_NONE || src->op != TNN_OP_NONE || !src->data)
        return TNN_ERR(TNN_ERR_ARG, "tensors #%d and #%d: want two leaves, the second with storage",
                       dst->id, src->id);
    if (s == src->sess || s->backend != src->sess->backend)
        return TNN_ERR(TNN_ERR_ARG, "tensor #%d: want a leaf of another session on the %s backend",
                       src->id, s->backend->name);
    if (dst->dtype != src->dtype || dst->gtype != src->gtype || dst->nbytes != src->nbytes ||
        dst->nelem != src->nelem)
        return TNN_ERR(TNN_ERR_SHAPE, "tensors #%d and #%d differ in type or size", dst->id,
                       src->id);
    if (s->backend->release) s->backend->release(s); /* a recorded plan read the old storage */
    if (dst->data && owns_storage(s, dst)) s->backend->free(dst->data);
    dst->data = src->data;
    dst->host_data = NULL;
    dst->flags |= TNN_FLAG_EXTERNAL | TNN_FLAG_SHARED;
    return TNN_OK;
}

int tnn_tensor_ndim(const tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return -1;
    return t->ndim;
}

int64_t tnn_tensor_dim(const tnn_tensor *t, int axis) {
    if (!live_tensor(t, __func__)) return -1;
    int a = axis < 0 ? t->ndim + axis : axis;
    if (a < 0 || a >= t->ndim)
        return TNN_ERR(TNN_ERR_RANGE, "axis=%d for a tensor of %d dimensions", axis, t->ndim);
    return t->shape[a];
}

int64_t tnn_tensor_nelements(const tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return -1;
    return t->nelem;
}

int tnn_tensor_dtype(const tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return -1;
    return t->dtype;
}

int tnn_tensor_ggml_type(const tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return -1;
    return t->gtype;
}

tnn_tensor *tnn_tensor_from_gguf(tnn_session *s, const tnn_gguf *g, const char *name) {
    if (tnn__check_session(s, __func__)) return NULL;
    if (!g || !name) return TNN_ERR_NULL(TNN_ERR_ARG, "g and name must not be NULL");
    int64_t i = tnn_gguf_find_tensor(g, name);
    if (i < 0) return TNN_ERR_NULL(TNN_ERR_RANGE, "the file has no tensor '%s'", name);
    int type = tnn_gguf_tensor_type(g, i);
    if (type != TNN_GGML_F32 && !tnn__qtype(type))
        return TNN_ERR_NULL(TNN_ERR_UNSUPPORTED, "tensor '%s' is %s, a type without kernels here",
                            name, tnn_ggml_type_name(type));
    int64_t shape[TNN_MAX_DIMS];
    int nd = tnn_gguf_tensor_shape(g, i, shape);
    if (nd < 1) return NULL;
    tnn_tensor *t = tensor_alloc(s, __func__);
    if (!t) return NULL;
    t->op = TNN_OP_NONE;
    t->dtype = type == TNN_GGML_F32 ? TNN_F32 : TNN_GGML;
    t->gtype = type;
    t->ndim = nd;
    for (int k = 0; k < nd; k++) t->shape[k] = shape[k];
    t->nelem = tnn_gguf_tensor_nelements(g, i);
    t->nbytes = (size_t)tnn_gguf_tensor_nbytes(g, i);
    /* On the CPU the mapped bytes are the storage (zero-copy); a device
     * backend gets its own copy at the next realize (graph.c). */
    if (s->backend->host_memory)
        t->data = (void *)tnn_gguf_tensor_data(g, i);
    else
        t->host_data = tnn_gguf_tensor_data(g, i);
    t->flags |= TNN_FLAG_EXTERNAL;
    snprintf(t->name, sizeof t->name, "%s", name);
    return t;
}

int tnn_tensor_set_name(tnn_tensor *t, const char *name) {
    if (!live_tensor(t, __func__)) return tnn_last_status();
    if (!name) return TNN_ERR(TNN_ERR_ARG, "name is NULL");
    snprintf(t->name, sizeof t->name, "%s", name);
    return TNN_OK;
}

const char *tnn_tensor_name(const tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return NULL;
    return t->name;
}

void tnn_set_output(tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return;
    t->flags |= TNN_FLAG_OUTPUT;
}

void tnn_set_param(tnn_tensor *t) {
    if (!live_tensor(t, __func__)) return;
    if (t->op != TNN_OP_NONE) {
        TNN_ERR(TNN_ERR_ARG, "tensor #%d is the result of %s, not a leaf: only leaves can be "
                "parameters", t->id, tnn__ops[t->op].name);
        return;
    }
    if (t->dtype != TNN_F32) { /* gradients and optimizer steps are f32 */
        char b[TNN_SHAPE_BUF];
        TNN_ERR(TNN_ERR_ARG, "tensor #%d is %s: only f32 leaves can be parameters", t->id,
                tnn__shape_str(t, b, sizeof b));
        return;
    }
    t->flags |= TNN_FLAG_PARAM;
}
