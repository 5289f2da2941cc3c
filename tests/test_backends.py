"""Kernel family selection, and every GPU kernel family built into this library forced on the GPU at hand.

``torch_int8.use_backend`` (or TORCH_INT8_GEMM_BACKEND) picks a family regardless of the compute
capability, so an H200 build with TORCH_CUDA_ARCH_LIST="7.5+PTX;8.0+PTX;9.0a" runs the Turing and
Ampere kernels (JIT-compiled from their PTX), the dp4a and the simt kernels beside the Hopper one.
Each family must give exact int32 results and the same int8 epilogue output as the CPU reference,
bit for bit. The selection tests need no GPU.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import HAS_CUDA, forced_family, int64_ref_as_int32, make_gen, rand_int8  # noqa: E402

import torch_int8  # noqa: E402
from torch_int8 import QTensor, _C, backends, use_backend  # noqa: E402
from torch_int8.__main__ import info  # noqa: E402

FAMILIES = backends.built_backends()
# Lowest compute capability each family's code runs on (dispatch.cu).
MIN_CC = {"sm90": 90, "sm80": 80, "sm75": 75, "dp4a": 61, "simt": 50}
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")]
needs_family = pytest.mark.skipif(not FAMILIES, reason="built without CUDA: no GPU kernel family to force")

# Includes shapes for each sm90 tile rule: many tiles (256x128) and the rest (128x128 ping-pong),
# plus few tiles with a long K. For the SIMT families (64x64 tiles unless 128x128 ones fill the GPU
# twice over, e.g. on an H200): ragged M and N edges of both tile sizes ((2000, 2050, 590) takes
# 128x128 tiles on an H200), M = 1, K past the 512 values an exact FP32 partial sum may hold, and a
# last pipeline stage of dp4a's that K only half fills (590 -> 592 = 18.5 x 32).
SHAPES = [(1, 16, 16), (1, 4096, 4096), (7, 33, 5), (17, 129, 100), (128, 256, 512), (257, 383, 1000),
          (1000, 64, 576), (64, 1000, 8200), (4096, 4096, 256), (2000, 2050, 590)]


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    """Every test starts (and must end) with no family forced."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert _C.gemm_backend_override() is None
    yield
    assert _C.gemm_backend_override() is None, "a test left a backend forced"


# ------------------------------------------------------------------------------------------------
# selection (no GPU needed)
# ------------------------------------------------------------------------------------------------


@needs_family
@pytest.mark.parametrize("name", FAMILIES)
def test_forced_family_serves_every_gpu_it_can_run_on(name):
    with use_backend(name):
        assert _C.gemm_backend_override() == name
        assert _C.gemm_backend(MIN_CC[name]) == name
        assert _C.gemm_backend(100) == name
        assert _C.gemm_backend(MIN_CC[name] - 1) is None
    assert _C.gemm_backend_override() is None


@needs_family
def test_use_backend_nests_and_restores():
    first, last = FAMILIES[0], FAMILIES[-1]
    with use_backend(last):
        with use_backend(first):
            assert _C.gemm_backend_override() == first
            with use_backend(None):
                assert _C.gemm_backend_override() is None
            assert _C.gemm_backend_override() == first
        assert _C.gemm_backend_override() == last


@needs_family
def test_use_backend_restores_after_an_exception():
    with pytest.raises(RuntimeError, match="inside"):
        with use_backend(FAMILIES[-1]):
            raise RuntimeError("inside")
    assert _C.gemm_backend_override() is None


@needs_family
def test_use_backend_as_a_call_stays_until_changed():
    try:
        torch_int8.use_backend(FAMILIES[-1])
        assert _C.gemm_backend_override() == FAMILIES[-1]
        assert backends.forced_backend() == (FAMILIES[-1], "torch_int8.use_backend")
    finally:
        torch_int8.use_backend(None)
    assert backends.forced_backend() is None


def test_unknown_backend_raises_and_changes_nothing():
    with pytest.raises(ValueError, match=r"unknown GEMM backend 'sm99'.*(families|without CUDA)"):
        use_backend("sm99")
    assert _C.gemm_backend_override() is None
    if FAMILIES:
        with use_backend(FAMILIES[0]):
            with pytest.raises(ValueError, match="unknown GEMM backend 'SIMT'"):
                use_backend("SIMT")  # names are case-sensitive
            assert _C.gemm_backend_override() == FAMILIES[0]
    with pytest.raises(TypeError, match="must be a str or None"):
        use_backend(75)


@needs_family
def test_env_var_forces_a_family_and_use_backend_wins(monkeypatch):
    monkeypatch.setenv(backends.ENV_VAR, FAMILIES[-1])
    assert _C.gemm_backend(100) == FAMILIES[-1]
    assert backends.forced_backend() == (FAMILIES[-1], f"TORCH_INT8_GEMM_BACKEND={FAMILIES[-1]}")
    with use_backend(FAMILIES[0]):
        assert _C.gemm_backend(100) == FAMILIES[0]
    assert _C.gemm_backend(100) == FAMILIES[-1]
    monkeypatch.setenv(backends.ENV_VAR, "nope")
    assert _C.gemm_backend(100) is None


def _info_line(capsys, key):
    info()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(key)]
    assert len(lines) == 1, lines
    return lines[0][len(key):].strip()


def test_info_reports_families_and_forcing(capsys, monkeypatch):
    assert _info_line(capsys, "GEMM kernel families") == (_C.build_info()["gemm_families"] or "-")
    assert _info_line(capsys, "GEMM backend forced").startswith("no (")
    if not FAMILIES:
        return
    with use_backend(FAMILIES[-1]):
        assert _info_line(capsys, "GEMM backend forced") == f"{FAMILIES[-1]} (by torch_int8.use_backend)"
    monkeypatch.setenv(backends.ENV_VAR, FAMILIES[0])
    assert _info_line(capsys, "GEMM backend forced") == f"{FAMILIES[0]} (by TORCH_INT8_GEMM_BACKEND={FAMILIES[0]})"


# ------------------------------------------------------------------------------------------------
# every built family forced on the GPU
# ------------------------------------------------------------------------------------------------


@pytest.fixture(params=FAMILIES)
def family(request):
    with forced_family(request.param) as name:
        yield name


def _qtensors(M, N, K, seed):
    g = make_gen(seed)
    a = QTensor(rand_int8((M, K), seed=seed), torch.rand(M, generator=g) + 0.5,
                torch.randint(-20, 20, (M,), generator=g, dtype=torch.int32), 0)
    b = QTensor(rand_int8((K, N), seed=seed + 1), torch.rand(N, generator=g) * 1e-3, None, 1)
    bias = torch.randn(N, generator=g)
    return a, b, bias


def _cuda(q):
    return QTensor(q.data.cuda(), q.scale.cuda(), None if q.zero_point is None else q.zero_point.cuda(), q.dim)


class TestForcedFamily:
    pytestmark = CUDA

    def test_families_are_built(self):
        assert FAMILIES, "a CUDA build must contain at least one GEMM kernel family"

    @pytest.mark.parametrize("M,N,K", SHAPES)
    def test_gemm_exact(self, family, M, N, K):
        a = rand_int8((M, K), seed=M * 7 + K)
        w = rand_int8((N, K), seed=N * 13 + K)
        out = torch_int8.gemm(a.cuda(), w.cuda().t())
        assert torch.equal(out.cpu(), int64_ref_as_int32(a, w.t()))

    @pytest.mark.parametrize("K", [512, 4096, 131071])
    def test_extreme_values_exact(self, family, K):
        # Largest magnitudes ((-128)(-128) = 2^14 at every k: 2^31 - 2^14 at K = 131071, the largest
        # int32 sum) and odd products ((-127)(-127)), whose sum an FP32 accumulator holding more
        # than about 1000 k values would round.
        a = torch.full((3, K), -128, dtype=torch.int8)
        a[1] = -127
        a[2, ::2] = 127
        w = torch.full((40, K), -128, dtype=torch.int8)
        w[1::2] = 127
        w[2::4, 1::2] = -127
        out = torch_int8.gemm(a.cuda(), w.cuda().t())
        assert torch.equal(out.cpu(), int64_ref_as_int32(a, w.t()))

    # The few-row kernels (sm75 / dp4a: M <= 4 with dp4a; sm80 / sm90: M = 1 with dp4a, 2 <= M <= 32
    # on tensor cores): each row-count class and its edges; N odd (no multiple of a block's 16
    # columns); K long (not a multiple of the 2048 a block's warps step by, nor of 128: some lanes of
    # the last step load nothing) or short (one warp of the block has k, the others none).
    @pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 8, 9, 16, 17, 31, 32, 33])
    @pytest.mark.parametrize("long_k", [True, False], ids=["long_k", "short_k"])
    def test_few_rows_exact(self, family, M, long_k):
        N, K = 999 + 2 * M, 2064 + 16 * M if long_k else 80
        a = rand_int8((M, K), seed=M)
        w = rand_int8((N, K), seed=M + 100)
        assert torch.equal(torch_int8.gemm(a.cuda(), w.cuda().t()).cpu(), int64_ref_as_int32(a, w.t()))

    @pytest.mark.parametrize("M", [3, 5, 12, 20])
    def test_few_rows_batched(self, family, M):
        a, b = rand_int8((3, M, 96), seed=1), rand_int8((3, 96, 70), seed=2)
        assert torch.equal(torch_int8.gemm(a.cuda(), b.cuda()).cpu(), int64_ref_as_int32(a, b))

    def test_gemm_batched_and_sliced(self, family):
        a = rand_int8((3, 40, 70), seed=1)
        b = rand_int8((3, 70, 90), seed=2)
        assert torch.equal(torch_int8.gemm(a.cuda(), b.cuda()).cpu(), int64_ref_as_int32(a, b))
        big = rand_int8((50, 200), seed=3)
        a_s, b_s = big[5:45, 17:113], rand_int8((96, 31), seed=4)
        assert torch.equal(torch_int8.gemm(a_s.cuda(), b_s.cuda()).cpu(), int64_ref_as_int32(a_s, b_s))

    @pytest.mark.parametrize("M,N,K", [(1, 64, 128), (37, 53, 91), (256, 384, 640), (16, 250, 4100),
                                       (5, 100, 4112), (29, 100, 4112)])
    @pytest.mark.parametrize("out_zero_point", [0, -7])
    @pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
    def test_int8_epilogue_matches_cpu_bit_for_bit(self, family, M, N, K, out_zero_point, relu):
        a, b, bias = _qtensors(M, N, K, seed=M + N)
        kw = dict(out_dtype=torch.int8, out_scale=0.05, out_zero_point=out_zero_point, relu=relu)
        cpu = torch_int8.scaled_gemm(a, b, bias=bias, **kw)
        gpu = torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), **kw)
        assert torch.equal(gpu.cpu(), cpu)
        assert int(cpu.min()) == -128 or int(cpu.max()) == 127 or cpu.unique().numel() > 20  # not degenerate

    @pytest.mark.parametrize("M", [77, 12])
    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
    @pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
    def test_float_epilogue_matches_cpu(self, family, M, out_dtype, relu):
        a, b, bias = _qtensors(M, 130, 300, seed=5)
        cpu = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype, relu=relu).double()
        gpu = torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), out_dtype=out_dtype, relu=relu).cpu().double()
        assert (cpu.min() >= 0) == relu
        # Same fp32 arithmetic in the same order; allow one unit of the output's rounding.
        ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[out_dtype]
        assert torch.all((gpu - cpu).abs() <= ulp * cpu.abs() + 1e-30)

    @pytest.mark.parametrize("M,N,K", [(2, 40, 64), (12, 70, 160), (20, 70, 160), (77, 130, 300), (300, 520, 640)])
    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
    def test_row_amax_is_the_max_of_the_output(self, family, M, N, K, out_dtype):
        a, b, bias = _qtensors(M, N, K, seed=M + K)
        out, amax = torch_int8.scaled_gemm_row_amax(_cuda(a), _cuda(b), bias=bias.cuda(), out_dtype=out_dtype)
        assert torch.equal(amax, out.float().abs().amax(-1)) and bool((amax > 0).all())

    def test_layers_run_unchanged(self, family):
        # nn.Linear and nn.Conv2d call the same ops whatever family runs the GEMMs (a
        # convolution the family has no implicit-GEMM kernel for goes through im2col), and
        # every family's int32 products are exact and its epilogue is the CPU's arithmetic:
        # outputs and all gradients equal those of the default family.
        gen = make_gen(3)
        lin, conv = torch.nn.Linear(96, 40).cuda(), torch.nn.Conv2d(32, 24, 3, padding=1).cuda()
        cases = [(torch_int8.nn.Linear.from_float(lin), torch.randn(37, 96, generator=gen).cuda()),
                 (torch_int8.nn.Conv2d.from_float(conv), torch.randn(2, 32, 9, 11, generator=gen).cuda())]
        grads = [torch.randn(37, 40, generator=gen).cuda(), torch.randn(2, 24, 9, 11, generator=gen).cuda()]

        def run():
            results = []
            for (layer, x), gy in zip(cases, grads):
                layer.zero_grad(set_to_none=True)
                x = x.clone().requires_grad_()
                y = layer(x)
                y.backward(gy)
                results += [y.detach(), x.grad, layer.weight.grad, layer.bias.grad]
            return results

        forced = run()
        with use_backend(None):
            default = run()
        for f, d in zip(forced, default):
            torch.testing.assert_close(f, d, rtol=2.0**-20, atol=1e-6)

    def test_env_var_forces_the_family_that_runs(self, monkeypatch):
        major, minor = torch.cuda.get_device_capability()
        runnable = [f for f in FAMILIES if MIN_CC[f] <= major * 10 + minor]
        a, w = rand_int8((33, 200), seed=8), rand_int8((48, 200), seed=9)
        for name in runnable:
            monkeypatch.setenv(backends.ENV_VAR, name)
            assert backends.selected_backend() == name
            assert torch.equal(torch_int8.gemm(a.cuda(), w.cuda().t()).cpu(), int64_ref_as_int32(a, w.t()))
        monkeypatch.setenv(backends.ENV_VAR, "nope")
        with pytest.raises(RuntimeError, match="no kernel in this build runs on this GPU"):
            torch_int8.gemm(a.cuda(), w.cuda().t())


# ------------------------------------------------------------------------------------------------
# every tile configuration of the sm90 family (TORCH_INT8_SM90_TILE forces one; unset: the rule)
# ------------------------------------------------------------------------------------------------

SM90_TILES = ["256x128", "128x128", "64x32"]


def _runs_sm90():
    return HAS_CUDA and "sm90" in FAMILIES and backends.selected_backend() == "sm90"


@pytest.mark.cuda
@pytest.mark.skipif(not _runs_sm90(), reason="needs the sm90 family on a Hopper GPU")
class TestSm90Tiles:
    @pytest.fixture(params=SM90_TILES)
    def tile(self, request, monkeypatch):
        monkeypatch.setenv("TORCH_INT8_SM90_TILE", request.param)
        return request.param

    @pytest.mark.parametrize("M,N,K", SHAPES)
    def test_gemm_exact(self, tile, M, N, K):
        a = rand_int8((M, K), seed=M * 7 + K)
        w = rand_int8((N, K), seed=N * 13 + K)
        assert torch.equal(torch_int8.gemm(a.cuda(), w.cuda().t()).cpu(), int64_ref_as_int32(a, w.t()))

    @pytest.mark.parametrize("M,N,K", [(1, 64, 128), (37, 53, 91), (300, 520, 640)])
    @pytest.mark.parametrize("relu", [False, True], ids=["", "relu"])
    def test_int8_epilogue_matches_cpu_bit_for_bit(self, tile, M, N, K, relu):
        a, b, bias = _qtensors(M, N, K, seed=M + N)
        kw = dict(out_dtype=torch.int8, out_scale=0.05, out_zero_point=-3, relu=relu)
        cpu = torch_int8.scaled_gemm(a, b, bias=bias, **kw)
        assert torch.equal(torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), **kw).cpu(), cpu)

    @pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16], ids=str)
    def test_float_epilogue_matches_cpu(self, tile, out_dtype):
        a, b, bias = _qtensors(77, 130, 300, seed=5)
        cpu = torch_int8.scaled_gemm(a, b, bias=bias, out_dtype=out_dtype).double()
        gpu = torch_int8.scaled_gemm(_cuda(a), _cuda(b), bias=bias.cuda(), out_dtype=out_dtype).cpu().double()
        ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7}[out_dtype]
        assert torch.all((gpu - cpu).abs() <= ulp * cpu.abs() + 1e-30)

    @pytest.mark.parametrize("M,N,K", [(1, 64, 128), (37, 53, 91), (300, 520, 640)])
    def test_row_amax_is_the_max_of_the_output(self, tile, M, N, K):
        a, b, bias = _qtensors(M, N, K, seed=M + K)
        out, amax = torch_int8.scaled_gemm_row_amax(_cuda(a), _cuda(b), bias=bias.cuda(), out_dtype=torch.bfloat16)
        assert torch.equal(amax, out.float().abs().amax(-1)) and bool((amax > 0).all())

    def test_unknown_tile_is_refused(self, monkeypatch):
        monkeypatch.setenv("TORCH_INT8_SM90_TILE", "96x96")
        a, w = rand_int8((33, 200), seed=8), rand_int8((48, 200), seed=9)
        with pytest.raises(RuntimeError, match="invalid argument"):
            torch_int8.gemm(a.cuda(), w.cuda().t())
