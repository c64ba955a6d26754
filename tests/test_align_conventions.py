"""The align conventions without a detector: ``resize_only`` (the original's CaVI) and ``landmarks_box`` (the
original's WebCaricature, ``get_faces_webcari.py``), plus MTCNN (``paper_182_44``) on a CaVI dataset.

Datasets are tiny trees in the real CaVI / WebCaricature layouts (``tests/fixtures_layouts.py``); the stage runs
through the same CLI entry point as the MTCNN stage tests (``python -m stages align <dataset>``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import tests.fixtures_layouts as fx
from pipeline.align.images import decode_rgb
from pipeline.align.nodetect import read_image_landmarks
from pipeline.align.run import AlignJob, AlignSettings, _Images, run_job
from pipeline.data.build_manifest import build_manifest
from pipeline.data.manifest import write_manifest
from pipeline.faces.source import FaceSource
from pipeline.faces.table import ALIGNMENT_COLUMNS, read_alignment_table
from stages.app import app
from tests.conftest import REPO, tiny_params, write_params

FIXTURES = REPO / "tests" / "fixtures" / "align"
LICENSED = {"kind": "licensed"}
FAST = {"workers": 0, "batch_size": 4, "shard_size": 4}
WEB_IDS = ["Adele Laurie Blue Adkins/C00001", "Adele Laurie Blue Adkins/C00002", "Adele Laurie Blue Adkins/P00001",
           "Adele Laurie Blue Adkins/P00002", "Jeff Bridges/C00001", "Jeff Bridges/P00001", "Jeff Bridges/P00002"]


def _manifest(tmp: Path, root: Path, name: str, reader: str) -> Path:
    df, _, _ = build_manifest(name, reader=reader, root=root, options={})
    return write_manifest(df, tmp / f"{name}.parquet")


def _job(tmp: Path, manifest: Path, root: Path, tag: str, **settings) -> AlignJob:
    return AlignJob(dataset=tag, manifest=str(manifest), root=str(root), work_dir=str(tmp / tag / "work"),
                    out_dir=str(tmp / tag / "out"), settings=AlignSettings(**{**FAST, **settings}))


def _landmarks(points, newline: str = "\r\n") -> bytes:
    return "".join(f"{x} {y}{newline}" for x, y in points).encode()


def _rgb(path: Path) -> np.ndarray:
    """The image as the stage decodes it."""
    return decode_rgb(path.read_bytes())


def _resized(image: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize((182, 182), resample=Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------- the crop rules
def test_landmarks_box_by_hand(tmp_path):
    """x 10.6..30.2 → 10..30, y 12.9..32.4 → 12..32 (truncated). Centre (20, 22). Half-width int(20·1.5/2) = 15,
    half-height int(20·1.2/2) = 12: box (5, 10, 35, 34) in the 60×50 image. With width 3.0: half-width 30, the box
    (-10, 10, 50, 34) clipped to (0, 10, 50, 34)."""
    root = fx.build_webcaricature(tmp_path / "src", {"Jeff Bridges": (1, 0)})
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "OriginalImages/Jeff Bridges/C00001.jpg", format="PNG")  # lossless
    points = [(10.6, 20.0), (30.2, 20.0), (20.0, 12.9), (20.0, 32.4)] + [(1.5e1, 25.0)] * 13
    (root / "FacialPoints/Jeff Bridges/C00001.txt").write_bytes(_landmarks(points))
    manifest = _manifest(tmp_path, root, "web", "webcaricature")
    for tag, factors, box in (("paper", [1.5, 1.2], [5, 10, 35, 34]), ("wide", [3.0, 1.2], [0, 10, 50, 34])):
        job = _job(tmp_path, manifest, root, tag, convention="landmarks_box", landmark_box=factors, format="png")
        summary = run_job(job)
        assert summary["aligned"] == 1 and summary["mean_score"] is None and summary["several_faces"] == 0
        row = read_alignment_table(Path(job.out_dir) / "alignment.parquet").iloc[0]
        assert row["crop_box"].tolist() == box and row["box"].tolist() == box  # the box is the crop box
        assert row["landmarks"] is None and math.isnan(row["score"]) and row["n_faces"] == 1
        assert row["crop_size"] == 182
        np.testing.assert_array_equal(FaceSource(Path(job.out_dir)).read(0), _resized(image, box))


def test_resize_only_stores_the_whole_image_at_182(tmp_path):
    root = fx.build_cavi(tmp_path / "src", {"Caricature": {"Aamir_Khan": 1}, "Real": {"Aamir_Khan": 2}})
    manifest = _manifest(tmp_path, root, "cavi", "cavi")
    job = _job(tmp_path, manifest, root, "resize", convention="resize_only", format="png")
    assert run_job(job)["aligned"] == 3
    table = read_alignment_table(Path(job.out_dir) / "alignment.parquet")
    faces = FaceSource(Path(job.out_dir))
    assert faces.crop_size == 182
    paths = pd.read_parquet(manifest)["path"].tolist()
    w, h = fx.CAVI_SIZE
    for k, (row, path) in enumerate(zip(table.itertuples(), paths, strict=True)):
        assert row.crop_box.tolist() == [0, 0, w, h] and row.box.tolist() == [0, 0, w, h]
        assert row.landmarks is None and math.isnan(row.score) and row.n_faces == 1
        crop = faces.read(k)
        assert crop.shape == (182, 182, 3)
        np.testing.assert_array_equal(crop, _resized(_rgb(root / path), (0, 0, w, h)))


def test_crlf_and_lf_landmark_files_give_byte_identical_shards(tmp_path):
    crlf = fx.build_webcaricature(tmp_path / "crlf", lf=())
    lf = fx.build_webcaricature(tmp_path / "lf", lf=WEB_IDS)
    sample = "FacialPoints/Jeff Bridges/P00002.txt"
    assert b"\r\n" in (crlf / sample).read_bytes() and b"\r" not in (lf / sample).read_bytes()
    manifest = _manifest(tmp_path, crlf, "web", "webcaricature")
    pd.testing.assert_frame_equal(pd.read_parquet(manifest), pd.read_parquet(_manifest(tmp_path / "lf", lf, "web",
                                                                                           "webcaricature")))
    jobs = [_job(tmp_path, manifest, root, tag, convention="landmarks_box", landmark_box=[1.5, 1.2])
            for tag, root in (("crlf", crlf), ("lf", lf))]
    for job in jobs:
        assert run_job(job)["aligned"] == 7
    a, b = (Path(j.out_dir) for j in jobs)
    assert (a / "alignment.parquet").read_bytes() == (b / "alignment.parquet").read_bytes()
    shards = sorted(p.name for p in (a / "shards").iterdir())
    assert len(shards) == 2 and shards == sorted(p.name for p in (b / "shards").iterdir())
    for name in shards:
        assert (a / "shards" / name).read_bytes() == (b / "shards" / name).read_bytes(), name


def test_landmarks_follow_the_exif_orientation_as_the_originals_imread(tmp_path):
    """A 40×20 JPEG tagged "rotate 90° clockwise" is 20×40 as cv2.imread reads it: a landmark at y = 35 lies
    inside that image (it would be outside the stored 40×20 one)."""
    root = fx.build_webcaricature(tmp_path / "src", {"Jeff Bridges": (1, 0)})
    im = Image.fromarray(np.full((20, 40, 3), 128, np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(root / "OriginalImages/Jeff Bridges/C00001.jpg", exif=exif.tobytes())
    (root / "FacialPoints/Jeff Bridges/C00001.txt").write_bytes(_landmarks([(2.0, 5.0), (18.0, 35.0)] * 8
                                                                           + [(10.0, 20.0)]))
    item = _Images(root, ["OriginalImages/Jeff Bridges/C00001.jpg"], "landmarks_box")[0]
    assert item[1].shape == (40, 20, 3) and item[2].points.shape == (17, 2)
    assert _Images(root, ["OriginalImages/Jeff Bridges/C00001.jpg"], "resize_only")[0][1].shape == (20, 40, 3)


# ----------------------------------------------------------------------------- bad inputs
def _break_inputs(root: Path) -> dict[str, tuple[str, str]]:
    """Spoil six of the seven images' inputs after the manifest was made; ``{image: (status, reason)}``."""
    adele, jeff = "Adele Laurie Blue Adkins", "Jeff Bridges"
    points = root / "FacialPoints"
    (points / adele / "C00001.txt").unlink()
    text = (points / adele / "C00002.txt").read_bytes()
    (points / adele / "C00002.txt").write_bytes(b"\r\n".join(text.split(b"\r\n")[:16]) + b"\r\n")
    (points / adele / "P00001.txt").write_bytes(_landmarks([(10, 10), (20, 20), (10, "x7")] + [(15, 15)] * 14))
    (points / adele / "P00002.txt").write_bytes(_landmarks([(41.5, 10)] + [(15, 15)] * 16))  # the image is 40 wide
    (points / jeff / "C00001.txt").write_bytes(_landmarks([(12.2, 30.7)] * 17))
    (root / "OriginalImages" / jeff / "P00001.jpg").write_bytes(fx.random_bytes())
    return {
        f"{adele}/C00001": ("missing_landmarks", f"FacialPoints/{adele}/C00001.txt: landmark file not found"),
        f"{adele}/C00002": ("bad_landmarks", f"FacialPoints/{adele}/C00002.txt: expected 17 landmarks, got 16"),
        f"{adele}/P00001": ("bad_landmarks", f"FacialPoints/{adele}/P00001.txt: line 3: not a number: '10 x7'"),
        f"{adele}/P00002": ("bad_landmarks",
                            f"FacialPoints/{adele}/P00002.txt: landmark 1 (41.5, 10) is outside the 40×48 image"),
        f"{jeff}/C00001": ("bad_landmarks", f"FacialPoints/{jeff}/C00001.txt: the landmark box (12, 30, 12, 30) "
                                            "has zero area"),
        f"{jeff}/P00001": ("unreadable", "not a decodable image"),
        f"{jeff}/P00002": ("aligned", ""),
    }


def test_bad_inputs_are_counted_failures_with_one_line_reasons(tmp_path):
    root = fx.build_webcaricature(tmp_path / "src")
    manifest = _manifest(tmp_path, root, "web", "webcaricature")
    expected = _break_inputs(root)
    job = _job(tmp_path, manifest, root, "bad", convention="landmarks_box", landmark_box=[1.5, 1.2],
               max_failure_fraction=1.0)
    summary = run_job(job)
    assert summary["images"] == 7 and summary["aligned"] == 1 and summary["failed"] == 6
    assert summary["failures_by_reason"] == {"bad_landmarks": 4, "missing_landmarks": 1, "unreadable": 1}
    table = read_alignment_table(Path(job.out_dir) / "alignment.parquet")
    got = {i.removeprefix("web/"): (s, r) for i, s, r in zip(table["image_id"], table["status"], table["reason"],
                                                             strict=True)}
    assert got == expected
    failed = table[table["status"] != "aligned"]
    assert (failed["shard"] == -1).all() and (failed["n_faces"] == 0).all() and failed["crop_box"].isna().all()


def test_read_image_landmarks_of_a_path_outside_the_layout():
    problem = read_image_landmarks("/nowhere", "Caricature/x/a.jpg")
    assert problem.status == "bad_landmarks" and "not a WebCaricature image path" in problem.reason


# ----------------------------------------------------------------------------- the stage, end to end
runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["--params", "params.yaml", *args])


def _entry(reader: str, root: Path, convention: str, **extra) -> dict:
    return {"reader": reader, "root": str(root), "role": "caricature", "align_convention": convention,
            "source": LICENSED, "options": {}, "expected": {}, "label_sets": {}, **extra}


@pytest.fixture
def stage_dir(tmp_path, monkeypatch):
    """A stage folder (cwd) beside a ``src`` folder for the datasets; ``setup(name, entry, overrides)`` writes
    params.yaml with that dataset and links ``data/raw/<name>`` to its root."""
    repo = tmp_path / "repo"
    (repo / "data/raw").mkdir(parents=True)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("DVC_ROOT", str(repo))

    def setup(name: str, entry: dict, **overrides) -> Path:
        params = tiny_params(**{"align.workers": 0, "align.batch_size": 4, "align.shard_size": 4, **overrides})
        params["datasets"][name] = entry
        write_params(repo / "params.yaml", params)
        link = repo / "data/raw" / name
        if not link.exists():
            link.symlink_to(entry["root"])
        return repo

    return setup


def _no_detector(monkeypatch):
    """The MTCNN weights and detector are out of reach: a convention without detector must not need them."""
    import pipeline.align.run as run_mod

    def refuse(*args, **kwargs):
        raise AssertionError("the detector or its weights were loaded")

    monkeypatch.setattr(run_mod, "mtcnn_package_weights_dir", refuse)
    monkeypatch.setattr(run_mod, "MTCNN", refuse)


def _check_outputs(repo: Path, name: str, convention: str, n: int) -> dict:
    out = repo / "data/aligned" / name
    table = read_alignment_table(out / "alignment.parquet")
    assert tuple(pd.read_parquet(out / "alignment.parquet").columns) == ALIGNMENT_COLUMNS  # the MTCNN path's columns
    assert table["image_id"].tolist() == pd.read_parquet(repo / f"data/manifests/{name}.parquet")["image_id"].tolist()
    metrics = json.loads((repo / f"metrics/align/{name}.json").read_text())
    assert metrics["dataset"] == name and metrics["convention"] == convention and metrics["images"] == n
    assert metrics["shards"] == -(-metrics["aligned"] // 4) and "images_per_second" not in metrics
    speed = json.loads((repo / f"data/work/align/{name}.last-run.json").read_text())
    assert speed["processed_this_run"] == n and speed["processes"] == 1
    assert [p.name for p in (repo / "data/work/align").iterdir()] == [f"{name}.last-run.json"]  # work cleared
    faces = FaceSource(out)
    assert len(faces) == metrics["aligned"] and faces.crop_size == 182 and faces.read(0).shape == (182, 182, 3)
    return metrics


class _Recorder:
    """Stands in for the ``mlflow`` module behind :class:`stages.tracking.RunLogger` (a real tracking store costs
    seconds; the MTCNN stage test covers it): records what the stage logs."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: dict[str, float] = {}
        self.dicts: dict[str, dict] = {}

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.dicts[artifact_file] = obj


def _record_mlflow(monkeypatch) -> _Recorder:
    import contextlib

    import stages.align
    from stages.tracking import RunLogger

    recorder = _Recorder()

    @contextlib.contextmanager
    def stage_run(stage, params, **kwargs):
        recorder.params = params.as_flat_dict()
        yield RunLogger(recorder)

    monkeypatch.setattr(stages.align, "stage_run", stage_run)
    return recorder


def test_stage_landmarks_box_end_to_end(tmp_path, stage_dir, no_mlflow, monkeypatch):
    root = fx.build_webcaricature(tmp_path / "src")
    repo = stage_dir("web", _entry("webcaricature", root, "landmarks_box"))
    assert _invoke("manifest", "web").exit_code == 0
    _no_detector(monkeypatch)
    mlflow = _record_mlflow(monkeypatch)
    res = _invoke("align", "web")
    assert res.exit_code == 0, res.output
    assert "web: aligned 7 of 7 images" in res.output
    metrics = _check_outputs(repo, "web", "landmarks_box", 7)
    assert metrics["failures_by_reason"] == {} and metrics["mean_score"] is None and metrics["shards"] == 2
    assert mlflow.params["align.landmark_box.width"] == 1.5
    assert mlflow.params["datasets.web.align_convention"] == "landmarks_box"
    assert mlflow.metrics["aligned"] == 7 and mlflow.metrics["images_per_second"] > 0
    assert all(math.isfinite(v) for v in mlflow.metrics.values())
    assert mlflow.dicts["align/web.json"]["convention"] == "landmarks_box"


def test_stage_resize_only_end_to_end(tmp_path, stage_dir, no_mlflow, monkeypatch):
    root = fx.build_cavi(tmp_path / "src")
    repo = stage_dir("cavi", _entry("cavi", root, "resize_only"))
    assert _invoke("manifest", "cavi").exit_code == 0
    _no_detector(monkeypatch)
    res = _invoke("align", "cavi")
    assert res.exit_code == 0, res.output
    metrics = _check_outputs(repo, "cavi", "resize_only", 14)
    assert metrics["aligned"] == 14 and metrics["shards"] == 4
    table = read_alignment_table(repo / "data/aligned/cavi/alignment.parquet")
    assert all(cb.tolist() == [0, 0, *fx.CAVI_SIZE] for cb in table["crop_box"])


def test_stage_bad_inputs_above_the_threshold_fail_in_one_line_without_outputs(tmp_path, stage_dir, no_mlflow,
                                                                              monkeypatch):
    root = fx.build_webcaricature(tmp_path / "src")
    entry = _entry("webcaricature", root, "landmarks_box")
    repo = stage_dir("web", entry)
    assert _invoke("manifest", "web").exit_code == 0
    _break_inputs(root)
    _no_detector(monkeypatch)
    res = _invoke("align", "web")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == (
        "error: align web: 6 of 7 images not aligned (85.7% > align.max_failure_fraction=0.05); bad_landmarks: 4, "
        "missing_landmarks: 1, unreadable: 1; first: web/Adele Laurie Blue Adkins/C00001: FacialPoints/Adele Laurie "
        "Blue Adkins/C00001.txt: landmark file not found")
    assert not (repo / "data/aligned/web").exists() and not (repo / "metrics/align/web.json").exists()
    assert not list((repo / "data/aligned").glob(".*tmp*"))


def test_stage_mtcnn_on_a_cavi_dataset(tmp_path, stage_dir, no_mlflow):
    """``align_convention: paper_182_44`` on CaVI: MTCNN runs on every image (the astronaut's face is found and
    cropped with the margin; a gradient has none)."""
    root = fx.build_cavi(tmp_path / "src", {"Caricature": {"Aamir_Khan": 1}, "Real": {"Aamir_Khan": 1}})
    buf = io.BytesIO()
    Image.open(FIXTURES / "astronaut.png").convert("RGB").save(buf, "JPEG", quality=95)
    (root / "Real/Aamir_Khan/Aamir_Khan_r_0.jpg").write_bytes(buf.getvalue())
    repo = stage_dir("cavi", _entry("cavi", root, "paper_182_44"), **{"align.max_failure_fraction": 0.5})
    assert _invoke("manifest", "cavi").exit_code == 0
    res = _invoke("align", "cavi")
    assert res.exit_code == 0, res.output
    metrics = _check_outputs(repo, "cavi", "paper_182_44", 2)
    assert metrics["aligned"] == 1 and metrics["failures_by_reason"] == {"no_face": 1} and metrics["mean_score"] > 0.9
    table = read_alignment_table(repo / "data/aligned/cavi/alignment.parquet").set_index("image_id")
    face = table.loc["cavi/AAMIR_KHAN/Aamir_Khan_r_0"]
    assert face["n_faces"] == 1 and len(face["landmarks"]) == 10 and face["score"] > 0.9
    box, cb = face["box"], face["crop_box"]  # the box ± margin/2 = 22 px, clipped to the 512×512 image
    want = [max(box[0] - 22, 0), max(box[1] - 22, 0), min(box[2] + 22, 512), min(box[3] + 22, 512)]
    assert np.abs(cb - np.array(want)).max() <= 1
