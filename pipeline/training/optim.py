"""Optimisers for training: an exact TF1 RMSProp, TF-style global-norm clipping and a small factory.

The original code trains with ``tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1.0)`` after
``tf.clip_by_global_norm(grads, 5.0)`` (docs/method.md §4.1). ``torch.optim.RMSprop`` is a different algorithm (its
square average starts at 0 and its epsilon is added outside the square root), so :class:`TF1RMSProp` re-implements the
TF1 update. Only torch is imported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from pipeline.settings import OPTIMIZERS, OptimizerSettings

__all__ = ["OPTIMIZERS", "TF1RMSProp", "build_optimizer", "clip_by_global_norm_"]


class TF1RMSProp(torch.optim.Optimizer):
    """``tf.compat.v1.train.RMSPropOptimizer`` with ``centered=False``, exactly.

    Per parameter ``p`` with gradient ``g`` (plus ``weight_decay * p`` when ``weight_decay > 0``)::

        ms  <- ms + (1 - rho) * (g^2 - ms)          # = rho * ms + (1 - rho) * g^2, TF's kernel form
        mom <- momentum * mom + lr * g / sqrt(ms + eps)
        p   <- p - mom

    ``ms`` starts at ``initial_ms`` (TF: 1.0) and ``mom`` at 0; both are created at a parameter's first step (as TF
    creates its ``rms``/``momentum`` slots) and live in ``state[p]["ms"]`` / ``state[p]["mom"]``, so ``state_dict()`` /
    ``load_state_dict()`` resume exactly. Parameters whose ``grad`` is None are skipped (TF does not update a variable
    without a gradient). ``group["lr"]`` is read at every step, so a scheduler may change it between steps.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        rho: TF ``decay``, the discount of the mean square.
        momentum: TF ``momentum``.
        eps: TF ``epsilon``, added to the mean square inside the square root.
        initial_ms: initial value of the mean-square slot (TF: 1.0).
        weight_decay: L2 coefficient added to the gradient (0 as in the original fine-tuning).
        foreach: use the multi-tensor ``torch._foreach_*`` kernels, per (device, dtype) bucket; False = a loop.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        rho: float = 0.9,
        momentum: float = 0.9,
        eps: float = 1.0,
        initial_ms: float = 1.0,
        weight_decay: float = 0.0,
        *,
        foreach: bool = True,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"invalid learning rate {lr}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"invalid rho (decay) {rho}, must be in [0, 1]")
        if momentum < 0.0:
            raise ValueError(f"invalid momentum {momentum}")
        if eps < 0.0:
            raise ValueError(f"invalid eps {eps}")
        if weight_decay < 0.0:
            raise ValueError(f"invalid weight_decay {weight_decay}")
        defaults = dict(lr=lr, rho=rho, momentum=momentum, eps=eps, initial_ms=initial_ms,
                        weight_decay=weight_decay, foreach=foreach)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every parameter that has a gradient; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("TF1RMSProp does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["ms"] = torch.full_like(p, group["initial_ms"], memory_format=torch.preserve_format)
                    state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ps, gs, mss, moms = buckets.setdefault((p.device, p.dtype), ([], [], [], []))
                ps.append(p)
                gs.append(p.grad)
                mss.append(state["ms"])
                moms.append(state["mom"])
            update = _tf1_rmsprop_foreach if group["foreach"] else _tf1_rmsprop_loop
            for ps, gs, mss, moms in buckets.values():
                update(ps, gs, mss, moms, lr=group["lr"], rho=group["rho"], momentum=group["momentum"],
                       eps=group["eps"], weight_decay=group["weight_decay"])
        return loss


def _tf1_rmsprop_foreach(
    params: list[torch.Tensor], grads: list[torch.Tensor], ms: list[torch.Tensor], mom: list[torch.Tensor], *,
    lr: float, rho: float, momentum: float, eps: float, weight_decay: float,
) -> None:
    """The TF1 update on lists of same-device, same-dtype tensors, in place, with multi-tensor kernels."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    # lerp(ms, g^2, 1 - rho) = ms + (1 - rho) * (g^2 - ms): TF's kernel form of the mean-square update.
    torch._foreach_lerp_(ms, torch._foreach_mul(grads, grads), 1.0 - rho)
    denom = torch._foreach_add(ms, eps)
    torch._foreach_sqrt_(denom)
    torch._foreach_mul_(mom, momentum)
    torch._foreach_addcdiv_(mom, grads, denom, value=lr)
    torch._foreach_sub_(params, mom)


def _tf1_rmsprop_loop(
    params: list[torch.Tensor], grads: list[torch.Tensor], ms: list[torch.Tensor], mom: list[torch.Tensor], *,
    lr: float, rho: float, momentum: float, eps: float, weight_decay: float,
) -> None:
    """Same as :func:`_tf1_rmsprop_foreach`, one tensor at a time."""
    for p, g, s, m in zip(params, grads, ms, mom, strict=True):
        if weight_decay != 0.0:
            g = g.add(p, alpha=weight_decay)
        s.lerp_(g * g, 1.0 - rho)
        m.mul_(momentum).addcdiv_(g, (s + eps).sqrt_(), value=lr)
        p.sub_(m)


def _gradients(params_or_grads: torch.Tensor | Iterable[torch.Tensor | None]) -> list[torch.Tensor]:
    """The gradient tensors: ``.grad`` of parameters (anything that requires grad), the tensor itself otherwise."""
    items = [params_or_grads] if isinstance(params_or_grads, torch.Tensor) else list(params_or_grads)
    grads = []
    for t in items:
        if t is None:
            continue
        g = t.grad if isinstance(t, torch.nn.Parameter) or t.requires_grad else t
        if g is None:
            continue
        if g.is_sparse:
            raise RuntimeError("clip_by_global_norm_ does not support sparse gradients")
        grads.append(g)
    return grads


@torch.no_grad()
def clip_by_global_norm_(
    params_or_grads: torch.Tensor | Iterable[torch.Tensor | None], max_norm: float,
) -> torch.Tensor:
    """Scale gradients in place like ``tf.clip_by_global_norm``; return the global norm before clipping.

    ``global_norm = sqrt(sum_i ||g_i||^2)`` over all gradients, and every gradient is multiplied by
    ``max_norm / max(global_norm, max_norm)`` (exactly 1 when the norm does not exceed ``max_norm``, so the gradients
    are then unchanged). As in TF, a non-finite global norm makes every gradient NaN. Unlike
    ``torch.nn.utils.clip_grad_norm_`` there is no ``1e-6`` in the denominator. Nothing is copied to the host.

    Args:
        params_or_grads: a tensor or an iterable of tensors. Entries that are ``nn.Parameter`` or require grad are
            parameters and their ``.grad`` is clipped; other tensors are the gradients themselves (e.g. from
            ``torch.autograd.grad``). ``None`` entries and parameters without a gradient are skipped.
        max_norm: the clip norm (TF ``clip_norm``), > 0.

    Returns:
        Tensor[] (0-d): the global norm before clipping, on the first gradient's device, in the widest gradient dtype
        (a CPU float32 zero when there is no gradient).
    """
    if not max_norm > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    grads = _gradients(params_or_grads)
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    dtype = grads[0].dtype
    for g in grads[1:]:
        dtype = torch.promote_types(dtype, g.dtype)
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.device, g.dtype), []).append(g)
    norms = [n.to(device=device, dtype=dtype) for bucket in buckets.values() for n in torch._foreach_norm(bucket)]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = max_norm / torch.clamp(total, min=max_norm)
    scale = torch.where(torch.isfinite(total), scale, torch.full_like(scale, float("nan")))
    for (bucket_device, bucket_dtype), bucket in buckets.items():
        torch._foreach_mul_(bucket, scale.to(device=bucket_device, dtype=bucket_dtype))
    return total


def build_optimizer(settings: OptimizerSettings, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                    lr: float) -> torch.optim.Optimizer:
    """The optimiser ``settings`` (:class:`~pipeline.settings.OptimizerSettings`) over ``params`` at rate ``lr``.

    - ``rmsprop_tf1`` (the original, docs/method.md §4.1): :class:`TF1RMSProp` with ``rho=rms_decay``, ``eps=rms_eps``,
      ``momentum``.
    - ``rmsprop``: ``torch.optim.RMSprop(alpha=rms_decay, eps=rms_eps, momentum=momentum)`` (square average starts
      at 0, ``eps`` added outside the square root: not the TF1 algorithm).
    - ``adam``: ``torch.optim.Adam`` with betas ``(0.9, 0.999)``; ``rms_eps`` is used only when it is below ``1e-3``
      (a value meant for Adam), otherwise torch's default ``1e-8``, so the RMSProp value ``1.0`` does not silently
      cripple Adam. ``momentum`` and ``rms_decay`` are ignored.
    - ``sgd``: ``torch.optim.SGD(momentum=momentum)`` (no Nesterov); ``rms_decay`` and ``rms_eps`` are ignored.

    ``weight_decay`` is the L2 coefficient of each optimiser (added to the gradient); ``clip_norm`` is applied by the
    caller before each step. ``name`` is case-insensitive.

    Raises:
        ValueError: unknown ``name`` (one line listing the choices).
    """
    s = settings
    key = s.name.strip().lower()
    if key == "rmsprop_tf1":
        return TF1RMSProp(params, lr=lr, rho=s.rms_decay, momentum=s.momentum, eps=s.rms_eps,
                          weight_decay=s.weight_decay)
    if key == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=s.rms_decay, eps=s.rms_eps, momentum=s.momentum,
                                   weight_decay=s.weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=s.rms_eps if s.rms_eps < 1e-3 else 1e-8,
                                weight_decay=s.weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=s.momentum, weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
