/* train.c - the training loop behind `tnn train` and `tnn demo`.
 *
 * The tokens are the bytes of the text files (vocab 256), or the text
 * tokenized with a GGUF model's tokenizer. The last 10% of the tokens is the
 * validation split. Each step draws B random windows of T+1 tokens from the
 * training split (seeded RNG), runs forward, backward and AdamW in one
 * tnn_compute, and reads back only the loss. The learning rate warms up
 * linearly, then follows a cosine down to lr * min_lr_ratio.
 */
#include "train.h"

#include "chat.h"
#include "checkpoint.h"
#include "convo.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

lm_train_opts lm_train_defaults(void) {
    lm_train_opts o = {
        .model = lm_default_config(),
        .batch = 16,
        .steps = 600,
        .warmup = 30,
        .lr = 3e-3,
        .min_lr_ratio = 0.1,
        .optim = {.lr = 3e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
                  .grad_clip = 1.0},
        .seed = 1337,
        .print_every = 20,
        .eval_every = 100,
        .eval_batches = 8,
        .sample_every = 0,
        .sample_len = 200,
        .sample_prompt = "\n",
        .sampler = lm_sampler_defaults(),
        .cuda = lm_cuda(),
    };
    return o;
}

unsigned char *lm_read_files(const char **files, int n, size_t *len, const char **why) {
    unsigned char *buf = NULL;
    size_t used = 0, cap = 0;
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(files[i], "rb");
        if (!f) {
            *why = strerror(errno);
            free(buf);
            return NULL;
        }
        for (;;) {
            if (used == cap) {
                cap = cap ? cap * 2 : 1 << 16;
                unsigned char *nb = realloc(buf, cap);
                if (!nb) {
                    fclose(f);
                    free(buf);
                    *why = "out of memory";
                    return NULL;
                }
                buf = nb;
            }
            size_t got = fread(buf + used, 1, cap - used, f);
            used += got;
            if (got == 0) break;
        }
        bool err = ferror(f);
        fclose(f);
        if (err) {
            free(buf);
            *why = "read error";
            return NULL;
        }
    }
    *len = used;
    return buf;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double lr_at(const lm_train_opts *o, int step) { /* step from 1 */
    if (step <= o->warmup) return o->lr * step / (double)(o->warmup ? o->warmup : 1);
    double p = (double)(step - o->warmup) / (double)(o->steps - o->warmup > 0 ? o->steps - o->warmup : 1);
    if (p > 1) p = 1;
    double min_lr = o->lr * o->min_lr_ratio;
    return min_lr + 0.5 * (o->lr - min_lr) * (1.0 + cos(3.141592653589793 * p));
}

int lm_tokenizer_open(const char *path, lm_tokenizer **tok, tnn_gguf **g) {
    *tok = NULL;
    *g = tnn_gguf_open(path);
    if (!*g) return tnn_last_status();
    if (!lm_gguf_has_tokenizer(*g)) return TNN_OK;
    *tok = lm_tokenizer_from_gguf(*g);
    if (*tok) {
        tnn_clear_error(); /* optional keys it looked for */
        return TNN_OK;
    }
    int rc = tnn_last_status();
    tnn_gguf_close(*g);
    *g = NULL;
    return rc;
}

/* The text as tokens: its bytes, or the tokenizer's ids (no BOS; control
 * tokens are plain text). NULL with *why on failure. */
static int32_t *tokenize_text(const unsigned char *text, size_t len, const lm_tokenizer *tok,
                              size_t *n, const char **why) {
    if (!tok) {
        int32_t *ids = malloc((len ? len : 1) * sizeof *ids);
        if (!ids) {
            *why = "out of memory";
            return NULL;
        }
        for (size_t i = 0; i < len; i++) ids[i] = text[i];
        *n = len;
        return ids;
    }
    if (len > INT32_MAX - 1) {
        *why = "the text is over 2 GiB: too long to tokenize at once";
        return NULL;
    }
    /* about one token per byte at most; asked again with the exact count
     * when a vocabulary needs more (a leading space marker) */
    int32_t cap = (int32_t)len + 1, got = -1;
    int32_t *ids = NULL;
    for (int attempt = 0; attempt < 2; attempt++) {
        int32_t *grown = realloc(ids, (size_t)cap * sizeof *ids);
        if (!grown) {
            free(ids);
            *why = "out of memory";
            return NULL;
        }
        ids = grown;
        got = lm_tokenize(tok, (const char *)text, len, 0, 0, ids, cap);
        if (got < 0 || got <= cap) break;
        cap = got;
    }
    if (got < 0 || got > cap) {
        *why = got < 0 ? tnn_last_error() : "the tokenizer's count changed between calls";
        free(ids);
        return NULL;
    }
    *n = (size_t)got;
    return ids;
}

/* Windows: tokens = data[s .. s+T), targets = data[s+1 .. s+T], a target
 * the loss does not score (scored, when not NULL, says) -1. Returns the
 * number of scored targets. */
static int fill_window(const int32_t *data, const uint8_t *scored, size_t start, int T,
                       int64_t *tok, int64_t *tgt) {
    int n = 0;
    for (int t = 0; t < T; t++) {
        size_t i = start + (size_t)t;
        tok[t] = data[i];
        tgt[t] = !scored || scored[i + 1] ? data[i + 1] : -1;
        n += tgt[t] >= 0;
    }
    return n;
}

/* One batch: a training step, or (step false) the loss alone, the forward
 * pass of the training graph (tnn_compute_to: no second copy of the
 * weights, the optimizer untouched). */
static int run_batch(lm_graph *g, const int64_t *tok, const int64_t *tgt, bool step,
                     double *loss) {
    size_t n = (size_t)g->B * (size_t)g->T;
    int rc = tnn_upload_from_int_array(g->s, g->tokens, tok, n);
    if (rc == TNN_OK) rc = tnn_upload_from_int_array(g->s, g->targets, tgt, n);
    if (rc == TNN_OK) rc = step ? tnn_compute(g->s) : tnn_compute_to(g->s, g->loss);
    if (rc == TNN_OK) rc = tnn_download_to_f64_array(g->s, g->loss, loss, 1);
    return rc;
}

/* Mean loss over eval_batches batches of windows spread evenly over the
 * validation split (the same windows every time), each batch weighted by
 * the targets it scores. */
static int evaluate(lm_graph *g, const int32_t *val, const uint8_t *scored, size_t vlen,
                    int n_batches, int64_t *tok, int64_t *tgt, double *out) {
    int T = g->T, B = g->B;
    size_t span = vlen - (size_t)T - 1;
    double total = 0, weight = 0;
    for (int bi = 0; bi < n_batches; bi++) {
        int counted = 0;
        for (int b = 0; b < B; b++) {
            size_t k = (size_t)bi * (size_t)B + (size_t)b, n = (size_t)n_batches * (size_t)B;
            counted += fill_window(val, scored, span * k / n, T, tok + (size_t)b * T,
                                   tgt + (size_t)b * T);
        }
        if (counted == 0) continue;
        double l;
        int rc = run_batch(g, tok, tgt, false, &l);
        if (rc) return rc;
        total += l * counted;
        weight += counted;
    }
    *out = weight > 0 ? total / weight : NAN;
    return TNN_OK;
}

static bool is_jsonl(const char *path) {
    size_t n = strlen(path);
    return n >= 6 && !strcmp(path + n - 6, ".jsonl");
}

/* The training tokens: the text files' (all scored), then the JSON Lines
 * files' conversations (their assistant turns scored: *scored is then set,
 * else NULL). NULL data with *why on failure. */
static int32_t *load_data(const lm_train_opts *o, const lm_tokenizer *tk, const tnn_gguf *tk_file,
                          size_t *len, uint8_t **scored, size_t *bytes, FILE *out,
                          const char **why) {
    const char **texts = malloc((size_t)(o->n_data_files + 1) * sizeof *texts);
    if (!texts) {
        *why = "out of memory";
        return NULL;
    }
    int n_text = 0, n_convo_files = 0;
    for (int i = 0; i < o->n_data_files; i++)
        if (is_jsonl(o->data_files[i])) n_convo_files++;
        else texts[n_text++] = o->data_files[i];
    lm_token_stream st = {0};
    *scored = NULL;
    *len = *bytes = 0;
    int32_t *data = NULL;
    if (n_text > 0) {
        unsigned char *text = lm_read_files(texts, n_text, bytes, why);
        data = text ? tokenize_text(text, *bytes, tk, len, why) : NULL;
        free(text);
        if (!data) goto done;
    }
    if (n_convo_files == 0) goto done;
    const char *tmpl = NULL;
    int kind = -1;
    if (tk_file) tnn_gguf_get_str(tk_file, "tokenizer.chat_template", &tmpl, NULL);
    tnn_clear_error();
    if (tmpl) kind = lm_chat_kind_of(tmpl);
    if (!tk || kind < 0) {
        *why = !tk ? "conversations (.jsonl) need a model's tokenizer and chat template (init "
                     "or tokenizer)"
               : !tmpl ? "the tokenizer's model has no chat template for the conversations"
                       : "the model's chat template is not one of " LM_CHAT_SUPPORTED;
        free(data);
        data = NULL;
        goto done;
    }
    /* the text files' tokens first, all scored */
    int64_t n_convos = 0;
    if (*len > 0) {
        st.ids = data;
        st.n = st.cap = *len;
        st.scored = malloc(*len ? *len : 1);
        data = NULL;
        if (!st.scored) {
            *why = "out of memory";
            goto fail;
        }
        memset(st.scored, 1, *len);
    }
    for (int i = 0; i < o->n_data_files; i++) {
        if (!is_jsonl(o->data_files[i])) continue;
        size_t nb = 0;
        unsigned char *text = lm_read_files(&o->data_files[i], 1, &nb, why);
        if (!text) goto fail;
        *bytes += nb;
        int rc = lm_convo_append(o->data_files[i], (const char *)text, nb, tk, kind, tmpl, &st,
                                 &n_convos);
        free(text);
        if (rc != TNN_OK) {
            *why = tnn_last_error();
            goto fail;
        }
    }
    if (st.n == 0) {
        *why = "the .jsonl files hold no conversation";
        goto fail;
    }
    size_t n_scored = 0;
    for (size_t i = 0; i < st.n; i++) n_scored += st.scored[i];
    fprintf(out, "conversations: %lld from %d .jsonl file%s; %zu of the %zu tokens scored (the "
                 "assistant's turns%s)\n", (long long)n_convos, n_convo_files,
            n_convo_files == 1 ? "" : "s", n_scored, st.n, n_text ? " and the text files" : "");
    data = st.ids;
    *scored = st.scored;
    *len = st.n;
    goto done;
fail:
    lm_token_stream_free(&st);
    data = NULL;
done:
    free(texts);
    return data;
}

int lm_generate(lm_graph *g, lm_sampler *sm, const lm_tokenizer *tk, const char *prompt,
                size_t plen, int n, FILE *out) {
    int T = g->T, V = g->cfg.vocab;
    const char *why = NULL;
    size_t np = 0;
    int32_t *ids = tokenize_text((const unsigned char *)prompt, plen, tk, &np, &why);
    if (!ids) return TNN_ERR_NOMEM; /* the tokenizer fails only for memory */
    int *ctx = malloc(((size_t)T + (size_t)n + np + 1) * sizeof *ctx);
    int64_t *tok = calloc((size_t)T, sizeof *tok);
    float *logits = malloc((size_t)T * (size_t)V * sizeof *logits);
    lm_detokenizer *dt = tk ? lm_detokenizer_new(tk, 0) : NULL;
    int rc = (ctx && tok && logits && (!tk || dt)) ? TNN_OK : TNN_ERR_NOMEM;
    size_t len = 0;
    if (rc == TNN_OK) {
        for (size_t i = 0; i < np; i++) ctx[len++] = ids[i];
        if (len == 0) { /* an empty prompt: BOS, or a newline */
            int32_t bos = tk ? lm_tokenizer_bos(tk) : -1, nl = '\n';
            if (tk && bos < 0) lm_tokenize(tk, "\n", 1, 0, 0, &nl, 1);
            ctx[len++] = bos >= 0 ? bos : nl;
        }
    }
    for (int step = 0; step < n && rc == TNN_OK; step++) {
        size_t start = len > (size_t)T ? len - (size_t)T : 0, w = len - start;
        for (size_t i = 0; i < (size_t)T; i++) tok[i] = i < w ? ctx[start + i] : 0;
        rc = tnn_upload_from_int_array(g->s, g->tokens, tok, (size_t)T);
        if (rc == TNN_OK) rc = tnn_compute(g->s);
        if (rc == TNN_OK) rc = tnn_download_f32(g->s, g->logits, logits, (size_t)T * (size_t)V);
        if (rc != TNN_OK) break;
        int recent_n = w < 64 ? (int)w : 64;
        int next = lm_sample(sm, logits + (w - 1) * (size_t)V, ctx + len - recent_n, recent_n);
        ctx[len++] = next;
        if (tk) {
            size_t m;
            const char *piece = lm_detokenizer_feed(dt, next, &m);
            if (!piece) rc = tnn_last_status();
            else fwrite(piece, 1, m, out);
            if (lm_token_is_eog(tk, next)) break;
        } else {
            unsigned char c = (unsigned char)next;
            if (c == '\n' || c == '\t' || c >= 32) fputc(c, out);
        }
    }
    if (dt && rc == TNN_OK) {
        size_t m;
        const char *rest = lm_detokenizer_flush(dt, &m);
        if (rest) fwrite(rest, 1, m, out);
    }
    fflush(out);
    lm_detokenizer_free(dt);
    free(ctx);
    free(ids);
    free(tok);
    free(logits);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Loss log and picture                                                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    int step;
    double train, val; /* val NAN when not measured */
} curve_point;

static void write_svg(const char *path, const curve_point *pts, int n, int max_step) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    double lo = 1e30, hi = -1e30;
    for (int i = 0; i < n; i++) {
        double v[2] = {pts[i].train, pts[i].val};
        for (int k = 0; k < 2; k++)
            if (isfinite(v[k])) lo = fmin(lo, v[k]), hi = fmax(hi, v[k]);
    }
    if (!(hi > lo)) hi = lo + 1;
    const double W = 640, H = 360, L = 50, R = 20, Tm = 20, Bm = 40;
#define X(s) (L + (W - L - R) * (double)(s) / (double)(max_step ? max_step : 1))
#define Y(v) (Tm + (H - Tm - Bm) * (1.0 - ((v) - lo) / (hi - lo)))
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%g' height='%g' "
               "font-family='sans-serif' font-size='11'>\n<rect width='100%%' height='100%%' "
               "fill='white'/>\n", W, H);
    fprintf(f, "<line x1='%g' y1='%g' x2='%g' y2='%g' stroke='black'/>\n", L, H - Bm, W - R, H - Bm);
    fprintf(f, "<line x1='%g' y1='%g' x2='%g' y2='%g' stroke='black'/>\n", L, Tm, L, H - Bm);
    for (int k = 0; k <= 4; k++) {
        double v = lo + (hi - lo) * k / 4;
        fprintf(f, "<text x='4' y='%.1f'>%.2f</text>\n", Y(v) + 4, v);
    }
    fprintf(f, "<text x='%g' y='%g'>step (0 .. %d)</text>\n", W / 2 - 40, H - 10, max_step);
    for (int k = 0; k < 2; k++) {
        fprintf(f, "<polyline fill='none' stroke='%s' stroke-width='1.5' points='",
                k ? "#d62728" : "#1f77b4");
        for (int i = 0; i < n; i++) {
            double v = k ? pts[i].val : pts[i].train;
            if (isfinite(v)) fprintf(f, "%.1f,%.1f ", X(pts[i].step), Y(v));
        }
        fprintf(f, "'/>\n");
    }
    fprintf(f, "<text x='%g' y='%g' fill='#1f77b4'>train loss</text>\n", W - 150, Tm + 12);
    fprintf(f, "<text x='%g' y='%g' fill='#d62728'>validation loss</text>\n", W - 150, Tm + 26);
    fprintf(f, "</svg>\n");
#undef X
#undef Y
    if (fclose(f) == 0) rename(tmp, path);
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                 */
/* ------------------------------------------------------------------------ */

static void fmt_time(double s, char *buf, size_t n) {
    if (s < 60)
        snprintf(buf, n, "%.0fs", s);
    else
        snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

static void train_state(const lm_train_opts *o, int step, lm_graph *g, const tnn_rng *rng,
                        const char *base, lm_train_state *st) {
    *st = (lm_train_state){.step = step, .adam_steps = tnn_optimizer_steps(g->s), .rng = *rng,
                           .seed = o->seed, .batch = o->batch, .steps = o->steps,
                           .warmup = o->warmup, .lr = o->lr, .min_lr_ratio = o->min_lr_ratio,
                           .optim = o->optim, .qlora = o->qlora, .lora_only = o->lora_only};
    snprintf(st->init, sizeof st->init, "%s", base);
}

/* The graph that samples (B = 1), built on first use, on the training
 * graph's weights (shared, not copied: it samples from the weights of the
 * step just taken). */
static int sampling_graph(lm_graph *gen, const lm_graph *g, int T, bool cuda) {
    if (gen->s) return TNN_OK;
    int rc = lm_graph_build(gen, &g->cfg, 1, T, false, NULL, cuda);
    return rc == TNN_OK ? lm_share_weights(gen, g) : rc;
}

/* The checkpoint path with "{step}" replaced by the step number. */
static void checkpoint_path(const char *pattern, int step, char *out, size_t n) {
    const char *at = strstr(pattern, "{step}");
    if (!at)
        snprintf(out, n, "%s", pattern);
    else
        snprintf(out, n, "%.*s%d%s", (int)(at - pattern), pattern, step, at + 6);
}

int lm_train(const lm_train_opts *opts, lm_train_result *res) {
    lm_train_opts resumed = *opts, *o = &resumed;
    FILE *out = o->out ? o->out : stdout;
    memset(res, 0, sizeof *res);
    res->first_step = 1;
    if (o->init && o->resume) {
        fprintf(out, "error: init and resume exclude each other (resume continues a run)\n");
        return 1;
    }
    if ((o->lora_rank > 0 || o->qlora || o->lora_only) && !o->init) {
        fprintf(out, "error: %s fine-tunes a model: name it with init%s\n",
                o->qlora ? "QLoRA" : "LoRA",
                o->resume ? " (a resumed run keeps its own LoRA settings)" : "");
        return 1;
    }
    if (o->qlora && o->lora_rank < 1) {
        fprintf(out, "error: QLoRA is LoRA on the model's own tensor types: give a LoRA rank\n");
        return 1;
    }
    if (o->lora_only && o->lora_rank < 1) {
        fprintf(out, "error: lora-only checkpoints are a LoRA run's: give a LoRA rank\n");
        return 1;
    }
    /* a fine-tuning run's base model, as an absolute path (a LoRA run resumes
     * its frozen weights from it) */
    char base_path[4096] = "";
    lm_train_state st;
    if (o->resume) {
        if (lm_checkpoint_read_config(o->resume, &o->model, &st) != TNN_OK) {
            fprintf(out, "error: cannot resume: %s\n", tnn_last_error());
            return 1;
        }
        o->batch = st.batch, o->steps = st.steps, o->warmup = st.warmup, o->lr = st.lr;
        o->min_lr_ratio = st.min_lr_ratio, o->optim = st.optim, o->seed = st.seed;
        o->qlora = st.qlora, o->lora_only = st.lora_only;
        if (o->steps_override > 0) o->steps = o->steps_override;
        res->first_step = (int)st.step + 1;
        snprintf(base_path, sizeof base_path, "%s", st.init);
        fprintf(out, "resuming from %s at step %lld of %d\n", o->resume, (long long)st.step,
                o->steps);
    }
    if (o->init) {
        lm_config base;
        if (lm_checkpoint_read_config(o->init, &base, NULL) != TNN_OK) {
            fprintf(out, "error: cannot fine-tune: %s\n", tnn_last_error());
            return 1;
        }
        /* the file's shape, trained on windows of seq_len; the context it saves
         * stays the file's */
        int ctx = base.ctx_len ? base.ctx_len : base.seq_len;
        base.seq_len = o->model.seq_len;
        base.ctx_len = ctx > base.seq_len ? ctx : 0;
        base.lora_rank = o->lora_rank;
        base.lora_alpha = o->lora_alpha > 0 ? o->lora_alpha : 2.0 * o->lora_rank;
        const char *why = lm_config_problem(&base);
        if (why) {
            fprintf(out, "error: LoRA rank %d on %s: %s\n", o->lora_rank, o->init, why);
            return 1;
        }
        o->model = base;
        if (!realpath(o->init, base_path)) snprintf(base_path, sizeof base_path, "%s", o->init);
        fprintf(out, "fine-tuning %s", o->init);
        if (base.lora_rank > 0)
            fprintf(out, " with %s (rank %d, alpha %g)", o->qlora ? "QLoRA" : "LoRA",
                    base.lora_rank, base.lora_alpha);
        fprintf(out, "\n");
    }
    /* the tokenizer: the one asked for, else the resumed checkpoint's or
     * the init model's */
    lm_tokenizer *tk = NULL;
    tnn_gguf *tk_file = NULL;
    const char *tk_path = o->tokenizer ? o->tokenizer : o->resume ? o->resume : o->init;
    if (tk_path && lm_tokenizer_open(tk_path, &tk, &tk_file) != TNN_OK) {
        fprintf(out, "error: tokenizer of %s: %s\n", tk_path, tnn_last_error());
        return 1;
    }
    if (o->tokenizer && !tk) {
        fprintf(out, "error: %s has no tokenizer (tokenizer.ggml.model)\n", o->tokenizer);
        tnn_gguf_close(tk_file);
        return 1;
    }
    if (!tk) { /* a byte-level checkpoint: its file is not needed here */
        tnn_gguf_close(tk_file);
        tk_file = NULL;
    }
    /* a model made here has the tokenizer's vocabulary; one read from a file
     * may have more rows than the tokenizer has tokens (padding) */
    bool from_file = o->resume || o->init;
    int n_tok = tk ? lm_tokenizer_n_vocab(tk) : 256;
    if (!from_file) o->model.vocab = n_tok;
    if (from_file ? o->model.vocab < n_tok : o->model.vocab != n_tok) {
        fprintf(out, "error: the model's vocabulary (%d) does not hold the %s (%d)\n",
                o->model.vocab, tk ? "tokenizer's tokens" : "bytes", n_tok);
        lm_tokenizer_free(tk);
        tnn_gguf_close(tk_file);
        return 1;
    }
    const char *why = NULL;
    size_t bytes = 0, len = 0;
    uint8_t *scored = NULL;
    int32_t *data = load_data(o, tk, tk_file, &len, &scored, &bytes, out, &why);
    if (!data) {
        fprintf(out, "error: cannot read the training data: %s\n", why);
        lm_tokenizer_free(tk);
        tnn_gguf_close(tk_file);
        return 1;
    }
    int T = o->model.seq_len, B = o->batch;
    size_t vlen = len / 10, tlen = len - vlen;
    if (vlen < (size_t)T + 2 || tlen < (size_t)T + 2) {
        fprintf(out, "error: %zu tokens of text is too little for windows of %d\n", len, T + 1);
        free(data);
        free(scored);
        lm_tokenizer_free(tk);
        tnn_gguf_close(tk_file);
        return 1;
    }
    const int32_t *train = data, *val = data + tlen;
    const uint8_t *val_scored = scored ? scored + tlen : NULL;
    lm_optim opt = o->optim;
    opt.lr = lr_at(o, 1);
    lm_graph g, gen;
    memset(&g, 0, sizeof g);
    memset(&gen, 0, sizeof gen);
    /* LoRA in mixed precision keeps its frozen projections as bf16; QLoRA
     * reads them (and the embeddings) from the base model's file */
    o->model.frozen_bf16 = o->model.lora_rank > 0 && o->optim.bf16 && !o->qlora;
    tnn_gguf *frozen = o->qlora ? tnn_gguf_open(base_path) : NULL;
    o->model.frozen_gguf = frozen;
    int rc = o->qlora && !frozen ? tnn_last_status()
                                 : lm_graph_build(&g, &o->model, B, T, true, &opt, o->cuda);
    bool lora = o->model.lora_rank > 0;
    if (rc == TNN_OK && o->resume) /* a LoRA run: the frozen weights from its base model */
        rc = lora ? lm_checkpoint_load(base_path, &g, false, LM_LOAD_BASE)
                  : lm_checkpoint_load(o->resume, &g, true, LM_LOAD_ALL);
    if (rc == TNN_OK && o->resume && lora)
        rc = lm_checkpoint_load(o->resume, &g, true, LM_LOAD_LORA);
    if (rc == TNN_OK && o->init) rc = lm_checkpoint_load(o->init, &g, false, LM_LOAD_BASE);
    if (rc == TNN_OK && o->init && lora) rc = lm_init_lora(&g, o->seed);
    if (rc == TNN_OK && !o->init && !o->resume) rc = lm_init_weights(&g, o->seed);
    lm_sampler sm;
    bool have_sampler = false;
    if (rc == TNN_OK) {
        if (lm_sampler_init(&sm, &o->sampler, o->model.vocab, &why)) {
            fprintf(out, "error: sampler: %s\n", why);
            rc = TNN_ERR_ARG;
        } else {
            have_sampler = true;
        }
    }
    int64_t *tok = malloc((size_t)B * T * sizeof *tok), *tgt = malloc((size_t)B * T * sizeof *tgt);
    int max_pts = o->steps + 2;
    curve_point *pts = calloc((size_t)max_pts, sizeof *pts);
    int npts = 0;
    FILE *csv = NULL;
    if (rc == TNN_OK && (!tok || !tgt || !pts)) rc = TNN_ERR_NOMEM;
    if (rc == TNN_OK && o->log_csv) {
        csv = fopen(o->log_csv, o->resume ? "a" : "w");
        if (csv && !o->resume) fprintf(csv, "step,train_loss,val_loss,lr,tokens_per_s,elapsed_s\n");
    }
    if (rc != TNN_OK) goto done;

    lm_config whole = o->model;
    whole.lora_rank = 0;
    fprintf(out, "model: %d layers, d_model %d, %d heads (%d kv), d_ff %d, vocab %d, context %d: "
                 "%lld parameters", o->model.n_layer, o->model.d_model, o->model.n_head,
            o->model.n_kv_head, o->model.d_ff, o->model.vocab, T,
            (long long)lm_param_count(&whole));
    if (lora)
        fprintf(out, ", frozen%s; LoRA rank %d: %lld trained",
                o->qlora ? " as the file stores them (QLoRA)" : "", o->model.lora_rank,
                (long long)lm_param_count(&o->model));
    fprintf(out, "\n");
    if (tk)
        fprintf(out, "tokenizer: %s (%s, %d tokens); %zu bytes of text\n", tk_path,
                lm_tokenizer_kind(tk) == LM_VOCAB_SPM ? "SentencePiece" : "BPE",
                lm_tokenizer_n_vocab(tk), bytes);
    fprintf(out, "data: %zu tokens (%zu train, %zu validation); batch %d x %d tokens; %d steps, "
                 "peak lr %g, %d threads\n", len, tlen, vlen, B, T, o->steps, o->lr,
            tnn_get_num_threads());
    rc = evaluate(&g, val, val_scored, vlen, o->eval_batches, tok, tgt, &res->first_val);
    if (rc != TNN_OK) goto done;
    fprintf(out, "step %5d | validation loss %.4f\n", 0, res->first_val);
    pts[npts++] = (curve_point){0, NAN, res->first_val};
    res->last_val = res->first_val;

    tnn_rng rng;
    tnn_rng_seed(&rng, o->seed ^ 0x5eed);
    if (o->resume) rng = st.rng;
    double t0 = now_s(), loss_acc = 0;
    int acc_n = 0, first = res->first_step;
    for (int step = first; step <= o->steps; step++) {
        double lr = lr_at(o, step);
        tnn_set_lr(g.s, lr);
        for (int b = 0; b < B; b++) {
            size_t start = (size_t)tnn_rng_below(&rng, (uint64_t)(tlen - (size_t)T - 1));
            fill_window(train, scored, start, T, tok + (size_t)b * T, tgt + (size_t)b * T);
        }
        double loss;
        int64_t skipped_before = tnn_optimizer_skipped(g.s);
        rc = run_batch(&g, tok, tgt, true, &loss);
        if (rc != TNN_OK) {
            fprintf(out, "error: step %d: %s\n", step, tnn_last_error());
            goto done;
        }
        if (tnn_optimizer_skipped(g.s) > skipped_before)
            fprintf(out, "warning: step %d: loss %g or gradient not finite; step skipped\n", step,
                    loss);
        if (step == first) res->first_loss = loss;
        res->last_loss = loss;
        res->steps_done = step;
        loss_acc += loss;
        acc_n++;
        double el = now_s() - t0;
        bool do_eval = (o->eval_every > 0 && step % o->eval_every == 0) || step == o->steps;
        double vloss = NAN;
        if (do_eval) {
            rc = evaluate(&g, val, val_scored, vlen, o->eval_batches, tok, tgt, &vloss);
            if (rc != TNN_OK) goto done;
            res->last_val = vloss;
        }
        if (step % o->print_every == 0 || do_eval) {
            int done = step - first + 1;
            double tps = (double)B * T * done / el;
            char e1[32], e2[32];
            fmt_time(el, e1, sizeof e1);
            fmt_time(el / done * (o->steps - step), e2, sizeof e2);
            fprintf(out, "step %5d/%d | loss %.4f | lr %.2e | %6.0f tok/s | %s elapsed | eta %s",
                    step, o->steps, loss_acc / acc_n, lr, tps, e1, e2);
            if (do_eval) fprintf(out, " | validation loss %.4f", vloss);
            fprintf(out, "\n");
            fflush(out);
            if (csv) {
                fprintf(csv, "%d,%.6f,%.6f,%.6g,%.1f,%.2f\n", step, loss_acc / acc_n, vloss, lr,
                        tps, el);
                fflush(csv);
            }
            if (npts < max_pts) pts[npts++] = (curve_point){step, loss_acc / acc_n, vloss};
            if (o->log_svg) write_svg(o->log_svg, pts, npts, o->steps);
            loss_acc = 0;
            acc_n = 0;
        }
        bool ckpt = o->checkpoint && ((o->checkpoint_every > 0 && step % o->checkpoint_every == 0) ||
                                      step == o->steps);
        if (ckpt) {
            char path[4096];
            checkpoint_path(o->checkpoint, step, path, sizeof path);
            train_state(o, step, &g, &rng, base_path, &st);
            rc = lm_checkpoint_save(path, &g, &st, tk ? tk_file : NULL);
            if (rc != TNN_OK) goto done;
            fprintf(out, "checkpoint: %s (step %d)\n", path, step);
        }
        if (o->sample_every > 0 && step % o->sample_every == 0 && step != o->steps) {
            rc = sampling_graph(&gen, &g, T, o->cuda);
            if (rc != TNN_OK) goto done;
            fprintf(out, "--- sample at step %d ---\n", step);
            rc = lm_generate(&gen, &sm, tk, o->sample_prompt, strlen(o->sample_prompt),
                             o->sample_len, out);
            fprintf(out, "\n---\n");
            if (rc != TNN_OK) goto done;
        }
    }
    res->tokens_per_s = (double)B * T * (o->steps - first + 1) / (now_s() - t0);
    res->steps_skipped = (int)tnn_optimizer_skipped(g.s);
    if (o->sample_len > 0) rc = sampling_graph(&gen, &g, T, o->cuda);
    if (rc == TNN_OK && o->sample_len > 0) {
        fprintf(out, "--- generated text (temperature %.2f, top-k %d, seed %llu) ---\n",
                o->sampler.temperature, o->sampler.top_k, (unsigned long long)o->sampler.seed);
        fputs(o->sample_prompt, out);
        rc = lm_generate(&gen, &sm, tk, o->sample_prompt, strlen(o->sample_prompt),
                         o->sample_len, out);
        fprintf(out, "\n---\n");
    }
done:
    if (rc != TNN_OK && tnn_last_error()[0]) fprintf(out, "error: %s\n", tnn_last_error());
    if (csv) fclose(csv);
    if (have_sampler) lm_sampler_free(&sm);
    free(pts);
    free(tok);
    free(tgt);
    lm_graph_free(&gen);
    if (g.s) lm_graph_free(&g);
    tnn_gguf_close(frozen);
    free(data);
    free(scored);
    lm_tokenizer_free(tk);
    tnn_gguf_close(tk_file);
    return rc == TNN_OK ? 0 : 1;
}
