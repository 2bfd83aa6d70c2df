// The machinery of the ops that sample channels-last maps at computed points
// and sum the samples times per-point weights: multi-scale deformable
// attention (ms_deform_attn.cu) and DCNv3/DCNv4 (dcnv3.cu). An op supplies
// only where its points fall; the loops over channels, the gradients and the
// thread mappings are written once, here.
//
// Layouts (C-contiguous): the sampled map `value` is (N, S, M, D): S rows of
// M heads (DCNv3: groups) of D channels; the result and grad_output are
// (N, Q, M, D), one (n, q, m) "head" per query and head. A head has P
// points; point p of head h samples value's rows of image n at its
// BilinearCorners, with weight `weight` (an attention weight, a mask value).
//
// A `Points` type is a small struct of the op's arrays with
//   Head head(I head) const      // what a head's points share, computed once
//   int level(int p) const       // the map a point samples (0 for DCNv3)
// where Head has SampledPoint<A, I> at(int p) const; every kernel below
// takes it with the SamplingGeometry. Whatever needs a division (the
// head's image, pixel, group) belongs in head(): integer divisions cost
// more than a point's arithmetic, and a thread meets a head's points in a
// row.
//
// Thread mappings. Forward: one thread per (head, block of channels),
// channels fastest; a thread reads each point's geometry once per kLanes
// channels, which it accumulates side by side (vector registers on the
// CPU). Gradients of the points (their location and weight): one thread per
// (head, point, block of channels) sums over its channels, then the op's
// reduce kernel adds a point's blocks in order. The value gradient, which
// many heads share: by items (the GPU's default) a thread per (head, point,
// block of channels) adding with atomics; by planes (the CPU's,
// deterministic) a thread per (n, m, level, kLanes channels) that owns
// those rows of grad_value, walks every query's points of its level in order
// and, when asked, computes those points' partial sums on the way (one pass
// over the geometry and the corners for both gradients); sorted
// (deterministic mode on the GPU) lists each sample corner as an entry for
// segmented_sum.cu.
#pragma once

#include "cudcn_common.cuh"

namespace cudcn {

constexpr int kLanes = 16;

struct SamplingGeometry {
  int batch, spatial, queries, heads, channels, points, num_levels;
};

// One point of one head: where it samples and with what weight.
template <typename A, typename I>
struct SampledPoint {
  BilinearCorners<A, I> corners;  // indices within the point's map
  I first_row;                    // n * S + the map's first row
  A weight;
};

// Where a point's corner j starts in value (or grad_value), from channel
// c0 of head m: the point's map at `map_at(pt, m, c0, s)`, plus the corner's
// index times a row's length. Two multiplies a corner, not four.
template <typename A, typename I>
CUDCN_DEVICE I map_at(const SampledPoint<A, I>& pt, int m, int c0, const SamplingGeometry& s) {
  return pt.first_row * (I(s.heads) * s.channels) + I(m) * s.channels + c0;
}

template <typename A, typename I>
CUDCN_DEVICE I corner_at(I map, const SampledPoint<A, I>& pt, int j, const SamplingGeometry& s) {
  return map + pt.corners.index[j] * (I(s.heads) * s.channels);
}

// Work item i of a launch over (head, point, block of channel_block
// channels), the block fastest: the head, the point, m and the block's
// channels [c_begin, c_end).
template <typename I>
struct PointChannels {
  I head;
  int point, m, c_begin, c_end;
};

template <typename I>
CUDCN_DEVICE PointChannels<I> point_channels(I i, int channel_block, const SamplingGeometry& s) {
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
// outside its map reads 0. On the host its pointer is a row of kLanes zeros
// of the thread's own, so that the lane loops load unconditionally and
// vectorize; on a GPU the load is predicated instead (a pointer into a local
// array would leave registers). Both give the same values.
template <typename T>
struct CornerRows {
  const T* row[4];
#ifndef CUDCN_GPU
  T zeros[kLanes];
#endif

  CUDCN_DEVICE CornerRows() {
#ifndef CUDCN_GPU
    for (int l = 0; l < kLanes; ++l) zeros[l] = narrow<T>(acc_t<T>(0));
#endif
  }

  template <typename A, typename I>
  CUDCN_DEVICE void at(const T* value, const SampledPoint<A, I>& pt, int m, int c0,
                       const SamplingGeometry& s) {
    const I map = map_at(pt, m, c0, s);
    for (int j = 0; j < 4; ++j) {
      const T* base = value + corner_at(map, pt, j, s);
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

// Forward, item i over (head, block of channel_block channels): the head's
// output channels of the block, each the sum over its points of the
// weight times the bilinear sample w0 v0 + w1 v1 + w2 v2 + w3 v3 (the
// peers' order).
template <typename T, typename I, typename Points>
CUDCN_DEVICE void sample_forward(const T* value, const Points& points, T* output, I i,
                                 int channel_block, const SamplingGeometry& s) {
  using A = acc_t<T>;
  const int blocks = (s.channels + channel_block - 1) / channel_block;
  const I head = i / blocks;
  const int m = static_cast<int>(head % s.heads);
  const int c_begin = static_cast<int>(i % blocks) * channel_block;
  const int c_end = min(c_begin + channel_block, s.channels);
  T* out = output + head * s.channels;
  CornerRows<T> rows;
  const auto head_points = points.head(head);
  for (int c0 = c_begin; c0 < c_end; c0 += kLanes) {
    const int lanes = min(kLanes, c_end - c0);
    A acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = A(0);
    for (int p = 0; p < s.points; ++p) {
      const SampledPoint<A, I> pt = head_points.at(p);
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

// The sums a point's gradients need, over one block of channels c: of
// g_c * sample_c, g_c * d(sample_c)/dy and g_c * d(sample_c)/dx, stored at
// partials[3 * slot + 0, 1, 2]. All three are linear in the corners' values,
// so they come from the four dot products d_j = sum of g_c * v_{j, c}
// (corner j's channels against the incoming gradient): sample = sum of
// w_j d_j, and on the cell [y0, y0 + 1] x [x0, x0 + 1]
//   d/dy = (1 - fx) (d_2 - d_0) + fx (d_3 - d_1),
//   d/dx = (1 - fy) (d_1 - d_0) + fy (d_3 - d_2),
// four multiply-adds a channel instead of one sample and its two
// derivatives each. On the CPU the dot products run in kPointLanes lanes
// added up at the end (lane_sum), which the host compiler keeps in vector
// registers; on a GPU in one, since a thread's registers bound its
// occupancy there.
#ifdef CUDCN_GPU
constexpr int kPointLanes = 1;
#else
constexpr int kPointLanes = kLanes;
#endif

// The sum of a thread's lanes, halves folded onto halves (a fixed order,
// as fast as vector adds go; adding them one by one waits on each add).
// Each fold a loop of constant length, which the host compiler vectorizes.
template <typename A, int N>
CUDCN_DEVICE A lane_sum(A (&lane)[N]) {
  static_assert(N == 1 || N == 2 || N == 4 || N == 8 || N == 16, "1 to 16 lanes, a power of 2");
  if constexpr (N >= 16) {
    for (int l = 0; l < 8; ++l) lane[l] += lane[l + 8];
  }
  if constexpr (N >= 8) {
    for (int l = 0; l < 4; ++l) lane[l] += lane[l + 4];
  }
  if constexpr (N >= 4) {
    for (int l = 0; l < 2; ++l) lane[l] += lane[l + 2];
  }
  if constexpr (N >= 2) lane[0] += lane[1];
  return lane[0];
}

// A point's three sums from its dot products, stored in its slot (all zero
// for a point outside the window, whose dot products are).
template <typename A, typename I>
CUDCN_DEVICE void store_point_sums(const BilinearCorners<A, I>& q, const A dot[4], A* partials,
                                   I slot) {
  const A hy = A(1) - q.frac_y, ly = q.frac_y, hx = A(1) - q.frac_x, lx = q.frac_x;
  A sum_w = A(0);
  for (int j = 0; j < 4; ++j) sum_w += q.weight[j] * dot[j];
  store(partials + 3 * slot, sum_w);
  // Grouped by weight (no mixed adds and subtracts side by side, which GCC's
  // SLP vectorizer fuses into fmaddsub despite -ffp-contract=off: the same
  // sums would round differently in two kernels).
  store(partials + 3 * slot + 1, hx * (dot[2] - dot[0]) + lx * (dot[3] - dot[1]));
  store(partials + 3 * slot + 2, hy * (dot[1] - dot[0]) + ly * (dot[3] - dot[2]));
}

template <typename T, typename I, typename A>
CUDCN_DEVICE void point_sums(const T* grad_output, const T* value, const SampledPoint<A, I>& pt,
                             I head, int m, int c_begin, int c_end, CornerRows<T>& rows,
                             A* partials, I slot, const SamplingGeometry& s) {
  A dot[4] = {A(0), A(0), A(0), A(0)};
  if (pt.corners.inside) {
    const BilinearCorners<A, I>& q = pt.corners;
    const T* g = grad_output + head * s.channels;
    A lane_dot[4][kPointLanes];
    for (int j = 0; j < 4; ++j) {
      for (int l = 0; l < kPointLanes; ++l) lane_dot[j][l] = A(0);
    }
    for (int c0 = c_begin; c0 < c_end; c0 += kPointLanes) {
      const int lanes = min(kPointLanes, c_end - c0);
      rows.at(value, pt, m, c0, s);
      for (int l = 0; l < lanes; ++l) {
        const A gc = load(g + c0 + l);
        for (int j = 0; j < 4; ++j) lane_dot[j][l] += gc * rows.load_at(q, j, l);
      }
    }
    for (int j = 0; j < 4; ++j) dot[j] = lane_sum(lane_dot[j]);
  }
  store_point_sums(pt.corners, dot, partials, slot);
}

// Item i of an op's reduce kernel: a head and a run of `run` of its points,
// [p_begin, p_end). The CPU takes a head's points in one run, so that what
// needs a division (the head's place) is found once for them all; a GPU one
// point a thread.
template <typename I>
struct PointRun {
  I head;
  int p_begin, p_end;
};

template <typename I>
CUDCN_DEVICE PointRun<I> point_run(I i, int run, const SamplingGeometry& s) {
  const int runs = (s.points + run - 1) / run;
  PointRun<I> r;
  r.head = i / runs;
  r.p_begin = static_cast<int>(i % runs) * run;
  r.p_end = min(r.p_begin + run, s.points);
  return r;
}

// A point's sums over all its blocks (slot: the flat (head, point)), added
// in order.
template <typename A>
struct PointSums {
  A w, y, x;  // of g * sample, g * d(sample)/dy, g * d(sample)/dx
};

template <typename A, typename I>
CUDCN_DEVICE PointSums<A> sum_blocks(const A* partials, I i, int blocks) {
  PointSums<A> sums = {A(0), A(0), A(0)};
  for (int b = 0; b < blocks; ++b) {
    const A* part = partials + 3 * (i * blocks + b);
    sums.w += load(part);
    sums.y += load(part + 1);
    sums.x += load(part + 2);
  }
  return sums;
}

// Item i over (head, point, block of channel_block channels): that block's
// sums, in slot i (blocks of one point side by side).
template <typename T, typename I, typename Points>
CUDCN_DEVICE void sample_backward_points_partial(const T* grad_output, const T* value,
                                                 const Points& points, acc_t<T>* partials, I i,
                                                 int channel_block, const SamplingGeometry& s) {
  const PointChannels<I> item = point_channels(i, channel_block, s);
  const SampledPoint<acc_t<T>, I> pt = points.head(item.head).at(item.point);
  CornerRows<T> rows;
  point_sums(grad_output, value, pt, item.head, item.m, item.c_begin, item.c_end, rows, partials,
             i, s);
}

// Item i over (head, point, block of channel_block channels): grad_value (an
// accumulation-type array of value's shape, zeroed) += weight * corner
// weight * grad_output, with atomics.
template <typename T, typename I, typename Points>
CUDCN_DEVICE void sample_backward_value(const T* grad_output, const Points& points,
                                        acc_t<T>* grad_value, I i, int channel_block,
                                        const SamplingGeometry& s) {
  using A = acc_t<T>;
  const PointChannels<I> item = point_channels(i, channel_block, s);
  const SampledPoint<A, I> pt = points.head(item.head).at(item.point);
  if (!pt.corners.inside) return;
  const T* g = grad_output + item.head * s.channels;
  const I map = map_at(pt, item.m, 0, s);
  for (int j = 0; j < 4; ++j) {
    if (!pt.corners.valid[j]) continue;
    const A w = pt.corners.weight[j] * pt.weight;
    A* to = grad_value + corner_at(map, pt, j, s);
    for (int c = item.c_begin; c < item.c_end; ++c) atomic_add(to + c, w * load(g + c));
  }
}

// Item i over (n, m, level, kLanes channels): the same sums without
// atomics, query by query, point by point. With `with_points`, also each
// visited point's sums over these channels into `partials`, slot (head * P + p) *
// blocks + block: the layout of sample_backward_points_partial with
// channel_block kLanes, so that the op's reduce kernel takes either.
template <typename T, typename I, typename Points>
CUDCN_DEVICE void sample_backward_value_planes(const T* grad_output, const T* value,
                                               const Points& points, acc_t<T>* grad_value,
                                               acc_t<T>* partials, bool with_points, I i,
                                               const SamplingGeometry& s) {
  using A = acc_t<T>;
  const int blocks = (s.channels + kLanes - 1) / kLanes;
  const int block = static_cast<int>(i % blocks);
  const int c0 = block * kLanes;
  const int lanes = min(kLanes, s.channels - c0);
  const int level = static_cast<int>((i / blocks) % s.num_levels);
  const int m = static_cast<int>((i / blocks / s.num_levels) % s.heads);
  const I b = i / blocks / s.num_levels / s.heads;
  CornerRows<T> rows;
  for (I q = 0; q < s.queries; ++q) {
    const I head = (b * s.queries + q) * s.heads + m;
    const T* g = grad_output + head * s.channels + c0;
    A gc[kLanes];
    for (int l = 0; l < lanes; ++l) gc[l] = load(g + l);
    const auto head_points = points.head(head);
    for (int p = 0; p < s.points; ++p) {
      if (points.level(p) != level) continue;
      const SampledPoint<A, I> pt = head_points.at(p);
      const BilinearCorners<A, I>& q = pt.corners;
      const I map = map_at(pt, m, c0, s);
      if (with_points) {  // point_sums' arithmetic, on the lanes of g in hand
        A dot[4] = {A(0), A(0), A(0), A(0)};
        if (q.inside) {
          rows.at(value, pt, m, c0, s);
          A lane_dot[4][kLanes];
          for (int j = 0; j < 4; ++j) {
            for (int l = 0; l < kLanes; ++l) lane_dot[j][l] = A(0);
            for (int l = 0; l < lanes; ++l) lane_dot[j][l] += gc[l] * rows.load_at(q, j, l);
            dot[j] = lane_sum(lane_dot[j]);
          }
        }
        store_point_sums(q, dot, partials, (head * s.points + p) * blocks + block);
      }
      if (!q.inside) continue;
      for (int j = 0; j < 4; ++j) {
        if (!pt.corners.valid[j]) continue;
        const A w = pt.corners.weight[j] * pt.weight;
        A* to = grad_value + corner_at(map, pt, j, s);
        for (int l = 0; l < lanes; ++l) store(to + l, load(to + l) + w * gc[l]);
      }
    }
  }
}

// Deterministic mode on the GPU, item i over the four corners of each
// (head, point): the corner as an entry for segmented_sum.cu (key: the value
// row and head, (n * S + row) * M + m, or -1; source: the head's channel 0
// in grad_output; weight: corner weight * point weight).
template <typename A, typename I, typename Points>
CUDCN_DEVICE void sample_scatter_entry(const Points& points, I* keys, I* sources,
                                       A* entry_weights, I i, const SamplingGeometry& s) {
  const int j = static_cast<int>(i % 4);
  const I head = i / 4 / s.points;
  const int p = static_cast<int>(i / 4 % s.points);
  const int m = static_cast<int>(head % s.heads);
  const SampledPoint<A, I> pt = points.head(head).at(p);
  const bool live = pt.corners.inside && pt.corners.valid[j];
  store(keys + i, live ? (pt.first_row + pt.corners.index[j]) * s.heads + m : I(-1));
  store(sources + i, head * s.channels);
  store(entry_weights + i, live ? pt.corners.weight[j] * pt.weight : A(0));
}

}  // namespace cudcn
