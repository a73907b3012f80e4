/* test_gguf.c - the GGUF reader and writer: a writer -> reader round trip of
 * every value type and several tensor types, one handcrafted file per defect
 * class (each refused with its reason and offset), accessor errors, prefix
 * and byte-flip sweeps, and a cross-check with the `gguf` Python package.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mkdtemp */
#endif
#include "harness.h"
#include "core/internal.h"
#include "io/gguf.h"

#include <dirent.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static void path_in_tmp(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmpdir, name);
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t k = n ? fwrite(p, 1, n, f) : 0;
    return (fclose(f) == 0 && k == n) ? 0 : -1;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (p && fread(p, 1, (size_t)sz, f) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* ------------------------------------------------------------------------ */
/* The round-trip content: one table drives the C writer, the expectations */
/* JSON for tools/gguf_check.py, and the checks of the reader.              */
/* ------------------------------------------------------------------------ */

static const uint8_t a_u8[] = {0, 1, 255};
static const int8_t a_i8[] = {-128, 0, 127};
static const uint16_t a_u16[] = {0, 65535, 258};
static const int16_t a_i16[] = {-32768, 32767, -1};
static const uint32_t a_u32[] = {0, 4294967295u, 7};
static const int32_t a_i32[] = {INT32_MIN, -1, INT32_MAX};
static const uint64_t a_u64[] = {0, UINT64_MAX, 1ull << 63};
static const int64_t a_i64[] = {INT64_MIN, INT64_MAX, 42};
static const float a_f32[] = {1.0f, -2.5f, 1e-30f, 3.4e38f, 0.1f};
static const double a_f64[] = {0.1, -1e300, 5e-324, 2.0};
static const uint8_t a_bool[] = {1, 0, 1, 1};
static const char *const a_str[] = {"a", "", "tokens \xe2\x9c\x93", "<|end|>", "\"quoted\\\""};

typedef struct kv_spec {
    const char *key;
    int type, elem;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
    const void *arr;
    size_t n;
} kv_spec;

#define N(a) (sizeof(a) / sizeof((a)[0]))
static const kv_spec kvs[] = {
    {"general.architecture", TNN_GGUF_STRING, 0, 0, 0, 0, "tinynn-test", 0, 0},
    {"general.alignment", TNN_GGUF_UINT32, 0, 0, 64, 0, 0, 0, 0},
    {"test.u8", TNN_GGUF_UINT8, 0, 0, 250, 0, 0, 0, 0},
    {"test.i8", TNN_GGUF_INT8, 0, -120, 0, 0, 0, 0, 0},
    {"test.u16", TNN_GGUF_UINT16, 0, 0, 65000, 0, 0, 0, 0},
    {"test.i16", TNN_GGUF_INT16, 0, -32000, 0, 0, 0, 0, 0},
    {"test.u32", TNN_GGUF_UINT32, 0, 0, 4000000000u, 0, 0, 0, 0},
    {"test.i32", TNN_GGUF_INT32, 0, -2000000000, 0, 0, 0, 0, 0},
    {"test.u64", TNN_GGUF_UINT64, 0, 0, UINT64_MAX, 0, 0, 0, 0},
    {"test.i64", TNN_GGUF_INT64, 0, INT64_MIN, 0, 0, 0, 0, 0},
    {"test.f32", TNN_GGUF_FLOAT32, 0, 0, 0, (double)-1.5e-7f, 0, 0, 0},
    {"test.f64", TNN_GGUF_FLOAT64, 0, 0, 0, 3.141592653589793, 0, 0, 0},
    {"test.bool_t", TNN_GGUF_BOOL, 0, 1, 0, 0, 0, 0, 0},
    {"test.bool_f", TNN_GGUF_BOOL, 0, 0, 0, 0, 0, 0, 0},
    {"test.str", TNN_GGUF_STRING, 0, 0, 0, 0, "h\xc3\xa9llo, w\xc3\xb6rld \xe2\x9c\x93", 0, 0},
    {"test.empty_str", TNN_GGUF_STRING, 0, 0, 0, 0, "", 0, 0},
    {"test.arr.u8", TNN_GGUF_ARRAY, TNN_GGUF_UINT8, 0, 0, 0, 0, a_u8, N(a_u8)},
    {"test.arr.i8", TNN_GGUF_ARRAY, TNN_GGUF_INT8, 0, 0, 0, 0, a_i8, N(a_i8)},
    {"test.arr.u16", TNN_GGUF_ARRAY, TNN_GGUF_UINT16, 0, 0, 0, 0, a_u16, N(a_u16)},
    {"test.arr.i16", TNN_GGUF_ARRAY, TNN_GGUF_INT16, 0, 0, 0, 0, a_i16, N(a_i16)},
    {"test.arr.u32", TNN_GGUF_ARRAY, TNN_GGUF_UINT32, 0, 0, 0, 0, a_u32, N(a_u32)},
    {"test.arr.i32", TNN_GGUF_ARRAY, TNN_GGUF_INT32, 0, 0, 0, 0, a_i32, N(a_i32)},
    {"test.arr.u64", TNN_GGUF_ARRAY, TNN_GGUF_UINT64, 0, 0, 0, 0, a_u64, N(a_u64)},
    {"test.arr.i64", TNN_GGUF_ARRAY, TNN_GGUF_INT64, 0, 0, 0, 0, a_i64, N(a_i64)},
    {"test.arr.f32", TNN_GGUF_ARRAY, TNN_GGUF_FLOAT32, 0, 0, 0, 0, a_f32, N(a_f32)},
    {"test.arr.f64", TNN_GGUF_ARRAY, TNN_GGUF_FLOAT64, 0, 0, 0, 0, a_f64, N(a_f64)},
    {"test.arr.bool", TNN_GGUF_ARRAY, TNN_GGUF_BOOL, 0, 0, 0, 0, a_bool, N(a_bool)},
    {"test.arr.str", TNN_GGUF_ARRAY, TNN_GGUF_STRING, 0, 0, 0, 0, a_str, N(a_str)},
};
#define N_KVS ((int)N(kvs))

typedef struct t_spec {
    char name[64];
    int type, ndim;
    int64_t shape[4]; /* NumPy order */
    size_t nbytes;
    uint8_t *data;
} t_spec;

static t_spec tensors[64];
static int n_tensors;

static void add_spec(const char *name, int type, int ndim, int64_t d0, int64_t d1, int64_t d2,
                     int64_t d3) {
    t_spec *t = &tensors[n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = type;
    t->ndim = ndim;
    int64_t sh[4] = {d0, d1, d2, d3}, nelem = 1;
    for (int d = 0; d < ndim; d++) nelem *= (t->shape[d] = sh[d]);
    int64_t be = 0, bb = 0;
    tnn_ggml_type_block(type, &be, &bb);
    t->nbytes = (size_t)(nelem / be * bb);
    t->data = malloc(t->nbytes);
    for (size_t i = 0; i < t->nbytes; i++) t->data[i] = (uint8_t)(th_uniform() * 256);
}

static void make_tensor_specs(void) {
    th_seed(1234);
    add_spec("token_embd.weight", TNN_GGML_F32, 2, 3, 8, 0, 0);
    add_spec("blk.0.attn_q.weight", TNN_GGML_Q4_0, 2, 2, 64, 0, 0);
    add_spec("blk.0.ffn_up.weight", TNN_GGML_Q8_0, 2, 3, 32, 0, 0);
    add_spec("blk.0.attn_norm.weight", TNN_GGML_F16, 1, 5, 0, 0, 0);
    add_spec("bf16.weight", TNN_GGML_BF16, 2, 2, 3, 0, 0);
    add_spec("q4k.weight", TNN_GGML_Q4_K, 2, 1, 256, 0, 0);
    add_spec("q6k.weight", TNN_GGML_Q6_K, 2, 2, 256, 0, 0);
    add_spec("i32.3d", TNN_GGML_I32, 3, 2, 2, 2, 0);
    add_spec("f32.4d", TNN_GGML_F32, 4, 2, 1, 3, 2);
    /* One tensor of every known type: the gguf package's block table
     * checks ours. */
    for (int ty = 0; ty < TNN_GGML_TYPE_COUNT; ty++) {
        int64_t be;
        if (tnn_ggml_type_block(ty, &be, NULL) != TNN_OK) continue;
        char name[64];
        snprintf(name, sizeof name, "all.%s", tnn_ggml_type_name(ty));
        add_spec(name, ty, 1, 2 * be, 0, 0, 0);
    }
    tnn_clear_error();
}

static int write_with_c(const char *path) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    if (!w) return -1;
    int rc = TNN_OK;
    for (int i = 0; i < N_KVS && rc == TNN_OK; i++) {
        const kv_spec *k = &kvs[i];
        switch (k->type) {
        case TNN_GGUF_UINT8: rc = tnn_gguf_writer_add_u8(w, k->key, (uint8_t)k->u); break;
        case TNN_GGUF_INT8: rc = tnn_gguf_writer_add_i8(w, k->key, (int8_t)k->i); break;
        case TNN_GGUF_UINT16: rc = tnn_gguf_writer_add_u16(w, k->key, (uint16_t)k->u); break;
        case TNN_GGUF_INT16: rc = tnn_gguf_writer_add_i16(w, k->key, (int16_t)k->i); break;
        case TNN_GGUF_UINT32: rc = tnn_gguf_writer_add_u32(w, k->key, (uint32_t)k->u); break;
        case TNN_GGUF_INT32: rc = tnn_gguf_writer_add_i32(w, k->key, (int32_t)k->i); break;
        case TNN_GGUF_UINT64: rc = tnn_gguf_writer_add_u64(w, k->key, k->u); break;
        case TNN_GGUF_INT64: rc = tnn_gguf_writer_add_i64(w, k->key, k->i); break;
        case TNN_GGUF_FLOAT32: rc = tnn_gguf_writer_add_f32(w, k->key, (float)k->f); break;
        case TNN_GGUF_FLOAT64: rc = tnn_gguf_writer_add_f64(w, k->key, k->f); break;
        case TNN_GGUF_BOOL: rc = tnn_gguf_writer_add_bool(w, k->key, (int)k->i); break;
        case TNN_GGUF_STRING: rc = tnn_gguf_writer_add_str(w, k->key, k->s); break;
        case TNN_GGUF_ARRAY:
            rc = k->elem == TNN_GGUF_STRING
                     ? tnn_gguf_writer_add_arr_str(w, k->key, (const char *const *)k->arr, k->n)
                     : tnn_gguf_writer_add_arr(w, k->key, k->elem, k->arr, k->n);
            break;
        }
        CHECK(rc == TNN_OK, "add %s: %s", k->key, tnn_last_error());
    }
    for (int i = 0; i < n_tensors && rc == TNN_OK; i++) {
        const t_spec *t = &tensors[i];
        rc = tnn_gguf_writer_add_tensor(w, t->name, t->type, t->ndim, t->shape, t->data,
                                        t->nbytes);
        CHECK(rc == TNN_OK, "add tensor %s: %s", t->name, tnn_last_error());
    }
    if (rc == TNN_OK) {
        rc = tnn_gguf_writer_write(w, path);
        CHECK(rc == TNN_OK, "write %s: %s", path, tnn_last_error());
    }
    tnn_gguf_writer_free(w);
    return rc;
}

/* ---- JSON expectations for tools/gguf_check.py ---- */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void json_elem(FILE *f, int type, const void *arr, size_t i) {
    switch (type) {
    case TNN_GGUF_UINT8: fprintf(f, "%u", ((const uint8_t *)arr)[i]); break;
    case TNN_GGUF_INT8: fprintf(f, "%d", ((const int8_t *)arr)[i]); break;
    case TNN_GGUF_UINT16: fprintf(f, "%u", ((const uint16_t *)arr)[i]); break;
    case TNN_GGUF_INT16: fprintf(f, "%d", ((const int16_t *)arr)[i]); break;
    case TNN_GGUF_UINT32: fprintf(f, "%u", ((const uint32_t *)arr)[i]); break;
    case TNN_GGUF_INT32: fprintf(f, "%d", ((const int32_t *)arr)[i]); break;
    case TNN_GGUF_UINT64:
        fprintf(f, "%llu", (unsigned long long)((const uint64_t *)arr)[i]);
        break;
    case TNN_GGUF_INT64: fprintf(f, "%lld", (long long)((const int64_t *)arr)[i]); break;
    case TNN_GGUF_FLOAT32: fprintf(f, "%.17g", (double)((const float *)arr)[i]); break;
    case TNN_GGUF_FLOAT64: fprintf(f, "%.17g", ((const double *)arr)[i]); break;
    case TNN_GGUF_BOOL: fprintf(f, "%s", ((const uint8_t *)arr)[i] ? "true" : "false"); break;
    case TNN_GGUF_STRING: json_str(f, ((const char *const *)arr)[i]); break;
    }
}

static const char *vt_upper(int t) {
    static const char *n[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32", "INT32",  "FLOAT32",
                              "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64", "FLOAT64"};
    return n[t];
}

static int write_spec_json(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"alignment\": 64, \"kv\": [\n");
    for (int i = 0; i < N_KVS; i++) {
        const kv_spec *k = &kvs[i];
        fprintf(f, "  {\"key\": ");
        json_str(f, k->key);
        fprintf(f, ", \"type\": \"%s\", ", vt_upper(k->type));
        if (k->type == TNN_GGUF_ARRAY) {
            fprintf(f, "\"elem\": \"%s\", \"value\": [", vt_upper(k->elem));
            for (size_t j = 0; j < k->n; j++) {
                if (j) fprintf(f, ", ");
                json_elem(f, k->elem, k->arr, j);
            }
            fprintf(f, "]");
        } else {
            fprintf(f, "\"value\": ");
            uint8_t b = (uint8_t)k->i;
            int8_t i8 = (int8_t)k->i;
            int16_t i16 = (int16_t)k->i;
            int32_t i32 = (int32_t)k->i;
            uint8_t u8 = (uint8_t)k->u;
            uint16_t u16 = (uint16_t)k->u;
            uint32_t u32 = (uint32_t)k->u;
            float f32 = (float)k->f;
            const void *v = NULL;
            switch (k->type) {
            case TNN_GGUF_UINT8: v = &u8; break;
            case TNN_GGUF_INT8: v = &i8; break;
            case TNN_GGUF_UINT16: v = &u16; break;
            case TNN_GGUF_INT16: v = &i16; break;
            case TNN_GGUF_UINT32: v = &u32; break;
            case TNN_GGUF_INT32: v = &i32; break;
            case TNN_GGUF_UINT64: v = &k->u; break;
            case TNN_GGUF_INT64: v = &k->i; break;
            case TNN_GGUF_FLOAT32: v = &f32; break;
            case TNN_GGUF_FLOAT64: v = &k->f; break;
            case TNN_GGUF_BOOL: v = &b; break;
            case TNN_GGUF_STRING: v = &k->s; break;
            }
            json_elem(f, k->type, v, 0);
        }
        fprintf(f, "}%s\n", i + 1 < N_KVS ? "," : "");
    }
    fprintf(f, "], \"tensors\": [\n");
    for (int i = 0; i < n_tensors; i++) {
        const t_spec *t = &tensors[i];
        fprintf(f, "  {\"name\": \"%s\", \"type\": \"%s\", \"ne\": [", t->name,
                tnn_ggml_type_name(t->type));
        for (int d = t->ndim - 1; d >= 0; d--)
            fprintf(f, "%lld%s", (long long)t->shape[d], d ? ", " : "");
        fprintf(f, "], \"nbytes\": %zu, \"data\": \"", t->nbytes);
        for (size_t j = 0; j < t->nbytes; j++) fprintf(f, "%02x", t->data[j]);
        fprintf(f, "\"}%s\n", i + 1 < n_tensors ? "," : "");
    }
    fprintf(f, "]}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* ---- the reader against the table ---- */

static int64_t elem_i64(int type, const void *arr, size_t i) {
    switch (type) {
    case TNN_GGUF_UINT8:
    case TNN_GGUF_BOOL: return ((const uint8_t *)arr)[i];
    case TNN_GGUF_INT8: return ((const int8_t *)arr)[i];
    case TNN_GGUF_UINT16: return ((const uint16_t *)arr)[i];
    case TNN_GGUF_INT16: return ((const int16_t *)arr)[i];
    case TNN_GGUF_UINT32: return ((const uint32_t *)arr)[i];
    case TNN_GGUF_INT32: return ((const int32_t *)arr)[i];
    case TNN_GGUF_UINT64: return (int64_t)((const uint64_t *)arr)[i];
    case TNN_GGUF_INT64: return ((const int64_t *)arr)[i];
    }
    return 0;
}

/* Checks g holds exactly the table. `in_order`: keys and tensors in the
 * order written (tinynn's writer keeps it; the gguf package puts
 * general.architecture first). */
static void check_contents(const tnn_gguf *g, const char *label, bool in_order) {
    CHECK(tnn_gguf_n_kv(g) == N_KVS, "%s: n_kv %lld", label, (long long)tnn_gguf_n_kv(g));
    CHECK(tnn_gguf_alignment(g) == 64, "%s: alignment %lld", label,
          (long long)tnn_gguf_alignment(g));
    int v = tnn_gguf_version(g);
    CHECK(v == 3, "%s: version %d", label, v);
    for (int i = 0; i < N_KVS; i++) {
        const kv_spec *k = &kvs[i];
        int64_t idx = tnn_gguf_find_key(g, k->key);
        CHECK(idx >= 0, "%s: key %s: %s", label, k->key, tnn_last_error());
        if (idx < 0) continue;
        if (in_order) CHECK(idx == i, "%s: key %s at index %lld", label, k->key, (long long)idx);
        const char *name = tnn_gguf_key(g, idx);
        CHECK(name && strcmp(name, k->key) == 0, "%s: key name at %lld", label, (long long)idx);
        CHECK(tnn_gguf_kv_type(g, k->key) == k->type, "%s: %s type %d", label, k->key,
              tnn_gguf_kv_type(g, k->key));
        CHECK(tnn_gguf_kv_type_at(g, idx) == k->type, "%s: %s type_at", label, k->key);
        int64_t i64 = 0;
        uint32_t u32 = 0;
        int32_t i32 = 0;
        uint64_t u64 = 0;
        float f32 = 0;
        double f64 = 0;
        int b = -1;
        const char *s = NULL;
        size_t len = 0;
        switch (k->type) {
        case TNN_GGUF_UINT8:
        case TNN_GGUF_UINT16:
            CHECK_OK(tnn_gguf_get_i64(g, k->key, &i64));
            CHECK(i64 == (int64_t)k->u, "%s: %s = %lld", label, k->key, (long long)i64);
            break;
        case TNN_GGUF_INT8:
        case TNN_GGUF_INT16:
        case TNN_GGUF_INT64:
            CHECK_OK(tnn_gguf_get_i64(g, k->key, &i64));
            CHECK(i64 == k->i, "%s: %s = %lld", label, k->key, (long long)i64);
            break;
        case TNN_GGUF_UINT32:
            CHECK_OK(tnn_gguf_get_u32(g, k->key, &u32));
            CHECK(u32 == k->u, "%s: %s = %u", label, k->key, u32);
            CHECK_OK(tnn_gguf_get_i64(g, k->key, &i64));
            CHECK(i64 == (int64_t)k->u, "%s: %s widened", label, k->key);
            break;
        case TNN_GGUF_INT32:
            CHECK_OK(tnn_gguf_get_i32(g, k->key, &i32));
            CHECK(i32 == k->i, "%s: %s = %d", label, k->key, i32);
            break;
        case TNN_GGUF_UINT64:
            CHECK_OK(tnn_gguf_get_u64(g, k->key, &u64));
            CHECK(u64 == k->u, "%s: %s = %llu", label, k->key, (unsigned long long)u64);
            CHECK_ERR(tnn_gguf_get_i64(g, k->key, &i64), TNN_ERR_RANGE, "does not fit");
            break;
        case TNN_GGUF_FLOAT32:
            CHECK_OK(tnn_gguf_get_f32(g, k->key, &f32));
            CHECK(f32 == (float)k->f, "%s: %s = %g", label, k->key, f32);
            CHECK_OK(tnn_gguf_get_f64(g, k->key, &f64));
            CHECK(f64 == (double)(float)k->f, "%s: %s widened", label, k->key);
            break;
        case TNN_GGUF_FLOAT64:
            CHECK_OK(tnn_gguf_get_f64(g, k->key, &f64));
            CHECK(f64 == k->f, "%s: %s = %.17g", label, k->key, f64);
            break;
        case TNN_GGUF_BOOL:
            CHECK_OK(tnn_gguf_get_bool(g, k->key, &b));
            CHECK(b == k->i, "%s: %s = %d", label, k->key, b);
            break;
        case TNN_GGUF_STRING:
            CHECK_OK(tnn_gguf_get_str(g, k->key, &s, &len));
            CHECK(s && len == strlen(k->s) && strcmp(s, k->s) == 0, "%s: %s = '%s'", label,
                  k->key, s ? s : "(null)");
            break;
        case TNN_GGUF_ARRAY: {
            CHECK(tnn_gguf_arr_type(g, k->key) == k->elem, "%s: %s elem type", label, k->key);
            CHECK(tnn_gguf_arr_len(g, k->key) == (int64_t)k->n, "%s: %s len %lld", label,
                  k->key, (long long)tnn_gguf_arr_len(g, k->key));
            for (size_t j = 0; j < k->n; j++) {
                if (k->elem == TNN_GGUF_STRING) {
                    const char *want = ((const char *const *)k->arr)[j];
                    CHECK_OK(tnn_gguf_get_arr_str(g, k->key, (int64_t)j, &s, &len));
                    CHECK(s && len == strlen(want) && strcmp(s, want) == 0, "%s: %s[%zu]",
                          label, k->key, j);
                } else if (k->elem == TNN_GGUF_FLOAT32 || k->elem == TNN_GGUF_FLOAT64) {
                    double want = k->elem == TNN_GGUF_FLOAT32 ? ((const float *)k->arr)[j]
                                                              : ((const double *)k->arr)[j];
                    CHECK_OK(tnn_gguf_get_arr_f64(g, k->key, (int64_t)j, &f64));
                    CHECK(f64 == want, "%s: %s[%zu] = %.17g", label, k->key, j, f64);
                } else if (k->elem == TNN_GGUF_UINT64 && ((const uint64_t *)k->arr)[j] >
                                                             (uint64_t)INT64_MAX) {
                    CHECK_ERR(tnn_gguf_get_arr_i64(g, k->key, (int64_t)j, &i64), TNN_ERR_RANGE,
                              "does not fit");
                } else {
                    CHECK_OK(tnn_gguf_get_arr_i64(g, k->key, (int64_t)j, &i64));
                    CHECK(i64 == elem_i64(k->elem, k->arr, j), "%s: %s[%zu] = %lld", label,
                          k->key, j, (long long)i64);
                }
            }
            if (k->elem != TNN_GGUF_STRING) {
                const void *raw = NULL;
                size_t nb = 0;
                CHECK_OK(tnn_gguf_get_arr_data(g, k->key, &raw, &nb));
                size_t esz = tnn__gguf_value_size(k->elem);
                const uint16_t one = 1; /* raw bytes are little-endian */
                CHECK(nb == k->n * esz && (*(const uint8_t *)&one != 1 ||
                                           memcmp(raw, k->arr, nb) == 0),
                      "%s: %s raw data", label, k->key);
            } else {
                const void *raw;
                size_t nb;
                CHECK_ERR(tnn_gguf_get_arr_data(g, k->key, &raw, &nb), TNN_ERR_FORMAT,
                          "not of numbers");
            }
            break;
        }
        }
    }

    CHECK(tnn_gguf_n_tensors(g) == n_tensors, "%s: n_tensors %lld", label,
          (long long)tnn_gguf_n_tensors(g));
    const uint8_t *first = NULL;
    int64_t first_off = 0;
    for (int i = 0; i < n_tensors; i++) {
        const t_spec *t = &tensors[i];
        int64_t idx = tnn_gguf_find_tensor(g, t->name);
        CHECK(idx >= 0, "%s: tensor %s: %s", label, t->name, tnn_last_error());
        if (idx < 0) continue;
        if (in_order) CHECK(idx == i, "%s: tensor %s at %lld", label, t->name, (long long)idx);
        const char *name = tnn_gguf_tensor_name(g, idx);
        CHECK(name && strcmp(name, t->name) == 0, "%s: tensor name", label);
        CHECK(tnn_gguf_tensor_type(g, idx) == t->type, "%s: %s type", label, t->name);
        CHECK(tnn_gguf_tensor_ndim(g, idx) == t->ndim, "%s: %s ndim", label, t->name);
        int64_t ne[4] = {0}, shape[4] = {0}, nelem = 1;
        CHECK(tnn_gguf_tensor_dims(g, idx, ne) == t->ndim, "%s: dims", label);
        CHECK(tnn_gguf_tensor_shape(g, idx, shape) == t->ndim, "%s: shape", label);
        for (int d = 0; d < 4; d++) {
            int64_t want_ne = d < t->ndim ? t->shape[t->ndim - 1 - d] : 1;
            CHECK(ne[d] == want_ne, "%s: %s ne[%d] = %lld", label, t->name, d, (long long)ne[d]);
            if (d < t->ndim) {
                CHECK(shape[d] == t->shape[d], "%s: %s shape[%d]", label, t->name, d);
                nelem *= t->shape[d];
            }
        }
        CHECK(tnn_gguf_tensor_nelements(g, idx) == nelem, "%s: %s nelements", label, t->name);
        CHECK(tnn_gguf_tensor_nbytes(g, idx) == (int64_t)t->nbytes, "%s: %s nbytes %lld",
              label, t->name, (long long)tnn_gguf_tensor_nbytes(g, idx));
        const uint8_t *data = tnn_gguf_tensor_data(g, idx);
        CHECK(data && memcmp(data, t->data, t->nbytes) == 0, "%s: %s data", label, t->name);
        int64_t off = tnn_gguf_tensor_offset(g, idx);
        CHECK(off % 64 == 0 && off >= tnn_gguf_data_offset(g), "%s: %s offset %lld", label,
              t->name, (long long)off);
        CHECK(data && (uintptr_t)data % 64 == 0, "%s: %s data pointer alignment", label,
              t->name);
        /* Zero copy: every data pointer sits in one image at its file offset. */
        if (!first) {
            first = data;
            first_off = off;
        } else {
            CHECK(data - first == off - first_off, "%s: %s not at its file offset", label,
                  t->name);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

static const char *source_root(char *buf, size_t n) {
    /* CMake compiles with the absolute path of this file. */
    const char *f = __FILE__, *tail = "tests/test_gguf.c";
    size_t fl = strlen(f), tl = strlen(tail);
    if (fl >= tl && strcmp(f + fl - tl, tail) == 0 && fl - tl < n) {
        memcpy(buf, f, fl - tl);
        buf[fl - tl] = '\0';
        if (buf[0] == '\0') snprintf(buf, n, "./");
        return buf;
    }
    const char *env = getenv("TNN_SOURCE_DIR");
    if (env) {
        snprintf(buf, n, "%s/", env);
        return buf;
    }
    return NULL;
}

static void test_round_trip(void) {
    char path[512], spec[512];
    path_in_tmp(path, sizeof path, "roundtrip.gguf");
    path_in_tmp(spec, sizeof spec, "roundtrip.json");
    if (write_with_c(path) != TNN_OK) return;
    CHECK(write_spec_json(spec) == 0, "cannot write %s", spec);

    tnn_gguf *g = tnn_gguf_open(path);
    CHECK(g != NULL, "open %s: %s", path, tnn_last_error());
    if (g) check_contents(g, "mmap", true);
    tnn_gguf_close(g);

    size_t n = 0;
    uint8_t *bytes = read_bytes(path, &n);
    CHECK(bytes != NULL, "read %s", path);
    if (bytes) {
        g = tnn_gguf_open_memory(bytes, n);
        memset(bytes, 0xAB, n); /* the handle has its own copy */
        CHECK(g != NULL, "open_memory: %s", tnn_last_error());
        if (g) check_contents(g, "memory", true);
        tnn_gguf_close(g);
        free(bytes);
    }

    /* Writing again over the same path replaces it atomically, leaving no
     * temporary file behind. */
    CHECK(write_with_c(path) == TNN_OK, "rewrite");
    DIR *d = opendir(tmpdir);
    int leftovers = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strstr(e->d_name, ".tmp.")) leftovers++;
    if (d) closedir(d);
    CHECK(leftovers == 0, "%d temporary files left in %s", leftovers, tmpdir);

    /* The independent reader: the gguf Python package. */
    char root[512], cmd[2048];
    if (system("python3 -c 'import gguf' >/dev/null 2>&1") != 0) {
        printf("skipped: gguf python package not installed\n");
        return;
    }
    if (!source_root(root, sizeof root)) {
        CHECK(0, "cannot find tools/gguf_check.py (set TNN_SOURCE_DIR)");
        return;
    }
    snprintf(cmd, sizeof cmd, "python3 '%stools/gguf_check.py' check '%s' '%s'", root, path,
             spec);
    int rc = system(cmd);
    CHECK(rc == 0, "%s -> %d", cmd, rc);

    /* And the other way: the gguf package writes, tinynn reads. */
    char pypath[512];
    path_in_tmp(pypath, sizeof pypath, "python.gguf");
    snprintf(cmd, sizeof cmd, "python3 '%stools/gguf_check.py' write '%s' '%s'", root, pypath,
             spec);
    rc = system(cmd);
    CHECK(rc == 0, "%s -> %d", cmd, rc);
    g = rc == 0 ? tnn_gguf_open(pypath) : NULL;
    CHECK(g != NULL, "open the gguf package's file: %s", tnn_last_error());
    if (g) check_contents(g, "python-written", false);
    tnn_gguf_close(g);
}

/* Default alignment, empty arrays, no tensors, version-2 style contents. */
/* The fill of a streamed tensor of 32 floats: k (i + 1) for the k-th call;
 * from the 101st call on it fails. */
static int fill_iota(void *ctx, void *dst) {
    int *calls = ctx;
    if (++*calls > 100) return tnn__error(TNN_ERR_DEVICE, __func__, "fill %d", *calls);
    for (int i = 0; i < 32; i++) ((float *)dst)[i] = (float)(*calls * (i + 1));
    return TNN_OK;
}

static void test_small_files(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "small.gguf");
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    CHECK_OK(tnn_gguf_writer_add_arr(w, "empty.u32", TNN_GGUF_UINT32, NULL, 0));
    CHECK_OK(tnn_gguf_writer_add_arr_str(w, "empty.str", NULL, 0));
    float x[32];
    for (int i = 0; i < 32; i++) x[i] = (float)i;
    int64_t sh[1] = {32};
    CHECK_OK(tnn_gguf_writer_add_tensor(w, "x", TNN_GGML_F32, 1, sh, x, sizeof x));
    CHECK_OK(tnn_gguf_writer_write(w, path));
    tnn_gguf_writer_free(w);
    tnn_gguf *g = tnn_gguf_open(path);
    CHECK(g != NULL, "%s", tnn_last_error());
    if (g) {
        CHECK(tnn_gguf_alignment(g) == 32, "default alignment");
        CHECK(tnn_gguf_data_offset(g) % 32 == 0, "data offset");
        CHECK(tnn_gguf_arr_len(g, "empty.u32") == 0, "empty array");
        CHECK(tnn_gguf_arr_type(g, "empty.str") == TNN_GGUF_STRING, "empty string array");
        int64_t v;
        CHECK_ERR(tnn_gguf_get_arr_i64(g, "empty.u32", 0, &v), TNN_ERR_RANGE, "out of range");
        const void *data = tnn_gguf_tensor_data(g, 0);
        CHECK(data && memcmp(data, x, sizeof x) == 0, "tensor data");
    }
    tnn_gguf_close(g);

    /* The internal borrowing add (checkpoints): same file, no copy. */
    w = tnn_gguf_writer_new();
    CHECK_OK(tnn__gguf_writer_add_tensor_ref(w, "x", TNN_GGML_F32, 1, sh, x, sizeof x));
    CHECK_ERR(tnn__gguf_writer_add_tensor_ref(w, "y", TNN_GGML_Q8_0, 1, sh, x, sizeof x),
              TNN_ERR_SHAPE, "the shape needs 34");
    x[3] = 42.0f; /* borrowed: the write sees the caller's latest bytes */
    CHECK_OK(tnn_gguf_writer_write(w, path));
    tnn_gguf_writer_free(w);
    g = tnn_gguf_open(path);
    CHECK(g && tnn_gguf_tensor_data(g, 0) &&
              memcmp(tnn_gguf_tensor_data(g, 0), x, sizeof x) == 0,
          "borrowed tensor: %s", tnn_last_error());
    tnn_gguf_close(g);

    /* Tensors made while writing (streamed checkpoints): each fill called
     * once with room for its bytes; a failing fill fails the write with its
     * status and message and leaves the old file as it was. */
    int calls = 0;
    w = tnn_gguf_writer_new();
    CHECK_OK(tnn__gguf_writer_add_tensor_fill(w, "a", TNN_GGML_F32, 1, sh, sizeof x, fill_iota,
                                              &calls));
    CHECK_OK(tnn__gguf_writer_add_tensor_ref(w, "x", TNN_GGML_F32, 1, sh, x, sizeof x));
    CHECK_OK(tnn__gguf_writer_add_tensor_fill(w, "b", TNN_GGML_F32, 1, sh, sizeof x, fill_iota,
                                              &calls));
    CHECK_ERR(tnn__gguf_writer_add_tensor_fill(w, "c", TNN_GGML_F32, 1, sh, sizeof x, NULL, NULL),
              TNN_ERR_ARG, "fill is NULL");
    CHECK_OK(tnn_gguf_writer_write(w, path));
    CHECK(calls == 2, "fill called %d times", calls);
    g = tnn_gguf_open(path);
    const float *fa = g ? tnn_gguf_tensor_data(g, 0) : NULL, *fb = g ? tnn_gguf_tensor_data(g, 2) : NULL;
    CHECK(fa && fb && fa[0] == 1 && fa[3] == 4 && fb[0] == 2 && fb[3] == 8 &&
              !memcmp(tnn_gguf_tensor_data(g, 1), x, sizeof x),
          "filled tensors: %s", tnn_last_error());
    tnn_gguf_close(g);
    calls = 100; /* the next fill fails */
    CHECK_ERR(tnn_gguf_writer_write(w, path), TNN_ERR_DEVICE, "fill 101");
    tnn_gguf_writer_free(w);
    g = tnn_gguf_open(path);
    CHECK(g && tnn_gguf_n_tensors(g) == 3, "the old file is intact: %s", tnn_last_error());
    tnn_gguf_close(g);

    /* A file with nothing: header only. */
    w = tnn_gguf_writer_new();
    CHECK_OK(tnn_gguf_writer_write(w, path));
    tnn_gguf_writer_free(w);
    g = tnn_gguf_open(path);
    CHECK(g && tnn_gguf_n_kv(g) == 0 && tnn_gguf_n_tensors(g) == 0, "empty file: %s",
          tnn_last_error());
    tnn_gguf_close(g);
}

/* ------------------------------------------------------------------------ */
/* Handcrafted corrupt files                                                */
/* ------------------------------------------------------------------------ */

typedef struct bb {
    uint8_t b[8192];
    size_t n;
} bb;

static size_t put(bb *x, const void *p, size_t n) {
    size_t at = x->n;
    memcpy(x->b + x->n, p, n);
    x->n += n;
    return at;
}
static size_t u32(bb *x, uint32_t v) {
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (8 * i));
    return put(x, b, 4);
}
static size_t u64(bb *x, uint64_t v) {
    size_t at = u32(x, (uint32_t)v);
    u32(x, (uint32_t)(v >> 32));
    return at;
}
static size_t str(bb *x, const char *s) {
    size_t at = u64(x, strlen(s));
    put(x, s, strlen(s));
    return at;
}
static void header(bb *x, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    x->n = 0;
    put(x, "GGUF", 4);
    u32(x, version);
    u64(x, n_tensors);
    u64(x, n_kv);
}
/* A KV pair of type uint32; returns the offset of its value. */
static size_t kv_u32(bb *x, const char *key, uint32_t v) {
    str(x, key);
    u32(x, TNN_GGUF_UINT32);
    return u32(x, v);
}
static size_t kv_str(bb *x, const char *key, const char *v) {
    size_t at = str(x, key);
    u32(x, TNN_GGUF_STRING);
    str(x, v);
    return at;
}
/* A tensor info; the offsets of its fields go to `at` (name, n_dims, first
 * dim, type, offset). */
typedef struct { size_t name, ndim, dim0, type, offset; } tinfo_at;
static tinfo_at tinfo(bb *x, const char *name, uint32_t ndim, const uint64_t *ne, uint32_t type,
                      uint64_t offset) {
    tinfo_at at;
    at.name = str(x, name);
    at.ndim = u32(x, ndim);
    at.dim0 = x->n;
    for (uint32_t d = 0; d < ndim; d++) u64(x, ne[d]);
    at.type = u32(x, type);
    at.offset = u64(x, offset);
    return at;
}
static void pad(bb *x, size_t a) {
    while (x->n % a) x->b[x->n++] = 0;
}
static void data(bb *x, size_t n) {
    for (size_t i = 0; i < n; i++) x->b[x->n++] = (uint8_t)i;
}

/* The file must be refused with `status`, a message holding `reason` and
 * "offset <off>:", both from memory and from a file on disk. */
static void expect_bad(const char *label, const bb *x, size_t len, int status, const char *reason,
                       long long off) {
    char want_off[64];
    snprintf(want_off, sizeof want_off, "offset %lld:", off);
    tnn_clear_error();
    tnn_gguf *g = tnn_gguf_open_memory(x->b, len);
    const char *msg = tnn_last_error();
    CHECK(g == NULL && tnn_last_status() == status && strstr(msg, reason) &&
              (off < 0 || strstr(msg, want_off)),
          "%s (memory): status %s, message \"%s\" (want %s, \"%s\", \"%s\")", label,
          tnn_status_name(tnn_last_status()), msg, tnn_status_name(status), reason, want_off);
    tnn_gguf_close(g);

    char path[512];
    path_in_tmp(path, sizeof path, "bad.gguf");
    if (write_bytes(path, x->b, len) != 0) {
        CHECK(0, "cannot write %s", path);
        return;
    }
    tnn_clear_error();
    g = tnn_gguf_open(path);
    msg = tnn_last_error();
    CHECK(g == NULL && tnn_last_status() == status && strstr(msg, reason) &&
              (off < 0 || strstr(msg, want_off)) && strstr(msg, path),
          "%s (file): status %s, message \"%s\" (want %s, \"%s\", \"%s\")", label,
          tnn_status_name(tnn_last_status()), msg, tnn_status_name(status), reason, want_off);
    tnn_gguf_close(g);
}

static void expect_good(const char *label, const bb *x) {
    tnn_gguf *g = tnn_gguf_open_memory(x->b, x->n);
    CHECK(g != NULL, "%s: refused: %s", label, tnn_last_error());
    tnn_gguf_close(g);
}

/* The valid base: one string KV, tensor "w" (F32, 32) at offset 0. */
static void base_file(bb *x, uint32_t version) {
    header(x, version, 1, 1);
    kv_str(x, "general.architecture", "llama");
    uint64_t ne[1] = {32};
    tinfo(x, "w", 1, ne, TNN_GGML_F32, 0);
    pad(x, 32);
    data(x, 128);
}

static void test_corrupt_files(void) {
    bb x;
    base_file(&x, 3);
    expect_good("base v3", &x);
    base_file(&x, 2);
    expect_good("base v2", &x);

    /* bad magic */
    base_file(&x, 3);
    x.b[3] = 'X';
    expect_bad("bad magic", &x, x.n, TNN_ERR_FORMAT, "bad magic", 0);

    /* unsupported versions: 1 (u32 counts), 4, big-endian 3 */
    base_file(&x, 1);
    expect_bad("version 1", &x, x.n, TNN_ERR_FORMAT, "unsupported version 1", 4);
    base_file(&x, 4);
    expect_bad("version 4", &x, x.n, TNN_ERR_FORMAT, "unsupported version 4", 4);
    base_file(&x, 0x03000000u);
    expect_bad("big-endian", &x, x.n, TNN_ERR_FORMAT, "big-endian", 4);

    /* truncated header */
    base_file(&x, 3);
    expect_bad("empty file", &x, 0, TNN_ERR_FORMAT, "end of file", 0);
    expect_bad("truncated magic", &x, 3, TNN_ERR_FORMAT, "end of file", 0);
    expect_bad("truncated header", &x, 20, TNN_ERR_FORMAT, "end of file", 16);

    /* KV count larger than the file */
    header(&x, 3, 0, 1000);
    kv_u32(&x, "a", 1);
    expect_bad("KV count", &x, x.n, TNN_ERR_FORMAT, "KV count 1000 too large", 16);
    header(&x, 3, 0, UINT64_MAX);
    expect_bad("KV count max", &x, x.n, TNN_ERR_FORMAT, "KV count", 16);

    /* tensor count larger than the file */
    header(&x, 3, 1u << 20, 0);
    expect_bad("tensor count", &x, x.n, TNN_ERR_FORMAT, "tensor count", 8);

    /* string length past the end */
    header(&x, 3, 0, 1);
    u64(&x, 100);
    put(&x, "abcdefgh", 8);
    expect_bad("key past end", &x, x.n, TNN_ERR_FORMAT, "key length 100 exceeds the 8 bytes", 24);
    header(&x, 3, 0, 1);
    str(&x, "k");
    u32(&x, TNN_GGUF_STRING);
    size_t at = u64(&x, 50);
    put(&x, "short", 5);
    expect_bad("string past end", &x, x.n, TNN_ERR_FORMAT, "string length 50 exceeds",
               (long long)at);

    /* huge string length (would overflow pos + len) */
    header(&x, 3, 0, 1);
    u64(&x, UINT64_MAX);
    put(&x, "abcdefgh", 8);
    expect_bad("huge key length", &x, x.n, TNN_ERR_FORMAT, "exceeds", 24);
    header(&x, 3, 0, 1);
    str(&x, "k");
    u32(&x, TNN_GGUF_STRING);
    at = u64(&x, UINT64_MAX - 7);
    put(&x, "abcdefgh", 8);
    expect_bad("huge string length", &x, x.n, TNN_ERR_FORMAT, "exceeds", (long long)at);

    /* unknown KV type */
    header(&x, 3, 0, 1);
    str(&x, "k");
    at = u32(&x, 13);
    u32(&x, 0);
    expect_bad("unknown kv type", &x, x.n, TNN_ERR_FORMAT, "unknown value type 13", (long long)at);
    header(&x, 3, 0, 1);
    str(&x, "k");
    u32(&x, TNN_GGUF_ARRAY);
    at = u32(&x, 77);
    u64(&x, 0);
    expect_bad("unknown array type", &x, x.n, TNN_ERR_FORMAT, "unknown value type 77",
               (long long)at);

    /* array length larger than the file, and nesting */
    header(&x, 3, 0, 1);
    str(&x, "k");
    u32(&x, TNN_GGUF_ARRAY);
    u32(&x, TNN_GGUF_UINT32);
    at = u64(&x, 1ull << 61);
    u32(&x, 0);
    expect_bad("array length", &x, x.n, TNN_ERR_FORMAT, "array length", (long long)at);
    header(&x, 3, 0, 1);
    str(&x, "k");
    u32(&x, TNN_GGUF_ARRAY);
    size_t deep = 0;
    for (int d = 0; d < 10; d++) {
        size_t a = u32(&x, TNN_GGUF_ARRAY);
        if (d == TNN_GGUF_MAX_NEST - 1) deep = a;
        u64(&x, 1);
    }
    u32(&x, TNN_GGUF_UINT8);
    u64(&x, 0);
    expect_bad("nesting", &x, x.n, TNN_ERR_FORMAT, "nested deeper", (long long)deep);
    /* nesting within the limit is fine and typed as array of arrays */
    header(&x, 3, 0, 1);
    str(&x, "nested");
    u32(&x, TNN_GGUF_ARRAY);
    u32(&x, TNN_GGUF_ARRAY);
    u64(&x, 2);
    for (int i = 0; i < 2; i++) {
        u32(&x, TNN_GGUF_STRING);
        u64(&x, 1);
        str(&x, "s");
    }
    tnn_gguf *g = tnn_gguf_open_memory(x.b, x.n);
    CHECK(g && tnn_gguf_arr_type(g, "nested") == TNN_GGUF_ARRAY &&
              tnn_gguf_arr_len(g, "nested") == 2,
          "nested arrays: %s", tnn_last_error());
    int64_t v64;
    CHECK_ERR(tnn_gguf_get_arr_i64(g, "nested", 0, &v64), TNN_ERR_FORMAT, "array of array");
    tnn_gguf_close(g);

    /* bool other than 0/1 */
    header(&x, 3, 0, 1);
    str(&x, "b");
    u32(&x, TNN_GGUF_BOOL);
    at = x.n;
    x.b[x.n++] = 2;
    expect_bad("bool", &x, x.n, TNN_ERR_FORMAT, "bool value 2", (long long)at);

    /* key contents */
    header(&x, 3, 0, 1);
    str(&x, "");
    u32(&x, TNN_GGUF_UINT8);
    data(&x, 8); /* room for the KV count check */
    expect_bad("empty key", &x, x.n, TNN_ERR_FORMAT, "empty key", 24);
    header(&x, 3, 0, 1);
    u64(&x, 3);
    put(&x, "a\0b", 3);
    u32(&x, TNN_GGUF_UINT8);
    x.b[x.n++] = 0;
    expect_bad("NUL in key", &x, x.n, TNN_ERR_FORMAT, "NUL", 24);

    /* duplicate key */
    header(&x, 3, 0, 2);
    kv_u32(&x, "dup.key", 1);
    at = x.n;
    kv_u32(&x, "dup.key", 2);
    expect_bad("duplicate key", &x, x.n, TNN_ERR_FORMAT,
               "duplicate key 'dup.key' (first at offset 24)",
               (long long)at);

    /* bad alignment: 0, 3, and not a uint32 */
    header(&x, 3, 0, 1);
    at = kv_u32(&x, "general.alignment", 0);
    expect_bad("alignment 0", &x, x.n, TNN_ERR_FORMAT, "bad alignment 0", (long long)at);
    header(&x, 3, 0, 1);
    at = kv_u32(&x, "general.alignment", 3);
    expect_bad("alignment 3", &x, x.n, TNN_ERR_FORMAT, "bad alignment 3", (long long)at);
    header(&x, 3, 0, 1);
    str(&x, "general.alignment");
    u32(&x, TNN_GGUF_UINT64);
    at = u64(&x, 32);
    expect_bad("alignment u64", &x, x.n, TNN_ERR_FORMAT, "not uint32", (long long)at);
    /* a good custom alignment moves the data section */
    header(&x, 3, 1, 1);
    kv_u32(&x, "general.alignment", 256);
    uint64_t ne1[1] = {32};
    tinfo(&x, "w", 1, ne1, TNN_GGML_F32, 0);
    pad(&x, 256);
    data(&x, 128);
    g = tnn_gguf_open_memory(x.b, x.n);
    CHECK(g && tnn_gguf_data_offset(g) == 256 && tnn_gguf_alignment(g) == 256,
          "alignment 256: %s", tnn_last_error());
    tnn_gguf_close(g);

    /* tensor infos: each field's defects */
    uint64_t ne[5] = {32, 2, 2, 2, 2};
    tinfo_at ta;
#define ONE_TENSOR(name_, ndim_, ne_, type_, off_)                                            \
    do {                                                                                      \
        header(&x, 3, 1, 0);                                                                  \
        ta = tinfo(&x, name_, ndim_, ne_, type_, off_);                                       \
        pad(&x, 32);                                                                          \
        data(&x, 512);                                                                        \
    } while (0)

    ONE_TENSOR("w", 1, ne, 4, 0); /* 4: a retired id */
    expect_bad("unknown tensor type", &x, x.n, TNN_ERR_FORMAT, "unknown tensor type 4",
               (long long)ta.type);
    ONE_TENSOR("w", 1, ne, 1000, 0);
    expect_bad("tensor type 1000", &x, x.n, TNN_ERR_FORMAT, "unknown tensor type 1000",
               (long long)ta.type);

    ONE_TENSOR("w", 5, ne, TNN_GGML_F32, 0);
    expect_bad("ndim 5", &x, x.n, TNN_ERR_FORMAT, "has 5 dimensions", (long long)ta.ndim);
    ONE_TENSOR("w", 0, ne, TNN_GGML_F32, 0);
    expect_bad("ndim 0", &x, x.n, TNN_ERR_FORMAT, "has 0 dimensions", (long long)ta.ndim);

    uint64_t zero[2] = {32, 0};
    ONE_TENSOR("w", 2, zero, TNN_GGML_F32, 0);
    expect_bad("zero dim", &x, x.n, TNN_ERR_FORMAT, "dimension 1 is zero",
               (long long)ta.dim0 + 8);

    uint64_t odd[1] = {33};
    ONE_TENSOR("w", 1, odd, TNN_GGML_Q4_0, 0);
    expect_bad("block size", &x, x.n, TNN_ERR_FORMAT, "not a multiple of the block size 32",
               (long long)ta.type);

    uint64_t big[2] = {1ull << 32, 1ull << 32};
    ONE_TENSOR("w", 2, big, TNN_GGML_F32, 0);
    expect_bad("element overflow", &x, x.n, TNN_ERR_FORMAT, "element count overflows",
               (long long)ta.dim0 + 8);
    uint64_t huge[1] = {1ull << 63};
    ONE_TENSOR("w", 1, huge, TNN_GGML_F32, 0);
    expect_bad("dim over int64", &x, x.n, TNN_ERR_FORMAT, "overflows", (long long)ta.dim0);
    uint64_t bytes_ovf[1] = {1ull << 62};
    ONE_TENSOR("w", 1, bytes_ovf, TNN_GGML_F32, 0);
    expect_bad("byte size overflow", &x, x.n, TNN_ERR_FORMAT, "byte size overflows",
               (long long)ta.type);

    ONE_TENSOR("w", 1, ne, TNN_GGML_F32, 4);
    expect_bad("misaligned", &x, x.n, TNN_ERR_FORMAT, "misaligned", (long long)ta.offset);

    char longname[80];
    memset(longname, 'n', 65);
    longname[65] = '\0';
    ONE_TENSOR(longname, 1, ne, TNN_GGML_F32, 0);
    expect_bad("long name", &x, x.n, TNN_ERR_FORMAT, "tensor name length 65", (long long)ta.name);

    /* tensor data range past the end of the file */
    ONE_TENSOR("w", 1, ne, TNN_GGML_F32, 0);
    size_t full = x.n - 512 + 128; /* exactly the data of "w" */
    expect_bad("past EOF by 1", &x, full - 1, TNN_ERR_FORMAT, "past the end", (long long)ta.name);
    x.n = full;
    expect_good("exactly at EOF", &x);
    ONE_TENSOR("w", 1, ne, TNN_GGML_F32, 416); /* 416 + 128 > 512 */
    expect_bad("past EOF", &x, x.n, TNN_ERR_FORMAT, "past the end", (long long)ta.name);
    ONE_TENSOR("w", 1, ne, TNN_GGML_F32, UINT64_MAX - 31); /* aligned, would wrap */
    expect_bad("offset wraps", &x, x.n, TNN_ERR_FORMAT, "past the end", (long long)ta.name);

    /* overlapping tensors */
    header(&x, 3, 2, 0);
    tinfo(&x, "a", 1, ne, TNN_GGML_F32, 0);
    ta = tinfo(&x, "b", 1, ne, TNN_GGML_F32, 96);
    pad(&x, 32);
    data(&x, 512);
    expect_bad("overlap", &x, x.n, TNN_ERR_FORMAT, "overlaps tensor 'a'", (long long)ta.name);
    header(&x, 3, 2, 0);
    tinfo(&x, "a", 1, ne, TNN_GGML_F32, 128);
    ta = tinfo(&x, "b", 1, ne, TNN_GGML_F32, 128);
    pad(&x, 32);
    data(&x, 512);
    expect_bad("same offset", &x, x.n, TNN_ERR_FORMAT, "overlaps", -1);
    header(&x, 3, 2, 0);
    tinfo(&x, "a", 1, ne, TNN_GGML_F32, 128);
    tinfo(&x, "b", 1, ne, TNN_GGML_F32, 0);
    pad(&x, 32);
    data(&x, 512);
    expect_good("adjacent, out of order", &x);

    /* duplicate tensor name */
    header(&x, 3, 2, 0);
    tinfo(&x, "same", 1, ne, TNN_GGML_F32, 0);
    ta = tinfo(&x, "same", 1, ne, TNN_GGML_F32, 128);
    pad(&x, 32);
    data(&x, 512);
    expect_bad("duplicate tensor", &x, x.n, TNN_ERR_FORMAT, "duplicate tensor name 'same'",
               (long long)ta.name);

    /* truncated in the middle of the tensor infos */
    header(&x, 3, 2, 0);
    tinfo(&x, "a", 1, ne, TNN_GGML_F32, 0);
    ta = tinfo(&x, "b.a_longer_name.weight", 2, ne, TNN_GGML_F32, 128);
    pad(&x, 32);
    data(&x, 512);
    expect_bad("truncated infos", &x, ta.dim0 + 4, TNN_ERR_FORMAT,
               "end of file reading tensor dimension",
               (long long)ta.dim0);
#undef ONE_TENSOR
}

/* Every prefix of a valid file is refused until the last tensor's data is
 * complete; random byte flips never crash and refusals say where. */
static void test_sweeps(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "roundtrip.gguf");
    size_t n = 0;
    uint8_t *bytes = read_bytes(path, &n);
    CHECK(bytes != NULL, "read %s", path);
    if (!bytes) return;
    tnn_gguf *g = tnn_gguf_open_memory(bytes, n);
    CHECK(g != NULL, "%s", tnn_last_error());
    if (!g) {
        free(bytes);
        return;
    }
    int64_t end = 0;
    for (int64_t i = 0; i < tnn_gguf_n_tensors(g); i++) {
        int64_t e = tnn_gguf_tensor_offset(g, i) + tnn_gguf_tensor_nbytes(g, i);
        if (e > end) end = e;
    }
    tnn_gguf_close(g);
    int wrong = 0;
    for (size_t len = 0; len <= n; len++) {
        tnn_clear_error();
        g = tnn_gguf_open_memory(bytes, len);
        bool want_ok = (int64_t)len >= end;
        if ((g != NULL) != want_ok ||
            (!g && (tnn_last_status() != TNN_ERR_FORMAT || !strstr(tnn_last_error(), "offset ")))) {
            if (wrong++ < 5)
                fprintf(stderr, "prefix %zu of %zu: %s\n", len, n,
                        g ? "accepted" : tnn_last_error());
        }
        tnn_gguf_close(g);
    }
    CHECK(wrong == 0, "%d prefixes misjudged (data ends at %lld)", wrong, (long long)end);

    th_seed(99);
    int bad_msg = 0, accepted = 0;
    uint8_t *m = malloc(n);
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(m, bytes, n);
        int flips = 1 + (int)(th_uniform() * 4);
        for (int f = 0; f < flips; f++) {
            /* mostly in the metadata, where the structure is */
            size_t pos = (size_t)(th_uniform() * (double)(trial % 2 ? n : (size_t)end / 4));
            m[pos] = (uint8_t)(th_uniform() * 256);
        }
        tnn_clear_error();
        g = tnn_gguf_open_memory(m, n);
        if (g) {
            accepted++;
            for (int64_t i = 0; i < tnn_gguf_n_kv(g); i++) (void)tnn_gguf_kv_type_at(g, i);
            for (int64_t i = 0; i < tnn_gguf_n_tensors(g); i++) (void)tnn_gguf_tensor_data(g, i);
        } else if (!strstr(tnn_last_error(), "offset ") &&
                   tnn_last_status() != TNN_ERR_NOMEM) {
            if (bad_msg++ < 5) fprintf(stderr, "flip trial %d: %s\n", trial, tnn_last_error());
        }
        tnn_gguf_close(g);
    }
    free(m);
    CHECK(bad_msg == 0, "%d refusals without an offset", bad_msg);
    printf("byte flips: %d of 3000 mutated files accepted, the rest refused\n", accepted);
    free(bytes);
}

/* ------------------------------------------------------------------------ */
/* Accessor and writer errors                                               */
/* ------------------------------------------------------------------------ */

static void test_accessor_errors(void) {
    char path[512];
    path_in_tmp(path, sizeof path, "roundtrip.gguf");
    tnn_gguf *g = tnn_gguf_open(path);
    CHECK(g != NULL, "%s", tnn_last_error());
    if (!g) return;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    int b;
    const char *s;

    CHECK_ERR(tnn_gguf_get_u32(g, "no.such.key", &u32), TNN_ERR_RANGE, "'no.such.key' not found");
    CHECK_ERR(tnn_gguf_get_str(g, "missing", &s, NULL), TNN_ERR_RANGE, "not found");
    CHECK_ERR(tnn_gguf_kv_type(g, "missing"), TNN_ERR_RANGE, "not found");
    CHECK_ERR((int)tnn_gguf_find_key(g, "missing"), TNN_ERR_RANGE, "not found");
    CHECK_ERR(tnn_gguf_get_u32(g, "test.str", &u32), TNN_ERR_FORMAT,
              "'test.str' has type string, not uint32");
    CHECK_ERR(tnn_gguf_get_i32(g, "test.u32", &i32), TNN_ERR_FORMAT, "has type uint32, not int32");
    CHECK_ERR(tnn_gguf_get_u64(g, "test.u32", &u64), TNN_ERR_FORMAT, "not uint64");
    CHECK_ERR(tnn_gguf_get_f32(g, "test.f64", &f32), TNN_ERR_FORMAT, "not float32");
    CHECK_ERR(tnn_gguf_get_f64(g, "test.u8", &f64), TNN_ERR_FORMAT, "not float32 or float64");
    CHECK_ERR(tnn_gguf_get_i64(g, "test.f32", &i64), TNN_ERR_FORMAT, "not an integer");
    CHECK_ERR(tnn_gguf_get_i64(g, "test.bool_t", &i64), TNN_ERR_FORMAT, "not an integer");
    CHECK_ERR(tnn_gguf_get_bool(g, "test.u8", &b), TNN_ERR_FORMAT, "not bool");
    CHECK_ERR(tnn_gguf_get_str(g, "test.arr.str", &s, NULL), TNN_ERR_FORMAT,
              "array of string, not string");
    CHECK_ERR(tnn_gguf_arr_len(g, "test.u8"), TNN_ERR_FORMAT, "not array");
    CHECK_ERR(tnn_gguf_arr_type(g, "missing"), TNN_ERR_RANGE, "not found");
    CHECK_ERR(tnn_gguf_get_arr_str(g, "test.arr.u8", 0, &s, NULL), TNN_ERR_FORMAT,
              "array of uint8, not of string");
    CHECK_ERR(tnn_gguf_get_arr_i64(g, "test.arr.str", 0, &i64), TNN_ERR_FORMAT, "not of integers");
    CHECK_ERR(tnn_gguf_get_arr_f64(g, "test.arr.i32", 0, &f64), TNN_ERR_FORMAT, "not of floats");
    CHECK_ERR(tnn_gguf_get_arr_str(g, "test.arr.str", 99, &s, NULL), TNN_ERR_RANGE,
              "index 99 out of range");
    CHECK_ERR(tnn_gguf_get_arr_i64(g, "test.arr.u8", -1, &i64), TNN_ERR_RANGE, "out of range");
    CHECK_ERR(tnn_gguf_get_u32(g, "test.u32", NULL), TNN_ERR_ARG, "out is NULL");
    CHECK_ERR(tnn_gguf_get_u32(g, NULL, &u32), TNN_ERR_ARG, "key is NULL");
    CHECK_ERR(tnn_gguf_get_u32(NULL, "x", &u32), TNN_ERR_ARG, "g is NULL");
    CHECK_ERR(tnn_gguf_version(NULL), TNN_ERR_ARG, "NULL");
    CHECK_ERR((int)tnn_gguf_n_kv(NULL), TNN_ERR_ARG, "NULL");
    CHECK_NULL(tnn_gguf_key(g, -1), TNN_ERR_RANGE, "out of range");
    CHECK_NULL(tnn_gguf_key(g, N_KVS), TNN_ERR_RANGE, "out of range");
    CHECK_ERR(tnn_gguf_kv_type_at(g, 1000), TNN_ERR_RANGE, "out of range");

    CHECK_ERR((int)tnn_gguf_find_tensor(g, "nope"), TNN_ERR_RANGE, "'nope' not found");
    CHECK_ERR((int)tnn_gguf_find_tensor(g, NULL), TNN_ERR_ARG, "NULL");
    CHECK_NULL(tnn_gguf_tensor_name(g, n_tensors), TNN_ERR_RANGE, "out of range");
    CHECK_NULL(tnn_gguf_tensor_data(g, -1), TNN_ERR_RANGE, "out of range");
    CHECK_ERR(tnn_gguf_tensor_type(g, 9999), TNN_ERR_RANGE, "out of range");
    int64_t dims[4];
    CHECK_ERR(tnn_gguf_tensor_dims(g, 0, NULL), TNN_ERR_ARG, "NULL");
    CHECK_ERR(tnn_gguf_tensor_shape(NULL, 0, dims), TNN_ERR_ARG, "NULL");
    CHECK_ERR((int)tnn_gguf_tensor_nbytes(g, -5), TNN_ERR_RANGE, "out of range");
    tnn_gguf_close(g);
    tnn_gguf_close(NULL);

    /* open errors */
    CHECK_NULL(tnn_gguf_open(NULL), TNN_ERR_ARG, "NULL");
    CHECK_NULL(tnn_gguf_open("/nonexistent/dir/x.gguf"), TNN_ERR_IO, "cannot open");
    CHECK_NULL(tnn_gguf_open(tmpdir), TNN_ERR_IO, "not a regular file");
    char fifo[512];
    path_in_tmp(fifo, sizeof fifo, "fifo");
    if (mkfifo(fifo, 0600) == 0) /* must not block waiting for a writer */
        CHECK_NULL(tnn_gguf_open(fifo), TNN_ERR_IO, "not a regular file");
    CHECK_NULL(tnn_gguf_open_memory(NULL, 10), TNN_ERR_ARG, "NULL");
    char empty[512];
    path_in_tmp(empty, sizeof empty, "empty.gguf");
    write_bytes(empty, "", 0);
    CHECK_NULL(tnn_gguf_open(empty), TNN_ERR_FORMAT, "offset 0:");

    /* type tables */
    int64_t be = 0, bb = 0;
    CHECK_OK(tnn_ggml_type_block(TNN_GGML_Q4_K, &be, &bb));
    CHECK(be == 256 && bb == 144, "Q4_K block %lld/%lld", (long long)be, (long long)bb);
    CHECK_ERR(tnn_ggml_type_block(5, &be, &bb), TNN_ERR_ARG, "unknown tensor type 5");
    CHECK(strcmp(tnn_ggml_type_name(TNN_GGML_BF16), "BF16") == 0, "BF16 name");
    CHECK(strcmp(tnn_ggml_type_name(-1), "unknown") == 0, "unknown name");
    CHECK(strcmp(tnn_gguf_value_type_name(TNN_GGUF_FLOAT64), "float64") == 0, "f64 name");
}

static void test_writer_errors(void) {
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    CHECK(w != NULL, "writer_new");
    CHECK_ERR(tnn_gguf_writer_add_u32(NULL, "k", 1), TNN_ERR_ARG, "w is NULL");
    CHECK_ERR(tnn_gguf_writer_add_u32(w, NULL, 1), TNN_ERR_ARG, "key is NULL");
    CHECK_ERR(tnn_gguf_writer_add_u32(w, "", 1), TNN_ERR_ARG, "empty key");
    CHECK_OK(tnn_gguf_writer_add_u32(w, "k", 1));
    CHECK_ERR(tnn_gguf_writer_add_str(w, "k", "again"), TNN_ERR_ARG, "duplicate key 'k'");
    CHECK_ERR(tnn_gguf_writer_add_str(w, "s", NULL), TNN_ERR_ARG, "NULL");
    CHECK_ERR(tnn_gguf_writer_add_bool(w, "b", 2), TNN_ERR_ARG, "not 0 or 1");
    CHECK_ERR(tnn_gguf_writer_add_u32(w, "general.alignment", 0), TNN_ERR_ARG, "bad alignment 0");
    CHECK_ERR(tnn_gguf_writer_add_u32(w, "general.alignment", 3), TNN_ERR_ARG, "bad alignment 3");
    CHECK_ERR(tnn_gguf_writer_add_u64(w, "general.alignment", 32), TNN_ERR_ARG, "uint32");
    uint8_t bools[2] = {1, 7};
    CHECK_ERR(tnn_gguf_writer_add_arr(w, "ab", TNN_GGUF_BOOL, bools, 2), TNN_ERR_ARG, "not 0 or 1");
    CHECK_ERR(tnn_gguf_writer_add_arr(w, "as", TNN_GGUF_STRING, bools, 1), TNN_ERR_ARG,
              "add_arr_str");
    CHECK_ERR(tnn_gguf_writer_add_arr(w, "aa", 42, bools, 1), TNN_ERR_ARG, "elem_type 42");
    CHECK_ERR(tnn_gguf_writer_add_arr(w, "an", TNN_GGUF_UINT8, NULL, 3), TNN_ERR_ARG, "NULL");
    const char *strs[2] = {"x", NULL};
    CHECK_ERR(tnn_gguf_writer_add_arr_str(w, "sn", strs, 2), TNN_ERR_ARG, "strs[1] is NULL");

    float d[64] = {0};
    int64_t sh2[2] = {2, 32};
    CHECK_OK(tnn_gguf_writer_add_tensor(w, "t", TNN_GGML_F32, 2, sh2, d, sizeof d));
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "t", TNN_GGML_F32, 2, sh2, d, sizeof d), TNN_ERR_ARG,
              "duplicate tensor name 't'");
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", 4, 2, sh2, d, sizeof d), TNN_ERR_ARG,
              "unknown type 4");
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_F32, 5, sh2, d, sizeof d), TNN_ERR_ARG,
              "ndim 5");
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_F32, 2, sh2, d, 8), TNN_ERR_SHAPE,
              "nbytes 8, the shape needs 256");
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_F32, 2, sh2, NULL, 256), TNN_ERR_ARG,
              "data is NULL");
    int64_t bad[2] = {2, 0};
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_F32, 2, bad, d, 0), TNN_ERR_SHAPE,
              "must be > 0");
    int64_t q[2] = {2, 48};
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_Q4_0, 2, q, d, 108), TNN_ERR_SHAPE,
              "block size 32");
    int64_t huge[2] = {INT64_MAX, 4};
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, "u", TNN_GGML_F32, 2, huge, d, 4), TNN_ERR_OVERFLOW,
              "overflows");
    char longname[80];
    memset(longname, 'n', 64);
    longname[64] = '\0';
    CHECK_ERR(tnn_gguf_writer_add_tensor(w, longname, TNN_GGML_F32, 2, sh2, d, sizeof d),
              TNN_ERR_ARG, "of 64 bytes");

    CHECK_ERR(tnn_gguf_writer_write(w, NULL), TNN_ERR_ARG, "path");
    CHECK_ERR(tnn_gguf_writer_write(NULL, "x"), TNN_ERR_ARG, "w is NULL");
    CHECK_ERR(tnn_gguf_writer_write(w, "/nonexistent/dir/out.gguf"), TNN_ERR_IO, "cannot create");

    /* After all the refusals the writer is intact: what was added reads back. */
    char path[512];
    path_in_tmp(path, sizeof path, "after_errors.gguf");
    CHECK_OK(tnn_gguf_writer_write(w, path));
    tnn_gguf_writer_free(w);
    tnn_gguf_writer_free(NULL);
    tnn_gguf *g = tnn_gguf_open(path);
    uint32_t k = 0;
    CHECK(g && tnn_gguf_n_kv(g) == 1 && tnn_gguf_n_tensors(g) == 1 &&
              tnn_gguf_get_u32(g, "k", &k) == TNN_OK && k == 1,
          "writer after errors: %s", tnn_last_error());
    tnn_gguf_close(g);
}

/* ------------------------------------------------------------------------ */

static void remove_tmpdir(void) {
    DIR *d = opendir(tmpdir);
    if (!d) return;
    char p[1024];
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/tnn_gguf_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        fprintf(stderr, "cannot create a temporary directory %s\n", tmpdir);
        return 2;
    }
    make_tensor_specs();
    test_round_trip();
    test_small_files();
    test_corrupt_files();
    test_sweeps();
    test_accessor_errors();
    test_writer_errors();
    for (int i = 0; i < n_tensors; i++) free(tensors[i].data);
    remove_tmpdir();
    return th_finish("test_gguf");
}
