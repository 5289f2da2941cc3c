// The fused epilogue of kernels.h as one epilogue visitor tree, written once
// for both CUTLASS generations. `Nodes` supplies the node types of one
// generation (Sm80Nodes in gemm_sm8x.cuh, Sm90Nodes in epilogue_sm90.cuh):
//   Acc, RowVec (one value per row m), ColVec (per column n), Scalar,
//   Compute<Op, Out> and EVT<Node, Children...>.
//
//   v = fma(row_offset[m], col_sum[n], acc)        zero point of a
//   v = v * row_scale[m]
//   v = fma(v, col_scale[n], col_bias[n])          -> float outputs store v
//   q = rint(v) + out_zero_point                   -> int8 output, saturated
#pragma once

#include "gemm_common.cuh"

namespace torch_int8::kernels::detail {

template <class Nodes, class ElementD>
struct EpilogueTree {
  template <template <class> class Op, class Out>
  using Compute = typename Nodes::template Compute<Op, Out>;
  template <class... Children>
  using EVT = typename Nodes::template EVT<Children...>;
  using RowVec = typename Nodes::RowVec;
  using ColVec = typename Nodes::ColVec;

  static constexpr bool kRequantizes = std::is_same_v<ElementD, int8_t>;

  using ZeroPoint = EVT<Compute<cutlass::homogeneous_multiply_add, float>, RowVec, ColVec, typename Nodes::Acc>;
  using RowScaled = EVT<Compute<cutlass::multiplies, float>, ZeroPoint, RowVec>;
  template <class Out>
  using DequantTo = EVT<Compute<cutlass::homogeneous_multiply_add, Out>, RowScaled, ColVec, ColVec>;
  using Requant = EVT<Compute<RoundThenAdd, ElementD>, DequantTo<float>, typename Nodes::Scalar>;
  using Output = std::conditional_t<kRequantizes, Requant, DequantTo<ElementD>>;

  template <class Out>
  static typename DequantTo<Out>::Arguments dequant_args(const Epilogue& e) {
    auto row = [](const float* v, float fallback) { return typename RowVec::Arguments{v, fallback, {}}; };
    auto col = [](const float* v, float fallback) { return typename ColVec::Arguments{v, fallback, {}}; };
    return {{{row(e.row_offset, 0.f), col(e.col_sum, 0.f), {}, {}}, row(e.row_scale, 1.f), {}},
            col(e.col_scale, 1.f), col(e.col_bias, 0.f), {}};
  }

  static typename Output::Arguments args(const Epilogue& e) {
    if constexpr (kRequantizes) {
      return {dequant_args<float>(e), {{static_cast<float>(e.out_zero_point)}, {}, {}}, {}};
    } else {
      return dequant_args<ElementD>(e);
    }
  }
};

}  // namespace torch_int8::kernels::detail
