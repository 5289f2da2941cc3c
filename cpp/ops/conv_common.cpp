// Tensor plumbing of the convolution ops (conv_common.h).
#include "conv_common.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace torch_int8::ops {

at::Tensor padded(const at::Tensor& t, int64_t rows_pad, int64_t cols_pad) {
  if (t.size(1) == rows_pad && t.size(2) == cols_pad) return t.contiguous();
  return at::constant_pad_nd(t, {0, cols_pad - t.size(2), 0, rows_pad - t.size(1)}, 0).contiguous();
}

at::Tensor group_columns(const at::Tensor& v, int64_t k, int64_t groups, int64_t n_pad) {
  const at::Tensor full = v.to(at::kFloat).reshape({-1}).expand({k}).reshape({groups, 1, k / groups});
  return padded(full, 1, n_pad).view({groups * n_pad});
}

at::Tensor group_slice(const at::Tensor& t, int64_t dim, int64_t groups, int64_t c0, int64_t len) {
  return t.unflatten(dim, {groups, t.size(dim) / groups}).narrow(dim + 1, c0, len).flatten(dim, dim + 1);
}

namespace {
// Output pixels (n, l) of an image batch -> the element offset of pixel m in a column buffer.
int64_t pixel_start(const kernels::ColumnStrides& cs, int64_t per_image, int64_t m) {
  return (m / per_image) * cs.n + (m % per_image) * cs.pixel;
}
}  // namespace

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

}  // namespace torch_int8::ops
