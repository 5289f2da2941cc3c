"""convert(): swap torch.nn layers for their torch_int8.nn counterparts, in place."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import Int8Config
from .fuse import fuse as fuse_chains
from .nn import Conv2d, Linear


def convert(model: torch.nn.Module, config: Optional[Int8Config] = None,
            filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None,
            fuse: bool = True) -> torch.nn.Module:
    """Replace every torch.nn.Linear and torch.nn.Conv2d in model (for which
    filter_fn(module, name) is true) by a torch_int8.nn.Linear / Conv2d sharing its
    parameters, in place. Conv2d layers the INT8 path cannot run (padding_mode other than
    'zeros', asymmetric 'same' padding) stay as they are.

    fuse: also find Conv2d -> BatchNorm2d (-> + residual) (-> ReLU) in the model's graph
    (torch.fx) and run each as one fused INT8 step, handing int8 activations between
    consecutive steps (torch_int8.fuse). The result is then a torch.fx.GraphModule over the
    model's own modules (same parameters, buffers and state_dict keys); a model fx cannot trace,
    or without such chains, is returned as it is. Use the returned model."""
    config = config or Int8Config()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if filter_fn is not None and not filter_fn(child, full):
                continue
            if type(child) is torch.nn.Linear:
                setattr(module, child_name, Linear.from_float(child, config))
            elif type(child) is torch.nn.Conv2d and Conv2d.supports(child):
                setattr(module, child_name, Conv2d.from_float(child, config))
    return fuse_chains(model)[0] if fuse else model
