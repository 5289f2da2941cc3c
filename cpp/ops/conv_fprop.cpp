// int8::conv2d and int8::scaled_conv2d (the forward convolution): schema, CPU / CUDA / Meta
// kernels. On the GPU the forward first tries the implicit-GEMM kernel (conv2d_fprop_cuda) and
// falls back to im2col + GEMM (conv_common.h) when it declines; a depth C/G*R*S beyond kMaxK
// sums int32 convolutions of channel slices in int64.
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

// The epilogue's operands for a forward convolution: per-pixel rows (the
// activation scale of each pixel's image, minus the activation zero point)
// and per-output-channel columns (weight scale, weight sums, bias), and the ReLU. Empty for int32 output.
struct ForwardScales {
  at::Tensor scale_x, row_offset_value;  // scale_x: [1] or [N]
  at::Tensor col_scale, col_sum, col_bias;  // [K] float32 or undefined
  int32_t out_zero_point = 0;
  bool relu = false;
};

// Row vectors for pixels of images [n0, n0 + count), each image P*Q pixels.
struct RowVectors {
  at::Tensor scale, offset;
};
RowVectors row_vectors(const ForwardScales& fs, int64_t n, int64_t n0, int64_t count, int64_t per_image) {
  RowVectors rv;
  // A device copy of the expanded scales (repeat_interleave may sync to size its output).
  if (fs.scale_x.defined())
    rv.scale = fs.scale_x.expand({n}).narrow(0, n0, count).unsqueeze(1).expand({count, per_image}).contiguous().view(
        {-1});
  if (fs.row_offset_value.defined()) rv.offset = fs.row_offset_value.expand({count * per_image}).contiguous();
  return rv;
}

const float* ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

Epilogue epilogue_of(const RowVectors& rv, const at::Tensor& col_scale, const at::Tensor& col_sum,
                     const at::Tensor& col_bias, int64_t col_offset, const ForwardScales& fs) {
  auto col = [&](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() + col_offset : nullptr; };
  Epilogue e;
  e.row_scale = ptr(rv.scale), e.row_offset = ptr(rv.offset);
  e.col_scale = col(col_scale), e.col_sum = col(col_sum), e.col_bias = col(col_bias);
  e.out_zero_point = fs.out_zero_point, e.relu = fs.relu;
  return e;
}

// The implicit-GEMM kernel on dense NHWC / KRSC operands; false when it
// declines the problem. It pads with zeros, so an activation zero point
// other than 0 (padded with the zero point) must take the im2col path.
// Whether the device's family takes the channel counts (conv.h's
// conv_can_implement, the rule the family checks) is asked first, so that the
// stem (C = 3) and grouped layers do not pay for the operand copies below only
// to be declined.
bool try_implicit_gemm(ConvProblem p, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
                       const ForwardScales& fs, int8_t pad_value) {
  if (pad_value != 0 && (p.pad_h > 0 || p.pad_w > 0)) return false;
  if (!kernels::conv_can_implement(kernels::ConvKernel::kFprop, kernels::device_gemm_backend(x.get_device()), p.c,
                                   p.k, p.groups, y.element_size()))
    return false;
  const at::Tensor x_nhwc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor filter = weight.permute({0, 2, 3, 1}).contiguous();
  const int64_t k_pad = round_up(p.k, kGpuAlign);
  auto cols = [&](const at::Tensor& v) { return v.defined() ? group_columns(v, p.k, 1, k_pad) : at::Tensor(); };
  const at::Tensor col_scale = cols(fs.col_scale), col_sum = cols(fs.col_sum), col_bias = cols(fs.col_bias);
  const RowVectors rv = row_vectors(fs, p.n, 0, p.n, p.p * p.q);
  p.x = x_nhwc.const_data_ptr<int8_t>(), p.filter = filter.const_data_ptr<int8_t>(), p.y = y.data_ptr();
  p.out_type = out_type_of(y.scalar_type(), "scaled_conv2d");
  const kernels::Status s = kernels::conv2d_fprop_cuda(
      p, epilogue_of(rv, col_scale, col_sum, col_bias, 0, fs), stream_of(x));
  if (s == kernels::Status::kInvalidArgument || s == kernels::Status::kNoKernel) return false;
  check_status(s, "conv2d");
  return true;
}

// y [N, P, Q, K] = conv(x, weight) with the epilogue of fs, on the general path.
void forward_im2col(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
                    const ForwardScales& fs, int8_t pad_value) {
  const int64_t align = x.is_cuda() ? kGpuAlign : 1;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q;
  const int64_t depth = p.r * p.s * cg, k_pad = round_up(depth, align), n_pad = round_up(kg, align);
  // Filter as the GEMM's B operand: [G][K/G rows][(r, s, c) columns], zero-padded.
  const at::Tensor filter =
      padded(weight.view({g, kg, cg, p.r, p.s}).permute({0, 1, 3, 4, 2}).reshape({g, kg, depth}), n_pad, k_pad);
  auto cols_of = [&](const at::Tensor& v) { return v.defined() ? group_columns(v, p.k, g, n_pad) : at::Tensor(); };
  const at::Tensor col_scale = cols_of(fs.col_scale), col_sum = cols_of(fs.col_sum), col_bias = cols_of(fs.col_bias);

  // A 1x1, stride-1, unpadded convolution of dense NHWC x: x's pixels are the GEMM's rows as they lie.
  const kernels::ImageStrides xs = nchw_strides(x);
  const bool pixels_are_rows = pixel_to_pixel(p) && k_pad == p.c && dense_nhwc(xs, p) &&
                               reinterpret_cast<uintptr_t>(x.const_data_ptr()) % kGpuAlign == 0;
  const int64_t chunk = pixels_are_rows ? p.n : units_per_chunk(g * per_image * k_pad, p.n);
  at::Tensor cols = pixels_are_rows ? x : at::empty({g, chunk * per_image, k_pad}, x.options());
  if (k_pad > depth) cols.narrow(2, depth, k_pad - depth).zero_();  // im2col never writes the K padding
  // Groups or a ragged K: each group's GEMM writes a staging buffer, copied into y.
  const bool direct = g == 1 && n_pad == p.k;
  const at::Tensor staging = direct ? at::Tensor() : at::empty({g, chunk * per_image, n_pad}, y.options());
  const int64_t out_bytes = y.element_size();

  kernels::Im2Col a;
  a.geometry = p, a.x = x.const_data_ptr<int8_t>(), a.x_strides = xs, a.pad_value = pad_value;
  a.cols = cols.data_ptr<int8_t>();
  a.cols_strides = {chunk * per_image * k_pad, 1, cg, per_image * k_pad, k_pad};
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t count = std::min(chunk, p.n - n0), rows = count * per_image;
    a.pixel_begin = n0 * per_image, a.pixel_count = rows;
    if (!pixels_are_rows) run_im2col(a, x);
    const RowVectors rv = row_vectors(fs, p.n, n0, count, per_image);
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = rows, gp.n = n_pad, gp.k = k_pad;
      gp.a = cols.const_data_ptr<int8_t>() + gi * chunk * per_image * k_pad, gp.lda = k_pad;
      gp.b = filter.const_data_ptr<int8_t>() + gi * n_pad * k_pad, gp.ldb = k_pad;
      gp.d = direct ? static_cast<char*>(y.data_ptr()) + n0 * per_image * p.k * out_bytes
                    : static_cast<char*>(staging.data_ptr()) + gi * chunk * per_image * n_pad * out_bytes;
      gp.ldd = direct ? p.k : n_pad;
      gp.out_type = out_type_of(y.scalar_type(), "scaled_conv2d");
      run_gemm(gp, epilogue_of(rv, col_scale, col_sum, col_bias, gi * n_pad, fs), x, kConvGemm);
    }
    if (!direct)
      y.view({p.n * per_image, g, kg}).narrow(0, n0 * per_image, rows).copy_(
          staging.narrow(1, 0, rows).narrow(2, 0, kg).permute({1, 0, 2}));
  }
}

at::Tensor conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// A scaled forward convolution whose depth C/G*R*S exceeds kMaxK: the int32 convolutions of
// slices of the input channels (the same slice of every group, each of depth at most kMaxK),
// each exact, summed in int64, then the epilogue over that sum (the scales factor out of the
// sum over channels). x is padded with its zero point first, since conv2d pads with 0.
at::Tensor long_depth_forward(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight,
                              const ConvParams& cp, at::ScalarType out_dtype, const ForwardScales& fs,
                              int8_t pad_value) {
  const int64_t cg = p.c / p.groups, slice = kernels::kMaxK / (p.r * p.s);
  const at::Tensor xp = pad_value == 0 ? x : at::constant_pad_nd(x, {p.pad_w, p.pad_w, p.pad_h, p.pad_h}, pad_value);
  const std::array<int64_t, 2> padding = pad_value == 0 ? cp.padding : std::array<int64_t, 2>{0, 0};
  const at::Tensor acc = sum_slices_in_int64(cg, slice, [&](int64_t c0, int64_t len) {
    return conv2d_kernel(group_slice(xp, 1, p.groups, c0, len), weight.narrow(1, c0, len), cp.stride, padding,
                         cp.dilation, p.groups);
  });
  const int64_t per_image = p.p * p.q;
  const at::Tensor row_scale = fs.scale_x.expand({p.n}).unsqueeze(1).expand({p.n, per_image}).reshape({-1});
  at::Tensor col_offset;  // sum (x - z) w = acc - z * (sum of the filter of each output channel)
  if (pad_value != 0) col_offset = weight.sum({1, 2, 3}, false, at::kLong).mul_(-static_cast<int64_t>(pad_value));
  const std::optional<at::Tensor> bias = fs.col_bias.defined() ? std::optional<at::Tensor>(fs.col_bias) : std::nullopt;
  const at::Tensor y = epilogue_on_int64(acc.permute({0, 2, 3, 1}).reshape({-1, p.k}), col_offset, row_scale,
                                         fs.col_scale.expand({p.k}), bias, out_dtype, fs.out_zero_point, fs.relu);
  return as_nchw(y.view({p.n, p.p, p.q, p.k}));
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const ConvParams& cp, at::ScalarType out_dtype,
                   const ForwardScales& fs, int8_t pad_value, const char* op) {
  const ConvProblem p = problem_of(forward_dims<false>(x, weight, cp, op, out_dtype == at::kInt), cp);
  if (p.c / p.groups * p.r * p.s > kernels::kMaxK)
    return long_depth_forward(p, x, weight, cp, out_dtype, fs, pad_value);
  const at::Tensor y = new_output({p.n, p.p, p.q, p.k}, x.options().dtype(out_dtype));
  c10::DeviceGuard guard(x.device());
  // The implicit-GEMM kernel reads the filter as KRSC: a channels_last weight as it is (no copy).
  if (!x.is_cuda() || !try_implicit_gemm(p, x, weight, y, fs, pad_value))
    forward_im2col(p, x, weight.contiguous(), y, fs, pad_value);
  return as_nchw(y);
}

at::Tensor conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward(x, weight, conv_params("conv2d", stride, padding, dilation, groups), at::kInt, ForwardScales{}, 0,
                 "conv2d");
}

at::Tensor conv2d_meta(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto d =
      forward_dims<true>(x, weight, conv_params("conv2d", stride, padding, dilation, groups), "conv2d", true);
  return at::empty_symint({d.n, d.k, d.p, d.q},
                          x.options().dtype(at::kInt).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- scaled_conv2d ---------------------------------------------------------------------

template <bool kSym>
Dims<kSym> scaled_dims(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                       const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                       const std::optional<at::Tensor>& bias, const ConvParams& cp, at::ScalarType out_dtype,
                       double out_scale, int64_t out_zero_point) {
  using S = Shape<kSym>;
  const char* op = "scaled_conv2d";
  const auto d = forward_dims<kSym>(x, weight, cp, op, false);
  check_scaled_output(out_dtype, out_scale, out_zero_point, op, "conv2d");
  check_dtype(scale_x, at::kFloat, op, "scale_x");
  check_dtype(scale_w, at::kFloat, op, "scale_w");
  check_epilogue_vector<kSym>(scale_x, d.n, x, op, "scale_x", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_w, d.k, x, op, "scale_w", "per tensor or per output channel");
  if (zero_point_x) {
    check_dtype(*zero_point_x, at::kInt, op, "zero_point_x");
    check_same_device(*zero_point_x, x, op, "zero_point_x");
    TORCH_CHECK_VALUE(S::numel(*zero_point_x) == 1, op, ": zero_point_x must have one element (per tensor), got shape ",
                      shape_str(*zero_point_x));
  }
  if (bias) check_bias<kSym>(*bias, d.k, x, op, "K");
  return d;
}

at::Tensor scaled_conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                                const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                at::ScalarType out_dtype, double out_scale, int64_t out_zero_point, bool relu) {
  const ConvParams cp = conv_params("scaled_conv2d", stride, padding, dilation, groups);
  scaled_dims<false>(x, weight, scale_x, scale_w, zero_point_x, bias, cp, out_dtype, out_scale, out_zero_point);
  // The pad value must be known on the host (one sync for a GPU tensor).
  const int64_t zp = zero_point_x ? zero_point_x->item<int32_t>() : 0;
  TORCH_CHECK_VALUE(zp >= -128 && zp <= 127, "scaled_conv2d: zero_point_x must be in [-128, 127], got ", int_str(zp));
  ForwardScales fs;
  fs.scale_x = scale_x.reshape({-1});
  // Requantizing to int8 folds 1/out_scale into the column vectors (as scaled_gemm does); float
  // outputs take them as they are (no kernel, no allocation per call).
  auto folded = [&](const at::Tensor& v) {
    return out_dtype == at::kChar ? v.to(at::kFloat).mul(1.0 / out_scale) : v.to(at::kFloat);
  };
  fs.col_scale = folded(scale_w.reshape({-1}));
  if (bias) fs.col_bias = folded(*bias);
  // An asymmetric x: sum (x - z) w = acc - z * (sum of the filter of each output channel).
  if (zp != 0) {
    fs.row_offset_value = at::full({1}, static_cast<float>(-zp), x.options().dtype(at::kFloat));
    fs.col_sum = weight.sum({1, 2, 3}, false, at::kInt).to(at::kFloat);
  }
  fs.out_zero_point = static_cast<int32_t>(out_zero_point), fs.relu = relu;
  return forward(x, weight, cp, out_dtype, fs, static_cast<int8_t>(zp), "scaled_conv2d");
}

at::Tensor scaled_conv2d_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                              const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype, double out_scale,
                              int64_t out_zero_point, bool relu) {
  const ConvParams cp = conv_params("scaled_conv2d", stride, padding, dilation, groups);
  const auto d =
      scaled_dims<true>(x, weight, scale_x, scale_w, zero_point_x, bias, cp, out_dtype, out_scale, out_zero_point);
  return at::empty_symint({d.n, d.k, d.p, d.q},
                          x.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "conv2d(Tensor x, Tensor weight, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) "
      "-> Tensor");
  m.def(
      "scaled_conv2d(Tensor x, Tensor weight, Tensor scale_x, Tensor scale_w, Tensor? zero_point_x=None, "
      "Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "ScalarType out_dtype=bfloat16, float out_scale=1.0, int out_zero_point=0, bool relu=False) -> Tensor");
}

namespace {
void impl_fprop_kernels(torch::Library& m) {
  m.impl("conv2d", conv2d_kernel);
  m.impl("scaled_conv2d", scaled_conv2d_kernel);
}
}  // namespace

TORCH_INT8_IMPL_CPU_AND_CUDA(impl_fprop_kernels)

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("conv2d", conv2d_meta);
  m.impl("scaled_conv2d", scaled_conv2d_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"conv2d", "scaled_conv2d"}); }

}  // namespace torch_int8::ops
