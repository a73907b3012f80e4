/* graph.c - realize (order the graph, allocate leaves, plan the arena of
 * intermediates) and compute.
 *
 * Creation order is already a topological order (a node's sources exist
 * before it), so the plan is the needed nodes in creation order. Buffer
 * planning walks the plan once: a node gets the first free block that fits;
 * a source that is neither a leaf nor an output returns its block after
 * its last reader.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define ARENA_ALIGN 64

void tnn__release_plan(tnn_session *s) {
    if (s->backend->release) s->backend->release(s);
    if (s->arena) s->backend->free(s->arena);
    s->arena = NULL;
    s->arena_size = 0;
    free(s->plan);
    s->plan = NULL;
    s->n_plan = 0;
    free(s->part_mask);
    s->part_mask = s->part = NULL;
    s->part_of = NULL;
    s->realized = false;
    s->result = NULL;
    for (int32_t i = 0; i < s->n_tensors; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (t->op != TNN_OP_NONE) {
            t->data = NULL;
            t->arena_off = -1;
            t->flags &= ~(uint32_t)TNN_FLAG_TRANSIENT;
            if (t->flags & TNN_FLAG_INPLACE)
                t->flags &= ~(uint32_t)(TNN_FLAG_INPLACE | TNN_FLAG_ALIAS);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* First-fit allocator over arena offsets                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    size_t off, size;
} span;

typedef struct {
    span *free; /* sorted by offset, coalesced */
    int n, cap;
    size_t top; /* high-water mark */
} planner;

static size_t align_up(size_t n) { return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1); }

static bool plan_alloc(planner *p, size_t size, size_t *off) {
    size = align_up(size);
    for (int i = 0; i < p->n; i++) {
        if (p->free[i].size >= size) {
            *off = p->free[i].off;
            p->free[i].off += size;
            p->free[i].size -= size;
            if (p->free[i].size == 0) {
                memmove(&p->free[i], &p->free[i + 1], (size_t)(p->n - i - 1) * sizeof(span));
                p->n--;
            }
            return true;
        }
    }
    /* Grow from the top; a free block ending at the top is extended. */
    if (p->n > 0 && p->free[p->n - 1].off + p->free[p->n - 1].size == p->top) {
        *off = p->free[p->n - 1].off;
        p->top = *off + size;
        p->n--;
    } else {
        *off = p->top;
        p->top += size;
    }
    return p->top >= size;
}

static bool plan_free(planner *p, size_t off, size_t size) {
    size = align_up(size);
    int i = 0;
    while (i < p->n && p->free[i].off < off) i++;
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 16;
        span *f = realloc(p->free, (size_t)cap * sizeof *f);
        if (!f) return false;
        p->free = f;
        p->cap = cap;
    }
    memmove(&p->free[i + 1], &p->free[i], (size_t)(p->n - i) * sizeof(span));
    p->free[i] = (span){off, size};
    p->n++;
    /* coalesce with the next, then with the previous */
    if (i + 1 < p->n && p->free[i].off + p->free[i].size == p->free[i + 1].off) {
        p->free[i].size += p->free[i + 1].size;
        memmove(&p->free[i + 1], &p->free[i + 2], (size_t)(p->n - i - 2) * sizeof(span));
        p->n--;
    }
    if (i > 0 && p->free[i - 1].off + p->free[i - 1].size == p->free[i].off) {
        p->free[i - 1].size += p->free[i].size;
        memmove(&p->free[i], &p->free[i + 1], (size_t)(p->n - i - 1) * sizeof(span));
        p->n--;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Realize                                                                  */
/* ------------------------------------------------------------------------ */

/* Every leaf gets storage (kept from then on), so any input can be
 * uploaded after a realize, whichever graph it feeds. A borrowed leaf on a
 * device backend is copied there once, from the mapped file. */
static int alloc_leaves(tnn_session *s) {
    for (int32_t i = 0; i < s->n_tensors; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (t->op != TNN_OP_NONE || t->data) continue;
        t->data = s->backend->alloc(t->nbytes);
        if (!t->data) /* reported as tnn_realize's failure: the caller's function */
            return tnn__error(TNN_ERR_NOMEM, "tnn_realize",
                              "out of memory for leaf tensor #%d (%zu bytes)", t->id, t->nbytes);
        if (t->host_data) {
            int rc = s->backend->copy_in(t->data, t->host_data, t->nbytes);
            if (rc) {
                s->backend->free(t->data);
                t->data = NULL;
                return rc;
            }
        }
    }
    return TNN_OK;
}

/* A tensor whose value survives compute: the realized result, or one marked
 * with tnn_set_output (gradients and losses are marked by tnn_backward). */
static bool kept(const tnn_session *s, const tnn_tensor *t) {
    return t == s->result || (t->flags & TNN_FLAG_OUTPUT);
}

/* The tensor whose buffer t lives in: t, or for an alias (an in-place
 * update, a view) the tensor under it. */
static tnn_tensor *buffer_of(tnn_tensor *t) {
    while (t && (t->flags & TNN_FLAG_ALIAS)) t = t->src[0];
    return t;
}

/* Every node's last reader in the plan; a reader of an alias also reads
 * the tensors under it. */
static void last_uses(tnn_tensor **plan, int32_t np) {
    for (int32_t i = 0; i < np; i++) plan[i]->last_use = -1;
    for (int32_t i = 0; i < np; i++)
        for (int k = 0; k < TNN_MAX_SRC; k++)
            for (tnn_tensor *u = plan[i]->src[k]; u; u = (u->flags & TNN_FLAG_ALIAS) ? u->src[0] : NULL)
                u->last_use = i;
}

/* Whether node t (plan[i]) can be written over its source k: that source
 * is a node (or a node itself written in place) read for the last time
 * here, not kept, of t's size, and its buffer is none of t's other
 * sources'. */
static bool inplace_ok(const tnn_session *s, const tnn_tensor *t, int k, int32_t i) {
    const tnn_tensor *u = t->src[k];
    if (u->op == TNN_OP_NONE || ((u->flags & TNN_FLAG_ALIAS) && !(u->flags & TNN_FLAG_INPLACE)) ||
        kept(s, u) || u->last_use != i || u->dtype != t->dtype || u->nbytes != t->nbytes ||
        u->aux_bytes)
        return false;
    for (int q = 0; q < TNN_MAX_SRC; q++)
        if (q != k && t->src[q] && buffer_of(t->src[q]) == buffer_of((tnn_tensor *)u)) return false;
    return true;
}

/* Nodes written over a source read for the last time by them: gradient
 * sums (same-shape adds made by tnn_backward) over their running sum or
 * new term, the operands swapped so that it is src[0] (the same bits: a
 * float add commutes); cross-entropy's gradient over the logits (its
 * kernels read each value before writing it). Such a node becomes an alias
 * of its src[0]. */
static void plan_inplace(tnn_session *s, tnn_tensor **plan, int32_t np) {
    for (int32_t i = 0; i < np; i++) {
        tnn_tensor *t = plan[i];
        if (t->op == TNN_OP_CROSS_ENTROPY_BACK && t->dtype == TNN_F32 &&
            t->src[0]->nelem == t->nelem && inplace_ok(s, t, 0, i)) {
            t->src[0]->flags |= TNN_FLAG_TRANSIENT;
            t->flags |= TNN_FLAG_ALIAS | TNN_FLAG_INPLACE;
            continue;
        }
        if (t->op != TNN_OP_ADD || !(t->flags & TNN_FLAG_ACCUM) || t->dtype != TNN_F32 ||
            t->src[0]->nelem != t->nelem || t->src[1]->nelem != t->nelem)
            continue;
        int k = inplace_ok(s, t, 0, i) ? 0 : inplace_ok(s, t, 1, i) ? 1 : -1;
        if (k < 0) continue;
        if (k == 1) {
            tnn_tensor *u = t->src[0];
            t->src[0] = t->src[1];
            t->src[1] = u;
        }
        t->src[0]->flags |= TNN_FLAG_TRANSIENT; /* its value is gone once t has run */
        t->flags |= TNN_FLAG_ALIAS | TNN_FLAG_INPLACE;
    }
}

/* Plans the arena for the nodes of `plan` in order. A buffer is reused
 * once its last reader has run (a reader of an alias reads the buffer under
 * it; a kept alias keeps it); with a backend that may run a node together
 * with the next one (fuse_next), one node later, so the pair's output never
 * lands on the first node's inputs. */
static int plan_arena(tnn_session *s, tnn_tensor **plan, int32_t np, size_t *size) {
    planner p = {0};
    int rc = TNN_OK;
    tnn_tensor *due[TNN_MAX_SRC + 1], *late[TNN_MAX_SRC + 1]; /* buffers to free */
    int n_due = 0, n_late = 0;
    bool delay = s->backend->fuse_next;
    last_uses(plan, np);
    plan_inplace(s, plan, np);
    last_uses(plan, np); /* again, through the sums now written in place */
    for (int32_t i = 0; i < np; i++)
        if ((plan[i]->flags & TNN_FLAG_ALIAS) && kept(s, plan[i]))
            buffer_of(plan[i])->last_use = INT32_MAX; /* never freed */
    for (int32_t i = 0; i <= np && rc == TNN_OK; i++) {
        tnn_tensor *t = i < np ? plan[i] : NULL;
        size_t off = 0;
        if (t && !(t->flags & TNN_FLAG_ALIAS)) {
            if (!plan_alloc(&p, t->nbytes + t->aux_bytes, &off)) {
                rc = TNN_ERR(TNN_ERR_OVERFLOW, "arena size overflows at node #%d", t->id);
                break;
            }
            t->arena_off = (int64_t)off;
        }
        /* the previous node's frees, when delayed */
        for (int k = 0; k < n_late && rc == TNN_OK; k++)
            if (!plan_free(&p, (size_t)late[k]->arena_off, late[k]->nbytes + late[k]->aux_bytes))
                rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory planning buffers");
        n_late = 0;
        if (!t) continue;
        n_due = 0;
        for (int k = 0; k < TNN_MAX_SRC; k++) {
            tnn_tensor *src = buffer_of(t->src[k]);
            if (!src || src->op == TNN_OP_NONE || kept(s, src) || src->last_use != i) continue;
            bool dup = false; /* the same buffer twice: free once */
            for (int q = 0; q < k; q++) dup |= buffer_of(t->src[q]) == src;
            if (dup) continue;
            src->flags |= TNN_FLAG_TRANSIENT;
            due[n_due++] = src;
        }
        /* A node nobody reads and nobody keeps: its memory is reused at once
         * (an alias has none of its own). */
        if (!(t->flags & TNN_FLAG_ALIAS) && t->last_use < 0 && !kept(s, t)) {
            t->flags |= TNN_FLAG_TRANSIENT;
            due[n_due++] = t;
        }
        for (int k = 0; k < n_due && rc == TNN_OK; k++) {
            if (delay)
                late[n_late++] = due[k];
            else if (!plan_free(&p, (size_t)due[k]->arena_off, due[k]->nbytes + due[k]->aux_bytes))
                rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory planning buffers");
        }
    }
    free(p.free);
    *size = p.top;
    return rc;
}

int tnn_realize(tnn_session *s, tnn_tensor *result) {
    if (tnn__check_session(s, __func__)) return tnn_last_status();
    if (tnn__check_tensor(s, result, __func__, "result")) return tnn_last_status();
    tnn__release_plan(s);
    s->result = result;

    int32_t n = s->n_tensors;
    bool *needed = calloc((size_t)n, sizeof *needed);
    tnn_tensor **plan = malloc((size_t)n * sizeof *plan);
    int rc = TNN_OK;
    if (!needed || !plan) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory planning %d tensors", n);
    for (int32_t i = n - 1; i >= 0 && rc == TNN_OK; i--) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        if (kept(s, t)) needed[i] = true;
        if (!needed[i]) continue;
        for (int k = 0; k < TNN_MAX_SRC; k++)
            if (t->src[k]) needed[t->src[k]->id] = true;
    }
    if (rc == TNN_OK) rc = alloc_leaves(s);
    int32_t np = 0;
    for (int32_t i = 0; i < n && rc == TNN_OK; i++) {
        tnn_tensor *t = tnn__tensor_at(s, i);
        t->last_use = -1;
        if (needed[i] && t->op != TNN_OP_NONE) plan[np++] = t;
    }
    free(needed);
    size_t arena_size = 0;
    if (rc == TNN_OK) rc = plan_arena(s, plan, np, &arena_size);
    if (rc == TNN_OK && arena_size > 0) {
        s->arena = s->backend->alloc(arena_size);
        if (!s->arena)
            rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory for a %zu-byte arena", arena_size);
    }
    if (rc != TNN_OK) {
        free(plan);
        tnn__release_plan(s);
        return rc;
    }
    s->arena_size = arena_size;
    for (int32_t i = 0; i < np; i++) {
        tnn_tensor *t = plan[i];
        if (!(t->flags & TNN_FLAG_ALIAS))
            t->data = (char *)s->arena + t->arena_off;
        else /* a view starts iparam[0] elements into its source */
            t->data = (char *)t->src[0]->data +
                      (t->op == TNN_OP_VIEW ? (size_t)t->iparam[0] * tnn__dtype_size(t->dtype) : 0);
    }
    s->plan = plan;
    s->n_plan = np;
    s->realized = true;
    tnn__log(TNN_LOG_DEBUG, "realize: %d nodes, arena %zu bytes", np, arena_size);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Compute                                                                  */
/* ------------------------------------------------------------------------ */

/* The plan, or the part s->part marks, then the optimizer step when asked. */
static int run(tnn_session *s, bool step) {
    if (s->backend->run_plan) {
        int rc = s->backend->run_plan(s);
        if (rc != TNN_OK) return rc;
    } else {
        for (int32_t i = 0; i < s->n_plan; i++) {
            int rc = s->part && !s->part[i] ? TNN_OK : s->backend->run(s->plan[i]);
            if (rc != TNN_OK) return rc;
        }
    }
    if (step && s->optim && s->backend->step) {
        int rc = tnn__optim_queue(s);
        if (rc != TNN_OK) return rc;
    }
    if (s->backend->finish) {
        int rc = s->backend->finish(s);
        if (rc != TNN_OK) return rc;
    }
    if (step && s->optim) return tnn__optim_step(s);
    return TNN_OK;
}

int tnn_compute(tnn_session *s) {
    if (tnn__check_session(s, __func__)) return tnn_last_status();
    if (!s->realized)
        return TNN_ERR(TNN_ERR_STATE, "the session has no realized graph: call tnn_realize first");
    return run(s, true);
}

/* Marks the plan nodes t depends on (the plan is in creation order, so one
 * walk back from t finds them all). */
static int part_for(tnn_session *s, tnn_tensor *t) {
    if (s->part_of == t) return TNN_OK;
    bool *needed = calloc((size_t)s->n_tensors, sizeof *needed);
    uint8_t *mask = s->part_mask ? s->part_mask : malloc(s->n_plan > 0 ? (size_t)s->n_plan : 1);
    if (!needed || !mask) {
        free(needed);
        if (mask != s->part_mask) free(mask);
        return TNN_ERR(TNN_ERR_NOMEM, "out of memory marking %d nodes", s->n_plan);
    }
    s->part_mask = mask;
    needed[t->id] = true;
    for (int32_t i = s->n_plan - 1; i >= 0; i--) {
        tnn_tensor *n = s->plan[i];
        mask[i] = needed[n->id];
        if (!mask[i]) continue;
        for (int k = 0; k < TNN_MAX_SRC; k++)
            if (n->src[k]) needed[n->src[k]->id] = true;
    }
    free(needed);
    s->part_of = t;
    return TNN_OK;
}

int tnn_compute_to(tnn_session *s, tnn_tensor *t) {
    if (tnn__check_session(s, __func__)) return tnn_last_status();
    if (tnn__check_tensor(s, t, __func__, "t")) return tnn_last_status();
    if (!s->realized)
        return TNN_ERR(TNN_ERR_STATE, "the session has no realized graph: call tnn_realize first");
    if (!kept(s, t))
        return TNN_ERR(TNN_ERR_ARG,
                       "tensor #%d is neither the realized result nor marked with "
                       "tnn_set_output: its value would not be kept",
                       t->id);
    int rc = part_for(s, t);
    if (rc != TNN_OK) return rc;
    s->part = s->part_mask;
    rc = run(s, false);
    s->part = NULL;
    return rc;
}
