"""``bench linear``: torch_int8.nn.Linear against bf16 nn.Linear (forward, training step, eager and
replayed from CUDA graphs), the bandwidth of its quantize passes, and QuantizedLinear at decode sizes."""

from __future__ import annotations

import argparse
from typing import List, Sequence

import torch

import torch_int8

from .cli import Shape, add_common_args, parse_shape, register
from .graphs import graph_timings, graphed, training_step
from .plot import plot_speedups
from .profiling import profile_layer
from .quantize import QUANTIZE_VARIANTS, add_bandwidths
from .report import failed_methods, finish, fmt, meta, print_meta, ratio
from .timer import require_cuda, time_in_turns, timeit


LINEAR_SHAPES: List[Shape] = [(8192, 4096, 4096), (8192, 4096, 11008), (8192, 11008, 4096)]  # (M, in, out)


DECODE_SHAPES: List[Shape] = [(m, 4096, n) for n in (4096, 11008) for m in (1, 4, 16)]  # (M, in, out)


def _add_linear_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--profile", metavar="MxINxOUT", type=parse_shape,
                   help="instead of the tables: torch.profiler's top CUDA kernels of the INT8 layer's forward "
                        "and forward+backward at M tokens, IN -> OUT features (bf16)")


def bench_linear_shape(m: int, d_in: int, d_out: int, args, seed: int) -> dict:
    """bf16 nn.Linear vs torch_int8.nn.Linear (same parameters, same input), forward and forward+backward,
    and quantize (bf16 -> int8 + per-row scales) against a device-to-device copy of the same tensor."""
    torch.manual_seed(seed)
    ref = torch.nn.Linear(d_in, d_out, device="cuda", dtype=torch.bfloat16)
    ours = torch_int8.nn.Linear.from_float(ref)
    x = torch.randn(m, d_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(m, d_out, device="cuda", dtype=torch.bfloat16)

    row = {"M": m, "in": d_in, "out": d_out, "methods": {}}
    label = f"linear {m}x{d_in}x{d_out}"
    with torch.no_grad():
        row["methods"].update(time_in_turns(label, {"bf16_fwd": lambda: ref(x), "int8_fwd": lambda: ours(x)}, args))
        xd = x.detach()
        _, amax = torch_int8.quantize_rows(xd, col_amax=True)
        row["methods"]["copy"] = timeit(lambda: xd.clone(), args.reps, args.warmup)
        for name, fn in QUANTIZE_VARIANTS.items():
            row["methods"][name] = timeit(lambda: fn(xd, amax), args.reps, args.warmup)
    steps = {"bf16_fwd_bwd": training_step(ref, x, gy), "int8_fwd_bwd": training_step(ours, x, gy)}
    row["methods"].update(time_in_turns(label, steps, args))
    row["methods"].update(graph_timings(label, {"bf16": ref, "int8": ours}, x, gy, args))
    t = {k: v["ms"] for k, v in row["methods"].items()}
    for method in ("fwd", "fwd_bwd", "fwd_graph", "fwd_bwd_graph"):  # None where a method failed
        row[f"{method}_speedup"] = ratio(t[f"bf16_{method}"], t[f"int8_{method}"])
    add_bandwidths(row, xd, t, QUANTIZE_VARIANTS)
    return row


def bench_decode_shape(m: int, d_in: int, d_out: int, args, seed: int) -> dict:
    """QuantizedLinear (int8 weights, per-token activations) vs bf16 nn.Linear at decode sizes, called
    eagerly (host overhead included, as in eager decoding) and replayed from CUDA graphs (GPU time,
    as in graph-captured decoding)."""
    torch.manual_seed(seed)
    ref = torch.nn.Linear(d_in, d_out, device="cuda", dtype=torch.bfloat16)
    ours = torch_int8.nn.QuantizedLinear.from_float(ref)
    x = torch.randn(m, d_in, device="cuda", dtype=torch.bfloat16)
    methods = {}
    with torch.no_grad():
        for name, layer in (("bf16", ref), ("int8", ours)):
            methods[name] = timeit(lambda: layer(x), args.reps, args.warmup)
            methods[f"{name}_graph"] = timeit(graphed(lambda: layer(x)), args.reps, args.warmup)
    weight_bytes = {"bf16": ref.weight.numel() * 2, "int8": ours.weight_int8.numel() + 4 * d_out}
    return {"M": m, "in": d_in, "out": d_out, "methods": methods, "weight_bytes": weight_bytes,
            "speedup": methods["bf16"]["ms"] / methods["int8"]["ms"],
            "graph_speedup": methods["bf16_graph"]["ms"] / methods["int8_graph"]["ms"],
            "weight_memory_ratio": weight_bytes["int8"] / weight_bytes["bf16"]}


@register("linear", "INT8 nn.Linear vs bf16 nn.Linear (forward, forward+backward) and quantize bandwidth",
          _add_linear_args)
def run_linear(args: argparse.Namespace) -> int:
    require_cuda()
    if args.profile:
        m, d_in, d_out = args.profile
        torch.manual_seed(args.seed)
        layer = torch_int8.nn.Linear(d_in, d_out, device="cuda", dtype=torch.bfloat16)
        x = torch.randn(m, d_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        gy = torch.randn(m, d_out, device="cuda", dtype=torch.bfloat16)
        return profile_layer(f"int8 Linear {m}x{d_in}->{d_out}", layer, x, gy, min(args.reps, 10))
    info = meta()
    info.update({"command": "linear", "reps": args.reps, "warmup": args.warmup, "seed": args.seed})
    print_meta(info)
    header = (f"{'M':>6} {'in':>6} {'out':>6} | {'bf16 fwd':>9} {'int8 fwd':>9} {'x':>5} | {'bf16 f+b':>9} "
              f"{'int8 f+b':>9} {'x':>5} | {'g fwd x':>7} {'g f+b x':>7} | {'copy GB/s':>9} "
              + " ".join(f"{n[9:] or 'rows':>12}" for n in QUANTIZE_VARIANTS))
    results = [bench_linear_shape(m, d_in, d_out, args, seed=args.seed + i)
               for i, (m, d_in, d_out) in enumerate(LINEAR_SHAPES)]
    print(header)
    print("-" * len(header))
    for r in results:
        t = {k: v["ms"] for k, v in r["methods"].items()}
        pct = " ".join(f"{r[n + '_pct_of_copy_bw']:>11.1f}%" for n in QUANTIZE_VARIANTS)
        print(f"{r['M']:>6} {r['in']:>6} {r['out']:>6} | {fmt(t['bf16_fwd'], 9, 4)} {fmt(t['int8_fwd'], 9, 4)} "
              f"{fmt(r['fwd_speedup'], 5, 2)} | {fmt(t['bf16_fwd_bwd'], 9, 4)} {fmt(t['int8_fwd_bwd'], 9, 4)} "
              f"{fmt(r['fwd_bwd_speedup'], 5, 2)} | {fmt(r['fwd_graph_speedup'], 7, 2)} "
              f"{fmt(r['fwd_bwd_graph_speedup'], 7, 2)} | {r['copy_GBps']:>9.0f} {pct}")
    print("x = bf16 time / int8 time, called eagerly; g ... x: the same replayed from CUDA graphs (GPU time "
          "without the host's Python and launch cost); quantize columns: bandwidth as % of the copy's "
          "(bytes: bf16 read + int8 written)")
    decode = [bench_decode_shape(m, d_in, d_out, args, seed=args.seed + i)
              for i, (m, d_in, d_out) in enumerate(DECODE_SHAPES)]
    print("\nQuantizedLinear vs bf16 nn.Linear, eager | CUDA graph replay")
    print(f"{'M':>6} {'in':>6} {'out':>6} | {'bf16 ms':>9} {'int8 ms':>9} {'x':>5} | {'bf16 ms':>9} {'int8 ms':>9} "
          f"{'x':>5} | weight bytes int8/bf16")
    for r in decode:
        t = {k: v["ms"] for k, v in r["methods"].items()}
        print(f"{r['M']:>6} {r['in']:>6} {r['out']:>6} | {t['bf16']:>9.4f} {t['int8']:>9.4f} {r['speedup']:>5.2f} | "
              f"{t['bf16_graph']:>9.4f} {t['int8_graph']:>9.4f} {r['graph_speedup']:>5.2f} | "
              f"{r['weight_memory_ratio']:.3f}")
    print("times in ms (median); x = bf16 time / int8 time")
    title = f"INT8 vs bf16 nn.Linear on {info['gpu']}"
    failed = failed_methods(results, lambda r: f"{r['M']}x{r['in']}x{r['out']}")
    return finish(args, {"meta": info, "results": results, "decode": decode},
                  lambda path: plot_linear(results, path, title), failed)


def plot_linear(results: Sequence[dict], path: str, title: str = "") -> bool:
    return plot_speedups(results, [f"{r['M']}x{r['in']}x{r['out']}" for r in results], path, "bf16 nn.Linear", title,
                         graphs=True)
