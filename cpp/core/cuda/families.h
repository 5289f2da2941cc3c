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
// SIMT families for GPUs without INT8 tensor cores (gemm_simt.cuh).
Status gemm_dp4a(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);  // sm_61+: __dp4a
Status gemm_simt(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);  // sm_50+: exact FP32 FMA

// Few-row products (M <= kSkinnyMaxM), bound by reading B once: a dp4a kernel
// (sm_61+, gemm_skinny.cu) that the dispatcher prefers to every family unless
// one is forced. Measured on the H200 (N = K = 4096, int32 out, CUDA-graph
// replays, 9487153): M = 1 5.3 us, M = 4 9.6 us, M = 8 16.6 us (each B chunk
// meets M rows of A from L1), against 12.2-12.6 us for the sm90 64x32 tile
// kernel at M = 1..8 (bf16: 10-11 us), so the tile kernels take M > 4.
constexpr int64_t kSkinnyMaxM = 4;
Status gemm_skinny(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);

}  // namespace torch_int8::kernels::detail
