// Helpers shared by the op implementations: input checks with clear errors,
// output poisoning for tests, and running a kernel-layer call on a device.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <initializer_list>
#include <string>

#include "torch_int8/kernels.h"

#ifdef TORCH_INT8_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace torch_int8::ops {

// A dtype as Python users write it (torch.int8, not ATen's "Char").
inline std::string dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kChar: return "torch.int8";
    case at::kByte: return "torch.uint8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must be ", dtype_str(want), ", got ",
                   dtype_str(t.scalar_type()));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
                    " but the other inputs are on ", ref.device());
}

// Tests set TORCH_INT8_POISON=1 so that every output buffer starts as garbage
// and an element a kernel forgets to write cannot pass as a correct zero.
bool poison_enabled();
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Size access for the shape checks that the real kernels and the Meta kernels
// share: plain int64 for the CPU / CUDA kernels, c10::SymInt for the Meta
// kernels (torch.compile with dynamic shapes). Eager code stays clear of
// SymInt: with torch 2.11 on the GPU machine, SymInt comparisons and printing
// in our build crashed or answered wrongly.
template <bool kSymbolic>
struct Shape {
  using Int = std::conditional_t<kSymbolic, c10::SymInt, int64_t>;
  static Int size(const at::Tensor& t, int64_t d) {
    if constexpr (kSymbolic) return t.sym_size(d); else return t.size(d);
  }
  static Int numel(const at::Tensor& t) {
    if constexpr (kSymbolic) return t.sym_numel(); else return t.numel();
  }
  static std::vector<Int> sizes(const at::Tensor& t) {
    std::vector<Int> r;
    for (int64_t d = 0; d < t.dim(); ++d) r.push_back(size(t, d));
    return r;
  }
  // The value when it is known now (symbolic sizes are checked when the kernel runs).
  static std::optional<int64_t> known(const Int& v) {
    if constexpr (kSymbolic) return v.maybe_as_int(); else return v;
  }
};

// Whether t has symbolic sizes (a fake tensor under torch.compile).
inline bool symbolic(const at::Tensor& t) { return t.unsafeGetTensorImpl()->has_symbolic_sizes_strides(); }

// numel / size(d), or nullopt when it is symbolic and not known now.
inline std::optional<int64_t> known_numel(const at::Tensor& t) {
  return symbolic(t) ? t.sym_numel().maybe_as_int() : std::optional<int64_t>(t.numel());
}
inline std::optional<int64_t> known_size(const at::Tensor& t, int64_t d) {
  return symbolic(t) ? t.sym_size(d).maybe_as_int() : std::optional<int64_t>(t.size(d));
}

// Numbers in error messages are formatted with std::to_string, never streamed:
// with torch 2.11 on the GPU machine, streaming a number into the message
// (c10::str, an ostringstream) crashed inside the C++ library's locale code,
// while strings were fine. Symbolic sizes show as "s?".
std::string int_str(int64_t v);
std::string float_str(double v);
std::string int_str(const c10::SymInt& v);
std::string shape_str(const at::Tensor& t);

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// The largest kernel size, stride, padding or dilation an op takes: the GPU
// kernels index in int32, and a product of two such values fits in int64.
constexpr int64_t kMaxGeometry = INT32_MAX;

// a * b for sizes (a, b >= 0), or a clear error of `op` when the product
// (named `what`) does not fit in int64: sizes multiplied out of an op's
// arguments must never wrap around into a small, wrong number.
int64_t checked_mul(int64_t a, int64_t b, const char* op, const char* what);

// The GEMM kernels' K / ld / N granularity on the GPU (kernels.h); the ops pad
// to it there, and to 1 (no padding) on the CPU.
constexpr int64_t kGpuAlign = 16;

// The kernel-layer output type of a dtype; any other dtype is an error of `op`.
kernels::OutType out_type_of(at::ScalarType t, const char* op);

// The output arguments of a dequantizing op (scaled_gemm, scaled_conv2d): a
// float dtype, or int8 with a finite out_scale > 0 and an out_zero_point in
// int8 range. int32 results are not dequantized: they come from `int32_op`.
void check_scaled_output(at::ScalarType out_dtype, double out_scale, int64_t out_zero_point, const char* op,
                         const char* int32_op);

// An epilogue vector argument: one element (per tensor) or `len` of them (`what`), on ref's device.
template <bool kSym>
void check_epilogue_vector(const at::Tensor& v, const typename Shape<kSym>::Int& len, const at::Tensor& ref,
                           const char* op, const char* name, const char* what) {
  check_same_device(v, ref, op, name);
  const auto numel = Shape<kSym>::numel(v);
  TORCH_CHECK_VALUE(numel == 1 || (v.dim() == 1 && numel == len), op, ": ", name, " must have one element or ",
                    int_str(len), " (", what, "), got shape ", shape_str(v));
}

// The bias of a dequantizing op: a float vector [len], one entry per output
// column (`len_name`: "N" of a GEMM, "K" of a convolution), on ref's device.
template <bool kSym>
void check_bias(const at::Tensor& bias, const typename Shape<kSym>::Int& len, const at::Tensor& ref, const char* op,
                const char* len_name) {
  TORCH_CHECK_TYPE(at::isFloatingType(bias.scalar_type()), op, ": bias must be a float tensor, got ",
                   dtype_str(bias.scalar_type()));
  check_same_device(bias, ref, op, "bias");
  TORCH_CHECK_VALUE(bias.dim() == 1 && Shape<kSym>::numel(bias) == len, op, ": bias must be [", len_name, "] = [",
                    int_str(len), "], got ", shape_str(bias));
}

// A GEMM on the CPU: the int32 sums of larger products by ATen's int8 matmul
// (at::_int_mm, exact) and the reference kernel's epilogue over them
// (kernels::epilogue_cpu), of small ones by the reference kernel
// (kernels::gemm_cpu) whole; rows split across threads either way.
void gemm_cpu_parallel(const kernels::GemmProblem& p, const kernels::Epilogue& e, const char* op);

// One GEMM with epilogue on like's device, the caller holding a DeviceGuard for it: the GPU
// kernel family's, or gemm_cpu_parallel. Every op's GEMMs run here (gemm.cpp lays out tensors
// into the problem, the convolution ops their column buffers); errors name `op`.
void run_gemm(const kernels::GemmProblem& p, const kernels::Epilogue& e, const at::Tensor& like, const char* op);

// Registers impl(m) (the m.impl calls of a group's kernels) as the group's CPU kernels and, in a
// CUDA build, its CUDA kernels: the same functions, which pick the kernel layer's CPU or GPU entry
// points from the tensors' device.
#ifdef TORCH_INT8_WITH_CUDA
#define TORCH_INT8_IMPL_CPU_AND_CUDA(impl)      \
  TORCH_LIBRARY_IMPL(int8, CPU, m) { impl(m); } \
  TORCH_LIBRARY_IMPL(int8, CUDA, m) { impl(m); }
#else
#define TORCH_INT8_IMPL_CPU_AND_CUDA(impl) \
  TORCH_LIBRARY_IMPL(int8, CPU, m) { impl(m); }
#endif

// The ops have no derivatives (the layers in torch_int8.nn hold them): registers for each of
// `ops` an Autograd kernel that refuses, while grad mode is on, a tensor argument that requires
// grad, which would otherwise get no gradient without a word, and else runs the op below autograd.
void impl_without_derivatives(torch::Library& m, std::initializer_list<const char*> ops);

// The same refusal for a composite of such ops, checked once for its tensors (null entries
// skipped), so that it may call them below autograd (at::AutoDispatchBelowADInplaceOrView): one
// check instead of a boxed Autograd kernel per inner op, host time that decode-sized calls feel.
void refuse_requiring_grad(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors);

// The int64 sum of the exact int32 products part(s0, len) over the slices [s0, s0 + len) of
// [0, total), each at most `slice` long: a reduction longer than kMaxK, summed without overflow.
template <class Part>
at::Tensor sum_slices_in_int64(int64_t total, int64_t slice, const Part& part) {
  at::Tensor acc;
  for (int64_t s0 = 0; s0 < total; s0 += slice) {
    const at::Tensor p = part(s0, std::min(slice, total - s0));
    acc = acc.defined() ? acc.add_(p) : p.to(at::kLong);
  }
  return acc;
}

// The epilogue of kernels.h on int64 accumulators acc [M, N], in ATen: the products of a
// reduction longer than kMaxK, summed exactly over slices of it. Row vector [M], column vectors
// of at least N entries (float32), col_bias optional; col_offset: the zero-point correction
// -z * (sum of b's column) in int64, broadcastable to [M, N], or undefined. Rounds acc to
// float32 once.
at::Tensor epilogue_on_int64(at::Tensor acc, const at::Tensor& col_offset, const at::Tensor& row_scale,
                             const at::Tensor& col_scale, const std::optional<at::Tensor>& col_bias,
                             at::ScalarType out_dtype, int64_t out_zero_point, bool relu);

// Throws a clear error for a kernel-layer status other than success.
void check_status(kernels::Status s, const char* op);

// The stream argument kernels::*_cuda() expects for tensors on `device`.
void* current_stream(const at::Device& device);

}  // namespace torch_int8::ops
