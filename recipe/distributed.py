"""Data-parallel training under `torchrun`: one process per device, the model wrapped in DistributedDataParallel,
each process reading its own shard of every epoch's permutation.

`fit` calls `setup()`: launched by torchrun (WORLD_SIZE > 1 in the environment) it joins the process group itself
(NCCL on CUDA, gloo on CPU) and leaves it when the process exits; otherwise nothing changes. Every rank seeds the
same way, so the models start equal and the shards of one permutation are disjoint; rank 0 alone logs and writes
files.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); joins the process group when launched and not yet joined."""
    if not dist.is_available() or not (dist.is_initialized() or launched()):
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)  # the group recipe joined, recipe leaves; one the user joined is theirs to leave
    return dist.get_rank(), dist.get_world_size(), device


def _leave() -> None:
    """Destroy the process group before the interpreter tears down: gloo's worker threads still hold work whose
    tensors reference Python objects, and destroying those during finalisation aborts the process ("terminate
    called without an active exception", SIGABRT), which torchrun reports as a failed rank after training ended."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(permutation: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's part of an epoch's permutation: equal lengths on every rank (the last n % world samples of the
    permutation are left out this epoch), so every rank takes the same number of steps."""
    if world == 1:
        return permutation
    usable = len(permutation) // world * world
    return permutation[:usable][rank::world]
