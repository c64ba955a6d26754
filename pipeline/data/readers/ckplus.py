"""Extended Cohn-Kanade (CK+) (docs/method.md §5.1).

On-disk layout (the two official archives ``extended-cohn-kanade-images.zip`` and ``Emotion_labels.zip``
unpacked side by side under ``root``)::

    <root>/cohn-kanade-images/S005/001/S005_001_00000001.png
    <root>/cohn-kanade-images/S005/001/S005_001_00000002.png
    ...
    <root>/cohn-kanade-images/S005/001/S005_001_00000011.png
    <root>/Emotion/S005/001/S005_001_00000011_emotion.txt

- ``cohn-kanade-images`` (option ``images_dir``): one folder per subject (``S005``), one per session / sequence
  (``001``), the frames inside (option ``image_ext``, default ``.png``) in sorted file-name order; every sequence
  starts neutral and ends at the peak.
- ``Emotion`` (option ``emotion_dir``): the same subject/session folders; a labelled session holds one file
  ``<subject>_<session>_<last frame>_emotion.txt`` with one line like ``   3.0000000e+00`` (parsed with
  ``int(float())``), the code of the peak expression: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy,
  6 sadness, 7 surprise (option ``emotions``, names by code). 327 of the 593 sessions are labelled; the others
  have no file (or no folder).

Manifest rows: ``sequence`` = session folder, ``frame`` = index in the sorted frames, ``n_frames`` = their count,
``expression`` = ``emotions[code]`` and ``expression_code`` = code for labelled sequences, null otherwise
(unlabelled sequences are kept: their neutral first frame is usable). image_id
``<dataset>/<subject>/<sequence>/<frame:05d>``. Only the frames picked by ``keep_first`` / ``keep_last`` are probed.

Skips: a label file that does not parse or has a code out of range (the label only: the sequence stays
unlabelled), several label files in a session, labels without images, stray files, unreadable images. Hidden files
(``.DS_Store``) are ignored.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.data.readers._common import (
    add_sequence,
    relpath,
    require_records,
    sequence_frames,
    visible_entries,
)
from pipeline.data.readers.base import Check, ReadResult, require_dir
from pipeline.errors import DatasetError
from pipeline.reader_options import CKPLUS_EMOTIONS, CkPlusOptions

__all__ = ["CKPLUS_EMOTIONS", "CkPlusOptions", "parse_emotion_file", "read_ckplus"]

EMOTION_SUFFIX = "_emotion.txt"


class LabelProblem(Exception):
    """An emotion file cannot be used; the message is the skip reason."""


def parse_emotion_file(path: Path, rel: str, n_codes: int) -> int:
    """The emotion code in a CK+ ``*_emotion.txt`` file.

    Raises:
        LabelProblem: not exactly one non-blank line, a line that is not a number, a non-integral number or a code
            outside ``0 .. n_codes - 1``; the message names ``rel`` and the line.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) != 1:
        raise LabelProblem(f"bad emotion label: {rel} has {len(lines)} non-blank lines, expected 1")
    number, line = lines[0]
    try:
        value = float(line)
    except ValueError:
        raise LabelProblem(f"bad emotion label: {rel} line {number}: {line!r} is not a number") from None
    if not value.is_integer():
        raise LabelProblem(f"bad emotion label: {rel} line {number}: {line!r} is not an integer code")
    code = int(value)
    if not 0 <= code < n_codes:
        raise LabelProblem(f"emotion code out of range: {rel} line {number}: code {code} not in 0..{n_codes - 1}")
    return code


def read_ckplus(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read a CK+ tree (layout in the module docstring).

    Raises:
        ValueError: unknown or invalid option.
        DatasetError: ``root``, the image folder or the emotion folder missing; no usable image at all.
    """
    opts = CkPlusOptions.parse(options)
    root = require_dir(Path(root), "CK+ root")
    images = root / opts.images_dir
    emotion = root / opts.emotion_dir
    if not images.is_dir():
        raise DatasetError(
            f"CK+ image folder {opts.images_dir!r} missing under {root} (extended-cohn-kanade-images.zip)"
        )
    if not emotion.is_dir():
        raise DatasetError(
            f"CK+ label folder {opts.emotion_dir!r} missing under {root}: unpack Emotion_labels.zip next to "
            f"{opts.images_dir!r}"
        )
    result = ReadResult()
    labels = _read_labels(emotion, root, opts, result)
    seen: set[tuple[str, str]] = set()
    for subject in visible_entries(images):
        if not subject.is_dir():
            result.skip(relpath(subject, root), "stray file: expected subject folders")
            continue
        for session in visible_entries(subject):
            if not session.is_dir():
                result.skip(relpath(session, root), "stray file: expected session folders")
                continue
            seen.add((subject.name, session.name))
            code = labels.get((subject.name, session.name))
            _read_session(session, root, dataset, subject.name, code, opts, check, result)
    for key in sorted(labels.keys() - seen):
        result.skip(f"{opts.emotion_dir}/{key[0]}/{key[1]}", "label without images: no image session")
    return require_records(result, root, f"CK+ dataset {dataset!r}")


def _read_labels(emotion: Path, root: Path, opts: CkPlusOptions, result: ReadResult) -> dict[tuple[str, str], int]:
    """``{(subject, session): code}`` for every session with exactly one valid emotion file."""
    labels: dict[tuple[str, str], int] = {}
    for subject in (p for p in visible_entries(emotion) if p.is_dir()):
        for session in (p for p in visible_entries(subject) if p.is_dir()):
            files = [p for p in visible_entries(session) if p.is_file() and p.name.endswith(EMOTION_SUFFIX)]
            if len(files) > 1:
                names = ", ".join(p.name for p in files)
                result.skip(relpath(session, root), f"several emotion files: {names}")
                continue
            if not files:
                continue
            rel = relpath(files[0], root)
            try:
                labels[subject.name, session.name] = parse_emotion_file(files[0], rel, len(opts.emotions))
            except LabelProblem as problem:
                result.skip(rel, str(problem))
    return labels


def _read_session(
    folder: Path,
    root: Path,
    dataset: str,
    subject: str,
    code: int | None,
    opts: CkPlusOptions,
    check: Check,
    result: ReadResult,
) -> None:
    """Add the kept frames of one session folder, labelled with ``code`` (None = unlabelled)."""
    frames = sequence_frames(folder, root, opts.image_ext, result)
    add_sequence(
        frames,
        root=root,
        dataset=dataset,
        subject=subject,
        expression=None if code is None else opts.emotions[code],
        expression_code=code,
        selection=opts,
        check=check,
        result=result,
    )
