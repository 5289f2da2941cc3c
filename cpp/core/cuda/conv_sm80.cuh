// CUTLASS 2.x Ampere/Ada INT8 implicit-GEMM forward convolution with the fused
// epilogue of kernels.h. CUTLASS 2.x offers its epilogue visitor trees (EVT)
// for GEMM kernels only, so ImplicitGemmFpropWithVisitor pairs CUTLASS's
// implicit-GEMM mainloop (DefaultConv2dFprop's Mma: activation and filter
// iterators, cp.async multistage pipeline, mma.sync) with the EVT epilogue of
// the Ampere GEMM (Sm8xGemm, gemm_sm8x.cuh). With a dense NPQK output the
// epilogue's rows are the GEMM's M = N*P*Q and its columns the K output
// channels, so that epilogue applies unchanged.
#pragma once

#include <cutlass/conv/conv2d_problem_size.h>
#include <cutlass/conv/kernel/default_conv2d_fprop.h>
#include <cutlass/device_kernel.h>

#include "gemm_sm8x.cuh"
#include "torch_int8/conv.h"

namespace torch_int8::kernels::detail {

// Kernel-level template in the form cutlass::Kernel<> launches: CUTLASS's
// ImplicitGemmConvolution without split-K and groups, ending in an
// EpilogueWithVisitorCallbacks.
template <class Mma_, class Epilogue_, class ThreadblockSwizzle_>
struct ImplicitGemmFpropWithVisitor {
  using Mma = Mma_;
  using Epilogue = Epilogue_;
  using ThreadblockSwizzle = ThreadblockSwizzle_;
  using FusionCallbacks = typename Epilogue::FusionCallbacks;
  using TileShape = typename Mma::Shape;
  static constexpr auto kFprop = cutlass::conv::Operator::kFprop;
  static constexpr auto kIteratorAlgorithm = Mma::IteratorA::kIteratorAlgorithm;
  static constexpr int kThreadCount = 32 * Mma::WarpCount::kCount;

  struct Params {
    cutlass::conv::Conv2dProblemSize problem_size;
    cutlass::gemm::GemmCoord grid_tiled_shape;
    int swizzle_log_tile = 0;
    int gemm_k_iterations = 0;
    int gemm_k_iterations_per_channel = 0;
    typename Mma::IteratorA::Params iterator_A;
    const int8_t* ptr_A = nullptr;
    typename Mma::IteratorB::Params iterator_B;
    const int8_t* ptr_B = nullptr;
    cute::Shape<int32_t, int32_t, int32_t> epilogue_shape;  // (M, N, batch 1) of the implicit GEMM
    typename FusionCallbacks::Params output_op;

    Params() = default;
    Params(const cutlass::conv::Conv2dProblemSize& ps, const int8_t* x, const int8_t* filter,
           const typename FusionCallbacks::Arguments& tree)
        : problem_size(ps),
          iterator_A(Mma::IteratorA::getParams(ps, cutlass::layout::TensorNHWC::packed({ps.N, ps.H, ps.W, ps.C}))),
          ptr_A(x),
          iterator_B(ps, cutlass::layout::TensorNHWC::packed({ps.K, ps.R, ps.S, ps.C})),
          ptr_B(filter) {
      const cutlass::gemm::GemmCoord gemm = cutlass::conv::implicit_gemm_problem_size(kFprop, ps);
      grid_tiled_shape = ThreadblockSwizzle().get_tiled_shape(gemm, {TileShape::kM, TileShape::kN, TileShape::kK}, 1);
      swizzle_log_tile = ThreadblockSwizzle().get_log_tile(grid_tiled_shape);
      gemm_k_iterations = cutlass::conv::implicit_gemm_k_iterations(kFprop, TileShape::kK, ps, kIteratorAlgorithm);
      gemm_k_iterations_per_channel =
          cutlass::conv::implicit_gemm_k_iterations_per_channel(kFprop, ps, kIteratorAlgorithm);
      epilogue_shape = cute::make_shape(gemm.m(), gemm.n(), 1);
      output_op = FusionCallbacks::to_underlying_arguments(gemm, tree, nullptr);
    }
  };

  union SharedStorage {
    typename Mma::SharedStorage main_loop;
    typename Epilogue::SharedStorage epilogue;
  };

  CUTLASS_DEVICE void operator()(const Params& params, SharedStorage& shared_storage) {
    const cutlass::gemm::GemmCoord tile = ThreadblockSwizzle().get_tile_offset(params.swizzle_log_tile);
    if (tile.m() >= params.grid_tiled_shape.m() || tile.n() >= params.grid_tiled_shape.n()) return;
    const int thread_idx = threadIdx.x;
    const int warp_idx = cutlass::canonical_warp_idx_sync();
    const int lane_idx = threadIdx.x % 32;

    typename Mma::IteratorA iterator_A(params.iterator_A, params.problem_size, params.ptr_A, thread_idx,
                                       cutlass::MatrixCoord(tile.m() * TileShape::kM, 0));
    typename Mma::IteratorB iterator_B(params.iterator_B, params.problem_size, params.ptr_B, thread_idx,
                                       cutlass::MatrixCoord(0, tile.n() * TileShape::kN));
    Mma mma(shared_storage.main_loop, thread_idx, warp_idx, lane_idx);
    typename Mma::FragmentC accumulators;
    accumulators.clear();
    mma(params.gemm_k_iterations, accumulators, iterator_A, iterator_B, accumulators,
        params.gemm_k_iterations_per_channel);

    Epilogue epilogue(params.output_op, shared_storage.epilogue, thread_idx, warp_idx, lane_idx);
    epilogue(accumulators, tile, params.epilogue_shape, thread_idx);
  }
};

// The Ampere convolution for one output type: the GEMM's tile configuration,
// epilogue and swizzle (Sm8xGemm<Sm80Config, ElementD>) around the mainloop of
// CUTLASS's optimized fprop iterators (any stride, padding and dilation;
// C % 16 == 0, R and S up to 32).
template <class ElementD>
struct Sm80ConvFprop {
  using Gemm = Sm8xGemm<Sm80Config, ElementD>;
  using Swizzle = typename Gemm::Kernel::ThreadblockSwizzle;
  // DefaultConv2dFprop wants an output op; only its Mma is used (the EVT replaces the epilogue).
  using UnusedOutputOp = cutlass::epilogue::thread::LinearCombination<ElementD, Gemm::kAlignD, int32_t, float>;
  using Mma = typename cutlass::conv::kernel::DefaultConv2dFprop<
      int8_t, cutlass::layout::TensorNHWC, int8_t, cutlass::layout::TensorNHWC, ElementD, cutlass::layout::TensorNHWC,
      int32_t, cutlass::arch::OpClassTensorOp, Sm80Config::ArchTag, Sm80Config::ThreadblockShape,
      Sm80Config::WarpShape, Sm80Config::InstructionShape, UnusedOutputOp, Swizzle, Sm80Config::kStages,
      cutlass::arch::OpMultiplyAddSaturate, cutlass::conv::IteratorAlgorithm::kOptimized,
      cutlass::conv::StrideSupport::kStrided, 16, 16>::Kernel::Mma;
  // The epilogue consumes the accumulator fragments of the GEMM's warp-level MMA.
  static_assert(std::is_same_v<typename Mma::Operator, typename Gemm::Kernel::Mma::Operator>);
  using Kernel = ImplicitGemmFpropWithVisitor<Mma, typename Gemm::Kernel::Epilogue, Swizzle>;

  static cutlass::conv::Conv2dProblemSize problem_size(const ConvProblem& p) {
    auto i = [](int64_t v) { return static_cast<int>(v); };
    return cutlass::conv::Conv2dProblemSize(i(p.n), i(p.h), i(p.w), i(p.c), i(p.k), i(p.r), i(p.s), i(p.p), i(p.q),
                                            i(p.pad_h), i(p.pad_w), i(p.stride_h), i(p.stride_w), i(p.dilation_h),
                                            i(p.dilation_w), cutlass::conv::Mode::kCrossCorrelation);
  }

  // CUTLASS's device-level checks: the iterators' alignment and filter-size
  // limits, 32-bit tensor offsets, and a grid whose y extent fits.
  static bool can_implement(const cutlass::conv::Conv2dProblemSize& ps, const typename Kernel::Params& params) {
    constexpr int64_t kMaxBytes = int64_t{1} << 31;
    const dim3 grid = Swizzle().get_grid_shape(params.grid_tiled_shape);
    return Mma::IteratorA::can_implement(ps) == cutlass::Status::kSuccess &&
           Mma::IteratorB::can_implement(ps) == cutlass::Status::kSuccess &&
           int64_t(ps.activation_size()) < kMaxBytes && int64_t(ps.filter_size()) < kMaxBytes &&
           int64_t(ps.output_size()) * int64_t(sizeof(ElementD)) < kMaxBytes && grid.y <= 65535 && grid.z <= 65535;
  }

  static Status run(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
    const cutlass::conv::Conv2dProblemSize ps = problem_size(p);
    GemmProblem output;  // Y as the GEMM's row-major M x K output
    output.m = p.n * p.p * p.q, output.n = p.k, output.d = p.y, output.ldd = p.k;
    const typename Kernel::Params params(ps, p.x, p.filter, Gemm::tree_args(output, e));
    if (!can_implement(ps, params)) return Status::kInvalidArgument;
    const int smem = static_cast<int>(sizeof(typename Kernel::SharedStorage));
    if (cudaFuncSetAttribute(cutlass::Kernel<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) != cudaSuccess)
      return Status::kCudaError;
    const dim3 grid = Swizzle().get_grid_shape(params.grid_tiled_shape);
    cutlass::Kernel<Kernel><<<grid, Kernel::kThreadCount, smem, stream>>>(params);
    return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
  }
};

}  // namespace torch_int8::kernels::detail
