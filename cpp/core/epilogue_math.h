// The scalar arithmetic of the fused GEMM epilogue, written once for the CPU
// reference; the GPU epilogue trees (gemm_sm8x.cuh, gemm_sm90.cuh) compute the
// same three fused steps in the same order, so int8 outputs agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels::detail {

inline float load_or(const float* v, int64_t i, float fallback) { return v ? v[i] : fallback; }

inline float epilogue_value(const Epilogue& e, int32_t acc, int64_t m, int64_t n) {
  float v = std::fma(load_or(e.row_offset, m, 0.f), load_or(e.col_sum, n, 0.f), static_cast<float>(acc));
  v = v * load_or(e.row_scale, m, 1.f);
  return std::fma(v, load_or(e.col_scale, n, 1.f), load_or(e.col_bias, n, 0.f));
}

// rint(v) + zero_point, saturated, NaN -> 0: what the GPU trees compute
// (RoundThenAdd, then cvt.rni.sat.s8.f32).
inline int8_t requantize_value(float v, int32_t zero_point) {
  if (std::isnan(v)) return 0;
  const float r = std::nearbyint(v) + static_cast<float>(zero_point);
  return static_cast<int8_t>(r < -128.f ? -128.f : (r > 127.f ? 127.f : r));
}

}  // namespace torch_int8::kernels::detail
