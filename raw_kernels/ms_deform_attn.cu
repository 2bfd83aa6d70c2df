// Multi-scale deformable attention (Deformable DETR's sampling core), with
// the semantics of mmcv's and Deformable-DETR's CUDA kernel
// (ms_deform_attn_cuda_kernel.cuh): see SPEC section 6. The loops, thread
// mappings and gradients are point_sampling.cuh's; this file says where a
// query's points fall and turns their sums into the locations' gradients.
//
// Layouts (C-contiguous): value (N, S, M, D), S the rows of every level's
// H_l x W_l map one after the other; levels (L, 3) in the index type: H_l,
// W_l and the level's first row in S; point_level (P,): the level of each of
// a head's P points (P = L * points, or the sum of points_per_level);
// locations (N, Q, M, P, 2), (x, y) normalised to [0, 1]; weights
// (N, Q, M, P); output and grad_output (N, Q, M, D).
//
// A point samples its level at y = loc_y * H - 0.5, x = loc_x * W - 0.5,
// bilinearly, corners outside the map counting 0, only if -1 < y < H and
// -1 < x < W (bilinear_corners' `inside`, false for NaN and inf), and
// adds the sample times its attention weight to the output.
#include "point_sampling.cuh"

namespace cudcn {

#define CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS \
  int batch, int spatial, int queries, int heads, int channels, int points, int num_levels
#define CUDCN_MS_DEFORM_ATTN_POINTS                                                    \
  const SamplingGeometry s = {batch, spatial, queries, heads, channels, points, num_levels}; \
  const AttnPoints<T, I> at_points = {levels, point_level, locations, weights, s}

// The points of one head (the flat (n, q, m)): where each samples.
template <typename T, typename I>
struct AttnHead {
  const I* levels;
  const I* point_level;
  const T* locations;  // the head's first point's
  const T* weights;    // likewise
  I image_row;         // n * S

  CUDCN_DEVICE PointPlace<acc_t<T>, I> place(int p) const {
    using A = acc_t<T>;
    PointPlace<A, I> at;
    const I level = load(point_level + p);
    at.height = static_cast<int>(load(levels + level * 3));
    at.width = static_cast<int>(load(levels + level * 3 + 1));
    at.first_row = image_row + load(levels + level * 3 + 2);
    at.x = load(locations + 2 * p) * A(at.width) - A(0.5);
    at.y = load(locations + 2 * p + 1) * A(at.height) - A(0.5);
    at.weight = load(weights + p);
    return at;
  }
};

template <typename T, typename I>
struct AttnPoints {
  const I* levels;
  const I* point_level;
  const T* locations;
  const T* weights;
  SamplingGeometry s;

  CUDCN_DEVICE int level(int p) const { return static_cast<int>(load(point_level + p)); }

  CUDCN_DEVICE AttnHead<T, I> head(I h) const {
    const I first = h * s.points;
    return {levels, point_level, locations + 2 * first, weights + first,
            (h / (I(s.queries) * s.heads)) * s.spatial};
  }
};

template <typename T, typename I>
__global__ void ms_deform_attn_forward(const T* __restrict__ value, const I* __restrict__ levels,
                                       const I* __restrict__ point_level,
                                       const T* __restrict__ locations,
                                       const T* __restrict__ weights, T* __restrict__ output, I n,
                                       int channel_block, CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) sample_forward(value, at_points, output, i, channel_block, s);
}

template <typename T, typename I>
__global__ void ms_deform_attn_backward_points_partial(
    const T* __restrict__ grad_output, const T* __restrict__ value, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ partials, I n, int channel_block,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_points_partial(grad_output, value, at_points, partials, i, channel_block, s);
  }
}

// One thread per (n, q, m, run of points): each point's blocks' sums added
// in order, then the gradients: x = loc_x * W - 0.5, so d/dloc_x = W *
// d/dx, times the attention weight; likewise y. A point outside the window
// has zero sums.
template <typename T, typename I>
__global__ void ms_deform_attn_backward_points_reduce(
    const acc_t<T>* __restrict__ partials, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, T* __restrict__ grad_locations, T* __restrict__ grad_weights,
    I n, int blocks, int run, int want_locations, int want_weights,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PointRun<I> r = point_run(i, run, s);
    for (int p = r.p_begin; p < r.p_end; ++p) {
      const I at = r.head * s.points + p;
      const int lvl = at_points.level(p);
      const PointSums<A> sums = sum_blocks(partials, at, blocks);
      const A weight = load(weights + at);
      if (want_weights) store(grad_weights + at, sums.w);
      if (want_locations) {
        store(grad_locations + 2 * at, sums.x * weight * A(load(levels + lvl * 3 + 1)));
        store(grad_locations + 2 * at + 1, sums.y * weight * A(load(levels + lvl * 3)));
      }
    }
  }
}

template <typename T, typename I>
__global__ void ms_deform_attn_backward_value(
    const T* __restrict__ grad_output, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ grad_value, I n, int channel_block,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_value(grad_output, at_points, grad_value, i, channel_block, s);
  }
}

template <typename T, typename I>
__global__ void ms_deform_attn_backward_value_planes(
    const T* __restrict__ grad_output, const T* __restrict__ value, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ grad_value,
    acc_t<T>* __restrict__ partials, I n, int want_points, CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_value_planes(grad_output, value, at_points, grad_value, partials,
                                 want_points != 0, i, s);
  }
}

template <typename T, typename I>
__global__ void ms_deform_attn_scatter_entries(
    const I* __restrict__ levels, const I* __restrict__ point_level,
    const T* __restrict__ locations, const T* __restrict__ weights, I* __restrict__ keys,
    I* __restrict__ sources, acc_t<T>* __restrict__ entry_weights, I n,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) sample_scatter_entry(at_points, keys, sources, entry_weights, i, s);
}

}  // namespace cudcn
