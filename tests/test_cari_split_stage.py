"""The cari_split command through Typer's CliRunner, on tiny CaVI and WebCaricature trees in their real layouts
(the manifests built by the real readers; the protocol files written like the real ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.data.build_manifest import build_manifest
from pipeline.data.manifest import write_manifest
from stages.app import app
from stages.cari_split import IDENTIFICATION_DTYPES, PAIR_DTYPES, protocol_path
from tests import fixtures_layouts as fx
from tests.conftest import tiny_params, write_params

runner = CliRunner()

# --- CaVI: 5 test identities; Will Smith's caricature folder is lower-case on disk, upper-cased in the pair file ----

CAVI_FOLDERS = {
    "Caricature": {"Aamir_Khan": 3, "Akhilesh_yadav": 2, "will_smith": 3, "Aravind_Kejriwal": 2, "Zed_Only": 1,
                   "Filler_Person": 2},
    "Real": {"Aamir_Khan": 3, "akhilesh_yadav": 2, "will_smith": 2, "Aravind_Kejriwal": 3, "Zed_Only": 1,
             "Filler_Person": 2},
}


def _c(identity: str, k: int, *, folder: str | None = None, column: str | None = None) -> fx.CaviRef:
    """Caricature ``k`` of the disk folder ``identity``; the line may spell the folder and id column otherwise."""
    return (column or folder or identity, folder or identity, f"{identity}_c_{k}.jpg")


def _r(identity: str, k: int, *, folder: str | None = None, column: str | None = None) -> fx.CaviRef:
    return (column or folder or identity, folder or identity, f"{identity}_r_{k}.jpg")


#: the lines the protocol keeps (0-based lines 0, 20, …, 180 of the file)
CAVI_KEPT = [
    fx.cavi_pair_line(_c("Aamir_Khan", 0), _r("Aamir_Khan", 0), 1),
    fx.cavi_pair_line(_c("Akhilesh_yadav", 0), _r("akhilesh_yadav", 0), 1),  # one identity, two spellings
    fx.cavi_pair_line(_c("will_smith", 0, folder="Will_Smith"), _r("will_smith", 0), 1),  # folder differs in case
    fx.cavi_pair_line(_c("Aamir_Khan", 1), _r("Aravind_Kejriwal", 0), 0),
    fx.cavi_pair_line(_c("Aravind_Kejriwal", 0), _r("Aamir_Khan", 0), 0),
    fx.cavi_pair_line(_c("Zed_Only", 0), _r("Zed_Only", 0), 1),  # every image of Zed is a test image: unlabelled
    fx.cavi_pair_line(_c("Akhilesh_yadav", 1, column="AKHILESH_YADAV"), _r("will_smith", 1, folder="Will_Smith"), 0),
    fx.cavi_pair_line(_c("Aamir_Khan", 0), _r("Aamir_Khan", 1), 1),
    fx.cavi_pair_line(_c("will_smith", 1), _r("Aamir_Khan", 1), 0),
    fx.cavi_pair_line(_c("Aravind_Kejriwal", 1), _r("Aravind_Kejriwal", 1), 1),
]
#: the lines the protocol drops: they name training images, a person with no kept pair, an image nowhere on disk
CAVI_FILLER = [
    fx.cavi_pair_line(_c("Aamir_Khan", 2), _r("Aamir_Khan", 2), 1),
    fx.cavi_pair_line(_c("Filler_Person", 0), _r("Filler_Person", 1), 1),
    fx.cavi_pair_line(_c("Ghost", 0), _r("Aamir_Khan", 2), 0),
]
CAVI_PAIRS = "data/raw/demo_cavi/train-test-files/testing_1.txt"  # params: ../train-test-files/testing_1.txt
CAVI_ROOT = "data/raw/demo_cavi/CaVI_Dataset"


def _invoke(*args):
    return runner.invoke(app, ["--params", "params.yaml", *args])


def _error_line(res) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _no_outputs(workdir: Path, name: str) -> None:
    assert not (workdir / "data/cari").exists() and not (workdir / "metrics/cari").exists(), name
    assert not list(workdir.rglob(".*.tmp-*"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    write_params(tmp_path / "params.yaml", tiny_params())
    return tmp_path


def _manifest(workdir: Path, name: str, reader: str, root: Path) -> pd.DataFrame:
    df, skipped, _ = build_manifest(name, reader=reader, root=root, options={})
    assert skipped == []
    write_manifest(df, workdir / f"data/manifests/{name}.parquet")
    return df


def _cavi(workdir: Path, kept=CAVI_KEPT, filler=CAVI_FILLER) -> pd.DataFrame:
    root = fx.build_cavi(workdir / "data/raw/demo_cavi", CAVI_FOLDERS)
    fx.write_cavi_pair_file(workdir / CAVI_PAIRS, kept, filler)
    return _manifest(workdir, "demo_cavi", "cavi", root)


def _read(workdir: Path, name: str) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict]:
    folder = workdir / "data/cari" / name / "split"
    assert sorted(p.name for p in folder.iterdir()) == ["identification.parquet", "pairs.parquet", "split.json"]
    return (json.loads((folder / "split.json").read_text()), pd.read_parquet(folder / "pairs.parquet"),
            pd.read_parquet(folder / "identification.parquet"),
            json.loads((workdir / "metrics/cari" / name / "split.json").read_text()))


def _check_formats(split: dict, pairs: pd.DataFrame, ident: pd.DataFrame) -> None:
    assert list(pairs.columns) == list(PAIR_DTYPES) and list(ident.columns) == list(IDENTIFICATION_DTYPES)
    assert {c: str(t) for c, t in pairs.dtypes.items()} == PAIR_DTYPES
    assert {c: str(t) for c, t in ident.dtypes.items()} == IDENTIFICATION_DTYPES
    assert set(split) == {"dataset", "protocol", "classes", "train_image_ids", "train_labels", "train_ids",
                          "test_image_ids", "test_labels", "counts"}
    assert len(split["train_image_ids"]) == len(split["train_labels"])
    assert len(split["test_image_ids"]) == len(split["test_labels"]) == len(set(split["test_image_ids"]))
    assert len(set(split["train_image_ids"])) == len(split["train_image_ids"])
    assert all(0 <= y < len(split["classes"]) for y in split["train_labels"])
    assert all(-1 <= y < len(split["classes"]) for y in split["test_labels"])
    used = set(pairs["input_id"]) | set(pairs["reference_id"]) | set(ident["image_id"])
    assert used <= set(split["test_image_ids"])


def test_cavi_keeps_every_20th_of_200_lines_matches_ids_case_insensitively_and_logs_a_run(workdir, mlflow_uri):
    from mlflow.tracking import MlflowClient

    manifest = _cavi(workdir)
    res = _invoke("cari_split", "demo_cavi")
    assert res.exit_code == 0, res.output
    split, pairs, ident, metrics = _read(workdir, "demo_cavi")
    _check_formats(split, pairs, ident)
    subject = dict(zip(manifest["image_id"], manifest["subject"], strict=True))
    is_cari = dict(zip(manifest["image_id"], manifest["is_caricature"], strict=True))

    # 200 lines -> 10 kept pairs: lines 1, 21, ..., 181; caricature first, photo second
    assert len(pairs) == 10 and list(pairs["line"]) == list(range(1, 201, 20))
    assert list(pairs["is_same"]) == [True, True, True, False, False, True, False, True, False, True]
    assert set(pairs["block"]) == {0}
    assert all(is_cari[i] for i in pairs["input_id"]) and not any(is_cari[i] for i in pairs["reference_id"])
    assert pairs["input_id"][2] == "demo_cavi/WILL_SMITH/will_smith_c_0"  # Caricature/Will_Smith\... on the line
    assert pairs["reference_id"][6] == "demo_cavi/WILL_SMITH/will_smith_r_1"
    assert list(pairs[["input_id", "reference_id"]].iloc[1]) == ["demo_cavi/AKHILESH_YADAV/Akhilesh_yadav_c_0",
                                                                 "demo_cavi/AKHILESH_YADAV/akhilesh_yadav_r_0"]

    # closed set: the upper-cased ids; Zed has no image left to train on; the filler person is not a test identity
    assert split["dataset"] == "demo_cavi" and split["protocol"] == "cavi"
    assert split["classes"] == ["AAMIR_KHAN", "AKHILESH_YADAV", "ARAVIND_KEJRIWAL", "WILL_SMITH"]
    assert split["train_ids"] == 4
    train = dict(zip(split["train_image_ids"], split["train_labels"], strict=True))
    assert train == {"demo_cavi/AAMIR_KHAN/Aamir_Khan_c_2": 0, "demo_cavi/AAMIR_KHAN/Aamir_Khan_r_2": 0,
                     "demo_cavi/AKHILESH_YADAV/akhilesh_yadav_r_1": 1,
                     "demo_cavi/ARAVIND_KEJRIWAL/Aravind_Kejriwal_r_2": 2,
                     "demo_cavi/WILL_SMITH/will_smith_c_2": 3}
    test = dict(zip(split["test_image_ids"], split["test_labels"], strict=True))
    assert not set(train) & set(test)  # the image-level leakage check
    assert set(test) == set(pairs["input_id"]) | set(pairs["reference_id"])
    assert len(test) == 17
    assert {i for i, y in test.items() if y == -1} == {"demo_cavi/ZED_ONLY/Zed_Only_c_0",
                                                        "demo_cavi/ZED_ONLY/Zed_Only_r_0"}
    assert all(split["classes"][y] == subject[i] for i, y in test.items() if y >= 0)
    # photos first, then caricatures, then the unlabelled ones
    flags = [is_cari[i] for i in split["test_image_ids"][:15]]
    assert flags == [False] * 7 + [True] * 8
    assert ident.empty

    counts = split["counts"]
    assert counts == {k: v for k, v in metrics.items() if k not in ("dataset", "protocol", "skipped_entries")}
    assert counts == {"file_pairs": 200, "kept_pairs": 10, "pairs": 10, "same_pairs": 6, "skipped_pairs": 0,
                      "skipped": 0, "test_ids": 5, "classes": 4, "train_images": 5, "test_photos": 7,
                      "test_caricatures": 8, "unlabelled_test_images": 2, "case_matched_images": 2,
                      "test_images": 17}
    assert metrics["skipped_entries"] == [] and metrics["dataset"] == "demo_cavi"
    assert not list(workdir.rglob(".*.tmp-*"))

    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "cari_split@demo_cavi" and run.info.status == "FINISHED"
    assert run.data.params["datasets.demo_cavi.protocol.downsample"] == "20"
    assert run.data.metrics["pairs"] == 10 and run.data.metrics["case_matched_images"] == 2
    assert f"input.{CAVI_PAIRS}.md5" in run.data.tags and "input.data/manifests/demo_cavi.parquet.md5" in run.data.tags
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["split.json"]


def test_cavi_a_kept_pair_missing_from_the_manifest_is_a_counted_skip_up_to_the_limit(workdir, no_mlflow):
    kept = list(CAVI_KEPT)
    kept[4] = fx.cavi_pair_line(_c("Aravind_Kejriwal", 0), _r("Aamir_Khan", 7), 0)  # no such photo
    _cavi(workdir, kept)
    line = _error_line(_invoke("cari_split", "demo_cavi"))  # 1 of 10 > 5 %
    assert "1 of 10 kept pairs" in line and "manifest.max_skip_fraction=0.05" in line
    assert "line 81: image not in the dataset: Real/Aamir_Khan/Aamir_Khan_r_7.jpg" in line
    _no_outputs(workdir, "too many skips")

    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": 0.1}))
    res = _invoke("cari_split", "demo_cavi")
    assert res.exit_code == 0, res.output
    split, pairs, _, metrics = _read(workdir, "demo_cavi")
    assert len(pairs) == 9 and 81 not in set(pairs["line"])
    assert (metrics["kept_pairs"], metrics["pairs"], metrics["skipped_pairs"], metrics["skipped"]) == (10, 9, 1, 1)
    assert metrics["skipped_entries"] == ["line 81: image not in the dataset: Real/Aamir_Khan/Aamir_Khan_r_7.jpg"]
    # Aravind's caricature 0 is in no kept pair now: it trains
    assert "demo_cavi/ARAVIND_KEJRIWAL/Aravind_Kejriwal_c_0" in split["train_image_ids"]


@pytest.mark.parametrize(("bad", "message"), [
    ("Aamir_Khan Caricature/Aamir_Khan\\Aamir_Khan_c_0.jpg Aamir_Khan 1", "line 1: expected 5 fields"),
    (fx.cavi_pair_line(_c("Aamir_Khan", 0), _r("Aamir_Khan", 0), 2), "line 1: the label must be 0 or 1, got '2'"),
    ("Aamir_Khan Sketch/Aamir_Khan\\Aamir_Khan_c_0.jpg Aamir_Khan Real/Aamir_Khan\\Aamir_Khan_r_0.jpg 1",
     "line 1: expected a path Caricature/<id>\\<file>"),
])
def test_cavi_a_malformed_line_is_one_error_line_naming_file_and_line(workdir, no_mlflow, bad, message):
    _cavi(workdir, [bad, *CAVI_KEPT[1:]])
    line = _error_line(_invoke("cari_split", "demo_cavi"))
    assert line.startswith(f"error: {CAVI_PAIRS}: ") and message in line, line
    _no_outputs(workdir, message)


def test_a_missing_protocol_file_names_the_path_and_the_param(workdir, no_mlflow):
    _cavi(workdir)
    (workdir / CAVI_PAIRS).unlink()
    line = _error_line(_invoke("cari_split", "demo_cavi"))
    assert line.startswith(f"error: protocol file not found: {CAVI_PAIRS} (")
    assert f"datasets.demo_cavi.protocol.pairs = '../train-test-files/testing_1.txt', relative to " \
           f"datasets.demo_cavi.root = {CAVI_ROOT}" in line
    # a repo-relative file under data/protocols/ (CaVINet's file committed by the user)
    write_params(workdir / "params.yaml",
                 tiny_params(**{"datasets.demo_cavi.protocol.pairs": "data/protocols/cavi/testing_1.txt"}))
    line = _error_line(_invoke("cari_split", "demo_cavi"))
    assert "not found: data/protocols/cavi/testing_1.txt" in line and "relative to the repository" in line
    _no_outputs(workdir, "missing file")
    fx.write_cavi_pair_file(workdir / "data/protocols/cavi/testing_1.txt", CAVI_KEPT, CAVI_FILLER)
    assert _invoke("cari_split", "demo_cavi").exit_code == 0


def test_protocol_paths_are_relative_to_root_or_the_repository_or_absolute(tmp_path):
    root = "data/raw/demo_cavi/CaVI_Dataset"
    assert protocol_path("../train-test-files/t.txt", root) == Path("data/raw/demo_cavi/train-test-files/t.txt")
    assert protocol_path("EvaluationProtocols/x.txt", root) == Path(root) / "EvaluationProtocols/x.txt"
    assert protocol_path("data/protocols/t.txt", root) == Path("data/protocols/t.txt")
    assert protocol_path("./data/protocols/t.txt", root) == Path("data/protocols/t.txt")
    assert protocol_path(str(tmp_path / "t.txt"), root) == tmp_path / "t.txt"


def test_a_dataset_without_protocol_or_manifest_is_one_error_line(workdir, no_mlflow):
    line = _error_line(_invoke("cari_split", "demo_oulu"))
    assert line == "error: dataset 'demo_oulu' has no caricature protocol: add datasets.demo_oulu.protocol to " \
                   "params.yaml"
    fx.write_cavi_pair_file(workdir / CAVI_PAIRS, CAVI_KEPT, CAVI_FILLER)
    assert "manifest not found: data/manifests/demo_cavi.parquet" in _error_line(_invoke("cari_split", "demo_cavi"))
    assert "unknown dataset 'nope'" in _error_line(_invoke("cari_split", "nope"))
    _no_outputs(workdir, "no manifest")


# --- WebCaricature: Adele and Jeff train, Lady Gaga and Tom Hanks are the test pairs and identification ids -----------

ADELE, JEFF, GAGA, HANKS = "Adele Laurie Blue Adkins", "Jeff Bridges", "Lady Gaga", "Tom Hanks"
WEB_SUBJECTS = {ADELE: (3, 3), JEFF: (3, 2), GAGA: (2, 2), HANKS: (2, 2)}
WEB_TRAIN = [(ADELE, "C00001", "P00001"), (ADELE, "C00002", "P00002"), (JEFF, "C00001", "P00001"),
             (ADELE, "C00001", JEFF, "P00002"), (JEFF, "C00002", ADELE, "P00003")]
WEB_TEST = [(GAGA, "C00001", "P00001"), (HANKS, "C00001", "P00001"), (GAGA, "C00002", HANKS, "P00002"),
            (HANKS, "C00002", GAGA, "P00002")]
#: C2P: Adele's probe has no gallery image (excluded, never a hit); P2C: one gallery image not on disk
WEB_IDENT = {
    "C2P": ([(GAGA, "C00001"), (GAGA, "C00002"), (HANKS, "C00001"), (ADELE, "C00003")],
            [(GAGA, "P00001"), (HANKS, "P00001"), (HANKS, "P00002")]),
    "P2C": ([(GAGA, "P00002"), (HANKS, "P00002")], [(GAGA, "C00001"), (HANKS, "C00002"), (HANKS, "C00009")]),
}


def _webcari(workdir: Path, train=WEB_TRAIN, test=WEB_TEST, ident=WEB_IDENT, limit: float = 0.1) -> pd.DataFrame:
    root = fx.build_webcaricature(workdir / "data/raw/demo_webcari", WEB_SUBJECTS, lf=())
    fx.write_webcari_protocol(root, train, test, ident)
    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": limit}))
    return _manifest(workdir, "demo_webcari", "webcaricature", root)


def _wid(subject: str, stem: str) -> str:
    return f"demo_webcari/{subject}/{stem}"


def test_webcari_split_pairs_identification_and_counts(workdir, no_mlflow):
    _webcari(workdir)
    res = _invoke("cari_split", "demo_webcari")
    assert res.exit_code == 0, res.output
    split, pairs, ident, metrics = _read(workdir, "demo_webcari")
    _check_formats(split, pairs, ident)
    assert split["protocol"] == "webcaricature"
    assert split["classes"] == [ADELE, JEFF, GAGA, HANKS] and split["train_ids"] == 2
    train = dict(zip(split["train_image_ids"], split["train_labels"], strict=True))
    assert train == {_wid(ADELE, "C00001"): 0, _wid(ADELE, "P00001"): 0, _wid(ADELE, "C00002"): 0,
                     _wid(ADELE, "P00002"): 0, _wid(JEFF, "C00001"): 1, _wid(JEFF, "P00001"): 1,
                     _wid(JEFF, "P00002"): 1, _wid(JEFF, "C00002"): 1, _wid(ADELE, "P00003"): 0}
    assert split["train_image_ids"][:2] == [_wid(ADELE, "C00001"), _wid(ADELE, "P00001")]  # file order

    assert list(pairs["input_id"]) == [_wid(GAGA, "C00001"), _wid(HANKS, "C00001"), _wid(GAGA, "C00002"),
                                       _wid(HANKS, "C00002")]
    assert list(pairs["reference_id"]) == [_wid(GAGA, "P00001"), _wid(HANKS, "P00001"), _wid(HANKS, "P00002"),
                                           _wid(GAGA, "P00002")]
    assert list(pairs["is_same"]) == [True, True, False, False] and list(pairs["line"]) == [2, 3, 4, 5]
    assert set(pairs["block"]) == {0}

    test = dict(zip(split["test_image_ids"], split["test_labels"], strict=True))
    assert not set(train) & set(test)
    assert set(test) == {_wid(s, f"{m}0000{k}") for s in (GAGA, HANKS) for m in "CP" for k in (1, 2)}
    assert set(test.values()) == {2, 3}

    # 20 groups; Adele's probe excluded from C2P; Hanks' missing caricature dropped from the P2C gallery
    assert list(dict.fromkeys(ident["group"])) == [f"C2P{k}" for k in range(1, 11)] + [f"P2C{k}" for k in range(1, 11)]
    c2p1 = ident[ident["group"] == "C2P1"]
    assert list(c2p1["role"]) == ["probe"] * 3 + ["gallery"] * 3
    assert list(c2p1["image_id"]) == [_wid(GAGA, "C00001"), _wid(GAGA, "C00002"), _wid(HANKS, "C00001"),
                                      _wid(GAGA, "P00001"), _wid(HANKS, "P00001"), _wid(HANKS, "P00002")]
    assert list(c2p1["label"]) == [0, 0, 1, 0, 1, 1]  # sorted upper-cased gallery ids: LADY GAGA, TOM HANKS
    assert set(c2p1["direction"]) == {"C2P"} and set(c2p1["k"]) == {1}
    p2c10 = ident[ident["group"] == "P2C10"]
    assert list(p2c10["role"]) == ["probe", "probe", "gallery", "gallery"] and set(p2c10["k"]) == {10}
    assert len(ident) == 10 * 6 + 10 * 4

    counts = split["counts"]
    assert counts == {k: v for k, v in metrics.items() if k not in ("dataset", "protocol", "skipped_entries")}
    assert counts["C2P1_excluded_probes"] == 1 and counts["P2C1_excluded_probes"] == 0
    assert counts["excluded_probes"] == 10
    assert counts["C2P3_ids_in_train"] == 1 and counts["P2C3_ids_in_train"] == 0  # Adele's probe id trains
    assert counts["C2P1_probes"] == 3 and counts["P2C1_gallery"] == 2
    assert (counts["test_pairs"], counts["test_ids_in_train"], counts["test_images_in_train"]) == (4, 0, 0)
    assert (counts["train_images"], counts["train_listed"], counts["train_ids"], counts["classes"]) == (9, 10, 2, 4)
    assert (counts["skipped"], counts["test_images"], counts["identification_rows"]) == (10, 8, 100)
    assert counts["identification_images_in_train"] == 0 and counts["unlabelled_test_images"] == 0
    assert metrics["skipped_entries"][0] == "P2C1 gallery: image not in the dataset: Tom Hanks/C00009.jpg"
    assert len(metrics["skipped_entries"]) == 10


def test_webcari_identification_images_that_train_are_counted(workdir, no_mlflow):
    ident = dict(WEB_IDENT)
    ident["P2C"] = ([(GAGA, "P00002"), (JEFF, "P00002")], [(GAGA, "C00001"), (JEFF, "C00001"), (JEFF, "C00003")])
    _webcari(workdir, ident=ident)
    folder = workdir / "data/raw/demo_webcari/WebCaricature/EvaluationProtocols"  # an absolute path works too
    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": 0.1,
                                                          "datasets.demo_webcari.protocol.folder": str(folder)}))
    assert _invoke("cari_split", "demo_webcari").exit_code == 0
    split, _, ident_rows, metrics = _read(workdir, "demo_webcari")
    assert metrics["identification_images_in_train"] == 2  # Jeff's P00002 and C00001
    assert metrics["P2C1_ids_in_train"] == 1 and metrics["skipped"] == 0
    test = dict(zip(split["test_image_ids"], split["test_labels"], strict=True))
    assert test[_wid(JEFF, "C00003")] == 1  # a class (Jeff trains): its index; not one -> -1 (none here)


def test_webcari_bad_inputs_are_one_error_line_and_no_output(workdir, no_mlflow):
    _webcari(workdir, limit=0.05)  # the missing gallery image: 1 of 19 images
    line = _error_line(_invoke("cari_split", "demo_webcari"))
    assert "1 of 19 distinct protocol images are not in the manifest" in line and "Tom Hanks/C00009.jpg" in line
    _no_outputs(workdir, "missing image")

    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": 0.1}))
    leak = [*WEB_TEST, (ADELE, "C00001", "P00001")]  # a training pair as a test pair
    fx.write_webcari_protocol(workdir / "data/raw/demo_webcari/WebCaricature", WEB_TRAIN, leak, WEB_IDENT)
    line = _error_line(_invoke("cari_split", "demo_webcari"))
    assert "2 images are both training images" in line and "Adele Laurie Blue Adkins/C00001.jpg" in line
    _no_outputs(workdir, "leak")

    web = workdir / "data/raw/demo_webcari/WebCaricature"
    test_file = web / fx.WEBCARI_RESTRICTED / "RestrictedView1_DevTest.txt"
    test_file.write_bytes(b"2\r\nLady Gaga\tC00001\r\n")
    line = _error_line(_invoke("cari_split", "demo_webcari"))
    assert line == (f"error: {test_file.relative_to(workdir)}: line 2: expected 3 tab-separated fields (id cari "
                    "photo) or 4 (id_c cari id_p photo), got 2")

    fx.write_webcari_protocol(web, WEB_TRAIN, WEB_TEST, WEB_IDENT)
    gallery = web / fx.WEBCARI_IDENTIFICATION / "P2C" / "FR_Gallery_P2C7.txt"
    gallery.unlink()
    line = _error_line(_invoke("cari_split", "demo_webcari"))
    assert line.startswith(f"error: protocol file not found: {gallery.relative_to(workdir)} ")
    assert ("datasets.demo_webcari.protocol.identification = 'FaceIdentification', relative to "
            "datasets.demo_webcari.protocol.folder = data/raw/demo_webcari/WebCaricature/EvaluationProtocols") in line
    _no_outputs(workdir, "missing gallery file")

    write_params(workdir / "params.yaml", tiny_params(**{"datasets.demo_webcari.protocol.folder": "Protocols"}))
    line = _error_line(_invoke("cari_split", "demo_webcari"))
    assert line.startswith("error: protocol folder not found: data/raw/demo_webcari/WebCaricature/Protocols "
                           "(datasets.demo_webcari.protocol.folder = 'Protocols', relative to "
                           "datasets.demo_webcari.root = data/raw/demo_webcari/WebCaricature;"), line
    _no_outputs(workdir, "missing folder")

    # no C2P probe id has a gallery image
    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": 0.1}))
    ident = {"C2P": ([(ADELE, "C00003")], WEB_IDENT["C2P"][1]), "P2C": WEB_IDENT["P2C"]}
    fx.write_webcari_protocol(web, WEB_TRAIN, WEB_TEST, ident)
    assert "C2P split 1: no probe identity has a gallery image" in _error_line(_invoke("cari_split", "demo_webcari"))
    _no_outputs(workdir, "no probe")
