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
// where Head has PointPlace<A, I> place(int p) const (where point p samples,
// in its map's pixels, and its weight); every kernel below takes it with the
// SamplingGeometry and finds the corners itself: point by point
// (bilinear_corners), or kChunk points at a time (CornerChunk: the forward's
// and the planes'). Whatever needs a division (the head's image, pixel,
// group) belongs in head(): integer divisions cost more than a point's
// arithmetic, and a thread meets a head's points in a row.
//
// Thread mappings. Forward: one thread per (head, block of channels),
// channels fastest; a thread finds each point's geometry once per kLanes
// channels, which it accumulates side by side (vector registers on the
// CPU). Gradients of the points (their location and weight): one thread per
// (head, point, block of channels) sums over its channels, then the op's
// reduce kernel adds a point's blocks in order. The value gradient, which
// many heads share: by items (the GPU's default) a thread per (head, point,
// block of channels) adding with atomics; by planes (the CPU's,
// deterministic) a thread per (n, m, level) that owns those rows of
// grad_value, walks every query's points of its level in order
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

// Where one point of one head samples, in its map's pixels, and with what
// weight: what an op's Head says of point p (`place(p)`).
template <typename A, typename I>
struct PointPlace {
  A y, x, weight;
  int height, width;  // the point's map
  I first_row;        // n * S + the map's first row
};

// The same point with its bilinear corners.
template <typename A, typename I>
struct SampledPoint {
  BilinearCorners<A, I> corners;  // indices within the point's map
  I first_row;
  A weight;
};

template <typename Head>
CUDCN_DEVICE auto point_at(const Head& head, int p) {
  const auto at = head.place(p);
  using A = decltype(at.weight);
  using I = decltype(at.first_row);
  SampledPoint<A, I> pt;
  pt.corners = bilinear_corners<A, I>(at.y, at.x, at.height, at.width);
  pt.first_row = at.first_row;
  pt.weight = at.weight;
  return pt;
}

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

// The corners of kChunk points at a time (of one head, from point p0):
// bilinear_corners' arithmetic on arrays, a point a lane, which the host
// compiler vectorizes (one point's scalar geometry cost several times its
// 16 channels' multiply-adds). Written for that: masks as ints, no early
// exit, floor(y) as the truncation minus one where that rounded up (y is in
// (-1, H) there, or set to 0 first, so the conversion stays defined). The
// same values as bilinear_corners for every point inside its window; a point
// outside has `inside` 0, its corners invalid with weight 0 and its fractions
// 0. A GPU thread takes one point at a time: its registers bound occupancy.
#ifdef CUDCN_GPU
constexpr int kChunk = 1;
#else
constexpr int kChunk = 16;
#endif

template <typename A, typename I>
struct CornerChunk {
  int inside[kChunk];
  int valid[4][kChunk];
  I offset[4][kChunk];  // corner j's row in value from channel 0 of the head (0 where invalid)
  A weight[4][kChunk];
  A frac_y[kChunk];
  A frac_x[kChunk];
  A point_weight[kChunk];

  template <typename Head>
  CUDCN_DEVICE void locate(const Head& head, int p0, int count, int m, const SamplingGeometry& s) {
    const I row_length = I(s.heads) * s.channels;
    for (int k = 0; k < count; ++k) {
      const PointPlace<A, I> at = head.place(p0 + k);
      const int h = at.height, w = at.width;
      const int in = (at.y > A(-1)) & (at.y < A(h)) & (at.x > A(-1)) & (at.x < A(w));
      const A y = in ? at.y : A(0), x = in ? at.x : A(0);
      const int y_trunc = static_cast<int>(y), x_trunc = static_cast<int>(x);
      const int y0 = y_trunc - (A(y_trunc) > y ? 1 : 0);
      const int x0 = x_trunc - (A(x_trunc) > x ? 1 : 0);
      const A fy = y - A(y0), fx = x - A(x0);
      const int y0_in = y0 >= 0, y1_in = y0 + 1 < h, x0_in = x0 >= 0, x1_in = x0 + 1 < w;
      const int v0 = in & y0_in & x0_in, v1 = in & y0_in & x1_in;
      const int v2 = in & y1_in & x0_in, v3 = in & y1_in & x1_in;
      const A hy = A(1) - fy, hx = A(1) - fx;
      const I first = (at.first_row + I(y0) * w + x0) * row_length + I(m) * s.channels;
      inside[k] = in;
      valid[0][k] = v0;
      valid[1][k] = v1;
      valid[2][k] = v2;
      valid[3][k] = v3;
      offset[0][k] = v0 ? first : I(0);
      offset[1][k] = v1 ? first + row_length : I(0);
      offset[2][k] = v2 ? first + I(w) * row_length : I(0);
      offset[3][k] = v3 ? first + I(w + 1) * row_length : I(0);
      weight[0][k] = v0 ? hy * hx : A(0);
      weight[1][k] = v1 ? hy * fx : A(0);
      weight[2][k] = v2 ? fy * hx : A(0);
      weight[3][k] = v3 ? fy * fx : A(0);
      frac_y[k] = fy;
      frac_x[k] = fx;
      point_weight[k] = at.weight;
    }
  }
};

#ifndef CUDCN_GPU
// kLanes channels as one vector of the host compiler's (GCC's and Clang's
// vector_size), for the point's dot products and their sums: written as lane
// loops, GCC's SLP vectorizer took them apart into scalars and shuffles,
// several times the work. Loads and stores still go through load and store,
// an element at a time, which the compiler merges.
template <typename A, int N>
struct LaneVector {
  typedef A type __attribute__((vector_size(N * sizeof(A))));
};
template <typename A, int N = kLanes>
using lanes_t = typename LaneVector<A, N>::type;

template <typename A, typename T>
CUDCN_DEVICE lanes_t<A> load_lanes(const T* from) {
  A lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = load(from + l);
  lanes_t<A> v;
  memcpy(&v, lane, sizeof v);
  return v;
}

template <typename A>
CUDCN_DEVICE void store_lanes(A* to, lanes_t<A> v) {
  A lane[kLanes];
  memcpy(lane, &v, sizeof v);
  for (int l = 0; l < kLanes; ++l) store(to + l, lane[l]);
}

// The upper half of v added onto the lower: lane_sum's fold.
template <typename A, int N>
CUDCN_DEVICE lanes_t<A, N / 2> fold_lanes(lanes_t<A, N> v) {
  lanes_t<A, N / 2> low, high;
  memcpy(&low, &v, sizeof low);
  memcpy(&high, reinterpret_cast<const char*>(&v) + sizeof low, sizeof high);
  return low + high;
}

// lane_sum of the kLanes lanes of v, in its order.
template <typename A>
CUDCN_DEVICE A sum_lanes(lanes_t<A> v) {
  static_assert(kLanes == 16, "four folds");
  const lanes_t<A, 2> two = fold_lanes<A, 4>(fold_lanes<A, 8>(fold_lanes<A, 16>(v)));
  A pair[2];
  memcpy(pair, &two, sizeof pair);
  return pair[0] + pair[1];
}
#endif

// A point's four corner rows of head m in value, from channel c0: a corner
// outside its map reads 0. On the host its pointer is a row of kLanes zeros
// of the thread's own, so that the lane loops load unconditionally and
// vectorize; on a GPU the load is predicated instead (a pointer into a local
// array would leave registers). Both give the same values.
template <typename T>
struct CornerRows {
  const T* row[4];
#ifdef CUDCN_GPU
  bool live[4];
#else
  T zeros[kLanes];
#endif

  CUDCN_DEVICE CornerRows() {
#ifndef CUDCN_GPU
    for (int l = 0; l < kLanes; ++l) zeros[l] = narrow<T>(acc_t<T>(0));
#endif
  }

  CUDCN_DEVICE void set(int j, const T* base, bool valid) {
#ifdef CUDCN_GPU
    row[j] = base;
    live[j] = valid;
#else
    row[j] = valid ? base : zeros;
#endif
  }

  template <typename A, typename I>
  CUDCN_DEVICE void at(const T* value, const SampledPoint<A, I>& pt, int m, int c0,
                       const SamplingGeometry& s) {
    const I map = map_at(pt, m, c0, s);
    for (int j = 0; j < 4; ++j) set(j, value + corner_at(map, pt, j, s), pt.corners.valid[j]);
  }

  // Point k of a chunk.
  template <typename A, typename I>
  CUDCN_DEVICE void at(const T* value, const CornerChunk<A, I>& chunk, int k, int c0) {
    for (int j = 0; j < 4; ++j) set(j, value + chunk.offset[j][k] + c0, chunk.valid[j][k]);
  }

  template <typename A>
  CUDCN_DEVICE A load_at(int j, int l) const {
#ifdef CUDCN_GPU
    return live[j] ? load(row[j] + l) : A(0);
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
  CornerChunk<A, I> chunk;
  const auto head_points = points.head(head);
  for (int c0 = c_begin; c0 < c_end; c0 += kLanes) {
    const int lanes = min(kLanes, c_end - c0);
    A acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = A(0);
    for (int p0 = 0; p0 < s.points; p0 += kChunk) {
      const int count = min(kChunk, s.points - p0);
      chunk.locate(head_points, p0, count, m, s);
      for (int k = 0; k < count; ++k) {
        if (!chunk.inside[k]) continue;
        rows.at(value, chunk, k, c0);
        for (int l = 0; l < lanes; ++l) {
          A sample = A(0);
          for (int j = 0; j < 4; ++j) sample += chunk.weight[j][k] * rows.template load_at<A>(j, l);
          acc[l] += sample * chunk.point_weight[k];
        }
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
CUDCN_DEVICE void store_point_sums(const A weight[4], A frac_y, A frac_x, const A dot[4],
                                   A* partials, I slot) {
  const A hy = A(1) - frac_y, ly = frac_y, hx = A(1) - frac_x, lx = frac_x;
  A sum_w = A(0);
  for (int j = 0; j < 4; ++j) sum_w += weight[j] * dot[j];
  store(partials + 3 * slot, sum_w);
  // Grouped by weight (no mixed adds and subtracts side by side, which GCC's
  // SLP vectorizer fuses into fmaddsub despite -ffp-contract=off: the same
  // sums would round differently in two kernels).
  store(partials + 3 * slot + 1, hx * (dot[2] - dot[0]) + lx * (dot[3] - dot[1]));
  store(partials + 3 * slot + 2, hy * (dot[1] - dot[0]) + ly * (dot[3] - dot[2]));
}

template <typename A, typename I>
CUDCN_DEVICE void store_point_sums(const BilinearCorners<A, I>& q, const A dot[4], A* partials,
                                   I slot) {
  store_point_sums(q.weight, q.frac_y, q.frac_x, dot, partials, slot);
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
        for (int j = 0; j < 4; ++j) lane_dot[j][l] += gc * rows.template load_at<A>(j, l);
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
  const SampledPoint<acc_t<T>, I> pt = point_at(points.head(item.head), item.point);
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
  const SampledPoint<A, I> pt = point_at(points.head(item.head), item.point);
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

// Item i over (n, m, level): the same sums without atomics, query by query,
// each block of kLanes channels, point by point. With `with_points`, also
// each visited point's sums over a block's channels into `partials`, slot
// (head * P + p) * blocks + block: the layout of
// sample_backward_points_partial with channel_block kLanes, so that the op's
// reduce kernel takes either. One item for all of a head's channels, rather
// than one per block: a row's blocks lie side by side and are met together
// (ms_deform_attn's encoder at 8 heads of 32 channels: the backward 0.75-0.8x
// the time); the points' geometry is found again for each block.
template <typename T, typename I, typename Points>
CUDCN_DEVICE void sample_backward_value_planes(const T* grad_output, const T* value,
                                               const Points& points, acc_t<T>* grad_value,
                                               acc_t<T>* partials, bool with_points, I i,
                                               const SamplingGeometry& s) {
  using A = acc_t<T>;
  const int blocks = (s.channels + kLanes - 1) / kLanes;
  const int level = static_cast<int>(i % s.num_levels);
  const int m = static_cast<int>((i / s.num_levels) % s.heads);
  const I b = i / s.num_levels / s.heads;
  // The level's points, [first, end): every op lists a head's points level by
  // level, but the test below keeps any other order right too.
  int first = s.points, end = 0;
  for (int p = 0; p < s.points; ++p) {
    if (points.level(p) == level) {
      first = min(first, p);
      end = p + 1;
    }
  }
  CornerRows<T> rows;
  CornerChunk<A, I> chunk;
  for (I q = 0; q < s.queries; ++q) {
    const I head = (b * s.queries + q) * s.heads + m;
    const auto head_points = points.head(head);
    for (int block = 0; block < blocks; ++block) {
      const int c0 = block * kLanes;
      const int lanes = min(kLanes, s.channels - c0);
      const T* g = grad_output + head * s.channels + c0;
      A gc[kLanes];
      for (int l = 0; l < lanes; ++l) gc[l] = load(g + l);
#ifndef CUDCN_GPU
      lanes_t<A> g_lanes{};
      if (lanes == kLanes) g_lanes = load_lanes<A>(g);
#endif
      for (int p0 = first; p0 < end; p0 += kChunk) {
        const int count = min(kChunk, end - p0);
        chunk.locate(head_points, p0, count, m, s);
        for (int k = 0; k < count; ++k) {
          const int p = p0 + k;
          if (points.level(p) != level) continue;
          if (with_points) {  // point_sums' arithmetic, on the lanes of g in hand
            A dot[4] = {A(0), A(0), A(0), A(0)};
            if (chunk.inside[k]) {
              rows.at(value, chunk, k, c0);
#ifndef CUDCN_GPU
              if (lanes == kLanes) {
                for (int j = 0; j < 4; ++j) {
                  dot[j] = sum_lanes<A>(lanes_t<A>{} + g_lanes * load_lanes<A>(rows.row[j]));
                }
              } else
#endif
              {
                A lane_dot[4][kLanes];
                for (int j = 0; j < 4; ++j) {
                  for (int l = 0; l < kLanes; ++l) lane_dot[j][l] = A(0);
                  for (int l = 0; l < lanes; ++l) lane_dot[j][l] += gc[l] * rows.template load_at<A>(j, l);
                  dot[j] = lane_sum(lane_dot[j]);
                }
              }
            }
            const A weight[4] = {chunk.weight[0][k], chunk.weight[1][k], chunk.weight[2][k],
                                 chunk.weight[3][k]};
            store_point_sums(weight, chunk.frac_y[k], chunk.frac_x[k], dot, partials,
                             (head * s.points + p) * blocks + block);
          }
          if (!chunk.inside[k]) continue;
          for (int j = 0; j < 4; ++j) {
            if (!chunk.valid[j][k]) continue;
            const A w = chunk.weight[j][k] * chunk.point_weight[k];
            A* to = grad_value + chunk.offset[j][k] + c0;
#ifndef CUDCN_GPU
            if (lanes == kLanes) {
              store_lanes<A>(to, load_lanes<A>(to) + w * g_lanes);
              continue;
            }
#endif
            for (int l = 0; l < lanes; ++l) store(to + l, load(to + l) + w * gc[l]);
          }
        }
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
  const SampledPoint<A, I> pt = point_at(points.head(head), p);
  const bool live = pt.corners.inside && pt.corners.valid[j];
  store(keys + i, live ? (pt.first_row + pt.corners.index[j]) * s.heads + m : I(-1));
  store(sources + i, head * s.channels);
  store(entry_weights + i, live ? pt.corners.weight[j] * pt.weight : A(0));
}

}  // namespace cudcn
