// SIMT INT8 GEMM for GPUs without INT8 tensor cores (Maxwell, Pascal, Volta,
// Jetson), with the fused epilogue of kernels.h. One tiled kernel template; a
// math policy says how int8 products are formed and accumulated:
//   Dp4aMath (gemm_dp4a.cu, sm_61+)       __dp4a: four int8 products into an int32
//   ExactFp32Math (gemm_simt.cu, sm_50+)  exact FP32 FMAs, flushed into an int32
//
// A math policy provides:
//   Element, kKPerElement  what shared memory holds per k step, and how many int8
//                          k values of one row it stands for (4 packed, or 1 float)
//   kTileK                 int8 k values per pipeline stage
//   LoadVector, unpack()   one thread's global load (k-contiguous bytes of one row)
//                          and its conversion into Elements
//   Accumulator            mac(a, b), flush(), value() -> exact int32
//   kFlushK                k values an Accumulator takes between flush() calls
//   kMaxRegisters          register cap per thread (sets __launch_bounds__)
//
// Data flow per block (kM x kN outputs, 8 x 8 per thread): global -> registers
// -> shared memory (transposed, [k element][row], double buffered: one barrier
// per stage, the next stage's global loads in flight during the math) ->
// registers (two 16-byte vectors per operand and k element) -> 64 independent
// multiply-accumulates per k element.
#pragma once

#include <cstdint>
#include <type_traits>

#include "epilogue_simt.cuh"
#include "gemm_common.cuh"

namespace torch_int8::kernels::detail {

// Four values in one aligned vector: 16-byte shared memory reads of four
// Elements, and the 4-column output stores (16, 8 or 4 bytes).
template <class T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

template <int kM_, int kN_>
struct SimtTile {
  static constexpr int kM = kM_, kN = kN_;
  // Each thread owns 8 x 8 outputs: rows {4 ty + i, 4 ty + i + kM/2} and
  // columns {4 tx + j, 4 tx + j + kN/2} (i, j < 4). Splitting them into two
  // halves keeps a warp's 16-byte shared reads on consecutive addresses.
  static constexpr int kThreadsM = kM / 8, kThreadsN = kN / 8;
  static constexpr int kThreads = kThreadsM * kThreadsN;
  static_assert(kThreadsM % 4 == 0 && kThreadsN % 8 == 0, "a warp covers 4 x 8 threads of the tile");
};
using SimtTileLarge = SimtTile<128, 128>;  // 256 threads
using SimtTileSmall = SimtTile<64, 64>;    // 64 threads: for grids that 128 x 128 tiles would not fill

// A thread's place (ty, tx) in the tile. A warp covers 4 x 8 threads, so its
// shared reads are 4 (A) and 8 (B) consecutive 16-byte vectors, broadcast to
// the other lanes: no bank conflicts.
struct ThreadCoord {
  int row, col;
};
template <class Tile>
__device__ ThreadCoord thread_coord() {
  constexpr int kWarpsN = Tile::kThreadsN / 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  return {warp / kWarpsN * 4 + lane / 8, warp % kWarpsN * 8 + lane % 8};
}

// One operand's part of a stage: kRows K-contiguous rows of Math::kTileK int8
// values, read as LoadVectors and stored transposed, smem[k element][row], so
// that the math reads the Elements of 4 consecutive rows as one vector. Each
// thread reads one row (kLoads vectors, kLoadStride bytes apart along k); a
// warp covers 32 consecutive rows, so its shared stores hit 32 different banks.
// Rows past the matrix and k past K read as zeros, which add nothing.
template <class Math, int kRows, int kThreads>
class OperandLoader {
 public:
  using Element = typename Math::Element;
  using Vector = typename Math::LoadVector;
  static constexpr int kStageK = Math::kTileK / Math::kKPerElement;
  using Stage = Element[kStageK][kRows];

  // rows: first row of this block's tile; valid_rows: rows left in the matrix.
  __device__ OperandLoader(const int8_t* rows, int64_t ld, int64_t valid_rows, int64_t k)
      : row_(threadIdx.x % kRows),
        k_first_(threadIdx.x / kRows * kVectorBytes),
        k_left_(k - k_first_),
        ptr_(row_ < valid_rows ? rows + row_ * ld + k_first_ : nullptr) {}

  // Global loads of the stage starting at k0 (into registers).
  __device__ void load(int64_t k0) {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kLoads; ++i) {
      const int64_t k = k0 + i * kLoadStride;
      regs_[i] = ptr_ && k < k_left_ ? __ldg(reinterpret_cast<const Vector*>(ptr_ + k)) : Vector{};
    }
  }

  __device__ void store(Stage& stage) const {
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < kLoads; ++i) {
      Element e[kElementsPerVector];
      Math::unpack(regs_[i], e);
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < kElementsPerVector; ++j)
        stage[(k_first_ + i * kLoadStride) / Math::kKPerElement + j][row_] = e[j];
    }
  }

 private:
  static constexpr int kVectorBytes = sizeof(Vector);
  static constexpr int kElementsPerVector = kVectorBytes / Math::kKPerElement;
  static constexpr int kLoadStride = kThreads / kRows * kVectorBytes;
  static constexpr int kLoads = Math::kTileK / kLoadStride;
  static_assert(kThreads % kRows == 0 && kLoads * kLoadStride == Math::kTileK, "threads must split the stage evenly");
  static_assert(16 % kVectorBytes == 0, "K is a multiple of 16: every vector is wholly inside or past K");

  int row_, k_first_;
  int64_t k_left_;     // K - k_first_: the loads of a stage at k0 are in K while k0 + i kLoadStride < k_left_
  const int8_t* ptr_;  // this thread's row at k_first_, or null for a row past the matrix
  Vector regs_[kLoads];
};

// The thread's 8 Elements of one k element: two 16-byte shared reads.
template <int kRows, class Element>
__device__ void load_fragment(const Element (&line)[kRows], int pos, Vec4<Element> (&frag)[2]) {
  frag[0] = *reinterpret_cast<const Vec4<Element>*>(&line[pos * 4]);
  frag[1] = *reinterpret_cast<const Vec4<Element>*>(&line[pos * 4 + kRows / 2]);
}

// The outer products of one stage into the thread's 8 x 8 accumulators.
template <class Math, class Tile, class StageA, class StageB>
__device__ void mma_stage(const StageA& a, const StageB& b, ThreadCoord t,
                          typename Math::Accumulator (&acc)[8][8]) {
  using Element = typename Math::Element;
  CUTLASS_PRAGMA_UNROLL
  for (int kk = 0; kk < Math::kTileK / Math::kKPerElement; ++kk) {
    Vec4<Element> fa[2], fb[2];
    load_fragment<Tile::kM>(a[kk], t.row, fa);
    load_fragment<Tile::kN>(b[kk], t.col, fb);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < 8; ++j) acc[i][j].mac(fa[i / 4].v[i % 4], fb[j / 4].v[j % 4]);
    }
  }
}

template <class Accumulator>
__device__ void flush(Accumulator (&acc)[8][8]) {
  CUTLASS_PRAGMA_UNROLL
  for (int i = 0; i < 8; ++i) {
    CUTLASS_PRAGMA_UNROLL
    for (int j = 0; j < 8; ++j) acc[i][j].flush();
  }
}

// --- epilogue ----------------------------------------------------------------

// Four consecutive outputs of one row from column n0; nothing past column n.
template <class ElementD>
__device__ void store_quad(ElementD* row, int64_t n0, int64_t n, const Vec4<ElementD>& q) {
  if (n0 + 4 <= n) {
    *reinterpret_cast<Vec4<ElementD>*>(row + n0) = q;
    return;
  }
  CUTLASS_PRAGMA_UNROLL
  for (int j = 0; j < 4; ++j)
    if (n0 + j < n) row[n0 + j] = q.v[j];
}

// Writes the thread's 8 x 8 results (rows < M, columns < N) through the fused
// epilogue, or the accumulators themselves for int32 output. One half of the
// columns at a time: fewer column parameters live beside the accumulators.
template <class Tile, class ElementD, class Accumulator>
__device__ void store_outputs(const GemmProblem& p, const Epilogue& e, int64_t m0, int64_t n0, int64_t batch,
                              ThreadCoord t, const Accumulator (&acc)[8][8]) {
  constexpr bool kStoresAccumulator = std::is_same_v<ElementD, int32_t>;
  ElementD* d = static_cast<ElementD*>(p.d) + batch * p.batch_stride_d;
  CUTLASS_PRAGMA_UNROLL
  for (int h = 0; h < 2; ++h) {
    const int64_t n_first = n0 + t.col * 4 + h * (Tile::kN / 2);
    ColParams col[4];
    if constexpr (!kStoresAccumulator) {
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int64_t n = n_first + j;
        if (n < p.n) col[j] = {load_or(e.col_sum, n, 0.f), load_or(e.col_scale, n, 1.f), load_or(e.col_bias, n, 0.f)};
      }
    }
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + t.row * 4 + i % 4 + i / 4 * (Tile::kM / 2);
      if (m >= p.m) continue;
      RowParams row;
      if constexpr (!kStoresAccumulator) row = {load_or(e.row_offset, m, 0.f), load_or(e.row_scale, m, 1.f)};
      Vec4<ElementD> q;
      CUTLASS_PRAGMA_UNROLL
      for (int j = 0; j < 4; ++j) {
        const int32_t v = acc[i][h * 4 + j].value();
        if constexpr (kStoresAccumulator) {
          q.v[j] = v;
        } else {
          q.v[j] = epilogue_output<ElementD>(v, row, col[j], e);
        }
      }
      store_quad(d + m * p.ldd, n_first, p.n, q);
      if constexpr (kFloatOutput<ElementD>) {
        if (e.row_amax) {
          unsigned bits = 0;
          CUTLASS_PRAGMA_UNROLL
          for (int j = 0; j < 4; ++j)
            if (n_first + j < p.n) bits = max(bits, abs_bits(static_cast<float>(q.v[j])));
          add_row_amax(e, m, bits);
        }
      }
    }
  }
}

// --- kernel ------------------------------------------------------------------

// Blocks resident per SM at the policy's register cap (every GPU from sm_50 on
// has 64K registers per SM).
template <class Math, class Tile>
constexpr int kSimtMinBlocks = 65536 / (Tile::kThreads * Math::kMaxRegisters);

// Block (x, y, z) computes rows [kM x, kM (x + 1)), columns [kN y, kN (y + 1)) of batch z.
template <class Math, class Tile, class ElementD>
__global__ void __launch_bounds__(Tile::kThreads, (kSimtMinBlocks<Math, Tile>))
    simt_gemm_kernel(GemmProblem p, Epilogue e) {
  using LoaderA = OperandLoader<Math, Tile::kM, Tile::kThreads>;
  using LoaderB = OperandLoader<Math, Tile::kN, Tile::kThreads>;
  __shared__ alignas(16) typename LoaderA::Stage smem_a[2];
  __shared__ alignas(16) typename LoaderB::Stage smem_b[2];

  const int64_t m0 = int64_t{blockIdx.x} * Tile::kM, n0 = int64_t{blockIdx.y} * Tile::kN, batch = blockIdx.z;
  LoaderA load_a(p.a + batch * p.batch_stride_a + m0 * p.lda, p.lda, p.m - m0, p.k);
  LoaderB load_b(p.b + batch * p.batch_stride_b + n0 * p.ldb, p.ldb, p.n - n0, p.k);
  const ThreadCoord t = thread_coord<Tile>();
  typename Math::Accumulator acc[8][8];

  const int64_t stages = (p.k + Math::kTileK - 1) / Math::kTileK;
  constexpr int kStagesPerFlush = Math::kFlushK / Math::kTileK;
  static_assert(kStagesPerFlush >= 1 && Math::kFlushK % Math::kTileK == 0, "flush between whole stages");
  load_a.load(0);
  load_b.load(0);
  load_a.store(smem_a[0]);
  load_b.store(smem_b[0]);
  __syncthreads();
  for (int64_t s = 0; s < stages; ++s) {
    // The next stage's global loads are in flight during this stage's math; its
    // buffer was last read in stage s - 1, which every thread has left. After
    // the last stage they load nothing (k >= K reads as zeros, without a memory
    // access) and fill a buffer no one reads: no branch, which would let the
    // compiler move the loads behind the math.
    load_a.load((s + 1) * Math::kTileK);
    load_b.load((s + 1) * Math::kTileK);
    mma_stage<Math, Tile>(smem_a[s % 2], smem_b[s % 2], t, acc);
    load_a.store(smem_a[(s + 1) % 2]);
    load_b.store(smem_b[(s + 1) % 2]);
    __syncthreads();
    if ((s + 1) % kStagesPerFlush == 0) flush(acc);
  }
  flush(acc);
  store_outputs<Tile, ElementD>(p, e, m0, n0, batch, t, acc);
}

template <class Math, class Tile, class ElementD>
Status launch_simt_gemm(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const int64_t grid_m = (p.m + Tile::kM - 1) / Tile::kM, grid_n = (p.n + Tile::kN - 1) / Tile::kN;
  if (grid_m > INT32_MAX || grid_n > 65535 || p.batch > 65535) return Status::kInvalidArgument;
  const dim3 grid(static_cast<unsigned>(grid_m), static_cast<unsigned>(grid_n), static_cast<unsigned>(p.batch));
  simt_gemm_kernel<Math, Tile, ElementD><<<grid, Tile::kThreads, 0, stream>>>(p, e);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// Large tiles when there are enough of them for two blocks on every SM and the
// ragged edges waste at most 1/8 more work than small tiles do; small tiles
// otherwise (small M or N, e.g. decode or a 64-channel convolution).
inline bool use_large_tile(const GemmProblem& p, int sm_count) {
  auto padded_work = [&](int64_t tm, int64_t tn) {
    return (p.m + tm - 1) / tm * tm * ((p.n + tn - 1) / tn * tn);
  };
  constexpr int64_t kM = SimtTileLarge::kM, kN = SimtTileLarge::kN;
  const int64_t tiles = (p.m + kM - 1) / kM * ((p.n + kN - 1) / kN) * p.batch;
  return tiles >= 2 * int64_t{sm_count} &&
         8 * padded_work(kM, kN) <= 9 * padded_work(SimtTileSmall::kM, SimtTileSmall::kN);
}

// A whole SIMT family: requirement checks, tile choice, one kernel per output type.
template <class Math>
Status gemm_simt_family(const GemmProblem& p, const Epilogue& e, cudaStream_t stream) {
  const int sm_count = device_sm_count();
  if (sm_count == 0) return Status::kCudaError;
  return visit_out_type(p.out_type, [&](auto tag) {
    using ElementD = typename decltype(tag)::type;
    if (!meets_alignment(p, sizeof(ElementD))) return Status::kInvalidArgument;
    return use_large_tile(p, sm_count) ? launch_simt_gemm<Math, SimtTileLarge, ElementD>(p, e, stream)
                                       : launch_simt_gemm<Math, SimtTileSmall, ElementD>(p, e, stream);
  });
}

}  // namespace torch_int8::kernels::detail
