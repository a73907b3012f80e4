/* bench_common.h - the small helpers every benchmark program uses: a
 * monotonic clock, a comparison for qsort, an aligned allocation that ends
 * the program when memory runs out, and making the folders of a results
 * path. Header-only (each bench is one file).
 */
#ifndef TNN_BENCH_COMMON_H
#define TNN_BENCH_COMMON_H

#include <errno.h>
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
