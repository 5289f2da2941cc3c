// torch_int8 kernel layer: framework-free (no torch), raw pointers and a stream.
//
// Deployment code that has no PyTorch links torch_int8::core and calls these.
// The torch ops (torch_int8.h) are a thin layer over exactly these functions.
#pragma once

#include <cstdint>

namespace torch_int8::kernels {

// Largest K for which an int32 accumulator cannot overflow:
// 131071 * (-128) * (-128) = 2^31 - 16384 < 2^31.
constexpr int64_t kMaxK = 131071;
// The GPU kernels take K in multiples of 16; columns past kMaxK must then be
// zero padding (they add nothing, so the accumulator still cannot overflow).
constexpr int64_t kMaxPaddedK = (kMaxK + 15) / 16 * 16;

enum class OutType { kInt32, kInt8, kFloat16, kBFloat16, kFloat32 };

enum class Status {
  kSuccess,
  kInvalidArgument,   // a requirement below is not met
  kNoKernel,          // no kernel family for this GPU was built in
  kCudaError,         // a CUDA call failed; see cudaGetLastError
};
const char* status_string(Status s);

// D[b] = epilogue(A[b] @ B[b]) for b < batch.
//   A: row-major M x K int8 (element (m,k) at a[m*lda + k]).
//   B: column-major K x N int8, i.e. K-contiguous (element (k,n) at b[n*ldb + k]).
//   D: row-major M x N of out_type (element (m,n) at d[m*ldd + n]).
// GPU requirements (the torch layer pads or copies to meet them):
//   K % 16 == 0, lda % 16 == 0, ldb % 16 == 0, a/b/d 16-byte aligned,
//   ldd * sizeof(out) % 16 == 0, and D writable up to column round_up(N, 16)
//   of each row (vector stores may touch columns in [N, ldd)).
struct GemmProblem {
  int64_t m = 0, n = 0, k = 0, batch = 1;
  const int8_t* a = nullptr;
  int64_t lda = 0, batch_stride_a = 0;
  const int8_t* b = nullptr;
  int64_t ldb = 0, batch_stride_b = 0;
  void* d = nullptr;
  int64_t ldd = 0, batch_stride_d = 0;
  OutType out_type = OutType::kInt32;
};

// Fused epilogue for every out_type but kInt32 (which stores the accumulator):
//   v = fma(row_offset[m], col_sum[n], float(acc))    zero-point correction
//   v = v * row_scale[m]
//   v = fma(v, col_scale[n], col_bias[n])
//   v = max(v, 0) if relu                             NaN stays NaN
//   D = convert<out_type>(v)                          float outputs (round to nearest even)
//   D = saturate_int8(rint(v) + out_zero_point)       int8 output (NaN -> 0)
// All vectors are float32; a null pointer reads as 0 (offset, sum, bias) or
// 1 (scales). Row vectors have M entries, column vectors N, each readable up
// to round_up(N, 16). Requantizing to int8 with output scale s is col_scale / s
// and col_bias / s, folded by the caller; the zero point is added after
// rounding, as TFLite does. Only batch == 1 is supported with an epilogue.
// row_amax (float outputs only; M entries, zero-filled by the caller), if set,
// receives max over n of |D[m, n]| as stored (after rounding to out_type),
// NaN for a row holding NaN: the next layer's per-row scale without a pass over D.
struct Epilogue {
  const float* row_scale = nullptr;
  const float* col_scale = nullptr;
  const float* row_offset = nullptr;
  const float* col_sum = nullptr;
  const float* col_bias = nullptr;
  int32_t out_zero_point = 0;  // int8 output only
  bool relu = false;
  float* row_amax = nullptr;
};

// Whether the kernels take e with output type t: row maxima need a float output.
inline bool epilogue_supported(const Epilogue& e, OutType t) {
  return !e.row_amax || t == OutType::kFloat32 || t == OutType::kBFloat16 || t == OutType::kFloat16;
}

// Which kernel family serves a GPU of compute capability cc (e.g. 90):
// "sm90", "sm80", "sm75" (INT8 tensor cores), "dp4a" (sm_61+), "simt"
// (sm_50+), or nullptr when none was built for it. A family can be forced, e.g.
// to test or benchmark one on a newer GPU: by set_gemm_backend, else by the
// environment variable TORCH_INT8_GEMM_BACKEND (read at every call); a forced
// family serves every GPU of at least its minimum compute capability.
const char* gemm_backend(int cc);
// gemm_backend of CUDA device `device`'s compute capability: the family its GEMMs and
// convolutions run; nullptr for none, for no such device and in a build without CUDA.
const char* device_gemm_backend(int device);
// Forces family `name` (one of built_gemm_families()) for every later GEMM of
// the process; nullptr or "" ends the override (back to the variable or the
// compute capability). kInvalidArgument, and no change, for a name this build
// does not have.
Status set_gemm_backend(const char* name);
// The family set_gemm_backend forces, or nullptr.
const char* gemm_backend_override();
// Kernel families compiled into this library, with their architectures,
// e.g. "sm80:80;86;89 sm90:90a".
const char* built_gemm_families();

// CPU reference implementation (exact int32 accumulation; same epilogue
// arithmetic as the GPU, so int8 outputs agree bit for bit).
Status gemm_cpu(const GemmProblem& p, const Epilogue& e);
// gemm_cpu's epilogue and stores alone, on int32 sums formed elsewhere (batch 1):
// acc[m * ld_acc + n] is the sum of row m of A and column n of B (p's a and b are
// not read). The torch layer's CPU path forms the sums with ATen's int8 product.
Status epilogue_cpu(const GemmProblem& p, const Epilogue& e, const int32_t* acc, int64_t ld_acc);
// GPU implementation on the current device, enqueued on `stream` (a cudaStream_t).
Status gemm_cuda(const GemmProblem& p, const Epilogue& e, void* stream);

// int32 -> int8 requantization of a rows x cols row-major matrix.
// Float mode (multiplier == nullptr): q = rint(float(acc) * scale[c]) + zero_point.
// Fixed-point mode (scale == nullptr): gemmlowp/TFLite
//   q = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc << max(shift,0), multiplier), max(-shift,0)) + zero_point
// q is then clamped to [-128, 127]. Channel c = column when per_channel, else 0.
struct Requantize {
  const int32_t* acc = nullptr;
  int8_t* out = nullptr;
  int64_t rows = 0, cols = 0;
  bool per_channel = false;
  const float* scale = nullptr;
  const int32_t* multiplier = nullptr;
  const int32_t* shift = nullptr;
  int32_t zero_point = 0;
};
Status requantize_cpu(const Requantize& r);
Status requantize_cuda(const Requantize& r, void* stream);

// out[b][r][c] = in[b * in_batch_stride + c * in_ld + r]: batch int8 matrices of
// cols rows x rows columns (row-major, leading dimension in_ld >= rows)
// transposed into contiguous rows x cols ones (the GEMM's K-major layout of a
// column-major operand). Up to 65535 batches and 65535 * 64 columns.
struct TransposeInt8 {
  const int8_t* in = nullptr;
  int8_t* out = nullptr;
  int64_t batch = 1, rows = 0, cols = 0, in_ld = 0, in_batch_stride = 0;
};
Status transpose_int8_cuda(const TransposeInt8& p, void* stream);

// Symmetric absmax quantization of a rows x cols row-major float matrix on the
// GPU, the fused kernels behind the training layers (one read of x each).
// Rounding is rint (nearest, ties to even) or, when `stochastic`, floor(y + u)
// with u ~ U[0, 1) drawn by Philox4x32-10 from (seed, offset, element index).
// Under CUDA-graph capture the seed and offset live on the device (PyTorch's
// graph-safe generator state, so that every replay draws afresh): the kernels
// then read *seed_ptr, and *offset_ptr + offset.
enum class InType { kFloat32, kFloat16, kBFloat16 };
struct Rounding {
  bool stochastic = false;
  uint64_t seed = 0, offset = 0;
  const int64_t* seed_ptr = nullptr;    // both set, or neither
  const int64_t* offset_ptr = nullptr;
};

// Column statistics of a rows x cols row-major float matrix, one streaming read:
//   amax[c] = max_r |x[r, c]|: NaN for a column holding NaN, else inf for one
//             holding inf (what torch.linalg.vector_norm(x, inf, dim=0) gives);
//   sum[c]  = sum_r x[r, c] accumulated in float32 in an order fixed by the
//             shape (deterministic); inf and NaN propagate. (quantize_rows'
//             fused statistics slice the rows by the number of blocks the GPU
//             holds at once: their order is fixed by the shape and the GPU.)
// Either output may be null. Slices of rows are reduced into `workspace`
// (column_stats_workspace(rows, cols) floats), then across slices in order.
struct ColumnStats {
  const void* x = nullptr;
  InType in_type = InType::kFloat32;
  int64_t rows = 0, cols = 0;
  float* amax = nullptr;
  float* sum = nullptr;
  float* workspace = nullptr;
};
// At least kColumnStatsSliceRows rows per slice, at most kColumnStatsSlices slices
// (quantize_rows' fused statistics take slices of 16 rows and more).
constexpr int64_t kColumnStatsSliceRows = 16, kColumnStatsSlices = 1024;
inline int64_t column_stats_workspace(int64_t rows, int64_t cols) {
  const int64_t slices = (rows + kColumnStatsSliceRows - 1) / kColumnStatsSliceRows;
  return 2 * cols * (slices < kColumnStatsSlices ? slices : kColumnStatsSlices);
}
Status column_stats_cuda(const ColumnStats& c, void* stream);

// Per row: scale[r] = max|x[r, :]| / 127 (1 for an all-zero row, NaN for a row
// holding inf or NaN) and q[r, c] = round(x[r, c] / scale[r]) clamped to
// [-127, 127] (0 in a non-finite row): the results of the ATen composite.
// If col_amax or col_sum is set (cols entries each) they also receive the
// column statistics of x (ColumnStats, with `workspace`): quantize_columns_t
// takes the maxima instead of a second reduction pass, and the sums of a
// gradient are the bias gradient.
struct QuantizeRows {
  const void* x = nullptr;
  InType in_type = InType::kFloat32;
  int64_t rows = 0, cols = 0;
  int8_t* q = nullptr;
  float* scale = nullptr;
  float* col_amax = nullptr;
  float* col_sum = nullptr;
  float* workspace = nullptr;
  Rounding rounding;
};
Status quantize_rows_cuda(const QuantizeRows& r, void* stream);

// Per column, written transposed: given col_amax (as from QuantizeRows),
// scale[c] = col_amax[c] / 127 (1 if 0, NaN if not finite) and the cols x rows
// row-major q_t[c, r] = round(x[r, c] / scale[c]) clamped to [-127, 127] (0 in
// a non-finite column): the K-major operand of a GEMM that reduces over rows.
struct QuantizeColumnsT {
  const void* x = nullptr;
  InType in_type = InType::kFloat32;
  int64_t rows = 0, cols = 0;
  const float* col_amax = nullptr;
  int8_t* q_t = nullptr;
  float* scale = nullptr;
  Rounding rounding;
};
Status quantize_columns_t_cuda(const QuantizeColumnsT& r, void* stream);


// Training BatchNorm -> ReLU -> per-image quantization of an NHWC image batch
// y [images, pixels, channels] (row-major, channels fastest), in three passes:
// per-slice channel sums, sums of squares and per-image channel min / max of y;
// the channel statistics (mean, biased variance; in training the running
// statistics updated as torch.nn.BatchNorm2d does, the unbiased variance going
// into running_var) and the affine map z = a * y + b, a = weight * invstd,
// b = bias - mean * a; then q = round(relu(z) / scale[n]) clamped to
// [-127, 127] with scale[n] = max relu(z) over image n / 127 (1 if 0, NaN if
// not finite; q is 0 then). The affine map is monotonic in y per channel, so
// that maximum comes from each channel's extremes exactly (z rounded once per
// product and once per sum, the same in both places). Without training the
// running statistics are read instead and y's sums are not formed.
// weight / bias may be null (1 / 0); running_mean / running_var may be null in
// training (not tracked). workspace: batch_norm_workspace(images, channels) floats.
struct BatchNormReluQuantize {
  const void* y = nullptr;
  InType in_type = InType::kFloat32;
  int64_t images = 0, pixels = 0, channels = 0;
  const float* weight = nullptr;
  const float* bias = nullptr;
  float* running_mean = nullptr;
  float* running_var = nullptr;
  bool training = true;
  float momentum = 0.1f, eps = 1e-5f;
  int8_t* q = nullptr;
  float* scale = nullptr;   // [images]
  float* mean = nullptr;    // [channels]: the mean used (batch or running)
  float* invstd = nullptr;  // [channels]: 1 / sqrt(variance + eps) used
  float* workspace = nullptr;
};
// Slices of an image's pixels reduced apart (partial statistics in the workspace).
constexpr int64_t kBatchNormSlices = 8;
inline int64_t batch_norm_workspace(int64_t images, int64_t channels) {
  return (4 * kBatchNormSlices * images + 2) * channels;
}
Status batch_norm_relu_quantize_cuda(const BatchNormReluQuantize& p, void* stream);

// The backward of training BatchNorm -> ReLU for an NHWC batch whose forward
// kept no float output (BatchNormReluQuantize): the ReLU's mask recomputed from
// y as z = a * y + b > 0 (the forward's affine map; a NaN z passes the
// gradient, as threshold_backward), g = grad where the mask holds, else 0, then
// BatchNorm's backward with the batch statistics (mean, invstd) in two passes:
// per-slice channel sums of g and g * (y - mean); then
// grad_y = (g - mean(g) - (y - mean) * invstd^2 * mean(g * (y - mean))) * invstd * weight,
// grad_weight = sum(g * (y - mean)) * invstd, grad_bias = sum(g).
// grad and grad_y share y's type and layout. weight / bias may be null (1 / 0).
// workspace: batch_norm_workspace(images, channels) floats.
struct BatchNormReluBackward {
  const void* grad = nullptr;
  const void* y = nullptr;
  InType in_type = InType::kFloat32;
  int64_t images = 0, pixels = 0, channels = 0;
  const float* weight = nullptr;
  const float* bias = nullptr;
  const float* mean = nullptr;
  const float* invstd = nullptr;
  void* grad_y = nullptr;
  float* grad_weight = nullptr;  // [channels]
  float* grad_bias = nullptr;    // [channels]
  float* workspace = nullptr;
};
Status batch_norm_relu_backward_cuda(const BatchNormReluBackward& p, void* stream);

}  // namespace torch_int8::kernels
