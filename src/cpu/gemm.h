/* gemm.h - internals of the packed GEMM (src/cpu/gemm*.c): the f32
 * micro-kernel interface each instruction-set file implements, the bf16
 * products (f32 activations times bf16 weights) and their kernels, and the
 * kernel choice (CPU features, TNN_KERNEL, or a test's explicit setting).
 */
#ifndef TNN_GEMM_H
#define TNN_GEMM_H

#include "../ops/kernels.h"

#include <stdbool.h>
#include <stdint.h>

/* Kernel ids; values are fixed. TNN_GEMM_AUTO means "what the CPU and
 * TNN_KERNEL pick". TNN_GEMM_AVX512BF16 runs f32 products on the AVX-512
 * kernel and bf16 products through vdpbf16ps (gemm_avx512bf16.c);
 * TNN_GEMM_AMX f32 products on the AVX-512 kernel and bf16 products on the
 * AMX tiles (gemm_amx.c); every other id runs bf16 products by widening the
 * weights to f32 for that id's f32 kernel (see tnn__gemm_bf16). */
enum {
    TNN_GEMM_AUTO = -1,
    TNN_GEMM_SCALAR = 0,
    TNN_GEMM_AVX2 = 1,
    TNN_GEMM_AVX512 = 2,
    TNN_GEMM_AVX512BF16 = 3,
    TNN_GEMM_AMX = 4,
    TNN_GEMM_KERNEL_COUNT = 5
};

/* The micro-kernel: C (mr x nr, row stride ldc) = a running sum over
 * k = 0..kc-1 of a[k*mr + i] * b[k*nr + j], one fused multiply-add per step
 * in ascending k. When load_c is 0 the sums start from +0; otherwise they
 * continue from the values in C (the previous K block's running sums), so
 * each C element is ONE ascending fma chain over the whole K whatever the
 * blocking: that is what keeps every route and kernel bit-identical.
 * a: packed mr x kc micro-panel (column of mr values per k);
 * b: packed kc x nr micro-panel (row of nr values per k), 32-byte aligned. */
typedef void (*tnn__gemm_ukr_fn)(int64_t kc, const float *a, const float *b, float *c,
                                 int64_t ldc, int load_c);

/* The same for the first m rows (1 <= m < mr) of a full-width tile: a is
 * still packed mr values per k (rows m.. are ignored), only C's rows
 * 0..m-1 are read and written. The same chains, hence the same bits. */
typedef void (*tnn__gemm_ukr_rows_fn)(int m, int64_t kc, const float *a, const float *b,
                                      float *c, int64_t ldc, int load_c);

/* Rows of the source the non-transposing packs (gemm.c's pack_n and
 * gemm_bf16.c's pack_n_widen) read side by side, panel by panel: several
 * streams of misses in flight rather than one row at a time. */
#define TNN_GEMM_PACK_ROWS 8

/* The transposing pack: dst[k*w + c] = src[c*lds + k] for c < valid and
 * k < kc, and 0 for valid <= c < w. It packs the panels whose source runs
 * along k: op(A) when A is not transposed, op(B) when B is. dst is 32-byte
 * aligned when w is a multiple of 8. Pure data movement: it changes no bits. */
typedef void (*tnn__gemm_pack_fn)(float *dst, const float *src, int64_t lds, int64_t kc, int w,
                                  int valid);

/* Skinny product: C[0:M, n0:n1] = op(A) (M x K) @ op(B)[:, n0:n1] for
 * 1 <= M <= TNN_GEMM_SKINNY_M, or up to TNN_GEMM_SKINNY_TB_M when B is
 * transposed (tb: B stored N x K, weights as rows), streaming op(B) once
 * without packing it (LLM decoding, small batches). op(A) comes packed
 * k-major: ap[k*M + i] = op(A)[i][k]. Each C element is one fma chain over
 * ascending k from +0, so it gives the same bits as the packed path. */
typedef void (*tnn__gemm_skinny_fn)(bool tb, int64_t M, int64_t K, const float *ap,
                                    const float *B, int64_t ldb, float *C, int64_t ldc,
                                    int64_t n0, int64_t n1);
#define TNN_GEMM_SKINNY_M 8
#define TNN_GEMM_SKINNY_TB_M 16

/* The same for bf16 B widened to f32 as it is read (exact): the bits of
 * tnn__gemm_skinny_fn on widen(B), hence of the packed widening path. */
typedef void (*tnn__gemm_skinny_bf16_fn)(bool tb, int64_t M, int64_t K, const float *ap,
                                         const uint16_t *B, int64_t ldb, float *C, int64_t ldc,
                                         int64_t n0, int64_t n1);

/* The transposing pack of bf16 products that widen their weights: as
 * tnn__gemm_pack_fn, with src bf16 and each value widened to f32 (exact). */
typedef void (*tnn__gemm_pack_bf16_fn)(float *dst, const uint16_t *src, int64_t lds, int64_t kc,
                                       int w, int valid);

typedef struct {
    const char *name;
    int mr, nr;         /* register tile (mr <= TNN_GEMM_MR_MAX, nr <= TNN_GEMM_NR_MAX) */
    int mc, kc, nc;     /* cache blocks: mc a multiple of mr, nc of nr */
    int nc_small;       /* nc when op(A) is one block (few rows): B panels stay in L2 */
    int nc_small_t;     /* the same when B is transposed (0: nc_small) */
    tnn__gemm_ukr_fn ukr;
    tnn__gemm_ukr_rows_fn ukr_rows; /* NULL: edge rows go through a buffer */
    tnn__gemm_pack_fn pack_t; /* NULL: the portable one in gemm.c */
    tnn__gemm_skinny_fn skinny; /* NULL: the portable one in gemm.c */
    tnn__gemm_pack_bf16_fn pack_t_widen; /* NULL: the portable one in gemm_bf16.c */
    tnn__gemm_skinny_bf16_fn skinny_widen; /* NULL: the portable one in gemm.c */
} tnn__gemm_kernel;

#define TNN_GEMM_MR_MAX 32
#define TNN_GEMM_NR_MAX 32

/* Defined by gemm_scalar.c (always) and, on x86, gemm_avx2.c / gemm_avx512.c. */
extern const tnn__gemm_kernel tnn__gemm_kernel_scalar;
#if defined(__x86_64__) || defined(__i386__)
#define TNN_GEMM_X86 1
extern const tnn__gemm_kernel tnn__gemm_kernel_avx2;
extern const tnn__gemm_kernel tnn__gemm_kernel_avx512;
/* The AVX2 transposing pack (8x8 register transposes), shared by the AVX2
 * and AVX-512 kernels (every avx512f CPU has AVX2). */
void tnn__gemm_pack_t_avx2(float *dst, const float *src, int64_t lds, int64_t kc, int w,
                           int valid);
/* The AVX2 skinny products (f32 B, bf16 B widened), likewise shared. */
void tnn__gemm_skinny_avx2(bool tb, int64_t M, int64_t K, const float *ap, const float *B,
                           int64_t ldb, float *C, int64_t ldc, int64_t n0, int64_t n1);
void tnn__gemm_skinny_widen_avx2(bool tb, int64_t M, int64_t K, const float *ap,
                                 const uint16_t *B, int64_t ldb, float *C, int64_t ldc,
                                 int64_t n0, int64_t n1);
#endif

/* Whether kernel `id` can run on this CPU (and was built). AVX512BF16 needs
 * CPUID leaf 7 subleaf 1 EAX bit 5 and the OS saving the zmm state. */
bool tnn__gemm_kernel_supported(int id);
/* "scalar", "avx2", "avx512", "avx512bf16", or "?" */
const char *tnn__gemm_kernel_name(int id);
/* Whether the bf16 dot kernel is the faster bf16 path on this CPU (AMD's,
 * where vdpbf16ps runs at the f32 FMA's rate; Intel's run it at half that).
 * The default kernel is TNN_GEMM_AVX512BF16 only where this holds. */
bool tnn__gemm_dot_preferred(void);
/* Selects the kernel for every later call in the process; TNN_GEMM_AUTO
 * returns to the default (TNN_KERNEL, else the best the CPU supports: on an
 * Intel CPU with AVX512_BF16 that is TNN_GEMM_AVX512, see above).
 * Returns TNN_OK, or TNN_ERR_ARG (recorded) when `id` is unknown or not
 * supported here (the selection is then unchanged). Not meant to be called
 * while another thread is inside a GEMM (the switch is atomic, but a call in
 * flight may use either kernel). */
int tnn__gemm_set_kernel(int id);
/* The kernel that the next call uses. */
int tnn__gemm_get_kernel(void);

/* ------------------------------------------------------------------------ */
/* bf16 products: C (f32) = op(A) @ op(B), A f32 (activations), B bf16      */
/* ------------------------------------------------------------------------ */

/* The paths of a bf16 product; values are fixed.
 *   WIDEN       B widened to f32 while packing (exact), the selected f32
 *               kernel: the bits of tnn__gemm_f32 on (A, widen(B)).
 *   DOT_SCALAR  the scalar twin of DOT_AVX512: the same bits.
 *   DOT_AVX512  vdpbf16ps: A rounded to bf16 while packing, then per k pair
 *               the semantics of tnn__gemm_dot_step (gemm_bf16.c).
 *   AMX         TDPBF16PS on the AMX tiles: A rounded to bf16 while packing,
 *               exact products, f32 sums in the tiles' own order (no scalar
 *               twin; within the dot path's error bound). A few rows (the
 *               skinny shapes) take the widening path's skinny kernels.
 * TNN_GEMM_BF16_AUTO is AMX when the selected kernel is TNN_GEMM_AMX (the
 * default where the CPU has AMX-BF16 and the OS grants the tiles),
 * DOT_AVX512 when it is TNN_GEMM_AVX512BF16 (the default where the CPU has
 * AVX512_BF16 and tnn__gemm_dot_preferred), else WIDEN. */
enum {
    TNN_GEMM_BF16_AUTO = -1,
    TNN_GEMM_BF16_WIDEN = 0,
    TNN_GEMM_BF16_DOT_SCALAR = 1,
    TNN_GEMM_BF16_DOT_AVX512 = 2,
    TNN_GEMM_BF16_AMX = 3,
    TNN_GEMM_BF16_PATH_COUNT = 4
};

/* C (M x N, row stride ldc) = op(A) @ op(B) through `path`. op(A) = A^T when
 * ta (A stored K x M), op(B) = B^T when tb (B stored N x K); leading
 * dimensions are row strides in elements. Any thread count gives the same
 * bits (threads split C's columns or rows, never K). Returns TNN_OK,
 * TNN_ERR_NOMEM, or TNN_ERR_ARG for an unknown path or DOT_AVX512 on a CPU
 * without AVX512_BF16 (recorded). */
int tnn__gemm_bf16(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A,
                   int64_t lda, const uint16_t *B, int64_t ldb, float *C, int64_t ldc);
/* With an epilogue (NULL: none; see tnn_gemm_epi in ops/kernels.h). */
int tnn__gemm_bf16_epi(int path, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                       const float *A, int64_t lda, const uint16_t *B, int64_t ldb, float *C,
                       int64_t ldc, const tnn_gemm_epi *epi);
/* B^T given by its rows on demand instead of in memory: rows(ctx, j0, nc,
 * k0, kc, dst) writes B[j][k] for j0 <= j < j0+nc, k0 <= k < k0+kc as bf16
 * to dst[(j - j0) * kc + (k - k0)]. The packs call it for each panel, on
 * the thread that packs (so it must be safe to call from several threads
 * at once): a prompt's quantized weights are dequantized a panel at a time
 * straight into the cache instead of into a bf16 copy of the whole matrix
 * first. */
typedef struct {
    void (*rows)(void *ctx, int64_t j0, int64_t nc, int64_t k0, int64_t kc, uint16_t *dst);
    void *ctx;
    /* true: B's own rows instead (B K x N): rows(ctx, j0, nc, k0, kc, dst)
     * writes B[k][j] to dst[(k - k0) * nc + (j - j0)], the same values by k
     * (a product with quantized weights W as B: W's row blocks) */
    bool by_k;
} tnn_gemm_brows;
/* C (M x N) = A (M x K, row stride lda) @ B^T, B (N x K) given by `src`:
 * the bits tnn__gemm_bf16 gives on (A, B) with B transposed in memory, on
 * any path, except that a few rows (which tnn__gemm_bf16 hands to the
 * skinny kernels) take the packed path: on the AMX path their bits are
 * then the tiles' (each row of C as in a product of more rows). */
int tnn__gemm_bf16_rows(int path, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                        const tnn_gemm_brows *src, float *C, int64_t ldc);
/* "widen", "dot-scalar", "dot-avx512", or "?" */
const char *tnn__gemm_bf16_path_name(int path);
/* The path TNN_GEMM_BF16_AUTO takes now. */
int tnn__gemm_bf16_auto_path(void);

/* f32 -> bf16 as the dot path rounds activations (VCVTNEPS2BF16): nearest
 * even; zeros and f32 subnormals give a zero of the same sign; NaN stays a
 * quiet NaN (the upper half with the quiet bit set); infinities stay. */
uint16_t tnn__gemm_bf16_round(float x);
/* One step of the dot path, as VDPBF16PS does it per f32 lane: a*b + acc
 * computed exactly and rounded once to nearest even, with a, b and acc
 * zero when subnormal (DAZ) and a tiny result (|r| < 2^-126, tininess
 * detected after rounding as x86 does) flushed to a zero of its sign (FTZ).
 * a and b are widened bf16 values (their product is exact in f32). */
float tnn__gemm_dot_step(float acc, float a, float b);

/* The dot micro-kernel: C (mr x nr, row stride ldc) over kp pairs of k.
 * a: mr words per pair (word i = bf16 of row i at k = 2p in the low half,
 * 2p+1 in the high half); b: nr words per pair (word j likewise for column
 * j), 64-byte aligned. Per C element and pair p, in ascending p:
 *   acc = step(acc, a.hi, b.hi); acc = step(acc, a.lo, b.lo)
 * (the odd k first, as the Intel SDM's pseudo-code orders them), from +0
 * when load_c is 0, else continuing from C. An odd K is padded with a zero
 * pair half. */
typedef void (*tnn__gemm_dot_ukr_fn)(int64_t kp, const uint32_t *a, const uint32_t *b, float *c,
                                     int64_t ldc, int load_c);
typedef void (*tnn__gemm_dot_pack_a_fn)(uint32_t *dst, bool ta, const float *A, int64_t lda,
                                        int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr);
typedef void (*tnn__gemm_dot_pack_b_fn)(uint32_t *dst, bool tb, const uint16_t *B, int64_t ldb,
                                        int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr);
typedef struct {
    const char *name;
    int mr, nr;       /* mr <= TNN_GEMM_MR_MAX, nr <= TNN_GEMM_NR_MAX */
    int mc, kc, nc;   /* kc even: a K block never splits a pair */
    int nc_small;
    int kstep;        /* packed panels hold a multiple of this many pairs,
                       * zero pairs after K's (0 or 1: exactly K's) */
    tnn__gemm_dot_ukr_fn ukr;
    /* The packs compiled for this kernel's instruction set (the same bytes
     * as tnn__gemm_dot_pack_a/b, gemm_dot_pack.h); NULL: those. */
    tnn__gemm_dot_pack_a_fn pack_a;
    tnn__gemm_dot_pack_b_fn pack_b;
    /* Around each thread's share of a product (NULL: nothing): begin gets
     * 64 bytes, 64-aligned, that end gets back (the AMX kernel keeps the
     * thread's own tile configuration there and restores it, or releases
     * the tiles, at the end). */
    void (*begin)(void *state);
    void (*end)(const void *state);
} tnn__gemm_dot_kernel;

/* gemm_bf16.c (always), gemm_avx512bf16.c and gemm_amx.c (x86). */
extern const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_scalar;
#if defined(TNN_GEMM_X86)
extern const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_avx512bf16;
extern const tnn__gemm_dot_kernel tnn__gemm_dot_kernel_amx;
/* Asks Linux once for this process's use of the AMX tile data; whether it
 * was granted. */
bool tnn__gemm_amx_enable(void);
/* For tests, on a CPU with AMX and the permission granted: the calling
 * thread's tile palette (0: its tiles are released) and tile 0's rows; and a
 * configuration of its own for it (tile 0 rows0 x 64 bytes; 0: release). */
int tnn__gemm_amx_palette(int *rows0);
void tnn__gemm_amx_set_own(int rows0);
#endif

/* Packing for bf16 products (gemm_bf16.c); each only moves and converts.
 * Widening (exact), like tnn__gemm_pack_fn and gemm.c's pack_n:
 *   pack_t_widen: dst[k*w + c] = src[c*lds + k] for c < valid, else 0;
 *   pack_n_widen: for each k the run src[k*lds + 0 : n] cut into panels of
 *                 w (panel q at dst + q*w*kc), zero past n. */
void tnn__gemm_bf16_pack_t_widen(float *dst, const uint16_t *src, int64_t lds, int64_t kc, int w,
                                 int valid);
void tnn__gemm_bf16_pack_n_widen(float *dst, const uint16_t *src, int64_t lds, int64_t kc,
                                 int64_t n, int w);
/* The AVX2 pack_t_widen (gemm_avx2.c, 8x8 transposes): the same output. */
#if defined(TNN_GEMM_X86)
void tnn__gemm_bf16_pack_t_widen_avx2(float *dst, const uint16_t *src, int64_t lds, int64_t kc,
                                      int w, int valid);
#endif
/* Pair panels for the dot kernels, (kc+1)/2 pairs deep: op(A)[i0 : i0+mc,
 * k0 : k0+kc] rounded by tnn__gemm_bf16_round, the panel of rows
 * i0+p ... i0+p+mr-1 at dst + p*((kc+1)/2); op(B)[k0 : k0+kc, j0 : j0+nc],
 * the panel of columns j0+q ... at dst + q*((kc+1)/2). Zero past mc / nc
 * and past kc. k0 is even. */
void tnn__gemm_dot_pack_a(uint32_t *dst, bool ta, const float *A, int64_t lda, int64_t i0,
                          int64_t mc, int64_t k0, int64_t kc, int mr);
void tnn__gemm_dot_pack_b(uint32_t *dst, bool tb, const uint16_t *B, int64_t ldb, int64_t k0,
                          int64_t kc, int64_t j0, int64_t nc, int nr);

#endif
