"""Evaluation of a multi-task model on a fold, task by task as the task set says (``evaluation`` of each task).

Uses the evaluation library (:mod:`pipeline.evaluation`), so the numbers are the ``verify`` command's. The kinds
(:data:`~pipeline.settings.EVALUATIONS`), each on the test fold's images:

- ``verification``: the task's L2-normalised embeddings on the fold's pairs: accuracy, VAL@FAR, AUC in the
  protocol's mode (``M["verification"]``, ``M["verification_accuracy"]``; scores ``distances``, ``same``);
- ``classification``: argmax of the task's head over the images labelled for it: accuracy, per-class accuracy,
  confusion (``M[<task>]``, ``M["<task>_accuracy"]``; scores ``<task>_logits``, ``<task>_labels``);
- ``identification``: Rank-1 and Rank-10 of the task's embeddings, each labelled image a probe against all the
  others (``M["identification"]``, ``M["identification_rank1"]``).

``M["authentication"]`` (docs/method.md §6.4: verification × expression) is the product of the verification accuracy and
every classification accuracy, when both kinds are measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.evaluation.classification import evaluate_classification
from pipeline.evaluation.identification import IdentificationResult, leave_one_out_ranks, rank_k_accuracy
from pipeline.evaluation.verification import evaluate_distances, squared_distances
from pipeline.settings import ProtocolSettings, TaskSetSettings
from pipeline.training.data import preprocess

__all__ = ["IDENTIFICATION_RANKS", "EvalData", "Evaluation", "Predictions", "criteria", "describe_accuracies",
           "evaluate", "evaluations_of", "headline", "predict"]

#: the ranks identification reports (the caricature paper's Rank-1 and Rank-10, docs/method.md §6.6)
IDENTIFICATION_RANKS = (1, 10)


@dataclass
class Predictions:
    """Per-image outputs: ``embeddings[task] [N, 1792]`` (L2-normalised) and ``logits[task] [N, C_task]``
    (float32)."""

    embeddings: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]


@dataclass
class EvalData:
    """What one evaluation needs.

    Attributes:
        images: ``uint8 [N, 3, S, S]`` (on the model's device).
        pair_a, pair_b: ``int64 [P]`` row indices into ``images`` of each pair's two sides.
        same: ``bool [P]``.
        labels: per task, ``int64 [N]`` labels (``-1`` = not labelled, excluded from its metrics).
        class_names: per task labelled by a label set, its class names.
    """

    images: torch.Tensor
    pair_a: np.ndarray
    pair_b: np.ndarray
    same: np.ndarray
    labels: dict[str, np.ndarray]
    class_names: dict[str, list[str]]


#: one evaluation: (task, kind)
Evaluation = tuple[str, str]


def evaluations_of(tasks: TaskSetSettings, first: int | None = None) -> list[Evaluation]:
    """The ``(task, kind)`` evaluations of a task set in task order (``first``: of its first tasks only)."""
    return [(name, kind) for name in tasks.names[:first] for kind in tasks.tasks[name].evaluation]


def criteria(tasks: TaskSetSettings) -> dict[str, str]:
    """Model-selection criterion → the metric of ``M`` it maximises: ``verification`` (when a task is verified),
    each classification task, ``identification`` (Rank-1), ``authentication`` (when verification and classification
    are both measured)."""
    out = {"verification": "verification_accuracy"} if tasks.evaluated("verification") else {}
    out.update({t: f"{t}_accuracy" for t in tasks.evaluated("classification")})
    if tasks.evaluated("identification"):
        out["identification"] = "identification_rank1"
    if tasks.evaluated("verification") and tasks.evaluated("classification"):
        out["authentication"] = "authentication"
    return out


def headline(m: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of an evaluation ``M`` (accuracies, authentication, Rank-1, AUC), by name."""
    out = {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    auc = (m.get("verification") or {}).get("auc")
    if auc is not None:
        out["auc"] = float(auc)
    return out


def describe_accuracies(m: dict[str, Any]) -> str:
    """``verification 0.9150, expression 0.5170``: the accuracies of an evaluation ``M``, for a log line ("" when
    there is none)."""
    return ", ".join(f"{k.removesuffix('_accuracy')} {v:.4f}" for k, v in headline(m).items()
                     if k.endswith("_accuracy"))


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, *, crop: int, input_size: int, batch_size: int = 100,
            amp: bool = False, channels_last: bool = False, embed: Sequence[str] = ()) -> Predictions:
    """Every head's logits and the embeddings of the branches ``embed`` of ``images uint8 [N, 3, S, S]`` (centre
    crop, evaluation mode)."""
    was_training = model.training
    model.eval()
    embs: dict[str, list[torch.Tensor]] = {name: [] for name in embed}
    logits: dict[str, list[torch.Tensor]] = {}
    use_amp = amp and images.device.type == "cuda"
    try:
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start : start + batch_size], crop=crop, input_size=input_size, train=False,
                           channels_last=channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                out = model(x)
            for name in embed:
                embs[name].append(out.embedding(name).float().cpu())
            for name, branch in out.branches.items():
                logits.setdefault(name, []).append(branch.logits.float().cpu())
    finally:
        model.train(was_training)
    return Predictions({k: torch.cat(v).numpy() for k, v in embs.items()},
                       {k: torch.cat(v).numpy() for k, v in logits.items()})


def _identification(embeddings: np.ndarray, labels: np.ndarray) -> IdentificationResult | None:
    labelled = labels >= 0
    ranks = leave_one_out_ranks(embeddings[labelled], labels[labelled])
    if len(ranks) == 0:
        return None
    acc = rank_k_accuracy(ranks, IDENTIFICATION_RANKS)
    per_split = np.array([[acc[k] for k in IDENTIFICATION_RANKS]])
    return IdentificationResult(ks=IDENTIFICATION_RANKS, per_split=per_split, mean=acc,
                                std={k: 0.0 for k in IDENTIFICATION_RANKS})


def evaluate(pred: Predictions, data: EvalData, evaluations: Sequence[Evaluation], *, protocol: ProtocolSettings,
             seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics ``M`` and raw scores of one evaluation (see the module docstring for the keys).

    A kind that cannot be measured (no pairs; no labelled image of the task) is left out of ``M``.
    """
    m: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    accuracies: list[float] = []
    for task, kind in evaluations:
        if kind == "verification" and len(data.same):
            emb = pred.embeddings[task]
            dist = squared_distances(emb[data.pair_a], emb[data.pair_b], normalize=False)
            result = evaluate_distances(dist, data.same, n_folds=protocol.n_folds,
                                        far_targets=tuple(protocol.far_targets), mode=protocol.mode, seed=seed)
            m["verification"] = result.to_dict()
            m["verification_accuracy"] = result.accuracy
            scores["distances"] = dist
            scores["same"] = data.same.astype(bool)
        elif kind == "classification" and task in pred.logits and (data.labels[task] >= 0).any():
            labels = data.labels[task]
            labelled = labels >= 0
            logits = pred.logits[task]
            names = data.class_names.get(task)
            result = evaluate_classification(labels[labelled], logits[labelled], n_classes=logits.shape[1],
                                             class_names=names)
            m[task] = result.to_dict()
            m[f"{task}_accuracy"] = result.accuracy
            accuracies.append(result.accuracy)
            scores[f"{task}_logits"] = logits
            scores[f"{task}_labels"] = labels
        elif kind == "identification":
            found = _identification(pred.embeddings[task], data.labels[task])
            if found is not None:
                m["identification"] = {"task": task, **found.to_dict()}
                m["identification_rank1"] = found.mean[1]
    if "verification_accuracy" in m and accuracies:
        m["authentication"] = math.prod([m["verification_accuracy"], *accuracies])
    return m, scores
