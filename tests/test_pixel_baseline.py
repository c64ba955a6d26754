"""The raw-pixel PCA baseline: the network's crop, training-only PCA, unit embeddings, determinism, and the stage's
outputs in the finetune stage's shapes (on a small synthetic fold)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.evaluation.pixel_pca import ABSENT_CLASS, PixelPCA, PixelPCASettings, center_crop, pixel_features
from pipeline.training.data import LabelledImages
from pipeline.training.evaluate import EvalData
from pipeline.training.fold_data import FoldData
from stages.app import app
from stages.pixel_baseline import metrics_record, run_fold
from tests.conftest import tiny_params, write_params
from tests.settings_helpers import PARAMS, task_set
from tests.test_embed import synthetic_faces, write_aligned

CLASSES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
S, CROP = 40, 32
SETTINGS = PixelPCASettings(crop=CROP, size=8, grey=False, components=8, whiten=False, probe_c=1.0, seed=3)
TASKS = task_set()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One BLAS thread: the shared 2-core test machines are much faster without oversubscription."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def faces(subjects: list[int], expressions: list[int], seed: int) -> np.ndarray:
    """``uint8 [N, 3, S, S]``: subject pattern + an expression-dependent bright bar + noise."""
    x = synthetic_faces(len(subjects), S, subjects, seed=seed).astype(np.int16)
    for i, e in enumerate(expressions):
        x[i, 24 + e % 3 * 4 : 28 + e % 3 * 4, 8 + e // 3 * 12 : 20 + e // 3 * 12] += 60
    return np.clip(x, 0, 255).astype(np.uint8).transpose(0, 3, 1, 2).copy()


def fold_data(test_seed: int = 1) -> FoldData:
    train_subj = [s for s in range(4) for _ in range(12)]
    train_expr = [k % 6 for k in range(48)]
    test_subj = [s for s in (4, 5) for _ in range(8)]
    test_expr = [k % 6 if k % 4 else -1 for k in range(16)]
    train = LabelledImages(images=torch.from_numpy(faces(train_subj, train_expr, seed=0)),
                           labels={"identity": torch.tensor(train_subj), "expression": torch.tensor(train_expr)},
                           image_ids=[f"tr/{k}" for k in range(48)])
    a = np.arange(16)
    b = np.where(a % 2 == 0, (a + 1) % 8 + a // 8 * 8, (a + 8) % 16)
    same = np.array([test_subj[i] == test_subj[j] for i, j in zip(a, b, strict=True)])
    test = EvalData(images=torch.from_numpy(faces(test_subj, [max(e, 0) for e in test_expr], seed=test_seed)),
                    pair_a=a, pair_b=b, same=same,
                    labels={"identity": np.array(test_subj), "expression": np.array(test_expr)},
                    class_names={"expression": CLASSES})
    return FoldData(train=train, test=test, test_ids=[f"te/{k}" for k in range(16)], test_subjects=["te"], val=None,
                    n_classes={"identity": 6, "expression": 6}, class_names={"expression": CLASSES},
                    counts={"train_images": 48, "test_images": 16})


EVAL = {"protocol": dataclasses.replace(PARAMS.finetune.common.protocol, n_folds=4), "seed": 5}


def _fit(images: np.ndarray, expression: np.ndarray) -> PixelPCA:
    return PixelPCA(SETTINGS).fit(images, {"expression": (expression, 6)})


def test_center_crop_is_the_networks():
    from pipeline.training.data import center_crop as network_crop  # what preprocess() crops with

    x = np.random.default_rng(0).integers(0, 255, (2, 3, 41, 41), dtype=np.uint8)
    for crop in (32, 33, 41):
        np.testing.assert_array_equal(center_crop(x, crop), network_crop(torch.from_numpy(x), crop).numpy())
    with pytest.raises(ValueError, match="does not fit"):
        center_crop(x, 42)


def test_features_are_standardised_per_image():
    x = faces([0, 1, 2], [0, 1, 2], seed=0)
    colour = pixel_features(x, crop=CROP, size=8, grey=False)
    grey = pixel_features(x, crop=CROP, size=8, grey=True)
    assert colour.shape == (3, 3 * 64) and grey.shape == (3, 64)
    for f in (colour, grey):
        np.testing.assert_allclose(f.mean(axis=1), 0, atol=1e-12)
        np.testing.assert_allclose(f.std(axis=1), 1, atol=1e-12)
    flat = np.full((1, 3, S, S), 7, np.uint8)  # constant image: the std floor, no division by zero
    assert np.all(pixel_features(flat, crop=CROP, size=8, grey=True) == 0)


def test_pca_is_fitted_on_training_images_only():
    d1, d2 = fold_data(test_seed=1), fold_data(test_seed=2)
    assert not torch.equal(d1.test.images, d2.test.images)
    m1, s1, p1 = run_fold(d1, TASKS, SETTINGS, **EVAL)
    m2, s2, p2 = run_fold(d2, TASKS, SETTINGS, **EVAL)
    np.testing.assert_array_equal(p1.pca.components_, p2.pca.components_)
    np.testing.assert_array_equal(p1.pca.mean_, p2.pca.mean_)
    np.testing.assert_array_equal(p1.probes["expression"].classifier.coef_, p2.probes["expression"].classifier.coef_)
    assert not np.array_equal(s1["distances"], s2["distances"])  # the test images did change the evaluation
    # and the basis is the PCA of the training images alone
    ref = _fit(d1.train.images.numpy(), d1.train.labels["expression"].numpy())
    np.testing.assert_allclose(np.abs(p1.pca.components_), np.abs(ref.pca.components_), atol=1e-12)
    assert p1.n_components == 8 and p1.summary()["train_images"] == 48


def test_embeddings_are_unit_vectors_and_scores_cover_every_class():
    d = fold_data()
    y = d.train.labels["expression"].numpy().copy()
    y[y == 4] = -1  # class 4 never seen in training: its score is never the argmax
    model = _fit(d.train.images.numpy(), y)
    emb = model.embed(d.test.images.numpy())
    assert emb.shape == (16, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-6)
    scores = model.scores("expression", d.test.images.numpy())
    assert scores.shape == (16, 6) and np.all(scores[:, 4] == ABSENT_CLASS)
    assert not np.any(scores.argmax(axis=1) == 4)


def test_run_fold_is_deterministic_and_uses_the_protocol():
    d = fold_data()
    m1, s1, _ = run_fold(d, TASKS, SETTINGS, **EVAL)
    m2, s2, _ = run_fold(fold_data(), TASKS, SETTINGS, **EVAL)
    assert json.dumps(m1, sort_keys=True) == json.dumps(m2, sort_keys=True)
    assert s1.keys() == s2.keys() and all(np.array_equal(s1[k], s2[k]) for k in s1)
    v = m1["verification"]
    assert v["n_folds"] == 4 and v["seed"] == 5 and v["n_pairs"] == 16 and set(v["val_at_far"]) == {"0.001", "0.01"}
    assert m1["expression"]["n_images"] == 12  # unlabelled test images are left out, as in finetune
    assert m1["authentication"] == pytest.approx(m1["verification_accuracy"] * m1["expression_accuracy"])


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and k != "data":
            out |= _keys(v, f"{prefix}{k}.")
    return out


def _finetune_shape(m: dict, counts: dict) -> dict:
    """A finetune metrics record built by the finetune code itself from the same evaluation ``m``."""
    from types import SimpleNamespace

    from pipeline.training.evaluate import criteria
    from pipeline.training.finetune import _metrics, _Selector

    selector = _Selector("test_fold", criteria(TASKS))
    selector.update(1, m, m)
    spec = SimpleNamespace(settings=SimpleNamespace(selection="test_fold", epochs=1))
    body = _metrics(spec, [{"epoch": 1, "test": m}], selector)
    return {"dataset": "d", "fold": 0, "method": "x", "weighting": "x", "selection": "test_fold", "data": counts,
            **body}


def make_dataset(root: Path) -> None:
    """A 6-subject demo_oulu-like dataset: manifest, aligned faces, fold 0 (4 train / 2 test subjects), pairs."""
    from pipeline.data.manifest import ManifestRecord, assign_identities, to_frame, write_manifest

    records, subjects, exprs = [], [], []
    for s in range(6):
        for e, name in enumerate(CLASSES):
            for f in range(4):
                records.append(ManifestRecord(image_id=f"demo_oulu/S{s}/{name}/{f:05d}", path=f"S{s}/{name}/{f}.jpeg",
                                              dataset="demo_oulu", subject=f"S{s}", sequence=name, frame=f,
                                              n_frames=4, width=S, height=S, expression=name))
                subjects.append(s)
                exprs.append(e if f else 0)
    df = to_frame(assign_identities(records))
    write_manifest(df, root / "data/manifests/demo_oulu.parquet")
    ids = [r.image_id for r in records]
    write_aligned(root / "data/aligned/demo_oulu", ids, faces(subjects, exprs, seed=0).transpose(0, 2, 3, 1))
    train = [i for i, s in zip(ids, subjects, strict=True) if s < 4]
    test = [i for i, s in zip(ids, subjects, strict=True) if s >= 4]
    fold = {"fold": 0, "k": 10, "dataset": "demo_oulu", "train_subjects": ["S0", "S1", "S2", "S3"],
            "test_subjects": ["S4", "S5"], "train_image_ids": train, "test_image_ids": test}
    (root / "data/folds/demo_oulu").mkdir(parents=True)
    (root / "data/folds/demo_oulu/fold0.json").write_text(json.dumps(fold))
    pairs = []
    for s in (4, 5):
        for e, name in enumerate(CLASSES):
            other = 9 - s if e % 2 else s
            pairs.append((f"demo_oulu/S{s}/{name}/00003", f"demo_oulu/S{other}/{CLASSES[(e + 1) % 6]}/00000",
                          other == s))
    pd.DataFrame(pairs, columns=["input_id", "reference_id", "is_same"]).to_parquet(
        root / "data/folds/demo_oulu/fold0-pairs.parquet")


def test_stage_writes_finetune_shaped_outputs(tmp_path, monkeypatch, no_mlflow):
    make_dataset(tmp_path)
    params = write_params(tmp_path / "params.yaml", tiny_params(**{
        "finetune.common.crop.size": CROP, "finetune.common.protocol.n_folds": 4, "pixel_baseline.size": 8,
        "pixel_baseline.components": 8}))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["--params", str(params), "pixel_baseline", "--dataset", "demo_oulu", "--fold", "0"])
    assert res.exit_code == 0, res.output
    assert "demo_oulu/fold0/pixel_pca: verification" in res.stdout
    metrics = json.loads((tmp_path / "metrics/finetune/demo_oulu/fold0-pixel_pca.json").read_text())
    assert {k: metrics[k] for k in ("dataset", "fold", "method", "weighting", "selection", "epochs")} == {
        "dataset": "demo_oulu", "fold": 0, "method": "pixel_pca", "weighting": None, "selection": "none",
        "epochs": 0}
    assert metrics["best"]["selected_on"] == "none"
    assert metrics["data"]["train_images"] == 4 * 6 * 3 and metrics["data"]["test_pairs"] == 12
    finetune = _finetune_shape(metrics["last"], metrics["data"])
    assert _keys(metrics) == _keys(finetune)
    assert metrics == metrics_record("demo_oulu", 0, metrics["data"], {k: v for k, v in metrics["last"].items()
                                                                       if k != "epoch"},
                                     ["verification", "expression", "authentication"])
    out = tmp_path / "data/finetune/demo_oulu/fold0-pixel_pca"
    scores = np.load(out / "scores.npz")
    assert set(scores.files) == {"last_distances", "last_same", "last_expression_logits", "last_expression_labels",
                                 "test_image_ids"}
    assert scores["last_expression_logits"].shape == (48, 6) and len(scores["test_image_ids"]) == 48
    summary = json.loads((out / "pca.json").read_text())
    assert summary["components"] == 8 and summary["expression_classes_trained"] == 6 and summary["expression_c"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["pca.json", "scores.npz"]


def test_stage_refuses_a_crop_larger_than_the_faces(tmp_path, monkeypatch, no_mlflow):
    make_dataset(tmp_path)
    params = write_params(tmp_path / "params.yaml", tiny_params(**{"finetune.common.crop.size": 64}))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["--params", str(params), "pixel_baseline", "--dataset", "demo_oulu", "--fold", "0"])
    assert res.exit_code == 1 and res.stderr.strip().startswith("error: finetune.common.crop.size is 64")
    assert not (tmp_path / "metrics/finetune").exists()
