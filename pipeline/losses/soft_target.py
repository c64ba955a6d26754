"""Soft-target cross-entropy with a per-sample target mass (SA-MTL's pseudo-label loss, docs/disjoint.md).

On a disjoint source, an image labelled for task ``s`` gets a *target* ``q_i`` [C] for another task ``t``, built
from the teacher's prediction (:mod:`pipeline.disjoint.selection`): ``w_i · onehot(ŷ_i)`` (hard selection; zero for
an image that is not selected), ``w_i · onehot(ŷ_i) + (1 - w_i) · d_i`` (interpolation) or
``0.5 · onehot + 0.5 · d_i`` (pure). ``q_i`` is **not** normalised: its mass ``Σ_c q_ic`` is the sample's weight.
Per row, with ``p_i = softmax(z_i)``::

    CE_i = - Σ_c q_ic · log p_ic              (computed as log_softmax in float32: stable for any finite logits)

    L = Σ_i CE_i / D,   D = #{i : q_i ≠ 0}          (normalise="rows", the default)
                        D = Σ_i Σ_c q_ic           (normalise="weights")

Why an unnormalised target: hard-label cross-entropy with a sample weight is the cross-entropy against the weighted
one-hot, ``w · CE(onehot(y), p) = CE(w · onehot(y), p)``, so one loss covers labelled, weighted-pseudo-labelled,
interpolated and distilled rows. The original Keras code does exactly this: it passes ``w · onehot`` (or the
interpolated / distilled matrix) as ``y_true`` and trains with ``my_cross_loss`` (``Alternative-MTL_scripts/
ALTERNATIVE_EP.py``): ``K.categorical_crossentropy(y_true, y_pred)`` (which renormalises the *prediction*, never the
target) times a mask of the rows of ``y_true`` that are not all zero, summed and divided by the number of such rows.
That is ``normalise="rows"``: weights scale each row's loss, and zero rows (no target: an unselected pseudo label, a
sample of the other task) neither contribute nor count. ``normalise="weights"`` is the weighted mean instead (the
loss of a batch whose rows all have weight ``w`` does not depend on ``w``).

Deliberate differences from the Keras loss: log-softmax of the logits instead of ``log(clip(p, 1e-7, 1 - 1e-7))``
(identical until a probability falls below 1e-7); no ``+ 1e-10`` per row; and a batch without any target gives a loss
of ``0`` (with a graph, so ``backward`` works and every gradient is zero) and ``present = False``, where Keras
divides by zero. Nothing here copies to the host: the "no target" case is handled with ``torch.where``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NORMALISE_MODES", "onehot_targets", "soft_target_ce", "soft_target_terms"]

NORMALISE_MODES = ("rows", "weights")


def soft_target_ce(logits: Tensor, targets: Tensor, *, normalise: str = "rows") -> tuple[Tensor, Tensor]:
    """Mean soft-target cross-entropy over the rows that carry a target (module docstring).

    Args:
        logits: ``[B, C]`` scores (any float dtype; the loss is computed in float32).
        targets: ``[B, C]`` non-negative float targets, not normalised; an all-zero row has no target. Their values
            are not checked (that would copy to the host).
        normalise: ``rows`` (default): divide by the number of rows with a non-zero target (the original's
            ``my_cross_loss``) | ``weights``: divide by the total target mass ``Σ q``.

    Returns:
        ``(loss, present)``: the 0-d float32 loss, and a 0-d bool tensor, true when some row has a target. Without
        one the loss is an exact ``0`` that is still connected to ``logits`` (zero gradient, never NaN).

    Raises:
        ValueError: ``normalise`` is not a known mode, or the shapes do not match ``[B, C]``.
    """
    per_row, denom = soft_target_terms(logits, targets, normalise=normalise)
    present = denom > 0
    loss = per_row.sum() / torch.where(present, denom, torch.ones_like(denom))
    return loss, present


def soft_target_terms(logits: Tensor, targets: Tensor, *, normalise: str = "rows") -> tuple[Tensor, Tensor]:
    """The parts of :func:`soft_target_ce`: per-row ``CE_i`` ``float32 [B]`` (0 for a row without target) and the
    denominator ``D`` (0-d float32; 0 when no row has a target), for a caller that adds its own per-row terms (the
    center loss of the labelled rows, :func:`pipeline.training.step.task_losses`).

    Raises:
        ValueError: as :func:`soft_target_ce`.
    """
    if normalise not in NORMALISE_MODES:
        raise ValueError(f"normalise must be one of {NORMALISE_MODES}, got {normalise!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, C], got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}")
    q = targets.to(device=logits.device, dtype=torch.float32)
    log_p = torch.log_softmax(logits.float(), dim=1)
    # where: a class with log p = -inf (a masked logit) and q = 0 contributes 0, not NaN
    per_row = -torch.where(q != 0, q * log_p, torch.zeros_like(log_p)).sum(dim=1)  # [B]
    if normalise == "rows":
        denom = (q != 0).any(dim=1).sum().to(torch.float32)
    else:
        denom = q.sum()
    return per_row, denom


def onehot_targets(labels: Tensor, n_classes: int, weights: Tensor | None = None) -> Tensor:
    """Targets ``w_i · onehot(y_i)`` for hard labels; a label ``-1`` (no label for the task) gives a zero row.

    Args:
        labels: ``[B]`` int64 class indices in ``[0, n_classes)``, or ``-1``. On the CPU an out-of-range label
            raises; on an accelerator it is not checked (no host copy) and gives a zero row.
        n_classes: ``C``.
        weights: ``[B]`` per-sample weights (default: all 1).

    Returns:
        ``[B, C]`` float32 targets on the labels' device.

    Raises:
        ValueError: ``n_classes < 1``, a shape mismatch, or (CPU labels) a label outside ``[-1, n_classes)``.
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be [B], got shape {tuple(labels.shape)}")
    if labels.device.type == "cpu" and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < -1 or hi >= n_classes:
            raise ValueError(f"labels must lie in [-1, {n_classes}) (-1 = no label), got range [{lo}, {hi}]")
    classes = torch.arange(n_classes, device=labels.device)
    out = (labels.unsqueeze(1) == classes).to(torch.float32)  # [B, C]; -1 matches no class
    if weights is not None:
        if weights.shape != labels.shape:
            raise ValueError(f"weights must have the shape of labels {tuple(labels.shape)}, got {tuple(weights.shape)}")
        out = out * weights.to(device=labels.device, dtype=torch.float32).unsqueeze(1)
    return out
