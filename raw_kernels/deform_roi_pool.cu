// Deformable RoI pooling (mmcv semantics; RoIAlign with aligned=True when
// there is no offset), with the modulated variant's mask.
//
// Layouts (C-contiguous): input (N, C, H, W); rois (K, 5) in the
// accumulation type: batch index, x1, y1, x2, y2; offset (K, 2, PH, PW),
// channel 0 = x, 1 = y; mask (K, 1, PH, PW); output (K, C, PH, PW).
//
// Thread mapping. Forward and grad-input: one thread per output element
// (k, c, ph, pw), pw fastest, so neighbouring threads write neighbouring
// outputs and read nearby points of one input plane; the bin geometry is a
// few flops, cheaper to recompute than to share. On the CPU (the plane
// strategy) the forward reads a channels-last copy of the input instead
// (deform_roi_pool_forward_pixels). Grad-input scatters with
// atomics (the GPU's default); by planes (the CPU's default) one thread per
// input plane (n, c) walks the RoIs of image n in order and accumulates into
// its own plane only; sorted (deterministic mode on the GPU) lists every
// sample corner as an entry for segmented_sum.cu. Grad offset/mask: one
// thread per (bin, block of channels) sums its channels
// (backward_offset_partial; on the CPU backward_offset_partial_planes, sample
// by sample), a second kernel adds the blocks in order
// (backward_offset_reduce): each offset and mask entry has one writer.
#include "cudcn_common.cuh"

namespace cudcn {

struct RoIPoolGeometry {
  int batch, channels, height, width, pooled_h, pooled_w, sampling_ratio;
};

#define CUDCN_ROI_POOL_GEOMETRY_PARAMS                                                   \
  int batch, int channels, int height, int width, int pooled_h, int pooled_w,           \
      int sampling_ratio
#define CUDCN_ROI_POOL_GEOMETRY                                                          \
  const RoIPoolGeometry s = {batch,    channels, height,        width,                   \
                             pooled_h, pooled_w, sampling_ratio}

// Samples j in [0, grid) sit at first + (j + 0.5) * step; those that can lie
// in [-1, size] (kept by RoIAlign's test) are within [begin, end). The range
// is a superset, widened against rounding, and each sample is still tested:
// it only bounds the loop, so that a huge RoI costs no more than the image.
template <typename A>
CUDCN_DEVICE void kept_sample_range(A first, A step, int grid, int size, int& begin, int& end) {
  const bool finite = first - first == A(0) && step - step == A(0);  // false for NaN, inf
  begin = 0;
  end = finite ? grid : 0;
  if (!finite || step == A(0)) return;
  // The common case, a bin inside the image: every sample may be kept.
  const A first_sample = first + A(0.5) * step, last_sample = first + (A(grid) - A(0.5)) * step;
  if (first_sample >= A(0) && first_sample <= A(size - 1) && last_sample >= A(0) &&
      last_sample <= A(size - 1))
    return;
  double lo = (-1.0 - double(first)) / double(step) - 0.5;
  double hi = (double(size) - double(first)) / double(step) - 0.5;
  if (lo > hi) {
    const double t = lo;
    lo = hi;
    hi = t;
  }
  lo = floor(lo) - 2.0;
  hi = ceil(hi) + 3.0;
  begin = lo <= 0.0 ? 0 : (lo >= double(grid) ? grid : static_cast<int>(lo));
  end = hi <= 0.0 ? 0 : (hi >= double(grid) ? grid : static_cast<int>(hi));
}

template <typename A>
struct RoIBin {
  bool valid;  // batch index in [0, N) and a finite sampling grid
  int batch;
  A y0, x0;  // origin of the bin, offset shift included
  A bin_h, bin_w;
  int grid_h, grid_w;
  int y_begin, y_end, x_begin, x_end;
  A count;  // max(grid_h * grid_w, 1), the divisor of the mean
  A roi_h, roi_w;

  // Same association as torchvision's roi_align, for bitwise-equal samples.
  CUDCN_DEVICE A y(int iy) const { return y0 + (A(iy) + A(0.5)) * bin_h / A(grid_h); }
  CUDCN_DEVICE A x(int ix) const { return x0 + (A(ix) + A(0.5)) * bin_w / A(grid_w); }
};

template <typename A>
CUDCN_DEVICE int sample_grid(A roi_size, int pooled, int sampling_ratio, bool& ok) {
  const A g = sampling_ratio > 0 ? A(sampling_ratio) : ceil(roi_size / A(pooled));
  if (!(g < A(2147483647.0))) ok = false;  // NaN or absurd: the RoI pools zeros
  return ok && g > A(0) ? static_cast<int>(g) : 0;
}

template <typename T, typename I>
CUDCN_DEVICE RoIBin<acc_t<T>> roi_bin(const acc_t<T>* rois, const T* offset, int use_offset,
                                      acc_t<T> spatial_scale, acc_t<T> gamma, I k, int ph,
                                      int pw, const RoIPoolGeometry& s) {
  using A = acc_t<T>;
  const A* roi = rois + k * 5;
  RoIBin<A> bin;
  const int b = roi_batch_index(load(roi), s.batch);
  bin.valid = b >= 0;
  bin.batch = bin.valid ? b : 0;
  const A start_x = load(roi + 1) * spatial_scale - A(0.5);
  const A start_y = load(roi + 2) * spatial_scale - A(0.5);
  bin.roi_w = load(roi + 3) * spatial_scale - A(0.5) - start_x;
  bin.roi_h = load(roi + 4) * spatial_scale - A(0.5) - start_y;
  // Finite sizes imply finite corners (inf - inf is NaN).
  bin.valid = bin.valid && bin.roi_w - bin.roi_w == A(0) && bin.roi_h - bin.roi_h == A(0);
  bin.bin_h = bin.roi_h / A(s.pooled_h);
  bin.bin_w = bin.roi_w / A(s.pooled_w);
  bin.grid_h = sample_grid(bin.roi_h, s.pooled_h, s.sampling_ratio, bin.valid);
  bin.grid_w = sample_grid(bin.roi_w, s.pooled_w, s.sampling_ratio, bin.valid);
  A shift_x = A(0), shift_y = A(0);
  if (use_offset) {
    const I at = (k * 2 * s.pooled_h + ph) * s.pooled_w + pw;
    shift_x = gamma * bin.roi_w * load(offset + at);
    shift_y = gamma * bin.roi_h * load(offset + at + I(s.pooled_h) * s.pooled_w);
  }
  bin.y0 = start_y + shift_y + A(ph) * bin.bin_h;
  bin.x0 = start_x + shift_x + A(pw) * bin.bin_w;
  const A count = A(bin.grid_h) * A(bin.grid_w);
  bin.count = count > A(1) ? count : A(1);
  if (!bin.valid) bin.grid_h = bin.grid_w = 0;
  kept_sample_range(bin.y0, bin.bin_h / A(bin.grid_h > 0 ? bin.grid_h : 1), bin.grid_h,
                    s.height, bin.y_begin, bin.y_end);
  kept_sample_range(bin.x0, bin.bin_w / A(bin.grid_w > 0 ? bin.grid_w : 1), bin.grid_w,
                    s.width, bin.x_begin, bin.x_end);
  return bin;
}

// Output element i of (K, C, PH, PW).
template <typename I>
struct RoIPoolOutput {
  I k, c;
  int ph, pw;
};

template <typename I>
CUDCN_DEVICE RoIPoolOutput<I> roi_pool_output(I i, const RoIPoolGeometry& s) {
  RoIPoolOutput<I> o;
  o.pw = static_cast<int>(i % s.pooled_w);
  o.ph = static_cast<int>((i / s.pooled_w) % s.pooled_h);
  o.c = (i / s.pooled_w / s.pooled_h) % s.channels;
  o.k = i / s.pooled_w / s.pooled_h / s.channels;
  return o;
}

template <typename A>
CUDCN_DEVICE bool roi_align_keeps(A y, A x, int height, int width) {
  return y >= A(-1) && y <= A(height) && x >= A(-1) && x <= A(width);  // false for NaN
}

// Calls visit(corners) for every sample of the bin that RoIAlign keeps.
template <typename A, typename I, typename Visit>
CUDCN_DEVICE void for_each_kept_sample(const RoIBin<A>& bin, int height, int width,
                                       Visit&& visit) {
  for (int iy = bin.y_begin; iy < bin.y_end; ++iy) {
    const A y = bin.y(iy);
    for (int ix = bin.x_begin; ix < bin.x_end; ++ix) {
      const A x = bin.x(ix);
      if (roi_align_keeps(y, x, height, width)) visit(clamped_corners<A, I>(y, x, height, width));
    }
  }
}

template <typename T, typename I>
__global__ void deform_roi_pool_forward(const T* __restrict__ input,
                                        const acc_t<T>* __restrict__ rois,
                                        const T* __restrict__ offset, const T* __restrict__ mask,
                                        T* __restrict__ output, I n, int use_offset, int use_mask,
                                        acc_t<T> spatial_scale, acc_t<T> gamma,
                                        CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const RoIPoolOutput<I> o = roi_pool_output(i, s);
    const RoIBin<A> bin =
        roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, o.k, o.ph, o.pw, s);
    const T* plane = input + (I(bin.batch) * s.channels + o.c) * s.height * s.width;
    A sum = A(0);
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) sum += q.weight[j] * load(plane + q.index[j]);
    });
    const A m = use_mask ? load(mask + (o.k * s.pooled_h + o.ph) * s.pooled_w + o.pw) : A(1);
    store(output + i, m * (sum / bin.count));
  }
}

// The CPU's forward (the plane strategy) reads a channels-last copy of the
// input, pixels (N, H, W, C): a thread per (bin, block of kPixelChannels
// channels) finds each kept sample's corners once for the block's channels,
// as RoIAlign's CPU implementations do, and reads each corner's channels side
// by side (a loop the host compiler vectorizes; from (N, C, H, W) planes each
// channel was a plane apart).
constexpr int kPixelChannels = 128;

// The input (N, C, H, W) as pixels (N, H, W, C): one thread per input row of
// one image.
template <typename T, typename I>
__global__ void deform_roi_pool_fill_pixels(const T* __restrict__ input, T* __restrict__ pixels,
                                            I n, CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  const I plane = I(s.height) * s.width;
  CUDCN_KERNEL_LOOP(row, I, n) {
    const int h = static_cast<int>(row % s.height);
    const I b = row / s.height;
    row_to_pixels(input + b * s.channels * plane + I(h) * s.width, plane, s.channels, s.width,
                  pixels + row * s.width * s.channels);
  }
}

template <typename T, typename I>
__global__ void deform_roi_pool_forward_pixels(
    const T* __restrict__ pixels, const acc_t<T>* __restrict__ rois, const T* __restrict__ offset,
    const T* __restrict__ mask, T* __restrict__ output, I n, int use_offset, int use_mask,
    acc_t<T> spatial_scale, acc_t<T> gamma, CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  const int blocks = (s.channels + kPixelChannels - 1) / kPixelChannels;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I bin_index = i / blocks;  // k * PH * PW + ph * PW + pw
    const int c0 = static_cast<int>(i % blocks) * kPixelChannels;
    const int count = min(kPixelChannels, s.channels - c0);
    const int pw = static_cast<int>(bin_index % s.pooled_w);
    const int ph = static_cast<int>((bin_index / s.pooled_w) % s.pooled_h);
    const I k = bin_index / bins;
    const RoIBin<A> bin =
      roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    const T* image = pixels + I(bin.batch) * s.height * s.width * s.channels + c0;
    A sums[kPixelChannels];
    for (int t = 0; t < count; ++t) sums[t] = A(0);
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      const T* p0 = image + q.index[0] * s.channels;
      const T* p1 = image + q.index[1] * s.channels;
      const T* p2 = image + q.index[2] * s.channels;
      const T* p3 = image + q.index[3] * s.channels;
      for (int t = 0; t < count; ++t) {
        sums[t] += q.weight[0] * load(p0 + t) + q.weight[1] * load(p1 + t) +
                   q.weight[2] * load(p2 + t) + q.weight[3] * load(p3 + t);
      }
    });
    const A m = use_mask ? load(mask + bin_index) : A(1);
    T* out = output + (k * s.channels + c0) * bins + ph * s.pooled_w + pw;
    for (int t = 0; t < count; ++t) store(out + t * bins, m * (sums[t] / bin.count));
  }
}

// grad_input, in the accumulation type, receives every sample's share by
// atomics: samples of different bins and RoIs may share input points.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_input(
    const T* __restrict__ grad_output, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, const T* __restrict__ mask, acc_t<T>* __restrict__ grad_input,
    I n, int use_offset, int use_mask, acc_t<T> spatial_scale, acc_t<T> gamma,
    CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const RoIPoolOutput<I> o = roi_pool_output(i, s);
    const RoIBin<A> bin =
        roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, o.k, o.ph, o.pw, s);
    const A m = use_mask ? load(mask + (o.k * s.pooled_h + o.ph) * s.pooled_w + o.pw) : A(1);
    const A g = m * load(grad_output + i) / bin.count;
    A* plane = grad_input + (I(bin.batch) * s.channels + o.c) * s.height * s.width;
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) atomic_add(plane + q.index[j], q.weight[j] * g);
    });
  }
}

constexpr int kRoIChannels = 16;

// The CPU's grad-input: a thread per (image, block of kRoIChannels channels)
// walks the image's RoIs, bins and kept samples in order, finding each
// sample's corners once for the block, and accumulates into its own planes.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_input_planes(
    const T* __restrict__ grad_output, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, const T* __restrict__ mask, acc_t<T>* __restrict__ grad_input,
    I n, int num_rois, int use_offset, int use_mask, acc_t<T> spatial_scale, acc_t<T> gamma,
    CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  const int blocks = (s.channels + kRoIChannels - 1) / kRoIChannels;
  const I plane_size = I(s.height) * s.width;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int b = static_cast<int>(i / blocks);
    const int c0 = static_cast<int>(i % blocks) * kRoIChannels;
    const int count = min(kRoIChannels, s.channels - c0);
    A* planes = grad_input + (I(b) * s.channels + c0) * plane_size;
    for (I k = 0; k < num_rois; ++k) {
      if (roi_batch_index(load(rois + k * 5), s.batch) != b) continue;
      for (int ph = 0; ph < s.pooled_h; ++ph) {
        for (int pw = 0; pw < s.pooled_w; ++pw) {
          const RoIBin<A> bin =
              roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
          const I at = (k * s.pooled_h + ph) * s.pooled_w + pw;
          const A m = use_mask ? load(mask + at) : A(1);
          const T* gout = grad_output + (k * s.channels + c0) * bins + ph * s.pooled_w + pw;
          A g[kRoIChannels];
          for (int t = 0; t < count; ++t) g[t] = m * load(gout + t * bins) / bin.count;
          for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
            for (int t = 0; t < count; ++t) {
              A* plane = planes + t * plane_size;
              for (int j = 0; j < 4; ++j) {
                store(plane + q.index[j], load(plane + q.index[j]) + q.weight[j] * g[t]);
              }
            }
          });
        }
      }
    }
  }
}

// Deterministic grad-input, first step: the entries of every kept sample's
// corners of bin i = (k, ph, pw), for segmented_sum.cu: key = b * H * W +
// y * W + x, source = the grad_output index of (k, channel 0, ph, pw), weight
// = mask * bilinear weight / count. Run twice: with fill = 0 it stores each
// bin's number of entries in entry_first[i]; with fill = 1, entry_first[i] is
// where the bin's entries start (the exclusive sum of those counts).
template <typename T, typename I>
__global__ void deform_roi_pool_scatter_entries(
    const acc_t<T>* __restrict__ rois, const T* __restrict__ offset, const T* __restrict__ mask,
    I* __restrict__ entry_first, I* __restrict__ keys, I* __restrict__ sources,
    acc_t<T>* __restrict__ weights, I n, int fill, int use_offset, int use_mask,
    acc_t<T> spatial_scale, acc_t<T> gamma, CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  const I plane = I(s.height) * s.width;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int pw = static_cast<int>(i % s.pooled_w);
    const int ph = static_cast<int>((i / s.pooled_w) % s.pooled_h);
    const I k = i / bins;
    const RoIBin<A> bin =
        roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    if (!fill) {
      I count = 0;
      for_each_kept_sample<A, I>(bin, s.height, s.width,
                                 [&](const ClampedCorners<A, I>&) { count += 4; });
      store(entry_first + i, count);
      continue;
    }
    const A m = use_mask ? load(mask + i) : A(1);
    const I source = k * s.channels * bins + ph * s.pooled_w + pw;
    I e = load(entry_first + i);
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j, ++e) {
        store(keys + e, I(bin.batch) * plane + q.index[j]);
        store(sources + e, source);
        store(weights + e, m * q.weight[j] / bin.count);
      }
    });
  }
}

// The offset and mask gradients' sums over one block of channels of bin
// (k, ph, pw), before the factors of the bin: partials (blocks, 3, K * PH * PW)
// holds the sums of grad_output * d(sample sum)/dy, * d/dx, and * sample sum.
// Work item i is (block, bin). kSamplesOutside orders the loops: channels
// outside the samples (the GPU's kernel: each thread's block is a few
// channels, and this order keeps the default path within 64 registers), or
// samples outside the channels (the CPU's, whose threads take all channels of
// a bin: each sample's corners and weights are computed once, not once a
// channel; 512 RoIs, 7x7, 2x2 samples on (2, 256, 50, 68): 177 -> 39 ms).
template <bool kSamplesOutside, typename T, typename I>
CUDCN_DEVICE void roi_offset_partial_sums(const T* grad_output, const T* input,
                                          const acc_t<T>* rois, const T* offset,
                                          acc_t<T>* partials, I i, I n, int use_offset,
                                          int channel_block, acc_t<T> spatial_scale,
                                          acc_t<T> gamma, const RoIPoolGeometry& s) {
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  const int blocks = (s.channels + channel_block - 1) / channel_block;
  const I all_bins = n / blocks;
  const I bin_index = i % all_bins;
  const int block = static_cast<int>(i / all_bins);
  const int pw = static_cast<int>(bin_index % s.pooled_w);
  const int ph = static_cast<int>((bin_index / s.pooled_w) % s.pooled_h);
  const I k = bin_index / bins;
  const RoIBin<A> bin =
      roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
  const int c_begin = block * channel_block;
  const int c_end = min(s.channels, c_begin + channel_block);
  const T* grads = grad_output + k * s.channels * bins + ph * s.pooled_w + pw;
  const T* planes = input + I(bin.batch) * s.channels * s.height * s.width;
  // One channel's terms at one sample.
  auto add_sample = [&](int c, const ClampedCorners<A, I>& q, A& value, A& dy, A& dx) {
    const T* plane = planes + I(c) * s.height * s.width;
    for (int j = 0; j < 4; ++j) {
      const A v = load(plane + q.index[j]);
      value += q.weight[j] * v;
      dy += q.dweight_y[j] * v;
      dx += q.dweight_x[j] * v;
    }
  };
  A grad_y = A(0), grad_x = A(0), grad_m = A(0);
  if constexpr (kSamplesOutside) {
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int c = c_begin; c < c_end; ++c) {
        const A g = load(grads + I(c) * bins);
        A value = A(0), dy = A(0), dx = A(0);
        add_sample(c, q, value, dy, dx);
        grad_y += g * dy;
        grad_x += g * dx;
        grad_m += g * value;
      }
    });
  } else {
    for (int c = c_begin; c < c_end; ++c) {
      const A g = load(grads + I(c) * bins);
      A value = A(0), dy = A(0), dx = A(0);
      for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
        add_sample(c, q, value, dy, dx);
      });
      grad_y += g * dy;
      grad_x += g * dx;
      grad_m += g * value;
    }
  }
  A* out = partials + I(block) * 3 * all_bins + bin_index;
  store(out, grad_y);
  store(out + all_bins, grad_x);
  store(out + 2 * all_bins, grad_m);
}

#define CUDCN_ROI_OFFSET_PARTIAL_PARAMS                                                  \
  const T* __restrict__ grad_output, const T* __restrict__ input,                       \
      const acc_t<T>* __restrict__ rois, const T* __restrict__ offset,                  \
      acc_t<T>* __restrict__ partials, I n, int use_offset, int channel_block,          \
      acc_t<T> spatial_scale, acc_t<T> gamma, CUDCN_ROI_POOL_GEOMETRY_PARAMS

template <typename T, typename I>
__global__ void deform_roi_pool_backward_offset_partial(CUDCN_ROI_OFFSET_PARTIAL_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  CUDCN_KERNEL_LOOP(i, I, n) {
    roi_offset_partial_sums<false, T, I>(grad_output, input, rois, offset, partials, i, n,
                                         use_offset, channel_block, spatial_scale, gamma, s);
  }
}

// The plane strategy's (the CPU's) order; on a GPU it takes more registers
// (79 against 56 for float32 at sm_80), so the items and sorted strategies
// keep the kernel above.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_offset_partial_planes(CUDCN_ROI_OFFSET_PARTIAL_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  CUDCN_KERNEL_LOOP(i, I, n) {
    roi_offset_partial_sums<true, T, I>(grad_output, input, rois, offset, partials, i, n,
                                        use_offset, channel_block, spatial_scale, gamma, s);
  }
}

// Adds the blocks' partials in block order: thread (component, bin) writes
// the x offset gradient (component 0), the y one (1) or the mask's (2).
// d(sample)/d(offset) = gamma * roi size: the offset moves the whole bin. An
// invalid RoI may have NaN sizes; its gradients are exactly zero.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_offset_reduce(
    const acc_t<T>* __restrict__ partials, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, const T* __restrict__ mask, T* __restrict__ grad_offset,
    T* __restrict__ grad_mask, I n, int blocks, int use_offset, int use_mask,
    int want_grad_offset, int want_grad_mask, acc_t<T> spatial_scale, acc_t<T> gamma,
    CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  const I all_bins = n / 3;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int component = static_cast<int>(i / all_bins);
    const I bin_index = i % all_bins;
    if (component == 2 ? !want_grad_mask : !want_grad_offset) continue;
    const int pw = static_cast<int>(bin_index % s.pooled_w);
    const int ph = static_cast<int>((bin_index / s.pooled_w) % s.pooled_h);
    const I k = bin_index / bins;
    const RoIBin<A> bin =
        roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    // partials hold y, x, mask; the offset's channel 0 is x.
    const int part = component == 0 ? 1 : (component == 1 ? 0 : 2);
    A sum = A(0);
    for (int b = 0; b < blocks; ++b) sum += load(partials + (I(b) * 3 + part) * all_bins + bin_index);
    if (component == 2) {
      store(grad_mask + bin_index, sum / bin.count);
      continue;
    }
    const A m = use_mask ? load(mask + bin_index) : A(1);
    const A size = component == 0 ? bin.roi_w : bin.roi_h;
    store(grad_offset + (k * 2 + component) * bins + ph * s.pooled_w + pw,
          bin.valid ? m * gamma * size * sum / bin.count : A(0));
  }
}

}  // namespace cudcn
