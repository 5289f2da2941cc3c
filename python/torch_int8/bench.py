"""Benchmarks for torch_int8.

Usage::

    python -m torch_int8.bench gemm [--json FILE] [--plot FILE] [--shapes quick|full]
                                    [--shape MxNxK ...] [--reps N] [--warmup N]

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

Timing (:func:`timeit`): CUDA events.  ``warmup`` calls first (also used to estimate the time of
one call); then ``reps`` measurements, each one an event pair around ``batch`` back-to-back calls, divided
by ``batch``.  ``batch`` is 1 unless one call takes less than ``_MIN_EVENT_MS`` (0.1 ms); then it is
enough calls (at most 1000) to span about 0.1 ms, so that event resolution and jitter do not dominate
tiny kernels.  All events are recorded before a single synchronize, so the GPU runs the calls back to
back; for microsecond kernels (M = 1..16) the host-side launch overhead of each op can still exceed the
kernel time, and then it is what gets measured (as in eager use).  The reported time is the median
over the reps (min is kept in the JSON too).  Caches are not flushed
between calls: for shapes whose operands fit in the L2 cache (50 MB on H100/H200, e.g. the
small-M shapes with a 16 MiB 4096x4096 weight) the numbers are "warm L2" numbers and therefore
optimistic for memory-bound cases; the same holds for every method, so the comparison is fair.

Subcommands are registered in :data:`COMMANDS` with :func:`register`; ``linear`` and ``conv`` can
be added as further functions the same way.
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

METHODS = ("ours", "int_mm", "bf16", "scaled_gemm")

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
    + [(m, 4096, 4096) for m in (1, 8, 16, 64, 128, 256, 512, 1024)]
    + [(200704, 64, 576)]  # conv-like: 3x3 conv, 64 channels, 224x224 image x batch 4, as implicit GEMM
)

QUICK_SHAPES: List[Shape] = [
    (8192, 8192, 8192),  # compute bound
    (8192, 11008, 4096),  # LLM MLP up-projection
    (16, 4096, 4096),  # decode-like, memory bound (torch._int_mm refuses M <= 16)
    (200704, 64, 576),  # conv-like, skinny N
]

SHAPE_SETS: Dict[str, List[Shape]] = {"quick": QUICK_SHAPES, "full": FULL_SHAPES}


def parse_shape(text: str) -> Shape:
    """'MxNxK' (or 'M,N,K') -> (M, N, K)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        m, n, k = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be MxNxK, got {text!r}") from None
    if min(m, n, k) <= 0:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return (m, n, k)


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
    """`git rev-parse HEAD` (of the working dir, else of this file's dir), else $TORCH_INT8_COMMIT."""
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
    return os.environ.get("TORCH_INT8_COMMIT") or "unknown"


def _fmt(x: Optional[float], width: int, prec: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{prec}f}"


def format_table(results: Sequence[dict]) -> str:
    """Fixed-width text table of gemm results (as produced by :func:`bench_gemm_shape`)."""
    cols = [("M", 7), ("N", 6), ("K", 6)]
    head = " ".join(f"{c:>{w}}" for c, w in cols)
    for meth in METHODS:
        head += f" | {meth + ' ms':>14} {'TOPS':>7}"
    head += f" | {'ours/int_mm':>11} {'scaled/bf16':>11} {'%peak':>6} {'exact':>5}"
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
            f" {_fmt(r.get('pct_peak_ours'), 6, 1)} {exact_s:>5}"
        )
        lines.append(line)
    lines.append(
        f"TOPS = 2*M*N*K/t (bf16: TFLOPS); ratios are TOPS ratios (>1: first one faster); "
        f"%peak = ours / {PEAK_INT8_DENSE_TOPS:g} TOPS (H200 dense INT8)"
    )
    return "\n".join(lines)


def plot_gemm(results: Sequence[dict], path: str, title: str = "") -> bool:
    """Grouped bar chart of TOPS per shape and method. Returns False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path}", file=sys.stderr)
        return False
    labels = [f"{r['M']}x{r['N']}x{r['K']}" for r in results]
    width = 0.8 / len(METHODS)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(results) + 2), 5.5))
    for i, meth in enumerate(METHODS):
        vals = [((r["methods"].get(meth) or {}).get("tops") or 0.0) for r in results]
        xs = [j + (i - (len(METHODS) - 1) / 2) * width for j in range(len(results))]
        ax.bar(xs, vals, width, label=meth)
    ax.axhline(PEAK_INT8_DENSE_TOPS, color="k", ls="--", lw=1, label=f"INT8 dense peak {PEAK_INT8_DENSE_TOPS:g}")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("TOPS (2*M*N*K / t); bf16: TFLOPS")
    ax.set_xlabel("M x N x K")
    ax.set_title(title or "torch_int8 gemm")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
    """Time ``fn`` (which launches CUDA work) with CUDA events.

    ``warmup`` untimed-in-the-result calls (one event pair around all of them gives an estimate of
    one call), then ``reps`` measurements of ``batch`` back-to-back calls each, divided by ``batch``.
    Returns {"ms": median, "min_ms": min, "batch": batch, "reps": reps}.  No cache flushing.
    """
    reps = max(1, int(reps))
    warmup = max(1, int(warmup))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(warmup):
        fn()
    end.record()
    torch.cuda.synchronize()
    batch = choose_batch(start.elapsed_time(end) / warmup)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in events:
        s.record()
        for _ in range(batch):
            fn()
        e.record()
    torch.cuda.synchronize()
    times = [s.elapsed_time(e) / batch for s, e in events]
    return {"ms": statistics.median(times), "min_ms": min(times), "batch": batch, "reps": reps}


def _measure(name: str, fn: Callable[[], object], m: int, n: int, k: int, args) -> dict:
    try:
        t = timeit(fn, reps=args.reps, warmup=args.warmup)
    except Exception as exc:  # noqa: BLE001 - a failing method must not stop the whole benchmark
        if torch.cuda.is_available():
            try:
                torch.cuda.synchronize()
            except Exception:  # noqa: BLE001 - e.g. a sticky CUDA error; reported below
                pass
        print(f"  {name} {m}x{n}x{k}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return {"ms": None, "tops": None, "error": f"{type(exc).__name__}: {exc}"}
    t["tops"] = tops(m, n, k, t["ms"])
    t["error"] = None
    return t


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

    for name, fn in fns.items():
        if fn is None:
            res["methods"][name] = None  # not applicable to this shape
            continue
        res["methods"][name] = _measure(name, fn, m, n, k, args)
        torch.cuda.empty_cache()

    t = {name: (d or {}).get("tops") for name, d in res["methods"].items()}
    res["ratio_ours_int_mm"] = ratio(t["ours"], t["int_mm"])  # = t_int_mm / t_ours
    res["ratio_scaled_bf16"] = ratio(t["scaled_gemm"], t["bf16"])  # = t_bf16 / t_scaled
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


@register("gemm", "int8 GEMM: torch_int8.gemm / scaled_gemm vs torch._int_mm and bf16 matmul", _add_gemm_args)
def run_gemm(args: argparse.Namespace) -> int:
    require_cuda()
    shapes = args.shape or SHAPE_SETS[args.shapes]
    info = meta()
    info.update({"command": "gemm", "shapes": "custom" if args.shape else args.shapes, "reps": args.reps,
                 "warmup": args.warmup, "seed": args.seed, "layout": "a [M,K] row-major, b = w.t() of [N,K]"})
    print(f"# {info['gpu']} ({info['capability']})  torch {info['torch']}  CUDA {info['cuda']}  "
          f"torch_int8 {info['torch_int8']}  commit {info['commit']}  {info['date']}")
    print(f"# {len(shapes)} shapes, median of {args.reps} reps after {args.warmup} warm-up calls")
    results = []
    for i, (m, n, k) in enumerate(shapes):
        print(f"[{i + 1}/{len(shapes)}] M={m} N={n} K={k}", file=sys.stderr, flush=True)
        results.append(bench_gemm_shape(m, n, k, args, seed=args.seed + i))
        torch.cuda.empty_cache()
    print(format_table(results))

    if args.json:
        write_json(args.json, {"meta": info, "results": results})
        print(f"wrote {args.json}")
    if args.plot:
        if plot_gemm(results, args.plot, title=f"int8 GEMM on {info['gpu']} (torch_int8 {info['torch_int8']})"):
            print(f"wrote {args.plot}")

    bad = [f"{r['M']}x{r['N']}x{r['K']}" for r in results
           if r["exact"] is False or (r["methods"].get("ours") or {}).get("error")]
    if bad:
        print(f"FAILED: torch_int8.gemm wrong or failing for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# linear
# --------------------------------------------------------------------------------------------

LINEAR_SHAPES: List[Shape] = [(8192, 4096, 4096), (8192, 4096, 11008), (8192, 11008, 4096)]  # (M, in, out)


def _add_linear_args(p: argparse.ArgumentParser) -> None:
    _add_common_args(p)


def bench_linear_shape(m: int, d_in: int, d_out: int, args, seed: int) -> dict:
    """bf16 nn.Linear vs torch_int8.nn.Linear (same parameters, same input), forward and forward+backward,
    and quantize (bf16 -> int8 + per-row scales) against a device-to-device copy of the same tensor."""
    torch.manual_seed(seed)
    ref = torch.nn.Linear(d_in, d_out, device="cuda", dtype=torch.bfloat16)
    ours = torch_int8.nn.Linear.from_float(ref)
    x = torch.randn(m, d_in, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    gy = torch.randn(m, d_out, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd(layer):
        def step():
            layer(x).backward(gy)
            x.grad = None
            for p in layer.parameters():
                p.grad = None
        return step

    row = {"M": m, "in": d_in, "out": d_out, "methods": {}}
    with torch.no_grad():
        row["methods"]["bf16_fwd"] = timeit(lambda: ref(x), args.reps, args.warmup)
        row["methods"]["int8_fwd"] = timeit(lambda: ours(x), args.reps, args.warmup)
        xd = x.detach()
        row["methods"]["copy"] = timeit(lambda: xd.clone(), args.reps, args.warmup)
        row["methods"]["quantize"] = timeit(lambda: torch_int8.quantize(xd, 0), args.reps, args.warmup)
    row["methods"]["bf16_fwd_bwd"] = timeit(fwd_bwd(ref), args.reps, args.warmup)
    row["methods"]["int8_fwd_bwd"] = timeit(fwd_bwd(ours), args.reps, args.warmup)
    t = {k: v["ms"] for k, v in row["methods"].items()}
    copy_bytes = 2 * xd.numel() * xd.element_size()  # read + write
    quant_bytes = xd.numel() * (xd.element_size() + 1) + 4 * m  # read bf16, write int8 + scales
    row["fwd_speedup"] = t["bf16_fwd"] / t["int8_fwd"]
    row["fwd_bwd_speedup"] = t["bf16_fwd_bwd"] / t["int8_fwd_bwd"]
    row["copy_GBps"] = copy_bytes / t["copy"] / 1e6
    row["quantize_GBps"] = quant_bytes / t["quantize"] / 1e6
    row["quantize_pct_of_copy_bw"] = 100 * row["quantize_GBps"] / row["copy_GBps"]
    return row


@register("linear", "INT8 nn.Linear vs bf16 nn.Linear (forward, forward+backward) and quantize bandwidth",
          _add_linear_args)
def run_linear(args: argparse.Namespace) -> int:
    require_cuda()
    info = meta()
    info.update({"command": "linear", "reps": args.reps, "warmup": args.warmup, "seed": args.seed})
    print(f"# {info['gpu']}  torch {info['torch']}  CUDA {info['cuda']}  commit {info['commit']}  {info['date']}")
    header = (f"{'M':>6} {'in':>6} {'out':>6} | {'bf16 fwd':>9} {'int8 fwd':>9} {'x':>5} | {'bf16 f+b':>9} "
              f"{'int8 f+b':>9} {'x':>5} | {'quant GB/s':>10} {'copy GB/s':>10} {'%copy':>6}")
    results = []
    for i, (m, d_in, d_out) in enumerate(LINEAR_SHAPES):
        results.append(bench_linear_shape(m, d_in, d_out, args, seed=args.seed + i))
    print(header)
    print("-" * len(header))
    for r in results:
        t = {k: v["ms"] for k, v in r["methods"].items()}
        print(f"{r['M']:>6} {r['in']:>6} {r['out']:>6} | {t['bf16_fwd']:>9.4f} {t['int8_fwd']:>9.4f} "
              f"{r['fwd_speedup']:>5.2f} | {t['bf16_fwd_bwd']:>9.4f} {t['int8_fwd_bwd']:>9.4f} "
              f"{r['fwd_bwd_speedup']:>5.2f} | {r['quantize_GBps']:>10.0f} {r['copy_GBps']:>10.0f} "
              f"{r['quantize_pct_of_copy_bw']:>6.1f}")
    print("times in ms (median); x = bf16 time / int8 time")
    if args.json:
        write_json(args.json, {"meta": info, "results": results})
        print(f"wrote {args.json}")
    if args.plot and plot_linear(results, args.plot, title=f"INT8 vs bf16 nn.Linear on {info['gpu']}"):
        print(f"wrote {args.plot}")
    return 0


def plot_linear(results: Sequence[dict], path: str, title: str = "") -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    labels = [f"{r['M']}x{r['in']}x{r['out']}" for r in results]
    xs = range(len(results))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([x - 0.2 for x in xs], [r["fwd_speedup"] for r in results], 0.4, label="forward")
    ax.bar([x + 0.2 for x in xs], [r["fwd_bwd_speedup"] for r in results], 0.4, label="forward + backward")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), labels)
    ax.set_ylabel("speed-up over bf16 nn.Linear")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
