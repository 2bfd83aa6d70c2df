// Exposes cpu_shim.h's thread pool to the tests (test_pool.py): who runs which
// items of a launch, and whether items that wait for each other all run at once.
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

struct Meeting {
  long long total;
  std::atomic<long long> arrived{0};
  std::atomic<int> missed{0};
};

// Each item waits (up to 5 s) until every item has started.
void meet(void* raw, long long begin, long long end) {
  Meeting& m = *static_cast<Meeting*>(raw);
  for (long long i = begin; i < end; ++i) {
    m.arrived.fetch_add(1);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (m.arrived.load() < m.total) {
      if (std::chrono::steady_clock::now() > until) {
        m.missed.fetch_add(1);
        return;
      }
      std::this_thread::yield();
    }
  }
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

// Runs `total` items that each wait for all the others to start; returns how
// many gave up waiting (0: they all ran at once).
int pool_run_together(long long total) {
  Meeting m;
  m.total = total;
  cudcn_cpu::Pool::instance().run_together(total, meet, &m);
  return m.missed;
}
}
