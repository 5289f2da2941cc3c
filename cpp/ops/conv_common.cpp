// Tensor plumbing of the convolution ops (conv_common.h).
#include "conv_common.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

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

namespace {
// Whether p is a geometry the kernels take (kernels::valid_geometry), with every size small enough
// that the index products of the CPU loops below stay in int64.
bool loops_take(const kernels::ConvProblem& p) {
  constexpr int64_t kSide = int64_t{1} << 20;
  return kernels::valid_geometry(p) && p.h < kSide && p.w < kSide && p.c < kSide && p.r < kSide && p.s < kSide &&
         p.pad_h < kSide && p.pad_w < kSide && p.stride_h < kSide && p.stride_w < kSide && p.dilation_h < kSide &&
         p.dilation_w < kSide;
}

// Whether the strided-copy im2col below takes a: loops_take, a pixel range inside the batch, and
// padding that at most quadruples an image (the copy pads the images it reads; beyond that the
// element loop, which pads nothing, runs).
bool copy_takes(const kernels::Im2Col& a) {
  const kernels::ConvProblem& p = a.geometry;
  if (!loops_take(p)) return false;
  const int64_t padded_pixels = (p.h + 2 * p.pad_h) * (p.w + 2 * p.pad_w);
  return a.pixel_begin >= 0 && a.pixel_count > 0 && a.pixel_begin + a.pixel_count <= p.n * p.p * p.q &&
         padded_pixels <= 4 * p.h * p.w + 4096;
}

// im2col on the CPU as ATen strided copies, a few times faster than the element loop of
// kernels::im2col_cpu (the reference, which the tests hold these copies to): the images the range
// touches, NHWC and padded with the pad value, seen as the [images, P, Q, G, R, S, C/G] columns
// of their pixels (a view), copied into the column buffer's view of the same shape. The range is
// cut into blocks of whole images, whole output rows and parts of one row (at most five blocks).
void im2col_by_copy(const kernels::Im2Col& a) {
  const kernels::ConvProblem& p = a.geometry;
  const kernels::ImageStrides& xs = a.x_strides;
  const kernels::ColumnStrides& cs = a.cols_strides;
  const int64_t per_image = p.p * p.q, cg = p.c / p.groups, end = a.pixel_begin + a.pixel_count;
  const int64_t n_first = a.pixel_begin / per_image, n_last = (end - 1) / per_image;
  const auto int8 = at::TensorOptions().dtype(at::kChar);
  // x's images [n_first, n_last] as NHWC, padded: [images, Hp, Wp, C], contiguous.
  const at::Tensor images = at::from_blob(const_cast<int8_t*>(a.x) + n_first * xs.n,
                                          {n_last - n_first + 1, p.h, p.w, p.c}, {xs.n, xs.h, xs.w, xs.c}, int8);
  const at::Tensor xp =
      at::constant_pad_nd(images, {0, 0, p.pad_w, p.pad_w, p.pad_h, p.pad_h}, a.pad_value).contiguous();
  const int64_t hp = xp.size(1), wp = xp.size(2);
  const int64_t start = pixel_start(cs, per_image, a.pixel_begin);
  if (p.groups == 1 && p.dilation_w == 1 && cs.c == 1 && cs.tap == p.c) {
    // The forward's layout, one group: a pixel's S taps of one filter row are S*C bytes in a row
    // of xp and in its columns, one memcpy each (the strided copy below moves short runs, slowly
    // for few channels: 8 channels at 28x28, 1.7 ms against ~0.3 ms).
    const int8_t* in = xp.const_data_ptr<int8_t>();
    const int64_t run = p.s * p.c, grain = std::max<int64_t>(1, 65536 / (p.r * run));
    at::parallel_for(a.pixel_begin, end, grain, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t n = m / per_image, oh = m % per_image / p.q, ow = m % p.q;
        const int8_t* src = in + (((n - n_first) * hp + oh * p.stride_h) * wp + ow * p.stride_w) * p.c;
        int8_t* dst = a.cols + (pixel_start(cs, per_image, m) - start);
        for (int64_t r = 0; r < p.r; ++r) std::memcpy(dst + r * run, src + r * p.dilation_h * wp * p.c, run);
      }
    });
    return;
  }
  // The column elements of the range, as one buffer to take strided views of (every stride >= 0).
  const int64_t extent = pixel_start(cs, per_image, end - 1) - start + (p.groups - 1) * cs.g + (cg - 1) * cs.c +
                         (p.r * p.s - 1) * cs.tap + 1;
  const at::Tensor cols = at::from_blob(a.cols, {extent}, int8);
  // Output pixels (n, oh, ow) for n in [n0, n0 + count), oh in [oh0, oh0 + rows), ow in [ow0, ow0 + width).
  auto copy_block = [&](int64_t n0, int64_t count, int64_t oh0, int64_t rows, int64_t ow0, int64_t width) {
    const std::vector<int64_t> sizes{count, rows, width, p.groups, p.r, p.s, cg};
    const at::Tensor src = xp.as_strided(
        sizes, {hp * wp * p.c, p.stride_h * wp * p.c, p.stride_w * p.c, cg, p.dilation_h * wp * p.c,
                p.dilation_w * p.c, 1},
        (n0 - n_first) * hp * wp * p.c + oh0 * p.stride_h * wp * p.c + ow0 * p.stride_w * p.c);
    const at::Tensor dst = cols.as_strided(sizes, {cs.n, p.q * cs.pixel, cs.pixel, cs.g, p.s * cs.tap, cs.tap, cs.c},
                                           pixel_start(cs, per_image, n0 * per_image + oh0 * p.q + ow0) - start);
    dst.copy_(src);
  };
  for (int64_t m = a.pixel_begin; m < end;) {
    const int64_t n = m / per_image, l = m % per_image, oh = l / p.q, ow = l % p.q, left = end - m;
    if (ow != 0 || left < p.q) {  // part of one output row
      const int64_t width = std::min(p.q - ow, left);
      copy_block(n, 1, oh, 1, ow, width);
      m += width;
    } else if (l != 0 || left < per_image) {  // whole output rows of one image
      const int64_t rows = std::min(p.p - oh, left / p.q);
      copy_block(n, 1, oh, rows, 0, p.q);
      m += rows * p.q;
    } else {  // whole images
      const int64_t count = left / per_image;
      copy_block(n, count, 0, p.p, 0, p.q);
      m += count * per_image;
    }
  }
}
}  // namespace

void run_im2col(const kernels::Im2Col& a, const at::Tensor& x) {
  if (x.is_cuda()) {
    check_status(kernels::im2col_cuda(a, stream_of(x)), "im2col");
    return;
  }
  if (copy_takes(a)) {
    im2col_by_copy(a);
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

namespace {
// Whether col2im_image (below) takes a: int8 / int32 columns (whose int32 sums are the same in any
// order, as two's-complement sums), and no rescaling or a float32 one, on a loops_take geometry.
bool scatter_takes(const kernels::Col2Im& a) {
  const kernels::Col2ImScales& s = a.scales;
  return a.cols_type != kernels::ColumnType::kFloat32 && loops_take(a.geometry) &&
         (!s.scale_n || (s.scale_c && s.out_type == kernels::OutType::kFloat32));
}

// Image n of col2im on the CPU as a scatter: every column's channels added into the NHWC int32 image
// position its tap reads (a run of C/G channels at a time), then the image written out, rescaled
// (float(sum) * scale_n * scale_c, as detail::scaled_sum) or as int32 sums. The element loop of
// kernels::col2im_cpu, which gathers each image element's taps, stays the reference (and takes float
// columns, whose sums depend on the order).
template <class Col>
void col2im_image(const kernels::Col2Im& a, int64_t n, std::vector<uint32_t>& sums) {
  const kernels::ConvProblem& p = a.geometry;
  const kernels::ColumnStrides& cs = a.cols_strides;
  const kernels::ImageStrides& is = a.image_strides;
  const int64_t cg = p.c / p.groups;
  sums.assign(static_cast<size_t>(p.h * p.w * p.c), 0u);
  const Col* cols = static_cast<const Col*>(a.cols) + n * cs.n;
  for (int64_t oh = 0; oh < p.p; ++oh)
    for (int64_t ow = 0; ow < p.q; ++ow)
      for (int64_t r = 0; r < p.r; ++r) {
        const int64_t h = oh * p.stride_h - p.pad_h + r * p.dilation_h;
        if (h < 0 || h >= p.h) continue;
        for (int64_t s = 0; s < p.s; ++s) {
          const int64_t w = ow * p.stride_w - p.pad_w + s * p.dilation_w;
          if (w < 0 || w >= p.w) continue;
          uint32_t* dst = sums.data() + (h * p.w + w) * p.c;
          const Col* src = cols + (oh * p.q + ow) * cs.pixel + (r * p.s + s) * cs.tap;
          for (int64_t g = 0; g < p.groups; ++g)
            for (int64_t c = 0; c < cg; ++c)
              dst[g * cg + c] += static_cast<uint32_t>(static_cast<int32_t>(src[g * cs.g + c * cs.c]));
        }
      }
  const kernels::Col2ImScales& sc = a.scales;
  for (int64_t h = 0; h < p.h; ++h)
    for (int64_t w = 0; w < p.w; ++w)
      for (int64_t c = 0; c < p.c; ++c) {
        const int32_t sum = static_cast<int32_t>(sums[(h * p.w + w) * p.c + c]);
        const int64_t offset = n * is.n + c * is.c + h * is.h + w * is.w;
        if (sc.scale_n)
          static_cast<float*>(a.image)[offset] = static_cast<float>(sum) * sc.scale_n[sc.per_image ? n : 0] *
                                                 sc.scale_c[sc.per_channel ? c : 0];
        else
          static_cast<int32_t*>(a.image)[offset] = sum;
      }
}
}  // namespace

void run_col2im(const kernels::Col2Im& a, const at::Tensor& cols, int64_t col_bytes, int64_t image_bytes) {
  if (cols.is_cuda()) {
    check_status(kernels::col2im_cuda(a, stream_of(cols)), "col2im");
    return;
  }
  if (scatter_takes(a)) {
    at::parallel_for(0, a.geometry.n, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> sums;
      for (int64_t n = begin; n < end; ++n) {
        if (a.cols_type == kernels::ColumnType::kInt8)
          col2im_image<int8_t>(a, n, sums);
        else
          col2im_image<int32_t>(a, n, sums);
      }
    });
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
