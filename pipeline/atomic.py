"""Atomic writes: the one way the project puts a file or a folder in place.

Every output is first written to a temporary name beside its final path (``.<name>.tmp-<pid>``: hidden, in the same
folder so the rename stays on one file system, tagged with the writer's process id so that two writers never share
it), then renamed over the final path with :func:`os.replace`. A reader therefore sees the old file or the whole new
one, never half of one; an error (or an interrupt) deletes the temporary instead of renaming it. A writer killed by
SIGKILL deletes nothing: the next writer of the same path deletes the temporaries of dead processes first
(:func:`remove_stale_temps`).

- :func:`atomic_file`: one file, written by the caller to the yielded path;
- :func:`atomic_files`: several files that appear together, renamed only once all of them are written;
- :func:`atomic_dir`: a whole output folder, swapped in place of the previous one;
- :func:`write_json`: a JSON document (indented, keys sorted) through :func:`atomic_file`;
- :func:`remove_stale_temps`: delete the temporaries of ``final`` that dead processes left.

Import-light on purpose (the standard library and :mod:`pipeline.processes`): every package may use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.processes import pid_alive

__all__ = ["atomic_dir", "atomic_file", "atomic_files", "remove_stale_temps", "temp_path", "write_json"]

_KINDS = ("tmp", "old")


def temp_path(final: str | os.PathLike, kind: str = "tmp") -> Path:
    """The temporary name of ``final`` for this process: ``<folder>/.<name>.<kind>-<pid>``."""
    final = Path(final)
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}")


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Delete ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` beside ``final`` whose process is gone; the deleted paths.

    What a writer killed by SIGKILL leaves (files or folders). A temporary of a live process (another writer, or
    this one) is kept; the process ids are those of this host. One listing of the parent folder.
    """
    final = Path(final)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:  # no folder yet: nothing to remove
        return removed
    for entry in entries:
        kind, _, pid = entry.name.removeprefix(f".{final.name}.").partition("-")
        if (entry.name.startswith(f".{final.name}.") and kind in _KINDS and pid.isdigit()
                and not pid_alive(int(pid))):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path for ``final``; when the body returns, rename it over ``final``.

    The parent folder is created. On an exception the temporary file is deleted and ``final`` is left as it was.

    Args:
        final: the path the file must end up at.
        fsync: flush the written file and its folder to disk around the rename (for outputs that must survive a
            power loss, such as shards).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, final)
        if fsync:
            _fsync(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_files(*finals: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield one temporary path per final path; after the body succeeds, rename all of them into place.

    The renames happen only once every file is written, so an error (or an interrupt) while writing never leaves
    a new file of the set beside stale ones; on error the temporary files are deleted.
    """
    paths = [Path(f) for f in finals]
    tmps = [temp_path(f) for f in paths]
    for f in paths:
        f.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(f)
    try:
        yield tmps
        for tmp, final in zip(tmps, paths, strict=True):
            os.replace(tmp, final)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``, on error it is deleted.

    A stage therefore never leaves a half-written output folder. The previous ``final`` (if any) is moved aside,
    the new folder renamed in, then the old one deleted. Temporary folders of dead writers are deleted first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = temp_path(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented, key-sorted JSON (trailing newline) through :func:`atomic_file`."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return path


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data to disk (folders: where the OS allows opening them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
