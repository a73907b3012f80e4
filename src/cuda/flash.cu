/* flash.cu - causal training attention on the tensor cores, the scores kept
 * on chip (forward and backward).
 *
 * A block takes 64 query rows (64 keys in the key-major backward), a warp
 * 16 of them; the other operand comes through shared memory 64 rows at a
 * time. Products are mma.sync m16n8k8 with TF32 inputs and f32 sums: one
 * pass where TF32 products were asked for (TNN_CUDA_TF32=1), else three
 * (3xTF32: each operand split into a TF32 value and a TF32 remainder, and
 * big*big + big*small + small*big summed, which carries about 20 bits of
 * each product: f32's accuracy for these sums). The softmax is taken online
 * as the key tiles go (running max and sum in the exp2 domain), so no T x T
 * matrix is ever stored:
 *
 *  - forward: O = softmax(scale Q K^T) V, causal;
 *  - backward: per query row the log-sum-exp and D = dO . O (= sum_j
 *    P_j dP_j), the log-sum-exp kept by the forward after its output (the
 *    node's aux bytes) where the forward ran here, else from the forward run
 *    again; then two kernels, each recomputing P from the log-sum-exp (the
 *    first also taking D from the kept forward's O): query-major for
 *    dQ = scale dS K,
 *    key-major for dK = scale dS^T Q and dV = P^T dO (a kv head's block
 *    walks every query head of its group), with dS = P (dP - D) and
 *    dP = dO V^T. Each gradient row is summed by one warp in a fixed order,
 *    so the results are deterministic (no atomics).
 *
 * Fragment layouts (PTX ISA, mma.m16n8k8 .tf32), lane = 4 g + t: A (16 x 8,
 * row) a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B (8 x 8,
 * col) b0 (t, g), b1 (t + 4, g); C (16 x 8) c0 (g, 2t), c1 (g, 2t + 1),
 * c2 (g + 8, 2t), c3 (g + 8, 2t + 1). A product whose A operand is a C
 * fragment (P V, P^T dO, ...) takes its k index permuted: A's column t is
 * key 2t and column t + 4 key 2t + 1, so a = (c0, c2, c1, c3) with no
 * shuffles, and B's rows are read in the same order. Shared rows are padded
 * to HD + 4 floats, which makes every fragment read conflict-free.
 */
#include "cuda_impl.h"

#include <math.h>

#define FA_ROWS 64 /* rows a block takes */
#define FA_WARPS 4 /* 16 rows a warp */
#define FA_PAD 4

/* ------------------------------------------------------------------------ */
/* TF32 and the tensor-core product                                         */
/* ------------------------------------------------------------------------ */

__device__ __forceinline__ float fa_f(uint32_t u) { return __uint_as_float(u); }

/* x truncated to TF32: its low 13 bits cleared. The tensor cores read only
 * the top 19 bits of a TF32 operand's register, so the one-pass products
 * take f32 registers as they are (no instruction at all per operand, where
 * a rounding cvt.rna would add a conversion to each), and the three-pass
 * ones use this to split x into x's TF32 part and the exact remainder. */
__device__ __forceinline__ uint32_t fa_tf32(float x) { return __float_as_uint(x) & 0xffffe000u; }

/* d += a b for one warp: a 16 x 8 A fragment, an 8 x 8 B fragment. */
__device__ __forceinline__ void fa_mma(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
    __trap(); /* never launched below sm_80 (tnn__cu_flash_ok) */
#elif TNN_CUDA_EMULATED
    /* the emulator: the warp's fragments through a per-warp table (blocks
     * run one at a time, so a static array is the running block's) */
    static uint32_t ta[32][32][4], tb[32][32][2];
    int w = (int)(threadIdx.x >> 5) & 31, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int i = 0; i < 4; i++) /* as the tensor cores read them */
        ta[w][lane][i] = a[i] & 0xffffe000u;
    tb[w][lane][0] = b0 & 0xffffe000u;
    tb[w][lane][1] = b1 & 0xffffe000u;
    __syncwarp();
    for (int r = 0; r < 4; r++) {
        int row = g + 8 * (r >> 1), col = 2 * t + (r & 1);
        float acc = d[r];
        /* A (row, k) is in lane 4 (row % 8) + k % 4, B (k, col) in 4 col + k % 4 */
        for (int k = 0; k < 8; k++) {
            float av = fa_f(ta[w][4 * (row & 7) + (k & 3)][(row >> 3) + 2 * (k >> 2)]);
            float bv = fa_f(tb[w][4 * col + (k & 3)][k >> 2]);
            acc += av * bv;
        }
        d[r] = acc;
    }
    __syncwarp();
#else
    (void)d, (void)a, (void)b0, (void)b1;
#endif
}

/* d += a b with P passes: 1 (TF32) or 3 (3xTF32; the small terms first). */
template <int P>
__device__ __forceinline__ void fa_mma_p(float d[4], const float a[4], float b0, float b1) {
    uint32_t ab[4];
    if (P == 1) {
        for (int i = 0; i < 4; i++) ab[i] = __float_as_uint(a[i]);
        fa_mma(d, ab, __float_as_uint(b0), __float_as_uint(b1));
        return;
    }
    uint32_t as[4], bb0 = fa_tf32(b0), bb1 = fa_tf32(b1);
    for (int i = 0; i < 4; i++) {
        ab[i] = fa_tf32(a[i]);
        as[i] = __float_as_uint(a[i] - fa_f(ab[i]));
    }
    fa_mma(d, as, bb0, bb1);
    fa_mma(d, ab, __float_as_uint(b0 - fa_f(bb0)), __float_as_uint(b1 - fa_f(bb1)));
    fa_mma(d, ab, bb0, bb1);
}

/* acc (16 x 64, as 8 C fragments) = A B^T: A the warp's 16 rows of a
 * shared tile, B all 64 rows of another, both HD wide, rows ld apart. */
template <int HD, int P>
__device__ __forceinline__ void fa_abt(float acc[8][4], const float *a, const float *b, int ld) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int n = 0; n < 8; n++)
        for (int r = 0; r < 4; r++) acc[n][r] = 0.0f;
    CU_UNROLL(HD / 8)
    for (int kk = 0; kk < HD / 8; kk++) {
        const float *a0 = a + g * ld + 8 * kk + t;
        float af[4] = {a0[0], a0[8 * ld], a0[4], a0[8 * ld + 4]};
        CU_UNROLL(8)
        for (int n = 0; n < 8; n++) {
            const float *b0 = b + (8 * n + g) * ld + 8 * kk + t;
            fa_mma_p<P>(acc[n], af, b0[0], b0[4]);
        }
    }
}

/* acc (16 x HD) += C B: C a 16 x 64 result in C fragments (the k index
 * permuted, see the top), B 64 rows of a shared tile. */
template <int HD, int P>
__device__ __forceinline__ void fa_cb(float acc[HD / 8][4], const float c[8][4], const float *b,
                                      int ld) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    CU_UNROLL(8)
    for (int kk = 0; kk < 8; kk++) {
        float af[4] = {c[kk][0], c[kk][2], c[kk][1], c[kk][3]};
        const float *b0 = b + (8 * kk + 2 * t) * ld + g;
        CU_UNROLL(HD / 8)
        for (int n = 0; n < HD / 8; n++) fa_mma_p<P>(acc[n], af, b0[8 * n], b0[ld + 8 * n]);
    }
}

/* ------------------------------------------------------------------------ */
/* Tiles                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct {
    const float *q, *k, *v, *dout;
    float *out;
    float2 *stats; /* per (b, h, t): log2-sum-exp2 of the scaled scores, D */
    float *lse;    /* per (b, h, t): the log2-sum-exp2 the forward keeps, or NULL */
    const float *o; /* the forward's output (backward with lse) */
    int64_t H, Hkv, T, B;
    float scale;
} fa_args;

/* Rows r0 .. r0 + 63 of a head (HD floats, rows ldg apart in global
 * memory) into a shared tile; rows from T on are zeros. 16-byte loads (the
 * caller checked the alignment): a thread takes one 4-float column of
 * every (128 / (HD / 4))-th row. */
template <int HD>
__device__ __forceinline__ void fa_load(float *s, const float *src, int64_t r0, int64_t T,
                                        int64_t ldg) {
    const int ld = HD + FA_PAD, per = HD / 4, step = 32 * FA_WARPS / per;
    int r = threadIdx.x / per, c = 4 * (threadIdx.x % per);
    int n = T - r0 < FA_ROWS ? (int)(T - r0) : FA_ROWS; /* rows that exist */
    const float *g = src + (r0 + r) * ldg + c;
    CU_UNROLL(FA_ROWS / step)
    for (int i = 0; i < FA_ROWS / step; i++) {
        float4 v = {0.0f, 0.0f, 0.0f, 0.0f};
        if (r + i * step < n) v = *(const float4 *)(g + (int64_t)i * step * ldg);
        *(float4 *)(s + (r + i * step) * ld + c) = v;
    }
}

/* The row max / sum over the 4 lanes (t) that hold parts of a row. */
__device__ __forceinline__ float fa_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float fa_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

__device__ __forceinline__ float2 fa_f2(float x, float y) {
    float2 v;
    v.x = x;
    v.y = y;
    return v;
}

#define FA_LOG2E 1.4426950408889634f

/* On a diagonal tile (the query and key tiles start at the same row), the
 * elements of a warp's 16 x 64 scores (rows from r0 of the tile) whose key
 * comes after the query set to v; fa_mask_t for S^T, whose rows are keys. */
__device__ __forceinline__ void fa_mask(float s[8][4], float v, int r0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int n = 0; n < 8; n++)
        for (int r = 0; r < 4; r++)
            if (8 * n + 2 * t + (r & 1) > r0 + g + 8 * (r >> 1)) s[n][r] = v;
}
__device__ __forceinline__ void fa_mask_t(float s[8][4], float v, int r0) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int n = 0; n < 8; n++)
        for (int r = 0; r < 4; r++)
            if (8 * n + 2 * t + (r & 1) < r0 + g + 8 * (r >> 1)) s[n][r] = v;
}

/* ------------------------------------------------------------------------ */
/* Forward (and the backward's statistics)                                  */
/* ------------------------------------------------------------------------ */

/* Block (query tile, b * H + h); the longest tiles first. STATS: instead
 * of O, the row's log-sum-exp and D = dO . O into c.stats; else O, and the
 * log-sum-exp into c.lse when the backward will read it. */
template <int HD, int P, bool STATS>
__global__ void __launch_bounds__(32 * FA_WARPS) k_fa_fwd(fa_args c) {
    const int ld = HD + FA_PAD;
    TNN_DYN_SMEM(float, sm);
    float *sq = sm, *sk = sq + FA_ROWS * ld, *sv = sk + FA_ROWS * ld;
    int64_t nq = (c.T + FA_ROWS - 1) / FA_ROWS, qt = nq - 1 - blockIdx.x, bh = blockIdx.y;
    int64_t b = bh / c.H, h = bh % c.H, kh = h / (c.H / c.Hkv);
    int64_t qw = c.H * HD, kw = c.Hkv * HD, q0 = qt * FA_ROWS;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float *K = c.k + b * c.T * kw + kh * HD, *V = c.v + b * c.T * kw + kh * HD;
    fa_load<HD>(sq, c.q + b * c.T * qw + h * HD, q0, c.T, qw);
    float o[HD / 8][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    for (int n = 0; n < HD / 8; n++)
        for (int r = 0; r < 4; r++) o[n][r] = 0.0f;
    int64_t row[2] = {q0 + 16 * warp + g, q0 + 16 * warp + g + 8};
    float sl2 = c.scale * FA_LOG2E;
    for (int64_t j = 0; j <= qt; j++) {
        __syncthreads(); /* the last tile's reads are done */
        fa_load<HD>(sk, K, j * FA_ROWS, c.T, kw);
        fa_load<HD>(sv, V, j * FA_ROWS, c.T, kw);
        __syncthreads();
        float s[8][4], mx[2] = {m[0], m[1]};
        fa_abt<HD, P>(s, sq + 16 * warp * ld, sk, ld);
        if (j == qt) /* the diagonal tile: key > query masked (and keys from T on) */
            fa_mask(s, -INFINITY, 16 * warp);
        for (int n = 0; n < 8; n++)
            for (int r = 0; r < 4; r++) {
                s[n][r] *= sl2;
                mx[r >> 1] = fmaxf(mx[r >> 1], s[n][r]);
            }
        float al[2];
        for (int i = 0; i < 2; i++) { /* key 0 is in every row's first tile: mx is finite */
            mx[i] = fa_quad_max(mx[i]);
            al[i] = exp2f(m[i] - mx[i]);
            m[i] = mx[i];
            l[i] *= al[i];
        }
        for (int n = 0; n < 8; n++)
            for (int r = 0; r < 4; r++) {
                float p = exp2f(s[n][r] - m[r >> 1]);
                s[n][r] = p;
                l[r >> 1] += p;
            }
        for (int n = 0; n < HD / 8; n++)
            for (int r = 0; r < 4; r++) o[n][r] *= al[r >> 1];
        fa_cb<HD, P>(o, s, sv, ld);
    }
    for (int i = 0; i < 2; i++) {
        float sum = fa_quad_sum(l[i]), inv = 1.0f / sum;
        int64_t at = (b * c.T + row[i]) * qw + h * HD + 2 * t;
        float dot = 0.0f;
        for (int n = 0; n < HD / 8; n++) {
            float2 y = {o[n][2 * i] * inv, o[n][2 * i + 1] * inv};
            if (!STATS) {
                if (row[i] < c.T) *(float2 *)(c.out + at + 8 * n) = y;
            } else if (row[i] < c.T) {
                float2 d = *(const float2 *)(c.dout + at + 8 * n);
                dot += d.x * y.x + d.y * y.y;
            }
        }
        if (STATS) {
            dot = fa_quad_sum(dot);
            if (t == 0 && row[i] < c.T)
                c.stats[bh * c.T + row[i]] = fa_f2(m[i] + log2f(sum), dot);
        } else if (c.lse && t == 0 && row[i] < c.T) {
            c.lse[bh * c.T + row[i]] = m[i] + log2f(sum);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Backward                                                                 */
/* ------------------------------------------------------------------------ */

/* dQ: block (query tile, b * H + h), into the gradient's dq part. */
template <int HD, int P>
__global__ void __launch_bounds__(32 * FA_WARPS) k_fa_dq(fa_args c) {
    const int ld = HD + FA_PAD;
    TNN_DYN_SMEM(float, sm);
    float *sq = sm, *sdo = sq + FA_ROWS * ld, *sk = sdo + FA_ROWS * ld, *sv = sk + FA_ROWS * ld;
    int64_t nq = (c.T + FA_ROWS - 1) / FA_ROWS, qt = nq - 1 - blockIdx.x, bh = blockIdx.y;
    int64_t b = bh / c.H, h = bh % c.H, kh = h / (c.H / c.Hkv);
    int64_t qw = c.H * HD, kw = c.Hkv * HD, q0 = qt * FA_ROWS;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const float *K = c.k + b * c.T * kw + kh * HD, *V = c.v + b * c.T * kw + kh * HD;
    fa_load<HD>(sq, c.q + b * c.T * qw + h * HD, q0, c.T, qw);
    fa_load<HD>(sdo, c.dout + b * c.T * qw + h * HD, q0, c.T, qw);
    int64_t row[2] = {q0 + 16 * warp + g, q0 + 16 * warp + g + 8};
    float2 st[2];
    for (int i = 0; i < 2; i++) {
        if (!c.lse) { /* the statistics pass ran */
            st[i] = row[i] < c.T ? c.stats[bh * c.T + row[i]] : fa_f2(0.0f, 0.0f);
            continue;
        }
        /* D from the forward's O, summed as the statistics pass sums it
         * (the same bits), and handed on to the dK / dV kernel */
        int64_t at = (b * c.T + row[i]) * qw + h * HD + 2 * t;
        float dot = 0.0f;
        if (row[i] < c.T)
            for (int n = 0; n < HD / 8; n++) {
                float2 y = *(const float2 *)(c.o + at + 8 * n);
                float2 d = *(const float2 *)(c.dout + at + 8 * n);
                dot += d.x * y.x + d.y * y.y;
            }
        dot = fa_quad_sum(dot);
        st[i] = row[i] < c.T ? fa_f2(c.lse[bh * c.T + row[i]], dot) : fa_f2(0.0f, 0.0f);
        if (t == 0 && row[i] < c.T) c.stats[bh * c.T + row[i]] = st[i];
    }
    float dq[HD / 8][4];
    for (int n = 0; n < HD / 8; n++)
        for (int r = 0; r < 4; r++) dq[n][r] = 0.0f;
    float sl2 = c.scale * FA_LOG2E;
    for (int64_t j = 0; j <= qt; j++) {
        __syncthreads();
        fa_load<HD>(sk, K, j * FA_ROWS, c.T, kw);
        fa_load<HD>(sv, V, j * FA_ROWS, c.T, kw);
        __syncthreads();
        float s[8][4], dp[8][4];
        fa_abt<HD, P>(s, sq + 16 * warp * ld, sk, ld);
        fa_abt<HD, P>(dp, sdo + 16 * warp * ld, sv, ld);
        if (j == qt) fa_mask(s, -INFINITY, 16 * warp);
        for (int n = 0; n < 8; n++)
            for (int r = 0; r < 4; r++) {
                const float2 &e = st[r >> 1];
                s[n][r] = exp2f(s[n][r] * sl2 - e.x) * (dp[n][r] - e.y);
            }
        fa_cb<HD, P>(dq, s, sk, ld);
    }
    for (int i = 0; i < 2; i++) {
        if (row[i] >= c.T) continue;
        float *o = c.out + (b * c.T + row[i]) * qw + h * HD + 2 * t;
        for (int n = 0; n < HD / 8; n++)
            *(float2 *)(o + 8 * n) = fa_f2(dq[n][2 * i] * c.scale, dq[n][2 * i + 1] * c.scale);
    }
}

/* dK and dV: block (key tile, b * Hkv + kh); the longest tiles first. The
 * warp's 16 keys are the rows of S^T = K Q^T and dP^T = V dO^T. */
template <int HD, int P>
__global__ void __launch_bounds__(32 * FA_WARPS) k_fa_dkv(fa_args c) {
    const int ld = HD + FA_PAD;
    TNN_DYN_SMEM(float, sm);
    float *sk = sm, *sv = sk + FA_ROWS * ld, *sq = sv + FA_ROWS * ld, *sdo = sq + FA_ROWS * ld;
    float2 *sst = (float2 *)(sdo + FA_ROWS * ld);
    int64_t nq = (c.T + FA_ROWS - 1) / FA_ROWS, kt = blockIdx.x, bk = blockIdx.y;
    int64_t b = bk / c.Hkv, kh = bk % c.Hkv, grp = c.H / c.Hkv;
    int64_t qw = c.H * HD, kw = c.Hkv * HD, nr = c.B * c.T, k0 = kt * FA_ROWS;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    fa_load<HD>(sk, c.k + b * c.T * kw + kh * HD, k0, c.T, kw);
    fa_load<HD>(sv, c.v + b * c.T * kw + kh * HD, k0, c.T, kw);
    int64_t key[2] = {k0 + 16 * warp + g, k0 + 16 * warp + g + 8};
    float dk[HD / 8][4], dv[HD / 8][4];
    for (int n = 0; n < HD / 8; n++)
        for (int r = 0; r < 4; r++) dk[n][r] = dv[n][r] = 0.0f;
    float sl2 = c.scale * FA_LOG2E;
    for (int64_t gi = 0; gi < grp; gi++) {
        int64_t h = kh * grp + gi, bh = b * c.H + h;
        for (int64_t i = kt; i < nq; i++) {
            int64_t q0 = i * FA_ROWS;
            __syncthreads();
            fa_load<HD>(sq, c.q + b * c.T * qw + h * HD, q0, c.T, qw);
            fa_load<HD>(sdo, c.dout + b * c.T * qw + h * HD, q0, c.T, qw);
            for (int r = threadIdx.x; r < FA_ROWS; r += 32 * FA_WARPS)
                sst[r] = q0 + r < c.T ? c.stats[bh * c.T + q0 + r] : fa_f2(0.0f, 0.0f);
            __syncthreads();
            float s[8][4], dp[8][4];
            fa_abt<HD, P>(s, sk + 16 * warp * ld, sq, ld);
            fa_abt<HD, P>(dp, sv + 16 * warp * ld, sdo, ld);
            /* S^T's rows are keys: on the diagonal tile, a query before the
             * key is masked. Queries from T on need no mask: their Q and dO
             * rows are zeros and their statistics 0, so P dO and dS Q get
             * exact zeros from them. */
            if (i == kt) fa_mask_t(s, -INFINITY, 16 * warp);
            for (int n = 0; n < 8; n++)
                for (int r = 0; r < 4; r++) {
                    float2 e = sst[8 * n + 2 * t + (r & 1)];
                    float p = exp2f(s[n][r] * sl2 - e.x);
                    s[n][r] = p;
                    dp[n][r] = p * (dp[n][r] - e.y);
                }
            fa_cb<HD, P>(dv, s, sdo, ld);
            fa_cb<HD, P>(dk, dp, sq, ld);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (key[i] >= c.T) continue;
        float *o = c.out + nr * qw + (b * c.T + key[i]) * kw + kh * HD + 2 * t;
        for (int n = 0; n < HD / 8; n++) {
            *(float2 *)(o + 8 * n) = fa_f2(dk[n][2 * i] * c.scale, dk[n][2 * i + 1] * c.scale);
            *(float2 *)(o + nr * kw + 8 * n) = fa_f2(dv[n][2 * i], dv[n][2 * i + 1]);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static size_t fa_smem(int64_t hd, int tiles) {
    return (size_t)tiles * FA_ROWS * (hd + FA_PAD) * sizeof(float) + FA_ROWS * sizeof(float2);
}

bool tnn__cu_flash_ok(const float *const *ptrs, int n, int64_t hd, int64_t H, int64_t Hkv,
                      int64_t B) {
    if (tnn__cu.cc_major < 8 || (hd != 32 && hd != 64) || B * H > 65535) return false;
    for (int i = 0; i < n; i++)
        if (ptrs[i] && (uintptr_t)ptrs[i] % 16) return false;
    return (H * hd) % 4 == 0 && (Hkv * hd) % 4 == 0;
}

template <int HD, int P>
static int fa_run(const fa_args &a, bool backward) {
    static bool raised = false; /* the kernels' shared memory past 48 KiB, once */
    size_t s3 = fa_smem(HD, 3), s4 = fa_smem(HD, 4);
    if (!raised) {
        const cudaFuncAttribute smem = cudaFuncAttributeMaxDynamicSharedMemorySize;
        cudaFuncSetAttribute(k_fa_fwd<HD, P, false>, smem, (int)s3);
        cudaFuncSetAttribute(k_fa_fwd<HD, P, true>, smem, (int)s3);
        cudaFuncSetAttribute(k_fa_dq<HD, P>, smem, (int)s4);
        cudaFuncSetAttribute(k_fa_dkv<HD, P>, smem, (int)s4);
        raised = true;
    }
    cudaStream_t st = tnn__cu.stream;
    unsigned nq = (unsigned)((a.T + FA_ROWS - 1) / FA_ROWS);
    if (!backward) {
        TNN_LAUNCH(k_fa_fwd<HD COMMA P COMMA false>, dim3(nq, (unsigned)(a.B * a.H)),
                   32 * FA_WARPS, s3, st, a);
        return tnn__cu_launched("tnn_attention");
    }
    if (!a.lse) /* the forward did not keep its log-sum-exp: run it again */
        TNN_LAUNCH(k_fa_fwd<HD COMMA P COMMA true>, dim3(nq, (unsigned)(a.B * a.H)),
                   32 * FA_WARPS, s3, st, a);
    TNN_LAUNCH(k_fa_dq<HD COMMA P>, dim3(nq, (unsigned)(a.B * a.H)), 32 * FA_WARPS, s4, st, a);
    TNN_LAUNCH(k_fa_dkv<HD COMMA P>, dim3(nq, (unsigned)(a.B * a.Hkv)), 32 * FA_WARPS, s4, st, a);
    return tnn__cu_launched("attention_back");
}

int tnn__cu_flash(const float *q, const float *k, const float *v, const float *dout, float *out,
                  float *lse, const float *o, int64_t B, int64_t T, int64_t H, int64_t Hkv,
                  int64_t hd, float scale, bool tf32) {
    if (B * H > 65535) /* tnn__cu_flash_ok sends these to the other paths */
        return TNN_ERR(TNN_ERR_UNSUPPORTED, "%lld heads: too many for one grid",
                       (long long)(B * H));
    fa_args a = {q, k, v, dout, out, NULL, lse, o, H, Hkv, T, B, scale};
    if (dout) {
        a.stats = (float2 *)tnn__cu_scratch((size_t)(B * H * T) * sizeof(float2));
        if (!a.stats) return tnn_last_status();
    }
    bool bw = dout != NULL;
    if (hd == 32) return tf32 ? fa_run<32, 1>(a, bw) : fa_run<32, 3>(a, bw);
    return tf32 ? fa_run<64, 1>(a, bw) : fa_run<64, 3>(a, bw);
}
