"""torch_int8.nn.Linear / QuantizedLinear / convert against float64 references.

Bounds come from the quantization steps: for y = sum_k x_k w_k with x, w each
rounded to the nearest step (|error| <= step / 2),
  |y_q - y| <= sx/2 * sum|w| + sw/2 * sum|x| + K * sx * sw / 4
per output element, plus the rounding of the output dtype.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from conftest import CUDA_ONLY, DEVICE_PARAMS, check_within, make_gen, quant_step  # noqa: E402
from cuda_graphs import drop_grads, training_step_replay  # noqa: E402

import torch_int8  # noqa: E402
from torch_int8 import Int8Config  # noqa: E402


def product_bound(a, a_dim, b, b_dim):
    """Bound on |Q(a) @ Q(b) - a @ b| elementwise; a [M, K] per row (dim 0), b [K, N] per column (dim 1)."""
    a, b = a.double(), b.double()
    sa, sb = quant_step(a, a_dim), quant_step(b, b_dim)  # [M, 1] / [1, N] per channel, else 0-d
    k = a.shape[1]
    return sa / 2 * b.abs().sum(0, keepdim=True) + sb / 2 * a.abs().sum(1, keepdim=True) + k * sa * sb / 4


def make(device, m=37, k=91, n=53, seed=0):
    g = make_gen(seed)
    x = (torch.randn(m, k, generator=g) * (torch.rand(m, 1, generator=g) + 0.5)).to(device)
    lin = torch.nn.Linear(k, n).to(device)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g).to(device) * 0.1)
        lin.bias.copy_(torch.randn(n, generator=g).to(device))
    return x, lin


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
# (tokens, in, out): the weight gradient reduces over the tokens and grad_input over the outputs,
# each once beyond the int32-safe depth of 131071
@pytest.mark.parametrize("m,k,n", [(37, 91, 53), (131072 + 3, 5, 3), (6, 4, 131072 + 1)])
def test_forward_and_gradients_within_quantization_bounds(device, granularity, m, k, n):
    x, lin = make(device, m, k, n)
    layer = torch_int8.nn.Linear.from_float(lin, Int8Config(granularity=granularity))
    x.requires_grad_(True)
    y = layer(x)
    g = torch.randn(y.shape, generator=make_gen(9)).to(device)
    y.backward(g)
    xd, wd, gd = x.detach().double(), lin.weight.detach().double(), g.double()
    per = granularity == "channel"
    check_within(y.detach().cpu(), (xd @ wd.t() + lin.bias.double()).cpu(),
                 product_bound(xd, 0 if per else None, wd.t(), 1 if per else None).cpu())
    check_within(x.grad.cpu(), (gd @ wd).cpu(), product_bound(gd, 0 if per else None, wd, 1 if per else None).cpu())
    check_within(lin.weight.grad.cpu(), (gd.t() @ xd).cpu(),
                 product_bound(gd.t(), 0 if per else None, xd, 1 if per else None).cpu())
    # float32 sums of m terms of magnitude ~1: ~m ulps of error, also for sums near 0
    assert torch.allclose(lin.bias.grad.double(), gd.sum(0), atol=m * 2.0**-23)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_float_gemms_when_disabled(device):
    x, lin = make(device)
    layer = torch_int8.nn.Linear.from_float(lin, Int8Config(forward=False, grad_input=False, grad_weight=False))
    x.requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    assert torch.allclose(y, torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)
    assert torch.allclose(x.grad, lin.weight.sum(0).expand_as(x), atol=1e-5)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_nd_input_no_grad_and_frozen_weight(device):
    x, lin = make(device)
    layer = torch_int8.nn.Linear.from_float(lin)
    x3 = x.reshape(1, 37, 91).expand(2, 37, 91)
    with torch.no_grad():
        y = layer(x3)
    assert y.shape == (2, 37, 53) and not y.requires_grad
    lin.weight.requires_grad_(False)
    xr = x.clone().requires_grad_(True)
    layer(xr).sum().backward()  # grad_input only: the bias gradient from dY's column sums without maxima
    assert xr.grad is not None and lin.weight.grad is None
    assert torch.equal(lin.bias.grad, torch.full_like(lin.bias, 37.0))
    lin.bias.grad = None
    layer(x).sum().backward()  # only the bias needs a gradient: no INT8 product at all
    assert torch.equal(lin.bias.grad, torch.full_like(lin.bias, 37.0))


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_forward_gathers_column_maxima_only_for_a_backward(device, monkeypatch):
    """X's column maxima serve grad_weight, W's grad_input: neither without a graph needing them."""
    import torch_int8.nn.linear as linear_module

    asked = []

    rows = linear_module._rows

    def spy(t, col_amax, *args, **kwargs):
        asked.append(col_amax)
        return rows(t, col_amax, *args, **kwargs)

    monkeypatch.setattr(linear_module, "_rows", spy)
    x, lin = make(device)
    layer = torch_int8.nn.Linear.from_float(lin)
    expected = {  # (grad enabled, x requires grad, weight requires grad) -> (X maxima, W maxima)
        (False, True, True): [False, False],
        (True, False, False): [False, False],
        (True, False, True): [True, False],
        (True, True, False): [False, True],
        (True, True, True): [True, True],
    }
    for (grad, x_grad, w_grad), want in expected.items():
        asked.clear()
        lin.weight.requires_grad_(w_grad)
        with torch.set_grad_enabled(grad):
            y = layer(x.clone().requires_grad_(x_grad))
        assert asked == want, (grad, x_grad, w_grad)
        assert y.requires_grad == (grad and (x_grad or w_grad or lin.bias.requires_grad))
    with torch.no_grad():
        y_inference = layer(x)
    assert torch.equal(y_inference, layer(x.clone().requires_grad_(True)).detach())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_stochastic_gradient_rounding_is_unbiased(device):
    x, lin = make(device, m=16, k=64, n=8)
    layer = torch_int8.nn.Linear.from_float(lin, Int8Config(grad_rounding="stochastic"))
    g = torch.randn(16, 8, generator=make_gen(3)).to(device)
    grads = []
    for _ in range(200):
        xr = x.clone().requires_grad_(True)
        layer(xr).backward(g)
        grads.append(xr.grad.double())
    mean = torch.stack(grads).mean(0)
    nearest = torch_int8.nn.Linear.from_float(lin)
    xr = x.clone().requires_grad_(True)
    nearest(xr).backward(g)
    ref = g.double() @ lin.weight.double()
    # the average of stochastic draws is closer to the exact gradient than one nearest-rounded one
    assert (mean - ref).abs().mean() < (xr.grad.double() - ref).abs().mean()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_non_finite_activations_propagate(device):
    x, lin = make(device)
    x[3, 5] = float("inf")
    y = torch_int8.nn.Linear.from_float(lin)(x)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(37) != 3]).all()


def test_state_dict_round_trip():
    lin = torch.nn.Linear(20, 7)
    layer = torch_int8.nn.Linear(20, 7)
    layer.load_state_dict(lin.state_dict())
    back = torch.nn.Linear(20, 7)
    back.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == {"weight", "bias"}
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)


def test_convert_replaces_linear_in_place():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                torch.nn.Sequential(torch.nn.Linear(16, 4)), torch.nn.Linear(4, 2))
    w0 = model[0].weight
    out = torch_int8.convert(model, filter_fn=lambda m, name: name != "3")
    assert out is model
    assert isinstance(model[0], torch_int8.nn.Linear) and model[0].weight is w0
    assert isinstance(model[2][0], torch_int8.nn.Linear)
    assert type(model[3]) is torch.nn.Linear
    assert model(torch.randn(5, 8)).shape == (5, 2)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        Int8Config(granularity="row")
    with pytest.raises(ValueError):
        Int8Config(grad_rounding="up")


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_quantized_linear(device):
    x, lin = make(device)
    q = torch_int8.nn.QuantizedLinear.from_float(lin)
    assert q.weight_int8.dtype == torch.int8 and q.weight_int8.element_size() * 2 == torch.bfloat16.itemsize
    xd, wd = x.double(), lin.weight.detach().double()
    check_within(q(x).cpu(), (xd @ wd.t() + lin.bias.double()).cpu(), product_bound(xd, 0, wd.t(), 1).cpu())
    relu = torch_int8.nn.QuantizedLinear.from_float(lin, relu=True)
    assert torch.equal(relu(x), torch.relu(q(x)))
    q8 = torch_int8.nn.QuantizedLinear.from_float(lin, out_scale=0.05)
    y8 = q8(x)
    assert y8.dtype == torch.int8
    expected = q(x).float().clamp(-128 * 0.05, 127 * 0.05)  # int8 output saturates
    assert (y8.float() * 0.05 - expected).abs().max() <= 0.05 / 2 + 1e-4
    static = torch_int8.nn.QuantizedLinear.from_float(lin, activation_scale=float(x.abs().max()) / 127)
    check_within(static(x).cpu(), (xd @ wd.t() + lin.bias.double()).cpu(),
                 product_bound(xd, None, wd.t(), 1).cpu())


@pytest.mark.cuda_graph
@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_training_step_in_a_cuda_graph(device, rounding):
    # The whole step (forward, backward) captured once and replayed: nothing in it syncs with the
    # host. Nearest rounding replays exactly the eager step; stochastic rounding draws afresh.
    x, ref = make(device)
    x.requires_grad_(True)
    layer = torch_int8.nn.Linear.from_float(ref, Int8Config(grad_rounding=rounding))
    gy = torch.randn(x.shape[0], ref.out_features, device=device)

    def grads():
        return [t.grad.clone() for t in (x, layer.weight, layer.bias)]

    layer(x).backward(gy)
    eager = grads()
    drop_grads(layer, x)
    replay = training_step_replay(layer, x, gy)  # warm-up outside the capture, then the capture
    replays = []
    for _ in range(2):
        replay()
        replays.append(grads())
    if rounding == "nearest":
        for replay in replays:
            assert all(torch.equal(a, b) for a, b in zip(replay, eager))
    else:  # dX and dW draw their dY noise afresh; the bias gradient has no rounding
        assert not torch.equal(replays[0][0], replays[1][0]) and not torch.equal(replays[0][1], replays[1][1])
        assert torch.equal(replays[0][2], eager[2])


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("out_scale,relu", [(None, False), (None, True), (0.05, False)], ids=["float", "relu", "int8"])
def test_quantized_linear_op_is_quantize_rows_then_scaled_gemm(device, out_scale, relu):
    """QuantizedLinear's dynamic path, one op (int8::quantized_linear): bit for bit the per-row
    quantize and scaled_gemm it stands for, on 3-D input, with and without ReLU, int8 output."""
    torch.manual_seed(3)
    ref = torch.nn.Linear(40, 24).to(device)
    q = torch_int8.nn.QuantizedLinear.from_float(ref, relu=relu, out_scale=out_scale)
    x = torch.randn(3, 5, 40, device=device)
    rows = torch.ops.int8.quantize_rows(x.reshape(-1, 40), False, "nearest", None, False)
    out_dtype = torch.float32 if out_scale is None else torch.int8
    want = torch.ops.int8.scaled_gemm(rows[0], q.weight_int8.t(), rows[1], q.weight_scale, None, q.bias, out_dtype,
                                      out_scale or 1.0, 0, relu).reshape(3, 5, 24)
    got = q(x)
    assert got.shape == (3, 5, 24) and got.dtype == out_dtype and torch.equal(got, want)
    with pytest.raises(ValueError, match="quantized_linear: x must have at least one dimension"):
        torch.ops.int8.quantized_linear(torch.tensor(1.0, device=device), q.weight_int8, q.weight_scale)
