"""INT8 convolution functions over torch.ops.int8.*.

Images are logically NCHW ``[N, C, H, W]`` (weights ``[K, C/groups, R, S]``) as in torch.nn, in any
memory format; images these functions compute come back channels_last (NHWC memory), which is
also the cheapest input. On the GPU, conv2d / scaled_conv2d first try the implicit-GEMM kernel and
otherwise run im2col + GEMM, processing the batch in chunks whose column buffer stays under the
workspace limit (``set_workspace_limit``; default 1 GiB, or ``TORCH_INT8_CONV_WORKSPACE_MB``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .functional import QTensor, _check_symmetric, _out_scale_arg

_ops = torch.ops.int8

IntPair = Union[int, Sequence[int]]


def _pair(v: IntPair) -> list:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def im2col(x: torch.Tensor, kernel_size: IntPair, dilation: IntPair = 1, padding: IntPair = 0,
           stride: IntPair = 1, *, pad_value: int = 0, layout: str = "NCHW") -> torch.Tensor:
    """int8 torch.nn.functional.unfold.

    layout="NCHW": x ``[N, C, H, W]`` -> ``[N, C*R*S, L]`` (row c*R*S + r*S + s, as F.unfold).
    layout="NHWC": x ``[N, H, W, C]`` -> ``[N, L, R*S*C]`` (one row per output pixel, column
    (r*S + s)*C + c: the A operand of the convolution GEMM). Outside the image: ``pad_value``
    (the activation zero point; F.unfold pads with 0).
    """
    return _ops.im2col(x, _pair(kernel_size), _pair(dilation), _pair(padding), _pair(stride), int(pad_value), layout)


def col2im(cols: torch.Tensor, output_size: IntPair, kernel_size: IntPair, dilation: IntPair = 1,
           padding: IntPair = 0, stride: IntPair = 1, *, layout: str = "NCHW") -> torch.Tensor:
    """torch.nn.functional.fold for int8 / int32 columns (summed in int32, exact) and float32 columns
    (summed in float32, filter taps in (r, s) order: deterministic). Column layouts as in im2col; the
    result is ``[N, C, H, W]`` (NCHW) or ``[N, H, W, C]`` (NHWC)."""
    return _ops.col2im(cols, _pair(output_size), _pair(kernel_size), _pair(dilation), _pair(padding), _pair(stride),
                       layout)


def conv2d(x: torch.Tensor, weight: torch.Tensor, stride: IntPair = 1, padding: IntPair = 0,
           dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Exact int8 convolution (F.conv2d semantics, zero padding) -> int32 ``[N, K, P, Q]``."""
    return _ops.conv2d(x, weight, _pair(stride), _pair(padding), _pair(dilation), int(groups))


def conv2d_dgrad(grad_out: torch.Tensor, weight: torch.Tensor, input_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Exact gradient of conv2d with respect to its input: int8 grad_out ``[N, K, P, Q]`` and weight
    -> int32 ``[N, C, H, W]``; ``input_size`` is (H, W) (a strided convolution maps several sizes to
    the same P, Q)."""
    return _ops.conv2d_dgrad(grad_out, weight, _pair(input_size), _pair(stride), _pair(padding), _pair(dilation),
                             int(groups))


def scaled_conv2d_dgrad(grad_out: QTensor, weight: QTensor, input_size: IntPair, stride: IntPair = 1,
                        padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                        out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dequantized input gradient of conv2d: ``out_dtype(float(dgrad[n, c, h, w]) * scale_grad_out[n] *
    scale_weight[c])`` (float32 products, left to right), the exact int32 sums of conv2d_dgrad rescaled
    as they are written (no int32 image). grad_out: symmetric QTensor ``[N, K, P, Q]`` per tensor or per
    image (dim=0); weight: symmetric QTensor ``[K, C/groups, R, S]`` whose scale is one value or one per
    input channel ``c = g*C/groups + c'`` (shape ``[C]``, dim=None or 1). out_dtype: bfloat16, float16 or
    float32."""
    if grad_out.dim not in (None, 0):
        raise ValueError(f"scaled_conv2d_dgrad: grad_out must be quantized per tensor or per image (dim=0), "
                         f"got dim={grad_out.dim}")
    _check_symmetric(grad_out, "scaled_conv2d_dgrad", "grad_out")
    _check_symmetric(weight, "scaled_conv2d_dgrad", "weight")
    return _ops.scaled_conv2d_dgrad(grad_out.data, weight.data, grad_out.scale.reshape(-1), weight.scale.reshape(-1),
                                    _pair(input_size), _pair(stride), _pair(padding), _pair(dilation), int(groups),
                                    out_dtype)


def conv2d_wgrad(grad_out: torch.Tensor, x: torch.Tensor, kernel_size: IntPair, stride: IntPair = 1,
                 padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Exact gradient of conv2d with respect to its weight: int8 grad_out ``[N, K, P, Q]`` and x
    -> int32 ``[K, C/groups, R, S]``. N*P*Q must be at most 131071 (int32 cannot hold more in
    general); split larger batches and add the parts in int64."""
    return _ops.conv2d_wgrad(grad_out, x, _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation),
                             int(groups))


def scaled_conv2d_wgrad(grad_out: QTensor, x: QTensor, kernel_size: IntPair, stride: IntPair = 1,
                        padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1) -> torch.Tensor:
    """Dequantized weight gradient of conv2d from operands quantized per image (or per tensor):
    float32 ``[K, C/groups, R, S]`` = sum over images n of ``float(wgrad of image n) * (scale_grad_out[n] *
    scale_x[n])``, each image's sum exact in int32, the images added in float32 (GPU; any order) or
    float64 (CPU), in channels_last memory ([K, R, S, C/groups], as the kernel writes it). Unlike conv2d_wgrad, images need not share a scale and neither N*P*Q nor one image's P*Q is limited (the sums of images, or of tiles of one image, are added beyond int32).
    grad_out ``[N, K, P, Q]`` and x ``[N, C, H, W]``: symmetric QTensors, dim None or 0; NHWC
    (channels_last) memory is read in place. On sm80 / sm90 GPUs with groups == 1 and C, K multiples
    of 16 one implicit-GEMM kernel computes it; otherwise the images are taken one at a time."""
    for name, t in (("grad_out", grad_out), ("x", x)):
        if t.dim not in (None, 0):
            raise ValueError(f"scaled_conv2d_wgrad: {name} must be quantized per tensor or per image (dim=0), "
                             f"got dim={t.dim}")
        _check_symmetric(t, "scaled_conv2d_wgrad", name)
    return _ops.scaled_conv2d_wgrad(grad_out.data, x.data, grad_out.scale.reshape(-1), x.scale.reshape(-1),
                                    _pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), int(groups))


def scaled_conv2d(x: QTensor, weight: QTensor, bias: Optional[torch.Tensor] = None, stride: IntPair = 1,
                  padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                  out_dtype: torch.dtype = torch.bfloat16, out_scale: Optional[float] = None,
                  out_zero_point: int = 0, relu: bool = False) -> torch.Tensor:
    """Dequantizing int8 convolution, rescale / zero point / bias fused in the GEMM epilogue:
    ``scale_x[n] * scale_w[k] * sum (x - zero_point_x) * w + bias[k]``.

    x: QTensor ``[N, C, H, W]`` per tensor or per image (dim=0); a zero point (asymmetric) only per
    tensor, and padding then holds the zero point (real value 0). weight: symmetric QTensor
    ``[K, C/groups, R, S]`` per tensor or per output channel (dim=0). out_dtype: bfloat16, float16,
    float32, or int8 with out_scale (rounded half to even, + out_zero_point, saturated).
    relu: max(y, 0) before the output conversion (NaN stays NaN), as in scaled_gemm.
    """
    if x.dim not in (None, 0):
        raise ValueError(f"scaled_conv2d: x must be quantized per tensor or per image (dim=0), got dim={x.dim}")
    if x.zero_point is not None and x.zero_point.numel() != 1:
        raise ValueError("scaled_conv2d: an asymmetric x must be quantized per tensor (one zero point)")
    if weight.dim not in (None, 0):
        raise ValueError(f"scaled_conv2d: weight must be quantized per tensor or per output channel (dim=0), "
                         f"got dim={weight.dim}")
    _check_symmetric(weight, "scaled_conv2d", "weight")
    out_scale = _out_scale_arg("scaled_conv2d", out_dtype, out_scale)
    zero_point = None if x.zero_point is None else x.zero_point.reshape(1)
    return _ops.scaled_conv2d(x.data, weight.data, x.scale.reshape(-1), weight.scale.reshape(-1), zero_point, bias,
                              _pair(stride), _pair(padding), _pair(dilation), int(groups), out_dtype, out_scale,
                              int(out_zero_point), bool(relu))


def dynamic_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1,
                   per_channel: bool = True, out_dtype: torch.dtype = torch.bfloat16):
    """A float convolution run in INT8, as torch_int8.nn.Conv2d's forward (one op call): x
    ``[N, C, H, W]`` quantized per image and weight per output channel (per_channel), or each per
    tensor, then scaled_conv2d (bias in the epilogue). Returns ``(y, qx)``: y in x's memory format
    and out_dtype, qx the quantized x (a QTensor, in x's memory format)."""
    y, data, scale = _ops.dynamic_conv2d(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), int(groups),
                                         bool(per_channel), out_dtype)
    return y, QTensor(data, scale, None, 0 if per_channel else None)


def workspace_limit() -> int:
    """Bytes one column buffer of the im2col path may take (batches are split to stay below it)."""
    return int(_ops.get_conv_workspace_limit())


def set_workspace_limit(nbytes: int) -> None:
    """Sets the column-buffer limit for this process (default 1 GiB, or TORCH_INT8_CONV_WORKSPACE_MB)."""
    _ops.set_conv_workspace_limit(int(nbytes))


def workspace_bytes(x_shape: Sequence[int], weight_shape: Sequence[int], stride: IntPair = 1, padding: IntPair = 0,
                    dilation: IntPair = 1, groups: int = 1, device: str = "cuda") -> int:
    """Size of the forward im2col column buffer for these shapes (when the implicit-GEMM kernel
    declines the problem): ``groups * (P*Q * images per chunk) * round_up(R*S*C/groups, 16)`` bytes,
    with as many images per chunk as fit under workspace_limit() (at least one). CPU: no rounding."""
    n, c, h, w = x_shape
    k, cg, r, s = weight_shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    per_image = ((h + 2 * ph - dh * (r - 1) - 1) // sh + 1) * ((w + 2 * pw - dw * (s - 1) - 1) // sw + 1)
    align = 16 if device == "cuda" else 1
    per_image_bytes = groups * per_image * (-(-r * s * cg // align) * align)
    images = min(max(1, workspace_limit() // per_image_bytes), n)
    return images * per_image_bytes
