/* cuda_emu.h - a CPU emulator of the part of CUDA the tinynn backend uses, so
 * the backend's .cu sources build with g++ (-std=c++20) and their kernels run
 * on machines without a GPU: indexing, shared memory, barriers and warp
 * shuffles are exercised for real, device memory is host memory.
 *
 * Execution model (what kernel code may rely on, and what it must not):
 *  - A launch runs to completion before tnn_emu_launch returns; streams are
 *    only validated. Blocks run one after another, in the whole process, so a
 *    function-static array is exactly one block's shared memory: __shared__ is
 *    `static`. Unlike a GPU, static shared memory keeps the previous block's
 *    contents; dynamic shared memory is refilled with 0xFF bytes per block.
 *  - A block's threads are fibers on the launching thread, switched only at
 *    __syncthreads and warp intrinsics. They start in linear order in one
 *    block and in reverse order in the next (the parity also alternates from
 *    launch to launch), so a missing barrier shows up as a read of unwritten
 *    (0xFF: NaN) data in one of two blocks.
 *  - Returning drops a thread out of the block's and its warp's barriers.
 *    A warp intrinsic waits for every lane of `mask` that has not returned;
 *    all lanes in a round must pass the same mask. A shuffle that reads a lane
 *    that does not exist, has returned or is outside the round gets 0xFF
 *    bytes. Barriers that can never complete (divergent __syncthreads, lanes
 *    in different warp intrinsics) fail the launch with cudaErrorLaunchFailure
 *    and a message on stderr instead of hanging.
 *  - __activemask() waits for the warp's lanes that have not returned: in
 *    converged code it is all of them; in divergent code, the lanes that
 *    reach it before the rest wait at another barrier or return.
 *  - Device intrinsics work only inside a kernel run by tnn_emu_launch.
 *    Kernel code must not be noexcept (a failed block unwinds its threads
 *    with a C++ exception) and must not launch kernels.
 */
#ifndef TNN_CUDA_EMU_H
#define TNN_CUDA_EMU_H

#ifndef __cplusplus
#error "cuda_emu.h is C++: compile the .cu sources as C++20"
#endif

#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <type_traits>

/* ------------------------------------------------------------------------ */
/* Qualifiers and built-in variables                                        */
/* ------------------------------------------------------------------------ */

#define __global__
#define __device__
#define __host__
/* `inline`, not nothing: CUDA headers define __forceinline__ functions in
 * headers included by several .cu files. */
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

/* Vector types with CUDA's alignment (a misaligned vector load faults on a
 * GPU; here the sanitizer build's alignment check catches it). */
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};

/* Set for each emulated thread; constinit lets g++ read them without a TLS
 * wrapper call. */
extern thread_local constinit uint3 threadIdx;
extern thread_local constinit uint3 blockIdx;
extern thread_local constinit dim3 blockDim;
extern thread_local constinit dim3 gridDim;
inline constexpr int warpSize = 32;

/* ------------------------------------------------------------------------ */
/* Runtime API: CUDA's names, values and signatures                         */
/* ------------------------------------------------------------------------ */

enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorLaunchFailure = 719,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4, /* direction inferred from the pointers */
};

enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

typedef struct CUstream_st *cudaStream_t;
inline constexpr unsigned cudaStreamDefault = 0x00;
inline constexpr unsigned cudaStreamNonBlocking = 0x01;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int major, minor;
    int multiProcessorCount;
    int warpSize;
    int maxThreadsPerBlock;
};

/* The last error of the calling host thread, kept until read. */
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char *cudaGetErrorName(cudaError_t error);
const char *cudaGetErrorString(cudaError_t error);

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaRuntimeGetVersion(int *version);

cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMallocHost(void **ptr, size_t size);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void *ptr, int value, size_t count);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t count, cudaStream_t stream = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

/* Stream capture and graphs. While a stream captures, launches and async
 * copies/memsets on it are recorded instead of run (a launch's arguments are
 * copied: TNN_LAUNCH captures by value); a graph launch replays them in
 * order. As on a GPU, synchronizing, cudaMalloc or cudaFree during a capture
 * fail with cudaErrorStreamCaptureUnsupported and invalidate the capture, so
 * cudaStreamEndCapture then fails with cudaErrorStreamCaptureInvalidated. */
typedef struct CUgraph_st *cudaGraph_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
};
cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph,
                                 unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

/* Checks the attribute and value; launches accept up to 227 KiB of dynamic
 * shared memory anyway, as if every kernel had been raised. */
cudaError_t cudaFuncSetAttribute(const void *func, cudaFuncAttribute attr, int value);
template <class F> cudaError_t cudaFuncSetAttribute(F *func, cudaFuncAttribute attr, int value) {
    return cudaFuncSetAttribute(reinterpret_cast<const void *>(func), attr, value);
}

/* ------------------------------------------------------------------------ */
/* Device intrinsics                                                        */
/* ------------------------------------------------------------------------ */

void __syncthreads();
/* __syncthreads that returns, in every thread, whether any thread of the
 * block passed a nonzero predicate (threads that returned pass nothing). */
int __syncthreads_or(int predicate);
void __syncwarp(unsigned mask = 0xffffffffu);
unsigned __activemask();

/* One shuffle round of the calling lane: `bits` is its value, the result the
 * value of the lane it reads (see TNN_EMU_SHFL_*), 0xFF bytes if none. */
enum tnn_emu_shfl_mode {
    TNN_EMU_SHFL_IDX = 0,
    TNN_EMU_SHFL_UP = 1,
    TNN_EMU_SHFL_DOWN = 2,
    TNN_EMU_SHFL_XOR = 3,
};
unsigned long long tnn_emu_shfl(tnn_emu_shfl_mode mode, unsigned mask, unsigned long long bits,
                                int arg, int width);

template <class T>
concept tnn_emu_shfl_value = std::is_trivially_copyable_v<T> && sizeof(T) <= 8;

template <tnn_emu_shfl_value T>
T tnn_emu_shfl_as(tnn_emu_shfl_mode mode, unsigned mask, T value, int arg, int width) {
    unsigned long long bits = 0;
    std::memcpy(&bits, &value, sizeof value);
    bits = tnn_emu_shfl(mode, mask, bits, arg, width);
    std::memcpy(&value, &bits, sizeof value);
    return value;
}
template <tnn_emu_shfl_value T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize) {
    return tnn_emu_shfl_as(TNN_EMU_SHFL_IDX, mask, value, src_lane, width);
}
template <tnn_emu_shfl_value T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return tnn_emu_shfl_as(TNN_EMU_SHFL_UP, mask, value, (int)delta, width);
}
template <tnn_emu_shfl_value T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
    return tnn_emu_shfl_as(TNN_EMU_SHFL_DOWN, mask, value, (int)delta, width);
}
template <tnn_emu_shfl_value T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
    return tnn_emu_shfl_as(TNN_EMU_SHFL_XOR, mask, value, lane_mask, width);
}

/* Atomic against every other emulated thread (and host thread). */
float atomicAdd(float *address, float value);
double atomicAdd(double *address, double value);
int atomicAdd(int *address, int value);
unsigned atomicAdd(unsigned *address, unsigned value);
unsigned long long atomicAdd(unsigned long long *address, unsigned long long value);
int atomicMax(int *address, int value);
unsigned atomicMax(unsigned *address, unsigned value);
int atomicMin(int *address, int value);
unsigned atomicMin(unsigned *address, unsigned value);
int atomicCAS(int *address, int compare, int value);
unsigned atomicCAS(unsigned *address, unsigned compare, unsigned value);
unsigned long long atomicCAS(unsigned long long *address, unsigned long long compare,
                             unsigned long long value);
int atomicExch(int *address, int value);
unsigned atomicExch(unsigned *address, unsigned value);
unsigned long long atomicExch(unsigned long long *address, unsigned long long value);
float atomicExch(float *address, float value);

/* Math that device code has and g++ lacks. glibc's <math.h> already declares
 * __expf and __logf (extern "C", without exporting them) and newer ones
 * rsqrtf, so these three match that declaration exactly. */
extern "C" float rsqrtf(float x) noexcept;
extern "C" float __expf(float x) noexcept;
extern "C" float __logf(float x) noexcept;
float __fdividef(float x, float y);
float __saturatef(float x);
float __fmaf_rn(float x, float y, float z);
int __float_as_int(float x);
float __int_as_float(int x);
unsigned __float_as_uint(float x);
float __uint_as_float(unsigned x);

template <class T> T __ldg(const T *address) { return *address; }
template <class T> T __ldcg(const T *address) { return *address; }
/* Blocks run one after another: every write is already visible. */
inline void __threadfence() {}

/* CUDA's min/max of any two arithmetic types: the common type, floats as
 * fmin/fmax. A template, so std::min stays the better match for std:: calls. */
template <class A, class B>
    requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
std::common_type_t<A, B> min(A a, B b) {
    using T = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<T>)
        return std::fmin(T(a), T(b));
    else
        return T(a) < T(b) ? T(a) : T(b);
}
template <class A, class B>
    requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
std::common_type_t<A, B> max(A a, B b) {
    using T = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<T>)
        return std::fmax(T(a), T(b));
    else
        return T(a) < T(b) ? T(b) : T(a);
}

/* ------------------------------------------------------------------------ */
/* Launch and test hooks                                                    */
/* ------------------------------------------------------------------------ */

/* Runs `body` once per thread of every block, as <<<grid, block, smem,
 * stream>>> would run the kernel it calls. A configuration a GPU would reject
 * (block threads outside 1..1024, block.x/y > 1024, block.z > 64, grid.x 0 or
 * > 2^31-1, grid.y/z outside 1..65535, smem > 227 KiB) or an unknown stream
 * runs nothing and sets the last error, as a failed block does. */
void tnn_emu_launch(dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                    const std::function<void()> &body);
/* The running block's dynamic shared memory: the launch's smem bytes,
 * 16-byte aligned, 0xFF-filled at the start of each block. */
void *tnn_emu_dyn_smem();

/* Devices the runtime reports (default 1); 0 makes cudaGetDeviceCount fail
 * with cudaErrorNoDevice and cudaMalloc, streams and launches fail too. */
void tnn_emu_set_device_count(int n);
/* Bytes of live cudaMalloc allocations past which cudaMalloc fails with
 * cudaErrorMemoryAllocation; 0 (the default) is no limit. */
void tnn_emu_set_mem_limit(size_t bytes);
size_t tnn_emu_mem_in_use();
/* Process totals since start: launches that ran, and copies of more than 0
 * bytes that succeeded, by direction (cudaMemcpyDefault ones counted under
 * the direction their pointers gave; -1 for a kind out of range). */
long tnn_emu_launch_count();
/* Graph launches that ran (each replays its recorded launches, counted
 * above too). */
long tnn_emu_graph_launch_count();
long tnn_emu_copy_count(cudaMemcpyKind kind);

#endif
