"""Assemble one fold's training and evaluation data from the stage outputs upstream of fine-tuning.

Inputs: the manifest (``data/manifests/<d>.parquet``), the aligned faces (``data/aligned/<d>``), the fold split
(``data/folds/<d>/fold<k>.json``), its pairs (``fold<k>-pairs.parquet``) and the dataset's label set.

- Training images: the fold's training images that carry an expression label in the label set (Oulu "Six" =
  the last 3 frames of every sequence) and were aligned. Identity label = the manifest's ``identity`` (index in
  the sorted list of **all** subjects, spec §5.3: the classifier has N_train + N_test outputs).
- Test images: every aligned image of the test subjects (the pairs' neutral references included); expression
  label ``-1`` for images outside the label set (excluded from expression accuracy).
- Pairs whose images were not aligned are dropped and counted.
- ``val_subjects`` selection: the last ``ceil(fraction · N_train_subjects)`` training subjects (sorted) are held
  out; their pairs come from the same seeded 4-type recipe as the test pairs (:func:`pipeline.folds.pairs.
  expression_pairs`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import LabelSetConfig
from pipeline.data.faces import FaceSource
from pipeline.data.label_sets import apply_label_set
from pipeline.errors import DatasetError
from pipeline.training.data import LabelledImages
from pipeline.training.evaluate import EvalData

__all__ = ["FoldData", "load_fold_data", "pairs_eval_data"]


@dataclass
class FoldData:
    """``train``/``test``/``val`` plus counts for the metrics (``dropped_*`` = not aligned)."""

    train: LabelledImages
    test: EvalData
    test_ids: list[str]
    test_subjects: list[str]
    val: EvalData | None
    n_identities: int
    class_names: list[str]
    counts: dict[str, int]


def pairs_eval_data(source: FaceSource, ids: list[str], labels: dict[str, int], pairs: pd.DataFrame,
               class_names: list[str]) -> tuple[EvalData, list[str], dict[str, int]]:
    """The aligned faces of ``ids`` (in order) with the ``pairs`` among them and expression ``labels`` (``-1`` for
    ids without one); pairs with an unaligned side are dropped. Returns ``(data, kept ids, counts)``."""
    from pipeline.folds.pairs import drop_unaligned

    sub, n_missing = source.subset(ids)
    kept = list(sub.ids)
    pos = {i: k for k, i in enumerate(kept)}
    used, dropped = drop_unaligned(pairs, kept)
    images = sub.load_all()
    data = EvalData(
        images=images,
        pair_a=np.array([pos[i] for i in used["input_id"]], dtype=np.int64),
        pair_b=np.array([pos[i] for i in used["reference_id"]], dtype=np.int64),
        same=used["is_same"].to_numpy(dtype=bool),
        expression=np.array([labels.get(i, -1) for i in kept], dtype=np.int64),
        class_names=class_names,
    )
    return data, kept, {"images_not_aligned": n_missing, "pairs_dropped": dropped["dropped"], "pairs": len(used)}


def load_fold_data(manifest: pd.DataFrame, aligned: Path, fold_file: Path, pairs_file: Path,
                   label_set: LabelSetConfig, *, tasks: tuple[str, str] = ("identity", "expression"),
                   val_fraction: float | None = None, val_required: list[str] | None = None, seed: int = 0
                   ) -> FoldData:
    """Read one fold (see the module docstring).

    Raises:
        DatasetError: missing inputs, a fold file that does not match the manifest, no aligned training image.
    """
    for p in (fold_file, pairs_file):
        if not Path(p).is_file():
            raise DatasetError(f"fold file not found: {p}: run the folds stage (dvc repro folds)")
    fold = json.loads(Path(fold_file).read_text())
    pairs = pd.read_parquet(pairs_file)
    labelled = apply_label_set(manifest, label_set)
    expr_of = dict(zip(labelled["image_id"].astype(str), labelled["label"].astype(int), strict=True))
    ident_of = dict(zip(manifest["image_id"].astype(str), manifest["identity"].astype(int), strict=True))
    unknown = [i for i in fold["train_image_ids"] + fold["test_image_ids"] if i not in ident_of]
    if unknown:
        raise DatasetError(f"{fold_file}: {len(unknown)} image ids are not in the manifest (e.g. {unknown[0]!r}): "
                           "re-run the folds stage")
    n_ids = int(manifest["identity"].max()) + 1
    source = FaceSource(aligned)
    id_task, expr_task = tasks

    train_subjects = sorted(fold["train_subjects"])
    val = None
    val_subjects: set[str] = set()
    counts: dict[str, int] = {}
    if val_fraction:
        n_val = max(1, math.ceil(val_fraction * len(train_subjects)))
        if n_val >= len(train_subjects):
            raise DatasetError(f"val_fraction {val_fraction} leaves no training subject in {fold_file}")
        val_subjects = set(train_subjects[-n_val:])
        from pipeline.folds.pairs import expression_pairs

        val_pairs = expression_pairs(manifest, label_set, sorted(val_subjects), val_required or [],
                                     [seed, 1000 + int(fold["fold"])]).pairs
        subject_of = dict(zip(manifest["image_id"].astype(str), manifest["subject"].astype(str), strict=True))
        val_ids = [i for i in fold["train_image_ids"] if subject_of[i] in val_subjects]
        val, _, vc = pairs_eval_data(source, val_ids, expr_of, val_pairs, list(label_set.classes))
        counts.update({f"val_{k}": v for k, v in vc.items()})
        counts["val_subjects"] = len(val_subjects)
        train_ids = [i for i in fold["train_image_ids"] if subject_of[i] not in val_subjects and i in expr_of]
    else:
        train_ids = [i for i in fold["train_image_ids"] if i in expr_of]

    tsub, n_train_missing = source.subset(train_ids)
    if len(tsub) == 0:
        raise DatasetError(f"{fold_file}: no aligned, labelled training image")
    kept = list(tsub.ids)
    train = LabelledImages(
        images=tsub.load_all(),
        labels={id_task: torch.tensor([ident_of[i] for i in kept], dtype=torch.int64),
                expr_task: torch.tensor([expr_of[i] for i in kept], dtype=torch.int64)},
        image_ids=kept,
    )
    test, test_ids, tc = pairs_eval_data(source, list(fold["test_image_ids"]), expr_of, pairs, list(label_set.classes))
    counts.update({"train_images": len(kept), "train_images_not_aligned": n_train_missing,
                   "test_images": len(test_ids), "test_images_labelled": int((test.expression >= 0).sum()),
                   **{f"test_{k}": v for k, v in tc.items()}})
    return FoldData(train=train, test=test, test_ids=test_ids, test_subjects=sorted(fold["test_subjects"]), val=val,
                    n_identities=n_ids,
                    class_names=list(label_set.classes), counts=counts)
