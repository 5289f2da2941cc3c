// Hopper implicit-GEMM convolution family (sm_90a): the cooperative kernels
// of conv_sm90.cu's schedule rule.
#include "conv_sm90.cuh"

namespace torch_int8::kernels::detail {
template Status run_sm90_conv<true>(const ConvProblem&, const Epilogue&, cudaStream_t);
}  // namespace torch_int8::kernels::detail
