"""python -m torch_int8 demo: train a small ResNet on Fashion-MNIST in bf16 and in INT8, quantize it for
INT8 inference, and compare the three.

1. bf16: torch.nn layers under bf16 autocast (fp32 on the CPU).
2. INT8 training: the same network after torch_int8.convert (Conv2d / Linear forward, grad_input and
   grad_weight as INT8 products).
3. INT8 inference: the bf16-trained network after torch_int8.quantize_model (post-training
   quantization: BatchNorm folded, static scales from calibration, int8 between convolutions).

Prints a table (test accuracy, time per epoch, training and inference images/s), writes curves.png,
speed.png and summary.json to --out. On a GPU it trains on the full data set; on the CPU (torch's
int8 matrix product inside the project's quantize and rescale loops) on a subset for fewer epochs
(under a minute on 2 cores).
--ptq-models times quantize_model on torchvision ImageNet models against bf16 (eager and compiled).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import torch_int8
from torch_int8 import distributed
from torch_int8.datasets import ImageDataset, load_fashion_mnist


@dataclass(frozen=True)
class Settings:
    """What one demo run trains: the data used, the network's width, the schedule."""
    train_images: Optional[int]  # None: all
    test_images: Optional[int]
    epochs: int
    batch: int
    width: int
    lr: float = 3e-3
    calibration_images: int = 512
    seed: int = 0


GPU_SETTINGS = Settings(train_images=None, test_images=None, epochs=5, batch=256, width=32)
# Sized so that the whole CPU demo (two trainings, three evaluations) takes a few minutes on 2 cores.
CPU_SETTINGS = Settings(train_images=3072, test_images=1024, epochs=2, batch=64, width=8, lr=5e-3)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 Conv-BN, ReLU between and after the residual addition."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """28x28 grey images: a 3x3 stem, three basic blocks (width, 2x width at 14x14, 4x width at 7x7)."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, 2 * width, 2),
                                    BasicBlock(2 * width, 4 * width, 2))
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


def _progress(iterable, desc: str, quiet: bool):
    """A tqdm bar over iterable (the plain iterable when quiet or without tqdm)."""
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    """bf16 autocast on the GPU; fp32 on the CPU (bf16 autocast there is slower and not what users run)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _memory_format(device: torch.device) -> torch.memory_format:
    # NHWC is the fastest layout of both cuDNN's bf16 and the INT8 convolutions on the GPU.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def subset(data: ImageDataset, settings: Settings) -> ImageDataset:
    """The first train_images / test_images images of each split (all where None)."""
    return ImageDataset(data.name, data.train_x[:settings.train_images], data.train_y[:settings.train_images],
                        data.test_x[:settings.test_images], data.test_y[:settings.test_images], data.num_classes)


def train(model: nn.Module, data: ImageDataset, settings: Settings, desc: str, quiet: bool = False) -> Dict:
    """Trains model (AdamW, one-cycle schedule); returns per-epoch loss, test accuracy and seconds, the
    final test accuracy and the training throughput."""
    device = data.train_x.device
    net = distributed.data_parallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    steps = (distributed.share(len(data.train_y)) + settings.batch - 1) // settings.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.epochs * steps)
    g = torch.Generator().manual_seed(settings.seed)
    history = {"loss": [], "test_acc_per_epoch": [], "epoch_s": []}
    for epoch in range(settings.epochs):
        model.train()
        perm = distributed.epoch_indices(len(data.train_y), epoch, settings.seed, g).to(device)
        losses = []
        _sync(device)
        start = time.perf_counter()
        for i in _progress(range(steps), f"{desc} epoch {epoch + 1}/{settings.epochs}", quiet):
            idx = perm[i * settings.batch:(i + 1) * settings.batch]
            with _autocast(device):
                loss = F.cross_entropy(net(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.detach())
        _sync(device)
        history["epoch_s"].append(time.perf_counter() - start)
        history["loss"].append(float(distributed.mean(torch.stack(losses).float().mean())))
        history["test_acc_per_epoch"].append(evaluate(model, data))
    history["test_acc"] = history["test_acc_per_epoch"][-1]
    history["train_images_per_s"] = len(data.train_y) / (sum(history["epoch_s"]) / settings.epochs)
    return history


def _batches(x: torch.Tensor, batch: int):
    return (x[i:i + batch] for i in range(0, len(x), batch))


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset, batch: int = 1000) -> float:
    """Test accuracy (model in eval mode, under the demo's autocast)."""
    model.eval()
    with _autocast(data.test_x.device):
        correct = sum(int((model(x).argmax(1) == y).sum())
                      for x, y in zip(_batches(data.test_x, batch), _batches(data.test_y, batch)))
    return correct / len(data.test_y)


@torch.no_grad()
def images_per_second(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      min_seconds: float = 1.0, warmup: int = 3) -> float:
    """Inference throughput of forward on batch x: repeated until min_seconds have passed (GPU synced)."""
    for _ in range(warmup):
        forward(x)
    _sync(x.device)
    calls, start = 0, time.perf_counter()
    while True:
        forward(x)
        calls += 1
        _sync(x.device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls * len(x) / elapsed


def _autocast_forward(model: nn.Module, device: torch.device):
    def forward(x):
        with _autocast(device):
            return model(x)
    return forward


def post_training_quantize(model: nn.Module, data: ImageDataset, settings: Settings) -> torch.fx.GraphModule:
    """quantize_model on a copy of model in the inference dtype (bf16 on the GPU), calibrated on
    training images."""
    dtype = torch.bfloat16 if data.train_x.device.type == "cuda" else torch.float32
    float_model = copy.deepcopy(model).eval().to(dtype)
    calibration = data.train_x[:settings.calibration_images].to(dtype)
    return torch_int8.quantize_model(float_model, list(_batches(calibration, settings.batch)))


def _evaluate_ptq(qmodel: nn.Module, data: ImageDataset, batch: int) -> Dict:
    dtype = torch.bfloat16 if data.test_x.device.type == "cuda" else torch.float32
    test = ImageDataset(data.name, data.train_x, data.train_y, data.test_x.to(dtype), data.test_y)
    return {"test_acc": evaluate(qmodel, test), "inference_images_per_s": images_per_second(qmodel, test.test_x[:batch])}


def run(data: ImageDataset, settings: Settings, quiet: bool = False) -> Dict:
    """The three variants on data (already on its device): {variant: results}."""
    device = data.train_x.device
    results, trained = {}, {}
    for variant in ("bf16" if device.type == "cuda" else "fp32", "int8"):
        torch.manual_seed(settings.seed)
        model = SmallResNet(settings.width, data.num_classes).to(device, memory_format=_memory_format(device))
        if variant == "int8":
            model = torch_int8.convert(model)
        results[variant] = train(model, data, settings, variant, quiet)
        results[variant]["inference_images_per_s"] = images_per_second(
            _autocast_forward(model.eval(), device), data.test_x[:settings.batch])
        trained[variant] = model
    float_variant = next(iter(trained))
    qmodel = post_training_quantize(trained[float_variant], data, settings)
    results["int8 PTQ"] = _evaluate_ptq(qmodel, data, settings.batch)
    results["int8 PTQ"]["quantized_layers"] = len(qmodel.quantization_report.quantized)
    results["int8 PTQ"]["float_layers"] = qmodel.quantization_report.skipped
    return results


def table(results: Dict) -> str:
    """The results as a fixed-width text table."""
    header = f"{'variant':<10} {'test acc':>9} {'s / epoch':>10} {'train img/s':>12} {'infer img/s':>12}"
    rows = [header, "-" * len(header)]
    for name, r in results.items():
        epoch = f"{sum(r['epoch_s']) / len(r['epoch_s']):.2f}" if "epoch_s" in r else "-"
        train_rate = f"{r['train_images_per_s']:.0f}" if "train_images_per_s" in r else "-"
        rows.append(f"{name:<10} {r['test_acc']:>9.4f} {epoch:>10} {train_rate:>12} "
                    f"{r['inference_images_per_s']:>12.0f}")
    return "\n".join(rows)


def write_plots(results: Dict, out: Path) -> List[Path]:
    """curves.png (training loss and test accuracy per epoch) and speed.png (throughput bars); none, with
    a message, without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    trained = {k: r for k, r in results.items() if "loss" in r}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in trained.items():
        epochs = range(1, len(r["loss"]) + 1)
        ax_loss.plot(epochs, r["loss"], marker="o", label=name)
        ax_acc.plot(epochs, r["test_acc_per_epoch"], marker="o", label=name)
    ax_acc.axhline(results["int8 PTQ"]["test_acc"], color="C2", linestyle="--", label="int8 PTQ")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    paths = [out / "curves.png", out / "speed.png"]
    fig.savefig(paths[0], dpi=120)
    fig, (ax_train, ax_infer) = plt.subplots(1, 2, figsize=(10, 4))
    ax_train.bar(list(trained), [r["train_images_per_s"] for r in trained.values()], color=["C0", "C1"])
    ax_infer.bar(list(results), [r["inference_images_per_s"] for r in results.values()], color=["C0", "C1", "C2"])
    ax_train.set(ylabel="images / s", title="training throughput")
    ax_infer.set(ylabel="images / s", title="inference throughput")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=120)
    plt.close("all")
    return paths


def _torchvision_model(name: str):
    try:
        import torchvision
    except Exception as e:  # also a torchvision whose compiled ops do not match torch (a RuntimeError)
        raise ImportError(f"--ptq-models needs a working torchvision ({type(e).__name__}: {e})") from e
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"unknown torchvision classification model {name!r}")
    return torchvision.models.get_model(name, weights=None)


def ptq_benchmark(names: List[str], batch: int = 256, image_size: int = 224, device: str = "cuda",
                  compile_baseline: bool = True, min_seconds: float = 2.0) -> Dict[str, Dict[str, float]]:
    """Inference images/s of torchvision models (random weights; BatchNorm statistics from a few
    training-mode batches, so folding has real values): bf16 eager and torch.compile'd, channels_last,
    against quantize_model's INT8 model (bf16 between its int8 layers). {name: {method: images/s}}."""
    device = torch.device(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device).to(torch.bfloat16,
                                                                          memory_format=torch.channels_last)
    rates = {}
    for name in names:
        model = _torchvision_model(name).to(device, torch.bfloat16, memory_format=torch.channels_last)
        with torch.no_grad():
            model.train()(x[:32])  # BatchNorm running statistics
        model.eval()
        row = {"bf16 eager": images_per_second(model, x, min_seconds)}
        if compile_baseline:
            row["bf16 compiled"] = images_per_second(torch.compile(model), x, min_seconds)
        qmodel = torch_int8.quantize_model(model, [x[:32]])
        row["int8 PTQ eager"] = images_per_second(qmodel, x, min_seconds)
        rates[name] = row
        print(name, ", ".join(f"{k} {v:.0f} img/s" for k, v in row.items()), flush=True)
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with the four Fashion-MNIST IDX .gz files (default: the Debian package "
                             "dataset-fashion-mnist, then ../shared/data/fashion-mnist; else scikit-learn's digits)")
    parser.add_argument("--out", type=Path, default=Path("torch_int8_demo"),
                        help="folder for summary.json, curves.png, speed.png (default: %(default)s)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None,
                        help="default: cuda where a GPU is visible, else cpu (a reduced run)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 5 on the GPU, 2 on the CPU")
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on the first N images (default: all on the GPU, 3072 on the CPU)")
    parser.add_argument("--ptq-models", nargs="*", default=[], metavar="NAME",
                        help="also time quantize_model on these torchvision models (e.g. resnet18 resnet50) "
                             "against bf16 eager and compiled, channels_last (GPU)")
    parser.add_argument("--ptq-batch", type=int, default=256, help="batch of --ptq-models (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--distributed", action="store_true",
                        help="under torchrun: train with DistributedDataParallel, each rank on its share of "
                             "every epoch (gloo on the CPU, nccl on the GPU); rank 0 prints and writes the files")


def _settings(args: argparse.Namespace, device: torch.device) -> Settings:
    base = GPU_SETTINGS if device.type == "cuda" else CPU_SETTINGS
    overrides = {"epochs": args.epochs, "train_images": args.train_images}
    for key, value in overrides.items():
        if value is not None and value <= 0:
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {value}")
    return Settings(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


def _device(name: Optional[str]) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no GPU is visible to torch")
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def main(args: argparse.Namespace) -> Dict:
    if not getattr(args, "distributed", False):
        return _main(args, _device(args.device))
    device = distributed.init_from_env(_device(args.device).type)
    try:
        return _main(args, device)
    finally:
        distributed.shutdown()


def _main(args: argparse.Namespace, device: torch.device) -> Dict:
    settings = _settings(args, device)
    main_process = distributed.is_main_process()
    say = print if main_process else lambda *_, **__: None
    data = subset(load_fashion_mnist(args.data, fallback=True), settings).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    say(f"torch_int8 {torch_int8.__version__} demo on {name}: {data.name}, {len(data.train_y)} training / "
        f"{len(data.test_y)} test images, {settings.epochs} epochs, SmallResNet width {settings.width}")
    start = time.perf_counter()
    results = run(data, settings, args.quiet or not main_process)
    summary = {"device": name, "torch": torch.__version__, "torch_int8": torch_int8.__version__,
               "dataset": data.name, "train_images": len(data.train_y), "test_images": len(data.test_y),
               "settings": asdict(settings), "world_size": distributed.world_size(), "results": results}
    if args.ptq_models and main_process:
        summary["ptq_benchmark"] = {"batch": args.ptq_batch, "images_per_s": ptq_benchmark(
            args.ptq_models, args.ptq_batch, device=device.type)}
    summary["seconds"] = time.perf_counter() - start
    say(table(results))
    if not main_process:
        return summary
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    written = [args.out / "summary.json"] + write_plots(results, args.out)
    print(f"{summary['seconds']:.0f} s; wrote " + ", ".join(str(p) for p in written))
    return summary
