// Tensor plumbing shared by the convolution ops (conv_fprop.cpp, conv_dgrad.cpp, conv_wgrad.cpp,
// im2col_ops.cpp): strides of images for the kernel layer, padded GEMM operands, and running the
// kernel layer's im2col / col2im on a tensor's device (on the CPU split across threads); their
// GEMMs run through run_gemm (common.h).
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
// 1 GiB or TORCH_INT8_CONV_WORKSPACE_MB: conv_checks.h); only a chunk of one
// image, or a filter of one pixel, larger than the limit exceeds it.
// On the GPU the forward first tries the implicit-GEMM kernel
// (conv2d_fprop_cuda) and falls back to this path when it declines.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "common.h"
#include "torch_int8/conv.h"

namespace torch_int8::ops {

// The element strides of a logical NCHW tensor t, seen as NCHW or as NHWC [N, H, W, C] memory.
inline kernels::ImageStrides nchw_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}
inline kernels::ImageStrides nhwc_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(3), t.stride(1), t.stride(2)};
}

// An NHWC [N, P, Q, K] (or [N, H, W, C]) buffer seen as the logical NCHW tensor (channels_last memory).
inline at::Tensor as_nchw(const at::Tensor& nhwc) { return nhwc.permute({0, 3, 1, 2}); }

// A 1x1 filter at stride 1 without padding, in one group: each output pixel reads its own input
// pixel, so the GEMM operands are the images themselves (no columns to gather).
inline bool pixel_to_pixel(const kernels::ConvProblem& p) {
  return p.groups == 1 && p.r == 1 && p.s == 1 && p.stride_h == 1 && p.stride_w == 1 && p.pad_h == 0 &&
         p.pad_w == 0;
}

// Whether strides xs of an image batch of p's input shape are dense NHWC (channels_last, no gaps):
// its pixels are then rows of C channels, one after another.
inline bool dense_nhwc(const kernels::ImageStrides& xs, const kernels::ConvProblem& p) {
  return xs.c == 1 && xs.w == p.c && xs.h == p.w * p.c && xs.n == p.h * p.w * p.c;
}

// The `op` of the convolution ops' GEMMs in error messages.
constexpr const char* kConvGemm = "conv2d gemm";

inline void* stream_of(const at::Tensor& t) { return current_stream(t.device()); }

// t [G, rows, cols] zero-padded to [G, rows_pad, cols_pad] and contiguous;
// no copy when it already is.
at::Tensor padded(const at::Tensor& t, int64_t rows_pad, int64_t cols_pad);

// A per-output-channel vector [K] (or one broadcast value) as [G, n_pad]
// float32, zero-padded per group: the epilogue column vectors of the grouped
// GEMMs (readable up to round_up(N, 16)).
at::Tensor group_columns(const at::Tensor& v, int64_t k, int64_t groups, int64_t n_pad);

// The same `slice` channels [c0, c0 + len) of every group of t's dimension `dim` (G groups).
at::Tensor group_slice(const at::Tensor& t, int64_t dim, int64_t groups, int64_t c0, int64_t len);

// im2col of a.geometry's pixels [pixel_begin, pixel_begin + pixel_count) on x's device.
void run_im2col(const kernels::Im2Col& a, const at::Tensor& x);

// The rescaling of images [n0, ...) of s.
kernels::Col2ImScales scales_from(kernels::Col2ImScales s, int64_t n0);

// col2im on cols's device; col_bytes / image_bytes: the element sizes of the columns and the image.
void run_col2im(const kernels::Col2Im& a, const at::Tensor& cols, int64_t col_bytes, int64_t image_bytes);

}  // namespace torch_int8::ops
