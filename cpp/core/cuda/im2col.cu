// im2col / col2im on the GPU: one element per thread, the element functions
// of im2col_math.h (the CPU reference runs the same ones).
//
// Threads walk the elements so that neighbours touch neighbouring bytes of the
// output (channels innermost when the output is channel-contiguous, pixels
// otherwise): writes coalesce, and so do the reads of NHWC (resp. NCHW) input.
// Indices are int32 split with CUTLASS's FastDivmod (a multiply-high instead
// of a division); each launch therefore covers at most kMaxLaunchElements, and
// larger problems run as several launches over pixel (image) ranges.
#include <cuda_runtime_api.h>

#include <algorithm>

#include <cutlass/fast_math.h>

#include "../im2col_math.h"

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

struct Im2ColDivisors {
  FastDivmod channels, taps, pixels, per_image, q, s;  // pixels: the launch's pixel count
};

template <bool kChannelInner>
__global__ void im2col_kernel(Im2Col a, Im2ColDivisors d, int total) {
  const ConvProblem& p = a.geometry;
  const int64_t start = detail::pixel_offset(a.cols_strides, p, a.pixel_begin);
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int c, tap, pixel;
    const int g = kChannelInner ? split_index(idx, d.channels, c, d.taps, tap, d.pixels, pixel)
                                : split_index(idx, d.pixels, pixel, d.taps, tap, d.channels, c);
    int n, l, oh, ow, r, s;
    d.per_image(n, l, static_cast<int>(a.pixel_begin) + pixel);
    d.q(oh, ow, l);
    d.s(r, s, tap);
    const detail::ColumnIndex i{g, c, r, s, n, oh, ow};
    a.cols[detail::column_offset(a.cols_strides, p, i) - start] = detail::im2col_value(a, i);
  }
}

Status launch_im2col(const Im2Col& a, cudaStream_t stream) {
  const ConvProblem& p = a.geometry;
  const int64_t channels = p.c / p.groups, taps = p.r * p.s;
  const Im2ColDivisors d{FastDivmod(static_cast<int>(channels)), FastDivmod(static_cast<int>(taps)),
                         FastDivmod(static_cast<int>(a.pixel_count)), FastDivmod(static_cast<int>(p.p * p.q)),
                         FastDivmod(static_cast<int>(p.q)), FastDivmod(static_cast<int>(p.s))};
  const int64_t total = p.groups * channels * taps * a.pixel_count;
  if (a.cols_strides.c == 1)
    im2col_kernel<true><<<blocks_for(total), kThreads, 0, stream>>>(a, d, static_cast<int>(total));
  else
    im2col_kernel<false><<<blocks_for(total), kThreads, 0, stream>>>(a, d, static_cast<int>(total));
  return launched();
}

// --- col2im -------------------------------------------------------------------

struct Col2ImDivisors {
  FastDivmod c, h, w;
};

template <class Col, class Acc, bool kChannelInner>
__global__ void col2im_kernel(Col2Im a, Col2ImDivisors d, int total) {
  Acc* image = static_cast<Acc*>(a.image);
  const ImageStrides& is = a.image_strides;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    int c, h, w;
    const int n = kChannelInner ? split_index(idx, d.c, c, d.w, w, d.h, h) : split_index(idx, d.w, w, d.h, h, d.c, c);
    image[n * is.n + c * is.c + h * is.h + w * is.w] = detail::col2im_value<Col, Acc>(a, n, c, h, w);
  }
}

template <class Col, class Acc>
Status launch_col2im(const Col2Im& a, cudaStream_t stream) {
  const ConvProblem& p = a.geometry;
  const Col2ImDivisors d{FastDivmod(static_cast<int>(p.c)), FastDivmod(static_cast<int>(p.h)),
                         FastDivmod(static_cast<int>(p.w))};
  const int64_t total = p.n * p.c * p.h * p.w;
  if (a.image_strides.c == 1)
    col2im_kernel<Col, Acc, true><<<blocks_for(total), kThreads, 0, stream>>>(a, d, static_cast<int>(total));
  else
    col2im_kernel<Col, Acc, false><<<blocks_for(total), kThreads, 0, stream>>>(a, d, static_cast<int>(total));
  return launched();
}

}  // namespace

Status im2col_cuda(const Im2Col& a, void* stream) {
  const ConvProblem& p = a.geometry;
  const int64_t pixels = p.n * p.p * p.q, per_pixel = p.c * p.r * p.s;
  if (!detail::valid_geometry(p) || a.pixel_begin < 0 || a.pixel_count < 0 || a.pixel_begin + a.pixel_count > pixels ||
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
  if (!detail::valid_geometry(p) || per_image > kMaxLaunchElements) return Status::kInvalidArgument;
  return detail::visit_column_type(a.cols_type, [&](auto col, auto acc) {
    using Col = decltype(col);
    using Acc = decltype(acc);
    const int64_t step = kMaxLaunchElements / per_image;
    for (int64_t n0 = 0; n0 < p.n; n0 += step) {
      Col2Im part = a;
      part.geometry.n = std::min(step, p.n - n0);
      part.cols = static_cast<const Col*>(a.cols) + n0 * a.cols_strides.n;
      part.image = static_cast<Acc*>(a.image) + n0 * a.image_strides.n;
      if (const Status s = launch_col2im<Col, Acc>(part, static_cast<cudaStream_t>(stream)); s != Status::kSuccess)
        return s;
    }
    return Status::kSuccess;
  });
}

}  // namespace torch_int8::kernels
