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

// Sizes for error messages, as plain integers (symbolic ones by name). Error
// messages never stream c10::SymInt itself: that crashed inside libc10 with
// torch 2.11 on the GPU machine.
std::string sym_str(const c10::SymInt& s);
std::string shape_str(const at::Tensor& t);

inline int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

// Throws a clear error for a kernel-layer status other than success.
void check_status(kernels::Status s, const char* op);

// The stream argument kernels::*_cuda() expects for tensors on `device`.
void* current_stream(const at::Device& device);

}  // namespace torch_int8::ops
