// Ampere / Ada implicit-GEMM convolution family (sm_80, sm_86, sm_89): CUTLASS 2.x, cp.async + mma.sync.
#include "conv_families.h"
#include "conv_sm80.cuh"

namespace torch_int8::kernels::detail {

Status conv2d_fprop_sm80(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!sm80_fprop_channels_ok(p.c, p.k, p.groups, sizeof(ElementD)) || !conv_pointers_aligned(p, e))
      return Status::kInvalidArgument;
    return Sm80ConvFprop<ElementD>::run(p, e, stream);
  });
}

}  // namespace torch_int8::kernels::detail
