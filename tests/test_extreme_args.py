"""Extreme sizes, strides, paddings, dilations and groups through every op that takes them, on the CPU
and Meta kernels (and CUDA where present): each probe must end in a clear exception or a result,
never a crash of the process.

The probes run in a child process that reports each one as it goes; a child that dies (SIGFPE,
SIGSEGV, abort) names the probe it died in, and a new child carries on after it.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

EXTREMES = [0, -1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -(2**63)]

# op name -> (argument builder source, geometry arguments). The builder makes the op's tensors on
# `device` (small valid ones); each geometry argument is replaced by an extreme (v, v) pair (or v).
CHILD = textwrap.dedent(r"""
    import json, sys
    import torch, torch_int8
    ops = torch.ops.int8
    EXTREMES = json.loads(sys.argv[1])
    devices = json.loads(sys.argv[2])
    start = int(sys.argv[3])

    def i8(*shape, device):
        return torch.ones(shape, dtype=torch.int8, device=device)

    def f32(*shape, device):
        return torch.ones(shape, dtype=torch.float32, device=device)

    def calls(device):
        x, w, dy = i8(1, 16, 8, 8, device=device), i8(16, 16, 3, 3, device=device), i8(1, 16, 6, 6, device=device)
        s1 = f32(1, device=device)
        geo = dict(stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1)
        yield "im2col", lambda a: ops.im2col(x, a.get("kernel_size", [3, 3]), a.get("dilation", [1, 1]),
                                             a.get("padding", [0, 0]), a.get("stride", [1, 1])), \
            ["kernel_size", "dilation", "padding", "stride"]
        cols = torch.ones(1, 9, 81, dtype=torch.int32, device=device)
        yield "col2im", lambda a: ops.col2im(cols, a.get("output_size", [11, 11]), a.get("kernel_size", [3, 3]),
                                             a.get("dilation", [1, 1]), a.get("padding", [0, 0]),
                                             a.get("stride", [1, 1])), \
            ["output_size", "kernel_size", "dilation", "padding", "stride"]
        g = lambda a: {**geo, **{k: v for k, v in a.items() if k in geo}}
        yield "conv2d", lambda a: ops.conv2d(x, w, **g(a)), list(geo)
        yield "scaled_conv2d", lambda a: ops.scaled_conv2d(x, w, s1, s1, **g(a)), list(geo)
        yield "conv2d_dgrad", lambda a: ops.conv2d_dgrad(dy, w, a.get("input_size", [8, 8]), **g(a)), \
            ["input_size", *geo]
        yield "scaled_conv2d_dgrad", lambda a: ops.scaled_conv2d_dgrad(dy, w, s1, s1, a.get("input_size", [8, 8]),
                                                                       **g(a)), ["input_size", *geo]
        yield "conv2d_wgrad", lambda a: ops.conv2d_wgrad(dy, x, a.get("kernel_size", [3, 3]), **g(a)), \
            ["kernel_size", *geo]
        yield "scaled_conv2d_wgrad", lambda a: ops.scaled_conv2d_wgrad(dy, x, s1, s1, a.get("kernel_size", [3, 3]),
                                                                       **g(a)), ["kernel_size", *geo]
        xf, wf = f32(1, 16, 8, 8, device=device), f32(16, 16, 3, 3, device=device)
        yield "dynamic_conv2d", lambda a: ops.dynamic_conv2d(xf, wf, None, **g(a)), list(geo)
        yield "quantize_rotated_filter", lambda a: ops.quantize_rotated_filter(wf, a.get("groups", 1)), ["groups"]

    def probes():
        for device in devices:
            for name, call, args in calls(device):
                for arg in args:
                    for v in EXTREMES:
                        yield f"{device}:{name}:{arg}={v}", call, {arg: v if arg == "groups" else [v, v]}

    for i, (label, call, a) in enumerate(probes()):
        if i < start:
            continue
        print("START", i, label, flush=True)
        try:
            call(a)
            outcome = "result"
        except (ValueError, TypeError, RuntimeError, IndexError, OverflowError) as e:
            outcome = type(e).__name__ + ": " + str(e).splitlines()[0][:200]
        print("DONE", i, json.dumps(outcome), flush=True)
    print("END", flush=True)
""")


def _devices():
    return ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


def _run_all():
    """{probe label: outcome}: 'result', 'ExceptionType: message', or 'CRASH (signal)'."""
    outcomes, start = {}, 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    while True:
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(EXTREMES), json.dumps(_devices()), str(start)],
                              capture_output=True, text=True, env=env, timeout=600)
        current = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                _, i, label = line.split(" ", 2)
                current = (int(i), label)
            elif line.startswith("DONE ") and current:
                outcomes[current[1]] = json.loads(line.split(" ", 2)[2])
                current = None
            elif line == "END":
                return outcomes
        if current is None:  # died outside a probe: the import, say
            pytest.fail(f"the probing process failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
        outcomes[current[1]] = f"CRASH (rc={proc.returncode})"
        start = current[0] + 1


@pytest.fixture(scope="module")
def outcomes():
    return _run_all()


def test_no_probe_crashes_the_process(outcomes):
    assert len(outcomes) > 400
    crashed = {k: v for k, v in outcomes.items() if v.startswith("CRASH")}
    assert not crashed, crashed


@pytest.mark.parametrize("label", [
    "cpu:col2im:kernel_size=4294967296", "cpu:im2col:padding=2147483648", "cpu:im2col:kernel_size=4294967296",
    "cpu:conv2d_wgrad:kernel_size=4294967296", "meta:col2im:kernel_size=4294967296",
    "meta:conv2d:dilation=9223372036854775807", "cpu:conv2d:dilation=9223372036854775807",
    "cpu:conv2d:padding=2147483647", "meta:im2col:padding=2147483647",
])
def test_reported_cases_are_clear_errors(outcomes, label):
    # The cases that once divided by zero, indexed out of bounds or returned garbage.
    assert outcomes[label].startswith(("ValueError", "RuntimeError")), outcomes[label]


def test_valid_geometry_still_runs(outcomes):
    # The sweep's one in-range value per argument must not be refused along with the rest.
    assert outcomes["cpu:conv2d:stride=2147483647"] == "result"
    assert outcomes["cpu:conv2d:padding=0"] == "result"
