"""Threshold-free summaries of a verification ROC: area under the curve and equal error rate.

Scores are negated distances (a smaller distance means "more likely the same identity"), so the ROC is the one of
the rule "same if d < t" swept over every t. Ties in distance form one diagonal ROC segment (scikit-learn's
``roc_curve``), which is how both AUC (trapezoid rule) and EER (linear interpolation) treat them.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import auc as _trapezoid_auc
from sklearn.metrics import roc_curve

__all__ = ["auc_eer", "eer_from_roc"]


def auc_eer(dist: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """AUC and EER of the pairs' ROC curve.

    Args:
        dist (Array[N]): pair distances (smaller = more similar).
        same (Array[N], bool): True for same-identity pairs.

    Returns:
        ``(auc, eer)``, both NaN when ``same`` holds a single class (the ROC is undefined).
    """
    n_same = int(np.count_nonzero(same))
    if n_same == 0 or n_same == len(same):
        return float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(same, -dist)
    return float(_trapezoid_auc(fpr, tpr)), eer_from_roc(fpr, tpr)


def eer_from_roc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The rate where the false-reject rate ``1 - tpr`` equals ``fpr`` on the piecewise-linear ROC.

    This is the root of ``1 - x - tpr(x)`` that facenet's ``validate_on_lfw`` finds with ``brentq`` on
    ``interp1d(fpr, tpr)``, computed exactly on the segment where the sign changes (no root finder; well defined
    also for vertical segments, where ``interp1d`` is not).

    Args:
        fpr (Array[K]): non-decreasing false-positive rates, starting at 0 and ending at 1.
        tpr (Array[K]): the matching true-positive rates, non-decreasing.
    """
    gap = (1.0 - tpr) - fpr  # decreasing from 1 at (0, 0) to -1 at (1, 1)
    i = int(np.argmax(gap <= 0))
    if i == 0:
        return float(fpr[0])
    g0, g1 = gap[i - 1], gap[i]
    w = g0 / (g0 - g1)
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
