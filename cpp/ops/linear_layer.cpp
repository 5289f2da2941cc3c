// The forward of torch_int8.nn.QuantizedLinear with activations quantized at run time as one op,
// int8::quantized_linear: x [..., K] quantized per row (the fused per-row kernel on the GPU), then
// scaled_gemm with the int8 weight [N, K] and its per-output-channel scales, the bias and ReLU in
// the GEMM epilogue. A composite of the public ops (torch_int8.h), as conv_layer.cpp's, so that an
// eager call crosses from Python into the ops once: at decode sizes the call's cost is host time
// (benchmarks/NOTES.md 18, 26), and it runs on any device those ops do, traced into them by
// torch.compile.
#include <torch/library.h>

#include <vector>

#include "common.h"
#include "torch_int8/torch_int8.h"

namespace torch_int8::ops {
namespace {

at::Tensor quantized_linear_composite(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                                      double out_scale, bool relu) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "quantized_linear: x must have at least one dimension (the features), got 0-d");
  TORCH_CHECK_VALUE(weight.dim() == 2, "quantized_linear: weight must be 2-D [out_features, in_features], got shape ",
                    shape_str(weight));
  refuse_requiring_grad("quantized_linear", {{"x", &x},
                                             {"weight", &weight},
                                             {"weight_scale", &weight_scale},
                                             {"bias", bias ? &*bias : nullptr}});
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor rows = x.reshape_symint({-1, x.sym_size(-1)});
  const auto [data, scale, unused_amax, unused_sum] = torch_int8::quantize_rows(rows);
  const at::Tensor y = torch_int8::scaled_gemm(data, weight.t(), scale, weight_scale, std::nullopt, bias,
                                               out_dtype.value_or(x.scalar_type()), out_scale, 0, relu);
  std::vector<c10::SymInt> shape(x.sym_sizes().begin(), x.sym_sizes().end() - 1);
  shape.push_back(weight.sym_size(0));
  return y.reshape_symint(shape);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "quantized_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias=None, ScalarType? out_dtype=None, "
      "float out_scale=1., bool relu=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(int8, CompositeImplicitAutograd, m) { m.impl("quantized_linear", quantized_linear_composite); }

}  // namespace torch_int8::ops
