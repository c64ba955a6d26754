"""Small helpers shared by the readers: frame selection, directory listing, records.

Private to :mod:`pipeline.data.readers`; the option models are in :mod:`pipeline.reader_options`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.data.manifest import ManifestRecord
from pipeline.data.readers.base import Check, ImageProblem, ReadResult, probe_image
from pipeline.errors import DatasetError
from pipeline.reader_options import FrameSelection

__all__ = [
    "for_each_subject_folder",
    "probe_or_skip",
    "add_sequence",
    "add_image",
    "has_ext",
    "relpath",
    "require_records",
    "sequence_frames",
    "user_entries",
    "visible_entries",
]

#: files an operating system leaves in image folders (lower-cased names), ignored like hidden files: the CaVI
#: distribution has a Windows thumbnail cache ``Thumbs.db`` in most identity folders
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, hidden ones (``.DS_Store``, ``._x``) left out."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def user_entries(folder: Path) -> list[Path]:
    """:func:`visible_entries` without the operating system's files (:data:`SYSTEM_FILES`)."""
    return [p for p in visible_entries(folder) if p.name.lower() not in SYSTEM_FILES]


def has_ext(path: Path, ext: str) -> bool:
    """True when ``path`` ends with ``ext`` (case-insensitive)."""
    return path.name.lower().endswith(ext.lower()) and len(path.name) > len(ext)


def relpath(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators (the manifest's ``path`` / skip path)."""
    return path.relative_to(root).as_posix()


def probe_or_skip(path: Path, root: Path, check: Check, result: ReadResult) -> tuple[int, int] | None:
    """``(width, height)`` of ``path``, or ``None`` after recording it as a skip when it cannot be read."""
    try:
        return probe_image(path, check)
    except ImageProblem as problem:
        result.skip(relpath(path, root), str(problem))
        return None


def add_image(result: ReadResult, path: Path, root: Path, check: Check, *, dataset: str, subject: str, stem: str,
              frame: int, is_caricature: bool = False) -> bool:
    """Append the manifest record of one image of an identity-only dataset (no sequence: ``sequence`` "",
    ``n_frames`` 1, image id ``<dataset>/<subject>/<stem>``) after probing it; an unreadable image is recorded as a
    skip instead. Returns whether a record was added."""
    size = probe_or_skip(path, root, check, result)
    if size is None:
        return False
    result.records.append(ManifestRecord(
        image_id=f"{dataset}/{subject}/{stem}", path=relpath(path, root), dataset=dataset, subject=subject,
        sequence="", frame=frame, n_frames=1, width=size[0], height=size[1], is_caricature=is_caricature))
    return True


def for_each_subject_folder(root: Path, result: ReadResult, what: str, read_folder: Callable[[Path], None]) -> None:
    """Call ``read_folder`` on every visible folder of ``root``; files at root level are skips (``stray file``)."""
    for entry in visible_entries(root):
        if entry.is_dir():
            read_folder(entry)
        else:
            result.skip(relpath(entry, root), f"stray file: expected {what} folders at root level")


def require_records(result: ReadResult, root: Path, what: str) -> ReadResult:
    """Raise :class:`DatasetError` when a reader found no usable image at all."""
    if not result.records:
        raise DatasetError(f"{what}: no usable image under {root} ({len(result.skipped)} files/folders skipped)")
    return result


def sequence_frames(folder: Path, root: Path, ext: str, result: ReadResult) -> list[Path]:
    """The frame files of a sequence folder in sorted name order; other entries become skips."""
    frames: list[Path] = []
    for entry in visible_entries(folder):
        if entry.is_file() and has_ext(entry, ext):
            frames.append(entry)
        else:
            result.skip(relpath(entry, root), f"not a frame: expected a {ext} file")
    if not frames:
        result.skip(relpath(folder, root), "empty sequence: no frame")
    return frames


def add_sequence(
    frames: list[Path],
    *,
    root: Path,
    dataset: str,
    subject: str,
    expression: str | None,
    expression_code: int | None,
    selection: FrameSelection,
    check: Check,
    result: ReadResult,
) -> None:
    """Probe the selected frames of one sequence and add a record per readable frame.

    ``sequence`` is the frames' folder name; ``frame`` the index in ``frames``; unreadable frames are skips.
    """
    for index in selection.select(len(frames)):
        path = frames[index]
        rel = relpath(path, root)
        size = probe_or_skip(path, root, check, result)
        if size is None:
            continue
        width, height = size
        sequence = path.parent.name
        result.records.append(
            ManifestRecord(
                image_id=f"{dataset}/{subject}/{sequence}/{index:05d}",
                path=rel,
                dataset=dataset,
                subject=subject,
                sequence=sequence,
                frame=index,
                n_frames=len(frames),
                width=width,
                height=height,
                expression=expression,
                expression_code=expression_code,
            )
        )
