// Ampere / Ada kernel family (sm_80, sm_86, sm_89): CUTLASS 2.x, mma.sync m16n8k32, cp.async.
#include "families.h"
#include "gemm_sm8x.cuh"

namespace torch_int8::kernels::detail {
Status gemm_sm80(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return few_rows_or_tiles(gemm_skinny_mma, kSkinnyMmaMaxM, gemm_sm8x<Sm80Config>, p, e, stream);
}
}  // namespace torch_int8::kernels::detail
