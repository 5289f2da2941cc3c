#include "common.h"

#include <cstdlib>
#include <limits>

namespace torch_int8::ops {

bool poison_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("TORCH_INT8_POISON");
    return v && *v && std::string(v) != "0";
  }();
  return enabled;
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_enabled() && out.numel() > 0) {
    if (at::isFloatingType(out.scalar_type()))
      out.fill_(std::numeric_limits<float>::quiet_NaN());
    else
      out.fill_(out.scalar_type() == at::kChar ? -0x5B : -0x5A5A5A5B);
  }
  return out;
}

std::string int_str(int64_t v) { return std::to_string(v); }

std::string float_str(double v) { return std::to_string(v); }

std::string int_str(const c10::SymInt& v) {
  const auto known = v.maybe_as_int();
  return known ? std::to_string(*known) : "s?";
}

std::string shape_str(const at::Tensor& t) {
  const bool sym = symbolic(t);
  std::string r = "[";
  for (int64_t d = 0; d < t.dim(); ++d) r += (d ? ", " : "") + (sym ? int_str(t.sym_size(d)) : int_str(t.size(d)));
  return r + "]";
}

void check_status(kernels::Status s, const char* op) {
  TORCH_CHECK(s != kernels::Status::kNoKernel, op,
              ": no kernel in this build runs on this GPU; rebuild with TORCH_CUDA_ARCH_LIST including its "
              "compute capability (built: ", kernels::built_gemm_families(), ")");
  TORCH_CHECK(s == kernels::Status::kSuccess, op, ": kernel failed: ", kernels::status_string(s));
}

void* current_stream(const at::Device& device) {
#ifdef TORCH_INT8_WITH_CUDA
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#else
  TORCH_CHECK(false, "torch_int8 was built without CUDA");
#endif
}

}  // namespace torch_int8::ops
