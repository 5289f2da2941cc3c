"""export_model(): a quantize_model result compiled into a package that C++ programs run.

    torch_int8.export_model(qmodel, example_input, "model.pt2")       # Python, once
    torch::inductor::AOTIModelPackageLoader loader("model.pt2");       // C++, torch_int8::ops linked
    std::vector<at::Tensor> out = loader.run({x});

The route is torch.export + AOTInductor. torch.export traces the QuantizedConv2d / QuantizedLinear
layers through their torch.ops.int8.* calls (the ops' Meta kernels give it the shapes; the QTensors
passed between layers dissolve into their tensors), and AOTInductor compiles the graph into a shared
library inside a .pt2 package: the int8 ops stay calls into torch_int8's op library, run by the
package's proxy executor, so a C++ process needs that library loaded and nothing from Python.
TorchScript (torch.jit.trace) carries the custom ops too and exports in a fraction of a second, but
torch 2.13 deprecates it (a DeprecationWarning on every trace); AOTInductor is PyTorch's supported
path for C++ inference, at the price of a C++ compile at export time (20-40 s on 2 cores).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch

# The batch dimension of the exported program: any size from 1 to this.
MAX_BATCH = 1 << 16

# The oldest torch whose AOTInductor runs the int8 ops right. torch 2.11's proxy executor hands
# them wrong arguments (scaled_conv2d saw out_dtype Short, then tensors without storage) and, on
# a GPU machine, crashed the process; the round trip is exact on 2.12.1, 2.13.0 and 2.14.1.
MIN_TORCH = (2, 12)


def torch_runs_exports(version: Optional[str] = None) -> bool:
    """Whether torch `version` (e.g. "2.14.1+cu130"; default: the running torch's) is MIN_TORCH or later."""
    version = torch.__version__ if version is None else version
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2]) >= MIN_TORCH


def check_torch_version(version: Optional[str] = None) -> None:
    """Raises RuntimeError where torch `version` (default: the running torch's) is older than MIN_TORCH."""
    if not torch_runs_exports(version):
        version = torch.__version__ if version is None else version
        need = ".".join(map(str, MIN_TORCH))
        raise RuntimeError(f"torch_int8.export_model / load_exported need torch >= {need} (found {version}): "
                           "older AOTInductor runtimes pass the int8 ops wrong arguments")


def export_model(qmodel: torch.nn.Module, example_input: torch.Tensor, path: Union[str, Path],
                 max_batch: Optional[int] = MAX_BATCH) -> Path:
    """Compiles qmodel (e.g. a quantize_model result, in eval mode) for inputs shaped like
    example_input, with any batch size up to max_batch (None: example_input's batch only), into an
    AOTInductor package at path (a .pt2 file, written over). The package runs on example_input's
    device. Returns the path. Needs torch >= MIN_TORCH."""
    check_torch_version()
    dynamic_shapes = None if max_batch is None else ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    if max_batch is not None and example_input.shape[0] == 1:
        example_input = torch.cat([example_input] * 2)  # torch.export makes a size-1 dimension a constant
    with torch.no_grad():  # inference: no autograd state recorded around the layers
        program = torch.export.export(qmodel, (example_input,), dynamic_shapes=dynamic_shapes)
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def load_exported(path: Union[str, Path]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package export_model wrote, as a callable (input -> output), run by the same compiled
    library that C++'s AOTIModelPackageLoader runs. Needs torch >= MIN_TORCH."""
    check_torch_version()
    return torch._inductor.aoti_load_package(str(path))
