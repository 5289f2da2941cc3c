"""torch_int8.scaled_gemm: int8 GEMM with a fused fp32 dequantize / bias / (re)quantize epilogue."""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
import torch

import torch_int8
from conftest import CUDA_ONLY, DEVICE_PARAMS, make_gen

QTensor = torch_int8.QTensor

# relative rounding error of the output dtype (round to nearest: half an ulp)
REL = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 1e-6}

# (M, K, N)
SHAPES = [(1, 64, 40), (5, 3, 7), (37, 91, 53), (128, 512, 256)]
A_MODES = ["tensor-sym", "row-sym", "tensor-asym", "row-asym"]
B_MODES = ["tensor", "col"]
OUT = [
    pytest.param(torch.bfloat16, 0, id="bf16"),
    pytest.param(torch.float16, 0, id="fp16"),
    pytest.param(torch.float32, 0, id="fp32"),
    pytest.param(torch.int8, 0, id="int8-zp0"),
    pytest.param(torch.int8, 5, id="int8-zp5"),
]


def f32(v: float) -> float:
    """v rounded to the nearest float32 (so that float32/float64 handling of a Python float agree)."""
    return float(torch.tensor(v, dtype=torch.float32))


def make_a(M, K, mode, seed, device, col_major=False):
    per, sym = mode.split("-")
    g = make_gen(seed)
    symmetric = sym == "sym"
    low = -127 if symmetric else -128
    if col_major:
        data = torch.randint(low, 128, (K, M), dtype=torch.int8, generator=g).t()
    else:
        data = torch.randint(low, 128, (M, K), dtype=torch.int8, generator=g)
    n = () if per == "tensor" else (M,)
    scale = torch.rand(n, generator=g) * 0.01 + 0.005
    zp = None if symmetric else torch.randint(-128, 128, n, dtype=torch.int32, generator=g)
    dim = None if per == "tensor" else 0
    return QTensor(
        data=data.to(device), scale=scale.to(device), zero_point=None if zp is None else zp.to(device), dim=dim
    )


def make_b(K, N, mode, seed, device, col_major=True):
    g = make_gen(seed)
    if col_major:  # w.t() of an [N, K] weight, the nn.Linear layout
        data = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=g).t()
    else:
        data = torch.randint(-127, 128, (K, N), dtype=torch.int8, generator=g)
    n = () if mode == "tensor" else (N,)
    scale = torch.rand(n, generator=g) * 0.01 + 0.005
    dim = None if mode == "tensor" else 1
    return QTensor(data=data.to(device), scale=scale.to(device), zero_point=None, dim=dim)


def ref_scaled_gemm(a, b, bias):
    """float64 reference value and a bound on the magnitude of the fp32 epilogue's intermediates."""
    ad = a.data.cpu().double()
    bd = b.data.cpu().double()
    M, N = ad.shape[0], bd.shape[1]
    zp = torch.zeros(()) if a.zero_point is None else a.zero_point.cpu().double()
    zp = zp.reshape(-1, 1) if zp.dim() == 1 else zp
    sa = a.scale.cpu().double()
    sa = sa.reshape(-1, 1) if sa.dim() == 1 else sa
    sb = b.scale.cpu().double()
    sb = sb.reshape(1, -1) if sb.dim() == 1 else sb
    raw = ad @ bd
    acc = (ad - zp) @ bd
    ref = acc * sa * sb
    mag = (raw.abs() + (zp * bd.sum(0, keepdim=True)).abs() + acc.abs()) * sa * sb
    if bias is not None:
        ref = ref + bias.cpu().double()
        mag = mag + bias.cpu().double().abs()
    assert ref.shape == (M, N)
    return ref, mag


def float_tol(ref, mag, dtype):
    slack = 1e-6 * max(float(mag.max()), float(ref.abs().max()))
    return REL[dtype] * ref.abs() + slack + (1e-7 if dtype == torch.float16 else 0.0)


def check_float_out(out, ref, mag, dtype):
    assert out.dtype == dtype
    assert tuple(out.shape) == tuple(ref.shape)
    o = out.cpu().double()
    assert torch.isfinite(o).all()
    err = (o - ref).abs()
    tol = float_tol(ref, mag, dtype)
    assert (err <= tol).all(), f"max err {float(err.max())}, max err/tol {float((err / tol).max())}"


def check_int8_out(out, ref, mag, out_scale, out_zp):
    assert out.dtype == torch.int8
    assert tuple(out.shape) == tuple(ref.shape)
    v = ref / out_scale
    expected = torch.clamp(torch.round(v) + out_zp, -128, 127)  # torch.round: half to even
    diff = (out.cpu().double() - expected).abs()
    # fp32-epilogue error in output units, plus 1e-3: an off-by-one is allowed only next to a .5 tie
    window = 1e-3 + float_tol(ref, mag, torch.float32) / out_scale
    near_tie = ((v - torch.floor(v)) - 0.5).abs() <= window
    ok = (diff == 0) | ((diff <= 1) & near_tie)
    assert ok.all(), f"{int((~ok).sum())} wrong entries, max |diff| {float(diff.max())}"
    return expected


def pick_out_scale(ref):
    # about 120 steps over the largest value: with zero point 5 a few values clamp at 127
    return f32(float(ref.abs().max()) / 120.0)


def make_bias(N, seed, magnitude, device):
    g = make_gen(seed)
    return (torch.randn(N, generator=g) * magnitude).to(device)


# ------------------------------------------------------------------------------------------------
# against the float64 reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("a_mode", A_MODES)
@pytest.mark.parametrize("b_mode", B_MODES)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("out_dtype,out_zp", OUT)
def test_scaled_gemm_reference(device, M, K, N, a_mode, b_mode, with_bias, out_dtype, out_zp):
    seed = M * 1000 + K * 10 + N
    a = make_a(M, K, a_mode, seed, device)
    b = make_b(K, N, b_mode, seed + 1, device)
    ref0, _ = ref_scaled_gemm(a, b, None)
    bias = make_bias(N, seed + 2, 0.5 * float(ref0.abs().max()) + 1e-3, device) if with_bias else None
    ref, mag = ref_scaled_gemm(a, b, bias)

    if out_dtype == torch.int8:
        out_scale = pick_out_scale(ref)
        out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=torch.int8, out_scale=out_scale, out_zero_point=out_zp)
        assert out.device.type == torch.device(device).type
        expected = check_int8_out(out, ref, mag, out_scale, out_zp)
        # the data do use the int8 range (the test is not vacuous)
        assert int(expected.max()) - int(expected.min()) > 100
    else:
        out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype)
        assert out.device.type == torch.device(device).type
        check_float_out(out, ref, mag, out_dtype)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_dtype,out_zp", [OUT[0], OUT[2], OUT[4]])
def test_tall_product_row_blocks(device, out_dtype, out_zp):
    """A product tall enough that the CPU forms its int32 sums in blocks of rows (at least
    max(K, 65536 / N) rows each; the last one ragged), each rescaled with its rows' scales and
    offsets: the float64 reference everywhere, and the row maxima of the same epilogue."""
    M, K, N = 5000, 64, 40
    a = make_a(M, K, "row-asym", 71, device)
    b = make_b(K, N, "col", 72, device)
    ref0, _ = ref_scaled_gemm(a, b, None)
    bias = make_bias(N, 73, 0.5 * float(ref0.abs().max()), device)
    ref, mag = ref_scaled_gemm(a, b, bias)
    if out_dtype == torch.int8:
        out_scale = pick_out_scale(ref)
        out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=torch.int8, out_scale=out_scale, out_zero_point=out_zp)
        check_int8_out(out, ref, mag, out_scale, out_zp)
        return
    check_float_out(torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype), ref, mag, out_dtype)
    sym = make_a(M, K, "row-sym", 74, device)
    out, row_amax = torch_int8.scaled_gemm_row_amax(sym, b, bias=bias, out_dtype=out_dtype)
    assert torch.equal(row_amax.cpu(), out.float().abs().amax(1).cpu())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_default_out_dtype_is_bf16(device):
    a = make_a(9, 33, "row-sym", 1, device)
    b = make_b(33, 17, "col", 2, device)
    out = torch_int8.scaled_gemm(a, b)
    ref, mag = ref_scaled_gemm(a, b, None)
    check_float_out(out, ref, mag, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("a_col", [False, True], ids=["a_row", "a_col"])
@pytest.mark.parametrize("b_col", [False, True], ids=["b_row", "b_col"])
@pytest.mark.parametrize("a_mode", ["row-sym", "row-asym"])
def test_layouts(device, a_col, b_col, a_mode):
    M, K, N = 45, 77, 29
    a = make_a(M, K, a_mode, 5, device, col_major=a_col)
    b = make_b(K, N, "col", 6, device, col_major=b_col)
    bias = make_bias(N, 7, 1.0, device)
    ref, mag = ref_scaled_gemm(a, b, bias)
    out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=torch.float32)
    check_float_out(out, ref, mag, torch.float32)
    # sliced (non-contiguous) data and scales
    big = torch.randint(-127, 128, (M, 2 * K), dtype=torch.int8, generator=make_gen(8)).to(device)
    scale_big = (torch.rand(2 * M, generator=make_gen(9)) * 0.01 + 0.005).to(device)
    a2 = QTensor(data=big[:, 1::2], scale=scale_big[::2], zero_point=None, dim=0)
    ref2, mag2 = ref_scaled_gemm(a2, b, bias)
    check_float_out(torch_int8.scaled_gemm(a2, b, bias=bias, out_dtype=torch.float32), ref2, mag2, torch.float32)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_zp", [0, 4, 3, -7])
def test_int8_out_clamps_and_rounds_half_even(device, out_zp):
    # a per-tensor, b per-tensor, scales 1: the value is the integer sum itself, out_scale 2 -> exact ties.
    # The zero point is added after rounding (docs/api.md): with an odd one, round(v/s + zp) would differ.
    M, K, N = 4, 3, 6
    a_data = torch.tensor([[1, 0, 0], [3, 0, 0], [5, 0, 0], [-3, 0, 0]], dtype=torch.int8)
    b_data = torch.tensor([[1, 2, 100, -100, 127, 0]] + [[0] * N] * (K - 1), dtype=torch.int8)
    one = torch.tensor(1.0)
    a = QTensor(data=a_data.to(device), scale=one.to(device), zero_point=None, dim=None)
    b = QTensor(data=b_data.to(device), scale=one.to(device), zero_point=None, dim=None)
    out = torch_int8.scaled_gemm(a, b, out_dtype=torch.int8, out_scale=2.0, out_zero_point=out_zp).cpu()
    ref = a_data.double() @ b_data.double()  # exact
    expected = torch.clamp(torch.round(ref / 2.0) + out_zp, -128, 127).to(torch.int8)
    assert torch.equal(out, expected), (out, expected)
    # 1/2 -> 0, 3/2 -> 2, 5/2 -> 2, -3/2 -> -2 (half to even); 5*127/2 and -5*100/2 clamp
    assert out[:, 0].tolist() == [out_zp, 2 + out_zp, 2 + out_zp, -2 + out_zp]
    assert out[2, 4] == 127 and out[2, 3] == -128


# ------------------------------------------------------------------------------------------------
# against dequantize(a) @ dequantize(b) + bias, with quantize() producing the operands
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("a_dim", [None, 0])
@pytest.mark.parametrize("a_sym", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("b_dim", [None, 1])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("M,K,N", [(1, 128, 64), (37, 91, 53), (64, 256, 96)])
def test_matches_dequantized_matmul(device, a_dim, a_sym, b_dim, out_dtype, M, K, N):
    g = make_gen(M + K + N)
    x = (torch.randn(M, K, generator=g) * (torch.rand(M, 1, generator=g) * 3 + 0.2) + 0.3).to(device)
    w = (torch.randn(K, N, generator=g) * 0.05).to(device)
    bias = (torch.randn(N, generator=g) * 0.1).to(device)
    qa = torch_int8.quantize(x, a_dim, symmetric=a_sym)
    qb = torch_int8.quantize(w, b_dim, symmetric=True)
    out = torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=out_dtype)
    da = torch_int8.dequantize(qa).double().cpu()
    db = torch_int8.dequantize(qb).double().cpu()
    ref = da @ db + bias.double().cpu()
    mag = da.abs() @ db.abs() + bias.double().cpu().abs()
    check_float_out(out, ref, mag, out_dtype)
    # and it approximates the float product (quantization error only)
    exact = x.double().cpu() @ w.double().cpu() + bias.double().cpu()
    rel = float((out.double().cpu() - exact).norm() / exact.norm())
    assert rel < 0.05


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_b_asymmetric(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    b_asym = QTensor(data=b.data, scale=b.scale, zero_point=torch.zeros(5, dtype=torch.int32, device=device), dim=1)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b_asym)
    b_asym0 = QTensor(data=b.data, scale=b.scale[0], zero_point=torch.tensor(3, dtype=torch.int32, device=device), dim=None)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b_asym0)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_b_per_row(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    b_rows = QTensor(data=b.data, scale=torch.full((8,), 0.01, device=device), zero_point=None, dim=0)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b_rows)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_a_per_column(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    a_cols = QTensor(data=a.data, scale=torch.full((8,), 0.01, device=device), zero_point=None, dim=1)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a_cols, b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_scale_size(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(QTensor(data=a.data, scale=a.scale[:3], zero_point=None, dim=0), b)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, QTensor(data=b.data, scale=torch.ones(6, device=device), zero_point=None, dim=1))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("bias_shape", [(4,), (6,)])
def test_error_bias_size(device, bias_shape):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b, bias=torch.zeros(bias_shape, device=device))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_k_mismatch(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(9, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_data_dtype(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(TypeError):
        torch_int8.scaled_gemm(QTensor(data=a.data.to(torch.int32), scale=a.scale, zero_point=None, dim=0), b)
    with pytest.raises(TypeError):
        torch_int8.scaled_gemm(a, QTensor(data=b.data.float(), scale=b.scale, zero_point=None, dim=1))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_dtype", [torch.int32, torch.float64, torch.int64, torch.uint8], ids=str)
def test_error_out_dtype(device, out_dtype):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    # (no out_scale: that alone may be refused for a non-int8 out_dtype)
    with pytest.raises((TypeError, ValueError)):
        torch_int8.scaled_gemm(a, b, out_dtype=out_dtype)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_int8_out_needs_out_scale(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b, out_dtype=torch.int8)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_scale", [math.nan, math.inf, -math.inf])
def test_error_non_finite_out_scale(device, out_scale):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b, out_dtype=torch.int8, out_scale=out_scale)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_error_device_mismatch(device):
    a = make_a(4, 8, "row-sym", 1, device)
    b = make_b(8, 5, "col", 2, "cpu")
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b)
    b = make_b(8, 5, "col", 2, device)
    with pytest.raises(ValueError):
        torch_int8.scaled_gemm(a, b, bias=torch.zeros(5))


# ------------------------------------------------------------------------------------------------
# meta tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int8], ids=str)
@pytest.mark.parametrize("a_mode", ["tensor-sym", "row-asym"])
def test_meta(out_dtype, a_mode):
    M, K, N = 7, 24, 10
    per, sym = a_mode.split("-")
    n = () if per == "tensor" else (M,)
    a = QTensor(
        data=torch.empty((M, K), dtype=torch.int8, device="meta"),
        scale=torch.empty(n, device="meta"),
        zero_point=None if sym == "sym" else torch.empty(n, dtype=torch.int32, device="meta"),
        dim=None if per == "tensor" else 0,
    )
    b = QTensor(
        data=torch.empty((N, K), dtype=torch.int8, device="meta").t(),
        scale=torch.empty((N,), device="meta"),
        zero_point=None,
        dim=1,
    )
    bias = torch.empty((N,), device="meta")
    kw = {"out_scale": 0.5, "out_zero_point": 1} if out_dtype == torch.int8 else {}
    out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype, **kw)
    assert out.device.type == "meta" and out.dtype == out_dtype and tuple(out.shape) == (M, N)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_unaligned_epilogue_vectors_are_copied(device):
    # Scale, zero-point and bias views that start 4 bytes past an allocation are not
    # 16-byte aligned; the epilogue reads vectors in 16-byte pieces, so they must be
    # copied first, giving the same result as aligned copies of the same values.
    g = make_gen(17)
    M, K, N = 37, 64, 48
    a = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8)
    sa, sb = torch.rand(M + 1, generator=g) + 0.5, torch.rand(N + 1, generator=g) * 1e-3
    zp, bias = torch.randint(-9, 9, (M + 1,), generator=g, dtype=torch.int32), torch.randn(N + 1, generator=g)

    def run(sa, sb, zp, bias, dev):
        qa = torch_int8.QTensor(a.to(dev), sa.to(dev), zp.to(dev), 0)
        qb = torch_int8.QTensor(b.to(dev), sb.to(dev), None, 1)
        return torch_int8.scaled_gemm(qa, qb, bias=bias.to(dev), out_dtype=torch.float32).cpu()

    views = [t.to(device)[1:] for t in (sa, sb, zp, bias)]
    assert all(v.data_ptr() % 16 for v in views)
    want = run(*(v.clone() for v in views), device)
    assert torch.equal(run(*views, device), want)


# ------------------------------------------------------------------------------------------------
# fused ReLU
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,K,N", [(1, 64, 40), (37, 91, 53), (300, 256, 136)])
@pytest.mark.parametrize("out_dtype,out_zp", OUT)
def test_relu_is_max_with_zero_of_the_same_epilogue(device, M, K, N, out_dtype, out_zp):
    # The ReLU is applied to the fp32 value before the output conversion, so the result equals the
    # plain epilogue's output with its negative values replaced by 0 (int8: by the zero point).
    a = make_a(M, K, "row-asym", M + K, device)
    b = make_b(K, N, "col", N, device)
    ref, _ = ref_scaled_gemm(a, b, None)
    bias = make_bias(N, M, 0.3 * float(ref.abs().max()), device)  # moves outputs across 0
    kw = dict(bias=bias, out_dtype=out_dtype)
    if out_dtype == torch.int8:
        kw.update(out_scale=pick_out_scale(ref), out_zero_point=out_zp)
    plain = torch_int8.scaled_gemm(a, b, **kw)
    fused = torch_int8.scaled_gemm(a, b, relu=True, **kw)
    floor = out_zp if out_dtype == torch.int8 else 0
    assert torch.equal(fused, plain.clamp_min(floor))
    assert bool((plain < floor).any()) and bool((plain > floor).any())  # both sides of the ReLU occur


def with_nan_row(M, K, N, row, device):
    """(a, b) with a per row whose scale is NaN at `row`: how quantize marks a non-finite input row."""
    a = make_a(M, K, "row-sym", 1, device)
    scale = a.scale.clone()
    scale[row] = float("nan")
    return QTensor(a.data, scale, None, 0), make_b(K, N, "col", 2, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_relu_keeps_nan(device):
    # A non-finite scale marks a non-finite input slice: the NaN must reach the output through the ReLU.
    a, b = with_nan_row(4, 32, 16, 1, device)
    out = torch_int8.scaled_gemm(a, b, out_dtype=torch.float32, relu=True).cpu()
    assert torch.isnan(out[1]).all()
    assert (out[[0, 2, 3]] >= 0).all()


# ------------------------------------------------------------------------------------------------
# row maxima of |out| from the epilogue (scaled_gemm_row_amax)
# ------------------------------------------------------------------------------------------------

FLOAT_OUT = [torch.bfloat16, torch.float16, torch.float32]


def row_amax_of(out):
    """max |out| over the last dimension, NaN for a row holding NaN (amax propagates NaN)."""
    return out.float().abs().amax(-1)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,K,N", [(1, 64, 40), (3, 32, 20), (37, 91, 53), (300, 256, 136)])
@pytest.mark.parametrize("out_dtype", FLOAT_OUT, ids=str)
@pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
def test_row_amax_is_the_max_of_the_stored_output(device, M, K, N, out_dtype, relu):
    a = make_a(M, K, "row-asym", M + K, device)
    b = make_b(K, N, "col", N, device)
    ref, _ = ref_scaled_gemm(a, b, None)
    bias = make_bias(N, M, 0.3 * float(ref.abs().max()), device)
    out, amax = torch_int8.scaled_gemm_row_amax(a, b, bias=bias, out_dtype=out_dtype, relu=relu)
    assert torch.equal(out, torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype, relu=relu))
    assert amax.dtype == torch.float32 and amax.shape == (M,) and amax.device == out.device
    assert torch.equal(amax, row_amax_of(out))
    assert bool((amax > 0).all())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_row_amax_batched_a_and_nan_rows(device):
    a, b = with_nan_row(12, 48, 24, 5, device)
    a3 = QTensor(a.data.reshape(3, 4, 48), a.scale, None, 1)
    out, amax = torch_int8.scaled_gemm_row_amax(a3, b, out_dtype=torch.float32)
    assert out.shape == (3, 4, 24) and amax.shape == (3, 4)
    assert torch.isnan(amax[1, 1]) and torch.isnan(out[1, 1]).all() and int(torch.isnan(amax).sum()) == 1
    torch.testing.assert_close(amax, row_amax_of(out), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_dtype", [torch.int8, torch.int32], ids=str)
def test_error_row_amax_needs_a_float_output(device, out_dtype):
    a = make_a(4, 32, "row-sym", 1, device)
    b = make_b(32, 16, "col", 2, device)
    with pytest.raises(ValueError, match="scaled_gemm_row_amax: out_dtype must be bfloat16, float16 or float32"):
        torch_int8.scaled_gemm_row_amax(a, b, out_dtype=out_dtype)


def test_row_amax_meta():
    a = QTensor(torch.empty(2, 7, 64, dtype=torch.int8, device="meta"), torch.empty(14, device="meta"), None, 1)
    b = QTensor(torch.empty(64, 40, dtype=torch.int8, device="meta"), torch.empty(40, device="meta"), None, 1)
    out, amax = torch_int8.scaled_gemm_row_amax(a, b, out_dtype=torch.float16)
    assert out.shape == (2, 7, 40) and out.dtype == torch.float16
    assert amax.shape == (2, 7) and amax.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("N", [48, 53])  # a multiple of the GPU's 16-byte column padding, and a ragged one
@pytest.mark.parametrize("bias_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bias_of_any_float_dtype_is_its_float32_value(device, N, bias_dtype):
    # A bias of another dtype (a bf16 Linear's) is converted to float32 before the epilogue: the
    # result is bit for bit that of its float32 value, whether the vector needs padding or not.
    g = make_gen(23)
    M, K = 9, 64
    qa = QTensor(torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8).to(device),
                 (torch.rand(M, generator=g) + 0.5).to(device), None, 0)
    qb = QTensor(torch.randint(-128, 128, (K, N), generator=g, dtype=torch.int8).to(device),
                 (torch.rand(N, generator=g) * 1e-3).to(device), None, 1)
    bias = torch.randn(N, generator=g).to(bias_dtype).to(device)
    out = torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.float32)
    assert torch.equal(out, torch_int8.scaled_gemm(qa, qb, bias=bias.float(), out_dtype=torch.float32))


# ------------------------------------------------------------------------------------------------
# K beyond the int32-safe depth (131071): exact int32 K-slices summed in int64
# ------------------------------------------------------------------------------------------------

LONG_K = [131071, 131072, 3 * 131072 + 5]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("K", LONG_K)
@pytest.mark.parametrize("a_mode", ["tensor-sym", "row-asym"])
@pytest.mark.parametrize("out_dtype,out_zp", [OUT[0], OUT[2], OUT[4]])
def test_long_k_against_the_reference(device, K, a_mode, out_dtype, out_zp):
    M, N = 3, 21
    a = make_a(M, K, a_mode, K, device)
    b = make_b(K, N, "col", K + 1, device)
    ref0, _ = ref_scaled_gemm(a, b, None)
    bias = make_bias(N, K + 2, 0.5 * float(ref0.abs().max()), device)
    ref, mag = ref_scaled_gemm(a, b, bias)
    if out_dtype == torch.int8:
        out_scale = pick_out_scale(ref)
        out = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=torch.int8, out_scale=out_scale, out_zero_point=out_zp)
        check_int8_out(out, ref, mag, out_scale, out_zp)
    else:
        check_float_out(torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype), ref, mag, out_dtype)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_long_k_sums_beyond_int32_exactly(device):
    # 2^14 * K > 2^31 at every entry: an int32 sum would wrap; the float32 value of the exact sum is
    # its one rounding.
    K = 3 * 131072 + 5
    a = QTensor(torch.full((2, K), -128, dtype=torch.int8, device=device), torch.ones((), device=device), None, None)
    b = QTensor(torch.full((K, 3), -128, dtype=torch.int8, device=device), torch.ones((), device=device), None, None)
    out = torch_int8.scaled_gemm(a, b, out_dtype=torch.float32)
    assert torch.equal(out.cpu(), torch.full((2, 3), float(16384 * K), dtype=torch.float32))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_long_k_relu_row_amax_and_nan(device):
    M, K, N = 4, 131072 + 17, 9
    a, b = make_a(M, K, "row-sym", 5, device), make_b(K, N, "col", 6, device)
    ref, _ = ref_scaled_gemm(a, b, None)
    a.scale[1] = float("nan")
    out, amax = torch_int8.scaled_gemm_row_amax(a, b, out_dtype=torch.float32, relu=True)
    expected = ref.clamp_min(0).float()
    expected[1] = float("nan")
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-5 * float(ref.abs().max()), equal_nan=True)
    assert torch.isnan(amax[1]) and not torch.isnan(amax[[0, 2, 3]]).any()
    assert torch.equal(amax.cpu()[[0, 2, 3]], out.cpu()[[0, 2, 3]].abs().amax(-1))
