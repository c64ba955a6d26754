"""Tests of the dataset readers on tiny fixtures built in each dataset's real on-disk layout."""

from __future__ import annotations

import os
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from pipeline.data.manifest import to_frame
from pipeline.data.readers import OPTION_MODELS, READERS, get_reader
from pipeline.data.readers.casia_webface import read_casia_webface
from pipeline.data.readers.ckplus import read_ckplus
from pipeline.data.readers.lfw import lfw_image_path, read_lfw, read_lfw_pairs
from pipeline.data.readers.msceleb import extract_tsv_to_shards, open_shard_member, read_msceleb
from pipeline.data.readers.oulu_casia import read_oulu_casia
from pipeline.errors import DatasetError

try:
    from tests import fixtures_layouts as fx
except ImportError:  # pytest's default rootdir-less import mode puts tests/ itself on sys.path
    import fixtures_layouts as fx

REPO = Path(__file__).resolve().parents[1]
LFW_PAIRS = REPO / "data" / "protocols" / "lfw_pairs.txt"


def _by_id(result):
    return {r.image_id: r for r in result.records}


def _reasons(result) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


# --------------------------------------------------------------------------------------------- registry


def test_registry_names_and_models():
    names = {"oulu_casia", "ckplus", "lfw", "casia_webface", "msceleb", "cavi", "webcaricature"}
    assert set(READERS) == names == set(OPTION_MODELS)
    assert get_reader("lfw") is read_lfw
    with pytest.raises(ValueError, match=r"unknown reader 'nope' \(valid: casia_webface, cavi, ckplus, lfw"):
        get_reader("nope")


@pytest.mark.parametrize("name", sorted(READERS))
def test_unknown_option_key_is_a_value_error(tmp_path, name):
    with pytest.raises(ValueError, match=rf"unknown option 'bogus' for reader '{name}'"):
        READERS[name](tmp_path, "x", options={"bogus": 1})


@pytest.mark.parametrize("name", sorted(READERS))
def test_missing_root_is_a_dataset_error(tmp_path, name):
    with pytest.raises(DatasetError, match="not found"):
        READERS[name](tmp_path / "absent", "x", options={})


def test_bad_option_values(tmp_path):
    root = fx.build_oulu(tmp_path)
    with pytest.raises(ValueError, match="'keep_first'.*greater than or equal to 0"):
        read_oulu_casia(root, "oulu", options={"keep_first": -1})
    with pytest.raises(ValueError, match="both be null"):
        read_oulu_casia(root, "oulu", options={"keep_first": None})
    with pytest.raises(ValueError, match="image_ext must look like"):
        read_lfw(root, "lfw", options={"image_ext": "jpg"})
    with pytest.raises(ValueError, match="'min_images_per_subject'"):
        read_casia_webface(root, "c", options={"min_images_per_subject": 0})


# --------------------------------------------------------------------------------------------- Oulu-CASIA


def test_oulu_default_selection_first_and_last_three(tmp_path):
    root = fx.build_oulu(tmp_path)
    result = read_oulu_casia(root, "oulu", options={})
    got = [(r.subject, r.sequence, r.frame, r.n_frames) for r in result.records]
    assert got == [
        ("P001", "Anger", 0, 6), ("P001", "Anger", 3, 6), ("P001", "Anger", 4, 6), ("P001", "Anger", 5, 6),
        ("P001", "Happiness", 0, 4), ("P001", "Happiness", 1, 4), ("P001", "Happiness", 2, 4),
        ("P001", "Happiness", 3, 4),
        ("P002", "Anger", 0, 2), ("P002", "Anger", 1, 2),
        ("P002", "Surprise", 0, 5), ("P002", "Surprise", 2, 5), ("P002", "Surprise", 3, 5),
        ("P002", "Surprise", 4, 5),
    ]  # fmt: skip
    r = _by_id(result)["oulu/P001/Anger/00005"]
    assert r.path == "P001/Anger/005.jpeg"
    assert (r.width, r.height) == fx.OULU_SIZE
    assert (r.expression, r.expression_code, r.dataset, r.identity) == ("Anger", None, "oulu", -1)
    assert result.skipped == []
    assert read_oulu_casia(root, "oulu", options={}).records == result.records  # deterministic
    df = to_frame(result.records)  # fits the manifest schema, unique ids
    assert len(df) == 14 and df["expression_code"].isna().all()


def test_oulu_all_frames_and_six_selection(tmp_path):
    root = fx.build_oulu(tmp_path)
    every = read_oulu_casia(root, "oulu", options={"keep_first": None, "keep_last": None})
    assert len(every.records) == 6 + 4 + 2 + 5
    six = read_oulu_casia(root, "oulu", options={"keep_first": 0, "keep_last": 3})
    assert [r.frame for r in six.records if r.subject == "P001" and r.sequence == "Anger"] == [3, 4, 5]
    assert len(six.records) == 3 + 3 + 2 + 3


def test_oulu_layout_problems_are_counted_skips(tmp_path):
    root = fx.build_oulu(tmp_path)
    (root / "P003").mkdir()  # empty subject
    for i in range(3):
        fx.write_image(root / "P004" / "Angry" / f"{i:03d}.jpeg", fx.OULU_SIZE)
    fx.write_image(root / "P004" / "Fear" / "000.jpeg", fx.OULU_SIZE)
    (root / "P001" / "notes.txt").write_text("stray")
    (root / "README.txt").write_text("root file")
    (root / "Pxyz").mkdir()
    (root / "P002" / ".DS_Store").write_bytes(b"x")
    result = read_oulu_casia(root, "oulu", options={})
    reasons = _reasons(result)
    assert reasons["P003"] == "empty subject folder"
    assert reasons["P004/Angry"] == "unknown expression: 'Angry'"
    assert reasons["P001/notes.txt"].startswith("stray file:")
    assert reasons["README.txt"].startswith("not a subject folder:")
    assert reasons["Pxyz"].startswith("not a subject folder: name does not match")
    assert len(result.skipped) == 5  # .DS_Store ignored, the Angry folder is one skip
    assert result.skip_counts()["unknown expression"] == 1
    assert len(result.records) == 14 + 1  # P004/Fear kept
    custom = read_oulu_casia(root, "oulu", options={"subject_pattern": r"^P\w+$", "expressions": ["Angry"]})
    assert {r.subject for r in custom.records} == {"P004"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (fx.random_bytes(), "not an image: unknown or corrupt format"),
        (b"", "empty file: 0 bytes"),
        (fx.truncated_jpeg(), "corrupt image:"),
    ],
    ids=["random-bytes", "zero-bytes", "truncated-jpeg"],
)
def test_oulu_unreadable_frames_are_skipped(tmp_path, payload, reason):
    root = fx.build_oulu(tmp_path)
    (root / "P001" / "Anger" / "005.jpeg").write_bytes(payload)
    result = read_oulu_casia(root, "oulu", options={}, check="decode")
    assert _reasons(result)["P001/Anger/005.jpeg"].startswith(reason)
    assert len(result.records) == 13
    assert "oulu/P001/Anger/00005" not in _by_id(result)
    assert _by_id(result)["oulu/P001/Anger/00004"].n_frames == 6  # the sequence length counts the bad file


def test_header_check_misses_truncated_jpeg(tmp_path):
    """check="header" reads the JPEG header only: a truncated file passes with its declared size."""
    root = fx.build_oulu(tmp_path)
    (root / "P001" / "Anger" / "005.jpeg").write_bytes(fx.truncated_jpeg())
    (root / "P001" / "Anger" / "004.jpeg").write_bytes(b"")
    result = read_oulu_casia(root, "oulu", options={}, check="header")
    kept = _by_id(result)["oulu/P001/Anger/00005"]
    assert (kept.width, kept.height) == (200, 150)
    assert _reasons(result) == {"P001/Anger/004.jpeg": "empty file: 0 bytes"}  # still caught by header


# --------------------------------------------------------------------------------------------- CK+


def test_ckplus_labelled_and_unlabelled_sequences(tmp_path):
    root = fx.build_ckplus(tmp_path)
    result = read_ckplus(root, "ckplus", options={})
    got = [(r.subject, r.sequence, r.frame, r.n_frames, r.expression, r.expression_code) for r in result.records]
    assert got == [
        ("S005", "001", 0, 11, "disgust", 3), ("S005", "001", 8, 11, "disgust", 3),
        ("S005", "001", 9, 11, "disgust", 3), ("S005", "001", 10, 11, "disgust", 3),
        ("S010", "002", 0, 5, None, None), ("S010", "002", 2, 5, None, None),
        ("S010", "002", 3, 5, None, None), ("S010", "002", 4, 5, None, None),
        ("S011", "001", 0, 4, "surprise", 7), ("S011", "001", 1, 4, "surprise", 7),
        ("S011", "001", 2, 4, "surprise", 7), ("S011", "001", 3, 4, "surprise", 7),
    ]  # fmt: skip
    last = _by_id(result)["ckplus/S005/001/00010"]
    assert last.path == "cohn-kanade-images/S005/001/S005_001_00000011.png"
    assert (last.width, last.height) == fx.CKPLUS_SIZE
    assert result.skipped == []  # .DS_Store files ignored
    df = to_frame(result.records)
    assert df["expression_code"].isna().sum() == 4


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("   abc\n", "bad emotion label: Emotion/S011/001/S011_001_00000004_emotion.txt line 1: 'abc'"),
        ("\n   9.0000000e+00\n", "emotion code out of range: Emotion/S011/001/S011_001_00000004_emotion.txt line 2"),
        ("   2.5\n", "bad emotion label: Emotion/S011/001/S011_001_00000004_emotion.txt line 1: '2.5'"),
    ],
    ids=["not-a-number", "out-of-range", "not-integral"],
)
def test_ckplus_bad_label_skips_the_label_only(tmp_path, content, reason):
    sessions = dict(fx.CKPLUS_DEFAULT)
    sessions["S011", "001"] = (4, content)
    root = fx.build_ckplus(tmp_path, sessions)
    result = read_ckplus(root, "ckplus", options={})
    assert len(result.skipped) == 1
    skip = result.skipped[0]
    assert skip.path == "Emotion/S011/001/S011_001_00000004_emotion.txt"
    assert skip.reason.startswith(reason)
    s011 = [r for r in result.records if r.subject == "S011"]
    assert len(s011) == 4 and all(r.expression is None and r.expression_code is None for r in s011)


def test_ckplus_several_label_files_and_orphan_label(tmp_path):
    root = fx.build_ckplus(tmp_path)
    (root / "Emotion" / "S005" / "001" / "S005_001_00000010_emotion.txt").write_text("   1.0e+00\n")
    orphan = root / "Emotion" / "S999" / "004"
    orphan.mkdir(parents=True)
    (orphan / "S999_004_00000009_emotion.txt").write_text("   5.0e+00\n")
    result = read_ckplus(root, "ckplus", options={})
    reasons = _reasons(result)
    assert reasons["Emotion/S005/001"].startswith("several emotion files: S005_001_00000010_emotion.txt, ")
    assert reasons["Emotion/S999/004"].startswith("label without images")
    assert all(r.expression_code is None for r in result.records if r.subject == "S005")


def test_ckplus_missing_emotion_folder_names_it(tmp_path):
    root = fx.build_ckplus(tmp_path, with_emotion=False)
    with pytest.raises(DatasetError, match=r"CK\+ label folder 'Emotion' missing .*Emotion_labels\.zip"):
        read_ckplus(root, "ckplus", options={})


def test_ckplus_options(tmp_path):
    root = fx.build_ckplus(tmp_path)
    (root / "Emotion").rename(root / "labels")
    names = ["n", "a", "c", "d", "f", "h", "s", "u"]
    result = read_ckplus(
        root, "ck", options={"emotion_dir": "labels", "emotions": names, "keep_first": None, "keep_last": None}
    )
    assert len(result.records) == 11 + 5 + 4
    assert {r.expression for r in result.records} == {"d", "u", None}
    with pytest.raises(ValueError, match="'emotions'"):
        read_ckplus(root, "ck", options={"emotions": []})


# --------------------------------------------------------------------------------------------- LFW


def test_lfw_reader(tmp_path):
    root = fx.build_lfw(tmp_path)
    fx.write_image(root / "George_W_Bush" / "bush.jpg", fx.LFW_SIZE)
    fx.write_image(root / "George_W_Bush" / "George_W_Bush_1.jpg", fx.LFW_SIZE)
    (root / "Empty_Person").mkdir()
    (root / "lfw-names.txt").write_text("x")
    result = read_lfw(root, "lfw", options={})
    got = [(r.image_id, r.frame, r.n_frames, r.sequence) for r in result.records]
    assert got == [
        ("lfw/Aaron_Eckhart/Aaron_Eckhart_0001", 1, 1, ""),
        ("lfw/Aaron_Peirsol/Aaron_Peirsol_0001", 1, 1, ""),
        ("lfw/Aaron_Peirsol/Aaron_Peirsol_0002", 2, 1, ""),
        ("lfw/Aaron_Peirsol/Aaron_Peirsol_0003", 3, 1, ""),
        ("lfw/George_W_Bush/George_W_Bush_0001", 1, 1, ""),
        ("lfw/George_W_Bush/George_W_Bush_0002", 2, 1, ""),
    ]
    r = result.records[2]
    assert (r.subject, r.path, r.width, r.height) == ("Aaron_Peirsol", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg", 25, 25)
    reasons = _reasons(result)
    skipped = {"George_W_Bush/bush.jpg", "George_W_Bush/George_W_Bush_1.jpg", "Empty_Person", "lfw-names.txt"}
    assert set(reasons) == skipped
    assert reasons["Empty_Person"] == "empty subject folder"
    assert reasons["George_W_Bush/bush.jpg"] == "unexpected name: expected George_W_Bush_<dddd>.jpg"
    assert lfw_image_path(root, "Aaron_Peirsol", 2, ".jpg") == root / r.path


def test_lfw_pairs_real_file():
    pairs = read_lfw_pairs(LFW_PAIRS)
    assert (pairs.n_folds, pairs.n_per_class, len(pairs)) == (10, 300, 6000)
    assert pairs.pairs[0] == ("Abel_Pacheco", 1, "Abel_Pacheco", 4, True, 0)
    assert pairs.pairs[-1] == ("Slobodan_Milosevic", 2, "Sok_An", 1, False, 9)
    for k in range(10):
        fold = pairs.fold(k)
        assert [p.is_same for p in fold] == [True] * 300 + [False] * 300
        assert {p.fold for p in fold} == {k}
    assert all(p.name1 != p.name2 for p in pairs if not p.is_same)
    assert sum(p.is_same for p in pairs) == 3000


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("2 1\nA 1 2\nA 1 B 2\nC 1 2\nC 1 3\n", r"line 5: expected 'name1 i name2 j'"),
        ("1 2\nA 1 2\nA 1 x\nA 1 B 2\nC 1 D 2\n", r"line 3: image numbers must be positive"),
        ("1 1\nA 1 2\n", r"line 3: file ends after 1 pairs, header announces 2"),
        ("1 1\nA 1 2\nA 1 B 2\nA 1 B 3\n", r"line 4: extra line"),
        ("10\nA 1 2\n", r"line 1: expected header"),
        ("1 1\nA 1 2 3 4\nA 1 B 2\n", r"line 2: expected 'name i j'"),
    ],
    ids=["diff-line-in-same-block", "bad-number", "too-short", "extra", "bad-header", "wrong-field-count"],
)
def test_lfw_pairs_malformed(tmp_path, text, match):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_lfw_pairs(path)


def test_lfw_pairs_small_valid(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("2\t1\nA\t1\t2\n\nA 1 B 2\nC 1 3\nC 2 D 1\n")
    pairs = read_lfw_pairs(path)
    assert pairs.pairs == [
        ("A", 1, "A", 2, True, 0), ("A", 1, "B", 2, False, 0), ("C", 1, "C", 3, True, 1), ("C", 2, "D", 1, False, 1)
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------- CASIA-WebFace


def test_casia_reader_and_frames(tmp_path):
    root = fx.build_casia(tmp_path)
    result = read_casia_webface(root, "casia", options={})
    got = [(r.image_id, r.frame) for r in result.records]
    assert got == [
        ("casia/0000045/001", 1), ("casia/0000045/002", 2), ("casia/0000045/003", 3),
        ("casia/0000099/001", 1),
        ("casia/0000100/001", 1), ("casia/0000100/002", 2), ("casia/0000100/img_a", 3),
    ]  # fmt: skip
    r = result.records[0]
    assert (r.subject, r.sequence, r.n_frames, r.path) == ("0000045", "", 1, "0000045/001.jpg")
    assert (r.width, r.height) == fx.CASIA_SIZE
    assert result.skipped == []


def test_casia_min_images_per_subject(tmp_path):
    root = fx.build_casia(tmp_path)
    (root / "0000100" / "002.jpg").write_bytes(fx.random_bytes())
    result = read_casia_webface(root, "casia", options={"min_images_per_subject": 3})
    assert {r.subject for r in result.records} == {"0000045"}
    reasons = _reasons(result)
    assert reasons["0000099"] == "too few images: 1 files < min_images_per_subject 3"  # not even probed
    assert reasons["0000100"] == "too few images: 2 readable < min_images_per_subject 3"
    assert reasons["0000100/002.jpg"].startswith("not an image")
    assert result.skip_counts() == {"too few images": 2, "not an image": 1}


def test_no_usable_image_is_a_dataset_error(tmp_path):
    root = fx.build_casia(tmp_path, {"0000001": ("001.jpg",)})
    with pytest.raises(DatasetError, match="no usable image"):
        read_casia_webface(root, "casia", options={"min_images_per_subject": 2})


# --------------------------------------------------------------------------------------------- MS-Celeb-1M


@pytest.fixture
def msceleb(tmp_path):
    tsv = tmp_path / "MsCelebV1-Faces-Cropped.tsv"
    members = fx.build_msceleb_tsv(tsv)
    return tsv, tmp_path / "shards", members


def test_msceleb_extract_shards_and_skips(msceleb):
    tsv, out, members = msceleb
    summary = extract_tsv_to_shards(tsv, out, shard_size=10)
    names = ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    assert (summary.shards, summary.written, summary.reused) == (names, names, [])
    assert (summary.n_lines, summary.n_images) == (25, 23)
    assert [(s.path, s.reason.split(":")[0]) for s in summary.skipped] == [
        (f"{tsv.name}:4", "wrong field count"),
        (f"{tsv.name}:15", "bad base64"),
    ]
    assert summary.skipped[0].reason == "wrong field count: line 4 has 5 fields, expected 7"
    in_tars = []
    for name in names:
        with tarfile.open(out / name) as tar:
            in_tars.append([m.name for m in tar.getmembers()])
    assert [len(m) for m in in_tars] == [10, 10, 3]
    assert [m for names_ in in_tars for m in names_] == list(members)  # TSV order kept
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_msceleb_reader_round_trip(msceleb):
    tsv, out, members = msceleb
    extract_tsv_to_shards(tsv, out, shard_size=10)
    result = read_msceleb(out, "msceleb", options={})
    assert result.skipped == []
    assert len(result.records) == 23
    assert {r.subject for r in result.records} == {"m.0abc", "m.01x_y", "m.0zz9"}
    first = result.records[0]
    assert first.path == "shard-00000.tar::m.0abc/001-FaceId-0.jpg"
    assert (first.image_id, first.frame, first.sequence, first.n_frames) == ("msceleb/m.0abc/001-FaceId-0", 1, "", 1)
    for i, r in enumerate(result.records):
        assert (r.width, r.height) == fx.MSCELEB_SIZES[i % 3]
        member = r.path.split("::", 1)[1]
        assert open_shard_member(out, r.path) == members[member]  # byte-identical
    assert len(to_frame(result.records)) == 23
    with pytest.raises(KeyError):
        open_shard_member(out, "shard-00000.tar::m.0abc/999-FaceId-0.jpg")
    with pytest.raises(ValueError, match="not a shard member path"):
        open_shard_member(out, "shard-00000.tar")


def test_msceleb_rerun_does_not_rewrite_complete_shards(msceleb):
    tsv, out, _ = msceleb
    extract_tsv_to_shards(tsv, out, shard_size=10)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    again = extract_tsv_to_shards(tsv, out, shard_size=10)
    assert again.written == [] and len(again.reused) == 3
    assert (again.n_lines, again.n_images, len(again.skipped)) == (25, 23, 2)  # skips remembered in the meta files
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before

    # a crash while writing shard 2: its meta file never got written, a temporary file is left over
    (out / "shard-00002.json").unlink()
    (out / ".shard-00002.tar.tmp").write_bytes(b"partial")
    resumed = extract_tsv_to_shards(tsv, out, shard_size=10)
    assert resumed.written == ["shard-00002.tar"] and resumed.reused == ["shard-00000.tar", "shard-00001.tar"]
    assert resumed.n_images == 23 and len(resumed.skipped) == 2
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}
    for name in ("shard-00000.tar", "shard-00001.tar", "shard-00000.index.tsv", "shard-00001.json"):
        assert after[name] == before[name]
    assert not (out / ".shard-00002.tar.tmp").exists()
    assert len(read_msceleb(out, "msceleb", options={}).records) == 23

    with pytest.raises(DatasetError, match="use an empty folder"):
        extract_tsv_to_shards(tsv, out, shard_size=7)


def test_msceleb_more_bad_lines(tmp_path):
    png = fx.image_bytes((8, 8), "PNG")
    jpeg = fx.image_bytes((8, 8))
    lines = [
        fx.msceleb_row("m.0a", 1, "FaceId-0", png),  # not a JPEG
        fx.msceleb_row("m.0a", 2, "FaceId-0", jpeg).replace("\t2\t", "\tx2\t", 1),  # bad rank
        fx.msceleb_row("../etc", 3, "FaceId-0", jpeg),  # unsafe MID
        fx.msceleb_row("m.0a", 4, "FaceId-0", jpeg),
        fx.msceleb_row("m.0a", 4, "FaceId-0", jpeg),  # duplicate member
        fx.msceleb_row("m.0a", 5, "FaceId-0", jpeg[: len(jpeg) // 2]),  # truncated: caught by the reader only
    ]
    tsv = tmp_path / "t.tsv"
    tsv.write_text("\r\n".join(lines) + "\r\n\r\n")
    summary = extract_tsv_to_shards(tsv, tmp_path / "out")
    assert [s.reason.split(":")[0] for s in summary.skipped] == [
        "not a JPEG",
        "bad rank",
        "bad MID",
        "duplicate member",
    ]
    assert summary.n_images == 2
    result = read_msceleb(tmp_path / "out", "ms", options={})
    assert [r.image_id for r in result.records] == ["ms/m.0a/004-FaceId-0"]
    assert _reasons(result)["shard-00000.tar::m.0a/005-FaceId-0.jpg"].startswith("corrupt image")


def test_msceleb_extraction_streams(tmp_path):
    """Peak Python memory stays far below the TSV size: the file is never loaded whole."""
    jpeg = fx.image_bytes((160, 160), noise=True, seed=1)
    row = fx.msceleb_row("m.0big", 0, "FaceId-0", jpeg)
    tsv = tmp_path / "big.tsv"
    with tsv.open("w") as f:
        for i in range(300):
            f.write(row.replace("\t0\t", f"\t{i}\t", 1) + "\n")
    size = tsv.stat().st_size
    assert size > 8_000_000
    seen: list[int] = []
    tracemalloc.start()
    try:
        summary = extract_tsv_to_shards(tsv, tmp_path / "out", shard_size=100, progress=seen.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.n_images == 300 and len(summary.shards) == 3
    assert peak < size / 8, f"peak {peak} bytes for a {size}-byte TSV"
    assert seen[-1] == size


def test_msceleb_reader_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no shard-"):
        read_msceleb(tmp_path / "empty", "ms", options={})
    with pytest.raises(DatasetError, match="TSV not found"):
        extract_tsv_to_shards(tmp_path / "absent.tsv", tmp_path / "out")
    with pytest.raises(ValueError, match="shard_size"):
        extract_tsv_to_shards(tmp_path / "absent.tsv", tmp_path / "out", shard_size=0)


def test_msceleb_missing_index_skips_the_shard(msceleb):
    tsv, out, _ = msceleb
    extract_tsv_to_shards(tsv, out, shard_size=10)
    os.remove(out / "shard-00001.index.tsv")
    result = read_msceleb(out, "msceleb", options={})
    assert len(result.records) == 13
    assert _reasons(result) == {"shard-00001.tar": "missing shard index: shard-00001.index.tsv"}
