"""Seconds per training iteration of VGG-small-7/8/9: integer-only (NITI on torch_int8) vs the same
network's fp32 and bf16-autocast PyTorch step, with NITI's published Turing times beside them.

    python -m torch_int8.niti.bench --batch 256 --json benchmarks/results/niti_bench.json \
        --plot benchmarks/results/niti_bench.png

32x32x3 random images, 10 classes. The methods of one model are timed in rotating turns (each
repeat starts one method later), each turn ``--iters`` steps between two device synchronizations;
the median turn is reported. On CUDA the integer step is also timed replayed from a CUDA graph
("int8 graph": it has no host synchronization, so it can be captured whole). On the CPU (small
--batch) the same table comes from the reference kernels.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .models import float_vgg_small, vgg_small
from .step import float_train_step, train_step

# NITI (TPDS 2022), seconds per iteration on a Turing GPU, as published.
NITI_TURING_S = {7: 0.094, 8: 0.124, 9: 0.137}


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m torch_int8.niti.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--iters", type=int, default=10, help="steps per timed turn")
    p.add_argument("--repeats", type=int, default=5, help="turns per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    p.add_argument("--depths", type=int, nargs="+", default=[7, 8, 9], choices=[7, 8, 9])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-graph", action="store_true", help="CUDA: skip the CUDA-graph integer column")
    p.add_argument("--json", default="niti_bench.json")
    p.add_argument("--plot", default="niti_bench.png")
    args = p.parse_args(argv)
    for name in ("batch", "iters", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive")
    if args.warmup < 0:
        p.error("--warmup must be non-negative")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU")
    return args


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _graphed(step: Callable[[], object], warmup: int) -> Callable[[], object]:
    """step captured in a CUDA graph after warm-up on a side stream (as torch.cuda.graph asks)."""
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def _methods(depth: int, images, labels, args) -> Dict[str, Callable[[], object]]:
    int_model = vgg_small(depth).to(args.device)
    methods = {"int8": lambda: train_step(int_model, images, labels)}
    if args.device == "cuda" and not args.no_graph:
        graph_model = vgg_small(depth).to(args.device)
        methods["int8_graph"] = _graphed(lambda: train_step(graph_model, images, labels), args.warmup)
    for name, bf16 in (("fp32", False), ("bf16", True)):
        model = float_vgg_small(depth).to(args.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        methods[name] = (lambda m, o, b: lambda: float_train_step(m, o, images, labels, b))(model, opt, bf16)
    return methods


def time_in_turns(methods: Dict[str, Callable[[], object]], args) -> Dict[str, float]:
    """Median seconds per step of each method, timed in rotating turns."""
    for step in methods.values():
        for _ in range(args.warmup):
            step()
    _sync(args.device)
    names = list(methods)
    turns: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.iters):
                methods[name]()
            _sync(args.device)
            turns[name].append((time.perf_counter() - start) / args.iters)
    return {name: statistics.median(t) for name, t in turns.items()}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in ("int8_s", "int8_graph_s", "fp32_s", "bf16_s", "niti_turing_s") if c in result["rows"][0]]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        xs = [j + i * width for j in range(len(result["rows"]))]
        ax.bar(xs, [row[column] for row in result["rows"]], width, label=column[:-2].replace("_", " "))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(result["rows"]))], [r["model"] for r in result["rows"]])
    ax.set_ylabel("seconds per iteration")
    ax.set_title(f"VGG-small training step, batch {result['batch']}, {result['device_name']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32, generator=gen).to(args.device)
    labels = torch.randint(0, 10, (args.batch,), generator=gen).to(args.device)
    rows = []
    for depth in args.depths:
        times = time_in_turns(_methods(depth, images, labels, args), args)
        row = {"model": f"vgg-small-{depth}", **{f"{k}_s": v for k, v in times.items()},
               "niti_turing_s": NITI_TURING_S[depth]}
        row["fp32_over_int8"] = row["fp32_s"] / row["int8_s"]
        row["bf16_over_int8"] = row["bf16_s"] / row["int8_s"]
        rows.append(row)
    result = {"device": args.device, "device_name": _device_name(args.device), "batch": args.batch,
              "iters": args.iters, "repeats": args.repeats, "rows": rows}
    columns = [c for c in rows[0] if c != "model"]
    print(f"{'model':<12}" + "".join(f"{c:>16}" for c in columns))
    for row in rows:
        print(f"{row['model']:<12}" + "".join(f"{row[c]:>16.4f}" for c in columns))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    plot(result, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return result


if __name__ == "__main__":
    main()
