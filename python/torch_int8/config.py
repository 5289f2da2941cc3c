"""Int8Config: which matrix products of a layer run in INT8, and how operands are quantized."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Int8Config:
    """Per-GEMM choices for torch_int8.nn layers.

    forward / grad_input / grad_weight: run that product in INT8 (True) or in
    the input dtype (False). granularity: "channel" (per row / per channel
    scales) or "tensor" (one scale per operand). grad_rounding: "nearest" or
    "stochastic" (unbiased) for the quantized output gradient.
    """

    forward: bool = True
    grad_input: bool = True
    grad_weight: bool = True
    granularity: str = "channel"
    grad_rounding: str = "nearest"

    def __post_init__(self):
        if self.granularity not in ("channel", "tensor"):
            raise ValueError(f"Int8Config: granularity must be 'channel' or 'tensor', got {self.granularity!r}")
        if self.grad_rounding not in ("nearest", "stochastic"):
            raise ValueError(f"Int8Config: grad_rounding must be 'nearest' or 'stochastic', got {self.grad_rounding!r}")

    def dim(self, channel_dim: int):
        """The quantize() dim for an operand whose channels lie along channel_dim."""
        return channel_dim if self.granularity == "channel" else None
