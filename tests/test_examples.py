"""examples/train_fashion_mnist.py (its augmentation, a one-step run of the ResNet variant, float
and fused INT8) and examples/train_synthetic_lm.py (its loss floor, a short run of both variants)."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import torch_int8
from torch_int8.datasets import find_fashion_mnist

EXAMPLES = Path(__file__).parents[1] / "examples"
SCRIPT = EXAMPLES / "train_fashion_mnist.py"
LM_SCRIPT = EXAMPLES / "train_synthetic_lm.py"


def load_example(script=SCRIPT):
    spec = importlib.util.spec_from_file_location(script.stem, script)
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


def run_example(script, *args):
    subprocess.run([sys.executable, str(script), *args], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(Path(torch_int8.__file__).parents[1])})


@pytest.mark.skipif(find_fashion_mnist(None) is None, reason="Fashion-MNIST not found")
def test_resnet_trains_one_step_each_way(tmp_path):
    out = tmp_path / "run"
    run_example(SCRIPT, "--model", "resnet", "--augment", "--epochs", "1", "--seeds", "0", "--limit", "8",
                "--batch", "8", "--out", str(out))
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"float/0", "int8/0"}
    assert all(len(r["loss"]) == 1 and torch.isfinite(torch.tensor(r["loss"])).all() for r in runs.values())


def test_the_synthetic_task_knows_its_loss_floor():
    """The entropy rate of the Markov chain: 0 for a deterministic one, log(vocab) for a uniform one,
    and the average cross-entropy of the chain's own probabilities on sampled sequences."""
    lm = load_example(LM_SCRIPT)
    g = torch.Generator().manual_seed(0)
    assert lm.entropy_rate(lm.markov_chain(16, 1, g)) == pytest.approx(0.0, abs=1e-12)
    assert lm.entropy_rate(torch.full((16, 16), 1 / 16)) == pytest.approx(math.log(16))
    chain = lm.markov_chain(32, 4, g)
    tokens = lm.sample(chain, 64, 400, g)
    nll = -chain[tokens[:, :-1], tokens[:, 1:]].log().mean()
    assert float(nll) == pytest.approx(lm.entropy_rate(chain), rel=0.05)


def test_synthetic_lm_trains_both_ways(tmp_path):
    out = tmp_path / "lm"
    run_example(LM_SCRIPT, "--steps", "3", "--seeds", "0", "--vocab", "32", "--hidden", "32", "--heads", "2",
                "--mlp", "64", "--depth", "1", "--batch", "4", "--length", "16", "--out", str(out))
    report = json.loads(out.with_suffix(".json").read_text())
    assert set(report["runs"]) == {"float/0", "int8/0"}
    assert all(len(r) == 3 and all(math.isfinite(v) for v in r) for r in report["runs"].values())
    assert 0 < report["meta"]["entropy_floor"] < math.log(32)
    # the block's qkv, out, gate_up and down in INT8, the head float; none in the float variant
    assert report["int8_int8_linears"] == 4 and report["float_int8_linears"] == 0
