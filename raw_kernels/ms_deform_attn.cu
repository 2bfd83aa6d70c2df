// Multi-scale deformable attention (Deformable DETR's sampling core), with
// the semantics of mmcv's and Deformable-DETR's CUDA kernel
// (ms_deform_attn_cuda_kernel.cuh): see SPEC section 6.
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
// adds the sample times its attention weight to the output: the sample is
// w0 v0 + w1 v1 + w2 v2 + w3 v3 in that order, as the peer computes it.
//
// Thread mapping. Forward: one thread per (n, q, m, block of channels),
// channels fastest; a thread reads its points' geometry once per 16
// channels (kLanes), which it accumulates side by side (vector registers on
// the CPU). Gradients of the locations and attention weights: one thread
// per (n, q, m, point, block of channels) sums over its channels (on the
// CPU one block of all, in lanes), then one thread per (n, q, m, point)
// adds its blocks in order (backward_points_partial, _reduce). The value
// gradient, which many queries share: by items (the GPU's default) a
// thread per (n, q, m, point, block of channels) adding with atomics; by
// planes (the CPU's, deterministic) a thread per (n, m, level, 16 channels)
// that owns those rows of grad_value and walks every query's points of its
// level in order; sorted (deterministic mode on the GPU) lists each sample
// corner as an entry for segmented_sum.cu.
#include "cudcn_common.cuh"

namespace cudcn {

constexpr int kLanes = 16;

struct MSDeformAttnGeometry {
  int batch, spatial, queries, heads, channels, points, num_levels;
};

#define CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS \
  int batch, int spatial, int queries, int heads, int channels, int points, int num_levels
#define CUDCN_MS_DEFORM_ATTN_GEOMETRY \
  const MSDeformAttnGeometry s = {batch, spatial, queries, heads, channels, points, num_levels}

// One point of one (n, q, m): where it samples and with what weight.
template <typename A, typename I>
struct AttnPoint {
  BilinearCorners<A, I> corners;  // indices within the level's map
  I first_row;                    // n * S + the level's first row
  A weight;                       // the attention weight
  int height, width;
};

// `head` is the flat (n, q, m) index; `p` the point.
template <typename T, typename I>
CUDCN_DEVICE AttnPoint<acc_t<T>, I> attn_point(const I* levels, const I* point_level,
                                               const T* locations, const T* weights, I head,
                                               int p, const MSDeformAttnGeometry& s) {
  using A = acc_t<T>;
  AttnPoint<A, I> pt;
  const I level = load(point_level + p);
  pt.height = static_cast<int>(load(levels + level * 3));
  pt.width = static_cast<int>(load(levels + level * 3 + 1));
  const I n = head / (I(s.queries) * s.heads);
  pt.first_row = n * s.spatial + load(levels + level * 3 + 2);
  const I at = head * s.points + p;
  const A x = load(locations + 2 * at) * A(pt.width) - A(0.5);
  const A y = load(locations + 2 * at + 1) * A(pt.height) - A(0.5);
  pt.weight = load(weights + at);
  pt.corners = bilinear_corners<A, I>(y, x, pt.height, pt.width);
  return pt;
}

// Where channel 0 of value row `row` of head m starts.
template <typename I>
CUDCN_DEVICE I value_at(I row, int m, const MSDeformAttnGeometry& s) {
  return (row * s.heads + m) * s.channels;
}

// Work item i of a launch over (n, q, m, point, block of channel_block
// channels), the block fastest: the flat (n, q, m), the point, the head and
// the block's channels [c_begin, c_end).
template <typename I>
struct PointChannels {
  I head;
  int point, m, c_begin, c_end;
};

template <typename I>
CUDCN_DEVICE PointChannels<I> point_channels(I i, int channel_block,
                                             const MSDeformAttnGeometry& s) {
  const int blocks = (s.channels + channel_block - 1) / channel_block;
  const I item = i / blocks;
  PointChannels<I> w;
  w.head = item / s.points;
  w.point = static_cast<int>(item % s.points);
  w.m = static_cast<int>(w.head % s.heads);
  w.c_begin = static_cast<int>(i % blocks) * channel_block;
  w.c_end = min(w.c_begin + channel_block, s.channels);
  return w;
}

// A point's four corner rows of head m in value, from channel c0: a corner
// outside its map reads 0. On the
// host its pointer is a row of kLanes zeros of the thread's own, so that the
// lane loops load unconditionally and vectorize; on a GPU the load is
// predicated instead (a pointer into a local array would leave registers).
// Both give the same values.
template <typename T>
struct CornerRows {
  const T* row[4];
#ifndef CUDCN_GPU
  T zeros[kLanes];
#endif

  template <typename A, typename I>
  CUDCN_DEVICE void at(const T* value, const AttnPoint<A, I>& pt, int m, int c0,
                       const MSDeformAttnGeometry& s) {
    for (int j = 0; j < 4; ++j) {
      const T* base = value + value_at(pt.first_row + pt.corners.index[j], m, s) + c0;
#ifdef CUDCN_GPU
      row[j] = base;
#else
      row[j] = pt.corners.valid[j] ? base : zeros;
#endif
    }
  }

  template <typename A, typename I>
  CUDCN_DEVICE A load_at(const BilinearCorners<A, I>& q, int j, int l) const {
#ifdef CUDCN_GPU
    return q.valid[j] ? load(row[j] + l) : A(0);
#else
    return load(row[j] + l);
#endif
  }
};

template <typename T>
CUDCN_DEVICE void zero_rows(CornerRows<T>& rows) {
#ifndef CUDCN_GPU
  for (int l = 0; l < kLanes; ++l) rows.zeros[l] = narrow<T>(acc_t<T>(0));
#endif
}

template <typename T, typename I>
__global__ void ms_deform_attn_forward(const T* __restrict__ value, const I* __restrict__ levels,
                                       const I* __restrict__ point_level,
                                       const T* __restrict__ locations,
                                       const T* __restrict__ weights, T* __restrict__ output, I n,
                                       int channel_block, CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  const int blocks = (s.channels + channel_block - 1) / channel_block;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I head = i / blocks;
    const int m = static_cast<int>(head % s.heads);
    const int c_begin = static_cast<int>(i % blocks) * channel_block;
    const int c_end = min(c_begin + channel_block, s.channels);
    T* out = output + head * s.channels;
    CornerRows<T> rows;
    zero_rows(rows);
    for (int c0 = c_begin; c0 < c_end; c0 += kLanes) {
      const int lanes = min(kLanes, c_end - c0);
      A acc[kLanes];
      for (int l = 0; l < kLanes; ++l) acc[l] = A(0);
      for (int p = 0; p < s.points; ++p) {
        const AttnPoint<A, I> pt = attn_point(levels, point_level, locations, weights, head, p, s);
        if (!pt.corners.inside) continue;
        const BilinearCorners<A, I>& q = pt.corners;
        rows.at(value, pt, m, c0, s);
        for (int l = 0; l < lanes; ++l) {
          A sample = A(0);
          for (int j = 0; j < 4; ++j) sample += q.weight[j] * rows.load_at(q, j, l);
          acc[l] += sample * pt.weight;
        }
      }
      for (int l = 0; l < lanes; ++l) store(out + c0 + l, acc[l]);
    }
  }
}

// d(sample)/dy and d(sample)/dx of one channel, given its four corner values:
// the derivative on the cell [y0, y0 + 1] x [x0, x0 + 1].
template <typename A, typename I>
CUDCN_DEVICE void sample_partials(const BilinearCorners<A, I>& q, const A v[4], A& dy, A& dx) {
  const A hy = A(1) - q.frac_y, ly = q.frac_y, hx = A(1) - q.frac_x, lx = q.frac_x;
  dy = -hx * v[0] - lx * v[1] + hx * v[2] + lx * v[3];
  dx = -hy * v[0] + hy * v[1] - ly * v[2] + ly * v[3];
}

// The sums a point's location and weight gradients need, over one block of
// channels c: of g_c * sample_c, g_c * d(sample_c)/dy and g_c * d(sample_c)/dx,
// in partials[(item * blocks + block) * 3 + 0, 1, 2]. On the CPU (one block
// of every channel) in kPointLanes lanes added in order at the end, which
// the host compiler keeps in vector registers; on a GPU one lane, since a
// thread's registers are what bound its occupancy there.
#ifdef CUDCN_GPU
constexpr int kPointLanes = 1;
#else
constexpr int kPointLanes = kLanes;
#endif

template <typename T, typename I>
__global__ void ms_deform_attn_backward_points_partial(
    const T* __restrict__ grad_output, const T* __restrict__ value, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ partials, I n, int channel_block,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PointChannels<I> item = point_channels(i, channel_block, s);
    const AttnPoint<A, I> pt =
        attn_point(levels, point_level, locations, weights, item.head, item.point, s);
    A sum_w = A(0), sum_y = A(0), sum_x = A(0);
    if (pt.corners.inside) {
      const BilinearCorners<A, I>& q = pt.corners;
      const T* g = grad_output + item.head * s.channels;
      CornerRows<T> rows;
      zero_rows(rows);
      A lane_w[kPointLanes];
      A lane_y[kPointLanes];
      A lane_x[kPointLanes];
      for (int l = 0; l < kPointLanes; ++l) lane_w[l] = lane_y[l] = lane_x[l] = A(0);
      for (int c0 = item.c_begin; c0 < item.c_end; c0 += kPointLanes) {
        const int lanes = min(kPointLanes, item.c_end - c0);
        rows.at(value, pt, item.m, c0, s);
        for (int l = 0; l < lanes; ++l) {
          A corner[4];
          for (int j = 0; j < 4; ++j) corner[j] = rows.load_at(q, j, l);
          A sample = A(0);
          for (int j = 0; j < 4; ++j) sample += q.weight[j] * corner[j];
          A dy, dx;
          sample_partials(q, corner, dy, dx);
          const A gc = load(g + c0 + l);
          lane_w[l] += gc * sample;
          lane_y[l] += gc * dy;
          lane_x[l] += gc * dx;
        }
      }
      for (int l = 0; l < kPointLanes; ++l) {
        sum_w += lane_w[l];
        sum_y += lane_y[l];
        sum_x += lane_x[l];
      }
    }
    store(partials + 3 * i, sum_w);
    store(partials + 3 * i + 1, sum_y);
    store(partials + 3 * i + 2, sum_x);
  }
}

// One thread per (n, q, m, point): its blocks' sums added in order, then
// the gradients: x = loc_x * W - 0.5, so d/dloc_x = W * d/dx, times the
// attention weight; likewise y. A point outside the window has zero sums.
template <typename T, typename I>
__global__ void ms_deform_attn_backward_points_reduce(
    const acc_t<T>* __restrict__ partials, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, T* __restrict__ grad_locations, T* __restrict__ grad_weights,
    I n, int blocks, int want_locations, int want_weights, CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I level = load(point_level + static_cast<int>(i % s.points));
    A sum_w = A(0), sum_y = A(0), sum_x = A(0);
    for (int b = 0; b < blocks; ++b) {
      const A* part = partials + 3 * (i * blocks + b);
      sum_w += load(part);
      sum_y += load(part + 1);
      sum_x += load(part + 2);
    }
    const A weight = load(weights + i);
    if (want_weights) store(grad_weights + i, sum_w);
    if (want_locations) {
      store(grad_locations + 2 * i, sum_x * weight * A(load(levels + level * 3 + 1)));
      store(grad_locations + 2 * i + 1, sum_y * weight * A(load(levels + level * 3)));
    }
  }
}

// grad_value (an accumulation-type array of value's shape, zeroed) +=
// weight * corner weight * grad_output, with atomics.
template <typename T, typename I>
__global__ void ms_deform_attn_backward_value(
    const T* __restrict__ grad_output, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ grad_value, I n, int channel_block,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PointChannels<I> item = point_channels(i, channel_block, s);
    const AttnPoint<A, I> pt =
        attn_point(levels, point_level, locations, weights, item.head, item.point, s);
    if (!pt.corners.inside) continue;
    const T* g = grad_output + item.head * s.channels;
    for (int j = 0; j < 4; ++j) {
      if (!pt.corners.valid[j]) continue;
      const A w = pt.corners.weight[j] * pt.weight;
      A* to = grad_value + value_at(pt.first_row + pt.corners.index[j], item.m, s);
      for (int c = item.c_begin; c < item.c_end; ++c) atomic_add(to + c, w * load(g + c));
    }
  }
}

// The same sums without atomics: one thread per (n, m, level, kLanes
// channels) owns those channels of the level's rows of head m, and adds
// every query's points of that level, query by query, point by point.
template <typename T, typename I>
__global__ void ms_deform_attn_backward_value_planes(
    const T* __restrict__ grad_output, const I* __restrict__ levels,
    const I* __restrict__ point_level, const T* __restrict__ locations,
    const T* __restrict__ weights, acc_t<T>* __restrict__ grad_value, I n,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  const int blocks = (s.channels + kLanes - 1) / kLanes;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int c0 = static_cast<int>(i % blocks) * kLanes;
    const int lanes = min(kLanes, s.channels - c0);
    const I level = (i / blocks) % s.num_levels;
    const int m = static_cast<int>((i / blocks / s.num_levels) % s.heads);
    const I b = i / blocks / s.num_levels / s.heads;
    for (I q = 0; q < s.queries; ++q) {
      const I head = (b * s.queries + q) * s.heads + m;
      const T* g = grad_output + head * s.channels + c0;
      A gc[kLanes];
      for (int l = 0; l < lanes; ++l) gc[l] = load(g + l);
      for (int p = 0; p < s.points; ++p) {
        if (load(point_level + p) != level) continue;
        const AttnPoint<A, I> pt = attn_point(levels, point_level, locations, weights, head, p, s);
        if (!pt.corners.inside) continue;
        for (int j = 0; j < 4; ++j) {
          if (!pt.corners.valid[j]) continue;
          const A w = pt.corners.weight[j] * pt.weight;
          A* to = grad_value + value_at(pt.first_row + pt.corners.index[j], m, s) + c0;
          for (int l = 0; l < lanes; ++l) store(to + l, load(to + l) + w * gc[l]);
        }
      }
    }
  }
}

// Deterministic mode on the GPU: each sample corner as an entry (key: the
// value row and head, (n * S + row) * M + m, or -1; source: the flat
// (n, q, m) of grad_output's channel 0; weight: corner weight * attention
// weight), one thread per corner of each (n, q, m, point), for
// segmented_sum.cu.
template <typename T, typename I>
__global__ void ms_deform_attn_scatter_entries(
    const I* __restrict__ levels, const I* __restrict__ point_level,
    const T* __restrict__ locations, const T* __restrict__ weights, I* __restrict__ keys,
    I* __restrict__ sources, acc_t<T>* __restrict__ entry_weights, I n,
    CUDCN_MS_DEFORM_ATTN_GEOMETRY_PARAMS) {
  CUDCN_MS_DEFORM_ATTN_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int j = static_cast<int>(i % 4);
    const I head = i / 4 / s.points;
    const int p = static_cast<int>(i / 4 % s.points);
    const int m = static_cast<int>(head % s.heads);
    const AttnPoint<A, I> pt = attn_point(levels, point_level, locations, weights, head, p, s);
    const bool live = pt.corners.inside && pt.corners.valid[j];
    store(keys + i, live ? (pt.first_row + pt.corners.index[j]) * s.heads + m : I(-1));
    store(sources + i, head * s.channels);
    store(entry_weights + i, live ? pt.corners.weight[j] * pt.weight : A(0));
  }
}

}  // namespace cudcn
