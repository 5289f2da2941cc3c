// The fused epilogue of kernels.h as a CUTLASS 3.x (sm90) collective epilogue:
// TMA stores of D, with the EpilogueTree evaluated on the way. Shared by the
// Hopper GEMM (gemm_sm90.cuh) and convolution (conv_sm90.cuh) kernels.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>

#include "epilogue_tree.cuh"

namespace torch_int8::kernels::detail {

// CUTLASS 3.x (sm90) epilogue visitor nodes for EpilogueTree. CUTLASS names a
// per-row vector a "column broadcast" and vice versa.
template <class TileShape>
struct Sm90Nodes {
  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  using RowVec = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, cute::Stride<cute::_1, cute::_0, int64_t>>;
  using ColVec = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, cute::Stride<cute::_0, cute::_1, int64_t>>;
  using Scalar = cutlass::epilogue::fusion::Sm90ScalarBroadcast<float>;
  template <template <class> class Op, class Out>
  using Compute = cutlass::epilogue::fusion::Sm90Compute<Op, Out, float, cutlass::FloatRoundStyle::round_to_nearest>;
  template <class... Nodes>
  using EVT = cutlass::epilogue::fusion::Sm90EVT<Nodes...>;
  // max |D[m, :]| per row: registers, warp shuffles, then one atomic max per row and CTA (no workspace).
  using RowAbsMax = cutlass::epilogue::fusion::Sm90ColReduction<MaxAbsKeepNaN, MaxKeepNaN, cutlass::atomic_maximum, 0,
                                                                TileShape, float, float,
                                                                cutlass::FloatRoundStyle::round_to_nearest>;
};

// The collective epilogue writing D of ElementD in LayoutD (RowMajor for a
// GEMM, TensorNHWC for a convolution): the accumulator itself for int32,
// otherwise the EpilogueTree of kernels.h.
template <class TileShape, class ClusterShape, class EpilogueSchedule, class ElementD, class LayoutD,
          bool kRowAmax = false>
struct Sm90FusedEpilogue {
  static constexpr bool kStoresAccumulator = std::is_same_v<ElementD, int32_t>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using Nodes = Sm90Nodes<TileShape>;
  using Identity = typename Nodes::template EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, int32_t, int32_t, kRound>,
      typename Nodes::Acc>;
  using Fused = EpilogueTree<Nodes, ElementD, kRowAmax>;
  using Tree = std::conditional_t<kStoresAccumulator, Identity, typename Fused::Output>;

  using CollectiveOp = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float,
      void, LayoutD, kAlignD,
      ElementD, LayoutD, kAlignD,
      EpilogueSchedule, Tree>::CollectiveOp;

  static typename Tree::Arguments args(const Epilogue& e) {
    if constexpr (kStoresAccumulator) {
      return {};
    } else {
      return Fused::args(e);
    }
  }
};

}  // namespace torch_int8::kernels::detail
