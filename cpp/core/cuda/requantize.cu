// int32 -> int8 requantization on the GPU: one element per thread, the same
// per-element function as the CPU kernel.
#include <cuda_runtime_api.h>

#include "../requantize_math.h"

namespace torch_int8::kernels {
namespace {

__global__ void requantize_kernel(Requantize r) {
  const int64_t total = r.rows * r.cols;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x)
    r.out[i] = detail::requantize_element(r, i);
}

}  // namespace

Status requantize_cuda(const Requantize& r, void* stream) {
  if ((r.scale == nullptr) == (r.multiplier == nullptr)) return Status::kInvalidArgument;
  const int64_t total = r.rows * r.cols;
  if (total == 0) return Status::kSuccess;
  constexpr int kThreads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
  requantize_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(r);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace torch_int8::kernels
