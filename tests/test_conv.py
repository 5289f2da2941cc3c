"""int8::conv2d / conv2d_dgrad / conv2d_wgrad / scaled_conv2d and torch_int8.nn.Conv2d / QuantizedConv2d.

The int32 results are compared for exact equality with F.conv2d and its input / weight gradients
computed in float64 on the int8 values (exact: every |sum| < 2^53). Layer bounds come from the
quantization steps: for y = sum_i x_i w_i with x, w each rounded to the nearest step (|error| <=
step / 2), |y_q - y| <= sx/2 * sum|w| + sw/2 * sum|x| + count * sx * sw / 4 per output element.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CUDA_ONLY, DEVICE_PARAMS, check_within, make_gen, quant_step, rand_int8  # noqa: E402

import torch_int8  # noqa: E402
from torch_int8 import Int8Config, QTensor  # noqa: E402

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = [
    (2, 3, 9, 7, 5, 3, 3, 1, 1, 1, 1),
    (1, 10, 8, 11, 6, 3, 3, 2, 1, 1, 2),     # M = 1 image, stride 2, groups 2
    (2, 6, 7, 7, 6, 3, 3, 1, 2, 2, 6),       # depthwise, dilation 2
    (1, 5, 9, 9, 9, 5, 5, 2, 2, 1, 1),
    (2, 4, 13, 11, 12, 7, 7, 2, 0, 1, 1),    # 7x7 stem-like, no padding
    (3, 7, 5, 5, 17, 1, 1, 1, 0, 1, 1),      # 1x1, ragged K
    (1, 12, 6, 5, 8, 3, 1, (2, 1), (1, 0), (1, 2), 4),
    (1, 4, 3, 3, 3, 3, 3, 1, 0, 1, 1),       # one output pixel
]


# Depths C/G*R*S (forward) and K/G*R*S (dgrad) beyond the int32-safe 131071: summed in int64
LONG_FORWARD = [(2, 14600, 4, 3, 5, 3, 3, 1, 1, 1, 1), (1, 29200, 3, 4, 4, 3, 3, 2, 1, 1, 2)]
LONG_DGRAD = [(1, 3, 4, 3, 14600, 3, 3, 1, 1, 1, 1), (1, 4, 5, 3, 29200, 3, 3, 2, 1, 1, 2)]


def case_id(c):
    return "n{}c{}h{}w{}k{}r{}s{}_st{}_p{}_d{}_g{}".format(*c)


def make_case(case, seed, fmt="contiguous"):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x = rand_int8((n, c, h, w), seed=seed)
    wt = rand_int8((k, c // groups, r, s), seed=seed + 1)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif fmt == "sliced":
        x = torch.cat([x, x], dim=3)[:, :, :, ::2]
    return x, wt, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def geometry_args(g):
    return g["stride"], g["padding"], g["dilation"], g["groups"]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_conv2d_dgrad_wgrad_exact(device, case):
    fmt = ["contiguous", "channels_last", "sliced"][CASES.index(case) % 3]
    x, w, g = make_case(case, seed=CASES.index(case) * 7, fmt=fmt)
    ref = F.conv2d(x.double(), w.double(), None, *geometry_args(g))
    y = torch_int8.conv2d(x.to(device), w.to(device), *geometry_args(g))
    assert y.dtype == torch.int32 and y.shape == ref.shape
    assert torch.equal(y.cpu().double(), ref)

    gy = rand_int8(ref.shape, seed=99)
    ref_dx = conv2d_input(x.shape, w.double(), gy.double(), *geometry_args(g))
    dx = torch_int8.conv2d_dgrad(gy.to(device), w.to(device), x.shape[2:], *geometry_args(g))
    assert dx.dtype == torch.int32 and torch.equal(dx.cpu().double(), ref_dx)

    ref_dw = conv2d_weight(x.double(), w.shape, gy.double(), *geometry_args(g))
    dw = torch_int8.conv2d_wgrad(gy.to(device), x.to(device), w.shape[2:], *geometry_args(g))
    assert dw.dtype == torch.int32 and torch.equal(dw.cpu().double(), ref_dw)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_chunked_workspace_gives_the_same_results(device):
    """A tiny workspace limit splits every pass into many chunks (and a last, ragged one)."""
    case = (5, 6, 7, 6, 4, 3, 3, 1, 1, 1, 2)
    x, w, g = make_case(case, seed=3, fmt="channels_last")
    gy = rand_int8((5, 4, 7, 6), seed=4)
    old = torch_int8.conv.workspace_limit()
    try:
        torch_int8.conv.set_workspace_limit(600)  # < one image's columns: 1 image (forward) / 16 pixels (wgrad)
        y = torch_int8.conv2d(x.to(device), w.to(device), *geometry_args(g))
        dx = torch_int8.conv2d_dgrad(gy.to(device), w.to(device), x.shape[2:], *geometry_args(g))
        dw = torch_int8.conv2d_wgrad(gy.to(device), x.to(device), w.shape[2:], *geometry_args(g))
    finally:
        torch_int8.conv.set_workspace_limit(old)
    assert torch_int8.conv.workspace_limit() == old
    assert torch.equal(y.cpu().double(), F.conv2d(x.double(), w.double(), None, *geometry_args(g)))
    assert torch.equal(dx.cpu().double(), conv2d_input(x.shape, w.double(), gy.double(), *geometry_args(g)))
    assert torch.equal(dw.cpu().double(), conv2d_weight(x.double(), w.shape, gy.double(), *geometry_args(g)))


def scaled_dgrad_reference(gy, w, sg, sw, x_size, g, out_dtype):
    """What scaled_conv2d_dgrad computes: the exact sums (float64 conv2d_input on the int8 values),
    then float32 products (sum * scale_grad_out[n]) * scale_weight[c], then out_dtype."""
    acc = conv2d_input(x_size, w.double(), gy.double(), *geometry_args(g)).float()
    return (acc * sg.reshape(-1, 1, 1, 1) * sw.reshape(1, -1, 1, 1)).to(out_dtype)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[6], (4, 16, 12, 10, 24, 1, 1, 2, 0, 1, 1), *LONG_DGRAD],
                         ids=case_id)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per_image_channel", "per_tensor"])
def test_scaled_conv2d_dgrad_is_rescaled_dgrad(device, case, out_dtype, per_tensor):
    """Bit for bit the rescaled exact dgrad, on the CPU and the GPU alike (1x1 stride 2: most input
    elements have no tap)."""
    x, w, g = make_case(case, seed=13)
    gy = rand_int8(F.conv2d(x.float(), w.float(), None, *geometry_args(g)).shape, seed=14)
    gen = make_gen(15)
    n, c = x.shape[:2]
    sg = torch.rand(1 if per_tensor else n, generator=gen) * 0.01 + 1e-3
    sw = torch.rand(1 if per_tensor else c, generator=gen) * 0.01 + 1e-3
    got = torch_int8.conv.scaled_conv2d_dgrad(QTensor(gy.to(device), sg.to(device), None, 0),
                                              QTensor(w.to(device), sw.to(device), None, None), x.shape[2:],
                                              *geometry_args(g), out_dtype=out_dtype)
    want = scaled_dgrad_reference(gy, w, sg, sw, x.shape, g, out_dtype)
    assert got.dtype == out_dtype and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_scaled_conv2d_dgrad_in_chunks(device):
    """A small workspace: several chunks of images, each reading its own images' scales."""
    case = (5, 6, 9, 8, 4, 3, 3, 2, 1, 1, 2)
    x, w, g = make_case(case, seed=16)
    gy = rand_int8(F.conv2d(x.float(), w.float(), None, *geometry_args(g)).shape, seed=17)
    sg, sw = torch.rand(5, generator=make_gen(18)) + 0.5, torch.rand(6, generator=make_gen(19)) + 0.5
    old = torch_int8.conv.workspace_limit()
    try:
        torch_int8.conv.set_workspace_limit(600)
        got = torch_int8.conv.scaled_conv2d_dgrad(QTensor(gy.to(device), sg.to(device), None, 0),
                                                  QTensor(w.to(device), sw.to(device), None, None), x.shape[2:],
                                                  *geometry_args(g))
    finally:
        torch_int8.conv.set_workspace_limit(old)
    assert torch.equal(got.cpu(), scaled_dgrad_reference(gy, w, sg, sw, x.shape, g, torch.float32))


def scaled_reference(x, w, sx, sw, zp, bias, g):
    """float64 value of scale_x[n] * scale_w[k] * conv(x - zp, w) + bias, padding holding real zeros."""
    acc = F.conv2d(x.double() - zp, w.double(), None, *geometry_args(g))
    scale = sx.double().reshape(-1, 1, 1, 1) * sw.double().reshape(1, -1, 1, 1)
    return acc * scale + bias.double().reshape(1, -1, 1, 1)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[5], *LONG_FORWARD], ids=case_id)
@pytest.mark.parametrize("zp", [0, -5])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_scaled_conv2d(device, case, zp, out_dtype):
    x, w, g = make_case(case, seed=11)
    n, k = x.shape[0], w.shape[0]
    gen = make_gen(12)
    sx = torch.rand(n, generator=gen) * 0.01 + 0.005
    sw = torch.rand(k, generator=gen) * 0.01 + 0.005
    bias = torch.randn(k, generator=gen)
    ref = scaled_reference(x, w, sx, sw, zp, bias, g)
    qx = QTensor(x.to(device), sx.to(device), torch.tensor(zp, dtype=torch.int32, device=device) if zp else None, 0)
    qw = QTensor(w.to(device), sw.to(device), None, 0)
    if out_dtype == torch.int8:
        out_scale, out_zp = float(ref.abs().max()) / 100, 3
        y = torch_int8.scaled_conv2d(qx, qw, bias.to(device), *geometry_args(g), out_dtype=torch.int8,
                                     out_scale=out_scale, out_zero_point=out_zp)
        want = torch.clamp(torch.round(ref / out_scale) + out_zp, -128, 127)
        diff = (y.cpu().double() - want).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.02  # only float32 rounding ties may differ
    else:
        y = torch_int8.scaled_conv2d(qx, qw, bias.to(device), *geometry_args(g), out_dtype=out_dtype)
        rel = 2.0 ** -7 if out_dtype == torch.bfloat16 else 2.0 ** -20
        assert y.dtype == out_dtype
        assert torch.all((y.cpu().double() - ref).abs() <= rel * ref.abs() + 1e-5 * (1 + ref.abs().max()))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_scaled_conv2d_sums_beyond_int32_exactly(device):
    # 16384 * 14600 * 9 = 2152857600 > 2^31 - 1 at the one output pixel: an int32 sum would wrap.
    x = torch.full((1, 14600, 3, 3), -128, dtype=torch.int8, device=device)
    w = torch.full((2, 14600, 3, 3), -128, dtype=torch.int8, device=device)
    one = torch.ones((), device=device)
    y = torch_int8.scaled_conv2d(QTensor(x, one, None, None), QTensor(w, one, None, None), out_dtype=torch.float32)
    assert torch.equal(y.cpu(), torch.full((1, 2, 1, 1), float(16384 * 14600 * 9)))
    with pytest.raises(ValueError, match="exceeds 131071"):  # int32 results keep their limit
        torch_int8.conv2d(x, w)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", [(2, 32, 9, 7, 48, 3, 3, 1, 1, 1, 1), CASES[1]], ids=["implicit_gemm", "im2col"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_scaled_conv2d_relu_in_the_epilogue(device, case, out_dtype):
    """relu=True is max(y, 0) of the same epilogue values (both forward paths), NaN kept."""
    x, w, g = make_case(case, seed=71)
    gen = make_gen(72)
    sx = torch.rand(x.shape[0], generator=gen) * 0.01 + 0.005
    sw = torch.rand(w.shape[0], generator=gen) * 0.01 + 0.005
    sw[1] = float("nan")
    qx, qw = QTensor(x.to(device), sx.to(device), None, 0), QTensor(w.to(device), sw.to(device), None, 0)
    bias = torch.randn(w.shape[0], generator=gen).to(device)
    plain = torch_int8.scaled_conv2d(qx, qw, bias, *geometry_args(g), out_dtype=out_dtype)
    fused = torch_int8.scaled_conv2d(qx, qw, bias, *geometry_args(g), out_dtype=out_dtype, relu=True)
    assert fused.dtype == out_dtype and fused.stride() == plain.stride()
    assert torch.equal(fused.isnan(), plain.isnan()) and fused[:, 1].isnan().all()
    assert torch.equal(fused.nan_to_num(), torch.relu(plain).nan_to_num())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_scaled_conv2d_per_tensor_scales(device):
    x, w, g = make_case(CASES[2], seed=5)
    sx, sw = torch.tensor(0.02), torch.tensor(0.003)
    y = torch_int8.scaled_conv2d(QTensor(x.to(device), sx.to(device), None, None),
                                 QTensor(w.to(device), sw.to(device), None, None), None, *geometry_args(g),
                                 out_dtype=torch.float32)
    ref = F.conv2d(x.double(), w.double(), None, *geometry_args(g)) * 0.02 * 0.003
    assert torch.allclose(y.cpu().double(), ref, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------

X = rand_int8((2, 4, 6, 6), seed=0)
W = rand_int8((6, 2, 3, 3), seed=1)
GY = rand_int8((2, 6, 6, 6), seed=2)
BAD = [
    (lambda: torch_int8.conv2d(X[0], W), ValueError, "x must be 4-D"),
    (lambda: torch_int8.conv2d(X, W[0]), ValueError, "weight must be 4-D"),
    (lambda: torch_int8.conv2d(X.float(), W), TypeError, "x must be torch.int8"),
    (lambda: torch_int8.conv2d(X, W.int()), TypeError, "weight must be torch.int8"),
    (lambda: torch_int8.conv2d(X, W, groups=1), ValueError, "channel mismatch"),
    (lambda: torch_int8.conv2d(X, W[:5], groups=2), ValueError, "does not divide the output channels"),
    (lambda: torch_int8.conv2d(X, W, groups=0), ValueError, "groups must be >= 1"),
    (lambda: torch_int8.conv2d(X, W, padding=-1, groups=2), ValueError, "padding must be in \\[0, "),
    (lambda: torch_int8.conv2d(X, W, stride=(1, 0), groups=2), ValueError, "stride must be in \\[1, "),
    (lambda: torch_int8.conv2d(X, W, dilation=0, groups=2), ValueError, "dilation must be in \\[1, "),
    (lambda: torch_int8.conv2d(X, W, dilation=4, groups=2), ValueError, "smaller than the dilated kernel"),
    (lambda: torch_int8.conv2d(X[:0], W, groups=2), ValueError, "x is empty"),
    (lambda: torch_int8.conv2d(rand_int8((1, 16384, 3, 3), 0), rand_int8((1, 16384, 3, 3), 0)), ValueError,
     "exceeds 131071"),
    (lambda: torch_int8.conv2d_dgrad(GY, W, (6, 6), padding=1, groups=2)[0], None, None),  # valid control
    (lambda: torch_int8.conv2d_dgrad(GY, W, (7, 7), padding=1, groups=2), ValueError, "does not match input_size"),
    (lambda: torch_int8.conv2d_dgrad(GY[:, :5], W, (6, 6), padding=1, groups=2), ValueError, "channel mismatch"),
    (lambda: torch_int8.conv2d_dgrad(GY, W, (6, 6, 1), padding=1, groups=2), ValueError, "input_size must have 2"),
    (lambda: torch_int8.conv2d_wgrad(GY, X, (3, 3), padding=1, groups=2)[0], None, None),  # valid control
    (lambda: torch_int8.conv2d_wgrad(GY[:1], X, (3, 3), padding=1, groups=2), ValueError, "batch mismatch"),
    (lambda: torch_int8.conv2d_wgrad(GY, X, (3, 3), padding=0, groups=2), ValueError, "does not match x"),
    (lambda: torch_int8.conv2d_wgrad(GY, X, (3, 3), padding=1, groups=3), ValueError, "does not divide"),
    (lambda: torch_int8.conv2d_wgrad(rand_int8((1, 1, 363, 363), 0), rand_int8((1, 1, 363, 363), 0), (1, 1)),
     ValueError, "N\\*P\\*Q = 131769 exceeds"),
    (lambda: torch_int8.conv.dynamic_conv2d(X.float(), W.float(), groups=2)[0], None, None),  # valid control
    (lambda: torch_int8.conv.dynamic_conv2d(X[0].float(), W.float(), groups=2), ValueError, "x must be 4-D"),
    (lambda: torch_int8.conv.dynamic_conv2d(X.float(), W[0].float(), groups=2), ValueError, "weight must be 4-D"),
    (lambda: torch_int8.conv.dynamic_conv2d(X, W.float(), groups=2), TypeError, "x must be a float tensor"),
    (lambda: torch_int8.conv.dynamic_conv2d(X.float(), W.float()), ValueError, "channel mismatch"),
    (lambda: torch_int8.conv.dynamic_conv2d(X.float(), W.float(), padding=-1, groups=2), ValueError,
     "padding must be in \\[0, "),
    (lambda: torch_int8.nn.Conv2d(3, 6, 3)(X.float()), ValueError, "channel mismatch"),
    (lambda: torch_int8.nn.Conv2d(2, 6, 3)(X.float()[0, 0]), ValueError, "x must be 4-D"),
    (lambda: torch.ops.int8.quantize_rotated_filter(W.float(), 4), ValueError, "must divide the output channels"),
    (lambda: torch.ops.int8.quantize_images(X), TypeError, "quantize_images: x must be a float tensor"),
    (lambda: torch.ops.int8.quantize_images(X[0].float()), ValueError, "quantize_images: x must be 4-D"),
]
SCALED_BAD = [
    (dict(x_scale=torch.ones(3)), ValueError, "scale_x must have one element or 2"),
    (dict(w_scale=torch.ones(5)), ValueError, "scale_w must have one element or 6"),
    (dict(w_scale=torch.ones(6, dtype=torch.float64)), TypeError, "scale_w must be torch.float32"),
    (dict(bias=torch.ones(5)), ValueError, "bias must be \\[K\\]"),
    (dict(bias=torch.ones(6, dtype=torch.int32)), TypeError, "bias must be a float"),
    (dict(out_dtype=torch.int32), TypeError, "out_dtype must be"),
    (dict(out_dtype=torch.float64), TypeError, "out_dtype must be"),
    (dict(out_dtype=torch.int8), ValueError, "needs out_scale"),
    (dict(out_dtype=torch.int8, out_scale=0.0), ValueError, "out_scale must be finite and > 0"),
    (dict(out_dtype=torch.int8, out_scale=1.0, out_zero_point=200), ValueError, "out_zero_point must be in"),
    (dict(zero_point=torch.tensor([1, 2], dtype=torch.int32)), ValueError, "per tensor"),
    (dict(zero_point=torch.tensor(300, dtype=torch.int32)), ValueError, "zero_point_x must be in"),
    (dict(x_dim=1), ValueError, "per tensor or per image"),
    (dict(w_dim=1), ValueError, "per tensor or per output channel"),
]


DGRAD_SCALED_BAD = [
    (dict(sg=torch.ones(3)), ValueError, "scale_grad_out must have one element or 2"),
    (dict(sw=torch.ones(6)), ValueError, "scale_weight must have one element or 4"),
    (dict(sw=torch.ones(4, dtype=torch.float64)), TypeError, "scale_weight must be torch.float32"),
    (dict(out_dtype=torch.int8), TypeError, "out_dtype must be bfloat16, float16 or float32"),
    (dict(out_dtype=torch.int32), TypeError, "out_dtype must be bfloat16, float16 or float32"),
    (dict(g_dim=1), ValueError, "per tensor or per image"),
    (dict(g_zero_point=torch.tensor(1, dtype=torch.int32)), ValueError, "grad_out must be quantized symmetrically"),
    (dict(input_size=(7, 7)), ValueError, "scaled_conv2d_dgrad: grad_out .* does not match input_size"),
]


@pytest.mark.parametrize("case", range(len(DGRAD_SCALED_BAD)))
def test_scaled_conv2d_dgrad_bad_input(case):
    kw, exc, msg = DGRAD_SCALED_BAD[case]
    qg = QTensor(GY, kw.get("sg", torch.ones(2)), kw.get("g_zero_point"), kw.get("g_dim", 0))
    qw = QTensor(W, kw.get("sw", torch.ones(4)), None, None)
    with pytest.raises(exc, match=msg):
        torch_int8.conv.scaled_conv2d_dgrad(qg, qw, kw.get("input_size", (6, 6)), 1, 1, 1, 2,
                                            out_dtype=kw.get("out_dtype", torch.float32))


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input(case):
    fn, exc, msg = BAD[case]
    if exc is None:
        fn()
        return
    with pytest.raises(exc, match=msg):
        fn()


@pytest.mark.parametrize("case", range(len(SCALED_BAD)))
def test_scaled_conv2d_bad_input(case):
    kw, exc, msg = SCALED_BAD[case]
    qx = QTensor(X, kw.get("x_scale", torch.ones(2)), kw.get("zero_point"), kw.get("x_dim", 0))
    qw = QTensor(W, kw.get("w_scale", torch.ones(6)), None, kw.get("w_dim", 0))
    with pytest.raises(exc, match=msg):
        torch_int8.scaled_conv2d(qx, qw, kw.get("bias"), 1, 1, 1, 2, out_dtype=kw.get("out_dtype", torch.float32),
                                 out_scale=kw.get("out_scale"), out_zero_point=kw.get("out_zero_point", 0))


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_device_mismatch(device):
    with pytest.raises(ValueError, match="weight is on"):
        torch_int8.conv2d(X.to(device), W, groups=2)


def test_compile_traces_the_conv_ops():
    x, w, g = make_case(CASES[1], seed=8, fmt="channels_last")
    gy = rand_int8(F.conv2d(x.float(), w.float(), None, *geometry_args(g)).shape, seed=9)
    sx, sw = torch.full((1,), 0.1), torch.rand(w.shape[0]) + 0.1

    def fn(x, w, gy, sx, sw):
        y = torch_int8.conv2d(x, w, *geometry_args(g))
        ys = torch_int8.scaled_conv2d(QTensor(x, sx, None, None), QTensor(w, sw, None, 0), None, *geometry_args(g),
                                      out_dtype=torch.float32)
        dx = torch_int8.conv2d_dgrad(gy, w, x.shape[2:], *geometry_args(g))
        dxs = torch_int8.conv.scaled_conv2d_dgrad(QTensor(gy, sx, None, None), QTensor(w, sx, None, None),
                                                  x.shape[2:], *geometry_args(g), out_dtype=torch.bfloat16)
        dw = torch_int8.conv2d_wgrad(gy, x, w.shape[2:], *geometry_args(g))
        return y, ys, dx, dxs, dw

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(x, w, gy, sx, sw), fn(x, w, gy, sx, sw)):
        assert torch.equal(got, want)
    # the Meta kernels give the shapes and strides of the real ones
    meta = fn(*(t.to("meta") for t in (x, w, gy, sx, sw)))
    for m, want in zip(meta, fn(x, w, gy, sx, sw)):
        assert m.shape == want.shape and m.stride() == want.stride() and m.dtype == want.dtype


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("limit", [None, 100000], ids=["one_chunk", "chunks"])
def test_wgrad_split_into_pixel_slices_is_exact(device, limit):
    """Enough pixels (5307) for several split-K slices per GEMM whose last one passes the last pixel,
    and with a small workspace several chunks of several slices and a ragged last chunk."""
    case = (3, 5, 29, 61, 7, 3, 3, 1, 1, 1, 1)
    x, w, g = make_case(case, seed=11, fmt="channels_last")
    gy = rand_int8((3, 7, 29, 61), seed=12)
    assert_wgrad_exact(gy, x, w, g, device, limit)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("images,hw", [((1, 5), (32, 32)), ((1, 2), (32, 32)), ((1, 5), (2, 4)), ((0, 6), (3, 5))],
                         ids=["slices", "one_slice", "row_start_unaligned", "ragged_pixels"])
def test_wgrad_reads_a_batch_slice_of_dy_in_place(device, images, hw):
    """What Conv2d's backward passes: dY and x in [C, N, H, W] memory, sliced along the batch. With
    16-byte aligned rows whose pixels the split-K slices divide exactly (4096 or 1024 pixels), the
    GPU's GEMM reads dY^T where it lies; rows starting 8 bytes past the boundary, or 90 pixels,
    take the zero-padded copy."""
    n0, n1 = images
    case = (7, 8, hw[0], hw[1], 16, 3, 3, 1, 1, 1, 1)
    x, w, g = make_case(case, seed=51)
    cnhw = lambda t: t.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # noqa: E731
    gy = cnhw(rand_int8((7, 16, hw[0], hw[1]), seed=52))
    assert_wgrad_exact(gy[n0:n1], cnhw(x)[n0:n1], w, g, device, None)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("images,stride", [((0, 5), 1), ((1, 4), 1), ((0, 5), 2)],
                         ids=["whole_batch", "batch_slice", "strided"])
def test_wgrad_of_a_1x1_layer_in_cnhw_memory(device, images, stride):
    """A 1x1 stride-1 layer's x in [C, N, H, W] memory is the GEMM's B operand where it lies (no
    columns): exact on the whole batch, on a slice of it (an offset, possibly unaligned, start) and,
    for comparison, at stride 2, which gathers columns."""
    n0, n1 = images
    case = (5, 32, 16, 16, 16, 1, 1, stride, 0, 1, 1)
    x, w, g = make_case(case, seed=61)
    cnhw = lambda t: t.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # noqa: E731
    out = (16 - 1) // stride + 1
    gy = cnhw(rand_int8((5, 16, out, out), seed=62))
    assert_wgrad_exact(gy[n0:n1], cnhw(x)[n0:n1], w, g, device, None)


def assert_wgrad_exact(gy, x, w, g, device, limit):
    """conv2d_wgrad on device, under workspace limit `limit` (None: the default), equals the float64
    weight gradient."""
    old = torch_int8.conv.workspace_limit()
    try:
        if limit:
            torch_int8.conv.set_workspace_limit(limit)
        dw = torch_int8.conv2d_wgrad(gy.to(device), x.to(device), w.shape[2:], *geometry_args(g))
    finally:
        torch_int8.conv.set_workspace_limit(old)
    assert torch.equal(dw.cpu().double(), conv2d_weight(x.double(), w.shape, gy.double(), *geometry_args(g)))


# (N, C, H, W, K, R, S, stride, padding, dilation, groups) for wgrad's column rows (pixels
# contiguous), which the GPU fills 16 pixels per thread: vectors crossing output rows and images,
# partial last vectors, padding 0 / 1 / 2, stride 2, dilation 2, groups.
WGRAD_VECTOR_CASES = [
    (3, 5, 7, 5, 4, 3, 3, 1, 1, 1, 1),       # 35 pixels per image
    (2, 6, 13, 9, 8, 3, 3, 2, 1, 1, 2),      # stride 2, groups 2
    (2, 4, 11, 10, 6, 3, 3, 1, 2, 2, 1),     # dilation 2, padding 2
    (5, 8, 9, 9, 8, 1, 1, 2, 0, 1, 1),       # 1x1 stride 2: 25 pixels per image
    (3, 16, 6, 5, 8, 1, 1, 1, 0, 1, 1),      # 1x1 stride 1: channels_last x is the CPU's B operand as it lies
    (2, 3, 17, 4, 5, 3, 2, (2, 1), (0, 1), (1, 2), 1),
]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", WGRAD_VECTOR_CASES, ids=case_id)
@pytest.mark.parametrize("fmt", ["cnhw", "contiguous", "channels_last"])
@pytest.mark.parametrize("limit", [None, 2000], ids=["one_chunk", "chunks"])
def test_wgrad_column_rows_exact(device, case, fmt, limit):
    """conv2d_wgrad on x in the [C, N, H, W] memory Conv2d's backward passes (and two others); with a
    small workspace the chunks of pixels start inside images and end in partial vectors."""
    x, w, g = make_case(case, seed=31)
    if fmt == "cnhw":
        x = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    elif fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref_shape = F.conv2d(x.float(), w.float(), None, *geometry_args(g)).shape
    gy = rand_int8(ref_shape, seed=32)
    assert_wgrad_exact(gy, x, w, g, device, limit)


# (N, C, H, W, K, R, S, padding, dilation, groups) of stride-1 convolutions
DGRAD_AS_FORWARD_CASES = [
    (2, 32, 9, 7, 32, 3, 3, (1, 1), (1, 1), 1),
    (1, 8, 10, 9, 12, 3, 3, (1, 1), (1, 1), 4),
    (2, 6, 11, 8, 6, 3, 3, (2, 1), (2, 1), 2),
    (1, 5, 9, 9, 7, 5, 3, (0, 1), (1, 1), 1),
    (3, 16, 5, 5, 32, 1, 1, (0, 0), (1, 1), 1),
]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", DGRAD_AS_FORWARD_CASES)
def test_dgrad_of_stride_1_is_a_forward_convolution(device, case):
    """What Conv2d's backward runs: conv(dY, W rotated and transposed, dilation*(R-1) - padding)
    equals conv2d_dgrad exactly."""
    from torch_int8.nn.conv_backward import dgrad_as_forward_padding, rotated_filter
    n, c, h, w_, k, r, s, padding, dilation, groups = case
    w = rand_int8((k, c // groups, r, s), seed=21)
    gy = rand_int8((n, k, h + 2 * padding[0] - dilation[0] * (r - 1), w_ + 2 * padding[1] - dilation[1] * (s - 1)),
                   seed=22)
    forward_padding = dgrad_as_forward_padding(w.shape, ((1, 1), padding, dilation, groups))
    dx = torch_int8.conv2d(gy.to(device), rotated_filter(w, groups).to(device), 1, forward_padding, dilation, groups)
    ref = conv2d_input((n, c, h, w_), w.double(), gy.double(), 1, padding, dilation, groups)
    assert dx.shape == ref.shape and torch.equal(dx.cpu().double(), ref)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", [(2, 32, 9, 7, 48, 3, 3, 1, 1, 1, 1), (2, 6, 7, 7, 6, 3, 3, 1, 2, 2, 6)],
                         ids=["implicit_gemm", "grouped_im2col"])
def test_channels_last_weight(device, case):
    """A channels_last weight (a model moved to channels_last; the implicit-GEMM kernel reads it in
    place) gives the same exact sums as a contiguous one, on both forward paths."""
    x, w, g = make_case(case, seed=61, fmt="channels_last")
    x = x.to(device)
    w_cl = w.contiguous(memory_format=torch.channels_last).to(device)
    assert torch.equal(torch_int8.conv2d(x, w_cl, *geometry_args(g)).cpu(),
                       torch_int8.conv2d(x, w.to(device), *geometry_args(g)).cpu())


def test_dgrad_as_forward_only_for_stride_1_and_small_padding():
    from torch_int8.nn.conv_backward import dgrad_as_forward_padding
    assert dgrad_as_forward_padding((4, 4, 3, 3), ((1, 1), (1, 1), (1, 1), 1)) == (1, 1)
    assert dgrad_as_forward_padding((4, 4, 3, 3), ((2, 1), (1, 1), (1, 1), 1)) is None
    assert dgrad_as_forward_padding((4, 4, 3, 3), ((1, 1), (3, 1), (1, 1), 1)) is None


def poisoned(t, image):
    t = t.clone()
    t[image, 0, 1, 1] = float("nan")
    t[image + 1, 1, 0, 0] = float("inf")
    return t


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "sliced"])
def test_layer_quantizers_equal_quantize(device, dtype, fmt):
    """Conv2d's quantizers (fewer passes over the tensor) give quantize()'s data and scales bit for
    bit, non-finite images and channels included."""
    from torch_int8.nn.conv_backward import quantize_channels, quantize_images, quantize_images_with_channel_stats
    t = torch.randn(4, 6, 5, 7, generator=make_gen(41)) * torch.rand(4, 6, 1, 1, generator=make_gen(42)) * 3
    t[3] = 0  # an all-zero image: scale 1
    t = poisoned(t, 1).to(device, dtype)
    if fmt == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif fmt == "sliced":
        t = torch.cat([t, t], dim=3)[:, :, :, ::2]
    for got, dim in ((quantize_images(t, "nearest"), 0), (quantize_channels(t, Int8Config()), 1)):
        want = torch_int8.quantize(t, dim)
        assert got.dim == dim and got.data.shape == t.shape
        assert torch.equal(got.data.cpu(), want.data.cpu())
        assert torch.allclose(got.scale.cpu(), want.scale.cpu(), rtol=0, atol=0, equal_nan=True)
    # the backward's one pass over dY: per-image data, and the channel maxima / sums of wgrad and the bias
    q, amax, total = quantize_images_with_channel_stats(t, "nearest", amax=True, sums=True)
    assert torch.equal(q.data.cpu(), torch_int8.quantize(t, 0).data.cpu())
    pixels = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    assert torch.allclose(amax.cpu(), torch_int8.column_amax(pixels).cpu(), rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(total.cpu(), t.float().sum((0, 2, 3)).cpu(), rtol=1e-5, atol=1e-5, equal_nan=True)


# ------------------------------------------------------------------------------------------------
# layers
# ------------------------------------------------------------------------------------------------


def per_weight_input_channel(v, k, groups):
    """[1, C, 1, 1] per-input-channel values as [K, C/G, 1, 1] (the group of output channel k)."""
    c = v.numel()
    return v.reshape(groups, 1, c // groups).expand(groups, k // groups, c // groups).reshape(k, c // groups, 1, 1)


def layer_bounds(x, w, gy, geometry, per_channel):
    """Elementwise bounds for Conv2d's output, grad_input and grad_weight (see the module docstring)."""
    stride, padding, dilation, groups = geometry
    conv = lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, groups)  # noqa: E731
    dgrad = lambda g, b: conv2d_input(x.shape, b, g, stride, padding, dilation, groups)  # noqa: E731
    wgrad = lambda a, g: conv2d_weight(a, w.shape, g, stride, padding, dilation, groups)  # noqa: E731
    one_x, one_w, one_g = torch.ones_like(x), torch.ones_like(w), torch.ones_like(gy)
    d = (lambda dim: dim) if per_channel else (lambda dim: None)
    sx, sw = quant_step(x, d(0)), quant_step(w, d(0)).reshape(1, -1, 1, 1) if per_channel else quant_step(w, None)
    y = sx / 2 * conv(one_x, w.abs()) + sw / 2 * conv(x.abs(), one_w) + sx * sw / 4 * conv(one_x, one_w)
    sg = quant_step(gy, d(0))
    if per_channel:  # w per input channel c = g*C/G + c'
        k, cg = w.shape[:2]
        swc = w.abs().reshape(groups, k // groups, cg, -1).amax(dim=(1, 3)).reshape(1, -1, 1, 1) / 127
    else:
        swc = quant_step(w, None)
    dx = sg / 2 * dgrad(one_g, w.abs()) + swc / 2 * dgrad(gy.abs(), one_w) + sg * swc / 4 * dgrad(one_g, one_w)
    sgk, sxc = quant_step(gy, d(1)), quant_step(x, d(1))
    if per_channel:
        sgk, sxc = sgk.reshape(-1, 1, 1, 1), per_weight_input_channel(sxc, w.shape[0], groups)
    dw = sgk / 2 * wgrad(x.abs(), one_g) + sxc / 2 * wgrad(one_x, gy.abs()) + sgk * sxc / 4 * wgrad(one_x, one_g)
    return y, dx, dw


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("setup", [(1, 1, 1, "contiguous"), (2, 2, 2, "channels_last"), (1, 1, 4, "channels_last"),
                                   (2, 1, 2, "contiguous")], ids=["s1g1", "s2d2g2", "g4", "s2g2"])
def test_conv2d_layer_within_quantization_bounds(device, granularity, setup):
    stride, dilation, groups, fmt = setup
    gen = make_gen(21)
    conv = torch.nn.Conv2d(8, 12, 3, stride=stride, padding=1, dilation=dilation, groups=groups).to(device)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen).to(device) * 0.1)
    x = torch.randn(3, 8, 11, 9, generator=gen) * (torch.rand(3, 1, 1, 1, generator=gen) + 0.5)
    x = x.to(device)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    layer = torch_int8.nn.Conv2d.from_float(conv, Int8Config(granularity=granularity))
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    gy = torch.randn(y.shape, generator=make_gen(22)).to(device)
    y.backward(gy)
    geometry = (conv.stride, conv.padding, conv.dilation, groups)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    by, bdx, bdw = layer_bounds(xd, wd, gd, geometry, granularity == "channel")
    check_within(y.detach().cpu(), F.conv2d(xd, wd, conv.bias.detach().double().cpu(), *geometry), by)
    check_within(x.grad.cpu(), conv2d_input(xd.shape, wd, gd, *geometry), bdx)
    check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)
    assert torch.allclose(conv.bias.grad.double().cpu(), gd.sum((0, 2, 3)))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_conv2d_layer_float_paths_and_state_dict(device):
    conv = torch.nn.Conv2d(4, 6, 3, padding="same").to(device)
    layer = torch_int8.nn.Conv2d(4, 6, 3, padding="same", device=device,
                                 config=Int8Config(forward=False, grad_input=False, grad_weight=False))
    layer.load_state_dict(conv.state_dict())
    assert layer.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(2, 4, 5, 5, generator=make_gen(1)).to(device).requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    assert torch.allclose(y, conv(x), atol=1e-5)
    grads = [t.grad.clone() for t in (x, layer.weight, layer.bias)]
    x.grad = None
    conv(x).sum().backward()
    for got, want in zip(grads, (x.grad, conv.weight.grad, conv.bias.grad)):
        assert torch.allclose(got, want, atol=1e-5)


def test_conv2d_layer_refuses_other_padding_modes():
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        torch_int8.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="padding='same' needs"):
        torch_int8.nn.Conv2d(2, 2, 2, padding="same")
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), torch.nn.Conv2d(2, 2, 3))
    torch_int8.convert(model)
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is torch_int8.nn.Conv2d


def test_wgrad_of_large_batches_is_split():
    """N*P*Q over 131071: the layer adds int32 wgrads of sub-batches in int64."""
    conv = torch.nn.Conv2d(1, 2, 1, bias=False)
    x = torch.randn(3, 1, 220, 220, generator=make_gen(5), requires_grad=True)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    gy = torch.randn(3, 2, 220, 220, generator=make_gen(6))
    layer(x).backward(gy)
    ref = conv2d_weight(x.detach().double(), conv.weight.shape, gy.double())
    assert torch.allclose(conv.weight.grad.double(), ref, rtol=0.02, atol=0.02 * float(ref.abs().max()))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_quantized_conv2d_bn_folding_relu_and_int8_chain(device):
    gen = make_gen(31)
    conv, bn = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(8, generator=gen))
        bn.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(8, generator=gen))
        bn.bias.copy_(torch.randn(8, generator=gen))
    conv, bn = conv.to(device).eval(), bn.to(device).eval()
    x = torch.randn(2, 3, 9, 7, generator=gen).to(device)
    with torch.no_grad():
        ref = torch.relu(bn(conv(x)))

    q = torch_int8.nn.QuantizedConv2d.from_float(conv, bn, relu=True)
    y = q(x)
    scale = float(ref.abs().max())
    assert y.dtype == torch.float32 and float((y - ref).abs().max()) < 0.03 * scale
    # int8 output: zero point -128 makes the saturation the ReLU; dequantized within half a step of y
    q8 = torch_int8.nn.QuantizedConv2d.from_float(conv, bn, relu=True, out_scale=scale / 255)
    y8 = q8(x)
    assert isinstance(y8, QTensor) and y8.data.dtype == torch.int8 and int(y8.zero_point) == -128
    deq = y8.dequantize()
    # values above the int8 range (y can exceed max|ref| by its quantization error) saturate
    top = float(torch.tensor(255.0) * y8.scale.cpu())
    assert float((deq - y.clamp(max=top)).abs().max()) <= scale / 255 * 0.5001 + 1e-6
    # chained: the int8 QTensor feeds the next layer (padding holds its zero point, i.e. real 0)
    nxt = torch_int8.nn.QuantizedConv2d.from_float(torch.nn.Conv2d(8, 4, 3, padding=1).to(device))
    want = nxt(deq)
    got = nxt(y8)
    assert float((got - want).abs().max()) < 0.05 * float(want.abs().max())


# ------------------------------------------------------------------------------------------------
# dynamic_conv2d: the layer's forward as one op
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dynamic_conv2d_equals_quantize_then_scaled_conv2d(device, per_channel, fmt, dtype):
    # Bit for bit the three ops it composes: x per image (or tensor), W per output channel (or
    # tensor), scaled_conv2d with the bias; y and the int8 x in x's memory format.
    gen = make_gen(31)
    x = (torch.randn(3, 16, 9, 7, generator=gen) * 3).to(device, dtype)
    w = (torch.randn(24, 8, 3, 3, generator=gen) * 0.1).to(device, dtype)
    bias = torch.randn(24, generator=gen).to(device, dtype)
    if fmt == "channels_last":
        x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
    y, qx = torch_int8.conv.dynamic_conv2d(x, w, bias, 2, (1, 0), 1, 2, per_channel, torch.float32)
    dim = 0 if per_channel else None
    want_qx, want_qw = torch_int8.quantize(x, dim), torch_int8.quantize(w, dim)
    want = torch_int8.scaled_conv2d(want_qx, want_qw, bias, 2, (1, 0), 1, 2, out_dtype=torch.float32)
    assert torch.equal(qx.data.cpu(), want_qx.data.cpu()) and torch.equal(qx.scale.cpu(), want_qx.scale.cpu())
    assert qx.dim == dim and torch.equal(y.cpu(), want.cpu())
    layout = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=layout) and qx.data.is_contiguous(memory_format=layout)
    ref = F.conv2d(x.double(), w.double(), bias.double(), 2, (1, 0), 1, 2)
    assert float((y.double() - ref).abs().max()) < 0.05 * float(ref.abs().max())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_layer_takes_an_unbatched_image(device):
    # nn.Conv2d takes [C, H, W]; so does the drop-in, forward and backward.
    conv = torch.nn.Conv2d(8, 16, 3, padding=1).to(device)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    x = torch.randn(8, 10, 9, generator=make_gen(3)).to(device).requires_grad_()
    y = layer(x)
    assert y.shape == (16, 10, 9)
    y.sum().backward()
    x1 = x.detach().unsqueeze(0).requires_grad_()
    y1 = layer(x1)
    y1.sum().backward()
    assert torch.equal(y.detach(), y1.detach()[0]) and torch.equal(x.grad, x1.grad[0])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("groups", [1, 2, 8])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_quantize_rotated_filter_is_the_rotated_filter_quantized(device, groups, per_channel):
    # dgrad's filter W'[g*C/G + c, k, r, s] = W[g*K/G + k, c, R-1-r, S-1-s], quantized per input
    # channel (a row of W') or per tensor, in channels_last memory (the kernel's filter layout).
    from torch_int8.nn.conv_backward import rotated_filter
    w = torch.randn(16, 24 // groups, 3, 5, generator=make_gen(51)).to(device, torch.bfloat16)
    data, scale = torch.ops.int8.quantize_rotated_filter(w, groups, per_channel)
    want = torch_int8.quantize(rotated_filter(w, groups), 0 if per_channel else None)
    assert data.shape == (24, 16 // groups, 3, 5) and data.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(data, want.data) and torch.equal(scale, want.scale)


# ------------------------------------------------------------------------------------------------
# strided 1x1 convolutions: grad_input as one GEMM scattered to every stride-th pixel
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("n,c,h,w,k,stride", [(2, 5, 9, 7, 6, (2, 2)), (3, 16, 8, 11, 24, (3, 2)), (1, 3, 5, 5, 1, (2, 1))])
@pytest.mark.parametrize("per_image", [True, False], ids=["per_image", "per_tensor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_pointwise_grad_input_equals_scaled_dgrad(device, n, c, h, w, k, stride, per_image, dtype, fmt):
    # The same exact sums, scales and float32 rounding as the col2im path it replaces.
    from torch_int8.nn.conv_backward import pointwise_grad_input

    p, q = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    g = make_gen(n * c + k)
    gy = rand_int8((n, k, p, q), seed=n + k)
    if fmt == "channels_last":
        gy = gy.contiguous(memory_format=torch.channels_last)
    wt = rand_int8((k, c, 1, 1), seed=c)
    s_gy = torch.rand(n if per_image else (), generator=g) + 0.5
    s_w = torch.rand(c if per_image else (), generator=g) * 1e-2 + 1e-3
    qg = QTensor(gy.to(device), s_gy.to(device), None, 0 if per_image else None)
    got = pointwise_grad_input(qg, wt.to(device), s_w.to(device), (n, c, h, w), stride, dtype)
    ref = torch_int8.conv.scaled_conv2d_dgrad(qg, QTensor(wt.to(device), s_w.to(device), None, None), (h, w),
                                              stride, 0, 1, 1, out_dtype=dtype)
    assert got.shape == (n, c, h, w) and got.dtype == dtype
    assert torch.equal(got.cpu(), ref.cpu())
    assert bool((got != 0).any())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_strided_pointwise_layer_within_quantization_bounds(device, granularity, fmt):
    # The layer quantizes only the pixels a strided 1x1 convolution reads: its output and weight
    # gradient stay within the bounds of quantizing all of x (whose steps are at least as large), and
    # pixels the layer does not read change nothing.
    gen = make_gen(23)
    conv = torch.nn.Conv2d(32, 48, 1, stride=2).to(device)
    x = torch.randn(3, 32, 9, 11, generator=gen).to(device)
    x = x.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else x
    x.requires_grad_(True)
    layer = torch_int8.nn.Conv2d.from_float(conv, Int8Config(granularity=granularity))
    y = layer(x)
    gy = torch.randn(y.shape, generator=make_gen(24)).to(device)
    y.backward(gy)
    geometry = (conv.stride, conv.padding, conv.dilation, 1)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    by, _, bdw = layer_bounds(xd, wd, gd, geometry, granularity == "channel")
    check_within(y.detach().cpu(), F.conv2d(xd, wd, conv.bias.detach().double().cpu(), *geometry), by)
    check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)
    unread = x.detach().clone()
    unread[:, :, 1::2] = 1e4  # every pixel off the stride, far above the rest
    assert torch.equal(layer(unread).detach().cpu(), y.detach().cpu())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_strided_pointwise_layer_gradients(device):
    # nn.Conv2d(16 -> 24, 1x1, stride 2) through the layer: grad_input within the quantization bound.
    gen = make_gen(5)
    conv = torch.nn.Conv2d(16, 24, 1, stride=2, bias=False).to(device)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    x = torch.randn(3, 16, 9, 10, generator=gen).to(device).requires_grad_()
    gy = torch.randn(3, 24, 5, 5, generator=gen).to(device)
    layer(x).backward(gy)
    ref = conv2d_input(x.shape, conv.weight.detach().double(), gy.double(), stride=2)
    assert bool((x.grad[:, :, 1::2] == 0).all()) and bool((x.grad[:, :, :, 1::2] == 0).all())
    err = float((x.grad.double() - ref).abs().max())
    # dY per image and W per input channel round to half a step (max / 254) each; 24 products per output
    d_gy, d_w = float(gy.abs().max()) / 254, float(conv.weight.detach().abs().max()) / 254
    bound = 24 * (float(gy.abs().max()) * d_w + float(conv.weight.detach().abs().max()) * d_gy + d_gy * d_w)
    assert err <= bound and bound < 0.1 * float(ref.abs().max())


# (N, C, H, W, K, R, S, stride, padding, groups): strided dgrads that Conv2d runs by phases
PHASE_CASES = [
    (2, 32, 9, 7, 32, 3, 3, (2, 2), (1, 1), 1),     # ResNet's strided 3x3, odd sizes
    (1, 8, 10, 11, 12, 3, 3, (2, 2), (0, 1), 4),    # groups
    (2, 6, 13, 8, 6, 5, 3, (3, 2), (2, 0), 2),      # stride 3, rectangular filter
    (1, 3, 15, 15, 8, 7, 7, (2, 2), (3, 3), 1),     # the 7x7 stem
    (2, 4, 6, 9, 5, 2, 4, (2, 3), (1, 2), 1),       # even filter, filter narrower than the stride on one axis
    (1, 4, 8, 8, 4, 1, 3, (2, 2), (0, 1), 1),       # 1-row filter: phases without taps
]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", PHASE_CASES)
def test_strided_dgrad_by_phases_is_exact(device, case):
    """Conv2d's strided dgrad: one stride-1 convolution per phase, written to its strided share of
    dX, equals conv2d_dgrad exactly (here with the exact int32 conv2d as each phase's product)."""
    from torch_int8.nn.conv_backward import dgrad_by_phases, dgrad_phases, rotated_filter
    n, c, h, w_, k, r, s, stride, padding, groups = case
    w = rand_int8((k, c // groups, r, s), seed=71)
    out_hw = [(size + 2 * p - f) // st + 1 for size, p, f, st in zip((h, w_), padding, (r, s), stride)]
    gy = rand_int8((n, k, *out_hw), seed=72).to(device)
    geometry = (stride, padding, (1, 1), groups)
    phases = dgrad_phases(w.shape, (h, w_), out_hw, geometry)
    assert len(phases) == stride[0] * stride[1] or h < stride[0] or w_ < stride[1]
    dx = dgrad_by_phases(gy, rotated_filter(w, groups).to(device), (n, c, h, w_), geometry, phases,
                          lambda f, p: torch_int8.conv2d(gy, f, 1, p, 1, groups), torch.int32)
    ref = conv2d_input((n, c, h, w_), w.double(), gy.cpu().double(), stride, padding, 1, groups)
    assert torch.equal(dx.cpu().double(), ref)
    assert dgrad_phases(w.shape, (h, w_), out_hw, ((1, 1), padding, (1, 1), groups)) is None
    assert dgrad_phases(w.shape, (h, w_), out_hw, (stride, padding, (2, 1), groups)) is None


def test_strided_dgrad_by_phases_only_where_the_kernel_takes_the_phases():
    """The measured rule (nn/conv.py phases_pay): ResNet's strided 3x3 (128 -> 64 channels of dX) by
    phases; the 3-channel stem, grouped layers and dY channels not a multiple of 32 by col2im."""
    from torch_int8.nn.conv_backward import phases_pay
    assert phases_pay((128, 64, 3, 3), 1, torch.bfloat16) and phases_pay((32, 4, 3, 3), 1, torch.float32)
    assert not phases_pay((64, 3, 7, 7), 1, torch.bfloat16)
    assert not phases_pay((128, 32, 3, 3), 2, torch.bfloat16)
    assert not phases_pay((48, 64, 3, 3), 1, torch.bfloat16)


# (device, stride, H): a strided layer (its dgrad by phases) on the CPU; on the GPU a stride-1 layer
# large enough for the implicit-GEMM wgrad (the kernel family queried while tracing)
COMPILE_CASES = [pytest.param("cpu", 2, 12, id="cpu-strided"),
                 pytest.param("cuda", 1, 28, id="cuda-implicit-wgrad", marks=CUDA_ONLY[0].marks)]


@pytest.mark.parametrize("device,stride,size", COMPILE_CASES)
def test_conv2d_layer_compiles_without_graph_breaks(device, stride, size):
    """torch.compile(fullgraph=True) of the layer (the custom ops' Meta kernels, the composite ops,
    the autograd function): the same output and gradients."""
    conv = torch.nn.Conv2d(16, 32, 3, stride=stride, padding=1).to(device)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    x = torch.randn(2, 16, size, size, generator=make_gen(81)).to(device).requires_grad_(True)
    y = layer(x)
    assert (device == "cuda") == y.grad_fn.implicit_wgrad
    gy = torch.randn(y.shape, generator=make_gen(82)).to(device)
    y.backward(gy)
    want = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    x.grad = conv.weight.grad = conv.bias.grad = None
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert torch.equal(y, layer(x))
    y.backward(gy)
    for got, ref in zip((x.grad, conv.weight.grad, conv.bias.grad), want):
        assert torch.equal(got, ref)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("channels", [(14600, 4), (4, 14600)], ids=["forward", "dgrad"])
def test_conv2d_layer_trains_beyond_the_int32_depth(device, channels):
    """C*R*S (forward) or K*R*S (input gradient) of 131400: int32 slices summed in int64, so no
    depth a layer can reach is refused; the weight gradient reduces over the pixels."""
    conv = torch.nn.Conv2d(*channels, 3, padding=1, bias=False).to(device)
    x = torch.randn(1, channels[0], 3, 3, generator=make_gen(61)).to(device).requires_grad_(True)
    y = torch_int8.nn.Conv2d.from_float(conv)(x)
    gy = torch.randn(y.shape, generator=make_gen(62)).to(device)
    y.backward(gy)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    geometry = ((1, 1), (1, 1), (1, 1), 1)
    by, bdx, bdw = layer_bounds(xd, wd, gd, geometry, per_channel=True)
    check_within(y.detach().cpu(), F.conv2d(xd, wd, None, *geometry), by)
    check_within(x.grad.cpu(), conv2d_input(xd.shape, wd, gd, *geometry), bdx)
    check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)


def test_implicit_conv_can_implement_query():
    """_C.implicit_conv_can_implement: the C++ families' channel rules. device_index None asks
    every family with the kernel (the sm90 forward needs C % 32), answered in every build; a device
    without an implicit-GEMM family (or a build without CUDA) takes nothing."""
    from torch_int8 import _C
    assert _C.implicit_conv_can_implement("fprop", None, 64, 64, 1, 2)
    assert not _C.implicit_conv_can_implement("fprop", None, 16, 64, 1, 2)  # sm90: C % 32
    assert not _C.implicit_conv_can_implement("fprop", None, 64, 4, 1, 2)  # output rows of 8 bytes
    assert not _C.implicit_conv_can_implement("fprop", None, 64, 64, 2, 2)
    assert _C.implicit_conv_can_implement("wgrad", None, 16, 32, 1, 4)
    assert not _C.implicit_conv_can_implement("wgrad", None, 8, 32, 1, 4)
    with pytest.raises(ValueError, match="kernel must be"):
        _C.implicit_conv_can_implement("dgrad", None, 64, 64, 1, 2)
    if not _C.build_info()["cuda"]:
        assert not _C.implicit_conv_can_implement("fprop", 0, 64, 64, 1, 2)
        assert not _C.implicit_conv_can_implement("wgrad", 0, 64, 64, 1, 4)
