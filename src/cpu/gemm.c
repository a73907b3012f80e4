/* gemm.c - f32 matrix product C = op(A) @ op(B) on the CPU: a packed,
 * cache-blocked GEMM (the Goto/BLIS loop nest) around a register-tiled
 * micro-kernel chosen at run time (gemm_scalar.c, gemm_avx2.c, gemm_avx512.c).
 * The same loop nest runs the bf16 products (f32 A, bf16 B): their packs
 * and dot kernels are in gemm_bf16.c and gemm_avx512bf16.c.
 *
 * Loops, outermost first, for the C tile a thread owns:
 *   jc over N by nc   -> the B panel (kc x nc) is packed once per (jc, pc)
 *   pc over K by kc   -> K blocks in ASCENDING order
 *   ic over M by mc   -> the A block (mc x kc) is packed, stays in L2
 *   jr, ir            -> the micro-kernel on an mr x nr tile of C
 * Packing reads A and B through their (ta, tb) layouts, so no transpose pass
 * is needed; edge panels are padded with zeros; a block's last rows (fewer
 * than mr) take the kernel's short-tile variant straight into C where it
 * has one, other edge tiles go through a small buffer. K is cut into equal
 * blocks (576 = 2 x 288). When op(A) is a single block (few rows: an LM
 * head, a small batch) it is packed once for all column panels and the B
 * panels are kept L2-sized. (Prefetching the next B panel's source while
 * the micro-kernels ran was dropped: on AMD cores a software prefetch fills
 * L1 too, and it slowed the micro-kernels more than it sped the pack.)
 *
 * Determinism: the first K block starts every accumulator from +0 and each
 * later block continues from the value stored in C, so each C element is ONE
 * fused multiply-add chain over k = 0..K-1 in ascending order, whatever the
 * block sizes, the kernel or the thread split. Threads split C's columns (or
 * rows), never K. Hence: any thread count gives the same bits; every kernel
 * gives the same bits (the scalar twin uses fmaf); and C = A @ B equals, bit
 * for bit, the transpose of B^T @ A^T computed with the roles swapped
 * (fma(a, b, c) == fma(b, a, c)), which the library's matmul routes rely on.
 *
 * bf16 products keep the same rules. The widening path packs B as the f32
 * values it holds, so it gives the bits of the f32 product on widen(B). The
 * dot path's K blocks are even, so k pairs (2p, 2p+1) are global and each C
 * element is one chain of VDPBF16PS steps over ascending pairs.
 */
#include "../core/internal.h"
#include "../ops/kernels.h"
#include "gemm.h"
#include "pool.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(TNN_GEMM_X86)
#include <cpuid.h>
#endif

/* ------------------------------------------------------------------------ */
/* Kernel choice                                                            */
/* ------------------------------------------------------------------------ */

static const char *const kernel_names[TNN_GEMM_KERNEL_COUNT] = {"scalar", "avx2", "avx512",
                                                                 "avx512bf16", "amx"};
_Static_assert(sizeof kernel_names / sizeof kernel_names[0] == TNN_GEMM_KERNEL_COUNT,
               "one name per kernel id");

static const tnn__gemm_kernel *kernel_table(int id) {
    switch (id) {
    case TNN_GEMM_SCALAR: return &tnn__gemm_kernel_scalar;
#if defined(TNN_GEMM_X86)
    case TNN_GEMM_AVX2: return &tnn__gemm_kernel_avx2;
    case TNN_GEMM_AVX512:
    case TNN_GEMM_AVX512BF16:
    case TNN_GEMM_AMX: return &tnn__gemm_kernel_avx512; /* its f32 products */
#endif
    default: return NULL;
    }
}

const char *tnn__gemm_kernel_name(int id) {
    return id >= 0 && id < TNN_GEMM_KERNEL_COUNT ? kernel_names[id] : "?";
}

#if defined(TNN_GEMM_X86)
/* AVX512_BF16: CPUID leaf 7 subleaf 1 EAX bit 5, with AVX512F (leaf 7
 * EBX bit 16) and the OS saving the opmask and zmm state (XCR0 bits 1, 2,
 * 5, 6, 7 through OSXSAVE). */
static bool cpu_avx512bf16(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7 || !__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))
        return false;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0xe6u) != 0xe6u) return false;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(b & (1u << 16))) return false;
    __cpuid_count(7, 1, a, b, c, d);
    return (a & (1u << 5)) != 0;
}

/* AMX-TILE and AMX-BF16 (CPUID leaf 7 EDX bits 24 and 22), the OS saving
 * the tile state (XCR0 bits 17, 18) and granting it to this process. */
static bool cpu_amx_bf16(void) {
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7 || !__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))
        return false;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(d & (1u << 24)) || !(d & (1u << 22))) return false;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    return (xlo & 0x60000u) == 0x60000u && tnn__gemm_amx_enable();
}
#endif

static bool kernel_probe(int id);

/* CPUID traps to the hypervisor in a virtual machine (6.5 us a call measured
 * on the development VM, and the AMX check takes several): the answers are
 * taken once, so that the bf16 products' path checks cost nothing. */
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;
static bool probed[TNN_GEMM_KERNEL_COUNT];
static void probe_all(void) {
    for (int id = 0; id < TNN_GEMM_KERNEL_COUNT; id++) probed[id] = kernel_probe(id);
}

bool tnn__gemm_kernel_supported(int id) {
    if (id < 0 || id >= TNN_GEMM_KERNEL_COUNT) return false;
    pthread_once(&probe_once, probe_all);
    return probed[id];
}

static bool kernel_probe(int id) {
    switch (id) {
    case TNN_GEMM_SCALAR: return true;
#if defined(TNN_GEMM_X86)
    case TNN_GEMM_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case TNN_GEMM_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f");
    case TNN_GEMM_AVX512BF16: return kernel_probe(TNN_GEMM_AVX512) && cpu_avx512bf16();
    case TNN_GEMM_AMX: return kernel_probe(TNN_GEMM_AVX512) && cpu_amx_bf16();
#endif
    default: return false;
    }
}

/* Whether the CPU is AMD's: there (Zen 4 and later) vdpbf16ps does twice
 * the work of an f32 FMA at the same rate. Intel's AVX512_BF16 cores issue
 * it at half the FMA's rate (measured on a Sapphire Rapids-class Xeon: 1.33
 * against 5.4 G instructions/s a core), so there the dot path has at most
 * the f32 kernel's speed, and measured 0.6x of it (PERFORMANCE.md). */
bool tnn__gemm_dot_preferred(void) {
#if defined(TNN_GEMM_X86)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u; /* "AuthenticAMD" */
#else
    return false;
#endif
}

static int best_kernel(void) {
    /* On Zen 4 AVX-512 f32 runs at the AVX2 rate (512-bit ops are
     * double-pumped), so the larger tile mainly helps CPUs with full-width
     * units; it is still preferred when reported. The bf16 dot kernel only
     * where it is the faster bf16 path; the AMX tiles before both. */
    if (tnn__gemm_kernel_supported(TNN_GEMM_AMX)) return TNN_GEMM_AMX;
    if (tnn__gemm_kernel_supported(TNN_GEMM_AVX512BF16) && tnn__gemm_dot_preferred())
        return TNN_GEMM_AVX512BF16;
    if (tnn__gemm_kernel_supported(TNN_GEMM_AVX512)) return TNN_GEMM_AVX512;
    if (tnn__gemm_kernel_supported(TNN_GEMM_AVX2)) return TNN_GEMM_AVX2;
    return TNN_GEMM_SCALAR;
}

static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;
static int default_kernel; /* written once under kernel_once */
static atomic_int current_kernel;

/* Reads TNN_KERNEL once; an unknown or unsupported value falls back to the
 * best kernel with a warning. */
static void kernel_init(void) {
    int best = best_kernel(), pick = best;
    const char *e = getenv("TNN_KERNEL");
    if (e && *e) {
        int want = -1;
        for (int i = 0; i < TNN_GEMM_KERNEL_COUNT; i++)
            if (strcmp(e, kernel_names[i]) == 0) want = i;
        if (strcmp(e, "avxvnni") == 0) want = TNN_GEMM_AVX2; /* a quantized kernels' name */
        if (want < 0)
            tnn__log(TNN_LOG_WARN,
                     "TNN_KERNEL=%s is not one of scalar, avx2, avxvnni, avx512, avx512bf16, amx; "
                     "using %s",
                     e, kernel_names[best]);
        else if (!tnn__gemm_kernel_supported(want))
            tnn__log(TNN_LOG_WARN, "TNN_KERNEL=%s is not supported on this CPU; using %s", e,
                     kernel_names[best]);
        else
            pick = want;
    }
    default_kernel = pick;
    atomic_store(&current_kernel, pick);
}

int tnn__gemm_get_kernel(void) {
    pthread_once(&kernel_once, kernel_init);
    return atomic_load_explicit(&current_kernel, memory_order_relaxed);
}

int tnn__gemm_set_kernel(int id) {
    pthread_once(&kernel_once, kernel_init);
    if (id == TNN_GEMM_AUTO) {
        atomic_store(&current_kernel, default_kernel);
        return TNN_OK;
    }
    if (id < 0 || id >= TNN_GEMM_KERNEL_COUNT)
        return TNN_ERR(TNN_ERR_ARG, "kernel id %d: want -1 (auto) or 0..%d", id,
                       TNN_GEMM_KERNEL_COUNT - 1);
    if (!tnn__gemm_kernel_supported(id))
        return TNN_ERR(TNN_ERR_ARG, "kernel %s is not supported on this CPU",
                       tnn__gemm_kernel_name(id));
    atomic_store(&current_kernel, id);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Packing buffers: the calling thread's (pool.h), kept between calls        */
/* ------------------------------------------------------------------------ */

typedef struct {
    float *a, *b;
} pack_bufs;

/* Buffers of at least na and nb floats, 64-byte aligned, or false. */
static bool get_bufs(size_t na, size_t nb, pack_bufs *pb) {
    pb->a = tnn__thread_buf(TNN_TBUF_PACK_A, na);
    pb->b = tnn__thread_buf(TNN_TBUF_PACK_B, nb);
    return pb->a && pb->b;
}

/* ------------------------------------------------------------------------ */
/* Packing                                                                  */
/* ------------------------------------------------------------------------ */

/* What the loop nest multiplies. */
enum {
    GEMM_F32,   /* f32 B, the f32 micro-kernel */
    GEMM_WIDEN, /* bf16 B widened to f32 while packing, the f32 micro-kernel */
    GEMM_DOT    /* bf16 B, A rounded to bf16 while packing, in k pairs: a dot kernel */
};

typedef struct {
    int mode;
    const tnn__gemm_kernel *kr;     /* GEMM_F32, GEMM_WIDEN */
    const tnn__gemm_dot_kernel *dk; /* GEMM_DOT */
    int mr, nr, mc, kc, nc, nc_small; /* the micro-kernel's tile and blocks */
    int nc_small_t;                   /* nc_small when B is transposed (0: nc_small) */
    bool ta, tb;
    int64_t M, N, K;
    const float *A;
    int64_t lda;
    const float *B;     /* GEMM_F32 */
    const uint16_t *Bh; /* GEMM_WIDEN, GEMM_DOT */
    int64_t ldb;
    float *C;
    int64_t ldc;
    const tnn_gemm_epi *epi; /* or NULL */
    const tnn_gemm_brows *brows; /* B^T by rows on demand (Bh NULL), or NULL */
    bool split_n;        /* threads split columns (else rows) */
    int64_t unit;        /* columns (rows) per unit of the split */
    atomic_int status;   /* TNN_OK, or the first failure in a thread */
} gemm_job;

/* 4-byte words per k of a packed row or column for a block kc deep: one
 * float, or for GEMM_DOT one word per k pair (rounded up to the kernel's
 * kstep). */
static inline int64_t depth(const gemm_job *g, int64_t kc) {
    if (g->mode != GEMM_DOT) return kc;
    int64_t kp = (kc + 1) / 2, st = g->dk->kstep > 1 ? g->dk->kstep : 1;
    return (kp + st - 1) / st * st;
}

/* The portable transposing pack (see tnn__gemm_pack_fn). */
static void pack_t_generic(float *restrict dst, const float *restrict src, int64_t lds,
                           int64_t kc, int w, int valid) {
    for (int c = 0; c < w; c++) {
        if (c < valid) {
            const float *s = src + c * lds;
            for (int64_t k = 0; k < kc; k++) dst[k * w + c] = s[k];
        } else {
            for (int64_t k = 0; k < kc; k++) dst[k * w + c] = 0.0f;
        }
    }
}

/* dst[0:w] = s[0:n], zero past n. Inlined with w constant for the common
 * tile widths so the copy is a few vector moves. */
static inline __attribute__((always_inline)) void copy_run(float *restrict d,
                                                           const float *restrict s, int64_t n,
                                                           int w) {
    if (n == w) {
        memcpy(d, s, sizeof(float) * (size_t)w);
    } else {
        int64_t c = 0;
        for (; c < n; c++) d[c] = s[c];
        for (; c < w; c++) d[c] = 0.0f;
    }
}

/* The non-transposing pack: for each k, a contiguous run src[k*lds + 0 : n]
 * is cut into panels of w (panel q at dst + q*w*kc, zero past n). Rows of a
 * wide matrix are far apart and each run is short (a few KiB), too short
 * for the hardware prefetcher, so TNN_GEMM_PACK_ROWS rows are read side by
 * side, panel by panel: eight independent streams of misses in flight. (It
 * replaced copying row by row with a software prefetch 4 rows ahead: 1-11%
 * faster products on the VM, A/B in one process; docs/PERFORMANCE.md.) */
static inline __attribute__((always_inline)) void pack_n_w(float *restrict dst,
                                                           const float *restrict src,
                                                           int64_t lds, int64_t kc, int64_t n,
                                                           int w) {
    int64_t k = 0;
    for (; k + TNN_GEMM_PACK_ROWS <= kc; k += TNN_GEMM_PACK_ROWS)
        for (int64_t q = 0; q < n; q += w) {
            int64_t m = n - q < w ? n - q : w;
            for (int r = 0; r < TNN_GEMM_PACK_ROWS; r++)
                copy_run(dst + q * kc + (k + r) * w, src + (k + r) * lds + q, m, w);
        }
    for (; k < kc; k++)
        for (int64_t q = 0; q < n; q += w)
            copy_run(dst + q * kc + k * w, src + k * lds + q, n - q < w ? n - q : w, w);
}

static void pack_n(float *dst, const float *src, int64_t lds, int64_t kc, int64_t n, int w) {
    switch (w) {
    case 6: pack_n_w(dst, src, lds, kc, n, 6); break;
    case 12: pack_n_w(dst, src, lds, kc, n, 12); break;
    case 16: pack_n_w(dst, src, lds, kc, n, 16); break;
    case 32: pack_n_w(dst, src, lds, kc, n, 32); break;
    default: pack_n_w(dst, src, lds, kc, n, w); break;
    }
}

/* dst = op(A)[i0 : i0+mc, k0 : k0+kc] as micro-panels of mr rows: panel p
 * holds, for each k, the mr values of rows i0 + p*mr ... (zero past mc). */
static void pack_a(const gemm_job *g, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
                   float *dst) {
    const int mr = g->mr;
    if (g->mode == GEMM_DOT) {
        tnn__gemm_dot_pack_a_fn pk = g->dk->pack_a ? g->dk->pack_a : tnn__gemm_dot_pack_a;
        pk((uint32_t *)dst, g->ta, g->A, g->lda, i0, mc, k0, kc, mr);
        return;
    }
    if (g->ta) { /* op(A)[i][k] = A[k][i]: runs along i */
        pack_n(dst, g->A + k0 * g->lda + i0, g->lda, kc, mc, mr);
        return;
    }
    tnn__gemm_pack_fn pt = g->kr->pack_t ? g->kr->pack_t : pack_t_generic;
    for (int64_t p = 0; p < mc; p += mr) /* op(A)[i][k] = A[i][k]: runs along k */
        pt(dst + p * kc, g->A + (i0 + p) * g->lda + k0, g->lda, kc, mr,
           (int)(mc - p < mr ? mc - p : mr));
}

/* dst = op(B)[k0 : k0+kc, j0 : j0+nc] as micro-panels of nr columns: panel q
 * holds, for each k, the nr values of columns j0 + q*nr ... (zero past nc). */
static void pack_b(gemm_job *g, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float *dst) {
    const int nr = g->nr;
    const uint16_t *Bh = g->Bh;
    int64_t ldb = g->ldb;
    if (g->brows) { /* this panel's rows of B^T, then packed from there */
        uint16_t *t = (uint16_t *)tnn__thread_buf(TNN_TBUF_B_ROWS, (size_t)(nc * kc + 1) / 2);
        if (!t) {
            int ok = TNN_OK;
            atomic_compare_exchange_strong(&g->status, &ok, TNN_ERR_NOMEM);
            return;
        }
        g->brows->rows(g->brows->ctx, j0, nc, k0, kc, t);
        Bh = t, ldb = g->brows->by_k ? nc : kc, j0 = 0, k0 = 0; /* by_k: g->tb is false */
    }
    if (g->mode == GEMM_DOT) {
        tnn__gemm_dot_pack_b_fn pk = g->dk->pack_b ? g->dk->pack_b : tnn__gemm_dot_pack_b;
        pk((uint32_t *)dst, g->tb, Bh, ldb, k0, kc, j0, nc, nr);
        return;
    }
    if (g->mode == GEMM_WIDEN) {
        if (!g->tb) {
            tnn__gemm_bf16_pack_n_widen(dst, Bh + k0 * ldb + j0, ldb, kc, nc, nr);
            return;
        }
        tnn__gemm_pack_bf16_fn pw =
            g->kr->pack_t_widen ? g->kr->pack_t_widen : tnn__gemm_bf16_pack_t_widen;
        for (int64_t q = 0; q < nc; q += nr)
            pw(dst + q * kc, Bh + (j0 + q) * ldb + k0, ldb, kc, nr,
               (int)(nc - q < nr ? nc - q : nr));
        return;
    }
    if (!g->tb) { /* op(B)[k][j] = B[k][j]: runs along j */
        pack_n(dst, g->B + k0 * g->ldb + j0, g->ldb, kc, nc, nr);
        return;
    }
    tnn__gemm_pack_fn pt = g->kr->pack_t ? g->kr->pack_t : pack_t_generic;
    for (int64_t q = 0; q < nc; q += nr) /* op(B)[k][j] = B[j][k]: runs along k */
        pt(dst + q * kc, g->B + (j0 + q) * g->ldb + k0, g->ldb, kc, nr,
           (int)(nc - q < nr ? nc - q : nr));
}

/* ------------------------------------------------------------------------ */
/* The loop nest                                                            */
/* ------------------------------------------------------------------------ */

/* The micro-kernel of g on an mr x nr tile, kc deep. */
static inline void ukr(const gemm_job *g, int64_t kc, const float *a, const float *b, float *c,
                       int64_t ldc, int load) {
    if (g->mode == GEMM_DOT)
        g->dk->ukr(depth(g, kc), (const uint32_t *)a, (const uint32_t *)b, c, ldc, load);
    else
        g->kr->ukr(kc, a, b, c, ldc, load);
}

/* C[0:mc, 0:nc] (row stride ldc) from packed pa (mc x kc) and pb (kc x nc);
 * load = 0 on the first K block, 1 after (continue the running sums). */
static void macro_kernel(const gemm_job *g, int64_t mc, int64_t nc, int64_t kc,
                         const float *pa, const float *pb, float *C, int64_t ldc, int load) {
    const int mr = g->mr, nr = g->nr;
    const int64_t kd = depth(g, kc);
    for (int64_t jr = 0; jr < nc; jr += nr) {
        int64_t n = nc - jr < nr ? nc - jr : nr;
        const float *bp = pb + jr * kd;
        for (int64_t ir = 0; ir < mc; ir += mr) {
            int64_t m = mc - ir < mr ? mc - ir : mr;
            const float *ap = pa + ir * kd;
            float *c = C + ir * ldc + jr;
            /* Fetch the next tile's rows of C (for writing) while this
             * one computes: the micro-kernel loads them when it continues
             * a K block's sums, and on the first block its stores would
             * otherwise each wait for a line from memory (C is large for
             * an LM head: 64 x 49152 floats, +7-11% there; see
             * docs/PERFORMANCE.md). */
            int64_t ir2 = ir + mr, jr2 = jr;
            if (ir2 >= mc) ir2 = 0, jr2 = jr + nr;
            if (jr2 < nc) {
                int64_t m2 = mc - ir2 < mr ? mc - ir2 : mr, n2 = nc - jr2 < nr ? nc - jr2 : nr;
                const float *c2 = C + ir2 * ldc + jr2;
                for (int64_t i = 0; i < m2; i++) {
                    __builtin_prefetch(c2 + i * ldc, 1, 3);
                    __builtin_prefetch(c2 + i * ldc + n2 - 1, 1, 3);
                }
            }
            if (m == mr && n == nr) {
                ukr(g, kc, ap, bp, c, ldc, load);
                continue;
            }
            if (n == nr && g->mode != GEMM_DOT && g->kr->ukr_rows) {
                g->kr->ukr_rows((int)m, kc, ap, bp, c, ldc, load);
                continue;
            }
            /* Edge tile: run the full tile on a buffer, keep the valid part. */
            _Alignas(64) float tmp[TNN_GEMM_MR_MAX * TNN_GEMM_NR_MAX];
            if (load) {
                memset(tmp, 0, sizeof(float) * (size_t)(mr * nr));
                for (int64_t i = 0; i < m; i++)
                    memcpy(tmp + i * nr, c + i * ldc, sizeof(float) * (size_t)n);
            }
            ukr(g, kc, ap, bp, tmp, nr, load);
            for (int64_t i = 0; i < m; i++)
                memcpy(c + i * ldc, tmp + i * nr, sizeof(float) * (size_t)n);
        }
    }
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* Largest op(A) (floats, padded) packed once for all column panels. */
#define GEMM_A_ONCE_MAX ((int64_t)1 << 20)

/* C[m0:m1, n0:n1] in full (every k). */
static void gemm_block(gemm_job *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    int64_t MC = g->mc, KC = g->kc, NC = g->nc, K = g->K;
    /* K blocks of about equal depth, a multiple of 8 (the packs' step):
     * 576 = 2 x 288, not 384 + 192; a short last block would pay the C loads
     * and stores for little work. The dot kernels' blocks stay even, so
     * that every block but the last holds whole k pairs. */
    if (K > KC) {
        int64_t blocks = (K + KC - 1) / KC, even = (K + blocks - 1) / blocks;
        KC = round_up(even, 8) <= KC ? round_up(even, 8)
             : g->mode == GEMM_DOT    ? round_up(even, 2)
                                      : even;
    }
    int64_t mspan = m1 - m0, nspan = n1 - n0;
    int64_t kc_max = K < KC ? K : KC;
    int64_t mc_pad = round_up(mspan < MC ? mspan : MC, g->mr);
    /* One A block (few rows, e.g. an LM head): pack all of op(A) once and
     * keep it for every column panel; B panels are then used once right
     * after packing, so they are kept small enough to stay in L2. */
    /* (the packed K blocks one after the other, each kc_max deep: a kernel
     * with a kstep pads every block, the last too) */
    int64_t a_all = (K + KC - 1) / KC * depth(g, kc_max);
    bool a_once = mspan <= MC && mc_pad * a_all <= GEMM_A_ONCE_MAX;
    if (a_once) NC = g->tb && g->nc_small_t ? g->nc_small_t : g->nc_small;
    int64_t nc_pad = round_up(nspan < NC ? nspan : NC, g->nr);
    size_t a_size = (size_t)(mc_pad * (a_once ? a_all : depth(g, kc_max)));
    pack_bufs bufs, *pb = &bufs;
    if (!get_bufs(a_size, (size_t)(nc_pad * depth(g, kc_max)), pb)) {
        int ok = TNN_OK;
        atomic_compare_exchange_strong(&g->status, &ok, TNN_ERR_NOMEM);
        return;
    }
    if (a_once)
        for (int64_t pc = 0; pc < K; pc += KC)
            pack_a(g, m0, mspan, pc, K - pc < KC ? K - pc : KC,
                   pb->a + mc_pad * (pc / KC) * depth(g, kc_max));
    for (int64_t jc = n0; jc < n1; jc += NC) {
        int64_t nc = n1 - jc < NC ? n1 - jc : NC;
        for (int64_t pc = 0; pc < K; pc += KC) {
            int64_t kc = K - pc < KC ? K - pc : KC;
            pack_b(g, pc, kc, jc, nc, pb->b);
            for (int64_t ic = m0; ic < m1; ic += MC) {
                int64_t mc = m1 - ic < MC ? m1 - ic : MC;
                const float *pa = pb->a + mc_pad * (pc / KC) * depth(g, kc_max);
                if (!a_once) {
                    pack_a(g, ic, mc, pc, kc, pb->a);
                    pa = pb->a;
                }
                macro_kernel(g, mc, nc, kc, pa, pb->b, g->C + ic * g->ldc + jc, g->ldc,
                             pc > 0);
                if (g->epi && pc + kc >= K) g->epi->fn(g->epi->ctx, ic, ic + mc, jc, jc + nc);
            }
        }
    }
}

/* One thread's share: units [u0, u1) of columns (or rows). */
static void gemm_range(void *p, int64_t u0, int64_t u1) {
    gemm_job *g = p;
    _Alignas(64) unsigned char state[64];
    bool hooks = g->mode == GEMM_DOT && g->dk->begin;
    if (hooks) g->dk->begin(state);
    if (g->split_n) {
        int64_t n0 = u0 * g->unit, n1 = u1 * g->unit < g->N ? u1 * g->unit : g->N;
        gemm_block(g, 0, g->M, n0, n1);
    } else {
        int64_t m0 = u0 * g->unit, m1 = u1 * g->unit < g->M ? u1 * g->unit : g->M;
        gemm_block(g, m0, m1, 0, g->N);
    }
    if (hooks) g->dk->end(state);
}

/* Multiply-adds a thread should at least get before the pool is worth it. */
#define GEMM_MIN_WORK ((int64_t)1 << 19)

/* The portable skinny products (see tnn__gemm_skinny_fn). */
static void skinny_generic(bool tb, int64_t M, int64_t K, const float *ap, const float *B,
                           int64_t ldb, float *C, int64_t ldc, int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = n0; j < n1; j++) {
            float c = 0.0f;
            for (int64_t k = 0; k < K; k++)
                c = fmaf(ap[k * M + i], tb ? B[j * ldb + k] : B[k * ldb + j], c);
            C[i * ldc + j] = c;
        }
}

static inline float widen_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void skinny_widen_generic(bool tb, int64_t M, int64_t K, const float *ap,
                                 const uint16_t *B, int64_t ldb, float *C, int64_t ldc,
                                 int64_t n0, int64_t n1) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = n0; j < n1; j++) {
            float c = 0.0f;
            for (int64_t k = 0; k < K; k++)
                c = fmaf(ap[k * M + i], widen_bf16(tb ? B[j * ldb + k] : B[k * ldb + j]), c);
            C[i * ldc + j] = c;
        }
}

/* Columns per unit of the skinny split, and bytes of op(B) a thread should
 * at least stream. */
#define SKINNY_UNIT 16
#define SKINNY_MIN_BYTES ((int64_t)1 << 16)

/* g->A is op(A) packed k-major here. A non-transposed op(B) is read 8 rows
 * at a time, each C element's running sum stored back after them; when C's
 * rows are a multiple of 4 KiB apart (1024 floats) they all share L1 sets
 * (with B's rows, when those are too), and the stores hold up the loads of
 * B at the same address bits 0-11. The sums then run in a buffer whose rows
 * are 64 bytes off that multiple, copied to C at the end (the stored floats
 * continue the chains exactly: the same bits): 8x4096x4096 on one thread
 * 3.4 -> 9.0 GB/s of B. */
static void skinny_range(void *p, int64_t u0, int64_t u1) {
    const gemm_job *g = p;
    int64_t n0 = u0 * SKINNY_UNIT, n1 = u1 * SKINNY_UNIT < g->N ? u1 * SKINNY_UNIT : g->N;
    float *C = g->C + n0, *buf = NULL;
    int64_t ldc = g->ldc, w = n1 - n0;
    if (!g->tb && g->M > 1 && g->ldc % 1024 == 0) {
        int64_t ldw = round_up(w, 16) + 16;
        if ((buf = tnn__thread_buf(TNN_TBUF_PACK_B, (size_t)(g->M * ldw)))) C = buf, ldc = ldw;
    }
    /* columns n0.. of op(B) as columns 0.. */
    int64_t boff = g->tb ? n0 * g->ldb : n0;
    if (g->mode == GEMM_WIDEN) {
        tnn__gemm_skinny_bf16_fn f = g->kr->skinny_widen ? g->kr->skinny_widen
                                                         : skinny_widen_generic;
        f(g->tb, g->M, g->K, g->A, g->Bh + boff, g->ldb, C, ldc, 0, w);
    } else {
        tnn__gemm_skinny_fn f = g->kr->skinny ? g->kr->skinny : skinny_generic;
        f(g->tb, g->M, g->K, g->A, g->B + boff, g->ldb, C, ldc, 0, w);
    }
    if (buf)
        for (int64_t i = 0; i < g->M; i++)
            memcpy(g->C + i * g->ldc + n0, buf + i * ldc, (size_t)w * sizeof(float));
    if (g->epi) g->epi->fn(g->epi->ctx, 0, g->M, n0, n1);
}

/* Whether a product takes the skinny path: a few rows of op(A) (more of
 * them when B is transposed) against enough columns to share out, or a
 * single row against any number (x A^T of a LoRA adapter, 8 columns: the
 * packed path is all packing there). */
static bool skinny_fits(bool tb, int64_t M, int64_t N) {
    return (M <= TNN_GEMM_SKINNY_M || (tb && M <= TNN_GEMM_SKINNY_TB_M)) &&
           (N >= SKINNY_UNIT || M == 1);
}

/* Rows of op(A) at most this many floats are packed on the stack. */
#define SKINNY_STACK_A 4096

/* The packed product of g (geometry set): threads split C, then run the
 * loop nest on their share. */
static int gemm_packed(gemm_job *g) {
    /* Split the larger side of C: the other operand is packed by every
     * thread, so it should be the smaller one. Too few units on that side
     * to share out: split the other. */
    int64_t M = g->M, N = g->N, K = g->K;
    int64_t nu = (N + g->nr - 1) / g->nr, mu = (M + g->mr - 1) / g->mr;
    g->split_n = N >= M ? (nu >= 4 || nu >= mu) : !(mu >= 4 || mu >= nu);
    if (g->brows && nu >= 2) g->split_n = true; /* each thread makes only its own B */
    g->unit = g->split_n ? g->nr : g->mr;
    int64_t units = g->split_n ? nu : mu;
    int64_t per_unit = (g->split_n ? M : N) * K * g->unit;
    int64_t min_chunk = per_unit >= GEMM_MIN_WORK ? 1 : (GEMM_MIN_WORK + per_unit - 1) / per_unit;
    tnn__parallel_for(units, min_chunk, gemm_range, g);
    int st = atomic_load(&g->status);
    if (st != TNN_OK)
        return TNN_ERR(st, "out of memory for the packing buffers (M=%lld N=%lld K=%lld)",
                       (long long)M, (long long)N, (long long)K);
    return TNN_OK;
}

/* A few rows (g->mode GEMM_F32 or GEMM_WIDEN): stream op(B) once, no
 * packing; every thread helps once it streams SKINNY_MIN_BYTES. */
static int gemm_skinny(gemm_job *g) {
    int64_t M = g->M, K = g->K, lda = g->lda;
    const float *A = g->A;
    bool ta = g->ta;
    /* op(A) packed k-major (a vector as it is) */
    float stack_a[SKINNY_STACK_A], *ap = stack_a;
    if (M == 1 && (ta ? lda == 1 : true)) {
        ap = (float *)A;
    } else {
        if (M * K > SKINNY_STACK_A && !(ap = malloc((size_t)(M * K) * sizeof *ap)))
            return TNN_ERR(TNN_ERR_NOMEM, "out of memory (M=%lld K=%lld)", (long long)M,
                           (long long)K);
        for (int64_t k = 0; k < K; k++)
            for (int64_t i = 0; i < M; i++) ap[k * M + i] = ta ? A[k * lda + i] : A[i * lda + k];
    }
    g->A = ap;
    int64_t esize = g->mode == GEMM_WIDEN ? 2 : 4;
    int64_t units = (g->N + SKINNY_UNIT - 1) / SKINNY_UNIT, per_unit = K * SKINNY_UNIT * esize;
    tnn__parallel_for(units, (SKINNY_MIN_BYTES + per_unit - 1) / per_unit, skinny_range, g);
    if (ap != stack_a && ap != A) free(ap);
    g->A = A;
    return TNN_OK;
}

static void set_geometry(gemm_job *g, int mr, int nr, int mc, int kc, int nc, int nc_small) {
    g->mr = mr, g->nr = nr, g->mc = mc, g->kc = kc, g->nc = nc, g->nc_small = nc_small;
}

/* C = 0 for K <= 0, then the epilogue over all of it. */
static int gemm_zero(int64_t M, int64_t N, float *C, int64_t ldc, const tnn_gemm_epi *epi) {
    for (int64_t i = 0; i < M; i++) memset(C + i * ldc, 0, (size_t)N * sizeof(float));
    if (epi) epi->fn(epi->ctx, 0, M, 0, N);
    return TNN_OK;
}

int tnn__gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                  const float *B, int64_t ldb, float *C, int64_t ldc) {
    return tnn__gemm_f32_epi(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, NULL);
}

int tnn__gemm_f32_epi(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc,
                      const tnn_gemm_epi *epi) {
    if (M <= 0 || N <= 0) return TNN_OK;
    if (K <= 0) return gemm_zero(M, N, C, ldc, epi);
    gemm_job g = {.mode = GEMM_F32, .kr = kernel_table(tnn__gemm_get_kernel()), .ta = ta,
                  .tb = tb, .M = M, .N = N, .K = K, .A = A, .lda = lda, .B = B, .ldb = ldb,
                  .C = C, .ldc = ldc, .epi = epi};
    set_geometry(&g, g.kr->mr, g.kr->nr, g.kr->mc, g.kr->kc, g.kr->nc, g.kr->nc_small);
    g.nc_small_t = g.kr->nc_small_t;
    atomic_init(&g.status, TNN_OK);
    if (skinny_fits(tb, M, N)) return gemm_skinny(&g);
    return gemm_packed(&g);
}

/* ------------------------------------------------------------------------ */
/* bf16 products                                                            */
/* ------------------------------------------------------------------------ */

static const char *const bf16_path_names[TNN_GEMM_BF16_PATH_COUNT] = {"widen", "dot-scalar",
                                                                      "dot-avx512", "amx"};
_Static_assert(sizeof bf16_path_names / sizeof bf16_path_names[0] == TNN_GEMM_BF16_PATH_COUNT,
               "one name per bf16 path");

const char *tnn__gemm_bf16_path_name(int path) {
    return path >= 0 && path < TNN_GEMM_BF16_PATH_COUNT ? bf16_path_names[path] : "?";
}

int tnn__gemm_bf16_auto_path(void) {
    int k = tnn__gemm_get_kernel();
    return k == TNN_GEMM_AMX          ? TNN_GEMM_BF16_AMX
           : k == TNN_GEMM_AVX512BF16 ? TNN_GEMM_BF16_DOT_AVX512
                                      : TNN_GEMM_BF16_WIDEN;
}

int tnn__gemm_bf16(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                   int64_t lda, const uint16_t *B, int64_t ldb, float *C, int64_t ldc) {
    return tnn__gemm_bf16_epi(path, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, NULL);
}

static int gemm_bf16_run(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, const uint16_t *B, int64_t ldb,
                         const tnn_gemm_brows *brows, float *C, int64_t ldc,
                         const tnn_gemm_epi *epi);

int tnn__gemm_bf16_epi(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                       const float *A, int64_t lda, const uint16_t *B, int64_t ldb, float *C,
                       int64_t ldc, const tnn_gemm_epi *epi) {
    return gemm_bf16_run(path, ta, tb, M, N, K, A, lda, B, ldb, NULL, C, ldc, epi);
}

int tnn__gemm_bf16_rows(int path, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const tnn_gemm_brows *src, float *C, int64_t ldc) {
    if (!src || !src->rows) return TNN_ERR(TNN_ERR_ARG, "NULL rows of B");
    return gemm_bf16_run(path, false, !src->by_k, M, N, K, A, lda, NULL, src->by_k ? N : K, src,
                         C, ldc, NULL);
}

static int gemm_bf16_run(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, const uint16_t *B, int64_t ldb,
                         const tnn_gemm_brows *brows, float *C, int64_t ldc,
                         const tnn_gemm_epi *epi) {
    if (path == TNN_GEMM_BF16_AUTO) path = tnn__gemm_bf16_auto_path();
    if (path < 0 || path >= TNN_GEMM_BF16_PATH_COUNT)
        return TNN_ERR(TNN_ERR_ARG, "bf16 path %d: want -1 (auto) or 0..%d", path,
                       TNN_GEMM_BF16_PATH_COUNT - 1);
    if (path == TNN_GEMM_BF16_DOT_AVX512 && !tnn__gemm_kernel_supported(TNN_GEMM_AVX512BF16))
        return TNN_ERR(TNN_ERR_ARG, "bf16 path dot-avx512 needs AVX512_BF16, which this CPU "
                                    "does not report");
    if (path == TNN_GEMM_BF16_AMX && !tnn__gemm_kernel_supported(TNN_GEMM_AMX))
        return TNN_ERR(TNN_ERR_ARG, "bf16 path amx needs AMX-BF16, which this CPU does not "
                                    "report or the OS does not grant");
    if (M <= 0 || N <= 0) return TNN_OK;
    if (K <= 0) return gemm_zero(M, N, C, ldc, epi);
    gemm_job g = {.ta = ta, .tb = tb, .M = M, .N = N, .K = K, .A = A, .lda = lda, .Bh = B,
                  .ldb = ldb, .C = C, .ldc = ldc, .epi = epi, .brows = brows};
    atomic_init(&g.status, TNN_OK);
    if (path == TNN_GEMM_BF16_AMX && skinny_fits(tb, M, N) && !brows)
        path = TNN_GEMM_BF16_WIDEN; /* a few rows: memory-bound, streamed */
    if (path == TNN_GEMM_BF16_WIDEN) {
        /* Every k of the packed panels holds f32 values equal to B's, so the
         * f32 kernel computes the same chains as tnn__gemm_f32 on widen(B);
         * a few rows take the skinny kernels, widening B as it streams by
         * (the same chains again). */
        g.mode = GEMM_WIDEN;
        g.kr = kernel_table(tnn__gemm_get_kernel());
        set_geometry(&g, g.kr->mr, g.kr->nr, g.kr->mc, g.kr->kc, g.kr->nc, g.kr->nc_small);
        g.nc_small_t = g.kr->nc_small_t;
        if (skinny_fits(tb, M, N) && !brows) return gemm_skinny(&g);
    } else {
        g.mode = GEMM_DOT;
#if defined(TNN_GEMM_X86)
        g.dk = path == TNN_GEMM_BF16_AMX          ? &tnn__gemm_dot_kernel_amx
               : path == TNN_GEMM_BF16_DOT_AVX512 ? &tnn__gemm_dot_kernel_avx512bf16
                                                  : &tnn__gemm_dot_kernel_scalar;
#else
        g.dk = &tnn__gemm_dot_kernel_scalar;
#endif
        set_geometry(&g, g.dk->mr, g.dk->nr, g.dk->mc, g.dk->kc, g.dk->nc, g.dk->nc_small);
    }
    return gemm_packed(&g);
}
