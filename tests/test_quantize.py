"""torch_int8.quantize / dequantize / QTensor."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
import torch

import torch_int8
from conftest import CUDA_ONLY, DEVICE_PARAMS, bcast, check_quantize_against_reference, make_gen

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (shape, dims to test)
SHAPES_DIMS = [
    ((37, 53), [None, 0, 1, -1]),
    ((4, 5, 6), [None, 0, 1, 2, -1]),
]
CASES = [(shape, dim) for shape, dims in SHAPES_DIMS for dim in dims]


def make_x(shape, seed, dtype=torch.float32, device="cpu"):
    """Seeded float data with varying magnitudes per element, some all-positive/all-negative regions."""
    g = make_gen(seed)
    x = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) * 4 + 0.1)
    flat = x.view(-1)
    n = flat.numel()
    flat[: n // 4] = flat[: n // 4].abs() + 0.5  # a positive block
    flat[n // 4 : n // 3] = -flat[n // 4 : n // 3].abs() - 1.0  # a negative block
    return x.to(dtype).to(device)


def norm_dim(dim, ndim):
    return None if dim is None else dim % ndim


def check_qtensor_meta(q, x, dim, symmetric, device):
    """Structure of a QTensor returned by quantize(x, dim, symmetric=...)."""
    assert isinstance(q, torch_int8.QTensor)
    assert q.data.dtype == torch.int8
    assert tuple(q.data.shape) == tuple(x.shape)
    assert q.data.device.type == torch.device(device).type
    assert q.scale.dtype == torch.float32
    assert q.scale.device.type == torch.device(device).type
    expected_scale_shape = () if dim is None else (x.shape[dim],)
    assert tuple(q.scale.shape) == expected_scale_shape
    if dim is None:
        assert q.dim is None
    else:
        assert q.dim is not None and q.dim % x.dim() == dim % x.dim()
    if symmetric:
        assert q.zero_point is None
    else:
        assert q.zero_point is not None
        assert q.zero_point.dtype == torch.int32
        assert tuple(q.zero_point.shape) == expected_scale_shape
        assert q.zero_point.device.type == torch.device(device).type


def scale_zp_b(q, ndim):
    """Scale and zero point (CPU, broadcastable against data), zero point 0 if symmetric."""
    s = bcast(q.scale.cpu(), ndim, q.dim)
    zp = torch.zeros((), dtype=torch.int32) if q.zero_point is None else bcast(q.zero_point.cpu(), ndim, q.dim)
    return s, zp


# ------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_round_trip_nearest(device, shape, dim, symmetric, dtype):
    x = make_x(shape, seed=len(shape) * 10 + (dim or 0), dtype=dtype, device=device)
    q = torch_int8.quantize(x, dim, symmetric=symmetric)
    check_qtensor_meta(q, x, dim, symmetric, device)
    data = q.data.cpu()
    if symmetric:
        assert int(data.min()) >= -127 and int(data.max()) <= 127
    s, zp = scale_zp_b(q, x.dim())
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()

    deq = torch_int8.dequantize(q)
    assert deq.dtype == torch.float32 and tuple(deq.shape) == tuple(x.shape)
    assert deq.device.type == torch.device(device).type
    deq = deq.cpu()
    xf = x.float().cpu()
    err = (deq - xf).abs()
    tol = s * (0.5 + 1e-4) + 1e-6 * xf.abs()
    assert (err <= tol).all(), f"max err/scale {float((err / s).max())}"

    # dequantize is exactly (data - zero_point) * scale in float32
    expected = (data.to(torch.int32) - zp).to(torch.float32) * s
    assert torch.equal(deq, expected)

    # the slices use their range: symmetric slices reach +-127, asymmetric ones both ends (-128 / 127)
    red = [i for i in range(x.dim()) if dim is None or i != dim % x.dim()]
    if symmetric:
        assert (data.abs().amax(dim=red) == 127).all()
    else:
        # (an all-positive slice has min 0 -> zero point -128; an all-negative one has max 0)
        assert ((data.amax(dim=red) == 127) | (data.amin(dim=red) == -128)).all()

    # other output dtypes (rounded once or computed in that dtype: default assert_close tolerances)
    for out_dtype in (torch.bfloat16, torch.float16):
        d2 = torch_int8.dequantize(q, dtype=out_dtype)
        assert d2.dtype == out_dtype and tuple(d2.shape) == tuple(x.shape)
        torch.testing.assert_close(d2.cpu(), deq.to(out_dtype))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_round_trip_stochastic(device, shape, dim, symmetric, dtype):
    x = make_x(shape, seed=len(shape) * 100 + (dim or 0), dtype=dtype, device=device)
    g = torch.Generator(device=device)
    g.manual_seed(1234)
    q = torch_int8.quantize(x, dim, symmetric=symmetric, rounding="stochastic", generator=g)
    check_qtensor_meta(q, x, dim, symmetric, device)
    s, zp = scale_zp_b(q, x.dim())
    deq = torch_int8.dequantize(q).cpu()
    xf = x.float().cpu()
    err = (deq - xf).abs()
    tol = s * (1 + 1e-4) + 1e-6 * xf.abs()
    assert (err <= tol).all(), f"max err/scale {float((err / s).max())}"

    # data is floor(x/scale) or floor(x/scale)+1 (plus zero point, clamped); 1e-3 of slack for the
    # float32 rounding of x/scale right at an integer
    lo_q = -127 if symmetric else -128
    v = xf / s
    lo = torch.clamp(torch.floor(v - 1e-3) + zp, lo_q, 127)
    hi = torch.clamp(torch.floor(v + 1e-3) + 1 + zp, lo_q, 127)
    data = q.data.cpu().float()
    assert ((data >= lo) & (data <= hi)).all()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("shape,dim", CASES + [((64,), None), ((64,), 0), ((1, 1), 0), ((3, 1), 1)])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_matches_reference_float32(device, shape, dim, symmetric):
    x = make_x(shape, seed=sum(shape) + (dim or 0), device="cpu")
    if dim is not None and x.shape[dim] > 2:
        x.select(dim, 1).zero_()  # an all-zero slice: scale 1
    x = x.to(device)
    q = torch_int8.quantize(x, dim, symmetric=symmetric)
    check_qtensor_meta(q, x, dim, symmetric, device)
    check_quantize_against_reference(q, x, dim, symmetric)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [None, 0])
def test_round_half_even(device, dim):
    # scale exactly 1 (symmetric: amax 127; asymmetric: min -128, max 127 -> zero point 0), so x/scale
    # is exact and these values are exact ties
    x_sym = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5, 126.5, -3.5]])
    q = torch_int8.quantize(x_sym.to(device), dim)
    assert torch.equal(q.scale.cpu().reshape(-1), torch.ones(1))
    assert q.data.cpu().tolist() == [[127, 0, 2, 2, 0, -2, 126, -4]]
    x_asym = torch.tensor([[-128.0, 127.0, 0.5, 1.5, 2.5, -1.5, -126.5, 125.5]])
    q = torch_int8.quantize(x_asym.to(device), dim, symmetric=False)
    assert torch.equal(q.scale.cpu().reshape(-1), torch.ones(1))
    assert torch.equal(q.zero_point.cpu().reshape(-1), torch.zeros(1, dtype=torch.int32))
    assert q.data.cpu().tolist() == [[-128, 127, 0, 2, 2, -2, -126, 126]]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [None, 0, 1])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_noncontiguous_input(device, dim, symmetric):
    base = make_x((40, 30), seed=5, device=device)
    for x in (base.t(), base[::2, 1::3], base.t()[3:, :]):
        q = torch_int8.quantize(x, dim, symmetric=symmetric)
        qc = torch_int8.quantize(x.contiguous(), dim, symmetric=symmetric)
        assert torch.equal(q.data, qc.data)
        assert torch.equal(q.scale, qc.scale)
        if not symmetric:
            assert torch.equal(q.zero_point, qc.zero_point)
        check_quantize_against_reference(q, x, dim, symmetric)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_zero_dim_input(device, dtype):
    for value in (0.37, -2.5, 0.0):
        x = torch.tensor(value, dtype=dtype, device=device)
        q = torch_int8.quantize(x)
        assert q.data.shape == () and q.scale.shape == () and q.data.dtype == torch.int8
        deq = torch_int8.dequantize(q)
        assert deq.shape == ()
        assert abs(float(deq) - float(x)) <= float(q.scale) * (0.5 + 1e-4) + 1e-6 * abs(float(x))


# ------------------------------------------------------------------------------------------------
# stochastic rounding: unbiased and reproducible
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [None, 0])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_stochastic_unbiased(device, dim, symmetric):
    n_draws, width = 2000, 64
    g0 = make_gen(77)
    row = torch.rand(width, generator=g0) * 2 - 1  # in (-1, 1)
    row[0] = 1.0  # the amax: every row gets the same scale(s)
    row[1] = -0.3
    x = row.repeat(n_draws, 1).to(device)  # [n_draws, width]: n_draws independent draws per element
    g = torch.Generator(device=device)
    g.manual_seed(2024)
    q = torch_int8.quantize(x, dim, symmetric=symmetric, rounding="stochastic", generator=g)
    # all rows quantize with the same scale / zero point
    assert torch.unique(q.scale.cpu()).numel() == 1
    scale = float(q.scale.reshape(-1)[0])
    zp = 0 if symmetric else int(q.zero_point.reshape(-1)[0])

    deq = torch_int8.dequantize(q).double().cpu()
    mean = deq.mean(dim=0)
    v = row.double() / scale
    p = v - torch.floor(v)  # probability of rounding up
    se = scale * torch.sqrt(p * (1 - p) / n_draws)
    # only where clamping cannot bias the draws: floor(v)+zp and floor(v)+1+zp both inside the range
    lo_q = -127 if symmetric else -128
    free = (torch.floor(v) + zp >= lo_q) & (torch.floor(v) + 1 + zp <= 127)
    assert int(free.sum()) >= width - 3
    err = (mean - row.double()).abs()[free]
    z = (err - 1e-3 * scale).clamp_min(0) / se[free].clamp_min(1e-12)  # in standard errors
    # within 4 standard errors; one of the elements may be out to 6 (chance of a false alarm ~1e-5)
    assert int((z > 4).sum()) <= 1 and float(z.max()) <= 6, f"bias in standard errors: {z.tolist()}"
    # the noise is really there: elements with a fractional part in (0.1, 0.9) take both values
    data = q.data.cpu().long() - zp
    frac_ok = (p > 0.1) & (p < 0.9) & free
    assert int(frac_ok.sum()) > 10
    n_up = (data == torch.floor(v).long() + 1).sum(dim=0)
    assert ((n_up > 0) & (n_up < n_draws))[frac_ok].all()
    # and the overall bias is tiny
    assert abs(float((mean - row.double())[free].mean())) <= 0.01 * scale


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [None, 0])
def test_stochastic_reproducible(device, dim):
    x = make_x((64, 128), seed=3, device=device)

    def run(seed):
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        return torch_int8.quantize(x, dim, rounding="stochastic", generator=g)

    q1, q2, q3 = run(42), run(42), run(43)
    assert torch.equal(q1.data, q2.data)
    assert torch.equal(q1.scale, q2.scale)
    assert not torch.equal(q1.data, q3.data)
    assert torch.equal(q1.scale, q3.scale)  # scale does not depend on the noise

    # the generator state advances: two calls with one generator differ
    g = torch.Generator(device=device)
    g.manual_seed(42)
    qa = torch_int8.quantize(x, dim, rounding="stochastic", generator=g)
    qb = torch_int8.quantize(x, dim, rounding="stochastic", generator=g)
    assert torch.equal(qa.data, q1.data)
    assert not torch.equal(qa.data, qb.data)

    # without a generator it still works and differs from nearest rounding somewhere
    qd = torch_int8.quantize(x, dim, rounding="stochastic")
    qn = torch_int8.quantize(x, dim, rounding="nearest")
    assert qd.data.shape == x.shape
    assert not torch.equal(qd.data, qn.data)
    assert torch.equal(qd.scale, qn.scale)


# ------------------------------------------------------------------------------------------------
# special values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [None, 0, 1])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_all_zero(device, dim, symmetric, rounding):
    x = torch.zeros((5, 7), device=device)
    q = torch_int8.quantize(x, dim, symmetric=symmetric, rounding=rounding)
    check_qtensor_meta(q, x, dim, symmetric, device)
    assert torch.equal(q.scale.cpu(), torch.ones_like(q.scale.cpu()))
    if symmetric:
        assert torch.equal(q.data.cpu(), torch.zeros((5, 7), dtype=torch.int8))
    else:
        _, zp = scale_zp_b(q, 2)
        assert torch.equal(q.data.cpu().to(torch.int32), zp.expand(5, 7))
    deq = torch_int8.dequantize(q).cpu()
    assert torch.equal(deq, torch.zeros((5, 7)))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_non_finite_rows(device, symmetric, dtype, rounding):
    x = make_x((6, 16), seed=9, dtype=dtype)
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    x[5, 15] = float("-inf")
    bad_rows = [2, 4, 5]
    good_rows = [0, 1, 3]
    x = x.to(device)

    # per row: only the affected rows have a NaN scale
    q = torch_int8.quantize(x, 0, symmetric=symmetric, rounding=rounding)
    scale = q.scale.cpu()
    assert torch.isnan(scale[bad_rows]).all()
    assert torch.isfinite(scale[good_rows]).all() and (scale[good_rows] > 0).all()
    deq = torch_int8.dequantize(q).cpu()
    assert torch.isnan(deq[bad_rows]).all()
    assert torch.isfinite(deq[good_rows]).all()
    xf = x.float().cpu()
    s = scale[good_rows][:, None]
    lim = 0.5 if rounding == "nearest" else 1.0
    assert ((deq[good_rows] - xf[good_rows]).abs() <= s * (lim + 1e-4) + 1e-6 * xf[good_rows].abs()).all()
    if dtype == torch.float32 and rounding == "nearest":
        q_good = torch_int8.QTensor(
            data=q.data[good_rows],
            scale=q.scale[good_rows],
            zero_point=None if symmetric else q.zero_point[good_rows],
            dim=0,
        )
        check_quantize_against_reference(q_good, xf[good_rows], 0, symmetric)

    # per column: columns 0, 3 and 15 are affected
    qc = torch_int8.quantize(x, 1, symmetric=symmetric, rounding=rounding)
    bad_cols = [0, 3, 15]
    good_cols = [c for c in range(16) if c not in bad_cols]
    assert torch.isnan(qc.scale.cpu()[bad_cols]).all()
    assert torch.isfinite(qc.scale.cpu()[good_cols]).all()
    deqc = torch_int8.dequantize(qc).cpu()
    assert torch.isnan(deqc[:, bad_cols]).all()
    assert torch.isfinite(deqc[:, good_cols]).all()

    # per tensor: everything is NaN
    qt = torch_int8.quantize(x, None, symmetric=symmetric, rounding=rounding)
    assert qt.scale.shape == () and torch.isnan(qt.scale).item()
    assert torch.isnan(torch_int8.dequantize(qt)).all()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_all_nan(device):
    x = torch.full((3, 4), float("nan"), device=device)
    q = torch_int8.quantize(x, 0)
    assert torch.isnan(q.scale).all()
    assert torch.isnan(torch_int8.dequantize(q)).all()


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.int64, torch.uint8])
def test_error_int_input(device, dtype):
    x = torch.ones((4, 5), dtype=dtype, device=device)
    with pytest.raises(TypeError):
        torch_int8.quantize(x)
    with pytest.raises(TypeError):
        torch_int8.quantize(x, 0)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dim", [2, -3, 5])
def test_error_dim_out_of_range(device, dim):
    x = make_x((4, 5), seed=1, device=device)
    with pytest.raises((ValueError, IndexError)):
        torch_int8.quantize(x, dim)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("shape,dim", [((0,), None), ((0, 5), None), ((0, 5), 0), ((0, 5), 1), ((3, 0), 0)])
def test_error_empty(device, shape, dim):
    x = torch.empty(shape, device=device)
    with pytest.raises(ValueError):
        torch_int8.quantize(x, dim)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("rounding", ["floor", "Nearest", "", "round"])
def test_error_bad_rounding(device, rounding):
    x = make_x((4, 5), seed=1, device=device)
    with pytest.raises(ValueError):
        torch_int8.quantize(x, rounding=rounding)


# ------------------------------------------------------------------------------------------------
# meta tensors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_meta(shape, dim, symmetric):
    x = torch.empty(shape, dtype=torch.float32, device="meta")
    q = torch_int8.quantize(x, dim, symmetric=symmetric)
    check_qtensor_meta(q, x, dim, symmetric, "meta")
    deq = torch_int8.dequantize(q, dtype=torch.bfloat16)
    assert deq.device.type == "meta" and deq.dtype == torch.bfloat16 and tuple(deq.shape) == tuple(shape)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 1000), (64, 4096), (7, 333)])
def test_fused_gpu_rows_match_cpu_bit_for_bit(device, dtype, rows, cols):
    # Per-row symmetric nearest quantization of a 2-D tensor runs as the fused GPU kernel;
    # it divides by the same float32 scale as the CPU, so both agree exactly, including
    # all-zero rows (scale 1) and non-finite rows (scale NaN, data 0).
    x = (torch.randn(rows, cols, generator=make_gen(rows * cols)) * 3).to(dtype)
    if rows > 2:
        x[1] = 0
        x[2, cols // 2] = float("nan") if dtype != torch.float16 else float("inf")
    cpu = torch_int8.quantize(x, 0)
    gpu = torch_int8.quantize(x.to(device), 0)
    assert torch.equal(gpu.data.cpu(), cpu.data)
    assert torch.allclose(gpu.scale.cpu(), cpu.scale, rtol=0, atol=0, equal_nan=True)
    # a transposed (non-contiguous) input takes the same kernel after one copy
    xt = x.t().contiguous().t()
    assert torch.equal(torch_int8.quantize(xt.to(device), 0).data.cpu(), cpu.data)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_columns_t_negative_amax_gives_nan_scales(device, dtype):
    x = torch.randn(5, 4, generator=make_gen(3)).to(device, dtype)
    amax = torch_int8.column_amax(x)
    amax[1], amax[3] = -amax[1], -0.0
    q = torch_int8.quantize_columns_t(x, amax)
    assert torch.isnan(q.scale[1]) and not torch.isnan(q.scale[[0, 2, 3]]).any()
    assert q.scale[3] == 1  # -0.0: an all-zero column's scale, as for +0.0
    assert q.scale[0] > 0 and q.scale[2] > 0


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("op", ["quantize", "quantize_rows", "column_amax", "quantize_columns_t"])
def test_float64_beyond_float32_range_is_an_error(device, op):
    x = torch.randn(3, 4, dtype=torch.float64, generator=make_gen(4)).to(device)
    calls = {"quantize": lambda t: torch_int8.quantize(t, 0), "quantize_rows": torch_int8.quantize_rows,
             "column_amax": torch_int8.column_amax,
             "quantize_columns_t": lambda t: torch_int8.quantize_columns_t(t, torch.ones(4, device=device))}
    calls[op](x)  # in range: runs
    x[1, 2] = 1e300
    with pytest.raises(ValueError, match="beyond float32's range"):
        calls[op](x)
    x[1, 2] = float("inf")  # not finite: propagates as in float32, no error
    calls[op](x)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dim", [None, 0])
def test_cpu_loops_match_the_composite(dtype, memory_format, dim):
    """Dense CPU input per image or per tensor runs as two C++ loops; a strided view of the same
    values runs the ATen composite (the reference): the same data and scales, bit for bit, with
    NaN / inf / all-zero images and exact ties."""
    x = make_x((5, 3, 4, 6), seed=11, device="cpu").to(dtype)
    x[1, 0, 0, 0], x[2, 1, 2, 3], x[3] = float("nan"), float("-inf"), 0.0
    x[4] = torch.tensor([127.0, 0.5, 1.5, -2.5, 126.5, -3.5]).to(dtype)  # scale 1: ties
    dense = x.contiguous(memory_format=memory_format)
    strided = torch.empty(5, 3, 4, 12, dtype=dtype)[..., ::2].copy_(x)
    assert not strided.is_contiguous() and not strided.is_contiguous(memory_format=torch.channels_last)
    q, ref = torch_int8.quantize(dense, dim), torch_int8.quantize(strided, dim)
    assert torch.equal(q.data, ref.data)
    assert torch.equal(q.scale.isnan(), ref.scale.isnan())
    assert torch.equal(q.scale.nan_to_num(), ref.scale.nan_to_num())
    assert q.data.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("memory_format,dim", [(torch.channels_last, 1), (torch.contiguous_format, 3)],
                         ids=["nhwc_channels", "contiguous_last"])
def test_cpu_per_channel_loops_match_the_composite(dtype, memory_format, dim):
    """Per channel of the dim innermost in memory (a convolution's channels in channels_last, a
    matrix's columns) runs as C++ loops; a strided view runs the composite: the same data and
    scales, bit for bit, with a NaN, an inf and an all-zero channel and exact ties."""
    x = make_x((5, 6, 4, 6), seed=12, device="cpu").to(dtype)
    channel = [slice(None)] * 4
    for c, value in ((0, float("nan")), (1, float("-inf"))):
        channel[dim] = c
        x[tuple(channel)][0] = value
    channel[dim] = 2
    x[tuple(channel)] = 0.0
    channel[dim] = 3  # max 127: scale 1, and ties of .5 to round half to even
    ties = x[tuple(channel)]
    ties.copy_(torch.tensor([127.0, 0.5, 1.5, -2.5]).repeat(ties.numel() // 4).reshape(ties.shape))
    dense = x.contiguous(memory_format=memory_format)
    strided = torch.empty(5, 6, 4, 12, dtype=dtype)[..., ::2].copy_(x)
    q, ref = torch_int8.quantize(dense, dim), torch_int8.quantize(strided, dim)
    assert torch.equal(q.data, ref.data)
    assert torch.equal(q.scale.isnan(), ref.scale.isnan()) and q.scale.isnan()[:2].all()
    assert torch.equal(q.scale.nan_to_num(), ref.scale.nan_to_num()) and q.scale[2] == 1 and q.scale[3] == 1
    assert q.data.is_contiguous(memory_format=memory_format)
