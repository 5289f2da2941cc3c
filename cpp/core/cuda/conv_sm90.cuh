// CUTLASS 3.x Hopper INT8 implicit-GEMM forward convolution. GEMM view:
// M = N*P*Q output pixels, N = K output channels, GEMM-K = (C, S, R). The
// activation tile is gathered by TMA in im2col mode (padding, stride and
// dilation are applied by the copy engine; no im2col buffer), the filter tile
// by a plain TMA load, wgmma accumulates in int32, and the fused epilogue of
// kernels.h (epilogue_sm90.cuh, shared with the GEMM) stores Y through TMA.
#pragma once

// CUTLASS's conv headers are not self-contained: these two must come first.
#include <cute/tensor.hpp>
#include <cutlass/kernel_hardware_info.hpp>
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/device/conv_universal_adapter.hpp>
#include <cutlass/conv/kernel/conv_universal.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>

#include "epilogue_sm90.cuh"
#include "gemm_common.cuh"
#include "torch_int8/conv.h"

namespace torch_int8::kernels::detail {

// GEMM-K is tiled over the channels only (the tile's K mode is the tuple
// (TileK)), so one k-tile is TileK channels at one filter position: exactly
// what one im2col TMA load fetches. C must therefore be a multiple of TileK.
template <int TileM, int TileN, int TileK>
struct Sm90ConvTile {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Shape<cute::Int<TileK>>>;
};

template <class Tile, class ElementD>
struct Sm90ConvFprop {
  using TileShape = typename Tile::TileShape;
  // No clusters: TMA multicast would only share the filter tile, which is
  // small and stays in L2 anyway.
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using FusedEpilogue = Sm90FusedEpilogue<TileShape, ClusterShape, cutlass::epilogue::TmaWarpSpecialized, ElementD,
                                          cutlass::layout::TensorNHWC>;
  using CollectiveEpilogue = typename FusedEpilogue::CollectiveOp;

  // CUTLASS's implicit-GEMM kernel is not persistent (no ping-pong schedule
  // for convolutions), so a tile's epilogue overlaps another tile's mainloop
  // only if two CTAs share the SM: give the pipeline half the shared memory.
  static constexpr int kSmemCarveout = static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage)) +
                                       cutlass::gemm::collective::detail::sm90_smem_capacity_bytes / 2;
  using CollectiveMainloop = typename cutlass::conv::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
      int8_t, cutlass::layout::TensorNHWC, 16,
      int8_t, cutlass::layout::TensorNHWC, 16,
      int32_t, TileShape, ClusterShape,
      cutlass::conv::collective::StageCountAutoCarveout<kSmemCarveout>,
      cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

  using ProblemShape = cutlass::conv::ConvProblemShape<cutlass::conv::Operator::kFprop, 2>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::conv::device::ConvUniversalAdapter<Kernel>;

  // Dense NHWC activation, KRSC filter and NPQK output; symmetric padding.
  static ProblemShape problem_shape(const ConvProblem& p) {
    auto i = [](int64_t v) { return static_cast<int>(v); };
    using Extent = typename ProblemShape::TensorExtent;
    using Spatial = typename ProblemShape::SpatialExtent;
    const Spatial pad{i(p.pad_h), i(p.pad_w)};
    return ProblemShape(cutlass::conv::Mode::kCrossCorrelation, Extent{i(p.n), i(p.h), i(p.w), i(p.c)},
                        Extent{i(p.k), i(p.r), i(p.s), i(p.c)}, pad, pad, Spatial{i(p.stride_h), i(p.stride_w)},
                        Spatial{i(p.dilation_h), i(p.dilation_w)}, 1);
  }

  static Status run(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
    const ProblemShape shape = problem_shape(p);
    // The epilogue addresses Y as ((Q, P, N), K): output-pixel strides innermost first.
    typename Kernel::StrideD dy{};
    cute::get<0, 0>(dy) = shape.stride_C[2];
    cute::get<0, 1>(dy) = shape.stride_C[1];
    cute::get<0, 2>(dy) = shape.stride_C[0];
    // (No hardware info: the kernel is not persistent, its grid is the tile count.)
    typename Device::Arguments args(shape, {p.x, p.filter},
                                    {FusedEpilogue::args(e), nullptr, dy, static_cast<ElementD*>(p.y), dy});
    return run_cutlass<Device>(args, stream);
  }
};

}  // namespace torch_int8::kernels::detail
