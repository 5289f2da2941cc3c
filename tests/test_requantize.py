"""torch_int8.requantize: int32 accumulator -> int8, "float" and "fixed_point" (TFLite / gemmlowp) modes."""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
import torch

import torch_int8
from conftest import (
    DEVICE_PARAMS,
    INT32_MAX,
    INT32_MIN,
    make_gen,
    quantize_multiplier,
    ref_requantize_fixed_point,
    ref_requantize_float,
)

ZERO_POINTS = [-10, 0, 7]


def f32(v: float) -> float:
    """v rounded to float32, so that the scale means the same as a Python float and a float32 tensor."""
    return float(torch.tensor(v, dtype=torch.float32))


# scales in [1e-6, 0.999], powers of two (exact ties in RoundingDivideByPOT), 1 and a few > 1,
# and one so small that QuantizeMultiplier flushes it to a zero multiplier (shift < -31)
SCALES = [f32(s) for s in (1e-6, 3.3e-5, 0.00123, 0.0173, 0.1, 0.333, 0.999, 2.0**-10, 2.0**-20, 0.25, 0.5, 1.0,
                           1.5, 3.0, 100.0, 1e-12)]


def special_acc():
    vals = [INT32_MIN, INT32_MIN + 1, INT32_MAX, INT32_MAX - 1, 0, 1, -1, 2, -2, 3, -3, 127, -128, 255, -255,
            1 << 30, -(1 << 30), (1 << 30) - 1, 1 << 24, (1 << 24) + 1, -(1 << 24) - 1]
    return torch.tensor(vals, dtype=torch.int64)


def make_acc(shape, scale_hint, seed):
    """int32 accumulators: full range, the range that maps into int8 for scale_hint, small values, ties."""
    g = make_gen(seed)
    n = math.prod(shape)
    full = torch.randint(INT32_MIN, INT32_MAX + 1, (n,), dtype=torch.int64, generator=g)
    span = min(float(INT32_MAX), 140.0 / scale_hint)
    inrange = ((torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * span).round().to(torch.int64)
    small = torch.randint(-300, 301, (n,), dtype=torch.int64, generator=g)
    # x such that x*scale_hint is (about) an odd multiple of 0.5: rounding ties
    k = torch.randint(-260, 261, (n,), dtype=torch.int64, generator=g)
    ties = ((k.double() + 0.5) / scale_hint).round().clamp(INT32_MIN, INT32_MAX).to(torch.int64)
    pick = torch.randint(0, 4, (n,), generator=g)
    acc = torch.where(pick == 0, full, torch.where(pick == 1, inrange, torch.where(pick == 2, small, ties)))
    sp = special_acc()
    m = min(n, sp.numel())
    acc[:m] = sp[:m]
    return acc.clamp(INT32_MIN, INT32_MAX).to(torch.int32).reshape(shape)


def check_out(out, acc, expected, device):
    assert out.dtype == torch.int8
    assert tuple(out.shape) == tuple(acc.shape)
    assert out.device.type == torch.device(device).type
    out = out.cpu()
    if not torch.equal(out, expected):
        bad = (out != expected).nonzero()
        i = tuple(bad[0].tolist())
        pytest.fail(
            f"{bad.shape[0]} of {out.numel()} differ; first at {i}: acc {int(acc.cpu()[i])} -> "
            f"{int(out[i])}, expected {int(expected[i])}"
        )


# ------------------------------------------------------------------------------------------------
# fixed point (TFLite QuantizeMultiplier + gemmlowp)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("zero_point", ZERO_POINTS)
def test_fixed_point_per_tensor(device, scale, zero_point):
    acc = make_acc((24, 37), scale, seed=int(scale * 1e6) % 10007 + zero_point).to(device)
    expected = ref_requantize_fixed_point(acc, scale, zero_point)
    out = torch_int8.requantize(acc, scale, zero_point, mode="fixed_point")
    check_out(out, acc, expected, device)
    # the same scale as a 0-d float32 tensor
    out_t = torch_int8.requantize(acc, torch.tensor(scale, device=device), zero_point, mode="fixed_point")
    check_out(out_t, acc, expected, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("zero_point", ZERO_POINTS)
@pytest.mark.parametrize("shape", [(19, 45), (45,), (3, 5, 45)])
def test_fixed_point_per_channel(device, zero_point, shape):
    N = shape[-1]
    g = make_gen(N + zero_point)
    # log-uniform in [1e-6, 0.999], plus a few fixed ones (> 1, powers of two)
    log_s = torch.rand(N, generator=g, dtype=torch.float64) * (math.log(0.999) - math.log(1e-6)) + math.log(1e-6)
    scale = log_s.exp().float()
    scale[:6] = torch.tensor([1.5, 3.0, 1.0, 0.5, 2.0**-12, 0.999])
    acc = torch.empty(shape, dtype=torch.int32)
    for j in range(N):  # per channel, values in the range that matters for its scale
        acc[..., j] = make_acc(shape[:-1] or (1,), float(scale[j]), seed=j).reshape(shape[:-1])
    acc = acc.to(device)
    expected = ref_requantize_fixed_point(acc, scale, zero_point)
    out = torch_int8.requantize(acc, scale.to(device), zero_point, mode="fixed_point")
    check_out(out, acc, expected, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_fixed_point_noncontiguous(device):
    acc = make_acc((40, 30), 0.01, seed=3).to(device)
    scale = torch.linspace(0.001, 0.05, 40)
    at = acc.t()  # [30, 40], channels along the strided last dim
    check_out(torch_int8.requantize(at, scale.to(device), 3, mode="fixed_point"), at,
              ref_requantize_fixed_point(at, scale, 3), device)
    sl = acc[::2, 1::3]
    check_out(torch_int8.requantize(sl, f32(0.01), -4, mode="fixed_point"), sl,
              ref_requantize_fixed_point(sl, f32(0.01), -4), device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_fixed_point_exhaustive_small_range(device):
    # every acc in [-70000, 70000] for a scale with a multiplier that is not a power of two
    scale = f32(0.0013)
    mult, shift = quantize_multiplier(scale)
    assert mult not in (0, 1 << 30) and shift < 0
    acc = torch.arange(-70000, 70001, dtype=torch.int32)
    expected = ref_requantize_fixed_point(acc, scale, 0)
    out = torch_int8.requantize(acc.to(device), scale, 0, mode="fixed_point")
    check_out(out, acc, expected, device)


# ------------------------------------------------------------------------------------------------
# float mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("zero_point", ZERO_POINTS)
def test_float_per_tensor(device, scale, zero_point):
    acc = make_acc((24, 37), scale, seed=int(scale * 1e6) % 10007 + zero_point + 1).to(device)
    expected = ref_requantize_float(acc, scale, zero_point)
    out = torch_int8.requantize(acc, scale, zero_point, mode="float")
    check_out(out, acc, expected, device)
    out_default = torch_int8.requantize(acc, torch.tensor(scale, device=device), zero_point)  # mode="float"
    check_out(out_default, acc, expected, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("zero_point", ZERO_POINTS)
@pytest.mark.parametrize("shape", [(19, 45), (45,), (3, 5, 45)])
def test_float_per_channel(device, zero_point, shape):
    N = shape[-1]
    g = make_gen(N + 100 + zero_point)
    scale = (torch.rand(N, generator=g, dtype=torch.float64) * 12 - 12).exp().float()  # e^-12 .. 1
    scale[:3] = torch.tensor([1.5, 3.0, 0.5])
    acc = torch.empty(shape, dtype=torch.int32)
    for j in range(N):
        acc[..., j] = make_acc(shape[:-1] or (1,), float(scale[j]), seed=1000 + j).reshape(shape[:-1])
    acc = acc.to(device)
    expected = ref_requantize_float(acc, scale, zero_point)
    out = torch_int8.requantize(acc, scale.to(device), zero_point, mode="float")
    check_out(out, acc, expected, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_float_half_even_ties(device):
    acc = torch.tensor([1, 3, 5, -1, -3, -5, 253, 255, 257, -255, -257], dtype=torch.int32)
    out = torch_int8.requantize(acc.to(device), 0.5, 0, mode="float").cpu()
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, ..., 126.5 -> 126, 127.5 -> 128 -> clamps to 127, -127.5 -> -128
    expected = torch.tensor([0, 2, 2, 0, -2, -2, 126, 127, 127, -128, -128], dtype=torch.int8)
    assert torch.equal(out, expected), out


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
def test_modes_agree_roughly(device, mode):
    # both modes approximate round(acc*scale)+zp: they differ by at most one step
    scale = f32(0.00731)
    acc = make_acc((50, 20), scale, seed=11).to(device)
    out = torch_int8.requantize(acc, scale, 2, mode=mode).cpu().long()
    approx = torch.clamp(torch.round(acc.cpu().double() * scale) + 2, -128, 127).long()
    assert (out - approx).abs().max() <= 1


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int64, torch.float32, torch.uint8], ids=str)
def test_error_acc_dtype(device, mode, dtype):
    acc = torch.ones((4, 5), dtype=dtype, device=device)
    with pytest.raises(TypeError):
        torch_int8.requantize(acc, 0.1, 0, mode=mode)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["fixed", "", "FLOAT", "fixed-point", "nearest"])
def test_error_bad_mode(device, mode):
    acc = torch.ones((4, 5), dtype=torch.int32, device=device)
    with pytest.raises(ValueError):
        torch_int8.requantize(acc, 0.1, 0, mode=mode)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
@pytest.mark.parametrize("scale", [0.0, -0.5, -1e-6, math.nan, math.inf, -math.inf])
def test_error_bad_scale(device, mode, scale):
    acc = torch.ones((4, 5), dtype=torch.int32, device=device)
    with pytest.raises(ValueError):
        torch_int8.requantize(acc, scale, 0, mode=mode)
    with pytest.raises(ValueError):
        torch_int8.requantize(acc, torch.tensor(scale, device=device), 0, mode=mode)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
@pytest.mark.parametrize("bad", [0.0, -0.25, math.nan, math.inf])
def test_error_bad_per_channel_scale_entry(device, mode, bad):
    acc = torch.ones((4, 5), dtype=torch.int32, device=device)
    scale = torch.full((5,), 0.1)
    scale[3] = bad
    with pytest.raises(ValueError):
        torch_int8.requantize(acc, scale.to(device), 0, mode=mode)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("mode", ["float", "fixed_point"])
@pytest.mark.parametrize("n", [4, 6, 21])
def test_error_per_channel_length(device, mode, n):
    acc = torch.ones((4, 5), dtype=torch.int32, device=device)
    with pytest.raises(ValueError):
        torch_int8.requantize(acc, torch.full((n,), 0.1, device=device), 0, mode=mode)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("scale", [2.0**31, 2.0**32, 2.0**40, 3.0e38])
def test_fixed_point_scales_beyond_int32_saturate(device, scale):
    # A shift of 32 and more once overflowed the int64 product and flipped signs.
    acc = torch.tensor([2**31 - 1, -2**31, 4194304, 1, -1, 0], dtype=torch.int32, device=device)
    out = torch_int8.requantize(acc, scale, 0, mode="fixed_point")
    expected = torch.tensor([127, -128, 127, 127, -128, 0], dtype=torch.int8)
    check_out(out, acc, expected, device)
    check_out(out, acc, ref_requantize_fixed_point(acc, scale, 0), device)
    check_out(torch_int8.requantize(acc, scale, 0, mode="float"), acc, expected, device)
