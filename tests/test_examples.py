"""examples/train_fashion_mnist.py: its augmentation and a one-step run of the ResNet variant
(float and fused INT8) end to end."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torch_int8
from torch_int8.datasets import find_fashion_mnist

SCRIPT = Path(__file__).parents[1] / "examples" / "train_fashion_mnist.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_fashion_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_augment_shifts_and_flips_each_image():
    """Each augmented image is its input, flipped or not, shifted by at most 2 pixels with zeros
    coming in: found among the 2 x 25 candidates exactly."""
    example = load_example()
    x = torch.rand(16, 1, 8, 8) + 1  # no zeros: the padding is recognizable
    out = example.augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    for img, src in zip(out, x):
        candidates = [F.pad(s, (2, 2, 2, 2))[:, dy:dy + 8, dx:dx + 8] for s in (src, src.flip(2))
                      for dy in range(5) for dx in range(5)]
        assert any(torch.equal(img, c) for c in candidates)
    assert sum(torch.equal(img, src) for img, src in zip(out, x)) < 4  # most images moved (1 in 50 stays)


@pytest.mark.skipif(find_fashion_mnist(None) is None, reason="Fashion-MNIST not found")
def test_resnet_trains_one_step_each_way(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, str(SCRIPT), "--model", "resnet", "--augment", "--epochs", "1", "--seeds", "0",
                    "--limit", "8", "--batch", "8", "--out", str(out)], check=True, timeout=300,
                   env={**os.environ,
                        "PYTHONPATH": str(Path(torch_int8.__file__).parents[1])})
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"float/0", "int8/0"}
    assert all(len(r["loss"]) == 1 and torch.isfinite(torch.tensor(r["loss"])).all() for r in runs.values())
