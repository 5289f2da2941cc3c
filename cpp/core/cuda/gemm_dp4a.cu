// dp4a kernel family (sm_61 and newer): the SIMT GEMM of gemm_simt.cuh with
// __dp4a, which multiplies four int8 pairs and adds them into an int32 in one
// instruction: two to four times the FP32 FMA rate in multiply-adds.
#include "families.h"
#include "gemm_simt.cuh"

namespace torch_int8::kernels::detail {
namespace {

struct Dp4aMath {
  using Element = int32_t;  // four consecutive k values of one row, packed as __dp4a takes them
  static constexpr int kKPerElement = 4;
  static constexpr int kTileK = 32;  // 8 packed words per row and stage
  using LoadVector = int4;           // 128 x 32 int8 per operand and stage: one 16-byte load per thread
  static constexpr int kFlushK = kTileK;     // exact int32 accumulation: flush() has nothing to do
  static constexpr int kMaxRegisters = 128;  // two 256-thread blocks per SM

  __device__ static void unpack(const int4& v, Element (&e)[4]) { e[0] = v.x, e[1] = v.y, e[2] = v.z, e[3] = v.w; }

  struct Accumulator {
    int32_t sum = 0;
    __device__ void mac(Element a, Element b) { sum = __dp4a(a, b, sum); }
    __device__ void flush() {}
    __device__ int32_t value() const { return sum; }
  };
};

}  // namespace

Status gemm_dp4a(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return few_rows_or_tiles(gemm_skinny, kSkinnyMaxM, gemm_simt_family<Dp4aMath>, p, e, stream);
}

}  // namespace torch_int8::kernels::detail
