/* tokenizer.h - text <-> token ids for llama-family GGUF models: byte-level
 * BPE (`gpt2` model; pre-tokenizers gpt2, smollm, qwen2, llama-bpe) and
 * SentencePiece-style BPE (`llama` model, byte fallback), special and control
 * tokens, and a streaming decoder that hands out whole UTF-8 characters only.
 *
 * Behaviour follows llama.cpp's llama-vocab.cpp (the reference the tests
 * compare against, id for id), with these deliberate differences:
 *  - Invalid UTF-8 in the input is kept byte for byte: each bad byte becomes
 *    its byte token, and it counts as one "other" character (as U+FFFD does),
 *    where llama.cpp's byte-level BPE substitutes U+FFFD and its SPM takes a
 *    lead byte's length blindly (swallowing what follows). Where a byte-level
 *    vocabulary has no token for such a byte (SmolLM2 lacks 21 of the 256
 *    byte tokens, C0 C1 F5-FF among them),
 *    the character is read as llama.cpp reads it (U+FFFD, or an overlong
 *    form's code point), so those cases match llama.cpp's ids. Valid UTF-8
 *    tokenizes exactly as in llama.cpp; bytes of valid text that have no
 *    token are dropped, as there.
 *  - A vocabulary with no pre-tokenizer name (`tokenizer.ggml.pre` missing)
 *    uses the gpt2 rules; llama.cpp's "default" rules are not implemented and
 *    the name "default" is refused.
 *  - Decoding a byte-level token with a character outside GPT-2's byte map
 *    keeps that character's UTF-8 (llama.cpp writes "[UNK_BYTE_0x..]").
 *  - Where llama.cpp's choice depends on hash order (which of several
 *    end-of-turn texts is the EOT id; the order of special tokens of equal
 *    length) the first in llama.cpp's name list / the lowest id wins.
 *
 * Pre-tokenizers (the regexes of llama.cpp, written out by hand):
 *   gpt2      's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *   smollm    every \p{N} alone first, then gpt2 on the rest
 *   llama-bpe (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *             ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   (whole-word tokens
 *             skip the merges: "ignore_merges")
 *   qwen2     as llama-bpe with \p{N} (one digit) instead of \p{N}{1,3}
 * Special tokens (types CONTROL, USER_DEFINED, UNKNOWN) are cut out of the
 * text first, longest first; with parse_special = 0 only USER_DEFINED ones
 * are. Nothing here is part of the public ABI (tinynn.h).
 */
#ifndef TNN_LLM_TOKENIZER_H
#define TNN_LLM_TOKENIZER_H

#include "tinynn.h"

#include <stddef.h>
#include <stdint.h>

/* Vocabulary kinds (tokenizer.ggml.model). Values fixed, append-only. */
typedef enum lm_vocab_kind {
    LM_VOCAB_BPE = 0, /* "gpt2": byte-level BPE with merges */
    LM_VOCAB_SPM = 1, /* "llama": SentencePiece BPE by score, <0xXX> byte fallback */
    LM_VOCAB_KIND_COUNT
} lm_vocab_kind;

/* Pre-tokenizers (tokenizer.ggml.pre). Values fixed, append-only. */
typedef enum lm_pre_kind {
    LM_PRE_NONE = 0,   /* SPM vocabularies: no regex split */
    LM_PRE_GPT2 = 1,   /* "gpt-2", "gpt2" (also used when the file names none) */
    LM_PRE_SMOLLM = 2, /* "smollm" */
    LM_PRE_QWEN2 = 3,  /* "qwen2", "deepseek-r1-qwen" */
    LM_PRE_LLAMA3 = 4, /* "llama-bpe", "llama3", "llama-v3" */
    LM_PRE_KIND_COUNT
} lm_pre_kind;

/* Token types, as stored in tokenizer.ggml.token_type. Values fixed. */
typedef enum lm_token_type {
    LM_TOKEN_UNDEFINED = 0,
    LM_TOKEN_NORMAL = 1,
    LM_TOKEN_UNKNOWN = 2,
    LM_TOKEN_CONTROL = 3,
    LM_TOKEN_USER_DEFINED = 4,
    LM_TOKEN_UNUSED = 5,
    LM_TOKEN_BYTE = 6,
    LM_TOKEN_TYPE_COUNT
} lm_token_type;

/* The pre-tokenizer names lm_pre_from_name accepts, for messages. */
#define LM_PRE_SUPPORTED "gpt2 (gpt-2), smollm, qwen2 (deepseek-r1-qwen), llama-bpe (llama3, llama-v3)"

typedef struct lm_tokenizer lm_tokenizer;

/* A vocabulary given as plain arrays (tests, fuzzing, converters). Every
 * array is copied. */
typedef struct lm_tokenizer_desc {
    int kind;                    /* lm_vocab_kind */
    int pre;                     /* lm_pre_kind; LM_PRE_NONE for SPM */
    int32_t n_tokens;            /* >= 1 */
    const char *const *tokens;   /* n_tokens texts (gpt2: byte-level encoded) */
    const size_t *token_lens;    /* lengths, or NULL for NUL-terminated texts */
    const int32_t *types;        /* lm_token_type per token, or NULL (all NORMAL) */
    const float *scores;         /* SPM merge scores, or NULL (all 0) */
    const char *const *merges;   /* BPE: n_merges "left right", rank = index */
    int32_t n_merges;
    int32_t bos, eos, unk;       /* ids, or -1 for none */
    int32_t eot, eom;            /* ids, or -1 to find them by text (<|im_end|>, ...) */
    const int32_t *fim;          /* 6 ids (prefix, suffix, middle, pad, repo, file
                                  * separator; -1 = find by text), or NULL: all by text */
    int add_bos;                 /* add BOS when lm_tokenize asks for the model's choice */
    int add_eos;                 /* same for EOS */
    int add_space_prefix;        /* SPM: prefix text with a space; -1 = kind's default */
} lm_tokenizer_desc;

/* Builds a tokenizer; NULL with the error set (TNN_ERR_ARG for a bad
 * description, TNN_ERR_FORMAT for duplicate token texts, TNN_ERR_NOMEM).
 * BPE merges whose parts or result are not tokens are dropped. */
lm_tokenizer *lm_tokenizer_new(const lm_tokenizer_desc *d);

/* Builds the tokenizer of a GGUF file from tokenizer.ggml.* keys: model,
 * pre, tokens, token_type, scores, merges, bos/eos/eot/eom/unknown/fim ids,
 * add_bos_token, add_eos_token, add_space_prefix. NULL with the error set,
 * naming the missing or unsupported key or value (TNN_ERR_FORMAT for a
 * missing or mistyped key, TNN_ERR_UNSUPPORTED for an unknown model or
 * pre-tokenizer, listing the supported ones). */
lm_tokenizer *lm_tokenizer_from_gguf(const tnn_gguf *g);

/* NULL is a no-op. */
void lm_tokenizer_free(lm_tokenizer *t);

/* Parses a tokenizer.ggml.pre name; -1 if unknown. */
int lm_pre_from_name(const char *name);
const char *lm_pre_name(int pre); /* "smollm", ...; "unknown" */

/* add_bos argument of lm_tokenize. */
#define LM_ADD_BOS_MODEL (-1) /* as the model says: BOS/EOS per its add_bos/add_eos flags */

/* Tokenizes `len` bytes of `text` (any bytes: invalid UTF-8 goes through
 * byte tokens). add_bos: 0 = nothing added, 1 = a BOS first (when the vocab
 * has one), LM_ADD_BOS_MODEL = what the model's flags say (BOS and EOS).
 * parse_special: 1 = text such as "<|im_start|>" becomes its control token;
 * 0 = control tokens are plain text (user-defined tokens are always
 * matched, as llama.cpp does).
 * Returns the number of tokens the text needs (>= 0) and writes the first
 * min(that, max) of them to out, like snprintf: a result > max means the
 * buffer was too small. Negative status on error (NULL tokenizer, NULL text
 * with len > 0, NULL out with max > 0, max < 0, len > INT32_MAX: TNN_ERR_ARG;
 * TNN_ERR_NOMEM). */
int32_t lm_tokenize(const lm_tokenizer *t, const char *text, size_t len, int add_bos,
                    int parse_special, int32_t *out, int32_t max);

/* ---- the vocabulary ---- */

int32_t lm_tokenizer_n_vocab(const lm_tokenizer *t);
int lm_tokenizer_kind(const lm_tokenizer *t); /* lm_vocab_kind, or negative status */
int lm_tokenizer_pre(const lm_tokenizer *t);  /* lm_pre_kind, or negative status */
/* Special ids, or -1 when the vocabulary has none. */
int32_t lm_tokenizer_bos(const lm_tokenizer *t);
int32_t lm_tokenizer_eos(const lm_tokenizer *t);
int32_t lm_tokenizer_eot(const lm_tokenizer *t);
int32_t lm_tokenizer_unk(const lm_tokenizer *t);
/* The model's flags: add a BOS / EOS when tokenizing a prompt. */
int lm_tokenizer_add_bos(const lm_tokenizer *t);
int lm_tokenizer_add_eos(const lm_tokenizer *t);
/* 1 if generation ends at `id` (EOS, EOT, EOM and the end-of-generation
 * texts llama.cpp knows: <|im_end|>, <|eot_id|>, <|endoftext|>, ...). */
int lm_token_is_eog(const lm_tokenizer *t, int32_t id);
/* 1 for tokens that decode to nothing unless special tokens are rendered
 * (control and unknown tokens). */
int lm_token_is_control(const lm_tokenizer *t, int32_t id);
/* The token's text as stored in the vocabulary (gpt2: byte-level encoded;
 * SPM: with U+2581 for spaces), NUL-terminated; NULL if id is out of range.
 * *len (may be NULL) gets its length. Owned by the tokenizer. */
const char *lm_token_text(const lm_tokenizer *t, int32_t id, size_t *len);
int lm_token_type_of(const lm_tokenizer *t, int32_t id); /* lm_token_type or status */
/* The bytes a token decodes to (not necessarily whole UTF-8 characters):
 * control/unknown tokens give their text when `special`, else nothing.
 * Returns the length and points *piece at bytes owned by the tokenizer;
 * negative status for a bad id. */
int32_t lm_token_piece(const lm_tokenizer *t, int32_t id, int special, const char **piece);

/* Decodes ids to text in one go, as llama.cpp's llama_detokenize with
 * remove_special = 0: SPM's leading prefix space is dropped, and the
 * vocabularies that ask for it get llama.cpp's clean-up of spaces before
 * punctuation. Raw bytes (invalid UTF-8 stays as it is). Returns the length
 * needed (writes min(that, cap) bytes, and a NUL when it fits), or a
 * negative status (bad id: TNN_ERR_RANGE). */
int64_t lm_detokenize(const lm_tokenizer *t, const int32_t *ids, size_t n, int special,
                      char *out, size_t cap);

/* ---- streaming decode ---- */

typedef struct lm_detokenizer lm_detokenizer;

/* Flags of lm_detokenizer_new. */
enum {
    LM_DETOK_SPECIAL = 1,     /* render control tokens as their text (else nothing) */
    LM_DETOK_STRIP_FIRST = 2, /* the stream starts a tokenized text: drop the leading
                               * space of the first token where the vocabulary adds
                               * one when tokenizing (SPM), as lm_detokenize does */
};
/* A decoder for one stream of ids (flags: LM_DETOK_*). It keeps a pointer
 * to `t`. NULL with the error set for a NULL tokenizer or unknown flags. */
lm_detokenizer *lm_detokenizer_new(const lm_tokenizer *t, int flags);
void lm_detokenizer_free(lm_detokenizer *d);
/* Starts a new stream (forgets held bytes). */
void lm_detokenizer_reset(lm_detokenizer *d);
/* Feeds one id and returns the text that is now complete: whole, valid
 * UTF-8 characters only. Bytes of a character that is not finished yet are
 * held for the next call; a byte that cannot be part of a valid character
 * comes out as U+FFFD. *len gets the length. The pointer stays valid until
 * the next call on `d`. NULL with the error set for a bad id (TNN_ERR_RANGE;
 * the stream is unchanged) or TNN_ERR_NOMEM. */
const char *lm_detokenizer_feed(lm_detokenizer *d, int32_t id, size_t *len);
/* Ends the stream: held bytes of an unfinished character come out as one
 * U+FFFD each. Same return convention. */
const char *lm_detokenizer_flush(lm_detokenizer *d, size_t *len);

/* ---- helpers shared with the tests ---- */

/* Code point classes of the pre-tokenizers (src/llm/unicode_tables.c). */
enum { LM_UCLS_OTHER = 0, LM_UCLS_LETTER = 1, LM_UCLS_NUMBER = 2, LM_UCLS_SPACE = 3 };
int lm_unicode_class(uint32_t cp);

/* Splits text into the words of pre-tokenizer `pre` (no special tokens):
 * writes the byte offset where each word ends to ends[0..min(n, max)) and
 * returns the number of words n, or a negative status. */
int64_t lm_pre_split(int pre, const char *text, size_t len, size_t *ends, size_t max);

/* Length of the well-formed UTF-8 character at s[0..n) (1..4), 0 if s holds
 * only a proper prefix of one, -1 if s[0] cannot start one here (Unicode
 * Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF). */
int lm_utf8_valid_len(const unsigned char *s, size_t n);
/* Writes code point cp (< 0x110000) as UTF-8 to o (room for 4 bytes);
 * returns the byte count. */
int lm_utf8_put(uint32_t cp, char *o);

#endif
