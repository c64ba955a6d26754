"""Assemble one fold's training and evaluation data for a task set from the stage outputs upstream of fine-tuning.

Inputs: the manifest (``data/manifests/<d>.parquet``), the aligned faces (``data/aligned/<d>``), the fold split
(``data/folds/<d>/fold<k>.json``), its pairs (``fold<k>-pairs.parquet``), the task set and the dataset's label sets.

- Labels per task (:func:`task_labels`): a manifest column (``identity``: the index in the sorted list of **all**
  subjects, docs/method.md §5.3, so the classifier has N_train + N_test outputs; ``is_caricature``: 0/1), or a label set
  of the dataset applied to the frames (:func:`pipeline.data.label_sets.apply_label_set`; Oulu "Six" = the last 3 frames
  of every sequence); ``-1`` = not labelled for that task.
- Training images: the fold's training images that were aligned and are labelled for every task
  (``train_images: all``: FR+FER trains on the expression-labelled frames only) or for at least one
  (``train_images: any``: a task without a label is masked in the loss).
- Test images: every aligned image of the test subjects (the pairs' neutral references included), each task's
  labels ``-1`` where it has none (excluded from that task's metrics).
- Pairs whose images were not aligned are dropped and counted.
- ``val_subjects`` selection: the last ``ceil(fraction · N_train_subjects)`` training subjects (sorted) are held
  out; their pairs come from the same seeded 4-type recipe as the test pairs (:func:`pipeline.folds.pairs.
  expression_pairs`), with the label set and required classes of the fold's pair settings.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import LabelSetConfig
from pipeline.constants import MODALITY_LABELS
from pipeline.data.label_sets import apply_label_set
from pipeline.data.manifest import LABEL_COLUMNS
from pipeline.errors import DatasetError
from pipeline.faces.source import FaceSource
from pipeline.settings import TaskSetSettings
from pipeline.training.data import LabelledImages
from pipeline.training.evaluate import EvalData

__all__ = ["FoldData", "TaskLabels", "ValidationPairs", "load_fold_data", "pairs_eval_data", "task_labels"]


@dataclass(frozen=True)
class TaskLabels:
    """One task's labels over a manifest.

    Attributes:
        of: image id → class index, for the images labelled for the task.
        n_classes: classes of the task's head.
        class_names: the class names (tasks labelled by a label set), or None.
    """

    of: dict[str, int]
    n_classes: int
    class_names: list[str] | None


def task_labels(manifest: pd.DataFrame, task_set: TaskSetSettings, label_sets: Mapping[str, LabelSetConfig]
                ) -> dict[str, TaskLabels]:
    """Every task's :class:`TaskLabels` (the ``label`` of each task: a manifest column or a label-set name).

    Raises:
        DatasetError: a label names neither a manifest label column nor one of ``label_sets``.
    """
    ids = manifest["image_id"].astype(str)
    out: dict[str, TaskLabels] = {}
    for name, task in task_set.tasks.items():
        if task.label in label_sets:
            ls = label_sets[task.label]
            labelled = apply_label_set(manifest, ls)
            of = dict(zip(labelled["image_id"].astype(str), labelled["label"].astype(int), strict=True))
            out[name] = TaskLabels(of, len(ls.classes), list(ls.classes))
        elif task.label in LABEL_COLUMNS:
            values = manifest[task.label].astype(int)
            of = {i: v for i, v in zip(ids, values, strict=True) if v >= 0}
            n = int(values.max()) + 1 if task.label == "identity" else 2
            out[name] = TaskLabels(of, n, None)
        elif task.label in MODALITY_LABELS:
            values = manifest["identity"].astype(int)
            keep = manifest["is_caricature"].astype(int) == MODALITY_LABELS[task.label]
            of = {i: v for i, v, k in zip(ids, values, keep, strict=True) if v >= 0 and k}
            out[name] = TaskLabels(of, int(values.max()) + 1, None)
        else:
            raise DatasetError(f"task {name!r}: label {task.label!r} is neither a manifest label column "
                               f"({', '.join(LABEL_COLUMNS)}), nor an identity of one modality "
                               f"({', '.join(MODALITY_LABELS)}), nor a label set of the dataset "
                               f"({', '.join(label_sets) or 'none'})")
    return out


@dataclass(frozen=True)
class ValidationPairs:
    """``selection: val_subjects``: the share of training subjects held out and how their pairs are made (the fold's
    pair settings: the label set and the required classes of the 4-type recipe)."""

    fraction: float
    label_set: LabelSetConfig
    required: list[str]


@dataclass
class FoldData:
    """``train``/``test``/``val`` plus what the model and the metrics need (``dropped_*`` = not aligned).

    Attributes:
        n_classes: per task, the classes of its head.
        class_names: per task labelled by a label set, its class names.
    """

    train: LabelledImages
    test: EvalData
    test_ids: list[str]
    test_subjects: list[str]
    val: EvalData | None
    n_classes: dict[str, int]
    class_names: dict[str, list[str]]
    counts: dict[str, int]


def pairs_eval_data(source: FaceSource, ids: Sequence[str], labels: Mapping[str, TaskLabels], pairs: pd.DataFrame
                    ) -> tuple[EvalData, list[str], dict[str, int]]:
    """The aligned faces of ``ids`` (in order) with the ``pairs`` among them and each task's labels (``-1`` for
    ids without one); pairs with an unaligned side are dropped. Returns ``(data, kept ids, counts)``."""
    from pipeline.folds.pairs import drop_unaligned

    sub, n_missing = source.subset(list(ids))
    kept = list(sub.ids)
    pos = {i: k for k, i in enumerate(kept)}
    used, dropped = drop_unaligned(pairs, kept)
    images = sub.load_all()
    data = EvalData(
        images=images,
        pair_a=np.array([pos[i] for i in used["input_id"]], dtype=np.int64),
        pair_b=np.array([pos[i] for i in used["reference_id"]], dtype=np.int64),
        same=used["is_same"].to_numpy(dtype=bool),
        labels={t: np.array([lab.of.get(i, -1) for i in kept], dtype=np.int64) for t, lab in labels.items()},
        class_names={t: lab.class_names for t, lab in labels.items() if lab.class_names is not None},
    )
    return data, kept, {"images_not_aligned": n_missing, "pairs_dropped": dropped["dropped"], "pairs": len(used)}


def _selected(labels: Mapping[str, TaskLabels], rule: str):  # noqa: ANN202 - a predicate
    """The image ids a task set trains on: labelled for every task (``all``) or for one at least (``any``)."""
    maps = [lab.of for lab in labels.values()]
    if rule == "all":
        return lambda i: all(i in m for m in maps)
    return lambda i: any(i in m for m in maps)


def load_fold_data(manifest: pd.DataFrame, aligned: Path, fold_file: Path, pairs_file: Path,
                   task_set: TaskSetSettings, label_sets: Mapping[str, LabelSetConfig], *,
                   val: ValidationPairs | None = None, seed: int = 0) -> FoldData:
    """Read one fold for ``task_set`` (see the module docstring).

    Raises:
        DatasetError: missing inputs, a fold file that does not match the manifest, no aligned training image.
    """
    for p in (fold_file, pairs_file):
        if not Path(p).is_file():
            raise DatasetError(f"fold file not found: {p}: run the folds stage (dvc repro folds)")
    fold = json.loads(Path(fold_file).read_text())
    pairs = pd.read_parquet(pairs_file)
    known = set(manifest["image_id"].astype(str))
    unknown = [i for i in fold["train_image_ids"] + fold["test_image_ids"] if i not in known]
    if unknown:
        raise DatasetError(f"{fold_file}: {len(unknown)} image ids are not in the manifest (e.g. {unknown[0]!r}): "
                           "re-run the folds stage")
    labels = task_labels(manifest, task_set, label_sets)
    trained = _selected(labels, task_set.train_images)
    source = FaceSource(aligned)

    train_subjects = sorted(fold["train_subjects"])
    val_data = None
    counts: dict[str, int] = {}
    if val is not None:
        n_val = max(1, math.ceil(val.fraction * len(train_subjects)))
        if n_val >= len(train_subjects):
            raise DatasetError(f"val_fraction {val.fraction} leaves no training subject in {fold_file}")
        val_subjects = set(train_subjects[-n_val:])
        from pipeline.folds.pairs import expression_pairs

        val_pairs = expression_pairs(manifest, val.label_set, sorted(val_subjects), val.required,
                                     [seed, 1000 + int(fold["fold"])]).pairs
        subject_of = dict(zip(manifest["image_id"].astype(str), manifest["subject"].astype(str), strict=True))
        val_ids = [i for i in fold["train_image_ids"] if subject_of[i] in val_subjects]
        val_data, _, vc = pairs_eval_data(source, val_ids, labels, val_pairs)
        counts.update({f"val_{k}": v for k, v in vc.items()})
        counts["val_subjects"] = len(val_subjects)
        train_ids = [i for i in fold["train_image_ids"] if subject_of[i] not in val_subjects and trained(i)]
    else:
        train_ids = [i for i in fold["train_image_ids"] if trained(i)]

    tsub, n_train_missing = source.subset(train_ids)
    if len(tsub) == 0:
        raise DatasetError(f"{fold_file}: no aligned, labelled training image")
    kept = list(tsub.ids)
    train = LabelledImages(
        images=tsub.load_all(),
        labels={t: torch.tensor([lab.of.get(i, -1) for i in kept], dtype=torch.int64) for t, lab in labels.items()},
        image_ids=kept,
    )
    test, test_ids, tc = pairs_eval_data(source, list(fold["test_image_ids"]), labels, pairs)
    counts.update({"train_images": len(kept), "train_images_not_aligned": n_train_missing,
                   "test_images": len(test_ids), "test_images_labelled": sum(trained(i) for i in test_ids),
                   **{f"test_{k}": v for k, v in tc.items()}})
    return FoldData(train=train, test=test, test_ids=test_ids, test_subjects=sorted(fold["test_subjects"]),
                    val=val_data, n_classes={t: lab.n_classes for t, lab in labels.items()},
                    class_names={t: lab.class_names for t, lab in labels.items() if lab.class_names is not None},
                    counts=counts)
