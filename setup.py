"""Builds torch_int8 through CMake: `pip install --no-build-isolation .`

Environment:
  TORCH_CUDA_ARCH_LIST  architectures to build (default: the visible GPU; with none visible,
                        the CPU-only build unless TORCH_INT8_WITH_CUDA=1, which builds
                        7.5;8.0;8.6;8.9;9.0a)
  TORCH_INT8_WITH_CUDA  0 to build without CUDA even with a CUDA build of torch and a GPU,
                        1 to build the GPU kernels without a visible GPU
  MAX_JOBS              parallel compile jobs (default: all cores)
  CUTLASS_DIR           a CUTLASS checkout instead of the nvidia-cutlass wheel
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def default_arch_list():
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "")
    return "7.5;8.0;8.6;8.9;9.0a"


def with_cuda():
    """Whether to build the CUDA kernels: with a CUDA torch and nvcc, for the visible GPU, or on
    request (TORCH_INT8_WITH_CUDA=1, TORCH_CUDA_ARCH_LIST) without one; never with
    TORCH_INT8_WITH_CUDA=0. A machine without a GPU gets the CPU-only build unless it asks: the
    five architectures take ~13.5 minutes on 2 cores, the CPU build a few."""
    import torch

    setting = os.environ.get("TORCH_INT8_WITH_CUDA")
    nvcc = shutil.which("nvcc") or Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc").exists()
    if setting == "0" or torch.version.cuda is None or not nvcc:
        return False
    if setting is None and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        print("torch_int8: no GPU visible and no TORCH_CUDA_ARCH_LIST: building for the CPU only "
              "(TORCH_INT8_WITH_CUDA=1 or TORCH_CUDA_ARCH_LIST=... builds the GPU kernels)", file=sys.stderr)
        return False
    return True


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch

        pkg_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = with_cuda()
        args = [
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_INSTALL_PREFIX={pkg_dir}",
            "-DCMAKE_INSTALL_LIBDIR=lib",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DTORCH_INT8_WITH_CUDA={'ON' if cuda else 'OFF'}",
        ]
        if cuda:
            cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
            nvcc = shutil.which("nvcc") or str(Path(cuda_home, "bin", "nvcc"))
            arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or default_arch_list()
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DTORCH_CUDA_ARCH_LIST={arch_list}"]
        if shutil.which("ninja"):
            args += ["-G", "Ninja"]
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args])
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel", jobs])
        subprocess.check_call(["cmake", "--install", str(build_dir)])
        if getattr(self, "editable_mode", False) or self.inplace:
            # An editable install imports the package from the source tree, and
            # setuptools copies only _C there: install the libraries and the
            # CMake package config beside it as well.
            subprocess.check_call(["cmake", "--install", str(build_dir), "--prefix", str(ROOT / "python" / "torch_int8")])


setup(
    name="torch_int8",
    version="0.1.0",
    description="INT8 GEMM, convolution and linear layers for PyTorch on NVIDIA GPUs (CUTLASS)",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[Extension("torch_int8._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch"],
    zip_safe=False,
)
