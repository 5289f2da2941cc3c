// The fused quantize kernels of kernels.h: each reads x once from memory.
//   quantize_rows:       a warp per row; the row is read for its absolute maximum,
//                        then again (from L1/L2) to write int8; column maxima are
//                        gathered in shared memory on the way, if asked for.
//   quantize_columns_t:  64 x 64 tiles transposed through shared memory, so that
//                        both the bf16/fp32 reads and the int8 writes are 16-byte
//                        vectors.
// Both use IEEE division and the same rounding as the ATen composite, so nearest
// rounding gives its results bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cfloat>
#include <cmath>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// N elements moved as one vector access when N * sizeof(T) is 16 (or 4, 8).
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
__device__ __forceinline__ uint4 philox(uint4 c, uint2 k) {
  for (int round = 0; round < 10; ++round) {
    const unsigned lo0 = 0xD2511F53u * c.x, hi0 = __umulhi(0xD2511F53u, c.x);
    const unsigned lo1 = 0xCD9E8D57u * c.z, hi1 = __umulhi(0xCD9E8D57u, c.z);
    c = make_uint4(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
    k.x += 0x9E3779B9u;
    k.y += 0xBB67AE85u;
  }
  return c;
}

struct Nearest {
  __device__ float operator()(float y, int64_t) const { return rintf(y); }
};

// floor(y + u), u ~ U[0, 1): unbiased. The element index picks the counter, so
// the noise of an element does not depend on how the work is split.
struct Stochastic {
  uint64_t seed, offset;
  __device__ float operator()(float y, int64_t index) const {
    const uint64_t block = static_cast<uint64_t>(index) / 4;
    const uint4 r = philox(make_uint4(static_cast<unsigned>(block), static_cast<unsigned>(block >> 32),
                                      static_cast<unsigned>(offset), static_cast<unsigned>(offset >> 32)),
                           make_uint2(static_cast<unsigned>(seed), static_cast<unsigned>(seed >> 32)));
    const unsigned word[4] = {r.x, r.y, r.z, r.w};
    const float u = static_cast<float>(word[index % 4] >> 8) * 0x1p-24f;  // 24 bits: exact, < 1
    return floorf(y + u);
  }
};

// The scale of a channel with absolute maximum amax (NaN if it is not finite).
__device__ __forceinline__ float scale_of(float amax) {
  if (!(amax <= FLT_MAX)) return nanf("");
  const float s = amax / 127.f;
  return s == 0.f ? 1.f : s;
}

// round(v / s) clamped to the symmetric int8 range; 0 in a non-finite channel.
template <class Round>
__device__ __forceinline__ int8_t quantize_value(float v, float s, const Round& round, int64_t index) {
  if (isnan(s)) return 0;
  return static_cast<int8_t>(fminf(fmaxf(round(__fdiv_rn(v, s), index), -127.f), 127.f));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Rows [blockIdx.x * rows_per_block, ...) with one warp per row. Column maxima
// are float bit patterns: for non-negative floats (and |NaN|) integer order is
// float order, with NaN above inf above every finite value.
template <class T, int N, class Round, bool kColAmax>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int rows_per_block,
                         int8_t* __restrict__ q, float* __restrict__ scale, unsigned* __restrict__ col_amax,
                         Round round) {
  extern __shared__ unsigned block_col_amax[];  // cols entries when kColAmax
  if constexpr (kColAmax) {
    for (int64_t c = threadIdx.x; c < cols; c += kThreads) block_col_amax[c] = 0;
    __syncthreads();
  }
  const int lane = threadIdx.x % 32;
  const int64_t packs = cols / N;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t end = min(rows, first + rows_per_block);
  for (int64_t r = first + threadIdx.x / 32; r < end; r += kWarps) {
    const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
    float amax = 0.f;
    bool finite = true;
    for (int64_t i = lane; i < packs; i += 32) {
      const Pack<T, N> p = xr[i];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float a = fabsf(to_float(p.v[j]));
        finite &= a <= FLT_MAX;
        amax = fmaxf(amax, a);
        if constexpr (kColAmax) atomicMax(&block_col_amax[i * N + j], __float_as_uint(a));
      }
    }
    finite = __all_sync(0xffffffffu, finite);
    const float s = scale_of(finite ? warp_max(amax) : INFINITY);
    if (lane == 0) scale[r] = s;
    auto* qr = reinterpret_cast<Pack<int8_t, N>*>(q + r * cols);
    for (int64_t i = lane; i < packs; i += 32) {
      const Pack<T, N> p = xr[i];
      Pack<int8_t, N> o;
#pragma unroll
      for (int j = 0; j < N; ++j) o.v[j] = quantize_value(to_float(p.v[j]), s, round, r * cols + i * N + j);
      qr[i] = o;
    }
  }
  if constexpr (kColAmax) {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < cols; c += kThreads)
      if (block_col_amax[c] != 0) atomicMax(&col_amax[c], block_col_amax[c]);
  }
}

constexpr int kTile = 64;                // rows and columns of a quantize_columns_t tile
constexpr int kTilePitch = kTile + 16;  // bytes per transposed tile row: 16-byte aligned

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_columns_t_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, const float* __restrict__ col_amax,
                              int8_t* __restrict__ q_t, float* __restrict__ scale, Round round) {
  __shared__ alignas(16) int8_t tile[kTile][kTilePitch];  // [column][row]
  __shared__ float tile_scale[kTile];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile, r0 = static_cast<int64_t>(blockIdx.y) * kTile;
  if (threadIdx.x < kTile && c0 + threadIdx.x < cols) {
    const float s = scale_of(col_amax[c0 + threadIdx.x]);
    tile_scale[threadIdx.x] = s;
    if (blockIdx.y == 0) scale[c0 + threadIdx.x] = s;
  }
  __syncthreads();

  // Read: each thread a pack of N columns of a row; vectors when the tile is whole.
  constexpr int kPacksPerRow = kTile / N, kRowsPerStep = kThreads / kPacksPerRow;
  const int pc = threadIdx.x % kPacksPerRow;
  const bool whole = r0 + kTile <= rows && c0 + kTile <= cols;
  for (int tr = threadIdx.x / kPacksPerRow; tr < kTile; tr += kRowsPerStep) {
    const int64_t r = r0 + tr, c = c0 + pc * N;
    float v[N];
    if (whole) {
      const Pack<T, N> p = *reinterpret_cast<const Pack<T, N>*>(x + r * cols + c);
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = to_float(p.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) v[j] = r < rows && c + j < cols ? to_float(x[r * cols + c + j]) : 0.f;
    }
#pragma unroll
    for (int j = 0; j < N; ++j)
      if (c + j < cols) tile[pc * N + j][tr] = quantize_value(v[j], tile_scale[pc * N + j], round, r * cols + c + j);
  }
  __syncthreads();

  // Write: four 16-byte pieces per transposed row (= column of x).
  const int tc = threadIdx.x / 4, piece = threadIdx.x % 4;
  const int64_t c = c0 + tc, r = r0 + piece * 16;
  if (c >= cols) return;
  int8_t* out = q_t + c * rows + r;
  if (r + 16 <= rows && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(&tile[tc][piece * 16]);
  } else {
    for (int b = 0; b < 16 && r + b < rows; ++b) out[b] = tile[tc][piece * 16 + b];
  }
}

// Calls f(T{}, pack width, rounding functor) for the run-time choices: 16-byte
// packs when every row starts 16-byte aligned, single elements otherwise.
template <class F>
Status dispatch(InType in_type, bool vector, const Rounding& rounding, F&& f) {
  auto with_round = [&](auto t, auto n) {
    if (rounding.stochastic) return f(t, n, Stochastic{rounding.seed, rounding.offset});
    return f(t, n, Nearest{});
  };
  auto with_width = [&](auto t) {
    constexpr int kN = 16 / sizeof(decltype(t));
    return vector ? with_round(t, std::integral_constant<int, kN>{}) : with_round(t, std::integral_constant<int, 1>{});
  };
  switch (in_type) {
    case InType::kFloat32: return with_width(float{});
    case InType::kFloat16: return with_width(__half{});
    case InType::kBFloat16: return with_width(__nv_bfloat16{});
  }
  return Status::kInvalidArgument;
}

int element_bytes(InType t) { return t == InType::kFloat32 ? 4 : 2; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

Status launched() { return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError; }

// Shared memory for the column maxima of one block; beyond this the caller
// falls back to the composite.
constexpr int64_t kMaxColAmaxCols = 48 * 1024;

}  // namespace

Status quantize_rows_cuda(const QuantizeRows& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || !r.x || !r.q || !r.scale) return Status::kInvalidArgument;
  if (r.col_amax && r.cols > kMaxColAmaxCols) return Status::kInvalidArgument;
  // Column maxima cost one shared-memory atomic per element and one global
  // atomic per column and block: more rows per block keep the latter few.
  const int rows_per_block = r.col_amax ? 4 * kWarps : kWarps;
  const int64_t blocks = (r.rows + rows_per_block - 1) / rows_per_block;
  if (blocks > 0x7fffffff) return Status::kInvalidArgument;
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x) && aligned16(r.q);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    constexpr int kN = decltype(n)::value;
    const auto s = static_cast<cudaStream_t>(stream);
    auto* col_amax = reinterpret_cast<unsigned*>(r.col_amax);
    const auto* x = static_cast<const T*>(r.x);
    if (r.col_amax) {
      const auto kernel = quantize_rows_kernel<T, kN, decltype(round), true>;
      const size_t smem = static_cast<size_t>(r.cols) * sizeof(unsigned);
      if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)) !=
          cudaSuccess)
        return Status::kCudaError;
      kernel<<<static_cast<unsigned>(blocks), kThreads, smem, s>>>(x, r.rows, r.cols, rows_per_block, r.q, r.scale,
                                                                   col_amax, round);
    } else {
      quantize_rows_kernel<T, kN, decltype(round), false><<<static_cast<unsigned>(blocks), kThreads, 0, s>>>(
          x, r.rows, r.cols, rows_per_block, r.q, r.scale, nullptr, round);
    }
    return launched();
  });
}

Status quantize_columns_t_cuda(const QuantizeColumnsT& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || !r.x || !r.col_amax || !r.q_t || !r.scale) return Status::kInvalidArgument;
  const int64_t grid_x = (r.cols + kTile - 1) / kTile, grid_y = (r.rows + kTile - 1) / kTile;
  if (grid_x > 0x7fffffff || grid_y > 65535) return Status::kInvalidArgument;
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
    quantize_columns_t_kernel<T, decltype(n)::value, decltype(round)>
        <<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(static_cast<const T*>(r.x), r.rows, r.cols,
                                                                   r.col_amax, r.q_t, r.scale, round);
    return launched();
  });
}

}  // namespace torch_int8::kernels
