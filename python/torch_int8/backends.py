"""Which GPU GEMM kernel family runs: queries, and forcing one.

By default each GPU gets the first kernel family built for its compute capability
(INT8 tensor cores: sm90, sm80, sm75; without them: dp4a on sm_61+, simt on sm_50+).
Forcing a family, e.g. to test or benchmark the SIMT kernels on a newer GPU::

    torch_int8.use_backend("dp4a")          # from now on, for the whole process
    with torch_int8.use_backend("simt"):    # only inside the block
        torch_int8.gemm(a, b)
    torch_int8.use_backend(None)            # back to the default

The environment variable ``TORCH_INT8_GEMM_BACKEND`` forces a family too; ``use_backend``
takes precedence over it. A forced family serves every GPU of at least its minimum compute
capability (a GEMM on an older GPU fails with "no kernel"). CPU tensors always use the
CPU reference kernels.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import torch

from . import _C

ENV_VAR = "TORCH_INT8_GEMM_BACKEND"


def built_backends() -> List[str]:
    """The GEMM kernel families in this build, preferred first (empty without CUDA)."""
    return [family.split(":")[0] for family in _C.build_info()["gemm_families"].split()]


def forced_backend() -> Optional[Tuple[str, str]]:
    """(family, how) when a family is forced, else None; how is "torch_int8.use_backend" or
    "TORCH_INT8_GEMM_BACKEND=<family>"."""
    override = _C.gemm_backend_override()
    if override:
        return override, "torch_int8.use_backend"
    env = os.environ.get(ENV_VAR)
    return (env, f"{ENV_VAR}={env}") if env else None


def selected_backend(device=None) -> Optional[str]:
    """The family a GEMM on this CUDA device (default: the current one) runs, or None."""
    major, minor = torch.cuda.get_device_capability(device)
    return _C.gemm_backend(major * 10 + minor)


class use_backend:
    """Forces the GEMM kernel family ``name`` for the whole process (``None``: the default).

    Takes effect when called; used as a context manager, it restores the previous
    choice on exit. Raises ``ValueError`` for a name this build does not have.
    """

    def __init__(self, name: Optional[str]):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"use_backend: name must be a str or None, got {type(name).__name__}")
        self._previous = _C.gemm_backend_override()
        _C.set_gemm_backend(name)

    def __enter__(self) -> "use_backend":
        return self

    def __exit__(self, *exc) -> None:
        _C.set_gemm_backend(self._previous)
