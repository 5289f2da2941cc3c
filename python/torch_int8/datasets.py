"""Fashion-MNIST for the examples, the demo and the NITI trainer, found without a download.

Where the IDX files are looked for, in order: the `path` argument (a `--data` option); the Debian
package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist); ../shared/data/fashion-mnist beside
this repository's checkout (its CI). Where none holds them, `load_fashion_mnist(fallback=True)` says how
to get the data and returns scikit-learn's bundled 8x8 digits instead, upscaled to 28x28, so that a
command always runs.
"""
from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# python/torch_int8/datasets.py -> the checkout's parent holds shared/ (the repository's CI layout).
CHECKOUT_SHARED_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
HOW_TO_GET = ("Fashion-MNIST was not found. Pass --data DIR (a folder with the four IDX .gz files from "
              "github.com/zalandoresearch/fashion-mnist), or on Debian / Ubuntu: "
              "apt-get install dataset-fashion-mnist")
# Fashion-MNIST's pixel mean and standard deviation (of [0, 1] values over the training set).
MEAN, STD = 0.2860, 0.3530


@dataclass
class ImageDataset:
    """Normalized images [N, 1, H, W] float32 and labels [N] int64 of both splits."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10

    def to(self, device) -> "ImageDataset":
        return ImageDataset(self.name, self.train_x.to(device), self.train_y.to(device), self.test_x.to(device),
                            self.test_y.to(device), self.num_classes)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (.gz) as a uint8 array of the shape its header gives."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find_fashion_mnist(path: Optional[str | Path] = None) -> Optional[Path]:
    """The first folder holding the four files: `path`, the Debian package's, the checkout's shared/."""
    candidates = [Path(path)] if path is not None else [DEBIAN_DIR, CHECKOUT_SHARED_DIR]
    for folder in candidates:
        if all((folder / f).is_file() for pair in FILES.values() for f in pair):
            return folder
    return None


def _split(folder: Path, split: str):
    images, labels = (read_idx(folder / f) for f in FILES[split])
    x = torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
    return x, torch.from_numpy(labels.copy()).long()


def _digits() -> ImageDataset:
    """scikit-learn's bundled digits (1797 8x8 images), upscaled to 28x28, 80 / 20 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise FileNotFoundError(HOW_TO_GET + "; the fallback data set, scikit-learn's digits, needs scikit-learn, "
                                "which is not installed either (pip install scikit-learn)") from e

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(digits.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = len(y) * 4 // 5
    return ImageDataset("digits", x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]])


def load_fashion_mnist(path: Optional[str | Path] = None, fallback: bool = False) -> ImageDataset:
    """Fashion-MNIST, normalized; with fallback, the digits where Fashion-MNIST is not found."""
    folder = find_fashion_mnist(path)
    if folder is None:
        if path is not None or not fallback:
            where = f" in {path}" if path is not None else ""
            raise FileNotFoundError(HOW_TO_GET + (f" (looked{where})" if where else ""))
        digits = _digits()  # raises first where scikit-learn is missing too
        warnings.warn(HOW_TO_GET + "; using scikit-learn's digits instead", stacklevel=2)
        return digits
    (train_x, train_y), (test_x, test_y) = _split(folder, "train"), _split(folder, "test")
    return ImageDataset("fashion-mnist", train_x, train_y, test_x, test_y)
