"""Distillation targets: the teacher's logits softened by a temperature (SA-MTL's "distilled knowledge").

For the ``N`` images of a source that lack task ``t``, the teacher (the network as it was before the current
alternating round) gives logits ``Z`` [N, C] for ``t``. The distilled target is ``softmax(Z / T)``, in one of two
forms:

``softmax="row"`` (the clean form, the usual knowledge distillation): per image, ``d_ic = exp(z_ic / T) / Σ_k
exp(z_ik / T)``; every row sums to 1. A larger ``T`` flattens each row (more entropy), ``T = 1`` is the teacher's
own prediction.

``softmax="matrix"`` (faithful to the original): one softmax over **all** ``N × C`` entries, ``d_ic = exp(z_ic / T)
/ Σ_jk exp(z_jk / T)``; the matrix sums to 1, a row to its share of the total mass (``1/N`` on average, exactly
``1/N`` when every row holds the same values). What the original does, in
``utils/pseudo_density_distribution/pseudo_label_weights.py``, function ``assign_weights`` (the only place that uses
``--distill_t``): it runs ``predict_generator`` of the teacher's layer ``emotion`` / ``pose`` (the ``Dense`` logits,
before the ``*_prediction`` softmax activation, ``model/models.py``) over the **whole** other-task dataset, then
calls the module's own ``softmax(x)`` = ``np.exp(x) / np.sum(np.exp(x))`` on ``logits / distill_t``: ``np.sum``
without an axis, so the normalisation runs over the entire ``[N, C]`` prediction array. ``N`` is a dataset's size
(thousands), so each row's distilled part is tiny (its row shape is ``softmax(z_i / T)`` scaled by this row's share
of the total mass). The rows are used as they are: as the whole target under ``--is_distilled``, or mixed with the
one-hot pseudo label by :func:`pipeline.disjoint.selection.select_targets`.

Both forms subtract the maximum before exponentiating (the original does not, and overflows once ``z / T`` exceeds
~88 in float32); the result is the same wherever the original's is finite. The computation is float32 whatever the
logits' dtype (a bf16 teacher), and the result is float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DISTILL_SOFTMAX", "distill_targets"]

DISTILL_SOFTMAX = ("row", "matrix")


def distill_targets(logits: Tensor, temperature: float, softmax: str = "row") -> Tensor:
    """``softmax(logits / temperature)`` per row or over the whole matrix (module docstring).

    Args:
        logits: ``[N, C]`` teacher logits (any float dtype).
        temperature: ``T > 0`` (the original's ``--distill_t``, default 2).
        softmax: ``row`` (default: each row sums to 1) | ``matrix`` (the original: the whole matrix sums to 1).

    Returns:
        ``[N, C]`` float32 targets on the logits' device (``N = 0`` gives an empty ``[0, C]``).

    Raises:
        ValueError: a non-positive or non-finite ``temperature``, an unknown ``softmax``, or logits not ``[N, C]``.
    """
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if softmax not in DISTILL_SOFTMAX:
        raise ValueError(f"softmax must be one of {DISTILL_SOFTMAX}, got {softmax!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    z = logits.float() / float(temperature)
    if softmax == "row":
        return torch.softmax(z, dim=1)
    if z.numel() == 0:
        return z.clone()
    return torch.softmax(z.reshape(-1), dim=0).reshape(z.shape)
