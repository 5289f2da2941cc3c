// GEMM for few rows (M <= kSkinnyMaxM: decode, GEMV-like products) with dp4a
// (sm_61+): the few-row kernel of the sm75 and dp4a families, and of the sm80
// and sm90 families for M = 1 (families.h). Such products are bound by reading
// B (N x K int8) once; tile kernels leave most of the GPU idle there (N / 128
// blocks, M / 128 of each tile used). Here a warp owns kCols columns and all M
// rows: each lane streams 16-byte chunks of its columns of B and of the rows of
// A (a few KB, served by L1), accumulates with dp4a, and a warp reduction ends
// the dot products.
#include <cuda_runtime_api.h>

#include "families.h"
#include "gemm_common.cuh"
#include "epilogue_simt.cuh"

namespace torch_int8::kernels::detail {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kCols = 4;          // columns of B per warp
constexpr int kChunk = 16;        // bytes of k per lane and step
constexpr int kWarpK = 32 * kChunk;

__device__ __forceinline__ int dot16(const int4& a, const int4& b, int acc) {
  acc = __dp4a(a.x, b.x, acc);
  acc = __dp4a(a.y, b.y, acc);
  acc = __dp4a(a.z, b.z, acc);
  return __dp4a(a.w, b.w, acc);
}

// Warp w of block (x, y) computes columns [kCols (x kWarpsPerBlock + w), +kCols)
// of batch y, for rows m < M <= kMaxM.
template <int kMaxM, class ElementD>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) skinny_gemm_kernel(GemmProblem p, Epilogue e) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32) * kCols;
  if (n0 >= p.n) return;
  const int8_t* a = p.a + blockIdx.y * p.batch_stride_a;
  const int8_t* b = p.b + blockIdx.y * p.batch_stride_b + n0 * p.ldb;
  const int cols = p.n - n0 < kCols ? static_cast<int>(p.n - n0) : kCols;
  int acc[kMaxM][kCols] = {};
#pragma unroll 2
  for (int64_t k = lane * kChunk; k < p.k; k += kWarpK) {
    int4 bv[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      bv[c] = c < cols ? __ldg(reinterpret_cast<const int4*>(b + c * p.ldb + k)) : make_int4(0, 0, 0, 0);
#pragma unroll
    for (int m = 0; m < kMaxM; ++m) {
      if (m >= p.m) break;
      const int4 av = __ldg(reinterpret_cast<const int4*>(a + m * p.lda + k));
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[m][c] = dot16(av, bv[c], acc[m][c]);
    }
  }
  // Every lane ends with every sum; output (m, c) is written by lane (m kCols + c) % 32.
  ElementD* d = static_cast<ElementD*>(p.d) + blockIdx.y * p.batch_stride_d;
#pragma unroll
  for (int m = 0; m < kMaxM; ++m) {
    if (m >= p.m) break;
    unsigned bits = 0;  // the warp's row maximum of |output| (Epilogue::row_amax)
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const int sum = warp_reduce(acc[m][c], Plus{});
      if (lane == (m * kCols + c) % 32 && c < cols) {
        const ElementD out = epilogue_output<ElementD>(sum, e, m, n0 + c);
        d[m * p.ldd + n0 + c] = out;
        if constexpr (kFloatOutput<ElementD>) bits = max(bits, abs_bits(static_cast<float>(out)));
      }
    }
    if constexpr (kFloatOutput<ElementD>) {
      if (e.row_amax) add_lanes_row_amax(e, m, bits);
    }
  }
}

template <int kMaxM>
Status launch_skinny(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    const int64_t warps = (p.n + kCols - 1) / kCols;
    const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
    if (blocks > INT32_MAX || p.batch > 65535) return Status::kInvalidArgument;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.batch));
    skinny_gemm_kernel<kMaxM, ElementD><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(p, e);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  });
}

}  // namespace

Status gemm_skinny(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  if (p.m > kSkinnyMaxM || !operands_aligned(p)) return Status::kInvalidArgument;
  static_assert(kSkinnyMaxM == 4, "one instantiation per row count class up to kSkinnyMaxM");
  if (p.m == 1) return launch_skinny<1>(p, e, stream);
  if (p.m <= 2) return launch_skinny<2>(p, e, stream);
  return launch_skinny<4>(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
