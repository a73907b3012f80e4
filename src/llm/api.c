/* api.c - the public language-model functions of tinynn.h (tnn_llm_*,
 * tnn_sampler_*): lm_llama, lm_tokenizer, lm_sampler and chat.c behind
 * opaque handles, with the checks an FFI caller needs.
 */
#include "chat.h"
#include "llama.h"
#include "sampler.h"
#include "tokenizer.h"

#include "../core/internal.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LLM_MAGIC 0x4c4c4d31u /* "LLM1" */

struct tnn_llm {
    uint32_t magic;
    lm_llama *lm;
    lm_tokenizer *tok;
    int32_t *ids; /* the tokens in the cache, n_ctx of room */
    float *logits;
    int32_t n_prompt, n_generated;
    double prompt_s, generate_s;
};

struct tnn_sampler {
    lm_sampler_params p;
    lm_sampler sm; /* sized on first use; a new vocabulary size resizes it */
    bool ready;
};

/* An error of the layers below, named after the public function that met
 * it (their message kept after it). */
static int64_t wrap(int64_t rc, const char *func) {
    if (rc >= 0) return rc;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", tnn_last_error());
    return tnn__error((int)rc, func, "%s", msg);
}

static int check_llm(const tnn_llm *m, const char *func) {
    if (!m || m->magic != LLM_MAGIC) return tnn__error(TNN_ERR_ARG, func, "model is NULL or closed");
    return TNN_OK;
}

tnn_llm *tnn_llm_open(const char *path, int32_t n_ctx, int32_t flags) {
    if (!path) return TNN_ERR_NULL(TNN_ERR_ARG, "path is NULL");
    if (n_ctx < 0 || (flags & ~(TNN_LLM_CUDA | TNN_LLM_KV_F32)))
        return TNN_ERR_NULL(TNN_ERR_ARG, "n_ctx=%d, flags=%d: want n_ctx >= 0 and TNN_LLM_* flags",
                            n_ctx, flags);
    tnn_llm *m = calloc(1, sizeof *m);
    if (!m) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    m->lm = lm_llama_load(path, n_ctx, flags & TNN_LLM_KV_F32 ? TNN_F32 : TNN_F16,
                          flags & TNN_LLM_CUDA);
    if (m->lm) {
        m->tok = lm_tokenizer_from_gguf(lm_llama_gguf(m->lm));
        if (!m->tok) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", tnn_last_error());
            tnn__error(tnn_last_status(), "lm_tokenizer_from_gguf", "%s: %s", path, msg);
        }
    }
    if (m->tok) {
        tnn_clear_error(); /* optional keys the tokenizer looked for */
        m->ids = malloc(sizeof *m->ids * (size_t)lm_llama_n_ctx(m->lm));
        m->logits = malloc(sizeof *m->logits * (size_t)lm_llama_hparams_of(m->lm)->n_vocab);
        if (!m->ids || !m->logits) tnn__error(TNN_ERR_NOMEM, __func__, "out of memory");
    }
    if (!m->ids || !m->logits) {
        int rc = tnn_last_status();
        free(m->ids);
        free(m->logits);
        lm_tokenizer_free(m->tok);
        lm_llama_free(m->lm);
        free(m);
        wrap(rc ? rc : TNN_ERR_INTERNAL, __func__);
        return NULL;
    }
    m->magic = LLM_MAGIC;
    return m;
}

int tnn_llm_load_lora(tnn_llm *m, const char *adapter_path, float scale) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    return (int)wrap(lm_llama_add_lora(m->lm, adapter_path, scale), __func__);
}

void tnn_llm_close(tnn_llm *m) {
    if (!m || check_llm(m, __func__) != TNN_OK) return;
    m->magic = 0;
    free(m->ids);
    free(m->logits);
    lm_tokenizer_free(m->tok);
    lm_llama_free(m->lm);
    free(m);
}

#define HP(m) lm_llama_hparams_of((m)->lm)

int32_t tnn_llm_n_vocab(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : HP(m)->n_vocab;
}

int32_t tnn_llm_n_ctx(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : lm_llama_n_ctx(m->lm);
}

int32_t tnn_llm_n_embd(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : HP(m)->n_embd;
}

int32_t tnn_llm_n_layer(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : HP(m)->n_layer;
}

const char *tnn_llm_arch(const tnn_llm *m) {
    return check_llm(m, __func__) ? NULL : HP(m)->arch;
}

const tnn_gguf *tnn_llm_gguf(const tnn_llm *m) {
    return check_llm(m, __func__) ? NULL : lm_llama_gguf(m->lm);
}

int32_t tnn_llm_pos(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : lm_llama_pos(m->lm);
}

int tnn_llm_rewind(tnn_llm *m, int32_t pos) {
    int rc = check_llm(m, __func__);
    return rc ? rc : (int)wrap(lm_llama_rewind(m->lm, pos), __func__);
}

/* Appends tokens through lm_llama (the last token's logits, or every
 * token's) and keeps their ids. */
static int eval_tokens(tnn_llm *m, const int32_t *tokens, int32_t n, float *logits, bool all,
                       const char *func) {
    int rc = check_llm(m, func);
    if (rc) return rc;
    if (!tokens || n < 1 || (all && !logits))
        return tnn__error(TNN_ERR_ARG, func, "want n >= 1 tokens (n=%d)%s", n,
                          all ? " and logits" : "");
    int32_t p0 = lm_llama_pos(m->lm);
    rc = all ? lm_llama_eval_all(m->lm, tokens, n, logits)
             : lm_llama_eval(m->lm, tokens, n, logits);
    if (rc) return (int)wrap(rc, func);
    memcpy(m->ids + p0, tokens, sizeof *tokens * (size_t)n);
    return TNN_OK;
}

int tnn_llm_eval(tnn_llm *m, const int32_t *tokens, int32_t n, float *logits) {
    return eval_tokens(m, tokens, n, logits, false, __func__);
}

int tnn_llm_eval_logits(tnn_llm *m, const int32_t *tokens, int32_t n, float *logits) {
    return eval_tokens(m, tokens, n, logits, true, __func__);
}

/* A text's tokens (malloc'd) in *ids: their count, or a negative status
 * (TNN_ERR_ARG for none). */
static int32_t tokens_of(const tnn_llm *m, const char *text, size_t len, int32_t flags,
                         int32_t **ids) {
    *ids = NULL;
    int32_t n = tnn_llm_tokenize(m, text, len, flags, NULL, 0);
    if (n == 0) return TNN_ERR(TNN_ERR_ARG, "the text gives no tokens");
    if (n < 0) return n;
    *ids = malloc(sizeof **ids * (size_t)n);
    if (!*ids) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    n = tnn_llm_tokenize(m, text, len, flags, *ids, n);
    if (n < 0) {
        free(*ids);
        *ids = NULL;
    }
    return n;
}

int tnn_llm_perplexity(tnn_llm *m, const char *text, size_t len, int32_t chunk,
                       int32_t max_chunks, double *ppl, int32_t *n_scored) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    int32_t n_ctx = lm_llama_n_ctx(m->lm), V = HP(m)->n_vocab;
    if (chunk == 0) chunk = n_ctx < 512 ? n_ctx : 512;
    if (!text || !ppl || chunk < 4 || chunk > n_ctx || max_chunks < 0)
        return TNN_ERR(TNN_ERR_ARG, "want text, ppl, 4 <= chunk <= the context (%d) and "
                                    "max_chunks >= 0 (chunk=%d, max_chunks=%d)",
                       n_ctx, chunk, max_chunks);
    int32_t *ids;
    int32_t n = tokens_of(m, text, len, TNN_TOK_ADD_SPECIAL, &ids);
    if (n >= 0 && n < chunk)
        n = TNN_ERR(TNN_ERR_RANGE, "the text has %d tokens, fewer than one chunk of %d", n, chunk);
    if (n < 0) {
        free(ids);
        return (int)wrap(n, __func__);
    }
    float *lg = malloc(sizeof *lg * (size_t)chunk * (size_t)V);
    if (!lg) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    int32_t chunks = n / chunk, first = chunk / 2, bos = lm_tokenizer_bos(m->tok), scored = 0;
    if (max_chunks > 0 && chunks > max_chunks) chunks = max_chunks;
    bool add_bos = lm_tokenizer_add_bos(m->tok) && bos >= 0;
    double nll = 0;
    for (int32_t c = 0; !rc && c < chunks; c++) {
        int32_t *t = ids + (size_t)c * chunk; /* scored from t[first + 1]: t[0] is free */
        if (add_bos) t[0] = bos;
        lm_llama_rewind(m->lm, 0);
        rc = tnn_llm_eval_logits(m, t, chunk, lg);
        for (int32_t j = first; !rc && j + 1 < chunk; j++) {
            const float *row = lg + (size_t)j * V;
            double mx = row[0], sum = 0;
            for (int32_t v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
            for (int32_t v = 0; v < V; v++) sum += exp((double)row[v] - mx);
            nll += log(sum) + mx - row[t[j + 1]];
            scored++;
        }
    }
    free(ids);
    free(lg);
    if (rc) return wrap(rc, __func__);
    *ppl = exp(nll / scored);
    if (n_scored) *n_scored = scored;
    return TNN_OK;
}

/* ---- tokenizer ---- */

int32_t tnn_llm_tokenize(const tnn_llm *m, const char *text, size_t len, int32_t flags,
                         int32_t *out, int32_t cap) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if (flags & ~(TNN_TOK_ADD_SPECIAL | TNN_TOK_PARSE_SPECIAL))
        return TNN_ERR(TNN_ERR_ARG, "flags=%d: want TNN_TOK_ADD_SPECIAL | TNN_TOK_PARSE_SPECIAL",
                       flags);
    return (int32_t)wrap(lm_tokenize(m->tok, text, len,
                                     flags & TNN_TOK_ADD_SPECIAL ? LM_ADD_BOS_MODEL : 0,
                                     (flags & TNN_TOK_PARSE_SPECIAL) != 0, out, cap),
                         __func__);
}

int64_t tnn_llm_detokenize(const tnn_llm *m, const int32_t *ids, size_t n, int32_t flags,
                           char *out, size_t cap) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if ((flags & ~TNN_TOK_RENDER_SPECIAL) || (!ids && n) || (!out && cap))
        return TNN_ERR(TNN_ERR_ARG, "want ids when n > 0, out when cap > 0 and flags "
                                    "TNN_TOK_RENDER_SPECIAL or 0 (flags=%d)", flags);
    return wrap(lm_detokenize(m->tok, ids, n, (flags & TNN_TOK_RENDER_SPECIAL) != 0, out, cap),
                __func__);
}

int32_t tnn_llm_token_piece(const tnn_llm *m, int32_t id, int32_t flags, char *out,
                            int32_t cap) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if ((flags & ~TNN_TOK_RENDER_SPECIAL) || cap < 0 || (!out && cap))
        return TNN_ERR(TNN_ERR_ARG, "want cap >= 0, out when cap > 0 and flags "
                                    "TNN_TOK_RENDER_SPECIAL or 0 (flags=%d, cap=%d)", flags, cap);
    const char *piece;
    int32_t n = lm_token_piece(m->tok, id, (flags & TNN_TOK_RENDER_SPECIAL) != 0, &piece);
    if (n < 0) return (int32_t)wrap(n, __func__);
    if (cap > 0) {
        memcpy(out, piece, (size_t)(n < cap ? n : cap));
        if (n < cap) out[n] = 0;
    }
    return n;
}

int32_t tnn_llm_token_bos(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : lm_tokenizer_bos(m->tok);
}

int32_t tnn_llm_token_eos(const tnn_llm *m) {
    int rc = check_llm(m, __func__);
    return rc ? rc : lm_tokenizer_eos(m->tok);
}

int tnn_llm_token_is_eog(const tnn_llm *m, int32_t id) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if (id < 0 || id >= lm_tokenizer_n_vocab(m->tok))
        return TNN_ERR(TNN_ERR_RANGE, "token %d is outside the vocabulary (%d)", id,
                       lm_tokenizer_n_vocab(m->tok));
    return lm_token_is_eog(m->tok, id);
}

/* ---- chat ---- */

/* The text of a special token, or NULL. */
static const char *token_text(const tnn_llm *m, int32_t id) {
    return id >= 0 ? lm_token_text(m->tok, id, NULL) : NULL;
}

int64_t tnn_llm_chat_format(const tnn_llm *m, const char *tmpl, const char *const *roles,
                            const char *const *contents, int32_t n, int32_t add_assistant,
                            char *out, size_t cap) {
    if (m && check_llm(m, __func__)) return tnn_last_status();
    const char *model_tmpl = NULL;
    if (!tmpl) {
        if (!m) return TNN_ERR(TNN_ERR_ARG, "model and template are both NULL");
        tnn_gguf_get_str(lm_llama_gguf(m->lm), "tokenizer.chat_template", &model_tmpl, NULL);
        tnn_clear_error();
        if (!model_tmpl)
            return TNN_ERR(TNN_ERR_UNSUPPORTED, "the model has no chat template "
                                                "(tokenizer.chat_template); name one of "
                                                LM_CHAT_SUPPORTED);
        tmpl = model_tmpl;
    }
    int kind = lm_chat_kind_of(tmpl);
    if (kind < 0)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "%s is not one of the chat template families "
                                            "known (" LM_CHAT_SUPPORTED ")",
                       model_tmpl ? "the model's template" : "the template given");
    const char *bos = m ? token_text(m, lm_tokenizer_bos(m->tok)) : NULL;
    const char *eos = m ? token_text(m, lm_tokenizer_eos(m->tok)) : NULL;
    return wrap(lm_chat_format(kind, tmpl, bos, eos, roles, contents, n, add_assistant != 0, out,
                               cap),
                __func__);
}

/* ---- sampler ---- */

tnn_sampler *tnn_sampler_new(double temperature, int32_t top_k, double top_p, double min_p,
                             double repeat_penalty, uint64_t seed) {
    lm_sampler_params p = {temperature, top_k, top_p, min_p, repeat_penalty, seed};
    lm_sampler probe;
    const char *why = NULL;
    if (lm_sampler_init(&probe, &p, 1, &why))
        return TNN_ERR_NULL(TNN_ERR_ARG, "temperature=%g top_k=%d top_p=%g min_p=%g "
                                         "repeat_penalty=%g: %s",
                            temperature, top_k, top_p, min_p, repeat_penalty, why);
    lm_sampler_free(&probe);
    tnn_sampler *s = calloc(1, sizeof *s);
    if (!s) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    s->p = p;
    return s;
}

void tnn_sampler_free(tnn_sampler *s) {
    if (!s) return;
    if (s->ready) lm_sampler_free(&s->sm);
    free(s);
}

int32_t tnn_sampler_sample(tnn_sampler *s, const float *logits, int32_t n_vocab,
                           const int32_t *recent, int32_t n_recent) {
    if (!s || !logits || n_vocab < 1 || n_recent < 0 || (!recent && n_recent))
        return TNN_ERR(TNN_ERR_ARG, "want a sampler, logits, n_vocab >= 1 and n_recent >= 0 ids "
                                    "(n_vocab=%d, n_recent=%d)", n_vocab, n_recent);
    if (!s->ready || s->sm.vocab != n_vocab) {
        tnn_rng rng = s->sm.rng;
        bool had = s->ready;
        if (had) lm_sampler_free(&s->sm);
        s->ready = false;
        const char *why = NULL;
        if (lm_sampler_init(&s->sm, &s->p, n_vocab, &why))
            return TNN_ERR(TNN_ERR_NOMEM, "%s", why);
        if (had) s->sm.rng = rng; /* the random stream goes on */
        s->ready = true;
    }
    return lm_sample(&s->sm, logits, recent, n_recent);
}

/* ---- generation ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Hands out a piece of text; 1 when the caller asked to stop. */
static int emit(lm_text *t, const char *s, size_t n, tnn_llm_text_fn fn, void *user) {
    if (!s || !n) return 0;
    lm_text_put(t, s, n);
    return fn && fn(s, n, user) != 0;
}

/* The prompt's tokens (malloc'd) in *ids, as tokens_of. */
static int32_t prompt_tokens(const tnn_llm *m, const char *prompt, int32_t flags,
                             int32_t **ids) {
    *ids = NULL;
    char *chat = NULL;
    const char *text = prompt;
    if (flags & TNN_GEN_CHAT) {
        const char *role = "user";
        int64_t need = tnn_llm_chat_format(m, NULL, &role, &prompt, 1, 1, NULL, 0);
        if (need < 0) return (int32_t)need;
        chat = malloc((size_t)need + 1);
        if (!chat) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
        tnn_llm_chat_format(m, NULL, &role, &prompt, 1, 1, chat, (size_t)need + 1);
        text = chat;
    }
    int32_t n = tokens_of(m, text, strlen(text), TNN_TOK_ADD_SPECIAL | TNN_TOK_PARSE_SPECIAL, ids);
    free(chat);
    return n;
}

int64_t tnn_llm_generate(tnn_llm *m, tnn_sampler *s, const char *prompt, int32_t max_tokens,
                         int32_t flags, tnn_llm_text_fn on_text, void *user, char *out,
                         size_t cap) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if (!prompt || max_tokens < 0 || (flags & ~(TNN_GEN_CHAT | TNN_GEN_REUSE)) || (!out && cap))
        return TNN_ERR(TNN_ERR_ARG, "want a prompt, max_tokens >= 0, TNN_GEN_* flags and out "
                                    "when cap > 0 (max_tokens=%d, flags=%d)", max_tokens, flags);
    m->n_prompt = m->n_generated = 0;
    m->prompt_s = m->generate_s = 0;
    int32_t *ids = NULL;
    int32_t n = prompt_tokens(m, prompt, flags, &ids);
    if (n < 0) return wrap(n, __func__);
    int32_t n_ctx = lm_llama_n_ctx(m->lm);
    if (n > n_ctx) {
        free(ids);
        return TNN_ERR(TNN_ERR_RANGE, "the prompt's %d tokens do not fit the context (%d)", n,
                       n_ctx);
    }
    /* The cache's tokens the prompt repeats stay (all but the last, whose
     * logits are needed). */
    int32_t keep = 0;
    if (flags & TNN_GEN_REUSE) {
        int32_t have = lm_llama_pos(m->lm);
        while (keep < have && keep < n - 1 && m->ids[keep] == ids[keep]) keep++;
    }
    lm_llama_rewind(m->lm, keep);
    lm_sampler greedy_sm;
    lm_sampler *sm = NULL;
    lm_text t = {out, cap, 0};
    lm_detokenizer *dt = lm_detokenizer_new(m->tok, 0);
    int32_t recent[64]; /* the repetition penalty's window */
    if (!dt) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    double t0 = now_s();
    if (!rc) rc = tnn_llm_eval(m, ids + keep, n - keep, m->logits);
    double t1 = now_s();
    m->n_prompt = n - keep;
    m->prompt_s = t1 - t0;
    int32_t V = HP(m)->n_vocab, n_recent = 0;
    for (int32_t i = n > 64 ? n - 64 : 0; i < n; i++) recent[n_recent++] = ids[i];
    if (!rc && !s) {
        lm_sampler_params gp = lm_sampler_defaults();
        gp.temperature = 0;
        const char *why;
        if (lm_sampler_init(&greedy_sm, &gp, V, &why)) rc = TNN_ERR(TNN_ERR_NOMEM, "%s", why);
        else sm = &greedy_sm;
    }
    bool stop = false;
    for (int32_t i = 0; !rc && !stop && i < max_tokens; i++) {
        int32_t next = s ? tnn_sampler_sample(s, m->logits, V, recent, n_recent)
                         : lm_sample(sm, m->logits, recent, n_recent);
        if (next < 0) {
            rc = next;
            break;
        }
        m->n_generated++;
        if (n_recent == 64) memmove(recent, recent + 1, sizeof *recent * 63), n_recent--;
        recent[n_recent++] = next;
        if (lm_token_is_eog(m->tok, next)) break;
        size_t len = 0;
        const char *piece = lm_detokenizer_feed(dt, next, &len);
        if (!piece) rc = tnn_last_status();
        else stop = emit(&t, piece, len, on_text, user);
        /* the token goes in the cache (and gives the next logits) while there is room */
        if (!rc && lm_llama_pos(m->lm) < n_ctx)
            rc = tnn_llm_eval(m, &next, 1, stop || i + 1 == max_tokens ? NULL : m->logits);
        else
            stop = true;
    }
    if (dt) {
        size_t len = 0;
        const char *rest = lm_detokenizer_flush(dt, &len);
        emit(&t, rest, len, on_text, user);
    }
    m->generate_s = now_s() - t1;
    if (sm) lm_sampler_free(sm);
    lm_detokenizer_free(dt);
    free(ids);
    if (rc) return wrap(rc, __func__);
    if (t.len < cap) out[t.len] = 0;
    return (int64_t)t.len;
}

int tnn_llm_last_stats(const tnn_llm *m, int32_t *n_prompt, int32_t *n_generated,
                       double *prompt_s, double *generate_s) {
    int rc = check_llm(m, __func__);
    if (rc) return rc;
    if (n_prompt) *n_prompt = m->n_prompt;
    if (n_generated) *n_generated = m->n_generated;
    if (prompt_s) *prompt_s = m->prompt_s;
    if (generate_s) *generate_s = m->generate_s;
    return TNN_OK;
}
