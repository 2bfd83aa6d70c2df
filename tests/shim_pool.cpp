// Exposes cpu_shim.h's thread pool to the tests (test_pool.py): who runs which
// items of a launch.
#include "cpu_shim.h"

namespace {

struct Record {
  std::thread::id caller;
  std::atomic<int>* runs;          // per item: how many times it ran
  std::atomic<long long> by_caller{0};
  std::atomic<int> stalls{0};      // stalls left: a worker sleeps in its first part
  int stall_ms = 0;
};

void record(void* raw, long long begin, long long end) {
  Record& r = *static_cast<Record*>(raw);
  const bool caller = std::this_thread::get_id() == r.caller;
  if (!caller && r.stalls.fetch_sub(1) > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(r.stall_ms));
  }
  for (long long i = begin; i < end; ++i) r.runs[i].fetch_add(1);
  if (caller) r.by_caller.fetch_add(end - begin);
}

}  // namespace

extern "C" {

int pool_threads() { return cudcn_cpu::Pool::instance().threads(); }

void pool_use_openmp(int on) { cudcn_cpu::Pool::openmp() = on; }

// Runs `total` items with the workers' first part stalled for stall_ms; runs[i]
// counts the runs of item i. Returns how many items the caller ran.
long long pool_run(long long total, int stall_ms, int* runs) {
  std::unique_ptr<std::atomic<int>[]> counts(new std::atomic<int>[total]);
  for (long long i = 0; i < total; ++i) counts[i] = 0;
  Record r;
  r.caller = std::this_thread::get_id();
  r.runs = counts.get();
  r.stall_ms = stall_ms;
  r.stalls = stall_ms > 0 ? cudcn_cpu::Pool::instance().threads() - 1 : 0;
  cudcn_cpu::Pool::instance().run(total, record, &r);
  for (long long i = 0; i < total; ++i) runs[i] = counts[i];
  return r.by_caller;
}
}
