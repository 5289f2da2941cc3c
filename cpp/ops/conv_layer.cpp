// int8::dynamic_conv2d: the forward of torch_int8.nn.Conv2d as one op call.
// Quantizing x and the weight and running the scaled convolution are three
// ops; composed here in C++, an eager call pays the dispatcher once per
// inner op instead of a dozen Python-level tensor calls (views, layouts,
// wrappers) around each. A composite of the public ops (torch_int8.h), so it
// runs on any device they do, and torch.compile traces it into them.
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

struct Quantized {
  at::Tensor data, scale;
};

// t [N, C, H, W] quantized per image: each image is one row of t's memory
// (NHWC or NCHW, no copy for either), quantized by the fused per-row kernel.
Quantized quantize_images(const at::Tensor& t) {
  const bool nhwc = nhwc_memory(t);
  const at::Tensor images = nhwc ? t.permute({0, 2, 3, 1}) : t.contiguous();
  auto [data, scale, unused_amax, unused_sum] = torch_int8::quantize_rows(images.reshape_symint({t.sym_size(0), -1}));
  const at::Tensor shaped = data.view_symint(images.sym_sizes());
  return {nhwc ? shaped.permute({0, 3, 1, 2}) : shaped, scale};
}

Quantized quantize_operand(const at::Tensor& t, bool per_channel) {
  if (per_channel) return quantize_images(t);
  auto [data, scale, unused_zero_point] = torch_int8::quantize(t, std::nullopt);
  return {data, scale};
}

void check_float_image(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, "dynamic_conv2d: ", name, " must be 4-D, got shape ", shape_str(t));
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "dynamic_conv2d: ", name, " must be a float tensor, got ",
                   t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_conv2d_composite(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool per_channel, at::ScalarType out_dtype) {
  check_float_image(x, "x");
  check_float_image(weight, "weight");
  // Per image x per output channel: the scales factor out of the sums, into the epilogue.
  const Quantized qx = quantize_operand(x, per_channel), qw = quantize_operand(weight, per_channel);
  const at::Tensor y = torch_int8::scaled_conv2d(qx.data, qw.data, qx.scale.reshape({-1}), qw.scale.reshape({-1}), std::nullopt,
                                     bias, stride, padding, dilation, groups, out_dtype);
  const auto format = nhwc_memory(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return {y.contiguous(format), qx.data, qx.scale};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "dynamic_conv2d(Tensor x, Tensor weight, Tensor? bias=None, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1, bool per_channel=True, ScalarType out_dtype=bfloat16) "
      "-> (Tensor y, Tensor x_int8, Tensor x_scale)");
}

TORCH_LIBRARY_IMPL(int8, CompositeImplicitAutograd, m) { m.impl("dynamic_conv2d", dynamic_conv2d_composite); }

}  // namespace torch_int8::ops
