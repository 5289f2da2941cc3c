"""python -m torch_int8 info | selfcheck | demo: build and backend information, an exactness check, the main job."""
import argparse

import torch

import torch_int8
from torch_int8 import _C, backends, demo

# What each GEMM kernel family is, for `info`.
FAMILY_KINDS = {
    "sm90": "CUTLASS 3.x, wgmma (Hopper)",
    "sm80": "CUTLASS 2.x, mma.sync (Ampere/Ada)",
    "sm75": "CUTLASS 2.x, mma.sync (Turing)",
    "dp4a": "SIMT, __dp4a",
    "simt": "SIMT, exact FP32 FMA",
}
# The few-row (decode) kernel each family runs (families.h).
FEW_ROW_KERNELS = {
    "sm90": "M = 1: dp4a; 2 <= M <= 32: mma.sync with swapped operands",
    "sm80": "M = 1: dp4a; 2 <= M <= 32: mma.sync with swapped operands",
    "sm75": "M <= 4: dp4a",
    "dp4a": "M <= 4: dp4a",
}


def info() -> None:
    build = _C.build_info()
    rows = [
        ("torch_int8", build["version"]),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        ("built with CUDA", build["cuda"]),
        ("TORCH_CUDA_ARCH_LIST", build["cuda_arch_list"] or "-"),
        ("GEMM kernel families", build["gemm_families"] or "-"),
        ("GEMM backend forced", _forced_description()),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            backend = backends.selected_backend(i)
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"))
            rows.append((f"GPU {i} gemm / scaled_gemm",
                         f"{backend} ({FAMILY_KINDS.get(backend, '?')})" if backend else "none: rebuild for this GPU"))
            if backend in FEW_ROW_KERNELS:
                rows.append((f"GPU {i} few-row gemm", FEW_ROW_KERNELS[backend]))
            rows.append((f"GPU {i} requantize", "CUDA elementwise kernel" if build["cuda"] else "none"))
            rows.append((f"GPU {i} quantize_rows / quantize_columns_t", "fused CUDA kernels (one read of x)"))
            rows.append((f"GPU {i} quantize (other layouts) / dequantize", "ATen ops (composite)"))
    else:
        rows.append(("GPU", "none visible"))
    rows.append(("CPU gemm / scaled_gemm", "torch._int_mm sums + the reference epilogue (>= 2^18 multiply-adds), "
                                           "else the reference kernel (exact int32)"))
    rows.append(("CPU requantize", "reference kernel"))
    rows.append(("cmake_prefix_path", torch_int8.cmake_prefix_path))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _forced_description() -> str:
    forced = backends.forced_backend()
    if forced is None:
        return "no (each GPU: the first family built for its compute capability)"
    name, how = forced
    return f"{name} (by {how})"


def selfcheck() -> bool:
    """gemm against an int64 reference on every device; GPU requantize against the CPU bit for bit."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and _C.build_info()["cuda"] else [])
    g = torch.Generator().manual_seed(0)
    ok = True
    for device in devices:
        for m, n, k in [(1, 1, 1), (17, 33, 65), (128, 256, 512), (300, 200, 1000)]:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=g)
            w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
            got = torch_int8.gemm(a.to(device), w.to(device).t()).cpu()
            exact = torch.equal(got.long(), a.long() @ w.long().t())
            ok &= exact
            print(f"gemm {device:4} {m}x{n}x{k}: {'exact' if exact else 'WRONG'}")
        if device == "cpu":
            continue  # the GPU requantize is checked against the CPU one
        acc = torch.randint(-(2**31), 2**31 - 1, (64, 64), dtype=torch.int32, generator=g)
        same = torch.equal(
            torch_int8.requantize(acc.to(device), 1e-4, 3, mode="fixed_point").cpu(),
            torch_int8.requantize(acc, 1e-4, 3, mode="fixed_point"),
        )
        ok &= same
        print(f"requantize {device:4} fixed point matches the CPU: {'yes' if same else 'NO'}")
    print("self-check passed" if ok else "self-check FAILED")
    return ok


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m torch_int8", description="torch_int8 command line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("info", help="build and backend information", description="Versions, the GPU, the "
                        "built architectures and the kernel family of each op.")
    commands.add_parser("selfcheck", help="exactness on every device", description="gemm against an int64 "
                        "reference on every device; the GPU requantize against the CPU's, bit for bit.")
    demo_parser = commands.add_parser("demo", help="the main job: bf16 vs INT8 training and INT8 inference "
                                      "on Fashion-MNIST", description=demo.__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_parser)
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "selfcheck":
        if not selfcheck():
            raise SystemExit(1)
    else:
        try:
            demo.main(args)
        except (ValueError, FileNotFoundError, ImportError) as e:
            demo_parser.error(str(e))


if __name__ == "__main__":
    main()
