"""Closed-set identification: Rank-1 and Rank-k accuracy of probes against a gallery, mean and std over splits.

As in the original WebCaricature evaluation (docs/method.md §6.6): probe and gallery embeddings (L2-normalised
here by default) are compared by squared Euclidean distance; a probe is a Rank-k hit when any of its k nearest
gallery items carries the probe's label (Rank-1: the nearest one). Equal distances are ordered by gallery index
(stable sort), which makes the result deterministic where the original's ``argpartition`` was not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.evaluation.checks import EvaluationInputError, as_embeddings, as_labels, l2_normalize

__all__ = ["IdentificationResult", "evaluate_identification", "first_hit_rank", "leave_one_out_ranks",
           "rank_k_accuracy"]


def _squared_distances(probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``Array[P, G]`` squared Euclidean distances, ``|p|^2 + |g|^2 - 2 p.g`` clipped at 0."""
    d = (probe * probe).sum(1)[:, None] + (gallery * gallery).sum(1)[None, :] - 2.0 * probe @ gallery.T
    return np.maximum(d, 0.0)


def first_hit_rank(
    probe: np.ndarray,
    probe_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    normalize: bool = True,
    chunk: int = 1024,
) -> np.ndarray:
    """For each probe, the 1-based rank of the first gallery item with its label (``G + 1`` if none has it).

    Args:
        probe (Array[P, D]): probe embeddings; probe_labels (Array[P], int).
        gallery (Array[G, D]): gallery embeddings; gallery_labels (Array[G], int).
        normalize: L2-normalise both first.
        chunk: probes per block (memory is ``chunk * G`` floats).

    Returns:
        Array[P] int64; a probe is a Rank-k hit iff its value is ``<= k`` (the CMC curve is its distribution).
    """
    probe = as_embeddings(probe, "probe embeddings")
    gallery = as_embeddings(gallery, "gallery embeddings")
    if probe.shape[1] != gallery.shape[1]:
        raise EvaluationInputError(f"probe and gallery dimensions differ: {probe.shape[1]} and {gallery.shape[1]}")
    if len(gallery) == 0 or len(probe) == 0:
        raise EvaluationInputError("probe and gallery must be non-empty")
    probe_labels = as_labels(probe_labels, len(probe), "probe labels")
    gallery_labels = as_labels(gallery_labels, len(gallery), "gallery labels")
    if normalize:
        probe, gallery = l2_normalize(probe, "probe embeddings"), l2_normalize(gallery, "gallery embeddings")
    ranks = np.empty(len(probe), dtype=np.int64)
    for start in range(0, len(probe), chunk):
        stop = min(start + chunk, len(probe))
        order = np.argsort(_squared_distances(probe[start:stop], gallery), axis=1, kind="stable")  # (p, G)
        match = gallery_labels[order] == probe_labels[start:stop, None]
        ranks[start:stop] = np.where(match.any(axis=1), match.argmax(axis=1) + 1, len(gallery) + 1)
    return ranks


def rank_k_accuracy(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of probes with a first-hit rank ``<= k``, for each ``k``."""
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


@dataclass(frozen=True)
class IdentificationResult:
    """Rank-k accuracies over ``S`` splits."""

    ks: tuple[int, ...]
    per_split: np.ndarray = field(repr=False)  #: Array[S, len(ks)]
    mean: dict[int, float] = field(default_factory=dict)
    std: dict[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ks": list(self.ks), "splits": len(self.per_split),
                "rank": {str(k): {"mean": self.mean[k], "std": self.std[k],
                                  "per_split": self.per_split[:, i].tolist()} for i, k in enumerate(self.ks)}}


def evaluate_identification(
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    ks: Sequence[int] = (1, 10),
    normalize: bool = True,
) -> IdentificationResult:
    """Rank-k accuracy per split, then mean and (population) std over splits.

    Args:
        splits: one ``(probe Array[P, D], probe_labels Array[P], gallery Array[G, D], gallery_labels Array[G])``
            tuple per split.
        ks: the ranks to report (each >= 1).
        normalize: L2-normalise embeddings first.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise EvaluationInputError(f"ranks must be >= 1, got {list(ks)}")
    if not splits:
        raise EvaluationInputError("no splits to evaluate")
    rows = []
    for probe, probe_labels, gallery, gallery_labels in splits:
        ranks = first_hit_rank(probe, probe_labels, gallery, gallery_labels, normalize=normalize)
        acc = rank_k_accuracy(ranks, ks)
        rows.append([acc[k] for k in ks])
    per_split = np.array(rows)
    return IdentificationResult(ks=ks, per_split=per_split,
                                mean={k: float(per_split[:, i].mean()) for i, k in enumerate(ks)},
                                std={k: float(per_split[:, i].std()) for i, k in enumerate(ks)})


def leave_one_out_ranks(embeddings: np.ndarray, labels: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Closed-set identification within one set: every image is a probe against all the others (itself excluded).

    Args:
        embeddings (Array[N, D]); labels (Array[N], int).
        normalize: L2-normalise first.

    Returns:
        Array[M] int64: the 1-based first-hit rank of each probe whose label occurs at least twice (a probe without a
        mate in the gallery cannot be identified and is left out); see :func:`first_hit_rank`.
    """
    emb = as_embeddings(embeddings, "embeddings")
    labels = as_labels(labels, len(emb), "labels")
    if normalize:
        emb = l2_normalize(emb, "embeddings")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    probes = np.flatnonzero(counts[inverse] > 1)
    ranks = np.empty(len(probes), dtype=np.int64)
    for i, p in enumerate(probes):
        d = _squared_distances(emb[p : p + 1], emb)[0]
        d[p] = np.inf
        order = np.argsort(d, kind="stable")[:-1]  # the probe itself sorts last
        match = labels[order] == labels[p]
        ranks[i] = int(match.argmax()) + 1
    return ranks
