"""quantize_rows and quantize_columns_t: the fused 2-D quantize ops of the training layers.

On the CPU they are ATen composites; on the GPU fused kernels that must give the
composite's results bit for bit (nearest rounding), including column maxima,
all-zero and non-finite rows/columns, ragged and unaligned shapes.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CUDA_ONLY, DEVICE_PARAMS, make_gen  # noqa: E402

import torch_int8  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Ragged against the 128x64 tiles and the 16-byte packs, one row, one column, and
# sizes whose rows start unaligned (cols odd) so the single-element paths run.
# The last two have rows too long for one block's registers (the two-pass path).
SHAPES = [(1, 1), (1, 4096), (3, 1000), (64, 4096), (7, 333), (130, 65), (257, 96), (100, 8), (3, 40000), (4, 33333)]


def make_x(rows, cols, dtype, seed):
    x = (torch.randn(rows, cols, generator=make_gen(seed)) * 3).to(dtype)
    if rows > 2 and cols > 2:
        x[1] = 0                      # an all-zero row
        x[:, 1] = 0                   # an all-zero column
        x[2, cols - 1] = float("inf")  # a non-finite row and column
        if dtype != torch.float16:
            x[rows - 1, 2] = float("nan")
    return x


def same(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_quantize_rows_is_per_row_quantize_with_column_maxima(device, dtype, rows, cols):
    x = make_x(rows, cols, dtype, seed=rows * 1000 + cols)
    ref = torch_int8.quantize(x, 0)  # the CPU composite
    q, amax = torch_int8.quantize_rows(x.to(device), col_amax=True)
    assert q.dim == 0 and q.zero_point is None
    assert torch.equal(q.data.cpu(), ref.data)
    assert same(q.scale.cpu(), ref.scale)
    want_amax = x.float().abs().amax(0)  # NaN or inf in a non-finite column
    assert same(amax.cpu(), want_amax)
    q2, none = torch_int8.quantize_rows(x.to(device))
    assert none is None and torch.equal(q2.data.cpu(), ref.data)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_quantize_columns_t_is_per_column_quantize_transposed(device, dtype, rows, cols):
    x = make_x(rows, cols, dtype, seed=rows * 7 + cols)
    ref = torch_int8.quantize(x, 1)  # the CPU composite, per column
    _, amax = torch_int8.quantize_rows(x.to(device), col_amax=True)
    qt = torch_int8.quantize_columns_t(x.to(device), amax)
    assert qt.dim == 0 and qt.data.shape == (cols, rows) and qt.data.is_contiguous()
    assert torch.equal(qt.data.cpu(), ref.data.t())
    assert same(qt.scale.cpu(), ref.scale)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_sliced_and_transposed_inputs(device):
    base = make_x(90, 300, torch.bfloat16, seed=5)
    for x in (base[3:80, 17:250], base.t()):
        ref_rows, ref_cols = torch_int8.quantize(x, 0), torch_int8.quantize(x, 1)
        q, amax = torch_int8.quantize_rows(x.to(device), col_amax=True)
        assert torch.equal(q.data.cpu(), ref_rows.data)
        qt = torch_int8.quantize_columns_t(x.to(device), amax)
        assert torch.equal(qt.data.cpu(), ref_cols.data.t())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_stochastic_rounding_unbiased_and_reproducible(device):
    rows, cols, draws = 48, 200, 400
    x = torch.randn(rows, cols, generator=make_gen(11)) * 3
    _, amax = torch_int8.quantize_rows(x.to(device), col_amax=True)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    acc_r = torch.zeros(x.shape, dtype=torch.float64)
    acc_c = torch.zeros(x.shape, dtype=torch.float64)
    for _ in range(draws):
        q, _ = torch_int8.quantize_rows(x.to(device), rounding="stochastic", generator=g)
        acc_r += q.dequantize().double().cpu()
        qt = torch_int8.quantize_columns_t(x.to(device), amax, rounding="stochastic", generator=g)
        acc_c += (qt.data.double() * qt.scale.double()[:, None]).t().cpu()
    # each draw errs by at most one step, with mean zero: the mean of `draws`
    # draws is within 5 standard errors (step / sqrt(4 * draws)) of x
    step_r = torch_int8.quantize(x, 0).scale.double()[:, None]
    step_c = torch_int8.quantize(x, 1).scale.double()[None, :]
    bound = 5 / (4 * draws) ** 0.5
    assert ((acc_r / draws - x.double()).abs() / step_r).mean() < bound / 4
    assert ((acc_c / draws - x.double()).abs() / step_c).max() < bound * 2
    # same generator state -> same draw; advancing it -> a different one
    g.manual_seed(1)
    a, _ = torch_int8.quantize_rows(x.to(device), rounding="stochastic", generator=g)
    b, _ = torch_int8.quantize_rows(x.to(device), rounding="stochastic", generator=g)
    g.manual_seed(1)
    c, _ = torch_int8.quantize_rows(x.to(device), rounding="stochastic", generator=g)
    assert torch.equal(a.data, c.data) and not torch.equal(a.data, b.data)
    assert torch.equal(a.scale, torch_int8.quantize_rows(x.to(device))[0].scale)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_bad_inputs(device):
    x = torch.randn(4, 6, device=device)
    amax = x.abs().amax(0)
    with pytest.raises(ValueError, match="2-D"):
        torch_int8.quantize_rows(x[0])
    with pytest.raises(TypeError, match="float"):
        torch_int8.quantize_rows(x.to(torch.int32))
    with pytest.raises(ValueError, match="empty"):
        torch_int8.quantize_rows(x[:0])
    with pytest.raises(ValueError, match="quantize_rows: rounding"):
        torch_int8.quantize_rows(x, rounding="up")
    with pytest.raises(ValueError, match="one entry per column"):
        torch_int8.quantize_columns_t(x, amax[:5])
    with pytest.raises(TypeError, match="col_amax"):
        torch_int8.quantize_columns_t(x, amax.double())
    with pytest.raises(ValueError, match="rounding"):
        torch_int8.quantize_columns_t(x, amax, rounding="up")
    with pytest.raises(ValueError, match="2-D"):
        torch_int8.quantize_columns_t(x[None], amax)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_col_amax_on_another_device_is_refused(device):
    x = torch.randn(4, 6, device=device)
    with pytest.raises(ValueError, match="col_amax is on cpu"):
        torch_int8.quantize_columns_t(x, x.abs().amax(0).cpu())


def test_meta_shapes():
    x = torch.empty(33, 70, device="meta", dtype=torch.bfloat16)
    q, amax = torch_int8.quantize_rows(x, col_amax=True)
    assert q.data.shape == (33, 70) and q.data.dtype == torch.int8 and q.scale.shape == (33,)
    assert amax.shape == (70,) and amax.dtype == torch.float32
    qt = torch_int8.quantize_columns_t(x, amax)
    assert qt.data.shape == (70, 33) and qt.scale.shape == (70,)
