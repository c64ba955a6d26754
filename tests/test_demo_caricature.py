"""The caricature demo (pipeline/data/demo_caricature.py): CaVI and WebCaricature layouts, their protocol files, the
readers and protocol parsers on them, determinism, the landmarks' face box, and the download stage."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from pipeline.align.landmarks import landmark_box
from pipeline.config import DemoCaricatureSource, load_params
from pipeline.data import demo_caricature as dc
from pipeline.data.build_manifest import build_manifest
from pipeline.data.demo import encode_jpeg, identity_params
from pipeline.data.landmarks import read_landmarks
from pipeline.data.manifest import read_manifest
from pipeline.data.readers.cavi import read_cavi
from pipeline.data.readers.webcaricature import landmark_path, read_webcaricature
from pipeline.folds.cari import (
    cavi_split,
    identification_files,
    read_cavi_pairs,
    read_webcari_list,
    read_webcari_pairs,
    webcari_protocol,
)
from stages.app import app
from tests.conftest import REPO, tiny_params, write_params

SEED = 2019
QUALITY = 90
SIZE = (112, 112)
CAVI = dict(layout="cavi", seed=SEED, first_identity=5000, n_identities=6, photos_per_identity=5,
            caricatures_per_identity=4, image_size=SIZE, exaggeration=(1.5, 2.5), artists=3, pairs=8, downsample=5,
            quality=QUALITY)
WEB = dict(layout="webcaricature", seed=SEED, first_identity=5100, n_identities=6, photos_per_identity=4,
           caricatures_per_identity=4, image_size=SIZE, exaggeration=(1.5, 2.5), artists=3, pairs=8, downsample=1,
           quality=QUALITY)


@pytest.fixture(scope="module")
def cavi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cari") / "demo_cavi"
    summary = dc.generate_caricature_dataset(out, **CAVI)
    assert summary.n_images == 6 * 9 and summary.protocol["kept_pairs"] == 8
    return out


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cari") / "demo_webcari"
    summary = dc.generate_caricature_dataset(out, **WEB)
    assert summary.n_images == 6 * 8
    return out


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- CaVI


def test_cavi_layout_and_pair_file(cavi: Path):
    root = cavi / dc.CAVI_ROOT
    assert sorted(p.name for p in cavi.iterdir()) == ["CaVI_Dataset", "train-test-files"]
    cari = sorted(p.name for p in (root / "Caricature").iterdir())
    real = sorted(p.name for p in (root / "Real").iterdir())
    assert cari == [f"Person_{i}" for i in range(5000, 5006)]
    # one identity differs only in case between the two folders
    assert set(real) - set(cari) == {"person_5003"} and set(cari) - set(real) == {"Person_5003"}
    assert sorted(p.name for p in (root / "Caricature/Person_5001").iterdir()) == [
        f"Person_5001_c_{n}.jpg" for n in range(4)]
    assert sorted(p.name for p in (root / "Real/person_5003").iterdir()) == [
        f"person_5003_r_{n}.jpg" for n in range(5)]
    image = cv2.imdecode(np.frombuffer((root / "Real/Person_5000/Person_5000_r_0.jpg").read_bytes(), np.uint8),
                         cv2.IMREAD_COLOR)
    assert image.shape == (SIZE[1], SIZE[0], 3)

    data = (root / dc.CAVI_PAIRS).resolve().read_bytes()
    lines = data.split(b"\r\n")
    assert lines[-1] == b"" and len(lines) - 1 == 8 * 5  # pairs x downsample lines, every one ending in CRLF
    assert data.count(b"\n") == data.count(b"\r\n")
    for line in lines[:-1]:
        id_c, path_c, id_r, path_r, label = line.decode().split(" ")
        assert path_c == f"Caricature/{id_c}\\{path_c.split(chr(92))[1]}" and path_r.startswith(f"Real/{id_r}\\")
        assert label in ("0", "1") and (label == "1") == (id_c.upper() == id_r.upper())


def test_cavi_reader_and_closed_set_split(cavi: Path):
    root = cavi / dc.CAVI_ROOT
    result = read_cavi(root, "demo_cavi", options={})
    assert result.skipped == [] and len(result.records) == 6 * 9
    images = {r.path: r.subject for r in result.records}
    assert sorted(set(images.values())) == [f"PERSON_{i}" for i in range(5000, 5006)]  # the case variant is one
    assert sum(r.is_caricature for r in result.records) == 6 * 4

    pairs = read_cavi_pairs(root / dc.CAVI_PAIRS)
    assert len(pairs) == 40
    split = cavi_split(pairs, images, downsample=5)
    assert len(pairs[::5]) == len(split.pairs) == 8 and split.skipped == ()
    assert sum(p.is_same for p in split.pairs) == 4
    assert set(split.test_ids) == set(split.classes) == set(images.values())  # every identity is tested
    assert split.n_case_matched > 0 and split.unlabelled == ()
    assert len({(p.caricature, p.photo) for p in split.pairs}) == 8  # no pair twice
    for subject in split.classes:  # the closed-set training set keeps most images of every identity
        own = [p for p, s in images.items() if s == subject]
        tested = [p for p in split.test_images if images[p] == subject]
        trained = [p for p in split.train.paths if images[p] == subject]
        assert 0 < len(tested) < len(own) / 2 and len(trained) == len(own) - len(tested)


# --------------------------------------------------------------------------------------------- WebCaricature


def test_webcari_layout_landmarks_and_line_ends(web: Path):
    root = web / dc.WEBCARI_ROOT
    names = dc.webcari_names(5100, 6)
    assert sorted(p.name for p in (root / "OriginalImages").iterdir()) == sorted(names)
    assert all(" " in name for name in names) and len(set(names.values())) == 6
    crlf = lf = 0
    for folder in (root / "OriginalImages").iterdir():
        files = sorted(p.name for p in folder.iterdir())
        assert files == [f"C{n:05d}.jpg" for n in range(1, 5)] + [f"P{n:05d}.jpg" for n in range(1, 5)]
        for name in files:
            text = (root / landmark_path(f"OriginalImages/{folder.name}/{name}")).read_bytes()
            assert text.count(b"\n") == 17
            crlf += text.count(b"\r\n") == 17
            lf += b"\r" not in text
            points = read_landmarks(root / landmark_path(f"OriginalImages/{folder.name}/{name}"))
            assert points.shape == (17, 2)
            assert (points >= 0).all() and (points[:, 0] <= SIZE[0]).all() and (points[:, 1] <= SIZE[1]).all()
    assert crlf == lf == 6 * 8 // 2


def test_webcari_reader_and_protocol_files(web: Path):
    root = web / dc.WEBCARI_ROOT
    result = read_webcaricature(root, "demo_webcari", options={})
    assert result.skipped == [] and len(result.records) == 6 * 8
    available = {r.path.removeprefix("OriginalImages/") for r in result.records}

    train = read_webcari_pairs(root / dc.WEBCARI_TRAIN_PAIRS)
    test = read_webcari_pairs(root / dc.WEBCARI_TEST_PAIRS)
    for rel, pairs in ((dc.WEBCARI_TRAIN_PAIRS, train), (dc.WEBCARI_TEST_PAIRS, test)):
        data = (root / rel).read_bytes()
        assert data.split(b"\r\n")[0] == b"8" and data.count(b"\n") == data.count(b"\r\n") == 9
        assert len(pairs) == 8 and sum(p.is_same for p in pairs) == 4
        assert all(p.caricature.path.split("/")[1].startswith("C") and p.photo.path.split("/")[1].startswith("P")
                   for p in pairs)
    train_ids, test_ids = dc.webcari_split(SEED, 5100, 6)
    names = {i: n for n, i in dc.webcari_names(5100, 6).items()}
    assert {x.subject for p in train for x in (p.caricature, p.photo)} == {names[i] for i in train_ids}
    assert {x.subject for p in test for x in (p.caricature, p.photo)} == {names[i] for i in test_ids}
    assert len(train_ids) == 4 and len(test_ids) == 2

    ident = {}
    for direction in ("C2P", "P2C"):
        for k in range(1, 11):
            files = [root / dc.WEBCARI_IDENTIFICATION / direction / f for f in identification_files(direction, k)]
            for f in files:
                data = f.read_bytes()
                assert (b"\r\n" in data) == (direction == "C2P") and int(data.splitlines()[0]) == data.count(b"\n") - 1
            ident[(direction, k)] = (read_webcari_list(files[0]), read_webcari_list(files[1]))
    protocol = webcari_protocol(train, test, ident, images=available)
    assert protocol.skipped == ()  # every listed image exists
    counts = protocol.counts()
    assert counts["test_pairs"] == 8 and counts["test_ids_in_train"] == 0 and counts["train_ids"] == 4
    assert counts["classes"] == 6
    for s in protocol.identification:
        probe_kind, gallery_kind = ("C", "P") if s.direction == "C2P" else ("P", "C")
        assert all(x.path.split("/")[1].startswith(probe_kind) for x in s.probe + s.excluded_probes)
        assert all(x.path.split("/")[1].startswith(gallery_kind) for x in s.gallery)
        assert len(s.excluded_probes) == (1 if s.k == 1 else 0) and s.train_overlap == 0
    c2p = [frozenset(x.path for x in s.probe + s.gallery) for s in protocol.identification if s.direction == "C2P"]
    assert len(set(c2p)) > 5  # each split its own random choice


def test_landmark_box_holds_the_rendered_face(web: Path):
    """Every landmark crop (the original's box, pipeline/align/landmarks.py) holds >= 90 % of the drawn face oval
    (from the renderer's geometry, not from the landmarks) and its centre; the geometry is that of the very file."""
    root = web / dc.WEBCARI_ROOT
    coverage = []
    boxes = {}
    for name, identity in dc.webcari_names(5100, 6).items():
        for is_cari in (True, False):
            for n in range(4):
                stem = f"{'C' if is_cari else 'P'}{n + 1:05d}"
                r = dc.render_image(SEED, identity, n, is_caricature=is_cari, image_size=SIZE,
                                    exaggeration=WEB["exaggeration"], artists=WEB["artists"])
                assert encode_jpeg(r.image, QUALITY) == (root / "OriginalImages" / name / f"{stem}.jpg").read_bytes()
                outline, center = dc.face_region(SEED, identity, n, is_caricature=is_cari, image_size=SIZE,
                                                 exaggeration=WEB["exaggeration"], artists=WEB["artists"])
                points = read_landmarks(root / "FacialPoints" / name / f"{stem}.txt")
                box = landmark_box(points, SIZE, 1.5, 1.2)
                boxes[(identity, is_cari, n)] = (box, outline, center)
                cov = _coverage(box, outline)
                coverage.append(cov)
                assert cov >= 0.9, (name, stem, cov)
                assert box[0] <= center[0] <= box[2] and box[1] <= center[1] <= box[3], (name, stem)
    assert len(coverage) == 48 and np.mean(coverage) > 0.97
    # the check can fail: another image's box misses faces
    keys = list(boxes)
    crossed = [_coverage(boxes[a][0], boxes[b][1]) for a, b in zip(keys, keys[7:] + keys[:7], strict=True)]
    assert min(crossed) < 0.9


def _coverage(box: tuple[int, int, int, int], outline: np.ndarray) -> float:
    """Share of the face polygon's area inside the box (rasterised at 1/8 px)."""
    mask = np.zeros((SIZE[1] * 2, SIZE[0] * 2), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 2 * 8).astype(np.int32)], 1, cv2.LINE_8, 3)
    x0, y0, x1, y1 = (2 * v for v in box)
    return float(mask[y0:y1, x0:x1].sum() / mask.sum())


# --------------------------------------------------------------------------------------------- generator


def test_deterministic_and_independent_of_workers(cavi: Path, web: Path, tmp_path: Path):
    for out, kwargs in ((cavi, CAVI), (web, WEB)):
        again = dc.generate_caricature_dataset(tmp_path / out.name, **kwargs, workers=2)
        assert again.n_images > 0
        first, second = _tree(out), _tree(tmp_path / out.name)
        assert list(first) == list(second) and first == second


def test_caricatures_are_exaggerated_flat_and_outlined():
    ident = identity_params(SEED, 5100)
    big = dc.exaggerate(ident, 2.0)
    for name, (mean, lo, hi) in dc.POPULATION.items():
        want = mean + 2.0 * (getattr(ident, name) - mean)
        got = getattr(big, name)
        assert got == pytest.approx(min(max(want, lo), hi)) or name in ("eye_size", "nose_length")
    # the population means are those identity_params draws around
    idents = [identity_params(SEED, i) for i in range(3000)]
    for name, (mean, _, _) in dc.POPULATION.items():
        assert np.mean([getattr(x, name) for x in idents]) == pytest.approx(mean, abs=0.02 * max(mean, 0.5))
    for n in range(3):
        photo = dc.render_photo(SEED, 5100, n, image_size=SIZE)
        cari = dc.render_caricature(SEED, 5100, n, image_size=SIZE, artists=3)
        assert 1.5 <= cari.exaggeration <= 2.5 and 0 <= cari.artist < 3
        colours = [len(np.unique(x.image.reshape(-1, 3), axis=0)) for x in (photo, cari)]
        assert colours[1] < 0.25 * colours[0]  # flat colours
    # the artist's line: ink along the edge of a flat disc, flat colours away from it
    yy, xx = np.mgrid[0:SIZE[1], 0:SIZE[0]]
    r = np.hypot(xx - 56.0, yy - 56.0)
    img = np.where((r < 30)[..., None], np.float32([0.8, 0.5, 0.4]), np.float32([0.9, 0.9, 0.85]))
    for artist in range(3):
        style = dc.artist_style(SEED, artist)
        out = dc._flat_style(img.astype(np.float32), style, SIZE[0] / 160)
        inky = np.abs(out.astype(float) - np.asarray(style.ink) * 255).max(axis=2) < 60
        sector = (np.degrees(np.arctan2(yy - 56.0, xx - 56.0)) // 5).astype(int)  # 72 sectors of 5 degrees
        ring = np.abs(r - 30) < 2
        assert len(np.unique(sector[ring & inky])) >= 70  # the outline goes all round
        assert not inky[(r < 24) | (r > 36)].any()
        assert len(np.unique(out[r < 24], axis=0)) == len(np.unique(out[r > 36], axis=0)) == 1


def test_source_params_and_validation():
    params = load_params(REPO / "params.yaml")
    cavi, web = params.datasets["demo_cavi"], params.datasets["demo_webcari"]
    assert Path(cavi.root) == Path("data/raw/demo_cavi") / dc.CAVI_ROOT
    assert cavi.protocol.pairs == dc.CAVI_PAIRS and cavi.source.pair_downsample() == cavi.protocol.downsample
    s = cavi.source
    assert cavi.expected.images == s.n_identities * (s.photos_per_identity + s.caricatures_per_identity)
    assert Path(web.root) == Path("data/raw/demo_webcari") / dc.WEBCARI_ROOT
    folder = Path(getattr(web.protocol, "folder", None) or "")  # the files relative to the protocol folder
    assert tuple((folder / getattr(web.protocol, k)).as_posix() for k in ("train_pairs", "test_pairs",
                                                                           "identification")) == (
        dc.WEBCARI_TRAIN_PAIRS, dc.WEBCARI_TEST_PAIRS, dc.WEBCARI_IDENTIFICATION)
    s = web.source
    assert web.expected.images == s.n_identities * (s.photos_per_identity + s.caricatures_per_identity)
    assert web.source.pair_downsample() == 1
    base = {"kind": "demo_caricature", "n_identities": 6, "pairs": 8}
    assert DemoCaricatureSource(**base, layout="cavi").pair_downsample() == 20
    for bad, message in (({"layout": "webcaricature", "downsample": 20}, "not down-sampled"),
                         ({"layout": "cavi", "pairs": 5}, "cannot cover"),
                         ({"layout": "webcaricature", "n_identities": 2, "pairs": 2}, "needs 3..676"),
                         ({"layout": "cavi", "exaggeration": [2.5, 1.5]}, "low <= high")):
        with pytest.raises(ValidationError, match=message):
            DemoCaricatureSource(**(base | bad))
    with pytest.raises(ValueError, match="pairs"):
        dc.generate_caricature_dataset(Path("/nonexistent/never"), **(CAVI | {"pairs": 3}))


# --------------------------------------------------------------------------------------------- the download stage


def test_download_stage_then_manifest(tmp_path, monkeypatch, no_mlflow):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    small = {"n_identities": 3, "photos_per_identity": 3, "caricatures_per_identity": 3, "pairs": 4,
             "image_size": [96, 96]}
    overrides = {f"datasets.{d}.source.{k}": v for d in ("demo_cavi", "demo_webcari") for k, v in small.items()}
    overrides |= {f"datasets.{d}.expected": {"subjects": 3, "images": 18} for d in ("demo_cavi", "demo_webcari")}
    write_params(tmp_path / "params.yaml", tiny_params(**overrides, **{"datasets.demo_cavi.source.downsample": 3,
                                                                  "datasets.demo_cavi.protocol.downsample": 3}))
    runner = CliRunner()
    for name, root, protocol in (("demo_cavi", "CaVI_Dataset", "train-test-files/testing_1.txt"),
                                 ("demo_webcari", "WebCaricature", f"WebCaricature/{dc.WEBCARI_TEST_PAIRS}")):
        res = runner.invoke(app, ["--params", "params.yaml", "download", name])
        assert res.exit_code == 0, res.output
        raw = tmp_path / "data/raw" / name
        assert (raw / root).is_dir() and (raw / protocol).is_file()
        source = json.loads((raw / "source.json").read_text())
        assert source["images"] == 18 and source["kind"] == "demo_caricature" and protocol in source["protocol_files"]
        listing = (raw / "listing.tsv").read_text().splitlines()
        assert source["files"] == len(listing) - 1 == (18 if name == "demo_cavi" else 36 + 2 + 40)
        res = runner.invoke(app, ["--params", "params.yaml", "manifest", name])
        assert res.exit_code == 0, res.output
        df = read_manifest(tmp_path / "data/manifests" / f"{name}.parquet")
        assert len(df) == 18 and df["subject"].nunique() == 3 and df["is_caricature"].sum() == 9
    assert (tmp_path / "data/raw/demo_cavi/train-test-files/testing_1.txt").read_bytes().count(b"\r\n") == 12
    assert not list((tmp_path / "data/raw").glob(".*"))
    # a root that is not where the stage writes: one error line naming the key, no output
    write_params(tmp_path / "params.yaml", tiny_params(**overrides, **{"datasets.demo_cavi.root": "elsewhere"}))
    res = runner.invoke(app, ["--params", "params.yaml", "download", "demo_cavi"])
    assert res.exit_code == 1 and "datasets.demo_cavi.root must be data/raw/demo_cavi/CaVI_Dataset" in res.stderr
    assert (tmp_path / "data/raw/demo_cavi/CaVI_Dataset").is_dir()  # the previous output is kept


def test_manifest_of_the_default_sizes_is_clean(cavi: Path, web: Path):
    """build_manifest (what the manifest stage runs) reads both layouts without a skip."""
    for name, reader, root in (("demo_cavi", "cavi", cavi / dc.CAVI_ROOT),
                               ("demo_webcari", "webcaricature", web / dc.WEBCARI_ROOT)):
        df, skipped, summary = build_manifest(name, reader=reader, root=root, options={})
        assert skipped == [] and summary.subjects == 6 and len(df) == summary.images
        assert df["image_id"].is_unique
