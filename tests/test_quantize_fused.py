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
from cuda_graphs import graph_replay  # noqa: E402

import torch_int8  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Ragged against the transposing tiles (64 rows x 128 bf16/fp16 or 64 fp32 columns) and the
# 16-byte packs, one whole tile, one row, one column, and sizes whose rows start unaligned (cols
# odd) so the single-element paths run; (136, 264) has some 16-byte aligned transposed rows and
# some not. The last three have rows too long for one block's registers (the two-pass path: blocks
# of 8 packs a thread max-reduce, then quantize; (4, 33333) unaligned, one value a pack). Rows of
# at most 32 threads go several to a block, one per warp segment: (1000, 1), (100, 8), (5, 64) (fewer
# rows than a block takes at a time), (3000, 64) (many blocks), (257, 96), (64, 128).
SHAPES = [(1, 1), (1, 4096), (1000, 1), (3, 1000), (64, 4096), (64, 128), (136, 264), (7, 333), (130, 65),
          (257, 96), (100, 8), (5, 64), (3000, 64), (3, 40000), (4, 33333), (2, 270000)]
# Column statistics: also several slices of rows per column (merged in order), narrow matrices
# (a block spread over few columns and many rows), ragged and unaligned widths. quantize_rows
# collects them in its own pass over rows of up to 768 threads x 2 packs (12288 bf16 columns);
# (40, 12800) is longer (a separate statistics pass) and (3000, 4100) in bf16 is unaligned
# and too long for it.
STATS_SHAPES = SHAPES + [(3000, 4096), (3000, 4100), (50000, 3), (20000, 16), (40, 12800)]


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
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", STATS_SHAPES)
def test_column_sums_and_maxima(device, dtype, rows, cols):
    x = make_x(rows, cols, dtype, seed=rows + cols)
    q, amax, total = torch_int8.quantize_rows_with_sums(x.to(device), col_amax=True, col_sum=True)
    assert torch.equal(q.data.cpu(), torch_int8.quantize(x, 0).data)
    assert same(amax.cpu(), x.float().abs().amax(0))
    assert total.dtype == torch.float32 and total.shape == (cols,)
    # float32 accumulation of `rows` terms, in any order: |error| <= rows * eps * sum|x|
    want, finite = x.double().sum(0), x.isfinite().all(0)
    bound = rows * torch.finfo(torch.float32).eps * x.double().abs().sum(0)
    assert ((total.cpu().double() - want).abs() <= bound)[finite].all()
    assert not total.cpu()[~finite].isfinite().any()  # inf and NaN propagate
    assert torch.equal(total.cpu().isnan(), want.isnan())
    # reproducible, and the same without the maxima
    _, none, again = torch_int8.quantize_rows_with_sums(x.to(device), col_amax=False, col_sum=True)
    assert none is None and same(again, total)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,cols", STATS_SHAPES)
def test_column_amax(device, dtype, rows, cols):
    x = make_x(rows, cols, dtype, seed=3 * rows + cols)
    amax = torch_int8.column_amax(x.to(device))
    assert amax.dtype == torch.float32 and amax.device.type == device
    assert same(amax.cpu(), torch.linalg.vector_norm(x.float(), float("inf"), dim=0))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_column_amax_of_views_and_special_values(device):
    x = make_x(90, 300, torch.bfloat16, seed=8).to(device)
    for view in (x[3:80, 17:250], x.t()):
        assert same(torch_int8.column_amax(view).cpu(), view.float().abs().amax(0).cpu())
    y = torch.tensor([[float("nan"), float("-inf"), -2.0, 0.0], [float("inf"), 1.0, 1.5, -0.0]], device=device)
    got = torch_int8.column_amax(y).cpu()
    assert got[0].isnan() and got[1] == float("inf") and got[2] == 2.0 and got[3] == 0.0


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_column_amax_bad_inputs(device):
    x = torch.randn(4, 6, device=device)
    with pytest.raises(TypeError, match="column_amax: x must be a float tensor"):
        torch_int8.column_amax(x.to(torch.int32))
    for bad in (x[0], x[None]):
        with pytest.raises(ValueError, match="column_amax: x must be 2-D"):
            torch_int8.column_amax(bad)
    for empty in (x[:0], x[:, :0]):
        with pytest.raises(ValueError, match="column_amax: x is empty"):
            torch_int8.column_amax(empty)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_values_next_to_rounding_ties(device):
    """v = (k + 1/2) * s and its float neighbours, per row and per column: the GPU's reciprocal
    product must round exactly as the composite's division, also where the scale is subnormal
    (no reciprocal) or close to the largest float."""
    amax = torch.tensor([1.0, 0.1234567, 3e-3, 7.77e5, 1e-39, 3e38])  # row scales: amax / 127
    s = (amax / 127).double()
    k = torch.arange(-127, 127, dtype=torch.float64)
    ties = ((k + 0.5)[None, :] * s[:, None]).float()
    up = torch.nextafter(ties, torch.full_like(ties, float("inf")))
    down = torch.nextafter(ties, torch.full_like(ties, float("-inf")))
    x = torch.cat([amax[:, None], ties, up, down], dim=1)
    x = torch.maximum(torch.minimum(x, amax[:, None]), -amax[:, None])  # amax stays the maximum
    q, col_amax = torch_int8.quantize_rows(x.to(device), col_amax=True)
    assert torch.equal(q.data.cpu(), torch_int8.quantize(x, 0).data)
    qt = torch_int8.quantize_columns_t(x.t().contiguous().to(device), torch_int8.column_amax(x.t().to(device)))
    assert torch.equal(qt.data.cpu(), torch_int8.quantize(x.t(), 1).data.t())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_quantize_columns_t_clamps_values_above_col_amax(device, dtype):
    """col_amax is an argument: values beyond it clamp to +-127 (the fused kernel's range check)."""
    x = make_x(200, 136, dtype, seed=12)
    amax = x.float().abs().amax(0) * torch.linspace(0.01, 1.5, 136)
    amax[5] = 1e-39  # a subnormal scale: no reciprocal
    want_q, want_scale = torch.ops.int8.quantize_columns_t(x, amax)  # the CPU composite
    qt = torch_int8.quantize_columns_t(x.to(device), amax.to(device))
    assert torch.equal(qt.data.cpu(), want_q)
    assert same(qt.scale.cpu(), want_scale)


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


@pytest.mark.cuda_graph
@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("rows,cols", [(3, 40000), (4, 33333), (2, 270000)])
def test_long_rows_stochastic_and_in_cuda_graphs(device, rows, cols):
    # The two-pass long-row path with stochastic rounding: every value
    # rounds to one of its two neighbouring steps (0 in a non-finite row), under the nearest
    # rounding's scale; and captured in a CUDA graph, nearest rounding gives the composite's result.
    x = make_x(rows, cols, torch.bfloat16, seed=cols)
    ref = torch_int8.quantize(x, 0)
    g = torch.Generator(device=device)
    g.manual_seed(3)
    q, _ = torch_int8.quantize_rows(x.to(device), rounding="stochastic", generator=g)
    assert same(q.scale.cpu(), ref.scale)
    finite = ref.scale.isfinite()
    steps = (x.double() / ref.scale.double()[:, None])[finite]
    got = q.data.cpu().double()
    assert ((got[finite] == steps.floor()) | (got[finite] == steps.ceil())).all()
    assert (got[~finite] == 0).all()
    xd, out = x.to(device), {}
    replay = graph_replay(lambda: out.update(q=torch_int8.quantize_rows(xd)[0]))
    replay()
    torch.cuda.synchronize()
    assert torch.equal(out["q"].data.cpu(), ref.data) and same(out["q"].scale.cpu(), ref.scale)


@pytest.mark.cuda_graph
@pytest.mark.parametrize("device", CUDA_ONLY)
def test_stochastic_rounding_in_cuda_graphs(device):
    # Captured in a CUDA graph, stochastic rounding reads the generator's device-side Philox state:
    # every replay draws afresh (a fixed (seed, offset) would repeat its noise), within one step.
    x = torch.randn(64, 256, device=device, generator=torch.Generator(device).manual_seed(5)) * 3
    amax = x.abs().amax(0)

    def both():
        return (torch_int8.quantize_rows(x, rounding="stochastic")[0],
                torch_int8.quantize_columns_t(x, amax, rounding="stochastic"))

    captured = {}

    def capture():
        captured["q"], captured["qt"] = both()

    replay = graph_replay(capture, warm=both)  # warm-up outside the capture, then the capture
    q, qt = captured["q"], captured["qt"]
    draws = []
    for _ in range(2):
        replay()
        draws.append((q.data.clone(), qt.data.clone()))
    for rows, cols in draws:
        assert ((rows.double() - x.double() / q.scale.double()[:, None]).abs() < 1).all()
        assert ((cols.double() - x.double().t() / qt.scale.double()[:, None]).abs() < 1).all()
    assert not torch.equal(draws[0][0], draws[1][0]) and not torch.equal(draws[0][1], draws[1][1])


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
    _, _, total = torch_int8.quantize_rows_with_sums(x, col_amax=False, col_sum=True)
    assert total.shape == (70,) and total.dtype == torch.float32
    amax = torch_int8.column_amax(x)
    assert amax.shape == (70,) and amax.dtype == torch.float32 and amax.device.type == "meta"
