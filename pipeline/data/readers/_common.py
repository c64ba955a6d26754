"""Small helpers shared by the readers: option models, frame selection, directory listing.

Private to :mod:`pipeline.data.readers`; the public pieces (the option models) are re-exported by each reader.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.data.manifest import ManifestRecord
from pipeline.data.readers.base import Check, ImageProblem, ReadResult, probe_image
from pipeline.errors import DatasetError

__all__ = [
    "FrameSelection",
    "for_each_subject_folder",
    "probe_or_skip",
    "ImageExt",
    "ReaderOptions",
    "add_sequence",
    "has_ext",
    "relpath",
    "require_records",
    "sequence_frames",
    "visible_entries",
]


class ReaderOptions(BaseModel):
    """Base of every reader's options model: unknown keys are errors, values are immutable.

    ``reader`` names the reader in error messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    reader: ClassVar[str] = "reader"

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Self:
        """Validate ``options`` (``None`` = all defaults).

        Raises:
            ValueError: one line naming the unknown or invalid option key.
        """
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ValueError(_one_line(cls, exc)) from None


def _one_line(cls: type[ReaderOptions], exc: ValidationError) -> str:
    """A one-line message for the first error of ``exc``."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<options>"
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(cls.model_fields))
        return f"unknown option {key!r} for reader {cls.reader!r} (valid: {valid})"
    return f"bad option {key!r} for reader {cls.reader!r}: {err['msg']}"


def _check_ext(value: str) -> str:
    if not value.startswith(".") or len(value) < 2 or "/" in value:
        raise ValueError(f"image_ext must look like '.jpg', got {value!r}")
    return value


class ImageExt(ReaderOptions):
    """``image_ext``: the extension of the image files (compared case-insensitively)."""

    image_ext: str = ".jpg"

    @field_validator("image_ext")
    @classmethod
    def _ext(cls, value: str) -> str:
        return _check_ext(value)


class FrameSelection(ImageExt):
    """Which frames of a sequence go into the manifest.

    ``keep_first`` first and ``keep_last`` last frames by sorted file order (a frame in both counts once);
    ``None`` for both keeps every frame. Mixing ``None`` and an integer is an error.
    """

    keep_first: int | None = Field(1, ge=0)
    keep_last: int | None = Field(3, ge=0)

    @model_validator(mode="after")
    def _both_or_none(self) -> Self:
        if (self.keep_first is None) != (self.keep_last is None):
            raise ValueError("keep_first and keep_last must both be null (all frames) or both integers")
        if self.keep_first == 0 and self.keep_last == 0:
            raise ValueError("keep_first = keep_last = 0 selects no frame")
        return self

    def select(self, n_frames: int) -> list[int]:
        """Sorted 0-based indices of the kept frames of a sequence of ``n_frames`` frames."""
        if self.keep_first is None or self.keep_last is None:
            return list(range(n_frames))
        first = range(min(self.keep_first, n_frames))
        last = range(max(n_frames - self.keep_last, 0), n_frames)
        return sorted(set(first) | set(last))


def visible_entries(folder: Path) -> list[Path]:
    """Entries of ``folder`` sorted by name, hidden ones (``.DS_Store``, ``._x``) left out."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


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
