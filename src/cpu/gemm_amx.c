/* gemm_amx.c - the AMX micro-kernel of the bf16 products: a 32x32 tile of C
 * in four 16x16 f32 tile registers, TDPBF16PS over chunks of 16 k pairs (32
 * k). This file alone is compiled with the AMX and AVX-512 flags and is only
 * called after gemm.c has checked that the CPU reports AMX-BF16 and the OS
 * let this process use the tile data (tnn__gemm_amx_enable).
 *
 * Packing. A chunk of 16 pairs of the A panel holds its 32 rows one after
 * the other, 16 words (64 bytes) each: a 16-row half is one tile load with
 * a 64-byte stride. The B panel is the dot path's pair layout at 32 columns
 * (pair p of column j at word p*32 + j): 16 pair rows of 16 columns are one
 * tile load with a 128-byte stride. Both are padded with zero pairs to a
 * whole chunk (tnn__gemm_dot_kernel.kstep); a zero pair adds +0.
 *
 * Rounding. The activations are rounded to bf16 while packing, as on the
 * dot path (tnn__gemm_bf16_round); the products of bf16 values are exact.
 * How TDPBF16PS rounds its sums is not the dot path's step by step (it
 * differs from every sequential order of f32 FMAs in a few ulps), so this
 * kernel has no bit-exact scalar twin: tests/test_gemm_bf16.c bounds it
 * against a double reference, as the dot path's rounding bound allows,
 * and checks its bits for 1, 2 and 3 threads.
 *
 * Tile state. gemm.c calls amx_begin / amx_end around each thread's share
 * of a product: no thread keeps tiles configured between products, and an
 * application's own configuration on the calling thread is put back.
 */
#include "gemm.h"
#include "gemm_dot_pack.h"

#if defined(TNN_GEMM_X86)
/* GCC spells the feature macros __AMX_TILE__ / __AMX_BF16__, clang (14)
 * __AMXTILE__ / __AMXBF16__ */
#if !defined(__AVX512F__) || !(defined(__AMX_TILE__) || defined(__AMXTILE__)) ||               \
    !(defined(__AMX_BF16__) || defined(__AMXBF16__))
#error "gemm_amx.c must be compiled with -mavx512f -mamx-tile -mamx-bf16 (see CMakeLists.txt)"
#endif

#include <immintrin.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MR 32
#define NR 32
#define CHUNK 16 /* k pairs per tile product */

/* The tile configuration (palette 1): tiles 0-3 C (16 rows of 16 f32), 4-5
 * A (16 rows of 16 pairs), 6-7 B (16 pair rows of 16 columns); every tile
 * 16 rows of 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg;

/* Linux gives a process the tile data state only when it asks
 * (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA); once. */
static pthread_once_t perm_once = PTHREAD_ONCE_INIT;
static bool perm_ok;
static void perm_ask(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    perm_ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                      18 /* XFEATURE_XTILEDATA */) == 0;
#else
    perm_ok = false;
#endif
}

bool tnn__gemm_amx_enable(void) {
    pthread_once(&perm_once, perm_ask);
    return perm_ok;
}

/* Around a thread's share of a product (gemm.c calls these): the thread's
 * own configuration, if it had one (an application's AMX code), is saved
 * and loaded back after; otherwise the tiles are released, so that no
 * thread keeps tile state live between products (Linux saves it, 8 KiB, at
 * every context switch while it is). */
_Static_assert(sizeof(amx_cfg) == 64, "the tile configuration is 64 bytes");
static const amx_cfg tiles_16x64 = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

static void amx_begin(void *state) {
    _tile_storeconfig(state);
    /* from a static object: GCC 12 dropped the stores of a local one filled
     * just before _tile_loadconfig (the builtin is not seen to read them) */
    _tile_loadconfig(&tiles_16x64);
}

static void amx_end(const void *state) {
    if (((const amx_cfg *)state)->palette)
        _tile_loadconfig(state);
    else
        _tile_release();
}

int tnn__gemm_amx_palette(int *rows0) {
    _Alignas(64) amx_cfg c;
    _tile_storeconfig(&c);
    *rows0 = c.rows[0];
    return c.palette;
}

void tnn__gemm_amx_set_own(int rows0) {
    static _Thread_local _Alignas(64) amx_cfg own; /* filled in memory before the load */
    if (!rows0) {
        _tile_release();
        return;
    }
    memset(&own, 0, sizeof own);
    own.palette = 1;
    own.rows[0] = (uint8_t)rows0;
    own.colsb[0] = 64;
    __atomic_signal_fence(__ATOMIC_SEQ_CST); /* the stores above stay above the load */
    _tile_loadconfig(&own);
}

static void ukr_amx_32x32(int64_t kp, const uint32_t *a, const uint32_t *b, float *c, int64_t ldc,
                          int load_c) {
    const size_t sc = (size_t)ldc * sizeof(float);
    float *c1 = c + 16 * ldc;
    if (load_c) {
        _tile_loadd(0, c, sc);
        _tile_loadd(1, c + 16, sc);
        _tile_loadd(2, c1, sc);
        _tile_loadd(3, c1 + 16, sc);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int64_t p = 0; p < kp; p += CHUNK, a += MR * CHUNK, b += NR * CHUNK) {
        _tile_loadd(4, a, 64);
        _tile_loadd(5, a + 16 * CHUNK, 64);
        _tile_loadd(6, b, NR * sizeof(uint32_t));
        _tile_loadd(7, b + 16, NR * sizeof(uint32_t));
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, sc);
    _tile_stored(1, c + 16, sc);
    _tile_stored(2, c1, sc);
    _tile_stored(3, c1 + 16, sc);
}

static int64_t chunks_of(int64_t kc) { return ((kc + 1) / 2 + CHUNK - 1) / CHUNK * CHUNK; }

/* dot_round_bits of 16 floats at once (the same bits): nearest even, a zero
 * of its sign for a zero or subnormal, the quiet NaN for a NaN. */
static inline __m256i round16_bf16(const float *s) {
    const __m512i u = _mm512_loadu_si512(s);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                         _mm512_and_si512(hi, _mm512_set1_epi32(1))),
        16);
    __mmask16 tiny = _mm512_testn_epi32_mask(u, _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_and_epi32(r, tiny, hi, _mm512_set1_epi32(0x8000));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_or_epi32(r, nan, hi, _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
}

/* op(A)[i0 : i0+mc, k0 : k0+kc] rounded to bf16, in panels of MR rows, each
 * panel chunk by chunk with its rows one after the other (zero past mc and
 * past kc's pairs). A whole chunk of a row of A (32 floats, contiguous) is a
 * plain map to 32 bf16 halves; of A^T, two rows of A give its pairs. */
static void pack_a_amx(uint32_t *restrict dst, bool ta, const float *restrict A, int64_t lda,
                       int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr) {
    (void)mr;
    const int64_t kd = chunks_of(kc), full = kc / 2, kp = (kc + 1) / 2;
    for (int64_t p = 0; p < mc; p += MR, dst += MR * kd) {
        const int rows = (int)(mc - p < MR ? mc - p : MR);
        for (int64_t q0 = 0; q0 < kd; q0 += CHUNK) {
            uint32_t *d = dst + q0 * MR;
            if (q0 + CHUNK <= full && ta) {
                for (int q = 0; q < CHUNK; q++) {
                    const float *lo = A + (k0 + 2 * (q0 + q)) * lda + i0 + p, *hi = lo + lda;
                    for (int i = 0; i < rows; i++)
                        d[i * CHUNK + q] = dot_round_f32(lo[i]) | dot_round_f32(hi[i]) << 16;
                }
                memset(d + rows * CHUNK, 0, (size_t)((MR - rows) * CHUNK) * sizeof *d);
                continue;
            }
            for (int i = 0; i < MR; i++, d += CHUNK) {
                if (i >= rows || q0 >= kp) {
                    memset(d, 0, CHUNK * sizeof *d);
                    continue;
                }
                if (q0 + CHUNK <= full) { /* !ta: the row's 32 floats in order */
                    const float *s = A + (i0 + p + i) * lda + k0 + 2 * q0;
                    _mm256_storeu_si256((__m256i *)d, round16_bf16(s));
                    _mm256_storeu_si256((__m256i *)(d + CHUNK / 2), round16_bf16(s + CHUNK));
                    continue;
                }
                for (int q = 0; q < CHUNK; q++) { /* the last chunk: pairs, a half, zeros */
                    int64_t pr = q0 + q, k = k0 + 2 * pr;
                    const float *lo = ta ? A + k * lda + i0 + p + i : A + (i0 + p + i) * lda + k;
                    const float *hi = ta ? lo + lda : lo + 1; /* only where k + 1 exists */
                    d[q] = pr < full   ? dot_round_f32(*lo) | dot_round_f32(*hi) << 16
                           : pr < kp ? dot_round_f32(*lo)
                                     : 0;
                }
            }
        }
    }
}

/* r[j] = column j of the 16 x 16 words r[0..15] (rows in, columns out). */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int k = 0; k < 8; k++) { /* in each 128-bit lane: pairs of rows interleaved */
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) { /* u[4k + c], lane L: column 4L + c of rows 4k..4k+3 */
        u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    for (int c = 0; c < 4; c++) { /* column 4L + c: lane L of u[c], u[4+c], u[8+c], u[12+c] */
        __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], _MM_SHUFFLE(3, 2, 3, 2));
        __m512i v2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(1, 0, 1, 0));
        __m512i v3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], _MM_SHUFFLE(3, 2, 3, 2));
        r[c] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(2, 0, 2, 0));
        r[4 + c] = _mm512_shuffle_i32x4(v0, v2, _MM_SHUFFLE(3, 1, 3, 1));
        r[8 + c] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(2, 0, 2, 0));
        r[12 + c] = _mm512_shuffle_i32x4(v1, v3, _MM_SHUFFLE(3, 1, 3, 1));
    }
}

/* op(B)[k0 : k0+kc, j0 : j0+nc] as the dot path packs it at NR columns,
 * each panel padded with zero pairs to whole chunks. With B transposed (the
 * weights' rows, a prompt's bf16 copies) a pair is one word of a row, so a
 * whole panel is a transpose of words, 16 x 16 at a time (the portable
 * pack's word-by-word strided stores took as long as the tile products). */
static void pack_b_amx(uint32_t *restrict dst, bool tb, const uint16_t *restrict B, int64_t ldb,
                       int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr) {
    (void)nr;
    const int64_t kd = chunks_of(kc), kp = (kc + 1) / 2, full = kc / 2, f16 = full / 16 * 16;
    for (int64_t q0 = 0; q0 < nc; q0 += NR, dst += NR * kd) {
        if (!tb || nc - q0 < NR) {
            dot_pack_b_impl(dst, tb, B, ldb, k0, kc, j0 + q0, nc - q0 < NR ? nc - q0 : NR, NR);
        } else {
            for (int64_t q = 0; q < f16; q += 16)
                for (int h = 0; h < NR; h += 16) {
                    __m512i r[16];
                    for (int i = 0; i < 16; i++)
                        r[i] = _mm512_loadu_si512(B + (j0 + q0 + h + i) * ldb + k0 + 2 * q);
                    transpose16(r);
                    for (int j = 0; j < 16; j++) _mm512_storeu_si512(dst + (q + j) * NR + h, r[j]);
                }
            for (int c = 0; c < NR; c++) { /* the pairs past the last 16, a last half */
                const uint16_t *s = B + (j0 + q0 + c) * ldb + k0;
                for (int64_t q = f16; q < full; q++) dst[q * NR + c] = dot_load_pair(s + 2 * q);
                if (full < kp) dst[full * NR + c] = s[2 * full];
            }
        }
        memset(dst + NR * kp, 0, (size_t)(NR * (kd - kp)) * sizeof *dst);
    }
}

const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_amx = {
    .name = "amx",
    .mr = MR, .nr = NR,
    .kstep = CHUNK,
    /* A block 128 x 512 (64 KiB of bf16 pairs), B panel 512 x 1024 (1 MiB) */
    .mc = 128, .kc = 512, .nc = 1024, .nc_small = 512,
    .ukr = ukr_amx_32x32,
    .pack_a = pack_a_amx,
    .pack_b = pack_b_amx,
    .begin = amx_begin,
    .end = amx_end,
};

#else
typedef int tnn__gemm_amx_unused; /* not x86: nothing to build */
#endif
