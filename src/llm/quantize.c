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

int lm_quantize_file(const char *in, const char *out, int type, int *converted) {
    if (!in || !out) return TNN_ERR(TNN_ERR_ARG, "paths must not be NULL");
    const tnn_qtype_info *qi = type == TNN_GGML_F32 ? NULL : tnn__qtype(type);
    if (file_type_of(type) < 0 || (type != TNN_GGML_F32 && (!qi || !qi->can_quantize)))
        return TNN_ERR(TNN_ERR_ARG, "type %d (%s) is not a target (f32, f16, bf16, q8_0, q4_0, "
                       "q4_1, q5_0, q5_1)", type, tnn_ggml_type_name(type));
    tnn_gguf *g = tnn_gguf_open(in);
    if (!g) return tnn_last_status();
    int rc = lm_llama_refuse_lora_only(g);
    tnn_gguf_writer *w = rc ? NULL : tnn_gguf_writer_new();
    if (!rc && !w) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < tnn_gguf_n_kv(g) && rc == TNN_OK; i++)
        if (strncmp(tnn_gguf_key(g, i), TRAIN_KEYS, strlen(TRAIN_KEYS)))
            rc = copy_kv(g, w, tnn_gguf_key(g, i), type);
    int64_t block = qi ? qi->block : 1;
    int n_conv = 0;
    float *row = NULL;
    void *buf = NULL;
    for (int64_t i = 0; i < tnn_gguf_n_tensors(g) && rc == TNN_OK; i++) {
        const char *name = tnn_gguf_tensor_name(g, i);
        if (!strncmp(name, OPT_TENSORS, strlen(OPT_TENSORS)) || lm_is_lora_name(name)) continue;
        int st = tnn_gguf_tensor_type(g, i);
        int64_t shape[4];
        int nd = tnn_gguf_tensor_shape(g, i, shape);
        const void *data = tnn_gguf_tensor_data(g, i);
        bool convert = nd == 2 && shape[1] % block == 0 && st != type &&
                       (st == TNN_GGML_F32 || tnn__qtype(st));
        if (!convert) {
            rc = tnn__gguf_writer_add_tensor_ref(w, name, st, nd, shape, data,
                                                 (size_t)tnn_gguf_tensor_nbytes(g, i));
            continue;
        }
        int64_t rows = shape[0], cols = shape[1];
        int64_t in_rb = st == TNN_GGML_F32 ? cols * 4 : tnn__qtype_row_bytes(st, cols);
        int64_t out_rb = type == TNN_GGML_F32 ? cols * 4 : tnn__qtype_row_bytes(type, cols);
        free(row);
        row = malloc((size_t)cols * sizeof *row);
        free(buf);
        buf = malloc((size_t)(rows * out_rb));
        if (!row || !buf) {
            rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory converting %s", name);
            break;
        }
        for (int64_t r = 0; r < rows && rc == TNN_OK; r++) {
            const char *src = (const char *)data + r * in_rb;
            if (st == TNN_GGML_F32)
                memcpy(row, src, (size_t)cols * sizeof *row);
            else
                rc = tnn__dequantize_row(st, src, row, cols);
            if (rc == TNN_OK && type == TNN_GGML_F32)
                memcpy((char *)buf + r * out_rb, row, (size_t)cols * sizeof *row);
            else if (rc == TNN_OK)
                rc = tnn__quantize_row(type, row, (char *)buf + r * out_rb, cols);
        }
        if (rc == TNN_OK)
            rc = tnn_gguf_writer_add_tensor(w, name, type, 2, shape, buf, (size_t)(rows * out_rb));
        n_conv++;
    }
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, out);
    free(row);
    free(buf);
    tnn_gguf_writer_free(w);
    tnn_gguf_close(g);
    if (converted) *converted = n_conv;
    return rc;
}
