// Lets the host C++ compiler build the unchanged .cu kernel files, and runs
// a kernel launch as CUDA would: every (block, thread) of the grid calls the
// kernel once, spread over a small pool of worker threads of its own. Kernels
// must not use shared memory, __syncthreads or warp intrinsics, which this
// cannot emulate.
//
// The pool is cudcn's own (workers spin for 200 microseconds after a launch,
// then sleep until the next), or, where torch is in the process, the OpenMP
// runtime's threads (built with -fopenmp; the executor decides, see
// cudcn/_executors/cpu.py): torch's CPU ops run on those, which spin for
// milliseconds after each op, and a second pool would take turns with them on
// the cores. The GEMMs between kernels run on the same pool (run_gemm_tiles).
//
// Built with CUDCN_RACECHECK, it checks each launch for what would be a race
// among a GPU's threads, which run at once in any order: it runs the threads
// one by one, records which thread read, stored or atomically updated each
// address (the kernels' load, store and atomic_add), and after the launch
// reports an address two threads store to, one stored or atomically updated
// by a thread and read by another, or one both stored and atomically updated
// (cudcn_racecheck_report, called by the CPU executor after each launch).
#pragma once

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <pthread.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <sched.h>
#include <unistd.h>
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

// Per worker thread, as each CUDA thread sees its own. initial-exec: a direct
// thread-pointer access instead of a __tls_get_addr call per read (the
// default model in a shared library), which cost ~50 ns per work item.
#define CUDCN_TLS thread_local __attribute__((tls_model("initial-exec")))
inline CUDCN_TLS dim3 gridDim, blockDim, blockIdx, threadIdx;

// The items [cudcn_first_item, cudcn_end_item) of a launch that a worker runs
// in one call of the kernel: on the host, CUDCN_KERNEL_LOOP walks that range
// (cudcn_common.cuh), so a kernel's prologue (unpacking its arguments, the
// structs it builds from them) runs once per range, not once per item, which
// cost a small kernel's items more than their work. The race check calls the
// kernel once per GPU thread instead, as a GPU would.
inline CUDCN_TLS long long cudcn_first_item, cudcn_end_item;

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

// Where the compiler has _Float16, finite values and infinities convert
// through it: one instruction where the target has one (F16C, which
// -march=native finds on x86), else the compiler's library. The float16
// gather at N=2, C=64, 56x56 took 21.8 ms with the bit manipulations below,
// 5.1 ms so (float32: 0.6). NaNs keep their own path: the hardware quiets a
// signalling NaN's payload, and rounds a NaN's bits, where CUDA does neither.
#if defined(__FLT16_MAX__)
#define CUDCN_CPU_FLOAT16 1
#endif

inline float __half2float(__half h) {
  const std::uint32_t sign = std::uint32_t(h.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const std::uint32_t mantissa = h.bits & 0x3ffu;
  const float special = cudcn_cpu::bits_float(sign | 0x7f800000u | (mantissa << 13));
#ifdef CUDCN_CPU_FLOAT16
  _Float16 value;
  std::memcpy(&value, &h.bits, sizeof value);
  // Both computed, one chosen: a select the compiler can vectorize.
  return exponent == 0x1fu ? special : static_cast<float>(value);
#else
  if (exponent == 0x1fu) return special;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = float(mantissa) * 5.9604644775390625e-08f;
    return cudcn_cpu::bits_float(sign | cudcn_cpu::float_bits(magnitude));
  }
  return cudcn_cpu::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

inline __half __float2half_rn(float f) {
  const std::uint32_t u = cudcn_cpu::float_bits(f);
  const std::uint32_t magnitude = u & 0x7fffffffu;
#ifdef CUDCN_CPU_FLOAT16
  // Round to nearest even (the default rounding mode), overflow to infinity;
  // a NaN gives CUDA's canonical one.
  const _Float16 value = static_cast<_Float16>(f);
  std::uint16_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return __half{magnitude > 0x7f800000u ? std::uint16_t(0x7fffu) : bits};
#else
  const std::uint16_t sign = std::uint16_t((u >> 16) & 0x8000u);
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
#endif
}

inline float __bfloat162float(__nv_bfloat16 b) {
  return cudcn_cpu::bits_float(std::uint32_t(b.bits) << 16);
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const std::uint32_t u = cudcn_cpu::float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fffu};  // NaN
  return __nv_bfloat16{std::uint16_t(cudcn_cpu::round_shift_even(u, 16))};
}

// CUDA's atomicAdd for float and double: a compare-and-swap loop on the bits.
template <typename T>
inline T atomicAdd(T* address, T value) {
  using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static_assert(sizeof(T) == sizeof(Bits), "atomicAdd on 32- or 64-bit values");
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T old;
    std::memcpy(&old, &expected, sizeof old);
    const T sum = old + value;
    Bits desired;
    std::memcpy(&desired, &sum, sizeof desired);
    if (__atomic_compare_exchange_n(bits, &expected, desired, true, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED))
      return old;
  }
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

// The worker threads. run() splits [0, total) into one contiguous part per
// thread (the caller takes part 0) and returns when all are done. A thread
// works through its own part first, in order, as a static OpenMP schedule
// would, then takes what is left of the others': a thread that starts late
// (a virtual CPU the host is slow to wake, a core shared with another
// process's or library's spinning thread) no longer holds up the launch.
// One launch at a time: a second caller thread meanwhile runs its launch
// alone. Threads: $OMP_NUM_THREADS, else the CPUs this process may use. The
// pool is never destroyed (its threads end with the process) and is started
// anew in a forked child, which has none.
class Pool {
 public:
  using Body = void (*)(void* context, long long begin, long long end);

  static Pool& instance() {
    static Pool* pool = new Pool();
    return *pool;
  }

  int threads() const { return threads_; }

  // Whether launches run on the OpenMP runtime instead (set by the executor).
  static std::atomic<int>& openmp() {
    static std::atomic<int> flag{0};
    return flag;
  }

  void run(long long total, Body body, void* context) {
#ifdef _OPENMP
    if (openmp()) {
      // Parts for the threads asked for; a team that comes smaller takes them all.
      const int parts = omp_get_max_threads();
      std::unique_ptr<Range[]> ranges(new Range[parts]);
      split(ranges.get(), parts, total);
#pragma omp parallel num_threads(parts)
      take_parts(ranges.get(), parts, omp_get_thread_num(), grain(total, parts), body, context);
      return;
    }
#endif
    std::unique_lock<std::mutex> launch(launch_, std::try_to_lock);
    if (!launch.owns_lock() || threads_ == 1 || total < 2) {
      body(context, 0, total);
      return;
    }
    dispatch(total, body, context);
  }

 private:
  Pool() : threads_(count_threads()) { start(); }

  // Publishes a launch to the workers, takes part 0 and waits for the rest.
  // The caller holds launch_.
  void dispatch(long long total, Body body, void* context) {
    if (pid_ != getpid()) restart();
    body_ = body;
    context_ = context;
    total_ = total;
    grain_ = grain(total, threads_);
    split(ranges_.get(), threads_, total);
    remaining_.store(threads_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    part(0);
    while (remaining_.load(std::memory_order_acquire) != 0) relax();
  }

  static int count_threads() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
      const int n = std::atoi(env);
      if (n >= 1) return n;
    }
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof cpus, &cpus) == 0) return CPU_COUNT(&cpus) > 0 ? CPU_COUNT(&cpus) : 1;
    const unsigned n = std::thread::hardware_concurrency();
    return n ? static_cast<int>(n) : 1;
  }

  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }

  void start() {
    pid_ = getpid();
    // The generation a worker waits past is the one at its creation: it may
    // start running only after the first launch has been published.
    const unsigned first = generation_.load(std::memory_order_acquire);
    for (int r = 1; r < threads_; ++r) std::thread([this, r, first] { work(r, first); }).detach();
  }

  // A forked child inherits the pool's state but none of its threads.
  void restart() {
    new (&mutex_) std::mutex();
    new (&wake_) std::condition_variable();
    generation_.store(0);
    start();
  }

  struct alignas(64) Range {
    std::atomic<long long> next{0};
    long long end = 0;
  };

  static long long grain(long long total, int threads) {
    const long long parts = static_cast<long long>(threads) * kPartsPerThread;
    return total > parts ? total / parts : 1;
  }

  static void split(Range* ranges, int n, long long total) {
    for (int r = 0; r < n; ++r) {
      ranges[r].next.store(total * r / n, std::memory_order_relaxed);
      ranges[r].end = total * (r + 1) / n;
    }
  }

  // Thread r works through its own part first, in order (the static
  // schedule's locality), then takes what is left of the others'.
  static void take_parts(Range* ranges, int n, int r, long long grain, Body body,
                         void* context) {
    for (int k = 0; k < n; ++k) {
      Range& range = ranges[(r + k) % n];
      for (;;) {
        const long long begin = range.next.fetch_add(grain, std::memory_order_relaxed);
        if (begin >= range.end) break;
        body(context, begin, begin + grain < range.end ? begin + grain : range.end);
      }
    }
  }

  void part(int r) { take_parts(ranges_.get(), threads_, r, grain_, body_, context_); }

  void work(int r, unsigned seen) {
    const pid_t pid = pid_;
    for (;;) {
      // Spinning for a while catches the next launch of a sequence (the
      // Python between two launches takes tens of microseconds, and waking a
      // sleeping thread in a virtual machine can take a hundred); then sleep,
      // so that the cores are free for the GEMM between kernels.
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicroseconds);
      while (generation_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 32; ++i) relax();
      }
      if (generation_.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
      }
      if (pid_ != pid) return;  // a pool restarted in a forked child
      seen = generation_.load(std::memory_order_acquire);
      part(r);
      remaining_.fetch_sub(1, std::memory_order_release);
    }
  }

  static constexpr int kSpinMicroseconds = 200;
  static constexpr int kPartsPerThread = 8;
  const int threads_;
  pid_t pid_ = 0;
  std::mutex launch_, mutex_;
  std::condition_variable wake_;
  std::atomic<unsigned> generation_{0};
  std::atomic<int> remaining_{0};
  Body body_ = nullptr;
  void* context_ = nullptr;
  long long total_ = 0;
  long long grain_ = 1;
  std::unique_ptr<Range[]> ranges_{new Range[threads_]};
};

// The products between kernels: cblas_sgemm or cblas_dgemm of a BLAS that
// runs single-threaded (cudcn's own OpenBLAS, cudcn/_blas.py), called once
// per tile of C on the pool. No BLAS setting is changed for it: each call is
// a plain single-threaded product, safe from any number of threads at once.
// The tiles, and so the bits, depend on the shape and `tiles` alone, never
// on which thread runs a tile or whether the pool was free.
template <typename T>
using RowMajorGemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, T alpha,
                              const T* a, int lda, const T* b, int ldb, T beta, T* c, int ldc);

template <typename T>
struct GemmTiles {
  RowMajorGemm<T> gemm;
  int trans_a, trans_b, m, n, k, lda, ldb, ldc;
  const char* a;
  const char* b;
  char* c;
  // Per product of the batch: where its a, b and c start, in bytes.
  const long long* a_offsets;
  const long long* b_offsets;
  const long long* c_offsets;
  int tiles;
  int split_rows;  // tiles of C's rows (a's rows), else of its columns (b's)
};

constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111;

template <typename T>
void run_gemm_tiles(const GemmTiles<T>& g, long long batch) {
  Pool::instance().run(batch * g.tiles, [](void* raw, long long begin, long long end) {
    const GemmTiles<T>& g = *static_cast<const GemmTiles<T>*>(raw);
    for (long long i = begin; i < end; ++i) {
      const long long item = i / g.tiles, tile = i % g.tiles;
      const T* a = reinterpret_cast<const T*>(g.a + g.a_offsets[item]);
      const T* b = reinterpret_cast<const T*>(g.b + g.b_offsets[item]);
      T* c = reinterpret_cast<T*>(g.c + g.c_offsets[item]);
      const long long length = g.split_rows ? g.m : g.n;
      const long long first = length * tile / g.tiles, last = length * (tile + 1) / g.tiles;
      const int count = static_cast<int>(last - first);
      if (count == 0) continue;
      if (g.split_rows) {
        a += g.trans_a == kCblasNoTrans ? first * g.lda : first;
        g.gemm(kCblasRowMajor, g.trans_a, g.trans_b, count, g.n, g.k, T(1), a, g.lda, b, g.ldb,
               T(0), c + first * g.ldc, g.ldc);
      } else {
        b += g.trans_b == kCblasNoTrans ? first : first * g.ldb;
        g.gemm(kCblasRowMajor, g.trans_a, g.trans_b, g.m, count, g.k, T(1), a, g.lda, b, g.ldb,
               T(0), c + first, g.ldc);
      }
    }
  }, const_cast<GemmTiles<T>*>(&g));
}

// How many threads a launch runs on: the OpenMP runtime's, or the pool's.
inline int launch_threads() {
#ifdef _OPENMP
  if (Pool::openmp()) return omp_get_max_threads();
#endif
  return Pool::instance().threads();
}

// `params` follows cuLaunchKernel's convention: params[i] points at the value
// of the kernel's i-th argument; `active` is the launch's item count n, the
// bound of every kernel's CUDCN_KERNEL_LOOP. The pool spreads the items
// [0, n), not the grid's blocks: a kernel over few items (one thread per
// plane) may be a single block. That is faithful because the kernels share
// nothing between the threads of a block (no shared memory, no barriers)
// and their grid-stride loops cover [0, n) whatever the grid. The race check
// runs the grid's threads one by one, each with its own index, as a GPU does.
template <typename... Args, std::size_t... Is>
void launch(void (*kernel)(Args...), unsigned int grid, unsigned int block, long long active,
            void** params, std::index_sequence<Is...>) {
#ifdef CUDCN_RACECHECK
  const long long total = static_cast<long long>(grid) * block;
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
  (void)grid;
  (void)block;
  struct Context {
    void (*kernel)(Args...);
    void** params;
  } context{kernel, params};
  Pool::instance().run(active, [](void* raw, long long begin, long long end) {
    const Context& c = *static_cast<const Context*>(raw);
    cudcn_first_item = begin;
    cudcn_end_item = end;
    c.kernel(*static_cast<std::remove_reference_t<Args>*>(c.params[Is])...);
  }, &context);
}

template <typename... Args>
void launch(void (*kernel)(Args...), unsigned int grid, unsigned int block, long long active,
            void** params) {
  launch(kernel, grid, block, active, params, std::index_sequence_for<Args...>{});
}

}  // namespace cudcn_cpu
