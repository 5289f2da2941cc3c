"""torch_int8.nn.Conv2d (INT8 training) and QuantizedConv2d (INT8 inference).

Conv2d keeps nn.Conv2d's parameters and state_dict; its three products run in INT8 with every
operand quantized along a dimension that the product does not reduce, so the scales factor out:
the forward Y = conv(X, W) + b with X per image and W per output channel (scales fused in the
epilogue: one dynamic_conv2d call); the backward's paths live in conv_backward.py. A strided 1x1
layer (ResNet's downsampling shortcut) quantizes only the pixels it reads, every stride-th, and its
forward and wgrad are the stride-1 1x1 convolution over them.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from ..config import Int8Config
from ..conv import dynamic_conv2d, scaled_conv2d, scaled_conv2d_wgrad
from ..functional import QTensor, quantize
from . import conv_backward as backward
from ._common import (autocast_off, kernel_dtype, kernel_float, load_int8_weight, output_dtype, quantize_activation,
                      register_int8_weight, runs_as_torch_nn, sharing_parameters, without_history)


def _geometry(module: torch.nn.Conv2d):
    """(stride, padding, dilation, groups) with padding as a pair of ints."""
    return module.stride, _padding_pair(module), module.dilation, module.groups


def _padding_pair(module: torch.nn.Conv2d):
    if module.padding_mode != "zeros":
        raise ValueError(f"torch_int8.nn.Conv2d: padding_mode must be 'zeros', got {module.padding_mode!r}")
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in total):
            raise ValueError("torch_int8.nn.Conv2d: padding='same' needs an even dilation * (kernel_size - 1) "
                             f"(symmetric padding), got kernel_size={module.kernel_size}, dilation={module.dilation}")
        return tuple(t // 2 for t in total)
    return tuple(module.padding)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor, else contiguous: what cuDNN's convolutions return for x."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


class _Int8Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geometry, config: Int8Config, out_dtype, qx: Optional[QTensor] = None):
        """qx: x already quantized per image (the int8 output of a fused producer, torch_int8.nn.fused);
        x is then only its autograd stand-in (shape and dtype, no data read)."""
        ctx.geometry, ctx.config, ctx.has_bias = geometry, config, bias is not None
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        ctx.x_format = _memory_format(x if qx is None else qx.data)
        ctx.wgrad_geometry = geometry  # of the x saved for the weight gradient
        stride, padding, dilation, groups = geometry
        quantized_input = qx is not None
        if quantized_input and not config.forward:
            x, qx, quantized_input = qx.dequantize(x.dtype), None, False
        if not config.forward:
            ctx.implicit_wgrad = ctx.quantized_input = False
            ctx.save_for_backward(x, weight)
            return F.conv2d(x.to(out_dtype), weight.to(out_dtype), None if bias is None else bias.to(out_dtype),
                            stride, padding, dilation, groups)
        # A strided 1x1 layer reads every stride-th pixel only: those are quantized (not the rest of x),
        # and both the forward and the weight gradient run as the 1x1 stride-1 convolution over them.
        if backward.is_strided_pointwise(weight.shape, geometry):
            if qx is None:
                x = x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=ctx.x_format)
            else:
                qx = QTensor(qx.data[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=ctx.x_format),
                             qx.scale, None, 0)
            stride = (1, 1)
            ctx.wgrad_geometry = (stride, padding, dilation, groups)
        per_channel = config.granularity == "channel"
        if qx is None:  # per image x per output channel ("channel"), y in x's memory format: one op call
            y, qx = dynamic_conv2d(x, weight, bias, stride, padding, dilation, groups, per_channel, out_dtype)
        else:
            qw = quantize(weight, 0 if per_channel else None)
            y = scaled_conv2d(qx, qw, bias, stride, padding, dilation, groups, out_dtype=out_dtype)
            y = y.contiguous(memory_format=ctx.x_format)  # as dynamic_conv2d returns it
        ctx.implicit_wgrad = config.grad_weight and backward.implicit_wgrad(qx.data, weight, groups,
                                                                            y.shape[2] * y.shape[3])
        # The implicit-GEMM wgrad reads this quantized x: saved instead of x (half the bytes of bf16),
        # which no other backward product then needs. A quantized input is all there is of x.
        ctx.quantized_input = quantized_input
        ctx.save_for_backward(*((None, weight, qx.data, qx.scale) if ctx.implicit_wgrad or quantized_input
                                else (x, weight)))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *saved_qx = ctx.saved_tensors
        config, geometry = ctx.config, ctx.geometry
        # A quantized input (ctx.quantized_input): the weight gradient reads its int8 data per image,
        # as the implicit path does; the float paths read its values.
        if x is None and not config.grad_weight:
            x = QTensor(*saved_qx, None, 0).dequantize(ctx.x_dtype)
        stride, padding, dilation, groups = geometry
        int8_dgrad = ctx.needs_input_grad[0] and config.grad_input
        implicit_wgrad = ctx.needs_input_grad[1] and ctx.implicit_wgrad
        # Images of more than 131071 output pixels, whose int32 wgrad could overflow: the per-image
        # operands of the implicit path, through scaled_conv2d_wgrad (which adds int32 sums of tiles
        # of the image in int64 where its kernel does not run).
        per_image_wgrad = ctx.needs_input_grad[1] and config.grad_weight and (
            implicit_wgrad or ctx.quantized_input or not backward.wgrad_in_int32(grad_out))
        channel_wgrad = ctx.needs_input_grad[1] and config.grad_weight and not per_image_wgrad
        bgrad = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = grad_amax = grad_sum = qg = None
        if int8_dgrad or per_image_wgrad:  # with dY's quantization come the bias gradient (and channel maxima)
            # The channel maxima serve the GPU's per-channel wgrad; the CPU's finds them as it quantizes.
            channel_amax = channel_wgrad and grad_out.is_cuda
            qg, grad_amax, grad_sum = backward.quantize_grad_out(grad_out, config, channel_amax, bgrad)
        if int8_dgrad:
            grad_x = backward.grad_input(qg, weight, ctx.x_shape, geometry, config, ctx.x_dtype)
            grad_x = grad_x.contiguous(memory_format=ctx.x_format)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(grad_out.dtype), grad_out, stride, padding,
                                                dilation, groups).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:  # x: the pixels the forward read (ctx.wgrad_geometry's input)
            if per_image_wgrad:
                qx = QTensor(*saved_qx, None, 0 if saved_qx[1].dim() else None) if x is None \
                    else backward.quantize_per_image(x, config)
                grad_w = scaled_conv2d_wgrad(qg, qx, weight.shape[2:], *ctx.wgrad_geometry).to(weight.dtype)
            elif config.grad_weight:
                grad_w = backward.grad_weight(grad_out, x, weight, ctx.wgrad_geometry, config, grad_amax)
            else:
                grad_w = torch.nn.grad.conv2d_weight(x.to(grad_out.dtype), weight.shape, grad_out,
                                                     *ctx.wgrad_geometry).to(weight.dtype)
        if bgrad:
            grad_b = (grad_out.sum((0, 2, 3)) if grad_sum is None else grad_sum).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


class Conv2d(torch.nn.Conv2d):
    """Drop-in for torch.nn.Conv2d whose forward and backward products run in INT8.

    Same constructor, parameters and state_dict; NCHW or channels_last input (the output keeps the
    input's memory format). padding_mode must be 'zeros'.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, config: Optional[Int8Config] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        _padding_pair(self)  # refuses what the INT8 path cannot do, at construction
        self.config = config or Int8Config()

    @staticmethod
    def supports(conv: torch.nn.Conv2d) -> bool:
        """Whether conv's padding can run on the INT8 path (from_float raises ValueError otherwise)."""
        try:
            _padding_pair(conv)
        except ValueError:
            return False
        return True

    @classmethod
    def from_float(cls, conv: torch.nn.Conv2d, config: Optional[Int8Config] = None) -> "Conv2d":
        """A Conv2d sharing conv's parameters (no copy)."""
        _padding_pair(conv)
        return sharing_parameters(cls, conv, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                              "dilation", "transposed", "output_padding", "groups", "padding_mode",
                                              "_reversed_padding_repeated_twice"), config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # one unbatched image [C, H, W], as nn.Conv2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if runs_as_torch_nn(x):
            return super().forward(x)
        out_dtype = output_dtype(x)
        with autocast_off(x):
            y = _Int8Conv2dFunction.apply(kernel_float(x), kernel_float(self.weight), kernel_float(self.bias),
                                          _geometry(self), self.config, kernel_dtype(out_dtype))
        return y.to(out_dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, config={self.config}"


def fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.nn.Conv2d:
    """A float Conv2d computing bn(conv(x)) in inference mode (running statistics):
    W' = W * g, b' = (b - mean) * g + beta with g = gamma / sqrt(var + eps) per output channel."""
    with torch.no_grad():
        g = bn.running_var.add(bn.eps).rsqrt()
        if bn.weight is not None:
            g = g * bn.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation, conv.groups, True, conv.padding_mode, conv.weight.device,
                                conv.weight.dtype)
        fused.weight.copy_(conv.weight * g.reshape(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * g + (bn.bias if bn.bias is not None else 0))
    return fused


class QuantizedConv2d(torch.nn.Module):
    """INT8 inference convolution: int8 weights with per-output-channel scales, bias fused in the
    epilogue, optional ReLU, float or int8 output.

    Input: a float tensor (quantized per tensor at run time, or with the static activation_scale
    from calibration), or a QTensor, e.g. the int8 output of the previous QuantizedConv2d. With
    out_scale the output is a QTensor (int8, per tensor): with relu its zero point is -128, so the
    int8 saturation of the epilogue is the ReLU (free) and the range [0, 255 * out_scale] uses all
    256 levels; without relu it is symmetric. Float outputs (out_dtype, default: the input's float
    dtype, float32 for QTensor input) apply the ReLU in the epilogue.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, device=None, activation_scale: Optional[float] = None,
                 relu: bool = False, out_scale: Optional[float] = None, out_dtype: Optional[torch.dtype] = None):
        super().__init__()
        ref = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              device="meta")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, ref.kernel_size
        self.stride, self.padding, self.dilation, self.groups = ref.stride, _padding_pair(ref), ref.dilation, groups
        register_int8_weight(self, ref.weight.shape, bias, device)
        self.activation_scale, self.relu, self.out_scale, self.out_dtype = activation_scale, relu, out_scale, out_dtype

    @classmethod
    def from_float(cls, conv: torch.nn.Conv2d, bn: Optional[torch.nn.BatchNorm2d] = None,
                   **kwargs) -> "QuantizedConv2d":
        """Quantizes conv's weight per output channel; bn (inference statistics) is folded in first."""
        if bn is not None:
            conv = fold_batchnorm(conv, bn)
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, _padding_pair(conv),
                conv.dilation, conv.groups, conv.bias is not None, conv.weight.device, **kwargs)
        load_int8_weight(q, conv.weight, conv.bias)
        return q

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, activation_scale={self.activation_scale}, relu={self.relu}, "
                f"out_scale={self.out_scale}, out_dtype={self.out_dtype}")

    def _quantize_input(self, x: torch.Tensor) -> QTensor:
        return quantize_activation(x, None, self.activation_scale)  # per tensor at run time

    def forward(self, x: Union[torch.Tensor, QTensor]) -> Union[torch.Tensor, QTensor]:
        x = without_history(x)
        qx = x if isinstance(x, QTensor) else self._quantize_input(x)
        qw = QTensor(self.weight_int8, self.weight_scale, None, 0)
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        if self.out_scale is not None:
            zero_point = -128 if self.relu else 0
            y = scaled_conv2d(qx, qw, self.bias, *geometry, out_dtype=torch.int8, out_scale=self.out_scale,
                              out_zero_point=zero_point)
            # torch.full fills on the device; torch.tensor would copy from the host and sync.
            zp = torch.full((), zero_point, dtype=torch.int32, device=y.device) if self.relu else None
            return QTensor(y, torch.full((), float(self.out_scale), dtype=torch.float32, device=y.device), zp, None)
        out_dtype = self.out_dtype or (torch.float32 if isinstance(x, QTensor) else x.dtype)
        return scaled_conv2d(qx, qw, self.bias, *geometry, out_dtype=out_dtype, relu=self.relu)
