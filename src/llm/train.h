/* train.h - training a language model from text files: data windows,
 * learning-rate schedule, progress, validation, samples, loss log and
 * loss-curve picture. Used by `tnn train` and `tnn demo`.
 */
#ifndef TNN_LLM_TRAIN_H
#define TNN_LLM_TRAIN_H

#include "model.h"
#include "sampler.h"

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
    int steps_override;            /* > 0: with resume, train to this many steps instead */
    FILE *out;                     /* progress and samples */
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

/* Continues `prompt` by n bytes with the model in g (B=1) into out. */
int lm_generate(lm_graph *g, lm_sampler *sm, const unsigned char *prompt, size_t plen, int n,
                FILE *out);

#endif
