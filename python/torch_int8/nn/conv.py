"""torch_int8.nn.Conv2d (INT8 training) and QuantizedConv2d (INT8 inference).

Conv2d keeps nn.Conv2d's parameters and state_dict; its three products run in INT8 with every
operand quantized along a dimension that the product does not reduce, so the scales factor out:
  forward      Y  = conv(X, W) + b    X per image,  W per output channel   (scales fused in the epilogue)
  grad_input   dX = dgrad(dY, W)      dY per image, W per input channel    (exact int32, then scaled)
  grad_weight  dW = wgrad(dY, X)      dY per image, X per image (each image's int32 sum scaled by its
                                     two scales, the images added in float32: scaled_conv2d_wgrad),
                                     or dY per output channel, X per input channel (see below)
("tensor" granularity: one scale per operand). A stride-1 dgrad is the forward convolution of dY
with the rotated, transposed filter (implicit GEMM, scales in its epilogue); a strided one is such a
convolution per phase (every stride-th input pixel: a sub-filter of the same taps), written to its
strided share of dX, where the kernel takes the phases (_phases_pay); else its taps are summed after
their GEMM (col2im), which rescales the int32 sums as it writes them (scaled_conv2d_dgrad).
wgrad reuses the forward's quantized X and dgrad's quantized dY where its implicit-GEMM kernel runs
and is the faster path (CUDA, sm80 / sm90 families, one group, channel counts multiples of 16,
images of at least 28x28 output pixels, or 14x14 for 1x1 filters: _implicit_wgrad), and for images
of more than 131071 output pixels (whose int32 sums could overflow: scaled_conv2d_wgrad adds those of
tiles of the image in int64). Elsewhere it is split into batches of at most 131071 output pixels, its
operands quantized per channel straight into the [C, N, H, W] layout that path reads (im2col + GEMM).
A strided 1x1 layer (ResNet's downsampling shortcut) quantizes only the pixels it reads, every
stride-th, and its forward and wgrad are the stride-1 1x1 convolution over them.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

from .. import _C
from ..config import Int8Config
from ..backends import selected_backend
from ..conv import (conv2d_dgrad, conv2d_wgrad, dynamic_conv2d, scaled_conv2d, scaled_conv2d_dgrad,
                    scaled_conv2d_wgrad)
from ..functional import QTensor, column_amax, quantize, quantize_columns_t, scaled_gemm
from ._common import (autocast_off, kernel_dtype, kernel_float, load_int8_weight, output_dtype, quantize_activation,
                      register_int8_weight, runs_as_torch_nn, sharing_parameters)

_MAX_PIXELS = _C.max_k  # conv2d_wgrad's largest N*P*Q (kernels.h kMaxK)
_EPILOGUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # scaled_conv2d's float outputs


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


def _rotated_per_input_channel(weight: torch.Tensor, groups: int, per_channel: bool):
    """The rotated filter W' [C, K/G, R, S] (_rotated_filter; channels_last memory) quantized per
    input channel c (one row of W', scale [C]: the fused per-row kernel, one pass) or per tensor
    (0-d scale): (data, scale). Rotating the int8 data back (_rotated_filter(data, groups)) gives W
    quantized per input channel."""
    return torch.ops.int8.quantize_rotated_filter(weight, groups, per_channel)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC tensor, else contiguous: what cuDNN's convolutions return for x."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def _scale_along(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """A 0-d or 1-D scale viewed to broadcast along dim of a 4-D tensor."""
    return scale if scale.dim() == 0 else scale.reshape([-1 if d == dim else 1 for d in range(4)])


def _quantize_images(t: torch.Tensor, rounding: str) -> QTensor:
    """quantize(t, 0) (per image) as quantize_rows of t's memory viewed as one row per image
    (any layout, no copy for contiguous or channels_last t): one fused kernel pass on the GPU."""
    return _quantize_images_with_channel_stats(t, rounding, amax=False, sums=False)[0]


def _quantize_images_with_channel_stats(t: torch.Tensor, rounding: str, amax: bool, sums: bool):
    """(quantize(t, 0), max|t| of every channel or None, float32 sum of every channel or None): one
    op, int8::quantize_images (the fused per-row kernel over each image's memory, its column
    statistics reduced per channel). The maxima are exact; the sums are the bias gradient when t
    is dY."""
    data, scale, channel_amax, channel_sum = torch.ops.int8.quantize_images(t, rounding, amax, sums)
    return QTensor(data, scale, None, 0), channel_amax, channel_sum


def _quantize_per_image(t: torch.Tensor, config: Int8Config, rounding: str = "nearest") -> QTensor:
    """t per image (channel granularity) or per tensor: an operand of the per-image wgrad."""
    return _quantize_images(t, rounding) if config.granularity == "channel" else quantize(t, None, rounding=rounding)


def _quantize_grad_out(grad_out: torch.Tensor, config: Int8Config, channel_amax: bool, channel_sum: bool):
    """dY quantized for grad_input (per image, or per tensor), with channel granularity also its channel
    maxima (wgrad's per-channel scales) and sums (the bias gradient) if asked for: (QTensor, amax or
    None, sum or None). The statistics come from the quantize pass itself for images of at most
    24 KB (12288 bf16 values of C*H*W), else from a column-statistics pass of their own (ResNet-sized
    dY), either way without ATen reductions."""
    if config.granularity != "channel":
        return quantize(grad_out, None, rounding=config.grad_rounding), None, None
    return _quantize_images_with_channel_stats(grad_out, config.grad_rounding, channel_amax, channel_sum)


def _rotated_filter(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """W' [C, K/G, R, S] with W'[g*C/G + c, k, r, s] = W[g*K/G + k, c, R-1-r, S-1-s]: the filter of
    the forward convolution that computes a stride-1 convolution's input gradient (the rotation
    int8::quantize_rotated_filter quantizes); applied to W' it gives W back, which the paths that
    need W quantized per input channel use."""
    k, cg, r, s = weight.shape
    swapped = weight.reshape(groups, k // groups, cg, r, s).transpose(1, 2).reshape(groups * cg, k // groups, r, s)
    return swapped.flip(2, 3)


def _dgrad_as_forward_padding(weight_shape, geometry):
    """The padding of the forward convolution equal to dgrad (stride 1: dX = conv(dY, W', padding
    dilation*(R-1) - padding)), or None when dgrad cannot be written so (stride > 1, or padding
    beyond the dilated filter)."""
    stride, padding, dilation, _ = geometry
    pads = [d * (f - 1) - p for d, f, p in zip(dilation, weight_shape[2:], padding)]
    return tuple(pads) if tuple(stride) == (1, 1) and min(pads) >= 0 else None


class _AxisPhase(NamedTuple):
    """One phase of a strided dgrad along one axis: the input positions start + i*stride, i < count,
    are positions [first, first + count) of the stride-1 correlation of dY (padded by `padding`) with
    the taps tap, tap + stride, ... (`taps` of them, 0: those positions are 0) of the rotated filter."""
    start: int
    count: int
    first: int
    tap: int
    taps: int
    padding: int


def _axis_phases(size: int, out: int, filt: int, stride: int, pad: int):
    """The phases phi of one axis: input positions h = i*stride + phi - pad (phi = (h + pad) mod stride)
    take filter taps r = phi + j*stride, j < taps, and dY rows i - j, so dX[h] = sum_j dY[i - j]
    W[phi + j*stride]: a stride-1 correlation of dY with those taps flipped (rotated rows tap,
    tap + stride, ...) whose output i sits at row i + padding - (taps - 1), with the padding that
    reaches the last i needed."""
    phases = []
    for phi in range(stride):
        # ceil((pad - phi) / stride), ceil((size + pad - phi) / stride)
        i_lo, i_hi = -((phi - pad) // stride), -((phi - pad - size) // stride)
        if i_hi <= i_lo:
            continue
        taps = max(0, -((phi - filt) // stride))  # ceil((filt - phi) / stride)
        padding = max(taps - 1, i_hi - out)
        tap = filt - 1 - phi - (taps - 1) * stride
        phases.append(_AxisPhase(i_lo * stride + phi - pad, i_hi - i_lo, i_lo + padding - (taps - 1), tap, taps,
                                 padding))
    return phases


def _dgrad_phases(weight_shape, x_hw, dy_hw, geometry):
    """The (row, column) phases of a strided dgrad (dilation 1), or None when it is not one (stride 1,
    dilation)."""
    stride, padding, dilation, _ = geometry
    if tuple(stride) == (1, 1) or tuple(dilation) != (1, 1):
        return None
    rows = _axis_phases(x_hw[0], dy_hw[0], weight_shape[2], stride[0], padding[0])
    cols = _axis_phases(x_hw[1], dy_hw[1], weight_shape[3], stride[1], padding[1])
    return [(row, col) for row in rows for col in cols]


def _phases_pay(weight_shape, groups: int, dtype: torch.dtype) -> bool:
    """Whether Conv2d's strided dgrad runs by phases rather than col2im: where the implicit-GEMM
    kernel takes the phase convolutions (one group, dY channels a multiple of 32, dX rows of whole
    16 bytes). Measured on the H200 (benchmarks/NOTES.md 22): r18.layer2.3x3s2 (64 <- 128 channels)
    2.3x faster than col2im; r18.conv1 (3 <- 64 channels: im2col per phase) 1.4x slower."""
    k, cg = weight_shape[0], weight_shape[1]
    return groups == 1 and k % 32 == 0 and cg * dtype.itemsize % 16 == 0


def _dgrad_by_phases(dy: torch.Tensor, rotated: torch.Tensor, x_shape, geometry, phases, conv_phase, dtype):
    """dX of a strided convolution as one stride-1 convolution per phase, conv_phase(filter, padding)
    (an int8 convolution of dy), each written to its strided share of an NHWC dX of dtype; no col2im.
    rotated: the rotated filter (_rotated_filter), whose taps make the phases' filters."""
    stride = geometry[0]
    grad_x = torch.empty(x_shape[0], x_shape[2], x_shape[3], x_shape[1], dtype=dtype, device=dy.device)
    grad_x = grad_x.permute(0, 3, 1, 2)
    for row, col in phases:
        target = grad_x[:, :, row.start::stride[0], col.start::stride[1]]
        if row.taps == 0 or col.taps == 0:
            target.zero_()
            continue
        taps = rotated[:, :, row.tap::stride[0], col.tap::stride[1]][:, :, :row.taps, :col.taps]
        out = conv_phase(taps.contiguous(), (row.padding, col.padding))
        target.copy_(out[:, :, row.first:row.first + row.count, col.first:col.first + col.count])
    return grad_x


def _grad_input_by_phases(qg: QTensor, w_rotated, w_scale, x_shape, geometry, phases, dtype):
    """_dgrad_by_phases with scaled_conv2d (implicit GEMM; the scales, per image x per input channel,
    in its epilogue, as on the stride-1 path)."""
    groups = geometry[3]

    def conv_phase(sub_filter, padding):
        qw = QTensor(sub_filter, w_scale, None, 0 if w_scale.dim() else None)
        return scaled_conv2d(qg, qw, None, 1, padding, 1, groups, out_dtype=dtype)
    return _dgrad_by_phases(qg.data, w_rotated, x_shape, geometry, phases, conv_phase, dtype)


def _is_strided_pointwise(weight_shape, geometry) -> bool:
    """A 1x1 filter without padding or groups and with a stride > 1 (ResNet's downsampling shortcut):
    its input gradient is one GEMM whose rows land on every stride-th pixel, the rest being zero."""
    stride, padding, _, groups = geometry
    return tuple(weight_shape[2:]) == (1, 1) and tuple(padding) == (0, 0) and groups == 1 and tuple(stride) != (1, 1)


def _pointwise_grad_input(qg: QTensor, w_data, w_scale, x_shape, stride, dtype):
    """dX of a 1x1 convolution: dX[n, c, p*sh, q*sw] = sum_k dY[n, k, p, q] W[k, c], zero elsewhere.
    One scaled_gemm over the pixels (dY per image x W per input channel: the products, scales and
    rounding of scaled_conv2d_dgrad), written into a zero NHWC image; no col2im gather."""
    n, k, p, q = qg.data.shape
    c = w_data.shape[1]
    pixels = qg.data.permute(0, 2, 3, 1).reshape(-1, k)  # a view for channels_last dY
    row_scale = qg.scale if qg.scale.dim() == 0 else qg.scale.reshape(n, 1).expand(n, p * q).reshape(-1)
    a = QTensor(pixels, row_scale, None, None if qg.scale.dim() == 0 else 0)
    b = QTensor(w_data.reshape(k, c), w_scale, None, None if w_scale.dim() == 0 else 1)
    rows = scaled_gemm(a, b, out_dtype=dtype).view(n, p, q, c)
    grad_x = torch.zeros(n, x_shape[2], x_shape[3], c, dtype=dtype, device=rows.device)
    grad_x[:, : p * stride[0] : stride[0], : q * stride[1] : stride[1]] = rows
    return grad_x.permute(0, 3, 1, 2)


def _grad_input(qg: QTensor, weight, x_shape, geometry, config: Int8Config, dtype):
    """dX from dY quantized by _quantize_grad_out."""
    stride, padding, dilation, groups = geometry
    w_rotated, w_scale = _rotated_per_input_channel(weight, groups, config.granularity == "channel")
    if _is_strided_pointwise(weight.shape, geometry) and dtype in _EPILOGUE_DTYPES:
        return _pointwise_grad_input(qg, _rotated_filter(w_rotated, groups), w_scale, x_shape, stride, dtype)
    phases = _dgrad_phases(weight.shape, x_shape[2:], qg.data.shape[2:], geometry) \
        if dtype in _EPILOGUE_DTYPES and _phases_pay(weight.shape, groups, dtype) else None
    if phases is not None:
        return _grad_input_by_phases(qg, w_rotated, w_scale, x_shape, geometry, phases, dtype)
    forward_padding = _dgrad_as_forward_padding(weight.shape, geometry)
    if forward_padding is not None and dtype in _EPILOGUE_DTYPES:
        # Exact int32 sums of the same products; the scales (per image x per input channel) are the
        # forward epilogue's row and column scales, so no int32 image and no column buffer.
        qw = QTensor(w_rotated, w_scale, None, 0 if w_scale.dim() else None)
        return scaled_conv2d(qg, qw, None, 1, forward_padding, dilation, groups, out_dtype=dtype)
    w_data = _rotated_filter(w_rotated, groups)  # W quantized per input channel
    if dtype in _EPILOGUE_DTYPES:  # rescaled as col2im writes it: no int32 image
        return scaled_conv2d_dgrad(qg, QTensor(w_data, w_scale, None, None), x_shape[2:], stride, padding, dilation,
                                   groups, out_dtype=dtype)
    acc = conv2d_dgrad(qg.data, w_data, x_shape[2:], stride, padding, dilation, groups)
    return (acc * (_scale_along(qg.scale, 0) * _scale_along(w_scale, 1))).to(dtype)


def _quantize_channels(t: torch.Tensor, config: Int8Config, rounding: str = "nearest",
                       amax: Optional[torch.Tensor] = None) -> QTensor:
    """quantize(t, 1) (per channel; channel granularity): the column maxima (or `amax`, the channel
    maxima found by an earlier pass), then one quantizing pass, its data stored [C, N, H, W] (viewed
    as [N, C, H, W]): t as the matrix [N*H*W, C] quantized per column and written transposed, which
    is the layout wgrad reads (its GEMM reduces over the pixels). Per tensor otherwise."""
    if config.granularity != "channel":
        return quantize(t, None, rounding=rounding)
    n, c, h, w = t.shape
    pixels = t.permute(0, 2, 3, 1).reshape(-1, c)  # a view for channels_last t, else one copy
    if amax is None:
        amax = column_amax(pixels)  # exact; inf / NaN if not finite
    q = quantize_columns_t(pixels, amax, rounding=rounding)
    return QTensor(q.data.view(c, n, h, w).permute(1, 0, 2, 3), q.scale, None, 1)


def _wgrad_in_int32(grad_out: torch.Tensor) -> bool:
    """Whether conv2d_wgrad can take one image (P*Q pixels) without overflowing int32."""
    return grad_out.shape[2] * grad_out.shape[3] <= _MAX_PIXELS


# Output pixels per image from which the implicit-GEMM wgrad beats the per-channel path, measured
# on the H200 at the `bench conv` layers (scripts/wgrad_paths.py, benchmarks/NOTES.md 20): faster
# from 28x28 outputs on, and for 1x1 filters from 14x14; slower for 3x3 at 14x14 and 7x7 (its
# 64-pixel stages are part empty there, and it reads each image once per tap).
_IMPLICIT_WGRAD_MIN_PIXELS = 784
_IMPLICIT_WGRAD_MIN_PIXELS_1X1 = 196


@torch.compiler.assume_constant_result
def _gemm_family(device_index: int) -> Optional[str]:
    """selected_backend of CUDA device device_index, a constant to torch.compile (which cannot trace
    the extension's query; a compiled graph keeps the family it was traced with)."""
    return selected_backend(device_index)


def _implicit_wgrad(x: torch.Tensor, weight: torch.Tensor, groups: int, out_pixels: int) -> bool:
    """Whether the layer's weight gradient runs as scaled_conv2d_wgrad's implicit-GEMM kernel (the
    conditions of conv.h's conv2d_wgrad_scaled_cuda, and images of out_pixels output pixels large
    enough for it to be the faster path); else the per-channel path (_grad_weight). The op's
    other path, image by image, is never the faster one."""
    pointwise = tuple(weight.shape[2:]) == (1, 1)
    least = _IMPLICIT_WGRAD_MIN_PIXELS_1X1 if pointwise else _IMPLICIT_WGRAD_MIN_PIXELS
    return (x.is_cuda and groups == 1 and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0
            and out_pixels >= least and _gemm_family(x.device.index) in ("sm80", "sm90"))


def _grad_weight(grad_out, x, weight, geometry, config: Int8Config, grad_amax: Optional[torch.Tensor] = None):
    """dW by the per-channel path; grad_amax: dY's channel maxima if an earlier pass found them."""
    stride, padding, dilation, groups = geometry
    n, _, p, q = grad_out.shape
    qg = _quantize_channels(grad_out, config, config.grad_rounding, grad_amax)
    qx = _quantize_channels(x, config)
    images = max(1, _MAX_PIXELS // (p * q))
    acc = sum(conv2d_wgrad(qg.data[i:i + images], qx.data[i:i + images], weight.shape[2:], stride, padding, dilation,
                           groups).long() for i in range(0, n, images))
    k, cg = weight.shape[:2]
    x_scale = qx.scale
    if x_scale.dim():  # per input channel c = g*C/G + c': the scale of weight element [k, c']
        x_scale = x_scale.reshape(groups, 1, cg).expand(groups, k // groups, cg).reshape(k, cg, 1, 1)
    # int64 partial sums are exact, and so is their float64 value (|sum| < 2^53)
    return (acc.double() * (_scale_along(qg.scale, 0) * x_scale).double()).to(weight.dtype)


class _Int8Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, geometry, config: Int8Config, out_dtype):
        ctx.geometry, ctx.config, ctx.has_bias = geometry, config, bias is not None
        ctx.x_shape, ctx.x_dtype, ctx.x_format = x.shape, x.dtype, _memory_format(x)
        ctx.wgrad_geometry = geometry  # of the x saved for the weight gradient
        stride, padding, dilation, groups = geometry
        if not config.forward:
            ctx.implicit_wgrad = False
            ctx.save_for_backward(x, weight)
            return F.conv2d(x.to(out_dtype), weight.to(out_dtype), None if bias is None else bias.to(out_dtype),
                            stride, padding, dilation, groups)
        # A strided 1x1 layer reads every stride-th pixel only: those are quantized (not the rest of x),
        # and both the forward and the weight gradient run as the 1x1 stride-1 convolution over them.
        if _is_strided_pointwise(weight.shape, geometry):
            x = x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=ctx.x_format)
            stride = (1, 1)
            ctx.wgrad_geometry = (stride, padding, dilation, groups)
        # Per image x per output channel ("channel"), y in x's memory format: one op call.
        y, qx = dynamic_conv2d(x, weight, bias, stride, padding, dilation, groups, config.granularity == "channel",
                               out_dtype)
        ctx.implicit_wgrad = config.grad_weight and _implicit_wgrad(x, weight, groups, y.shape[2] * y.shape[3])
        # The implicit-GEMM wgrad reads this quantized x: saved instead of x (half the bytes of bf16),
        # which no other backward product then needs.
        ctx.save_for_backward(*((None, weight, qx.data, qx.scale) if ctx.implicit_wgrad else (x, weight)))
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, *saved_qx = ctx.saved_tensors
        config, geometry = ctx.config, ctx.geometry
        stride, padding, dilation, groups = geometry
        int8_dgrad = ctx.needs_input_grad[0] and config.grad_input
        implicit_wgrad = ctx.needs_input_grad[1] and ctx.implicit_wgrad
        # Images of more than 131071 output pixels, whose int32 wgrad could overflow: the per-image
        # operands of the implicit path, through scaled_conv2d_wgrad (which adds int32 sums of tiles
        # of the image in int64 where its kernel does not run).
        per_image_wgrad = ctx.needs_input_grad[1] and config.grad_weight and (
            implicit_wgrad or not _wgrad_in_int32(grad_out))
        channel_wgrad = ctx.needs_input_grad[1] and config.grad_weight and not per_image_wgrad
        bgrad = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = grad_amax = grad_sum = qg = None
        if int8_dgrad or per_image_wgrad:  # with dY's quantization come the bias gradient (and channel maxima)
            qg, grad_amax, grad_sum = _quantize_grad_out(grad_out, config, channel_wgrad, bgrad)
        if int8_dgrad:
            grad_x = _grad_input(qg, weight, ctx.x_shape, geometry, config, ctx.x_dtype)
            grad_x = grad_x.contiguous(memory_format=ctx.x_format)
        elif ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight.to(grad_out.dtype), grad_out, stride, padding,
                                                dilation, groups).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:  # x: the pixels the forward read (ctx.wgrad_geometry's input)
            if per_image_wgrad:
                qx = QTensor(*saved_qx, None, 0 if saved_qx[1].dim() else None) if implicit_wgrad \
                    else _quantize_per_image(x, config)
                grad_w = scaled_conv2d_wgrad(qg, qx, weight.shape[2:], *ctx.wgrad_geometry).to(weight.dtype)
            elif config.grad_weight:
                grad_w = _grad_weight(grad_out, x, weight, ctx.wgrad_geometry, config, grad_amax)
            else:
                grad_w = torch.nn.grad.conv2d_weight(x.to(grad_out.dtype), weight.shape, grad_out,
                                                     *ctx.wgrad_geometry).to(weight.dtype)
        if bgrad:
            grad_b = (grad_out.sum((0, 2, 3)) if grad_sum is None else grad_sum).to(weight.dtype)
        return grad_x, grad_w, grad_b, None, None, None


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

    @torch.no_grad()
    def forward(self, x: Union[torch.Tensor, QTensor]) -> Union[torch.Tensor, QTensor]:
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
