// The GPU entry points of kernels.h in a build without CUDA: every header
// function exists in every build, and these say that no GPU kernel was built.
#include "torch_int8/conv.h"
#include "torch_int8/kernels.h"

namespace torch_int8::kernels {

const char* gemm_backend(int) { return nullptr; }
const char* device_gemm_backend(int) { return nullptr; }
const char* built_gemm_families() { return ""; }
// No family to force; clearing the override is always fine.
Status set_gemm_backend(const char* name) { return name && *name ? Status::kInvalidArgument : Status::kSuccess; }
const char* gemm_backend_override() { return nullptr; }
Status gemm_cuda(const GemmProblem&, const Epilogue&, void*) { return Status::kNoKernel; }
Status requantize_cuda(const Requantize&, void*) { return Status::kNoKernel; }
Status transpose_int8_cuda(const TransposeInt8&, void*) { return Status::kNoKernel; }
Status column_stats_cuda(const ColumnStats&, void*) { return Status::kNoKernel; }
Status quantize_rows_cuda(const QuantizeRows&, void*) { return Status::kNoKernel; }
Status batch_norm_relu_quantize_cuda(const BatchNormReluQuantize&, void*) { return Status::kNoKernel; }
Status batch_norm_relu_backward_cuda(const BatchNormReluBackward&, void*) { return Status::kNoKernel; }
Status quantize_columns_t_cuda(const QuantizeColumnsT&, void*) { return Status::kNoKernel; }
Status conv2d_fprop_cuda(const ConvProblem&, const Epilogue&, void*) { return Status::kNoKernel; }
int64_t conv2d_wgrad_scaled_splits(const ConvProblem&) { return 1; }
Status conv2d_wgrad_scaled_cuda(const ScaledWgrad&, void*) { return Status::kNoKernel; }
Status im2col_cuda(const Im2Col&, void*) { return Status::kNoKernel; }
Status col2im_cuda(const Col2Im&, void*) { return Status::kNoKernel; }

}  // namespace torch_int8::kernels
