// The CUDA GEMM kernel families, one .cu file each, behind the dispatch table
// in dispatch.cu. Each family checks the requirements of kernels.h and runs.
#pragma once

#include <cuda_runtime_api.h>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels::detail {

// With workspace_query set, a family only stores the workspace bytes the
// kernel it would pick for p needs, and runs nothing.
using GemmFamilyFn = Status (*)(const GemmProblem&, const Epilogue&, cudaStream_t, size_t* workspace_query);

Status gemm_sm75(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, size_t* workspace_query);  // Turing
Status gemm_sm80(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, size_t* workspace_query);  // Ampere / Ada
Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, size_t* workspace_query);  // Hopper

}  // namespace torch_int8::kernels::detail
