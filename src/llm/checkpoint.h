/* checkpoint.h - training checkpoints as GGUF files: the model under llama
 * metadata keys and tensor names, AdamW moments as extra tensors, and the
 * training state (step, RNG, hyper-parameters) under tinynn.train.* keys.
 */
#ifndef TNN_LLM_CHECKPOINT_H
#define TNN_LLM_CHECKPOINT_H

#include "model.h"
#include "rng.h"

typedef struct {
    int64_t step;       /* steps done */
    int64_t adam_steps; /* optimizer steps taken (skipped steps excluded) */
    tnn_rng rng;        /* the batch RNG after `step` steps */
    uint64_t seed;
    int batch, steps, warmup;
    double lr, min_lr_ratio;
    lm_optim optim;
    /* A fine-tuning run's base model ("" when trained from scratch): a LoRA
     * run resumes its frozen weights from there. */
    char init[4096];
    bool qlora; /* a LoRA run on the base model's own tensor types (lm_config.frozen_gguf) */
    bool lora_only; /* the factors and their moments written alone (lm_train_opts.lora_only) */
} lm_train_state;

/* Writes the model of g (and, with st, its optimizer state and st) to path,
 * atomically. tok: the GGUF whose tokenizer the model was trained with
 * (every tokenizer.* key is copied, so the checkpoint carries it), or NULL
 * for the byte-level vocabulary. With LoRA the projections are written
 * merged (w + (alpha / rank) B A: the file is the fine-tuned model) and the
 * factors beside them. Returns TNN_OK or a status with the message set. */
int lm_checkpoint_save(const char *path, const lm_graph *g, const lm_train_state *st,
                       const tnn_gguf *tok);

/* Whether the GGUF file g carries a tokenizer (tokenizer.ggml.model). */
bool lm_gguf_has_tokenizer(const tnn_gguf *g);

/* Reads the config (and, when st is non-NULL, the training state: the file
 * must then be a training checkpoint, and its LoRA rank and alpha are part
 * of the config) of a checkpoint or any llama/qwen2 model. */
int lm_checkpoint_read_config(const char *path, lm_config *cfg, lm_train_state *st);

/* Which of g's tensors lm_checkpoint_load reads. */
enum {
    LM_LOAD_ALL,  /* every one */
    LM_LOAD_BASE, /* all but the LoRA factors (a model to fine-tune; a LoRA run's frozen
                   * weights from its base model) */
    LM_LOAD_LORA  /* only the LoRA factors (a LoRA run resumed) */
};

/* Uploads the weights (part: LM_LOAD_*; with `optimizer`, also the AdamW
 * moments of the parameters read and the step count) of the file into g,
 * whose config must match; any tensor type the quantized kernels decode is
 * read as f32. */
int lm_checkpoint_load(const char *path, lm_graph *g, bool optimizer, int part);

/* Writes the LoRA factors of a LoRA run's checkpoint as an adapter file in
 * llama.cpp's layout (general.type "adapter", adapter.type "lora",
 * adapter.lora.alpha; tensors blk.N.attn_q.weight.lora_a (rank, in) and
 * .lora_b (out, rank), f32), which llama.cpp applies to the base model as
 * w + (alpha / rank) B A. TNN_ERR_FORMAT for a checkpoint without LoRA. */
int lm_lora_export(const char *checkpoint, const char *path);

#endif
