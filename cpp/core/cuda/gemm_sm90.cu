// Hopper kernel family (sm_90a): CUTLASS 3.x wgmma + TMA, warp-specialized.
#include <cstdlib>
#include <cstring>

#include "families.h"
#include "gemm_sm90.cuh"

namespace torch_int8::kernels::detail {

namespace {

using TileRunner = Status (*)(const GemmProblem&, const Epilogue&, cudaStream_t, int);

template <class Tile>
Status run_tile(const GemmProblem& p, const Epilogue& e, cudaStream_t stream, int sm_count) {
  return e.row_amax ? run_sm90_tile<Tile, true>(p, e, stream, sm_count) : run_sm90_tile<Tile, false>(p, e, stream, sm_count);
}

struct Sm90Tile {
  const char* name;  // for TORCH_INT8_SM90_TILE
  int64_t m, n;
  TileRunner run;
};

constexpr Sm90Tile kCooperative256{"256x128", 256, 128, run_tile<Sm90Cooperative256>};
constexpr Sm90Tile kPingpong128{"128x128", 128, 128, run_tile<Sm90Pingpong128>};
constexpr Sm90Tile kPingpong64x32{"64x32", 64, 32, run_tile<Sm90Pingpong64x32>};
constexpr const Sm90Tile* kTiles[] = {&kCooperative256, &kPingpong128, &kPingpong64x32};

int64_t tiles(const GemmProblem& p, const Sm90Tile& t) { return (p.m + t.m - 1) / t.m * ((p.n + t.n - 1) / t.n) * p.batch; }

// The tile rule (each choice measured against the others on the H200 with
// TORCH_INT8_SM90_TILE, benchmarks/NOTES.md entry 8):
//   256x128 cooperative once the GEMM has at least two waves of them on the
//     device (half the operand traffic per MAC of 128x128), unless it has a
//     fused epilogue and K < 8192: then each tile's epilogue is a large part of
//     its time, and 128x128 ping-pong, where one warpgroup's epilogue overlaps
//     the other's mainloop, was 4-11% faster (M = 8192, N, K in {4096, 11008, 14336});
//   128x128 ping-pong while those tiles fill at least a quarter of the SMs;
//   64x32 below that: GEMMs with few rows are bound by reading B, and 128x128
//     tiles would stream it through a few SMs (M = 64, 128, N = K = 4096: 7.0
//     and 10.3 us against 24 and 25 us). M <= kSkinnyMmaMaxM reaches the rule
//     only when the few-row kernel refuses the problem (alignment).
const Sm90Tile& pick_tile(const GemmProblem& p, int sm_count) {
  const bool short_fused = p.out_type != OutType::kInt32 && p.k < 8192;
  if (tiles(p, kCooperative256) >= 2 * sm_count && !short_fused) return kCooperative256;
  if (4 * tiles(p, kPingpong128) >= sm_count) return kPingpong128;
  return kPingpong64x32;
}

Status run_picked_tile(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const int sm_count = device_sm_count();
  return pick_tile(p, sm_count).run(p, e, stream, sm_count);
}

}  // namespace

// TORCH_INT8_SM90_TILE=256x128|128x128|64x32 forces one configuration (read at
// every call), to benchmark the rule and the few-row kernel against the
// alternatives; unset: the few-row kernel for M <= kSkinnyMmaMaxM, else the rule.
// An unknown name is refused (kInvalidArgument) rather than silently ignored.
Status gemm_sm90(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const char* env = std::getenv("TORCH_INT8_SM90_TILE");
  if (!env || !*env) return few_rows_or_tiles(gemm_skinny_mma, kSkinnyMmaMaxM, run_picked_tile, p, e, stream);
  for (const Sm90Tile* t : kTiles)
    if (std::strcmp(t->name, env) == 0) return t->run(p, e, stream, device_sm_count());
  return Status::kInvalidArgument;
}

}  // namespace torch_int8::kernels::detail
