/* optim.c - optimizer kernels (Adam) shared by the seed's scratch kernel
 * and the one-call function. Moments are updated in double from f32 values
 * and stored back as f32.
 */
#include "common.h"

#include <math.h>

typedef struct {
    float *p, *m, *v;
    const float *g;
    double lr, b1, b2, eps, omc1, omc2;
} adam_ctx;

static void adam_range(void *q, int64_t lo, int64_t hi) {
    const adam_ctx *c = q;
    for (int64_t i = lo; i < hi; i++) {
        double g = c->g[i];
        double m = c->b1 * c->m[i] + (1.0 - c->b1) * g;
        double v = c->b2 * c->v[i] + (1.0 - c->b2) * g * g;
        double mh = m / c->omc1, vh = v / c->omc2;
        c->p[i] = (float)(c->p[i] - c->lr * mh / (sqrt(vh) + c->eps));
        c->m[i] = (float)m;
        c->v[i] = (float)v;
    }
}

void tnn__k_adam(float *p, const float *g, float *m, float *v, int64_t n, double lr, double b1,
                 double b2, double eps, double omc1, double omc2) {
    adam_ctx c = {.p = p, .g = g, .m = m, .v = v, .lr = lr, .b1 = b1, .b2 = b2, .eps = eps,
                  .omc1 = omc1, .omc2 = omc2};
    tnn__parallel_for(n, 8192, adam_range, &c);
}
