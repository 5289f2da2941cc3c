// simt kernel family (sm_50 and newer, e.g. Jetson Nano sm_53, which has no
// dp4a): the SIMT GEMM of gemm_simt.cuh with exact FP32 arithmetic.
//
// Why FP32 FMA for an integer product: 32-bit IMAD issues at half the FP32
// rate on every GPU since Volta and is a multi-instruction sequence on
// Maxwell, so FP32 FMA is the fastest exact int8 path without dp4a.
// Why it is exact: |a b| <= 128 * 128 = 2^14 for int8 a, b, so a sum of at
// most 512 products stays within 2^23 < 2^24, and every partial sum is an
// integer that float holds exactly. Each accumulator therefore sums at most
// 512 k values in FP32, then adds them into an int32 (an exact conversion).
#include "families.h"
#include "gemm_simt.cuh"

namespace torch_int8::kernels::detail {
namespace {

struct ExactFp32Math {
  using Element = float;  // one int8 value, converted once when staged in shared memory
  static constexpr int kKPerElement = 1;
  static constexpr int kTileK = 16;          // 128 x 128 tiles: 32 KiB of shared memory, double buffered
  using LoadVector = int2;                   // 128 x 16 int8 per operand and stage: one 8-byte load per thread
  static constexpr int kFlushK = 512;        // the exactness bound above
  static constexpr int kMaxRegisters = 255;  // 64 float partial sums + 64 int32 totals per thread

  __device__ static void unpack(const int2& v, Element (&e)[8]) {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < 4; ++j) {
      e[j] = static_cast<int8_t>(v.x >> (8 * j));
      e[4 + j] = static_cast<int8_t>(v.y >> (8 * j));
    }
  }

  struct Accumulator {
    float partial = 0.f;
    int32_t total = 0;
    __device__ void mac(Element a, Element b) { partial = __fmaf_rn(a, b, partial); }
    __device__ void flush() {
      total += __float2int_rn(partial);
      partial = 0.f;
    }
    __device__ int32_t value() const { return total; }
  };
};

}  // namespace

Status gemm_simt(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return gemm_simt_family<ExactFp32Math>(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
