#include "common.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
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

int64_t checked_mul(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(a, b, &r), op, ": ", what, " = ", int_str(a), " * ", int_str(b),
                    " does not fit in 64 bits");
  return r;
}

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

namespace {
void refuse_inputs_requiring_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  if (at::GradMode::is_enabled()) {
    const size_t first = stack->size() - args.size();
    for (size_t i = 0; i < args.size(); ++i) {
      const c10::IValue& v = (*stack)[first + i];
      if (v.isTensor()) refuse_requiring_grad(op.schema().name().c_str(), {{args[i].name().c_str(), &v.toTensor()}});
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}
}  // namespace

void refuse_requiring_grad(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  if (!at::GradMode::is_enabled()) return;
  for (const auto& [name, t] : tensors)
    TORCH_CHECK(!(t && t->defined() && t->requires_grad()), op, ": ", name,
                " requires grad, but the op has no derivative, so it would get no gradient; train with the "
                "layers of torch_int8.nn, or pass ", name, ".detach()");
}

void impl_without_derivatives(torch::Library& m, std::initializer_list<const char*> ops) {
  for (const char* name : ops) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&refuse_inputs_requiring_grad>());
}

at::Tensor epilogue_on_int64(at::Tensor acc, const at::Tensor& col_offset, const at::Tensor& row_scale,
                             const at::Tensor& col_scale, const std::optional<at::Tensor>& col_bias,
                             at::ScalarType out_dtype, int64_t out_zero_point, bool relu) {
  const int64_t n = acc.size(1);
  if (col_offset.defined()) acc = acc + col_offset;  // exact, before the one rounding to float
  at::Tensor v = acc.to(at::kFloat).mul_(row_scale.unsqueeze(1)).mul_(col_scale.narrow(0, 0, n));
  if (col_bias) v.add_(col_bias->narrow(0, 0, n));
  if (relu) v = at::clamp_min(v, 0);  // NaN stays NaN
  if (out_dtype != at::kChar) return v.to(out_dtype);
  // rint(v) + zero point, saturated, NaN -> 0: requantize_value of epilogue_math.h.
  return at::nan_to_num(v.round_().add_(static_cast<double>(out_zero_point)), 0.0).clamp_(-128, 127).to(at::kChar);
}

void check_status(kernels::Status s, const char* op) {
  TORCH_CHECK(s != kernels::Status::kNoKernel, op,
              ": no kernel in this build runs on this GPU; rebuild with TORCH_CUDA_ARCH_LIST including its "
              "compute capability (built: ", kernels::built_gemm_families(), ")");
  TORCH_CHECK(s == kernels::Status::kSuccess, op, ": kernel failed: ", kernels::status_string(s));
}

kernels::OutType out_type_of(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kInt: return kernels::OutType::kInt32;
    case at::kChar: return kernels::OutType::kInt8;
    case at::kHalf: return kernels::OutType::kFloat16;
    case at::kBFloat16: return kernels::OutType::kBFloat16;
    case at::kFloat: return kernels::OutType::kFloat32;
    default: TORCH_CHECK_TYPE(false, op, ": out_dtype must be bfloat16, float16, float32 or int8, got ", t);
  }
}

void check_scaled_output(at::ScalarType out_dtype, double out_scale, int64_t out_zero_point, const char* op,
                         const char* int32_op) {
  TORCH_CHECK_TYPE(out_dtype != at::kInt, op, ": out_dtype must be bfloat16, float16, float32 or int8 (int32 ",
                   "results come from ", int32_op, "), got ", out_dtype);
  out_type_of(out_dtype, op);
  if (out_dtype != at::kChar) return;
  TORCH_CHECK_VALUE(std::isfinite(out_scale) && out_scale > 0, op, ": out_scale must be finite and > 0 for ",
                    "int8 output, got ", float_str(out_scale));
  TORCH_CHECK_VALUE(out_zero_point >= -128 && out_zero_point <= 127, op,
                    ": out_zero_point must be in [-128, 127], got ", int_str(out_zero_point));
}

namespace {
int64_t out_bytes(kernels::OutType t) {
  switch (t) {
    case kernels::OutType::kInt8: return 1;
    case kernels::OutType::kFloat16:
    case kernels::OutType::kBFloat16: return 2;
    default: return 4;
  }
}
}  // namespace

namespace {
// Products of at least this many multiply-adds form their int32 sums with ATen's int8 matmul
// (at::_int_mm: exact, and several times faster than float32 matmul where torch has its
// vectorized kernels); smaller ones run the reference kernel whole, without the extra buffer.
constexpr int64_t kAtenProductMacs = int64_t{1} << 18;

// Runs `rows(begin, end)` over the rows [0, total) of a product with n * k multiply-adds a row,
// at least ~1M multiply-adds per task.
template <class Rows>
void parallel_rows(int64_t total, int64_t n, int64_t k, const Rows& rows) {
  const int64_t rows_per_task = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, n * k));
  at::parallel_for(0, total, rows_per_task, rows);
}

// p's rows [m0, m1) of batch bi: the problem and epilogue of that slice.
std::pair<kernels::GemmProblem, kernels::Epilogue> row_slice(const kernels::GemmProblem& p,
                                                            const kernels::Epilogue& e, int64_t bi, int64_t m0,
                                                            int64_t m1) {
  kernels::GemmProblem s = p;
  s.batch = 1, s.m = m1 - m0;
  s.a = p.a + bi * p.batch_stride_a + m0 * p.lda;
  s.b = p.b + bi * p.batch_stride_b;
  s.d = static_cast<char*>(p.d) + (bi * p.batch_stride_d + m0 * p.ldd) * out_bytes(p.out_type);
  kernels::Epilogue se = e;
  if (se.row_scale) se.row_scale += m0;
  if (se.row_offset) se.row_offset += m0;
  if (se.row_amax) se.row_amax += m0;
  return {s, se};
}

// The reference kernel over the rows of every batch.
void reference_gemm(const kernels::GemmProblem& p, const kernels::Epilogue& e, const char* op) {
  parallel_rows(p.batch * p.m, p.n, p.k, [&](int64_t begin, int64_t end) {
    // A task's rows may span several batches: one reference call per batch slice.
    for (int64_t row = begin; row < end;) {
      const int64_t bi = row / p.m, m0 = row % p.m, m1 = std::min(p.m, m0 + (end - row));
      const auto [s, se] = row_slice(p, e, bi, m0, m1);
      check_status(kernels::gemm_cpu(s, se), op);
      row += m1 - m0;
    }
  });
}
}  // namespace

// Int32 sums formed per block of rows, about this many (256 KB) or more, each rescaled by the
// epilogue while it is in cache: one at::_int_mm of a large product spends most of its time
// writing (and faulting in the pages of) its int32 result, e.g. 18 ms against 4.4 ms in 1024-row
// blocks for a 50176 x 64 x 256 product on 2 cores. A block has at least K rows, so that reading
// B once a block (K x N bytes) costs at most a quarter of its sums' bytes.
constexpr int64_t kBlockSums = int64_t{1} << 16;

void gemm_cpu_parallel(const kernels::GemmProblem& p, const kernels::Epilogue& e, const char* op) {
  if (p.m * p.n * p.k < kAtenProductMacs || p.k > kernels::kMaxK) return reference_gemm(p, e, op);
  const auto int8 = at::TensorOptions().dtype(at::kChar);
  // A [M, K] row-major and B [K, N] column-major of batch entry bi, as they lie in memory (no copies).
  auto a_of = [&](int64_t bi) {
    return at::from_blob(const_cast<int8_t*>(p.a + bi * p.batch_stride_a), {p.m, p.k}, {p.lda, 1}, int8);
  };
  auto b_of = [&](int64_t bi) {
    return at::from_blob(const_cast<int8_t*>(p.b + bi * p.batch_stride_b), {p.k, p.n}, {1, p.ldb}, int8);
  };
  auto rescale = [&](const at::Tensor& acc, int64_t bi, int64_t m0, int64_t m1) {
    const auto [s, se] = row_slice(p, e, bi, m0, m1);
    check_status(kernels::epilogue_cpu(s, se, acc.const_data_ptr<int32_t>(), p.n), op);
  };
  // Rows [m0, m1) of entry bi into `sums` (a product inside a parallel region runs on its thread),
  // then rescaled: one buffer per task, since a fresh one per product would fault its pages in.
  auto rows_into = [&](at::Tensor& sums, int64_t bi, int64_t m0, int64_t m1) {
    at::Tensor acc = sums.narrow(0, 0, m1 - m0);
    at::_int_mm_out(acc, a_of(bi).narrow(0, m0, m1 - m0), b_of(bi));
    rescale(acc, bi, m0, m1);
  };
  const int64_t block = std::max({int64_t{16}, p.k, kBlockSums / std::max<int64_t>(1, p.n)});
  const auto sums_of = [&](int64_t rows) { return at::empty({rows, p.n}, at::TensorOptions().dtype(at::kInt)); };
  if (p.m <= 2 * block && p.batch == 1) {  // one product, its epilogue split across the threads by rows
    const at::Tensor acc = at::_int_mm(a_of(0), b_of(0));
    parallel_rows(p.m, p.n, 1, [&](int64_t m0, int64_t m1) { rescale(acc.narrow(0, m0, m1 - m0), 0, m0, m1); });
  } else if (p.m <= 2 * block) {  // small products, one thread each
    at::parallel_for(0, p.batch, 1, [&](int64_t b0, int64_t b1) {
      at::Tensor sums = sums_of(p.m);
      for (int64_t bi = b0; bi < b1; ++bi) rows_into(sums, bi, 0, p.m);
    });
  } else {  // blocks of rows, one thread each
    for (int64_t bi = 0; bi < p.batch; ++bi)
      at::parallel_for(0, (p.m + block - 1) / block, 1, [&](int64_t k0, int64_t k1) {
        at::Tensor sums = sums_of(block);
        for (int64_t blk = k0; blk < k1; ++blk) rows_into(sums, bi, blk * block, std::min(p.m, (blk + 1) * block));
      });
  }
}

void run_gemm(const kernels::GemmProblem& p, const kernels::Epilogue& e, const at::Tensor& like, const char* op) {
  if (like.is_cuda())
    check_status(kernels::gemm_cuda(p, e, current_stream(like.device())), op);
  else
    gemm_cpu_parallel(p, e, op);
}

void* current_stream(const at::Device& device) {
#ifdef TORCH_INT8_WITH_CUDA
  return c10::cuda::getCurrentCUDAStream(device.index()).stream();
#else
  TORCH_CHECK(false, "torch_int8 was built without CUDA");
#endif
}

}  // namespace torch_int8::ops
