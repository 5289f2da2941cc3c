"""Where an eager Conv2d call spends its host (CPU) time, INT8 against cuDNN bf16.

usage: python3 scripts/host_profile_conv.py [--layer NAME] [--batch N] [--reps R]

For one `bench conv` layer: the wall time per eager forward and training step (back-to-back calls,
one synchronize at the end), the same for a small version of the layer (one image of the least size
that takes the same paths: 28x28 output pixels, 14x14 for 1x1 filters; its GPU work is a few
microseconds, so what is left is the host's cost per call), the host time of each INT8 op that the
small layer's step calls, and torch.profiler's ops of its step: calls per step and CPU time.
"""
import argparse

import torch

from host_overhead import host_us as wall_us  # this script's folder is on sys.path
from torch_int8.bench.conv import CONV_SHAPES, conv_layer
from torch_int8.bench.graphs import training_step


def forward_of(layer, x):
    def forward():
        with torch.no_grad():
            layer(x)
    return forward


def host_table(label: str, ref, ours, x, gy, reps: int) -> None:
    for what, side in (("forward", lambda layer: forward_of(layer, x)),
                       ("step", lambda layer: training_step(layer, x, gy))):
        bf16, int8 = wall_us(side(ref), reps), wall_us(side(ours), reps)
        print(f"{label:<34} {what:<8} bf16 {bf16:9.1f} us   int8 {int8:9.1f} us")


def cpu_profile(label: str, fn, reps: int) -> None:
    """Each op and CUDA runtime call of fn: calls per fn call, CPU us per fn call (self and total;
    the profiler's own cost is in them, so read them as ranks), in order of calls."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = sorted(prof.key_averages(), key=lambda e: (-e.count, e.key))
    print(f"\n{label}: per call ({reps} calls profiled)")
    print(f"{'op':<70} {'calls':>6} {'self us':>8} {'total us':>9}")
    for e in rows:
        print(f"{e.key[:70]:<70} {e.count / reps:>6.1f} {e.self_cpu_time_total / reps:>8.1f} "
              f"{e.cpu_time_total / reps:>9.1f}")


def op_table(ours, x, gy, reps: int) -> None:
    """Host us per call of the INT8 ops of a step on the small layer's operands."""
    from torch_int8.nn import conv as nc
    cfg, w = ours.config, ours.weight.detach()
    geometry = nc._geometry(ours)
    xd = x.detach()
    qx = nc._quantize_images(xd, "nearest")
    qw = nc._quantize_images(w, "nearest")
    qg = nc._quantize_images(gy, "nearest")
    calls = {
        "quantize x per image": lambda: nc._quantize_images(xd, "nearest"),
        "quantize W per output channel": lambda: nc._quantize_images(w, "nearest"),
        "scaled_conv2d (forward)": lambda: nc.scaled_conv2d(qx, qw, None, *geometry, out_dtype=x.dtype),
        "dynamic_conv2d (the three above)": lambda: nc.dynamic_conv2d(xd, w, None, *geometry, out_dtype=x.dtype),
        "quantize dY per image": lambda: nc._quantize_grad_out(gy, cfg, False, False),
        "rotated W per input channel": lambda: nc._rotated_per_input_channel(w, ours.groups, True),
        "grad_input (whole)": lambda: nc._grad_input(qg, w, x.shape, geometry, cfg, x.dtype),
        "scaled_conv2d_wgrad": lambda: nc.scaled_conv2d_wgrad(qg, qx, w.shape[2:], *geometry),
        "x.clone() (one ATen launch)": lambda: xd.clone(),
    }
    print(f"{'INT8 op of the small step':<40} {'host us':>8}")
    for name, fn in calls.items():
        print(f"{name:<40} {wall_us(fn, reps):>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="r18.layer1.3x3", choices=[s[0] for s in CONV_SHAPES])
    ap.add_argument("--batch", type=int, action="append", help="repeatable; default 128")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    args.batch = args.batch or [128]
    shape = next(s for s in CONV_SHAPES if s[0] == args.layer)
    name, c, h, w, k, r, stride, padding = shape
    for batch in args.batch:
        ref, ours, x, _, gy = conv_layer(shape, batch, 0)
        host_table(f"{name} N={batch}", ref, ours, x, gy, args.reps)
    side = (28 if r > 1 else 14) * stride
    small = (f"{name} small", c, side, side, k, r, stride, padding)
    ref, ours, x, _, gy = conv_layer(small, 1, 0)
    label = f"{name} N=1 {side}x{side}"
    host_table(label, ref, ours, x, gy, 10 * args.reps)
    op_table(ours, x, gy, 10 * args.reps)
    cpu_profile(f"{label} int8 step", training_step(ours, x, gy), 10 * args.reps)
    cpu_profile(f"{label} bf16 step", training_step(ref, x, gy), 10 * args.reps)


if __name__ == "__main__":
    main()
