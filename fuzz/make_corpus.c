/* make_corpus.c - writes the seed corpus of fuzz_gguf into a directory:
 * tiny valid files made by tinynn's writer and a few corrupt ones, each
 * under 4 KiB. Run by `fuzz/run.sh --make-corpus`; the output is committed.
 */
#include "tinynn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *dir;

static void path_of(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static int must(int rc, const char *what) {
    if (rc != TNN_OK) {
        fprintf(stderr, "make_corpus: %s: %s\n", what, tnn_last_error());
        exit(1);
    }
    return rc;
}

static void put_file(const char *name, const void *p, size_t n) {
    char path[1024];
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "make_corpus: cannot write %s\n", path);
        exit(1);
    }
}

static unsigned char *get_file(const char *name, size_t *n) {
    char path[1024];
    path_of(path, sizeof path, name);
    FILE *f = fopen(path, "rb");
    if (!f) exit(1);
    static unsigned char buf[8192];
    *n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    return buf;
}

static void write_w(tnn_gguf_writer *w, const char *name) {
    char path[1024];
    path_of(path, sizeof path, name);
    must(tnn_gguf_writer_write(w, path), name);
    tnn_gguf_writer_free(w);
}

/* Offset of the first occurrence of `s` in p, or exits. */
static size_t find(const unsigned char *p, size_t n, const char *s) {
    size_t k = strlen(s);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(p + i, s, k)) return i;
    fprintf(stderr, "make_corpus: '%s' not found\n", s);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    dir = argv[1];

    /* valid: header only */
    write_w(tnn_gguf_writer_new(), "valid_empty.gguf");

    /* valid: one key of every scalar type, small arrays */
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    must(tnn_gguf_writer_add_str(w, "general.architecture", "llama"), "arch");
    must(tnn_gguf_writer_add_u8(w, "k.u8", 200), "u8");
    must(tnn_gguf_writer_add_i8(w, "k.i8", -3), "i8");
    must(tnn_gguf_writer_add_u16(w, "k.u16", 60000), "u16");
    must(tnn_gguf_writer_add_i16(w, "k.i16", -300), "i16");
    must(tnn_gguf_writer_add_u32(w, "k.u32", 4096), "u32");
    must(tnn_gguf_writer_add_i32(w, "k.i32", -70000), "i32");
    must(tnn_gguf_writer_add_u64(w, "k.u64", 1ull << 40), "u64");
    must(tnn_gguf_writer_add_i64(w, "k.i64", -(1ll << 40)), "i64");
    must(tnn_gguf_writer_add_f32(w, "k.f32", 1e-5f), "f32");
    must(tnn_gguf_writer_add_f64(w, "k.f64", 10000.0), "f64");
    must(tnn_gguf_writer_add_bool(w, "k.bool", 1), "bool");
    const char *toks[] = {"<s>", "</s>", "a", "b", "ab", ""};
    must(tnn_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 6), "tokens");
    float scores[6] = {0, 0, -1, -2, -3, -4};
    must(tnn_gguf_writer_add_arr(w, "tokenizer.ggml.scores", TNN_GGUF_FLOAT32, scores, 6),
         "scores");
    int32_t types[6] = {3, 3, 1, 1, 1, 6};
    must(tnn_gguf_writer_add_arr(w, "tokenizer.ggml.token_type", TNN_GGUF_INT32, types, 6),
         "types");
    unsigned char bools[3] = {1, 0, 1};
    must(tnn_gguf_writer_add_arr(w, "k.bools", TNN_GGUF_BOOL, bools, 3), "bools");
    write_w(w, "valid_kv.gguf");

    /* valid: a few tensors of several types */
    static unsigned char data[2048];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 37 + 11);
    w = tnn_gguf_writer_new();
    must(tnn_gguf_writer_add_str(w, "general.architecture", "llama"), "arch");
    must(tnn_gguf_writer_add_u32(w, "llama.block_count", 1), "blocks");
    int64_t s1[1] = {8}, s2[2] = {2, 32}, s3[3] = {2, 1, 4};
    must(tnn_gguf_writer_add_tensor(w, "output_norm.weight", TNN_GGML_F32, 1, s1, data, 32), "t1");
    must(tnn_gguf_writer_add_tensor(w, "blk.0.attn_q.weight", TNN_GGML_Q4_0, 2, s2, data, 36),
         "t2");
    must(tnn_gguf_writer_add_tensor(w, "blk.0.attn_k.weight", TNN_GGML_Q8_0, 2, s2, data, 68),
         "t3");
    must(tnn_gguf_writer_add_tensor(w, "blk.0.ffn.weight", TNN_GGML_F16, 3, s3, data, 16), "t4");
    write_w(w, "valid_tensors.gguf");

    /* valid: custom alignment, a K-quant block */
    w = tnn_gguf_writer_new();
    must(tnn_gguf_writer_add_u32(w, "general.alignment", 64), "align");
    int64_t sk[2] = {1, 256};
    must(tnn_gguf_writer_add_tensor(w, "q4k", TNN_GGML_Q4_K, 2, sk, data, 144), "q4k");
    must(tnn_gguf_writer_add_tensor(w, "bf16", TNN_GGML_BF16, 1, s1, data, 16), "bf16");
    write_w(w, "valid_align64.gguf");

    /* valid: version 2 (same layout) */
    size_t n;
    unsigned char *p = get_file("valid_tensors.gguf", &n);
    p[4] = 2;
    put_file("valid_v2.gguf", p, n);

    /* valid: nested arrays (handcrafted) */
    static const unsigned char nested[] = {
        'G', 'G', 'U', 'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
        1, 0, 0, 0, 0, 0, 0, 0, 'n', 9, 0, 0, 0,          /* key "n", ARRAY */
        9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0,               /* of 2 arrays */
        0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7,            /* [u8 7] */
        8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,               /* [string "x"] */
        1, 0, 0, 0, 0, 0, 0, 0, 'x'};
    put_file("valid_nested.gguf", nested, sizeof nested);

    /* corrupt ones, derived from the valid files */
    p = get_file("valid_tensors.gguf", &n);
    put_file("bad_truncated.gguf", p, n / 2);
    p = get_file("valid_tensors.gguf", &n);
    p[find(p, n, "blk.0.attn_k.weight") - 8 + 5] = 0x10; /* name length past the end */
    put_file("bad_strlen.gguf", p, n);
    p = get_file("valid_tensors.gguf", &n);
    {   /* attn_k's data offset -> attn_q's (overlap) */
        size_t at = find(p, n, "blk.0.attn_k.weight") + 19 + 4 + 16 + 4;
        memset(p + at, 0, 8);
        put_file("bad_overlap.gguf", p, n);
    }
    p = get_file("valid_align64.gguf", &n);
    p[find(p, n, "general.alignment") + 17 + 4] = 3; /* alignment 3 */
    put_file("bad_alignment.gguf", p, n);
    p = get_file("valid_kv.gguf", &n);
    memcpy(p + find(p, n, "k.i16"), "k.u16", 5); /* k.u16 twice: duplicate key */
    put_file("bad_dupkey.gguf", p, n);
    p = get_file("valid_tensors.gguf", &n);
    p[find(p, n, "output_norm.weight") + 18] = 5;     /* n_dims 5 */
    put_file("bad_ndim.gguf", p, n);
    return 0;
}
