"""Classification metrics of a task's head (facial expression, visual or caricature identity...): accuracy,
per-class accuracy, row-normalised confusion matrix.

As in the original expression evaluation (docs/method.md §6.3): the prediction is the argmax of the (ReLU'd)
logits, ties going to the lowest class index (``np.argmax``); accuracy is the mean over images; the confusion
matrix counts ``[true, pred]`` and each row is divided by its true-class count, so its diagonal is the per-class
accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.evaluation.checks import EvaluationInputError, as_labels

__all__ = ["ClassificationResult", "evaluate_classification", "predict"]


def predict(scores: np.ndarray) -> np.ndarray:
    """Class predictions ``Array[N]`` int64 from scores ``Array[N, C]``: argmax, ties to the lowest index."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise EvaluationInputError(f"scores must be a 2-D array (N, C) with C >= 1, got shape {scores.shape}")
    return np.argmax(scores, axis=1).astype(np.int64)


@dataclass(frozen=True)
class ClassificationResult:
    """Classification metrics over ``N`` images and ``C`` classes."""

    n_images: int
    accuracy: float
    per_class_accuracy: np.ndarray = field(repr=False)  #: Array[C]; NaN for a class without images
    confusion: np.ndarray = field(repr=False)  #: Array[C, C] int, counts [true, pred]
    confusion_normalized: np.ndarray = field(repr=False)  #: Array[C, C] float, rows / true count (NaN row if 0)
    class_names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; NaN becomes None."""
        out: dict[str, Any] = {"n_images": self.n_images, "accuracy": float(self.accuracy),
                               "per_class_accuracy": _nan_to_none(self.per_class_accuracy),
                               "confusion": self.confusion.tolist(),
                               "confusion_normalized": _nan_to_none(self.confusion_normalized)}
        if self.class_names is not None:
            out["class_names"] = list(self.class_names)
        return out


def _nan_to_none(a: np.ndarray) -> list[Any]:
    """Nested lists of floats, NaN as None."""
    return [_nan_to_none(r) for r in a] if a.ndim > 1 else [float(v) if np.isfinite(v) else None for v in a]


def evaluate_classification(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> ClassificationResult:
    """Accuracy, per-class accuracy and confusion matrices.

    Args:
        y_true (Array[N], int): true class indices in ``[0, C)``.
        y_pred (Array[N], int) or scores (Array[N, C]): predicted indices, or scores to take the argmax of.
        n_classes: ``C``; defaults to ``len(class_names)``, else to the largest label + 1.
        class_names: optional names, one per class.
    """
    y_pred = np.asarray(y_pred)
    if y_pred.ndim == 2:
        if n_classes is None and class_names is None:
            n_classes = y_pred.shape[1]
        y_pred = predict(y_pred)
    n = len(np.asarray(y_true))
    if n == 0:
        raise EvaluationInputError("no images to evaluate")
    y_true = as_labels(y_true, n, "true labels")
    y_pred = as_labels(y_pred, n, "predicted labels")
    if class_names is not None:
        if n_classes is not None and n_classes != len(class_names):
            raise EvaluationInputError(f"{len(class_names)} class names for {n_classes} classes")
        n_classes = len(class_names)
    if n_classes is None:
        n_classes = int(max(y_true.max(), y_pred.max())) + 1
    for name, y in (("true", y_true), ("predicted", y_pred)):
        if y.min() < 0 or y.max() >= n_classes:
            raise EvaluationInputError(f"{name} labels must lie in [0, {n_classes}), got {y.min()}..{y.max()}")
    confusion = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes)
    rows = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalized = np.where(rows > 0, confusion / rows, np.nan)
    return ClassificationResult(
        n_images=n, accuracy=float(np.mean(y_true == y_pred)), per_class_accuracy=np.diagonal(normalized).copy(),
        confusion=confusion, confusion_normalized=normalized,
        class_names=tuple(class_names) if class_names is not None else None,
    )
