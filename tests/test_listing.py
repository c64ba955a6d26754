"""Listing files: sorted, hidden files excluded, content vs stat fingerprints."""

from __future__ import annotations

import hashlib
import os

from pipeline.data.listing import write_listing


def test_listing_content_and_stat(tmp_path):
    root = tmp_path / "root"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello")
    (root / "b" / "c.bin").write_bytes(b"\x00" * 10)
    (root / ".hidden").write_text("x")
    (root / ".git").mkdir()
    (root / ".git" / "x").write_text("x")
    out = tmp_path / "listing.tsv"
    assert write_listing(root, out, "content") == 2
    lines = out.read_text().splitlines()
    assert lines[0] == "path\tbytes\tmd5"
    assert lines[1] == f"a.txt\t5\t{hashlib.md5(b'hello').hexdigest()}"
    assert lines[2].startswith("b/c.bin\t10\t")
    before = out.read_text()
    assert write_listing(root, out, "content") == 2 and out.read_text() == before  # deterministic
    write_listing(root, out, "stat")
    assert out.read_text().splitlines()[0] == "path\tbytes\tmtime_ns"
    os.utime(root / "a.txt", ns=(1, 1))
    write_listing(root, out, "stat")
    assert out.read_text().splitlines()[1] == "a.txt\t5\t1"


def test_listing_follows_symlinked_folders(tmp_path):
    """Datasets assembled from symlinked subject folders are listed like real ones (the readers follow links)."""
    store = tmp_path / "store" / "P001"
    store.mkdir(parents=True)
    (store / "000.jpeg").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    (root / "P001").symlink_to(store, target_is_directory=True)
    out = tmp_path / "listing.tsv"
    assert write_listing(root, out, "content") == 1
    assert out.read_text().splitlines()[1].startswith("P001/000.jpeg\t1\t")
