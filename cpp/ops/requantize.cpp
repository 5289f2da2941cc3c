// int8::requantize: int32 -> int8, float or gemmlowp fixed-point arithmetic.
#include <torch/library.h>

#include "common.h"
#include "torch_int8/fixed_point.h"

namespace torch_int8::ops {
namespace {

void check_requantize(const at::Tensor& acc, const at::Tensor& scale, int64_t zero_point, c10::string_view mode) {
  check_dtype(acc, at::kInt, "requantize", "acc");
  check_dtype(scale, at::kFloat, "requantize", "scale");
  check_same_device(scale, acc, "requantize", "scale");
  TORCH_CHECK_VALUE(mode == "float" || mode == "fixed_point",
                    "requantize: mode must be 'float' or 'fixed_point', got '", mode, "'");
  const std::optional<int64_t> cols = acc.dim() == 0 ? std::optional<int64_t>(1) : known_size(acc, -1);
  const auto n = known_numel(scale);
  TORCH_CHECK_VALUE(!n || *n == 1 || (scale.dim() == 1 && (!cols || *n == *cols)),
                    "requantize: scale must have one element or one per channel of the last dimension (",
                    cols ? std::to_string(*cols) : "s?",
                    "), got shape ", shape_str(scale));
  TORCH_CHECK_VALUE(zero_point >= -128 && zero_point <= 127, "requantize: zero_point must be in [-128, 127], got ",
                    int_str(zero_point));
}

at::Tensor requantize_kernel(const at::Tensor& acc, const at::Tensor& scale, int64_t zero_point,
                             c10::string_view mode) {
  check_requantize(acc, scale, zero_point, mode);
  const at::Tensor scale_cpu = scale.to(at::kCPU, at::kDouble).contiguous();
  // Validated on the host: one small copy, and a bad scale is a clear error.
  const bool valid = at::isfinite(scale_cpu).all().item<bool>() && (scale_cpu > 0).all().item<bool>();
  TORCH_CHECK_VALUE(valid, "requantize: scale must be finite and > 0");
  const at::Tensor a = acc.contiguous();
  at::Tensor out = new_output(acc.sizes(), acc.options().dtype(at::kChar));
  if (acc.numel() == 0) return out;

  kernels::Requantize r;
  r.acc = a.const_data_ptr<int32_t>();
  r.out = out.data_ptr<int8_t>();
  r.cols = acc.dim() == 0 ? 1 : acc.size(-1);
  r.rows = acc.numel() / r.cols;
  r.per_channel = scale.numel() > 1;
  r.zero_point = static_cast<int32_t>(zero_point);
  at::Tensor scale_f, multiplier, shift;
  if (mode == "float") {
    scale_f = scale.reshape({-1}).contiguous();
    r.scale = scale_f.const_data_ptr<float>();
  } else {
    multiplier = at::empty({scale_cpu.numel()}, at::kInt);
    shift = at::empty({scale_cpu.numel()}, at::kInt);
    for (int64_t i = 0; i < scale_cpu.numel(); ++i)
      fixed_point::quantize_multiplier(scale_cpu.const_data_ptr<double>()[i], multiplier.data_ptr<int32_t>() + i,
                                       shift.data_ptr<int32_t>() + i);
    multiplier = multiplier.to(acc.device());
    shift = shift.to(acc.device());
    r.multiplier = multiplier.const_data_ptr<int32_t>();
    r.shift = shift.const_data_ptr<int32_t>();
  }
  if (acc.is_cuda()) {
    c10::DeviceGuard guard(acc.device());
    check_status(kernels::requantize_cuda(r, current_stream(acc.device())), "requantize");
  } else {
    check_status(kernels::requantize_cpu(r), "requantize");
  }
  return out;
}

at::Tensor requantize_meta(const at::Tensor& acc, const at::Tensor& scale, int64_t zero_point, c10::string_view mode) {
  check_requantize(acc, scale, zero_point, mode);
  return at::empty_symint(acc.sym_sizes(), acc.options().dtype(at::kChar));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def("requantize(Tensor acc, Tensor scale, int zero_point=0, str mode='float') -> Tensor");
}

TORCH_LIBRARY_IMPL(int8, CPU, m) { m.impl("requantize", requantize_kernel); }
#ifdef TORCH_INT8_WITH_CUDA
TORCH_LIBRARY_IMPL(int8, CUDA, m) { m.impl("requantize", requantize_kernel); }
#endif
TORCH_LIBRARY_IMPL(int8, Meta, m) { m.impl("requantize", requantize_meta); }

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"requantize"}); }

}  // namespace torch_int8::ops
