/* model.h - a decoder-only llama-style transformer (RMSNorm, RoPE, SwiGLU,
 * grouped-query attention, tied embeddings) built as a tinynn graph, for
 * training from scratch, fine-tuning a llama or qwen2 GGUF model (which may
 * add q/k/v biases, NeoX RoPE, RoPE frequency factors and an output
 * projection of its own) and sampling.
 */
#ifndef TNN_LLM_MODEL_H
#define TNN_LLM_MODEL_H

#include "tinynn.h"

#include <stdbool.h>
#include <stdint.h>

#define LM_MAX_LAYERS 64

typedef struct {
    int vocab, d_model, n_layer, n_head, n_kv_head, d_ff;
    int seq_len; /* the training window; the longest graph that can be built */
    double rope_base, norm_eps;
    /* What a GGUF model to fine-tune may have beyond a model trained from
     * scratch (all 0 there). rope_mode and qkv_bias are both 0 (the file's
     * architecture is llama) or both 1 (qwen2). */
    int ctx_len;       /* saved as the file's context_length (0: seq_len) */
    int rope_mode;     /* 0: adjacent pairs (llama); 1: NeoX halves (qwen2) */
    bool qkv_bias;     /* q, k and v projections with biases (qwen2) */
    bool untied;       /* an output projection of its own (else tok_emb) */
    bool rope_factors; /* per-pair RoPE frequency divisors (Llama 3's
                        * rope_freqs.weight): a fixed input, not trained */
    /* LoRA: > 0, every weight is frozen and each of the seven projections
     * of a layer (q, k, v, o, gate, up, down) adds (lora_alpha / lora_rank)
     * x A^T B^T, A (rank, in) and B (out, rank) the only parameters. */
    int lora_rank;
    double lora_alpha;
    /* LoRA in mixed precision (lm_optim.bf16): the seven projections' frozen
     * weights held as bf16, the values the products read anyway, instead
     * of f32 weights rounded again at every step (half their memory). */
    bool frozen_bf16;
    /* QLoRA: LoRA with the frozen embeddings and projections read in place
     * from this open GGUF file (the model fine-tuned), in its own tensor
     * types: quantized weights stay quantized (their products run on the
     * quantized kernels, x's gradient on blocks dequantized as the GEMM
     * needs them), nothing is copied. The caller keeps the file open while a graph uses it. The
     * output projection then has no padding rows (lm_optim.vocab_align),
     * and the activations stay f32 on a GPU. */
    const tnn_gguf *frozen_gguf;
} lm_config;

/* A layer's projections, in the order of their LoRA factors. */
enum { LM_LORA_Q, LM_LORA_K, LM_LORA_V, LM_LORA_O, LM_LORA_GATE, LM_LORA_UP, LM_LORA_DOWN,
       LM_LORA_N };
/* Their GGUF names in that order ("attn_q", ..., "ffn_down": blk.N.<name>.weight). */
extern const char *const lm_proj_names[LM_LORA_N];

/* Whether the models' sessions (training graphs, lm_llama) ask for the CUDA
 * backend; off by default. Set it before building a model. */
void lm_use_cuda(bool on);
bool lm_cuda(void);

/* The small default model of the demo. */
lm_config lm_default_config(void);
/* NULL if the config is usable, else a static message saying why not. */
const char *lm_config_problem(const lm_config *c);
int64_t lm_param_count(const lm_config *c);

typedef struct {
    tnn_tensor *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
    tnn_tensor *bq, *bk, *bv; /* qkv_bias, else NULL */
    tnn_tensor *lora_a[LM_LORA_N], *lora_b[LM_LORA_N]; /* lora_rank > 0, else NULL */
} lm_layer;

/* The parameters as tensors of one session. Linear weights are (out, in),
 * as PyTorch's nn.Linear and GGUF store them. */
typedef struct {
    tnn_tensor *tok_emb; /* (vocab, d_model), also the output projection when tied */
    tnn_tensor *out_norm;
    tnn_tensor *output;     /* untied: (vocab, d_model), else NULL */
    tnn_tensor *rope_freqs; /* rope_factors: (head size / 2), a leaf that is not a
                             * parameter, else NULL */
    lm_layer layer[LM_MAX_LAYERS];
} lm_params;

/* A model graph in its own session: B sequences of T tokens. With `train`,
 * targets and the mean cross-entropy loss, its backward graph and AdamW.
 * The logits can be downloaded after a compute, except from a training
 * graph built without lm_optim.keep_logits. */
typedef struct {
    lm_config cfg;
    int B, T;
    tnn_session *s;
    lm_params p;
    tnn_tensor *tokens, *targets; /* int32 (B*T) */
    tnn_tensor *positions;        /* rope_factors: int32 (B*T), row r at r % T */
    tnn_tensor *logits;           /* (B*T, vocab), or (B*T, vocab_rows) */
    int64_t vocab_rows;           /* the output projection's rows: vocab, or
                                   * rounded up (lm_optim.vocab_align) */
    tnn_tensor *loss;             /* (1), when built with targets */
    bool bf16;                    /* products on bf16 copies of the weights */
    bool bf16_acts;               /* ... and of the activations (on a GPU) */
} lm_graph;

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, grad_clip;
    /* Mixed precision: every product takes its weight through tnn_to_bf16,
     * and on a GPU its activation too (bf16 products forward and backward,
     * the gradient of their output rounded to bf16 once for both); f32
     * master weights, residual stream, norms, attention and AdamW. */
    bool bf16;
    /* Keep the logits readable after a training compute; without it their
     * memory takes the cross-entropy's gradient (a training step needs
     * only the loss). */
    bool keep_logits;
    /* Without keep_logits: the output projection of the training graph
     * takes the embedding with zero rows added up to a multiple of this
     * (its logits' padding columns outside the loss), so the GPU's
     * products over the logits get aligned rows. 0: 64 on a CUDA session,
     * none on the CPU; 1: none. The loss and gradients are those of the
     * unpadded graph. */
    int vocab_align;
} lm_optim;

/* Builds and realizes the graph in a session of its own (cuda: one that
 * prefers the GPU; callers pass lm_cuda() for the process's choice).
 * with_loss adds targets and the loss; optim (non-NULL) also adds the
 * backward graph and AdamW (norm gains are not decayed). Returns TNN_OK or
 * a status (message in tnn_last_error). */
int lm_graph_build(lm_graph *g, const lm_config *cfg, int B, int T, bool with_loss,
                   const lm_optim *optim, bool cuda);
void lm_graph_free(lm_graph *g);

/* Visits every weight in a fixed order with its GGUF tensor name (a
 * layer's LoRA factors after its weights, as "blk.N.attn_q.lora_a"), and
 * then rope_freqs when the model has it. What is not a parameter (rope_freqs;
 * with LoRA every weight but the factors) has no gradient or optimizer
 * state. */
typedef int (*lm_param_fn)(void *ctx, const char *name, tnn_tensor *t);
int lm_params_each(const lm_graph *g, lm_param_fn fn, void *ctx);

/* Deterministic initialisation from a seed: normal(0, 0.02) weights, the
 * residual output projections scaled by 1/sqrt(2 n_layer), gains and RoPE
 * factors 1, biases 0; LoRA's A uniform in +-1/sqrt(in), B 0 (the
 * projections start as the frozen weights alone). */
int lm_init_weights(lm_graph *g, uint64_t seed);
/* lm_init_weights for the LoRA factors only (the frozen weights kept). */
int lm_init_lora(lm_graph *g, uint64_t seed);
/* The LoRA factors of projection weight w of g: true with *a and *b set,
 * false when w has none. */
bool lm_lora_factors(const lm_graph *g, const tnn_tensor *w, tnn_tensor **a, tnn_tensor **b);
/* Whether a name of lm_params_each is a LoRA factor's. */
bool lm_is_lora_name(const char *name);
/* dst's weights become src's (same config, sessions on the same backend):
 * dst reads src's storage, no copy, and so always computes with src's
 * current weights (a sampling graph beside the training graph). dst must be
 * freed before src. */
int lm_share_weights(lm_graph *dst, const lm_graph *src);

#endif
