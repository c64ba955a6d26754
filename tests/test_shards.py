"""Aligned-face shards (pipeline.faces.shards), the alignment table (pipeline.faces.table) and FaceSource."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import subprocess
import tarfile

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.errors import DatasetError
from pipeline.faces.shards import (
    ALIGNMENT_TABLE,
    SHARD_DIR,
    ShardReader,
    decode_crop,
    encode_crop,
    member_name,
    read_crop,
    shard_name,
    write_shard,
)
from pipeline.faces.source import FaceSource, center_crop, random_crop
from pipeline.faces.table import ALIGNMENT_COLUMNS, read_alignment_table, write_alignment_table

SIZE = 182


def smooth_crop(seed: int, size: int = SIZE) -> np.ndarray:
    """A face-like smooth RGB crop: a coarse random grid upsampled bilinearly, plus a bright ellipse."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 225, (8, 8, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)
    cv2.ellipse(img, (size // 2, size // 2), (size // 4, size // 3), 0, 0, 360, (220, 180, 150), -1)
    return cv2.GaussianBlur(img, (5, 5), 0)


def jpeg_roundtrip(crop: np.ndarray) -> np.ndarray:
    return decode_crop(encode_crop(crop, "jpeg", 95))


# --------------------------------------------------------------------------------------------- shards


@pytest.fixture
def crops() -> list[np.ndarray]:
    return [smooth_crop(i) for i in range(5)]


def test_jpeg_round_trip_equals_decoded_crops(tmp_path, crops):
    path = tmp_path / shard_name(0)
    ranges = write_shard(path, crops)
    assert len(ranges) == len(crops)
    for crop, (offset, length) in zip(crops, ranges, strict=True):
        got = read_crop(path, offset, length)
        assert got.dtype == np.uint8 and got.shape == (SIZE, SIZE, 3)
        np.testing.assert_array_equal(got, jpeg_roundtrip(crop))  # exactly the decoded JPEG
        err = np.abs(got.astype(int) - crop.astype(int))
        assert err.mean() < 1.5 and err.max() < 40  # q95 on a smooth image: close to the original


def test_png_round_trip_is_exact(tmp_path, crops):
    path = tmp_path / shard_name(3)
    ranges = write_shard(path, crops, fmt="png")
    for crop, (offset, length) in zip(crops, ranges, strict=True):
        np.testing.assert_array_equal(read_crop(path, offset, length), crop)
    with tarfile.open(path) as tar:
        assert tar.getnames() == [member_name(k, "png") for k in range(len(crops))]


def test_rgb_order_is_kept(tmp_path):
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255
    (offset, length), = write_shard(tmp_path / "s.tar", [red], fmt="png")  # fmt: skip
    got = read_crop(tmp_path / "s.tar", offset, length)
    assert got[0, 0].tolist() == [255, 0, 0]


def test_identical_crops_give_byte_identical_shards(tmp_path, crops):
    a, b = tmp_path / "a" / shard_name(0), tmp_path / "b" / shard_name(0)
    ranges_a = write_shard(a, crops)
    ranges_b = write_shard(b, [c.copy() for c in crops])
    assert ranges_a == ranges_b
    assert hashlib.md5(a.read_bytes()).hexdigest() == hashlib.md5(b.read_bytes()).hexdigest()
    write_shard(b, crops[::-1])  # different content: different bytes
    assert a.read_bytes() != b.read_bytes()


def test_tar_lists_members_and_offsets_match(tmp_path, crops):
    path = tmp_path / shard_name(0)
    ranges = write_shard(path, crops)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"{k:06d}.jpg" for k in range(len(crops))]
        assert [(m.offset_data, m.size) for m in members] == ranges
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o644 for m in members)
        data = tar.extractfile(members[2]).read()
    assert data[:3] == b"\xff\xd8\xff"  # a JPEG file
    np.testing.assert_array_equal(decode_crop(data), jpeg_roundtrip(crops[2]))
    raw = path.read_bytes()
    offset, length = ranges[2]
    assert raw[offset : offset + length] == data


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
def test_tar_command_lists_and_extracts(tmp_path, crops):
    path = tmp_path / shard_name(0)
    write_shard(path, crops)
    listing = subprocess.run(["tar", "tf", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert listing == [member_name(k) for k in range(len(crops))]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "xf", str(path), "-C", str(out), "000001.jpg"], check=True)
    img = cv2.imread(str(out / "000001.jpg"))
    np.testing.assert_array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), jpeg_roundtrip(crops[1]))


def test_write_is_atomic_and_validates_first(tmp_path, crops):
    path = tmp_path / shard_name(0)
    with pytest.raises(ValueError, match="uint8"):
        write_shard(path, [crops[0], crops[1].astype(np.float32)])
    with pytest.raises(ValueError, match="unknown crop format"):
        write_shard(path, crops, fmt="webp")
    with pytest.raises(ValueError, match="quality"):
        write_shard(path, crops, quality=101)
    assert list(tmp_path.iterdir()) == []
    write_shard(path, crops)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    assert write_shard(tmp_path / "empty.tar", []) == []
    with tarfile.open(tmp_path / "empty.tar") as tar:
        assert tar.getnames() == []


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_read_errors(tmp_path, crops):
    path = tmp_path / shard_name(0)
    ranges = write_shard(path, crops)
    offset, length = ranges[-1]
    with pytest.raises(DatasetError) as exc:
        read_crop(tmp_path / shard_name(7), offset, length)
    assert "not found" in one_line(exc) and "shard-00007.tar" in str(exc.value) and "align" in str(exc.value)

    with pytest.raises(DatasetError) as exc:
        read_crop(path, offset, length + 10**6)
    assert "past the end" in one_line(exc)

    truncated = tmp_path / shard_name(1)
    truncated.write_bytes(path.read_bytes()[: offset + length // 2])
    with pytest.raises(DatasetError, match="truncated shard"):
        read_crop(truncated, offset, length)
    np.testing.assert_array_equal(read_crop(truncated, *ranges[0]), jpeg_roundtrip(crops[0]))  # earlier ones fine

    corrupt = tmp_path / shard_name(2)
    raw = bytearray(path.read_bytes())
    raw[offset : offset + length] = bytes(length)
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as exc:
        read_crop(corrupt, offset, length)
    assert "do not decode" in one_line(exc) and f"offset {offset}" in str(exc.value)
    with pytest.raises(DatasetError, match="invalid face byte range"):
        read_crop(path, -1, 10)


def test_shard_reader_reuses_evicts_and_pickles(tmp_path, crops):
    ranges = {k: write_shard(tmp_path / shard_name(k), crops[k : k + 2]) for k in range(3)}
    reader = ShardReader(tmp_path, max_open=2)
    for _ in range(2):
        for k in range(3):
            for j, (offset, length) in enumerate(ranges[k]):
                np.testing.assert_array_equal(reader.read(k, offset, length), jpeg_roundtrip(crops[k + j]))
            assert reader.n_open <= 2
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.n_open == 0
    np.testing.assert_array_equal(clone.read(1, *ranges[1][0]), jpeg_roundtrip(crops[1]))
    reader.close()
    assert reader.n_open == 0
    np.testing.assert_array_equal(reader.read(0, *ranges[0][1]), jpeg_roundtrip(crops[1]))  # reopens
    with pytest.raises(DatasetError, match="shard-00009.tar"):
        reader.read(9, 0, 10)
    with pytest.raises(ValueError):
        ShardReader(tmp_path, max_open=0)


# --------------------------------------------------------------------------------------------- alignment table


def table_row(image_id: str, **kw) -> dict:
    """One alignment-table row; aligned unless ``status`` says otherwise."""
    status = kw.get("status", "aligned")
    row = {"image_id": image_id, "status": status, "reason": "", "shard": -1, "member": -1, "offset": -1, "length": 0}
    row |= {"crop_size": 0, "box": None, "landmarks": None, "score": np.nan, "n_faces": 0, "crop_box": None}
    if status == "aligned":
        row |= {
            "crop_size": SIZE,
            "box": [10.5, 20.0, 110.0, 140.0],
            "landmarks": np.arange(10, dtype=np.float64) * 3,
            "score": 0.99,
            "n_faces": 1,
            "crop_box": (0, 0, 132, 162),
        }
    row.update(kw)
    return row


def test_alignment_table_round_trip(tmp_path):
    df = pd.DataFrame(
        [
            table_row("demo/a/1", shard=0, member=0, offset=512, length=1000),
            table_row("demo/a/2", status="no_face", reason="MTCNN found no face"),
            table_row("demo/b/1", shard=0, member=1, offset=2048, length=900, n_faces=3),
        ]
    )
    path = write_alignment_table(df, tmp_path / "al" / ALIGNMENT_TABLE)
    assert [p.name for p in path.parent.iterdir()] == [ALIGNMENT_TABLE]
    got = read_alignment_table(path)
    assert tuple(got.columns) == ALIGNMENT_COLUMNS
    assert got["image_id"].tolist() == ["demo/a/1", "demo/a/2", "demo/b/1"]
    assert got["shard"].dtype == np.int32 and got["offset"].dtype == np.int64 and got["score"].dtype == np.float32
    assert got["status"].tolist() == ["aligned", "no_face", "aligned"]
    assert got["reason"].tolist() == ["", "MTCNN found no face", ""]
    np.testing.assert_allclose(got["box"][0], [10.5, 20.0, 110.0, 140.0])
    assert got["box"][0].dtype == np.float32 and got["box"][1] is None
    np.testing.assert_allclose(got["landmarks"][2], np.arange(10) * 3)
    assert got["crop_box"][0].tolist() == [0, 0, 132, 162] and got["crop_box"][0].dtype == np.int32
    assert np.isnan(got["score"][1]) and got["score"][0] == pytest.approx(0.99)
    assert got["n_faces"].tolist() == [1, 0, 3]


def test_alignment_table_derives_member_from_offsets(tmp_path):
    rows = [
        table_row("x/2", shard=1, offset=5000, length=10),
        table_row("x/1", shard=1, offset=512, length=10),
        table_row("x/3", shard=0, offset=512, length=10),
        table_row("x/4", status="unreadable", reason="0-byte file"),
    ]
    df = pd.DataFrame(rows).drop(columns="member")
    got = read_alignment_table(write_alignment_table(df, tmp_path / ALIGNMENT_TABLE))
    assert got["member"].tolist() == [1, 0, 0, -1]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (table_row("a", shard=0, member=0, offset=512, length=10, box=[1.0, 2.0, 3.0]), "box of 'a' has 3 values"),
        (table_row("a", member=0, offset=512, length=10), "aligned row needs shard"),
        (table_row("a", status="no_face", shard=2), "must have shard -1"),
        (table_row("a", shard=0, member=0, offset=512, length=10, reason="oops"), "empty reason"),
    ],
)
def test_alignment_table_write_validates(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        write_alignment_table(pd.DataFrame([row]), tmp_path / ALIGNMENT_TABLE)
    assert not (tmp_path / ALIGNMENT_TABLE).exists()


def test_alignment_table_write_rejects_duplicates_and_missing_columns(tmp_path):
    rows = [
        table_row("a", shard=0, member=0, offset=512, length=10),
        table_row("a", shard=0, member=1, offset=2048, length=10),
    ]
    with pytest.raises(ValueError, match="duplicate image_id 'a'"):
        write_alignment_table(pd.DataFrame(rows), tmp_path / ALIGNMENT_TABLE)
    with pytest.raises(ValueError, match="lacks column.*landmarks"):
        write_alignment_table(pd.DataFrame(rows[:1]).drop(columns="landmarks"), tmp_path / ALIGNMENT_TABLE)


def test_alignment_table_read_errors(tmp_path):
    path = tmp_path / ALIGNMENT_TABLE
    with pytest.raises(DatasetError) as exc:
        read_alignment_table(path)
    assert "not found" in one_line(exc) and "align" in str(exc.value)
    pd.DataFrame([table_row("a", shard=0, member=0, offset=512, length=10)]).drop(
        columns=["member", "score", "crop_box"]
    ).to_parquet(path)
    with pytest.raises(DatasetError) as exc:
        read_alignment_table(path)
    msg = one_line(exc)
    assert "lacks column(s) member, score, crop_box" in msg and "python -m stages align" in msg
    path.write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable parquet"):
        read_alignment_table(path)


# --------------------------------------------------------------------------------------------- FaceSource

# (image_id, status, shard): 7 manifest images, 2 failed, aligned ones spread over two shards
LAYOUT = [
    ("demo/P1/s/00000", "aligned", 0),
    ("demo/P1/s/00001", "no_face", -1),
    ("demo/P1/s/00002", "aligned", 0),
    ("demo/P2/s/00000", "aligned", 0),
    ("demo/P2/s/00001", "aligned", 1),
    ("demo/P2/s/00002", "unreadable", -1),
    ("demo/P3/s/00000", "aligned", 1),
]
ALIGNED_IDS = [i for i, s, _ in LAYOUT if s == "aligned"]


@pytest.fixture
def aligned_root(tmp_path):
    """An alignment output folder as the align stage writes it; returns (root, {image_id: decoded crop})."""
    root = tmp_path / "aligned"
    by_shard: dict[int, list[int]] = {}
    for k, (_, status, shard) in enumerate(LAYOUT):
        if status == "aligned":
            by_shard.setdefault(shard, []).append(k)
    rows, expected = [], {}
    where = {}
    for shard, ks in by_shard.items():
        ranges = write_shard(root / SHARD_DIR / shard_name(shard), [smooth_crop(k) for k in ks])
        for m, (k, (offset, length)) in enumerate(zip(ks, ranges, strict=True)):
            where[k] = {"shard": shard, "member": m, "offset": offset, "length": length}
    for k, (image_id, status, _) in enumerate(LAYOUT):
        if status == "aligned":
            rows.append(table_row(image_id, **where[k]))
            expected[image_id] = jpeg_roundtrip(smooth_crop(k))
        else:
            rows.append(table_row(image_id, status=status, reason=f"why {k}"))
    write_alignment_table(pd.DataFrame(rows), root / ALIGNMENT_TABLE)
    return root, expected


def test_face_source_exposes_only_aligned_rows(aligned_root):
    root, expected = aligned_root
    with FaceSource(root) as src:
        assert src.ids == ALIGNED_IDS and len(src) == 5 and src.crop_size == SIZE
        assert src.failures == {"demo/P1/s/00001": "no_face: why 1", "demo/P2/s/00002": "unreadable: why 5"}
        for i, image_id in enumerate(src.ids):
            assert src.index(image_id) == i
            np.testing.assert_array_equal(src.read(i), expected[image_id])
        np.testing.assert_array_equal(src.read(-1), expected[ALIGNED_IDS[-1]])
        batch = src.read_ids(["demo/P3/s/00000", "demo/P1/s/00000"])
        assert batch.shape == (2, SIZE, SIZE, 3) and batch.dtype == np.uint8
        np.testing.assert_array_equal(batch[0], expected["demo/P3/s/00000"])
        with pytest.raises(KeyError, match="alignment failed.*no_face"):
            src.index("demo/P1/s/00001")
        with pytest.raises(KeyError, match="not in the alignment table"):
            src.index("demo/P9/s/00000")
        with pytest.raises(KeyError, match="1 of 2 image ids"):
            src.read_ids(["demo/P1/s/00000", "nope"])
        with pytest.raises(IndexError):
            src.read(5)


def test_face_source_subset(aligned_root):
    root, expected = aligned_root
    src = FaceSource(root)
    wanted = ["demo/P2/s/00001", "demo/P1/s/00001", "demo/P1/s/00000", "unknown/id", "demo/P2/s/00002"]
    sub, n_missing = src.subset(wanted)
    assert n_missing == 3
    assert sub.ids == ["demo/P2/s/00001", "demo/P1/s/00000"] and len(sub) == 2
    assert set(sub.failures) == {"demo/P1/s/00001", "demo/P2/s/00002"}
    np.testing.assert_array_equal(sub.read(1), expected["demo/P1/s/00000"])
    assert sub.index("demo/P1/s/00000") == 1
    with pytest.raises(DatasetError) as exc:
        src.subset(wanted, missing="error")
    assert "3 of 5 requested images" in one_line(exc)
    full, n = src.subset(ALIGNED_IDS, missing="error")
    assert n == 0 and full.ids == ALIGNED_IDS
    empty, n = src.subset([])
    assert (len(empty), n) == (0, 0) and empty.load_all().shape == (0, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="duplicate"):
        src.subset(["demo/P1/s/00000", "demo/P1/s/00000"])


def test_face_source_load_all(aligned_root):
    root, expected = aligned_root
    src = FaceSource(root)
    calls = []
    x = src.load_all(chunk_size=2, threads=2, progress=lambda done, total: calls.append((done, total)))
    assert x.shape == (5, 3, SIZE, SIZE) and x.dtype == torch.uint8 and x.device.type == "cpu"
    assert calls == [(2, 5), (4, 5), (5, 5)]
    for i, image_id in enumerate(src.ids):
        np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), expected[image_id])
    if torch.cuda.is_available():
        assert torch.equal(src.load_all("cuda").cpu(), x)


def test_face_source_errors(aligned_root, tmp_path):
    root, _ = aligned_root
    with pytest.raises(DatasetError, match="not found"):
        FaceSource(tmp_path / "nowhere")
    (root / SHARD_DIR / shard_name(1)).unlink()
    src = FaceSource(root)
    np.testing.assert_array_equal(src.read(0).shape, (SIZE, SIZE, 3))
    with pytest.raises(DatasetError, match="shard-00001.tar"):
        src.read(src.index("demo/P3/s/00000"))


def test_face_source_pickles_without_open_files(aligned_root):
    root, expected = aligned_root
    src = FaceSource(root)
    src.read(0)
    clone = pickle.loads(pickle.dumps(src.torch_dataset()))  # what a spawn DataLoader worker receives
    x, i = clone[3]
    assert i == 3 and torch.equal(x, torch.from_numpy(expected[src.ids[3]]).permute(2, 0, 1))
    assert clone.source.ids == src.ids and clone.source.failures == src.failures


def test_data_loader_workers_read_correctly(aligned_root):
    root, expected = aligned_root
    src = FaceSource(root)
    src.read(0)  # the parent holds an open shard: forked workers must reopen their own
    ds = src.torch_dataset(transform=lambda x: center_crop(x, 160))
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="fork")
    seen = {}
    for x, idx in loader:
        assert x.shape[1:] == (3, 160, 160) and x.dtype == torch.uint8
        for img, i in zip(x, idx.tolist(), strict=True):
            seen[i] = img
    assert sorted(seen) == list(range(len(src)))
    for i, image_id in enumerate(src.ids):
        want = torch.from_numpy(expected[image_id]).permute(2, 0, 1)[:, 11:171, 11:171]
        assert torch.equal(seen[i], want)
    np.testing.assert_array_equal(src.read(1), expected[src.ids[1]])  # the parent's descriptors still work


# --------------------------------------------------------------------------------------------- crops


def test_center_crop():
    x = torch.arange(2 * 3 * SIZE * SIZE).reshape(2, 3, SIZE, SIZE)
    out = center_crop(x, 160)
    assert out.shape == (2, 3, 160, 160)
    assert torch.equal(out, x[:, :, 11:171, 11:171])
    assert torch.equal(center_crop(x[0], 160), x[0, :, 11:171, 11:171])
    assert torch.equal(center_crop(x, SIZE), x)
    with pytest.raises(ValueError, match="does not fit"):
        center_crop(x, 183)
    with pytest.raises(ValueError, match="expected a"):
        center_crop(x[0, 0], 10)


def test_random_crop_per_sample_and_deterministic():
    n, size = 64, 160
    x = torch.arange(n * 2 * SIZE * SIZE, dtype=torch.int64).reshape(n, 2, SIZE, SIZE)
    a = random_crop(x, size, torch.Generator().manual_seed(7))
    b = random_crop(x, size, torch.Generator().manual_seed(7))
    c = random_crop(x, size, torch.Generator().manual_seed(8))
    assert a.shape == (n, 2, size, size) and torch.equal(a, b) and not torch.equal(a, c)
    tops, lefts = [], []
    for k in range(n):  # each output is a true window of its own input (loop vs. vectorised)
        top, left = divmod(int(a[k, 0, 0, 0] - x[k, 0, 0, 0]), SIZE)
        assert 0 <= top <= SIZE - size and 0 <= left <= SIZE - size
        assert torch.equal(a[k], x[k, :, top : top + size, left : left + size])
        tops.append(top)
        lefts.append(left)
    assert len(set(tops)) > 5 and len(set(lefts)) > 5  # independent offsets per image
    one = random_crop(x[0], size, torch.Generator().manual_seed(3))
    assert one.shape == (2, size, size)
    assert torch.equal(one, random_crop(x[0], size, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="does not fit"):
        random_crop(x, 200)
