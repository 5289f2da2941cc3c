// torch_int8 convolution kernel layer: framework-free (no torch), raw pointers and a stream.
//
// Tensors are NHWC (channels last) int8; filters are KRSC (output channel,
// filter row, filter column, input channel of the group). A convolution is the
// GEMM  Y[n*P*Q, K] = X_cols[n*P*Q, R*S*C/G] @ W[K, R*S*C/G]^T  per group, so
// the fused epilogue of kernels.h applies unchanged: its rows are output
// pixels (m = (n*P + p)*Q + q), its columns output channels.
#pragma once

#include <cstdint>

#include "torch_int8/kernels.h"

namespace torch_int8::kernels {

struct ConvProblem {
  int64_t n = 0, h = 0, w = 0, c = 0;  // input X: N x H x W x C int8, dense NHWC
  int64_t k = 0, r = 0, s = 0;         // filter W: K x R x S x (C / groups) int8, dense
  int64_t pad_h = 0, pad_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dilation_h = 1, dilation_w = 1;
  int64_t groups = 1;
  int64_t p = 0, q = 0;  // output height and width, (h + 2*pad - dilation*(r-1) - 1) / stride + 1
  const int8_t* x = nullptr;
  const int8_t* filter = nullptr;
  void* y = nullptr;  // output Y: N x P x Q x K of out_type, dense NHWC
  OutType out_type = OutType::kInt32;
};

// Implicit-GEMM forward convolution on the current device (tensor cores), with
// the epilogue of kernels.h (rows: output pixels, N*P*Q of them; columns: the K
// output channels). Padding taps read as 0, so an activation zero point other
// than 0 needs pad_h == pad_w == 0. The kernel family follows gemm_backend()
// (a forced GEMM family forces this too): sm90 and sm80 have one, others
// return kNoKernel. kInvalidArgument for what the kernels do not take; the
// caller then uses the general im2col path. Both families need groups == 1,
// C % 16 == 0, K * sizeof(out) % 16 == 0, 16-byte aligned x, filter, y and
// epilogue vectors, and C*R*S <= kMaxK. Besides:
//   sm90 (TMA im2col + wgmma): C % 32 == 0, stride <= 8, pad <= 128,
//        (R-1)*dilation_h and (S-1)*dilation_w < 255, (R-1)*dilation_h - pad_h
//        and (S-1)*dilation_w - pad_w <= 128, N*P*Q < 2^31.
//   sm80 (CUTLASS 2.x): R, S <= 32; X, W and Y each under 2^31 bytes.
Status conv2d_fprop_cuda(const ConvProblem& p, const Epilogue& e, void* stream);

// --- can_implement: which implicit-GEMM kernel takes a problem ---
//
// The implicit-GEMM kernels: conv2d_fprop_cuda and conv2d_wgrad_scaled_cuda.
enum class ConvKernel { kFprop, kWgrad };

// Whether GEMM family `family` (a name of gemm_backend; nullptr: none) has the implicit-GEMM
// kernel `kernel` and it takes a convolution of c input and k output channels in `groups` groups
// with out_bytes-byte output elements (kWgrad ignores out_bytes): the channel rules that the
// family checks before it runs, the same functions (conv_rules.h). What they check besides
// (geometry limits, 16-byte aligned pointers, C*R*S <= kMaxK) is checked when they run.
bool conv_can_implement(ConvKernel kernel, const char* family, int64_t c, int64_t k, int64_t groups,
                        int64_t out_bytes);
// Whether every family that has the kernel (built into this library or not) takes it: a rule
// that holds whichever GPU runs the convolution. Answers in a build without CUDA too.
bool conv_can_implement_everywhere(ConvKernel kernel, int64_t c, int64_t k, int64_t groups, int64_t out_bytes);

// --- Weight gradient from per-image quantized operands (implicit GEMM) ---
//
// dW[k, r, s, c] = sum over images n of
//   float(sum_{p,q} dY[n, p, q, k] * X[n, p*stride_h - pad_h + r*dilation_h, q*stride_w - pad_w + s*dilation_w, c])
//   * (scale_grad_out[n] * scale_x[n])
// (X read as 0 outside the image): every image's sum exact in int32, then
// scaled and added in float32. Images therefore need not share a scale, and
// the operands stay in the NHWC layout that quantize_rows gives them (no
// transposed copies, no column buffer). The pixels are split into `splits`
// consecutive stretches (image after image); stretch j's sum goes to
// partial[j] (the caller adds them: deterministic, no atomics).
struct ScaledWgrad {
  ConvProblem geometry;              // sizes and geometry; groups 1; its x, filter, y unused
  const int8_t* grad_out = nullptr;  // N x P x Q x K int8, dense NHWC
  const int8_t* x = nullptr;         // N x H x W x C int8, dense NHWC
  const float* scale_grad_out = nullptr;  // [N], or [1] when grad_out_per_tensor
  const float* scale_x = nullptr;         // [N], or [1] when x_per_tensor
  bool grad_out_per_tensor = false, x_per_tensor = false;
  float* partial = nullptr;  // [splits][K][R][S][C] float32
  int64_t splits = 1;
};

// How many stretches conv2d_wgrad_scaled_cuda splits this problem into on the
// current device (enough blocks to keep its SMs busy: conv_wgrad_mma.cu).
int64_t conv2d_wgrad_scaled_splits(const ConvProblem& p);

// On tensor cores of sm_80+ GPUs whose GEMM family (gemm_backend) is sm80 or
// sm90. kInvalidArgument unless groups == 1, C and K are multiples of 16,
// grad_out, x are 16-byte aligned and one image of each is under 2^31 bytes;
// kNoKernel for other families (the caller then computes the images one by one
// with conv2d_wgrad).
Status conv2d_wgrad_scaled_cuda(const ScaledWgrad& w, void* stream);

// --- General path: im2col / col2im (any stride, padding, dilation, groups) ---
//
// The column matrix unrolls every output pixel's receptive field. Its element
// (group g, channel c of the group, filter tap t = r*S + s, output pixel
// m = (n*P + p)*Q + q) is the input element
//   (n, g*C/G + c, p*stride_h - pad_h + r*dilation_h, q*stride_w - pad_w + s*dilation_w)
// or pad_value where that lies outside the image. Both directions take the
// geometry (sizes, padding, stride, dilation, groups, P, Q) from a ConvProblem
// and ignore its k, pointers and out_type. Images and column buffers are
// described by element strides, so one kernel serves NCHW, NHWC and every
// column order the GEMMs need.

// Image element (n, c, h, w) at [n*n + c*c + h*h + w*w]; dense NCHW is
// {C*H*W, H*W, W, 1}, dense NHWC is {H*W*C, 1, W*C, C}.
struct ImageStrides {
  int64_t n = 0, c = 0, h = 0, w = 0;
};

// Column element (g, c, t, m = n*P*Q + l) at [g*g + c*c + t*tap + n*n + l*pixel],
// counted from the first pixel of the range a call covers. The orders in use:
//   GEMM A operand (forward, dgrad)  [G][pixels][ld], column t*C/G + c: {pixels*ld, 1, C/G, P*Q*ld, ld}
//   GEMM B operand (wgrad)           [G][R*S*C/G][ld], row t*C/G + c:    {R*S*C/G*ld, ld, C/G*ld, P*Q, 1}
//   torch.nn.functional.unfold       [N][C*R*S][P*Q], row c*R*S + t:     {C/G*R*S*P*Q, R*S*P*Q, P*Q, C*R*S*P*Q, 1}
// (Padding columns, when ld exceeds what is written, are left to the caller.)
struct ColumnStrides {
  int64_t g = 0, c = 0, tap = 0, n = 0, pixel = 0;
};

// Whether p describes a convolution the im2col / col2im kernels take: every
// size positive, groups dividing C, and P, Q the output size of the geometry.
inline bool valid_geometry(const ConvProblem& p) {
  auto out_size = [](int64_t in, int64_t f, int64_t pad, int64_t stride, int64_t dilation) {
    return (in + 2 * pad - dilation * (f - 1) - 1) / stride + 1;
  };
  return p.n > 0 && p.h > 0 && p.w > 0 && p.c > 0 && p.r > 0 && p.s > 0 && p.groups > 0 && p.c % p.groups == 0 &&
         p.pad_h >= 0 && p.pad_w >= 0 && p.stride_h > 0 && p.stride_w > 0 && p.dilation_h > 0 && p.dilation_w > 0 &&
         p.p > 0 && p.q > 0 && p.p == out_size(p.h, p.r, p.pad_h, p.stride_h, p.dilation_h) &&
         p.q == out_size(p.w, p.s, p.pad_w, p.stride_w, p.dilation_w);
}

// A stride-1 input gradient is the forward convolution of dY with the rotated, transposed filter
// (W'[c, k, r, s] = W[k, c, R-1-r, S-1-s]) at padding dilation * (filter - 1) - padding along each
// axis: that padding {h, w}, or {-1, -1} where dgrad cannot be written so (a stride above 1, or
// padding beyond the dilated filter). The int32 op conv2d_dgrad and torch_int8.nn.Conv2d's
// backward (torch_int8._C.dgrad_as_forward_padding) both ask here.
struct ForwardPadding {
  int64_t h = -1, w = -1;
  bool valid() const { return h >= 0 && w >= 0; }
};
inline ForwardPadding dgrad_as_forward_padding(const ConvProblem& p) {
  const ForwardPadding f{p.dilation_h * (p.r - 1) - p.pad_h, p.dilation_w * (p.s - 1) - p.pad_w};
  return p.stride_h == 1 && p.stride_w == 1 && f.valid() ? f : ForwardPadding{};
}

// Writes the column elements of output pixels [pixel_begin, pixel_begin + pixel_count).
struct Im2Col {
  ConvProblem geometry;
  const int8_t* x = nullptr;
  ImageStrides x_strides;
  int8_t pad_value = 0;  // the activation zero point (0 when symmetric)
  int8_t* cols = nullptr;  // element (g, c, t, pixel_begin) of the range at cols[g*g + c*c + t*tap]
  ColumnStrides cols_strides;
  int64_t pixel_begin = 0, pixel_count = 0;
};
Status im2col_cpu(const Im2Col& a);
Status im2col_cuda(const Im2Col& a, void* stream);

// The adjoint of im2col (torch.nn.functional.fold): every image element is the
// sum of the column elements that im2col would copy from it, added in filter
// tap order (r, s ascending), so results are deterministic and equal on CPU and
// GPU. int8 and int32 columns sum into int32, float32 columns into float32.
enum class ColumnType { kInt8, kInt32, kFloat32 };

// Optional rescaling of int8 / int32 column sums (a dequantized input
// gradient): image element (n, c, h, w) is stored as
// out_type(float(sum) * scale_n[n] * scale_c[c]), float32 products left to
// right; per_image / per_channel false: the vector holds one value for all.
// out_type: kFloat32 (CPU and GPU), kBFloat16 or kFloat16 (GPU; round to
// nearest even).
struct Col2ImScales {
  const float* scale_n = nullptr;  // null: no rescaling, the image holds the int32 sums
  const float* scale_c = nullptr;
  bool per_image = false, per_channel = false;
  OutType out_type = OutType::kFloat32;
};

struct Col2Im {
  ConvProblem geometry;
  const void* cols = nullptr;  // all N*P*Q pixels
  ColumnType cols_type = ColumnType::kInt32;
  ColumnStrides cols_strides;
  void* image = nullptr;  // N x C x H x W, int32 (float32 for float32 columns; scales.out_type when rescaled)
  ImageStrides image_strides;
  Col2ImScales scales;
};
Status col2im_cpu(const Col2Im& a);
Status col2im_cuda(const Col2Im& a, void* stream);

}  // namespace torch_int8::kernels
