// The dispatch table: which kernel family serves which GPU. A family is in the
// table only when CMake built it for at least one architecture.
#include <cstdlib>
#include <cstring>
#include <string>

#include "families.h"

namespace torch_int8::kernels {
namespace {

struct Family {
  const char* name;
  int min_cc;  // lowest compute capability whose GPUs run this family's code
  int max_cc;
  detail::GemmFamilyFn run;
  const char* archs;
};

// Preferred first. sm_90a code runs on compute capability 9.0 only.
constexpr Family kFamilies[] = {
#ifdef TORCH_INT8_SM90_ARCHS
    {"sm90", 90, 90, detail::gemm_sm90, TORCH_INT8_SM90_ARCHS},
#endif
#ifdef TORCH_INT8_SM80_ARCHS
    {"sm80", 80, 1000, detail::gemm_sm80, TORCH_INT8_SM80_ARCHS},
#endif
#ifdef TORCH_INT8_SM75_ARCHS
    {"sm75", 75, 1000, detail::gemm_sm75, TORCH_INT8_SM75_ARCHS},
#endif
};

const Family* find_family(int cc) {
  if (const char* forced = std::getenv("TORCH_INT8_GEMM_BACKEND"); forced && *forced) {
    for (const Family& f : kFamilies)
      if (std::strcmp(f.name, forced) == 0 && cc >= f.min_cc) return &f;
    return nullptr;
  }
  for (const Family& f : kFamilies)
    if (cc >= f.min_cc && cc <= f.max_cc) return &f;
  return nullptr;
}

}  // namespace

const char* gemm_backend(int cc) {
  const Family* f = find_family(cc);
  return f ? f->name : nullptr;
}

const char* built_gemm_families() {
  static const std::string names = [] {
    std::string s;
    for (const Family& f : kFamilies) s += std::string(s.empty() ? "" : " ") + f.name + ":" + f.archs;
    return s;
  }();
  return names.c_str();
}

Status gemm_cuda(const GemmProblem& p, const Epilogue& e, void* stream) {
  if (p.m < 1 || p.n < 1 || p.k < 1 || p.k > kMaxPaddedK || p.batch < 1) return Status::kInvalidArgument;
  if (p.batch > 1 && p.out_type != OutType::kInt32) return Status::kInvalidArgument;
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return Status::kCudaError;
  const Family* f = find_family(major * 10 + minor);
  if (!f) return Status::kNoKernel;
  return f->run(p, e, static_cast<cudaStream_t>(stream));
}

}  // namespace torch_int8::kernels
