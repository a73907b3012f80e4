/* bench_quant.c - matrix-vector (LLM decoding) throughput of every GGUF
 * tensor type in src/quant/: weight GB/s of y = W x for W 4096 x 4096, next
 * to a triad bandwidth measured in the same run, for every kernel set the CPU
 * runs (AVX-512, AVX2, the scalar twin); then the compute rate with the
 * weights in cache, and with several rows of x at once (short prompts: the
 * several-row kernels; G multiply-adds/s against the one-row kernel run once
 * per row of x).
 *
 * Usage: bench_quant [--threads N] [--reps N] [--n N] [--nx N] [--no-scalar]
 *                    [--rows-only] [--out FILE.json]
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
/* Triad (bench_common.h) over 3 x 64 MiB, alive for the whole run          */
/* ------------------------------------------------------------------------ */

static bench_triad g_tri;

static double triad_once(void) { return bench_triad_once(&g_tri); }

static void triad(int reps, double *best, double *median) {
    g_tri = bench_triad_new((int64_t)1 << 24);
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
    int off0 = type == TNN_QT_Q6_K ? 208 : type == TNN_QT_Q3_K ? 108 : type == TNN_QT_Q2_K ? 80 : 0;
    int off1 =
        (type == TNN_QT_Q4_1 || type == TNN_QT_Q5_1 || type == TNN_QT_Q4_K || type == TNN_QT_Q5_K)
            ? 2
        : type == TNN_QT_Q2_K ? 82
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
    double gbs[TNN_QK_COUNT][2]; /* [kernel][best, median] */
    double us[TNN_QK_COUNT];     /* median microseconds per matvec */
    double tri[TNN_QK_COUNT];    /* best triad run between that kernel's repetitions, GB/s */
    double cache[TNN_QK_COUNT][2]; /* in cache: G elements/s [best, median] */
    double rows[TNN_QK_COUNT][2];  /* nx rows of x in cache: G multiply-adds/s */
} result;

/* Median seconds of one call of y = W x for nx rows of x (the kernel set in
 * force), after a warm call; the last `reps` of 4 * reps runs count. */
static double time_rows(int type, const uint8_t *w, int64_t m, const float *x, int64_t nx,
                        float *y, int reps, double *t) {
    int kreps = tnn__quant_get_kernel() == TNN_QK_SCALAR ? 5 : 4 * reps;
    tnn__quant_matmul(type, w, m, m, x, nx, y, NULL);
    for (int r = 0; r < kreps; r++) {
        double t0 = bench_now();
        tnn__quant_matmul(type, w, m, m, x, nx, y, NULL);
        t[r % reps] = bench_now() - t0;
    }
    int cnt = kreps < reps ? kreps : reps;
    qsort(t, (size_t)cnt, sizeof(double), bench_cmp_double);
    return t[cnt / 2];
}

static bool run_kernel(int kern, bool scalar) {
    return tnn__quant_kernel_supported(kern) && (kern != TNN_QK_SCALAR || scalar);
}

int main(int argc, char **argv) {
    int threads = 2, reps = 30;
    int64_t n = 4096;
    int64_t nx = 8;
    bool scalar = true, rows_only = false;
    const char *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--n") && i + 1 < argc)
            n = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--nx") && i + 1 < argc)
            nx = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--no-scalar"))
            scalar = false;
        else if (!strcmp(argv[i], "--rows-only"))
            rows_only = true;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--reps N] [--n N] [--nx N] [--no-scalar] "
                    "[--rows-only] [--out FILE.json]\n",
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
    if (nx < 1 || nx > 64) {
        fprintf(stderr, "bench_quant: --nx must be 1 to 64\n");
        return 2;
    }
    if (tnn_set_num_threads(threads) != TNN_OK) {
        fprintf(stderr, "bench_quant: %s\n", tnn_last_error());
        return 2;
    }
    double tb, tm;
    triad(reps, &tb, &tm);
    int top = tnn__quant_get_kernel();
    printf("bench_quant: %lld x %lld matrix-vector, %d threads, default kernel %s\n", (long long)n,
           (long long)n, threads, tnn__quant_kernel_name(top));
    printf("triad (3 x 64 MiB) at the start: best %.1f GB/s, median %.1f GB/s; each %% is a\n"
           "kernel's best against the best triad run between its repetitions (the VM's speed\n"
           "drifts); the last column is the default kernel's median over the next one down\n\n",
           tb, tm);
    static const int types[] = {TNN_QT_F32,  TNN_QT_F16,  TNN_QT_BF16,   TNN_QT_Q8_0,
                                TNN_QT_Q4_0, TNN_QT_Q4_1, TNN_QT_Q5_0,   TNN_QT_Q5_1,
                                TNN_QT_IQ4_NL, TNN_QT_Q2_K, TNN_QT_Q3_K, TNN_QT_Q4_K,
                                TNN_QT_Q5_K, TNN_QT_Q6_K, TNN_QT_IQ4_XS};
    enum { NT = sizeof types / sizeof types[0] };
    result res[NT];
    memset(res, 0, sizeof res);
    float *x = bench_xalloc((size_t)n * 4), *y = bench_xalloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(rnd() >> 8) / 16777216.0f - 0.5f;
    int64_t wq = tnn__qact_bytes(TNN_QT_Q8_0, n), wk = tnn__qact_bytes(TNN_QT_Q4_K, n);
    void *work = bench_xalloc((size_t)(wq > wk ? wq : wk));
    double *t = calloc((size_t)reps * 4, sizeof(double));
    /* the next kernel down from the default that ran: the speed-up's base */
    int base = -1;
    for (int kern = top - 1; kern >= 0 && base < 0; kern--)
        if (run_kernel(kern, scalar))
            base = kern;
    if (!rows_only) {
        printf("%-5s %6s", "type", "MB");
        for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--)
            if (run_kernel(kern, scalar))
                printf(" | %-6s GB/s best/med (%%triad)", tnn__quant_kernel_name(kern));
        printf(" | speed-up\n");
    }
    for (int k = 0; k < NT && !rows_only; k++) {
        int type = types[k];
        int64_t rb = tnn__qtype_row_bytes(type, n);
        size_t mat = (size_t)(rb * n);
        /* enough copies to stream >= 160 MiB: weights come from memory, not L3 */
        int copies = (int)((160u << 20) / mat + 1);
        uint8_t *w = bench_xalloc(mat * (size_t)copies);
        for (int c = 0; c < copies; c++)
            fill(type, w + mat * (size_t)c, n, n);
        res[k].type = type;
        printf("%-5s %6.1f", tnn__qtype(type)->name, (double)mat / 1e6);
        for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--) {
            if (!run_kernel(kern, scalar))
                continue;
            tnn__quant_set_kernel(kern);
            int kreps = kern == TNN_QK_SCALAR ? (reps < 5 ? reps : 5) : reps;
            tnn__quant_matvec(type, w, n, n, x, y, work); /* warm */
            for (int r = 0; r < kreps; r++) {
                int c = r % copies;
                double tr = triad_once(); /* the triad alongside: the VM's speed drifts */
                if (tr > res[k].tri[kern]) res[k].tri[kern] = tr;
                double t0 = bench_now();
                tnn__quant_matvec(type, w + mat * (size_t)c, n, n, x, y, work);
                t[r] = bench_now() - t0;
            }
            qsort(t, (size_t)kreps, sizeof(double), bench_cmp_double);
            double *g = res[k].gbs[kern];
            g[0] = (double)mat / t[0] / 1e9;
            g[1] = (double)mat / t[kreps / 2] / 1e9;
            res[k].us[kern] = t[kreps / 2] * 1e6;
            printf(" | %8.1f / %6.1f (%3.0f%% of %4.1f)", g[0], g[1], 100.0 * g[0] / res[k].tri[kern],
                   res[k].tri[kern]);
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        if (base >= 0)
            printf(" | %5.2fx %s\n", res[k].gbs[top][1] / res[k].gbs[base][1],
                   tnn__quant_kernel_name(base));
        else
            printf("\n");
        free(w);
    }
    /* compute rate with the weights in cache (L2 for the 4-bit types, L3 for
     * F32): 1024 x 1024, one thread */
    tnn_set_num_threads(1);
    if (!rows_only) {
        printf("\nin cache (1024 x 1024 repeated, 1 thread): G elements/s best/median\n%-5s",
               "type");
        for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--)
            if (run_kernel(kern, scalar))
                printf(" | %-15s", tnn__quant_kernel_name(kern));
        printf(" | speed-up\n");
    }
    for (int k = 0; k < NT && !rows_only; k++) {
        int type = types[k];
        const int64_t m = 1024;
        int64_t rb = tnn__qtype_row_bytes(type, m);
        uint8_t *w = bench_xalloc((size_t)(rb * m));
        fill(type, w, m, m);
        printf("%-5s", tnn__qtype(type)->name);
        for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--) {
            if (!run_kernel(kern, scalar))
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
            double *g = res[k].cache[kern];
            g[0] = (double)(m * m) / t[0] / 1e9;
            g[1] = (double)(m * m) / t[cnt / 2] / 1e9;
            printf(" | %6.2f / %6.2f", g[0], g[1]);
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        if (base >= 0)
            printf(" | %5.2fx %s\n", res[k].cache[top][1] / res[k].cache[base][1],
                   tnn__quant_kernel_name(base));
        else
            printf("\n");
        free(w);
    }
    /* several rows of x (a short prompt), weights in cache: each kernel
     * set's several-row product (where it has one for the type) against its
     * one-row kernel run once per row of x */
    printf("\n%lld rows of x, 1024 x 1024 in cache, 1 thread: G multiply-adds/s median "
           "(several-row / one row at a time)\n%-5s",
           (long long)nx, "type");
    for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--)
        if (run_kernel(kern, scalar) && kern != TNN_QK_SCALAR)
            printf(" | %-15s", tnn__quant_kernel_name(kern));
    printf("\n");
    {
        const int64_t m = 1024;
        float *xr = bench_xalloc((size_t)(nx * m) * sizeof(float));
        float *yr = bench_xalloc((size_t)(nx * m) * sizeof(float));
        for (int64_t i = 0; i < nx * m; i++)
            xr[i] = (float)(rnd() >> 8) / 16777216.0f - 0.5f;
        for (int k = 0; k < NT; k++) {
            int type = types[k];
            if (tnn__qtype(type)->block == 1) /* F32/F16/BF16: no several-row kernels */
                continue;
            int64_t rb = tnn__qtype_row_bytes(type, m);
            uint8_t *w = bench_xalloc((size_t)(rb * m));
            fill(type, w, m, m);
            printf("%-5s", tnn__qtype(type)->name);
            for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--) {
                if (!run_kernel(kern, scalar) || kern == TNN_QK_SCALAR)
                    continue;
                tnn__quant_set_kernel(kern);
                double tn = time_rows(type, w, m, xr, nx, yr, reps, t);
                double t1 = 0;
                for (int64_t i = 0; i < nx; i++)
                    t1 += time_rows(type, w, m, xr + i * m, 1, yr, reps < 10 ? reps : 10, t);
                res[k].rows[kern][0] = (double)(nx * m * m) / tn / 1e9;
                res[k].rows[kern][1] = (double)(nx * m * m) / t1 / 1e9;
                printf(" | %6.2f / %6.2f", res[k].rows[kern][0], res[k].rows[kern][1]);
            }
            tnn__quant_set_kernel(TNN_QK_AUTO);
            printf("\n");
            free(w);
        }
        free(xr);
        free(yr);
    }
    /* rows as wide as small models' (576 SmolLM2-135M, 896 Qwen2.5-0.5B,
     * 960 SmolLM2-360M): a row's blocks past the last whole group of 8 (2, 4
     * and 6 here) cost their share or more; the rate against 512's (no such
     * blocks) tells which */
    if (!rows_only) {
        static const int64_t widths[] = {512, 576, 896, 960};
        static const int wtypes[] = {TNN_QT_Q8_0, TNN_QT_Q4_0, TNN_QT_Q4_1, TNN_QT_Q5_1,
                                     TNN_QT_IQ4_NL};
        const int64_t m = 512;
        printf("\none row of x, %lld rows of the widths of small models in cache, 1 thread, "
               "kernel %s:\nG elements/s median (and against width 512)\n%-6s",
               (long long)m, tnn__quant_kernel_name(top), "type");
        for (size_t i = 0; i < sizeof widths / sizeof *widths; i++)
            printf(" | %-14lld", (long long)widths[i]);
        printf("\n");
        float *xw = bench_xalloc(960 * sizeof(float)), *yw = bench_xalloc((size_t)m * 4);
        void *ww = bench_xalloc((size_t)tnn__qact_bytes(TNN_QT_Q8_0, 960));
        for (int i = 0; i < 960; i++)
            xw[i] = (float)(rnd() >> 8) / 16777216.0f - 0.5f;
        enum { NW = sizeof widths / sizeof *widths };
        double *tw = bench_xalloc((size_t)reps * NW * sizeof(double));
        for (size_t k = 0; k < sizeof wtypes / sizeof *wtypes; k++) {
            int type = wtypes[k];
            uint8_t *w[NW];
            for (int i = 0; i < NW; i++) {
                w[i] = bench_xalloc((size_t)(tnn__qtype_row_bytes(type, widths[i]) * m));
                fill(type, w[i], m, widths[i]);
                tnn__quant_matvec(type, w[i], m, widths[i], xw, yw, ww);
            }
            /* the widths in turn within each repetition: the VM's speed
             * drifts, and every width sees the same drift */
            for (int r = 0; r < 4 * reps; r++)
                for (int i = 0; i < NW; i++) {
                    double t0 = bench_now();
                    for (int it = 0; it < 8; it++)
                        tnn__quant_matvec(type, w[i], m, widths[i], xw, yw, ww);
                    tw[i * reps + r % reps] = (bench_now() - t0) / 8;
                }
            printf("%-6s", tnn__qtype(type)->name);
            double g512 = 0;
            for (int i = 0; i < NW; i++) {
                qsort(tw + i * reps, (size_t)reps, sizeof(double), bench_cmp_double);
                double g = (double)(m * widths[i]) / tw[i * reps + reps / 2] / 1e9;
                if (i == 0)
                    g512 = g;
                printf(" | %5.2f (%4.2fx)", g, g / g512);
                free(w[i]);
            }
            printf("\n");
        }
        free(tw);
        free(xw);
        free(yw);
        free(ww);
    }
    tnn_set_num_threads(threads);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) {
            fprintf(stderr, "bench_quant: cannot write %s\n", out);
        } else {
            fprintf(f,
                    "{\n  \"n\": %lld,\n  \"threads\": %d,\n  \"triad_gbs\": [%.2f, %.2f],\n"
                    "  \"default_kernel\": \"%s\",\n  \"rows_of_x\": %lld,\n  \"types\": [\n",
                    (long long)n, threads, tb, tm, tnn__quant_kernel_name(top), (long long)nx);
            for (int k = 0; k < NT; k++) {
                fprintf(f, "    {\"type\": \"%s\"", tnn__qtype(res[k].type)->name);
                for (int kern = TNN_QK_COUNT - 1; kern >= 0; kern--)
                    if (run_kernel(kern, scalar))
                        fprintf(f,
                                ", \"%s\": {\"gbs\": [%.3f, %.3f], \"us\": %.1f, "
                                "\"triad_alongside_gbs\": %.2f, \"cache_gelems\": [%.3f, %.3f], "
                                "\"rows_gmacs\": [%.3f, %.3f]}",
                                tnn__quant_kernel_name(kern), res[k].gbs[kern][0],
                                res[k].gbs[kern][1], res[k].us[kern], res[k].tri[kern],
                                res[k].cache[kern][0], res[k].cache[kern][1],
                                res[k].rows[kern][0], res[k].rows[kern][1]);
                fprintf(f, "}%s\n", k + 1 < NT ? "," : "");
            }
            fprintf(f, "  ]\n}\n");
            fclose(f);
        }
    }
    free(t);
    bench_triad_free(&g_tri);
    free(x);
    free(y);
    free(work);
    return 0;
}
