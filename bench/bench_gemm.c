/* bench_gemm.c - f32 GEMM throughput of tnn__gemm_f32 against, in the same
 * run, the machine's FMA peak, the scalar twin and OpenBLAS's cblas_sgemm
 * (dlopen'ed at run time, never linked; skipped when absent); then the bf16
 * product (tnn__gemm_bf16: f32 activations, bf16 weights, the path this CPU
 * takes) at the transformer shapes against OpenBLAS's sgemm on the f32
 * weights, with its error against tinynn's f32 product. Prints tables and
 * writes JSON to bench/results/gemm.json.
 *
 * Usage: bench_gemm [--reps N] [--passes N] [--quick] [--no-scalar] [--no-big]
 *                   [--no-bf16] [--threads 1|2] [--out FILE]
 *
 * Method: tinynn and OpenBLAS repetitions alternate (OpenBLAS in a forked
 * child each time, so its spinning threads never share the cores with
 * tinynn), each timed call preceded by a warm-up call. The f32 table is
 * measured in --passes passes (default 2) over all its rows, so that each
 * row's repetitions come from moments a minute or more apart (on a shared
 * VM a core can be taken away for seconds, a whole row's worth); best and
 * median are over all the repetitions of both libraries alike. The "other"
 * column says how busy the machine was (what /proc/stat can see).
 */
#include "tinynn.h"

#include "bench_common.h"
#include "cpu/gemm.h"
#include "ops/kernels.h"
#include "quant/quant.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BENCH_X86 1
#endif

#ifndef TNN_BENCH_RESULTS
#define TNN_BENCH_RESULTS "bench/results"
#endif

/* The machine is shared: how many cores did other processes (and the
 * hypervisor's steal) keep busy during a measurement? From /proc/stat and
 * this process's own CPU time (children included); -1 when unknown. */
typedef struct {
    double wall, busy, own; /* seconds */
} load_mark;

static load_mark load_now(void) {
    load_mark m = {bench_now(), -1, 0};
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        unsigned long long v[8] = {0};
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8) {
            long hz = sysconf(_SC_CLK_TCK);
            /* user nice system [idle iowait] irq softirq steal */
            unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
            m.busy = (double)busy / (double)(hz > 0 ? hz : 100);
        }
        fclose(f);
    }
    struct rusage self, kids;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &kids);
    m.own = (double)(self.ru_utime.tv_sec + self.ru_stime.tv_sec + kids.ru_utime.tv_sec +
                     kids.ru_stime.tv_sec) +
            1e-6 * (double)(self.ru_utime.tv_usec + self.ru_stime.tv_usec +
                            kids.ru_utime.tv_usec + kids.ru_stime.tv_usec);
    return m;
}

static double other_load(load_mark a, load_mark b) {
    if (a.busy < 0 || b.busy < 0 || b.wall - a.wall < 1e-3) return -1;
    double o = ((b.busy - a.busy) - (b.own - a.own)) / (b.wall - a.wall);
    return o < 0 ? 0 : o;
}

/* ------------------------------------------------------------------------ */
/* FMA peak: independent FMA chains, one per ymm register                   */
/* ------------------------------------------------------------------------ */

#define PEAK_ITERS 50000000L

#if defined(BENCH_X86)
__attribute__((target("avx2,fma"))) static void *peak_worker(void *arg) {
    __m256 x = _mm256_set1_ps(1.0f), y = _mm256_set1_ps(1e-8f);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m256 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < PEAK_ITERS; i++) {
        a0 = _mm256_fmadd_ps(x, y, a0), a1 = _mm256_fmadd_ps(x, y, a1);
        a2 = _mm256_fmadd_ps(x, y, a2), a3 = _mm256_fmadd_ps(x, y, a3);
        a4 = _mm256_fmadd_ps(x, y, a4), a5 = _mm256_fmadd_ps(x, y, a5);
        a6 = _mm256_fmadd_ps(x, y, a6), a7 = _mm256_fmadd_ps(x, y, a7);
        a8 = _mm256_fmadd_ps(x, y, a8), a9 = _mm256_fmadd_ps(x, y, a9);
        a10 = _mm256_fmadd_ps(x, y, a10), a11 = _mm256_fmadd_ps(x, y, a11);
        __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
        __asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float out[8];
    _mm256_storeu_ps(out, s);
    *(volatile float *)arg = out[0];
    return NULL;
}
#endif

#if defined(BENCH_X86)
__attribute__((target("avx512f"))) static void *peak_worker512(void *arg) {
    __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(1e-8f);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    __m512 a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0;
    for (long i = 0; i < PEAK_ITERS; i++) {
        a0 = _mm512_fmadd_ps(x, y, a0), a1 = _mm512_fmadd_ps(x, y, a1);
        a2 = _mm512_fmadd_ps(x, y, a2), a3 = _mm512_fmadd_ps(x, y, a3);
        a4 = _mm512_fmadd_ps(x, y, a4), a5 = _mm512_fmadd_ps(x, y, a5);
        a6 = _mm512_fmadd_ps(x, y, a6), a7 = _mm512_fmadd_ps(x, y, a7);
        a8 = _mm512_fmadd_ps(x, y, a8), a9 = _mm512_fmadd_ps(x, y, a9);
        a10 = _mm512_fmadd_ps(x, y, a10), a11 = _mm512_fmadd_ps(x, y, a11);
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5));
        __asm__ volatile("" : "+v"(a6), "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    *(volatile float *)arg = _mm512_reduce_add_ps(s);
    return NULL;
}
#endif

/* GFLOP/s of `threads` threads each running the FMA loop of `width` lanes
 * (8: AVX2, 16: AVX-512); 0 when the CPU lacks the instructions. */
static double fma_peak(int threads, int width) {
#if defined(BENCH_X86)
    __builtin_cpu_init();
    void *(*fn)(void *) = width == 16 ? peak_worker512 : peak_worker;
    if (width == 16 && !__builtin_cpu_supports("avx512f")) return 0.0;
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0.0;
    pthread_t th[64];
    float sink[64];
    double t0 = bench_now();
    for (int i = 1; i < threads; i++) pthread_create(&th[i], NULL, fn, &sink[i]);
    fn(&sink[0]);
    for (int i = 1; i < threads; i++) pthread_join(th[i], NULL);
    double dt = bench_now() - t0;
    return (double)threads * PEAK_ITERS * 12 * width * 2 / dt * 1e-9;
#else
    (void)threads, (void)width;
    return 0.0;
#endif
}

/* ------------------------------------------------------------------------ */
/* Measurements                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    int M, K, N;
    bool ta, tb;
    const char *tcase;
} shape;

typedef struct {
    double best, median; /* GFLOP/s: from the fastest and the median repetition */
} gstat;

enum { IMPL_TNN, IMPL_SCALAR, IMPL_BF16 };

static int g_reps = 7;
static int g_passes = 2;
#define MAX_SAMPLES 128 /* repetitions x passes */
/* The bf16 weights (B rounded) that IMPL_BF16 multiplies, same layout as B. */
static const uint16_t *g_bf16_b;

static int run_once(int impl, const shape *s, const float *A, const float *B, float *C) {
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    if (impl == IMPL_BF16)
        return tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, s->ta, s->tb, s->M, s->N, s->K, A, lda,
                              g_bf16_b, ldb, C, s->N);
    return tnn__gemm_f32(s->ta, s->tb, s->M, s->N, s->K, A, lda, B, ldb, C, s->N);
}

/* The scalar twin (a few repetitions: it is slow). */
static gstat measure(int impl, int threads, const shape *s, const float *A, const float *B,
                    float *C) {
    gstat st = {0, 0};
    tnn_set_num_threads(threads);
    tnn__gemm_set_kernel(impl == IMPL_SCALAR ? TNN_GEMM_SCALAR : TNN_GEMM_AUTO);
    double flops = 2.0 * s->M * (double)s->N * s->K;
    int reps = g_reps;
    if (impl == IMPL_SCALAR && reps > 3) reps = 3;
    double t[64];
    if (run_once(impl, s, A, B, C)) { /* warm-up: buffers, pages, threads */
        fprintf(stderr, "gemm failed: %s\n", tnn_last_error());
        return st;
    }
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now();
        run_once(impl, s, A, B, C);
        t[r] = bench_now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], bench_cmp_double);
    st.best = flops / t[0] * 1e-9;
    st.median = flops / t[reps / 2] * 1e-9;
    tnn__gemm_set_kernel(TNN_GEMM_AUTO);
    return st;
}

static float *alloc_fill(size_t n, unsigned seed) {
    float *p = aligned_alloc(64, (n * sizeof(float) + 63) & ~(size_t)63);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (float)((int)(x >> 9) - (1 << 22)) / (float)(1 << 22);
    }
    return p;
}

/* max |x - y| / (1 + |y|) */
static double max_rel_diff(const float *x, const float *y, size_t n) {
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)x[i] - (double)y[i]) / (1.0 + fabs((double)y[i]));
        if (d > w || isnan(d)) w = d;
    }
    return w;
}

/* ------------------------------------------------------------------------ */
/* OpenBLAS, found at run time, measured in a child process                 */
/* ------------------------------------------------------------------------ */

/* Each OpenBLAS measurement runs in a forked child: after a call its worker
 * threads keep spinning on sched_yield for a long while, and in this process
 * they would steal the cores from the tinynn measurements that follow. */

typedef void (*sgemm_fn)(int order, int ta, int tb, int M, int N, int K, float alpha,
                         const float *A, int lda, const float *B, int ldb, float beta, float *C,
                         int ldc);
typedef void (*set_threads_fn)(int);

static bool blas_present;
static char blas_config[256];

static bool blas_load(sgemm_fn *sgemm, set_threads_fn *set_threads, char *cfg, size_t n) {
    void *h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libopenblas.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) return false;
    *sgemm = (sgemm_fn)dlsym(h, "cblas_sgemm");
    *set_threads = (set_threads_fn)dlsym(h, "openblas_set_num_threads");
    char *(*get_config)(void) = (char *(*)(void))dlsym(h, "openblas_get_config");
    if (cfg && n) snprintf(cfg, n, "%s", get_config ? get_config() : "(config unknown)");
    return *sgemm != NULL;
}

static bool read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    while (n > 0) {
        ssize_t got = read(fd, p, n);
        if (got <= 0) return false;
        p += got;
        n -= (size_t)got;
    }
    return true;
}

typedef struct {
    int ok;
    double seconds; /* one call, after a warm-up call */
    double diff;    /* max relative difference to tinynn's C */
} blas_result;

/* Runs `child` in a forked process and reads its blas_result. */
static blas_result in_child(void (*child)(int fd, const void *arg), const void *arg) {
    blas_result r = {0};
    int fd[2];
    if (pipe(fd)) return r;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        child(fd[1], arg);
        _exit(0);
    }
    close(fd[1]);
    if (pid < 0 || !read_all(fd[0], &r, sizeof r)) r.ok = 0;
    close(fd[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    return r;
}

static void probe_child(int fd, const void *arg) {
    (void)arg;
    sgemm_fn sg;
    set_threads_fn st;
    char cfg[256] = "";
    blas_result r = {.ok = blas_load(&sg, &st, cfg, sizeof cfg)};
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
    if (write(fd, cfg, sizeof cfg) != (ssize_t)sizeof cfg) _exit(1);
}

static void blas_probe(void) {
    int fd[2];
    blas_present = false;
    if (pipe(fd)) return;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        probe_child(fd[1], NULL);
        _exit(0);
    }
    close(fd[1]);
    blas_result r;
    if (pid > 0 && read_all(fd[0], &r, sizeof r) && r.ok &&
        read_all(fd[0], blas_config, sizeof blas_config))
        blas_present = true;
    blas_config[sizeof blas_config - 1] = 0;
    close(fd[0]);
    if (pid > 0) waitpid(pid, NULL, 0);
    if (blas_present) printf("openblas: %s (measured in a child process)\n", blas_config);
    else printf("openblas: skipped (not installed)\n");
}

typedef struct {
    int threads;
    const shape *s;
    const float *A, *B, *C_tnn;
    float *C;
} blas_job;

/* In the child: a warm-up call, then one timed call. */
static void measure_child(int fd, const void *arg) {
    const blas_job *j = arg;
    const shape *s = j->s;
    blas_result r = {0};
    sgemm_fn sgemm;
    set_threads_fn set_threads;
    if (blas_load(&sgemm, &set_threads, NULL, 0)) {
        if (set_threads) set_threads(j->threads);
        int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
        for (int rep = 0; rep < 2; rep++) {
            double t0 = bench_now();
            sgemm(101 /* row major */, s->ta ? 112 : 111, s->tb ? 112 : 111, s->M, s->N, s->K,
                  1.0f, j->A, lda, j->B, ldb, 0.0f, j->C, s->N);
            r.seconds = bench_now() - t0;
        }
        r.diff = max_rel_diff(j->C_tnn, j->C, (size_t)s->M * s->N);
        r.ok = 1;
    }
    if (write(fd, &r, sizeof r) != (ssize_t)sizeof r) _exit(1);
}

static gstat stats(double *t, int n, double flops) {
    qsort(t, (size_t)n, sizeof t[0], bench_cmp_double);
    return (gstat){flops / t[0] * 1e-9, flops / t[n / 2] * 1e-9};
}

/* tinynn and OpenBLAS repetitions taken in turn, so that both see the same
 * moments of a shared, noisy machine (the 2-thread figures above all: the
 * host does not always run both virtual CPUs at once). */
static void measure_pair(int impl, int threads, const shape *s, const float *A, const float *B,
                         float *C, float *C2, double *tt, double *tb, bool *has_blas,
                         double *diff) {
    tnn_set_num_threads(threads);
    tnn__gemm_set_kernel(TNN_GEMM_AUTO);
    *has_blas = blas_present;
    if (run_once(impl, s, A, B, C)) { /* warm-up: buffers, pages, threads */
        fprintf(stderr, "gemm failed: %s\n", tnn_last_error());
        *has_blas = false;
        for (int r = 0; r < g_reps; r++) tt[r] = tb[r] = INFINITY; /* 0 GFLOP/s */
        return;
    }
    for (int r = 0; r < g_reps; r++) {
        /* Like the OpenBLAS child: a warm-up call, then the timed one. An
         * idle virtual CPU here can take ~2 ms to wake (the pool's workers
         * sleep between calls), which a model running GEMMs back to back
         * does not pay; the warm-up keeps that out of the figure. */
        run_once(impl, s, A, B, C);
        double t0 = bench_now();
        run_once(impl, s, A, B, C);
        tt[r] = bench_now() - t0;
        if (*has_blas) {
            blas_job job = {.threads = threads, .s = s, .A = A, .B = B, .C_tnn = C, .C = C2};
            blas_result br = in_child(measure_child, &job);
            if (!br.ok) *has_blas = false;
            tb[r] = br.seconds;
            *diff = br.diff;
        }
    }
}

/* ------------------------------------------------------------------------ */

typedef struct {
    shape s;
    int threads;
    gstat tnn, scalar, blas;
    bool has_scalar, has_blas;
    double t_tnn[MAX_SAMPLES], t_blas[MAX_SAMPLES]; /* seconds, all passes */
    int n_samples;
    double diff;  /* against OpenBLAS */
    double other; /* cores busy with other work meanwhile (-1: unknown) */
    bool scalar_same; /* scalar twin bit-identical to the fast kernel */
    /* bf16 rows: the path, and the error against tinynn's f32 product on the
     * unrounded weights (max |diff| / max |C_f32|, relative RMS); for the
     * widening path also the dot path's (its scalar twin on a block) */
    const char *bf16_path;
    double err_max, err_rms, dot_err_max, dot_err_rms;
    bool has_dot_err;
} row;

static void print_header(void) {
    printf("\n%-18s %-3s %3s | %-15s | %-15s | %-13s | %-11s | %-15s | %s\n", "M x K x N",
           "op", "thr", "tnn best/med", "openblas b/med", "tnn/oblas", "% peak", "scalar b/med",
           "other");
    printf("-------------------------------------------------------------------------------"
           "--------------------------------------\n");
}

static void print_row(const row *r, double peak) {
    char sh[32], blas[32] = "-", ratio[32] = "-", pk[32] = "-", sc[32] = "-";
    snprintf(sh, sizeof sh, "%dx%dx%d", r->s.M, r->s.K, r->s.N);
    if (r->has_blas) {
        snprintf(blas, sizeof blas, "%6.1f /%6.1f", r->blas.best, r->blas.median);
        snprintf(ratio, sizeof ratio, "%5.2f /%5.2f", r->tnn.best / r->blas.best,
                 r->tnn.median / r->blas.median);
    }
    if (peak > 0) snprintf(pk, sizeof pk, "%4.0f%% /%3.0f%%", 100 * r->tnn.best / peak,
                           r->has_blas ? 100 * r->blas.best / peak : 0.0);
    if (r->has_scalar) snprintf(sc, sizeof sc, "%6.2f /%6.2f", r->scalar.best, r->scalar.median);
    printf("%-18s %-3s %3d | %6.1f /%6.1f | %-15s | %-13s | %-11s | %-15s | %5.2f\n", sh,
           r->s.tcase, r->threads, r->tnn.best, r->tnn.median, blas, ratio, pk, sc, r->other);
    fflush(stdout);
}

static void write_json(const char *path, const row *rows, int n, const double *peak,
                       int max_threads, const char *kernel) {
    FILE *f = bench_json_open(path, "gemm_f32");
    if (!f) return;
    fprintf(f, "  \"kernel\": \"%s\",\n  \"reps\": %d,\n  \"passes\": %d,\n", kernel, g_reps,
            g_passes);
    fprintf(f, "  \"openblas\": %s%s%s,\n", blas_present ? "\"" : "",
            blas_present ? blas_config : "null", blas_present ? "\"" : "");
    fprintf(f, "  \"fma_peak_gflops\": {");
    for (int t2 = 1; t2 <= max_threads; t2++)
        fprintf(f, "%s\"%d\": %.1f", t2 > 1 ? ", " : "", t2, peak[t2]);
    fprintf(f, "},\n  \"unit\": \"GFLOP/s; best = fastest repetition, median = median one\",\n");
    fprintf(f, "  \"results\": [\n");
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        fprintf(f, "    {\"M\": %d, \"K\": %d, \"N\": %d, \"op\": \"%s\", \"threads\": %d, "
                   "\"tnn\": {\"best\": %.2f, \"median\": %.2f}",
                r->s.M, r->s.K, r->s.N, r->s.tcase, r->threads, r->tnn.best, r->tnn.median);
        if (r->has_blas)
            fprintf(f, ", \"openblas\": {\"best\": %.2f, \"median\": %.2f}, \"ratio_best\": %.3f, "
                       "\"ratio_median\": %.3f, \"max_rel_diff\": %.3g",
                    r->blas.best, r->blas.median, r->tnn.best / r->blas.best,
                    r->tnn.median / r->blas.median, r->diff);
        if (r->has_scalar)
            fprintf(f, ", \"scalar\": {\"best\": %.3f, \"median\": %.3f, \"bit_identical\": %s}",
                    r->scalar.best, r->scalar.median, r->scalar_same ? "true" : "false");
        if (r->bf16_path) {
            fprintf(f, ", \"dtype\": \"bf16\", \"path\": \"%s\", \"err_max_rel\": %.3g, "
                       "\"err_rms_rel\": %.3g",
                    r->bf16_path, r->err_max, r->err_rms);
            if (r->has_dot_err)
                fprintf(f, ", \"dot_twin_err_max_rel\": %.3g, \"dot_twin_err_rms_rel\": %.3g",
                        r->dot_err_max, r->dot_err_rms);
        }
        if (peak[r->threads] > 0)
            fprintf(f, ", \"tnn_pct_peak\": %.1f", 100 * r->tnn.best / peak[r->threads]);
        fprintf(f, ", \"other_load_cores\": %.2f", r->other);
        fprintf(f, "}%s\n", i + 1 < n ? "," : "");
    }
    bench_json_close(f, path);
}

/* ------------------------------------------------------------------------ */
/* bf16 products                                                           */
/* ------------------------------------------------------------------------ */

/* max |x - y| / max |y| and sqrt(sum (x - y)^2 / sum y^2) over an m x n
 * block (row strides ldx, ldy). */
static void block_err(const float *x, int64_t ldx, const float *y, int64_t ldy, int m, int n,
                      double *emax, double *erms) {
    double dmax = 0, ymax = 0, d2 = 0, y2 = 0;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double a = x[i * ldx + j], b = y[i * ldy + j], d = fabs(a - b);
            if (d > dmax || isnan(d)) dmax = d;
            if (fabs(b) > ymax) ymax = fabs(b);
            d2 += d * d, y2 += b * b;
        }
    *emax = ymax > 0 ? dmax / ymax : dmax;
    *erms = y2 > 0 ? sqrt(d2 / y2) : sqrt(d2);
}

static void print_bf16_header(void) {
    printf("\n%-18s %-3s %3s | %-15s | %-15s | %-13s | %-19s | %-19s | %s\n", "M x K x N", "op",
           "thr", "bf16 best/med", "openblas b/med", "bf16/oblas", "err max / rms", "dot err max / rms",
           "other");
    printf("-------------------------------------------------------------------------------"
           "--------------------------------------------------\n");
}

static void print_bf16_row(const row *r) {
    char sh[32], blas[32] = "-", ratio[32] = "-", dot[32] = "-";
    snprintf(sh, sizeof sh, "%dx%dx%d", r->s.M, r->s.K, r->s.N);
    if (r->has_blas) {
        snprintf(blas, sizeof blas, "%6.1f /%6.1f", r->blas.best, r->blas.median);
        snprintf(ratio, sizeof ratio, "%5.2f /%5.2f", r->tnn.best / r->blas.best,
                 r->tnn.median / r->blas.median);
    }
    if (r->has_dot_err) snprintf(dot, sizeof dot, "%.2e / %.2e", r->dot_err_max, r->dot_err_rms);
    printf("%-18s %-3s %3d | %6.1f /%6.1f | %-15s | %-13s | %.2e / %.2e | %-19s | %5.2f\n", sh,
           r->s.tcase, r->threads, r->tnn.best, r->tnn.median, blas, ratio, r->err_max,
           r->err_rms, dot, r->other);
    fflush(stdout);
}

/* One bf16 row: B rounded to bf16 once (as a model stores its weights), the
 * bf16 product timed against OpenBLAS's sgemm on the f32 B, its error
 * against tinynn's f32 product on the f32 B; when this CPU takes the
 * widening path, the dot path's error too, from its scalar twin on the
 * first 64 rows and 768 columns (the twin is slow). */
static row bf16_row(int threads, const shape *s, bool twin) {
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    float *A = alloc_fill(na, 1), *B = alloc_fill(nb, 2), *C = alloc_fill(nc, 3);
    float *C2 = alloc_fill(nc, 4), *Cf = alloc_fill(nc, 5);
    uint16_t *Bh = bench_xalloc(nb * sizeof *Bh);
    for (size_t i = 0; i < nb; i++) Bh[i] = tnn__f32_to_bf16(B[i]);
    g_bf16_b = Bh;
    row r = {.s = *s, .threads = threads,
             .bf16_path = tnn__gemm_bf16_path_name(tnn__gemm_bf16_auto_path())};
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    tnn_set_num_threads(threads);
    if (tnn__gemm_f32(s->ta, s->tb, s->M, s->N, s->K, A, lda, B, ldb, Cf, s->N))
        fprintf(stderr, "gemm failed: %s\n", tnn_last_error());
    load_mark l0 = load_now();
    measure_pair(IMPL_BF16, threads, s, A, B, C, C2, r.t_tnn, r.t_blas, &r.has_blas, &r.diff);
    double flops = 2.0 * s->M * (double)s->N * s->K;
    r.n_samples = g_reps;
    r.tnn = stats(r.t_tnn, g_reps, flops);
    if (r.has_blas) r.blas = stats(r.t_blas, g_reps, flops);
    r.other = other_load(l0, load_now());
    block_err(C, s->N, Cf, s->N, s->M, s->N, &r.err_max, &r.err_rms);
    if (twin && tnn__gemm_bf16_auto_path() == TNN_GEMM_BF16_WIDEN) {
        int m = s->M < 64 ? s->M : 64, n = s->N < 768 ? s->N : 768;
        if (tnn__gemm_bf16(TNN_GEMM_BF16_DOT_SCALAR, s->ta, s->tb, m, n, s->K, A, lda, Bh, ldb,
                           C2, n) == TNN_OK) {
            block_err(C2, n, Cf, s->N, m, n, &r.dot_err_max, &r.dot_err_rms);
            r.has_dot_err = true;
        }
    }
    free(A), free(B), free(C), free(C2), free(Cf), free(Bh);
    g_bf16_b = NULL;
    return r;
}

int main(int argc, char **argv) {
    const char *out = TNN_BENCH_RESULTS "/gemm.json";
    bool quick = false, scalar = true, big = true, bf16 = true;
    int only_threads = 0; /* 0: 1 and 2 */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--passes") && i + 1 < argc) g_passes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--no-scalar")) scalar = false;
        else if (!strcmp(argv[i], "--no-big")) big = false;
        else if (!strcmp(argv[i], "--no-bf16")) bf16 = false;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) only_threads = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: %s [--reps N] [--passes N] [--quick] [--no-scalar] [--no-big] "
                    "[--no-bf16] [--threads 1|2] [--out FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    if (g_reps < 3) g_reps = 3;
    if (g_reps > 64) g_reps = 64;
    if (g_passes < 1) g_passes = 1;
    if (g_passes * g_reps > MAX_SAMPLES) g_passes = MAX_SAMPLES / g_reps;

    const char *kernel = tnn__gemm_kernel_name(tnn__gemm_get_kernel());
    printf("tinynn gemm bench: kernel %s, %d repetitions in each of %d passes (best and median "
           "of all)\n",
           kernel, g_reps, g_passes);
    blas_probe();

    const int max_threads = 2;
    double peak[3] = {0, 0, 0};
    /* The peak of the instruction set the selected kernel uses. */
    int width = tnn__gemm_get_kernel() >= TNN_GEMM_AVX512 ? 16 : 8;
    for (int t = 1; t <= max_threads; t++) {
        for (int r = 0; r < 5; r++) { /* best of five */
            double p = fma_peak(t, width);
            if (p > peak[t]) peak[t] = p;
        }
        printf("fma peak (%d-lane FMA loop), %d thread%s: %.1f GFLOP/s\n", width, t,
               t > 1 ? "s" : "", peak[t]);
    }

    static const int base[][3] = {
        {256, 256, 256}, {512, 512, 512}, {1024, 1024, 1024}, {512, 768, 768},
        {512, 768, 3072}, {512, 3072, 768}, {64, 576, 49152}, {2048, 2048, 2048},
    };
    int nbase = (int)(sizeof base / sizeof base[0]);
    static const struct { bool ta, tb; const char *name; } cases[] = {
        {false, false, "NN"}, {false, true, "NT"}, {true, false, "TN"}};

    static row rows[256];
    int nrows = 0;
    for (int pass = 0; pass < g_passes; pass++) {
        bool last = pass == g_passes - 1;
        if (!last) printf("\npass %d of %d over the f32 rows...\n", pass + 1, g_passes);
        int idx = 0;
        for (int t = 1; t <= max_threads; t++) {
            if (only_threads && t != only_threads) continue;
            if (last) print_header();
            for (int b = 0; b < nbase; b++) {
                bool is_big = base[b][0] == 2048;
                if (is_big && !big) continue;
                if (quick && b != 3 && b != 6) continue;
                for (int c = 0; c < 3; c++) {
                    if (is_big && c != 0) continue; /* 2048^3: NN only */
                    if (idx >= 256) continue;
                    shape s = {base[b][0], base[b][1], base[b][2], cases[c].ta, cases[c].tb,
                               cases[c].name};
                    size_t na = (size_t)s.M * s.K, nb = (size_t)s.K * s.N,
                           nc = (size_t)s.M * s.N;
                    float *A = alloc_fill(na, 1), *B = alloc_fill(nb, 2), *C = alloc_fill(nc, 3);
                    float *C2 = alloc_fill(nc, 4);
                    row *r = &rows[idx++];
                    if (pass == 0) *r = (row){.s = s, .threads = t, .has_blas = true};
                    load_mark l0 = load_now();
                    bool has_blas;
                    measure_pair(IMPL_TNN, t, &s, A, B, C, C2, r->t_tnn + r->n_samples,
                                 r->t_blas + r->n_samples, &has_blas, &r->diff);
                    r->n_samples += g_reps;
                    r->has_blas = r->has_blas && has_blas;
                    /* The scalar twin on a subset (it is slow), in the first pass. */
                    if (pass == 0 && scalar && c == 0 &&
                        (s.M * (double)s.N * s.K <= 512.0 * 768 * 768)) {
                        r->scalar = measure(IMPL_SCALAR, t, &s, A, B, C2);
                        r->has_scalar = true;
                        r->scalar_same = memcmp(C, C2, nc * sizeof(float)) == 0;
                        if (!r->scalar_same)
                            printf("WARNING: the scalar twin and %s differ\n", kernel);
                    }
                    double other = other_load(l0, load_now());
                    if (pass == 0 || other > r->other) r->other = other;
                    if (last) {
                        double flops = 2.0 * s.M * (double)s.N * s.K;
                        r->tnn = stats(r->t_tnn, r->n_samples, flops);
                        if (r->has_blas) r->blas = stats(r->t_blas, r->n_samples, flops);
                        print_row(r, peak[t]);
                    }
                    free(A), free(B), free(C), free(C2);
                }
            }
        }
        nrows = idx;
    }
    printf("\n%% peak = best GFLOP/s / FMA-loop peak of the same thread count (tnn / openblas)\n"
           "other = cores kept busy by other processes (and steal) during the row: above ~0.2\n"
           "the row's figures, 2-thread ones above all, are disturbed\n");

    /* bf16 products at the transformer shapes, 2 threads (the target's
     * setting), unless --threads says otherwise; --quick: 512x768x768 only. */
    if (bf16) {
        int t = only_threads ? only_threads : 2;
        printf("\nbf16 products: A f32, B bf16 (rounded from the f32 B), f32 result; path %s on "
               "this CPU\n(AVX512_BF16 %s). OpenBLAS runs sgemm on the f32 B. err: against "
               "tinynn's f32 product\non the f32 B, max |diff| / max |C_f32| and relative RMS; dot "
               "err: the same for the\nvdpbf16ps path (A rounded to bf16 too), from its scalar "
               "twin on a 64x768 block\n",
               tnn__gemm_bf16_path_name(tnn__gemm_bf16_auto_path()),
               tnn__gemm_kernel_supported(TNN_GEMM_AVX512BF16) ? "present" : "absent");
        print_bf16_header();
        for (int b = 3; b <= 6; b++) { /* 512x768x768 ... 64x576x49152 */
            if (quick && b != 3) continue;
            for (int c = 0; c < 3; c++) {
                shape s = {base[b][0], base[b][1], base[b][2], cases[c].ta, cases[c].tb,
                           cases[c].name};
                row r = bf16_row(t, &s, !quick || c == 0);
                print_bf16_row(&r);
                if (nrows < 256) rows[nrows++] = r;
            }
        }
    }
    write_json(out, rows, nrows, peak, max_threads, kernel);
    return 0;
}
