"""One integer-only training step, the gradient bit-width schedule, and integer inference."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import torch

from .loss import cross_entropy_error
from .models import Network

# NITI's schedule for 200 epochs (5 bits from epoch 0, 4 from 100, 3 from 150), as fractions of the run.
NITI_SCHEDULE: Tuple[Tuple[float, int], ...] = ((0.0, 5), (0.5, 4), (0.75, 3))


def _check_step_inputs(model, images: torch.Tensor, labels: torch.Tensor) -> None:
    if not isinstance(model, Network):
        raise TypeError(f"train_step: model must be a torch_int8.niti Network (vgg_small, lenet5, resnet), "
                        f"got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise ValueError(f"train_step: images must be a float tensor [N, C, H, W], got "
                         f"{getattr(images, 'dtype', type(images))} {list(getattr(images, 'shape', []))}")
    if images.shape[0] == 0:
        raise ValueError("train_step: empty batch")
    if images.device != model.grad_bits.device:
        raise ValueError(f"train_step: images on {images.device}, model on {model.grad_bits.device}")


def train_step(model: Network, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Forward, integer cross-entropy error, backward and integer weight update of every layer, all
    on the device without a host read (capturable in a CUDA graph). Returns the batch's mean
    cross-entropy (float32 0-d tensor, of the dequantized logits; a metric)."""
    _check_step_inputs(model, images, labels)
    model.train()
    logits = model(images)
    err, loss = cross_entropy_error(logits, labels, model.rounding, model.generator)
    model.backward(err, model.weight_update())
    return loss


@torch.no_grad()
def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> Tuple[float, float]:
    """(mean cross-entropy, accuracy) of an integer Network or a float torch.nn model over a dataset."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for i in range(0, images.shape[0], batch_size):
        x, y = images[i:i + batch_size], labels[i:i + batch_size]
        out = model(x)
        logits = out.dequantize() if isinstance(model, Network) else out.float()
        loss_sum += torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(images.shape[0], 1)
    return float(loss_sum) / n, int(correct) / n


@dataclass(frozen=True)
class GradBitsSchedule:
    """The weight gradients' bit width by epoch: ``milestones`` (fraction of the run, bits), from
    fraction 0; NITI's 5 / 4 / 3 at 0 / 0.5 / 0.75 by default."""
    epochs: int
    milestones: Sequence[Tuple[float, int]] = NITI_SCHEDULE

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"GradBitsSchedule: epochs must be a positive int, got {self.epochs!r}")
        starts = [start for start, _ in self.milestones]
        if not starts or starts[0] != 0 or starts != sorted(starts) or starts[-1] >= 1:
            raise ValueError(f"GradBitsSchedule: milestones must start at fraction 0 and increase below 1, "
                             f"got {self.milestones!r}")
        if any(not isinstance(bits, int) or not 1 <= bits <= 7 for _, bits in self.milestones):
            raise ValueError(f"GradBitsSchedule: bits must be ints in [1, 7], got {self.milestones!r}")

    def bits(self, epoch: int) -> int:
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"GradBitsSchedule: epoch must be in [0, {self.epochs}), got {epoch!r}")
        return [bits for start, bits in self.milestones if epoch >= start * self.epochs][-1]


def float_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     labels: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The float comparison's step: cross-entropy, backward, optimizer step (bf16 autocast if asked)."""
    model.train()
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float()
