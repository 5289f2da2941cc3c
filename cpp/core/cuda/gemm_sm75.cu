// Turing kernel family (sm_75): CUTLASS 2.x, mma.sync m8n8k16.
#include "families.h"
#include "gemm_sm8x.cuh"

namespace torch_int8::kernels::detail {
Status gemm_sm75(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return few_rows_or_tiles(gemm_skinny, kSkinnyMaxM, gemm_sm8x<Sm75Config>, p, e, stream);
}
}  // namespace torch_int8::kernels::detail
