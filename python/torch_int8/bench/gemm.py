"""Benchmarks for torch_int8.

Usage::

    python -m torch_int8.bench gemm [--json FILE] [--plot FILE] [--shapes quick|full]
                                    [--shape MxNxK ...] [--reps N] [--warmup N]
    python -m torch_int8.bench backends [--json FILE] [--plot FILE] [--shape MxNxK ...] [--family NAME ...]

``gemm`` times, side by side in one process and on the same data:

* ``ours``        ``torch_int8.gemm(a, b)``                 int8 x int8 -> int32
* ``int_mm``      ``torch._int_mm(a, b)``                   int8 x int8 -> int32 (cuBLASLt);
                  only where it accepts the shape (M > 16, K % 8 == 0, N % 8 == 0), else None
* ``bf16``        ``torch.matmul(a_bf16, b_bf16)``          bf16 x bf16 -> bf16 (same values)
* ``scaled_gemm`` ``torch_int8.scaled_gemm(qa, qb, bias)``  per-row a scale, per-column b scale,
                  fp32 bias, bf16 output

``a`` is a contiguous row-major ``[M, K]`` int8 matrix; ``b = w.t()`` is the transposed view of a
contiguous ``[N, K]`` weight, i.e. a column-major (K-major) ``[K, N]`` matrix, the layout the
kernels want (and the layout of an ``nn.Linear`` weight).  Data are fresh uniform random int8 values
in [-128, 127] per shape (seeded, so runs are reproducible).

Timing (:func:`timeit_interleaved`): CUDA events.  ``warmup`` calls first (also used to estimate the
time of one call); then ``reps`` measurements, each one an event pair around ``batch`` back-to-back calls,
divided by ``batch``; the methods compared on one shape take turns, one measurement each per round.
``batch`` is 1 unless one call takes less than ``_MIN_EVENT_MS`` (0.1 ms); then it is enough calls (at
most 1000) to span about 0.1 ms, so that event resolution and jitter do not dominate tiny kernels.  All
events are recorded before a single synchronize, so the GPU runs the calls back to back; for
microsecond kernels (M = 1..16) the host-side launch overhead of each op can still exceed the kernel
time, and then it is what gets measured (as in eager use; the CUDA-graph columns give the GPU time).
The reported time is the median over the reps (min is kept in the JSON too).  Caches are not flushed
between calls: for shapes whose operands fit in the L2 cache (50 MB on H100/H200, e.g. the small-M
shapes with a 16 MiB 4096x4096 weight) the numbers are "warm L2" numbers and therefore optimistic for
memory-bound cases; the same holds for every method, so the comparison is fair.

Subcommands (gemm, linear, quantize, backends, conv) are registered in :data:`COMMANDS` with
:func:`register`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import torch_int8

# Dense (non-sparse) INT8 tensor-core peak of one NVIDIA H200 SXM, from the NVIDIA H200 datasheet
# ("INT8 Tensor Core: 3,958 TOPS" is quoted *with* 2:4 sparsity; dense is half of that).
PEAK_INT8_DENSE_TOPS = 1979.0
# For reference: dense BF16 tensor-core peak of the H200 SXM (datasheet: 1,979 TFLOPS with sparsity).
PEAK_BF16_DENSE_TFLOPS = 989.5

# A single event pair should span at least this much GPU time; faster calls are batched.
_MIN_EVENT_MS = 0.1
_MAX_BATCH = 1000

METHODS = ("ours", "int_mm", "bf16", "scaled_gemm", "scaled_int8", "row_amax")
# Shapes with M <= GRAPH_MAX_M are also timed as CUDA-graph replays (GPU time without host overhead).
GRAPH_MAX_M = 1024
GRAPH_METHODS = ("ours", "bf16", "scaled_gemm")

Shape = Tuple[int, int, int]  # (M, N, K)


# --------------------------------------------------------------------------------------------
# subcommand registry
# --------------------------------------------------------------------------------------------


@dataclass
class Command:
    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: Dict[str, Command] = {}


def register(name: str, help: str, add_args: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register ``run(args) -> exit code`` as subcommand ``name``."""

    def deco(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(name, help, add_args, run)
        return run

    return deco


def _add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="write meta data and results as JSON to FILE")
    p.add_argument("--plot", metavar="FILE", help="write a PNG chart (needs matplotlib) to FILE")
    p.add_argument("--reps", type=int, default=50, help="timed repetitions per method (median; default 50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up calls per method (default 10)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the random data (default 0)")


# --------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------

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


def parse_sizes(text: str, form: str) -> Tuple[int, ...]:
    """Positive sizes written as `form` ('MxNxK', 'RxC'; commas also separate) -> a tuple of ints."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if len(sizes) != len(form.split("x")):
        raise argparse.ArgumentTypeError(f"shape must be {form}, got {text!r}")
    if min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return sizes


def parse_shape(text: str) -> Shape:
    """'MxNxK' (or 'M,N,K') -> (M, N, K)."""
    return parse_sizes(text, "MxNxK")


def int_mm_supported(m: int, n: int, k: int) -> bool:
    """Shapes torch._int_mm accepts on CUDA: M > 16, K and N multiples of 8."""
    return m > 16 and k % 8 == 0 and n % 8 == 0


def tops(m: int, n: int, k: int, ms: Optional[float]) -> Optional[float]:
    """2*M*N*K operations in ``ms`` milliseconds -> tera-operations per second."""
    if ms is None or ms <= 0:
        return None
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


def ratio(x: Optional[float], y: Optional[float]) -> Optional[float]:
    if x is None or y is None or y == 0:
        return None
    return x / y


def choose_batch(est_ms: float, min_ms: float = _MIN_EVENT_MS, max_batch: int = _MAX_BATCH) -> int:
    """Calls per event pair so that one measurement spans >= min_ms of GPU time."""
    if not (est_ms > 0) or math.isnan(est_ms):
        return max_batch
    return int(max(1, min(max_batch, math.ceil(min_ms / est_ms))))


def git_commit() -> str:
    """$TORCH_INT8_COMMIT if set (a copied checkout's .git may be stale), else `git rev-parse HEAD`
    of the working dir or of this file's dir."""
    if os.environ.get("TORCH_INT8_COMMIT"):
        return os.environ["TORCH_INT8_COMMIT"]
    for cwd in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            continue
        sha = out.stdout.strip()
        if out.returncode == 0 and sha:
            return sha
    return "unknown"


def _fmt(x: Optional[float], width: int, prec: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{prec}f}"


def format_table(results: Sequence[dict]) -> str:
    """Fixed-width text table of gemm results (as produced by :func:`bench_gemm_shape`)."""
    cols = [("M", 7), ("N", 6), ("K", 6)]
    head = " ".join(f"{c:>{w}}" for c, w in cols)
    for meth in METHODS:
        head += f" | {meth + ' ms':>14} {'TOPS':>7}"
    head += f" | {'ours/int_mm':>11} {'scaled/bf16':>11} {'int8 epi %':>10} {'amax %':>6} {'%peak':>6} {'exact':>5}"
    lines = [head, "-" * len(head)]
    for r in results:
        line = f"{r['M']:>7} {r['N']:>6} {r['K']:>6}"
        for meth in METHODS:
            d = r["methods"].get(meth) or {}
            line += f" | {_fmt(d.get('ms'), 14, 4)} {_fmt(d.get('tops'), 7, 1)}"
        exact = r.get("exact")
        exact_s = "-" if exact is None else ("yes" if exact else "NO")
        line += (
            f" | {_fmt(r.get('ratio_ours_int_mm'), 11, 3)} {_fmt(r.get('ratio_scaled_bf16'), 11, 3)}"
            f" {_fmt(r.get('int8_epilogue_overhead_pct'), 10, 1)} {_fmt(r.get('row_amax_overhead_pct'), 6, 1)}"
            f" {_fmt(r.get('pct_peak_ours'), 6, 1)} {exact_s:>5}"
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
                         + " | ".join(_fmt(g[m].get("ms"), 14, 4) for m in GRAPH_METHODS)
                         + f" | {_fmt(r.get('graph_ratio_ours_bf16'), 9, 3)} {_fmt(r.get('graph_ratio_scaled_bf16'), 11, 3)}")
    lines.append(
        f"TOPS = 2*M*N*K/t (bf16: TFLOPS); ratios are TOPS ratios (>1: first one faster); "
        f"%peak = ours / {PEAK_INT8_DENSE_TOPS:g} TOPS (H200 dense INT8); int8 epi % = time of scaled_gemm with "
        f"int8 output over the int32 kernel's, in %; amax % = time of scaled_gemm_row_amax over scaled_gemm's (bf16)"
    )
    return "\n".join(lines)


def plot_grouped_bars(path: str, labels: Sequence[str], series: Dict[str, Sequence[Optional[float]]], *,
                      ylabel: str, title: str, log: bool = False,
                      lines: Sequence[Tuple[float, str, Optional[str]]] = ()) -> bool:
    """Bar chart with one group of bars per label and one bar per series (None draws as 0), written
    to ``path`` as PNG. ``lines``: horizontal reference lines (y, line style, legend label; an
    unlabelled line is a gray guide such as parity). Returns False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on a GPU node
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path}", file=sys.stderr)
        return False
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(labels) + 2), 5.5))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v or 0.0 for v in values], width, label=name)
    for y, style, label in lines:
        ax.axhline(y, color="k" if label else "gray", ls=style, lw=1, label=label)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_speedups(results: Sequence[dict], labels: Sequence[str], path: str, baseline: str, title: str,
                  graphs: bool = False) -> bool:
    """Forward and forward+backward speed-ups of an INT8 layer over its float baseline, per shape;
    graphs: also those of the CUDA-graph replays (fwd_graph_speedup, fwd_bwd_graph_speedup; None
    draws as 0)."""
    keys = {"forward": "fwd_speedup", "forward + backward": "fwd_bwd_speedup"}
    if graphs:
        keys.update({"forward, CUDA graph": "fwd_graph_speedup",
                     "forward + backward, CUDA graph": "fwd_bwd_graph_speedup"})
    return plot_grouped_bars(path, labels, {name: [r.get(key) for r in results] for name, key in keys.items()},
                             ylabel=f"speed-up over {baseline}", title=title, lines=[(1.0, "--", None)])


def plot_gemm(results: Sequence[dict], path: str, title: str = "") -> bool:
    """Grouped bar chart of TOPS per shape and method. Returns False if matplotlib is missing."""
    return plot_grouped_bars(
        path, [f"{r['M']}x{r['N']}x{r['K']}" for r in results],
        {meth: [(r["methods"].get(meth) or {}).get("tops") for r in results] for meth in METHODS},
        ylabel="TOPS (2*M*N*K / t); bf16: TFLOPS", title=title or "torch_int8 gemm (M x N x K)", log=True,
        lines=[(PEAK_INT8_DENSE_TOPS, "--", f"INT8 dense peak {PEAK_INT8_DENSE_TOPS:g}")])


# --------------------------------------------------------------------------------------------
# CUDA helpers
# --------------------------------------------------------------------------------------------


def require_cuda() -> None:
    if not torch.cuda.is_available():
        sys.exit(
            "torch_int8.bench: a CUDA GPU is required (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )


def timeit(fn: Callable[[], object], reps: int = 50, warmup: int = 10) -> dict:
    """Time ``fn`` (which launches CUDA work) with CUDA events: timeit_interleaved of fn alone."""
    return timeit_interleaved({"fn": fn}, reps, warmup)["fn"]


def timeit_interleaved(fns: Dict[str, Callable[[], object]], reps: int = 50, warmup: int = 10) -> Dict[str, dict]:
    """Time each of ``fns`` (which launch CUDA work) with CUDA events, in turns.

    Per fn ``warmup`` untimed-in-the-result calls (one event pair around all of them gives an
    estimate of one call, and so its ``batch``); then ``reps`` rounds, each measuring ``batch``
    back-to-back calls of every fn in turn (the order rotating from round to round), divided by
    ``batch``. Taking turns exposes every fn to the same drift of the GPU's clocks (power limit,
    temperature) over the measurement, instead of favouring the fn timed first; rotating lets each
    fn follow each other one (whose operands fill the L2 cache).
    Returns per fn {"ms": median, "min_ms": min, "batch": batch, "reps": reps}. No cache flushing.
    """
    reps = max(1, int(reps))
    warmup = max(1, int(warmup))
    batches = {}
    for name, fn in fns.items():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(warmup):
            fn()
        end.record()
        torch.cuda.synchronize()
        batches[name] = choose_batch(start.elapsed_time(end) / warmup)
    events = {name: [] for name in fns}
    names = list(fns)
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:  # each follows each (caches, clocks)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(batches[name]):
                fns[name]()
            e.record()
            events[name].append((s, e))
    torch.cuda.synchronize()
    out = {}
    for name, pairs in events.items():
        times = [s.elapsed_time(e) / batches[name] for s, e in pairs]
        out[name] = {"ms": statistics.median(times), "min_ms": min(times), "batch": batches[name], "reps": reps}
    return out


def _measure(name: str, fn: Callable[[], object], m: int, n: int, k: int, args) -> dict:
    t = _time_or_error(f"{name} {m}x{n}x{k}", lambda: fn, args)
    t["tops"] = tops(m, n, k, t["ms"])
    return t


def _error_result(label: str, exc: Exception) -> dict:
    """{"ms": None, "error": message} for a method that raised (also printed to stderr), after
    draining the GPU's queue."""
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 - e.g. a sticky CUDA error; reported below
            pass
    print(f"  {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return {"ms": None, "error": f"{type(exc).__name__}: {exc}"}


def _time_or_error(label: str, make: Callable[[], Callable[[], object]], args) -> dict:
    """timeit(make()) plus "error": None; if making or timing the call raises, _error_result
    instead, so that one failing method (or CUDA-graph capture) does not stop the whole benchmark."""
    try:
        t = timeit(make(), reps=args.reps, warmup=args.warmup)
    except Exception as exc:  # noqa: BLE001 - a failing method must not stop the whole benchmark
        return _error_result(label, exc)
    t["error"] = None
    return t


def script_args(doc: Optional[str]) -> argparse.Namespace:
    """The options of the scripts/ that time paths side by side at CONV_SHAPES (--batch, --reps,
    --warmup, --seed: the arguments time_in_turns reads), with torch's generator seeded."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    return args


def time_in_turns(label: str, fns: Dict[str, Callable[[], object]], args) -> Dict[str, dict]:
    """timeit_interleaved over those of fns whose first call succeeds, each result plus "error":
    None; a fn whose first call raises gets _error_result and is left out of the turns. Should one
    raise later, each is timed alone (_time_or_error), so that only the failing one is lost."""
    out, ok = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            torch.cuda.synchronize()
            ok[name] = fn
        except Exception as exc:  # noqa: BLE001 - a failing method must not stop the whole benchmark
            out[name] = _error_result(f"{label} {name}", exc)
    try:
        timed = timeit_interleaved(ok, args.reps, args.warmup) if ok else {}
    except Exception:  # noqa: BLE001 - one fn failed past its first call: each alone, to find which
        timed = {name: _time_or_error(f"{label} {name}", lambda fn=fn: fn, args) for name, fn in ok.items()}
    for name, t in timed.items():
        out[name] = {**t, "error": t.get("error")}
    return {name: out[name] for name in fns}


def meta() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": "sm_%d%d" % (props.major, props.minor),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_int8": getattr(torch_int8, "__version__", None),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "peak_int8_dense_tops": PEAK_INT8_DENSE_TOPS,
    }


# --------------------------------------------------------------------------------------------
# gemm
# --------------------------------------------------------------------------------------------


def with_tops(timed: Dict[str, dict], m: int, n: int, k: int) -> Dict[str, dict]:
    """timed (time_in_turns) with each method's "tops" at M x N x K added."""
    return {name: {**t, "tops": tops(m, n, k, t["ms"])} for name, t in timed.items()}


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
    res["row_amax_overhead_pct"] = None if not (t["scaled_gemm"] and t["row_amax"]) else \
        100.0 * (t["scaled_gemm"] / t["row_amax"] - 1.0)
    res["pct_peak_ours"] = None if t["ours"] is None else 100.0 * t["ours"] / PEAK_INT8_DENSE_TOPS
    res["pct_peak_int_mm"] = None if t["int_mm"] is None else 100.0 * t["int_mm"] / PEAK_INT8_DENSE_TOPS
    return res


def _add_gemm_args(p: argparse.ArgumentParser) -> None:
    _add_common_args(p)
    p.add_argument("--shapes", choices=sorted(SHAPE_SETS), default="full", help="shape set (default full)")
    p.add_argument(
        "--shape",
        type=parse_shape,
        action="append",
        metavar="MxNxK",
        help="benchmark this shape instead of --shapes (repeatable)",
    )


def write_json(path: str, payload: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def print_meta(info: dict) -> None:
    """The first line of every report: the GPU, the software and the commit measured."""
    print(f"# {info['gpu']} ({info['capability']})  torch {info['torch']}  CUDA {info['cuda']}  "
          f"torch_int8 {info['torch_int8']}  commit {info['commit']}  {info['date']}")


def bench_shapes(shapes: Sequence[Shape], args, bench: Callable[[int, int, int, int], dict]) -> List[dict]:
    """bench(M, N, K, seed) per shape, with progress on stderr; each shape gets its own seed, and the
    cache allocator is emptied in between so that one shape's buffers do not crowd the next."""
    results = []
    for i, (m, n, k) in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] M={m} N={n} K={k}", file=sys.stderr, flush=True)
        results.append(bench(m, n, k, args.seed + i))
        torch.cuda.empty_cache()
    return results


def failed_methods(results: Sequence[dict], label: Callable[[dict], str]) -> List[str]:
    """"<label of the row> <method>" for every timed method of results that has no time."""
    return [f"{label(r)} {m}" for r in results for m, d in r["methods"].items() if d and d.get("ms") is None]


def finish(args, payload: dict, plot: Callable[[str], bool], failed: Sequence[str] = ()) -> int:
    """The tail of every subcommand: the --json and --plot files, then the exit code, 1 when
    ``failed`` names cases that were wrong or failed to run."""
    if args.json:
        write_json(args.json, payload)
        print(f"wrote {args.json}")
    if args.plot and plot(args.plot):
        print(f"wrote {args.plot}")
    if failed:
        print(f"FAILED: wrong or failing: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


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


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------

LINEAR_SHAPES: List[Shape] = [(8192, 4096, 4096), (8192, 4096, 11008), (8192, 11008, 4096)]  # (M, in, out)


def _add_linear_args(p: argparse.ArgumentParser) -> None:
    _add_common_args(p)
    p.add_argument("--profile", metavar="MxINxOUT", type=parse_shape,
                   help="instead of the tables: torch.profiler's top CUDA kernels of the INT8 layer's forward "
                        "and forward+backward at M tokens, IN -> OUT features (bf16)")


def training_step(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of layer on x with output gradient gy, as a call to time; it drops the
    gradients it made, so that no call pays for accumulating into the previous one's."""

    def step():
        layer(x).backward(gy)
        drop_grads(layer, x)

    return step


def drop_grads(layer: torch.nn.Module, x: torch.Tensor) -> None:
    """Sets the .grad of x and of layer's parameters to None."""
    x.grad = None
    for p in layer.parameters():
        p.grad = None


def graphed_training_step(layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor) -> Callable[[], object]:
    """The GPU work of training_step(layer, x, gy) as a CUDA-graph replay: forward and backward are
    captured after a side-stream warm-up of training_step, which leaves every .grad None, so the
    captured backward creates x.grad and the parameters' .grad in the graph's private memory pool
    (PyTorch's whole-network capture) and each replay rewrites them in place: no accumulation, as in
    training_step. x must require grad. Call drop_grads(layer, x) when done replaying."""
    return graphed(lambda: layer(x).backward(gy), warm=training_step(layer, x, gy))


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


def add_bandwidths(row: dict, x: torch.Tensor, ms: Dict[str, Optional[float]], passes: Sequence[str]) -> None:
    """row["copy_GBps"] (x read and written once) and, per pass, "<pass>_GBps" (quantize_pass_bytes)
    and "<pass>_pct_of_copy_bw": how close the pass gets to a copy's speed; None where a time is."""
    row["copy_GBps"] = ratio(2 * x.numel() * x.element_size() / 1e6, ms["copy"])
    for name in passes:
        row[f"{name}_GBps"] = ratio(quantize_pass_bytes(name, x) / 1e6, ms[name])
        pct = ratio(row[f"{name}_GBps"], row["copy_GBps"])
        row[f"{name}_pct_of_copy_bw"] = None if pct is None else 100 * pct


# The quantize passes of the Linear layer: per row, per row + column maxima, per column transposed.
QUANTIZE_VARIANTS = {
    "quantize_rows": lambda x, amax: torch_int8.quantize_rows(x),
    "quantize_rows_colmax": lambda x, amax: torch_int8.quantize_rows(x, col_amax=True),
    "quantize_columns_t": lambda x, amax: torch_int8.quantize_columns_t(x, amax),
}
DECODE_SHAPES: List[Shape] = [(m, 4096, n) for n in (4096, 11008) for m in (1, 4, 16)]  # (M, in, out)


def graphed(fn: Callable[[], object], warm: Optional[Callable[[], object]] = None) -> Callable[[], object]:
    """fn captured in a CUDA graph after a warm-up of 3 calls of warm (default: fn) on a side stream:
    replaying it has no host overhead. fn must read and write only tensors that stay alive (static
    addresses) and must not synchronize with the host."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            (warm or fn)()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


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
        print(f"{r['M']:>6} {r['in']:>6} {r['out']:>6} | {_fmt(t['bf16_fwd'], 9, 4)} {_fmt(t['int8_fwd'], 9, 4)} "
              f"{_fmt(r['fwd_speedup'], 5, 2)} | {_fmt(t['bf16_fwd_bwd'], 9, 4)} {_fmt(t['int8_fwd_bwd'], 9, 4)} "
              f"{_fmt(r['fwd_bwd_speedup'], 5, 2)} | {_fmt(r['fwd_graph_speedup'], 7, 2)} "
              f"{_fmt(r['fwd_bwd_graph_speedup'], 7, 2)} | {r['copy_GBps']:>9.0f} {pct}")
    print("x = bf16 time / int8 time, called eagerly; g ... x: the same replayed from CUDA graphs (GPU time "
          "without the host's Python and launch cost); quantize columns: bandwidth as % of the copy's "
          "(bytes: bf16 read + int8 written)")
    decode = [bench_decode_shape(m, d_in, d_out, args, seed=args.seed + i)
              for i, (m, d_in, d_out) in enumerate(DECODE_SHAPES)]
    print(f"\nQuantizedLinear vs bf16 nn.Linear, eager | CUDA graph replay")
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


# --------------------------------------------------------------------------------------------
# bench quantize: the fused quantize kernels against a copy of the same tensor
# --------------------------------------------------------------------------------------------

# [rows, cols]: Linear activations and weights at 8192 tokens, ResNet dY as [pixels, channels]
# (r18.layer1-3 at batch 128), and a wide-and-short matrix.
QUANTIZE_SHAPES: List[Tuple[int, int]] = [(8192, 4096), (8192, 11008), (4096, 4096), (4096, 11008), (11008, 4096),
                                          (401408, 64), (100352, 128), (25088, 256), (1024, 65536)]
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
    _add_common_args(p)
    p.add_argument("--shape", type=parse_matrix, action="append", metavar="RxC",
                   help="quantize this [rows, cols] matrix instead of the default set (repeatable)")
    p.add_argument("--dtype", choices=sorted(QUANTIZE_DTYPES), default="bf16", help="input dtype (default bf16)")


def quantize_pass_bytes(name: str, x: torch.Tensor) -> int:
    """Bytes a pass must move at least: x read once, and (but for column_amax) one int8 per value written."""
    return x.numel() * x.element_size() + (0 if name == "column_amax" else x.numel())


def bench_quantize_shape(rows: int, cols: int, dtype: torch.dtype, args, seed: int, device: str = "cuda") -> dict:
    """Every QUANTIZE_PASSES pass and a device-to-device copy of the same random x, each replayed from
    a CUDA graph (kernel time without the host's launch cost), as bandwidth and % of the copy's."""
    torch.manual_seed(seed)
    x = torch.randn(rows, cols, device=device, dtype=dtype)
    _, amax = torch_int8.quantize_rows(x, col_amax=True)
    label = f"{rows}x{cols}"
    methods = {"copy": _time_or_error(f"copy {label}", partial(graphed, x.clone), args)}
    for name, fn in QUANTIZE_PASSES.items():
        methods[name] = _time_or_error(f"{name} {label}", partial(graphed, partial(fn, x, amax)), args)
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
        line = (f"{r['rows']:>7} {r['cols']:>6} {r['dtype']:>8} | {_fmt(None if copy_ms is None else 1e3 * copy_ms, 8, 1)} "
                f"{_fmt(r['copy_GBps'], 6, 0)}")
        for name in QUANTIZE_PASSES:
            ms = r["methods"][name]["ms"]
            line += f" | {_fmt(None if ms is None else 1e3 * ms, 15, 1)} {_fmt(r[name + '_pct_of_copy_bw'], 5, 1)}"
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


# --------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------

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
    _add_common_args(p)
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
        res["methods"]["sgemm"] = _measure("sgemm", lambda: torch.matmul(a_f32, b_f32), m, n, k, args)
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
            res["methods"][name] = _measure(name, lambda: torch_int8.gemm(a, b), m, n, k, args)
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
        line = f"{r['M']:>7} {r['N']:>6} {r['K']:>6} | {_fmt(sg['ms'], 9, 3)} {_fmt(sg['tops'], 7, 1)}"
        for name in families:
            d = r["methods"][name]
            exact = "yes" if r["exact"][name] else "NO"
            line += f" | {_fmt(d['ms'], 9, 3)} {_fmt(d['tops'], 7, 1)} {_fmt(r['ratio_vs_sgemm'][name], 6, 2)} {exact:>5}"
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


# --------------------------------------------------------------------------------------------
# conv
# --------------------------------------------------------------------------------------------

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
    _add_common_args(p)
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


def capture_graphs(label: str, captures: Dict[str, Callable[[], Callable[[], object]]]):
    """(replays, failures): each capture called (graphed or graphed_training_step, bound to its
    arguments); one that raises gives an _error_result in failures instead of a replay."""
    replays, failures = {}, {}
    for name, capture in captures.items():
        try:
            replays[name] = capture()
        except Exception as exc:  # noqa: BLE001 - a failed capture must not stop the whole benchmark
            failures[name] = _error_result(f"{label} {name}", exc)
    return replays, failures


def graph_timings(label: str, layers: Dict[str, torch.nn.Module], x: torch.Tensor, gy: torch.Tensor,
                  args) -> Dict[str, dict]:
    """"{side}_fwd_graph" and "{side}_fwd_bwd_graph" for each (side, layer) of layers: the forward
    (under no_grad) and the training step (graphed_training_step) captured in CUDA graphs, then
    timed in turns as replays on the same x and gy. A capture or replay that raises gives {"ms":
    None, "error": ...} (printed to stderr) and the benchmark goes on."""
    replays, failures = {}, {}
    for side, layer in layers.items():
        with torch.no_grad():
            r, f = capture_graphs(label, {f"{side}_fwd_graph": partial(graphed, partial(layer, x))})
        replays.update(r)
        failures.update(f)
        r, f = capture_graphs(label, {f"{side}_fwd_bwd_graph": partial(graphed_training_step, layer, x, gy)})
        replays.update(r)
        failures.update(f)
        drop_grads(layer, x)  # the captured step's gradients (graph memory), or a failed capture's
    timed = time_in_turns(f"{label} CUDA graph", replays, args)
    return {f"{side}_{method}": failures.get(f"{side}_{method}") or timed[f"{side}_{method}"]
            for side in layers for method in ("fwd_graph", "fwd_bwd_graph")}


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


def kernel_table(prof, top: int = 25) -> str:
    """name, calls, total and mean us of the `top` CUDA kernels (and copies, memsets) by device time."""
    rows = [e for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]
    rows.sort(key=lambda e: e.device_time_total, reverse=True)
    lines = [f"{'kernel':<90} {'calls':>6} {'total us':>10} {'mean us':>9}"]
    lines += [f"{e.key[:90]:<90} {e.count:>6} {e.device_time_total:>10.1f} {e.device_time_total / e.count:>9.1f}"
              for e in rows[:top]]
    lines.append(f"{'all':<90} {sum(e.count for e in rows):>6} {sum(e.device_time_total for e in rows):>10.1f}")
    return "\n".join(lines)


def profile_layer(label: str, layer: torch.nn.Module, x: torch.Tensor, gy: torch.Tensor, reps: int) -> int:
    """Prints the top CUDA kernels of `reps` forward and forward+backward calls of one layer."""

    def forward():
        with torch.no_grad():
            layer(x)

    for what, fn in (("forward", forward), ("forward+backward", training_step(layer, x, gy))):
        for _ in range(3):  # warm-up: CUTLASS initialization, the caching allocator
            fn()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(reps):
                fn()
            torch.cuda.synchronize()
        print(f"\n{label} {what}: {reps} calls")
        print(kernel_table(prof))
    return 0


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
            line += f" | {_fmt(t[0], 10, 4)} {_fmt(t[1], 10, 4)} {_fmt(r.get(method + '_speedup'), 5, 2)}"
        lines.append(line + f" | {_fmt(r['int8_fwd_tops'], 9, 1)} {_fmt(r['fwd_max_rel_err'], 8, 4)} "
                            f"{r['workspace_bytes'] / 2**20:>10.1f}")
    lines.append("times in ms (median); x = bf16 time / int8 time; f+b = forward+backward; g = replayed from a CUDA "
                 "graph (GPU time without the host's Python and launch cost); im2col MiB: forward column buffer "
                 "if the im2col path runs (0 used when the implicit-GEMM kernel takes the layer)")
    return "\n".join(lines)


def plot_conv(results: Sequence[dict], path: str, title: str = "") -> bool:
    return plot_speedups(results, [f"{r['name']} N={r['N']}" for r in results], path,
                         "cuDNN bf16 (channels_last)", title, graphs=True)


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m torch_int8.bench", description="torch_int8 benchmarks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_args(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
