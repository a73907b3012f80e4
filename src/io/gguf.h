/* gguf.h - internal view of the GGUF reader and writer (src/io/gguf.c): the
 * parsed file structure, the GGML type table and the borrowing entry points
 * the rest of the library uses. The public calls are tnn_gguf_* in tinynn.h.
 *
 * The GGUF file layout (versions 2 and 3; all numbers little-endian; a
 * version 3 file may be big-endian, which tinynn refuses):
 *
 *   offset 0   char[4]  magic "GGUF"
 *          4   u32      version (2 or 3; version 1 used u32 counts: refused)
 *          8   u64      tensor_count
 *         16   u64      metadata_kv_count
 *         24   metadata_kv_count times:
 *                 string   key         (u64 length, then that many bytes,
 *                                       no terminating NUL)
 *                 u32      value_type  (tnn_gguf_value_type: 0..12)
 *                 value:   u8/i8/bool (1 byte), u16/i16 (2), u32/i32/f32 (4),
 *                          u64/i64/f64 (8), string (as above), or array:
 *                          u32 element type, u64 count, count elements
 *                          (element type may itself be array: nesting)
 *              tensor_count times (tensor infos):
 *                 string   name
 *                 u32      n_dims      (1..4)
 *                 u64      ne[n_dims]  (ne[0] innermost, i.e. contiguous)
 *                 u32      type        (tnn_ggml_type)
 *                 u64      offset      (of the data, relative to the start
 *                                       of the data section; a multiple of
 *                                       the alignment)
 *              zero padding up to a multiple of the alignment
 *   data_off   tensor data (each tensor ne[0]/block * ... * block_bytes bytes)
 *
 * The alignment is the u32 key "general.alignment" (default 32), a non-zero
 * power of two. A tensor of type T holds blocks of block_elems(T) elements,
 * each block_bytes(T) bytes; ne[0] is a multiple of block_elems(T).
 *
 * Reader rules (a loader that trusts nothing): every count and length is
 * checked against the bytes left before anything is allocated (the file is
 * walked twice: once to check and count, once to fill exact allocations);
 * known type ids only; 1..4 dimensions, each > 0; element count and byte
 * size overflow-checked; every tensor's data aligned, inside the file and
 * not overlapping another; no duplicate keys or tensor names. Keys (1 to
 * 65535 bytes) and tensor names (1 to 64 bytes) must not contain NUL bytes,
 * since they are looked up as C strings; string values may hold any bytes
 * (NUL included: the getters return the length) and UTF-8 is not validated.
 * Booleans must be 0 or 1. Arrays may nest up to TNN_GGUF_MAX_NEST levels.
 */
#ifndef TNN_IO_GGUF_H
#define TNN_IO_GGUF_H

#include "tinynn.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TNN_GGUF_MAGIC "GGUF"
#define TNN_GGUF_DEFAULT_ALIGNMENT 32u
#define TNN_GGUF_MAX_KEY 65535u  /* bytes of a key (spec) */
#define TNN_GGUF_MAX_NAME 64u    /* bytes of a tensor name (spec); the writer keeps to 63 */
#define TNN_GGUF_MAX_NEST 8      /* array-in-array depth the reader accepts */

/* ------------------------------------------------------------------------ */
/* GGML type table                                                          */
/* ------------------------------------------------------------------------ */

typedef struct tnn_ggml_type_info {
    const char *name;    /* "Q4_0"; NULL for an id that is not a type */
    int32_t block_elems; /* elements per block */
    int32_t block_bytes; /* bytes per block */
} tnn_ggml_type_info;

/* The entry of a known type id, or NULL. */
const tnn_ggml_type_info *tnn__ggml_type(int type);

/* Bytes of one scalar metadata value of `vtype` (0 for string and array). */
size_t tnn__gguf_value_size(int vtype);

/* ------------------------------------------------------------------------ */
/* The parsed file                                                          */
/* ------------------------------------------------------------------------ */

typedef struct tnn_gguf_str {
    const char *s; /* NUL-terminated copy (in the handle's arena) */
    uint64_t len;  /* bytes before the added NUL (values may hold NULs) */
} tnn_gguf_str;

typedef struct tnn_gguf_kv {
    tnn_gguf_str key;
    int32_t type;          /* tnn_gguf_value_type */
    uint64_t file_off;     /* offset of the key's length field */
    const uint8_t *raw;    /* scalars: the value's bytes in the buffer */
    tnn_gguf_str str;      /* STRING */
    int32_t arr_type;      /* ARRAY: element type */
    uint64_t arr_n;        /* ARRAY: element count */
    const uint8_t *arr_data; /* numeric/bool ARRAY: raw bytes in the buffer */
    uint64_t arr_str0;     /* ARRAY of STRING: first entry in g->arr_strs */
} tnn_gguf_kv;

typedef struct tnn_gguf_tinfo {
    tnn_gguf_str name;
    int32_t type;               /* tnn_ggml_type */
    int32_t ndim;               /* 1..4 */
    int64_t ne[TNN_MAX_DIMS];   /* GGUF order, ne[0] innermost; unused = 1 */
    int64_t nelem;
    uint64_t nbytes;
    uint64_t offset;            /* relative to the data section */
    uint64_t info_off;          /* offset of the tensor info in the file */
    const void *data;           /* into the buffer (mapping or copy) */
} tnn_gguf_tinfo;

struct tnn_gguf {
    const uint8_t *base; /* the whole file */
    uint64_t size;
    int owner;           /* 0 borrowed, 1 mmap, 2 malloc'd copy */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off;   /* start of the data section */
    int64_t n_kv;
    tnn_gguf_kv *kv;
    int64_t n_tensors;
    tnn_gguf_tinfo *t;
    uint32_t *kv_sorted; /* kv indices by key, for lookup */
    uint32_t *t_sorted;  /* tensor indices by name */
    tnn_gguf_str *arr_strs; /* entries of top-level string arrays */
    char *arena;            /* every string copy, NUL-terminated */
};

/* Parses a GGUF image in memory without copying it: the handle borrows buf
 * (which must outlive it). `func` and `what` (a path, or "memory") name the
 * caller in error messages. NULL on failure with the error set. This is the
 * one parser behind tnn_gguf_open and tnn_gguf_open_memory. */
tnn_gguf *tnn__gguf_parse(const void *buf, size_t len, const char *func, const char *what);

/* The kv / tensor of that key / name, or NULL (no error set). */
const tnn_gguf_kv *tnn__gguf_kv(const tnn_gguf *g, const char *key);
const tnn_gguf_tinfo *tnn__gguf_tensor(const tnn_gguf *g, const char *name);

/* Makes a tensor's nbytes bytes into dst at write time: TNN_OK, or a status
 * with the message set (the write then fails with that status, and the file
 * at the path stays as it was). */
typedef int (*tnn__gguf_fill_fn)(void *ctx, void *dst);

/* A tensor whose bytes fill(ctx, dst) makes while tnn_gguf_writer_write
 * runs, one tensor at a time into one buffer: a checkpoint streams its
 * tensors from the session instead of holding a copy of all of them. ctx
 * must stay valid until then. */
int tnn__gguf_writer_add_tensor_fill(tnn_gguf_writer *w, const char *name, int type, int ndim,
                                     const int64_t *shape, size_t nbytes, tnn__gguf_fill_fn fill,
                                     void *ctx);

/* Like tnn_gguf_writer_add_tensor but borrows `data` (no copy): it must
 * stay valid until the writer is freed. For tensors copied unchanged from a
 * mapped file (tnn quantize). */
int tnn__gguf_writer_add_tensor_ref(tnn_gguf_writer *w, const char *name, int type, int ndim,
                                    const int64_t *shape, const void *data, size_t nbytes);

#endif /* TNN_IO_GGUF_H */
