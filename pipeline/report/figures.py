"""The report's figures (matplotlib, Agg backend, PNG): task weights and losses, ROC curves, confusion matrices.

- :func:`weights_losses_figure`: the paper's Fig. 2 / the caricature paper's Fig. 3 layout: one column per method
  (``dynamic`` beside ``naive_dynamic`` on the same fold), the task weights per step on top, the task losses below.
  Tasks are read from the ``loss_<task>`` / ``weight_<task>`` columns of ``steps.csv``, so any number of tasks works.
- :func:`roc_figure`: per method the ROC of the verification pairs pooled over folds (last epoch).
- :func:`confusion_figure`: per method the expression confusion matrix summed over folds, rows normalised.

And the curves of one training run, written by the training stages beside the run's model (``curves.png``):

- :func:`finetune_curves_figure`: task weights and task losses per step of one fine-tuning run;
- :func:`pretrain_curves_figure`: losses, batch accuracy and verification accuracy of a pretraining run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["confusion_figure", "finetune_curves_figure", "pretrain_curves_figure", "roc_figure", "step_tasks",
           "weights_losses_figure"]


def _pyplot():  # noqa: ANN202 - matplotlib's module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # no timestamp in the file: the same inputs give the same bytes (the report is committed)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def step_tasks(steps: pd.DataFrame) -> list[str]:
    """The tasks logged in a ``steps.csv`` frame: every ``loss_<task>`` column that has a ``weight_<task>``."""
    return [c[len("loss_"):] for c in steps.columns
            if c.startswith("loss_") and f"weight_{c[len('loss_'):]}" in steps.columns]


def weights_losses_figure(curves: Mapping[str, pd.DataFrame], path: Path, *, title: str,
                          labels: Mapping[str, str] | None = None) -> Path:
    """Weights (top row) and losses (bottom row) per step, one column per method of ``curves``.

    Args:
        curves: method → its ``steps.csv`` frame (columns ``step``, ``loss_<task>``, ``weight_<task>``).
        path: the PNG to write.
        title: the figure title (dataset and fold).
        labels: method → column title.
    """
    if not curves:
        raise ValueError("no curves to plot")
    plt = _pyplot()
    labels = labels or {}
    n = len(curves)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 6.0), squeeze=False, sharex="col")
    for j, (method, steps) in enumerate(curves.items()):
        tasks = step_tasks(steps)
        top, bottom = axes[0][j], axes[1][j]
        for t in tasks:
            top.plot(steps["step"], steps[f"weight_{t}"], label=t, linewidth=1.2)
            bottom.plot(steps["step"], steps[f"loss_{t}"], label=t, linewidth=1.0)
        top.set_title(labels.get(method, method))
        top.set_ylabel("task weight")
        top.set_ylim(-0.02, 1.02)
        bottom.set_ylabel("task loss")
        bottom.set_xlabel("step")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def roc_figure(scores: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]], path: Path, *, title: str,
               labels: Mapping[str, str] | None = None) -> Path:
    """ROC curves (true accept rate against false accept rate) per method, the pairs of all folds pooled.

    Args:
        scores: method → per fold ``(distances float [P], same bool [P])``; a smaller distance means "same".
    """
    from sklearn.metrics import auc, roc_curve

    if not scores:
        raise ValueError("no scores to plot")
    plt = _pyplot()
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(6.0, 5.2))
    for method, folds in scores.items():
        dist = np.concatenate([d for d, _ in folds]).astype(np.float64)
        same = np.concatenate([s for _, s in folds]).astype(bool)
        far, tar, _ = roc_curve(same, -dist)
        ax.plot(far, tar, linewidth=1.2, label=f"{labels.get(method, method)} (AUC {auc(far, tar):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def confusion_figure(confusions: Mapping[str, np.ndarray], class_names: Sequence[str], path: Path, *, title: str,
                     labels: Mapping[str, str] | None = None) -> Path:
    """Row-normalised expression confusion matrices (counts ``int [C, C]``, [true, predicted]), one per method."""
    if not confusions:
        raise ValueError("no confusion matrices to plot")
    plt = _pyplot()
    labels = labels or {}
    n = len(confusions)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 3.4 * nrows + 0.4), squeeze=False)
    k = len(class_names)
    short = [c[:3] for c in class_names]
    for ax, (method, counts) in zip(axes.flat, confusions.items(), strict=False):
        counts = np.asarray(counts, dtype=np.float64)
        rows = counts.sum(axis=1, keepdims=True)
        norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
        ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if norm[i, j] > 0.6 else "black")
        acc = float(np.trace(counts) / counts.sum()) if counts.sum() else float("nan")
        ax.set_title(f"{labels.get(method, method)}\naccuracy {acc:.3f}", fontsize=8)
        ax.set_xticks(range(k), short, fontsize=6)
        ax.set_yticks(range(k), short, fontsize=6)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def finetune_curves_figure(rows: Sequence[Mapping[str, float]], names: Sequence[str], path: Path, title: str) -> None:
    """Task weights (top) and task losses (bottom) per step of one fine-tuning run, the paper's Fig. 2/3 layout.

    Args:
        rows: the run's step rows (``step``, ``weight_<task>``, ``loss_<task>``, ``present_<task>``); a task's loss
            is left out of the steps where it had no labelled sample.
        names: the task names, in plotting order.
        path: the PNG to write (100 dpi).
        title: the figure title.
    """
    plt = _pyplot()
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for t in names:
        top.plot(steps, [r[f"weight_{t}"] for r in rows], label=t, linewidth=1)
        bottom.plot(steps, [r[f"loss_{t}"] if r[f"present_{t}"] else float("nan") for r in rows], label=t,
                    linewidth=1)
    top.set_ylabel("weight")
    bottom.set_ylabel("loss")
    bottom.set_xlabel("step")
    top.legend(loc="best", fontsize=8)
    _save_run_curves(fig, top, title, path)


def pretrain_curves_figure(rows: Sequence[Mapping[str, float]], history: Sequence[Mapping[str, float]], path: Path,
                           title: str) -> None:
    """Loss and cross entropy (top), batch and verification accuracy (bottom) per step of a pretraining run.

    Args:
        rows: the logged step rows (``step``, ``loss``, ``cross_entropy``, ``train_accuracy``).
        history: the verification evaluations (``step``, ``verification_accuracy``); may be empty.
        path: the PNG to write (100 dpi).
        title: the figure title.
    """
    plt = _pyplot()
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, [r["loss"] for r in rows], label="loss", linewidth=1)
    top.plot(steps, [r["cross_entropy"] for r in rows], label="cross entropy", linewidth=1)
    top.set_ylabel("loss")
    top.legend(loc="best", fontsize=8)
    bottom.plot(steps, [r["train_accuracy"] for r in rows], label="batch accuracy", linewidth=1)
    if history:
        bottom.plot([e["step"] for e in history], [e["verification_accuracy"] for e in history], "o-",
                    label="verification accuracy", linewidth=1)
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("step")
    bottom.legend(loc="best", fontsize=8)
    _save_run_curves(fig, top, title, path)


def _save_run_curves(fig, top, title: str, path: Path) -> None:  # noqa: ANN001 - a matplotlib Figure and Axes
    """Title the top axes, lay out and write a run's ``curves.png`` (100 dpi, matplotlib's default metadata)."""
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
