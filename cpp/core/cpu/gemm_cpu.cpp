// CPU reference kernels: exact int8 GEMM with int32 accumulation, the fused
// epilogue, and requantization. Single-threaded; the torch layer splits work
// across threads by rows.
#include <cstring>
#include <vector>

#include "../epilogue_math.h"
#include "../requantize_math.h"
#include "torch_int8/kernels.h"

// On x86-64 the loops that run the epilogue also exist in a copy for CPUs with FMA, picked when
// the library loads: there std::fma is one instruction instead of a libm call per element (the
// results are the same, fma being exactly rounded either way).
#if defined(__x86_64__) && defined(__GNUC__)
#define TORCH_INT8_FMA_CLONES __attribute__((target_clones("fma", "default")))
#else
#define TORCH_INT8_FMA_CLONES
#endif

namespace torch_int8::kernels {
namespace {

// Both operands are K-contiguous, so the inner loop is a dot product that
// compilers vectorize (widening int8 -> int32 multiply-add).
int32_t dot_s8(const int8_t* a, const int8_t* b, int64_t k) {
  int32_t acc = 0;
  for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return acc;
}

uint16_t float_to_bf16_rne(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if (std::isnan(v)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

uint16_t float_to_fp16_rne(float v) {
  // _Float16 is IEEE binary16 with round-to-nearest-even conversion on gcc/clang.
  const _Float16 h = static_cast<_Float16>(v);
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof(bits));
  return bits;
}

float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &wide, sizeof(v));
  return v;
}

float fp16_to_float(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof(h));
  return static_cast<float>(h);
}

// Stores the float output v at offset off as p.out_type; returns the value
// stored, read back as a float (what the row maxima see).
float store_float(const GemmProblem& p, int64_t off, float v) {
  switch (p.out_type) {
    case OutType::kBFloat16: return bf16_to_float(static_cast<uint16_t*>(p.d)[off] = float_to_bf16_rne(v));
    case OutType::kFloat16: return fp16_to_float(static_cast<uint16_t*>(p.d)[off] = float_to_fp16_rne(v));
    default: return static_cast<float*>(p.d)[off] = v;
  }
}

void store(const GemmProblem& p, const Epilogue& e, int64_t bi, int64_t m, int64_t n, int32_t acc) {
  const int64_t off = bi * p.batch_stride_d + m * p.ldd + n;
  if (p.out_type == OutType::kInt32) {
    static_cast<int32_t*>(p.d)[off] = acc;
    return;
  }
  const float v = detail::epilogue_value(e, acc, m, n);
  if (p.out_type == OutType::kInt8) {
    static_cast<int8_t*>(p.d)[off] = detail::requantize_value(v, e.out_zero_point);
    return;
  }
  const float stored = store_float(p, off, v);
  if (e.row_amax) e.row_amax[m] = detail::max_keep_nan(std::fabs(stored), e.row_amax[m]);
}

// The float value stored at offset off of p's output (bf16 / fp16 / float32).
float stored_value(const GemmProblem& p, int64_t off) {
  switch (p.out_type) {
    case OutType::kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p.d)[off]);
    case OutType::kFloat16: return fp16_to_float(static_cast<const uint16_t*>(p.d)[off]);
    default: return static_cast<const float*>(p.d)[off];
  }
}

}  // namespace

const char* status_string(Status s) {
  switch (s) {
    case Status::kSuccess: return "success";
    case Status::kInvalidArgument: return "invalid argument";
    case Status::kNoKernel: return "no kernel was built for this GPU";
    case Status::kCudaError: return "CUDA error";
  }
  return "unknown status";
}

TORCH_INT8_FMA_CLONES Status gemm_cpu(const GemmProblem& p, const Epilogue& e) {
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.k > kMaxK || p.batch < 1) return Status::kInvalidArgument;
  if (!epilogue_supported(e, p.out_type) || (e.row_amax && p.batch > 1)) return Status::kInvalidArgument;
  for (int64_t bi = 0; bi < p.batch; ++bi) {
    const int8_t* a = p.a + bi * p.batch_stride_a;
    const int8_t* b = p.b + bi * p.batch_stride_b;
    for (int64_t m = 0; m < p.m; ++m)
      for (int64_t n = 0; n < p.n; ++n) store(p, e, bi, m, n, dot_s8(a + m * p.lda, b + n * p.ldb, p.k));
  }
  return Status::kSuccess;
}

namespace {
// The column vectors of e for columns [0, n), defaults where e has none: the row loop below then
// reads every entry unconditionally (and vectorizes).
struct Columns {
  std::vector<float> sum, scale, bias;
  Columns(const Epilogue& e, int64_t n)
      : sum(filled(e.col_sum, n, 0.f)), scale(filled(e.col_scale, n, 1.f)), bias(filled(e.col_bias, n, 0.f)) {}
  static std::vector<float> filled(const float* v, int64_t n, float fallback) {
    return v ? std::vector<float>(v, v + n) : std::vector<float>(static_cast<size_t>(n), fallback);
  }
};

// Row m of the epilogue over acc, stored as Out: epilogue_value's arithmetic, element for element
// (inlined into epilogue_cpu, whose FMA copy it then shares).
template <class Out, class Store>
[[gnu::always_inline]] inline void epilogue_row(const Epilogue& e, const Columns& cols, int64_t m, int64_t n,
                                                const int32_t* acc, Out* out, Store store) {
  const float offset = detail::load_or(e.row_offset, m, 0.f), scale = detail::load_or(e.row_scale, m, 1.f);
  const float floor = detail::relu_floor(e.relu);
  for (int64_t j = 0; j < n; ++j)
    out[j] = store(detail::dequantize_value(static_cast<float>(acc[j]), offset, scale, cols.sum[j], cols.scale[j],
                                            cols.bias[j], floor));
}

}  // namespace

// epilogue_cpu: what store() does per element, with the column vectors read once and one loop
// per output type (the same values: tests/test_scaled_gemm.py holds the CPU's large products,
// which run here, to the reference kernel).
TORCH_INT8_FMA_CLONES Status epilogue_cpu(const GemmProblem& p, const Epilogue& e, const int32_t* acc,
                                          int64_t ld_acc) {
  if (p.m < 0 || p.n < 0 || p.batch != 1 || !acc || ld_acc < p.n) return Status::kInvalidArgument;
  if (!epilogue_supported(e, p.out_type)) return Status::kInvalidArgument;
  if (p.out_type == OutType::kInt32) {
    for (int64_t m = 0; m < p.m; ++m)
      std::memcpy(static_cast<int32_t*>(p.d) + m * p.ldd, acc + m * ld_acc, sizeof(int32_t) * p.n);
    return Status::kSuccess;
  }
  const Columns cols(e, p.n);
  for (int64_t m = 0; m < p.m; ++m) {
    const int32_t* row = acc + m * ld_acc;
    switch (p.out_type) {
      case OutType::kInt8:
        epilogue_row(e, cols, m, p.n, row, static_cast<int8_t*>(p.d) + m * p.ldd,
                     [zero_point = e.out_zero_point](float v) { return detail::requantize_value(v, zero_point); });
        continue;
      case OutType::kBFloat16:
        epilogue_row(e, cols, m, p.n, row, static_cast<uint16_t*>(p.d) + m * p.ldd, float_to_bf16_rne);
        break;
      case OutType::kFloat16:
        epilogue_row(e, cols, m, p.n, row, static_cast<uint16_t*>(p.d) + m * p.ldd, float_to_fp16_rne);
        break;
      default:
        epilogue_row(e, cols, m, p.n, row, static_cast<float*>(p.d) + m * p.ldd, [](float v) { return v; });
    }
    if (e.row_amax)  // of the values stored, as store() takes them
      for (int64_t j = 0; j < p.n; ++j)
        e.row_amax[m] = detail::max_keep_nan(std::fabs(stored_value(p, m * p.ldd + j)), e.row_amax[m]);
  }
  return Status::kSuccess;
}

Status requantize_cpu(const Requantize& r) {
  if ((r.scale == nullptr) == (r.multiplier == nullptr)) return Status::kInvalidArgument;
  for (int64_t i = 0; i < r.rows * r.cols; ++i) r.out[i] = detail::requantize_element(r, i);
  return Status::kSuccess;
}

}  // namespace torch_int8::kernels
