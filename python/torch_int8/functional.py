"""The Python API over torch.ops.int8.*: QTensor and the functions on it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

_ops = torch.ops.int8


@dataclass
class QTensor:
    """A quantized tensor: float value = (data - zero_point) * scale.

    data: int8 values. scale: float32, 0-d (per tensor) or 1-D of size
    data.shape[dim] (per channel along dim). zero_point: int32 shaped like
    scale, or None when symmetric. dim: the channel dimension, or None.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    dim: Optional[int]

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)


def gemm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 GEMM: [M,K] @ [K,N] (or batched [B,M,K] @ [B,K,N] / [K,N]) -> int32."""
    return _ops.gemm(a, b)


def quantize(
    x: torch.Tensor,
    dim: Optional[int] = None,
    *,
    symmetric: bool = True,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> QTensor:
    """Absmax quantization to int8, per tensor (dim=None) or per channel along dim.

    Slices holding inf or NaN get scale NaN, so their dequantized values are NaN.
    """
    data, scale, zero_point = _ops.quantize(x, dim, symmetric, rounding, generator)
    if dim is not None:
        dim = dim % x.dim()
    return QTensor(data, scale, None if symmetric else zero_point, dim)


def quantize_rows(
    x: torch.Tensor,
    *,
    col_amax: bool = False,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> tuple[QTensor, Optional[torch.Tensor]]:
    """Symmetric per-row quantization of a 2-D tensor, one fused kernel on the GPU.

    The same result as quantize(x, 0, rounding=...). With col_amax=True it also
    returns max|x| of every column (inf/NaN for a non-finite column), the input
    of quantize_columns_t, so that x need not be reduced a second time.
    """
    q, amax, _ = quantize_rows_with_sums(x, col_amax=col_amax, col_sum=False, rounding=rounding, generator=generator)
    return q, amax


def quantize_rows_with_sums(
    x: torch.Tensor,
    *,
    col_amax: bool,
    col_sum: bool,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> tuple[QTensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """quantize_rows that can also return the float32 sum of every column (None unless col_sum=True),
    from the same pass as the column maxima: the bias gradient, when x is an output gradient.

    The sums accumulate in float32 in an order fixed by the shape and, on the GPU, the GPU model
    (reproducible run to run on one GPU); inf and NaN propagate.
    """
    data, scale, amax, total = _ops.quantize_rows(x, col_amax, rounding, generator, col_sum)
    return QTensor(data, scale, None, 0), (amax if col_amax else None), (total if col_sum else None)


def column_amax(x: torch.Tensor) -> torch.Tensor:
    """max|x| of every column of a 2-D float tensor, as float32 [C] (one streaming kernel on the GPU).

    A column holding NaN gets NaN, else one holding inf gets inf: the values of
    torch.linalg.vector_norm(x, inf, dim=0), and the col_amax quantize_columns_t takes.
    """
    return _ops.column_amax(x)


def quantize_columns_t(
    x: torch.Tensor,
    col_amax: torch.Tensor,
    *,
    rounding: str = "nearest",
    generator: Optional[torch.Generator] = None,
) -> QTensor:
    """Symmetric per-column quantization of a 2-D [R, C] tensor, written transposed.

    Returns a QTensor with data [C, R] (contiguous) quantized per row (dim=0):
    quantize(x, 1) transposed and made contiguous, in one pass over x, given
    col_amax = max|x| per column (as returned by quantize_rows). A column whose
    col_amax is not finite or negative (no maximum of absolute values) gets a
    NaN scale, so that the products it enters are NaN.
    """
    data_t, scale = _ops.quantize_columns_t(x, col_amax, rounding, generator)
    return QTensor(data_t, scale, None, 0)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(data - zero_point) * scale as a float tensor of dtype."""
    return _ops.dequantize(q.data, q.scale, q.zero_point, q.dim, dtype)


def _check_channel_dim(q: QTensor, name: str, allowed_dim: int, what: str) -> None:
    if q.dim is not None and q.dim % q.data.dim() != allowed_dim % q.data.dim():
        raise ValueError(f"scaled_gemm: {name} must be quantized per tensor (dim=None) or {what}, got dim={q.dim}")


def _check_symmetric(q: QTensor, op: str, name: str) -> None:
    """The epilogue corrects a zero point of the activations only: the other operand must have none."""
    if q.zero_point is not None:
        raise ValueError(f"{op}: {name} must be quantized symmetrically (zero_point None)")


def _out_scale_arg(op: str, out_dtype: torch.dtype, out_scale: Optional[float]) -> float:
    """The out_scale argument of a dequantizing op: required for (and only for) int8 output, finite
    and > 0; 1.0 for float outputs."""
    if out_dtype == torch.int8:
        if out_scale is None:
            raise ValueError(f"{op}: out_dtype=torch.int8 needs out_scale")
    elif out_scale is not None:
        raise ValueError(f"{op}: out_scale is only used with out_dtype=torch.int8")
    out_scale = 1.0 if out_scale is None else float(out_scale)
    if not math.isfinite(out_scale) or out_scale <= 0:
        raise ValueError(f"{op}: out_scale must be finite and > 0, got {out_scale}")
    return out_scale


def scaled_gemm(
    a: QTensor,
    b: QTensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out_scale: Optional[float] = None,
    out_zero_point: int = 0,
    relu: bool = False,
) -> torch.Tensor:
    """Dequantizing int8 GEMM with the rescale, zero point, bias and ReLU fused in the epilogue.

    a: [..., M, K] per tensor or per row (dim=-2 / 0 for 2-D), symmetric or not.
    b: [K, N], symmetric, per tensor or per column (dim=1).
    out_dtype: bfloat16, float16, float32, or int8 (then out_scale is required).
    relu: max(y, 0) before the output conversion (NaN stays NaN); with int8 output the
    requantized values are then at least out_zero_point.
    """
    _check_channel_dim(a, "a", -2, "per row (dim=0)")
    _check_channel_dim(b, "b", 1, "per column (dim=1)")
    _check_symmetric(b, "scaled_gemm", "b")
    out_scale = _out_scale_arg("scaled_gemm", out_dtype, out_scale)
    return _ops.scaled_gemm(
        a.data, b.data, a.scale, b.scale, a.zero_point, bias, out_dtype, out_scale, int(out_zero_point), bool(relu)
    )


def scaled_gemm_row_amax(
    a: QTensor,
    b: QTensor,
    bias: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.bfloat16,
    relu: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """scaled_gemm with a float output, and max |out| of every row written by the same epilogue:
    (out [..., M, N], row_amax float32 [..., M]), the maxima of the values as stored (after rounding
    to out_dtype; NaN for a row holding NaN). The next layer's per-row scale (row_amax / 127) then
    needs no pass over out. out_dtype: bfloat16, float16 or float32.
    """
    _check_channel_dim(a, "a", -2, "per row (dim=0)")
    _check_channel_dim(b, "b", 1, "per column (dim=1)")
    _check_symmetric(b, "scaled_gemm_row_amax", "b")
    return _ops.scaled_gemm_row_amax(a.data, b.data, a.scale, b.scale, a.zero_point, bias, out_dtype, bool(relu))


def requantize(
    acc: torch.Tensor, scale, zero_point: int = 0, *, mode: str = "float"
) -> torch.Tensor:
    """int32 -> int8: clamp(round(acc * scale) + zero_point).

    scale: a float, or a float32 tensor with one element or one per channel of
    the last dimension. mode="float" rounds a float32 product half to even;
    mode="fixed_point" uses gemmlowp/TFLite integer arithmetic (int32
    multiplier and rounding shift), bit-identical on CPU and GPU.
    """
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=torch.float32, device=acc.device)
    return _ops.requantize(acc, scale, int(zero_point), mode)
