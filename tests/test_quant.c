/* test_quant.c - the GGUF tensor types (src/quant/): f16/bf16 conversion
 * edges, hand-built blocks of known value, quantize/dequantize round trips,
 * the AVX2 and AVX-512 kernels against their scalar twin (bit for bit), thread-count
 * bit-identity, and golden data from the gguf Python package
 * (tests/data/quant_golden.bin, written by tools/quant_reference.py).
 */
#include "harness.h"
#include "quant/qdecode.h"
#include "quant/quant.h"

#include <float.h>

#ifndef TNN_DATA_DIR
#define TNN_DATA_DIR "tests/data"
#endif

static const int all_types[] = {TNN_QT_F32,    TNN_QT_F16,  TNN_QT_BF16, TNN_QT_Q8_0,
                                TNN_QT_Q4_0,   TNN_QT_Q4_1, TNN_QT_Q5_0, TNN_QT_Q5_1,
                                TNN_QT_IQ4_NL, TNN_QT_Q2_K, TNN_QT_Q3_K, TNN_QT_Q4_K,
                                TNN_QT_Q5_K,   TNN_QT_Q6_K, TNN_QT_IQ4_XS};
#define N_TYPES (int)(sizeof all_types / sizeof all_types[0])

static uint32_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float bitsf(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
/* Same bits, or both NaN. */
static int same(float a, float b) { return fbits(a) == fbits(b) || (isnan(a) && isnan(b)); }
static int64_t first_diff(const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!same(a[i], b[i]))
            return i;
    return -1;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory in a test\n");
        exit(2);
    }
    return p;
}

static uint32_t rnd32(void) { return (uint32_t)(th_uniform() * 4294967296.0); }
static float gauss(void) {
    double u = th_uniform() + 1e-12, v = th_uniform();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

/* Largest rounding error of v to f16 (normal or subnormal, no overflow). */
static double f16err(double v) { return fabs(v) * 0x1p-11 + 0x1p-25; }

static bool have_avx2(void) { return tnn__quant_kernel_supported(TNN_QK_AVX2); }

/* ------------------------------------------------------------------------ */
/* Type table                                                               */
/* ------------------------------------------------------------------------ */

static void test_table(void) {
    static const struct {
        int t, block, bytes;
        const char *name;
    } want[] = {
        {0, 1, 4, "F32"},       {1, 1, 2, "F16"},       {2, 32, 18, "Q4_0"}, {3, 32, 20, "Q4_1"},
        {6, 32, 22, "Q5_0"},    {7, 32, 24, "Q5_1"},    {8, 32, 34, "Q8_0"}, {12, 256, 144, "Q4_K"},
        {13, 256, 176, "Q5_K"}, {14, 256, 210, "Q6_K"}, {30, 1, 2, "BF16"},
        {10, 256, 84, "Q2_K"},  {11, 256, 110, "Q3_K"}, {20, 32, 18, "IQ4_NL"},
        {23, 256, 136, "IQ4_XS"},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const tnn_qtype_info *t = tnn__qtype(want[i].t);
        CHECK(t && t->block == want[i].block && t->block_bytes == want[i].bytes &&
                  strcmp(t->name, want[i].name) == 0,
              "type %d", want[i].t);
    }
    CHECK(tnn__qtype(4) == NULL && tnn__qtype(15) == NULL && tnn__qtype(16) == NULL &&
              tnn__qtype(-1) == NULL &&
              tnn__qtype(31) == NULL && tnn__qtype(1000) == NULL,
          "unsupported ids give NULL");
    CHECK(tnn__qtype_row_bytes(TNN_QT_Q4_0, 4096) == 4096 / 32 * 18, "row bytes");
    CHECK(tnn__qtype_row_bytes(TNN_QT_Q6_K, 512) == 420, "row bytes K");
    /* -1 with the error recorded */
    tnn_clear_error();
    CHECK(tnn__qtype_row_bytes(TNN_QT_Q4_0, 33) == -1 && tnn_last_status() == TNN_ERR_ARG &&
              strstr(tnn_last_error(), "multiple of 32"),
          "row of 33: %s", tnn_last_error());
    tnn_clear_error();
    CHECK(tnn__qtype_row_bytes(5, 32) == -1 && strstr(tnn_last_error(), "not a supported"),
          "type 5: %s", tnn_last_error());
    CHECK(tnn__qact_bytes(TNN_QT_Q8_0, 4096) > 4096 && tnn__qact_bytes(TNN_QT_F16, 7) == 0,
          "activation workspace sizes");
    float f[32] = {0};
    uint8_t buf[256];
    CHECK_ERR(tnn__quantize_row(TNN_QT_Q4_K, f, buf, 256), TNN_ERR_ARG, "not implemented");
    CHECK_ERR(tnn__quantize_row(TNN_QT_Q8_0, f, buf, 31), TNN_ERR_ARG, "multiple of 32");
    CHECK_ERR(tnn__dequantize_row(TNN_QT_Q6_K, buf, f, 32), TNN_ERR_ARG, "multiple of 256");
    CHECK_ERR(tnn__quant_matvec(TNN_QT_Q8_0, buf, -1, 32, f, f, NULL), TNN_ERR_ARG, "rows");
    CHECK_ERR(tnn__quant_matmul(TNN_QT_Q8_0, buf, 1, 32, f, -1, f, NULL), TNN_ERR_ARG,
              "rows of x");
    CHECK_ERR(tnn__quant_matmul(TNN_QT_Q8_0, buf, 1, 32, f, INT64_MAX / 64, f, NULL),
              TNN_ERR_RANGE, "overflows");
    CHECK_ERR(tnn__quant_matmul(TNN_QT_F16, buf, 1, 32, f, INT64_MAX / 8, f, NULL),
              TNN_ERR_RANGE, "overflows");
    CHECK_OK(tnn__quant_matmul(TNN_QT_Q8_0, buf, 1, 32, f, 0, f, NULL)); /* no rows: nothing */
    /* the several-row kernels: every quantized type from AVX2 up */
    for (int kid = 0; kid < TNN_QK_COUNT; kid++) {
        if (!tnn__quant_kernel_supported(kid))
            continue;
        CHECK_OK(tnn__quant_set_kernel(kid));
        bool v = kid >= TNN_QK_AVX2;
        static const int shared[] = {TNN_QT_Q8_0, TNN_QT_Q4_0, TNN_QT_Q4_1, TNN_QT_Q5_0,
                                     TNN_QT_Q5_1, TNN_QT_IQ4_NL, TNN_QT_Q2_K, TNN_QT_Q3_K,
                                     TNN_QT_Q4_K, TNN_QT_Q5_K, TNN_QT_Q6_K, TNN_QT_IQ4_XS};
        int agree = 0;
        for (size_t t = 0; t < sizeof shared / sizeof *shared; t++)
            agree += tnn__quant_rows_shared(shared[t]) == v;
        CHECK(agree == (int)(sizeof shared / sizeof *shared) &&
                  !tnn__quant_rows_shared(TNN_QT_F16) && !tnn__quant_rows_shared(5),
              "kernel %s: which types share rows", tnn__quant_kernel_name(kid));
    }
    CHECK_OK(tnn__quant_set_kernel(TNN_QK_AUTO));
    CHECK_ERR(tnn__quant_set_kernel(7), TNN_ERR_ARG, "quant kernel");
    CHECK(strcmp(tnn__quant_kernel_name(TNN_QK_SCALAR), "scalar") == 0, "names");
}

/* ------------------------------------------------------------------------ */
/* f16 / bf16 conversion                                                    */
/* ------------------------------------------------------------------------ */

static void test_f16(void) {
    /* every half survives f16 -> f32 -> f16; NaN stays NaN with its sign */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tnn__f16_to_f32((uint16_t)h);
        uint16_t back = tnn__f32_to_f16(f);
        bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (nan ? !(isnan(f) && (back & 0x7c00) == 0x7c00 && (back & 0x3ff) &&
                    (back & 0x8000) == (h & 0x8000))
                : back != h)
            bad++;
    }
    CHECK(bad == 0, "%d halves do not round-trip", bad);
    /* values */
    CHECK(tnn__f16_to_f32(0x0001) == ldexpf(1, -24), "smallest subnormal");
    CHECK(tnn__f16_to_f32(0x03ff) == ldexpf(1023, -24), "largest subnormal");
    CHECK(tnn__f16_to_f32(0x0400) == ldexpf(1, -14), "smallest normal");
    CHECK(tnn__f16_to_f32(0x7bff) == 65504.0f, "max");
    CHECK(tnn__f16_to_f32(0x7c00) == INFINITY && tnn__f16_to_f32(0xfc00) == -INFINITY, "inf");
    CHECK(fbits(tnn__f16_to_f32(0x8000)) == 0x80000000u, "-0");
    CHECK(isnan(tnn__f16_to_f32(0x7e00)) && isnan(tnn__f16_to_f32(0xfc01)), "NaN");
    CHECK(fbits(tnn__f16_to_f32(0x7e00)) == 0x7fc00000u, "quiet NaN bits");
    /* rounding: nearest, ties to even, overflow, underflow */
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-2.5f, 0xc100},
        {65504.0f, 0x7bff},
        {65519.996f, 0x7bff},
        {65520.0f, 0x7c00},
        {1e6f, 0x7c00},
        {-1e6f, 0xfc00},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
        {0x1.002p0f, 0x3c00},      /* 1 + 2^-11: tie -> even 1.0 */
        {0x1.006p0f, 0x3c02},      /* 1 + 3*2^-11: tie -> even */
        {0x1.002002p0f, 0x3c01},   /* just above the tie */
        {0x1p-24f, 0x0001},        /* 2^-24 */
        {0x1p-25f, 0x0000},        /* 2^-25: tie -> even zero */
        {0x1.000002p-25f, 0x0001}, /* just above */
        {0x1.8p-24f, 0x0002},      /* 1.5 * 2^-24: tie -> even 2 */
        {0x1.4p-23f, 0x0002},      /* 2.5 * 2^-24: tie -> even 2 */
        {0x1.ffcp-15f, 0x0400},    /* 1023.5 * 2^-24: tie -> 1024, smallest normal */
        {0x1.fd4p-15f, 0x03fa},    /* 1018.5 * 2^-24: tie -> even 1018 */
        {0x1.ff4p-15f, 0x03fe},    /* 1022.5 * 2^-24: tie -> even 1022 */
        {1e-8f, 0x0000},
        {-1e-8f, 0x8000},
        {1e-45f, 0x0000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(tnn__f32_to_f16(cases[i].f) == cases[i].h, "f16(%.9g) = 0x%04x, want 0x%04x",
              cases[i].f, tnn__f32_to_f16(cases[i].f), cases[i].h);
    uint16_t qn = tnn__f32_to_f16(bitsf(0x7fc00000u)), sn = tnn__f32_to_f16(bitsf(0xff800001u));
    CHECK(qn == 0x7e00 && (sn & 0xfe00) == 0xfe00, "NaN -> quiet NaN (0x%04x, 0x%04x)", qn, sn);
    /* random f32: the result is a nearest half, ties to even (checked in double) */
    th_seed(11);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float f = bitsf((rnd32() & 0x807fffffu) | ((uint32_t)(100 + rnd32() % 43) << 23));
        if (fabsf(f) >= 65520.0f)
            continue;
        uint16_t h = tnn__f32_to_f16(f);
        double v = tnn__f16_to_f32(h), e = fabs(v - f);
        double up = tnn__f16_to_f32((uint16_t)(h + 1)),
               dn = (h & 0x7fff) ? tnn__f16_to_f32((uint16_t)(h - 1)) : -v;
        double eu = fabs(up - f), ed = fabs(dn - f);
        if (e > eu || e > ed || ((e == eu || e == ed) && (h & 1) && e != 0))
            bad++;
    }
    CHECK(bad == 0, "%d random f32 not rounded to nearest even half", bad);
}

static void test_bf16(void) {
    static const struct {
        uint32_t f;
        uint16_t h;
    } cases[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, /* tie -> even */
        {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81}, {0x80000000u, 0x8000},
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds to inf */
        {0x7f800000u, 0x7f80}, {0xff800000u, 0xff80}, {0x00000001u, 0x0000},
        {0x00008000u, 0x0000}, {0x00018000u, 0x0002}, /* subnormal ties */
        {0x7fc00001u, 0x7fc0}, {0x7f800001u, 0x7fc0}, /* NaN quiet, payload cut */
        {0xffc12345u, 0xffc1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(tnn__f32_to_bf16(bitsf(cases[i].f)) == cases[i].h,
              "bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].f, tnn__f32_to_bf16(bitsf(cases[i].f)),
              cases[i].h);
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = tnn__bf16_to_f32((uint16_t)h);
        if (fbits(f) != h << 16)
            bad++;
        if (!isnan(f) && tnn__f32_to_bf16(f) != h)
            bad++;
    }
    CHECK(bad == 0, "%d bf16 patterns do not round-trip", bad);
}

/* ------------------------------------------------------------------------ */
/* Hand-built blocks (packed here from the layout in quant.h, codes chosen)  */
/* ------------------------------------------------------------------------ */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static void deq_both(int type, const void *src, float *dst, int64_t n, const char *what) {
    CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
    CHECK_OK(tnn__dequantize_row(type, src, dst, n));
    for (int kid = TNN_QK_SCALAR + 1; kid < TNN_QK_COUNT; kid++) {
        if (!tnn__quant_kernel_supported(kid))
            continue;
        float *v = xmalloc((size_t)n * sizeof(float));
        CHECK_OK(tnn__quant_set_kernel(kid));
        CHECK_OK(tnn__dequantize_row(type, src, v, n));
        int64_t k = first_diff(dst, v, n);
        CHECK(k < 0, "%s: %s dequantize differs at %lld", what, tnn__quant_kernel_name(kid),
              (long long)k);
        free(v);
    }
    tnn__quant_set_kernel(TNN_QK_AUTO);
}

static void test_known_blocks(void) {
    float y[512];
    /* Q8_0: d = 0.5 */
    {
        uint8_t b[34];
        put16(b, 0x3800);
        for (int i = 0; i < 32; i++)
            b[2 + i] = (uint8_t)(int8_t)(i * 8 - 128);
        deq_both(TNN_QT_Q8_0, b, y, 32, "Q8_0");
        int ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= y[i] == 0.5f * (float)(i * 8 - 128);
        CHECK(ok, "Q8_0 values");
    }
    /* Q4_0 / Q4_1 / Q5_0 / Q5_1 from chosen codes */
    int q[32];
    for (int i = 0; i < 32; i++)
        q[i] = (i * 7 + 3) % 32;
    {
        uint8_t b[18];
        put16(b, 0x4000); /* d = 2 */
        for (int i = 0; i < 16; i++)
            b[2 + i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
        deq_both(TNN_QT_Q4_0, b, y, 32, "Q4_0");
        int ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= y[i] == 2.0f * (float)((q[i] & 15) - 8);
        CHECK(ok, "Q4_0 values");
        uint8_t c[20];
        put16(c, 0x3400);     /* d = 0.25 */
        put16(c + 2, 0xbc00); /* m = -1 */
        memcpy(c + 4, b + 2, 16);
        deq_both(TNN_QT_Q4_1, c, y, 32, "Q4_1");
        ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= y[i] == 0.25f * (float)(q[i] & 15) - 1.0f;
        CHECK(ok, "Q4_1 values");
    }
    {
        uint8_t b[22], c[24];
        uint32_t qh = 0;
        for (int i = 0; i < 32; i++)
            qh |= (uint32_t)(q[i] >> 4) << i;
        put16(b, 0x3c00); /* d = 1 */
        for (int i = 0; i < 4; i++)
            b[2 + i] = c[4 + i] = (uint8_t)(qh >> (8 * i));
        for (int i = 0; i < 16; i++)
            b[6 + i] = c[8 + i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
        deq_both(TNN_QT_Q5_0, b, y, 32, "Q5_0");
        int ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= y[i] == (float)(q[i] - 16);
        CHECK(ok, "Q5_0 values");
        put16(c, 0x3800);     /* d = 0.5 */
        put16(c + 2, 0x4200); /* m = 3 */
        deq_both(TNN_QT_Q5_1, c, y, 32, "Q5_1");
        ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= y[i] == 0.5f * (float)q[i] + 3.0f;
        CHECK(ok, "Q5_1 values");
    }
    /* Q4_K / Q5_K: scales and mins with high bits set in sub-blocks 4..7 */
    {
        int sc[8] = {1, 63, 17, 40, 33, 62, 48, 5}, mn[8] = {0, 7, 63, 21, 50, 16, 3, 61};
        int c[256];
        for (int e = 0; e < 256; e++)
            c[e] = (e * 13 + 5) % 32;
        uint8_t s[12] = {0};
        for (int j = 0; j < 4; j++) {
            s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
            s[j + 4] = (uint8_t)(mn[j] | (mn[j + 4] >> 4) << 6);
            s[j + 8] = (uint8_t)((sc[j + 4] & 15) | (mn[j + 4] & 15) << 4);
        }
        uint8_t b4[144] = {0}, b5[176] = {0};
        put16(b4, 0x2c00);     /* d = 1/16 */
        put16(b4 + 2, 0x2400); /* dmin = 1/64 */
        memcpy(b5, b4, 4);
        memcpy(b4 + 4, s, 12);
        memcpy(b5 + 4, s, 12);
        for (int e = 0; e < 256; e++) {
            int j = e / 32, l = e % 32;
            b4[16 + 32 * (j / 2) + l] |= (uint8_t)((c[e] & 15) << (4 * (j & 1)));
            b5[48 + 32 * (j / 2) + l] |= (uint8_t)((c[e] & 15) << (4 * (j & 1)));
            b5[16 + l] |= (uint8_t)((c[e] >> 4) << j);
        }
        deq_both(TNN_QT_Q4_K, b4, y, 256, "Q4_K");
        int ok = 1;
        for (int e = 0; e < 256; e++) {
            int j = e / 32;
            ok &= y[e] == (0.0625f * (float)sc[j]) * (float)(c[e] & 15) - 0.015625f * (float)mn[j];
        }
        CHECK(ok, "Q4_K values");
        deq_both(TNN_QT_Q5_K, b5, y, 256, "Q5_K");
        ok = 1;
        for (int e = 0; e < 256; e++) {
            int j = e / 32;
            ok &= y[e] == (0.0625f * (float)sc[j]) * (float)c[e] - 0.015625f * (float)mn[j];
        }
        CHECK(ok, "Q5_K values");
    }
    /* Q6_K */
    {
        uint8_t b[210] = {0};
        int c[256];
        int8_t sc[16];
        for (int e = 0; e < 256; e++)
            c[e] = (e * 29 + 11) % 64;
        for (int g = 0; g < 16; g++)
            sc[g] = (int8_t)(g * 17 - 128);
        for (int e = 0; e < 256; e++) {
            int h = e / 128, i = e % 128;
            b[64 * h + i % 64] |= (uint8_t)((c[e] & 15) << (i < 64 ? 0 : 4));
            b[128 + 32 * h + i % 32] |= (uint8_t)((c[e] >> 4) << (2 * (i / 32)));
        }
        memcpy(b + 192, sc, 16);
        put16(b + 208, 0x3000); /* d = 1/8 */
        deq_both(TNN_QT_Q6_K, b, y, 256, "Q6_K");
        int ok = 1;
        for (int e = 0; e < 256; e++)
            ok &= y[e] == (0.125f * (float)sc[e / 16]) * (float)(c[e] - 32);
        CHECK(ok, "Q6_K values");
    }
}

/* ------------------------------------------------------------------------ */
/* Round trips                                                              */
/* ------------------------------------------------------------------------ */

static void test_round_trips(void) {
    static const int types[] = {TNN_QT_F32,  TNN_QT_F16,  TNN_QT_BF16, TNN_QT_Q8_0,
                                TNN_QT_Q4_0, TNN_QT_Q4_1, TNN_QT_Q5_0, TNN_QT_Q5_1};
    static const double scales[] = {1.0, 1e-3, 300.0};
    const int64_t n = 32 * 64;
    float *x = xmalloc(n * sizeof(float)), *y = xmalloc(n * sizeof(float));
    uint8_t *q = xmalloc((size_t)n * 4);
    th_seed(5);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        int type = types[t];
        for (size_t s = 0; s < 3; s++) {
            for (int64_t i = 0; i < n; i++)
                x[i] = (float)scales[s] * gauss();
            for (int i = 0; i < 32; i++)
                x[i] = 0.0f; /* one all-zero block */
            for (int i = 32; i < 64; i++)
                x[i] = 1.5f * (float)scales[s]; /* constant */
            CHECK_OK(tnn__quantize_row(type, x, q, n));
            CHECK_OK(tnn__dequantize_row(type, q, y, n));
            int bad = 0;
            double se = 0, sx = 0;
            for (int64_t b = 0; b < n / 32; b++) {
                const float *xb = x + 32 * b, *yb = y + 32 * b;
                float amax = 0, lo = xb[0], hi = xb[0];
                for (int i = 0; i < 32; i++) {
                    amax = fmaxf(amax, fabsf(xb[i]));
                    lo = fminf(lo, xb[i]);
                    hi = fmaxf(hi, xb[i]);
                }
                for (int i = 0; i < 32; i++) {
                    double e = fabs((double)yb[i] - xb[i]), bound;
                    double d8 = amax / 8.0, d16 = amax / 16.0, d127 = amax / 127.0;
                    double d15 = (hi - lo) / 15.0, d31 = (hi - lo) / 31.0;
                    switch (type) {
                    case TNN_QT_F32: bound = 0; break;
                    case TNN_QT_F16: bound = f16err(xb[i]); break;
                    case TNN_QT_BF16: bound = fabs(xb[i]) * 0x1p-8; break;
                    case TNN_QT_Q8_0: bound = d127 / 2 + 127 * f16err(d127); break;
                    case TNN_QT_Q4_0: bound = d8 + 8 * f16err(d8); break;
                    case TNN_QT_Q5_0: bound = d16 + 16 * f16err(d16); break;
                    case TNN_QT_Q4_1: bound = d15 / 2 + 15 * f16err(d15) + f16err(lo); break;
                    default: bound = d31 / 2 + 31 * f16err(d31) + f16err(lo); break; /* Q5_1 */
                    }
                    bound += 1e-6 * (amax + fabs(lo));
                    bound *= 1.0001;
                    if (!(e <= bound))
                        bad++;
                    se += e * e;
                    sx += (double)xb[i] * xb[i];
                }
            }
            double rel = sqrt(se / sx);
            double want = type == TNN_QT_Q8_0                          ? 0.01
                          : type == TNN_QT_Q4_0                        ? 0.15
                          : type == TNN_QT_Q4_1                        ? 0.12
                          : type >= TNN_QT_Q5_0 && type <= TNN_QT_Q5_1 ? 0.07
                                                                       : 0.005;
            CHECK(bad == 0 && rel < want, "%s scale %g: %d values past the bound, rms rel %.4f",
                  tnn__qtype(type)->name, scales[s], bad, rel);
            /* all-zero block decodes to zeros; the constant block is close */
            CHECK(y[0] == 0 && y[31] == 0, "%s zero block", tnn__qtype(type)->name);
        }
    }
    free(x);
    free(y);
    free(q);
}

/* ------------------------------------------------------------------------ */
/* Random valid rows, each kernel against scalar, and a double reference    */
/* ------------------------------------------------------------------------ */

/* Random bytes with each block's f16 fields set to finite scales. */
static void random_rows(int type, uint8_t *w, int64_t rows, int64_t n) {
    const tnn_qtype_info *t = tnn__qtype(type);
    int64_t bytes = tnn__qtype_row_bytes(type, n) * rows;
    for (int64_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)rnd32();
    if (type == TNN_QT_F32) {
        for (int64_t i = 0; i < rows * n; i++) {
            float f = gauss();
            memcpy(w + 4 * i, &f, 4);
        }
        return;
    }
    if (type == TNN_QT_F16 || type == TNN_QT_BF16) {
        for (int64_t i = 0; i < rows * n; i++) {
            float f = gauss() * 4.0f;
            put16(w + 2 * i, type == TNN_QT_F16 ? tnn__f32_to_f16(f) : tnn__f32_to_bf16(f));
        }
        return;
    }
    int offs[2] = {0, -1};
    if (type == TNN_QT_Q4_1 || type == TNN_QT_Q5_1 || type == TNN_QT_Q4_K || type == TNN_QT_Q5_K)
        offs[1] = 2;
    if (type == TNN_QT_Q6_K)
        offs[0] = 208;
    if (type == TNN_QT_Q3_K)
        offs[0] = 108;
    if (type == TNN_QT_Q2_K)
        offs[0] = 80, offs[1] = 82;
    for (int64_t b = 0; b < rows * n / t->block; b++)
        for (int k = 0; k < 2; k++)
            if (offs[k] >= 0)
                put16(w + b * t->block_bytes + offs[k],
                      tnn__f32_to_f16((float)(0.001 + 0.05 * th_uniform()) * (k ? -1.0f : 1.0f)));
}

/* Bound on |dot(w, x) - the kernel's result| from x's 8-bit quantization:
 * sum over blocks of amax(x)/254 * sum|w| (plus float slack). */
static double dot_bound(int type, const float *w, const float *x, int64_t n) {
    double s = 0, mag = 0;
    int bs = tnn__qtype(type)->block == 256 ? 256 : 32;
    bool flt = type == TNN_QT_F32 || type == TNN_QT_F16 || type == TNN_QT_BF16;
    for (int64_t b = 0; b < n; b += bs) {
        double amax = 0, sw = 0;
        int64_t e = b + bs < n ? b + bs : n;
        for (int64_t i = b; i < e; i++) {
            amax = fmax(amax, fabs(x[i]));
            sw += fabs(w[i]);
            mag += fabs((double)w[i] * x[i]);
        }
        if (!flt)
            s += amax / 254.0 * 1.0001 * sw;
    }
    return s + mag * 1e-5 + 1e-30;
}

static void check_type_kernels(int type, int64_t rows, int64_t n) {
    const char *name = tnn__qtype(type)->name;
    int64_t rb = tnn__qtype_row_bytes(type, n);
    uint8_t *w = xmalloc((size_t)(rb * rows)); /* exact: a read past the end is a fault */
    float *x = xmalloc((size_t)n * sizeof(float));
    float *wd = xmalloc((size_t)(rows * n) * sizeof(float));
    float *wd2 = xmalloc((size_t)(rows * n) * sizeof(float));
    float *ys = xmalloc((size_t)rows * sizeof(float)), *yv = xmalloc((size_t)rows * sizeof(float));
    float *yr = xmalloc((size_t)rows * sizeof(float));
    random_rows(type, w, rows, n);
    for (int64_t i = 0; i < n; i++)
        x[i] = gauss() * (i % 7 == 0 ? 3.0f : 1.0f);

    CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
    CHECK_OK(tnn__dequantize_row(type, w, wd, rows * n));
    CHECK_OK(tnn__quant_matvec(type, w, rows, n, x, ys, NULL));
    /* the scalar twin against a double reference on its own dequantization */
    double worst = 0;
    for (int64_t r = 0; r < rows; r++) {
        double ref = 0;
        for (int64_t i = 0; i < n; i++)
            ref += (double)wd[r * n + i] * x[i];
        double e = fabs(ys[r] - ref) / dot_bound(type, wd + r * n, x, n);
        if (!(e <= worst))
            worst = e;
    }
    CHECK(worst <= 1.0, "%s rows %lld n %lld: scalar dot %.3g of its bound", name, (long long)rows,
          (long long)n, worst);
    /* the bf16 rows (prompt panels): the dequantized values rounded */
    uint16_t *wh = xmalloc((size_t)(rows * n) * sizeof(uint16_t));
    CHECK_OK(tnn__dequantize_row_bf16(type, w, wh, rows * n));
    int64_t bad16 = 0;
    for (int64_t i = 0; i < rows * n; i++)
        bad16 += wh[i] != tnn__f32_to_bf16(wd[i]);
    CHECK(bad16 == 0, "%s rows %lld n %lld: %lld bf16 values are not the rounded dequantization",
          name, (long long)rows, (long long)n, (long long)bad16);
    free(wh);
    /* one-thread rows entry point equals the matvec */
    int64_t ab = tnn__qact_bytes(type, n);
    void *work = xmalloc((size_t)ab + 64);
    tnn_qact a;
    CHECK_OK(tnn__qact_prepare(&a, type, x, n, work));
    tnn__qdot_rows(&a, w, (size_t)rb, rows, yr);
    CHECK(first_diff(ys, yr, rows) < 0, "%s: qdot_rows != matvec", name);

    for (int kid = TNN_QK_SCALAR + 1; kid < TNN_QK_COUNT; kid++) {
        if (!tnn__quant_kernel_supported(kid))
            continue;
        const char *kn = tnn__quant_kernel_name(kid);
        CHECK_OK(tnn__quant_set_kernel(kid));
        CHECK_OK(tnn__dequantize_row(type, w, wd2, rows * n));
        int64_t k = first_diff(wd, wd2, rows * n);
        CHECK(k < 0, "%s rows %lld n %lld: %s dequantize differs at %lld", name, (long long)rows,
              (long long)n, kn, (long long)k);
        uint16_t *wk = xmalloc((size_t)(rows * n) * sizeof(uint16_t));
        CHECK_OK(tnn__dequantize_row_bf16(type, w, wk, rows * n));
        int64_t badk = 0;
        for (int64_t i = 0; i < rows * n; i++)
            badk += wk[i] != tnn__f32_to_bf16(wd[i]);
        CHECK(badk == 0, "%s rows %lld n %lld: %s: %lld bf16 values are not the rounded "
              "dequantization", name, (long long)rows, (long long)n, kn, (long long)badk);
        free(wk);
        CHECK_OK(tnn__quant_matvec(type, w, rows, n, x, yv, NULL));
        k = first_diff(ys, yv, rows);
        CHECK(k < 0, "%s rows %lld n %lld: %s dot row %lld: %.9g vs scalar %.9g", name,
              (long long)rows, (long long)n, kn, (long long)k, k >= 0 ? yv[k] : 0.0,
              k >= 0 ? ys[k] : 0.0);
        tnn__qdot_rows(&a, w, (size_t)rb, rows, yr);
        CHECK(first_diff(ys, yr, rows) < 0, "%s: %s qdot_rows != scalar", name, kn);
        /* several rows of x at once (1-9: every remainder of the kernels'
         * passes of 4 or 8 rows, one and two passes; 17: two passes of 8
         * and one row): each the one-row bits */
        for (int64_t nx = 1; nx <= 17; nx += nx < 9 ? 1 : 8) {
            float *xs = xmalloc((size_t)(nx * n) * sizeof(float));
            float *yn = xmalloc((size_t)(nx * rows) * sizeof(float));
            for (int64_t i = 0; i < nx * n; i++)
                xs[i] = gauss();
            memcpy(xs + (nx - 1) * n, x, (size_t)n * sizeof(float));
            CHECK_OK(tnn__quant_matmul(type, w, rows, n, xs, nx, yn, NULL));
            int64_t bad = 0;
            for (int64_t i = 0; i < nx; i++) {
                CHECK_OK(tnn__quant_matvec(type, w, rows, n, xs + i * n, yr, NULL));
                bad += first_diff(yr, yn + i * rows, rows) >= 0;
            }
            CHECK(bad == 0 && first_diff(ys, yn + (nx - 1) * rows, rows) < 0,
                  "%s rows %lld n %lld: %s, %lld rows of x at once: %lld differ from one at a time",
                  name, (long long)rows, (long long)n, kn, (long long)nx, (long long)bad);
            free(xs);
            free(yn);
        }
    }
    tnn__quant_set_kernel(TNN_QK_AUTO);
    free(work);
    free(w);
    free(x);
    free(wd);
    free(wd2);
    free(ys);
    free(yv);
    free(yr);
}

static void test_kernels(void) {
    th_seed(77);
    /* every remainder of a row's blocks mod 8 (the VNNI kernels' groups) */
    static const int64_t blocks32[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 14, 17, 18, 33, 64};
    static const int64_t blocksK[] = {1, 2, 3, 4, 5, 7, 9, 14, 16, 22};
    static const int64_t nflt[] = {1, 7, 31, 32, 33, 100, 257, 1000};
    static const int64_t rowsv[] = {1, 3, 7, 33};
    for (int t = 0; t < N_TYPES; t++) {
        int type = all_types[t];
        int block = tnn__qtype(type)->block;
        const int64_t *ns = block == 1 ? nflt : block == 32 ? blocks32 : blocksK;
        int nn = block == 1    ? (int)(sizeof nflt / sizeof *nflt)
                 : block == 32 ? (int)(sizeof blocks32 / sizeof *blocks32)
                               : (int)(sizeof blocksK / sizeof *blocksK);
        for (int i = 0; i < nn; i++)
            for (int j = 0; j < 4; j++)
                check_type_kernels(type, rowsv[(i + j) % 4], ns[i] * (block == 1 ? 1 : block));
    }
    /* every half pattern: F16C's conversion equals the scalar one */
    uint16_t *h = xmalloc(65536 * 2);
    float *a = xmalloc(65536 * 4), *b = xmalloc(65536 * 4);
    for (int i = 0; i < 65536; i++)
        h[i] = (uint16_t)i;
    deq_both(TNN_QT_F16, h, a, 65536, "F16 all patterns");
    int bad = 0;
    CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
    CHECK_OK(tnn__dequantize_row(TNN_QT_F16, h, a, 65536));
    for (int kid = TNN_QK_SCALAR + 1; kid < TNN_QK_COUNT; kid++) {
        if (!tnn__quant_kernel_supported(kid))
            continue;
        CHECK_OK(tnn__quant_set_kernel(kid));
        CHECK_OK(tnn__dequantize_row(TNN_QT_F16, h, b, 65536));
        for (int i = 0; i < 65536; i++)
            bad += fbits(a[i]) != fbits(b[i]);
    }
    CHECK(bad == 0, "%d half patterns convert differently (NaN bits included)", bad);
    tnn__quant_set_kernel(TNN_QK_AUTO);
    free(h);
    free(a);
    free(b);
    if (!have_avx2())
        printf("test_quant: no AVX2 on this CPU: AVX2 comparisons skipped\n");
}

/* ------------------------------------------------------------------------ */
/* Activation quantization: every kernel gives the same codes and scales    */
/* ------------------------------------------------------------------------ */

/* The pair layout of the codes (tnn_qact.qp) against the codes, for even
 * and odd block counts; the workspace size covers it exactly. */
static void test_pair_layout(void) {
    th_seed(5);
    for (int64_t nb = 1; nb <= 6; nb++) {
        int64_t n = 32 * nb, bytes = tnn__qact_bytes(TNN_QT_Q4_1, n);
        float *x = xmalloc((size_t)n * sizeof(float));
        for (int64_t i = 0; i < n; i++)
            x[i] = gauss();
        uint8_t *work = xmalloc((size_t)bytes);
        memset(work, 0x7f, (size_t)bytes);
        tnn_qact a;
        CHECK_OK(tnn__qact_prepare(&a, TNN_QT_Q4_1, x, n, work));
        int64_t pairs = (nb + 1) / 2;
        CHECK((uint8_t *)a.qp + 64 * pairs == work + bytes, "nb %lld: qp ends the workspace",
              (long long)nb);
        int bad = 0;
        for (int64_t b = 0; b < 2 * pairs; b++)
            for (int i = 0; i < 32; i++) {
                int8_t want = b < nb ? a.q[32 * b + i] : 0;
                bad += a.qp[64 * (b / 2) + 32 * (i / 16) + 16 * (b % 2) + i % 16] != want;
            }
        CHECK(bad == 0, "nb %lld: %d codes out of place in the pair layout", (long long)nb, bad);
        free(work);
        free(x);
    }
}

static void test_act(void) {
    const int64_t n = 512;
    float x[512];
    th_seed(3);
    for (int64_t i = 0; i < n; i++)
        x[i] = gauss();
    /* block 0 (and the first K block): amax 127 -> d = 1 -> ties at k + 0.5 */
    x[0] = 127.0f;
    for (int i = 1; i < 32; i++)
        x[i] = (float)(i * 8 - 128) + (i % 2 ? 0.5f : -0.5f);
    x[5] = -0.5f;
    x[6] = 0.5f;
    x[7] = 126.5f;
    x[8] = -126.5f;
    x[9] = -0.0f;
    for (int i = 32; i < 64; i++)
        x[i] = 0.0f;  /* all-zero block */
    x[70] = INFINITY; /* inf: d = inf, codes 0 / NaN */
    x[100] = NAN;     /* NaN ignored by amax */
    static const int wt[] = {TNN_QT_Q4_0, TNN_QT_Q6_K};
    for (int t = 0; t < 2; t++) {
        int64_t bytes = tnn__qact_bytes(wt[t], n);
        uint8_t *w0 = xmalloc((size_t)bytes), *w1 = xmalloc((size_t)bytes);
        memset(w0, 0xaa, (size_t)bytes);
        memset(w1, 0x55, (size_t)bytes);
        tnn_qact a0, a1;
        CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
        CHECK_OK(tnn__qact_prepare(&a0, wt[t], x, n, w0));
        int bs = wt[t] == TNN_QT_Q6_K ? 256 : 32;
        /* the codes are roundf(x / d) for the finite blocks */
        int ok = 1;
        for (int i = 0; i < 32; i++)
            ok &= a0.q[i] == (int8_t)roundf(x[i] * (1.0f / a0.d[0]));
        CHECK(ok && a0.d[0] == (bs == 32 ? 1.0f : a0.d[0]), "%s: activation codes are roundf",
              tnn__qtype(wt[t])->name);
        if (bs == 32)
            CHECK(a0.q[5] == -1 && a0.q[6] == 1 && a0.q[7] == 127 && a0.q[8] == -127,
                  "ties round away from zero");
        for (int kid = TNN_QK_SCALAR + 1; kid < TNN_QK_COUNT; kid++) {
            if (!tnn__quant_kernel_supported(kid))
                continue;
            const char *kn = tnn__quant_kernel_name(kid);
            memset(w1, 0x55, (size_t)bytes);
            CHECK_OK(tnn__quant_set_kernel(kid));
            CHECK_OK(tnn__qact_prepare(&a1, wt[t], x, n, w1));
            CHECK(memcmp(a0.q, a1.q, (size_t)n) == 0, "%s: %s activation codes differ",
                  tnn__qtype(wt[t])->name, kn);
            CHECK(first_diff(a0.d, a1.d, n / bs) < 0, "%s: %s activation scales differ",
                  tnn__qtype(wt[t])->name, kn);
            if (bs == 32)
                CHECK(memcmp(a0.qsum, a1.qsum, (size_t)(n / 32) * 4) == 0 &&
                          first_diff(a0.s, a1.s, n / 32) < 0,
                      "%s activation sums differ", kn);
            else
                CHECK(memcmp(a0.bsum, a1.bsum, (size_t)(n / 16) * 2) == 0, "%s bsums differ", kn);
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        free(w0);
        free(w1);
    }
}

/* ------------------------------------------------------------------------ */
/* Thread-count bit-identity                                                */
/* ------------------------------------------------------------------------ */

static void test_threads(void) {
    const int64_t rows = 515, n = 2048;
    th_seed(99);
    int saved = tnn_get_num_threads();
    float *x = xmalloc(n * sizeof(float)), *y1 = xmalloc(rows * sizeof(float));
    float *yk = xmalloc(rows * sizeof(float));
    for (int64_t i = 0; i < n; i++)
        x[i] = gauss();
    for (int t = 0; t < N_TYPES; t++) {
        int type = all_types[t];
        int64_t rb = tnn__qtype_row_bytes(type, n);
        uint8_t *w = xmalloc((size_t)(rb * rows));
        random_rows(type, w, rows, n);
        for (int k = 0; k < TNN_QK_COUNT; k++) {
            if (!tnn__quant_kernel_supported(k))
                continue;
            CHECK_OK(tnn__quant_set_kernel(k));
            CHECK_OK(tnn_set_num_threads(1));
            CHECK_OK(tnn__quant_matvec(type, w, rows, n, x, y1, NULL));
            for (int th = 2; th <= 5; th++) {
                CHECK_OK(tnn_set_num_threads(th));
                CHECK_OK(tnn__quant_matvec(type, w, rows, n, x, yk, NULL));
                CHECK(first_diff(y1, yk, rows) < 0, "%s %s: %d threads differ from 1",
                      tnn__qtype(type)->name, tnn__quant_kernel_name(k), th);
            }
        }
        free(w);
    }
    tnn__quant_set_kernel(TNN_QK_AUTO);
    tnn_set_num_threads(saved);
    free(x);
    free(y1);
    free(yk);
}

/* ------------------------------------------------------------------------ */
/* Golden data from the gguf package                                        */
/* ------------------------------------------------------------------------ */

static int take(const uint8_t **p, const uint8_t *end, void *dst, size_t n) {
    if ((size_t)(end - *p) < n)
        return 0;
    memcpy(dst, *p, n);
    *p += n;
    return 1;
}

static void test_golden(void) {
    const char *path = TNN_DATA_DIR "/quant_golden.bin";
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "cannot open %s", path);
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = xmalloc((size_t)size);
    CHECK(fread(buf, 1, (size_t)size, f) == (size_t)size, "read %s", path);
    fclose(f);
    const uint8_t *p = buf, *end = buf + size;
    char magic[8];
    uint32_t hdr[2];
    CHECK(take(&p, end, magic, 8) && memcmp(magic, "TNNQGLD1", 8) == 0 && take(&p, end, hdr, 8),
          "golden header");
    int seen[TNN_QT_COUNT] = {0};
    for (uint32_t rec = 0; rec < hdr[0]; rec++) {
        uint32_t h[4];
        if (!take(&p, end, h, 16))
            break;
        int type = (int)h[0];
        int64_t rows = h[2], n = h[3];
        const tnn_qtype_info *t = tnn__qtype(type);
        CHECK(t != NULL, "golden type %d", type);
        if (!t)
            break;
        const char *name = t->name;
        int64_t rb = tnn__qtype_row_bytes(type, n);
        float *src = xmalloc((size_t)(rows * n) * 4), *deq = xmalloc((size_t)(rows * n) * 4);
        float *mine = xmalloc((size_t)(rows * n) * 4), *x = xmalloc((size_t)n * 4);
        uint8_t *blk = xmalloc((size_t)(rows * rb)), *qb = xmalloc((size_t)(rows * rb));
        double *dot = (double *)xmalloc((size_t)rows * 8);
        float *y = xmalloc((size_t)rows * 4);
        int ok = ((h[1] & 1) ? take(&p, end, src, (size_t)(rows * n) * 4) : 1) &&
                 take(&p, end, blk, (size_t)(rows * rb)) &&
                 take(&p, end, deq, (size_t)(rows * n) * 4) && take(&p, end, x, (size_t)n * 4) &&
                 take(&p, end, dot, (size_t)rows * 8);
        CHECK(ok, "golden record %u (%s) truncated", rec, name);
        if (!ok)
            break;
        seen[type] = 1;
        if (h[1] & 1) {
            CHECK_OK(tnn__quantize_row(type, src, qb, rows * n));
            int64_t k = -1;
            for (int64_t i = 0; i < rows * rb && k < 0; i++)
                if (qb[i] != blk[i])
                    k = i;
            CHECK(k < 0, "%s: quantize differs from gguf at byte %lld (block %lld): %02x vs %02x",
                  name, (long long)k, k < 0 ? 0LL : (long long)(k / t->block_bytes),
                  k < 0 ? 0 : qb[k], k < 0 ? 0 : blk[k]);
        }
        for (int kern = 0; kern < TNN_QK_COUNT; kern++) {
            if (!tnn__quant_kernel_supported(kern))
                continue;
            CHECK_OK(tnn__quant_set_kernel(kern));
            CHECK_OK(tnn__dequantize_row(type, blk, mine, rows * n));
            int64_t k = first_diff(mine, deq, rows * n);
            CHECK(k < 0, "%s %s: dequantize differs from gguf at %lld: %.9g vs %.9g", name,
                  tnn__quant_kernel_name(kern), (long long)k, k < 0 ? 0.0 : mine[k],
                  k < 0 ? 0.0 : deq[k]);
            CHECK_OK(tnn__quant_matvec(type, blk, rows, n, x, y, NULL));
            for (int64_t r = 0; r < rows; r++) {
                int finite = 1;
                for (int64_t i = 0; i < n; i++)
                    finite &= isfinite(deq[r * n + i]) != 0;
                if (!finite)
                    continue; /* the conversion-edge row */
                double e = fabs(y[r] - dot[r]) / dot_bound(type, deq + r * n, x, n);
                CHECK(e <= 1.0, "%s %s row %lld: dot %.9g vs gguf %.9g (%.3g of bound)", name,
                      tnn__quant_kernel_name(kern), (long long)r, y[r], dot[r], e);
            }
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        free(src);
        free(deq);
        free(mine);
        free(x);
        free(blk);
        free(qb);
        free(dot);
        free(y);
    }
    for (int t = 0; t < N_TYPES; t++)
        CHECK(seen[all_types[t]], "golden data has no %s record", tnn__qtype(all_types[t])->name);
    free(buf);
}

/* Any element range of a row in bf16 (the prompt GEMM's panels) is the
 * same slice of the whole row's bf16 values: starts and ends inside blocks,
 * whole blocks, empty ranges; bad arguments refused. */
static void test_range_bf16(void) {
    th_seed(31);
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        const tnn_qtype_info *t = tnn__qtype(type);
        int64_t n = t->block == 1 ? 700 : 3 * t->block;
        uint8_t *w = xmalloc((size_t)tnn__qtype_row_bytes(type, n));
        uint16_t *all = xmalloc((size_t)n * 2), *part = xmalloc((size_t)n * 2 + 2);
        random_rows(type, w, 1, n);
        CHECK_OK(tnn__dequantize_row_bf16(type, w, all, n));
        int bad = 0;
        for (int rep = 0; rep < 60; rep++) {
            int64_t k0 = rep < 3 ? rep * (t->block > 1 ? t->block : 1) : (int64_t)(th_uniform() * n);
            int64_t len = rep % 5 == 0 ? n - k0 : (int64_t)(th_uniform() * (double)(n - k0 + 1));
            part[len] = 0xdead;
            CHECK_OK(tnn__dequantize_rows_bf16(type, w, 0, 1, k0, len, part));
            bad += memcmp(part, all + k0, (size_t)len * 2) != 0 || part[len] != 0xdead;
        }
        CHECK(bad == 0, "%s: %d ranges differ from the whole row's slice (or wrote past it)",
              t->name, bad);
        free(w);
        free(all);
        free(part);
    }
    /* several rows: each row's range, rows packed n apart */
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        const tnn_qtype_info *t = tnn__qtype(type);
        int64_t n = t->block == 1 ? 300 : 2 * t->block, rows = 9;
        int64_t rb = tnn__qtype_row_bytes(type, n), k0 = n / 3, len = n / 2;
        uint8_t *w = xmalloc((size_t)(rb * rows));
        uint16_t *all = xmalloc((size_t)(n * rows) * 2), *part = xmalloc((size_t)(len * rows) * 2);
        random_rows(type, w, rows, n);
        CHECK_OK(tnn__dequantize_row_bf16(type, w, all, n * rows));
        CHECK_OK(tnn__dequantize_rows_bf16(type, w, (size_t)rb, rows, k0, len, part));
        int bad = 0;
        for (int64_t r = 0; r < rows; r++)
            bad += memcmp(part + r * len, all + r * n + k0, (size_t)len * 2) != 0;
        CHECK(bad == 0, "%s: %d of %lld rows' ranges differ", t->name, bad, (long long)rows);
        free(w);
        free(all);
        free(part);
    }
    uint16_t d[4];
    CHECK_ERR(tnn__dequantize_rows_bf16(TNN_QT_Q4_0, d, 18, 1, -1, 2, d), TNN_ERR_ARG, "k0");
    CHECK_ERR(tnn__dequantize_rows_bf16(TNN_QT_Q4_0, d, 18, -1, 0, 2, d), TNN_ERR_ARG, "rows");
    CHECK_ERR(tnn__dequantize_rows_bf16(5, d, 18, 1, 0, 2, d), TNN_ERR_ARG, "type");
}

/* Blocks with a NaN or infinite scale (a damaged file): every kernel set's
 * bf16 values are still the scalar values rounded (NaN stays a quiet NaN
 * with its upper half, inf * 0 gives one). */
static void test_bf16_nonfinite(void) {
    static const struct {
        int type, at;
    } ts[] = {{TNN_QT_Q8_0, 0}, {TNN_QT_Q4_1, 0}, {TNN_QT_IQ4_NL, 0}, {TNN_QT_Q4_K, 0},
              {TNN_QT_Q5_K, 2}, {TNN_QT_Q6_K, 208}};
    static const uint16_t bad[3] = {0x7e01, 0x7c00, 0xfc01}; /* NaN, +inf, signalling -NaN */
    th_seed(41);
    for (size_t t = 0; t < sizeof ts / sizeof ts[0]; t++) {
        const tnn_qtype_info *qi = tnn__qtype(ts[t].type);
        int64_t n = 4 * qi->block, rb = tnn__qtype_row_bytes(ts[t].type, n);
        uint8_t *w = xmalloc((size_t)rb);
        float *f = xmalloc((size_t)n * 4);
        uint16_t *h = xmalloc((size_t)n * 2);
        random_rows(ts[t].type, w, 1, n);
        for (int b = 0; b < 3; b++)
            put16(w + b * qi->block_bytes + ts[t].at, bad[b]);
        CHECK_OK(tnn__quant_set_kernel(TNN_QK_SCALAR));
        CHECK_OK(tnn__dequantize_row(ts[t].type, w, f, n));
        for (int kid = 0; kid < TNN_QK_COUNT; kid++) {
            if (!tnn__quant_kernel_supported(kid))
                continue;
            CHECK_OK(tnn__quant_set_kernel(kid));
            CHECK_OK(tnn__dequantize_row_bf16(ts[t].type, w, h, n));
            int badn = 0;
            for (int64_t i = 0; i < n; i++)
                badn += h[i] != tnn__f32_to_bf16(f[i]);
            CHECK(badn == 0, "%s %s: %d bf16 values of non-finite blocks differ", qi->name,
                  tnn__quant_kernel_name(kid), badn);
        }
        tnn__quant_set_kernel(TNN_QK_AUTO);
        free(w);
        free(f);
        free(h);
    }
}

/* The GPU's eight-value decoder (tnn__deq_part) against the whole-block
 * decoder, bit for bit, for every part of random blocks of each block type. */
static void test_parts(void) {
    for (int ti = 0; ti < N_TYPES; ti++) {
        int type = all_types[ti];
        const tnn_qtype_info *t = tnn__qtype(type);
        if (t->block == 1) continue;
        int nb = 16, bad = 0, split = tnn__part_split(type);
        uint8_t *w = xmalloc((size_t)(nb * t->block_bytes));
        random_rows(type, w, 1, (int64_t)nb * t->block);
        for (int k = 0; k < nb; k++) {
            float whole[256], part[8];
            tnn__deq_block(type, w, k, whole);
            for (int p = 0; p < t->block / 8; p++) {
                tnn__deq_part(type, w, k, p, part);
                for (int i = 0; i < 8; i++)
                    bad += !same(part[i], whole[tnn__part_elem(split, p, i)]);
            }
        }
        CHECK(bad == 0, "%s: %d of %d part values differ from the block decoder", t->name, bad,
              nb * t->block);
        free(w);
    }
}

int main(void) {
    printf("test_quant: default kernel %s\n", tnn__quant_kernel_name(tnn__quant_get_kernel()));
    test_table();
    test_f16();
    test_bf16();
    test_known_blocks();
    test_round_trips();
    test_act();
    test_pair_layout();
    test_kernels();
    test_threads();
    test_golden();
    test_parts();
    test_range_bf16();
    test_bf16_nonfinite();
    return th_finish("test_quant");
}
