// Lets the host C++ compiler build the unchanged .cu kernel files, and runs
// a kernel launch as CUDA would: every (block, thread) of the grid calls the
// kernel once, blocks spread over OpenMP threads. Kernels must not use shared
// memory, __syncthreads or warp intrinsics, which this cannot emulate.
//
// Built with CUDCN_RACECHECK, it checks each launch for what would be a race
// among a GPU's threads, which run at once in any order: it runs the threads
// one by one, records which thread read, stored or atomically updated each
// address (the kernels' load, store and atomic_add), and after the launch
// reports an address two threads store to, one stored or atomically updated
// by a thread and read by another, or one both stored and atomically updated
// (cudcn_racecheck_report, called by the CPU executor after each launch).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#ifdef CUDCN_RACECHECK
#include <unordered_map>
#endif

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

// The 16-bit storage types of cuda_fp16.h and cuda_bf16.h, with the
// conversions the kernels call, bit for bit as CUDA rounds: round to nearest
// even, subnormals kept, overflow to infinity. A NaN becomes CUDA's canonical
// NaN (0x7fff) on the way in and keeps its bits on the way out.
struct __half {
  std::uint16_t bits;
};
struct __nv_bfloat16 {
  std::uint16_t bits;
};

namespace cudcn_cpu {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Drops the low `shift` bits of `value`, rounding to nearest, ties to even.
inline std::uint32_t round_shift_even(std::uint32_t value, int shift) {
  const std::uint32_t kept = value >> shift;
  const std::uint32_t rest = value & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1);
  return kept + (rest > half || (rest == half && (kept & 1u)) ? 1u : 0u);
}

}  // namespace cudcn_cpu

inline float __half2float(__half h) {
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1fu) return cudcn_cpu::bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = float(mantissa) * 5.9604644775390625e-08f;
    return cudcn_cpu::bits_float(sign | cudcn_cpu::float_bits(magnitude));
  }
  return cudcn_cpu::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline __half __float2half_rn(float f) {
  const std::uint32_t u = cudcn_cpu::float_bits(f);
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
  const std::uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return __half{0x7fffu};                // NaN
  if (magnitude >= 0x477ff000u) return __half{std::uint16_t(sign | 0x7c00u)};  // >= 65520: inf
  if (magnitude >= 0x38800000u) {  // a normal half: rebias, round 13 bits off
    const std::uint32_t rebiased = magnitude - ((127u - 15u) << 23);
    return __half{std::uint16_t(sign | cudcn_cpu::round_shift_even(rebiased, 13))};
  }
  if (magnitude <= 0x33000000u) return __half{sign};  // <= 2^-25 rounds to zero
  // A subnormal half: the significand with its implicit bit, in units of 2^-24.
  const std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  const int shift = 126 - int(magnitude >> 23);  // 14 .. 24
  return __half{std::uint16_t(sign | cudcn_cpu::round_shift_even(significand, shift))};
}

inline float __bfloat162float(__nv_bfloat16 b) {
  return cudcn_cpu::bits_float(std::uint32_t(b.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const std::uint32_t u = cudcn_cpu::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};  // NaN
  return __nv_bfloat16{std::uint16_t(cudcn_cpu::round_shift_even(u, 16))};
}

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

#ifdef CUDCN_RACECHECK
namespace cudcn_cpu {
namespace race {

enum Kind { kRead = 0, kStore = 1, kAtomic = 2 };

// The first two distinct threads (flattened block * blockDim + thread) that
// accessed an address, per kind of access; -1 for none.
struct Record {
  long long threads[3][2] = {{-1, -1}, {-1, -1}, {-1, -1}};
};

struct Conflict {
  int kind = 0;  // 0 none, 1 two stores, 2 a read of what another thread writes, 3 store and atomic
  const void* address = nullptr;
  long long first = -1, second = -1;
};

inline std::unordered_map<const void*, Record>& records() {
  static std::unordered_map<const void*, Record> table;
  return table;
}
inline long long& current_thread() {
  static long long thread = -1;
  return thread;
}
inline Conflict& last_conflict() {
  static Conflict conflict;
  return conflict;
}

inline void record(const void* address, Kind kind) {
  long long* seen = records()[address].threads[kind];
  const long long thread = current_thread();
  if (seen[0] == -1) {
    seen[0] = thread;
  } else if (seen[0] != thread && seen[1] == -1) {
    seen[1] = thread;
  }
}

// The conflict of one address, if any: a read by a thread other than one of
// its writers (stores and atomic updates), two storing threads, or stores
// and atomic updates of one address.
inline Conflict conflict_at(const void* address, const Record& r) {
  const long long* reads = r.threads[kRead];
  const long long* stores = r.threads[kStore];
  const long long* atomics = r.threads[kAtomic];
  if (stores[1] != -1) return {1, address, stores[0], stores[1]};
  if (stores[0] != -1 && atomics[0] != -1) return {3, address, stores[0], atomics[0]};
  const long long writers[4] = {stores[0], stores[1], atomics[0], atomics[1]};
  for (int i = 0; i < 2; ++i) {
    if (reads[i] == -1) continue;
    for (int j = 0; j < 4; ++j) {
      if (writers[j] != -1 && writers[j] != reads[i]) return {2, address, reads[i], writers[j]};
    }
  }
  return {};
}

// The conflict at the lowest address, so that reports do not depend on the
// table's order.
inline void check() {
  Conflict found;
  for (const auto& entry : records()) {
    const Conflict c = conflict_at(entry.first, entry.second);
    if (c.kind && (!found.kind || c.address < found.address)) found = c;
  }
  last_conflict() = found;
  records().clear();
}

}  // namespace race
}  // namespace cudcn_cpu

#define CUDCN_RECORD_READ(p) ::cudcn_cpu::race::record((p), ::cudcn_cpu::race::kRead)
#define CUDCN_RECORD_WRITE(p) ::cudcn_cpu::race::record((p), ::cudcn_cpu::race::kStore)
#define CUDCN_RECORD_ATOMIC(p) ::cudcn_cpu::race::record((p), ::cudcn_cpu::race::kAtomic)
#endif

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
#ifdef CUDCN_RACECHECK
  gridDim = dim3(grid);
  blockDim = dim3(block);
  for (long long t = 0; t < total; ++t) {
    blockIdx.x = static_cast<unsigned int>(t / block);
    threadIdx.x = static_cast<unsigned int>(t % block);
    race::current_thread() = t;
    kernel(*static_cast<std::remove_reference_t<Args>*>(params[Is])...);
  }
  race::check();
  return;
#endif
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
