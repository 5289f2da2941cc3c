"""One launch each of the sm90 GEMM with int32, bf16 (scaled) and int8 (requantizing) output on the
same 8192^3 operands, for Nsight Compute: the three differ only in the epilogue.

usage: ncu --clock-control none -k regex:device_kernel --section SpeedOfLight \\
           --metrics sm__inst_executed_pipe_xu.sum,smsp__inst_executed.sum python3 scripts/ncu_gemm_epilogue.py
"""
import torch

import torch_int8

SIZE = 8192


def main() -> None:
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    a = torch.randint(-128, 128, (SIZE, SIZE), dtype=torch.int8, device="cuda", generator=g)
    b = torch.randint(-128, 128, (SIZE, SIZE), dtype=torch.int8, device="cuda", generator=g).t()
    scale = torch.rand(SIZE, device="cuda", generator=g) + 0.5
    bias = torch.randn(SIZE, device="cuda", generator=g)
    qa = torch_int8.QTensor(a, scale, None, 0)
    qb = torch_int8.QTensor(b, scale, None, 1)
    torch_int8.gemm(a, b)
    torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.bfloat16)
    torch_int8.scaled_gemm(qa, qb, bias=bias, out_dtype=torch.int8, out_scale=64.0)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
