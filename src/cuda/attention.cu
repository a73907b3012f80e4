/* attention.cu - RoPE, fused causal attention (forward and backward) and
 * attention over a KV cache on the GPU.
 *
 * Attention runs one warp per query row (and, for the key gradients, one
 * warp per key row): a lane holds head elements d = lane + 32 u, dot
 * products are warp sums, and the softmax is taken online (running max and
 * sum), so memory stays linear in the sequence length. Head sizes up to
 * 32 * CU_HD_UNITS are supported.
 */
#include "cuda_impl.h"

#include <math.h>

#define CU_HD_UNITS 8 /* head size <= 256 */
#define CU_WARPS 4    /* warps per block */

/* ------------------------------------------------------------------------ */
/* RoPE                                                                     */
/* ------------------------------------------------------------------------ */

/* One thread per (row, head, pair); the angle in double as the CPU. */
__global__ void k_rope(const float *x, float *o, const int32_t *pos, const float *factors,
                       int64_t rows, int64_t n_head, int64_t hd, int64_t seq_len, int mode,
                       double base, double sign) {
    int64_t half = hd / 2;
    CU_FOR(f, rows * n_head * half) {
        int64_t i = f % half, h = (f / half) % n_head, r = f / (half * n_head);
        double p = pos ? (double)pos[r] : (double)(r % seq_len);
        double th = p * pow(base, -2.0 * (double)i / (double)hd);
        if (factors) th /= (double)factors[i];
        float cs = (float)cos(th), sn = (float)(sign * sin(th));
        int64_t a = mode ? i : 2 * i, b = mode ? i + half : 2 * i + 1;
        const float *xr = x + r * n_head * hd + h * hd;
        float *orow = o + r * n_head * hd + h * hd;
        float x0 = xr[a], x1 = xr[b];
        orow[a] = x0 * cs - x1 * sn;
        orow[b] = x0 * sn + x1 * cs;
    }
}

/* ------------------------------------------------------------------------ */
/* Warp helpers                                                             */
/* ------------------------------------------------------------------------ */

__device__ __forceinline__ float cu_to_float(float x) { return x; }
__device__ __forceinline__ float cu_to_float(uint16_t h) { return tnn__h2f(h); }

/* A head row's slice held by this lane: v[u] = row[lane + 32 u]. */
template <typename T>
__device__ __forceinline__ void cu_load_head(const T *row, int64_t hd, int lane, float v[CU_HD_UNITS]);

template <>
__device__ __forceinline__ void cu_load_head<float>(const float *row, int64_t hd, int lane,
                                                    float v[CU_HD_UNITS]) {
    for (int u = 0; u < CU_HD_UNITS; u++) {
        int64_t d = lane + 32 * u;
        v[u] = d < hd ? row[d] : 0.0f;
    }
}
template <>
__device__ __forceinline__ void cu_load_head<uint16_t>(const uint16_t *row, int64_t hd, int lane,
                                                       float v[CU_HD_UNITS]) {
    for (int u = 0; u < CU_HD_UNITS; u++) {
        int64_t d = lane + 32 * u;
        v[u] = d < hd ? tnn__h2f(row[d]) : 0.0f;
    }
}

template <typename T>
__device__ __forceinline__ float cu_head_dot(const float q[CU_HD_UNITS], const T *row, int64_t hd,
                                             int lane) {
    float k[CU_HD_UNITS];
    cu_load_head<T>(row, hd, lane, k);
    float s = 0.0f;
    for (int u = 0; u < CU_HD_UNITS; u++) s += q[u] * k[u];
    return cu_warp_sum(s);
}

/* One step of the online softmax: key score s with value row vrow. */
template <typename T>
__device__ __forceinline__ void cu_online(float s, const T *vrow, int64_t hd, int lane, float *m,
                                          float *l, float acc[CU_HD_UNITS]) {
    float mn = fmaxf(*m, s), c = expf(*m - mn), p = expf(s - mn);
    float v[CU_HD_UNITS];
    cu_load_head<T>(vrow, hd, lane, v);
    *l = *l * c + p;
    for (int u = 0; u < CU_HD_UNITS; u++) acc[u] = acc[u] * c + p * v[u];
    *m = mn;
}

__device__ __forceinline__ void cu_store_head(float *row, int64_t hd, int lane,
                                              const float v[CU_HD_UNITS], float k) {
    for (int u = 0; u < CU_HD_UNITS; u++) {
        int64_t d = lane + 32 * u;
        if (d < hd) row[d] = v[u] * k;
    }
}

/* ------------------------------------------------------------------------ */
/* Training attention                                                       */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *q, *k, *v, *dout;
    float *out;
    float *stats; /* backward: per (b, h, t) the row's log-sum-exp and D */
    int64_t H, Hkv, hd, T, B;
    float scale;
} cu_attn;

/* Warp per query row (b, h, t): keys 0..t. */
__global__ void k_attn_fwd(cu_attn c) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (task >= c.B * c.H * c.T) return; /* whole warps leave together */
    int64_t t = task % c.T, h = (task / c.T) % c.H, b = task / (c.T * c.H);
    int64_t qw = c.H * c.hd, kw = c.Hkv * c.hd, kh = h / (c.H / c.Hkv), row = b * c.T + t;
    float q[CU_HD_UNITS], acc[CU_HD_UNITS] = {0};
    cu_load_head<float>(c.q + row * qw + h * c.hd, c.hd, lane, q);
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j <= t; j++) {
        int64_t kr = (b * c.T + j) * kw + kh * c.hd;
        float s = cu_head_dot<float>(q, c.k + kr, c.hd, lane) * c.scale;
        cu_online<float>(s, c.v + kr, c.hd, lane, &m, &l, acc);
    }
    cu_store_head(c.out + row * qw + h * c.hd, c.hd, lane, acc, 1.0f / l);
}

/* Backward, part 1 (warp per query row): the row's log-sum-exp, then
 * D = sum_j p_j dp_j with dp_j = dout . v_j, then
 * dq = sum_j p_j (dp_j - D) scale k_j. Writes dq into the packed output
 * and (lse, D) for part 2. */
__global__ void k_attn_bwd_q(cu_attn c) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (task >= c.B * c.H * c.T) return;
    int64_t t = task % c.T, h = (task / c.T) % c.H, b = task / (c.T * c.H);
    int64_t qw = c.H * c.hd, kw = c.Hkv * c.hd, ow = qw + 2 * kw;
    int64_t kh = h / (c.H / c.Hkv), row = b * c.T + t;
    float q[CU_HD_UNITS], go[CU_HD_UNITS], dq[CU_HD_UNITS] = {0};
    cu_load_head<float>(c.q + row * qw + h * c.hd, c.hd, lane, q);
    cu_load_head<float>(c.dout + row * qw + h * c.hd, c.hd, lane, go);
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j <= t; j++) {
        float s = cu_head_dot<float>(q, c.k + (b * c.T + j) * kw + kh * c.hd, c.hd, lane) * c.scale;
        float mn = fmaxf(m, s);
        l = l * expf(m - mn) + expf(s - mn);
        m = mn;
    }
    float lse = m + logf(l);
    double D = 0.0;
    for (int64_t j = 0; j <= t; j++) {
        int64_t kr = (b * c.T + j) * kw + kh * c.hd;
        float p = expf(cu_head_dot<float>(q, c.k + kr, c.hd, lane) * c.scale - lse);
        D += (double)p * cu_head_dot<float>(go, c.v + kr, c.hd, lane);
    }
    float Df = (float)D;
    for (int64_t j = 0; j <= t; j++) {
        int64_t kr = (b * c.T + j) * kw + kh * c.hd;
        float kv[CU_HD_UNITS];
        cu_load_head<float>(c.k + kr, c.hd, lane, kv);
        float s = 0.0f;
        for (int u = 0; u < CU_HD_UNITS; u++) s += q[u] * kv[u];
        float p = expf(cu_warp_sum(s) * c.scale - lse);
        float ds = p * (cu_head_dot<float>(go, c.v + kr, c.hd, lane) - Df) * c.scale;
        for (int u = 0; u < CU_HD_UNITS; u++) dq[u] += ds * kv[u];
    }
    cu_store_head(c.out + row * ow + h * c.hd, c.hd, lane, dq, 1.0f);
    if (lane == 0) {
        c.stats[2 * task] = lse;
        c.stats[2 * task + 1] = Df;
    }
}

/* Backward, part 2 (warp per key row (b, kv head, j)): over the query heads
 * that read it and the rows t >= j, dk_j = sum ds_tj q_t and
 * dv_j = sum p_tj dout_t, in a fixed order. */
__global__ void k_attn_bwd_kv(cu_attn c) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (task >= c.B * c.Hkv * c.T) return;
    int64_t j = task % c.T, kh = (task / c.T) % c.Hkv, b = task / (c.T * c.Hkv);
    int64_t qw = c.H * c.hd, kw = c.Hkv * c.hd, ow = qw + 2 * kw, grp = c.H / c.Hkv;
    int64_t kr = (b * c.T + j) * kw + kh * c.hd;
    float kv[CU_HD_UNITS], vv[CU_HD_UNITS], dk[CU_HD_UNITS] = {0}, dv[CU_HD_UNITS] = {0};
    cu_load_head<float>(c.k + kr, c.hd, lane, kv);
    cu_load_head<float>(c.v + kr, c.hd, lane, vv);
    for (int64_t h = kh * grp; h < (kh + 1) * grp; h++) {
        for (int64_t t = j; t < c.T; t++) {
            int64_t row = b * c.T + t, st = (b * c.H + h) * c.T + t;
            float q[CU_HD_UNITS], go[CU_HD_UNITS];
            cu_load_head<float>(c.q + row * qw + h * c.hd, c.hd, lane, q);
            cu_load_head<float>(c.dout + row * qw + h * c.hd, c.hd, lane, go);
            float s = 0.0f, dp = 0.0f;
            for (int u = 0; u < CU_HD_UNITS; u++) {
                s += q[u] * kv[u];
                dp += go[u] * vv[u];
            }
            s = cu_warp_sum(s);
            dp = cu_warp_sum(dp);
            float p = expf(s * c.scale - c.stats[2 * st]);
            float ds = p * (dp - c.stats[2 * st + 1]) * c.scale;
            for (int u = 0; u < CU_HD_UNITS; u++) {
                dk[u] += ds * q[u];
                dv[u] += p * go[u];
            }
        }
    }
    float *orow = c.out + (b * c.T + j) * ow;
    cu_store_head(orow + qw + kh * c.hd, c.hd, lane, dk, 1.0f);
    cu_store_head(orow + qw + kw + kh * c.hd, c.hd, lane, dv, 1.0f);
}

static int attn_params(const tnn_tensor *t, cu_attn *c) {
    c->H = t->iparam[0];
    c->Hkv = t->iparam[1];
    c->T = t->iparam[2];
    c->hd = t->src[0]->shape[1] / c->H;
    c->B = t->src[0]->shape[0] / c->T;
    c->scale = (float)(1.0 / sqrt((double)c->hd));
    if (c->hd > 32 * CU_HD_UNITS)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "head size %lld: the CUDA attention takes up to %d",
                       (long long)c->hd, 32 * CU_HD_UNITS);
    return TNN_OK;
}

static unsigned warp_blocks(int64_t tasks) {
    return (unsigned)((tasks + CU_WARPS - 1) / CU_WARPS);
}

/* ------------------------------------------------------------------------ */
/* KV cache                                                                 */
/* ------------------------------------------------------------------------ */

/* Rows of x into the cache at pos[0] (read on the device); nothing is
 * written when they do not fit. */
__global__ void k_kv_write(void *cache, int f16, int64_t ctx, const float *x, int64_t n,
                           int64_t W, const int32_t *pos, tnn_cu_fault *fault, int node) {
    int64_t p = pos[0];
    if (p < 0 || p + n > ctx) {
        if (blockIdx.x == 0 && threadIdx.x == 0) cu_fault(fault, CU_FAULT_KV, node, p, p + n - 1, ctx);
        return;
    }
    CU_FOR(i, n * W) {
        if (f16)
            ((uint16_t *)cache)[p * W + i] = tnn__f2h(x[i]);
        else
            ((float *)cache)[p * W + i] = x[i];
    }
}

/* Warp per (query row i, head h): keys 0 .. pos + i of the cache. */
template <typename T>
__global__ void k_attn_cached(const float *q, const T *kc, const T *vc, float *out, int64_t n,
                              int64_t ctx, int64_t H, int64_t Hkv, int64_t hd, float scale,
                              const int32_t *pos, tnn_cu_fault *fault, int node) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5), p = pos[0];
    if (p < 0 || p + n > ctx) {
        if (task == 0 && lane == 0) cu_fault(fault, CU_FAULT_CACHE, node, p, p + n - 1, ctx);
        return;
    }
    if (task >= n * H) return;
    int64_t i = task / H, h = task % H, kw = Hkv * hd, kh = h / (H / Hkv);
    float qv[CU_HD_UNITS], acc[CU_HD_UNITS] = {0};
    cu_load_head<float>(q + i * H * hd + h * hd, hd, lane, qv);
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = 0; j <= p + i; j++) {
        float s = cu_head_dot<T>(qv, kc + j * kw + kh * hd, hd, lane) * scale;
        cu_online<T>(s, vc + j * kw + kh * hd, hd, lane, &m, &l, acc);
    }
    cu_store_head(out + i * H * hd + h * hd, hd, lane, acc, 1.0f / l);
}

/* Decoding (a few rows against a long cache): the keys in chunks of 32, a
 * warp per (row, head, chunk) and a lane per key, so no warp walks the
 * context alone. Each chunk gives a partial (max m, sum l, weighted values);
 * a second kernel merges a row's chunks in ascending order. The host sizes
 * the grid by the cache's capacity (the position is read on the device);
 * chunks past a row's last key leave at once. */
#define SPLIT_ROWS 8

template <typename T>
__global__ void k_attn_split(const float *q, const T *kc, const T *vc, float *part, int64_t n,
                             int64_t ctx, int64_t H, int64_t Hkv, int64_t hd, float scale,
                             int64_t nch, const int32_t *pos, tnn_cu_fault *fault, int node) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5), p = pos[0];
    if (p < 0 || p + n > ctx) {
        if (task == 0 && lane == 0) cu_fault(fault, CU_FAULT_CACHE, node, p, p + n - 1, ctx);
        return;
    }
    if (task >= n * H * nch) return;
    int64_t c = task % nch, h = (task / nch) % H, i = task / (nch * H);
    int64_t last = p + i, j0 = c * 32, kw = Hkv * hd, kh = h / (H / Hkv);
    if (j0 > last) return; /* whole warps leave together */
    int64_t j = j0 + lane;
    const float *qr = q + i * H * hd + h * hd;
    float s = -INFINITY;
    if (j <= last) {
        const T *kr = kc + j * kw + kh * hd;
        float acc = 0.0f;
CU_UNROLL(8)
        for (int64_t d = 0; d < hd; d++) acc += qr[d] * cu_to_float(kr[d]);
        s = acc * scale;
    }
    float m = cu_warp_max(s);
    float e = j <= last ? expf(s - m) : 0.0f;
    float l = cu_warp_sum(e);
    float o[CU_HD_UNITS] = {0};
    /* every lane walks the chunk's 32 value rows (rows past the last key
     * read the last one with weight 0), so the loads do not wait on each
     * other */
CU_UNROLL(4)
    for (int jj = 0; jj < 32; jj++) {
        float pj = __shfl_sync(0xffffffffu, e, jj);
        int64_t jr = j0 + jj <= last ? j0 + jj : last;
        float v[CU_HD_UNITS];
        cu_load_head<T>(vc + jr * kw + kh * hd, hd, lane, v);
        for (int u = 0; u < CU_HD_UNITS; u++) o[u] += pj * v[u];
    }
    float *pr = part + task * (hd + 2);
    if (lane == 0) {
        pr[0] = m;
        pr[1] = l;
    }
    cu_store_head(pr + 2, hd, lane, o, 1.0f);
}

/* Warp per (row, head): the lanes take the chunks for the maximum and the
 * normalizer (each a warp reduction in a fixed order), then the head
 * elements for the weighted sum of the chunks' values. */
__global__ void k_attn_merge(const float *part, float *out, int64_t n, int64_t H, int64_t hd,
                             int64_t nch, const int32_t *pos, int64_t ctx) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5), p = pos[0];
    if (p < 0 || p + n > ctx || task >= n * H) return; /* the fault is the split's to report */
    int64_t i = task / H, nc = (p + i) / 32 + 1;
    const float *pt = part + task * nch * (hd + 2);
    float mloc = -INFINITY;
    for (int64_t c = lane; c < nc; c += 32) mloc = fmaxf(mloc, pt[c * (hd + 2)]);
    float M = cu_warp_max(mloc), lloc = 0.0f;
    for (int64_t c = lane; c < nc; c += 32) lloc += pt[c * (hd + 2) + 1] * expf(pt[c * (hd + 2)] - M);
    float L = cu_warp_sum(lloc), O[CU_HD_UNITS] = {0};
CU_UNROLL(4)
    for (int64_t c = 0; c < nc; c++) {
        const float *pr = pt + c * (hd + 2);
        float w = expf(pr[0] - M), o[CU_HD_UNITS];
        cu_load_head<float>(pr + 2, hd, lane, o);
        for (int u = 0; u < CU_HD_UNITS; u++) O[u] += w * o[u];
    }
    cu_store_head(out + i * H * hd + (task % H) * hd, hd, lane, O, 1.0f / L);
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static int cached(tnn_tensor *t) {
    const tnn_tensor *q = t->src[0], *kc = t->src[1], *vc = t->src[2];
    int64_t H = t->iparam[0], Hkv = t->iparam[1], n = q->shape[0], hd = q->shape[1] / H;
    if (hd > 32 * CU_HD_UNITS)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "head size %lld: the CUDA attention takes up to %d",
                       (long long)hd, 32 * CU_HD_UNITS);
    float scale = (float)(1.0 / sqrt((double)hd));
    const int32_t *pos = (const int32_t *)t->src[3]->data;
    int64_t ctx = kc->shape[0];
    cudaStream_t st = tnn__cu.stream;
    if (n <= SPLIT_ROWS) {
        int64_t nch = (ctx + 31) / 32;
        float *part = (float *)tnn__cu_scratch((size_t)(n * H * nch * (hd + 2)) * sizeof(float));
        if (!part) return tnn_last_status();
        unsigned gs = warp_blocks(n * H * nch);
        if (kc->dtype == TNN_F16)
            TNN_LAUNCH(k_attn_split<uint16_t>, gs, 32 * CU_WARPS, 0, st, CF(q),
                       (const uint16_t *)kc->data, (const uint16_t *)vc->data, part, n, ctx, H,
                       Hkv, hd, scale, nch, pos, tnn__cu.fault, t->id);
        else
            TNN_LAUNCH(k_attn_split<float>, gs, 32 * CU_WARPS, 0, st, CF(q), CF(kc), CF(vc), part,
                       n, ctx, H, Hkv, hd, scale, nch, pos, tnn__cu.fault, t->id);
        TNN_LAUNCH(k_attn_merge, warp_blocks(n * H), 32 * CU_WARPS, 0, st, (const float *)part,
                   FP(t), n, H, hd, nch, pos, ctx);
        return tnn__cu_launched("tnn_attention_cached");
    }
    unsigned g = warp_blocks(n * H);
    if (kc->dtype == TNN_F16)
        TNN_LAUNCH(k_attn_cached<uint16_t>, g, 32 * CU_WARPS, 0, st, CF(q),
                   (const uint16_t *)kc->data, (const uint16_t *)vc->data, FP(t), n,
                   kc->shape[0], H, Hkv, hd, scale, pos, tnn__cu.fault, t->id);
    else
        TNN_LAUNCH(k_attn_cached<float>, g, 32 * CU_WARPS, 0, st, CF(q), CF(kc),
                   CF(vc), FP(t), n, kc->shape[0], H, Hkv, hd, scale, pos, tnn__cu.fault, t->id);
    return tnn__cu_launched("tnn_attention_cached");
}

int tnn__cu_attention(tnn_tensor *t) {
    cudaStream_t st = tnn__cu.stream;
    switch (t->op) {
    case TNN_OP_ROPE: {
        int64_t rows = t->shape[0], nh = t->iparam[0], hd = t->shape[1] / nh;
        TNN_LAUNCH(k_rope, cu_blocks(rows * nh * (hd / 2)), CU_THREADS, 0, st, CF(t->src[0]),
                   FP(t), t->src[1] ? (const int32_t *)t->src[1]->data : (const int32_t *)NULL,
                   t->src[2] ? CF(t->src[2]) : (const float *)NULL, rows, nh, hd, t->iparam[1],
                   (int)t->iparam[2], t->fparam[0], t->fparam[1]);
        return tnn__cu_launched("tnn_rope");
    }
    case TNN_OP_KV_WRITE: {
        const tnn_tensor *cache = t->src[0], *x = t->src[1];
        TNN_LAUNCH(k_kv_write, cu_blocks(x->nelem), CU_THREADS, 0, st, t->data,
                   cache->dtype == TNN_F16, cache->shape[0], CF(x), x->shape[0], x->shape[1],
                   (const int32_t *)t->src[2]->data, tnn__cu.fault, t->id);
        return tnn__cu_launched("tnn_kv_write");
    }
    case TNN_OP_ATTENTION_CACHED: return cached(t);
    default: break;
    }
    cu_attn c = {CF(t->src[0]), CF(t->src[1]), CF(t->src[2]), NULL, FP(t), NULL, 0, 0, 0, 0, 0, 0};
    int rc = attn_params(t, &c);
    if (rc) return rc;
    if (t->op == TNN_OP_ATTENTION) {
        TNN_LAUNCH(k_attn_fwd, warp_blocks(c.B * c.H * c.T), 32 * CU_WARPS, 0, st, c);
        return tnn__cu_launched("tnn_attention");
    }
    c.dout = CF(t->src[3]);
    c.stats = (float *)tnn__cu_scratch((size_t)(c.B * c.H * c.T) * 2 * sizeof(float));
    if (!c.stats) return tnn_last_status();
    TNN_LAUNCH(k_attn_bwd_q, warp_blocks(c.B * c.H * c.T), 32 * CU_WARPS, 0, st, c);
    TNN_LAUNCH(k_attn_bwd_kv, warp_blocks(c.B * c.Hkv * c.T), 32 * CU_WARPS, 0, st, c);
    return tnn__cu_launched("attention_back");
}
