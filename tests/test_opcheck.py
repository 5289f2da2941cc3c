"""torch.library.opcheck over every op of torch.ops.int8 (schema, fake / Meta kernel, autograd
registration, fake-tensor consistency, AOT dispatch with dynamic shapes), on the CPU and CUDA; and
the ops' refusal of inputs that require grad (they have no derivatives: the layers hold them)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import DEVICE_PARAMS, make_gen  # noqa: E402

import torch_int8  # noqa: E402

ops = torch.ops.int8


def samples(device):
    """(op name, args) for every op: small valid inputs, ragged sizes."""
    g = make_gen(7)

    def i8(*shape):
        return torch.randint(-127, 128, shape, dtype=torch.int8, generator=g).to(device)

    def f32(*shape):
        return (torch.rand(*shape, generator=g) + 0.5).to(device)

    x, w, dy = i8(2, 16, 9, 9), i8(32, 16, 3, 3), i8(2, 32, 9, 9)
    xf = torch.randn(2, 16, 9, 9, generator=g).to(device)
    m = torch.randn(37, 24, generator=g).to(device)
    return [
        ("gemm", (i8(37, 24), i8(24, 19))),
        ("scaled_gemm", (i8(37, 24), i8(19, 24).t(), f32(37), f32(19), None, f32(19), torch.bfloat16, 1.0, 0, True)),
        ("scaled_gemm", (i8(37, 24), i8(24, 19), f32(()), f32(()), torch.zeros((), dtype=torch.int32, device=device),
                         None, torch.int8, 0.5, 3, False)),
        ("scaled_gemm_row_amax", (i8(37, 24), i8(24, 19), f32(37), f32(19), None, None, torch.float32, False)),
        ("quantize", (m, 0, True, "nearest", None)),
        ("quantize", (m, None, False, "nearest", None)),
        ("dequantize", (i8(37, 24), f32(37), None, 0, torch.float32)),
        ("quantize_rows", (m, True, "nearest", None, True)),
        ("column_amax", (m,)),
        ("quantize_columns_t", (m, m.abs().amax(0), "nearest", None)),
        ("requantize", (torch.randint(-2**20, 2**20, (5, 7), dtype=torch.int32, generator=g).to(device), f32(7), 3,
                        "fixed_point")),
        ("im2col", (x, [3, 3], [1, 1], [1, 1], [2, 2], 0, "NCHW")),
        ("col2im", (torch.randint(-9, 9, (2, 16 * 9, 25), dtype=torch.int32, generator=g).to(device), [9, 9], [3, 3],
                    [1, 1], [1, 1], [2, 2], "NCHW")),
        ("conv2d", (x, w, [1, 1], [1, 1], [1, 1], 1)),
        ("scaled_conv2d", (x, w, f32(2), f32(32), None, f32(32), [2, 2], [1, 1], [1, 1], 1, torch.bfloat16, 1.0, 0,
                           True)),
        ("conv2d_dgrad", (dy, w, [9, 9], [1, 1], [1, 1], [1, 1], 1)),
        ("scaled_conv2d_dgrad", (dy, w, f32(2), f32(16), [9, 9], [1, 1], [1, 1], [1, 1], 1, torch.float32)),
        ("conv2d_wgrad", (dy, x, [3, 3], [1, 1], [1, 1], [1, 1], 1)),
        ("scaled_conv2d_wgrad", (dy, x, f32(2), f32(2), [3, 3], [1, 1], [1, 1], [1, 1], 1)),
        ("quantized_linear", (torch.stack([m, -m]), i8(19, 24), f32(19), f32(19), torch.bfloat16, 1.0, True)),
        ("quantized_linear", (m, i8(19, 24), f32(19), None, torch.int8, 0.25, False)),
        ("dynamic_conv2d", (xf, torch.randn(32, 16, 3, 3, generator=g).to(device), None, [1, 1], [1, 1], [1, 1], 1,
                            True, torch.bfloat16)),
        ("quantize_images", (xf, "nearest", True, True)),
        ("quantize_rotated_filter", (torch.randn(32, 16, 3, 3, generator=g).to(device), 2, True)),
        ("batch_norm_relu_quantize", (xf.contiguous(memory_format=torch.channels_last), f32(16), f32(16),
                                      f32(16), f32(16).abs() + 0.5, True, 0.1, 1e-5)),
        ("batch_norm_relu_backward", (xf.contiguous(memory_format=torch.channels_last),
                                      xf.flip(0).contiguous(memory_format=torch.channels_last), f32(16), f32(16),
                                      f32(16), f32(16).abs() + 0.5)),
    ]


def all_op_names():
    """Every op of the int8 namespace that takes a tensor (the workspace limit ops take none)."""
    names = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("int8::")}
    return {n for n in names if any(isinstance(a.type, torch.TensorType) or "Tensor" in str(a.type)
                                    for a in getattr(ops, n).default._schema.arguments)}


def test_every_op_has_a_sample():
    assert all_op_names() == {name for name, _ in samples("cpu")}


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("index", range(len(samples("cpu"))), ids=[f"{n}-{i}" for i, (n, _) in
                                                                  enumerate(samples("cpu"))])
def test_opcheck(device, index):
    name, args = samples(device)[index]
    torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_float_inputs_that_require_grad_are_refused(device):
    a, b = torch.ones(4, 8, dtype=torch.int8, device=device), torch.ones(8, 3, dtype=torch.int8, device=device)
    one = torch.ones(1, device=device)
    bias = torch.zeros(3, device=device, requires_grad=True)
    with pytest.raises(RuntimeError, match="bias requires grad, but the op has no derivative"):
        ops.scaled_gemm(a, b, one, one, None, bias)
    with pytest.raises(RuntimeError, match="scale_a requires grad"):
        ops.scaled_gemm(a, b, one.clone().requires_grad_(), one)
    with pytest.raises(RuntimeError, match="x requires grad"):
        ops.quantize_rows(torch.randn(3, 4, device=device, requires_grad=True))
    expected = ops.scaled_gemm(a, b, one, one, None, bias.detach())
    with torch.no_grad():  # no graph is recorded: nothing is lost
        assert torch.equal(ops.scaled_gemm(a, b, one, one, None, bias), expected)
    x, w = torch.ones(1, 16, 5, 5, dtype=torch.int8, device=device), torch.ones(4, 16, 3, 3, dtype=torch.int8,
                                                                                  device=device)
    with pytest.raises(RuntimeError, match="bias requires grad"):
        ops.scaled_conv2d(x, w, one, one, None, torch.zeros(4, device=device, requires_grad=True))
