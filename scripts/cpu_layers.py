"""INT8 layers against float32 on the CPU: torch_int8.nn.Conv2d / QuantizedConv2d / Linear against
torch.nn at ResNet-like sizes (forward, and forward + backward), and the demo's SmallResNet training
step, each timed in turns with its float32 twin (median of --reps calls).

    PYTHONPATH=<built package> python scripts/cpu_layers.py [--json FILE] [--reps N]

What `python -m torch_int8 demo` runs on a machine without a GPU, split by layer: for comparing a
change of the CPU kernels before and after (run both builds on the same machine, in turns).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import torch_int8
from torch_int8.demo import SmallResNet

# (N, C, K, H=W, kernel, stride)
CONV_SHAPES = [(16, 64, 64, 56, 3, 1), (16, 128, 128, 28, 3, 1), (16, 256, 256, 14, 3, 1), (16, 256, 64, 56, 1, 1),
               (16, 64, 128, 56, 3, 2)]
LINEAR_SHAPES = [(64, 4096, 4096), (1024, 1024, 1024)]  # (M, in, out)


def in_turns(fns: dict, reps: int) -> dict:
    """{name: median ms}: one call of each fn per round, rounds in alternating order."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for i in range(reps):
        for name in (list(fns) if i % 2 == 0 else list(fns)[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def forward_backward(layer, x):
    def step():
        y = layer(x)
        y.backward(torch.ones_like(y))
    return step


def no_grad(layer, x):
    def step():
        with torch.no_grad():
            layer(x)
    return step


def conv_row(shape, reps):
    n, c, k, hw, ks, stride = shape
    ref = torch.nn.Conv2d(c, k, ks, stride, ks // 2, bias=False)
    ours = torch_int8.nn.Conv2d.from_float(ref)
    quantized = torch_int8.nn.QuantizedConv2d.from_float(ref)
    x = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_()
    t = in_turns({"fp32 fwd": no_grad(ref, x), "int8 fwd": no_grad(ours, x), "ptq fwd": no_grad(quantized, x),
                  "fp32 f+b": forward_backward(ref, xg), "int8 f+b": forward_backward(ours, xg)}, reps)
    return {"layer": f"conv N{n} {c}->{k} {hw}x{hw} {ks}x{ks}/{stride}", **t}


def linear_row(shape, reps):
    m, d_in, d_out = shape
    ref = torch.nn.Linear(d_in, d_out)
    ours = torch_int8.nn.Linear.from_float(ref)
    quantized = torch_int8.nn.QuantizedLinear.from_float(ref)
    x = torch.randn(m, d_in)
    xg = x.clone().requires_grad_()
    t = in_turns({"fp32 fwd": no_grad(ref, x), "int8 fwd": no_grad(ours, x), "ptq fwd": no_grad(quantized, x),
                  "fp32 f+b": forward_backward(ref, xg), "int8 f+b": forward_backward(ours, xg)}, reps)
    return {"layer": f"linear {m}x{d_in}->{d_out}", **t}


def demo_step_row(reps):
    torch.manual_seed(0)
    model = SmallResNet(8)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(10, (64,))
    steps = {}
    for name, m in (("fp32", model), ("int8", torch_int8.convert(SmallResNet(8)))):
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

        def step(m=m, opt=opt):
            F.cross_entropy(m(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[f"{name} f+b"] = step
    return {"layer": "demo SmallResNet(8) train step, batch 64", **in_turns(steps, reps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the rows as JSON to this file")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = [conv_row(s, args.reps) for s in CONV_SHAPES] + [linear_row(s, args.reps) for s in LINEAR_SHAPES]
    rows.append(demo_step_row(args.reps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms (median); x = fp32 / int8")
    print(f"{'layer':<44} {'fp32 fwd':>9} {'int8':>8} {'x':>5} {'ptq':>8} {'x':>5} | {'fp32 f+b':>9} {'int8':>8} {'x':>5}")
    for r in rows:
        fwd = (f"{r['fp32 fwd']:>9.2f} {r['int8 fwd']:>8.2f} {r['fp32 fwd'] / r['int8 fwd']:>5.2f} "
               f"{r['ptq fwd']:>8.2f} {r['fp32 fwd'] / r['ptq fwd']:>5.2f}") if "fp32 fwd" in r else " " * 39
        print(f"{r['layer']:<44} {fwd} | {r['fp32 f+b']:>9.2f} {r['int8 f+b']:>8.2f} "
              f"{r['fp32 f+b'] / r['int8 f+b']:>5.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
