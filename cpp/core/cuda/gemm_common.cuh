// Pieces shared by every CUDA GEMM family: the element type of each OutType,
// status conversion, and the run-one-CUTLASS-operator helper.
#pragma once

#include <cuda_runtime_api.h>

#include <cutlass/bfloat16.h>
#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/array.h>
#include <cutlass/half.h>

#include "device_info.h"
#include "torch_int8/kernels.h"

namespace torch_int8::kernels::detail {

template <class T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<ElementD>{}) with the CUTLASS element type of t.
template <class F>
Status visit_out_type(OutType t, F&& f) {
  switch (t) {
    case OutType::kInt32: return f(TypeTag<int32_t>{});
    case OutType::kInt8: return f(TypeTag<int8_t>{});
    case OutType::kFloat16: return f(TypeTag<cutlass::half_t>{});
    case OutType::kBFloat16: return f(TypeTag<cutlass::bfloat16_t>{});
    case OutType::kFloat32: return f(TypeTag<float>{});
  }
  return Status::kInvalidArgument;
}

// rint(v) + z for the int8 output: requantized values are rounded before the
// output zero point is added (TFLite semantics; folding z into the bias would
// round ties differently).
template <class T>
struct RoundThenAdd;
template <int N>
struct RoundThenAdd<cutlass::Array<float, N>> {
  CUTLASS_HOST_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& v,
                                                         cutlass::Array<float, N> const& z) const {
    cutlass::Array<float, N> r;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) r[i] = rintf(v[i]) + z[i];
    return r;
  }
};

// Checks, sizes the workspace for, and runs one CUTLASS device-level operator.
// GEMMs with a fused epilogue need no workspace (no split-K here yet).
template <class DeviceOp>
Status run_cutlass(typename DeviceOp::Arguments const& args, cudaStream_t stream) {
  DeviceOp op;
  if (op.can_implement(args) != cutlass::Status::kSuccess) return Status::kInvalidArgument;
  if (DeviceOp::get_workspace_size(args) != 0) return Status::kInvalidArgument;
  if (op.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return Status::kCudaError;
  return op.run(stream) == cutlass::Status::kSuccess ? Status::kSuccess : Status::kCudaError;
}

// run_cutlass without DeviceOp::initialize, for CUTLASS 3.x kernels whose
// workspace initialization would only fill an output the caller has filled
// already (the row maxima, zeroed by the op): CUTLASS fills with the driver
// API (cuMemsetD32Async), which this library does not link, since CUDA torch
// loads the driver lazily and a machine without a GPU has none.
template <class DeviceOp>
Status run_cutlass_preinitialized(typename DeviceOp::Arguments const& args, cudaStream_t stream) {
  using Kernel = typename DeviceOp::GemmKernel;
  if (DeviceOp::can_implement(args) != cutlass::Status::kSuccess) return Status::kInvalidArgument;
  if (DeviceOp::get_workspace_size(args) != 0) return Status::kInvalidArgument;
  typename DeviceOp::Params params = Kernel::to_underlying_arguments(args, nullptr);
  constexpr int kSmemBytes = Kernel::SharedStorageSize;
  if (kSmemBytes >= (48 << 10) && cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       kSmemBytes) != cudaSuccess)
    return Status::kCudaError;
  return DeviceOp::run(params, stream) == cutlass::Status::kSuccess ? Status::kSuccess : Status::kCudaError;
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// A and B as rows of 16-byte chunks (kernels.h requirements): what every
// kernel that loads them 16 bytes at a time needs.
inline bool operands_aligned(const GemmProblem& p) {
  return p.k % 16 == 0 && p.lda % 16 == 0 && p.ldb % 16 == 0 && aligned16(p.a) && aligned16(p.b) &&
         (p.batch == 1 || (p.batch_stride_a % 16 == 0 && p.batch_stride_b % 16 == 0));
}

// Requirements every tensor-core family shares (kernels.h documents them).
inline bool meets_alignment(const GemmProblem& p, int out_bytes) {
  return operands_aligned(p) && (p.ldd * out_bytes) % 16 == 0 && aligned16(p.d) &&
         (p.batch == 1 || (p.batch_stride_d * out_bytes) % 16 == 0);
}

}  // namespace torch_int8::kernels::detail
