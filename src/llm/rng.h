/* rng.h - a small deterministic random number generator (xoshiro256**
 * seeded by splitmix64) for initialisation, batching and sampling: the same
 * seed gives the same numbers on every machine and thread count.
 */
#ifndef TNN_LLM_RNG_H
#define TNN_LLM_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t s[4];
} tnn_rng;

static inline uint64_t tnn_splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline void tnn_rng_seed(tnn_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = tnn_splitmix64(&seed);
}

static inline uint64_t tnn_rng_next(tnn_rng *r) {
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5, result = ((x << 7) | (x >> 57)) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return result;
}

/* Uniform in [0, 1). */
static inline double tnn_rng_uniform(tnn_rng *r) {
    return (double)(tnn_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Uniform integer in [0, n), n >= 1 (rejection: no modulo bias). */
static inline uint64_t tnn_rng_below(tnn_rng *r, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = tnn_rng_next(r);
    while (x >= limit);
    return x % n;
}

/* Standard normal (Box-Muller). */
static inline double tnn_rng_normal(tnn_rng *r) {
    double u1 = tnn_rng_uniform(r), u2 = tnn_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
