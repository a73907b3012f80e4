/* test_errors.c - bad input: every public function is called with NULL
 * handles, NULL arrays, zero and negative sizes, mismatched shapes, wrong
 * dtypes, out-of-range indices, overflowing size products, the wrong call
 * order, transfers of the wrong length, and handles of a freed or of another
 * session. Each call must fail with the right status and a message naming
 * the function and the argument, change nothing, print nothing, and leave
 * the session usable.
 */
#define _POSIX_C_SOURCE 200809L /* dup, dup2, fileno: to watch stdout/stderr */

#include "harness.h"

#include <limits.h>
#include <sys/resource.h>
#include <unistd.h>

/* Sanitizers that reserve a large shadow address space (and ASan aborts on
 * a huge request instead of returning NULL): the out-of-memory test skips. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TEST_UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
#define TEST_UNDER_SANITIZER 1
#endif
#endif

/* ------------------------------------------------------------------------ */
/* Checks on top of the harness                                             */
/* ------------------------------------------------------------------------ */

static int msg_has(const char *n1, const char *n2) {
    const char *m = tnn_last_error();
    return strstr(m, n1) != NULL && strstr(m, n2) != NULL;
}

/* An int-returning call that must return `status`, record it as the last
 * status, and leave a message that mentions both n1 and n2 (typically the
 * function and the argument). */
#define CHECK_ERR2(expr, status, n1, n2)                                                      \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        long long rc_ = (long long)(expr);                                                    \
        CHECK(rc_ == (status) && tnn_last_status() == (status) && msg_has(n1, n2),            \
              "%s -> %lld %s (want %s), message \"%s\" (want \"%s\" and \"%s\")", #expr, rc_, \
              tnn_status_name((int)rc_), tnn_status_name(status), tnn_last_error(), n1, n2);  \
    } while (0)

/* A call whose return value is not a status (an accessor, scratch_get):
 * it must return `ret` and set `status` with a message naming n1 and n2. */
#define CHECK_RET2(expr, ret, status, n1, n2)                                                 \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        int ok_ = (expr) == (ret);                                                            \
        CHECK(ok_ && tnn_last_status() == (status) && msg_has(n1, n2),                        \
              "%s: return ok %d, status %s (want %s), message \"%s\" (want \"%s\", \"%s\")",  \
              #expr, ok_, tnn_status_name(tnn_last_status()), tnn_status_name(status),        \
              tnn_last_error(), n1, n2);                                                      \
    } while (0)

/* A constructor that must return NULL with `status` and a message naming n1 and n2. */
#define CHECK_NULL2(expr, status, n1, n2)                                                     \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        const void *p_ = (expr);                                                              \
        CHECK(p_ == NULL && tnn_last_status() == (status) && msg_has(n1, n2),                 \
              "%s -> %p, status %s (want %s), message \"%s\" (want \"%s\" and \"%s\")",       \
              #expr, p_, tnn_status_name(tnn_last_status()), tnn_status_name(status),         \
              tnn_last_error(), n1, n2);                                                      \
    } while (0)

/* A void call (kept void for the seed ABI) that must leave `status` and a message. */
#define CHECK_VOID2(stmt, status, n1, n2)                                                     \
    do {                                                                                      \
        tnn_clear_error();                                                                    \
        stmt;                                                                                 \
        CHECK(tnn_last_status() == (status) && msg_has(n1, n2),                               \
              "%s: status %s (want %s), message \"%s\" (want \"%s\" and \"%s\")", #stmt,      \
              tnn_status_name(tnn_last_status()), tnn_status_name(status), tnn_last_error(),  \
              n1, n2);                                                                        \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Log capture                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    int n;              /* lines received */
    int level;          /* level of the last line */
    char last[1024];    /* the last line */
} log_capture;

static log_capture logs;

static void capture_log(int level, const char *msg, void *user) {
    log_capture *c = user;
    c->n++;
    c->level = level;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

static void log_reset(void) {
    logs.n = 0;
    logs.level = -1;
    logs.last[0] = '\0';
}

/* ------------------------------------------------------------------------ */
/* "The session still works": a small graph on fresh leaves, run and checked */
/* ------------------------------------------------------------------------ */

/* y = (a + b) * 3 on 2 x 3 leaves; the values are exact in f32. */
static void check_works(tnn_session *s, const char *after) {
    tnn_clear_error();
    tnn_tensor *a = tnn_input_2d_f32(s, 2, 3), *b = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *sum = a && b ? tnn_add(s, a, b) : NULL;
    tnn_tensor *y = sum ? tnn_scale(s, sum, 3.0) : NULL;
    double va[6] = {1, 2, 3, -4, 5.5, -6}, vb[6] = {0.5, 0.25, -1, 2, 0, 8}, got[6] = {0};
    int rc = y ? tnn_realize(s, y) : tnn_last_status();
    if (rc == TNN_OK) rc = tnn_upload_from_float_array(s, a, va, 6);
    if (rc == TNN_OK) rc = tnn_upload_from_float_array(s, b, vb, 6);
    if (rc == TNN_OK) rc = tnn_compute(s);
    if (rc == TNN_OK) rc = tnn_download_to_f64_array(s, y, got, 6);
    CHECK(rc == TNN_OK, "session unusable after %s: %s %s", after, tnn_status_name(rc),
          tnn_last_error());
    for (int i = 0; i < 6 && rc == TNN_OK; i++)
        CHECK(got[i] == (va[i] + vb[i]) * 3.0, "after %s: y[%d] = %g, want %g", after, i, got[i],
              (va[i] + vb[i]) * 3.0);
}

/* ------------------------------------------------------------------------ */
/* Op builders, table-driven where the signatures allow                     */
/* ------------------------------------------------------------------------ */

typedef tnn_tensor *(*binary_fn)(tnn_session *, tnn_tensor *, tnn_tensor *);
typedef tnn_tensor *(*unary_fn)(tnn_session *, tnn_tensor *);

static tnn_tensor *scale_by_2(tnn_session *s, tnn_tensor *a) { return tnn_scale(s, a, 2.0); }
static tnn_tensor *rms_norm_nogain(tnn_session *s, tnn_tensor *x) {
    return tnn_rms_norm(s, x, NULL, 1e-5);
}
static tnn_tensor *rms_norm_back_eps(tnn_session *s, tnn_tensor *dy, tnn_tensor *x) {
    return tnn_rms_norm_back(s, dy, x, 1e-5);
}

static const struct {
    const char *name, *a, *b; /* function, names of its two tensor arguments */
    binary_fn fn;
} binary_ops[] = {
    {"tnn_add", "'a'", "'b'", tnn_add},
    {"tnn_sub", "'a'", "'b'", tnn_sub},
    {"tnn_mul", "'a'", "'b'", tnn_mul},
    {"tnn_matmul", "'a'", "'b'", tnn_matmul},
    {"tnn_matmul_nn", "'a'", "'b'", tnn_matmul_nn},
    {"tnn_matmul_nt", "'a'", "'b'", tnn_matmul_nt},
    {"tnn_matmul_tn", "'a'", "'b'", tnn_matmul_tn},
    {"tnn_softmax_back", "'dy'", "'y'", tnn_softmax_back},
    {"tnn_silu_back", "'x'", "'dy'", tnn_silu_back},
    {"tnn_gelu_back", "'x'", "'dy'", tnn_gelu_back},
    {"tnn_rms_norm_back", "'dy'", "'x'", rms_norm_back_eps},
};
#define N_BINARY (int)(sizeof binary_ops / sizeof binary_ops[0])

static const struct {
    const char *name;
    unary_fn fn;
} unary_ops[] = {
    {"tnn_scale", scale_by_2},        {"tnn_gelu", tnn_gelu},       {"tnn_silu", tnn_silu},
    {"tnn_softmax", tnn_softmax},     {"tnn_transpose", tnn_transpose},
    {"tnn_rms_norm", rms_norm_nogain}, {"tnn_sum", tnn_sum},     {"tnn_mean", tnn_mean},
    {"tnn_to_bf16", tnn_to_bf16},
};
#define N_UNARY (int)(sizeof unary_ops / sizeof unary_ops[0])

/* ------------------------------------------------------------------------ */
/* Version, status names, the error slot                                    */
/* ------------------------------------------------------------------------ */

static void test_version_and_status(void) {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", TNN_VERSION_MAJOR, TNN_VERSION_MINOR,
             TNN_VERSION_PATCH);
    CHECK(tnn_version() && strcmp(tnn_version(), want) == 0, "tnn_version() = \"%s\", want %s",
          tnn_version() ? tnn_version() : "(null)", want);
    CHECK(tnn_version_number() == TNN_VERSION_NUMBER, "tnn_version_number() = %d, want %d",
          tnn_version_number(), TNN_VERSION_NUMBER);
    CHECK(TNN_VERSION_NUMBER ==
              TNN_VERSION_MAJOR * 10000 + TNN_VERSION_MINOR * 100 + TNN_VERSION_PATCH,
          "TNN_VERSION_NUMBER = %d", TNN_VERSION_NUMBER);

    static const struct {
        int status;
        const char *name;
    } names[] = {
        {TNN_OK, "TNN_OK"},
        {TNN_ERR_ARG, "TNN_ERR_ARG"},
        {TNN_ERR_SHAPE, "TNN_ERR_SHAPE"},
        {TNN_ERR_RANGE, "TNN_ERR_RANGE"},
        {TNN_ERR_STATE, "TNN_ERR_STATE"},
        {TNN_ERR_NOMEM, "TNN_ERR_NOMEM"},
        {TNN_ERR_OVERFLOW, "TNN_ERR_OVERFLOW"},
        {TNN_ERR_UNSUPPORTED, "TNN_ERR_UNSUPPORTED"},
        {TNN_ERR_IO, "TNN_ERR_IO"},
        {TNN_ERR_FORMAT, "TNN_ERR_FORMAT"},
        {TNN_ERR_INTERNAL, "TNN_ERR_INTERNAL"},
        {TNN_ERR_DEVICE, "TNN_ERR_DEVICE"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *got = tnn_status_name(names[i].status);
        CHECK(got && strcmp(got, names[i].name) == 0, "tnn_status_name(%d) = \"%s\", want %s",
              names[i].status, got ? got : "(null)", names[i].name);
    }
    /* The values are part of the ABI. */
    CHECK(TNN_ERR_ARG == -1 && TNN_ERR_SHAPE == -2 && TNN_ERR_RANGE == -3 &&
              TNN_ERR_STATE == -4 && TNN_ERR_NOMEM == -5 && TNN_ERR_OVERFLOW == -6 &&
              TNN_ERR_UNSUPPORTED == -7 && TNN_ERR_IO == -8 && TNN_ERR_FORMAT == -9 &&
              TNN_ERR_INTERNAL == -10 && TNN_ERR_DEVICE == -11,
          "status values moved");
    const int unknown[] = {1, 7, -12, -100, INT_MIN, INT_MAX};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *got = tnn_status_name(unknown[i]);
        CHECK(got && strcmp(got, "unknown") == 0, "tnn_status_name(%d) = \"%s\", want unknown",
              unknown[i], got ? got : "(null)");
    }

    /* The error slot: set by a failure, forgotten by tnn_clear_error. */
    CHECK_NULL2(tnn_input_1d_f32(NULL, 3), TNN_ERR_ARG, "tnn_input_1d_f32", "session");
    tnn_clear_error();
    CHECK(tnn_last_status() == TNN_OK && strcmp(tnn_last_error(), "") == 0,
          "after tnn_clear_error: status %d, message \"%s\"", tnn_last_status(),
          tnn_last_error());
}

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

/* Points fd (1 or 2) at a temporary file; returns the saved fd or -1. */
static int redirect_begin(int fd, FILE **tmp) {
    fflush(stdout);
    fflush(stderr);
    *tmp = tmpfile();
    if (!*tmp) return -1;
    int saved = dup(fd);
    if (saved < 0 || dup2(fileno(*tmp), fd) < 0) {
        fclose(*tmp);
        return -1;
    }
    return saved;
}

/* Restores fd and returns what was written to it (at most n-1 bytes in buf). */
static long redirect_end(int fd, int saved, FILE *tmp, char *buf, size_t n) {
    fflush(stdout);
    fflush(stderr);
    dup2(saved, fd);
    close(saved);
    long len = ftell(tmp) >= 0 ? (fseek(tmp, 0, SEEK_END), ftell(tmp)) : -1;
    rewind(tmp);
    size_t got = fread(buf, 1, n - 1, tmp);
    buf[got] = '\0';
    fclose(tmp);
    return len;
}

static void test_logging(void) {
    /* The CPU fallback of tnn_session_new(1) is logged at INFO. */
    tnn_set_log_callback(capture_log, &logs);
    tnn_set_log_level(TNN_LOG_INFO);
    log_reset();
    tnn_session *s = tnn_session_new(1);
    CHECK(s != NULL, "tnn_session_new(1) failed: %s", tnn_last_error());
    const char *backend = s ? tnn_session_backend(s) : NULL;
    CHECK(backend && (strcmp(backend, "cpu") == 0 || strcmp(backend, "cuda") == 0),
          "backend \"%s\"", backend ? backend : "(null)");
    if (backend && strcmp(backend, "cpu") == 0) {
        CHECK(logs.n >= 1 && logs.level == TNN_LOG_INFO && strstr(logs.last, "tnn_session_new") &&
                  strstr(logs.last, "CPU"),
              "CPU fallback not logged at INFO: %d lines, level %d, last \"%s\"", logs.n,
              logs.level, logs.last);
    }
    if (s) check_works(s, "tnn_session_new(1)");
    tnn_session_free(s);

    CHECK(tnn_get_log_level() == TNN_LOG_INFO, "tnn_get_log_level() = %d", tnn_get_log_level());
    tnn_set_log_level(99); /* out of range: clamped */
    CHECK(tnn_get_log_level() == TNN_LOG_NONE, "level 99 -> %d", tnn_get_log_level());
    tnn_set_log_level(-5);
    CHECK(tnn_get_log_level() == TNN_LOG_DEBUG, "level -5 -> %d", tnn_get_log_level());

    /* Below the level nothing reaches the callback. */
    tnn_set_log_level(TNN_LOG_WARN);
    log_reset();
    s = tnn_session_new(1);
    CHECK(s && logs.n == 0, "at WARN the INFO fallback line still arrived: \"%s\"", logs.last);
    tnn_session_free(s);

    /* At DEBUG a failure is logged too (with its message). */
    tnn_set_log_level(TNN_LOG_DEBUG);
    log_reset();
    CHECK_NULL2(tnn_input_2d_f32(NULL, 2, 2), TNN_ERR_ARG, "tnn_input_2d_f32", "session");
    CHECK(logs.n >= 1 && logs.level == TNN_LOG_DEBUG && strstr(logs.last, "tnn_input_2d_f32"),
          "a failure at DEBUG level was not logged: %d lines, last \"%s\"", logs.n, logs.last);

    /* The default sink writes "tinynn: info: ..." to stderr, nothing to stdout. */
    tnn_set_log_callback(NULL, NULL);
    tnn_set_log_level(TNN_LOG_INFO);
    FILE *te, *to;
    char err_text[2048], out_text[256];
    int se = redirect_begin(2, &te), so = se >= 0 ? redirect_begin(1, &to) : -1;
    CHECK(se >= 0 && so >= 0, "could not redirect stdout/stderr");
    if (se >= 0 && so >= 0) {
        s = tnn_session_new(1);
        long no = redirect_end(1, so, to, out_text, sizeof out_text);
        long ne = redirect_end(2, se, te, err_text, sizeof err_text);
        CHECK(no == 0, "library wrote %ld bytes to stdout: \"%s\"", no, out_text);
        if (s && strcmp(tnn_session_backend(s), "cpu") == 0)
            CHECK(ne > 0 && strstr(err_text, "tinynn: info: ") && strstr(err_text, "CPU"),
                  "default sink wrote \"%s\" to stderr", err_text);
        tnn_session_free(s);
    } else if (se >= 0) {
        redirect_end(2, se, te, err_text, sizeof err_text);
    }

    tnn_set_log_level(TNN_LOG_WARN);
    tnn_set_log_callback(capture_log, &logs);
    log_reset();
}

/* ------------------------------------------------------------------------ */
/* NULL handles and NULL arrays                                             */
/* ------------------------------------------------------------------------ */

static void test_null_handles(tnn_session *s) {
    /* Free functions accept NULL and do nothing (no error either). */
    tnn_clear_error();
    tnn_session_free(NULL);
    CHECK(tnn_last_status() == TNN_OK, "tnn_session_free(NULL) set %s: %s",
          tnn_status_name(tnn_last_status()), tnn_last_error());

    int64_t shape[2] = {2, 3};
    CHECK_NULL2(tnn_session_backend(NULL), TNN_ERR_ARG, "tnn_session_backend", "session");
    CHECK_RET2(tnn_session_arena_bytes(NULL), 0, TNN_ERR_ARG, "tnn_session_arena_bytes",
               "session");
    CHECK_NULL2(tnn_tensor_new(NULL, TNN_F32, 2, shape), TNN_ERR_ARG, "tnn_tensor_new", "session");
    CHECK_NULL2(tnn_input_2d_f32(NULL, 2, 3), TNN_ERR_ARG, "tnn_input_2d_f32", "session");
    CHECK_NULL2(tnn_input_1d_f32(NULL, 3), TNN_ERR_ARG, "tnn_input_1d_f32", "session");
    CHECK_NULL2(tnn_input_1d_i32(NULL, 3), TNN_ERR_ARG, "tnn_input_1d_i32", "session");

    /* Accessors */
    CHECK_RET2(tnn_tensor_ndim(NULL), -1, TNN_ERR_ARG, "tnn_tensor_ndim", "NULL");
    CHECK_RET2(tnn_tensor_dim(NULL, 0), -1, TNN_ERR_ARG, "tnn_tensor_dim", "NULL");
    CHECK_RET2(tnn_tensor_nelements(NULL), -1, TNN_ERR_ARG, "tnn_tensor_nelements", "NULL");
    CHECK_RET2(tnn_tensor_dtype(NULL), -1, TNN_ERR_ARG, "tnn_tensor_dtype", "NULL");
    CHECK_ERR2(tnn_tensor_set_name(NULL, "x"), TNN_ERR_ARG, "tnn_tensor_set_name", "NULL");
    CHECK_NULL2(tnn_tensor_name(NULL), TNN_ERR_ARG, "tnn_tensor_name", "NULL");
    CHECK_VOID2(tnn_set_output(NULL), TNN_ERR_ARG, "tnn_set_output", "NULL");
    CHECK_VOID2(tnn_set_param(NULL), TNN_ERR_ARG, "tnn_set_param", "NULL");

    tnn_tensor *a = tnn_input_2d_f32(s, 2, 3), *b = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *idx = tnn_input_1d_i32(s, 2);
    CHECK(a && b && idx, "inputs: %s", tnn_last_error());
    CHECK_ERR2(tnn_tensor_set_name(a, NULL), TNN_ERR_ARG, "tnn_tensor_set_name", "name");

    /* Op builders: NULL session, then each NULL tensor argument. */
    for (int i = 0; i < N_BINARY; i++) {
        const char *fn = binary_ops[i].name;
        CHECK_NULL2(binary_ops[i].fn(NULL, a, b), TNN_ERR_ARG, fn, "session");
        CHECK_NULL2(binary_ops[i].fn(s, NULL, b), TNN_ERR_ARG, fn, binary_ops[i].a);
        CHECK_NULL2(binary_ops[i].fn(s, a, NULL), TNN_ERR_ARG, fn, binary_ops[i].b);
        CHECK_NULL2(binary_ops[i].fn(s, NULL, NULL), TNN_ERR_ARG, fn, "NULL");
    }
    for (int i = 0; i < N_UNARY; i++) {
        CHECK_NULL2(unary_ops[i].fn(NULL, a), TNN_ERR_ARG, unary_ops[i].name, "session");
        CHECK_NULL2(unary_ops[i].fn(s, NULL), TNN_ERR_ARG, unary_ops[i].name, "NULL");
    }
    CHECK_NULL2(tnn_get_rows(NULL, a, idx), TNN_ERR_ARG, "tnn_get_rows", "session");
    CHECK_NULL2(tnn_get_rows(s, NULL, idx), TNN_ERR_ARG, "tnn_get_rows", "'table'");
    CHECK_NULL2(tnn_get_rows(s, a, NULL), TNN_ERR_ARG, "tnn_get_rows", "'idx'");
    CHECK_NULL2(tnn_get_rows_back(NULL, a, idx, b), TNN_ERR_ARG, "tnn_get_rows_back", "session");
    CHECK_NULL2(tnn_get_rows_back(s, NULL, idx, b), TNN_ERR_ARG, "tnn_get_rows_back", "'d_out'");
    CHECK_NULL2(tnn_get_rows_back(s, a, NULL, b), TNN_ERR_ARG, "tnn_get_rows_back", "'idx'");
    CHECK_NULL2(tnn_get_rows_back(s, a, idx, NULL), TNN_ERR_ARG, "tnn_get_rows_back", "'shape'");

    /* Graph control */
    tnn_tensor *y = tnn_add(s, a, b);
    CHECK(y != NULL, "tnn_add: %s", tnn_last_error());
    CHECK_ERR2(tnn_realize(NULL, y), TNN_ERR_ARG, "tnn_realize", "session");
    CHECK_ERR2(tnn_realize(s, NULL), TNN_ERR_ARG, "tnn_realize", "'result'");
    CHECK_ERR2(tnn_compute(NULL), TNN_ERR_ARG, "tnn_compute", "session");
    CHECK_OK(tnn_realize(s, y));

    /* Scratch: NULL session; get returns 0 */
    CHECK_VOID2(tnn_scratch_set(NULL, 0, 1.0), TNN_ERR_ARG, "tnn_scratch_set", "session");
    CHECK_VOID2(tnn_scratch_set_i32(NULL, 0, 1), TNN_ERR_ARG, "tnn_scratch_set_i32", "session");
    CHECK_RET2(tnn_scratch_get(NULL, 0), 0.0, TNN_ERR_ARG, "tnn_scratch_get", "session");
    CHECK_RET2(tnn_scratch_get_i32(NULL, 0), 0, TNN_ERR_ARG, "tnn_scratch_get_i32", "session");
    CHECK_VOID2(tnn_gelu_back_scratch(NULL, 1), TNN_ERR_ARG, "tnn_gelu_back_scratch", "session");
    CHECK_VOID2(tnn_adam_step_scratch(NULL, 1, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "session");

    /* Transfers: NULL session, NULL tensor, NULL array. */
    double d6[6] = {0};
    float f6[6] = {0};
    int64_t i2[2] = {0, 1};
    CHECK_ERR2(tnn_upload(NULL, a), TNN_ERR_ARG, "tnn_upload", "session");
    CHECK_ERR2(tnn_upload(s, NULL), TNN_ERR_ARG, "tnn_upload", "NULL");
    CHECK_ERR2(tnn_download(NULL, y), TNN_ERR_ARG, "tnn_download", "session");
    CHECK_ERR2(tnn_download(s, NULL), TNN_ERR_ARG, "tnn_download", "NULL");
    CHECK_ERR2(tnn_upload_from_float_array(NULL, a, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "session");
    CHECK_ERR2(tnn_upload_from_float_array(s, NULL, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "NULL");
    CHECK_ERR2(tnn_upload_from_float_array(s, a, NULL, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "src");
    CHECK_ERR2(tnn_upload_from_int_array(NULL, idx, i2, 2), TNN_ERR_ARG,
               "tnn_upload_from_int_array", "session");
    CHECK_ERR2(tnn_upload_from_int_array(s, NULL, i2, 2), TNN_ERR_ARG,
               "tnn_upload_from_int_array", "NULL");
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, NULL, 2), TNN_ERR_ARG,
               "tnn_upload_from_int_array", "src");
    CHECK_ERR2(tnn_upload_transposed_f64(NULL, a, d6, 3, 2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "session");
    CHECK_ERR2(tnn_upload_transposed_f64(s, NULL, d6, 3, 2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "NULL");
    CHECK_ERR2(tnn_upload_transposed_f64(s, a, NULL, 3, 2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "src");
    CHECK_ERR2(tnn_download_to_f64_array(NULL, y, d6, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "session");
    CHECK_ERR2(tnn_download_to_f64_array(s, NULL, d6, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "NULL");
    CHECK_ERR2(tnn_download_to_f64_array(s, y, NULL, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "dst");
    CHECK_ERR2(tnn_download_transposed_f64(NULL, y, d6, 3, 2), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "session");
    CHECK_ERR2(tnn_download_transposed_f64(s, NULL, d6, 3, 2), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "NULL");
    CHECK_ERR2(tnn_download_transposed_f64(s, y, NULL, 3, 2), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "dst");
    CHECK_ERR2(tnn_upload_f32(NULL, a, f6, 6), TNN_ERR_ARG, "tnn_upload_f32", "session");
    CHECK_ERR2(tnn_upload_f32(s, NULL, f6, 6), TNN_ERR_ARG, "tnn_upload_f32", "NULL");
    CHECK_ERR2(tnn_upload_f32(s, a, NULL, 6), TNN_ERR_ARG, "tnn_upload_f32", "src");
    CHECK_ERR2(tnn_download_f32(NULL, y, f6, 6), TNN_ERR_ARG, "tnn_download_f32", "session");
    CHECK_ERR2(tnn_download_f32(s, NULL, f6, 6), TNN_ERR_ARG, "tnn_download_f32", "NULL");
    CHECK_ERR2(tnn_download_f32(s, y, NULL, 6), TNN_ERR_ARG, "tnn_download_f32", "dst");

    check_works(s, "NULL handles");
}

/* ------------------------------------------------------------------------ */
/* Zero, negative and overflowing sizes; bad enum values                    */
/* ------------------------------------------------------------------------ */

static void test_sizes(tnn_session *s) {
    CHECK_NULL2(tnn_input_2d_f32(s, 0, 3), TNN_ERR_ARG, "tnn_input_2d_f32", "shape[0]=0");
    CHECK_NULL2(tnn_input_2d_f32(s, 3, 0), TNN_ERR_ARG, "tnn_input_2d_f32", "shape[1]=0");
    CHECK_NULL2(tnn_input_2d_f32(s, -1, 3), TNN_ERR_ARG, "tnn_input_2d_f32", "shape[0]=-1");
    CHECK_NULL2(tnn_input_2d_f32(s, 3, INT_MIN), TNN_ERR_ARG, "tnn_input_2d_f32",
                "shape[1]=-2147483648");
    CHECK_NULL2(tnn_input_1d_f32(s, 0), TNN_ERR_ARG, "tnn_input_1d_f32", "shape[0]=0");
    CHECK_NULL2(tnn_input_1d_f32(s, -5), TNN_ERR_ARG, "tnn_input_1d_f32", "shape[0]=-5");
    CHECK_NULL2(tnn_input_1d_i32(s, 0), TNN_ERR_ARG, "tnn_input_1d_i32", "shape[0]=0");
    CHECK_NULL2(tnn_input_1d_i32(s, -7), TNN_ERR_ARG, "tnn_input_1d_i32", "shape[0]=-7");

    int64_t ok2[2] = {2, 3};
    int64_t zero[3] = {2, 0, 3}, neg[2] = {-4, 3};
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 0, ok2), TNN_ERR_ARG, "tnn_tensor_new", "ndim=0");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, -1, ok2), TNN_ERR_ARG, "tnn_tensor_new", "ndim=-1");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, TNN_MAX_DIMS + 1, ok2), TNN_ERR_ARG, "tnn_tensor_new",
                "ndim=5");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 2, NULL), TNN_ERR_ARG, "tnn_tensor_new", "shape");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 3, zero), TNN_ERR_ARG, "tnn_tensor_new", "shape[1]=0");
    CHECK_NULL2(tnn_tensor_new(s, TNN_I32, 2, neg), TNN_ERR_ARG, "tnn_tensor_new", "shape[0]=-4");
    CHECK_NULL2(tnn_tensor_new(s, -1, 2, ok2), TNN_ERR_ARG, "tnn_tensor_new", "dtype=-1");
    CHECK_NULL2(tnn_tensor_new(s, TNN_DTYPE_COUNT, 2, ok2), TNN_ERR_ARG, "tnn_tensor_new",
                "dtype=");
    CHECK_NULL2(tnn_tensor_new(s, 1000, 2, ok2), TNN_ERR_ARG, "tnn_tensor_new", "dtype=1000");
    /* A known dtype this build cannot make is not an argument error. */
    CHECK_NULL2(tnn_tensor_new(s, TNN_GGML, 2, ok2), TNN_ERR_UNSUPPORTED, "tnn_tensor_new",
                "dtype=4");

    /* Size products that overflow int64, or exceed the largest tensor. */
    int64_t cube[3] = {(int64_t)1 << 30, (int64_t)1 << 30, (int64_t)1 << 30};
    int64_t wrap[4] = {(int64_t)1 << 16, (int64_t)1 << 16, (int64_t)1 << 16, (int64_t)1 << 16};
    int64_t huge[2] = {INT64_MAX, 2};
    int64_t big[2] = {(int64_t)1 << 21, (int64_t)1 << 20};
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 3, cube), TNN_ERR_OVERFLOW, "tnn_tensor_new",
                "overflows");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 4, wrap), TNN_ERR_OVERFLOW, "tnn_tensor_new",
                "overflows");
    CHECK_NULL2(tnn_tensor_new(s, TNN_I32, 2, huge), TNN_ERR_OVERFLOW, "tnn_tensor_new",
                "overflows");
    CHECK_NULL2(tnn_tensor_new(s, TNN_F32, 2, big), TNN_ERR_OVERFLOW, "tnn_tensor_new",
                "overflows");
    CHECK_NULL2(tnn_input_2d_f32(s, INT_MAX, INT_MAX), TNN_ERR_OVERFLOW, "tnn_input_2d_f32",
                "overflows");

    /* Accessors on a good tensor, with a bad axis */
    tnn_tensor *t = tnn_tensor_new(s, TNN_F32, 3, (int64_t[]){2, 3, 4});
    CHECK(t && tnn_tensor_ndim(t) == 3 && tnn_tensor_dim(t, -1) == 4 && tnn_tensor_dim(t, 0) == 2 &&
              tnn_tensor_nelements(t) == 24 && tnn_tensor_dtype(t) == TNN_F32,
          "accessors on a (2, 3, 4) tensor");
    CHECK_RET2(tnn_tensor_dim(t, 3), TNN_ERR_RANGE, TNN_ERR_RANGE, "tnn_tensor_dim", "axis=3");
    CHECK_RET2(tnn_tensor_dim(t, -4), TNN_ERR_RANGE, TNN_ERR_RANGE, "tnn_tensor_dim", "axis=-4");
    CHECK_RET2(tnn_tensor_dim(t, INT_MIN), TNN_ERR_RANGE, TNN_ERR_RANGE, "tnn_tensor_dim",
               "axis=");
    /* A long name is cut, not overflowed. */
    char longname[100];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_OK(tnn_tensor_set_name(t, longname));
    CHECK(tnn_tensor_name(t) && strlen(tnn_tensor_name(t)) == 31, "name kept %zu bytes",
          tnn_tensor_name(t) ? strlen(tnn_tensor_name(t)) : 0);

    /* Threads: a bad count is refused and changes nothing. */
    int before = tnn_get_num_threads();
    CHECK_ERR2(tnn_set_num_threads(-1), TNN_ERR_ARG, "tnn_set_num_threads", "n=-1");
    CHECK_ERR2(tnn_set_num_threads(1 << 20), TNN_ERR_ARG, "tnn_set_num_threads", "n=1048576");
    CHECK(tnn_get_num_threads() == before, "thread count moved from %d to %d", before,
          tnn_get_num_threads());

    /* Transposed transfers take sizes too. */
    tnn_tensor *a = tnn_input_2d_f32(s, 2, 3);
    CHECK_OK(tnn_realize(s, a));
    double d6[6] = {1, 2, 3, 4, 5, 6};
    CHECK_ERR2(tnn_upload_transposed_f64(s, a, d6, 0, 6), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "nrows=0");
    CHECK_ERR2(tnn_upload_transposed_f64(s, a, d6, -3, -2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "nrows=-3");
    CHECK_ERR2(tnn_upload_transposed_f64(s, a, d6, 3, 0), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "ncols=0");
    CHECK_ERR2(tnn_download_transposed_f64(s, a, d6, 0, 6), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "rows=0");
    CHECK_ERR2(tnn_download_transposed_f64(s, a, d6, -2, -3), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "rows=-2");
    /* negative sizes whose product is the element count */
    CHECK(tnn_upload_transposed_f64(s, a, d6, -2, -3) != TNN_OK, "(-2) x (-3) accepted");

    check_works(s, "bad sizes");
}

/* ------------------------------------------------------------------------ */
/* Mismatched shapes and wrong dtypes in op builders                        */
/* ------------------------------------------------------------------------ */

static void test_shapes_and_dtypes(tnn_session *s) {
    tnn_tensor *a = tnn_input_2d_f32(s, 2, 3), *c = tnn_input_2d_f32(s, 4, 5);
    tnn_tensor *a2 = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *ia = tnn_tensor_new(s, TNN_I32, 2, (int64_t[]){2, 3});
    tnn_tensor *v = tnn_input_1d_f32(s, 3);
    CHECK(a && c && a2 && ia && v, "inputs: %s", tnn_last_error());

    /* (2, 3) against (4, 5) fits no binary op: no broadcast, no common k. */
    for (int i = 0; i < N_BINARY; i++) {
        const char *fn = binary_ops[i].name;
        CHECK_NULL2(binary_ops[i].fn(s, a, c), TNN_ERR_SHAPE, fn, "(4, 5)");
        CHECK_NULL2(binary_ops[i].fn(s, c, a), TNN_ERR_SHAPE, fn, "(2, 3)");
        /* i32 where f32 is wanted, in either place */
        CHECK_NULL2(binary_ops[i].fn(s, ia, a2), TNN_ERR_ARG, fn, "i32");
        CHECK_NULL2(binary_ops[i].fn(s, a, ia), TNN_ERR_ARG, fn, "i32");
    }
    for (int i = 0; i < N_UNARY; i++)
        CHECK_NULL2(unary_ops[i].fn(s, ia), TNN_ERR_ARG, unary_ops[i].name, "i32");
    /* f16 / bf16 tensors are storage: arithmetic refuses them */
    for (int dt = TNN_F16; dt <= TNN_BF16; dt++) {
        tnn_tensor *ha = tnn_tensor_new(s, dt, 2, (int64_t[]){2, 3});
        CHECK(ha != NULL, "16-bit tensor: %s", tnn_last_error());
        const char *tag = dt == TNN_F16 ? "f16" : "bf16";
        for (int i = 0; i < N_BINARY; i++) {
            /* products take bf16 as their weights operand (tests/test_gemm_bf16.c):
             * the first of tnn_matmul, the second of the others */
            bool product = strncmp(binary_ops[i].name, "tnn_matmul", 10) == 0;
            bool seed = strcmp(binary_ops[i].name, "tnn_matmul") == 0;
            if (!(dt == TNN_BF16 && product && seed))
                CHECK_NULL2(binary_ops[i].fn(s, ha, a2), TNN_ERR_ARG, binary_ops[i].name, tag);
            if (!(dt == TNN_BF16 && product && !seed))
                CHECK_NULL2(binary_ops[i].fn(s, a, ha), TNN_ERR_ARG, binary_ops[i].name, tag);
        }
        for (int i = 0; i < N_UNARY; i++)
            CHECK_NULL2(unary_ops[i].fn(s, ha), TNN_ERR_ARG, unary_ops[i].name, tag);
        if (dt == TNN_BF16)
            CHECK(tnn_matmul_nt(s, a, ha) != NULL && tnn_matmul(s, ha, a) != NULL &&
                      tnn_matmul_nt(s, ha, ha) != NULL,
                  "bf16 weights (or bf16 @ bf16) refused: %s", tnn_last_error());
        else
            CHECK_NULL2(tnn_matmul_nt(s, ha, ha), TNN_ERR_ARG, "tnn_matmul_nt", tag);
        CHECK_NULL2(tnn_sum(s, ha), TNN_ERR_ARG, "tnn_sum", tag);
        tnn_set_param(ha);
        CHECK(tnn_last_status() == TNN_ERR_ARG, "tnn_set_param took a %s tensor", tag);
    }

    /* Products need matrices; batch dimensions must agree or be 1. */
    CHECK_NULL2(tnn_matmul_nn(s, v, a), TNN_ERR_SHAPE, "tnn_matmul_nn", "at least 2");
    CHECK_NULL2(tnn_matmul(s, a, v), TNN_ERR_SHAPE, "tnn_matmul", "at least 2");
    tnn_tensor *b3 = tnn_tensor_new(s, TNN_F32, 3, (int64_t[]){2, 2, 3});
    tnn_tensor *c3 = tnn_tensor_new(s, TNN_F32, 3, (int64_t[]){3, 3, 4});
    CHECK_NULL2(tnn_matmul_nn(s, b3, c3), TNN_ERR_SHAPE, "tnn_matmul_nn", "batch");
    /* ... while the same calls with fitting shapes are accepted */
    CHECK(tnn_matmul(s, a, a2) && tnn_matmul_nt(s, a, a2) && tnn_matmul_tn(s, a, a2) &&
              tnn_add(s, a, v) && tnn_mul(s, v, a),
          "fitting shapes refused: %s", tnn_last_error());

    /* Element-wise broadcasting refuses a trailing mismatch */
    tnn_tensor *v2 = tnn_input_1d_f32(s, 2);
    CHECK_NULL2(tnn_add(s, a, v2), TNN_ERR_SHAPE, "tnn_add", "broadcast");

    /* RMSNorm: gamma of the wrong size or shape, wrong dtype, bad eps */
    tnn_tensor *g4 = tnn_input_1d_f32(s, 4), *g23 = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *gi = tnn_input_1d_i32(s, 3);
    CHECK_NULL2(tnn_rms_norm(s, a, g4, 1e-5), TNN_ERR_SHAPE, "tnn_rms_norm", "gamma");
    CHECK_NULL2(tnn_rms_norm(s, a, g23, 1e-5), TNN_ERR_SHAPE, "tnn_rms_norm", "gamma");
    CHECK_NULL2(tnn_rms_norm(s, a, gi, 1e-5), TNN_ERR_ARG, "tnn_rms_norm", "gamma");
    CHECK_NULL2(tnn_rms_norm(s, a, v, -1.0), TNN_ERR_ARG, "tnn_rms_norm", "eps");
    CHECK_NULL2(tnn_rms_norm(s, a, v, NAN), TNN_ERR_ARG, "tnn_rms_norm", "eps");
    CHECK_NULL2(tnn_rms_norm(s, a, v, INFINITY), TNN_ERR_ARG, "tnn_rms_norm", "eps");
    CHECK_NULL2(tnn_rms_norm_back(s, a, a2, -1e-3), TNN_ERR_ARG, "tnn_rms_norm_back", "eps");
    CHECK_NULL2(tnn_rms_norm_back(s, a, a2, NAN), TNN_ERR_ARG, "tnn_rms_norm_back", "eps");

    /* Embeddings: table must be 2-D f32, idx 1-D i32 of matching length */
    tnn_tensor *idx = tnn_input_1d_i32(s, 2), *idx3 = tnn_input_1d_i32(s, 3);
    tnn_tensor *fidx = tnn_input_1d_f32(s, 2);
    tnn_tensor *table = tnn_input_2d_f32(s, 4, 3), *shape = tnn_input_2d_f32(s, 4, 3);
    tnn_tensor *shape_bad = tnn_input_2d_f32(s, 4, 5);
    CHECK_NULL2(tnn_get_rows(s, v, idx), TNN_ERR_SHAPE, "tnn_get_rows", "table");
    CHECK_NULL2(tnn_get_rows(s, ia, idx), TNN_ERR_ARG, "tnn_get_rows", "table");
    CHECK_NULL2(tnn_get_rows(s, table, fidx), TNN_ERR_ARG, "tnn_get_rows", "idx");
    tnn_tensor *idx2d = tnn_tensor_new(s, TNN_I32, 2, (int64_t[]){1, 2});
    CHECK_NULL2(tnn_get_rows(s, table, idx2d), TNN_ERR_SHAPE, "tnn_get_rows", "idx");
    CHECK_NULL2(tnn_get_rows_back(s, a, idx3, shape), TNN_ERR_SHAPE, "tnn_get_rows_back", "idx");
    CHECK_NULL2(tnn_get_rows_back(s, a, fidx, shape), TNN_ERR_ARG, "tnn_get_rows_back", "idx");
    CHECK_NULL2(tnn_get_rows_back(s, ia, idx, shape), TNN_ERR_ARG, "tnn_get_rows_back", "d_out");
    CHECK_NULL2(tnn_get_rows_back(s, v, idx, shape), TNN_ERR_SHAPE, "tnn_get_rows_back", "d_out");
    CHECK_NULL2(tnn_get_rows_back(s, a, idx, shape_bad), TNN_ERR_SHAPE, "tnn_get_rows_back",
                "shape");
    CHECK_NULL2(tnn_get_rows_back(s, a, idx, v), TNN_ERR_SHAPE, "tnn_get_rows_back", "shape");
    CHECK(tnn_get_rows(s, table, idx) && tnn_get_rows_back(s, a, idx, shape),
          "fitting embedding shapes refused: %s", tnn_last_error());

    /* Marking a node as a parameter is refused: only leaves are. */
    tnn_tensor *node = tnn_gelu(s, a);
    CHECK_VOID2(tnn_set_param(node), TNN_ERR_ARG, "tnn_set_param", "leaf");
    tnn_clear_error();
    tnn_set_param(a);
    CHECK(tnn_last_status() == TNN_OK, "tnn_set_param(leaf): %s", tnn_last_error());

    check_works(s, "shape and dtype errors");
}

/* ------------------------------------------------------------------------ */
/* Transfers: wrong order, wrong length, wrong dtype, int32 range           */
/* ------------------------------------------------------------------------ */

/* Downloads t and compares with want[0..n). */
static int holds(tnn_session *s, tnn_tensor *t, const double *want, int n) {
    double got[16];
    if (n > 16 || tnn_download_to_f64_array(s, t, got, (size_t)n) != TNN_OK) return 0;
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) return 0;
    return 1;
}

static void test_call_order(void) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 2, 3), *idx = tnn_input_1d_i32(s, 2);
    tnn_tensor *h = tnn_gelu(s, x);
    tnn_tensor *y = tnn_scale(s, h, 2.0);
    double d6[6] = {1, -2, 3, -4, 0.5, 0}, out[6];
    float f6[6] = {0};
    int64_t i2[2] = {1, 0};

    /* Everything before tnn_realize */
    for (int i = 0; i < 6; i++) tnn_scratch_set(s, i, d6[i]);
    CHECK_ERR2(tnn_upload(s, x), TNN_ERR_STATE, "tnn_upload", "tnn_realize");
    CHECK_ERR2(tnn_upload_from_float_array(s, x, d6, 6), TNN_ERR_STATE,
               "tnn_upload_from_float_array", "tnn_realize");
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, i2, 2), TNN_ERR_STATE,
               "tnn_upload_from_int_array", "tnn_realize");
    CHECK_ERR2(tnn_upload_transposed_f64(s, x, d6, 3, 2), TNN_ERR_STATE,
               "tnn_upload_transposed_f64", "tnn_realize");
    CHECK_ERR2(tnn_upload_f32(s, x, f6, 6), TNN_ERR_STATE, "tnn_upload_f32", "tnn_realize");
    CHECK_ERR2(tnn_compute(s), TNN_ERR_STATE, "tnn_compute", "tnn_realize");
    CHECK_ERR2(tnn_download(s, y), TNN_ERR_STATE, "tnn_download", "storage");
    CHECK_ERR2(tnn_download_to_f64_array(s, x, out, 6), TNN_ERR_STATE,
               "tnn_download_to_f64_array", "storage");

    /* h is an intermediate read only by y: its memory is reused. */
    CHECK_OK(tnn_realize(s, y));
    CHECK_OK(tnn_upload_from_float_array(s, x, d6, 6));
    CHECK_OK(tnn_compute(s));
    CHECK_ERR2(tnn_download(s, h), TNN_ERR_STATE, "tnn_download", "tnn_set_output");
    CHECK_ERR2(tnn_download_to_f64_array(s, h, out, 6), TNN_ERR_STATE,
               "tnn_download_to_f64_array", "reused");
    CHECK_ERR2(tnn_download_transposed_f64(s, h, out, 3, 2), TNN_ERR_STATE,
               "tnn_download_transposed_f64", "reused");
    CHECK_ERR2(tnn_download_f32(s, h, f6, 6), TNN_ERR_STATE, "tnn_download_f32", "reused");
    /* Intermediates cannot be uploaded into. */
    CHECK_ERR2(tnn_upload_from_float_array(s, h, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "leaves");
    CHECK_ERR2(tnn_upload(s, y), TNN_ERR_ARG, "tnn_upload", "leaves");
    /* A node made after the realize is not in the graph yet. */
    tnn_tensor *late = tnn_silu(s, x);
    CHECK_ERR2(tnn_download_to_f64_array(s, late, out, 6), TNN_ERR_STATE,
               "tnn_download_to_f64_array", "storage");

    /* Marked as an output and realized again, h can be read, and y = 2h. */
    tnn_set_output(h);
    CHECK_OK(tnn_realize(s, y));
    CHECK_OK(tnn_compute(s));
    double hv[6], yv[6];
    CHECK_OK(tnn_download_to_f64_array(s, h, hv, 6));
    CHECK_OK(tnn_download_to_f64_array(s, y, yv, 6));
    for (int i = 0; i < 6; i++) {
        double u = 0.7978845608028654 * (d6[i] + 0.044715 * pow(d6[i], 3));
        double g = 0.5 * d6[i] * (1 + tanh(u));
        CHECK(fabs(hv[i] - g) <= 1e-6 + 1e-5 * fabs(g) && yv[i] == 2 * hv[i],
              "h[%d] = %.9g (gelu %.9g), y = %.9g", i, hv[i], g, yv[i]);
    }
    check_works(s, "call order");
    tnn_session_free(s);
}

static void test_transfer_lengths(void) {
    tnn_session *s = tnn_session_new(0); /* fresh: no scratch slot written yet */
    tnn_tensor *x = tnn_input_2d_f32(s, 2, 3), *idx = tnn_input_1d_i32(s, 3);
    tnn_tensor *y = tnn_scale(s, x, 1.0);
    CHECK_OK(tnn_realize(s, y));
    const double keep[6] = {1, 2, 3, 4, 5, 6};
    double other[8] = {9, 9, 9, 9, 9, 9, 9, 9}, out[8];
    float f8[8] = {9, 9, 9, 9, 9, 9, 9, 9};
    CHECK_OK(tnn_upload_from_float_array(s, x, keep, 6));

    /* n != nelements: refused, nothing copied */
    CHECK_ERR2(tnn_upload_from_float_array(s, x, other, 5), TNN_ERR_SHAPE,
               "tnn_upload_from_float_array", "n=5");
    CHECK_ERR2(tnn_upload_from_float_array(s, x, other, 7), TNN_ERR_SHAPE,
               "tnn_upload_from_float_array", "n=7");
    CHECK_ERR2(tnn_upload_from_float_array(s, x, other, 0), TNN_ERR_SHAPE,
               "tnn_upload_from_float_array", "n=0");
    CHECK_ERR2(tnn_upload_from_float_array(s, x, other, SIZE_MAX), TNN_ERR_SHAPE,
               "tnn_upload_from_float_array", "6 elements");
    CHECK_ERR2(tnn_upload_f32(s, x, f8, 8), TNN_ERR_SHAPE, "tnn_upload_f32", "n=8");
    CHECK_ERR2(tnn_upload_transposed_f64(s, x, other, 2, 2), TNN_ERR_SHAPE,
               "tnn_upload_transposed_f64", "n=4");
    CHECK_ERR2(tnn_upload_transposed_f64(s, x, other, 4, 2), TNN_ERR_SHAPE,
               "tnn_upload_transposed_f64", "n=8");
    CHECK(holds(s, x, keep, 6), "a refused upload changed x");
    CHECK_ERR2(tnn_download_to_f64_array(s, x, out, 5), TNN_ERR_SHAPE,
               "tnn_download_to_f64_array", "n=5");
    CHECK_ERR2(tnn_download_to_f64_array(s, x, out, 8), TNN_ERR_SHAPE,
               "tnn_download_to_f64_array", "n=8");
    CHECK_ERR2(tnn_download_f32(s, x, f8, 7), TNN_ERR_SHAPE, "tnn_download_f32", "n=7");
    CHECK_ERR2(tnn_download_transposed_f64(s, x, out, 2, 2), TNN_ERR_SHAPE,
               "tnn_download_transposed_f64", "n=4");

    /* Wrong dtypes */
    double d3[3] = {0, 1, 2};
    int64_t i6[6] = {0, 1, 2, 3, 4, 5};
    CHECK_ERR2(tnn_upload_from_float_array(s, idx, d3, 3), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "i32");
    CHECK_ERR2(tnn_upload_from_int_array(s, x, i6, 6), TNN_ERR_ARG, "tnn_upload_from_int_array",
               "f32");
    CHECK_ERR2(tnn_upload_f32(s, idx, f8, 3), TNN_ERR_ARG, "tnn_upload_f32", "i32");
    CHECK_ERR2(tnn_download_f32(s, idx, f8, 3), TNN_ERR_ARG, "tnn_download_f32", "i32");
    CHECK_ERR2(tnn_upload_transposed_f64(s, idx, d3, 1, 3), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "i32");
    CHECK(holds(s, x, keep, 6), "a refused upload changed x");

    /* int64 values outside int32: refused, nothing copied; the limits pass */
    const int64_t good[3] = {INT32_MIN, 0, INT32_MAX};
    const double good_d[3] = {INT32_MIN, 0, INT32_MAX};
    CHECK_OK(tnn_upload_from_int_array(s, idx, good, 3));
    CHECK(holds(s, idx, good_d, 3), "int32 limits did not round-trip");
    int64_t over[3] = {7, (int64_t)INT32_MAX + 1, 8};
    int64_t under[3] = {(int64_t)INT32_MIN - 1, 7, 8};
    int64_t far[3] = {1, 2, INT64_MIN};
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, over, 3), TNN_ERR_RANGE,
               "tnn_upload_from_int_array", "src[1] = 2147483648");
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, under, 3), TNN_ERR_RANGE,
               "tnn_upload_from_int_array", "src[0] = -2147483649");
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, far, 3), TNN_ERR_RANGE,
               "tnn_upload_from_int_array", "src[2]");
    CHECK_ERR2(tnn_upload_from_int_array(s, idx, over, 2), TNN_ERR_SHAPE,
               "tnn_upload_from_int_array", "n=2");
    CHECK(holds(s, idx, good_d, 3), "a refused int upload changed idx");

    /* tnn_upload with fewer scratch slots written than the tensor needs */
    for (int i = 0; i < 5; i++) tnn_scratch_set(s, i, 100.0 + i);
    CHECK_ERR2(tnn_upload(s, x), TNN_ERR_RANGE, "tnn_upload", "only 5");
    CHECK(holds(s, x, keep, 6), "a refused scratch upload changed x");
    /* a negative slot is refused and does not count as written */
    CHECK_VOID2(tnn_scratch_set(s, -1, 1.0), TNN_ERR_RANGE, "tnn_scratch_set", "i=-1");
    CHECK_VOID2(tnn_scratch_set_i32(s, INT_MIN, 1), TNN_ERR_RANGE, "tnn_scratch_set_i32",
                "i=-2147483648");
    CHECK_ERR2(tnn_upload(s, x), TNN_ERR_RANGE, "tnn_upload", "only 5");
    CHECK_RET2(tnn_scratch_get(s, -1), 0.0, TNN_ERR_RANGE, "tnn_scratch_get", "i=-1");
    CHECK_RET2(tnn_scratch_get_i32(s, -3), 0, TNN_ERR_RANGE, "tnn_scratch_get_i32", "i=-3");
    CHECK_RET2(tnn_scratch_get(s, INT_MIN), 0.0, TNN_ERR_RANGE, "tnn_scratch_get", "negative");
    /* a slot never written reads as 0 without an error */
    tnn_clear_error();
    CHECK(tnn_scratch_get(s, 100000) == 0.0 && tnn_scratch_get_i32(s, 99) == 0 &&
              tnn_last_status() == TNN_OK,
          "unwritten slots: %s", tnn_last_error());
    CHECK(tnn_scratch_get(s, 4) == 104.0, "slot 4 = %g", tnn_scratch_get(s, 4));
    /* with the sixth slot written the same upload goes through */
    tnn_scratch_set(s, 5, 105.0);
    CHECK_OK(tnn_upload(s, x));
    const double staged[6] = {100, 101, 102, 103, 104, 105};
    CHECK(holds(s, x, staged, 6), "scratch upload");
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download(s, y));
    for (int i = 0; i < 6; i++)
        CHECK(tnn_scratch_get(s, i) == staged[i], "download slot %d = %g", i,
              tnn_scratch_get(s, i));

    check_works(s, "transfer errors");
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Out-of-range embedding indices at compute                                */
/* ------------------------------------------------------------------------ */

static void test_embedding_range(void) {
    tnn_session *s = tnn_session_new(0);
    const int V = 4, D = 3;
    tnn_tensor *table = tnn_input_2d_f32(s, V, D), *idx = tnn_input_1d_i32(s, 2);
    tnn_tensor *rows = tnn_get_rows(s, table, idx);
    CHECK(rows != NULL, "tnn_get_rows: %s", tnn_last_error());
    CHECK_OK(tnn_realize(s, rows));
    double tv[12];
    for (int r = 0; r < V; r++)
        for (int c = 0; c < D; c++) tv[r * D + c] = 10 * r + c;
    CHECK_OK(tnn_upload_from_float_array(s, table, tv, 12));

    const struct {
        int64_t i0, i1;
        const char *needle;
    } bad[] = {
        {1, 4, "idx[1] = 4"},
        {-1, 0, "idx[0] = -1"},
        {0, (int64_t)1 << 30, "idx[1] = 1073741824"},
        {INT32_MIN, 2, "idx[0] = -2147483648"},
        {INT32_MAX, INT32_MAX, "idx[0] = 2147483647"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int64_t iv[2] = {bad[k].i0, bad[k].i1};
        CHECK_OK(tnn_upload_from_int_array(s, idx, iv, 2));
        CHECK_ERR2(tnn_compute(s), TNN_ERR_RANGE, "tnn_get_rows", bad[k].needle);
    }
    /* The same through the scratch, as the seed module stages indices */
    tnn_scratch_set_i32(s, 0, 2);
    tnn_scratch_set_i32(s, 1, V);
    CHECK_OK(tnn_upload(s, idx));
    CHECK_ERR2(tnn_compute(s), TNN_ERR_RANGE, "tnn_get_rows", "idx[1] = 4");
    CHECK(strstr(tnn_last_error(), "[0, 4)") != NULL, "message does not give the range: %s",
          tnn_last_error());

    /* Fixed and uploaded again, it computes the right rows. */
    int64_t good[2] = {3, 1};
    CHECK_OK(tnn_upload_from_int_array(s, idx, good, 2));
    CHECK_OK(tnn_compute(s));
    double want[6], got[6];
    for (int c = 0; c < D; c++) want[c] = 30 + c, want[D + c] = 10 + c;
    CHECK_OK(tnn_download_to_f64_array(s, rows, got, 6));
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == want[i], "rows[%d] = %g, want %g", i, got[i], want[i]);

    /* Scatter-add backward: same rule. */
    tnn_tensor *dout = tnn_input_2d_f32(s, 2, D), *shape = tnn_input_2d_f32(s, V, D);
    tnn_tensor *idx_b = tnn_input_1d_i32(s, 2);
    tnn_tensor *grad = tnn_get_rows_back(s, dout, idx_b, shape);
    CHECK(grad != NULL, "tnn_get_rows_back: %s", tnn_last_error());
    CHECK_OK(tnn_realize(s, grad));
    double dv[6] = {1, 2, 3, 0.5, 0.25, -1};
    CHECK_OK(tnn_upload_from_float_array(s, dout, dv, 6));
    CHECK_OK(tnn_upload_from_int_array(s, idx, good, 2)); /* rows still reads idx */
    int64_t bad_b[2] = {0, V + 3};
    CHECK_OK(tnn_upload_from_int_array(s, idx_b, bad_b, 2));
    CHECK_ERR2(tnn_compute(s), TNN_ERR_RANGE, "tnn_get_rows_back", "idx[1] = 7");
    int64_t neg_b[2] = {-2, 0};
    CHECK_OK(tnn_upload_from_int_array(s, idx_b, neg_b, 2));
    CHECK_ERR2(tnn_compute(s), TNN_ERR_RANGE, "tnn_get_rows_back", "idx[0] = -2");
    int64_t good_b[2] = {2, 2};
    CHECK_OK(tnn_upload_from_int_array(s, idx_b, good_b, 2));
    CHECK_OK(tnn_compute(s));
    double g[12];
    CHECK_OK(tnn_download_to_f64_array(s, grad, g, 12));
    for (int r = 0; r < V; r++)
        for (int c = 0; c < D; c++) {
            double w = r == 2 ? dv[c] + dv[D + c] : 0.0;
            CHECK(g[r * D + c] == w, "grad[%d][%d] = %g, want %g", r, c, g[r * D + c], w);
        }
    check_works(s, "index out of range");
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Allocations that cannot succeed                                          */
/* ------------------------------------------------------------------------ */

/* A 4 TiB intermediate: tnn_realize fails with TNN_ERR_NOMEM and the
 * session realizes and computes other graphs afterwards. The address space
 * is capped first, so the request fails on any overcommit setting. Skipped
 * under sanitizers (see TEST_UNDER_SANITIZER). */
static void test_out_of_memory(void) {
#ifndef TEST_UNDER_SANITIZER
    struct rlimit old, cap;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0, "getrlimit");
    cap = old;
    const rlim_t limit = (rlim_t)64 << 30;
    if (cap.rlim_cur == RLIM_INFINITY || cap.rlim_cur > limit) cap.rlim_cur = limit;
    int capped = setrlimit(RLIMIT_AS, &cap) == 0;
    CHECK(capped, "could not cap the address space");
    if (!capped) return;

    tnn_session *s = tnn_session_new(0);
    tnn_tensor *a = tnn_input_2d_f32(s, 1 << 20, 1), *b = tnn_input_2d_f32(s, 1 << 20, 1);
    tnn_tensor *outer = tnn_matmul_nt(s, a, b); /* (2^20, 2^20): 2^40 elements */
    CHECK(outer && tnn_tensor_nelements(outer) == (int64_t)1 << 40, "outer product: %s",
          tnn_last_error());
    CHECK_ERR2(tnn_realize(s, outer), TNN_ERR_NOMEM, "tnn_realize", "arena");
    CHECK_ERR2(tnn_compute(s), TNN_ERR_STATE, "tnn_compute", "tnn_realize");
    check_works(s, "an arena too large for memory");
    tnn_session_free(s);

    s = tnn_session_new(0);
    tnn_tensor *huge = tnn_input_2d_f32(s, 1 << 20, 1 << 20);
    CHECK(huge != NULL, "a (2^20, 2^20) leaf: %s", tnn_last_error());
    CHECK_ERR2(tnn_realize(s, huge), TNN_ERR_NOMEM, "tnn_realize", "leaf");
    tnn_session_free(s);
    CHECK(setrlimit(RLIMIT_AS, &old) == 0, "could not restore the address-space limit");
#endif
}

/* ------------------------------------------------------------------------ */
/* Handles of a freed session, of another session, and not handles at all  */
/* ------------------------------------------------------------------------ */

static void test_foreign_and_freed(void) {
    tnn_session *sa = tnn_session_new(0), *sb = tnn_session_new(0);
    tnn_tensor *ta = tnn_input_2d_f32(sa, 2, 3), *ta2 = tnn_input_2d_f32(sa, 2, 3);
    tnn_tensor *tb = tnn_input_2d_f32(sb, 2, 3), *ib = tnn_input_1d_i32(sb, 2);
    tnn_tensor *ia = tnn_input_1d_i32(sa, 2);
    CHECK(ta && ta2 && tb && ib && ia, "inputs: %s", tnn_last_error());
    CHECK_OK(tnn_realize(sa, tnn_add(sa, ta, ta2)));
    CHECK_OK(tnn_realize(sb, tb));
    double d6[6] = {1, 2, 3, 4, 5, 6}, out[6];
    float f6[6] = {0};
    int64_t i2[2] = {0, 1};
    CHECK_OK(tnn_upload_from_float_array(sb, tb, d6, 6));

    /* A tensor of sb used with sa */
    for (int i = 0; i < N_BINARY; i++) {
        CHECK_NULL2(binary_ops[i].fn(sa, ta, tb), TNN_ERR_ARG, binary_ops[i].name,
                    "another session");
        CHECK_NULL2(binary_ops[i].fn(sa, tb, ta), TNN_ERR_ARG, binary_ops[i].name,
                    "another session");
    }
    for (int i = 0; i < N_UNARY; i++)
        CHECK_NULL2(unary_ops[i].fn(sa, tb), TNN_ERR_ARG, unary_ops[i].name, "another session");
    tnn_tensor *gb = tnn_input_1d_f32(sb, 3);
    CHECK_NULL2(tnn_rms_norm(sa, ta, gb, 1e-5), TNN_ERR_ARG, "tnn_rms_norm", "'gamma'");
    CHECK_NULL2(tnn_get_rows(sa, ta, ib), TNN_ERR_ARG, "tnn_get_rows", "'idx'");
    CHECK_NULL2(tnn_get_rows(sa, tb, ia), TNN_ERR_ARG, "tnn_get_rows", "'table'");
    CHECK_NULL2(tnn_get_rows_back(sa, ta, ia, tb), TNN_ERR_ARG, "tnn_get_rows_back", "'shape'");
    CHECK_ERR2(tnn_realize(sa, tb), TNN_ERR_ARG, "tnn_realize", "another session");
    CHECK_NULL2(tnn_reshape(sa, tb, 1, (int64_t[]){6}), TNN_ERR_ARG, "tnn_reshape",
                "another session");
    CHECK_NULL2(tnn_attention(sa, ta, tb, ta2, 1, 1, 1), TNN_ERR_ARG, "tnn_attention", "'k'");
    CHECK_NULL2(tnn_cross_entropy(sa, ta, ib, -1), TNN_ERR_ARG, "tnn_cross_entropy", "'targets'");
    CHECK_ERR2(tnn_backward(sa, tb), TNN_ERR_ARG, "tnn_backward", "another session");
    CHECK_NULL2(tnn_grad(sa, tb), TNN_ERR_ARG, "tnn_grad", "another session");
    CHECK_ERR2(tnn_upload(sa, tb), TNN_ERR_ARG, "tnn_upload", "another session");
    CHECK_ERR2(tnn_download(sa, tb), TNN_ERR_ARG, "tnn_download", "another session");
    CHECK_ERR2(tnn_upload_from_float_array(sa, tb, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "another session");
    CHECK_ERR2(tnn_upload_from_int_array(sa, ib, i2, 2), TNN_ERR_ARG,
               "tnn_upload_from_int_array", "another session");
    CHECK_ERR2(tnn_upload_transposed_f64(sa, tb, d6, 3, 2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "another session");
    CHECK_ERR2(tnn_upload_f32(sa, tb, f6, 6), TNN_ERR_ARG, "tnn_upload_f32", "another session");
    CHECK_ERR2(tnn_download_to_f64_array(sa, tb, out, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "another session");
    CHECK_ERR2(tnn_download_transposed_f64(sa, tb, out, 3, 2), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "another session");
    CHECK_ERR2(tnn_download_f32(sa, tb, f6, 6), TNN_ERR_ARG, "tnn_download_f32",
               "another session");
    CHECK(holds(sb, tb, d6, 6), "sb's tensor changed through sa");

    /* Things that are not handles at all: never dereferenced, refused. */
    int local = 0;
    tnn_tensor *fake = (tnn_tensor *)(void *)&local;
    tnn_tensor *inside = (tnn_tensor *)(void *)((char *)ta + 1); /* inside a real tensor */
    tnn_session *fake_s = (tnn_session *)(void *)&local;
    CHECK_NULL2(tnn_gelu(sa, fake), TNN_ERR_ARG, "tnn_gelu", "not a tensor of a live session");
    CHECK_NULL2(tnn_add(sa, ta, inside), TNN_ERR_ARG, "tnn_add", "'b'");
    CHECK_NULL2(tnn_gelu(sa, (tnn_tensor *)(void *)sa), TNN_ERR_ARG, "tnn_gelu", "'a'");
    CHECK_NULL2(tnn_input_2d_f32(fake_s, 2, 2), TNN_ERR_ARG, "tnn_input_2d_f32",
                "not a live session");
    CHECK_NULL2(tnn_gelu((tnn_session *)(void *)ta, ta), TNN_ERR_ARG, "tnn_gelu",
                "not a live session");
    CHECK_RET2(tnn_tensor_ndim(fake), -1, TNN_ERR_ARG, "tnn_tensor_ndim", "live session");
    CHECK_RET2(tnn_tensor_nelements(inside), -1, TNN_ERR_ARG, "tnn_tensor_nelements",
               "live session");
    CHECK_ERR2(tnn_upload_from_float_array(sa, fake, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "live session");
    CHECK_ERR2(tnn_compute(fake_s), TNN_ERR_ARG, "tnn_compute", "not a live session");
    CHECK_VOID2(tnn_session_free(fake_s), TNN_ERR_ARG, "tnn_session_free", "not a live session");
    CHECK(local == 0, "a fake handle was written through");

    /* A freed session and its tensors. No session is made in this block, so
     * no live session can own the freed addresses. */
    tnn_session *sf = tnn_session_new(0);
    tnn_tensor *tf = tnn_input_2d_f32(sf, 2, 3), *if_ = tnn_input_1d_i32(sf, 2);
    tnn_tensor *gf = tnn_gelu(sf, tf);
    CHECK_OK(tnn_realize(sf, gf));
    CHECK_OK(tnn_upload_from_float_array(sf, tf, d6, 6));
    CHECK_OK(tnn_compute(sf));
    tnn_session_free(sf);

    CHECK_NULL2(tnn_session_backend(sf), TNN_ERR_ARG, "tnn_session_backend", "not a live session");
    CHECK_NULL2(tnn_input_2d_f32(sf, 2, 3), TNN_ERR_ARG, "tnn_input_2d_f32", "not a live session");
    CHECK_NULL2(tnn_input_1d_i32(sf, 2), TNN_ERR_ARG, "tnn_input_1d_i32", "not a live session");
    CHECK_NULL2(tnn_tensor_new(sf, TNN_F32, 1, (int64_t[]){3}), TNN_ERR_ARG, "tnn_tensor_new",
                "not a live session");
    for (int i = 0; i < N_BINARY; i++) {
        CHECK_NULL2(binary_ops[i].fn(sf, tf, tf), TNN_ERR_ARG, binary_ops[i].name,
                    "not a live session");
        CHECK_NULL2(binary_ops[i].fn(sa, ta, tf), TNN_ERR_ARG, binary_ops[i].name, "freed");
        CHECK_NULL2(binary_ops[i].fn(sa, tf, ta), TNN_ERR_ARG, binary_ops[i].name, "freed");
    }
    for (int i = 0; i < N_UNARY; i++) {
        CHECK_NULL2(unary_ops[i].fn(sf, tf), TNN_ERR_ARG, unary_ops[i].name, "not a live session");
        CHECK_NULL2(unary_ops[i].fn(sa, gf), TNN_ERR_ARG, unary_ops[i].name, "freed");
    }
    CHECK_NULL2(tnn_get_rows(sa, ta, if_), TNN_ERR_ARG, "tnn_get_rows", "'idx'");
    CHECK_NULL2(tnn_get_rows_back(sa, ta, ia, tf), TNN_ERR_ARG, "tnn_get_rows_back", "'shape'");
    CHECK_ERR2(tnn_realize(sf, gf), TNN_ERR_ARG, "tnn_realize", "not a live session");
    CHECK_ERR2(tnn_realize(sa, gf), TNN_ERR_ARG, "tnn_realize", "freed");
    CHECK_ERR2(tnn_compute(sf), TNN_ERR_ARG, "tnn_compute", "not a live session");
    CHECK_ERR2(tnn_upload(sf, tf), TNN_ERR_ARG, "tnn_upload", "not a live session");
    CHECK_ERR2(tnn_upload(sa, tf), TNN_ERR_ARG, "tnn_upload", "freed");
    CHECK_ERR2(tnn_download(sa, gf), TNN_ERR_ARG, "tnn_download", "freed");
    CHECK_ERR2(tnn_upload_from_float_array(sa, tf, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "freed");
    CHECK_ERR2(tnn_upload_from_float_array(sf, tf, d6, 6), TNN_ERR_ARG,
               "tnn_upload_from_float_array", "not a live session");
    CHECK_ERR2(tnn_upload_from_int_array(sa, if_, i2, 2), TNN_ERR_ARG,
               "tnn_upload_from_int_array", "freed");
    CHECK_ERR2(tnn_upload_transposed_f64(sa, tf, d6, 3, 2), TNN_ERR_ARG,
               "tnn_upload_transposed_f64", "freed");
    CHECK_ERR2(tnn_upload_f32(sa, tf, f6, 6), TNN_ERR_ARG, "tnn_upload_f32", "freed");
    CHECK_ERR2(tnn_download_to_f64_array(sa, gf, out, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "freed");
    CHECK_ERR2(tnn_download_to_f64_array(sf, gf, out, 6), TNN_ERR_ARG,
               "tnn_download_to_f64_array", "not a live session");
    CHECK_ERR2(tnn_download_transposed_f64(sa, gf, out, 3, 2), TNN_ERR_ARG,
               "tnn_download_transposed_f64", "freed");
    CHECK_ERR2(tnn_download_f32(sa, gf, f6, 6), TNN_ERR_ARG, "tnn_download_f32", "freed");
    CHECK_RET2(tnn_tensor_ndim(tf), -1, TNN_ERR_ARG, "tnn_tensor_ndim", "freed");
    CHECK_RET2(tnn_tensor_dim(tf, 0), -1, TNN_ERR_ARG, "tnn_tensor_dim", "freed");
    CHECK_RET2(tnn_tensor_nelements(gf), -1, TNN_ERR_ARG, "tnn_tensor_nelements", "freed");
    CHECK_RET2(tnn_tensor_dtype(if_), -1, TNN_ERR_ARG, "tnn_tensor_dtype", "freed");
    CHECK_ERR2(tnn_tensor_set_name(tf, "x"), TNN_ERR_ARG, "tnn_tensor_set_name", "freed");
    CHECK_NULL2(tnn_tensor_name(tf), TNN_ERR_ARG, "tnn_tensor_name", "freed");
    CHECK_VOID2(tnn_set_output(gf), TNN_ERR_ARG, "tnn_set_output", "freed");
    CHECK_VOID2(tnn_set_param(tf), TNN_ERR_ARG, "tnn_set_param", "freed");
    CHECK_VOID2(tnn_scratch_set(sf, 0, 1.0), TNN_ERR_ARG, "tnn_scratch_set", "not a live session");
    CHECK_VOID2(tnn_scratch_set_i32(sf, 0, 1), TNN_ERR_ARG, "tnn_scratch_set_i32",
                "not a live session");
    CHECK_RET2(tnn_scratch_get(sf, 0), 0.0, TNN_ERR_ARG, "tnn_scratch_get", "not a live session");
    CHECK_RET2(tnn_scratch_get_i32(sf, 0), 0, TNN_ERR_ARG, "tnn_scratch_get_i32",
               "not a live session");
    CHECK_VOID2(tnn_gelu_back_scratch(sf, 1), TNN_ERR_ARG, "tnn_gelu_back_scratch",
                "not a live session");
    CHECK_VOID2(tnn_adam_step_scratch(sf, 1, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "not a live session");
    CHECK_RET2(tnn_session_arena_bytes(sf), 0, TNN_ERR_ARG, "tnn_session_arena_bytes",
               "not a live session");
    CHECK_NULL2(tnn_reshape(sa, tf, 1, (int64_t[]){6}), TNN_ERR_ARG, "tnn_reshape", "freed");
    CHECK_NULL2(tnn_rope(sa, tf, 1, 1, 10000.0, 0), TNN_ERR_ARG, "tnn_rope", "freed");
    CHECK_NULL2(tnn_attention(sa, ta, ta2, tf, 1, 1, 1), TNN_ERR_ARG, "tnn_attention", "'v'");
    CHECK_NULL2(tnn_cross_entropy(sa, tf, ia, -1), TNN_ERR_ARG, "tnn_cross_entropy", "freed");
    CHECK_ERR2(tnn_backward(sf, gf), TNN_ERR_ARG, "tnn_backward", "not a live session");
    CHECK_ERR2(tnn_backward(sa, gf), TNN_ERR_ARG, "tnn_backward", "freed");
    CHECK_NULL2(tnn_grad(sa, tf), TNN_ERR_ARG, "tnn_grad", "freed");
    CHECK_ERR2(tnn_optimizer_sgd(sf, 0.1, 0.0, 0.0), TNN_ERR_ARG, "tnn_optimizer_sgd",
               "not a live session");
    CHECK_ERR2(tnn_optimizer_adamw(sf, 1e-3, 0.9, 0.999, 1e-8, 0.0), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "not a live session");
    CHECK_ERR2(tnn_set_lr(sf, 0.1), TNN_ERR_ARG, "tnn_set_lr", "not a live session");
    CHECK_ERR2(tnn_set_grad_clip(sf, 1.0), TNN_ERR_ARG, "tnn_set_grad_clip", "not a live session");
    CHECK_RET2(tnn_optimizer_steps(sf), -1, TNN_ERR_ARG, "tnn_optimizer_steps",
               "not a live session");
    CHECK_VOID2(tnn_set_no_decay(tf), TNN_ERR_ARG, "tnn_set_no_decay", "live session");
    /* Freeing it again is refused, not a double free. */
    CHECK_VOID2(tnn_session_free(sf), TNN_ERR_ARG, "tnn_session_free", "not a live session");

    check_works(sa, "foreign and freed handles (session a)");
    check_works(sb, "foreign and freed handles (session b)");
    CHECK(holds(sb, tb, d6, 6), "sb's tensor changed");
    tnn_session_free(sa);
    tnn_session_free(sb);
}

/* ------------------------------------------------------------------------ */
/* Shape ops, transformer ops, the loss                                     */
/* ------------------------------------------------------------------------ */

static void test_model_ops(void) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 4, 8);
    tnn_tensor *xi = tnn_tensor_new(s, TNN_I32, 2, (int64_t[]){4, 8});
    tnn_tensor *v = tnn_input_1d_f32(s, 8);
    CHECK(x && xi && v, "inputs: %s", tnn_last_error());

    /* reshape */
    CHECK_NULL2(tnn_reshape(NULL, x, 1, (int64_t[]){32}), TNN_ERR_ARG, "tnn_reshape", "session");
    CHECK_NULL2(tnn_reshape(s, NULL, 1, (int64_t[]){32}), TNN_ERR_ARG, "tnn_reshape", "NULL");
    CHECK_NULL2(tnn_reshape(s, x, 0, (int64_t[]){32}), TNN_ERR_ARG, "tnn_reshape", "ndim=0");
    CHECK_NULL2(tnn_reshape(s, x, 5, (int64_t[]){1, 1, 1, 1, 32}), TNN_ERR_ARG, "tnn_reshape",
                "ndim=5");
    CHECK_NULL2(tnn_reshape(s, x, 2, NULL), TNN_ERR_ARG, "tnn_reshape", "shape");
    CHECK_NULL2(tnn_reshape(s, x, 2, (int64_t[]){0, 32}), TNN_ERR_ARG, "tnn_reshape",
                "shape[0]=0");
    CHECK_NULL2(tnn_reshape(s, x, 2, (int64_t[]){-4, -8}), TNN_ERR_ARG, "tnn_reshape",
                "shape[0]=-4");
    CHECK_NULL2(tnn_reshape(s, x, 3, (int64_t[]){(int64_t)1 << 40, (int64_t)1 << 40, 2}),
                TNN_ERR_OVERFLOW, "tnn_reshape", "overflows");
    CHECK_NULL2(tnn_reshape(s, x, 2, (int64_t[]){5, 6}), TNN_ERR_SHAPE, "tnn_reshape", "(4, 8)");
    CHECK(tnn_reshape(s, x, 3, (int64_t[]){2, 2, 8}) != NULL, "reshape: %s", tnn_last_error());

    /* rope: x (N, n_head*hd) with hd even, N a multiple of seq_len */
    CHECK_NULL2(tnn_rope(NULL, x, 2, 2, 10000.0, 0), TNN_ERR_ARG, "tnn_rope", "session");
    CHECK_NULL2(tnn_rope(s, NULL, 2, 2, 10000.0, 0), TNN_ERR_ARG, "tnn_rope", "NULL");
    CHECK_NULL2(tnn_rope(s, xi, 2, 2, 10000.0, 0), TNN_ERR_ARG, "tnn_rope", "i32");
    CHECK_NULL2(tnn_rope(s, v, 2, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "n_head=2");
    CHECK_NULL2(tnn_rope(s, x, 0, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "n_head=0");
    CHECK_NULL2(tnn_rope(s, x, -2, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "n_head=-2");
    CHECK_NULL2(tnn_rope(s, x, INT_MIN, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "n_head=");
    CHECK_NULL2(tnn_rope(s, x, 3, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "n_head=3");
    CHECK_NULL2(tnn_rope(s, x, 8, 2, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "hd even");
    CHECK_NULL2(tnn_rope(s, x, 2, 0, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "seq_len=0");
    CHECK_NULL2(tnn_rope(s, x, 2, 3, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "seq_len=3");
    CHECK_NULL2(tnn_rope(s, x, 2, INT_MIN, 10000.0, 0), TNN_ERR_SHAPE, "tnn_rope", "seq_len=");
    CHECK_NULL2(tnn_rope(s, x, 2, 2, 10000.0, 2), TNN_ERR_ARG, "tnn_rope", "mode=2");
    CHECK_NULL2(tnn_rope(s, x, 2, 2, 10000.0, -1), TNN_ERR_ARG, "tnn_rope", "mode=-1");
    CHECK_NULL2(tnn_rope(s, x, 2, 2, 1.0, 0), TNN_ERR_ARG, "tnn_rope", "base=1");
    CHECK_NULL2(tnn_rope(s, x, 2, 2, NAN, 0), TNN_ERR_ARG, "tnn_rope", "base=");
    CHECK_NULL2(tnn_rope(s, x, 2, 2, INFINITY, 0), TNN_ERR_ARG, "tnn_rope", "base=");
    CHECK(tnn_rope(s, x, 2, 2, 10000.0, 1) != NULL, "rope: %s", tnn_last_error());

    /* attention: q (N, n_head*hd), k and v (N, n_kv_head*hd) */
    tnn_tensor *kv = tnn_input_2d_f32(s, 4, 4), *kv2 = tnn_input_2d_f32(s, 4, 4);
    tnn_tensor *k3 = tnn_input_2d_f32(s, 3, 4), *k6 = tnn_input_2d_f32(s, 4, 6);
    CHECK_NULL2(tnn_attention(NULL, x, kv, kv2, 2, 1, 2), TNN_ERR_ARG, "tnn_attention", "session");
    CHECK_NULL2(tnn_attention(s, NULL, kv, kv2, 2, 1, 2), TNN_ERR_ARG, "tnn_attention", "'q'");
    CHECK_NULL2(tnn_attention(s, x, NULL, kv2, 2, 1, 2), TNN_ERR_ARG, "tnn_attention", "'k'");
    CHECK_NULL2(tnn_attention(s, x, kv, NULL, 2, 1, 2), TNN_ERR_ARG, "tnn_attention", "'v'");
    CHECK_NULL2(tnn_attention(s, xi, kv, kv2, 2, 1, 2), TNN_ERR_ARG, "tnn_attention", "i32");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 0, 1, 2), TNN_ERR_ARG, "tnn_attention", "n_head=0");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 2, 0, 2), TNN_ERR_ARG, "tnn_attention",
                "n_kv_head=0");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 3, 2, 2), TNN_ERR_ARG, "tnn_attention", "multiple");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, INT_MIN, -1, 2), TNN_ERR_ARG, "tnn_attention",
                "n_head=");
    CHECK_NULL2(tnn_attention(s, x, k3, k3, 2, 1, 1), TNN_ERR_SHAPE, "tnn_attention", "(3, 4)");
    CHECK_NULL2(tnn_attention(s, x, kv, k6, 2, 1, 2), TNN_ERR_SHAPE, "tnn_attention", "(4, 6)");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 2, 2, 2), TNN_ERR_SHAPE, "tnn_attention",
                "n_kv_head=2");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 2, 1, 3), TNN_ERR_SHAPE, "tnn_attention",
                "seq_len=3");
    CHECK_NULL2(tnn_attention(s, x, kv, kv2, 2, 1, -2), TNN_ERR_SHAPE, "tnn_attention",
                "seq_len=-2");
    CHECK(tnn_attention(s, x, kv, kv2, 2, 1, 2) != NULL, "attention: %s", tnn_last_error());

    /* cross-entropy: logits (N, V) f32, targets (N) i32 */
    tnn_tensor *logits = tnn_input_2d_f32(s, 3, 5), *tg = tnn_input_1d_i32(s, 3);
    tnn_tensor *tg2 = tnn_input_1d_i32(s, 2), *tgf = tnn_input_1d_f32(s, 3);
    CHECK_NULL2(tnn_cross_entropy(NULL, logits, tg, -1), TNN_ERR_ARG, "tnn_cross_entropy",
                "session");
    CHECK_NULL2(tnn_cross_entropy(s, NULL, tg, -1), TNN_ERR_ARG, "tnn_cross_entropy", "'logits'");
    CHECK_NULL2(tnn_cross_entropy(s, logits, NULL, -1), TNN_ERR_ARG, "tnn_cross_entropy",
                "'targets'");
    CHECK_NULL2(tnn_cross_entropy(s, xi, tg, -1), TNN_ERR_ARG, "tnn_cross_entropy", "i32");
    CHECK_NULL2(tnn_cross_entropy(s, logits, tgf, -1), TNN_ERR_ARG, "tnn_cross_entropy",
                "targets f32");
    CHECK_NULL2(tnn_cross_entropy(s, v, tg, -1), TNN_ERR_SHAPE, "tnn_cross_entropy", "logits");
    CHECK_NULL2(tnn_cross_entropy(s, logits, tg2, -1), TNN_ERR_SHAPE, "tnn_cross_entropy",
                "targets i32(2)");
    /* the padded form: 1 <= n_classes <= V, the same checks of its tensors */
    CHECK_NULL2(tnn_cross_entropy_padded(NULL, logits, tg, -1, 4), TNN_ERR_ARG,
                "tnn_cross_entropy_padded", "session");
    CHECK_NULL2(tnn_cross_entropy_padded(s, logits, tg2, -1, 4), TNN_ERR_SHAPE,
                "tnn_cross_entropy_padded", "targets i32(2)");
    CHECK_NULL2(tnn_cross_entropy_padded(s, logits, tg, -1, 0), TNN_ERR_ARG,
                "tnn_cross_entropy_padded", "n_classes = 0");
    CHECK_NULL2(tnn_cross_entropy_padded(s, logits, tg, -1, -3), TNN_ERR_ARG,
                "tnn_cross_entropy_padded", "n_classes = -3");
    CHECK_NULL2(tnn_cross_entropy_padded(s, logits, tg, -1, 6), TNN_ERR_ARG,
                "tnn_cross_entropy_padded", "n_classes = 6: want 1 to the logits' 5 columns");
    CHECK(tnn_cross_entropy_padded(s, logits, tg, -1, 5) != NULL, "padded, 5 of 5: %s",
          tnn_last_error());
    tnn_tensor *loss = tnn_cross_entropy(s, logits, tg, -100);
    CHECK(loss != NULL, "cross_entropy: %s", tnn_last_error());
    CHECK_OK(tnn_realize(s, loss));
    double lv[15];
    for (int i = 0; i < 15; i++) lv[i] = 0.25 * (i % 7) - 0.5;
    CHECK_OK(tnn_upload_from_float_array(s, logits, lv, 15));
    const struct {
        int64_t t[3];
        const char *needle;
    } bad[] = {
        {{0, 5, 1}, "targets[1] = 5"},
        {{-1, 0, 1}, "targets[0] = -1"},
        {{0, 1, INT32_MAX}, "targets[2] = 2147483647"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        CHECK_OK(tnn_upload_from_int_array(s, tg, bad[k].t, 3));
        CHECK_ERR2(tnn_compute(s), TNN_ERR_RANGE, "tnn_cross_entropy", bad[k].needle);
    }
    /* ignore_index rows are skipped, not range-checked; fixed, it computes */
    int64_t good[3] = {4, -100, 0};
    CHECK_OK(tnn_upload_from_int_array(s, tg, good, 3));
    CHECK_OK(tnn_compute(s));
    double got = 0, want = 0;
    CHECK_OK(tnn_download_to_f64_array(s, loss, &got, 1));
    for (int r = 0; r < 3; r++) {
        if (good[r] == -100) continue;
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < 5; j++) mx = fmax(mx, lv[r * 5 + j]);
        for (int j = 0; j < 5; j++) sum += exp(lv[r * 5 + j] - mx);
        want += (mx + log(sum) - lv[r * 5 + good[r]]) / 2.0;
    }
    CHECK(fabs(got - want) <= 1e-6 * (1 + fabs(want)), "cross_entropy = %.9g, want %.9g", got,
          want);
    check_works(s, "model op errors");
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Autograd and optimizers: wrong order, bad values                         */
/* ------------------------------------------------------------------------ */

static void test_training_api(void) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *w = tnn_input_2d_f32(s, 2, 3), *x = tnn_input_2d_f32(s, 2, 3);
    tnn_tensor *idx = tnn_input_1d_i32(s, 2);
    tnn_tensor *wx = tnn_mul(s, w, x);
    tnn_tensor *loss = tnn_sum(s, wx);
    CHECK(loss != NULL, "graph: %s", tnn_last_error());

    /* Only f32 leaves can be parameters. */
    CHECK_VOID2(tnn_set_param(idx), TNN_ERR_ARG, "tnn_set_param", "f32");
    CHECK_VOID2(tnn_set_no_decay(NULL), TNN_ERR_ARG, "tnn_set_no_decay", "live session");

    /* Everything that needs tnn_backward first */
    CHECK_NULL2(tnn_grad(s, w), TNN_ERR_STATE, "tnn_grad", "tnn_backward");
    CHECK_ERR2(tnn_optimizer_sgd(s, 0.1, 0.0, 0.0), TNN_ERR_STATE, "tnn_optimizer_sgd",
               "tnn_backward");
    CHECK_ERR2(tnn_optimizer_adamw(s, 1e-3, 0.9, 0.999, 1e-8, 0.0), TNN_ERR_STATE,
               "tnn_optimizer_adamw", "tnn_backward");
    CHECK_ERR2(tnn_set_lr(s, 0.1), TNN_ERR_STATE, "tnn_set_lr", "optimizer");
    CHECK_ERR2(tnn_set_grad_clip(s, 1.0), TNN_ERR_STATE, "tnn_set_grad_clip", "optimizer");
    CHECK_RET2(tnn_optimizer_steps(s), -1, TNN_ERR_STATE, "tnn_optimizer_steps", "optimizer");
    CHECK_RET2(tnn_optimizer_skipped(s), -1, TNN_ERR_STATE, "tnn_optimizer_skipped", "optimizer");
    tnn_clear_error();
    CHECK(isnan(tnn_grad_norm(s)) && tnn_last_status() == TNN_ERR_STATE &&
              msg_has("tnn_grad_norm", "optimizer"),
          "tnn_grad_norm without an optimizer: %s", tnn_last_error());

    /* tnn_backward's own checks */
    CHECK_ERR2(tnn_backward(NULL, loss), TNN_ERR_ARG, "tnn_backward", "session");
    CHECK_ERR2(tnn_backward(s, NULL), TNN_ERR_ARG, "tnn_backward", "'loss'");
    CHECK_ERR2(tnn_backward(s, loss), TNN_ERR_ARG, "tnn_backward", "no parameter");
    tnn_set_param(w);
    CHECK_ERR2(tnn_backward(s, wx), TNN_ERR_SHAPE, "tnn_backward", "one element");
    CHECK_ERR2(tnn_backward(s, idx), TNN_ERR_SHAPE, "tnn_backward", "loss");
    tnn_tensor *nograd = tnn_sum(s, tnn_silu_back(s, w, x));
    CHECK_ERR2(tnn_backward(s, nograd), TNN_ERR_UNSUPPORTED, "tnn_backward", "tnn_silu_back");
    check_works(s, "refused tnn_backward calls");

    /* With the loss accepted: a second call is refused, bad hyperparameters too */
    CHECK_OK(tnn_backward(s, loss));
    CHECK_ERR2(tnn_backward(s, loss), TNN_ERR_STATE, "tnn_backward", "already");
    CHECK_NULL2(tnn_grad(NULL, w), TNN_ERR_ARG, "tnn_grad", "session");
    CHECK_NULL2(tnn_grad(s, NULL), TNN_ERR_ARG, "tnn_grad", "'param'");
    CHECK_NULL2(tnn_grad(s, x), TNN_ERR_STATE, "tnn_grad", "tnn_set_param");
    CHECK_ERR2(tnn_optimizer_sgd(NULL, 0.1, 0.0, 0.0), TNN_ERR_ARG, "tnn_optimizer_sgd", "session");
    CHECK_ERR2(tnn_optimizer_sgd(s, -0.1, 0.0, 0.0), TNN_ERR_ARG, "tnn_optimizer_sgd", "lr=-0.1");
    CHECK_ERR2(tnn_optimizer_sgd(s, NAN, 0.0, 0.0), TNN_ERR_ARG, "tnn_optimizer_sgd", "lr=");
    CHECK_ERR2(tnn_optimizer_sgd(s, 0.1, 1.0, 0.0), TNN_ERR_ARG, "tnn_optimizer_sgd", "momentum=1");
    CHECK_ERR2(tnn_optimizer_sgd(s, 0.1, 0.0, -1.0), TNN_ERR_ARG, "tnn_optimizer_sgd",
               "weight_decay=-1");
    CHECK_ERR2(tnn_optimizer_adamw(s, INFINITY, 0.9, 0.999, 1e-8, 0.0), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "lr=inf");
    CHECK_ERR2(tnn_optimizer_adamw(s, 1e-3, 1.0, 0.999, 1e-8, 0.0), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "beta1=1");
    CHECK_ERR2(tnn_optimizer_adamw(s, 1e-3, 0.9, -0.5, 1e-8, 0.0), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "beta2=-0.5");
    CHECK_ERR2(tnn_optimizer_adamw(s, 1e-3, 0.9, 0.999, 0.0, 0.0), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "eps=0");
    CHECK_ERR2(tnn_optimizer_adamw(s, 1e-3, 0.9, 0.999, 1e-8, NAN), TNN_ERR_ARG,
               "tnn_optimizer_adamw", "weight_decay=");
    /* refused optimizers leave none behind */
    CHECK_ERR2(tnn_set_lr(s, 0.1), TNN_ERR_STATE, "tnn_set_lr", "optimizer");

    CHECK_OK(tnn_optimizer_sgd(s, 0.5, 0.0, 0.0));
    CHECK_ERR2(tnn_set_lr(NULL, 0.1), TNN_ERR_ARG, "tnn_set_lr", "session");
    CHECK_ERR2(tnn_set_lr(s, -1.0), TNN_ERR_ARG, "tnn_set_lr", "lr=-1");
    CHECK_ERR2(tnn_set_lr(s, NAN), TNN_ERR_ARG, "tnn_set_lr", "lr=");
    CHECK_ERR2(tnn_set_grad_clip(s, -2.0), TNN_ERR_ARG, "tnn_set_grad_clip", "max_norm=-2");
    CHECK_ERR2(tnn_set_grad_clip(s, INFINITY), TNN_ERR_ARG, "tnn_set_grad_clip", "max_norm=inf");
    CHECK_RET2(tnn_optimizer_steps(NULL), -1, TNN_ERR_ARG, "tnn_optimizer_steps", "session");

    /* compute before realize is refused; after it one SGD step runs: w -= 0.5 x */
    CHECK_ERR2(tnn_compute(s), TNN_ERR_STATE, "tnn_compute", "tnn_realize");
    CHECK_OK(tnn_realize(s, loss));
    double wv[6] = {1, 2, 3, 4, 5, 6}, xv[6] = {0.5, -1, 2, 0, 1.5, -2}, got[6];
    CHECK_OK(tnn_upload_from_float_array(s, w, wv, 6));
    CHECK_OK(tnn_upload_from_float_array(s, x, xv, 6));
    CHECK_OK(tnn_compute(s));
    tnn_tensor *g = tnn_grad(s, w);
    CHECK(g && tnn_download_to_f64_array(s, g, got, 6) == TNN_OK && !memcmp(got, xv, sizeof xv),
          "grad(w) is not x: %s", tnn_last_error());
    CHECK_OK(tnn_download_to_f64_array(s, w, got, 6));
    for (int i = 0; i < 6; i++)
        CHECK(got[i] == wv[i] - 0.5 * xv[i], "w[%d] = %g after a step, want %g", i, got[i],
              wv[i] - 0.5 * xv[i]);
    CHECK(tnn_optimizer_steps(s) == 1 && tnn_optimizer_skipped(s) == 0,
          "steps %lld, skipped %lld", (long long)tnn_optimizer_steps(s),
          (long long)tnn_optimizer_skipped(s));
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* Host-side kernels on the scratch                                         */
/* ------------------------------------------------------------------------ */

/* Slots [0, n) as they are now. */
static void snapshot(tnn_session *s, double *dst, int n) {
    for (int i = 0; i < n; i++) dst[i] = tnn_scratch_get(s, i);
}

static int unchanged(tnn_session *s, const double *snap, int n) {
    for (int i = 0; i < n; i++)
        if (tnn_scratch_get(s, i) != snap[i]) return 0;
    return 1;
}

static void test_scratch_kernels(void) {
    enum { N = 5 };
    double before[4 * N + 4];

    /* gelu_back: 2n slots are needed; 2n-1 are not enough */
    tnn_session *s = tnn_session_new(0);
    for (int i = 0; i < 2 * N - 1; i++) tnn_scratch_set(s, i, 0.25 * (i + 1));
    snapshot(s, before, 3 * N);
    CHECK_VOID2(tnn_gelu_back_scratch(s, N), TNN_ERR_RANGE, "tnn_gelu_back_scratch", "n=5");
    CHECK(unchanged(s, before, 3 * N), "a refused gelu_back_scratch changed the scratch");
    CHECK_VOID2(tnn_gelu_back_scratch(s, 0), TNN_ERR_ARG, "tnn_gelu_back_scratch", "n=0");
    CHECK_VOID2(tnn_gelu_back_scratch(s, -4), TNN_ERR_ARG, "tnn_gelu_back_scratch", "n=-4");
    CHECK_VOID2(tnn_gelu_back_scratch(s, INT_MIN), TNN_ERR_ARG, "tnn_gelu_back_scratch", "n=");
    CHECK(unchanged(s, before, 3 * N), "a refused gelu_back_scratch changed the scratch");
    /* with the last slot written it runs */
    tnn_scratch_set(s, 2 * N - 1, 1.0);
    tnn_clear_error();
    tnn_gelu_back_scratch(s, N);
    CHECK(tnn_last_status() == TNN_OK, "gelu_back_scratch: %s", tnn_last_error());
    for (int i = 0; i < N; i++) {
        double x = tnn_scratch_get(s, i), dh = tnn_scratch_get(s, N + i);
        double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = tanh(u);
        double d = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * 0.7978845608028654 *
                                       (1 + 3 * 0.044715 * x * x);
        double got = tnn_scratch_get(s, 2 * N + i);
        CHECK(fabs(got - dh * d) <= 1e-6 + 1e-5 * fabs(dh * d), "gelu_back[%d] = %g, want %g",
              i, got, dh * d);
    }
    tnn_session_free(s);

    /* adam: 4n slots are needed */
    s = tnn_session_new(0);
    for (int i = 0; i < 4 * N - 1; i++) tnn_scratch_set(s, i, 0.125 * (i % 7) + 0.5);
    snapshot(s, before, 4 * N);
    CHECK_VOID2(tnn_adam_step_scratch(s, N, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001), TNN_ERR_RANGE,
                "tnn_adam_step_scratch", "n=5");
    CHECK_VOID2(tnn_adam_step_scratch(s, 0, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "n=0");
    CHECK_VOID2(tnn_adam_step_scratch(s, -1, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "n=-1");
    tnn_scratch_set(s, 4 * N - 1, 0.75);
    snapshot(s, before, 4 * N);
    CHECK_VOID2(tnn_adam_step_scratch(s, N, 1e-2, 0.9, 0.999, 1e-8, 0.0, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "omc1");
    CHECK_VOID2(tnn_adam_step_scratch(s, N, 1e-2, 0.9, 0.999, 1e-8, 0.1, -1.0), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "omc2");
    CHECK_VOID2(tnn_adam_step_scratch(s, N, 1e-2, 0.9, 0.999, 1e-8, NAN, 0.001), TNN_ERR_ARG,
                "tnn_adam_step_scratch", "omc1");
    CHECK(unchanged(s, before, 4 * N), "a refused adam_step_scratch changed the scratch");
    /* all slots written, good corrections: it runs */
    tnn_clear_error();
    tnn_adam_step_scratch(s, N, 1e-2, 0.9, 0.999, 1e-8, 0.1, 0.001);
    CHECK(tnn_last_status() == TNN_OK, "adam_step_scratch: %s", tnn_last_error());
    for (int i = 0; i < N; i++) {
        double p = before[i], g = before[N + i], m = before[2 * N + i], v = before[3 * N + i];
        m = 0.9 * m + 0.1 * g;
        v = 0.999 * v + 0.001 * g * g;
        p -= 1e-2 * (m / 0.1) / (sqrt(v / 0.001) + 1e-8);
        CHECK(fabs(tnn_scratch_get(s, i) - p) <= 1e-6 + 1e-6 * fabs(p) &&
                  fabs(tnn_scratch_get(s, 2 * N + i) - m) <= 1e-6 * fabs(m) + 1e-7 &&
                  fabs(tnn_scratch_get(s, 3 * N + i) - v) <= 1e-6 * fabs(v) + 1e-7,
              "adam[%d]: p %g want %g", i, tnn_scratch_get(s, i), p);
    }
    check_works(s, "scratch kernels");
    tnn_session_free(s);
}

/* ------------------------------------------------------------------------ */
/* One-call tnn_mat_* functions                                             */
/* ------------------------------------------------------------------------ */

#define SENTINEL (-12345.5)

static void fill_sentinel(double *p, int n) {
    for (int i = 0; i < n; i++) p[i] = SENTINEL;
}

static int untouched(const double *p, int n) {
    for (int i = 0; i < n; i++)
        if (p[i] != SENTINEL) return 0;
    return 1;
}

/* The call must fail with status, name the function and n2, and leave out alone. */
#define CHECK_MAT(expr, status, fn, n2)                                                       \
    do {                                                                                      \
        fill_sentinel(out, 64);                                                               \
        CHECK_ERR2(expr, status, fn, n2);                                                     \
        CHECK(untouched(out, 64), "%s wrote its output on failure", #expr);                   \
    } while (0)

static void test_mat_functions(void) {
    double a[64], b[64], c[64], out[64];
    for (int i = 0; i < 64; i++)
        a[i] = (i % 5) - 2, b[i] = 0.5 * ((i % 3) - 1), c[i] = 0.25 * (i % 4);

    /* products: NULL pointers, bad sizes, inner dimensions that differ */
    static const struct {
        const char *name;
        int (*fn)(const double *, int, int, const double *, int, int, double *);
        int ar, ac, br, bc; /* shapes whose inner dimensions differ */
    } prods[] = {
        {"tnn_mat_matmul", tnn_mat_matmul, 2, 3, 2, 3},
        {"tnn_mat_matmul_t", tnn_mat_matmul_t, 2, 3, 2, 4},
        {"tnn_mat_t_matmul", tnn_mat_t_matmul, 2, 3, 3, 2},
    };
    for (int i = 0; i < 3; i++) {
        const char *fn = prods[i].name;
        CHECK_MAT(prods[i].fn(NULL, 2, 3, b, 3, 2, out), TNN_ERR_ARG, fn, "NULL");
        CHECK_MAT(prods[i].fn(a, 2, 3, NULL, 3, 2, out), TNN_ERR_ARG, fn, "NULL");
        CHECK_ERR2(prods[i].fn(a, 2, 3, b, 3, 2, NULL), TNN_ERR_ARG, fn, "NULL");
        CHECK_MAT(prods[i].fn(a, 0, 3, b, 3, 2, out), TNN_ERR_ARG, fn, "0 x 3");
        CHECK_MAT(prods[i].fn(a, 2, -3, b, 3, 2, out), TNN_ERR_ARG, fn, "2 x -3");
        CHECK_MAT(prods[i].fn(a, 2, 3, b, 3, 0, out), TNN_ERR_ARG, fn, "3 x 0");
        CHECK_MAT(prods[i].fn(a, prods[i].ar, prods[i].ac, b, prods[i].br, prods[i].bc, out),
                  TNN_ERR_SHAPE, fn, "inner");
    }
    /* and the fitting call works: a (2x3) @ b (3x2) */
    CHECK_OK(tnn_mat_matmul(a, 2, 3, b, 3, 2, out));
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            double w = 0;
            for (int k = 0; k < 3; k++) w += a[i * 3 + k] * b[k * 2 + j];
            CHECK(out[i * 2 + j] == w, "matmul[%d][%d] = %g, want %g", i, j, out[i * 2 + j], w);
        }

    /* element-wise and row functions */
    static const struct {
        const char *name;
        int (*fn)(const double *, const double *, int, int, double *);
    } bins[] = {
        {"tnn_mat_add", tnn_mat_add},
        {"tnn_mat_mul", tnn_mat_mul},
        {"tnn_mat_gelu_back", tnn_mat_gelu_back},
        {"tnn_mat_silu_back", tnn_mat_silu_back},
        {"tnn_mat_softmax_back", tnn_mat_softmax_back},
    };
    for (int i = 0; i < 5; i++) {
        const char *fn = bins[i].name;
        CHECK_MAT(bins[i].fn(NULL, b, 2, 3, out), TNN_ERR_ARG, fn, "NULL");
        CHECK_MAT(bins[i].fn(a, NULL, 2, 3, out), TNN_ERR_ARG, fn, "NULL");
        CHECK_ERR2(bins[i].fn(a, b, 2, 3, NULL), TNN_ERR_ARG, fn, "NULL");
        CHECK_MAT(bins[i].fn(a, b, 0, 3, out), TNN_ERR_ARG, fn, "0 x 3");
        CHECK_MAT(bins[i].fn(a, b, 2, -1, out), TNN_ERR_ARG, fn, "2 x -1");
        CHECK_MAT(bins[i].fn(a, b, INT_MIN, INT_MIN, out), TNN_ERR_ARG, fn, "sizes");
    }
    static const struct {
        const char *name;
        int (*fn)(const double *, int, int, double *);
    } unas[] = {
        {"tnn_mat_gelu", tnn_mat_gelu},
        {"tnn_mat_silu", tnn_mat_silu},
        {"tnn_mat_softmax", tnn_mat_softmax},
        {"tnn_mat_transpose", tnn_mat_transpose},
    };
    for (int i = 0; i < 4; i++) {
        const char *fn = unas[i].name;
        CHECK_MAT(unas[i].fn(NULL, 2, 3, out), TNN_ERR_ARG, fn, "NULL");
        CHECK_ERR2(unas[i].fn(a, 2, 3, NULL), TNN_ERR_ARG, fn, "NULL");
        CHECK_MAT(unas[i].fn(a, 0, 0, out), TNN_ERR_ARG, fn, "0 x 0");
        CHECK_MAT(unas[i].fn(a, -2, 3, out), TNN_ERR_ARG, fn, "-2 x 3");
    }
    CHECK_MAT(tnn_mat_scale(NULL, 2, 3, 2.0, out), TNN_ERR_ARG, "tnn_mat_scale", "NULL");
    CHECK_ERR2(tnn_mat_scale(a, 2, 3, 2.0, NULL), TNN_ERR_ARG, "tnn_mat_scale", "NULL");
    CHECK_MAT(tnn_mat_scale(a, 2, 0, 2.0, out), TNN_ERR_ARG, "tnn_mat_scale", "2 x 0");

    /* RMSNorm and its backward: NULLs, sizes, eps */
    CHECK_MAT(tnn_mat_rms_norm(NULL, 2, 3, c, 1e-5, out), TNN_ERR_ARG, "tnn_mat_rms_norm", "'x'");
    CHECK_MAT(tnn_mat_rms_norm(a, 2, 3, NULL, 1e-5, out), TNN_ERR_ARG, "tnn_mat_rms_norm",
              "'gamma'");
    CHECK_ERR2(tnn_mat_rms_norm(a, 2, 3, c, 1e-5, NULL), TNN_ERR_ARG, "tnn_mat_rms_norm", "'out'");
    CHECK_MAT(tnn_mat_rms_norm(a, 0, 3, c, 1e-5, out), TNN_ERR_ARG, "tnn_mat_rms_norm", "0 x 3");
    CHECK_MAT(tnn_mat_rms_norm(a, 2, 3, c, -1.0, out), TNN_ERR_ARG, "tnn_mat_rms_norm", "eps");
    CHECK_MAT(tnn_mat_rms_norm(a, 2, 3, c, NAN, out), TNN_ERR_ARG, "tnn_mat_rms_norm", "eps");
    CHECK_MAT(tnn_mat_rms_norm(a, 2, 3, c, INFINITY, out), TNN_ERR_ARG, "tnn_mat_rms_norm", "eps");
    CHECK_MAT(tnn_mat_rms_norm_back(a, b, 2, 3, INFINITY, out), TNN_ERR_ARG,
              "tnn_mat_rms_norm_back", "eps");
    CHECK_MAT(tnn_mat_rms_norm_back(a, b, 2, 3, NAN, out), TNN_ERR_ARG, "tnn_mat_rms_norm_back",
              "eps");
    CHECK_MAT(tnn_mat_rms_norm_back(a, b, 2, 3, -1.0, out), TNN_ERR_ARG, "tnn_mat_rms_norm_back",
              "eps");
    CHECK_MAT(tnn_mat_rms_norm_back(NULL, b, 2, 3, 1e-5, out), TNN_ERR_ARG,
              "tnn_mat_rms_norm_back", "NULL");
    CHECK_MAT(tnn_mat_rms_norm_back(a, b, 2, -3, 1e-5, out), TNN_ERR_ARG,
              "tnn_mat_rms_norm_back", "2 x -3");

    /* Cross-entropy gradient: targets in [0, cols), 1 <= n_pred <= rows */
    int64_t tg[3] = {0, 2, 1};
    int64_t tg_hi[3] = {0, 3, 1}, tg_neg[3] = {-1, 0, 0};
    CHECK_MAT(tnn_mat_cross_entropy_grad(NULL, 3, 3, tg, 3, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "'logits'");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 3, 3, NULL, 3, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "'targets'");
    CHECK_ERR2(tnn_mat_cross_entropy_grad(a, 3, 3, tg, 3, NULL), TNN_ERR_ARG,
               "tnn_mat_cross_entropy_grad", "'out'");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 0, 3, tg, 3, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "0 x 3");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 3, 3, tg_hi, 3, out), TNN_ERR_RANGE,
              "tnn_mat_cross_entropy_grad", "targets[1] = 3");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 3, 3, tg_neg, 3, out), TNN_ERR_RANGE,
              "tnn_mat_cross_entropy_grad", "targets[0] = -1");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 3, 3, tg, 0, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "n_pred=0");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 3, 3, tg, -1, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "n_pred=-1");
    CHECK_MAT(tnn_mat_cross_entropy_grad(a, 2, 3, tg, 3, out), TNN_ERR_ARG,
              "tnn_mat_cross_entropy_grad", "n_pred=3");
    /* only the first n_pred targets are read: a bad one past them is fine */
    CHECK_OK(tnn_mat_cross_entropy_grad(a, 3, 3, tg_hi, 1, out));

    /* Embeddings: indices in [0, rows) / [0, vocab) */
    int64_t ix[3] = {0, 3, 1}, ix_hi[3] = {0, 4, 1}, ix_neg[3] = {0, 1, INT64_MIN};
    CHECK_MAT(tnn_mat_embed_lookup(NULL, 4, 3, ix, 3, out), TNN_ERR_ARG, "tnn_mat_embed_lookup",
              "'table'");
    CHECK_MAT(tnn_mat_embed_lookup(a, 4, 3, NULL, 3, out), TNN_ERR_ARG, "tnn_mat_embed_lookup",
              "'indices'");
    CHECK_ERR2(tnn_mat_embed_lookup(a, 4, 3, ix, 3, NULL), TNN_ERR_ARG, "tnn_mat_embed_lookup",
               "'out'");
    CHECK_MAT(tnn_mat_embed_lookup(a, 4, 3, ix, 0, out), TNN_ERR_ARG, "tnn_mat_embed_lookup",
              "0 x 3");
    CHECK_MAT(tnn_mat_embed_lookup(a, 4, 0, ix, 3, out), TNN_ERR_ARG, "tnn_mat_embed_lookup",
              "4 x 0");
    CHECK_MAT(tnn_mat_embed_lookup(a, 4, 3, ix_hi, 3, out), TNN_ERR_RANGE, "tnn_mat_embed_lookup",
              "indices[1] = 4");
    CHECK_MAT(tnn_mat_embed_lookup(a, 4, 3, ix_neg, 3, out), TNN_ERR_RANGE,
              "tnn_mat_embed_lookup", "indices[2]");
    CHECK_MAT(tnn_mat_embed_back(NULL, 3, 3, ix, 4, out), TNN_ERR_ARG, "tnn_mat_embed_back",
              "'d_out'");
    CHECK_MAT(tnn_mat_embed_back(a, 3, 3, NULL, 4, out), TNN_ERR_ARG, "tnn_mat_embed_back",
              "'indices'");
    CHECK_ERR2(tnn_mat_embed_back(a, 3, 3, ix, 4, NULL), TNN_ERR_ARG, "tnn_mat_embed_back",
               "'out'");
    CHECK_MAT(tnn_mat_embed_back(a, 3, 3, ix, 0, out), TNN_ERR_ARG, "tnn_mat_embed_back", "0 x 3");
    CHECK_MAT(tnn_mat_embed_back(a, -3, 3, ix, 4, out), TNN_ERR_ARG, "tnn_mat_embed_back",
              "-3 x 3");
    CHECK_MAT(tnn_mat_embed_back(a, 3, 3, ix_hi, 4, out), TNN_ERR_RANGE, "tnn_mat_embed_back",
              "indices[1] = 4");
    CHECK_MAT(tnn_mat_embed_back(a, 3, 3, ix, 3, out), TNN_ERR_RANGE, "tnn_mat_embed_back",
              "indices[1] = 3");
    CHECK_OK(tnn_mat_embed_lookup(a, 4, 3, ix, 3, out));
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            CHECK(out[i * 3 + j] == a[ix[i] * 3 + j], "embed_lookup[%d][%d]", i, j);

    /* Optimizer steps: NULLs, sizes, bias corrections; nothing updated on failure */
    double p[6], m[6], v[6], g[6];
    for (int i = 0; i < 6; i++) p[i] = i, m[i] = 0.5, v[i] = 0.25, g[i] = 1.0 - i;
    double p0[6], m0[6], v0[6];
    memcpy(p0, p, sizeof p);
    memcpy(m0, m, sizeof m);
    memcpy(v0, v, sizeof v);
    CHECK_ERR2(tnn_mat_adam_step(NULL, g, m, v, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "'param'");
    CHECK_ERR2(tnn_mat_adam_step(p, NULL, m, v, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "'grad'");
    CHECK_ERR2(tnn_mat_adam_step(p, g, NULL, v, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "'m'");
    CHECK_ERR2(tnn_mat_adam_step(p, g, m, NULL, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "'v'");
    CHECK_ERR2(tnn_mat_adam_step(p, g, m, v, 0, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "0 x 3");
    CHECK_ERR2(tnn_mat_adam_step(p, g, m, v, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.0, 0.001),
               TNN_ERR_ARG, "tnn_mat_adam_step", "omc1");
    CHECK_ERR2(tnn_mat_adam_step(p, g, m, v, 2, 3, 1e-3, 0.9, 0.999, 1e-8, 0.1, NAN),
               TNN_ERR_ARG, "tnn_mat_adam_step", "omc2");
    CHECK(!memcmp(p, p0, sizeof p) && !memcmp(m, m0, sizeof m) && !memcmp(v, v0, sizeof v),
          "a refused tnn_mat_adam_step updated its arrays");
    CHECK_MAT(tnn_mat_sgd_step(NULL, g, 2, 3, 0.1, out), TNN_ERR_ARG, "tnn_mat_sgd_step",
              "'param'");
    CHECK_MAT(tnn_mat_sgd_step(p, NULL, 2, 3, 0.1, out), TNN_ERR_ARG, "tnn_mat_sgd_step", "'grad'");
    CHECK_ERR2(tnn_mat_sgd_step(p, g, 2, 3, 0.1, NULL), TNN_ERR_ARG, "tnn_mat_sgd_step", "'out'");
    CHECK_MAT(tnn_mat_sgd_step(p, g, 2, -3, 0.1, out), TNN_ERR_ARG, "tnn_mat_sgd_step", "2 x -3");
    CHECK_OK(tnn_mat_sgd_step(p, g, 2, 3, 0.5, out));
    for (int i = 0; i < 6; i++)
        CHECK(out[i] == p[i] - 0.5 * g[i], "sgd[%d] = %g, want %g", i, out[i], p[i] - 0.5 * g[i]);

    /* FFN pipeline: every pointer and size */
    CHECK_MAT(tnn_mat_ffn_pipeline(NULL, 2, 3, b, 4, c, 2, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "'h'");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 2, 3, NULL, 4, c, 2, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "'w1'");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 2, 3, b, 4, NULL, 2, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "'w2'");
    CHECK_ERR2(tnn_mat_ffn_pipeline(a, 2, 3, b, 4, c, 2, NULL), TNN_ERR_ARG,
               "tnn_mat_ffn_pipeline", "'out'");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 0, 3, b, 4, c, 2, out), TNN_ERR_ARG, "tnn_mat_ffn_pipeline",
              "0 x 3");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 2, -3, b, 4, c, 2, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "2 x -3");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 2, 3, b, 0, c, 2, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "3 x 0");
    CHECK_MAT(tnn_mat_ffn_pipeline(a, 2, 3, b, 4, c, -1, out), TNN_ERR_ARG,
              "tnn_mat_ffn_pipeline", "4 x -1");
    CHECK_OK(tnn_mat_ffn_pipeline(a, 2, 3, b, 4, c, 2, out));
}

/* ------------------------------------------------------------------------ */
/* Bad input prints nothing at the default log level                        */
/* ------------------------------------------------------------------------ */

static void test_quiet(void) {
    tnn_set_log_callback(NULL, NULL); /* the default sink: stderr */
    tnn_set_log_level(TNN_LOG_WARN);  /* the default level */
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = tnn_input_2d_f32(s, 2, 2), *idx = tnn_input_1d_i32(s, 1);
    tnn_tensor *r = tnn_get_rows(s, x, idx);
    double d[4] = {0};
    int64_t bad[1] = {9};
    FILE *te, *to;
    char err_text[2048], out_text[2048];
    int se = redirect_begin(2, &te), so = se >= 0 ? redirect_begin(1, &to) : -1;
    CHECK(se >= 0 && so >= 0, "could not redirect stdout/stderr");
    if (se < 0 || so < 0) {
        if (se >= 0) redirect_end(2, se, te, err_text, sizeof err_text);
        tnn_session_free(s);
        return;
    }
    /* Nothing here may print; results are checked after the streams are back. */
    int fails = 0;
    fails += tnn_compute(s) != TNN_OK;                        /* before realize */
    fails += tnn_upload(s, x) != TNN_OK;                      /* before realize */
    fails += tnn_input_2d_f32(s, -1, 2) == NULL;
    fails += tnn_tensor_new(s, TNN_F32, 3, (int64_t[]){1 << 30, 1 << 30, 1 << 30}) == NULL;
    fails += tnn_add(s, x, idx) == NULL;
    fails += tnn_matmul(NULL, x, x) == NULL;
    fails += tnn_realize(s, r) == TNN_OK;
    fails += tnn_upload_from_int_array(s, idx, bad, 1) == TNN_OK;
    fails += tnn_compute(s) != TNN_OK;                        /* index out of range */
    fails += tnn_upload_from_float_array(s, x, d, 3) != TNN_OK;
    tnn_scratch_get(s, -1);
    tnn_gelu_back_scratch(s, 1 << 20);
    tnn_session_free((tnn_session *)(void *)d);
    fails += tnn_mat_matmul(d, 2, 2, d, 1, 4, d) != TNN_OK;
    fails += tnn_tensor_ndim(NULL) < 0;
    long no = redirect_end(1, so, to, out_text, sizeof out_text);
    long ne = redirect_end(2, se, te, err_text, sizeof err_text);
    CHECK(fails == 12, "%d of 12 bad calls behaved as they should", fails);
    CHECK(no == 0, "bad input printed %ld bytes to stdout: \"%s\"", no, out_text);
    CHECK(ne == 0, "bad input printed %ld bytes to stderr: \"%s\"", ne, err_text);
    tnn_session_free(s);
    tnn_set_log_callback(capture_log, &logs);
}

int main(void) {
    test_version_and_status();
    test_logging();

    /* From here on every log line reaches the capture; at the default level
     * (WARN) bad input must produce none. */
    tnn_set_log_level(TNN_LOG_WARN);
    tnn_set_log_callback(capture_log, &logs);
    log_reset();

    tnn_session *s = tnn_session_new(0);
    CHECK(s != NULL, "tnn_session_new(0): %s", tnn_last_error());
    test_null_handles(s);
    test_sizes(s);
    test_shapes_and_dtypes(s);
    tnn_session_free(s);
    test_call_order();
    test_transfer_lengths();
    test_embedding_range();
    test_out_of_memory();
    test_foreign_and_freed();
    test_model_ops();
    test_training_api();
    test_scratch_kernels();
    test_mat_functions();
    CHECK(logs.n == 0, "bad input logged %d lines at the default level; last: \"%s\"", logs.n,
          logs.last);
    test_quiet();

    tnn_set_log_callback(NULL, NULL);
    return th_finish("test_errors");
}
