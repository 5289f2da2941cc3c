"""VGG-small-7/8/9, LeNet-5 and an integer ResNet, each as an integer-only Network or as the same
float network (torch.nn, fp32) for comparison. One description per architecture, built by either
factory; both draw the same Xavier-uniform weights from the seed (the integer one quantizes them).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from . import layers as L
from .arith import IntTensor, check_rounding, quantize_input

VGG_SMALL = {  # NITI's CIFAR configurations: output channels of 3x3 convolutions, "M" = 2x2 max pooling
    7: [128, 128, "M", 256, 256, "M", 512, 512, "M"],
    8: [128, 128, 128, "M", 256, 256, "M", 512, 512, "M"],
    9: [128, 128, 128, "M", 256, 256, 256, "M", 512, 512, "M"],
}
DEFAULT_GRAD_BITS = 5


class Network(L.IntModule):
    """An integer-only network: float images are quantized on entry (one exponent per batch), the
    layers run on int8; ``grad_bits`` (a device buffer) and ``rounding`` set the weight update."""

    def __init__(self, layers: L.Sequential, rounding: str = "pseudo_stochastic",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.layers = layers
        self.rounding = check_rounding(rounding)
        self.generator = generator
        self.register_buffer("grad_bits", torch.tensor(DEFAULT_GRAD_BITS, dtype=torch.int32))

    def forward(self, images) -> IntTensor:
        x = images if isinstance(images, IntTensor) else quantize_input(images)
        return self.layers(x)

    def set_grad_bits(self, bits: int) -> None:
        """The weight gradients' bit width (1..7), e.g. from GradBitsSchedule; in place (graph-safe)."""
        if not isinstance(bits, int) or not 1 <= bits <= 7:
            raise ValueError(f"grad bits must be an int in [1, 7], got {bits!r}")
        self.grad_bits.fill_(bits)

    def weight_update(self) -> L.WeightUpdate:
        return L.WeightUpdate(self.grad_bits, self.rounding, self.generator)

    def backward(self, err: IntTensor, update: L.WeightUpdate, input_grad: bool = False):
        return self.layers.backward(err, update, input_grad)


class _FloatResidualBlock(nn.Module):
    """ResidualBlock in float: relu(shortcut(x) + 2^-shift * branch(x))."""

    def __init__(self, conv: Callable, in_channels: int, out_channels: int, stride: int, shift: int):
        super().__init__()
        self.scale = 2.0 ** -shift
        self.branch = nn.Sequential(conv(in_channels, out_channels, 3, stride, 1), nn.ReLU(),
                                    conv(out_channels, out_channels, 3, 1, 1))
        self.projection = (conv(in_channels, out_channels, 1, stride, 0)
                           if stride != 1 or in_channels != out_channels else nn.Identity())

    def forward(self, x):
        return torch.relu(self.projection(x) + self.scale * self.branch(x))


class _Factory:
    """Draws every layer's weights from one CPU generator seeded with seed, in construction order."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.seed = seed


class _IntFactory(_Factory):
    """Builds integer layers."""

    def conv(self, cin, cout, kernel, stride, padding):
        return L.Conv2d(cin, cout, kernel, stride, padding, self.generator)

    def linear(self, fin, fout):
        return L.Linear(fin, fout, self.generator)

    def block(self, cin, cout, stride, shift):
        return L.ResidualBlock(cin, cout, stride, shift, self.generator)

    relu, flatten, sum_pool = L.ReLU, L.Flatten, L.GlobalSumPool

    def pool(self, k):
        return L.MaxPool2d(k)

    def dropout(self):
        return L.Dropout(self.seed)

    def sequential(self, modules):
        return L.Sequential(*modules)


class _FloatFactory(_Factory):
    """The same layers in torch.nn (no bias), initialized with the same Xavier-uniform draws."""

    def _xavier(self, module):
        with torch.no_grad():
            nn.init.xavier_uniform_(module.weight, generator=self.generator)
        return module

    def conv(self, cin, cout, kernel, stride, padding):
        return self._xavier(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False))

    def linear(self, fin, fout):
        return self._xavier(nn.Linear(fin, fout, bias=False))

    def block(self, cin, cout, stride, shift):
        return _FloatResidualBlock(self.conv, cin, cout, stride, shift)

    relu, flatten = nn.ReLU, nn.Flatten

    def sum_pool(self):
        return _SumPool()

    def pool(self, k):
        return nn.MaxPool2d(k)

    def dropout(self):
        return nn.Dropout(0.5)

    def sequential(self, modules):
        return nn.Sequential(*modules)


class _SumPool(nn.Module):
    def forward(self, x):
        return x.sum((2, 3))


def _check_channels(in_channels: int) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")


def _check_image(in_channels: int, image_size: int, least: int) -> None:
    _check_channels(in_channels)
    if not isinstance(image_size, int) or image_size < least:
        raise ValueError(f"image_size must be an int of at least {least}, got {image_size!r}")


def _vgg_small_layers(f, depth: int, in_channels: int, num_classes: int, image_size: int):
    if depth not in VGG_SMALL:
        raise ValueError(f"vgg_small: depth must be one of {sorted(VGG_SMALL)}, got {depth!r}")
    _check_image(in_channels, image_size, 8)
    modules, channels, size = [], in_channels, image_size
    for entry in VGG_SMALL[depth]:
        if entry == "M":
            modules.append(f.pool(2))
            size //= 2
        else:
            modules += [f.conv(channels, entry, 3, 1, 1), f.relu()]
            channels = entry
    modules += [f.flatten(), f.dropout(), f.linear(channels * size * size, num_classes)]
    return f.sequential(modules)


def _lenet5_layers(f, in_channels: int, num_classes: int, image_size: int):
    """NITI's LeNet-5: conv5 20, pool, conv5 50, pool, 500 hidden (no padding)."""
    _check_image(in_channels, image_size, 16)
    size = ((image_size - 4) // 2 - 4) // 2
    return f.sequential([f.conv(in_channels, 20, 5, 1, 0), f.relu(), f.pool(2),
                         f.conv(20, 50, 5, 1, 0), f.relu(), f.pool(2),
                         f.flatten(), f.linear(50 * size * size, 500), f.relu(), f.linear(500, num_classes)])


def _resnet_layers(f, depth: int, width: int, in_channels: int, num_classes: int, residual_shift: int):
    """CIFAR ResNet-(6n+2): a 3x3 stem, three stages of n blocks (width, 2 width, 4 width channels; the
    later stages start with stride 2), global sum pooling, a Linear."""
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"resnet: width must be a positive int, got {width!r}")
    _check_channels(in_channels)
    n = (depth - 2) // 6
    modules, channels = [f.conv(in_channels, width, 3, 1, 1), f.relu()], width
    for stage in range(3):
        out = width << stage
        for i in range(n):
            modules.append(f.block(channels, out, 2 if stage and i == 0 else 1, residual_shift))
            channels = out
    modules += [f.sum_pool(), f.linear(channels, num_classes)]
    return f.sequential(modules)


def vgg_small(depth: int = 7, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, seed: int = 0,
              rounding: str = "pseudo_stochastic", generator: Optional[torch.Generator] = None) -> Network:
    """Integer VGG-small-{7,8,9}: 3x3 convolutions (stride 1, padding 1) + ReLU, 2x2 max pooling, no
    bias or BatchNorm, dropout, then a Linear. ``generator``: for rounding="stochastic" (None: the
    default generator of the device)."""
    return Network(_vgg_small_layers(_IntFactory(seed), depth, in_channels, num_classes, image_size), rounding,
                    generator)


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, seed: int = 0,
           rounding: str = "pseudo_stochastic", generator: Optional[torch.Generator] = None) -> Network:
    """Integer LeNet-5 (NITI's: 20 / 50 channels, 500 hidden) for 28 or 32 pixel images."""
    return Network(_lenet5_layers(_IntFactory(seed), in_channels, num_classes, image_size), rounding, generator)


def resnet(depth: int = 20, width: int = 16, in_channels: int = 3, num_classes: int = 10, residual_shift: int = 1,
           seed: int = 0, rounding: str = "pseudo_stochastic",
           generator: Optional[torch.Generator] = None) -> Network:
    """Integer ResNet-(6n+2) without BatchNorm: each block adds 2^-residual_shift times its branch
    to its shortcut (layers.ResidualBlock)."""
    return Network(_resnet_layers(_IntFactory(seed), depth, width, in_channels, num_classes, residual_shift),
                    rounding, generator)


def float_vgg_small(depth: int = 7, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                    seed: int = 0) -> nn.Module:
    """vgg_small in fp32 torch.nn, from the same initial (unquantized) weights."""
    return _vgg_small_layers(_FloatFactory(seed), depth, in_channels, num_classes, image_size)


def float_lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, seed: int = 0) -> nn.Module:
    return _lenet5_layers(_FloatFactory(seed), in_channels, num_classes, image_size)


def float_resnet(depth: int = 20, width: int = 16, in_channels: int = 3, num_classes: int = 10,
                 residual_shift: int = 1, seed: int = 0) -> nn.Module:
    return _resnet_layers(_FloatFactory(seed), depth, width, in_channels, num_classes, residual_shift)


def by_name(name: str, in_channels: int, image_size: int, seed: int, float_model: bool = False, **kwargs):
    """'vgg-small-7' / '-8' / '-9', 'lenet5', 'resnet-20' (any 6n+2): the integer Network or, with
    float_model, the float one."""
    if name.startswith("vgg-small-"):
        depth = int(name.rsplit("-", 1)[1])
        build = float_vgg_small if float_model else vgg_small
        return build(depth, in_channels, image_size=image_size, seed=seed, **kwargs)
    if name == "lenet5":
        build = float_lenet5 if float_model else lenet5
        return build(in_channels, image_size=image_size, seed=seed, **kwargs)
    if name.startswith("resnet-"):
        build = float_resnet if float_model else resnet
        return build(int(name.split("-", 1)[1]), in_channels=in_channels, seed=seed, **kwargs)
    raise ValueError(f"unknown model {name!r}: vgg-small-7, vgg-small-8, vgg-small-9, lenet5, resnet-<6n+2>")


MODEL_NAMES: Sequence[str] = ("vgg-small-7", "vgg-small-8", "vgg-small-9", "lenet5", "resnet-20")
