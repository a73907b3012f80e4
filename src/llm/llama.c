/* llama.c - llama-family inference on tinynn graphs.
 *
 * Per layer:  h = rms(x) g1;  q, k = rope(h Wq^T + bq, h Wk^T + bk); v = h Wv^T + bv
 *             K/V cache rows [pos, pos+n) = k, v;  x += attention(q, cache) Wo^T
 *             h = rms(x) g2;  x += (silu(h Wg^T) * (h Wu^T)) Wd^T
 * then logits = rms(x_last) gf  Wout^T  (Wout = token_embd when tied).
 * Weights are the mapped file's tensors (quantized ones go through the
 * quantized matrix-vector kernels). A graph is built per token count n and
 * kept: the n = 1 decoding graph is built once and reused for every token;
 * positions and the cache offset are inputs read at compute time.
 */
#include "llama.h"
#include "model.h"

#include "../core/internal.h"
#include "../quant/quant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    tnn_tensor *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv;
    tnn_tensor *ffn_norm, *w_gate, *w_up, *w_down;
    tnn_tensor *kcache, *vcache;
    /* a LoRA adapter's factors (lm_llama_add_lora), LM_LORA_* order: A (r,
     * in) and B (out, r) with the scale folded into B; NULL where none */
    tnn_tensor *lora_a[LM_LORA_N], *lora_b[LM_LORA_N];
} llama_layer;

/* An adapter's factor, converted to f32, until the first realize gives its
 * leaf storage to upload it to. */
typedef struct {
    tnn_tensor *t;
    float *v;
} lora_pending;

/* One graph for a given token count. */
typedef struct {
    int n;
    bool all; /* logits of every token (else the last one's) */
    tnn_tensor *tokens, *positions, *pos0, *last, *logits;
} llama_graph;

struct lm_llama {
    tnn_gguf *g;
    lm_llama_hparams hp;
    int n_ctx, pos;
    tnn_session *s;
    tnn_tensor *tok_embd, *output, *out_norm, *rope_freqs;
    /* an adapter's factors of the embeddings (A (vocab, r): a row a token,
     * B (n_embd, r)) and of the output matrix (A (r, n_embd), B (vocab, r)),
     * the scale folded into B; NULL where none */
    tnn_tensor *embd_a, *embd_b, *out_a, *out_b;
    llama_layer *L;
    llama_graph graphs[2]; /* [0]: the decoding graph (n = 1), [1]: the last prompt size */
    int realized;          /* index of the realized graph, or -1 */
    int32_t n_fixed;       /* tensors before any graph (weights, caches): a new
                            * prompt size drops the graphs made after them */
    bool lora;             /* an adapter is applied */
    lora_pending *pending; /* its factors not uploaded yet */
    int n_pending;
};

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */
/* ------------------------------------------------------------------------ */

static int get_int(const tnn_gguf *g, const char *arch, const char *key, int *out, bool required) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int64_t v;
    int rc = tnn_gguf_get_i64(g, k, &v);
    if (rc != TNN_OK) {
        if (!required && rc == TNN_ERR_RANGE) return TNN_OK;
        return TNN_ERR(TNN_ERR_FORMAT, "the model has no usable %s (an integer is required)", k);
    }
    if (v <= 0 || v > INT32_MAX)
        return TNN_ERR(TNN_ERR_FORMAT, "%s = %lld is out of range", k, (long long)v);
    *out = (int)v;
    return TNN_OK;
}

static int get_dbl(const tnn_gguf *g, const char *arch, const char *key, double *out,
                   bool required) {
    char k[128];
    snprintf(k, sizeof k, "%s.%s", arch, key);
    int rc = tnn_gguf_get_f64(g, k, out);
    if (rc != TNN_OK && (required || rc != TNN_ERR_RANGE))
        return TNN_ERR(TNN_ERR_FORMAT, "the model has no usable %s (a float is required)", k);
    return TNN_OK;
}

int lm_llama_refuse_lora_only(const tnn_gguf *g) {
    int only = 0;
    const char *base = NULL;
    if (tnn_gguf_get_bool(g, "tinynn.train.lora_only", &only) != TNN_OK || !only) {
        tnn_clear_error();
        return TNN_OK;
    }
    if (tnn_gguf_get_str(g, "tinynn.train.init", &base, NULL) != TNN_OK) base = "its base model";
    return TNN_ERR(TNN_ERR_FORMAT,
                   "a checkpoint of LoRA factors alone (tnn train --lora-only), not a model: "
                   "resume it, or run %s with its adapter (tnn lora-export, then --lora)", base);
}

static int read_hparams(const tnn_gguf *g, lm_llama_hparams *hp) {
    int rc = lm_llama_refuse_lora_only(g);
    if (rc) return rc;
    memset(hp, 0, sizeof *hp);
    const char *arch;
    if (tnn_gguf_get_str(g, "general.architecture", &arch, NULL) != TNN_OK)
        return TNN_ERR(TNN_ERR_FORMAT, "the model has no general.architecture");
    if (strcmp(arch, "llama") && strcmp(arch, "qwen2"))
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "architecture '%s' is not supported (llama and qwen2 "
                       "are)", arch);
    snprintf(hp->arch, sizeof hp->arch, "%s", arch);
    rc = get_int(g, arch, "block_count", &hp->n_layer, true);
    if (!rc) rc = get_int(g, arch, "embedding_length", &hp->n_embd, true);
    if (!rc) rc = get_int(g, arch, "feed_forward_length", &hp->n_ff, true);
    if (!rc) rc = get_int(g, arch, "attention.head_count", &hp->n_head, true);
    hp->n_kv_head = hp->n_head;
    if (!rc) rc = get_int(g, arch, "attention.head_count_kv", &hp->n_kv_head, false);
    if (!rc) rc = get_int(g, arch, "context_length", &hp->n_ctx_train, true);
    hp->rope_base = 10000.0;
    if (!rc) rc = get_dbl(g, arch, "rope.freq_base", &hp->rope_base, false);
    if (!rc) rc = get_dbl(g, arch, "attention.layer_norm_rms_epsilon", &hp->norm_eps, true);
    if (rc) return rc;
    if (hp->n_embd % hp->n_head || hp->n_head % hp->n_kv_head)
        return TNN_ERR(TNN_ERR_FORMAT, "head counts %d/%d do not divide embedding_length %d",
                       hp->n_head, hp->n_kv_head, hp->n_embd);
    hp->head_dim = hp->n_embd / hp->n_head;
    int rope_dim = hp->head_dim;
    if (!rc) rc = get_int(g, arch, "rope.dimension_count", &rope_dim, false);
    if (rc) return rc;
    if (rope_dim != hp->head_dim)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "partial rotary embedding (rope.dimension_count %d of "
                       "head size %d) is not supported", rope_dim, hp->head_dim);
    char k[128];
    snprintf(k, sizeof k, "%s.rope.scaling.type", arch);
    const char *scaling;
    if (tnn_gguf_get_str(g, k, &scaling, NULL) == TNN_OK && strcmp(scaling, "none"))
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "rope scaling '%s' is not supported", scaling);
    tnn_clear_error();
    hp->rope_mode = strcmp(arch, "qwen2") == 0 ? 1 : 0;
    hp->qkv_bias = strcmp(arch, "qwen2") == 0;
    /* from the tensor table: the vocabulary, the output projection, RoPE's factors */
    int64_t i = tnn_gguf_find_tensor(g, "token_embd.weight"), sh[4];
    if (i < 0 || tnn_gguf_tensor_shape(g, i, sh) != 2 || sh[1] != hp->n_embd || sh[0] < 1 ||
        sh[0] > INT32_MAX)
        return TNN_ERR(TNN_ERR_FORMAT, "the model has no token_embd.weight of (vocab, %d)",
                       hp->n_embd);
    hp->n_vocab = (int)sh[0];
    hp->tied_output = tnn_gguf_find_tensor(g, "output.weight") < 0;
    hp->rope_factors = tnn_gguf_find_tensor(g, "rope_freqs.weight") >= 0;
    tnn_clear_error();
    return TNN_OK;
}

int lm_llama_read_hparams(const tnn_gguf *g, lm_llama_hparams *hp) {
    if (!g || !hp) return TNN_ERR(TNN_ERR_ARG, "NULL argument");
    return read_hparams(g, hp);
}

static tnn_tensor *weight(lm_llama *m, const char *name, int64_t d0, int64_t d1, int *rc) {
    if (*rc) return NULL;
    tnn_tensor *t = tnn_tensor_from_gguf(m->s, m->g, name);
    if (!t) {
        *rc = tnn_last_status();
        return NULL;
    }
    bool ok = d1 ? (tnn_tensor_ndim(t) == 2 && tnn_tensor_dim(t, 0) == d0 && tnn_tensor_dim(t, 1) == d1)
                 : (tnn_tensor_nelements(t) == d0);
    if (!ok) {
        *rc = TNN_ERR(TNN_ERR_FORMAT, "tensor %s has an unexpected shape (want %lld x %lld)", name,
                      (long long)d0, (long long)d1);
        return NULL;
    }
    return t;
}

static tnn_tensor *layer_w(lm_llama *m, int l, const char *what, int64_t d0, int64_t d1, int *rc) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", l, what);
    return weight(m, name, d0, d1, rc);
}

lm_llama *lm_llama_load(const char *path, int n_ctx, int kv_dtype, bool cuda) {
    if (kv_dtype != TNN_F32 && kv_dtype != TNN_F16)
        return TNN_ERR_NULL(TNN_ERR_ARG, "kv_dtype=%d: want TNN_F32 or TNN_F16", kv_dtype);
    lm_llama *m = calloc(1, sizeof *m);
    if (!m) return TNN_ERR_NULL(TNN_ERR_NOMEM, "out of memory");
    m->realized = -1;
    m->g = tnn_gguf_open(path);
    int rc = m->g ? read_hparams(m->g, &m->hp) : tnn_last_status();
    lm_llama_hparams *hp = &m->hp;
    if (rc == TNN_OK) {
        m->s = tnn_session_new(cuda);
        m->L = calloc((size_t)hp->n_layer, sizeof *m->L);
        if (!m->s || !m->L) rc = TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    }
    if (rc == TNN_OK) {
        int64_t E = hp->n_embd, kv = (int64_t)hp->n_kv_head * hp->head_dim, F = hp->n_ff;
        m->tok_embd = weight(m, "token_embd.weight", hp->n_vocab, E, &rc);
        m->out_norm = weight(m, "output_norm.weight", E, 0, &rc);
        m->output = hp->tied_output ? m->tok_embd : weight(m, "output.weight", hp->n_vocab, E, &rc);
        if (hp->rope_factors) m->rope_freqs = weight(m, "rope_freqs.weight", hp->head_dim / 2, 0, &rc);
        for (int l = 0; l < hp->n_layer && rc == TNN_OK; l++) {
            llama_layer *L = &m->L[l];
            L->attn_norm = layer_w(m, l, "attn_norm.weight", E, 0, &rc);
            L->wq = layer_w(m, l, "attn_q.weight", E, E, &rc);
            L->wk = layer_w(m, l, "attn_k.weight", kv, E, &rc);
            L->wv = layer_w(m, l, "attn_v.weight", kv, E, &rc);
            L->wo = layer_w(m, l, "attn_output.weight", E, E, &rc);
            if (hp->qkv_bias) {
                L->bq = layer_w(m, l, "attn_q.bias", E, 0, &rc);
                L->bk = layer_w(m, l, "attn_k.bias", kv, 0, &rc);
                L->bv = layer_w(m, l, "attn_v.bias", kv, 0, &rc);
            }
            L->ffn_norm = layer_w(m, l, "ffn_norm.weight", E, 0, &rc);
            L->w_gate = layer_w(m, l, "ffn_gate.weight", F, E, &rc);
            L->w_up = layer_w(m, l, "ffn_up.weight", F, E, &rc);
            L->w_down = layer_w(m, l, "ffn_down.weight", E, F, &rc);
        }
    }
    if (rc == TNN_OK) {
        if (n_ctx <= 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
        m->n_ctx = n_ctx;
        int64_t kv = (int64_t)hp->n_kv_head * hp->head_dim;
        for (int l = 0; l < hp->n_layer && rc == TNN_OK; l++) {
            int64_t sh[2] = {n_ctx, kv};
            m->L[l].kcache = tnn_tensor_new(m->s, kv_dtype, 2, sh);
            m->L[l].vcache = tnn_tensor_new(m->s, kv_dtype, 2, sh);
            if (!m->L[l].kcache || !m->L[l].vcache) rc = tnn_last_status();
        }
        m->n_fixed = m->s->n_tensors;
    }
    if (rc != TNN_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tnn_last_error());
        lm_llama_free(m);
        return TNN_ERR_NULL(rc, "%s: %s", path, msg);
    }
    return m;
}

void lm_llama_free(lm_llama *m) {
    if (!m) return;
    for (int i = 0; i < m->n_pending; i++) free(m->pending[i].v);
    free(m->pending);
    tnn_session_free(m->s);
    tnn_gguf_close(m->g);
    free(m->L);
    free(m);
}

/* ------------------------------------------------------------------------ */
/* LoRA adapters                                                            */
/* ------------------------------------------------------------------------ */

static tnn_tensor *proj_weight(const llama_layer *L, int p) {
    tnn_tensor *const w[LM_LORA_N] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
    return w[p];
}

enum { TARGET_EMBD = -1, TARGET_OUTPUT = -2 };

/* What a tensor name "....weight.lora_a" adapts: *layer and *proj for
 * "blk.N.P.weight.lora_a", else *layer TARGET_EMBD for the embeddings
 * ("token_embd.weight.lora_a") or TARGET_OUTPUT for the output matrix
 * ("output.weight.lora_a"); false for any other name. */
static bool lora_target(const char *name, int *layer, int *proj) {
    *proj = 0;
    if (!strcmp(name, "token_embd.weight.lora_a") || !strcmp(name, "output.weight.lora_a")) {
        *layer = name[0] == 't' ? TARGET_EMBD : TARGET_OUTPUT;
        return true;
    }
    int l, at = 0;
    if (sscanf(name, "blk.%d.%n", &l, &at) != 1 || at == 0 || l < 0) return false;
    for (int p = 0; p < LM_LORA_N; p++) {
        size_t n = strlen(lm_proj_names[p]);
        if (!strncmp(name + at, lm_proj_names[p], n) && !strcmp(name + at + n, ".weight.lora_a")) {
            *layer = l;
            *proj = p;
            return true;
        }
    }
    return false;
}

/* A leaf (rows, cols) for the adapter's tensor i, its values (times scale)
 * kept for the upload after the next realize. */
static tnn_tensor *lora_leaf(lm_llama *m, const tnn_gguf *a, int64_t i, int64_t rows,
                             int64_t cols, double scale, int *rc) {
    if (*rc) return NULL;
    int64_t sh[4] = {0}, n = rows * cols, ish[2] = {rows, cols};
    if (tnn_gguf_tensor_shape(a, i, sh) != 2 || sh[0] != rows || sh[1] != cols) {
        *rc = TNN_ERR(TNN_ERR_FORMAT, "adapter tensor %s is %lld x %lld, want %lld x %lld (an "
                      "adapter for another model?)", tnn_gguf_tensor_name(a, i), (long long)sh[0],
                      (long long)sh[1], (long long)rows, (long long)cols);
        return NULL;
    }
    float *v = malloc((size_t)n * sizeof *v);
    tnn_tensor *t = tnn_tensor_new(m->s, TNN_F32, 2, ish);
    if (!v || !t) {
        free(v);
        *rc = t ? TNN_ERR(TNN_ERR_NOMEM, "out of memory") : tnn_last_status();
        return NULL;
    }
    *rc = tnn__dequantize_row(tnn_gguf_tensor_type(a, i), tnn_gguf_tensor_data(a, i), v, n);
    if (*rc) {
        free(v);
        *rc = TNN_ERR(TNN_ERR_UNSUPPORTED, "adapter tensor %s: type %d cannot be read",
                      tnn_gguf_tensor_name(a, i), tnn_gguf_tensor_type(a, i));
        return NULL;
    }
    for (int64_t k = 0; k < n && scale != 1.0; k++) v[k] = (float)(v[k] * scale);
    m->pending[m->n_pending++] = (lora_pending){t, v};
    return t;
}

int lm_lora_header(const tnn_gguf *a, const char *arch, double *alpha) {
    const char *type = NULL, *atype = NULL, *aarch = NULL;
    tnn_gguf_get_str(a, "general.type", &type, NULL);
    tnn_gguf_get_str(a, "adapter.type", &atype, NULL);
    tnn_gguf_get_str(a, "general.architecture", &aarch, NULL);
    if (tnn_gguf_get_f64(a, "adapter.lora.alpha", alpha) != TNN_OK) *alpha = 0;
    tnn_clear_error();
    if (!type || strcmp(type, "adapter") || !atype || strcmp(atype, "lora")) {
        bool ckpt = tnn_gguf_find_key(a, "tinynn.train.lora_rank") >= 0;
        tnn_clear_error();
        return TNN_ERR(TNN_ERR_FORMAT, "not a LoRA adapter (general.type '%s', adapter.type "
                       "'%s')%s", type ? type : "", atype ? atype : "",
                       ckpt ? ": a LoRA run's checkpoint, whose adapter tnn lora-export writes"
                            : "");
    }
    if (!aarch || !arch || strcmp(aarch, arch))
        return TNN_ERR(TNN_ERR_FORMAT, "an adapter for architecture '%s', the model is '%s'",
                       aarch ? aarch : "", arch ? arch : "");
    return TNN_OK;
}

static int add_lora(lm_llama *m, const tnn_gguf *a, double scale) {
    double alpha;
    int rc = lm_lora_header(a, m->hp.arch, &alpha), pairs = 0;
    if (rc) return rc;
    int64_t n = tnn_gguf_n_tensors(a);
    m->pending = calloc((size_t)(n > 0 ? n : 1), sizeof *m->pending);
    if (!m->pending) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n && rc == TNN_OK; i++) {
        const char *name = tnn_gguf_tensor_name(a, i);
        size_t len = strlen(name);
        if (len > 7 && !strcmp(name + len - 7, ".lora_b")) continue; /* with its A */
        if (len > 12 && !strcmp(name + len - 12, "_norm.weight")) continue; /* as llama.cpp */
        int l, p;
        if (!lora_target(name, &l, &p) || l >= m->hp.n_layer) {
            rc = TNN_ERR(TNN_ERR_UNSUPPORTED, "adapter tensor '%s': only the embeddings, the "
                         "output matrix and the %d layers' projections (blk.N.attn_q.weight."
                         "lora_a ... ffn_down) are adapted", name, m->hp.n_layer);
            break;
        }
        if (l == TARGET_OUTPUT && m->hp.tied_output) {
            rc = TNN_ERR(TNN_ERR_FORMAT, "adapter tensor '%s': the model has no output matrix "
                         "(its embeddings are the output's; an adapter for another model?)",
                         name);
            break;
        }
        tnn_tensor **fa = l == TARGET_EMBD    ? &m->embd_a
                          : l == TARGET_OUTPUT ? &m->out_a
                                               : &m->L[l].lora_a[p];
        tnn_tensor **fb = l == TARGET_EMBD    ? &m->embd_b
                          : l == TARGET_OUTPUT ? &m->out_b
                                               : &m->L[l].lora_b[p];
        if (*fa) {
            rc = TNN_ERR(TNN_ERR_FORMAT, "adapter tensor '%s' appears twice", name);
            break;
        }
        char bname[160];
        snprintf(bname, sizeof bname, "%.*sb", (int)(len - 1), name);
        int64_t j = tnn_gguf_find_tensor(a, bname), sh[4];
        if (j < 0 || tnn_gguf_tensor_shape(a, i, sh) != 2) {
            rc = TNN_ERR(TNN_ERR_FORMAT, j < 0 ? "adapter tensor '%s' has no lora_b beside it"
                                               : "adapter tensor '%s' is not a matrix", name);
            break;
        }
        int64_t r = l == TARGET_EMBD ? sh[1] : sh[0]; /* the rank */
        if (r < 1) {
            rc = TNN_ERR(TNN_ERR_FORMAT, "adapter tensor '%s' has rank %lld", name, (long long)r);
            break;
        }
        double sb = alpha > 0 ? scale * alpha / (double)r : scale;
        if (l == TARGET_EMBD) { /* llama.cpp's layout: A a row a token, B not transposed */
            *fa = lora_leaf(m, a, i, m->hp.n_vocab, r, 1.0, &rc);
            *fb = lora_leaf(m, a, j, m->hp.n_embd, r, sb, &rc);
        } else {
            tnn_tensor *w = l == TARGET_OUTPUT ? m->output : proj_weight(&m->L[l], p);
            int64_t out = tnn_tensor_dim(w, 0), in = tnn_tensor_dim(w, 1);
            *fa = lora_leaf(m, a, i, r, in, 1.0, &rc);
            *fb = lora_leaf(m, a, j, out, r, sb, &rc);
        }
        pairs++;
    }
    if (rc == TNN_OK && pairs == 0) rc = TNN_ERR(TNN_ERR_FORMAT, "the adapter holds no factors");
    return rc;
}

int lm_llama_add_lora_gguf(lm_llama *m, const tnn_gguf *a, double scale) {
    if (!m || !a || !isfinite(scale))
        return TNN_ERR(TNN_ERR_ARG, "want a model, an adapter and a finite scale");
    if (m->lora)
        return TNN_ERR(TNN_ERR_STATE, "an adapter is applied already (open the model again for "
                       "another)");
    /* the graphs are built again with the adapter's nodes */
    tnn__session_truncate(m->s, m->n_fixed);
    memset(m->graphs, 0, sizeof m->graphs);
    m->realized = -1;
    int rc = add_lora(m, a, scale);
    if (rc != TNN_OK) { /* as before: no factor kept */
        for (int i = 0; i < m->n_pending; i++) free(m->pending[i].v);
        free(m->pending);
        m->pending = NULL;
        m->n_pending = 0;
        for (int l = 0; l < m->hp.n_layer; l++)
            for (int p = 0; p < LM_LORA_N; p++) m->L[l].lora_a[p] = m->L[l].lora_b[p] = NULL;
        m->embd_a = m->embd_b = m->out_a = m->out_b = NULL;
        tnn__session_truncate(m->s, m->n_fixed);
        return rc;
    }
    m->n_fixed = m->s->n_tensors;
    m->lora = true;
    m->pos = 0; /* the cache holds keys and values computed without it */
    return TNN_OK;
}

int lm_llama_add_lora(lm_llama *m, const char *path, double scale) {
    if (!path) return TNN_ERR(TNN_ERR_ARG, "the adapter path is NULL");
    tnn_gguf *a = tnn_gguf_open(path);
    if (!a) return tnn_last_status();
    int rc = lm_llama_add_lora_gguf(m, a, scale);
    tnn_gguf_close(a);
    if (rc != TNN_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tnn_last_error());
        rc = TNN_ERR(rc, "%s: %s", path, msg);
    }
    return rc;
}

const lm_llama_hparams *lm_llama_hparams_of(const lm_llama *m) { return &m->hp; }
const tnn_gguf *lm_llama_gguf(const lm_llama *m) { return m->g; }
int lm_llama_n_ctx(const lm_llama *m) { return m->n_ctx; }
int lm_llama_pos(const lm_llama *m) { return m->pos; }
void lm_llama_reset(lm_llama *m) { m->pos = 0; }

int lm_llama_rewind(lm_llama *m, int pos) {
    if (pos < 0 || pos > m->pos)
        return TNN_ERR(TNN_ERR_RANGE, "position %d: the cache holds %d tokens", pos, m->pos);
    m->pos = pos; /* later rows of the cache are written over before they are read */
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Graphs                                                                   */
/* ------------------------------------------------------------------------ */

/* x W^T (+ the adapter's (x A^T) B^T, scale in B) (+ b). */
static tnn_tensor *linear(tnn_session *s, tnn_tensor *x, tnn_tensor *w, tnn_tensor *b,
                          const llama_layer *L, int proj) {
    tnn_tensor *y = tnn_matmul_nt(s, x, w);
    if (L->lora_a[proj])
        y = tnn_add(s, y, tnn_matmul_nt(s, tnn_matmul_nt(s, x, L->lora_a[proj]), L->lora_b[proj]));
    return b ? tnn_add(s, y, b) : y;
}

static int build_graph(lm_llama *m, llama_graph *gr, int n, bool all) {
    const lm_llama_hparams *hp = &m->hp;
    tnn_session *s = m->s;
    gr->n = n;
    gr->all = all;
    gr->tokens = tnn_input_1d_i32(s, n);
    gr->positions = tnn_input_1d_i32(s, n);
    gr->pos0 = tnn_input_1d_i32(s, 1);
    gr->last = tnn_input_1d_i32(s, 1);
    if (!gr->tokens || !gr->positions || !gr->pos0 || !gr->last) return tnn_last_status();
    double eps = hp->norm_eps;
    tnn_tensor *x = tnn_get_rows(s, m->tok_embd, gr->tokens);
    if (m->embd_a) /* the adapter's rows: A[token] B^T */
        x = tnn_add(s, x, tnn_matmul_nt(s, tnn_get_rows(s, m->embd_a, gr->tokens), m->embd_b));
    for (int l = 0; l < hp->n_layer; l++) {
        const llama_layer *L = &m->L[l];
        /* Nodes are made in the order they run, which the CUDA backend uses:
         * it runs the norm with q, k and v (one x) in one kernel, folds an
         * element-wise node, a cache write or attention into the node right
         * before it that it alone reads (RoPE of k and its cache write into
         * the q/k/v kernel), and the norm, gate, SiLU, up and their product
         * into one kernel: 5 launches a layer. */
        tnn_tensor *h = tnn_rms_norm(s, x, L->attn_norm, eps);
        tnn_tensor *q = linear(s, h, L->wq, L->bq, L, LM_LORA_Q);
        tnn_tensor *k = linear(s, h, L->wk, L->bk, L, LM_LORA_K);
        tnn_tensor *v = linear(s, h, L->wv, L->bv, L, LM_LORA_V);
        tnn_tensor *vc = tnn_kv_write(s, L->vcache, v, gr->pos0);
        k = tnn_rope_ext(s, k, hp->n_kv_head, gr->positions, hp->rope_base, hp->rope_mode,
                         m->rope_freqs);
        tnn_tensor *kc = tnn_kv_write(s, L->kcache, k, gr->pos0);
        q = tnn_rope_ext(s, q, hp->n_head, gr->positions, hp->rope_base, hp->rope_mode,
                         m->rope_freqs);
        tnn_tensor *a = tnn_attention_cached(s, q, kc, vc, hp->n_head, hp->n_kv_head, gr->pos0);
        tnn_tensor *o = linear(s, a, L->wo, NULL, L, LM_LORA_O);
        x = tnn_add(s, x, o);
        h = tnn_rms_norm(s, x, L->ffn_norm, eps);
        tnn_tensor *gate = linear(s, h, L->w_gate, NULL, L, LM_LORA_GATE);
        gate = tnn_silu(s, gate);
        tnn_tensor *up = linear(s, h, L->w_up, NULL, L, LM_LORA_UP);
        tnn_tensor *f = tnn_mul(s, gate, up);
        tnn_tensor *down = linear(s, f, L->w_down, NULL, L, LM_LORA_DOWN);
        x = tnn_add(s, x, down);
    }
    if (n > 1 && !all) x = tnn_get_rows(s, x, gr->last); /* only the last row's logits */
    x = tnn_rms_norm(s, x, m->out_norm, eps);
    gr->logits = tnn_matmul_nt(s, x, m->output);
    if (m->out_a)
        gr->logits = tnn_add(s, gr->logits, tnn_matmul_nt(s, tnn_matmul_nt(s, x, m->out_a),
                                                          m->out_b));
    return gr->logits ? TNN_OK : tnn_last_status();
}

static int eval(lm_llama *m, const int32_t *tokens, int n, float *logits, bool all,
                const char *func) {
    if (!m || !tokens || n < 1) return tnn__error(TNN_ERR_ARG, func, "bad arguments");
    if (m->pos + n > m->n_ctx)
        return tnn__error(TNN_ERR_RANGE, func,
                          "%d more tokens do not fit the context (%d of %d used)", n, m->pos,
                          m->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->hp.n_vocab)
            return tnn__error(TNN_ERR_RANGE, func, "token %d = %d is outside the vocabulary (%d)",
                              i, tokens[i], m->hp.n_vocab);
    int gi = n == 1 ? 0 : 1;
    llama_graph *gr = &m->graphs[gi];
    int rc = TNN_OK;
    all = all && n > 1;
    if (gr->n != n || gr->all != all) {
        if (gi == 1 && gr->n) {
            /* A new prompt size: drop both graphs rather than keep every
             * size's nodes (the decoding graph is rebuilt when next used). */
            tnn__session_truncate(m->s, m->n_fixed);
            memset(m->graphs, 0, sizeof m->graphs);
            m->realized = -1;
        }
        rc = build_graph(m, gr, n, all);
        if (rc) {
            gr->n = 0; /* not usable: built again next time */
            return rc;
        }
        if (m->realized == gi) m->realized = -1;
    }
    if (m->realized != gi) {
        rc = tnn_realize(m->s, gr->logits);
        if (rc) return rc;
        m->realized = gi;
    }
    while (m->n_pending > 0) { /* an adapter's factors, once they have storage */
        lora_pending *p = &m->pending[m->n_pending - 1];
        rc = tnn_upload_f32(m->s, p->t, p->v, (size_t)tnn_tensor_nelements(p->t));
        if (rc) return rc;
        free(p->v);
        m->n_pending--;
    }
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    if (!pos) return tnn__error(TNN_ERR_NOMEM, func, "out of memory");
    for (int i = 0; i < n; i++) pos[i] = m->pos + i;
    int32_t p0 = m->pos, last = n - 1;
    rc = tnn_upload_i32(m->s, gr->tokens, tokens, (size_t)n);
    if (!rc) rc = tnn_upload_i32(m->s, gr->positions, pos, (size_t)n);
    if (!rc) rc = tnn_upload_i32(m->s, gr->pos0, &p0, 1);
    if (!rc) rc = tnn_upload_i32(m->s, gr->last, &last, 1);
    free(pos);
    if (!rc) rc = tnn_compute(m->s);
    if (!rc && logits)
        rc = tnn_download_f32(m->s, gr->logits, logits, (size_t)m->hp.n_vocab * (all ? n : 1));
    if (!rc) m->pos += n;
    return rc;
}

int lm_llama_eval(lm_llama *m, const int32_t *tokens, int n, float *logits) {
    return eval(m, tokens, n, logits, false, __func__);
}

int lm_llama_eval_all(lm_llama *m, const int32_t *tokens, int n, float *logits) {
    if (!logits) return TNN_ERR(TNN_ERR_ARG, "logits is NULL");
    return eval(m, tokens, n, logits, true, __func__);
}
