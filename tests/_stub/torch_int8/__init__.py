"""Throwaway pure-PyTorch stub of torch_int8 used only to exercise the test-suite (not part of the repo)."""
import math
from dataclasses import dataclass
from typing import Optional
import torch

MAX_K = 131071

@dataclass
class QTensor:
    data: torch.Tensor
    scale: torch.Tensor
    zero_point: Optional[torch.Tensor]
    dim: Optional[int]

@torch.library.custom_op("int8::gemm", mutates_args=())
def _gemm_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.double(), b.double()).to(torch.int32)

@_gemm_op.register_fake
def _(a, b):
    shape = list(a.shape[:-1]) + [b.shape[-1]]
    return a.new_empty(shape, dtype=torch.int32)

def gemm(a, b):
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"gemm: int8 inputs expected, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError("gemm: device mismatch")
    if a.dim() not in (2, 3) or b.dim() not in (2, 3) or (a.dim() == 2 and b.dim() == 3):
        raise ValueError("gemm: bad rank")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError("gemm: K mismatch (shape)")
    if a.dim() == 3 and b.dim() == 3 and a.shape[0] != b.shape[0]:
        raise ValueError("gemm: batch size mismatch")
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("gemm: empty")
    if a.shape[-1] > MAX_K:
        raise ValueError("gemm: K too large")
    return torch.ops.int8.gemm(a, b)

def _red(x, dim, op):
    if dim is None:
        return op(x.reshape(-1))
    others = [i for i in range(x.dim()) if i != dim]
    return op(x, dim=others) if others else x

def quantize(x, dim=None, *, symmetric=True, rounding="nearest", generator=None):
    if not x.is_floating_point():
        raise TypeError("quantize: float input expected")
    if rounding not in ("nearest", "stochastic"):
        raise ValueError("bad rounding")
    if x.numel() == 0:
        raise ValueError("empty")
    if dim is not None:
        if not -x.dim() <= dim < max(x.dim(), 1):
            raise IndexError("dim out of range")
        dim = dim % x.dim()
    xf = x.float()
    bshape = [1] * xf.dim()
    if dim is not None:
        bshape[dim] = -1
    fin = _red(torch.isfinite(xf), dim, lambda t, **k: t.all(**k) if not k else t.amin(**k)) if False else None
    finite = _red(torch.isfinite(xf).to(torch.int32), dim, lambda t, **k: t.amin(**k)).bool()
    xz = torch.where(torch.isfinite(xf), xf, torch.zeros_like(xf))
    if symmetric:
        amax = _red(xz.abs(), dim, lambda t, **k: t.amax(**k))
        scale = torch.where(amax == 0, torch.ones_like(amax), amax / 127.0)
        sb = scale.reshape(bshape) if dim is not None else scale
        v = xz / sb
        zp = None
        lo = -127
        zpb = 0
    else:
        mx = _red(xz, dim, lambda t, **k: t.amax(**k)).clamp_min(0)
        mn = _red(xz, dim, lambda t, **k: t.amin(**k)).clamp_max(0)
        scale = torch.where(mx == mn, torch.ones_like(mx), (mx - mn) / 255.0)
        zpf = torch.round(-128.0 - mn / scale).clamp(-128, 127)
        sb = scale.reshape(bshape) if dim is not None else scale
        zpb = zpf.reshape(bshape) if dim is not None else zpf
        v = xz / sb
        zp = zpf.to(torch.int32)
        lo = -128
    if rounding == "nearest":
        r = torch.round(v)
    else:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        r = torch.floor(v + u)
    data = torch.clamp(r + zpb, lo, 127).to(torch.int8)
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    return QTensor(data, scale, zp, dim)

def dequantize(q, dtype=torch.float32):
    nd = q.data.dim()
    def b(t):
        if q.dim is None or t.dim() == 0:
            return t
        s = [1] * nd; s[q.dim] = -1
        return t.reshape(s)
    d = q.data.to(torch.int32)
    if q.zero_point is not None:
        d = d - b(q.zero_point)
    return (d.float() * b(q.scale)).to(dtype)

def scaled_gemm(a, b, bias=None, out_dtype=torch.bfloat16, out_scale=None, out_zero_point=0):
    if a.data.dtype != torch.int8 or b.data.dtype != torch.int8:
        raise TypeError("int8 data expected")
    if out_dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.int8):
        raise TypeError("bad out_dtype")
    if b.zero_point is not None:
        raise ValueError("b must be symmetric")
    if b.dim not in (None, 1) or a.dim not in (None, 0):
        raise ValueError("bad dim")
    M, K = a.data.shape
    K2, N = b.data.shape
    if K != K2:
        raise ValueError("shape mismatch")
    if a.data.device != b.data.device or (bias is not None and bias.device != a.data.device):
        raise ValueError("device mismatch")
    if tuple(a.scale.shape) != (() if a.dim is None else (M,)) or tuple(b.scale.shape) != (() if b.dim is None else (N,)):
        raise ValueError("scale size")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError("bias size")
    if out_dtype == torch.int8:
        if out_scale is None or not math.isfinite(out_scale):
            raise ValueError("out_scale")
    acc = torch.ops.int8.gemm(a.data, b.data)
    if a.zero_point is not None:
        zp = a.zero_point.reshape(-1, 1) if a.zero_point.dim() else a.zero_point
        acc = acc - zp * b.data.to(torch.int32).sum(0, keepdim=True)
    sa = a.scale.reshape(-1, 1) if a.scale.dim() else a.scale
    sb = b.scale.reshape(1, -1) if b.scale.dim() else b.scale
    v = acc.float() * (sa * sb)
    if bias is not None:
        v = v + bias.float()
    if out_dtype == torch.int8:
        return torch.clamp(torch.round(v / out_scale) + out_zero_point, -128, 127).to(torch.int8)
    return v.to(out_dtype)

def _qm(scale):
    s = scale.double()
    mant, ex = torch.frexp(s)
    q = torch.floor(mant * 2.0**31 + 0.5).long()
    ex = ex.long()
    big = q == 2**31
    q = torch.where(big, q // 2, q); ex = torch.where(big, ex + 1, ex)
    tiny = ex < -31
    return torch.where(tiny, 0, q), torch.where(tiny, 0, ex)

def requantize(acc, scale, zero_point=0, *, mode="float"):
    if acc.dtype != torch.int32:
        raise TypeError("acc must be int32")
    if mode not in ("float", "fixed_point"):
        raise ValueError("mode")
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=torch.float32, device=acc.device)
    if scale.dim() == 1 and scale.shape[0] != acc.shape[-1]:
        raise ValueError("per-channel scale length")
    if not (torch.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scale must be positive and finite")
    if mode == "float":
        v = torch.round(acc.float() * scale.float()) + zero_point
        return v.clamp(-128, 127).to(torch.int8)
    m, sh = _qm(scale)
    x = acc.long()
    left = sh.clamp_min(0); right = (-sh).clamp_min(0)
    x = (x * (1 << left)).clamp(-2**31, 2**31 - 1)
    ab = x * m
    nudge = torch.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    hi = torch.div(ab + nudge, 2**31, rounding_mode="trunc")
    mask = (1 << right) - 1
    rem = hi & mask
    thr = (mask >> 1) + (hi < 0).long()
    r = (hi >> right) + (rem > thr).long()
    return (r + zero_point).clamp(-128, 127).to(torch.int8)
