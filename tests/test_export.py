"""torch_int8.export_model: a quantize_model result compiled by AOTInductor, loaded back in Python
(load_exported runs the library that C++'s AOTIModelPackageLoader runs), gives the quantized model's
outputs bit for bit, at batch sizes other than the example's."""
import json
import zipfile

import pytest
import torch
from torch import nn

import torch_int8
from torch_int8.export import MIN_TORCH, check_torch_version, torch_runs_exports

needs_new_torch = pytest.mark.skipif(not torch_runs_exports(),
                                     reason=f"torch < {MIN_TORCH}: its AOTInductor runs the int8 ops wrong")


class _ConvNet(nn.Module):
    """Conv-BN-ReLU whose int8 output (a QTensor) feeds the next convolution, a residual addition,
    pooling and a Linear classifier: every kind of layer and hand-over quantize_model produces."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.conv2(y) + x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = _ConvNet()
    with torch.no_grad():
        model.train()(torch.randn(32, 1, 12, 12))  # BatchNorm running statistics
    return torch_int8.quantize_model(model.eval(), [torch.randn(32, 1, 12, 12)])


@pytest.fixture(scope="module")
def package(quantized, tmp_path_factory):
    # One example image: the package must still take any batch (torch.export fixes size-1 dimensions).
    return torch_int8.export_model(quantized, torch.randn(1, 1, 12, 12), tmp_path_factory.mktemp("export") / "m.pt2")


def test_the_model_holds_int8_hand_overs(quantized):
    assert "int8 output" in quantized.quantization_report.quantized["conv1"]
    assert len(quantized.quantization_report.quantized) == 3


@needs_new_torch
@pytest.mark.parametrize("batch", [1, 4, 37])
def test_round_trip_is_bit_exact(quantized, package, batch):
    x = torch.randn(batch, 1, 12, 12, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = quantized(x)
    got = torch_int8.load_exported(package)(x)
    assert got.dtype == expected.dtype and torch.equal(got, expected)


@needs_new_torch
def test_the_package_calls_the_int8_ops(package):
    """The convolutions and the Linear stay torch.ops.int8 calls (the proxy executor's node list),
    not float ops that Inductor would compile in their place."""
    with zipfile.ZipFile(package) as archive:
        nodes = [node for name in archive.namelist() if name.endswith("wrapper.json")
                 for node in json.loads(archive.read(name))["nodes"]]
    assert sorted(n["node"]["target"] for n in nodes) == ["int8::scaled_conv2d"] * 2 + ["int8::scaled_gemm"]


def test_older_torch_is_refused_with_a_clear_error(quantized, tmp_path, monkeypatch):
    """torch 2.11's AOTInductor crashed a GPU machine's process on the round trip: older torch gets
    a RuntimeError before anything is compiled or loaded."""
    with pytest.raises(RuntimeError, match=r"need torch >= 2\.12 \(found 2\.11\.0\+cu130\)"):
        check_torch_version("2.11.0+cu130")
    for version in ("2.12.1", "2.13.0+cpu", "2.14.1", "3.0.0"):
        check_torch_version(version)
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    with pytest.raises(RuntimeError, match="need torch"):
        torch_int8.export_model(quantized, torch.randn(1, 1, 12, 12), tmp_path / "m.pt2")
    with pytest.raises(RuntimeError, match="need torch"):
        torch_int8.load_exported(tmp_path / "m.pt2")
