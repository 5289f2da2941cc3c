// Hopper kernel family (sm_90a): CUTLASS 3.x wgmma + TMA, warp-specialized.
#include "families.h"
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {

Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  static const int sm_count = [] {
    int device = 0;
    cudaGetDevice(&device);
    return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  }();
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
    return Sm90Gemm<Sm90Pingpong128, ElementD>::run(p, e, stream, sm_count);
  });
}

}  // namespace torch_int8::kernels::detail
