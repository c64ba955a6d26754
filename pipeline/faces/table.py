"""The alignment table: one row per manifest image, what alignment found and where its crop is stored.

Written by the align stage as ``<root>/alignment.parquet`` (:data:`pipeline.faces.shards.ALIGNMENT_TABLE`) next
to the shards; read by :class:`pipeline.faces.source.FaceSource`.

Columns (:data:`ALIGNMENT_SCHEMA`; nullable ones marked ``?``)
-------------------------------------------------------------
image_id   str          the manifest's image id (unique)
status     str          ``"aligned"`` (:data:`ALIGNED`) or a failure class (``"no_face"``, ``"unreadable"``, ...)
reason     str          human-readable detail of a failure; ``""`` when aligned
shard      int32        shard number (file :func:`pipeline.faces.shards.shard_name`); -1 when not aligned
member     int32        position of the crop in its shard (tar member :func:`~pipeline.faces.shards.member_name`);
                        -1 when not aligned
offset     int64        byte offset of the crop's encoded data inside the shard; -1 when not aligned
length     int64        byte length of the encoded data; 0 when not aligned
crop_size  int32        side of the square stored crop in pixels (182 for the paper's convention); 0 when not aligned
box        list<f32>?   chosen face box ``[x1, y1, x2, y2]`` in source pixels; null when no face was chosen
landmarks  list<f32>?   its 5 landmarks ``[x1, y1, ..., x5, y5]`` (eyes, nose, mouth corners) in source pixels
score      float32?     detector score of the chosen face
n_faces    int32        number of faces detected in the image (0 for ``no_face``/``unreadable``)
crop_box   list<i32>?   the crop rectangle ``[x1, y1, x2, y2]`` in source pixels (box ± margin/2, clipped)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import atomic_file
from pipeline.errors import DatasetError
from pipeline.faces.shards import ALIGNED

__all__ = ["ALIGNED", "ALIGNMENT_COLUMNS", "ALIGNMENT_SCHEMA", "read_alignment_table", "write_alignment_table"]

ALIGNMENT_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("member", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("length", pa.int64(), nullable=False),
        pa.field("crop_size", pa.int32(), nullable=False),
        pa.field("box", pa.list_(pa.float32()), nullable=True),
        pa.field("landmarks", pa.list_(pa.float32()), nullable=True),
        pa.field("score", pa.float32(), nullable=True),
        pa.field("n_faces", pa.int32(), nullable=False),
        pa.field("crop_box", pa.list_(pa.int32()), nullable=True),
    ]
)
ALIGNMENT_COLUMNS: tuple[str, ...] = tuple(ALIGNMENT_SCHEMA.names)
LIST_LENGTHS = {"box": 4, "landmarks": 10, "crop_box": 4}
_RERUN = "re-run the align stage (python -m stages align)"


def _members_from_offsets(df: pd.DataFrame) -> np.ndarray:
    """Position of each aligned row in its shard, from the offset order (members are written in offset order)."""
    member = np.full(len(df), -1, dtype=np.int64)
    aligned = (df["status"] == ALIGNED).to_numpy(dtype=bool)
    if aligned.any():
        sub = df.loc[aligned, ["shard", "offset"]].reset_index(drop=True)
        ranks = sub.groupby("shard")["offset"].rank(method="first").to_numpy() - 1
        member[aligned] = ranks.astype(np.int64)
    return member


def _to_table(df: pd.DataFrame) -> pa.Table:
    """Validate ``df`` and convert it to :data:`ALIGNMENT_SCHEMA`.

    Raises:
        ValueError: missing column, null in a non-nullable column, duplicate id, list of the wrong length,
            an aligned row without a valid location or a failed row with one.
    """
    required = [c for c in ALIGNMENT_COLUMNS if c != "member"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"alignment table lacks column(s): {', '.join(missing)}")
    if "member" not in df.columns:
        df = df.assign(member=_members_from_offsets(df))
    arrays = []
    for field in ALIGNMENT_SCHEMA:
        arr = pa.array(df[field.name], type=field.type, from_pandas=True)
        if not field.nullable and arr.null_count:
            raise ValueError(f"alignment table: column {field.name!r} has {arr.null_count} null value(s)")
        if field.name in LIST_LENGTHS:
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
            bad = (~np.isnan(lengths.astype(float))) & (lengths != LIST_LENGTHS[field.name])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"alignment table: {field.name} of {df['image_id'].iloc[i]!r} has {int(lengths[i])} values, "
                    f"expected {LIST_LENGTHS[field.name]}"
                )
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=ALIGNMENT_SCHEMA)
    _check_rows(table)
    return table


def _check_rows(table: pa.Table) -> None:
    """Row-level invariants (see the module docstring)."""
    ids = table["image_id"].to_pandas()
    dup = ids[ids.duplicated()]
    if len(dup):
        raise ValueError(f"alignment table: duplicate image_id {dup.iloc[0]!r} (and {len(dup) - 1} more)")
    col = {c: table[c].to_numpy() for c in ("shard", "member", "offset", "length", "crop_size")}
    aligned = (table["status"].to_numpy(zero_copy_only=False) == ALIGNED).astype(bool)
    reason = table["reason"].to_numpy(zero_copy_only=False)
    bad_aligned = aligned & (
        (col["shard"] < 0) | (col["member"] < 0) | (col["offset"] < 0) | (col["length"] <= 0) | (col["crop_size"] <= 0)
        | (reason != "")
    )  # fmt: skip
    bad_failed = ~aligned & (col["shard"] != -1)
    for bad, what in (
        (bad_aligned, "aligned row needs shard, member, offset >= 0, length, crop_size > 0 and an empty reason"),
        (bad_failed, "a row that is not aligned must have shard -1"),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"alignment table: {ids.iloc[i]!r}: {what} ({int(bad.sum())} such rows)")


def write_alignment_table(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` (columns of :data:`ALIGNMENT_SCHEMA`, any order, extra columns dropped) as parquet, atomically.

    ``member`` may be left out: it is then derived from the offset order within each shard (crops are written in
    order). List columns take lists, tuples or numpy arrays, or None/NaN for null. The file is written to a
    temporary name in the same folder and renamed into place.

    Raises:
        ValueError: the frame breaks the schema or a row invariant (see :func:`_to_table`).
    """
    path = Path(path)
    table = _to_table(df)
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_alignment_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by :func:`write_alignment_table`.

    Strings come back as ``pd.StringDtype``, integer columns as numpy ints, ``score`` as float32 (NaN for null),
    list columns as objects holding numpy arrays (or None).

    Raises:
        DatasetError: the file is missing, not parquet, lacks columns, or has wrong column types; the one-line
            message says to re-run the align stage.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"alignment table not found: {path}: run the align stage (python -m stages align)")
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: not a readable parquet file ({exc}): {_RERUN}") from None
    missing = [c for c in ALIGNMENT_COLUMNS if c not in schema.names]
    if missing:
        raise DatasetError(f"{path}: alignment table lacks column(s) {', '.join(missing)}: {_RERUN}")
    try:
        table = pq.read_table(path, columns=list(ALIGNMENT_COLUMNS)).cast(ALIGNMENT_SCHEMA)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{path}: alignment table has wrong column types ({exc}): {_RERUN}") from None
    nulls = [f.name for f in ALIGNMENT_SCHEMA if not f.nullable and table[f.name].null_count]
    if nulls:
        raise DatasetError(f"{path}: alignment table has nulls in column(s) {', '.join(nulls)}: {_RERUN}")
    return table.to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
