// CUTLASS 3.x Hopper INT8 GEMM: wgmma with TMA loads, warp-specialized
// persistent kernel, and the fused epilogue of kernels.h as a Sm90 epilogue
// visitor tree. Tile is a TileConfig; ElementD the output type.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include "epilogue_tree.cuh"

namespace torch_int8::kernels::detail {

template <int TileM, int TileN, int TileK, int ClusterM, int ClusterN, class KernelSchedule_, class EpilogueSchedule_>
struct Sm90TileConfig {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Int<TileK>>;
  using ClusterShape = cute::Shape<cute::Int<ClusterM>, cute::Int<ClusterN>, cute::_1>;
  using KernelSchedule = KernelSchedule_;
  using EpilogueSchedule = EpilogueSchedule_;
};

// 128x128x128 tiles, two consumer warpgroups ping-ponging between tiles so one
// runs its epilogue while the other runs wgmma: best while tiles are few.
using Sm90Pingpong128 = Sm90TileConfig<128, 128, 128, 2, 1,
                                       cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                       cutlass::epilogue::TmaWarpSpecialized>;
// 256x128x128 tiles, both consumer warpgroups on one tile: half the operand
// traffic per MAC of the 128x128 tile, for GEMMs with many tiles.
using Sm90Cooperative256 = Sm90TileConfig<256, 128, 128, 2, 1,
                                          cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                          cutlass::epilogue::TmaWarpSpecializedCooperative>;

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
};

template <class Tile, class ElementD>
struct Sm90Gemm {
  static constexpr bool kStoresAccumulator = std::is_same_v<ElementD, int32_t>;
  static constexpr int kAlignD = 128 / cutlass::sizeof_bits<ElementD>::value;
  using TileShape = typename Tile::TileShape;
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  using Nodes = Sm90Nodes<TileShape>;
  using Identity = typename Nodes::template EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, int32_t, int32_t, kRound>,
      typename Nodes::Acc>;
  using Fused = EpilogueTree<Nodes, ElementD>;
  using Tree = std::conditional_t<kStoresAccumulator, Identity, typename Fused::Output>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, typename Tile::ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, int32_t, float,
      void, cutlass::layout::RowMajor, kAlignD,
      ElementD, cutlass::layout::RowMajor, kAlignD,
      typename Tile::EpilogueSchedule, Tree>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      int8_t, cutlass::layout::RowMajor, 16,
      int8_t, cutlass::layout::ColumnMajor, 16,
      int32_t, TileShape, typename Tile::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Tile::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Tree::Arguments tree_args(const Epilogue& e) {
    if constexpr (kStoresAccumulator) {
      return {};
    } else {
      return Fused::args(e);
    }
  }

  static Status run(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, int sm_count) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const int m = static_cast<int>(p.m), n = static_cast<int>(p.n), k = static_cast<int>(p.k), l = static_cast<int>(p.batch);
    StrideA da{p.lda, cute::_1{}, p.batch_stride_a};
    StrideB db{p.ldb, cute::_1{}, p.batch_stride_b};
    StrideD dd{p.ldd, cute::_1{}, p.batch_stride_d};
    cutlass::KernelHardwareInfo hw;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = sm_count;
    typename Device::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {m, n, k, l},
        {p.a, da, p.b, db},
        {tree_args(e), nullptr, dd, static_cast<ElementD*>(p.d), dd},
        hw};
    return run_cutlass<Device>(args, stream);
  }
};

}  // namespace torch_int8::kernels::detail
