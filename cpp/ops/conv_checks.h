// The argument and shape checks of the convolution ops (conv_fprop.cpp, conv_dgrad.cpp,
// conv_wgrad.cpp, im2col_ops.cpp), shared by their real kernels (plain int64 sizes) and their Meta
// kernels (c10::SymInt sizes under torch.compile), and the workspace limit on their column
// buffers (set_conv_workspace_limit, registered in conv_checks.cpp).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common.h"
#include "torch_int8/conv.h"

namespace torch_int8::ops {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// --- workspace limit ------------------------------------------------------------

// How many units (images, or pixels in multiples of `granule`) one chunk
// holds when each unit needs bytes_per_unit of column buffer: as many as fit
// under the workspace limit (default 1 GiB or TORCH_INT8_CONV_WORKSPACE_MB),
// at least one granule, at most all of them.
int64_t units_per_chunk(int64_t bytes_per_unit, int64_t total, int64_t granule = 1);

// --- arguments and shapes -------------------------------------------------------

struct ConvParams {
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
};

// A (height, width) pair argument `name` of `op`, each entry in [min, kMaxGeometry].
std::array<int64_t, 2> hw_pair(at::IntArrayRef v, const char* op, const char* name, int64_t min);

ConvParams conv_params(const char* op, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                       int64_t groups);

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

template <bool kSym>
using Dims = ConvDims<typename Shape<kSym>::Int>;

// The sizes of a convolution of an [n, c, h, w] input with k output channels and an r x s filter,
// checked: the dilated filter fits the padded input, groups divide c and k, N*P*Q fits in int64.
// Instantiated for int64_t and c10::SymInt.
template <class Int>
ConvDims<Int> conv_dims(const Int& n, const Int& c, const Int& h, const Int& w, const Int& k, int64_t r, int64_t s,
                        const ConvParams& cp, const char* op);

// The kernel layer's problem of known sizes (no pointers set).
kernels::ConvProblem problem_of(const ConvDims<int64_t>& d, const ConvParams& cp);

// t is a non-empty int8 4-D tensor (`what`: its shape, for the message).
void check_int8_4d(const at::Tensor& t, const char* op, const char* name, const char* what);

// The sizes of the three products, checked (kSym: for the Meta kernels; instantiated for both).
//   forward  x [N, C, H, W] with weight [K, C/G, R, S]
//   dgrad    grad_out [N, K, P, Q] with weight [K, C/G, R, S] and the input size (H, W)
//   wgrad    grad_out [N, K, P, Q] with x [N, C, H, W] and the filter size (R, S)
// int32_result: the op returns the int32 sums, which hold at most kMaxK products (the scaled ops
// sum longer ones in int64).
template <bool kSym>
Dims<kSym> forward_dims(const at::Tensor& x, const at::Tensor& weight, const ConvParams& cp, const char* op,
                        bool int32_result);
template <bool kSym>
Dims<kSym> dgrad_dims(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef input_size,
                      const ConvParams& cp, const char* op, bool int32_result);
template <bool kSym>
Dims<kSym> wgrad_dims(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef kernel_size,
                      const ConvParams& cp, const char* op);

}  // namespace torch_int8::ops
