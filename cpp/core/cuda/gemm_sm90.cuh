// CUTLASS 3.x Hopper INT8 GEMM: wgmma with TMA loads, warp-specialized
// persistent kernel, and the fused epilogue of kernels.h as a Sm90 epilogue
// visitor tree. Tile is a TileConfig; ElementD the output type.
#pragma once

#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include "epilogue_sm90.cuh"

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

// 64x32x128 tiles (one warpgroup's wgmma of 64 rows), no cluster: for GEMMs
// with a few hundred rows or less (above the few-row kernel's), where 128x128
// tiles leave most SMs idle; many small tiles spread the stream of B (the
// weights) over every SM.
using Sm90Pingpong64x32 = Sm90TileConfig<64, 32, 128, 1, 1,
                                         cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                         cutlass::epilogue::TmaWarpSpecialized>;

template <class Tile, class ElementD, bool kRowAmax = false>
struct Sm90Gemm {
  using TileShape = typename Tile::TileShape;
  using FusedEpilogue = Sm90FusedEpilogue<TileShape, typename Tile::ClusterShape, typename Tile::EpilogueSchedule,
                                          ElementD, cutlass::layout::RowMajor, kRowAmax>;
  using CollectiveEpilogue = typename FusedEpilogue::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      int8_t, cutlass::layout::RowMajor, 16,
      int8_t, cutlass::layout::ColumnMajor, 16,
      int32_t, TileShape, typename Tile::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Tile::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

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
        {FusedEpilogue::args(e), nullptr, dd, static_cast<ElementD*>(p.d), dd},
        hw};
    // The row maxima's epilogue node would zero them with the driver API in initialize().
    if constexpr (kRowAmax) return run_cutlass_preinitialized<Device>(args, stream);
    else return run_cutlass<Device>(args, stream);
  }
};

// The GEMM of one tile configuration for p's output type; kRowAmax: the
// float-output kernels that also write the row maxima of |D|
// (Epilogue::row_amax), which gemm_sm90_row_amax.cu instantiates so that they
// compile in parallel with the others.
template <class Tile, bool kRowAmax>
Status run_sm90_tile(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, int sm_count) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if constexpr (kRowAmax && !kFloatOutput<ElementD>) {
      return Status::kInvalidArgument;
    } else {
      if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
      return Sm90Gemm<Tile, ElementD, kRowAmax>::run(p, e, stream, sm_count);
    }
  });
}

extern template Status run_sm90_tile<Sm90Cooperative256, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
extern template Status run_sm90_tile<Sm90Pingpong128, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
extern template Status run_sm90_tile<Sm90Pingpong64x32, true>(const GemmProblem&, const Epilogue&, cudaStream_t, int);

}  // namespace torch_int8::kernels::detail
