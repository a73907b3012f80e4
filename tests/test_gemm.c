/* test_gemm.c - the packed f32 GEMM (src/cpu/gemm*.c): every kernel this CPU
 * runs against a double reference on awkward shapes and all four (ta, tb)
 * cases; the SIMD kernels bit-identical to the scalar twin; bit-identical for
 * 1, 2 and 3 threads; C = A @ B bit-identical to (B^T @ A^T)^T computed with
 * the operand roles swapped; kernel selection (TNN_KERNEL, the setter).
 */
#define _POSIX_C_SOURCE 200809L /* setenv, fork */

#include "harness.h"

#include "cpu/gemm.h"
#include "ops/kernels.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define TG_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TG_ASAN 1
#endif
#endif

/* ------------------------------------------------------------------------ */
/* Problems: op(A) (M x K) @ op(B) (K x N), stored with padded strides       */
/* ------------------------------------------------------------------------ */

typedef struct {
    int M, N, K;
    bool ta, tb;
    int64_t lda, ldb, ldc;
    float *A, *B, *C; /* C has ldc > N: the padding must stay untouched */
    double *ref, *bound;
} problem;

#define SENTINEL 1234.5f

static float opa(const problem *p, int i, int k) {
    return p->ta ? p->A[(int64_t)k * p->lda + i] : p->A[(int64_t)i * p->lda + k];
}
static float opb(const problem *p, int k, int j) {
    return p->tb ? p->B[(int64_t)j * p->ldb + k] : p->B[(int64_t)k * p->ldb + j];
}

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory in a test\n");
        exit(2);
    }
    return p;
}

static void problem_init(problem *p, int M, int N, int K, bool ta, bool tb) {
    *p = (problem){.M = M, .N = N, .K = K, .ta = ta, .tb = tb};
    int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    p->lda = ac + 3;
    p->ldb = bc + 5;
    p->ldc = N + 2;
    size_t na = (size_t)(ar * p->lda), nb = (size_t)(br * p->ldb), nc = (size_t)(M * p->ldc);
    p->A = falloc(na);
    p->B = falloc(nb);
    p->C = falloc(nc);
    for (size_t i = 0; i < na; i++) p->A[i] = (float)th_sym(1.0);
    for (size_t i = 0; i < nb; i++) p->B[i] = (float)th_sym(1.0);
    /* The reference: exact products summed in double (error ~K * 2^-53,
     * negligible next to f32), and the bound on the f32 error. */
    p->ref = th_alloc((size_t)M * N);
    p->bound = th_alloc((size_t)M * N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0, sa = 0;
            for (int k = 0; k < K; k++) {
                double t = (double)opa(p, i, k) * (double)opb(p, k, j);
                s += t;
                sa += fabs(t);
            }
            p->ref[(size_t)i * N + j] = s;
            /* One fma chain of K steps: |error| <= gamma_K * sum|a*b| with
             * gamma_K = K u / (1 - K u), u = 2^-24; we allow twice K u. */
            p->bound[(size_t)i * N + j] = 2.0 * K * ldexp(1.0, -24) * sa + 1e-30;
        }
}

static void problem_free(problem *p) {
    free(p->A), free(p->B), free(p->C), free(p->ref), free(p->bound);
}

/* Runs the GEMM into p->C (padding set to SENTINEL first, C to garbage). */
static int run(problem *p) {
    for (int64_t i = 0; i < (int64_t)p->M * p->ldc; i++) p->C[i] = SENTINEL;
    return tnn__gemm_f32(p->ta, p->tb, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, p->C,
                         p->ldc);
}

/* C's values packed densely (M x N). */
static void dense_c(const problem *p, float *out) {
    for (int i = 0; i < p->M; i++)
        memcpy(out + (size_t)i * p->N, p->C + (int64_t)i * p->ldc, (size_t)p->N * sizeof(float));
}

/* Checks C against the reference and that the padding is untouched. */
static void check_ref(const problem *p, const char *kname) {
    int bad = 0, pad_bad = 0;
    double worst = 0;
    for (int i = 0; i < p->M; i++) {
        for (int j = 0; j < p->N; j++) {
            double c = p->C[(int64_t)i * p->ldc + j], r = p->ref[(size_t)i * p->N + j];
            double e = fabs(c - r) / p->bound[(size_t)i * p->N + j];
            if (!(e <= 1.0)) bad++;
            if (e > worst || isnan(e)) worst = e;
        }
        for (int64_t j = p->N; j < p->ldc; j++)
            if (p->C[(int64_t)i * p->ldc + j] != SENTINEL) pad_bad++;
    }
    CHECK(bad == 0, "%s %dx%dx%d ta=%d tb=%d: %d values outside 2*K*u*sum|ab| (worst %.3g)",
          kname, p->M, p->N, p->K, p->ta, p->tb, bad, worst);
    CHECK(pad_bad == 0, "%s %dx%dx%d ta=%d tb=%d: %d padding values of C written", kname, p->M,
          p->N, p->K, p->ta, p->tb, pad_bad);
}

/* ------------------------------------------------------------------------ */

static int kernels[TNN_GEMM_KERNEL_COUNT], n_kernels;

static const int shapes[][3] = {
    /* M, N, K */
    {1, 1, 1},     {1, 1, 7},     {3, 7, 1},    {7, 3, 33},    {33, 1, 127},  {1, 33, 513},
    {127, 7, 3},   {13, 127, 33}, {33, 33, 257}, {127, 127, 127}, {6, 16, 256}, {12, 32, 300},
    {145, 17, 513}, {7, 600, 40}, {513, 127, 7}, {150, 3100, 2}, {64, 70, 520}, {3, 1100, 13},
    /* skinny path (M <= 8, N >= 64): full 8x8 transposes, K and column tails */
    {1, 1536, 576}, {4, 130, 77},  {8, 200, 33}, {5, 70, 16},   {2, 64, 9},    {6, 95, 130},
    {8, 70, 1200}, /* 8 rows, B as rows: skinny_tb_m8, long rows (no prefetch), a column tail */
    {16, 70, 130}, {9, 40, 7}, /* 9-16 rows: skinny_tb_m16 when B is transposed */
    /* C rows 1024 and 2048 floats apart (ldc = N + 2): the skinny sums in a buffer */
    {6, 1022, 40},  {8, 2046, 19}, {2, 1022, 9},
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))

/* Every kernel against the reference; SIMD kernels bit-identical to scalar. */
static void test_kernels_vs_reference(void) {
    tnn_set_num_threads(2);
    for (int s = 0; s < N_SHAPES; s++) {
        for (int c = 0; c < 4; c++) {
            problem p;
            problem_init(&p, shapes[s][0], shapes[s][1], shapes[s][2], c & 1, c & 2);
            float *first = falloc((size_t)p.M * p.N), *got = falloc((size_t)p.M * p.N);
            for (int ki = 0; ki < n_kernels; ki++) {
                const char *kname = tnn__gemm_kernel_name(kernels[ki]);
                CHECK_OK(tnn__gemm_set_kernel(kernels[ki]));
                CHECK_OK(run(&p));
                check_ref(&p, kname);
                dense_c(&p, ki == 0 ? first : got);
                if (ki > 0)
                    CHECK(memcmp(first, got, (size_t)p.M * p.N * sizeof(float)) == 0,
                          "%s differs from %s at %dx%dx%d ta=%d tb=%d", kname,
                          tnn__gemm_kernel_name(kernels[0]), p.M, p.N, p.K, p.ta, p.tb);
            }
            free(first), free(got);
            problem_free(&p);
        }
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
}

/* Shapes that the pool really splits: over columns, and over rows. */
static const int thread_shapes[][3] = {{200, 300, 600}, {600, 20, 300}, {64, 1500, 70},
                                       {37, 700, 1030},  {1, 3000, 300}, {8, 2000, 100}};

static void test_threads_bit_identical(void) {
    for (int ki = 0; ki < n_kernels; ki++) {
        const char *kname = tnn__gemm_kernel_name(kernels[ki]);
        CHECK_OK(tnn__gemm_set_kernel(kernels[ki]));
        for (size_t s = 0; s < sizeof thread_shapes / sizeof thread_shapes[0]; s++) {
            /* The scalar twin is slow: one transpose case is enough for it. */
            int cases = kernels[ki] == TNN_GEMM_SCALAR ? 1 : 4;
            for (int c = 0; c < cases; c++) {
                problem p;
                problem_init(&p, thread_shapes[s][0], thread_shapes[s][1], thread_shapes[s][2],
                             c & 1, c & 2);
                size_t n = (size_t)p.M * p.N;
                float *one = falloc(n), *other = falloc(n);
                CHECK_OK(tnn_set_num_threads(1));
                CHECK_OK(run(&p));
                check_ref(&p, kname);
                dense_c(&p, one);
                for (int t = 2; t <= 3; t++) {
                    CHECK_OK(tnn_set_num_threads(t));
                    CHECK_OK(run(&p));
                    dense_c(&p, other);
                    CHECK(memcmp(one, other, n * sizeof(float)) == 0,
                          "%s %dx%dx%d ta=%d tb=%d: 1 and %d threads differ", kname, p.M, p.N,
                          p.K, p.ta, p.tb, t);
                }
                free(one), free(other);
                problem_free(&p);
            }
        }
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
    CHECK_OK(tnn_set_num_threads(0));
}

/* C = op(A) op(B) and C' = op(B)^T op(A)^T, computed with the operands'
 * roles swapped (flags !tb, !ta on the same stored arrays): C'[j][i] must
 * equal C[i][j] bit for bit, because each element is the same fma chain. */
static void test_operand_swap(void) {
    /* with M <= 8 one side runs the skinny path and the other the packed one */
    static const int sw[][3] = {{7, 33, 127}, {65, 129, 300}, {150, 40, 513}, {1, 300, 64},
                                {4, 1100, 77}, {8, 200, 33}};
    for (int ki = 0; ki < n_kernels; ki++) {
        const char *kname = tnn__gemm_kernel_name(kernels[ki]);
        CHECK_OK(tnn__gemm_set_kernel(kernels[ki]));
        for (size_t s = 0; s < sizeof sw / sizeof sw[0]; s++) {
            for (int c = 0; c < 4; c++) {
                problem p;
                problem_init(&p, sw[s][0], sw[s][1], sw[s][2], c & 1, c & 2);
                CHECK_OK(run(&p));
                float *ct = falloc((size_t)p.N * p.M);
                CHECK_OK(tnn__gemm_f32(!p.tb, !p.ta, p.N, p.M, p.K, p.B, p.ldb, p.A, p.lda, ct,
                                       p.M));
                int bad = 0;
                for (int i = 0; i < p.M; i++)
                    for (int j = 0; j < p.N; j++)
                        if (memcmp(&ct[(size_t)j * p.M + i], &p.C[(int64_t)i * p.ldc + j],
                                   sizeof(float)))
                            bad++;
                CHECK(bad == 0, "%s %dx%dx%d ta=%d tb=%d: %d elements of (B^T A^T)^T differ "
                      "from A B", kname, p.M, p.N, p.K, p.ta, p.tb, bad);
                free(ct);
                problem_free(&p);
            }
        }
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
}

/* The ascending fma chain, spelled out with fmaf: exactly what every kernel
 * must give, bit for bit (contract: one running sum per element from +0). */
static void test_exact_chain(void) {
    problem p;
    problem_init(&p, 13, 37, 700, false, true);
    for (int ki = 0; ki < n_kernels; ki++) {
        CHECK_OK(tnn__gemm_set_kernel(kernels[ki]));
        CHECK_OK(run(&p));
        int bad = 0;
        for (int i = 0; i < p.M; i++)
            for (int j = 0; j < p.N; j++) {
                float acc = 0.0f;
                for (int k = 0; k < p.K; k++) acc = fmaf(opa(&p, i, k), opb(&p, k, j), acc);
                if (memcmp(&acc, &p.C[(int64_t)i * p.ldc + j], sizeof acc)) bad++;
            }
        CHECK(bad == 0, "%s: %d elements differ from the fmaf chain",
              tnn__gemm_kernel_name(kernels[ki]), bad);
    }
    problem_free(&p);
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
}

/* NaN and Inf stay in their rows and columns: padding never leaks. */
static void test_nonfinite(void) {
    for (int ki = 0; ki < n_kernels; ki++) {
        CHECK_OK(tnn__gemm_set_kernel(kernels[ki]));
        problem p;
        problem_init(&p, 9, 21, 17, false, false);
        p.A[2 * p.lda + 3] = NAN;      /* row 2 of C */
        p.B[5 * p.ldb + 20] = INFINITY; /* column 20 of C (the edge tile) */
        CHECK_OK(run(&p));
        int bad = 0;
        for (int i = 0; i < p.M; i++)
            for (int j = 0; j < p.N; j++) {
                float v = p.C[(int64_t)i * p.ldc + j];
                bool want_finite = i != 2 && j != 20;
                if (want_finite != isfinite(v)) bad++;
            }
        CHECK(bad == 0, "%s: %d elements with the wrong finiteness",
              tnn__gemm_kernel_name(kernels[ki]), bad);
        problem_free(&p);
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
}

static void test_degenerate(void) {
    float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 2, 3, 4, 5, 6}, c[4] = {9, 9, 9, 9};
    CHECK_OK(tnn__gemm_f32(false, false, 0, 2, 3, a, 3, b, 2, c, 2));
    CHECK_OK(tnn__gemm_f32(false, false, 2, 0, 3, a, 3, b, 2, c, 2));
    CHECK(c[0] == 9 && c[3] == 9, "M or N = 0 wrote C");
    CHECK_OK(tnn__gemm_f32(false, false, 2, 2, 0, a, 3, b, 2, c, 2));
    CHECK(c[0] == 0 && c[1] == 0 && c[2] == 0 && c[3] == 0, "K = 0 must give zeros");
}

static void test_selection(void) {
    CHECK(tnn__gemm_kernel_supported(TNN_GEMM_SCALAR), "the scalar twin is always there");
    CHECK_ERR(tnn__gemm_set_kernel(7), TNN_ERR_ARG, "kernel id 7");
    CHECK_ERR(tnn__gemm_set_kernel(-2), TNN_ERR_ARG, "kernel id -2");
    for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++) {
        if (tnn__gemm_kernel_supported(id)) {
            CHECK_OK(tnn__gemm_set_kernel(id));
            CHECK(tnn__gemm_get_kernel() == id, "set %d, got %d", id, tnn__gemm_get_kernel());
        } else {
            int before = tnn__gemm_get_kernel();
            CHECK_ERR(tnn__gemm_set_kernel(id), TNN_ERR_ARG, "not supported");
            CHECK(tnn__gemm_get_kernel() == before, "a refused kernel changed the selection");
        }
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
    CHECK(strcmp(tnn__gemm_kernel_name(TNN_GEMM_AVX2), "avx2") == 0, "name of avx2");
}

/* TNN_KERNEL is read once, at the first GEMM: each value runs in a child
 * process that has not used the GEMM yet. */
static int warnings;
static void count_warn(int level, const char *msg, void *user) {
    (void)user;
    if (level == TNN_LOG_WARN && strstr(msg, "TNN_KERNEL")) warnings++;
}

/* The default: the highest kernel the CPU supports, avx512bf16 only where its
 * bf16 dot path is the faster one (AMD). */
static int best_supported(void) {
    for (int id = TNN_GEMM_KERNEL_COUNT - 1; id > 0; id--)
        if (tnn__gemm_kernel_supported(id) &&
            (id != TNN_GEMM_AVX512BF16 || tnn__gemm_dot_preferred()))
            return id;
    return TNN_GEMM_SCALAR;
}

static void test_env(void) {
    static const char *values[] = {"scalar", "avx2",  "avx512", "avx512bf16",
                                   "amx",    "sse9",  "",       "avxvnni"};
    int best = best_supported();
    for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
        int want = best;
        bool warn = false;
        if (!strcmp(values[v], "sse9")) warn = true;
        /* the quantized kernels' name: the GEMM's AVX2 kernel */
        if (!strcmp(values[v], "avxvnni")) {
            if (tnn__gemm_kernel_supported(TNN_GEMM_AVX2)) want = TNN_GEMM_AVX2;
            else warn = true;
        }
        for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++)
            if (!strcmp(values[v], tnn__gemm_kernel_name(id))) {
                if (tnn__gemm_kernel_supported(id)) want = id;
                else warn = true;
            }
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("TNN_KERNEL", values[v], 1);
            tnn_set_log_callback(count_warn, NULL);
            int got = tnn__gemm_get_kernel();
            float a = 2, b = 3, c = 0;
            int rc = tnn__gemm_f32(false, false, 1, 1, 1, &a, 1, &b, 1, &c, 1);
            bool ok = got == want && (warnings == 1) == warn && rc == TNN_OK && c == 6;
            _exit(ok ? 0 : 10 + got);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "TNN_KERNEL=%s: want kernel %d%s, child exited %d", values[v], want,
              warn ? " with a warning" : "", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

/* A failed allocation of the packing buffers is TNN_ERR_NOMEM, not a crash;
 * the next call (with memory back) works. In a child process whose address
 * space is capped just above what it uses (not under ASan, which reserves
 * terabytes of shadow). */
static void test_nomem(void) {
#if defined(TG_ASAN)
    printf("test_gemm: out-of-memory check skipped under AddressSanitizer\n");
#else
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        const int M = 64, N = 3000, K = 2000; /* buffers: ~0.5 MiB of A, 1 MiB of B */
        float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)K * N, sizeof(float));
        float *c = calloc((size_t)M * N, sizeof(float));
        long pages = 0, page = sysconf(_SC_PAGESIZE);
        FILE *f = fopen("/proc/self/statm", "r");
        if (!a || !b || !c || !f || fscanf(f, "%ld", &pages) != 1) _exit(20);
        fclose(f);
        struct rlimit old, lim;
        getrlimit(RLIMIT_AS, &old);
        lim = old;
        lim.rlim_cur = (rlim_t)(pages * page) + (256 << 10);
        tnn_set_log_level(TNN_LOG_NONE); /* "could only start 1 of 2 threads" is expected */
        if (setrlimit(RLIMIT_AS, &lim)) _exit(21);
        tnn_clear_error();
        int rc = tnn__gemm_f32(false, false, M, N, K, a, K, b, N, c, N);
        bool failed_right = rc == TNN_ERR_NOMEM && strstr(tnn_last_error(), "out of memory");
        setrlimit(RLIMIT_AS, &old);
        rc = tnn__gemm_f32(false, false, M, N, K, a, K, b, N, c, N);
        _exit(failed_right ? (rc == TNN_OK ? 0 : 2) : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "allocation failure: child exited %d (1: no TNN_ERR_NOMEM, 2: no recovery)",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
#endif
}

int main(void) {
    /* First: the children must start from a process that has not made its
     * thread pool or packing buffers yet. */
    test_env();
    test_nomem();
    th_seed(7);
    for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++)
        if (tnn__gemm_kernel_supported(id)) kernels[n_kernels++] = id;
    printf("test_gemm: kernels on this CPU:");
    for (int i = 0; i < n_kernels; i++) printf(" %s", tnn__gemm_kernel_name(kernels[i]));
    printf(" (default %s)\n", tnn__gemm_kernel_name(tnn__gemm_get_kernel()));
    test_selection();
    test_degenerate();
    test_kernels_vs_reference();
    test_exact_chain();
    test_operand_swap();
    test_nonfinite();
    test_threads_bit_identical();
    return th_finish("test_gemm");
}
