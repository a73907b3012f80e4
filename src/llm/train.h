/* train.h - training a language model from text files: data windows,
 * learning-rate schedule, progress, validation, samples, loss log and
 * loss-curve picture. Used by `tnn train` and `tnn demo`.
 */
#ifndef TNN_LLM_TRAIN_H
#define TNN_LLM_TRAIN_H

#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#include <stdio.h>

typedef struct {
    const char **data_files;
    int n_data_files;
    lm_config model;
    int batch, steps, warmup;
    double lr, min_lr_ratio; /* cosine from lr down to lr * min_lr_ratio */
    lm_optim optim;
    uint64_t seed;
    int print_every, eval_every, eval_batches, sample_every, sample_len;
    const char *sample_prompt;
    lm_sampler_params sampler;
    const char *log_csv, *log_svg; /* NULL: not written */
    const char *checkpoint;        /* NULL: none; written every checkpoint_every steps and at the end */
    int checkpoint_every;
    const char *resume;            /* continue from this checkpoint (its shape and schedule) */
    const char *init;              /* fine-tune: start from the weights of this llama or qwen2
                                    * GGUF model (its shape and tokenizer; seq_len stays the
                                    * training window), with a fresh optimizer */
    const char *tokenizer;         /* a GGUF model whose tokenizer makes the tokens (its vocab
                                    * size replaces model.vocab); NULL: bytes, vocab 256. A
                                    * resumed checkpoint or an init model brings its own. */
    int steps_override;            /* > 0: with resume, train to this many steps instead */
    int lora_rank;                 /* > 0 (with init): LoRA of this rank instead of training
                                    * every weight */
    double lora_alpha;             /* LoRA's scale is alpha / rank; 0: 2 rank */
    bool qlora;                    /* LoRA on the init model's frozen weights as its file
                                    * stores them (quantized ones stay quantized, read in
                                    * place): lm_config.frozen_gguf */
    bool lora_only;                /* with lora_rank: checkpoints hold the LoRA factors and
                                    * their moments alone, not the merged weights (a resumed
                                    * run reads the rest from init; no model to run) */
    FILE *out;                     /* progress and samples */
    bool cuda;                     /* the graphs' sessions prefer the GPU (default: lm_cuda()) */
} lm_train_opts;

lm_train_opts lm_train_defaults(void);

typedef struct {
    double first_loss, last_loss;   /* training loss at step 1 and the last step */
    double first_val, last_val;     /* validation loss before training and at the end */
    double tokens_per_s;
    int steps_done, steps_skipped;
    int first_step; /* 1, or the step after the checkpoint resumed from */
} lm_train_result;

/* Returns 0 on success; on failure a message has been printed to opts->out. */
int lm_train(const lm_train_opts *opts, lm_train_result *res);

/* Reads and concatenates files; returns NULL (with *why) on failure. */
unsigned char *lm_read_files(const char **files, int n, size_t *len, const char **why);

/* Continues `prompt` by n tokens with the model in g (B=1) into out: bytes
 * when tok is NULL, else tokens of tok (the prompt tokenized, the output
 * decoded to whole UTF-8 characters). */
int lm_generate(lm_graph *g, lm_sampler *sm, const lm_tokenizer *tok, const char *prompt,
                size_t plen, int n, FILE *out);

/* The tokenizer of a GGUF file when it has one: *tok and *g (the open file,
 * which the tokenizer reads from) are set, or both NULL when the file has no
 * tokenizer. Returns TNN_OK or a status with the message set (unreadable
 * file, a tokenizer that cannot be built). Free with lm_tokenizer_free and
 * tnn_gguf_close. */
int lm_tokenizer_open(const char *path, lm_tokenizer **tok, tnn_gguf **g);

#endif
