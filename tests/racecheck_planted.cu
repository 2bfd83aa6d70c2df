// Deliberately racy kernels, and a correct one: tests/test_racecheck.py builds
// them with the race check and shows that it reports each race. Not package
// data; never launched by cudcn.
#include "cudcn_common.cuh"

namespace racecheck_planted {

// col2im's scatter with a plain += where it needs an atomic: threads whose
// targets coincide race.
template <typename T, typename I>
__global__ void scatter_plain(const T* __restrict__ values, const I* __restrict__ targets,
                              cudcn::acc_t<T>* __restrict__ out, I n) {
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I target = cudcn::load(targets + i);
    cudcn::store(out + target, cudcn::load(out + target) + cudcn::load(values + i));
  }
}

// The same scatter, correct.
template <typename T, typename I>
__global__ void scatter_atomic(const T* __restrict__ values, const I* __restrict__ targets,
                               cudcn::acc_t<T>* __restrict__ out, I n) {
  CUDCN_KERNEL_LOOP(i, I, n) {
    cudcn::atomic_add(out + cudcn::load(targets + i), cudcn::load(values + i));
  }
}

// Each thread reads the element its neighbour overwrites in the same launch.
template <typename T, typename I>
__global__ void shift_in_place(T* __restrict__ data, I n) {
  CUDCN_KERNEL_LOOP(i, I, n) {
    if (i + 1 < n) cudcn::store(data + i, cudcn::load(data + i + 1));
  }
}

// Thread 0 stores what the other threads add to atomically.
template <typename T, typename I>
__global__ void store_and_add(cudcn::acc_t<T>* __restrict__ out, I n) {
  using A = cudcn::acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    if (i == 0) {
      cudcn::store(out, A(0));
    } else {
      cudcn::atomic_add(out, A(1));
    }
  }
}

}  // namespace racecheck_planted
