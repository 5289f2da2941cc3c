// The quantization steps of torch_int8.nn.Conv2d as ops: int8::quantize_images
// (per image, with channel statistics), int8::quantize_rotated_filter (the
// filter of the input gradient, per input channel) and int8::dynamic_conv2d
// (the forward: x and the weight quantized, then scaled_conv2d). Composites of
// the public ops (torch_int8.h), so they run on any device those do, C++ code
// can call them, and torch.compile traces them into those ops. Measured on the
// H200 host (benchmarks/NOTES.md 26), one dynamic_conv2d call costs ~10% less
// host time than its three ops called from Python: the launches and
// allocations inside the ops, not the Python around them, are what an eager
// step pays for. Each refuses tensors that require grad once and calls its ops
// below autograd (refuse_requiring_grad).
#include <torch/library.h>

#include "common.h"
#include "torch_int8/torch_int8.h"

namespace torch_int8::ops {
namespace {

// Whether t's memory is NHWC (channels_last and not also contiguous): the
// layout nn.Conv2d returns its output in, and the one the kernels read in place.
bool nhwc_memory(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

at::MemoryFormat memory_format_of(const at::Tensor& t) {
  return nhwc_memory(t) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_float_image(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D, got shape ", shape_str(t));
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name, " must be a float tensor, got ",
                   dtype_str(t.scalar_type()));
}

struct Quantized {
  at::Tensor data, scale, channel_amax, channel_sum;  // float32 [C] channel statistics when asked for
};

// t [N, C, H, W] quantized per image: each image is one row of t's memory
// (NHWC or NCHW, no copy for either), quantized by the fused per-row kernel,
// which can also give the maxima and sums of every column (an (h, w, c)
// position), reduced here per channel (a [C*H*W] vector, not another pass over
// t): the maxima are the per-channel scales of the wgrad path, the sums the
// bias gradient when t is an output gradient.
Quantized quantize_images(const at::Tensor& t, const std::string& rounding = "nearest", bool channel_amax = false,
                          bool channel_sums = false) {
  const bool nhwc = nhwc_memory(t);
  const at::Tensor images = nhwc ? t.permute({0, 2, 3, 1}) : t.contiguous();
  auto [data, scale, position_amax, position_sum] = torch_int8::quantize_rows(
      images.reshape_symint({t.sym_size(0), -1}), channel_amax, rounding, std::nullopt, channel_sums);
  const at::Tensor shaped = data.view_symint(images.sym_sizes());
  const std::vector<int64_t> positions = nhwc ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{1, 2};
  auto per_channel = [&](const at::Tensor& v) { return v.view_symint(images.sym_sizes().slice(1)); };
  return {nhwc ? shaped.permute({0, 3, 1, 2}) : shaped, scale,
          channel_amax ? per_channel(position_amax).amax(positions) : at::Tensor(),
          channel_sums ? per_channel(position_sum).sum(positions) : at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_images_op(const at::Tensor& t,
                                                                              c10::string_view rounding,
                                                                              bool channel_amax, bool channel_sum) {
  check_float_image(t, "quantize_images", "x");
  refuse_requiring_grad("quantize_images", {{"x", &t}});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  Quantized q = quantize_images(t, std::string(rounding), channel_amax, channel_sum);
  return {q.data, q.scale, q.channel_amax, q.channel_sum};
}

// Per image (per_channel) or per tensor, rounded to nearest.
Quantized quantize_operand(const at::Tensor& t, bool per_channel) {
  if (per_channel) return quantize_images(t);
  auto [data, scale, unused_zero_point] = torch_int8::quantize(t, std::nullopt);
  return {data, scale, at::Tensor(), at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_conv2d_composite(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool per_channel, at::ScalarType out_dtype) {
  check_float_image(x, "dynamic_conv2d", "x");
  check_float_image(weight, "dynamic_conv2d", "weight");
  refuse_requiring_grad("dynamic_conv2d", {{"x", &x}, {"weight", &weight}, {"bias", bias ? &*bias : nullptr}});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  // Per image x per output channel: the scales factor out of the sums, into the epilogue.
  const Quantized qx = quantize_operand(x, per_channel), qw = quantize_operand(weight, per_channel);
  const at::Tensor y = torch_int8::scaled_conv2d(qx.data, qw.data, qx.scale.reshape({-1}), qw.scale.reshape({-1}),
                                                 std::nullopt, bias, stride, padding, dilation, groups, out_dtype);
  return {y.contiguous(memory_format_of(x)), qx.data, qx.scale};
}

// W' [C, K/G, R, S], W'[g*C/G + c, k, r, s] = W[g*K/G + k, c, R-1-r, S-1-s], in channels_last memory
// ([C, R, S, K/G]: the filter layout the implicit-GEMM kernel reads, and rows of one input channel).
at::Tensor rotated_filter(const at::Tensor& weight, int64_t groups) {
  const c10::SymInt k = weight.sym_size(0), cg = weight.sym_size(1), r = weight.sym_size(2), s = weight.sym_size(3);
  const at::Tensor swapped = weight.reshape_symint({groups, k / groups, cg, r, s})
                                 .transpose(1, 2)
                                 .reshape_symint({cg * groups, k / groups, r, s});
  return swapped.flip({2, 3}).contiguous(at::MemoryFormat::ChannelsLast);
}

std::tuple<at::Tensor, at::Tensor> quantize_rotated_filter_composite(const at::Tensor& weight, int64_t groups,
                                                                     bool per_channel) {
  check_float_image(weight, "quantize_rotated_filter", "weight");
  TORCH_CHECK_VALUE(groups >= 1 && weight.size(0) % groups == 0, "quantize_rotated_filter: groups (",
                    int_str(groups), ") must divide the output channels (", int_str(weight.size(0)), ")");
  refuse_requiring_grad("quantize_rotated_filter", {{"weight", &weight}});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  // Per row of W' = per input channel: the fused per-row kernel, one pass.
  const Quantized q = quantize_operand(rotated_filter(weight, groups), per_channel);
  return {q.data, q.scale};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "dynamic_conv2d(Tensor x, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1, bool per_channel=True, ScalarType out_dtype=bfloat16) "
      "-> (Tensor y, Tensor x_int8, Tensor x_scale)");
  m.def(
      "quantize_images(Tensor x, str rounding='nearest', bool channel_amax=False, bool channel_sum=False) "
      "-> (Tensor data, Tensor scale, Tensor channel_amax, Tensor channel_sum)");
  m.def("quantize_rotated_filter(Tensor weight, int groups=1, bool per_channel=True) -> (Tensor data, Tensor scale)");
}

TORCH_LIBRARY_IMPL(int8, CompositeImplicitAutograd, m) {
  m.impl("dynamic_conv2d", dynamic_conv2d_composite);
  m.impl("quantize_images", quantize_images_op);
  m.impl("quantize_rotated_filter", quantize_rotated_filter_composite);
}

}  // namespace torch_int8::ops
