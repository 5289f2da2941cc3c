"""torch_int8.bench without a GPU: the command line, the conv table and the CUDA-graph bookkeeping of
`bench conv` (capture replaced by a stand-in, so what is checked is the logic around it: grads None at
capture, a failed capture recorded and survived, the gradients dropped afterwards)."""
import pytest
import torch

from torch_int8 import bench


def test_conv_help(capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["conv", "--help"])
    assert exc.value.code == 0
    assert "--batch" in capsys.readouterr().out


def _layer_and_input():
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    return layer, x, torch.randn(2, 4, 5, 5)


def _fake_timeit(fn, reps=50, warmup=10):
    fn()
    return {"ms": 1.0, "min_ms": 1.0, "batch": 1, "reps": reps}


def test_conv_graph_timings_captures_with_fresh_grads(monkeypatch):
    layer, x, gy = _layer_and_input()
    seen = []

    def fake_graphed(fn, warm=None):  # warm-up, then "capture": fn runs once, eagerly
        for _ in range(3):
            (warm or fn)()
        seen.append((torch.is_grad_enabled(), x.grad is None and layer.weight.grad is None))
        fn()
        seen.append(x.grad is not None)
        return lambda: None

    monkeypatch.setattr(bench, "graphed", fake_graphed)
    monkeypatch.setattr(bench, "timeit", _fake_timeit)
    args = type("Args", (), {"reps": 2, "warmup": 1})()
    out = bench.conv_graph_timings("t", {"bf16": layer}, x, gy, args)
    assert set(out) == {"bf16_fwd_graph", "bf16_fwd_bwd_graph"}
    assert all(d["ms"] == 1.0 and d["error"] is None for d in out.values())
    # forward captured under no_grad; the training step with grad enabled and every .grad None
    assert seen == [(False, True), False, (True, True), True]
    assert x.grad is None and layer.weight.grad is None and layer.bias.grad is None


def test_conv_graph_timings_survives_failed_capture(monkeypatch, capsys):
    layer, x, gy = _layer_and_input()

    def failing_graphed(fn, warm=None):
        fn()
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(bench, "graphed", failing_graphed)
    args = type("Args", (), {"reps": 2, "warmup": 1})()
    out = bench.conv_graph_timings("t", {"int8": layer}, x, gy, args)
    for d in out.values():
        assert d["ms"] is None and "not permitted" in d["error"]
    assert "int8 forward+backward, CUDA graph" in capsys.readouterr().err
    assert x.grad is None and layer.weight.grad is None


def test_format_conv_table_missing_graph_times():
    methods = {f"{side}_{m}": {"ms": 0.5} for side in ("bf16", "int8") for m in ("fwd", "fwd_bwd", "fwd_graph")}
    methods["bf16_fwd_bwd_graph"] = {"ms": None, "error": "RuntimeError: x"}
    methods["int8_fwd_bwd_graph"] = {"ms": 0.25, "error": None}
    row = {"name": "r18.layer1.3x3", "N": 128, "methods": methods, "fwd_speedup": 1.0, "fwd_bwd_speedup": 1.0,
           "fwd_graph_speedup": 1.0, "fwd_bwd_graph_speedup": None, "int8_fwd_tops": 100.0,
           "fwd_max_rel_err": 0.01, "workspace_bytes": 0}
    lines = bench.format_conv_table([row]).splitlines()
    assert "bf16 g fwd" in lines[0] and "int8 g f+b" in lines[0]
    assert len(lines[0]) == len(lines[2])
    cells = [c.split() for c in lines[2].split("|")]
    assert cells[4] == ["-", "0.2500", "-"]
