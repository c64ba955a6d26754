"""WebCaricature's landmark files (``FacialPoints/<id>/<img>.txt``, docs/method.md §5.8): the one parser, used by the
reader (an image is kept only if its file parses) and by the landmark crop (:mod:`pipeline.align.landmarks`).

A file holds 17 lines ``x y`` (pixels of the original image; numbers may be in scientific notation). The original
splits each line on one space and drops the last two characters of ``y``, which is right only for CRLF line ends
(an LF file loses a digit of every ``y``, and a last line without a line end two). Here CRLF and LF are read alike,
with any white space between the two numbers; blank lines and a UTF-8 byte-order mark are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["IMAGES_DIR", "LANDMARKS_DIR", "N_LANDMARKS", "landmark_path", "parse_landmarks", "read_landmarks"]

N_LANDMARKS = 17
#: WebCaricature's image and landmark folders under the dataset root
IMAGES_DIR = "OriginalImages"
LANDMARKS_DIR = "FacialPoints"


def landmark_path(image_path: str) -> str:
    """The landmark file of a WebCaricature image, both relative to the dataset root (``/`` separators).

    ``OriginalImages/<id>/C00001.jpg`` → ``FacialPoints/<id>/C00001.txt``.

    Raises:
        ValueError: ``image_path`` is not ``OriginalImages/<id>/<file>``.
    """
    parts = PurePosixPath(image_path).parts
    if len(parts) != 3 or parts[0] != IMAGES_DIR:
        raise ValueError(f"not a WebCaricature image path: {image_path!r} (expected {IMAGES_DIR}/<id>/<file>)")
    return f"{LANDMARKS_DIR}/{parts[1]}/{PurePosixPath(parts[2]).stem}.txt"


def parse_landmarks(text: str, source: str = "<landmarks>", n_points: int = N_LANDMARKS) -> np.ndarray:
    """The ``(n_points, 2)`` float64 ``x, y`` array of a landmark file's text.

    Raises:
        ValueError: a line without exactly two values, a value that is not a finite number, or not ``n_points``
            points; the message starts with ``source`` (and names the line).
    """
    points: list[tuple[float, float]] = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{source}: line {number}: expected 'x y', got {len(fields)} values")
        try:
            x, y = float(fields[0]), float(fields[1])
        except ValueError:
            raise ValueError(f"{source}: line {number}: not a number: {raw.strip()!r}") from None
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError(f"{source}: line {number}: not a finite number: {raw.strip()!r}")
        points.append((x, y))
    if len(points) != n_points:
        raise ValueError(f"{source}: expected {n_points} landmarks, got {len(points)}")
    return np.asarray(points, dtype=np.float64)


def read_landmarks(path: str | Path, source: str | None = None, n_points: int = N_LANDMARKS) -> np.ndarray:
    """:func:`parse_landmarks` of a file (decoded as UTF-8); ``source`` names it in messages (default: ``path``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable file, or one :func:`parse_landmarks` rejects.
    """
    source = str(path) if source is None else source
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{source}: {exc.strerror or exc}") from None
    return parse_landmarks(data.decode("utf-8", errors="replace"), source, n_points)
