"""Closed-set identification: Rank-1 and Rank-k accuracy of probes against a gallery, mean and std over splits.

As in the original WebCaricature evaluation (docs/method.md §6.6): probe and gallery embeddings (L2-normalised
here by default) are compared by squared Euclidean distance; a probe is a Rank-k hit when any of its k nearest
gallery items carries the probe's label (Rank-1: the nearest one). Equal distances are ordered by gallery index
(stable sort), which makes the result deterministic where the original's ``argpartition`` was not.

**A probe whose label no gallery item carries** is counted, as a miss at every rank (its first-hit rank is
``G + 1``), as the original counts it; it is not an error. The caricature folds leave such probes out upstream
(``pipeline/folds/cari.py``), so here they only arise from hand-made inputs.

**The original's Rank-n as coded** (``evaluate_webcavi_identify.py``, ``rank_n``, lines 208–219, docs/method.md
§6.6): it lists, probe after probe, whether each of the probe's ``n`` nearest gallery items (``argpartition`` of the
distance row, ``[:n]``) carries the probe's label, a flat list of ``P * n`` booleans, and then counts probe ``i`` as
a hit when ``correct_prediction[i::n]`` holds a True: a stride through the whole list, where probe ``i``'s own
candidates are ``[i * n:(i + 1) * n]``. Flat index ``i + j * n`` is candidate ``i % n`` of probe ``i // n + j``, so
the test reads column ``i % n`` of every probe from ``i // n`` on (:func:`strided_rank_hits`). The value no longer
measures the probe's own candidates: where several gallery items per identity make most columns right for some
probe, it comes out too high (seeded random data, 3 gallery items per identity: 1.000 as coded against 0.920); with
one gallery item per identity and a good embedding, columns past the first are rarely right and it comes out too low
(0.565 against 0.998; ``tests/test_cari_evaluation.py``). Its Rank-1 is computed separately (``argmin``, first index
on ties) and is unaffected, so the strided value for ``k = 1`` is our Rank-1. ``argpartition`` leaves the order of
the ``n`` candidates, and the choice among candidates tied at the ``n``-th distance, unspecified (it depends on
NumPy's selection algorithm and version); because the stride reads a fixed column, the as-coded value depends on
that order. Here the order is fixed as **the ``n`` nearest sorted by distance, ties by gallery index (stable
sort)**, so the value is the one the original would print if its ``argpartition`` had returned the candidates
sorted. The original cannot run with ``n >= G`` (``argpartition``'s ``kth`` out of range); here ``k <= G`` is
defined (with ``k = G`` every gallery item is a candidate) and ``k > G`` gives NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.evaluation.checks import EvaluationInputError, as_embeddings, as_labels, l2_normalize

__all__ = ["IdentificationResult", "evaluate_identification", "first_hit_rank", "leave_one_out_ranks",
           "nearest_matches", "rank_k_accuracy", "strided_rank_accuracy", "strided_rank_hits"]


def _squared_distances(probe: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """``Array[P, G]`` squared Euclidean distances, ``|p|^2 + |g|^2 - 2 p.g`` clipped at 0."""
    d = (probe * probe).sum(1)[:, None] + (gallery * gallery).sum(1)[None, :] - 2.0 * probe @ gallery.T
    return np.maximum(d, 0.0)


def _ranked(
    probe: np.ndarray,
    probe_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    normalize: bool,
    chunk: int,
    n_keep: int,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the probes: first-hit ranks ``Array[P]`` and label matches of the ``n_keep`` nearest gallery
    items ``Array[P, min(n_keep, G)]`` (stable distance order)."""
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
    keep = min(int(n_keep), len(gallery))
    ranks = np.empty(len(probe), dtype=np.int64)
    matches = np.empty((len(probe), keep), dtype=bool)
    for start in range(0, len(probe), chunk):
        stop = min(start + chunk, len(probe))
        order = np.argsort(_squared_distances(probe[start:stop], gallery), axis=1, kind="stable")  # (p, G)
        match = gallery_labels[order] == probe_labels[start:stop, None]
        ranks[start:stop] = np.where(match.any(axis=1), match.argmax(axis=1) + 1, len(gallery) + 1)
        matches[start:stop] = match[:, :keep]
    return ranks, matches


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
    return _ranked(probe, probe_labels, gallery, gallery_labels, normalize, chunk, 0)[0]


def nearest_matches(
    probe: np.ndarray,
    probe_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    n: int,
    normalize: bool = True,
    chunk: int = 1024,
) -> np.ndarray:
    """Whether each probe's ``j``-th nearest gallery item carries the probe's label, for ``j < n``.

    The original's ``correct_prediction`` list reshaped to one row per probe, with the candidates in the order
    fixed by this module (sorted by distance, ties by gallery index).

    Args:
        probe, probe_labels, gallery, gallery_labels, normalize, chunk: as in :func:`first_hit_rank`.
        n: candidates per probe (>= 1).

    Returns:
        Array[P, min(n, G)] bool.
    """
    if int(n) < 1:
        raise EvaluationInputError(f"the number of candidates must be >= 1, got {n}")
    return _ranked(probe, probe_labels, gallery, gallery_labels, normalize, chunk, int(n))[1]


def strided_rank_hits(matches: np.ndarray, k: int) -> np.ndarray:
    """The original's Rank-k hit of every probe, as coded: probe ``i`` is a hit when ``correct_prediction[i::k]``
    holds a True, where ``correct_prediction = matches[:, :k].ravel()`` (see the module docstring).

    For ``k = 1`` this is the stride itself (probe ``i`` reads every probe from ``i`` on), which the original never
    ran: its Rank-1 is the ``argmin``; :func:`strided_rank_accuracy` reports that one for ``k = 1``.

    Args:
        matches (Array[P, m] bool): :func:`nearest_matches` with ``m >= k``.
        k: the rank ``n`` (>= 1).

    Returns:
        Array[P] bool.
    """
    matches = np.asarray(matches, dtype=bool)
    k = int(k)
    if matches.ndim != 2 or k < 1 or matches.shape[1] < k:
        raise EvaluationInputError(f"need an Array[P, m] of matches with m >= k >= 1, got shape {matches.shape} "
                                   f"and k = {k}")
    cols = matches[:, :k]
    # suffix[q, c] = any(cols[q:, c]): flat index i + j*k is probe i // k + j, candidate i % k
    suffix = np.logical_or.accumulate(cols[::-1], axis=0)[::-1]
    i = np.arange(len(cols))
    return suffix[i // k, i % k]


def strided_rank_accuracy(matches: np.ndarray, k: int) -> float:
    """The Rank-k the original prints: the ``argmin`` Rank-1 for ``k = 1``, :func:`strided_rank_hits` for ``k > 1``;
    NaN when ``k`` exceeds the candidates available (``matches.shape[1]``, i.e. ``k > G``).
    """
    matches = np.asarray(matches, dtype=bool)
    if int(k) > matches.shape[1]:
        return float("nan")
    if int(k) == 1:
        return float(np.mean(matches[:, 0]))
    return float(np.mean(strided_rank_hits(matches, k)))


def rank_k_accuracy(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of probes with a first-hit rank ``<= k``, for each ``k``."""
    return {int(k): float(np.mean(ranks <= k)) for k in ks}


def _opt(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class IdentificationResult:
    """Rank-k accuracies over ``S`` splits; optionally also the original's strided Rank-k (module docstring)."""

    ks: tuple[int, ...]
    per_split: np.ndarray = field(repr=False)  #: Array[S, len(ks)]
    mean: dict[int, float] = field(default_factory=dict)
    std: dict[int, float] = field(default_factory=dict)
    #: Array[S, len(ks)], the original's Rank-k as coded (stride bug); NaN where ``k > G``; None = not computed
    strided_per_split: np.ndarray | None = field(default=None, repr=False)
    strided_mean: dict[int, float] | None = None  #: NaN where undefined in any split
    strided_std: dict[int, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values; ``rank_strided`` (NaN as None) only when the strided values were computed."""
        out: dict[str, Any] = {
            "ks": list(self.ks), "splits": len(self.per_split),
            "rank": {str(k): {"mean": self.mean[k], "std": self.std[k],
                              "per_split": self.per_split[:, i].tolist()} for i, k in enumerate(self.ks)}}
        if self.strided_per_split is not None and self.strided_mean is not None and self.strided_std is not None:
            out["rank_strided"] = {
                str(k): {"mean": _opt(self.strided_mean[k]), "std": _opt(self.strided_std[k]),
                         "per_split": [_opt(x) for x in self.strided_per_split[:, i]]}
                for i, k in enumerate(self.ks)}
        return out


def evaluate_identification(
    splits: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    ks: Sequence[int] = (1, 10),
    normalize: bool = True,
    strided: bool = True,
) -> IdentificationResult:
    """Rank-k accuracy per split, then mean and (population) std over splits.

    Args:
        splits: one ``(probe Array[P, D], probe_labels Array[P], gallery Array[G, D], gallery_labels Array[G])``
            tuple per split. A probe label absent from the gallery counts as a miss (module docstring).
        ks: the ranks to report (each >= 1).
        normalize: L2-normalise embeddings first.
        strided: also compute the original's Rank-k as coded (``strided_*`` fields; ``rank_strided`` in
            :meth:`IdentificationResult.to_dict`); equal to Rank-k for ``k = 1``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise EvaluationInputError(f"ranks must be >= 1, got {list(ks)}")
    if not splits:
        raise EvaluationInputError("no splits to evaluate")
    rows, strided_rows = [], []
    for probe, probe_labels, gallery, gallery_labels in splits:
        ranks, matches = _ranked(probe, probe_labels, gallery, gallery_labels, normalize, 1024,
                                 max(ks) if strided else 0)
        acc = rank_k_accuracy(ranks, ks)
        rows.append([acc[k] for k in ks])
        if strided:
            strided_rows.append([strided_rank_accuracy(matches, k) for k in ks])
    per_split = np.array(rows)
    extra: dict[str, Any] = {}
    if strided:
        s = np.array(strided_rows)
        extra = {"strided_per_split": s, "strided_mean": {k: float(s[:, i].mean()) for i, k in enumerate(ks)},
                 "strided_std": {k: float(s[:, i].std()) for i, k in enumerate(ks)}}
    return IdentificationResult(ks=ks, per_split=per_split,
                                mean={k: float(per_split[:, i].mean()) for i, k in enumerate(ks)},
                                std={k: float(per_split[:, i].std()) for i, k in enumerate(ks)}, **extra)


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
