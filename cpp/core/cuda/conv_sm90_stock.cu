// TEMPORARY (A/B measurement of NOTES 23): CUTLASS's non-persistent implicit-GEMM
// convolution kernel, the sm90 family's kernel before Sm90ConvFpropPingpong, in
// a file of its own because CUTLASS's 2.x GemmUniversal (pulled in by the GEMM
// adapter that the ping-pong kernel needs) makes its kernel ambiguous.
#include <cute/tensor.hpp>
#include <cutlass/kernel_hardware_info.hpp>
#include <cutlass/conv/collective/collective_builder.hpp>
#include <cutlass/conv/convnd_problem_shape.hpp>
#include <cutlass/conv/device/conv_universal_adapter.hpp>
#include <cutlass/conv/kernel/conv_universal.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>

#include "conv_families.h"
#include "epilogue_sm90.cuh"
#include "gemm_common.cuh"

namespace torch_int8::kernels::detail {
namespace stock {

// GEMM-K is tiled over the channels only (the tile's K mode is the tuple
// (TileK)), so one k-tile is TileK channels at one filter position: exactly
// what one im2col TMA load fetches. C must therefore be a multiple of TileK.
template <int TileM, int TileN, int TileK>
struct Sm90ConvTile {
  using TileShape = cute::Shape<cute::Int<TileM>, cute::Int<TileN>, cute::Shape<cute::Int<TileK>>>;
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

// CUTLASS's convolution mainloop (im2col TMA loads, wgmma) for smem_carveout
// bytes of epilogue storage.
template <class TileShape, int kSmemCarveout>
using Sm90ConvMainloop = typename cutlass::conv::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cutlass::conv::Operator::kFprop,
    int8_t, cutlass::layout::TensorNHWC, 16,
    int8_t, cutlass::layout::TensorNHWC, 16,
    int32_t, TileShape, cute::Shape<cute::_1, cute::_1, cute::_1>,
    cutlass::conv::collective::StageCountAutoCarveout<kSmemCarveout>,
    cutlass::conv::KernelImplicitTmaWarpSpecializedSm90>::CollectiveOp;

// No clusters below: TMA multicast would only share the filter tile, which is
// small and stays in L2 anyway.

// CUTLASS's own implicit-GEMM convolution kernel. It is not persistent (a CTA
// per tile), so a tile's epilogue overlaps another tile's mainloop only if two
// CTAs share the SM: the pipeline gets half the shared memory.
template <class Tile, class ElementD>
struct Sm90ConvFprop {
  using TileShape = typename Tile::TileShape;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using FusedEpilogue = Sm90FusedEpilogue<TileShape, ClusterShape, cutlass::epilogue::TmaWarpSpecialized, ElementD,
                                          cutlass::layout::TensorNHWC>;
  using CollectiveEpilogue = typename FusedEpilogue::CollectiveOp;
  static constexpr int kSmemCarveout = static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage)) +
                                       cutlass::gemm::collective::detail::sm90_smem_capacity_bytes / 2;
  using CollectiveMainloop = Sm90ConvMainloop<TileShape, kSmemCarveout>;
  using Kernel = cutlass::conv::kernel::ConvUniversal<Sm90ConvShape, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::conv::device::ConvUniversalAdapter<Kernel>;

  static Status run(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
    const Sm90ConvShape shape = sm90_conv_shape(p);
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


}  // namespace stock

Status conv2d_fprop_sm90_stock(const ConvProblem& p, const Epilogue& e, cudaStream_t stream) {
  using namespace stock;
  using D = cutlass::bfloat16_t;
  if (p.c % 64 != 0) {
    if (p.c % 32 != 0) return Status::kInvalidArgument;
    return Sm90ConvFprop<Sm90ConvTile<128, 64, 32>, D>::run(p, e, stream);
  }
  return p.k <= 64 ? Sm90ConvFprop<Sm90ConvTile<128, 64, 64>, D>::run(p, e, stream)
                   : Sm90ConvFprop<Sm90ConvTile<128, 128, 64>, D>::run(p, e, stream);
}

}  // namespace torch_int8::kernels::detail
