// Hopper kernel family (sm_90a): CUTLASS 3.x wgmma + TMA, warp-specialized.
#include "families.h"
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {

namespace {

// The tile rule, by how many output tiles the GEMM has for the device's SMs:
//  - at least two waves of 256x128 tiles: 256x128 cooperative (most MACs per
//    byte of operand traffic);
//  - fewer 128x128 tiles than half the SMs, and K long enough to cut: split K
//    across CTAs so that every SM streams its share of the weight (decode-size M);
//  - otherwise 128x128 ping-pong tiles.
struct TileChoice {
  enum Kind { kPingpong, kCooperative256, kSplitK } kind;
  int splits;
};

TileChoice choose_tiles(const GemmProblem& p, int sm_count) {
  const int64_t tiles128 = (p.m + 127) / 128 * ((p.n + 127) / 128) * p.batch;
  const int64_t tiles256 = (p.m + 255) / 256 * ((p.n + 127) / 128) * p.batch;
  if (tiles256 >= 2 * sm_count) return {TileChoice::kCooperative256, 1};
  constexpr int64_t kMinSplitK = 512;  // K per split: keeps the mainloop pipeline full
  const int64_t splits = std::min<int64_t>(sm_count / tiles128, p.k / kMinSplitK);
  if (2 * tiles128 <= sm_count && splits >= 2) return {TileChoice::kSplitK, static_cast<int>(splits)};
  return {TileChoice::kPingpong, 1};
}

}  // namespace

Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, size_t* workspace_query) {
  static const int sm_count = [] {
    int device = 0;
    cudaGetDevice(&device);
    return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  }();
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
    const TileChoice t = choose_tiles(p, sm_count);
    switch (t.kind) {
      case TileChoice::kCooperative256:
        return Sm90Gemm<Sm90Cooperative256, ElementD>::run(p, e, stream, sm_count, 1, workspace_query);
      case TileChoice::kSplitK:
        return Sm90Gemm<Sm90SplitK128, ElementD>::run(p, e, stream, sm_count, t.splits, workspace_query);
      case TileChoice::kPingpong:
        break;
    }
    return Sm90Gemm<Sm90Pingpong128, ElementD>::run(p, e, stream, sm_count, 1, workspace_query);
  });
}

}  // namespace torch_int8::kernels::detail
