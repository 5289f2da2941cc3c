// int8::im2col and int8::col2im (torch.nn.functional.unfold / fold on int8 images, NCHW or NHWC):
// schema, CPU / CUDA / Meta kernels.
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "conv_checks.h"
#include "conv_common.h"

namespace torch_int8::ops {
namespace {

using kernels::ColumnStrides;

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

}  // namespace

TORCH_LIBRARY_FRAGMENT(int8, m) {
  m.def(
      "im2col(Tensor x, int[2] kernel_size, int[2] dilation=1, int[2] padding=0, int[2] stride=1, "
      "int pad_value=0, str layout='NCHW') -> Tensor");
  m.def(
      "col2im(Tensor cols, int[2] output_size, int[2] kernel_size, int[2] dilation=1, int[2] padding=0, "
      "int[2] stride=1, str layout='NCHW') -> Tensor");
}

namespace {
void impl_im2col_kernels(torch::Library& m) {
  m.impl("im2col", im2col_kernel);
  m.impl("col2im", col2im_kernel);
}
}  // namespace

TORCH_INT8_IMPL_CPU_AND_CUDA(impl_im2col_kernels)

TORCH_LIBRARY_IMPL(int8, Meta, m) {
  m.impl("im2col", im2col_meta);
  m.impl("col2im", col2im_meta);
}

TORCH_LIBRARY_IMPL(int8, Autograd, m) { impl_without_derivatives(m, {"im2col", "col2im"}); }

}  // namespace torch_int8::ops
