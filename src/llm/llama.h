/* llama.h - running llama-family GGUF models (architectures `llama`: SmolLM2,
 * TinyLlama, Llama 3.x; and `qwen2`: Qwen2.5): weights borrowed from the
 * mapped file, a KV cache, batched prompt processing and a decoding graph
 * built once and reused for every token.
 */
#ifndef TNN_LLM_LLAMA_H
#define TNN_LLM_LLAMA_H

#include "tinynn.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    char arch[16];
    int n_vocab, n_embd, n_layer, n_head, n_kv_head, n_ff, n_ctx_train, head_dim;
    double rope_base, norm_eps;
    int rope_mode; /* 0: adjacent pairs (llama), 1: NeoX halves (qwen2) */
    bool qkv_bias, tied_output, rope_factors;
} lm_llama_hparams;

typedef struct lm_llama lm_llama;

/* The hyper-parameters of a llama or qwen2 GGUF file (its metadata, and the
 * vocabulary, output projection and RoPE factors from its tensor table).
 * TNN_OK, or a status naming the missing or unsupported key. */
int lm_llama_read_hparams(const tnn_gguf *g, lm_llama_hparams *hp);

/* TNN_OK, or TNN_ERR_FORMAT (with a message naming what to do instead) when
 * g is a checkpoint of LoRA factors alone (tnn train --lora-only): it holds
 * no model to run, convert or start from; lm_llama_read_hparams refuses it
 * so. */
int lm_llama_refuse_lora_only(const tnn_gguf *g);

/* Opens the model; n_ctx = KV cache positions (0: min(training context,
 * 4096)); kv_dtype = TNN_F16 (the default of the tools, as llama.cpp's) or
 * TNN_F32 for the cache; cuda: the session prefers the GPU (the CPU where
 * there is none, logged). NULL with the reason in tnn_last_error()
 * (missing key or tensor, unsupported architecture or type). */
lm_llama *lm_llama_load(const char *path, int n_ctx, int kv_dtype, bool cuda);
void lm_llama_free(lm_llama *m);
const lm_llama_hparams *lm_llama_hparams_of(const lm_llama *m);
const tnn_gguf *lm_llama_gguf(const lm_llama *m);
int lm_llama_n_ctx(const lm_llama *m);
/* Tokens in the cache (the position of the next token). */
int lm_llama_pos(const lm_llama *m);
/* Empties the cache. */
void lm_llama_reset(lm_llama *m);
/* Keeps the first pos tokens of the cache (0 <= pos <= lm_llama_pos, else
 * TNN_ERR_RANGE). */
int lm_llama_rewind(lm_llama *m, int pos);

/* Applies a LoRA adapter file (llama.cpp's layout, as tnn lora-export
 * writes it: general.type "adapter", adapter.type "lora", the model's
 * architecture, tensors blk.N.P.weight.lora_a (r, in) and .lora_b (out, r)
 * for any of a layer's seven projections and output.weight (an untied
 * output matrix), token_embd.weight.lora_a (n_vocab, r) and .lora_b
 * (n_embd, r), any type the quantized kernels decode) at run time, as
 * llama.cpp does: each adapted projection adds scale * (alpha / r) (x A^T)
 * B^T (scale alone where the file has no alpha), each token's embedding
 * scale * (alpha / r) A[token] B^T (the input's only: a tied output matrix
 * stays as it was). The cache is emptied. One adapter per model (TNN_ERR_STATE for a
 * second); on any error the model runs as before. */
int lm_llama_add_lora(lm_llama *m, const char *path, double scale);
/* The metadata checks of an adapter file a, for a model of architecture
 * arch: general.type "adapter", adapter.type "lora", the same
 * general.architecture (TNN_ERR_FORMAT otherwise, naming a LoRA run's
 * checkpoint where a is one); *alpha gets adapter.lora.alpha, 0 without. */
int lm_lora_header(const tnn_gguf *a, const char *arch, double *alpha);
/* The same from an open GGUF file (fuzz/fuzz_lora.c reads it from memory). */
int lm_llama_add_lora_gguf(lm_llama *m, const tnn_gguf *adapter, double scale);

/* Appends n tokens to the sequence (n >= 1; a prompt in one call) and
 * writes the logits (n_vocab) of the last one (logits may be NULL: a prompt
 * fed in parts needs none until its last). TNN_ERR_RANGE when the cache
 * is full or a token id is out of range. */
int lm_llama_eval(lm_llama *m, const int32_t *tokens, int n, float *logits);
/* The same with the logits of every token: logits[n][n_vocab], row i the
 * prediction after tokens[i] (scoring a text: perplexity). */
int lm_llama_eval_all(lm_llama *m, const int32_t *tokens, int n, float *logits);

#endif
