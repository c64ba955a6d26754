"""Resumable, checksum-verified downloads and safe archive extraction.

:func:`download` fetches one URL into ``dest`` over plain :mod:`urllib` (http / https):

* the bytes go to ``<dest>.part`` first; an existing ``.part`` is resumed with an HTTP ``Range`` request
  (``206`` appends, ``200`` restarts from zero, ``416`` means the part is already complete or invalid);
* transient failures (connection reset / refused, timeout, incomplete body, HTTP 5xx / 408 / 429) are retried
  ``retries`` times with exponential backoff, each retry resuming from the current ``.part`` size;
* the finished file is verified against ``checksum`` (``"md5:<hex>"`` or ``"sha256:<hex>"``) and only then
  moved to ``dest`` with :func:`os.replace`, so ``dest`` is either absent or complete and verified.

An existing ``dest`` is never overwritten: when it matches the checksum it is returned at once (no network),
when it does not a :class:`DownloadError` asks the user to delete it.

:func:`extract_archive` unpacks ``.tgz`` / ``.tar.gz`` / ``.tar`` / ``.zip`` archives into a temporary folder next
to ``dest`` and renames it into place, after refusing any member that would escape the folder (absolute
paths, ``..`` components, links pointing outside, device files).

:data:`KNOWN_DOWNLOADS` lists the official files of the datasets that can be fetched automatically.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import posixpath
import re
import shutil
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from pipeline.errors import UserError

__all__ = [
    "KNOWN_DOWNLOADS",
    "DownloadError",
    "RemoteFile",
    "download",
    "extract_archive",
    "file_checksum",
    "parse_checksum",
    "verify_checksum",
]

_HASH_HEX_LENGTHS: Mapping[str, int] = MappingProxyType({"md5": 32, "sha256": 64})
_CHECKSUM_RE = re.compile(r"(?P<algo>[a-z0-9]+):(?P<hex>[0-9a-fA-F]+)")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(?:(?P<start>\d+)-(?P<end>\d+)|\*)/(?P<total>\d+|\*)\s*$")
_TRANSIENT_HTTP_STATUSES = frozenset({408, 429})
_USER_AGENT = "dynamic-mtl-face-downloader/1.0 (+python-urllib)"
_HASH_CHUNK = 1 << 20


class DownloadError(UserError):
    """A download or an archive extraction failed; the message is one line for the user."""


class _TransientError(Exception):
    """A network failure worth retrying (the ``.part`` file is kept and resumed)."""


# --------------------------------------------------------------------------------------------- checksums


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"md5:<hex>"`` / ``"sha256:<hex>"`` into ``(algo, lowercase hex)``; ValueError if malformed."""
    match = _CHECKSUM_RE.fullmatch(checksum) if isinstance(checksum, str) else None
    if match is None:
        raise ValueError(f"malformed checksum {checksum!r}: expected 'md5:<hex>' or 'sha256:<hex>'")
    algo, digest = match["algo"], match["hex"].lower()
    if algo not in _HASH_HEX_LENGTHS:
        raise ValueError(f"unsupported checksum algorithm {algo!r} in {checksum!r}: use md5 or sha256")
    if len(digest) != _HASH_HEX_LENGTHS[algo]:
        raise ValueError(
            f"malformed checksum {checksum!r}: {algo} needs {_HASH_HEX_LENGTHS[algo]} hex digits, got {len(digest)}"
        )
    return algo, digest


def file_checksum(path: Path | str, algo: str = "md5") -> str:
    """Hash ``path`` in 1 MiB chunks and return ``"<algo>:<hex>"`` (``algo`` is ``md5`` or ``sha256``)."""
    if algo not in _HASH_HEX_LENGTHS:
        raise ValueError(f"unsupported checksum algorithm {algo!r}: use md5 or sha256")
    hasher = hashlib.new(algo)
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            hasher.update(chunk)
    return f"{algo}:{hasher.hexdigest()}"


def verify_checksum(path: Path | str, checksum: str) -> bool:
    """True when the file at ``path`` hashes to ``checksum`` (``"md5:<hex>"`` / ``"sha256:<hex>"``)."""
    algo, digest = parse_checksum(checksum)
    return file_checksum(path, algo) == f"{algo}:{digest}"


# --------------------------------------------------------------------------------------------- known files


@dataclass(frozen=True, slots=True)
class RemoteFile:
    """One file published by a dataset's authors: local file ``name``, its ``url`` and expected ``checksum``."""

    name: str
    url: str
    checksum: str

    def __post_init__(self) -> None:
        parse_checksum(self.checksum)


KNOWN_DOWNLOADS: Mapping[str, tuple[RemoteFile, ...]] = MappingProxyType(
    {
        # LFW's original host (vis-www.cs.umass.edu/lfw/) stopped resolving in 2025; these are the figshare copies
        # of the original files that scikit-learn's LFW loader uses, with its sha256 values. The pairs.txt sha256
        # equals that of data/protocols/lfw_pairs.txt (a test checks it).
        "lfw": (
            RemoteFile(
                name="lfw.tgz",
                url="https://ndownloader.figshare.com/files/5976018",
                checksum="sha256:055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
            ),
            RemoteFile(
                name="pairs.txt",
                url="https://ndownloader.figshare.com/files/5976006",
                checksum="sha256:ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
            ),
        ),
    }
)
"""Published files per dataset name (LFW: the images archive, 180,566,744 bytes, and the 10-fold pairs)."""


# --------------------------------------------------------------------------------------------- progress


class _ProgressReporter:
    """A rich progress bar on stderr, or nothing when disabled. One task, restartable at any offset."""

    def __init__(self, progress: Progress | None, description: str) -> None:
        self._progress = progress
        self._description = description
        self._task: TaskID | None = None

    def start(self, completed: int, total: int | None) -> None:
        """(Re)start the bar at ``completed`` bytes out of ``total`` (None: unknown)."""
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self._description, total=total, completed=completed)
        else:
            self._progress.reset(self._task, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        """Add ``amount`` to the bar."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, amount)


@contextmanager
def _progress_bar(description: str, *, enabled: bool, unit: str = "bytes") -> Iterator[_ProgressReporter]:
    """Yield a :class:`_ProgressReporter`; a live rich bar on stderr when ``enabled``."""
    if not enabled:
        yield _ProgressReporter(None, description)
        return
    columns: tuple[ProgressColumn, ...]
    if unit == "bytes":
        columns = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    else:
        columns = (MofNCompleteColumn(), TimeRemainingColumn())
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        *columns,
        console=Console(stderr=True),
        transient=False,
    )
    with progress:
        yield _ProgressReporter(progress, description)


# --------------------------------------------------------------------------------------------- download


def _part_path(dest: Path) -> Path:
    """The temporary file a download of ``dest`` is written to."""
    return dest.with_name(dest.name + ".part")


def _check_existing(dest: Path, expected: tuple[str, str] | None) -> Path:
    """Return ``dest`` when it matches ``expected`` (or no checksum is given); DownloadError otherwise."""
    if expected is None:
        return dest
    algo, digest = expected
    actual = file_checksum(dest, algo)
    if actual != f"{algo}:{digest}":
        raise DownloadError(
            f"{dest} already exists but its checksum is {actual}, expected {algo}:{digest}; "
            "delete it to download it again"
        )
    return dest


def _is_transient_url_error(exc: urllib.error.URLError) -> bool:
    """Connection-level failures (refused, reset, timeout, DNS hiccup) are transient, TLS verification is not."""
    reason = exc.reason
    if isinstance(reason, ssl.SSLCertVerificationError):
        return False
    return isinstance(reason, (OSError, http.client.HTTPException))


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Send the GET (with ``Range`` when ``offset`` > 0); HTTP errors other than 416 are classified here."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked by caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            raise
        exc.close()
        if exc.code >= 500 or exc.code in _TRANSIENT_HTTP_STATUSES:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from exc
        raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        if _is_transient_url_error(exc):
            raise _TransientError(f"cannot connect: {exc.reason}") from exc
        raise DownloadError(f"download of {url} failed: {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """``"bytes 10-99/100"`` -> ``(10, 100)``; ``"bytes */100"`` -> ``(None, 100)``; unknown parts are None."""
    match = _CONTENT_RANGE_RE.match(value or "")
    if match is None:
        return None, None
    start = int(match["start"]) if match["start"] is not None else None
    total = int(match["total"]) if match["total"] != "*" else None
    return start, total


def _content_length(response: http.client.HTTPResponse) -> int | None:
    """The response's ``Content-Length`` as an int, None when absent or garbled."""
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _handle_416(
    exc: urllib.error.HTTPError, url: str, part: Path, offset: int, expected: tuple[str, str] | None
) -> bool:
    """A 416 on a resume: True when ``part`` is already complete; otherwise delete it (the next try restarts)."""
    _, total = _parse_content_range(exc.headers.get("Content-Range") if exc.headers else None)
    exc.close()
    if offset == 0:
        raise DownloadError(f"download of {url} failed: HTTP 416 {exc.reason}")
    if total is None or total == offset:
        if expected is not None and verify_checksum(part, f"{expected[0]}:{expected[1]}"):
            return True
        if expected is None and total == offset:
            return True
    part.unlink(missing_ok=True)
    return False


def _read_chunk(response: http.client.HTTPResponse, size: int) -> bytes:
    """One ``read`` from the response; every failure of the network side is transient."""
    try:
        return response.read(size)
    except (OSError, http.client.HTTPException) as exc:
        raise _TransientError(f"connection lost: {type(exc).__name__}: {exc}") from exc


def _copy_body(
    response: http.client.HTTPResponse, out: IO[bytes], chunk_size: int, bar: _ProgressReporter
) -> int:
    """Stream the response body into ``out``; returns the number of bytes written (flushed as they come)."""
    written = 0
    while chunk := _read_chunk(response, chunk_size):
        out.write(chunk)
        written += len(chunk)
        bar.advance(len(chunk))
    return written


def _fetch_once(
    url: str,
    part: Path,
    expected: tuple[str, str] | None,
    *,
    chunk_size: int,
    timeout: float,
    bar: _ProgressReporter,
) -> bool:
    """One request resuming ``part``. True when ``part`` is complete; False to go again at once (restart).

    Raises :class:`_TransientError` for retryable failures and :class:`DownloadError` for permanent ones.
    """
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:  # only 416 gets here
        return _handle_416(exc, url, part, offset, expected)
    with response:
        status = response.status
        length = _content_length(response)
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransientError(f"server answered a range starting at byte {start}, asked for {offset}")
            mode = "ab"
            if total is None and length is not None:
                total = offset + length
        elif status == 200:
            offset, mode, total = 0, "wb", length
        else:
            raise DownloadError(f"download of {url} failed: unexpected HTTP status {status}")
        bar.start(offset, total)
        try:
            with open(part, mode) as out:
                received = _copy_body(response, out, chunk_size, bar)
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from exc
    expected_end = offset + length if length is not None else total
    if expected_end is not None and offset + received < expected_end:
        raise _TransientError(f"connection closed after {offset + received} of {expected_end} bytes")
    return True


def _finalize(part: Path, dest: Path, url: str, expected: tuple[str, str] | None) -> Path:
    """Verify ``part`` against ``expected`` and move it to ``dest``; a mismatch deletes it."""
    if expected is not None:
        algo, digest = expected
        actual = file_checksum(part, algo)
        if actual != f"{algo}:{digest}":
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {url}: expected {algo}:{digest}, got {actual} (partial file removed)"
            )
    os.replace(part, dest)
    return dest


def _validate_download_args(url: str, chunk_size: int, retries: int, backoff: float, timeout: float) -> None:
    """ValueError for arguments that are programming errors rather than network trouble."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL {url!r}: only http:// and https:// are supported")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if backoff < 0:
        raise ValueError(f"backoff must be >= 0, got {backoff}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")


def download(
    url: str,
    dest: Path,
    *,
    checksum: str | None,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, retried, verified) and return ``dest``.

    Args:
        url: http(s) URL.
        dest: final file path; its folder is created. Bytes go to ``<dest>.part`` until verified.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; None skips verification (not recommended).
        progress: show a rich progress bar (bytes, speed, ETA) on stderr.
        chunk_size: bytes per read.
        timeout: socket timeout in seconds, for connecting and for each read.
        retries: how many times transient failures are retried (so at most ``retries + 1`` requests,
            plus one immediate restart when a ``416`` reveals an invalid ``.part``).
        backoff: the ``n``-th retry waits ``backoff * 2 ** (n - 1)`` seconds.

    Behaviour:
        * ``dest`` exists and matches ``checksum`` (or ``checksum`` is None): returned at once, no network.
          ``dest`` exists and does not match: :class:`DownloadError` (a user file is never overwritten).
        * an existing ``.part`` is resumed with ``Range: bytes=<size>-``: ``206`` appends, ``200`` restarts from
          zero, ``416`` means it is complete (kept when it matches the checksum) or invalid (restarted).
        * transient failures (reset / refused connection, timeout, body shorter than announced, HTTP 5xx, 408,
          429) are retried; when retries are exhausted the ``.part`` is kept so a later call resumes it.
        * other 4xx: :class:`DownloadError` at once, naming the status.
        * checksum mismatch of the finished file: the ``.part`` is deleted and :class:`DownloadError` raised.

    Raises:
        ValueError: malformed ``checksum`` or arguments, unsupported URL scheme.
        DownloadError: the download failed; ``str(exc)`` is a one-line message for the user.
    """
    expected = parse_checksum(checksum) if checksum is not None else None
    _validate_download_args(url, chunk_size, retries, backoff, timeout)
    dest = Path(dest)
    if dest.is_dir():
        raise DownloadError(f"cannot download {url}: {dest} is a folder")
    if dest.exists():
        return _check_existing(dest, expected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    failures = 0
    with _progress_bar(dest.name, enabled=progress) as bar:
        while True:
            try:
                if _fetch_once(url, part, expected, chunk_size=chunk_size, timeout=timeout, bar=bar):
                    break
            except _TransientError as exc:
                failures += 1
                if failures > retries:
                    kept = f" (partial file kept at {part}; run again to resume)" if part.exists() else ""
                    raise DownloadError(f"download of {url} failed after {failures} attempts: {exc}{kept}") from exc
                if backoff > 0:
                    time.sleep(backoff * 2 ** (failures - 1))
    return _finalize(part, dest, url, expected)


# --------------------------------------------------------------------------------------------- extraction


def _archive_kind(archive: Path) -> str:
    """``"tar"`` or ``"zip"`` from the file name; DownloadError for anything else."""
    name = archive.name.lower()
    if name.endswith((".tgz", ".tar.gz", ".tar")):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    raise DownloadError(f"cannot extract {archive}: unsupported archive type (use .tgz, .tar.gz, .tar or .zip)")


def _escapes(relative: str) -> bool:
    """True when ``relative`` (posix, archive-internal) is absolute or climbs above the archive root."""
    if relative.startswith(("/", "\\")) or PureWindowsPath(relative).drive or PureWindowsPath(relative).root:
        return True
    normalized = posixpath.normpath(relative.replace("\\", "/"))
    return normalized == ".." or normalized.startswith("../") or ".." in PurePosixPath(relative).parts


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    """DownloadError for a member that could write outside the extraction folder or is a special file."""
    if _escapes(member.name):
        raise DownloadError(f"refusing to extract {archive}: unsafe member path {member.name!r}")
    if member.issym():
        target = posixpath.join(posixpath.dirname(member.name), member.linkname)
        if member.linkname.startswith("/") or _escapes(posixpath.normpath(target)):
            raise DownloadError(
                f"refusing to extract {archive}: link {member.name!r} points outside the archive ({member.linkname!r})"
            )
    elif member.islnk():
        if _escapes(member.linkname):
            raise DownloadError(
                f"refusing to extract {archive}: link {member.name!r} points outside the archive ({member.linkname!r})"
            )
    elif not (member.isfile() or member.isdir()):
        raise DownloadError(f"refusing to extract {archive}: special file {member.name!r}")


def _with_progress(items: Iterable[object], bar: _ProgressReporter) -> Iterator[object]:
    """Yield ``items``, advancing ``bar`` by one after each."""
    for item in items:
        yield item
        bar.advance(1)


def _extract_tar(archive: Path, target: Path, bar: _ProgressReporter) -> None:
    """Validate every member of the tar archive, then extract them into ``target``."""
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_tar_member(member, archive)
        bar.start(0, len(members))
        if hasattr(tarfile, "data_filter"):
            tar.extractall(target, members=_with_progress(members, bar), filter="data")  # type: ignore[arg-type]
        else:  # pragma: no cover - Python without extraction filters; members were checked above
            tar.extractall(target, members=_with_progress(members, bar))  # type: ignore[arg-type]  # noqa: S202


def _extract_zip(archive: Path, target: Path, bar: _ProgressReporter) -> None:
    """Validate every member name of the zip archive, then extract them into ``target``."""
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            if _escapes(info.filename):
                raise DownloadError(f"refusing to extract {archive}: unsafe member path {info.filename!r}")
        bar.start(0, len(infos))
        for info in infos:
            zf.extract(info, target)
            bar.advance(1)


def extract_archive(archive: Path, dest: Path, *, progress: bool = True) -> Path:
    """Extract a ``.tgz`` / ``.tar.gz`` / ``.tar`` / ``.zip`` archive into the new folder ``dest`` and return it.

    Every member is checked before anything is written: absolute paths, ``..`` components, symbolic or hard
    links pointing outside the archive and special files raise :class:`DownloadError`. Tar members are further
    extracted with ``filter="data"``. The files go to a temporary folder next to ``dest`` which is renamed to
    ``dest`` only when extraction succeeded, so ``dest`` never exists half-extracted; on failure the temporary
    folder is removed. ``dest`` gets mode 0o755; member modes follow the tar ``data`` filter.

    Raises:
        DownloadError: ``dest`` already exists, the archive is missing, unsupported, corrupt or unsafe.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _archive_kind(archive)
    if not archive.is_file():
        raise DownloadError(f"cannot extract {archive}: file not found")
    if dest.exists():
        raise DownloadError(f"cannot extract {archive}: {dest} already exists (delete it to extract again)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        with _progress_bar(f"extracting {archive.name}", enabled=progress, unit="files") as bar:
            (_extract_tar if kind == "tar" else _extract_zip)(archive, tmp, bar)
        tmp.chmod(0o755)
        os.rename(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError)):
            raise DownloadError(f"cannot extract {archive}: {type(exc).__name__}: {exc}") from exc
        raise
    return dest
