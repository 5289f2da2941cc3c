"""Calls each quantize kernel of the Linear and Conv2d layers a few times, for Nsight Compute.

usage: ncu --clock-control none --section SpeedOfLight ... -k regex:quantize python3 scripts/ncu_quantize.py

Shapes: the Linear benchmark's activation (8192 x 4096 bf16) and a conv layer's gradient seen as a
matrix (r18.layer1 at batch 128: 401408 pixels x 64 channels), each read by the row pass (with and
without column statistics) and by the transposed column pass. The first call of each warms up;
name the launches to keep with ncu's --launch-skip / --launch-count.
"""
import torch

import torch_int8

SHAPES = [(8192, 4096), (128 * 56 * 56, 64)]


def main() -> None:
    torch.manual_seed(0)
    for rows, cols in SHAPES:
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        _, amax = torch_int8.quantize_rows(x, col_amax=True)
        for _ in range(2):
            torch_int8.quantize_rows(x)
            torch_int8.quantize_rows(x, col_amax=True)
            torch_int8.quantize_columns_t(x, amax)
            x.clone()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
