"""INT8 layers: drop-in replacements for torch.nn modules."""
from .conv import Conv2d, QuantizedConv2d, fold_batchnorm
from .linear import Linear, QuantizedLinear

__all__ = ["Linear", "QuantizedLinear", "Conv2d", "QuantizedConv2d", "fold_batchnorm"]
