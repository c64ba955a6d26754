"""MS-Celeb-1M (cleaned TSV release): extraction into tar shards, and the reader of the extracted shards.

Source format: one big TSV, one face per line, 7 TAB-separated fields::

    MID  rank  image_url  page_url  face_id  face_rectangle  jpeg

``MID`` is the Freebase id of the person (``m.0abc``), ``rank`` the image-search rank (an integer), ``face_id``
a name such as ``FaceId-0``, ``face_rectangle`` base64 of packed floats (kept as an opaque string) and ``jpeg`` the
base64 of the JPEG file.

Extracted layout (``out_dir`` of :func:`extract_tsv_to_shards`, the ``root`` of :func:`read_msceleb`)::

    <root>/shard-00000.tar          uncompressed tar, members <MID>/<rank:03d>-<face_id>.jpg
    <root>/shard-00000.index.tsv    one row per member: member, offset, size, mid, rank, face_id, face_rect, line
    <root>/shard-00000.json         written last: marks the shard complete (line range, skips, sizes)
    <root>/shard-00001.tar ...

``offset`` / ``size`` locate a member's bytes in the tar, so a reader seeks directly to an image without scanning
the archive (:mod:`pipeline.data.member_shards`). ``line`` is the 1-based line of the source TSV.

Path convention (the manifest's ``path`` column): ``<shard file>::<member>``, the shard file name relative to
``root`` then the member name, e.g. ``shard-00000.tar::m.0abc/003-FaceId-0.jpg``. image_id is
``<dataset>/<MID>/<rank:03d>-<face_id>``, ``subject`` the MID, ``sequence`` ``""``, ``frame`` the rank,
``n_frames`` 1.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from pipeline.atomic import atomic_file
from pipeline.data.manifest import ManifestRecord
from pipeline.data.member_shards import (
    INDEX_COLUMNS,
    PATH_SEPARATOR,
    IndexRow,
    index_path,
    open_shard_member,
    read_index,
    split_member_path,
)
from pipeline.data.readers._common import require_records
from pipeline.data.readers.base import Check, ImageProblem, ReadResult, Skip, require_dir
from pipeline.errors import DatasetError
from pipeline.reader_options import MsCelebOptions

__all__ = [
    "PATH_SEPARATOR",
    "ExtractSummary",
    "MsCelebOptions",
    "extract_tsv_to_shards",
    "open_shard_member",
    "probe_image_bytes",
    "read_msceleb",
    "split_member_path",
]

N_FIELDS = 7
META_FORMAT = 1
PROGRESS_EVERY = 1000
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def shard_stem(k: int) -> str:
    """``shard-00000``: the common stem of shard ``k``'s tar, index and meta files."""
    return f"shard-{k:05d}"


# --------------------------------------------------------------------------------------------- extraction


@dataclass
class ExtractSummary:
    """What :func:`extract_tsv_to_shards` did. ``skipped`` paths are ``<tsv name>:<line>``."""

    n_lines: int = 0
    n_images: int = 0
    shards: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)


class _LineProblem(Exception):
    """A TSV line that cannot be extracted; the message is the skip reason."""


@dataclass(frozen=True, slots=True)
class _Face:
    """One parsed TSV line."""

    mid: str
    rank: int
    face_id: str
    face_rect: str
    jpeg: bytes
    line: int

    @property
    def member(self) -> str:
        return f"{self.mid}/{self.rank:03d}-{self.face_id}.jpg"


def _parse_line(raw: bytes, line: int) -> _Face:
    """Parse one TSV line (without checking that the JPEG decodes).

    Raises:
        _LineProblem: wrong field count, unsafe MID / face id, bad rank, bad base64, data not a JPEG.
    """
    fields = raw.rstrip(b"\r\n").split(b"\t")
    if len(fields) != N_FIELDS:
        raise _LineProblem(f"wrong field count: line {line} has {len(fields)} fields, expected {N_FIELDS}")
    mid, rank, _url, _page, face_id, rect, data = (f.decode("utf-8", "replace").strip() for f in fields)
    for what, name in (("MID", mid), ("face id", face_id)):
        if not _SAFE_NAME.match(name):
            raise _LineProblem(f"bad {what}: line {line}: {name[:40]!r}")
    if not re.fullmatch(r"[0-9]+", rank):
        raise _LineProblem(f"bad rank: line {line}: {rank[:40]!r} is not a non-negative integer")
    try:
        jpeg = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _LineProblem(f"bad base64: line {line}: {exc}") from None
    if not jpeg.startswith(b"\xff\xd8\xff"):
        raise _LineProblem(f"not a JPEG: line {line}: data starts with {jpeg[:4]!r}")
    return _Face(mid, int(rank), face_id, rect, jpeg, line)


class _ShardWriter:
    """Writes one shard under temporary names; :meth:`finish` renames it into place, meta file last."""

    def __init__(self, out_dir: Path, k: int, *, first_line: int, tsv_start: int) -> None:
        self.out_dir, self.k = out_dir, k
        self.first_line, self.tsv_start = first_line, tsv_start
        self.final = {s: out_dir / f"{shard_stem(k)}{s}" for s in (".tar", ".index.tsv", ".json")}
        # the tar and index grow across add() calls under fixed temporary names (not per process, so that a
        # resumed extraction finds and deletes them: _clear_from), then finish() renames them into place
        self.tmp = {s: out_dir / f".{self.final[s].name}.tmp" for s in (".tar", ".index.tsv")}
        self.tar = tarfile.open(self.tmp[".tar"], "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.index = self.tmp[".index.tsv"].open("w", encoding="utf-8", newline="\n")
        self.index.write("\t".join(INDEX_COLUMNS) + "\n")
        self.members: set[str] = set()

    def __len__(self) -> int:
        return len(self.members)

    def add(self, face: _Face) -> None:
        """Append one image to the tar and its row to the index."""
        info = tarfile.TarInfo(face.member)
        info.size, info.mtime, info.mode = len(face.jpeg), 0, 0o644
        self.tar.addfile(info, io.BytesIO(face.jpeg))
        padded = -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        offset = self.tar.offset - padded  # data start: addfile leaves offset after the padded data
        row = (face.member, offset, info.size, face.mid, face.rank, face.face_id, face.face_rect, face.line)
        self.index.write("\t".join(map(str, row)) + "\n")
        self.members.add(face.member)

    def finish(self, *, last_line: int, tsv_end: int, skipped: list[Skip], source: dict) -> str:
        """Close and rename the tar and index into place, then write the meta file (the completion mark)."""
        self.tar.close()
        self.index.close()
        os.replace(self.tmp[".tar"], self.final[".tar"])
        os.replace(self.tmp[".index.tsv"], self.final[".index.tsv"])
        meta = {
            "format": META_FORMAT,
            "source": source,
            "n_members": len(self.members),
            "tar_bytes": self.final[".tar"].stat().st_size,
            "first_line": self.first_line,
            "last_line": last_line,
            "tsv_start": self.tsv_start,
            "tsv_end": tsv_end,
            "skipped": [[s.path, s.reason] for s in skipped],
        }
        with atomic_file(self.final[".json"]) as tmp:
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
        return self.final[".tar"].name

    def abort(self) -> None:
        """Close and delete the temporary files (error path)."""
        self.tar.close()
        self.index.close()
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)


def _complete_meta(out_dir: Path, k: int, source: dict) -> dict | None:
    """Shard ``k``'s meta when the shard is complete (meta, index and a tar of the recorded size), else None.

    Raises:
        DatasetError: the shard was extracted from another TSV or with another shard size.
    """
    stem = shard_stem(k)
    meta_path, tar, index = (out_dir / f"{stem}{s}" for s in (".json", ".tar", ".index.tsv"))
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("source") != source:
        raise DatasetError(
            f"{out_dir} holds shards extracted from {meta.get('source')}, not {source}: use an empty folder"
        )
    if not (tar.is_file() and index.is_file() and tar.stat().st_size == meta.get("tar_bytes")):
        return None
    return meta


def _clear_from(out_dir: Path, k: int) -> None:
    """Delete shard files numbered ``k`` and above, and every temporary file (a fresh start from shard ``k``)."""
    for path in out_dir.glob(".shard-*.tmp"):
        path.unlink()
    for path in out_dir.glob("shard-*"):
        match = re.match(r"shard-(\d{5})\.", path.name)
        if match and int(match.group(1)) >= k:
            path.unlink()


def _resume(out_dir: Path, source: dict, summary: ExtractSummary) -> tuple[int, int, int]:
    """``(next shard, TSV byte offset, last line number)`` after the complete shards already in ``out_dir``."""
    k, offset, line = 0, 0, 0
    while (meta := _complete_meta(out_dir, k, source)) is not None:
        summary.reused.append(f"{shard_stem(k)}.tar")
        summary.n_images += meta["n_members"]
        summary.skipped.extend(Skip(p, r) for p, r in meta["skipped"])
        k, offset, line = k + 1, meta["tsv_end"], meta["last_line"]
    _clear_from(out_dir, k)
    return k, offset, line


def _lines(f: BinaryIO, start_line: int) -> Iterator[tuple[int, bytes, int]]:
    """Stream ``(line number, raw line, byte offset after the line)`` from the current position of ``f``."""
    offset, line = f.tell(), start_line
    for raw in f:
        line += 1
        offset += len(raw)
        yield line, raw, offset


def extract_tsv_to_shards(
    tsv: Path,
    out_dir: Path,
    *,
    shard_size: int = 10000,
    progress: Callable[[int], None] | None = None,
) -> ExtractSummary:
    """Stream the MS-Celeb-1M TSV ``tsv`` into tar shards of ``shard_size`` images in ``out_dir``.

    The file is read line by line (never whole). Shards are written under temporary names and renamed when
    complete; complete shards already in ``out_dir`` (same TSV name and size, same ``shard_size``) are kept as
    they are and their lines are not read again: extraction resumes at the byte offset after the last complete
    shard. A shard ends after ``shard_size`` images, the last one at the end of the file.

    ``progress`` is called with the number of TSV bytes consumed so far (every 1000 lines and at the end), so
    ``tsv.stat().st_size`` is the total.

    Bad lines (wrong field count, bad MID / face id / rank, bad base64, data not a JPEG, a member already in the
    shard) are counted skips, path ``<tsv name>:<line>``.

    Raises:
        ValueError: ``shard_size`` < 1.
        DatasetError: ``tsv`` missing, or ``out_dir`` holds shards of another TSV / shard size.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    tsv, out_dir = Path(tsv), Path(out_dir)
    if not tsv.is_file():
        raise DatasetError(f"MS-Celeb-1M TSV not found: {tsv}")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = {"tsv": tsv.name, "bytes": tsv.stat().st_size, "shard_size": shard_size}
    summary = ExtractSummary()
    k, offset, line = _resume(out_dir, source, summary)
    with tsv.open("rb") as f:
        f.seek(offset)
        _extract(_lines(f, line), out_dir, k, offset, line, source, summary, tsv.name, progress)
    summary.shards = summary.reused + summary.written
    return summary


def _extract(
    lines: Iterator[tuple[int, bytes, int]],
    out_dir: Path,
    k: int,
    start_offset: int,
    start_line: int,
    source: dict,
    summary: ExtractSummary,
    tsv_name: str,
    progress: Callable[[int], None] | None,
) -> None:
    """The extraction loop: shard ``k`` onwards, from TSV byte ``start_offset`` (just after line ``start_line``)."""
    writer: _ShardWriter | None = None
    pending: list[Skip] = []  # skips since the last complete shard: they belong to the next one
    range_start = offset = start_offset
    line = start_line
    try:
        for line, raw, offset in lines:
            if progress is not None and line % PROGRESS_EVERY == 0:
                progress(offset)
            if not raw.strip():
                continue
            try:
                face = _parse_line(raw, line)
                if writer is not None and face.member in writer.members:
                    raise _LineProblem(f"duplicate member: line {line}: {face.member} already in the shard")
            except _LineProblem as problem:
                pending.append(Skip(f"{tsv_name}:{line}", str(problem)))
                continue
            if writer is None:
                writer = _ShardWriter(out_dir, k, first_line=line, tsv_start=range_start)
            writer.add(face)
            if len(writer) == source["shard_size"]:
                _finish(writer, line, offset, pending, source, summary)
                writer, pending, range_start, k = None, [], offset, k + 1
        if writer is not None:
            _finish(writer, line, offset, pending, source, summary)
            writer, pending = None, []
    finally:
        if writer is not None:
            writer.abort()
    summary.skipped.extend(pending)  # bad lines after the last image: in no shard, re-read on every run
    summary.n_lines = line
    if progress is not None:
        progress(offset)


def _finish(
    writer: _ShardWriter, line: int, offset: int, pending: list[Skip], source: dict, summary: ExtractSummary
) -> None:
    """Complete one shard and account for it in ``summary``."""
    summary.written.append(writer.finish(last_line=line, tsv_end=offset, skipped=pending, source=source))
    summary.n_images += len(writer)
    summary.skipped.extend(pending)


# --------------------------------------------------------------------------------------------- reading


def probe_image_bytes(data: bytes, check: Check = "decode") -> tuple[int, int]:
    """``(width, height)`` of an encoded image held in memory (same checks as :func:`base.probe_image`).

    Raises:
        ImageProblem: empty, not an image, truncated or undecodable (``check="decode"``).
    """
    if not data:
        raise ImageProblem("empty file: 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            if check == "decode":
                im.load()
    except UnidentifiedImageError:
        raise ImageProblem("not an image: unknown or corrupt format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"corrupt image: {exc}") from None
    return int(size[0]), int(size[1])


def read_msceleb(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read the shards extracted by :func:`extract_tsv_to_shards` (layout and path convention in the module docstring).

    Shards are read in name order, members in index order. A shard without index is skipped whole; a member whose
    bytes are short, unreadable or a duplicate image_id is a skip.

    Raises:
        ValueError: unknown option.
        DatasetError: ``root`` missing, no ``shard-*.tar``, a malformed index, or no usable image at all.
    """
    MsCelebOptions.parse(options)
    root = require_dir(Path(root), "MS-Celeb-1M shard folder")
    shards = sorted(root.glob("shard-*.tar"))
    if not shards:
        raise DatasetError(f"no shard-*.tar in {root}: extract the MS-Celeb-1M TSV first (extract_tsv_to_shards)")
    result = ReadResult()
    seen: set[str] = set()
    for tar in shards:
        index = index_path(tar)
        if not index.is_file():
            result.skip(tar.name, f"missing shard index: {index.name}")
            continue
        with tar.open("rb") as f:
            for row in read_index(index):
                _read_member(f, tar.name, row, dataset, check, seen, result)
    return require_records(result, root, f"MS-Celeb-1M dataset {dataset!r}")


def _read_member(
    f: BinaryIO, shard: str, row: IndexRow, dataset: str, check: Check, seen: set[str], result: ReadResult
) -> None:
    """Probe one member at its indexed offset and add its record."""
    path = f"{shard}{PATH_SEPARATOR}{row.member}"
    image_id = f"{dataset}/{row.mid}/{row.rank:03d}-{row.face_id}"
    if image_id in seen:
        result.skip(path, f"duplicate image: {image_id} already in an earlier shard")
        return
    f.seek(row.offset)
    data = f.read(row.size)
    if len(data) != row.size:
        result.skip(path, f"truncated shard: {len(data)} of {row.size} bytes at offset {row.offset}")
        return
    try:
        width, height = probe_image_bytes(data, check)
    except ImageProblem as problem:
        result.skip(path, str(problem))
        return
    seen.add(image_id)
    result.records.append(
        ManifestRecord(
            image_id=image_id,
            path=path,
            dataset=dataset,
            subject=row.mid,
            sequence="",
            frame=row.rank,
            n_frames=1,
            width=width,
            height=height,
        )
    )
