/* gguf.c - the GGUF reader (mmap, zero-copy, strict: it trusts nothing in
 * the file) and writer (aligned, atomic: temp file, fsync, rename). The file
 * layout and the reader's rules are described at the top of gguf.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mmap, posix_memalign, fsync */
#endif

#include "gguf.h"

#include "../core/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Type tables                                                              */
/* ------------------------------------------------------------------------ */

/* Block sizes as the GGUF format (ggml) defines them; gaps are retired ids. */
static const tnn_ggml_type_info ggml_types[TNN_GGML_TYPE_COUNT] = {
    [TNN_GGML_F32] = {"F32", 1, 4},          [TNN_GGML_F16] = {"F16", 1, 2},
    [TNN_GGML_Q4_0] = {"Q4_0", 32, 18},      [TNN_GGML_Q4_1] = {"Q4_1", 32, 20},
    [TNN_GGML_Q5_0] = {"Q5_0", 32, 22},      [TNN_GGML_Q5_1] = {"Q5_1", 32, 24},
    [TNN_GGML_Q8_0] = {"Q8_0", 32, 34},      [TNN_GGML_Q8_1] = {"Q8_1", 32, 40},
    [TNN_GGML_Q2_K] = {"Q2_K", 256, 84},     [TNN_GGML_Q3_K] = {"Q3_K", 256, 110},
    [TNN_GGML_Q4_K] = {"Q4_K", 256, 144},    [TNN_GGML_Q5_K] = {"Q5_K", 256, 176},
    [TNN_GGML_Q6_K] = {"Q6_K", 256, 210},    [TNN_GGML_Q8_K] = {"Q8_K", 256, 292},
    [TNN_GGML_IQ2_XXS] = {"IQ2_XXS", 256, 66}, [TNN_GGML_IQ2_XS] = {"IQ2_XS", 256, 74},
    [TNN_GGML_IQ3_XXS] = {"IQ3_XXS", 256, 98}, [TNN_GGML_IQ1_S] = {"IQ1_S", 256, 50},
    [TNN_GGML_IQ4_NL] = {"IQ4_NL", 32, 18},  [TNN_GGML_IQ3_S] = {"IQ3_S", 256, 110},
    [TNN_GGML_IQ2_S] = {"IQ2_S", 256, 82},   [TNN_GGML_IQ4_XS] = {"IQ4_XS", 256, 136},
    [TNN_GGML_I8] = {"I8", 1, 1},            [TNN_GGML_I16] = {"I16", 1, 2},
    [TNN_GGML_I32] = {"I32", 1, 4},          [TNN_GGML_I64] = {"I64", 1, 8},
    [TNN_GGML_F64] = {"F64", 1, 8},          [TNN_GGML_IQ1_M] = {"IQ1_M", 256, 56},
    [TNN_GGML_BF16] = {"BF16", 1, 2},        [TNN_GGML_TQ1_0] = {"TQ1_0", 256, 54},
    [TNN_GGML_TQ2_0] = {"TQ2_0", 256, 66},   [TNN_GGML_MXFP4] = {"MXFP4", 32, 17},
    [TNN_GGML_NVFP4] = {"NVFP4", 64, 36},    [TNN_GGML_Q1_0] = {"Q1_0", 128, 18},
};
_Static_assert(sizeof ggml_types / sizeof ggml_types[0] == TNN_GGML_TYPE_COUNT,
               "ggml type table out of step with tnn_ggml_type");

static const char *const value_type_names[] = {
    "uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
    "bool",  "string", "array",  "uint64", "int64", "float64",
};
static const uint8_t value_sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
_Static_assert(sizeof value_type_names / sizeof value_type_names[0] ==
                   TNN_GGUF_VALUE_TYPE_COUNT,
               "value type names out of step with tnn_gguf_value_type");
_Static_assert(sizeof value_sizes == TNN_GGUF_VALUE_TYPE_COUNT,
               "value sizes out of step with tnn_gguf_value_type");

const tnn_ggml_type_info *tnn__ggml_type(int type) {
    if (type < 0 || type >= TNN_GGML_TYPE_COUNT || !ggml_types[type].name) return NULL;
    return &ggml_types[type];
}

size_t tnn__gguf_value_size(int vtype) {
    if (vtype < 0 || vtype >= TNN_GGUF_VALUE_TYPE_COUNT) return 0;
    return value_sizes[vtype];
}

const char *tnn_ggml_type_name(int type) {
    const tnn_ggml_type_info *ti = tnn__ggml_type(type);
    return ti ? ti->name : "unknown";
}

int tnn_ggml_type_block(int type, int64_t *block_elems, int64_t *block_bytes) {
    const tnn_ggml_type_info *ti = tnn__ggml_type(type);
    if (!ti) return TNN_ERR(TNN_ERR_ARG, "unknown tensor type %d", type);
    if (block_elems) *block_elems = ti->block_elems;
    if (block_bytes) *block_bytes = ti->block_bytes;
    return TNN_OK;
}

const char *tnn_gguf_value_type_name(int vtype) {
    if (vtype < 0 || vtype >= TNN_GGUF_VALUE_TYPE_COUNT) return "unknown";
    return value_type_names[vtype];
}

/* Little-endian decoding, byte by byte: right on any host and alignment. */
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static uint64_t le64(const uint8_t *p) { return le32(p) | ((uint64_t)le32(p + 4) << 32); }

/* ------------------------------------------------------------------------ */
/* Reader: the cursor and its checks                                        */
/* ------------------------------------------------------------------------ */

typedef unsigned long long ull; /* for printf */

/* Bytes of the smallest possible KV pair (key of 1 byte, a 1-byte value)
 * and tensor info (name of 1 byte, one dimension). */
#define MIN_KV_BYTES (8 + 1 + 4 + 1)
#define MIN_TINFO_BYTES (8 + 1 + 4 + 8 + 4 + 8)
#define HEADER_BYTES 24

typedef struct rd {
    const uint8_t *p;
    uint64_t size, pos;
    const char *func, *what; /* for messages: public function, path */
    uint32_t alignment;
    bool fill;               /* second pass: store into g */
    tnn_gguf *g;
    uint64_t arena_bytes;    /* first pass: bytes of string copies */
    uint64_t n_arr_strs;     /* first pass: entries of top-level string arrays */
    char *arena_at;          /* second pass: next free byte of the arena */
    uint64_t arr_str_at;     /* second pass: next free entry of g->arr_strs */
} rd;

static int bad(const rd *r, int status, uint64_t off, const char *fmt, ...) TNN_PRINTF(4, 5);
static int bad(const rd *r, int status, uint64_t off, const char *fmt, ...) {
    char reason[360];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return tnn__error(status, r->func, "%.120s: offset %llu: %s", r->what, (ull)off, reason);
}

static uint64_t left(const rd *r) { return r->size - r->pos; }

static int need(rd *r, uint64_t n, const char *what) {
    if (n > left(r))
        return bad(r, TNN_ERR_FORMAT, r->pos,
                   "unexpected end of file reading %s (need %llu bytes, %llu left)", what,
                   (ull)n, (ull)left(r));
    return TNN_OK;
}

static int rd_u32(rd *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc) return rc;
    *v = le32(r->p + r->pos);
    r->pos += 4;
    return TNN_OK;
}

static int rd_u64(rd *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc) return rc;
    *v = le64(r->p + r->pos);
    r->pos += 8;
    return TNN_OK;
}

enum { STR_VALUE, STR_KEY, STR_NAME };

/* Reads one string at the cursor and checks it; *s points into the buffer
 * (not NUL-terminated). `what` names it in messages. */
static int rd_str(rd *r, int kind, const char *what, const uint8_t **s, uint64_t *len) {
    uint64_t off = r->pos;
    int rc = rd_u64(r, len, what);
    if (rc) return rc;
    if (*len > left(r))
        return bad(r, TNN_ERR_FORMAT, off, "%s length %llu exceeds the %llu bytes left", what,
                   (ull)*len, (ull)left(r));
    *s = r->p + r->pos;
    if (kind != STR_VALUE) {
        uint64_t max = kind == STR_KEY ? TNN_GGUF_MAX_KEY : TNN_GGUF_MAX_NAME;
        if (*len == 0) return bad(r, TNN_ERR_FORMAT, off, "empty %s", what);
        if (*len > max)
            return bad(r, TNN_ERR_FORMAT, off, "%s length %llu over the limit of %llu bytes",
                       what, (ull)*len, (ull)max);
        if (memchr(*s, 0, (size_t)*len))
            return bad(r, TNN_ERR_FORMAT, off, "%s contains a NUL byte", what);
    }
    r->pos += *len;
    return TNN_OK;
}

/* Keeps a string: counted in the first pass, copied (NUL-terminated) into
 * the arena in the second. */
static void keep_str(rd *r, const uint8_t *s, uint64_t len, tnn_gguf_str *out) {
    if (!r->fill) {
        r->arena_bytes += len + 1;
        return;
    }
    memcpy(r->arena_at, s, (size_t)len);
    r->arena_at[len] = '\0';
    out->s = r->arena_at;
    out->len = len;
    r->arena_at += len + 1;
}

static int check_bools(rd *r, const uint8_t *v, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (v[i] > 1)
            return bad(r, TNN_ERR_FORMAT, (uint64_t)(v + i - r->p), "bool value %u is not 0 or 1",
                       v[i]);
    return TNN_OK;
}

/* An array value (after its KV's type field). kv is the top-level KV whose
 * value it is, or NULL for a nested array (checked, not stored). */
static int rd_array(rd *r, int depth, tnn_gguf_kv *kv) {
    uint64_t off = r->pos, n;
    uint32_t et;
    int rc = rd_u32(r, &et, "array element type");
    if (rc) return rc;
    if (et >= TNN_GGUF_VALUE_TYPE_COUNT)
        return bad(r, TNN_ERR_FORMAT, off, "unknown value type %u of array elements", et);
    rc = rd_u64(r, &n, "array length");
    if (rc) return rc;
    uint64_t min = et == TNN_GGUF_STRING ? 8 : et == TNN_GGUF_ARRAY ? 12 : value_sizes[et];
    if (n > left(r) / min)
        return bad(r, TNN_ERR_FORMAT, off + 4,
                   "array length %llu of %s too large for the %llu bytes left", (ull)n,
                   value_type_names[et], (ull)left(r));
    if (kv && r->fill) {
        kv->arr_type = (int32_t)et;
        kv->arr_n = n;
    }
    if (et == TNN_GGUF_ARRAY) {
        if (depth + 1 >= TNN_GGUF_MAX_NEST)
            return bad(r, TNN_ERR_FORMAT, off, "arrays nested deeper than %d levels",
                       TNN_GGUF_MAX_NEST);
        for (uint64_t i = 0; i < n; i++) {
            rc = rd_array(r, depth + 1, NULL);
            if (rc) return rc;
        }
    } else if (et == TNN_GGUF_STRING) {
        if (kv && r->fill) kv->arr_str0 = r->arr_str_at;
        if (kv && !r->fill) r->n_arr_strs += n;
        for (uint64_t i = 0; i < n; i++) {
            const uint8_t *s;
            uint64_t len;
            rc = rd_str(r, STR_VALUE, "string", &s, &len);
            if (rc) return rc;
            if (kv) {
                tnn_gguf_str tmp = {0};
                keep_str(r, s, len, r->fill ? &r->g->arr_strs[r->arr_str_at++] : &tmp);
            }
        }
    } else {
        const uint8_t *v = r->p + r->pos;
        if (et == TNN_GGUF_BOOL && (rc = check_bools(r, v, n))) return rc;
        if (kv && r->fill) kv->arr_data = v;
        r->pos += n * value_sizes[et]; /* <= left: checked above */
    }
    return TNN_OK;
}

static int rd_kv(rd *r, int64_t i) {
    tnn_gguf_kv tmp, *kv = r->fill ? &r->g->kv[i] : &tmp;
    memset(kv, 0, sizeof *kv);
    kv->file_off = r->pos;
    const uint8_t *key;
    uint64_t klen;
    int rc = rd_str(r, STR_KEY, "key", &key, &klen);
    if (rc) return rc;
    keep_str(r, key, klen, &kv->key);
    int kl = (int)(klen < 80 ? klen : 80); /* key bytes shown in messages */

    uint64_t toff = r->pos;
    uint32_t type;
    if ((rc = rd_u32(r, &type, "value type"))) return rc;
    if (type >= TNN_GGUF_VALUE_TYPE_COUNT)
        return bad(r, TNN_ERR_FORMAT, toff, "unknown value type %u of key '%.*s'", type, kl,
                   (const char *)key);
    kv->type = (int32_t)type;

    uint64_t voff = r->pos;
    if (type == TNN_GGUF_STRING) {
        const uint8_t *s;
        uint64_t len;
        if ((rc = rd_str(r, STR_VALUE, "string", &s, &len))) return rc;
        keep_str(r, s, len, &kv->str);
    } else if (type == TNN_GGUF_ARRAY) {
        if ((rc = rd_array(r, 0, kv))) return rc;
    } else {
        if ((rc = need(r, value_sizes[type], value_type_names[type]))) return rc;
        kv->raw = r->p + r->pos;
        if (type == TNN_GGUF_BOOL && (rc = check_bools(r, kv->raw, 1))) return rc;
        r->pos += value_sizes[type];
    }

    static const char align_key[] = "general.alignment";
    if (klen == sizeof align_key - 1 && !memcmp(key, align_key, klen)) {
        if (type != TNN_GGUF_UINT32)
            return bad(r, TNN_ERR_FORMAT, voff, "general.alignment has type %s, not uint32",
                       value_type_names[type]);
        uint32_t a = le32(r->p + voff);
        if (a == 0 || (a & (a - 1)))
            return bad(r, TNN_ERR_FORMAT, voff,
                       "bad alignment %u (must be a non-zero power of two)", a);
        r->alignment = a;
    }
    return TNN_OK;
}

static int rd_tinfo(rd *r, int64_t i) {
    tnn_gguf_tinfo tmp, *t = r->fill ? &r->g->t[i] : &tmp;
    memset(t, 0, sizeof *t);
    t->info_off = r->pos;
    const uint8_t *name;
    uint64_t nlen;
    int rc = rd_str(r, STR_NAME, "tensor name", &name, &nlen);
    if (rc) return rc;
    keep_str(r, name, nlen, &t->name);
    int nl = (int)nlen;
    const char *nm = (const char *)name;

    uint64_t off = r->pos;
    uint32_t nd;
    if ((rc = rd_u32(r, &nd, "tensor n_dims"))) return rc;
    if (nd == 0 || nd > TNN_MAX_DIMS)
        return bad(r, TNN_ERR_FORMAT, off, "tensor '%.*s' has %u dimensions (1 to %d allowed)",
                   nl, nm, nd, TNN_MAX_DIMS);
    t->ndim = (int32_t)nd;
    int64_t nelem = 1;
    for (int d = 0; d < TNN_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        off = r->pos;
        if ((rc = rd_u64(r, &v, "tensor dimension"))) return rc;
        if (v == 0)
            return bad(r, TNN_ERR_FORMAT, off, "tensor '%.*s' dimension %u is zero", nl, nm, d);
        if (v > (uint64_t)INT64_MAX || !tnn__mul_ok(nelem, (int64_t)v, &nelem))
            return bad(r, TNN_ERR_FORMAT, off,
                       "tensor '%.*s' element count overflows at dimension %u = %llu", nl, nm, d,
                       (ull)v);
        t->ne[d] = (int64_t)v;
    }
    t->nelem = nelem;

    off = r->pos;
    uint32_t type;
    if ((rc = rd_u32(r, &type, "tensor type"))) return rc;
    const tnn_ggml_type_info *ti = tnn__ggml_type((int)type);
    if (!ti)
        return bad(r, TNN_ERR_FORMAT, off, "unknown tensor type %u of tensor '%.*s'", type, nl,
                   nm);
    t->type = (int32_t)type;
    if (t->ne[0] % ti->block_elems)
        return bad(r, TNN_ERR_FORMAT, off,
                   "tensor '%.*s' of type %s: first dimension %lld is not a multiple of the "
                   "block size %d",
                   nl, nm, ti->name, (long long)t->ne[0], ti->block_elems);
    int64_t nbytes;
    if (!tnn__mul_ok(nelem / ti->block_elems, ti->block_bytes, &nbytes))
        return bad(r, TNN_ERR_FORMAT, off, "tensor '%.*s' byte size overflows", nl, nm);
    t->nbytes = (uint64_t)nbytes;

    off = r->pos;
    if ((rc = rd_u64(r, &t->offset, "tensor data offset"))) return rc;
    if (t->offset % r->alignment)
        return bad(r, TNN_ERR_FORMAT, off,
                   "tensor '%.*s' data offset %llu is misaligned (alignment %u)", nl, nm,
                   (ull)t->offset, r->alignment);
    return TNN_OK;
}

/* One walk over the KV pairs and tensor infos (after the header). */
static int rd_body(rd *r, int64_t n_kv, int64_t n_tensors) {
    r->pos = HEADER_BYTES;
    r->alignment = TNN_GGUF_DEFAULT_ALIGNMENT;
    for (int64_t i = 0; i < n_kv; i++) {
        int rc = rd_kv(r, i);
        if (rc) return rc;
    }
    if ((uint64_t)n_tensors > left(r) / MIN_TINFO_BYTES)
        return bad(r, TNN_ERR_FORMAT, 8, "tensor count %llu too large for the %llu bytes left",
                   (ull)n_tensors, (ull)left(r));
    for (int64_t i = 0; i < n_tensors; i++) {
        int rc = rd_tinfo(r, i);
        if (rc) return rc;
    }
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Reader: cross checks (second pass, on the stored infos)                  */
/* ------------------------------------------------------------------------ */

static int cmp_kv_key(const void *a, const void *b) {
    return strcmp((*(const tnn_gguf_kv *const *)a)->key.s, (*(const tnn_gguf_kv *const *)b)->key.s);
}
static int cmp_t_name(const void *a, const void *b) {
    return strcmp((*(const tnn_gguf_tinfo *const *)a)->name.s,
                  (*(const tnn_gguf_tinfo *const *)b)->name.s);
}
static int cmp_t_offset(const void *a, const void *b) {
    uint64_t x = (*(const tnn_gguf_tinfo *const *)a)->offset;
    uint64_t y = (*(const tnn_gguf_tinfo *const *)b)->offset;
    return x < y ? -1 : x > y;
}

/* Sorted index of the keys and names; duplicates, data ranges, overlaps. */
static int cross_check(rd *r) {
    tnn_gguf *g = r->g;
    size_t nmax = (size_t)(g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors);
    const void **tmp = malloc((nmax ? nmax : 1) * sizeof *tmp);
    if (!tmp) return TNN_ERR(TNN_ERR_NOMEM, "no memory for %zu entries", nmax);
    int rc = TNN_OK;

    for (int64_t i = 0; i < g->n_kv; i++) tmp[i] = &g->kv[i];
    qsort(tmp, (size_t)g->n_kv, sizeof *tmp, cmp_kv_key);
    for (int64_t i = 0; i < g->n_kv; i++) {
        const tnn_gguf_kv *kv = tmp[i];
        g->kv_sorted[i] = (uint32_t)(kv - g->kv);
        if (i == 0) continue;
        const tnn_gguf_kv *prev = tmp[i - 1];
        if (strcmp(prev->key.s, kv->key.s) == 0) {
            const tnn_gguf_kv *a = prev->file_off < kv->file_off ? prev : kv;
            const tnn_gguf_kv *b = a == prev ? kv : prev;
            rc = bad(r, TNN_ERR_FORMAT, b->file_off, "duplicate key '%.80s' (first at offset %llu)",
                     b->key.s, (ull)a->file_off);
            goto done;
        }
    }

    for (int64_t i = 0; i < g->n_tensors; i++) tmp[i] = &g->t[i];
    qsort(tmp, (size_t)g->n_tensors, sizeof *tmp, cmp_t_name);
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const tnn_gguf_tinfo *t = tmp[i];
        g->t_sorted[i] = (uint32_t)(t - g->t);
        if (i == 0) continue;
        const tnn_gguf_tinfo *prev = tmp[i - 1];
        if (strcmp(prev->name.s, t->name.s) == 0) {
            const tnn_gguf_tinfo *a = prev->info_off < t->info_off ? prev : t;
            const tnn_gguf_tinfo *b = a == prev ? t : prev;
            rc = bad(r, TNN_ERR_FORMAT, b->info_off,
                     "duplicate tensor name '%s' (first at offset %llu)", b->name.s,
                     (ull)a->info_off);
            goto done;
        }
    }

    /* Every data range inside the file. */
    for (int64_t i = 0; i < g->n_tensors; i++) {
        tnn_gguf_tinfo *t = &g->t[i];
        uint64_t room = g->data_off <= g->size ? g->size - g->data_off : 0;
        if (g->data_off > g->size || t->offset > room || t->nbytes > room - t->offset) {
            rc = bad(r, TNN_ERR_FORMAT, t->info_off,
                     "tensor '%s' data (%llu bytes at data offset %llu, data section at %llu) "
                     "extends past the end of the file (%llu bytes)",
                     t->name.s, (ull)t->nbytes, (ull)t->offset, (ull)g->data_off, (ull)g->size);
            goto done;
        }
        t->data = g->base + g->data_off + t->offset;
    }

    /* No two ranges overlap: sorted by offset, each ends before the next. */
    for (int64_t i = 0; i < g->n_tensors; i++) tmp[i] = &g->t[i];
    qsort(tmp, (size_t)g->n_tensors, sizeof *tmp, cmp_t_offset);
    for (int64_t i = 1; i < g->n_tensors; i++) {
        const tnn_gguf_tinfo *a = tmp[i - 1], *b = tmp[i];
        if (a->offset + a->nbytes > b->offset) {
            uint64_t d = g->data_off;
            rc = bad(r, TNN_ERR_FORMAT, b->info_off,
                     "tensor '%s' data [%llu, %llu) overlaps tensor '%s' data [%llu, %llu)",
                     b->name.s, (ull)(d + b->offset), (ull)(d + b->offset + b->nbytes),
                     a->name.s, (ull)(d + a->offset), (ull)(d + a->offset + a->nbytes));
            goto done;
        }
    }
done:
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Reader: entry points                                                     */
/* ------------------------------------------------------------------------ */

static void gguf_free(tnn_gguf *g) {
    if (!g) return;
    free(g->kv);
    free(g->t);
    free(g->kv_sorted);
    free(g->t_sorted);
    free(g->arr_strs);
    free(g->arena);
    free(g);
}

static void *calloc_n(uint64_t n, size_t size) {
    if (n > SIZE_MAX / size) return NULL;
    return calloc(n ? (size_t)n : 1, size);
}

tnn_gguf *tnn__gguf_parse(const void *buf, size_t len, const char *func, const char *what) {
    rd r = {.p = buf, .size = len, .func = func, .what = what};
    if (!buf && len) return TNN_ERR_NULL(TNN_ERR_ARG, "%s: buffer is NULL", what);

    /* Header. */
    if (len < 4)
        return bad(&r, TNN_ERR_FORMAT, 0, "unexpected end of file reading the magic (%zu bytes)",
                   len),
               NULL;
    if (memcmp(r.p, TNN_GGUF_MAGIC, 4) != 0)
        return bad(&r, TNN_ERR_FORMAT, 0, "bad magic %02x %02x %02x %02x (want \"GGUF\")", r.p[0],
                   r.p[1], r.p[2], r.p[3]),
               NULL;
    r.pos = 4;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    if (rd_u32(&r, &version, "the version")) return NULL;
    if (version != 2 && version != 3) {
        uint32_t sw = __builtin_bswap32(version);
        if (sw == 2 || sw == 3)
            bad(&r, TNN_ERR_FORMAT, 4, "unsupported version: big-endian GGUF (version %u)", sw);
        else
            bad(&r, TNN_ERR_FORMAT, 4, "unsupported version %u (tinynn reads versions 2 and 3)",
                version);
        return NULL;
    }
    if (rd_u64(&r, &n_tensors, "the tensor count")) return NULL;
    if (rd_u64(&r, &n_kv, "the KV count")) return NULL;
    if (n_kv > left(&r) / MIN_KV_BYTES || n_kv > UINT32_MAX)
        return bad(&r, TNN_ERR_FORMAT, 16, "KV count %llu too large for the %llu bytes left",
                   (ull)n_kv, (ull)left(&r)),
               NULL;
    if (n_tensors > left(&r) / MIN_TINFO_BYTES || n_tensors > UINT32_MAX)
        return bad(&r, TNN_ERR_FORMAT, 8, "tensor count %llu too large for the %llu bytes left",
                   (ull)n_tensors, (ull)left(&r)),
               NULL;

    /* First pass: check everything that needs no memory, count strings. */
    if (rd_body(&r, (int64_t)n_kv, (int64_t)n_tensors)) return NULL;

    /* Second pass: exact allocations (bounded by the file's real content). */
    tnn_gguf *g = calloc(1, sizeof *g);
    if (!g) return TNN_ERR_NULL(TNN_ERR_NOMEM, "no memory for a GGUF handle");
    g->base = r.p;
    g->size = len;
    g->version = version;
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->kv = calloc_n(n_kv, sizeof *g->kv);
    g->t = calloc_n(n_tensors, sizeof *g->t);
    g->kv_sorted = calloc_n(n_kv, sizeof *g->kv_sorted);
    g->t_sorted = calloc_n(n_tensors, sizeof *g->t_sorted);
    g->arr_strs = calloc_n(r.n_arr_strs, sizeof *g->arr_strs);
    g->arena = calloc_n(r.arena_bytes, 1);
    if (!g->kv || !g->t || !g->kv_sorted || !g->t_sorted || !g->arr_strs || !g->arena) {
        gguf_free(g);
        return TNN_ERR_NULL(TNN_ERR_NOMEM, "%s: no memory for %llu keys, %llu tensors", what,
                            (ull)n_kv, (ull)n_tensors);
    }
    r.fill = true;
    r.g = g;
    r.arena_at = g->arena;
    if (rd_body(&r, g->n_kv, g->n_tensors)) { /* cannot fail: same bytes, same checks */
        gguf_free(g);
        return NULL;
    }
    g->alignment = r.alignment;
    g->data_off = r.pos + (r.alignment - r.pos % r.alignment) % r.alignment;
    if (cross_check(&r)) {
        gguf_free(g);
        return NULL;
    }
    return g;
}

tnn_gguf *tnn_gguf_open(const char *path) {
    if (!path) return TNN_ERR_NULL(TNN_ERR_ARG, "path is NULL");
    /* O_NONBLOCK: a FIFO must not block the open; a regular file ignores it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return TNN_ERR_NULL(TNN_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return TNN_ERR_NULL(TNN_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return TNN_ERR_NULL(TNN_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return TNN_ERR_NULL(TNN_ERR_IO, "%s: file too large to map", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return TNN_ERR_NULL(TNN_ERR_IO, "%s: cannot map %zu bytes: %s", path, size,
                                strerror(e));
        }
    }
    close(fd); /* the mapping keeps the file */
    tnn_gguf *g = tnn__gguf_parse(map, size, "tnn_gguf_open", path);
    if (!g) {
        if (map) munmap(map, size);
        return NULL;
    }
    g->owner = 1;
    return g;
}

tnn_gguf *tnn_gguf_open_memory(const void *buf, size_t len) {
    if (!buf && len) return TNN_ERR_NULL(TNN_ERR_ARG, "buf is NULL with len %zu", len);
    void *copy = NULL;
    if (posix_memalign(&copy, 4096, len ? len : 1) != 0)
        return TNN_ERR_NULL(TNN_ERR_NOMEM, "no memory for a copy of %zu bytes", len);
    if (len) memcpy(copy, buf, len);
    tnn_gguf *g = tnn__gguf_parse(copy, len, "tnn_gguf_open_memory", "memory");
    if (!g) {
        free(copy);
        return NULL;
    }
    g->owner = 2;
    return g;
}

void tnn_gguf_close(tnn_gguf *g) {
    if (!g) return;
    if (g->owner == 1 && g->size) munmap((void *)g->base, (size_t)g->size);
    if (g->owner == 2) free((void *)g->base);
    gguf_free(g);
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                */
/* ------------------------------------------------------------------------ */

const tnn_gguf_kv *tnn__gguf_kv(const tnn_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    int64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const tnn_gguf_kv *kv = &g->kv[g->kv_sorted[mid]];
        int c = strcmp(kv->key.s, key);
        if (c == 0) return kv;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const tnn_gguf_tinfo *tnn__gguf_tensor(const tnn_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    int64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const tnn_gguf_tinfo *t = &g->t[g->t_sorted[mid]];
        int c = strcmp(t->name.s, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

int tnn_gguf_version(const tnn_gguf *g) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    return (int)g->version;
}

int64_t tnn_gguf_alignment(const tnn_gguf *g) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    return g->alignment;
}

int64_t tnn_gguf_data_offset(const tnn_gguf *g) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    return (int64_t)g->data_off;
}

int64_t tnn_gguf_n_kv(const tnn_gguf *g) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    return g->n_kv;
}

/* The KV of index i, or NULL with the error set (naming `func`). */
static const tnn_gguf_kv *kv_at(const tnn_gguf *g, int64_t i, const char *func) {
    if (!g) return tnn__error(TNN_ERR_ARG, func, "g is NULL"), NULL;
    if (i < 0 || i >= g->n_kv)
        return tnn__error(TNN_ERR_RANGE, func, "index %lld out of range [0, %lld)", (long long)i,
                          (long long)g->n_kv),
               NULL;
    return &g->kv[i];
}

/* The KV of `key`, or NULL with the error set (naming `func`). */
static const tnn_gguf_kv *kv_find(const tnn_gguf *g, const char *key, const char *func) {
    if (!g) return tnn__error(TNN_ERR_ARG, func, "g is NULL"), NULL;
    if (!key) return tnn__error(TNN_ERR_ARG, func, "key is NULL"), NULL;
    const tnn_gguf_kv *kv = tnn__gguf_kv(g, key);
    if (!kv) return tnn__error(TNN_ERR_RANGE, func, "key '%.200s' not found", key), NULL;
    return kv;
}

static int wrong_type(const tnn_gguf_kv *kv, const char *want, const char *func) {
    const char *have = value_type_names[kv->type];
    if (kv->type == TNN_GGUF_ARRAY)
        return tnn__error(TNN_ERR_FORMAT, func, "key '%.200s' has type array of %s, not %s",
                          kv->key.s, value_type_names[kv->arr_type], want);
    return tnn__error(TNN_ERR_FORMAT, func, "key '%.200s' has type %s, not %s", kv->key.s, have,
                      want);
}

const char *tnn_gguf_key(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_kv *kv = kv_at(g, i, __func__);
    return kv ? kv->key.s : NULL;
}

int64_t tnn_gguf_find_key(const tnn_gguf *g, const char *key) {
    const tnn_gguf_kv *kv = kv_find(g, key, __func__);
    return kv ? kv - g->kv : tnn_last_status();
}

int tnn_gguf_kv_type(const tnn_gguf *g, const char *key) {
    const tnn_gguf_kv *kv = kv_find(g, key, __func__);
    return kv ? kv->type : tnn_last_status();
}

int tnn_gguf_kv_type_at(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_kv *kv = kv_at(g, i, __func__);
    return kv ? kv->type : tnn_last_status();
}

/* The KV of `key` with exactly type `type`, or NULL with the error set. */
static const tnn_gguf_kv *kv_typed(const tnn_gguf *g, const char *key, int type, void *out,
                                   const char *func) {
    if (!out) return tnn__error(TNN_ERR_ARG, func, "out is NULL"), NULL;
    const tnn_gguf_kv *kv = kv_find(g, key, func);
    if (!kv) return NULL;
    if (kv->type != type) return wrong_type(kv, value_type_names[type], func), NULL;
    return kv;
}

int tnn_gguf_get_u32(const tnn_gguf *g, const char *key, uint32_t *out) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_UINT32, out, __func__);
    if (!kv) return tnn_last_status();
    *out = le32(kv->raw);
    return TNN_OK;
}

int tnn_gguf_get_i32(const tnn_gguf *g, const char *key, int32_t *out) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_INT32, out, __func__);
    if (!kv) return tnn_last_status();
    *out = (int32_t)le32(kv->raw);
    return TNN_OK;
}

int tnn_gguf_get_u64(const tnn_gguf *g, const char *key, uint64_t *out) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_UINT64, out, __func__);
    if (!kv) return tnn_last_status();
    *out = le64(kv->raw);
    return TNN_OK;
}

int tnn_gguf_get_f32(const tnn_gguf *g, const char *key, float *out) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_FLOAT32, out, __func__);
    if (!kv) return tnn_last_status();
    uint32_t bits = le32(kv->raw);
    memcpy(out, &bits, sizeof bits);
    return TNN_OK;
}

int tnn_gguf_get_bool(const tnn_gguf *g, const char *key, int *out) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_BOOL, out, __func__);
    if (!kv) return tnn_last_status();
    *out = kv->raw[0];
    return TNN_OK;
}

int tnn_gguf_get_str(const tnn_gguf *g, const char *key, const char **out, size_t *len) {
    const tnn_gguf_kv *kv = kv_typed(g, key, TNN_GGUF_STRING, out, __func__);
    if (!kv) return tnn_last_status();
    *out = kv->str.s;
    if (len) *len = (size_t)kv->str.len;
    return TNN_OK;
}

static bool is_int_type(int t) {
    return t == TNN_GGUF_UINT8 || t == TNN_GGUF_INT8 || t == TNN_GGUF_UINT16 ||
           t == TNN_GGUF_INT16 || t == TNN_GGUF_UINT32 || t == TNN_GGUF_INT32 ||
           t == TNN_GGUF_UINT64 || t == TNN_GGUF_INT64;
}

/* An integer (or bool) value of type t at p, widened; false if a uint64
 * does not fit int64. */
static bool decode_int(int t, const uint8_t *p, int64_t *out) {
    switch (t) {
    case TNN_GGUF_UINT8:
    case TNN_GGUF_BOOL: *out = p[0]; return true;
    case TNN_GGUF_INT8: *out = (int8_t)p[0]; return true;
    case TNN_GGUF_UINT16: *out = le16(p); return true;
    case TNN_GGUF_INT16: *out = (int16_t)le16(p); return true;
    case TNN_GGUF_UINT32: *out = le32(p); return true;
    case TNN_GGUF_INT32: *out = (int32_t)le32(p); return true;
    case TNN_GGUF_INT64: *out = (int64_t)le64(p); return true;
    case TNN_GGUF_UINT64: {
        uint64_t v = le64(p);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    default: return false;
    }
}

static double decode_float(int t, const uint8_t *p) {
    if (t == TNN_GGUF_FLOAT32) {
        uint32_t bits = le32(p);
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
    uint64_t bits = le64(p);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

int tnn_gguf_get_i64(const tnn_gguf *g, const char *key, int64_t *out) {
    if (!out) return TNN_ERR(TNN_ERR_ARG, "out is NULL");
    const tnn_gguf_kv *kv = kv_find(g, key, __func__);
    if (!kv) return tnn_last_status();
    if (!is_int_type(kv->type)) return wrong_type(kv, "an integer", __func__);
    if (!decode_int(kv->type, kv->raw, out))
        return TNN_ERR(TNN_ERR_RANGE, "key '%.200s': uint64 value %llu does not fit int64",
                       kv->key.s, (ull)le64(kv->raw));
    return TNN_OK;
}

int tnn_gguf_get_f64(const tnn_gguf *g, const char *key, double *out) {
    if (!out) return TNN_ERR(TNN_ERR_ARG, "out is NULL");
    const tnn_gguf_kv *kv = kv_find(g, key, __func__);
    if (!kv) return tnn_last_status();
    if (kv->type != TNN_GGUF_FLOAT32 && kv->type != TNN_GGUF_FLOAT64)
        return wrong_type(kv, "float32 or float64", __func__);
    *out = decode_float(kv->type, kv->raw);
    return TNN_OK;
}

/* The array KV of `key`, or NULL with the error set. */
static const tnn_gguf_kv *arr_find(const tnn_gguf *g, const char *key, const char *func) {
    const tnn_gguf_kv *kv = kv_find(g, key, func);
    if (kv && kv->type != TNN_GGUF_ARRAY) return wrong_type(kv, "array", func), NULL;
    return kv;
}

/* Element i of the array of `key` whose element type passes `ok`. */
static const tnn_gguf_kv *arr_elem(const tnn_gguf *g, const char *key, int64_t i,
                                   bool (*ok)(int), const char *want, const void *out,
                                   const char *func) {
    if (!out) return tnn__error(TNN_ERR_ARG, func, "out is NULL"), NULL;
    const tnn_gguf_kv *kv = arr_find(g, key, func);
    if (!kv) return NULL;
    if (!ok(kv->arr_type)) {
        tnn__error(TNN_ERR_FORMAT, func, "key '%.200s' is an array of %s, not of %s", kv->key.s,
                   value_type_names[kv->arr_type], want);
        return NULL;
    }
    if (i < 0 || (uint64_t)i >= kv->arr_n) {
        tnn__error(TNN_ERR_RANGE, func, "key '%.200s': index %lld out of range [0, %llu)",
                   kv->key.s, (long long)i, (ull)kv->arr_n);
        return NULL;
    }
    return kv;
}

int tnn_gguf_arr_type(const tnn_gguf *g, const char *key) {
    const tnn_gguf_kv *kv = arr_find(g, key, __func__);
    return kv ? kv->arr_type : tnn_last_status();
}

int64_t tnn_gguf_arr_len(const tnn_gguf *g, const char *key) {
    const tnn_gguf_kv *kv = arr_find(g, key, __func__);
    return kv ? (int64_t)kv->arr_n : tnn_last_status();
}

static bool is_str_type(int t) { return t == TNN_GGUF_STRING; }
static bool is_int_or_bool(int t) { return is_int_type(t) || t == TNN_GGUF_BOOL; }
static bool is_float_type(int t) { return t == TNN_GGUF_FLOAT32 || t == TNN_GGUF_FLOAT64; }
static bool is_numeric(int t) { return is_int_or_bool(t) || is_float_type(t); }

int tnn_gguf_get_arr_str(const tnn_gguf *g, const char *key, int64_t i, const char **out,
                         size_t *len) {
    const tnn_gguf_kv *kv = arr_elem(g, key, i, is_str_type, "string", out, __func__);
    if (!kv) return tnn_last_status();
    const tnn_gguf_str *s = &g->arr_strs[kv->arr_str0 + (uint64_t)i];
    *out = s->s;
    if (len) *len = (size_t)s->len;
    return TNN_OK;
}

int tnn_gguf_get_arr_i64(const tnn_gguf *g, const char *key, int64_t i, int64_t *out) {
    const tnn_gguf_kv *kv = arr_elem(g, key, i, is_int_or_bool, "integers", out, __func__);
    if (!kv) return tnn_last_status();
    const uint8_t *p = kv->arr_data + (uint64_t)i * value_sizes[kv->arr_type];
    if (!decode_int(kv->arr_type, p, out))
        return TNN_ERR(TNN_ERR_RANGE, "key '%.200s'[%lld]: uint64 value %llu does not fit int64",
                       kv->key.s, (long long)i, (ull)le64(p));
    return TNN_OK;
}

int tnn_gguf_get_arr_f64(const tnn_gguf *g, const char *key, int64_t i, double *out) {
    const tnn_gguf_kv *kv = arr_elem(g, key, i, is_float_type, "floats", out, __func__);
    if (!kv) return tnn_last_status();
    *out = decode_float(kv->arr_type, kv->arr_data + (uint64_t)i * value_sizes[kv->arr_type]);
    return TNN_OK;
}

int tnn_gguf_get_arr_data(const tnn_gguf *g, const char *key, const void **data,
                          size_t *nbytes) {
    if (!data || !nbytes) return TNN_ERR(TNN_ERR_ARG, "data or nbytes is NULL");
    const tnn_gguf_kv *kv = arr_find(g, key, __func__);
    if (!kv) return tnn_last_status();
    if (!is_numeric(kv->arr_type))
        return TNN_ERR(TNN_ERR_FORMAT, "key '%.200s' is an array of %s, not of numbers",
                       kv->key.s, value_type_names[kv->arr_type]);
    *data = kv->arr_data;
    *nbytes = (size_t)(kv->arr_n * value_sizes[kv->arr_type]);
    return TNN_OK;
}

int64_t tnn_gguf_n_tensors(const tnn_gguf *g) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    return g->n_tensors;
}

int64_t tnn_gguf_find_tensor(const tnn_gguf *g, const char *name) {
    if (!g) return TNN_ERR(TNN_ERR_ARG, "g is NULL");
    if (!name) return TNN_ERR(TNN_ERR_ARG, "name is NULL");
    const tnn_gguf_tinfo *t = tnn__gguf_tensor(g, name);
    if (!t) return TNN_ERR(TNN_ERR_RANGE, "tensor '%.200s' not found", name);
    return t - g->t;
}

/* Tensor i, or NULL with the error set (naming `func`). */
static const tnn_gguf_tinfo *t_at(const tnn_gguf *g, int64_t i, const char *func) {
    if (!g) return tnn__error(TNN_ERR_ARG, func, "g is NULL"), NULL;
    if (i < 0 || i >= g->n_tensors)
        return tnn__error(TNN_ERR_RANGE, func, "tensor index %lld out of range [0, %lld)",
                          (long long)i, (long long)g->n_tensors),
               NULL;
    return &g->t[i];
}

const char *tnn_gguf_tensor_name(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? t->name.s : NULL;
}

int tnn_gguf_tensor_type(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? t->type : tnn_last_status();
}

int tnn_gguf_tensor_ndim(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? t->ndim : tnn_last_status();
}

int tnn_gguf_tensor_dims(const tnn_gguf *g, int64_t i, int64_t ne[4]) {
    if (!ne) return TNN_ERR(TNN_ERR_ARG, "ne is NULL");
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    if (!t) return tnn_last_status();
    for (int d = 0; d < TNN_MAX_DIMS; d++) ne[d] = t->ne[d];
    return t->ndim;
}

int tnn_gguf_tensor_shape(const tnn_gguf *g, int64_t i, int64_t shape[4]) {
    if (!shape) return TNN_ERR(TNN_ERR_ARG, "shape is NULL");
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    if (!t) return tnn_last_status();
    for (int d = 0; d < t->ndim; d++) shape[d] = t->ne[t->ndim - 1 - d];
    return t->ndim;
}

int64_t tnn_gguf_tensor_nelements(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? t->nelem : tnn_last_status();
}

int64_t tnn_gguf_tensor_nbytes(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? (int64_t)t->nbytes : tnn_last_status();
}

int64_t tnn_gguf_tensor_offset(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? (int64_t)(g->data_off + t->offset) : tnn_last_status();
}

const void *tnn_gguf_tensor_data(const tnn_gguf *g, int64_t i) {
    const tnn_gguf_tinfo *t = t_at(g, i, __func__);
    return t ? t->data : NULL;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
} wbuf;

typedef struct wtensor {
    char name[TNN_GGUF_MAX_NAME];
    int32_t type, ndim;
    int64_t ne[TNN_MAX_DIMS]; /* GGUF order */
    uint64_t nbytes;
    void *copy;       /* owned copy, or NULL when borrowed */
    const void *data; /* copy or the caller's bytes; NULL: made by fill */
    tnn__gguf_fill_fn fill;
    void *fill_ctx;
} wtensor;

struct tnn_gguf_writer {
    wbuf kvs;       /* serialized KV pairs, in order */
    char **keys;    /* for duplicate checks */
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
};

/* Room for `extra` more bytes; false (nothing changed) if memory runs out. */
static bool wb_reserve(wbuf *b, size_t extra) {
    if (extra <= b->cap - b->n) return true;
    if (extra > SIZE_MAX / 2 - b->n) return false;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}
static void wb_put(wbuf *b, const void *src, size_t n) {
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void wb_u32(wbuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    wb_put(b, x, 4);
}
static void wb_u64(wbuf *b, uint64_t v) {
    wb_u32(b, (uint32_t)v);
    wb_u32(b, (uint32_t)(v >> 32));
}
/* One value of a numeric type from native memory, written little-endian. */
static void wb_native(wbuf *b, const void *src, size_t size) {
    uint64_t v = 0;
    switch (size) {
    case 1: { uint8_t x; memcpy(&x, src, 1); v = x; break; }
    case 2: { uint16_t x; memcpy(&x, src, 2); v = x; break; }
    case 4: { uint32_t x; memcpy(&x, src, 4); v = x; break; }
    default: memcpy(&v, src, 8); break;
    }
    for (size_t i = 0; i < size; i++) {
        uint8_t byte = (uint8_t)(v >> (8 * i));
        wb_put(b, &byte, 1);
    }
}

tnn_gguf_writer *tnn_gguf_writer_new(void) {
    tnn_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return TNN_ERR_NULL(TNN_ERR_NOMEM, "no memory for a GGUF writer");
    w->alignment = TNN_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void tnn_gguf_writer_free(tnn_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_t; i++) free(w->t[i].copy);
    free(w->t);
    free(w->kvs.p);
    free(w);
}

/* Checks a new key of value type `type` (element type `et` for arrays) and
 * reserves `value_bytes` (after the key and type) plus a keys slot. On
 * success the caller writes the value with add_key_commit first. */
static int add_key_begin(tnn_gguf_writer *w, const char *key, int type, size_t value_bytes,
                         const char *func) {
    if (!w) return tnn__error(TNN_ERR_ARG, func, "w is NULL");
    if (!key) return tnn__error(TNN_ERR_ARG, func, "key is NULL");
    size_t klen = strlen(key);
    if (klen == 0) return tnn__error(TNN_ERR_ARG, func, "empty key");
    if (klen > TNN_GGUF_MAX_KEY)
        return tnn__error(TNN_ERR_ARG, func, "key of %zu bytes (at most %u)", klen,
                          TNN_GGUF_MAX_KEY);
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return tnn__error(TNN_ERR_ARG, func, "duplicate key '%.200s'", key);
    if (strcmp(key, "general.alignment") == 0 && type != TNN_GGUF_UINT32)
        return tnn__error(TNN_ERR_ARG, func, "general.alignment must be a uint32");
    if (value_bytes > SIZE_MAX - 64 - klen)
        return tnn__error(TNN_ERR_OVERFLOW, func, "value of key '%.200s' too large", key);
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        char **k = realloc(w->keys, cap * sizeof *k);
        if (!k) return tnn__error(TNN_ERR_NOMEM, func, "no memory for keys");
        w->keys = k;
        w->cap_kv = cap;
    }
    if (!wb_reserve(&w->kvs, 8 + klen + 4 + value_bytes))
        return tnn__error(TNN_ERR_NOMEM, func, "no memory for key '%.200s'", key);
    char *copy = malloc(klen + 1);
    if (!copy) return tnn__error(TNN_ERR_NOMEM, func, "no memory for key '%.200s'", key);
    memcpy(copy, key, klen + 1);
    w->keys[w->n_kv++] = copy;
    wb_u64(&w->kvs, klen);
    wb_put(&w->kvs, key, klen);
    wb_u32(&w->kvs, (uint32_t)type);
    return TNN_OK;
}

static int add_scalar(tnn_gguf_writer *w, const char *key, int type, const void *v,
                      const char *func) {
    int rc = add_key_begin(w, key, type, value_sizes[type], func);
    if (rc) return rc;
    wb_native(&w->kvs, v, value_sizes[type]);
    return TNN_OK;
}

int tnn_gguf_writer_add_u8(tnn_gguf_writer *w, const char *key, uint8_t v) {
    return add_scalar(w, key, TNN_GGUF_UINT8, &v, __func__);
}
int tnn_gguf_writer_add_i8(tnn_gguf_writer *w, const char *key, int8_t v) {
    return add_scalar(w, key, TNN_GGUF_INT8, &v, __func__);
}
int tnn_gguf_writer_add_u16(tnn_gguf_writer *w, const char *key, uint16_t v) {
    return add_scalar(w, key, TNN_GGUF_UINT16, &v, __func__);
}
int tnn_gguf_writer_add_i16(tnn_gguf_writer *w, const char *key, int16_t v) {
    return add_scalar(w, key, TNN_GGUF_INT16, &v, __func__);
}
int tnn_gguf_writer_add_u32(tnn_gguf_writer *w, const char *key, uint32_t v) {
    if (w && key && strcmp(key, "general.alignment") == 0) {
        if (v == 0 || (v & (v - 1)))
            return TNN_ERR(TNN_ERR_ARG, "bad alignment %u (must be a non-zero power of two)", v);
        int rc = add_scalar(w, key, TNN_GGUF_UINT32, &v, __func__);
        if (rc == TNN_OK) w->alignment = v;
        return rc;
    }
    return add_scalar(w, key, TNN_GGUF_UINT32, &v, __func__);
}
int tnn_gguf_writer_add_i32(tnn_gguf_writer *w, const char *key, int32_t v) {
    return add_scalar(w, key, TNN_GGUF_INT32, &v, __func__);
}
int tnn_gguf_writer_add_u64(tnn_gguf_writer *w, const char *key, uint64_t v) {
    return add_scalar(w, key, TNN_GGUF_UINT64, &v, __func__);
}
int tnn_gguf_writer_add_i64(tnn_gguf_writer *w, const char *key, int64_t v) {
    return add_scalar(w, key, TNN_GGUF_INT64, &v, __func__);
}
int tnn_gguf_writer_add_f32(tnn_gguf_writer *w, const char *key, float v) {
    return add_scalar(w, key, TNN_GGUF_FLOAT32, &v, __func__);
}
int tnn_gguf_writer_add_f64(tnn_gguf_writer *w, const char *key, double v) {
    return add_scalar(w, key, TNN_GGUF_FLOAT64, &v, __func__);
}
int tnn_gguf_writer_add_bool(tnn_gguf_writer *w, const char *key, int v) {
    if (v != 0 && v != 1) return TNN_ERR(TNN_ERR_ARG, "bool value %d is not 0 or 1", v);
    uint8_t b = (uint8_t)v;
    return add_scalar(w, key, TNN_GGUF_BOOL, &b, __func__);
}

int tnn_gguf_writer_add_str(tnn_gguf_writer *w, const char *key, const char *v) {
    if (!v) return TNN_ERR(TNN_ERR_ARG, "value of key '%.200s' is NULL", key ? key : "(null)");
    size_t len = strlen(v);
    int rc = add_key_begin(w, key, TNN_GGUF_STRING, 8 + len, __func__);
    if (rc) return rc;
    wb_u64(&w->kvs, len);
    wb_put(&w->kvs, v, len);
    return TNN_OK;
}

int tnn_gguf_writer_add_arr(tnn_gguf_writer *w, const char *key, int elem_type,
                            const void *data, size_t n) {
    if (elem_type < 0 || elem_type >= TNN_GGUF_VALUE_TYPE_COUNT ||
        elem_type == TNN_GGUF_STRING || elem_type == TNN_GGUF_ARRAY)
        return TNN_ERR(TNN_ERR_ARG,
                       "elem_type %d is not a numeric or bool type (strings: "
                       "tnn_gguf_writer_add_arr_str)",
                       elem_type);
    if (!data && n) return TNN_ERR(TNN_ERR_ARG, "data is NULL with n = %zu", n);
    size_t esz = value_sizes[elem_type], bytes;
    if (!tnn__size_mul_ok(n, esz, &bytes) || bytes > SIZE_MAX - 12)
        return TNN_ERR(TNN_ERR_OVERFLOW, "array of %zu %s overflows", n,
                       value_type_names[elem_type]);
    if (elem_type == TNN_GGUF_BOOL)
        for (size_t i = 0; i < n; i++)
            if (((const uint8_t *)data)[i] > 1)
                return TNN_ERR(TNN_ERR_ARG, "bool element %zu is %u, not 0 or 1", i,
                               ((const uint8_t *)data)[i]);
    int rc = add_key_begin(w, key, TNN_GGUF_ARRAY, 12 + bytes, __func__);
    if (rc) return rc;
    wb_u32(&w->kvs, (uint32_t)elem_type);
    wb_u64(&w->kvs, n);
    for (size_t i = 0; i < n; i++) wb_native(&w->kvs, (const uint8_t *)data + i * esz, esz);
    return TNN_OK;
}

int tnn_gguf_writer_add_arr_str(tnn_gguf_writer *w, const char *key, const char *const *strs,
                                size_t n) {
    if (!strs && n) return TNN_ERR(TNN_ERR_ARG, "strs is NULL with n = %zu", n);
    size_t bytes = 12;
    for (size_t i = 0; i < n; i++) {
        if (!strs[i]) return TNN_ERR(TNN_ERR_ARG, "strs[%zu] is NULL", i);
        size_t len = strlen(strs[i]);
        if (len > SIZE_MAX - 8 - bytes)
            return TNN_ERR(TNN_ERR_OVERFLOW, "array of %zu strings overflows", n);
        bytes += 8 + len;
    }
    int rc = add_key_begin(w, key, TNN_GGUF_ARRAY, bytes, __func__);
    if (rc) return rc;
    wb_u32(&w->kvs, TNN_GGUF_STRING);
    wb_u64(&w->kvs, n);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(strs[i]);
        wb_u64(&w->kvs, len);
        wb_put(&w->kvs, strs[i], len);
    }
    return TNN_OK;
}

static int add_tensor(tnn_gguf_writer *w, const char *name, int type, int ndim,
                      const int64_t *shape, const void *data, size_t nbytes, bool copy,
                      tnn__gguf_fill_fn fill, void *fill_ctx, const char *func) {
    if (!w) return tnn__error(TNN_ERR_ARG, func, "w is NULL");
    if (!name) return tnn__error(TNN_ERR_ARG, func, "name is NULL");
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen >= TNN_GGUF_MAX_NAME)
        return tnn__error(TNN_ERR_ARG, func, "tensor name '%.80s' of %zu bytes (1 to %u)", name,
                          nlen, TNN_GGUF_MAX_NAME - 1);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return tnn__error(TNN_ERR_ARG, func, "duplicate tensor name '%s'", name);
    const tnn_ggml_type_info *ti = tnn__ggml_type(type);
    if (!ti) return tnn__error(TNN_ERR_ARG, func, "tensor '%s': unknown type %d", name, type);
    if (ndim < 1 || ndim > TNN_MAX_DIMS)
        return tnn__error(TNN_ERR_ARG, func, "tensor '%s': ndim %d (1 to %d)", name, ndim,
                          TNN_MAX_DIMS);
    if (!shape) return tnn__error(TNN_ERR_ARG, func, "tensor '%s': shape is NULL", name);
    if (!data && !fill) return tnn__error(TNN_ERR_ARG, func, "tensor '%s': data is NULL", name);
    wtensor t = {.type = type, .ndim = ndim, .fill = fill, .fill_ctx = fill_ctx};
    memcpy(t.name, name, nlen + 1);
    int64_t nelem = 1;
    for (int d = 0; d < TNN_MAX_DIMS; d++) t.ne[d] = 1;
    for (int d = 0; d < ndim; d++) {
        int64_t v = shape[ndim - 1 - d];
        if (v <= 0)
            return tnn__error(TNN_ERR_SHAPE, func, "tensor '%s': shape[%d] = %lld (must be > 0)",
                              name, ndim - 1 - d, (long long)v);
        if (!tnn__mul_ok(nelem, v, &nelem))
            return tnn__error(TNN_ERR_OVERFLOW, func, "tensor '%s': element count overflows",
                              name);
        t.ne[d] = v;
    }
    if (t.ne[0] % ti->block_elems)
        return tnn__error(TNN_ERR_SHAPE, func,
                          "tensor '%s' of type %s: last dimension %lld is not a multiple of the "
                          "block size %d",
                          name, ti->name, (long long)t.ne[0], ti->block_elems);
    int64_t want;
    if (!tnn__mul_ok(nelem / ti->block_elems, ti->block_bytes, &want) ||
        (uint64_t)want > SIZE_MAX)
        return tnn__error(TNN_ERR_OVERFLOW, func, "tensor '%s': byte size overflows", name);
    if ((uint64_t)want != nbytes)
        return tnn__error(TNN_ERR_SHAPE, func,
                          "tensor '%s' of type %s: nbytes %zu, the shape needs %lld", name,
                          ti->name, nbytes, (long long)want);
    t.nbytes = nbytes;
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 16;
        wtensor *p = realloc(w->t, cap * sizeof *p);
        if (!p) return tnn__error(TNN_ERR_NOMEM, func, "no memory for tensors");
        w->t = p;
        w->cap_t = cap;
    }
    t.data = data;
    if (copy && data) {
        t.copy = malloc(nbytes);
        if (!t.copy)
            return tnn__error(TNN_ERR_NOMEM, func, "no memory for %zu bytes of tensor '%s'",
                              nbytes, name);
        memcpy(t.copy, data, nbytes);
        t.data = t.copy;
    }
    w->t[w->n_t++] = t;
    return TNN_OK;
}

int tnn_gguf_writer_add_tensor(tnn_gguf_writer *w, const char *name, int type, int ndim,
                               const int64_t *shape, const void *data, size_t nbytes) {
    return add_tensor(w, name, type, ndim, shape, data, nbytes, true, NULL, NULL, __func__);
}

int tnn__gguf_writer_add_tensor_ref(tnn_gguf_writer *w, const char *name, int type, int ndim,
                                    const int64_t *shape, const void *data, size_t nbytes) {
    return add_tensor(w, name, type, ndim, shape, data, nbytes, false, NULL, NULL,
                      "tnn_gguf_writer_add_tensor");
}

int tnn__gguf_writer_add_tensor_fill(tnn_gguf_writer *w, const char *name, int type, int ndim,
                                     const int64_t *shape, size_t nbytes, tnn__gguf_fill_fn fill,
                                     void *ctx) {
    if (!fill) return TNN_ERR(TNN_ERR_ARG, "tensor '%s': fill is NULL", name ? name : "?");
    return add_tensor(w, name, type, ndim, shape, NULL, nbytes, false, fill, ctx,
                      "tnn_gguf_writer_add_tensor");
}

/* The bytes of tensor t: its data, or fill()'s into *buf (grown as needed,
 * kept for the next one). NULL with *rc set (and the message) on failure. */
static const void *tensor_bytes(const wtensor *t, void **buf, size_t *cap, int *rc) {
    if (!t->fill) return t->data;
    if (t->nbytes > *cap) {
        void *p = realloc(*buf, (size_t)t->nbytes);
        if (!p) {
            *rc = TNN_ERR(TNN_ERR_NOMEM, "no memory for %llu bytes of tensor '%s'",
                          (unsigned long long)t->nbytes, t->name);
            return NULL;
        }
        *buf = p;
        *cap = (size_t)t->nbytes;
    }
    *rc = t->fill(t->fill_ctx, *buf);
    return *rc == TNN_OK ? *buf : NULL;
}

/* Writes all n bytes (retrying short writes and EINTR). */
static bool write_all(int fd, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        ssize_t k = write(fd, b, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        b += k;
        n -= (size_t)k;
    }
    return true;
}

static bool write_zeros(int fd, uint64_t n) {
    static const uint8_t zeros[4096];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (!write_all(fd, zeros, k)) return false;
        n -= k;
    }
    return true;
}

static uint64_t pad_to(uint64_t x, uint32_t a) { return (a - x % a) % a; }

/* fsync of the directory holding path, so the rename itself is durable.
 * Best effort: some file systems refuse it. */
static void sync_dir(const char *path) {
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (!slash) {
        strcpy(dir, ".");
    } else {
        size_t n = (size_t)(slash - path);
        if (n == 0) n = 1; /* "/file" */
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    if (fsync(fd) != 0) tnn__log(TNN_LOG_DEBUG, "fsync of directory %s: %s", dir, strerror(errno));
    close(fd);
}

int tnn_gguf_writer_write(tnn_gguf_writer *w, const char *path) {
    if (!w) return TNN_ERR(TNN_ERR_ARG, "w is NULL");
    if (!path || !*path) return TNN_ERR(TNN_ERR_ARG, "path is NULL or empty");

    /* Header, KV pairs and tensor infos in memory; data offsets assigned. */
    wbuf meta = {0};
    size_t info_bytes = 0;
    for (size_t i = 0; i < w->n_t; i++)
        info_bytes += 8 + strlen(w->t[i].name) + 4 + 8 * (size_t)w->t[i].ndim + 4 + 8;
    if (!wb_reserve(&meta, HEADER_BYTES + w->kvs.n + info_bytes))
        return TNN_ERR(TNN_ERR_NOMEM, "no memory for the metadata of %s", path);
    wb_put(&meta, TNN_GGUF_MAGIC, 4);
    wb_u32(&meta, 3);
    wb_u64(&meta, w->n_t);
    wb_u64(&meta, w->n_kv);
    wb_put(&meta, w->kvs.p, w->kvs.n);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        size_t nlen = strlen(t->name);
        wb_u64(&meta, nlen);
        wb_put(&meta, t->name, nlen);
        wb_u32(&meta, (uint32_t)t->ndim);
        for (int d = 0; d < t->ndim; d++) wb_u64(&meta, (uint64_t)t->ne[d]);
        wb_u32(&meta, (uint32_t)t->type);
        wb_u64(&meta, off);
        uint64_t end = off + t->nbytes;
        if (end < off || end + pad_to(end, w->alignment) < end) {
            free(meta.p);
            return TNN_ERR(TNN_ERR_OVERFLOW, "%s: data section size overflows", path);
        }
        off = end + pad_to(end, w->alignment);
    }

    /* A fresh temporary name next to the target. */
    static _Atomic unsigned counter;
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 64);
    if (!tmp) {
        free(meta.p);
        return TNN_ERR(TNN_ERR_NOMEM, "no memory for a path");
    }
    int fd = -1;
    for (int tries = 0; tries < 100 && fd < 0; tries++) {
        snprintf(tmp, plen + 64, "%s.tmp.%ld.%u", path, (long)getpid(), counter++);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        int e = errno;
        free(meta.p);
        int rc = TNN_ERR(TNN_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(e));
        free(tmp);
        return rc;
    }

    bool ok = write_all(fd, meta.p, meta.n) && write_zeros(fd, pad_to(meta.n, w->alignment));
    void *buf = NULL; /* the filled tensors' bytes, one at a time */
    size_t cap = 0;
    int fill_rc = TNN_OK;
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const void *bytes = tensor_bytes(&w->t[i], &buf, &cap, &fill_rc);
        if (!bytes) break;
        ok = write_all(fd, bytes, (size_t)w->t[i].nbytes) &&
             write_zeros(fd, pad_to(w->t[i].nbytes, w->alignment));
    }
    free(buf);
    if (fill_rc != TNN_OK) { /* the message is fill's; nothing is left behind */
        close(fd);
        unlink(tmp);
        free(tmp);
        free(meta.p);
        return fill_rc;
    }
    const char *step = "write";
    if (ok && fsync(fd) != 0) ok = false, step = "fsync";
    int e = errno;
    if (close(fd) != 0 && ok) ok = false, step = "close", e = errno;
    if (ok && rename(tmp, path) != 0) ok = false, step = "rename", e = errno;
    free(meta.p);
    if (!ok) {
        unlink(tmp);
        free(tmp);
        return TNN_ERR(TNN_ERR_IO, "%s: %s failed: %s", path, step, strerror(e));
    }
    free(tmp);
    sync_dir(path);
    return TNN_OK;
}
