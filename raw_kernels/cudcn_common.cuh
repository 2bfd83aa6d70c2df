// Shared by every cudcn kernel: index and accumulation types, loads and
// stores that widen half types to float, and the bilinear-sampling helper.
//
// Everything here must stay inside what cpu_shim.h can run faithfully on the
// host: no shared memory, no __syncthreads, no warp intrinsics.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define CUDCN_GPU 1
#define CUDCN_DEVICE __device__ __forceinline__
#endif

namespace cudcn {

// Arithmetic happens in acc_t<T>: float for the 16-bit storage types, so that
// half inputs neither overflow nor lose the low bits of long sums. On the
// host, cpu_shim.h defines __half and __nv_bfloat16 and their conversions.
template <typename T> struct accumulate { using type = T; };
template <> struct accumulate<__half> { using type = float; };
template <> struct accumulate<__nv_bfloat16> { using type = float; };
template <typename T> using acc_t = typename accumulate<T>::type;

// Every global-memory access of a kernel goes through load, store or
// atomic_add: they widen and round the 16-bit types, and they are where the
// CPU executor's race check (cpu_shim.h, CUDCN_RACECHECK) records which
// thread touched which address. Elsewhere the hooks are empty.
#ifndef CUDCN_RECORD_READ
#define CUDCN_RECORD_READ(p)
#define CUDCN_RECORD_WRITE(p)
#define CUDCN_RECORD_ATOMIC(p)
#endif

// A hint that p will be read soon, for a host CPU whose prefetchers miss a
// kernel's stride; it reads nothing and cannot fault. Nothing on the GPU.
template <typename T>
CUDCN_DEVICE void prefetch(const T* p) {
#ifndef CUDCN_GPU
  __builtin_prefetch(p);
#endif
}

template <typename T>
CUDCN_DEVICE acc_t<T> widen(T v) { return static_cast<acc_t<T>>(v); }
template <>
CUDCN_DEVICE float widen<__half>(__half v) { return __half2float(v); }
template <>
CUDCN_DEVICE float widen<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
CUDCN_DEVICE T narrow(acc_t<T> v) { return static_cast<T>(v); }
template <>
CUDCN_DEVICE __half narrow<__half>(float v) { return __float2half_rn(v); }
template <>
CUDCN_DEVICE __nv_bfloat16 narrow<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
CUDCN_DEVICE acc_t<T> load(const T* p) {
  CUDCN_RECORD_READ(p);
  return widen(*p);
}

template <typename T>
CUDCN_DEVICE void store(T* p, acc_t<T> v) {
  CUDCN_RECORD_WRITE(p);
  *p = narrow<T>(v);
}

// One row of `width` pixels of an image's (C, H, W) planes, starting at
// `from`, as channels-last pixels at `to`: (width, C), channel c of pixel w
// at to[w * C + c]. Writes are sequential; each plane row is read through.
template <typename T, typename I>
CUDCN_DEVICE void row_to_pixels(const T* from, I plane, int channels, int width, T* to) {
  for (int w = 0; w < width; ++w) {
    for (int c = 0; c < channels; ++c) {
      store(to + I(w) * channels + c, load(from + c * plane + w));
    }
  }
}

template <typename A>
CUDCN_DEVICE void atomic_add(A* p, A v) {
  CUDCN_RECORD_ATOMIC(p);
  atomicAdd(p, v);
}

// The four integer corners around a sampling point of one H x W plane, with
// their bilinear weights. A corner outside the plane has weight 0 and index 0,
// so that a caller that forgets to test `valid` still cannot read out of
// bounds. A point with y <= -1, y >= H, x <= -1 or x >= W (NaN and +-inf
// included, since every comparison with NaN is false) is not `inside`: it
// samples 0. Its offset gradient is the right-hand derivative on the cell
// [y0, y0 + 1] x [x0, x0 + 1] wherever y >= -1 and x >= -1 (and y < H, x < W):
// a point exactly on y = -1 or x = -1, where zero offsets with padding 1 put
// the first samples, is not inside but `differentiable`, as in torchvision.
template <typename A, typename I>
struct BilinearCorners {
  bool inside;
  bool differentiable;
  bool valid[4];  // (y0, x0), (y0, x0+1), (y0+1, x0), (y0+1, x0+1)
  I index[4];     // y * W + x of each corner
  A weight[4];
  int y0, x0;        // floor(y), floor(x)
  A frac_y, frac_x;  // y - y0, x - x0
};

template <typename A, typename I>
CUDCN_DEVICE BilinearCorners<A, I> bilinear_corners(A y, A x, int height, int width) {
  BilinearCorners<A, I> c;
  c.inside = y > A(-1) && y < A(height) && x > A(-1) && x < A(width);
  c.differentiable = y >= A(-1) && y < A(height) && x >= A(-1) && x < A(width);
  if (!c.differentiable) {
    for (int q = 0; q < 4; ++q) { c.valid[q] = false; c.index[q] = 0; c.weight[q] = A(0); }
    c.y0 = c.x0 = 0;
    c.frac_y = A(0);
    c.frac_x = A(0);
    return c;
  }
  // Only now is the float-to-int conversion defined: |y| and |x| are bounded.
  const A yf = floor(y);
  const A xf = floor(x);
  const int y0 = static_cast<int>(yf);
  const int x0 = static_cast<int>(xf);
  c.y0 = y0;
  c.x0 = x0;
  c.frac_y = y - yf;
  c.frac_x = x - xf;
  const bool y0_in = y0 >= 0, y1_in = y0 + 1 < height;
  const bool x0_in = x0 >= 0, x1_in = x0 + 1 < width;
  c.valid[0] = y0_in && x0_in;
  c.valid[1] = y0_in && x1_in;
  c.valid[2] = y1_in && x0_in;
  c.valid[3] = y1_in && x1_in;
  const A wy[2] = {A(1) - c.frac_y, c.frac_y};
  const A wx[2] = {A(1) - c.frac_x, c.frac_x};
  const I first = I(y0) * width + x0;  // corner 0's index, even where it is outside
  for (int q = 0; q < 4; ++q) {
    const int dy = q >> 1, dx = q & 1;
    c.index[q] = c.valid[q] ? first + (dy ? width : 0) + dx : I(0);
    c.weight[q] = c.valid[q] ? wy[dy] * wx[dx] : A(0);
  }
  return c;
}

// The image an RoI pools from: its batch index, truncated, or -1 when that
// is not in [0, N) (NaN included); such an RoI pools zeros.
template <typename A>
CUDCN_DEVICE int roi_batch_index(A value, int batch) {
  return value >= A(0) && value < A(batch) ? static_cast<int>(value) : -1;
}

// RoIAlign-style sampling: the caller has decided the point is kept, and
// (y, x) is clamped into [0, H-1] x [0, W-1], so all four corners are in the
// plane (at the last row or column the far corner repeats the near one, with
// weight 0). dweight_y/x give the derivative of the sample with respect to
// the unclamped y and x: the right-hand derivative, which is zero along an
// axis where the coordinate was clamped (y < 0 or y >= H - 1).
template <typename A, typename I>
struct ClampedCorners {
  I index[4];  // (y0, x0), (y0, x1), (y1, x0), (y1, x1)
  A weight[4];
  A dweight_y[4];
  A dweight_x[4];
};

template <typename A, typename I>
CUDCN_DEVICE ClampedCorners<A, I> clamped_corners(A y, A x, int height, int width) {
  const bool y_free = y >= A(0) && y < A(height - 1);
  const bool x_free = x >= A(0) && x < A(width - 1);
  y = y < A(0) ? A(0) : (y > A(height - 1) ? A(height - 1) : y);
  x = x < A(0) ? A(0) : (x > A(width - 1) ? A(width - 1) : x);
  const int y0 = static_cast<int>(y), x0 = static_cast<int>(x);  // y, x >= 0: floor
  const int y1 = y0 + 1 < height ? y0 + 1 : y0;
  const int x1 = x0 + 1 < width ? x0 + 1 : x0;
  const A ly = y - A(y0), lx = x - A(x0);
  const A hy = A(1) - ly, hx = A(1) - lx;
  ClampedCorners<A, I> c;
  c.index[0] = I(y0) * width + x0;
  c.index[1] = I(y0) * width + x1;
  c.index[2] = I(y1) * width + x0;
  c.index[3] = I(y1) * width + x1;
  c.weight[0] = hy * hx;
  c.weight[1] = hy * lx;
  c.weight[2] = ly * hx;
  c.weight[3] = ly * lx;
  const A fy = y_free ? A(1) : A(0), fx = x_free ? A(1) : A(0);
  c.dweight_y[0] = -hx * fy;
  c.dweight_y[1] = -lx * fy;
  c.dweight_y[2] = hx * fy;
  c.dweight_y[3] = lx * fy;
  c.dweight_x[0] = -hy * fx;
  c.dweight_x[1] = hy * fx;
  c.dweight_x[2] = -ly * fx;
  c.dweight_x[3] = ly * fx;
  return c;
}

}  // namespace cudcn

// Grid-stride loop: correct for any grid, so the launcher may cap the grid.
// On the host (but in the race check, which runs GPU threads one by one) the
// loop over the worker's range of items (cpu_shim.h's launch).
#if defined(CUDCN_GPU) || defined(CUDCN_RACECHECK)
#define CUDCN_KERNEL_LOOP(i, I, n)                                   \
  for (I i = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; \
       i < (n); i += static_cast<I>(blockDim.x) * gridDim.x)
#else
#define CUDCN_KERNEL_LOOP(i, I, n)                                                 \
  for (I i = static_cast<I>(cudcn_first_item), i##_end = static_cast<I>(cudcn_end_item); \
       i < i##_end; ++i)
#endif
