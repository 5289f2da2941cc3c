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

// Few-row products, bound by reading B once, have kernels of their own that
// the families run instead of their tile kernels:
// - sm80 and sm90: 2 <= M <= kSkinnyMmaMaxM on tensor cores with swapped
//   operands (mma.sync m16n8k32, gemm_skinny_mma.cu), M = 1 with dp4a;
// - sm75 and dp4a: M <= kSkinnyMaxM with dp4a (gemm_skinny.cu): on the H200
//   (N = K = 4096, int32 out, CUDA-graph replays) M = 1 5.2 us, M = 4 9.6 us,
//   as dp4a runs out of multiply-adds when rows are added.
// Figures of the mma kernel: gemm_skinny_mma.cu, benchmarks/NOTES.md entry 11.
constexpr int64_t kSkinnyMaxM = 4;
Status gemm_skinny(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);
constexpr int64_t kSkinnyMmaMaxM = 32;
Status gemm_skinny_mma(const GemmProblem& p, const Epilogue& e, cudaStream_t stream);

// few_rows(p) for M <= max_m unless it refuses the problem (alignment), else tiles(p).
inline Status few_rows_or_tiles(GemmFamilyFn few_rows, int64_t max_m, GemmFamilyFn tiles, const GemmProblem& p,
                                const Epilogue& e, cudaStream_t stream) {
  if (p.m <= max_m) {
    if (const Status st = few_rows(p, e, stream); st != Status::kInvalidArgument) return st;
  }
  return tiles(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
