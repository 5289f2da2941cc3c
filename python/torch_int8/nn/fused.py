"""Fused INT8 steps of a CNN: Conv2d -> BatchNorm2d (-> + residual) (-> ReLU) as one call, and the
int8 activations that travel between such steps.

A fused step runs the convolution in INT8 (torch_int8.nn.Conv2d's products), then BatchNorm (batch
statistics in training, running statistics in eval, the running statistics updated as torch.nn's),
the residual add and the ReLU. Its output is either the float activation, or, where every consumer
is another fused step's convolution, the activation quantized per image (Int8Activation): the
producer quantizes it and the consumer reads the int8 data as its input operand, so no pass reads a
float activation just to quantize it and none is written. The consumer's weight gradient reads that
same int8 data, which it saves in place of a float input.

convert (torch_int8.fuse) finds the chains in a model's graph and calls conv_bn_act in their place,
on the model's own modules: the parameters, buffers and state_dict keys stay the model's.

Backward: the ReLU's mask is recomputed from the convolution's output y and BatchNorm's affine map
(the int8 output keeps no float activation), then BatchNorm's backward: in training one op,
int8::batch_norm_relu_backward (fused CUDA kernels on NHWC batches that write no masked gradient),
else ATen's kernels; then the convolution's (torch_int8.nn.Conv2d's INT8 dgrad and wgrad).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ..functional import QTensor
from . import conv_backward as backward
from .conv import Conv2d, _geometry, _Int8Conv2dFunction
from ._common import autocast_off, kernel_dtype, kernel_float, output_dtype, runs_as_torch_nn


class Int8Activation(NamedTuple):
    """An activation handed from one fused step to the next as int8 per image.

    carrier: autograd's stand-in for the float activation (its shape, dtype and device; zero strides,
    no data): the gradient of the activation flows back through it. data: int8, the activation
    quantized per image, in its memory format. scale: float32 [N], one per image."""

    carrier: torch.Tensor
    data: torch.Tensor
    scale: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return QTensor(self.data, self.scale, None, 0).dequantize(self.carrier.dtype)


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, 1, 1)


def _affine(weight, bias, mean, invstd):
    """BatchNorm as z = a * y + b per channel (float32 [C]): a = gamma * invstd, b = beta - mean * a."""
    a = invstd.float() if weight is None else weight.float() * invstd.float()
    b = -mean.float() * a
    return a, b if bias is None else b + bias.float()


def _carrier(z: torch.Tensor) -> torch.Tensor:
    """Int8Activation.carrier for an activation shaped like z (one element of memory)."""
    return torch.empty((), dtype=z.dtype, device=z.device).expand(z.shape)


class _BatchNormActFunction(torch.autograd.Function):
    """z = relu(batch_norm(y) + residual), float or (emit_int8) quantized per image."""

    @staticmethod
    def forward(ctx, y, weight, bias, residual, running_mean, running_var, training: bool, momentum: float,
                eps: float, relu: bool, emit_int8: bool):
        ctx.relu, ctx.eps, ctx.has_residual, ctx.training = relu, eps, residual is not None, training
        # eval: the backward's statistics are the running ones (copied: they are buffers)
        running = None if training else (running_mean.clone(), running_var.clone())
        if emit_int8 and relu:  # one op; on the GPU fused kernels that write no float z
            data, scale, mean, invstd = torch.ops.int8.batch_norm_relu_quantize(
                y, weight, bias, running_mean, running_var, training, momentum, eps)
            ctx.save_for_backward(y, weight, bias, *((mean, invstd) if training else running), None)
            ctx.impl, ctx.reserve = 0, y.new_empty(0, dtype=torch.uint8)  # ATen's native backward
            ctx.mark_non_differentiable(data, scale)
            return _carrier(y), data, scale
        # torch.nn's dispatch (cuDNN where it takes the call): the same z and statistics as BatchNorm2d
        z, mean, invstd, ctx.reserve, impl = torch._batch_norm_impl_index(
            y, weight, bias, running_mean, running_var, training, momentum, eps, torch.backends.cudnn.enabled)
        ctx.impl = impl if training else 0  # eval: autograd's backward of any backend is ATen's native one
        if residual is not None:
            z = z.add_(residual)
        if relu:
            z = z.relu_()
        # the ReLU's mask comes from z (as torch.relu's backward reads its result)
        ctx.save_for_backward(y, weight, bias, *((mean, invstd) if training else running),
                              z if relu and not emit_int8 else None)
        if emit_int8:
            qz = backward.quantize_images(z, "nearest")
            ctx.mark_non_differentiable(qz.data, qz.scale)
            return _carrier(z), qz.data, qz.scale
        return z

    @staticmethod
    def backward(ctx, grad_z, *_int8_grads):
        # training: the batch's mean and 1 / std; eval: the running mean and variance
        y, weight, bias, mean, spread, z = ctx.saved_tensors
        if ctx.relu and z is None and ctx.training and weight is not None and bias is not None:
            # int8 output: one op recomputes the ReLU's mask from y (fused CUDA kernels on NHWC batches)
            grad_y, grad_w, grad_b = torch.ops.int8.batch_norm_relu_backward(grad_z, y, weight, bias, mean, spread)
            return grad_y, grad_w, grad_b, None, None, None, None, None, None, None, None
        g = grad_z
        if ctx.relu:
            if z is None:  # int8 output: the mask is where the affine map of y is positive
                invstd = spread if ctx.training else (spread.float() + ctx.eps).rsqrt()
                a, b = _affine(weight, bias, mean, invstd)
                z = torch.addcmul(_channel(b), y.float(), _channel(a))
            # the recomputed z is float32, grad_z autocast's dtype: the mask in grad_z's
            g = torch.ops.aten.threshold_backward(grad_z, z.to(grad_z.dtype), 0)
        running = (None, None, mean, spread) if ctx.training else (mean, spread, None, None)
        grad_y, grad_w, grad_b = torch.ops.aten._batch_norm_impl_index_backward(
            ctx.impl, y, g, weight, *running, ctx.training, ctx.eps,
            [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
             bias is not None and ctx.needs_input_grad[2]], ctx.reserve)
        grad_residual = g if ctx.has_residual and ctx.needs_input_grad[3] else None
        return grad_y, grad_w, grad_b, grad_residual, None, None, None, None, None, None, None


def _batch_norm_mode(bn: torch.nn.BatchNorm2d):
    """(training, momentum, running_mean, running_var) as torch.nn.BatchNorm2d.forward decides them
    (and counts the batch, as it does)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    training = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_stats = not bn.training or bn.track_running_stats
    return (training, factor, bn.running_mean if keep_stats else None, bn.running_var if keep_stats else None)


def _as_float(x: Union[torch.Tensor, Int8Activation]) -> torch.Tensor:
    return x.dequantize() if isinstance(x, Int8Activation) else x


def _by_modules(x, conv, bn, relu: bool, residual):
    """The chain as its modules compute it (empty batches, the meta device)."""
    z = bn(conv(_as_float(x)))
    if residual is not None:
        z = z + residual
    return torch.relu(z) if relu else z


def conv_bn_act(x: Union[torch.Tensor, Int8Activation], conv: Conv2d, bn: torch.nn.BatchNorm2d,
                relu: bool = False, residual: Optional[torch.Tensor] = None,
                emit_int8: bool = False) -> Union[torch.Tensor, Int8Activation]:
    """relu(bn(conv(x)) + residual) with conv's products in INT8 (the brackets where relu / residual
    are off). x: a float [N, C, H, W] tensor or the Int8Activation of a previous step. emit_int8:
    return the result quantized per image (Int8Activation) for the fused steps that consume it
    (then residual must be None); else the float tensor, in the dtype torch.nn would return (autocast's)."""
    if emit_int8 and residual is not None:
        raise ValueError("conv_bn_act: emit_int8 needs residual=None (a sum with a residual leaves as float)")
    carrier = x.carrier if isinstance(x, Int8Activation) else x
    if runs_as_torch_nn(carrier) or carrier.device.type == "meta" or carrier.dim() != 4:
        z = _by_modules(x, conv, bn, relu, residual)
        if not emit_int8:
            return z
        if z.numel() == 0:
            return Int8Activation(z, z.detach().to(torch.int8), z.new_empty(z.shape[0], dtype=torch.float32))
        qz = backward.quantize_images(z.detach(), "nearest")
        return Int8Activation(z, qz.data, qz.scale)
    qx = QTensor(x.data, x.scale, None, 0) if isinstance(x, Int8Activation) else None
    out_dtype = kernel_dtype(output_dtype(carrier))
    training, momentum, running_mean, running_var = _batch_norm_mode(bn)
    with autocast_off(carrier):
        y = _Int8Conv2dFunction.apply(kernel_float(carrier), kernel_float(conv.weight), kernel_float(conv.bias),
                                      _geometry(conv), conv.config, out_dtype, qx)
        out = _BatchNormActFunction.apply(y, bn.weight, bn.bias, residual, running_mean, running_var, training,
                                          momentum, bn.eps, relu, emit_int8)
    return Int8Activation(*out) if emit_int8 else out
