/* checkpoint.c - saving and loading training checkpoints (GGUF).
 *
 * Model keys follow the llama GGUF conventions (llama.block_count, ...;
 * tensors token_embd.weight, blk.N.attn_q.weight, ...; qwen2.* for a model
 * with q/k/v biases), so a checkpoint is also a model file. Optimizer
 * moments are tensors "opt.m.<name>" and "opt.v.<name>"; the training state
 * lives under "tinynn.train.". Any llama or qwen2 GGUF model loads as the
 * starting point of a fine-tuning run (its weights dequantized to f32).
 */
#include "checkpoint.h"

#include "llama.h"
#include "quantize.h"

#include "../io/gguf.h"
#include "../quant/quant.h"

#include "../core/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Errors go to the library's per-thread message (tnn_last_error). */
#define ERR(status, ...) TNN_ERR((status), __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* Save                                                                     */
/* ------------------------------------------------------------------------ */

/* A tensor of the checkpoint, made while the file is written (one at a
 * time: no copy of the whole model is held): a weight (which = -1, LoRA
 * factors merged in) or one of its AdamW moments. */
typedef struct {
    const lm_graph *g;
    tnn_tensor *t;
    int which;
} ck_item;

typedef struct {
    const lm_graph *g;
    tnn_gguf_writer *w;
    bool optimizer;
    bool lora_only; /* the LoRA factors (and their moments) alone */
    ck_item *items; /* room for 3 a tensor, counted first */
    size_t n, cap;
} save_ctx;

/* Whether the optimizer keeps moments for t (rope_freqs is not trained). */
static bool trained(const tnn_tensor *t) { return (t->flags & TNN_FLAG_PARAM) != 0; }

/* w (out, in) += scale B A, B (out, r) and A (r, in) downloaded from g. */
static int merge_lora(const lm_graph *g, tnn_tensor *ta, tnn_tensor *tb, float *w) {
    int64_t r = tnn_tensor_dim(ta, 0), in = tnn_tensor_dim(ta, 1), out = tnn_tensor_dim(tb, 0);
    float *a = malloc((size_t)(r * in) * sizeof *a), *b = malloc((size_t)(out * r) * sizeof *b);
    int rc = a && b ? TNN_OK : ERR(TNN_ERR_NOMEM, "out of memory merging LoRA factors");
    if (rc == TNN_OK) rc = tnn_download_f32(g->s, ta, a, (size_t)(r * in));
    if (rc == TNN_OK) rc = tnn_download_f32(g->s, tb, b, (size_t)(out * r));
    float scale = (float)(g->cfg.lora_alpha / g->cfg.lora_rank);
    for (int64_t o = 0; o < out && rc == TNN_OK; o++)
        for (int64_t k = 0; k < r; k++) {
            float s = scale * b[o * r + k];
            for (int64_t i = 0; i < in; i++) w[o * in + i] += s * a[k * in + i];
        }
    free(a);
    free(b);
    return rc;
}

static int fill_item(void *p, void *dst) {
    const ck_item *it = p;
    size_t n = (size_t)tnn_tensor_nelements(it->t);
    if (it->which >= 0) return tnn_optimizer_get_state(it->g->s, it->t, it->which, dst, n);
    int rc = tnn_download_f32(it->g->s, it->t, dst, n);
    tnn_tensor *la, *lb;
    if (rc == TNN_OK && lm_lora_factors(it->g, it->t, &la, &lb)) rc = merge_lora(it->g, la, lb, dst);
    return rc;
}

static int add_item(save_ctx *c, const char *name, tnn_tensor *t, int which) {
    if (c->n == c->cap) return ERR(TNN_ERR_INTERNAL, "checkpoint: more tensors than counted");
    ck_item *it = &c->items[c->n++];
    *it = (ck_item){.g = c->g, .t = t, .which = which};
    int64_t shape[4];
    int nd = tnn_tensor_ndim(t);
    for (int i = 0; i < nd; i++) shape[i] = tnn_tensor_dim(t, i);
    size_t n = (size_t)tnn_tensor_nelements(t);
    return tnn__gguf_writer_add_tensor_fill(c->w, name, TNN_GGML_F32, nd, shape,
                                            n * sizeof(float), fill_item, it);
}

static int count_one(void *p, const char *name, tnn_tensor *t) {
    ((save_ctx *)p)->cap += 3;
    return TNN_OK;
}

static int save_one(void *p, const char *name, tnn_tensor *t) {
    save_ctx *c = p;
    if (c->lora_only && !lm_is_lora_name(name)) return TNN_OK;
    int rc = add_item(c, name, t, -1);
    for (int which = 0; which < 2 && rc == TNN_OK && c->optimizer && trained(t); which++) {
        char oname[96];
        snprintf(oname, sizeof oname, "opt.%c.%s", which ? 'v' : 'm', name);
        rc = add_item(c, oname, t, which);
    }
    return rc;
}

bool lm_gguf_has_tokenizer(const tnn_gguf *g) {
    bool has = g && tnn_gguf_find_key(g, "tokenizer.ggml.model") >= 0;
    tnn_clear_error();
    return has;
}

int lm_checkpoint_save(const char *path, const lm_graph *g, const lm_train_state *st,
                       const tnn_gguf *tok) {
    const lm_config *m = &g->cfg;
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    if (!w) return TNN_ERR_NOMEM;
    int rc = TNN_OK;
#define ADD(call)                                                                             \
    do {                                                                                      \
        if (rc == TNN_OK) rc = (call);                                                        \
    } while (0)
    /* the architecture's own key names: "llama.block_count", "qwen2.block_count" */
    const char *arch = m->qkv_bias ? "qwen2" : "llama";
    char akey[96];
#define KEY(name) (snprintf(akey, sizeof akey, "%s.%s", arch, (name)), akey)
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", arch));
    ADD(tnn_gguf_writer_add_str(w, "general.name", tok ? "tinynn transformer"
                                                        : "tinynn byte-level transformer"));
    ADD(tnn_gguf_writer_add_u32(w, KEY("vocab_size"), (uint32_t)m->vocab));
    ADD(tnn_gguf_writer_add_u32(w, KEY("context_length"),
                                (uint32_t)(m->ctx_len ? m->ctx_len : m->seq_len)));
    ADD(tnn_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)m->d_model));
    ADD(tnn_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)m->n_layer));
    ADD(tnn_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)m->d_ff));
    ADD(tnn_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)m->n_head));
    ADD(tnn_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)m->n_kv_head));
    ADD(tnn_gguf_writer_add_u32(w, KEY("rope.dimension_count"),
                                (uint32_t)(m->d_model / m->n_head)));
    ADD(tnn_gguf_writer_add_f32(w, KEY("rope.freq_base"), (float)m->rope_base));
    ADD(tnn_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), (float)m->norm_eps));
#undef KEY
    ADD(tnn_gguf_writer_add_str(w, "tinynn.tokenizer", tok ? "gguf" : "bytes"));
    /* the window the model was trained with (context_length may be longer) */
    ADD(tnn_gguf_writer_add_i32(w, "tinynn.train.seq", m->seq_len));
    for (int64_t i = 0; tok && rc == TNN_OK && i < tnn_gguf_n_kv(tok); i++) {
        const char *key = tnn_gguf_key(tok, i);
        if (key && !strncmp(key, "tokenizer.", 10)) rc = lm_gguf_copy_kv(tok, w, key);
    }
    if (st) {
        ADD(tnn_gguf_writer_add_i64(w, "tinynn.train.step", st->step));
        ADD(tnn_gguf_writer_add_i64(w, "tinynn.train.adam_steps", st->adam_steps));
        ADD(tnn_gguf_writer_add_arr(w, "tinynn.train.rng", TNN_GGUF_UINT64, st->rng.s, 4));
        ADD(tnn_gguf_writer_add_u64(w, "tinynn.train.seed", st->seed));
        ADD(tnn_gguf_writer_add_i32(w, "tinynn.train.batch", st->batch));
        ADD(tnn_gguf_writer_add_i32(w, "tinynn.train.steps", st->steps));
        ADD(tnn_gguf_writer_add_i32(w, "tinynn.train.warmup", st->warmup));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.lr", st->lr));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.min_lr_ratio", st->min_lr_ratio));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.beta1", st->optim.beta1));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.beta2", st->optim.beta2));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.eps", st->optim.eps));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.weight_decay", st->optim.weight_decay));
        ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.grad_clip", st->optim.grad_clip));
        if (st->init[0]) ADD(tnn_gguf_writer_add_str(w, "tinynn.train.init", st->init));
        if (st->optim.bf16) ADD(tnn_gguf_writer_add_bool(w, "tinynn.train.bf16", 1));
        if (st->qlora) ADD(tnn_gguf_writer_add_bool(w, "tinynn.train.qlora", 1));
        if (st->lora_only) ADD(tnn_gguf_writer_add_bool(w, "tinynn.train.lora_only", 1));
        if (m->lora_rank > 0) {
            ADD(tnn_gguf_writer_add_i32(w, "tinynn.train.lora_rank", m->lora_rank));
            ADD(tnn_gguf_writer_add_f64(w, "tinynn.train.lora_alpha", m->lora_alpha));
        }
    }
#undef ADD
    save_ctx c = {.g = g, .w = w, .optimizer = st != NULL, .lora_only = st && st->lora_only};
    lm_params_each(g, count_one, &c);
    c.items = malloc(c.cap * sizeof *c.items);
    if (rc == TNN_OK && !c.items) rc = ERR(TNN_ERR_NOMEM, "out of memory");
    if (rc == TNN_OK) rc = lm_params_each(g, save_one, &c);
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path); /* the tensors made here */
    if (rc != TNN_OK) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", tnn_last_error());
        rc = ERR(rc, "saving %s: %s", path, msg);
    }
    free(c.items);
    tnn_gguf_writer_free(w);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Load                                                                     */
/* ------------------------------------------------------------------------ */

static int get_int(const tnn_gguf *f, const char *key, int *out) {
    int64_t v;
    int rc = tnn_gguf_get_i64(f, key, &v);
    if (rc != TNN_OK) return rc; /* the message names the key */
    if (v < 0 || v > INT32_MAX) return ERR(TNN_ERR_FORMAT, "%s = %lld is out of range", key, (long long)v);
    *out = (int)v;
    return TNN_OK;
}

static int get_dbl(const tnn_gguf *f, const char *key, double *out) {
    int rc = tnn_gguf_get_f64(f, key, out);
    return rc; /* on failure the message names the key */
}

/* Whether the bool key is there and true. */
static bool get_flag(const tnn_gguf *f, const char *key) {
    int v = 0;
    bool on = tnn_gguf_get_bool(f, key, &v) == TNN_OK && v;
    tnn_clear_error();
    return on;
}

int lm_checkpoint_read_config(const char *path, lm_config *cfg, lm_train_state *st) {
    tnn_gguf *f = tnn_gguf_open(path);
    if (!f) return tnn_last_status();
    memset(cfg, 0, sizeof *cfg);
    /* resuming a checkpoint of LoRA factors alone: the shape is its base
     * model's (as a model to run or start from, read_hparams refuses it) */
    tnn_gguf *hf = f;
    const char *base = NULL;
    int rc = TNN_OK;
    if (st && get_flag(f, "tinynn.train.lora_only")) {
        if (tnn_gguf_get_str(f, "tinynn.train.init", &base, NULL) != TNN_OK)
            rc = ERR(TNN_ERR_FORMAT, "LoRA factors alone without their base model "
                                     "(tinynn.train.init)");
        else if (!(hf = tnn_gguf_open(base)))
            rc = tnn_last_status(); /* the message names the base */
    }
    lm_llama_hparams hp;
    if (rc == TNN_OK) rc = lm_llama_read_hparams(hf, &hp);
    if (hf && hf != f) tnn_gguf_close(hf);
    if (rc != TNN_OK) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s", tnn_last_error());
        rc = ERR(rc, "%s: %s", path, msg);
    } else {
        *cfg = (lm_config){.vocab = hp.n_vocab, .d_model = hp.n_embd, .n_layer = hp.n_layer,
                           .n_head = hp.n_head, .n_kv_head = hp.n_kv_head, .d_ff = hp.n_ff,
                           .seq_len = hp.n_ctx_train, .rope_base = hp.rope_base,
                           .norm_eps = hp.norm_eps, .rope_mode = hp.rope_mode,
                           .qkv_bias = hp.qkv_bias, .untied = !hp.tied_output,
                           .rope_factors = hp.rope_factors};
        int64_t seq;
        if (tnn_gguf_get_i64(f, "tinynn.train.seq", &seq) == TNN_OK && seq >= 1 &&
            seq <= hp.n_ctx_train) { /* a checkpoint of this library: its window */
            cfg->seq_len = (int)seq;
            cfg->ctx_len = seq < hp.n_ctx_train ? hp.n_ctx_train : 0;
        }
        tnn_clear_error();
    }
#define INT(key, dst)                                                                         \
    if (rc == TNN_OK) rc = get_int(f, key, &(dst))
#define DBL(key, dst)                                                                         \
    if (rc == TNN_OK) rc = get_dbl(f, key, &(dst))
    const char *why = rc == TNN_OK ? lm_config_problem(cfg) : NULL;
    if (why) rc = ERR(TNN_ERR_FORMAT, "%s: model shape: %s", path, why);
    if (st && rc == TNN_OK) {
        memset(st, 0, sizeof *st);
        int64_t v;
        rc = tnn_gguf_get_i64(f, "tinynn.train.step", &st->step);
        if (rc == TNN_OK) rc = tnn_gguf_get_i64(f, "tinynn.train.adam_steps", &st->adam_steps);
        if (rc == TNN_OK) rc = tnn_gguf_get_i64(f, "tinynn.train.seed", &v);
        if (rc == TNN_OK) st->seed = (uint64_t)v;
        const void *data;
        size_t nb;
        if (rc == TNN_OK) rc = tnn_gguf_get_arr_data(f, "tinynn.train.rng", &data, &nb);
        if (rc == TNN_OK && nb == sizeof st->rng.s) memcpy(st->rng.s, data, nb);
        else if (rc == TNN_OK) rc = ERR(TNN_ERR_FORMAT, "tinynn.train.rng: want 4 uint64");
        if (rc != TNN_OK && rc != TNN_ERR_FORMAT)
            rc = ERR(rc, "%s: not a training checkpoint (%s)", path, tnn_last_error());
        INT("tinynn.train.batch", st->batch);
        INT("tinynn.train.steps", st->steps);
        INT("tinynn.train.warmup", st->warmup);
        DBL("tinynn.train.lr", st->lr);
        DBL("tinynn.train.min_lr_ratio", st->min_lr_ratio);
        DBL("tinynn.train.beta1", st->optim.beta1);
        DBL("tinynn.train.beta2", st->optim.beta2);
        DBL("tinynn.train.eps", st->optim.eps);
        DBL("tinynn.train.weight_decay", st->optim.weight_decay);
        DBL("tinynn.train.grad_clip", st->optim.grad_clip);
        st->optim.lr = st->lr;
        const char *init = NULL;
        if (rc == TNN_OK && tnn_gguf_get_str(f, "tinynn.train.init", &init, NULL) == TNN_OK)
            snprintf(st->init, sizeof st->init, "%s", init);
        /* flags written only when set (older checkpoints have neither) */
        st->optim.bf16 = rc == TNN_OK && get_flag(f, "tinynn.train.bf16");
        st->qlora = rc == TNN_OK && get_flag(f, "tinynn.train.qlora");
        st->lora_only = rc == TNN_OK && get_flag(f, "tinynn.train.lora_only");
        int32_t rank = 0;
        if (rc == TNN_OK && tnn_gguf_get_i32(f, "tinynn.train.lora_rank", &rank) == TNN_OK) {
            cfg->lora_rank = rank;
            DBL("tinynn.train.lora_alpha", cfg->lora_alpha);
            why = rc == TNN_OK ? lm_config_problem(cfg) : NULL;
            if (why) rc = ERR(TNN_ERR_FORMAT, "%s: LoRA: %s", path, why);
            if (rc == TNN_OK && !st->init[0])
                rc = ERR(TNN_ERR_FORMAT, "%s: a LoRA checkpoint without its base model "
                                         "(tinynn.train.init)", path);
        } else if (rc == TNN_OK && st->lora_only) {
            rc = ERR(TNN_ERR_FORMAT, "%s: LoRA factors alone without a LoRA rank", path);
        }
        if (rc == TNN_OK) tnn_clear_error(); /* the optional keys looked for */
    }
#undef INT
#undef DBL
    tnn_gguf_close(f);
    return rc;
}

typedef struct {
    const tnn_gguf *f;
    lm_graph *g;
    bool optimizer;
    int part; /* LM_LOAD_* */
    const char *path;
} load_ctx;

/* The n values of tensor i of the file as f32 into dst: F32 copied (the
 * mapping need not be 4-byte aligned for us), another type dequantized row
 * by row (weights only: moments are always F32). */
static int read_f32(load_ctx *c, const char *name, int64_t i, int nd, const int64_t *shape,
                    bool weights, float *dst, size_t n) {
    int type = tnn_gguf_tensor_type(c->f, i);
    const void *data = tnn_gguf_tensor_data(c->f, i);
    if (type == TNN_GGML_F32) {
        memcpy(dst, data, n * sizeof *dst);
        return TNN_OK;
    }
    int64_t cols = shape[nd - 1], rb = weights ? tnn__qtype_row_bytes(type, cols) : -1;
    if (rb < 0)
        return ERR(TNN_ERR_UNSUPPORTED, "%s: tensor %s is %s, which cannot be read as f32 here",
                   c->path, name, tnn_ggml_type_name(type));
    for (size_t r = 0; r < n / (size_t)cols; r++) {
        int rc = tnn__dequantize_row(type, (const char *)data + r * (size_t)rb, dst + r * cols, cols);
        if (rc != TNN_OK) return ERR(rc, "%s: tensor %s: cannot dequantize", c->path, name);
    }
    return TNN_OK;
}

/* Copies tensor `name` of the file into t (which = -1: the weights, else
 * that optimizer moment). */
static int load_tensor(load_ctx *c, const char *name, tnn_tensor *t, int which) {
    int64_t i = tnn_gguf_find_tensor(c->f, name);
    if (i < 0) return ERR(TNN_ERR_FORMAT, "%s: tensor %s is missing", c->path, name);
    int64_t shape[4];
    int nd = tnn_gguf_tensor_shape(c->f, i, shape);
    bool same = nd >= 1 && nd == tnn_tensor_ndim(t);
    for (int k = 0; same && k < nd; k++) same = shape[k] == tnn_tensor_dim(t, k);
    if (!same) return ERR(TNN_ERR_FORMAT, "%s: tensor %s has the wrong shape", c->path, name);
    size_t n = (size_t)tnn_tensor_nelements(t);
    float *tmp = malloc(n * sizeof *tmp);
    if (!tmp) return ERR(TNN_ERR_NOMEM, "%s: out of memory reading %s", c->path, name);
    int rc = read_f32(c, name, i, nd, shape, which < 0, tmp, n);
    if (rc == TNN_OK) {
        rc = which < 0 ? tnn_upload_f32(c->g->s, t, tmp, n)
                       : tnn_optimizer_set_state(c->g->s, t, which, tmp, n);
        if (rc != TNN_OK) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s", tnn_last_error());
            rc = ERR(rc, "%s: %s", name, msg);
        }
    }
    free(tmp);
    return rc;
}

static int load_one(void *p, const char *name, tnn_tensor *t) {
    load_ctx *c = p;
    bool lora = lm_is_lora_name(name);
    if ((c->part == LM_LOAD_BASE && lora) || (c->part == LM_LOAD_LORA && !lora)) return TNN_OK;
    /* a QLoRA graph's frozen weights: read in place from the base model */
    if (c->part == LM_LOAD_BASE && (t->flags & TNN_FLAG_EXTERNAL) && c->g->cfg.frozen_gguf)
        return TNN_OK;
    int rc = load_tensor(c, name, t, -1);
    for (int which = 0; which < 2 && rc == TNN_OK && c->optimizer && trained(t); which++) {
        char oname[96];
        snprintf(oname, sizeof oname, "opt.%c.%s", which ? 'v' : 'm', name);
        rc = load_tensor(c, oname, t, which);
    }
    return rc;
}

int lm_checkpoint_load(const char *path, lm_graph *g, bool optimizer, int part) {
    if (part != LM_LOAD_ALL && part != LM_LOAD_BASE && part != LM_LOAD_LORA)
        return ERR(TNN_ERR_ARG, "part=%d", part);
    tnn_gguf *f = tnn_gguf_open(path);
    if (!f) return tnn_last_status();
    load_ctx c = {.f = f, .g = g, .optimizer = optimizer, .part = part, .path = path};
    int rc = lm_params_each(g, load_one, &c);
    if (rc == TNN_OK && optimizer) {
        int64_t adam_steps;
        rc = tnn_gguf_get_i64(f, "tinynn.train.adam_steps", &adam_steps);
        if (rc == TNN_OK) rc = tnn_optimizer_set_steps(g->s, adam_steps);
    }
    tnn_gguf_close(f);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* LoRA adapters                                                            */
/* ------------------------------------------------------------------------ */

int lm_lora_export(const char *checkpoint, const char *path) {
    if (!checkpoint || !path) return ERR(TNN_ERR_ARG, "checkpoint and adapter paths are needed");
    tnn_gguf *f = tnn_gguf_open(checkpoint);
    if (!f) return tnn_last_status();
    tnn_gguf_writer *w = tnn_gguf_writer_new();
    int rc = w ? TNN_OK : TNN_ERR_NOMEM;
    int rank = 0;
    double alpha = 0;
    const char *arch = NULL, *base = NULL;
    if (rc == TNN_OK && (get_int(f, "tinynn.train.lora_rank", &rank) != TNN_OK ||
                         get_dbl(f, "tinynn.train.lora_alpha", &alpha) != TNN_OK || rank < 1))
        rc = ERR(TNN_ERR_FORMAT, "%s is not a LoRA checkpoint (no tinynn.train.lora_rank)",
                 checkpoint);
    if (rc == TNN_OK && tnn_gguf_get_str(f, "general.architecture", &arch, NULL) != TNN_OK)
        rc = ERR(TNN_ERR_FORMAT, "%s has no general.architecture", checkpoint);
    if (rc == TNN_OK && tnn_gguf_get_str(f, "tinynn.train.init", &base, NULL) != TNN_OK) {
        base = NULL;
        tnn_clear_error();
    }
#define ADD(call)                                                                             \
    do {                                                                                      \
        if (rc == TNN_OK) rc = (call);                                                        \
    } while (0)
    /* llama.cpp's adapter keys (its convert_lora_to_gguf.py writes these) */
    ADD(tnn_gguf_writer_add_str(w, "general.architecture", arch));
    ADD(tnn_gguf_writer_add_str(w, "general.type", "adapter"));
    ADD(tnn_gguf_writer_add_str(w, "general.name", "tinynn LoRA adapter"));
    ADD(tnn_gguf_writer_add_str(w, "adapter.type", "lora"));
    ADD(tnn_gguf_writer_add_f32(w, "adapter.lora.alpha", (float)alpha));
    ADD(tnn_gguf_writer_add_i32(w, "tinynn.lora.rank", rank));
    if (base) ADD(tnn_gguf_writer_add_str(w, "tinynn.lora.base", base));
    /* the factors: blk.N.P.lora_a (rank, in) and .lora_b (out, rank) become
     * blk.N.P.weight.lora_a / .lora_b of the same shapes (GGUF ne: a (in,
     * rank), b (rank, out), as llama.cpp wants them) */
    int64_t n = tnn_gguf_n_tensors(f), n_a = 0, n_b = 0;
    for (int64_t i = 0; i < n && rc == TNN_OK; i++) {
        const char *name = tnn_gguf_tensor_name(f, i);
        if (!lm_is_lora_name(name) || !strncmp(name, "opt.", 4)) continue;
        size_t stem = strlen(name) - strlen(".lora_a");
        char out[128];
        if (stem + 16 >= sizeof out) {
            rc = ERR(TNN_ERR_FORMAT, "tensor name '%s' is too long", name);
            break;
        }
        snprintf(out, sizeof out, "%.*s.weight%s", (int)stem, name, name + stem);
        int64_t shape[4];
        int nd = tnn_gguf_tensor_shape(f, i, shape);
        bool is_a = name[strlen(name) - 1] == 'a';
        if (tnn_gguf_tensor_type(f, i) != TNN_GGML_F32 || nd != 2 ||
            shape[is_a ? 0 : 1] != rank) {
            rc = ERR(TNN_ERR_FORMAT, "%s: tensor '%s' is not an f32 LoRA factor of rank %d",
                     checkpoint, name, rank);
            break;
        }
        ADD(tnn_gguf_writer_add_tensor(w, out, TNN_GGML_F32, nd, shape,
                                       tnn_gguf_tensor_data(f, i),
                                       (size_t)tnn_gguf_tensor_nbytes(f, i)));
        *(is_a ? &n_a : &n_b) += 1;
    }
#undef ADD
    if (rc == TNN_OK && (n_a == 0 || n_a != n_b))
        rc = ERR(TNN_ERR_FORMAT, "%s holds %lld A and %lld B LoRA factors", checkpoint,
                 (long long)n_a, (long long)n_b);
    if (rc == TNN_OK) rc = tnn_gguf_writer_write(w, path);
    tnn_gguf_writer_free(w);
    tnn_gguf_close(f);
    return rc;
}
