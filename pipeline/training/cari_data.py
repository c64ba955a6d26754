"""Assemble a caricature dataset's training and evaluation data from its split (stage ``cari_split``) for a task
set: the caricature counterpart of :mod:`pipeline.training.fold_data`, returning the same
:class:`~pipeline.training.fold_data.FoldData`, so the same fine-tuning loop trains it.

Inputs: the manifest, the aligned faces, and the split's files (:func:`pipeline.paths.cari_split_files`):
``split.json`` (classes, training images and labels, test images and labels), ``pairs.parquet`` (the test pairs)
and ``identification.parquet`` (WebCaricature's probe/gallery splits; none for CaVI).

- The ``identity`` of an image is its index in the split's ``classes`` (CaVI: the sorted upper-cased training ids;
  WebCaricature: the sorted union of the training and test-pair ids), ``-1`` for a test image whose identity is not
  a class. Every identity-labelled task (``identity``, ``identity_photos``, ``identity_caricatures``) has
  ``len(classes)`` outputs.
- Training images: the split's, as the task set's ``train_images`` selects them (``any``: each image trains the
  verification task and the task of its modality).
- Test images: the split's, with the pairs among them, every task's labels, each image's identity (for
  ``cross_modal``) and the probe/gallery splits (``identification``). A probe or gallery image that was not aligned
  is dropped and counted; the pairs too.
- The verification protocol also reports VAL on the training folds (the original's value, ``train_fold_val``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config import LabelSetConfig
from pipeline.constants import MODALITY_LABELS
from pipeline.errors import DatasetError
from pipeline.faces.source import FaceSource
from pipeline.settings import TaskSetSettings
from pipeline.training.data import LabelledImages
from pipeline.training.evaluate import ProbeGallery
from pipeline.training.fold_data import FoldData, _selected, pairs_eval_data, task_labels

__all__ = ["load_cari_data", "read_split"]

IDENTITY_LABELS = ("identity", *MODALITY_LABELS)


def read_split(split_file: Path) -> dict:
    """``split.json`` of a caricature split.

    Raises:
        DatasetError: missing, or without the keys the loader reads.
    """
    if not Path(split_file).is_file():
        raise DatasetError(f"split file not found: {split_file}: run the cari_split stage (dvc repro cari_split)")
    split = json.loads(Path(split_file).read_text())
    missing = [k for k in ("classes", "train_image_ids", "train_labels", "test_image_ids", "test_labels", "train_ids")
               if k not in split]
    if missing:
        raise DatasetError(f"{split_file}: missing {', '.join(missing)}: re-run the cari_split stage")
    return split


def load_cari_data(manifest: pd.DataFrame, aligned: Path, files: Mapping[str, Path], task_set: TaskSetSettings,
                   label_sets: Mapping[str, LabelSetConfig]) -> FoldData:
    """Read a caricature split for ``task_set`` (module docstring); ``files`` = ``split``, ``pairs``,
    ``identification`` paths.

    Raises:
        DatasetError: missing inputs, split ids not in the manifest, no aligned training image.
    """
    split = read_split(files["split"])
    for key in ("pairs", "identification"):
        if not Path(files[key]).is_file():
            raise DatasetError(f"{files[key]} not found: run the cari_split stage (dvc repro cari_split)")
    pairs = pd.read_parquet(files["pairs"])
    ident = pd.read_parquet(files["identification"])
    label_of = dict(zip(split["train_image_ids"], split["train_labels"], strict=True))
    label_of.update(zip(split["test_image_ids"], split["test_labels"], strict=True))
    ids = manifest["image_id"].astype(str)
    known = set(ids)
    unknown = [i for i in label_of if i not in known]
    if unknown:
        raise DatasetError(f"{files['split']}: {len(unknown)} image ids are not in the manifest (e.g. "
                           f"{unknown[0]!r}): re-run the cari_split stage")
    view = manifest[ids.isin(label_of)].copy()
    view["identity"] = [int(label_of[i]) for i in view["image_id"].astype(str)]
    labels = task_labels(view, task_set, label_sets)
    n_ids = len(split["classes"])
    n_classes = {t: (n_ids if task_set.tasks[t].label in IDENTITY_LABELS else lab.n_classes)
                 for t, lab in labels.items()}
    trained = _selected(labels, task_set.train_images)
    source = FaceSource(aligned)

    tsub, n_train_missing = source.subset([i for i in split["train_image_ids"] if trained(i)])
    if len(tsub) == 0:
        raise DatasetError(f"{files['split']}: no aligned, labelled training image")
    kept = list(tsub.ids)
    train = LabelledImages(
        images=tsub.load_all(),
        labels={t: torch.tensor([lab.of.get(i, -1) for i in kept], dtype=torch.int64) for t, lab in labels.items()},
        image_ids=kept,
    )
    test, test_ids, tc = pairs_eval_data(source, list(split["test_image_ids"]), labels, pairs)
    test.identity = np.array([int(label_of[i]) for i in test_ids], dtype=np.int64)
    test.train_fold_val = True
    test.identification, ic = _probe_gallery(ident, test_ids)
    subject_of = dict(zip(ids, manifest["subject"].astype(str), strict=True))
    caricature_of = dict(zip(ids, manifest["is_caricature"].astype(bool), strict=True))
    counts = {"train_images": len(kept), "train_images_not_aligned": n_train_missing,
              "train_caricatures": int(sum(bool(caricature_of[i]) for i in kept)),
              "test_images": len(test_ids), "test_images_labelled": int((test.identity >= 0).sum()),
              "classes": n_ids, "train_ids": int(split["train_ids"]),
              **{f"test_{k}": v for k, v in tc.items()}, **ic}
    return FoldData(train=train, test=test, test_ids=test_ids,
                    test_subjects=sorted({subject_of[i] for i in test_ids}), val=None, n_classes=n_classes,
                    class_names={}, counts=counts)


def _probe_gallery(ident: pd.DataFrame, test_ids: list[str]) -> tuple[list[ProbeGallery], dict[str, int]]:
    """The probe/gallery splits as rows of the evaluated images; images not aligned are dropped and counted."""
    pos = {i: k for k, i in enumerate(test_ids)}
    splits: list[ProbeGallery] = []
    dropped = 0
    for group, rows in ident.groupby("group", sort=False):
        present = rows["image_id"].astype(str).isin(pos)
        dropped += int((~present).sum())
        rows = rows[present]
        probe, gallery = rows[rows["role"] == "probe"], rows[rows["role"] == "gallery"]
        if probe.empty or gallery.empty:
            continue
        splits.append(ProbeGallery(
            group=str(group), direction=str(rows["direction"].iloc[0]),
            probe=np.array([pos[i] for i in probe["image_id"].astype(str)], dtype=np.int64),
            probe_labels=probe["label"].to_numpy(dtype=np.int64),
            gallery=np.array([pos[i] for i in gallery["image_id"].astype(str)], dtype=np.int64),
            gallery_labels=gallery["label"].to_numpy(dtype=np.int64)))
    return splits, {"identification_splits": len(splits), "identification_images_not_aligned": dropped}
