// CUTLASS 2.x tensor-op INT8 GEMM with the fused epilogue as an epilogue
// visitor tree (EVT), shared by the Turing (sm75) and Ampere/Ada (sm80)
// families; Config carries what differs between them.
#pragma once

// visitors.hpp is not self-contained: the GEMM headers must come first.
#include <cute/tensor.hpp>
#include <cutlass/gemm/device/gemm_universal.h>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/epilogue/threadblock/fusion/visitors.hpp>
#include <cutlass/gemm/kernel/default_gemm_universal_with_visitor.h>

#include "epilogue_tree.cuh"

namespace torch_int8::kernels::detail {

template <class ArchTag_, class InstructionShape_, int Stages>
struct Sm8xConfig {
  using ArchTag = ArchTag_;
  using InstructionShape = InstructionShape_;
  using ThreadblockShape = cutlass::gemm::GemmShape<128, 128, 64>;
  using WarpShape = cutlass::gemm::GemmShape<64, 64, 64>;
  static constexpr int kStages = Stages;
};
// Turing: mma.sync m8n8k16, two-stage pipeline (no cp.async).
using Sm75Config = Sm8xConfig<cutlass::arch::Sm75, cutlass::gemm::GemmShape<8, 8, 16>, 2>;
// Ampere/Ada: mma.sync m16n8k32, multistage cp.async pipeline.
using Sm80Config = Sm8xConfig<cutlass::arch::Sm80, cutlass::gemm::GemmShape<16, 8, 32>, 4>;

// CUTLASS 2.x epilogue visitor nodes for EpilogueTree. CUTLASS names a
// per-row vector a "column broadcast" and vice versa.
template <class ThreadMap>
struct Sm80Nodes {
  using Acc = cutlass::epilogue::threadblock::VisitorAccFetch;
  using RowVec = cutlass::epilogue::threadblock::VisitorColBroadcast<ThreadMap, float, cute::Stride<cute::_1, cute::_0, int64_t>>;
  using ColVec = cutlass::epilogue::threadblock::VisitorRowBroadcast<ThreadMap, float, cute::Stride<cute::_0, cute::_1, int64_t>>;
  using Scalar = cutlass::epilogue::threadblock::VisitorScalarBroadcast<float>;
  template <template <class> class Op, class Out>
  using Compute = cutlass::epilogue::threadblock::VisitorCompute<Op, Out, float, cutlass::FloatRoundStyle::round_to_nearest>;
  template <class... Nodes>
  using EVT = cutlass::epilogue::threadblock::Sm80EVT<Nodes...>;
  // max |D[m, :]| per row: registers, warp shuffles, then one atomic max per row and warp.
  using RowAbsMax = cutlass::epilogue::threadblock::VisitorColReduction<
      MaxAbsKeepNaN, cutlass::atomic_maximum, ThreadMap, float, float, cutlass::FloatRoundStyle::round_to_nearest>;
};

template <class Config, class ElementD, bool kRowAmax = false>
struct Sm8xGemm {
  static constexpr bool kStoresAccumulator = std::is_same_v<ElementD, int32_t>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using ThreadMap = cutlass::epilogue::threadblock::OutputTileThreadLayout<
      typename Config::ThreadblockShape, typename Config::WarpShape, ElementD, kAlignD, 1>;

  using Store = cutlass::epilogue::threadblock::VisitorAuxStore<
      ThreadMap, ElementD, cutlass::FloatRoundStyle::round_to_nearest, cute::Stride<int64_t, cute::_1, int64_t>>;
  using Fused = EpilogueTree<Sm80Nodes<ThreadMap>, ElementD, kRowAmax>;
  using Tree = typename Sm80Nodes<ThreadMap>::template EVT<
      Store, std::conditional_t<kStoresAccumulator, typename Sm80Nodes<ThreadMap>::Acc, typename Fused::Output>>;

  using Kernel = typename cutlass::gemm::kernel::DefaultGemmWithVisitor<
      int8_t, cutlass::layout::RowMajor, cutlass::ComplexTransform::kNone, 16,
      int8_t, cutlass::layout::ColumnMajor, cutlass::ComplexTransform::kNone, 16,
      ElementD, cutlass::layout::RowMajor, kAlignD,
      int32_t, float, cutlass::arch::OpClassTensorOp, typename Config::ArchTag,
      typename Config::ThreadblockShape, typename Config::WarpShape, typename Config::InstructionShape,
      Tree, cutlass::gemm::threadblock::GemmIdentityThreadblockSwizzle<8>, Config::kStages,
      cutlass::arch::OpMultiplyAddSaturate, 1>::GemmKernel;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Tree::Arguments tree_args(const GemmProblem& p, const Epilogue& e) {
    typename Store::Arguments store{static_cast<ElementD*>(p.d), {p.ldd, cute::_1{}, p.batch_stride_d}};
    if constexpr (kStoresAccumulator) {
      return {{}, store};
    } else {
      return {Fused::args(e), store};
    }
  }

  static Status run(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
    using Mode = cutlass::gemm::GemmUniversalMode;
    typename Device::Arguments args(
        p.batch > 1 ? Mode::kBatched : Mode::kGemm,
        {static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k)}, static_cast<int>(p.batch),
        tree_args(p, e), p.a, p.b, nullptr, nullptr, p.batch_stride_a, p.batch_stride_b, 0, 0,
        p.lda, p.ldb, 0, 0);
    return run_cutlass<Device>(args, stream);
  }
};

// The whole family: requirement checks, then one kernel per output type.
template <class Config>
Status gemm_sm8x(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
    if constexpr (kFloatOutput<ElementD>) {
      if (e.row_amax) return Sm8xGemm<Config, ElementD, true>::run(p, e, stream);
    }
    return Sm8xGemm<Config, ElementD>::run(p, e, stream);
  });
}

}  // namespace torch_int8::kernels::detail
