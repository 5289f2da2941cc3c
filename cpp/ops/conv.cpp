// int8::im2col, col2im, conv2d, scaled_conv2d, conv2d_dgrad, scaled_conv2d_dgrad,
// conv2d_wgrad, scaled_conv2d_wgrad:
// schema, CPU / CUDA / Meta kernels.
//
// Tensors are logically NCHW (weights [K, C/G, R, S]) as in torch.nn; any
// memory format is read in place (the kernels take element strides), and
// images computed here come back channels_last (NHWC memory).
//
// The general path runs each convolution as GEMMs over a column buffer
// (conv.h), one GEMM per group, with the fused epilogue of kernels.h:
//   forward  Y[pix, K/G]          = cols[pix, RSC/G] @ W[K/G, RSC/G]^T
//   dgrad    dcols[pix, RSC/G]    = dY[pix, K/G] @ W[K/G, RSC/G], then col2im
//   wgrad    dW[K/G, RSC/G]       = dY^T[K/G, pix] @ cols[pix, RSC/G]
// The batch (wgrad: the pixels) is processed in chunks so that one column
// buffer stays under the workspace limit (set_conv_workspace_limit, default
// 1 GiB or TORCH_INT8_CONV_WORKSPACE_MB); only a chunk of one image, or a
// filter of one pixel, larger than the limit exceeds it.
// On the GPU the forward first tries the implicit-GEMM kernel
// (conv2d_fprop_cuda) and falls back to this path when it declines.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "common.h"
#include "torch_int8/conv.h"

namespace torch_int8::ops {
namespace {

using kernels::ColumnStrides;
using kernels::ConvProblem;
using kernels::Epilogue;
using kernels::GemmProblem;
using kernels::ImageStrides;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// --- workspace limit ------------------------------------------------------------

std::atomic<int64_t>& workspace_limit() {
  static std::atomic<int64_t> limit{[] {
    const char* mb = std::getenv("TORCH_INT8_CONV_WORKSPACE_MB");
    return mb && *mb ? std::max<int64_t>(1, std::atoll(mb)) << 20 : int64_t{1} << 30;
  }()};
  return limit;
}

// How many units (images, or pixels in multiples of `granule`) one chunk
// holds when each unit needs bytes_per_unit of column buffer: as many as fit
// under the limit, at least one granule, at most all of them.
int64_t units_per_chunk(int64_t bytes_per_unit, int64_t total, int64_t granule = 1) {
  const int64_t fit = workspace_limit().load() / std::max<int64_t>(1, bytes_per_unit) / granule * granule;
  return std::clamp(fit, granule, round_up(total, granule));
}

// --- arguments and shapes -------------------------------------------------------

struct ConvParams {
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};

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

// Output size along one axis; symbolic under torch.compile.
template <class Int>
Int out_size(const Int& in, int64_t f, int64_t pad, int64_t stride, int64_t dilation) {
  return (in + 2 * pad - dilation * (f - 1) - 1) / stride + 1;
}

// a * b of sizes: checked_mul when known now, symbolic otherwise (checked when the kernel runs).
template <class Int>
Int size_product(const Int& a, const Int& b, const char* op, const char* what) {
  if constexpr (std::is_same_v<Int, c10::SymInt>) {
    const auto ka = a.maybe_as_int(), kb = b.maybe_as_int();
    return ka && kb ? c10::SymInt(checked_mul(*ka, *kb, op, what)) : a * b;
  } else {
    return checked_mul(a, b, op, what);
  }
}

// The sizes of one convolution (Int: int64_t, or c10::SymInt in Meta kernels).
template <class Int>
struct ConvDims {
  Int n, c, h, w, k;
  int64_t r, s;
  Int p, q;
};

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

// The two int8 4-D operands of a convolution op, on one device (second's checked against first's).
void check_int8_4d_pair(const at::Tensor& first, const char* first_name, const char* first_what,
                        const at::Tensor& second, const char* second_name, const char* second_what, const char* op) {
  check_int8_4d(first, op, first_name, first_what);
  check_int8_4d(second, op, second_name, second_what);
  check_same_device(second, first, op, second_name);
}

template <bool kSym>
using Dims = ConvDims<typename Shape<kSym>::Int>;

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

// conv2d_wgrad's int32 result sums over all N*P*Q pixels.
template <bool kSym>
Dims<kSym> int32_wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                            const ConvParams& cp) {
  using S = Shape<kSym>;
  const char* op = "conv2d_wgrad";
  const auto d = wgrad_dims<kSym>(grad_out, x, kernel_size, cp, op);
  const auto pixels = S::known(d.n * d.p * d.q);
  TORCH_CHECK_VALUE(!pixels || *pixels <= kernels::kMaxK, op, ": N*P*Q = ", int_str(d.n * d.p * d.q), " exceeds ",
                    int_str(kernels::kMaxK), ", beyond which the int32 result can overflow; split the batch");
  return d;
}

// --- tensor plumbing ----------------------------------------------------------------

ImageStrides nchw_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }
ImageStrides nhwc_strides(const at::Tensor& t) { return {t.stride(0), t.stride(3), t.stride(1), t.stride(2)}; }

// t [G, rows, cols] zero-padded to [G, rows_pad, cols_pad] and contiguous;
// no copy when it already is.
at::Tensor padded(const at::Tensor& t, int64_t rows_pad, int64_t cols_pad) {
  if (t.size(1) == rows_pad && t.size(2) == cols_pad) return t.contiguous();
  return at::constant_pad_nd(t, {0, cols_pad - t.size(2), 0, rows_pad - t.size(1)}, 0).contiguous();
}

// A per-output-channel vector [K] (or one broadcast value) as [G, n_pad]
// float32, zero-padded per group: the epilogue column vectors of the grouped
// GEMMs (readable up to round_up(N, 16)).
at::Tensor group_columns(const at::Tensor& v, int64_t k, int64_t groups, int64_t n_pad) {
  const at::Tensor full = v.to(at::kFloat).reshape({-1}).expand({k}).reshape({groups, 1, k / groups});
  return padded(full, 1, n_pad).view({groups * n_pad});
}

// Output pixels (n, l) of an image batch -> the element offset of pixel m in a column buffer.
int64_t pixel_start(const ColumnStrides& cs, int64_t per_image, int64_t m) {
  return (m / per_image) * cs.n + (m % per_image) * cs.pixel;
}

void* stream_of(const at::Tensor& t) { return current_stream(t.device()); }

void run_im2col(const kernels::Im2Col& a, const at::Tensor& x) {
  if (x.is_cuda()) {
    check_status(kernels::im2col_cuda(a, stream_of(x)), "im2col");
    return;
  }
  const int64_t per_image = a.geometry.p * a.geometry.q;
  const int64_t start = pixel_start(a.cols_strides, per_image, a.pixel_begin);
  const int64_t grain = std::max<int64_t>(1, 65536 / (a.geometry.c * a.geometry.r * a.geometry.s));
  at::parallel_for(a.pixel_begin, a.pixel_begin + a.pixel_count, grain, [&](int64_t begin, int64_t end) {
    kernels::Im2Col part = a;
    part.pixel_begin = begin, part.pixel_count = end - begin;
    part.cols = a.cols + (pixel_start(a.cols_strides, per_image, begin) - start);
    check_status(kernels::im2col_cpu(part), "im2col");
  });
}

// The rescaling of images [n0, ...) of s.
kernels::Col2ImScales scales_from(kernels::Col2ImScales s, int64_t n0) {
  if (s.scale_n && s.per_image) s.scale_n += n0;
  return s;
}

void run_col2im(const kernels::Col2Im& a, const at::Tensor& cols, int64_t col_bytes, int64_t image_bytes) {
  if (cols.is_cuda()) {
    check_status(kernels::col2im_cuda(a, stream_of(cols)), "col2im");
    return;
  }
  at::parallel_for(0, a.geometry.n, 1, [&](int64_t begin, int64_t end) {
    kernels::Col2Im part = a;
    part.geometry.n = end - begin;
    part.cols = static_cast<const char*>(a.cols) + begin * a.cols_strides.n * col_bytes;
    part.image = static_cast<char*>(a.image) + begin * a.image_strides.n * image_bytes;
    part.scales = scales_from(a.scales, begin);
    check_status(kernels::col2im_cpu(part), "col2im");
  });
}

// The `op` of the convolution ops' GEMMs in error messages.
constexpr const char* kConvGemm = "conv2d gemm";

// An NHWC [N, P, Q, K] (or [N, H, W, C]) buffer seen as the logical NCHW tensor (channels_last memory).
at::Tensor as_nchw(const at::Tensor& nhwc) { return nhwc.permute({0, 3, 1, 2}); }

// --- forward ------------------------------------------------------------------------

// The epilogue's operands for a forward convolution: per-pixel rows (the
// activation scale of each pixel's image, minus the activation zero point)
// and per-output-channel columns (weight scale, weight sums, bias), and the ReLU. Empty for int32 output.
struct ForwardScales {
  at::Tensor scale_x, row_offset_value;  // scale_x: [1] or [N]
  at::Tensor col_scale, col_sum, col_bias;  // [K] float32 or undefined
  int32_t out_zero_point = 0;
  bool relu = false;
};

// Row vectors for pixels of images [n0, n0 + count), each image P*Q pixels.
struct RowVectors {
  at::Tensor scale, offset;
};
RowVectors row_vectors(const ForwardScales& fs, int64_t n, int64_t n0, int64_t count, int64_t per_image) {
  RowVectors rv;
  // A device copy of the expanded scales (repeat_interleave may sync to size its output).
  if (fs.scale_x.defined())
    rv.scale = fs.scale_x.expand({n}).narrow(0, n0, count).unsqueeze(1).expand({count, per_image}).contiguous().view(
        {-1});
  if (fs.row_offset_value.defined()) rv.offset = fs.row_offset_value.expand({count * per_image}).contiguous();
  return rv;
}

const float* ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

Epilogue epilogue_of(const RowVectors& rv, const at::Tensor& col_scale, const at::Tensor& col_sum,
                     const at::Tensor& col_bias, int64_t col_offset, const ForwardScales& fs) {
  auto col = [&](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() + col_offset : nullptr; };
  Epilogue e;
  e.row_scale = ptr(rv.scale), e.row_offset = ptr(rv.offset);
  e.col_scale = col(col_scale), e.col_sum = col(col_sum), e.col_bias = col(col_bias);
  e.out_zero_point = fs.out_zero_point, e.relu = fs.relu;
  return e;
}

// The implicit-GEMM kernel on dense NHWC / KRSC operands; false when it
// declines the problem. It pads with zeros, so an activation zero point
// other than 0 (padded with the zero point) must take the im2col path.
// What every family needs of the shape (conv.h: groups == 1, C % 16 == 0,
// 16-byte output rows) is checked first, so that the stem (C = 3) and grouped
// layers do not pay for the operand copies below only to be declined.
bool try_implicit_gemm(ConvProblem p, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
                       const ForwardScales& fs, int8_t pad_value) {
  if (pad_value != 0 && (p.pad_h > 0 || p.pad_w > 0)) return false;
  if (p.groups != 1 || p.c % kGpuAlign != 0 || p.k * y.element_size() % kGpuAlign != 0) return false;
  const at::Tensor x_nhwc = x.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor filter = weight.permute({0, 2, 3, 1}).contiguous();
  const int64_t k_pad = round_up(p.k, kGpuAlign);
  auto cols = [&](const at::Tensor& v) { return v.defined() ? group_columns(v, p.k, 1, k_pad) : at::Tensor(); };
  const at::Tensor col_scale = cols(fs.col_scale), col_sum = cols(fs.col_sum), col_bias = cols(fs.col_bias);
  const RowVectors rv = row_vectors(fs, p.n, 0, p.n, p.p * p.q);
  p.x = x_nhwc.const_data_ptr<int8_t>(), p.filter = filter.const_data_ptr<int8_t>(), p.y = y.data_ptr();
  p.out_type = out_type_of(y.scalar_type(), "scaled_conv2d");
  const kernels::Status s = kernels::conv2d_fprop_cuda(
      p, epilogue_of(rv, col_scale, col_sum, col_bias, 0, fs), stream_of(x));
  if (s == kernels::Status::kInvalidArgument || s == kernels::Status::kNoKernel) return false;
  check_status(s, "conv2d");
  return true;
}

// y [N, P, Q, K] = conv(x, weight) with the epilogue of fs, on the general path.
void forward_im2col(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y,
                    const ForwardScales& fs, int8_t pad_value) {
  const int64_t align = x.is_cuda() ? kGpuAlign : 1;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q;
  const int64_t depth = p.r * p.s * cg, k_pad = round_up(depth, align), n_pad = round_up(kg, align);
  // Filter as the GEMM's B operand: [G][K/G rows][(r, s, c) columns], zero-padded.
  const at::Tensor filter =
      padded(weight.view({g, kg, cg, p.r, p.s}).permute({0, 1, 3, 4, 2}).reshape({g, kg, depth}), n_pad, k_pad);
  auto cols_of = [&](const at::Tensor& v) { return v.defined() ? group_columns(v, p.k, g, n_pad) : at::Tensor(); };
  const at::Tensor col_scale = cols_of(fs.col_scale), col_sum = cols_of(fs.col_sum), col_bias = cols_of(fs.col_bias);

  const int64_t chunk = units_per_chunk(g * per_image * k_pad, p.n);
  at::Tensor cols = at::empty({g, chunk * per_image, k_pad}, x.options());
  if (k_pad > depth) cols.narrow(2, depth, k_pad - depth).zero_();  // im2col never writes the K padding
  // Groups or a ragged K: each group's GEMM writes a staging buffer, copied into y.
  const bool direct = g == 1 && n_pad == p.k;
  const at::Tensor staging = direct ? at::Tensor() : at::empty({g, chunk * per_image, n_pad}, y.options());
  const int64_t out_bytes = y.element_size();

  kernels::Im2Col a;
  a.geometry = p, a.x = x.const_data_ptr<int8_t>(), a.x_strides = nchw_strides(x), a.pad_value = pad_value;
  a.cols = cols.data_ptr<int8_t>();
  a.cols_strides = {chunk * per_image * k_pad, 1, cg, per_image * k_pad, k_pad};
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t count = std::min(chunk, p.n - n0), rows = count * per_image;
    a.pixel_begin = n0 * per_image, a.pixel_count = rows;
    run_im2col(a, x);
    const RowVectors rv = row_vectors(fs, p.n, n0, count, per_image);
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = rows, gp.n = n_pad, gp.k = k_pad;
      gp.a = cols.const_data_ptr<int8_t>() + gi * chunk * per_image * k_pad, gp.lda = k_pad;
      gp.b = filter.const_data_ptr<int8_t>() + gi * n_pad * k_pad, gp.ldb = k_pad;
      gp.d = direct ? static_cast<char*>(y.data_ptr()) + n0 * per_image * p.k * out_bytes
                    : static_cast<char*>(staging.data_ptr()) + gi * chunk * per_image * n_pad * out_bytes;
      gp.ldd = direct ? p.k : n_pad;
      gp.out_type = out_type_of(y.scalar_type(), "scaled_conv2d");
      run_gemm(gp, epilogue_of(rv, col_scale, col_sum, col_bias, gi * n_pad, fs), x, kConvGemm);
    }
    if (!direct)
      y.view({p.n * per_image, g, kg}).narrow(0, n0 * per_image, rows).copy_(
          staging.narrow(1, 0, rows).narrow(2, 0, kg).permute({1, 0, 2}));
  }
}

at::Tensor conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The same `slice` channels [c0, c0 + len) of every group of t's dimension `dim` (G groups).
at::Tensor group_slice(const at::Tensor& t, int64_t dim, int64_t groups, int64_t c0, int64_t len) {
  return t.unflatten(dim, {groups, t.size(dim) / groups}).narrow(dim + 1, c0, len).flatten(dim, dim + 1);
}

// A scaled forward convolution whose depth C/G*R*S exceeds kMaxK: the int32 convolutions of
// slices of the input channels (the same slice of every group, each of depth at most kMaxK),
// each exact, summed in int64, then the epilogue over that sum (the scales factor out of the
// sum over channels). x is padded with its zero point first, since conv2d pads with 0.
at::Tensor long_depth_forward(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight,
                              const ConvParams& cp, at::ScalarType out_dtype, const ForwardScales& fs,
                              int8_t pad_value) {
  const int64_t cg = p.c / p.groups, slice = kernels::kMaxK / (p.r * p.s);
  const at::Tensor xp = pad_value == 0 ? x : at::constant_pad_nd(x, {p.pad_w, p.pad_w, p.pad_h, p.pad_h}, pad_value);
  const std::array<int64_t, 2> padding = pad_value == 0 ? cp.padding : std::array<int64_t, 2>{0, 0};
  const at::Tensor acc = sum_slices_in_int64(cg, slice, [&](int64_t c0, int64_t len) {
    return conv2d_kernel(group_slice(xp, 1, p.groups, c0, len), weight.narrow(1, c0, len), cp.stride, padding,
                         cp.dilation, p.groups);
  });
  const int64_t per_image = p.p * p.q;
  const at::Tensor row_scale = fs.scale_x.expand({p.n}).unsqueeze(1).expand({p.n, per_image}).reshape({-1});
  at::Tensor col_offset;  // sum (x - z) w = acc - z * (sum of the filter of each output channel)
  if (pad_value != 0) col_offset = weight.sum({1, 2, 3}, false, at::kLong).mul_(-static_cast<int64_t>(pad_value));
  const std::optional<at::Tensor> bias = fs.col_bias.defined() ? std::optional<at::Tensor>(fs.col_bias) : std::nullopt;
  const at::Tensor y = epilogue_on_int64(acc.permute({0, 2, 3, 1}).reshape({-1, p.k}), col_offset, row_scale,
                                         fs.col_scale.expand({p.k}), bias, out_dtype, fs.out_zero_point, fs.relu);
  return as_nchw(y.view({p.n, p.p, p.q, p.k}));
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const ConvParams& cp, at::ScalarType out_dtype,
                   const ForwardScales& fs, int8_t pad_value, const char* op) {
  const ConvProblem p = problem_of(forward_dims<false>(x, weight, cp, op, out_dtype == at::kInt), cp);
  if (p.c / p.groups * p.r * p.s > kernels::kMaxK)
    return long_depth_forward(p, x, weight, cp, out_dtype, fs, pad_value);
  const at::Tensor y = new_output({p.n, p.p, p.q, p.k}, x.options().dtype(out_dtype));
  c10::DeviceGuard guard(x.device());
  // The implicit-GEMM kernel reads the filter as KRSC: a channels_last weight as it is (no copy).
  if (!x.is_cuda() || !try_implicit_gemm(p, x, weight, y, fs, pad_value))
    forward_im2col(p, x, weight.contiguous(), y, fs, pad_value);
  return as_nchw(y);
}

at::Tensor conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  return forward(x, weight, conv_params("conv2d", stride, padding, dilation, groups), at::kInt, ForwardScales{}, 0,
                 "conv2d");
}

at::Tensor conv2d_meta(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto d =
      forward_dims<true>(x, weight, conv_params("conv2d", stride, padding, dilation, groups), "conv2d", true);
  return at::empty_symint({d.n, d.k, d.p, d.q},
                          x.options().dtype(at::kInt).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- scaled_conv2d ---------------------------------------------------------------------

template <bool kSym>
Dims<kSym> scaled_dims(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                       const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                       const std::optional<at::Tensor>& bias, const ConvParams& cp, at::ScalarType out_dtype,
                       double out_scale, int64_t out_zero_point) {
  using S = Shape<kSym>;
  const char* op = "scaled_conv2d";
  const auto d = forward_dims<kSym>(x, weight, cp, op, false);
  check_scaled_output(out_dtype, out_scale, out_zero_point, op, "conv2d");
  check_dtype(scale_x, at::kFloat, op, "scale_x");
  check_dtype(scale_w, at::kFloat, op, "scale_w");
  check_epilogue_vector<kSym>(scale_x, d.n, x, op, "scale_x", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_w, d.k, x, op, "scale_w", "per tensor or per output channel");
  if (zero_point_x) {
    check_dtype(*zero_point_x, at::kInt, op, "zero_point_x");
    check_same_device(*zero_point_x, x, op, "zero_point_x");
    TORCH_CHECK_VALUE(S::numel(*zero_point_x) == 1, op, ": zero_point_x must have one element (per tensor), got shape ",
                      shape_str(*zero_point_x));
  }
  if (bias) check_bias<kSym>(*bias, d.k, x, op, "K");
  return d;
}

at::Tensor scaled_conv2d_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                                const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                at::ScalarType out_dtype, double out_scale, int64_t out_zero_point, bool relu) {
  const ConvParams cp = conv_params("scaled_conv2d", stride, padding, dilation, groups);
  scaled_dims<false>(x, weight, scale_x, scale_w, zero_point_x, bias, cp, out_dtype, out_scale, out_zero_point);
  // The pad value must be known on the host (one sync for a GPU tensor).
  const int64_t zp = zero_point_x ? zero_point_x->item<int32_t>() : 0;
  TORCH_CHECK_VALUE(zp >= -128 && zp <= 127, "scaled_conv2d: zero_point_x must be in [-128, 127], got ", int_str(zp));
  ForwardScales fs;
  fs.scale_x = scale_x.reshape({-1});
  // Requantizing to int8 folds 1/out_scale into the column vectors (as scaled_gemm does); float
  // outputs take them as they are (no kernel, no allocation per call).
  auto folded = [&](const at::Tensor& v) {
    return out_dtype == at::kChar ? v.to(at::kFloat).mul(1.0 / out_scale) : v.to(at::kFloat);
  };
  fs.col_scale = folded(scale_w.reshape({-1}));
  if (bias) fs.col_bias = folded(*bias);
  // An asymmetric x: sum (x - z) w = acc - z * (sum of the filter of each output channel).
  if (zp != 0) {
    fs.row_offset_value = at::full({1}, static_cast<float>(-zp), x.options().dtype(at::kFloat));
    fs.col_sum = weight.sum({1, 2, 3}, false, at::kInt).to(at::kFloat);
  }
  fs.out_zero_point = static_cast<int32_t>(out_zero_point), fs.relu = relu;
  return forward(x, weight, cp, out_dtype, fs, static_cast<int8_t>(zp), "scaled_conv2d");
}

at::Tensor scaled_conv2d_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale_x,
                              const at::Tensor& scale_w, const std::optional<at::Tensor>& zero_point_x,
                              const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype, double out_scale,
                              int64_t out_zero_point, bool relu) {
  const ConvParams cp = conv_params("scaled_conv2d", stride, padding, dilation, groups);
  const auto d =
      scaled_dims<true>(x, weight, scale_x, scale_w, zero_point_x, bias, cp, out_dtype, out_scale, out_zero_point);
  return at::empty_symint({d.n, d.k, d.p, d.q},
                          x.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- dgrad ----------------------------------------------------------------------------

// grad_in [N, H, W, C] (dense NHWC) = dgrad(grad_out, weight): the int32 sums, or with
// scales.scale_n set those sums rescaled (kernels::Col2ImScales) into grad_in's dtype.
void dgrad_into(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& grad_in,
                const kernels::Col2ImScales& scales) {
  const int64_t align = grad_out.is_cuda() ? kGpuAlign : 1;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q;
  const int64_t depth = p.r * p.s * cg, kg_pad = round_up(kg, align), n_pad = round_up(depth, align);
  // A: dY per group [G][pixels][K/G]; B: W^T per group [G][(r, s, c)][K/G].
  const at::Tensor dy = padded(
      grad_out.permute({0, 2, 3, 1}).reshape({p.n * per_image, g, kg}).permute({1, 0, 2}), p.n * per_image, kg_pad);
  const at::Tensor wt = padded(
      weight.contiguous().view({g, kg, cg, p.r, p.s}).permute({0, 3, 4, 2, 1}).reshape({g, depth, kg}), n_pad, kg_pad);

  const int64_t chunk = units_per_chunk(g * per_image * n_pad * 4, p.n);
  const at::Tensor dcols = at::empty({g, chunk * per_image, n_pad}, grad_out.options().dtype(at::kInt));
  kernels::Col2Im c;
  c.geometry = p, c.cols_type = kernels::ColumnType::kInt32;
  c.cols_strides = {chunk * per_image * n_pad, 1, cg, per_image * n_pad, n_pad};
  c.cols = dcols.const_data_ptr<int32_t>(), c.image_strides = nhwc_strides(grad_in);
  const int64_t image_bytes = grad_in.element_size();
  for (int64_t n0 = 0; n0 < p.n; n0 += chunk) {
    const int64_t count = std::min(chunk, p.n - n0), rows = count * per_image;
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = rows, gp.n = n_pad, gp.k = kg_pad;
      gp.a = dy.const_data_ptr<int8_t>() + (gi * p.n * per_image + n0 * per_image) * kg_pad, gp.lda = kg_pad;
      gp.b = wt.const_data_ptr<int8_t>() + gi * n_pad * kg_pad, gp.ldb = kg_pad;
      gp.d = dcols.data_ptr<int32_t>() + gi * chunk * per_image * n_pad, gp.ldd = n_pad;
      run_gemm(gp, Epilogue{}, grad_out, kConvGemm);
    }
    c.geometry.n = count;
    c.image = static_cast<char*>(grad_in.data_ptr()) + n0 * p.h * p.w * p.c * image_bytes;
    c.scales = scales_from(scales, n0);
    run_col2im(c, grad_out, 4, image_bytes);
  }
}

at::Tensor conv2d_dgrad_kernel(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups) {
  const char* op = "conv2d_dgrad";
  const ConvParams cp = conv_params(op, stride, padding, dilation, groups);
  const ConvProblem p = problem_of(dgrad_dims<false>(grad_out, weight, input_size, cp, op, true), cp);
  c10::DeviceGuard guard(grad_out.device());
  const at::Tensor grad_in = new_output({p.n, p.h, p.w, p.c}, grad_out.options().dtype(at::kInt));
  dgrad_into(p, grad_out, weight, grad_in, {});
  return as_nchw(grad_in);
}

at::Tensor conv2d_dgrad_meta(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  const char* op = "conv2d_dgrad";
  const auto d =
      dgrad_dims<true>(grad_out, weight, input_size, conv_params(op, stride, padding, dilation, groups), op, true);
  return at::empty_symint({d.n, d.c, d.h, d.w},
                          grad_out.options().dtype(at::kInt).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- scaled_conv2d_dgrad ------------------------------------------------------------------

template <bool kSym>
Dims<kSym> scaled_dgrad_dims(const at::Tensor& grad_out, const at::Tensor& weight, const at::Tensor& scale_grad_out,
                             const at::Tensor& scale_weight, at::IntArrayRef input_size, const ConvParams& cp,
                             at::ScalarType out_dtype) {
  const char* op = "scaled_conv2d_dgrad";
  const auto d = dgrad_dims<kSym>(grad_out, weight, input_size, cp, op, false);
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kBFloat16 || out_dtype == at::kHalf, op,
                   ": out_dtype must be bfloat16, float16 or float32, got ", out_dtype);
  check_dtype(scale_grad_out, at::kFloat, op, "scale_grad_out");
  check_dtype(scale_weight, at::kFloat, op, "scale_weight");
  check_epilogue_vector<kSym>(scale_grad_out, d.n, grad_out, op, "scale_grad_out", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_weight, d.c, grad_out, op, "scale_weight", "per tensor or per input channel");
  return d;
}

// The CPU kernel writes float32 (cast afterwards), the GPU kernel any float dtype.
at::ScalarType scaled_dgrad_staging(const at::Tensor& grad_out, at::ScalarType out_dtype) {
  return grad_out.is_cuda() ? out_dtype : at::kFloat;
}

// A scaled dgrad whose depth K/G*R*S exceeds kMaxK: the int32 dgrads of slices of the output
// channels (the same slice of every group, each of depth at most kMaxK), each exact, summed in
// int64, then scaled per image and input channel.
at::Tensor long_depth_dgrad(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& weight,
                            const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                            at::IntArrayRef input_size, const ConvParams& cp, at::ScalarType out_dtype) {
  const int64_t kg = p.k / p.groups, slice = kernels::kMaxK / (p.r * p.s);
  const at::Tensor acc = sum_slices_in_int64(kg, slice, [&](int64_t k0, int64_t len) {
    return conv2d_dgrad_kernel(group_slice(grad_out, 1, p.groups, k0, len), group_slice(weight, 0, p.groups, k0, len),
                               input_size, cp.stride, cp.padding, cp.dilation, p.groups);
  });
  const at::Tensor scale_n = scale_grad_out.reshape({-1}).expand({p.n}).reshape({p.n, 1, 1, 1});
  const at::Tensor scale_c = scale_weight.reshape({-1}).expand({p.c}).reshape({1, p.c, 1, 1});
  return acc.to(at::kFloat).mul_(scale_n).mul_(scale_c).to(out_dtype);
}

at::Tensor scaled_conv2d_dgrad_kernel(const at::Tensor& grad_out, const at::Tensor& weight,
                                      const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                                      at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype) {
  const ConvParams cp = conv_params("scaled_conv2d_dgrad", stride, padding, dilation, groups);
  const ConvProblem p = problem_of(
      scaled_dgrad_dims<false>(grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype), cp);
  c10::DeviceGuard guard(grad_out.device());
  if (p.k / p.groups * p.r * p.s > kernels::kMaxK)
    return long_depth_dgrad(p, grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype);
  const at::ScalarType staging = scaled_dgrad_staging(grad_out, out_dtype);
  const at::Tensor grad_in = new_output({p.n, p.h, p.w, p.c}, grad_out.options().dtype(staging));
  const at::Tensor sn = scale_grad_out.contiguous(), sc = scale_weight.contiguous();
  kernels::Col2ImScales scales;
  scales.scale_n = sn.const_data_ptr<float>(), scales.per_image = sn.numel() > 1;
  scales.scale_c = sc.const_data_ptr<float>(), scales.per_channel = sc.numel() > 1;
  scales.out_type = out_type_of(staging, "scaled_conv2d_dgrad");
  dgrad_into(p, grad_out, weight, grad_in, scales);
  return staging == out_dtype ? as_nchw(grad_in) : as_nchw(grad_in).to(out_dtype);
}

at::Tensor scaled_conv2d_dgrad_meta(const at::Tensor& grad_out, const at::Tensor& weight,
                                    const at::Tensor& scale_grad_out, const at::Tensor& scale_weight,
                                    at::IntArrayRef input_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, int64_t groups, at::ScalarType out_dtype) {
  const ConvParams cp = conv_params("scaled_conv2d_dgrad", stride, padding, dilation, groups);
  const auto d = scaled_dgrad_dims<true>(grad_out, weight, scale_grad_out, scale_weight, input_size, cp, out_dtype);
  return at::empty_symint({d.n, d.c, d.h, d.w},
                          grad_out.options().dtype(out_dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- wgrad ----------------------------------------------------------------------------

// wgrad's GEMM is [K/G x depth] with the pixels (up to 131071 per call) as
// GEMM-K: a few output tiles, so one GEMM would leave most SMs idle. A chunk
// of pixels is split into `slices` slices of `slice` pixels (a multiple of
// align), one batch entry each, enough for kWgradTiles output tiles but no
// slice shorter than kWgradMinSlice pixels. When one chunk takes all the
// pixels, a split that ends exactly at the last pixel (down to half as many
// slices) is preferred: dY^T then needs no zero padding past it.
constexpr int64_t kWgradTiles = 256, kWgradMinSlice = 1024, kWgradTile = 128;
struct WgradSplit {
  int64_t slices, slice;
};
WgradSplit wgrad_split(int64_t rows, int64_t cols, int64_t chunk, int64_t align, int64_t pixels) {
  const int64_t tiles = ceil_div(rows, kWgradTile) * ceil_div(cols, kWgradTile);
  const int64_t most = std::max<int64_t>(1, chunk / kWgradMinSlice);
  const int64_t slices = std::clamp(ceil_div(kWgradTiles, tiles), int64_t{1}, most);
  if (chunk >= pixels && pixels % align == 0)
    for (int64_t exact = slices; 2 * exact >= slices; --exact)
      if (pixels / align % exact == 0) return {exact, pixels / exact};
  return {slices, round_up(ceil_div(chunk, slices), align)};
}

// Whether the GEMM can read dY^T [G][K/G][pixels] where it lies: pixels
// contiguous, every row (and so every chunk start, a multiple of align) on
// an align-byte boundary, and no slice reading past the last pixel.
bool wgrad_reads_in_place(const at::Tensor& dyt, int64_t chunk, int64_t align) {
  const int64_t pixels = dyt.size(2);
  return pixels % chunk == 0 && dyt.stride(2) == 1 && dyt.stride(1) % align == 0 && dyt.stride(0) % align == 0 &&
         reinterpret_cast<uintptr_t>(dyt.const_data_ptr()) % align == 0;
}

at::Tensor conv2d_wgrad_kernel(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               int64_t groups) {
  const ConvParams cp = conv_params("conv2d_wgrad", stride, padding, dilation, groups);
  const ConvProblem p = problem_of(int32_wgrad_dims<false>(grad_out, x, kernel_size, cp), cp);
  c10::DeviceGuard guard(x.device());
  const int64_t align = x.is_cuda() ? kGpuAlign : 1;
  const int64_t g = p.groups, cg = p.c / g, kg = p.k / g, per_image = p.p * p.q, pixels = p.n * per_image;
  const int64_t depth = p.r * p.s * cg, n_pad = round_up(depth, align);
  const WgradSplit split = wgrad_split(kg, n_pad, units_per_chunk(g * n_pad, pixels, align), align, pixels);
  const int64_t chunk = split.slices * split.slice;
  // A: dY^T per group [G][K/G][pixels] (a view for dY in [K, N, P, Q] memory, Conv2d's layout),
  // else zero-padded to whole chunks (a chunk's last slice may pass the last pixel); B: the
  // columns, one row per (r, s, c), pixels contiguous.
  const at::Tensor dy_rows = grad_out.permute({1, 0, 2, 3}).reshape({g, kg, pixels});
  const at::Tensor dyt =
      wgrad_reads_in_place(dy_rows, chunk, align) ? dy_rows : padded(dy_rows, kg, round_up(pixels, chunk));
  // Only the padding rows (r, s, c) >= depth need zeros: im2col writes the rest, and the columns
  // past a chunk's pixels (stale or never written) meet the zero padding of dY^T.
  const at::Tensor cols = at::empty({g, n_pad, chunk}, x.options());
  if (n_pad > depth) cols.narrow(1, depth, n_pad - depth).zero_();
  const at::Tensor grad_w = at::empty({g, kg, n_pad}, x.options().dtype(at::kInt));
  // One int32 partial product per slice (split-K over the pixels), summed after each chunk.
  const at::Tensor partial = at::empty({split.slices, g, kg, n_pad}, grad_w.options());

  kernels::Im2Col a;
  a.geometry = p, a.x = x.const_data_ptr<int8_t>(), a.x_strides = nchw_strides(x);
  a.cols = cols.data_ptr<int8_t>(), a.cols_strides = {n_pad * chunk, chunk, cg * chunk, per_image, 1};
  for (int64_t m0 = 0; m0 < pixels; m0 += chunk) {
    const int64_t count = std::min(chunk, pixels - m0), slices = ceil_div(count, split.slice);
    a.pixel_begin = m0, a.pixel_count = count;
    run_im2col(a, x);
    for (int64_t gi = 0; gi < g; ++gi) {
      GemmProblem gp;
      gp.m = kg, gp.n = n_pad, gp.k = split.slice, gp.batch = slices;
      gp.a = dyt.const_data_ptr<int8_t>() + gi * dyt.stride(0) + m0, gp.lda = dyt.stride(1);
      gp.b = cols.const_data_ptr<int8_t>() + gi * n_pad * chunk, gp.ldb = chunk;
      gp.batch_stride_a = gp.batch_stride_b = split.slice;
      gp.d = partial.data_ptr<int32_t>() + gi * kg * n_pad, gp.ldd = n_pad, gp.batch_stride_d = g * kg * n_pad;
      run_gemm(gp, Epilogue{}, x, kConvGemm);
    }
    // Exact: every partial sum is bounded by the whole one (N*P*Q <= kMaxK).
    const at::Tensor sum = partial.narrow(0, 0, slices).sum(0, false, at::kInt);
    m0 == 0 ? grad_w.copy_(sum) : grad_w.add_(sum);
  }
  return grad_w.narrow(2, 0, depth).reshape({p.k, p.r, p.s, cg}).permute({0, 3, 1, 2}).contiguous();
}

at::Tensor conv2d_wgrad_meta(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t groups) {
  const auto d =
      int32_wgrad_dims<true>(grad_out, x, kernel_size, conv_params("conv2d_wgrad", stride, padding, dilation, groups));
  return at::empty_symint({d.k, d.c / groups, d.r, d.s}, x.options().dtype(at::kInt));
}

// --- scaled wgrad: per-image scales, float32 result ----------------------------------

template <bool kSym>
Dims<kSym> scaled_wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                             const at::Tensor& scale_x, at::IntArrayRef kernel_size, const ConvParams& cp) {
  const char* op = "scaled_conv2d_wgrad";
  const auto d = wgrad_dims<kSym>(grad_out, x, kernel_size, cp, op);
  check_dtype(scale_grad_out, at::kFloat, op, "scale_grad_out");
  check_dtype(scale_x, at::kFloat, op, "scale_x");
  check_epilogue_vector<kSym>(scale_grad_out, d.n, grad_out, op, "scale_grad_out", "per tensor or per image");
  check_epilogue_vector<kSym>(scale_x, d.n, grad_out, op, "scale_x", "per tensor or per image");
  return d;
}

// The exact wgrad of one image (dy [1, K, P, Q], x [1, C, H, W]) in int64: conv2d_wgrad's int32
// sum where P*Q <= kMaxK; else the sum of int32 wgrads of output tiles of at most kMaxK pixels
// (bands of rows, and of columns where one row alone is longer), each over the input it reads,
// cut from the image padded explicitly (so that the tiles need no padding of their own).
at::Tensor image_wgrad_int64(const at::Tensor& dy, const at::Tensor& x, const ConvParams& cp,
                             at::IntArrayRef kernel_size) {
  const int64_t p = dy.size(2), q = dy.size(3);
  auto wgrad = [&](const at::Tensor& d, const at::Tensor& xi, at::IntArrayRef padding) {
    return conv2d_wgrad_kernel(d, xi, kernel_size, cp.stride, padding, cp.dilation, cp.groups).to(at::kLong);
  };
  if (p * q <= kernels::kMaxK) return wgrad(dy, x, cp.padding);
  const at::Tensor xp = at::constant_pad_nd(x, {cp.padding[1], cp.padding[1], cp.padding[0], cp.padding[0]}, 0);
  const int64_t tile_q = std::min(q, kernels::kMaxK), tile_p = std::max<int64_t>(1, kernels::kMaxK / tile_q);
  // Input rows (columns) that `count` output rows from p0 read along one axis.
  auto span = [&](int axis, int64_t count) {
    return (count - 1) * cp.stride[axis] + cp.dilation[axis] * (kernel_size[axis] - 1) + 1;
  };
  at::Tensor acc;
  for (int64_t p0 = 0; p0 < p; p0 += tile_p) {
    const int64_t rows = std::min(tile_p, p - p0);
    for (int64_t q0 = 0; q0 < q; q0 += tile_q) {
      const int64_t cols = std::min(tile_q, q - q0);
      const at::Tensor x_tile =
          xp.narrow(2, p0 * cp.stride[0], span(0, rows)).narrow(3, q0 * cp.stride[1], span(1, cols));
      const at::Tensor tile = wgrad(dy.narrow(2, p0, rows).narrow(3, q0, cols), x_tile, {0, 0});
      acc = acc.defined() ? acc.add_(tile) : tile;
    }
  }
  return acc;
}

// The images one at a time (image_wgrad_int64 of each, exact), scaled and summed in
// float64: the CPU kernel, and the GPU's where the implicit-GEMM kernel declines.
at::Tensor scaled_wgrad_by_image(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& image_scale,
                                 at::IntArrayRef kernel_size, const ConvParams& cp) {
  at::Tensor sum;
  for (int64_t n = 0; n < x.size(0); ++n) {
    const at::Tensor acc = image_wgrad_int64(grad_out.narrow(0, n, 1), x.narrow(0, n, 1), cp, kernel_size);
    const at::Tensor term = acc.to(at::kDouble) * image_scale.select(0, n);
    sum = n == 0 ? term : sum.add_(term);
  }
  return sum.to(at::kFloat);
}

at::Tensor scaled_conv2d_wgrad_kernel(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                                      const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const char* op = "scaled_conv2d_wgrad";
  const ConvParams cp = conv_params(op, stride, padding, dilation, groups);
  const ConvProblem p = problem_of(scaled_wgrad_dims<false>(grad_out, x, scale_grad_out, scale_x, kernel_size, cp), cp);
  c10::DeviceGuard guard(x.device());
  if (x.is_cuda()) {
    const at::Tensor dy = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor xs = x.contiguous(at::MemoryFormat::ChannelsLast);
    const at::Tensor sg = scale_grad_out.contiguous(), sx = scale_x.contiguous();
    kernels::ScaledWgrad w;
    w.geometry = p, w.grad_out = dy.const_data_ptr<int8_t>(), w.x = xs.const_data_ptr<int8_t>();
    w.scale_grad_out = sg.const_data_ptr<float>(), w.grad_out_per_tensor = sg.numel() == 1;
    w.scale_x = sx.const_data_ptr<float>(), w.x_per_tensor = sx.numel() == 1;
    w.splits = kernels::conv2d_wgrad_scaled_splits(p);
    const at::Tensor partial = at::empty({w.splits, p.k, p.r, p.s, p.c}, x.options().dtype(at::kFloat));
    w.partial = partial.data_ptr<float>();
    const kernels::Status status = kernels::conv2d_wgrad_scaled_cuda(w, stream_of(x));
    // [K, R, S, C] memory: the result in channels_last, as documented (no transposing copy).
    if (status == kernels::Status::kSuccess) return partial.sum(0).permute({0, 3, 1, 2});
    if (status != kernels::Status::kInvalidArgument && status != kernels::Status::kNoKernel) check_status(status, op);
  }
  // Per image: the float32 product of its two scales, as the GPU kernel forms it.
  const at::Tensor image_scale = (scale_grad_out.expand({p.n}) * scale_x.expand({p.n})).to(at::kDouble);
  return scaled_wgrad_by_image(grad_out, x, image_scale, kernel_size, cp).contiguous(at::MemoryFormat::ChannelsLast);
}

at::Tensor scaled_conv2d_wgrad_meta(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& scale_grad_out,
                                    const at::Tensor& scale_x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const ConvParams cp = conv_params("scaled_conv2d_wgrad", stride, padding, dilation, groups);
  const auto d = scaled_wgrad_dims<true>(grad_out, x, scale_grad_out, scale_x, kernel_size, cp);
  return at::empty_symint({d.k, d.c / groups, d.r, d.s},
                          x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
}

// --- im2col / col2im (torch.nn.functional.unfold / fold) -------------------------------

bool nhwc_layout(c10::string_view layout, const char* op) {
  TORCH_CHECK_VALUE(layout == "NCHW" || layout == "NHWC", op, ": layout must be 'NCHW' or 'NHWC', got '", layout,
                    "'");
  return layout == "NHWC";
}

// Column strides of a [N, C*R*S, L] (NCHW) or [N, L, R*S*C] (NHWC) tensor, any strides.
ColumnStrides unfold_strides(const at::Tensor& cols, bool nhwc, int64_t c, int64_t taps) {
  if (nhwc) return {0, cols.stride(2), c * cols.stride(2), cols.stride(0), cols.stride(1)};
  return {0, taps * cols.stride(1), cols.stride(1), cols.stride(0), cols.stride(2)};
}

template <bool kSym>
Dims<kSym> im2col_dims(const at::Tensor& x, at::IntArrayRef kernel_size, const ConvParams& cp, bool nhwc) {
  using S = Shape<kSym>;
  check_int8_4d(x, "im2col", "x", nhwc ? "[N, H, W, C]" : "[N, C, H, W]");
  const auto rs = hw_pair(kernel_size, "im2col", "kernel_size", 1);
  const int cd = nhwc ? 3 : 1, hd = nhwc ? 1 : 2, wd = nhwc ? 2 : 3;
  return conv_dims(S::size(x, 0), S::size(x, cd), S::size(x, hd), S::size(x, wd), S::size(x, cd), rs[0], rs[1], cp,
                   "im2col");
}

template <class Int>
std::vector<Int> im2col_shape(const ConvDims<Int>& d, bool nhwc) {
  const Int taps_c = size_product(d.c, Int(d.r * d.s), "im2col", "C*R*S");
  const Int pixels = size_product(d.p, d.q, "im2col", "the output pixels L");
  return nhwc ? std::vector<Int>{d.n, pixels, taps_c} : std::vector<Int>{d.n, taps_c, pixels};
}

at::Tensor im2col_kernel(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                         at::IntArrayRef padding, at::IntArrayRef stride, int64_t pad_value, c10::string_view layout) {
  const bool nhwc = nhwc_layout(layout, "im2col");
  const ConvParams cp = conv_params("im2col", stride, padding, dilation, 1);
  TORCH_CHECK_VALUE(pad_value >= -128 && pad_value <= 127, "im2col: pad_value must be in [-128, 127], got ",
                    int_str(pad_value));
  const auto d = im2col_dims<false>(x, kernel_size, cp, nhwc);
  const at::Tensor cols = new_output(im2col_shape(d, nhwc), x.options());
  c10::DeviceGuard guard(x.device());
  kernels::Im2Col a;
  a.geometry = problem_of(d, cp);
  a.x = x.const_data_ptr<int8_t>(), a.x_strides = nhwc ? nhwc_strides(x) : nchw_strides(x);
  a.pad_value = static_cast<int8_t>(pad_value);
  a.cols = cols.data_ptr<int8_t>(), a.cols_strides = unfold_strides(cols, nhwc, d.c, d.r * d.s);
  a.pixel_count = d.n * d.p * d.q;
  run_im2col(a, x);
  return cols;
}

at::Tensor im2col_meta(const at::Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef dilation,
                       at::IntArrayRef padding, at::IntArrayRef stride, int64_t pad_value, c10::string_view layout) {
  const bool nhwc = nhwc_layout(layout, "im2col");
  const auto d = im2col_dims<true>(x, kernel_size, conv_params("im2col", stride, padding, dilation, 1), nhwc);
  return at::empty_symint(im2col_shape(d, nhwc), x.options());
}

at::ScalarType col2im_sum_type(const at::Tensor& cols) {
  const auto t = cols.scalar_type();
  TORCH_CHECK_TYPE(t == at::kChar || t == at::kInt || t == at::kFloat,
                   "col2im: cols must be int8, int32 or float32, got ", t);
  return t == at::kFloat ? at::kFloat : at::kInt;
}

template <bool kSym>
Dims<kSym> col2im_dims(const at::Tensor& cols, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                       const ConvParams& cp, bool nhwc) {
  using S = Shape<kSym>;
  col2im_sum_type(cols);
  TORCH_CHECK_VALUE(cols.dim() == 3, "col2im: cols must be 3-D ", nhwc ? "[N, L, R*S*C]" : "[N, C*R*S, L]",
                    ", got shape ", shape_str(cols));
  const auto hw = hw_pair(output_size, "col2im", "output_size", 1);
  const auto rs = hw_pair(kernel_size, "col2im", "kernel_size", 1);
  const auto taps_c = S::size(cols, nhwc ? 2 : 1), pixels = S::size(cols, nhwc ? 1 : 2);
  const auto known_taps_c = S::known(taps_c);
  TORCH_CHECK_VALUE(!known_taps_c || (*known_taps_c > 0 && *known_taps_c % (rs[0] * rs[1]) == 0),
                    "col2im: the column size ", int_str(taps_c), " is not a positive multiple of R*S = ",
                    int_str(rs[0] * rs[1]));
  const auto c = taps_c / (rs[0] * rs[1]);
  const auto d = conv_dims<typename S::Int>(S::size(cols, 0), c, hw[0], hw[1], c, rs[0], rs[1], cp, "col2im");
  TORCH_CHECK_VALUE(pixels == d.p * d.q, "col2im: cols ", shape_str(cols), " has ", int_str(pixels),
                    " blocks, but output_size (", int_str(hw[0]), ", ", int_str(hw[1]), ") gives ",
                    int_str(d.p * d.q));
  return d;
}

template <class Int>
std::vector<Int> col2im_shape(const ConvDims<Int>& d, bool nhwc) {
  return nhwc ? std::vector<Int>{d.n, d.h, d.w, d.c} : std::vector<Int>{d.n, d.c, d.h, d.w};
}

at::Tensor col2im_kernel(const at::Tensor& cols, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                         at::IntArrayRef dilation, at::IntArrayRef padding, at::IntArrayRef stride,
                         c10::string_view layout) {
  const bool nhwc = nhwc_layout(layout, "col2im");
  const ConvParams cp = conv_params("col2im", stride, padding, dilation, 1);
  const auto d = col2im_dims<false>(cols, output_size, kernel_size, cp, nhwc);
  const at::Tensor image = new_output(col2im_shape(d, nhwc), cols.options().dtype(col2im_sum_type(cols)));
  c10::DeviceGuard guard(cols.device());
  kernels::Col2Im c;
  c.geometry = problem_of(d, cp);
  c.cols = cols.const_data_ptr();
  c.cols_type = cols.scalar_type() == at::kChar  ? kernels::ColumnType::kInt8
                : cols.scalar_type() == at::kInt ? kernels::ColumnType::kInt32
                                                 : kernels::ColumnType::kFloat32;
  c.cols_strides = unfold_strides(cols, nhwc, d.c, d.r * d.s);
  c.image = image.data_ptr(), c.image_strides = nhwc ? nhwc_strides(image) : nchw_strides(image);
  run_col2im(c, cols, cols.element_size(), image.element_size());
  return image;
}

at::Tensor col2im_meta(const at::Tensor& cols, at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                       at::IntArrayRef dilation, at::IntArrayRef padding, at::IntArrayRef stride,
                       c10::string_view layout) {
  const bool nhwc = nhwc_layout(layout, "col2im");
  const auto d =
      col2im_dims<true>(cols, output_size, kernel_size, conv_params("col2im", stride, padding, dilation, 1), nhwc);
  return at::empty_symint(col2im_shape(d, nhwc), cols.options().dtype(col2im_sum_type(cols)));
}

// --- workspace limit ops ----------------------------------------------------------------

int64_t get_conv_workspace_limit() { return workspace_limit().load(); }

void set_conv_workspace_limit(int64_t bytes) {
  TORCH_CHECK_VALUE(bytes > 0, "set_conv_workspace_limit: bytes must be > 0, got ", int_str(bytes));
  workspace_limit().store(bytes);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "im2col(Tensor x, int[2] kernel_size, int[2] dilation=1, int[2] padding=0, int[2] stride=1, "
      "int pad_value=0, str layout='NCHW') -> Tensor");
  m.def(
      "col2im(Tensor cols, int[2] output_size, int[2] kernel_size, int[2] dilation=1, int[2] padding=0, "
      "int[2] stride=1, str layout='NCHW') -> Tensor");
  m.def(
      "conv2d(Tensor x, Tensor weight, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) "
      "-> Tensor");
  m.def(
      "scaled_conv2d(Tensor x, Tensor weight, Tensor scale_x, Tensor scale_w, Tensor? zero_point_x=None, "
      "Tensor? bias=None, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "ScalarType out_dtype=bfloat16, float out_scale=1.0, int out_zero_point=0, bool relu=False) -> Tensor");
  m.def(
      "conv2d_dgrad(Tensor grad_out, Tensor weight, int[2] input_size, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor");
  m.def(
      "scaled_conv2d_dgrad(Tensor grad_out, Tensor weight, Tensor scale_grad_out, Tensor scale_weight, "
      "int[2] input_size, int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1, "
      "ScalarType out_dtype=float32) -> Tensor");
  m.def(
      "conv2d_wgrad(Tensor grad_out, Tensor x, int[2] kernel_size, int[2] stride=1, int[2] padding=0, "
      "int[2] dilation=1, int groups=1) -> Tensor");
  m.def(
      "scaled_conv2d_wgrad(Tensor grad_out, Tensor x, Tensor scale_grad_out, Tensor scale_x, int[2] kernel_size, "
      "int[2] stride=1, int[2] padding=0, int[2] dilation=1, int groups=1) -> Tensor");
  m.def("get_conv_workspace_limit() -> int", get_conv_workspace_limit);
  m.def("set_conv_workspace_limit(int bytes) -> ()", set_conv_workspace_limit);
}

namespace {
// The CPU and CUDA kernels are the same functions: they pick the kernel layer's
// CPU or GPU entry points from the tensors' device.
void impl_conv_kernels(torch::Library& m) {
  m.impl("im2col", im2col_kernel);
  m.impl("col2im", col2im_kernel);
  m.impl("conv2d", conv2d_kernel);
  m.impl("scaled_conv2d", scaled_conv2d_kernel);
  m.impl("conv2d_dgrad", conv2d_dgrad_kernel);
  m.impl("scaled_conv2d_dgrad", scaled_conv2d_dgrad_kernel);
  m.impl("conv2d_wgrad", conv2d_wgrad_kernel);
  m.impl("scaled_conv2d_wgrad", scaled_conv2d_wgrad_kernel);
}
}  // namespace

TORCH_LIBRARY_IMPL(int8, CPU, m) { impl_conv_kernels(m); }

#ifdef TORCH_INT8_WITH_CUDA
TORCH_LIBRARY_IMPL(int8, CUDA, m) { impl_conv_kernels(m); }
#endif

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("im2col", im2col_meta);
  m.impl("col2im", col2im_meta);
  m.impl("conv2d", conv2d_meta);
  m.impl("scaled_conv2d", scaled_conv2d_meta);
  m.impl("conv2d_dgrad", conv2d_dgrad_meta);
  m.impl("scaled_conv2d_dgrad", scaled_conv2d_dgrad_meta);
  m.impl("conv2d_wgrad", conv2d_wgrad_meta);
  m.impl("scaled_conv2d_wgrad", scaled_conv2d_wgrad_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) {
  impl_without_derivatives(m, {"im2col", "col2im", "conv2d", "scaled_conv2d", "conv2d_dgrad", "scaled_conv2d_dgrad",
                               "conv2d_wgrad", "scaled_conv2d_wgrad"});
}

}  // namespace torch_int8::ops
