"""The implicit-GEMM forward convolution kernels (``kernels::conv2d_fprop_cuda``), through the
``int8::conv2d`` and ``int8::scaled_conv2d`` ops, on every kernel family built with one: sm90 (TMA
im2col + wgmma) and sm80 (CUTLASS 2.x iterators + mma.sync; an H200 build with "8.0+PTX" runs it
when forced with ``use_backend``).

* int32 outputs equal an int64 reference exactly (F.conv2d in float64 on integer values is exact:
  every partial sum is an integer below 2^53);
* the fused epilogue gives, for every output type, the CPU op's result bit for bit (the CPU runs
  epilogue_math.h: the same fused steps in the same order);
* for the shapes a family takes the kernel really runs: the op then allocates no column buffer;
* shapes at the limits of the kernels (which decline them: the op falls back to im2col + GEMM) are
  still exact.
All of it needs a GPU (``cuda`` marker).
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from conftest import HAS_CUDA, INT32_MAX, forced_family, make_gen, rand_int8  # noqa: E402

import torch_int8  # noqa: E402,F401  (registers torch.ops.int8)
from torch_int8 import backends  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")]

# The families with an implicit-GEMM convolution (conv_dispatch.cu), if this build has them.
CONV_FAMILIES = [f for f in ("sm90", "sm80") if f in (backends.built_backends() if HAS_CUDA else [])]


@pytest.fixture(params=CONV_FAMILIES or [pytest.param(None, marks=pytest.mark.skip(reason="no conv kernel built"))])
def family(request):
    """Forces one family for the test; skips where its code cannot run on this GPU."""
    with forced_family(request.param) as name:
        yield name


class Conv:
    """One convolution: NCHW input n x c x h x w, k filters r x s, stride / padding / dilation (h, w)."""

    def __init__(self, n, c, h, w, k, r, s, stride=1, padding=0, dilation=1):
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        self.n, self.c, self.h, self.w, self.k, self.r, self.s = n, c, h, w, k, r, s
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)

    def __repr__(self):
        return (f"n{self.n}c{self.c}h{self.h}w{self.w}k{self.k}r{self.r}s{self.s}"
                f"st{self.stride}pad{self.padding}dil{self.dilation}")

    def operands(self, seed):
        """(x channels_last, weight) int8 on the CPU."""
        x = rand_int8((self.n, self.c, self.h, self.w), seed=seed).contiguous(memory_format=torch.channels_last)
        return x, rand_int8((self.k, self.c, self.r, self.s), seed=seed + 1)

    def args(self):
        return self.stride, self.padding, self.dilation

    def reference(self, x, weight):
        """Exact int64 result, NCHW."""
        ref = F.conv2d(x.double(), weight.double(), None, self.stride, self.padding, self.dilation)
        assert ref.abs().max() <= INT32_MAX
        return ref.long()

    def gemm_k(self):
        return self.c * self.r * self.s

    def out_hw(self):
        size = lambda i, f, d, p, s: (i + 2 * p - d * (f - 1) - 1) // s + 1  # noqa: E731
        return (size(self.h, self.r, self.dilation[0], self.padding[0], self.stride[0]),
                size(self.w, self.s, self.dilation[1], self.padding[1], self.stride[1]))


# Shapes both families take (C a multiple of 32, K of 16) and what each exercises on sm90
# (128 x 64 tiles for K <= 64, 128 x 128 above; 64-channel k-tiles if C allows, else 32).
TAKEN = [
    Conv(2, 64, 9, 7, 64, 1, 1),                                         # 1x1, M = 126 < one tile
    Conv(2, 64, 14, 14, 64, 3, 3, padding=1),                            # ResNet 3x3, narrow tile
    Conv(3, 128, 15, 17, 144, 3, 3, stride=2, padding=1),                # wide tile, K ragged vs 128
    Conv(1, 32, 11, 13, 48, 5, 5, padding=2),                            # 32-channel k-tiles, K < 64
    Conv(2, 64, 23, 23, 80, 7, 7, stride=2, padding=3),                  # 7x7 stride 2 (a stem)
    Conv(2, 96, 16, 12, 32, 3, 3, padding=2, dilation=2),                # dilation, C = 3 x 32
    Conv(2, 32, 13, 10, 64, 3, 5, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),  # h != w everywhere
    Conv(1, 64, 1, 1, 32, 1, 1),                                         # M = 1
    Conv(4, 128, 28, 28, 256, 3, 3, padding=1),                          # 25 M tiles x 2 N tiles, 18 k-tiles
]
# C = 16 or 48: the sm80 kernel takes them, sm90 (32-channel wgmma K) falls back to im2col.
SM80_ONLY = [Conv(2, 16, 8, 8, 16, 3, 3, padding=1), Conv(1, 48, 10, 9, 32, 3, 3, stride=2)]


@pytest.mark.parametrize("conv", TAKEN + SM80_ONLY, ids=repr)
def test_int32_exact(family, conv):
    x, weight = conv.operands(seed=conv.gemm_k() + conv.k)
    out = torch.ops.int8.conv2d(x.cuda(), weight.cuda(), *conv.args())
    assert out.dtype == torch.int32 and out.shape == (conv.n, conv.k) + conv.out_hw()
    assert torch.equal(out.cpu().long(), conv.reference(x, weight))


# More tiles than two per SM (132 on an H200): the persistent sm90 kernel's CTAs each take several
# tiles in turns of its two consumer warpgroups, the last turn ragged (M not a multiple of 128).
MANY_TILES = [
    Conv(32, 64, 45, 45, 64, 3, 3, padding=1),       # 507 tiles of 128 x 64
    Conv(24, 128, 31, 29, 200, 3, 3, padding=1),     # 169 x 2 tiles of 128 x 128, K ragged
]


def _assert_int32_and_bf16_exact(conv, seed):
    """conv2d equal to the int64 reference, and scaled_conv2d's fused bf16 epilogue with per-image
    scales equal to the CPU op's, bit for bit."""
    x, weight = conv.operands(seed=seed)
    out = torch.ops.int8.conv2d(x.cuda(), weight.cuda(), *conv.args())
    assert torch.equal(out.cpu().long(), conv.reference(x, weight))
    _, _, scale_x, scale_w, _, bias = _scaled_operands(conv, seed + 1, True, None)
    operands = (x, weight, scale_x, scale_w, None, bias)
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, out_dtype=torch.bfloat16)
    got = torch.ops.int8.scaled_conv2d(*(t if t is None else t.cuda() for t in operands), **kwargs)
    assert torch.equal(got.cpu(), torch.ops.int8.scaled_conv2d(*operands, **kwargs))


@pytest.mark.parametrize("conv", MANY_TILES, ids=repr)
def test_many_tiles_per_sm_exact(family, conv):
    _assert_int32_and_bf16_exact(conv, seed=conv.n)


# The sm90 family's two persistent schedules (conv_sm90.cu's rule picks one per shape), each forced
# through TORCH_INT8_SM90_CONV_TILE on every shape it takes; an unknown name makes the kernel
# decline, and the op falls back to im2col + GEMM, exact all the same.
@pytest.mark.parametrize("schedule", ["pingpong", "cooperative", "unknown"])
@pytest.mark.parametrize("conv", TAKEN + MANY_TILES, ids=repr)
def test_sm90_schedules_exact(schedule, conv, monkeypatch):
    if "sm90" not in CONV_FAMILIES:
        pytest.skip("no sm90 kernels in this build")
    monkeypatch.setenv("TORCH_INT8_SM90_CONV_TILE", schedule)
    with forced_family("sm90"):
        _assert_int32_and_bf16_exact(conv, seed=conv.k)


def test_largest_accumulators_exact(family):
    # GEMM-K = 1024 * 11 * 11 = 123904: all (-128)(-128) sum to 2.03e9, near the int32 limit
    # (2.15e9; the kernels take GEMM-K up to 131071); the other channels mix 127 and -127.
    conv = Conv(1, 1024, 11, 11, 48, 11, 11)
    x = torch.full((1, 1024, 11, 11), -128, dtype=torch.int8)
    weight = torch.full((48, 1024, 11, 11), -128, dtype=torch.int8)
    weight[16:32] = 127
    weight[32:, ::2] = -127
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.ops.int8.conv2d(x.cuda(), weight.cuda(), *conv.args())
    assert torch.equal(out.cpu().long(), conv.reference(x, weight))


def test_sliced_and_nchw_inputs_exact(family):
    conv = Conv(2, 64, 12, 10, 32, 3, 3, padding=1)
    big, filters = rand_int8((3, 80, 14, 12), seed=5), rand_int8((64, 64, 3, 3), seed=6)
    # views of GPU tensors: a strided window of NCHW memory and every other filter ([32, 64, 3, 3])
    view = lambda t: t[1:, 8:72, 1:13, 2:12]  # noqa: E731
    out = torch.ops.int8.conv2d(view(big.cuda()), filters.cuda()[::2], *conv.args())
    assert torch.equal(out.cpu().long(), conv.reference(view(big), filters[::2]))


def _peak_extra_bytes(fn):
    """fn's result and the most memory it held allocated at once beyond what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("conv", [Conv(4, 64, 28, 28, 64, 3, 3, padding=1),
                                  Conv(8, 128, 32, 32, 128, 3, 3, stride=2, padding=1),
                                  Conv(3, 32, 20, 20, 48, 5, 5, padding=2)], ids=repr)
@pytest.mark.parametrize("scaled", [False, True], ids=["conv2d", "scaled_conv2d"])
def test_kernel_runs_without_column_buffer(family, conv, scaled):
    # The im2col fallback allocates a column buffer of (pixels x GEMM-K) bytes besides the output;
    # the implicit-GEMM kernel needs the output, a KRSC copy of the filter and the epilogue's
    # vectors (one float per pixel, a few per output channel) only.
    x, weight = (t.cuda() for t in conv.operands(seed=11))
    p, q = conv.out_hw()
    pixels = conv.n * p * q
    if scaled:
        scale_x, scale_w, bias = (torch.rand(size, device="cuda") + 0.5 for size in (conv.n, conv.k, conv.k))
        out, extra = _peak_extra_bytes(lambda: torch.ops.int8.scaled_conv2d(
            x, weight, scale_x, scale_w, None, bias, *conv.args(), out_dtype=torch.bfloat16))
    else:
        out, extra = _peak_extra_bytes(lambda: torch.ops.int8.conv2d(x, weight, *conv.args()))
        assert torch.equal(out.cpu().long(), conv.reference(x.cpu(), weight.cpu()))
    columns = pixels * conv.gemm_k()
    allowed = out.numel() * out.element_size() + weight.numel() + 4 * pixels * scaled + (64 << 10)
    assert columns > allowed, "shape too small to tell the paths apart"
    assert extra <= allowed, f"{extra} bytes allocated: the op fell back to im2col (columns: {columns} bytes)"


# Outside the kernels' limits: sm90 declines padding beyond TMA im2col's corner range (128), a
# dilated filter reaching 255 rows or more, strides above 8, C not a multiple of 32; sm80 filters
# above 32 x 32 and C not a multiple of 16; both groups and K not a multiple of 16 bytes of output.
DECLINED = [
    Conv(1, 32, 4, 4, 16, 3, 3, padding=130),
    Conv(1, 32, 260, 9, 16, 3, 1, dilation=(128, 1)),
    Conv(2, 32, 40, 40, 32, 3, 3, stride=9),
    Conv(1, 16, 40, 36, 16, 33, 3),
    Conv(2, 24, 9, 9, 16, 3, 3, padding=1),
    Conv(2, 64, 9, 9, 10, 3, 3, padding=1),
]


@pytest.mark.parametrize("conv", DECLINED, ids=repr)
def test_declined_shapes_exact(family, conv):
    x, weight = conv.operands(seed=conv.h + conv.k)
    out = torch.ops.int8.conv2d(x.cuda(), weight.cuda(), *conv.args())
    assert torch.equal(out.cpu().long(), conv.reference(x, weight))


def test_groups_exact(family):
    conv = Conv(2, 64, 10, 10, 64, 3, 3, padding=1)
    x, _ = conv.operands(seed=3)
    weight = rand_int8((64, 32, 3, 3), seed=4)
    out = torch.ops.int8.conv2d(x.cuda(), weight.cuda(), *conv.args(), 2)
    ref = F.conv2d(x.double(), weight.double(), None, conv.stride, conv.padding, conv.dilation, 2).long()
    assert torch.equal(out.cpu().long(), ref)


EPILOGUE_CONVS = [Conv(2, 64, 10, 9, 64, 3, 3, padding=1), Conv(3, 96, 9, 11, 160, 3, 3, stride=2, padding=1),
                  Conv(1, 64, 7, 7, 16, 1, 1)]


def _scaled_operands(conv, seed, per_image, zero_point):
    g = make_gen(seed)
    x, weight = conv.operands(seed)
    scale_x = torch.rand(conv.n if per_image else 1, generator=g) * 0.05 + 0.01
    scale_w = torch.rand(conv.k, generator=g) * 0.01 + 1e-3
    zp = torch.tensor([zero_point], dtype=torch.int32) if zero_point is not None else None
    bias = torch.randn(conv.k, generator=g)
    return x, weight, scale_x, scale_w, zp, bias


@pytest.mark.parametrize("conv", EPILOGUE_CONVS, ids=repr)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int8])
@pytest.mark.parametrize("per_image", [False, True], ids=["scale_x_tensor", "scale_x_image"])
def test_epilogue_matches_cpu_bit_for_bit(family, conv, out_dtype, per_image):
    x, weight, scale_x, scale_w, _, bias = _scaled_operands(conv, 21, per_image, None)
    kwargs = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, out_dtype=out_dtype)
    if out_dtype == torch.int8:  # an output scale that saturates the largest outputs
        dequantized = torch.ops.int8.scaled_conv2d(x, weight, scale_x, scale_w, None, bias, **dict(
            kwargs, out_dtype=torch.float32))
        kwargs.update(out_scale=float(dequantized.abs().max()) / 160, out_zero_point=-5)
    cuda = lambda t: t.cuda()  # noqa: E731
    got = torch.ops.int8.scaled_conv2d(*map(cuda, (x, weight, scale_x, scale_w)), None, bias.cuda(), **kwargs)
    want = torch.ops.int8.scaled_conv2d(x, weight, scale_x, scale_w, None, bias, **kwargs)
    assert got.dtype == out_dtype and got.shape == want.shape
    assert torch.equal(got.cpu(), want), f"{int((got.cpu() != want).sum())} of {want.numel()} outputs differ"
    if out_dtype == torch.int8:
        saturated = (want == 127) | (want == -128)
        assert saturated.any() and not saturated.all()


def test_epilogue_asymmetric_input_unpadded(family):
    # An activation zero point with no padding still takes the kernel (row offset x filter sums).
    conv = Conv(2, 64, 9, 9, 32, 3, 3)
    x, weight, scale_x, scale_w, zp, bias = _scaled_operands(conv, 31, True, -17)
    operands = (x, weight, scale_x, scale_w, zp, bias)
    got = torch.ops.int8.scaled_conv2d(*(t.cuda() for t in operands), out_dtype=torch.float32)
    want = torch.ops.int8.scaled_conv2d(*operands, out_dtype=torch.float32)
    assert torch.equal(got.cpu(), want)
    # and the float64 value it approximates: scale_x * scale_w * conv(x - zp, w) + bias
    exact = F.conv2d(x.double() + 17, weight.double()) * scale_x.double().view(-1, 1, 1, 1) \
        * scale_w.double().view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
    torch.testing.assert_close(want.double(), exact, rtol=1e-6, atol=1e-5)
