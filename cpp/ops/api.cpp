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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, bool with_col_amax,
                                                                     const std::string& rounding,
                                                                     std::optional<at::Generator> generator,
                                                                     bool with_col_sum) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, bool, c10::string_view, std::optional<at::Generator>, bool)>("int8::quantize_rows");
  return handle.call(x, with_col_amax, rounding, std::move(generator), with_col_sum);
}

at::Tensor column_amax(const at::Tensor& x) {
  static const auto handle = op<at::Tensor(const at::Tensor&)>("int8::column_amax");
  return handle.call(x);
}

std::tuple<at::Tensor, at::Tensor> quantize_columns_t(const at::Tensor& x, const at::Tensor& col_amax,
                                                      const std::string& rounding,
                                                      std::optional<at::Generator> generator) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, c10::string_view, std::optional<at::Generator>)>("int8::quantize_columns_t");
  return handle.call(x, col_amax, rounding, std::move(generator));
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
                       int64_t out_zero_point, bool relu) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&, at::ScalarType, double, int64_t, bool)>(
      "int8::scaled_gemm");
  return handle.call(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, out_scale, out_zero_point, relu);
}

std::tuple<at::Tensor, at::Tensor> scaled_gemm_row_amax(const at::Tensor& a, const at::Tensor& b,
                                                        const at::Tensor& scale_a, const at::Tensor& scale_b,
                                                        const std::optional<at::Tensor>& zero_point_a,
                                                        const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
                                                        bool relu) {
  static const auto handle =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                            at::ScalarType, bool)>("int8::scaled_gemm_row_amax");
  return handle.call(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, relu);
}

at::Tensor requantize(const at::Tensor& acc, const at::Tensor& scale, int64_t zero_point, const std::string& mode) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, c10::string_view)>("int8::requantize");
  return handle.call(acc, scale, zero_point, mode);
}

at::Tensor im2col(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef dilation, at::IntArrayRef padding,
                  at::IntArrayRef stride, int64_t pad_value, const std::string& layout) {
  static const auto handle = op<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                           at::IntArrayRef, int64_t, c10::string_view)>("int8::im2col");
  return handle.call(x, kernel_size, dilation, padding, stride, pad_value, layout);
}

at::Tensor col2im(const at::Tensor& cols, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                  at::IntArrayRef dilation, at::IntArrayRef padding, at::IntArrayRef stride,
                  const std::string& layout) {
  static const auto handle = op<at::Tensor(const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, c10::string_view)>("int8::col2im");
  return handle.call(cols, output_size, kernel_size, dilation, padding, stride, layout);
}

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                  at::IntArrayRef dilation, int64_t groups) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                           at::IntArrayRef, int64_t)>("int8::conv2d");
  return handle.call(x, weight, stride, padding, dilation, groups);
}

at::Tensor scaled_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                         const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype, double out_scale,
                         int64_t out_zero_point, bool relu) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::IntArrayRef,
                    at::IntArrayRef, at::IntArrayRef, int64_t, at::ScalarType, double, int64_t, bool)>(
          "int8::scaled_conv2d");
  return handle.call(x, weight, scale_x, scale_w, zero_point_x, bias, stride, padding, dilation, groups, out_dtype,
                     out_scale, out_zero_point, relu);
}

at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias, std::optional<at::ScalarType> out_dtype,
                            double out_scale, bool relu) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                    std::optional<at::ScalarType>, double, bool)>("int8::quantized_linear");
  return handle.call(x, weight, weight_scale, bias, out_dtype, out_scale, relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_conv2d(const at::Tensor& x, const at::Tensor& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              at::IntArrayRef dilation, int64_t groups,
                                                              bool per_channel, at::ScalarType out_dtype) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
      at::IntArrayRef, int64_t, bool, at::ScalarType)>("int8::dynamic_conv2d");
  return handle.call(x, weight, bias, stride, padding, dilation, groups, per_channel, out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_images(const at::Tensor& x,
                                                                           const std::string& rounding,
                                                                           bool channel_amax, bool channel_sum) {
  static const auto handle = op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, c10::string_view, bool, bool)>("int8::quantize_images");
  return handle.call(x, rounding, channel_amax, channel_sum);
}

std::tuple<at::Tensor, at::Tensor> quantize_rotated_filter(const at::Tensor& weight, int64_t groups,
                                                           bool per_channel) {
  static const auto handle =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool)>("int8::quantize_rotated_filter");
  return handle.call(weight, groups, per_channel);
}

at::Tensor conv2d_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, int64_t)>("int8::conv2d_dgrad");
  return handle.call(grad_out, weight, input_size, stride, padding, dilation, groups);
}

at::Tensor conv2d_wgrad(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto handle = op<at::Tensor(const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, int64_t)>("int8::conv2d_wgrad");
  return handle.call(grad_out, x, kernel_size, stride, padding, dilation, groups);
}

at::Tensor scaled_conv2d_dgrad(const at::Tensor& grad_out, const at::Tensor& weight,
                               const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                               at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, at::ScalarType)>(
          "int8::scaled_conv2d_dgrad");
  return handle.call(grad_out, weight, scale_grad_out, scale_weight, input_size, stride, padding, dilation, groups,
                     out_dtype);
}

at::Tensor scaled_conv2d_wgrad(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                               const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  static const auto handle =
      op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t)>("int8::scaled_conv2d_wgrad");
  return handle.call(grad_out, x, scale_grad_out, scale_x, kernel_size, stride, padding, dilation, groups);
}

int64_t conv_workspace_limit() {
  static const auto handle = op<int64_t()>("int8::get_conv_workspace_limit");
  return handle.call();
}

void set_conv_workspace_limit(int64_t bytes) {
  static const auto handle = op<void(int64_t)>("int8::set_conv_workspace_limit");
  handle.call(bytes);
}

}  // namespace torch_int8
