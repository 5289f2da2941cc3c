// Hopper kernel family (sm_90a): the float-output GEMMs that also write the
// row maxima of |D| (Epilogue::row_amax), one per tile configuration of gemm_sm90.cu.
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {

template <class Tile>
Status run_sm90_row_amax(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, int sm_count) {
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if constexpr (kFloatOutput<ElementD>) {
      if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
      return Sm90Gemm<Tile, ElementD, true>::run(p, e, stream, sm_count);
    } else {
      return Status::kInvalidArgument;
    }
  });
}

template Status run_sm90_row_amax<Sm90Cooperative256>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
template Status run_sm90_row_amax<Sm90Pingpong128>(const GemmProblem&, const Epilogue&, cudaStream_t, int);
template Status run_sm90_row_amax<Sm90Pingpong64x32>(const GemmProblem&, const Epilogue&, cudaStream_t, int);

}  // namespace torch_int8::kernels::detail
