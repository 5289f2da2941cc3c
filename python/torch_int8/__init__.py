"""torch_int8: INT8 GEMM and quantization for PyTorch on NVIDIA GPUs (and the CPU).

The native ops are torch.ops.int8.*; this package wraps them with a Python API.
"""
from pathlib import Path

import torch

# The op library registers torch.ops.int8.* when loaded. Loaded explicitly:
# _C need not link it (a linker dropping unused libraries would skip it).
torch.ops.load_library(str(Path(__file__).resolve().parent / "lib" / "libtorch_int8_ops.so"))

from . import _C  # noqa: E402
from .functional import QTensor, dequantize, gemm, quantize, requantize, scaled_gemm
from .config import Int8Config
from .convert import convert
from . import nn

__version__ = _C.build_info()["version"]
# For C++ projects: find_package(torch_int8) with this on CMAKE_PREFIX_PATH.
cmake_prefix_path = str(Path(__file__).resolve().parent / "lib" / "cmake")

__all__ = ["QTensor", "gemm", "quantize", "dequantize", "scaled_gemm", "requantize", "Int8Config", "convert",
           "nn", "cmake_prefix_path"]
