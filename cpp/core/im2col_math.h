// One element of im2col and of col2im (conv.h), shared by the CPU and CUDA
// kernels (host-device): both read and sum in the same order, so their
// results agree bit for bit, float32 col2im included. The kernels differ only
// in how they walk the elements.
#pragma once

#include <cstdint>

#include "torch_int8/conv.h"
#include "torch_int8/fixed_point.h"  // TORCH_INT8_HD

namespace torch_int8::kernels::detail {

// A column element: group g, channel c of the group, filter tap (r, s),
// output pixel (n, oh, ow).
struct ColumnIndex {
  int64_t g, c, r, s, n, oh, ow;
};

// Offset of output pixel m = n*P*Q + l in a column buffer (before the range start is subtracted).
TORCH_INT8_HD int64_t pixel_offset(const ColumnStrides& cs, const ConvProblem& p, int64_t m) {
  const int64_t per_image = p.p * p.q;
  return (m / per_image) * cs.n + (m % per_image) * cs.pixel;
}

TORCH_INT8_HD int64_t column_offset(const ColumnStrides& cs, const ConvProblem& p, const ColumnIndex& i) {
  return i.g * cs.g + i.c * cs.c + (i.r * p.s + i.s) * cs.tap + i.n * cs.n + (i.oh * p.q + i.ow) * cs.pixel;
}

// The input coordinates column element i reads (outside the image: padding).
struct InputPoint {
  int64_t h, w;
};

TORCH_INT8_HD InputPoint input_point(const ConvProblem& p, const ColumnIndex& i) {
  return {i.oh * p.stride_h - p.pad_h + i.r * p.dilation_h, i.ow * p.stride_w - p.pad_w + i.s * p.dilation_w};
}

TORCH_INT8_HD bool inside(const ConvProblem& p, const InputPoint& x) {
  return x.h >= 0 && x.h < p.h && x.w >= 0 && x.w < p.w;
}

// Offset of input element (n, channel, x.h, x.w).
TORCH_INT8_HD int64_t input_offset(const ImageStrides& xs, int64_t n, int64_t channel, const InputPoint& x) {
  return n * xs.n + channel * xs.c + x.h * xs.h + x.w * xs.w;
}

TORCH_INT8_HD int8_t im2col_value(const Im2Col& a, const ColumnIndex& i) {
  const ConvProblem& p = a.geometry;
  const InputPoint x = input_point(p, i);
  if (!inside(p, x)) return a.pad_value;
  return a.x[input_offset(a.x_strides, i.n, i.g * (p.c / p.groups) + i.c, x)];
}

// The output coordinate whose filter tap f reads input coordinate in, or -1
// when none does. Int: the coordinate type, int64_t on the CPU, int on the GPU
// (whose launches check that the padded image sizes fit).
template <class Int>
TORCH_INT8_HD Int reading_output(Int in, Int f, Int pad, Int stride, Int dilation, Int out_size) {
  const Int shifted = in + pad - f * dilation;
  if (shifted < 0) return -1;
  const Int out = shifted / stride;
  return out * stride == shifted && out < out_size ? out : -1;
}

// Image element (n, channel c, h, w) of col2im: the sum of its column
// elements, taps in (r, s) order. Col: the column type, Acc: the sum's.
template <class Col, class Acc, class Int>
TORCH_INT8_HD Acc col2im_value(const Col2Im& a, Int n, Int c, Int h, Int w) {
  const ConvProblem& p = a.geometry;
  const Int channels = static_cast<Int>(p.c) / static_cast<Int>(p.groups);
  const Int pad_h = static_cast<Int>(p.pad_h), pad_w = static_cast<Int>(p.pad_w);
  const Int stride_h = static_cast<Int>(p.stride_h), stride_w = static_cast<Int>(p.stride_w);
  const Int dilation_h = static_cast<Int>(p.dilation_h), dilation_w = static_cast<Int>(p.dilation_w);
  const Int r_size = static_cast<Int>(p.r), s_size = static_cast<Int>(p.s);
  const Int out_h = static_cast<Int>(p.p), out_w = static_cast<Int>(p.q);
  ColumnIndex i{c / channels, c % channels, 0, 0, n, 0, 0};
  const Col* cols = static_cast<const Col*>(a.cols);
  Acc sum = 0;
  for (Int r = 0; r < r_size; ++r) {
    const Int oh = reading_output(h, r, pad_h, stride_h, dilation_h, out_h);
    if (oh < 0) continue;
    i.r = r, i.oh = oh;
    for (Int s = 0; s < s_size; ++s) {
      const Int ow = reading_output(w, s, pad_w, stride_w, dilation_w, out_w);
      if (ow < 0) continue;
      i.s = s, i.ow = ow;
      sum += static_cast<Acc>(cols[column_offset(a.cols_strides, p, i)]);
    }
  }
  return sum;
}

// A rescaled col2im sum (Col2ImScales): float32 products, left to right.
TORCH_INT8_HD float scaled_sum(int32_t sum, float scale_n, float scale_c) {
  return static_cast<float>(sum) * scale_n * scale_c;
}

// The scales of image n and channel c (one value when not per image / channel).
TORCH_INT8_HD float scale_of_image(const Col2ImScales& s, int64_t n) { return s.scale_n[s.per_image ? n : 0]; }
TORCH_INT8_HD float scale_of_channel(const Col2ImScales& s, int64_t c) { return s.scale_c[s.per_channel ? c : 0]; }

// Whether a's rescaling, if any, is one the kernels take: int8 / int32
// columns, both vectors, and float32 output (or also bfloat16 / float16 where
// `half_outputs`).
inline bool valid_scales(const Col2Im& a, bool half_outputs) {
  const Col2ImScales& s = a.scales;
  if (!s.scale_n) return true;
  const bool half = s.out_type == OutType::kBFloat16 || s.out_type == OutType::kFloat16;
  return s.scale_c && a.cols_type != ColumnType::kFloat32 &&
         (s.out_type == OutType::kFloat32 || (half && half_outputs));
}

// Calls fn(Col{}, Acc{}) with the column and sum types of t.
template <class Fn>
Status visit_column_type(ColumnType t, Fn&& fn) {
  switch (t) {
    case ColumnType::kInt8: return fn(int8_t{}, int32_t{});
    case ColumnType::kInt32: return fn(int32_t{}, int32_t{});
    case ColumnType::kFloat32: return fn(float{}, float{});
  }
  return Status::kInvalidArgument;
}

}  // namespace torch_int8::kernels::detail
