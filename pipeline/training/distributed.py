"""The process group of a ``torchrun`` launch, and the collective operations training needs (torch only).

``torchrun --nproc_per_node=N`` starts N copies of a command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address in the environment; :func:`from_env` joins that group (NCCL on CUDA, gloo on CPU). A plain
``python`` launch is a world of one: every collective is then a no-op, so the training code has one path.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "from_env", "launched_by_torchrun"]


def launched_by_torchrun() -> bool:
    """True inside a process started by ``torchrun`` (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ and "LOCAL_RANK" in os.environ


@dataclass
class DistContext:
    """This process's place in the group.

    Attributes:
        rank, world, local_rank: as torchrun sets them (``0, 1, 0`` without torchrun).
        device: the torch device this rank trains on (``cuda:<local_rank>`` for a CUDA run under torchrun).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, outputs and MLflow."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_reduce_sum_(self, *tensors: torch.Tensor) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.active:
            for t in tensors:
                dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the ranks (a new tensor)."""
        if not self.active:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world

    def any(self, flag: bool) -> bool:
        """True when ``flag`` is True on any rank (so every rank takes the same branch)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.startswith("cuda") else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def from_env(device: str) -> DistContext:
    """Join the torchrun group when launched by torchrun, else a world of one.

    ``device`` is the requested device (``cpu``, ``cuda``, ``cuda:<n>``); under torchrun a CUDA run uses
    ``cuda:<LOCAL_RANK>`` and NCCL, a CPU run gloo.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=2))
    return DistContext(rank=rank, world=world, local_rank=local, device=device)
