"""The two INT8 weight-gradient paths of torch_int8.nn.Conv2d side by side with cuDNN's bf16 one,
at the `bench conv` layer shapes, on the same data, timed in turns (CUDA graphs: GPU time only).

usage: python3 scripts/wgrad_paths.py [--batch N] [--reps R]

  implicit   scaled_conv2d_wgrad on dY and X already quantized per image (the layer has both:
             dgrad's dY, the forward's X): the implicit-GEMM kernel and the sum of its partials
             (the layer's choice between the two INT8 paths, _implicit_wgrad, rests on this table)
  channel    the per-channel path (grad_weight): dY's and X's column maxima, their transposed
             int8 copies, im2col, the split GEMMs, their int64 sum and scaling
  bf16       torch.nn.grad.conv2d_weight in bf16 (cuDNN), channels_last
"""
import torch

import torch_int8
from torch_int8.bench.cli import script_args
from torch_int8.bench.conv import CONV_SHAPES
from torch_int8.bench.graphs import graphed
from torch_int8.bench.timer import time_in_turns
from torch_int8.nn.conv_backward import grad_weight, quantize_images


def main() -> None:
    args = script_args(__doc__)
    config = torch_int8.Int8Config()
    print(f"{torch.cuda.get_device_name()}, batch {args.batch}: weight gradient, ms per call (CUDA graphs)")
    print(f"{'layer':20s} {'implicit':>9s} {'channel':>9s} {'bf16':>9s} {'impl/bf16':>9s} {'chan/bf16':>9s}")
    for name, c, h, w, k, r, stride, pad in CONV_SHAPES:
        x = torch.randn(args.batch, c, h, w, device="cuda", dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, r, r, device="cuda", dtype=torch.bfloat16)
        p = (h + 2 * pad - r) // stride + 1
        gy = torch.randn(args.batch, k, p, p, device="cuda", dtype=torch.bfloat16)
        gy = gy.contiguous(memory_format=torch.channels_last)
        geometry = ((stride, stride), (pad, pad), (1, 1), 1)
        fns = {
            "channel": lambda: grad_weight(gy, x, weight, geometry, config),
            "bf16": lambda: torch.nn.grad.conv2d_weight(x, weight.shape, gy, *geometry),
        }
        if c % 16 == 0 and k % 16 == 0:  # what the kernel takes (the layer also asks for large images)
            qx, qg = quantize_images(x, "nearest"), quantize_images(gy, "nearest")
            fns["implicit"] = lambda: torch_int8.conv.scaled_conv2d_wgrad(qg, qx, (r, r), *geometry)
        t = time_in_turns(name, {m: graphed(fn) for m, fn in fns.items()}, args)
        ms = {m: (t[m]["ms"] if m in t else None) for m in ("implicit", "channel", "bf16")}
        fmt = lambda v: f"{v:9.3f}" if v else f"{'-':>9s}"  # noqa: E731
        ratio = lambda m: fmt(ms["bf16"] / ms[m]) if ms[m] and ms["bf16"] else fmt(None)  # noqa: E731
        print(f"{name:20s} {fmt(ms['implicit'])} {fmt(ms['channel'])} {fmt(ms['bf16'])} {ratio('implicit')} "
              f"{ratio('channel')}")


if __name__ == "__main__":
    main()
