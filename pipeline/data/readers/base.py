"""What every dataset reader shares: the result type, skip accounting and image probing.

A reader is a function ``read_<layout>(root, dataset, *, options, check) -> ReadResult``:

- ``root``: the dataset root as laid out on disk (see each reader's docstring).
- ``dataset``: the dataset's name in ``params.yaml`` (goes into ``image_id`` and the ``dataset`` column).
- ``options``: the reader's own options from ``datasets.<name>.options`` (validated by the reader).
- ``check``: ``"decode"`` fully decodes every image (catches truncated files), ``"header"`` reads only the header.

Problems with single files (corrupt image, unknown expression folder, label line that does not parse) are
*skips*: counted, with a reason, in :attr:`ReadResult.skipped`. Problems with the dataset as a whole (missing root,
missing label folder, no image at all) raise :class:`pipeline.errors.DatasetError` with a one-line message.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from pipeline.data.manifest import ManifestRecord
from pipeline.errors import DatasetError, ImageProblem

__all__ = ["Check", "ImageProblem", "ReadResult", "Skip", "probe_image", "require_dir"]

log = logging.getLogger(__name__)

Check = Literal["decode", "header"]


@dataclass(frozen=True, slots=True)
class Skip:
    """A file left out of the manifest: ``path`` relative to the dataset root, ``reason`` one short line."""

    path: str
    reason: str


@dataclass
class ReadResult:
    """Records (``identity`` still -1; the manifest builder assigns it) and the files skipped."""

    records: list[ManifestRecord] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)

    def skip(self, path: str, reason: str) -> None:
        """Record a skipped file and log it at WARNING level."""
        log.warning("skip %s: %s", path, reason)
        self.skipped.append(Skip(path, reason))

    def skip_counts(self) -> dict[str, int]:
        """Number of skips per reason class (the text before the first ':' of each reason)."""
        return dict(Counter(s.reason.split(":", 1)[0] for s in self.skipped))


def probe_image(path: str | os.PathLike, check: Check = "decode") -> tuple[int, int]:
    """Return ``(width, height)`` of an image file.

    Raises:
        ImageProblem: empty file, not an image, truncated or otherwise undecodable (``check="decode"``).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageProblem("empty file: 0 bytes")
        with Image.open(path) as im:
            size = im.size
            if check == "decode":
                im.load()
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not an image: unknown or corrupt format") from None
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"corrupt image: {exc}") from None
    if size[0] <= 0 or size[1] <= 0:
        raise ImageProblem(f"corrupt image: size {size}")
    return int(size[0]), int(size[1])


def require_dir(path: Path, what: str) -> Path:
    """Raise a one-line :class:`DatasetError` unless ``path`` is an existing directory."""
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} is not a directory")
    return path
