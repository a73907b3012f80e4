/* bench_common.h - the small helpers every benchmark program uses: a
 * monotonic clock, a comparison for qsort, an aligned allocation that ends
 * the program when memory runs out, the triad the memory-bound figures are
 * held to, and making the folders of a results path. Header-only (each
 * bench is one file).
 */
#ifndef TNN_BENCH_COMMON_H
#define TNN_BENCH_COMMON_H

#include "cpu/pool.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Seconds on the monotonic clock. */
static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* qsort order of doubles, ascending. */
static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* n bytes, 64-byte aligned; exits with a message when memory runs out. */
static inline void *bench_xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) & ~(size_t)63);
    if (!p) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* The triad a[i] = b[i] + 3 c[i] over n floats an array, split over the
 * thread pool as the kernels are: the streaming bandwidth the cores have
 * now. bench_triad_new fills the arrays (exits when memory runs out). */
typedef struct {
    float *a, *b, *c;
    int64_t n;
} bench_triad;

static inline bench_triad bench_triad_new(int64_t n) {
    bench_triad t = {bench_xalloc((size_t)n * 4), bench_xalloc((size_t)n * 4),
                     bench_xalloc((size_t)n * 4), n};
    for (int64_t i = 0; i < n; i++) t.a[i] = 0, t.b[i] = 1, t.c[i] = 2;
    return t;
}

static inline void bench_triad_free(bench_triad *t) {
    free(t->a), free(t->b), free(t->c);
    t->a = t->b = t->c = NULL;
}

static inline void bench_triad_range(void *p, int64_t lo, int64_t hi) {
    bench_triad *t = p;
    for (int64_t i = lo; i < hi; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
}

/* One pass over all threads; GB/s moved (three arrays). */
static inline double bench_triad_once(bench_triad *t) {
    double t0 = bench_now();
    tnn__parallel_for(t->n, 1 << 16, bench_triad_range, t);
    return 3.0 * (double)t->n * 4 / (bench_now() - t0) / 1e9;
}

/* Creates the folders above the file `path` (like mkdir -p of its dirname).
 * 0, or -1 when one cannot be made. */
static inline int bench_mkdirs(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return -1;
        *p = '/';
    }
    return 0;
}

/* Opens the JSON results file `path` (its folders made) and writes the
 * opening of its object: "bench", "date" (UTC) and "host"; the caller adds
 * its own keys and the "results" array. NULL (with a message) on failure. */
static inline FILE *bench_json_open(const char *path, const char *bench) {
    FILE *f = bench_mkdirs(path) ? NULL : fopen(path, "w");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        return NULL;
    }
    char host[256] = "?", date[64];
    gethostname(host, sizeof host);
    time_t t = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    fprintf(f, "{\n  \"bench\": \"%s\",\n  \"date\": \"%s\",\n  \"host\": \"%s\",\n", bench,
            date, host);
    return f;
}

/* Ends the "results" array and the object, closes f and says where it went. */
static inline void bench_json_close(FILE *f, const char *path) {
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("\nwrote %s\n", path);
}

#endif
