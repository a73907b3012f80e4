/* model.c - the transformer as a graph: parameters, forward, loss, the
 * backward graph and the optimizer, and its initialisation.
 *
 *   x = tok_emb[tokens]
 *   per layer: h = rms(x) g1; q,k = rope(h Wq^T), rope(h Wk^T); v = h Wv^T
 *              x += attention(q, k, v) Wo^T
 *              h = rms(x) g2; x += (silu(h Wg^T) * (h Wu^T)) Wd^T
 *   logits = (rms(x) gf) tok_emb^T
 * A model read from a GGUF file may add biases to q, k and v, rotate NeoX
 * halves, divide RoPE's frequencies by fixed factors, and project the
 * logits with a matrix of its own (model.h).
 */
#include "model.h"

#include "rng.h"

#include "../core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic bool use_cuda;

void lm_use_cuda(bool on) { use_cuda = on; }
bool lm_cuda(void) { return use_cuda; }

lm_config lm_default_config(void) {
    lm_config c = {.vocab = 256, .d_model = 128, .n_layer = 4, .n_head = 4, .n_kv_head = 2,
                   .d_ff = 352, .seq_len = 64, .rope_base = 10000.0, .norm_eps = 1e-5};
    return c;
}

const char *lm_config_problem(const lm_config *c) {
    if (c->vocab < 2) return "vocab must be at least 2";
    if (c->d_model < 2 || c->n_layer < 1 || c->n_layer > LM_MAX_LAYERS)
        return "d_model >= 2 and 1 <= n_layer <= 64 are required";
    if (c->n_head < 1 || c->n_kv_head < 1 || c->n_head % c->n_kv_head)
        return "n_head must be a positive multiple of n_kv_head";
    if (c->d_model % c->n_head || (c->d_model / c->n_head) % 2)
        return "d_model / n_head (the head size) must be a whole even number";
    if (c->d_ff < 1 || c->seq_len < 1) return "d_ff and seq_len must be positive";
    if (c->ctx_len < 0) return "ctx_len must not be negative";
    if ((c->rope_mode != 0 && c->rope_mode != 1) || c->qkv_bias != (c->rope_mode == 1))
        return "RoPE mode and q/k/v biases must be llama's (adjacent pairs, no biases) or "
               "qwen2's (NeoX halves, biases)";
    if (c->lora_rank < 0 || c->lora_rank > c->d_model / c->n_head * c->n_kv_head ||
        (c->lora_rank > 0 && !(c->lora_alpha > 0)))
        return "the LoRA rank must be at most the narrowest projection's width (the k/v "
               "heads' total), with alpha > 0";
    if ((c->frozen_bf16 || c->frozen_gguf) && c->lora_rank == 0)
        return "frozen weights in bf16 or in the file's types are LoRA's (a full fine-tuning "
               "keeps f32 weights)";
    if (c->frozen_bf16 && c->frozen_gguf)
        return "frozen weights are either bf16 or the file's own";
    return NULL;
}

int64_t lm_param_count(const lm_config *c) {
    int64_t C = c->d_model, hd = C / c->n_head, kv = hd * c->n_kv_head, F = c->d_ff;
    int64_t per_layer = 2 * C + C * C * 2 + 2 * kv * C + 3 * C * F;
    if (c->qkv_bias) per_layer += C + 2 * kv;
    if (c->lora_rank > 0) /* only the factors train: (in + out) r for each projection */
        return c->n_layer * (int64_t)c->lora_rank * (4 * C + 2 * (C + kv) + 3 * (C + F));
    return (int64_t)c->vocab * C * (c->untied ? 2 : 1) + C + c->n_layer * per_layer;
}

/* ------------------------------------------------------------------------ */
/* Building                                                                 */
/* ------------------------------------------------------------------------ */

/* A weight: a parameter, or (LoRA) a frozen leaf. */
static tnn_tensor *new2(lm_graph *g, int64_t r, int64_t c) {
    int64_t sh[2] = {r, c};
    tnn_tensor *t = tnn_tensor_new(g->s, TNN_F32, 2, sh);
    if (t && g->cfg.lora_rank == 0) tnn_set_param(t);
    return t;
}

/* With frozen_gguf, tensor `name` of that file, which must be (r, c). */
static tnn_tensor *from_file(lm_graph *g, const char *name, int64_t r, int64_t c) {
    tnn_tensor *t = tnn_tensor_from_gguf(g->s, g->cfg.frozen_gguf, name);
    if (t && (tnn_tensor_ndim(t) != 2 || tnn_tensor_dim(t, 0) != r || tnn_tensor_dim(t, 1) != c))
        return TNN_ERR_NULL(TNN_ERR_FORMAT, "tensor %s of the frozen model is not (%lld, %lld)",
                            name, (long long)r, (long long)c);
    return t;
}

/* A matrix that is not a projection (the embeddings, the output): new2(),
 * or with frozen_gguf the file's. */
static tnn_tensor *new_mat(lm_graph *g, const char *name, int64_t r, int64_t c) {
    return g->cfg.frozen_gguf ? from_file(g, name, r, c) : new2(g, r, c);
}

const char *const lm_proj_names[LM_LORA_N] = {"attn_q",   "attn_k", "attn_v",  "attn_output",
                                              "ffn_gate", "ffn_up", "ffn_down"};

/* Projection i (LM_LORA_*) of layer l: new2(), with frozen_bf16 a bf16
 * leaf, with frozen_gguf the file's. */
static tnn_tensor *new_proj(lm_graph *g, int l, int i, int64_t r, int64_t c) {
    if (g->cfg.frozen_gguf) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, lm_proj_names[i]);
        return from_file(g, name, r, c);
    }
    if (!g->cfg.frozen_bf16) return new2(g, r, c);
    int64_t sh[2] = {r, c};
    return tnn_tensor_new(g->s, TNN_BF16, 2, sh);
}

static tnn_tensor *new1(lm_graph *g, int64_t n) {
    tnn_tensor *t = tnn_tensor_new(g->s, TNN_F32, 1, &n);
    if (t && g->cfg.lora_rank == 0) tnn_set_param(t);
    return t;
}

/* Layer L's projection weights in LM_LORA_* order. */
static void projections(const lm_layer *L, tnn_tensor *out[LM_LORA_N]) {
    tnn_tensor *w[LM_LORA_N] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    memcpy(out, w, sizeof w);
}

/* The LoRA factors of a projection w (out, in): A (r, in), B (out, r). */
static bool lora_pair(lm_graph *g, const tnn_tensor *w, tnn_tensor **a, tnn_tensor **b) {
    int64_t r = g->cfg.lora_rank, sa[2] = {r, w->shape[1]}, sb[2] = {w->shape[0], r};
    *a = tnn_tensor_new(g->s, TNN_F32, 2, sa);
    *b = tnn_tensor_new(g->s, TNN_F32, 2, sb);
    if (!*a || !*b) return false;
    tnn_set_param(*a);
    tnn_set_param(*b);
    return true;
}

static bool make_params(lm_graph *g) {
    const lm_config *c = &g->cfg;
    tnn_session *s = g->s;
    int64_t C = c->d_model, hd = C / c->n_head;
    g->p.tok_emb = new_mat(g, "token_embd.weight", c->vocab, C);
    g->p.out_norm = new1(g, C);
    bool ok = g->p.tok_emb && g->p.out_norm;
    if (ok && c->untied) ok = (g->p.output = new_mat(g, "output.weight", c->vocab, C)) != NULL;
    if (ok && c->rope_factors) {
        int64_t n = hd / 2;
        ok = (g->p.rope_freqs = tnn_tensor_new(s, TNN_F32, 1, &n)) != NULL; /* not trained */
    }
    for (int l = 0; l < c->n_layer && ok; l++) {
        lm_layer *L = &g->p.layer[l];
        L->attn_norm = new1(g, C);
        L->wq = new_proj(g, l, LM_LORA_Q, c->n_head * hd, C);
        L->wk = new_proj(g, l, LM_LORA_K, c->n_kv_head * hd, C);
        L->wv = new_proj(g, l, LM_LORA_V, c->n_kv_head * hd, C);
        L->wo = new_proj(g, l, LM_LORA_O, C, c->n_head * hd);
        L->ffn_norm = new1(g, C);
        L->w_gate = new_proj(g, l, LM_LORA_GATE, c->d_ff, C);
        L->w_up = new_proj(g, l, LM_LORA_UP, c->d_ff, C);
        L->w_down = new_proj(g, l, LM_LORA_DOWN, C, c->d_ff);
        ok = L->attn_norm && L->wq && L->wk && L->wv && L->wo && L->ffn_norm && L->w_gate &&
             L->w_up && L->w_down;
        tnn_tensor *proj[LM_LORA_N];
        projections(L, proj);
        for (int i = 0; ok && c->lora_rank > 0 && i < LM_LORA_N; i++)
            ok = lora_pair(g, proj[i], &L->lora_a[i], &L->lora_b[i]);
        if (ok && c->qkv_bias) {
            L->bq = new1(g, c->n_head * hd);
            L->bk = new1(g, c->n_kv_head * hd);
            L->bv = new1(g, c->n_kv_head * hd);
            ok = L->bq && L->bk && L->bv;
        }
    }
    return ok;
}

/* In mixed precision on a GPU an activation that products read, rounded to
 * bf16 once for all of them (the products and their gradients then run in
 * bf16 on the tensor cores); else x itself. A CPU keeps f32 activations:
 * its bf16 kernels (AMX, vdpbf16ps) round them themselves while packing,
 * and rounding them in the graph measured no faster (AMX: small config 74 ->
 * 86 ms a step, GPT-2 small 797 -> 791 ms). */
static tnn_tensor *act(lm_graph *g, tnn_tensor *x) {
    return g->bf16_acts ? tnn_to_bf16(g->s, x) : x;
}

/* x @ w^T, with x from act() and, in mixed precision, a bf16 copy of an
 * f32 w: a bf16 product, whose gradients are bf16 products too (frozen
 * weights in bf16 or a quantized type are used as they are). */
static tnn_tensor *linear(lm_graph *g, tnn_tensor *x, tnn_tensor *w) {
    bool round = g->bf16 && tnn_tensor_dtype(w) == TNN_F32;
    return tnn_matmul_nt(g->s, x, round ? tnn_to_bf16(g->s, w) : w);
}

/* linear() plus a bias b (NULL: none) broadcast over the rows. */
static tnn_tensor *affine(lm_graph *g, tnn_tensor *x, tnn_tensor *w, tnn_tensor *b) {
    tnn_tensor *y = linear(g, x, w);
    return b ? tnn_add(g->s, y, b) : y;
}

/* Projection i (LM_LORA_*) of layer L: affine(), plus with LoRA the
 * low-rank update (alpha / rank) (x A^T) B^T. */
static tnn_tensor *proj(lm_graph *g, const lm_layer *L, int i, tnn_tensor *x, tnn_tensor *w,
                        tnn_tensor *b) {
    tnn_tensor *y = affine(g, x, w, b);
    if (!L->lora_a[i]) return y;
    tnn_tensor *d = linear(g, linear(g, x, L->lora_a[i]), L->lora_b[i]);
    return tnn_add(g->s, y, tnn_scale(g->s, d, g->cfg.lora_alpha / g->cfg.lora_rank));
}

/* RoPE of q or k: by row position within a sequence, divided by the
 * model's frequency factors when it has them. */
static tnn_tensor *rope(lm_graph *g, tnn_tensor *x, int n_head) {
    const lm_config *c = &g->cfg;
    if (c->rope_factors)
        return tnn_rope_ext(g->s, x, n_head, g->positions, c->rope_base, c->rope_mode,
                            g->p.rope_freqs);
    return tnn_rope(g->s, x, n_head, g->T, c->rope_base, c->rope_mode);
}

static tnn_tensor *forward(lm_graph *g) {
    const lm_config *c = &g->cfg;
    tnn_session *s = g->s;
    double eps = c->norm_eps;
    tnn_tensor *x = tnn_get_rows(s, g->p.tok_emb, g->tokens);
    for (int l = 0; l < c->n_layer; l++) {
        const lm_layer *L = &g->p.layer[l];
        tnn_tensor *h = act(g, tnn_rms_norm(s, x, L->attn_norm, eps));
        tnn_tensor *q = rope(g, proj(g, L, LM_LORA_Q, h, L->wq, L->bq), c->n_head);
        tnn_tensor *k = rope(g, proj(g, L, LM_LORA_K, h, L->wk, L->bk), c->n_kv_head);
        tnn_tensor *v = proj(g, L, LM_LORA_V, h, L->wv, L->bv);
        tnn_tensor *a = tnn_attention(s, q, k, v, c->n_head, c->n_kv_head, g->T);
        x = tnn_add(s, x, proj(g, L, LM_LORA_O, act(g, a), L->wo, NULL));
        h = act(g, tnn_rms_norm(s, x, L->ffn_norm, eps));
        tnn_tensor *f = tnn_swiglu(s, proj(g, L, LM_LORA_GATE, h, L->w_gate, NULL),
                                   proj(g, L, LM_LORA_UP, h, L->w_up, NULL));
        x = tnn_add(s, x, proj(g, L, LM_LORA_DOWN, act(g, f), L->w_down, NULL));
    }
    x = act(g, tnn_rms_norm(s, x, g->p.out_norm, eps));
    tnn_tensor *w = c->untied ? g->p.output : g->p.tok_emb;
    if (g->vocab_rows > c->vocab) {
        int64_t shape[2] = {g->vocab_rows - c->vocab, c->d_model};
        tnn_tensor *zeros = tnn_tensor_new(s, TNN_F32, 2, shape); /* a leaf: zero, never set */
        w = zeros ? tnn_concat(s, w, zeros, 0) : NULL;
    }
    return linear(g, x, w);
}

/* The output projection's rows: the vocabulary rounded up to a multiple of
 * `align` (optim->vocab_align, 0 picking by backend), in a training graph
 * that does not keep its logits and whose output matrix is its own (a
 * file's quantized one takes no rows of zeros). */
static int64_t vocab_rows(const lm_graph *g, const lm_optim *optim) {
    int64_t V = g->cfg.vocab;
    if (!optim || optim->keep_logits || g->cfg.frozen_gguf) return V;
    int64_t align = optim->vocab_align;
    if (align == 0) align = strcmp(tnn_session_backend(g->s), "cuda") ? 1 : 64;
    return align > 1 ? (V + align - 1) / align * align : V;
}

/* (double)(float)v. Through a volatile because GCC 12.2's SLP vectorizer
 * drops a pair of such round trips next to a struct copy (checked: the
 * plain casts compile to no conversion at all at -O2). */
static double f32_round(double v) {
    volatile float f = (float)v;
    return f;
}

int lm_graph_build(lm_graph *g, const lm_config *cfg, int B, int T, bool with_loss,
                   const lm_optim *optim, bool cuda) {
    memset(g, 0, sizeof *g);
    const char *why = lm_config_problem(cfg);
    if (why) return TNN_ERR(TNN_ERR_ARG, "model config: %s", why);
    if (optim && optim->vocab_align < 0)
        return TNN_ERR(TNN_ERR_ARG, "vocab_align %d (want 0 or more)", optim->vocab_align);
    if (B < 1 || T < 1 || T > cfg->seq_len)
        return TNN_ERR(TNN_ERR_ARG, "B=%d T=%d (seq_len %d)", B, T, cfg->seq_len);
    g->cfg = *cfg;
    /* Kept at f32 precision, as GGUF stores them: a model saved and loaded
     * again computes exactly the same. */
    g->cfg.norm_eps = f32_round(cfg->norm_eps);
    g->cfg.rope_base = f32_round(cfg->rope_base);
    g->B = B;
    g->T = T;
    g->bf16 = optim && optim->bf16;
    g->s = tnn_session_new(cuda);
    if (!g->s) return TNN_ERR_NOMEM;
    /* (products with quantized weights take f32 activations) */
    g->bf16_acts = g->bf16 && !cfg->frozen_gguf && !strcmp(tnn_session_backend(g->s), "cuda");
    int rc = TNN_ERR_INTERNAL;
    if (!make_params(g)) goto fail;
    if (cfg->lora_rank == 0) tnn_set_no_decay(g->p.out_norm);
    for (int l = 0; l < cfg->n_layer && cfg->lora_rank == 0; l++) {
        lm_layer *L = &g->p.layer[l];
        tnn_tensor *no_decay[] = {L->attn_norm, L->ffn_norm, L->bq, L->bk, L->bv};
        for (size_t i = 0; i < sizeof no_decay / sizeof no_decay[0]; i++)
            if (no_decay[i]) tnn_set_no_decay(no_decay[i]);
    }
    g->vocab_rows = vocab_rows(g, optim);
    if (cfg->rope_factors && !(g->positions = tnn_input_1d_i32(g->s, B * T))) goto fail;
    g->tokens = tnn_input_1d_i32(g->s, B * T);
    g->logits = g->tokens ? forward(g) : NULL;
    if (!g->logits) goto fail;
    if (!optim || optim->keep_logits) tnn_set_output(g->logits);
    tnn_tensor *root = g->logits;
    if (with_loss) {
        g->targets = tnn_input_1d_i32(g->s, B * T);
        g->loss = tnn_cross_entropy_padded(g->s, g->logits, g->targets, -1, cfg->vocab);
        if (!g->loss) goto fail;
        root = g->loss;
    }
    if (optim) {
        if ((rc = tnn_backward(g->s, g->loss)) != TNN_OK) goto fail;
        if ((rc = tnn_optimizer_adamw(g->s, optim->lr, optim->beta1, optim->beta2, optim->eps,
                                      optim->weight_decay)) != TNN_OK)
            goto fail;
        if ((rc = tnn_set_grad_clip(g->s, optim->grad_clip)) != TNN_OK) goto fail;
    }
    if ((rc = tnn_realize(g->s, root)) != TNN_OK) goto fail;
    if (g->positions) {
        int32_t *pos = malloc((size_t)B * T * sizeof *pos);
        if (!pos) {
            rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
            goto fail;
        }
        for (int64_t r = 0; r < (int64_t)B * T; r++) pos[r] = (int32_t)(r % T);
        rc = tnn_upload_i32(g->s, g->positions, pos, (size_t)B * T);
        free(pos);
        if (rc != TNN_OK) goto fail;
    }
    return TNN_OK;
fail:
    if (rc == TNN_ERR_INTERNAL && tnn_last_status() != TNN_OK) rc = tnn_last_status();
    lm_graph_free(g); /* the message stays in tnn_last_error() */
    return rc;
}

void lm_graph_free(lm_graph *g) {
    tnn_session_free(g->s);
    g->s = NULL;
}

int lm_params_each(const lm_graph *g, lm_param_fn fn, void *ctx) {
    int rc = fn(ctx, "token_embd.weight", g->p.tok_emb);
    if (rc) return rc;
    char name[64];
    for (int l = 0; l < g->cfg.n_layer; l++) {
        const lm_layer *L = &g->p.layer[l];
        struct {
            const char *n;
            tnn_tensor *t;
        } items[] = {{"attn_norm.weight", L->attn_norm}, {"attn_q.weight", L->wq},
                     {"attn_q.bias", L->bq},             {"attn_k.weight", L->wk},
                     {"attn_k.bias", L->bk},             {"attn_v.weight", L->wv},
                     {"attn_v.bias", L->bv},             {"attn_output.weight", L->wo},
                     {"ffn_norm.weight", L->ffn_norm},   {"ffn_gate.weight", L->w_gate},
                     {"ffn_up.weight", L->w_up},         {"ffn_down.weight", L->w_down}};
        for (size_t i = 0; i < sizeof items / sizeof items[0]; i++) {
            if (!items[i].t) continue; /* no biases */
            snprintf(name, sizeof name, "blk.%d.%s", l, items[i].n);
            if ((rc = fn(ctx, name, items[i].t))) return rc;
        }
        for (int i = 0; i < LM_LORA_N && L->lora_a[0]; i++)
            for (int ab = 0; ab < 2; ab++) {
                snprintf(name, sizeof name, "blk.%d.%s.lora_%c", l, lm_proj_names[i], ab ? 'b' : 'a');
                if ((rc = fn(ctx, name, ab ? L->lora_b[i] : L->lora_a[i]))) return rc;
            }
    }
    rc = fn(ctx, "output_norm.weight", g->p.out_norm);
    if (rc == TNN_OK && g->p.output) rc = fn(ctx, "output.weight", g->p.output);
    if (rc == TNN_OK && g->p.rope_freqs) rc = fn(ctx, "rope_freqs.weight", g->p.rope_freqs);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Initialisation and copies                                                */
/* ------------------------------------------------------------------------ */

typedef struct {
    lm_graph *g;
    tnn_rng rng;
    double resid_scale;
    bool lora_only;
} init_ctx;

bool lm_lora_factors(const lm_graph *g, const tnn_tensor *w, tnn_tensor **a, tnn_tensor **b) {
    for (int l = 0; l < g->cfg.n_layer && g->cfg.lora_rank > 0; l++) {
        const lm_layer *L = &g->p.layer[l];
        tnn_tensor *proj[LM_LORA_N];
        projections(L, proj);
        for (int i = 0; i < LM_LORA_N; i++)
            if (proj[i] == w) {
                *a = L->lora_a[i];
                *b = L->lora_b[i];
                return true;
            }
    }
    return false;
}

bool lm_is_lora_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcmp(dot, ".lora_a") || !strcmp(dot, ".lora_b"));
}

static int init_one(void *p, const char *name, tnn_tensor *t) {
    init_ctx *c = p;
    if (c->lora_only && !lm_is_lora_name(name)) return TNN_OK;
    size_t n = (size_t)tnn_tensor_nelements(t);
    float *buf = malloc(n * sizeof *buf);
    if (!buf) return TNN_ERR_NOMEM;
    bool lora = lm_is_lora_name(name), lora_a = lora && name[strlen(name) - 1] == 'a';
    bool ones = !lora && (strstr(name, "norm") || strstr(name, "rope_freqs"));
    bool zeros = strstr(name, ".bias") || (lora && !lora_a);
    bool resid = strstr(name, "attn_output") || strstr(name, "ffn_down");
    double std = 0.02 * (resid ? c->resid_scale : 1.0);
    /* LoRA's A: uniform in +-1/sqrt(in), as PEFT's Kaiming-uniform start */
    double bound = lora_a ? 1.0 / sqrt((double)tnn_tensor_dim(t, 1)) : 0.0;
    for (size_t i = 0; i < n; i++)
        buf[i] = ones    ? 1.0f
                 : zeros ? 0.0f
                 : lora_a ? (float)(bound * (2.0 * tnn_rng_uniform(&c->rng) - 1.0))
                          : (float)(std * tnn_rng_normal(&c->rng));
    int rc = tnn_upload_f32(c->g->s, t, buf, n);
    free(buf);
    return rc;
}

int lm_init_weights(lm_graph *g, uint64_t seed) {
    init_ctx c = {.g = g, .resid_scale = 1.0 / sqrt(2.0 * g->cfg.n_layer)};
    tnn_rng_seed(&c.rng, seed);
    return lm_params_each(g, init_one, &c);
}

int lm_init_lora(lm_graph *g, uint64_t seed) {
    init_ctx c = {.g = g, .lora_only = true};
    tnn_rng_seed(&c.rng, seed);
    return lm_params_each(g, init_one, &c);
}

typedef struct {
    int index;
    tnn_tensor *dst_list[LM_MAX_LAYERS * (12 + 2 * LM_LORA_N) + 4];
} share_ctx;

static int collect(void *p, const char *name, tnn_tensor *t) {
    share_ctx *c = p;
    c->dst_list[c->index++] = t;
    return TNN_OK;
}

static int share_one(void *p, const char *name, tnn_tensor *t) {
    share_ctx *c = p;
    return tnn__tensor_share(c->dst_list[c->index++], t);
}

int lm_share_weights(lm_graph *dst, const lm_graph *src) {
    share_ctx *c = calloc(1, sizeof *c);
    if (!c) return TNN_ERR_NOMEM;
    int rc = lm_params_each(dst, collect, c);
    c->index = 0;
    if (rc == TNN_OK) rc = lm_params_each(src, share_one, c);
    free(c);
    return rc;
}
