// torch_int8: INT8 GEMM and quantization on at::Tensor.
//
// The same operations as the custom ops torch.ops.int8.* and the Python package
// torch_int8; each function dispatches through the op registry, so it runs on
// whichever device its inputs live on (CPU or CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

namespace torch_int8 {

// int8 [M,K] @ int8 [K,N] -> int32 [M,N]; batched [B,M,K] @ [B,K,N] or [K,N].
// Exact for K <= kMaxK; larger K is refused (scaled_gemm takes any K).
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);

// Absmax quantization; dim nullopt means per tensor. A slice holding inf or
// NaN gets scale NaN and data 0.
// Returns (data int8, scale float32, zero_point int32; zero_point is an empty
// tensor when symmetric).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(
    const at::Tensor& x, std::optional<int64_t> dim, bool symmetric = true,
    const std::string& rounding = "nearest",
    std::optional<at::Generator> generator = std::nullopt);

// Per-row absmax quantization of a float matrix [M, K] (one fused pass on the
// GPU): (data int8 [M, K], scale float32 [M], column maxima max_m |x[m, k]|
// [K] or empty, column sums [K] float32 or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_rows(
    const at::Tensor& x, bool with_col_amax = false, const std::string& rounding = "nearest",
    std::optional<at::Generator> generator = std::nullopt, bool with_col_sum = false);

// max_m |x[m, k]| of every column of a float matrix [M, K] (float32 [K]; NaN
// for a column holding NaN, else inf for one holding inf).
at::Tensor column_amax(const at::Tensor& x);

// Per-column absmax quantization of x [M, K] with the column maxima col_amax,
// written transposed: (data int8 [K, M] contiguous, scale float32 [K]); a
// column whose col_amax is negative or not finite gets scale NaN.
std::tuple<at::Tensor, at::Tensor> quantize_columns_t(const at::Tensor& x, const at::Tensor& col_amax,
                                                      const std::string& rounding = "nearest",
                                                      std::optional<at::Generator> generator = std::nullopt);

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scale,
                      const std::optional<at::Tensor>& zero_point,
                      std::optional<int64_t> dim,
                      at::ScalarType dtype = at::kFloat);

// scale_a[m] * scale_b[n] * sum_k (a[m,k] - zero_point_a[m]) * b[k,n] + bias[n],
// then max(., 0) if relu (NaN stays NaN), computed in fp32 in the GEMM
// epilogue and stored as out_dtype. For out_dtype == kChar the value is
// requantized with out_scale / out_zero_point.
at::Tensor scaled_gemm(const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& scale_a, const at::Tensor& scale_b,
                       const std::optional<at::Tensor>& zero_point_a,
                       const std::optional<at::Tensor>& bias,
                       at::ScalarType out_dtype = at::kBFloat16,
                       double out_scale = 1.0, int64_t out_zero_point = 0,
                       bool relu = false);

// scaled_gemm with a float out_dtype (bf16, fp16, fp32) that also returns
// max_n |out[m, n]| per row (float32, as stored; NaN for a row holding NaN),
// computed in the same epilogue.
std::tuple<at::Tensor, at::Tensor> scaled_gemm_row_amax(const at::Tensor& a, const at::Tensor& b,
                                                        const at::Tensor& scale_a, const at::Tensor& scale_b,
                                                        const std::optional<at::Tensor>& zero_point_a,
                                                        const std::optional<at::Tensor>& bias,
                                                        at::ScalarType out_dtype = at::kBFloat16,
                                                        bool relu = false);

// int32 -> int8 with mode "float" or "fixed_point" (gemmlowp / TFLite).
at::Tensor requantize(const at::Tensor& acc, const at::Tensor& scale,
                      int64_t zero_point = 0,
                      const std::string& mode = "float");

// QuantizedLinear's forward with dynamic activations, one op: x [..., K] quantized per row, times
// the int8 weight [N, K] (scales weight_scale [N]) with bias and ReLU in the epilogue;
// out_dtype defaults to x's dtype (kChar: requantized with out_scale). [..., N].
at::Tensor quantized_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                            const std::optional<at::Tensor>& bias = std::nullopt,
                            std::optional<at::ScalarType> out_dtype = std::nullopt, double out_scale = 1.0,
                            bool relu = false);

// --- Convolution (logical NCHW tensors, weights [K, C/groups, R, S]; images
// computed here come back channels_last). Sizes, strides, padding, dilation:
// {height, width}.

// torch.nn.functional.unfold of int8 x: [N, C*R*S, L] for layout "NCHW"; for
// "NHWC" x is [N, H, W, C] and the result [N, L, R*S*C] (row per output pixel).
// Outside the image: pad_value.
at::Tensor im2col(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                  at::IntArrayRef padding, at::IntArrayRef stride, int64_t pad_value = 0,
                  const std::string& layout = "NCHW");
// torch.nn.functional.fold: int8 / int32 columns sum into int32, float32 into float32.
at::Tensor col2im(const at::Tensor& cols, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                  at::IntArrayRef dilation, at::IntArrayRef padding, at::IntArrayRef stride,
                  const std::string& layout = "NCHW");
// Exact int8 convolution -> int32 [N, K, P, Q].
at::Tensor conv2d(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups = 1);
// scale_x[n] * scale_w[k] * conv(x - zero_point_x, w) + bias[k] in the GEMM
// epilogue (padding holds the zero point); out_dtype and relu as in scaled_gemm.
at::Tensor scaled_conv2d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                         const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups = 1,
                         at::ScalarType out_dtype = at::kBFloat16, double out_scale = 1.0,
                         int64_t out_zero_point = 0, bool relu = false);
// A float convolution run in INT8 (torch_int8.nn.Conv2d's forward): x [N, C,
// H, W] quantized per image and weight per output channel (per_channel), or
// each per tensor, then scaled_conv2d with bias into out_dtype, in x's memory
// format. Returns (y, x_int8 in x's memory format, scale of x: [N] or 0-d).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_conv2d(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups = 1,
    bool per_channel = true, at::ScalarType out_dtype = at::kBFloat16);
// x [N, C, H, W] quantized per image (one fused pass over each image's memory on
// the GPU): (data int8 in x's layout, scale float32 [N], per-channel max |x| [C]
// or empty, per-channel float32 sums [C] or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_images(const at::Tensor& x,
                                                                           const std::string& rounding = "nearest",
                                                                           bool channel_amax = false,
                                                                           bool channel_sum = false);
// The filter of a stride-1 input gradient, W'[g*C/G + c, k, r, s] = W[g*K/G + k,
// c, R-1-r, S-1-s] (channels_last), quantized per input channel (scale [C]) or
// per tensor: (data int8, scale float32).
std::tuple<at::Tensor, at::Tensor> quantize_rotated_filter(const at::Tensor& weight, int64_t groups = 1,
                                                           bool per_channel = true);
// Exact input gradient: int8 grad_out [N, K, P, Q] -> int32 [N, C, H, W]; input_size = {H, W}.
at::Tensor conv2d_dgrad(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups = 1);
// The dequantized input gradient: float(dgrad[n, c, h, w]) * scale_grad_out[n] *
// scale_weight[c] (per tensor or per image / input channel) as out_dtype (bf16,
// fp16, fp32), rescaled as col2im writes it; any depth K/groups*R*S.
at::Tensor scaled_conv2d_dgrad(const at::Tensor& grad_out, const at::Tensor& weight,
                               const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                               at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups = 1, at::ScalarType out_dtype = at::kFloat);
// Exact weight gradient: -> int32 [K, C/groups, R, S]; N*P*Q <= 131071.
at::Tensor conv2d_wgrad(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                        int64_t groups = 1);
// The weight gradient of operands quantized per image (or per tensor): the sum
// over images of float(exact wgrad of image n) * scale_grad_out[n] * scale_x[n],
// float32 [K, C/groups, R, S] in channels_last memory; no limit on N*P*Q.
at::Tensor scaled_conv2d_wgrad(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                               const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups = 1);
// Bytes one im2col column buffer may take (default 1 GiB or TORCH_INT8_CONV_WORKSPACE_MB).
int64_t conv_workspace_limit();
void set_conv_workspace_limit(int64_t bytes);

}  // namespace torch_int8
