"""The interface every task-weighting strategy implements (general in the number of tasks ``T``).

One training step of the multi-task loop (:mod:`pipeline.training.step`) does::

    out = model(x)                                   # features = Mixed_7a [B, C, h, w]
    losses, present = Tensor[T], bool Tensor[T]      # per-task losses; which tasks have a labelled sample
    ws = strategy.compute(losses, out.features, present=present, shared=model.shared_parameters())
    grads_main = autograd.grad(ws.total, network params + strategy.main_parameters())
    grads_own  = autograd.grad(ws.aux, strategy.own_parameters())      # when ws.aux is not None
    clip each set (the own set as the strategy says), step the main optimiser and the strategy's own update
    strategy.after_step()

so both updates use the same forward pass (docs/method.md §3, "both updates in one step").

**Presence mask.** A task without a labelled sample in the batch has ``L_t = 0`` and ``present[t] = False``. Every
strategy drops such a task's terms, so its (meaningless) loss value changes neither ``total``, nor ``aux``, nor any
gradient; weights are not renormalised over the present tasks (each strategy's docstring gives its masked formula,
and ``docs/task_sets.md`` collects them). With every task present the formulas are the unmasked ones, bit for bit.

- :meth:`Weighting.main_parameters`: parameters trained **with the network** by the main optimiser on ``total``
  (the naive dynamic unit, uncertainty log-variances).
- :meth:`Weighting.own_parameters`: parameters trained by the strategy's **own** update on ``aux`` (the paper's
  dynamic unit, GradNorm's weights); :attr:`Weighting.own_lr` says at which learning rate and
  :attr:`Weighting.own_update` how (the ``weights_optimizer`` of the settings, or a plain gradient step).
- ``weights`` is what gets logged every step (``steps.csv``, MLflow), ``Tensor[T]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["OwnLearningRate", "Weighting", "WeightingStep", "masked_sum"]



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


def masked_sum(terms: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """``Σ_t terms_t`` over the present tasks (``present`` bool ``[T]``; None = all). An absent task's term is
    replaced by an exact 0, so neither its value nor its gradient reaches the sum."""
    if present is None:
        return terms.sum()
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


class Weighting(nn.Module):
    """Base class of the task-weighting strategies.

    Args:
        task_names: the ``T`` task names in loss order.
    """

    #: registry name (``dynamic``, ``static``…)
    name: str = "base"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__()
        if not task_names:
            raise ValueError("a weighting needs at least one task")
        self.task_names = list(task_names)
        self.own_lr = OwnLearningRate()
        #: one of :data:`~pipeline.weighting.options.OWN_UPDATES`
        self.own_update = "weights_optimizer"

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """Weights and losses for one batch.

        Args:
            losses: ``Tensor[T]``, this batch's per-task losses (attached to the graph).
            features: ``Mixed_7a``, ``[B, C, h, w]`` (attached to the graph).
            present: ``bool Tensor[T]``: which tasks have a labelled sample in the batch (None = all).
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
        """Called at the end of every epoch with each task's mean loss over the batches where it was present,
        ``Tensor[T]`` (NaN for a task present in no batch of the epoch) (DWA)."""

    def extra_state(self) -> dict:
        """Non-tensor state to checkpoint (DWA's loss history); restored by :meth:`load_extra_state`."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` returned."""
