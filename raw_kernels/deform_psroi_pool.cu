// Deformable position-sensitive RoI pooling (R-FCN), with the semantics of
// the original Deformable-ConvNets operator.
//
// Layouts (C-contiguous): input (N, output_dim * group_size^2, H, W); rois
// (K, 5) in the accumulation type; offset (K, 2 * num_classes, part, part),
// channel 2c = x and 2c + 1 = y of class c; output (K, output_dim, P, P) with
// P = pooled_size.
//
// Thread mapping. Forward and grad-input: one thread per output element
// (k, ctop, ph, pw), pw fastest (coalesced output writes, nearby input
// reads). The per-bin count of kept samples that the backward needs is
// recomputed there from the same geometry, so no hidden state passes from
// forward to backward. Grad-input scatters with atomics (the GPU's default);
// by planes (the CPU's default) one thread per input plane (n, c), which only
// the bins of one (ctop, gi, gj) read, walks the RoIs of image n in order and
// accumulates into its own plane only; sorted (deterministic mode on the GPU)
// lists every sample corner as an entry for segmented_sum.cu. Grad offset:
// one thread per output element computes its bin's derivative
// (backward_offset_partial), then one thread per offset cell adds, in a
// fixed order, those of the bins and channels that read it
// (backward_offset_reduce): each offset entry has one writer.
#include "cudcn_common.cuh"

namespace cudcn {

struct PSRoIPoolGeometry {
  int batch, channels, height, width, output_dim, group_size, pooled_size, part_size,
      sample_per_part, num_classes;
};

#define CUDCN_PSROI_POOL_GEOMETRY_PARAMS                                                  \
  int batch, int channels, int height, int width, int output_dim, int group_size,        \
      int pooled_size, int part_size, int sample_per_part, int num_classes
#define CUDCN_PSROI_POOL_GEOMETRY                                                         \
  const PSRoIPoolGeometry s = {batch,       channels,  height,          width,            \
                               output_dim,  group_size, pooled_size,    part_size,        \
                               sample_per_part, num_classes}

template <typename A>
struct PSRoIBin {
  bool valid;  // batch index in [0, N)
  int batch;
  int channel;         // input channel read by this (ctop, ph, pw)
  int class_id, part_h, part_w;
  A h0, w0;            // first sample, offset shift included
  A sub_h, sub_w;      // between samples
  A roi_h, roi_w;

  CUDCN_DEVICE A h(int ih) const { return h0 + A(ih) * sub_h; }
  CUDCN_DEVICE A w(int iw) const { return w0 + A(iw) * sub_w; }
};

template <typename T, typename I>
CUDCN_DEVICE PSRoIBin<acc_t<T>> psroi_bin(const acc_t<T>* rois, const T* offset, int use_offset,
                                          acc_t<T> spatial_scale, acc_t<T> trans_std, I k,
                                          int ctop, int ph, int pw, const PSRoIPoolGeometry& s) {
  using A = acc_t<T>;
  const A* roi = rois + k * 5;
  PSRoIBin<A> bin;
  const int b = roi_batch_index(load(roi), s.batch);
  bin.valid = b >= 0;
  bin.batch = bin.valid ? b : 0;
  const A start_w = round(load(roi + 1)) * spatial_scale - A(0.5);
  const A start_h = round(load(roi + 2)) * spatial_scale - A(0.5);
  const A roi_w = (round(load(roi + 3)) + A(1)) * spatial_scale - A(0.5) - start_w;
  const A roi_h = (round(load(roi + 4)) + A(1)) * spatial_scale - A(0.5) - start_h;
  bin.roi_w = roi_w > A(0.1) ? roi_w : A(0.1);  // NaN becomes 0.1 too; its samples stay NaN
  bin.roi_h = roi_h > A(0.1) ? roi_h : A(0.1);
  const A bin_w = bin.roi_w / A(s.pooled_size), bin_h = bin.roi_h / A(s.pooled_size);
  bin.sub_w = bin_w / A(s.sample_per_part);
  bin.sub_h = bin_h / A(s.sample_per_part);
  // floor(i / pooled * part) and floor(i * group / pooled), in exact integers.
  bin.part_h = ph * s.part_size / s.pooled_size;
  bin.part_w = pw * s.part_size / s.pooled_size;
  const int gh = min(ph * s.group_size / s.pooled_size, s.group_size - 1);
  const int gw = min(pw * s.group_size / s.pooled_size, s.group_size - 1);
  bin.channel = (ctop * s.group_size + gh) * s.group_size + gw;
  bin.class_id = ctop / (s.output_dim / s.num_classes);
  A trans_x = A(0), trans_y = A(0);
  if (use_offset) {
    const I cell = I(bin.part_h) * s.part_size + bin.part_w;
    const I plane = I(s.part_size) * s.part_size;
    trans_x = load(offset + (k * s.num_classes + bin.class_id) * 2 * plane + cell) * trans_std;
    trans_y = load(offset + ((k * s.num_classes + bin.class_id) * 2 + 1) * plane + cell) * trans_std;
  }
  bin.w0 = A(pw) * bin_w + start_w + trans_x * bin.roi_w;
  bin.h0 = A(ph) * bin_h + start_h + trans_y * bin.roi_h;
  return bin;
}

// Output element i of (K, output_dim, P, P).
template <typename I>
struct PSRoIPoolOutput {
  I k;
  int ctop, ph, pw;
};

template <typename I>
CUDCN_DEVICE PSRoIPoolOutput<I> psroi_pool_output(I i, const PSRoIPoolGeometry& s) {
  PSRoIPoolOutput<I> o;
  o.pw = static_cast<int>(i % s.pooled_size);
  o.ph = static_cast<int>((i / s.pooled_size) % s.pooled_size);
  o.ctop = static_cast<int>((i / s.pooled_size / s.pooled_size) % s.output_dim);
  o.k = i / s.pooled_size / s.pooled_size / s.output_dim;
  return o;
}

template <typename A>
CUDCN_DEVICE bool psroi_keeps(A h, A w, int height, int width) {
  return w >= A(-0.5) && w <= A(width) - A(0.5) && h >= A(-0.5) &&
         h <= A(height) - A(0.5);  // false for NaN
}

template <typename A>
CUDCN_DEVICE int psroi_kept(const PSRoIBin<A>& bin, const PSRoIPoolGeometry& s) {
  int kept = 0;
  if (!bin.valid) return 0;
  for (int ih = 0; ih < s.sample_per_part; ++ih)
    for (int iw = 0; iw < s.sample_per_part; ++iw)
      kept += psroi_keeps(bin.h(ih), bin.w(iw), s.height, s.width) ? 1 : 0;
  return kept;
}

// Calls visit(corners) for every kept sample of a valid bin.
template <typename A, typename I, typename Visit>
CUDCN_DEVICE void for_each_kept_sample(const PSRoIBin<A>& bin, const PSRoIPoolGeometry& s,
                                       Visit&& visit) {
  for (int ih = 0; bin.valid && ih < s.sample_per_part; ++ih) {
    for (int iw = 0; iw < s.sample_per_part; ++iw) {
      const A h = bin.h(ih), w = bin.w(iw);
      if (psroi_keeps(h, w, s.height, s.width)) visit(clamped_corners<A, I>(h, w, s.height, s.width));
    }
  }
}

template <typename T, typename I>
__global__ void deform_psroi_pool_forward(const T* __restrict__ input,
                                          const acc_t<T>* __restrict__ rois,
                                          const T* __restrict__ offset, T* __restrict__ output,
                                          I n, int use_offset, acc_t<T> spatial_scale,
                                          acc_t<T> trans_std, CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PSRoIPoolOutput<I> o = psroi_pool_output(i, s);
    const PSRoIBin<A> bin = psroi_bin<T, I>(rois, offset, use_offset, spatial_scale, trans_std,
                                            o.k, o.ctop, o.ph, o.pw, s);
    const T* plane = input + (I(bin.batch) * s.channels + bin.channel) * s.height * s.width;
    A sum = A(0);
    int kept = 0;
    for_each_kept_sample<A, I>(bin, s, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) sum += q.weight[j] * load(plane + q.index[j]);
      ++kept;
    });
    store(output + i, kept ? sum / A(kept) : A(0));
  }
}

template <typename T, typename I>
__global__ void deform_psroi_pool_backward_input(
    const T* __restrict__ grad_output, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, acc_t<T>* __restrict__ grad_input, I n, int use_offset,
    acc_t<T> spatial_scale, acc_t<T> trans_std, CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PSRoIPoolOutput<I> o = psroi_pool_output(i, s);
    const PSRoIBin<A> bin = psroi_bin<T, I>(rois, offset, use_offset, spatial_scale, trans_std,
                                            o.k, o.ctop, o.ph, o.pw, s);
    const int kept = psroi_kept(bin, s);
    if (!kept) continue;
    const A g = load(grad_output + i) / A(kept);
    A* plane = grad_input + (I(bin.batch) * s.channels + bin.channel) * s.height * s.width;
    for_each_kept_sample<A, I>(bin, s, [&](const ClampedCorners<A, I>& q) {
      for (int j = 0; j < 4; ++j) atomic_add(plane + q.index[j], q.weight[j] * g);
    });
  }
}

template <typename T, typename I>
__global__ void deform_psroi_pool_backward_input_planes(
    const T* __restrict__ grad_output, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, acc_t<T>* __restrict__ grad_input, I n, int num_rois,
    int use_offset, acc_t<T> spatial_scale, acc_t<T> trans_std,
    CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const I bins = I(s.pooled_size) * s.pooled_size;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int b = static_cast<int>(i / s.channels);
    const int c = static_cast<int>(i % s.channels);
    const int ctop = c / (s.group_size * s.group_size);
    const int gi = (c / s.group_size) % s.group_size, gj = c % s.group_size;
    A* plane = grad_input + i * s.height * s.width;
    for (I k = 0; k < num_rois; ++k) {
      if (roi_batch_index(load(rois + k * 5), s.batch) != b) continue;
      for (int ph = 0; ph < s.pooled_size; ++ph) {
        if (min(ph * s.group_size / s.pooled_size, s.group_size - 1) != gi) continue;
        for (int pw = 0; pw < s.pooled_size; ++pw) {
          if (min(pw * s.group_size / s.pooled_size, s.group_size - 1) != gj) continue;
          const PSRoIBin<A> bin = psroi_bin<T, I>(rois, offset, use_offset, spatial_scale,
                                                  trans_std, k, ctop, ph, pw, s);
          const int kept = psroi_kept(bin, s);
          if (!kept) continue;
          const A g = load(grad_output + (k * s.output_dim + ctop) * bins + ph * s.pooled_size +
                           pw) / A(kept);
          for_each_kept_sample<A, I>(bin, s, [&](const ClampedCorners<A, I>& q) {
            for (int j = 0; j < 4; ++j) {
              store(plane + q.index[j], load(plane + q.index[j]) + q.weight[j] * g);
            }
          });
        }
      }
    }
  }
}

// Deterministic grad-input, first step: the corners of sample j of output
// element o (thread i = o * sample_per_part^2 + j) as four entries for
// segmented_sum.cu: key = the grad_input index of the corner (-1 when the
// sample is not kept), source = o, weight = bilinear weight / kept samples.
template <typename T, typename I>
__global__ void deform_psroi_pool_scatter_entries(
    const acc_t<T>* __restrict__ rois, const T* __restrict__ offset, I* __restrict__ keys,
    I* __restrict__ sources, acc_t<T>* __restrict__ weights, I n, int use_offset,
    acc_t<T> spatial_scale, acc_t<T> trans_std, CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const int samples = s.sample_per_part * s.sample_per_part;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I output = i / samples;
    const int sample = static_cast<int>(i % samples);
    const PSRoIPoolOutput<I> o = psroi_pool_output(output, s);
    const PSRoIBin<A> bin = psroi_bin<T, I>(rois, offset, use_offset, spatial_scale, trans_std,
                                            o.k, o.ctop, o.ph, o.pw, s);
    const A h = bin.h(sample / s.sample_per_part), w = bin.w(sample % s.sample_per_part);
    const bool kept = bin.valid && psroi_keeps(h, w, s.height, s.width);
    const int count = kept ? psroi_kept(bin, s) : 1;
    const I plane = (I(bin.batch) * s.channels + bin.channel) * s.height * s.width;
    const ClampedCorners<A, I> q = clamped_corners<A, I>(kept ? h : A(0), kept ? w : A(0),
                                                         s.height, s.width);
    for (int j = 0; j < 4; ++j) {
      store(keys + i * 4 + j, kept ? plane + q.index[j] : I(-1));
      store(sources + i * 4 + j, output);
      store(weights + i * 4 + j, kept ? q.weight[j] / A(count) : A(0));
    }
  }
}

// The offset gradient's share of output element i = (k, ctop, ph, pw):
// partials (2, K * output_dim * P * P) holds grad_output / kept times the sum
// over the bin's kept samples of d(sample)/dx (0) and d(sample)/dy (1).
template <typename T, typename I>
__global__ void deform_psroi_pool_backward_offset_partial(
    const T* __restrict__ grad_output, const T* __restrict__ input,
    const acc_t<T>* __restrict__ rois, const T* __restrict__ offset,
    acc_t<T>* __restrict__ partials, I n, acc_t<T> spatial_scale, acc_t<T> trans_std,
    CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PSRoIPoolOutput<I> o = psroi_pool_output(i, s);
    const PSRoIBin<A> bin = psroi_bin<T, I>(rois, offset, 1, spatial_scale, trans_std, o.k,
                                            o.ctop, o.ph, o.pw, s);
    const int kept = psroi_kept(bin, s);
    A grad_x = A(0), grad_y = A(0);
    if (kept) {
      const A g = load(grad_output + i) / A(kept);
      const T* plane = input + (I(bin.batch) * s.channels + bin.channel) * s.height * s.width;
      for_each_kept_sample<A, I>(bin, s, [&](const ClampedCorners<A, I>& q) {
        for (int j = 0; j < 4; ++j) {
          const A v = load(plane + q.index[j]);
          grad_x += g * q.dweight_x[j] * v;
          grad_y += g * q.dweight_y[j] * v;
        }
      });
    }
    store(partials + i, grad_x);
    store(partials + n + i, grad_y);
  }
}

// Thread per offset entry (k, class, axis, part_h, part_w): adds the partials
// of the class's output channels and of the bins in its part cell, in order,
// times d(sample)/d(offset) = trans_std * roi size.
template <typename T, typename I>
__global__ void deform_psroi_pool_backward_offset_reduce(
    const acc_t<T>* __restrict__ partials, const acc_t<T>* __restrict__ rois,
    const T* __restrict__ offset, T* __restrict__ grad_offset, I n, I outputs,
    acc_t<T> spatial_scale, acc_t<T> trans_std, CUDCN_PSROI_POOL_GEOMETRY_PARAMS) {
  CUDCN_PSROI_POOL_GEOMETRY;
  using A = acc_t<T>;
  const int class_channels = s.output_dim / s.num_classes;
  const I bins = I(s.pooled_size) * s.pooled_size;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int part_w = static_cast<int>(i % s.part_size);
    const int part_h = static_cast<int>((i / s.part_size) % s.part_size);
    const int axis = static_cast<int>((i / s.part_size / s.part_size) % 2);  // 0: x, 1: y
    const int class_id = static_cast<int>((i / s.part_size / s.part_size / 2) % s.num_classes);
    const I k = i / s.part_size / s.part_size / 2 / s.num_classes;
    A sum = A(0);
    for (int ctop = class_id * class_channels; ctop < (class_id + 1) * class_channels; ++ctop) {
      for (int ph = 0; ph < s.pooled_size; ++ph) {
        if (ph * s.part_size / s.pooled_size != part_h) continue;
        for (int pw = 0; pw < s.pooled_size; ++pw) {
          if (pw * s.part_size / s.pooled_size != part_w) continue;
          const I output = (k * s.output_dim + ctop) * bins + ph * s.pooled_size + pw;
          sum += load(partials + I(axis) * outputs + output);
        }
      }
    }
    // A bin that keeps a sample has a finite RoI; one without (sum 0) may not
    // (an infinite box), and its gradient is exactly zero.
    const PSRoIBin<A> bin =
        psroi_bin<T, I>(rois, offset, 1, spatial_scale, trans_std, k, 0, 0, 0, s);
    const A size = axis == 0 ? bin.roi_w : bin.roi_h;
    store(grad_offset + i, sum == A(0) ? A(0) : sum * trans_std * size);
  }
}

}  // namespace cudcn
