// Fixed-point requantization with the exact semantics of gemmlowp / TFLite,
// shared by the CPU and CUDA kernels so both agree bit for bit.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TORCH_INT8_HD __host__ __device__ __forceinline__
#else
#define TORCH_INT8_HD inline
#endif

namespace torch_int8::fixed_point {

// gemmlowp SaturatingRoundingDoublingHighMul: round(a * b / 2^31), saturating
// the one overflowing case a == b == INT32_MIN.
TORCH_INT8_HD int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  if (a == b && a == INT32_MIN) return INT32_MAX;
  const int64_t ab = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
  return static_cast<int32_t>((ab + nudge) / (1LL << 31));  // C division truncates
}

// gemmlowp RoundingDivideByPOT: x / 2^exponent rounded half away from zero.
TORCH_INT8_HD int32_t rounding_divide_by_pot(int32_t x, int exponent) {
  const int32_t mask = static_cast<int32_t>((1LL << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

// TFLite MultiplyByQuantizedMultiplier. The left shift saturates to int32
// where TFLite's plain int32 multiply would overflow (undefined there). A
// shift of 32 already saturates every x != 0, so larger ones (scales of 2^32
// and more) are taken as 32: x * 2^32 still fits in int64.
TORCH_INT8_HD int32_t multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift) {
  const int left = shift > 0 ? (shift < 32 ? shift : 32) : 0;
  const int right = shift > 0 ? 0 : -shift;
  int64_t shifted = static_cast<int64_t>(x) * (1LL << left);
  shifted = shifted > INT32_MAX ? INT32_MAX : (shifted < INT32_MIN ? INT32_MIN : shifted);
  return rounding_divide_by_pot(
      saturating_rounding_doubling_high_mul(static_cast<int32_t>(shifted), multiplier), right);
}


// TFLite QuantizeMultiplier: scale = multiplier * 2^(shift - 31), multiplier in [2^30, 2^31).
// Host only. Shifts below -31 flush to zero, as TFLite does.
inline void quantize_multiplier(double scale, int32_t* multiplier, int32_t* shift) {
  if (scale == 0.0) { *multiplier = 0; *shift = 0; return; }
  int exp = 0;
  const double frac = std::frexp(scale, &exp);
  int64_t q = static_cast<int64_t>(std::llround(frac * static_cast<double>(1LL << 31)));
  if (q == (1LL << 31)) { q /= 2; ++exp; }
  if (exp < -31) { q = 0; exp = 0; }
  *multiplier = static_cast<int32_t>(q);
  *shift = exp;
}

}  // namespace torch_int8::fixed_point
