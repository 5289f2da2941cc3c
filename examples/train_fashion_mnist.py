"""Train the same model on Fashion-MNIST in float and converted to INT8 by torch_int8.convert.

    python examples/train_fashion_mnist.py --model mlp --seeds 0 1 2 --epochs 5 \
        --out benchmarks/results/fashion_mnist_mlp
    python examples/train_fashion_mnist.py --model resnet --augment --epochs 15 \
        --out benchmarks/results/fashion_mnist_resnet

Models: mlp, vit (a TinyViT; every layer nn.Linear) and resnet (the CIFAR-style ResNet-18 of
`bench models`, one input channel, channels_last: its Conv2d -> BatchNorm2d -> ReLU chains become
fused INT8 steps that hand int8 activations on). Writes <out>.json (per-epoch loss and test
accuracy for both variants and every seed) and <out>.png (loss curves). The float baseline is bf16
autocast on a GPU and fp32 on the CPU; the INT8 variant is torch_int8.convert of the same model
(forward, grad_input and grad_weight in INT8).
"""
import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import torch_int8
from torch_int8.bench.cifar_resnet import CifarResNet18
from torch_int8.bench.plot import plot_float_int8_curves
from torch_int8.datasets import load_fashion_mnist


def mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


class TinyViT(torch.nn.Module):
    """7x7 patches of 4x4 pixels, 2 pre-norm transformer blocks (all projections nn.Linear)."""

    def __init__(self, dim=128, heads=4, depth=2):
        super().__init__()
        self.embed = torch.nn.Linear(16, dim)
        self.pos = torch.nn.Parameter(torch.zeros(1, 49, dim))
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({
            "n1": torch.nn.LayerNorm(dim), "qkv": torch.nn.Linear(dim, 3 * dim), "proj": torch.nn.Linear(dim, dim),
            "n2": torch.nn.LayerNorm(dim), "fc1": torch.nn.Linear(dim, 2 * dim), "fc2": torch.nn.Linear(2 * dim, dim),
        }) for _ in range(depth))
        self.heads, self.norm, self.head = heads, torch.nn.LayerNorm(dim), torch.nn.Linear(dim, 10)

    def forward(self, x):
        b = x.shape[0]
        p = x.reshape(b, 7, 4, 7, 4).permute(0, 1, 3, 2, 4).reshape(b, 49, 16)
        h = self.embed(p) + self.pos
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["n1"](h)).reshape(b, 49, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, 49, -1)
            h = h + blk["proj"](a)
            h = h + blk["fc2"](F.gelu(blk["fc1"](blk["n2"](h))))
        return self.head(self.norm(h).mean(1))


MODELS = {"mlp": mlp, "vit": TinyViT, "resnet": lambda: CifarResNet18(classes=10, in_channels=1)}


def augment(x, g):
    """Random horizontal flips and shifts of up to 2 pixels (zero padding), per image."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=g).to(x.device) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = (torch.randint(0, 5, (b,), generator=g).to(x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    out = padded[torch.arange(b, device=x.device)[:, None, None], 0, rows, cols].unsqueeze(1)
    return out.contiguous(memory_format=torch.channels_last)


def run(model_name, int8, seed, args, data):
    torch.manual_seed(seed)
    device = data[0][0].device
    model = MODELS[model_name]().to(device, memory_format=torch.channels_last)
    if int8:
        model = torch_int8.convert(model, torch_int8.Int8Config(grad_rounding=args.grad_rounding))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    (xtr, ytr), (xte, yte) = data
    steps = (len(xtr) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps)
    use_bf16 = device.type == "cuda"
    history = {"loss": [], "test_acc": []}
    g = torch.Generator(device="cpu").manual_seed(seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g).to(device)
        total = 0.0
        for i in range(steps):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            x = augment(xtr[idx], g) if args.augment else xtr[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        history["loss"].append(total / steps)
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for i in range(0, len(xte), 1000):
                correct += int((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum())
        history["test_acc"].append(correct / len(xte))
        print(f"{model_name} {'int8 ' if int8 else 'float'} seed {seed} epoch {epoch + 1}: "
              f"loss {history['loss'][-1]:.4f} test acc {history['test_acc'][-1]:.4f}", flush=True)
    return history


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--grad-rounding", choices=["nearest", "stochastic"], default="nearest",
                        help="rounding of the quantized output gradients in the INT8 variant")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder with the four Fashion-MNIST IDX .gz files (default: the Debian package "
                             "dataset-fashion-mnist, then ../shared/data/fashion-mnist beside the checkout; "
                             "else scikit-learn's digits, with a warning)")
    parser.add_argument("--augment", action="store_true", help="random flips and 2-pixel shifts of the training images")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="train and test on the first N images of each split (a quick check)")
    parser.add_argument("--out", type=Path, required=True, help="output prefix for .json and .png")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_fashion_mnist(args.data, fallback=True).to(device)
    channels_last = partial(torch.Tensor.contiguous, memory_format=torch.channels_last)
    data = ((channels_last(dataset.train_x[:args.limit]), dataset.train_y[:args.limit]),
            (channels_last(dataset.test_x[:args.limit]), dataset.test_y[:args.limit]))
    results = {"meta": {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dataset": dataset.name,
                        "torch": torch.__version__, "torch_int8": torch_int8.__version__,
                        "float_baseline": "bf16 autocast" if device.type == "cuda" else "fp32",
                        **{k: str(v) for k, v in vars(args).items()}}, "runs": {}}
    start = time.time()
    for variant in ("float", "int8"):
        for seed in args.seeds:
            results["runs"][f"{variant}/{seed}"] = run(args.model, variant == "int8", seed, args, data)
    final = {v: float(np.mean([results["runs"][f"{v}/{s}"]["test_acc"][-1] for s in args.seeds]))
             for v in ("float", "int8")}
    results["final_test_acc_mean"] = final
    results["seconds"] = time.time() - start
    print(f"mean final test accuracy: float {final['float']:.4f}  int8 {final['int8']:.4f}  "
          f"difference {100 * (final['int8'] - final['float']):+.2f} points")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    plot_float_int8_curves(str(args.out.with_suffix(".png")), {k: h["loss"] for k, h in results["runs"].items()},
                           xlabel="epoch", ylabel="training loss",
                           title=f"Fashion-MNIST {args.model}: float vs torch_int8.convert")


if __name__ == "__main__":
    main()
