"""ResNet-18 for 32x32 images (CIFAR-10): a 3x3 stem without max-pool, so the four stages of
BasicBlocks ([2, 2, 2, 2]) run at 32, 16, 8 and 4 pixels; 10 classes. Written here so that
`bench models` needs no torchvision for it."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """A convolution without bias (BatchNorm follows) and its BatchNorm."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a strided 1x1 convolution where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1)
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, 64, 3, 1), nn.ReLU())
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))
