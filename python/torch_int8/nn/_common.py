"""Pieces shared by the INT8 layers: the training layers (Linear, Conv2d) built over their torch.nn
originals, and the inference layers (QuantizedLinear, QuantizedConv2d) with int8 weight buffers."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional, Sequence

import torch

from ..config import Int8Config
from ..functional import QTensor, quantize


@torch.compiler.assume_constant_result
def _autocast_exists(device_type: str) -> bool:
    """torch.amp.is_autocast_available, a constant to torch.compile (torch 2.11's dynamo cannot
    trace the query)."""
    return torch.amp.is_autocast_available(device_type)


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for device_type; never on devices it does not exist for (meta)."""
    return _autocast_exists(device_type) and torch.is_autocast_enabled(device_type)


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a torch.nn layer would return for x: autocast's for x's device when it is on, else
    x's own. The INT8 products then run with autocast off (autocast_off), so that it cannot recast
    their operands."""
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if _autocast_on(device_type) else x.dtype


def autocast_off(x: torch.Tensor):
    """A context with autocast off for x's device: torch.autocast(enabled=False) when it is on, else
    nothing to enter (entering and leaving an autocast context costs the host microseconds per call)."""
    device_type = x.device.type
    return torch.autocast(device_type, enabled=False) if _autocast_on(device_type) else nullcontext()


def runs_as_torch_nn(x: torch.Tensor) -> bool:
    """Whether a training layer computes x as its torch.nn original does: an empty batch (empty
    output and zero gradients, with no product to run in INT8)."""
    return x.numel() == 0


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The float dtype the kernels write for a layer of dtype: float32 for float64, which they do not
    write. float64 layers run their INT8 products as float32 ones, whose rounding (2^-24) lies far
    below the int8 quantization's (2^-8), and cast the result back."""
    return torch.float32 if dtype == torch.float64 else dtype


def kernel_float(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """t in kernel_dtype (a differentiable cast where it is float64), or None."""
    return t if t is None or t.dtype != torch.float64 else t.float()


def sharing_parameters(cls, module: torch.nn.Module, attributes: Sequence[str], config: Optional[Int8Config]):
    """An instance of cls (a subclass of module's class) that shares module's weight and bias (no
    copy) and copies its other `attributes`; built without cls.__init__, which would allocate new
    parameters."""
    new = cls.__new__(cls)
    torch.nn.Module.__init__(new)
    for name in attributes:
        setattr(new, name, getattr(module, name))
    new.weight, new.bias = module.weight, module.bias
    new.config = config or Int8Config()
    return new


def register_int8_weight(layer: torch.nn.Module, weight_shape: Sequence[int], bias: bool, device) -> None:
    """The buffers of an inference layer: int8 weight (output channels first), float32 scale per
    output channel, float32 bias (None without bias)."""
    out_channels = weight_shape[0]
    layer.register_buffer("weight_int8", torch.zeros(weight_shape, dtype=torch.int8, device=device))
    layer.register_buffer("weight_scale", torch.ones(out_channels, dtype=torch.float32, device=device))
    layer.register_buffer("bias", torch.zeros(out_channels, device=device) if bias else None)


def load_int8_weight(layer: torch.nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Fills the buffers of register_int8_weight: weight quantized per output channel, bias as float32."""
    qw = quantize(weight.detach(), 0)
    layer.weight_int8.copy_(qw.data)
    layer.weight_scale.copy_(qw.scale)
    if bias is not None:
        layer.bias.copy_(bias.detach().float())


def quantize_activation(x: torch.Tensor, dim: Optional[int], static_scale: Optional[float]) -> QTensor:
    """x quantized at run time (absmax along dim), or with the static per-tensor scale from
    calibration (symmetric: values beyond 127 steps saturate), then held per row of x (dim 0)."""
    if static_scale is None:
        return quantize(x, dim)
    s = float(static_scale)
    data = torch.clamp(torch.round(x.float() / s), -127, 127).to(torch.int8)
    # NaN has no int8 value (it casts to 0): the rows (images) that hold one get a NaN scale, so
    # that their outputs are NaN, as a float layer's and the dynamic path's are.
    nan_rows = torch.isnan(x.reshape(x.shape[0], -1)).any(1)
    # torch.where fills on the device; torch.tensor would copy from the host and sync.
    return QTensor(data, torch.where(nan_rows, float("nan"), s).float(), None, 0)


def without_history(x):
    """x detached if it requires grad (an inference layer's input; QTensors pass through): the
    inference layers' ops have no derivative and refuse inputs that require grad. Cheaper than a
    no_grad context on every call (at decode sizes a fifth of a QuantizedLinear's host time on the CPU)."""
    return x.detach() if isinstance(x, torch.Tensor) and x.requires_grad else x
