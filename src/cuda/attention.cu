/* attention.cu - RoPE, causal training attention (forward and backward) and
 * attention over a KV cache on the GPU.
 *
 * Training attention goes to the tensor-core kernels of flash.cu where they
 * take the head size and GPU; else, from T = 128, through cuBLAS products
 * of the score matrices (below); else by the warp kernels: one warp per
 * query row (and, for the key gradients, one warp per key row), a lane
 * holding head elements d = lane + 32 u, dot products as warp sums and the
 * softmax taken online (running max and sum), so memory stays linear in the
 * sequence length; they take head sizes up to 32 * CU_HD_UNITS.
 */
#include "cuda_impl.h"

#include <math.h>

#define CU_HD_UNITS 8 /* head size <= 256 */
#define CU_WARPS 4    /* warps per block */

/* ------------------------------------------------------------------------ */
/* RoPE                                                                     */
/* ------------------------------------------------------------------------ */

/* Where a RoPE kernel writes: its node's buffer, or (a KV cache write that
 * reads only the RoPE node, folded into it) rows pos[0] .. of a cache. */
typedef struct {
    void *cache; /* NULL: the node's own output */
    int f16;
    int64_t ctx;
    const int32_t *pos;
    tnn_cu_fault *fault;
    int node;
} cu_rope_dst;

/* Pair i of a head, rotated by (cs, sn): the elements' offsets a and b in
 * the head and their rotated values. */
__device__ __forceinline__ void cu_rope_apply(const cu_rope &c, const float *head, int64_t i,
                                              float cs, float sn, int64_t *a, int64_t *b,
                                              float *ya, float *yb) {
    *a = c.mode ? i : 2 * i;
    *b = c.mode ? i + c.hd / 2 : 2 * i + 1;
    float x0 = head[*a], x1 = head[*b];
    *ya = x0 * cs - x1 * sn;
    *yb = x0 * sn + x1 * cs;
}

/* One thread per (row, head, pair), or (heads: many rows, as in training)
 * per (row, pair), walking the heads with the one angle; early: the angle
 * of the thread's first pair is taken before cu_pdl_wait() (rope_settled). */
__global__ void k_rope(const float *x, float *o, int64_t rows, cu_rope c, cu_rope_dst dst,
                       bool early, bool heads) {
    int64_t half = c.hd / 2, p0 = 0, nh = heads ? 1 : c.n_head, total = rows * nh * half;
    int64_t f0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    float cs0 = 0.0f, sn0 = 0.0f;
    if (!early) cu_pdl_wait();
    if (f0 < total) cu_rope_angle(c, f0 / (half * nh), f0 % half, &cs0, &sn0);
    cu_pdl_wait();
    cu_pdl_next();
    if (dst.cache) {
        p0 = dst.pos[0];
        if (p0 < 0 || p0 + rows > dst.ctx) {
            if (blockIdx.x == 0 && threadIdx.x == 0)
                cu_fault(dst.fault, CU_FAULT_KV, dst.node, p0, p0 + rows - 1, dst.ctx);
            return;
        }
    }
    CU_FOR(f, total) {
        int64_t i = f % half, h0 = (f / half) % nh, r = f / (half * nh), a, b;
        float ya, yb, cs = cs0, sn = sn0;
        if (f != f0) cu_rope_angle(c, r, i, &cs, &sn);
        for (int64_t h = h0; h < (heads ? c.n_head : h0 + 1); h++) {
            cu_rope_apply(c, x + r * c.n_head * c.hd + h * c.hd, i, cs, sn, &a, &b, &ya, &yb);
            int64_t at = (p0 + r) * c.n_head * c.hd + h * c.hd;
            if (!dst.cache) {
                o[at + a] = ya;
                o[at + b] = yb;
            } else if (dst.f16) {
                ((uint16_t *)dst.cache)[at + a] = tnn__f2h(ya);
                ((uint16_t *)dst.cache)[at + b] = tnn__f2h(yb);
            } else {
                ((float *)dst.cache)[at + a] = ya;
                ((float *)dst.cache)[at + b] = yb;
            }
        }
    }
}

/* From this many rows on, a thread rotates its pair in every head (the
 * angle, pow and sincos in double, taken once instead of n_head times);
 * fewer rows (decoding) keep a thread per head, for parallelism. */
#define ROPE_HEADS_ROWS 64

static int rope(const tnn_tensor *t, float *out, const cu_rope_dst &dst) {
    cu_rope c = rope_params(t);
    int64_t rows = t->shape[0];
    bool heads = rows >= ROPE_HEADS_ROWS;
    TNN_LAUNCH_PDL(k_rope, cu_blocks(rows * (heads ? 1 : c.n_head) * (c.hd / 2)), CU_THREADS, 0,
                   tnn__cu.stream, CF(t->src[0]), out, rows, c, dst, rope_settled(t), heads);
    return tnn__cu_launched("tnn_rope");
}

/* ------------------------------------------------------------------------ */
/* Warp helpers                                                             */
/* ------------------------------------------------------------------------ */

__device__ __forceinline__ float cu_val(float x) { return x; }
__device__ __forceinline__ float cu_val(uint16_t h) { return cu_h2f(h); }

/* A head row's slice held by this lane: v[u] = row[lane + 32 u], u < U
 * (U = CU_HD_UNITS, or fewer where the head size is known to be small). */
template <typename T, int U = CU_HD_UNITS>
__device__ __forceinline__ void cu_load_head(const T *row, int64_t hd, int lane, float *v) {
    for (int u = 0; u < U; u++) {
        int64_t d = lane + 32 * u;
        v[u] = d < hd ? cu_val(row[d]) : 0.0f;
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

template <int U = CU_HD_UNITS>
__device__ __forceinline__ void cu_store_head(float *row, int64_t hd, int lane, const float *v,
                                              float k) {
    for (int u = 0; u < U; u++) {
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
 * dq = sum_j p_j (dp_j - D) scale k_j. Writes dq into the gradient's dq part
 * and (lse, D) for part 2. */
__global__ void k_attn_bwd_q(cu_attn c) {
    int lane = threadIdx.x & 31;
    int64_t task = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (task >= c.B * c.H * c.T) return;
    int64_t t = task % c.T, h = (task / c.T) % c.H, b = task / (c.T * c.H);
    int64_t qw = c.H * c.hd, kw = c.Hkv * c.hd;
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
    cu_store_head(c.out + row * qw + h * c.hd, c.hd, lane, dq, 1.0f);
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
    int64_t qw = c.H * c.hd, kw = c.Hkv * c.hd, nr = c.B * c.T, grp = c.H / c.Hkv;
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
    float *dkrow = c.out + nr * qw + (b * c.T + j) * kw + kh * c.hd;
    cu_store_head(dkrow, c.hd, lane, dk, 1.0f);
    cu_store_head(dkrow + nr * kw, c.hd, lane, dv, 1.0f);
}

static int attn_params(const tnn_tensor *t, cu_attn *c) {
    c->H = t->iparam[0];
    c->Hkv = t->iparam[1];
    c->T = t->iparam[2];
    c->hd = t->src[0]->shape[1] / c->H;
    c->B = t->src[0]->shape[0] / c->T;
    c->scale = (float)(1.0 / sqrt((double)c->hd));
    return TNN_OK;
}

static unsigned warp_blocks(int64_t tasks) {
    return (unsigned)((tasks + CU_WARPS - 1) / CU_WARPS);
}

/* ------------------------------------------------------------------------ */
/* Training attention through cuBLAS                                        */
/* ------------------------------------------------------------------------ */

/* From this sequence length on (and whenever TNN_CUDA_ATTN=gemm), training
 * attention multiplies whole score matrices with cuBLAS instead of running
 * a warp per row: S = scale Q K^T for a batch of heads into scratch, a
 * causal softmax in place, O = P V; the backward recomputes P and takes
 * dP = dO V^T, dS = P (dP - D) scale, dQ = dS K, dK = dS^T Q, dV = P^T dO.
 * Part of the masked triangle is still computed and discarded (see the row
 * blocks below), but a warp per row walks its keys one at a time (at
 * T = 1024 it took 72% of a GPT-2 small training step on an H200:
 * docs/PERFORMANCE.md). TNN_CUDA_ATTN=rows keeps the warp kernels, whose
 * memory stays linear in T. */
#define ATTN_GEMM_MIN_T 128
/* Scratch the score matrices may take (two of them in the backward). */
#define ATTN_GEMM_SCRATCH ((int64_t)256 << 20)

/* Query rows a product takes at once: rows [r0, r1) see keys [0, r1) only,
 * so the products go block by block (from T = 512, 4 blocks: 62.5% of the
 * T x T products; the last block is the longest). TNN_CUDA_ATTN_BLOCKS=N
 * (1-16) sets the number of blocks, for measuring. */
static int64_t attn_row_block(int64_t T) {
    int64_t nb = T >= 512 ? 4 : T >= 256 ? 2 : 1;
    const char *e = getenv("TNN_CUDA_ATTN_BLOCKS");
    int v = e ? atoi(e) : 0;
    if (v >= 1 && v <= 16) nb = v;
    return (T + nb - 1) / nb;
}

/* The tensor-core kernels of flash.cu, keeping the scores on chip, where
 * they take the head size (32 or 64) and the GPU (sm_80 on); the products
 * below and the warp kernels stay for the rest and as TNN_CUDA_ATTN=gemm
 * and TNN_CUDA_ATTN=rows. */
static bool attn_flash(const cu_attn &c) {
    const char *e = getenv("TNN_CUDA_ATTN");
    if (e && (!strcmp(e, "rows") || !strcmp(e, "gemm"))) return false;
    const float *p[5] = {c.q, c.k, c.v, c.dout, c.out};
    return tnn__cu_flash_ok(p, 5, c.hd, c.H, c.Hkv, c.B);
}

/* Heads per batched product (0: the rows kernels instead). */
static int64_t attn_gemm_heads(const cu_attn &c) {
    const char *e = getenv("TNN_CUDA_ATTN");
    if (e && !strcmp(e, "rows")) return 0;
    if (!(e && !strcmp(e, "gemm")) && c.T < ATTN_GEMM_MIN_T) return 0;
    int64_t per_head = 2 * attn_row_block(c.T) * c.T * (int64_t)sizeof(float);
    int64_t n = ATTN_GEMM_SCRATCH / per_head;
    return n < 1 ? 0 : n < c.Hkv ? n : c.Hkv;
}

/* Row r of n rows of len scores, `rows` rows a head from query r0 (query
 * t = r0 + r % rows, keys 0..len-1): the causal softmax in place, zero past
 * key t. Warp per row. */
__global__ void k_attn_softmax(float *S, int64_t n, int64_t rows, int64_t r0, int64_t len) {
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (r >= n) return;
    int64_t t = r0 + r % rows;
    float *row = S + r * len;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j = lane; j <= t; j += 32) m = fmaxf(m, row[j]);
    m = cu_warp_max(m);
    for (int64_t j = lane; j <= t; j += 32) l += expf(row[j] - m);
    float inv = 1.0f / cu_warp_sum(l);
    for (int64_t j = lane; j < len; j += 32) row[j] = j <= t ? expf(row[j] - m) * inv : 0.0f;
}

/* dS = P (dP - D) scale in place of dP, D = sum_j P_j dP_j; zero past t. */
__global__ void k_attn_dsoftmax(const float *P, float *dP, int64_t n, int64_t rows, int64_t r0,
                                int64_t len, float scale) {
    int lane = threadIdx.x & 31;
    int64_t r = (int64_t)blockIdx.x * CU_WARPS + (threadIdx.x >> 5);
    if (r >= n) return;
    int64_t t = r0 + r % rows;
    const float *p = P + r * len;
    float *d = dP + r * len, D = 0.0f;
    for (int64_t j = lane; j <= t; j += 32) D += p[j] * d[j];
    D = cu_warp_sum(D);
    for (int64_t j = lane; j < len; j += 32) d[j] = j <= t ? p[j] * (d[j] - D) * scale : 0.0f;
}

/* One batch of heads: query heads h = kh * grp + g for kh in [kh0, kh0 + n)
 * of batch element b. Their operands' bases and the batch strides. */
typedef struct {
    const float *q, *k, *v, *dout;
    int64_t sq, skv; /* batch strides: grp * hd between query heads, hd between kv heads */
} attn_heads;

static attn_heads heads_of(const cu_attn &c, int64_t b, int64_t g, int64_t kh0) {
    int64_t grp = c.H / c.Hkv, qw = c.H * c.hd, kw = c.Hkv * c.hd;
    int64_t qo = b * c.T * qw + (kh0 * grp + g) * c.hd, ko = b * c.T * kw + kh0 * c.hd;
    attn_heads a = {c.q + qo, c.k + ko, c.v + ko, c.dout ? c.dout + qo : NULL, grp * c.hd, c.hd};
    return a;
}

/* P = causal softmax(scale Q K^T) of query rows [r0, r0 + m) against keys
 * [0, r0 + m), for n heads, into S (n x m x (r0 + m)). */
static int attn_probs(const cu_attn &c, const attn_heads &a, int64_t n, int64_t r0, int64_t m,
                      float *S) {
    int64_t r1 = r0 + m, qw = c.H * c.hd, kw = c.Hkv * c.hd;
    int rc = tnn__cu_gemm_ab(false, true, m, r1, c.hd, c.scale, a.q + r0 * qw, qw, a.sq, a.k, kw,
                             a.skv, 0.0f, S, r1, m * r1, n);
    if (rc) return rc;
    TNN_LAUNCH(k_attn_softmax, warp_blocks(n * m), 32 * CU_WARPS, 0, tnn__cu.stream, S, n * m, m,
               r0, r1);
    return tnn__cu_launched("tnn_attention");
}

static int attn_gemm_fwd(const cu_attn &c, int64_t nh) {
    int64_t T = c.T, grp = c.H / c.Hkv, qw = c.H * c.hd, kw = c.Hkv * c.hd;
    int64_t rb = attn_row_block(T);
    float *S = (float *)tnn__cu_scratch((size_t)(nh * rb * T) * sizeof(float));
    if (!S) return tnn_last_status();
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t g = 0; g < grp; g++)
            for (int64_t kh0 = 0; kh0 < c.Hkv; kh0 += nh)
                for (int64_t r0 = 0; r0 < T; r0 += rb) {
                    int64_t n = c.Hkv - kh0 < nh ? c.Hkv - kh0 : nh;
                    int64_t m = T - r0 < rb ? T - r0 : rb, r1 = r0 + m;
                    attn_heads a = heads_of(c, b, g, kh0);
                    int rc = attn_probs(c, a, n, r0, m, S);
                    if (!rc) /* O = P V, into the output's rows and columns of these heads */
                        rc = tnn__cu_gemm_ab(false, false, m, c.hd, r1, 1.0f, S, r1, m * r1, a.v,
                                             kw, a.skv, 0.0f, c.out + (a.q - c.q) + r0 * qw, qw,
                                             a.sq, n);
                    if (rc) return rc;
                }
    return TNN_OK;
}

/* The backward into the gradient's dq, dk and dv parts. dK and dV sum over the
 * row blocks and the grp query heads of a kv head: the blocks run from the
 * last (which reaches every key) down, so only the first of them with g = 0
 * starts the sums (beta 0). */
static int attn_gemm_bwd(const cu_attn &c, int64_t nh) {
    int64_t T = c.T, grp = c.H / c.Hkv, qw = c.H * c.hd, kw = c.Hkv * c.hd, nr = c.B * T;
    int64_t rb = attn_row_block(T), last = (T - 1) / rb * rb;
    float *S = (float *)tnn__cu_scratch((size_t)(2 * nh * rb * T) * sizeof(float));
    if (!S) return tnn_last_status();
    float *dS = S + nh * rb * T;
    for (int64_t b = 0; b < c.B; b++)
        for (int64_t g = 0; g < grp; g++)
            for (int64_t kh0 = 0; kh0 < c.Hkv; kh0 += nh)
                for (int64_t r0 = last; r0 >= 0; r0 -= rb) {
                    int64_t n = c.Hkv - kh0 < nh ? c.Hkv - kh0 : nh;
                    int64_t m = T - r0 < rb ? T - r0 : rb, r1 = r0 + m;
                    attn_heads a = heads_of(c, b, g, kh0);
                    float beta = g == 0 && r0 == last ? 0.0f : 1.0f;
                    float *dq = c.out + (b * T + r0) * qw + (kh0 * grp + g) * c.hd;
                    float *dk = c.out + nr * qw + b * T * kw + kh0 * c.hd, *dv = dk + nr * kw;
                    const float *qb = a.q + r0 * qw, *gb = a.dout + r0 * qw;
                    int rc = attn_probs(c, a, n, r0, m, S);
                    if (!rc) /* dP = dO V^T */
                        rc = tnn__cu_gemm_ab(false, true, m, r1, c.hd, 1.0f, gb, qw, a.sq, a.v, kw,
                                             a.skv, 0.0f, dS, r1, m * r1, n);
                    if (rc) return rc;
                    TNN_LAUNCH(k_attn_dsoftmax, warp_blocks(n * m), 32 * CU_WARPS, 0,
                               tnn__cu.stream, S, dS, n * m, m, r0, r1, c.scale);
                    rc = tnn__cu_launched("attention_back");
                    if (!rc) /* dQ = dS K */
                        rc = tnn__cu_gemm_ab(false, false, m, c.hd, r1, 1.0f, dS, r1, m * r1, a.k,
                                             kw, a.skv, 0.0f, dq, qw, a.sq, n);
                    if (!rc) /* dK (+)= dS^T Q */
                        rc = tnn__cu_gemm_ab(true, false, r1, c.hd, m, 1.0f, dS, r1, m * r1, qb, qw,
                                             a.sq, beta, dk, kw, c.hd, n);
                    if (!rc) /* dV (+)= P^T dO */
                        rc = tnn__cu_gemm_ab(true, false, r1, c.hd, m, 1.0f, S, r1, m * r1, gb, qw,
                                             a.sq, beta, dv, kw, c.hd, n);
                    if (rc) return rc;
                }
    return TNN_OK;
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

/* Decoding (a few rows against a long cache). A block of AD_WARPS warps per
 * (row, head, split of AD_KEYS keys), a warp per 32 keys and a lane per key:
 * the lane's score reads its key row with vector loads against q in shared
 * memory; the warp's softmax partial (max, sum, weighted values) is merged
 * with the block's other warps in warp order, and a row whose keys span
 * several splits has its splits' partials merged, in split order, by the
 * block that finishes last (a counter per (row, head) in tnn__cu.counters,
 * put back to 0 by that block). The grid covers the cache's capacity (the
 * position is read on the device); splits past a row's last key leave at
 * once. The merges' order is fixed, so results do not depend on timing. */
#define AD_WARPS 8
#define AD_KEYS (32 * AD_WARPS)
#define AD_ROWS 8 /* more query rows take k_attn_cached */

/* 16 bytes of a row as floats: 8 f16 or 4 f32 values (p 16-byte aligned). */
__device__ __forceinline__ void cu_load16(const uint16_t *p, float *v) {
    uint4 u = *(const uint4 *)p;
    unsigned w[4] = {u.x, u.y, u.z, u.w};
    for (int k = 0; k < 4; k++) {
        v[2 * k] = cu_h2f((uint16_t)(w[k] & 0xffffu));
        v[2 * k + 1] = cu_h2f((uint16_t)(w[k] >> 16));
    }
}
__device__ __forceinline__ void cu_load16(const float *p, float *v) {
    float4 u = *(const float4 *)p;
    v[0] = u.x, v[1] = u.y, v[2] = u.z, v[3] = u.w;
}

/* q . key row for a lane's key, head size hd <= 32 U: 16 bytes per load
 * when the rows are 16-byte aligned (vec), fully unrolled, so every load of
 * the row is in flight at once. */
template <int U, typename T>
__device__ __forceinline__ float ad_key_dot(const T *kr, const float *qs, int64_t hd, bool vec) {
    constexpr int E = 16 / sizeof(T); /* values per load */
    float acc = 0.0f;
    if (vec) {
CU_UNROLL(32 * U / E)
        for (int d = 0; d < 32 * U; d += E) {
            if (d >= hd) break;
            float v[E];
            cu_load16(kr + d, v);
            for (int e = 0; e < E; e++) acc += qs[d + e] * v[e];
        }
        return acc;
    }
    for (int64_t d = 0; d < hd; d++) acc += qs[d] * cu_val(kr[d]);
    return acc;
}

/* A key row into registers (k[d], d < 32 U; 0 past hd), with 16-byte
 * loads when vec: loaded early, before q is ready. */
template <int U, typename T>
__device__ __forceinline__ void ad_key_load(const T *kr, int64_t hd, bool vec, float *k) {
    constexpr int E = 16 / sizeof(T);
CU_UNROLL(32 * U / E)
    for (int d = 0; d < 32 * U; d += E) {
        if (vec && d < hd)
            cu_load16(kr + d, k + d);
        else
            for (int e = 0; e < E; e++) k[d + e] = d + e < hd ? cu_val(kr[d + e]) : 0.0f;
    }
}

/* Merges partial softmaxes (max m, sum l, values o) in the order given:
 * the lanes' head elements of sum_c e^(m_c - M) o_c, and L = sum_c e^(m_c - M) l_c.
 * get(c, &m, &l, o) reads partial c (o NULL: only m and l); partials with
 * l = 0 are skipped. */
template <int U, typename Get>
__device__ __forceinline__ float ad_merge(int n, Get get, float *O) {
    float M = -INFINITY, L = 0.0f;
    for (int c = 0; c < n; c++) {
        float m, l;
        get(c, &m, &l, (float *)NULL);
        if (l > 0.0f) M = fmaxf(M, m);
    }
    for (int u = 0; u < U; u++) O[u] = 0.0f;
    for (int c = 0; c < n; c++) {
        float m, l, o[U];
        get(c, &m, &l, o);
        if (!(l > 0.0f)) continue;
        float w = expf(m - M);
        L += w * l;
        for (int u = 0; u < U; u++) O[u] += w * o[u];
    }
    return L;
}

/* U: head elements per lane (head size <= 32 U). */
template <typename T, int U>
__global__ void __launch_bounds__(32 * AD_WARPS)
    k_attn_decode(const float *q, const T *kc, const T *vc, float *part, int *count, float *out,
                  int64_t n, int64_t ctx, int64_t H, int64_t Hkv, int64_t hd, float scale,
                  int64_t nsplit, bool vec, const int32_t *pos, cu_rope qrope, bool early,
                  tnn_cu_fault *fault, int node) {
    __shared__ float qs[32 * U];
    __shared__ float wm[AD_WARPS], wl[AD_WARPS];
    __shared__ float wo[AD_WARPS][32 * U];
    int lane = threadIdx.x & 31, wi = threadIdx.x >> 5;
    int64_t task = blockIdx.y, sp = blockIdx.x;
    /* early (the positions are settled and no node of this compute writes
     * cache rows before them): q's rotation angles and the rows older than
     * the position are read while the kernel before finishes */
    float qcs = 0.0f, qsn = 0.0f;
    if (!early) cu_pdl_wait();
    if (qrope.n_head && threadIdx.x < hd / 2)
        cu_rope_angle(qrope, task / H, threadIdx.x, &qcs, &qsn);
    int64_t p = pos[0];
    if (p < 0 || p + n > ctx) {
        cu_pdl_wait(); /* a fault of the kernels before (a cache write) is recorded first */
        if (task == 0 && sp == 0 && threadIdx.x == 0)
            cu_fault(fault, CU_FAULT_CACHE, node, p, p + n - 1, ctx);
        return;
    }
    int64_t i = task / H, h = task % H, last = p + i, kw = Hkv * hd, kh = h / (H / Hkv);
    int ns = (int)(last / AD_KEYS + 1); /* the splits that hold keys of this row */
    if (sp >= ns) return;                /* the whole block leaves */
    int64_t j0 = sp * AD_KEYS + wi * 32, j = j0 + lane;
    /* head sizes up to 64: the lane's key row and its elements of the warp's
     * 32 value rows are loaded first, in flight while q is staged */
    constexpr bool PRE = U <= 2;
    float kpre[PRE ? 32 * U : 1], vpre[PRE ? 32 : 1][U];
    auto preload = [&]() {
        if (j <= last) ad_key_load<U>(kc + j * kw + kh * hd, hd, vec, kpre);
CU_UNROLL(32)
        for (int jj = 0; jj < 32; jj++) {
            int64_t jr = j0 + jj <= last ? j0 + jj : last;
            cu_load_head<T, U>(vc + jr * kw + kh * hd, hd, lane, vpre[PRE ? jj : 0]);
        }
    };
    bool old = j0 + 31 < p; /* the warp's rows were all written before this compute */
    if (PRE && j0 <= last && old) preload();
    cu_pdl_wait();
    cu_pdl_next();
    if (PRE && j0 <= last && !old) preload();
    const float *qr = q + i * H * hd + h * hd;
    if (qrope.n_head) /* q is a RoPE node's input (folded in): rotate it here */
        for (int64_t d = threadIdx.x; d < hd / 2; d += blockDim.x) {
            int64_t a, b;
            float ya, yb, cs = qcs, sn = qsn;
            if (d != threadIdx.x) cu_rope_angle(qrope, i, d, &cs, &sn);
            cu_rope_apply(qrope, qr, d, cs, sn, &a, &b, &ya, &yb);
            qs[a] = ya;
            qs[b] = yb;
        }
    else
        for (int64_t d = threadIdx.x; d < hd; d += blockDim.x) qs[d] = qr[d];
    __syncthreads();

    float m = -INFINITY, l = 0.0f, o[U] = {0};
    if (j0 <= last) { /* whole warps */
        float s = -INFINITY;
        if (j <= last && PRE) {
            float acc = 0.0f;
            for (int d = 0; d < (PRE ? 32 * U : 0); d++) acc += qs[d] * kpre[d];
            s = acc * scale;
        } else if (j <= last) {
            s = ad_key_dot<U>(kc + j * kw + kh * hd, qs, hd, vec) * scale;
        }
        m = cu_warp_max(s);
        float e = j <= last ? expf(s - m) : 0.0f;
        l = cu_warp_sum(e);
        /* every lane walks the 32 value rows (rows past the last key read
         * the last one with weight 0), all loads in flight together */
CU_UNROLL((U <= 4 ? 32 : 8))
        for (int jj = 0; jj < 32; jj++) {
            float pj = __shfl_sync(0xffffffffu, e, jj);
            float v[U];
            if (PRE) {
                for (int u = 0; u < U; u++) v[u] = vpre[PRE ? jj : 0][u];
            } else {
                int64_t jr = j0 + jj <= last ? j0 + jj : last;
                cu_load_head<T, U>(vc + jr * kw + kh * hd, hd, lane, v);
            }
            for (int u = 0; u < U; u++) o[u] += pj * v[u];
        }
    }
    if (lane == 0) {
        wm[wi] = m;
        wl[wi] = l;
    }
    cu_store_head<U>(wo[wi], hd, lane, o, 1.0f);
    __syncthreads();
    if (wi != 0) return;

    /* warp 0: the block's warps in order */
    float O[U];
    float L = ad_merge<U>(
        AD_WARPS,
        [&](int c, float *pm, float *pl, float *po) {
            *pm = wm[c];
            *pl = wl[c];
            if (po) cu_load_head<float, U>(wo[c], hd, lane, po);
        },
        O);
    float *orow = out + i * H * hd + h * hd;
    if (ns == 1) {
        cu_store_head<U>(orow, hd, lane, O, 1.0f / L);
        return;
    }
    float M = -INFINITY;
    for (int c = 0; c < AD_WARPS; c++)
        if (wl[c] > 0.0f) M = fmaxf(M, wm[c]);
    float *pr = part + (task * nsplit + sp) * (hd + 2);
    if (lane == 0) {
        pr[0] = M;
        pr[1] = L;
    }
    cu_store_head<U>(pr + 2, hd, lane, O, 1.0f);
    /* the partial is visible before the count says so: every lane's stores
     * are fenced, and the warp barrier orders them before lane 0's atomic
     * (the fence alone orders only a lane's own stores) */
    __threadfence();
    __syncwarp();
    int done = 0;
    if (lane == 0) {
        done = atomicAdd(&count[task], 1);
        __threadfence();
    }
    done = __shfl_sync(0xffffffffu, done, 0);
    if (done != ns - 1) return;
    __syncwarp(); /* lane 0's acquiring fence before every lane's loads */
    /* the last block: every split's partial, in split order */
    const float *pt = part + task * nsplit * (hd + 2);
    L = ad_merge<U>(
        ns,
        [&](int c, float *pm, float *pl, float *po) {
            const float *q2 = pt + (int64_t)c * (hd + 2);
            *pm = __ldcg(q2);
            *pl = __ldcg(q2 + 1);
            if (po)
                for (int u = 0; u < U; u++) {
                    int64_t d = lane + 32 * u;
                    po[u] = d < hd ? __ldcg(q2 + 2 + d) : 0.0f;
                }
        },
        O);
    cu_store_head<U>(orow, hd, lane, O, 1.0f / L);
    if (lane == 0) count[task] = 0;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

/* Whether attention node t may read its position and the cache rows
 * before it ahead of cu_pdl_wait(): the position is settled, and every node
 * of the plan that writes either cache in place is a KV write at that same
 * position (so this compute writes only rows from there on). */
static bool kv_rows_settled(const tnn_tensor *t) {
    const tnn_tensor *pos = t->src[3];
    if (!cu_settled(pos)) return false;
    const tnn_session *s = t->sess;
    for (int32_t i = 0; i < s->n_plan; i++) {
        const tnn_tensor *x = s->plan[i];
        if ((x->flags & TNN_FLAG_ALIAS) && x->data &&
            (x->data == t->src[1]->data || x->data == t->src[2]->data) &&
            !(x->op == TNN_OP_KV_WRITE && x->src[2] == pos))
            return false;
    }
    return true;
}

/* Attention over the cache; with qr (a RoPE node whose result is t's q and
 * nothing else's), q rotated inside the decoding kernel: TNN_ERR_UNSUPPORTED
 * (nothing launched) where that kernel does not run. */
static int cached(tnn_tensor *t, const tnn_tensor *qr = NULL) {
    const tnn_tensor *q = qr ? qr->src[0] : t->src[0], *kc = t->src[1], *vc = t->src[2];
    cu_rope qrope;
    memset(&qrope, 0, sizeof qrope);
    if (qr) qrope = rope_params(qr);
    bool early = (!qr || rope_settled(qr)) && kv_rows_settled(t);
    int64_t H = t->iparam[0], Hkv = t->iparam[1], n = q->shape[0], hd = q->shape[1] / H;
    if (hd > 32 * CU_HD_UNITS)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "head size %lld: the CUDA attention takes up to %d",
                       (long long)hd, 32 * CU_HD_UNITS);
    float scale = (float)(1.0 / sqrt((double)hd));
    const int32_t *pos = (const int32_t *)t->src[3]->data;
    int64_t ctx = kc->shape[0];
    cudaStream_t st = tnn__cu.stream;
    if (n <= AD_ROWS && n * H <= CU_COUNTERS) {
        int64_t nsplit = (ctx + AD_KEYS - 1) / AD_KEYS;
        float *part = (float *)tnn__cu_scratch((size_t)(n * H * nsplit * (hd + 2)) * sizeof(float));
        if (!part) return tnn_last_status();
        dim3 grid((unsigned)nsplit, (unsigned)(n * H));
        bool f16 = kc->dtype == TNN_F16;
        bool vec = hd % (f16 ? 8 : 4) == 0 && (uintptr_t)kc->data % 16 == 0;
        int *cnt = tnn__cu.counters;
        int units = hd <= 64 ? 2 : hd <= 128 ? 4 : CU_HD_UNITS;
        /* launched plainly, not with TNN_LAUNCH_PDL: overlapped (2-3% more
         * tokens a second), test_cuda's attention after a RoPE cache write with
         * head size 6 fails about once in 200 runs (an H100 and an H200; 0 in
         * 309 runs launched plainly; the cause is not found, and the case
         * alone on fresh sessions did not fail in 900,000 tries). Launched
         * plainly, the kernel starts after the one before has finished, and
         * its waits do nothing. */
#define AD_LAUNCH(T, U)                                                                       \
    TNN_LAUNCH(k_attn_decode<T COMMA U>, grid, 32 * AD_WARPS, 0, st, CF(q),                   \
               (const T *)kc->data, (const T *)vc->data, part, cnt, FP(t), n, ctx, H, Hkv, hd,  \
               scale, nsplit, vec, pos, qrope, early, tnn__cu.fault, t->id)
        if (f16)
            if (units == 2) AD_LAUNCH(uint16_t, 2);
            else if (units == 4) AD_LAUNCH(uint16_t, 4);
            else AD_LAUNCH(uint16_t, CU_HD_UNITS);
        else if (units == 2) AD_LAUNCH(float, 2);
        else if (units == 4) AD_LAUNCH(float, 4);
        else AD_LAUNCH(float, CU_HD_UNITS);
#undef AD_LAUNCH
        return tnn__cu_launched("tnn_attention_cached");
    }
    if (qr) return TNN_ERR_UNSUPPORTED;
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

int tnn__cu_rope_fused(tnn_tensor *t, tnn_tensor *nx) {
    if (t->op != TNN_OP_ROPE || t->ndim != 2) return 0;
    if (nx->op == TNN_OP_ATTENTION_CACHED && nx->src[0] == t) {
        int rc = cached(nx, t);
        return rc == TNN_ERR_UNSUPPORTED ? 0 : rc ? rc : 1;
    }
    const tnn_tensor *cache = nx->src[0];
    if (nx->op != TNN_OP_KV_WRITE || nx->src[1] != t ||
        cache->ndim != 2 || cache->shape[1] != t->shape[1] ||
        (cache->dtype != TNN_F16 && cache->dtype != TNN_F32))
        return 0;
    cu_rope_dst dst = {nx->data, cache->dtype == TNN_F16, cache->shape[0],
                       (const int32_t *)nx->src[2]->data, tnn__cu.fault, nx->id};
    int rc = rope(t, NULL, dst);
    return rc ? rc : 1;
}

int tnn__cu_attention(tnn_tensor *t) {
    cudaStream_t st = tnn__cu.stream;
    switch (t->op) {
    case TNN_OP_ROPE: {
        cu_rope_dst own = {NULL, 0, 0, NULL, NULL, 0};
        return rope(t, FP(t), own);
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
    if (t->op != TNN_OP_ATTENTION) c.dout = CF(t->src[3]);
    if (attn_flash(c)) {
        /* the log-sum-exp the forward keeps after its output (aux_bytes),
         * read by the backward when its forward ran here too */
        const tnn_tensor *fw = t->op == TNN_OP_ATTENTION ? t : t->src[4];
        const char *e = getenv("TNN_CUDA_FLASH_LSE"); /* 0: the backward runs the forward again */
        float *lse = NULL;
        if (fw && fw->aux_bytes && !(e && !strcmp(e, "0"))) {
            cu_attn f = c;
            f.dout = NULL;
            f.out = FP(fw);
            if (fw == t || attn_flash(f)) lse = (float *)((char *)fw->data + fw->nbytes);
        }
        return tnn__cu_flash(c.q, c.k, c.v, c.dout, c.out, lse, lse && fw != t ? CF(fw) : NULL,
                             c.B, c.T, c.H, c.Hkv, c.hd, c.scale, tnn__cu_tf32());
    }
    int64_t nh = attn_gemm_heads(c);
    if (nh > 0) return t->op == TNN_OP_ATTENTION ? attn_gemm_fwd(c, nh) : attn_gemm_bwd(c, nh);
    if (c.hd > 32 * CU_HD_UNITS)
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "head size %lld: the CUDA attention's warp kernels "
                       "take up to %d (its cuBLAS path, from sequence length %d or with "
                       "TNN_CUDA_ATTN=gemm, has no limit)", (long long)c.hd, 32 * CU_HD_UNITS,
                       ATTN_GEMM_MIN_T);
    if (t->op == TNN_OP_ATTENTION) {
        TNN_LAUNCH(k_attn_fwd, warp_blocks(c.B * c.H * c.T), 32 * CU_WARPS, 0, st, c);
        return tnn__cu_launched("tnn_attention");
    }
    c.stats = (float *)tnn__cu_scratch((size_t)(c.B * c.H * c.T) * 2 * sizeof(float));
    if (!c.stats) return tnn_last_status();
    TNN_LAUNCH(k_attn_bwd_q, warp_blocks(c.B * c.H * c.T), 32 * CU_WARPS, 0, st, c);
    TNN_LAUNCH(k_attn_bwd_kv, warp_blocks(c.B * c.Hkv * c.T), 32 * CU_WARPS, 0, st, c);
    return tnn__cu_launched("attention_back");
}
