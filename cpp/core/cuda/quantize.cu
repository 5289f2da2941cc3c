// The fused quantize kernels of kernels.h, each one read of x:
//   quantize_rows:       one wave of blocks, each streaming a slice of whole
//                        rows: a row is held in registers between its reduction
//                        and its quantization while the next one is loaded
//                        (short rows: several at a time, one per warp segment). With
//                        column statistics a block also keeps its columns' maxima
//                        and sums over its slice; the slices are then merged in
//                        order (no atomics: the float sums are reproducible).
//                        Longer rows: two passes, max-reduce then quantize;
//   column_stats:        the column statistics alone (the column_amax op, and
//                        rows too long for the fused ones): a streaming pass over
//                        slices of rows, then the same merge;
//   quantize_columns_t:  64-row tiles transposed through shared memory as
//                        4-row words, so that the bf16/fp32 reads and the int8
//                        writes are 16-byte vectors. (128-row tiles written as
//                        whole 128-byte lines measured slower on the H200:
//                        27-34% of the copy rate against 42-51%, NOTES entry 12.)
// Both quantize with IEEE-exact results and the same rounding as the ATen
// composite, so nearest rounding gives its results bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>

#include "quantize_math.cuh"
#include "torch_int8/kernels.h"

namespace torch_int8::kernels {
namespace {

using namespace quantize_math;  // to_float, Nearest, scale_of, Divisor, divisor_of, quantize_value

constexpr int kThreads = 256;


__device__ __forceinline__ unsigned bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ unsigned bits_of(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned bits_of(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

// The value of T with the given bits.
template <class T>
__device__ __forceinline__ T from_bits(unsigned b) {
  if constexpr (sizeof(T) == 4) return __uint_as_float(b);
  else if constexpr (std::is_same_v<T, __half>) return __ushort_as_half(static_cast<unsigned short>(b));
  else return __ushort_as_bfloat16(static_cast<unsigned short>(b));
}

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


// floor(y + u), u ~ U[0, 1): unbiased. The element index picks the counter, so
// the noise of an element does not depend on how the work is split.
struct Stochastic {
  uint64_t seed, offset;
  const int64_t *seed_ptr, *offset_ptr;  // Rounding's, under CUDA-graph capture

  // This launch's (seed, offset): what Rounding holds, or reads on the device (a kernel calls it once).
  __device__ Stochastic resolved() const {
    if (!seed_ptr) return *this;
    return {static_cast<uint64_t>(*seed_ptr), static_cast<uint64_t>(*offset_ptr) + offset, nullptr, nullptr};
  }

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


// The low bytes of a, b, c, d as one word, a's lowest.
__device__ __forceinline__ unsigned low_bytes(unsigned a, unsigned b, unsigned c, unsigned d) {
  return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// N int8 values as they are stored: whole words when N is a multiple of 4. (A
// Pack<int8_t, N> filled through words was split back into bytes and
// reassembled for its store: ~20 more instructions per 8 values.)
template <int N>
using Int8Pack = std::conditional_t<N % 4 == 0, Pack<unsigned, (N + 3) / 4>, Pack<int8_t, N>>;

// The low bytes of N words as int8.
template <int N>
__device__ __forceinline__ Int8Pack<N> low_bytes(const unsigned (&b)[N]) {
  Int8Pack<N> o;
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int i = 0; i < N / 4; ++i) o.v[i] = low_bytes(b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) o.v[j] = static_cast<int8_t>(b[j]);
  }
  return o;
}

// Nearest rounding of v / s without the division, whose MUFU.RCP and check,
// like rintf and the float -> int8 conversion, issue at a quarter of the FP32
// rate on sm_90 (by instruction count they, not memory, bounded the kernels).
// z = fl(v * r + 1.5 * 2^23), r = fl(1 / s), holds k = rint(v * r) in its low
// mantissa bits while |v * r| < 2^22: the low byte of its bits is k as an int8.
// k is rint(fl(v / s)) too unless v * r lies within kTieMargin of a tie, since
// |v * r - v / s| and |fl(v / s) - v / s| are each at most 2^-24 |v / s|,
// below 2^-16 together wherever |v / s| <= 128. Such a value sets `exact` (so
// does NaN: s subnormal, which has no reciprocal, or v not finite), and so
// does |k| > 127 unless kBounded: s is then the maximum of these very values
// over 127, so |v / s| <= 127 up to rounding.
constexpr float kRoundMagic = 12582912.f, kTieMargin = 0x1p-12f;

template <bool kBounded>
__device__ __forceinline__ unsigned round_bits(float v, float r, bool& exact) {
  const float z = __fmaf_rn(v, r, kRoundMagic), k = __fsub_rn(z, kRoundMagic);
  exact |= !(fabsf(__fmaf_rn(v, r, -k)) < 0.5f - kTieMargin);
  if (!kBounded) exact |= !(fabsf(k) <= 127.f);
  return __float_as_uint(z);
}

// Element j of a pack as a float: a bf16 from its pair's word in one
// instruction (a shift or a mask), not by extracting the half first.
template <class T, int N>
__device__ __forceinline__ float float_at(const Pack<T, N>& p, int j) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && N % 2 == 0) {
    const unsigned word = reinterpret_cast<const unsigned*>(p.v)[j / 2];
    return __uint_as_float(j % 2 ? word & 0xffff0000u : word << 16);
  } else {
    return to_float(p.v[j]);
  }
}

template <class T, int N>
__device__ __forceinline__ void unpack(const Pack<T, N>& p, float (&f)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) f[j] = float_at(p, j);
}

// N values of one channel quantized by the division, in the low bytes of
// bits; value j has index + j * stride (the stochastic counters).
template <int N, class Round>
__device__ __forceinline__ void divide_bits(const float (&v)[N], const Divisor& d, const Round& round, int64_t index,
                                            int64_t stride, unsigned (&bits)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) bits[j] = static_cast<uint8_t>(quantize_value<Round>(v[j], d, round, index + j * stride));
}

template <bool kBounded, int N, class Round>
__device__ __forceinline__ void quantize_bits(const float (&v)[N], const Divisor& d, const Round& round, int64_t index,
                                              int64_t stride, unsigned (&bits)[N]) {
  divide_bits(v, d, round, index, stride, bits);
}

// Nearest: by the reciprocal; the whole pack by the division in the rare case
// that one of its values needs it.
template <bool kBounded, int N>
__device__ __forceinline__ void quantize_bits(const float (&v)[N], const Divisor& d, const Nearest& round,
                                              int64_t index, int64_t stride, unsigned (&bits)[N]) {
  bool exact = false;
#pragma unroll
  for (int j = 0; j < N; ++j) bits[j] = round_bits<kBounded>(v[j], d.r, exact);
  if (exact) divide_bits(v, d, round, index, stride, bits);
}

// A pack quantized in one channel (kBounded: see round_bits).
template <bool kBounded, class T, int N, class Round>
__device__ __forceinline__ Int8Pack<N> quantize_pack(const Pack<T, N>& v, const Divisor& d, const Round& round,
                                                     int64_t index) {
  float f[N];
  unpack(v, f);
  unsigned bits[N];
  quantize_bits<kBounded>(f, d, round, index, 1, bits);
  return low_bytes(bits);
}

// |v| of float v as bits: for non-negative floats (and |NaN|) integer order is
// float order, with NaN above inf above every finite value.
__device__ __forceinline__ unsigned amax_bits(float v) { return __float_as_uint(fabsf(v)); }

// The magnitudes |v| of a pack in the same integer order, without converting
// them: a float's bits less the sign, or a 16-bit value's, two to a word when N
// is even (VIMNMX.U16x2 takes the maxima of both halves at once on sm_90).
template <class T, int N>
struct Magnitudes {
  static constexpr bool kPaired = sizeof(T) == 2 && N % 2 == 0;
  static constexpr int kWords = kPaired ? N / 2 : N;
  unsigned w[kWords];

  __device__ __forceinline__ static unsigned max(unsigned a, unsigned b) {
    return kPaired ? __vmaxu2(a, b) : ::max(a, b);
  }

  // The magnitude of element j.
  __device__ __forceinline__ unsigned at(int j) const {
    return kPaired ? (w[j / 2] >> (16 * (j % 2))) & 0xffffu : w[j];
  }

  // The float bits (amax_bits) of magnitude m, which may be a pair.
  __device__ __forceinline__ static unsigned float_bits(unsigned m) {
    if constexpr (sizeof(T) == 4) return m;
    else return __float_as_uint(to_float(from_bits<T>(kPaired ? ::max(m & 0xffffu, m >> 16) : m)));
  }
};

template <class T, int N>
__device__ __forceinline__ Magnitudes<T, N> magnitudes(const Pack<T, N>& p) {
  Magnitudes<T, N> m;
  if constexpr (Magnitudes<T, N>::kPaired) {
    const auto* words = reinterpret_cast<const unsigned*>(p.v);
#pragma unroll
    for (int i = 0; i < N / 2; ++i) m.w[i] = words[i] & 0x7fff7fffu;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) m.w[j] = bits_of(p.v[j]) & (sizeof(T) == 4 ? 0x7fffffffu : 0x7fffu);
  }
  return m;
}

// The largest of acc and the magnitudes of m (a pair for 16-bit types).
template <class T, int N>
__device__ __forceinline__ unsigned max_magnitude(unsigned acc, const Magnitudes<T, N>& m) {
#pragma unroll
  for (int i = 0; i < Magnitudes<T, N>::kWords; ++i) acc = Magnitudes<T, N>::max(acc, m.w[i]);
  return acc;
}

__device__ __forceinline__ unsigned warp_max(unsigned v) {
  for (int offset = 16; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The maximum of v over the block (blockDim.x a multiple of 32), in every
// thread. `slots` (32 words of shared memory) may be written again only after
// the next barrier: back-to-back calls alternate two of them.
__device__ __forceinline__ unsigned block_max(unsigned v, unsigned* slots) {
  v = warp_max(v);
  if (threadIdx.x % 32 == 0) slots[threadIdx.x / 32] = v;
  __syncthreads();
  return warp_max(threadIdx.x % 32 < blockDim.x / 32 ? slots[threadIdx.x % 32] : 0u);
}

// The statistics quantize_rows_kernel collects for the columns of its slice.
enum class Columns { kNone, kAmax, kAmaxSum };

// Packs of a row held by one thread: fewer with column statistics, whose
// maxima and sums take registers too.
template <Columns S>
constexpr int kRowPacks = S == Columns::kNone ? 4 : 2;

// Threads of a block of quantize_rows_kernel: at most 1024, or 768 with column
// sums, which then keeps them in registers without spilling (85 per thread).
template <Columns S>
constexpr int kMaxRowThreads = S == Columns::kAmaxSum ? 768 : 1024;

// Threads of a block of quantize_rows_kernel for short rows (at most 32
// threads a row): several rows at a time, each on its own lanes of a warp.
constexpr int kShortRowThreads = 128;

// How quantize_rows_kernel covers rows of `cols` elements: `lanes` threads a
// row, `threads` a block. A row of more than 32 * P packs takes whole warps,
// the block, one row at a time (threads over kMaxRowThreads<S>: too long); a
// shorter one the next power of two of lanes, kShortRowThreads / lanes rows at
// a time (one warp per row of 8 bf16 values measured 150 us for 401408 x 64:
// 7 lanes in 8 idle, and one row after the other).
struct RowShape {
  int64_t threads;
  int lanes;
};

template <int N, Columns S>
RowShape row_shape(int64_t cols) {
  const int64_t per_row = (cols / N + kRowPacks<S> - 1) / kRowPacks<S>;
  if (per_row > 32) {
    const int64_t threads = (per_row + 31) / 32 * 32;
    return {threads, static_cast<int>(std::min<int64_t>(threads, INT_MAX))};
  }
  int lanes = 1;
  while (lanes < per_row) lanes *= 2;
  return {kShortRowThreads, lanes};
}

// *p if `in`, else zeros: as whole words where the pack has them (the
// compiler would select each 16-bit element of a bf16 pack on its own).
template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_or_zero(const Pack<T, N>* p, bool in) {
  if constexpr (sizeof(Pack<T, N>) % 4 == 0) {
    using Words = Pack<unsigned, sizeof(Pack<T, N>) / 4>;
    union {
      Words w;
      Pack<T, N> v;
    } u{in ? *reinterpret_cast<const Words*>(p) : Words{}};
    return u.v;
  } else {
    return in ? *p : Pack<T, N>{};
  }
}

// A thread's place in quantize_rows_kernel: lane `lane` of the `lanes`
// threads of a row (row_shape), in group `group` of the block's `groups` rows
// at a time. Its packs of a row are lane, lane + lanes, ... Long rows
// (!kShort) take the block, one row at a time: the compiler sees group 0 of
// 1 (one kernel for both spilled the column sums of long rows).
template <bool kShort>
struct RowLanes {
  int lanes, lane, group, groups;

  __device__ explicit RowLanes(int row_lanes)
      : lanes(kShort ? row_lanes : blockDim.x), lane(kShort ? threadIdx.x % row_lanes : threadIdx.x),
        group(kShort ? threadIdx.x / row_lanes : 0), groups(kShort ? blockDim.x / row_lanes : 1) {}

  __device__ __forceinline__ int pack(int i) const { return lane + i * lanes; }
};

// The maximum of v over the lanes of each row, in each of them: the block's
// (block_max) when the block takes one row at a time, else a warp segment's.
// Every thread of the block calls it (the barrier, the shuffles).
template <bool kShort>
__device__ __forceinline__ unsigned row_max(unsigned v, const RowLanes<kShort>& l, unsigned* slots) {
  if constexpr (!kShort) return block_max(v, slots);
  for (int offset = l.lanes / 2; offset > 0; offset /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The packs of one row that a thread holds (RowLanes::pack); zeros past the end.
template <class T, int N, int P>
struct RowPart {
  Pack<T, N> v[P];

  template <bool kShort>
  __device__ __forceinline__ void load(const T* x, int64_t r, int cols, const RowLanes<kShort>& l) {
    const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
#pragma unroll
    for (int i = 0; i < P; ++i) v[i] = load_or_zero(xr + l.pack(i), l.pack(i) < cols / N);
  }
};

// A thread's column statistics over the rows of its block's slice: the
// maxima of the magnitudes of its packs and (kAmaxSum) their sums in row order.
template <class T, int N, int P, Columns S>
struct ColumnPartials {
  Magnitudes<T, N> amax[P] = {};
  float sum[P][N] = {};

  __device__ __forceinline__ void add(const RowPart<T, N, P>& row, const Magnitudes<T, N> (&m)[P]) {
#pragma unroll
    for (int i = 0; i < P && S != Columns::kNone; ++i) {
#pragma unroll
      for (int k = 0; k < Magnitudes<T, N>::kWords; ++k) amax[i].w[k] = Magnitudes<T, N>::max(amax[i].w[k], m[i].w[k]);
      float f[N];
      unpack(row.v[i], f);
#pragma unroll
      for (int j = 0; j < N && S == Columns::kAmaxSum; ++j) sum[i][j] += f[j];
    }
  }

  // Into row `slice` of part_amax (amax_bits) and part_sum, each optional.
  // Groups of a block (RowLanes) first merge in group order through `merged`
  // (dynamic shared memory: blockDim.x * P * N words of maxima, then as many
  // sums with kAmaxSum).
  template <bool kShort>
  __device__ __forceinline__ void store(int64_t slice, int cols, const RowLanes<kShort>& l, unsigned* merged,
                                        unsigned* part_amax, float* part_sum) const {
    if constexpr (S == Columns::kNone) return;
    if constexpr (!kShort) return store_columns(slice * cols, cols, l, part_amax, part_sum);
    const int width = l.lanes * P * N;  // >= cols: a group's columns
    auto* merged_sum = reinterpret_cast<float*>(merged + blockDim.x * P * N);
    store_columns(l.group * width, cols, l, merged, merged_sum);
    __syncthreads();
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
      unsigned m = 0;
      float total = 0.f;
      for (int g = 0; g < l.groups; ++g) {
        m = max(m, merged[g * width + c]);
        if (S == Columns::kAmaxSum) total += merged_sum[g * width + c];
      }
      if (part_amax) part_amax[slice * cols + c] = m;
      if (S == Columns::kAmaxSum && part_sum) part_sum[slice * cols + c] = total;
    }
  }

  // Column c of this thread's packs at amax[at + c] (amax_bits) and sum[at + c], each optional.
  template <bool kShort>
  __device__ __forceinline__ void store_columns(int64_t at, int cols, const RowLanes<kShort>& l, unsigned* amax_out,
                                                float* sum_out) const {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int p = l.pack(i);
      if (p >= cols / N) break;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        if (amax_out) amax_out[at + p * N + j] = Magnitudes<T, N>::float_bits(amax[i].at(j));
        if (S == Columns::kAmaxSum && sum_out) sum_out[at + p * N + j] = sum[i][j];
      }
    }
  }
};

// Dynamic shared memory of quantize_rows_kernel: ColumnPartials::store's merge
// of several rows at a time.
template <int N, Columns S>
size_t row_merge_bytes(const RowShape& shape) {
  const int64_t words = S == Columns::kNone || shape.lanes == shape.threads ? 0 : S == Columns::kAmax ? 1 : 2;
  return static_cast<size_t>(words * shape.threads * kRowPacks<S> * N * sizeof(unsigned));
}

// Block b quantizes rows [b * slice_rows, (b + 1) * slice_rows): the grid is
// about one wave, so blocks do not wait for their rows' turn. Group g of the
// block (RowLanes, `lanes` threads a row) takes rows g, g + groups, ... of the
// slice, and loads its next row while it reduces and quantizes the one before
// (two rows in flight). With column statistics S the slice's go to row b of
// part_amax / part_sum (each optional).
template <class T, int N, Columns S, class Round, bool kShort>
__global__ void __launch_bounds__(kShort ? kShortRowThreads : kMaxRowThreads<S>)
    quantize_rows_kernel(const T* __restrict__ x, int64_t rows, int cols, int64_t slice_rows, int lanes,
                         int8_t* __restrict__ q, float* __restrict__ scale, unsigned* __restrict__ part_amax,
                         float* __restrict__ part_sum, Round rounding) {
  constexpr int P = kRowPacks<S>;
  const Round round = rounding.resolved();
  __shared__ unsigned warp_maxima[2][32];
  extern __shared__ unsigned merged[];  // row_merge_bytes
  const RowLanes<kShort> l(lanes);
  const int64_t r0 = blockIdx.x * slice_rows, r1 = min(rows, r0 + slice_rows);
  ColumnPartials<T, N, P, S> stats;
  // Quantizes row r (held in `row`; none past r1) after issuing the loads of
  // the group's next row into `next`. Every thread calls it (row_max).
  auto step = [&](const RowPart<T, N, P>& row, RowPart<T, N, P>& next, int64_t r) {
    if (r + l.groups < r1) next.load(x, r + l.groups, cols, l);
    Magnitudes<T, N> m[P];
    unsigned amax = 0;
#pragma unroll
    for (int i = 0; i < P; ++i) amax = max_magnitude(amax, m[i] = magnitudes(row.v[i]));
    const unsigned row_amax = row_max(Magnitudes<T, N>::float_bits(amax), l, warp_maxima[r & 1]);
    if (r >= r1) return;
    stats.add(row, m);
    const Divisor d = divisor_of(__uint_as_float(row_amax));
    if (l.lane == 0) scale[r] = d.s;
    auto* qr = reinterpret_cast<Int8Pack<N>*>(q + r * cols);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int p = l.pack(i);
      if (p < cols / N) qr[p] = quantize_pack<true>(row.v[i], d, round, r * cols + p * N);
    }
  };
  RowPart<T, N, P> a{}, b{};  // alternately the row held and the row loading (zeros: rows past r1)
  if (r0 + l.group < r1) a.load(x, r0 + l.group, cols, l);
  for (int64_t first = r0; first < r1; first += 2 * l.groups) {  // uniform over the block
    step(a, b, first + l.group);
    if (first + l.groups < r1) step(b, a, first + l.groups + l.group);
  }
  stats.store(blockIdx.x, cols, l, merged, part_amax, part_sum);
}

// Rows too long for one block's registers (e.g. a whole image of a convolution)
// take two passes: blocks of kLongRowPacks packs max-reduce their piece into
// the row's amax (amax_bits), then quantize it. The quantize pass walks the
// blocks in reverse, so that it starts on what the max pass read last, which
// may still be in L2 (with the 8 loads in flight: 3-7% faster on the H200,
// benchmarks/NOTES.md 24).
constexpr int kLongRowSteps = 8;  // packs per thread and block
constexpr int kLongRowPacks = kLongRowSteps * kThreads;

// Calls f(i, p) for the kLongRowSteps packs p = first + i * kThreads +
// threadIdx.x of a long-row block that lie in the row, unrolled so that
// their loads are all in flight before the first is used.
template <class F>
__device__ __forceinline__ void for_each_long_row_pack(int64_t first, int64_t packs, F&& f) {
#pragma unroll
  for (int i = 0; i < kLongRowSteps; ++i) {
    const int64_t p = first + int64_t{i} * kThreads + threadIdx.x;
    if (p < packs) f(i, p);
  }
}

template <class T, int N>
__global__ void __launch_bounds__(kThreads)
    long_row_amax_kernel(const T* __restrict__ x, int64_t cols, unsigned* __restrict__ row_amax) {
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + int64_t{blockIdx.y} * cols);
  __shared__ unsigned warp_maxima[32];
  unsigned amax = 0;
  for_each_long_row_pack(int64_t{blockIdx.x} * kLongRowPacks, cols / N,
                         [&](int, int64_t p) { amax = max_magnitude(amax, magnitudes(xr[p])); });
  amax = block_max(Magnitudes<T, N>::float_bits(amax), warp_maxima);
  if (threadIdx.x == 0 && amax != 0) atomicMax(&row_amax[blockIdx.y], amax);
}

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_long_rows_kernel(const T* __restrict__ x, int64_t cols, const unsigned* __restrict__ row_amax,
                              int8_t* __restrict__ q, Round rounding) {
  const Round round = rounding.resolved();
  const int64_t r = gridDim.y - 1 - blockIdx.y, packs = cols / N;
  const int64_t first = int64_t{gridDim.x - 1 - blockIdx.x} * kLongRowPacks;
  const Divisor d = divisor_of(__uint_as_float(row_amax[r]));
  const auto* xr = reinterpret_cast<const Pack<T, N>*>(x + r * cols);
  auto* qr = reinterpret_cast<Int8Pack<N>*>(q + r * cols);
  Pack<T, N> v[kLongRowSteps];
  for_each_long_row_pack(first, packs, [&](int i, int64_t p) { v[i] = xr[p]; });
  for_each_long_row_pack(first, packs, [&](int i, int64_t p) {
    qr[p] = quantize_pack<true>(v[i], d, round, r * cols + p * N);
  });
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

// Row r of x from column c on, N values; zeros outside x. A vector when `inside` (all N are in x).
template <class T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* x, int64_t rows, int64_t cols, int64_t r, int64_t c,
                                                bool inside) {
  if (inside) return *reinterpret_cast<const Pack<T, N>*>(x + r * cols + c);
  Pack<T, N> p;
#pragma unroll
  for (int j = 0; j < N; ++j) p.v[j] = r < rows && c + j < cols ? x[r * cols + c + j] : T(0.f);
  return p;
}

template <class T, int N, class Round>
__global__ void __launch_bounds__(kThreads)
    quantize_columns_t_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, const float* __restrict__ col_amax,
                              int8_t* __restrict__ q_t, float* __restrict__ scale, Round rounding) {
  constexpr int kCols = kTilePacks * N, kPitch = tile_pitch(N);
  const Round round = rounding.resolved();
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
  // Vector loads wherever this thread's 4 x N block lies inside x: not only in whole tiles (a matrix
  // of 64 bf16 columns fills half of every 128-column tile; its halves in x were loaded value by value).
  const bool inside = r + 4 <= rows && c + N <= cols;
  Pack<T, N> v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = load_pack<T, N>(x, rows, cols, r + i, c, inside);
#pragma unroll
  for (int j = 0; j < N; ++j) {
    // The 4 rows of column j: one channel, one word of the transposed tile.
    // Not bounded: col_amax comes from the caller.
    const float f[4] = {to_float(v[0].v[j]), to_float(v[1].v[j]), to_float(v[2].v[j]), to_float(v[3].v[j])};
    unsigned bits[4];
    quantize_bits<false>(f, tile_div[pc * N + j], round, r * cols + c + j, cols, bits);
    tile[pc * N + j][group] = low_bytes(bits[0], bits[1], bits[2], bits[3]);
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
    if (rounding.stochastic)
      return f(t, n, Stochastic{rounding.seed, rounding.offset, rounding.seed_ptr, rounding.offset_ptr});
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

// Column statistics from the partials of `slices` slices (either may be null).
Status merge_column_stats(const unsigned* part_amax, const float* part_sum, int64_t slices, int64_t cols, float* amax,
                          float* sum, cudaStream_t s) {
  column_stats_merge_kernel<<<static_cast<unsigned>((cols + kMergeCols - 1) / kMergeCols), kMergeCols * kMergeLanes, 0,
                              s>>>(part_amax, part_sum, slices, cols, amax, sum);
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
  // Slices of at least 2 * kColumnStatsSliceRows rows per thread, as many as
  // keep about kColumnStatsSlices blocks busy (within column_stats_workspace).
  const int64_t rows_per_block = 2 * kColumnStatsSliceRows * (kThreads >> lanes_log2);
  const int64_t wanted = std::max<int64_t>(1, kColumnStatsSlices / blocks_x);
  const int64_t slices = std::min((c.rows + rows_per_block - 1) / rows_per_block, wanted);
  const int64_t slice_rows = (c.rows + slices - 1) / slices;
  auto* part_amax = reinterpret_cast<unsigned*>(c.workspace);
  float* part_sum = c.workspace + slices * c.cols;
  column_stats_kernel<T, N><<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(slices)), kThreads, 0, s>>>(
      static_cast<const T*>(c.x), c.rows, c.cols, slice_rows, lanes_log2, c.amax ? part_amax : nullptr,
      c.sum ? part_sum : nullptr);
  return merge_column_stats(part_amax, part_sum, slices, c.cols, c.amax, c.sum, s);
}

// Blocks of `kernel` with `threads` threads and `smem` bytes of dynamic shared
// memory that the device holds at once, at most per_sm per multiprocessor. The
// occupancy query reads the kernel's attributes: it is made once per kernel,
// block, shared memory and device, not on every call (quantize_rows sizes its
// grid this way on every call, decode-sized ones included).
template <class Kernel>
Status resident_blocks(Kernel kernel, int threads, size_t smem, int per_sm, int64_t& blocks) {
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, size_t, int>, std::pair<int, int>> known;  // -> (SMs, blocks per SM)
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return Status::kCudaError;
  const auto key = std::make_tuple(reinterpret_cast<const void*>(kernel), threads, smem, device);
  const std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find(key);
  if (it == known.end()) {
    int sms = 0, fit = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, threads, smem) != cudaSuccess)
      return Status::kCudaError;
    it = known.emplace(key, std::make_pair(sms, fit)).first;
  }
  blocks = int64_t{it->second.first} * std::clamp(it->second.second, 1, per_sm);
  return Status::kSuccess;
}

// Column statistics of long rows come from at most kStatsBlocksPerSm blocks
// per multiprocessor: every block's slice adds a row of partials to write and
// merge. 2 blocks of 256 threads (32 KB of rows in flight per SM, 23% occupancy)
// held 8192 x 4096 bf16 to 41% of the copy rate; 4 double that. Short rows
// (row_shape) have short rows of partials: as many blocks as fit.
constexpr int kStatsBlocksPerSm = 4;

// quantize_rows_kernel (rows of at most kMaxRowThreads<S> threads) and, with column
// statistics S, their merge.
template <class T, int N, Columns S, class Round>
Status launch_rows(const T* x, const QuantizeRows& r, const Round& round, cudaStream_t s) {
  const RowShape shape = row_shape<N, S>(r.cols);
  const int threads = static_cast<int>(shape.threads);
  const bool short_rows = shape.lanes < threads;
  const auto kernel = short_rows ? quantize_rows_kernel<T, N, S, Round, true> : quantize_rows_kernel<T, N, S, Round, false>;
  const size_t smem = row_merge_bytes<N, S>(shape);
  int64_t blocks = 0;
  const Status status =
      resident_blocks(kernel, threads, smem, S == Columns::kNone || short_rows ? INT_MAX : kStatsBlocksPerSm, blocks);
  if (status != Status::kSuccess) return status;
  if (short_rows)  // each group at least two rows (fewer blocks, fewer slices to merge)
    blocks = std::min(blocks, std::max<int64_t>(1, r.rows / (2 * (threads / shape.lanes))));
  if (S != Columns::kNone)  // slices within column_stats_workspace
    blocks = std::min({blocks, (r.rows + kColumnStatsSliceRows - 1) / kColumnStatsSliceRows, kColumnStatsSlices});
  const int64_t slice_rows = (r.rows + blocks - 1) / blocks, slices = (r.rows + slice_rows - 1) / slice_rows;
  unsigned* part_amax = nullptr;
  float* part_sum = nullptr;
  if (S != Columns::kNone) {
    if (r.col_amax) part_amax = reinterpret_cast<unsigned*>(r.workspace);
    if (r.col_sum) part_sum = r.workspace + slices * r.cols;
  }
  kernel<<<static_cast<unsigned>(slices), threads, smem, s>>>(x, r.rows, static_cast<int>(r.cols), slice_rows,
                                                               shape.lanes, r.q, r.scale, part_amax, part_sum, round);
  if (S == Columns::kNone) return launched();
  return merge_column_stats(part_amax, part_sum, slices, r.cols, r.col_amax, r.col_sum, s);
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
  if ((r.col_amax || r.col_sum) && !r.workspace) return Status::kInvalidArgument;
  const bool vector = r.cols % (16 / element_bytes(r.in_type)) == 0 && aligned16(r.x) && aligned16(r.q);
  return dispatch(r.in_type, vector, r.rounding, [&](auto t, auto n, auto round) {
    using T = decltype(t);
    constexpr int kN = decltype(n)::value;
    const auto s = static_cast<cudaStream_t>(stream);
    const auto* x = static_cast<const T*>(r.x);
    if (r.col_amax || r.col_sum) {
      if (row_shape<kN, Columns::kAmaxSum>(r.cols).threads <= kMaxRowThreads<Columns::kAmaxSum>)
        return r.col_sum ? launch_rows<T, kN, Columns::kAmaxSum>(x, r, round, s)
                         : launch_rows<T, kN, Columns::kAmax>(x, r, round, s);
      // Rows too long to keep their column statistics in registers: a pass of their own.
      const Status status =
          column_stats_cuda({r.x, r.in_type, r.rows, r.cols, r.col_amax, r.col_sum, r.workspace}, stream);
      if (status != Status::kSuccess) return status;
    }
    // Rows too long for the registers of one block: the two-pass path.
    if (row_shape<kN, Columns::kNone>(r.cols).threads > kMaxRowThreads<Columns::kNone>)
      return launch_long_rows<T, kN>(x, r, round, s);
    return launch_rows<T, kN, Columns::kNone>(x, r, round, s);
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
