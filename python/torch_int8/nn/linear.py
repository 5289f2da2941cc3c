"""torch_int8.nn.Linear (INT8 training) and QuantizedLinear (INT8 inference).

Linear keeps nn.Linear's parameters and state_dict; its three matrix products
each run as one INT8 GEMM with the rescale fused in the epilogue:
  forward      Y  = X W^T + b   X per row (token), W per output channel
  grad_input   dX = dY W        dY per row, W per input channel
  grad_weight  dW = dY^T X      dY per output feature, X per input feature
(every operand is quantized along the dimension that is not reduced).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..config import Int8Config
from ..functional import QTensor, quantize, scaled_gemm


def _transposed(q: QTensor) -> QTensor:
    """The transpose of a 2-D QTensor (a view: no copy of the data)."""
    dim = None if q.dim is None else 1 - q.dim
    return QTensor(q.data.t(), q.scale, q.zero_point, dim)


def _int8_matmul(a: torch.Tensor, a_dim, b: torch.Tensor, b_dim, out_dtype, rounding="nearest"):
    """a [M, K] @ b [K, N] with a quantized along a_dim (0 or None) and b along b_dim (1 or None)."""
    return scaled_gemm(quantize(a, a_dim, rounding=rounding), quantize(b, b_dim), out_dtype=out_dtype)


class _Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, config: Int8Config, out_dtype):
        ctx.save_for_backward(x2, weight)
        ctx.config, ctx.has_bias = config, bias is not None
        if not config.forward:
            return F.linear(x2.to(out_dtype), weight.to(out_dtype), None if bias is None else bias.to(out_dtype))
        qx = quantize(x2, config.dim(0))
        qw = _transposed(quantize(weight, config.dim(0)))
        return scaled_gemm(qx, qw, bias=bias, out_dtype=out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight = ctx.saved_tensors
        config = ctx.config
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if config.grad_input:
                grad_x = _int8_matmul(grad_out, config.dim(0), weight, config.dim(1), x2.dtype,
                                      rounding=config.grad_rounding)
            else:
                grad_x = (grad_out @ weight.to(grad_out.dtype)).to(x2.dtype)
        if ctx.needs_input_grad[1]:
            if config.grad_weight:
                # dY^T is [out, M]: quantized per output feature = per column of dY.
                q_gt = _transposed(quantize(grad_out, config.dim(1), rounding=config.grad_rounding))
                grad_w = scaled_gemm(q_gt, quantize(x2, config.dim(1)), out_dtype=weight.dtype)
            else:
                grad_w = (grad_out.t() @ x2.to(grad_out.dtype)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


class Linear(torch.nn.Linear):
    """Drop-in for torch.nn.Linear whose forward and backward GEMMs run in INT8."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 config: Optional[Int8Config] = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.config = config or Int8Config()

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, config: Optional[Int8Config] = None) -> "Linear":
        """A Linear sharing linear's parameters (no copy)."""
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.config = config or Int8Config()
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        out_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        with torch.autocast(device_type, enabled=False):
            x2 = x.reshape(-1, self.in_features)
            y = _Int8LinearFunction.apply(x2, self.weight, self.bias, self.config, out_dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, config={self.config}"


class QuantizedLinear(torch.nn.Module):
    """INT8 inference: int8 weights with per-output-channel scales (half the bytes
    of bf16), activations quantized per token at run time, or with a static scale
    from calibration; bias fused; optional ReLU; optional int8 output (out_scale)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 activation_scale: Optional[float] = None, relu: bool = False,
                 out_scale: Optional[float] = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.activation_scale, self.relu, self.out_scale = activation_scale, relu, out_scale

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, **kwargs) -> "QuantizedLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, **kwargs)
        qw = quantize(linear.weight.detach(), 0)
        q.weight_int8.copy_(qw.data)
        q.weight_scale.copy_(qw.scale)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach().float())
        return q

    def _quantize_input(self, x2: torch.Tensor) -> QTensor:
        if self.activation_scale is None:
            return quantize(x2, 0)
        s = float(self.activation_scale)
        data = torch.clamp(torch.round(x2.float() / s), -127, 127).to(torch.int8)
        return QTensor(data, torch.tensor(s, device=x2.device), None, None)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        qw = QTensor(self.weight_int8.t(), self.weight_scale, None, 1)
        if self.out_scale is not None:
            y = scaled_gemm(self._quantize_input(x2), qw, bias=self.bias, out_dtype=torch.int8,
                            out_scale=self.out_scale)
            y = y.clamp_min(0) if self.relu else y
        else:
            y = scaled_gemm(self._quantize_input(x2), qw, bias=self.bias, out_dtype=x.dtype)
            y = torch.relu(y) if self.relu else y
        return y.reshape(*x.shape[:-1], self.out_features)
