"""The backward products of torch_int8.nn.Conv2d: which path computes dX and dW, and the paths.

Every operand is quantized along a dimension that its product does not reduce, so the scales factor
out:
  grad_input   dX = dgrad(dY, W)      dY per image, W per input channel    (exact int32, then scaled)
  grad_weight  dW = wgrad(dY, X)      dY per image, X per image (each image's int32 sum scaled by its
                                     two scales, the images added in float32: scaled_conv2d_wgrad),
                                     or dY per output channel, X per input channel (see below)
("tensor" granularity: one scale per operand). A stride-1 dgrad is the forward convolution of dY
with the rotated, transposed filter (implicit GEMM, scales in its epilogue); a strided one is such a
convolution per phase (every stride-th input pixel: a sub-filter of the same taps), written to its
strided share of dX, where the kernel takes the phases (phases_pay); else its taps are summed after
their GEMM (col2im), which rescales the int32 sums as it writes them (scaled_conv2d_dgrad).
wgrad reuses the forward's quantized X and dgrad's quantized dY where that per-image path is the
faster one (CUDA: its implicit-GEMM kernel, where the kernel takes the layer: implicit_kernel_takes,
and images of at least 28x28 output pixels, or 14x14 for 1x1 filters; the CPU: its batched products,
images of at least 28x28 output pixels: implicit_wgrad), and for images of more than 131071 output
pixels (whose int32 sums could overflow: scaled_conv2d_wgrad adds those of tiles of the image in
int64). Elsewhere it is split into batches of at most 131071 output pixels, its operands quantized
per channel (on the GPU straight into the [C, N, H, W] layout that path reads; im2col + GEMM).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .. import _C
from ..config import Int8Config
from ..conv import conv2d_dgrad, conv2d_wgrad, scaled_conv2d, scaled_conv2d_dgrad
from ..functional import QTensor, column_amax, quantize, quantize_columns_t, scaled_gemm

MAX_PIXELS = _C.max_k  # conv2d_wgrad's largest N*P*Q (kernels.h kMaxK)
EPILOGUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # scaled_conv2d's float outputs


def rotated_per_input_channel(weight: torch.Tensor, groups: int, per_channel: bool):
    """The rotated filter W' [C, K/G, R, S] (rotated_filter; channels_last memory) quantized per
    input channel c (one row of W', scale [C]: the fused per-row kernel, one pass) or per tensor
    (0-d scale): (data, scale). Rotating the int8 data back (rotated_filter(data, groups)) gives W
    quantized per input channel."""
    return torch.ops.int8.quantize_rotated_filter(weight, groups, per_channel)


def scale_along(scale: torch.Tensor, dim: int) -> torch.Tensor:
    """A 0-d or 1-D scale viewed to broadcast along dim of a 4-D tensor."""
    return scale if scale.dim() == 0 else scale.reshape([-1 if d == dim else 1 for d in range(4)])


def quantize_images(t: torch.Tensor, rounding: str) -> QTensor:
    """quantize(t, 0) (per image) as quantize_rows of t's memory viewed as one row per image
    (any layout, no copy for contiguous or channels_last t): one fused kernel pass on the GPU."""
    return quantize_images_with_channel_stats(t, rounding, amax=False, sums=False)[0]


def quantize_images_with_channel_stats(t: torch.Tensor, rounding: str, amax: bool, sums: bool):
    """(quantize(t, 0), max|t| of every channel or None, float32 sum of every channel or None): one
    op, int8::quantize_images (the fused per-row kernel over each image's memory, its column
    statistics reduced per channel). The maxima are exact; the sums are the bias gradient when t
    is dY."""
    data, scale, channel_amax, channel_sum = torch.ops.int8.quantize_images(t, rounding, amax, sums)
    return QTensor(data, scale, None, 0), channel_amax, channel_sum


def quantize_per_image(t: torch.Tensor, config: Int8Config, rounding: str = "nearest") -> QTensor:
    """t per image (channel granularity) or per tensor: an operand of the per-image wgrad."""
    return quantize_images(t, rounding) if config.granularity == "channel" else quantize(t, None, rounding=rounding)


def quantize_grad_out(grad_out: torch.Tensor, config: Int8Config, channel_amax: bool, channel_sum: bool):
    """dY quantized for grad_input (per image, or per tensor), with channel granularity also its channel
    maxima (wgrad's per-channel scales) and sums (the bias gradient) if asked for: (QTensor, amax or
    None, sum or None). The statistics come from the quantize pass itself for images of at most
    24 KB (12288 bf16 values of C*H*W), else from a column-statistics pass of their own (ResNet-sized
    dY), either way without ATen reductions."""
    if config.granularity != "channel":
        return quantize(grad_out, None, rounding=config.grad_rounding), None, None
    return quantize_images_with_channel_stats(grad_out, config.grad_rounding, channel_amax, channel_sum)


def rotated_filter(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """W' [C, K/G, R, S] with W'[g*C/G + c, k, r, s] = W[g*K/G + k, c, R-1-r, S-1-s]: the filter of
    the forward convolution that computes a stride-1 convolution's input gradient (the rotation
    int8::quantize_rotated_filter quantizes); applied to W' it gives W back, which the paths that
    need W quantized per input channel use."""
    k, cg, r, s = weight.shape
    swapped = weight.reshape(groups, k // groups, cg, r, s).transpose(1, 2).reshape(groups * cg, k // groups, r, s)
    return swapped.flip(2, 3)


def dgrad_as_forward_padding(weight_shape, geometry):
    """The padding of the forward convolution equal to dgrad (stride 1: dX = conv(dY, W', padding
    dilation*(R-1) - padding)), or None when dgrad cannot be written so (stride > 1, or padding
    beyond the dilated filter): the C++ rule (conv.h), which conv2d_dgrad follows too."""
    stride, padding, dilation, _ = geometry
    return _forward_padding(*weight_shape[2:], *stride, *padding, *dilation)


@torch.compiler.assume_constant_result
def _forward_padding(r: int, s: int, stride_h: int, stride_w: int, pad_h: int, pad_w: int, dilation_h: int,
                     dilation_w: int):
    """_C.dgrad_as_forward_padding, a constant to torch.compile (which cannot trace the extension)."""
    return _C.dgrad_as_forward_padding((r, s), (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w))


class AxisPhase(NamedTuple):
    """One phase of a strided dgrad along one axis: the input positions start + i*stride, i < count,
    are positions [first, first + count) of the stride-1 correlation of dY (padded by `padding`) with
    the taps tap, tap + stride, ... (`taps` of them, 0: those positions are 0) of the rotated filter."""
    start: int
    count: int
    first: int
    tap: int
    taps: int
    padding: int


def axis_phases(size: int, out: int, filt: int, stride: int, pad: int):
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
        phases.append(AxisPhase(i_lo * stride + phi - pad, i_hi - i_lo, i_lo + padding - (taps - 1), tap, taps,
                                 padding))
    return phases


def dgrad_phases(weight_shape, x_hw, dy_hw, geometry):
    """The (row, column) phases of a strided dgrad (dilation 1), or None when it is not one (stride 1,
    dilation)."""
    stride, padding, dilation, _ = geometry
    if tuple(stride) == (1, 1) or tuple(dilation) != (1, 1):
        return None
    rows = axis_phases(x_hw[0], dy_hw[0], weight_shape[2], stride[0], padding[0])
    cols = axis_phases(x_hw[1], dy_hw[1], weight_shape[3], stride[1], padding[1])
    return [(row, col) for row in rows for col in cols]


@torch.compiler.assume_constant_result
def implicit_kernel_takes(kernel: str, device_index: Optional[int], c: int, k: int, groups: int,
                          out_bytes: int) -> bool:
    """Whether the implicit-GEMM convolution kernel ("fprop" or "wgrad") of the GEMM family of CUDA
    device device_index (None: of every family that has it) takes c input and k output channels in
    `groups` groups with out_bytes-byte outputs: _C.implicit_conv_can_implement, the rule the C++
    families check before they run. A constant to torch.compile (which cannot trace the extension's
    query; a compiled graph keeps the answer it was traced with)."""
    return _C.implicit_conv_can_implement(kernel, device_index, c, k, groups, out_bytes)


def phases_pay(weight_shape, groups: int, dtype: torch.dtype) -> bool:
    """Whether Conv2d's strided dgrad runs by phases rather than col2im: where every implicit-GEMM
    family takes the phase convolutions (forward convolutions of dY: K input channels, C = C/G*G
    output channels of dtype; today one group, K a multiple of 32, dX rows of whole 16 bytes), so
    the choice is the same on every GPU and on the CPU. Measured on the H200 (benchmarks/NOTES.md
    22): r18.layer2.3x3s2 (64 <- 128 channels) 2.3x faster than col2im; r18.conv1 (3 <- 64
    channels: im2col per phase) 1.4x slower."""
    k, cg = int(weight_shape[0]), int(weight_shape[1])
    return implicit_kernel_takes("fprop", None, k, cg * groups, groups, dtype.itemsize)


def dgrad_by_phases(dy: torch.Tensor, rotated: torch.Tensor, x_shape, geometry, phases, conv_phase, dtype):
    """dX of a strided convolution as one stride-1 convolution per phase, conv_phase(filter, padding)
    (an int8 convolution of dy), each written to its strided share of an NHWC dX of dtype; no col2im.
    rotated: the rotated filter (rotated_filter), whose taps make the phases' filters."""
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


def grad_input_by_phases(qg: QTensor, w_rotated, w_scale, x_shape, geometry, phases, dtype):
    """dgrad_by_phases with scaled_conv2d (implicit GEMM; the scales, per image x per input channel,
    in its epilogue, as on the stride-1 path)."""
    groups = geometry[3]

    def conv_phase(sub_filter, padding):
        qw = QTensor(sub_filter, w_scale, None, 0 if w_scale.dim() else None)
        return scaled_conv2d(qg, qw, None, 1, padding, 1, groups, out_dtype=dtype)
    return dgrad_by_phases(qg.data, w_rotated, x_shape, geometry, phases, conv_phase, dtype)


def is_strided_pointwise(weight_shape, geometry) -> bool:
    """A 1x1 filter without padding or groups and with a stride > 1 (ResNet's downsampling shortcut):
    its input gradient is one GEMM whose rows land on every stride-th pixel, the rest being zero."""
    stride, padding, _, groups = geometry
    return tuple(weight_shape[2:]) == (1, 1) and tuple(padding) == (0, 0) and groups == 1 and tuple(stride) != (1, 1)


def pointwise_grad_input(qg: QTensor, w_data, w_scale, x_shape, stride, dtype):
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


def grad_input(qg: QTensor, weight, x_shape, geometry, config: Int8Config, dtype):
    """dX from dY quantized by quantize_grad_out."""
    stride, padding, dilation, groups = geometry
    w_rotated, w_scale = rotated_per_input_channel(weight, groups, config.granularity == "channel")
    if is_strided_pointwise(weight.shape, geometry) and dtype in EPILOGUE_DTYPES:
        return pointwise_grad_input(qg, rotated_filter(w_rotated, groups), w_scale, x_shape, stride, dtype)
    phases = dgrad_phases(weight.shape, x_shape[2:], qg.data.shape[2:], geometry) \
        if dtype in EPILOGUE_DTYPES and phases_pay(weight.shape, groups, dtype) else None
    if phases is not None:
        return grad_input_by_phases(qg, w_rotated, w_scale, x_shape, geometry, phases, dtype)
    forward_padding = dgrad_as_forward_padding(weight.shape, geometry)
    if forward_padding is not None and dtype in EPILOGUE_DTYPES:
        # Exact int32 sums of the same products; the scales (per image x per input channel) are the
        # forward epilogue's row and column scales, so no int32 image and no column buffer.
        qw = QTensor(w_rotated, w_scale, None, 0 if w_scale.dim() else None)
        return scaled_conv2d(qg, qw, None, 1, forward_padding, dilation, groups, out_dtype=dtype)
    w_data = rotated_filter(w_rotated, groups)  # W quantized per input channel
    if dtype in EPILOGUE_DTYPES:  # rescaled as col2im writes it: no int32 image
        return scaled_conv2d_dgrad(qg, QTensor(w_data, w_scale, None, None), x_shape[2:], stride, padding, dilation,
                                   groups, out_dtype=dtype)
    acc = conv2d_dgrad(qg.data, w_data, x_shape[2:], stride, padding, dilation, groups)
    return (acc * (scale_along(qg.scale, 0) * scale_along(w_scale, 1))).to(dtype)


def quantize_channels(t: torch.Tensor, config: Int8Config, rounding: str = "nearest",
                       amax: Optional[torch.Tensor] = None) -> QTensor:
    """quantize(t, 1) (per channel; channel granularity): the column maxima (or `amax`, the channel
    maxima found by an earlier pass), then one quantizing pass, its data stored [C, N, H, W] (viewed
    as [N, C, H, W]): t as the matrix [N*H*W, C] quantized per column and written transposed, which
    is the layout the GPU's wgrad reads (its GEMM reduces over the pixels); on the CPU in channels_last
    memory. Per tensor otherwise."""
    if config.granularity != "channel":
        return quantize(t, None, rounding=rounding)
    if not t.is_cuda and rounding == "nearest":
        # The CPU's wgrad reads channels_last operands where they lie: the C++ loops of quantize per
        # channel, which find the channel maxima themselves (Conv2d's backward asks no earlier
        # pass for them on the CPU).
        return quantize(t.contiguous(memory_format=torch.channels_last), 1)
    n, c, h, w = t.shape
    pixels = t.permute(0, 2, 3, 1).reshape(-1, c)  # a view for channels_last t, else one copy
    if amax is None:
        amax = column_amax(pixels)  # exact; inf / NaN if not finite
    q = quantize_columns_t(pixels, amax, rounding=rounding)
    return QTensor(q.data.view(c, n, h, w).permute(1, 0, 2, 3), q.scale, None, 1)


def wgrad_in_int32(grad_out: torch.Tensor) -> bool:
    """Whether conv2d_wgrad can take one image (P*Q pixels) without overflowing int32."""
    return grad_out.shape[2] * grad_out.shape[3] <= MAX_PIXELS


# Output pixels per image from which the implicit-GEMM wgrad beats the per-channel path, measured
# on the H200 at the `bench conv` layers (scripts/wgrad_paths.py, benchmarks/NOTES.md 20): faster
# from 28x28 outputs on, and for 1x1 filters from 14x14; slower for 3x3 at 14x14 and 7x7 (its
# 64-pixel stages are part empty there, and it reads each image once per tap).
IMPLICIT_WGRAD_MIN_PIXELS = 784
IMPLICIT_WGRAD_MIN_PIXELS_1X1 = 196
# On the CPU, scaled_conv2d_wgrad's per-image path (one product per image over the forward's saved
# int8 x) against the per-channel path, 1x1 and 3x3 layers at batch 16 on 2 cores in turns
# (benchmarks/NOTES.md 39): faster at 56x56 output pixels (1x1 256->64: 64 against 79 ms a step),
# even at 28x28, slower at 14x14 (1x1 1024->256: 28 against 18 ms, 3x3 256: 59 against 24 ms).
CPU_PER_IMAGE_WGRAD_MIN_PIXELS = 784


def implicit_wgrad(x: torch.Tensor, weight: torch.Tensor, groups: int, out_pixels: int) -> bool:
    """Whether the layer's weight gradient runs as scaled_conv2d_wgrad over the forward's quantized x
    and dgrad's quantized dY, per image: on the GPU its implicit-GEMM kernel (where the family of x's
    device takes the layer: implicit_kernel_takes, and images of out_pixels output pixels large
    enough for it to be the faster path; the op's image-by-image fallback is never the faster one
    there), on the CPU its batched per-image products (images of at least
    CPU_PER_IMAGE_WGRAD_MIN_PIXELS output pixels); else the per-channel path (grad_weight)."""
    if not x.is_cuda:
        return out_pixels >= CPU_PER_IMAGE_WGRAD_MIN_PIXELS
    pointwise = tuple(weight.shape[2:]) == (1, 1)
    least = IMPLICIT_WGRAD_MIN_PIXELS_1X1 if pointwise else IMPLICIT_WGRAD_MIN_PIXELS
    return out_pixels >= least and implicit_kernel_takes("wgrad", x.device.index, int(x.shape[1]),
                                                         int(weight.shape[0]), groups, 4)


def grad_weight(grad_out, x, weight, geometry, config: Int8Config, grad_amax: Optional[torch.Tensor] = None):
    """dW by the per-channel path; grad_amax: dY's channel maxima if an earlier pass found them."""
    stride, padding, dilation, groups = geometry
    n, _, p, q = grad_out.shape
    qg = quantize_channels(grad_out, config, config.grad_rounding, grad_amax)
    qx = quantize_channels(x, config)
    images = max(1, MAX_PIXELS // (p * q))
    acc = sum(conv2d_wgrad(qg.data[i:i + images], qx.data[i:i + images], weight.shape[2:], stride, padding, dilation,
                           groups).long() for i in range(0, n, images))
    k, cg = weight.shape[:2]
    x_scale = qx.scale
    if x_scale.dim():  # per input channel c = g*C/G + c': the scale of weight element [k, c']
        x_scale = x_scale.reshape(groups, 1, cg).expand(groups, k // groups, cg).reshape(k, cg, 1, 1)
    # int64 partial sums are exact, and so is their float64 value (|sum| < 2^53)
    return (acc.double() * (scale_along(qg.scale, 0) * x_scale).double()).to(weight.dtype)
