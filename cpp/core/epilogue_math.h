// The scalar arithmetic of the fused GEMM epilogue, written once: the CPU
// reference and the SIMT GPU kernels (gemm_simt.cuh) call these functions; the
// GPU epilogue trees (gemm_sm8x.cuh, gemm_sm90.cuh) compute the same three
// fused steps in the same order, so int8 outputs agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "torch_int8/kernels.h"

#ifdef __CUDACC__
#define TORCH_INT8_HOST_DEVICE __host__ __device__
#else
#define TORCH_INT8_HOST_DEVICE
#endif

namespace torch_int8::kernels::detail {

// Output element types with a float value (the ones row maxima are taken of).
template <class ElementD>
constexpr bool kFloatOutput = !std::is_same_v<ElementD, int8_t> && !std::is_same_v<ElementD, int32_t>;

TORCH_INT8_HOST_DEVICE inline float load_or(const float* v, int64_t i, float fallback) { return v ? v[i] : fallback; }

// The ReLU as a lower bound: 0 with it, -inf (no effect) without; one
// max in the GPU trees instead of a second tree type per output.
TORCH_INT8_HOST_DEVICE inline float relu_floor(bool relu) { return relu ? 0.f : -INFINITY; }

// max(v, lower) keeping NaN, as max.NaN.f32 (cutlass::maximum<float, true>) in the GPU trees.
TORCH_INT8_HOST_DEVICE inline float max_keep_nan(float v, float lower) { return v > lower || std::isnan(v) ? v : lower; }

// The epilogue of kernels.h on one accumulator, given the vector entries of
// its row (offset, scale) and column (sum, scale, bias) and relu_floor.
TORCH_INT8_HOST_DEVICE inline float dequantize_value(float acc, float row_offset, float row_scale, float col_sum,
                                                     float col_scale, float col_bias, float floor) {
  const float v = std::fma(row_offset, col_sum, acc) * row_scale;
  return max_keep_nan(std::fma(v, col_scale, col_bias), floor);
}

inline float epilogue_value(const Epilogue& e, int32_t acc, int64_t m, int64_t n) {
  return dequantize_value(static_cast<float>(acc), load_or(e.row_offset, m, 0.f), load_or(e.row_scale, m, 1.f),
                          load_or(e.col_sum, n, 0.f), load_or(e.col_scale, n, 1.f), load_or(e.col_bias, n, 0.f),
                          relu_floor(e.relu));
}

// rint(v) + zero_point, saturated, NaN -> 0: what the GPU trees compute
// (RoundThenAdd, then cvt.rni.sat.s8.f32).
TORCH_INT8_HOST_DEVICE inline int8_t requantize_value(float v, int32_t zero_point) {
  if (std::isnan(v)) return 0;
  const float r = std::nearbyint(v) + static_cast<float>(zero_point);
  return static_cast<int8_t>(r < -128.f ? -128.f : (r > 127.f ? 127.f : r));
}

}  // namespace torch_int8::kernels::detail
