"""Where an eager Conv2d call spends its host (CPU) time, INT8 against cuDNN bf16.

usage: python3 scripts/host_profile_conv.py [--layer NAME] [--batch N] [--reps R]

For one `bench conv` layer: the wall time per eager forward and training step (back-to-back calls,
one synchronize at the end), the same for a tiny version of the layer (one 8x8 image: the GPU work
is negligible, so what is left is the host's cost per call), and torch.profiler's ATen / custom ops
of the INT8 step by self CPU time with the number of kernel launches.
"""
import argparse
import time

import torch

from torch_int8 import bench


def wall_us(fn, reps: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps * 1e6


def forward_of(layer, x):
    def forward():
        with torch.no_grad():
            layer(x)
    return forward


def host_table(label: str, ref, ours, x, gy, reps: int) -> None:
    for what, side in (("forward", lambda layer: forward_of(layer, x)),
                       ("step", lambda layer: bench.training_step(layer, x, gy))):
        bf16, int8 = wall_us(side(ref), reps), wall_us(side(ours), reps)
        print(f"{label:<34} {what:<8} bf16 {bf16:9.1f} us   int8 {int8:9.1f} us")


def cpu_profile(label: str, fn, reps: int) -> None:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    print(f"\n{label}: {reps} calls")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="r18.layer1.3x3", choices=[s[0] for s in bench.CONV_SHAPES])
    ap.add_argument("--batch", type=int, action="append", help="repeatable; default 128")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    args.batch = args.batch or [128]
    shape = next(s for s in bench.CONV_SHAPES if s[0] == args.layer)
    name, c, h, w, k, r, stride, padding = shape
    for batch in args.batch:
        ref, ours, x, _, gy = bench.conv_layer(shape, batch, 0)
        host_table(f"{name} N={batch}", ref, ours, x, gy, args.reps)
    tiny = (f"{name} tiny", c, 8, 8, k, r, stride, padding)
    ref, ours, x, _, gy = bench.conv_layer(tiny, 1, 0)
    host_table(f"{name} N=1 8x8", ref, ours, x, gy, 10 * args.reps)
    cpu_profile(f"{name} N=1 8x8 int8 step", bench.training_step(ours, x, gy), 10 * args.reps)
    cpu_profile(f"{name} N=1 8x8 bf16 step", bench.training_step(ref, x, gy), 10 * args.reps)


if __name__ == "__main__":
    main()
