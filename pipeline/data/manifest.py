"""The manifest: one row per image of a dataset, the same schema for every reader.

Every reader in :mod:`pipeline.data.readers` yields :class:`ManifestRecord` objects; :func:`to_frame`
turns them into a :class:`pandas.DataFrame` with the column types of :data:`MANIFEST_SCHEMA`, and
:func:`write_manifest` / :func:`read_manifest` store it as parquet (pyarrow).

Columns
-------
image_id        str    unique id. Sequence datasets (Oulu-CASIA, CK+, demo):
                       ``<dataset>/<subject>/<sequence>/<frame:05d>``.
                       Identity-only datasets (LFW, CASIA-WebFace, MS-Celeb-1M, CaVI, WebCaricature):
                       ``<dataset>/<subject>/<stem>``
                       where ``stem`` is the file name without extension (MS-Celeb: ``<rank>-<face_id>``).
path            str    path relative to the dataset root (MS-Celeb: relative to the shard folder, see its reader)
dataset         str    the dataset's name in ``params.yaml`` (``datasets.<name>``)
subject         str    subject / identity folder name as on disk (``P001``, ``S005``, ``Aaron_Eckhart``, ``m.0abc``);
                       CaVI: upper-cased (``AKHILESH_YADAV``)
identity        int32  index of ``subject`` in the sorted list of all subjects of the dataset
expression      str?   the sequence's expression label name (the peak expression), null when the dataset or the
                       sequence has none. Frame-level labels (neutral first frame, peak frames) are derived
                       downstream from ``frame`` / ``n_frames`` with a label set from params
                       (:mod:`pipeline.data.label_sets`).
expression_code int16? the dataset's own numeric code of ``expression`` (CK+ emotion code 0-7), else null
sequence        str    sequence name (Oulu: expression folder, CK+: session); ``""`` for identity-only datasets
frame           int32  0-based frame index in the sequence (sorted file order); image number for identity-only datasets
n_frames        int32  number of frames of the sequence (1 for identity-only datasets)
is_caricature   bool   True for caricatures (CaVI / WebCaricature); False otherwise
width, height   int32  image size in pixels
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import atomic_file
from pipeline.constants import LABEL_COLUMNS

__all__ = [
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "MANIFEST_SCHEMA",
    "ManifestRecord",
    "assign_identities",
    "read_manifest",
    "to_frame",
    "write_manifest",
]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """One image. ``identity`` is filled by :func:`assign_identities` (readers leave it at -1)."""

    image_id: str
    path: str
    dataset: str
    subject: str
    sequence: str
    frame: int
    n_frames: int
    width: int
    height: int
    expression: str | None = None
    expression_code: int | None = None
    is_caricature: bool = False
    identity: int = -1


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("identity", pa.int32(), nullable=False),
        pa.field("expression", pa.string(), nullable=True),
        pa.field("expression_code", pa.int16(), nullable=True),
        pa.field("sequence", pa.string(), nullable=False),
        pa.field("frame", pa.int32(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("is_caricature", pa.bool_(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)
assert set(MANIFEST_COLUMNS) == {f.name for f in fields(ManifestRecord)}


def assign_identities(records: Iterable[ManifestRecord]) -> list[ManifestRecord]:
    """Return the records with ``identity`` = index of ``subject`` in the sorted list of subjects.

    This is the original code's convention (docs/method.md §5.3): labels are global indices into the sorted subject
    list, train and test subjects alike.
    """
    records = list(records)
    index = {s: i for i, s in enumerate(sorted({r.subject for r in records}))}
    out = []
    for r in records:
        d = asdict(r)
        d["identity"] = index[r.subject]
        out.append(ManifestRecord(**d))
    return out


def to_frame(records: Iterable[ManifestRecord]) -> pd.DataFrame:
    """Records → DataFrame with the manifest column order and dtypes, sorted by ``image_id``.

    Raises:
        ValueError: on duplicate ``image_id`` values (a reader bug or two files mapping to one id).
    """
    rows = [asdict(r) for r in records]
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA) if rows else MANIFEST_SCHEMA.empty_table()
    df = table.to_pandas(types_mapper=_pandas_types)
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"duplicate image_id in manifest: {dup.iloc[0]!r} (and {len(dup) - 1} more)")
    return df.sort_values("image_id", kind="stable").reset_index(drop=True)


def _pandas_types(t: pa.DataType):
    """Nullable pandas dtypes so that null expression codes stay integers."""
    if t == pa.string():
        return pd.StringDtype()
    if t == pa.int16():
        return pd.Int16Dtype()
    if t == pa.int32():
        return pd.Int32Dtype()
    if t == pa.bool_():
        return pd.BooleanDtype()
    return None


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as parquet atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    table = pa.Table.from_pandas(df[list(MANIFEST_COLUMNS)], schema=MANIFEST_SCHEMA, preserve_index=False)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (nullable pandas dtypes)."""
    table = pq.read_table(path, schema=MANIFEST_SCHEMA)
    return table.to_pandas(types_mapper=_pandas_types)
