"""convert(): swap torch.nn layers for their torch_int8.nn counterparts, in place."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .config import Int8Config
from .nn import Linear


def convert(model: torch.nn.Module, config: Optional[Int8Config] = None,
            filter_fn: Optional[Callable[[torch.nn.Module, str], bool]] = None) -> torch.nn.Module:
    """Replace every torch.nn.Linear in model (for which filter_fn(module, name) is
    true) by a torch_int8.nn.Linear sharing its parameters. Returns model."""
    config = config or Int8Config()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is torch.nn.Linear and (filter_fn is None or filter_fn(child, full)):
                setattr(module, child_name, Linear.from_float(child, config))
    return model
