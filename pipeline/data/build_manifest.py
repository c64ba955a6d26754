"""Build a dataset's manifest with its reader and summarise it (counts, skips, expected-count differences)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import ExpectedCounts, reader_options
from pipeline.data.manifest import assign_identities, to_frame
from pipeline.data.readers import get_reader
from pipeline.data.readers.base import Check, ReadResult, Skip
from pipeline.errors import DatasetError

__all__ = ["ManifestSummary", "build_manifest", "summarise"]


@dataclass
class ManifestSummary:
    """What the manifest stage reports as its metrics (``metrics/manifest/<name>.json``)."""

    dataset: str
    reader: str
    images: int
    subjects: int
    sequences: int
    labelled_sequences: int
    skipped: int
    skip_fraction: float
    skipped_by_reason: dict[str, int]
    images_per_subject: dict[str, int]
    images_per_expression: dict[str, int]
    expected_differences: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, Any]:
        """The DVC metrics: everything but the per-subject table, which is summarised as min/median/max.

        (A per-subject table would give ``dvc metrics show`` one column per subject: 5,749 for LFW.)
        """
        d = self.to_dict()
        counts = sorted(d.pop("images_per_subject").values())
        d["images_per_subject_stats"] = {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1]}
        return d

    def counts(self) -> dict[str, Any]:
        """The full per-subject and per-expression counts."""
        return {"dataset": self.dataset, "images_per_subject": self.images_per_subject,
                "images_per_expression": self.images_per_expression}


def build_manifest(name: str, *, reader: str, root: Path, options: dict[str, Any] | None = None,
                   expected: ExpectedCounts | None = None, check: Check = "decode",
                   ) -> tuple[pd.DataFrame, list[Skip], ManifestSummary]:
    """Read dataset ``name`` with ``reader`` and return (manifest, skipped files, summary).

    Args:
        name: dataset name (``datasets.<name>`` in params.yaml).
        reader: reader name (:data:`pipeline.data.readers.READERS`).
        root: dataset root on disk.
        options: the reader's options (validated here; defaults filled in).
        expected: published counts to compare with.
        check: ``decode`` or ``header`` (see :func:`pipeline.data.readers.base.probe_image`).

    Raises:
        DatasetError: the reader found the dataset unusable, or it holds no image at all.
    """
    read = get_reader(reader)
    result = read(root, name, options=reader_options(reader, options or {}), check=check)
    if not result.records:
        raise DatasetError(
            f"dataset {name!r}: no usable image found under {root} "
            f"({len(result.skipped)} files skipped); check datasets.{name}.root and .reader in params.yaml"
        )
    _skip_duplicate_ids(result)
    df = to_frame(assign_identities(result.records))
    summary = summarise(name, reader, df, result.skipped, result.skip_counts(), expected or ExpectedCounts())
    return df, result.skipped, summary


def _skip_duplicate_ids(result: ReadResult) -> None:
    """Keep the first record of each ``image_id``; later ones (``001.jpg`` beside ``001.JPG``) become skips."""
    first: dict[str, str] = {}
    kept = []
    for r in result.records:
        if r.image_id in first:
            result.skip(r.path, f"duplicate image id: {r.image_id!r} is also {first[r.image_id]}")
        else:
            first[r.image_id] = r.path
            kept.append(r)
    result.records = kept


def summarise(name: str, reader: str, df: pd.DataFrame, skipped: list[Skip], skipped_by_reason: dict[str, int],
              expected: ExpectedCounts) -> ManifestSummary:
    """Counts of a manifest, and differences from ``expected`` (actual − expected, only where they differ)."""
    seq_key = df["subject"].astype(str) + "/" + df["sequence"].astype(str)
    labelled = df.loc[df["expression"].notna()]
    n_seq = int(seq_key[df["sequence"] != ""].nunique())
    n_labelled = int((labelled["subject"].astype(str) + "/" + labelled["sequence"].astype(str)).nunique())
    actual = {"subjects": int(df["subject"].nunique()), "sequences": n_seq,
              "labelled_sequences": n_labelled, "images": int(len(df))}
    diffs = {}
    for key, want in expected.model_dump().items():
        if want is not None and actual[key] != want:
            diffs[key] = {"expected": want, "actual": actual[key], "difference": actual[key] - want}
    n_files = len(df) + len(skipped)
    return ManifestSummary(
        dataset=name,
        reader=reader,
        images=actual["images"],
        subjects=actual["subjects"],
        sequences=n_seq,
        labelled_sequences=n_labelled,
        skipped=len(skipped),
        skip_fraction=round(len(skipped) / n_files, 6) if n_files else 0.0,
        skipped_by_reason=dict(sorted(skipped_by_reason.items())),
        images_per_subject={str(k): int(v) for k, v in df["subject"].value_counts().sort_index().items()},
        images_per_expression={str(k): int(v) for k, v in
                               df["expression"].astype("object").fillna("<none>").value_counts().sort_index().items()},
        expected_differences=diffs,
    )
