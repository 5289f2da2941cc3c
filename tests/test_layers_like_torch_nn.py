"""The INT8 layers where users expect torch.nn's behaviour: the meta device, empty batches, float64,
and NaN through the static-scale inference layers."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from conftest import DEVICE_PARAMS, make_gen  # noqa: E402

import torch_int8  # noqa: E402

# (torch.nn layer, its input shape)
LAYERS = [
    pytest.param(lambda **kw: torch.nn.Linear(8, 5, **kw), (3, 8), id="linear"),
    pytest.param(lambda **kw: torch.nn.Linear(8, 5, **kw), (2, 3, 8), id="linear-3d"),
    pytest.param(lambda **kw: torch.nn.Conv2d(4, 6, 3, padding=1, **kw), (2, 4, 7, 7), id="conv"),
    pytest.param(lambda **kw: torch.nn.Conv2d(4, 6, 1, stride=2, bias=False, **kw), (2, 4, 7, 7), id="conv-1x1s2"),
]


def int8_twin(layer):
    return torch_int8.convert(torch.nn.Sequential(layer))[0]


@pytest.mark.parametrize("make,shape", LAYERS)
def test_meta_device_gives_torch_nn_shapes_and_gradients(make, shape):
    ref, layer = make(device="meta"), int8_twin(make(device="meta"))
    assert type(layer) is not type(ref)
    x = torch.empty(shape, device="meta", requires_grad=True)
    y = layer(x)
    assert y.device.type == "meta" and y.shape == ref(x).shape and y.dtype == torch.float32
    y.sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == layer.weight.shape


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("make,shape", LAYERS)
def test_empty_batch_gives_empty_output_and_zero_gradients(device, make, shape):
    ref = make(device=device)
    layer = int8_twin(make(device=device))
    layer.load_state_dict(ref.state_dict())
    empty = (0, *shape[1:]) if len(shape) != 3 else (shape[0], 0, shape[2])
    x = torch.randn(empty, device=device, requires_grad=True)
    y, y_ref = layer(x), ref(x)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype and y.numel() == 0
    y.sum().backward()
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("make,shape", LAYERS)
def test_float64_layers_run_their_products_in_int8(device, make, shape):
    ref = make(device=device, dtype=torch.float64)
    layer = int8_twin(make(device=device, dtype=torch.float64))
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(shape, generator=make_gen(3), dtype=torch.float64).to(device).requires_grad_(True)
    y, y_ref = layer(x), ref(x)
    assert y.dtype == torch.float64
    err = float((y - y_ref).detach().abs().max())
    # INT8 products: an error of about a quantization step of the output's scale, not float64's 1e-16
    assert 1e-6 < err < 0.05 * float(y_ref.detach().abs().max())
    y.sum().backward()
    assert x.grad.dtype == torch.float64 and layer.weight.grad.dtype == torch.float64


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_static_activation_scale_keeps_nan(device):
    """A NaN input cast to int8 would read 0; its row (image) gets a NaN scale instead."""
    gen = make_gen(5)
    lin = torch.nn.Linear(8, 5).to(device)
    q = torch_int8.nn.QuantizedLinear.from_float(lin, activation_scale=0.05)
    x = torch.randn(4, 8, generator=gen).to(device)
    x[2, 3] = float("nan")
    y = q(x)
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3]]).all()
    conv = torch.nn.Conv2d(3, 4, 3).to(device)
    qc = torch_int8.nn.QuantizedConv2d.from_float(conv, activation_scale=0.05)
    xc = torch.randn(2, 3, 6, 6, generator=gen).to(device)
    xc[1, 2, 4, 4] = float("nan")
    yc = qc(xc)
    assert torch.isnan(yc[1]).all() and torch.isfinite(yc[0]).all()
    # rows without NaN: as before, the per-tensor static scale
    expected = F.linear(torch.clamp(torch.round(x[[0, 1, 3]] / 0.05), -127, 127) * 0.05,
                        q.weight_int8.float() * q.weight_scale[:, None], q.bias)
    assert torch.allclose(y[[0, 1, 3]], expected, atol=1e-4, rtol=1e-4)
