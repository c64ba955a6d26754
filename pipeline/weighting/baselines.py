"""Multi-task weighting baselines from the literature: uncertainty, DWA and GradNorm.

- :class:`UncertaintyWeighting` (Kendall et al., CVPR 2018), in LibMTL's form.
- :class:`DWAWeighting` (Liu et al., CVPR 2019, "Dynamic Weight Average").
- :class:`GradNormWeighting` (Chen et al., ICML 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pipeline.weighting.base import OwnLearningRate, Weighting, WeightingStep, masked_sum
from pipeline.weighting.options import OWN_UPDATES

__all__ = ["DWAWeighting", "GradNormWeighting", "UncertaintyWeighting"]


class UncertaintyWeighting(Weighting):
    """Homoscedastic-uncertainty weighting with learnable log-variances ``s [T]`` (init 0).

    ``total = Σ_{t present} L_t / (2·exp(s_t)) + s_t / 2`` (LibMTL's ``UW``; Kendall et al.'s eq. 7 with
    ``s = log σ²`` and the ½ on both terms); an absent task's whole term, its ``s_t / 2`` included, is dropped, so
    ``s_t`` gets no gradient from a batch without a label of task ``t``. ``s`` is in :meth:`main_parameters`, trained
    with the network on ``total``. Reported weights: ``1 / (2·exp(s_t))`` ``[T]``; ``extra``: ``log_var_<task>`` =
    ``s_t``.
    """

    name = "uncertainty"

    def __init__(self, task_names: Sequence[str]) -> None:
        super().__init__(task_names)
        self.log_vars = nn.Parameter(torch.zeros(self.n_tasks))

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``losses [T]`` → weights ``[T]``, ``total`` (``features`` unused)."""
        s = self.log_vars.to(losses.dtype)
        w = 0.5 * torch.exp(-s)
        total = masked_sum(w * losses + 0.5 * s, present)
        extra = {f"log_var_{n}": s[i].detach() for i, n in enumerate(self.task_names)}
        return WeightingStep(weights=w, total=total, extra=extra)

    def main_parameters(self) -> list[nn.Parameter]:
        return [self.log_vars]


class DWAWeighting(Weighting):
    """Dynamic Weight Average: ``w_t = T · softmax_t(r_t / temperature)``, ``r_t = L̄_t(e−1) / L̄_t(e−2)``.

    ``L̄_t(e)`` are the epoch-mean losses handed to :meth:`end_epoch`: the mean over the batches where task ``t`` was
    present (NaN when it was present in none; then ``r_t = 1``). The weights are 1 for the first two epochs (fewer
    than two means recorded), as in LibMTL. ``total = Σ_{t present} w_t L_t``. The weights change only at
    :meth:`end_epoch` (host side, once per epoch); :meth:`compute` uses a cached device tensor. The loss history is
    checkpointed through :meth:`extra_state` (JSON-serialisable).

    Args:
        task_names: the ``T`` task names.
        temperature: the softmax temperature (> 0; paper: 2).
    """

    name = "dwa"
    current: torch.Tensor

    def __init__(self, task_names: Sequence[str], temperature: float = 2.0) -> None:
        super().__init__(task_names)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.history: list[list[float]] = []
        self.register_buffer("current", torch.ones(self.n_tasks), persistent=False)

    def weights_from_history(self) -> list[float]:
        """The weights for the next epoch from :attr:`history` (host floats)."""
        if len(self.history) < 2:
            return [1.0] * self.n_tasks
        prev, prev2 = self.history[-1], self.history[-2]
        r = [a / max(b, 1e-12) if math.isfinite(a) and math.isfinite(b) else 1.0
             for a, b in zip(prev, prev2, strict=True)]
        logits = [x / self.temperature for x in r]
        m = max(logits)
        e = [math.exp(x - m) for x in logits]
        return [self.n_tasks * x / sum(e) for x in e]

    def _refresh(self) -> None:
        with torch.no_grad():
            self.current.copy_(torch.tensor(self.weights_from_history(), dtype=self.current.dtype))

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``losses [T]`` → this epoch's weights ``[T]`` and ``total = Σ_{t present} w_t L_t``."""
        w = self.current.to(device=losses.device, dtype=losses.dtype)
        return WeightingStep(weights=w, total=masked_sum(w * losses, present))

    def end_epoch(self, mean_losses: torch.Tensor) -> None:
        """Record this epoch's mean losses ``[T]`` (copied to the host; NaN = the task was in no batch) and update
        the weights."""
        values = [float(v) for v in torch.as_tensor(mean_losses).detach().reshape(-1).cpu().tolist()]
        if len(values) != self.n_tasks:
            raise ValueError(f"DWA got {len(values)} mean losses for {self.n_tasks} tasks")
        if any(math.isinf(v) for v in values):
            raise ValueError(f"DWA got infinite epoch mean losses {values}")
        self.history.append(values)
        self._refresh()

    def extra_state(self) -> dict:
        return {"history": [list(h) for h in self.history]}

    def load_extra_state(self, state: dict) -> None:
        history = state.get("history", [])
        if any(len(h) != self.n_tasks for h in history):
            raise ValueError(f"DWA history does not match {self.n_tasks} tasks: {history}")
        self.history = [[float(v) for v in h] for h in history]
        self._refresh()


class GradNormWeighting(Weighting):
    """GradNorm (Chen et al., ICML 2018): learnable task weights ``w [T]`` (init 1) balancing the gradient norms on
    the shared layer ``W``.

    Per batch, over the tasks present in it (``P``, ``|P|`` of them):

    - ``total = Σ_{t∈P} w_t.detach() · L_t`` (the main optimiser sees the weights as constants);
    - ``G_t = ‖∇_W (w_t L_t)‖ = |w_t| · ‖∇_W L_t‖`` with ``∇_W L_t`` from ``autograd.grad(L_t, W, retain_graph=True)``.
      Since ``w_t`` is a scalar, this factored form is exactly the ``create_graph=True`` gradient of
      ``‖∇_W (w_t L_t)‖`` with respect to ``w`` (LibMTL computes it the same way) without a second-order graph
      through the network;
    - ``Ḡ = mean_{t∈P} G_t``; ``r_t = (L_t / L_t(0)) / mean_{τ∈P}(L_τ / L_τ(0))``, ``L(0)`` = the first finite
      positive loss of each task in a batch where it is present (a buffer, saved in ``state_dict``; ratio 1 until
      set);
    - ``aux = L_grad = Σ_{t∈P} |G_t − sg(Ḡ · r_t^α)|``, minimised over ``w`` by the strategy's own update.

    :attr:`own_update`: ``gradient_step`` (Algorithm 1: ``w ← w − lr·∇_w L_grad``, no momentum, no clipping) or
    ``weights_optimizer``. :meth:`after_step` clamps ``w`` to ≥ 1e-4 and renormalises it to ``Σ w = T``.
    ``extra``: ``grad_norm_<task>`` = ``‖∇_W L_t‖`` (0 for an absent task).

    Args:
        task_names: the ``T`` task names.
        alpha: the asymmetry α (≥ 0).
        lr_weights: constant LR of the weights' update (> 0).
        update: one of :data:`~pipeline.weighting.options.OWN_UPDATES`.
    """

    name = "gradnorm"
    initial_losses: torch.Tensor
    has_initial: torch.Tensor

    def __init__(self, task_names: Sequence[str], *, alpha: float, lr_weights: float, update: str) -> None:
        super().__init__(task_names)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if not lr_weights > 0:
            raise ValueError(f"lr_weights must be > 0, got {lr_weights}")
        if update not in OWN_UPDATES:
            raise ValueError(f"update must be one of {', '.join(OWN_UPDATES)}, got {update!r}")
        self.alpha = float(alpha)
        self.task_weights = nn.Parameter(torch.ones(self.n_tasks))
        self.register_buffer("initial_losses", torch.ones(self.n_tasks))
        self.register_buffer("has_initial", torch.zeros(self.n_tasks, dtype=torch.bool))
        self.own_lr = OwnLearningRate(constant=float(lr_weights))
        self.own_update = update

    def compute(self, losses: torch.Tensor, features: torch.Tensor, *, present: torch.Tensor | None = None,
                shared: Sequence[nn.Parameter] = ()) -> WeightingStep:
        """``losses [T]`` (attached to ``shared``) → weights ``[T]``, ``total``, ``aux`` (``features`` unused).

        Raises:
            ValueError: ``shared`` is empty or the losses carry no graph.
        """
        shared = [p for p in shared if p.requires_grad]
        if not shared:
            raise ValueError("gradnorm needs the shared layer's parameters (model.shared_parameters()), got none")
        if not losses.requires_grad:
            raise ValueError("gradnorm needs losses attached to the graph")
        if present is None:
            present = torch.ones(self.n_tasks, dtype=torch.bool, device=losses.device)
        norms = []
        for t in range(self.n_tasks):
            grads = torch.autograd.grad(losses[t], shared, retain_graph=True, allow_unused=True)
            sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
            norms.append(torch.stack(sq).sum().sqrt() if sq else losses.new_zeros((), dtype=torch.float32))
        grad_norms = torch.where(present, torch.stack(norms).to(losses.dtype), 0.0)  # ‖∇_W L_t‖, [T]
        w = self.task_weights.to(losses.dtype)
        g_weighted = w.abs() * grad_norms  # G_t, [T], differentiable in w only
        current = losses.detach()
        with torch.no_grad():
            take = ~self.has_initial & present & torch.isfinite(current) & (current > 0)
            self.initial_losses.copy_(torch.where(take, current.to(self.initial_losses.dtype), self.initial_losses))
            self.has_initial.logical_or_(take)
        count = present.sum().clamp(min=1).to(losses.dtype)
        ratio = torch.where(self.has_initial & present,
                            current / self.initial_losses.to(current.dtype).clamp(min=1e-12),
                            torch.ones_like(current))
        r = ratio / (masked_sum(ratio, present) / count).clamp(min=1e-12)
        target = ((masked_sum(g_weighted, present) / count) * r.pow(self.alpha)).detach()
        aux = masked_sum((g_weighted - target).abs(), present)
        total = masked_sum(w.detach() * losses, present)
        extra = {f"grad_norm_{n}": grad_norms[i].detach() for i, n in enumerate(self.task_names)}
        return WeightingStep(weights=w.detach().clone(), total=total, aux=aux, extra=extra)

    def own_parameters(self) -> list[nn.Parameter]:
        return [self.task_weights]

    @torch.no_grad()
    def after_step(self) -> None:
        """Clamp ``w ≥ 1e-4`` and rescale so that ``Σ_t w_t = T`` (Algorithm 1's renormalisation)."""
        self.task_weights.clamp_(min=1e-4)
        self.task_weights.mul_(self.n_tasks / self.task_weights.sum())
