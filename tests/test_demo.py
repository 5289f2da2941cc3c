"""python -m torch_int8 demo and the command line: a tiny run end to end on synthetic data (CPU), the
table, the plots, the subcommands' help, bad options, and the data set fallback without scikit-learn."""
import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import torch_int8
from torch_int8 import __main__ as cli
from torch_int8 import datasets, demo

TINY = demo.Settings(train_images=None, test_images=None, epochs=2, batch=32, width=4, calibration_images=32)


def _tiny_data(n_train: int = 96, n_test: int = 48) -> datasets.ImageDataset:
    """4 classes of 12x12 images, each a fixed template plus noise."""
    templates = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (n_train + n_test,), generator=g)
    x = templates[y] + 0.5 * torch.randn(len(y), 1, 12, 12, generator=g)
    return datasets.ImageDataset("synthetic", x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes=4)


def _one_call(forward, x, *args, **kwargs) -> float:
    forward(x)
    return float(len(x))


@pytest.fixture
def fast_timing(monkeypatch):
    """Throughput from one call (the figures are not under test here, and timing loops are slow)."""
    monkeypatch.setattr(demo, "images_per_second", _one_call)


def test_run_trains_both_variants_and_quantizes(fast_timing):
    results = demo.run(_tiny_data(), TINY, quiet=True)
    assert list(results) == ["fp32", "int8", "int8 PTQ"]
    for name in ("fp32", "int8"):
        r = results[name]
        assert len(r["loss"]) == len(r["test_acc_per_epoch"]) == len(r["epoch_s"]) == TINY.epochs
        assert r["test_acc"] == r["test_acc_per_epoch"][-1] and r["train_images_per_s"] > 0
    ptq = results["int8 PTQ"]
    # 9 convolutions (stem, 2 + 3 + 3 in the blocks) and the classifier
    assert 0 <= ptq["test_acc"] <= 1 and ptq["quantized_layers"] == 10 and ptq["float_layers"] == {}
    text = demo.table(results)
    assert all(name in text for name in results) and text.count("\n") == 4


def test_int8_training_learns_the_task():
    settings = demo.Settings(None, None, epochs=3, batch=32, width=4, lr=1e-2)
    torch.manual_seed(0)
    model = demo.SmallResNet(settings.width, 4)
    torch_int8.convert(model)
    history = demo.train(model, _tiny_data(192, 96), settings, "int8", quiet=True)
    assert history["test_acc"] > 0.5  # 4 classes: chance is 0.25


def _args(tmp_path: Path, **overrides) -> Namespace:
    base = dict(data=None, out=tmp_path / "out", device="cpu", epochs=None, train_images=None, ptq_models=[],
                ptq_batch=8, quiet=True)
    return Namespace(**{**base, **overrides})


def test_main_writes_summary_and_plots(tmp_path, monkeypatch, fast_timing, capsys):
    monkeypatch.setattr(demo, "load_fashion_mnist", lambda path, fallback: _tiny_data())
    monkeypatch.setattr(demo, "CPU_SETTINGS", TINY)
    summary = demo.main(_args(tmp_path, epochs=1))
    out = tmp_path / "out"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["settings"]["epochs"] == 1 and saved["dataset"] == "synthetic"
    assert set(saved["results"]) == {"fp32", "int8", "int8 PTQ"} == set(summary["results"])
    assert (out / "curves.png").stat().st_size > 0 and (out / "speed.png").stat().st_size > 0
    assert "int8 PTQ" in capsys.readouterr().out


def test_plots_are_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert demo.write_plots({}, tmp_path) == []
    assert "matplotlib is not installed" in capsys.readouterr().out


@pytest.mark.parametrize("option, value", [("epochs", 0), ("train_images", -5)])
def test_non_positive_sizes_are_refused(tmp_path, option, value):
    with pytest.raises(ValueError, match=f"--{option.replace('_', '-')} must be positive"):
        demo._settings(_args(tmp_path, **{option: value}), torch.device("cpu"))


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no GPU"):
        demo._device("cuda")


@pytest.mark.parametrize("command, expected", [("info", "Versions, the GPU"), ("selfcheck", "int64 reference"),
                                               ("demo", "--ptq-models")])
def test_each_subcommand_prints_its_own_help(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m torch_int8 {command}") and expected in out


def test_cli_reports_bad_options_as_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--device", "cpu", "--epochs", "0"])
    assert exit_info.value.code == 2 and "--epochs must be positive" in capsys.readouterr().err


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2 and "COMMAND" in capsys.readouterr().err


def test_ptq_models_without_torchvision_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="needs a working torchvision"):
        demo._torchvision_model("resnet18")


def test_unknown_ptq_model_is_refused():
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001 - missing, or built for another torch
        pytest.skip(f"torchvision is not importable: {e}")
    with pytest.raises(ValueError, match="unknown torchvision"):
        demo._torchvision_model("not_a_model")


def test_fallback_without_scikit_learn_says_so(monkeypatch):
    monkeypatch.setattr(datasets, "find_fashion_mnist", lambda path=None: None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(FileNotFoundError, match="scikit-learn.*not installed"):
        datasets.load_fashion_mnist(fallback=True)


def test_fallback_to_digits_with_scikit_learn(monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(datasets, "find_fashion_mnist", lambda path=None: None)
    with pytest.warns(UserWarning, match="digits instead"):
        data = datasets.load_fashion_mnist(fallback=True)
    assert data.name == "digits" and data.train_x.shape[1:] == (1, 28, 28)
