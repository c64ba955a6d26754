"""Evaluation of a multi-task model on a fold, task by task as the task set says (``evaluation`` of each task).

Uses the evaluation library (:mod:`pipeline.evaluation`), so the numbers are the ``verify`` command's. The kinds
(:data:`~pipeline.settings.EVALUATIONS`), each on the test fold's images:

- ``verification``: the task's L2-normalised embeddings on the fold's pairs: accuracy, VAL@FAR, AUC in the
  protocol's mode (``M["verification"]``, ``M["verification_accuracy"]``; scores ``distances``, ``same``);
- ``classification``: argmax of the task's head over the images labelled for it: accuracy, per-class accuracy,
  confusion (``M[<task>]``, ``M["<task>_accuracy"]``; scores ``<task>_logits``, ``<task>_labels``);
- ``identification``: Rank-1 and Rank-10 of the task's embeddings (``M["identification"]``,
  ``M["identification_rank1"]``): against the data's probe/gallery splits where it has them (WebCaricature's C2P and
  P2C splits, :class:`ProbeGallery`: per direction, the mean and std over its splits, ours and the original code's
  strided Rank-n; ``identification_rank1`` = the mean of the directions' Rank-1), else each labelled image a probe
  against all the others (leave-one-out);
- ``cross_modal``: the task's head on the images of the other modality: the images not labelled for the task whose
  identity is known (``EvalData.identity``): ``M["<task>_cross_accuracy"]`` (the caricature paper's c2v: the visual
  head on caricatures; v2c: the caricature head on photos).

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
from pipeline.evaluation.identification import (
    IdentificationResult,
    evaluate_identification,
    leave_one_out_ranks,
    rank_k_accuracy,
)
from pipeline.evaluation.verification import evaluate_distances, squared_distances
from pipeline.settings import ProtocolSettings, TaskSetSettings
from pipeline.training.data import preprocess

__all__ = ["IDENTIFICATION_RANKS", "EvalData", "Evaluation", "Predictions", "ProbeGallery", "criteria",
           "describe_accuracies", "evaluate", "evaluations_of", "headline", "predict"]

#: the ranks identification reports (the caricature paper's Rank-1 and Rank-10, docs/method.md §6.6)
IDENTIFICATION_RANKS = (1, 10)


@dataclass
class Predictions:
    """Per-image outputs: ``embeddings[task] [N, 1792]`` (L2-normalised) and ``logits[task] [N, C_task]``
    (float32)."""

    embeddings: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]


@dataclass(frozen=True)
class ProbeGallery:
    """One identification split: row indices into the evaluated images and labels in the split's own label space.

    Attributes:
        group: the split's name (``C2P1``…).
        direction: the splits averaged together (``C2P`` | ``P2C``).
        probe, gallery: ``int64 [P]``, ``int64 [G]`` rows of ``EvalData.images``.
        probe_labels, gallery_labels: ``int64 [P]``, ``int64 [G]``.
    """

    group: str
    direction: str
    probe: np.ndarray
    probe_labels: np.ndarray
    gallery: np.ndarray
    gallery_labels: np.ndarray


@dataclass
class EvalData:
    """What one evaluation needs.

    Attributes:
        images: ``uint8 [N, 3, S, S]`` (on the model's device).
        pair_a, pair_b: ``int64 [P]`` row indices into ``images`` of each pair's two sides.
        same: ``bool [P]``.
        labels: per task, ``int64 [N]`` labels (``-1`` = not labelled, excluded from its metrics).
        class_names: per task labelled by a label set, its class names.
        identity: ``int64 [N]`` each image's identity in the heads' label space (``-1`` = none), for
            ``cross_modal``; None = not known.
        identification: the probe/gallery splits of ``identification``; None = leave-one-out over the labelled
            images; empty = the data has none (not measured).
        train_fold_val: also report VAL on the training folds (the caricature original's value, docs/method.md §6.2).
    """

    images: torch.Tensor
    pair_a: np.ndarray
    pair_b: np.ndarray
    same: np.ndarray
    labels: dict[str, np.ndarray]
    class_names: dict[str, list[str]]
    identity: np.ndarray | None = None
    identification: list[ProbeGallery] | None = None
    train_fold_val: bool = False


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


def _probe_gallery(embeddings: np.ndarray, data: EvalData, task: str) -> tuple[dict[str, Any], float]:
    """Rank-k per direction over its probe/gallery splits (``M["identification"]``) and the mean Rank-1 of the
    directions."""
    by_direction: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]] = {}
    for split in data.identification or ():
        by_direction.setdefault(split.direction, []).append(
            (embeddings[split.probe], split.probe_labels, embeddings[split.gallery], split.gallery_labels))
    results = {d: evaluate_identification(splits, IDENTIFICATION_RANKS) for d, splits in by_direction.items()}
    out = {"task": task, "directions": {d: r.to_dict() for d, r in results.items()}}
    return out, float(np.mean([r.mean[1] for r in results.values()]))


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
            extra = {"train_fold_val": True} if data.train_fold_val else {}
            result = evaluate_distances(dist, data.same, n_folds=protocol.n_folds,
                                        far_targets=tuple(protocol.far_targets), mode=protocol.mode, seed=seed,
                                        **extra)
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
        elif kind == "identification" and data.identification is None:
            found = _identification(pred.embeddings[task], data.labels[task])
            if found is not None:
                m["identification"] = {"task": task, **found.to_dict()}
                m["identification_rank1"] = found.mean[1]
        elif kind == "identification" and data.identification:
            m["identification"], m["identification_rank1"] = _probe_gallery(pred.embeddings[task], data, task)
        elif kind == "cross_modal" and task in pred.logits and data.identity is not None:
            other = (data.labels[task] < 0) & (data.identity >= 0)
            if other.any():
                hits = pred.logits[task][other].argmax(axis=1) == data.identity[other]
                m[f"{task}_cross"] = {"accuracy": float(hits.mean()), "n": int(other.sum())}
                m[f"{task}_cross_accuracy"] = float(hits.mean())
    if "verification_accuracy" in m and accuracies:
        m["authentication"] = math.prod([m["verification_accuracy"], *accuracies])
    return m, scores
