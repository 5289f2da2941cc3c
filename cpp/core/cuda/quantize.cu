// Per-row symmetric absmax quantization on the GPU: one block per row reads
// the row for its absolute maximum, then again (from cache) to write int8.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cmath>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The maximum of v over the block, in every thread.
__device__ float block_max(float v) {
  __shared__ float warp_max[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_max[0];
  for (int w = 1; w < kThreads / 32; ++w) v = fmaxf(v, warp_max[w]);
  return v;
}

template <class T>
__global__ void __launch_bounds__(kThreads) quantize_rows_kernel(const T* __restrict__ x, int64_t cols,
                                                                 int8_t* __restrict__ q, float* __restrict__ scale) {
  const T* xr = x + blockIdx.x * cols;
  int8_t* qr = q + blockIdx.x * cols;
  float amax = 0.f;
  int finite = 1;
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    const float v = to_float(xr[c]);
    finite &= isfinite(v);
    amax = fmaxf(amax, fabsf(v));
  }
  finite = __syncthreads_and(finite);
  amax = block_max(amax);
  float s = amax / 127.f;
  s = s == 0.f ? 1.f : s;
  if (threadIdx.x == 0) scale[blockIdx.x] = finite ? s : nanf("");
  for (int64_t c = threadIdx.x; c < cols; c += kThreads) {
    // IEEE division and round half to even, as the composite's x / scale and round().
    const float r = finite ? rintf(__fdiv_rn(to_float(xr[c]), s)) : 0.f;
    qr[c] = static_cast<int8_t>(fminf(fmaxf(r, -127.f), 127.f));
  }
}

template <class T>
Status launch(const QuantizeRows& r, cudaStream_t stream) {
  quantize_rows_kernel<T><<<static_cast<unsigned>(r.rows), kThreads, 0, stream>>>(
      static_cast<const T*>(r.x), r.cols, r.q, r.scale);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace

Status quantize_rows_cuda(const QuantizeRows& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || r.rows > 0x7fffffff || !r.x || !r.q || !r.scale) return Status::kInvalidArgument;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (r.in_type) {
    case InType::kFloat32: return launch<float>(r, s);
    case InType::kFloat16: return launch<__half>(r, s);
    case InType::kBFloat16: return launch<__nv_bfloat16>(r, s);
  }
  return Status::kInvalidArgument;
}

}  // namespace torch_int8::kernels
