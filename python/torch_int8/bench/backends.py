"""``bench backends``: torch_int8.gemm (int32 output) with each GEMM kernel family forced, against
fp32 SGEMM with TF32 off on the same values.

    python -m torch_int8.bench backends [--json FILE] [--plot FILE] [--shape MxNxK ...] [--family NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Sequence

import torch

import torch_int8

from .cli import Shape, add_common_args, parse_shape, register
from .gemm import bench_shapes, measure
from .plot import plot_grouped_bars
from .report import finish, fmt, meta, print_meta, ratio
from .timer import require_cuda


BACKEND_SHAPES: List[Shape] = [
    (4096, 4096, 4096),
    (8192, 8192, 8192),
    # 3x3 convolutions of ResNet-50's four stages at batch 32, as implicit GEMMs (M = N*H*W, K = 9*C)
    (401408, 64, 576),
    (100352, 128, 1152),
    (25088, 256, 2304),
    (6272, 512, 4608),
]


def _add_backends_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--shape", type=parse_shape, action="append", metavar="MxNxK",
                   help="benchmark this shape instead of the default set (repeatable)")
    p.add_argument("--family", action="append",
                   help="time only this kernel family (repeatable; default: every built family that runs here)")


def runnable_backends() -> List[str]:
    """The built GEMM kernel families that can be forced on the current GPU."""
    names = []
    for name in torch_int8.backends.built_backends():
        with torch_int8.use_backend(name):
            if torch_int8.backends.selected_backend() == name:
                names.append(name)
    return names


def bench_backends_shape(m: int, n: int, k: int, families: Sequence[str], args, seed: int) -> dict:
    """torch_int8.gemm (int32 output) with each family forced vs fp32 SGEMM (TF32 off) on the same values."""
    g = torch.Generator(device="cuda")
    g.manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
    b = w.t()  # [K, N], column-major: the layout the kernels want
    a_f32, b_f32 = a.float(), w.float().t()
    ref = (a.double() @ b.double()).to(torch.int32)  # exact: |sum| <= K * 2^14 << 2^53
    res: dict = {"M": m, "N": n, "K": k, "ops": 2 * m * n * k, "seed": seed, "methods": {}, "exact": {}}
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        res["methods"]["sgemm"] = measure("sgemm", lambda: torch.matmul(a_f32, b_f32), m, n, k, args)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    del a_f32, b_f32
    for name in families:
        with torch_int8.use_backend(name):
            try:
                res["exact"][name] = bool(torch.equal(torch_int8.gemm(a, b), ref))
            except RuntimeError as exc:
                res["exact"][name] = False
                print(f"  check {name} {m}x{n}x{k}: {exc}", file=sys.stderr)
            res["methods"][name] = measure(name, lambda: torch_int8.gemm(a, b), m, n, k, args)
        torch.cuda.empty_cache()
    sgemm = res["methods"]["sgemm"]["tops"]
    res["ratio_vs_sgemm"] = {name: ratio(res["methods"][name]["tops"], sgemm) for name in families}
    return res


def format_backends_table(results: Sequence[dict], families: Sequence[str]) -> str:
    head = f"{'M':>7} {'N':>6} {'K':>6} | {'sgemm ms':>9} {'TFLOPS':>7}"
    for name in families:
        head += f" | {name + ' ms':>9} {'TOPS':>7} {'xSGEMM':>6} {'exact':>5}"
    lines = [head, "-" * len(head)]
    for r in results:
        sg = r["methods"]["sgemm"]
        line = f"{r['M']:>7} {r['N']:>6} {r['K']:>6} | {fmt(sg['ms'], 9, 3)} {fmt(sg['tops'], 7, 1)}"
        for name in families:
            d = r["methods"][name]
            exact = "yes" if r["exact"][name] else "NO"
            line += f" | {fmt(d['ms'], 9, 3)} {fmt(d['tops'], 7, 1)} {fmt(r['ratio_vs_sgemm'][name], 6, 2)} {exact:>5}"
        lines.append(line)
    lines.append("TOPS = 2*M*N*K/t; xSGEMM = SGEMM time / family time (targets: simt >= 0.7, dp4a >= 2.0)")
    return "\n".join(lines)


def plot_backends(results: Sequence[dict], families: Sequence[str], path: str, title: str = "") -> bool:
    """Grouped bars: speed of each family relative to fp32 SGEMM, per shape."""
    return plot_grouped_bars(
        path, [f"{r['M']}x{r['N']}x{r['K']}" for r in results],
        {name: [r["ratio_vs_sgemm"][name] for r in results] for name in families},
        ylabel="speed vs fp32 SGEMM (TF32 off)", title=title or "torch_int8 kernel families vs SGEMM", log=True,
        lines=[(0.7, ":", "target 0.7x"), (2.0, "--", "target 2x"), (1.0, "-", None)])


@register("backends", "each GEMM kernel family forced (int32 output) vs fp32 SGEMM with TF32 off",
          _add_backends_args)
def run_backends(args: argparse.Namespace) -> int:
    require_cuda()
    families = args.family or runnable_backends()
    shapes = args.shape or BACKEND_SHAPES
    info = meta()
    info.update({"command": "backends", "families": families, "reps": args.reps, "warmup": args.warmup,
                 "seed": args.seed, "layout": "a [M,K] row-major, b = w.t() of [N,K]; sgemm on the same values"})
    print_meta(info)
    results = bench_shapes(shapes, args, lambda m, n, k, seed: bench_backends_shape(m, n, k, families, args, seed))
    print(format_backends_table(results, families))
    bad = [f"{name} {r['M']}x{r['N']}x{r['K']}" for r in results for name in families
           if not r["exact"][name] or r["methods"][name]["error"]]
    title = f"kernel families vs SGEMM on {info['gpu']}"
    return finish(args, {"meta": info, "results": results},
                  lambda path: plot_backends(results, families, path, title), bad)
