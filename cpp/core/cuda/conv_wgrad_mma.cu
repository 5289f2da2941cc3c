// Weight gradient of a convolution as an implicit GEMM on tensor cores
// (mma.sync m16n8k32, sm_80+), from per-image quantized NHWC operands: no
// column buffer, no transposed copies (conv.h, ScaledWgrad).
//
// For one filter tap (r, s), dW[:, r, s, :] is the GEMM D[K, C] reducing over
// the output pixels (p, q) of every image. A block owns one tap, 64 output
// channels k, 64 input channels c and an even share of the pixels: a stretch
// of the sequence of 64-pixel stages, image after image. A 4-stage cp.async
// pipeline stages each stage's rows of dY (64 bytes per pixel, coalesced) and
// the X pixels those meet at the block's tap (one 16-byte copy per pixel and
// 16 channels, zero-filled outside the image: padding, stride and dilation are
// index arithmetic, kept incremental so that no division runs per stage).
// The GEMM reduces over pixels, which NHWC does not store contiguously, so
// each lane reads 4 channels x 4 pixels (four 32-bit words) and transposes
// them with byte permutes into the 4-pixel words the mma takes.
//
// The mma rows and columns are a permutation of the channels: a lane's 4
// consecutive channels become rows group and group + 8 of the warp's two
// 16-row tiles (A) or column group of its four 8-column tiles (B), which keeps
// one transpose per operand and pixel quad. Sums stay int32 within an image
// (and within kFlushStages stages: no overflow) and are scaled into float32 at
// its end, or at the end of the block's stretch, with that image's two scales.
#include <cuda_runtime_api.h>

#include <algorithm>

#include "conv_families.h"
#include "device_info.h"
#include "mma_sm80.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "conv_wgrad_mma.cu needs mma.sync m16n8k32 (sm_80 or newer)"
#endif

namespace torch_int8::kernels::detail {
namespace {

constexpr int kTileK = 64;  // output channels per block (mma rows)
constexpr int kTileC = 64;  // input channels per block (mma columns)
constexpr int kPixels = 64;  // pixels per stage: two mma k-steps of 32
constexpr int kStages = 4;  // cp.async pipeline depth: three stages in flight while one computes
constexpr int kThreads = 128;  // 4 warps, each 32 k x 32 c
constexpr int kMinBlocksPerSm = 4;  // 128 registers per thread at most
constexpr int kVector = 16;  // bytes per copy: 16 channels of one pixel
constexpr int kChunks = kTileK / kVector;  // copies per pixel row
constexpr int kCopies = kPixels * kChunks / kThreads;  // copies of each operand per thread and stage
constexpr int kRowStride = kThreads / kChunks;  // between a thread's rows of a stage
static_assert(kTileK == kTileC && kChunks == 4 && kPixels * kChunks % kThreads == 0, "the layout below");
// |int32 sum| <= 128 * 128 * kPixels * kFlushStages < 2^31: flush to float32 at least this often.
constexpr int kFlushStages = 2047;

// A stage holds kPixels rows of 64 channel bytes per operand. The 16-byte
// chunks of row p sit at chunk ^ (p & 2): a fragment load (below) reads rows
// 4 j + quad, whose parity (quad) picks the bank half and whose bit 1 then
// flips the chunk pair, so its 32 lanes hit 32 different banks.
struct Stage {
  int8_t dy[kPixels][kTileK];
  int8_t x[kPixels][kTileC];
};

__device__ __forceinline__ int swizzled(int row, int byte) { return byte ^ ((row & 2) << 4); }

// out[i] = byte i of w[0], w[1], w[2], w[3]: 4 channels x 4 pixels -> 4 pixels of each channel.
__device__ __forceinline__ void transpose_bytes(const int (&w)[4], int (&out)[4]) {
  const int t0 = __byte_perm(w[0], w[1], 0x5140), t1 = __byte_perm(w[0], w[1], 0x7362);
  const int t2 = __byte_perm(w[2], w[3], 0x5140), t3 = __byte_perm(w[2], w[3], 0x7362);
  out[0] = __byte_perm(t0, t2, 0x5410), out[1] = __byte_perm(t0, t2, 0x7632);
  out[2] = __byte_perm(t1, t3, 0x5410), out[3] = __byte_perm(t1, t3, 0x7632);
}

// Channels [channel, channel + 4) of the pixels row0 + 4 j + quad (j = 0..3), one int per channel
// whose byte j is pixel 4 j + quad: the mma's k order 4 quad + j maps to that pixel, the same for
// both operands.
__device__ __forceinline__ void load_quad(const int8_t (&rows)[kPixels][kTileK], int row0, int quad, int channel,
                                          int (&out)[4]) {
  int w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int row = row0 + 4 * j + quad;
    w[j] = *reinterpret_cast<const int*>(&rows[row][swizzled(row, channel)]);
  }
  transpose_bytes(w, out);
}

// f(i, j, e) for each accumulator of a lane: A tile i (of 2), B tile j (of 4), value e (of 4).
template <class F>
__device__ __forceinline__ void for_each_accumulator(F&& f) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) f(i, j, e);
}

// 16 bytes global -> shared, bypassing L1 and the registers; zeros where !valid (src unread).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void wait_copies() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending)); }

__device__ __forceinline__ int stages_per_image(const ConvProblem& p) {
  return static_cast<int>((p.p * p.q + kPixels - 1) / kPixels);
}

// What one block computes: its tap, its channel tiles and its stretch of the
// stage sequence, an even share (to one stage) of all the tile's stages.
struct BlockWork {
  int r, s;
  int h_offset, w_offset;  // the input row / column of output pixel (0, 0) at this tap
  int64_t k0, c0;
  int64_t first_stage, stages;
};

__device__ BlockWork block_work(const ConvProblem& p, int64_t splits) {
  const int64_t tiles_c = (p.c + kTileC - 1) / kTileC, tiles_k = (p.k + kTileK - 1) / kTileK;
  int64_t t = blockIdx.x;
  BlockWork b;
  b.c0 = t % tiles_c * kTileC, t /= tiles_c;
  b.k0 = t % tiles_k * kTileK, t /= tiles_k;
  b.r = static_cast<int>(t / p.s), b.s = static_cast<int>(t % p.s);
  b.h_offset = static_cast<int>(b.r * p.dilation_h - p.pad_h);
  b.w_offset = static_cast<int>(b.s * p.dilation_w - p.pad_w);
  const int64_t total = p.n * stages_per_image(p);
  b.first_stage = total * blockIdx.y / splits;
  b.stages = total * (blockIdx.y + 1) / splits - b.first_stage;
  return b;
}

// Walks a block's stages: image n, pixels m0 .. m0 + kPixels of it.
struct Cursor {
  int64_t n;
  int m0;
  __device__ bool image_end(int per_image) const { return m0 + kPixels >= per_image; }
  __device__ void advance(int per_image) {
    m0 += kPixels;
    if (m0 >= per_image) m0 = 0, ++n;
  }
};

// This thread's copies of each stage: rows row + i kRowStride, 16 bytes at `byte` of each. The
// rows' output pixels are tracked as (oh, ow), advanced by kPixels without a division; operands
// are addressed as an image base plus a 32-bit offset inside the image (the host checks that
// one image of X or dY is under 2^31 bytes).
struct Copier {
  Cursor at;
  int row, byte, width;
  int step_oh, step_ow;               // kPixels pixels as whole output rows + columns (step_ow < Q)
  int oh[kCopies], ow[kCopies];       // the rows' output pixels at the current stage
  int first_oh, first_ow;             // row's output pixel at stage 0 of an image (+ i rows: below)
  const int8_t* dy_image;
  const int8_t* x_image;

  __device__ Copier(const ScaledWgrad& w, const BlockWork& b) {
    const ConvProblem& p = w.geometry;
    const int spi = stages_per_image(p);
    at = {b.first_stage / spi, static_cast<int>(b.first_stage % spi) * kPixels};
    row = threadIdx.x / kChunks, byte = threadIdx.x % kChunks * kVector, width = static_cast<int>(p.q);
    step_oh = kPixels / width, step_ow = kPixels % width;
    first_oh = row / width, first_ow = row % width;
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int m = at.m0 + row + i * kRowStride;
      oh[i] = m / width, ow[i] = m % width;
    }
    set_image(w, b);
  }

  __device__ void set_image(const ScaledWgrad& w, const BlockWork& b) {
    const ConvProblem& p = w.geometry;
    dy_image = w.grad_out + at.n * (p.p * p.q * p.k) + b.k0 + byte;
    x_image = w.x + at.n * (p.h * p.w * p.c) + b.c0 + byte;
  }

  // Issues this thread's copies of the cursor's stage into st, then moves the cursor on.
  __device__ void copy_and_advance(const ScaledWgrad& w, const BlockWork& b, Stage& st) {
    const ConvProblem& p = w.geometry;
    const int per_image = static_cast<int>(p.p * p.q);
    const bool k_ok = b.k0 + byte < p.k, c_ok = b.c0 + byte < p.c;
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int r = row + i * kRowStride, m = at.m0 + r;
      const int h = oh[i] * static_cast<int>(p.stride_h) + b.h_offset;
      const int x_w = ow[i] * static_cast<int>(p.stride_w) + b.w_offset;
      const bool dy_ok = m < per_image && k_ok;
      const bool x_ok = m < per_image && c_ok && h >= 0 && h < p.h && x_w >= 0 && x_w < p.w;
      copy16(&st.dy[r][swizzled(r, byte)], dy_ok ? dy_image + m * static_cast<int>(p.k) : w.grad_out, dy_ok);
      copy16(&st.x[r][swizzled(r, byte)],
             x_ok ? x_image + (h * static_cast<int>(p.w) + x_w) * static_cast<int>(p.c) : w.x, x_ok);
    }
    if (at.image_end(per_image)) {
      at.advance(per_image);
      set_image(w, b);
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {  // row + i kRowStride from stage 0, as (oh, ow)
        const int ow_i = first_ow + i * (kRowStride % width);
        oh[i] = first_oh + i * (kRowStride / width) + (ow_i >= width ? 1 : 0);
        ow[i] = ow_i >= width ? ow_i - width : ow_i;
      }
      return;
    }
    at.advance(per_image);
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      ow[i] += step_ow, oh[i] += step_oh;
      if (ow[i] >= width) ow[i] -= width, ++oh[i];
    }
  }
};

__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) wgrad_mma_kernel(ScaledWgrad w) {
  __shared__ __align__(128) Stage stage[kStages];
  const ConvProblem& p = w.geometry;
  const BlockWork b = block_work(p, w.splits);
  const int per_image = static_cast<int>(p.p * p.q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates
  // The warp's 32 x 32 piece of the tile; this lane's 4 channels of each operand.
  const int lane_k = (warp / 2) * 32 + 4 * group, lane_c = (warp % 2) * 32 + 4 * group;

  Copier copier(w, b);
  Cursor at = copier.at;
  // Stages past the block's last are not copied, but their (empty) groups are committed all the
  // same: wait_copies counts groups.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < b.stages) copier.copy_and_advance(w, b, stage[s]);
    commit_copies();
  }

  int acc[2][4][4] = {};
  float sum[2][4][4] = {};
  for (int64_t step = 0, since_flush = 0; step < b.stages; ++step) {
    wait_copies<kStages - 2>();
    __syncthreads();  // this stage landed for every thread; the one computed last step is free
    if (step + kStages - 1 < b.stages) copier.copy_and_advance(w, b, stage[(step + kStages - 1) % kStages]);
    commit_copies();

    const Stage& st = stage[step % kStages];
#pragma unroll
    for (int k_step = 0; k_step < kPixels; k_step += 32) {
      int a_lo[4], a_hi[4], b_lo[4], b_hi[4];
      load_quad(st.dy, k_step, quad, lane_k, a_lo);
      load_quad(st.dy, k_step + 16, quad, lane_k, a_hi);
      load_quad(st.x, k_step, quad, lane_c, b_lo);
      load_quad(st.x, k_step + 16, quad, lane_c, b_hi);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_s8(acc[i][j], a_lo[2 * i], a_lo[2 * i + 1], a_hi[2 * i], a_hi[2 * i + 1],
                                           b_lo[j], b_hi[j]);
    }

    if (at.image_end(per_image) || step + 1 == b.stages || ++since_flush == kFlushStages) {
      const float scale =
          w.scale_grad_out[w.grad_out_per_tensor ? 0 : at.n] * w.scale_x[w.x_per_tensor ? 0 : at.n];
      for_each_accumulator([&](int i, int j, int e) {
        sum[i][j][e] += static_cast<float>(acc[i][j][e]) * scale;
        acc[i][j][e] = 0;
      });
      since_flush = 0;
    }
    at.advance(per_image);
  }
  wait_copies<0>();  // no copy outlives the block

  // Fragment (i, j, e) -> channels: row group + 8 (e / 2) of A tile i is k = lane_k + 2 i + e / 2;
  // column 2 quad + e % 2 of B tile j is c = the c base of the lanes loading that column + j.
  float* out = w.partial + blockIdx.y * p.k * p.r * p.s * p.c;
  const int warp_c = (warp % 2) * 32;
  for_each_accumulator([&](int i, int j, int e) {
    const int64_t k = b.k0 + lane_k + 2 * i + e / 2;
    const int64_t c = b.c0 + warp_c + 4 * (2 * quad + e % 2) + j;
    if (k < p.k && c < p.c) out[((k * p.r + b.r) * p.s + b.s) * p.c + c] = sum[i][j][e];
  });
}

int64_t tiles(const ConvProblem& p) {
  return p.r * p.s * ((p.k + kTileK - 1) / kTileK) * ((p.c + kTileC - 1) / kTileC);
}

}  // namespace

// How many stretches per tile: the fewest that keep the resident blocks of
// every SM 90% busy over the waves (tiles x splits blocks; a last, partial wave
// runs at the speed of a full one), else the best within the partials' memory
// (splits x K*R*S*C floats, at most 2^24 of them, or 1 split) and the stages.
int64_t wgrad_mma_splits(const ConvProblem& p, int sm_count) {
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, wgrad_mma_kernel, kThreads, 0) != cudaSuccess)
    per_sm = 1;
  const int64_t resident = int64_t{std::max(per_sm, 1)} * sm_count;
  const int64_t stages = p.n * ((p.p * p.q + kPixels - 1) / kPixels);
  const int64_t most = std::clamp<int64_t>((int64_t{1} << 24) / (p.k * p.r * p.s * p.c), 1, stages);
  int64_t best = 1;
  double best_busy = 0;
  for (int64_t splits = 1; splits <= most; ++splits) {
    const double busy = wave_efficiency(tiles(p) * splits, resident);
    if (busy >= 0.9) return splits;
    if (busy > best_busy) best = splits, best_busy = busy;
  }
  return best;
}

Status conv2d_wgrad_mma(const ScaledWgrad& w, cudaStream_t stream) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % kVector == 0; };
  const ConvProblem& p = w.geometry;
  constexpr int64_t kInt32 = int64_t{1} << 31;  // the in-image offsets of Copier
  static_assert(kVector == kWgradVector, "conv_rules.h's wgrad rule is this kernel's copy width");
  if (!wgrad_channels_ok(p.c, p.k, p.groups) || !aligned(w.grad_out) || !aligned(w.x) ||
      p.h * p.w * p.c >= kInt32 || p.p * p.q * p.k >= kInt32)
    return Status::kInvalidArgument;
  const dim3 grid(static_cast<unsigned>(tiles(p)), static_cast<unsigned>(w.splits));
  wgrad_mma_kernel<<<grid, kThreads, 0, stream>>>(w);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace torch_int8::kernels::detail
