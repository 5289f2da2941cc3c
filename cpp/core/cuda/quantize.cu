// The fused quantize kernels of kernels.h, each one read of x:
//   quantize_rows:       a block per row, the row held in registers between its
//                        reduction and its quantization (longer rows: two passes,
//                        max-reduce then quantize); the column maxima, if
//                        asked for, come from a separate streaming kernel (one
//                        more read of x, but no atomics on the row kernel's path).
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
    const unsigned word = index & 2 ? (index & 1 ? r.w : r.z) : (index & 1 ? r.y : r.x);
    const float u = static_cast<float>(word >> 8) * 0x1p-24f;  // 24 bits: exact, < 1
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

// The maximum of v over the block (blockDim.x a multiple of 32), in every thread.
__device__ float block_max(float v) {
  __shared__ float warp_maxima[32];
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_maxima[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) v = fmaxf(v, warp_maxima[w]);
  __syncthreads();  // warp_maxima is written again by the next call
  return v;
}

// Packs of a row held by one thread: the row is read from memory once, into
// registers, and quantized from there (32 elements of 4 bytes, or 16 of 2).
template <class T, int N>
constexpr int kRowPacks = 64 / (N * static_cast<int>(sizeof(T)));

// One block per row; thread t holds packs t, t + blockDim.x, ... of it.
template <class T, int N, class Round>
__global__ void __launch_bounds__(1024)
    quantize_rows_kernel(const T* __restrict__ x, int64_t cols, int8_t* __restrict__ q, float* __restrict__ scale,
                         Round round) {
  constexpr int kPacks = kRowPacks<T, N>;
  const int64_t r = blockIdx.x, packs = cols / N;
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
  Pack<T, N> v[kPacks];
  float amax = 0.f;
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int64_t p = threadIdx.x + int64_t{i} * blockDim.x;
    if (p < packs) v[i] = xr[p];
  }
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    if (threadIdx.x + int64_t{i} * blockDim.x >= packs) break;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float a = fabsf(to_float(v[i].v[j]));
      amax = a <= FLT_MAX ? fmaxf(amax, a) : INFINITY;  // inf and NaN make the row non-finite
    }
  }
  const float s = scale_of(block_max(amax));
  if (threadIdx.x == 0) scale[r] = s;
  auto* qr = reinterpret_cast<Pack<int8_t, N>*>(q + r * cols);
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int64_t p = threadIdx.x + int64_t{i} * blockDim.x;
    if (p >= packs) break;
    Pack<int8_t, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = quantize_value(to_float(v[i].v[j]), s, round, r * cols + p * N + j);
    qr[p] = o;
  }
}

// Rows too long for one block's registers (e.g. a whole image of a convolution)
// take two passes: blocks of kLongRowPacks packs max-reduce their piece into
// the row's amax (float bits of a non-negative float, inf for a non-finite
// piece; integer order is float order), then quantize it.
constexpr int kLongRowPacks = 4 * kThreads;

template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    long_row_amax_kernel(const T* __restrict__ x, int64_t cols, unsigned* __restrict__ row_amax) {
  const int64_t packs = cols / N, first = int64_t{blockIdx.x} * kLongRowPacks;
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + int64_t{blockIdx.y} * cols);
  float amax = 0.f;
  for (int64_t p = first + threadIdx.x; p < min(packs, first + kLongRowPacks); p += kThreads) {
    const Pack<T, N> v = xr[p];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float a = fabsf(to_float(v.v[j]));
      amax = a <= FLT_MAX ? fmaxf(amax, a) : INFINITY;  // fmaxf would drop a NaN: inf marks non-finite
    }
  }
  amax = block_max(amax);
  if (threadIdx.x == 0 && amax != 0.f) atomicMax(&row_amax[blockIdx.y], __float_as_uint(amax));
}

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_long_rows_kernel(const T* __restrict__ x, int64_t cols, const unsigned* __restrict__ row_amax,
                              int8_t* __restrict__ q, Round round) {
  const int64_t r = blockIdx.y, packs = cols / N, first = int64_t{blockIdx.x} * kLongRowPacks;
  const float s = scale_of(__uint_as_float(row_amax[r]));
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
  auto* qr = reinterpret_cast<Pack<int8_t, N>*>(q + r * cols);
  for (int64_t p = first + threadIdx.x; p < min(packs, first + kLongRowPacks); p += kThreads) {
    const Pack<T, N> v = xr[p];
    Pack<int8_t, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = quantize_value(to_float(v.v[j]), s, round, r * cols + p * N + j);
    qr[p] = o;
  }
}

// The long-row amax (float bits, in place in `scale`) becomes the scale.
__global__ void amax_to_scale_kernel(float* scale, int64_t rows) {
  const int64_t r = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (r < rows) scale[r] = scale_of(scale[r]);
}

constexpr int kColAmaxRows = 64;  // rows per block of the column-maxima kernel

// Column maxima as float bit patterns: for non-negative floats (and |NaN|)
// integer order is float order, with NaN above inf above every finite value.
// Block (x, y): packs [256 x, 256 (x + 1)) of rows [64 y, 64 (y + 1)); a warp
// reads 32 consecutive packs of a row, and one atomic per column and block
// merges the blocks.
template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    column_amax_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, unsigned* __restrict__ col_amax) {
  const int64_t p = int64_t{blockIdx.x} * kThreads + threadIdx.x, packs = cols / N;
  if (p >= packs) return;
  const int64_t r0 = int64_t{blockIdx.y} * kColAmaxRows, r1 = min(rows, r0 + kColAmaxRows);
  unsigned m[N] = {};
  for (int64_t r = r0; r < r1; ++r) {
    const Pack<T, N> v = reinterpret_cast<const Pack<T, N>*>(x + r * cols)[p];
#pragma unroll
    for (int j = 0; j < N; ++j) m[j] = max(m[j], __float_as_uint(fabsf(to_float(v.v[j]))));
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
    if (m[j] != 0) atomicMax(&col_amax[p * N + j], m[j]);
}

// quantize_columns_t: 64 x 64 tiles, quantized into a transposed int8 tile in
// shared memory, written out in 16-byte pieces. (A 128 x 64 variant storing
// 4-row words into an XOR-swizzled tile, free of the byte stores' bank
// conflicts, measured slower on the H200: 34-37% of copy bandwidth against
// 41-47% for this one; benchmarks/NOTES.md.)
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

// The two-pass path of rows longer than a block's registers hold; the row
// maxima are gathered in the scale buffer itself.
template <class T, int N, class Round>
Status launch_long_rows(const T* x, const QuantizeRows& r, const Round& round, cudaStream_t s) {
  const int64_t chunks = (r.cols / N + kLongRowPacks - 1) / kLongRowPacks;
  if (chunks > 0x7fffffff || r.rows > 65535) return Status::kInvalidArgument;
  auto* amax = reinterpret_cast<unsigned*>(r.scale);
  if (cudaMemsetAsync(amax, 0, r.rows * sizeof(unsigned), s) != cudaSuccess) return Status::kCudaError;
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(r.rows));
  long_row_amax_kernel<T, N><<<grid, kThreads, 0, s>>>(x, r.cols, amax);
  quantize_long_rows_kernel<T, N, Round><<<grid, kThreads, 0, s>>>(x, r.cols, amax, r.q, round);
  amax_to_scale_kernel<<<static_cast<unsigned>((r.rows + kThreads - 1) / kThreads), kThreads, 0, s>>>(r.scale, r.rows);
  return launched();
}

}  // namespace

Status quantize_rows_cuda(const QuantizeRows& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || r.rows > 0x7fffffff || !r.x || !r.q || !r.scale) return Status::kInvalidArgument;
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x) && aligned16(r.q);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    constexpr int kN = decltype(n)::value;
    const auto s = static_cast<cudaStream_t>(stream);
    const auto* x = static_cast<const T*>(r.x);
    const int64_t packs = r.cols / kN;
    if (r.col_amax) {
      const int64_t blocks_x = (packs + kThreads - 1) / kThreads, blocks_y = (r.rows + kColAmaxRows - 1) / kColAmaxRows;
      if (blocks_x > 0x7fffffff || blocks_y > 65535) return Status::kInvalidArgument;
      column_amax_kernel<T, kN><<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(blocks_y)), kThreads, 0,
                                  s>>>(x, r.rows, r.cols, reinterpret_cast<unsigned*>(r.col_amax));
    }
    // Enough threads for the row to fit in registers, else the two-pass path.
    const int64_t threads = ((packs + kRowPacks<T, kN> - 1) / kRowPacks<T, kN> + 31) / 32 * 32;
    if (threads > 1024) return launch_long_rows<T, kN>(x, r, round, s);
    quantize_rows_kernel<T, kN, decltype(round)><<<static_cast<unsigned>(r.rows), static_cast<unsigned>(threads), 0,
                                                    s>>>(x, r.cols, r.q, r.scale, round);
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
