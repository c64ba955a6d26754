"""Raw images stored as members of uncompressed tar shards (MS-Celeb-1M once extracted), each with an index file.

Layout under a dataset ``root``::

    <root>/shard-00000.tar          members <MID>/<rank:03d>-<face_id>.jpg
    <root>/shard-00000.index.tsv    one row per member: the columns of :data:`INDEX_COLUMNS` (offset/size: the
                                    member's bytes in the tar, so one image is one seek and one read)

A manifest path names one member: ``<shard file>::<member>`` (:data:`PATH_SEPARATOR`), e.g.
``shard-00000.tar::m.0abc/003-FaceId-0.jpg``. The MS-Celeb reader (:mod:`pipeline.data.readers.msceleb`) writes
and lists the shards; alignment reads members with :func:`open_shard_member`, without importing the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipeline.errors import DatasetError

__all__ = ["INDEX_COLUMNS", "PATH_SEPARATOR", "IndexRow", "index_path", "open_shard_member", "read_index",
           "split_member_path"]

PATH_SEPARATOR = "::"
INDEX_COLUMNS = ("member", "offset", "size", "mid", "rank", "face_id", "face_rect", "line")


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of a shard index (the columns the readers use)."""

    member: str
    offset: int
    size: int
    mid: str
    rank: int
    face_id: str


def read_index(path: Path) -> list[IndexRow]:
    """The rows of a ``shard-*.index.tsv`` file.

    Raises:
        DatasetError: wrong header or a malformed row (names the line).
    """
    with path.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if tuple(header) != INDEX_COLUMNS:
            raise DatasetError(f"{path}: line 1: not a shard index header: {header}")
        rows = []
        for number, text in enumerate(f, 2):
            parts = text.rstrip("\n").split("\t")
            try:
                member, offset, size, mid, rank, face_id = parts[:6]
                rows.append(IndexRow(member, int(offset), int(size), mid, int(rank), face_id))
            except ValueError:
                raise DatasetError(f"{path}: line {number}: malformed shard index row") from None
    return rows


@lru_cache(maxsize=16)
def _member_table(index_path: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """``{member: (offset, size)}`` of one index file (cached per file version)."""
    return {r.member: (r.offset, r.size) for r in read_index(Path(index_path))}


def split_member_path(path: str) -> tuple[str, str]:
    """``"shard-00000.tar::m.0abc/003-FaceId-0.jpg"`` -> ``("shard-00000.tar", "m.0abc/003-FaceId-0.jpg")``."""
    shard, sep, member = path.partition(PATH_SEPARATOR)
    if not sep or not shard or not member:
        raise ValueError(f"not a shard member path '<shard>{PATH_SEPARATOR}<member>': {path!r}")
    return shard, member


def index_path(tar: Path) -> Path:
    """The index file of shard ``tar``: ``shard-00000.tar`` → ``shard-00000.index.tsv``."""
    return tar.with_name(tar.name.removesuffix(".tar") + ".index.tsv")


def open_shard_member(root: Path, path: str) -> bytes:
    """The bytes of the member named by ``path`` (``<shard>::<member>``) under ``root``.

    Raises:
        ValueError: ``path`` without ``::``.
        FileNotFoundError: shard or its index missing.
        KeyError: member not in the shard's index.
    """
    shard, member = split_member_path(path)
    tar = Path(root) / shard
    index = index_path(tar)
    if not tar.is_file() or not index.is_file():
        raise FileNotFoundError(f"shard or shard index missing: {tar}")
    table = _member_table(str(index), index.stat().st_mtime_ns)
    if member not in table:
        raise KeyError(f"{member} not in {index.name}")
    offset, size = table[member]
    with tar.open("rb") as f:
        f.seek(offset)
        return f.read(size)
