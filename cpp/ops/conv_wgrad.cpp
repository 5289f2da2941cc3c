// int8::conv2d_wgrad and int8::scaled_conv2d_wgrad (the weight gradient): schema, CPU / CUDA /
// Meta kernels. conv2d_wgrad: dW = dY^T @ cols per group over the pixels (GPU: split-K over slices
// of them, im2col + GEMM; CPU: at::_int_mm of dY^T and the forward's columns where they lie);
// scaled_conv2d_wgrad: per-image scales, the implicit-GEMM kernel
// (conv2d_wgrad_scaled_cuda) where it runs, else each image's exact sum scaled and the images
// added in float64 (on the CPU batches of images, one im2col and one product per image).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "conv_checks.h"
#include "conv_common.h"

namespace torch_int8::ops {
namespace {

using kernels::ConvProblem;
using kernels::Epilogue;
using kernels::GemmProblem;

// conv2d_wgrad's int32 result sums over all N*P*Q pixels.
template <bool kSym>
Dims<kSym> int32_wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                            const ConvParams& cp) {
  using S = Shape<kSym>;
  const char* op = "conv2d_wgrad";
  const auto d = wgrad_dims<kSym>(grad_out, x, kernel_size, cp, op);
  const auto pixels = S::known(d.n * d.p * d.q);
  TORCH_CHECK_VALUE(!pixels || *pixels <= kernels::kMaxK, op, ": N*P*Q = ", int_str(d.n * d.p * d.q), " exceeds ",
                    int_str(kernels::kMaxK), ", beyond which the int32 result can overflow; split the batch");
  return d;
}

// wgrad's GEMM is [K/G x depth] with the pixels (up to 131071 per call) as
// GEMM-K: a few output tiles, so one GEMM would leave most SMs idle. A chunk
// of pixels is split into `slices` slices of `slice` pixels (a multiple of
// align), one batch entry each, enough for kWgradTiles output tiles but no
// slice shorter than kWgradMinSlice pixels. When one chunk takes all the
// pixels, a split that ends exactly at the last pixel (down to half as many
// slices) is preferred: dY^T then needs no zero padding past it.
constexpr int64_t kWgradTiles = 256, kWgradMinSlice = 1024, kWgradTile = 128;
struct WgradSplit {
  int64_t slices, slice;
};
WgradSplit wgrad_split(int64_t rows, int64_t cols, int64_t chunk, int64_t align, int64_t pixels) {
  const int64_t tiles = ceil_div(rows, kWgradTile) * ceil_div(cols, kWgradTile);
  const int64_t most = std::max<int64_t>(1, chunk / kWgradMinSlice);
  const int64_t slices = std::clamp(ceil_div(kWgradTiles, tiles), int64_t{1}, most);
  if (chunk >= pixels && pixels % align == 0)
    for (int64_t exact = slices; 2 * exact >= slices; --exact)
      if (pixels / align % exact == 0) return {exact, pixels / exact};
  return {slices, round_up(ceil_div(chunk, slices), align)};
}

// Whether the GEMM can read dY^T [G][K/G][pixels] where it lies: pixels
// contiguous, every row (and so every chunk start, a multiple of align) on
// an align-byte boundary, and no slice reading past the last pixel.
bool wgrad_reads_in_place(const at::Tensor& dyt, int64_t chunk, int64_t align) {
  const int64_t pixels = dyt.size(2);
  return pixels % chunk == 0 && dyt.stride(2) == 1 && dyt.stride(1) % align == 0 && dyt.stride(0) % align == 0 &&
         reinterpret_cast<uintptr_t>(dyt.const_data_ptr()) % align == 0;
}

// Images [n0, n0 + count) as the rows of the weight gradient's B operand on the CPU, [G][pixels]
// [(r, s, c)]: x's own pixels for a 1x1, stride-1, unpadded layer of dense channels_last x (a view),
// else the forward's im2col (a row of taps per pixel).
at::Tensor pixel_rows_cpu(const ConvProblem& p, const at::Tensor& x, int64_t n0, int64_t count) {
  const int64_t g = p.groups, cg = p.c / g, per_image = p.p * p.q, depth = p.r * p.s * cg;
  const int64_t pixels = count * per_image;
  const kernels::ImageStrides xs = nchw_strides(x);
  if (pixel_to_pixel(p) && dense_nhwc(xs, p))
    return x.permute({0, 2, 3, 1}).reshape({1, p.n * per_image, p.c}).narrow(1, n0 * per_image, pixels);
  const at::Tensor cols = at::empty({g, pixels, depth}, x.options());
  kernels::Im2Col a;
  a.geometry = p, a.x = x.const_data_ptr<int8_t>(), a.x_strides = xs;
  a.cols = cols.data_ptr<int8_t>(), a.cols_strides = {pixels * depth, 1, cg, per_image * depth, depth};
  a.pixel_begin = n0 * per_image, a.pixel_count = pixels;
  run_im2col(a, x);
  return cols;
}

// The weight gradient's int32 products on the CPU over images [n0, n0 + count): at::_int_mm of dY^T
// and pixel_rows_cpu where they lie (dy_pixels: dY as [N*P*Q, K] pixel rows, a view of channels_last
// dY), per group, into [G, K/G, R*S*C/G] ((r, s, c) columns); or (per_image) each image's own, one
// product per image and thread, into [count, G, K/G, R*S*C/G]. Sums of at most kMaxK pixels.
at::Tensor wgrad_products_cpu(const ConvProblem& p, const at::Tensor& dy_pixels, const at::Tensor& x, int64_t n0,
                              int64_t count, bool per_image) {
  const int64_t g = p.groups, kg = p.k / g, per_image_pixels = p.p * p.q, depth = p.r * p.s * p.c / g;
  const at::Tensor rows = pixel_rows_cpu(p, x, n0, count);
  // dY^T of group gi over `len` pixels from pixel `first` of the batch, and the matching rows.
  auto dy_t = [&](int64_t gi, int64_t first, int64_t len) {
    return dy_pixels.narrow(0, n0 * per_image_pixels + first, len).narrow(1, gi * kg, kg).t();
  };
  if (!per_image) {
    const at::Tensor out = at::empty({g, kg, depth}, x.options().dtype(at::kInt));
    for (int64_t gi = 0; gi < g; ++gi) {
      at::Tensor group = out.select(0, gi);
      at::_int_mm_out(group, dy_t(gi, 0, count * per_image_pixels), rows.select(0, gi));
    }
    return out;
  }
  const at::Tensor out = at::empty({count, g, kg, depth}, x.options().dtype(at::kInt));
  // One product per thread (a product inside a parallel region runs on its thread).
  at::parallel_for(0, count * g, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / g, gi = t % g;
      at::Tensor image = out.select(0, i).select(0, gi);
      at::_int_mm_out(image, dy_t(gi, i * per_image_pixels, per_image_pixels),
                      rows.select(0, gi).narrow(0, i * per_image_pixels, per_image_pixels));
    }
  });
  return out;
}

// dY as [N*P*Q, K] pixel rows: a view of channels_last dY, else one copy.
at::Tensor dy_pixels_of(const at::Tensor& grad_out) {
  return grad_out.permute({0, 2, 3, 1}).reshape({-1, grad_out.size(1)});
}

// conv2d_wgrad on the CPU: batches of images under the workspace limit (their columns), the
// batches' int32 sums added (exact: N*P*Q <= kMaxK). [K, C/G, R, S] contiguous.
at::Tensor conv2d_wgrad_cpu(const at::Tensor& grad_out, const at::Tensor& x, const ConvProblem& p) {
  const int64_t cg = p.c / p.groups, depth = p.r * p.s * cg;
  const at::Tensor dy_pixels = dy_pixels_of(grad_out);
  const int64_t images = units_per_chunk(p.groups * depth * p.p * p.q, p.n);
  at::Tensor sum;
  for (int64_t n0 = 0; n0 < p.n; n0 += images) {
    const at::Tensor part = wgrad_products_cpu(p, dy_pixels, x, n0, std::min(images, p.n - n0), false);
    sum = n0 == 0 ? part : sum.add_(part);
  }
  return sum.view({p.k, p.r, p.s, cg}).permute({0, 3, 1, 2}).contiguous();
}

at::Tensor conv2d_wgrad_kernel(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups) {
  const ConvParams cp = conv_params("conv2d_wgrad", stride, padding, dilation, groups);
  const ConvProblem p = problem_of(int32_wgrad_dims<false>(grad_out, x, kernel_size, cp), cp);
  if (!x.is_cuda()) return conv2d_wgrad_cpu(grad_out, x, p);
  c10::DeviceGuard guard(x.device());
  const int64_t align = kGpuAlign;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q, pixels = p.n * per_image;
  const int64_t depth = p.r * p.s * cg, n_pad = round_up(depth, align);
  const WgradSplit split = wgrad_split(kg, n_pad, units_per_chunk(g * n_pad, pixels, align), align, pixels);
  const int64_t chunk = split.slices * split.slice;
  // A: dY^T per group [G][K/G][pixels] (a view for dY in [K, N, P, Q] memory, Conv2d's layout),
  // else zero-padded to whole chunks (a chunk's last slice may pass the last pixel); B: the
  // columns, one row per (r, s, c), pixels contiguous.
  const at::Tensor dy_rows = grad_out.permute({1, 0, 2, 3}).reshape({g, kg, pixels});
  const at::Tensor dyt =
      wgrad_reads_in_place(dy_rows, chunk, align) ? dy_rows : padded(dy_rows, kg, round_up(pixels, chunk));
  // A 1x1, stride-1, unpadded wgrad of x in [C, N, H, W] memory (pixels contiguous per channel, as
  // the per-channel path quantizes it) whose dY^T is read in place: x^T is the B operand where it
  // lies, and no slice passes the last pixel.
  const kernels::ImageStrides xs = nchw_strides(x);
  const bool x_in_place = pixel_to_pixel(p) && n_pad == p.c && xs.w == 1 && xs.h == p.w && xs.n == p.h * p.w &&
                          xs.c % align == 0 && reinterpret_cast<uintptr_t>(x.const_data_ptr()) % align == 0 &&
                          dyt.data_ptr() == dy_rows.data_ptr();
  // Only the padding rows (r, s, c) >= depth need zeros: im2col writes the rest, and the columns
  // past a chunk's pixels (stale or never written) meet the zero padding of dY^T.
  const at::Tensor cols = x_in_place ? x : at::empty({g, n_pad, chunk}, x.options());
  if (n_pad > depth) cols.narrow(1, depth, n_pad - depth).zero_();
  const at::Tensor grad_w = at::empty({g, kg, n_pad}, x.options().dtype(at::kInt));
  // One int32 partial product per slice (split-K over the pixels), summed after each chunk.
  const at::Tensor partial = at::empty({split.slices, g, kg, n_pad}, grad_w.options());

  kernels::Im2Col a;
  a.geometry = p, a.x = x.const_data_ptr<int8_t>(), a.x_strides = nchw_strides(x);
  a.cols = cols.data_ptr<int8_t>(), a.cols_strides = {n_pad * chunk, chunk, cg * chunk, per_image, 1};
  for (int64_t m0 = 0; m0 < pixels; m0 += chunk) {
    const int64_t count = std::min(chunk, pixels - m0), slices = ceil_div(count, split.slice);
    a.pixel_begin = m0, a.pixel_count = count;
    if (!x_in_place) run_im2col(a, x);
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = kg, gp.n = n_pad, gp.k = split.slice, gp.batch = slices;
      gp.a = dyt.const_data_ptr<int8_t>() + gi * dyt.stride(0) + m0, gp.lda = dyt.stride(1);
      gp.b = x_in_place ? x.const_data_ptr<int8_t>() + m0 : cols.const_data_ptr<int8_t>() + gi * n_pad * chunk;
      gp.ldb = x_in_place ? xs.c : chunk;
      gp.batch_stride_a = gp.batch_stride_b = split.slice;
      gp.d = partial.data_ptr<int32_t>() + gi * kg * n_pad, gp.ldd = n_pad, gp.batch_stride_d = g * kg * n_pad;
      run_gemm(gp, Epilogue{}, x, kConvGemm);
    }
    // Exact: every partial sum is bounded by the whole one (N*P*Q <= kMaxK).
    const at::Tensor sum = partial.narrow(0, 0, slices).sum(0, false, at::kInt);
    m0 == 0 ? grad_w.copy_(sum) : grad_w.add_(sum);
  }
  return grad_w.narrow(2, 0, depth).reshape({p.k, p.r, p.s, cg}).permute({0, 3, 1, 2}).contiguous();
}

at::Tensor conv2d_wgrad_meta(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  const auto d =
      int32_wgrad_dims<true>(grad_out, x, kernel_size, conv_params("conv2d_wgrad", stride, padding, dilation, groups));
  return at::empty_symint({d.k, d.c / groups, d.r, d.s}, x.options().dtype(at::kInt));
}

// --- scaled wgrad: per-image scales, float32 result ----------------------------------

template <bool kSym>
Dims<kSym> scaled_wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                             const at::Tensor& scale_x, at::IntArrayRef kernel_size, const ConvParams& cp) {
  const char* op = "scaled_conv2d_wgrad";
  const auto d = wgrad_dims<kSym>(grad_out, x, kernel_size, cp, op);
  check_dtype(scale_grad_out, at::kFloat, op, "scale_grad_out");
  check_dtype(scale_x, at::kFloat, op, "scale_x");
  check_epilogue_vector<kSym>(scale_grad_out, d.n, grad_out, op, "scale_grad_out", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_x, d.n, grad_out, op, "scale_x", "per tensor or per image");
  return d;
}

// The exact wgrad of one image (dy [1, K, P, Q], x [1, C, H, W]) in int64: conv2d_wgrad's int32
// sum where P*Q <= kMaxK; else the sum of int32 wgrads of output tiles of at most kMaxK pixels
// (bands of rows, and of columns where one row alone is longer), each over the input it reads,
// cut from the image padded explicitly (so that the tiles need no padding of their own).
at::Tensor image_wgrad_int64(const at::Tensor& dy, const at::Tensor& x, const ConvParams& cp,
                             at::IntArrayRef kernel_size) {
  const int64_t p = dy.size(2), q = dy.size(3);
  auto wgrad = [&](const at::Tensor& d, const at::Tensor& xi, at::IntArrayRef padding) {
    return conv2d_wgrad_kernel(d, xi, kernel_size, cp.stride, padding, cp.dilation, cp.groups).to(at::kLong);
  };
  if (p * q <= kernels::kMaxK) return wgrad(dy, x, cp.padding);
  const at::Tensor xp = at::constant_pad_nd(x, {cp.padding[1], cp.padding[1], cp.padding[0], cp.padding[0]}, 0);
  const int64_t tile_q = std::min(q, kernels::kMaxK), tile_p = std::max<int64_t>(1, kernels::kMaxK / tile_q);
  // Input rows (columns) that `count` output rows from p0 read along one axis.
  auto span = [&](int axis, int64_t count) {
    return (count - 1) * cp.stride[axis] + cp.dilation[axis] * (kernel_size[axis] - 1) + 1;
  };
  at::Tensor acc;
  for (int64_t p0 = 0; p0 < p; p0 += tile_p) {
    const int64_t rows = std::min(tile_p, p - p0);
    for (int64_t q0 = 0; q0 < q; q0 += tile_q) {
      const int64_t cols = std::min(tile_q, q - q0);
      const at::Tensor x_tile =
          xp.narrow(2, p0 * cp.stride[0], span(0, rows)).narrow(3, q0 * cp.stride[1], span(1, cols));
      const at::Tensor tile = wgrad(dy.narrow(2, p0, rows).narrow(3, q0, cols), x_tile, {0, 0});
      acc = acc.defined() ? acc.add_(tile) : tile;
    }
  }
  return acc;
}

// scaled_wgrad_by_image on the CPU: images of at most kMaxK pixels in batches (the columns and
// the int32 gradients of a batch under the workspace limit), each image's int32 sum scaled and
// the images summed in float64.
at::Tensor scaled_wgrad_batched_cpu(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& image_scale,
                                    const ConvProblem& p) {
  const int64_t per_image = p.p * p.q, depth = p.r * p.s * p.c / p.groups;
  const at::Tensor dy_pixels = dy_pixels_of(grad_out);
  // Per image: its columns (int8) and its int32 and float64 weight gradients.
  const int64_t images = units_per_chunk(p.groups * depth * per_image + 12 * p.k * depth, p.n);
  at::Tensor sum;
  for (int64_t n0 = 0; n0 < p.n; n0 += images) {
    const int64_t count = std::min(images, p.n - n0);
    const at::Tensor wgrads =
        wgrad_products_cpu(p, dy_pixels, x, n0, count, true).to(at::kDouble).view({count, -1});
    const at::Tensor part = at::mv(wgrads.t(), image_scale.narrow(0, n0, count));  // sum of scale[n] * wgrad[n]
    sum = n0 == 0 ? part : sum.add_(part);
  }
  // [G, K/G, (r, s, c)] = [K, R, S, C/G] memory: [K, C/G, R, S] in channels_last
  return sum.view({p.k, p.r, p.s, p.c / p.groups}).permute({0, 3, 1, 2}).to(at::kFloat);
}

// The images one at a time (image_wgrad_int64 of each, exact), scaled and summed in
// float64: the GPU's kernel where the implicit-GEMM kernel declines, and the CPU's for images of
// more than kMaxK pixels (else scaled_wgrad_batched_cpu).
at::Tensor scaled_wgrad_by_image(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& image_scale,
                                 at::IntArrayRef kernel_size, const ConvParams& cp, const ConvProblem& p) {
  if (!x.is_cuda() && p.p * p.q <= kernels::kMaxK)
    return scaled_wgrad_batched_cpu(grad_out, x, image_scale, p);
  at::Tensor sum;
  for (int64_t n = 0; n < x.size(0); ++n) {
    const at::Tensor acc = image_wgrad_int64(grad_out.narrow(0, n, 1), x.narrow(0, n, 1), cp, kernel_size);
    const at::Tensor term = acc.to(at::kDouble) * image_scale.select(0, n);
    sum = n == 0 ? term : sum.add_(term);
  }
  return sum.to(at::kFloat);
}

at::Tensor scaled_conv2d_wgrad_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                                      const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "scaled_conv2d_wgrad";
  const ConvParams cp = conv_params(op, stride, padding, dilation, groups);
  const ConvProblem p = problem_of(scaled_wgrad_dims<false>(grad_out, x, scale_grad_out, scale_x, kernel_size, cp), cp);
  c10::DeviceGuard guard(x.device());
  if (x.is_cuda()) {
    const at::Tensor dy = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor xs = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor sg = scale_grad_out.contiguous(), sx = scale_x.contiguous();
    kernels::ScaledWgrad w;
    w.geometry = p, w.grad_out = dy.const_data_ptr<int8_t>(), w.x = xs.const_data_ptr<int8_t>();
    w.scale_grad_out = sg.const_data_ptr<float>(), w.grad_out_per_tensor = sg.numel() == 1;
    w.scale_x = sx.const_data_ptr<float>(), w.x_per_tensor = sx.numel() == 1;
    w.splits = kernels::conv2d_wgrad_scaled_splits(p);
    const at::Tensor partial = at::empty({w.splits, p.k, p.r, p.s, p.c}, x.options().dtype(at::kFloat));
    w.partial = partial.data_ptr<float>();
    const kernels::Status status = kernels::conv2d_wgrad_scaled_cuda(w, stream_of(x));
    // [K, R, S, C] memory: the result in channels_last, as documented (no transposing copy).
    if (status == kernels::Status::kSuccess) return partial.sum(0).permute({0, 3, 1, 2});
    if (status != kernels::Status::kInvalidArgument && status != kernels::Status::kNoKernel) check_status(status, op);
  }
  // Per image: the float32 product of its two scales, as the GPU kernel forms it.
  const at::Tensor image_scale = (scale_grad_out.expand({p.n}) * scale_x.expand({p.n})).to(at::kDouble);
  return scaled_wgrad_by_image(grad_out, x, image_scale, kernel_size, cp, p).contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor scaled_conv2d_wgrad_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                                    const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvParams cp = conv_params("scaled_conv2d_wgrad", stride, padding, dilation, groups);
  const auto d = scaled_wgrad_dims<true>(grad_out, x, scale_grad_out, scale_x, kernel_size, cp);
  return at::empty_symint({d.k, d.c / groups, d.r, d.s},
                          x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "conv2d_wgrad(Tensor grad_out, Tensor x, int[2] kernel_size, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor");
  m.def(
      "scaled_conv2d_wgrad(Tensor grad_out, Tensor x, Tensor scale_grad_out, Tensor scale_x, int[2] kernel_size, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor");
}

namespace {
void impl_wgrad_kernels(torch::Library& m) {
  m.impl("conv2d_wgrad", conv2d_wgrad_kernel);
  m.impl("scaled_conv2d_wgrad", scaled_conv2d_wgrad_kernel);
}
}  // namespace

TORCH_INT8_IMPL_CPU_AND_CUDA(impl_wgrad_kernels)

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("conv2d_wgrad", conv2d_wgrad_meta);
  m.impl("scaled_conv2d_wgrad", scaled_conv2d_wgrad_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"conv2d_wgrad", "scaled_conv2d_wgrad"}); }

}  // namespace torch_int8::ops
