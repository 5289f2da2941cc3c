"""torch_int8: INT8 GEMM and quantization for PyTorch on NVIDIA GPUs (and the CPU).

The native ops are torch.ops.int8.*; this package wraps them with a Python API.
"""
from pathlib import Path

import torch

# The op library registers torch.ops.int8.* when loaded. Loaded explicitly:
# _C need not link it (a linker dropping unused libraries would skip it).
torch.ops.load_library(str(Path(__file__).resolve().parent / "lib" / "libtorch_int8_ops.so"))

from . import _C  # noqa: E402
from .functional import (QTensor, column_amax, dequantize, gemm, quantize, quantize_columns_t, quantize_rows,
                         quantize_rows_with_sums, requantize, scaled_gemm, scaled_gemm_row_amax)
from .backends import use_backend
from .config import Int8Config
from .conv import col2im, conv2d, conv2d_dgrad, conv2d_wgrad, im2col, scaled_conv2d
from .convert import convert
from . import nn
from . import niti
from .ptq import PTQConfig, QuantizationReport, quantize_model
from .export import export_model, load_exported

__version__ = _C.build_info()["version"]
# For C++ projects: find_package(torch_int8) with this on CMAKE_PREFIX_PATH.
cmake_prefix_path = str(Path(__file__).resolve().parent / "lib" / "cmake")

__all__ = ["QTensor", "gemm", "quantize", "quantize_rows", "quantize_columns_t", "quantize_rows_with_sums",
           "column_amax", "dequantize", "scaled_gemm", "scaled_gemm_row_amax",
           "requantize", "Int8Config", "convert", "im2col", "col2im", "conv2d", "conv2d_dgrad", "conv2d_wgrad",
           "scaled_conv2d", "nn", "use_backend", "cmake_prefix_path", "quantize_model", "PTQConfig",
           "QuantizationReport", "export_model", "load_exported"]
