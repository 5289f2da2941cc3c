// The fused epilogue of kernels.h as one epilogue visitor tree, written once
// for both CUTLASS generations. `Nodes` supplies the node types of one
// generation (Sm80Nodes in gemm_sm8x.cuh, Sm90Nodes in epilogue_sm90.cuh):
//   Acc, RowVec (one value per row m), ColVec (per column n), Scalar,
//   Compute<Op, Out> and EVT<Node, Children...>.
//
//   v = fma(row_offset[m], col_sum[n], acc)        zero point of a
//   v = v * row_scale[m]
//   v = fma(v, col_scale[n], col_bias[n])
//   v = max(v, floor)  (NaN kept)                  -> float outputs store v
//   q = rint(v) + out_zero_point                   -> int8 output, saturated
// floor is relu_floor(relu) of epilogue_math.h: 0 or -inf. With kRowAmax (float
// outputs) a RowAbsMax node above the output reduces max |D[m, :]| of the
// converted values into row_amax[m] (register, warp, then atomic max) and
// passes them on to the store unchanged.
#pragma once

#include "../epilogue_math.h"
#include "gemm_common.cuh"

namespace torch_int8::kernels::detail {

// cutlass::maximum with NaN propagation as a one-parameter template (a Compute node's Op).
template <class T>
struct MaxKeepNaN : cutlass::maximum<T, true> {};
// max(a, |b|) keeping NaN: the register step of the row maxima of |D|.
template <class T>
struct MaxAbsKeepNaN : cutlass::maximum_absolute_value_reduction<T, true> {};

template <class Nodes, class ElementD, bool kRowAmax = false>
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
  using Dequant = EVT<Compute<cutlass::homogeneous_multiply_add, float>, RowScaled, ColVec, ColVec>;
  template <class Out>
  using FlooredTo = EVT<Compute<MaxKeepNaN, Out>, Dequant, typename Nodes::Scalar>;
  using Requant = EVT<Compute<RoundThenAdd, ElementD>, FlooredTo<float>, typename Nodes::Scalar>;
  static_assert(!(kRowAmax && kRequantizes), "row maxima are taken of float outputs");
  using WithRowAmax = EVT<typename Nodes::RowAbsMax, FlooredTo<ElementD>>;
  using Output = std::conditional_t<kRequantizes, Requant, std::conditional_t<kRowAmax, WithRowAmax, FlooredTo<ElementD>>>;

  static typename Nodes::Scalar::Arguments scalar(float v) { return {{v}, {}, {}}; }

  template <class Out>
  static typename FlooredTo<Out>::Arguments floored_args(const Epilogue& e) {
    auto row = [](const float* v, float fallback) { return typename RowVec::Arguments{v, fallback, {}}; };
    auto col = [](const float* v, float fallback) { return typename ColVec::Arguments{v, fallback, {}}; };
    typename Dequant::Arguments dequant{{{row(e.row_offset, 0.f), col(e.col_sum, 0.f), {}, {}}, row(e.row_scale, 1.f), {}},
                                        col(e.col_scale, 1.f), col(e.col_bias, 0.f), {}};
    return {dequant, scalar(relu_floor(e.relu)), {}};
  }

  static typename Output::Arguments args(const Epilogue& e) {
    if constexpr (kRequantizes) {
      return {floored_args<float>(e), scalar(static_cast<float>(e.out_zero_point)), {}};
    } else if constexpr (kRowAmax) {
      return {floored_args<ElementD>(e), {e.row_amax, 0.f, {}}};
    } else {
      return floored_args<ElementD>(e);
    }
  }
};

}  // namespace torch_int8::kernels::detail
