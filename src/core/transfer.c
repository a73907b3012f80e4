/* transfer.c - moving data in and out of tensors: the seed's scratch slots,
 * the direct f64/int64/f32 array transfers, and the host-side kernels that
 * work on the scratch. Every transfer checks its sizes first and either
 * moves everything or nothing.
 */
#include "internal.h"

#include "../quant/quant.h"

#include "../ops/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define XFER_CHUNK 4096 /* elements staged at a time */

/* ------------------------------------------------------------------------ */
/* Scratch                                                                  */
/* ------------------------------------------------------------------------ */

/* Makes slots [0, n) addressable; new slots are zero. */
static int scratch_reserve(tnn_session *s, size_t n, const char *func) {
    if (n <= s->scratch_cap) return TNN_OK;
    size_t cap = s->scratch_cap ? s->scratch_cap : 1024;
    while (cap < n) {
        if (cap > SIZE_MAX / 2 / sizeof(float))
            return tnn__error(TNN_ERR_OVERFLOW, func, "scratch of %zu slots is too large", n);
        cap *= 2;
    }
    float *p = realloc(s->scratch, cap * sizeof(float));
    if (!p)
        return tnn__error(TNN_ERR_NOMEM, func, "out of memory growing the scratch to %zu slots",
                          cap);
    memset(p + s->scratch_cap, 0, (cap - s->scratch_cap) * sizeof(float));
    s->scratch = p;
    s->scratch_cap = cap;
    return TNN_OK;
}

static float *slot_for_write(tnn_session *s, int i, const char *func) {
    if (tnn__check_session(s, func)) return NULL;
    if (i < 0) return (tnn__error(TNN_ERR_RANGE, func, "slot index i=%d is negative", i), NULL);
    if (scratch_reserve(s, (size_t)i + 1, func)) return NULL;
    if ((size_t)i >= s->scratch_len) s->scratch_len = (size_t)i + 1;
    return &s->scratch[i];
}

/* NULL means "reads as zero" (unwritten slot) or an error (then set). */
static const float *slot_for_read(tnn_session *s, int i, const char *func, bool *err) {
    *err = true;
    if (tnn__check_session(s, func)) return NULL;
    if (i < 0) return (tnn__error(TNN_ERR_RANGE, func, "slot index i=%d is negative", i), NULL);
    *err = false;
    if ((size_t)i >= s->scratch_len) return NULL;
    return &s->scratch[i];
}

void tnn_scratch_set(tnn_session *s, int i, double v) {
    float *p = slot_for_write(s, i, __func__);
    if (p) *p = (float)v;
}

double tnn_scratch_get(tnn_session *s, int i) {
    bool err;
    const float *p = slot_for_read(s, i, __func__, &err);
    return p ? (double)*p : 0.0;
}

void tnn_scratch_set_i32(tnn_session *s, int i, int v) {
    float *p = slot_for_write(s, i, __func__);
    if (p) {
        int32_t x = v;
        memcpy(p, &x, sizeof x);
    }
}

int tnn_scratch_get_i32(tnn_session *s, int i) {
    bool err;
    const float *p = slot_for_read(s, i, __func__, &err);
    if (!p) return 0;
    int32_t x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* ------------------------------------------------------------------------ */
/* Checks shared by transfers                                               */
/* ------------------------------------------------------------------------ */

/* The tensor can be written: a leaf of this session with storage. */
static int check_upload(tnn_session *s, tnn_tensor *t, const char *func) {
    if (tnn__check_session(s, func) || tnn__check_tensor(s, t, func, "t")) return tnn_last_status();
    if (t->op != TNN_OP_NONE)
        return tnn__error(TNN_ERR_ARG, func,
                          "tensor #%d is the result of %s: only leaves (inputs, parameters) "
                          "can be uploaded",
                          t->id, tnn__ops[t->op].name);
    if (t->flags & TNN_FLAG_EXTERNAL)
        return tnn__error(TNN_ERR_ARG, func, "tensor #%d ('%s') is read-only: its data is %s",
                          t->id, t->name,
                          t->flags & TNN_FLAG_SHARED ? "another session's" : "borrowed from a file");
    if (!t->data)
        return tnn__error(TNN_ERR_STATE, func,
                          "tensor #%d has no storage yet: call tnn_realize before uploading",
                          t->id);
    return TNN_OK;
}

/* The tensor can be read: it has storage that was not reused. */
static int check_download(tnn_session *s, tnn_tensor *t, const char *func) {
    if (tnn__check_session(s, func) || tnn__check_tensor(s, t, func, "t")) return tnn_last_status();
    if (!t->data)
        return tnn__error(TNN_ERR_STATE, func,
                          "tensor #%d has no storage: it is not part of the realized graph "
                          "(call tnn_realize on it, or mark it with tnn_set_output first)",
                          t->id);
    if (t->flags & TNN_FLAG_TRANSIENT)
        return tnn__error(TNN_ERR_STATE, func,
                          "tensor #%d is an intermediate whose memory was reused; mark it with "
                          "tnn_set_output before tnn_realize to keep it",
                          t->id);
    return TNN_OK;
}

static int check_count(const tnn_tensor *t, size_t n, const char *func) {
    if ((int64_t)n != t->nelem || n > (size_t)INT64_MAX) {
        char b[TNN_SHAPE_BUF];
        return tnn__error(TNN_ERR_SHAPE, func, "n=%zu but tensor #%d %s has %lld elements", n,
                          t->id, tnn__shape_str(t, b, sizeof b), (long long)t->nelem);
    }
    return TNN_OK;
}

static int check_f32(const tnn_tensor *t, const char *func) {
    if (t->dtype != TNN_F32) {
        char b[TNN_SHAPE_BUF];
        return tnn__error(TNN_ERR_ARG, func, "tensor #%d is %s: want f32", t->id,
                          tnn__shape_str(t, b, sizeof b));
    }
    return TNN_OK;
}

static size_t esz(const tnn_tensor *t) { return tnn__dtype_size(t->dtype); }

static bool is_half(const tnn_tensor *t) { return t->dtype == TNN_F16 || t->dtype == TNN_BF16; }

/* f32, or f16 / bf16 storage (the f32 and f64 array transfers convert). */
static int check_float(const tnn_tensor *t, const char *func) {
    return is_half(t) ? TNN_OK : check_f32(t, func);
}

/* Element i of a staging buffer of t's dtype gets v (narrowed to f32, then
 * to f16 / bf16 rounding to nearest even). */
static inline void stage(void *buf, size_t i, int dtype, float v) {
    if (dtype == TNN_F16) ((uint16_t *)buf)[i] = tnn__f32_to_f16(v);
    else if (dtype == TNN_BF16) ((uint16_t *)buf)[i] = tnn__f32_to_bf16(v);
    else ((float *)buf)[i] = v;
}

/* ------------------------------------------------------------------------ */
/* Scratch <-> tensor                                                       */
/* ------------------------------------------------------------------------ */

int tnn_upload(tnn_session *s, tnn_tensor *t) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if (t->dtype != TNN_F32 && t->dtype != TNN_I32)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "tensor #%d: scratch holds f32/int32 slots only", t->id);
    if ((int64_t)s->scratch_len < t->nelem)
        return TNN_ERR(TNN_ERR_RANGE,
                       "tensor #%d needs %lld slots but only %zu were written; nothing copied",
                       t->id, (long long)t->nelem, s->scratch_len);
    return s->backend->copy_in(t->data, s->scratch, t->nbytes);
}

int tnn_download(tnn_session *s, tnn_tensor *t) {
    int rc = check_download(s, t, __func__);
    if (rc) return rc;
    if (t->dtype != TNN_F32 && t->dtype != TNN_I32)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "tensor #%d: scratch holds f32/int32 slots only", t->id);
    if (t->nelem > INT32_MAX)
        return TNN_ERR(TNN_ERR_RANGE,
                       "tensor #%d has %lld elements, more than int slot indices reach; use "
                       "tnn_download_to_f64_array",
                       t->id, (long long)t->nelem);
    rc = scratch_reserve(s, (size_t)t->nelem, __func__);
    if (rc) return rc;
    rc = s->backend->copy_out(s->scratch, t->data, t->nbytes);
    if (rc) return rc;
    if ((size_t)t->nelem > s->scratch_len) s->scratch_len = (size_t)t->nelem;
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Arrays <-> tensor, staged through a small buffer (a backend copy each)   */
/* ------------------------------------------------------------------------ */

int tnn_upload_from_float_array(tnn_session *s, tnn_tensor *t, const double *src, size_t n) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_float(t, __func__)) || (rc = check_count(t, n, __func__))) return rc;
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    float buf[XFER_CHUNK];
    for (size_t off = 0; off < n; off += XFER_CHUNK) {
        size_t m = n - off < XFER_CHUNK ? n - off : XFER_CHUNK;
        for (size_t i = 0; i < m; i++) stage(buf, i, t->dtype, (float)src[off + i]);
        rc = s->backend->copy_in((char *)t->data + off * esz(t), buf, m * esz(t));
        if (rc) return rc;
    }
    return TNN_OK;
}

int tnn_upload_from_int_array(tnn_session *s, tnn_tensor *t, const int64_t *src, size_t n) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if (t->dtype != TNN_I32) {
        char b[TNN_SHAPE_BUF];
        return TNN_ERR(TNN_ERR_ARG, "tensor #%d is %s: want i32", t->id,
                       tnn__shape_str(t, b, sizeof b));
    }
    if ((rc = check_count(t, n, __func__))) return rc;
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    for (size_t i = 0; i < n; i++)
        if (src[i] < INT32_MIN || src[i] > INT32_MAX)
            return TNN_ERR(TNN_ERR_RANGE, "src[%zu] = %lld does not fit in int32; nothing copied", i,
                           (long long)src[i]);
    int32_t buf[XFER_CHUNK];
    for (size_t off = 0; off < n; off += XFER_CHUNK) {
        size_t m = n - off < XFER_CHUNK ? n - off : XFER_CHUNK;
        for (size_t i = 0; i < m; i++) buf[i] = (int32_t)src[off + i];
        rc = s->backend->copy_in((int32_t *)t->data + off, buf, m * sizeof(int32_t));
        if (rc) return rc;
    }
    return TNN_OK;
}

int tnn_upload_transposed_f64(tnn_session *s, tnn_tensor *t, const double *src, int nrows,
                              int ncols) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_float(t, __func__))) return rc;
    if (nrows <= 0 || ncols <= 0)
        return TNN_ERR(TNN_ERR_ARG, "nrows=%d ncols=%d: want sizes >= 1", nrows, ncols);
    if ((rc = check_count(t, (size_t)nrows * (size_t)ncols, __func__))) return rc;
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    /* t[j*nrows + i] = src[i*ncols + j], written in flat order of t */
    float buf[XFER_CHUNK];
    size_t n = (size_t)nrows * (size_t)ncols;
    for (size_t off = 0; off < n; off += XFER_CHUNK) {
        size_t m = n - off < XFER_CHUNK ? n - off : XFER_CHUNK;
        for (size_t q = 0; q < m; q++) {
            size_t f = off + q, j = f / (size_t)nrows, i = f % (size_t)nrows;
            stage(buf, q, t->dtype, (float)src[i * (size_t)ncols + j]);
        }
        rc = s->backend->copy_in((char *)t->data + off * esz(t), buf, m * esz(t));
        if (rc) return rc;
    }
    return TNN_OK;
}

/* Reads t in chunks and hands each (elements of t's own size) to `sink`. */
typedef void (*chunk_sink)(void *ctx, const void *chunk, size_t off, size_t m);

static int read_chunks(tnn_session *s, const tnn_tensor *t, chunk_sink sink, void *ctx) {
    uint32_t buf[XFER_CHUNK];
    size_t n = (size_t)t->nelem;
    for (size_t off = 0; off < n; off += XFER_CHUNK) {
        size_t m = n - off < XFER_CHUNK ? n - off : XFER_CHUNK;
        int rc = s->backend->copy_out(buf, (const char *)t->data + off * esz(t), m * esz(t));
        if (rc) return rc;
        sink(ctx, buf, off, m);
    }
    return TNN_OK;
}

typedef struct {
    double *dst;
    int dtype;
    int rows, cols; /* for the transposed download */
} f64_sink_ctx;

static double widen(const void *chunk, size_t i, int dtype) {
    switch (dtype) {
    case TNN_I32: return (double)((const int32_t *)chunk)[i];
    case TNN_F16: return (double)tnn__f16_to_f32(((const uint16_t *)chunk)[i]);
    case TNN_BF16: return (double)tnn__bf16_to_f32(((const uint16_t *)chunk)[i]);
    default: return (double)((const float *)chunk)[i];
    }
}

static void sink_f64(void *p, const void *chunk, size_t off, size_t m) {
    const f64_sink_ctx *c = p;
    for (size_t i = 0; i < m; i++) c->dst[off + i] = widen(chunk, i, c->dtype);
}

static void sink_f64_transposed(void *p, const void *chunk, size_t off, size_t m) {
    const f64_sink_ctx *c = p;
    for (size_t q = 0; q < m; q++) {
        size_t f = off + q, j = f / (size_t)c->rows, i = f % (size_t)c->rows;
        c->dst[i * (size_t)c->cols + j] = widen(chunk, q, c->dtype);
    }
}

typedef struct {
    float *dst;
    int dtype;
} f32_sink_ctx;

static void sink_f32(void *p, const void *chunk, size_t off, size_t m) {
    const f32_sink_ctx *c = p;
    for (size_t i = 0; i < m; i++) c->dst[off + i] = (float)widen(chunk, i, c->dtype);
}

int tnn_download_to_f64_array(tnn_session *s, tnn_tensor *t, double *dst, size_t n) {
    int rc = check_download(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_count(t, n, __func__))) return rc;
    if (!dst) return TNN_ERR(TNN_ERR_ARG, "dst is NULL");
    if (t->dtype != TNN_F32 && t->dtype != TNN_I32 && !is_half(t))
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "tensor #%d: only f32, i32, f16 and bf16 tensors",
                       t->id);
    f64_sink_ctx c = {.dst = dst, .dtype = t->dtype};
    return read_chunks(s, t, sink_f64, &c);
}

int tnn_download_transposed_f64(tnn_session *s, tnn_tensor *t, double *dst, int rows, int cols) {
    int rc = check_download(s, t, __func__);
    if (rc) return rc;
    if (rows <= 0 || cols <= 0)
        return TNN_ERR(TNN_ERR_ARG, "rows=%d cols=%d: want sizes >= 1", rows, cols);
    if ((rc = check_count(t, (size_t)rows * (size_t)cols, __func__))) return rc;
    if (!dst) return TNN_ERR(TNN_ERR_ARG, "dst is NULL");
    if (t->dtype != TNN_F32 && t->dtype != TNN_I32 && !is_half(t))
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "tensor #%d: only f32, i32, f16 and bf16 tensors",
                       t->id);
    f64_sink_ctx c = {.dst = dst, .dtype = t->dtype, .rows = rows, .cols = cols};
    return read_chunks(s, t, sink_f64_transposed, &c);
}

int tnn_upload_f32(tnn_session *s, tnn_tensor *t, const float *src, size_t n) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_float(t, __func__)) || (rc = check_count(t, n, __func__))) return rc;
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    if (!is_half(t)) return s->backend->copy_in(t->data, src, t->nbytes);
    uint16_t buf[XFER_CHUNK]; /* f16 / bf16: rounded to nearest even, staged */
    for (size_t off = 0; off < n; off += XFER_CHUNK) {
        size_t m = n - off < XFER_CHUNK ? n - off : XFER_CHUNK;
        for (size_t i = 0; i < m; i++) stage(buf, i, t->dtype, src[off + i]);
        rc = s->backend->copy_in((uint16_t *)t->data + off, buf, m * sizeof *buf);
        if (rc) return rc;
    }
    return TNN_OK;
}

static int check_i32(const tnn_tensor *t, const char *func) {
    if (t->dtype != TNN_I32) {
        char b[TNN_SHAPE_BUF];
        return tnn__error(TNN_ERR_ARG, func, "tensor #%d is %s: want i32", t->id,
                          tnn__shape_str(t, b, sizeof b));
    }
    return TNN_OK;
}

int tnn_upload_i32(tnn_session *s, tnn_tensor *t, const int32_t *src, size_t n) {
    int rc = check_upload(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_i32(t, __func__)) || (rc = check_count(t, n, __func__))) return rc;
    if (!src) return TNN_ERR(TNN_ERR_ARG, "src is NULL");
    return s->backend->copy_in(t->data, src, t->nbytes);
}

int tnn_download_i32(tnn_session *s, tnn_tensor *t, int32_t *dst, size_t n) {
    int rc = check_download(s, t, __func__);
    if (rc) return rc;
    if ((rc = check_i32(t, __func__)) || (rc = check_count(t, n, __func__))) return rc;
    if (!dst) return TNN_ERR(TNN_ERR_ARG, "dst is NULL");
    return s->backend->copy_out(dst, t->data, t->nbytes);
}

/* A GGML-typed tensor's rows dequantized into dst, staged a few rows at a
 * time (its bytes are on the device for a device backend). */
static int download_ggml(tnn_session *s, const tnn_tensor *t, float *dst) {
    int64_t cols = t->shape[t->ndim - 1], rows = t->nelem / cols;
    int64_t rb = tnn__qtype_row_bytes(t->gtype, cols);
    if (rb < 0) return tnn_last_status();
    int64_t step = (int64_t)sizeof(float) * XFER_CHUNK * 16 / rb;
    if (step < 1) step = 1;
    if (step > rows) step = rows;
    char *buf = malloc((size_t)(step * rb));
    if (!buf) return TNN_ERR(TNN_ERR_NOMEM, "out of memory staging tensor #%d", t->id);
    int rc = TNN_OK;
    for (int64_t r0 = 0; r0 < rows && rc == TNN_OK; r0 += step) {
        int64_t m = rows - r0 < step ? rows - r0 : step;
        rc = s->backend->copy_out(buf, (const char *)t->data + r0 * rb, (size_t)(m * rb));
        for (int64_t r = 0; r < m && rc == TNN_OK; r++)
            rc = tnn__dequantize_row(t->gtype, buf + r * rb, dst + (r0 + r) * cols, cols);
    }
    free(buf);
    return rc;
}

int tnn_download_f32(tnn_session *s, tnn_tensor *t, float *dst, size_t n) {
    int rc = check_download(s, t, __func__);
    if (rc) return rc;
    if ((t->dtype != TNN_GGML && (rc = check_float(t, __func__))) ||
        (rc = check_count(t, n, __func__)))
        return rc;
    if (!dst) return TNN_ERR(TNN_ERR_ARG, "dst is NULL");
    if (t->dtype == TNN_GGML) return download_ggml(s, t, dst);
    if (!is_half(t)) return s->backend->copy_out(dst, t->data, t->nbytes);
    f32_sink_ctx c = {.dst = dst, .dtype = t->dtype}; /* f16 / bf16: widened exactly */
    return read_chunks(s, t, sink_f32, &c);
}

/* ------------------------------------------------------------------------ */
/* Host-side kernels on the scratch                                         */
/* ------------------------------------------------------------------------ */

/* Checks that slots [0, k*n) were written and makes room for [0, out_n). */
static float *scratch_span(tnn_session *s, int n, int k, size_t out_n, const char *func) {
    if (tnn__check_session(s, func)) return NULL;
    if (n <= 0) return (tnn__error(TNN_ERR_ARG, func, "n=%d: want n >= 1", n), NULL);
    size_t need = (size_t)n * (size_t)k;
    if (s->scratch_len < need)
        return (tnn__error(TNN_ERR_RANGE, func,
                           "needs %zu written slots (%d x n=%d) but only %zu were written; "
                           "nothing done",
                           need, k, n, s->scratch_len),
                NULL);
    if (scratch_reserve(s, out_n, func)) return NULL;
    if (out_n > s->scratch_len) s->scratch_len = out_n;
    return s->scratch;
}

void tnn_gelu_back_scratch(tnn_session *s, int n) {
    float *sc = scratch_span(s, n, 2, (size_t)n * 3, __func__);
    if (!sc) return;
    tnn__k_gelu_back(sc, sc + n, sc + 2 * (size_t)n, n);
}

void tnn_adam_step_scratch(tnn_session *s, int n, double lr, double b1, double b2, double eps,
                           double omc1, double omc2) {
    if (!(omc1 > 0.0) || !(omc2 > 0.0)) {
        TNN_ERR(TNN_ERR_ARG, "omc1=%g omc2=%g: bias corrections must be > 0 (1 - beta^t)", omc1,
                omc2);
        return;
    }
    float *sc = scratch_span(s, n, 4, (size_t)n * 4, __func__);
    if (!sc) return;
    size_t m = (size_t)n;
    tnn__k_adam(sc, sc + m, sc + 2 * m, sc + 3 * m, n, lr, b1, b2, eps, omc1, omc2);
}
