"""Train an integer-only network (or, with --float, the same network in fp32) on Fashion-MNIST.

    python -m torch_int8.niti.train --model vgg-small-7 --dataset fashion-mnist --epochs 10 --seed 0 \
        --out benchmarks/results/niti_vgg7_int_s0
    python -m torch_int8.niti.train --model vgg-small-7 --dataset fashion-mnist --epochs 10 --seed 0 --float \
        --out benchmarks/results/niti_vgg7_float_s0

Images are padded from 28x28 to 32x32 (with the background value), one input channel. Writes
PREFIX.json (arguments, per-epoch train loss, test loss and accuracy, gradient bits, seconds) and
PREFIX.png (accuracy and loss curves). The integer run follows NITI's gradient bit-width schedule
(5 / 4 / 3 bits over the first half / next quarter / last quarter of the epochs); the float run
uses SGD with momentum and a cosine learning rate (bf16 autocast with --bf16 on CUDA).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..datasets import MEAN, STD, load_fashion_mnist
from .models import MODEL_NAMES, Network, by_name
from .step import GradBitsSchedule, evaluate, float_train_step, train_step

IMAGE_SIZE = 32
BACKGROUND = -MEAN / STD  # a black pixel, normalized


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m torch_int8.niti.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vgg-small-7", help=f"{', '.join(MODEL_NAMES)} (resnet-<6n+2>)")
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--float", dest="float_model", action="store_true", help="train the fp32 network instead")
    p.add_argument("--bf16", action="store_true", help="with --float on CUDA: bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder of the Fashion-MNIST IDX files (default: found)")
    p.add_argument("--out", default=None, help="PREFIX of PREFIX.json and PREFIX.png (default: niti_<model>)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounding", default="pseudo_stochastic", choices=["pseudo_stochastic", "stochastic"])
    p.add_argument("--lr", type=float, default=0.01, help="float run: SGD learning rate (cosine to 0)")
    p.add_argument("--momentum", type=float, default=0.9, help="float run: SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="float run: SGD weight decay")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "limit", "test_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.bf16 and not args.float_model:
        p.error("--bf16 applies to the float run: add --float")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU")
    return args


def load_data(args):
    """(train x, train y, test x, test y) on the device, 32x32, limited as asked."""
    data = load_fashion_mnist(args.data)
    pad = (IMAGE_SIZE - data.train_x.shape[-1]) // 2

    def prepare(x, y, limit):
        x, y = x[:limit], y[:limit]
        return F.pad(x, (pad, pad, pad, pad), value=BACKGROUND).to(args.device), y.to(args.device)

    return (*prepare(data.train_x, data.train_y, args.limit), *prepare(data.test_x, data.test_y, args.test_limit))


def build(args):
    kwargs = {}
    if not args.float_model:
        generator = torch.Generator(args.device).manual_seed(args.seed) if args.rounding == "stochastic" else None
        kwargs = dict(rounding=args.rounding, generator=generator)
    torch.manual_seed(args.seed)  # the float run's dropout
    return by_name(args.model, 1, IMAGE_SIZE, args.seed, float_model=args.float_model, **kwargs).to(args.device)


class _FloatTrainer:
    def __init__(self, model, args, steps: int):
        self.model, self.bf16 = model, args.bf16
        self.optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                         weight_decay=args.weight_decay)
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, steps)

    def start_epoch(self, epoch: int):
        return None

    def step(self, x, y):
        loss = float_train_step(self.model, self.optimizer, x, y, self.bf16)
        self.schedule.step()
        return loss


class _IntTrainer:
    def __init__(self, model: Network, args):
        self.model, self.schedule = model, GradBitsSchedule(args.epochs)

    def start_epoch(self, epoch: int) -> int:
        bits = self.schedule.bits(epoch)
        self.model.set_grad_bits(bits)
        return bits

    def step(self, x, y):
        return train_step(self.model, x, y)


def run(args) -> dict:
    from tqdm import tqdm

    train_x, train_y, test_x, test_y = load_data(args)
    model = build(args)
    batches = -(-train_x.shape[0] // args.batch_size)
    trainer = _FloatTrainer(model, args, batches * args.epochs) if args.float_model else _IntTrainer(model, args)
    order = torch.Generator().manual_seed(args.seed)  # the same batches on every device
    log = {"model": args.model, "dataset": args.dataset, "integer": not args.float_model, "seed": args.seed,
           "device": args.device, "train_images": train_x.shape[0], "test_images": test_x.shape[0],
           "args": vars(args), "epochs": []}
    for epoch in range(args.epochs):
        bits = trainer.start_epoch(epoch)
        perm = torch.randperm(train_x.shape[0], generator=order).to(args.device)
        loss_sum = torch.zeros((), device=args.device)
        start = time.time()
        bar = tqdm(range(batches), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        for b in bar:
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            loss_sum += trainer.step(train_x[idx], train_y[idx]) * idx.numel()
        train_loss = float(loss_sum) / train_x.shape[0]
        seconds = time.time() - start
        test_loss, test_acc = evaluate(model, test_x, test_y)
        row = {"epoch": epoch + 1, "grad_bits": bits, "train_loss": train_loss, "test_loss": test_loss,
               "test_accuracy": test_acc, "seconds": seconds}
        log["epochs"].append(row)
        tqdm.write(f"epoch {epoch + 1}: train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
                   f"test accuracy {test_acc:.4f}" + (f"  grad bits {bits}" if bits else "") + f"  {seconds:.1f} s")
    log["final_test_accuracy"] = log["epochs"][-1]["test_accuracy"]
    return log


def plot(log: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in log["epochs"]]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    acc.plot(epochs, [e["test_accuracy"] for e in log["epochs"]], marker="o")
    acc.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    for key in ("train_loss", "test_loss"):
        loss.plot(epochs, [e[key] for e in log["epochs"]], marker="o", label=key.replace("_", " "))
    loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    loss.legend()
    kind = "integer-only (NITI)" if log["integer"] else "fp32"
    fig.suptitle(f"{log['dataset']} {log['model']} {kind}, seed {log['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    log = run(args)
    prefix = args.out or f"niti_{args.model}{'_float' if args.float_model else ''}"
    json_path, png_path = Path(prefix + ".json"), Path(prefix + ".png")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(log, indent=1))
    plot(log, png_path)
    print(f"final test accuracy {log['final_test_accuracy']:.4f}; wrote {json_path} and {png_path}")
    return log


if __name__ == "__main__":
    main()
