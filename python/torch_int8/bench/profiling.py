"""torch.profiler's view of a layer or a model's step: its top CUDA kernels (`bench linear --profile`,
`bench conv --profile`, `bench models --profile`)."""

from __future__ import annotations

import torch

from .graphs import training_step


def kernel_table(prof, top: int = 25) -> str:
    """name, calls, total and mean us of the `top` CUDA kernels (and copies, memsets) by device time."""
    rows = [e for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]
    rows.sort(key=lambda e: e.device_time_total, reverse=True)
    lines = [f"{'kernel':<90} {'calls':>6} {'total us':>10} {'mean us':>9}"]
    lines += [f"{e.key[:90]:<90} {e.count:>6} {e.device_time_total:>10.1f} {e.device_time_total / e.count:>9.1f}"
              for e in rows[:top]]
    lines.append(f"{'all':<90} {sum(e.count for e in rows):>6} {sum(e.device_time_total for e in rows):>10.1f}")
    return "\n".join(lines)


# Where a kernel's time goes, by its name (first match wins): torch_int8's kernels by their function
# names, cuDNN's (whose names may hold "cutlass"), CUTLASS's INT8 convolutions and GEMMs by
# namespace, then ATen's.
KERNEL_KINDS = (
    ("int8 wgrad (mma.sync)", ("wgrad_mma_kernel",)),
    ("int8 BatchNorm (fused)", ("stats_kernel", "finalize_kernel", "apply_kernel", "backward_sums_kernel",
                                "backward_finalize_kernel", "backward_apply_kernel")),
    ("int8 quantize", ("quantize_", "amax_to_scale", "column_stats", "long_row_amax", "requantize")),
    ("int8 im2col / col2im", ("im2col", "col2im")),
    ("cuDNN convolution", ("cudnn", "xmma", "implicit_convolve")),  # before CUTLASS: cuDNN's names hold it
    ("int8 GEMM / conv (CUTLASS)", ("cutlass", "skinny_", "simt_gemm")),
    ("other convolution", ("conv2d", "dgrad", "wgrad", "fprop")),
    ("BatchNorm (ATen / cuDNN)", ("batch_norm", "batchnorm", "bn_fw", "bn_bw")),
    ("optimizer", ("multi_tensor_apply",)),
    ("elementwise (ATen)", ("elementwise", "vectorized")),
    ("reductions (ATen)", ("reduce",)),
    ("copies / memsets", ("memcpy", "memset", "copy")),
)


def kernel_kind(name: str) -> str:
    """The KERNEL_KINDS entry a kernel's name falls under, or "other"."""
    lowered = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in lowered for k in keys)), "other")


def kinds_table(prof, reps: int) -> str:
    """Device ms per step by kernel_kind, largest first, with shares of the busy time."""
    totals: dict = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0:
            kind = kernel_kind(e.key)
            totals[kind] = totals.get(kind, 0.0) + e.device_time_total / 1e3 / reps
    busy = sum(totals.values()) or 1.0
    lines = [f"{'kernels':<30} {'ms/step':>8} {'share':>6}"]
    lines += [f"{kind:<30} {ms:>8.2f} {100 * ms / busy:>5.1f}%"
              for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def profile_steps(label: str, steps, reps: int, top: int = 25) -> int:
    """Per step of steps ({method: step callable}): the wall and the device-busy ms per step (their gap
    is host time the GPU waits for) and the top CUDA kernels of `reps` calls."""
    for method, step in steps.items():
        for _ in range(3):  # warm-up: CUTLASS initialization, the caching allocator
            step()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            start.record()
            for _ in range(reps):
                step()
            end.record()
            torch.cuda.synchronize()
        busy = sum(e.device_time_total for e in prof.key_averages()
                   if e.device_type == torch.autograd.DeviceType.CUDA) / 1e3 / reps
        print(f"\n{label} {method}: {start.elapsed_time(end) / reps:.2f} ms per step (profiled), "
              f"kernels busy {busy:.2f} ms per step; {reps} steps")
        print(kinds_table(prof, reps))
        print(kernel_table(prof, top))
    return 0


def profile_layer(label: str, layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor, reps: int) -> int:
    """Prints the top CUDA kernels of `reps` forward and forward+backward calls of one layer."""

    def forward():
        with torch.no_grad():
            layer(x)

    for what, fn in (("forward", forward), ("forward+backward", training_step(layer, x, gy))):
        for _ in range(3):  # warm-up: CUTLASS initialization, the caching allocator
            fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        print(f"\n{label} {what}: {reps} calls")
        print(kernel_table(prof))
    return 0
