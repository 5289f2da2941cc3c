"""Every GPU kernel family built into this library, forced on the GPU at hand.

TORCH_INT8_GEMM_BACKEND picks a family regardless of the compute capability, so an
H200 build with TORCH_CUDA_ARCH_LIST="7.5+PTX;8.0+PTX;9.0a" runs the Turing and
Ampere kernels (JIT-compiled from their PTX) beside the Hopper one. Each family
must give exact int32 results and the same int8 epilogue output as the CPU
reference, bit for bit.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import HAS_CUDA, int64_ref_as_int32, make_gen, rand_int8  # noqa: E402

import torch_int8  # noqa: E402
from torch_int8 import QTensor, _C  # noqa: E402

FAMILIES = [f.split(":")[0] for f in _C.build_info()["gemm_families"].split()]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")]
# Includes shapes for each sm90 tile rule: many tiles (256x128) and the rest
# (128x128 ping-pong), plus few tiles with a long K.
SHAPES = [(1, 16, 16), (1, 4096, 4096), (7, 33, 5), (17, 129, 100), (128, 256, 512), (257, 383, 1000),
          (1000, 64, 576), (64, 1000, 8200), (4096, 4096, 256)]


@pytest.fixture(params=FAMILIES)
def family(request, monkeypatch):
    major, minor = torch.cuda.get_device_capability()
    monkeypatch.setenv("TORCH_INT8_GEMM_BACKEND", request.param)
    if _C.gemm_backend(major * 10 + minor) != request.param:
        pytest.skip(f"{request.param} kernels cannot run on sm_{major}{minor}")
    return request.param


def test_families_are_built():
    assert FAMILIES, "a CUDA build must contain at least one GEMM kernel family"


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gemm_exact(family, M, N, K):
    a = rand_int8((M, K), seed=M * 7 + K)
    w = rand_int8((N, K), seed=N * 13 + K)
    out = torch_int8.gemm(a.cuda(), w.cuda().t())
    assert torch.equal(out.cpu(), int64_ref_as_int32(a, w.t()))


def test_gemm_batched_and_sliced(family):
    a = rand_int8((3, 40, 70), seed=1)
    b = rand_int8((3, 70, 90), seed=2)
    assert torch.equal(torch_int8.gemm(a.cuda(), b.cuda()).cpu(), int64_ref_as_int32(a, b))
    big = rand_int8((50, 200), seed=3)
    a_s, b_s = big[5:45, 17:113], rand_int8((96, 31), seed=4)
    assert torch.equal(torch_int8.gemm(a_s.cuda(), b_s.cuda()).cpu(), int64_ref_as_int32(a_s, b_s))


def _qtensors(M, N, K, seed):
    g = make_gen(seed)
    a = QTensor(rand_int8((M, K), seed=seed), torch.rand(M, generator=g) + 0.5,
                torch.randint(-20, 20, (M,), generator=g, dtype=torch.int32), 0)
    b = QTensor(rand_int8((K, N), seed=seed + 1), torch.rand(N, generator=g) * 1e-3, None, 1)
    bias = torch.randn(N, generator=g)
    return a, b, bias


def _cuda(q):
    return QTensor(q.data.cuda(), q.scale.cuda(), None if q.zero_point is None else q.zero_point.cuda(), q.dim)


@pytest.mark.parametrize("M,N,K", [(1, 64, 128), (37, 53, 91), (256, 384, 640), (16, 250, 4100)])
@pytest.mark.parametrize("out_zero_point", [0, -7])
def test_int8_epilogue_matches_cpu_bit_for_bit(family, M, N, K, out_zero_point):
    a, b, bias = _qtensors(M, N, K, seed=M + N)
    kw = dict(out_dtype=torch.int8, out_scale=0.05, out_zero_point=out_zero_point)
    cpu = torch_int8.scaled_gemm(a, b, bias=bias, **kw)
    gpu = torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), **kw)
    assert torch.equal(gpu.cpu(), cpu)
    assert int(cpu.min()) == -128 or int(cpu.max()) == 127 or cpu.unique().numel() > 20  # not a degenerate case


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_float_epilogue_matches_cpu(family, out_dtype):
    a, b, bias = _qtensors(77, 130, 300, seed=5)
    cpu = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype).double()
    gpu = torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), out_dtype=out_dtype).cpu().double()
    # Same fp32 arithmetic in the same order; allow one unit of the output's rounding.
    ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[out_dtype]
    assert torch.all((gpu - cpu).abs() <= ulp * cpu.abs() + 1e-30)
