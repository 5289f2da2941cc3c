// The fused quantize kernels of kernels.h, each one read of x:
//   quantize_rows:       a block per row, the row held in registers between its
//                        reduction and its quantization (longer rows: two passes,
//                        max-reduce then quantize);
//   column_stats:        column maxima and sums (quantize_rows' col_amax /
//                        col_sum, the column_amax op): a streaming pass over
//                        slices of rows, then an in-order merge of the slices
//                        (no atomics: the float sums are reproducible);
//   quantize_columns_t:  64-row tiles transposed through shared memory as
//                        4-row words, so that the bf16/fp32 reads and the int8
//                        writes are 16-byte vectors.
// Both quantize with IEEE-exact results and the same rounding as the ATen
// composite, so nearest rounding gives its results bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
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

// A channel's scale and its reciprocal, which exists (is finite and normal)
// for every normal scale; NaN otherwise, which sends every value of the
// channel down the exact division.
struct Divisor {
  float s, r;
};
__device__ __forceinline__ Divisor divisor_of(float amax) {
  const float s = scale_of(amax);
  return {s, s >= FLT_MIN ? __frcp_rn(s) : nanf("")};
}

// round(v / s) clamped to the symmetric int8 range; 0 in a non-finite channel.
template <class Round>
__device__ __forceinline__ int8_t quantize_value(float v, const Divisor& d, const Round& round, int64_t index) {
  if (isnan(d.s)) return 0;
  return static_cast<int8_t>(fminf(fmaxf(round(__fdiv_rn(v, d.s), index), -127.f), 127.f));
}

// y + 1.5 * 2^23 (|y| <= 2^22) is rounded by the FADD to an integer (nearest,
// ties to even) held in the low mantissa bits: rint and the float -> int
// conversion in full-rate instructions.
constexpr float kRoundMagic = 12582912.f;
constexpr int kRoundMagicBits = 0x4B400000;
// |v * r - fl(v / s)| <= 3 * 2^-24 * |v / s| (two roundings of the product,
// one of the quotient), below 2^-12 wherever |v / s| <= 128; beyond that both
// clamp to +-127.
constexpr float kTieMargin = 0x1p-12f;

// Nearest rounding, bit for bit the same as the division above, without it:
// the division (MUFU.RCP and its check), rintf and the float -> int8
// conversion each issue at a quarter of the FP32 rate on sm_90, and by
// instruction count they, not memory, bounded the kernels. The quotient is
// v * (1 / s); only a product this close to a tie takes the division.
__device__ __forceinline__ int8_t quantize_value(float v, const Divisor& d, const Nearest& round, int64_t index) {
  if (isnan(d.s)) return 0;
  const float y = __fmul_rn(v, d.r);
  const float z = fminf(fmaxf(y, -127.f), 127.f) + kRoundMagic;
  if (fabsf(y - (z - kRoundMagic)) < 0.5f - kTieMargin) return static_cast<int8_t>(__float_as_int(z) - kRoundMagicBits);
  return quantize_value<Nearest>(v, d, round, index);  // also a NaN product: s subnormal, or v not finite
}

// |v| as bits: for non-negative floats (and |NaN|) integer order is float
// order, with NaN above inf above every finite value.
__device__ __forceinline__ unsigned amax_bits(float v) { return __float_as_uint(fabsf(v)); }

__device__ __forceinline__ unsigned warp_max(unsigned v) {
  for (int offset = 16; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The maximum of v over the block (blockDim.x a multiple of 32), in every thread.
__device__ unsigned block_max(unsigned v) {
  __shared__ unsigned warp_maxima[32];
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) warp_maxima[threadIdx.x / 32] = v;
  __syncthreads();
  v = warp_maxima[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) v = max(v, warp_maxima[w]);
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
  unsigned amax = 0;
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int64_t p = threadIdx.x + int64_t{i} * blockDim.x;
    if (p < packs) v[i] = xr[p];
  }
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    if (threadIdx.x + int64_t{i} * blockDim.x >= packs) break;
#pragma unroll
    for (int j = 0; j < N; ++j) amax = max(amax, amax_bits(to_float(v[i].v[j])));
  }
  const Divisor d = divisor_of(__uint_as_float(block_max(amax)));
  if (threadIdx.x == 0) scale[r] = d.s;
  auto* qr = reinterpret_cast<Pack<int8_t, N>*>(q + r * cols);
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int64_t p = threadIdx.x + int64_t{i} * blockDim.x;
    if (p >= packs) break;
    Pack<int8_t, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = quantize_value(to_float(v[i].v[j]), d, round, r * cols + p * N + j);
    qr[p] = o;
  }
}

// Rows too long for one block's registers (e.g. a whole image of a convolution)
// take two passes: blocks of kLongRowPacks packs max-reduce their piece into
// the row's amax (amax_bits), then quantize it.
constexpr int kLongRowPacks = 4 * kThreads;

template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    long_row_amax_kernel(const T* __restrict__ x, int64_t cols, unsigned* __restrict__ row_amax) {
  const int64_t packs = cols / N, first = int64_t{blockIdx.x} * kLongRowPacks;
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + int64_t{blockIdx.y} * cols);
  unsigned amax = 0;
  for (int64_t p = first + threadIdx.x; p < min(packs, first + kLongRowPacks); p += kThreads) {
    const Pack<T, N> v = xr[p];
#pragma unroll
    for (int j = 0; j < N; ++j) amax = max(amax, amax_bits(to_float(v.v[j])));
  }
  amax = block_max(amax);
  if (threadIdx.x == 0 && amax != 0) atomicMax(&row_amax[blockIdx.y], amax);
}

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_long_rows_kernel(const T* __restrict__ x, int64_t cols, const unsigned* __restrict__ row_amax,
                              int8_t* __restrict__ q, Round round) {
  const int64_t r = blockIdx.y, packs = cols / N, first = int64_t{blockIdx.x} * kLongRowPacks;
  const Divisor d = divisor_of(__uint_as_float(row_amax[r]));
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
  auto* qr = reinterpret_cast<Pack<int8_t, N>*>(q + r * cols);
  for (int64_t p = first + threadIdx.x; p < min(packs, first + kLongRowPacks); p += kThreads) {
    const Pack<T, N> v = xr[p];
    Pack<int8_t, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = quantize_value(to_float(v.v[j]), d, round, r * cols + p * N + j);
    qr[p] = o;
  }
}

// The long-row amax (float bits, in place in `scale`) becomes the scale.
__global__ void amax_to_scale_kernel(float* scale, int64_t rows) {
  const int64_t r = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (r < rows) scale[r] = scale_of(scale[r]);
}

// Column statistics, pass 1: block (x, y) reduces `lanes` consecutive packs
// (a power of two <= kThreads, so narrow matrices still fill the block) over
// slice y of the rows; the kThreads / lanes threads of a pack take every
// (kThreads / lanes)-th row of the slice and merge in a fixed order. Slice y's
// maxima (amax_bits) and sums go to row y of part_amax / part_sum.
template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    column_stats_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, int64_t slice_rows, int lanes_log2,
                        unsigned* __restrict__ part_amax, float* __restrict__ part_sum) {
  __shared__ unsigned amax_of[kThreads];
  __shared__ float sum_of[kThreads];
  const int lanes = 1 << lanes_log2, lane = threadIdx.x & (lanes - 1), row_step = kThreads >> lanes_log2;
  const int64_t p = int64_t{blockIdx.x} * lanes + lane, packs = cols / N;
  const int64_t r1 = min(rows, (int64_t{blockIdx.y} + 1) * slice_rows);
  unsigned m[N] = {};
  float sum[N] = {};
  if (p < packs) {
#pragma unroll 8  // independent loads in flight; the sums still add in row order
    for (int64_t r = blockIdx.y * slice_rows + (threadIdx.x >> lanes_log2); r < r1; r += row_step) {
      const Pack<T, N> v = reinterpret_cast<const Pack<T, N>*>(x + r * cols)[p];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        m[j] = max(m[j], amax_bits(to_float(v.v[j])));
        sum[j] += to_float(v.v[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (row_step > 1) {  // uniform: merge the block's row groups in order
      __syncthreads();
      amax_of[threadIdx.x] = m[j], sum_of[threadIdx.x] = sum[j];
      __syncthreads();
      if (threadIdx.x >= lanes) continue;
      for (int g = 1; g < row_step; ++g) m[j] = max(m[j], amax_of[g * lanes + lane]), sum[j] += sum_of[g * lanes + lane];
    }
    const int64_t at = int64_t{blockIdx.y} * cols + p * N + j;
    if (p < packs && part_amax) part_amax[at] = m[j];
    if (p < packs && part_sum) part_sum[at] = sum[j];
  }
}

// Column statistics, pass 2: a block merges the slices of kMergeCols columns.
// Its kMergeLanes warps take every kMergeLanes-th slice (a warp reads 32
// neighbouring columns of one slice: coalesced), then lane group 0 merges the
// groups in order, so every run adds in the same order. One thread per column
// walking all slices left most SMs idle: 15 us for 4096 columns x 256 slices,
// 72 us for 256 columns x 1024 slices on the H200.
constexpr int kMergeCols = 32, kMergeLanes = 32;

__global__ void __launch_bounds__(kMergeCols * kMergeLanes)
    column_stats_merge_kernel(const unsigned* __restrict__ part_amax, const float* __restrict__ part_sum,
                              int64_t slices, int64_t cols, float* __restrict__ amax, float* __restrict__ sum) {
  __shared__ unsigned amax_of[kMergeLanes][kMergeCols];
  __shared__ float sum_of[kMergeLanes][kMergeCols];
  const int col = threadIdx.x % kMergeCols, group = threadIdx.x / kMergeCols;
  const int64_t c = int64_t{blockIdx.x} * kMergeCols + col;
  unsigned m = 0;
  float total = 0.f;
  if (c < cols) {
#pragma unroll 8  // independent loads in flight; the sum still adds in slice order
    for (int64_t y = group; y < slices; y += kMergeLanes) {
      if (amax) m = max(m, part_amax[y * cols + c]);
      if (sum) total += part_sum[y * cols + c];
    }
  }
  amax_of[group][col] = m, sum_of[group][col] = total;
  __syncthreads();
  if (group != 0 || c >= cols) return;
  for (int g = 1; g < kMergeLanes; ++g) m = max(m, amax_of[g][col]), total += sum_of[g][col];
  if (amax) amax[c] = __uint_as_float(m);
  if (sum) sum[c] = total;
}

// quantize_columns_t: tiles of 64 rows x kTilePacks packs (128 columns of
// bf16/fp16, 64 of fp32). A thread quantizes 4 consecutive rows of a pack and
// stores the 4 bytes of each column as one word of the transposed tile (the
// byte stores of a 64 x 64 tile were 8-way bank conflicts); the block then
// writes each column of the tile as four 16-byte pieces.
constexpr int kTileRows = 64, kRowGroups = kTileRows / 4, kTilePacks = kThreads / kRowGroups;

// Words per transposed tile row (>= kRowGroups): with N * pitch = 16 (mod 32),
// the two packs of a warp store their 16 row groups into the two halves of the
// banks, free of conflicts.
constexpr int tile_pitch(int n) {
  int pitch = kRowGroups;
  while (n * pitch % 32 != 16) ++pitch;
  return pitch;
}

// Row i of the 4 x N block at (r, c); zeros outside x. Vectors when the tile is whole.
template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* x, int64_t rows, int64_t cols, int64_t r, int64_t c,
                                                bool whole) {
  if (whole) return *reinterpret_cast<const Pack<T, N>*>(x + r * cols + c);
  Pack<T, N> p;
#pragma unroll
  for (int j = 0; j < N; ++j) p.v[j] = r < rows && c + j < cols ? x[r * cols + c + j] : T(0.f);
  return p;
}

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_columns_t_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, const float* __restrict__ col_amax,
                              int8_t* __restrict__ q_t, float* __restrict__ scale, Round round) {
  constexpr int kCols = kTilePacks * N, kPitch = tile_pitch(N);
  __shared__ alignas(16) unsigned tile[kCols][kPitch];  // [column][row group]: 4 rows a word
  __shared__ Divisor tile_div[kCols];
  const int64_t c0 = int64_t{blockIdx.x} * kCols, r0 = int64_t{blockIdx.y} * kTileRows;
  for (int tc = threadIdx.x; tc < kCols; tc += kThreads) {
    const bool in = c0 + tc < cols;
    tile_div[tc] = in ? divisor_of(col_amax[c0 + tc]) : Divisor{1.f, 1.f};
    if (in && blockIdx.y == 0) scale[c0 + tc] = tile_div[tc].s;
  }
  __syncthreads();

  const int group = threadIdx.x % kRowGroups, pc = threadIdx.x / kRowGroups;
  const int64_t r = r0 + group * 4, c = c0 + pc * N;
  const bool whole = r0 + kTileRows <= rows && c0 + kCols <= cols;
  Pack<T, N> v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = load_pack<T, N>(x, rows, cols, r + i, c, whole);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const Divisor d = tile_div[pc * N + j];
    unsigned word = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      word |= unsigned{static_cast<uint8_t>(quantize_value(to_float(v[i].v[j]), d, round, (r + i) * cols + c + j))}
              << (8 * i);
    tile[pc * N + j][group] = word;
  }
  __syncthreads();

  // Column tc of the tile is rows [r0, r0 + 64) of row c0 + tc of q_t.
  for (int item = threadIdx.x; item < kCols * 4; item += kThreads) {
    const int tc = item / 4, piece = item % 4;
    const int64_t out_r = r0 + piece * 16;
    if (c0 + tc >= cols || out_r >= rows) continue;
    const auto* words = reinterpret_cast<const uint2*>(&tile[tc][piece * 4]);  // kPitch is even: 8-byte aligned
    const uint2 lo = words[0], hi = words[1];
    int8_t* out = q_t + (c0 + tc) * rows + out_r;
    if (out_r + 16 <= rows && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
      *reinterpret_cast<uint4*>(out) = make_uint4(lo.x, lo.y, hi.x, hi.y);
    } else {
      const auto* bytes = reinterpret_cast<const int8_t*>(&tile[tc][piece * 4]);
      for (int b = 0; b < 16 && out_r + b < rows; ++b) out[b] = bytes[b];
    }
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

// The two passes of column_stats_cuda for packs of N elements of type T.
template <class T, int N>
Status launch_column_stats(const ColumnStats& c, cudaStream_t s) {
  const int64_t packs = c.cols / N;
  int lanes_log2 = 0;
  while ((int64_t{1} << lanes_log2) < packs && (1 << lanes_log2) < kThreads) ++lanes_log2;
  const int64_t blocks_x = (packs + (int64_t{1} << lanes_log2) - 1) >> lanes_log2;
  if (blocks_x > 0x7fffffff) return Status::kInvalidArgument;
  // Slices of at least kColumnStatsSliceRows rows per thread, as many as keep
  // about kColumnStatsSlices blocks busy (within column_stats_workspace).
  const int64_t rows_per_block = kColumnStatsSliceRows * (kThreads >> lanes_log2);
  const int64_t wanted = std::max<int64_t>(1, kColumnStatsSlices / blocks_x);
  const int64_t slices = std::min((c.rows + rows_per_block - 1) / rows_per_block, wanted);
  const int64_t slice_rows = (c.rows + slices - 1) / slices;
  auto* part_amax = reinterpret_cast<unsigned*>(c.workspace);
  float* part_sum = c.workspace + slices * c.cols;
  column_stats_kernel<T, N><<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(slices)), kThreads, 0, s>>>(
      static_cast<const T*>(c.x), c.rows, c.cols, slice_rows, lanes_log2, c.amax ? part_amax : nullptr,
      c.sum ? part_sum : nullptr);
  column_stats_merge_kernel<<<static_cast<unsigned>((c.cols + kMergeCols - 1) / kMergeCols), kMergeCols * kMergeLanes, 0,
                              s>>>(
      part_amax, part_sum, slices, c.cols, c.amax, c.sum);
  return launched();
}

}  // namespace

Status column_stats_cuda(const ColumnStats& c, void* stream) {
  if (c.rows < 1 || c.cols < 1 || !c.x || !c.workspace || (!c.amax && !c.sum)) return Status::kInvalidArgument;
  if ((c.cols + kMergeCols - 1) / kMergeCols > 0x7fffffff) return Status::kInvalidArgument;
  const bool vector = c.cols % (16 / element_bytes(c.in_type)) == 0 && aligned16(c.x);
  return dispatch(c.in_type, vector, Rounding{}, [&](auto t, auto n, auto /* rounding: unused */) {
    return launch_column_stats<decltype(t), decltype(n)::value>(c, static_cast<cudaStream_t>(stream));
  });
}

Status quantize_rows_cuda(const QuantizeRows& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || r.rows > 0x7fffffff || !r.x || !r.q || !r.scale) return Status::kInvalidArgument;
  if (r.col_amax || r.col_sum) {
    const Status status =
        column_stats_cuda({r.x, r.in_type, r.rows, r.cols, r.col_amax, r.col_sum, r.workspace}, stream);
    if (status != Status::kSuccess) return status;
  }
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x) && aligned16(r.q);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    constexpr int kN = decltype(n)::value;
    const auto s = static_cast<cudaStream_t>(stream);
    const auto* x = static_cast<const T*>(r.x);
    // Enough threads for the row to fit in registers, else the two-pass path.
    const int64_t threads = ((r.cols / kN + kRowPacks<T, kN> - 1) / kRowPacks<T, kN> + 31) / 32 * 32;
    if (threads > 1024) return launch_long_rows<T, kN>(x, r, round, s);
    quantize_rows_kernel<T, kN, decltype(round)><<<static_cast<unsigned>(r.rows), static_cast<unsigned>(threads), 0,
                                                    s>>>(x, r.cols, r.q, r.scale, round);
    return launched();
  });
}

Status quantize_columns_t_cuda(const QuantizeColumnsT& r, void* stream) {
  if (r.rows < 1 || r.cols < 1 || !r.x || !r.col_amax || !r.q_t || !r.scale) return Status::kInvalidArgument;
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    constexpr int kN = decltype(n)::value;
    const int64_t grid_x = (r.cols + kTilePacks * kN - 1) / (kTilePacks * kN), grid_y = (r.rows + kTileRows - 1) / kTileRows;
    if (grid_x > 0x7fffffff || grid_y > 65535) return Status::kInvalidArgument;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
    quantize_columns_t_kernel<T, kN, decltype(round)><<<grid, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(r.x), r.rows, r.cols, r.col_amax, r.q_t, r.scale, round);
    return launched();
  });
}

}  // namespace torch_int8::kernels
