// TEMPORARY (A/B measurement of NOTES 23): the cooperative persistent
// convolution, bf16 output, in a file of its own to compile in parallel.
#include "conv_families.h"
#include "conv_sm90.cuh"

namespace torch_int8::kernels::detail {

Status conv2d_fprop_sm90_coop(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  using D = cutlass::bfloat16_t;
  if (p.c % 64 != 0) {
    if (p.c % 32 != 0) return Status::kInvalidArgument;
    return Sm90ConvFprop<Sm90ConvTile<256, 64, 32, true>, D>::run(p, e, stream);
  }
  return p.k <= 64 ? Sm90ConvFprop<Sm90ConvTile<256, 64, 64, true>, D>::run(p, e, stream)
                   : Sm90ConvFprop<Sm90ConvTile<256, 128, 64, true>, D>::run(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
