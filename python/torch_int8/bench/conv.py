"""``bench conv``: torch_int8.nn.Conv2d against cuDNN bf16 channels_last nn.Conv2d at ResNet-18/50
layer shapes: forward and forward+backward, called eagerly and replayed from CUDA graphs."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

import torch_int8

from .cli import add_common_args, register
from .graphs import graph_timings, training_step
from .plot import plot_speedups
from .profiling import profile_layer
from .report import failed_methods, finish, fmt, meta, print_meta, ratio
from .timer import require_cuda, time_in_turns


# ResNet-18 / ResNet-50 convolutions at 224 x 224: (name, C, H, W, K, R, stride, padding).
CONV_SHAPES = [
    ("r18.conv1", 3, 224, 224, 64, 7, 2, 3),
    ("r18.layer1.3x3", 64, 56, 56, 64, 3, 1, 1),
    ("r18.layer2.3x3s2", 64, 56, 56, 128, 3, 2, 1),
    ("r18.layer2.3x3", 128, 28, 28, 128, 3, 1, 1),
    ("r18.layer3.3x3", 256, 14, 14, 256, 3, 1, 1),
    ("r18.layer4.3x3", 512, 7, 7, 512, 3, 1, 1),
    ("r50.layer1.1x1in", 256, 56, 56, 64, 1, 1, 0),
    ("r50.layer1.1x1out", 64, 56, 56, 256, 1, 1, 0),
    ("r50.layer2.down", 256, 56, 56, 512, 1, 2, 0),
    ("r50.layer3.1x1in", 1024, 14, 14, 256, 1, 1, 0),
    ("r50.layer4.1x1out", 512, 7, 7, 2048, 1, 1, 0),
]


CONV_BATCHES = [128, 256]


# The timed methods of each side ("bf16_fwd", "int8_fwd", ...; eager, then CUDA-graph replays) with
# their short table headers; each gets a speed-up "<method>_speedup" = bf16 time / int8 time.
CONV_METHODS = {"fwd": "fwd", "fwd_bwd": "f+b", "fwd_graph": "g fwd", "fwd_bwd_graph": "g f+b"}


def _add_conv_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--batch", type=int, action="append", help="batch size (repeatable; default 128 and 256)")
    p.add_argument("--bias", action="store_true",
                   help="layers with a bias (default: without, as ResNet's convolutions, which BatchNorm follows; "
                        "cuDNN's bf16 layer with a bias measured 1.2-4.1x slower, benchmarks/NOTES.md 23)")
    p.add_argument("--profile", metavar="LAYER", choices=[s[0] for s in CONV_SHAPES],
                   help="instead of the table: torch.profiler's top CUDA kernels of the INT8 forward and "
                        "forward+backward of LAYER (at the first --batch)")


def bench_conv_shape(shape, batch: int, args) -> dict:
    """cuDNN bf16 channels_last nn.Conv2d vs torch_int8.nn.Conv2d (bf16 in / bf16 out, quantization
    included), forward and forward+backward, on the same parameters and input: called eagerly (host
    overhead included) and replayed from CUDA graphs (GPU time alone; see graph_timings)."""
    name, c, h, w, k, r, stride, padding = shape
    ref, ours, x, y, gy = conv_layer(shape, batch, args.seed, args.bias)
    p, q = y.shape[2:]
    flops = 2 * batch * p * q * k * c * r * r

    row = {"name": name, "N": batch, "C": c, "H": h, "W": w, "K": k, "R": r, "stride": stride, "padding": padding,
           "P": p, "Q": q, "fwd_flops": flops, "methods": {},
           "workspace_bytes": torch_int8.conv.workspace_bytes(x.shape, ref.weight.shape, stride, padding),
           "workspace_limit": torch_int8.conv.workspace_limit()}
    label = f"{name} N={batch}"
    with torch.no_grad():
        row["methods"].update(time_in_turns(label, {"bf16_fwd": lambda: ref(x), "int8_fwd": lambda: ours(x)}, args))
        row["fwd_max_rel_err"] = None  # unless the INT8 forward ran
        if row["methods"]["int8_fwd"]["error"] is None:
            row["fwd_max_rel_err"] = float((ours(x).float() - y.float()).abs().max() / y.float().abs().max())
    steps = {"bf16_fwd_bwd": training_step(ref, x, gy), "int8_fwd_bwd": training_step(ours, x, gy)}
    row["methods"].update(time_in_turns(label, steps, args))
    row["methods"].update(graph_timings(label, {"bf16": ref, "int8": ours}, x, gy, args))
    t = {m: v["ms"] for m, v in row["methods"].items()}
    for method in CONV_METHODS:  # None where a method failed
        row[f"{method}_speedup"] = ratio(t[f"bf16_{method}"], t[f"int8_{method}"])
    row["int8_fwd_tops"] = ratio(flops / 1e9, t["int8_fwd"])
    row["bf16_fwd_tflops"] = ratio(flops / 1e9, t["bf16_fwd"])
    return row


def conv_layer(shape, batch: int, seed: int, bias: bool = False):
    """(cuDNN bf16 channels_last nn.Conv2d, torch_int8.nn.Conv2d sharing its parameters, channels_last
    input requiring grad, output gradient) for one CONV_SHAPES entry; without a bias unless asked."""
    name, c, h, w, k, r, stride, padding = shape
    torch.manual_seed(seed)
    ref = torch.nn.Conv2d(c, k, r, stride, padding, bias=bias, device="cuda", dtype=torch.bfloat16)
    ref = ref.to(memory_format=torch.channels_last)
    ours = torch_int8.nn.Conv2d.from_float(ref)
    x = torch.randn(batch, c, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    with torch.no_grad():
        y = ref(x)
    return ref, ours, x, y, torch.randn_like(y)


def profile_conv(layer: str, batch: int, reps: int) -> int:
    _, ours, x, _, gy = conv_layer(next(s for s in CONV_SHAPES if s[0] == layer), batch, 0)
    return profile_layer(f"{layer} N={batch} int8", ours, x, gy, reps)


@register("conv", "INT8 nn.Conv2d vs cuDNN bf16 channels_last (ResNet-18/50 layers; forward, forward+backward)",
          _add_conv_args)
def run_conv(args: argparse.Namespace) -> int:
    require_cuda()
    batches = args.batch or CONV_BATCHES
    if args.profile:
        return profile_conv(args.profile, batches[0], min(args.reps, 10))
    info = meta()
    info.update({"command": "conv", "reps": args.reps, "warmup": args.warmup, "seed": args.seed, "batches": batches,
                 "bias": args.bias,
                 "layout": "channels_last bf16 input, bf16 output, quantization included, "
                           + ("with" if args.bias else "without") + " bias"})
    print_meta(info)
    results = []
    for batch in batches:
        for shape in CONV_SHAPES:
            print(f"[{shape[0]} N={batch}]", file=sys.stderr, flush=True)
            results.append(bench_conv_shape(shape, batch, args))
            torch.cuda.empty_cache()
    print(format_conv_table(results))
    title = f"INT8 vs cuDNN bf16 Conv2d on {info['gpu']}"
    failed = failed_methods(results, lambda r: f"{r['name']} N={r['N']}")
    return finish(args, {"meta": info, "results": results}, lambda path: plot_conv(results, path, title), failed)


def format_conv_table(results: Sequence[dict]) -> str:
    """Fixed-width text table of conv results (as produced by :func:`bench_conv_shape`); a method
    without a time (a failed CUDA-graph capture) prints as '-'."""
    head = f"{'layer':<18} {'N':>4}"
    for h in CONV_METHODS.values():
        head += f" | {'bf16 ' + h:>10} {'int8 ' + h:>10} {'x':>5}"
    head += f" | {'int8 TOPS':>9} {'rel err':>8} {'im2col MiB':>10}"
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r['name']:<18} {r['N']:>4}"
        for method in CONV_METHODS:
            t = [(r["methods"].get(f"{side}_{method}") or {}).get("ms") for side in ("bf16", "int8")]
            line += f" | {fmt(t[0], 10, 4)} {fmt(t[1], 10, 4)} {fmt(r.get(method + '_speedup'), 5, 2)}"
        lines.append(line + f" | {fmt(r['int8_fwd_tops'], 9, 1)} {fmt(r['fwd_max_rel_err'], 8, 4)} "
                            f"{r['workspace_bytes'] / 2**20:>10.1f}")
    lines.append("times in ms (median); x = bf16 time / int8 time; f+b = forward+backward; g = replayed from a CUDA "
                 "graph (GPU time without the host's Python and launch cost); im2col MiB: forward column buffer "
                 "if the im2col path runs (0 used when the implicit-GEMM kernel takes the layer)")
    return "\n".join(lines)


def plot_conv(results: Sequence[dict], path: str, title: str = "") -> bool:
    return plot_speedups(results, [f"{r['name']} N={r['N']}" for r in results], path,
                         "cuDNN bf16 (channels_last)", title, graphs=True)
