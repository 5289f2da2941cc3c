// Hopper implicit-GEMM convolution family (sm_90a): CUTLASS 3.x, TMA im2col + wgmma.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "conv_families.h"
#include "conv_sm90.cuh"

namespace torch_int8::kernels::detail {

namespace {

// TMA traversal (element) strides go up to 8.
constexpr int64_t kMaxTmaStride = 8;

// 128 output pixels x 64 output channels x 64 input channels: the tile for
// layers with at most 64 output channels (a 128-wide tile would compute half
// zeros there) and, with 32-channel k-tiles, for any C that is a multiple of
// 32 only. 128 x 128 x 64 for wider layers: twice the MACs per byte of
// operand traffic, which is what keeps wgmma fed once the layer is compute
// bound (ResNet's deeper stages).
template <class ElementD>
Status run_with_tile_rule(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.c % 64 != 0) {
    if (p.c % 32 != 0) return Status::kInvalidArgument;  // wgmma's int8 K is 32
    return Sm90ConvFprop<Sm90ConvTile<128, 64, 32, false>, ElementD>::run(p, e, stream);
  }
  return p.k <= 64 ? Sm90ConvFprop<Sm90ConvTile<128, 64, 64, false>, ElementD>::run(p, e, stream)
                   : Sm90ConvFprop<Sm90ConvTile<128, 128, 64, false>, ElementD>::run(p, e, stream);
}

// TEMPORARY: TORCH_INT8_SM90_CONV=stock|coop runs CUTLASS's non-persistent
// kernel or the cooperative one instead of the ping-pong one (read at every
// call), to benchmark them against each other.
bool kernel_forced(const char* name) {
  const char* env = std::getenv("TORCH_INT8_SM90_CONV");
  return env && std::strcmp(env, name) == 0;
}

}  // namespace

// CUTLASS's can_implement checks the remaining TMA im2col limits (padding,
// dilated filter extent, corner offsets) and N*P*Q < 2^31.
Status conv2d_fprop_sm90(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.stride_h > kMaxTmaStride || p.stride_w > kMaxTmaStride) return Status::kInvalidArgument;
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_conv_alignment(p, e, sizeof(ElementD))) return Status::kInvalidArgument;
    if constexpr (std::is_same_v<ElementD, cutlass::bfloat16_t>)  // (bf16 only: what the benchmarks time)
      if (kernel_forced("stock")) return conv2d_fprop_sm90_stock(p, e, stream);
      else if (kernel_forced("coop")) return conv2d_fprop_sm90_coop(p, e, stream);
    return run_with_tile_rule<ElementD>(p, e, stream);
  });
}

}  // namespace torch_int8::kernels::detail
