// Deterministic, parallel scatter-add: the gather that replaces atomics in
// deterministic mode on the GPU (col2im and the RoI poolings' input
// gradients; cudcn/_sorted_sum.py drives it).
//
// The op's scatter_entries kernel lists every contribution as an entry
// (destination key, source index, weight); the array library sorts the
// entries by key with a stable sort, so that each destination's entries
// form a segment in a fixed order, and cuts every segment into chunks of at
// most a few entries. Each destination has `channels` values (one per
// channel of the group the entries apply to), `source_stride` and
// `dest_stride` apart.
//
// Two kernels, no atomics, a summation order that no thread count changes:
// chunk_sums gives each (chunk, channel) its partial sum over the chunk's
// entries in order; segment_sums adds each (segment, channel)'s chunk sums in
// order and stores the total in the destination, which it alone writes.
#include "cudcn_common.cuh"

namespace cudcn {

// partials[chunk * channels + c] = sum over the chunk's entries e, in order,
// of weight[e] * source[entry_source[e] + c * source_stride].
template <typename T, typename I>
__global__ void segmented_sum_chunks(const T* __restrict__ source,
                                     const I* __restrict__ entry_source,
                                     const acc_t<T>* __restrict__ entry_weight,
                                     const I* __restrict__ chunk_first,
                                     acc_t<T>* __restrict__ partials, I n, int channels,
                                     I source_stride) {
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I chunk = i / channels;
    const I c = i % channels;
    const I last = load(chunk_first + chunk + 1);
    A sum = A(0);
    for (I e = load(chunk_first + chunk); e < last; ++e) {
      sum += load(entry_weight + e) * load(source + load(entry_source + e) + c * source_stride);
    }
    store(partials + i, sum);
  }
}

// dest[segment_dest[segment] + c * dest_stride] = the sum of the segment's
// chunk partials, in chunk order.
template <typename T, typename I>
__global__ void segmented_sum_segments(const acc_t<T>* __restrict__ partials,
                                       const I* __restrict__ segment_first_chunk,
                                       const I* __restrict__ segment_dest,
                                       acc_t<T>* __restrict__ dest, I n, int channels,
                                       I dest_stride) {
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I segment = i / channels;
    const I c = i % channels;
    const I last = load(segment_first_chunk + segment + 1);
    A sum = A(0);
    for (I chunk = load(segment_first_chunk + segment); chunk < last; ++chunk) {
      sum += load(partials + chunk * channels + c);
    }
    store(dest + load(segment_dest + segment) + c * dest_stride, sum);
  }
}

}  // namespace cudcn
