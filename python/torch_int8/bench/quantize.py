"""``bench quantize``: the fused quantize kernels (per row, with column statistics, per column
transposed) against a device-to-device copy of the same tensor, as CUDA-graph replays; also the
quantize passes of the Linear layer and their bandwidth that `bench linear` reports."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import torch_int8

from .cli import add_common_args, parse_sizes, register
from .graphs import graphed
from .plot import plot_grouped_bars
from .report import failed_methods, finish, fmt, meta, print_meta, ratio
from .timer import require_cuda, time_or_error


# [rows, cols]: Linear activations and weights at 8192 tokens, ResNet dY as [pixels, channels]
# (r18.layer1-3 at batch 128), and a wide-and-short matrix.
QUANTIZE_SHAPES: List[Tuple[int, int]] = [(8192, 4096), (8192, 11008), (4096, 4096), (4096, 11008), (11008, 4096),
                                          (401408, 64), (100352, 128), (25088, 256), (1024, 65536)]


# The quantize passes of the Linear layer: per row, per row + column maxima, per column transposed.
QUANTIZE_VARIANTS = {
    "quantize_rows": lambda x, amax: torch_int8.quantize_rows(x),
    "quantize_rows_colmax": lambda x, amax: torch_int8.quantize_rows(x, col_amax=True),
    "quantize_columns_t": lambda x, amax: torch_int8.quantize_columns_t(x, amax),
}


# The passes: those of the Linear layer, the column sums with the maxima (a bias gradient), column_amax.
QUANTIZE_PASSES: Dict[str, Callable[[torch.Tensor, torch.Tensor], object]] = {
    **QUANTIZE_VARIANTS,
    "quantize_rows_sums": lambda x, amax: torch_int8.quantize_rows_with_sums(x, col_amax=True, col_sum=True),
    "column_amax": lambda x, amax: torch_int8.column_amax(x),
}


QUANTIZE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_matrix(text: str) -> Tuple[int, int]:
    """'RxC' (or 'R,C') -> (R, C)."""
    return parse_sizes(text, "RxC")


def _add_quantize_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--shape", type=parse_matrix, action="append", metavar="RxC",
                   help="quantize this [rows, cols] matrix instead of the default set (repeatable)")
    p.add_argument("--dtype", choices=sorted(QUANTIZE_DTYPES), default="bf16", help="input dtype (default bf16)")


def quantize_pass_bytes(name: str, x: torch.Tensor) -> int:
    """Bytes a pass must move at least: x read once, and (but for column_amax) one int8 per value written."""
    return x.numel() * x.element_size() + (0 if name == "column_amax" else x.numel())


def add_bandwidths(row: dict, x: torch.Tensor, ms: Dict[str, Optional[float]], passes: Sequence[str]) -> None:
    """row["copy_GBps"] (x read and written once) and, per pass, "<pass>_GBps" (quantize_pass_bytes)
    and "<pass>_pct_of_copy_bw": how close the pass gets to a copy's speed; None where a time is."""
    row["copy_GBps"] = ratio(2 * x.numel() * x.element_size() / 1e6, ms["copy"])
    for name in passes:
        row[f"{name}_GBps"] = ratio(quantize_pass_bytes(name, x) / 1e6, ms[name])
        pct = ratio(row[f"{name}_GBps"], row["copy_GBps"])
        row[f"{name}_pct_of_copy_bw"] = None if pct is None else 100 * pct


def bench_quantize_shape(rows: int, cols: int, dtype: torch.dtype, args, seed: int, device: str = "cuda") -> dict:
    """Every QUANTIZE_PASSES pass and a device-to-device copy of the same random x, each replayed from
    a CUDA graph (kernel time without the host's launch cost), as bandwidth and % of the copy's."""
    torch.manual_seed(seed)
    x = torch.randn(rows, cols, device=device, dtype=dtype)
    _, amax = torch_int8.quantize_rows(x, col_amax=True)
    label = f"{rows}x{cols}"
    methods = {"copy": time_or_error(f"copy {label}", partial(graphed, x.clone), args)}
    for name, fn in QUANTIZE_PASSES.items():
        methods[name] = time_or_error(f"{name} {label}", partial(graphed, partial(fn, x, amax)), args)
    row = {"rows": rows, "cols": cols, "dtype": str(dtype).replace("torch.", ""), "methods": methods}
    add_bandwidths(row, x, {name: d["ms"] for name, d in methods.items()}, QUANTIZE_PASSES)
    return row


def format_quantize_table(results: Sequence[dict]) -> str:
    """Fixed-width table of bench quantize results: per pass, its time and its bandwidth as % of the copy's."""
    head = f"{'rows':>7} {'cols':>6} {'dtype':>8} | {'copy us':>8} {'GB/s':>6}"
    for name in QUANTIZE_PASSES:
        head += f" | {name.replace('quantize_', '') + ' us':>15} {'%':>5}"
    lines = [head, "-" * len(head)]
    for r in results:
        copy_ms = r["methods"]["copy"]["ms"]
        line = (f"{r['rows']:>7} {r['cols']:>6} {r['dtype']:>8} | {fmt(None if copy_ms is None else 1e3 * copy_ms, 8, 1)} "
                f"{fmt(r['copy_GBps'], 6, 0)}")
        for name in QUANTIZE_PASSES:
            ms = r["methods"][name]["ms"]
            line += f" | {fmt(None if ms is None else 1e3 * ms, 15, 1)} {fmt(r[name + '_pct_of_copy_bw'], 5, 1)}"
        lines.append(line)
    lines.append("CUDA-graph replays; % = bandwidth (bytes: x read + int8 written; column_amax: x read) as % of a "
                 "device-to-device copy's (x read + written) in the same run")
    return "\n".join(lines)


@register("quantize", "the fused quantize kernels (per row, column statistics, transposed) against a copy",
          _add_quantize_args)
def run_quantize(args: argparse.Namespace) -> int:
    require_cuda()
    info = meta()
    info.update({"command": "quantize", "reps": args.reps, "warmup": args.warmup, "seed": args.seed,
                 "dtype": args.dtype})
    print_meta(info)
    results = []
    for i, (rows, cols) in enumerate(args.shape or QUANTIZE_SHAPES):
        print(f"[{i + 1}] {rows}x{cols}", file=sys.stderr, flush=True)
        results.append(bench_quantize_shape(rows, cols, QUANTIZE_DTYPES[args.dtype], args, args.seed + i))
        torch.cuda.empty_cache()
    print(format_quantize_table(results))
    failed = failed_methods(results, lambda r: f"{r['rows']}x{r['cols']}")
    title = f"fused quantize kernels, {args.dtype}, on {info['gpu']}"
    return finish(args, {"meta": info, "results": results}, lambda path: plot_quantize(results, path, title), failed)


def plot_quantize(results: Sequence[dict], path: str, title: str = "") -> bool:
    return plot_grouped_bars(path, [f"{r['rows']}x{r['cols']}" for r in results],
                             {name: [r[name + "_pct_of_copy_bw"] for r in results] for name in QUANTIZE_PASSES},
                             ylabel="bandwidth, % of a copy's", title=title,
                             lines=[(100.0, "--", None), (80.0, ":", "target 80%")])
