"""Aligned-face shards: uncompressed tar files of encoded crops, read back by offset.

The align stage writes its output folder as (names in :data:`ALIGNMENT_TABLE`, :data:`SHARD_DIR`)::

    <root>/alignment.parquet        one row per manifest image (pipeline.faces.table): status, shard, offset, length...
    <root>/shards/shard-00000.tar   the aligned crops of chunk 0 of the manifest
    <root>/shards/shard-00001.tar   ...

A shard is a plain POSIX (ustar) tar, so ``tar tf`` lists it and ``tar xf`` extracts it. Member ``k`` is the
``k``-th crop of the shard, named ``<k:06d>.jpg`` (or ``.png``; :func:`member_name`): image ids contain slashes,
so they are not used as member names; the alignment table maps ids to members. Every member has the same fixed
header fields (mtime 0, uid/gid 0, no user/group names, mode 0o644), so identical crops give byte-identical
shards and DVC's md5 of the folder is stable across runs.

Random access does not parse the tar: :func:`write_shard` returns each member's data offset and length, the
alignment table stores them, and reading one face is one ``os.pread`` plus one ``cv2.imdecode``
(:func:`read_crop`, :class:`ShardReader`).

Crops are ``uint8`` arrays ``(H, W, 3)`` in RGB order everywhere in this module; OpenCV's BGR order stays inside
the encode/decode functions.

This module needs only numpy and OpenCV (no torch, pandas or pyarrow), so benchmarks can write shards on a bare
GPU box.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from pipeline.atomic import atomic_file
from pipeline.errors import DatasetError

__all__ = [
    "ALIGNED",
    "ALIGNMENT_TABLE",
    "FORMATS",
    "SHARD_DIR",
    "ShardReader",
    "decode_crop",
    "encode_crop",
    "member_name",
    "read_crop",
    "shard_name",
    "write_shard",
]

Format = Literal["jpeg", "png"]
FORMATS: tuple[str, ...] = ("jpeg", "png")
ALIGNMENT_TABLE = "alignment.parquet"
#: the status of an image whose crop is in a shard (every other status is a failure class)
ALIGNED = "aligned"
SHARD_DIR = "shards"
PNG_COMPRESSION = 3  # zlib level: crops of photos barely shrink past 3, and encoding stays fast
_EXTENSION = {"jpeg": "jpg", "png": "png"}
_RERUN = "re-run the align stage (python -m stages align)"


def shard_name(k: int) -> str:
    """``shard-00000.tar``: the file name of shard ``k`` inside :data:`SHARD_DIR`."""
    return f"shard-{k:05d}.tar"


def member_name(k: int, fmt: Format = "jpeg") -> str:
    """``000123.jpg``: the tar member name of the ``k``-th crop of a shard (``.png`` for ``fmt="png"``)."""
    return f"{k:06d}.{_EXTENSION[fmt]}"


# --------------------------------------------------------------------------------------------- encoding


def _check_format(fmt: str, quality: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown crop format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [0, 100], got {quality}")


def encode_crop(crop: np.ndarray, fmt: Format = "jpeg", quality: int = 95) -> bytes:
    """Encode one crop ``(H, W, 3)`` uint8 RGB as JPEG (``quality``, 4:2:0 chroma) or PNG (lossless).

    The bytes depend only on the pixels, the parameters and the OpenCV build (no timestamps or metadata).

    Raises:
        ValueError: not an ``(H, W, 3)`` uint8 array, unknown ``fmt``, ``quality`` outside [0, 100].
    """
    _check_format(fmt, quality)
    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape:
        raise ValueError(f"a crop must be an (H, W, 3) uint8 RGB array, got {crop.dtype} {crop.shape}")
    bgr = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        params = [
            cv2.IMWRITE_JPEG_QUALITY, int(quality),
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
        ]  # fmt: skip
        ok, buf = cv2.imencode(".jpg", bgr, params)
    else:
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported input, checked above
        raise ValueError(f"OpenCV could not encode a {crop.shape} crop as {fmt}")
    return buf.tobytes()


def decode_crop(data: bytes, *, where: str = "crop") -> np.ndarray:
    """Decode JPEG or PNG bytes to an ``(H, W, 3)`` uint8 RGB array (grayscale inputs are expanded to 3 channels).

    Raises:
        DatasetError: the bytes are not a decodable image; ``where`` names them in the message.
    """
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise DatasetError(f"{where}: {len(data)} bytes do not decode as an image (corrupt shard?): {_RERUN}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------------- writing


def write_shard(
    path: Path, crops: Sequence[np.ndarray], *, fmt: Format = "jpeg", quality: int = 95
) -> list[tuple[int, int]]:
    """Write ``crops`` (each ``(H, W, 3)`` uint8 RGB) as one tar file at ``path``, atomically.

    Member ``k`` is ``crops[k]`` encoded by :func:`encode_crop`, named :func:`member_name`\\ ``(k, fmt)``. The tar
    is written to a temporary file in the same folder, fsynced, then renamed over ``path``: a reader never sees a
    half-written shard (:func:`pipeline.atomic.atomic_file`).

    Returns:
        ``[(offset, length)] * len(crops)``: the byte range of each member's data inside the tar, for
        :func:`read_crop`.

    Raises:
        ValueError: a crop that is not ``(H, W, 3)`` uint8, unknown ``fmt``, ``quality`` outside [0, 100]
            (checked before anything is written).
    """
    _check_format(fmt, quality)
    encoded = [encode_crop(crop, fmt, quality) for crop in crops]
    ranges: list[tuple[int, int]] = []
    with atomic_file(path, fsync=True) as tmp, tmp.open("wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for k, data in enumerate(encoded):
                tar.addfile(_member_info(member_name(k, fmt), len(data)), io.BytesIO(data))
                # addfile leaves tar.offset after the data, padded to a whole block
                padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                ranges.append((tar.offset - padded, len(data)))
    return ranges


def _member_info(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with every field fixed except name and size (byte-identical shards)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, 0, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info



# --------------------------------------------------------------------------------------------- reading


def _open(path: Path) -> tuple[int, int]:
    """``(fd, size)`` of a shard opened read-only.

    Raises:
        DatasetError: the shard is missing or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise DatasetError(f"aligned-face shard not found: {path}: {_RERUN}") from None
    except OSError as exc:
        raise DatasetError(f"cannot open aligned-face shard {path}: {exc.strerror}") from None
    return fd, os.fstat(fd).st_size


def _pread(fd: int, size: int, path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of an open shard of ``size`` bytes.

    Raises:
        DatasetError: negative offset, non-positive length, or a range past the end of the file (truncated shard).
    """
    if offset < 0 or length <= 0:
        raise DatasetError(f"{path}: invalid face byte range offset={offset} length={length}: {_RERUN}")
    if offset + length > size:
        raise DatasetError(
            f"{path}: face bytes [{offset}, {offset + length}) lie past the end of the file ({size} bytes): "
            f"truncated shard, {_RERUN}"
        )
    data = os.pread(fd, length, offset)
    if len(data) != length:  # the file shrank after it was opened
        raise DatasetError(f"{path}: read {len(data)} of {length} bytes at offset {offset}: truncated shard, {_RERUN}")
    return data


def read_crop(path: Path, offset: int, length: int) -> np.ndarray:
    """Read one crop ``(H, W, 3)`` uint8 RGB from the shard at ``path`` (opens and closes the file).

    Raises:
        DatasetError: missing shard, byte range past the end of the file, bytes that do not decode.
    """
    path = Path(path)
    fd, size = _open(path)
    try:
        data = _pread(fd, size, path, offset, length)
    finally:
        os.close(fd)
    return decode_crop(data, where=f"{path} offset {offset}")


class ShardReader:
    """Random access to the crops of the shards in one folder, keeping the shard files open.

    Shards are opened lazily on first use and stay open (at most ``max_open`` at once, least recently used closed
    first), so reading a face costs one ``pread`` and one decode. Safe to share between threads (``pread`` has no
    file position) and across ``fork`` (DataLoader workers): a process that did not open the descriptors drops
    its inherited copies and reopens its own. Pickling (``spawn`` workers) carries only the folder.

    Args:
        shard_dir: folder holding ``shard-XXXXX.tar`` files (:func:`shard_name`).
        max_open: most shard files held open at once (keep it well under ``ulimit -n``).
    """

    def __init__(self, shard_dir: Path, *, max_open: int = 256) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.shard_dir = Path(shard_dir)
        self.max_open = max_open
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._open: OrderedDict[int, tuple[int, int]] = OrderedDict()  # shard -> (fd, size), LRU order
        self._users: dict[int, int] = {}  # fd -> number of reads in flight
        self._evicted: set[int] = set()  # fds closed by eviction once their reads finish

    def path(self, shard: int) -> Path:
        """The file of shard ``shard``."""
        return self.shard_dir / shard_name(shard)

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the descriptors belong to the parent
            for fd, _ in self._open.values():
                try:
                    os.close(fd)  # the child's copy only; the parent's stays open
                except OSError:
                    pass
            self._reset()

    def _acquire(self, shard: int) -> tuple[int, int]:
        with self._lock:
            entry = self._open.get(shard)
            if entry is None:
                entry = _open(self.path(shard))
                self._open[shard] = entry
                while len(self._open) > self.max_open:
                    _, (old, _) = self._open.popitem(last=False)
                    if self._users.get(old, 0):
                        self._evicted.add(old)
                    else:
                        os.close(old)
            else:
                self._open.move_to_end(shard)
            self._users[entry[0]] = self._users.get(entry[0], 0) + 1
            return entry

    def _release(self, fd: int) -> None:
        with self._lock:
            self._users[fd] -= 1
            if not self._users[fd]:
                del self._users[fd]
                if fd in self._evicted:
                    self._evicted.discard(fd)
                    os.close(fd)

    def read_bytes(self, shard: int, offset: int, length: int) -> bytes:
        """The encoded bytes of one crop.

        Raises:
            DatasetError: missing shard, byte range past the end of the file.
        """
        self._check_pid()
        fd, size = self._acquire(shard)
        try:
            return _pread(fd, size, self.path(shard), offset, length)
        finally:
            self._release(fd)

    def read(self, shard: int, offset: int, length: int) -> np.ndarray:
        """One crop ``(H, W, 3)`` uint8 RGB.

        Raises:
            DatasetError: missing shard, byte range past the end of the file, bytes that do not decode.
        """
        data = self.read_bytes(shard, offset, length)
        return decode_crop(data, where=f"{self.path(shard)} offset {offset}")

    @property
    def n_open(self) -> int:
        """Number of shard files this process holds open."""
        return len(self._open) if self._pid == os.getpid() else 0

    def close(self) -> None:
        """Close every shard file this process opened (reading again reopens them)."""
        if self._pid != os.getpid():
            self._check_pid()
            return
        with self._lock:
            for fd, _ in self._open.values():
                if not self._users.get(fd):
                    os.close(fd)
                else:
                    self._evicted.add(fd)
            self._open.clear()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing useful to report
            pass

    def __getstate__(self) -> dict:
        return {"shard_dir": self.shard_dir, "max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.shard_dir, self.max_open = state["shard_dir"], state["max_open"]
        self._reset()

    def __repr__(self) -> str:
        return f"ShardReader({str(self.shard_dir)!r}, open={self.n_open})"
