"""Labeled Faces in the Wild (LFW) images and its standard ``pairs.txt`` protocol (docs/method.md §5.5).

Image layout (``lfw.tgz`` unpacked, or an aligned copy such as ``lfw_mtcnnpy_160`` with ``image_ext: .png``)::

    <root>/Aaron_Eckhart/Aaron_Eckhart_0001.jpg
    <root>/Aaron_Peirsol/Aaron_Peirsol_0001.jpg
    <root>/Aaron_Peirsol/Aaron_Peirsol_0002.jpg

One folder per person; inside, ``<Name>_<dddd><ext>`` with ``<Name>`` the folder name and ``dddd`` the 1-based
image number. Manifest rows: ``subject`` = folder name, ``sequence`` = ``""``, ``frame`` = the image number as on
disk (1-based), ``n_frames`` = 1, image_id ``<dataset>/<subject>/<stem>``.

Skips: files at root level, empty person folders, files not named ``<Name>_<dddd><ext>``, unreadable images.

``pairs.txt`` (the 10-fold "View 2" protocol): a header ``<n_folds> <n_per_class>`` (``10 300``), then for each
fold ``n_per_class`` same-person lines ``name i j`` followed by ``n_per_class`` different-person lines
``name1 i name2 j`` (fields separated by whitespace). See :func:`read_lfw_pairs`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pipeline.data.manifest import ManifestRecord
from pipeline.data.readers._common import (
    for_each_subject_folder,
    has_ext,
    probe_or_skip,
    relpath,
    require_records,
    visible_entries,
)
from pipeline.data.readers.base import Check, ReadResult, require_dir
from pipeline.reader_options import LfwOptions

__all__ = ["LfwOptions", "LfwPair", "LfwPairs", "lfw_image_path", "read_lfw", "read_lfw_pairs"]


def lfw_image_path(root: Path, name: str, number: int, ext: str = ".jpg") -> Path:
    """``<root>/<name>/<name>_<number:04d><ext>``: the file of image ``number`` (1-based) of person ``name``."""
    return Path(root) / name / f"{name}_{number:04d}{ext}"


def read_lfw(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read an LFW image tree (layout in the module docstring).

    Raises:
        ValueError: unknown or invalid option.
        DatasetError: ``root`` missing, or no usable image at all.
    """
    opts = LfwOptions.parse(options)
    root = require_dir(Path(root), "LFW root")
    result = ReadResult()
    for_each_subject_folder(root, result, "person",
                            lambda folder: _read_person(folder, root, dataset, opts, check, result))
    return require_records(result, root, f"LFW dataset {dataset!r}")


def _read_person(folder: Path, root: Path, dataset: str, opts: LfwOptions, check: Check, result: ReadResult) -> None:
    """Add every image of one person folder."""
    entries = visible_entries(folder)
    if not entries:
        result.skip(relpath(folder, root), "empty subject folder")
        return
    name = re.compile(rf"^{re.escape(folder.name)}_(\d{{4}}){re.escape(opts.image_ext)}$", re.IGNORECASE)
    for path in entries:
        rel = relpath(path, root)
        match = name.match(path.name) if path.is_file() and has_ext(path, opts.image_ext) else None
        if match is None:
            result.skip(rel, f"unexpected name: expected {folder.name}_<dddd>{opts.image_ext}")
            continue
        size = probe_or_skip(path, root, check, result)
        if size is None:
            continue
        width, height = size
        stem = path.name[: -len(opts.image_ext)]
        result.records.append(
            ManifestRecord(
                image_id=f"{dataset}/{folder.name}/{stem}",
                path=rel,
                dataset=dataset,
                subject=folder.name,
                sequence="",
                frame=int(match.group(1)),
                n_frames=1,
                width=width,
                height=height,
            )
        )


class LfwPair(NamedTuple):
    """One verification pair: image ``i1`` of ``name1`` vs image ``i2`` of ``name2`` (numbers 1-based)."""

    name1: str
    i1: int
    name2: str
    i2: int
    is_same: bool
    fold: int


@dataclass(frozen=True)
class LfwPairs:
    """The parsed ``pairs.txt``: ``pairs`` in file order; fold ``k`` holds its same pairs then its different pairs."""

    n_folds: int
    n_per_class: int
    pairs: list[LfwPair] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[LfwPair]:
        return iter(self.pairs)

    def fold(self, k: int) -> list[LfwPair]:
        """The pairs of fold ``k`` (0-based)."""
        if not 0 <= k < self.n_folds:
            raise IndexError(f"fold {k} not in 0..{self.n_folds - 1}")
        size = 2 * self.n_per_class
        return self.pairs[k * size : (k + 1) * size]


def read_lfw_pairs(path: Path) -> LfwPairs:
    """Parse a standard LFW ``pairs.txt`` (format in the module docstring).

    Blank lines are ignored. Raises:
        ValueError: bad header, a line with the wrong shape for its position (same pair expected but 4 fields, a
            non-integer or non-positive image number), missing or extra lines; the message names the line number.
    """
    path = Path(path)
    lines = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty LFW pairs file")
    n_folds, n_per_class = _pairs_header(path, *lines[0])
    body = lines[1:]
    expected = n_folds * 2 * n_per_class
    pairs: list[LfwPair] = []
    for k, (number, fields) in enumerate(body[:expected]):
        fold, within = divmod(k, 2 * n_per_class)
        pairs.append(_pairs_line(path, number, fields, same=within < n_per_class, fold=fold))
    if len(body) < expected:
        last = lines[-1][0]
        raise ValueError(f"{path}: line {last + 1}: file ends after {len(body)} pairs, header announces {expected}")
    if len(body) > expected:
        raise ValueError(f"{path}: line {body[expected][0]}: extra line after the {expected} pairs of the header")
    return LfwPairs(n_folds, n_per_class, pairs)


def _pairs_header(path: Path, number: int, fields: list[str]) -> tuple[int, int]:
    """``(n_folds, n_per_class)`` from the header line."""
    if len(fields) != 2 or not all(_positive(f) for f in fields):
        raise ValueError(f"{path}: line {number}: expected header '<n_folds> <n_per_class>', got {' '.join(fields)!r}")
    return int(fields[0]), int(fields[1])


def _pairs_line(path: Path, number: int, fields: list[str], *, same: bool, fold: int) -> LfwPair:
    """One pair line; ``same`` says which shape the position in the file requires."""
    shape = "'name i j' (same-person pair)" if same else "'name1 i name2 j' (different-person pair)"
    if len(fields) != (3 if same else 4):
        raise ValueError(f"{path}: line {number}: expected {shape} of fold {fold}, got {' '.join(fields)!r}")
    name1, i1, name2, i2 = (fields[0], fields[1], fields[0], fields[2]) if same else fields
    if not (_positive(i1) and _positive(i2)):
        raise ValueError(f"{path}: line {number}: image numbers must be positive integers, got {' '.join(fields)!r}")
    return LfwPair(name1, int(i1), name2, int(i2), same, fold)


def _positive(text: str) -> bool:
    """True when ``text`` is a positive decimal integer (ASCII digits)."""
    return re.fullmatch(r"[0-9]+", text) is not None and int(text) > 0
