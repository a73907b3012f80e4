/* tokenizer.c - the tokenizer of llama-family GGUF models (see tokenizer.h):
 * vocabulary tables and hash maps, the hand-written pre-tokenizer regexes,
 * byte-level BPE merges by rank and SentencePiece merges by score (both with
 * a heap over a linked list of symbols per word), special-token splitting,
 * and decoding (one-shot and streaming by whole UTF-8 characters).
 */
#include "tokenizer.h"

#include "../core/internal.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Token attributes (llama.cpp's llama_token_attr bits that matter here). */
enum {
    ATTR_UNDEFINED = 1 << 0,
    ATTR_UNKNOWN = 1 << 1,
    ATTR_UNUSED = 1 << 2,
    ATTR_NORMAL = 1 << 3,
    ATTR_CONTROL = 1 << 4,
    ATTR_USER_DEFINED = 1 << 5,
    ATTR_BYTE = 1 << 6,
};

#define MAX_TOKEN_BYTES (1 << 20) /* longest token text accepted */

struct lm_tokenizer {
    int kind, pre;
    int32_t n_vocab;
    /* token i: text at arena + text_off[i], text_len[i] bytes, NUL after */
    char *arena;
    uint32_t *text_off, *text_len;
    float *scores;
    uint8_t *attr;
    /* its decoded bytes (special = rendered): piece_arena + piece_off[i] */
    char *piece_arena;
    uint32_t *piece_off, *piece_len;
    /* text -> id: open addressing, -1 = empty */
    int32_t *tmap;
    uint32_t tmap_mask;
    /* (left id, right id) -> (rank, result id) */
    struct merge_slot {
        uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
        int32_t rank, result;
    } *mmap;
    uint32_t mmap_mask;
    int32_t byte_tok[256]; /* token of raw byte b, -1 if none */
    /* cut out of the text before splitting, longest first (ties by id) */
    int32_t *special;
    int32_t n_special;
    int32_t bos, eos, eot, eom, unk;
    int32_t *eog;
    int32_t n_eog;
    bool add_bos, add_eos, add_space_prefix, ignore_merges, clean_spaces;
};

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint32_t table_size_for(size_t n) { /* power of two >= 2n, >= 16 */
    uint32_t s = 16;
    while (s < 2 * n) s <<= 1;
    return s;
}

/* The id of the token whose text is s[0..n), or -1. */
static int32_t text_to_id(const lm_tokenizer *t, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(s, n) & t->tmap_mask;
    for (;;) {
        int32_t id = t->tmap[i];
        if (id < 0) return -1;
        if (t->text_len[id] == n && memcmp(t->arena + t->text_off[id], s, n) == 0) return id;
        i = (i + 1) & t->tmap_mask;
    }
}

static const struct merge_slot *merge_find(const lm_tokenizer *t, int32_t l, int32_t r) {
    if (!t->mmap || l < 0 || r < 0) return NULL;
    uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
    uint32_t i = (uint32_t)hash_u64(key) & t->mmap_mask;
    for (;;) {
        const struct merge_slot *s = &t->mmap[i];
        if (s->key == UINT64_MAX) return NULL;
        if (s->key == key) return s;
        i = (i + 1) & t->mmap_mask;
    }
}

/* GPT-2's byte <-> printable code point map: bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF stand for themselves; the other 68 bytes take 256, 257, ... in
 * order. */
static uint32_t gpt2_byte_cp(int b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            n++;
    return 256u + (uint32_t)n;
}

/* Byte for a code point of the map above, or -1. */
static int gpt2_cp_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    int n = (int)(cp - 256);
    for (int c = 0; c < 256; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            if (n-- == 0) return c;
    return -1;
}

int lm_utf8_put(uint32_t cp, char *o) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* llama.cpp's lenient decoder (unicode_cpt_from_utf8): a lead byte with
 * enough continuation bytes gives a code point (overlongs, surrogates and
 * values above U+10FFFF included); anything else is one bad byte, returned
 * as U+FFFD. *len gets the bytes used (>= 1). */
static uint32_t utf8_decode_lenient(const unsigned char *s, size_t n, int *len) {
    unsigned b = s[0];
    *len = 1;
    if (b < 0x80) return b;
    if (!(b & 0x40)) return 0xFFFD;
    int need = !(b & 0x20) ? 1 : !(b & 0x10) ? 2 : !(b & 0x08) ? 3 : -1;
    if (need < 0 || (size_t)need >= n) return 0xFFFD;
    uint32_t cp = b & (0x3Fu >> need);
    for (int k = 1; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80) return 0xFFFD;
        cp = cp << 6 | (s[k] & 0x3Fu);
    }
    *len = need + 1;
    return cp;
}

int lm_utf8_valid_len(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned b = s[0];
    if (b < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) need = 2, lo = 0xA0;
    else if (b >= 0xE1 && b <= 0xEC) need = 2;
    else if (b == 0xED) need = 2, hi = 0x9F;
    else if (b == 0xEE || b == 0xEF) need = 2;
    else if (b == 0xF0) need = 3, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) need = 3, hi = 0x8F;
    else return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n) return 0; /* a proper prefix so far */
        unsigned c = s[k];
        if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) return -1;
    }
    return need + 1;
}

/* ------------------------------------------------------------------------ */
/* Construction                                                             */
/* ------------------------------------------------------------------------ */

static const char *const pre_names[LM_PRE_KIND_COUNT] = {"none", "gpt2", "smollm", "qwen2",
                                                          "llama-bpe"};
_Static_assert(sizeof pre_names / sizeof pre_names[0] == LM_PRE_KIND_COUNT, "pre_names");

const char *lm_pre_name(int pre) {
    return pre >= 0 && pre < LM_PRE_KIND_COUNT ? pre_names[pre] : "unknown";
}

int lm_pre_from_name(const char *name) {
    static const struct {
        const char *name;
        int pre;
    } names[] = {
        {"gpt2", LM_PRE_GPT2},           {"gpt-2", LM_PRE_GPT2},
        {"smollm", LM_PRE_SMOLLM},       {"qwen2", LM_PRE_QWEN2},
        {"deepseek-r1-qwen", LM_PRE_QWEN2}, {"llama-bpe", LM_PRE_LLAMA3},
        {"llama3", LM_PRE_LLAMA3},       {"llama-v3", LM_PRE_LLAMA3},
    };
    if (!name) return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) return names[i].pre;
    return -1;
}

void lm_tokenizer_free(lm_tokenizer *t) {
    if (!t) return;
    free(t->arena);
    free(t->text_off);
    free(t->text_len);
    free(t->scores);
    free(t->attr);
    free(t->piece_arena);
    free(t->piece_off);
    free(t->piece_len);
    free(t->tmap);
    free(t->mmap);
    free(t->special);
    free(t->eog);
    free(t);
}

static int type_to_attr(int32_t type) {
    switch (type) {
    case LM_TOKEN_NORMAL: return ATTR_NORMAL;
    case LM_TOKEN_UNKNOWN: return ATTR_UNKNOWN;
    case LM_TOKEN_CONTROL: return ATTR_CONTROL;
    case LM_TOKEN_USER_DEFINED: return ATTR_USER_DEFINED;
    case LM_TOKEN_UNUSED: return ATTR_UNUSED;
    case LM_TOKEN_BYTE: return ATTR_BYTE;
    default: return ATTR_UNDEFINED;
    }
}

static int32_t find_text(const lm_tokenizer *t, const char *s) { return text_to_id(t, s, strlen(s)); }

/* The first of `names` that is a token, or -1. */
static int32_t find_first(const lm_tokenizer *t, const char *const *names, size_t n) {
    for (size_t i = 0; i < n; i++) {
        int32_t id = find_text(t, names[i]);
        if (id >= 0) return id;
    }
    return -1;
}

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

/* llama.cpp's detection of special tokens by their text: EOT / EOM / FIM
 * tokens become control tokens, and so does every end-of-generation text;
 * control tokens named "unused" are unused. */
/* DeepSeek's "<｜end▁of▁sentence｜>" (\234 = 0x9C: a hex escape would eat "e") */
#define DEEPSEEK_EOS "<\xef\xbd\234end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"

static int detect_specials(lm_tokenizer *t, const int32_t *fim) {
    static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>",
                                            "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
                                            "<EOT>", "_<EOT>", "[EOT]",
                                            DEEPSEEK_EOS,
                                            "<end_of_utterance>"};
    static const char *const eom_names[] = {"<|eom_id|>"};
    static const char *const fim_names[][8] = {
        {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "\xe2\x96\x81<PRE>",
         "<|code_prefix|>", "<|prefix|>", NULL},
        {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "\xe2\x96\x81<SUF>",
         "<|code_suffix|>", "<|suffix|>", NULL},
        {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "\xe2\x96\x81<MID>",
         "<|code_middle|>", "<|middle|>", NULL},
        {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL},
        {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>", NULL},
        {"<|file_sep|>", NULL},
    };
    static const char *const eog_names[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
        "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
        "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
        "<|tool_response>", DEEPSEEK_EOS,
        "[e~["};
    static const char *const gpt_oss_user[] = {"<|channel|>", "<|message|>", "<|start|>",
                                               "<|constrain|>"};

    if (t->eot < 0) {
        t->eot = find_first(t, eot_names, COUNT_OF(eot_names));
        if (t->eot >= 0) t->attr[t->eot] |= ATTR_CONTROL;
    }
    if (t->eom < 0) {
        t->eom = find_first(t, eom_names, COUNT_OF(eom_names));
        if (t->eom >= 0) t->attr[t->eom] |= ATTR_CONTROL;
    }
    int32_t eog[64];
    int32_t n_eog = 0;
    for (size_t f = 0; f < COUNT_OF(fim_names); f++) {
        int32_t id = fim ? fim[f] : -1;
        if (id < 0) { /* not given: found by text, and made a control token */
            size_t n = 0;
            while (n < 8 && fim_names[f][n]) n++;
            id = find_first(t, fim_names[f], n);
            if (id >= 0) t->attr[id] |= ATTR_CONTROL;
        }
        if (id >= 0 && f >= 3) eog[n_eog++] = id; /* pad, repo and file separator end generation */
    }
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->arena + t->text_off[id];
        if ((t->attr[id] & ATTR_CONTROL) && !(t->attr[id] & ATTR_UNUSED) && strstr(s, "unused"))
            t->attr[id] |= ATTR_UNUSED;
    }
    for (size_t i = 0; i < COUNT_OF(eog_names); i++) {
        int32_t id = find_text(t, eog_names[i]);
        if (id < 0) continue;
        eog[n_eog++] = id;
        t->attr[id] |= ATTR_CONTROL;
    }
    for (size_t i = 0; i < COUNT_OF(gpt_oss_user); i++) {
        int32_t id = find_text(t, gpt_oss_user[i]);
        if (id >= 0) t->attr[id] = ATTR_USER_DEFINED;
    }
    int32_t extra[3] = {t->eos, t->eot, t->eom};
    for (int i = 0; i < 3; i++)
        if (extra[i] >= 0) eog[n_eog++] = extra[i];
    t->eog = malloc((size_t)(n_eog ? n_eog : 1) * sizeof *t->eog);
    if (!t->eog) return TNN_ERR_NOMEM;
    for (int32_t i = 0; i < n_eog; i++) {
        bool dup = false;
        for (int32_t j = 0; j < t->n_eog; j++) dup |= t->eog[j] == eog[i];
        if (!dup) t->eog[t->n_eog++] = eog[i];
    }
    return TNN_OK;
}

/* Decoded bytes of token id (llama.cpp's token_to_piece with special = 1)
 * into o (room for text_len + 4 bytes); returns the length. */
static uint32_t make_piece(const lm_tokenizer *t, int32_t id, char *o) {
    const char *s = t->arena + t->text_off[id];
    uint32_t n = t->text_len[id], k = 0;
    int a = t->attr[id];
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        memcpy(o, s, n);
        return n;
    }
    if (a & ATTR_NORMAL) {
        if (t->kind == LM_VOCAB_SPM) { /* U+2581 -> space */
            for (uint32_t i = 0; i < n;) {
                if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                    o[k++] = ' ';
                    i += 3;
                } else {
                    o[k++] = s[i++];
                }
            }
            return k;
        }
        for (uint32_t i = 0; i < n;) { /* byte-level: each code point is one byte */
            int len;
            uint32_t cp = utf8_decode_lenient((const unsigned char *)s + i, n - i, &len);
            int b = gpt2_cp_byte(cp);
            if (b >= 0) {
                o[k++] = (char)b;
            } else { /* not a byte-level character: keep it as it is */
                memcpy(o + k, s + i, (size_t)len);
                k += (uint32_t)len;
            }
            i += (uint32_t)len;
        }
        return k;
    }
    if (a & ATTR_BYTE) { /* "<0xXX>" */
        if (n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
            int v = 0;
            for (int i = 3; i < 5; i++) {
                char c = s[i];
                int d = c >= '0' && c <= '9' ? c - '0'
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                               : -1;
                if (d < 0) return 0;
                v = v * 16 + d;
            }
            o[0] = (char)v;
            return 1;
        }
        return 0;
    }
    return 0; /* unused and undefined tokens decode to nothing */
}

static int cmp_special(const void *a, const void *b, const lm_tokenizer *t) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text_len[x] != t->text_len[y]) return t->text_len[x] > t->text_len[y] ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Insertion sort (the list is short: tens to a few hundred tokens), so no
 * comparator context is needed. */
static void sort_special(lm_tokenizer *t) {
    for (int32_t i = 1; i < t->n_special; i++) {
        int32_t v = t->special[i], j = i;
        while (j > 0 && cmp_special(&v, &t->special[j - 1], t) < 0) {
            t->special[j] = t->special[j - 1];
            j--;
        }
        t->special[j] = v;
    }
}

static int build_merges(lm_tokenizer *t, const char *const *merges, int32_t n_merges) {
    t->mmap_mask = table_size_for((size_t)n_merges) - 1;
    t->mmap = malloc(((size_t)t->mmap_mask + 1) * sizeof *t->mmap);
    if (!t->mmap) return TNN_ERR_NOMEM;
    for (uint32_t i = 0; i <= t->mmap_mask; i++) t->mmap[i].key = UINT64_MAX;
    char *buf = NULL;
    size_t cap = 0;
    int32_t dropped = 0;
    for (int32_t r = 0; r < n_merges; r++) {
        const char *m = merges[r];
        if (!m) {
            free(buf);
            return TNN_ERR(TNN_ERR_ARG, "merge %d is NULL", r);
        }
        size_t n = strlen(m);
        /* split at the first space after the first byte, as llama.cpp does */
        const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
        int32_t l = -1, rr = -1, res = -1;
        if (sp) {
            size_t nl = (size_t)(sp - m), nr = n - nl - 1;
            l = text_to_id(t, m, nl);
            rr = text_to_id(t, sp + 1, nr);
            if (nl + nr > cap) {
                cap = 2 * (nl + nr) + 16;
                char *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    return TNN_ERR_NOMEM;
                }
                buf = nb;
            }
            memcpy(buf, m, nl);
            memcpy(buf + nl, sp + 1, nr);
            res = text_to_id(t, buf, nl + nr);
        }
        if (l < 0 || rr < 0 || res < 0) {
            dropped++;
            continue;
        }
        uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)rr;
        uint32_t i = (uint32_t)hash_u64(key) & t->mmap_mask;
        while (t->mmap[i].key != UINT64_MAX && t->mmap[i].key != key) i = (i + 1) & t->mmap_mask;
        if (t->mmap[i].key == key) continue; /* the first rank wins */
        t->mmap[i].key = key;
        t->mmap[i].rank = r;
        t->mmap[i].result = res;
    }
    free(buf);
    if (dropped)
        tnn__log(TNN_LOG_DEBUG, "tokenizer: %d of %d merges name texts that are not tokens: dropped",
                 dropped, n_merges);
    return TNN_OK;
}

lm_tokenizer *lm_tokenizer_new(const lm_tokenizer_desc *d) {
    if (!d) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL description");
    if (d->kind != LM_VOCAB_BPE && d->kind != LM_VOCAB_SPM)
        return TNN_ERR_NULL(TNN_ERR_ARG, "unknown vocabulary kind %d", d->kind);
    if (d->kind == LM_VOCAB_BPE && (d->pre <= LM_PRE_NONE || d->pre >= LM_PRE_KIND_COUNT))
        return TNN_ERR_NULL(TNN_ERR_ARG, "a BPE vocabulary needs a pre-tokenizer (got %d): %s",
                            d->pre, LM_PRE_SUPPORTED);
    if (d->kind == LM_VOCAB_SPM && d->pre != LM_PRE_NONE)
        return TNN_ERR_NULL(TNN_ERR_ARG, "an SPM vocabulary takes no pre-tokenizer (got %d)",
                            d->pre);
    if (d->n_tokens < 1 || d->n_tokens > (1 << 30) || !d->tokens)
        return TNN_ERR_NULL(TNN_ERR_ARG, "want 1 <= n_tokens <= 2^30 and a token array (got %d)",
                            d->n_tokens);
    if (d->n_merges < 0 || (d->n_merges > 0 && !d->merges))
        return TNN_ERR_NULL(TNN_ERR_ARG, "bad merges (n_merges %d)", d->n_merges);
    int32_t ids[5] = {d->bos, d->eos, d->unk, d->eot, d->eom};
    static const char *const id_names[5] = {"bos", "eos", "unk", "eot", "eom"};
    for (int i = 0; i < 5; i++)
        if (ids[i] < -1 || ids[i] >= d->n_tokens)
            return TNN_ERR_NULL(TNN_ERR_ARG, "%s id %d is outside the vocabulary of %d tokens",
                                id_names[i], ids[i], d->n_tokens);
    for (int i = 0; d->fim && i < 6; i++)
        if (d->fim[i] < -1 || d->fim[i] >= d->n_tokens)
            return TNN_ERR_NULL(TNN_ERR_ARG, "fim id %d is outside the vocabulary of %d tokens",
                                d->fim[i], d->n_tokens);

    lm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    size_t n = (size_t)d->n_tokens;
    t->kind = d->kind;
    t->pre = d->pre;
    t->n_vocab = d->n_tokens;
    t->bos = d->bos;
    t->eos = d->eos;
    t->unk = d->unk;
    t->eot = d->eot;
    t->eom = d->eom;
    t->add_bos = d->add_bos != 0;
    t->add_eos = d->add_eos != 0;
    t->add_space_prefix = d->add_space_prefix < 0 ? d->kind == LM_VOCAB_SPM : d->add_space_prefix != 0;
    t->ignore_merges = d->pre == LM_PRE_LLAMA3;
    t->clean_spaces = d->kind == LM_VOCAB_BPE && (d->pre == LM_PRE_GPT2 || d->pre == LM_PRE_LLAMA3);
    t->text_off = malloc(n * sizeof *t->text_off);
    t->text_len = malloc(n * sizeof *t->text_len);
    t->scores = malloc(n * sizeof *t->scores);
    t->attr = malloc(n);
    t->piece_off = malloc(n * sizeof *t->piece_off);
    t->piece_len = malloc(n * sizeof *t->piece_len);
    t->tmap_mask = table_size_for(n) - 1;
    t->tmap = malloc(((size_t)t->tmap_mask + 1) * sizeof *t->tmap);
    if (!t->text_off || !t->text_len || !t->scores || !t->attr || !t->piece_off || !t->piece_len ||
        !t->tmap)
        goto nomem;

    /* texts: empty ones become "[EMPTY_i]" as in llama.cpp */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *s = d->tokens[i];
        if (!s) {
            lm_tokenizer_free(t);
            return TNN_ERR_NULL(TNN_ERR_ARG, "token %zu is NULL", i);
        }
        size_t len = d->token_lens ? d->token_lens[i] : strlen(s);
        if (len > MAX_TOKEN_BYTES) {
            lm_tokenizer_free(t);
            return TNN_ERR_NULL(TNN_ERR_ARG, "token %zu is %zu bytes long (at most %d)", i, len,
                                MAX_TOKEN_BYTES);
        }
        total += (len ? len : 24) + 1;
    }
    if (total > UINT32_MAX / 2) {
        lm_tokenizer_free(t);
        return TNN_ERR_NULL(TNN_ERR_ARG, "the token texts total %zu bytes (too many)", total);
    }
    t->arena = malloc(total);
    t->piece_arena = malloc(total + 4 * n);
    if (!t->arena || !t->piece_arena) goto nomem;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = d->token_lens ? d->token_lens[i] : strlen(d->tokens[i]);
        t->text_off[i] = (uint32_t)off;
        if (len == 0) {
            len = (size_t)snprintf(t->arena + off, 24, "[EMPTY_%zu]", i);
        } else {
            memcpy(t->arena + off, d->tokens[i], len);
        }
        t->arena[off + len] = '\0';
        t->text_len[i] = (uint32_t)len;
        off += len + 1;
        float sc = d->scores ? d->scores[i] : 0.0f;
        t->scores[i] = isnan(sc) ? -INFINITY : sc;
        t->attr[i] = (uint8_t)(d->types ? type_to_attr(d->types[i]) : ATTR_NORMAL);
    }
    for (uint32_t i = 0; i <= t->tmap_mask; i++) t->tmap[i] = -1;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->arena + t->text_off[id];
        uint32_t i = (uint32_t)hash_bytes(s, t->text_len[id]) & t->tmap_mask;
        while (t->tmap[i] >= 0) {
            int32_t o = t->tmap[i];
            if (t->text_len[o] == t->text_len[id] && memcmp(t->arena + t->text_off[o], s, t->text_len[id]) == 0) {
                lm_tokenizer_free(t);
                return TNN_ERR_NULL(TNN_ERR_FORMAT, "tokens %d and %d have the same text", o, id);
            }
            i = (i + 1) & t->tmap_mask;
        }
        t->tmap[i] = id;
    }

    /* byte tokens */
    for (int b = 0; b < 256; b++) {
        char s[8];
        if (t->kind == LM_VOCAB_BPE) {
            int k = lm_utf8_put(gpt2_byte_cp(b), s);
            t->byte_tok[b] = text_to_id(t, s, (size_t)k);
        } else {
            static const char hex[] = "0123456789ABCDEF";
            char h[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
            t->byte_tok[b] = text_to_id(t, h, 6);
            if (t->byte_tok[b] < 0) {
                s[0] = (char)b;
                t->byte_tok[b] = text_to_id(t, s, 1);
            }
        }
    }
    if (t->kind == LM_VOCAB_BPE) {
        int rc = build_merges(t, d->merges, d->n_merges);
        if (rc != TNN_OK) {
            lm_tokenizer_free(t);
            if (rc == TNN_ERR_NOMEM) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
            return NULL;
        }
    }
    if (detect_specials(t, d->fim) != TNN_OK) goto nomem;

    t->special = malloc(n * sizeof *t->special);
    if (!t->special) goto nomem;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->attr[id] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            t->special[t->n_special++] = id;
    sort_special(t);

    off = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        t->piece_off[id] = (uint32_t)off;
        t->piece_len[id] = make_piece(t, id, t->piece_arena + off);
        off += t->piece_len[id];
    }
    return t;

nomem:
    lm_tokenizer_free(t);
    return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
}

/* ------------------------------------------------------------------------ */
/* Loading from GGUF                                                        */
/* ------------------------------------------------------------------------ */

static int gguf_opt_id(const tnn_gguf *g, const char *key, int32_t n_vocab, int32_t *id) {
    int64_t v;
    if (tnn_gguf_find_key(g, key) < 0) return TNN_OK; /* keep the default */
    int rc = tnn_gguf_get_i64(g, key, &v);
    if (rc != TNN_OK) return TNN_ERR(TNN_ERR_FORMAT, "%s is not an integer", key);
    if (v >= 0 && v < n_vocab) *id = (int32_t)v;
    else tnn__log(TNN_LOG_WARN, "tokenizer: %s = %lld is outside the vocabulary: ignored", key, (long long)v);
    return TNN_OK;
}

static int gguf_opt_bool(const tnn_gguf *g, const char *key, int *flag) {
    if (tnn_gguf_find_key(g, key) < 0) return TNN_OK;
    if (tnn_gguf_get_bool(g, key, flag) != TNN_OK)
        return TNN_ERR(TNN_ERR_FORMAT, "%s is not a bool", key);
    return TNN_OK;
}

lm_tokenizer *lm_tokenizer_from_gguf(const tnn_gguf *g) {
    if (!g) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL GGUF handle");
    const char *model = NULL, *pre_name = NULL;
    if (tnn_gguf_get_str(g, "tokenizer.ggml.model", &model, NULL) != TNN_OK)
        return TNN_ERR_NULL(TNN_ERR_FORMAT, "tokenizer.ggml.model (a string) is missing: no tokenizer in this file");
    lm_tokenizer_desc d = {0};
    int32_t fim[6] = {-1, -1, -1, -1, -1, -1};
    d.bos = d.eos = d.unk = d.eot = d.eom = -1;
    d.fim = fim;
    d.add_space_prefix = -1;
    if (strcmp(model, "gpt2") == 0) {
        d.kind = LM_VOCAB_BPE;
        if (tnn_gguf_find_key(g, "tokenizer.ggml.pre") < 0) {
            tnn__log(TNN_LOG_WARN, "tokenizer: tokenizer.ggml.pre is missing: using the gpt2 pre-tokenizer");
            d.pre = LM_PRE_GPT2;
        } else {
            if (tnn_gguf_get_str(g, "tokenizer.ggml.pre", &pre_name, NULL) != TNN_OK)
                return TNN_ERR_NULL(TNN_ERR_FORMAT, "tokenizer.ggml.pre is not a string");
            d.pre = lm_pre_from_name(pre_name);
            if (d.pre < 0)
                return TNN_ERR_NULL(TNN_ERR_UNSUPPORTED,
                                    "unknown pre-tokenizer tokenizer.ggml.pre = '%.64s' (supported: %s)",
                                    pre_name, LM_PRE_SUPPORTED);
        }
        d.add_bos = d.pre == LM_PRE_LLAMA3;
    } else if (strcmp(model, "llama") == 0) {
        d.kind = LM_VOCAB_SPM;
        d.pre = LM_PRE_NONE;
        d.add_bos = 1;
    } else {
        return TNN_ERR_NULL(TNN_ERR_UNSUPPORTED,
                            "unsupported tokenizer.ggml.model = '%.64s' (supported: gpt2, llama)", model);
    }

    const char *kt = "tokenizer.ggml.tokens";
    if (tnn_gguf_arr_type(g, kt) != TNN_GGUF_STRING)
        return TNN_ERR_NULL(TNN_ERR_FORMAT, "%s (an array of strings) is missing", kt);
    int64_t n = tnn_gguf_arr_len(g, kt);
    if (n < 1 || n > (1 << 30))
        return TNN_ERR_NULL(TNN_ERR_FORMAT, "%s has %lld entries (want 1 .. 2^30)", kt, (long long)n);
    d.n_tokens = (int32_t)n;

    const char **tokens = calloc((size_t)n, sizeof *tokens);
    size_t *lens = calloc((size_t)n, sizeof *lens);
    int32_t *types = NULL;
    float *scores = NULL;
    const char **merges = NULL;
    lm_tokenizer *t = NULL;
    if (!tokens || !lens) goto nomem;
    for (int64_t i = 0; i < n; i++)
        if (tnn_gguf_get_arr_str(g, kt, i, &tokens[i], &lens[i]) != TNN_OK) goto fail;
    d.tokens = tokens;
    d.token_lens = lens;

    const char *ky = "tokenizer.ggml.token_type";
    if (tnn_gguf_find_key(g, ky) >= 0) {
        if (tnn_gguf_arr_type(g, ky) != TNN_GGUF_INT32 || tnn_gguf_arr_len(g, ky) < n) {
            tnn__error(TNN_ERR_FORMAT, __func__, "%s must be an int32 array of at least %lld entries", ky, (long long)n);
            goto fail;
        }
        types = malloc((size_t)n * sizeof *types);
        if (!types) goto nomem;
        for (int64_t i = 0; i < n; i++) {
            int64_t v;
            if (tnn_gguf_get_arr_i64(g, ky, i, &v) != TNN_OK) goto fail;
            types[i] = (int32_t)v;
        }
        d.types = types;
    }
    const char *ks = "tokenizer.ggml.scores";
    if (tnn_gguf_find_key(g, ks) >= 0) {
        int at = tnn_gguf_arr_type(g, ks);
        if ((at != TNN_GGUF_FLOAT32 && at != TNN_GGUF_INT32) || tnn_gguf_arr_len(g, ks) < n) {
            tnn__error(TNN_ERR_FORMAT, __func__, "%s must be a float32 or int32 array of at least %lld entries", ks, (long long)n);
            goto fail;
        }
        scores = malloc((size_t)n * sizeof *scores);
        if (!scores) goto nomem;
        for (int64_t i = 0; i < n; i++) {
            double v;
            int64_t iv;
            if (at == TNN_GGUF_FLOAT32) {
                if (tnn_gguf_get_arr_f64(g, ks, i, &v) != TNN_OK) goto fail;
            } else {
                if (tnn_gguf_get_arr_i64(g, ks, i, &iv) != TNN_OK) goto fail;
                v = (double)iv;
            }
            scores[i] = (float)v;
        }
        d.scores = scores;
    }
    if (d.kind == LM_VOCAB_BPE) {
        const char *km = "tokenizer.ggml.merges";
        if (tnn_gguf_arr_type(g, km) != TNN_GGUF_STRING) {
            tnn__error(TNN_ERR_FORMAT, __func__, "%s (an array of strings) is missing: a gpt2 tokenizer needs its merges", km);
            goto fail;
        }
        int64_t nm = tnn_gguf_arr_len(g, km);
        if (nm < 0 || nm > (1 << 30)) {
            tnn__error(TNN_ERR_FORMAT, __func__, "%s has %lld entries", km, (long long)nm);
            goto fail;
        }
        merges = calloc((size_t)(nm ? nm : 1), sizeof *merges);
        if (!merges) goto nomem;
        for (int64_t i = 0; i < nm; i++)
            if (tnn_gguf_get_arr_str(g, km, i, &merges[i], NULL) != TNN_OK) goto fail;
        d.merges = merges;
        d.n_merges = (int32_t)nm;
    }

    /* llama.cpp's defaults when the keys are missing */
    if (d.kind == LM_VOCAB_SPM) {
        d.bos = 1 < n ? 1 : -1;
        d.eos = 2 < n ? 2 : -1;
        d.unk = 0;
    } else {
        d.bos = d.eos = 11 < n ? 11 : -1;
    }
    if (gguf_opt_id(g, "tokenizer.ggml.bos_token_id", d.n_tokens, &d.bos) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.eos_token_id", d.n_tokens, &d.eos) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.eot_token_id", d.n_tokens, &d.eot) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.eom_token_id", d.n_tokens, &d.eom) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.unknown_token_id", d.n_tokens, &d.unk) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_pre_token_id", d.n_tokens, &fim[0]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_suf_token_id", d.n_tokens, &fim[1]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_mid_token_id", d.n_tokens, &fim[2]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_pad_token_id", d.n_tokens, &fim[3]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_rep_token_id", d.n_tokens, &fim[4]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.fim_sep_token_id", d.n_tokens, &fim[5]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.prefix_token_id", d.n_tokens, &fim[0]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.suffix_token_id", d.n_tokens, &fim[1]) != TNN_OK ||
        gguf_opt_id(g, "tokenizer.ggml.middle_token_id", d.n_tokens, &fim[2]) != TNN_OK ||
        gguf_opt_bool(g, "tokenizer.ggml.add_bos_token", &d.add_bos) != TNN_OK ||
        gguf_opt_bool(g, "tokenizer.ggml.add_eos_token", &d.add_eos) != TNN_OK ||
        gguf_opt_bool(g, "tokenizer.ggml.add_space_prefix", &d.add_space_prefix) != TNN_OK)
        goto fail;

    t = lm_tokenizer_new(&d);
    goto done;
nomem:
    tnn__error(TNN_ERR_NOMEM, __func__, "out of memory");
fail:
    t = NULL;
done:
    free(tokens);
    free(lens);
    free(types);
    free(scores);
    free(merges);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Pre-tokenizers: the regexes of tokenizer.h, by hand                      */
/* ------------------------------------------------------------------------ */

/* One character of a fragment: code point (U+FFFD for a bad byte), class,
 * and byte offset. */
typedef struct {
    uint32_t cp;
    int32_t cls;
    size_t off;
} uchar;

#define OOR (-1) /* class of a position outside the piece */

typedef struct {
    const uchar *c;
    size_t end;   /* the piece is [ini, end) */
    size_t *cuts; /* word ends (character index), appended */
    size_t n_cuts;
} splitter;

static inline int cls_at(const splitter *s, size_t p) { return p < s->end ? s->c[p].cls : OOR; }
static inline uint32_t cp_at(const splitter *s, size_t p) {
    return p < s->end ? s->c[p].cp : 0xFFFFFFFFu;
}
static inline void cut(splitter *s, size_t p) { s->cuts[s->n_cuts++] = p; }
static inline uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's|'t|'re|'ve|'m|'ll|'d at p (case-folded when `fold`): length or 0. */
static size_t contraction(const splitter *s, size_t p, bool fold) {
    if (cp_at(s, p) != '\'' || p + 1 >= s->end) return 0;
    uint32_t a = cp_at(s, p + 1);
    if (fold) a = ascii_lower(a);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (p + 2 >= s->end) return 0;
    uint32_t b = cp_at(s, p + 2);
    if (fold) b = ascii_lower(b);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* Whitespace run at p: the branches \s+(?!\S) and \s+. Returns the new
 * position, or p if there is no whitespace. */
static size_t whitespace_run(const splitter *s, size_t p) {
    size_t n = 0;
    while (cls_at(s, p + n) == LM_UCLS_SPACE) n++;
    if (n > 1 && p + n < s->end) return p + n - 1; /* leave one for the next word */
    return p + n;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void split_gpt2(splitter *s, size_t pos) {
    while (pos < s->end) {
        size_t k = contraction(s, pos, false);
        if (k) {
            cut(s, pos += k);
            continue;
        }
        uint32_t cp = s->c[pos].cp;
        int cls2 = cp == ' ' ? cls_at(s, pos + 1) : s->c[pos].cls;
        if (cls2 == LM_UCLS_LETTER || cls2 == LM_UCLS_NUMBER || cls2 == LM_UCLS_OTHER) {
            pos += cp == ' ';
            while (cls_at(s, pos) == cls2) pos++;
            cut(s, pos);
            continue;
        }
        size_t np = whitespace_run(s, pos);
        cut(s, pos = np > pos ? np : pos + 1);
    }
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+     (D = 3 or 1) */
static void split_llama3(splitter *s, size_t pos, int max_digits) {
    while (pos < s->end) {
        size_t k = contraction(s, pos, true);
        if (k) {
            cut(s, pos += k);
            continue;
        }
        uint32_t cp = s->c[pos].cp;
        int cls = s->c[pos].cls;
        if (!(cp == '\r' || cp == '\n' || cls == LM_UCLS_NUMBER) &&
            (cls == LM_UCLS_LETTER || cls_at(s, pos + 1) == LM_UCLS_LETTER)) {
            pos++;
            while (cls_at(s, pos) == LM_UCLS_LETTER) pos++;
            cut(s, pos);
            continue;
        }
        if (cls == LM_UCLS_NUMBER) {
            size_t start = pos;
            while (cls_at(s, pos) == LM_UCLS_NUMBER && pos - start < (size_t)max_digits) pos++;
            cut(s, pos);
            continue;
        }
        int cls2 = cp == ' ' ? cls_at(s, pos + 1) : cls;
        if (cls2 == LM_UCLS_OTHER || cls2 == OOR) {
            pos += cp == ' ';
            while (cls_at(s, pos) == LM_UCLS_OTHER) pos++;
            while (cp_at(s, pos) == '\r' || cp_at(s, pos) == '\n') pos++;
            cut(s, pos);
            continue;
        }
        size_t n = 0, last_nl = 0;
        while (cls_at(s, pos + n) == LM_UCLS_SPACE) {
            uint32_t c2 = cp_at(s, pos + n);
            if (c2 == '\r' || c2 == '\n') last_nl = pos + n + 1;
            n++;
        }
        if (last_nl) { /* \s*[\r\n]+ */
            cut(s, pos = last_nl);
            continue;
        }
        size_t np = whitespace_run(s, pos);
        cut(s, pos = np > pos ? np : pos + 1);
    }
}

/* Splits characters [0, n) into words; returns the number of word ends
 * written to cuts (room for n). */
static size_t pre_split(int pre, const uchar *c, size_t n, size_t *cuts) {
    splitter s = {c, n, cuts, 0};
    switch (pre) {
    case LM_PRE_SMOLLM: /* \p{N} isolated first, then gpt2 on each piece between */
        for (size_t a = 0; a < n;) {
            if (c[a].cls == LM_UCLS_NUMBER) {
                cut(&s, ++a);
                continue;
            }
            size_t b = a;
            while (b < n && c[b].cls != LM_UCLS_NUMBER) b++;
            s.end = b;
            split_gpt2(&s, a);
            s.end = n;
            a = b;
        }
        break;
    case LM_PRE_QWEN2: split_llama3(&s, 0, 1); break;
    case LM_PRE_LLAMA3: split_llama3(&s, 0, 3); break;
    default: split_gpt2(&s, 0); break;
    }
    return s.n_cuts;
}

static uchar *decode_chars(const unsigned char *s, size_t n, size_t *nc_out) {
    uchar *c = malloc((n + 1) * sizeof *c);
    if (!c) return NULL;
    size_t nc = 0;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t cp = utf8_decode_lenient(s + i, n - i, &len);
        c[nc].cp = cp;
        c[nc].cls = lm_unicode_class(cp);
        c[nc].off = i;
        nc++;
        i += (size_t)len;
    }
    c[nc].off = n;
    *nc_out = nc;
    return c;
}

int64_t lm_pre_split(int pre, const char *text, size_t len, size_t *ends, size_t max) {
    if ((!text && len) || (!ends && max)) return TNN_ERR(TNN_ERR_ARG, "NULL argument");
    if (pre <= LM_PRE_NONE || pre >= LM_PRE_KIND_COUNT)
        return TNN_ERR(TNN_ERR_ARG, "unknown pre-tokenizer %d", pre);
    size_t nc;
    uchar *c = decode_chars((const unsigned char *)text, len, &nc);
    size_t *cuts = malloc((len + 1) * sizeof *cuts);
    if (!c || !cuts) {
        free(c);
        free(cuts);
        return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    }
    size_t n = pre_split(pre, c, nc, cuts);
    for (size_t i = 0; i < n && i < max; i++) ends[i] = c[cuts[i]].off;
    free(c);
    free(cuts);
    return (int64_t)n;
}

/* ------------------------------------------------------------------------ */
/* Merging: a binary heap of candidate pairs over a linked list of symbols  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t prev, next;
    int32_t id;   /* BPE: the symbol's token (-1 none) */
    size_t start; /* SPM: bytes [start, start + n) of the escaped text */
    size_t n;     /* 0 = merged away */
} symbol;

typedef struct {
    double prio; /* smaller first: BPE rank, SPM -score */
    int32_t left, right;
    int32_t a, b; /* BPE: expected ids; SPM: a = expected total size */
} pair;

typedef struct {
    pair *v;
    size_t n, cap;
} heap;

static inline bool pair_before(const pair *x, const pair *y) {
    return x->prio < y->prio || (x->prio == y->prio && x->left < y->left);
}

static int heap_push(heap *h, pair p) {
    if (h->n == h->cap) {
        size_t nc = h->cap ? 2 * h->cap : 64;
        pair *nv = realloc(h->v, nc * sizeof *nv);
        if (!nv) return TNN_ERR_NOMEM;
        h->v = nv;
        h->cap = nc;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_before(&p, &h->v[up])) break;
        h->v[i] = h->v[up];
        i = up;
    }
    h->v[i] = p;
    return TNN_OK;
}

static pair heap_pop(heap *h) {
    pair top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->v[c + 1], &h->v[c])) c++;
        if (!pair_before(&h->v[c], &last)) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* Output of one lm_tokenize call: counts every token, keeps what fits. */
typedef struct {
    int32_t *out;
    int32_t max;
    int64_t n;
    symbol *sym;
    size_t sym_cap;
    heap h;
    char *buf; /* scratch text */
    size_t buf_cap;
} sink;

static void emit(sink *k, int32_t id) {
    if (k->n < k->max) k->out[k->n] = id;
    k->n++;
}

static int ensure_sym(sink *k, size_t n) {
    if (n <= k->sym_cap) return TNN_OK;
    size_t nc = n > 2 * k->sym_cap ? n : 2 * k->sym_cap;
    symbol *ns = realloc(k->sym, nc * sizeof *ns);
    if (!ns) return TNN_ERR_NOMEM;
    k->sym = ns;
    k->sym_cap = nc;
    return TNN_OK;
}

static int ensure_buf(sink *k, size_t n) {
    if (n <= k->buf_cap) return TNN_OK;
    size_t nc = n > 2 * k->buf_cap ? n : 2 * k->buf_cap;
    char *nb = realloc(k->buf, nc);
    if (!nb) return TNN_ERR_NOMEM;
    k->buf = nb;
    k->buf_cap = nc;
    return TNN_OK;
}

static int bpe_try_pair(const lm_tokenizer *t, sink *k, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return TNN_OK;
    const struct merge_slot *m = merge_find(t, k->sym[l].id, k->sym[r].id);
    if (!m) return TNN_OK;
    pair p = {(double)m->rank, l, r, k->sym[l].id, k->sym[r].id};
    return heap_push(&k->h, p);
}

/* Byte-level BPE of one word (raw bytes w[0..n)). */
static int bpe_word(const lm_tokenizer *t, sink *k, const unsigned char *w, size_t n) {
    if (t->ignore_merges) { /* a word that is a token is taken whole */
        if (ensure_buf(k, 2 * n) != TNN_OK) return TNN_ERR_NOMEM;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += (size_t)lm_utf8_put(gpt2_byte_cp(w[i]), k->buf + m);
        int32_t id = text_to_id(t, k->buf, m);
        if (id >= 0) {
            emit(k, id);
            return TNN_OK;
        }
    }
    if (ensure_sym(k, n) != TNN_OK) return TNN_ERR_NOMEM;
    symbol *s = k->sym;
    for (size_t i = 0; i < n; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
        s[i].id = t->byte_tok[w[i]];
        s[i].n = 1;
    }
    k->h.n = 0;
    for (size_t i = 1; i < n; i++)
        if (bpe_try_pair(t, k, (int32_t)i - 1, (int32_t)i) != TNN_OK) return TNN_ERR_NOMEM;
    while (k->h.n) {
        pair p = heap_pop(&k->h);
        symbol *L = &s[p.left], *R = &s[p.right];
        if (!L->n || !R->n || L->next != p.right || L->id != p.a || R->id != p.b) continue;
        L->id = merge_find(t, p.a, p.b)->result;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) s[R->next].prev = p.left;
        if (bpe_try_pair(t, k, L->prev, p.left) != TNN_OK ||
            bpe_try_pair(t, k, p.left, L->next) != TNN_OK)
            return TNN_ERR_NOMEM;
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        if (s[i].id >= 0) emit(k, s[i].id); /* else: a byte with no token is dropped (llama.cpp) */
    return TNN_OK;
}

/* A character with a byte the vocabulary has no token for is read the way
 * llama.cpp reads it: a bad byte (or a value above U+10FFFF) as U+FFFD, an
 * overlong form as its code point, re-encoded. Returns a malloc'd copy when
 * anything changes (*m its length), else NULL with *m = 0. */
static unsigned char *bpe_unrepresentable(const lm_tokenizer *t, const unsigned char *s, size_t n,
                                          size_t *m, int *rc) {
    unsigned char *o = NULL;
    size_t k = 0;
    *m = 0;
    *rc = TNN_OK;
    for (size_t i = 0; i < n;) {
        int len;
        uint32_t cp = utf8_decode_lenient(s + i, n - i, &len);
        bool missing = false;
        for (int j = 0; j < len; j++) missing |= t->byte_tok[s[i + j]] < 0;
        char rep[4];
        int rl = 0;
        if (missing) {
            bool bad = (len == 1 && s[i] >= 0x80) || cp > 0x10FFFF;
            rl = lm_utf8_put(bad ? 0xFFFD : cp, rep);
            missing = rl != len || memcmp(rep, s + i, (size_t)len) != 0;
        }
        if (missing && !o) { /* first change: copy what came before */
            o = malloc(3 * n + 1);
            if (!o) {
                *rc = TNN_ERR_NOMEM;
                return NULL;
            }
            memcpy(o, s, i);
            k = i;
        }
        if (o) {
            if (missing) memcpy(o + k, rep, (size_t)rl), k += (size_t)rl;
            else memcpy(o + k, s + i, (size_t)len), k += (size_t)len;
        }
        i += (size_t)len;
    }
    *m = k;
    return o;
}

/* Byte-level BPE of a text fragment: decode, split into words, merge. */
static int bpe_fragment(const lm_tokenizer *t, sink *k, const unsigned char *s, size_t n) {
    size_t sub_n;
    int rc0;
    unsigned char *sub = bpe_unrepresentable(t, s, n, &sub_n, &rc0);
    if (rc0 != TNN_OK) return rc0;
    if (sub) {
        s = sub;
        n = sub_n;
    }
    size_t nc = 0;
    uchar *c = decode_chars(s, n, &nc);
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    int rc = TNN_OK;
    if (!c || !cuts) {
        rc = TNN_ERR_NOMEM;
        goto out;
    }
    size_t ncut = pre_split(t->pre, c, nc, cuts), a = 0;
    for (size_t w = 0; w < ncut && rc == TNN_OK; w++) {
        size_t b = cuts[w];
        if (b > a) rc = bpe_word(t, k, s + c[a].off, c[b].off - c[a].off);
        a = b;
    }
out:
    free(c);
    free(cuts);
    free(sub);
    return rc;
}

static int spm_try_pair(const lm_tokenizer *t, sink *k, const char *txt, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return TNN_OK;
    size_t size = k->sym[l].n + k->sym[r].n;
    int32_t id = text_to_id(t, txt + k->sym[l].start, size);
    if (id < 0) return TNN_OK;
    pair p = {-(double)t->scores[id], l, r, (int32_t)size, 0};
    return heap_push(&k->h, p);
}

/* SentencePiece BPE of a fragment: spaces become U+2581 (with a leading one
 * when asked), UTF-8 characters merge by the score of the joined token,
 * and what forms no token falls back to byte tokens. */
static int spm_fragment(const lm_tokenizer *t, sink *k, const unsigned char *s, size_t n,
                        bool prefix) {
    size_t m = 0;
    if (ensure_buf(k, 3 * (n + 1)) != TNN_OK) return TNN_ERR_NOMEM;
    char *txt = k->buf;
    if (prefix) {
        memcpy(txt, "\xe2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ' ') {
            memcpy(txt + m, "\xe2\x96\x81", 3);
            m += 3;
        } else {
            txt[m++] = (char)s[i];
        }
    }
    if (m > INT32_MAX / 2) return TNN_ERR_NOMEM;
    if (ensure_sym(k, m) != TNN_OK) return TNN_ERR_NOMEM;
    symbol *sy = k->sym;
    size_t ns = 0;
    for (size_t off = 0; off < m; ns++) {
        /* a character, or one bad byte (llama.cpp takes the length from the
         * lead byte alone, which can swallow the next character) */
        int clen;
        (void)utf8_decode_lenient((const unsigned char *)txt + off, m - off, &clen);
        size_t len = (size_t)clen;
        sy[ns].start = off;
        sy[ns].n = len;
        sy[ns].prev = (int32_t)ns - 1;
        off += len;
        sy[ns].next = off == m ? -1 : (int32_t)ns + 1;
    }
    k->h.n = 0;
    for (size_t i = 1; i < ns; i++)
        if (spm_try_pair(t, k, txt, (int32_t)i - 1, (int32_t)i) != TNN_OK) return TNN_ERR_NOMEM;
    while (k->h.n) {
        pair p = heap_pop(&k->h);
        symbol *L = &sy[p.left], *R = &sy[p.right];
        if (!L->n || !R->n || L->n + R->n != (size_t)p.a) continue;
        L->n += R->n;
        R->n = 0;
        L->next = R->next;
        if (R->next >= 0) sy[R->next].prev = p.left;
        if (spm_try_pair(t, k, txt, L->prev, p.left) != TNN_OK ||
            spm_try_pair(t, k, txt, p.left, L->next) != TNN_OK)
            return TNN_ERR_NOMEM;
    }
    for (int32_t i = ns ? 0 : -1; i >= 0; i = sy[i].next) {
        int32_t id = text_to_id(t, txt + sy[i].start, sy[i].n);
        if (id >= 0) {
            emit(k, id);
            continue;
        }
        for (size_t j = 0; j < sy[i].n; j++) {
            int32_t b = t->byte_tok[(uint8_t)txt[sy[i].start + j]];
            if (b >= 0) emit(k, b);
            else if (t->unk >= 0) emit(k, t->unk);
        }
    }
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Special tokens and lm_tokenize                                           */
/* ------------------------------------------------------------------------ */

typedef struct {
    size_t off, len;
    int32_t id; /* -1: raw text */
} fragment;

static const char *find_bytes(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0 || nn > hn) return NULL;
    const char *end = h + (hn - nn) + 1;
    for (const char *p = h; p < end;) {
        p = memchr(p, nd[0], (size_t)(end - p));
        if (!p) return NULL;
        if (memcmp(p, nd, nn) == 0) return p;
        p++;
    }
    return NULL;
}

/* llama.cpp's tokenizer_st_partition: for each special token, longest
 * first, every raw fragment is cut at each of its occurrences. */
static int partition(const lm_tokenizer *t, const char *text, size_t len, bool parse_special,
                     fragment **frags, size_t *n_frags) {
    size_t n = 1, cap = 16;
    fragment *f = malloc(cap * sizeof *f), *g = NULL;
    if (!f) return TNN_ERR_NOMEM;
    f[0] = (fragment){0, len, -1};
    for (int32_t si = 0; si < t->n_special; si++) {
        int32_t id = t->special[si];
        if (!parse_special && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN))) continue;
        const char *st = t->arena + t->text_off[id];
        size_t sl = t->text_len[id];
        bool any = false;
        for (size_t i = 0; i < n && !any; i++)
            any = f[i].id < 0 && find_bytes(text + f[i].off, f[i].len, st, sl);
        if (!any) continue;
        size_t gn = 0, gcap = cap;
        g = malloc(gcap * sizeof *g);
        if (!g) goto nomem;
        for (size_t i = 0; i < n; i++) {
            fragment x = f[i];
            for (;;) {
                const char *p = x.id < 0 ? find_bytes(text + x.off, x.len, st, sl) : NULL;
                size_t need = gn + 3;
                if (need > gcap) {
                    gcap = 2 * need;
                    fragment *ng = realloc(g, gcap * sizeof *ng);
                    if (!ng) goto nomem;
                    g = ng;
                }
                if (!p) {
                    g[gn++] = x;
                    break;
                }
                size_t m = (size_t)(p - text);
                if (m > x.off) g[gn++] = (fragment){x.off, m - x.off, -1};
                g[gn++] = (fragment){m, sl, id};
                size_t rest = x.off + x.len - (m + sl);
                if (!rest) break;
                x = (fragment){m + sl, rest, -1};
            }
        }
        free(f);
        f = g;
        g = NULL;
        n = gn;
        cap = gcap;
    }
    *frags = f;
    *n_frags = n;
    return TNN_OK;
nomem:
    free(f);
    free(g);
    return TNN_ERR_NOMEM;
}

int32_t lm_tokenize(const lm_tokenizer *t, const char *text, size_t len, int add_bos,
                    int parse_special, int32_t *out, int32_t max) {
    if (!t) return TNN_ERR(TNN_ERR_ARG, "NULL tokenizer");
    if (!text && len > 0) return TNN_ERR(TNN_ERR_ARG, "NULL text with length %zu", len);
    if (max < 0 || (!out && max > 0))
        return TNN_ERR(TNN_ERR_ARG, "bad output buffer (out %p, max %d)", (void *)out, max);
    if (len > INT32_MAX / 4) return TNN_ERR(TNN_ERR_ARG, "text of %zu bytes is too long", len);
    sink k = {.out = out, .max = max};
    bool want_bos = add_bos == LM_ADD_BOS_MODEL ? t->add_bos : add_bos != 0;
    bool want_eos = add_bos == LM_ADD_BOS_MODEL && t->add_eos;
    if (want_bos && t->bos >= 0) emit(&k, t->bos);

    fragment *f = NULL;
    size_t nf = 0;
    int rc = TNN_OK;
    if (len > 0) rc = partition(t, text, len, parse_special != 0, &f, &nf);
    bool prev_special = true; /* SPM: a space prefix before the first text */
    for (size_t i = 0; i < nf && rc == TNN_OK; i++) {
        if (f[i].id >= 0) {
            emit(&k, f[i].id);
            prev_special = true;
            continue;
        }
        const unsigned char *s = (const unsigned char *)text + f[i].off;
        if (t->kind == LM_VOCAB_SPM) {
            rc = spm_fragment(t, &k, s, f[i].len, t->add_space_prefix && prev_special);
            prev_special = false;
        } else {
            rc = bpe_fragment(t, &k, s, f[i].len);
        }
    }
    if (want_eos && t->eos >= 0) emit(&k, t->eos);
    free(f);
    free(k.sym);
    free(k.h.v);
    free(k.buf);
    if (rc == TNN_ERR_NOMEM) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    if (rc != TNN_OK) return rc;
    if (k.n > INT32_MAX) return TNN_ERR(TNN_ERR_OVERFLOW, "too many tokens");
    return (int32_t)k.n;
}

/* ------------------------------------------------------------------------ */
/* The vocabulary                                                           */
/* ------------------------------------------------------------------------ */

int32_t lm_tokenizer_n_vocab(const lm_tokenizer *t) {
    return t ? t->n_vocab : TNN_ERR(TNN_ERR_ARG, "NULL tokenizer");
}
int lm_tokenizer_kind(const lm_tokenizer *t) { return t ? t->kind : TNN_ERR(TNN_ERR_ARG, "NULL tokenizer"); }
int lm_tokenizer_pre(const lm_tokenizer *t) { return t ? t->pre : TNN_ERR(TNN_ERR_ARG, "NULL tokenizer"); }
int32_t lm_tokenizer_bos(const lm_tokenizer *t) { return t ? t->bos : -1; }
int32_t lm_tokenizer_eos(const lm_tokenizer *t) { return t ? t->eos : -1; }
int32_t lm_tokenizer_eot(const lm_tokenizer *t) { return t ? t->eot : -1; }
int32_t lm_tokenizer_unk(const lm_tokenizer *t) { return t ? t->unk : -1; }
int lm_tokenizer_add_bos(const lm_tokenizer *t) { return t && t->add_bos; }
int lm_tokenizer_add_eos(const lm_tokenizer *t) { return t && t->add_eos; }

int lm_token_is_eog(const lm_tokenizer *t, int32_t id) {
    if (!t) return 0;
    for (int32_t i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return 1;
    return 0;
}

int lm_token_is_control(const lm_tokenizer *t, int32_t id) {
    return t && id >= 0 && id < t->n_vocab && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN));
}

const char *lm_token_text(const lm_tokenizer *t, int32_t id, size_t *len) {
    if (!t) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL tokenizer");
    if (id < 0 || id >= t->n_vocab)
        return TNN_ERR_NULL(TNN_ERR_RANGE, "token id %d outside [0, %d)", id, t->n_vocab);
    if (len) *len = t->text_len[id];
    return t->arena + t->text_off[id];
}

int lm_token_type_of(const lm_tokenizer *t, int32_t id) {
    if (!t) return TNN_ERR(TNN_ERR_ARG, "NULL tokenizer");
    if (id < 0 || id >= t->n_vocab)
        return TNN_ERR(TNN_ERR_RANGE, "token id %d outside [0, %d)", id, t->n_vocab);
    int a = t->attr[id];
    return a & ATTR_USER_DEFINED ? LM_TOKEN_USER_DEFINED
           : a & ATTR_CONTROL    ? LM_TOKEN_CONTROL
           : a & ATTR_UNKNOWN    ? LM_TOKEN_UNKNOWN
           : a & ATTR_BYTE       ? LM_TOKEN_BYTE
           : a & ATTR_NORMAL     ? LM_TOKEN_NORMAL
           : a & ATTR_UNUSED     ? LM_TOKEN_UNUSED
                                 : LM_TOKEN_UNDEFINED;
}

int32_t lm_token_piece(const lm_tokenizer *t, int32_t id, int special, const char **piece) {
    if (!t || !piece) return TNN_ERR(TNN_ERR_ARG, "NULL argument");
    if (id < 0 || id >= t->n_vocab)
        return TNN_ERR(TNN_ERR_RANGE, "token id %d outside [0, %d)", id, t->n_vocab);
    *piece = t->piece_arena + t->piece_off[id];
    if (!special && (t->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN))) return 0;
    return (int32_t)t->piece_len[id];
}

/* ------------------------------------------------------------------------ */
/* Decoding                                                                 */
/* ------------------------------------------------------------------------ */

/* llama.cpp's clean_up_tokenization_spaces passes, on t[0..n): returns the
 * new length. */
static size_t clean_spaces(char *t, size_t n) {
    if (n < 2) return n;
    size_t total = 1;
    for (size_t i = 1; i < n; i++) { /* " ?", " !", " .", " ," */
        char x = t[i];
        if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
        t[total++] = x;
    }
    n = total;
    total = 1;
    for (size_t i = 1; i < n; i++) { /* " ' " -> "'" */
        char x = t[i];
        if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') {
            total--;
            t[++i] = '\0';
        }
        t[total++] = x;
    }
    n = total;
    total = 1;
    for (size_t i = 1; i < n; i++) { /* " 's", " 'm", " 're", " 've" */
        char x = t[i];
        if (t[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            char x1 = t[i + 1];
            if (x1 == 's' || x1 == 'm') total--;
            else if (i + 2 < n && ((x1 == 'r' && t[i + 2] == 'e') || (x1 == 'v' && t[i + 2] == 'e')))
                total--;
        }
        t[total++] = x;
    }
    return total;
}

int64_t lm_detokenize(const lm_tokenizer *t, const int32_t *ids, size_t n, int special,
                      char *out, size_t cap) {
    if (!t) return TNN_ERR(TNN_ERR_ARG, "NULL tokenizer");
    if ((!ids && n > 0) || (!out && cap > 0)) return TNN_ERR(TNN_ERR_ARG, "NULL array");
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab)
            return TNN_ERR(TNN_ERR_RANGE, "token %zu: id %d outside [0, %d)", i, ids[i], t->n_vocab);
        total += t->piece_len[ids[i]];
    }
    char *buf = malloc(total + 1);
    if (!buf) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        int32_t len = lm_token_piece(t, ids[i], special, &p);
        if (i == 0 && t->add_space_prefix && len > 0 && p[0] == ' ') p++, len--;
        memcpy(buf + m, p, (size_t)len);
        m += (size_t)len;
    }
    if (t->clean_spaces) m = clean_spaces(buf, m);
    if (cap) {
        size_t c = m < cap ? m : cap;
        memcpy(out, buf, c);
        if (m < cap) out[m] = '\0';
    }
    free(buf);
    return (int64_t)m;
}

struct lm_detokenizer {
    const lm_tokenizer *t;
    bool special, strip, first;
    unsigned char held[4]; /* start of an unfinished character */
    size_t n_held;
    char *out;
    size_t cap;
};

lm_detokenizer *lm_detokenizer_new(const lm_tokenizer *t, int flags) {
    if (!t) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL tokenizer");
    if (flags & ~(LM_DETOK_SPECIAL | LM_DETOK_STRIP_FIRST))
        return TNN_ERR_NULL(TNN_ERR_ARG, "unknown flags 0x%x", (unsigned)flags);
    lm_detokenizer *d = calloc(1, sizeof *d);
    if (!d) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    d->t = t;
    d->special = (flags & LM_DETOK_SPECIAL) != 0;
    d->strip = (flags & LM_DETOK_STRIP_FIRST) != 0;
    d->first = true;
    return d;
}

void lm_detokenizer_free(lm_detokenizer *d) {
    if (!d) return;
    free(d->out);
    free(d);
}

void lm_detokenizer_reset(lm_detokenizer *d) {
    if (!d) return;
    d->n_held = 0;
    d->first = true;
}

static const char REPLACEMENT[3] = {'\xef', '\xbf', '\xbd'};

const char *lm_detokenizer_feed(lm_detokenizer *d, int32_t id, size_t *len) {
    if (!d || !len) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL argument");
    const char *p;
    int32_t n = lm_token_piece(d->t, id, d->special, &p);
    if (n < 0) return NULL;
    if (d->first && d->strip && d->t->add_space_prefix && n > 0 && p[0] == ' ') p++, n--;
    d->first = false;
    /* worst case: every byte becomes U+FFFD */
    size_t need = 3 * ((size_t)n + d->n_held) + 1;
    if (need > d->cap) {
        char *no = realloc(d->out, need);
        if (!no) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
        d->out = no;
        d->cap = need;
    }
    /* the held bytes and the piece, seen as one string */
    unsigned char win[8];
    size_t m = 0, i = 0, total = d->n_held + (size_t)n;
#define BYTE_AT(j) ((j) < d->n_held ? d->held[(j)] : (unsigned char)p[(j) - d->n_held])
    while (i < total) {
        size_t w = total - i < 4 ? total - i : 4;
        for (size_t j = 0; j < w; j++) win[j] = BYTE_AT(i + j);
        int r = lm_utf8_valid_len(win, w);
        if (r > 0) {
            memcpy(d->out + m, win, (size_t)r);
            m += (size_t)r;
            i += (size_t)r;
        } else if (r == 0) { /* unfinished: hold it */
            break;
        } else {
            memcpy(d->out + m, REPLACEMENT, 3);
            m += 3;
            i++;
        }
    }
    size_t nh = total - i;
    for (size_t j = 0; j < nh; j++) win[j] = BYTE_AT(i + j);
#undef BYTE_AT
    memcpy(d->held, win, nh);
    d->n_held = nh;
    d->out[m] = '\0';
    *len = m;
    return d->out;
}

const char *lm_detokenizer_flush(lm_detokenizer *d, size_t *len) {
    if (!d || !len) return TNN_ERR_NULL(TNN_ERR_ARG, "NULL argument");
    size_t need = 3 * d->n_held + 1;
    if (need > d->cap) {
        char *no = realloc(d->out, need);
        if (!no) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
        d->out = no;
        d->cap = need;
    }
    size_t m = 0;
    for (size_t j = 0; j < d->n_held; j++, m += 3) memcpy(d->out + m, REPLACEMENT, 3);
    d->n_held = 0;
    d->out[m] = '\0';
    *len = m;
    return d->out;
}
