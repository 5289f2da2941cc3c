// Hopper implicit-GEMM convolution family (sm_90a): CUTLASS 3.x, TMA im2col + wgmma.
#include <cstdlib>
#include <cstring>

#include "conv_families.h"
#include "conv_sm90.cuh"

namespace torch_int8::kernels::detail {

namespace {

// TMA traversal (element) strides go up to 8.
constexpr int64_t kMaxTmaStride = 8;

// Tiles of the GEMM view (N*P*Q x K) with tile_m rows (run_sm90_conv's widths).
int64_t conv_tiles(const ConvProblem& p, int64_t tile_m) {
  const int64_t tile_n = p.c % 64 == 0 && p.k > 64 ? 128 : 64;
  return (p.n * p.p * p.q + tile_m - 1) / tile_m * ((p.k + tile_n - 1) / tile_n);
}

// The schedule rule (each measured against the other on the H200 with
// TORCH_INT8_SM90_CONV_TILE, benchmarks/NOTES.md entry 23): cooperative
// 256-row tiles, whose epilogue runs on both warpgroups at once (1.03-1.33x
// the ping-pong kernel at the ResNet shapes, most where the epilogue
// dominates: 64 input channels, 1x1 filters), unless their waves leave a
// tenth more of the SMs idle than ping-pong's 128-row tiles, two at a time
// per SM, do (ResNet-50's layer4 1x1 at batch 128: 400 tiles in 4 waves of
// 132, ping-pong 1.11x).
bool cooperative_pays(const ConvProblem& p) {
  const int sm_count = device_sm_count();
  return wave_efficiency(conv_tiles(p, 128), 2 * sm_count) - wave_efficiency(conv_tiles(p, 256), sm_count) < 0.1;
}

// TORCH_INT8_SM90_CONV_TILE=pingpong|cooperative forces one schedule (read at
// every call), to benchmark the rule; an unknown name is refused
// (kInvalidArgument: the op then runs im2col + GEMM).
Status run_scheduled(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  const char* env = std::getenv("TORCH_INT8_SM90_CONV_TILE");
  if (!env || !*env) return cooperative_pays(p) ? run_sm90_conv<true>(p, e, stream) : run_sm90_conv<false>(p, e, stream);
  if (std::strcmp(env, "cooperative") == 0) return run_sm90_conv<true>(p, e, stream);
  if (std::strcmp(env, "pingpong") == 0) return run_sm90_conv<false>(p, e, stream);
  return Status::kInvalidArgument;
}

}  // namespace

// CUTLASS's can_implement checks the remaining TMA im2col limits (padding,
// dilated filter extent, corner offsets) and N*P*Q < 2^31.
Status conv2d_fprop_sm90(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.stride_h > kMaxTmaStride || p.stride_w > kMaxTmaStride) return Status::kInvalidArgument;
  const Status aligned = visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    return sm90_fprop_channels_ok(p.c, p.k, p.groups, sizeof(ElementD)) && conv_pointers_aligned(p, e)
               ? Status::kSuccess
               : Status::kInvalidArgument;
  });
  if (aligned != Status::kSuccess) return Status::kInvalidArgument;
  return run_scheduled(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
