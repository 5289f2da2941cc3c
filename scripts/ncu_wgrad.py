"""Calls the implicit-GEMM weight-gradient kernel (scaled_conv2d_wgrad) on two `bench conv` layers,
for Nsight Compute.

usage: ncu --clock-control none --section SpeedOfLight ... -k regex:wgrad_mma python3 scripts/ncu_wgrad.py

Layers at batch 128: r18.layer1.3x3 (64 -> 64 channels, 56x56: few tiles, many pixels) and
r18.layer4.3x3 (512 -> 512, 7x7: many tiles, 49-pixel images). Each runs twice (the first warms up).
"""
import torch

import torch_int8
from torch_int8 import QTensor

LAYERS = [(64, 56, 64), (512, 7, 512)]  # (C, H = W, K), 3x3, stride 1, padding 1


def main() -> None:
    torch.manual_seed(0)
    for c, hw, k in LAYERS:
        x = torch.randint(-127, 128, (128, hw, hw, c), dtype=torch.int8, device="cuda").permute(0, 3, 1, 2)
        gy = torch.randint(-127, 128, (128, hw, hw, k), dtype=torch.int8, device="cuda").permute(0, 3, 1, 2)
        s = torch.rand(128, device="cuda") + 0.5
        for _ in range(2):
            torch_int8.conv.scaled_conv2d_wgrad(QTensor(gy, s, None, 0), QTensor(x, s, None, 0), (3, 3), 1, 1)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
