/* gemm.h - internals of the packed f32 GEMM (src/cpu/gemm*.c): the
 * micro-kernel interface each instruction-set file implements, and the
 * kernel choice (CPU features, TNN_KERNEL, or a test's explicit setting).
 */
#ifndef TNN_GEMM_H
#define TNN_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* Kernel ids; values are fixed. TNN_GEMM_AUTO means "what the CPU and
 * TNN_KERNEL pick". */
enum {
    TNN_GEMM_AUTO = -1,
    TNN_GEMM_SCALAR = 0,
    TNN_GEMM_AVX2 = 1,
    TNN_GEMM_AVX512 = 2,
    TNN_GEMM_KERNEL_COUNT = 3
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

/* The transposing pack: dst[k*w + c] = src[c*lds + k] for c < valid and
 * k < kc, and 0 for valid <= c < w. It packs the panels whose source runs
 * along k: op(A) when A is not transposed, op(B) when B is. dst is 32-byte
 * aligned when w is a multiple of 8. Pure data movement: it changes no bits. */
typedef void (*tnn__gemm_pack_fn)(float *dst, const float *src, int64_t lds, int64_t kc, int w,
                                  int valid);

/* Skinny product: C[0:M, n0:n1] = op(A) (M x K) @ op(B)[:, n0:n1] for
 * 1 <= M <= TNN_GEMM_SKINNY_M, streaming op(B) once without packing it (LLM
 * decoding, small batches). op(A) comes packed k-major: ap[k*M + i] =
 * op(A)[i][k]. Each C element is one fma chain over ascending k from +0, so
 * it gives the same bits as the packed path. */
typedef void (*tnn__gemm_skinny_fn)(bool tb, int64_t M, int64_t K, const float *ap,
                                    const float *B, int64_t ldb, float *C, int64_t ldc,
                                    int64_t n0, int64_t n1);
#define TNN_GEMM_SKINNY_M 8

typedef struct {
    const char *name;
    int mr, nr;         /* register tile (mr <= TNN_GEMM_MR_MAX, nr <= TNN_GEMM_NR_MAX) */
    int mc, kc, nc;     /* cache blocks: mc a multiple of mr, nc of nr */
    int nc_small;       /* nc when op(A) is one block (few rows): B panels stay in L2 */
    tnn__gemm_ukr_fn ukr;
    tnn__gemm_pack_fn pack_t; /* NULL: the portable one in gemm.c */
    tnn__gemm_skinny_fn skinny; /* NULL: the portable one in gemm.c */
} tnn__gemm_kernel;

#define TNN_GEMM_MR_MAX 16
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
/* The AVX2 skinny product, likewise shared. */
void tnn__gemm_skinny_avx2(bool tb, int64_t M, int64_t K, const float *ap, const float *B,
                           int64_t ldb, float *C, int64_t ldc, int64_t n0, int64_t n1);
#endif

/* Whether kernel `id` can run on this CPU (and was built). */
bool tnn__gemm_kernel_supported(int id);
/* "scalar", "avx2", "avx512", or "?" */
const char *tnn__gemm_kernel_name(int id);
/* Selects the kernel for every later call in the process; TNN_GEMM_AUTO
 * returns to the default (TNN_KERNEL, else the best the CPU supports).
 * Returns TNN_OK, or TNN_ERR_ARG (recorded) when `id` is unknown or not
 * supported here (the selection is then unchanged). Not meant to be called
 * while another thread is inside a GEMM (the switch is atomic, but a call in
 * flight may use either kernel). */
int tnn__gemm_set_kernel(int id);
/* The kernel that the next call uses. */
int tnn__gemm_get_kernel(void);

#endif
