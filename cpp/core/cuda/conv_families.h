// The implicit-GEMM forward convolution families behind conv_dispatch.cu, one
// .cu file each. conv_dispatch.cu has checked the geometry (conv_geometry_ok);
// each family checks what its own kernels need and returns kInvalidArgument
// for the rest, which the caller then runs as im2col + GEMM.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../conv_rules.h"
#include "torch_int8/conv.h"

namespace torch_int8::kernels::detail {

Status conv2d_fprop_sm80(const ConvProblem& p, const Epilogue& e, cudaStream_t stream);  // Ampere / Ada
Status conv2d_fprop_sm90(const ConvProblem& p, const Epilogue& e, cudaStream_t stream);  // Hopper

// The implicit-GEMM weight gradient of the sm80 and sm90 families (conv_wgrad_mma.cu, mma.sync):
// how many stretches of the pixels it splits p into on a GPU of sm_count SMs, and the kernel.
int64_t wgrad_mma_splits(const ConvProblem& p, int sm_count);
Status conv2d_wgrad_mma(const ScaledWgrad& w, cudaStream_t stream);

// What every tensor-core family needs besides the geometry and its channel rule
// (conv_rules.h): 16-byte aligned base pointers, epilogue vectors included.
inline bool conv_pointers_aligned(const ConvProblem& p, const Epilogue& e) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
  return aligned(p.x) && aligned(p.filter) && aligned(p.y) && aligned(e.row_scale) && aligned(e.col_scale) &&
         aligned(e.row_offset) && aligned(e.col_sum) && aligned(e.col_bias);
}

}  // namespace torch_int8::kernels::detail
