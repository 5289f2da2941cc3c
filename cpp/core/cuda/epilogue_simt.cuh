// The fused epilogue of kernels.h, one output at a time, for the kernels
// without a CUTLASS epilogue (gemm_simt.cuh, gemm_skinny.cu,
// gemm_skinny_mma.cu): the CPU reference's arithmetic
// (epilogue_math.h), so int8 outputs agree with it bit for bit.
#pragma once

#include <cstdint>
#include <type_traits>

#include "../epilogue_math.h"

namespace torch_int8::kernels::detail {

struct RowParams {
  float offset = 0.f, scale = 1.f;
};
struct ColParams {
  float sum = 0.f, scale = 1.f, bias = 0.f;
};

// One output with the CPU reference's arithmetic (epilogue_math.h), so int8
// outputs agree bit for bit. half_t / bfloat16_t / float round to nearest even.
template <class ElementD>
__device__ ElementD epilogue_output(int32_t acc, const RowParams& r, const ColParams& c, const Epilogue& e) {
  const float v = dequantize_value(static_cast<float>(acc), r.offset, r.scale, c.sum, c.scale, c.bias,
                                   relu_floor(e.relu));
  if constexpr (std::is_same_v<ElementD, int8_t>) {
    return requantize_value(v, e.out_zero_point);
  } else {
    return ElementD(v);
  }
}

// |v| as float bits orders like the unsigned integers (NaN, its sign cleared,
// above inf), so an unsigned max of these bits is a max of |v| that keeps NaN:
// Epilogue::row_amax is accumulated with atomicMax on them.
__device__ inline unsigned abs_bits(float v) { return __float_as_uint(fabsf(v)); }

__device__ inline void add_row_amax(const Epilogue& e, int64_t m, unsigned bits) {
  atomicMax(reinterpret_cast<unsigned*>(e.row_amax) + m, bits);
}

// v combined with op over each run of kLanes consecutive lanes (a power of two
// dividing 32); every lane of the run gets the result. The whole warp takes part.
template <int kLanes = 32, class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int offset = kLanes / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}
struct Plus {
  __device__ int operator()(int a, int b) const { return a + b; }
};
struct Max {
  __device__ unsigned operator()(unsigned a, unsigned b) const { return max(a, b); }
};

// Row m's maximum over the outputs of kLanes consecutive lanes (abs_bits of
// each lane's, 0 for none), added to Epilogue::row_amax with one atomic. Every
// lane of the warp takes part; only those with active set contribute a row.
template <int kLanes = 32>
__device__ inline void add_lanes_row_amax(const Epilogue& e, int64_t m, unsigned bits, bool active = true) {
  bits = warp_reduce<kLanes>(bits, Max{});
  if (active && threadIdx.x % kLanes == 0) add_row_amax(e, m, bits);
}

// The output of element (m, n) given the accumulator, reading the epilogue's
// vectors; the accumulator itself for int32 output.
template <class ElementD>
__device__ ElementD epilogue_output(int32_t acc, const Epilogue& e, int64_t m, int64_t n) {
  if constexpr (std::is_same_v<ElementD, int32_t>) {
    return acc;
  } else {
    return epilogue_output<ElementD>(acc, RowParams{load_or(e.row_offset, m, 0.f), load_or(e.row_scale, m, 1.f)},
                                     ColParams{load_or(e.col_sum, n, 0.f), load_or(e.col_scale, n, 1.f),
                                               load_or(e.col_bias, n, 0.f)},
                                     e);
  }
}

}  // namespace torch_int8::kernels::detail
