/* backend_cpu.c - the CPU backend: host memory, nodes run by the op table's
 * kernels on the process-wide thread pool. */
#include "../core/internal.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Small buffers come from malloc and are zeroed; large ones are anonymous
 * mappings, which the kernel hands out zeroed and commits page by page, so a
 * big arena costs no up-front pass over its memory. A 64-byte header before
 * the returned pointer says which kind it is. */
#define CPU_HDR 64
#define CPU_MMAP_MIN ((size_t)1 << 20)

static void *cpu_alloc(size_t nbytes) {
    size_t n = (nbytes + 63) & ~(size_t)63;
    if (n < nbytes || n > SIZE_MAX - CPU_HDR) return NULL;
    n += CPU_HDR;
    char *p;
    if (n >= CPU_MMAP_MIN) {
        void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return NULL;
        p = m;
    } else {
        p = aligned_alloc(64, n);
        if (!p) return NULL;
        memset(p, 0, n);
    }
    memcpy(p, &n, sizeof n);
    return p + CPU_HDR;
}

static void cpu_free(void *q) {
    if (!q) return;
    char *p = (char *)q - CPU_HDR;
    size_t n;
    memcpy(&n, p, sizeof n);
    if (n >= CPU_MMAP_MIN)
        munmap(p, n);
    else
        free(p);
}

static int cpu_copy(void *dst, const void *src, size_t nbytes) {
    memcpy(dst, src, nbytes);
    return TNN_OK;
}

static bool cpu_supports(const tnn_tensor *t) { return tnn__ops[t->op].forward != NULL; }

static int cpu_run(tnn_tensor *t) { return tnn__ops[t->op].forward(t); }

/* Fusion switch: -1 until read from TNN_CPU_FUSE (on unless "0"). */
static _Atomic int fuse_on = -1;
static _Atomic long long fused_pairs; /* pairs run fused, for the tests */
static _Atomic long long fused_sets;  /* sets of products run as one */

long long tnn__cpu_fused_pairs(void) { return atomic_load(&fused_pairs); }
long long tnn__cpu_fused_sets(void) { return atomic_load(&fused_sets); }

void tnn__cpu_set_fuse(int on) { atomic_store(&fuse_on, on < 0 ? -1 : on != 0); }

static bool fusing(void) {
    int on = atomic_load(&fuse_on);
    if (on < 0) {
        const char *e = getenv("TNN_CPU_FUSE");
        on = !(e && !strcmp(e, "0"));
        atomic_store(&fuse_on, on);
    }
    return on;
}

/* The plan in order (or the nodes s->part marks); a product followed by an
 * element-wise node that reads it runs that node as its epilogue, on each
 * block of the product's output while the block is still in cache (the same
 * bits as two passes). The planner keeps a node's inputs one node longer
 * (fuse_next), so the second node's output never lands on the product's
 * inputs: only neighbours in the whole plan are fused. Products of one x
 * through the quantized matrix-vector kernels run first as one set
 * (tnn__fwd_qmm_set), then the nodes between them. */
static int cpu_run_plan(tnn_session *s) {
    bool fuse = fusing();
    const uint8_t *part = s->part; /* tnn_compute_to: only the nodes it marks */
    for (int32_t i = 0; i < s->n_plan; i++) {
        tnn_tensor *t = s->plan[i];
        if (part && !part[i]) continue;
        unsigned members = 0;
        int rc = fuse ? tnn__fwd_qmm_set(s->plan, s->n_plan, i, part, &members) : 0;
        if (rc > 0) { /* a set of products ran: now the nodes between them */
            atomic_fetch_add(&fused_sets, 1);
            int span = rc;
            for (int m = 1; m < span && rc >= 0; m++)
                if (!(members & 1u << m)) rc = cpu_run(s->plan[i + m]);
            if (rc < 0) return rc;
            i += span - 1;
            continue;
        }
        if (rc == 0 && fuse && i + 1 < s->n_plan && (!part || part[i + 1]))
            rc = tnn__fwd_matmul_then(t, s->plan[i + 1]);
        if (rc > 0)
            i += rc - 1, atomic_fetch_add(&fused_pairs, 1);
        else if (rc == 0)
            rc = cpu_run(t);
        if (rc < 0) return rc;
    }
    return TNN_OK;
}

const tnn_backend tnn__cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .supports = cpu_supports,
    .run = cpu_run,
    .host_memory = true,
    .fuse_next = true,
    .run_plan = cpu_run_plan,
};
