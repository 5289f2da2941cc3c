"""NITI's integer softmax cross-entropy: the error (softmax - onehot) * 128 as int8, exponent -7.

softmax(v)_i = 2^(v_i log2 e) / sum_j 2^(v_j log2 e), computed in integers from the int8 logits q
with exponent e (v = q * 2^e): t = q * round(log2(e) * 2^15) minus its row maximum (t <= 0), as
fixed point with 16 fraction bits z = t * 2^(e - 15 + 16) (a shift either way, floored); then
2^z = 2^floor(z) * 2^frac(z), the fraction's power by a quadratic with exact ends (0.27% at most) in
Q16, the integer part a right shift. The probabilities get 8 bits below int8's unit, (softmax -
onehot) * 2^15 floored, and are rounded down those 8 bits as the weight gradients are (pseudo-
stochastically or stochastically, unbiased where nearest rounding would zero every small class).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .arith import INT8_BITS, IntTensor, shift_round, to_int8

LOG2E_Q15 = 47274  # round(log2(e) * 2^15)
_FRAC = 16  # fraction bits of the exponent z
_POW2_A, _POW2_B = 43269, 22267  # 2^f ~ 1 + f (a + b f), a + b = 1, in Q16 (fitted for the least max error)
_ERR_FRAC = 8  # bits kept below the error's unit before rounding
_MAX_LEFT = 32  # beyond it every non-maximal class is 2^-(2^16) or less: 0 either way


def _pow2_fraction_q16(f: torch.Tensor) -> torch.Tensor:
    """2^(f / 2^16) * 2^16 for f in [0, 2^16), int64 in [2^16, 2^17)."""
    return (1 << _FRAC) + ((f * (_POW2_A + ((_POW2_B * f) >> _FRAC))) >> _FRAC)


def softmax_q16(logits: IntTensor) -> torch.Tensor:
    """Unnormalized integer softmax of int8 logits [N, C]: the row's largest class gets 2^16, class i
    about 2^16 * 2^((v_i - v_max) log2 e). int64 [N, C]."""
    t = logits.data.long() * LOG2E_Q15
    t = t - t.amax(1, keepdim=True)
    shift = logits.exp.long() - 15 + _FRAC
    z = (t << torch.clamp(shift, 0, _MAX_LEFT)) >> torch.clamp(-shift, 0, 62)
    whole = torch.clamp(-(z >> _FRAC), max=62)  # -floor(z) >= 0
    return _pow2_fraction_q16(z & ((1 << _FRAC) - 1)) >> whole


def _check(logits: IntTensor, labels: torch.Tensor) -> None:
    data = logits.data
    if data.dtype != torch.int8 or data.dim() != 2:
        raise ValueError(f"integer cross-entropy: logits must be int8 [N, C], got {data.dtype} {list(data.shape)}")
    if labels.dtype != torch.int64 or labels.shape != data.shape[:1]:
        raise ValueError(f"integer cross-entropy: labels must be int64 [{data.shape[0]}], got {labels.dtype} "
                         f"{list(labels.shape)}")
    if labels.device != data.device:
        raise ValueError(f"integer cross-entropy: labels on {labels.device}, logits on {data.device}")
    on_host = labels.device.type == "cpu"
    if on_host and labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < data.shape[1]:
        raise ValueError(f"integer cross-entropy: labels must lie in [0, {data.shape[1]})")


def cross_entropy_error(logits: IntTensor, labels: torch.Tensor, rounding: str = "pseudo_stochastic",
                        generator: Optional[torch.Generator] = None) -> Tuple[IntTensor, torch.Tensor]:
    """(error of the logits, loss): the error (softmax - onehot) * 2^7 as int8 with exponent -7 (the
    gradient of the summed cross-entropy), and the mean cross-entropy of the dequantized logits as a
    float32 0-d tensor (a metric only: training never reads it). Labels on a GPU are not range-checked
    (that would read them on the host)."""
    _check(logits, labels)
    p = softmax_q16(logits)
    total = p.sum(1, keepdim=True)  # >= 2^16: the largest class
    classes = torch.arange(p.shape[1], device=p.device)
    onehot = (labels.unsqueeze(1) == classes).long()
    unit = INT8_BITS + _ERR_FRAC
    wide = torch.div(p << unit, total, rounding_mode="floor") - (onehot << unit)
    err = to_int8(shift_round(wide, torch.full((), _ERR_FRAC, device=p.device), rounding, generator))
    loss = torch.nn.functional.cross_entropy(logits.dequantize(), labels)
    return IntTensor(err, torch.full((), -INT8_BITS, dtype=torch.int32, device=p.device)), loss
