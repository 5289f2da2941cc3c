// int8 matrix transpose (kernels.h TransposeInt8): the copy that lays a
// column-major operand out K-major for the GEMM (ATen's strided copy moves
// bytes one at a time through a generic index computation: ~0.3 TB/s). A block
// moves a 64 x 64 byte tile through shared memory: 4-byte loads along the
// input's rows, 4-byte stores along the output's rows, bytes at ragged or
// unaligned edges.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels {
namespace {

constexpr int kTile = 64;
constexpr int kThreads = 256;
constexpr int kWordsPerRow = kTile / 4;              // 16 threads cover a tile row in words
constexpr int kRowsPerPass = kThreads / kWordsPerRow;  // 16 tile rows per pass

__global__ void __launch_bounds__(kThreads) transpose_kernel(TransposeInt8 p, bool words_in, bool words_out) {
  // tile[i][j]: input row i (an output column), input column j (an output row); rows padded by one
  // word against bank conflicts of the column-wise gather
  __shared__ __align__(4) int8_t tile[kTile][kTile + 4];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile;  // input columns = output rows
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTile;  // input rows = output columns
  const int8_t* in = p.in + static_cast<int64_t>(blockIdx.z) * p.in_batch_stride;
  int8_t* out = p.out + static_cast<int64_t>(blockIdx.z) * p.rows * p.cols;
  const int word = threadIdx.x % kWordsPerRow, first = threadIdx.x / kWordsPerRow;
  for (int i = first; i < kTile; i += kRowsPerPass) {
    const int64_t c = c0 + i, r = r0 + 4 * word;
    if (c >= p.cols) break;
    const int8_t* src = in + c * p.in_ld + r;
    if (words_in && r + 3 < p.rows) {
      *reinterpret_cast<uint32_t*>(&tile[i][4 * word]) = *reinterpret_cast<const uint32_t*>(src);
    } else {
      for (int j = 0; j < 4 && r + j < p.rows; ++j) tile[i][4 * word + j] = src[j];
    }
  }
  __syncthreads();
  for (int i = first; i < kTile; i += kRowsPerPass) {
    const int64_t r = r0 + i, c = c0 + 4 * word;
    if (r >= p.rows) break;
    int8_t* dst = out + r * p.cols + c;
    if (words_out && c + 3 < p.cols) {
      uint32_t v = 0;
      for (int j = 0; j < 4; ++j) v |= static_cast<uint32_t>(static_cast<uint8_t>(tile[4 * word + j][i])) << (8 * j);
      *reinterpret_cast<uint32_t*>(dst) = v;
    } else {
      for (int j = 0; j < 4 && c + j < p.cols; ++j) dst[j] = tile[4 * word + j][i];
    }
  }
}

bool aligned4(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 4 == 0; }

}  // namespace

Status transpose_int8_cuda(const TransposeInt8& p, void* stream) {
  const int64_t tiles_r = (p.rows + kTile - 1) / kTile, tiles_c = (p.cols + kTile - 1) / kTile;
  if (!p.in || !p.out || p.rows <= 0 || p.cols <= 0 || p.batch <= 0 || p.in_ld < p.rows || tiles_r > INT32_MAX ||
      tiles_c > 65535 || p.batch > 65535)
    return Status::kInvalidArgument;
  const bool words_in = aligned4(p.in) && p.in_ld % 4 == 0 && p.in_batch_stride % 4 == 0;
  const bool words_out = aligned4(p.out) && p.cols % 4 == 0;
  const dim3 grid(static_cast<unsigned>(tiles_r), static_cast<unsigned>(tiles_c), static_cast<unsigned>(p.batch));
  transpose_kernel<<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p, words_in, words_out);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace torch_int8::kernels
