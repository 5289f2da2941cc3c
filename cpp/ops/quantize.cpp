// int8::quantize and int8::dequantize: absmax quantization, per tensor or per
// channel, nearest or stochastic rounding. Written with ATen ops, so one
// implementation (CompositeExplicitAutograd) serves CPU, CUDA and Meta; on the
// GPU a fused kernel takes the common case (per row, symmetric, nearest).
#include <torch/library.h>

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

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& x, std::optional<int64_t> dim,
                                                        bool symmetric, c10::string_view rounding,
                                                        std::optional<at::Generator> generator) {
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "quantize: x must be a float tensor, got ",
                   x.scalar_type());
  const auto numel = known_numel(x);
  TORCH_CHECK_VALUE(!numel || *numel > 0, "quantize: x is empty (shape ", shape_str(x), ")");
  TORCH_CHECK_VALUE(rounding == "nearest" || rounding == "stochastic",
                    "quantize: rounding must be 'nearest' or 'stochastic', got '", rounding, "'");
  if (dim) {
    TORCH_CHECK_VALUE(x.dim() > 0 && *dim >= -x.dim() && *dim < x.dim(), "quantize: dim ", int_str(*dim),
                      " is out of range for a tensor of shape ", shape_str(x));
    dim = c10::maybe_wrap_dim(*dim, x.dim());
  }
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
  // Divided by a tensor on x's device, not by a number: ATen's CUDA kernel
  // multiplies by the reciprocal of a scalar divisor, which is off by one ulp
  // from the CPU's (and the fused kernel's) IEEE division for some values.
  const auto divided = [&](at::Tensor t, float d) { return t.div_(at::full({}, d, t.options())); };
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

// The fused kernel (one block per row, the row read once from memory) for the
// case training layers use: per row of a 2-D tensor, symmetric, nearest.
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, std::optional<int64_t> dim,
                                                             bool symmetric, c10::string_view rounding,
                                                             std::optional<at::Generator> generator) {
  const auto in_type = in_type_of(x.scalar_type());
  const bool per_row = dim && x.dim() == 2 && (*dim == 0 || *dim == -2);
  if (!in_type || !per_row || !symmetric || rounding != "nearest" || x.numel() == 0)
    return quantize(x, dim, symmetric, rounding, std::move(generator));
  const at::Tensor xc = x.contiguous();
  at::Tensor q = new_output(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = new_output({x.size(0)}, x.options().dtype(at::kFloat));
  kernels::QuantizeRows r;
  r.x = xc.const_data_ptr(), r.in_type = *in_type, r.rows = x.size(0), r.cols = x.size(1);
  r.q = q.data_ptr<int8_t>(), r.scale = scale.data_ptr<float>();
  c10::DeviceGuard guard(x.device());
  check_status(kernels::quantize_rows_cuda(r, current_stream(x.device())), "quantize");
  return {q, scale, at::empty({0}, x.options().dtype(at::kInt))};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "quantize(Tensor x, int? dim=None, bool symmetric=True, str rounding='nearest', Generator? generator=None) "
      "-> (Tensor data, Tensor scale, Tensor zero_point)");
  m.def("dequantize(Tensor data, Tensor scale, Tensor? zero_point=None, int? dim=None, ScalarType dtype=float) -> Tensor");
}

TORCH_LIBRARY_IMPL(int8, CompositeExplicitAutograd, m) {
  m.impl("quantize", quantize);
  m.impl("dequantize", dequantize);
}

#ifdef TORCH_INT8_WITH_CUDA
TORCH_LIBRARY_IMPL(int8, CUDA, m) { m.impl("quantize", quantize_cuda); }
#endif

}  // namespace torch_int8::ops
