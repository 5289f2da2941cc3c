// Helpers shared by the op implementations: input checks with clear errors,
// output poisoning for tests, and running a kernel-layer call on a device.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceGuard.h>

#include "torch_int8/kernels.h"

#ifdef TORCH_INT8_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace torch_int8::ops {

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must be ", c10::toString(want), ", got ",
                   t.scalar_type());
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

// Throws a clear error for a kernel-layer status other than success.
void check_status(kernels::Status s, const char* op);

// The stream argument kernels::*_cuda() expects for tensors on `device`.
void* current_stream(const at::Device& device);

}  // namespace torch_int8::ops
