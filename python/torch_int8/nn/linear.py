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
from ..functional import QTensor, _out_scale_arg, quantize, scaled_gemm
from ._common import (autocast_off, kernel_dtype, kernel_float, load_int8_weight, output_dtype, quantize_activation,
                      register_int8_weight, runs_as_torch_nn, sharing_parameters, without_history)


def _transposed(q: QTensor) -> QTensor:
    """The transpose of a 2-D QTensor (a view: no copy of the data)."""
    dim = None if q.dim is None else 1 - q.dim
    return QTensor(q.data.t(), q.scale, q.zero_point, dim)


def _int8_matmul(a: torch.Tensor, a_dim, b: torch.Tensor, b_dim, out_dtype, rounding="nearest"):
    """a [M, K] @ b [K, N] with a quantized along a_dim (0 or None) and b along b_dim (1 or None)."""
    return scaled_gemm(quantize(a, a_dim, rounding=rounding), quantize(b, b_dim), out_dtype=out_dtype)


class _Int8LinearFunction(torch.autograd.Function):
    """Per-tensor granularity, or a product left in floating point: generic quantize calls."""

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


# The fused path calls the ops themselves: its operands have the layouts and granularities the ops
# take by construction, so the checks and QTensor wrapping of torch_int8.functional (host time on
# every call, ~10 calls a training step) would only repeat what the ops check again.
_ops = torch.ops.int8


def _rows(t: torch.Tensor, col_amax: bool, rounding: str = "nearest", col_sum: bool = False):
    """(int8 data, per-row scales, column maxima, column sums) of t: torch_int8.quantize_rows_with_sums."""
    return _ops.quantize_rows(t, col_amax, rounding, None, col_sum)


def _product(a, a_scale, b_t, b_scale, bias, out_dtype):
    """a [M, K] (per-row scales) times b_t^T, b_t [N, K] (per-row scales): scaled_gemm's epilogue."""
    return _ops.scaled_gemm(a, b_t.t(), a_scale, b_scale, None, bias, out_dtype, 1.0, 0, False)


def _channel_forward(x2, weight, bias, out_dtype, x_col_amax: bool, w_col_amax: bool):
    """X W^T + b per channel; the column maxima of X (for grad_weight) and W (for grad_input) only if asked for."""
    qx, sx, x_amax, _ = _rows(x2, x_col_amax)
    qw, sw, w_amax, _ = _rows(weight, w_col_amax)
    return _product(qx, sx, qw, sw, bias, out_dtype), x_amax, w_amax


class _Int8LinearChannelFunction(torch.autograd.Function):
    """All three products in INT8 with per-channel scales, through the fused quantize kernels.

    The forward's per-row passes over X and W also collect their column maxima,
    so the backward writes the transposed (K-major) operands X^T and W^T in one
    pass each, without reducing X or W again; dY is read once for its per-row
    copy, once for its column maxima and sums (the bias gradient) and once for
    its transposed copy.
    """

    @staticmethod
    def forward(ctx, x2, weight, bias, config: Int8Config, out_dtype):
        wgrad, dgrad = ctx.needs_input_grad[1], ctx.needs_input_grad[0]
        y, x_amax, w_amax = _channel_forward(x2, weight, bias, out_dtype, x_col_amax=wgrad, w_col_amax=dgrad)
        ctx.save_for_backward(x2, weight, x_amax, w_amax)
        ctx.config, ctx.has_bias = config, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight, x_amax, w_amax = ctx.saved_tensors
        dgrad, wgrad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        bgrad = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if dgrad or wgrad:
            rounding = ctx.config.grad_rounding
            # The bias gradient (column sums of dY) comes from the pass that finds dY's column maxima.
            q_dy, s_dy, dy_amax, dy_sum = _rows(grad_out, wgrad, rounding, col_sum=bgrad)
            if dgrad:  # dX = dY W: W^T [in, out] quantized per input channel
                q_wt, s_wt = _ops.quantize_columns_t(weight, w_amax, "nearest", None)
                grad_x = _product(q_dy, s_dy, q_wt, s_wt, None, x2.dtype)
            if wgrad:  # dW = dY^T X: dY^T [out, M] and X^T [in, M], both per feature
                q_dyt, s_dyt = _ops.quantize_columns_t(grad_out, dy_amax, rounding, None)
                q_xt, s_xt = _ops.quantize_columns_t(x2, x_amax, "nearest", None)
                grad_w = _product(q_dyt, s_dyt, q_xt, s_xt, None, weight.dtype)
            if bgrad:
                grad_b = dy_sum.to(weight.dtype)
        elif bgrad:
            grad_b = grad_out.sum(0, dtype=torch.float32).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None


def _linear_function(config: Int8Config):
    """The fused all-INT8 path when every product is INT8 per channel; the generic one otherwise."""
    fused = config.granularity == "channel" and config.forward and config.grad_input and config.grad_weight
    return _Int8LinearChannelFunction if fused else _Int8LinearFunction


class Linear(torch.nn.Linear):
    """Drop-in for torch.nn.Linear whose forward and backward GEMMs run in INT8."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None,
                 config: Optional[Int8Config] = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.config = config or Int8Config()

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, config: Optional[Int8Config] = None) -> "Linear":
        """A Linear sharing linear's parameters (no copy)."""
        return sharing_parameters(cls, linear, ("in_features", "out_features"), config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if runs_as_torch_nn(x):
            return super().forward(x)
        out_dtype = output_dtype(x)
        weight, bias = kernel_float(self.weight), kernel_float(self.bias)
        with autocast_off(x):
            x2 = kernel_float(x.reshape(-1, self.in_features))
            function, dtype = _linear_function(self.config), kernel_dtype(out_dtype)
            if function is _Int8LinearChannelFunction and not torch.is_grad_enabled():
                # No graph is recorded, so no backward needs the column maxima (inside the
                # Function, needs_input_grad still says True for parameters under no_grad).
                y = _channel_forward(x2, weight, bias, dtype, x_col_amax=False, w_col_amax=False)[0]
            else:
                y = function.apply(x2, weight, bias, self.config, dtype)
        y = y.to(out_dtype)
        # Not a view of itself for 2-D x, as nn.Linear's output: FSDP2's pre-backward hook would be
        # lost on an in-place op of a view.
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

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
        register_int8_weight(self, (out_features, in_features), bias, device)
        self.activation_scale, self.relu, self.out_scale = activation_scale, relu, out_scale

    @classmethod
    def from_float(cls, linear: torch.nn.Linear, **kwargs) -> "QuantizedLinear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.device, **kwargs)
        load_int8_weight(q, linear.weight, linear.bias)
        return q

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"activation_scale={self.activation_scale}, relu={self.relu}, out_scale={self.out_scale}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = without_history(x)
        if self.activation_scale is None and self.out_scale is None:  # decode's hot path: one op call
            return _ops.quantized_linear(x, self.weight_int8, self.weight_scale, self.bias, None, 1.0, self.relu)
        out_dtype = x.dtype if self.out_scale is None else torch.int8
        out_scale = _out_scale_arg("QuantizedLinear", out_dtype, self.out_scale)
        if self.activation_scale is None:  # per token at run time, int8 output
            return _ops.quantized_linear(x, self.weight_int8, self.weight_scale, self.bias, out_dtype, out_scale,
                                         self.relu)
        q = quantize_activation(x.reshape(-1, self.in_features), None, self.activation_scale)
        y = _ops.scaled_gemm(q.data, self.weight_int8.t(), q.scale, self.weight_scale, None, self.bias, out_dtype,
                             out_scale, 0, self.relu)
        return y.reshape(*x.shape[:-1], self.out_features)
