/* bench_kernels.c - the memory-bound kernels against bandwidth measured in
 * the same run, and the fixed cost of small calls:
 *
 *   matrix-vector  f32 products with 1, 8 and 16 rows (the GEMM's skinny
 *                  path; 16 rows only with B transposed, NN packs), then
 *                  the same with bf16 weights (widened as read), GB/s of the
 *                  matrix streamed, against the triad of the same
 *                  thread count (the matrices rotate through >= 256 MiB so
 *                  they come from memory, as a model's weights do);
 *   element-wise   add, mul, scale, gelu, silu and their backwards, GB/s of
 *                  the arrays read and written (16 Mi floats each);
 *   row kernels    softmax, rms_norm, layer norm and backwards on 16384 x
 *                  1024 rows, GB/s read and written;
 *   overhead       the one-call f64 functions on 64 x 64: microseconds per
 *                  call, and what is left after the f64<->f32 conversion and
 *                  the kernel itself; a 6-node graph on 64 x 64 data:
 *                  microseconds per tnn_compute, and per realize + compute.
 *
 * Bandwidth baselines (same run, same thread count): the triad a = b + 3 c
 * (2 reads, 1 write) and a copy. Each kernel's ratio is to the best triad
 * of runs taken between its own repetitions (the VM's speed drifts).
 * Prints a table and writes JSON.
 * Usage: bench_kernels [--reps N] [--threads 1|2] [--quick] [--out FILE]
 */
#include "core/internal.h"
#include "cpu/gemm.h"
#include "cpu/pool.h"
#include "ops/kernels.h"
#include "tinynn.h"

#include "bench_common.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef TNN_BENCH_RESULTS
#define TNN_BENCH_RESULTS "bench/results"
#endif

static float *falloc_fill(size_t n, unsigned seed) {
    float *p = bench_xalloc(n * sizeof *p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (float)((int32_t)(x >> 8) - (1 << 23)) / (float)(1 << 23);
    }
    return p;
}

static int g_reps = 7;

typedef struct {
    double best, median;
} stat2;

/* Best and median of g_reps runs of fn(ctx), each a rate = amount / seconds. */
static stat2 measure(void (*fn)(void *), void *ctx, double amount) {
    double *r = calloc((size_t)g_reps, sizeof *r);
    fn(ctx); /* warm */
    for (int i = 0; i < g_reps; i++) {
        double t0 = bench_now();
        fn(ctx);
        r[i] = amount / (bench_now() - t0);
    }
    qsort(r, (size_t)g_reps, sizeof *r, bench_cmp_double);
    stat2 s = {r[g_reps - 1], r[g_reps / 2]};
    free(r);
    return s;
}

/* ------------------------------------------------------------------------ */
/* Bandwidth baselines                                                      */
/* ------------------------------------------------------------------------ */

#define BIG ((int64_t)1 << 24) /* floats per array: 64 MiB */

typedef struct {
    float *a, *b, *c;
} arrays3;

static void triad_range(void *p, int64_t lo, int64_t hi) {
    arrays3 *t = p;
    for (int64_t i = lo; i < hi; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
}
static void triad(void *p) { tnn__parallel_for(BIG, 1 << 16, triad_range, p); }

static void copy_range(void *p, int64_t lo, int64_t hi) {
    arrays3 *t = p;
    memcpy(t->a + lo, t->b + lo, (size_t)(hi - lo) * sizeof(float));
}
static void copy(void *p) { tnn__parallel_for(BIG, 1 << 16, copy_range, p); }

/* The triad's arrays while a thread count's rows run. */
static arrays3 g_tri;

/* measure() for a memory-bound kernel, with the triad run between its
 * repetitions (triad, kernel, triad, kernel, ...): on this shared VM both
 * the memory's and the cores' speed drift over seconds, so each kernel is
 * compared with the triad of the same few seconds. *tri gets that triad. */
static stat2 measure_vs_triad(void (*fn)(void *), void *ctx, double amount, stat2 *tri) {
    double *r = calloc((size_t)g_reps, sizeof *r), *t = calloc((size_t)g_reps, sizeof *t);
    fn(ctx); /* warm */
    for (int i = 0; i < g_reps; i++) {
        double t0 = bench_now();
        triad(&g_tri);
        double t1 = bench_now();
        fn(ctx);
        double t2 = bench_now();
        t[i] = (double)BIG * 12 / 1e9 / (t1 - t0);
        r[i] = amount / (t2 - t1);
    }
    qsort(r, (size_t)g_reps, sizeof *r, bench_cmp_double);
    qsort(t, (size_t)g_reps, sizeof *t, bench_cmp_double);
    stat2 s = {r[g_reps - 1], r[g_reps / 2]};
    *tri = (stat2){t[g_reps - 1], t[g_reps / 2]};
    free(r), free(t);
    return s;
}

/* ------------------------------------------------------------------------ */
/* Rows of the table                                                        */
/* ------------------------------------------------------------------------ */

typedef struct {
    char group[16], name[48];
    int threads;
    stat2 v;           /* GB/s, or microseconds for "overhead" rows (best = lowest) */
    double triad;      /* the triad measured alongside (GB/s rows), or < 0 */
    double ratio;      /* to that triad, or < 0 */
    double target;     /* the floor for the ratio, or < 0 */
    const char *unit;  /* "GB/s" or "us" */
} row;

static row rows[256];
static int nrows;

static void add_row(const char *group, const char *name, int threads, stat2 v, double triad_b,
                    double target, const char *unit) {
    if (nrows == 256) return;
    row *r = &rows[nrows++];
    snprintf(r->group, sizeof r->group, "%s", group);
    snprintf(r->name, sizeof r->name, "%s", name);
    r->threads = threads;
    r->v = v;
    r->triad = triad_b > 0 ? triad_b : -1;
    r->ratio = triad_b > 0 ? v.best / triad_b : -1;
    r->target = target;
    r->unit = unit;
    if (triad_b > 0)
        printf("%-10s %-34s %d | %7.2f / %7.2f %-4s | %5.2f of triad %5.2f%s\n", group, name,
               threads, v.best, v.median, unit, r->ratio, triad_b,
               target > 0 ? (r->ratio >= target ? "  (target met)" : "  (BELOW TARGET)") : "");
    else
        printf("%-10s %-34s %d | %7.2f / %7.2f %-4s%s\n", group, name, threads, v.best, v.median,
               unit,
               target > 0 ? (v.best <= target ? "  (target met)" : "  (ABOVE TARGET)") : "");
    fflush(stdout);
}

/* ------------------------------------------------------------------------ */
/* Matrix-vector                                                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    int M, K, N;
    bool tb, bf16;
    int copies;
    float **W, *x, *y; /* W: f32, or bf16 bits (bf16) */
} mv_ctx;

static void mv_run(void *p) {
    mv_ctx *c = p;
    for (int i = 0; i < c->copies; i++) {
        int64_t ldb = c->tb ? c->K : c->N;
        if (c->bf16)
            tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, c->tb, c->M, c->N, c->K, c->x, c->K,
                           (const uint16_t *)c->W[i], ldb, c->y, c->N);
        else
            tnn__gemm_f32(false, c->tb, c->M, c->N, c->K, c->x, c->K, c->W[i], ldb, c->y, c->N);
    }
}

/* f32 matrix-vector products, then the same with bf16 weights (the bytes
 * streamed are halved; the target is the same fraction of the triad). */
static void bench_matvec(int threads, bool quick) {
    static const int shapes[][3] = {
        {1, 576, 1536}, {1, 4096, 4096}, {8, 4096, 4096}, {16, 4096, 4096} /* batched decoding */};
    for (int bf16 = 0; bf16 <= 1; bf16++)
        for (int s = 0; s < 4; s++) {
            for (int tb = 1; tb >= 0; tb--) {
                if (quick && (tb == 0 || bf16)) continue;
                mv_ctx c = {.M = shapes[s][0], .K = shapes[s][1], .N = shapes[s][2], .tb = tb,
                            .bf16 = bf16};
                size_t wn = (size_t)c.K * c.N, esize = bf16 ? 2 : 4;
                c.copies = (int)(((size_t)256 << 20) / (wn * esize)) + 1;
                c.W = malloc(sizeof(float *) * (size_t)c.copies);
                for (int i = 0; i < c.copies; i++) {
                    c.W[i] = falloc_fill(wn, 10 + (unsigned)i);
                    if (bf16) { /* in place: the first half of the buffer, rounded to bf16 */
                        uint16_t *h = (uint16_t *)c.W[i];
                        for (size_t e = 0; e < wn; e++) {
                            uint32_t u;
                            memcpy(&u, &c.W[i][e], 4);
                            h[e] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
                        }
                    }
                }
                c.x = falloc_fill((size_t)c.M * c.K, 3);
                c.y = falloc_fill((size_t)c.M * c.N, 4);
                char name[48];
                snprintf(name, sizeof name, "%dx%dx%d %s%s", c.M, c.K, c.N,
                         tb ? "NT (W rows)" : "NN", bf16 ? " bf16" : "");
                stat2 tri,
                    v = measure_vs_triad(mv_run, &c, (double)(wn * esize) * c.copies / 1e9, &tri);
                add_row("matvec", name, threads, v, tri.best, 0.8, "GB/s");
                for (int i = 0; i < c.copies; i++) free(c.W[i]);
                free(c.W), free(c.x), free(c.y);
            }
        }
}

/* ------------------------------------------------------------------------ */
/* Element-wise and row kernels                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    int which;
    float *a, *b, *c, *g;
} ew_ctx;

enum { EW_ADD, EW_MUL, EW_SCALE, EW_GELU, EW_SILU, EW_GELU_B, EW_SILU_B, EW_N };
static const char *const ew_names[EW_N] = {"add",  "mul",       "scale",    "gelu",
                                           "silu", "gelu_back", "silu_back"};
static const int ew_arrays[EW_N] = {3, 3, 2, 2, 2, 3, 3}; /* arrays read + written */

static void ew_run(void *p) {
    ew_ctx *c = p;
    switch (c->which) {
    case EW_ADD: tnn__k_binary(TNN_BIN_ADD, c->a, c->b, c->c, BIG); break;
    case EW_MUL: tnn__k_binary(TNN_BIN_MUL, c->a, c->b, c->c, BIG); break;
    case EW_SCALE: tnn__k_scale(c->a, 0.5f, c->c, BIG); break;
    case EW_GELU: tnn__k_gelu(c->a, c->c, BIG); break;
    case EW_SILU: tnn__k_silu(c->a, c->c, BIG); break;
    case EW_GELU_B: tnn__k_gelu_back(c->a, c->b, c->c, BIG); break;
    case EW_SILU_B: tnn__k_silu_back(c->a, c->b, c->c, BIG); break;
    }
}

#define ROWS 16384
#define COLS 1024

enum { RK_SOFTMAX, RK_SOFTMAX_B, RK_RMS, RK_RMS_B, RK_LN, RK_LN_B, RK_N };
static const char *const rk_names[RK_N] = {"softmax",  "softmax_back", "rms_norm",
                                           "rms_norm_back", "layer_norm", "layer_norm_back"};
static const int rk_arrays[RK_N] = {2, 3, 2, 3, 2, 3};

typedef struct {
    int which;
    float *a, *b, *c, *gamma;
} rk_ctx;

static void rk_run(void *p) {
    rk_ctx *c = p;
    switch (c->which) {
    case RK_SOFTMAX: tnn__k_softmax(c->a, c->c, ROWS, COLS); break;
    case RK_SOFTMAX_B: tnn__k_softmax_back(c->b, c->a, c->c, ROWS, COLS); break;
    case RK_RMS: tnn__k_rms_norm(c->a, c->gamma, c->c, ROWS, COLS, 1e-5); break;
    case RK_RMS_B: tnn__k_rms_norm_back(c->b, c->a, NULL, c->c, ROWS, COLS, 1e-5); break;
    case RK_LN: tnn__k_layer_norm(c->a, c->gamma, c->gamma, c->c, ROWS, COLS, 1e-5); break;
    default: tnn__k_layer_norm_back(c->b, c->a, c->c, ROWS, COLS, 1e-5); break;
    }
}

static void bench_memory_kernels(int threads) {
    ew_ctx e = {.a = falloc_fill(BIG, 1), .b = falloc_fill(BIG, 2), .c = falloc_fill(BIG, 3)};
    for (int w = 0; w < EW_N; w++) {
        e.which = w;
        stat2 tri, v = measure_vs_triad(ew_run, &e, (double)BIG * 4 * ew_arrays[w] / 1e9, &tri);
        add_row("eltwise", ew_names[w], threads, v, tri.best, 0.7, "GB/s");
    }
    rk_ctx r = {.a = e.a, .b = e.b, .c = e.c, .gamma = falloc_fill(COLS, 5)};
    for (int w = 0; w < RK_N; w++) {
        r.which = w;
        double bytes = (double)ROWS * COLS * 4 * rk_arrays[w];
        stat2 tri, v = measure_vs_triad(rk_run, &r, bytes / 1e9, &tri);
        add_row("rows", rk_names[w], threads, v, tri.best, 0.7, "GB/s");
    }
    free(e.a), free(e.b), free(e.c), free(r.gamma);
}

/* ------------------------------------------------------------------------ */
/* Fixed cost of small calls                                                */
/* ------------------------------------------------------------------------ */

#define SMALL 64
#define CALLS 2000

typedef struct {
    int which;
    double *a, *b, *out;
    float *fa, *fb, *fo;
} oc_ctx;

enum { OC_ADD, OC_GELU, OC_SOFTMAX, OC_MATMUL, OC_N };
static const char *const oc_names[OC_N] = {"tnn_mat_add", "tnn_mat_gelu", "tnn_mat_softmax",
                                           "tnn_mat_matmul"};

/* The whole one-call function, CALLS times. */
static void oc_call(void *p) {
    oc_ctx *c = p;
    for (int i = 0; i < CALLS; i++) {
        switch (c->which) {
        case OC_ADD: tnn_mat_add(c->a, c->b, SMALL, SMALL, c->out); break;
        case OC_GELU: tnn_mat_gelu(c->a, SMALL, SMALL, c->out); break;
        case OC_SOFTMAX: tnn_mat_softmax(c->a, SMALL, SMALL, c->out); break;
        case OC_MATMUL: tnn_mat_matmul(c->a, SMALL, SMALL, c->b, SMALL, SMALL, c->out); break;
        }
    }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VEC_CLONES __attribute__((target_clones("avx2", "default"), optimize("O3")))
#else
#define VEC_CLONES
#endif

VEC_CLONES static void narrow_b(float *restrict d, const double *restrict s, int n) {
    for (int j = 0; j < n; j++) d[j] = (float)s[j];
}
VEC_CLONES static void widen_b(double *restrict d, const float *restrict s, int n) {
    for (int j = 0; j < n; j++) d[j] = (double)s[j];
}

/* What the call cannot avoid: narrowing its inputs, the f32 kernel, and
 * widening the result (vectorized loops), CALLS times. */
static void oc_floor(void *p) {
    oc_ctx *c = p;
    const int n = SMALL * SMALL;
    for (int i = 0; i < CALLS; i++) {
        narrow_b(c->fa, c->a, n);
        if (c->which == OC_ADD || c->which == OC_MATMUL) narrow_b(c->fb, c->b, n);
        switch (c->which) {
        case OC_ADD: tnn__k_binary(TNN_BIN_ADD, c->fa, c->fb, c->fo, n); break;
        case OC_GELU: tnn__k_gelu(c->fa, c->fo, n); break;
        case OC_SOFTMAX: tnn__k_softmax(c->fa, c->fo, SMALL, SMALL); break;
        case OC_MATMUL:
            tnn__gemm_f32(false, false, SMALL, SMALL, SMALL, c->fa, SMALL, c->fb, SMALL, c->fo,
                          SMALL);
            break;
        }
        widen_b(c->out, c->fo, n);
    }
}

typedef struct {
    tnn_session *s;
    tnn_tensor *root;
    bool realize;
} graph_ctx;

static void graph_run(void *p) {
    graph_ctx *g = p;
    for (int i = 0; i < CALLS; i++) {
        if (g->realize) tnn_realize(g->s, g->root);
        tnn_compute(g->s);
    }
}

static void bench_overhead(int threads) {
    const int n = SMALL * SMALL;
    oc_ctx c = {.a = bench_xalloc(n * sizeof(double)), .b = bench_xalloc(n * sizeof(double)),
                .out = bench_xalloc(n * sizeof(double)), .fa = falloc_fill(n, 1),
                .fb = falloc_fill(n, 2), .fo = falloc_fill(n, 3)};
    for (int j = 0; j < n; j++) c.a[j] = c.fa[j], c.b[j] = c.fb[j];
    for (int w = 0; w < OC_N; w++) {
        c.which = w;
        /* rates in calls per microsecond; report microseconds per call */
        stat2 call = measure(oc_call, &c, CALLS / 1e6), floor = measure(oc_floor, &c, CALLS / 1e6);
        stat2 us = {1.0 / call.best, 1.0 / call.median};
        char name[48];
        snprintf(name, sizeof name, "%s 64x64", oc_names[w]);
        add_row("call", name, threads, us, 0, -1, "us");
        stat2 over = {1.0 / call.best - 1.0 / floor.best, 1.0 / call.median - 1.0 / floor.median};
        snprintf(name, sizeof name, "%s overhead", oc_names[w]);
        add_row("call", name, threads, over, 0, 5.0, "us");
    }
    free(c.a), free(c.b), free(c.out), free(c.fa), free(c.fb), free(c.fo);

    /* a 6-node graph: y = softmax(gelu(x @ w + b) * x) + x on 64 x 64 */
    graph_ctx g = {.s = tnn_session_new(0)};
    tnn_tensor *x = tnn_input_2d_f32(g.s, SMALL, SMALL), *w = tnn_input_2d_f32(g.s, SMALL, SMALL);
    tnn_tensor *b = tnn_input_1d_f32(g.s, SMALL);
    g.root = tnn_add(g.s, tnn_softmax(g.s, tnn_mul(g.s, tnn_gelu(g.s, tnn_add(g.s,
                                                   tnn_matmul_nn(g.s, x, w), b)), x)), x);
    if (!g.root || tnn_realize(g.s, g.root)) {
        fprintf(stderr, "bench_kernels: graph: %s\n", tnn_last_error());
        exit(1);
    }
    stat2 r = measure(graph_run, &g, CALLS / 1e6);
    add_row("graph", "6 nodes 64x64: tnn_compute", threads, (stat2){1 / r.best, 1 / r.median},
            0, -1, "us");
    g.realize = true;
    r = measure(graph_run, &g, CALLS / 1e6);
    add_row("graph", "6 nodes 64x64: realize + compute", threads,
            (stat2){1 / r.best, 1 / r.median}, 0, -1, "us");
    tnn_session_free(g.s);
}

/* ------------------------------------------------------------------------ */
/* Fusion: a product and the element-wise node after it                     */
/* ------------------------------------------------------------------------ */

typedef struct {
    tnn_session *s;
} fuse_ctx;

static void fuse_run(void *p) {
    fuse_ctx *c = p;
    if (tnn_compute(c->s)) {
        fprintf(stderr, "bench_kernels: fusion graph: %s\n", tnn_last_error());
        exit(1);
    }
}

/* Milliseconds per tnn_compute of x @ w followed by gelu, silu or a residual
 * add, with the CPU plan runner's fusion on and off (alternating runs), and
 * the ratio off / on. */
static void bench_fusion(int threads) {
    static const struct {
        int M, K, N, op; /* op: 0 gelu, 1 add residual, 2 silu */
        bool nt;
        const char *what;
    } cases[] = {
        {512, 768, 3072, 0, false, "512x768x3072 + gelu"},
        {4096, 768, 3072, 0, false, "4096x768x3072 + gelu"},
        {2048, 768, 768, 1, false, "2048x768x768 + add"},
        {16384, 768, 768, 1, false, "16384x768x768 + add"},
        {1, 576, 1536, 2, true, "1x576x1536 nt + silu"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        fuse_ctx c = {.s = tnn_session_new(0)};
        int M = cases[k].M, K = cases[k].K, N = cases[k].N;
        tnn_tensor *x = tnn_input_2d_f32(c.s, M, K);
        tnn_tensor *w = cases[k].nt ? tnn_input_2d_f32(c.s, N, K) : tnn_input_2d_f32(c.s, K, N);
        tnn_tensor *r = tnn_input_2d_f32(c.s, M, N);
        tnn_tensor *mm = cases[k].nt ? tnn_matmul_nt(c.s, x, w) : tnn_matmul_nn(c.s, x, w);
        tnn_tensor *y = cases[k].op == 0   ? tnn_gelu(c.s, mm)
                        : cases[k].op == 1 ? tnn_add(c.s, mm, r)
                                           : tnn_silu(c.s, mm);
        if (!y || tnn_realize(c.s, y)) {
            fprintf(stderr, "bench_kernels: fusion graph: %s\n", tnn_last_error());
            exit(1);
        }
        size_t most = (size_t)M * K; /* the largest of x, w and r */
        if ((size_t)K * N > most) most = (size_t)K * N;
        if ((size_t)M * N > most) most = (size_t)M * N;
        float *v = falloc_fill(most, 9);
        tnn_upload_f32(c.s, x, v, (size_t)M * K);
        tnn_upload_f32(c.s, w, v, (size_t)K * N);
        tnn_upload_f32(c.s, r, v, (size_t)M * N);
        free(v);
        double on[64], off[64];
        int reps = g_reps * 2 < 64 ? g_reps * 2 : 64;
        fuse_run(&c);
        for (int i = 0; i < reps; i++) {
            tnn__cpu_set_fuse(i & 1);
            double t0 = bench_now();
            fuse_run(&c);
            double ms = (bench_now() - t0) * 1e3;
            if (i & 1) on[i / 2] = ms;
            else off[i / 2] = ms;
        }
        tnn__cpu_set_fuse(-1);
        int h = reps / 2;
        qsort(on, (size_t)h, sizeof *on, bench_cmp_double);
        qsort(off, (size_t)h, sizeof *off, bench_cmp_double);
        char name[48];
        snprintf(name, sizeof name, "%s fused", cases[k].what);
        add_row("fusion", name, threads, (stat2){on[0], on[h / 2]}, 0, -1, "ms");
        snprintf(name, sizeof name, "%s unfused", cases[k].what);
        add_row("fusion", name, threads, (stat2){off[0], off[h / 2]}, 0, -1, "ms");
        printf("%-10s %-34s %d | unfused / fused: %.3f best, %.3f median\n", "fusion",
               cases[k].what, threads, off[0] / on[0], off[h / 2] / on[h / 2]);
        tnn_session_free(c.s);
    }
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                     */
/* ------------------------------------------------------------------------ */

static void write_json(const char *path, const double *triad_b, const double *copy_b) {
    FILE *f = bench_json_open(path, "kernels");
    if (!f) return;
    fprintf(f, "  \"reps\": %d,\n  \"triad_gbs\": {\"1\": %.2f, \"2\": %.2f},\n", g_reps,
            triad_b[1], triad_b[2]);
    fprintf(f, "  \"copy_gbs\": {\"1\": %.2f, \"2\": %.2f},\n  \"results\": [\n", copy_b[1],
            copy_b[2]);
    for (int i = 0; i < nrows; i++) {
        const row *r = &rows[i];
        fprintf(f, "    {\"group\": \"%s\", \"name\": \"%s\", \"threads\": %d, \"unit\": \"%s\", "
                   "\"best\": %.3f, \"median\": %.3f",
                r->group, r->name, r->threads, r->unit, r->v.best, r->v.median);
        if (r->ratio >= 0)
            fprintf(f, ", \"triad_gbs\": %.2f, \"ratio_to_triad\": %.3f", r->triad, r->ratio);
        if (r->target > 0) fprintf(f, ", \"target\": %.2f", r->target);
        fprintf(f, "}%s\n", i + 1 < nrows ? "," : "");
    }
    bench_json_close(f, path);
}

int main(int argc, char **argv) {
    const char *out = TNN_BENCH_RESULTS "/kernels.json";
    int only = 0;
    bool quick = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) only = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else {
            fprintf(stderr, "usage: %s [--reps N] [--threads 1|2] [--quick] [--out FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    if (g_reps < 3) g_reps = 3;
    if (g_reps > 50) g_reps = 50;
    double triad_b[3] = {0}, copy_b[3] = {0};
    printf("tinynn kernel bench: best / median of %d repetitions; each ratio uses the best triad "
           "run between that kernel's repetitions (shown after it)\n\n",
           g_reps);
    for (int t = 1; t <= 2; t++) {
        if (only && t != only) continue;
        tnn_set_num_threads(t);
        arrays3 a = {falloc_fill(BIG, 1), falloc_fill(BIG, 2), falloc_fill(BIG, 3)};
        stat2 tr = measure(triad, &a, (double)BIG * 12 / 1e9);
        stat2 cp = measure(copy, &a, (double)BIG * 8 / 1e9);
        g_tri = a;
        triad_b[t] = tr.best, copy_b[t] = cp.best;
        printf("%d thread%s: triad %.2f / %.2f GB/s, copy %.2f / %.2f GB/s\n", t, t > 1 ? "s" : "",
               tr.best, tr.median, cp.best, cp.median);
        bench_matvec(t, quick);
        bench_memory_kernels(t);
        free(a.a), free(a.b), free(a.c);
        bench_overhead(t);
        bench_fusion(t);
        printf("\n");
    }
    tnn_set_num_threads(0);
    write_json(out, triad_b, copy_b);
    return 0;
}
