// The dispatch table: which kernel family serves which GPU. A family is in the
// table only when CMake built it for at least one architecture.
#include <atomic>
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
#ifdef TORCH_INT8_DP4A_ARCHS
    {"dp4a", 61, 1000, detail::gemm_dp4a, TORCH_INT8_DP4A_ARCHS},
#endif
#ifdef TORCH_INT8_SIMT_ARCHS
    {"simt", 50, 1000, detail::gemm_simt, TORCH_INT8_SIMT_ARCHS},
#endif
};

const Family* family_named(const char* name) {
  for (const Family& f : kFamilies)
    if (std::strcmp(f.name, name) == 0) return &f;
  return nullptr;
}

// The family set_gemm_backend forced (process-wide), or null.
std::atomic<const Family*> g_override{nullptr};

// The name of the forced family (set_gemm_backend's, else TORCH_INT8_GEMM_BACKEND's), or null.
const char* forced_family() {
  if (const Family* f = g_override.load()) return f->name;
  const char* env = std::getenv("TORCH_INT8_GEMM_BACKEND");
  return env && *env ? env : nullptr;
}

// A forced family serves every GPU its code can run on; otherwise the first
// family made for cc does.
const Family* find_family(int cc) {
  if (const char* name = forced_family()) {
    const Family* forced = family_named(name);  // null: not a family of this build
    return forced && cc >= forced->min_cc ? forced : nullptr;
  }
  for (const Family& f : kFamilies)
    if (cc >= f.min_cc && cc <= f.max_cc) return &f;
  return nullptr;
}

// The compute capability of CUDA device `device` (e.g. 90); false on a CUDA error.
bool compute_capability(int device, int* cc) {
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  *cc = major * 10 + minor;
  return true;
}

}  // namespace

const char* gemm_backend(int cc) {
  const Family* f = find_family(cc);
  return f ? f->name : nullptr;
}

const char* device_gemm_backend(int device) {
  int cc = 0;
  return compute_capability(device, &cc) ? gemm_backend(cc) : nullptr;
}

Status set_gemm_backend(const char* name) {
  if (!name || !*name) {
    g_override.store(nullptr);
    return Status::kSuccess;
  }
  const Family* f = family_named(name);
  if (!f) return Status::kInvalidArgument;
  g_override.store(f);
  return Status::kSuccess;
}

const char* gemm_backend_override() {
  const Family* f = g_override.load();
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
  if (!epilogue_supported(e, p.out_type)) return Status::kInvalidArgument;
  int device = 0, cc = 0;
  if (cudaGetDevice(&device) != cudaSuccess || !compute_capability(device, &cc)) return Status::kCudaError;
  const auto s = static_cast<cudaStream_t>(stream);
  const Family* f = find_family(cc);
  if (!f) return Status::kNoKernel;
  return f->run(p, e, s);
}

}  // namespace torch_int8::kernels
