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
// Exact for K <= kMaxK; larger K is refused.
at::Tensor gemm(const at::Tensor& a, const at::Tensor& b);

// Absmax quantization; dim nullopt means per tensor. A slice holding inf or
// NaN gets scale NaN and data 0.
// Returns (data int8, scale float32, zero_point int32; zero_point is an empty
// tensor when symmetric).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(
    const at::Tensor& x, std::optional<int64_t> dim, bool symmetric = true,
    const std::string& rounding = "nearest",
    std::optional<at::Generator> generator = std::nullopt);

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scale,
                      const std::optional<at::Tensor>& zero_point,
                      std::optional<int64_t> dim,
                      at::ScalarType dtype = at::kFloat);

// scale_a[m] * scale_b[n] * sum_k (a[m,k] - zero_point_a[m]) * b[k,n] + bias[n],
// computed in fp32 in the GEMM epilogue and stored as out_dtype. For
// out_dtype == kChar the value is requantized with out_scale / out_zero_point.
at::Tensor scaled_gemm(const at::Tensor& a, const at::Tensor& b,
                       const at::Tensor& scale_a, const at::Tensor& scale_b,
                       const std::optional<at::Tensor>& zero_point_a,
                       const std::optional<at::Tensor>& bias,
                       at::ScalarType out_dtype = at::kBFloat16,
                       double out_scale = 1.0, int64_t out_zero_point = 0);

// int32 -> int8 with mode "float" or "fixed_point" (gemmlowp / TFLite).
at::Tensor requantize(const at::Tensor& acc, const at::Tensor& scale,
                      int64_t zero_point = 0,
                      const std::string& mode = "float");

}  // namespace torch_int8
