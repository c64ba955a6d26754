"""Oulu-CASIA NIR&VIS facial expression database, VIS / Strong illumination (docs/method.md §5.2).

On-disk layout (``root`` is e.g. ``OriginalImg/VL/Strong``)::

    <root>/P001/Anger/000.jpeg
    <root>/P001/Anger/001.jpeg
    ...
    <root>/P001/Surprise/017.jpeg
    <root>/P002/...

- one folder per subject, named ``P`` + 3 digits (option ``subject_pattern``);
- inside, one folder per expression sequence, named after the expression (``Anger``, ``Disgust``, ``Fear``,
  ``Happiness``, ``Sadness``, ``Surprise``; option ``expressions``);
- inside, the frames of the sequence (option ``image_ext``, default ``.jpeg``); their sorted file names give the
  frame order. Every sequence starts neutral and ends at the peak expression.

Manifest rows: ``sequence`` = ``expression`` = the expression folder name, ``expression_code`` null,
``frame`` = index in the sorted full sequence, ``n_frames`` = its length, image_id
``<dataset>/<subject>/<sequence>/<frame:05d>``. Only the frames picked by ``keep_first`` / ``keep_last`` are
probed and recorded (default: the neutral first frame and the 3 peak frames, docs/method.md §5.2).

Skips: subject-level entries that are not subject folders, stray files in a subject folder, empty subject
folders, unknown expression folders (the whole folder), empty sequences, files without the image extension,
unreadable images.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.readers._common import (
    add_sequence,
    relpath,
    require_records,
    sequence_frames,
    visible_entries,
)
from pipeline.data.readers.base import Check, ReadResult, require_dir
from pipeline.reader_options import OULU_EXPRESSIONS, OuluCasiaOptions

__all__ = ["OULU_EXPRESSIONS", "OuluCasiaOptions", "read_oulu_casia"]

def read_oulu_casia(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read an Oulu-CASIA VIS tree (layout in the module docstring).

    Raises:
        ValueError: unknown or invalid option.
        DatasetError: ``root`` missing, or no usable image at all.
    """
    opts = OuluCasiaOptions.parse(options)
    root = require_dir(Path(root), "Oulu-CASIA root")
    pattern = re.compile(opts.subject_pattern)
    result = ReadResult()
    for entry in visible_entries(root):
        if not entry.is_dir():
            result.skip(relpath(entry, root), "not a subject folder: a file at root level")
        elif not pattern.search(entry.name):
            result.skip(relpath(entry, root), f"not a subject folder: name does not match {opts.subject_pattern!r}")
        else:
            _read_subject(entry, root, dataset, opts, check, result)
    return require_records(result, root, f"Oulu-CASIA dataset {dataset!r}")


def _read_subject(
    folder: Path, root: Path, dataset: str, opts: OuluCasiaOptions, check: Check, result: ReadResult
) -> None:
    """Add the kept frames of every expression sequence of one subject folder."""
    entries = visible_entries(folder)
    if not entries:
        result.skip(relpath(folder, root), "empty subject folder")
        return
    for entry in entries:
        if not entry.is_dir():
            result.skip(relpath(entry, root), "stray file: expected expression folders in a subject folder")
        elif entry.name not in opts.expressions:
            result.skip(relpath(entry, root), f"unknown expression: {entry.name!r}")
        else:
            _read_sequence(entry, root, dataset, folder.name, opts, check, result)


def _read_sequence(
    folder: Path, root: Path, dataset: str, subject: str, opts: OuluCasiaOptions, check: Check, result: ReadResult
) -> None:
    """Add the kept frames of one expression sequence folder."""
    frames = sequence_frames(folder, root, opts.image_ext, result)
    add_sequence(
        frames,
        root=root,
        dataset=dataset,
        subject=subject,
        expression=folder.name,
        expression_code=None,
        selection=opts,
        check=check,
        result=result,
    )
