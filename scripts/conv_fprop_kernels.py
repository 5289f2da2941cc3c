"""The Hopper implicit-GEMM forward convolution kernels side by side with cuDNN's bf16 forward, at
the `bench conv` layer shapes, on the same data, timed in turns (CUDA graphs: GPU time only).

usage: python3 scripts/conv_fprop_kernels.py [--batch N] [--reps R]

  rule       scaled_conv2d (int8 x per image, int8 weight per channel, bf16 out): the kernel that
             conv_sm90.cu's schedule rule picks
  pingpong   the same op with TORCH_INT8_SM90_CONV_TILE=pingpong (persistent, 128-row tiles, two
             consumer warpgroups taking turns)
  coop       TORCH_INT8_SM90_CONV_TILE=cooperative (persistent, 256-row tiles, both warpgroups on each)
  bf16       F.conv2d in bf16 (cuDNN), channels_last
The operands are quantized once, outside the timing: these are the convolutions alone. Beside them,
the layer's quantize pass of x (per image: rows of C*H*W values, the two-pass long-row path) and a
copy of x, whose bytes (read x once, write it once) set the copy rate: two passes that both read x
from DRAM would take (2 * 2 + 1) / (2 + 2) = 1.25x the copy; less means the second read hit L2.
"""
import os

import torch
import torch.nn.functional as F

import torch_int8
from torch_int8.bench.cli import script_args
from torch_int8.bench.conv import CONV_SHAPES
from torch_int8.bench.graphs import graphed
from torch_int8.bench.timer import time_in_turns
from torch_int8.nn.conv_backward import quantize_images


def with_kernel(kernel: str, fn):
    """fn() with TORCH_INT8_SM90_CONV_TILE=kernel ("" for the rule)."""
    os.environ["TORCH_INT8_SM90_CONV_TILE"] = kernel
    try:
        return fn()
    finally:
        del os.environ["TORCH_INT8_SM90_CONV_TILE"]


def captured(kernel: str, fn):
    """fn replayed from a CUDA graph captured with TORCH_INT8_SM90_CONV_TILE=kernel (read at every call)."""
    return with_kernel(kernel, lambda: graphed(fn))


def main() -> None:
    args = script_args(__doc__)
    print(f"{torch.cuda.get_device_name()}, batch {args.batch}: forward convolution, ms per call (CUDA graphs)")
    print(f"{'layer':20s} {'rule':>9s} {'pingpong':>9s} {'coop':>9s} {'bf16':>9s} {'TOPS':>6s} {'coop/pp':>8s} "
          f"{'rule/bf16':>9s} {'quantize':>9s} {'copy':>9s} {'q/copy':>7s}")
    for name, c, h, w, k, r, stride, pad in CONV_SHAPES:
        if c % 32:
            continue  # the Hopper kernels need C % 32 == 0 (r18.conv1 runs as im2col + GEMM)
        x = torch.randn(args.batch, c, h, w, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, r, r, device="cuda", dtype=torch.bfloat16)
        qx, qw = quantize_images(x, "nearest"), torch_int8.quantize(weight, 0)
        int8 = lambda: torch_int8.conv.scaled_conv2d(qx, qw, None, stride, pad, out_dtype=torch.bfloat16)  # noqa
        fns = {"rule": captured("", int8), "pingpong": captured("pingpong", int8),
               "coop": captured("cooperative", int8),
               "bf16": graphed(lambda: F.conv2d(x, weight, None, stride, pad)),
               "quantize": graphed(lambda: quantize_images(x, "nearest")), "copy": graphed(x.clone)}
        outs = [with_kernel(kernel, int8) for kernel in ("", "pingpong", "cooperative")]
        assert all(torch.equal(outs[0], o) for o in outs[1:]), f"{name}: the kernels' outputs differ"
        t = time_in_turns(name, fns, args)
        ms = {m: t[m]["ms"] for m in fns}
        p = (h + 2 * pad - r) // stride + 1
        tops = 2 * args.batch * p * p * k * c * r * r / (ms["rule"] * 1e-3) / 1e12
        print(f"{name:20s} {ms['rule']:9.3f} {ms['pingpong']:9.3f} {ms['coop']:9.3f} {ms['bf16']:9.3f} {tops:6.0f} "
              f"{ms['pingpong'] / ms['coop']:8.2f} {ms['bf16'] / ms['rule']:9.2f} {ms['quantize']:9.3f} "
              f"{ms['copy']:9.3f} {ms['quantize'] / ms['copy']:7.2f}")


if __name__ == "__main__":
    main()
