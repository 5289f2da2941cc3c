"""INT8 layers: drop-in replacements for torch.nn modules."""
from .linear import Linear, QuantizedLinear

__all__ = ["Linear", "QuantizedLinear"]
