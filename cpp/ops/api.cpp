// The public C++ API (torch_int8.h): each function calls its op through the
// dispatcher, exactly as torch.ops.int8.* does from Python.
#include <ATen/core/dispatch/Dispatcher.h>

#include "torch_int8/torch_int8.h"

namespace torch_int8 {
namespace {

template <class Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("int8::gemm");
  return handle.call(a, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, std::optional<int64_t> dim,
                                                        bool symmetric, const std::string& rounding,
                                                        std::optional<at::Generator> generator) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, std::optional<int64_t>, bool, c10::string_view, std::optional<at::Generator>)>(
      "int8::quantize");
  return handle.call(x, dim, symmetric, rounding, std::move(generator));
}

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                      std::optional<int64_t> dim, at::ScalarType dtype) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                           std::optional<int64_t>, at::ScalarType)>("int8::dequantize");
  return handle.call(data, scale, zero_point, dim, dtype);
}

at::Tensor scaled_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                       const at::Tensor& scale_b, const std::optional<at::Tensor>& zero_point_a,
                       const std::optional<at::Tensor>& bias, at::ScalarType out_dtype, double out_scale,
                       int64_t out_zero_point) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&, at::ScalarType, double, int64_t)>(
      "int8::scaled_gemm");
  return handle.call(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, out_scale, out_zero_point);
}

at::Tensor requantize(const at::Tensor& acc, const at::Tensor& scale, int64_t zero_point, const std::string& mode) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view)>("int8::requantize");
  return handle.call(acc, scale, zero_point, mode);
}

}  // namespace torch_int8
