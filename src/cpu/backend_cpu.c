/* backend_cpu.c - the CPU backend: host memory, nodes run by the op table's
 * kernels on the process-wide thread pool. */
#include "../core/internal.h"

#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(size_t nbytes) {
    size_t n = (nbytes + 63) & ~(size_t)63;
    if (n < nbytes) return NULL;
    if (n == 0) n = 64;
    void *p = aligned_alloc(64, n);
    if (p) memset(p, 0, n);
    return p;
}

static void cpu_free(void *p) { free(p); }

static int cpu_copy(void *dst, const void *src, size_t nbytes) {
    memcpy(dst, src, nbytes);
    return TNN_OK;
}

static bool cpu_supports(const tnn_tensor *t) { return tnn__ops[t->op].forward != NULL; }

static int cpu_run(tnn_tensor *t) { return tnn__ops[t->op].forward(t); }

const tnn_backend tnn__cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .supports = cpu_supports,
    .run = cpu_run,
};
