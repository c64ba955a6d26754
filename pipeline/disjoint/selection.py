"""From pseudo labels to per-image targets: hard selection, interpolation, or the unweighted mix (SA-MTL).

Inputs, for the ``N`` images of a source that lack task ``t``: the teacher's pseudo labels ``ŷ`` [N] (its argmax),
the per-image weights ``w`` [N] in ``[0, 1]`` (confidence, density, distribution or their product) and, for the
rules that use them, the distilled targets ``d`` [N, C] (:func:`pipeline.disjoint.distill.distill_targets`). The
targets ``q`` [N, C] feed :func:`pipeline.losses.soft_target.soft_target_ce`, whose row mass is the weight.

The original: ``utils/pseudo_density_distribution/pseudo_label_weights.py``, ``assign_weights`` and
``Weight_Strategy``. ``Weight_Strategy`` first divides the weights by their maximum (for both of its rules: pass
max-normalised weights here to reproduce it; this module does not rescale), then

``rule="hard"`` (``--is_interpolation=False``): keeps the images whose weight is **strictly** above a threshold taken
from the sorted weights, and gives them ``w_i · onehot(ŷ_i)``; every other image gets a zero row (no target: the
loss ignores it). The threshold is the original's, not ``np.percentile``: the weights are sorted ascending and the
threshold is the element at 0-based index ``int(q · N)`` (``q`` = ``--selection_threshold``, truncated toward zero,
computed in double precision like Python's ``int(q * N)``)::

    thr = sort(w)[int(q · N)],   selected_i = w_i > thr

so ``q = 0`` still drops the minimum (and every weight tied with it), equal weights select nothing, and ``q ≥ 1``
would index past the end (the original raises ``IndexError``; here ``quantile`` must lie in ``[0, 1)``). The
README says that distilled knowledge replaces the dropped pseudo labels; the code has that line commented out and
writes zeros, which is what this rule does.

``rule="soft"`` (``--is_interpolation=True``, the README's interpolation): every image gets
``w_i · onehot(ŷ_i) + (1 - w_i) · d_i``; the threshold is computed but not used (nor is ``--interpolation_weights``,
passed to ``Weight_Strategy`` and ignored).

``rule="pure"``: ``assign_weights`` with none of the weight cues (``--is_pesudo_confidence``, ``_density``,
``_distribution`` all false) and without ``--is_distilled`` gives every image ``0.5 · onehot(ŷ_i) + 0.5 · d_i``
whatever ``--is_interpolation`` and ``--selection_threshold`` say (it never calls ``Weight_Strategy``); ``w`` is
ignored. (With ``--is_distilled`` the target is ``d`` alone: use the distilled targets directly.)

Everything stays on the device; the only host values are ``N`` and ``q``. Selecting nothing is not an error here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SELECTION_RULES", "SelectedTargets", "quantile_threshold", "select_targets"]

SELECTION_RULES = ("hard", "soft", "pure")
_NEEDS_DISTILLED = ("soft", "pure")


@dataclass
class SelectedTargets:
    """Per-image targets for one task on one source.

    Attributes:
        targets: ``[N, C]`` float32 targets (not normalised; a zero row = no target).
        selected: ``[N]`` bool, the rows that carry a target (all rows for ``soft`` and ``pure``).
    """

    targets: Tensor
    selected: Tensor


def quantile_threshold(weights: Tensor, quantile: float) -> Tensor:
    """The original's selection threshold: ``sort(weights)[int(quantile · N)]`` (module docstring).

    Args:
        weights: ``[N]`` with ``N >= 1``.
        quantile: ``q`` in ``[0, 1)``.

    Returns:
        0-d tensor on the weights' device (no host copy).
    """
    _check_quantile(quantile)
    n = weights.shape[0]
    if n == 0:
        raise ValueError("weights must not be empty to take a threshold")
    index = int(float(quantile) * n)
    return torch.sort(weights).values[index]


def select_targets(
    pseudo: Tensor,
    weights: Tensor,
    distilled: Tensor | None,
    *,
    rule: str,
    quantile: float = 0.0,
    n_classes: int | None = None,
) -> SelectedTargets:
    """Build the targets of the rule ``rule`` (module docstring).

    Args:
        pseudo: ``[N]`` int64 pseudo labels (the teacher's argmax), in ``[0, C)`` (not checked: no host copy; a
            label outside gives no one-hot part).
        weights: ``[N]`` float weights in ``[0, 1]`` (unused by ``pure``).
        distilled: ``[N, C]`` distilled targets, required by ``soft`` and ``pure``; ``hard`` does not use them (None
            is fine) beyond taking ``C`` from their shape.
        rule: ``hard`` | ``soft`` | ``pure``.
        quantile: ``q`` in ``[0, 1)``, the hard selection's quantile (``--selection_threshold``); checked for
            every rule, used by ``hard`` only.
        n_classes: ``C``; needed when ``distilled`` is None (``hard``), else it must equal ``distilled``'s width.

    Returns:
        :class:`SelectedTargets` with float32 ``[N, C]`` targets and the ``[N]`` selection mask.

    Raises:
        ValueError: unknown ``rule``, ``quantile`` outside ``[0, 1)``, ``distilled`` missing for ``soft`` / ``pure``,
            neither ``distilled`` nor ``n_classes`` given, or mismatched shapes.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"rule must be one of {SELECTION_RULES}, got {rule!r}")
    _check_quantile(quantile)
    if distilled is None and rule in _NEEDS_DISTILLED:
        raise ValueError(f"distilled is required by rule {rule!r}")
    if pseudo.dim() != 1:
        raise ValueError(f"pseudo must be [N], got shape {tuple(pseudo.shape)}")
    if weights.shape != pseudo.shape:
        raise ValueError(f"weights must have the shape of pseudo {tuple(pseudo.shape)}, got {tuple(weights.shape)}")
    n = pseudo.shape[0]
    if distilled is not None:
        if distilled.dim() != 2 or distilled.shape[0] != n:
            raise ValueError(f"distilled must be [N, C] with N = {n}, got shape {tuple(distilled.shape)}")
        if n_classes is not None and n_classes != distilled.shape[1]:
            raise ValueError(f"n_classes ({n_classes}) differs from distilled's width {distilled.shape[1]}")
        c = distilled.shape[1]
    elif n_classes is None:
        raise ValueError("n_classes is required when distilled is None")
    else:
        c = n_classes
    if c < 1:
        raise ValueError(f"n_classes must be >= 1, got {c}")
    device = pseudo.device
    onehot = (pseudo.unsqueeze(1) == torch.arange(c, device=device)).to(torch.float32)  # [N, C]
    w = weights.to(device=device, dtype=torch.float32)
    if rule == "hard":
        if n == 0:
            return SelectedTargets(targets=onehot, selected=torch.zeros(0, dtype=torch.bool, device=device))
        selected = w > quantile_threshold(w, quantile)
        targets = torch.where(selected.unsqueeze(1), w.unsqueeze(1) * onehot, torch.zeros_like(onehot))
        return SelectedTargets(targets=targets, selected=selected)
    assert distilled is not None  # checked above for soft and pure
    d = distilled.to(device=device, dtype=torch.float32)
    if rule == "soft":
        targets = w.unsqueeze(1) * onehot + (1.0 - w).unsqueeze(1) * d
    else:
        targets = 0.5 * onehot + 0.5 * d
    return SelectedTargets(targets=targets, selected=torch.ones(n, dtype=torch.bool, device=device))


def _check_quantile(quantile: float) -> None:
    if not (isinstance(quantile, int | float) and 0.0 <= quantile < 1.0):
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
