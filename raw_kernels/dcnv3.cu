// DCNv3 and DCNv4 (InternImage's and FlashInternImage's deformable
// convolution), with the semantics of InternImage's CUDA kernel
// (ops_dcnv3/src/cuda/dcnv3_im2col_cuda.cuh): see SPEC section 7. The loops,
// thread mappings and gradients are point_sampling.cuh's; this file says
// where an output pixel's points fall and turns their sums into the
// offsets' and the mask's gradients.
//
// Layouts (C-contiguous, channels-last): the input (N, H, W, G * C) is
// `value`, the sampled map of point_sampling.cuh with S = H * W rows, M = G
// heads of D = C channels (grad_value its gradient); output and grad_output (N, H_out, W_out, G * C), a head per
// (n, output pixel, group). Both packings in one kernel: point k of group g
// of output pixel `pixel` (the flat (n, ho, wo)) reads its (dx, dy) at
// offset[pixel * offset_pixel_stride + g * offset_group_stride + 2 * k] and
// its mask value at mask[pixel * mask_pixel_stride + g * mask_group_stride +
// k]: DCNv3's offset (.., G * K * 2) and mask (.., G * K) are (G * 2K, 2K)
// and (G * K, K); DCNv4's offset_mask (.., D_pad) is both, (D_pad, 3K),
// the mask from 2K on (its two pointers then alias: the gradients of
// offset and mask are written through separate, unrestricted pointers).
//
// Kernel points run x-outer, y-inner, k = i * kernel_h + j, the centre
// skipped with remove_center (point_grid lists their (i * dil_w, j * dil_h),
// so that no thread divides by the kernel's height); a point samples at
//   x = p0_x - half_x * scale + (i * dil_w + dx) * scale,
//   p0_x = half_x - pad_w + wo * stride_w, half_x = (dil_w * (kernel_w - 1)) / 2,
// likewise y, bilinearly with zero corners (no half-pixel shift), only if
// -1 < y < H and -1 < x < W.
#include "point_sampling.cuh"

namespace cudcn {

#define CUDCN_DCNV3_SAMPLING \
  const T* __restrict__ offset, const T* __restrict__ mask, const I* __restrict__ point_grid
#define CUDCN_DCNV3_PARAMS                                                                    \
  int batch, int height, int width, int out_h, int out_w, int groups, int group_channels,     \
      int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, \
      int dil_w, int points, int offset_pixel_stride, int offset_group_stride,                \
      int mask_pixel_stride, int mask_group_stride, acc_t<T> offset_scale
#define CUDCN_DCNV3_POINTS                                                                    \
  const SamplingGeometry s = {batch, height * width, out_h * out_w, groups, group_channels,    \
                              points, 1};                                                     \
  const DCNv3Points<T, I> at_points = {offset, mask, point_grid, width, height, out_w,        \
                                       kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,  \
                                       dil_h, dil_w, offset_pixel_stride,                     \
                                       offset_group_stride, mask_pixel_stride,                \
                                       mask_group_stride, offset_scale, s}

// The points of one head, the flat (n, output pixel, group): where each samples.
template <typename T, typename I>
struct DCNv3Head {
  const T* offset;      // the head's first (dx, dy)
  const T* mask;        // the head's first mask value
  const I* point_grid;  // (i * dil_w, j * dil_h) of each kernel point
  I image_row;          // n * H * W
  acc_t<T> p0_x, p0_y;  // where the scaled kernel grid starts
  acc_t<T> scale;
  int height, width;

  CUDCN_DEVICE PointPlace<acc_t<T>, I> place(int p) const {
    using A = acc_t<T>;
    PointPlace<A, I> at;
    at.x = p0_x + (A(load(point_grid + 2 * p)) + load(offset + 2 * p)) * scale;
    at.y = p0_y + (A(load(point_grid + 2 * p + 1)) + load(offset + 2 * p + 1)) * scale;
    at.weight = load(mask + p);
    at.height = height;
    at.width = width;
    at.first_row = image_row;
    return at;
  }
};

template <typename T, typename I>
struct DCNv3Points {
  const T* offset;
  const T* mask;
  const I* point_grid;
  int width, height, out_w, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int offset_pixel_stride, offset_group_stride, mask_pixel_stride, mask_group_stride;
  acc_t<T> scale;
  SamplingGeometry s;

  CUDCN_DEVICE int level(int) const { return 0; }

  // Where point p's (dx, dy) and mask value are, for the head (pixel, g).
  CUDCN_DEVICE I offset_at(I head, int p) const {
    return (head / s.heads) * offset_pixel_stride + I(head % s.heads) * offset_group_stride +
           2 * p;
  }
  CUDCN_DEVICE I mask_at(I head, int p) const {
    return (head / s.heads) * mask_pixel_stride + I(head % s.heads) * mask_group_stride + p;
  }

  // InternImage's arithmetic: p0 = half - pad + wo * stride as an int, then
  // minus half * scale in the accumulation type.
  CUDCN_DEVICE DCNv3Head<T, I> head(I h) const {
    using A = acc_t<T>;
    const I pixel = h / s.heads;
    const int q = static_cast<int>(pixel % s.queries);
    const int ho = q / out_w, wo = q % out_w;
    const int half_x = (dil_w * (kernel_w - 1)) >> 1;
    const int half_y = (dil_h * (kernel_h - 1)) >> 1;
    return {offset + offset_at(h, 0), mask + mask_at(h, 0), point_grid,
            (pixel / s.queries) * s.spatial, A(half_x - pad_w + wo * stride_w) - A(half_x) * scale,
            A(half_y - pad_h + ho * stride_h) - A(half_y) * scale, scale, height, width};
  }
};

template <typename T, typename I>
__global__ void dcnv3_forward(const T* __restrict__ value, CUDCN_DCNV3_SAMPLING,
                              T* __restrict__ output, I n, int channel_block,
                              CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) sample_forward(value, at_points, output, i, channel_block, s);
}

template <typename T, typename I>
__global__ void dcnv3_backward_points_partial(const T* __restrict__ grad_output,
                                              const T* __restrict__ value, CUDCN_DCNV3_SAMPLING,
                                              acc_t<T>* __restrict__ partials, I n,
                                              int channel_block, CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_points_partial(grad_output, value, at_points, partials, i, channel_block, s);
  }
}

// One thread per (n, output pixel, group, run of points): each point's
// blocks' sums added in order, then the gradients: x moves by scale per unit
// of dx, so d/d(dx) = scale * mask * sum of g * d(sample)/dx, likewise dy;
// d/d(mask) = sum of g * sample. A point outside the window has zero sums.
template <typename T, typename I>
__global__ void dcnv3_backward_points_reduce(const acc_t<T>* __restrict__ partials,
                                             CUDCN_DCNV3_SAMPLING, T* grad_offset, T* grad_mask,
                                             I n, int blocks, int run, int want_offset,
                                             int want_mask, CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  using A = acc_t<T>;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PointRun<I> r = point_run(i, run, s);
    const I first_offset = at_points.offset_at(r.head, 0);
    const I first_mask = at_points.mask_at(r.head, 0);
    for (int p = r.p_begin; p < r.p_end; ++p) {
      const PointSums<A> sums = sum_blocks(partials, r.head * s.points + p, blocks);
      if (want_mask) store(grad_mask + first_mask + p, sums.w);
      if (want_offset) {
        const A weight = load(mask + first_mask + p) * offset_scale;
        store(grad_offset + first_offset + 2 * p, sums.x * weight);
        store(grad_offset + first_offset + 2 * p + 1, sums.y * weight);
      }
    }
  }
}

template <typename T, typename I>
__global__ void dcnv3_backward_value(const T* __restrict__ grad_output, CUDCN_DCNV3_SAMPLING,
                                     acc_t<T>* __restrict__ grad_value, I n, int channel_block,
                                     CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_value(grad_output, at_points, grad_value, i, channel_block, s);
  }
}

template <typename T, typename I>
__global__ void dcnv3_backward_value_planes(const T* __restrict__ grad_output,
                                            const T* __restrict__ value, CUDCN_DCNV3_SAMPLING,
                                            acc_t<T>* __restrict__ grad_value,
                                            acc_t<T>* __restrict__ partials, I n,
                                            int want_points, CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) {
    sample_backward_value_planes(grad_output, value, at_points, grad_value, partials,
                                 want_points != 0, i, s);
  }
}

template <typename T, typename I>
__global__ void dcnv3_scatter_entries(CUDCN_DCNV3_SAMPLING, I* __restrict__ keys,
                                      I* __restrict__ sources,
                                      acc_t<T>* __restrict__ entry_weights, I n,
                                      CUDCN_DCNV3_PARAMS) {
  CUDCN_DCNV3_POINTS;
  CUDCN_KERNEL_LOOP(i, I, n) sample_scatter_entry(at_points, keys, sources, entry_weights, i, s);
}

}  // namespace cudcn
