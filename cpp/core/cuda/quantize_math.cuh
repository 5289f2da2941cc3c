// The scalar steps of absmax quantization on the GPU, shared by the quantize
// kernels (quantize.cu) and the fused BatchNorm -> ReLU -> quantize kernels
// (batchnorm.cu): the same scale and rounding as the ATen composite, bit for
// bit; and the float conversions of the kernels that read or write float types.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <cstdint>
#include <type_traits>

namespace torch_int8::kernels::quantize_math {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// v rounded to nearest into T (float, __half or __nv_bfloat16).
template <class T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    return __float2bfloat16_rn(v);
  else if constexpr (std::is_same_v<T, __half>)
    return __float2half_rn(v);
  else
    return v;
}

struct Nearest {
  __device__ Nearest resolved() const { return *this; }
  __device__ float operator()(float y, int64_t) const { return rintf(y); }
};

// The scale of a channel with absolute maximum amax (NaN if it is not finite, or negative: a
// col_amax given to quantize_columns_t that is no maximum of absolute values).
__device__ __forceinline__ float scale_of(float amax) {
  if (!(amax >= 0.f && amax <= FLT_MAX)) return nanf("");
  const float s = amax / 127.f;
  return s == 0.f ? 1.f : s;
}

// A channel's scale and its reciprocal, which exists (is finite and normal)
// for every normal scale; NaN otherwise, which sends every value of the
// channel down the exact division.
struct Divisor {
  float s, r;
};
__device__ __forceinline__ Divisor divisor_of(float amax) {
  const float s = scale_of(amax);
  return {s, s >= FLT_MIN ? __frcp_rn(s) : nanf("")};
}

// round(v / s) clamped to the symmetric int8 range; 0 in a non-finite channel.
template <class Round>
__device__ __forceinline__ int8_t quantize_value(float v, const Divisor& d, const Round& round, int64_t index) {
  if (isnan(d.s)) return 0;
  return static_cast<int8_t>(fminf(fmaxf(round(__fdiv_rn(v, d.s), index), -127.f), 127.f));
}

}  // namespace torch_int8::kernels::quantize_math
