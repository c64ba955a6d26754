"""The interface every task-weighting strategy implements (general in the number of tasks ``T``).

One training step of the multi-task loop (:mod:`pipeline.training.step`) does::

    out = model(x)                                   # features = Mixed_7a [B, C, h, w]
    losses = Tensor[T]                               # per-task losses of this batch
    ws = strategy.compute(losses, out.features, shared=model.shared_parameters())
    grads_main = autograd.grad(ws.total, network params + strategy.main_parameters())
    grads_own  = autograd.grad(ws.aux, strategy.own_parameters())      # when ws.aux is not None
    clip each set to global norm 5, step the main optimiser and the strategy's own optimiser
    strategy.after_step()

so both updates use the same forward pass (spec §3, "both updates in one step").

- :meth:`Weighting.main_parameters`: parameters trained **with the network** by the main optimiser on ``total``
  (the naive dynamic unit, uncertainty log-variances).
- :meth:`Weighting.own_parameters`: parameters trained by the strategy's **own** optimiser on ``aux`` (the
  paper's dynamic unit, GradNorm's weights); :attr:`Weighting.own_lr` says at which learning rate.
- ``weights`` is what gets logged every step (``steps.csv``, MLflow), ``Tensor[T]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["OwnLearningRate", "Weighting", "WeightingStep"]


@dataclass
class WeightingStep:
    """What a strategy returns for one batch.

    Attributes:
        weights: ``Tensor[T]``, the task weights used in ``total`` (may carry gradient; detach to log).
        total: scalar, minimised by the main optimiser over the network and :meth:`Weighting.main_parameters`.
        aux: scalar minimised by the strategy's own optimiser over :meth:`Weighting.own_parameters`, or None.
        extra: further scalars to log (``{"sigma_identity": …}``), detached.
    """

    weights: torch.Tensor
    total: torch.Tensor
    aux: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class OwnLearningRate:
    """Learning rate of a strategy's own optimiser: a constant, or ``factor`` × the network's current rate."""

    constant: float | None = None
    factor: float = 1.0

    def at(self, network_lr: float) -> float:
        return self.constant if self.constant is not None else self.factor * network_lr


class Weighting(nn.Module):
    """Base class of the task-weighting strategies.

    Args:
        task_names: the ``T`` task names in loss order (identity first).
    """

    #: registry name (``dynamic``, ``static``…)
    name: str = "base"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        if not task_names:
            raise ValueError("a weighting needs at least one task")
        self.task_names = list(task_names)
        self.own_lr = OwnLearningRate()

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """Weights and losses for one batch.

        Args:
            losses: ``Tensor[T]``, this batch's per-task losses (attached to the graph).
            features: ``Mixed_7a``, ``[B, C, h, w]`` (attached to the graph).
            shared: the last shared layer's parameters (GradNorm).
        """
        raise NotImplementedError

    def main_parameters(self) -> list[nn.Parameter]:
        return []

    def own_parameters(self) -> list[nn.Parameter]:
        return []

    def after_step(self) -> None:
        """Called after both optimisers stepped (GradNorm renormalises its weights here)."""

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        """Called at the end of every epoch with the epoch's mean per-task losses ``Tensor[T]`` (DWA)."""

    def extra_state(self) -> dict:
        """Non-tensor state to checkpoint (DWA's loss history); restored by :meth:`load_extra_state`."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""
