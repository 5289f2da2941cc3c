// One element of int32 -> int8 requantization, shared by the CPU and CUDA
// kernels (host-device) so both agree bit for bit.
#pragma once

#include <math.h>

#include "torch_int8/fixed_point.h"
#include "torch_int8/kernels.h"

namespace torch_int8::kernels::detail {

TORCH_INT8_HD int8_t requantize_element(const Requantize& r, int64_t i) {
  const int64_t c = r.per_channel ? i % r.cols : 0;
  const int32_t acc = r.acc[i];
  int64_t q;
  if (r.scale) {
    // float32 product, rounded half to even; clamp before the integer cast
    // (the result saturates to int8 anyway).
    float v = rintf(static_cast<float>(acc) * r.scale[c]);
    v = fminf(fmaxf(v, -65536.f), 65536.f);
    q = static_cast<int64_t>(v);
  } else {
    q = fixed_point::multiply_by_quantized_multiplier(acc, r.multiplier[c], r.shift[c]);
  }
  q += r.zero_point;
  return static_cast<int8_t>(q < -128 ? -128 : (q > 127 ? 127 : q));
}

}  // namespace torch_int8::kernels::detail
