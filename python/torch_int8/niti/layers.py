"""Integer-only layers: forward and backward on int8 tensors with power-of-two exponents.

Each layer's ``forward(x: IntTensor) -> IntTensor`` keeps what its backward needs (in training mode);
``backward(err, update, input_grad)`` takes the error of its output (an IntTensor), updates its
weights in integers through ``update`` and returns the error of its input, or None where
``input_grad`` is False (the first weight layer: nothing before it learns). The products run on
torch.ops.int8 (exact int32), every backend alike; accumulators come back to int8 by the shift rule
of arith.requantize.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from .. import _C
from .arith import INT8_MAX, IntTensor, add, quantize_input, requantize, shift_round, shift_to_bits

_ops = torch.ops.int8
MAX_DEPTH = _C.max_k  # the largest reduction an int8 product keeps exact in int32 (kernels.h kMaxK)


@dataclass
class WeightUpdate:
    """NITI's update: the int32 weight gradient shifted down to ``bits`` bits (a 0-d int tensor on
    the device, so a captured step follows the schedule), rounded pseudo-stochastically or
    stochastically, then W <- clip(W - grad, -127, 127). No learning rate, no momentum."""
    bits: torch.Tensor
    rounding: str = "pseudo_stochastic"
    generator: Optional[torch.Generator] = None

    def apply(self, weight: torch.Tensor, grad_acc: torch.Tensor) -> None:
        shift = shift_to_bits(grad_acc, self.bits)
        grad = shift_round(grad_acc, shift, self.rounding, self.generator)
        weight.copy_(torch.clamp(weight.long() - grad, -INT8_MAX, INT8_MAX).to(torch.int8))


class IntModule(torch.nn.Module):
    """A layer of the integer network (see the module docstring)."""

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        raise NotImplementedError

    @property
    def has_weights(self) -> bool:
        return any(name.endswith("weight") for name, _ in self.named_buffers())


def xavier_int8(shape: Sequence[int], generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Xavier-uniform float weights (drawn on the CPU from generator: the same on every device),
    quantized once: exp = ceil(log2 max|w|) - 7, data = round(w / 2^exp)."""
    w = torch.nn.init.xavier_uniform_(torch.empty(tuple(shape)), generator=generator)
    q = quantize_input(w)  # the images' power-of-two quantization
    return q.data, q.exp


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(e) for e in v]


def _sum_in_int64(product, n: int, chunk: int) -> torch.Tensor:
    """sum over batch chunks [i, i + chunk) of product(i, j) (int32 each), added in int64 (exact)."""
    total = product(0, min(chunk, n)).long()
    for i in range(chunk, n, chunk):
        total = total + product(i, min(i + chunk, n)).long()
    return total


class _WeightLayer(IntModule):
    def _init_weight(self, shape, generator: Optional[torch.Generator]) -> None:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        data, exp = xavier_int8(shape, generator)
        self.register_buffer("weight", data)
        self.register_buffer("weight_exp", exp)
        self._saved: Optional[IntTensor] = None

    def _save(self, x: IntTensor) -> None:
        self._saved = x if self.training else None

    def _take_saved(self) -> IntTensor:
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward: no forward in training mode to go back through")
        x, self._saved = self._saved, None
        return x


class Conv2d(_WeightLayer):
    """Integer convolution without bias (zero padding, any stride and padding, dilation 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        if min(self.in_channels, self.out_channels, *self.kernel_size, *self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"niti.Conv2d: channels, kernel_size and stride must be positive and padding "
                             f"non-negative, got {in_channels}, {out_channels}, {kernel_size}, {stride}, {padding}")
        taps = self.kernel_size[0] * self.kernel_size[1]
        if max(self.in_channels, self.out_channels) * taps > MAX_DEPTH:
            raise ValueError(f"niti.Conv2d: channels * kernel taps must be at most {MAX_DEPTH} (int32 exactness), "
                             f"got {max(self.in_channels, self.out_channels)} * {taps}")
        self._init_weight((self.out_channels, self.in_channels, *self.kernel_size), generator)

    def forward(self, x: IntTensor) -> IntTensor:
        if x.data.dim() != 4 or x.data.shape[1] != self.in_channels:
            raise ValueError(f"niti.Conv2d: expected int8 [N, {self.in_channels}, H, W], got {list(x.data.shape)}")
        self._save(x)
        acc = _ops.conv2d(x.data, self.weight, self.stride, self.padding, [1, 1], 1)
        return requantize(acc, x.exp + self.weight_exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        x = self._take_saved()
        err_in = None
        if input_grad:  # with the weights of the forward, before the update
            acc = _ops.conv2d_dgrad(err.data, self.weight, list(x.data.shape[2:]), self.stride, self.padding,
                                    [1, 1], 1)
            err_in = requantize(acc, err.exp + self.weight_exp)
        update.apply(self.weight, self._weight_grad(err.data, x.data))
        return err_in

    def _weight_grad(self, err: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact int64 dW: conv2d_wgrad over batch chunks of at most MAX_DEPTH output pixels."""
        pixels = err.shape[2] * err.shape[3]
        if pixels > MAX_DEPTH:
            raise ValueError(f"niti.Conv2d: at most {MAX_DEPTH} output pixels per image, got {pixels}")

        def wgrad(i, j):
            return _ops.conv2d_wgrad(err[i:j], x[i:j], self.kernel_size, self.stride, self.padding, [1, 1], 1)

        return _sum_in_int64(wgrad, err.shape[0], MAX_DEPTH // pixels)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}")


class Linear(_WeightLayer):
    """Integer fully connected layer without bias: y = x W^T."""

    def __init__(self, in_features: int, out_features: int, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if min(self.in_features, self.out_features) < 1:
            raise ValueError(f"niti.Linear: features must be positive, got {in_features}, {out_features}")
        if max(self.in_features, self.out_features) > MAX_DEPTH:
            raise ValueError(f"niti.Linear: features must be at most {MAX_DEPTH} (int32 exactness), "
                             f"got {in_features}, {out_features}")
        self._init_weight((self.out_features, self.in_features), generator)

    def forward(self, x: IntTensor) -> IntTensor:
        if x.data.dim() != 2 or x.data.shape[1] != self.in_features:
            raise ValueError(f"niti.Linear: expected int8 [N, {self.in_features}], got {list(x.data.shape)}")
        self._save(x)
        return requantize(_ops.gemm(x.data, self.weight.t()), x.exp + self.weight_exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        x = self._take_saved()
        err_in = requantize(_ops.gemm(err.data, self.weight), err.exp + self.weight_exp) if input_grad else None
        grad = _sum_in_int64(lambda i, j: _ops.gemm(err.data[i:j].t(), x.data[i:j]), err.data.shape[0], MAX_DEPTH)
        update.apply(self.weight, grad)
        return err_in

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}"


class ReLU(IntModule):
    """max(q, 0); the error passes where the input was positive."""

    def forward(self, x: IntTensor) -> IntTensor:
        self._positive = x.data > 0 if self.training else None
        return IntTensor(torch.clamp(x.data, min=0), x.exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        positive, self._positive = self._positive, None
        return IntTensor(torch.where(positive, err.data, torch.zeros_like(err.data)), err.exp)


class MaxPool2d(IntModule):
    """k x k max pooling with stride k on int8 (trailing rows / columns that fill no window are
    dropped, as torch's floor mode); the error goes to the first maximum of each window."""

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"niti.MaxPool2d: kernel_size must be a positive int (stride = kernel_size), "
                             f"got {kernel_size!r}")
        self.kernel_size = kernel_size

    def _windows(self, t: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, H/k, W/k, k*k], the taps of each window in row-major order."""
        k = self.kernel_size
        n, c, h, w = t.shape
        t = t[:, :, :h // k * k, :w // k * k]
        return t.reshape(n, c, h // k, k, w // k, k).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // k, w // k, k * k)

    def forward(self, x: IntTensor) -> IntTensor:
        if x.data.dim() != 4 or min(x.data.shape[2:]) < self.kernel_size:
            raise ValueError(f"niti.MaxPool2d: expected [N, C, H, W] of at least {self.kernel_size} pixels a side, "
                             f"got {list(x.data.shape)}")
        windows = self._windows(x.data)
        out = windows.amax(-1)
        if self.training:  # the first tap holding the maximum: the taps from last to first, each
            # taking the place where it holds the maximum (deterministic everywhere; an amin over
            # the k*k taps of every window was ~20x slower on the CPU)
            first = torch.zeros_like(out, dtype=torch.int64)
            for tap in range(windows.shape[-1] - 1, -1, -1):
                first = torch.where(windows[..., tap] == out, tap, first)
            self._first = first
            self._input_shape = x.data.shape
        return IntTensor(out, x.exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        k = self.kernel_size
        n, c, h, w = self._input_shape
        taps = torch.arange(k * k, device=err.data.device)
        spread = torch.where(taps == self._first.unsqueeze(-1), err.data.unsqueeze(-1), torch.zeros_like(taps,
                             dtype=err.data.dtype))
        ho, wo = h // k, w // k
        spread = spread.reshape(n, c, ho, wo, k, k).permute(0, 1, 2, 4, 3, 5).reshape(n, c, ho * k, wo * k)
        full = torch.nn.functional.pad(spread, (0, w - wo * k, 0, h - ho * k))
        self._first = None
        return IntTensor(full, err.exp)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class GlobalSumPool(IntModule):
    """[N, C, H, W] -> [N, C]: the sum over the pixels (exact int32), requantized; the error of each
    pixel is the error of its channel's sum."""

    def forward(self, x: IntTensor) -> IntTensor:
        if x.data.dim() != 4:
            raise ValueError(f"niti.GlobalSumPool: expected [N, C, H, W], got {list(x.data.shape)}")
        self._input_shape = x.data.shape
        return requantize(x.data.sum((2, 3), dtype=torch.int32), x.exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        return IntTensor(err.data[:, :, None, None].expand(self._input_shape).contiguous(), err.exp)


class Flatten(IntModule):
    def forward(self, x: IntTensor) -> IntTensor:
        self._input_shape = x.data.shape
        return IntTensor(x.data.reshape(x.data.shape[0], -1), x.exp)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        return IntTensor(err.data.reshape(self._input_shape), err.exp)


_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer on int64 holding values below 2^32 (multipliers below 2^31, so no product
    overflows int64): the same bits on every device, no generator state."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


class Dropout(IntModule):
    """Drops half of the elements in training and doubles the rest (exponent + 1). The mask is a
    hash of (seed, call count, element index): reproducible from the seed, identical on every
    device, and graph-safe (the call count is a device tensor counted up in place)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = int(seed) & _MASK32
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x: IntTensor) -> IntTensor:
        if not self.training:
            return x
        index = torch.arange(x.data.numel(), device=x.data.device, dtype=torch.int64).reshape(x.data.shape)
        key = _hash32(self.calls ^ _hash32(torch.full_like(self.calls, self.seed)))
        self._keep = (_hash32((index & _MASK32) ^ key) & 1).bool()
        self.calls.add_(1)
        return IntTensor(torch.where(self._keep, x.data, torch.zeros_like(x.data)), x.exp + 1)

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        keep, self._keep = self._keep, None
        return IntTensor(torch.where(keep, err.data, torch.zeros_like(err.data)), err.exp + 1)


class Sequential(IntModule):
    """Layers in order; backward in reverse, asking a layer for its input's error only where a layer
    before it has weights."""

    def __init__(self, *layers: IntModule):
        super().__init__()
        for layer in layers:
            if not isinstance(layer, IntModule):
                raise TypeError(f"niti.Sequential: layers must be niti layers, got {type(layer).__name__}")
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x: IntTensor) -> IntTensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        learns_before = [input_grad]
        for layer in self.layers[:-1]:
            learns_before.append(learns_before[-1] or layer.has_weights)
        for layer, needed in zip(reversed(self.layers), reversed(learns_before)):
            err = layer.backward(err, update, needed)
            if err is None:
                return None
        return err


class ResidualBlock(IntModule):
    """out = relu(shortcut(x) + 2^-shift * branch(x)), branch = conv3x3 (stride) - relu - conv3x3,
    shortcut = x, or a 1x1 convolution with the stride where the shape changes. No BatchNorm: the
    block's power-of-two scale 2^-shift keeps the residual sum dominated by the shortcut (it is free:
    an exponent change), and the add aligns both exponents exactly (arith.add)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shift: int = 1,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if not isinstance(shift, int) or shift < 0:
            raise ValueError(f"niti.ResidualBlock: shift must be a non-negative int, got {shift!r}")
        self.shift = shift
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, generator)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, generator)
        self.projection = (Conv2d(in_channels, out_channels, 1, stride, 0, generator)
                           if stride != 1 or in_channels != out_channels else None)
        self.relu_out = ReLU()

    def _scaled(self, t: IntTensor, by: int) -> IntTensor:
        return IntTensor(t.data, (t.exp + by).to(torch.int32))

    def forward(self, x: IntTensor) -> IntTensor:
        branch = self._scaled(self.conv2(self.relu1(self.conv1(x))), -self.shift)
        shortcut = x if self.projection is None else self.projection(x)
        return self.relu_out(add(shortcut, branch))

    def backward(self, err: IntTensor, update: WeightUpdate, input_grad: bool) -> Optional[IntTensor]:
        err = self.relu_out.backward(err, update, True)
        err_branch = self.conv2.backward(self._scaled(err, -self.shift), update, True)
        err_branch = self.conv1.backward(self.relu1.backward(err_branch, update, True), update, input_grad)
        err_shortcut = err if self.projection is None else self.projection.backward(err, update, input_grad)
        return add(err_branch, err_shortcut) if input_grad else None

    def extra_repr(self) -> str:
        return f"shift={self.shift}"
