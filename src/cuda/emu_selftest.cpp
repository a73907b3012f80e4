// Built and run by ctest as test_cuda_emulator (tests/CMakeLists.txt).
/* emu_selftest.cpp - checks the CUDA emulator (cuda_emu.h) with small kernels
 * written as the backend writes them (through cuda_compat.h): reductions in
 * shared memory and warp shuffles, early returns before barriers, grid-stride
 * loops, atomics, launch and copy validation, the test hooks. Prints one
 * PASS/FAIL line per test and exits nonzero if any check failed.
 */
#include "cuda_compat.h"

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string_view>
#include <thread>
#include <vector>

namespace {

int g_failures = 0;

bool check(bool ok, const char *what, int line) {
    if (!ok) {
        std::printf("  check failed, line %d: %s\n", line, what);
        g_failures++;
    }
    return ok;
}
#define CHECK(cond) check((cond), #cond, __LINE__)

void run(const char *name, void (*test)()) {
    int before = g_failures;
    cudaGetLastError();
    test();
    std::printf("%s %s\n", g_failures == before ? "PASS" : "FAIL", name);
}

constexpr unsigned kFull = 0xffffffffu;

template <class T> T *dev_alloc(size_t n) {
    void *p = nullptr;
    CHECK(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
    return static_cast<T *>(p);
}

template <class T> std::vector<T> to_host(const T *dev, size_t n) {
    std::vector<T> h(n);
    CHECK(cudaMemcpy(h.data(), dev, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return h;
}

template <class T> T *to_dev(const std::vector<T> &h) {
    T *d = dev_alloc<T>(h.size());
    CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
    return d;
}

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

/* out[block] = sum of its blockDim.x (<= 256, a power of two) elements. */
__global__ void block_sum_static(const float *x, float *out, int n) {
    __shared__ float s[256];
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < (unsigned)n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half)
            s[t] += s[t + half];
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = s[0];
}

/* The same with dynamic shared memory of blockDim.x floats. */
__global__ void block_sum_dynamic(const float *x, float *out, int n) {
    TNN_DYN_SMEM(float, s);
    unsigned t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
    s[t] = i < (unsigned)n ? x[i] : 0.0f;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (t < half)
            s[t] += s[t + half];
        __syncthreads();
    }
    if (t == 0)
        out[blockIdx.x] = s[0];
}

/* Lanes of this thread's warp: the last warp of a block may be partial. */
__device__ int warp_lanes() {
    int warp = (int)threadIdx.x / warpSize;
    return min(warpSize, (int)blockDim.x - warp * warpSize);
}

/* Sum over the warp's existing lanes, in every lane (xor butterfly). Reads
 * of lanes that do not exist are discarded, as a partial warp needs. */
__device__ float warp_sum_xor(float v) {
    int lane = (int)threadIdx.x % warpSize, lanes = warp_lanes();
    for (int off = 16; off > 0; off /= 2) {
        float o = __shfl_xor_sync(kFull, v, off);
        if ((lane ^ off) < lanes)
            v += o;
    }
    return v;
}

/* Sum over the warp's existing lanes, in lane 0. */
__device__ float warp_sum_down(float v) {
    int lane = (int)threadIdx.x % warpSize, lanes = warp_lanes();
    for (int off = 16; off > 0; off /= 2) {
        float o = __shfl_down_sync(kFull, v, off);
        if (lane + off < lanes)
            v += o;
    }
    return v;
}

/* Sum over the block, in thread 0: warps, then the first warp over them. */
__device__ float block_reduce(float v) {
    __shared__ float partial[32];
    int lane = (int)threadIdx.x % warpSize, warp = (int)threadIdx.x / warpSize;
    int nwarps = ((int)blockDim.x + warpSize - 1) / warpSize;
    v = warp_sum_down(v);
    if (lane == 0)
        partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? partial[lane] : 0.0f;
        for (int off = 16; off > 0; off /= 2)
            v += __shfl_xor_sync(kFull, v, off);
    }
    return v;
}

/* xor_out[thread] = its warp's sum; down_out[warp] = the same from lane 0;
 * block_out[block] = the block's sum. One block per blockDim.x elements. */
__global__ void warp_sums(const float *x, float *xor_out, float *down_out, float *block_out) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned nwarps = (blockDim.x + 31) / 32;
    float v = x[i];
    xor_out[i] = warp_sum_xor(v);
    float d = warp_sum_down(v);
    if (threadIdx.x % 32 == 0)
        down_out[blockIdx.x * nwarps + threadIdx.x / 32] = d;
    float b = block_reduce(v);
    if (threadIdx.x == 0)
        block_out[blockIdx.x] = b;
}

/* Each shuffle mode on a lane-id value, one column per mode. */
__global__ void shfl_modes(int *out) {
    int lane = (int)(threadIdx.x + threadIdx.y * blockDim.x) % 32;
    int linear = (int)(threadIdx.x + threadIdx.y * blockDim.x);
    int *row = out + linear * 8;
    row[0] = __shfl_sync(kFull, lane, 3, 8);         /* lane 3 of its 8-lane segment */
    row[1] = __shfl_up_sync(kFull, lane, 2);         /* lane-2, own below 2 */
    row[2] = __shfl_down_sync(kFull, lane, 4, 16);   /* lane+4 within 16, own past */
    row[3] = __shfl_xor_sync(kFull, lane, 5);        /* lane^5 */
    row[4] = __shfl_sync(kFull, linear, 0);          /* the warp's first linear id */
    long long wide = (long long)lane << 40 | 7;
    row[5] = (int)(__shfl_xor_sync(kFull, wide, 1) >> 40); /* 64-bit payload */
    double dv = lane + 0.25;
    row[6] = (int)(__shfl_down_sync(kFull, dv, 1) * 4);    /* 4*(lane+1)+1, or own */
    row[7] = (int)__activemask();
}

/* out[thread] = __activemask() when all lanes are there (column 0), after
 * threads past n returned (1), and in a branch of the even lanes while the
 * odd ones wait at __syncthreads (2). */
__global__ void active_masks(unsigned *out, unsigned n) {
    unsigned t = threadIdx.x;
    out[t * 3] = __activemask();
    if (t >= n)
        return;
    out[t * 3 + 1] = __activemask();
    if (t % 2 == 0)
        out[t * 3 + 2] = __activemask();
    __syncthreads();
}

/* Reads past a partial warp: lane 0 of 16 lanes reads lane 16. */
__global__ void shfl_missing_lane(float *out) {
    float v = __shfl_down_sync(kFull, 1.0f, 16);
    if (threadIdx.x == 32)
        out[0] = v;
}

/* Threads past n return before the barriers; the rest still meet twice. */
__global__ void early_return(const float *x, float *out, int n) {
    TNN_DYN_SMEM(float, s);
    int t = (int)threadIdx.x;
    if (t >= n)
        return;
    s[t] = x[t];
    __syncthreads();
    float neighbour = s[(t + 1) % n];
    __syncthreads();
    s[t] = neighbour * 2.0f;
    __syncthreads();
    out[t] = s[(t + n - 1) % n];
}

/* Threads past n return; the rest take three __syncthreads_or: of
 * (t == 30 * block), true in blocks 0 and 1 only (block 2's thread 60 has
 * returned), then of false, then of (t == last), each answer in every thread
 * (out[3 t + k]), the next barrier's predicates not leaking into it. */
__global__ void sync_or(int *out, unsigned n) {
    unsigned t = threadIdx.x;
    if (t >= n)
        return;
    int *o = out + 3 * (blockIdx.x * blockDim.x + t);
    o[0] = __syncthreads_or(t == 30 * blockIdx.x);
    o[1] = __syncthreads_or(0);
    o[2] = __syncthreads_or(t == n - 1 ? 7 : 0);
}

/* Every element of a w x h array once, from a 2-D grid of 2-D blocks. */
__global__ void grid_stride_2d(float *out, int *visits, int w, int h) {
    for (unsigned y = blockIdx.y * blockDim.y + threadIdx.y; y < (unsigned)h;
         y += gridDim.y * blockDim.y)
        for (unsigned x = blockIdx.x * blockDim.x + threadIdx.x; x < (unsigned)w;
             x += gridDim.x * blockDim.x) {
            out[y * w + x] = (float)(y * w + x);
            atomicAdd(&visits[y * w + x], 1);
        }
}

/* out[global linear thread] = its coordinates packed, 8 bits each. */
__global__ void coordinates(unsigned *out) {
    unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[block * threads + t] = threadIdx.x | threadIdx.y << 8 | threadIdx.z << 16 |
                               blockIdx.x << 24 | blockIdx.y << 28 | blockIdx.z << 30;
}

struct Counters {
    int count;
    float half_sum;
    double third_sum;
    unsigned umax, umin;
    int imax, imin;
    unsigned long long cas_sum;
    int last;
};

__global__ void atomics(Counters *c) {
    int id = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    atomicAdd(&c->count, 1);
    atomicAdd(&c->half_sum, 0.5f);
    atomicAdd(&c->third_sum, 0.25);
    atomicMax(&c->umax, (unsigned)id);
    atomicMin(&c->umin, (unsigned)id);
    atomicMax(&c->imax, -id);
    atomicMin(&c->imin, -id);
    unsigned long long old = c->cas_sum, seen;
    while ((seen = atomicCAS(&c->cas_sum, old, old + (unsigned long long)id)) != old)
        old = seen;
    atomicExch(&c->last, id);
}

__global__ void set_flag(int *flag) { *flag = 1; }

/* Odd lanes wait at __syncthreads, even ones at __syncwarp: never completes. */
__global__ void divergent_barriers(int *started) {
    atomicAdd(started, 1);
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncwarp();
}

/* Lane 0 shuffles with another mask than the rest while they wait. */
__global__ void mismatched_masks(float *out) {
    unsigned lane = threadIdx.x % 32;
    out[lane] = __shfl_sync(lane == 0 ? 0x0000ffffu : kFull, 1.0f, 0);
}

__global__ void bad_width(float *out) { out[threadIdx.x] = __shfl_xor_sync(kFull, 1.0f, 1, 12); }

/* Without a barrier, each thread reads its neighbour's slot: on a GPU, a
 * race; here the slot is unwritten (NaN) in the block whose thread order
 * runs the reader first. */
__global__ void missing_barrier(float *up, float *down) {
    TNN_DYN_SMEM(float, s);
    unsigned t = threadIdx.x, n = blockDim.x, base = blockIdx.x * n;
    s[t] = 1.0f;
    up[base + t] = s[(t + 1) % n];
    down[base + t] = s[(t + n - 1) % n];
}

__global__ void fill_index(float *out) { out[threadIdx.x] = (float)threadIdx.x; }

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

std::vector<float> iota(size_t n, float scale) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++)
        v[i] = scale * (float)(i % 97) - 3.0f;
    return v;
}

void test_block_sum() {
    const int n = 1000;
    std::vector<float> h = iota(n, 0.5f);
    float *x = to_dev(h);
    for (unsigned threads : {256u, 64u}) {
        unsigned blocks = (n + threads - 1) / threads;
        float *out = dev_alloc<float>(2 * blocks);
        TNN_LAUNCH(block_sum_static, blocks, threads, 0, 0, x, out, n);
        TNN_LAUNCH(block_sum_dynamic, blocks, threads, threads * sizeof(float), 0, x,
                   out + blocks, n);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<float> got = to_host(out, 2 * blocks);
        for (unsigned b = 0; b < blocks; b++) {
            float want = 0;
            for (unsigned i = b * threads; i < std::min((b + 1) * threads, (unsigned)n); i++)
                want += h[i];
            CHECK(std::fabs(got[b] - want) < 1e-3f);
            CHECK(std::fabs(got[blocks + b] - want) < 1e-3f);
        }
        cudaFree(out);
    }
    cudaFree(x);
}

void test_warp_reductions() {
    for (unsigned threads : {256u, 48u}) {
        const unsigned blocks = 3, nwarps = (threads + 31) / 32, n = blocks * threads;
        std::vector<float> h = iota(n, 0.25f);
        float *x = to_dev(h);
        float *xor_out = dev_alloc<float>(n), *down_out = dev_alloc<float>(blocks * nwarps);
        float *block_out = dev_alloc<float>(blocks);
        TNN_LAUNCH(warp_sums, blocks, threads, 0, 0, x, xor_out, down_out, block_out);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<float> xs = to_host(xor_out, n), ds = to_host(down_out, blocks * nwarps);
        std::vector<float> bs = to_host(block_out, blocks);
        for (unsigned b = 0; b < blocks; b++) {
            float block_want = 0;
            for (unsigned w = 0; w < nwarps; w++) {
                unsigned lo = b * threads + w * 32, hi = std::min(lo + 32, (b + 1) * threads);
                float want = 0;
                for (unsigned i = lo; i < hi; i++)
                    want += h[i];
                block_want += want;
                for (unsigned i = lo; i < hi; i++)
                    CHECK(std::fabs(xs[i] - want) < 1e-4f);
                CHECK(std::fabs(ds[b * nwarps + w] - want) < 1e-4f);
            }
            CHECK(std::fabs(bs[b] - block_want) < 1e-3f);
        }
        cudaFree(x), cudaFree(xor_out), cudaFree(down_out), cudaFree(block_out);
    }
}

void test_shuffle_modes() {
    const unsigned bx = 8, by = 8, n = bx * by; /* 2-D block: lanes from linear ids */
    int *out = dev_alloc<int>(n * 8);
    TNN_LAUNCH(shfl_modes, 1, dim3(bx, by), 0, 0, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<int> h = to_host(out, n * 8);
    for (int linear = 0; linear < (int)n; linear++) {
        const int *row = &h[linear * 8];
        int lane = linear % 32;
        CHECK(row[0] == (lane & ~7) + 3);
        CHECK(row[1] == (lane >= 2 ? lane - 2 : lane));
        CHECK(row[2] == (lane % 16 + 4 < 16 ? lane + 4 : lane));
        CHECK(row[3] == (lane ^ 5));
        CHECK(row[4] == linear - lane);
        CHECK(row[5] == (lane ^ 1));
        CHECK(row[6] == (lane < 31 ? 4 * (lane + 1) + 1 : 4 * lane + 1));
        CHECK(row[7] == -1); /* all 32 lanes */
    }
    cudaFree(out);

    for (unsigned reps = 0; reps < 2; reps++) { /* both thread orders */
        const unsigned threads = 48, live = 40;
        unsigned *m = dev_alloc<unsigned>(threads * 3);
        TNN_LAUNCH(active_masks, 1, threads, 0, 0, m, live);
        CHECK(cudaGetLastError() == cudaSuccess);
        std::vector<unsigned> hm = to_host(m, threads * 3);
        for (unsigned t = 0; t < threads; t++) {
            CHECK(hm[t * 3] == (t < 32 ? kFull : 0xffffu));
            if (t < live)
                CHECK(hm[t * 3 + 1] == (t < 32 ? kFull : 0xffu));
            if (t < live && t % 2 == 0)
                CHECK(hm[t * 3 + 2] == (t < 32 ? 0x55555555u : 0x55u));
        }
        cudaFree(m);
    }

    float *f = dev_alloc<float>(1);
    TNN_LAUNCH(shfl_missing_lane, 1, 48, 0, 0, f);
    CHECK(cudaGetLastError() == cudaSuccess);
    CHECK(std::isnan(to_host(f, 1)[0]));
    cudaFree(f);
}

void test_early_return() {
    const int n = 40, threads = 64;
    std::vector<float> h = iota(n, 1.0f);
    float *x = to_dev(h), *out = dev_alloc<float>(n);
    TNN_LAUNCH(early_return, 1, threads, threads * sizeof(float), 0, x, out, n);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> got = to_host(out, n);
    for (int t = 0; t < n; t++)
        CHECK(got[t] == 2.0f * h[t]); /* (t-1)'s neighbour is t */
    cudaFree(x), cudaFree(out);
}

void test_syncthreads_or() {
    const unsigned n = 40, threads = 64, blocks = 3;
    int *out = dev_alloc<int>(3 * threads * blocks);
    CHECK(cudaMemset(out, 0xFF, 3 * threads * blocks * sizeof(int)) == cudaSuccess);
    TNN_LAUNCH(sync_or, blocks, threads, 0, 0, out, n);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<int> o = to_host(out, 3 * threads * blocks);
    for (unsigned b = 0; b < blocks; b++)
        for (unsigned t = 0; t < threads; t++) {
            const int *v = &o[3 * (b * threads + t)];
            if (t >= n) {
                CHECK(v[0] == -1 && v[1] == -1 && v[2] == -1);
                continue;
            }
            CHECK(v[0] == (b < 2 ? 1 : 0));
            CHECK(v[1] == 0);
            CHECK(v[2] == 1);
        }
    cudaFree(out);
}

void test_grid_stride_2d() {
    const int w = 50, h = 37;
    float *out = dev_alloc<float>(w * h);
    int *visits = dev_alloc<int>(w * h);
    CHECK(cudaMemset(visits, 0, w * h * sizeof(int)) == cudaSuccess);
    TNN_LAUNCH(grid_stride_2d, dim3(3, 2), dim3(8, 4), 0, 0, out, visits, w, h);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> o = to_host(out, w * h);
    std::vector<int> v = to_host(visits, w * h);
    for (int i = 0; i < w * h; i++) {
        CHECK(o[i] == (float)i);
        CHECK(v[i] == 1);
    }
    cudaFree(out), cudaFree(visits);

    const dim3 grid(3, 2, 2), block(4, 2, 3);
    const unsigned threads = 24, blocks = 12;
    unsigned *c = dev_alloc<unsigned>(threads * blocks);
    TNN_LAUNCH(coordinates, grid, block, 0, 0, c);
    std::vector<unsigned> hc = to_host(c, threads * blocks);
    for (unsigned b = 0; b < blocks; b++)
        for (unsigned t = 0; t < threads; t++) {
            unsigned want = t % 4 | (t / 4 % 2) << 8 | (t / 8) << 16 | (b % 3) << 24 |
                            (b / 3 % 2) << 28 | (b / 6) << 30;
            CHECK(hc[b * threads + t] == want);
        }
    cudaFree(c);
}

void test_atomics() {
    const unsigned blocks = 7, threads = 96, n = blocks * threads;
    Counters init{};
    init.umin = ~0u;
    init.imax = INT32_MIN;
    init.imin = INT32_MAX;
    init.last = -1;
    Counters *c = dev_alloc<Counters>(1);
    CHECK(cudaMemcpy(c, &init, sizeof init, cudaMemcpyHostToDevice) == cudaSuccess);
    TNN_LAUNCH(atomics, blocks, threads, 0, 0, c);
    CHECK(cudaGetLastError() == cudaSuccess);
    Counters got = to_host(c, 1)[0];
    CHECK(got.count == (int)n);
    CHECK(got.half_sum == 0.5f * n);
    CHECK(got.third_sum == 0.25 * n);
    CHECK(got.umax == n - 1 && got.umin == 0);
    CHECK(got.imax == 0 && got.imin == -(int)(n - 1));
    CHECK(got.cas_sum == (unsigned long long)n * (n - 1) / 2);
    CHECK(got.last >= 0 && got.last < (int)n);
    cudaFree(c);
}

void test_launch_errors() {
    int *flag = dev_alloc<int>(1);
    struct Bad {
        dim3 grid, block;
        size_t smem;
    };
    const Bad bad[] = {
        {1, 0, 0},          {1, 1025, 0},         {1, dim3(32, 33), 0}, {1, dim3(1, 1, 65), 0},
        {0, 32, 0},         {dim3(1, 65536), 32, 0}, {dim3(1, 1, 0), 32, 0},
        {1u << 31, 32, 0},  {1, 32, 227 * 1024 + 1},
    };
    long launches = tnn_emu_launch_count();
    for (const Bad &b : bad) {
        CHECK(cudaMemset(flag, 0, sizeof(int)) == cudaSuccess);
        TNN_LAUNCH(set_flag, b.grid, b.block, b.smem, 0, flag);
        CHECK(cudaPeekAtLastError() == cudaErrorInvalidConfiguration);
        CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
        CHECK(cudaGetLastError() == cudaSuccess);
        CHECK(to_host(flag, 1)[0] == 0);
    }
    CHECK(tnn_emu_launch_count() == launches);

    const Bad good[] = {
        {1, 1024, 0}, {1, dim3(1, 1, 64), 0}, {dim3(1, 65535), 1, 0}, {1, 1, 227 * 1024}};
    for (const Bad &g : good) {
        CHECK(cudaMemset(flag, 0, sizeof(int)) == cudaSuccess);
        TNN_LAUNCH(set_flag, g.grid, g.block, g.smem, 0, flag);
        CHECK(cudaGetLastError() == cudaSuccess);
        CHECK(to_host(flag, 1)[0] == 1);
    }
    CHECK(tnn_emu_launch_count() == launches + 4);

    cudaStream_t stream = nullptr, odd = nullptr;
    CHECK(cudaStreamCreate(&stream) == cudaSuccess);
    CHECK(cudaStreamCreateWithFlags(&odd, 0x8) == cudaErrorInvalidValue);
    CHECK(cudaStreamCreateWithFlags(&odd, cudaStreamNonBlocking) == cudaSuccess);
    TNN_LAUNCH(set_flag, 1, 1, 0, stream, flag);
    CHECK(cudaStreamSynchronize(stream) == cudaSuccess);
    CHECK(cudaStreamDestroy(stream) == cudaSuccess);
    CHECK(cudaStreamDestroy(odd) == cudaSuccess);
    CHECK(cudaStreamDestroy(stream) == cudaErrorInvalidResourceHandle);
    TNN_LAUNCH(set_flag, 1, 1, 0, stream, flag);
    CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);

    CHECK(cudaFuncSetAttribute(set_flag, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               100 * 1024) == cudaSuccess);
    CHECK(cudaFuncSetAttribute(set_flag, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               300 * 1024) == cudaErrorInvalidValue);
    cudaGetLastError();
    cudaFree(flag);
}

void test_kernel_faults() {
    int *started = dev_alloc<int>(1);
    float *out = dev_alloc<float>(64);
    std::printf("  (three kernel-failure messages are expected next)\n");
    std::fflush(stdout);
    CHECK(cudaMemset(started, 0, sizeof(int)) == cudaSuccess);
    TNN_LAUNCH(divergent_barriers, 3, 64, 0, 0, started);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
    CHECK(cudaDeviceSynchronize() == cudaSuccess);
    CHECK(to_host(started, 1)[0] == 64); /* the first block only */

    TNN_LAUNCH(mismatched_masks, 1, 32, 0, 0, out);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);
    TNN_LAUNCH(bad_width, 1, 32, 0, 0, out);
    CHECK(cudaGetLastError() == cudaErrorLaunchFailure);

    /* A failed launch leaves nothing behind: the next one runs normally. */
    TNN_LAUNCH(fill_index, 1, 64, 0, 0, out);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> h = to_host(out, 64);
    for (int i = 0; i < 64; i++)
        CHECK(h[i] == (float)i);
    cudaFree(started), cudaFree(out);
}

void test_missing_barrier_shows() {
    const unsigned threads = 64, blocks = 2;
    float *up = dev_alloc<float>(threads * blocks), *down = dev_alloc<float>(threads * blocks);
    TNN_LAUNCH(missing_barrier, blocks, threads, threads * sizeof(float), 0, up, down);
    CHECK(cudaGetLastError() == cudaSuccess);
    std::vector<float> hu = to_host(up, threads * blocks), hd = to_host(down, threads * blocks);
    int nan_up = 0, nan_down = 0;
    for (unsigned i = 0; i < threads * blocks; i++)
        nan_up += std::isnan(hu[i]), nan_down += std::isnan(hd[i]);
    CHECK(nan_up > 0 && nan_down > 0);
    cudaFree(up), cudaFree(down);
}

void test_copies() {
    const size_t n = 100, bytes = n * sizeof(float);
    std::vector<float> h(n, 1.0f), back(n, 0.0f);
    float *d = dev_alloc<float>(n), *d2 = dev_alloc<float>(n);
    CHECK(std::isnan(to_host(d, n)[n / 2])); /* garbage-filled, not zeros */

    long h2d = tnn_emu_copy_count(cudaMemcpyHostToDevice);
    long d2h = tnn_emu_copy_count(cudaMemcpyDeviceToHost);
    long d2d = tnn_emu_copy_count(cudaMemcpyDeviceToDevice);
    long h2h = tnn_emu_copy_count(cudaMemcpyHostToHost);
    CHECK(cudaMemcpy(d, h.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(d + 10, h.data(), bytes - 40, cudaMemcpyHostToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(d2, d, bytes, cudaMemcpyDeviceToDevice) == cudaSuccess);
    CHECK(cudaMemcpy(back.data(), d2, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(back == h);
    CHECK(cudaMemcpy(back.data(), h.data(), bytes, cudaMemcpyHostToHost) == cudaSuccess);
    CHECK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyDefault) == cudaSuccess); /* a D2H */
    CHECK(cudaMemcpy(d, back.data(), 0, cudaMemcpyDeviceToHost) == cudaSuccess); /* 0 bytes */

    /* Host/device mix-ups and overruns. */
    CHECK(cudaMemcpy(h.data(), d, bytes, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(back.data(), h.data(), bytes, cudaMemcpyHostToDevice) ==
          cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, d2, bytes, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, h.data(), bytes + 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d + 1, h.data(), bytes, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(back.data(), h.data(), bytes, cudaMemcpyDeviceToHost) ==
          cudaErrorInvalidValue);
    CHECK(cudaMemcpy(d, h.data(), bytes, cudaMemcpyDeviceToDevice) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyHostToHost) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(nullptr, h.data(), bytes, cudaMemcpyDefault) == cudaErrorInvalidValue);
    CHECK(cudaPeekAtLastError() == cudaErrorInvalidValue);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue);

    CHECK(tnn_emu_copy_count(cudaMemcpyHostToDevice) == h2d + 2);
    CHECK(tnn_emu_copy_count(cudaMemcpyDeviceToHost) == d2h + 2);
    CHECK(tnn_emu_copy_count(cudaMemcpyDeviceToDevice) == d2d + 1);
    CHECK(tnn_emu_copy_count(cudaMemcpyHostToHost) == h2h + 1);
    CHECK(tnn_emu_copy_count(cudaMemcpyDefault) == 0);

    cudaStream_t s = nullptr;
    CHECK(cudaStreamCreate(&s) == cudaSuccess);
    CHECK(cudaMemcpyAsync(d, h.data(), bytes, cudaMemcpyHostToDevice, s) == cudaSuccess);
    CHECK(cudaMemsetAsync(d, 0, bytes, s) == cudaSuccess);
    CHECK(cudaMemset(d, 0, bytes + 1) == cudaErrorInvalidValue);
    CHECK(cudaMemset(h.data(), 0, bytes) == cudaErrorInvalidValue);
    CHECK(to_host(d, n)[n - 1] == 0.0f);
    CHECK(cudaStreamDestroy(s) == cudaSuccess);

    void *pinned = nullptr;
    CHECK(cudaMallocHost(&pinned, bytes) == cudaSuccess);
    CHECK(cudaMemcpy(pinned, d, bytes, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(cudaFreeHost(d) == cudaErrorInvalidValue);
    CHECK(cudaFree(pinned) == cudaErrorInvalidValue);
    CHECK(cudaFreeHost(pinned) == cudaSuccess);

    CHECK(cudaFree(h.data()) == cudaErrorInvalidValue);
    CHECK(cudaFree(d + 1) == cudaErrorInvalidValue);
    CHECK(cudaFree(d) == cudaSuccess);
    CHECK(cudaFree(d) == cudaErrorInvalidValue);
    CHECK(cudaMemcpy(back.data(), d, bytes, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    CHECK(cudaFree(nullptr) == cudaSuccess);
    CHECK(cudaFree(d2) == cudaSuccess);
    cudaGetLastError();
}

void test_mem_limit() {
    size_t base = tnn_emu_mem_in_use();
    tnn_emu_set_mem_limit(base + 1000);
    void *a = nullptr, *b = reinterpret_cast<void *>(1);
    CHECK(cudaMalloc(&a, 600) == cudaSuccess);
    CHECK(tnn_emu_mem_in_use() == base + 600);
    CHECK(cudaMalloc(&b, 500) == cudaErrorMemoryAllocation && b == nullptr);
    CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
    size_t free_bytes = 0, total = 0;
    CHECK(cudaMemGetInfo(&free_bytes, &total) == cudaSuccess);
    CHECK(total == base + 1000 && free_bytes == 400);
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.totalGlobalMem == total);
    CHECK(cudaFree(a) == cudaSuccess);
    CHECK(tnn_emu_mem_in_use() == base);
    CHECK(cudaMalloc(&b, 1000) == cudaSuccess);
    CHECK(cudaFree(b) == cudaSuccess);
    tnn_emu_set_mem_limit(0);
    CHECK(cudaMalloc(&b, size_t(1) << 20) == cudaSuccess);
    CHECK(cudaFree(b) == cudaSuccess);
}

void test_devices() {
    int count = -1, dev = -1, version = 0;
    CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count == 1);
    CHECK(cudaSetDevice(0) == cudaSuccess);
    CHECK(cudaGetDevice(&dev) == cudaSuccess && dev == 0);
    CHECK(cudaSetDevice(1) == cudaErrorInvalidDevice);
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0) == cudaSuccess);
    CHECK(prop.warpSize == 32 && prop.sharedMemPerBlockOptin == 227 * 1024 && prop.major >= 7);
    CHECK(cudaDriverGetVersion(&version) == cudaSuccess && version >= 12000);
    CHECK(cudaRuntimeGetVersion(&version) == cudaSuccess && version >= 12000);
    cudaGetLastError();

    tnn_emu_set_device_count(0);
    long launches = tnn_emu_launch_count();
    void *p = reinterpret_cast<void *>(1);
    cudaStream_t s = nullptr;
    CHECK(cudaGetDeviceCount(&count) == cudaErrorNoDevice && count == 0);
    CHECK(cudaSetDevice(0) == cudaErrorNoDevice);
    CHECK(cudaGetDeviceProperties(&prop, 0) == cudaErrorNoDevice);
    CHECK(cudaMalloc(&p, 16) == cudaErrorNoDevice && p == nullptr);
    CHECK(cudaStreamCreate(&s) == cudaErrorNoDevice);
    TNN_LAUNCH(fill_index, 1, 1, 0, 0, nullptr);
    CHECK(cudaGetLastError() == cudaErrorNoDevice);
    CHECK(tnn_emu_launch_count() == launches);
    tnn_emu_set_device_count(1);
    CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count == 1);

    CHECK(std::string_view(cudaGetErrorName(cudaErrorNoDevice)) == "cudaErrorNoDevice");
    CHECK(std::string_view(cudaGetErrorString(cudaSuccess)) == "no error");
}

void test_math_and_types() {
    CHECK(rsqrtf(4.0f) == 0.5f);
    CHECK(__saturatef(-1.0f) == 0.0f && __saturatef(2.0f) == 1.0f && __saturatef(NAN) == 0.0f);
    CHECK(__saturatef(0.25f) == 0.25f);
    CHECK(__float_as_int(1.0f) == 0x3f800000 && __int_as_float(0x40000000) == 2.0f);
    CHECK(__float_as_uint(-0.0f) == 0x80000000u && __uint_as_float(0x3f800000u) == 1.0f);
    CHECK(__fdividef(1.0f, 4.0f) == 0.25f && __fmaf_rn(2.0f, 3.0f, 1.0f) == 7.0f);
    CHECK(std::fabs(__expf(1.0f) - 2.7182817f) < 1e-6f && std::fabs(__logf(2.0f) - 0.6931472f) < 1e-6f);
    float v = 3.5f;
    CHECK(__ldg(&v) == 3.5f);
    CHECK(min(3, 5u) == 3u && max(-1.0f, 2) == 2.0f && min(7LL, 2) == 2LL);
    CHECK(max(NAN, 1.0f) == 1.0f && min(2.0, 1.5f) == 1.5);
    CHECK(std::min(2, 3) == 2); /* std:: untouched */
    dim3 a(5), b = uint3{2, 3, 4};
    CHECK(a.x == 5 && a.y == 1 && a.z == 1 && b.x == 2 && b.y == 3 && b.z == 4);
}

/* Two host threads launch at once: blocks still run one at a time, so the
 * kernel's static shared memory is not shared between them. */
void test_host_threads() {
    const unsigned threads = 128, blocks = 4, n = threads * blocks;
    std::vector<float> h = iota(n, 1.0f);
    float want[blocks] = {};
    for (unsigned i = 0; i < n; i++)
        want[i / threads] += h[i];
    float *x = to_dev(h);
    auto worker = [&](float *out, bool *ok) {
        *ok = true;
        for (int rep = 0; rep < 20; rep++) {
            TNN_LAUNCH(block_sum_static, blocks, threads, 0, 0, x, out, (int)n);
            float got[blocks];
            *ok &= cudaGetLastError() == cudaSuccess;
            *ok &= cudaMemcpy(got, out, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess;
            for (unsigned b = 0; b < blocks; b++)
                *ok &= got[b] == want[b];
        }
    };
    float *out1 = dev_alloc<float>(blocks), *out2 = dev_alloc<float>(blocks);
    bool ok1 = false, ok2 = false;
    std::thread t1(worker, out1, &ok1), t2(worker, out2, &ok2);
    t1.join(), t2.join();
    CHECK(ok1 && ok2);
    cudaFree(x), cudaFree(out1), cudaFree(out2);
}

__global__ void reduce_to(const float *x, float *out) {
    float v = block_reduce(x[threadIdx.x]);
    if (threadIdx.x == 0)
        out[blockIdx.x] = v;
}

template <class Launch> double us_per_launch(int reps, Launch launch) {
    launch();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; i++)
        launch();
    auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::micro>(t1 - t0).count() / reps;
}

/* Timings only: informative, they depend on the machine and sanitizers. */
void test_launch_cost() {
    float *x = dev_alloc<float>(1024), *out = dev_alloc<float>(1024);
    CHECK(cudaMemset(x, 0, 1024 * sizeof(float)) == cudaSuccess);
    double plain = us_per_launch(200, [&] { TNN_LAUNCH(fill_index, 1, 256, 0, 0, out); });
    double reduce256 = us_per_launch(200, [&] { TNN_LAUNCH(reduce_to, 1, 256, 0, 0, x, out); });
    double reduce1024 = us_per_launch(50, [&] { TNN_LAUNCH(reduce_to, 1, 1024, 0, 0, x, out); });
    double grid64 = us_per_launch(20, [&] { TNN_LAUNCH(reduce_to, 64, 256, 0, 0, x, out); });
    CHECK(cudaGetLastError() == cudaSuccess);
    std::printf("  one block of 256 threads: %.1f us without barriers, %.1f us with a block "
                "reduction (1024 threads: %.1f us); 64 such blocks: %.1f us\n",
                plain, reduce256, reduce1024, grid64);
    cudaFree(x), cudaFree(out);
}

} // namespace

int main() {
    run("block sum in shared memory (static and dynamic)", test_block_sum);
    run("warp shuffle reductions, blockDim 256 and 48", test_warp_reductions);
    run("shuffle modes, widths, 64-bit values, missing lanes, __activemask", test_shuffle_modes);
    run("early return before barriers", test_early_return);
    run("__syncthreads_or, with returned threads", test_syncthreads_or);
    run("grid-stride loops over a 2-D grid, 3-D indices", test_grid_stride_2d);
    run("atomics", test_atomics);
    run("launch configuration errors, streams", test_launch_errors);
    run("kernel faults: deadlock, masks, width", test_kernel_faults);
    run("a missing barrier reads garbage", test_missing_barrier_shows);
    run("copies: pointer sides, ranges, counts", test_copies);
    run("memory limit", test_mem_limit);
    run("device count, properties, no device", test_devices);
    run("math intrinsics, min/max, dim3", test_math_and_types);
    run("two host threads launching", test_host_threads);
    run("launch cost", test_launch_cost);
    std::printf("%s: %d failed checks\n", g_failures == 0 ? "ALL PASS" : "FAILED", g_failures);
    return g_failures == 0 ? 0 : 1;
}
