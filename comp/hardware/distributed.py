"""Several processes, one run: torchrun's process group, and the batches each process takes.

Reads the environment torchrun sets (``WORLD_SIZE``, ``LOCAL_RANK``, ...); writes
nothing. Alone (one process) every helper here is a no-op, so the training loop
reads the same either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler, WeightedRandomSampler

from comp.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun launch: rank r of world processes (0 of 1 alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' asked for, but CUDA is not available here")
    return torch.device(spec)


def init_distributed(spec: str) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun describes in the environment, if there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(spec)
    if world <= 1:
        return Dist(), device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size()), device


def gather(obj: Any, dist_: Dist) -> list[Any]:
    """Every process's ``obj``, in rank order (just ``[obj]`` alone)."""
    if dist_.world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist_.world
    dist.all_gather_object(out, obj)
    return out


def barrier(dist_: Dist) -> None:
    if dist_.world > 1:
        import torch.distributed as dist

        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device, dist_: Dist) -> torch.nn.Module:
    """The model as the training step should call it: DDP-wrapped when there are several processes.

    Wrap once per stage: DDP only synchronises the parameters that were trainable
    when it was built.
    """
    if dist_.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def make_batches(
    n: int,
    *,
    batch_size: int,
    generator: torch.Generator,
    weights: np.ndarray | None,
    dist_: Dist,
) -> ShardedBatches:
    """Training batches of the whole run, the same on every process; each process takes its slice.

    A last batch of one sample breaks BatchNorm in train mode, and a slice must never be
    empty, so a last batch smaller than both is dropped.
    """
    sampler: Sampler[int]
    if weights is not None:
        # Every class drawn equally often: each image weighs 1 / its class's count.
        sampler = WeightedRandomSampler(weights.tolist(), n, generator=generator)
    else:
        sampler = RandomSampler(range(n), generator=generator)
    remainder = n % batch_size
    drop_last = 0 < remainder < max(2, dist_.world)
    return ShardedBatches(BatchSampler(sampler, batch_size, drop_last), dist_)


class ShardedBatches(Sampler[list[int]]):
    """Process r of W takes items r, r+W, ... of each global batch (all of it when W is 1)."""

    def __init__(self, batches: BatchSampler, dist_: Dist):
        self.batches, self.dist = batches, dist_

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.dist.rank :: self.dist.world]

    def global_size(self, step: int, n: int) -> int:
        """How many images the global batch ``step`` holds (the last one may be short)."""
        size = self.batches.batch_size
        if step == len(self) - 1 and not self.batches.drop_last and n % size:
            return n % size
        return size
