"""One multi-task training step: forward once, both backward passes, clipping, finiteness check, both updates.

This is the function the fine-tuning loop, the behaviour tests and ``bench/train.py`` all run. Per batch
(docs/method.md §2, §3, §4.1), for the tasks of a task set (:class:`~pipeline.settings.TaskSetSettings`):

1. forward (bf16 autocast on CUDA when ``amp``); per-task losses ``L_t`` = mean softmax cross-entropy over the
   samples that have a label for task ``t`` (label ``-1`` = none), plus ``λc · ½‖e − c_y‖²`` for a task with a
   center loss (``e``: the L2-normalised prelogits of the branch its ``center.embedding`` names; ``c``: the rows of
   the matrix its ``center.matrix`` names, before this step's update; docs/method.md §2.2), or, for a task the batch
   brings soft targets for, the soft-target form of :func:`task_losses`; ``present[t]`` = the batch
   has a labelled sample of ``t`` (else ``L_t = 0``, docs/method.md §9.24, and the strategy drops the task: the
   presence mask);
2. the weighting strategy turns ``L [T]``, ``present [T]`` and ``Mixed_7a`` into the total loss and its own loss;
3. ``autograd.grad`` of the total loss over the network (+ the strategy's main parameters) and of the strategy's
   loss over its own parameters, from the same graph;
4. each gradient set is clipped to its global norm (TF ``clip_by_global_norm``; 0 = off);
5. the losses, weights, presence flags and gradient norms are copied to the host once; a non-finite value raises
   :class:`NonFiniteError` **before** any parameter changes;
6. both optimisers step; every center matrix moves toward the batch means of the tasks whose ``center.updates``
   is true (in task order, each from its own labelled samples); the strategy's ``after_step`` runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.losses.center import CenterLoss
from pipeline.losses.soft_target import soft_target_terms
from pipeline.settings import TaskSetSettings
from pipeline.training.optim import clip_by_global_norm_
from pipeline.weighting.base import Weighting

__all__ = ["NonFiniteError", "StepResult", "TrainStep", "clip_global_norm", "global_grad_norm", "task_losses"]


class NonFiniteError(RuntimeError):
    """A loss, weight or gradient norm became NaN or infinite."""


@dataclass
class StepResult:
    """Host-side values of one step (for ``steps.csv`` and MLflow).

    Attributes:
        losses: per-task losses ``L_t`` (center term included; 0 for an absent task).
        weights: per-task weights.
        present: per task, whether the batch had a labelled sample of it.
        total: the total loss the network minimised.
        aux: the strategy's own loss, or None.
        grad_norm: global gradient norm of the main set before clipping.
        grad_norm_own: same for the strategy's own set (None without one).
        extra: strategy-specific scalars.
    """

    losses: list[float]
    weights: list[float]
    present: list[bool]
    total: float
    aux: float | None
    grad_norm: float
    grad_norm_own: float | None
    extra: dict[str, float]


def _masked_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample CE ``[B]`` (0 where ``label < 0``) and the mask ``[B]`` (bool)."""
    mask = labels >= 0
    ce = nn.functional.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
    return torch.where(mask, ce, torch.zeros_like(ce)), mask


def _soft_ce(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, normalise: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample soft-target CE ``[B]`` against ``onehot(y)`` on the labelled rows and ``targets [B, C]`` on the
    others, the labelled mask ``[B]`` and the denominator (0-d;
    :func:`pipeline.losses.soft_target.soft_target_terms`)."""
    mask = labels >= 0
    onehot = (labels.unsqueeze(1) == torch.arange(logits.shape[1], device=labels.device)).to(torch.float32)
    q = torch.where(mask.unsqueeze(1), onehot, targets.to(torch.float32))
    per_sample, denom = soft_target_terms(logits, q, normalise=normalise)
    return per_sample, mask, denom


def task_losses(out, labels: Mapping[str, torch.Tensor], task_set: TaskSetSettings,
                centers: Mapping[str, CenterLoss] | None, targets: Mapping[str, torch.Tensor] | None = None, *,
                normalise: str = "rows") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task losses ``Tensor[T]`` and presence ``bool Tensor[T]`` for a
    :class:`~pipeline.models.network.ModelOutput` ``out`` (no host synchronisation).

    ``L_t = Σ_i m_i (CE_i + λc ½‖e_i − c_{y_i}‖²) / max(Σ_i m_i, 1)`` with ``m_i`` = sample ``i`` has a label of
    ``t``; ``present_t = Σ_i m_i > 0``.

    A task with soft ``targets[t] [B, C]`` (the disjoint-datasets runs: pseudo labels, distillation;
    docs/disjoint.md#the-loss) trains its labelled rows on ``onehot(y_i)`` and the others on their target row:
    ``L_t = (Σ_i CE(q_i, p_i) + λc Σ_i m_i ½‖e_i − c_{y_i}‖²) / D`` with ``D`` the rows whose target is not zero
    (``normalise="rows"``) or the total target mass (``"weights"``); ``present_t = D > 0``.
    """
    losses, present = [], []
    for name, task in task_set.tasks.items():
        y = labels[name]
        soft = targets.get(name) if targets else None
        if soft is None:
            per_sample, mask = _masked_ce(out.logits(name), y)
            n = mask.sum()
        else:
            per_sample, mask, n = _soft_ce(out.logits(name), y, soft, normalise)
        if task.center is not None and task.center.factor and centers is not None:
            matrix = centers[task_set.matrix_owner(name)]
            center = matrix(out.embedding(task_set.embedding_of(name)), y.clamp(min=0))
            per_sample = per_sample + task.center.factor * torch.where(mask, center, torch.zeros_like(center))
        losses.append(per_sample.sum() / (n.clamp(min=1) if soft is None else torch.where(n > 0, n, 1.0)))
        present.append(n > 0)
    return torch.stack(losses), torch.stack(present)


def _set_grads(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g


class TrainStep:
    """A callable multi-task step bound to a model, a strategy, optimisers and center matrices.

    Args:
        model: a :class:`~pipeline.models.network.MultiTaskInceptionResNetV1` (or anything with the same
            ``forward`` → ``ModelOutput`` and ``shared_parameters()``).
        strategy: the task weighting (its task names are the task set's, in order).
        task_set: the tasks: labels, center losses (:class:`~pipeline.settings.TaskSetSettings`).
        optimizer: the main optimiser over ``main_parameters`` (network + the strategy's main parameters).
        own_optimizer: the strategy's update over ``strategy.own_parameters()``, or None.
        centers: the center matrices by owner task (``task_set.matrix_owner``), or None: no center loss.
        clip_norm: global-norm clipping of the main set (docs/method.md §4.1: 5.0); ``0`` disables it.
        own_clip_norm: the same for the strategy's own set.
        amp: run the forward pass under bf16 autocast (CUDA only).
        center_stats_hook: called with ``(sums, counts)`` before a center matrix moves (a distributed run
            all-reduces them there).
        forward: what runs the forward pass instead of ``model`` itself: a ``torch.compile`` wrapper of it (the
            same parameters; evaluation keeps calling the uncompiled ``model``), or None.
        target_normalise: the denominator of a task trained on soft targets (:func:`task_losses`): ``rows`` |
            ``weights``.
    """

    def __init__(self, model: nn.Module, strategy: Weighting, task_set: TaskSetSettings,
                 optimizer: torch.optim.Optimizer, own_optimizer: torch.optim.Optimizer | None,
                 centers: Mapping[str, CenterLoss] | None, *, clip_norm: float, own_clip_norm: float,
                 amp: bool = False, center_stats_hook: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                 forward: Callable[[torch.Tensor], object] | None = None, target_normalise: str = "rows") -> None:
        if task_set.names != strategy.task_names:
            raise ValueError(f"task order {task_set.names} differs from the strategy's {strategy.task_names}")
        self.model = model
        self.forward = forward if forward is not None else model
        self.strategy = strategy
        self.task_set = task_set
        self.optimizer = optimizer
        self.own_optimizer = own_optimizer
        self.centers = centers
        self.clip_norm = clip_norm
        self.own_clip_norm = own_clip_norm
        self.amp = amp
        self.center_stats_hook = center_stats_hook
        self.target_normalise = target_normalise
        self.main_params = [p for g in optimizer.param_groups for p in g["params"]]
        self.own_params = [p for g in own_optimizer.param_groups for p in g["params"]] if own_optimizer else []
        self.shared = list(model.shared_parameters()) if hasattr(model, "shared_parameters") else []
        #: tasks whose batch means move a center matrix
        self.updating = [n for n, t in task_set.tasks.items() if t.center is not None and t.center.updates]

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.amp and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, labels: Mapping[str, torch.Tensor],
                 targets: Mapping[str, torch.Tensor] | None = None) -> StepResult:
        """Train on one batch ``x [B, 3, S, S]`` (standardised) with ``labels[task] [B]`` (``-1`` = no label) and,
        for some tasks, soft ``targets[task] [B, C]`` on the rows without a label (:func:`task_losses`)."""
        with self._autocast(x.device):
            out = self.forward(x)
        losses, present = task_losses(out, labels, self.task_set, self.centers, targets,
                                      normalise=self.target_normalise)
        ws = self.strategy.compute(losses, out.features.float(), present=present, shared=self.shared)
        has_aux = ws.aux is not None and bool(self.own_params)
        grads = torch.autograd.grad(ws.total, self.main_params, retain_graph=has_aux, allow_unused=True)
        _set_grads(self.main_params, grads)
        norm = clip_global_norm(self.main_params, self.clip_norm)
        norm_own = None
        if has_aux:
            own_grads = torch.autograd.grad(ws.aux, self.own_params, allow_unused=True)
            _set_grads(self.own_params, own_grads)
            norm_own = clip_global_norm(self.own_params, self.own_clip_norm)
        scalars = [losses.detach().float(), ws.weights.detach().float().reshape(-1), present.float(),
                   ws.total.detach().float().reshape(1), norm.detach().float().reshape(1)]
        if has_aux:
            scalars += [ws.aux.detach().float().reshape(1), norm_own.detach().float().reshape(1)]
        extra_names = list(ws.extra)
        scalars += [ws.extra[k].detach().float().reshape(1) for k in extra_names]
        host = torch.cat(scalars).cpu()
        if not bool(torch.isfinite(host).all()):
            raise NonFiniteError(_describe(host, self.strategy.task_names, has_aux, extra_names))
        self.optimizer.step()
        if self.own_optimizer is not None and has_aux:
            self.own_optimizer.step()
        if self.centers is not None:
            for name in self.updating:
                self._update_centers(self.task_set.matrix_owner(name),
                                     out.embedding(self.task_set.embedding_of(name)).detach(), labels[name])
        self.strategy.after_step()
        return _result(host.tolist(), len(self.task_set.names), has_aux, extra_names)

    def _update_centers(self, owner: str, emb: torch.Tensor, y: torch.Tensor) -> None:
        mask = y >= 0
        matrix = self.centers[owner]
        sums, counts = matrix.batch_statistics(emb[mask], y[mask])
        if self.center_stats_hook is not None:
            self.center_stats_hook(sums, counts)
        matrix.apply_update(sums, counts)


def clip_global_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Clip the gradients of ``params`` to global norm ``max_norm`` (0 = no clipping); the norm before clipping."""
    return clip_by_global_norm_(params, max_norm) if max_norm else global_grad_norm(params)


def global_grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients (0-d tensor; 0 when none has a gradient), unclipped."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _result(v: list[float], t: int, has_aux: bool, extra_names: list[str]) -> StepResult:
    losses, weights, present = v[:t], v[t:2 * t], [bool(p) for p in v[2 * t:3 * t]]
    total, norm = v[3 * t], v[3 * t + 1]
    i = 3 * t + 2
    aux = norm_own = None
    if has_aux:
        aux, norm_own = v[i], v[i + 1]
        i += 2
    extra = dict(zip(extra_names, v[i:], strict=True))
    return StepResult(losses, weights, present, total, aux, norm, norm_own, extra)


def _describe(host: torch.Tensor, names: list[str], has_aux: bool, extra_names: list[str]) -> str:
    r = _result(host.tolist(), len(names), has_aux, extra_names)
    parts = [f"loss_{n}={v:.4g}" for n, v in zip(names, r.losses, strict=True)]
    parts += [f"weight_{n}={v:.4g}" for n, v in zip(names, r.weights, strict=True)]
    parts += [f"total={r.total:.4g}", f"grad_norm={r.grad_norm:.4g}"]
    if has_aux:
        parts += [f"weight_loss={r.aux:.4g}", f"grad_norm_weights={r.grad_norm_own:.4g}"]
    return "non-finite value in a training step: " + ", ".join(parts)
