/* sampler.c - token sampling. Candidates are ordered by (logit desc, id
 * asc), so ties never depend on the sort's stability; the filters run in
 * llama.cpp's usual order: penalty, top-k, temperature, top-p, min-p.
 */
#include "sampler.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

lm_sampler_params lm_sampler_defaults(void) {
    lm_sampler_params p = {.temperature = 0.8, .top_k = 40, .top_p = 0.95, .min_p = 0.05,
                           .repeat_penalty = 1.0, .seed = 1};
    return p;
}

int lm_sampler_init(lm_sampler *s, const lm_sampler_params *p, int vocab, const char **why) {
    memset(s, 0, sizeof *s);
    if (vocab < 1 || !(p->temperature >= 0) || p->top_k < 0 || !(p->top_p > 0 && p->top_p <= 1) ||
        !(p->min_p >= 0 && p->min_p < 1) || !(p->repeat_penalty > 0)) {
        *why = "want temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p < 1, "
               "repeat_penalty > 0";
        return -1;
    }
    s->p = *p;
    s->vocab = vocab;
    s->work = malloc((size_t)vocab * sizeof *s->work);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    s->prob = malloc((size_t)vocab * sizeof *s->prob);
    if (!s->work || !s->order || !s->prob) {
        lm_sampler_free(s);
        *why = "out of memory";
        return -1;
    }
    tnn_rng_seed(&s->rng, p->seed);
    return 0;
}

void lm_sampler_free(lm_sampler *s) {
    free(s->work);
    free(s->order);
    free(s->prob);
    s->work = NULL;
    s->order = NULL;
    s->prob = NULL;
}

static int by_logit(const void *a, const void *b) {
    const lm_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

static bool better(lm_candidate a, lm_candidate b) { /* a before b in by_logit's order */
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

int lm_sample(lm_sampler *s, const float *logits, const int *recent, int n_recent) {
    int V = s->vocab;
    float *w = s->work;
    for (int i = 0; i < V; i++) w[i] = isnan(logits[i]) ? -INFINITY : logits[i];
    if (s->p.repeat_penalty != 1.0) {
        for (int i = 0; i < n_recent; i++) {
            int id = recent[i];
            if (id < 0 || id >= V) continue;
            /* penalize each id once, however often it occurs */
            bool seen = false;
            for (int j = 0; j < i && !seen; j++) seen = recent[j] == id;
            if (seen) continue;
            w[id] = w[id] > 0 ? (float)(w[id] / s->p.repeat_penalty)
                              : (float)(w[id] * s->p.repeat_penalty);
        }
    }
    if (s->p.temperature == 0.0) {
        int best = 0;
        for (int i = 1; i < V; i++)
            if (w[i] > w[best]) best = i;
        return best;
    }
    int n = V;
    if (s->p.top_k > 0 && s->p.top_k < V) {
        /* the k best in one pass, kept in order (the full sort's first k:
         * the order is total); most candidates lose to the k-th at once */
        n = s->p.top_k;
        int m = 0;
        for (int i = 0; i < V; i++) {
            lm_candidate c = {w[i], i};
            if (m == n && !better(c, s->order[n - 1])) continue;
            int j = m < n ? m++ : n - 1;
            for (; j > 0 && better(c, s->order[j - 1]); j--) s->order[j] = s->order[j - 1];
            s->order[j] = c;
        }
    } else {
        for (int i = 0; i < V; i++) s->order[i] = (lm_candidate){w[i], i};
        qsort(s->order, (size_t)V, sizeof *s->order, by_logit);
    }
    /* softmax over the candidates at the temperature, in double */
    double *prob = s->prob;
    double mx = s->order[0].logit, sum = 0;
    for (int i = 0; i < n; i++) sum += prob[i] = exp((s->order[i].logit - mx) / s->p.temperature);
    for (int i = 0; i < n; i++) prob[i] /= sum;
    if (s->p.top_p < 1.0) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += prob[i];
            if (cum >= s->p.top_p) {
                n = i + 1;
                break;
            }
        }
    }
    if (s->p.min_p > 0) {
        double floor = s->p.min_p * prob[0];
        int keep = 1;
        while (keep < n && prob[keep] >= floor) keep++;
        n = keep;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += prob[i];
    double u = tnn_rng_uniform(&s->rng) * total, cum = 0;
    int pick = s->order[n - 1].id;
    for (int i = 0; i < n; i++) {
        cum += prob[i];
        if (u < cum) {
            pick = s->order[i].id;
            break;
        }
    }
    return pick;
}
