"""Fixed task weights: single-task (one-hot), static (given constants) and equal (all 1).

``total = Σ_{t present} w_t · L_t`` with constant ``w`` (an absent task's term is dropped); no parameters, no
auxiliary loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.weighting.base import Weighting, WeightingStep, masked_sum

__all__ = ["EqualWeighting", "FixedWeighting", "SingleTaskWeighting", "StaticWeighting"]


class FixedWeighting(Weighting):
    """Constant weights ``w [T]`` (a non-persistent buffer: they come from the config, not the checkpoint).

    Args:
        task_names: the ``T`` task names in loss order.
        weights: ``T`` non-negative numbers.
    """

    name = "fixed"
    fixed_weights: torch.Tensor

    def __init__(self, task_names: Sequence[str], weights: Sequence[float]) -> None:
        super().__init__(task_names)
        if len(weights) != self.n_tasks:
            raise ValueError(f"{len(weights)} weights for {self.n_tasks} tasks")
        self.register_buffer("fixed_weights", torch.tensor([float(w) for w in weights]), persistent=False)

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``weights [T]`` = the constants; ``total = Σ_{t present} w_t L_t`` (``losses [T]``; ``features``
        unused)."""
        w = self.fixed_weights.to(device=losses.device, dtype=losses.dtype)
        return WeightingStep(weights=w, total=masked_sum(w * losses, present))


class SingleTaskWeighting(FixedWeighting):
    """``single_<task>``: weight 1 on ``task``, 0 on the others (the paper's "w=1, others 0")."""

    name = "single"

    def __init__(self, task_names: Sequence[str], task: str) -> None:
        names = list(task_names)
        if task not in names:
            raise ValueError(f"single-task weighting for unknown task {task!r}; tasks: {', '.join(names)}")
        super().__init__(names, [1.0 if n == task else 0.0 for n in names])
        self.task = task
        self.name = f"single_{task}"


class StaticWeighting(FixedWeighting):
    """``static``: given constant weights (default ``1/T`` each, i.e. 0.5/0.5 for FR+FER, docs/method.md §9.30)."""

    name = "static"


class EqualWeighting(FixedWeighting):
    """``equal``: every weight 1 (``total = Σ_t L_t``)."""

    name = "equal"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names, [1.0] * len(task_names))
