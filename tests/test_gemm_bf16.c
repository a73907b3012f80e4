/* test_gemm_bf16.c - the bf16 products (tnn__gemm_bf16, src/cpu/gemm*.c):
 * the widening path bit-identical to the f32 GEMM on the widened weights
 * (every f32 kernel this CPU runs, all four transpose cases, odd shapes);
 * TNN_KERNEL's choice of path; the dot path's scalar twin equal to
 * its defining chain of VDPBF16PS steps, and the vdpbf16ps kernel equal to
 * the twin where the CPU has AVX512_BF16 (skipped, with a line, elsewhere);
 * 1, 2 and 3 threads bit-identical; the dot path's error against a double
 * reference measured and bounded. Then bf16 weights in the public
 * tnn_matmul_nn/nt/tn and tnn_matmul: results and the gradient of the
 * activations against the widened f32 weights, and the refusals.
 */
#define _POSIX_C_SOURCE 200809L /* setenv, fork */

#include "harness.h"

#include "cpu/gemm.h"
#include "ops/kernels.h"
#include "quant/quant.h"

#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

static float bf(uint16_t h) { return tnn__bf16_to_f32(h); }
static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}
static float fbits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void *xalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory in a test\n");
        exit(2);
    }
    return p;
}

static bool have_dot_avx512, have_amx;

/* ------------------------------------------------------------------------ */
/* Problems: op(A) (M x K, f32) @ op(B) (K x N, bf16), padded strides        */
/* ------------------------------------------------------------------------ */

typedef struct {
    int M, N, K;
    bool ta, tb;
    int64_t lda, ldb, ldc;
    float *A;
    uint16_t *B;
    float *Bw; /* B widened, same layout */
    float *C;
} problem;

#define SENTINEL 1234.5f

static float opa(const problem *p, int i, int k) {
    return p->ta ? p->A[(int64_t)k * p->lda + i] : p->A[(int64_t)i * p->lda + k];
}
static uint16_t opb(const problem *p, int k, int j) {
    return p->tb ? p->B[(int64_t)j * p->ldb + k] : p->B[(int64_t)k * p->ldb + j];
}
static size_t a_len(const problem *p) { return (size_t)((p->ta ? p->K : p->M) * p->lda); }
static size_t b_len(const problem *p) { return (size_t)((p->tb ? p->N : p->K) * p->ldb); }

/* Values: uniform in [-1, 1) (scale 1), or spread over tiny magnitudes
 * around 2^-63 with f32 and bf16 subnormals among them (scale 0), where the
 * dot path's DAZ and FTZ act. */
static float value(int scale) {
    if (scale) return (float)th_sym(1.0);
    double r = th_uniform();
    if (r < 0.1) return fbits((uint32_t)(th_uniform() * 0x7fffff) | (r < 0.05 ? 0x80000000u : 0));
    return (float)ldexp(th_sym(1.0), -56 - (int)(th_uniform() * 16));
}

static void problem_init(problem *p, int M, int N, int K, bool ta, bool tb, int scale) {
    *p = (problem){.M = M, .N = N, .K = K, .ta = ta, .tb = tb};
    p->lda = (ta ? M : K) + 3;
    p->ldb = (tb ? K : N) + 5;
    p->ldc = N + 2;
    size_t na = a_len(p), nb = b_len(p);
    p->A = xalloc(na * sizeof(float));
    p->B = xalloc(nb * sizeof(uint16_t));
    p->Bw = xalloc(nb * sizeof(float));
    p->C = xalloc((size_t)M * p->ldc * sizeof(float));
    for (size_t i = 0; i < na; i++) p->A[i] = value(scale);
    for (size_t i = 0; i < nb; i++) {
        float v = value(scale);
        /* some bf16 subnormals among the tiny weights */
        p->B[i] = scale == 0 && (i % 7) == 3 ? (uint16_t)(bits(v) >> 16 & 0x807f)
                                             : tnn__f32_to_bf16(v);
        p->Bw[i] = bf(p->B[i]);
    }
}

static void problem_free(problem *p) { free(p->A), free(p->B), free(p->Bw), free(p->C); }

static void fill_c(problem *p) {
    for (int64_t i = 0; i < (int64_t)p->M * p->ldc; i++) p->C[i] = SENTINEL;
}

static int run_bf16(problem *p, int path) {
    fill_c(p);
    return tnn__gemm_bf16(path, p->ta, p->tb, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, p->C,
                          p->ldc);
}

static int run_f32(problem *p) {
    fill_c(p);
    return tnn__gemm_f32(p->ta, p->tb, p->M, p->N, p->K, p->A, p->lda, p->Bw, p->ldb, p->C,
                         p->ldc);
}

/* C densely (M x N); false when the padding of C was written. */
static bool dense_c(const problem *p, float *out) {
    bool pad_ok = true;
    for (int i = 0; i < p->M; i++) {
        memcpy(out + (size_t)i * p->N, p->C + (int64_t)i * p->ldc, (size_t)p->N * sizeof(float));
        for (int64_t j = p->N; j < p->ldc; j++)
            if (p->C[(int64_t)i * p->ldc + j] != SENTINEL) pad_ok = false;
    }
    return pad_ok;
}

/* The dot path by its definition: per element, from +0, for each k pair in
 * ascending order the odd k's step, then the even k's (a missing odd k of
 * an odd K is a zero pair half). */
static void dot_reference(const problem *p, float *out) {
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->N; j++) {
            float acc = 0.0f;
            for (int k = 0; k < p->K; k += 2) {
                float ahi = 0.0f, bhi = 0.0f;
                if (k + 1 < p->K) {
                    ahi = bf(tnn__gemm_bf16_round(opa(p, i, k + 1)));
                    bhi = bf(opb(p, k + 1, j));
                }
                acc = tnn__gemm_dot_step(acc, ahi, bhi);
                acc = tnn__gemm_dot_step(acc, bf(tnn__gemm_bf16_round(opa(p, i, k))),
                                         bf(opb(p, k, j)));
            }
            out[(size_t)i * p->N + j] = acc;
        }
}

static int same_bits(const float *x, const float *y, size_t n) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (bits(x[i]) != bits(y[i]) && !(isnan(x[i]) && isnan(y[i]))) bad++;
    return bad;
}

/* ------------------------------------------------------------------------ */
/* Shapes                                                                   */
/* ------------------------------------------------------------------------ */

/* Every row count 1..17 against odd widths and depths that are not
 * multiples of 2 or 16, then shapes with several K blocks, edge tiles in
 * both directions, op(A) packed once, and the skinny path (1-8 rows). */
static const int nk[][2] = {{1, 1}, {3, 2}, {17, 3}, {33, 15}, {5, 17}, {65, 31},
                            {1, 33}, {19, 300}, {7, 77}};
#define N_NK ((int)(sizeof nk / sizeof nk[0]))
static const int big[][3] = {
    /* M, N, K */
    {33, 127, 513}, {150, 37, 1031}, {64, 130, 777}, {13, 1100, 390}, {145, 33, 1025},
    {100, 99, 1}, {40, 40, 2},
    /* 1-8 rows against N >= 16 (9-16 with B transposed): the widening skinny
     * kernels (B widened as read) */
    {1, 1536, 576}, {8, 200, 33}, {5, 70, 16}, {4, 130, 77}, {7, 100, 40}, {8, 70, 1200},
    {16, 70, 1200}, {11, 37, 301},
    /* C rows 1024 floats apart (ldc = N + 2): the skinny sums in a buffer */
    {7, 1022, 40},
};
#define N_BIG ((int)(sizeof big / sizeof big[0]))

static int n_shapes(void) { return 17 + N_BIG; }
static void shape_at(int s, int *M, int *N, int *K) {
    if (s < 17) {
        *M = s + 1, *N = nk[s % N_NK][0], *K = nk[(s * 5 + 2) % N_NK][1];
        if (s % 3 == 0) *K = 2 * *K + 1; /* deeper, still odd */
    } else {
        *M = big[s - 17][0], *N = big[s - 17][1], *K = big[s - 17][2];
    }
}

/* ------------------------------------------------------------------------ */
/* The widening path: tnn__gemm_f32 on the widened weights, bit for bit      */
/* ------------------------------------------------------------------------ */

static void test_widen_exact(void) {
    tnn_set_num_threads(2);
    for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++) {
        if (!tnn__gemm_kernel_supported(id)) continue;
        CHECK_OK(tnn__gemm_set_kernel(id));
        const char *kn = tnn__gemm_kernel_name(id);
        int bad_shapes = 0;
        for (int s = 0; s < n_shapes(); s++) {
            int M, N, K;
            shape_at(s, &M, &N, &K);
            for (int c = 0; c < 4; c++) {
                for (int scale = 0; scale <= 1; scale++) {
                    problem p;
                    problem_init(&p, M, N, K, c & 1, c & 2, scale);
                    size_t n = (size_t)M * N;
                    float *want = xalloc(n * sizeof(float)), *got = xalloc(n * sizeof(float));
                    CHECK_OK(run_f32(&p));
                    dense_c(&p, want);
                    CHECK_OK(run_bf16(&p, TNN_GEMM_BF16_WIDEN));
                    bool pad_ok = dense_c(&p, got);
                    int bad = same_bits(want, got, n);
                    if (bad || !pad_ok) {
                        bad_shapes++;
                        CHECK(false, "%s widen %dx%dx%d ta=%d tb=%d scale %d: %d values differ "
                              "from the f32 GEMM on widened B%s", kn, M, N, K, c & 1, c >> 1,
                              scale, bad, pad_ok ? "" : ", padding of C written");
                    }
                    free(want), free(got);
                    problem_free(&p);
                }
            }
        }
        CHECK(bad_shapes == 0, "%s: %d widen cases differ", kn, bad_shapes);
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
    CHECK_OK(tnn_set_num_threads(0));
}

/* ------------------------------------------------------------------------ */
/* The dot path                                                             */
/* ------------------------------------------------------------------------ */

/* The step itself, on the cases that decide its semantics. */
static void test_dot_step(void) {
    const float m = 0x1p-126f; /* smallest normal */
    struct {
        float acc, a, b, want;
        const char *what;
    } cases[] = {
        {1.0f, 3.0f, 0.5f, 2.5f, "plain"},
        {m, fbits(0x00400000u), 1.0f, m, "subnormal bf16 factor is zero (DAZ)"},
        {m, fbits(0x80400000u), 1.0f, m, "negative subnormal factor is zero"},
        {fbits(0x00400000u), 0x1p-63f, 0x1p-63f, m, "subnormal accumulator is zero (DAZ)"},
        {0.0f, 0x1p-75f, 0x1p-75f, 0.0f, "subnormal result flushed (FTZ)"},
        {0.0f, -0x1p-75f, 0x1p-75f, -0.0f, "flushed result keeps its sign"},
        {m, -0x1p-75f, 0x1p-75f, 0.0f, "2^-126 - 2^-150 is tiny after rounding: zero"},
        {-m, 0x1p-75f, 0x1p-75f, -0.0f, "the same, negative"},
        {m, -0x1p-76f, 0x1p-75f, m, "2^-126 - 2^-151 rounds to 2^-126: kept"},
        {m, -0x1p-76f, 0x1p-76f, m, "2^-126 - 2^-152: kept"},
        {m, 0x1p-75f, 0x1p-75f, m, "2^-126 + 2^-150 rounds to 2^-126"},
        {2 * m, -0x1p-64f, 0x1p-62f, m, "exact 2^-126"},
        {1.0f, 0x1p-12f, 0x1p-12f, 1.0f, "1 + 2^-24 ties to even"},
        {0x1p127f, 0x1p127f, 0x1p1f, INFINITY, "overflow"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        float r = tnn__gemm_dot_step(cases[i].acc, cases[i].a, cases[i].b);
        CHECK(bits(r) == bits(cases[i].want), "dot step, %s: got %a (0x%08x), want %a",
              cases[i].what, r, bits(r), cases[i].want);
    }
    CHECK(isnan(tnn__gemm_dot_step(1.0f, INFINITY, 0.0f)), "inf * 0 is NaN");

    /* The activation rounding: VCVTNEPS2BF16's rules */
    struct {
        uint32_t f;
        uint16_t h;
    } rc[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, /* tie to even */
        {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81}, {0x00000001u, 0x0000},
        {0x80000001u, 0x8000}, {0x007fffffu, 0x0000}, /* subnormal: zero, not 2^-126 */
        {0x00800000u, 0x0080}, {0x7f7fffffu, 0x7f80}, /* rounds to inf */
        {0xff800000u, 0xff80}, {0x7f800001u, 0x7fc0}, /* quiet NaN */
        {0xffc12345u, 0xffc1},
    };
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++)
        CHECK(tnn__gemm_bf16_round(fbits(rc[i].f)) == rc[i].h, "round(0x%08x) = 0x%04x, want 0x%04x",
              rc[i].f, tnn__gemm_bf16_round(fbits(rc[i].f)), rc[i].h);
    /* Normal values round as the library's conversion does */
    int bad = 0;
    for (int i = 0; i < 100000; i++) {
        uint32_t u = (uint32_t)(th_uniform() * 4294967296.0);
        if ((u & 0x7f800000u) == 0 || (u & 0x7f800000u) == 0x7f800000u) continue;
        bad += tnn__gemm_bf16_round(fbits(u)) != tnn__f32_to_bf16(fbits(u));
    }
    CHECK(bad == 0, "%d normal values round differently from tnn__f32_to_bf16", bad);
}

/* A product whose value depends on the step order and one that depends on
 * when tininess is detected, through every dot path this CPU runs. */
static void test_dot_order(void) {
    static const int paths[] = {TNN_GEMM_BF16_DOT_SCALAR, TNN_GEMM_BF16_DOT_AVX512};
    for (int pi = 0; pi < 2; pi++) {
        if (paths[pi] == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) continue;
        const char *pn = tnn__gemm_bf16_path_name(paths[pi]);
        /* pair 0 leaves acc = 1.5 * 2^-25; pair 1 adds a[3]b[3] = 1 first,
         * then a[2]b[2] = -1: (acc + 1) - 1 = 0, where the even-first order
         * would give (acc - 1) + 1 = 2^-24. */
        float a[4] = {0.0f, 0x1.8p-25f, 1.0f, 1.0f};
        uint16_t b[4] = {0x0000, 0x3f80, 0xbf80, 0x3f80};
        float c = -7.0f;
        CHECK_OK(tnn__gemm_bf16(paths[pi], false, false, 1, 1, 4, a, 4, b, 1, &c, 1));
        CHECK(bits(c) == 0, "%s: the odd k of a pair goes first: got %a, want 0", pn, c);
        /* pair 0: acc = 2^-63 * 2^-63 = 2^-126; pair 1: - 2^-75 * 2^-75 gives
         * 2^-126 - 2^-150, tiny after rounding: +0 */
        float a2[4] = {0.0f, 0x1p-63f, 0.0f, -0x1p-75f};
        uint16_t b2[4] = {0x0000, tnn__f32_to_bf16(0x1p-63f), 0x0000, tnn__f32_to_bf16(0x1p-75f)};
        CHECK_OK(tnn__gemm_bf16(paths[pi], false, false, 1, 1, 4, a2, 4, b2, 1, &c, 1));
        CHECK(bits(c) == 0, "%s: tininess after rounding: got %a, want +0", pn, c);
    }
}

/* Twin = definition, exactly; the vdpbf16ps kernel = twin, exactly. The
 * twin's error against a double reference of the product it rounds
 * (A f32, B the bf16 weights) is bounded and reported. */
static double worst_dot_err, worst_dot_err_deep, worst_dot_rms;

/* A product on the AMX path leaves the calling thread's tile state as it
 * found it: released, or the thread's own configuration back. */
static void test_amx_tile_state(void) {
    float a[40 * 64], c[40 * 48];
    uint16_t b[48 * 64];
    for (int i = 0; i < 40 * 64; i++) a[i] = (float)th_sym(1.0);
    for (int i = 0; i < 48 * 64; i++) b[i] = tnn__gemm_bf16_round((float)th_sym(1.0));
    int rows0 = -1;
    tnn__gemm_amx_set_own(0);
    CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AMX, false, true, 40, 48, 64, a, 64, b, 64, c, 48));
    CHECK(tnn__gemm_amx_palette(&rows0) == 0, "the tiles stay configured after a product");
    tnn__gemm_amx_set_own(7);
    CHECK(tnn__gemm_amx_palette(&rows0) == 1 && rows0 == 7, "own configuration: palette, rows %d",
          rows0);
    CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AMX, false, true, 40, 48, 64, a, 64, b, 64, c, 48));
    CHECK(tnn__gemm_amx_palette(&rows0) == 1 && rows0 == 7,
          "the thread's own configuration is not back after a product (rows %d)", rows0);
    tnn__gemm_amx_set_own(0);
}

/* The activations' rounding on every path, exactly: against B = the
 * identity each C value is one product by 1 (plus zeros), so C holds A
 * rounded to bf16 (subnormals flushed). Rows long enough for the packs'
 * whole chunks (the AMX pack's vector rounding) and a partial last one;
 * values at ties, just off them, subnormal (a zero of either sign after
 * the sum with +0) and huge. (No infinity: inf * 0 would make the row NaN.) */
static void test_activation_rounding(void) {
    enum { M = 35, K = 83 };
    static float a[M * K], c[M * K];
    static uint16_t b[K * K];
    for (int i = 0; i < M * K; i++) {
        uint32_t u = (uint32_t)(th_uniform() * 4294967296.0);
        switch (i % 6) {
        case 0: u = (u & 0x807f0000u) | 0x3f000000u | 0x8000u; break; /* a tie */
        case 1: u = (u & 0x807fffffu) | 0x3f800000u; break;           /* in [1, 2) */
        case 2: u &= 0x807fffffu; break;                              /* subnormal */
        case 3: u = (u & 0x80ffffffu) | 0x7e000000u; break;           /* huge */
        case 4: u = (u & 0x8000ffffu) | 0x7f000000u; break;           /* huge, finite */
        default: u = (u & 0x807fffffu) | 0x40000000u; break;
        }
        memcpy(a + i, &u, 4);
    }
    for (int k = 0; k < K; k++)
        for (int j = 0; j < K; j++) b[k * K + j] = k == j ? 0x3f80 : 0;
    static const int paths[] = {TNN_GEMM_BF16_DOT_SCALAR, TNN_GEMM_BF16_DOT_AVX512,
                                TNN_GEMM_BF16_AMX};
    for (int pi = 0; pi < 3; pi++) {
        if ((paths[pi] == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) ||
            (paths[pi] == TNN_GEMM_BF16_AMX && !have_amx))
            continue;
        CHECK_OK(tnn__gemm_bf16(paths[pi], false, false, M, K, K, a, K, b, K, c, K));
        int bad = 0;
        for (int i = 0; i < M * K; i++) {
            float want = bf(tnn__gemm_bf16_round(a[i]));
            bad += bits(c[i]) != bits(want) && !(want == 0.0f && c[i] == 0.0f);
        }
        CHECK(bad == 0, "%s: %d of %d products by the identity are not A rounded to bf16",
              tnn__gemm_bf16_path_name(paths[pi]), bad, M * K);
    }
}

static void test_dot_paths(void) {
    tnn_set_num_threads(2);
    int cases = 0, twin_bad = 0, simd_bad = 0, bound_bad = 0, amx_bad = 0, amx_pad = 0;
    for (int s = 0; s < n_shapes(); s++) {
        int M, N, K;
        shape_at(s, &M, &N, &K);
        for (int c = 0; c < 4; c++) {
            for (int scale = 0; scale <= 1; scale++) {
                /* the scalar chains are slow: big shapes take one scale per case */
                if (s >= 17 && scale != (c & 1)) continue;
                problem p;
                problem_init(&p, M, N, K, c & 1, c & 2, scale);
                size_t n = (size_t)M * N;
                float *want = xalloc(n * sizeof(float)), *twin = xalloc(n * sizeof(float));
                float *simd = xalloc(n * sizeof(float)), *amx = xalloc(n * sizeof(float));
                dot_reference(&p, want);
                CHECK_OK(run_bf16(&p, TNN_GEMM_BF16_DOT_SCALAR));
                bool pad_ok = dense_c(&p, twin);
                int bad = same_bits(want, twin, n);
                if (bad || !pad_ok) {
                    twin_bad++;
                    CHECK(false, "dot-scalar %dx%dx%d ta=%d tb=%d scale %d: %d values differ "
                          "from the chain of steps%s", M, N, K, c & 1, c >> 1, scale, bad,
                          pad_ok ? "" : ", padding of C written");
                }
                if (have_dot_avx512) {
                    CHECK_OK(run_bf16(&p, TNN_GEMM_BF16_DOT_AVX512));
                    pad_ok = dense_c(&p, simd);
                    bad = same_bits(twin, simd, n);
                    if (bad || !pad_ok) {
                        simd_bad++;
                        CHECK(false, "dot-avx512 %dx%dx%d ta=%d tb=%d scale %d: %d values "
                              "differ from the scalar twin%s", M, N, K, c & 1, c >> 1, scale,
                              bad, pad_ok ? "" : ", padding of C written");
                    }
                }
                if (have_amx) {
                    CHECK_OK(run_bf16(&p, TNN_GEMM_BF16_AMX));
                    if (!dense_c(&p, amx)) amx_pad++;
                }
                /* Error: rounding A to bf16 costs at most 2^-8 relative per
                 * product, the f32 chain at most ~K 2^-24 of sum |ab|; the
                 * AMX tiles' sums, in their own order, are held to the same
                 * bound. */
                if (scale == 1) {
                    double num = 0, den = 0;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double r = 0, sa = 0;
                            for (int k = 0; k < K; k++) {
                                double t = (double)opa(&p, i, k) * bf(opb(&p, k, j));
                                r += t, sa += fabs(t);
                            }
                            double e = fabs(twin[(size_t)i * N + j] - r);
                            double bound = (0x1p-8 + 2.0 * K * 0x1p-24) * 1.01 * sa + 1e-30;
                            if (!(e <= bound)) bound_bad++;
                            if (have_amx && !(fabs(amx[(size_t)i * N + j] - r) <= bound))
                                amx_bad++;
                            if (sa > 0 && e / sa > worst_dot_err) worst_dot_err = e / sa;
                            if (sa > 0 && K >= 300 && e / sa > worst_dot_err_deep)
                                worst_dot_err_deep = e / sa;
                            num += e * e, den += r * r;
                        }
                    if (den > 0 && K >= 300 && sqrt(num / den) > worst_dot_rms)
                        worst_dot_rms = sqrt(num / den);
                }
                cases++;
                free(want), free(twin), free(simd), free(amx);
                problem_free(&p);
            }
        }
    }
    CHECK(twin_bad == 0 && simd_bad == 0, "dot paths: %d twin, %d simd cases of %d differ",
          twin_bad, simd_bad, cases);
    CHECK(bound_bad == 0, "dot path: %d values beyond (2^-8 + 2K 2^-24) sum|ab|", bound_bad);
    CHECK(amx_bad == 0 && amx_pad == 0,
          "amx path: %d values beyond (2^-8 + 2K 2^-24) sum|ab|, %d cases wrote C's padding",
          amx_bad, amx_pad);
    if (!have_amx)
        printf("test_gemm_bf16: the AMX path: skipped, this CPU does not report AMX-BF16 (or the "
               "OS does not grant it)\n");
    else
        test_amx_tile_state();
    /* A single product can lose 2^-8 of itself; over hundreds of terms of
     * either sign the rounding errors cancel far below that. */
    CHECK(worst_dot_err_deep < 0x1p-10, "dot path: worst error %.3g of sum|ab| for K >= 300",
          worst_dot_err_deep);
    printf("test_gemm_bf16: dot path (A rounded to bf16) vs a double reference, uniform data: "
           "worst |error| %.2e of sum|a*b| (any K; bound 2^-8 = %.2e), %.2e for K >= 300, "
           "relative RMS %.2e\n",
           worst_dot_err, 0x1p-8, worst_dot_err_deep, worst_dot_rms);
    if (!have_dot_avx512)
        printf("test_gemm_bf16: dot-avx512 (vdpbf16ps) against its scalar twin: skipped, this "
               "CPU does not report AVX512_BF16\n");
    CHECK_OK(tnn_set_num_threads(0));
}

/* B^T given by rows on demand (tnn__gemm_bf16_rows) gives the bits of B^T
 * in memory on every path and thread count: shapes with several K blocks
 * (ranges that start inside a row), edge tiles, a few rows (which take the
 * packed path, not the skinny one); the callback sees only valid ranges. */
typedef struct {
    const problem *p;
    atomic_int bad;
} rows_src;

static void rows_of_b(void *ctx, int64_t j0, int64_t nc, int64_t k0, int64_t kc, uint16_t *dst) {
    rows_src *r = ctx;
    const problem *p = r->p;
    if (j0 < 0 || nc < 1 || j0 + nc > p->N || k0 < 0 || kc < 1 || k0 + kc > p->K)
        atomic_fetch_add(&r->bad, 1);
    for (int64_t j = 0; j < nc; j++)
        memcpy(dst + j * kc, p->B + (j0 + j) * p->ldb + k0, (size_t)kc * sizeof *dst);
}

static void test_rows_source(void) {
    static const int sh[][3] = {{30, 70, 1100}, {5, 300, 600}, {1, 40, 77}, {64, 33, 1031}};
    static const int paths[] = {TNN_GEMM_BF16_WIDEN, TNN_GEMM_BF16_DOT_SCALAR,
                                TNN_GEMM_BF16_DOT_AVX512, TNN_GEMM_BF16_AMX};
    for (int pi = 0; pi < 4; pi++) {
        if (paths[pi] == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) continue;
        if (paths[pi] == TNN_GEMM_BF16_AMX && !have_amx) continue;
        for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
            problem p;
            problem_init(&p, sh[s][0], sh[s][1], sh[s][2], false, true, 1);
            size_t n = (size_t)p.M * p.N;
            float *want = xalloc(n * sizeof(float)), *got = xalloc(n * sizeof(float));
            int bad = 0;
            /* a few rows on the AMX path: tnn__gemm_bf16 would take the
             * skinny kernels, so the reference is the tiles' product of A
             * padded to 32 rows (each row of C its own sums) */
            bool pad = paths[pi] == TNN_GEMM_BF16_AMX && p.M <= 16;
            for (int t = 1; t <= 2; t++) {
                CHECK_OK(tnn_set_num_threads(t));
                if (pad) {
                    float *a32 = xalloc((size_t)32 * p.lda * sizeof(float));
                    float *c32 = xalloc((size_t)32 * p.N * sizeof(float));
                    for (int64_t i = 0; i < 32 * p.lda; i++)
                        a32[i] = i < p.M * p.lda ? p.A[i] : 0.5f;
                    CHECK_OK(tnn__gemm_bf16(paths[pi], false, true, 32, p.N, p.K, a32, p.lda,
                                            p.B, p.ldb, c32, p.N));
                    memcpy(want, c32, n * sizeof(float));
                    free(a32);
                    free(c32);
                } else {
                    CHECK_OK(run_bf16(&p, paths[pi]));
                    dense_c(&p, want);
                }
                rows_src r = {.p = &p};
                atomic_init(&r.bad, 0);
                tnn_gemm_brows src = {.rows = rows_of_b, .ctx = &r};
                fill_c(&p);
                CHECK_OK(tnn__gemm_bf16_rows(paths[pi], p.M, p.N, p.K, p.A, p.lda, &src, p.C,
                                             p.ldc));
                bad += !dense_c(&p, got) || atomic_load(&r.bad) ||
                       same_bits(want, got, n) != 0;
            }
            CHECK(bad == 0, "%s %dx%dx%d: B^T by rows differs from B^T in memory",
                  tnn__gemm_bf16_path_name(paths[pi]), p.M, p.N, p.K);
            free(want);
            free(got);
            problem_free(&p);
        }
    }
    CHECK_ERR(tnn__gemm_bf16_rows(TNN_GEMM_BF16_WIDEN, 1, 1, 1, NULL, 1, NULL, NULL, 1),
              TNN_ERR_ARG, "NULL rows");
    CHECK_OK(tnn_set_num_threads(0));
}

/* NaN and Inf stay in their rows and columns on every path. */
static void test_nonfinite(void) {
    static const int paths[] = {TNN_GEMM_BF16_WIDEN, TNN_GEMM_BF16_DOT_SCALAR,
                                TNN_GEMM_BF16_DOT_AVX512, TNN_GEMM_BF16_AMX};
    for (int pi = 0; pi < 4; pi++) {
        if (paths[pi] == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) continue;
        if (paths[pi] == TNN_GEMM_BF16_AMX && !have_amx) continue;
        problem p;
        problem_init(&p, 9, 21, 17, false, false, 1);
        p.A[2 * p.lda + 3] = NAN;            /* row 2 of C */
        p.B[5 * p.ldb + 20] = 0x7f80;        /* +inf: column 20 of C (the edge tile) */
        CHECK_OK(run_bf16(&p, paths[pi]));
        int bad = 0;
        for (int i = 0; i < p.M; i++)
            for (int j = 0; j < p.N; j++) {
                bool want_finite = i != 2 && j != 20;
                if (want_finite != (bool)isfinite(p.C[(int64_t)i * p.ldc + j])) bad++;
            }
        CHECK(bad == 0, "%s: %d elements with the wrong finiteness",
              tnn__gemm_bf16_path_name(paths[pi]), bad);
        problem_free(&p);
    }
}

/* ------------------------------------------------------------------------ */
/* Threads: 1, 2 and 3 give the same bytes on every path                    */
/* ------------------------------------------------------------------------ */

static void test_threads(void) {
    static const int ts[][3] = {{200, 300, 600}, {600, 20, 301}, {37, 700, 1030},
                                {1, 3000, 300},  {8, 2000, 101}};
    static const int paths[] = {TNN_GEMM_BF16_WIDEN, TNN_GEMM_BF16_DOT_SCALAR,
                                TNN_GEMM_BF16_DOT_AVX512, TNN_GEMM_BF16_AMX};
    for (int pi = 0; pi < 4; pi++) {
        int path = paths[pi];
        if (path == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) continue;
        if (path == TNN_GEMM_BF16_AMX && !have_amx) continue;
        for (size_t s = 0; s < sizeof ts / sizeof ts[0]; s++) {
            /* the scalar twin is slow: one transpose case, the smaller shapes */
            if (path == TNN_GEMM_BF16_DOT_SCALAR && ts[s][0] * ts[s][1] * ts[s][2] > 4000000)
                continue;
            int ncase = path == TNN_GEMM_BF16_DOT_SCALAR ? 1 : 4;
            for (int c = 0; c < ncase; c++) {
                int cc = path == TNN_GEMM_BF16_DOT_SCALAR ? (int)s % 4 : c;
                problem p;
                problem_init(&p, ts[s][0], ts[s][1], ts[s][2], cc & 1, cc & 2, 1);
                size_t n = (size_t)p.M * p.N;
                float *one = xalloc(n * sizeof(float)), *other = xalloc(n * sizeof(float));
                CHECK_OK(tnn_set_num_threads(1));
                CHECK_OK(run_bf16(&p, path));
                dense_c(&p, one);
                for (int t = 2; t <= 3; t++) {
                    CHECK_OK(tnn_set_num_threads(t));
                    CHECK_OK(run_bf16(&p, path));
                    dense_c(&p, other);
                    CHECK(memcmp(one, other, n * sizeof(float)) == 0,
                          "%s %dx%dx%d ta=%d tb=%d: 1 and %d threads differ",
                          tnn__gemm_bf16_path_name(path), p.M, p.N, p.K, cc & 1, cc >> 1, t);
                }
                free(one), free(other);
                problem_free(&p);
            }
        }
    }
    CHECK_OK(tnn_set_num_threads(0));
}

/* ------------------------------------------------------------------------ */
/* Arguments and the path choice                                            */
/* ------------------------------------------------------------------------ */

static void test_args(void) {
    float a[6] = {1, 2, 3, 4, 5, 6}, c[4] = {9, 9, 9, 9};
    uint16_t b[6] = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0}; /* 1 .. 6 */
    CHECK_ERR(tnn__gemm_bf16(7, false, false, 2, 2, 3, a, 3, b, 2, c, 2), TNN_ERR_ARG,
              "bf16 path 7");
    CHECK_ERR(tnn__gemm_bf16(-2, false, false, 2, 2, 3, a, 3, b, 2, c, 2), TNN_ERR_ARG,
              "bf16 path -2");
    if (!have_dot_avx512)
        CHECK_ERR(tnn__gemm_bf16(TNN_GEMM_BF16_DOT_AVX512, false, false, 2, 2, 3, a, 3, b, 2, c,
                                 2),
                  TNN_ERR_ARG, "AVX512_BF16");
    if (!have_amx)
        CHECK_ERR(tnn__gemm_bf16(TNN_GEMM_BF16_AMX, false, false, 2, 2, 3, a, 3, b, 2, c, 2),
                  TNN_ERR_ARG, "AMX-BF16");
    CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, false, 0, 2, 3, a, 3, b, 2, c, 2));
    CHECK(c[0] == 9, "M = 0 wrote C");
    CHECK_OK(tnn__gemm_bf16(TNN_GEMM_BF16_AUTO, false, false, 2, 2, 0, a, 3, b, 2, c, 2));
    CHECK(c[0] == 0 && c[3] == 0, "K = 0 must give zeros");
    /* (2x3) @ (3x2): [1 2 3; 4 5 6] @ [1 2; 3 4; 5 6] = [22 28; 49 64] */
    for (int path = 0; path < TNN_GEMM_BF16_PATH_COUNT; path++) {
        if ((path == TNN_GEMM_BF16_DOT_AVX512 && !have_dot_avx512) ||
            (path == TNN_GEMM_BF16_AMX && !have_amx))
            continue; /* refused above */
        CHECK_OK(tnn__gemm_bf16(path, false, false, 2, 2, 3, a, 3, b, 2, c, 2));
        CHECK(c[0] == 22 && c[1] == 28 && c[2] == 49 && c[3] == 64, "%s: small product wrong",
              tnn__gemm_bf16_path_name(path));
    }
    /* AUTO follows the selected kernel */
    CHECK(tnn__gemm_bf16_auto_path() == (tnn__gemm_get_kernel() == TNN_GEMM_AMX ? TNN_GEMM_BF16_AMX
                                         : tnn__gemm_get_kernel() == TNN_GEMM_AVX512BF16
                                             ? TNN_GEMM_BF16_DOT_AVX512
                                             : TNN_GEMM_BF16_WIDEN),
          "auto path %d with kernel %s", tnn__gemm_bf16_auto_path(),
          tnn__gemm_kernel_name(tnn__gemm_get_kernel()));
    CHECK(have_amx == (tnn__gemm_get_kernel() == TNN_GEMM_AMX) &&
              (!have_amx && have_dot_avx512 && tnn__gemm_dot_preferred()) ==
                  (tnn__gemm_get_kernel() == TNN_GEMM_AVX512BF16),
          "the default kernel is amx where the CPU has it, else avx512bf16 where that is the "
          "faster bf16 path (AMD)");
    CHECK(strcmp(tnn__gemm_bf16_path_name(TNN_GEMM_BF16_WIDEN), "widen") == 0 &&
              strcmp(tnn__gemm_bf16_path_name(9), "?") == 0,
          "path names");
}

/* TNN_KERNEL picks the bf16 path too: read once, so in child processes. */
static void test_env(void) {
    static const char *values[] = {"scalar", "avx2", "avx512", "avx512bf16", "amx"};
    for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
        int id = (int)v; /* values are in id order */
        /* an id the CPU lacks falls back to the best one: AMX, else the dot
         * kernel where it is the faster bf16 path */
        int best = have_amx ? TNN_GEMM_AMX
                   : have_dot_avx512 && tnn__gemm_dot_preferred() ? TNN_GEMM_AVX512BF16
                                                                  : TNN_GEMM_AVX512;
        int k = tnn__gemm_kernel_supported(id) ? id : best;
        int want = k == TNN_GEMM_AMX          ? TNN_GEMM_BF16_AMX
                   : k == TNN_GEMM_AVX512BF16 ? TNN_GEMM_BF16_DOT_AVX512
                                              : TNN_GEMM_BF16_WIDEN;
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            setenv("TNN_KERNEL", values[v], 1);
            tnn_set_log_level(TNN_LOG_NONE);
            _exit(tnn__gemm_bf16_auto_path() == want ? 0 : 1);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/wait failed");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "TNN_KERNEL=%s: want bf16 path %s",
              values[v], tnn__gemm_bf16_path_name(want));
    }
}

/* ------------------------------------------------------------------------ */
/* The public products with bf16 weights                                    */
/* ------------------------------------------------------------------------ */

static tnn_tensor *input(tnn_session *s, int dtype, int nd, const int64_t *sh) {
    tnn_tensor *t = tnn_tensor_new(s, dtype, nd, sh);
    CHECK(t != NULL, "tensor: %s", tnn_last_error());
    return t;
}

static int64_t count(int nd, const int64_t *sh) {
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= sh[i];
    return n;
}

typedef tnn_tensor *(*mm_fn)(tnn_session *, tnn_tensor *, tnn_tensor *);

/* One product, its output and the gradient of x under a random linear
 * loss, with w given as bf16 (rounded from w0) or as f32 holding the same
 * (widened) values. out and gx get the results. */
static void run_graph(mm_fn f, bool seed_order, int wdtype, int xnd, const int64_t *xsh, int wnd,
                      const int64_t *wsh, const float *x0, const float *w0, const float *r0,
                      float *out, int64_t nout, float *gx) {
    tnn_session *s = tnn_session_new(0);
    tnn_tensor *x = input(s, TNN_F32, xnd, xsh), *w = input(s, wdtype, wnd, wsh);
    tnn_set_param(x);
    tnn_tensor *y = seed_order ? tnn_matmul(s, w, x) : f(s, x, w);
    CHECK(y != NULL && tnn_tensor_nelements(y) == nout, "product: %s", tnn_last_error());
    if (!y) {
        tnn_session_free(s);
        return;
    }
    int ynd = tnn_tensor_ndim(y);
    int64_t ysh[TNN_MAX_DIMS];
    for (int i = 0; i < ynd; i++) ysh[i] = tnn_tensor_dim(y, i);
    tnn_tensor *r = input(s, TNN_F32, ynd, ysh);
    tnn_tensor *loss = tnn_sum(s, tnn_mul(s, y, r));
    tnn_set_output(y);
    CHECK_OK(tnn_backward(s, loss));
    CHECK_OK(tnn_realize(s, loss));
    int64_t nx = count(xnd, xsh), nw = count(wnd, wsh);
    float *wv = xalloc((size_t)nw * sizeof(float));
    for (int64_t i = 0; i < nw; i++) wv[i] = bf(tnn__f32_to_bf16(w0[i]));
    CHECK_OK(tnn_upload_f32(s, x, x0, (size_t)nx));
    CHECK_OK(tnn_upload_f32(s, w, wdtype == TNN_BF16 ? w0 : wv, (size_t)nw));
    CHECK_OK(tnn_upload_f32(s, r, r0, (size_t)nout));
    CHECK_OK(tnn_compute(s));
    CHECK_OK(tnn_download_f32(s, y, out, (size_t)nout));
    CHECK_OK(tnn_download_f32(s, tnn_grad(s, x), gx, (size_t)nx));
    free(wv);
    tnn_session_free(s);
}

static void test_public(void) {
    bool exact = tnn__gemm_bf16_auto_path() == TNN_GEMM_BF16_WIDEN;
    struct {
        const char *name;
        mm_fn f;
        bool seed;
        int xnd, wnd;
        int64_t xsh[4], wsh[4];
    } cs[] = {
        {"nt", tnn_matmul_nt, false, 2, 2, {13, 37}, {19, 37}},
        {"nn", tnn_matmul_nn, false, 2, 2, {5, 33}, {33, 21}},
        {"tn", tnn_matmul_tn, false, 2, 2, {29, 7}, {29, 18}},
        {"tnn_matmul", NULL, true, 2, 2, {6, 40}, {17, 40}},
        {"nt batched, shared w", tnn_matmul_nt, false, 3, 2, {3, 9, 20}, {11, 20}},
        {"nn batched w", tnn_matmul_nn, false, 4, 3, {2, 3, 4, 10}, {3, 10, 7}},
        {"tn batched", tnn_matmul_tn, false, 3, 3, {2, 12, 5}, {2, 12, 9}},
        {"nt big", tnn_matmul_nt, false, 2, 2, {70, 300}, {130, 300}},
    };
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        int64_t nx = count(cs[ci].xnd, cs[ci].xsh), nw = count(cs[ci].wnd, cs[ci].wsh);
        /* output size: rows of op(x) times columns of op(w), times batch */
        tnn_session *probe = tnn_session_new(0);
        tnn_tensor *px = input(probe, TNN_F32, cs[ci].xnd, cs[ci].xsh);
        tnn_tensor *pw = input(probe, TNN_BF16, cs[ci].wnd, cs[ci].wsh);
        tnn_tensor *py = cs[ci].seed ? tnn_matmul(probe, pw, px) : cs[ci].f(probe, px, pw);
        CHECK(py != NULL, "%s: bf16 weights refused: %s", cs[ci].name, tnn_last_error());
        int64_t ny = py ? tnn_tensor_nelements(py) : 1;
        tnn_session_free(probe);
        float *x0 = xalloc((size_t)nx * sizeof(float)), *w0 = xalloc((size_t)nw * sizeof(float));
        float *r0 = xalloc((size_t)ny * sizeof(float));
        for (int64_t i = 0; i < nx; i++) x0[i] = (float)th_sym(1.0);
        for (int64_t i = 0; i < nw; i++) w0[i] = (float)th_sym(1.0);
        for (int64_t i = 0; i < ny; i++) r0[i] = (float)th_sym(1.0);
        float *y16 = xalloc((size_t)ny * sizeof(float)), *y32 = xalloc((size_t)ny * sizeof(float));
        float *g16 = xalloc((size_t)nx * sizeof(float)), *g32 = xalloc((size_t)nx * sizeof(float));
        run_graph(cs[ci].f, cs[ci].seed, TNN_BF16, cs[ci].xnd, cs[ci].xsh, cs[ci].wnd,
                  cs[ci].wsh, x0, w0, r0, y16, ny, g16);
        run_graph(cs[ci].f, cs[ci].seed, TNN_F32, cs[ci].xnd, cs[ci].xsh, cs[ci].wnd, cs[ci].wsh,
                  x0, w0, r0, y32, ny, g32);
        if (exact) {
            CHECK(same_bits(y16, y32, (size_t)ny) == 0,
                  "%s: bf16 weights differ from their widened f32 copy", cs[ci].name);
            CHECK(same_bits(g16, g32, (size_t)nx) == 0,
                  "%s: the gradient of x differs with bf16 weights", cs[ci].name);
        } else { /* the dot path: activations rounded to bf16 */
            double ey = 0, my = 0, eg = 0, mg = 0;
            for (int64_t i = 0; i < ny; i++)
                ey = fmax(ey, fabs(y16[i] - y32[i])), my = fmax(my, fabs(y32[i]));
            for (int64_t i = 0; i < nx; i++)
                eg = fmax(eg, fabs(g16[i] - g32[i])), mg = fmax(mg, fabs(g32[i]));
            CHECK(ey <= 0x1p-6 * my && eg <= 0x1p-6 * mg, "%s: dot path off by %g (y), %g (dx)",
                  cs[ci].name, ey / my, eg / mg);
        }
        free(x0), free(w0), free(r0), free(y16), free(y32), free(g16), free(g32);
    }
    if (!exact) printf("test_gemm_bf16: public products ran the dot path (compared to tolerance)\n");

    /* refusals */
    tnn_session *s = tnn_session_new(0);
    int64_t xs[2] = {4, 6}, ws[2] = {5, 6}, wk[2] = {5, 7};
    tnn_tensor *x = input(s, TNN_F32, 2, xs), *w = input(s, TNN_BF16, 2, ws);
    tnn_tensor *wbad = input(s, TNN_BF16, 2, wk), *h = input(s, TNN_F16, 2, ws);
    tnn_tensor *iw = input(s, TNN_I32, 2, ws), *x16 = input(s, TNN_BF16, 2, xs);
    CHECK_NULL(tnn_matmul_nt(s, w, x), TNN_ERR_ARG, "bf16");          /* bf16 as activations */
    CHECK(tnn_matmul_nt(s, x16, w) != NULL, "bf16 @ bf16 refused: %s", tnn_last_error());
    CHECK_NULL(tnn_matmul_nt(s, x16, x), TNN_ERR_ARG, "bf16");        /* bf16 @ f32 */
    CHECK_NULL(tnn_matmul_nt(s, x16, h), TNN_ERR_ARG, "bf16");        /* bf16 @ f16 */
    CHECK_NULL(tnn_matmul_nt(s, x, h), TNN_ERR_ARG, "f16");           /* f16 weights */
    CHECK_NULL(tnn_matmul_nt(s, x, iw), TNN_ERR_ARG, "i32");
    CHECK_NULL(tnn_matmul_nt(s, x, wbad), TNN_ERR_SHAPE, "inner dimensions");
    CHECK_NULL(tnn_matmul_nn(s, x, w), TNN_ERR_SHAPE, "inner dimensions");
    CHECK_NULL(tnn_matmul(s, x, w), TNN_ERR_ARG, "bf16"); /* seed order: b = x is the weights */
    CHECK_NULL(tnn_add(s, w, w), TNN_ERR_ARG, "bf16");
    CHECK_NULL(tnn_transpose(s, w), TNN_ERR_ARG, "bf16");
    tnn_clear_error();
    tnn_set_param(w);
    CHECK(tnn_last_status() == TNN_ERR_ARG, "tnn_set_param took a bf16 tensor");
    tnn_session_free(s);
}

/* Mixed precision with the activations rounded too: the gradients of
 * C = bf16(A) @ bf16(W)^T are the products of bf16(dC), on every kernel
 * (the dot path rounds an f32 operand itself, the widening path does not:
 * there the backward's own rounding of dC is what is checked). Each against
 * the same product built directly, bit for bit. */
static void test_mixed_gradients(void) {
    enum { M = 7, K = 45, N = 19 };
    float a[M * K], w[N * K], gc[M * N], da[M * K], dw[N * K], ra[M * K], rw[N * K];
    for (int i = 0; i < M * K; i++) a[i] = (float)th_sym(1.0);
    for (int i = 0; i < N * K; i++) w[i] = (float)th_sym(1.0);
    for (int i = 0; i < M * N; i++) gc[i] = (float)th_sym(1.0);
    int64_t sa[2] = {M, K}, sw[2] = {N, K}, sc[2] = {M, N};
    for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++) {
        if (!tnn__gemm_kernel_supported(id)) continue;
        CHECK_OK(tnn__gemm_set_kernel(id));
        tnn_session *s = tnn_session_new(0);
        tnn_tensor *ta = input(s, TNN_F32, 2, sa), *tw = input(s, TNN_F32, 2, sw);
        tnn_tensor *tg = input(s, TNN_F32, 2, sc);
        tnn_set_param(ta);
        tnn_set_param(tw);
        tnn_tensor *c = tnn_matmul_nt(s, tnn_to_bf16(s, ta), tnn_to_bf16(s, tw));
        tnn_tensor *loss = tnn_sum(s, tnn_mul(s, c, tg)); /* dC = gc */
        CHECK_OK(tnn_backward(s, loss));
        CHECK_OK(tnn_realize(s, loss));
        CHECK_OK(tnn_upload_f32(s, ta, a, M * K));
        CHECK_OK(tnn_upload_f32(s, tw, w, N * K));
        CHECK_OK(tnn_upload_f32(s, tg, gc, M * N));
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_f32(s, tnn_grad(s, ta), da, M * K));
        CHECK_OK(tnn_download_f32(s, tnn_grad(s, tw), dw, N * K));
        tnn_session_free(s);

        s = tnn_session_new(0);
        ta = input(s, TNN_F32, 2, sa), tw = input(s, TNN_F32, 2, sw), tg = input(s, TNN_F32, 2, sc);
        tnn_tensor *g16 = tnn_to_bf16(s, tg);
        tnn_tensor *xa = tnn_matmul_nn(s, g16, tnn_to_bf16(s, tw));
        tnn_tensor *xw = tnn_matmul_tn(s, g16, tnn_to_bf16(s, ta));
        tnn_set_output(xa);
        CHECK_OK(tnn_realize(s, xw));
        CHECK_OK(tnn_upload_f32(s, ta, a, M * K));
        CHECK_OK(tnn_upload_f32(s, tw, w, N * K));
        CHECK_OK(tnn_upload_f32(s, tg, gc, M * N));
        CHECK_OK(tnn_compute(s));
        CHECK_OK(tnn_download_f32(s, xa, ra, M * K));
        CHECK_OK(tnn_download_f32(s, xw, rw, N * K));
        tnn_session_free(s);
        CHECK(same_bits(da, ra, M * K) == 0 && same_bits(dw, rw, N * K) == 0,
              "%s: bf16 @ bf16 gradients are not the products of bf16(dC) (%d and %d differ)",
              tnn__gemm_kernel_name(id), same_bits(da, ra, M * K), same_bits(dw, rw, N * K));
    }
    CHECK_OK(tnn__gemm_set_kernel(TNN_GEMM_AUTO));
}

int main(void) {
    have_dot_avx512 = tnn__gemm_kernel_supported(TNN_GEMM_AVX512BF16);
    have_amx = tnn__gemm_kernel_supported(TNN_GEMM_AMX);
    test_env(); /* first: the children must not inherit a made selection */
    th_seed(11);
    printf("test_gemm_bf16: default kernel %s, bf16 path %s; AVX512_BF16 %s\n",
           tnn__gemm_kernel_name(tnn__gemm_get_kernel()),
           tnn__gemm_bf16_path_name(tnn__gemm_bf16_auto_path()),
           have_dot_avx512 ? "present" : "absent");
    test_args();
    test_dot_step();
    test_dot_order();
    test_widen_exact();
    test_dot_paths();
    test_activation_rounding();
    test_rows_source();
    test_nonfinite();
    test_threads();
    test_public();
    test_mixed_gradients();
    return th_finish("test_gemm_bf16");
}
