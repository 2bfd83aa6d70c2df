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
// few flops, cheaper to recompute than to share. Grad offset/mask: one thread
// per bin (k, ph, pw) looping over the channels, so each offset and mask
// entry has one writer and needs no atomics. Grad-input by planes (the CPU's
// default, and deterministic mode): one thread per input plane (n, c) walks
// the RoIs of image n in order and accumulates into its own plane only.
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
  const int b = roi_batch_index(roi[0], s.batch);
  bin.valid = b >= 0;
  bin.batch = bin.valid ? b : 0;
  const A start_x = roi[1] * spatial_scale - A(0.5);
  const A start_y = roi[2] * spatial_scale - A(0.5);
  bin.roi_w = roi[3] * spatial_scale - A(0.5) - start_x;
  bin.roi_h = roi[4] * spatial_scale - A(0.5) - start_y;
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
    const I k = o.k, c = o.c;
    const int ph = o.ph, pw = o.pw;
    const RoIBin<A> bin = roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    const T* plane = input + (I(bin.batch) * s.channels + c) * s.height * s.width;
    A sum = A(0);
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) sum += q.weight[j] * load(plane + q.index[j]);
    });
    const A m = use_mask ? load(mask + (k * s.pooled_h + ph) * s.pooled_w + pw) : A(1);
    store(output + i, m * (sum / bin.count));
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
    const I k = o.k, c = o.c;
    const int ph = o.ph, pw = o.pw;
    const RoIBin<A> bin = roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    const A m = use_mask ? load(mask + (k * s.pooled_h + ph) * s.pooled_w + pw) : A(1);
    const A g = m * load(grad_output + i) / bin.count;
    A* plane = grad_input + (I(bin.batch) * s.channels + c) * s.height * s.width;
    for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) atomicAdd(plane + q.index[j], q.weight[j] * g);
    });
  }
}

template <typename T, typename I>
__global__ void deform_roi_pool_backward_input_planes(
    const T* __restrict__ grad_output, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, const T* __restrict__ mask, acc_t<T>* __restrict__ grad_input,
    I n, int num_rois, int use_offset, int use_mask, acc_t<T> spatial_scale, acc_t<T> gamma,
    CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int b = static_cast<int>(i / s.channels);
    const I c = i % s.channels;
    A* plane = grad_input + i * s.height * s.width;
    for (I k = 0; k < num_rois; ++k) {
      if (roi_batch_index(rois[k * 5], s.batch) != b) continue;
      for (int ph = 0; ph < s.pooled_h; ++ph) {
        for (int pw = 0; pw < s.pooled_w; ++pw) {
          const RoIBin<A> bin =
              roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
          const I at = (k * s.pooled_h + ph) * s.pooled_w + pw;
          const A m = use_mask ? load(mask + at) : A(1);
          const A g = m * load(grad_output + (k * s.channels + c) * s.pooled_h * s.pooled_w +
                               ph * s.pooled_w + pw) / bin.count;
          for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
            for (int j = 0; j < 4; ++j) plane[q.index[j]] += q.weight[j] * g;
          });
        }
      }
    }
  }
}

template <typename T, typename I>
__global__ void deform_roi_pool_backward_offset(
    const T* __restrict__ grad_output, const T* __restrict__ input,
    const acc_t<T>* __restrict__ rois, const T* __restrict__ offset, const T* __restrict__ mask,
    T* __restrict__ grad_offset, T* __restrict__ grad_mask, I n, int use_offset, int use_mask,
    int want_grad_offset, int want_grad_mask, acc_t<T> spatial_scale, acc_t<T> gamma,
    CUDCN_ROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_ROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_h) * s.pooled_w;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int pw = static_cast<int>(i % s.pooled_w);
    const int ph = static_cast<int>((i / s.pooled_w) % s.pooled_h);
    const I k = i / bins;
    const RoIBin<A> bin = roi_bin<T, I>(rois, offset, use_offset, spatial_scale, gamma, k, ph, pw, s);
    A grad_y = A(0), grad_x = A(0), grad_m = A(0);
    for (int c = 0; c < s.channels; ++c) {
      const A g = load(grad_output + (k * s.channels + c) * bins + ph * s.pooled_w + pw);
      const T* plane = input + (I(bin.batch) * s.channels + c) * s.height * s.width;
      A value = A(0), dy = A(0), dx = A(0);
      for_each_kept_sample<A, I>(bin, s.height, s.width, [&](const ClampedCorners<A, I>& q) {
        for (int j = 0; j < 4; ++j) {
          const A v = load(plane + q.index[j]);
          value += q.weight[j] * v;
          dy += q.dweight_y[j] * v;
          dx += q.dweight_x[j] * v;
        }
      });
      grad_y += g * dy;
      grad_x += g * dx;
      grad_m += g * value;
    }
    const A m = use_mask ? load(mask + k * bins + ph * s.pooled_w + pw) : A(1);
    // d(sample)/d(offset) = gamma * roi size: the offset moves the whole bin.
    // An invalid RoI may have NaN sizes; its gradients are exactly zero.
    if (want_grad_offset) {
      store(grad_offset + k * 2 * bins + ph * s.pooled_w + pw,
            bin.valid ? m * gamma * bin.roi_w * grad_x / bin.count : A(0));
      store(grad_offset + (k * 2 + 1) * bins + ph * s.pooled_w + pw,
            bin.valid ? m * gamma * bin.roi_h * grad_y / bin.count : A(0));
    }
    if (want_grad_mask) store(grad_mask + k * bins + ph * s.pooled_w + pw, grad_m / bin.count);
  }
}

}  // namespace cudcn
