"""The report every benchmark writes: a first line and JSON meta data naming the GPU, the software,
the date and the commit measured; the metrics and the number format of the tables; the --json and
--plot files and the exit status."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import torch

import torch_int8

from .timer import Device

# Dense (non-sparse) INT8 tensor-core peak of one NVIDIA H200 SXM, from the NVIDIA H200 datasheet
# ("INT8 Tensor Core: 3,958 TOPS" is quoted *with* 2:4 sparsity; dense is half of that).
PEAK_INT8_DENSE_TOPS = 1979.0
# For reference: dense BF16 tensor-core peak of the H200 SXM (datasheet: 1,979 TFLOPS with sparsity).
PEAK_BF16_DENSE_TFLOPS = 989.5


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


def device_names(device: Device = "cuda") -> Tuple[str, Optional[str]]:
    """(name, compute capability) of the GPU measured; for the CPU, the processor and None."""
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(0)
        return torch.cuda.get_device_name(0), "sm_%d%d" % (props.major, props.minor)
    return f"CPU {platform.processor() or platform.machine()}", None


def meta(device: Device = "cuda") -> dict:
    gpu, capability = device_names(device)
    return {
        "gpu": gpu,
        "capability": capability,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torch_int8": getattr(torch_int8, "__version__", None),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "peak_int8_dense_tops": PEAK_INT8_DENSE_TOPS,
    }


def print_meta(info: dict) -> None:
    """The first line of every report: the GPU, the software and the commit measured."""
    print(f"# {info['gpu']} ({info['capability']})  torch {info['torch']}  CUDA {info['cuda']}  "
          f"torch_int8 {info['torch_int8']}  commit {info['commit']}  {info['date']}")


def write_json(path: str, payload: dict) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def fmt(x: Optional[float], width: int, prec: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{prec}f}"


def ratio(x: Optional[float], y: Optional[float]) -> Optional[float]:
    if x is None or y is None or y == 0:
        return None
    return x / y


def tops(m: int, n: int, k: int, ms: Optional[float]) -> Optional[float]:
    """2*M*N*K operations in ``ms`` milliseconds -> tera-operations per second."""
    if ms is None or ms <= 0:
        return None
    return 2.0 * m * n * k / (ms * 1e-3) / 1e12


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
