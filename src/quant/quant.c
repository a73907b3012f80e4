/* quant.c - GGUF tensor types: the type table, f16/bf16 conversion, the
 * portable scalar twin of every kernel (the test oracle), quantization of
 * weights and activations, and the run-time kernel choice and threaded
 * matrix-vector entry point. Layouts and the rounding contract: quant.h.
 */
#include "quant_impl.h"
#include "qdot.h"

#include "../core/internal.h"
#include "../cpu/pool.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(TNN_QUANT_X86)
#include <cpuid.h>
#endif

_Static_assert(sizeof(tnn_block_q8_0) == 34, "Q8_0 block");
_Static_assert(sizeof(tnn_block_q4_0) == 18, "Q4_0 block");
_Static_assert(sizeof(tnn_block_q4_1) == 20, "Q4_1 block");
_Static_assert(sizeof(tnn_block_q5_0) == 22, "Q5_0 block");
_Static_assert(sizeof(tnn_block_q5_1) == 24, "Q5_1 block");
_Static_assert(sizeof(tnn_block_q4_K) == 144, "Q4_K block");
_Static_assert(sizeof(tnn_block_q5_K) == 176, "Q5_K block");
_Static_assert(sizeof(tnn_block_q6_K) == 210, "Q6_K block");

/* ------------------------------------------------------------------------ */
/* Type table                                                               */
/* ------------------------------------------------------------------------ */

static const tnn_qtype_info qtypes[TNN_QT_COUNT] = {
    [TNN_QT_F32] = {"F32", 1, 4, true},
    [TNN_QT_F16] = {"F16", 1, 2, true},
    [TNN_QT_Q4_0] = {"Q4_0", TNN_QK, sizeof(tnn_block_q4_0), true},
    [TNN_QT_Q4_1] = {"Q4_1", TNN_QK, sizeof(tnn_block_q4_1), true},
    [TNN_QT_Q5_0] = {"Q5_0", TNN_QK, sizeof(tnn_block_q5_0), true},
    [TNN_QT_Q5_1] = {"Q5_1", TNN_QK, sizeof(tnn_block_q5_1), true},
    [TNN_QT_Q8_0] = {"Q8_0", TNN_QK, sizeof(tnn_block_q8_0), true},
    [TNN_QT_Q4_K] = {"Q4_K", TNN_QK_K, sizeof(tnn_block_q4_K), false},
    [TNN_QT_Q5_K] = {"Q5_K", TNN_QK_K, sizeof(tnn_block_q5_K), false},
    [TNN_QT_Q6_K] = {"Q6_K", TNN_QK_K, sizeof(tnn_block_q6_K), false},
    [TNN_QT_BF16] = {"BF16", 1, 2, true},
};

const tnn_qtype_info *tnn__qtype(int type) {
    if (type < 0 || type >= TNN_QT_COUNT || !qtypes[type].name)
        return NULL;
    return &qtypes[type];
}

int64_t tnn__qtype_row_bytes(int type, int64_t n) {
    const tnn_qtype_info *t = tnn__qtype(type);
    if (!t)
        return TNN_ERR(TNN_ERR_ARG, "type %d is not a supported GGUF tensor type", type), -1;
    if (n < 0 || n > TNN_MAX_ELEMENTS || n % t->block)
        return TNN_ERR(TNN_ERR_ARG, "%s row of %lld elements: want a multiple of %d", t->name,
                       (long long)n, (int)t->block),
               -1;
    return n / t->block * t->block_bytes;
}

/* ------------------------------------------------------------------------ */
/* Conversions                                                              */
/* ------------------------------------------------------------------------ */

float tnn__f16_to_f32(uint16_t h) { return tnn__h2f(h); }
uint16_t tnn__f32_to_f16(float f) { return tnn__f2h(f); }
float tnn__bf16_to_f32(uint16_t h) { return tnn__bf2f(h); }
uint16_t tnn__f32_to_bf16(float f) { return tnn__f2bf(f); }

#define F16(h) tnn__h2f(h)

/* ------------------------------------------------------------------------ */
/* Scalar dequantization (qdecode.h decodes each block)                     */
/* ------------------------------------------------------------------------ */

static void deq_f32(const void *src, float *dst, int64_t n) {
    memcpy(dst, src, (size_t)n * sizeof(float));
}

static void deq_f16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = F16(s[i]);
}

static void deq_bf16(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++)
        dst[i] = tnn__bf2f(s[i]);
}

#define DEQ_BLOCKS(name, type, bs)                                                            \
    static void deq_##name(const void *src, float *dst, int64_t n) {                          \
        const type *b = src;                                                                  \
        for (int64_t k = 0; k < n / (bs); k++)                                                \
            tnn__deq_##name(b + k, dst + (bs) * k);                                           \
    }
DEQ_BLOCKS(q8_0, tnn_block_q8_0, TNN_QK)
DEQ_BLOCKS(q4_0, tnn_block_q4_0, TNN_QK)
DEQ_BLOCKS(q4_1, tnn_block_q4_1, TNN_QK)
DEQ_BLOCKS(q5_0, tnn_block_q5_0, TNN_QK)
DEQ_BLOCKS(q5_1, tnn_block_q5_1, TNN_QK)
DEQ_BLOCKS(q4_K, tnn_block_q4_K, TNN_QK_K)
DEQ_BLOCKS(q5_K, tnn_block_q5_K, TNN_QK_K)
DEQ_BLOCKS(q6_K, tnn_block_q6_K, TNN_QK_K)
#undef DEQ_BLOCKS

/* ------------------------------------------------------------------------ */
/* Quantization of weights (byte-identical to the gguf package)             */
/* ------------------------------------------------------------------------ */

/* Index of the first element of largest magnitude (numpy argmax of |x|). */
static int absmax_index(const float *x, int n) {
    int k = 0;
    float amax = fabsf(x[0]);
    for (int i = 1; i < n; i++)
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            k = i;
        }
    return k;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo)
            lo = x[i];
        if (x[i] > hi)
            hi = x[i];
    }
    *mn = lo;
    *mx = hi;
}

/* trunc(v) as an unsigned code clamped to [0, top] (v is >= 0 for finite input). */
static inline int trunc_code(float v, int top) {
    if (!(v > 0.0f))
        return 0;
    if (v >= (float)top)
        return top;
    return (int)v;
}

static void quant_q8_0(const float *x, void *dst, int64_t n) {
    tnn_block_q8_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        for (int i = 0; i < 32; i++) {
            float v = roundf(x[i] * id);
            v = v > -128.0f ? v : -128.0f;
            v = v < 127.0f ? v : 127.0f;
            b->qs[i] = (int8_t)v;
        }
    }
}

static void quant_q4_0(const float *x, void *dst, int64_t n) {
    tnn_block_q4_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float mx = x[absmax_index(x, 32)];
        float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        for (int i = 0; i < 16; i++) {
            int q0 = trunc_code(x[i] * id + 8.5f, 15);
            int q1 = trunc_code(x[i + 16] * id + 8.5f, 15);
            b->qs[i] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quant_q4_1(const float *x, void *dst, int64_t n) {
    tnn_block_q4_1 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float lo, hi;
        minmax(x, 32, &lo, &hi);
        float d = (hi - lo) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        b->d = tnn__f32_to_f16(d);
        b->m = tnn__f32_to_f16(lo);
        for (int i = 0; i < 16; i++) {
            int q0 = trunc_code((x[i] - lo) * id + 0.5f, 15);
            int q1 = trunc_code((x[i + 16] - lo) * id + 0.5f, 15);
            b->qs[i] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void pack_q5(const int q[32], uint8_t qh[4], uint8_t qs[16]) {
    uint32_t h = 0;
    for (int i = 0; i < 32; i++)
        h |= (uint32_t)((q[i] >> 4) & 1) << i;
    for (int i = 0; i < 4; i++)
        qh[i] = (uint8_t)(h >> (8 * i));
    for (int i = 0; i < 16; i++)
        qs[i] = (uint8_t)((q[i] & 15) | (q[i + 16] & 15) << 4);
}

static void quant_q5_0(const float *x, void *dst, int64_t n) {
    tnn_block_q5_0 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float mx = x[absmax_index(x, 32)];
        float d = mx / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int i = 0; i < 32; i++)
            q[i] = trunc_code(x[i] * id + 16.5f, 31);
        b->d = tnn__f32_to_f16(d);
        pack_q5(q, b->qh, b->qs);
    }
}

static void quant_q5_1(const float *x, void *dst, int64_t n) {
    tnn_block_q5_1 *b = dst;
    for (int64_t k = 0; k < n / TNN_QK; k++, b++, x += 32) {
        float lo, hi;
        minmax(x, 32, &lo, &hi);
        float d = (hi - lo) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[32];
        for (int i = 0; i < 32; i++)
            q[i] = trunc_code((x[i] - lo) * id + 0.5f, 31);
        b->d = tnn__f32_to_f16(d);
        b->m = tnn__f32_to_f16(lo);
        pack_q5(q, b->qh, b->qs);
    }
}

int tnn__quantize_row(int type, const float *src, void *dst, int64_t n) {
    if (tnn__qtype_row_bytes(type, n) < 0)
        return TNN_ERR_ARG;
    if (n && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    switch (type) {
    case TNN_QT_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return TNN_OK;
    case TNN_QT_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = tnn__f32_to_f16(src[i]);
        return TNN_OK;
    case TNN_QT_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = tnn__f32_to_bf16(src[i]);
        return TNN_OK;
    case TNN_QT_Q8_0: quant_q8_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q4_0: quant_q4_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q4_1: quant_q4_1(src, dst, n); return TNN_OK;
    case TNN_QT_Q5_0: quant_q5_0(src, dst, n); return TNN_OK;
    case TNN_QT_Q5_1: quant_q5_1(src, dst, n); return TNN_OK;
    default:
        return TNN_ERR(TNN_ERR_ARG, "quantization to %s is not implemented",
                       tnn__qtype(type)->name);
    }
}

/* ------------------------------------------------------------------------ */
/* Activations: x quantized to 8 bits for the integer dot products          */
/* ------------------------------------------------------------------------ */


int64_t tnn__qact_bytes(int wtype, int64_t n) {
    if (tnn__qtype_row_bytes(wtype, n) < 0)
        return -1;
    if (tnn__qt_is_float(wtype))
        return 0;
    if (tnn__qt_is_k(wtype)) {
        int64_t nb = n / TNN_QK_K;
        return tnn__round64(n) + tnn__round64(nb * 4) + tnn__round64(nb * 16 * 2);
    }
    int64_t nb = n / TNN_QK;
    return tnn__round64(n) + 3 * tnn__round64(nb * 4);
}

/* One activation code: v clamped to [-127, 127] (NaN -> -127), rounded half
 * away from zero (= roundf; exact, as a - t is exact below 2^23). */
static void act_scalar(const float *x, int64_t nb, int bs, int8_t *q, float *d) {
    for (int64_t b = 0; b < nb; b++)
        tnn__act_block(x + b * bs, bs, q + b * bs, d + b);
}

static const tnn_qkernels *kernels(int id);
static int prepare(tnn_qact *a, int kernel, int wtype, const float *x, int64_t n, void *work);

int tnn__qact_prepare(tnn_qact *a, int wtype, const float *x, int64_t n, void *work) {
    return prepare(a, tnn__quant_get_kernel(), wtype, x, n, work);
}

static int prepare(tnn_qact *a, int kernel, int wtype, const float *x, int64_t n, void *work) {
    int64_t bytes = tnn__qact_bytes(wtype, n);
    if (bytes < 0)
        return TNN_ERR_ARG;
    if (bytes && !work)
        return TNN_ERR(TNN_ERR_ARG, "NULL workspace");
    tnn__qact_layout(a, wtype, x, n, work);
    if (bytes == 0)
        return TNN_OK;
    int bs = tnn__qt_is_k(wtype) ? TNN_QK_K : TNN_QK;
    int64_t nb = n / bs;
    tnn_qact_fn act = kernels(kernel)->act;
    (act ? act : act_scalar)(x, nb, bs, a->q, a->d);
    for (int64_t b = 0; b < nb; b++)
        tnn__act_sums(a, b);
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Scalar dot products (the oracle: quant.h states the contract)            */
/* ------------------------------------------------------------------------ */

/* The scalar twin: each row through qdot.h, which the GPU shares. */
static void dot_rows(const tnn_qact *a, const void *w, size_t rb, int64_t rows, float *y) {
    for (int64_t r = 0; r < rows; r++)
        y[r] = tnn__qdot_row(a, (const uint8_t *)w + r * rb);
}

const tnn_qkernels tnn__qk_scalar = {
    .name = "scalar",
    .act = act_scalar,
    .dot =
        {
            [TNN_QT_F32] = dot_rows,
            [TNN_QT_F16] = dot_rows,
            [TNN_QT_BF16] = dot_rows,
            [TNN_QT_Q8_0] = dot_rows,
            [TNN_QT_Q4_0] = dot_rows,
            [TNN_QT_Q4_1] = dot_rows,
            [TNN_QT_Q5_0] = dot_rows,
            [TNN_QT_Q5_1] = dot_rows,
            [TNN_QT_Q4_K] = dot_rows,
            [TNN_QT_Q5_K] = dot_rows,
            [TNN_QT_Q6_K] = dot_rows,
        },
    .deq =
        {
            [TNN_QT_F32] = deq_f32,
            [TNN_QT_F16] = deq_f16,
            [TNN_QT_BF16] = deq_bf16,
            [TNN_QT_Q8_0] = deq_q8_0,
            [TNN_QT_Q4_0] = deq_q4_0,
            [TNN_QT_Q4_1] = deq_q4_1,
            [TNN_QT_Q5_0] = deq_q5_0,
            [TNN_QT_Q5_1] = deq_q5_1,
            [TNN_QT_Q4_K] = deq_q4_K,
            [TNN_QT_Q5_K] = deq_q5_K,
            [TNN_QT_Q6_K] = deq_q6_K,
        },
};

/* ------------------------------------------------------------------------ */
/* Kernel choice                                                            */
/* ------------------------------------------------------------------------ */

static const char *const kernel_names[TNN_QK_COUNT] = {"scalar", "avx2"};
_Static_assert(sizeof kernel_names / sizeof kernel_names[0] == TNN_QK_COUNT, "kernel names");

#if defined(TNN_QUANT_X86)
/* CPUID.1:ECX bit 29 (some compilers' __builtin_cpu_supports lack "f16c"). */
static bool has_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
#endif

bool tnn__quant_kernel_supported(int id) {
    switch (id) {
    case TNN_QK_SCALAR: return true;
#if defined(TNN_QUANT_X86)
    case TNN_QK_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
#endif
    default: return false;
    }
}

const char *tnn__quant_kernel_name(int id) {
    return id >= 0 && id < TNN_QK_COUNT ? kernel_names[id] : "?";
}

static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;
static int default_kernel; /* written once under kernel_once */
static atomic_int current_kernel;

static void kernel_init(void) {
    int best = tnn__quant_kernel_supported(TNN_QK_AVX2) ? TNN_QK_AVX2 : TNN_QK_SCALAR;
    int pick = best;
    const char *e = getenv("TNN_KERNEL");
    if (e && *e) {
        if (strcmp(e, "scalar") == 0)
            pick = TNN_QK_SCALAR;
        else if (strcmp(e, "avx2") == 0 && !tnn__quant_kernel_supported(TNN_QK_AVX2))
            tnn__log(TNN_LOG_WARN, "TNN_KERNEL=avx2 is not supported on this CPU; "
                                   "quantized kernels use scalar");
        else if (strcmp(e, "avx2") != 0 && strcmp(e, "avx512") != 0)
            tnn__log(TNN_LOG_WARN,
                     "TNN_KERNEL=%s is not one of scalar, avx2, avx512; "
                     "quantized kernels use %s",
                     e, kernel_names[best]);
        /* "avx512": quant has no AVX-512 kernels; the best there is runs */
    }
    default_kernel = pick;
    atomic_store(&current_kernel, pick);
}

int tnn__quant_get_kernel(void) {
    pthread_once(&kernel_once, kernel_init);
    return atomic_load_explicit(&current_kernel, memory_order_relaxed);
}

int tnn__quant_set_kernel(int id) {
    pthread_once(&kernel_once, kernel_init);
    if (id == TNN_QK_AUTO) {
        atomic_store(&current_kernel, default_kernel);
        return TNN_OK;
    }
    if (!tnn__quant_kernel_supported(id))
        return TNN_ERR(TNN_ERR_ARG, "quant kernel %d (%s) is unknown or not supported here", id,
                       tnn__quant_kernel_name(id));
    atomic_store(&current_kernel, id);
    return TNN_OK;
}

static const tnn_qkernels *kernels(int id) {
#if defined(TNN_QUANT_X86)
    if (id == TNN_QK_AVX2)
        return &tnn__qk_avx2;
#endif
    (void)id;
    return &tnn__qk_scalar;
}

static tnn_qdot_fn dot_fn(int id, int type) {
    tnn_qdot_fn f = kernels(id)->dot[type];
    return f ? f : tnn__qk_scalar.dot[type];
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */
/* ------------------------------------------------------------------------ */

int tnn__dequantize_row(int type, const void *src, float *dst, int64_t n) {
    if (tnn__qtype_row_bytes(type, n) < 0)
        return TNN_ERR_ARG;
    if (n && (!src || !dst))
        return TNN_ERR(TNN_ERR_ARG, "NULL src or dst");
    tnn_qdeq_fn f = kernels(tnn__quant_get_kernel())->deq[type];
    (f ? f : tnn__qk_scalar.deq[type])(src, dst, n);
    return TNN_OK;
}

void tnn__qdot_rows(const tnn_qact *a, const void *w, size_t row_bytes, int64_t rows, float *y) {
    if (rows > 0)
        dot_fn(tnn__quant_get_kernel(), a->wtype)(a, w, row_bytes, rows, y);
}

typedef struct {
    const tnn_qact *a;
    const uint8_t *w;
    size_t rb;
    float *y;
    tnn_qdot_fn fn;
} matvec_job;

static void matvec_range(void *ctx, int64_t begin, int64_t end) {
    const matvec_job *j = ctx;
    j->fn(j->a, j->w + begin * j->rb, j->rb, end - begin, j->y + begin);
}

int tnn__quant_matvec(int wtype, const void *w, int64_t rows, int64_t n, const float *x, float *y,
                      void *work) {
    int64_t rb = tnn__qtype_row_bytes(wtype, n);
    if (rb < 0)
        return TNN_ERR_ARG;
    if (rows < 0)
        return TNN_ERR(TNN_ERR_ARG, "rows %lld < 0", (long long)rows);
    if (rows == 0)
        return TNN_OK;
    if (!w || !y || (n && !x))
        return TNN_ERR(TNN_ERR_ARG, "NULL weights, x or y");
    int64_t wb = tnn__qact_bytes(wtype, n);
    void *own = NULL;
    if (wb > 0 && !work) {
        own = aligned_alloc(64, (size_t)wb);
        if (!own)
            return TNN_ERR(TNN_ERR_NOMEM, "%lld bytes of activation workspace", (long long)wb);
        work = own;
    }
    tnn_qact a;
    int kernel = tnn__quant_get_kernel();
    int rc = prepare(&a, kernel, wtype, x, n, work);
    if (rc == TNN_OK) {
        matvec_job job = {&a, w, (size_t)rb, y, dot_fn(kernel, wtype)};
        /* ~64 KiB of weights per chunk at least: smaller jobs stay on one thread */
        int64_t min_rows = rb > 0 ? (65536 + rb - 1) / rb : rows;
        tnn__parallel_for(rows, min_rows < 1 ? 1 : min_rows, matvec_range, &job);
    }
    free(own);
    return rc;
}
