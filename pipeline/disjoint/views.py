"""Disjoint views of labelled data: which images label which task (docs/disjoint.md#views).

``demo_halves`` turns one fold of a dataset labelled for every task (the demo's Oulu-CASIA-like set) into two
disjoint sources: its training subjects, ordered by the SHA-256 of their names, split in two halves; the first half
keeps only the first task's labels (identity), the second only the second task's (expression). The labels masked
that way are returned apart (:attr:`DisjointView.hidden`): the stage writes them to a sidecar file that no training
code reads (the report measures the pseudo labels against it), and the training labels of those images are ``-1``.
With ``labels: full`` nothing is masked (the upper bound on the same images and sources).

The images of the view are stored source after source (what :class:`~pipeline.disjoint.plan.DisjointPlan` expects).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from pipeline.training.data import LabelledImages

__all__ = ["DisjointView", "demo_halves", "halves_of"]


@dataclass
class DisjointView:
    """The training images of a disjoint view and what each source labels.

    Attributes:
        train: the images, source after source, with the labels each source keeps (``-1`` elsewhere).
        sizes: images per source; ``source_tasks``: the task each labels; ``source_names``: how they are named.
        hidden: the masked labels (``image_id``, ``task``, ``label``): never a training input.
        subjects: per source, its subjects.
    """

    train: LabelledImages
    sizes: list[int]
    source_tasks: list[str]
    source_names: list[str]
    hidden: pd.DataFrame
    subjects: list[list[str]]


def halves_of(subjects: Sequence[str]) -> tuple[list[str], list[str]]:
    """The two halves of ``subjects``: ordered by the SHA-256 of the name, the first ``ceil(n / 2)`` and the rest
    (a subject's half does not depend on the other subjects' names beyond that order)."""
    ordered = sorted(set(subjects), key=lambda s: (hashlib.sha256(s.encode()).hexdigest(), s))
    k = math.ceil(len(ordered) / 2)
    return ordered[:k], ordered[k:]


def demo_halves(train: LabelledImages, subject_of: Mapping[str, str], tasks: Sequence[str], *, full: bool = False
                ) -> DisjointView:
    """The ``demo_halves`` view of a fold's training images ``train`` (labelled for both ``tasks``).

    Raises:
        ValueError: not two tasks, an image without a subject, or fewer than two training subjects.
    """
    if len(tasks) != 2:
        raise ValueError(f"demo_halves needs two tasks, got {list(tasks)}")
    missing = [i for i in train.image_ids if i not in subject_of]
    if missing:
        raise ValueError(f"{len(missing)} training images have no subject (e.g. {missing[0]!r})")
    subjects = sorted({subject_of[i] for i in train.image_ids})
    if len(subjects) < 2:
        raise ValueError(f"demo_halves needs at least two training subjects, the fold has {len(subjects)}")
    halves = halves_of(subjects)
    order: list[int] = []
    sizes: list[int] = []
    for half in halves:
        members = set(half)
        pos = [k for k, i in enumerate(train.image_ids) if subject_of[i] in members]
        order += pos
        sizes.append(len(pos))
    index = torch.tensor(order, dtype=torch.int64)
    ids = [train.image_ids[k] for k in order]
    labels = {t: v.index_select(0, index.to(v.device)).clone() for t, v in train.labels.items()}
    hidden_rows = []
    if not full:
        start = 0
        for s, n in enumerate(sizes):
            for t in tasks:
                if t == tasks[s]:
                    continue
                lab = labels[t][start : start + n]
                for k in torch.nonzero(lab >= 0).flatten().tolist():
                    hidden_rows.append((ids[start + k], t, int(lab[k])))
                lab.fill_(-1)
            start += n
    hidden = pd.DataFrame(hidden_rows, columns=["image_id", "task", "label"])
    images = train.images.index_select(0, index.to(train.images.device))
    return DisjointView(train=LabelledImages(images, labels, ids), sizes=sizes, source_tasks=list(tasks),
                        source_names=[f"{tasks[0]}_half", f"{tasks[1]}_half"], hidden=hidden,
                        subjects=[list(h) for h in halves])
