/* elementwise.c - add, sub, mul (NumPy broadcasting), scale, gelu, silu and
 * the backward kernels of gelu and silu.
 */
#include "common.h"
#include "vmath.h"

#include "../quant/quant.h"

#include <math.h>
#include <string.h>

#define EW_CHUNK 16384 /* elements per task: below this a thread is not worth it */

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    int op;
    const float *a, *b, *x, *dy;
    float *out;
    float k;
} ew_ctx;

static void binary_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *a = c->a, *b = c->b;
    float *o = c->out;
    switch (c->op) {
    case TNN_BIN_ADD:
        for (int64_t i = lo; i < hi; i++) o[i] = a[i] + b[i];
        break;
    case TNN_BIN_SUB:
        for (int64_t i = lo; i < hi; i++) o[i] = a[i] - b[i];
        break;
    default:
        for (int64_t i = lo; i < hi; i++) o[i] = a[i] * b[i];
        break;
    }
}

void tnn__k_binary(int op, const float *a, const float *b, float *out, int64_t n) {
    ew_ctx c = {.op = op, .a = a, .b = b, .out = out};
    tnn__parallel_for(n, EW_CHUNK, binary_range, &c);
}

static void scale_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    for (int64_t i = lo; i < hi; i++) c->out[i] = c->a[i] * c->k;
}

void tnn__k_scale(const float *a, float k, float *out, int64_t n) {
    ew_ctx c = {.a = a, .out = out, .k = k};
    tnn__parallel_for(n, EW_CHUNK, scale_range, &c);
}

/* The tanh form of GELU, 0.5 x (1 + tanh(u)) with u = c (x + a x^3),
 * c = sqrt(2/pi), a = 0.044715, taken as x s with s = 0.5 (1 + tanh(u)) =
 * sigmoid(v), v = 2u = x (2c + 2ca x^2): one exponential and one division
 * (vmath.h, branch-free, so these loops vectorize), and no cancellation in
 * 1 + tanh(u) for negative x. */
#define GELU_2C 1.5957691216057308f    /* 2 sqrt(2/pi) */
#define GELU_2CA 0.07135481627260025f  /* 2 sqrt(2/pi) 0.044715 */
#define GELU_6CA 0.21406444881780075f  /* 3 GELU_2CA */

static inline float gelu1(float x) {
    return x * tnn_vsigmoid(x * fmaf(GELU_2CA, x * x, GELU_2C));
}

/* d/dx [x s] = s + x s' with s' = s (1 - s) dv/dx, dv/dx = 2c + 6ca x^2. */
static inline float gelu_grad1(float x) {
    float x2 = x * x;
    float sg = tnn_vsigmoid(x * fmaf(GELU_2CA, x2, GELU_2C));
    float dv = fmaf(GELU_6CA, x2, GELU_2C);
    return sg + x * (sg * (1.0f - sg)) * dv;
}

static inline float sigmoid1(float x) { return tnn_vsigmoid(x); }

TNN_VEC_CLONES static void gelu_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *x = c->x;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) o[i] = gelu1(x[i]);
}

TNN_VEC_CLONES static void silu_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *x = c->x;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) o[i] = x[i] * sigmoid1(x[i]);
}

/* silu(g) * u, each step rounded to f32 as silu and mul nodes round it;
 * with dy for u, d up = dy * silu(g) (a float product commutes: the bits of
 * mul(dy, silu(g))) */
TNN_VEC_CLONES static void swiglu_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *g = c->x, *u = c->b;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) {
        float sg = g[i] * sigmoid1(g[i]);
        o[i] = sg * u[i];
    }
}

/* d gate = silu_back(g, dy * u): the composition's bits */
TNN_VEC_CLONES static void swiglu_dgate_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *g = c->x, *u = c->b, *dy = c->dy;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) {
        float x = g[i], s = sigmoid1(x), d = dy[i] * u[i];
        o[i] = d * s * (1.0f + x * (1.0f - s));
    }
}

TNN_VEC_CLONES static void gelu_back_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *x = c->x, *dy = c->dy;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) o[i] = dy[i] * gelu_grad1(x[i]);
}

TNN_VEC_CLONES static void silu_back_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    const float *xp = c->x, *dy = c->dy;
    float *o = c->out;
    for (int64_t i = lo; i < hi; i++) {
        float x = xp[i], s = sigmoid1(x);
        o[i] = dy[i] * s * (1.0f + x * (1.0f - s));
    }
}

void tnn__k_gelu(const float *x, float *y, int64_t n) {
    ew_ctx c = {.x = x, .out = y};
    tnn__parallel_for(n, EW_CHUNK / 4, gelu_range, &c);
}

void tnn__k_silu(const float *x, float *y, int64_t n) {
    ew_ctx c = {.x = x, .out = y};
    tnn__parallel_for(n, EW_CHUNK / 4, silu_range, &c);
}

void tnn__k_gelu_back(const float *x, const float *dy, float *dx, int64_t n) {
    ew_ctx c = {.x = x, .dy = dy, .out = dx};
    tnn__parallel_for(n, EW_CHUNK / 4, gelu_back_range, &c);
}

void tnn__k_silu_back(const float *x, const float *dy, float *dx, int64_t n) {
    ew_ctx c = {.x = x, .dy = dy, .out = dx};
    tnn__parallel_for(n, EW_CHUNK / 4, silu_back_range, &c);
}

/* ------------------------------------------------------------------------ */
/* As the epilogue of a product (the CPU plan runner's fusion)              */
/* ------------------------------------------------------------------------ */

bool tnn__ew_epi_init(tnn_ew_epi *e, const tnn_tensor *t, const tnn_tensor *prod) {
    if (t->dtype != TNN_F32 || prod->dtype != TNN_F32 || !same_shape(t, prod) || !t->data ||
        !prod->data)
        return false;
    int64_t N = prod->shape[prod->ndim - 1];
    *e = (tnn_ew_epi){.op = t->op, .c = CF32(prod), .out = F32(t), .N = N};
    switch (t->op) {
    case TNN_OP_SCALE: e->k = (float)t->fparam[0]; /* fall through */
    case TNN_OP_GELU:
    case TNN_OP_SILU: return t->src[0] == prod;
    case TNN_OP_SWIGLU: { /* the product is the gate or the up operand */
        if (t->src[0] == t->src[1] || (t->src[0] != prod && t->src[1] != prod)) return false;
        e->o_first = t->src[0] != prod;
        const tnn_tensor *o = t->src[e->o_first ? 0 : 1];
        if (o->dtype != TNN_F32 || !o->data || !same_shape(o, t)) return false;
        e->o = CF32(o);
        return true;
    }
    case TNN_OP_ADD:
    case TNN_OP_SUB:
    case TNN_OP_MUL: {
        if (t->src[0] != prod && t->src[1] != prod) return false;
        e->o_first = t->src[0] != prod;
        const tnn_tensor *o = t->src[e->o_first ? 0 : 1];
        if (o->dtype != TNN_F32 || !o->data) return false;
        e->o = CF32(o);
        if (same_shape(o, t)) return true;
        /* one row of N broadcast over every row (a bias) */
        if (o->nelem != N || o->shape[o->ndim - 1] != N) return false;
        e->o_row = true;
        return true;
    }
    default: return false;
    }
}

static const int bin_of[TNN_OP_COUNT] = {[TNN_OP_ADD] = TNN_BIN_ADD, [TNN_OP_SUB] = TNN_BIN_SUB,
                                         [TNN_OP_MUL] = TNN_BIN_MUL};

/* out = op(C) on rows i0..i1, columns j0..j1 of the product at e->base, by
 * the same range functions as the node's own kernels (the same bits). */
void tnn__ew_epi_fn(void *ctx, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const tnn_ew_epi *e = ctx;
    int64_t n = j1 - j0;
    for (int64_t r = i0; r < i1; r++) {
        int64_t off = e->base + r * e->N + j0;
        ew_ctx c = {.x = e->c + off, .a = e->c + off, .out = e->out + off, .k = e->k};
        switch (e->op) {
        case TNN_OP_GELU: gelu_range(&c, 0, n); break;
        case TNN_OP_SILU: silu_range(&c, 0, n); break;
        case TNN_OP_SCALE: scale_range(&c, 0, n); break;
        case TNN_OP_SWIGLU:
            c.x = e->o_first ? e->o + off : e->c + off; /* the gate */
            c.b = e->o_first ? e->c + off : e->o + off; /* up */
            swiglu_range(&c, 0, n);
            break;
        default: {
            const float *o = e->o_row ? e->o + j0 : e->o + off;
            c.op = bin_of[e->op];
            c.a = e->o_first ? o : e->c + off;
            c.b = e->o_first ? e->c + off : o;
            binary_range(&c, 0, n);
        }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Broadcasting binary ops                                                  */
/* ------------------------------------------------------------------------ */

/* Shapes right-aligned to 4 dimensions. */
static void shape4(const tnn_tensor *t, int64_t out[4]) {
    int pad = 4 - t->ndim;
    for (int i = 0; i < 4; i++) out[i] = i < pad ? 1 : t->shape[i - pad];
}

typedef struct {
    int op;
    const float *a, *b;
    float *out;
    int64_t os[4];          /* output shape */
    int64_t as[4], bs[4];   /* element strides of a and b (0 where broadcast) */
} bc_ctx;

static void strides4(const int64_t sh[4], const int64_t osh[4], int64_t st[4]) {
    int64_t acc = 1;
    for (int i = 3; i >= 0; i--) {
        st[i] = (sh[i] == 1 && osh[i] != 1) ? 0 : acc;
        acc *= sh[i];
    }
}

static void bcast_range(void *p, int64_t lo, int64_t hi) {
    const bc_ctx *c = p;
    int64_t cols = c->os[3];
    for (int64_t r = lo; r < hi; r++) { /* r: index over the first three dims */
        int64_t i2 = r % c->os[2], i1 = (r / c->os[2]) % c->os[1], i0 = r / (c->os[2] * c->os[1]);
        const float *a = c->a + i0 * c->as[0] + i1 * c->as[1] + i2 * c->as[2];
        const float *b = c->b + i0 * c->bs[0] + i1 * c->bs[1] + i2 * c->bs[2];
        float *o = c->out + r * cols;
        int64_t sa = c->as[3], sb = c->bs[3];
        switch (c->op) {
        case TNN_BIN_ADD:
            for (int64_t j = 0; j < cols; j++) o[j] = a[j * sa] + b[j * sb];
            break;
        case TNN_BIN_SUB:
            for (int64_t j = 0; j < cols; j++) o[j] = a[j * sa] - b[j * sb];
            break;
        default:
            for (int64_t j = 0; j < cols; j++) o[j] = a[j * sa] * b[j * sb];
            break;
        }
    }
}

static int binary_forward(tnn_tensor *t, int op) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    if (same_shape(a, b)) {
        tnn__k_binary(op, CF32(a), CF32(b), F32(t), t->nelem);
        return TNN_OK;
    }
    bc_ctx c = {.op = op, .a = CF32(a), .b = CF32(b), .out = F32(t)};
    int64_t ash[4], bsh[4];
    shape4(t, c.os);
    shape4(a, ash);
    shape4(b, bsh);
    strides4(ash, c.os, c.as);
    strides4(bsh, c.os, c.bs);
    int64_t rows = c.os[0] * c.os[1] * c.os[2];
    int64_t min_rows = EW_CHUNK / c.os[3] + 1;
    tnn__parallel_for(rows, min_rows, bcast_range, &c);
    return TNN_OK;
}

int tnn__fwd_add(tnn_tensor *t) { return binary_forward(t, TNN_BIN_ADD); }
int tnn__fwd_sub(tnn_tensor *t) { return binary_forward(t, TNN_BIN_SUB); }
int tnn__fwd_mul(tnn_tensor *t) { return binary_forward(t, TNN_BIN_MUL); }

static tnn_tensor *binary_build(tnn_session *s, tnn_tensor *a, tnn_tensor *b, int op,
                                const char *func) {
    if (tnn__check_session(s, func)) return NULL;
    if (tnn__check_tensor(s, a, func, "a") || tnn__check_tensor(s, b, func, "b")) return NULL;
    char ba[TNN_SHAPE_BUF], bb[TNN_SHAPE_BUF];
    if (a->dtype != TNN_F32 || b->dtype != TNN_F32)
        return (tnn__error(TNN_ERR_ARG, func, "a %s and b %s: want f32 tensors",
                           tnn__shape_str(a, ba, sizeof ba), tnn__shape_str(b, bb, sizeof bb)),
                NULL);
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int64_t shape[TNN_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        int ia = a->ndim - nd + i, ib = b->ndim - nd + i;
        int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return (tnn__error(TNN_ERR_SHAPE, func,
                               "a %s and b %s do not broadcast (dimension %d: %lld vs %lld)",
                               tnn__shape_str(a, ba, sizeof ba), tnn__shape_str(b, bb, sizeof bb),
                               i, (long long)da, (long long)db),
                    NULL);
        shape[i] = da > db ? da : db;
    }
    tnn_tensor *src[2] = {a, b};
    return tnn__node_new(s, op, TNN_F32, nd, shape, src, 2);
}

tnn_tensor *tnn_add(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return binary_build(s, a, b, TNN_OP_ADD, __func__);
}
tnn_tensor *tnn_sub(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return binary_build(s, a, b, TNN_OP_SUB, __func__);
}
tnn_tensor *tnn_mul(tnn_session *s, tnn_tensor *a, tnn_tensor *b) {
    return binary_build(s, a, b, TNN_OP_MUL, __func__);
}

/* ------------------------------------------------------------------------ */
/* Unary ops                                                                */
/* ------------------------------------------------------------------------ */

/* A node of op on the f32 tensor a, of the same shape, of dtype dtype. */
static tnn_tensor *unary_node(tnn_session *s, tnn_tensor *a, int op, int dtype,
                              const char *func) {
    if (tnn__check_session(s, func) || tnn__check_tensor(s, a, func, "a")) return NULL;
    if (a->dtype != TNN_F32) {
        char b[TNN_SHAPE_BUF];
        return (tnn__error(TNN_ERR_ARG, func, "a is %s: want an f32 tensor",
                           tnn__shape_str(a, b, sizeof b)),
                NULL);
    }
    tnn_tensor *src[1] = {a};
    return tnn__node_new(s, op, dtype, a->ndim, a->shape, src, 1);
}

static tnn_tensor *unary_build(tnn_session *s, tnn_tensor *a, int op, const char *func) {
    return unary_node(s, a, op, TNN_F32, func);
}

tnn_tensor *tnn_scale(tnn_session *s, tnn_tensor *a, double k) {
    tnn_tensor *t = unary_build(s, a, TNN_OP_SCALE, __func__);
    if (t) t->fparam[0] = k;
    return t;
}
tnn_tensor *tnn_gelu(tnn_session *s, tnn_tensor *a) {
    return unary_build(s, a, TNN_OP_GELU, __func__);
}
tnn_tensor *tnn_silu(tnn_session *s, tnn_tensor *a) {
    return unary_build(s, a, TNN_OP_SILU, __func__);
}

tnn_tensor *tnn_to_bf16(tnn_session *s, tnn_tensor *a) {
    return unary_node(s, a, TNN_OP_TO_BF16, TNN_BF16, __func__);
}

/* Rounded to nearest even, as uploads to a bf16 tensor round (quant.h). */
static void to_bf16_range(void *p, int64_t lo, int64_t hi) {
    const ew_ctx *c = p;
    uint16_t *o = (uint16_t *)(void *)c->out;
    for (int64_t i = lo; i < hi; i++) o[i] = tnn__f32_to_bf16(c->a[i]);
}

int tnn__fwd_to_bf16(tnn_tensor *t) {
    ew_ctx c = {.a = CF32(t->src[0]), .out = (float *)t->data};
    tnn__parallel_for(t->nelem, EW_CHUNK, to_bf16_range, &c);
    return TNN_OK;
}

int tnn__fwd_scale(tnn_tensor *t) {
    tnn__k_scale(CF32(t->src[0]), (float)t->fparam[0], F32(t), t->nelem);
    return TNN_OK;
}
int tnn__fwd_gelu(tnn_tensor *t) {
    tnn__k_gelu(CF32(t->src[0]), F32(t), t->nelem);
    return TNN_OK;
}
int tnn__fwd_silu(tnn_tensor *t) {
    tnn__k_silu(CF32(t->src[0]), F32(t), t->nelem);
    return TNN_OK;
}

/* Two same-shaped f32 operands, named for the message. */
tnn_tensor *tnn__pair_build(tnn_session *s, tnn_tensor *x, tnn_tensor *y, int op,
                            const char *func, const char *xn, const char *yn) {
    if (tnn__check_session(s, func)) return NULL;
    if (tnn__check_tensor(s, x, func, xn) || tnn__check_tensor(s, y, func, yn)) return NULL;
    char bx[TNN_SHAPE_BUF], by[TNN_SHAPE_BUF];
    tnn__shape_str(x, bx, sizeof bx);
    tnn__shape_str(y, by, sizeof by);
    if (x->dtype != TNN_F32 || y->dtype != TNN_F32)
        return (tnn__error(TNN_ERR_ARG, func, "%s %s and %s %s: want f32 tensors", xn, bx, yn, by),
                NULL);
    if (!same_shape(x, y))
        return (tnn__error(TNN_ERR_SHAPE, func, "%s %s and %s %s: want the same shape", xn, bx,
                           yn, by),
                NULL);
    tnn_tensor *src[2] = {x, y};
    return tnn__node_new(s, op, TNN_F32, x->ndim, x->shape, src, 2);
}

tnn_tensor *tnn_silu_back(tnn_session *s, tnn_tensor *x, tnn_tensor *dy) {
    return tnn__pair_build(s, x, dy, TNN_OP_SILU_BACK, __func__, "x", "dy");
}
tnn_tensor *tnn_gelu_back(tnn_session *s, tnn_tensor *x, tnn_tensor *dy) {
    return tnn__pair_build(s, x, dy, TNN_OP_GELU_BACK, __func__, "x", "dy");
}

tnn_tensor *tnn_swiglu(tnn_session *s, tnn_tensor *gate, tnn_tensor *up) {
    return tnn__pair_build(s, gate, up, TNN_OP_SWIGLU, __func__, "gate", "up");
}

int tnn__fwd_swiglu(tnn_tensor *t) {
    ew_ctx c = {.x = CF32(t->src[0]), .b = CF32(t->src[1]), .out = F32(t)};
    tnn__parallel_for(t->nelem, EW_CHUNK / 4, swiglu_range, &c);
    return TNN_OK;
}

int tnn__fwd_swiglu_back(tnn_tensor *t) {
    ew_ctx c = {.dy = CF32(t->src[0]), .x = CF32(t->src[1]), .out = F32(t)};
    c.b = t->iparam[0] ? c.dy : CF32(t->src[2]); /* d up: silu(g) times dy */
    tnn__parallel_for(t->nelem, EW_CHUNK / 4, t->iparam[0] ? swiglu_range : swiglu_dgate_range,
                      &c);
    return TNN_OK;
}

static tnn_tensor *swiglu_back(tnn_session *s, tnn_tensor *dy, tnn_tensor *gate, tnn_tensor *up,
                               int which) {
    tnn_tensor *src[3] = {dy, gate, up};
    tnn_tensor *t = tnn__node_new(s, TNN_OP_SWIGLU_BACK, TNN_F32, gate->ndim, gate->shape, src,
                                  which ? 2 : 3);
    if (t) t->iparam[0] = which;
    return t;
}

int tnn__bwd_swiglu(tnn_session *s, tnn_tensor *t, tnn_tensor *g, const bool *need,
                    tnn_tensor **d) {
    if (need[0]) d[0] = swiglu_back(s, g, t->src[0], t->src[1], 0);
    if (need[1]) d[1] = swiglu_back(s, g, t->src[0], NULL, 1);
    return TNN_OK;
}

int tnn__fwd_silu_back(tnn_tensor *t) {
    tnn__k_silu_back(CF32(t->src[0]), CF32(t->src[1]), F32(t), t->nelem);
    return TNN_OK;
}
int tnn__fwd_gelu_back(tnn_tensor *t) {
    tnn__k_gelu_back(CF32(t->src[0]), CF32(t->src[1]), F32(t), t->nelem);
    return TNN_OK;
}
