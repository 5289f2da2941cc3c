// The current CUDA device's multiprocessor count, for the kernels that size
// their grids by it on every call, and how busy waves of blocks keep them.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>

namespace torch_int8::kernels::detail {

// Queried once per device (the GPUs of one machine may differ); 0 on a CUDA error.
inline int device_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> known[kMaxDevices];  // 0: not queried yet
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  auto query = [device] {
    int count = 0;
    return cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) == cudaSuccess ? count : 0;
  };
  if (device < 0 || device >= kMaxDevices) return query();
  int count = known[device].load(std::memory_order_relaxed);
  if (count == 0) known[device].store(count = query(), std::memory_order_relaxed);
  return count;
}

// The busy fraction of `slots` concurrent blocks over the waves that `blocks`
// take (a last, partial wave runs as long as a full one).
inline double wave_efficiency(int64_t blocks, int64_t slots) {
  return static_cast<double>(blocks) / (static_cast<double>((blocks + slots - 1) / slots) * slots);
}

}  // namespace torch_int8::kernels::detail
