"""CASIA-WebFace (10,575 identities, ~494k images).

On-disk layout::

    <root>/0000045/001.jpg
    <root>/0000045/002.jpg
    <root>/0000099/001.jpg

One folder per identity (a 7-digit id), the identity's images inside (option ``image_ext``, default ``.jpg``),
numbered from ``001``. Manifest rows: ``subject`` = folder name, ``sequence`` = ``""``, ``frame`` = the file's 1-based
position in the sorted listing of the identity's image files (= the number in the name for the usual contiguous
``001``, ``002``, … names; one rule for every name, so two files never share a frame), ``n_frames`` = 1,
image_id ``<dataset>/<subject>/<stem>``.

Skips: files at root level, empty folders, files without the image extension, unreadable images, and subjects with
fewer than ``min_images_per_subject`` readable images (one skip per subject folder).
"""

from __future__ import annotations

from pathlib import Path

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
from pipeline.reader_options import CasiaWebFaceOptions

__all__ = ["CasiaWebFaceOptions", "read_casia_webface"]


def read_casia_webface(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read a CASIA-WebFace tree (layout in the module docstring).

    Raises:
        ValueError: unknown or invalid option.
        DatasetError: ``root`` missing, or no usable image at all.
    """
    opts = CasiaWebFaceOptions.parse(options)
    root = require_dir(Path(root), "CASIA-WebFace root")
    result = ReadResult()
    for_each_subject_folder(root, result, "identity",
                            lambda folder: _read_subject(folder, root, dataset, opts, check, result))
    return require_records(result, root, f"CASIA-WebFace dataset {dataset!r}")


def _read_subject(
    folder: Path, root: Path, dataset: str, opts: CasiaWebFaceOptions, check: Check, result: ReadResult
) -> None:
    """Add the images of one identity folder, or one skip when it has too few readable images."""
    images: list[Path] = []
    for entry in visible_entries(folder):
        if entry.is_file() and has_ext(entry, opts.image_ext):
            images.append(entry)
        else:
            result.skip(relpath(entry, root), f"not an image: expected a {opts.image_ext} file")
    if not images:
        result.skip(relpath(folder, root), "empty subject folder")
        return
    minimum = opts.min_images_per_subject
    if len(images) < minimum:  # not worth probing
        result.skip(relpath(folder, root), f"too few images: {len(images)} files < min_images_per_subject {minimum}")
        return
    records = _probe_all(images, folder, root, dataset, opts, check, result)
    if len(records) < minimum:
        result.skip(
            relpath(folder, root), f"too few images: {len(records)} readable < min_images_per_subject {minimum}"
        )
        return
    result.records.extend(records)


def _probe_all(
    images: list[Path],
    folder: Path,
    root: Path,
    dataset: str,
    opts: CasiaWebFaceOptions,
    check: Check,
    result: ReadResult,
) -> list[ManifestRecord]:
    """One record per readable image of a subject (unreadable ones become skips)."""
    records = []
    for position, path in enumerate(images, start=1):
        rel = relpath(path, root)
        size = probe_or_skip(path, root, check, result)
        if size is None:
            continue
        width, height = size
        stem = path.name[: -len(opts.image_ext)]
        records.append(
            ManifestRecord(
                image_id=f"{dataset}/{folder.name}/{stem}",
                path=rel,
                dataset=dataset,
                subject=folder.name,
                sequence="",
                frame=position,
                n_frames=1,
                width=width,
                height=height,
            )
        )
    return records
