/* fuzz_gguf.c - libFuzzer target for the GGUF reader: parses any bytes with
 * tnn_gguf_open_memory, then walks every KV and tensor info through the
 * public getters and checks the reader's promises (traps if one breaks).
 * Build and run: fuzz/run.sh [SECONDS].
 */
#include "tinynn.h"

#include <stdint.h>
#include <string.h>

#define PROMISE(cond)                                                                         \
    do {                                                                                      \
        if (!(cond)) __builtin_trap();                                                        \
    } while (0)

static volatile uint8_t sink;

static void touch(const void *p, size_t n) {
    const uint8_t *b = p;
    if (n) sink ^= b[0] ^ b[n - 1] ^ b[n / 2];
}

static void walk_kv(const tnn_gguf *g, int64_t i) {
    const char *key = tnn_gguf_key(g, i);
    PROMISE(key && key[0]);
    PROMISE(tnn_gguf_find_key(g, key) == i); /* keys are unique and found */
    int type = tnn_gguf_kv_type_at(g, i);
    PROMISE(type >= 0 && type < TNN_GGUF_VALUE_TYPE_COUNT && type == tnn_gguf_kv_type(g, key));
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    int b;
    const char *s;
    size_t len;
    switch (type) {
    case TNN_GGUF_UINT32: PROMISE(tnn_gguf_get_u32(g, key, &u32) == TNN_OK); break;
    case TNN_GGUF_INT32: PROMISE(tnn_gguf_get_i32(g, key, &i32) == TNN_OK); break;
    case TNN_GGUF_UINT64: (void)tnn_gguf_get_u64(g, key, &u64); break;
    case TNN_GGUF_FLOAT32: PROMISE(tnn_gguf_get_f32(g, key, &f32) == TNN_OK); break;
    case TNN_GGUF_FLOAT64: PROMISE(tnn_gguf_get_f64(g, key, &f64) == TNN_OK); break;
    case TNN_GGUF_BOOL:
        PROMISE(tnn_gguf_get_bool(g, key, &b) == TNN_OK && (b == 0 || b == 1));
        break;
    case TNN_GGUF_STRING:
        PROMISE(tnn_gguf_get_str(g, key, &s, &len) == TNN_OK && s[len] == '\0');
        touch(s, len);
        break;
    case TNN_GGUF_ARRAY: {
        int et = tnn_gguf_arr_type(g, key);
        int64_t n = tnn_gguf_arr_len(g, key);
        PROMISE(et >= 0 && et < TNN_GGUF_VALUE_TYPE_COUNT && n >= 0);
        int64_t step = n > 64 ? n / 64 : 1; /* bounded work per key */
        for (int64_t j = 0; j < n; j += step) {
            if (et == TNN_GGUF_STRING) {
                PROMISE(tnn_gguf_get_arr_str(g, key, j, &s, &len) == TNN_OK && s[len] == '\0');
                touch(s, len);
            } else if (et == TNN_GGUF_FLOAT32 || et == TNN_GGUF_FLOAT64) {
                PROMISE(tnn_gguf_get_arr_f64(g, key, j, &f64) == TNN_OK);
            } else if (et != TNN_GGUF_ARRAY) {
                (void)tnn_gguf_get_arr_i64(g, key, j, &i64);
            }
        }
        if (n > 0 && et != TNN_GGUF_ARRAY && et != TNN_GGUF_STRING)
            PROMISE(tnn_gguf_get_arr_i64(g, key, n, &i64) == TNN_ERR_RANGE ||
                    et == TNN_GGUF_FLOAT32 || et == TNN_GGUF_FLOAT64);
        const void *data;
        if (tnn_gguf_get_arr_data(g, key, &data, &len) == TNN_OK) touch(data, len);
        break;
    }
    default: PROMISE(tnn_gguf_get_i64(g, key, &i64) == TNN_OK); break;
    }
    /* A wrong-type request is refused, never misread. */
    if (type != TNN_GGUF_UINT32) PROMISE(tnn_gguf_get_u32(g, key, &u32) == TNN_ERR_FORMAT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tnn_clear_error();
    tnn_gguf *g = tnn_gguf_open_memory(data, size);
    if (!g) {
        int st = tnn_last_status();
        /* A refusal is a format error that says where, or out of memory. */
        PROMISE(st == TNN_ERR_NOMEM ||
                (st == TNN_ERR_FORMAT && strstr(tnn_last_error(), "offset ")));
        return 0;
    }
    int v = tnn_gguf_version(g);
    PROMISE(v == 2 || v == 3);
    int64_t align = tnn_gguf_alignment(g), data_off = tnn_gguf_data_offset(g);
    PROMISE(align > 0 && (align & (align - 1)) == 0 && data_off % align == 0);

    int64_t n_kv = tnn_gguf_n_kv(g);
    PROMISE(n_kv >= 0);
    for (int64_t i = 0; i < n_kv; i++) walk_kv(g, i);
    PROMISE(tnn_gguf_key(g, n_kv) == NULL);

    int64_t n_t = tnn_gguf_n_tensors(g);
    PROMISE(n_t >= 0);
    for (int64_t i = 0; i < n_t; i++) {
        const char *name = tnn_gguf_tensor_name(g, i);
        PROMISE(name && name[0] && tnn_gguf_find_tensor(g, name) == i);
        int type = tnn_gguf_tensor_type(g, i);
        int64_t be = 0, bb = 0;
        PROMISE(tnn_ggml_type_block(type, &be, &bb) == TNN_OK);
        int64_t ne[4], shape[4];
        int nd = tnn_gguf_tensor_dims(g, i, ne);
        PROMISE(nd >= 1 && nd <= 4 && tnn_gguf_tensor_shape(g, i, shape) == nd);
        int64_t nelem = 1;
        for (int d = 0; d < 4; d++) {
            PROMISE(ne[d] > 0);
            nelem *= ne[d];
            if (d < nd) PROMISE(shape[nd - 1 - d] == ne[d]);
        }
        PROMISE(ne[0] % be == 0 && nelem == tnn_gguf_tensor_nelements(g, i));
        int64_t nbytes = tnn_gguf_tensor_nbytes(g, i), off = tnn_gguf_tensor_offset(g, i);
        PROMISE(nbytes == nelem / be * bb);
        PROMISE(off >= data_off && (off - data_off) % align == 0);
        PROMISE((uint64_t)off <= size && (uint64_t)nbytes <= size - (uint64_t)off);
        touch(tnn_gguf_tensor_data(g, i), (size_t)nbytes);
        for (int64_t j = 0; j < i && n_t <= 256; j++) { /* no overlaps */
            int64_t o2 = tnn_gguf_tensor_offset(g, j), n2 = tnn_gguf_tensor_nbytes(g, j);
            PROMISE(off + nbytes <= o2 || o2 + n2 <= off);
        }
    }
    PROMISE(tnn_gguf_tensor_data(g, n_t) == NULL);
    tnn_gguf_close(g);
    return 0;
}
