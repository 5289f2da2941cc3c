"""``bench gemm``: the int8 GEMM against torch._int_mm and bf16 matmul.

    python -m torch_int8.bench gemm [--json FILE] [--plot FILE] [--shapes quick|full]
                                    [--shape MxNxK ...] [--reps N] [--warmup N]

Times, side by side in one process and on the same data (in turns, :mod:`.timer`):

* ``ours``        ``torch_int8.gemm(a, b)``                 int8 x int8 -> int32
* ``int_mm``      ``torch._int_mm(a, b)``                   int8 x int8 -> int32 (cuBLASLt);
                  only where it accepts the shape (M > 16, K % 8 == 0, N % 8 == 0), else None
* ``bf16``        ``torch.matmul(a_bf16, b_bf16)``          bf16 x bf16 -> bf16 (same values)
* ``scaled_gemm`` ``torch_int8.scaled_gemm(qa, qb, bias)``  per-row a scale, per-column b scale,
                  fp32 bias, bf16 output

``a`` is a contiguous row-major ``[M, K]`` int8 matrix; ``b = w.t()`` is the transposed view of a
contiguous ``[N, K]`` weight, i.e. a column-major (K-major) ``[K, N]`` matrix, the layout the
kernels want (and the layout of an ``nn.Linear`` weight).  Data are fresh uniform random int8 values
in [-128, 127] per shape (seeded, so runs are reproducible).  For microsecond kernels (M = 1..16)
the host's launch cost can exceed the kernel time; the CUDA-graph columns (M <= GRAPH_MAX_M) give
the GPU time.  Shapes whose operands fit in L2 (the small-M shapes with a 16 MiB 4096x4096 weight)
are measured with a warm L2, optimistic for memory-bound cases but alike for every method.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import Callable, Dict, List, Sequence

import torch

import torch_int8

from .cli import Shape, add_common_args, parse_shape, register
from .graphs import capture_graphs, graphed
from .plot import plot_grouped_bars
from .report import PEAK_INT8_DENSE_TOPS, finish, fmt, meta, print_meta, ratio, tops
from .timer import require_cuda, time_in_turns, time_or_error

METHODS = ("ours", "int_mm", "bf16", "scaled_gemm", "scaled_int8", "row_amax", "scaled_row_b")
# Shapes with M <= GRAPH_MAX_M are also timed as CUDA-graph replays (GPU time without host overhead).
GRAPH_MAX_M = 1024
GRAPH_METHODS = ("ours", "bf16", "scaled_gemm")


FULL_SHAPES: List[Shape] = (
    [(8192, 8192, 8192)]
    + [(8192, n, k) for (n, k) in [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096)]]
    + [(m, 4096, 4096) for m in (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024)]
    + [(200704, 64, 576)]  # conv-like: 3x3 conv, 64 channels, 224x224 image x batch 4, as implicit GEMM
)


QUICK_SHAPES: List[Shape] = [
    (8192, 8192, 8192),  # compute bound
    (8192, 11008, 4096),  # LLM MLP up-projection
    (16, 4096, 4096),  # decode-like, memory bound (torch._int_mm refuses M <= 16)
    (200704, 64, 576),  # conv-like, skinny N
]


SHAPE_SETS: Dict[str, List[Shape]] = {"quick": QUICK_SHAPES, "full": FULL_SHAPES}


def int_mm_supported(m: int, n: int, k: int) -> bool:
    """Shapes torch._int_mm accepts on CUDA: M > 16, K and N multiples of 8."""
    return m > 16 and k % 8 == 0 and n % 8 == 0


def format_table(results: Sequence[dict]) -> str:
    """Fixed-width text table of gemm results (as produced by :func:`bench_gemm_shape`)."""
    cols = [("M", 7), ("N", 6), ("K", 6)]
    head = " ".join(f"{c:>{w}}" for c, w in cols)
    for meth in METHODS:
        head += f" | {meth + ' ms':>14} {'TOPS':>7}"
    head += (f" | {'ours/int_mm':>11} {'scaled/bf16':>11} {'int8 epi %':>10} {'amax %':>6} {'rowB %':>6}"
             f" {'%peak':>6} {'exact':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r['M']:>7} {r['N']:>6} {r['K']:>6}"
        for meth in METHODS:
            d = r["methods"].get(meth) or {}
            line += f" | {fmt(d.get('ms'), 14, 4)} {fmt(d.get('tops'), 7, 1)}"
        exact = r.get("exact")
        exact_s = "-" if exact is None else ("yes" if exact else "NO")
        line += (
            f" | {fmt(r.get('ratio_ours_int_mm'), 11, 3)} {fmt(r.get('ratio_scaled_bf16'), 11, 3)}"
            f" {fmt(r.get('int8_epilogue_overhead_pct'), 10, 1)} {fmt(r.get('row_amax_overhead_pct'), 6, 1)}"
            f" {fmt(r.get('row_b_overhead_pct'), 6, 1)}"
            f" {fmt(r.get('pct_peak_ours'), 6, 1)} {exact_s:>5}"
        )
        lines.append(line)
    graphs = [r for r in results if r.get("graph_methods")]
    if graphs:
        lines += ["", "CUDA graph replays (GPU time without the host's launch cost):",
                  f"{'M':>7} {'N':>6} {'K':>6} | " + " | ".join(f"{m + ' ms':>14}" for m in GRAPH_METHODS)
                  + f" | {'ours/bf16':>9} {'scaled/bf16':>11}"]
        for r in graphs:
            g = r["graph_methods"]
            lines.append(f"{r['M']:>7} {r['N']:>6} {r['K']:>6} | "
                         + " | ".join(fmt(g[m].get("ms"), 14, 4) for m in GRAPH_METHODS)
                         + f" | {fmt(r.get('graph_ratio_ours_bf16'), 9, 3)} {fmt(r.get('graph_ratio_scaled_bf16'), 11, 3)}")
    lines.append(
        f"TOPS = 2*M*N*K/t (bf16: TFLOPS); ratios are TOPS ratios (>1: first one faster); "
        f"%peak = ours / {PEAK_INT8_DENSE_TOPS:g} TOPS (H200 dense INT8); int8 epi % = time of scaled_gemm with "
        f"int8 output over the int32 kernel's, in %; amax % = time of scaled_gemm_row_amax over scaled_gemm's (bf16)"
    )
    return "\n".join(lines)


def plot_gemm(results: Sequence[dict], path: str, title: str = "") -> bool:
    """Grouped bar chart of TOPS per shape and method. Returns False if matplotlib is missing."""
    return plot_grouped_bars(
        path, [f"{r['M']}x{r['N']}x{r['K']}" for r in results],
        {meth: [(r["methods"].get(meth) or {}).get("tops") for r in results] for meth in METHODS},
        ylabel="TOPS (2*M*N*K / t); bf16: TFLOPS", title=title or "torch_int8 gemm (M x N x K)", log=True,
        lines=[(PEAK_INT8_DENSE_TOPS, "--", f"INT8 dense peak {PEAK_INT8_DENSE_TOPS:g}")])


def with_tops(timed: Dict[str, dict], m: int, n: int, k: int) -> Dict[str, dict]:
    """timed (time_in_turns) with each method's "tops" at M x N x K added."""
    return {name: {**t, "tops": tops(m, n, k, t["ms"])} for name, t in timed.items()}


def measure(name: str, fn: Callable[[], object], m: int, n: int, k: int, args) -> dict:
    t = time_or_error(f"{name} {m}x{n}x{k}", lambda: fn, args)
    t["tops"] = tops(m, n, k, t["ms"])
    return t


def bench_gemm_shape(m: int, n: int, k: int, args, seed: int, device: str = "cuda") -> dict:
    dev = torch.device(device)
    g = torch.Generator(device=dev)
    g.manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=dev, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device=dev, generator=g)
    b = w.t()  # [K, N], column-major (K-major): the layout the kernels want
    a_bf16 = a.to(torch.bfloat16)  # int8 values are exact in bf16
    b_bf16 = w.to(torch.bfloat16).t()
    scale_a = torch.rand(m, device=dev, dtype=torch.float32, generator=g) + 0.5
    scale_b = torch.rand(n, device=dev, dtype=torch.float32, generator=g) + 0.5
    bias = torch.randn(n, device=dev, dtype=torch.float32, generator=g)
    qa = torch_int8.QTensor(data=a, scale=scale_a, zero_point=None, dim=0)
    qb = torch_int8.QTensor(data=b, scale=scale_b, zero_point=None, dim=1)
    qb_row = torch_int8.QTensor(data=b.contiguous(), scale=scale_b, zero_point=None, dim=1)
    has_int_mm = int_mm_supported(m, n, k)

    fns = {
        "ours": lambda: torch_int8.gemm(a, b),
        "int_mm": (lambda: torch._int_mm(a, b)) if has_int_mm else None,
        "bf16": lambda: torch.matmul(a_bf16, b_bf16),
        "scaled_gemm": lambda: torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.bfloat16),
        # the requantizing epilogue (int8 out), for its cost over the int32 kernel
        "scaled_int8": lambda: torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.int8, out_scale=64.0),
        # bf16 output plus the per-row max |out| from the same epilogue, for its cost over scaled_gemm
        "row_amax": lambda: torch_int8.scaled_gemm_row_amax(qa, qb, bias=bias, out_dtype=torch.bfloat16),
        # b row-major [K, N] (N contiguous): laid out K-major by a transpose first, for its cost
        "scaled_row_b": lambda: torch_int8.scaled_gemm(qa, qb_row, bias=bias, out_dtype=torch.bfloat16),
    }

    res: dict = {"M": m, "N": n, "K": k, "ops": 2 * m * n * k, "seed": seed, "methods": {}}

    # correctness, once per shape: ours vs torch._int_mm (bit-exact int32), else vs a float64
    # reference (exact: |sum| <= K*128*128 << 2^53)
    res["exact"], res["exact_ref"], res["scaled_max_rel_err"] = None, None, None
    ref = None
    try:
        if has_int_mm:
            try:
                ref, res["exact_ref"] = torch._int_mm(a, b), "int_mm"
            except RuntimeError as exc:
                print(f"  torch._int_mm {m}x{n}x{k}: {exc}", file=sys.stderr)
        if ref is None:
            ref, res["exact_ref"] = (a.double() @ b.double()).to(torch.int32), "float64"
        ours = torch_int8.gemm(a, b)
        res["exact"] = bool(ours.dtype == torch.int32 and ours.shape == (m, n) and torch.equal(ours, ref))
        del ours
    except Exception as exc:  # noqa: BLE001
        res["exact"] = False
        res["check_error"] = f"{type(exc).__name__}: {exc}"
        print(f"  check gemm {m}x{n}x{k}: {res['check_error']}", file=sys.stderr)
    # scaled_gemm against fp32 math on the exact accumulator (bf16 output: expect <= ~2^-8 relative)
    if ref is not None:
        try:
            sref = scale_a[:, None] * scale_b[None, :] * ref.float() + bias
            out = torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.bfloat16)
            err = (out.float() - sref).abs().max() / sref.abs().max().clamp_min(1e-30)
            res["scaled_max_rel_err"] = float(err)
            del out, sref
        except Exception as exc:  # noqa: BLE001
            res["scaled_check_error"] = f"{type(exc).__name__}: {exc}"
            print(f"  check scaled_gemm {m}x{n}x{k}: {res['scaled_check_error']}", file=sys.stderr)
    del ref

    timed = with_tops(time_in_turns(f"{m}x{n}x{k}", {name: fn for name, fn in fns.items() if fn}, args), m, n, k)
    res["methods"] = {name: timed.get(name) for name in fns}  # None: not applicable to this shape

    if m <= GRAPH_MAX_M:  # few-row GEMMs: also the GPU time alone, without the host's launch cost
        captured, failed = capture_graphs(f"{m}x{n}x{k}", {name: partial(graphed, fns[name]) for name in GRAPH_METHODS})
        timed = time_in_turns(f"{m}x{n}x{k} CUDA graph", captured, args)
        res["graph_methods"] = with_tops({name: failed.get(name) or timed[name] for name in GRAPH_METHODS}, m, n, k)
        tg = {name: d.get("tops") for name, d in res["graph_methods"].items()}
        res["graph_ratio_scaled_bf16"] = ratio(tg["scaled_gemm"], tg["bf16"])
        res["graph_ratio_ours_bf16"] = ratio(tg["ours"], tg["bf16"])

    t = {name: (d or {}).get("tops") for name, d in res["methods"].items()}
    res["ratio_ours_int_mm"] = ratio(t["ours"], t["int_mm"])  # = t_int_mm / t_ours
    res["ratio_scaled_bf16"] = ratio(t["scaled_gemm"], t["bf16"])  # = t_bf16 / t_scaled
    # time of the int8-output epilogue kernel over the int32-output one, in percent
    res["int8_epilogue_overhead_pct"] = None if not (t["ours"] and t["scaled_int8"]) else \
        100.0 * (t["ours"] / t["scaled_int8"] - 1.0)
    res["row_b_overhead_pct"] = None if not (t["scaled_gemm"] and t["scaled_row_b"]) else \
        100.0 * (t["scaled_gemm"] / t["scaled_row_b"] - 1.0)
    res["row_amax_overhead_pct"] = None if not (t["scaled_gemm"] and t["row_amax"]) else \
        100.0 * (t["scaled_gemm"] / t["row_amax"] - 1.0)
    res["pct_peak_ours"] = None if t["ours"] is None else 100.0 * t["ours"] / PEAK_INT8_DENSE_TOPS
    res["pct_peak_int_mm"] = None if t["int_mm"] is None else 100.0 * t["int_mm"] / PEAK_INT8_DENSE_TOPS
    return res


def _add_gemm_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--shapes", choices=sorted(SHAPE_SETS), default="full", help="shape set (default full)")
    p.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="MxNxK",
        help="benchmark this shape instead of --shapes (repeatable)",
    )


def bench_shapes(shapes: Sequence[Shape], args, bench: Callable[[int, int, int, int], dict]) -> List[dict]:
    """bench(M, N, K, seed) per shape, with progress on stderr; each shape gets its own seed, and the
    cache allocator is emptied in between so that one shape's buffers do not crowd the next."""
    results = []
    for i, (m, n, k) in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] M={m} N={n} K={k}", file=sys.stderr, flush=True)
        results.append(bench(m, n, k, args.seed + i))
        torch.cuda.empty_cache()
    return results


@register("gemm", "int8 GEMM: torch_int8.gemm / scaled_gemm vs torch._int_mm and bf16 matmul", _add_gemm_args)
def run_gemm(args: argparse.Namespace) -> int:
    require_cuda()
    shapes = args.shape or SHAPE_SETS[args.shapes]
    info = meta()
    info.update({"command": "gemm", "shapes": "custom" if args.shape else args.shapes, "reps": args.reps,
                 "warmup": args.warmup, "seed": args.seed, "layout": "a [M,K] row-major, b = w.t() of [N,K]"})
    print_meta(info)
    print(f"# {len(shapes)} shapes, median of {args.reps} reps after {args.warmup} warm-up calls")
    results = bench_shapes(shapes, args, lambda m, n, k, seed: bench_gemm_shape(m, n, k, args, seed))
    print(format_table(results))
    bad = [f"torch_int8.gemm {r['M']}x{r['N']}x{r['K']}" for r in results
           if r["exact"] is False or (r["methods"].get("ours") or {}).get("error")]
    title = f"int8 GEMM on {info['gpu']} (torch_int8 {info['torch_int8']})"
    return finish(args, {"meta": info, "results": results}, lambda path: plot_gemm(results, path, title), bad)
