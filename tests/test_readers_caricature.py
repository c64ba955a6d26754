"""The caricature readers (CaVI, WebCaricature) on tiny fixtures in their real on-disk layouts."""

from __future__ import annotations

import pytest

from pipeline.data.build_manifest import build_manifest
from pipeline.data.licensed import verify_licensed_root
from pipeline.data.manifest import read_manifest, to_frame
from pipeline.data.readers.cavi import read_cavi
from pipeline.data.readers.webcaricature import landmark_path, read_landmarks, read_webcaricature
from pipeline.errors import DatasetError
from tests import fixtures_layouts as fx
from tests.conftest import run_upstream, tiny_params


def _reasons(result) -> dict[str, str]:
    return {s.path: s.reason for s in result.skipped}


# --------------------------------------------------------------------------------------------- CaVI


def test_cavi_rows_subjects_and_modalities(tmp_path):
    root = fx.build_cavi(tmp_path)
    result = read_cavi(root, "cavi", options={})
    assert result.skipped == []  # Thumbs.db ignored
    got = [(r.image_id, r.path, r.frame, r.is_caricature) for r in result.records]
    assert got[:5] == [
        ("cavi/AAMIR_KHAN/Aamir_Khan_c_0", "Caricature/Aamir_Khan/Aamir_Khan_c_0.jpg", 1, True),
        ("cavi/AAMIR_KHAN/Aamir_Khan_c_1", "Caricature/Aamir_Khan/Aamir_Khan_c_1.jpg", 2, True),
        ("cavi/AAMIR_KHAN/Aamir_Khan_r_0", "Real/Aamir_Khan/Aamir_Khan_r_0.jpg", 3, False),
        ("cavi/AAMIR_KHAN/Aamir_Khan_r_1", "Real/Aamir_Khan/Aamir_Khan_r_1.jpg", 4, False),
        ("cavi/AAMIR_KHAN/Aamir_Khan_r_2", "Real/Aamir_Khan/Aamir_Khan_r_2.jpg", 5, False),
    ]
    assert len(result.records) == 7 + 7
    assert sum(r.is_caricature for r in result.records) == 7
    assert all(r.path.startswith("Caricature/") == r.is_caricature for r in result.records)
    first = result.records[0]
    assert (first.sequence, first.n_frames, first.dataset, first.identity) == ("", 1, "cavi", -1)
    assert (first.width, first.height) == fx.CAVI_SIZE
    assert read_cavi(root, "cavi").records == result.records  # deterministic
    df = to_frame(result.records)
    assert df["image_id"].is_unique and df["is_caricature"].sum() == 7


def test_cavi_subjects_are_upper_cased_ids_misspellings_stay_apart(tmp_path):
    df, skipped, summary = build_manifest("cavi", reader="cavi", root=fx.build_cavi(tmp_path), options={})
    assert skipped == []
    assert sorted(df["subject"].unique()) == ["AAMIR_KHAN", "AKHILESH_YADAV", "ARAVIND_KEJRIWAL", "ARVIND_KEJRIWAL"]
    akhilesh = df[df["subject"] == "AKHILESH_YADAV"]
    # one identity spelt two ways: the folder's own spelling stays in the path (CaVINet's pair files use it)
    assert sorted(akhilesh["path"]) == ["Caricature/Akhilesh_yadav/Akhilesh_yadav_c_0.jpg",
                                        "Caricature/Akhilesh_yadav/Akhilesh_yadav_c_1.jpg",
                                        "Real/akhilesh_yadav/akhilesh_yadav_r_0.jpg"]
    assert akhilesh["identity"].nunique() == 1 and list(akhilesh["is_caricature"]) == [True, True, False]
    assert df.groupby("subject")["identity"].first().to_dict() == {
        "AAMIR_KHAN": 0, "AKHILESH_YADAV": 1, "ARAVIND_KEJRIWAL": 2, "ARVIND_KEJRIWAL": 3}
    assert (summary.subjects, summary.sequences, summary.images) == (4, 0, 14)


def test_cavi_layout_problems_are_counted_skips(tmp_path):
    root = fx.build_cavi(tmp_path)
    (root / "README.txt").write_text("root file")
    fx.write_image(root / "Sketch" / "Aamir_Khan" / "Aamir_Khan_s_0.jpg", fx.CAVI_SIZE)  # unknown top folder
    (root / "Caricature" / "list.txt").write_text("stray")
    fx.write_image(root / "Real" / "Aamir_Khan" / "Adam_Sandler" / "Adam_Sandler_r_0.jpg", fx.CAVI_SIZE)  # nested
    (root / "Real" / "Aamir_Khan" / "notes.txt").write_text("x")
    (root / "Real" / "Empty_Person").mkdir()
    (root / "Real" / "Empty_Person" / "Thumbs.db").write_bytes(b"x")  # only a system file: empty
    (root / "Caricature" / "Aamir_Khan" / "Aamir_Khan_c_1.jpg").write_bytes(fx.random_bytes())
    fx.write_image(root / "Caricature" / "Aamir_Khan" / "Aamir_Khan_c_16(1).jpg", fx.CAVI_SIZE)  # a real name
    result = read_cavi(root, "cavi", options={})
    assert _reasons(result) == {
        "README.txt": "stray file: expected the Caricature and Real folders at root level",
        "Sketch": "unknown folder: 'Sketch', expected Caricature or Real",
        "Caricature/list.txt": "stray file: expected identity folders in a modality folder",
        "Real/Aamir_Khan/Adam_Sandler": "nested folder: expected image files in an identity folder",
        "Real/Aamir_Khan/notes.txt": "not an image: expected a .jpg file",
        "Real/Empty_Person": "empty identity folder",
        "Caricature/Aamir_Khan/Aamir_Khan_c_1.jpg": "not an image: unknown or corrupt format",
    }
    assert result.skip_counts()["stray file"] == 2
    ids = {r.image_id: r for r in result.records}
    assert "cavi/AAMIR_KHAN/Aamir_Khan_c_1" not in ids
    assert ids["cavi/AAMIR_KHAN/Aamir_Khan_c_16(1)"].frame == 3  # positions count the unreadable file
    assert len(result.records) == 14


@pytest.mark.parametrize("missing", ["Caricature", "Real"])
def test_cavi_missing_modality_folder_is_a_dataset_error(tmp_path, missing):
    root = fx.build_cavi(tmp_path)
    for p in sorted((root / missing).rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (root / missing).rmdir()
    with pytest.raises(DatasetError, match=rf"CaVI folder '{missing}' missing under .*root must be the CaVI_Dataset"):
        read_cavi(root, "cavi")


def test_cavi_root_above_the_dataset_folder_names_the_right_root(tmp_path):
    fx.build_cavi(tmp_path)
    with pytest.raises(DatasetError, match=r"folder 'Caricature' missing .*set root to .*/CaVI_Dataset \("):
        read_cavi(tmp_path, "cavi")


# --------------------------------------------------------------------------------------------- WebCaricature


def test_webcaricature_rows_and_landmarks(tmp_path):
    root = fx.build_webcaricature(tmp_path)
    result = read_webcaricature(root, "web", options={})
    assert result.skipped == []  # EvaluationProtocols/ and Filenames/ are not read
    got = [(r.image_id, r.subject, r.frame, r.is_caricature) for r in result.records]
    assert got == [
        ("web/Adele Laurie Blue Adkins/C00001", "Adele Laurie Blue Adkins", 1, True),
        ("web/Adele Laurie Blue Adkins/C00002", "Adele Laurie Blue Adkins", 2, True),
        ("web/Adele Laurie Blue Adkins/P00001", "Adele Laurie Blue Adkins", 3, False),
        ("web/Adele Laurie Blue Adkins/P00002", "Adele Laurie Blue Adkins", 4, False),
        ("web/Jeff Bridges/C00001", "Jeff Bridges", 1, True),
        ("web/Jeff Bridges/P00001", "Jeff Bridges", 2, False),
        ("web/Jeff Bridges/P00002", "Jeff Bridges", 3, False),
    ]
    r = result.records[3]
    assert (r.path, r.sequence, r.n_frames, r.width, r.height) == (
        "OriginalImages/Adele Laurie Blue Adkins/P00002.jpg", "", 1, *fx.WEBCARI_SIZE)
    assert landmark_path(r.path) == "FacialPoints/Adele Laurie Blue Adkins/P00002.txt"
    # one LF file, the others CRLF: the same points either way, plain and scientific notation
    lf, crlf = root / landmark_path(r.path), root / landmark_path(result.records[1].path)
    assert b"\r\n" not in lf.read_bytes() and lf.read_bytes().count(b"\n") == 17
    assert crlf.read_bytes().count(b"\r\n") == 17
    assert (read_landmarks(lf) == read_landmarks(crlf)).all()  # both written with seed 2
    points = read_landmarks(lf)
    assert points.shape == (17, 2) and tuple(points[0]) == (7.0, 8.0) and tuple(points[1]) == (14.0, 13.5)
    with pytest.raises(ValueError, match="not a WebCaricature image path"):
        landmark_path("Jeff Bridges/C00001.jpg")
    assert len(to_frame(result.records)) == 7


def test_webcaricature_problems_are_counted_skips(tmp_path):
    root = fx.build_webcaricature(tmp_path)
    images, points = root / "OriginalImages", root / "FacialPoints"
    (points / "Jeff Bridges" / "P00002.txt").unlink()
    (points / "Jeff Bridges" / "C00001.txt").write_text("\n".join(fx.webcari_landmarks().splitlines()[:15]))
    (points / "Adele Laurie Blue Adkins" / "C00002.txt").write_bytes(b"12 abc\r\n" * 17)
    (images / "Adele Laurie Blue Adkins" / "P00001.jpg").write_bytes(fx.truncated_jpeg())
    fx.write_image(images / "Adele Laurie Blue Adkins" / "X00001.jpg", fx.WEBCARI_SIZE)
    fx.write_image(images / "Adele Laurie Blue Adkins" / "C00003.png", fx.WEBCARI_SIZE)
    (images / "Adele Laurie Blue Adkins" / "Thumbs.db").write_bytes(b"x")
    fx.write_image(images / "Jeff Bridges" / "old" / "C00009.jpg", fx.WEBCARI_SIZE)
    (images / "Empty Person").mkdir()
    (images / "names.txt").write_text("x")
    result = read_webcaricature(root, "web", options={})
    adele, jeff = "OriginalImages/Adele Laurie Blue Adkins", "OriginalImages/Jeff Bridges"
    reasons = _reasons(result)
    assert reasons == {
        f"{jeff}/P00002.jpg": "missing landmarks: FacialPoints/Jeff Bridges/P00002.txt not found",
        f"{jeff}/C00001.jpg": "bad landmarks: FacialPoints/Jeff Bridges/C00001.txt: expected 17 landmarks, got 15",
        f"{adele}/C00002.jpg": "bad landmarks: FacialPoints/Adele Laurie Blue Adkins/C00002.txt: line 1: not a number: "
                               "'12 abc'",
        f"{adele}/P00001.jpg": reasons[f"{adele}/P00001.jpg"],
        f"{adele}/X00001.jpg": "unexpected name: expected C<digits>.jpg or P<digits>.jpg",
        f"{adele}/C00003.png": "unexpected name: expected C<digits>.jpg or P<digits>.jpg",
        f"{jeff}/old": "nested folder: expected image files in an identity folder",
        "OriginalImages/Empty Person": "empty identity folder",
        "OriginalImages/names.txt": "stray file: expected identity folders in OriginalImages",
    }
    assert reasons[f"{adele}/P00001.jpg"].startswith("corrupt image:")
    assert result.skip_counts() == {"missing landmarks": 1, "bad landmarks": 2, "corrupt image": 1,
                                    "unexpected name": 2, "nested folder": 1, "empty identity folder": 1,
                                    "stray file": 1}
    assert [r.image_id for r in result.records] == [
        "web/Adele Laurie Blue Adkins/C00001", "web/Adele Laurie Blue Adkins/P00002", "web/Jeff Bridges/P00001"]


@pytest.mark.parametrize("missing", ["OriginalImages", "FacialPoints"])
def test_webcaricature_missing_folder_is_a_dataset_error(tmp_path, missing):
    root = fx.build_webcaricature(tmp_path)
    (root / missing).rename(root / f"{missing}.old")
    with pytest.raises(DatasetError, match=rf"WebCaricature .* folder '{missing}' missing under .*root must be"):
        read_webcaricature(root, "web")
    (root / f"{missing}.old").rename(root / missing)
    with pytest.raises(DatasetError, match=r"folder 'OriginalImages' missing .*set root to .*/WebCaricature \("):
        read_webcaricature(tmp_path, "web")


# --------------------------------------------------------------------------------------------- both


@pytest.mark.parametrize(("reader", "words"), [
    ("cavi", ["(CaVI", "https://lsaiml.github.io/CaVINet/", "the CaVI_Dataset folder itself"]),
    ("webcaricature", ["(WebCaricature)", "https://cs.nju.edu.cn/rl/WebCaricature.htm", "OriginalImages/"]),
])
def test_missing_licensed_root_is_one_line_naming_where_and_which_param(tmp_path, reader, words):
    with pytest.raises(DatasetError) as info:
        verify_licensed_root("cari", reader, tmp_path / "absent", param="datasets.cari.root")
    message = str(info.value)
    assert "\n" not in message and "does not exist" in message and "set datasets.cari.root in params.yaml" in message
    assert all(w in message for w in words), message


@pytest.mark.parametrize("reader", ["cavi", "webcaricature"])
def test_options_are_none(tmp_path, reader):
    from pipeline.data.readers import READERS

    with pytest.raises(ValueError, match=rf"unknown option 'keep' for reader '{reader}' \(valid: none"):
        READERS[reader](tmp_path, "x", options={"keep": 1})


def test_download_and_manifest_stages_on_both_layouts(tmp_path):
    cavi, web = fx.build_cavi(tmp_path / "raw"), fx.build_webcaricature(tmp_path / "raw")
    params = tiny_params()
    for name, reader, root in (("cavi", "cavi", cavi), ("webcari", "webcaricature", web)):
        params["datasets"][name] = {"reader": reader, "root": str(root), "role": "finetune",
                                    "source": {"kind": "licensed"}, "options": {}, "expected": {"subjects": 4}}
    work = tmp_path / "work"
    work.mkdir()
    run_upstream(work, params, [("download", "cavi"), ("manifest", "cavi"), ("manifest", "webcari")])
    df = read_manifest(work / "data/manifests/cavi.parquet")
    assert len(df) == 14 and int(df["is_caricature"].sum()) == 7 and df["subject"].nunique() == 4
    web_df = read_manifest(work / "data/manifests/webcari.parquet")
    assert list(web_df["is_caricature"]) == [True, True, False, False, True, False, False]
    assert sorted(web_df["identity"].unique()) == [0, 1]
    listing = (work / "data/raw/cavi/listing.tsv").read_text()
    assert "Caricature/Akhilesh_yadav/Akhilesh_yadav_c_0.jpg" in listing
