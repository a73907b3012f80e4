/* cuda_compat.h - what lets the CUDA backend's sources build two ways: with
 * nvcc for a real GPU, or with g++ against the CPU emulator (cuda_emu.h), so
 * the kernels' indexing, shared memory and reductions are tested on machines
 * without a GPU. Kernel code launches through TNN_LAUNCH and takes dynamic
 * shared memory through TNN_DYN_SMEM, never the <<<>>> syntax directly.
 */
#ifndef TNN_CUDA_COMPAT_H
#define TNN_CUDA_COMPAT_H

/* A comma inside a macro argument (template arguments of a kernel). */
#define COMMA ,
/* Loop unrolling for nvcc (the emulator's compiler ignores it). */
#define CU_PRAGMA(x) _Pragma(#x)
#ifdef __CUDACC__
#define CU_UNROLL(n) CU_PRAGMA(unroll n)
#else
#define CU_UNROLL(n)
#endif

#ifdef __CUDACC__
#include <cuda_runtime.h>
#define TNN_LAUNCH(k, grid, block, smem, stream, ...)                                         \
    k<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#define TNN_DYN_SMEM(type, name)                                                              \
    extern __shared__ unsigned char tnn__smem_raw[];                                          \
    type *name = reinterpret_cast<type *>(tnn__smem_raw)
#define TNN_CUDA_EMULATED 0
#else
#include "cuda_emu.h"

#include <tuple>
#include <type_traits>
#include <utility>

/* As on a GPU, the arguments are evaluated and converted to the kernel's
 * parameter types at the launch: a launch recorded into a graph keeps those
 * values, not the expressions (which may name dead locals by then). */
template <class... P, class... A>
void tnn_emu_launch_args(void (*k)(P...), dim3 grid, dim3 block, size_t smem,
                         cudaStream_t stream, A &&...a) {
    std::tuple<std::decay_t<P>...> args(std::forward<A>(a)...);
    tnn_emu_launch(grid, block, smem, stream, [k, args] { std::apply(k, args); });
}
#define TNN_LAUNCH(k, grid, block, smem, stream, ...)                                         \
    tnn_emu_launch_args(k, dim3(grid), dim3(block), (size_t)(smem), (stream), __VA_ARGS__)
#define TNN_DYN_SMEM(type, name) type *name = reinterpret_cast<type *>(tnn_emu_dyn_smem())
#define TNN_CUDA_EMULATED 1
#endif

#endif
