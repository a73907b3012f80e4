/* backend_cpu.c - the CPU backend: host memory, nodes run by the op table's
 * kernels on the process-wide thread pool. */
#include "../core/internal.h"

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

const tnn_backend tnn__cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_in = cpu_copy,
    .copy_out = cpu_copy,
    .supports = cpu_supports,
    .run = cpu_run,
    .host_memory = true,
};
