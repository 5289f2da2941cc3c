"""Data-parallel training under torchrun: the process group, the rank's device, the DDP wrapper and
each rank's share of an epoch.

The INT8 layers need nothing of their own under DistributedDataParallel or FSDP2: every rank
quantizes its own activations and gradients (scales from its share of the batch, no host sync),
and the float weight gradients are reduced as any others are. These helpers are what a training
loop such as the demo's adds to run data-parallel; outside torchrun (no process group) they leave
it as it was.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def init_from_env(device_type: Optional[str] = None) -> torch.device:
    """Joins the process group torchrun describes (env://: RANK, WORLD_SIZE, MASTER_ADDR, ...): nccl
    on the GPU, gloo on the CPU. Returns this rank's device (cuda:LOCAL_RANK on the GPU)."""
    cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if cuda:
        # NVLink SHARP (multicast) all-reduce stays off: not every lent multi-GPU host can set it up.
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                            device_id=device if cuda else None)
    return device


def active() -> bool:
    """Whether this process belongs to an initialized process group."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return not active() or dist.get_rank() == 0


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    """model under DistributedDataParallel when a process group is active, else model itself."""
    if not active():
        return model
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def world_size() -> int:
    """The number of ranks (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def share(n: int) -> int:
    """How many of n examples one rank takes an epoch (DistributedSampler pads them to equal shares)."""
    return -(-n // world_size())


def mean(t: torch.Tensor) -> torch.Tensor:
    """t averaged over the ranks (an all-reduce), or t itself outside a process group."""
    if not active():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / world_size()


def epoch_indices(n: int, epoch: int, seed: int, generator: torch.Generator) -> torch.Tensor:
    """This rank's order of the n training examples in epoch: DistributedSampler's shuffled share
    under a process group (seeded by seed and epoch, padded to equal shares), else a permutation
    drawn from generator."""
    if not active():
        return torch.randperm(n, generator=generator)
    sampler = torch.utils.data.DistributedSampler(range(n), shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def shutdown() -> None:
    """Leaves the process group, if one is active, once every rank is done with it (a rank tearing
    down while another's connection is open can abort the other)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()
