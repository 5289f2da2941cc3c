// Hopper kernel family (sm_90a): CUTLASS 3.x wgmma + TMA, warp-specialized.
#include "families.h"
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {

namespace {

// The tile rule: 256x128 tiles once the GEMM has at least two waves of them
// on the device (it then runs at higher throughput per SM); 128x128 ping-pong
// tiles below that, where more, smaller tiles keep more SMs busy.
bool use_large_tiles(const GemmProblem& p, int sm_count) {
  const int64_t large_tiles = (p.m + 255) / 256 * ((p.n + 127) / 128) * p.batch;
  return large_tiles >= 2 * sm_count;
}

}  // namespace

Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  static const int sm_count = [] {
    int device = 0;
    cudaGetDevice(&device);
    return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  }();
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
    return use_large_tiles(p, sm_count) ? Sm90Gemm<Sm90Cooperative256, ElementD>::run(p, e, stream, sm_count)
                                        : Sm90Gemm<Sm90Pingpong128, ElementD>::run(p, e, stream, sm_count);
  });
}

}  // namespace torch_int8::kernels::detail
