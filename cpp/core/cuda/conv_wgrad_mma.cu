// Weight gradient of a convolution as an implicit GEMM on tensor cores
// (mma.sync m16n8k32, sm_80+), from per-image quantized NHWC operands: no
// column buffer, no transposed copies (conv.h, ScaledWgrad).
//
// For one filter tap (r, s), dW[:, r, s, :] is the GEMM D[K, C] reducing over
// the output pixels (p, q) of every image. A block owns one tap, 64 output
// channels k, 64 input channels c and a range of images. Each step stages 32
// pixels: their rows of dY (64 bytes each, coalesced) and the X pixels those
// meet at the block's tap (one 16-byte vector per pixel and 16 channels,
// zero outside the image: padding, stride and dilation are index arithmetic).
// The GEMM reduces over pixels, which NHWC does not store contiguously, so
// each lane reads 4 channels x 4 pixels (four 32-bit words) and transposes
// them with byte permutes into the 4-pixel words the mma takes.
//
// The mma rows and columns are a permutation of the channels: a lane's 4
// consecutive channels become rows group and group + 8 of the warp's two
// 16-row tiles (A) or column group of its four 8-column tiles (B), which keeps
// one transpose per operand and pixel quad. Sums stay int32 within an image
// (and within kFlushSteps steps: no overflow) and are scaled into float32 at
// its end with that image's two scales.
#include <cuda_runtime_api.h>

#include "conv_families.h"
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
constexpr int kVector = 16;  // bytes per copy: 16 channels of one pixel
constexpr int kChunks = kTileK / kVector;  // copies per pixel row
constexpr int kCopies = kPixels * kChunks / kThreads;  // copies of each operand per thread and stage
static_assert(kTileK == kTileC && kChunks == 4 && kPixels * kChunks % kThreads == 0, "the layout below");
// |int32 sum| <= 128 * 128 * kPixels * kFlushSteps < 2^31: flush to float32 at least this often.
constexpr int kFlushSteps = 2047;

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

// 16 bytes global -> shared, bypassing L1 and the registers; zeros where !valid (src unread).
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;"); }
template <int kPending>
__device__ __forceinline__ void wait_copies() { asm volatile("cp.async.wait_group %0;" ::"n"(kPending)); }

// Where one block works: its tap, channel tiles and image range.
struct BlockWork {
  int r, s;
  int h_offset, w_offset;  // the input row / column of output pixel (0, 0) at this tap
  int64_t k0, c0;
  int64_t n_begin, n_end;
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
  b.n_begin = p.n * blockIdx.y / splits, b.n_end = p.n * (blockIdx.y + 1) / splits;
  return b;
}

// A position in the block's sequence of stages: kPixels pixels from m0 of image n.
struct Cursor {
  int64_t n;
  int m0;
  __device__ bool image_end(int per_image) const { return m0 + kPixels >= per_image; }
  __device__ void advance(int per_image) {
    m0 += kPixels;
    if (m0 >= per_image) m0 = 0, ++n;
  }
};

// This thread's copies of one stage (none past the block's last image; zeros outside the image).
__device__ __forceinline__ void copy_stage(const ScaledWgrad& w, const BlockWork& b, const Cursor& at, Stage& st) {
  const ConvProblem& p = w.geometry;
  if (at.n >= b.n_end) return;
  // 32-bit pixel arithmetic (conv_geometry_ok bounds N*P*Q and N*H*W by 2^31): no 64-bit division.
  const int per_image = static_cast<int>(p.p * p.q), width = static_cast<int>(p.q);
  const int chunk = threadIdx.x % kChunks, byte = chunk * kVector;
  const int64_t k = b.k0 + byte, c = b.c0 + byte;
#pragma unroll
  for (int i = 0; i < kCopies; ++i) {
    const int row = threadIdx.x / kChunks + i * (kThreads / kChunks), m = at.m0 + row;
    const bool in_image = m < per_image;
    const int oh = m / width, ow = m - oh * width;
    const int h = oh * static_cast<int>(p.stride_h) + b.h_offset, x_w = ow * static_cast<int>(p.stride_w) + b.w_offset;
    const bool dy_ok = in_image && k < p.k;
    const bool x_ok = in_image && c < p.c && h >= 0 && h < p.h && x_w >= 0 && x_w < p.w;
    const int8_t* dy_src = dy_ok ? w.grad_out + ((at.n * per_image + m) * p.k + k) : w.grad_out;
    const int8_t* x_src = x_ok ? w.x + (((at.n * p.h + h) * p.w + x_w) * p.c + c) : w.x;
    copy16(&st.dy[row][swizzled(row, byte)], dy_src, dy_ok);
    copy16(&st.x[row][swizzled(row, byte)], x_src, x_ok);
  }
}

__global__ void __launch_bounds__(kThreads) wgrad_mma_kernel(ScaledWgrad w) {
  __shared__ __align__(128) Stage stage[kStages];
  const ConvProblem& p = w.geometry;
  const BlockWork b = block_work(p, w.splits);
  const int per_image = static_cast<int>(p.p * p.q);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates
  // The warp's 32 x 32 piece of the tile; this lane's 4 channels of each operand.
  const int lane_k = (warp / 2) * 32 + 4 * group, lane_c = (warp % 2) * 32 + 4 * group;

  Cursor load{b.n_begin, 0}, at{b.n_begin, 0};
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    copy_stage(w, b, load, stage[s]);
    commit_copies();
    load.advance(per_image);
  }

  int acc[2][4][4] = {};
  float sum[2][4][4] = {};
  for (int step = 0, since_flush = 0; at.n < b.n_end; ++step) {
    wait_copies<kStages - 2>();
    __syncthreads();  // this stage landed for every thread; the one computed last step is free
    copy_stage(w, b, load, stage[(step + kStages - 1) % kStages]);
    commit_copies();
    load.advance(per_image);

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

    if (at.image_end(per_image) || ++since_flush == kFlushSteps) {
      const float scale =
          w.scale_grad_out[w.grad_out_per_tensor ? 0 : at.n] * w.scale_x[w.x_per_tensor ? 0 : at.n];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            sum[i][j][e] += static_cast<float>(acc[i][j][e]) * scale;
            acc[i][j][e] = 0;
          }
      since_flush = 0;
    }
    at.advance(per_image);
  }
  wait_copies<0>();  // no copy outlives the block

  // Fragment (i, j, e) -> channels: row group + 8 (e / 2) of A tile i is k = lane_k + 2 i + e / 2;
  // column 2 quad + e % 2 of B tile j is c = the c base of the lanes loading that column + j.
  float* out = w.partial + blockIdx.y * p.k * p.r * p.s * p.c;
  const int warp_c = (warp % 2) * 32;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t k = b.k0 + lane_k + 2 * i + e / 2;
        const int64_t c = b.c0 + warp_c + 4 * (2 * quad + e % 2) + j;
        if (k < p.k && c < p.c) out[((k * p.r + b.r) * p.s + b.s) * p.c + c] = sum[i][j][e];
      }
}

}  // namespace

int64_t wgrad_mma_blocks(const ConvProblem& p) {
  return p.r * p.s * ((p.k + kTileK - 1) / kTileK) * ((p.c + kTileC - 1) / kTileC);
}

Status conv2d_wgrad_mma(const ScaledWgrad& w, cudaStream_t stream) {
  auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % kVector == 0; };
  const ConvProblem& p = w.geometry;
  if (p.groups != 1 || p.c % kVector != 0 || p.k % kVector != 0 || !aligned(w.grad_out) || !aligned(w.x))
    return Status::kInvalidArgument;
  const dim3 grid(static_cast<unsigned>(wgrad_mma_blocks(p)), static_cast<unsigned>(w.splits));
  wgrad_mma_kernel<<<grid, kThreads, 0, stream>>>(w);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace torch_int8::kernels::detail
