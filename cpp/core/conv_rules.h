// What the implicit-GEMM convolution kernels take of a problem's channel counts: the one place
// for these rules. The family files check them before they run (with their geometry limits and
// the 16-byte alignment of the pointers: conv_families.h), and conv_can_implement (conv.h,
// conv_rules.cpp) answers from them for the op layer and for torch_int8's backward planner
// (torch_int8._C.implicit_conv_can_implement). Framework-free and CUDA-free: both builds have it.
#pragma once

#include <cstdint>

namespace torch_int8::kernels::detail {

// Every tensor-core forward family: one group (the kernels see the whole C as GEMM-K), 16-byte
// vector accesses to activation, filter and output rows (C a multiple of 16, K of 16 bytes of
// out_bytes-byte output elements).
constexpr bool fprop_channels_ok(int64_t c, int64_t k, int64_t groups, int64_t out_bytes) {
  return groups == 1 && c % 16 == 0 && (k * out_bytes) % 16 == 0;
}

// The sm80 family (CUTLASS 2.x): what every family needs.
constexpr bool sm80_fprop_channels_ok(int64_t c, int64_t k, int64_t groups, int64_t out_bytes) {
  return fprop_channels_ok(c, k, groups, out_bytes);
}

// The sm90 family (TMA im2col + wgmma): besides, C a multiple of 32 (wgmma's int8 K is 32).
constexpr bool sm90_fprop_channels_ok(int64_t c, int64_t k, int64_t groups, int64_t out_bytes) {
  return fprop_channels_ok(c, k, groups, out_bytes) && c % 32 == 0;
}

// The implicit-GEMM weight gradient of the sm80 and sm90 families (conv_wgrad_mma.cu): one group,
// C and K multiples of 16 (its 16-byte copies of one pixel's channels).
constexpr int64_t kWgradVector = 16;
constexpr bool wgrad_channels_ok(int64_t c, int64_t k, int64_t groups) {
  return groups == 1 && c % kWgradVector == 0 && k % kWgradVector == 0;
}

}  // namespace torch_int8::kernels::detail
