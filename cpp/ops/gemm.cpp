// int8::gemm and int8::scaled_gemm: schema, CPU / CUDA / Meta kernels.
//
// Both ops lay their operands out the way every kernel family takes them
// (A row-major, B column-major, i.e. both K-contiguous), copying only when the
// caller's tensors are not already so, and on the GPU padding K with zeros to
// a multiple of 16 (exact: zeros add nothing) and output rows to 16 elements.
#include <torch/library.h>

#include "common.h"

namespace torch_int8::ops {
namespace {

using kernels::Epilogue;
using kernels::GemmProblem;

// A K-contiguous int8 operand [batch, rows_pad, k_pad] and its strides.
struct KMajor {
  at::Tensor t;
  int64_t ld, batch_stride;
};

// A CUDA [batch, rows, K] operand laid out column-major per batch (rows
// contiguous: the transposed view of a row-major [K, rows] matrix), copied into
// a contiguous one by the tiled transpose kernel; else t itself (ATen copies
// the rest, which is no transpose).
at::Tensor transposed_on_gpu(const at::Tensor& t) {
  const int64_t rows = t.size(1), k = t.size(2);
  if (!t.is_cuda() || rows < 2 || k < 2 || t.stride(1) != 1 || t.stride(2) < rows || t.stride(0) < 0) return t;
  at::Tensor out = at::empty({t.size(0), rows, k}, t.options());
  kernels::TransposeInt8 p;
  p.in = t.const_data_ptr<int8_t>(), p.out = out.mutable_data_ptr<int8_t>();
  p.batch = t.size(0), p.rows = rows, p.cols = k, p.in_ld = t.stride(2), p.in_batch_stride = t.stride(0);
  c10::DeviceGuard guard(t.device());
  const kernels::Status status = kernels::transpose_int8_cuda(p, current_stream(t.device()));
  if (status == kernels::Status::kInvalidArgument) return t;  // beyond the kernel's grid: ATen's copy
  check_status(status, "int8 gemm operand transpose");
  return out;
}

// t is [batch, rows, K] with any strides. Padding (zeros: exact) happens only
// for ragged sizes; an operand that is already K-contiguous and aligned is
// used in place, and anything else is copied once (a column-major one on the
// GPU by the transpose kernel).
KMajor k_major(const at::Tensor& input, int64_t rows_pad, int64_t k_pad, int64_t align) {
  const at::Tensor t = transposed_on_gpu(input);
  const int64_t rows = t.size(1), k = t.size(2);
  at::Tensor r = t;
  if (k_pad != k || rows_pad != rows) {
    r = at::constant_pad_nd(t, {0, k_pad - k, 0, rows_pad - rows}, 0);
  } else {
    const bool rows_ok = rows == 1 || (t.stride(1) >= k && t.stride(1) % align == 0);
    const bool batch_ok = t.size(0) == 1 || t.stride(0) % align == 0;
    const bool ptr_ok = reinterpret_cast<uintptr_t>(t.data_ptr()) % align == 0;
    if (t.stride(2) != 1 || !rows_ok || !batch_ok || !ptr_ok) r = t.contiguous();
  }
  const int64_t ld = r.size(1) == 1 ? k_pad : r.stride(1);
  return {r, ld, r.size(0) == 1 ? 0 : r.stride(0)};
}

// The GEMM of a [batch, M, K] and b [batch, N, K] (both any strides) into a
// fresh [batch, M, N] tensor of out_dtype, with epilogue e (whose column
// vectors hold round_up(N, 16) entries): the operands laid out K-major, then
// run_gemm (common.h). On the GPU a ragged N runs as round_up(N, 16) columns
// (zero rows of b) and is sliced off afterwards: TMA epilogues need 16-byte
// aligned output rows.
at::Tensor gemm_of_tensors(const at::Tensor& a, const at::Tensor& b, at::ScalarType out_dtype, const Epilogue& e) {
  const bool cuda = a.is_cuda();
  const int64_t align = cuda ? kGpuAlign : 1;
  const int64_t batch = a.size(0), m = a.size(1), n = b.size(1), k = a.size(2);
  const int64_t k_pad = round_up(k, align), ldd = round_up(n, align);
  const KMajor ka = k_major(a, m, k_pad, align), kb = k_major(b, ldd, k_pad, align);
  at::Tensor out = new_output({batch, m, ldd}, a.options().dtype(out_dtype));

  GemmProblem p;
  p.m = m, p.n = ldd, p.k = k_pad, p.batch = batch;
  p.a = ka.t.const_data_ptr<int8_t>(), p.lda = ka.ld, p.batch_stride_a = ka.batch_stride;
  p.b = kb.t.const_data_ptr<int8_t>(), p.ldb = kb.ld, p.batch_stride_b = kb.batch_stride;
  p.d = out.data_ptr(), p.ldd = ldd, p.batch_stride_d = m * ldd;
  p.out_type = out_type_of(out_dtype, "scaled_gemm");

  c10::DeviceGuard guard(a.device());
  run_gemm(p, e, a, "int8 gemm");
  return ldd == n ? out : out.narrow(2, 0, n).contiguous();
}

// gemm's int32 result holds sums of at most kMaxK products (scaled_gemm takes any K).
template <bool kSym>
void check_int32_k(const typename Shape<kSym>::Int& k) {
  const auto v = Shape<kSym>::known(k);
  TORCH_CHECK_VALUE(!v || *v <= kernels::kMaxK, "gemm: K = ", int_str(k), " exceeds ", int_str(kernels::kMaxK),
                    ", beyond which the int32 result can overflow (K * 128 * 128 >= 2^31); scaled_gemm takes any K");
}

template <bool kSym>
void check_nonempty(const at::Tensor& t, const char* op, const char* name) {
  const auto v = Shape<kSym>::known(Shape<kSym>::numel(t));
  TORCH_CHECK_VALUE(!v || *v > 0, op, ": ", name, " is empty (shape ", shape_str(t), ")");
}

// --- int8::gemm ---------------------------------------------------------------

// Validates and returns the output shape of gemm(a, b); kSym: for the Meta kernel.
template <bool kSym>
std::vector<typename Shape<kSym>::Int> gemm_shape(const at::Tensor& a, const at::Tensor& b) {
  using S = Shape<kSym>;
  check_dtype(a, at::kChar, "gemm", "a");
  check_dtype(b, at::kChar, "gemm", "b");
  check_same_device(b, a, "gemm", "b");
  TORCH_CHECK_VALUE(a.dim() == 2 || a.dim() == 3, "gemm: a must be [M, K] or [B, M, K], got shape ", shape_str(a));
  TORCH_CHECK_VALUE(b.dim() == 2 || (b.dim() == 3 && a.dim() == 3),
                    "gemm: b must be [K, N], or [B, K, N] when a is [B, M, K]; got a ", shape_str(a), ", b ",
                    shape_str(b));
  TORCH_CHECK_VALUE(S::size(a, -1) == S::size(b, -2), "gemm: shape mismatch, a ", shape_str(a), " @ b ",
                    shape_str(b));
  TORCH_CHECK_VALUE(b.dim() == 2 || S::size(a, 0) == S::size(b, 0), "gemm: batch sizes differ, a ", shape_str(a),
                    ", b ", shape_str(b));
  check_nonempty<kSym>(a, "gemm", "a");
  check_nonempty<kSym>(b, "gemm", "b");
  check_int32_k<kSym>(S::size(a, -1));
  auto shape = S::sizes(a);
  shape.back() = S::size(b, -1);
  return shape;
}

at::Tensor gemm_kernel(const at::Tensor& a, const at::Tensor& b) {
  const auto shape = gemm_shape<false>(a, b);
  const int64_t k = a.size(-1);
  // A shared [K, N] operand folds the batch of a into its rows.
  const at::Tensor a3 = b.dim() == 2 ? a.reshape({1, -1, k}) : a;
  const at::Tensor b3 = (b.dim() == 2 ? b.unsqueeze(0) : b).transpose(1, 2);
  return gemm_of_tensors(a3, b3, at::kInt, Epilogue{}).view(shape);
}

at::Tensor gemm_meta(const at::Tensor& a, const at::Tensor& b) {
  return at::empty_symint(gemm_shape<true>(a, b), a.options().dtype(at::kInt));
}

// --- int8::scaled_gemm --------------------------------------------------------

// A contiguous float32 vector of `len` entries (broadcasting a single value),
// zero-padded to `padded` entries. The caller's tensor is used as it is when
// it already has that form; otherwise this is one small copy.
at::Tensor epilogue_vector(const at::Tensor& v, int64_t len, int64_t padded) {
  // Taken as it is only when 16-byte aligned: the epilogues load vectors in 16-byte pieces.
  const bool aligned = reinterpret_cast<uintptr_t>(v.const_data_ptr()) % 16 == 0;
  const bool whole = v.dim() == 1 && v.numel() == padded;
  if (whole && v.scalar_type() == at::kFloat && v.is_contiguous() && aligned) return v;
  // A fresh allocation is aligned: one conversion (e.g. a bf16 bias) instead of zeros, then a copy.
  if (whole) return v.to(v.options().dtype(at::kFloat), /*non_blocking=*/false, /*copy=*/true);
  at::Tensor r = at::zeros({padded}, v.options().dtype(at::kFloat));
  r.narrow(0, 0, len).copy_(v.reshape({-1}).expand({len}));
  return r;
}

template <bool kSym>
std::vector<typename Shape<kSym>::Int> scaled_gemm_shape(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                                       const at::Tensor& scale_b, const std::optional<at::Tensor>& zero_point_a,
                                       const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
                                       double out_scale, int64_t out_zero_point) {
  using S = Shape<kSym>;
  check_dtype(a, at::kChar, "scaled_gemm", "a");
  check_dtype(b, at::kChar, "scaled_gemm", "b");
  check_same_device(b, a, "scaled_gemm", "b");
  TORCH_CHECK_VALUE(a.dim() >= 2, "scaled_gemm: a must be [..., M, K], got shape ", shape_str(a));
  TORCH_CHECK_VALUE(b.dim() == 2, "scaled_gemm: b must be [K, N], got shape ", shape_str(b));
  TORCH_CHECK_VALUE(S::size(a, -1) == S::size(b, 0), "scaled_gemm: shape mismatch, a ", shape_str(a), " @ b ",
                    shape_str(b));
  check_nonempty<kSym>(a, "scaled_gemm", "a");
  check_nonempty<kSym>(b, "scaled_gemm", "b");
  check_scaled_output(out_dtype, out_scale, out_zero_point, "scaled_gemm", "gemm");
  const typename S::Int m = S::numel(a) / S::size(a, -1), n = S::size(b, 1);
  check_dtype(scale_a, at::kFloat, "scaled_gemm", "scale_a");
  check_dtype(scale_b, at::kFloat, "scaled_gemm", "scale_b");
  check_epilogue_vector<kSym>(scale_a, m, a, "scaled_gemm", "scale_a", "per tensor or per row of a");
  check_epilogue_vector<kSym>(scale_b, n, a, "scaled_gemm", "scale_b", "per tensor or per column of b");
  if (zero_point_a) {
    check_dtype(*zero_point_a, at::kInt, "scaled_gemm", "zero_point_a");
    check_epilogue_vector<kSym>(*zero_point_a, m, a, "scaled_gemm", "zero_point_a", "per tensor or per row of a");
  }
  if (bias) check_bias<kSym>(*bias, n, a, "scaled_gemm", "N");
  auto shape = S::sizes(a);
  shape.back() = n;
  return shape;
}

// The K-slices of a long product: multiples of 16 (no padding on the GPU but in the last one),
// each short enough for an exact int32 accumulator.
constexpr int64_t kSliceK = kernels::kMaxPaddedK - kGpuAlign;

// scaled_gemm of a3 [1, M, K] and b [K, N] for K > kMaxK: the int32 products of its K-slices,
// each exact, summed in int64, then the epilogue. The scales factor out of the sum over k, so
// this is the one-GEMM result with the accumulator held in 64 bits.
at::Tensor long_k_scaled_gemm(const at::Tensor& a3, const at::Tensor& b, const std::optional<at::Tensor>& zero_point_a,
                              const at::Tensor& row_scale, const at::Tensor& col_scale,
                              const std::optional<at::Tensor>& col_bias, at::ScalarType out_dtype,
                              int64_t out_zero_point, bool relu) {
  const int64_t k = b.size(0), m = a3.size(1);
  const at::Tensor acc = sum_slices_in_int64(k, kSliceK, [&](int64_t k0, int64_t len) {
    return gemm_of_tensors(a3.narrow(2, k0, len), b.narrow(0, k0, len).t().unsqueeze(0), at::kInt, Epilogue{});
  });
  at::Tensor col_offset;  // sum_k (a - z) b = acc - z * colsum(b)
  if (zero_point_a) col_offset = zero_point_a->reshape({-1}).expand({m}).to(at::kLong).unsqueeze(1).neg() *
                                 b.sum({0}, false, at::kLong);
  return epilogue_on_int64(acc.view({m, b.size(1)}), col_offset, row_scale, col_scale, col_bias, out_dtype,
                           out_zero_point, relu);
}

// scaled_gemm, and with with_row_amax also max |out[..., m, :]| per row (float32, shaped like out
// without its last dimension; an undefined tensor otherwise).
std::tuple<at::Tensor, at::Tensor> run_scaled_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                                                   const at::Tensor& scale_b,
                                                   const std::optional<at::Tensor>& zero_point_a,
                                                   const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
                                                   double out_scale, int64_t out_zero_point, bool relu,
                                                   bool with_row_amax) {
  const auto shape =
      scaled_gemm_shape<false>(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, out_scale, out_zero_point);
  const int64_t k = b.size(0), n = b.size(1);
  const at::Tensor a3 = a.reshape({1, -1, k});
  const int64_t m = a3.size(1);
  const int64_t n_pad = round_up(n, kGpuAlign);
  // Requantizing to int8 folds 1/out_scale into the column vectors:
  // v / s = fma(t, col_scale / s, bias / s); the kernel adds the zero point after rounding.
  const bool requant = out_dtype == at::kChar;
  const at::Tensor row_scale = epilogue_vector(scale_a, m, m);
  at::Tensor col_scale = epilogue_vector(scale_b, n, n_pad);
  std::optional<at::Tensor> col_bias;
  if (bias) col_bias = epilogue_vector(*bias, n, n_pad);
  if (requant) {
    col_scale = col_scale.div(out_scale);
    if (col_bias) col_bias = col_bias->div(out_scale);
  }
  if (k > kernels::kMaxK) {
    at::Tensor out = long_k_scaled_gemm(a3, b, zero_point_a, row_scale, col_scale, col_bias, out_dtype,
                                        out_zero_point, relu);
    at::Tensor row_amax = with_row_amax ? out.abs().amax(-1).to(at::kFloat) : at::Tensor();  // NaN stays NaN
    out = out.view(shape);
    if (with_row_amax) row_amax = row_amax.view(at::IntArrayRef(shape).slice(0, shape.size() - 1));
    return {out, row_amax};
  }
  // An asymmetric a: sum_k (a - z) b = acc - z * colsum(b).
  std::optional<at::Tensor> row_offset, col_sum;
  if (zero_point_a) {
    row_offset = epilogue_vector(*zero_point_a, m, m).neg_();
    col_sum = epilogue_vector(b.sum({0}, false, at::kInt), n, n_pad);
  }
  auto ptr = [](const std::optional<at::Tensor>& t) { return t ? t->const_data_ptr<float>() : nullptr; };
  Epilogue e;
  e.row_scale = row_scale.const_data_ptr<float>();
  e.col_scale = col_scale.const_data_ptr<float>();
  e.row_offset = ptr(row_offset);
  e.col_sum = ptr(col_sum);
  e.col_bias = ptr(col_bias);
  e.out_zero_point = static_cast<int32_t>(out_zero_point);
  e.relu = relu;
  // Zeros: the kernels take the maximum with what is there (|v| >= 0).
  const at::Tensor row_amax = with_row_amax ? at::zeros({m}, row_scale.options()) : at::Tensor();
  if (with_row_amax) e.row_amax = row_amax.data_ptr<float>();
  at::Tensor out = gemm_of_tensors(a3, b.t().unsqueeze(0), out_dtype, e).view(shape);
  return {out, with_row_amax ? row_amax.view(at::IntArrayRef(shape).slice(0, shape.size() - 1)) : row_amax};
}

at::Tensor scaled_gemm_kernel(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                              const at::Tensor& scale_b, const std::optional<at::Tensor>& zero_point_a,
                              const std::optional<at::Tensor>& bias, at::ScalarType out_dtype, double out_scale,
                              int64_t out_zero_point, bool relu) {
  return std::get<0>(run_scaled_gemm(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, out_scale,
                                     out_zero_point, relu, false));
}

at::Tensor scaled_gemm_meta(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a,
                            const at::Tensor& scale_b, const std::optional<at::Tensor>& zero_point_a,
                            const std::optional<at::Tensor>& bias, at::ScalarType out_dtype, double out_scale,
                            int64_t out_zero_point, bool relu) {
  return at::empty_symint(
      scaled_gemm_shape<true>(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, out_scale, out_zero_point),
      a.options().dtype(out_dtype));
}

// --- int8::scaled_gemm_row_amax -----------------------------------------------

void check_row_amax_dtype(at::ScalarType out_dtype) {
  TORCH_CHECK_VALUE(out_dtype == at::kBFloat16 || out_dtype == at::kHalf || out_dtype == at::kFloat,
                    "scaled_gemm_row_amax: out_dtype must be bfloat16, float16 or float32 (the row maxima are "
                    "taken of float outputs), got ", out_dtype);
}

std::tuple<at::Tensor, at::Tensor> scaled_gemm_row_amax_kernel(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
    const std::optional<at::Tensor>& zero_point_a, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
    bool relu) {
  check_row_amax_dtype(out_dtype);
  return run_scaled_gemm(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, 1.0, 0, relu, true);
}

std::tuple<at::Tensor, at::Tensor> scaled_gemm_row_amax_meta(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
    const std::optional<at::Tensor>& zero_point_a, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
    bool relu) {
  check_row_amax_dtype(out_dtype);
  auto shape = scaled_gemm_shape<true>(a, b, scale_a, scale_b, zero_point_a, bias, out_dtype, 1.0, 0);
  at::Tensor out = at::empty_symint(shape, a.options().dtype(out_dtype));
  shape.pop_back();
  return {out, at::empty_symint(shape, a.options().dtype(at::kFloat))};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def("gemm(Tensor a, Tensor b) -> Tensor");
  m.def(
      "scaled_gemm(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? zero_point_a=None, "
      "Tensor? bias=None, ScalarType out_dtype=bfloat16, float out_scale=1.0, int out_zero_point=0, bool relu=False) -> Tensor");
  m.def(
      "scaled_gemm_row_amax(Tensor a, Tensor b, Tensor scale_a, Tensor scale_b, Tensor? zero_point_a=None, "
      "Tensor? bias=None, ScalarType out_dtype=bfloat16, bool relu=False) -> (Tensor, Tensor)");
}

namespace {
// The CPU and CUDA kernels are the same functions (run_gemm picks the device's kernel).
void impl_gemm_kernels(torch::Library& m) {
  m.impl("gemm", gemm_kernel);
  m.impl("scaled_gemm", scaled_gemm_kernel);
  m.impl("scaled_gemm_row_amax", scaled_gemm_row_amax_kernel);
}
}  // namespace

TORCH_INT8_IMPL_CPU_AND_CUDA(impl_gemm_kernels)

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("gemm", gemm_meta);
  m.impl("scaled_gemm", scaled_gemm_meta);
  m.impl("scaled_gemm_row_amax", scaled_gemm_row_amax_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"gemm", "scaled_gemm", "scaled_gemm_row_amax"}); }

}  // namespace torch_int8::ops
