"""Trains the demo's small ResNet on Fashion-MNIST (briefly, on the CPU), quantizes it for INT8
inference (torch_int8.quantize_model) and exports it for C++ (torch_int8.export_model). Writes to --out:

  model.pt2     the AOTInductor package that examples/deploy's C++ program runs
  test_set.pt   the normalized test images and their labels (torch.save; C++ reads it with torch::pickle_load)
  expected.txt  the test accuracy of the quantized model evaluated here, in the line the C++ program prints

    python examples/deploy/export_model.py --out build/deploy-model
    ./build/deploy/fashion_mnist_int8 build/deploy-model      # prints the line of expected.txt
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

import torch_int8
from torch_int8.datasets import load_fashion_mnist
from torch_int8.demo import CPU_SETTINGS, SmallResNet, Settings, evaluate, post_training_quantize, subset, train

# Images per forward call, here and in main.cpp (kBatch): both sides run the same batches.
EVAL_BATCH = 1000


def accuracy_line(correct: int, total: int) -> str:
    """The line main.cpp prints (its printf format)."""
    return f"test accuracy {correct}/{total} = {correct / total:.4f}"


def quantized_model(settings: Settings, data_dir, quiet: bool):
    """(quantize_model result of the trained SmallResNet, the data it was trained on, the float model's
    test accuracy)."""
    data = subset(load_fashion_mnist(data_dir, fallback=True), settings)
    torch.manual_seed(settings.seed)
    model = SmallResNet(settings.width, data.num_classes)
    float_acc = train(model, data, settings, "fp32", quiet)["test_acc"]
    return post_training_quantize(model, data, settings), data, float_acc


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for model.pt2, test_set.pt, expected.txt")
    parser.add_argument("--data", type=Path, default=None, help="folder with the Fashion-MNIST IDX .gz files "
                        "(default: as `python -m torch_int8 demo` looks for them)")
    parser.add_argument("--train-images", type=int, default=CPU_SETTINGS.train_images,
                        help="default: %(default)s, as the demo on the CPU")
    parser.add_argument("--epochs", type=int, default=CPU_SETTINGS.epochs, help="default: %(default)s")
    parser.add_argument("--test-images", type=int, default=None, help="default: the whole test set")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    settings = replace(CPU_SETTINGS, train_images=args.train_images, epochs=args.epochs, test_images=args.test_images)
    start = time.perf_counter()
    qmodel, data, float_acc = quantized_model(settings, args.data, args.quiet)
    correct = round(evaluate(qmodel, data, EVAL_BATCH) * len(data.test_y))
    args.out.mkdir(parents=True, exist_ok=True)
    torch_int8.export_model(qmodel, data.test_x[:EVAL_BATCH], args.out / "model.pt2")
    # clone: a slice of the loaded test set would save the whole set's storage.
    torch.save({"images": data.test_x.clone(), "labels": data.test_y.clone()}, args.out / "test_set.pt")
    line = accuracy_line(correct, len(data.test_y))
    (args.out / "expected.txt").write_text(line + "\n")
    print(f"{data.name}: {len(data.train_y)} training images, {settings.epochs} epochs, float test accuracy "
          f"{float_acc:.4f}; quantized model (Python) {line}; exported to {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
