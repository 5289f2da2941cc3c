// int8::quantize and int8::dequantize: absmax quantization, per tensor or per
// channel, nearest or stochastic rounding; int8::quantize_rows and
// int8::quantize_columns_t: the two symmetric 2-D cases of the training layers,
// the second writing the transposed (K-major) operand of a GEMM;
// int8::column_amax: the column maxima on their own. Written with
// ATen ops, so one implementation (CompositeExplicitAutograd) serves CPU, CUDA
// and Meta; on the GPU fused kernels (cuda/quantize.cu) take the 2-D cases.
#include <torch/library.h>
#ifdef TORCH_INT8_WITH_CUDA
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common.h"

namespace torch_int8::ops {
namespace {

// The dimensions reduced to find each channel's range: all but `dim`.
std::vector<int64_t> reduced_dims(const at::Tensor& x, std::optional<int64_t> dim) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (!dim || d != *dim) dims.push_back(d);
  return dims;
}

// t reduced over dims with keepdim; no reduction at all when dims is empty
// (ATen would read an empty list as "every dimension").
template <class Reduction>
at::Tensor reduce(const at::Tensor& t, const std::vector<int64_t>& dims, Reduction r) {
  return dims.empty() ? t.clone() : r(t, at::IntArrayRef(dims));
}
const auto kAll = [](const at::Tensor& t, at::IntArrayRef d) { return t.all(d, true); };
const auto kAmax = [](const at::Tensor& t, at::IntArrayRef d) { return t.amax(d, true); };
const auto kAmin = [](const at::Tensor& t, at::IntArrayRef d) { return t.amin(d, true); };

// t / d, dividing by a tensor on t's device, not by a number: ATen's CUDA
// kernel multiplies by the reciprocal of a scalar divisor, which is one ulp off
// the CPU's (and the fused kernels') IEEE division for some values.
at::Tensor divided(at::Tensor t, float d) { return t.div_(at::full({}, d, t.options())); }

void check_rounding(c10::string_view rounding, const char* op) {
  TORCH_CHECK_VALUE(rounding == "nearest" || rounding == "stochastic", op,
                    ": rounding must be 'nearest' or 'stochastic', got '", rounding, "'");
}

// Finite float64 values beyond float32's range have no float32 scale (nor value): a clear error
// rather than an infinite scale. One reduction (and a sync on the GPU) for float64 input alone,
// a reference path (the fused kernels take bf16, fp16 and fp32); not under torch.compile's fake
// tensors, whose values do not exist.
void check_float32_range(const at::Tensor& x, const char* op) {
  if (x.scalar_type() != at::kDouble || x.is_meta() || symbolic(x) || x.numel() == 0) return;
  const double largest = at::where(x.isfinite(), x.abs(), at::zeros({}, x.options())).max().item<double>();
  TORCH_CHECK_VALUE(largest <= std::numeric_limits<float>::max(), op, ": x holds the finite value ",
                    float_str(largest), ", beyond float32's range: the scales are float32");
}

void check_float_matrix(const at::Tensor& x, const char* op) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a float tensor, got ",
                   dtype_str(x.scalar_type()));
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": x must be 2-D, got shape ", shape_str(x));
  const auto numel = known_numel(x);
  TORCH_CHECK_VALUE(!numel || *numel > 0, op, ": x is empty (shape ", shape_str(x), ")");
  check_float32_range(x, op);
}

// Whether x is a CPU tensor with data that C++ loops can read: not a fake or functional tensor
// (no symbolic sizes, storage, no Python dispatch).
bool real_cpu_tensor(const at::Tensor& x) {
  return x.device().is_cpu() && !symbolic(x) && x.has_storage() && !x.key_set().has(c10::DispatchKey::Python);
}

// Whether dim is x's innermost dimension in memory, the others dense around it (x the row-major
// matrix [numel / size(dim), size(dim)]): the last of contiguous x, or the channels of channels_last
// 4-D x (a convolution's activations per channel: quantize_columns_cpu).
bool innermost_channels(const at::Tensor& x, int64_t dim) {
  if (x.dim() == 4 && dim == 1 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return true;
  return dim == x.dim() - 1 && x.is_contiguous();
}

// Whether quantize below can run as C++ loops: a real CPU tensor, symmetric, nearest, per tensor or
// per slice of dim 0 in memory where each slice is one contiguous run (contiguous, or channels_last
// 4-D: quantize_symmetric_cpu), or per channel of an innermost dim (quantize_columns_cpu).
bool runs_as_cpu_loops(const at::Tensor& x, std::optional<int64_t> dim, bool symmetric, c10::string_view rounding) {
  if (!real_cpu_tensor(x) || !symmetric || rounding != "nearest" || x.dim() == 0) return false;
  if (dim && *dim != 0) return innermost_channels(x, *dim);
  return x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast));
}

// On x86-64 also compiled for AVX2 and SSE4.1, picked when the library loads: std::nearbyint is
// then one instruction (roundps) instead of a libm call per element, and the loops run 8 or 4
// lanes wide; the same roundings either way.
#if defined(__x86_64__) && defined(__GNUC__)
#define TORCH_INT8_SIMD_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))
#else
#define TORCH_INT8_SIMD_CLONES
#endif

// The scale of values whose max|x| is amax: amax / 127 (1 for 0), NaN for an amax that is no
// maximum of finite values (inf, NaN, negative), as the composites compute it.
float scale_for(float amax) {
  const float v = amax / 127.f;
  return !(std::isfinite(amax) && amax >= 0) ? std::numeric_limits<float>::quiet_NaN() : (v == 0.f ? 1.f : v);
}

// |v|'s bit pattern: for floats of one sign the integer order is the float order, with NaN's
// patterns above inf's, so integer maxima of these give max|x|, NaN if any x is NaN (and vectorize).
inline uint32_t magnitude_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  return bits & 0x7fffffffu;
}

inline float from_bits(uint32_t bits) {
  float v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// v / scale rounded half to even, 0 if NaN, else clamped to [-127, 127].
[[gnu::always_inline]] inline int8_t quantized(float v, float scale) {
  const float y = std::nearbyint(v / scale);
  return y != y ? 0 : static_cast<int8_t>(std::clamp(y, -127.f, 127.f));
}

// max|x[i]|, NaN if any x[i] is NaN, else inf if any is inf.
TORCH_INT8_SIMD_CLONES float largest_magnitude(const float* x, int64_t n) {
  uint32_t most = 0;
  for (int64_t i = 0; i < n; ++i) most = std::max(most, magnitude_bits(x[i]));
  return from_bits(most);
}

// x[i] / scale quantized; 0 where the scale is NaN (a slice holding inf or NaN).
TORCH_INT8_SIMD_CLONES void quantize_run(const float* x, int8_t* out, int64_t n, float scale) {
  if (scale != scale) {
    std::memset(out, 0, static_cast<size_t>(n));
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = quantized(x[i], scale);
}

// Row x[0, cols) quantized by the columns' scales (0 in a column whose scale is NaN); inlined into
// the SIMD copies of its callers.
[[gnu::always_inline]] inline void quantize_by_columns(const float* x, int8_t* out, const float* scale, int64_t cols) {
  for (int64_t c = 0; c < cols; ++c) out[c] = quantized(x[c], scale[c]);
}

// Rows [r0, r0 + kTile) x columns [c0, c0 + kTile) of the row-major [rows, cols] x quantized per
// column (scale[c]) into the transposed [cols, rows] out: the tile quantized row by row (reads
// along x's rows, vectorized) into a buffer, which is then written out column by column. Reading
// x down its columns instead is several times slower where cols is a multiple of 1024 (4096
// floats a row: every read of a column in the same cache set).
constexpr int64_t kTile = 64;
TORCH_INT8_SIMD_CLONES void quantize_tile_t(const float* x, int8_t* out, const float* scale, int64_t rows,
                                             int64_t cols, int64_t r0, int64_t c0) {
  const int64_t nr = std::min(rows - r0, kTile), nc = std::min(cols - c0, kTile);
  int8_t tile[kTile][kTile];
  for (int64_t r = 0; r < nr; ++r) quantize_by_columns(x + (r0 + r) * cols + c0, tile[r], scale + c0, nc);
  for (int64_t c = 0; c < nc; ++c) {
    int8_t* column = out + (c0 + c) * rows + r0;
    for (int64_t r = 0; r < nr; ++r) column[r] = tile[r][c];
  }
}

// Rows [r0, r1) of the row-major [rows, cols] x folded into the column maxima m (magnitude_bits).
TORCH_INT8_SIMD_CLONES void column_magnitudes(const float* x, int64_t cols, int64_t r0, int64_t r1, uint32_t* m) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = 0; c < cols; ++c) m[c] = std::max(m[c], magnitude_bits(x[r * cols + c]));
}

// column_amax_of in C++ on a real CPU tensor: each task's rows reduced into maxima of its own, then
// those combined.
at::Tensor column_amax_cpu(const at::Tensor& x) {
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const int64_t rows = xf.size(0), cols = xf.size(1);
  const int64_t tasks = std::clamp<int64_t>(rows * cols / 65536, 1, at::get_num_threads());
  std::vector<uint32_t> partial(static_cast<size_t>(tasks * cols), 0u);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      column_magnitudes(xf.const_data_ptr<float>(), cols, rows * t / tasks, rows * (t + 1) / tasks,
                        partial.data() + t * cols);
  });
  at::Tensor amax = at::empty({cols}, xf.options());
  float* out = amax.data_ptr<float>();
  for (int64_t c = 0; c < cols; ++c) {
    uint32_t most = 0;
    for (int64_t t = 0; t < tasks; ++t) most = std::max(most, partial[t * cols + c]);
    out[c] = from_bits(most);
  }
  return amax;
}

// Rows [r0, r1) of the row-major [rows, cols] x quantized by the columns' scales, in x's order.
TORCH_INT8_SIMD_CLONES void quantize_rows_by_columns(const float* x, int8_t* out, const float* scale, int64_t cols,
                                                      int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) quantize_by_columns(x + r * cols, out + r * cols, scale, cols);
}

// quantize(x, dim, symmetric, "nearest") of x whose dim is innermost in memory (innermost_channels:
// x is the row-major matrix [numel / C, C]): the column maxima, then every row quantized by the
// columns' scales, in x's memory format; the composite's values, element for element.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_columns_cpu(const at::Tensor& x, int64_t dim) {
  const at::Tensor xf = x.to(at::kFloat);  // keeps the memory format
  const int64_t cols = xf.size(dim), rows = xf.numel() / cols;
  const at::Tensor matrix = dim == 1 && xf.dim() == 4 ? xf.permute({0, 2, 3, 1}).reshape({rows, cols})
                                                      : xf.reshape({rows, cols});  // views
  const at::Tensor scale = column_amax_cpu(matrix);
  float* sc = scale.data_ptr<float>();
  for (int64_t c = 0; c < cols; ++c) sc[c] = scale_for(sc[c]);
  at::Tensor q = at::empty_like(xf, xf.options().dtype(at::kChar));
  const float* in = matrix.const_data_ptr<float>();
  int8_t* out = q.data_ptr<int8_t>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / cols),
                   [&](int64_t r0, int64_t r1) { quantize_rows_by_columns(in, out, sc, cols, r0, r1); });
  return {q, scale, at::empty({0}, x.options().dtype(at::kInt))};
}

// quantize(x, 0 or None, symmetric, "nearest") in two parallel loops over float32 memory: each
// slice's finiteness and max|x|, then x / scale rounded half to even and clamped. The values of the
// ATen composite below, element for element (IEEE float32 divisions, the same special cases); the
// composite stays the reference (tests/test_quantize.py compares both).
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_symmetric_cpu(const at::Tensor& x, bool per_slice) {
  const at::Tensor xf = x.to(at::kFloat);  // keeps the memory format
  const int64_t slices = per_slice ? xf.size(0) : 1, len = xf.numel() / slices;
  const float* in = xf.const_data_ptr<float>();
  at::Tensor scale = at::empty({slices}, xf.options());
  float* sc = scale.data_ptr<float>();
  at::parallel_for(0, slices, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, len)), [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      sc[s] = scale_for(largest_magnitude(in + s * len, len));
    }
  });
  at::Tensor q = at::empty_like(xf, xf.options().dtype(at::kChar));
  int8_t* out = q.data_ptr<int8_t>();
  at::parallel_for(0, xf.numel(), 32768, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {  // the part of one slice at a time
      const int64_t slice = i / len, end = std::min(i1, (slice + 1) * len);
      quantize_run(in + i, out + i, end - i, sc[slice]);
      i = end;
    }
  });
  const std::vector<int64_t> shape = per_slice ? std::vector<int64_t>{slices} : std::vector<int64_t>{};
  return {q, scale.reshape(shape), at::empty({0}, x.options().dtype(at::kInt))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, std::optional<int64_t> dim,
                                                        bool symmetric, c10::string_view rounding,
                                                        std::optional<at::Generator> generator) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "quantize: x must be a float tensor, got ",
                   dtype_str(x.scalar_type()));
  const auto numel = known_numel(x);
  TORCH_CHECK_VALUE(!numel || *numel > 0, "quantize: x is empty (shape ", shape_str(x), ")");
  check_float32_range(x, "quantize");
  check_rounding(rounding, "quantize");
  if (dim) {
    TORCH_CHECK_VALUE(x.dim() > 0 && *dim >= -x.dim() && *dim < x.dim(), "quantize: dim ", int_str(*dim),
                      " is out of range for a tensor of shape ", shape_str(x));
    dim = c10::maybe_wrap_dim(*dim, x.dim());
  }
  if (runs_as_cpu_loops(x, dim, symmetric, rounding))
    return dim && *dim != 0 ? quantize_columns_cpu(x, *dim) : quantize_symmetric_cpu(x, dim.has_value());
  const std::vector<c10::SymInt> channel_shape =
      dim ? std::vector<c10::SymInt>{symbolic(x) ? x.sym_size(*dim) : c10::SymInt(x.size(*dim))}
          : std::vector<c10::SymInt>{};
  const at::Tensor xf = x.to(at::kFloat);
  const auto dims = reduced_dims(xf, dim);
  // A slice holding inf or NaN gets scale NaN, so everything dequantized from
  // it is NaN: non-finite input propagates instead of turning finite.
  const at::Tensor finite = reduce(xf.isfinite(), dims, kAll);
  const at::Tensor x0 = at::where(finite, xf, 0.0);
  // Asymmetric ranges include 0 so that zero stays exactly representable.
  const at::Tensor lo = symmetric ? at::Tensor() : reduce(x0, dims, kAmin).clamp_max_(0);
  at::Tensor scale = symmetric ? divided(reduce(x0.abs(), dims, kAmax), 127.f)
                               : divided(reduce(x0, dims, kAmax).clamp_min_(0) - lo, 255.f);
  scale.masked_fill_(scale == 0, 1.f);

  at::Tensor y = x0 / scale;
  if (rounding == "stochastic") {
    // floor(y + u), u ~ U[0, 1): E[result] = y, so the rounding is unbiased.
    y = (y + at::rand_symint(y.sym_sizes(), generator, y.options())).floor_();
  } else {
    y = y.round();  // half to even
  }
  at::Tensor q, zero_point;
  if (symmetric) {
    q = y.clamp_(-127, 127).to(at::kChar);
    zero_point = at::empty({0}, x.options().dtype(at::kInt));
  } else {
    const at::Tensor zp = (lo / scale).neg_().sub_(128).round_().clamp_(-128, 127);
    q = y.add_(zp).clamp_(-128, 127).to(at::kChar);
    zero_point = zp.to(at::kInt).reshape_symint(channel_shape);
  }
  // A non-finite slice: scale NaN, data 0.
  q.masked_fill_(finite.logical_not(), 0);
  scale.masked_fill_(finite.logical_not(), std::numeric_limits<float>::quiet_NaN());
  return {q, scale.reshape_symint(channel_shape), zero_point};
}

// max|x| of every column of a float matrix, float32: NaN for a column holding
// NaN, else inf for one holding inf.
at::Tensor column_amax_of(const at::Tensor& x) {
  return real_cpu_tensor(x) ? column_amax_cpu(x) : x.to(at::kFloat).abs().amax(0);
}

at::Tensor column_amax(const at::Tensor& x) {
  check_float_matrix(x, "column_amax");
  return column_amax_of(x);
}

// Per row (symmetric), and optionally the absolute maximum of every column
// (for quantize_columns_t) and the float32 sum of every column (a bias gradient).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, bool with_col_amax,
                                                                         c10::string_view rounding,
                                                                         std::optional<at::Generator> generator,
                                                                         bool with_col_sum) {
  check_float_matrix(x, "quantize_rows");
  check_rounding(rounding, "quantize_rows");
  auto [q, scale, zero_point] = quantize(x, 0, true, rounding, std::move(generator));
  at::Tensor col_amax = with_col_amax ? column_amax_of(x) : at::empty({0}, scale.options());
  at::Tensor col_sum = with_col_sum ? x.to(at::kFloat).sum(0) : at::empty({0}, scale.options());
  return {q, scale, col_amax, col_sum};
}

// The arguments of quantize_columns_t (CPU and CUDA kernels): x a float
// matrix, col_amax float32 with one entry per column of x, a known rounding.
void check_columns_t_args(const at::Tensor& x, const at::Tensor& col_amax, c10::string_view rounding) {
  check_float_matrix(x, "quantize_columns_t");
  check_rounding(rounding, "quantize_columns_t");
  check_dtype(col_amax, at::kFloat, "quantize_columns_t", "col_amax");
  check_same_device(col_amax, x, "quantize_columns_t", "col_amax");
  const auto cols = known_size(x, 1), n = known_numel(col_amax);
  TORCH_CHECK_VALUE(col_amax.dim() == 1 && (!cols || !n || *cols == *n), "quantize_columns_t: col_amax has shape ",
                    shape_str(col_amax), ", expected one entry per column of x ", shape_str(x));
}

// quantize_columns_t(x, col_amax, "nearest") in C++ on real CPU tensors: the composite's scales,
// then its values written transposed a 64 x 64 tile at a time.
std::tuple<at::Tensor, at::Tensor> columns_t_cpu(const at::Tensor& x, const at::Tensor& col_amax) {
  const at::Tensor xf = x.to(at::kFloat).contiguous(), amax = col_amax.contiguous();
  const int64_t rows = xf.size(0), cols = xf.size(1);
  at::Tensor scale = at::empty({cols}, amax.options());
  const float* a = amax.const_data_ptr<float>();
  float* sc = scale.data_ptr<float>();
  for (int64_t c = 0; c < cols; ++c) sc[c] = scale_for(a[c]);
  at::Tensor q_t = at::empty({cols, rows}, xf.options().dtype(at::kChar));
  const float* in = xf.const_data_ptr<float>();
  int8_t* out = q_t.data_ptr<int8_t>();
  at::parallel_for(0, (rows + kTile - 1) / kTile, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t r0 = b0 * kTile; r0 < std::min(rows, b1 * kTile); r0 += kTile)
      for (int64_t c0 = 0; c0 < cols; c0 += kTile) quantize_tile_t(in, out, sc, rows, cols, r0, c0);
  });
  return {q_t, scale};
}

// Per column with the given column maxima, written transposed (cols x rows).
std::tuple<at::Tensor, at::Tensor> quantize_columns_t(const at::Tensor& x, const at::Tensor& col_amax,
                                                      c10::string_view rounding,
                                                      std::optional<at::Generator> generator) {
  check_columns_t_args(x, col_amax, rounding);
  if (real_cpu_tensor(x) && real_cpu_tensor(col_amax) && rounding == "nearest") return columns_t_cpu(x, col_amax);
  // A negative "maximum of |x|" is no maximum: its column's scale is NaN, as a non-finite one's
  // (checking the values would cost a sync on the GPU).
  const at::Tensor finite = col_amax.isfinite().logical_and_(col_amax >= 0);
  at::Tensor scale = divided(col_amax.clone(), 127.f);
  scale.masked_fill_(scale == 0, 1.f);
  scale.masked_fill_(finite.logical_not(), std::numeric_limits<float>::quiet_NaN());
  at::Tensor y = x.to(at::kFloat) / scale;
  if (rounding == "stochastic") {
    y = (y + at::rand_symint(y.sym_sizes(), generator, y.options())).floor_();
  } else {
    y = y.round();
  }
  y.masked_fill_(y.isnan(), 0);  // non-finite columns
  at::Tensor q_t = y.clamp_(-127, 127).to(at::kChar).t().contiguous();
  return {q_t, scale};
}

// Shapes a per-channel vector to broadcast along `dim` of a tensor of rank `rank`.
at::Tensor along(const at::Tensor& v, std::optional<int64_t> dim, int64_t rank) {
  if (!dim || v.dim() == 0) return v;
  std::vector<int64_t> shape(rank, 1);
  shape[c10::maybe_wrap_dim(*dim, rank)] = -1;
  return v.reshape(shape);  // -1 keeps this free of symbolic sizes
}

at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                      std::optional<int64_t> dim, at::ScalarType dtype) {
  check_dtype(data, at::kChar, "dequantize", "data");
  check_dtype(scale, at::kFloat, "dequantize", "scale");
  TORCH_CHECK_TYPE(at::isFloatingType(dtype), "dequantize: dtype must be a float type, got ", dtype);
  // Checked where the sizes are known now (symbolic ones are checked at run time).
  const std::optional<int64_t> channels =
      dim ? known_size(data, c10::maybe_wrap_dim(*dim, data.dim())) : std::optional<int64_t>(1);
  auto matches = [&](const at::Tensor& v) {
    const auto n = known_numel(v);
    return !n || !channels || *n == *channels;
  };
  TORCH_CHECK_VALUE(matches(scale), "dequantize: scale has shape ", shape_str(scale), ", expected ",
                    channels ? std::to_string(*channels) : "one per channel", " elements");
  at::Tensor v = data.to(at::kFloat);
  if (zero_point && known_numel(*zero_point) != 0) {
    check_dtype(*zero_point, at::kInt, "dequantize", "zero_point");
    TORCH_CHECK_VALUE(matches(*zero_point), "dequantize: zero_point has shape ", shape_str(*zero_point),
                      ", expected ", channels ? std::to_string(*channels) : "one per channel", " elements");
    v = v - along(*zero_point, dim, data.dim());
  }
  return (v * along(scale, dim, data.dim())).to(dtype);
}

#ifdef TORCH_INT8_WITH_CUDA
std::optional<kernels::InType> in_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kernels::InType::kFloat32;
    case at::kHalf: return kernels::InType::kFloat16;
    case at::kBFloat16: return kernels::InType::kBFloat16;
    default: return std::nullopt;
  }
}

// The rounding of a fused kernel: stochastic rounding takes a fresh Philox
// (seed, offset) from the generator (or the device's default one), as values,
// or under CUDA-graph capture as the generator's device-side state.
kernels::Rounding rounding_of(c10::string_view rounding, std::optional<at::Generator> generator,
                              const at::Device& device) {
  kernels::Rounding r;
  if (rounding != "stochastic") return r;
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(device.index()));
  std::lock_guard<std::mutex> lock(gen->mutex_);
  const at::PhiloxCudaState state = gen->philox_cuda_state(4);
  r.stochastic = true;
  if (state.captured_) {
    r.seed_ptr = state.seed_.ptr, r.offset_ptr = state.offset_.ptr, r.offset = state.offset_intragraph_;
  } else {
    r.seed = state.seed_.val, r.offset = state.offset_.val;
  }
  return r;
}

// The column statistics asked for (float32 [cols] each, or [0]) and, if any, their workspace.
struct ColumnStatsOutputs {
  at::Tensor amax, sum, workspace;
  ColumnStatsOutputs(const at::Tensor& x, bool with_amax, bool with_sum) {
    const auto options = x.options().dtype(at::kFloat);
    auto output = [&](bool wanted) { return wanted ? new_output({x.size(1)}, options) : at::empty({0}, options); };
    amax = output(with_amax), sum = output(with_sum);
    if (with_amax || with_sum)
      workspace = at::empty({kernels::column_stats_workspace(x.size(0), x.size(1))}, options);
  }
};

float* data_or_null(at::Tensor& t) { return t.numel() > 0 ? t.data_ptr<float>() : nullptr; }

using RowsResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The fused per-row kernel for op `op` (named in errors); nullopt when it does not take x (the caller then
// runs the composite).
std::optional<RowsResult> quantize_rows_fused(const char* op, const at::Tensor& x, bool with_col_amax,
                                              bool with_col_sum, c10::string_view rounding,
                                              std::optional<at::Generator> generator) {
  const auto in_type = in_type_of(x.scalar_type());
  if (!in_type || x.dim() != 2 || x.numel() == 0) return std::nullopt;
  check_rounding(rounding, op);
  const at::Tensor xc = x.contiguous();
  at::Tensor q = new_output(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = new_output({x.size(0)}, x.options().dtype(at::kFloat));
  ColumnStatsOutputs stats(x, with_col_amax, with_col_sum);
  kernels::QuantizeRows r;
  r.x = xc.const_data_ptr(), r.in_type = *in_type, r.rows = x.size(0), r.cols = x.size(1);
  r.q = q.data_ptr<int8_t>(), r.scale = scale.data_ptr<float>();
  r.col_amax = data_or_null(stats.amax), r.col_sum = data_or_null(stats.sum);
  r.workspace = stats.workspace.defined() ? stats.workspace.data_ptr<float>() : nullptr;
  c10::DeviceGuard guard(x.device());
  r.rounding = rounding_of(rounding, std::move(generator), x.device());
  const kernels::Status status = kernels::quantize_rows_cuda(r, current_stream(x.device()));
  if (status == kernels::Status::kInvalidArgument) return std::nullopt;
  check_status(status, op);
  return RowsResult{q, scale, stats.amax, stats.sum};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, std::optional<int64_t> dim,
                                                             bool symmetric, c10::string_view rounding,
                                                             std::optional<at::Generator> generator) {
  if (symmetric && dim && (*dim == 0 || *dim == -2))
    if (auto fused = quantize_rows_fused("quantize", x, false, false, rounding, generator)) {
      auto& [q, scale, unused_amax, unused_sum] = *fused;
      return {q, scale, at::empty({0}, x.options().dtype(at::kInt))};
    }
  return quantize(x, dim, symmetric, rounding, std::move(generator));
}

RowsResult quantize_rows_cuda(const at::Tensor& x, bool with_col_amax, c10::string_view rounding,
                              std::optional<at::Generator> generator, bool with_col_sum) {
  check_float_matrix(x, "quantize_rows");
  if (auto fused = quantize_rows_fused("quantize_rows", x, with_col_amax, with_col_sum, rounding, generator))
    return *fused;
  return quantize_rows(x, with_col_amax, rounding, std::move(generator), with_col_sum);
}

at::Tensor column_amax_cuda(const at::Tensor& x) {
  check_float_matrix(x, "column_amax");
  const auto in_type = in_type_of(x.scalar_type());
  if (!in_type) return column_amax_of(x);
  const at::Tensor xc = x.contiguous();
  ColumnStatsOutputs stats(x, true, false);
  kernels::ColumnStats c;
  c.x = xc.const_data_ptr(), c.in_type = *in_type, c.rows = x.size(0), c.cols = x.size(1);
  c.amax = stats.amax.data_ptr<float>(), c.workspace = stats.workspace.data_ptr<float>();
  c10::DeviceGuard guard(x.device());
  const kernels::Status status = kernels::column_stats_cuda(c, current_stream(x.device()));
  if (status == kernels::Status::kInvalidArgument) return column_amax_of(x);
  check_status(status, "column_amax");
  return stats.amax;
}

std::tuple<at::Tensor, at::Tensor> quantize_columns_t_cuda(const at::Tensor& x, const at::Tensor& col_amax,
                                                           c10::string_view rounding,
                                                           std::optional<at::Generator> generator) {
  check_columns_t_args(x, col_amax, rounding);
  const auto in_type = in_type_of(x.scalar_type());
  if (!in_type) return quantize_columns_t(x, col_amax, rounding, std::move(generator));
  const at::Tensor xc = x.contiguous(), amax = col_amax.contiguous();
  at::Tensor q_t = new_output({x.size(1), x.size(0)}, x.options().dtype(at::kChar));
  at::Tensor scale = new_output({x.size(1)}, x.options().dtype(at::kFloat));
  kernels::QuantizeColumnsT r;
  r.x = xc.const_data_ptr(), r.in_type = *in_type, r.rows = x.size(0), r.cols = x.size(1);
  r.col_amax = amax.const_data_ptr<float>(), r.q_t = q_t.data_ptr<int8_t>(), r.scale = scale.data_ptr<float>();
  c10::DeviceGuard guard(x.device());
  r.rounding = rounding_of(rounding, generator, x.device());
  const kernels::Status status = kernels::quantize_columns_t_cuda(r, current_stream(x.device()));
  if (status == kernels::Status::kInvalidArgument) return quantize_columns_t(x, col_amax, rounding, std::move(generator));
  check_status(status, "quantize_columns_t");
  return {q_t, scale};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "quantize(Tensor x, int? dim=None, bool symmetric=True, str rounding='nearest', Generator? generator=None) "
      "-> (Tensor data, Tensor scale, Tensor zero_point)");
  m.def("dequantize(Tensor data, Tensor scale, Tensor? zero_point=None, int? dim=None, ScalarType dtype=float) -> Tensor");
  m.def(
      "quantize_rows(Tensor x, bool with_col_amax=False, str rounding='nearest', Generator? generator=None, "
      "bool with_col_sum=False) -> (Tensor data, Tensor scale, Tensor col_amax, Tensor col_sum)");
  m.def(
      "quantize_columns_t(Tensor x, Tensor col_amax, str rounding='nearest', Generator? generator=None) "
      "-> (Tensor data_t, Tensor scale)");
  m.def("column_amax(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(int8, CompositeExplicitAutograd, m) {
  m.impl("quantize", quantize);
  m.impl("dequantize", dequantize);
  m.impl("quantize_rows", quantize_rows);
  m.impl("quantize_columns_t", quantize_columns_t);
  m.impl("column_amax", column_amax);
}

#ifdef TORCH_INT8_WITH_CUDA
TORCH_LIBRARY_IMPL(int8, CUDA, m) {
  m.impl("quantize", quantize_cuda);
  m.impl("quantize_rows", quantize_rows_cuda);
  m.impl("quantize_columns_t", quantize_columns_t_cuda);
  m.impl("column_amax", column_amax_cuda);
}
#endif

TORCH_LIBRARY_IMPL(int8, Autograd, m) {
  impl_without_derivatives(m, {"quantize", "dequantize", "quantize_rows", "column_amax", "quantize_columns_t"});
}

}  // namespace torch_int8::ops
