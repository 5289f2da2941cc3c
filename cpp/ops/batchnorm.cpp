// int8::batch_norm_relu_quantize: BatchNorm (batch statistics in training,
// running statistics in eval), ReLU and per-image quantization in one op, the
// step that hands a fused Conv -> BN -> ReLU's output to the next convolution
// as int8 (torch_int8.nn.fused). Composite of ATen's batch norm and
// int8::quantize_images on every device (CompositeExplicitAutograd); on the GPU
// an NHWC float batch with float32 parameters goes through the fused kernels
// (kernels.h BatchNormReluQuantize), which write no float activation.
// int8::batch_norm_relu_backward: the training backward of such a step, the
// ReLU's mask recomputed from y (composite: ATen's threshold_backward and
// native_batch_norm_backward; CUDA, NHWC: kernels.h BatchNormReluBackward,
// which writes no masked gradient).
#include <torch/library.h>

#include "common.h"
#include "torch_int8/torch_int8.h"

namespace torch_int8::ops {
namespace {

using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

void check_inputs(const at::Tensor& y, const std::optional<at::Tensor>& running_mean,
                  const std::optional<at::Tensor>& running_var, bool training) {
  const char* op = "batch_norm_relu_quantize";
  TORCH_CHECK_VALUE(y.dim() == 4, op, ": y must be 4-D [N, C, H, W], got shape ", shape_str(y));
  TORCH_CHECK_TYPE(at::isFloatingType(y.scalar_type()), op, ": y must be a float tensor, got ",
                   dtype_str(y.scalar_type()));
  TORCH_CHECK_VALUE(running_mean.has_value() == running_var.has_value(), op,
                    ": running_mean and running_var must both be given or both be None");
  TORCH_CHECK_VALUE(training || running_mean.has_value(), op, ": eval mode needs the running statistics");
}

// (data, scale, mean, invstd): ATen's batch norm, relu, int8::quantize_images.
Result composite(const at::Tensor& y, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                 const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
                 bool training, double momentum, double eps) {
  check_inputs(y, running_mean, running_var, training);
  auto [z, mean, invstd] = at::native_batch_norm(y, weight, bias, running_mean, running_var, training, momentum, eps);
  if (!training)  // copies: outputs never alias the buffers
    mean = running_mean->to(at::kFloat, false, true), invstd = running_var->to(at::kFloat).add(eps).rsqrt();
  auto [data, scale, unused_amax, unused_sum] = torch_int8::quantize_images(z.relu_());
  return {data, scale, mean, invstd};
}

#ifdef TORCH_INT8_WITH_CUDA
std::optional<kernels::InType> in_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::InType::kFloat32;
    case at::kHalf: return kernels::InType::kFloat16;
    case at::kBFloat16: return kernels::InType::kBFloat16;
    default: return std::nullopt;
  }
}

bool float32_vector(const std::optional<at::Tensor>& t, int64_t channels) {
  return !t || (t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == channels && t->is_cuda());
}

const float* data_or_null(const std::optional<at::Tensor>& t) { return t ? t->const_data_ptr<float>() : nullptr; }
float* mutable_or_null(const std::optional<at::Tensor>& t) { return t ? t->mutable_data_ptr<float>() : nullptr; }

Result cuda(const at::Tensor& y, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
            const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
            bool training, double momentum, double eps) {
  check_inputs(y, running_mean, running_var, training);
  const int64_t n = y.size(0), c = y.size(1), pixels = y.size(2) * y.size(3);
  const auto type = in_type(y.scalar_type());
  const bool nhwc = y.is_contiguous(at::MemoryFormat::ChannelsLast);
  if (!type || !nhwc || y.numel() == 0 || !float32_vector(weight, c) || !float32_vector(bias, c) ||
      !float32_vector(running_mean, c) || !float32_vector(running_var, c))
    return composite(y, weight, bias, running_mean, running_var, training, momentum, eps);
  const auto floats = y.options().dtype(at::kFloat);
  at::Tensor q = at::empty_like(y, y.options().dtype(at::kChar), at::MemoryFormat::ChannelsLast);
  at::Tensor scale = at::empty({n}, floats), mean = at::empty({c}, floats), invstd = at::empty({c}, floats);
  at::Tensor workspace = at::empty({kernels::batch_norm_workspace(n, c)}, floats);
  kernels::BatchNormReluQuantize p;
  p.y = y.const_data_ptr(), p.in_type = *type, p.images = n, p.pixels = pixels, p.channels = c;
  p.weight = data_or_null(weight), p.bias = data_or_null(bias);
  p.running_mean = mutable_or_null(running_mean), p.running_var = mutable_or_null(running_var);
  p.training = training, p.momentum = static_cast<float>(momentum), p.eps = static_cast<float>(eps);
  p.q = q.mutable_data_ptr<int8_t>(), p.scale = scale.mutable_data_ptr<float>();
  p.mean = mean.mutable_data_ptr<float>(), p.invstd = invstd.mutable_data_ptr<float>();
  p.workspace = workspace.mutable_data_ptr<float>();
  c10::DeviceGuard guard(y.device());
  const kernels::Status status = kernels::batch_norm_relu_quantize_cuda(p, current_stream(y.device()));
  if (status == kernels::Status::kInvalidArgument)
    return composite(y, weight, bias, running_mean, running_var, training, momentum, eps);
  check_status(status, "batch_norm_relu_quantize");
  return {q, scale, mean, invstd};
}
#endif

using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

void check_backward(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                    const at::Tensor& mean, const at::Tensor& invstd) {
  const char* op = "batch_norm_relu_backward";
  TORCH_CHECK_VALUE(y.dim() == 4, op, ": y must be 4-D [N, C, H, W], got shape ", shape_str(y));
  TORCH_CHECK_VALUE(grad.sizes() == y.sizes(), op, ": grad must have y's shape ", shape_str(y), ", got ",
                    shape_str(grad));
  TORCH_CHECK_TYPE(at::isFloatingType(y.scalar_type()) && grad.scalar_type() == y.scalar_type(), op,
                   ": grad and y must be float tensors of one dtype, got ", dtype_str(grad.scalar_type()), " and ",
                   dtype_str(y.scalar_type()));
  for (const at::Tensor* t : {&weight, &bias, &mean, &invstd})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == y.size(1), op,
                      ": weight, bias, mean and invstd must be [C] with C = ", y.size(1), ", got ", shape_str(*t));
}

// The forward's affine map recomputed (a = weight * invstd, b = bias - mean * a,
// each rounded once), the mask where a * y + b > 0, ATen's backward in float32.
Grads backward_composite(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& weight,
                         const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd) {
  check_backward(grad, y, weight, bias, mean, invstd);
  const at::Tensor a = weight.to(at::kFloat) * invstd.to(at::kFloat);
  const at::Tensor b = bias.to(at::kFloat) - mean.to(at::kFloat) * a;
  const at::Tensor z = y.to(at::kFloat) * a.view({1, -1, 1, 1}) + b.view({1, -1, 1, 1});
  // In float32: ATen's CUDA kernel for NCHW bf16 input under float32 parameters loses precision in
  // its sums (pytorch/pytorch#156513; grad_weight off by bf16's rounding, seen on the H100).
  const at::Tensor g = at::threshold_backward(grad.to(at::kFloat), z, 0);
  auto [grad_y, grad_weight, grad_bias] = at::native_batch_norm_backward(
      g, y.to(at::kFloat), weight.to(at::kFloat), {}, {}, mean.to(at::kFloat), invstd.to(at::kFloat), true, 0.0,
      {true, true, true});
  return {grad_y.to(y.scalar_type()), grad_weight.to(weight.scalar_type()), grad_bias.to(bias.scalar_type())};
}

#ifdef TORCH_INT8_WITH_CUDA
Grads backward_cuda(const at::Tensor& grad, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                    const at::Tensor& mean, const at::Tensor& invstd) {
  check_backward(grad, y, weight, bias, mean, invstd);
  const int64_t n = y.size(0), c = y.size(1);
  const auto type = in_type(y.scalar_type());
  const auto nhwc = at::MemoryFormat::ChannelsLast;
  if (!type || !y.is_contiguous(nhwc) || !grad.is_contiguous(nhwc) || y.numel() == 0 ||
      !float32_vector(weight, c) || !float32_vector(bias, c) || !float32_vector(mean, c) ||
      !float32_vector(invstd, c))
    return backward_composite(grad, y, weight, bias, mean, invstd);
  const auto floats = y.options().dtype(at::kFloat);
  at::Tensor grad_y = at::empty_like(y, nhwc);
  at::Tensor grad_weight = at::empty({c}, floats), grad_bias = at::empty({c}, floats);
  at::Tensor workspace = at::empty({kernels::batch_norm_workspace(n, c)}, floats);
  kernels::BatchNormReluBackward p;
  p.grad = grad.const_data_ptr(), p.y = y.const_data_ptr(), p.in_type = *type;
  p.images = n, p.pixels = y.size(2) * y.size(3), p.channels = c;
  p.weight = weight.const_data_ptr<float>(), p.bias = bias.const_data_ptr<float>();
  p.mean = mean.const_data_ptr<float>(), p.invstd = invstd.const_data_ptr<float>();
  p.grad_y = grad_y.mutable_data_ptr(), p.grad_weight = grad_weight.mutable_data_ptr<float>();
  p.grad_bias = grad_bias.mutable_data_ptr<float>(), p.workspace = workspace.mutable_data_ptr<float>();
  c10::DeviceGuard guard(y.device());
  const kernels::Status status = kernels::batch_norm_relu_backward_cuda(p, current_stream(y.device()));
  if (status == kernels::Status::kInvalidArgument) return backward_composite(grad, y, weight, bias, mean, invstd);
  check_status(status, "batch_norm_relu_backward");
  return {grad_y, grad_weight, grad_bias};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "batch_norm_relu_quantize(Tensor y, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, bool training, float momentum, float eps) "
      "-> (Tensor data, Tensor scale, Tensor mean, Tensor invstd)");
  m.def(
      "batch_norm_relu_backward(Tensor grad, Tensor y, Tensor weight, Tensor bias, Tensor mean, Tensor invstd) "
      "-> (Tensor grad_y, Tensor grad_weight, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(int8, CompositeExplicitAutograd, m) {
  m.impl("batch_norm_relu_quantize", composite);
  m.impl("batch_norm_relu_backward", backward_composite);
}

#ifdef TORCH_INT8_WITH_CUDA
TORCH_LIBRARY_IMPL(int8, CUDA, m) {
  m.impl("batch_norm_relu_quantize", cuda);
  m.impl("batch_norm_relu_backward", backward_cuda);
}
#endif

TORCH_LIBRARY_IMPL(int8, Autograd, m) {
  impl_without_derivatives(m, {"batch_norm_relu_quantize", "batch_norm_relu_backward"});
}

}  // namespace torch_int8::ops
