/* fuzz_tokenizer.c - libFuzzer target for the tokenizer (src/llm/tokenizer.c):
 * random bytes are tokenized by small fixed vocabularies built in code (byte
 * -level BPE under each pre-tokenizer, and SentencePiece with byte fallback),
 * with special parsing on or off, then decoded one-shot and streaming; the
 * round-trip and streaming promises are checked (traps if one breaks).
 * Input: byte 0 picks the case (% 5: gpt2, smollm, qwen2, llama-bpe, SPM;
 * bit 3: parse_special; (>> 4) % 3 - 1: add_bos mode; >= 0xC0: a BPE vocab
 * lacking some byte tokens), the rest is the text.
 * Build and run: fuzz/run.sh [SECONDS].
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "llm/tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROMISE(cond)                                                                         \
    do {                                                                                      \
        if (!(cond)) __builtin_trap();                                                        \
    } while (0)

/* Words that become merged tokens (BPE: merged left to right, one merge per
 * step; SPM: pieces scored by their order). */
static const char *const words[] = {
    " the", "the", " a", "ing", " and", "he", "in", "er", "on", " hello", "ll", "12", "123",
    "'s", "  ", "\n\n", " \n", "\xc3\xa9", " caf\xc3\xa9", "\xe4\xbd\xa0\xe5\xa5\xbd",
    "\xf0\x9f\x98\x80", " wor", " world", "<|", "|>", "<|im", "ab", "bc", "aa", "aaa", "\t\t",
    " 1", "..", "!!", "\xe2\x96\x81\xe2\x96\x81", "\xff\xfe"};
static const char *const specials[] = {"<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool>",
                                       "<s>", "</s>"};
static const int special_types[] = {LM_TOKEN_CONTROL, LM_TOKEN_CONTROL, LM_TOKEN_CONTROL,
                                    LM_TOKEN_USER_DEFINED, LM_TOKEN_CONTROL, LM_TOKEN_CONTROL};
#define N_WORDS (sizeof words / sizeof words[0])
#define N_SPECIAL (sizeof specials / sizeof specials[0])
#define MAX_TOK 1024

static size_t put_utf8(uint32_t cp, char *o) {
    if (cp < 0x80) return o[0] = (char)cp, 1;
    return o[0] = (char)(0xC0 | cp >> 6), o[1] = (char)(0x80 | (cp & 63)), 2; /* cp < 0x800 */
}

static uint32_t byte_cp(int b) { /* GPT-2's byte -> code point map */
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int keep = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || c >= 0xAE;
        if (c == b) return keep ? (uint32_t)c : (uint32_t)(256 + n);
        if (!keep) n++;
    }
    return 0;
}

static char *byte_level(const char *raw, size_t n) {
    char *o = malloc(2 * n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += put_utf8(byte_cp((unsigned char)raw[i]), o + k);
    o[k] = '\0';
    return o;
}

static char *tok_text[MAX_TOK];
static int32_t tok_type[MAX_TOK];
static float tok_score[MAX_TOK];
static int n_tok;
static char *merge_text[MAX_TOK];
static int n_merge;

static int find(const char *s) {
    for (int i = 0; i < n_tok; i++)
        if (strcmp(tok_text[i], s) == 0) return i;
    return -1;
}

static int add(char *s, int type, float score) {
    int i = find(s);
    if (i >= 0) {
        free(s);
        return i;
    }
    tok_text[n_tok] = s;
    tok_type[n_tok] = type;
    tok_score[n_tok] = score;
    return n_tok++;
}

static void reset_vocab(void) {
    for (int i = 0; i < n_tok; i++) free(tok_text[i]);
    for (int i = 0; i < n_merge; i++) free(merge_text[i]);
    n_tok = n_merge = 0;
}

/* holey: without the byte tokens SmolLM2 also lacks (some controls, C0 C1
 * F1 F2 F5-FF), so bytes with no token are exercised too */
static lm_tokenizer *build_bpe(int pre, int holey) {
    reset_vocab();
    for (size_t i = 0; i < N_SPECIAL; i++) add(strdup(specials[i]), special_types[i], 0);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (holey && (b == 4 || b == 0x13 || b == 0xC0 || b == 0xC1 || b == 0xF1 || b == 0xF2 || b >= 0xF5))
            continue;
        add(byte_level(&c, 1), LM_TOKEN_NORMAL, 0);
    }
    for (size_t w = 0; w < N_WORDS; w++) {
        size_t n = strlen(words[w]);
        if (holey && strchr(words[w], '\xff')) continue;
        for (size_t k = 2; k <= n; k++) {
            char *left = byte_level(words[w], k - 1), *right = byte_level(words[w] + k - 1, 1);
            char *m = malloc(strlen(left) + strlen(right) + 2);
            strcpy(m, left);
            strcat(m, " ");
            strcat(m, right);
            free(left);
            free(right);
            merge_text[n_merge++] = m;
            add(byte_level(words[w], k), LM_TOKEN_NORMAL, 0);
        }
    }
    lm_tokenizer_desc d = {.kind = LM_VOCAB_BPE, .pre = pre, .n_tokens = n_tok,
                           .tokens = (const char *const *)tok_text, .types = tok_type,
                           .merges = (const char *const *)merge_text, .n_merges = n_merge,
                           .bos = 0, .eos = 2, .unk = -1, .eot = -1, .eom = -1,
                           .add_bos = 1, .add_eos = 1, .add_space_prefix = -1};
    lm_tokenizer *t = lm_tokenizer_new(&d);
    PROMISE(t != NULL);
    return t;
}

static lm_tokenizer *build_spm(void) {
    reset_vocab();
    add(strdup("<unk>"), LM_TOKEN_UNKNOWN, 0);
    for (size_t i = 0; i < N_SPECIAL; i++) add(strdup(specials[i]), special_types[i], 0);
    for (int b = 0; b < 256; b++) {
        char *s = malloc(8);
        static const char hex[] = "0123456789ABCDEF";
        s[0] = '<', s[1] = '0', s[2] = 'x', s[3] = hex[b >> 4], s[4] = hex[b & 15], s[5] = '>';
        s[6] = '\0';
        add(s, LM_TOKEN_BYTE, 0);
    }
    add(strdup("\xe2\x96\x81"), LM_TOKEN_NORMAL, -1);
    for (size_t w = 0; w < N_WORDS; w++) { /* every prefix of every word, spaces escaped */
        size_t n = strlen(words[w]);
        for (size_t k = 1; k <= n; k++) {
            char *s = malloc(3 * k + 1);
            size_t m = 0;
            for (size_t i = 0; i < k; i++) {
                if (words[w][i] == ' ') memcpy(s + m, "\xe2\x96\x81", 3), m += 3;
                else s[m++] = words[w][i];
            }
            s[m] = '\0';
            add(s, LM_TOKEN_NORMAL, -(float)(w * 7 + k % 5));
        }
    }
    lm_tokenizer_desc d = {.kind = LM_VOCAB_SPM, .pre = LM_PRE_NONE, .n_tokens = n_tok,
                           .tokens = (const char *const *)tok_text, .types = tok_type,
                           .scores = tok_score, .bos = 5, .eos = 6, .unk = 0, .eot = -1,
                           .eom = -1, .add_bos = 1, .add_eos = 0, .add_space_prefix = -1};
    lm_tokenizer *t = lm_tokenizer_new(&d);
    PROMISE(t != NULL);
    return t;
}

/* Strict UTF-8 sanitizer, independent of the library: a byte that does not
 * start a well-formed character (Unicode Table 3-7) becomes U+FFFD. */
static size_t sanitize(const unsigned char *s, size_t n, char *o) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t need = c < 0x80 ? 0 : (c >= 0xC2 && c <= 0xDF) ? 1 : (c >= 0xE0 && c <= 0xEF) ? 2
                                   : (c >= 0xF0 && c <= 0xF4) ? 3 : 99;
        int ok = 0;
        if (need != 99 && i + need < n) {
            uint32_t cp = need == 0 ? c : c & (0x3F >> need);
            ok = 1;
            for (size_t j = 1; j <= need; j++) {
                if ((s[i + j] & 0xC0) != 0x80) ok = 0;
                cp = cp << 6 | (s[i + j] & 63u);
            }
            static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
            if (ok && (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = 0;
        }
        if (ok) {
            memcpy(o + k, s + i, need + 1);
            k += need + 1;
            i += need + 1;
        } else {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        }
    }
    return k;
}

static int valid(const char *s, size_t n) {
    char *tmp = malloc(3 * n + 1);
    size_t m = sanitize((const unsigned char *)s, n, tmp);
    int ok = m == n && memcmp(tmp, s, n) == 0;
    free(tmp);
    return ok;
}

static lm_tokenizer *toks[5], *holey[4];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!toks[0]) {
        static const int pres[4] = {LM_PRE_GPT2, LM_PRE_SMOLLM, LM_PRE_QWEN2, LM_PRE_LLAMA3};
        for (int i = 0; i < 4; i++) toks[i] = build_bpe(pres[i], 0), holey[i] = build_bpe(pres[i], 1);
        toks[4] = build_spm();
        reset_vocab();
    }
    if (size < 1) return 0;
    int which = data[0] % 5, parse_special = (data[0] >> 3) & 1, bos_mode = (data[0] >> 4) % 3 - 1;
    int is_holey = data[0] >= 0xC0 && which < 4;
    const lm_tokenizer *t = is_holey ? holey[which] : toks[which];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int spm = which == 4;

    /* counts: with no buffer, a full one and a short one */
    int32_t need = lm_tokenize(t, text, len, bos_mode, parse_special, NULL, 0);
    PROMISE(need >= 0 && (size_t)need <= 4 * len + 3);
    int32_t *ids = malloc(((size_t)need + 2) * sizeof *ids);
    ids[need] = ids[need + 1] = -12345;
    PROMISE(lm_tokenize(t, text, len, bos_mode, parse_special, ids, need) == need);
    PROMISE(ids[need] == -12345);
    int32_t n_voc = lm_tokenizer_n_vocab(t);
    for (int32_t i = 0; i < need; i++) PROMISE(ids[i] >= 0 && ids[i] < n_voc);
    if (need > 1) {
        int32_t *half = malloc((size_t)need * sizeof *half);
        int32_t h = need / 2;
        for (int32_t i = 0; i < need; i++) half[i] = -7;
        PROMISE(lm_tokenize(t, text, len, bos_mode, parse_special, half, h) == need);
        PROMISE(memcmp(half, ids, (size_t)h * sizeof *ids) == 0 && half[h] == -7);
        free(half);
    }

    /* pre-tokenizer words tile the text */
    if (!spm) {
        size_t *ends = malloc((len + 1) * sizeof *ends);
        int64_t nw = lm_pre_split(lm_tokenizer_pre(t), text, len, ends, len + 1);
        PROMISE(nw >= 0 && (size_t)nw <= len);
        for (int64_t i = 0; i < nw; i++) PROMISE(ends[i] > (i ? ends[i - 1] : 0) && ends[i] <= len);
        PROMISE(nw == 0 ? len == 0 : ends[nw - 1] == len);
        free(ends);
    }

    /* one-shot decode of the rendered pieces */
    int64_t m = lm_detokenize(t, ids, (size_t)need, 1, NULL, 0);
    PROMISE(m >= 0);
    char *dec = malloc((size_t)m + 1);
    PROMISE(lm_detokenize(t, ids, (size_t)need, 1, dec, (size_t)m + 1) == m);
    int pre = lm_tokenizer_pre(t);
    int no_cleanup = pre == LM_PRE_SMOLLM || pre == LM_PRE_QWEN2;
    if (bos_mode == 0 && !spm && no_cleanup && !is_holey) { /* byte-level: lossless */
        PROMISE((size_t)m == len && memcmp(dec, text, len) == 0);
    }
    /* SPM: U+2581 reads back as a space (not after a special token, which
     * gets a prefix space: the user-defined <tool> is always parsed) */
    if (bos_mode == 0 && spm && !parse_special && !memmem(text, len, "<tool>", 6)) {
        char *want = malloc(len + 1);
        size_t k = 0;
        for (size_t i = 0; i < len;) {
            if (i + 3 <= len && memcmp(text + i, "\xe2\x96\x81", 3) == 0) want[k++] = ' ', i += 3;
            else want[k++] = text[i++];
        }
        PROMISE((size_t)m == k && memcmp(dec, want, k) == 0);
        free(want);
    }

    /* streaming: valid UTF-8 in every chunk; all chunks = the sanitized
     * concatenation of the pieces (no clean-up) */
    lm_detokenizer *d = lm_detokenizer_new(t, LM_DETOK_SPECIAL | LM_DETOK_STRIP_FIRST);
    size_t raw_cap = 64, raw_n = 0, st_cap = 64, st_n = 0;
    char *raw = malloc(raw_cap), *st = malloc(st_cap);
    for (int32_t i = 0; i <= need; i++) {
        size_t k;
        const char *p = i < need ? lm_detokenizer_feed(d, ids[i], &k) : lm_detokenizer_flush(d, &k);
        PROMISE(p != NULL && valid(p, k));
        while (st_n + k > st_cap) st = realloc(st, st_cap *= 2);
        memcpy(st + st_n, p, k);
        st_n += k;
        if (i < need) {
            const char *piece;
            int32_t pl = lm_token_piece(t, ids[i], 1, &piece);
            PROMISE(pl >= 0);
            if (i == 0 && spm && pl > 0 && piece[0] == ' ') piece++, pl--;
            while (raw_n + (size_t)pl > raw_cap) raw = realloc(raw, raw_cap *= 2);
            memcpy(raw + raw_n, piece, (size_t)pl);
            raw_n += (size_t)pl;
        }
    }
    char *san = malloc(3 * raw_n + 1);
    size_t san_n = sanitize((const unsigned char *)raw, raw_n, san);
    PROMISE(san_n == st_n && memcmp(san, st, st_n) == 0);
    if (bos_mode == 0 && !spm && !is_holey) { /* byte-level, any pre-tokenizer: the text */
        char *want = malloc(3 * len + 1);
        size_t wn = sanitize((const unsigned char *)text, len, want);
        PROMISE(wn == st_n && memcmp(want, st, st_n) == 0);
        free(want);
    }
    lm_detokenizer_free(d);
    free(san);
    free(raw);
    free(st);
    free(dec);
    free(ids);
    return 0;
}
