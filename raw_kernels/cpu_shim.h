// Lets the host C++ compiler build the unchanged .cu kernel files, and runs
// a kernel launch as CUDA would: every (block, thread) of the grid calls the
// kernel once, blocks spread over OpenMP threads. Kernels must not use shared
// memory, __syncthreads or warp intrinsics, which this cannot emulate.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>
#include <utility>

using std::ceil;
using std::floor;
using std::min;
using std::round;

#define __global__
#define __host__
#define __device__ inline
#define __forceinline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#define CUDCN_DEVICE inline

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Per OpenMP thread, as each CUDA thread sees its own. initial-exec: a direct
// thread-pointer access instead of a __tls_get_addr call per read (the
// default model in a shared library), which cost ~50 ns per work item.
#define CUDCN_TLS thread_local __attribute__((tls_model("initial-exec")))
inline CUDCN_TLS dim3 gridDim, blockDim, blockIdx, threadIdx;

template <typename T>
inline T atomicAdd(T* address, T value) {
  T old;
#pragma omp atomic capture
  {
    old = *address;
    *address += value;
  }
  return old;
}

namespace cudcn_cpu {

// `params` follows cuLaunchKernel's convention: params[i] points at the value
// of the kernel's i-th argument. OpenMP spreads the flattened (block, thread)
// space, not just the blocks: a kernel over few items (one thread per plane)
// may be a single block. That is faithful because the kernels share nothing
// between the threads of a block (no shared memory, no barriers).
template <typename... Args, std::size_t... Is>
void launch(void (*kernel)(Args...), unsigned int grid, unsigned int block, void** params,
            std::index_sequence<Is...>) {
  const long long total = static_cast<long long>(grid) * block;
#pragma omp parallel
  {
    gridDim = dim3(grid);
    blockDim = dim3(block);
#pragma omp for schedule(static)
    for (long long t = 0; t < total; ++t) {
      blockIdx.x = static_cast<unsigned int>(t / block);
      threadIdx.x = static_cast<unsigned int>(t % block);
      kernel(*static_cast<std::remove_reference_t<Args>*>(params[Is])...);
    }
  }
}

template <typename... Args>
void launch(void (*kernel)(Args...), unsigned int grid, unsigned int block, void** params) {
  launch(kernel, grid, block, params, std::index_sequence_for<Args...>{});
}

}  // namespace cudcn_cpu
