"""Which files of torch_int8 one Conv2d training step (forward + backward) passes through.

    PYTHONPATH=<built package> python scripts/conv_step_files.py [--repo DIR]

Python: the package's modules whose functions run during the step (sys.setprofile). C++: the
int8:: ops the step dispatches (torch.profiler), each mapped to the cpp/ files that register or
implement it (a grep of --repo for the op's name in m.def / m.impl / TORCH_LIBRARY lines). An
architecture measure, for comparing a layout before and after a refactor on the same step.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import torch


def python_files(step) -> list:
    import torch_int8
    root = os.path.dirname(torch_int8.__file__)
    seen = set()

    def record(frame, event, _arg):
        if event == "call" and frame.f_code.co_filename.startswith(root):
            seen.add(os.path.relpath(frame.f_code.co_filename, root))

    sys.setprofile(record)
    try:
        step()
    finally:
        sys.setprofile(None)
    return sorted(seen)


def int8_ops(step) -> list:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return sorted({e.key for e in prof.key_averages() if e.key.startswith("int8::")})


def cpp_files(ops, repo: Path) -> dict:
    """{op: [cpp files naming it in quotes]} for the op names (without the int8:: namespace)."""
    sources = [p for p in (repo / "cpp").rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")]
    texts = {p: p.read_text(errors="replace") for p in sources}
    out = {}
    for op in ops:
        name = op.split("::", 1)[1]
        pattern = re.compile(r'"' + re.escape(name) + r'[(".]')
        out[op] = sorted(str(p.relative_to(repo)) for p, t in texts.items() if pattern.search(t))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    args = ap.parse_args()
    import torch_int8

    torch.manual_seed(0)
    layer = torch_int8.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()

    def step():
        layer(x).sum().backward()

    step()  # first call: imports, caches
    py = python_files(step)
    ops = int8_ops(step)
    cpp = cpp_files(ops, args.repo)
    cpp_all = sorted({f for files in cpp.values() for f in files})
    print(f"python modules ({len(py)}): {', '.join(py)}")
    print(f"int8 ops ({len(ops)}): {', '.join(ops)}")
    for op, files in cpp.items():
        print(f"  {op}: {', '.join(files)}")
    print(f"cpp files naming those ops ({len(cpp_all)}): {', '.join(cpp_all)}")
    print(f"total files: {len(py) + len(cpp_all)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
