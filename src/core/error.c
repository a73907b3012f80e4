/* error.c - the per-thread last error, status names, the log callback and
 * the version calls.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* Version                                                                  */
/* ------------------------------------------------------------------------ */

#define TNN_STR2(x) #x
#define TNN_STR(x) TNN_STR2(x)

const char *tnn_version(void) {
    return TNN_STR(TNN_VERSION_MAJOR) "." TNN_STR(TNN_VERSION_MINOR) "." TNN_STR(
        TNN_VERSION_PATCH);
}

int tnn_version_number(void) { return TNN_VERSION_NUMBER; }

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

static _Thread_local char err_msg[512];
static _Thread_local int err_status;

int tnn__error(int status, const char *func, const char *fmt, ...) {
    int n = snprintf(err_msg, sizeof err_msg, "%s: ", func);
    if (n < 0 || (size_t)n >= sizeof err_msg) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_msg + n, sizeof err_msg - (size_t)n, fmt, ap);
    va_end(ap);
    err_status = status;
    tnn__log(TNN_LOG_DEBUG, "error %s", err_msg);
    return status;
}

const char *tnn_last_error(void) { return err_msg; }
int tnn_last_status(void) { return err_status; }
void tnn_clear_error(void) {
    err_msg[0] = '\0';
    err_status = TNN_OK;
}

const char *tnn_status_name(int status) {
    switch (status) {
    case TNN_OK: return "TNN_OK";
    case TNN_ERR_ARG: return "TNN_ERR_ARG";
    case TNN_ERR_SHAPE: return "TNN_ERR_SHAPE";
    case TNN_ERR_RANGE: return "TNN_ERR_RANGE";
    case TNN_ERR_STATE: return "TNN_ERR_STATE";
    case TNN_ERR_NOMEM: return "TNN_ERR_NOMEM";
    case TNN_ERR_OVERFLOW: return "TNN_ERR_OVERFLOW";
    case TNN_ERR_UNSUPPORTED: return "TNN_ERR_UNSUPPORTED";
    case TNN_ERR_IO: return "TNN_ERR_IO";
    case TNN_ERR_FORMAT: return "TNN_ERR_FORMAT";
    case TNN_ERR_INTERNAL: return "TNN_ERR_INTERNAL";
    case TNN_ERR_DEVICE: return "TNN_ERR_DEVICE";
    default: return "unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

/* The callback is process-wide by nature (it is the host's sink); it is
 * read and written atomically so threads never see a torn pair. */
typedef struct {
    tnn_log_fn fn;
    void *user;
} log_sink;

static log_sink *_Atomic log_current;
static log_sink log_sinks[2];
static int _Atomic log_which;
static int _Atomic log_level = -1; /* -1: not yet read from TNN_LOG */

static const char *level_name(int level) {
    switch (level) {
    case TNN_LOG_DEBUG: return "debug";
    case TNN_LOG_INFO: return "info";
    case TNN_LOG_WARN: return "warning";
    case TNN_LOG_ERROR: return "error";
    default: return "log";
    }
}

static int env_level(void) {
    const char *e = getenv("TNN_LOG");
    if (!e) return TNN_LOG_WARN;
    if (!strcasecmp(e, "debug")) return TNN_LOG_DEBUG;
    if (!strcasecmp(e, "info")) return TNN_LOG_INFO;
    if (!strcasecmp(e, "warn") || !strcasecmp(e, "warning")) return TNN_LOG_WARN;
    if (!strcasecmp(e, "error")) return TNN_LOG_ERROR;
    if (!strcasecmp(e, "none")) return TNN_LOG_NONE;
    return TNN_LOG_WARN;
}

void tnn_set_log_callback(tnn_log_fn fn, void *user) {
    if (!fn) {
        log_current = NULL;
        return;
    }
    /* Two slots alternate so a reader in flight keeps a consistent pair. */
    int w = 1 - log_which;
    log_sinks[w].fn = fn;
    log_sinks[w].user = user;
    log_which = w;
    log_current = &log_sinks[w];
}

void tnn_set_log_level(int level) {
    if (level < TNN_LOG_DEBUG) level = TNN_LOG_DEBUG;
    if (level > TNN_LOG_NONE) level = TNN_LOG_NONE;
    log_level = level;
}

int tnn_get_log_level(void) {
    int min = log_level;
    return min < 0 ? env_level() : min;
}

void tnn__log(int level, const char *fmt, ...) {
    int min = log_level;
    if (min < 0) {
        min = env_level();
        log_level = min;
    }
    if (level < min || level >= TNN_LOG_NONE) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_sink *sink = log_current;
    if (sink && sink->fn) {
        sink->fn(level, msg, sink->user);
    } else {
        fprintf(stderr, "tinynn: %s: %s\n", level_name(level), msg);
    }
}
