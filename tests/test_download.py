"""Tests for :mod:`pipeline.data.download` against a local threaded HTTP server (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import io
import random
import re
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.data import download as dl
from pipeline.data.download import (
    KNOWN_DOWNLOADS,
    DownloadError,
    RemoteFile,
    download,
    extract_archive,
    file_checksum,
    parse_checksum,
    verify_checksum,
)
from pipeline.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CHUNK = 4096

# --------------------------------------------------------------------------------------------- fixtures

FIXTURE_FILES = {
    "lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg": 40_000,
    "lfw/Zico/Zico_0001.jpg": 30_000,
    "lfw/Zico/Zico_0002.jpg": 25_000,
    "lfw/README.txt": 100,
}


def _fixture_contents() -> dict[str, bytes]:
    rng = random.Random(1234)  # incompressible but deterministic bytes
    return {name: rng.randbytes(size) for name, size in FIXTURE_FILES.items()}


def _build_tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A small ``.tgz`` (~95 kB) with an LFW-like tree."""
    return _build_tgz(tmp_path / "fixture.tgz", _fixture_contents())


@pytest.fixture
def payload(archive: Path) -> bytes:
    return archive.read_bytes()


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


@dataclass
class Served:
    """One request as the server saw it."""

    range: str | None
    status: int
    bytes_served: int


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; mutated by tests before downloading."""

    payload: bytes = b""
    cut_after: int = 0  # bytes of body sent before closing the connection early ...
    cuts_left: int = 0  # ... for this many responses
    ignore_range: bool = False  # always answer 200 with the whole body
    forced_statuses: list[int] = field(default_factory=list)  # error statuses for the next requests
    requests: list[Served] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        state = self.server.state
        rng = self.headers.get("Range")
        if state.forced_statuses:
            status = state.forced_statuses.pop(0)
            state.requests.append(Served(rng, status, 0))
            self.send_error(status)
            return
        data, start, status = state.payload, 0, 200
        if rng is not None and not state.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            assert match is not None, rng
            start = int(match[1])
            if start >= len(data):
                state.requests.append(Served(rng, 416, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        sent = body
        if state.cuts_left > 0:
            state.cuts_left -= 1
            sent = body[: state.cut_after]
        state.requests.append(Served(rng, status, len(sent)))  # recorded before the client can see the body
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(sent)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@dataclass
class LocalServer:
    state: ServerState
    url: str


@pytest.fixture
def server(payload: bytes) -> Iterator[LocalServer]:
    """A threaded HTTP server on 127.0.0.1 serving the fixture archive at ``/fixture.tgz``."""
    state = ServerState(payload=payload)
    httpd = _Server(state)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield LocalServer(state, f"http://127.0.0.1:{httpd.server_address[1]}/fixture.tgz")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _get(server: LocalServer, dest: Path, checksum: str | None, **kwargs: object) -> Path:
    options: dict[str, object] = {"progress": False, "chunk_size": CHUNK, "timeout": 5, "retries": 2, "backoff": 0}
    options.update(kwargs)
    return download(server.url, dest, checksum=checksum, **options)  # type: ignore[arg-type]


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


# --------------------------------------------------------------------------------------------- checksums


@pytest.mark.parametrize(
    ("checksum", "expected"),
    [
        ("md5:" + "a" * 32, ("md5", "a" * 32)),
        ("md5:" + "ABCDEF0123456789" * 2, ("md5", "abcdef0123456789" * 2)),
        ("sha256:" + "0" * 64, ("sha256", "0" * 64)),
    ],
)
def test_parse_checksum_accepts_md5_and_sha256(checksum: str, expected: tuple[str, str]) -> None:
    assert parse_checksum(checksum) == expected


@pytest.mark.parametrize(
    "checksum",
    [
        "",
        "a" * 32,  # no algorithm
        "md5:",
        "md5:" + "a" * 31,
        "md5:" + "a" * 33,
        "md5:" + "g" * 32,
        "sha256:" + "a" * 32,  # md5 length under sha256
        "sha1:" + "a" * 40,
        "MD5:" + "a" * 32,
        " md5:" + "a" * 32,
        "md5:" + "a" * 32 + "\n",
    ],
)
def test_parse_checksum_rejects_malformed(checksum: str) -> None:
    with pytest.raises(ValueError):
        parse_checksum(checksum)


def test_download_rejects_malformed_checksum_before_any_request(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _get(server, tmp_path / "x.tgz", "md5:nothex")
    assert server.state.requests == []


def test_file_checksum_and_verify(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB to cross a hash chunk boundary
    path.write_bytes(data)
    assert file_checksum(path) == _md5(data)
    assert file_checksum(path, "sha256") == "sha256:" + hashlib.sha256(data).hexdigest()
    assert verify_checksum(path, _md5(data))
    assert verify_checksum(path, _md5(data).upper().replace("MD5", "md5"))
    assert not verify_checksum(path, _md5(b"other"))
    with pytest.raises(ValueError):
        file_checksum(path, "sha1")


def test_download_error_is_a_user_error() -> None:
    assert issubclass(DownloadError, UserError)


def test_known_downloads_are_well_formed() -> None:
    lfw = {remote.name: remote for remote in KNOWN_DOWNLOADS["lfw"]}
    assert set(lfw) == {"lfw.tgz", "pairs.txt"}
    for remote in lfw.values():
        assert remote.url.startswith("https://")
    with pytest.raises(ValueError):
        RemoteFile("x", "http://example.invalid/x", "md5:123")


def test_known_lfw_pairs_checksum_matches_repo_copy() -> None:
    """The published pairs.txt checksum is the one of the protocol file the evaluation uses."""
    (pairs,) = [remote for remote in KNOWN_DOWNLOADS["lfw"] if remote.name == "pairs.txt"]
    assert verify_checksum(REPO_ROOT / "data" / "protocols" / "lfw_pairs.txt", pairs.checksum)


# --------------------------------------------------------------------------------------------- download


def test_download_plain(
    server: LocalServer, payload: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "sub" / "dir" / "lfw.tgz"
    assert _get(server, dest, _md5(payload), progress=True) == dest
    assert dest.read_bytes() == payload
    assert not _part(dest).exists()
    assert [(r.range, r.status, r.bytes_served) for r in server.state.requests] == [(None, 200, len(payload))]
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr only


def test_download_sha256(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "lfw.tgz"
    _get(server, dest, "sha256:" + hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload


def test_download_without_checksum(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "lfw.tgz"
    _get(server, dest, None)
    assert dest.read_bytes() == payload


def test_connection_cut_resumes_with_range(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    cut = 10_000
    server.state.cut_after, server.state.cuts_left = cut, 1
    dest = tmp_path / "lfw.tgz"
    _get(server, dest, _md5(payload))
    assert dest.read_bytes() == payload
    assert file_checksum(dest) == _md5(payload)
    assert [(r.range, r.status, r.bytes_served) for r in server.state.requests] == [
        (None, 200, cut),
        (f"bytes={cut}-", 206, len(payload) - cut),
    ]


def test_repeated_cuts_each_resume_from_current_size(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    cut = 7_000
    server.state.cut_after, server.state.cuts_left = cut, 2
    dest = tmp_path / "lfw.tgz"
    _get(server, dest, _md5(payload), retries=2)
    assert dest.read_bytes() == payload
    assert [r.range for r in server.state.requests] == [None, f"bytes={cut}-", f"bytes={2 * cut}-"]


def test_cuts_beyond_retries_keep_part_for_later(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    cut = 5_000
    server.state.cut_after, server.state.cuts_left = cut, 3
    dest = tmp_path / "lfw.tgz"
    with pytest.raises(DownloadError, match=r"failed after 2 attempts.*connection closed.*run again to resume"):
        _get(server, dest, _md5(payload), retries=1)
    assert not dest.exists()
    assert _part(dest).stat().st_size == 2 * cut
    # a later call resumes where it stopped
    _get(server, dest, _md5(payload), retries=1)
    assert dest.read_bytes() == payload
    assert server.state.requests[-1].range == f"bytes={3 * cut}-"


def test_existing_part_fetches_only_the_rest(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    k = 12_345
    dest = tmp_path / "lfw.tgz"
    _part(dest).write_bytes(payload[:k])
    _get(server, dest, _md5(payload))
    assert dest.read_bytes() == payload
    assert [(r.range, r.status, r.bytes_served) for r in server.state.requests] == [
        (f"bytes={k}-", 206, len(payload) - k)
    ]


def test_server_ignoring_range_restarts_from_zero(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    k = 9_000
    server.state.ignore_range = True
    dest = tmp_path / "lfw.tgz"
    _part(dest).write_bytes(b"\xff" * k)  # wrong bytes: they must be discarded, not kept
    _get(server, dest, _md5(payload))
    assert dest.read_bytes() == payload
    assert [(r.range, r.status, r.bytes_served) for r in server.state.requests] == [
        (f"bytes={k}-", 200, len(payload))
    ]


def test_complete_part_answered_416_is_kept(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "lfw.tgz"
    _part(dest).write_bytes(payload)
    _get(server, dest, _md5(payload))
    assert dest.read_bytes() == payload
    assert [(r.range, r.status) for r in server.state.requests] == [(f"bytes={len(payload)}-", 416)]


def test_invalid_part_answered_416_restarts(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "lfw.tgz"
    _part(dest).write_bytes(b"\x00" * (len(payload) + 10))  # too long / wrong content
    _get(server, dest, _md5(payload))
    assert dest.read_bytes() == payload
    assert [(r.range, r.status) for r in server.state.requests] == [(f"bytes={len(payload) + 10}-", 416), (None, 200)]


def test_checksum_mismatch_removes_everything(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "lfw.tgz"
    wrong = _md5(b"not the archive")
    with pytest.raises(DownloadError) as info:
        _get(server, dest, wrong)
    message = str(info.value)
    assert message == (
        f"checksum mismatch for {server.url}: expected {wrong}, got {_md5(payload)} (partial file removed)"
    )
    assert "\n" not in message
    assert not dest.exists()
    assert not _part(dest).exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "fixture.tgz"]


def test_404_fails_at_once_naming_the_status(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    server.state.forced_statuses = [404, 404, 404, 404]
    dest = tmp_path / "lfw.tgz"
    with pytest.raises(DownloadError, match=r"HTTP 404"):
        _get(server, dest, _md5(payload), retries=3)
    assert len(server.state.requests) == 1
    assert not dest.exists()
    assert not _part(dest).exists()


def test_5xx_is_retried(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    server.state.forced_statuses = [503, 500]
    dest = tmp_path / "lfw.tgz"
    _get(server, dest, _md5(payload), retries=2)
    assert dest.read_bytes() == payload
    assert [r.status for r in server.state.requests] == [503, 500, 200]


def test_5xx_beyond_retries_fails(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    server.state.forced_statuses = [503] * 5
    dest = tmp_path / "lfw.tgz"
    with pytest.raises(DownloadError, match=r"failed after 3 attempts: HTTP 503"):
        _get(server, dest, _md5(payload), retries=2)
    assert len(server.state.requests) == 3
    assert not dest.exists()


def test_backoff_is_exponential(
    server: LocalServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", sleeps.append)
    server.state.forced_statuses = [502, 502, 502]
    _get(server, tmp_path / "lfw.tgz", _md5(payload), retries=3, backoff=0.5)
    assert sleeps == [0.5, 1.0, 2.0]


def test_connection_refused_is_retried_then_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port with nobody listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/fixture.tgz"
    with pytest.raises(DownloadError, match=r"failed after 2 attempts: cannot connect"):
        download(url, tmp_path / "x.tgz", checksum=None, progress=False, timeout=2, retries=1, backoff=0)
    assert not (tmp_path / "x.tgz").exists()


def test_existing_dest_with_right_checksum_makes_no_request(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "lfw.tgz"
    dest.write_bytes(payload)
    assert _get(server, dest, _md5(payload)) == dest
    assert server.state.requests == []


def test_existing_dest_with_wrong_checksum_is_not_overwritten(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    dest = tmp_path / "lfw.tgz"
    dest.write_bytes(b"user data")
    with pytest.raises(DownloadError, match=r"already exists.*delete it"):
        _get(server, dest, _md5(payload))
    assert dest.read_bytes() == b"user data"
    assert server.state.requests == []


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="http"):
        download("ftp://127.0.0.1/x", tmp_path / "x", checksum=None, progress=False)


# --------------------------------------------------------------------------------------------- extraction


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("progress", [False, True])
def test_extract_archive_gives_expected_tree(archive: Path, tmp_path: Path, progress: bool) -> None:
    dest = tmp_path / "out" / "lfw_raw"
    assert extract_archive(archive, dest, progress=progress) == dest
    assert _tree(dest) == _fixture_contents()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["lfw_raw"]  # no temp folder left


def test_extract_zip(tmp_path: Path) -> None:
    contents = _fixture_contents()
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in contents.items():
            zf.writestr(name, data)
    dest = tmp_path / "out"
    extract_archive(archive, dest, progress=False)
    assert _tree(dest) == contents


def test_extract_plain_tar(tmp_path: Path) -> None:
    contents = {"a/b.txt": b"hello", "c.txt": b"world"}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in contents.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    extract_archive(archive, tmp_path / "out", progress=False)
    assert _tree(tmp_path / "out") == contents


def _evil_tar(path: Path, info: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("good/file.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        info.size = len(data) if info.isreg() else 0
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


def _fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(tarfile.TarInfo("../evil"), id="dotdot"),
        pytest.param(tarfile.TarInfo("good/../../evil"), id="nested-dotdot"),
        pytest.param(tarfile.TarInfo("/tmp/evil-absolute"), id="absolute"),
        pytest.param(_symlink("good/link", "../../evil"), id="symlink-out"),
        pytest.param(_symlink("good/link", "/etc/passwd"), id="symlink-absolute"),
        pytest.param(_hardlink("good/hard", "../evil"), id="hardlink-out"),
        pytest.param(_fifo("good/fifo"), id="fifo"),
    ],
)
def test_extract_refuses_unsafe_members(tmp_path: Path, member: tarfile.TarInfo) -> None:
    archive = _evil_tar(tmp_path / "evil.tgz", member, b"pwned")
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "dest"
    with pytest.raises(DownloadError, match="refusing to extract"):
        extract_archive(archive, dest, progress=False)
    assert list(work.iterdir()) == []  # no dest, no temp folder, no ../evil
    assert not (tmp_path / "evil").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz", "work"]


def test_extract_allows_links_inside_the_archive(tmp_path: Path) -> None:
    archive = _evil_tar(tmp_path / "ok.tgz", _symlink("good/link", "file.txt"))
    dest = tmp_path / "dest"
    extract_archive(archive, dest, progress=False)
    assert (dest / "good" / "link").is_symlink()
    assert (dest / "good" / "link").read_bytes() == b"ok"


def test_extract_refuses_zip_traversal(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../evil", b"pwned")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DownloadError, match="unsafe member path"):
        extract_archive(archive, work / "dest", progress=False)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_truncated_archive_leaves_no_dest(archive: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DownloadError, match="cannot extract"):
        extract_archive(broken, work / "dest", progress=False)
    assert list(work.iterdir()) == []


def test_failure_midway_leaves_no_dest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"d/{i}.txt", b"x")
    real_extract = zipfile.ZipFile.extract
    calls = []

    def flaky_extract(self: zipfile.ZipFile, member: object, path: object = None, pwd: object = None) -> str:
        calls.append(member)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_extract(self, member, path, pwd)  # type: ignore[arg-type]

    monkeypatch.setattr(zipfile.ZipFile, "extract", flaky_extract)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DownloadError, match="No space left on device"):
        extract_archive(archive, work / "dest", progress=False)
    assert list(work.iterdir()) == []


def test_extract_into_existing_dest_is_refused(archive: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(DownloadError, match="already exists"):
        extract_archive(archive, dest, progress=False)
    assert _tree(dest) == {"keep.txt": b"mine"}


def test_extract_unsupported_or_missing(tmp_path: Path) -> None:
    rar = tmp_path / "a.rar"
    rar.write_bytes(b"x")
    with pytest.raises(DownloadError, match="unsupported archive type"):
        extract_archive(rar, tmp_path / "out", progress=False)
    with pytest.raises(DownloadError, match="not found"):
        extract_archive(tmp_path / "missing.tgz", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_download_then_extract(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "dl" / "lfw.tgz"
    server.state.cut_after, server.state.cuts_left = 3_000, 1
    extracted = extract_archive(_get(server, dest, _md5(payload)), tmp_path / "raw", progress=False)
    assert _tree(extracted) == _fixture_contents()
