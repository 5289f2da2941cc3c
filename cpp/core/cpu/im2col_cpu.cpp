// CPU reference im2col / col2im: plain loops over the elements of
// im2col_math.h. Single-threaded; the torch layer splits work across threads
// by pixel ranges (im2col) and images (col2im).
#include <type_traits>

#include "../im2col_math.h"

namespace torch_int8::kernels {

Status im2col_cpu(const Im2Col& a) {
  const ConvProblem& p = a.geometry;
  if (!valid_geometry(p) || a.pixel_begin < 0 || a.pixel_count < 0 ||
      a.pixel_begin + a.pixel_count > p.n * p.p * p.q)
    return Status::kInvalidArgument;
  const int64_t per_image = p.p * p.q, channels = p.c / p.groups;
  const int64_t start = detail::pixel_offset(a.cols_strides, p, a.pixel_begin);
  for (int64_t m = a.pixel_begin; m < a.pixel_begin + a.pixel_count; ++m) {
    const int64_t l = m % per_image;
    detail::ColumnIndex i{0, 0, 0, 0, m / per_image, l / p.q, l % p.q};
    for (i.g = 0; i.g < p.groups; ++i.g)
      for (i.r = 0; i.r < p.r; ++i.r)
        for (i.s = 0; i.s < p.s; ++i.s)
          for (i.c = 0; i.c < channels; ++i.c)
            a.cols[detail::column_offset(a.cols_strides, p, i) - start] = detail::im2col_value(a, i);
  }
  return Status::kSuccess;
}

Status col2im_cpu(const Col2Im& a) {
  const ConvProblem& p = a.geometry;
  if (!valid_geometry(p) || !detail::valid_scales(a, false)) return Status::kInvalidArgument;
  return detail::visit_column_type(a.cols_type, [&](auto col, auto acc) {
    using Col = decltype(col);
    using Acc = decltype(acc);
    const ImageStrides& is = a.image_strides;
    for (int64_t n = 0; n < p.n; ++n)
      for (int64_t c = 0; c < p.c; ++c)
        for (int64_t h = 0; h < p.h; ++h)
          for (int64_t w = 0; w < p.w; ++w) {
            const Acc sum = detail::col2im_value<Col, Acc, int64_t>(a, n, c, h, w);
            const int64_t offset = n * is.n + c * is.c + h * is.h + w * is.w;
            if constexpr (std::is_integral_v<Acc>) {
              if (a.scales.scale_n) {
                static_cast<float*>(a.image)[offset] = detail::scaled_sum(
                    sum, detail::scale_of_image(a.scales, n), detail::scale_of_channel(a.scales, c));
                continue;
              }
            }
            static_cast<Acc*>(a.image)[offset] = sum;
          }
    return Status::kSuccess;
  });
}

}  // namespace torch_int8::kernels
