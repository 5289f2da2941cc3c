"""torch_int8.gemm: exact int8 x int8 -> int32 GEMM (bit-identical to an int64 reference)."""

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest
import torch

import torch_int8
from conftest import CUDA_ONLY, DEVICE_PARAMS, MAX_K, int64_ref_as_int32, rand_int8


def check_gemm(a: torch.Tensor, b: torch.Tensor, device: str, fn=None) -> torch.Tensor:
    out = (fn or torch_int8.gemm)(a, b)
    ref = int64_ref_as_int32(a, b)
    assert out.dtype == torch.int32
    assert out.device.type == torch.device(device).type
    assert tuple(out.shape) == tuple(ref.shape)
    out_cpu = out.cpu()
    if not torch.equal(out_cpu, ref):
        diff = (out_cpu.long() - ref.long()).abs()
        bad = (diff != 0).nonzero()
        pytest.fail(
            f"gemm mismatch for a{tuple(a.shape)} stride {a.stride()} @ b{tuple(b.shape)} stride {b.stride()}: "
            f"{bad.shape[0]} of {ref.numel()} entries differ, max |diff| {int(diff.max())}, first at {bad[0].tolist()}"
        )
    return out


# ------------------------------------------------------------------------------------------------
# exactness over shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M", list(range(1, 18)))
@pytest.mark.parametrize("K,N", [(1, 1), (3, 5), (7, 9), (33, 17), (65, 129)])
def test_small_m_odd_k_n(device, M, K, N):
    a = rand_int8((M, K), seed=1000 * M + K).to(device)
    b = rand_int8((K, N), seed=7 * N + K + 1).to(device)
    check_gemm(a, b, device)


def _ragged_shapes(count=30, seed=2024, lo=1, hi=300):
    rng = random.Random(seed)
    return [(rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(count)]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,N,K", _ragged_shapes())
def test_ragged_shapes(device, M, N, K):
    a = rand_int8((M, K), seed=M * 131 + K).to(device)
    b = rand_int8((K, N), seed=N * 137 + K).to(device)
    check_gemm(a, b, device)


# tile-boundary shapes: multiples of typical tile/vector sizes and one off either side
@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize(
    "M,N,K",
    [
        (16, 32, 16),
        (64, 128, 64),
        (128, 256, 128),
        (127, 129, 255),
        (129, 127, 257),
        (1, 4096, 64),
        (300, 8, 1024),
        (2, 3, 4099),
    ],
)
def test_tile_boundary_shapes(device, M, N, K):
    a = rand_int8((M, K), seed=M + N + K).to(device)
    b = rand_int8((K, N), seed=M * N + K).to(device)
    check_gemm(a, b, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_larger_shape(device):
    M, N, K = 512, 384, 1000
    a = rand_int8((M, K), seed=11).to(device)
    b = rand_int8((K, N), seed=12).to(device)
    check_gemm(a, b, device)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("M,N,K", [(1024, 1024, 4096), (4096, 256, 2048), (8, 4096, 4096)])
def test_large_shapes_cuda(device, M, N, K):
    a = rand_int8((M, K), seed=M + 1).to(device)
    w = rand_int8((N, K), seed=N + 2).to(device)
    check_gemm(a, w.t(), device)  # column-major b (the nn.Linear weight layout)
    check_gemm(a, w.t().contiguous(), device)  # row-major b


# ------------------------------------------------------------------------------------------------
# layouts / strides
# ------------------------------------------------------------------------------------------------


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values as the 2-D tensor t, in a given memory layout."""
    if layout == "row":
        return t.contiguous()
    if layout == "col":
        return t.t().contiguous().t()  # column-major view
    raise AssertionError(layout)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("a_layout", ["row", "col"])
@pytest.mark.parametrize("b_layout", ["row", "col"])
# (48, 144, 208) and (33, 80, 160): column-major operands that the GPU's transpose kernel lays out in
# several 64 x 64 tiles with ragged edges, by 4-byte words (48, 144, 208) and by bytes (33 rows)
@pytest.mark.parametrize("M,N,K", [(5, 7, 3), (37, 53, 91), (64, 96, 128), (48, 144, 208), (33, 80, 160)])
def test_transposed_inputs(device, a_layout, b_layout, M, N, K):
    a = _layout(rand_int8((M, K), seed=M * K), a_layout).to(device)
    b = _layout(rand_int8((K, N), seed=K * N + 3), b_layout).to(device)
    check_gemm(a, b, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (9, 11, 13), (70, 45, 200)])
def test_transposed_views(device, M, N, K):
    # a as a.t() of a [K, M] tensor; b = w.t() of a [N, K] weight (column-major [K, N])
    at = rand_int8((K, M), seed=M + 100).to(device)
    w = rand_int8((N, K), seed=N + 200).to(device)
    check_gemm(at.t(), w.t(), device)
    check_gemm(at.t(), w.t().contiguous(), device)
    check_gemm(at.t().contiguous(), w.t(), device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,N,K", [(1, 3, 5), (17, 19, 33), (64, 40, 100)])
def test_sliced_inputs(device, M, N, K):
    big_a = rand_int8((M, K + 7), seed=1).to(device)
    big_b = rand_int8((2 * K, N), seed=2).to(device)
    a = big_a[:, 3 : 3 + K]  # row stride K+7, storage offset 3
    b = big_b[::2]  # row stride 2N
    assert not a.is_contiguous() or M == 1
    assert not b.is_contiguous() or K == 1
    check_gemm(a, b, device)

    # column slices of b, row slices of a, both non-unit in the inner dimension
    big_b2 = rand_int8((K, 2 * N + 1), seed=3).to(device)
    big_a2 = rand_int8((3 * M, 2 * K), seed=4).to(device)
    check_gemm(big_a2[::3, ::2], big_b2[:, 1::2], device)
    # storage offset on a contiguous-looking tensor
    base = rand_int8((M * K + 11,), seed=5).to(device)
    check_gemm(base[11:].view(M, K), big_b[1::2], device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_expanded_zero_stride_inputs(device):
    M, N, K = 23, 31, 47
    a = rand_int8((M, 1), seed=6).to(device).expand(M, K)  # stride (1, 0)
    b = rand_int8((1, N), seed=7).to(device).expand(K, N)  # stride (0, 1)
    check_gemm(a, b, device)
    check_gemm(rand_int8((M, K), seed=8).to(device), b, device)


# ------------------------------------------------------------------------------------------------
# batched
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("B,M,N,K", [(1, 4, 5, 6), (3, 17, 9, 33), (4, 64, 48, 80), (7, 1, 13, 100)])
def test_batched_3d_3d(device, B, M, N, K):
    a = rand_int8((B, M, K), seed=B * M).to(device)
    b = rand_int8((B, K, N), seed=B * N + 1).to(device)
    out = check_gemm(a, b, device)
    assert out.shape == (B, M, N)
    # transposed / non-contiguous batches
    at = rand_int8((B, K, M), seed=9).to(device).transpose(1, 2)
    bt = rand_int8((B, N, K), seed=10).to(device).transpose(1, 2)
    check_gemm(at, bt, device)
    # batch taken from a permuted [M, B, K] tensor
    ap = rand_int8((M, B, K), seed=11).to(device).permute(1, 0, 2)
    check_gemm(ap, b, device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("B,M,N,K", [(1, 4, 5, 6), (3, 17, 9, 33), (5, 32, 64, 128)])
def test_batched_3d_2d(device, B, M, N, K):
    a = rand_int8((B, M, K), seed=B + M).to(device)
    b = rand_int8((K, N), seed=N + K).to(device)
    out = check_gemm(a, b, device)
    assert out.shape == (B, M, N)
    w = rand_int8((N, K), seed=12).to(device)
    check_gemm(a, w.t(), device)


# ------------------------------------------------------------------------------------------------
# extreme values (accumulator range, int16-saturation traps of u8*s8 tricks)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("av,bv", [(-128, -128), (-128, 127), (127, -128), (127, 127)])
def test_extreme_max_k(device, av, bv):
    M, N, K = 2, 3, MAX_K
    a = torch.full((M, K), av, dtype=torch.int8, device=device)
    b = torch.full((K, N), bv, dtype=torch.int8, device=device)
    out = torch_int8.gemm(a, b)
    assert out.dtype == torch.int32 and out.shape == (M, N)
    expected = K * av * bv  # -128*-128*131071 = 2147467264 <= INT32_MAX
    assert torch.equal(out.cpu(), torch.full((M, N), expected, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_extreme_max_k_column_major(device):
    M, N, K = 3, 2, MAX_K
    a = torch.full((M, K), -128, dtype=torch.int8, device=device)
    w = torch.full((N, K), -128, dtype=torch.int8, device=device)
    w[1, ::2] = 127
    check_gemm(a, w.t(), device)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("M,N,K", [(33, 47, 1000), (128, 128, 512), (1, 8, 8192)])
def test_extreme_values_larger(device, M, N, K):
    for av, bv in [(-128, -128), (-128, 127)]:
        a = torch.full((M, K), av, dtype=torch.int8, device=device)
        b = torch.full((K, N), bv, dtype=torch.int8, device=device)
        out = torch_int8.gemm(a, b)
        assert torch.equal(out.cpu(), torch.full((M, N), K * av * bv, dtype=torch.int32))
    # random mix of the two extremes
    g = torch.Generator().manual_seed(M + N + K)
    a = torch.where(torch.rand((M, K), generator=g) < 0.5, -128, 127).to(torch.int8).to(device)
    b = torch.where(torch.rand((K, N), generator=g) < 0.5, -128, 127).to(torch.int8).to(device)
    check_gemm(a, b, device)


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("bad_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.uint8])
def test_error_dtype(device, bad_dtype):
    a = rand_int8((4, 8), seed=1).to(device)
    b = rand_int8((8, 5), seed=2).to(device)
    # the dtypes as Python writes them, not ATen's names ("Char", "Float")
    with pytest.raises(TypeError, match=rf"gemm: a must be torch.int8, got {bad_dtype}$"):
        torch_int8.gemm(a.to(bad_dtype), b)
    with pytest.raises(TypeError, match=rf"gemm: b must be torch.int8, got {bad_dtype}$"):
        torch_int8.gemm(a, b.to(bad_dtype))
    with pytest.raises(TypeError):
        torch_int8.gemm(a.to(bad_dtype), b.to(bad_dtype))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_rank(device):
    x1 = rand_int8((8,), seed=1).to(device)
    x2a = rand_int8((4, 8), seed=2).to(device)
    x2b = rand_int8((8, 5), seed=3).to(device)
    x4a = rand_int8((2, 2, 4, 8), seed=4).to(device)
    x4b = rand_int8((2, 2, 8, 5), seed=5).to(device)
    x0 = torch.tensor(3, dtype=torch.int8, device=device)
    for a, b in [(x1, x2b), (x2a, x1), (x1, x1), (x4a, x4b), (x4a, x2b), (x2a, x4b), (x0, x0)]:
        with pytest.raises(ValueError):
            torch_int8.gemm(a, b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_k_mismatch(device):
    a = rand_int8((4, 8), seed=1).to(device)
    with pytest.raises(ValueError):
        torch_int8.gemm(a, rand_int8((7, 5), seed=2).to(device))
    with pytest.raises(ValueError):
        torch_int8.gemm(a, rand_int8((9, 5), seed=2).to(device))
    with pytest.raises(ValueError):  # [M,K] @ [N,K] (forgot the transpose)
        torch_int8.gemm(a, rand_int8((5, 8), seed=2).to(device))
    with pytest.raises(ValueError):
        torch_int8.gemm(rand_int8((2, 4, 8), seed=3).to(device), rand_int8((2, 6, 5), seed=4).to(device))
    with pytest.raises(ValueError):
        torch_int8.gemm(rand_int8((2, 4, 8), seed=3).to(device), rand_int8((6, 5), seed=4).to(device))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_batch_mismatch(device):
    a = rand_int8((2, 4, 8), seed=1).to(device)
    b = rand_int8((3, 8, 5), seed=2).to(device)
    with pytest.raises(ValueError):
        torch_int8.gemm(a, b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize(
    "a_shape,b_shape",
    [((0, 8), (8, 5)), ((4, 0), (0, 5)), ((4, 8), (8, 0)), ((0, 4, 8), (0, 8, 5)), ((2, 0, 8), (2, 8, 5))],
)
def test_error_empty(device, a_shape, b_shape):
    a = torch.empty(a_shape, dtype=torch.int8, device=device)
    b = torch.empty(b_shape, dtype=torch.int8, device=device)
    with pytest.raises(ValueError):
        torch_int8.gemm(a, b)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_error_k_too_large(device):
    K = MAX_K + 1  # 131072 * 128 * 128 == 2**31 could overflow the int32 accumulator
    a = torch.ones((1, K), dtype=torch.int8, device=device)
    b = torch.ones((K, 1), dtype=torch.int8, device=device)
    with pytest.raises(ValueError):
        torch_int8.gemm(a, b)
    with pytest.raises(ValueError):
        torch_int8.gemm(a.unsqueeze(0), b)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_error_device_mismatch(device):
    a = rand_int8((4, 8), seed=1)
    b = rand_int8((8, 5), seed=2)
    with pytest.raises(ValueError):
        torch_int8.gemm(a, b.to(device))
    with pytest.raises(ValueError):
        torch_int8.gemm(a.to(device), b)


# ------------------------------------------------------------------------------------------------
# meta tensors and torch.compile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape,b_shape,out_shape",
    [((5, 7), (7, 3), (5, 3)), ((2, 5, 7), (2, 7, 3), (2, 5, 3)), ((4, 1, 9), (9, 6), (4, 1, 6))],
)
def test_meta(a_shape, b_shape, out_shape):
    a = torch.empty(a_shape, dtype=torch.int8, device="meta")
    b = torch.empty(b_shape, dtype=torch.int8, device="meta")
    out = torch.ops.int8.gemm(a, b)
    assert out.device.type == "meta"
    assert out.dtype == torch.int32
    assert tuple(out.shape) == out_shape
    out2 = torch_int8.gemm(a, b)
    assert out2.device.type == "meta" and out2.dtype == torch.int32 and tuple(out2.shape) == out_shape
    # a transposed meta view works too
    bt = torch.empty(tuple(reversed(b_shape[-2:])), dtype=torch.int8, device="meta").t()
    out3 = torch.ops.int8.gemm(a, bt)
    assert out3.dtype == torch.int32 and tuple(out3.shape) == out_shape


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_op_matches_python_api(device):
    a = rand_int8((6, 10), seed=1).to(device)
    b = rand_int8((10, 4), seed=2).to(device)
    check_gemm(a, b, device, fn=torch.ops.int8.gemm)
    check_gemm(a.unsqueeze(0).expand(3, 6, 10), b, device, fn=torch.ops.int8.gemm)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    # with inductor only the custom op itself (a fused pointwise op would cost a cold C++ build)
    offset = 3 if backend == "aot_eager" else 0

    def f(a, b):
        out = torch_int8.gemm(a, b)
        return out - offset if offset else out

    cf = torch.compile(f, fullgraph=True, backend=backend)
    a = rand_int8((9, 24), seed=1).to(device)
    b = rand_int8((24, 10), seed=2).to(device)
    out = cf(a, b)
    ref = int64_ref_as_int32(a, b) - offset
    assert out.dtype == torch.int32 and out.shape == (9, 10)
    assert torch.equal(out.cpu(), ref)
    # a second shape (recompile or dynamic shapes) is still exact
    a2 = rand_int8((3, 24), seed=3).to(device)
    assert torch.equal(cf(a2, b).cpu(), int64_ref_as_int32(a2, b) - offset)
    torch._dynamo.reset()
