"""int8::im2col / int8::col2im against torch.nn.functional.unfold / fold (exact, in float64).

NCHW layout: [N, C*R*S, L] exactly as F.unfold. NHWC layout: [N, L, R*S*C] (one row per output
pixel, column (r*S + s)*C + c), i.e. F.unfold's result with its rows regrouped.
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CUDA_ONLY, DEVICE_PARAMS, make_gen, rand_int8  # noqa: E402

import torch_int8  # noqa: E402

# (N, C, H, W, kernel, dilation, padding, stride)
GEOMETRIES = [
    (2, 3, 7, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 5, 9, 8, (3, 2), (2, 1), (2, 0), (2, 1)),
    (3, 2, 6, 6, (1, 1), (1, 1), (0, 0), (2, 2)),
    (1, 4, 11, 9, (5, 5), (1, 2), (2, 3), (1, 2)),
    (2, 1, 4, 4, (4, 4), (1, 1), (0, 0), (1, 1)),  # one output pixel per image
    (1, 2, 4, 4, (3, 3), (1, 1), (40, 40), (1, 1)),  # padded past 4x the image: the CPU's element loop
]


def to_nhwc_cols(unfolded: torch.Tensor, c: int) -> torch.Tensor:
    """F.unfold's [N, C*R*S, L] as the NHWC layout [N, L, R*S*C]."""
    n, crs, l = unfolded.shape
    return unfolded.reshape(n, c, crs // c, l).permute(0, 3, 2, 1).reshape(n, l, crs)


def layouts_of(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """x [N, C, H, W] in memory format fmt: contiguous, channels_last, or a strided slice."""
    if fmt == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if fmt == "sliced":
        big = torch.zeros(x.shape[0], x.shape[1] + 1, x.shape[2], 2 * x.shape[3], dtype=x.dtype, device=x.device)
        big[:, 1:, :, ::2] = x
        return big[:, 1:, :, ::2]
    return x.contiguous()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:4])) + f"_k{g[4][0]}{g[4][1]}")
@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "sliced"])
def test_im2col_equals_unfold(device, geometry, fmt):
    n, c, h, w, k, d, p, s = geometry
    x = rand_int8((n, c, h, w), seed=h * w + c)
    ref = F.unfold(x.double(), k, d, p, s)
    xd = layouts_of(x.to(device), fmt)
    got = torch_int8.im2col(xd, k, d, p, s)
    assert got.dtype == torch.int8 and got.shape == ref.shape
    assert torch.equal(got.cpu().double(), ref)
    got_nhwc = torch_int8.im2col(xd.permute(0, 2, 3, 1), k, d, p, s, layout="NHWC")
    assert torch.equal(got_nhwc.cpu().double(), to_nhwc_cols(ref, c))


# (C, H, W, kernel, dilation, padding, stride) for the GPU's vectorized im2col: NCHW columns of one
# image write rows of P*Q pixels, NHWC columns of contiguous input write runs of C channels, in
# vectors of the largest width in {16, 8, 4} dividing that length (else the byte kernel).
VECTOR_GEOMETRIES = [
    (16, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1)),   # P*Q = 64 (16), C = 16 (16)
    (8, 11, 10, (3, 3), (2, 1), (2, 0), (1, 1)),  # 88 (8), 8 (8); dilation 2, padding 2
    (12, 9, 9, (3, 3), (1, 1), (0, 0), (1, 1)),   # 49 (bytes), 12 (4)
    (4, 11, 11, (1, 1), (1, 1), (0, 0), (2, 2)),  # 36 (4), 4 (4); 1x1 stride 2
    (6, 10, 9, (3, 2), (1, 2), (2, 1), (2, 1)),   # 54 (bytes), 6 (bytes)
    (32, 6, 6, (2, 2), (1, 1), (0, 0), (1, 1)),   # 25 (bytes), 32 (16)
]


def with_storage_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A contiguous copy of t whose data starts `offset` bytes into its storage (alignment misses)."""
    flat = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    out = flat[offset:].view(t.shape)
    out.copy_(t)
    return out


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("geometry", VECTOR_GEOMETRIES, ids=lambda g: "c{}_{}x{}".format(*g[:3]))
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("offset", [0, 4, 1], ids=["aligned", "offset4", "offset1"])
def test_im2col_vector_widths_equal_unfold(device, geometry, batch, offset):
    """Every vector width and the byte kernel, padding filled with pad_value; the NHWC input also
    at a storage offset that lowers (offset 4) or removes (offset 1) the vectors."""
    c, h, w, k, d, p, s = geometry
    x = rand_int8((batch, c, h, w), seed=c * h + w)
    ref = F.unfold(F.pad(x.double(), (p[1], p[1], p[0], p[0]), value=-3.0), k, d, 0, s)
    got = torch_int8.im2col(x.to(device), k, d, p, s, pad_value=-3)
    assert torch.equal(got.cpu().double(), ref)
    nhwc = with_storage_offset(x.to(device).permute(0, 2, 3, 1), offset)
    got_nhwc = torch_int8.im2col(nhwc, k, d, p, s, pad_value=-3, layout="NHWC")
    assert torch.equal(got_nhwc.cpu().double(), to_nhwc_cols(ref, c))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_im2col_pads_with_pad_value(device):
    x = rand_int8((2, 3, 6, 5), seed=1)
    ref = F.unfold(F.pad(x.double(), (2, 2, 1, 1), value=-7.0), (3, 3), 1, 0, 1)
    got = torch_int8.im2col(x.to(device), 3, padding=(1, 2), pad_value=-7)
    assert torch.equal(got.cpu().double(), ref)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g[:4])) + f"_k{g[4][0]}{g[4][1]}")
@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float32])
def test_col2im_equals_fold(device, geometry, dtype):
    n, c, h, w, k, d, p, s = geometry
    blocks = F.unfold(torch.zeros(1, 1, h, w), k, d, p, s).shape[-1]
    # Integers (also as float32): every sum is exact, so F.fold in float64 is the exact reference.
    low, high = (-128, 128) if dtype != torch.int32 else (-2**20, 2**20)
    cols = torch.randint(low, high, (n, c * k[0] * k[1], blocks), generator=make_gen(h + w), dtype=torch.int64)
    ref = F.fold(cols.double(), (h, w), k, d, p, s)
    sum_dtype = torch.float32 if dtype == torch.float32 else torch.int32
    got = torch_int8.col2im(cols.to(dtype).to(device), (h, w), k, d, p, s)
    assert got.dtype == sum_dtype and torch.equal(got.cpu().double(), ref)
    nhwc = to_nhwc_cols(cols, c).to(dtype).to(device)
    got_nhwc = torch_int8.col2im(nhwc, (h, w), k, d, p, s, layout="NHWC")
    assert torch.equal(got_nhwc.cpu().double(), ref.permute(0, 2, 3, 1))
    # Any strides: a transposed view reads the same columns.
    got_t = torch_int8.col2im(cols.to(dtype).to(device).transpose(1, 2).contiguous().transpose(1, 2), (h, w), k, d,
                              p, s)
    assert torch.equal(got_t.cpu().double(), ref)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_float_col2im_gpu_matches_cpu_bitwise(device):
    cols = torch.randn(2, 3 * 9, 5 * 4, generator=make_gen(3))
    cpu = torch_int8.col2im(cols, (9, 7), 3, 1, 1, 2)
    gpu = torch_int8.col2im(cols.to(device), (9, 7), 3, 1, 1, 2)
    assert torch.equal(gpu.cpu(), cpu)


BAD_IM2COL = [
    (lambda x: torch_int8.im2col(x[0], 3), ValueError, "must be 4-D"),
    (lambda x: torch_int8.im2col(x.float(), 3), TypeError, "must be torch.int8"),
    (lambda x: torch_int8.im2col(x, 3, padding=-1), ValueError, "padding must be in \\[0, "),
    (lambda x: torch_int8.im2col(x, 3, stride=0), ValueError, "stride must be in \\[1, "),
    (lambda x: torch_int8.im2col(x, 3, dilation=(1, 0)), ValueError, "dilation must be in \\[1, "),
    (lambda x: torch_int8.im2col(x, 9), ValueError, "smaller than the dilated kernel"),
    (lambda x: torch_int8.im2col(x, 3, pad_value=128), ValueError, "pad_value"),
    (lambda x: torch_int8.im2col(x, 3, layout="CHWN"), ValueError, "layout must be"),
    (lambda x: torch_int8.im2col(x[:0], 3), ValueError, "is empty"),
]


@pytest.mark.parametrize("case", range(len(BAD_IM2COL)))
def test_im2col_bad_input(case):
    fn, exc, msg = BAD_IM2COL[case]
    with pytest.raises(exc, match=msg):
        fn(rand_int8((1, 2, 5, 5), seed=0))


BAD_COL2IM = [
    (lambda c: torch_int8.col2im(c[0], (5, 5), 3), ValueError, "must be 3-D"),
    (lambda c: torch_int8.col2im(c.double(), (5, 5), 3), TypeError, "int8, int32 or float32"),
    (lambda c: torch_int8.col2im(c, (5, 5), (2, 2)), ValueError, "multiple of R\\*S"),
    (lambda c: torch_int8.col2im(c, (6, 5), 3), ValueError, "blocks"),
    (lambda c: torch_int8.col2im(c, (5, 5), 3, stride=0), ValueError, "stride must be in \\[1, "),
]


@pytest.mark.parametrize("case", range(len(BAD_COL2IM)))
def test_col2im_bad_input(case):
    fn, exc, msg = BAD_COL2IM[case]
    with pytest.raises(exc, match=msg):
        fn(torch.zeros(1, 18, 9, dtype=torch.int32))  # C = 2, 3x3 kernel, 5x5 -> 3x3 blocks


def test_compile_traces_im2col_and_col2im():
    x = rand_int8((2, 3, 6, 5), seed=4)

    def fn(t):
        cols = torch_int8.im2col(t, 3, padding=1)
        return torch_int8.col2im(cols, (6, 5), 3, padding=1)

    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(got, fn(x))
