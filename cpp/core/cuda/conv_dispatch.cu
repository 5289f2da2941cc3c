// Implicit-GEMM convolution entry points (forward, weight gradient): check the
// geometry every kernel needs, then run the kernels of the GEMM's family choice
// (gemm_backend, so TORCH_INT8_GEMM_BACKEND forces both alike) from a table of
// the families built, as dispatch.cu does for the GEMM.
#include <cstring>
#include <limits>

#include "conv_families.h"
#include "device_info.h"

namespace torch_int8::kernels {
namespace {

// Output extent of conv.h; -1 when the (dilated) filter does not fit the padded input.
int64_t output_extent(int64_t in, int64_t pad, int64_t dilation, int64_t filter, int64_t stride) {
  const int64_t span = in + 2 * pad - dilation * (filter - 1) - 1;
  return span < 0 ? -1 : span / stride + 1;
}

// Positive extents, the output size of conv.h, extents CUTLASS's int problem
// shapes hold, and a GEMM-K whose int32 accumulator cannot overflow (the
// forward's; wgrad's reduces over pixels, each image exactly).
bool conv_geometry_ok(const ConvProblem& p) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  const bool positive = p.n > 0 && p.h > 0 && p.w > 0 && p.c > 0 && p.k > 0 && p.r > 0 && p.s > 0 &&
                        p.pad_h >= 0 && p.pad_w >= 0 && p.stride_h > 0 && p.stride_w > 0 &&
                        p.dilation_h > 0 && p.dilation_w > 0 && p.groups > 0;
  if (!positive || p.c % p.groups != 0 || p.k % p.groups != 0) return false;
  if (p.p != output_extent(p.h, p.pad_h, p.dilation_h, p.r, p.stride_h) ||
      p.q != output_extent(p.w, p.pad_w, p.dilation_w, p.s, p.stride_w))
    return false;
  const bool fits_int = p.n * p.h * p.w <= kIntMax && p.n * p.p * p.q <= kIntMax && p.c <= kIntMax &&
                        p.k <= kIntMax && p.pad_h <= kIntMax && p.pad_w <= kIntMax && p.stride_h <= kIntMax &&
                        p.stride_w <= kIntMax && p.r * p.dilation_h <= kIntMax && p.s * p.dilation_w <= kIntMax;
  return fits_int && p.c / p.groups * p.r * p.s <= kMaxK;
}

// The GEMM family of the current device (gemm_backend), or null; false on a CUDA error.
bool current_family(const char** family) {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess)
    return false;
  *family = gemm_backend(major * 10 + minor);
  return true;
}

// The implicit-GEMM kernels of a GEMM family, for the families CMake built (the
// others run every convolution as im2col + GEMM). The null entry ends the table.
struct ConvKernels {
  const char* family;
  Status (*fprop)(const ConvProblem&, const Epilogue&, cudaStream_t);
  int64_t (*wgrad_splits)(const ConvProblem&, int sm_count);
  Status (*wgrad)(const ScaledWgrad&, cudaStream_t);
};
constexpr ConvKernels kConvKernels[] = {
#ifdef TORCH_INT8_CONV_SM90
    {"sm90", detail::conv2d_fprop_sm90, detail::wgrad_mma_splits, detail::conv2d_wgrad_mma},
#endif
#ifdef TORCH_INT8_CONV_SM80
    {"sm80", detail::conv2d_fprop_sm80, detail::wgrad_mma_splits, detail::conv2d_wgrad_mma},
#endif
    {nullptr, nullptr, nullptr, nullptr},
};

// The kernels of `family`, or null.
const ConvKernels* kernels_of(const char* family) {
  for (const ConvKernels* k = kConvKernels; family && k->family; ++k)
    if (std::strcmp(k->family, family) == 0) return k;
  return nullptr;
}

}  // namespace

Status conv2d_fprop_cuda(const ConvProblem& p, const Epilogue& e, void* stream) {
  if (!conv_geometry_ok(p) || !p.x || !p.filter || !p.y) return Status::kInvalidArgument;
  const char* family = nullptr;
  if (!current_family(&family)) return Status::kCudaError;
  const ConvKernels* k = kernels_of(family);
  return k ? k->fprop(p, e, static_cast<cudaStream_t>(stream)) : Status::kNoKernel;
}

int64_t conv2d_wgrad_scaled_splits(const ConvProblem& p) {
  const char* family = nullptr;
  const ConvKernels* k = current_family(&family) ? kernels_of(family) : nullptr;
  const int sm_count = k ? detail::device_sm_count() : 0;
  return sm_count == 0 ? 1 : k->wgrad_splits(p, sm_count);
}

Status conv2d_wgrad_scaled_cuda(const ScaledWgrad& w, void* stream) {
  if (!conv_geometry_ok(w.geometry) || !w.grad_out || !w.x || !w.scale_grad_out || !w.scale_x || !w.partial ||
      w.splits < 1)
    return Status::kInvalidArgument;
  const char* family = nullptr;
  if (!current_family(&family)) return Status::kCudaError;
  const ConvKernels* k = kernels_of(family);
  return k ? k->wgrad(w, static_cast<cudaStream_t>(stream)) : Status::kNoKernel;
}

}  // namespace torch_int8::kernels
