"""Listing files: how a raw dataset enters DVC without DVC hashing every loose file on every status.

``download`` writes ``data/raw/<name>/listing.tsv``: one line per file under the dataset root, sorted,
``<relative path>\\t<bytes>\\t<fingerprint>``, where the fingerprint is the file's md5 (``content``) or its
``mtime_ns`` (``stat``: fast for 500k files; a touched file changes it). Downstream stages depend on the listing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from pipeline.atomic import atomic_file

__all__ = ["iter_files", "write_listing"]

Fingerprint = Literal["content", "stat"]


def iter_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (hidden files and folders excluded), in sorted path order.

    Symlinked folders are followed, as the readers follow them (datasets assembled from links are common).
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_listing(root: Path, out: Path, fingerprint: Fingerprint = "content",
                  progress: Callable[[int], None] | None = None) -> int:
    """Write the listing of ``root`` to ``out`` (atomically) and return the number of files listed."""
    root = Path(root)
    n = 0
    with atomic_file(out) as tmp, open(tmp, "w") as fh:
        fh.write("path\tbytes\t" + ("md5" if fingerprint == "content" else "mtime_ns") + "\n")
        for path in iter_files(root):
            st = path.stat()
            fp = _md5(path) if fingerprint == "content" else str(st.st_mtime_ns)
            fh.write(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{fp}\n")
            n += 1
            if progress and n % 1000 == 0:
                progress(1000)
    if progress:
        progress(n % 1000)
    return n
