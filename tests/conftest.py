"""Shared pytest configuration and pure-Python reference helpers for the torch_int8 tests.

Every test that touches a kernel is parametrized over ``DEVICE_PARAMS`` (through the ``device``
fixture): "cpu" always runs; "cuda" carries the ``cuda`` marker and is skipped without a GPU, so
``pytest -m cuda`` selects the GPU half and ``pytest -m "not cuda"`` the CPU half.

The helpers are imported by the test modules with ``from conftest import ...`` (the test modules put
this directory on ``sys.path`` first, so that works under any ``--import-mode``).
"""

from __future__ import annotations

import contextlib
import math
import os

import pytest
import torch

# Every output buffer the ops allocate starts as garbage (NaN / 0xA5...), so an
# element a kernel forgets to write cannot pass as a correct zero.
os.environ.setdefault("TORCH_INT8_POISON", "1")

HAS_CUDA = torch.cuda.is_available()

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
MAX_K = 131071  # largest K torch_int8.gemm accepts (131072 * 128 * 128 == 2**31)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: test runs on a CUDA device (skipped without a GPU)")
    config.addinivalue_line("markers", "slow: long-running test")
    config.addinivalue_line(
        "markers",
        "cuda_graph: captures a CUDA graph (left out of compute-sanitizer runs: the tools' own calls on "
        "the legacy stream and memcheck's uncached allocator both invalidate a capture)",
    )


def devices():
    """["cpu"] plus "cuda" when a GPU is available."""
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


_CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")]

# Use with @pytest.mark.parametrize("device", DEVICE_PARAMS) or through the ``device`` fixture.
DEVICE_PARAMS = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=_CUDA_MARKS)]
# For tests that only make sense on a GPU (e.g. cpu/cuda device mismatch, very large shapes).
CUDA_ONLY = [pytest.param("cuda", id="cuda", marks=_CUDA_MARKS)]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


# ------------------------------------------------------------------------------------------------
# random data
# ------------------------------------------------------------------------------------------------


def make_gen(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def rand_int8(shape, seed: int, low: int = -128, high: int = 128) -> torch.Tensor:
    """Seeded uniform int8 values in [low, high) on the CPU (move with .to(device))."""
    return torch.randint(low, high, tuple(shape), dtype=torch.int8, generator=make_gen(seed))


# ------------------------------------------------------------------------------------------------
# gemm reference
# ------------------------------------------------------------------------------------------------


def int64_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int64 product of int8 operands, computed on the CPU (matmul broadcasting for batches)."""
    return torch.matmul(a.detach().cpu().long(), b.detach().cpu().long())


def int64_ref_as_int32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ref = int64_ref(a, b)
    if ref.numel():
        assert int(ref.max()) <= INT32_MAX and int(ref.min()) >= INT32_MIN, "reference overflows int32"
    return ref.to(torch.int32)


# ------------------------------------------------------------------------------------------------
# quantize reference (float32 input, computed in float32 exactly as docs/api.md says)
# ------------------------------------------------------------------------------------------------


def _reduce_keep(x: torch.Tensor, dim, op):
    """Reduce over every dimension except ``dim`` (all of them if dim is None), keepdim."""
    if dim is None:
        return op(x.reshape(-1)).reshape([1] * x.dim())
    d = dim % x.dim()
    others = [i for i in range(x.dim()) if i != d]
    y = x
    for i in sorted(others, reverse=True):
        y = op(y, i, keepdim=True)
    return y


def _amax(x, *dims, keepdim=False):
    return x.amax(*dims, keepdim=keepdim) if dims else x.amax()


def _amin(x, *dims, keepdim=False):
    return x.amin(*dims, keepdim=keepdim) if dims else x.amin()


def ref_quantize(x: torch.Tensor, dim=None, symmetric: bool = True, scale=None):
    """Reference nearest-rounding quantization of a finite float32 tensor (on the CPU).

    Returns (data int8, scale float32 with the shape the API gives, zero_point int32 or None), where
    scale is 0-d for dim=None and 1-D [x.shape[dim]] otherwise. With ``scale`` given (in that shape),
    the zero point and the data are computed from it instead of from the range of x.
    """
    x = x.detach().cpu().float()
    given = None
    if scale is not None:
        given = scale.detach().cpu().float()
        given = given.reshape([1] * x.dim()) if dim is None else bcast(given, x.dim(), dim)
    if symmetric:
        amax = _reduce_keep(x.abs(), dim, _amax)
        scale = amax / torch.tensor(127.0, dtype=torch.float32)
        scale = torch.where(amax == 0, torch.ones_like(scale), scale)
        if given is not None:
            scale = given
        data = torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8)
        zp = None
    else:
        mx = torch.clamp(_reduce_keep(x, dim, _amax), min=0.0)
        mn = torch.clamp(_reduce_keep(x, dim, _amin), max=0.0)
        scale = (mx - mn) / torch.tensor(255.0, dtype=torch.float32)
        scale = torch.where(mx == mn, torch.ones_like(scale), scale)
        if given is not None:
            scale = given
        zpf = torch.clamp(torch.round(torch.tensor(-128.0) - mn / scale), -128, 127)
        data = torch.clamp(torch.round(x / scale) + zpf, -128, 127).to(torch.int8)
        zp = zpf.to(torch.int32)
    if dim is None:
        scale = scale.reshape(())
        zp = None if zp is None else zp.reshape(())
    else:
        scale = scale.reshape(-1)
        zp = None if zp is None else zp.reshape(-1)
    return data, scale, zp


def check_quantize_against_reference(q, x: torch.Tensor, dim, symmetric: bool):
    """q = quantize(x, dim, symmetric=symmetric) (nearest rounding, finite float32 x) vs ref_quantize.

    On the CPU the scale must be bit-identical to amax/127 resp. (max-min)/255. On a GPU, ATen's
    division by a scalar is a multiplication by its reciprocal, so there the scale may be one ulp
    off. Zero point and data must then be exactly what that scale gives.
    """
    _, ref_scale, _ = ref_quantize(x, dim, symmetric)
    got_scale = q.scale.detach().cpu()
    assert got_scale.dtype == torch.float32 and got_scale.shape == ref_scale.shape
    if q.scale.device.type == "cpu":
        assert torch.equal(got_scale, ref_scale), (got_scale, ref_scale)
    else:
        torch.testing.assert_close(got_scale, ref_scale, rtol=2.0**-23, atol=0)
    data, _, zp = ref_quantize(x, dim, symmetric, scale=got_scale)
    if not symmetric:
        assert torch.equal(q.zero_point.detach().cpu(), zp), (q.zero_point, zp)
    got = q.data.detach().cpu()
    assert torch.equal(got, data), f"{int((got != data).sum())} of {data.numel()} data entries differ"


def bcast(v: torch.Tensor, ndim: int, dim):
    """View a per-slice vector (or 0-d scalar) so that it broadcasts along ``dim`` of an ndim tensor."""
    if dim is None or v.dim() == 0:
        return v
    shape = [1] * ndim
    shape[dim % ndim] = -1
    return v.reshape(shape)


# ------------------------------------------------------------------------------------------------
# requantize reference (pure Python integers: TFLite QuantizeMultiplier + gemmlowp)
# ------------------------------------------------------------------------------------------------


def _c_div(n: int, d: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def _sat32(v: int) -> int:
    return max(INT32_MIN, min(INT32_MAX, v))


def quantize_multiplier(scale: float):
    """TFLite QuantizeMultiplier: double scale -> (int32 multiplier, shift)."""
    scale = float(scale)
    if scale == 0.0:
        return 0, 0
    frac, shift = math.frexp(scale)
    # TfLiteRound is std::round (half away from zero); frac > 0 here
    q = int(math.floor(frac * (1 << 31) + 0.5))
    assert q <= (1 << 31)
    if q == (1 << 31):
        q //= 2
        shift += 1
    if shift < -31:
        shift = 0
        q = 0
    assert 0 <= q <= INT32_MAX
    return q, shift


def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return _c_div(ab + nudge, 1 << 31)


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT (round half away from zero), 0 <= exponent <= 31."""
    assert 0 <= exponent <= 31
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, mult: int, shift: int) -> int:
    left = shift if shift > 0 else 0
    right = -shift if shift < 0 else 0
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_sat32(x * (1 << left)), mult), right)


def ref_requantize_fixed_point(acc: torch.Tensor, scale, zero_point: int = 0) -> torch.Tensor:
    """Reference for requantize(acc, scale, zero_point, mode="fixed_point"); scale float, 0-d or [N]."""
    acc_cpu = acc.detach().cpu().to(torch.int64)
    n = acc_cpu.shape[-1] if acc_cpu.dim() else 1
    if isinstance(scale, torch.Tensor):
        s = scale.detach().cpu().double().reshape(-1).tolist()
    else:
        s = [float(scale)]
    if len(s) == 1:
        params = [quantize_multiplier(s[0])] * n
    else:
        assert len(s) == n
        params = [quantize_multiplier(v) for v in s]
    flat = acc_cpu.reshape(-1, n).tolist()
    out = []
    for row in flat:
        out.append(
            [
                max(-128, min(127, multiply_by_quantized_multiplier(v, *params[j]) + zero_point))
                for j, v in enumerate(row)
            ]
        )
    return torch.tensor(out, dtype=torch.int8).reshape(acc_cpu.shape)


def ref_requantize_float(acc: torch.Tensor, scale, zero_point: int = 0) -> torch.Tensor:
    """Reference for requantize(acc, scale, zero_point, mode="float") in float32 (round half even)."""
    a = acc.detach().cpu().float()
    if isinstance(scale, torch.Tensor):
        s = scale.detach().cpu().float()
    else:
        s = torch.tensor(float(scale), dtype=torch.float32)
    v = torch.round(a * s) + zero_point
    return torch.clamp(v, -128, 127).to(torch.int8)


def quant_step(t: torch.Tensor, dim):
    """The absmax int8 quantization step of t per slice along dim (None: per tensor), shaped to
    broadcast against t."""
    if dim is None:
        return t.abs().amax() / 127
    dims = [d for d in range(t.dim()) if d != dim]
    return t.abs().amax(dim=dims, keepdim=True) / 127


def check_within(got: torch.Tensor, ref: torch.Tensor, bound, slack: float = 1e-5) -> None:
    """|got - ref| within the quantization error bound (plus slack for the output dtype's rounding),
    and not zero everywhere: the INT8 path ran (a float path would be exact to ~1e-7)."""
    err = (got.double() - ref).abs()
    assert torch.all(err <= bound * 1.001 + slack * (1 + ref.abs())), float((err - bound).max())
    assert err.max() > 0


@contextlib.contextmanager
def forced_family(name: str):
    """Forces GEMM kernel family `name` (torch_int8.use_backend) for the duration; skips the
    test where that family's code cannot run on this GPU."""
    import torch_int8

    major, minor = torch.cuda.get_device_capability()
    with torch_int8.use_backend(name):
        if torch_int8._C.gemm_backend(major * 10 + minor) != name:
            pytest.skip(f"{name} kernels cannot run on sm_{major}{minor}")
        yield name
