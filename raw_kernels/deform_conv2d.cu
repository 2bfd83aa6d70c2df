// Deformable convolution (DCN v1, and v2 with a modulation mask): the column
// transform and its two adjoints. The GEMMs around them run in the array
// library (cuBLAS / BLAS).
//
// Layouts (C-contiguous), for a chunk of B images, P = out_h * out_w,
// KK = kernel_h * kernel_w, G = offset groups, Cg = C / G:
//   input   (B, C, H, W)             offset (B, 2 * G * KK, out_h, out_w)
//   mask    (B, G * KK, out_h, out_w), read only when use_mask != 0
//   columns (B, C * KK, P), row c * KK + k holds channel c at kernel point k
//   (the plane strategy's gather writes them pixel-major: see Planes below)
// A sampling item is (image b, offset group g, kernel point k, pixel p):
// B * G * KK * P of them, item (b, g, k, p) at ((b * G + g) * KK + k) * P + p,
// which is also where its mask entry is.
//
// Three thread mappings, all run by the tests on the CPU.
//
// Items (the GPU's default): one thread per (item, block of channel_block
// channels of its group), p fastest. Every channel of the group samples at
// the same point with the same bilinear weights: a thread computes them once
// for the channels of its block. The launch picks the block from the device
// so that there are enough threads to fill it (cudcn/_launch.py). With p
// fastest, neighbouring threads read neighbouring offsets and masks and
// write neighbouring column entries: those accesses coalesce. col2im
// scatters with atomics; the offset and mask gradients are reduced over the
// channel blocks in a fixed order by a second kernel (coord_partial, then
// coord_reduce), which is deterministic and parallel at once.
//
// Sorted (deterministic mode on the GPU): as items, but col2im's scatter
// becomes a gather: scatter_entries lists every (destination pixel, source
// column, weight) of the sampling corners, the array library sorts them by
// destination (a stable sort), and segmented_sum.cu sums each pixel's
// entries in that fixed order, in parallel, without atomics.
//
// Planes (the CPU's default): the input is copied once, channels last, into
// zero-padded planes of pixels, (B, H + 3, W + 3, C), so that no corner needs
// a bounds test (the padding reads zeros). The gather (the forward's, and
// the backward's for the weight gradient) reads them and writes
// pixel-major columns, (B, P, groups, KK, C / groups), that the GEMMs take
// as they are (deform_conv2d_im2col_pixels). The backward's GEMM writes the
// gradient columns pixel-major too, and deform_conv2d_corners stores each
// item's cell and weights; then each thread walks the items of its group in
// order for a block of an image's channels, accumulating into padded pixels
// of its own (col2im), or the channels in order for a block of items,
// reading them side by side from the gradient columns and the channels-last
// pixels (offset and mask). No atomics, a fixed summation order whatever
// the thread count, and accumulators small enough to stay in a CPU core's
// cache.
#include "cudcn_common.cuh"

namespace cudcn {

struct DeformConvGeometry {
  int channels, height, width;
  int kernel_h, kernel_w;
  int stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
  int offset_groups, out_h, out_w;

  CUDCN_DEVICE int group_channels() const { return channels / offset_groups; }
};

// Kernel arguments are plain scalars (what every launcher can pass); the
// kernels gather them into a DeformConvGeometry.
#define CUDCN_DEFORM_CONV_GEOMETRY_PARAMS                                              \
  int channels, int height, int width, int kernel_h, int kernel_w, int stride_h,      \
      int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int offset_groups,    \
      int out_h, int out_w
#define CUDCN_DEFORM_CONV_GEOMETRY                                                     \
  const DeformConvGeometry s = {channels, height, width,  kernel_h, kernel_w,          \
                                stride_h, stride_w, pad_h, pad_w,  dil_h,              \
                                dil_w,    offset_groups, out_h, out_w}

// Sampling item `item` of the chunk: where its point is, and where its group's
// channels live in every array, so that each kernel states only its own work.
template <typename A, typename I>
struct DeformConvItem {
  I item;           // index of (b, g, k, p), and of its mask entry
  I offset_y_at;    // index of dy in offset; dx is P further
  I column_at;      // columns index of (first channel of the group, k, p)
  I plane_at;       // input index of the group's first channel's H x W plane
  I column_stride;  // from one channel to the next in columns: KK * P
  I plane_stride;   // from one channel's plane to the next: H * W
  I pixels;         // P
  A y, x;
};

template <typename T, typename I>
CUDCN_DEVICE DeformConvItem<acc_t<T>, I> deform_conv_item(I item, const T* offset,
                                                          const DeformConvGeometry& s) {
  using A = acc_t<T>;
  const I P = I(s.out_h) * s.out_w;
  const I KK = I(s.kernel_h) * s.kernel_w;
  const I p = item % P;
  const I group_kernel_point = item / P;  // (b * G + g) * KK + k
  const I k = group_kernel_point % KK;
  const I bg = group_kernel_point / KK;   // b * G + g
  const int oh = static_cast<int>(p / s.out_w), ow = static_cast<int>(p % s.out_w);
  const int ki = static_cast<int>(k / s.kernel_w), kj = static_cast<int>(k % s.kernel_w);

  DeformConvItem<A, I> it;
  it.item = item;
  it.pixels = P;
  it.column_stride = KK * P;
  it.plane_stride = I(s.height) * s.width;
  const I first_channel = bg * s.group_channels();  // b * C + g * Cg
  it.column_at = first_channel * it.column_stride + k * P + p;
  it.plane_at = first_channel * it.plane_stride;
  it.offset_y_at = 2 * group_kernel_point * P + p;
  it.y = A(oh * s.stride_h - s.pad_h + ki * s.dil_h) + load(offset + it.offset_y_at);
  it.x = A(ow * s.stride_w - s.pad_w + kj * s.dil_w) + load(offset + it.offset_y_at + P);
  return it;
}

// Work item i of the items mapping: sampling item i % items, and its block of
// channels [first, first + count) within the group.
template <typename I>
struct ChannelBlock {
  I item;
  int block, first, count;
};

template <typename I>
CUDCN_DEVICE ChannelBlock<I> channel_block_of(I i, I items, int channel_block,
                                              int group_channels) {
  ChannelBlock<I> w;
  w.item = i % items;
  w.block = static_cast<int>(i / items);
  w.first = w.block * channel_block;
  w.count = min(channel_block, group_channels - w.first);
  return w;
}

// Items of the whole chunk; the channel block is the slowest index, so that
// neighbouring threads hold neighbouring pixels.
template <typename I>
CUDCN_DEVICE I sampling_items(I n, int channel_block, int group_channels) {
  const int blocks = (group_channels + channel_block - 1) / channel_block;
  return n / blocks;
}

template <typename T, typename I>
__global__ void deform_conv2d_im2col(const T* __restrict__ input, const T* __restrict__ offset,
                                     const T* __restrict__ mask, T* __restrict__ columns, I n,
                                     int use_mask, int channel_block,
                                     CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const I items = sampling_items(n, channel_block, s.group_channels());
  CUDCN_KERNEL_LOOP(i, I, n) {
    const ChannelBlock<I> w = channel_block_of(i, items, channel_block, s.group_channels());
    const DeformConvItem<A, I> it = deform_conv_item<T, I>(w.item, offset, s);
    const A m = use_mask ? load(mask + it.item) : A(1);
    const BilinearCorners<A, I> c = bilinear_corners<A, I>(it.y, it.x, s.height, s.width);
    for (int cc = w.first; cc < w.first + w.count; ++cc) {
      const T* in = input + it.plane_at + cc * it.plane_stride;
      A v = A(0);
      for (int q = 0; c.inside && q < 4; ++q) {
        if (c.valid[q]) v += c.weight[q] * load(in + c.index[q]);
      }
      store(columns + it.column_at + cc * it.column_stride, m * v);
    }
  }
}

// grad_input += adjoint of im2col applied to grad_columns. Sampling points of
// different items may share corners, hence the atomics; grad_input is in the
// accumulation type so that half precision never accumulates in half.
template <typename T, typename I>
__global__ void deform_conv2d_col2im(const T* __restrict__ grad_columns,
                                     const T* __restrict__ offset, const T* __restrict__ mask,
                                     acc_t<T>* __restrict__ grad_input, I n, int use_mask,
                                     int channel_block, CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const I items = sampling_items(n, channel_block, s.group_channels());
  CUDCN_KERNEL_LOOP(i, I, n) {
    const ChannelBlock<I> w = channel_block_of(i, items, channel_block, s.group_channels());
    const DeformConvItem<A, I> it = deform_conv_item<T, I>(w.item, offset, s);
    const BilinearCorners<A, I> c = bilinear_corners<A, I>(it.y, it.x, s.height, s.width);
    if (!c.inside) continue;
    const A m = use_mask ? load(mask + it.item) : A(1);
    for (int cc = w.first; cc < w.first + w.count; ++cc) {
      const A gc = m * load(grad_columns + it.column_at + cc * it.column_stride);
      A* gin = grad_input + it.plane_at + cc * it.plane_stride;
      for (int q = 0; q < 4; ++q) {
        if (c.valid[q]) atomic_add(gin + c.index[q], c.weight[q] * gc);
      }
    }
  }
}

// The offset and mask gradients' sums over one block of channels, without the
// mask factor: partials (blocks, 3, items) holds, for each item, the sums of
// grad_column * d(sample)/dy, * d(sample)/dx, and * sample. The derivative
// in y is taken on the cell [y0, y0 + 1] (likewise x), torchvision's choice
// where the bilinear weight has a kink, also on the line y = -1 or x = -1,
// where the sample is 0 (and so is the mask's gradient).
template <typename T, typename I>
__global__ void deform_conv2d_coord_partial(const T* __restrict__ grad_columns,
                                            const T* __restrict__ input,
                                            const T* __restrict__ offset,
                                            acc_t<T>* __restrict__ partials, I n,
                                            int channel_block,
                                            CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const I items = sampling_items(n, channel_block, s.group_channels());
  CUDCN_KERNEL_LOOP(i, I, n) {
    const ChannelBlock<I> w = channel_block_of(i, items, channel_block, s.group_channels());
    const DeformConvItem<A, I> it = deform_conv_item<T, I>(w.item, offset, s);
    const BilinearCorners<A, I> c = bilinear_corners<A, I>(it.y, it.x, s.height, s.width);
    A grad_y = A(0), grad_x = A(0), grad_m = A(0);
    if (c.differentiable) {
      const A wy1 = c.frac_y, wy0 = A(1) - c.frac_y;
      const A wx1 = c.frac_x, wx0 = A(1) - c.frac_x;
      for (int cc = w.first; cc < w.first + w.count; ++cc) {
        const A gc = load(grad_columns + it.column_at + cc * it.column_stride);
        const T* in = input + it.plane_at + cc * it.plane_stride;
        A v[4];
        for (int q = 0; q < 4; ++q) v[q] = c.valid[q] ? load(in + c.index[q]) : A(0);
        grad_y += gc * (wx0 * (v[2] - v[0]) + wx1 * (v[3] - v[1]));
        grad_x += gc * (wy0 * (v[1] - v[0]) + wy1 * (v[3] - v[2]));
        if (c.inside) {
          grad_m += gc * (c.weight[0] * v[0] + c.weight[1] * v[1] + c.weight[2] * v[2] +
                          c.weight[3] * v[3]);
        }
      }
    }
    A* out = partials + I(w.block) * 3 * items + it.item;
    store(out, grad_y);
    store(out + items, grad_x);
    store(out + 2 * items, grad_m);
  }
}

// Sums the partials of every channel block in block order: thread
// (component, item) writes the item's dy (component 0) or dx (1) gradient,
// times its mask, or its mask gradient (2; launched only when wanted).
template <typename T, typename I>
__global__ void deform_conv2d_coord_reduce(const acc_t<T>* __restrict__ partials,
                                           const T* __restrict__ mask,
                                           T* __restrict__ grad_offset,
                                           T* __restrict__ grad_mask, I n, I items,
                                           int blocks, int use_mask,
                                           CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const I P = I(s.out_h) * s.out_w;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int component = static_cast<int>(i / items);
    const I item = i % items;
    A sum = A(0);
    for (int b = 0; b < blocks; ++b) sum += load(partials + (I(b) * 3 + component) * items + item);
    if (component == 2) {
      store(grad_mask + item, sum);
      continue;
    }
    const A m = use_mask ? load(mask + item) : A(1);
    store(grad_offset + (2 * (item / P) + component) * P + item % P, m * sum);
  }
}

// Deterministic col2im, first step: the entries of every item's corners that
// it samples, as (key, source, weight): key = (b * G + g) * H * W + y * W + x
// names the destination pixel in the group's planes (-1: no entry), source
// the grad_columns index of the group's first channel at (k, p), weight the
// bilinear weight times the mask.
template <typename T, typename I>
__global__ void deform_conv2d_scatter_entries(const T* __restrict__ offset,
                                              const T* __restrict__ mask, I* __restrict__ keys,
                                              I* __restrict__ sources,
                                              acc_t<T>* __restrict__ weights, I n, int use_mask,
                                              CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const I plane = I(s.height) * s.width;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const DeformConvItem<A, I> it = deform_conv_item<T, I>(i, offset, s);
    const BilinearCorners<A, I> c = bilinear_corners<A, I>(it.y, it.x, s.height, s.width);
    const A m = use_mask ? load(mask + it.item) : A(1);
    const I bg = it.item / it.pixels / (I(s.kernel_h) * s.kernel_w);
    for (int q = 0; q < 4; ++q) {
      const bool entry = c.inside && c.valid[q];
      store(keys + i * 4 + q, entry ? bg * plane + c.index[q] : I(-1));
      store(sources + i * 4 + q, it.column_at);
      store(weights + i * 4 + q, entry ? m * c.weight[q] : A(0));
    }
  }
}

// The plane strategy reads a padded copy of the input (and accumulates into
// a padded grad_input): each H x W plane becomes (H + 3) x (W + 3), with one
// row and column of zeros before it and two after. Every corner of a point in
// (-1, H) x (-1, W) is then inside the padded plane, a point's four corners
// are base, base + 1, base + W + 3 and base + W + 4 with base the padded index
// of (y0, x0), and the four zeros at padded (H + 1, W + 1) stand in for the
// corners of a point that reads nothing: no test per corner.
template <typename I>
struct PaddedPlanes {
  I width, size, zeros;
};

template <typename I>
CUDCN_DEVICE PaddedPlanes<I> padded_planes(const DeformConvGeometry& s) {
  PaddedPlanes<I> p;
  p.width = I(s.width) + 3;
  p.size = (I(s.height) + 3) * p.width;
  p.zeros = (I(s.height) + 1) * p.width + s.width + 1;
  return p;
}

// Every item's sampling cell, for the plane kernels, in pixel-major order
// (b, g, p, k), as the gradient columns they read: corner_base (, 2) holds
// the padded base of the corners the sample reads (the zeros when it reads
// none) and of those its offset gradient reads (the same, but for a point on
// y = -1 or x = -1, which samples 0 and has a gradient: see
// bilinear_corners); corner_weight (n, 6) the bilinear weights of the four
// corners (0 when the sample reads none) and the fractions y - y0, x - x0 of
// the gradient (0 when it has none). One thread per output row of one
// (image, group): the row's items are consecutive.
template <typename T, typename I>
__global__ void deform_conv2d_corners(const T* __restrict__ offset, I* __restrict__ corner_base,
                                      acc_t<T>* __restrict__ corner_weight, I n,
                                      CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const PaddedPlanes<I> padded = padded_planes<I>(s);
  const I P = I(s.out_h) * s.out_w;
  const int KK = s.kernel_h * s.kernel_w;
  CUDCN_KERNEL_LOOP(row, I, n) {
    const int oh = static_cast<int>(row % s.out_h);
    const I bg = row / s.out_h;  // b * G + g
    for (int ow = 0; ow < s.out_w; ++ow) {
      const I p = I(oh) * s.out_w + ow;
      for (int k = 0; k < KK; ++k) {
        const int ki = k / s.kernel_w, kj = k % s.kernel_w;
        const T* dy = offset + 2 * (bg * KK + k) * P + p;
        const A y = A(oh * s.stride_h - s.pad_h + ki * s.dil_h) + load(dy);
        const A x = A(ow * s.stride_w - s.pad_w + kj * s.dil_w) + load(dy + P);
        const BilinearCorners<A, I> c = bilinear_corners<A, I>(y, x, s.height, s.width);
        const I cell = c.differentiable ? I(c.y0 + 1) * padded.width + (c.x0 + 1) : padded.zeros;
        const I item = (bg * P + p) * KK + k;
        store(corner_base + item * 2, c.inside ? cell : padded.zeros);
        store(corner_base + item * 2 + 1, cell);
        const A wy[2] = {A(1) - c.frac_y, c.frac_y};
        const A wx[2] = {A(1) - c.frac_x, c.frac_x};
        for (int q = 0; q < 4; ++q) {
          store(corner_weight + item * 6 + q, c.inside ? wy[q >> 1] * wx[q & 1] : A(0));
        }
        store(corner_weight + item * 6 + 4, c.frac_y);
        store(corner_weight + item * 6 + 5, c.frac_x);
      }
    }
  }
}

// The backward's scatter on the CPU gives each thread kPixelChannels channels
// of one (image, offset group) (fewer at the group's end): each item's cell
// and weights are read once for them, and their run of its gradient columns
// is added into each of its four corners in one vector loop.
constexpr int kPixelChannels = 16;

template <typename I>
struct PixelBlock {
  I image;       // b
  I group_item;  // the group's first item, (b * G + g) * KK * P
  int first;     // the block's first channel in the image
  int count;     // channels in the block
};

template <typename I>
CUDCN_DEVICE PixelBlock<I> pixel_block(I block, const DeformConvGeometry& s) {
  const int group_channels = s.group_channels();
  const I blocks = (group_channels + kPixelChannels - 1) / kPixelChannels;
  const I bg = block / blocks;  // b * G + g
  const int in_group = static_cast<int>(block % blocks) * kPixelChannels;
  PixelBlock<I> p;
  p.image = bg / s.offset_groups;
  p.group_item = bg * s.kernel_h * s.kernel_w * s.out_h * s.out_w;
  p.first = static_cast<int>(bg % s.offset_groups) * group_channels + in_group;
  p.count = min(kPixelChannels, group_channels - in_group);
  return p;
}

// The input into the interior of the padded pixels (B, H + 3, W + 3, C):
// one thread per (image, input row) reads the row of every channel and
// writes the row's pixels (the zeros around them are written once, by the
// array library). With channels_last the input is (B, H, W, C) (a
// channels-last tensor's memory), whose row is the pixels' row as it is,
// else (B, C, H, W).
template <typename T, typename I>
__global__ void deform_conv2d_fill_pixels(const T* __restrict__ input,
                                          T* __restrict__ padded_pixels, I n,
                                          int channels_last,
                                          CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  const PaddedPlanes<I> padded = padded_planes<I>(s);
  const I plane = I(s.height) * s.width;
  CUDCN_KERNEL_LOOP(row, I, n) {
    const int h = static_cast<int>(row % s.height);
    const I b = row / s.height;
    T* to = padded_pixels + ((b * padded.size) + I(h + 1) * padded.width + 1) * s.channels;
    if (channels_last) {
      const T* from = input + (b * plane + I(h) * s.width) * s.channels;
      for (I q = 0; q < I(s.width) * s.channels; ++q) store(to + q, load(from + q));
    } else {
      row_to_pixels(input + b * s.channels * plane + I(h) * s.width, plane, s.channels, s.width,
                    to);
    }
  }
}

// The forward's gather on the CPU reads a channels-last copy of the padded
// input, (B, H + 3, W + 3, C) with the zeros of the planes above, and writes
// pixel-major columns, (B, P, groups, KK, Cw) for the convolution's groups of
// Cw = C / groups channels: a corner's channels sit side by side, and so do
// an item's samples, so the loop over a group's channels reads and writes
// contiguous memory with one set of weights (the host compiler vectorizes
// it), and each thread fills its pixels' rows one after the other, a
// sequential stream. (The usual (B, C * KK, P) layout would put each of an
// item's channels KK * P apart.) One thread per output row of one (image,
// offset group); it computes each item's cell itself (no corner buffers).
// In its pixel's row, channel c of kernel point k sits at
// pixel_column(c) + k * Cw.
CUDCN_DEVICE int pixel_column(int c, int kernel_points, int conv_group_channels) {
  return (c / conv_group_channels) * kernel_points * conv_group_channels +
         c % conv_group_channels;
}

// Whether channels [first, first + count) sit side by side in a pixel's row:
// they do within one convolution group.
CUDCN_DEVICE bool side_by_side(int first, int count, int kernel_points, int conv_group_channels) {
  return pixel_column(first + count - 1, kernel_points, conv_group_channels) -
             pixel_column(first, kernel_points, conv_group_channels) ==
         count - 1;
}

template <typename T, typename I>
__global__ void deform_conv2d_im2col_pixels(const T* __restrict__ padded_pixels,
                                            const T* __restrict__ offset,
                                            const T* __restrict__ mask,
                                            T* __restrict__ columns_t, I n, int use_mask,
                                            int conv_group_channels,
                                            CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const PaddedPlanes<I> padded = padded_planes<I>(s);
  const I P = I(s.out_h) * s.out_w;
  const int KK = s.kernel_h * s.kernel_w;
  const int group_channels = s.group_channels();
  const I row_stride = padded.width * s.channels;
  CUDCN_KERNEL_LOOP(row, I, n) {
    const int oh = static_cast<int>(row % s.out_h);
    const I bg = row / s.out_h;  // b * G + g
    const I b = bg / s.offset_groups;
    const int first_channel = static_cast<int>(bg % s.offset_groups) * group_channels;
    const int column = pixel_column(first_channel, KK, conv_group_channels);
    const bool contiguous = side_by_side(first_channel, group_channels, KK, conv_group_channels);
    const T* image = padded_pixels + b * padded.size * s.channels + first_channel;
    for (int ow = 0; ow < s.out_w; ++ow) {
      const I p = I(oh) * s.out_w + ow;
      T* pixel_row = columns_t + (b * P + p) * s.channels * KK;
      for (int k = 0; k < KK; ++k) {
        const int ki = k / s.kernel_w, kj = k % s.kernel_w;
        const I item = (bg * KK + k) * P + p;
        const T* dy = offset + 2 * (bg * KK + k) * P + p;
        const A y = A(oh * s.stride_h - s.pad_h + ki * s.dil_h) + load(dy);
        const A x = A(ow * s.stride_w - s.pad_w + kj * s.dil_w) + load(dy + P);
        const BilinearCorners<A, I> c = bilinear_corners<A, I>(y, x, s.height, s.width);
        const I cell = c.inside ? I(c.y0 + 1) * padded.width + (c.x0 + 1) : padded.zeros;
        const A wy0 = c.inside ? A(1) - c.frac_y : A(0), wy1 = c.inside ? c.frac_y : A(0);
        const A w0 = wy0 * (A(1) - c.frac_x), w1 = wy0 * c.frac_x;
        const A w2 = wy1 * (A(1) - c.frac_x), w3 = wy1 * c.frac_x;
        const A m = use_mask ? load(mask + item) : A(1);
        const T* p0 = image + cell * s.channels;
        const T* p1 = p0 + s.channels;
        const T* p2 = p0 + row_stride;
        const T* p3 = p2 + s.channels;
        T* to = pixel_row + k * conv_group_channels;
        if (contiguous) {
          T* first = to + column;
          for (int cc = 0; cc < group_channels; ++cc) {
            store(first + cc, m * (w0 * load(p0 + cc) + w1 * load(p1 + cc) +
                                   w2 * load(p2 + cc) + w3 * load(p3 + cc)));
          }
        } else {
          for (int cc = 0; cc < group_channels; ++cc) {
            store(to + pixel_column(first_channel + cc, KK, conv_group_channels),
                  m * (w0 * load(p0 + cc) + w1 * load(p1 + cc) + w2 * load(p2 + cc) +
                       w3 * load(p3 + cc)));
          }
        }
      }
    }
  }
}

constexpr int kOutputTile = 16;

// The weights in the pixel-major columns' order, as the right operand of the
// forward's GEMM, in the accumulation type: each group's (Cg, Cw * KK) block
// of (C_out, Cw, KK), Cg = C_out / groups, becomes (KK * Cw, Cg), row k * Cw
// + c for column c * KK + k. One thread per (group, tile of kOutputTile
// output channels, tile of kOutputTile columns): it reads the tile's rows,
// each a run of the columns, and writes its columns, each a run of output
// channels.
template <typename T, typename I>
__global__ void deform_conv2d_weight_for_pixels(const T* __restrict__ weight,
                                                acc_t<T>* __restrict__ weight_t, I n,
                                                int group_out_channels, int group_channels,
                                                int kernel_points) {
  const int columns = group_channels * kernel_points;
  const int channel_tiles = (group_out_channels + kOutputTile - 1) / kOutputTile;
  const int column_tiles = (columns + kOutputTile - 1) / kOutputTile;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int j0 = static_cast<int>(i % column_tiles) * kOutputTile;
    const int j1 = min(columns, j0 + kOutputTile);
    const int o0 = static_cast<int>((i / column_tiles) % channel_tiles) * kOutputTile;
    const int o1 = min(group_out_channels, o0 + kOutputTile);
    const I g = i / (I(column_tiles) * channel_tiles);
    const T* from = weight + g * group_out_channels * columns;
    acc_t<T>* to = weight_t + g * columns * group_out_channels;
    for (int j = j0; j < j1; ++j) {
      const int row = (j % kernel_points) * group_channels + j / kernel_points;
      for (int o = o0; o < o1; ++o) {
        store(to + I(row) * group_out_channels + o, acc_t<T>(load(from + I(o) * columns + j)));
      }
    }
  }
}

// The weights (C_out, Cw, KK) with each row in the pixel-major columns'
// order, (C_out, KK, Cw), in the accumulation type: the right operand of the
// backward's GEMM that writes pixel-major gradient columns (which runs
// faster with it than with the transpose of the forward's). One thread per
// output channel: its row is read and written whole.
// One row of `rows` x `columns` values transposed, converted by load and
// store: to[j * rows + i] = from[i * columns + j], written in order (a
// strided write per value took 1.3-1.9x the time on the host CPU, either
// way round: (C, kh * kw) and back). (C * kh * kw fits in an int.)
template <typename From, typename To>
CUDCN_DEVICE void transpose_row(const From* from, To* to, int rows, int columns) {
  for (int j = 0; j < columns; ++j) {
    for (int i = 0; i < rows; ++i) store(to + j * rows + i, load(from + i * columns + j));
  }
}

template <typename T, typename I>
__global__ void deform_conv2d_weight_rows_for_pixels(const T* __restrict__ weight,
                                                     acc_t<T>* __restrict__ weight_rows, I n,
                                                     int group_channels, int kernel_points) {
  const I columns = I(group_channels) * kernel_points;
  CUDCN_KERNEL_LOOP(o, I, n) {
    transpose_row(weight + o * columns, weight_rows + o * columns, group_channels,
                  kernel_points);
  }
}

// The inverse, for the weight gradient the backward's GEMM accumulates in
// the pixel-major columns' order: (C_out, KK, Cw) in the accumulation type
// into the weights' (C_out, Cw, KK), rounded once into T. One thread per
// output channel.
template <typename T, typename I>
__global__ void deform_conv2d_weight_from_pixel_rows(const acc_t<T>* __restrict__ weight_rows,
                                                     T* __restrict__ weight, I n,
                                                     int group_channels, int kernel_points) {
  const I columns = I(group_channels) * kernel_points;
  CUDCN_KERNEL_LOOP(o, I, n) {
    transpose_row(weight_rows + o * columns, weight + o * columns, kernel_points,
                  group_channels);
  }
}

// The pixel-major product of the forward's GEMM, (B, groups, P, Cg) with Cg
// = C_out / groups, plus the bias, into the output (B, C_out, P): one thread
// per tile of kOutputTile pixels by kOutputTile channels of one (image,
// group), reading the tile's pixel rows and writing its channel rows.
template <typename T, typename I>
__global__ void deform_conv2d_output_from_pixels(const acc_t<T>* __restrict__ product,
                                                 const T* __restrict__ bias,
                                                 T* __restrict__ output, I n, int use_bias,
                                                 int groups, int group_out_channels,
                                                 I pixels) {
  using A = acc_t<T>;
  const I pixel_tiles = (pixels + kOutputTile - 1) / kOutputTile;
  const int channel_tiles = (group_out_channels + kOutputTile - 1) / kOutputTile;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const int channel_tile = static_cast<int>(i % channel_tiles);
    const I pixel_tile = (i / channel_tiles) % pixel_tiles;
    const I bg = i / (I(channel_tiles) * pixel_tiles);  // b * groups + g
    const int o0 = channel_tile * kOutputTile;
    const int o1 = min(group_out_channels, o0 + kOutputTile);
    const I p0 = pixel_tile * kOutputTile;
    const I p1 = min(pixels, p0 + kOutputTile);
    const A* from = product + bg * pixels * group_out_channels;
    T* to = output + bg * group_out_channels * pixels;
    for (int o = o0; o < o1; ++o) {
      const A b = use_bias ? A(load(bias + (bg % groups) * group_out_channels + o)) : A(0);
      for (I p = p0; p < p1; ++p) {
        store(to + I(o) * pixels + p, load(from + p * group_out_channels + o) + b);
      }
    }
  }
}

// Adds w * g[t] into q[t], t < count: one corner of a block's item. (A
// constant trip count would have the host compiler unroll it into scalar
// code, not vectorize it.)
template <typename A>
CUDCN_DEVICE void add_scaled(A* q, A w, const A* g, int count) {
  for (int t = 0; t < count; ++t) store(q + t, load(q + t) + w * g[t]);
}

// col2im of the plane strategy, from pixel-major gradient columns (B, P,
// groups, KK, Cw): each thread clears its own padded pixels in
// padded_grad_pixels (threads, H + 3, W + 3, kPixelChannels), adds every
// item of its offset group into them (a corner's channels side by side),
// then writes their interiors to its channels' planes of grad_input (B, C,
// H, W), or with channels_last to their runs in its pixels (B, H, W, C),
// every element, while they are still in the core's cache.
template <typename T, typename I>
__global__ void deform_conv2d_col2im_pixels(const T* __restrict__ grad_columns_t,
                                            const T* __restrict__ mask,
                                            const I* __restrict__ corner_base,
                                            const acc_t<T>* __restrict__ corner_weight,
                                            acc_t<T>* __restrict__ padded_grad_pixels,
                                            acc_t<T>* __restrict__ grad_input, I n,
                                            int use_mask, int conv_group_channels,
                                            int channels_last,
                                            CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const PaddedPlanes<I> padded = padded_planes<I>(s);
  const I P = I(s.out_h) * s.out_w;
  const int KK = s.kernel_h * s.kernel_w;
  const I plane = I(s.height) * s.width;
  const I pixel_row = I(s.channels) * KK;  // one pixel's gradient columns
  const I below = padded.width * kPixelChannels;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const PixelBlock<I> b = pixel_block(i, s);
    const int column = pixel_column(b.first, KK, conv_group_channels);
    const bool contiguous = side_by_side(b.first, b.count, KK, conv_group_channels);
    A* sums = padded_grad_pixels + i * padded.size * kPixelChannels;
    for (I q = 0; q < padded.size * kPixelChannels; ++q) store(sums + q, A(0));
    const T* image_columns = grad_columns_t + b.image * P * pixel_row + column;
    for (I p = 0; p < P; ++p) {
      for (int k = 0; k < KK; ++k) {
        const I item = b.group_item + p * KK + k;
        const I base = load(corner_base + item * 2);
        const A* w = corner_weight + item * 6;
        const A m = use_mask ? load(mask + b.group_item + I(k) * P + p) : A(1);
        const T* gc = image_columns + p * pixel_row + k * conv_group_channels;
        // A block reads a short run of each item, a stride the host CPU's
        // prefetchers did not follow: the next pixel's, one row ahead
        // (col2im at N=2, C=64, 56x56: 2.1-2.9 -> 1.6-2.6 ms).
        if (p + 1 < P) prefetch(gc + pixel_row);
        A g[kPixelChannels];
        if (contiguous) {
          for (int t = 0; t < b.count; ++t) g[t] = m * load(gc + t);
        } else {
          for (int t = 0; t < b.count; ++t) {
            g[t] = m * load(gc + pixel_column(b.first + t, KK, conv_group_channels) - column);
          }
        }
        A* q = sums + base * kPixelChannels;
        add_scaled(q, load(w), g, b.count);
        add_scaled(q + kPixelChannels, load(w + 1), g, b.count);
        add_scaled(q + below, load(w + 2), g, b.count);
        add_scaled(q + below + kPixelChannels, load(w + 3), g, b.count);
      }
    }
    if (channels_last) {  // each pixel's run of the block's channels
      for (int h = 0; h < s.height; ++h) {
        for (int w = 0; w < s.width; ++w) {
          const A* from = sums + (I(h + 1) * padded.width + w + 1) * kPixelChannels;
          A* to = grad_input + ((b.image * s.height + h) * s.width + w) * s.channels + b.first;
          for (int t = 0; t < b.count; ++t) store(to + t, load(from + t));
        }
      }
      continue;
    }
    for (int t = 0; t < b.count; ++t) {
      A* to = grad_input + (b.image * s.channels + b.first + t) * plane;
      for (int h = 0; h < s.height; ++h) {
        const A* from = sums + (I(h + 1) * padded.width + 1) * kPixelChannels + t;
        for (int w = 0; w < s.width; ++w) {
          store(to + I(h) * s.width + w, load(from + I(w) * kPixelChannels));
        }
      }
    }
  }
}

// One item's offset and mask gradient sums over a run of `count` channels
// that sit side by side in the gradient columns (gc) and in the padded
// pixels (v, the cell's corner (y0, x0); the other corners `right` and
// `below` further), in kCoordLanes partial sums a component that the host
// compiler keeps in one vector register each; sums (3) gets them in lane
// order. The order depends on the geometry only, never on the threads.
constexpr int kCoordLanes = 8;

template <typename T, typename A, typename I>
CUDCN_DEVICE void add_coord_run(const T* gc, const T* v, int right, I below, int count, A ly,
                                A lx, const A* w, A* sums) {
  A gy[kCoordLanes];
  A gx[kCoordLanes];
  A gm[kCoordLanes];
  for (int l = 0; l < kCoordLanes; ++l) gy[l] = gx[l] = gm[l] = A(0);
  int c = 0;
  for (; c + kCoordLanes <= count; c += kCoordLanes) {
    for (int l = 0; l < kCoordLanes; ++l) {
      const A g = load(gc + c + l);
      const A v0 = load(v + c + l), v1 = load(v + right + c + l), v2 = load(v + below + c + l),
              v3 = load(v + below + right + c + l);
      gy[l] += g * ((A(1) - lx) * (v2 - v0) + lx * (v3 - v1));
      gx[l] += g * ((A(1) - ly) * (v1 - v0) + ly * (v3 - v2));
      gm[l] += g * (w[0] * v0 + w[1] * v1 + w[2] * v2 + w[3] * v3);
    }
  }
  for (; c < count; ++c) {
    const A g = load(gc + c);
    const A v0 = load(v + c), v1 = load(v + right + c), v2 = load(v + below + c),
            v3 = load(v + below + right + c);
    gy[0] += g * ((A(1) - lx) * (v2 - v0) + lx * (v3 - v1));
    gx[0] += g * ((A(1) - ly) * (v1 - v0) + ly * (v3 - v2));
    gm[0] += g * (w[0] * v0 + w[1] * v1 + w[2] * v2 + w[3] * v3);
  }
  for (int l = 0; l < kCoordLanes; ++l) {
    sums[0] += gy[l];
    sums[1] += gx[l];
    sums[2] += gm[l];
  }
}

// Offset and mask gradients by blocks of items, for the plane strategy: one
// thread per (image b, offset group g, block of kCoordBlock items) sums each
// item over the group's channels, reading its gradient columns' and its
// corners' channels side by side (pixel-major columns, channels-last padded
// pixels), and owns its items' outputs: no atomics, and a summation order
// that only the geometry fixes.
constexpr int kCoordBlock = 64;

template <typename T, typename I>
__global__ void deform_conv2d_col2im_coord_pixels(
    const T* __restrict__ grad_columns_t, const T* __restrict__ padded_pixels,
    const T* __restrict__ mask, const I* __restrict__ corner_base,
    const acc_t<T>* __restrict__ corner_weight, T* __restrict__ grad_offset,
    T* __restrict__ grad_mask, I n, int use_mask, int want_grad_mask, int conv_group_channels,
    CUDCN_DEFORM_CONV_GEOMETRY_PARAMS) {
  CUDCN_DEFORM_CONV_GEOMETRY;
  using A = acc_t<T>;
  const PaddedPlanes<I> padded = padded_planes<I>(s);
  const I P = I(s.out_h) * s.out_w;
  const int KK = s.kernel_h * s.kernel_w;
  const I items = KK * P;
  const I blocks = (items + kCoordBlock - 1) / kCoordBlock;
  const int group_channels = s.group_channels();
  const I pixel_row = I(s.channels) * KK;
  const I below = padded.width * s.channels;
  CUDCN_KERNEL_LOOP(i, I, n) {
    const I bg = i / blocks;  // b * G + g
    const I b = bg / s.offset_groups;
    const int first_channel = static_cast<int>(bg % s.offset_groups) * group_channels;
    const int last_channel = first_channel + group_channels;
    const I j0 = (i % blocks) * kCoordBlock;
    const I j1 = min(items, j0 + kCoordBlock);
    const I first = bg * items;
    const T* image = padded_pixels + b * padded.size * s.channels;
    const T* image_columns = grad_columns_t + b * P * pixel_row;
    for (I j = j0; j < j1; ++j) {
      const I value_base = load(corner_base + (first + j) * 2);
      const I base = load(corner_base + (first + j) * 2 + 1);
      const A* cw = corner_weight + (first + j) * 6;
      const A w[4] = {load(cw), load(cw + 1), load(cw + 2), load(cw + 3)};
      const A ly = load(cw + 4), lx = load(cw + 5);
      const int k = static_cast<int>(j % KK);
      const I p = j / KK;
      const T* corner = image + base * s.channels;
      const T* columns = image_columns + p * pixel_row + k * conv_group_channels;
      A sums[3] = {A(0), A(0), A(0)};
      // The group's channels in runs that one convolution group holds.
      for (int c = first_channel; c < last_channel;) {
        const int end = min(last_channel, (c / conv_group_channels + 1) * conv_group_channels);
        add_coord_run(columns + pixel_column(c, KK, conv_group_channels), corner + c,
                      s.channels, below, end - c, ly, lx, w, sums);
        c = end;
      }
      const I item = (bg * KK + k) * P + p;  // where its offset and mask are
      const A m = use_mask ? load(mask + item) : A(1);
      const I offset_y_at = 2 * (bg * KK + k) * P + p;
      store(grad_offset + offset_y_at, m * sums[0]);
      store(grad_offset + offset_y_at + P, m * sums[1]);
      // A point on y = -1 or x = -1 samples 0: no mask gradient, though an
      // offset gradient (its gradient cell is not the zeros it samples).
      if (want_grad_mask) store(grad_mask + item, value_base == base ? sums[2] : A(0));
    }
  }
}

// The GEMMs' 16-bit operands on the CPU, widened into the accumulation type
// before a product, and a product rounded into a 16-bit destination, on the
// op's own threads: NumPy casts float16 in software on one thread (6.1 ms for
// the 3.6 M columns at N=2, C=64, 56x56), ml_dtypes bfloat16 on one thread
// too. One thread per run of `run` elements, a stream each; on the GPU the
// array library casts, and these are not launched.
template <typename From, typename To, typename I>
CUDCN_DEVICE void convert_run(const From* source, To* dest, I run_index, I count, int run) {
  const I first = run_index * run;
  const I last = min(count, first + run);
  for (I j = first; j < last; ++j) store(dest + j, load(source + j));
}

template <typename T, typename I>
__global__ void deform_conv2d_widen(const T* __restrict__ source, acc_t<T>* __restrict__ dest,
                                    I n, I count, int run) {
  CUDCN_KERNEL_LOOP(i, I, n) convert_run(source, dest, i, count, run);
}

template <typename T, typename I>
__global__ void deform_conv2d_narrow(const acc_t<T>* __restrict__ source, T* __restrict__ dest,
                                     I n, I count, int run) {
  CUDCN_KERNEL_LOOP(i, I, n) convert_run(source, dest, i, count, run);
}

}  // namespace cudcn
