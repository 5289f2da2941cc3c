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
constexpr int kPixels = 32;  // pixels per step: the mma's k
constexpr int kThreads = 128;  // 4 warps, each 32 k x 32 c
constexpr int kVector = 16;  // bytes per global load: 16 channels of one pixel
constexpr int kChunks = kTileK / kVector;  // loads per pixel row
static_assert(kTileK == kTileC && kPixels * kChunks == kThreads, "one load of each operand per thread and step");
// Staged pixel rows are 72 bytes apart: the 32 lanes of a fragment load (4
// pixels x 8 channel words) then hit 32 different banks.
constexpr int kPitch = kTileK + 8;
// |int32 sum| <= 128 * 128 * 4095 * 32 < 2^31: flush to float32 at least this often.
constexpr int kFlushSteps = 4095;

struct Stage {
  int8_t dy[kPixels][kPitch];
  int8_t x[kPixels][kPitch];
};

// out[i] = byte i of w[0], w[1], w[2], w[3]: 4 channels x 4 pixels -> 4 pixels of each channel.
__device__ __forceinline__ void transpose_bytes(const int (&w)[4], int (&out)[4]) {
  const int t0 = __byte_perm(w[0], w[1], 0x5140), t1 = __byte_perm(w[0], w[1], 0x7362);
  const int t2 = __byte_perm(w[2], w[3], 0x5140), t3 = __byte_perm(w[2], w[3], 0x7362);
  out[0] = __byte_perm(t0, t2, 0x5410), out[1] = __byte_perm(t0, t2, 0x7632);
  out[2] = __byte_perm(t1, t3, 0x5410), out[3] = __byte_perm(t1, t3, 0x7632);
}

// Channels [channel, channel + 4) of pixels [pixel, pixel + 4), one int per channel.
__device__ __forceinline__ void load_quad(const int8_t (&rows)[kPixels][kPitch], int pixel, int channel,
                                          int (&out)[4]) {
  int w[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) w[j] = *reinterpret_cast<const int*>(&rows[pixel + j][channel]);
  transpose_bytes(w, out);
}

__device__ __forceinline__ void store_vector(int8_t* dst, int4 v) {
  reinterpret_cast<int2*>(dst)[0] = make_int2(v.x, v.y);  // 8-byte aligned: kPitch is
  reinterpret_cast<int2*>(dst)[1] = make_int2(v.z, v.w);
}

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
  b.h_offset = static_cast<int>(b.r * p.dilation_h - p.pad_h), b.w_offset = static_cast<int>(b.s * p.dilation_w - p.pad_w);
  b.n_begin = p.n * blockIdx.y / splits, b.n_end = p.n * (blockIdx.y + 1) / splits;
  return b;
}

// This thread's 16-byte share of one step: pixel m of image n, channel chunk `chunk`.
struct StepLoad {
  int4 dy, x;
};

__device__ __forceinline__ StepLoad load_step(const ScaledWgrad& w, const BlockWork& b, int64_t n, int64_t m,
                                              int chunk) {
  const ConvProblem& p = w.geometry;
  const int4 zero = make_int4(0, 0, 0, 0);
  StepLoad v{zero, zero};
  const int64_t per_image = p.p * p.q;
  if (m >= per_image) return v;
  const int64_t k = b.k0 + chunk * kVector, c = b.c0 + chunk * kVector;
  if (k < p.k) v.dy = __ldg(reinterpret_cast<const int4*>(w.grad_out + ((n * per_image + m) * p.k + k)));
  // 32-bit index arithmetic (conv_geometry_ok bounds N*P*Q and N*H*W by 2^31): no 64-bit division.
  const int pixel = static_cast<int>(m), width = static_cast<int>(p.q);
  const int oh = pixel / width, ow = pixel - oh * width;
  const int h = oh * static_cast<int>(p.stride_h) + b.h_offset, x_w = ow * static_cast<int>(p.stride_w) + b.w_offset;
  if (c < p.c && h >= 0 && h < p.h && x_w >= 0 && x_w < p.w)
    v.x = __ldg(reinterpret_cast<const int4*>(w.x + (((n * p.h + h) * p.w + x_w) * p.c + c)));
  return v;
}

__global__ void __launch_bounds__(kThreads) wgrad_mma_kernel(ScaledWgrad w) {
  __shared__ __align__(16) Stage stage[2];
  const ConvProblem& p = w.geometry;
  const BlockWork b = block_work(p, w.splits);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int group = lane / 4, quad = lane % 4;  // mma fragment coordinates
  const int load_pixel = tid / kChunks, load_chunk = tid % kChunks;
  // The warp's 32 x 32 piece of the tile; this lane's 4 channels of each operand.
  const int lane_k = (warp / 2) * 32 + 4 * group, lane_c = (warp % 2) * 32 + 4 * group;

  int acc[2][4][4] = {};
  float sum[2][4][4] = {};
  const int64_t per_image = p.p * p.q;
  int64_t n = b.n_begin, m0 = 0;
  StepLoad v = load_step(w, b, n, m0 + load_pixel, load_chunk);
  for (int buf = 0, since_flush = 0;; buf ^= 1) {
    store_vector(&stage[buf].dy[load_pixel][load_chunk * kVector], v.dy);
    store_vector(&stage[buf].x[load_pixel][load_chunk * kVector], v.x);
    __syncthreads();
    // The next step's loads fly while this one computes (the other buffer takes them).
    const bool image_end = m0 + kPixels >= per_image;
    const int64_t next_n = image_end ? n + 1 : n, next_m0 = image_end ? 0 : m0 + kPixels;
    const bool more = next_n < b.n_end;
    if (more) v = load_step(w, b, next_n, next_m0 + load_pixel, load_chunk);

    int a_lo[4], a_hi[4], b_lo[4], b_hi[4];
    load_quad(stage[buf].dy, 4 * quad, lane_k, a_lo);
    load_quad(stage[buf].dy, 16 + 4 * quad, lane_k, a_hi);
    load_quad(stage[buf].x, 4 * quad, lane_c, b_lo);
    load_quad(stage[buf].x, 16 + 4 * quad, lane_c, b_hi);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_s8(acc[i][j], a_lo[2 * i], a_lo[2 * i + 1], a_hi[2 * i], a_hi[2 * i + 1],
                                         b_lo[j], b_hi[j]);

    if (image_end || ++since_flush == kFlushSteps) {
      const float scale = w.scale_grad_out[w.grad_out_per_tensor ? 0 : n] * w.scale_x[w.x_per_tensor ? 0 : n];
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
    if (!more) break;
    n = next_n, m0 = next_m0;
  }

  // Fragment (i, j, e) -> channels: row group + 8 (e / 2) of A tile i is k = lane_k + 2 i + e / 2;
  // column 2 quad + e % 2 of B tile j is c = lane's c base of that column + j.
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
