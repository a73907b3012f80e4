/* sampler.h - picking the next token from logits: greedy, temperature,
 * top-k, top-p, min-p and repetition penalty, with a seeded RNG so the same
 * seed gives the same text.
 */
#ifndef TNN_LLM_SAMPLER_H
#define TNN_LLM_SAMPLER_H

#include "rng.h"

#include <stdint.h>

typedef struct {
    double temperature;    /* 0: greedy (argmax, lowest id on ties) */
    int top_k;             /* 0: off */
    double top_p;          /* 1: off */
    double min_p;          /* 0: off */
    double repeat_penalty; /* 1: off; applied to the ids in `recent` */
    uint64_t seed;
} lm_sampler_params;

lm_sampler_params lm_sampler_defaults(void);

typedef struct {
    float logit;
    int id;
} lm_candidate;

typedef struct {
    lm_sampler_params p;
    tnn_rng rng;
    int vocab;
    float *work;          /* vocab adjusted logits */
    lm_candidate *order;  /* vocab candidates, best first */
    double *prob;         /* vocab probabilities of the candidates */
} lm_sampler;

/* 0 on success, -1 on bad parameters or no memory (message in *why). */
int lm_sampler_init(lm_sampler *s, const lm_sampler_params *p, int vocab, const char **why);
void lm_sampler_free(lm_sampler *s);
/* Picks a token from vocab logits; `recent` (n_recent ids) gets the
 * repetition penalty. */
int lm_sample(lm_sampler *s, const float *logits, const int *recent, int n_recent);

#endif
