// im2col / col2im on the GPU, on the element functions of im2col_math.h (the
// CPU reference runs the same ones).
//
// Threads walk the elements so that neighbours touch neighbouring bytes of the
// output (channels innermost when the output is channel-contiguous, pixels
// otherwise): writes coalesce, and so do the reads of NHWC (resp. NCHW) input.
// im2col writes a vector of 4 to 16 bytes per thread where the column layout
// allows (see launch_im2col), else one byte; col2im one element per thread.
// Indices are int32 split with CUTLASS's FastDivmod (a multiply-high instead
// of a division); each launch therefore covers at most kMaxLaunchElements, and
// larger problems run as several launches over pixel (image) ranges.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include <cutlass/fast_math.h>

#include "../im2col_math.h"
#include "quantize_math.cuh"

namespace torch_int8::kernels {
namespace {

using cutlass::FastDivmod;

constexpr int kThreads = 256;
constexpr int64_t kMaxLaunchElements = int64_t{1} << 30;  // also keeps idx + grid stride below 2^31
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

int blocks_for(int64_t total) { return static_cast<int>(std::min((total + kThreads - 1) / kThreads, kMaxBlocks)); }

Status launched() { return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError; }

// idx as mixed-radix digits, fastest first: idx = ((rest * n2 + x2) * n1 + x1) * n0 + x0
// with n0..n2 the divisors; returns rest (the slowest index). The kernels list the
// digits in the order that makes neighbouring threads write neighbouring bytes.
__device__ __forceinline__ int split_index(int idx, const FastDivmod& n0, int& x0, const FastDivmod& n1, int& x1,
                                           const FastDivmod& n2, int& x2) {
  int rest;
  n0(rest, x0, idx);
  n1(rest, x1, rest);
  n2(rest, x2, rest);
  return rest;
}

// --- im2col -------------------------------------------------------------------
//
// Every launch splits a thread index into (inner, tap, outer) digits, inner
// fastest; what they count depends on the column order:
//   channel-inner columns: (channels of a group, taps, pixels), then the group;
//   pixel-inner columns:   (pixels, taps, channels of a group), then the group.
// When the destination allows it, the inner digit counts vectors of V bytes
// (V = 16, 8 or 4) instead of bytes: one thread, one vector store.

struct Im2ColDivisors {
  FastDivmod inner, taps, outer, per_image, q, s;
  int channels;  // per group
};

// Output pixel `pixel` of the launch (counted from a.pixel_begin) and tap as a ColumnIndex.
__device__ __forceinline__ detail::ColumnIndex column_index(const Im2Col& a, const Im2ColDivisors& d, int g, int c,
                                                            int tap, int pixel) {
  int n, l, oh, ow, r, s;
  d.per_image(n, l, static_cast<int>(a.pixel_begin) + pixel);
  d.q(oh, ow, l);
  d.s(r, s, tap);
  return {g, c, r, s, n, oh, ow};
}

// The general kernel: one byte per thread, any strides.
template <bool kChannelInner>
__global__ void im2col_kernel(Im2Col a, Im2ColDivisors d, int total) {
  const int64_t start = detail::pixel_offset(a.cols_strides, a.geometry, a.pixel_begin);
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int inner, tap, outer;
    const int g = split_index(idx, d.inner, inner, d.taps, tap, d.outer, outer);
    const detail::ColumnIndex i =
        kChannelInner ? column_index(a, d, g, inner, tap, outer) : column_index(a, d, g, outer, tap, inner);
    a.cols[detail::column_offset(a.cols_strides, a.geometry, i) - start] = detail::im2col_value(a, i);
  }
}

// V bytes, stored (or loaded) with one instruction at a V-aligned address.
template <int V>
struct alignas(V) Bytes {
  uint32_t word[V / 4];
};

// Channel-inner columns from an image with contiguous channels (NHWC): the V
// channels of a vector are V neighbouring input bytes, all inside the image or
// all padding, so a thread copies one vector (or fills it with the pad value).
template <int V>
__global__ void im2col_channel_vectors_kernel(Im2Col a, Im2ColDivisors d, int total) {
  const ConvProblem& p = a.geometry;
  const int64_t start = detail::pixel_offset(a.cols_strides, p, a.pixel_begin);
  Bytes<V> pad;
  for (uint32_t& w : pad.word) w = 0x01010101u * static_cast<uint8_t>(a.pad_value);
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int vector, tap, pixel;
    const int g = split_index(idx, d.inner, vector, d.taps, tap, d.outer, pixel);
    const detail::ColumnIndex i = column_index(a, d, g, vector * V, tap, pixel);
    const detail::InputPoint x = detail::input_point(p, i);
    Bytes<V> v = pad;
    if (detail::inside(p, x))
      v = *reinterpret_cast<const Bytes<V>*>(a.x + detail::input_offset(a.x_strides, i.n, g * d.channels + i.c, x));
    *reinterpret_cast<Bytes<V>*>(a.cols + detail::column_offset(a.cols_strides, p, i) - start) = v;
  }
}

// Pixel-inner columns whose rows are contiguous over the launch's pixels (the
// wgrad layout: row (g, c, tap) is pixel_count bytes from
// g*cs.g + c*cs.c + tap*cs.tap). A thread fills V consecutive pixels of a row:
// the first is split into (n, oh, ow) once, the others are reached by stepping
// (int32 offsets: the launch checked the image's extent), so there is no
// division per byte; neighbouring threads read neighbouring input bytes, which
// L1 serves. A row's last vector may be partial (kFull false): its pixels past
// the row are not read, and the caller stores only its first `count` bytes.
struct PixelWalk {
  int h0, w0;     // input (h, w) read by output pixel (0, 0) of the tap
  int n, oh, ow;  // the first output pixel
};

template <int V, bool kFull>
__device__ __forceinline__ Bytes<V> gather_pixels(const Im2Col& a, int channel, PixelWalk t, int count) {
  const ConvProblem& p = a.geometry;
  const int H = static_cast<int>(p.h), W = static_cast<int>(p.w), P = static_cast<int>(p.p),
            Q = static_cast<int>(p.q), sh = static_cast<int>(p.stride_h), sw = static_cast<int>(p.stride_w);
  const int xn = static_cast<int>(a.x_strides.n), xh = static_cast<int>(a.x_strides.h),
            xw = static_cast<int>(a.x_strides.w);
  const uint8_t* x = reinterpret_cast<const uint8_t*>(a.x);
  const uint32_t pad = static_cast<uint8_t>(a.pad_value);
  int image = channel * static_cast<int>(a.x_strides.c) + t.n * xn;
  int h = t.h0 + t.oh * sh, w = t.w0 + t.ow * sw, oh = t.oh, ow = t.ow;
  // The input row of h, when h is inside the image (only then is its offset formed).
  bool row_inside = static_cast<unsigned>(h) < static_cast<unsigned>(H);
  int row = row_inside ? image + h * xh : 0;  // element offsets in x
  Bytes<V> out{};
#pragma unroll
  for (int j = 0; j < V; ++j) {
    uint32_t v = pad;
    if ((kFull || j < count) && row_inside && static_cast<unsigned>(w) < static_cast<unsigned>(W))
      v = x[row + w * xw];
    out.word[j / 4] |= v << (8 * (j % 4));
    w += sw;
    if (++ow == Q) {
      ow = 0, w = t.w0, h += sh;
      if (++oh == P) oh = 0, h = t.h0, image += xn;
      row_inside = static_cast<unsigned>(h) < static_cast<unsigned>(H);
      row = row_inside ? image + h * xh : 0;
    }
  }
  return out;
}

template <int V>
__global__ void im2col_pixel_vectors_kernel(Im2Col a, Im2ColDivisors d, int total) {
  const ConvProblem& p = a.geometry;
  const ColumnStrides& cs = a.cols_strides;
  const int length = static_cast<int>(a.pixel_count);
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int vector, tap, c;
    const int g = split_index(idx, d.inner, vector, d.taps, tap, d.outer, c);
    const int first = vector * V, count = min(V, length - first);
    const detail::ColumnIndex i = column_index(a, d, g, c, tap, first);
    const detail::InputPoint origin = detail::input_point(p, {g, c, i.r, i.s, i.n, 0, 0});
    const PixelWalk t{static_cast<int>(origin.h), static_cast<int>(origin.w), static_cast<int>(i.n),
                      static_cast<int>(i.oh), static_cast<int>(i.ow)};
    int8_t* dst = a.cols + g * cs.g + c * cs.c + tap * cs.tap + first;
    if (count == V) {
      *reinterpret_cast<Bytes<V>*>(dst) = gather_pixels<V, true>(a, g * d.channels + c, t, count);
      continue;
    }
    const Bytes<V> out = gather_pixels<V, false>(a, g * d.channels + c, t, count);
#pragma unroll
    for (int j = 0; j < V; ++j)
      if (j < count) dst[j] = static_cast<int8_t>(out.word[j / 4] >> (8 * (j % 4)));
  }
}

// The largest V in {16, 8, 4} dividing every value, or 1.
int common_width(std::initializer_list<int64_t> values) {
  int width = 16;
  for (const int64_t v : values)
    while (width > 1 && v % width != 0) width /= 2;
  return width >= 4 ? width : 1;
}

int64_t address(const void* ptr) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptr)); }

// One past the largest element offset of x (the pixel kernel indexes it in int32).
int64_t image_extent(const Im2Col& a) {
  const ConvProblem& p = a.geometry;
  const ImageStrides& xs = a.x_strides;
  return (p.n - 1) * xs.n + (p.c - 1) * xs.c + (p.h - 1) * xs.h + (p.w - 1) * xs.w + 1;
}

// The vector width a launch can use, 1 for the general kernel.
int vector_width(const Im2Col& a) {
  const ConvProblem& p = a.geometry;
  const ColumnStrides& cs = a.cols_strides;
  const ImageStrides& xs = a.x_strides;
  if (cs.c == 1) {
    if (xs.c != 1) return 1;
    return common_width({p.c / p.groups, address(a.cols), cs.g, cs.tap, cs.n, cs.pixel, address(a.x), xs.n, xs.h,
                         xs.w});
  }
  const int64_t per_image = p.p * p.q;
  const bool one_image = a.pixel_begin / per_image == (a.pixel_begin + a.pixel_count - 1) / per_image;
  if (cs.pixel != 1 || (cs.n != per_image && !one_image) || image_extent(a) > INT32_MAX) return 1;
  return common_width({address(a.cols), cs.g, cs.c, cs.tap});
}

// fn(std::integral_constant<int, V>{}) for V = width in {16, 8, 4}.
template <class Fn>
void with_width(int width, Fn&& fn) {
  switch (width) {
    case 16: return fn(std::integral_constant<int, 16>{});
    case 8: return fn(std::integral_constant<int, 8>{});
    default: return fn(std::integral_constant<int, 4>{});
  }
}

Status launch_im2col(const Im2Col& a, cudaStream_t stream) {
  const ConvProblem& p = a.geometry;
  const int64_t channels = p.c / p.groups, taps = p.r * p.s;
  const bool channel_inner = a.cols_strides.c == 1;
  const int width = vector_width(a);
  const int64_t inner = channel_inner ? channels : a.pixel_count, outer = channel_inner ? a.pixel_count : channels;
  const int64_t vectors = (inner + width - 1) / width;
  const Im2ColDivisors d{FastDivmod(static_cast<int>(vectors)), FastDivmod(static_cast<int>(taps)),
                         FastDivmod(static_cast<int>(outer)), FastDivmod(static_cast<int>(p.p * p.q)),
                         FastDivmod(static_cast<int>(p.q)), FastDivmod(static_cast<int>(p.s)),
                         static_cast<int>(channels)};
  const int64_t total = p.groups * vectors * taps * outer;
  const int blocks = blocks_for(total);
  if (width == 1) {
    if (channel_inner)
      im2col_kernel<true><<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(total));
    else
      im2col_kernel<false><<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(total));
  } else {
    with_width(width, [&](auto v) {
      if (channel_inner)
        im2col_channel_vectors_kernel<decltype(v)::value>
            <<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(total));
      else
        im2col_pixel_vectors_kernel<decltype(v)::value>
            <<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(total));
    });
  }
  return launched();
}

// --- col2im -------------------------------------------------------------------
//
// One image element per thread, its taps found with int32 arithmetic (the
// launch checks the padded sizes fit); images [n0, n0 + count) per launch.

struct Col2ImDivisors {
  FastDivmod c, h, w;
};

// Where a sum goes: the image itself (Acc), or rescaled into T (Col2ImScales).
template <class Acc>
struct StoreSum {
  Acc* image;
  __device__ void operator()(int64_t offset, int, int, Acc sum) const { image[offset] = sum; }
};

using quantize_math::from_float;

template <class T>
struct StoreScaled {
  T* image;
  Col2ImScales scales;
  __device__ void operator()(int64_t offset, int n, int c, int32_t sum) const {
    image[offset] = from_float<T>(
        detail::scaled_sum(sum, detail::scale_of_image(scales, n), detail::scale_of_channel(scales, c)));
  }
};

template <class Col, class Acc, bool kChannelInner, class Store>
__global__ void col2im_kernel(Col2Im a, Col2ImDivisors d, int n0, int total, Store store) {
  const ImageStrides& is = a.image_strides;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int c, h, w;
    const int n =
        n0 + (kChannelInner ? split_index(idx, d.c, c, d.w, w, d.h, h) : split_index(idx, d.w, w, d.h, h, d.c, c));
    store(n * is.n + c * is.c + h * is.h + w * is.w, n, c, detail::col2im_value<Col, Acc, int>(a, n, c, h, w));
  }
}

template <class Col, class Acc, class Store>
Status launch_col2im(const Col2Im& a, int64_t n0, int64_t count, Store store, cudaStream_t stream) {
  const ConvProblem& p = a.geometry;
  const Col2ImDivisors d{FastDivmod(static_cast<int>(p.c)), FastDivmod(static_cast<int>(p.h)),
                         FastDivmod(static_cast<int>(p.w))};
  const int64_t total = count * p.c * p.h * p.w;
  const int blocks = blocks_for(total);
  if (a.image_strides.c == 1)
    col2im_kernel<Col, Acc, true>
        <<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(n0), static_cast<int>(total), store);
  else
    col2im_kernel<Col, Acc, false>
        <<<blocks, kThreads, 0, stream>>>(a, d, static_cast<int>(n0), static_cast<int>(total), store);
  return launched();
}

// fn(store) with the store of a's output (valid_scales checked).
template <class Acc, class Fn>
Status visit_store(const Col2Im& a, Fn&& fn) {
  if (!a.scales.scale_n) return fn(StoreSum<Acc>{static_cast<Acc*>(a.image)});
  if constexpr (std::is_same_v<Acc, int32_t>) {
    switch (a.scales.out_type) {
      case OutType::kBFloat16: return fn(StoreScaled<__nv_bfloat16>{static_cast<__nv_bfloat16*>(a.image), a.scales});
      case OutType::kFloat16: return fn(StoreScaled<__half>{static_cast<__half*>(a.image), a.scales});
      default: return fn(StoreScaled<float>{static_cast<float*>(a.image), a.scales});
    }
  }
  return Status::kInvalidArgument;
}

}  // namespace

Status im2col_cuda(const Im2Col& a, void* stream) {
  const ConvProblem& p = a.geometry;
  const int64_t pixels = p.n * p.p * p.q, per_pixel = p.c * p.r * p.s;
  if (!valid_geometry(p) || a.pixel_begin < 0 || a.pixel_count < 0 || a.pixel_begin + a.pixel_count > pixels ||
      pixels >= (int64_t{1} << 31) || per_pixel > kMaxLaunchElements)
    return Status::kInvalidArgument;
  const int64_t start = detail::pixel_offset(a.cols_strides, p, a.pixel_begin);
  const int64_t step = kMaxLaunchElements / per_pixel;
  for (int64_t begin = a.pixel_begin; begin < a.pixel_begin + a.pixel_count; begin += step) {
    Im2Col part = a;
    part.pixel_begin = begin;
    part.pixel_count = std::min(step, a.pixel_begin + a.pixel_count - begin);
    part.cols = a.cols + (detail::pixel_offset(a.cols_strides, p, begin) - start);
    if (const Status s = launch_im2col(part, static_cast<cudaStream_t>(stream)); s != Status::kSuccess) return s;
  }
  return Status::kSuccess;
}

Status col2im_cuda(const Col2Im& a, void* stream) {
  const ConvProblem& p = a.geometry;
  const int64_t per_image = p.c * p.h * p.w;
  if (!valid_geometry(p) || !detail::valid_scales(a, true) || per_image > kMaxLaunchElements ||
      p.n >= (int64_t{1} << 31) || p.h + 2 * p.pad_h >= (int64_t{1} << 31) || p.w + 2 * p.pad_w >= (int64_t{1} << 31))
    return Status::kInvalidArgument;
  return detail::visit_column_type(a.cols_type, [&](auto col, auto acc) {
    using Col = decltype(col);
    using Acc = decltype(acc);
    return visit_store<Acc>(a, [&](auto store) {
      const int64_t step = kMaxLaunchElements / per_image;
      for (int64_t n0 = 0; n0 < p.n; n0 += step)
        if (const Status s = launch_col2im<Col, Acc>(a, n0, std::min(step, p.n - n0), store,
                                                     static_cast<cudaStream_t>(stream));
            s != Status::kSuccess)
          return s;
      return Status::kSuccess;
    });
  });
}

}  // namespace torch_int8::kernels
