// GEMM for few rows (M <= kSkinnyMmaMaxM: decode, GEMV-like products) on
// tensor cores, for the sm80 and sm90 families (mma.sync m16n8k32, sm_80+).
// Such products are bound by reading B (N x K int8) once. Tile kernels leave
// most SMs idle there (N / 32 tiles at best, each streaming all of K), and the
// dp4a few-row kernel (gemm_skinny.cu) runs out of multiply-adds beyond a few
// rows of A.
//
// The operands are swapped: the mma's 16 rows are 16 columns of B (rows in
// memory, K contiguous) and its 8 columns are rows of A, so every row count up
// to 8 costs one mma per 16 x 32 piece of B. A block owns kCols
// columns of B and all of K: its warps split K in interleaved 128-byte steps
// (the block reads each row of B as whole cache lines) and a shared-memory sum
// ends the dot products before the epilogue, one output per thread.
//
// The order of k inside an mma step is free as long as both operands use the
// same one: each lane loads 16 consecutive bytes of a row of B and of A, which
// feed two mma steps (bytes 0-7 the first, 8-15 the second).
#include <cuda_runtime_api.h>

#include "families.h"
#include "gemm_common.cuh"
#include "epilogue_simt.cuh"
#include "mma_sm80.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "gemm_skinny_mma.cu needs mma.sync m16n8k32 (sm_80 or newer)"
#endif

namespace torch_int8::kernels::detail {
namespace {

constexpr int kChunk = 16;             // bytes of k per lane and load
constexpr int kHalfStep = 4 * kChunk;  // k of one load of the 4 lanes sharing a row
constexpr int kWarpStep = 2 * kHalfStep;  // k per warp and step: one 128-byte line per row

// The block shape, chosen by measurement on the H200 (N = K = 4096, CUDA-graph
// replays; M = 1 / 8 / 16 / 32): 16 warps x 16 columns, two steps of loads in
// flight per warp: 6.4 / 6.6 / 7.8 / 9.9 us; 8 warps x 32 columns: 12.2 / 12.5
// / 9.9 / 14.0 us; 8 x 16: 8.5 / 8.8 / 9.4 / 15.1 us; 4 x 16 or 32 columns (four
// steps in flight): 12-17 us. Many warps, each with a short stretch of K whose
// loads all fly at once, hide the memory latency; wider blocks (less re-reading
// of A from L2) did not pay.
constexpr int kWarps = 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kColTiles = 1;  // 16-column mma tiles of B per warp
constexpr int kCols = 16 * kColTiles;  // columns of B per block; a row of outputs spans kCols lanes
constexpr int kUnroll = 2;
constexpr int kBlockStep = kWarps * kWarpStep;
constexpr int kPitch = kCols + 4;  // partial-sum row pitch: conflict-free fragment stores
static_assert(kCols == 16 || kCols == 32, "the epilogue's row segments must divide a warp");

// 16 bytes B is read once: not kept in L1, which holds the rows of A.
__device__ __forceinline__ int4 load_streaming(const int8_t* ptr) {
  int4 v;
  asm("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(ptr));
  return v;
}

// Block (x, y) computes columns [kCols x, +kCols) of batch y for rows
// m < M <= 8 kRowTiles.
template <int kRowTiles, class ElementD>
__global__ void __launch_bounds__(kThreads) skinny_mma_kernel(GemmProblem p, Epilogue e) {
  constexpr int kRows = 8 * kRowTiles;
  __shared__ int partial[kWarps][kRows][kPitch];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates
  const int64_t n0 = int64_t{blockIdx.x} * kCols;

  // This lane's rows of B (columns n0 + 8 i + group) and of A (rows 8 j + group); null past the edge.
  const int8_t* b_rows[2 * kColTiles];
  const int8_t* a_rows[kRowTiles];
#pragma unroll
  for (int i = 0; i < 2 * kColTiles; ++i) {
    const int64_t n = n0 + 8 * i + group;
    b_rows[i] = n < p.n ? p.b + blockIdx.y * p.batch_stride_b + n * p.ldb : nullptr;
  }
#pragma unroll
  for (int j = 0; j < kRowTiles; ++j) {
    const int m = 8 * j + group;
    a_rows[j] = m < p.m ? p.a + blockIdx.y * p.batch_stride_a + m * p.lda : nullptr;
  }

  int acc[kColTiles][kRowTiles][4] = {};
#pragma unroll kUnroll
  for (int64_t k0 = int64_t{warp} * kWarpStep; k0 < p.k; k0 += kBlockStep) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t k = k0 + half * kHalfStep + quad * kChunk;
      const bool in_k = k < p.k;  // K % 16 == 0: a 16-byte chunk is wholly in or out
      int4 bv[2 * kColTiles], av[kRowTiles];
#pragma unroll
      for (int i = 0; i < 2 * kColTiles; ++i)
        bv[i] = in_k && b_rows[i] ? load_streaming(b_rows[i] + k) : make_int4(0, 0, 0, 0);
#pragma unroll
      for (int j = 0; j < kRowTiles; ++j)
        av[j] = in_k && a_rows[j] ? __ldg(reinterpret_cast<const int4*>(a_rows[j] + k)) : make_int4(0, 0, 0, 0);
#pragma unroll
      for (int t = 0; t < kColTiles; ++t) {
        const int4& lo = bv[2 * t];  // mma rows group and group + 8
        const int4& hi = bv[2 * t + 1];
#pragma unroll
        for (int j = 0; j < kRowTiles; ++j) {
          mma_s8(acc[t][j], lo.x, hi.x, lo.y, hi.y, av[j].x, av[j].y);
          mma_s8(acc[t][j], lo.z, hi.z, lo.w, hi.w, av[j].z, av[j].w);
        }
      }
    }
  }

  // Accumulator fragment: c0, c1 at mma row group, columns 2 quad + {0, 1}; c2, c3 at row group + 8.
#pragma unroll
  for (int t = 0; t < kColTiles; ++t) {
#pragma unroll
    for (int j = 0; j < kRowTiles; ++j) {
      const int col = 16 * t + group, row = 8 * j + 2 * quad;
      partial[warp][row][col] = acc[t][j][0];
      partial[warp][row + 1][col] = acc[t][j][1];
      partial[warp][row][col + 8] = acc[t][j][2];
      partial[warp][row + 1][col + 8] = acc[t][j][3];
    }
  }
  __syncthreads();

  // One output per thread and pass; kRows x kCols is a multiple of 32, so a
  // warp runs a pass whole (the row maxima shuffle over all of its lanes).
  ElementD* d = static_cast<ElementD*>(p.d) + blockIdx.y * p.batch_stride_d;
  for (int i = threadIdx.x; i < kRows * kCols; i += kThreads) {
    const int m = i / kCols, col = i % kCols;
    const int64_t n = n0 + col;
    unsigned bits = 0;  // |output| for the row maximum (Epilogue::row_amax)
    if (m < p.m && n < p.n) {
      int sum = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) sum += partial[w][m][col];
      const ElementD out = epilogue_output<ElementD>(sum, e, m, n);
      d[m * p.ldd + n] = out;
      if constexpr (kFloatOutput<ElementD>) bits = abs_bits(static_cast<float>(out));
    }
    if constexpr (kFloatOutput<ElementD>) {
      if (e.row_amax) add_lanes_row_amax<kCols>(e, m, bits, m < p.m);
    }
  }
}

template <int kRowTiles>
Status launch_skinny_mma(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    const int64_t blocks = (p.n + kCols - 1) / kCols;
    if (blocks > INT32_MAX || p.batch > 65535) return Status::kInvalidArgument;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.batch));
    skinny_mma_kernel<kRowTiles, ElementD><<<grid, kThreads, 0, stream>>>(p, e);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  });
}

}  // namespace

// A single row goes to the dp4a few-row kernel (gemm_skinny.cu; built for every
// arch of this file): 5.2 us against 6.4 here (N = K = 4096, H200), as one row
// uses an eighth of each mma.
Status gemm_skinny_mma(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.m == 1) return gemm_skinny(p, e, stream);
  if (p.m > kSkinnyMmaMaxM || !operands_aligned(p)) return Status::kInvalidArgument;
  static_assert(kSkinnyMmaMaxM == 32, "one instantiation per 8-row class up to kSkinnyMmaMaxM");
  if (p.m <= 8) return launch_skinny_mma<1>(p, e, stream);
  if (p.m <= 16) return launch_skinny_mma<2>(p, e, stream);
  return launch_skinny_mma<4>(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
