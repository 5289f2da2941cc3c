"""NITI's integer arithmetic: int8 values times one power-of-two exponent per tensor.

Every quantity here is a torch tensor on the data's device, the exponents and shifts included
(0-d int tensors), so nothing reads a value on the host: a training step never synchronizes and
can be captured in a CUDA graph. All of it is integer arithmetic, so the same inputs give the same
bits on the CPU and on every GPU kernel family.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

INT8_BITS = 7  # an int8 magnitude has 7 bits (values are kept in [-127, 127])
INT8_MAX = 127
ROUNDINGS = ("pseudo_stochastic", "stochastic")  # the weight-gradient (and loss error) rounding choices
_RANDOM_BITS = 62  # true stochastic rounding draws uniform integers in [0, 2^62), enough for any shift


class IntTensor(NamedTuple):
    """``data * 2**exp``: int8 data and a 0-d int32 exponent on the same device."""
    data: torch.Tensor
    exp: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        """float32 values (exact: an int8 times a power of two)."""
        return torch.ldexp(self.data.float(), self.exp.float())


def max_abs(t: torch.Tensor) -> torch.Tensor:
    """max |t| over the whole tensor as a 0-d int64 (no abs of the int32 minimum, no host read)."""
    return torch.maximum(t.amax().long(), t.amin().long().neg())


def bit_length(m: torch.Tensor) -> torch.Tensor:
    """Bits of a non-negative 0-d int64 (0 for 0): the number of k in [0, 63) with m >> k > 0."""
    ks = torch.arange(63, device=m.device, dtype=torch.int64)
    return ((m.unsqueeze(-1) >> ks) > 0).sum(-1)


def shift_to_bits(t: torch.Tensor, bits) -> torch.Tensor:
    """The right shift that leaves max|t| with at most ``bits`` bits: max(bit_length - bits, 0)."""
    return torch.clamp(bit_length(max_abs(t)) - bits, min=0)


def _pow2(shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.bitwise_left_shift(torch.ones((), dtype=dtype, device=shift.device), shift.to(dtype))


def shift_round_nearest(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """t / 2^shift rounded to nearest, halves up: floor(t / 2^shift) plus the highest discarded bit
    (two's complement, so negatives round as positives do). Same dtype as t; shift 0 is exact."""
    s = shift.to(t.dtype)
    half = _pow2(s, t.dtype) >> 1
    return (t >> s) + ((t & half) != 0).to(t.dtype)


def shift_round_stochastic(t: torch.Tensor, shift: torch.Tensor,
                           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """t / 2^shift rounded up with probability (discarded part) / 2^shift: floor plus [r < rem], r
    uniform in [0, 2^shift). Unbiased for every value of either sign (NITI took x // 2^shift for
    truncation toward zero and then stepped away from zero, which biases negatives). int64."""
    t = t.long()
    s = shift.long()
    rem = t & (_pow2(s, torch.int64) - 1)
    r = torch.randint(0, 2**_RANDOM_BITS, t.shape, dtype=torch.int64, device=t.device, generator=generator)
    r = r >> (_RANDOM_BITS - s)
    return (t >> s) + (r < rem).long()


def shift_round_pseudo_stochastic(t: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """NITI's pseudo-stochastic rounding, on magnitudes: |t| / 2^shift rounds up when the upper half
    of the discarded bits exceeds the lower half (its random number; an odd shift's lower half is
    doubled to the upper half's width), and the sign is put back. An odd function of t, so negative
    and positive values are rounded alike. No random numbers. int64."""
    t = t.long()
    s = shift.long()
    mag = t.abs()
    low_bits = s // 2
    high_bits = s - low_bits
    rem = mag & (_pow2(s, torch.int64) - 1)
    upper = rem >> low_bits
    lower = (rem & (_pow2(low_bits, torch.int64) - 1)) << (high_bits - low_bits)
    q = (mag >> s) + (upper > lower).long()
    return torch.where(t < 0, -q, q)


def check_rounding(rounding: str) -> str:
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return rounding


def shift_round(t: torch.Tensor, shift: torch.Tensor, rounding: str,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """shift_round_pseudo_stochastic or shift_round_stochastic by name."""
    if check_rounding(rounding) == "stochastic":
        return shift_round_stochastic(t, shift, generator)
    return shift_round_pseudo_stochastic(t, shift)


def to_int8(t: torch.Tensor) -> torch.Tensor:
    return torch.clamp(t, -INT8_MAX, INT8_MAX).to(torch.int8)


def requantize(acc: torch.Tensor, exp: torch.Tensor) -> IntTensor:
    """An integer accumulator (value acc * 2^exp) back to int8: shift = bit_length(max|acc|) - 7 (0 if
    negative), rounded to nearest; the exponent grows by the shift."""
    shift = shift_to_bits(acc, INT8_BITS)
    return IntTensor(to_int8(shift_round_nearest(acc, shift)), (exp + shift).to(torch.int32))


# Exponent gaps up to this are aligned exactly in int64 (127 * 2^48 is far below 2^63). Across a
# wider gap the smaller operand sits below the result's rounding step by more than 2^40, so it only
# decides ties, with the same sign as exact arithmetic would: the result is the same.
_MAX_ALIGN = 48


def add(a: IntTensor, b: IntTensor) -> IntTensor:
    """a + b: both aligned to the smaller exponent (left shifts, exact in int64), added, requantized."""
    gap = a.exp.long() - b.exp.long()
    shift_a = torch.clamp(gap, 0, _MAX_ALIGN)
    shift_b = torch.clamp(-gap, 0, _MAX_ALIGN)
    exp = torch.maximum(a.exp, b.exp).long() - torch.maximum(shift_a, shift_b)
    acc = (a.data.long() << shift_a) + (b.data.long() << shift_b)
    return requantize(acc, exp)


def quantize_input(x: torch.Tensor) -> IntTensor:
    """Float images to int8 with one exponent for the batch: exp = ceil(log2 max|x|) - 7 and data =
    round(x / 2^exp) (exact float steps: frexp, ldexp, round). An all-zero batch gets exponent 0."""
    if not x.is_floating_point():
        raise TypeError(f"quantize_input: images must be a float tensor, got {x.dtype}")
    amax = x.detach().abs().amax().float()
    mantissa, e = torch.frexp(amax)  # amax = mantissa * 2^e, mantissa in [0.5, 1)
    ceil_log2 = torch.where(mantissa == 0.5, e - 1, e)
    exp = torch.where(amax > 0, ceil_log2 - INT8_BITS, torch.zeros_like(e)).to(torch.int32)
    data = torch.round(torch.ldexp(x.detach().float(), (-exp).float()))
    return IntTensor(to_int8(data), exp)
