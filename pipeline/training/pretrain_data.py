"""Pretraining inputs from the stage outputs upstream: the identity dataset's shards and a verification pairs set.

- :func:`load_identity_faces`: every aligned face of the pretraining dataset (``data/aligned/<d>``) with its
  identity from the manifest, renumbered ``0..K-1`` over the identities that kept at least one aligned face
  (the classifier has ``K`` outputs), as a streaming :class:`~pipeline.training.shard_data.ShardFaces`.
- :func:`load_verification_pairs`: the pooled pairs of some folds of a dataset with folds (the folds stage's
  ``fold<k>-pairs.parquet``: the demo's expression pairs, LFW's ten folds) and their aligned faces in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DatasetError
from pipeline.faces.shards import ALIGNMENT_TABLE, SHARD_DIR
from pipeline.faces.source import FaceSource
from pipeline.faces.table import ALIGNED, read_alignment_table
from pipeline.training.evaluate import EvalData
from pipeline.training.fold_data import pairs_eval_data
from pipeline.training.shard_data import ShardFaces

__all__ = ["IdentityFaces", "load_identity_faces", "load_verification_pairs"]


@dataclass
class IdentityFaces:
    """The pretraining set: ``faces`` (labels ``0..n_classes-1``), the subject of each class, and counts."""

    faces: ShardFaces
    n_classes: int
    subjects: list[str]
    counts: dict[str, int]


def load_identity_faces(manifest: pd.DataFrame, aligned: Path) -> IdentityFaces:
    """The aligned faces of ``manifest``'s images with their identities (see the module docstring).

    Raises:
        DatasetError: missing align output, no aligned face, table ids missing from the manifest.
    """
    aligned = Path(aligned)
    if not (aligned / ALIGNMENT_TABLE).is_file():
        raise DatasetError(f"{aligned / ALIGNMENT_TABLE} not found: run the align stage (dvc repro align)")
    table = read_alignment_table(aligned / ALIGNMENT_TABLE)
    ok = table[table["status"] == ALIGNED]
    if ok.empty:
        raise DatasetError(f"{aligned}: no aligned face to pretrain on")
    subject_of = pd.Series(manifest["subject"].astype(str).to_numpy(), index=manifest["image_id"].astype(str))
    subjects = subject_of.reindex(ok["image_id"].astype(str))
    if subjects.isna().any():
        first = subjects.index[subjects.isna().to_numpy()][0]
        raise DatasetError(f"{aligned / ALIGNMENT_TABLE}: image {first!r} is not in the manifest: re-run align")
    names = sorted(set(subjects))
    index = {s: k for k, s in enumerate(names)}
    labels = np.array([index[s] for s in subjects], dtype=np.int64)
    sizes = ok["crop_size"].unique()
    if len(sizes) != 1:
        raise DatasetError(f"{aligned / ALIGNMENT_TABLE}: crops of several sizes {sorted(sizes.tolist())}")
    faces = ShardFaces(aligned / SHARD_DIR, ok["shard"].to_numpy(), ok["offset"].to_numpy(),
                       ok["length"].to_numpy(), labels, int(sizes[0]))
    counts = {"images": len(table), "faces": len(ok), "not_aligned": len(table) - len(ok),
              "identities": len(names), "identities_without_face": int(manifest["subject"].nunique()) - len(names)}
    return IdentityFaces(faces=faces, n_classes=len(names), subjects=names, counts=counts)


def load_verification_pairs(aligned: Path, pair_files: Sequence[Path]) -> tuple[EvalData, dict[str, int]]:
    """The pooled pairs of ``pair_files`` and the faces they use (``uint8`` on the CPU).

    Raises:
        DatasetError: a missing pairs file, or no usable pair.
    """
    frames = []
    for f in pair_files:
        if not Path(f).is_file():
            raise DatasetError(f"pairs file not found: {f}: run the folds stage (dvc repro folds)")
        frames.append(pd.read_parquet(f))
    pairs = pd.concat(frames, ignore_index=True).drop_duplicates(["input_id", "reference_id"], ignore_index=True)
    ids = list(dict.fromkeys([*pairs["input_id"].astype(str), *pairs["reference_id"].astype(str)]))
    data, _, counts = pairs_eval_data(FaceSource(aligned), ids, {}, pairs)
    if len(data.same) == 0:
        raise DatasetError(f"no usable verification pair in {', '.join(map(str, pair_files))}")
    return data, counts
