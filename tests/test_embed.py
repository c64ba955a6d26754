"""`python -m stages embed`: aligned folders, pairs files for `verify`, image files, and every bad input.

A tiny untrained model (reduced depth, 80 px input) saved with ``save_model`` stands in for a trained checkpoint;
a synthetic align-stage folder (lossless PNG shards) stands in for the aligned faces.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.faces.shards import ALIGNMENT_TABLE, SHARD_DIR, shard_name, write_shard
from pipeline.faces.table import write_alignment_table
from stages.app import app

runner = CliRunner()
SIZE = 182  # paper_182_44
FAILED_ID = "t/S9/x/00000"


def synthetic_faces(n: int, size: int, subjects: list[int], seed: int = 0) -> np.ndarray:
    """``uint8 [n, size, size, 3]``: a smooth subject-dependent pattern plus noise (not faces, but not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, s in enumerate(subjects):
        base = np.stack([np.sin((c + 1) * (s + 1) * xx * 3 + s) * np.cos((s + 2) * yy * 2) for c in range(3)], -1)
        img = 128 + 80 * base + rng.normal(0, 20, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_aligned(root: Path, ids: list[str], crops: np.ndarray, failed: tuple[str, ...] = (),
                  fmt: str = "png") -> Path:
    """An align-stage output folder: one shard of ``crops`` (RGB ``[N, S, S, 3]``) plus ``failed`` no-face rows."""
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    ranges = write_shard(root / SHARD_DIR / shard_name(0), list(crops), fmt=fmt)
    rows = []
    for k, (image_id, (offset, length)) in enumerate(zip(ids, ranges, strict=True)):
        rows.append({"image_id": image_id, "status": "aligned", "reason": "", "shard": 0, "member": k,
                     "offset": offset, "length": length, "crop_size": crops.shape[1], "box": [1.0, 2.0, 50.0, 60.0],
                     "landmarks": [float(v) for v in range(10)], "score": 0.99, "n_faces": 1,
                     "crop_box": [0, 0, 60, 70]})
    for image_id in failed:
        rows.append({"image_id": image_id, "status": "no_face", "reason": "no face above the detector thresholds",
                     "shard": -1, "member": -1, "offset": -1, "length": 0, "crop_size": 0, "box": None,
                     "landmarks": None, "score": np.nan, "n_faces": 0, "crop_box": None})
    write_alignment_table(pd.DataFrame(rows), root / ALIGNMENT_TABLE)
    return root


def tiny_model(input_size: int = 80, alignment: str = "paper_182_44", seed: int = 0):
    from pipeline.models.network import MultiTaskInceptionResNetV1
    from tests.settings_helpers import head, model_config, task_set

    torch.manual_seed(seed)
    tasks = task_set(**{"tasks.expression.head": head(128, relu_logits=True)})
    config = dataclasses.replace(model_config({"identity": 5, "expression": 6}, tasks=tasks, depth="reduced",
                                              input_size=input_size), align_convention=alignment)
    return MultiTaskInceptionResNetV1(config).eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_torch_thread):
    """Checkpoint, aligned folder (4 subjects x 4 faces + one failed image), pairs file."""
    from pipeline.models.checkpoint import save_model

    root = tmp_path_factory.mktemp("embed")
    model = tiny_model()
    ckpt = save_model(model, root / "model.pt", meta={"stage": "test", "method": "none", "fold": 0})
    subjects = [s for s in range(4) for _ in range(4)]
    ids = [f"t/S{s}/e{k % 4}/{k:05d}" for k, s in enumerate(subjects)]
    crops = synthetic_faces(len(ids), SIZE, subjects)
    aligned = write_aligned(root / "aligned", ids, crops, failed=(FAILED_ID,))
    rng = np.random.default_rng(1)
    a = rng.integers(0, len(ids), 40)
    b = np.where(np.arange(40) % 2 == 0, (a // 4) * 4 + (a + 1) % 4, (a + 4 + rng.integers(0, 8, 40)) % len(ids))
    pairs = pd.DataFrame({"input_id": [ids[i] for i in a], "reference_id": [ids[j] for j in b],
                          "is_same": [subjects[i] == subjects[j] for i, j in zip(a, b, strict=True)]})
    extra = pd.DataFrame({"input_id": [FAILED_ID, ids[0]], "reference_id": [ids[1], FAILED_ID],
                          "is_same": [False, False]})
    pairs = pd.concat([pairs, extra], ignore_index=True)
    pairs.to_parquet(root / "pairs.parquet")
    return {"root": root, "ckpt": ckpt, "model": model, "ids": ids, "crops": crops, "aligned": aligned,
            "pairs": root / "pairs.parquet", "pairs_df": pairs}


def _expected(model, crops_nhwc: np.ndarray, crop: int = 160) -> np.ndarray:
    from pipeline.training.data import preprocess

    x = torch.from_numpy(crops_nhwc).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model.embed(preprocess(x, crop=crop, input_size=model.config.network.input_size, train=False)).numpy()


def _embed(*args: str):
    return runner.invoke(app, ["embed", "--device", "cpu", *args])


def test_aligned_folder_matches_model_embed(setup, tmp_path):
    from pipeline.faces.source import FaceSource

    out = tmp_path / "emb.npy"
    res = _embed("-c", str(setup["ckpt"]), "--aligned", str(setup["aligned"]), "--out", str(out), "--batch-size", "5")
    assert res.exit_code == 0, res.output
    assert "embedded 16 face(s)" in res.stdout
    emb = np.load(out)
    source = FaceSource(setup["aligned"])
    assert (tmp_path / "emb.ids.txt").read_text().split() == source.ids == setup["ids"]  # the failed id is left out
    faces = source.load_all().permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(faces, setup["crops"])  # PNG shards: lossless
    expected = _expected(setup["model"], faces)
    assert emb.shape == (16, 1792) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    # --ids: the listed faces, in the listed order
    ids_file = tmp_path / "ids.txt"
    chosen = [setup["ids"][7], setup["ids"][2], setup["ids"][7]]
    ids_file.write_text("\n".join(chosen) + "\n\n")
    res = _embed("-c", str(setup["ckpt"]), "--aligned", str(setup["aligned"]), "--ids", str(ids_file), "--out",
                 str(tmp_path / "sub.npy"))
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(tmp_path / "sub.npy"), expected[[7, 2, 7]], atol=1e-5)
    assert (tmp_path / "sub.ids.txt").read_text().split() == chosen


def test_pairs_feed_verify_with_the_evaluation_numbers(setup, tmp_path):
    from pipeline.faces.source import FaceSource
    from pipeline.settings import ProtocolSettings
    from pipeline.training.evaluate import EvalData, evaluate, predict

    out = tmp_path / "pairs"
    res = _embed("-c", str(setup["ckpt"]), "--pairs", str(setup["pairs"]), "--aligned", str(setup["aligned"]),
                 "--out-dir", str(out))
    assert res.exit_code == 0, res.output
    assert "skipped 2 of 42 pairs" in res.stderr and FAILED_ID in res.stderr
    a, b, same = (np.load(out / n) for n in ("embeddings_a.npy", "embeddings_b.npy", "same.npy"))
    assert a.shape == b.shape == (40, 1792) and same.dtype == np.bool_ and len(same) == 40
    kept = pd.read_csv(out / "pairs.tsv", sep="\t")
    assert kept["row"].tolist() == list(range(40))
    np.testing.assert_array_equal(same, setup["pairs_df"]["is_same"].to_numpy()[:40])

    res = runner.invoke(app, ["verify", "--embeddings-a", str(out / "embeddings_a.npy"), "--embeddings-b",
                              str(out / "embeddings_b.npy"), "--same", str(out / "same.npy"), "--seed", "7",
                              "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)

    source = FaceSource(setup["aligned"])
    pos = {i: k for k, i in enumerate(source.ids)}
    df = setup["pairs_df"].iloc[:40]
    data = EvalData(images=source.load_all(), pair_a=np.array([pos[i] for i in df["input_id"]]),
                    pair_b=np.array([pos[i] for i in df["reference_id"]]), same=df["is_same"].to_numpy(dtype=bool),
                    labels={}, class_names={})
    protocol = ProtocolSettings(mode="clean", n_folds=10, far_targets=[1e-3, 1e-2])
    m, _ = evaluate(predict(setup["model"], data.images, crop=160, input_size=80, embed=["identity"]), data,
                    [("identity", "verification")], protocol=protocol, seed=7)
    ref = m["verification"]
    assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert got["auc"] == pytest.approx(ref["auc"], abs=1e-9)
    assert got["fold_threshold"] == pytest.approx(ref["fold_threshold"], abs=1e-12)
    assert got["n_pairs"] == 40 and got["n_same"] == int(same.sum())


def test_image_files_are_resized_to_the_alignment_size(setup, tmp_path):
    crops = setup["crops"]
    small = cv2.resize(crops[3], (91, 91), interpolation=cv2.INTER_AREA)
    paths = [tmp_path / "full.png", tmp_path / "small.png"]
    cv2.imwrite(str(paths[0]), cv2.cvtColor(crops[5], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths[1]), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    res = _embed("-c", str(setup["ckpt"]), *map(str, paths), "--out", str(tmp_path / "img.npy"))
    assert res.exit_code == 0, res.output
    emb = np.load(tmp_path / "img.npy")
    from stages.embed import resize_faces

    expected = _expected(setup["model"], np.stack([crops[5], resize_faces(small[None], SIZE)[0]]))
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    # an aligned crop saved losslessly embeds as the same face read from the aligned folder
    np.testing.assert_allclose(emb[0], _expected(setup["model"], crops[5:6])[0], atol=1e-5)
    assert (tmp_path / "img.ids.txt").read_text().split() == [str(p) for p in paths]


def _one_error_line(res) -> str:
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize("case", ["missing_checkpoint", "not_a_checkpoint", "foreign_torch_file", "unknown_id",
                                  "failed_id", "empty_ids", "corrupt_image", "not_square", "no_input"])
def test_bad_inputs_give_one_error_line(setup, tmp_path, case):
    ckpt = str(setup["ckpt"])
    out = tmp_path / "e.npy"
    aligned = ["--aligned", str(setup["aligned"]), "--out", str(out)]
    ids = tmp_path / "ids.txt"
    if case == "missing_checkpoint":
        args, expect = ["-c", str(tmp_path / "nope.pt"), *aligned], "checkpoint not found"
    elif case == "not_a_checkpoint":
        (tmp_path / "notes.pt").write_text("not a checkpoint\n")
        args, expect = ["-c", str(tmp_path / "notes.pt"), *aligned], "is not a model checkpoint"
    elif case == "foreign_torch_file":
        torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
        args, expect = ["-c", str(tmp_path / "other.pt"), *aligned], "is not a model checkpoint"
    elif case == "unknown_id":
        ids.write_text(f"{setup['ids'][0]}\nt/S0/e0/99999\n")
        args, expect = ["-c", ckpt, *aligned, "--ids", str(ids)], "'t/S0/e0/99999'"
    elif case == "failed_id":
        ids.write_text(f"{FAILED_ID}\n")
        args, expect = ["-c", ckpt, *aligned, "--ids", str(ids)], "alignment failed (no_face"
    elif case == "empty_ids":
        ids.write_text("\n  \n")
        args, expect = ["-c", ckpt, *aligned, "--ids", str(ids)], "lists no image id"
    elif case == "corrupt_image":
        good = tmp_path / "good.png"
        cv2.imwrite(str(good), setup["crops"][0])
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(good.read_bytes()[:60])
        args, expect = ["-c", ckpt, str(good), str(bad), "--out", str(out)], f"{bad} (not a decodable image)"
    elif case == "not_square":
        img = tmp_path / "wide.png"
        cv2.imwrite(str(img), np.zeros((40, 60, 3), np.uint8))
        args, expect = ["-c", ckpt, str(img), "--out", str(out)], "pass --detect"
    else:
        args, expect = ["-c", ckpt, "--out", str(out)], "nothing to embed"
    line = _one_error_line(_embed(*args))
    assert expect in line
    assert not out.exists() and not (tmp_path / "e.ids.txt").exists()


def test_detect_reports_a_photo_without_a_face(setup, tmp_path):
    img = tmp_path / "wall.png"
    cv2.imwrite(str(img), np.full((90, 120, 3), 128, np.uint8))
    line = _one_error_line(_embed("-c", str(setup["ckpt"]), str(img), "--detect", "--out", str(tmp_path / "e.npy")))
    assert "no face found in 1 image(s)" in line and str(img) in line
