"""torch_int8.bench without a GPU: the command line, the tables, the timing in turns and the CUDA-graph
bookkeeping of `bench linear` / `bench conv` (capture and CUDA events replaced by stand-ins, so what is
checked is the logic around them: grads None at capture, a failed capture or method recorded and
survived, the gradients dropped afterwards); `bench models` end to end on a tiny batch (on the CPU:
float32, eager). One GPU test times two methods in turns for real."""
import argparse
import json
import sys
from functools import partial

import pytest
import torch

import torch_int8
from torch_int8.bench import cli, conv, gemm, graphs, models, quantize, timer

from conftest import CUDA_ONLY


def test_conv_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["conv", "--help"])
    assert exc.value.code == 0
    assert "--batch" in capsys.readouterr().out


def _layer_and_input():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    return layer, x, torch.randn(2, 4, 5, 5)


def _fake_timeit(fn, reps=50, warmup=10, device="cuda"):
    fn()
    return {"ms": 1.0, "min_ms": 1.0, "batch": 1, "reps": reps}


def _fake_turns(monkeypatch):
    """CUDA events and synchronization replaced: timeit_interleaved calls each fn once, gives it 1 ms
    and records the names it was given in _fake_turns.timed."""
    _fake_turns.timed = []

    def turns(fns, reps, warmup, device="cuda"):
        _fake_turns.timed += list(fns)
        return {name: _fake_timeit(fn, reps, warmup) for name, fn in fns.items()}

    monkeypatch.setattr(timer, "timeit_interleaved", turns)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def test_graph_timings_captures_with_fresh_grads(monkeypatch):
    layer, x, gy = _layer_and_input()
    seen = []

    def fake_graphed(fn, warm=None):  # warm-up, then "capture": fn runs once, eagerly
        for _ in range(3):
            (warm or fn)()
        seen.append((torch.is_grad_enabled(), x.grad is None and layer.weight.grad is None))
        fn()
        seen.append(x.grad is not None)
        return lambda: None

    monkeypatch.setattr(graphs, "graphed", fake_graphed)
    _fake_turns(monkeypatch)
    args = type("Args", (), {"reps": 2, "warmup": 1})()
    out = graphs.graph_timings("t", {"bf16": layer}, x, gy, args)
    assert set(out) == {"bf16_fwd_graph", "bf16_fwd_bwd_graph"}
    assert all(d["ms"] == 1.0 and d["error"] is None for d in out.values())
    assert set(_fake_turns.timed) == {"bf16_fwd_graph", "bf16_fwd_bwd_graph"}  # timed together, in turns
    # forward captured under no_grad; the training step with grad enabled and every .grad None
    assert seen == [(False, True), False, (True, True), True]
    assert x.grad is None and layer.weight.grad is None and layer.bias.grad is None


def test_graph_timings_survives_failed_capture(monkeypatch, capsys):
    layer, x, gy = _layer_and_input()

    def failing_graphed(fn, warm=None):
        fn()
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "graphed", failing_graphed)
    args = type("Args", (), {"reps": 2, "warmup": 1})()
    out = graphs.graph_timings("t", {"int8": layer}, x, gy, args)
    for d in out.values():
        assert d["ms"] is None and "not permitted" in d["error"]
    assert "t int8_fwd_bwd_graph: RuntimeError" in capsys.readouterr().err
    assert x.grad is None and layer.weight.grad is None


def test_format_conv_table_missing_graph_times():
    methods = {f"{side}_{m}": {"ms": 0.5} for side in ("bf16", "int8") for m in ("fwd", "fwd_bwd", "fwd_graph")}
    methods["bf16_fwd_bwd_graph"] = {"ms": None, "error": "RuntimeError: x"}
    methods["int8_fwd_bwd_graph"] = {"ms": 0.25, "error": None}
    row = {"name": "r18.layer1.3x3", "N": 128, "methods": methods, "fwd_speedup": 1.0, "fwd_bwd_speedup": 1.0,
           "fwd_graph_speedup": 1.0, "fwd_bwd_graph_speedup": None, "int8_fwd_tops": 100.0,
           "fwd_max_rel_err": 0.01, "workspace_bytes": 0}
    lines = conv.format_conv_table([row]).splitlines()
    assert "bf16 g fwd" in lines[0] and "int8 g f+b" in lines[0]
    assert len(lines[0]) == len(lines[2])
    cells = [c.split() for c in lines[2].split("|")]
    assert cells[4] == ["-", "0.2500", "-"]


def test_quantize_help_and_shapes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["quantize", "--help"])
    assert exc.value.code == 0
    assert "--dtype" in capsys.readouterr().out
    assert quantize.parse_matrix("401408x64") == (401408, 64)
    for bad in ("4096", "0x5", "ax3", "2x3x4"):
        with pytest.raises(argparse.ArgumentTypeError):
            quantize.parse_matrix(bad)


def test_quantize_pass_bytes():
    x = torch.zeros(3, 5, dtype=torch.bfloat16)
    assert quantize.quantize_pass_bytes("quantize_rows", x) == 15 * 3  # bf16 read + int8 written
    assert quantize.quantize_pass_bytes("column_amax", x) == 15 * 2  # read only


def test_quantize_table_prints_missing_times_as_dashes():
    methods = {name: {"ms": 0.04, "error": None} for name in quantize.QUANTIZE_PASSES}
    methods["copy"] = {"ms": 0.03, "error": None}
    methods["quantize_columns_t"] = {"ms": None, "error": "RuntimeError: capture failed"}
    row = {"rows": 8192, "cols": 4096, "dtype": "bfloat16", "methods": methods, "copy_GBps": 4473.9}
    for name in quantize.QUANTIZE_PASSES:
        row[name + "_pct_of_copy_bw"] = None if methods[name]["ms"] is None else 56.2
    lines = quantize.format_quantize_table([row]).splitlines()
    assert "columns_t us" in lines[0] and "column_amax us" in lines[0]
    assert "8192" in lines[2] and "56.2" in lines[2] and " - " in lines[2]


def test_bench_quantize_shape_runs_every_pass(monkeypatch):
    # graphs and CUDA events replaced: each pass runs once, eagerly, on the CPU kernels
    monkeypatch.setattr(quantize, "graphed", lambda fn, warm=None: fn)
    monkeypatch.setattr(timer, "timeit", _fake_timeit)
    args = argparse.Namespace(reps=1, warmup=1)
    row = quantize.bench_quantize_shape(6, 16, torch.bfloat16, args, seed=0, device="cpu")
    assert set(row["methods"]) == {"copy", *quantize.QUANTIZE_PASSES}
    assert all(d["error"] is None for d in row["methods"].values())
    assert row["copy_GBps"] == 2 * 96 * 2 / 1e6 / 1.0
    assert row["quantize_rows_pct_of_copy_bw"] == 75.0 and row["column_amax_pct_of_copy_bw"] == 50.0


def test_time_in_turns_leaves_out_a_failing_method(monkeypatch, capsys):
    # the turns replaced by a stand-in that records which methods it was given
    given = {}

    def fake_turns(fns, reps, warmup, device="cuda"):
        given.update(fns)
        return {name: {"ms": 1.0, "min_ms": 1.0, "batch": 1, "reps": reps} for name in fns}

    def failing():
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(timer, "timeit_interleaved", fake_turns)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    args = argparse.Namespace(reps=3, warmup=1)
    out = timer.time_in_turns("t", {"a": lambda: None, "bad": failing, "b": lambda: None}, args)
    assert list(out) == ["a", "bad", "b"] and set(given) == {"a", "b"}
    assert out["a"] == {"ms": 1.0, "min_ms": 1.0, "batch": 1, "reps": 3, "error": None}
    assert out["bad"]["ms"] is None and "no kernel for this shape" in out["bad"]["error"]
    assert "t bad: RuntimeError" in capsys.readouterr().err


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_timeit_interleaved_times_each_method(device):
    x = torch.randn(1024, 1024, device=device)
    calls = {"copy": 0, "matmul": 0}

    def counted(name, fn):
        def run():
            calls[name] += 1
            fn()
        return run

    fns = {"copy": counted("copy", x.clone), "matmul": counted("matmul", lambda: x @ x)}
    out = timer.timeit_interleaved(fns, reps=5, warmup=2)
    assert list(out) == ["copy", "matmul"]
    for name, t in out.items():
        assert t["reps"] == 5 and t["batch"] >= 1 and 0 < t["min_ms"] <= t["ms"]
        assert calls[name] == 2 + 5 * t["batch"]
    # a 4 MB copy against 2 GFLOP of fp32 matmul: each time belongs to its own method
    assert out["copy"]["ms"] < out["matmul"]["ms"]


def test_time_in_turns_times_each_alone_after_a_later_failure(monkeypatch, capsys):
    # a method that fails past its first call (e.g. out of memory while timed): the turns raise, so
    # each method is timed alone and only the failing one is lost
    def turns(fns, reps, warmup, device="cuda"):
        raise RuntimeError("out of memory")

    def timeit(fn, reps=50, warmup=10, device="cuda"):
        fn()
        return {"ms": 2.0, "min_ms": 2.0, "batch": 1, "reps": reps}

    state = {"calls": 0}

    def fails_second_time():
        state["calls"] += 1
        if state["calls"] > 1:
            raise RuntimeError("out of memory")

    monkeypatch.setattr(timer, "timeit_interleaved", turns)
    monkeypatch.setattr(timer, "timeit", timeit)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    args = argparse.Namespace(reps=3, warmup=1)
    out = timer.time_in_turns("t", {"a": lambda: None, "late": fails_second_time}, args)
    assert out["a"] == {"ms": 2.0, "min_ms": 2.0, "batch": 1, "reps": 3, "error": None}
    assert out["late"]["ms"] is None and "out of memory" in out["late"]["error"]
    assert "t late: RuntimeError" in capsys.readouterr().err


def test_bench_gemm_shape_keeps_every_method(monkeypatch):
    # on the CPU kernels, timing replaced: every method in its place, None where it does not apply
    _fake_turns(monkeypatch)
    monkeypatch.setattr(gemm, "graphed", lambda fn, warm=None: fn)
    monkeypatch.setattr(gemm, "int_mm_supported", lambda m, n, k: False)
    args = argparse.Namespace(reps=1, warmup=1)
    res = gemm.bench_gemm_shape(8, 32, 64, args, seed=0, device="cpu")
    assert list(res["methods"]) == ["ours", "int_mm", "bf16", "scaled_gemm", "scaled_int8", "row_amax",
                                    "scaled_row_b"]
    assert res["methods"]["int_mm"] is None and res["exact"] is True
    assert all(d["ms"] == 1.0 and d["tops"] == pytest.approx(2 * 8 * 32 * 64 / 1e9)  # in 1 ms
               for name, d in res["methods"].items() if name != "int_mm")
    assert set(res["graph_methods"]) == {"ours", "bf16", "scaled_gemm"}
    assert res["ratio_scaled_bf16"] == 1.0 and res["int8_epilogue_overhead_pct"] == 0.0
    assert res["row_b_overhead_pct"] == 0.0


def test_models_list(capsys):
    assert cli.main(["models", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["resnet18", "resnet50", "cifar_resnet18", "vit_base", "llama_block",
                                                 "llama_block_small"]
    assert "2048x4096" in out[4]


def test_models_runs_the_llama_block(tmp_path):
    """The transformer path end to end on the CPU: no convolution chain to fuse, so int8 and
    int8_layers are the same converted model."""
    out = tmp_path / "models.json"
    argv = ["models", "--models", "llama_block_small", "--batches", "2", "--iters", "1", "--warmup", "1",
            "--no-compile", "--modes", "train", "--json", str(out)]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    row = report["results"][0]
    assert row["input_shape"] == [16, 64] and all(t["error"] is None for t in row["methods"].values())
    with_torchao = ["torchao_eager"] if report["meta"]["torchao"] else []
    assert list(row["methods"]) == ["fp32_eager", "int8_eager", "int8_layers_eager", *with_torchao]


def test_models_options():
    parser = cli.build_parser()
    args = parser.parse_args(["models", "--models", "resnet50,cifar_resnet18", "--batches", "64,128", "--no-compile"])
    assert args.models == ["resnet50", "cifar_resnet18"] and args.batches == [64, 128] and not args.compile
    assert args.modes == ["train", "infer"] and args.reps == 20 and not args.graphs
    assert parser.parse_args(["models", "--graphs"]).graphs
    # the CUDA-graph methods are a GPU's: the CPU setup leaves them out
    assert models.setup_for(parser.parse_args(["models", "--graphs"])).graphs == torch.cuda.is_available()
    for bad in (["--models", "vgg16"], ["--batches", "0"], ["--modes", "train,eval"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["models", *bad])


def test_models_torchvision_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision raises ImportError
    with pytest.raises(SystemExit, match="needs torchvision"):
        models.MODELS["resnet18"].build()


def test_cifar_resnet18_shape():
    net = models.MODELS["cifar_resnet18"].build()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 1 + 8 * 2 + 3  # stem, blocks, shortcuts


def test_models_runs_cifar_resnet18(tmp_path, capsys):
    # the whole path on a tiny batch: on the CPU float32 and eager; on a GPU bf16 autocast (eager here)
    out = tmp_path / "models.json"
    argv = ["models", "--models", "cifar_resnet18", "--batches", "2", "--iters", "1", "--warmup", "1",
            "--no-compile", "--json", str(out), "--plot", str(tmp_path / "models.png")]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["command"] == "models" and not report["meta"]["compile"]
    rows = report["results"]
    assert [(r["model"], r["batch"], r["mode"]) for r in rows] == [("cifar_resnet18", 2, "train"),
                                                                 ("cifar_resnet18", 2, "infer")]
    base = rows[0]["baseline"]
    for r in rows:  # inference also times the post-training-quantized model
        ptq = ["int8_ptq_eager"] if r["mode"] == "infer" else []
        assert list(r["methods"]) == [f"{base}_eager", "int8_eager", "int8_layers_eager", *ptq]
        for t in r["methods"].values():
            assert t["error"] is None and t["ms"] > 0 and t["images_per_s"] > 0 and t["first_call_s"] > 0
        assert r["methods"][f"{base}_eager"]["speedup_vs_eager"] == 1.0
    printed = capsys.readouterr().out
    assert "int8_eager" in printed and f"wrote {out}" in printed
    assert (tmp_path / "models.png").exists() == (f"wrote {tmp_path / 'models.png'}" in printed)  # needs matplotlib


def test_models_table_prints_missing_times_as_dashes():
    failed = {"ms": None, "error": "RuntimeError: x", "first_call_s": None, "images_per_s": None,
              "speedup_vs_eager": None, "speedup_vs_compiled": None}
    fine = {"ms": 10.0, "error": None, "first_call_s": 30.0, "images_per_s": 12800.0, "speedup_vs_eager": 1.0,
            "speedup_vs_compiled": 0.5, "peak_mem_bytes": 3 * 2**30}
    row = {"model": "resnet18", "batch": 128, "mode": "train", "baseline": "bf16",
           "methods": {"bf16_eager": fine, "int8_compiled": failed}}
    lines = models.format_models_table([row]).splitlines()
    assert len(lines[0]) == len(lines[2]) == len(lines[3])
    assert lines[2].split()[4:] == ["bf16_eager", "10.00", "12800", "1.00", "0.50", "|", "3.00", "30.0"]
    assert lines[3].split("|")[1].split()[1:] == ["-", "-", "-", "-"]


def test_kernel_kinds_of_profiled_names():
    from torch_int8.bench.profiling import kernel_kind
    cases = {
        "void torch_int8::kernels::(anonymous namespace)::wgrad_mma_kernel<true>(torch_int8::kernels::ScaledWgrad)":
            "int8 wgrad (mma.sync)",
        "void torch_int8::kernels::(anonymous namespace)::backward_apply_kernel<__nv_bfloat16>(...)":
            "int8 BatchNorm (fused)",
        "void torch_int8::kernels::(anonymous namespace)::quantize_long_rows_kernel<__nv_bfloat16>(...)":
            "int8 quantize",
        "void cutlass::device_kernel<cutlass::conv::kernel::ConvUniversal<...> >(...)": "int8 GEMM / conv (CUTLASS)",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "cuDNN convolution",
        "void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816dgrad_optimized_bf16_64x64_64x5_nhwc>(...)":
            "cuDNN convolution",
        "void at::native::batch_norm_backward_kernel<float, float, float, int>(...)": "BatchNorm (ATen / cuDNN)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, ...>(...)":
            "elementwise (ATen)",
        "Memset (Device)": "copies / memsets",
        "some_new_kernel": "other",
    }
    assert {name: kernel_kind(name) for name in cases} == cases


def test_kinds_table_sums_per_step_and_sorts():
    from types import SimpleNamespace

    from torch_int8.bench.profiling import kinds_table
    cuda = torch.autograd.DeviceType.CUDA
    events = [SimpleNamespace(key="wgrad_mma_kernel", device_type=cuda, device_time_total=3000.0),
              SimpleNamespace(key="quantize_rows_kernel", device_type=cuda, device_time_total=500.0),
              SimpleNamespace(key="requantize_kernel", device_type=cuda, device_time_total=500.0),
              SimpleNamespace(key="aten::mm", device_type=torch.autograd.DeviceType.CPU, device_time_total=9e9)]
    lines = kinds_table(SimpleNamespace(key_averages=lambda: events), reps=2).splitlines()
    assert lines[1].split()[-2:] == ["1.50", "75.0%"] and lines[1].startswith("int8 wgrad")
    assert lines[2].startswith("int8 quantize") and lines[2].split()[-2:] == ["0.50", "25.0%"]
    assert len(lines) == 3


def test_models_graphed_methods(monkeypatch):
    """--graphs adds a {side}_graphed method per eager runner, whose first call captures the step
    (here an identity capture: CUDA graphs need a GPU) with autocast's cache off, then replays it."""
    captured = []
    monkeypatch.setattr(models, "graphed", lambda fn: captured.append(fn) or fn)
    spec = models.MODELS["cifar_resnet18"]
    autocast = partial(torch.autocast, "cpu", dtype=torch.bfloat16)
    setup = models.Setup(torch.device("cpu"), "fp32", "bf16 autocast", autocast, compile=False, graphs=True)
    nets = {"fp32": spec.build(), "int8": torch_int8.convert(spec.build())}
    runners = models.runners_of(nets, compile=False)
    inputs = partial(models.random_batch, spec, 2, setup.device)
    steps = models.steps_for("train", runners, models.optimizers_of(nets), inputs, setup)
    assert list(steps) == ["fp32_eager", "int8_eager", "fp32_graphed", "int8_graphed"]
    for _ in range(2):
        steps["int8_graphed"]()
    assert len(captured) == 1 and steps["int8_graphed"].seconds > 0
    assert all(p.grad is None for p in nets["int8"].parameters())  # the step leaves no gradients behind
