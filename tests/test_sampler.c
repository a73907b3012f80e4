/* test_sampler.c - the token sampler (src/llm/sampler.c): greedy picks,
 * the candidates' order against a full sort (ties, -inf, NaN), the drawn
 * frequencies against the filtered softmax (temperature, top-k, top-p,
 * min-p), the repetition penalty, seeds, and bad parameters.
 */
#include "harness.h"

#include "llm/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static lm_sampler_params params(double temp, int top_k, double top_p, double min_p) {
    lm_sampler_params p = lm_sampler_defaults();
    p.temperature = temp, p.top_k = top_k, p.top_p = top_p, p.min_p = min_p;
    return p;
}

static int ref_order(const void *a, const void *b) {
    const lm_candidate *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

static void test_greedy(void) {
    float lg[6] = {1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.0f};
    lm_sampler s;
    const char *why = NULL;
    lm_sampler_params p = params(0.0, 0, 1.0, 0.0);
    CHECK(lm_sampler_init(&s, &p, 6, &why) == 0, "init: %s", why);
    CHECK(lm_sample(&s, lg, NULL, 0) == 1, "greedy: the lowest id of the tied best");
    float nan_first[6] = {NAN, -5.0f, -6.0f, -7.0f, -8.0f, -9.0f};
    CHECK(lm_sample(&s, nan_first, NULL, 0) == 1, "greedy: NaN is never the best");
    lm_sampler_free(&s);
}

/* With top-k the candidates are the full sort's first k; without, all. */
static void test_order(void) {
    enum { V = 1000 };
    static float lg[V];
    th_seed(21);
    for (int i = 0; i < V; i++) /* few distinct values: many ties */
        lg[i] = (float)(int)(th_uniform() * 50) * 0.25f;
    lg[3] = NAN, lg[500] = -INFINITY, lg[999] = -INFINITY, lg[17] = 100.0f;
    static lm_candidate ref[V];
    for (int i = 0; i < V; i++) ref[i] = (lm_candidate){isnan(lg[i]) ? -INFINITY : lg[i], i};
    qsort(ref, V, sizeof *ref, ref_order);
    static const int ks[] = {1, 2, 5, 40, 333, 999, 1000, 5000, 0};
    for (size_t t = 0; t < sizeof ks / sizeof *ks; t++) {
        lm_sampler s;
        const char *why = NULL;
        lm_sampler_params p = params(0.8, ks[t], 1.0, 0.0);
        CHECK(lm_sampler_init(&s, &p, V, &why) == 0, "init: %s", why);
        lm_sample(&s, lg, NULL, 0);
        int n = ks[t] > 0 && ks[t] < V ? ks[t] : V, bad = 0;
        for (int i = 0; i < n; i++)
            bad += s.order[i].id != ref[i].id || s.order[i].logit != ref[i].logit;
        CHECK(bad == 0, "top_k %d: %d candidates out of the full sort's order", ks[t], bad);
        lm_sampler_free(&s);
    }
}

/* Frequencies of `draws` samples against the expected probabilities (0 for
 * the filtered-out ids), within 5 standard deviations. */
static void check_freq(const char *what, const lm_sampler_params *p, const float *lg, int V,
                       const double *want, int draws) {
    lm_sampler s;
    const char *why = NULL;
    CHECK(lm_sampler_init(&s, p, V, &why) == 0, "%s: init: %s", what, why);
    int *cnt = calloc((size_t)V, sizeof *cnt);
    for (int d = 0; d < draws; d++) {
        int id = lm_sample(&s, lg, NULL, 0);
        if (id >= 0 && id < V) cnt[id]++;
    }
    double worst = 0;
    int outside = 0;
    for (int i = 0; i < V; i++) {
        if (want[i] == 0) {
            outside += cnt[i];
            continue;
        }
        double sd = sqrt(draws * want[i] * (1 - want[i])) + 1e-9;
        double z = fabs(cnt[i] - draws * want[i]) / sd;
        if (z > worst) worst = z;
    }
    CHECK(outside == 0 && worst < 5.0, "%s: %d draws outside the kept set, worst deviation %.2f sd",
          what, outside, worst);
    free(cnt);
    lm_sampler_free(&s);
}

static void test_distribution(void) {
    const float lg[6] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
    const double T = 0.7;
    double e[6], sum = 0;
    for (int i = 0; i < 6; i++) sum += e[i] = exp((lg[i] - lg[0]) / T);
    double full[6], k3[6] = {0}, nucleus[6] = {0}, minp[6] = {0};
    for (int i = 0; i < 6; i++) full[i] = e[i] / sum;
    double s3 = e[0] + e[1] + e[2];
    for (int i = 0; i < 3; i++) k3[i] = e[i] / s3;
    /* top-p 0.8: the shortest prefix whose probability reaches 0.8 */
    double cum = 0;
    int np = 0;
    while (np < 6 && cum < 0.8) cum += full[np++];
    for (int i = 0; i < np; i++) nucleus[i] = full[i] / cum;
    /* min-p 0.2: the ids at least 0.2 times the best's probability */
    double sm = 0;
    for (int i = 0; i < 6; i++)
        if (full[i] >= 0.2 * full[0]) sm += full[i];
    for (int i = 0; i < 6; i++) minp[i] = full[i] >= 0.2 * full[0] ? full[i] / sm : 0;
    lm_sampler_params p = params(T, 0, 1.0, 0.0);
    check_freq("temperature", &p, lg, 6, full, 200000);
    p = params(T, 3, 1.0, 0.0);
    check_freq("top-k 3", &p, lg, 6, k3, 200000);
    p = params(T, 0, 0.8, 0.0);
    check_freq("top-p 0.8", &p, lg, 6, nucleus, 200000);
    p = params(T, 0, 1.0, 0.2);
    check_freq("min-p 0.2", &p, lg, 6, minp, 200000);
    CHECK(np >= 2 && np < 6 && minp[5] == 0 && minp[1] > 0, "the cases filter something");
}

static void test_penalty_and_seed(void) {
    lm_sampler s;
    const char *why = NULL;
    lm_sampler_params p = params(0.0, 0, 1.0, 0.0);
    p.repeat_penalty = 1.2;
    CHECK(lm_sampler_init(&s, &p, 2, &why) == 0, "init: %s", why);
    /* once: 2.0 / 1.2 = 1.67 > 1.5 keeps id 0; applied twice it would not */
    const float pos[2] = {2.0f, 1.5f};
    const int twice[2] = {0, 0};
    CHECK(lm_sample(&s, pos, twice, 2) == 0, "the penalty counts a repeated id once");
    /* a negative logit is multiplied: -1.0 * 1.2 = -1.2 < -1.1 */
    const float neg[2] = {-1.0f, -1.1f};
    CHECK(lm_sample(&s, neg, twice, 1) == 1, "a negative logit moves down");
    const int bad_ids[2] = {-4, 7};
    CHECK(lm_sample(&s, pos, bad_ids, 2) == 0, "ids out of range are ignored");
    lm_sampler_free(&s);

    float lg[50];
    for (int i = 0; i < 50; i++) lg[i] = (float)sin(i);
    int a[100], b[100], c[100];
    for (int run = 0; run < 3; run++) {
        lm_sampler_params q = lm_sampler_defaults();
        q.seed = run == 2 ? 8 : 7;
        CHECK(lm_sampler_init(&s, &q, 50, &why) == 0, "init: %s", why);
        for (int d = 0; d < 100; d++) (run == 0 ? a : run == 1 ? b : c)[d] = lm_sample(&s, lg, NULL, 0);
        lm_sampler_free(&s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "the same seed gives the same tokens");
    CHECK(memcmp(a, c, sizeof a) != 0, "another seed gives other tokens");
}

static void test_bad_params(void) {
    lm_sampler s;
    const char *why = NULL;
    lm_sampler_params bad[] = {params(-1, 0, 1, 0), params(NAN, 0, 1, 0), params(1, -1, 1, 0),
                               params(1, 0, 0, 0),  params(1, 0, 1.5, 0), params(1, 0, 1, 1),
                               params(1, 0, 1, -0.1)};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        why = NULL;
        CHECK(lm_sampler_init(&s, &bad[i], 10, &why) == -1 && why && strstr(why, "want"),
              "bad parameters %zu refused with a message", i);
    }
    lm_sampler_params p = lm_sampler_defaults();
    p.repeat_penalty = 0;
    CHECK(lm_sampler_init(&s, &p, 10, &why) == -1, "repeat_penalty 0 refused");
    p = lm_sampler_defaults();
    CHECK(lm_sampler_init(&s, &p, 0, &why) == -1, "an empty vocabulary refused");
}

int main(void) {
    test_greedy();
    test_order();
    test_distribution();
    test_penalty_and_seed();
    test_bad_params();
    return th_finish("test_sampler");
}
