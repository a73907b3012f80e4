/* quantize.c - tnn quantize: a GGUF model rewritten with its weight
 * matrices converted (through f32) to another tensor type. Metadata is
 * copied key by key (a checkpoint's training state is left out); the writer
 * makes the output atomically.
 */
#include "quantize.h"

#include "llama.h"

#include "model.h"

#include "../core/internal.h"
#include "../io/gguf.h"
#include "../quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int lm_quant_type_from_name(const char *name) {
    static const struct {
        const char *n;
        int t;
    } names[] = {{"f32", TNN_GGML_F32},   {"f16", TNN_GGML_F16},   {"bf16", TNN_GGML_BF16},
                 {"q8_0", TNN_GGML_Q8_0}, {"q4_0", TNN_GGML_Q4_0}, {"q4_1", TNN_GGML_Q4_1},
                 {"q5_0", TNN_GGML_Q5_0}, {"q5_1", TNN_GGML_Q5_1}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(name, names[i].n)) return names[i].t;
    return -1;
}

/* llama.cpp's general.file_type values for whole-model types. */
static int file_type_of(int type) {
    switch (type) {
    case TNN_GGML_F32: return 0;
    case TNN_GGML_F16: return 1;
    case TNN_GGML_Q4_0: return 2;
    case TNN_GGML_Q4_1: return 3;
    case TNN_GGML_Q8_0: return 7;
    case TNN_GGML_Q5_0: return 8;
    case TNN_GGML_Q5_1: return 9;
    case TNN_GGML_BF16: return 32;
    default: return -1;
    }
}

static int copy_kv(const tnn_gguf *g, tnn_gguf_writer *w, const char *key, int out_type) {
    if (!strcmp(key, "general.file_type"))
        return tnn_gguf_writer_add_u32(w, key, (uint32_t)file_type_of(out_type));
    return lm_gguf_copy_kv(g, w, key);
}

int lm_gguf_copy_kv(const tnn_gguf *g, tnn_gguf_writer *w, const char *key) {
    int type = tnn_gguf_kv_type(g, key);
    if (!strcmp(key, "general.alignment")) {
        uint32_t a;
        return tnn_gguf_get_u32(g, key, &a) ? tnn_last_status() : tnn_gguf_writer_add_u32(w, key, a);
    }
    const char *str;
    int64_t iv;
    double dv;
    uint64_t uv;
    int b;
    switch (type) {
    case TNN_GGUF_STRING:
        return tnn_gguf_get_str(g, key, &str, NULL) ? tnn_last_status()
                                                    : tnn_gguf_writer_add_str(w, key, str);
    case TNN_GGUF_BOOL:
        return tnn_gguf_get_bool(g, key, &b) ? tnn_last_status() : tnn_gguf_writer_add_bool(w, key, b);
    case TNN_GGUF_FLOAT32:
    case TNN_GGUF_FLOAT64:
        if (tnn_gguf_get_f64(g, key, &dv)) return tnn_last_status();
        return type == TNN_GGUF_FLOAT32 ? tnn_gguf_writer_add_f32(w, key, (float)dv)
                                        : tnn_gguf_writer_add_f64(w, key, dv);
    case TNN_GGUF_UINT64:
        return tnn_gguf_get_u64(g, key, &uv) ? tnn_last_status() : tnn_gguf_writer_add_u64(w, key, uv);
    case TNN_GGUF_ARRAY: {
        int et = tnn_gguf_arr_type(g, key);
        int64_t n = tnn_gguf_arr_len(g, key);
        if (et == TNN_GGUF_STRING) {
            const char **strs = malloc(sizeof *strs * (size_t)(n ? n : 1));
            if (!strs) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
            int rc = TNN_OK;
            for (int64_t i = 0; i < n && rc == TNN_OK; i++)
                rc = tnn_gguf_get_arr_str(g, key, i, &strs[i], NULL);
            if (rc == TNN_OK) rc = tnn_gguf_writer_add_arr_str(w, key, strs, (size_t)n);
            free(strs);
            return rc;
        }
        const void *data;
        size_t nbytes;
        if (tnn_gguf_get_arr_data(g, key, &data, &nbytes))
            return TNN_ERR(TNN_ERR_UNSUPPORTED, "key %s: arrays of arrays cannot be copied", key);
        /* the raw bytes are packed and may be unaligned: copy them first */
        void *copy = malloc(nbytes ? nbytes : 1);
        if (!copy) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        memcpy(copy, data, nbytes);
        int rc = tnn_gguf_writer_add_arr(w, key, et, copy, (size_t)n);
        free(copy);
        return rc;
    }
    default: /* the other integers, widened by the getter and narrowed back */
        if (tnn_gguf_get_i64(g, key, &iv)) return tnn_last_status();
        switch (type) {
        case TNN_GGUF_UINT8: return tnn_gguf_writer_add_u8(w, key, (uint8_t)iv);
        case TNN_GGUF_INT8: return tnn_gguf_writer_add_i8(w, key, (int8_t)iv);
        case TNN_GGUF_UINT16: return tnn_gguf_writer_add_u16(w, key, (uint16_t)iv);
        case TNN_GGUF_INT16: return tnn_gguf_writer_add_i16(w, key, (int16_t)iv);
        case TNN_GGUF_UINT32: return tnn_gguf_writer_add_u32(w, key, (uint32_t)iv);
        case TNN_GGUF_INT32: return tnn_gguf_writer_add_i32(w, key, (int32_t)iv);
        default: return tnn_gguf_writer_add_i64(w, key, iv);
        }
    }
}

/* A training checkpoint's state (checkpoint.c): the output is a model for
 * inference, which llama.cpp reads too, so the optimizer's moments, the
 * run's settings and LoRA's factors (already merged into the weights) stay
 * behind. */
#define TRAIN_KEYS "tinynn.train."
#define OPT_TENSORS "opt."

/* A LoRA adapter's factors for one base tensor, read as f32: A (rank, in)
 * and B (out, rank), or for the embeddings (llama.cpp's layout) A (vocab,
 * rank) and B (embd, rank); scale = scale * alpha / rank. */
typedef struct {
    float *a, *b;
    int64_t rank;
    bool embd;
    double scale;
} merge_pair;

static float *factor_f32(const tnn_gguf *ad, int64_t i, int *rc) {
    int64_t n = tnn_gguf_tensor_nelements(ad, i);
    float *v = *rc ? NULL : malloc((size_t)(n > 0 ? n : 1) * sizeof *v);
    if (!*rc && !v) *rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    if (v && tnn__dequantize_row(tnn_gguf_tensor_type(ad, i), tnn_gguf_tensor_data(ad, i), v, n)) {
        *rc = TNN_ERR(TNN_ERR_UNSUPPORTED, "adapter tensor %s: type %s cannot be read",
                      tnn_gguf_tensor_name(ad, i), tnn_ggml_type_name(tnn_gguf_tensor_type(ad, i)));
    }
    if (*rc) {
        free(v);
        return NULL;
    }
    return v;
}

/* The adapter's factors of base tensor `name` (rows x cols) into *mp
 * (mp->a NULL where the adapter has none). */
static int merge_factors(const tnn_gguf *ad, double scale, double alpha, const char *name,
                         int64_t rows, int64_t cols, merge_pair *mp) {
    *mp = (merge_pair){0};
    char an[160], bn[160];
    snprintf(an, sizeof an, "%s.lora_a", name);
    snprintf(bn, sizeof bn, "%s.lora_b", name);
    int64_t ia = tnn_gguf_find_tensor(ad, an), ib = tnn_gguf_find_tensor(ad, bn);
    tnn_clear_error();
    if (ia < 0 && ib < 0) return TNN_OK;
    int64_t sa[4] = {0}, sb[4] = {0};
    if (ia < 0 || ib < 0 || tnn_gguf_tensor_shape(ad, ia, sa) != 2 ||
        tnn_gguf_tensor_shape(ad, ib, sb) != 2)
        return TNN_ERR(TNN_ERR_FORMAT, "adapter factors of %s: want two matrices, %s and %s",
                       name, an, bn);
    mp->embd = !strcmp(name, "token_embd.weight");
    /* A (r, cols) and B (rows, r); the embeddings' A (rows, r) and B (cols, r) */
    mp->rank = mp->embd ? sa[1] : sa[0];
    bool fits = mp->embd ? sa[0] == rows && sb[0] == cols && sb[1] == mp->rank
                         : sa[1] == cols && sb[0] == rows && sb[1] == mp->rank;
    if (!fits || mp->rank < 1)
        return TNN_ERR(TNN_ERR_FORMAT, "adapter factors of %s are %lld x %lld and %lld x %lld, "
                       "which do not fit its %lld x %lld (an adapter for another model?)", name,
                       (long long)sa[0], (long long)sa[1], (long long)sb[0], (long long)sb[1],
                       (long long)rows, (long long)cols);
    mp->scale = alpha > 0 ? scale * alpha / (double)mp->rank : scale;
    int rc = TNN_OK;
    mp->a = factor_f32(ad, ia, &rc);
    mp->b = factor_f32(ad, ib, &rc);
    if (rc) {
        free(mp->a);
        free(mp->b);
        *mp = (merge_pair){0};
    }
    return rc;
}

/* Checks that every tensor of the adapter is a factor of a 2-D tensor of g
 * (norms, which llama.cpp skips too, aside) and that its metadata says a
 * LoRA adapter for g's architecture; *alpha gets adapter.lora.alpha (0 when
 * absent). */
static int check_adapter(const tnn_gguf *g, const tnn_gguf *ad, double *alpha) {
    const char *arch = NULL;
    tnn_gguf_get_str(g, "general.architecture", &arch, NULL);
    tnn_clear_error();
    int rc = lm_lora_header(ad, arch, alpha);
    if (rc) return rc;
    int pairs = 0;
    for (int64_t i = 0; i < tnn_gguf_n_tensors(ad); i++) {
        const char *name = tnn_gguf_tensor_name(ad, i);
        size_t len = strlen(name);
        if (len > 12 && !strcmp(name + len - 12, "_norm.weight")) continue;
        bool is_a = len > 7 && !strcmp(name + len - 7, ".lora_a");
        bool is_b = len > 7 && !strcmp(name + len - 7, ".lora_b");
        char base[160];
        snprintf(base, sizeof base, "%.*s", (int)(len > 7 ? len - 7 : 0), name);
        int64_t j = (is_a || is_b) ? tnn_gguf_find_tensor(g, base) : -1, sh[4];
        tnn_clear_error();
        if (j < 0 || tnn_gguf_tensor_shape(g, j, sh) != 2) {
            return TNN_ERR(TNN_ERR_FORMAT, "adapter tensor '%s' adapts no matrix of the model",
                           name);
        }
        pairs += is_a;
    }
    return pairs ? TNN_OK : TNN_ERR(TNN_ERR_FORMAT, "the adapter holds no factors");
}

/* One tensor written as `type`, through f32, with the adapter's update
 * (mp, or NULL) added to each row first. */
static int convert_tensor(tnn_gguf_writer *w, const char *name, int st, const int64_t *shape,
                          const void *data, int type, const merge_pair *mp) {
    int64_t rows = shape[0], cols = shape[1];
    int64_t in_rb = st == TNN_GGML_F32 ? cols * 4 : tnn__qtype_row_bytes(st, cols);
    int64_t out_rb = type == TNN_GGML_F32 ? cols * 4 : tnn__qtype_row_bytes(type, cols);
    float *row = malloc((size_t)cols * sizeof *row);
    void *buf = malloc((size_t)(rows * out_rb));
    int rc = row && buf ? TNN_OK : TNN_ERR(TNN_ERR_NOMEM, "out of memory converting %s", name);
    for (int64_t r = 0; r < rows && rc == TNN_OK; r++) {
        const char *src = (const char *)data + r * in_rb;
        if (st == TNN_GGML_F32)
            memcpy(row, src, (size_t)cols * sizeof *row);
        else
            rc = tnn__dequantize_row(st, src, row, cols);
        for (int64_t k = 0; mp && rc == TNN_OK && k < mp->rank; k++) {
            /* row r += scale * B[r] A, or for the embeddings scale * A[r] B^T */
            if (mp->embd) {
                float c = (float)(mp->scale * mp->a[r * mp->rank + k]);
                for (int64_t e = 0; e < cols; e++) row[e] += c * mp->b[e * mp->rank + k];
            } else {
                float c = (float)(mp->scale * mp->b[r * mp->rank + k]);
                const float *ak = mp->a + k * cols;
                for (int64_t e = 0; e < cols; e++) row[e] += c * ak[e];
            }
        }
        if (rc == TNN_OK && type == TNN_GGML_F32)
            memcpy((char *)buf + r * out_rb, row, (size_t)cols * sizeof *row);
        else if (rc == TNN_OK)
            rc = tnn__quantize_row(type, row, (char *)buf + r * out_rb, cols);
    }
    if (rc == TNN_OK)
        rc = tnn_gguf_writer_add_tensor(w, name, type, 2, shape, buf, (size_t)(rows * out_rb));
    free(row);
    free(buf);
    return rc;
}

int lm_quantize_file(const char *in, const char *out, int type, const char *adapter,
                     double scale, int *converted) {
    if (!in || !out) return TNN_ERR(TNN_ERR_ARG, "paths must not be NULL");
    if (!isfinite(scale)) return TNN_ERR(TNN_ERR_ARG, "the adapter's scale is not finite");
    const tnn_qtype_info *qi = type == TNN_GGML_F32 ? NULL : tnn__qtype(type);
    if (file_type_of(type) < 0 || (type != TNN_GGML_F32 && (!qi || !qi->can_quantize)))
        return TNN_ERR(TNN_ERR_ARG, "type %d (%s) is not a target (f32, f16, bf16, q8_0, q4_0, "
                       "q4_1, q5_0, q5_1)", type, tnn_ggml_type_name(type));
    tnn_gguf *g = tnn_gguf_open(in), *ad = NULL;
    if (!g) return tnn_last_status();
    /* a tied model's output matrix keeps the embeddings as they were */
    bool tied = tnn_gguf_find_tensor(g, "output.weight") < 0;
    tnn_clear_error();
    int rc = lm_llama_refuse_lora_only(g);
    double alpha = 0;
    if (!rc && adapter) {
        ad = tnn_gguf_open(adapter);
        rc = ad ? check_adapter(g, ad, &alpha) : tnn_last_status();
        if (rc && ad) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", tnn_last_error());
            rc = TNN_ERR(rc, "%s: %s", adapter, msg);
        }
    }
    tnn_gguf_writer *w = rc ? NULL : tnn_gguf_writer_new();
    if (!rc && !w) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < tnn_gguf_n_kv(g) && rc == TNN_OK; i++)
        if (strncmp(tnn_gguf_key(g, i), TRAIN_KEYS, strlen(TRAIN_KEYS)))
            rc = copy_kv(g, w, tnn_gguf_key(g, i), type);
    int64_t block = qi ? qi->block : 1;
    int n_conv = 0;
    for (int64_t i = 0; i < tnn_gguf_n_tensors(g) && rc == TNN_OK; i++) {
        const char *name = tnn_gguf_tensor_name(g, i);
        if (!strncmp(name, OPT_TENSORS, strlen(OPT_TENSORS)) || lm_is_lora_name(name)) continue;
        int st = tnn_gguf_tensor_type(g, i);
        int64_t shape[4] = {0}; /* shape[1] 0 for a vector: `to` below reads it */
        int nd = tnn_gguf_tensor_shape(g, i, shape);
        const void *data = tnn_gguf_tensor_data(g, i);
        merge_pair mp = {0};
        if (ad && nd == 2) rc = merge_factors(ad, scale, alpha, name, shape[0], shape[1], &mp);
        if (rc) break;
        bool readable = st == TNN_GGML_F32 || tnn__qtype(st);
        bool convert = nd == 2 && readable && (st != type || mp.a);
        int to = shape[1] % block == 0 ? type : TNN_GGML_F32; /* an odd width stays f32 */
        if (mp.a && !readable)
            rc = TNN_ERR(TNN_ERR_UNSUPPORTED, "%s (%s) cannot take the adapter: its type cannot "
                         "be read", name, tnn_ggml_type_name(st));
        else if (!convert || (to != type && !mp.a))
            rc = tnn__gguf_writer_add_tensor_ref(w, name, st, nd, shape, data,
                                                 (size_t)tnn_gguf_tensor_nbytes(g, i));
        else {
            if (mp.embd && tied)
                rc = convert_tensor(w, "output.weight", st, shape, data, to, NULL);
            if (rc == TNN_OK) rc = convert_tensor(w, name, st, shape, data, to, mp.a ? &mp : NULL);
            n_conv++;
        }
        free(mp.a);
        free(mp.b);
    }
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, out);
    tnn_gguf_writer_free(w);
    tnn_gguf_close(ad);
    tnn_gguf_close(g);
    if (converted) *converted = n_conv;
    return rc;
}
