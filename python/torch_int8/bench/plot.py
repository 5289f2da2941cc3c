"""The charts of the benchmarks' --plot files (PNG, through matplotlib when it is installed)."""

from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence, Tuple


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


def plot_float_int8_curves(path: str, curves: Dict[str, Sequence[float]], *, xlabel: str, ylabel: str, title: str,
                           floor: Optional[Tuple[float, str]] = None) -> bool:
    """Line chart of training curves keyed "float/<seed>" and "int8/<seed>" (one color per variant),
    written to ``path`` as PNG; ``floor``: a dashed reference line (y, legend label). Returns False
    if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: skipping the plot {path} (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, color="C0" if key.startswith("float") else "C1", alpha=0.8,
                label=key)
    if floor is not None:
        ax.axhline(floor[0], color="k", linestyle="--", linewidth=1, label=floor[1])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
