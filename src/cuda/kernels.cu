/* kernels.cu - the CUDA kernels of the element-wise, row, shape, reduction
 * and embedding ops, the products, and the optimizer's update. The formulas
 * are the CPU kernels' (src/ops); sums run in double like theirs, in a fixed
 * order, so a result never depends on the launch shape or on timing.
 */
#include "cuda_impl.h"

#include <math.h>
#include <pthread.h>

/* ------------------------------------------------------------------------ */
/* Element-wise                                                             */
/* ------------------------------------------------------------------------ */

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* x * sigmoid(2u), u = c (x + a x^3): the CPU's form of tanh-GELU */
__device__ __forceinline__ float cu_gelu(float x) {
    float u = GELU_C * (x + GELU_A * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}
__device__ __forceinline__ float cu_gelu_grad(float x) {
    float u = GELU_C * (x + GELU_A * x * x * x);
    float sg = 1.0f / (1.0f + expf(-2.0f * u));
    float du = GELU_C * (1.0f + 3.0f * GELU_A * x * x);
    return sg + 2.0f * x * (sg * (1.0f - sg)) * du;
}
__device__ __forceinline__ float cu_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* One value, or a group of four, stored as f32 or rounded to bf16 (the
 * CPU's rounding, tnn__f2bf, as TNN_OP_TO_BF16 does). */
__device__ __forceinline__ void cu_st(float *d, float v) { *d = v; }
__device__ __forceinline__ void cu_st(uint16_t *d, float v) { *d = tnn__f2bf(v); }
__device__ __forceinline__ void cu_st4(float *d, float4 v) { *reinterpret_cast<float4 *>(d) = v; }
__device__ __forceinline__ void cu_st4(uint16_t *d, float4 v) {
    uint2 o;
    o.x = tnn__f2bf(v.x) | (uint32_t)tnn__f2bf(v.y) << 16;
    o.y = tnn__f2bf(v.z) | (uint32_t)tnn__f2bf(v.w) << 16;
    *reinterpret_cast<uint2 *>(d) = o;
}

/* Flat index f of a 4-D shape -> offset with the given element strides. */
__device__ __forceinline__ int64_t cu_offset(int64_t f, const cu_dims &shape, const cu_dims &st) {
    int64_t off = 0;
    for (int d = 3; d >= 0; d--) {
        off += (f % shape.d[d]) * st.d[d];
        f /= shape.d[d];
    }
    return off;
}

/* Broadcast strides of `small` (right-aligned) read at the shape `big`. */
static cu_dims bcast_strides(const cu_dims &small, const cu_dims &big) {
    cu_dims st;
    int64_t acc = 1;
    for (int i = 3; i >= 0; i--) {
        st.d[i] = (small.d[i] == 1 && big.d[i] != 1) ? 0 : acc;
        acc *= small.d[i];
    }
    return st;
}

__global__ void k_binary(int op, const float *a, const float *b, float *o, int64_t n, cu_dims os,
                         cu_dims as, cu_dims bs, int plain) {
    CU_FOR(f, n) {
        float x = plain ? a[f] : a[cu_offset(f, os, as)];
        float y = plain ? b[f] : b[cu_offset(f, os, bs)];
        o[f] = op == TNN_OP_ADD ? x + y : op == TNN_OP_SUB ? x - y : x * y;
    }
}

__global__ void k_unary(int op, const float *x, const float *dy, float k, float *o, int64_t n) {
    CU_FOR(i, n) {
        float v = x ? x[i] : 0.0f, r;
        switch (op) {
        case TNN_OP_SCALE: r = v * k; break;
        case TNN_OP_GELU: r = cu_gelu(v); break;
        case TNN_OP_SILU: r = v * cu_sigmoid(v); break;
        case TNN_OP_GELU_BACK: r = dy[i] * cu_gelu_grad(v); break;
        case TNN_OP_SILU_BACK: {
            float s = cu_sigmoid(v);
            r = dy[i] * s * (1.0f + v * (1.0f - s));
            break;
        }
        default: r = k; break; /* fill */
        }
        o[i] = r;
    }
}

/* silu(g) * u into o (dy NULL), or its gradients: d gate into o (u given)
 * and d up into o2, either NULL when not wanted; rounded as the CPU's
 * composition of silu, mul and silu_back. O = uint16_t: the results rounded
 * to bf16 (a TNN_OP_TO_BF16 after them folded in). */
template <typename O>
__global__ void k_swiglu(const float *g, const float *u, const float *dy, O *o, O *o2,
                         int64_t n) {
    CU_FOR(i, n) {
        float x = g[i], s = cu_sigmoid(x), sg = x * s;
        if (!dy) {
            cu_st(o + i, sg * u[i]);
            continue;
        }
        if (o) {
            float d = dy[i] * u[i];
            cu_st(o + i, d * s * (1.0f + x * (1.0f - s)));
        }
        if (o2) cu_st(o2 + i, dy[i] * sg);
    }
}

__global__ void k_narrow_bf16(const float *src, uint16_t *dst, int64_t n);
static unsigned narrow_blocks(int64_t n);

int tnn__cu_elementwise(tnn_tensor *t) {
    cudaStream_t st = tnn__cu.stream;
    int64_t n = t->nelem;
    switch (t->op) {
    case TNN_OP_ADD:
    case TNN_OP_SUB:
    case TNN_OP_MUL: {
        const tnn_tensor *a = t->src[0], *b = t->src[1];
        cu_dims os = cu_shape4(t), as = cu_shape4(a), bs = cu_shape4(b);
        int plain = a->nelem == n && b->nelem == n;
        TNN_LAUNCH(k_binary, cu_blocks(n), CU_THREADS, 0, st, t->op, CF(a), CF(b), FP(t), n, os,
                   bcast_strides(as, os), bcast_strides(bs, os), plain);
        break;
    }
    case TNN_OP_GELU_BACK:
    case TNN_OP_SILU_BACK:
        TNN_LAUNCH(k_unary, cu_blocks(n), CU_THREADS, 0, st, t->op, CF(t->src[0]), CF(t->src[1]),
                   0.0f, FP(t), n);
        break;
    case TNN_OP_SWIGLU:
        TNN_LAUNCH(k_swiglu<float>, cu_blocks(n), CU_THREADS, 0, st, CF(t->src[0]),
                   CF(t->src[1]), (const float *)NULL, FP(t), (float *)NULL, n);
        break;
    case TNN_OP_SWIGLU_BACK:
        TNN_LAUNCH(k_swiglu<float>, cu_blocks(n), CU_THREADS, 0, st, CF(t->src[1]),
                   t->iparam[0] ? (const float *)NULL : CF(t->src[2]), CF(t->src[0]),
                   t->iparam[0] ? (float *)NULL : FP(t), t->iparam[0] ? FP(t) : (float *)NULL, n);
        break;
    case TNN_OP_FILL:
        TNN_LAUNCH(k_unary, cu_blocks(n), CU_THREADS, 0, st, t->op, (const float *)NULL,
                   (const float *)NULL, (float)t->fparam[0], FP(t), n);
        break;
    case TNN_OP_TO_BF16: /* the CPU's rounding (tnn__f2bf): the same bits */
        TNN_LAUNCH(k_narrow_bf16, narrow_blocks(n), CU_THREADS, 0, st, CF(t->src[0]),
                   (uint16_t *)t->data, n);
        break;
    default:
        TNN_LAUNCH(k_unary, cu_blocks(n), CU_THREADS, 0, st, t->op, CF(t->src[0]),
                   (const float *)NULL, (float)t->fparam[0], FP(t), n);
        break;
    }
    return tnn__cu_launched(tnn__ops[t->op].name);
}

/* ------------------------------------------------------------------------ */
/* Rows: one block per row                                                  */
/* ------------------------------------------------------------------------ */

/* A row's max (into *mx) and sum of e^(x - max) in double, the
 * exponentials also stored into y when it is not NULL. */
__device__ double cu_row_expsum(const float *x, int64_t n, float *y, float *mx) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    float m = -INFINITY;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, x[j]);
    m = cu_block_max(m, shf);
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(x[j] - m);
        if (y) y[j] = e;
        s += e;
    }
    *mx = m;
    return cu_block_sum(s, shd);
}

__global__ void k_softmax(const float *x, float *y, int64_t cols) {
    float *yr = y + blockIdx.x * cols, mx;
    float inv = (float)(1.0 / cu_row_expsum(x + blockIdx.x * cols, cols, yr, &mx));
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) yr[j] *= inv;
}

/* Dots of two rows in double (b may be a, for sums of squares). */
__device__ double cu_row_dot(const float *a, const float *b, int64_t n, double *sh) {
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += (double)a[j] * b[j];
    return cu_block_sum(s, sh);
}
__device__ double cu_row_sum(const float *a, int64_t n, double *sh) {
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += a[j];
    return cu_block_sum(s, sh);
}

__global__ void k_softmax_back(const float *dy, const float *y, float *dx, int64_t cols) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * cols;
    float d = (float)cu_row_dot(dy + o, y + o, cols, sh);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dx[o + j] = y[o + j] * (dy[o + j] - d);
}

/* O = uint16_t: y rounded to bf16 (a TNN_OP_TO_BF16 after it folded in). */
template <typename O>
__global__ void k_rms_norm(const float *x, const float *g, O *y, int64_t n, double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    float scale = (float)(1.0 / sqrt(cu_row_dot(x + o, x + o, n, sh) / (double)n + eps));
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        cu_st(y + o + j, g ? (x[o + j] * scale) * g[j] : x[o + j] * scale);
}

/* x = a + b (a residual add), then y = rms_norm(x, g), in one pass over the
 * row: the bits of k_binary and then k_rms_norm (each thread sums the same
 * elements in the same order, then the same block sum). */
template <typename O>
__global__ void k_add_rms_norm(const float *a, const float *b, float *x, const float *g,
                               O *y, int64_t n, double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    double ss = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float v = a[o + j] + b[o + j];
        x[o + j] = v;
        ss += (double)v * v;
    }
    ss = cu_block_sum(ss, sh);
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        cu_st(y + o + j, g ? (x[o + j] * scale) * g[j] : x[o + j] * scale);
}

/* With gm (rms_norm's gamma, or NULL), dy is dy * gm, rounded to f32.
 * With acc, dx is added to acc's row (a gradient sum, dx may be acc). */
__global__ void k_rms_norm_back(const float *dy, const float *x, const float *gm,
                                const float *acc, float *dx, int64_t n, double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    double ss = cu_row_dot(x + o, x + o, n, sh), dot = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float d = gm ? dy[o + j] * gm[j] : dy[o + j];
        dot += (double)d * x[o + j];
    }
    dot = cu_block_sum(dot, sh);
    double rr = 1.0 / sqrt(ss / (double)n + eps);
    float a = (float)rr, b = (float)(rr * rr * rr * dot / (double)n);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float d = gm ? dy[o + j] * gm[j] : dy[o + j], r = a * d - b * x[o + j];
        dx[o + j] = acc ? acc[o + j] + r : r;
    }
}

/* rms_norm's gamma gradient, sum over rows of dy * (x * scale) (each
 * product rounded to f32 as the CPU does), in three steps: each row's
 * scale as k_rms_norm takes it; blocks of 32 columns x RS row slices, a
 * warp a slice's rows in order and the block's 8 warps in order; the
 * slices added in order. Deterministic; the CPU sums the rows in one run. */
__global__ void k_rms_scale(const float *x, float *scale, int64_t n, double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    float s = (float)(1.0 / sqrt(cu_row_dot(x + o, x + o, n, sh) / (double)n + eps));
    if (threadIdx.x == 0) scale[blockIdx.x] = s;
}

__global__ void k_rms_gain_parts(const float *dy, const float *x, const float *scale,
                                 int64_t rows, int64_t cols, double *part) {
    __shared__ double sh[8][33];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int64_t j = (int64_t)blockIdx.x * 32 + lane, step = (int64_t)gridDim.y * 8;
    double s = 0.0;
    if (j < cols)
        for (int64_t r = (int64_t)blockIdx.y * 8 + w; r < rows; r += step) {
            float nrm = x[r * cols + j] * scale[r], p = dy[r * cols + j] * nrm;
            s += p;
        }
    sh[w][lane] = s;
    __syncthreads();
    if (w == 0 && j < cols) {
        double t = sh[0][lane];
        for (int k = 1; k < 8; k++) t += sh[k][lane];
        part[(int64_t)blockIdx.y * cols + j] = t;
    }
}

__global__ void k_rms_gain_final(const double *part, int nparts, int64_t cols, float *out) {
    CU_FOR(j, cols) {
        double t = 0.0;
        for (int k = 0; k < nparts; k++) t += part[(int64_t)k * cols + j];
        out[j] = (float)t;
    }
}

static int rms_gain(tnn_tensor *t) {
    const tnn_tensor *x = t->src[1];
    int64_t cols = x->shape[x->ndim - 1], rows = x->nelem / cols;
    if (rows > INT32_MAX) return TNN_ERR(TNN_ERR_UNSUPPORTED, "%lld rows: too many for one grid", (long long)rows);
    int64_t rs = (rows + 255) / 256;
    rs = rs < 1 ? 1 : rs > 64 ? 64 : rs;
    size_t sbytes = ((size_t)rows * sizeof(float) + 255) & ~(size_t)255;
    char *scr = (char *)tnn__cu_scratch(sbytes + (size_t)(rs * cols) * sizeof(double));
    if (!scr) return tnn_last_status();
    float *scale = (float *)scr;
    double *part = (double *)(scr + sbytes);
    cudaStream_t st = tnn__cu.stream;
    if (rows > 0) TNN_LAUNCH(k_rms_scale, (unsigned)rows, CU_THREADS, 0, st, CF(x), scale, cols, t->fparam[0]);
    TNN_LAUNCH(k_rms_gain_parts, dim3((unsigned)((cols + 31) / 32), (unsigned)rs), 256, 0, st,
               CF(t->src[0]), CF(x), (const float *)scale, rows, cols, part);
    TNN_LAUNCH(k_rms_gain_final, cu_blocks(cols), CU_THREADS, 0, st, (const double *)part, (int)rs,
               cols, FP(t));
    return tnn__cu_launched("rms_norm_gain");
}

/* Mean and 1 / sqrt(var + eps) of a row (two passes, as the CPU). */
__device__ void cu_row_stats(const float *x, int64_t n, double eps, double *sh, double *mean,
                             double *rstd) {
    double m = cu_row_sum(x, n, sh) / (double)n, v = 0.0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) v += ((double)x[j] - m) * (x[j] - m);
    v = cu_block_sum(v, sh);
    *mean = m;
    *rstd = 1.0 / sqrt(v / (double)n + eps);
}

__global__ void k_layer_norm(const float *x, const float *ga, const float *be, float *y, int64_t n,
                             double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    double mean, rstd;
    cu_row_stats(x + o, n, eps, sh, &mean, &rstd);
    float m = (float)mean, rs = (float)rstd;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        float v = (x[o + j] - m) * rs;
        if (ga) v = v * ga[j];
        if (be) v = v + be[j];
        y[o + j] = v;
    }
}

__global__ void k_layer_norm_back(const float *g, const float *x, float *dx, int64_t n, double eps) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x * n;
    double mean, rstd;
    cu_row_stats(x + o, n, eps, sh, &mean, &rstd);
    double sg = cu_row_sum(g + o, n, sh), sgx = cu_row_dot(g + o, x + o, n, sh);
    double mg = sg / (double)n, mgx = rstd * (sgx - mean * sg) / (double)n;
    float ka = (float)rstd, kb = (float)mg, kc = (float)(rstd * rstd * mgx), m = (float)mean;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
        dx[o + j] = ka * (g[o + j] - kb) - kc * (x[o + j] - m);
}

/* Cross-entropy: the loss of each row (0 for ignored rows), then the mean
 * over the counted rows; the backward pass is softmax * dloss / count minus
 * dloss / count at the target.
 * A row (50257 logits for GPT-2) is read once for its max and sum: each
 * thread keeps a running max and the sum of e^(x - max) (a tile's float
 * exps summed in float, the tiles in double) and rescales the sum when its
 * max grows, at most once per tile of CE_TILE 16-byte loads; the block then
 * brings the threads' sums to the row's max (float exps of the differences:
 * each is off by an ulp or two, like every term's exp). Loads are 16 bytes
 * from the row's first aligned element (an odd V leaves rows at any 4-byte
 * offset), CE_TILE in flight a thread. The backward pass keeps the row in
 * shared memory during that first read where it fits (the first S elements
 * otherwise), so it reads the logits once and writes d once. */
#define CE_THREADS 512       /* forward: several rows an SM */
#define CE_BACK_THREADS 1024 /* backward: one row an SM when it is kept whole */
#define CE_TILE 4

/* Row x of n floats as 16-byte groups: h leading floats, then groups from
 * x + h. */
__device__ __forceinline__ int64_t cu_row_head(const float *x, int64_t n) {
    uintptr_t a = (uintptr_t)x;
    int64_t h = a & 3 ? n : (int64_t)(((16 - (a & 15)) & 15) >> 2);
    return h < n ? h : n;
}

__device__ __forceinline__ float cu_max4(float4 v) {
    return fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
}
__device__ __forceinline__ float cu_exp4(float4 v, float m) {
    return (expf(v.x - m) + expf(v.y - m)) + (expf(v.z - m) + expf(v.w - m));
}

/* Raises a thread's running max *m to tm, rescaling its sum *s; returns
 * the shift for the exponentials: the max, or 0 while it is -inf (e^(x - m)
 * would be NaN for x = -inf, whose share is 0). */
__device__ __forceinline__ float cu_lse_raise(float tm, float *m, double *s) {
    if (tm > *m) {
        *s *= (double)expf(*m - tm);
        *m = tm;
    }
    return *m == -INFINITY ? 0.0f : *m;
}

/* Of a row of n with h leading floats, the elements j < K that a stash of S
 * floats keeps: groups whole or not at all. */
__device__ __forceinline__ int64_t cu_ce_kept(int64_t S, int64_t n, int64_t h) {
    if (S >= n) return n;
    return S <= h ? S : h + ((S - h) & ~(int64_t)3);
}

/* The row's max (into *mx) and sum of e^(x - max), read once; with stash,
 * elements j < cu_ce_kept(S, ...) are also copied to stash[j + pad], pad =
 * (4 - h) & 3 putting the groups at 16-byte boundaries. */
__device__ double cu_ce_stats(const float *x, int64_t n, float *stash, int64_t S, float *mx) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    int64_t h = cu_row_head(x, n), nv = (n - h) >> 2, tail = h + 4 * nv;
    int64_t pad = (4 - h) & 3, K = cu_ce_kept(S, n, h), kg = K > h ? (K - h) >> 2 : 0;
    int64_t bd = blockDim.x, t = threadIdx.x;
    float m = -INFINITY;
    double s = 0.0;
    for (int64_t e = t; e < h + n - tail; e += bd) { /* the leading floats, then the last */
        int64_t j = e < h ? e : tail + e - h;
        float v = x[j], sh = cu_lse_raise(v, &m, &s);
        s += (double)expf(v - sh);
        if (j < K) stash[j + pad] = v;
    }
    const float4 *xv = reinterpret_cast<const float4 *>(x + h);
    float4 *sv = stash ? reinterpret_cast<float4 *>(stash + h + pad) : (float4 *)NULL;
    int64_t g = t;
    for (; g + (CE_TILE - 1) * bd < nv; g += CE_TILE * bd) {
        float4 v[CE_TILE];
        float tm = -INFINITY, e = 0.0f;
        CU_UNROLL(CE_TILE)
        for (int u = 0; u < CE_TILE; u++) v[u] = xv[g + u * bd];
        CU_UNROLL(CE_TILE)
        for (int u = 0; u < CE_TILE; u++) tm = fmaxf(tm, cu_max4(v[u]));
        float sh = cu_lse_raise(tm, &m, &s);
        CU_UNROLL(CE_TILE)
        for (int u = 0; u < CE_TILE; u++) {
            e += cu_exp4(v[u], sh);
            if (g + u * bd < kg) sv[g + u * bd] = v[u];
        }
        s += (double)e;
    }
    for (; g < nv; g += bd) {
        float4 v = xv[g];
        float sh = cu_lse_raise(cu_max4(v), &m, &s);
        s += (double)cu_exp4(v, sh);
        if (g < kg) sv[g] = v;
    }
    float M = cu_block_max(m, shf); /* its barriers also complete the stash */
    *mx = M;
    /* a thread without elements has m = -inf and s = 0: a share of 0 */
    return cu_block_sum(s * (double)expf(m - M), shd);
}

__global__ void __launch_bounds__(CE_THREADS)
    k_ce_rows(const float *lg, const int32_t *tg, int64_t W, int64_t V, int32_t ign,
              float *rows, tnn_cu_fault *fault, int node) {
    int64_t r = blockIdx.x;
    const float *x = lg + r * W; /* rows of W, the first V classes */
    int32_t c = tg[r];
    if (c == ign || c < 0 || c >= V) {
        if (threadIdx.x == 0) {
            rows[r] = 0.0f;
            if (c != ign) cu_fault(fault, CU_FAULT_TARGET, node, r, c, V);
        }
        return;
    }
    float mx;
    double s = cu_ce_stats(x, V, (float *)NULL, 0, &mx);
    if (threadIdx.x == 0) rows[r] = (float)((double)mx + log(s) - x[c]);
}

/* One block: the count of rows that count, and (forward) the mean loss;
 * each thread's rows, then the block's fixed reduction order. */
#define CE_TOTAL_THREADS 1024
__global__ void __launch_bounds__(CE_TOTAL_THREADS)
    k_ce_total(const int32_t *tg, int64_t N, int64_t V, int32_t ign, const float *rows,
               float *out, int *count) {
    __shared__ long long shc[32];
    __shared__ double shd[32];
    long long cnt = 0;
    double total = 0.0;
    for (int64_t r = threadIdx.x; r < N; r += blockDim.x) {
        if (tg[r] == ign || tg[r] < 0 || tg[r] >= V) continue;
        cnt++;
        if (rows) total += rows[r];
    }
    cnt = cu_block_sum(cnt, shc);
    total = cu_block_sum(total, shd);
    if (threadIdx.x != 0) return;
    if (out) out[0] = cnt ? (float)(total / (double)cnt) : 0.0f;
    if (count) *count = (int)cnt;
}

/* d = softmax * scale, minus scale at the target, each element written
 * once, from the copy the stats kept (stash) or else from the logits again;
 * O = uint16_t writes it rounded to bf16 (the gradient's rounding for bf16
 * products, folded in). Ignored rows get zeros, as do a row's W - V padding
 * columns (never read); a bad target is a fault. */
template <typename O>
__global__ void __launch_bounds__(CE_BACK_THREADS)
    k_ce_back(const float *lg, const int32_t *tg, const float *dloss, const int *count,
              int64_t W, int64_t V, int32_t ign, int64_t S, O *d, tnn_cu_fault *fault,
              int node) {
    TNN_DYN_SMEM(float, stash); /* S + 3 floats */
    int64_t r = blockIdx.x, bd = blockDim.x, t = threadIdx.x;
    const float *x = lg + r * W;
    O *dr = d + r * W;
    for (int64_t j = V + t; j < W; j += bd) cu_st(dr + j, 0.0f);
    int32_t c = tg[r];
    bool skip = c == ign || c < 0 || c >= V;
    if (skip && c != ign && t == 0) cu_fault(fault, CU_FAULT_TARGET, node, r, c, V);
    double scale = *count ? (double)dloss[0] / (double)*count : 0.0;
    float mx = 0.0f, k = 0.0f, sc = (float)scale;
    if (!skip) k = (float)(scale / cu_ce_stats(x, V, stash, S, &mx));
    /* x's groups, kept ones from the stash, where d's groups of four are
     * aligned as x's are (buffers from cudaMalloc are); else one by one */
    int64_t h = cu_row_head(x, V), pad = (4 - h) & 3, K = cu_ce_kept(S, V, h);
    if ((uintptr_t)(dr + h) % (4 * sizeof(O)) != 0) h = V;
    int64_t nv = (V - h) >> 2, tail = h + 4 * nv, kg = K > h ? (K - h) >> 2 : 0;
    for (int64_t e = t; e < h + V - tail; e += bd) {
        int64_t j = e < h ? e : tail + e - h;
        float v = 0.0f;
        if (!skip) {
            v = expf((j < K ? stash[j + pad] : x[j]) - mx) * k;
            if (j == c) v -= sc;
        }
        cu_st(dr + j, v);
    }
    const float4 *xv = reinterpret_cast<const float4 *>(x + h);
    const float4 *sv = reinterpret_cast<const float4 *>(stash + h + pad);
    for (int64_t g = t; g < nv; g += bd) {
        float4 o = {0.0f, 0.0f, 0.0f, 0.0f};
        if (!skip) {
            float4 v = g < kg ? sv[g] : xv[g];
            int64_t q = c - (h + 4 * g); /* the target's place in the group */
            o.x = expf(v.x - mx) * k;
            o.y = expf(v.y - mx) * k;
            o.z = expf(v.z - mx) * k;
            o.w = expf(v.w - mx) * k;
            if (q == 0) o.x -= sc;
            if (q == 1) o.y -= sc;
            if (q == 2) o.z -= sc;
            if (q == 3) o.w -= sc;
        }
        cu_st4(dr + h + 4 * g, o);
    }
}

/* Bytes of shared memory k_ce_back may keep a row in: the device's opt-in
 * limit less a margin for its static arrays, raised once; 48 KiB if that
 * fails. */
#define CE_SMEM_STATIC 1024
static size_t ce_stash_bytes = 48 * 1024 - CE_SMEM_STATIC;
static pthread_once_t ce_stash_once = PTHREAD_ONCE_INIT;
static void ce_stash_open(void) {
    cudaDeviceProp p;
    int dev = 0;
    if (cudaGetDevice(&dev) == cudaSuccess && cudaGetDeviceProperties(&p, dev) == cudaSuccess &&
        p.sharedMemPerBlockOptin > ce_stash_bytes + CE_SMEM_STATIC) {
        size_t b = p.sharedMemPerBlockOptin - CE_SMEM_STATIC;
        if (cudaFuncSetAttribute(k_ce_back<float>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)b) == cudaSuccess &&
            cudaFuncSetAttribute(k_ce_back<uint16_t>,
                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)b) == cudaSuccess)
            ce_stash_bytes = b;
    }
    cudaGetLastError();
}

/* Threads for a row of V: a tile of CE_TILE groups each (short rows), at
 * most `cap`. */
static unsigned ce_threads(int64_t V, unsigned cap) {
    unsigned n = 32;
    while (n < cap && (int64_t)n * CE_TILE * 4 < V) n *= 2;
    return n;
}

/* Cross-entropy (t) or its gradient into out: t's data, or with bf16 a
 * TNN_OP_TO_BF16 node's after it, which it then also computes. */
static int ce(tnn_tensor *t, void *out, bool bf16) {
    const tnn_tensor *lg = t->src[0];
    const int32_t *tg = (const int32_t *)t->src[1]->data;
    int64_t N = lg->shape[0], W = lg->shape[1], V = t->iparam[1];
    int32_t ign = (int32_t)t->iparam[0];
    cudaStream_t st = tnn__cu.stream;
    if (N == 0) return TNN_OK;
    if (N > INT32_MAX) return TNN_ERR(TNN_ERR_UNSUPPORTED, "%lld rows: too many for one grid", (long long)N);
    char *scr = (char *)tnn__cu_scratch((size_t)N * sizeof(float) + 16);
    if (!scr) return tnn_last_status();
    int *count = (int *)scr;
    float *rows = (float *)(scr + 16);
    if (t->op == TNN_OP_CROSS_ENTROPY) {
        TNN_LAUNCH(k_ce_rows, (unsigned)N, ce_threads(V, CE_THREADS), 0, st, CF(lg), tg, W, V, ign,
                   rows, tnn__cu.fault, t->id);
        TNN_LAUNCH(k_ce_total, 1, CE_TOTAL_THREADS, 0, st, tg, N, V, ign, (const float *)rows,
                   FP(t), (int *)NULL);
    } else {
        pthread_once(&ce_stash_once, ce_stash_open);
        int64_t S = (int64_t)(ce_stash_bytes / sizeof(float)) - 3;
        if (S > V) S = V;
        TNN_LAUNCH(k_ce_total, 1, CE_TOTAL_THREADS, 0, st, tg, N, V, ign, (const float *)NULL,
                   (float *)NULL, count);
        size_t smem = (size_t)(S + 3) * sizeof(float);
        unsigned th = ce_threads(V, CE_BACK_THREADS);
        if (bf16)
            TNN_LAUNCH(k_ce_back<uint16_t>, (unsigned)N, th, smem, st, CF(lg), tg, CF(t->src[2]),
                       (const int *)count, W, V, ign, S, (uint16_t *)out, tnn__cu.fault, t->id);
        else
            TNN_LAUNCH(k_ce_back<float>, (unsigned)N, th, smem, st, CF(lg), tg, CF(t->src[2]),
                       (const int *)count, W, V, ign, S, (float *)out, tnn__cu.fault, t->id);
    }
    return tnn__cu_launched(tnn__ops[t->op].name);
}

int tnn__cu_rows(tnn_tensor *t) {
    if (t->op == TNN_OP_CROSS_ENTROPY || t->op == TNN_OP_CROSS_ENTROPY_BACK)
        return ce(t, t->data, false);
    if (t->op == TNN_OP_RMS_NORM_GAIN) return rms_gain(t);
    int64_t cols = t->shape[t->ndim - 1], rows = t->nelem / cols;
    if (rows == 0) return TNN_OK;
    if (rows > INT32_MAX) return TNN_ERR(TNN_ERR_UNSUPPORTED, "%lld rows: too many for one grid", (long long)rows);
    cudaStream_t st = tnn__cu.stream;
    unsigned g = (unsigned)rows;
    double eps = t->fparam[0];
    const float *s0 = CF(t->src[0]);
    const float *s1 = t->src[1] ? CF(t->src[1]) : NULL;
    switch (t->op) {
    case TNN_OP_SOFTMAX: TNN_LAUNCH(k_softmax, g, CU_THREADS, 0, st, s0, FP(t), cols); break;
    case TNN_OP_SOFTMAX_BACK:
        TNN_LAUNCH(k_softmax_back, g, CU_THREADS, 0, st, s0, s1, FP(t), cols);
        break;
    case TNN_OP_RMS_NORM:
        TNN_LAUNCH(k_rms_norm<float>, g, CU_THREADS, 0, st, s0, s1, FP(t), cols, eps);
        break;
    case TNN_OP_RMS_NORM_BACK:
        TNN_LAUNCH(k_rms_norm_back, g, CU_THREADS, 0, st, s0, s1,
                   t->src[2] ? CF(t->src[2]) : (const float *)NULL, (const float *)NULL, FP(t),
                   cols, eps);
        break;
    case TNN_OP_LAYER_NORM:
        TNN_LAUNCH(k_layer_norm, g, CU_THREADS, 0, st, s0, s1,
                   t->src[2] ? CF(t->src[2]) : (const float *)NULL, FP(t), cols, eps);
        break;
    default:
        TNN_LAUNCH(k_layer_norm_back, g, CU_THREADS, 0, st, s0, s1, FP(t), cols, eps);
        break;
    }
    return tnn__cu_launched(tnn__ops[t->op].name);
}

/* ------------------------------------------------------------------------ */
/* Shape ops: gathers with strides, block copies                            */
/* ------------------------------------------------------------------------ */

/* out[f] = a[offset of f's coordinates under the strides st] */
__global__ void k_gather(const float *a, float *o, int64_t n, cu_dims os, cu_dims st) {
    CU_FOR(f, n) o[f] = a[cu_offset(f, os, st)];
}

/* dst[b * ds + i] = src[b * ss + i] for b < outer, i < n */
__global__ void k_copy_blocks(float *dst, int64_t ds, const float *src, int64_t ss, int64_t outer,
                              int64_t n) {
    CU_FOR(f, outer * n) {
        int64_t b = f / n, i = f % n;
        dst[b * ds + i] = src[b * ss + i];
    }
}

static void axis_split(const tnn_tensor *t, int axis, int64_t *outer, int64_t *inner) {
    *outer = 1;
    *inner = 1;
    for (int i = 0; i < axis; i++) *outer *= t->shape[i];
    for (int i = axis + 1; i < t->ndim; i++) *inner *= t->shape[i];
}

static void copy_blocks(float *dst, int64_t ds, const float *src, int64_t ss, int64_t outer,
                        int64_t n) {
    if (outer * n > 0)
        TNN_LAUNCH(k_copy_blocks, cu_blocks(outer * n), CU_THREADS, 0, tnn__cu.stream, dst, ds,
                   src, ss, outer, n);
}

int tnn__cu_shape(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    cudaStream_t st = tnn__cu.stream;
    cu_dims os = cu_shape4(t), str;
    switch (t->op) {
    case TNN_OP_RESHAPE:
        return tnn__cu_status(cudaMemcpyAsync(t->data, a->data, t->nbytes,
                                              cudaMemcpyDeviceToDevice, st), "tnn_reshape");
    case TNN_OP_EXPAND: str = bcast_strides(cu_shape4(a), os); break;
    case TNN_OP_TRANSPOSE: { /* out (.., c, r) of a (.., r, c) */
        int64_t r = a->ndim == 1 ? 1 : a->shape[a->ndim - 2], c = a->shape[a->ndim - 1];
        str.d[0] = 0;
        str.d[1] = r * c;
        str.d[2] = 1;
        str.d[3] = c;
        os.d[0] = 1;
        os.d[1] = a->nelem / (r * c);
        os.d[2] = c;
        os.d[3] = r;
        break;
    }
    case TNN_OP_PERMUTE: {
        int nd = a->ndim, pad = 4 - nd;
        int64_t astride[TNN_MAX_DIMS];
        astride[nd - 1] = 1;
        for (int i = nd - 2; i >= 0; i--) astride[i] = astride[i + 1] * a->shape[i + 1];
        for (int i = 0; i < 4; i++) {
            int ax = i < pad ? -1 : (int)((t->iparam[0] >> (4 * (i - pad))) & 15);
            str.d[i] = ax < 0 ? 0 : astride[ax];
        }
        break;
    }
    case TNN_OP_CONCAT: {
        const tnn_tensor *b = t->src[1];
        int ax = (int)t->iparam[0];
        int64_t outer, inner;
        axis_split(t, ax, &outer, &inner);
        int64_t na = a->shape[ax] * inner, nb = b->shape[ax] * inner, nt = t->shape[ax] * inner;
        copy_blocks(FP(t), nt, CF(a), na, outer, na);
        copy_blocks(FP(t) + na, nt, CF(b), nb, outer, nb);
        return tnn__cu_launched("tnn_concat");
    }
    default: { /* narrow */
        int ax = (int)t->iparam[0];
        int64_t outer, inner;
        axis_split(a, ax, &outer, &inner);
        int64_t na = a->shape[ax] * inner, nt = t->shape[ax] * inner;
        copy_blocks(FP(t), nt, CF(a) + t->iparam[1] * inner, na, outer, nt);
        return tnn__cu_launched("tnn_narrow");
    }
    }
    if (t->nelem > 0)
        TNN_LAUNCH(k_gather, cu_blocks(t->nelem), CU_THREADS, 0, st, CF(a), FP(t), t->nelem, os,
                   str);
    return tnn__cu_launched(tnn__ops[t->op].name);
}

/* ------------------------------------------------------------------------ */
/* Reductions                                                               */
/* ------------------------------------------------------------------------ */

/* Whole-tensor sums (of values, or of squares): `parts` blocks each sum a
 * fixed share in double, then one thread adds the shares in order. */
#define SUM_PARTS 64

__global__ void k_sum_parts(const float *x, int64_t n, int parts, int square, double *part) {
    __shared__ double sh[32];
    double s = 0.0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)parts * blockDim.x)
        s += square ? (double)x[i] * x[i] : (double)x[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* The shares in order, divided by div: into outf (as float) or outd. */
__global__ void k_sum_final(const double *part, int64_t np, double div, float *outf,
                            double *outd) {
    double s = 0.0;
    for (int64_t i = 0; i < np; i++) s += part[i];
    if (outf) outf[0] = (float)(s / div);
    if (outd) *outd = s / div;
}

/* reduce_to: each output element sums its sources in the source's flat
 * order (the reduced coordinates in row-major order), in double: the CPU's
 * order, so the same bits. */
__global__ void k_reduce_to(const float *a, float *o, int64_t n, cu_dims os, cu_dims as,
                            cu_dims ast, int64_t R) {
    CU_FOR(f, n) {
        int64_t base = 0, rem = f;
        for (int d = 3; d >= 0; d--) {
            int64_t c = rem % os.d[d];
            rem /= os.d[d];
            if (os.d[d] == as.d[d]) base += c * ast.d[d];
        }
        double s = 0.0;
        for (int64_t k = 0; k < R; k++) {
            int64_t off = base, kr = k;
            for (int d = 3; d >= 0; d--) {
                if (os.d[d] == as.d[d]) continue;
                off += (kr % as.d[d]) * ast.d[d];
                kr /= as.d[d];
            }
            s += a[off];
        }
        o[f] = (float)s;
    }
}

/* reduce_to's common case, a gradient summed over leading rows (out[j] =
 * sum over r of a[r * inner + j]): blocks of 32 columns x 8 row slices,
 * each thread a slice's rows in order, then the 8 slices in order. */
__global__ void k_reduce_rows(const float *a, float *o, int64_t outer, int64_t inner) {
    __shared__ double sh[8][33];
    int cx = threadIdx.x & 31, sy = threadIdx.x >> 5;
    int64_t j = (int64_t)blockIdx.x * 32 + cx;
    double s = 0.0;
    if (j < inner)
        for (int64_t r = sy; r < outer; r += 8) s += a[r * inner + j];
    sh[sy][cx] = s;
    __syncthreads();
    if (sy == 0 && j < inner) {
        double t = sh[0][cx];
        for (int k = 1; k < 8; k++) t += sh[k][cx];
        o[j] = (float)t;
    }
}

/* Whether t's shape (leading 1s aside) is a's trailing shape. */
static bool trailing_shape(const tnn_tensor *t, const tnn_tensor *a) {
    int lead = 0;
    while (lead < t->ndim - 1 && t->shape[lead] == 1) lead++;
    if (t->ndim - lead > a->ndim) return false;
    for (int i = lead; i < t->ndim; i++)
        if (t->shape[i] != a->shape[a->ndim - t->ndim + i]) return false;
    return true;
}

int tnn__cu_reduce(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0];
    cudaStream_t st = tnn__cu.stream;
    if (t->op == TNN_OP_REDUCE_TO && t->nelem > 1 && trailing_shape(t, a)) {
        int64_t inner = t->nelem;
        TNN_LAUNCH(k_reduce_rows, (unsigned)((inner + 31) / 32), 256, 0, st, CF(a), FP(t),
                   a->nelem / inner, inner);
        return tnn__cu_launched("reduce_to");
    }
    if (t->op == TNN_OP_REDUCE_TO) {
        cu_dims os = cu_shape4(t), as = cu_shape4(a), ast;
        int64_t acc = 1, R = 1;
        for (int d = 3; d >= 0; d--) {
            ast.d[d] = acc;
            acc *= as.d[d];
            if (os.d[d] != as.d[d]) R *= as.d[d];
        }
        TNN_LAUNCH(k_reduce_to, cu_blocks(t->nelem), CU_THREADS, 0, st, CF(a), FP(t), t->nelem,
                   os, as, ast, R);
        return tnn__cu_launched("reduce_to");
    }
    double *part = (double *)tnn__cu_scratch(SUM_PARTS * sizeof(double));
    if (!part) return tnn_last_status();
    TNN_LAUNCH(k_sum_parts, SUM_PARTS, CU_THREADS, 0, st, CF(a), a->nelem, SUM_PARTS, 0, part);
    double div = t->op == TNN_OP_MEAN ? (double)a->nelem : 1.0;
    TNN_LAUNCH(k_sum_final, 1, 1, 0, st, (const double *)part, (int64_t)SUM_PARTS, div, FP(t),
               (double *)NULL);
    return tnn__cu_launched(tnn__ops[t->op].name);
}

/* ------------------------------------------------------------------------ */
/* Embeddings and dequantization                                            */
/* ------------------------------------------------------------------------ */

/* Rows of a GGML-typed matrix to f32, one thread per block of bs values:
 * rows 0..rows-1, or the rows idx names (checked against V). */
__global__ void k_deq_rows(int type, const char *w, int64_t row_bytes, const int32_t *idx,
                           int64_t V, int64_t rows, int64_t K, int bs, float *out,
                           tnn_cu_fault *fault, int node) {
    int64_t nb = K / bs;
    CU_FOR(f, rows * nb) {
        int64_t r = f / nb, k = f % nb, src = r;
        if (idx) {
            src = idx[r];
            if (src < 0 || src >= V) {
                if (k == 0) cu_fault(fault, CU_FAULT_INDEX, node, r, src, V);
                continue;
            }
        }
        tnn__deq_block(type, w + src * row_bytes, k, out + r * K + k * bs);
    }
}

int tnn__cu_dequantize(const tnn_tensor *w, const int32_t *idx, int64_t rows, float *out,
                       int node) {
    const tnn_qtype_info *qi = tnn__qtype(w->gtype);
    int64_t rb = tnn__qtype_row_bytes(w->gtype, w->shape[1]);
    if (!qi || rb < 0) return tnn_last_status() ? tnn_last_status() : TNN_ERR_FORMAT;
    int64_t K = w->shape[1];
    if (rows > 0)
        TNN_LAUNCH(k_deq_rows, cu_blocks(rows * (K / qi->block)), CU_THREADS, 0, tnn__cu.stream,
                   w->gtype, (const char *)w->data, rb, idx, w->shape[0], rows, K, qi->block, out,
                   tnn__cu.fault, node);
    return tnn__cu_launched("dequantize");
}

__global__ void k_get_rows(const float *tab, int64_t V, int64_t d, const int32_t *idx, int64_t n,
                           float *out, tnn_cu_fault *fault, int node) {
    CU_FOR(f, n * d) {
        int64_t i = f / d, j = f % d;
        int32_t r = idx[i];
        if (r < 0 || r >= V) {
            if (j == 0) cu_fault(fault, CU_FAULT_INDEX, node, i, r, V);
            continue;
        }
        out[f] = tab[(int64_t)r * d + j];
    }
}

/* out[idx[i], :] += dout[i, :] over the zeroed out, each output row's
 * rows added in increasing i as on the CPU, so the result is the same bits
 * for any launch. A block per row i (a column a thread): the block of the
 * first row with an index sums all of that index's rows, j = i, i + 1, ...,
 * and writes its output row once; the blocks of later rows with the index
 * find the earlier one and return. Out-of-range indices are one class: the
 * first such row (the one a serial loop meets first) reports the fault and
 * none adds anything.
 * Both scans read idx by chunks of GRB_PER entries a thread. The scan back
 * stops at the first chunk with a match. The scan forward lists a chunk's
 * matching rows in shared memory, in order (each thread checks GRB_PER
 * consecutive rows; a block-wide prefix of the counts places them), and the
 * threads add those rows' columns. A block reads at most all of idx, from
 * L2 (16 KiB at N = 4096): N^2 entries in all, a few microseconds at
 * N = 4096; at N = 1M distinct indices about 4 TB, near a second, slower
 * but right. The memset before it writes all of out anyway. */
#define GRB_THREADS 256
#define GRB_PER 4

__global__ void __launch_bounds__(GRB_THREADS)
    k_get_rows_back(const float *dout, int64_t n, int64_t d, const int32_t *idx, int64_t V,
                    float *out, tnn_cu_fault *fault, int node) {
    __shared__ int list[GRB_THREADS * GRB_PER]; /* the chunk's matches: offsets from its start */
    __shared__ int wsum[GRB_THREADS / 32];
    int64_t i = blockIdx.x, chunk = GRB_THREADS * GRB_PER;
    int t = threadIdx.x, lane = t & 31, w = t >> 5;
    int32_t r = idx[i];
    bool bad = r < 0 || r >= V;
    for (int64_t b = 0; b < i; b += chunk) {
        int hit = 0;
        for (int k = 0; k < GRB_PER; k++) {
            int64_t j = b + k * GRB_THREADS + t; /* coalesced: the order does not matter here */
            if (j >= i) break;
            int32_t q = idx[j];
            hit |= bad ? q < 0 || q >= V : q == r;
        }
        if (__syncthreads_or(hit)) return;
    }
    if (bad) {
        if (t == 0) cu_fault(fault, CU_FAULT_INDEX, node, i, r, V);
        return;
    }
    float *o = out + (int64_t)r * d;
    for (int64_t b = i; b < n; b += chunk) {
        int m[GRB_PER], c = 0;
        for (int k = 0; k < GRB_PER; k++) {
            int64_t j = b + GRB_PER * t + k;
            m[k] = j < n && idx[j] == r;
            c += m[k];
        }
        int at = c; /* inclusive prefix over the warp, then the earlier warps' totals */
        for (int s = 1; s < 32; s <<= 1) {
            int y = __shfl_up_sync(0xffffffffu, at, s);
            if (lane >= s) at += y;
        }
        if (lane == 31) wsum[w] = at;
        __syncthreads(); /* the previous chunk's list has been read: each thread is here */
        int total = 0;
        at -= c;
        for (int k = 0; k < GRB_THREADS / 32; k++) {
            if (k < w) at += wsum[k];
            total += wsum[k];
        }
        for (int k = 0; k < GRB_PER; k++)
            if (m[k]) list[at++] = GRB_PER * t + k;
        __syncthreads();
        if (total == 0) continue; /* in every thread: the next wsum may be written */
        for (int64_t col = t; col < d; col += GRB_THREADS) {
            /* row i is in the first chunk: the sum starts there, from +0 as on out's zeros */
            float a = b == i ? 0.0f : o[col];
            const float *src = dout + b * d + col;
            CU_UNROLL(4)
            for (int k = 0; k < total; k++) a += src[(int64_t)list[k] * d];
            o[col] = a;
        }
    }
}

int tnn__cu_embed(tnn_tensor *t) {
    cudaStream_t st = tnn__cu.stream;
    const tnn_tensor *idx = t->src[1];
    if (t->op == TNN_OP_GET_ROWS_BACK) {
        const tnn_tensor *d = t->src[0];
        int64_t n = d->shape[0];
        if (n > INT32_MAX)
            return TNN_ERR(TNN_ERR_UNSUPPORTED, "%lld rows: too many for one grid", (long long)n);
        int rc = tnn__cu_status(cudaMemsetAsync(t->data, 0, t->nbytes, st), "tnn_get_rows_back");
        if (rc || n == 0) return rc;
        TNN_LAUNCH(k_get_rows_back, (unsigned)n, GRB_THREADS, 0, st, CF(d), n, d->shape[1],
                   (const int32_t *)idx->data, t->shape[0], FP(t), tnn__cu.fault, t->id);
        return tnn__cu_launched("tnn_get_rows_back");
    }
    const tnn_tensor *tab = t->src[0];
    int64_t n = idx->shape[0], V = tab->shape[0], d = tab->shape[1];
    if (tab->dtype == TNN_GGML)
        return tnn__cu_dequantize(tab, (const int32_t *)idx->data, n, FP(t), t->id);
    TNN_LAUNCH(k_get_rows, cu_blocks(n * d), CU_THREADS, 0, st, CF(tab), V, d,
               (const int32_t *)idx->data, n, FP(t), tnn__cu.fault, t->id);
    return tnn__cu_launched("tnn_get_rows");
}

/* ------------------------------------------------------------------------ */
/* Products                                                                 */
/* ------------------------------------------------------------------------ */

/* A batched product's geometry: C (.., M, N) = op(A) @ op(B), the operands'
 * stored row lengths, and per batch element offsets of the outer and inner
 * batch dimension (0 where an operand is broadcast); batch dims are
 * right-aligned to 2 as matmul.c does. */
typedef struct {
    int64_t M, N, K, lda, ldb;
    int64_t outer, inner;     /* the output's batch dims */
    int64_t a_out, a_in;      /* A's offsets per outer / inner batch index */
    int64_t b_out, b_in;
} mm_geom;

static void batch2(const tnn_tensor *t, int64_t out[2]) {
    int nb = t->ndim - 2;
    out[0] = nb >= 2 ? t->shape[nb - 2] : 1;
    out[1] = nb >= 1 ? t->shape[nb - 1] : 1;
}

static mm_geom mm_geometry(const tnn_tensor *t, bool ta, bool tb) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    int64_t ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int64_t br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int64_t abat[2], bbat[2], obat[2];
    batch2(a, abat);
    batch2(b, bbat);
    batch2(t, obat);
    mm_geom g = {ta ? ac : ar, tb ? br : bc, ta ? ar : ac, ac, bc, obat[0], obat[1], 0, 0, 0, 0};
    g.a_out = abat[0] == 1 ? 0 : abat[1] * ar * ac;
    g.a_in = abat[1] == 1 ? 0 : ar * ac;
    g.b_out = bbat[0] == 1 ? 0 : bbat[1] * br * bc;
    g.b_in = bbat[1] == 1 ? 0 : br * bc;
    return g;
}

__global__ void k_widen_bf16(const uint16_t *src, float *dst, int64_t n) {
    CU_FOR(i, n) dst[i] = tnn__bf2f(src[i]);
}

/* Four values a thread (one 16-byte load, one 8-byte store) where both
 * buffers are aligned for it, as planned buffers and the scratch are. */
__global__ void k_narrow_bf16(const float *src, uint16_t *dst, int64_t n) {
    int64_t n4 = (uintptr_t)src % 16 == 0 && (uintptr_t)dst % 8 == 0 ? n / 4 : 0;
    CU_FOR(i, n4) {
        float4 v = ((const float4 *)src)[i];
        uint2 o;
        o.x = tnn__f2bf(v.x) | (uint32_t)tnn__f2bf(v.y) << 16;
        o.y = tnn__f2bf(v.z) | (uint32_t)tnn__f2bf(v.w) << 16;
        ((uint2 *)dst)[i] = o;
    }
    CU_FOR(i, n - 4 * n4) dst[4 * n4 + i] = tnn__f2bf(src[4 * n4 + i]);
}
static unsigned narrow_blocks(int64_t n) { return cu_blocks(n % 4 ? n : n / 4); }

/* bf16 weights on the tensor cores: the activations rounded to bf16 (as
 * the CPU's vdpbf16ps path does), f32 accumulation, into C (t's data, or a
 * sum the product is added to with beta 1). TNN_ERR_UNSUPPORTED when
 * cuBLAS cannot: the caller widens the weights instead. */
static int matmul_bf16(tnn_tensor *t, bool ta, bool tb, float *C, float beta) {
    if (!tnn__cu_bf16_gemm_ok()) return TNN_ERR_UNSUPPORTED;
    const tnn_tensor *a = t->src[0];
    const uint16_t *a16 = (const uint16_t *)a->data; /* bf16 activations: as they are */
    if (a->dtype == TNN_F32) {
        uint16_t *r = (uint16_t *)tnn__cu_scratch((size_t)a->nelem * sizeof(uint16_t));
        if (!r) return tnn_last_status();
        TNN_LAUNCH(k_narrow_bf16, narrow_blocks(a->nelem), CU_THREADS, 0, tnn__cu.stream, CF(a),
                   r, a->nelem);
        a16 = r;
    }
    mm_geom g = mm_geometry(t, ta, tb);
    const uint16_t *B = (const uint16_t *)t->src[1]->data;
    for (int64_t i0 = 0; i0 < g.outer; i0++) {
        int rc = tnn__cu_gemm_bf16(ta, tb, g.M, g.N, g.K, a16 + i0 * g.a_out, g.lda, g.a_in,
                                   B + i0 * g.b_out, g.ldb, g.b_in, beta,
                                   C + i0 * g.inner * g.M * g.N, g.M * g.N, g.inner);
        if (rc) return rc;
    }
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Decoding products                                                        */
/* ------------------------------------------------------------------------ */

/* Decoding: y (N, M) = x (N, K) @ W^T for a GGML-typed W (M, K) and a few
 * rows of x, reading W once, a warp per weight row. One launch serves a set
 * of up to QMV_SET such products that share x (a layer's q, k and v: their
 * rows one after another over the grid), or a gated pair (the feed-forward's
 * silu(x Wg^T) * (x Wu^T): a warp takes the same row of both).
 *
 * k_qmv (block types, K a multiple of 4, x small enough to stage in shared
 * memory): each lane decodes one 8-value part of a block (tnn__deq_part), so
 * a warp reads 8 blocks of 32 values, or one of 256, side by side, and the
 * matching x values as two float4 loads from shared memory; the lanes' sums
 * are then added by the warp. k_qmatvec (any type): each lane decodes whole
 * blocks, x read from global memory. Either ends with the epilogue below. */
#define QMV_ROWS 8
#define QMV_WARPS 4 /* weight rows per block */
#define QMV_CHUNK 4 /* warp steps whose loads are issued together */
#define QMV_SET 3

/* What a decoding product does with each result: store it, or (the node
 * after the product in the plan, folded into it by tnn__cu_run_fused) add
 * or multiply the same element of another tensor (or a bias, zrow 0), apply
 * SiLU/GELU, or write it into a KV cache at row pos[0] + n; ROPE (one row
 * of x, pairs (2i, 2i+1) on rows of the same block): the RoPE of the result
 * written into a KV cache, each warp taking the other element of its pair
 * from its neighbour through shared memory. */
typedef struct {
    int op;         /* TNN_OP_NONE, ADD, MUL, SILU, GELU, KV_WRITE or ROPE */
    const float *z; /* ADD/MUL: the other operand */
    int64_t zrow;   /* its row length, 0 for a bias read at [m] */
    void *cache;    /* KV_WRITE: the cache (ctx rows of M), f16 or f32 */
    int f16;
    int64_t ctx;
    const int32_t *pos;
    tnn_cu_fault *fault;
    int node;
    cu_rope rope; /* ROPE: the rotation */
} cu_epi;

/* The products of one launch: the same x, weight type and K. */
typedef struct {
    int n;                   /* products */
    const char *w[QMV_SET];  /* their weights */
    const char *up;          /* gated pair (n = 1): y = silu(x w[0]^T) * (x up^T) */
    float *y[QMV_SET];       /* their outputs (unused where the epilogue writes elsewhere) */
    int64_t M[QMV_SET];      /* their rows */
    cu_epi e[QMV_SET];
    /* norm: x is an RMS norm's input, normalized (times g, when not NULL)
     * as the products read it, as k_rms_norm would */
    int norm;
    const float *g;
    double eps;
    int early; /* the weights (and RoPE angles) may be read before cu_pdl_wait() */
    int rope;  /* some product's epilogue is ROPE */
} cu_mv;

/* The RMS norm scale of one row of K, as k_rms_norm computes it (the
 * squares summed in double), every lane of the warp getting it. */
__device__ __forceinline__ float mv_row_scale(const float *row, int64_t K, double eps) {
    double ss = 0.0;
    for (int64_t k = threadIdx.x & 31; k < K; k += 32) ss += (double)row[k] * row[k];
    ss = cu_warp_sum(ss);
    return (float)(1.0 / sqrt(ss / (double)K + eps));
}

/* The scales of x's N rows (1 unless p.norm), each warp computing all. */
__device__ __forceinline__ void mv_norm_scales(const cu_mv &p, const float *x, int64_t N,
                                               int64_t K, float *sc) {
CU_UNROLL(QMV_ROWS)
    for (int n = 0; n < QMV_ROWS; n++)
        sc[n] = p.norm && n < N ? mv_row_scale(x + n * K, K, p.eps) : 1.0f;
}

/* x[k] as the product reads it: normalized when p.norm. */
__device__ __forceinline__ float mv_x(const cu_mv &p, float x, float sc, int64_t k) {
    if (!p.norm) return x;
    return p.g ? (x * sc) * p.g[k] : x * sc;
}

/* Lane 0 of the warp of row m stores the results of the n rows of x. */
__device__ __forceinline__ void epi_store(const cu_epi &e, float *y, int64_t N, int64_t n,
                                          int64_t M, int64_t m, float s) {
    switch (e.op) {
    case TNN_OP_ADD: s = s + e.z[n * e.zrow + m]; break;
    case TNN_OP_MUL: s = s * e.z[n * e.zrow + m]; break;
    case TNN_OP_SILU: s = s * cu_sigmoid(s); break;
    case TNN_OP_GELU: s = cu_gelu(s); break;
    case TNN_OP_KV_WRITE: {
        int64_t p = e.pos[0];
        if (p < 0 || p + N > e.ctx) {
            if (m == 0 && n == 0) cu_fault(e.fault, CU_FAULT_KV, e.node, p, p + N - 1, e.ctx);
            return;
        }
        if (e.f16)
            ((uint16_t *)e.cache)[(p + n) * M + m] = tnn__f2h(s);
        else
            ((float *)e.cache)[(p + n) * M + m] = s;
        return;
    }
    default: break;
    }
    y[n * M + m] = s;
}

/* Row r of the products' rows laid end to end: its product g and its row m
 * there; false past the end. */
__device__ __forceinline__ bool mv_locate(const cu_mv &p, int64_t r, int *g, int64_t *m) {
    *m = r;
    for (*g = 0; *g < p.n; (*g)++) {
        if (*m < p.M[*g]) return true;
        *m -= p.M[*g];
    }
    return false;
}

/* The warp's row when each warp takes one. */
__device__ __forceinline__ bool mv_row(const cu_mv &p, int *g, int64_t *m) {
    return mv_locate(p, (int64_t)blockIdx.x * QMV_WARPS + (threadIdx.x >> 5), g, m);
}

/* The warp's sums for each row of x and, for a gated pair, of the up row:
 * reduced over the warp, then stored by lane 0. */
template <int R = QMV_ROWS>
__device__ __forceinline__ void mv_finish(const cu_mv &p, int g, int64_t N, int64_t m,
                                          const float *acc, const float *acc_up,
                                          float *rsum = NULL) {
    int lane = threadIdx.x & 31;
CU_UNROLL(R)
    for (int n = 0; n < R; n++) {
        if (n < N) {
            float s = cu_warp_sum(acc[n]);
            if (p.up) {
                float u = cu_warp_sum(acc_up[n]);
                s = (s * cu_sigmoid(s)) * u; /* silu, then the product: the unfused ops */
            }
            if (lane == 0 && rsum && p.e[g].op == TNN_OP_ROPE)
                rsum[threadIdx.x >> 5] = s; /* rotated after the block's barrier */
            else if (lane == 0)
                epi_store(p.e[g], p.y[g], N, n, p.M[g], m, s);
        }
    }
}

/* Part p of block kb of a row: tnn__deq_part's values, with word loads
 * where the block layout keeps them aligned (Q4_1: 20-byte blocks) or
 * half-word loads (Q4_0, Q8_0), fewer load instructions than bytes. */
template <int QT>
__device__ __forceinline__ void qmv_part(const char *row, int64_t kb, int p, float *v) {
    if constexpr (QT == TNN_QT_Q4_1) {
        const char *b = row + kb * (int64_t)sizeof(tnn_block_q4_1);
        uint32_t dm = *(const uint32_t *)b, q = *(const uint32_t *)(b + 4 + 4 * p);
        float d = cu_h2f((uint16_t)(dm & 0xffffu)), m = cu_h2f((uint16_t)(dm >> 16));
        for (int i = 0; i < 4; i++) {
            unsigned c = (q >> (8 * i)) & 255u;
            v[i] = d * (float)(c & 15u) + m;
            v[4 + i] = d * (float)(c >> 4) + m;
        }
    } else if constexpr (QT == TNN_QT_Q4_0) {
        const char *b = row + kb * (int64_t)sizeof(tnn_block_q4_0);
        const uint16_t *h = (const uint16_t *)b;
        float d = cu_h2f(h[0]);
        unsigned q = h[1 + 2 * p] | (unsigned)h[2 + 2 * p] << 16;
        for (int i = 0; i < 4; i++) {
            unsigned c = (q >> (8 * i)) & 255u;
            v[i] = d * (float)((int)(c & 15u) - 8);
            v[4 + i] = d * (float)((int)(c >> 4) - 8);
        }
    } else if constexpr (QT == TNN_QT_Q8_0) {
        const char *b = row + kb * (int64_t)sizeof(tnn_block_q8_0);
        const uint16_t *h = (const uint16_t *)b;
        float d = cu_h2f(h[0]);
        for (int i = 0; i < 4; i++) {
            unsigned w = h[1 + 4 * p + i];
            v[2 * i] = d * (float)(int8_t)(w & 255u);
            v[2 * i + 1] = d * (float)(int8_t)(w >> 8);
        }
    } else {
        tnn__deq_part(QT, row, kb, p, v);
    }
}

/* x (N rows of K) is staged in shared memory by the block, normalized once
 * when p.norm (the scales as k_rms_norm computes them); the host runs this
 * kernel only where N K floats fit (QMV_SMEM), on at most the blocks the
 * GPU holds at once, each warp then taking rows r, r + the grid's warps, ...
 * so a large product (an LM head) stages x once per block, not per 4 rows. */
#define QMV_SMEM (48 * 1024)
#define QMV_XLOADS 4 /* x's 16-byte loads a thread issues together */

template <int QT, bool GATED, bool MULTI, int R>
/* occupancy: at most 64 registers (128 gated), more warps to keep loads in
 * flight; Q6_K's decoder needs more. R: the most rows of x (1: decoding one
 * sequence, whose single sum per row then fits the 64 registers unspilled;
 * else QMV_ROWS). */
__global__ void __launch_bounds__(32 * QMV_WARPS, QT == TNN_QT_Q6_K ? 1 : GATED ? 4 : 8)
    k_qmv(cu_mv p, int64_t row_bytes, const float *__restrict__ x, int64_t N, int64_t K) {
    constexpr int BS = QT == TNN_QT_Q4_K || QT == TNN_QT_Q5_K || QT == TNN_QT_Q6_K ||
                               QT == TNN_QT_Q2_K || QT == TNN_QT_Q3_K || QT == TNN_QT_IQ4_XS
                           ? 256
                           : 32;
    constexpr int PARTS = BS / 8, STEP = 32 / PARTS; /* blocks per warp step */
    constexpr bool SPLIT = QT == TNN_QT_Q4_0 || QT == TNN_QT_Q4_1 || QT == TNN_QT_Q5_0 ||
                           QT == TNN_QT_Q5_1 || QT == TNN_QT_IQ4_NL;
    TNN_DYN_SMEM(float, xs); /* N x K */
    __shared__ float scale[QMV_ROWS];
    __shared__ float rsum[QMV_WARPS]; /* ROPE epilogues: each warp's result */
    int lane = threadIdx.x & 31, wi = threadIdx.x >> 5, part = lane % PARTS, g;
    /* rows r0, r0 + rstep, ...: a block stages x once for all its warps' rows */
    int64_t m, nb = K / BS, r = (int64_t)blockIdx.x * QMV_WARPS + wi;
    int64_t rstep = (int64_t)gridDim.x * QMV_WARPS;
    bool live = mv_locate(p, r, &g, &m);
    const char *row = live ? p.w[g] + m * row_bytes : NULL;
    const char *urow = GATED && live ? p.up + m * row_bytes : NULL;
    /* QMV_CHUNK steps at a time: their weight loads are issued together
     * (a loop of unknown length would run its few steps one by one); the
     * first chunk's are in flight while the block stages x. Steps past the
     * row's end load its last block again (unused): with no branch between
     * them, the compiler issues all the loads before the first decode. */
    float v[QMV_CHUNK][8], vu[GATED ? QMV_CHUNK : 1][8];
    int64_t kb0 = lane / PARTS;
#define QMV_LOAD_CHUNK()                                                                      \
    CU_UNROLL(QMV_CHUNK)                                                                       \
    for (int c = 0; c < QMV_CHUNK; c++) {                                                     \
        int64_t kb = kb0 + c * STEP < nb ? kb0 + c * STEP : nb - 1;                           \
        qmv_part<QT>(row, kb, part, v[c]);                                                    \
        if (GATED) qmv_part<QT>(urow, kb, part, vu[GATED ? c : 0]);                           \
    }
    if (!p.early) cu_pdl_wait();
    if (live && nb > 0) {
        QMV_LOAD_CHUNK()
    }
    /* a ROPE epilogue's angle (one row of x: row 0 of the positions) */
    bool rope_row = !MULTI && p.rope && live && p.e[g].op == TNN_OP_ROPE;
    int g0 = g;
    int64_t m0 = m;
    float rcs = 0.0f, rsn = 0.0f;
    if (rope_row) cu_rope_angle(p.e[g].rope, 0, (m % p.e[g].rope.hd) / 2, &rcs, &rsn);
    cu_pdl_wait(); /* x and the epilogue's operands are the kernels' before */
    cu_pdl_next();
    /* x into shared memory, each thread's loads in flight together (16
     * bytes each: one trip to L2, not one per element) */
    int64_t n4 = N * K / 4;
    for (int64_t i0 = 0; i0 < n4; i0 += QMV_XLOADS * blockDim.x) {
        float4 xv[QMV_XLOADS];
CU_UNROLL(QMV_XLOADS)
        for (int u = 0; u < QMV_XLOADS; u++) {
            int64_t i = i0 + u * blockDim.x + threadIdx.x;
            if (i < n4) xv[u] = ((const float4 *)x)[i];
        }
CU_UNROLL(QMV_XLOADS)
        for (int u = 0; u < QMV_XLOADS; u++) {
            int64_t i = i0 + u * blockDim.x + threadIdx.x;
            if (i < n4) ((float4 *)xs)[i] = xv[u];
        }
    }
    if (p.norm) { /* the rows' scales from there (k_rms_norm's order), then x scaled in place */
        __syncthreads();
        for (int64_t n = wi; n < N; n += QMV_WARPS) {
            float sc = mv_row_scale(xs + n * K, K, p.eps);
            if (lane == 0) scale[n] = sc;
        }
        __syncthreads();
        for (int64_t i0 = 0; i0 < N * K; i0 += QMV_XLOADS * blockDim.x) {
            float gv[QMV_XLOADS];
CU_UNROLL(QMV_XLOADS)
            for (int u = 0; u < QMV_XLOADS; u++) {
                int64_t i = i0 + u * blockDim.x + threadIdx.x;
                gv[u] = p.g && i < N * K ? p.g[i % K] : 1.0f;
            }
CU_UNROLL(QMV_XLOADS)
            for (int u = 0; u < QMV_XLOADS; u++) {
                int64_t i = i0 + u * blockDim.x + threadIdx.x;
                if (i < N * K) xs[i] = p.g ? (xs[i] * scale[i / K]) * gv[u] : xs[i] * scale[i / K];
            }
        }
    }
    __syncthreads();
    /* this lane's values sit at o0 .. o0+3 and o1 .. o1+3 of a block */
    int o0 = SPLIT ? 4 * part : 8 * part, o1 = SPLIT ? 16 + 4 * part : 8 * part + 4;
    while (live) { /* whole warps */
        float acc[R] = {0}, acc_up[R] = {0};
        while (kb0 < nb) {
CU_UNROLL(QMV_CHUNK)
            for (int c = 0; c < QMV_CHUNK; c++) {
                if (kb0 + c * STEP >= nb) break;
                const float *xb = xs + (kb0 + c * STEP) * BS;
CU_UNROLL(R)
                for (int n = 0; n < R; n++) {
                    if (n < N) {
                        float4 a = *(const float4 *)(xb + n * K + o0);
                        float4 b = *(const float4 *)(xb + n * K + o1);
                        const float *w = v[c];
                        acc[n] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w +
                                  w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
                        if (GATED) {
                            const float *u = vu[GATED ? c : 0];
                            acc_up[n] += u[0] * a.x + u[1] * a.y + u[2] * a.z + u[3] * a.w +
                                         u[4] * b.x + u[5] * b.y + u[6] * b.z + u[7] * b.w;
                        }
                    }
                }
            }
            kb0 += QMV_CHUNK * STEP;
            if (kb0 < nb) {
                QMV_LOAD_CHUNK()
            }
        }
        /* MULTI: the warp's next row, its loads in flight during this
         * row's sums */
        int gd = g;
        int64_t md = m;
        live = MULTI && mv_locate(p, r += rstep, &g, &m);
        if (live) {
            row = p.w[g] + m * row_bytes;
            urow = GATED ? p.up + m * row_bytes : NULL;
            kb0 = lane / PARTS;
            QMV_LOAD_CHUNK()
        }
        mv_finish<R>(p, gd, N, md, acc, acc_up, MULTI ? (float *)NULL : rsum);
    }
#undef QMV_LOAD_CHUNK
    if (!MULTI && p.rope) { /* (uniform over the grid) */
        __syncthreads();
        if (rope_row && lane == 0) {
            const cu_epi &e = p.e[g0];
            int64_t p0 = e.pos[0], M = p.M[g0];
            if (p0 < 0 || p0 + 1 > e.ctx) {
                if (m0 == 0) cu_fault(e.fault, CU_FAULT_KV, e.node, p0, p0, e.ctx);
            } else {
                float a = rsum[wi & ~1], b = rsum[wi | 1]; /* rows 2i and 2i + 1 */
                float y = wi & 1 ? a * rsn + b * rcs : a * rcs - b * rsn;
                if (e.f16)
                    ((uint16_t *)e.cache)[p0 * M + m0] = tnn__f2h(y);
                else
                    ((float *)e.cache)[p0 * M + m0] = y;
            }
        }
    }
}

template <int BS>
__global__ void k_qmatvec(int type, cu_mv p, int64_t row_bytes, const float *x, int64_t N,
                          int64_t K) {
    int lane = threadIdx.x & 31, g;
    int64_t m;
    cu_pdl_wait();
    cu_pdl_next();
    if (!mv_row(p, &g, &m)) return; /* whole warps leave together */
    float acc[QMV_ROWS] = {0}, acc_up[QMV_ROWS] = {0}, sc[QMV_ROWS];
    mv_norm_scales(p, x, N, K, sc);
    float v[BS];
    const char *row = p.w[g] + m * row_bytes, *urow = p.up ? p.up + m * row_bytes : NULL;
    for (int64_t k = lane; k < K / BS; k += 32) {
        for (int r = 0; r < (urow ? 2 : 1); r++) {
            tnn__deq_block(type, r ? urow : row, k, v);
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + n * K + k * BS;
                float s = 0.0f;
                for (int i = 0; i < BS; i++) s += v[i] * mv_x(p, xr[i], sc[n], k * BS + i);
                (r ? acc_up : acc)[n] += s;
            }
        }
    }
    mv_finish(p, g, N, m, acc, acc_up);
}

/* Whether products of N rows of x (at X) by K-wide rows of a weight type
 * take k_qmv: a block type its parts decoder knows, K a multiple of 4, x
 * 16-byte aligned and small enough to stage in shared memory. */
static bool qmv_vec(int gtype, int64_t N, int64_t K, const float *X) {
    bool typed = gtype == TNN_QT_Q4_0 || gtype == TNN_QT_Q4_1 || gtype == TNN_QT_Q5_0 ||
                 gtype == TNN_QT_Q5_1 || gtype == TNN_QT_Q8_0 || gtype == TNN_QT_Q4_K ||
                 gtype == TNN_QT_Q5_K || gtype == TNN_QT_Q6_K || gtype == TNN_QT_IQ4_NL ||
                 gtype == TNN_QT_Q2_K || gtype == TNN_QT_Q3_K || gtype == TNN_QT_IQ4_XS;
    return typed && K % 4 == 0 && (uintptr_t)X % 16 == 0 &&
           (size_t)(N * K) * sizeof(float) <= QMV_SMEM;
}

/* Whether k_qmv runs p's products as the MULTI instance: more rows than
 * the GPU holds blocks for at once (8 an SM), gated pairs excepted. */
static bool qmv_multi(const cu_mv &p) {
    int64_t rows = 0;
    for (int i = 0; i < p.n; i++) rows += p.M[i];
    return (rows + QMV_WARPS - 1) / QMV_WARPS > (int64_t)tnn__cu.sm_count * 8 && !p.up;
}

/* Launches the products of p, all with t's x (or, p.norm, the input of
 * the RMS norm that made it) and weight type. */
static int qmatvec(const tnn_tensor *t, const cu_mv &p) {
    const tnn_tensor *x = p.norm ? t->src[0]->src[0] : t->src[0], *w = t->src[1];
    int64_t N = x->shape[0], K = x->shape[1], rows = 0;
    for (int i = 0; i < p.n; i++) rows += p.M[i];
    const tnn_qtype_info *qi = tnn__qtype(w->gtype);
    int64_t rb = tnn__qtype_row_bytes(w->gtype, K);
    if (!qi || rb < 0) return tnn_last_status() ? tnn_last_status() : TNN_ERR_FORMAT;
    unsigned g = (unsigned)((rows + QMV_WARPS - 1) / QMV_WARPS);
    unsigned nt = 32 * QMV_WARPS;
    /* k_qmv: a product larger than the GPU holds at once (8 blocks an SM)
     * runs on that many blocks, each warp then taking several rows (MULTI:
     * a separate instance, since the loop costs the small products time) */
    unsigned cap = (unsigned)tnn__cu.sm_count * 8;
    bool multi = qmv_multi(p);
    unsigned gq = multi ? cap : g;
    cudaStream_t st = tnn__cu.stream;
    size_t smem = (size_t)(N * K) * sizeof(float);
    const float *X = CF(x);
    bool vec = qmv_vec(w->gtype, N, K, X);
#define QMV_GO(qt, gated, multi, r)                                                           \
    TNN_LAUNCH_PDL(k_qmv<qt COMMA gated COMMA multi COMMA r>, gq, nt, smem, st, p, rb, X, N, K)
#define QMV_CASE(qt)                                                                          \
    case qt:                                                                                  \
        if (p.up && N == 1)                                                                   \
            QMV_GO(qt, true, false, 1);                                                       \
        else if (p.up)                                                                        \
            QMV_GO(qt, true, false, QMV_ROWS);                                                \
        else if (multi && N == 1)                                                             \
            QMV_GO(qt, false, true, 1);                                                       \
        else if (multi)                                                                       \
            QMV_GO(qt, false, true, QMV_ROWS);                                                \
        else if (N == 1)                                                                      \
            QMV_GO(qt, false, false, 1);                                                      \
        else                                                                                  \
            QMV_GO(qt, false, false, QMV_ROWS);                                               \
        break
    if (vec) {
        switch (w->gtype) {
            QMV_CASE(TNN_QT_Q4_0);
            QMV_CASE(TNN_QT_Q4_1);
            QMV_CASE(TNN_QT_Q5_0);
            QMV_CASE(TNN_QT_Q5_1);
            QMV_CASE(TNN_QT_Q8_0);
            QMV_CASE(TNN_QT_Q4_K);
            QMV_CASE(TNN_QT_Q5_K);
            QMV_CASE(TNN_QT_Q6_K);
            QMV_CASE(TNN_QT_IQ4_NL);
            QMV_CASE(TNN_QT_Q2_K);
            QMV_CASE(TNN_QT_Q3_K);
            QMV_CASE(TNN_QT_IQ4_XS);
        default: vec = false; break;
        }
    }
#undef QMV_CASE
#undef QMV_GO
    if (!vec) {
        if (qi->block == 1)
            TNN_LAUNCH_PDL(k_qmatvec<1>, g, nt, 0, st, w->gtype, p, rb, X, N, K);
        else if (qi->block == 32)
            TNN_LAUNCH_PDL(k_qmatvec<32>, g, nt, 0, st, w->gtype, p, rb, X, N, K);
        else
            TNN_LAUNCH_PDL(k_qmatvec<256>, g, nt, 0, st, w->gtype, p, rb, X, N, K);
    }
    return tnn__cu_launched("tnn_matmul_nt");
}

static bool qmatvec_node(const tnn_tensor *t) {
    return t->op == TNN_OP_MATMUL && t->src[1]->dtype == TNN_GGML &&
           (t->iparam[0] & TNN_MM_TB) && t->src[0]->ndim == 2 && t->src[0]->shape[0] <= QMV_ROWS;
}

/* Node t (plan index i) is read only by the node at index `by`, and kept by
 * nobody: its value need not exist once that node has run. */
static bool only_read_by(const tnn_tensor *t, int32_t by) {
    return t->last_use == by && !(t->flags & TNN_FLAG_OUTPUT) && t != t->sess->result;
}

/* The TNN_OP_TO_BF16 node after plan[j] when it is plan[j]'s only reader:
 * plan[j]'s kernel can write the rounded values there itself. */
static tnn_tensor *bf16_next(tnn_tensor **plan, int32_t np, int32_t j) {
    if (j + 1 >= np) return NULL;
    tnn_tensor *nx = plan[j + 1];
    return nx->op == TNN_OP_TO_BF16 && nx->src[0] == plan[j] && plan[j]->dtype == TNN_F32 &&
                   only_read_by(plan[j], j + 1)
               ? nx
               : NULL;
}

/* Whether a node's input x, read by the kernel that runs the r nodes from
 * plan index i, keeps its buffer that long: the planner (fuse_next) frees a
 * buffer after the node that follows its last reader has its own, so only
 * nodes two past that reader can land on it. */
static bool lives_through(const tnn_tensor *x, int32_t i, int r) {
    return x->op == TNN_OP_NONE || (x->flags & TNN_FLAG_OUTPUT) || x == x->sess->result ||
           x->last_use >= i + r - 2;
}

/* The cache that KV write node kw fills, as an epilogue writes it (rows
 * of M values): false, e untouched, when the epilogues cannot write it. */
static bool epi_cache(cu_epi *e, const tnn_tensor *kw, int64_t M) {
    const tnn_tensor *cache = kw->src[0];
    if (cache->ndim != 2 || cache->shape[1] != M ||
        (cache->dtype != TNN_F16 && cache->dtype != TNN_F32))
        return false;
    e->cache = kw->data;
    e->f16 = cache->dtype == TNN_F16;
    e->ctx = cache->shape[0];
    e->pos = (const int32_t *)kw->src[2]->data;
    e->fault = tnn__cu.fault;
    e->node = kw->id;
    return true;
}

/* Whether node nx (the next in the plan, the only reader of t) can be
 * folded into the decoding product t; fills the epilogue when it can. */
static bool epilogue_of(const tnn_tensor *t, const tnn_tensor *nx, cu_epi *e) {
    memset(e, 0, sizeof *e);
    int64_t N = t->shape[0], M = t->shape[1];
    switch (nx->op) {
    case TNN_OP_ADD:
    case TNN_OP_MUL: {
        if (nx->src[0] != t && nx->src[1] != t) return false;
        const tnn_tensor *z = nx->src[0] == t ? nx->src[1] : nx->src[0];
        if (z == t || nx->nelem != t->nelem || z->dtype != TNN_F32) return false;
        if (z->nelem == N * M && z->shape[z->ndim - 1] == M)
            e->zrow = M;
        else if (z->nelem == M && z->shape[z->ndim - 1] == M)
            e->zrow = 0; /* a bias row, broadcast */
        else
            return false;
        e->z = CF(z);
        break;
    }
    case TNN_OP_SILU:
    case TNN_OP_GELU:
        if (nx->src[0] != t) return false;
        break;
    case TNN_OP_KV_WRITE: {
        if (nx->src[1] != t || !epi_cache(e, nx, M)) return false;
        break;
    }
    default: return false;
    }
    e->op = nx->op;
    return true;
}

/* Products b and a read the same x with weights of the same type and K. */
static bool same_input(const tnn_tensor *a, const tnn_tensor *b) {
    return qmatvec_node(b) && b->src[0] == a->src[0] && b->src[1]->gtype == a->src[1]->gtype;
}

/* After the ran nodes from plan[i] that the set p covers: a RoPE node of
 * one of its products (read by it alone, pairs (2i, 2i+1)) and the KV
 * write of its result, folded in as that product's ROPE epilogue. Returns
 * the nodes taken (2) or 0. */
static int rope_epilogue(tnn_tensor **plan, int32_t np, int32_t i, int ran, cu_mv *p) {
    int32_t j = i + ran;
    if (j + 1 >= np) return 0;
    tnn_tensor *rp = plan[j], *kw = plan[j + 1];
    if (rp->op != TNN_OP_ROPE || rp->ndim != 2 || rp->iparam[2] != 0 || rp->shape[0] != 1 ||
        kw->op != TNN_OP_KV_WRITE || kw->src[1] != rp || !only_read_by(rp, j + 1))
        return 0;
    int64_t off = 0, hd = rp->shape[1] / rp->iparam[0];
    for (int g = 0; g < p->n; off += p->M[g], g++) {
        tnn_tensor *t = plan[i + g];
        if (rp->src[0] != t) continue;
        const tnn_tensor *x = t->src[0];
        int gt = t->src[1]->gtype;
        cu_epi *e = &p->e[g];
        if (!only_read_by(t, j) || e->op != TNN_OP_NONE || off % 2 || p->M[g] % 2 || hd % 2 ||
            qmv_multi(*p))
            return 0;
        /* k_qmv with a warp per row, whether it stages x or the norm's input */
        if (!qmv_vec(gt, x->shape[0], x->shape[1], CF(x)) ||
            (x->op == TNN_OP_RMS_NORM && !qmv_vec(gt, x->shape[0], x->shape[1], CF(x->src[0]))))
            return 0;
        if (!epi_cache(e, kw, p->M[g])) return 0;
        e->op = TNN_OP_ROPE;
        e->rope = rope_params(rp);
        p->rope = 1;
        p->early = p->early && rope_settled(rp);
        return 2;
    }
    return 0;
}

/* The products starting at plan[i] one kernel can run (filled into p):
 * a gated pair, or a set of products of the same x with the last one's
 * reader folded in where it can be. Returns the nodes it covers; *last is
 * the index of the last product in it. */
static int match_products(tnn_tensor **plan, int32_t np, int32_t i, cu_mv *p, int32_t *last) {
    tnn_tensor *t = plan[i];
    memset(p, 0, sizeof *p);
    /* the gated pair: t, silu(t), u (same x), silu(t) * u */
    if (i + 3 < np) {
        tnn_tensor *sg = plan[i + 1], *u = plan[i + 2], *mul = plan[i + 3];
        if (sg->op == TNN_OP_SILU && sg->src[0] == t && only_read_by(t, i + 1) &&
            same_input(t, u) && u->src[1]->shape[0] == t->src[1]->shape[0] &&
            mul->op == TNN_OP_MUL && only_read_by(sg, i + 3) && only_read_by(u, i + 3) &&
            ((mul->src[0] == sg && mul->src[1] == u) || (mul->src[0] == u && mul->src[1] == sg))) {
            p->n = 1;
            p->w[0] = (const char *)t->src[1]->data;
            p->up = (const char *)u->src[1]->data;
            p->y[0] = FP(mul);
            p->M[0] = t->shape[1];
            p->early = cu_settled(t->src[1]) && cu_settled(u->src[1]);
            *last = i + 2;
            return 4;
        }
    }
    /* a set: t and the products after it that read the same x */
    int k = 0;
    p->early = 1;
    while (k < QMV_SET && i + k < np && (k == 0 || same_input(t, plan[i + k]))) {
        p->early = p->early && cu_settled(plan[i + k]->src[1]);
        p->w[k] = (const char *)plan[i + k]->src[1]->data;
        p->y[k] = FP(plan[i + k]);
        p->M[k] = plan[i + k]->shape[1];
        k++;
    }
    p->n = k;
    *last = i + k - 1;
    tnn_tensor *lp = plan[i + k - 1];
    int ran = k;
    if (i + k < np && only_read_by(lp, i + k) && epilogue_of(lp, plan[i + k], &p->e[k - 1])) {
        p->y[k - 1] = FP(plan[i + k]);
        ran = k + 1;
    }
    return ran + rope_epilogue(plan, np, i, ran, p);
}

/* Whether nx is a gradient sum that realize planned over its running sum
 * (TNN_FLAG_INPLACE, the sum's src[0]) adding t, plan[i], read by nothing
 * else, and t's sources other than the running sum's buffer: t's kernel can
 * then add its result there itself, and the sum's kernel is not needed. */
static bool sum_after(const tnn_tensor *t, const tnn_tensor *nx, int32_t i) {
    if (nx->op != TNN_OP_ADD || !(nx->flags & TNN_FLAG_INPLACE) || nx->src[1] != t ||
        nx->src[0] == t || nx->nelem != t->nelem || !only_read_by(t, i + 1))
        return false;
    for (int k = 0; k < TNN_MAX_SRC; k++)
        if (t->src[k] && tnn__overlaps(nx, t->src[k])) return false;
    return true;
}

/* An f32 or bf16 product before its gradient sum (sum_after): the GEMM adds
 * the product there (beta = 1). 2 when it ran, 0 when the pair does not fit
 * (then the product runs alone). */
static int matmul_accum(tnn_tensor *t, tnn_tensor *nx, int32_t i) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    if (!sum_after(t, nx, i) || a->dtype != b->dtype ||
        (a->dtype != TNN_F32 && (a->dtype != TNN_BF16 || !tnn__cu_bf16_gemm_ok())))
        return 0;
    bool ta = t->iparam[0] & TNN_MM_TA, tb = t->iparam[0] & TNN_MM_TB;
    if (a->dtype == TNN_BF16) {
        int rc = matmul_bf16(t, ta, tb, FP(nx), 1.0f);
        return rc == TNN_ERR_UNSUPPORTED ? 0 : rc ? rc : 2;
    }
    mm_geom g = mm_geometry(t, ta, tb);
    for (int64_t i0 = 0; i0 < g.outer; i0++) {
        int rc = tnn__cu_gemm_ab(ta, tb, g.M, g.N, g.K, 1.0f, CF(a) + i0 * g.a_out, g.lda, g.a_in,
                                 CF(b) + i0 * g.b_out, g.ldb, g.b_in, 1.0f,
                                 FP(nx) + i0 * g.inner * g.M * g.N, g.N, g.M * g.N, g.inner);
        if (rc) return rc;
    }
    return 2;
}

int tnn__cu_run_fused(tnn_tensor **plan, int32_t np, int32_t i) {
    tnn_tensor *t = plan[i];
    if (t->op == TNN_OP_MATMUL && i + 1 < np) {
        int rc = matmul_accum(t, plan[i + 1], i);
        if (rc) return rc;
    }
    /* A value that only a rounding to bf16 reads next (mixed precision: the
     * activations and gradients of bf16 products) is written rounded by the
     * kernel that makes it, into the rounding's buffer; the f32 one never */
    tnn_tensor *nb = bf16_next(plan, np, i);
    if (nb && t->op == TNN_OP_CROSS_ENTROPY_BACK) { /* the LM head's gradient */
        int rc = ce(t, nb->data, true);
        return rc ? rc : 2;
    }
    if (nb && t->op == TNN_OP_SWIGLU) {
        TNN_LAUNCH(k_swiglu<uint16_t>, cu_blocks(t->nelem), CU_THREADS, 0, tnn__cu.stream,
                   CF(t->src[0]), CF(t->src[1]), (const float *)NULL, (uint16_t *)nb->data,
                   (uint16_t *)NULL, t->nelem);
        int rc = tnn__cu_launched("tnn_swiglu");
        return rc ? rc : 2;
    }
    if (nb && t->op == TNN_OP_RMS_NORM) {
        int64_t cols = t->shape[t->ndim - 1], rows = t->nelem / cols;
        if (rows > INT32_MAX) return 0;
        TNN_LAUNCH(k_rms_norm<uint16_t>, (unsigned)rows, CU_THREADS, 0, tnn__cu.stream,
                   CF(t->src[0]), t->src[1] ? CF(t->src[1]) : (const float *)NULL,
                   (uint16_t *)nb->data, cols, t->fparam[0]);
        int rc = tnn__cu_launched("tnn_rms_norm");
        return rc ? rc : 2;
    }
    if (t->op == TNN_OP_SWIGLU_BACK && t->iparam[0] == 0 && i + 1 < np) {
        /* swiglu's two gradients, made one after the other from the same dy
         * and gate: one pass */
        tnn_tensor *nx = plan[i + 1];
        if (nx->op == TNN_OP_SWIGLU_BACK && nx->iparam[0] == 1 && nx->src[0] == t->src[0] &&
            nx->src[1] == t->src[1]) {
            TNN_LAUNCH(k_swiglu<float>, cu_blocks(t->nelem), CU_THREADS, 0, tnn__cu.stream,
                       CF(t->src[1]), CF(t->src[2]), CF(t->src[0]), FP(t), FP(nx), t->nelem);
            int rc = tnn__cu_launched("swiglu_back");
            return rc ? rc : 2;
        }
    }
    if (t->op == TNN_OP_ADD && !(t->flags & TNN_FLAG_ALIAS) && i + 1 < np) {
        /* a residual add and the RMS norm of its result (the next layer's
         * input): one pass over each row */
        tnn_tensor *nx = plan[i + 1];
        const tnn_tensor *a = t->src[0], *b = t->src[1], *gm = nx->src[1];
        int64_t cols = t->shape[t->ndim - 1], rows = t->nelem / cols;
        /* (not where the products after the norm normalize x themselves) */
        bool in_products = i + 2 < np && qmatvec_node(plan[i + 2]) && plan[i + 2]->src[0] == nx;
        if (nx->op == TNN_OP_RMS_NORM && nx->src[0] == t && a->nelem == t->nelem &&
            b->nelem == t->nelem && rows <= INT32_MAX && (!gm || gm->nelem == cols) &&
            !in_products) {
            /* with the norm's rounding to bf16 as well when the sum's inputs
             * outlive the three (the rounded rows must not land on them);
             * else the add alone, and the norm with its rounding */
            tnn_tensor *nb2 = bf16_next(plan, np, i + 1);
            if (nb2 && !(lives_through(a, i, 3) && lives_through(b, i, 3))) return 0;
            if (nb2)
                TNN_LAUNCH(k_add_rms_norm<uint16_t>, (unsigned)rows, CU_THREADS, 0,
                           tnn__cu.stream, CF(a), CF(b), FP(t),
                           gm ? CF(gm) : (const float *)NULL, (uint16_t *)nb2->data, cols,
                           nx->fparam[0]);
            else
                TNN_LAUNCH(k_add_rms_norm<float>, (unsigned)rows, CU_THREADS, 0, tnn__cu.stream,
                           CF(a), CF(b), FP(t), gm ? CF(gm) : (const float *)NULL, FP(nx), cols,
                           nx->fparam[0]);
            int rc = tnn__cu_launched("tnn_rms_norm");
            return rc ? rc : nb2 ? 3 : 2;
        }
    }
    if (t->op == TNN_OP_RMS_NORM_BACK && i + 1 < np && sum_after(t, plan[i + 1], i)) {
        /* rms_norm's dx before its gradient sum: added there by its kernel */
        tnn_tensor *nx = plan[i + 1];
        int64_t cols = t->shape[t->ndim - 1], rows = t->nelem / cols;
        if (rows > INT32_MAX) return 0;
        TNN_LAUNCH(k_rms_norm_back, (unsigned)rows, CU_THREADS, 0, tnn__cu.stream,
                   CF(t->src[0]), CF(t->src[1]), t->src[2] ? CF(t->src[2]) : (const float *)NULL,
                   (const float *)FP(nx), FP(nx), cols, t->fparam[0]);
        int rc = tnn__cu_launched("tnn_rms_norm_back");
        return rc ? rc : 2;
    }
    if (t->op == TNN_OP_ROPE) {
        if (i + 1 >= np || !only_read_by(t, i + 1)) return 0;
        int rc = tnn__cu_rope_fused(t, plan[i + 1]);
        return rc == 1 ? 2 : rc;
    }
    cu_mv p;
    int32_t last;
    /* an RMS norm read only by the products that follow it: they normalize
     * x themselves */
    if (t->op == TNN_OP_RMS_NORM && t->ndim == 2 && i + 1 < np && qmatvec_node(plan[i + 1]) &&
        plan[i + 1]->src[0] == t && !(t->flags & TNN_FLAG_OUTPUT) && t != t->sess->result &&
        t->src[0]->dtype == TNN_F32 && (!t->src[1] || t->src[1]->nelem == t->shape[1])) {
        int ran = match_products(plan, np, i + 1, &p, &last);
        if (t->last_use <= last && lives_through(t->src[0], i, ran + 1) &&
            (!t->src[1] || lives_through(t->src[1], i, ran + 1))) {
            p.norm = 1;
            p.g = t->src[1] ? CF(t->src[1]) : NULL;
            p.eps = t->fparam[0];
            int rc = qmatvec(plan[i + 1], p);
            return rc ? rc : ran + 1;
        }
        return 0;
    }
    if (!qmatvec_node(t)) return 0;
    int ran = match_products(plan, np, i, &p, &last);
    if (ran == 1) return 0; /* nothing to fuse: the plain path runs it */
    int rc = qmatvec(t, p);
    return rc ? rc : ran;
}

int tnn__cu_matmul(tnn_tensor *t) {
    const tnn_tensor *a = t->src[0], *b = t->src[1];
    bool ta = t->iparam[0] & TNN_MM_TA, tb = t->iparam[0] & TNN_MM_TB;
    const float *B = CF(b);
    if (qmatvec_node(t)) {
        cu_mv p;
        memset(&p, 0, sizeof p);
        p.n = 1;
        p.w[0] = (const char *)b->data;
        p.y[0] = FP(t);
        p.M[0] = t->shape[1];
        p.early = cu_settled(b);
        return qmatvec(t, p);
    }
    if (b->dtype == TNN_BF16) {
        int rc = matmul_bf16(t, ta, tb, FP(t), 0.0f);
        if (rc != TNN_ERR_UNSUPPORTED) return rc;
    }
    const float *A = CF(a);
    if (b->dtype == TNN_GGML || b->dtype == TNN_BF16) {
        /* weights (and bf16 activations) widened to f32 in the scratch, then
         * the f32 product */
        int64_t an = a->dtype == TNN_BF16 ? a->nelem : 0;
        float *w = (float *)tnn__cu_scratch((size_t)(b->nelem + an) * sizeof(float));
        if (!w) return tnn_last_status();
        int rc = TNN_OK;
        if (b->dtype == TNN_GGML)
            rc = tnn__cu_dequantize(b, NULL, b->shape[0], w, t->id);
        else
            TNN_LAUNCH(k_widen_bf16, cu_blocks(b->nelem), CU_THREADS, 0, tnn__cu.stream,
                       (const uint16_t *)b->data, w, b->nelem);
        if (rc) return rc;
        if (an) {
            TNN_LAUNCH(k_widen_bf16, cu_blocks(an), CU_THREADS, 0, tnn__cu.stream,
                       (const uint16_t *)a->data, w + b->nelem, an);
            A = w + b->nelem;
        }
        B = w;
    }
    mm_geom g = mm_geometry(t, ta, tb);
    for (int64_t i0 = 0; i0 < g.outer; i0++) {
        int rc = tnn__cu_gemm(ta, tb, g.M, g.N, g.K, A + i0 * g.a_out, g.lda, g.a_in,
                              B + i0 * g.b_out, g.ldb, g.b_in, FP(t) + i0 * g.inner * g.M * g.N,
                              g.M * g.N, g.inner);
        if (rc) return rc;
    }
    return TNN_OK;
}

/* ------------------------------------------------------------------------ */
/* Optimizer                                                                */
/* ------------------------------------------------------------------------ */

/* A step over every parameter in three launches, none waited for: the
 * squares of the gradients in chunks of OPT_CHUNK values (one block each,
 * the chunks of all parameters in one grid), one block adding the chunks'
 * sums in order and deciding (skip, clipping scale), and the update, again
 * a block per chunk. The host reads what the decision found from pinned
 * memory once the compute has been waited for. */
#define OPT_CHUNK 4096

typedef struct {
    float *p, *m, *v;
    const float *g;
    int64_t n, blk0; /* values; the parameter's first chunk in the grid */
    double wd;
} cu_opt_param;

typedef struct {
    double gscale;
    int skip;
} cu_opt_dec;

typedef struct {
    int adamw, first;
    double lr, b1, b2, eps, momentum, bc1, bc2;
} cu_opt_hyper;

/* The parameter a chunk belongs to: the last one starting at or before it
 * (an empty parameter shares its start with the next one). */
__device__ const cu_opt_param *opt_param(const cu_opt_param *tab, int np, int64_t b) {
    int lo = 0, hi = np - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (tab[mid].blk0 <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    return tab + lo;
}

__global__ void k_opt_norm(const cu_opt_param *tab, int np, double *part) {
    __shared__ double sh[32];
    const cu_opt_param *t = opt_param(tab, np, blockIdx.x);
    int64_t i0 = ((int64_t)blockIdx.x - t->blk0) * OPT_CHUNK;
    int64_t end = t->n - i0 < OPT_CHUNK ? t->n : i0 + OPT_CHUNK;
    double s = 0.0;
    for (int64_t i = i0 + threadIdx.x; i < end; i += blockDim.x) s += (double)t->g[i] * t->g[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* One block: each thread adds a run of the chunk sums in order, then the
 * block sum in its fixed order; the same value every run. */
__global__ void k_opt_decide(const double *part, int64_t nparts, const float *loss,
                             const tnn_cu_fault *fault, double clip, cu_opt_dec *dec,
                             tnn_step_result *res) {
    __shared__ double sh[32];
    int64_t per = (nparts + blockDim.x - 1) / blockDim.x, lo = threadIdx.x * per;
    double s = 0.0;
    for (int64_t i = lo; i < nparts && i < lo + per; i++) s += part[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x != 0) return;
    double l = *loss, norm = sqrt(s);
    int faulted = fault->code != 0;
    int skip = faulted || !isfinite(l) || !isfinite(norm);
    dec->skip = skip;
    dec->gscale = clip > 0.0 && norm > clip ? clip / (norm + 1e-6) : 1.0;
    res->loss = l;
    res->norm2 = s;
    res->applied = !skip;
}

/* The CPU's update (optimizer.c) element by element, in the same double
 * arithmetic. */
__global__ void k_opt_update(const cu_opt_param *tab, int np, const cu_opt_dec *dec,
                             cu_opt_hyper h) {
    if (dec->skip) return;
    const cu_opt_param *t = opt_param(tab, np, blockIdx.x);
    int64_t i0 = ((int64_t)blockIdx.x - t->blk0) * OPT_CHUNK;
    int64_t end = t->n - i0 < OPT_CHUNK ? t->n : i0 + OPT_CHUNK;
    float *P = t->p, *M = t->m, *V = t->v;
    const float *G = t->g;
    double gscale = dec->gscale, wd = t->wd;
    for (int64_t i = i0 + threadIdx.x; i < end; i += blockDim.x) {
        if (h.adamw) {
            double step_size = h.lr / h.bc1, sq_bc2 = sqrt(h.bc2);
            double g = (double)G[i] * gscale;
            double p = (double)P[i] * (1.0 - h.lr * wd);
            double m0 = h.first ? 0.0 : M[i], v0 = h.first ? 0.0 : V[i];
            double m = h.b1 * m0 + (1.0 - h.b1) * g;
            double v = h.b2 * v0 + (1.0 - h.b2) * g * g;
            M[i] = (float)m;
            V[i] = (float)v;
            P[i] = (float)(p - step_size * m / (sqrt(v) / sq_bc2 + h.eps));
        } else {
            double d = (double)G[i] * gscale + wd * P[i];
            if (h.momentum > 0.0) {
                d = h.first ? d : h.momentum * M[i] + d;
                M[i] = (float)d;
            }
            P[i] = (float)(P[i] - h.lr * d);
        }
    }
}

static size_t align256(size_t n) { return (n + 255) & ~(size_t)255; }

int tnn__cu_step(const tnn_step *st, tnn_step_result *res) {
    cudaStream_t stream = tnn__cu.stream;
    int np = st->n;
    cu_opt_param *tab = (cu_opt_param *)malloc(((size_t)np + 1) * sizeof *tab);
    if (!tab) return TNN_ERR(TNN_ERR_NOMEM, "out of memory");
    int64_t nblk = 0;
    for (int k = 0; k < np; k++) {
        tnn_tensor *p = st->params[k];
        tab[k] = {FP(p), st->m[k], st->v[k], CF(p->grad), p->nelem, nblk,
                  (p->flags & TNN_FLAG_NO_DECAY) ? 0.0 : st->wd};
        nblk += (p->nelem + OPT_CHUNK - 1) / OPT_CHUNK;
    }
    size_t tab_bytes = align256((size_t)np * sizeof *tab), dec_bytes = align256(sizeof(cu_opt_dec));
    char *scr = (char *)tnn__cu_scratch(tab_bytes + dec_bytes + (size_t)(nblk + 1) * sizeof(double));
    int rc = scr ? TNN_OK : tnn_last_status();
    if (!rc && np) rc = tnn__cu_upload(scr, tab, (size_t)np * sizeof *tab);
    free(tab);
    if (rc) return rc;
    const cu_opt_param *dtab = (const cu_opt_param *)scr;
    cu_opt_dec *dec = (cu_opt_dec *)(scr + tab_bytes);
    double *part = (double *)(scr + tab_bytes + dec_bytes);
    if (nblk > 0) TNN_LAUNCH(k_opt_norm, (unsigned)nblk, CU_THREADS, 0, stream, dtab, np, part);
    TNN_LAUNCH(k_opt_decide, 1, CU_THREADS, 0, stream, (const double *)part, nblk, st->loss,
               (const tnn_cu_fault *)tnn__cu.fault, st->clip, dec, res);
    cu_opt_hyper h = {st->adamw, st->first, st->lr, st->b1, st->b2, st->eps, st->momentum,
                      st->bc1, st->bc2};
    if (nblk > 0)
        TNN_LAUNCH(k_opt_update, (unsigned)nblk, CU_THREADS, 0, stream, dtab, np,
                   (const cu_opt_dec *)dec, h);
    return tnn__cu_launched("optimizer");
}
