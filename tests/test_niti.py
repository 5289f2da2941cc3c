"""torch_int8.niti: integer-only training (NITI) on the INT8 ops.

Integer results are compared for equality with references written here in plain int64 torch ops
(convolutions as sums over filter taps) and Python integers (shifts, rounding), so that a layer's
forward, its input error and its weight update are checked bit for bit, at any stride and padding.
"""
import copy
import gzip
import json
import os
import struct
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CUDA_ONLY, forced_family, make_gen, rand_int8  # noqa: E402

import torch_int8  # noqa: E402
from torch_int8 import niti  # noqa: E402
from torch_int8.niti import arith  # noqa: E402
from torch_int8.niti.layers import MAX_DEPTH, WeightUpdate  # noqa: E402
from torch_int8.niti.loss import softmax_q16  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Python-integer references of the arithmetic
# ------------------------------------------------------------------------------------------------


def ref_nearest(v: int, s: int) -> int:
    return (v >> s) + (((v >> (s - 1)) & 1) if s else 0)  # Python's >> floors, as two's complement


def ref_pseudo(v: int, s: int) -> int:
    mag = abs(v)
    lo = s // 2
    hi = s - lo
    rem = mag & ((1 << s) - 1)
    up = (mag >> s) + ((rem >> lo) > ((rem & ((1 << lo) - 1)) << (hi - lo)))
    return -up if v < 0 else up


def ref_shift(values, bits: int) -> int:
    return max(max((abs(v) for v in values), default=0).bit_length() - bits, 0)


def ref_requantize(acc: torch.Tensor, exp: int):
    values = acc.flatten().tolist()
    s = ref_shift(values, 7)
    data = [max(-127, min(127, ref_nearest(v, s))) for v in values]
    return torch.tensor(data, dtype=torch.int8).reshape(acc.shape), exp + s


def ref_update(weight: torch.Tensor, grad: torch.Tensor, bits: int) -> torch.Tensor:
    values = grad.flatten().tolist()
    s = ref_shift(values, bits)
    new = [max(-127, min(127, w - ref_pseudo(g, s))) for w, g in zip(weight.flatten().tolist(), values)]
    return torch.tensor(new, dtype=torch.int8).reshape(weight.shape)


def int_tensor(data: torch.Tensor, exp: int) -> niti.IntTensor:
    return niti.IntTensor(data, torch.tensor(exp, dtype=torch.int32, device=data.device))


# ------------------------------------------------------------------------------------------------
# int64 convolution references: sums over the filter taps
# ------------------------------------------------------------------------------------------------


def _tap(t, r, s, stride, p, q):
    return t[:, :, r:r + stride[0] * (p - 1) + 1:stride[0], s:s + stride[1] * (q - 1) + 1:stride[1]]


def ref_conv(x, w, stride, padding):
    x, w = x.long(), w.long()
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    k, _, r_, s_ = w.shape
    p = (xp.shape[2] - r_) // stride[0] + 1
    q = (xp.shape[3] - s_) // stride[1] + 1
    out = torch.zeros(x.shape[0], k, p, q, dtype=torch.int64)
    for r in range(r_):
        for s in range(s_):
            out += torch.einsum("ncpq,kc->nkpq", _tap(xp, r, s, stride, p, q), w[:, :, r, s])
    return out


def ref_conv_backward(err, x, w, stride, padding):
    """(input gradient, weight gradient), int64."""
    err, x, w = err.long(), x.long(), w.long()
    n, c, h, wd = x.shape
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    dxp = torch.zeros_like(xp)
    dw = torch.zeros_like(w)
    p, q = err.shape[2:]
    for r in range(w.shape[2]):
        for s in range(w.shape[3]):
            _tap(dxp, r, s, stride, p, q).add_(torch.einsum("nkpq,kc->ncpq", err, w[:, :, r, s]))
            dw[:, :, r, s] = torch.einsum("nkpq,ncpq->kc", err, _tap(xp, r, s, stride, p, q))
    return dxp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + wd], dw


def update(bits=5, rounding="pseudo_stochastic", device="cpu", generator=None):
    return WeightUpdate(torch.tensor(bits, dtype=torch.int32, device=device), rounding, generator)


# ------------------------------------------------------------------------------------------------
# shifts and rounding
# ------------------------------------------------------------------------------------------------

EDGE = [0, 1, -1, 2, 3, 126, 127, -127, 128, -128, 255, 256, 2**20 + 5, -(2**24) + 1, 2**31 - 1, -(2**31)]


def test_bit_length_and_shift_match_python():
    for v in EDGE + [2**40 + 3, -(2**62)]:
        t = torch.tensor([v, 0], dtype=torch.int64)
        assert int(arith.bit_length(arith.max_abs(t))) == abs(v).bit_length(), v
        assert int(arith.shift_to_bits(t, 7)) == max(abs(v).bit_length() - 7, 0), v
    assert int(arith.max_abs(torch.tensor([-(2**31)], dtype=torch.int32))) == 2**31  # no int32 abs overflow


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_round_nearest_and_pseudo_match_python(dtype):
    values = EDGE + torch.randint(-(2**30), 2**30, (300,), generator=make_gen(1)).tolist()
    if dtype == torch.int32:
        values = [v for v in values if -(2**31) <= v < 2**31]
    t = torch.tensor(values, dtype=dtype)
    for s in [0, 1, 2, 3, 7, 12, 24]:
        shift = torch.tensor(s)
        got = arith.shift_round_nearest(t, shift)
        assert got.dtype == dtype and got.tolist() == [ref_nearest(v, s) for v in values], s
        assert arith.shift_round_pseudo_stochastic(t, shift).tolist() == [ref_pseudo(v, s) for v in values], s


def niti_pseudo_stochastic(x: torch.Tensor, s: int) -> torch.Tensor:
    """NITI's PstoShift as published (floor division taken for truncation), for contrast."""
    floor = x // 2**s
    prob = torch.abs(x - floor * 2**s)
    upper = prob // 2 ** (s // 2)
    lower = (prob - upper * 2 ** (s // 2)) * (2 if s % 2 else 1)
    return floor + (upper > lower).long() * torch.sign(x)


def mean_error(rounded: torch.Tensor, x: torch.Tensor, s: int) -> float:
    """Mean of rounded - x / 2^s, in units of the result's step."""
    return float((rounded.double() - x.double() / 2**s).mean())


@pytest.mark.parametrize("s", [3, 6, 11, 16])
def test_pseudo_stochastic_rounding_is_unbiased_on_both_signs(s):
    mag = torch.randint(1, 2**(s + 8), (200_000,), generator=make_gen(s))
    bound = 2.0 ** -(s - s // 2) + 0.005  # its pseudo-random number is the lower bits: a bias of < 2^-hi
    for x in (mag, -mag):
        got = arith.shift_round_pseudo_stochastic(x, torch.tensor(s))
        assert abs(mean_error(got, x, s)) < bound, (s, mean_error(got, x, s))
    # the same check rejects NITI's original, which steps negatives further down
    assert mean_error(niti_pseudo_stochastic(-mag, s), -mag, s) < -0.25
    assert torch.equal(arith.shift_round_pseudo_stochastic(-mag, torch.tensor(s)),
                       -arith.shift_round_pseudo_stochastic(mag, torch.tensor(s)))


@pytest.mark.parametrize("s", [1, 4, 13, 40])
def test_stochastic_rounding_is_unbiased_on_both_signs(s):
    draws = 100_000
    for v in [5, -5, 2**s * 3 + 1, -(2**s * 3 + 1), 2**(s - 1) + 7, -(2**(s - 1) + 7), 2**s - 1, -(2**s - 1)]:
        x = torch.full((draws,), v, dtype=torch.int64)
        got = arith.shift_round_stochastic(x, torch.tensor(s), make_gen(v & 0xFFFF))
        assert set(got.unique().tolist()) <= {v >> s, (v >> s) + 1}  # floor or the step above it
        assert abs(mean_error(got, x, s)) < 5 * 0.5 / draws**0.5, (v, s, mean_error(got, x, s))
    x = torch.full((draws,), -(2**s) * 3 - 1, dtype=torch.int64)  # NITI's StoShift biases this by ~ -1
    floor = x // 2**s
    niti = floor - (torch.randint(0, 2**s, x.shape, generator=make_gen(0)) < (x - floor * 2**s)).long()
    assert mean_error(niti, x, s) < -0.5


def test_stochastic_rounding_follows_its_generator():
    x = torch.randint(-(2**20), 2**20, (1000,), generator=make_gen(3))
    a, b, c = (arith.shift_round_stochastic(x, torch.tensor(9), make_gen(seed)) for seed in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_requantize_matches_python():
    for seed, high in [(0, 2**30), (1, 100), (2, 2**12)]:
        acc = torch.randint(-high, high, (5, 7), generator=make_gen(seed), dtype=torch.int32)
        got = arith.requantize(acc, torch.tensor(-9, dtype=torch.int32))
        data, exp = ref_requantize(acc, -9)
        assert torch.equal(got.data, data) and int(got.exp) == exp and got.exp.dtype == torch.int32
    zero = arith.requantize(torch.zeros(3, dtype=torch.int32), torch.tensor(4))
    assert zero.data.tolist() == [0, 0, 0] and int(zero.exp) == 4


@pytest.mark.parametrize("ea, eb", [(0, 0), (-3, 2), (5, -11), (-70, 0), (3, 60)])
def test_add_aligns_exponents_exactly(ea, eb):
    a, b = rand_int8((4, 9), 1, -127, 128), rand_int8((4, 9), 2, -127, 128)
    got = arith.add(int_tensor(a, ea), int_tensor(b, eb))
    # exact: the integer sum at the smaller exponent, then the shift rule
    e = min(ea, eb)
    exact = [x << (ea - e) for x in a.flatten().tolist()], [y << (eb - e) for y in b.flatten().tolist()]
    total = [x + y for x, y in zip(*exact)]
    s = ref_shift(total, 7)
    assert got.data.flatten().tolist() == [max(-127, min(127, ref_nearest(v, s))) for v in total]
    assert int(got.exp) == e + s


def test_quantize_input_power_of_two_exponent():
    x = torch.tensor([[0.3, -1.7], [0.01, 1.0]])
    q = arith.quantize_input(x)
    assert int(q.exp) == 1 - 7  # ceil(log2 1.7) = 1
    assert q.data.tolist() == [[round(0.3 * 64), round(-1.7 * 64)], [round(0.01 * 64), 64]]
    assert int(arith.quantize_input(torch.tensor([2.0, -1.0])).exp) == 1 - 7  # log2 2 = 1 exactly
    assert int(arith.quantize_input(torch.zeros(3)).exp) == 0
    with pytest.raises(TypeError, match="float"):
        arith.quantize_input(torch.zeros(3, dtype=torch.int8))


# ------------------------------------------------------------------------------------------------
# layers against int64 references
# ------------------------------------------------------------------------------------------------

CONV_CASES = [  # N, C, H, W, K, kernel, stride, padding
    (2, 3, 8, 8, 4, 3, 1, 1),
    (2, 3, 9, 7, 5, 3, 2, 1),
    (1, 4, 10, 9, 3, 3, (2, 1), (0, 2)),
    (3, 2, 7, 7, 6, 1, 2, 0),
    (2, 2, 11, 10, 3, 5, 3, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_backward_bit_exact(case):
    n, c, h, w, k, kernel, stride, padding = case
    conv = niti.Conv2d(c, k, kernel, stride, padding, make_gen(5))
    stride, padding = conv.stride, conv.padding
    weight = conv.weight.clone()
    x = rand_int8((n, c, h, w), 1, -127, 128)
    y = conv(int_tensor(x, -6))
    data, exp = ref_requantize(ref_conv(x, weight, stride, padding), -6 + int(conv.weight_exp))
    assert torch.equal(y.data, data) and int(y.exp) == exp

    err = rand_int8(y.data.shape, 2, -127, 128)
    got = conv.backward(int_tensor(err, -7), update(5), input_grad=True)
    dx, dw = ref_conv_backward(err, x, weight, stride, padding)
    data, exp = ref_requantize(dx, -7 + int(conv.weight_exp))
    assert torch.equal(got.data, data) and int(got.exp) == exp
    assert torch.equal(conv.weight, ref_update(weight, dw, 5))
    assert not torch.equal(conv.weight, weight)


def test_conv2d_weight_gradient_splits_the_batch_exactly():
    # 64x64 output pixels: 31 images per int32 wgrad; 40 images take two, added in int64
    conv = niti.Conv2d(2, 3, 3, 1, 1, make_gen(1))
    weight = conv.weight.clone()
    x = rand_int8((40, 2, 64, 64), 3, 120, 128)  # one sign, so that the sums grow past int32
    y = conv(int_tensor(x, 0))
    err = rand_int8(y.data.shape, 4, 120, 128)
    assert conv.backward(int_tensor(err, 0), update(4), input_grad=False) is None
    _, dw = ref_conv_backward(err, x, weight, conv.stride, conv.padding)
    assert dw.abs().max() > 2**31  # the int32 sum over the whole batch would overflow
    assert torch.equal(conv.weight, ref_update(weight, dw, 4))


def test_linear_forward_backward_bit_exact_and_split_batch():
    lin = niti.Linear(6, 4, make_gen(2))
    weight = lin.weight.clone()
    # the weight gradient reduces over the batch: three int32 GEMMs, added in int64; one sign, so that
    # the sums grow past int32
    n = 2 * MAX_DEPTH + 9
    x = rand_int8((n, 6), 1, 120, 128)
    y = lin(int_tensor(x, 3))
    data, exp = ref_requantize(x.long() @ weight.long().t(), 3 + int(lin.weight_exp))
    assert torch.equal(y.data, data) and int(y.exp) == exp
    err = rand_int8((n, 4), 2, 120, 128)
    got = lin.backward(int_tensor(err, -2), update(3), input_grad=True)
    assert (err.long().t() @ x.long()).abs().max() > 2**31
    data, exp = ref_requantize(err.long() @ weight.long(), -2 + int(lin.weight_exp))
    assert torch.equal(got.data, data) and int(got.exp) == exp
    assert torch.equal(lin.weight, ref_update(weight, err.long().t() @ x.long(), 3))


def test_weight_update_clips_and_follows_the_bit_width():
    w = torch.tensor([120, -120, 0, 5], dtype=torch.int8)
    # max 2^20 has 21 bits: shifted by 19 to 2 bits: -2, 2, and 1 (2^19 + 3: its discarded 3 lies in
    # the lower half, the pseudo-random number, so it rounds down), 0
    grad = torch.tensor([-(2**20), 2**20, 2**19 + 3, 0])
    update(2).apply(w, grad)
    assert w.tolist() == [122, -122, -1, 5]
    w = torch.tensor([126, -126], dtype=torch.int8)
    update(5).apply(w, torch.tensor([-(2**30), 2**30]))
    assert w.tolist() == [127, -127]


def test_relu_maxpool_flatten_dropout_backward():
    x = torch.tensor([[[[3, -1, 4, 4, 9], [1, 2, 4, 0, 9], [-5, -6, 7, 7, 9], [-8, -7, 7, 7, 9], [1, 1, 1, 1, 1]]]],
                     dtype=torch.int8)
    pool = niti.MaxPool2d(2).train()
    y = pool(int_tensor(x, 2))
    assert y.data.tolist() == [[[[3, 4], [-5, 7]]]] and int(y.exp) == 2
    err = torch.tensor([[[[10, 20], [30, 40]]]], dtype=torch.int8)
    back = pool.backward(int_tensor(err, -3), None, True)
    want = torch.zeros(1, 1, 5, 5, dtype=torch.int8)  # each window's first maximum; the ragged edge gets 0
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 10, 20, 30, 40
    assert torch.equal(back.data, want) and int(back.exp) == -3

    relu = niti.ReLU().train()
    assert relu(int_tensor(x, 0)).data.min() == 0
    back = relu.backward(int_tensor(torch.full_like(x, 9), 1), None, True)
    assert torch.equal(back.data, torch.where(x > 0, 9, 0).to(torch.int8))

    flat = niti.Flatten()
    assert flat(int_tensor(x, 0)).data.shape == (1, 25)
    assert flat.backward(int_tensor(torch.ones(1, 25, dtype=torch.int8), 0), None, True).data.shape == x.shape

    drop = niti.Dropout(seed=3).train()
    ones = torch.ones(64, 100, dtype=torch.int8)
    first = drop(int_tensor(ones, 0))
    kept = first.data.float().mean()
    assert int(first.exp) == 1 and 0.4 < kept < 0.6
    assert torch.equal(drop.backward(int_tensor(ones, 5), None, True).data, first.data)
    assert not torch.equal(drop(int_tensor(ones, 0)).data, first.data)  # a fresh mask per call
    assert torch.equal(niti.Dropout(seed=3).train()(int_tensor(ones, 0)).data, first.data)  # seeded
    assert drop.eval()(int_tensor(ones, 0)).data.equal(ones)


def test_loss_error_is_softmax_minus_onehot():
    logits = rand_int8((64, 10), 4, -127, 128)
    labels = torch.randint(0, 10, (64,), generator=make_gen(5))
    for exp in [-6, -3, 0]:
        err, loss = niti.cross_entropy_error(int_tensor(logits, exp), labels)
        real = torch.ldexp(logits.double(), torch.tensor(float(exp)))
        want = (torch.softmax(real, 1) - F.one_hot(labels, 10)) * 128
        assert int(err.exp) == -7 and err.data.dtype == torch.int8
        assert (err.data.double() - want).abs().max() <= 1.5  # 0.27% of 128 plus the rounding step
        assert abs(float(loss) - float(F.cross_entropy(real, labels))) < 1e-5
    tiny, _ = niti.cross_entropy_error(int_tensor(logits, -30), labels)  # all logits ~0: uniform softmax
    assert (tiny.data.double() - (0.1 - F.one_hot(labels, 10)) * 128).abs().max() <= 1.5


def test_integer_softmax_matches_python():
    logits = rand_int8((3, 5), 6, -127, 128)
    for exp in [-9, -4, 2]:
        got = softmax_q16(int_tensor(logits, exp))
        rows = []
        for row in logits.tolist():
            t = [v * 47274 for v in row]
            t = [v - max(t) for v in t]
            sh = exp - 15 + 16
            z = [(v << sh) if sh >= 0 else (v >> -sh) for v in t]
            frac = [v & 0xFFFF for v in z]
            pow2 = [(1 << 16) + ((f * (43269 + ((22267 * f) >> 16))) >> 16) for f in frac]
            rows.append([p >> min(-(v >> 16), 62) for p, v in zip(pow2, z)])
        assert got.tolist() == rows


def test_residual_block_backward_matches_its_parts():
    torch.manual_seed(0)
    block = niti.ResidualBlock(3, 4, stride=2, shift=1, generator=make_gen(9)).train()
    parts = copy.deepcopy(block)
    x = int_tensor(rand_int8((2, 3, 9, 9), 1, 0, 128), -5)
    y = block(x)
    err = int_tensor(rand_int8(y.data.shape, 2, -127, 128), -7)
    got = block.backward(err, update(5), input_grad=True)
    # the same block spelt out with its layers and arith.add
    h = parts.relu1(parts.conv1(x))
    b = parts.conv2(h)
    out = parts.relu_out(arith.add(parts.projection(x), niti.IntTensor(b.data, b.exp - 1)))
    assert torch.equal(out.data, y.data) and int(out.exp) == int(y.exp)
    e = parts.relu_out.backward(err, None, True)
    eb = parts.conv2.backward(niti.IntTensor(e.data, e.exp - 1), update(5), True)
    ex = parts.conv1.backward(parts.relu1.backward(eb, None, True), update(5), True)
    want = arith.add(ex, parts.projection.backward(e, update(5), True))
    assert torch.equal(got.data, want.data) and int(got.exp) == int(want.exp)
    for name in ["conv1.weight", "conv2.weight", "projection.weight"]:
        assert torch.equal(block.get_buffer(name), parts.get_buffer(name)), name


# ------------------------------------------------------------------------------------------------
# networks and training
# ------------------------------------------------------------------------------------------------


def tiny_network(seed=0, rounding="pseudo_stochastic", generator=None):
    g = make_gen(seed)
    layers = niti.Sequential(niti.Conv2d(1, 8, 3, 1, 1, g), niti.ReLU(), niti.MaxPool2d(2),
                             niti.Conv2d(8, 8, 3, 2, 1, g), niti.ReLU(), niti.Flatten(), niti.Dropout(seed),
                             niti.Linear(8 * 2 * 2, 2, g))
    return niti.Network(layers, rounding, generator)


def two_class_images(n=64, seed=0):
    """Bright top half (class 0) or bright bottom half (class 1), with noise."""
    labels = torch.randint(0, 2, (n,), generator=make_gen(seed))
    images = torch.randn(n, 1, 8, 8, generator=make_gen(seed + 1)) * 0.3
    images[labels == 0, :, :4] += 1.0
    images[labels == 1, :, 4:] += 1.0
    return images, labels


def snapshot(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("rounding", ["pseudo_stochastic", "stochastic"])
def test_train_step_learns(rounding):
    images, labels = two_class_images()
    model = tiny_network(rounding=rounding, generator=make_gen(1) if rounding == "stochastic" else None)
    model.set_grad_bits(3)
    losses = [float(niti.train_step(model, images, labels)) for _ in range(25)]
    loss, acc = niti.evaluate(model, images, labels)
    assert min(losses[-5:]) < 0.5 * losses[0] and acc > 0.9, (losses, acc)
    assert all(v.dtype in (torch.int8, torch.int32, torch.int64) for v in model.state_dict().values())


def test_training_is_reproducible_from_the_seed():
    images, labels = two_class_images()
    runs = []
    for seed in (0, 0, 1):
        model = tiny_network(seed)
        losses = [niti.train_step(model, images, labels) for _ in range(3)]
        runs.append((snapshot(model), torch.stack(losses)))
    assert all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0]["layers.layers.0.weight"], runs[2][0]["layers.layers.0.weight"])


def test_models_build_and_step():
    cases = [(niti.vgg_small(7, in_channels=1, image_size=16), (2, 1, 16, 16)),
             (niti.lenet5(image_size=28), (2, 1, 28, 28)),
             (niti.resnet(8, width=4), (2, 3, 8, 8))]
    for model, shape in cases:
        before = snapshot(model)
        loss = niti.train_step(model, torch.randn(shape, generator=make_gen(0)), torch.tensor([1, 7]))
        assert loss.dim() == 0 and torch.isfinite(loss)
        after = snapshot(model)
        weights = [k for k in before if k.endswith("weight")]
        assert weights and all(after[k].dtype == torch.int8 for k in weights)
        assert any(not torch.equal(before[k], after[k]) for k in weights)
    counts = {d: sum(isinstance(m, niti.Conv2d) for m in niti.vgg_small(d, image_size=8).modules()) for d in (7, 8, 9)}
    assert counts == {7: 6, 8: 7, 9: 8}
    widths = [m.out_channels for m in niti.vgg_small(9, image_size=8).modules() if isinstance(m, niti.Conv2d)]
    assert widths == [128, 128, 128, 256, 256, 256, 512, 512]
    assert niti.lenet5(image_size=32).layers.layers[-3].in_features == 50 * 5 * 5


def test_float_models_share_the_initial_weights():
    ints, floats = niti.vgg_small(7, image_size=8, seed=4), niti.float_vgg_small(7, image_size=8, seed=4)
    int_convs = [m for m in ints.modules() if isinstance(m, (niti.Conv2d, niti.Linear))]
    float_convs = [m for m in floats.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(int_convs) == len(float_convs) == 7
    for i, f in zip(int_convs, float_convs):
        assert torch.equal(niti.quantize_input(f.weight.detach()).data, i.weight)
    assert isinstance(niti.float_resnet(8, width=4)(torch.randn(1, 3, 8, 8)), torch.Tensor)


def test_grad_bits_schedule():
    sched = niti.GradBitsSchedule(200)
    assert [sched.bits(e) for e in (0, 99, 100, 149, 150, 199)] == [5, 5, 4, 4, 3, 3]  # NITI's epochs
    assert [niti.GradBitsSchedule(4).bits(e) for e in range(4)] == [5, 5, 4, 3]
    with pytest.raises(ValueError, match="epoch"):
        sched.bits(200)
    for bad in [dict(epochs=0), dict(epochs=4, milestones=((0.5, 4),)), dict(epochs=4, milestones=((0, 9),))]:
        with pytest.raises(ValueError, match="GradBitsSchedule"):
            niti.GradBitsSchedule(**bad)


def test_bad_inputs_raise():
    model = tiny_network()
    images, labels = two_class_images(4)
    with pytest.raises(ValueError, match="depth"):
        niti.vgg_small(6)
    with pytest.raises(ValueError, match="6n"):
        niti.resnet(9)
    with pytest.raises(ValueError, match="rounding"):
        niti.lenet5(rounding="nearest")
    with pytest.raises(ValueError, match="grad bits"):
        model.set_grad_bits(8)
    with pytest.raises(TypeError, match="Network"):
        niti.train_step(torch.nn.Linear(2, 2), images, labels)
    with pytest.raises(ValueError, match="float tensor"):
        niti.train_step(model, images.to(torch.int8), labels)
    with pytest.raises(ValueError, match="empty"):
        niti.train_step(model, images[:0], labels[:0])
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        niti.train_step(model, images.expand(4, 3, 8, 8), labels)
    with pytest.raises(ValueError, match="labels must be int64"):
        niti.train_step(model, images, labels.int())
    with pytest.raises(ValueError, match="labels must lie"):
        niti.train_step(model, images, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="kernel_size"):
        niti.MaxPool2d(0)
    with pytest.raises(ValueError, match="at most 131071"):
        niti.Conv2d(20000, 8, 3)
    with pytest.raises(ValueError, match="at most 131071"):
        niti.Linear(200000, 8)
    with pytest.raises(ValueError, match="positive"):
        niti.Conv2d(3, 8, 3, stride=0)
    with pytest.raises(RuntimeError, match="no forward"):
        niti.Conv2d(1, 2).backward(int_tensor(torch.zeros(1, 2, 4, 4, dtype=torch.int8), 0), update(), True)
    with pytest.raises(TypeError, match="niti layers"):
        niti.Sequential(torch.nn.ReLU())
    with pytest.raises(ValueError, match="shift"):
        niti.ResidualBlock(2, 2, shift=-1)


# ------------------------------------------------------------------------------------------------
# command lines (tiny data)
# ------------------------------------------------------------------------------------------------


def write_idx(folder, name, array: torch.Tensor):
    header = struct.pack(">I", 0x0800 | array.dim()) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(folder / name, "wb") as f:
        f.write(header + array.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def tiny_fashion_mnist(tmp_path):
    from torch_int8.datasets import FILES
    for split, n in [("train", 48), ("test", 16)]:
        labels = torch.randint(0, 10, (n,), generator=make_gen(n))
        images = (torch.rand(n, 28, 28, generator=make_gen(n + 1)) * 60).to(torch.uint8)
        images[torch.arange(n), labels * 2, :] = 255  # a bright row by class
        write_idx(tmp_path, FILES[split][0], images)
        write_idx(tmp_path, FILES[split][1], labels)
    return tmp_path


@pytest.mark.parametrize("float_model", [False, True])
def test_train_command_writes_log_and_plot(tiny_fashion_mnist, tmp_path, float_model):
    from torch_int8.niti import train
    out = tmp_path / ("float" if float_model else "int")
    args = ["--model", "lenet5", "--epochs", "2", "--batch-size", "16", "--data", str(tiny_fashion_mnist),
            "--out", str(out), "--limit", "32", "--device", "cpu"] + (["--float"] if float_model else [])
    log = train.main(args)
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == log and len(saved["epochs"]) == 2 and saved["train_images"] == 32
    assert saved["integer"] is not float_model
    assert all(0 <= e["test_accuracy"] <= 1 and e["train_loss"] > 0 for e in saved["epochs"])
    assert [e["grad_bits"] for e in saved["epochs"]] == ([None, None] if float_model else [5, 4])
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_command_runs_on_the_cpu(tmp_path):
    from torch_int8.niti import bench
    result = bench.main(["--batch", "2", "--iters", "1", "--repeats", "1", "--warmup", "0", "--depths", "7",
                         "--device", "cpu", "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")])
    row = result["rows"][0]
    assert row["model"] == "vgg-small-7" and row["niti_turing_s"] == 0.094
    assert all(row[k] > 0 for k in ("int8_s", "fp32_s", "bf16_s"))
    assert json.loads((tmp_path / "b.json").read_text()) == result and (tmp_path / "b.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# GPU: the same bits as the CPU, and a whole step in a CUDA graph
# ------------------------------------------------------------------------------------------------


def train_on(device, steps=3):
    images, labels = two_class_images(32)
    model = tiny_network(2).to(device)
    losses = torch.stack([niti.train_step(model, images.to(device), labels.to(device)) for _ in range(steps)])
    return snapshot(model), losses.cpu()


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("family", [None, "dp4a"])
def test_gpu_training_bit_identical_to_cpu(device, family):
    cpu_state, cpu_losses = train_on("cpu")
    if family is None:
        gpu_state, gpu_losses = train_on(device)
    else:
        with forced_family(family):
            gpu_state, gpu_losses = train_on(device)
    for k in cpu_state:
        assert torch.equal(cpu_state[k], gpu_state[k]), k
    torch.testing.assert_close(gpu_losses, cpu_losses)  # the float metric, not part of training


@pytest.mark.cuda_graph
@pytest.mark.parametrize("device", CUDA_ONLY)
def test_train_step_in_a_cuda_graph(device):
    from cuda_graphs import graph_replay
    images, labels = (t.to(device) for t in two_class_images(32))
    model = niti.vgg_small(7, in_channels=1, image_size=8, seed=3).to(device)
    losses = []
    replay = graph_replay(lambda: losses.append(niti.train_step(model, images, labels)))
    eager = copy.deepcopy(model)  # the state the graph starts from (capturing runs nothing)
    for _ in range(3):
        replay()
        want = niti.train_step(eager, images, labels)
        assert torch.equal(losses[-1], want)
        for k, v in eager.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
