"""The paper's dynamic-weight unit and its naive variant (docs/method.md §3).

Structure, for every variant: ``z = flatten(Mixed_7a) [B, D]`` (``D = C·h·w``, 16128 for a 160 input) → the FC
``Logits_lossweights`` ``D → T`` (no activation; truncated-normal(0.1) weights, zero bias) → per-sample softmax over
the tasks ``[B, T]`` → batch mean ``[T]`` → plus the ``base`` offsets (``loss_weight_base_t``, default 0).

The variants (where the L2 normalisations sit, how the logits are scaled, the learning rate of the unit) are the
table of :mod:`pipeline.weighting.variants`. For ``T = 3`` the normalisation bounds the weights: ÷2 (naive) in
[0.21, 0.48], ×1 (cavi) in [0.13, 0.63], ×2 (webcari) in [0.04, 0.85].

Presence mask: a task without a labelled sample in the batch is dropped from ``total`` and from ``L_w``; the
weights are not renormalised (they are still the softmax over all ``T`` tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pipeline.models.network import l2_normalize, truncated_normal_
from pipeline.weighting.base import OwnLearningRate, Weighting, WeightingStep, masked_sum
from pipeline.weighting.variants import DYNAMIC_VARIANTS, NAIVE, VARIANTS

__all__ = ["DYNAMIC_VARIANTS", "DynamicWeighting", "NaiveDynamicWeighting", "WeightUnit"]


class WeightUnit(nn.Module):
    """``Mixed_7a [B, C, h, w]`` → batch-mean softmax task weights ``[T]`` (without the base offsets).

    Args:
        feature_dim: ``D = C·h·w``, the flattened feature size.
        n_tasks: ``T``.
        normalize_input: L2-normalise ``z`` before the FC.
        logit_scale: None = softmax of the raw logits; otherwise softmax of ``logit_scale · L2(logits)``.
    """

    def __init__(self, feature_dim: int, n_tasks: int, *, normalize_input: bool, logit_scale: float | None) -> None:
        super().__init__()
        self.feature_dim = int(feature_dim)
        self.normalize_input = normalize_input
        self.logit_scale = logit_scale
        self.logits_lossweights = nn.Linear(self.feature_dim, n_tasks)
        truncated_normal_(self.logits_lossweights.weight, 0.1)
        nn.init.zeros_(self.logits_lossweights.bias)

    def per_sample(self, features: torch.Tensor) -> torch.Tensor:
        """Per-sample softmax weights ``[B, T]`` of ``features [B, C, h, w]`` (or already flat ``[B, D]``)."""
        z = features.flatten(1)
        if z.shape[1] != self.feature_dim:
            raise ValueError(f"the weight unit expects {self.feature_dim} flattened features, got {z.shape[1]} "
                             f"(features {tuple(features.shape)})")
        z = z.to(self.logits_lossweights.weight.dtype)
        if self.normalize_input:
            z = l2_normalize(z)
        logits = self.logits_lossweights(z)
        if self.logit_scale is not None:
            logits = l2_normalize(logits) * self.logit_scale
        return torch.softmax(logits, dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Batch-mean weights ``[T]`` (``mean_b softmax_b``, sums to 1)."""
        return self.per_sample(features).mean(dim=0)


class DynamicWeighting(Weighting):
    """``dynamic``: the paper's unit, trained by its own optimiser on ``L_w = Σ_t w_t / (L_t + σ)``.

    Per batch, with ``w [T]`` = batch-mean softmax + ``base`` (sums over the tasks present in the batch):

    - ``total = Σ_t w_t · L_t``. With ``detach_weights=False`` (default, as coded; docs/method.md §3, §9.5) ``w`` keeps
      its graph, so the trunk's gradient includes ``Σ_t L_t ∂w_t/∂features`` through ``Mixed_7a``; with ``True``
      the weights are constants for the main optimiser. The FC itself is never in the main optimiser's list.
    - ``aux = L_w = Σ_t w_t / (L_t.detach() + σ)``, computed from **detached** features (a second, cheap pass
      through the FC), so its gradient reaches only the FC whatever the caller differentiates. Minimising it moves
      weight toward the task with the largest loss.

    Args:
        task_names: the ``T`` task names.
        feature_dim: ``D = C·h·w`` of ``Mixed_7a``.
        variant: ``fer`` | ``cavi`` | ``webcari`` (module table).
        sigma: σ in ``L_w`` (> 0).
        detach_weights: stop the gradient of ``total`` through ``w``.
        base: ``T`` offsets added to the weights (``loss_weight_base_t``).
        lr_weights: a constant learning rate of the FC's optimiser, or None = the network's rate ×
            ``lr_weights_factor``.
        lr_weights_factor: see ``lr_weights``.

    (The defaults of these options are :func:`pipeline.weighting.options.parse_weighting`'s.)
    """

    name = "dynamic"
    base: torch.Tensor

    def __init__(self, task_names: Sequence[str], feature_dim: int, *, variant: str, sigma: float,
                 detach_weights: bool, base: Sequence[float], lr_weights: float | None,
                 lr_weights_factor: float) -> None:
        super().__init__(task_names)
        if variant not in DYNAMIC_VARIANTS:
            raise ValueError(f"unknown dynamic variant {variant!r}; choose one of: {', '.join(DYNAMIC_VARIANTS)}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        row = VARIANTS[variant]
        self.variant = variant
        self.sigma = float(sigma)
        self.detach_weights = bool(detach_weights)
        self.unit = WeightUnit(feature_dim, self.n_tasks, normalize_input=row.normalize_input,
                               logit_scale=row.logit_scale)
        self.register_buffer("base", _base_tensor(base, self.n_tasks), persistent=False)
        self.own_lr = OwnLearningRate(constant=lr_weights, factor=lr_weights_factor)

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``losses [T]`` (attached), ``features [B, C, h, w]`` (attached) → weights ``[T]``, total, aux."""
        base = self.base.to(device=losses.device, dtype=losses.dtype)
        w = self.unit(features).to(losses.dtype) + base
        total = masked_sum((w.detach() if self.detach_weights else w) * losses, present)
        w_own = self.unit(features.detach()).to(losses.dtype) + base
        aux = masked_sum(w_own / (losses.detach() + self.sigma), present)
        return WeightingStep(weights=w, total=total, aux=aux)

    def own_parameters(self) -> list[nn.Parameter]:
        return list(self.unit.parameters())


class NaiveDynamicWeighting(Weighting):
    """``naive_dynamic``: the CARI naive unit; its FC joins the network and minimises ``total = Σ_t w_t L_t``.

    L2-normalised ``z`` in, L2-normalised logits ÷2, softmax, batch mean (+ ``base``). Minimising ``total`` over
    the FC pushes weight onto the **easiest** task (docs/method.md §3, the paper's Fig. 3(b)). No auxiliary loss; the
    FC is in :meth:`main_parameters` (network LR).

    Args:
        task_names: the ``T`` task names.
        feature_dim: ``D = C·h·w`` of ``Mixed_7a``.
        base: ``T`` offsets added to the weights.
    """

    name = "naive_dynamic"
    base: torch.Tensor

    def __init__(self, task_names: Sequence[str], feature_dim: int, *, base: Sequence[float]) -> None:
        super().__init__(task_names)
        row = VARIANTS[NAIVE]
        self.unit = WeightUnit(feature_dim, self.n_tasks, normalize_input=row.normalize_input,
                               logit_scale=row.logit_scale)
        self.register_buffer("base", _base_tensor(base, self.n_tasks), persistent=False)

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``losses [T]``, ``features [B, C, h, w]`` → weights ``[T]`` (attached), ``total = Σ_{t present} w_t
        L_t``."""
        w = self.unit(features).to(losses.dtype) + self.base.to(device=losses.device, dtype=losses.dtype)
        return WeightingStep(weights=w, total=masked_sum(w * losses, present))

    def main_parameters(self) -> list[nn.Parameter]:
        return list(self.unit.parameters())


def _base_tensor(base: Sequence[float], n_tasks: int) -> torch.Tensor:
    if len(base) != n_tasks:
        raise ValueError(f"{len(base)} base offsets for {n_tasks} tasks")
    return torch.tensor([float(b) for b in base])
