// Hopper kernel family (sm_90a): the float-output GEMMs that also write the
// row maxima of |D| (Epilogue::row_amax), one per tile configuration of gemm_sm90.cu.
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {
template Status run_sm90_tile<Sm90Cooperative256, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
template Status run_sm90_tile<Sm90Pingpong128, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
template Status run_sm90_tile<Sm90Pingpong64x32, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
}  // namespace torch_int8::kernels::detail
