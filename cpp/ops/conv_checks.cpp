// The convolution ops' argument and shape checks (conv_checks.h) and the workspace limit,
// with its two ops: int8::get_conv_workspace_limit and int8::set_conv_workspace_limit.
#include "conv_checks.h"

#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

namespace torch_int8::ops {

using kernels::ConvProblem;

namespace {

std::atomic<int64_t>& workspace_limit() {
  static std::atomic<int64_t> limit{[] {
    const char* mb = std::getenv("TORCH_INT8_CONV_WORKSPACE_MB");
    return mb && *mb ? std::max<int64_t>(1, std::atoll(mb)) << 20 : int64_t{1} << 30;
  }()};
  return limit;
}

}  // namespace

int64_t units_per_chunk(int64_t bytes_per_unit, int64_t total, int64_t granule) {
  const int64_t fit = workspace_limit().load() / std::max<int64_t>(1, bytes_per_unit) / granule * granule;
  return std::clamp(fit, granule, round_up(total, granule));
}

std::array<int64_t, 2> hw_pair(at::IntArrayRef v, const char* op, const char* name, int64_t min) {
  TORCH_CHECK_VALUE(v.size() == 2, op, ": ", name, " must have 2 entries (height, width), got ",
                    int_str(static_cast<int64_t>(v.size())));
  TORCH_CHECK_VALUE(v[0] >= min && v[1] >= min && v[0] <= kMaxGeometry && v[1] <= kMaxGeometry, op, ": ", name,
                    " must be in [", int_str(min), ", ", int_str(kMaxGeometry), "], got (", int_str(v[0]), ", ",
                    int_str(v[1]), ")");
  return {v[0], v[1]};
}

ConvParams conv_params(const char* op, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups) {
  TORCH_CHECK_VALUE(groups >= 1, op, ": groups must be >= 1, got ", int_str(groups));
  return {hw_pair(stride, op, "stride", 1), hw_pair(padding, op, "padding", 0), hw_pair(dilation, op, "dilation", 1),
          groups};
}

namespace {
// Output size along one axis; symbolic under torch.compile.
template <class Int>
Int out_size(const Int& in, int64_t f, int64_t pad, int64_t stride, int64_t dilation) {
  return (in + 2 * pad - dilation * (f - 1) - 1) / stride + 1;
}
}  // namespace

template <class Int>
ConvDims<Int> conv_dims(const Int& n, const Int& c, const Int& h, const Int& w, const Int& k, int64_t r, int64_t s,
                        const ConvParams& cp, const char* op) {
  const ConvDims<Int> d{n, c, h, w, k, r, s, out_size(h, r, cp.padding[0], cp.stride[0], cp.dilation[0]),
                        out_size(w, s, cp.padding[1], cp.stride[1], cp.dilation[1])};
  auto known = [](const Int& v) { return Shape<std::is_same_v<Int, c10::SymInt>>::known(v); };
  const auto hp = known(h + 2 * cp.padding[0]), wp = known(w + 2 * cp.padding[1]);
  TORCH_CHECK_VALUE((!hp || *hp >= cp.dilation[0] * (r - 1) + 1) && (!wp || *wp >= cp.dilation[1] * (s - 1) + 1), op,
                    ": the padded input (", int_str(h + 2 * cp.padding[0]), " x ", int_str(w + 2 * cp.padding[1]),
                    ") is smaller than the dilated kernel (", int_str(cp.dilation[0] * (r - 1) + 1), " x ",
                    int_str(cp.dilation[1] * (s - 1) + 1), ")");
  const auto cn = known(c), kn = known(k);
  TORCH_CHECK_VALUE(!cn || *cn % cp.groups == 0, op, ": groups = ", int_str(cp.groups),
                    " does not divide the input channels ", int_str(c));
  TORCH_CHECK_VALUE(!kn || *kn % cp.groups == 0, op, ": groups = ", int_str(cp.groups),
                    " does not divide the output channels ", int_str(k));
  // The output pixel count (and so every count of pixels below it) fits in int64; the output
  // tensor's allocation checks its element count.
  size_product(size_product(d.n, d.p, op, "N*P"), d.q, op, "N*P*Q");
  return d;
}

ConvProblem problem_of(const ConvDims<int64_t>& d, const ConvParams& cp) {
  ConvProblem p;
  p.n = d.n, p.h = d.h, p.w = d.w, p.c = d.c, p.k = d.k, p.r = d.r, p.s = d.s;
  p.pad_h = cp.padding[0], p.pad_w = cp.padding[1];
  p.stride_h = cp.stride[0], p.stride_w = cp.stride[1];
  p.dilation_h = cp.dilation[0], p.dilation_w = cp.dilation[1];
  p.groups = cp.groups;
  p.p = d.p, p.q = d.q;
  return p;
}

void check_int8_4d(const at::Tensor& t, const char* op, const char* name, const char* what) {
  check_dtype(t, at::kChar, op, name);
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be 4-D ", what, ", got shape ", shape_str(t));
  const auto numel = known_numel(t);
  TORCH_CHECK_VALUE(!numel || *numel > 0, op, ": ", name, " is empty (shape ", shape_str(t), ")");
}

namespace {

// The two int8 4-D operands of a convolution op, on one device (second's checked against first's).
void check_int8_4d_pair(const at::Tensor& first, const char* first_name, const char* first_what,
                        const at::Tensor& second, const char* second_name, const char* second_what, const char* op) {
  check_int8_4d(first, op, first_name, first_what);
  check_int8_4d(second, op, second_name, second_what);
  check_same_device(second, first, op, second_name);
}

// The filter size (R, S) of weight [K, C/G, R, S]: it fixes the GEMM depth, so
// under torch.compile with dynamic shapes it is specialized (a guard on its
// value) rather than traced symbolically.
template <bool kSym>
std::array<int64_t, 2> static_filter_size(const at::Tensor& weight) {
  if constexpr (kSym) {
    return {weight.sym_size(2).guard_int(__FILE__, __LINE__), weight.sym_size(3).guard_int(__FILE__, __LINE__)};
  } else {
    return {weight.size(2), weight.size(3)};
  }
}

// A GEMM depth `channels` * R * S (named `what`) beyond kMaxK could overflow the int32 accumulator.
template <class Int>
void check_gemm_depth(const Int& channels, const std::array<int64_t, 2>& rs, const char* op, const char* what) {
  const auto c = Shape<std::is_same_v<Int, c10::SymInt>>::known(channels);
  if (!c) return;
  const int64_t depth = checked_mul(*c, rs[0] * rs[1], op, what);
  TORCH_CHECK_VALUE(depth <= kernels::kMaxK, op, ": ", what, " = ", int_str(depth), " exceeds ",
                    int_str(kernels::kMaxK), ", beyond which the int32 accumulator can overflow");
}

// grad_out [N, K, P, Q] must have the output size (P, Q) of d, the convolution of `source`.
template <bool kSym>
void check_grad_out_size(const at::Tensor& grad_out, const Dims<kSym>& d, const char* op, const std::string& source) {
  using S = Shape<kSym>;
  TORCH_CHECK_VALUE(d.p == S::size(grad_out, 2) && d.q == S::size(grad_out, 3), op, ": grad_out ",
                    shape_str(grad_out), " does not match ", source, ", whose output is ", int_str(d.p), " x ",
                    int_str(d.q));
}

}  // namespace

// x [N, C, H, W] with weight [K, C/G, R, S]; int32_result: the op returns the int32 sums, which
// hold at most kMaxK products (the scaled ops sum longer ones in int64).
template <bool kSym>
Dims<kSym> forward_dims(const at::Tensor& x, const at::Tensor& weight, const ConvParams& cp, const char* op,
                        bool int32_result) {
  using S = Shape<kSym>;
  check_int8_4d_pair(x, "x", "[N, C, H, W]", weight, "weight", "[K, C/groups, R, S]", op);
  TORCH_CHECK_VALUE(S::size(x, 1) == S::size(weight, 1) * cp.groups, op, ": channel mismatch: x has ",
                    int_str(S::size(x, 1)), " channels, weight ", shape_str(weight), " with groups = ",
                    int_str(cp.groups), " expects ", int_str(S::size(weight, 1) * cp.groups));
  const auto rs = static_filter_size<kSym>(weight);
  if (int32_result) check_gemm_depth(S::size(weight, 1), rs, op, "C/groups*R*S");
  return conv_dims(S::size(x, 0), S::size(x, 1), S::size(x, 2), S::size(x, 3), S::size(weight, 0), rs[0], rs[1], cp,
                   op);
}

// grad_out [N, K, P, Q] with weight [K, C/G, R, S] and the input size (H, W); int32_result as
// forward_dims's.
template <bool kSym>
Dims<kSym> dgrad_dims(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                      const ConvParams& cp, const char* op, bool int32_result) {
  using S = Shape<kSym>;
  check_int8_4d_pair(grad_out, "grad_out", "[N, K, P, Q]", weight, "weight", "[K, C/groups, R, S]", op);
  const auto hw = hw_pair(input_size, op, "input_size", 1);
  TORCH_CHECK_VALUE(S::size(grad_out, 1) == S::size(weight, 0), op, ": channel mismatch: grad_out has ",
                    int_str(S::size(grad_out, 1)), " channels, weight ", shape_str(weight));
  const auto rs = static_filter_size<kSym>(weight);
  const auto d = conv_dims<typename S::Int>(S::size(grad_out, 0), S::size(weight, 1) * cp.groups, hw[0], hw[1],
                                            S::size(weight, 0), rs[0], rs[1], cp, op);
  check_grad_out_size<kSym>(grad_out, d, op, "input_size (" + int_str(hw[0]) + ", " + int_str(hw[1]) + ")");
  if (int32_result) check_gemm_depth(S::size(weight, 0) / cp.groups, rs, op, "K/groups*R*S");
  return d;
}

// grad_out [N, K, P, Q] with x [N, C, H, W] and the filter size (R, S).
template <bool kSym>
Dims<kSym> wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                      const ConvParams& cp, const char* op) {
  using S = Shape<kSym>;
  check_int8_4d_pair(grad_out, "grad_out", "[N, K, P, Q]", x, "x", "[N, C, H, W]", op);
  const auto rs = hw_pair(kernel_size, op, "kernel_size", 1);
  TORCH_CHECK_VALUE(S::size(grad_out, 0) == S::size(x, 0), op, ": batch mismatch: grad_out ", shape_str(grad_out),
                    ", x ", shape_str(x));
  const auto d = conv_dims(S::size(x, 0), S::size(x, 1), S::size(x, 2), S::size(x, 3), S::size(grad_out, 1), rs[0],
                           rs[1], cp, op);
  check_grad_out_size<kSym>(grad_out, d, op, "x " + shape_str(x));
  return d;
}

template ConvDims<int64_t> conv_dims(const int64_t&, const int64_t&, const int64_t&, const int64_t&, const int64_t&,
                                     int64_t, int64_t, const ConvParams&, const char*);
template ConvDims<c10::SymInt> conv_dims(const c10::SymInt&, const c10::SymInt&, const c10::SymInt&,
                                         const c10::SymInt&, const c10::SymInt&, int64_t, int64_t, const ConvParams&,
                                         const char*);
template Dims<false> forward_dims<false>(const at::Tensor&, const at::Tensor&, const ConvParams&, const char*, bool);
template Dims<true> forward_dims<true>(const at::Tensor&, const at::Tensor&, const ConvParams&, const char*, bool);
template Dims<false> dgrad_dims<false>(const at::Tensor&, const at::Tensor&, at::IntArrayRef, const ConvParams&,
                                       const char*, bool);
template Dims<true> dgrad_dims<true>(const at::Tensor&, const at::Tensor&, at::IntArrayRef, const ConvParams&,
                                     const char*, bool);
template Dims<false> wgrad_dims<false>(const at::Tensor&, const at::Tensor&, at::IntArrayRef, const ConvParams&,
                                       const char*);
template Dims<true> wgrad_dims<true>(const at::Tensor&, const at::Tensor&, at::IntArrayRef, const ConvParams&,
                                     const char*);

// --- workspace limit ops ----------------------------------------------------------------

namespace {

int64_t get_conv_workspace_limit() { return workspace_limit().load(); }

void set_conv_workspace_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes > 0, "set_conv_workspace_limit: bytes must be > 0, got ", int_str(bytes));
  workspace_limit().store(bytes);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def("get_conv_workspace_limit() -> int", get_conv_workspace_limit);
  m.def("set_conv_workspace_limit(int bytes) -> ()", set_conv_workspace_limit);
}

}  // namespace torch_int8::ops
