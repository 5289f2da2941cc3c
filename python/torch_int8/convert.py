"""convert(): swap torch.nn layers for their torch_int8.nn counterparts, in place."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import Int8Config
from .nn import Conv2d, Linear


def convert(model: torch.nn.Module, config: Optional[Int8Config] = None,
            filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> torch.nn.Module:
    """Replace every torch.nn.Linear and torch.nn.Conv2d in model (for which
    filter_fn(module, name) is true) by a torch_int8.nn.Linear / Conv2d sharing its
    parameters. Conv2d layers the INT8 path cannot run (padding_mode other than
    'zeros', asymmetric 'same' padding) stay as they are. Returns model."""
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
    return model
