"""The caricature pixel baseline (stage ``cari_pixel``): on a tiny synthetic caricature dataset and a split written by
hand in ``cari_split``'s formats, the stage writes ``cari_train``-shaped metrics, trains each classification probe on
its modality's training images only, gets the cross-modal accuracies from those probes, and runs the probe/gallery
identification where the split has it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.evaluation.pixel_pca import PixelPCASettings, baseline_record, fit_predict
from stages.app import app
from tests.conftest import tiny_params, write_params
from tests.test_embed import synthetic_faces, write_aligned

S, CROP = 40, 32
SUBJECTS = [f"P{k}" for k in range(6)]
PHOTOS, CARICATURES = 4, 3  # per subject: the last of each is a test image
PAIR_DTYPES = {"input_id": "string", "reference_id": "string", "is_same": "bool", "block": "int64", "line": "int64"}
IDENT_DTYPES = {"group": "string", "direction": "string", "k": "int64", "role": "string", "image_id": "string",
                "label": "int64"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _image_id(dataset: str, s: int, kind: str, k: int) -> str:
    return f"{dataset}/{kind}/{SUBJECTS[s]}/{k:03d}"


def make_dataset(root: Path, dataset: str, identification: bool) -> dict:
    """Manifest, aligned faces and ``data/cari/<d>/split/`` of a 6-identity caricature dataset: photos are the
    subject's pattern, caricatures the same pattern brightened and flipped; a closed-set split (the last photo and
    caricature of each identity are test images), caricature-photo test pairs, and (``identification``) two C2P and
    two P2C probe/gallery splits over the test images."""
    from pipeline.data.manifest import ManifestRecord, assign_identities, to_frame, write_manifest

    records, subjects, kinds = [], [], []
    for s in range(len(SUBJECTS)):
        for kind, n in (("photo", PHOTOS), ("caricature", CARICATURES)):
            for k in range(n):
                records.append(ManifestRecord(
                    image_id=_image_id(dataset, s, kind, k), path=f"{kind}/{SUBJECTS[s]}/{k}.jpg", dataset=dataset,
                    subject=SUBJECTS[s], sequence=kind, frame=k, n_frames=n, width=S, height=S,
                    is_caricature=kind == "caricature"))
                subjects.append(s)
                kinds.append(kind)
    write_manifest(to_frame(assign_identities(records)), root / f"data/manifests/{dataset}.parquet")
    ids = [r.image_id for r in records]
    faces = synthetic_faces(len(ids), S, subjects, seed=0).astype(np.int16)
    cari = np.array([k == "caricature" for k in kinds])
    faces[cari] = np.clip(faces[cari][:, :, ::-1] + 40, 0, 255)
    write_aligned(root / f"data/aligned/{dataset}", ids, faces.astype(np.uint8))

    last = {"photo": PHOTOS - 1, "caricature": CARICATURES - 1}
    train = [(i, s) for i, s, kind, r in zip(ids, subjects, kinds, records, strict=True) if r.frame != last[kind]]
    test = [(i, s) for i, s, kind, r in zip(ids, subjects, kinds, records, strict=True) if r.frame == last[kind]]
    split = {"dataset": dataset, "protocol": "webcaricature" if identification else "cavi", "classes": SUBJECTS,
             "train_image_ids": [i for i, _ in train], "train_labels": [s for _, s in train],
             "train_ids": len(SUBJECTS), "test_image_ids": [i for i, _ in test], "test_labels": [s for _, s in test],
             "counts": {}}
    out = root / f"data/cari/{dataset}/split"
    out.mkdir(parents=True)
    (out / "split.json").write_text(json.dumps(split))
    n = len(SUBJECTS)
    pairs = [(_image_id(dataset, s, "caricature", last["caricature"]),
              _image_id(dataset, (s + off) % n, "photo", last["photo"]), off == 0, 0, 2 * s + (off > 0))
             for s in range(n) for off in (0, 1)]
    pd.DataFrame(pairs, columns=list(PAIR_DTYPES)).astype(PAIR_DTYPES).to_parquet(out / "pairs.parquet")
    rows = []
    if identification:
        for direction, probe_kind, gallery_kind in (("C2P", "caricature", "photo"), ("P2C", "photo", "caricature")):
            for k in (1, 2):
                members = [s for s in range(n) if (s + k) % 3]  # each split: 4 of the 6 identities
                for role, kind in (("probe", probe_kind), ("gallery", gallery_kind)):
                    rows += [{"group": f"{direction}{k}", "direction": direction, "k": k, "role": role,
                              "image_id": _image_id(dataset, s, kind, last[kind]), "label": j}
                             for j, s in enumerate(members)]
    pd.DataFrame(rows, columns=list(IDENT_DTYPES)).astype(IDENT_DTYPES).to_parquet(out / "identification.parquet")
    return {"train": train, "test": test}


def _params(root: Path) -> Path:
    return write_params(root / "params.yaml", tiny_params(**{
        "cari.common.crop.size": CROP, "cari.common.protocol.n_folds": 4, "pixel_baseline.size": 8,
        "pixel_baseline.components": 8}))


def _run(root: Path, dataset: str):
    return CliRunner().invoke(app, ["--params", str(root / "params.yaml"), "cari_pixel", "--dataset", dataset])


def test_cavi_split_gives_cari_train_shaped_outputs_and_modality_probes(tmp_path, monkeypatch, no_mlflow):
    make_dataset(tmp_path, "demo_cavi", identification=False)
    _params(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = _run(tmp_path, "demo_cavi")
    assert res.exit_code == 0, res.output
    assert "demo_cavi/pixel_pca: verification" in res.stdout

    metrics = json.loads((tmp_path / "metrics/cari/demo_cavi/pixel_pca.json").read_text())
    assert "fold" not in metrics
    assert {k: metrics[k] for k in ("dataset", "method", "weighting", "selection", "epochs")} == {
        "dataset": "demo_cavi", "method": "pixel_pca", "weighting": None, "selection": "none", "epochs": 0}
    last = metrics["last"]
    assert set(metrics["best"]) == {"selected_on", "verification", "verif", "visual", "cari", "identification",
                                    "authentication"}
    crits = [k for k in metrics["best"] if k != "selected_on"]
    assert metrics == baseline_record({k: v for k, v in last.items() if k != "epoch"}, crits, metrics["data"],
                                      dataset="demo_cavi")
    assert metrics["best"]["selected_on"] == "none" and all(metrics["best"][k] == last for k in crits)
    n_test = len(SUBJECTS) * 2
    assert metrics["data"]["train_images"] == len(SUBJECTS) * (PHOTOS + CARICATURES - 2)
    assert metrics["data"]["classes"] == len(SUBJECTS) and metrics["data"]["test_images"] == n_test
    for key in ("verification_accuracy", "verif_accuracy", "visual_accuracy", "cari_accuracy",
                "visual_cross_accuracy", "cari_cross_accuracy"):
        assert 0.0 <= last[key] <= 1.0, key
    assert last["verification"]["n_pairs"] == 12 and last["verification"]["n_folds"] == 4
    assert last["visual"]["n_images"] == len(SUBJECTS) and last["cari"]["n_images"] == len(SUBJECTS)
    assert last["visual_cross"]["n"] == len(SUBJECTS) and last["cari_cross"]["n"] == len(SUBJECTS)
    assert "identification" not in last  # CaVI: no probe/gallery splits

    out = tmp_path / "data/cari/demo_cavi/pixel_pca"
    assert sorted(p.name for p in out.iterdir()) == ["pca.json", "scores.npz"]
    scores = np.load(out / "scores.npz")
    assert set(scores.files) == {"last_distances", "last_same", "test_image_ids",
                                 *(f"last_{t}_{k}" for t in ("verif", "visual", "cari") for k in ("logits", "labels"))}
    test_ids = list(scores["test_image_ids"])
    is_cari = np.array(["/caricature/" in i for i in test_ids])
    identity = np.array([SUBJECTS.index(i.split("/")[2]) for i in test_ids])
    # each head is scored on its own modality only; the cross-modal accuracy is its logits on the other one
    np.testing.assert_array_equal(scores["last_visual_labels"], np.where(is_cari, -1, identity))
    np.testing.assert_array_equal(scores["last_cari_labels"], np.where(is_cari, identity, -1))
    c2v = np.mean(scores["last_visual_logits"][is_cari].argmax(axis=1) == identity[is_cari])
    v2c = np.mean(scores["last_cari_logits"][~is_cari].argmax(axis=1) == identity[~is_cari])
    assert last["visual_cross_accuracy"] == pytest.approx(c2v) and last["cari_cross_accuracy"] == pytest.approx(v2c)

    # the visual probe was fitted on the training photos only, the caricature probe on the training caricatures
    summary = json.loads((out / "pca.json").read_text())
    assert summary["train_images"] == metrics["data"]["train_images"] and summary["components"] == 8
    from pipeline.data.manifest import read_manifest
    from pipeline.faces.source import FaceSource

    manifest = read_manifest(tmp_path / "data/manifests/demo_cavi.parquet")
    split = json.loads((tmp_path / "data/cari/demo_cavi/split/split.json").read_text())
    caricature = dict(zip(manifest["image_id"], manifest["is_caricature"], strict=True))
    train_ids, y = split["train_image_ids"], np.array(split["train_labels"])
    cari_mask = np.array([caricature[i] for i in train_ids])
    source = FaceSource(tmp_path / "data/aligned/demo_cavi")
    train = source.subset(train_ids)[0].load_all().numpy()
    test = source.subset(test_ids)[0].load_all().numpy()
    settings = PixelPCASettings(crop=CROP, size=8, grey=False, components=8, whiten=False, probe_c=1.0, seed=666)
    _, _, logits = fit_predict(settings, train, {"verif": (y, 6), "visual": (np.where(cari_mask, -1, y), 6),
                                                 "cari": (np.where(cari_mask, y, -1), 6)}, test)
    for task in ("verif", "visual", "cari"):
        np.testing.assert_allclose(scores[f"last_{task}_logits"], logits[task], rtol=1e-6, atol=1e-6)
    _, _, all_images = fit_predict(settings, train, {"visual": (y, 6)}, test)
    assert not np.allclose(all_images["visual"], logits["visual"])  # photos only differs from every image


def test_webcaricature_split_runs_probe_gallery_identification(tmp_path, monkeypatch, no_mlflow):
    make_dataset(tmp_path, "demo_webcari", identification=True)
    _params(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = _run(tmp_path, "demo_webcari")
    assert res.exit_code == 0, res.output
    last = json.loads((tmp_path / "metrics/cari/demo_webcari/pixel_pca.json").read_text())["last"]
    ident = last["identification"]
    assert ident["task"] == "verif" and set(ident["directions"]) == {"C2P", "P2C"}
    for d in ident["directions"].values():
        assert d["splits"] == 2 and set(d["rank"]) == {"1", "10"} and set(d["rank_strided"]) == {"1", "10"}
        assert d["rank"]["10"]["mean"] == 1.0  # 4 gallery identities: every probe's label is among its 10 nearest
    assert last["identification_rank1"] == pytest.approx(
        np.mean([d["rank"]["1"]["mean"] for d in ident["directions"].values()]))
    assert last["verification"]["val_at_far"]["0.01"].keys() >= {"val_train_folds", "val_train_folds_std"}


def test_unknown_dataset_and_missing_split_are_one_line_errors(tmp_path, monkeypatch, no_mlflow):
    _params(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = _run(tmp_path, "demo_oulu")
    assert res.exit_code == 1 and res.stderr.strip().startswith("error: --dataset demo_oulu: not in cari.datasets")
    res = _run(tmp_path, "demo_cavi")
    assert res.exit_code == 1 and "not found: run the upstream stages first" in res.stderr
    assert not (tmp_path / "metrics").exists()
