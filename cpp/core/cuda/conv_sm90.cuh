// CUTLASS 3.x Hopper INT8 implicit-GEMM forward convolution. GEMM view:
// M = N*P*Q output pixels, N = K output channels, GEMM-K = (C, S, R). The
// activation tile is gathered by TMA in im2col mode (padding, stride and
// dilation are applied by the copy engine; no im2col buffer), the filter tile
// by a plain TMA load, wgmma accumulates in int32, and the fused epilogue of
// kernels.h (epilogue_sm90.cuh, shared with the GEMM) stores Y through TMA.
#pragma once

#include <type_traits>

// CUTLASS's conv headers are not self-contained: these two must come first.
#include <cute/tensor.hpp>
#include <cutlass/kernel_hardware_info.hpp>
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include "epilogue_sm90.cuh"
#include "gemm_common.cuh"
#include "torch_int8/conv.h"

namespace torch_int8::kernels::detail {

// GEMM-K is tiled over the channels only (the tile's K mode is the tuple
// (TileK)), so one k-tile is TileK channels at one filter position: exactly
// what one im2col TMA load fetches. C must therefore be a multiple of TileK.
// Schedules as in gemm_sm90.cuh: ping-pong (two consumer warpgroups take
// turns, a tile each, one tile's epilogue overlapping the other's mainloop)
// or cooperative (both on one tile of twice the rows, each half of it: twice
// the warps in its epilogue).
template <int TileM, int TileN, int TileK, bool kCooperative>
struct Sm90ConvTile {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Shape<cute::Int<TileK>>>;
  using KernelSchedule = std::conditional_t<kCooperative, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                            cutlass::gemm::KernelTmaWarpSpecializedPingpong>;
  using EpilogueSchedule = std::conditional_t<kCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                              cutlass::epilogue::TmaWarpSpecialized>;
  // Warpgroups per tile, along M.
  using AtomLayout = cute::Layout<cute::Shape<cute::Int<kCooperative ? 2 : 1>, cute::_1, cute::_1>>;
};

using Sm90ConvShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;

// Dense NHWC activation, KRSC filter and NPQK output; symmetric padding.
inline Sm90ConvShape sm90_conv_shape(const ConvProblem& p) {
  auto i = [](int64_t v) { return static_cast<int>(v); };
  using Extent = Sm90ConvShape::TensorExtent;
  using Spatial = Sm90ConvShape::SpatialExtent;
  const Spatial pad{i(p.pad_h), i(p.pad_w)};
  return Sm90ConvShape(cutlass::conv::Mode::kCrossCorrelation, Extent{i(p.n), i(p.h), i(p.w), i(p.c)},
                       Extent{i(p.k), i(p.r), i(p.s), i(p.c)}, pad, pad, Spatial{i(p.stride_h), i(p.stride_w)},
                       Spatial{i(p.dilation_h), i(p.dilation_w)}, 1);
}

// CUTLASS's convolution mainloop (im2col TMA loads, wgmma) for kSmemCarveout
// bytes of epilogue storage, with the tile's warpgroup layout: the builder
// makes the loads and shared-memory layouts, and its one-warpgroup MMA is
// remade for the cooperative schedule (which the builder's policy refuses
// for convolutions: CUTLASS has no persistent convolution kernel).
template <class Tile, int kSmemCarveout>
struct Sm90ConvMainloop {
  using TileShape = typename Tile::TileShape;
  using Built = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      int8_t, cutlass::layout::TensorNHWC, 16,
      int8_t, cutlass::layout::TensorNHWC, 16,
      int32_t, TileShape, cute::Shape<cute::_1, cute::_1, cute::_1>,
      cutlass::conv::collective::StageCountAutoCarveout<kSmemCarveout>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;
  using TiledMma = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<int8_t, int8_t, int32_t, TileShape, cute::GMMA::Major::K, cute::GMMA::Major::K>(),
      typename Tile::AtomLayout{}));
  using TraitsA = cutlass::conv::collective::detail::Sm90ImplicitGemmTileTraits<typename Built::GmemTiledCopyA,
                                                                                typename Built::SmemLayoutA>;
  using TraitsB = cutlass::conv::collective::detail::Sm90ImplicitGemmTileTraits<typename Built::GmemTiledCopyB,
                                                                                typename Built::SmemLayoutB>;
  using type = cutlass::conv::collective::CollectiveConv<typename Built::DispatchPolicy, TileShape, int8_t, int8_t,
                                                         TiledMma, TraitsA, TraitsB>;
};

// The convolution mainloop as a GEMM mainloop, so that CUTLASS's persistent
// GEMM kernels can run it (CUTLASS's own convolution kernel is its
// non-persistent GEMM kernel around this same mainloop). The kernel sees the
// linearized GEMM problem (M = N*P*Q, N = K, GEMM-K = (C, S, R)); the
// mainloop builds its im2col TMA descriptors from the convolution's shape,
// which therefore travels in its arguments.
template <class ConvMainloop, class KernelSchedule>
struct PersistentConvMainloop : ConvMainloop {
  struct DispatchPolicy : ConvMainloop::DispatchPolicy {
    using Schedule = KernelSchedule;
  };
  struct Arguments : ConvMainloop::Arguments {
    Sm90ConvShape conv;
  };
  // What the GEMM kernels ask of a GEMM mainloop besides the above: one
  // producer thread arrives per stage (the elected TMA issuer), and strides of
  // rank 3 (only their rank is checked; the convolution's own strides live in
  // its TMA descriptors).
  static constexpr int NumProducerThreadEvents = 1;
  using StrideA = cute::Stride<int64_t, cute::_1, cute::_0>;
  using StrideB = StrideA;

  template <class ProblemShapeMNKL>
  static typename ConvMainloop::Params to_underlying_arguments(ProblemShapeMNKL const&, Arguments const& args,
                                                               void* workspace) {
    return ConvMainloop::to_underlying_arguments(args.conv, args, workspace);
  }
  template <class ProblemShapeMNKL>
  static bool can_implement(ProblemShapeMNKL const&, Arguments const& args) {
    return ConvMainloop::can_implement(args.conv, args);
  }

  // The GEMM kernels read a batch mode (L) off B's tiles, which the
  // convolution's lack: give them one of extent 1, and take it off again
  // before the convolution's load.
  template <class ProblemShapeMNKL>
  CUTLASS_DEVICE auto load_init(ProblemShapeMNKL const& shape, typename ConvMainloop::Params const& params) {
    auto [gA_mk, gB_nk] = ConvMainloop::load_init(shape, params);
    auto gB_nkl = cute::make_tensor(gB_nk.data(), cute::append(gB_nk.layout(), cute::Layout<cute::_1, cute::_0>{}));
    return cute::make_tuple(gA_mk, gB_nkl);
  }
  template <class TensorA, class TensorB, class... Rest>
  CUTLASS_DEVICE void load(typename ConvMainloop::Params const& params,
                           typename ConvMainloop::MainloopPipeline pipeline,
                           typename ConvMainloop::PipelineState state, cute::tuple<TensorA, TensorB> const& inputs,
                           Rest&&... rest) {
    using cute::_;
    auto gB_nk = cute::get<1>(inputs)(_, _, _, _, 0);
    ConvMainloop::load(params, pipeline, state, cute::make_tuple(cute::get<0>(inputs), gB_nk),
                       static_cast<Rest&&>(rest)...);
  }
};

// The persistent convolution: no CTA start-up per tile (which matters at 64
// channels, where a tile's mainloop is only 9 k-tiles), and the epilogue
// overlapped (ping-pong) or twice as wide (cooperative). Y is the row-major
// [N*P*Q, K] matrix of the GEMM view.
template <class Tile, class ElementD>
struct Sm90ConvFprop {
  using TileShape = typename Tile::TileShape;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using FusedEpilogue = Sm90FusedEpilogue<TileShape, ClusterShape, typename Tile::EpilogueSchedule, ElementD,
                                          cutlass::layout::RowMajor>;
  using CollectiveEpilogue = typename FusedEpilogue::CollectiveOp;
  using ConvMainloop =
      typename Sm90ConvMainloop<Tile, static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>::type;
  using CollectiveMainloop = PersistentConvMainloop<ConvMainloop, typename Tile::KernelSchedule>;
  // (M, N, (C, S, R), L), L dynamic like the epilogue's TMA descriptor type expects.
  using GemmK = cute::remove_cvref_t<decltype(cute::get<2>(ConvMainloop::get_problem_shape_MNKL(Sm90ConvShape{})))>;
  using ProblemShape = cute::Shape<int, int, GemmK, int>;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static Status run(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
    const Sm90ConvShape shape = sm90_conv_shape(p);
    typename Kernel::StrideD dy{p.k, cute::_1{}, int64_t{0}};
    cutlass::KernelHardwareInfo hw;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = device_sm_count();
    const auto [m, n, k, l] = ConvMainloop::get_problem_shape_MNKL(shape);
    typename Device::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                    ProblemShape{m, n, k, 1},
                                    {{p.x, p.filter}, shape},
                                    {FusedEpilogue::args(e), nullptr, dy, static_cast<ElementD*>(p.y), dy},
                                    hw};
    return run_cutlass<Device>(args, stream);
  }
};

// The convolution with the tiles of one schedule, for p's output type: 128
// rows a warpgroup, 64 output channels (layers with at most 64: a 128-wide
// tile would compute half zeros there) or 128 (twice the MACs per byte of
// operand traffic, for wider layers), 64-channel k-tiles, or 32 where C is
// only a multiple of 32 (wgmma's int8 K).
template <bool kCooperative>
Status run_sm90_conv(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  constexpr int kTileM = kCooperative ? 256 : 128;
  return visit_out_type(p.out_type, [&](auto tag) {
    using D = typename decltype(tag)::type;
    if (p.c % 64 != 0) return Sm90ConvFprop<Sm90ConvTile<kTileM, 64, 32, kCooperative>, D>::run(p, e, stream);
    return p.k <= 64 ? Sm90ConvFprop<Sm90ConvTile<kTileM, 64, 64, kCooperative>, D>::run(p, e, stream)
                     : Sm90ConvFprop<Sm90ConvTile<kTileM, 128, 64, kCooperative>, D>::run(p, e, stream);
  });
}

// Instantiated in conv_sm90_cooperative.cu, to compile in parallel.
extern template Status run_sm90_conv<true>(const ConvProblem&, const Epilogue&, cudaStream_t);

}  // namespace torch_int8::kernels::detail
