// int8::conv2d_dgrad and int8::scaled_conv2d_dgrad (the input gradient): schema, CPU / CUDA /
// Meta kernels. dcols = dY @ W per group (GEMM), then col2im, which rescales the int32 sums as it
// writes them for the scaled op; a depth K/G*R*S beyond kMaxK sums int32 dgrads of channel slices
// in int64. conv2d_dgrad at stride 1 with one group is the forward convolution of dY with the
// rotated, transposed filter instead (int8::conv2d: no int32 column buffer).
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "conv_checks.h"
#include "conv_common.h"
#include "torch_int8/torch_int8.h"

namespace torch_int8::ops {
namespace {

using kernels::ConvProblem;
using kernels::Epilogue;
using kernels::GemmProblem;

// grad_in [N, H, W, C] (dense NHWC) = dgrad(grad_out, weight): the int32 sums, or with
// scales.scale_n set those sums rescaled (kernels::Col2ImScales) into grad_in's dtype.
void dgrad_into(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                const kernels::Col2ImScales& scales) {
  const int64_t align = grad_out.is_cuda() ? kGpuAlign : 1;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q;
  const int64_t depth = p.r * p.s * cg, kg_pad = round_up(kg, align), n_pad = round_up(depth, align);
  // A: dY per group [G][pixels][K/G]; B: W^T per group [G][(r, s, c)][K/G].
  const at::Tensor dy = padded(
      grad_out.permute({0, 2, 3, 1}).reshape({p.n * per_image, g, kg}).permute({1, 0, 2}), p.n * per_image, kg_pad);
  const at::Tensor wt = padded(
      weight.contiguous().view({g, kg, cg, p.r, p.s}).permute({0, 3, 4, 2, 1}).reshape({g, depth, kg}), n_pad, kg_pad);

  const int64_t chunk = units_per_chunk(g * per_image * n_pad * 4, p.n);
  const at::Tensor dcols = at::empty({g, chunk * per_image, n_pad}, grad_out.options().dtype(at::kInt));
  kernels::Col2Im c;
  c.geometry = p, c.cols_type = kernels::ColumnType::kInt32;
  c.cols_strides = {chunk * per_image * n_pad, 1, cg, per_image * n_pad, n_pad};
  c.cols = dcols.const_data_ptr<int32_t>(), c.image_strides = nhwc_strides(grad_in);
  const int64_t image_bytes = grad_in.element_size();
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t count = std::min(chunk, p.n - n0), rows = count * per_image;
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = rows, gp.n = n_pad, gp.k = kg_pad;
      gp.a = dy.const_data_ptr<int8_t>() + (gi * p.n * per_image + n0 * per_image) * kg_pad, gp.lda = kg_pad;
      gp.b = wt.const_data_ptr<int8_t>() + gi * n_pad * kg_pad, gp.ldb = kg_pad;
      gp.d = dcols.data_ptr<int32_t>() + gi * chunk * per_image * n_pad, gp.ldd = n_pad;
      run_gemm(gp, Epilogue{}, grad_out, kConvGemm);
    }
    c.geometry.n = count;
    c.image = static_cast<char*>(grad_in.data_ptr()) + n0 * p.h * p.w * p.c * image_bytes;
    c.scales = scales_from(scales, n0);
    run_col2im(c, grad_out, 4, image_bytes);
  }
}

at::Tensor conv2d_dgrad_kernel(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups) {
  const char* op = "conv2d_dgrad";
  const ConvParams cp = conv_params(op, stride, padding, dilation, groups);
  const ConvProblem p = problem_of(dgrad_dims<false>(grad_out, weight, input_size, cp, op, true), cp);
  c10::DeviceGuard guard(grad_out.device());
  // Stride 1, one group: the forward convolution of dY with the rotated, transposed filter (the
  // same int32 sums), which reads the int8 dY instead of writing and gathering int32 columns.
  const kernels::ForwardPadding forward = kernels::dgrad_as_forward_padding(p);
  if (forward.valid() && p.groups == 1)
    return torch_int8::conv2d(grad_out, weight.transpose(0, 1).flip({2, 3}), {1, 1}, {forward.h, forward.w},
                              {p.dilation_h, p.dilation_w}, 1);
  const at::Tensor grad_in = new_output({p.n, p.h, p.w, p.c}, grad_out.options().dtype(at::kInt));
  dgrad_into(p, grad_out, weight, grad_in, {});
  return as_nchw(grad_in);
}

at::Tensor conv2d_dgrad_meta(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  const char* op = "conv2d_dgrad";
  const auto d =
      dgrad_dims<true>(grad_out, weight, input_size, conv_params(op, stride, padding, dilation, groups), op, true);
  return at::empty_symint({d.n, d.c, d.h, d.w},
                          grad_out.options().dtype(at::kInt).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- scaled_conv2d_dgrad ------------------------------------------------------------------

template <bool kSym>
Dims<kSym> scaled_dgrad_dims(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& scale_grad_out,
                             const at::Tensor& scale_weight, at::IntArrayRef input_size, const ConvParams& cp,
                             at::ScalarType out_dtype) {
  const char* op = "scaled_conv2d_dgrad";
  const auto d = dgrad_dims<kSym>(grad_out, weight, input_size, cp, op, false);
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
                   ": out_dtype must be bfloat16, float16 or float32, got ", out_dtype);
  check_dtype(scale_grad_out, at::kFloat, op, "scale_grad_out");
  check_dtype(scale_weight, at::kFloat, op, "scale_weight");
  check_epilogue_vector<kSym>(scale_grad_out, d.n, grad_out, op, "scale_grad_out", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_weight, d.c, grad_out, op, "scale_weight", "per tensor or per input channel");
  return d;
}

// The CPU kernel writes float32 (cast afterwards), the GPU kernel any float dtype.
at::ScalarType scaled_dgrad_staging(const at::Tensor& grad_out, at::ScalarType out_dtype) {
  return grad_out.is_cuda() ? out_dtype : at::kFloat;
}

// A scaled dgrad whose depth K/G*R*S exceeds kMaxK: the int32 dgrads of slices of the output
// channels (the same slice of every group, each of depth at most kMaxK), each exact, summed in
// int64, then scaled per image and input channel.
at::Tensor long_depth_dgrad(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& weight,
                            const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                            at::IntArrayRef input_size, const ConvParams& cp, at::ScalarType out_dtype) {
  const int64_t kg = p.k / p.groups, slice = kernels::kMaxK / (p.r * p.s);
  const at::Tensor acc = sum_slices_in_int64(kg, slice, [&](int64_t k0, int64_t len) {
    return conv2d_dgrad_kernel(group_slice(grad_out, 1, p.groups, k0, len), group_slice(weight, 0, p.groups, k0, len),
                               input_size, cp.stride, cp.padding, cp.dilation, p.groups);
  });
  const at::Tensor scale_n = scale_grad_out.reshape({-1}).expand({p.n}).reshape({p.n, 1, 1, 1});
  const at::Tensor scale_c = scale_weight.reshape({-1}).expand({p.c}).reshape({1, p.c, 1, 1});
  return acc.to(at::kFloat).mul_(scale_n).mul_(scale_c).to(out_dtype);
}

at::Tensor scaled_conv2d_dgrad_kernel(const at::Tensor& grad_out, const at::Tensor& weight,
                                      const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                                      at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype) {
  const ConvParams cp = conv_params("scaled_conv2d_dgrad", stride, padding, dilation, groups);
  const ConvProblem p = problem_of(
      scaled_dgrad_dims<false>(grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype), cp);
  c10::DeviceGuard guard(grad_out.device());
  if (p.k / p.groups * p.r * p.s > kernels::kMaxK)
    return long_depth_dgrad(p, grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype);
  const at::ScalarType staging = scaled_dgrad_staging(grad_out, out_dtype);
  const at::Tensor grad_in = new_output({p.n, p.h, p.w, p.c}, grad_out.options().dtype(staging));
  const at::Tensor sn = scale_grad_out.contiguous(), sc = scale_weight.contiguous();
  kernels::Col2ImScales scales;
  scales.scale_n = sn.const_data_ptr<float>(), scales.per_image = sn.numel() > 1;
  scales.scale_c = sc.const_data_ptr<float>(), scales.per_channel = sc.numel() > 1;
  scales.out_type = out_type_of(staging, "scaled_conv2d_dgrad");
  dgrad_into(p, grad_out, weight, grad_in, scales);
  return staging == out_dtype ? as_nchw(grad_in) : as_nchw(grad_in).to(out_dtype);
}

at::Tensor scaled_conv2d_dgrad_meta(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype) {
  const ConvParams cp = conv_params("scaled_conv2d_dgrad", stride, padding, dilation, groups);
  const auto d = scaled_dgrad_dims<true>(grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype);
  return at::empty_symint({d.n, d.c, d.h, d.w},
                          grad_out.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "conv2d_dgrad(Tensor grad_out, Tensor weight, int[2] input_size, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor");
  m.def(
      "scaled_conv2d_dgrad(Tensor grad_out, Tensor weight, Tensor scale_grad_out, Tensor scale_weight, "
      "int[2] input_size, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "ScalarType out_dtype=float32) -> Tensor");
}

namespace {
void impl_dgrad_kernels(torch::Library& m) {
  m.impl("conv2d_dgrad", conv2d_dgrad_kernel);
  m.impl("scaled_conv2d_dgrad", scaled_conv2d_dgrad_kernel);
}
}  // namespace

TORCH_INT8_IMPL_CPU_AND_CUDA(impl_dgrad_kernels)

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("conv2d_dgrad", conv2d_dgrad_meta);
  m.impl("scaled_conv2d_dgrad", scaled_conv2d_dgrad_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"conv2d_dgrad", "scaled_conv2d_dgrad"}); }

}  // namespace torch_int8::ops
