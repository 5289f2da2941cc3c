"""Host (CPU) time per call of the INT8 ops and layers on a GPU, against their bf16 counterparts.

usage: python3 scripts/host_overhead.py

Tiny shapes, so that the GPU work is negligible and the wall time per call, averaged over many
back-to-back calls with one synchronize at the end, is what the host spends issuing the call
(Python, dispatch, allocations, launches). This is the time an eager step cannot go below.
"""
import time

import torch

import torch_int8

CALLS = 2000


def host_us(fn, calls: int = CALLS) -> float:
    """Wall us per call of `calls` back-to-back calls of fn (after a warm-up), one synchronize at the end."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def main() -> None:
    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    x = torch.randn(16, 256, device=dev, dtype=bf16)
    w = torch.randn(256, 256, device=dev, dtype=bf16)
    qx, amax = torch_int8.quantize_rows(x, col_amax=True)
    qw = torch_int8.quantize_rows(w)[0]
    qwt = torch_int8.QTensor(qw.data.t(), qw.scale, qw.zero_point, 1)
    ref = torch.nn.Linear(256, 256, device=dev, dtype=bf16)
    ours = torch_int8.nn.Linear.from_float(ref)
    infer = torch_int8.nn.QuantizedLinear.from_float(ref)
    xg = x.clone().requires_grad_(True)
    gy = torch.randn(16, 256, device=dev, dtype=bf16)

    def step(layer):
        def run():
            layer(xg).backward(gy)
            xg.grad = None
            for p in layer.parameters():
                p.grad = None
        return run

    rows = {
        "x.clone() (one ATen launch)": lambda: x.clone(),
        "torch.ops.int8.quantize_rows": lambda: torch.ops.int8.quantize_rows(x, False, "nearest", None, False),
        "torch_int8.quantize_rows": lambda: torch_int8.quantize_rows(x),
        "torch_int8.quantize_rows(col_amax)": lambda: torch_int8.quantize_rows(x, col_amax=True),
        "torch_int8.quantize_columns_t": lambda: torch_int8.quantize_columns_t(x, amax),
        "torch_int8.scaled_gemm (bf16 out)": lambda: torch_int8.scaled_gemm(qx, qwt, out_dtype=bf16),
        "torch.matmul bf16": lambda: torch.matmul(x, w.t()),
    }
    with torch.no_grad():
        rows.update({
            "nn.Linear bf16 forward (no_grad)": lambda: ref(x),
            "torch_int8.nn.Linear forward (no_grad)": lambda: ours(x),
            "QuantizedLinear forward": lambda: infer(x),
        })
        results = {name: host_us(fn) for name, fn in rows.items()}
    results["nn.Linear bf16 training step"] = host_us(step(ref))
    results["torch_int8.nn.Linear training step"] = host_us(step(ours))
    print(f"{'call':<44} {'host us':>8}")
    for name, us in results.items():
        print(f"{name:<44} {us:>8.1f}")


if __name__ == "__main__":
    main()
