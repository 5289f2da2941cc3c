// The CUDA GEMM kernel families, one .cu file each, behind the dispatch table
// in dispatch.cu. Each family checks the requirements of kernels.h and runs.
#pragma once

#include <cuda_runtime_api.h>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels::detail {

using GemmFamilyFn = Status (*)(const GemmProblem&, const Epilogue&, cudaStream_t);

Status gemm_sm75(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);  // Turing
Status gemm_sm80(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);  // Ampere / Ada
Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);  // Hopper

}  // namespace torch_int8::kernels::detail
