/* bench_quant.c - matrix-vector (LLM decoding) throughput of every GGUF
 * tensor type in src/quant/: weight GB/s of y = W x for W 4096 x 4096, next
 * to a triad bandwidth measured in the same run, for the AVX2 kernels and
 * the scalar twin; then the compute rate with the weights in cache.
 *
 * Usage: bench_quant [--threads N] [--reps N] [--n N] [--no-scalar] [--out FILE.json]
 */
#include "cpu/pool.h"
#include "quant/quant.h"
#include "tinynn.h"

#include "bench_common.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 2685821657736338717ull) >> 32);
}

/* ------------------------------------------------------------------------ */
/* Triad: a = b + s * c over 3 x 64 MiB, split like the kernels             */
/* ------------------------------------------------------------------------ */

typedef struct {
    float *a;
    const float *b, *c;
} triad_ctx;

static void triad_range(void *p, int64_t begin, int64_t end) {
    triad_ctx *t = p;
    for (int64_t i = begin; i < end; i++)
        t->a[i] = t->b[i] + 3.0f * t->c[i];
}

static triad_ctx g_tri; /* 3 x 64 MiB, alive for the whole run */
#define TRIAD_N ((int64_t)1 << 24)

/* One triad over all threads, GB/s. */
static double triad_once(void) {
    double t0 = bench_now();
    tnn__parallel_for(TRIAD_N, 1 << 16, triad_range, &g_tri);
    return 3.0 * (double)TRIAD_N * 4 / (bench_now() - t0) / 1e9;
}

static void triad(int reps, double *best, double *median) {
    float *a = bench_xalloc((size_t)TRIAD_N * 4), *b = bench_xalloc((size_t)TRIAD_N * 4);
    float *c = bench_xalloc((size_t)TRIAD_N * 4);
    for (int64_t i = 0; i < TRIAD_N; i++)
        a[i] = 0, b[i] = 1, c[i] = 2;
    g_tri = (triad_ctx){a, b, c};
    double *gb = calloc((size_t)reps, sizeof(double));
    triad_once(); /* warm */
    for (int r = 0; r < reps; r++)
        gb[r] = triad_once();
    qsort(gb, (size_t)reps, sizeof(double), bench_cmp_double);
    *best = gb[reps - 1];
    *median = gb[reps / 2];
    free(gb);
}

/* ------------------------------------------------------------------------ */
/* Matrix-vector                                                            */
/* ------------------------------------------------------------------------ */

static void fill(int type, uint8_t *w, int64_t rows, int64_t n) {
    const tnn_qtype_info *t = tnn__qtype(type);
    int64_t bytes = tnn__qtype_row_bytes(type, n) * rows;
    if (type == TNN_QT_F32 || type == TNN_QT_F16 || type == TNN_QT_BF16) {
        for (int64_t i = 0; i < rows * n; i++) {
            float f = ((float)(rnd() >> 8) / 16777216.0f - 0.5f) * 0.1f;
            if (type == TNN_QT_F32)
                memcpy(w + 4 * i, &f, 4);
            else {
                uint16_t h = type == TNN_QT_F16 ? tnn__f32_to_f16(f) : tnn__f32_to_bf16(f);
                memcpy(w + 2 * i, &h, 2);
            }
        }
        return;
    }
    for (int64_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)rnd();
    int off0 = type == TNN_QT_Q6_K ? 208 : 0;
    int off1 =
        (type == TNN_QT_Q4_1 || type == TNN_QT_Q5_1 || type == TNN_QT_Q4_K || type == TNN_QT_Q5_K)
            ? 2
            : -1;
    uint16_t d = tnn__f32_to_f16(0.01f);
    for (int64_t b = 0; b < rows * n / t->block; b++) {
        memcpy(w + b * t->block_bytes + off0, &d, 2);
        if (off1 >= 0)
            memcpy(w + b * t->block_bytes + off1, &d, 2);
    }
}

typedef struct {
    int type;
    double gbs[2][2]; /* [kernel][best, median] */
    double us[2];     /* median microseconds per matvec */
    double tri;       /* best triad run between the AVX2 repetitions, GB/s */
} result;

int main(int argc, char **argv) {
    int threads = 2, reps = 30;
    int64_t n = 4096;
    bool scalar = true;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            n = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--no-scalar"))
            scalar = false;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps N] [--n N] [--no-scalar] "
                    "[--out FILE.json]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 3)
        reps = 3;
    if (n < 256 || n % 256) {
        fprintf(stderr, "bench_quant: --n must be a multiple of 256\n");
        return 2;
    }
    if (tnn_set_num_threads(threads) != TNN_OK) {
        fprintf(stderr, "bench_quant: %s\n", tnn_last_error());
        return 2;
    }
    double tb, tm;
    triad(reps, &tb, &tm);
    printf("bench_quant: %lld x %lld matrix-vector, %d threads, default kernel %s\n", (long long)n,
           (long long)n, threads, tnn__quant_kernel_name(tnn__quant_get_kernel()));
    printf("triad (3 x 64 MiB) at the start: best %.1f GB/s, median %.1f GB/s; each row's %% is\n"
           "its best against the best triad run between its repetitions (the VM's speed drifts)\n\n",
           tb, tm);
    printf("%-5s %9s | %-30s | %-26s | %s\n", "type", "MB", "avx2 GB/s best/med (%triad)",
           "scalar GB/s best/med", "avx2/scalar");

    static const int types[] = {TNN_QT_F32,  TNN_QT_F16,  TNN_QT_BF16, TNN_QT_Q8_0,
                                TNN_QT_Q4_0, TNN_QT_Q4_1, TNN_QT_Q5_0, TNN_QT_Q5_1,
                                TNN_QT_Q4_K, TNN_QT_Q5_K, TNN_QT_Q6_K};
    enum { NT = sizeof types / sizeof types[0] };
    result res[NT];
    memset(res, 0, sizeof res);
    float *x = bench_xalloc((size_t)n * 4), *y = bench_xalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(rnd() >> 8) / 16777216.0f - 0.5f;
    int64_t wq = tnn__qact_bytes(TNN_QT_Q8_0, n), wk = tnn__qact_bytes(TNN_QT_Q4_K, n);
    void *work = bench_xalloc((size_t)(wq > wk ? wq : wk));
    double *t = calloc((size_t)reps, sizeof(double));
    for (int k = 0; k < NT; k++) {
        int type = types[k];
        int64_t rb = tnn__qtype_row_bytes(type, n);
        size_t mat = (size_t)(rb * n);
        /* enough copies to stream >= 160 MiB: weights come from memory, not L3 */
        int copies = (int)((160u << 20) / mat + 1);
        uint8_t *w = bench_xalloc(mat * (size_t)copies);
        for (int c = 0; c < copies; c++)
            fill(type, w + mat * (size_t)c, n, n);
        res[k].type = type;
        for (int kern = 0; kern < TNN_QK_COUNT; kern++) {
            if (!tnn__quant_kernel_supported(kern) || (kern == TNN_QK_SCALAR && !scalar))
                continue;
            tnn__quant_set_kernel(kern);
            int kreps = kern == TNN_QK_SCALAR ? (reps < 5 ? reps : 5) : reps;
            tnn__quant_matvec(type, w, n, n, x, y, work); /* warm */
            for (int r = 0; r < kreps; r++) {
                int c = r % copies;
                if (kern != TNN_QK_SCALAR) { /* the triad alongside: the VM's speed drifts */
                    double tr = triad_once();
                    if (tr > res[k].tri) res[k].tri = tr;
                }
                double t0 = bench_now();
                tnn__quant_matvec(type, w + mat * (size_t)c, n, n, x, y, work);
                t[r] = bench_now() - t0;
            }
            qsort(t, (size_t)kreps, sizeof(double), bench_cmp_double);
            res[k].gbs[kern][0] = (double)mat / t[0] / 1e9;
            res[k].gbs[kern][1] = (double)mat / t[kreps / 2] / 1e9;
            res[k].us[kern] = t[kreps / 2] * 1e6;
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        double *a = res[k].gbs[TNN_QK_AVX2], *s = res[k].gbs[TNN_QK_SCALAR];
        printf("%-5s %9.1f | %6.1f / %6.1f (%3.0f%% of %4.1f) | %6.2f / %6.2f           | %5.1fx\n",
               tnn__qtype(type)->name, (double)mat / 1e6, a[0], a[1], 100.0 * a[0] / res[k].tri,
               res[k].tri, s[0], s[1], s[1] > 0 ? a[1] / s[1] : 0.0);
        free(w);
    }
    /* compute rate with the weights in cache (L2 for the 4-bit types, L3 for
     * F32): 1024 x 1024, one thread */
    printf("\nin cache (1024 x 1024 repeated, 1 thread): G elements/s best/median\n");
    printf("%-5s | %-15s | %-15s | %s\n", "type", "avx2", "scalar", "avx2/scalar");
    tnn_set_num_threads(1);
    for (int k = 0; k < NT; k++) {
        int type = types[k];
        const int64_t m = 1024;
        int64_t rb = tnn__qtype_row_bytes(type, m);
        uint8_t *w = bench_xalloc((size_t)(rb * m));
        fill(type, w, m, m);
        double g[2][2] = {{0, 0}, {0, 0}};
        for (int kern = 0; kern < TNN_QK_COUNT; kern++) {
            if (!tnn__quant_kernel_supported(kern) || (kern == TNN_QK_SCALAR && !scalar))
                continue;
            tnn__quant_set_kernel(kern);
            int kreps = kern == TNN_QK_SCALAR ? 5 : 4 * reps;
            tnn__quant_matvec(type, w, m, m, x, y, work);
            for (int r = 0; r < kreps; r++) {
                double t0 = bench_now();
                tnn__quant_matvec(type, w, m, m, x, y, work);
                t[r % reps] = bench_now() - t0; /* the last `reps` runs count */
            }
            int cnt = kreps < reps ? kreps : reps;
            qsort(t, (size_t)cnt, sizeof(double), bench_cmp_double);
            g[kern][0] = (double)(m * m) / t[0] / 1e9;
            g[kern][1] = (double)(m * m) / t[cnt / 2] / 1e9;
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        printf("%-5s | %6.2f / %6.2f | %6.2f / %6.2f | %5.1fx\n", tnn__qtype(type)->name, g[1][0],
               g[1][1], g[0][0], g[0][1], g[0][1] > 0 ? g[1][1] / g[0][1] : 0.0);
        free(w);
    }
    tnn_set_num_threads(threads);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) {
            fprintf(stderr, "bench_quant: cannot write %s\n", out);
        } else {
            fprintf(f,
                    "{\n  \"n\": %lld,\n  \"threads\": %d,\n  \"triad_gbs\": [%.2f, %.2f],\n"
                    "  \"types\": [\n",
                    (long long)n, threads, tb, tm);
            for (int k = 0; k < NT; k++)
                fprintf(f,
                        "    {\"type\": \"%s\", \"avx2_gbs\": [%.2f, %.2f], \"avx2_us\": %.1f, "
                        "\"triad_alongside_gbs\": %.2f, "
                        "\"scalar_gbs\": [%.3f, %.3f], \"scalar_us\": %.1f}%s\n",
                        tnn__qtype(res[k].type)->name, res[k].gbs[1][0], res[k].gbs[1][1],
                        res[k].us[1], res[k].tri, res[k].gbs[0][0], res[k].gbs[0][1],
                        res[k].us[0], k + 1 < NT ? "," : "");
            fprintf(f, "  ]\n}\n");
            fclose(f);
        }
    }
    free(t);
    free(g_tri.a), free((void *)g_tri.b), free((void *)g_tri.c);
    free(x);
    free(y);
    free(work);
    return 0;
}
