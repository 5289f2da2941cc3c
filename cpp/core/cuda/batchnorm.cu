// BatchNorm -> ReLU -> per-image quantization of an NHWC batch (kernels.h
// BatchNormReluQuantize): the step that hands a fused Conv-BN-ReLU's output to
// the next convolution as int8, without a float activation written or read
// again. Three launches:
//   stats:    per (slice of an image's pixels, image, chunk of channels) block,
//             each thread one channel over a stride of pixel rows (coalesced
//             loads of consecutive channels), the rows reduced in shared memory
//             in a fixed order: sums, sums of squares, min and max per channel;
//   finalize: a block per channel: the slices summed in double in a fixed
//             order (the statistics are reproducible), mean, variance, the
//             running statistics and the affine map;
//   apply:    the same blocks as stats: the image's scale from the largest
//             relu(z) of its channels' extremes, then z = relu(a * y + b)
//             quantized.
// z is rounded after the product and after the sum (no fused multiply-add), in
// finalize and apply alike, so the extremes give the largest z exactly.
// The backward (BatchNormReluBackward), for a step whose forward wrote no float
// z: two passes over grad and y on the same blocks (the ReLU's mask recomputed
// from y with the same rounding; channel sums of the masked gradient), a
// finalize block per channel, no masked gradient written.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "quantize_math.cuh"
#include "torch_int8/kernels.h"

namespace torch_int8::kernels {
namespace {

using namespace quantize_math;

constexpr int kThreads = 256;

// max / min that keep a NaN of either operand.
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }
__device__ __forceinline__ float nan_min(float a, float b) { return (a != a || a < b) ? a : b; }

__device__ __forceinline__ float affine(float a, float b, float v) { return __fadd_rn(__fmul_rn(a, v), b); }
__device__ __forceinline__ float relu(float z) { return z < 0.f ? 0.f : z; }  // NaN stays NaN

// The block's layout: `width` channels side by side (threadIdx.x % width) and
// kThreads / width pixel rows at a time.
struct Tile {
  int width, rows, lane, row;
  int64_t channel;
  bool active;
};
__device__ __forceinline__ Tile tile_of(int64_t channels) {
  Tile t;
  t.width = static_cast<int>(channels < kThreads ? channels : kThreads);
  t.rows = kThreads / t.width;
  t.lane = threadIdx.x % t.width;
  t.row = threadIdx.x / t.width;
  t.channel = static_cast<int64_t>(blockIdx.z) * t.width + t.lane;
  t.active = t.row < t.rows && t.channel < channels;
  return t;
}

// Pixels [begin, end) of slice blockIdx.x of an image.
__device__ __forceinline__ void slice_of(int64_t pixels, int64_t& begin, int64_t& end) {
  const int64_t per = (pixels + gridDim.x - 1) / gridDim.x;
  begin = min(pixels, static_cast<int64_t>(blockIdx.x) * per);
  end = min(pixels, begin + per);
}

// Rows begin, begin + step, ... < end of a thread: kRowsInFlight loads issued
// before any is used (memory-level parallelism for these bandwidth-bound
// passes), then `use(row, value)` in row order, so that sums add up in the
// order of a plain loop.
constexpr int kRowsInFlight = 8;
template <class Load, class Use>
__device__ __forceinline__ void for_rows(int64_t begin, int64_t end, int step, Load load, Use use) {
  for (int64_t first = begin; first < end; first += static_cast<int64_t>(kRowsInFlight) * step) {
    decltype(load(first)) v[kRowsInFlight];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u)
      if (first + u * step < end) v[u] = load(first + u * step);
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u)
      if (first + u * step < end) use(first + u * step, v[u]);
  }
}

// Sums of v over the rows of the tile, into row 0 (in row order); `op` combines.
template <class Op>
__device__ __forceinline__ float reduce_rows(float v, const Tile& t, float* shared, Op op) {
  shared[threadIdx.x] = v;
  __syncthreads();
  if (t.row == 0)
    for (int r = 1; r < t.rows; ++r) v = op(v, shared[r * t.width + t.lane]);
  __syncthreads();
  return v;
}

template <class T>
__global__ void __launch_bounds__(kThreads) stats_kernel(const T* __restrict__ y, int64_t pixels, int64_t channels,
                                                         bool sums, float* part_sum, float* part_sq,
                                                         float* part_min, float* part_max) {
  __shared__ float shared[kThreads];
  const Tile t = tile_of(channels);
  int64_t begin, end;
  slice_of(pixels, begin, end);
  const int64_t image = blockIdx.y;
  float s = 0.f, q = 0.f, lo = INFINITY, hi = -INFINITY;
  if (t.active) {
    const T* base = y + image * pixels * channels + t.channel;
    const auto load = [&](int64_t p) { return to_float(base[p * channels]); };
    for_rows(begin + t.row, end, t.rows, load, [&](int64_t, float v) {
      s += v;
      q = fmaf(v, v, q);
      lo = nan_min(lo, v);
      hi = nan_max(hi, v);
    });
  }
  const auto add = [](float a, float b) { return a + b; };
  if (sums) {
    s = reduce_rows(s, t, shared, add);
    q = reduce_rows(q, t, shared, add);
  }
  lo = reduce_rows(lo, t, shared, nan_min);
  hi = reduce_rows(hi, t, shared, nan_max);
  if (t.active && t.row == 0) {
    const int64_t at = (image * gridDim.x + blockIdx.x) * channels + t.channel;
    if (sums) part_sum[at] = s, part_sq[at] = q;
    part_min[at] = lo;
    part_max[at] = hi;
  }
}

// The sums over parts [0, count) of column c of two [count, channels] arrays,
// in double, in a fixed tree order (reproducible); valid in thread 0.
struct DoubleSums {
  double a, b;
};
__device__ DoubleSums channel_sums(const float* part_a, const float* part_b, int64_t count, int64_t channels,
                                   int64_t c) {
  __shared__ double shared_a[kThreads], shared_b[kThreads];
  double a = 0, b = 0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) a += part_a[i * channels + c], b += part_b[i * channels + c];
  shared_a[threadIdx.x] = a, shared_b[threadIdx.x] = b;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half)
      shared_a[threadIdx.x] += shared_a[threadIdx.x + half], shared_b[threadIdx.x] += shared_b[threadIdx.x + half];
    __syncthreads();
  }
  return {shared_a[0], shared_b[0]};
}

// A block per channel: the slices' sums added in double, in a fixed tree order.
__global__ void __launch_bounds__(kThreads) finalize_kernel(BatchNormReluQuantize p, int slices,
                                                            const float* part_sum, const float* part_sq,
                                                            float* a_out, float* b_out) {
  const int64_t c = blockIdx.x;
  float mean, invstd;
  if (p.training) {
    const DoubleSums sums = channel_sums(part_sum, part_sq, p.images * slices, p.channels, c);
    if (threadIdx.x) return;
    const double count = static_cast<double>(p.images) * static_cast<double>(p.pixels);
    const double m = sums.a / count;
    const double var = fmax(sums.b / count - m * m, 0.0);  // (a NaN is handled below)
    mean = static_cast<float>(m);
    invstd = static_cast<float>(1.0 / sqrt(var + static_cast<double>(p.eps)));
    if (!isfinite(sums.a) || !isfinite(sums.b)) mean = invstd = nanf("");  // NaN or inf in the channel
    if (p.running_mean) {
      const float k = p.momentum;
      const double unbiased = count > 1 ? var * count / (count - 1) : var;
      p.running_mean[c] = (1.f - k) * p.running_mean[c] + k * mean;
      p.running_var[c] = (1.f - k) * p.running_var[c] + k * static_cast<float>(unbiased);
    }
  } else {
    if (threadIdx.x) return;
    mean = p.running_mean[c];
    invstd = static_cast<float>(1.0 / sqrt(static_cast<double>(p.running_var[c]) + static_cast<double>(p.eps)));
  }
  const float a = p.weight ? __fmul_rn(p.weight[c], invstd) : invstd;
  const float b = __fsub_rn(p.bias ? p.bias[c] : 0.f, __fmul_rn(mean, a));
  p.mean[c] = mean, p.invstd[c] = invstd, a_out[c] = a, b_out[c] = b;
}

// The largest relu(z) of image `image`: over its channels' extremes in every slice (NaN if any is).
__device__ float image_top(int64_t image, int slices, int64_t channels, const float* a_in, const float* b_in,
                           const float* part_min, const float* part_max, float* shared) {
  float top = 0.f;
  for (int64_t c = threadIdx.x; c < channels; c += kThreads) {
    const float a = a_in[c], b = b_in[c];
    for (int s = 0; s < slices; ++s) {
      const int64_t at = (image * slices + s) * channels + c;
      const float lo = part_min[at], hi = part_max[at];
      if (lo > hi) continue;  // an empty slice
      top = nan_max(top, nan_max(relu(affine(a, b, lo)), relu(affine(a, b, hi))));
    }
  }
  shared[threadIdx.x] = top;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) shared[threadIdx.x] = nan_max(shared[threadIdx.x], shared[threadIdx.x + half]);
    __syncthreads();
  }
  return shared[0];
}

template <class T>
__global__ void __launch_bounds__(kThreads) apply_kernel(const T* __restrict__ y, int64_t pixels, int64_t channels,
                                                         int slices, const float* a_in, const float* b_in,
                                                         const float* part_min, const float* part_max, int8_t* q,
                                                         float* scale) {
  __shared__ float shared[kThreads];
  const int64_t image = blockIdx.y;
  const Divisor d = divisor_of(image_top(image, slices, channels, a_in, b_in, part_min, part_max, shared));
  if (blockIdx.x == 0 && blockIdx.z == 0 && threadIdx.x == 0) scale[image] = d.s;
  const Tile t = tile_of(channels);
  if (!t.active) return;
  int64_t begin, end;
  slice_of(pixels, begin, end);
  const float a = a_in[t.channel], b = b_in[t.channel];
  const int64_t offset = image * pixels * channels + t.channel;
  const auto load = [&](int64_t p) { return to_float(y[offset + p * channels]); };
  for_rows(begin + t.row, end, t.rows, load, [&](int64_t p, float v) {
    const int64_t at = offset + p * channels;
    q[at] = quantize_value(relu(affine(a, b, v)), d, Nearest{}, at);
  });
}

// The slices of an image (at least 64 pixels each, at most kBatchNormSlices) and
// the grid of the stats / apply kernels: (slice, image, chunk of channels).
int slices_of(int64_t pixels) {
  return static_cast<int>(std::min<int64_t>(kBatchNormSlices, std::max<int64_t>(1, pixels / 64)));
}
dim3 grid_of(int slices, int64_t images, int64_t channels) {
  const int64_t width = std::min<int64_t>(channels, kThreads);
  return dim3(slices, static_cast<unsigned>(images), static_cast<unsigned>((channels + width - 1) / width));
}

template <class T>
Status run(const BatchNormReluQuantize& p, cudaStream_t stream) {
  const int slices = slices_of(p.pixels);
  const dim3 grid = grid_of(slices, p.images, p.channels);
  const int64_t part = kBatchNormSlices * p.images * p.channels;
  float *part_sum = p.workspace, *part_sq = part_sum + part, *part_min = part_sq + part, *part_max = part_min + part;
  float *a = part_max + part, *b = a + p.channels;
  const T* y = static_cast<const T*>(p.y);
  stats_kernel<T><<<grid, kThreads, 0, stream>>>(y, p.pixels, p.channels, p.training, part_sum, part_sq, part_min,
                                                 part_max);
  finalize_kernel<<<static_cast<unsigned>(p.channels), kThreads, 0, stream>>>(p, slices, part_sum, part_sq, a, b);
  apply_kernel<T><<<grid, kThreads, 0, stream>>>(y, p.pixels, p.channels, slices, a, b, part_min, part_max, p.q,
                                                 p.scale);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

// ---- backward (kernels.h BatchNormReluBackward): the same blocks as stats / apply

// The forward's affine map of one channel and the ReLU's mask on it.
struct ChannelMap {
  float a, b, mean;
  __device__ ChannelMap(const BatchNormReluBackward& p, int64_t c) : mean(p.mean[c]) {
    a = p.weight ? __fmul_rn(p.weight[c], p.invstd[c]) : p.invstd[c];
    b = __fsub_rn(p.bias ? p.bias[c] : 0.f, __fmul_rn(mean, a));
  }
  // grad where relu(z) passes it: z > 0, or z NaN (threshold_backward's z <= 0 is false)
  __device__ float masked(float grad, float y) const { return affine(a, b, y) <= 0.f ? 0.f : grad; }
};

// Row px's (grad, y) of a thread's channel, as floats.
template <class T>
struct GradAndY {
  const T* grad;
  const T* y;
  int64_t channels;
  __device__ float2 operator()(int64_t px) const {
    return {to_float(grad[px * channels]), to_float(y[px * channels])};
  }
};

template <class T>
__global__ void __launch_bounds__(kThreads) backward_sums_kernel(BatchNormReluBackward p, float* part_g,
                                                                 float* part_gx) {
  __shared__ float shared[kThreads];
  const Tile t = tile_of(p.channels);
  int64_t begin, end;
  slice_of(p.pixels, begin, end);
  const int64_t image = blockIdx.y;
  float sg = 0.f, sgx = 0.f;
  if (t.active) {
    const ChannelMap map(p, t.channel);
    const int64_t offset = image * p.pixels * p.channels + t.channel;
    const T* grad = static_cast<const T*>(p.grad) + offset;
    const T* y = static_cast<const T*>(p.y) + offset;
    for_rows(begin + t.row, end, t.rows, GradAndY<T>{grad, y, p.channels}, [&](int64_t, float2 gy) {
      const float g = map.masked(gy.x, gy.y);
      sg += g;
      sgx = fmaf(g, gy.y - map.mean, sgx);
    });
  }
  const auto add = [](float a, float b) { return a + b; };
  sg = reduce_rows(sg, t, shared, add);
  sgx = reduce_rows(sgx, t, shared, add);
  if (t.active && t.row == 0) {
    const int64_t at = (image * gridDim.x + blockIdx.x) * p.channels + t.channel;
    part_g[at] = sg, part_gx[at] = sgx;
  }
}

// A block per channel: the slices' sums in double (fixed order), the weight and
// bias gradients and apply's two coefficients of the channel.
__global__ void __launch_bounds__(kThreads) backward_finalize_kernel(BatchNormReluBackward p, int slices,
                                                                     const float* part_g, const float* part_gx,
                                                                     float* mean_g, float* coef_x) {
  const int64_t c = blockIdx.x;
  const DoubleSums sums = channel_sums(part_g, part_gx, p.images * slices, p.channels, c);
  if (threadIdx.x) return;
  const double count = static_cast<double>(p.images) * static_cast<double>(p.pixels);
  const double invstd = p.invstd[c];
  p.grad_bias[c] = static_cast<float>(sums.a);
  p.grad_weight[c] = static_cast<float>(sums.b * invstd);
  mean_g[c] = static_cast<float>(sums.a / count);
  coef_x[c] = static_cast<float>(sums.b / count * invstd * invstd);
}

template <class T>
__global__ void __launch_bounds__(kThreads) backward_apply_kernel(BatchNormReluBackward p, const float* mean_g,
                                                                  const float* coef_x) {
  const Tile t = tile_of(p.channels);
  if (!t.active) return;
  int64_t begin, end;
  slice_of(p.pixels, begin, end);
  const ChannelMap map(p, t.channel);
  const float mg = mean_g[t.channel], cx = coef_x[t.channel];
  const float k = p.weight ? p.weight[t.channel] * p.invstd[t.channel] : p.invstd[t.channel];
  const int64_t offset = static_cast<int64_t>(blockIdx.y) * p.pixels * p.channels + t.channel;
  const T* grad = static_cast<const T*>(p.grad) + offset;
  const T* y = static_cast<const T*>(p.y) + offset;
  T* out = static_cast<T*>(p.grad_y) + offset;
  for_rows(begin + t.row, end, t.rows, GradAndY<T>{grad, y, p.channels}, [&](int64_t px, float2 gy) {
    const float g = map.masked(gy.x, gy.y);
    out[px * p.channels] = from_float<T>((g - mg - (gy.y - map.mean) * cx) * k);
  });
}

template <class T>
Status run_backward(const BatchNormReluBackward& p, cudaStream_t stream) {
  const int slices = slices_of(p.pixels);
  const dim3 grid = grid_of(slices, p.images, p.channels);
  const int64_t part = kBatchNormSlices * p.images * p.channels;
  float *part_g = p.workspace, *part_gx = part_g + part, *mean_g = part_gx + part, *coef_x = mean_g + p.channels;
  backward_sums_kernel<T><<<grid, kThreads, 0, stream>>>(p, part_g, part_gx);
  backward_finalize_kernel<<<static_cast<unsigned>(p.channels), kThreads, 0, stream>>>(p, slices, part_g, part_gx,
                                                                                      mean_g, coef_x);
  backward_apply_kernel<T><<<grid, kThreads, 0, stream>>>(p, mean_g, coef_x);
  return cudaGetLastError() == cudaSuccess ? Status::kSuccess : Status::kCudaError;
}

}  // namespace

Status batch_norm_relu_backward_cuda(const BatchNormReluBackward& p, void* stream) {
  if (!p.grad || !p.y || !p.grad_y || !p.grad_weight || !p.grad_bias || !p.mean || !p.invstd || !p.workspace ||
      p.images <= 0 || p.pixels <= 0 || p.channels <= 0 || p.images > 65535 || p.channels > INT32_MAX)
    return Status::kInvalidArgument;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p.in_type) {
    case InType::kFloat32: return run_backward<float>(p, s);
    case InType::kFloat16: return run_backward<__half>(p, s);
    case InType::kBFloat16: return run_backward<__nv_bfloat16>(p, s);
  }
  return Status::kInvalidArgument;
}

Status batch_norm_relu_quantize_cuda(const BatchNormReluQuantize& p, void* stream) {
  if (!p.y || !p.q || !p.scale || !p.mean || !p.invstd || !p.workspace || p.images <= 0 || p.pixels <= 0 ||
      p.channels <= 0 || p.images > 65535 || p.channels > INT32_MAX ||
      (!p.training && (!p.running_mean || !p.running_var)) || (!p.running_mean != !p.running_var))
    return Status::kInvalidArgument;
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p.in_type) {
    case InType::kFloat32: return run<float>(p, s);
    case InType::kFloat16: return run<__half>(p, s);
    case InType::kBFloat16: return run<__nv_bfloat16>(p, s);
  }
  return Status::kInvalidArgument;
}

}  // namespace torch_int8::kernels
