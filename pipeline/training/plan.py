"""Where each epoch's batches come from: the fine-tuning loop's batch plan (docs/disjoint.md#the-training-loop).

The loop (:func:`pipeline.training.finetune.run_finetune`) asks its plan, per 1-based epoch ``e``: how many steps
(:meth:`BatchPlan.steps`), then, before the steps, to prepare the epoch with the model as it is
(:meth:`BatchPlan.begin_epoch`: a teacher refresh of the disjoint-datasets runs; returns scalars to log), and per step
the training-image indices of the batch (:meth:`BatchPlan.next`) and the soft targets of those images
(:meth:`BatchPlan.targets`, ``{task: float [B, C]}``; a task absent from the dict trains on its hard labels only).
The plan's state is part of the run's checkpoint, so a resumed run draws the same batches and targets.

:class:`StreamPlan` is the FR+FER and caricature plan: ``epoch_size`` batches per epoch from one
:class:`~pipeline.training.data.PermutationStream`, no soft targets. The disjoint-datasets plans
(:mod:`pipeline.disjoint.plan`) draw per source and build their targets from a teacher.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from pipeline.training.data import PermutationStream

__all__ = ["BatchPlan", "StreamPlan"]


class BatchPlan(Protocol):
    """What the fine-tuning loop draws batches from (module docstring)."""

    def steps(self, epoch: int) -> int:
        """Steps of 1-based epoch ``epoch``."""

    def begin_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        """Prepare epoch ``epoch`` before its first step (``model``: the network as the previous epoch left it; the
        plan must leave its mode and parameters unchanged); returns scalars to log (may be empty)."""

    def next(self, epoch: int) -> torch.Tensor:
        """Indices ``int64 [B]`` (CPU) of the next batch's training images."""

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Soft targets ``{task: float32 [B, C]}`` of the images ``index [B]`` (rows of images without one: zero)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StreamPlan:
    """``epoch_size`` batches of ``batch_size`` per epoch from a seeded :class:`PermutationStream` of ``n`` images; no
    soft targets (the FR+FER and caricature runs; docs/method.md §4.2)."""

    def __init__(self, n: int, batch_size: int, epoch_size: int, seed: int) -> None:
        self.stream = PermutationStream(n, seed)
        self.batch_size = batch_size
        self.epoch_size = epoch_size

    def steps(self, epoch: int) -> int:
        return self.epoch_size

    def begin_epoch(self, epoch: int, model: nn.Module) -> dict[str, float]:
        return {}

    def next(self, epoch: int) -> torch.Tensor:
        return self.stream.next(self.batch_size)

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)
