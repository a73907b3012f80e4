/* harness.h - the tiny shared test harness: checks that count failures,
 * a deterministic RNG, a double-precision comparison, and the closing line
 * "N passed, N failed" that CI reads. A test program returns non-zero when
 * any check failed.
 */
#ifndef TNN_TEST_HARNESS_H
#define TNN_TEST_HARNESS_H

#include "tinynn.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int th_pass, th_fail;

#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            th_pass++;                                                                        \
        } else {                                                                              \
            th_fail++;                                                                        \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                     \
            fprintf(stderr, "\n");                                                            \
        }                                                                                     \
    } while (0)

/* A call that must succeed; prints the library's error when it does not. */
#define CHECK_OK(expr)                                                                        \
    do {                                                                                      \
        int rc_ = (expr);                                                                     \
        CHECK(rc_ == TNN_OK, "%s -> %s: %s", #expr, tnn_status_name(rc_), tnn_last_error());  \
    } while (0)

/* A call that must fail with `status` and leave a message mentioning `needle`. */
#define CHECK_ERR(expr, status, needle)                                                       \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        int rc_ = (expr);                                                                     \
        CHECK(rc_ == (status) && strstr(tnn_last_error(), (needle)) != NULL,                  \
              "%s -> %s (want %s), message \"%s\" (want \"%s\")", #expr,                      \
              tnn_status_name(rc_), tnn_status_name(status), tnn_last_error(), needle);       \
    } while (0)

/* A constructor that must fail (NULL) with `status` and a message with `needle`. */
#define CHECK_NULL(expr, status, needle)                                                      \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        const void *p_ = (expr);                                                              \
        CHECK(p_ == NULL && tnn_last_status() == (status) &&                                  \
                  strstr(tnn_last_error(), (needle)) != NULL,                                 \
              "%s -> %p, status %s (want %s), message \"%s\" (want \"%s\")", #expr, p_,       \
              tnn_status_name(tnn_last_status()), tnn_status_name(status), tnn_last_error(),  \
              needle);                                                                        \
    } while (0)

static inline int th_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, th_pass, th_fail);
    return th_fail ? 1 : 0;
}

/* xorshift64*: the same numbers on every machine. */
static uint64_t th_rng = 0x9E3779B97F4A7C15ull;
/* Whether files a and b both open and hold the same bytes. */
static inline bool th_same_file(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    bool same = fa && fb;
    for (int ca = 0, cb = 0; same && ca != EOF;) {
        ca = fgetc(fa), cb = fgetc(fb);
        same = ca == cb;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static inline void th_seed(uint64_t s) { th_rng = s ? s : 1; }
static inline double th_uniform(void) {
    th_rng ^= th_rng >> 12;
    th_rng ^= th_rng << 25;
    th_rng ^= th_rng >> 27;
    return (double)((th_rng * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}
/* Uniform in [-r, r). */
static inline double th_sym(double r) { return (2.0 * th_uniform() - 1.0) * r; }
static inline void th_fill(double *x, size_t n, double r) {
    for (size_t i = 0; i < n; i++) x[i] = th_sym(r);
}
/* Values exactly representable in f32, so references see what the library sees. */
static inline void th_fill_f32(double *x, size_t n, double r) {
    for (size_t i = 0; i < n; i++) x[i] = (double)(float)th_sym(r);
}

/* max |a-b| / (atol + rtol*|b|) over n values; <= 1 means within tolerance. */
static inline double th_err(const double *a, const double *b, size_t n, double atol, double rtol) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(e <= worst)) worst = e; /* NaN counts as worst */
        if (isnan(e)) return INFINITY;
    }
    return worst;
}

static inline double *th_alloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "out of memory in a test\n");
        exit(2);
    }
    return p;
}

/* A test built a second time with TNN_TEST_CUDA (tests/CMakeLists.txt)
 * runs its models on the CUDA backend: the GPU, or the CPU emulator build.
 * Without a CUDA backend it reports itself skipped (exit 77). */
#ifdef TNN_TEST_CUDA
#include "llm/model.h"
static inline void th_use_cuda(const char *name) {
    lm_use_cuda(true);
    tnn_set_log_level(TNN_LOG_ERROR);
    tnn_session *s = tnn_session_new(1);
    bool ok = s && strcmp(tnn_session_backend(s), "cuda") == 0;
    tnn_session_free(s);
    if (!ok) {
        printf("%s: skipped (no CUDA backend or no GPU)\n", name);
        exit(77);
    }
}
#define TH_USE_CUDA(name) th_use_cuda(name)
#define TH_BACKEND 1 /* the sessions a test makes for its ops */
#else
#define TH_USE_CUDA(name) ((void)0)
#define TH_BACKEND 0
#endif

#endif
