"""int8::scaled_conv2d_wgrad (weight gradient from per-image quantized operands) and the Conv2d
layer's use of it.

Reference: every image's wgrad computed in float64 on the int8 values (exact), times the float32
product of its two scales, summed in float64. The op adds the images in float32 (GPU) or float64
(CPU), so the bound is float32 rounding: (N + 4) * 2^-24 * sum_n |wgrad of image n| * scale_n,
with sum_n wgrad(|x_n|, |dy_n|) * scale_n bounding every partial sum.
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
from torch_int8.conv import scaled_conv2d_wgrad  # noqa: E402

# (N, C, H, W, K, R, S, stride, padding, dilation, groups); the first six meet the GPU kernel's
# conditions (groups 1, C and K multiples of 16), the last two take the image-by-image path.
CASES = [
    (3, 16, 9, 7, 32, 3, 3, 1, 1, 1, 1),
    (2, 32, 11, 10, 16, 5, 5, 2, 2, 1, 1),     # 5x5, stride 2
    (2, 16, 9, 9, 48, 3, 3, 1, 2, 2, 1),       # dilation 2
    (2, 96, 8, 8, 80, 1, 1, 2, 0, 1, 1),       # 1x1 stride 2; partial 64-channel tiles of C and K
    (1, 16, 3, 3, 16, 3, 3, 1, 0, 1, 1),       # one output pixel
    (5, 64, 14, 14, 64, 3, 3, 1, 1, 1, 1),     # several 32-pixel steps per image, more images than splits
    (2, 10, 8, 11, 6, 3, 3, 2, 1, 1, 2),       # groups 2, ragged channels
    (2, 24, 7, 7, 8, 3, 3, 1, 1, 1, 1),        # C not a multiple of 16
]


def case_id(c):
    return "n{}c{}h{}w{}k{}r{}s{}_st{}_p{}_d{}_g{}".format(*c)


def make_operands(case, seed, fmt, per_tensor):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    x = rand_int8((n, c, h, w), seed=seed)
    p = (h + 2 * padding - dilation * (r - 1) - 1) // stride + 1
    q = (w + 2 * padding - dilation * (s - 1) - 1) // stride + 1
    gy = rand_int8((n, k, p, q), seed=seed + 1)
    if fmt == "channels_last":
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))
    elif fmt == "sliced":
        x = torch.cat([x, x], dim=0)[::2]
    count = 1 if per_tensor else n
    sg = torch.rand(count, generator=make_gen(seed + 2)) * 0.01 + 1e-3
    sx = torch.rand(count, generator=make_gen(seed + 3)) * 0.01 + 1e-3
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return gy, x, sg, sx, (r, s), geometry


def reference(gy, x, sg, sx, kernel, geometry):
    """(float64 result, float64 bound of the float32 rounding)."""
    n = x.shape[0]
    scale = (sg.expand(n) * sx.expand(n)).double()  # float32 product, as the kernels form it
    shape = (gy.shape[1], x.shape[1] // geometry["groups"], *kernel)
    ref = torch.zeros(shape, dtype=torch.float64)
    mag = torch.zeros(shape, dtype=torch.float64)
    for i in range(n):
        xi, gi = x[i:i + 1].double(), gy[i:i + 1].double()
        ref += conv2d_weight(xi, shape, gi, **geometry) * scale[i]
        mag += conv2d_weight(xi.abs(), shape, gi.abs(), **geometry) * scale[i]
    return ref, (n + 4) * 2.0 ** -24 * mag


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("per_tensor", [False, True], ids=["per_image", "per_tensor"])
def test_scaled_wgrad_is_the_scaled_sum_of_exact_image_wgrads(device, case, per_tensor):
    fmt = ["channels_last", "contiguous", "sliced"][CASES.index(case) % 3]
    gy, x, sg, sx, kernel, geometry = make_operands(case, CASES.index(case) * 11, fmt, per_tensor)
    ref, bound = reference(gy, x, sg, sx, kernel, geometry)
    dim = None if per_tensor else 0
    got = scaled_conv2d_wgrad(QTensor(gy.to(device), sg.to(device), None, dim),
                              QTensor(x.to(device), sx.to(device), None, dim), kernel, **geometry)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    err = (got.cpu().double() - ref).abs()
    assert torch.all(err <= bound), float((err - bound).max())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_strided_pointwise_layer_wgrad_from_the_pixels_it_reads(device):
    """ResNet's downsampling 1x1 stride-2 layer: x's every other pixel is quantized and saved (int8, a
    quarter of x, where the implicit kernel runs: at least 14x14 output pixels), its weight gradient
    the 1x1 stride-1 one over them, within the per-image bounds of all of x."""
    conv = torch.nn.Conv2d(32, 48, 1, stride=2, bias=False).to(device)
    x = torch.randn(3, 32, 29, 29, generator=make_gen(51)).to(device).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    y = layer(x)
    kernel_runs = device == "cuda" and torch_int8.backends.selected_backend() in ("sm80", "sm90")
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    quarter = [t for t in saved if t.shape[2:] == (15, 15) and t.shape[1] == 32]
    assert len(quarter) == 1 and (quarter[0].dtype == torch.int8) == kernel_runs
    assert not any(t is x for t in saved)
    gy = torch.randn(y.shape, generator=make_gen(52)).to(device)
    y.backward(gy)
    geometry = (conv.stride, conv.padding, conv.dilation, 1)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    by, _, bdw = layer_bounds_per_image(xd, wd, gd, geometry)
    check_within(y.detach().cpu(), F.conv2d(xd, wd, None, *geometry), by)
    if kernel_runs:
        check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_scaled_wgrad_of_one_huge_image_does_not_overflow_int32(device):
    """One image of 160000 output pixels, every value -128: its sum, 128^2 * 160000 = 2.6e9, passes
    int32; the GPU kernel flushes its int32 sums to float32 often enough, the image-by-image path
    adds the int32 sums of bands of rows in int64."""
    x = torch.full((1, 16, 400, 400), -128, dtype=torch.int8, device=device)
    gy = torch.full((1, 16, 400, 400), -128, dtype=torch.int8, device=device)
    one = torch.ones(1, device=device)
    got = scaled_conv2d_wgrad(QTensor(gy, one, None, None), QTensor(x, one, None, None), (1, 1))
    want = 128.0 * 128.0 * 400 * 400
    assert torch.all((got.double() - want).abs() <= 1e-6 * want)


def test_scaled_wgrad_bad_input():
    gy, x = rand_int8((2, 16, 5, 5), seed=1), rand_int8((2, 16, 5, 5), seed=2)
    s2, s1 = torch.ones(2), torch.ones(1)
    with pytest.raises(ValueError, match="scale_x"):
        scaled_conv2d_wgrad(QTensor(gy, s2, None, 0), QTensor(x, torch.ones(3), None, 0), (1, 1))
    with pytest.raises(TypeError, match="scale_grad_out"):
        scaled_conv2d_wgrad(QTensor(gy, s2.double(), None, 0), QTensor(x, s2, None, 0), (1, 1))
    with pytest.raises(ValueError, match="per tensor or per image"):
        scaled_conv2d_wgrad(QTensor(gy, torch.ones(16), None, 1), QTensor(x, s2, None, 0), (1, 1))
    with pytest.raises(ValueError, match="symmetric|zero point"):
        scaled_conv2d_wgrad(QTensor(gy, s1, torch.ones(1, dtype=torch.int32), None), QTensor(x, s1, None, None),
                            (1, 1))
    with pytest.raises(ValueError, match="batch mismatch"):
        scaled_conv2d_wgrad(QTensor(gy, s2, None, 0), QTensor(x[:1], s1, None, 0), (1, 1))
    with pytest.raises(ValueError, match="does not match"):
        scaled_conv2d_wgrad(QTensor(gy, s2, None, 0), QTensor(x, s2, None, 0), (3, 3))
    with pytest.raises(TypeError, match="grad_out must be torch.int8"):
        torch.ops.int8.scaled_conv2d_wgrad(gy.float(), x, s2, s2, [1, 1])


def test_compile_traces_scaled_wgrad():
    gy, x, sg, sx, kernel, geometry = make_operands(CASES[1], 5, "channels_last", False)

    def fn(gy, x, sg, sx):
        return scaled_conv2d_wgrad(QTensor(gy, sg, None, 0), QTensor(x, sx, None, 0), kernel, **geometry)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(gy, x, sg, sx), fn(gy, x, sg, sx))
    meta, real = fn(*(t.to("meta") for t in (gy, x, sg, sx))), fn(gy, x, sg, sx)
    assert meta.shape == real.shape and meta.stride() == real.stride() and meta.dtype == real.dtype


def layer_bounds_per_image(x, w, gy, geometry):
    """Bounds of Conv2d's outputs with every operand per image (x, dY) or per output / input
    channel (w): as test_conv.layer_bounds, with wgrad's steps per image."""
    stride, padding, dilation, groups = geometry
    conv = lambda a, b: F.conv2d(a, b, None, stride, padding, dilation, groups)  # noqa: E731
    dgrad = lambda g, b: conv2d_input(x.shape, b, g, stride, padding, dilation, groups)  # noqa: E731
    wgrad = lambda a, g: conv2d_weight(a, w.shape, g, stride, padding, dilation, groups)  # noqa: E731
    one_x, one_w, one_g = torch.ones_like(x), torch.ones_like(w), torch.ones_like(gy)
    sx, sg = quant_step(x, 0), quant_step(gy, 0)
    sw = quant_step(w, 0).reshape(1, -1, 1, 1)
    y = sx / 2 * conv(one_x, w.abs()) + sw / 2 * conv(x.abs(), one_w) + sx * sw / 4 * conv(one_x, one_w)
    swc = w.abs().amax(dim=(0, 2, 3)).reshape(1, -1, 1, 1) / 127
    dx = sg / 2 * dgrad(one_g, w.abs()) + swc / 2 * dgrad(gy.abs(), one_w) + sg * swc / 4 * dgrad(one_g, one_w)
    dw = wgrad(x.abs(), sg / 2 * one_g) + wgrad(sx / 2 * one_x, gy.abs()) + wgrad(sx * one_x, sg / 4 * one_g)
    return y, dx, dw


def implicit_wgrad_expected(device, out_pixels):
    """The layer's choice (nn/conv_backward.py implicit_wgrad) for a 3x3 layer of 16 -> 32 channels:
    the per-image path (the GPU's kernel, the CPU's batched products) or the per-channel one."""
    if device == "cpu":
        return out_pixels >= torch_int8.nn.conv_backward.CPU_PER_IMAGE_WGRAD_MIN_PIXELS
    kernel_runs = torch_int8.backends.selected_backend() in ("sm80", "sm90")
    return kernel_runs and out_pixels >= torch_int8.nn.conv_backward.IMPLICIT_WGRAD_MIN_PIXELS


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("setup", [(1, 1, 30, "channels_last"), (2, 1, 58, "contiguous"), (1, 2, 30, "channels_last"),
                                   (1, 1, 10, "channels_last")], ids=["s1", "s2", "d2", "small_images"])
def test_conv2d_layer_with_implicit_wgrad_within_quantization_bounds(device, setup):
    """C and K multiples of 16: on sm80 / sm90 GPUs and images of at least 28x28 output pixels, wgrad
    runs as scaled_conv2d_wgrad's kernel, from the forward's quantized x (saved instead of x) and
    dgrad's quantized dY; smaller images keep the per-channel path (and x)."""
    stride, dilation, hw, fmt = setup
    gen = make_gen(31)
    conv = torch.nn.Conv2d(16, 32, 3, stride=stride, padding=1, dilation=dilation).to(device)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen).to(device) * 0.1)
    x = torch.randn(3, 16, hw, hw, generator=gen) * (torch.rand(3, 1, 1, 1, generator=gen) + 0.5)
    x = x.to(device).contiguous(memory_format=torch.channels_last if fmt == "channels_last" else
                                torch.contiguous_format).requires_grad_(True)
    layer = torch_int8.nn.Conv2d.from_float(conv, Int8Config())
    y = layer(x)
    implicit = implicit_wgrad_expected(device, y.shape[2] * y.shape[3])
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    assert any(t.dtype == torch.int8 for t in saved) == implicit
    assert any(t is x for t in saved) == (not implicit)
    gy = torch.randn(y.shape, generator=make_gen(32)).to(device)
    y.backward(gy)
    geometry = (conv.stride, conv.padding, conv.dilation, 1)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    by, bdx, bdw = layer_bounds_per_image(xd, wd, gd, geometry)
    check_within(y.detach().cpu(), F.conv2d(xd, wd, conv.bias.detach().double().cpu(), *geometry), by)
    check_within(x.grad.cpu(), conv2d_input(xd.shape, wd, gd, *geometry), bdx)
    if implicit:
        check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)
    assert torch.allclose(conv.bias.grad.double().cpu(), gd.sum((0, 2, 3)), atol=1e-4)  # float32 sums


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_layer_wgrad_without_input_grad_uses_the_implicit_kernel(device):
    """The first layer of a network (x without requires_grad): dY is quantized for wgrad alone."""
    conv = torch.nn.Conv2d(16, 16, 3, padding=1, bias=False).to(device)
    x = torch.randn(2, 16, 28, 28, generator=make_gen(41)).to(device).contiguous(memory_format=torch.channels_last)
    layer = torch_int8.nn.Conv2d.from_float(conv)
    y = layer(x)
    assert any(t.dtype == torch.int8 for t in y.grad_fn.saved_tensors if t is not None) == \
        implicit_wgrad_expected(device, 28 * 28)
    gy = torch.randn(2, 16, 28, 28, generator=make_gen(42)).to(device)
    y.backward(gy)
    xd, wd, gd = x.double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    bdw = layer_bounds_per_image(xd, wd, gd, ((1, 1), (1, 1), (1, 1), 1))[2]
    check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, padding=1), bdw)


# One image of more than 131071 output pixels on the image-by-image path (C = 2: the implicit-GEMM
# kernel declines): bands of rows, columns of one over-long row, strides, dilation and padding.
HUGE_IMAGES = [
    dict(x=(1, 2, 363, 363), k=3, kernel=(3, 3), geometry=dict(stride=1, padding=1, dilation=1, groups=1)),
    dict(x=(2, 2, 740, 720), k=4, kernel=(3, 3), geometry=dict(stride=2, padding=2, dilation=2, groups=2)),
    dict(x=(1, 2, 1, 131075), k=2, kernel=(1, 3), geometry=dict(stride=1, padding=(0, 1), dilation=1, groups=1)),
    dict(x=(1, 2, 2, 262150), k=2, kernel=(2, 3), geometry=dict(stride=(1, 1), padding=(1, 0), dilation=1, groups=1)),
]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", HUGE_IMAGES, ids=lambda c: "x".join(map(str, c["x"])))
def test_scaled_wgrad_of_images_beyond_the_int32_depth_by_tiles(device, case):
    x = rand_int8(case["x"], seed=3)
    geometry = case["geometry"]
    out = F.conv2d(x[:, :1].float(), torch.ones(1, 1, *case["kernel"]), None, geometry["stride"],
                   geometry["padding"], geometry["dilation"])
    assert out.shape[2] * out.shape[3] > 131071
    gy = rand_int8((x.shape[0], case["k"], *out.shape[2:]), seed=4)
    sg, sx = torch.rand(x.shape[0]) + 0.5, torch.rand(x.shape[0]) + 0.5
    ref, bound = reference(gy, x, sg, sx, case["kernel"], geometry)
    got = scaled_conv2d_wgrad(QTensor(gy.to(device), sg.to(device), None, 0),
                              QTensor(x.to(device), sx.to(device), None, 0), case["kernel"], **geometry)
    err = (got.cpu().double() - ref).abs()
    assert torch.all(err <= bound), float((err - bound).max())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_conv2d_layer_trains_on_one_image_beyond_the_int32_depth(device):
    """One image of 363x363 output pixels (more than 131071): the layer's weight gradient stays INT8,
    per image (scaled_conv2d_wgrad), within the per-image bounds."""
    gen = make_gen(41)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False).to(device)
    x = torch.randn(1, 2, 363, 363, generator=gen).to(device).requires_grad_(True)
    y = torch_int8.nn.Conv2d.from_float(conv)(x)
    gy = torch.randn(y.shape, generator=make_gen(42)).to(device)
    y.backward(gy)
    geometry = (conv.stride, conv.padding, conv.dilation, 1)
    xd, wd, gd = x.detach().double().cpu(), conv.weight.detach().double().cpu(), gy.double().cpu()
    _, _, bdw = layer_bounds_per_image(xd, wd, gd, geometry)
    check_within(conv.weight.grad.cpu(), conv2d_weight(xd, wd.shape, gd, *geometry), bdw)
