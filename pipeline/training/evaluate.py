"""Evaluation of a multi-task model on a fold: verification on expression pairs, expression recognition.

Uses the evaluation library (:mod:`pipeline.evaluation`) so the numbers are the ``verify`` command's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.expression import evaluate_expression
from pipeline.evaluation.verification import evaluate_distances, squared_distances
from pipeline.training.data import preprocess

__all__ = ["EvalData", "Predictions", "evaluate", "predict"]


@dataclass
class Predictions:
    """Per-image outputs: ``embeddings [N, 1792]`` (L2-normalised) and ``logits[task] [N, C_task]`` (float32)."""

    embeddings: np.ndarray
    logits: dict[str, np.ndarray]


@dataclass
class EvalData:
    """What one evaluation needs.

    Attributes:
        images: ``uint8 [N, 3, S, S]`` (on the model's device).
        pair_a, pair_b: ``int64 [P]`` row indices into ``images`` of each pair's two sides.
        same: ``bool [P]``.
        expression: ``int64 [N]`` expression labels (``-1`` = not labelled, excluded from accuracy).
        class_names: expression class names.
    """

    images: torch.Tensor
    pair_a: np.ndarray
    pair_b: np.ndarray
    same: np.ndarray
    expression: np.ndarray
    class_names: list[str]


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, *, crop: int, input_size: int, batch_size: int = 100,
            amp: bool = False, channels_last: bool = False) -> Predictions:
    """Embeddings and every head's logits of ``images uint8 [N, 3, S, S]`` (centre crop, evaluation mode)."""
    was_training = model.training
    model.eval()
    embs: list[torch.Tensor] = []
    logits: dict[str, list[torch.Tensor]] = {}
    use_amp = amp and images.device.type == "cuda"
    try:
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size], crop=crop, input_size=input_size, train=False,
                           channels_last=channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = model(x)
            embs.append(out.embeddings.float().cpu())
            for name, branch in out.branches.items():
                logits.setdefault(name, []).append(branch.logits.float().cpu())
    finally:
        model.train(was_training)
    return Predictions(torch.cat(embs).numpy(), {k: torch.cat(v).numpy() for k, v in logits.items()})


def evaluate(pred: Predictions, data: EvalData, *, mode: str = "clean", far_targets: tuple[float, ...] = (1e-3, 1e-2),
             n_folds: int = 10, seed: int = 0, expression_task: str = "expression") -> tuple[dict[str, Any], dict]:
    """Metrics ``M`` and raw scores of one evaluation.

    Returns:
        ``(M, scores)``: ``M`` = the ``verify`` JSON fields (under ``verification``) plus ``expression``
        (accuracy, per-class accuracy, confusion matrix) and the headline numbers ``verification_accuracy``,
        ``expression_accuracy`` and ``authentication`` (their product, spec §6.4); ``scores`` = ``distances [P]``,
        ``same [P]``, ``expression_logits [N, C]``, ``expression_labels [N]``.
    """
    m: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    if len(data.same):
        dist = squared_distances(pred.embeddings[data.pair_a], pred.embeddings[data.pair_b], normalize=False)
        result = evaluate_distances(dist, data.same, n_folds=n_folds, far_targets=far_targets, mode=mode, seed=seed)
        m["verification"] = result.to_dict()
        m["verification_accuracy"] = result.accuracy
        scores["distances"] = dist
        scores["same"] = data.same.astype(bool)
    labelled = data.expression >= 0
    if expression_task in pred.logits and labelled.any():
        logits = pred.logits[expression_task]
        expr = evaluate_expression(data.expression[labelled], logits[labelled], class_names=data.class_names)
        m["expression"] = expr.to_dict()
        m["expression_accuracy"] = expr.accuracy
        scores["expression_logits"] = logits
        scores["expression_labels"] = data.expression
    if "verification_accuracy" in m and "expression_accuracy" in m:
        m["authentication"] = m["verification_accuracy"] * m["expression_accuracy"]
    return m, scores
