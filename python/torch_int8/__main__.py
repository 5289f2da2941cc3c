"""python -m torch_int8 info: versions, the GPU, the built architectures and the backend of each op."""
import argparse
import os

import torch

import torch_int8
from torch_int8 import _C


def info() -> None:
    build = _C.build_info()
    rows = [
        ("torch_int8", build["version"]),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        ("built with CUDA", build["cuda"]),
        ("TORCH_CUDA_ARCH_LIST", build["cuda_arch_list"] or "-"),
        ("GEMM kernel families", build["gemm_families"] or "-"),
        ("TORCH_INT8_GEMM_BACKEND", os.environ.get("TORCH_INT8_GEMM_BACKEND", "(unset: by compute capability)")),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            backend = _C.gemm_backend(major * 10 + minor) if build["cuda"] else None
            rows.append((f"GPU {i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})"))
            rows.append((f"GPU {i} gemm / scaled_gemm", f"CUTLASS {backend}" if backend else "none: rebuild for this GPU"))
            rows.append((f"GPU {i} requantize", "CUDA elementwise kernel" if build["cuda"] else "none"))
            rows.append((f"GPU {i} quantize / dequantize", "ATen ops (composite)"))
    else:
        rows.append(("GPU", "none visible"))
    rows.append(("CPU gemm / scaled_gemm / requantize", "reference kernels (exact int32)"))
    rows.append(("cmake_prefix_path", torch_int8.cmake_prefix_path))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m torch_int8")
    parser.add_argument("command", choices=["info"], help="info: print build and backend information")
    parser.parse_args()
    info()


if __name__ == "__main__":
    main()
