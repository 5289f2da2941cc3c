// The GPU entry points of kernels.h in a build without CUDA: every header
// function exists in every build, and these say that no GPU kernel was built.
#include "torch_int8/kernels.h"

namespace torch_int8::kernels {

const char* gemm_backend(int) { return nullptr; }
const char* built_gemm_families() { return ""; }
Status gemm_cuda(const GemmProblem&, const Epilogue&, void*) { return Status::kNoKernel; }
Status requantize_cuda(const Requantize&, void*) { return Status::kNoKernel; }
Status quantize_rows_cuda(const QuantizeRows&, void*) { return Status::kNoKernel; }

}  // namespace torch_int8::kernels
