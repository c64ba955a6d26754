"""End to end on the real datasets' layouts: every stage through `report` on tiny Oulu-CASIA-, CK+- and
CASIA-WebFace-layout folders (licensed sources), switching from one dataset to the other by params alone.

The fixture folders have the exact on-disk layout of the real archives (``tests/fixtures_layouts.py``) with faces
drawn by the demo renderer, so MTCNN aligns them and the readers, label sets, folds, pair recipe and the report's
benchmark columns run as they would on the real data.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import cv2
import pandas as pd
import pytest

from pipeline.data.demo import EXPRESSIONS, render_expression_sequence, render_identity_image
from tests.conftest import TINY_FINETUNE, copy_repo, run_checked, tiny_params, write_params
from tests.fixtures_layouts import build_casia, build_ckplus, build_oulu

pytestmark = pytest.mark.e2e

SEED = 5
FRAMES = 5
#: CK+ emotion codes of the six expressions the demo renderer draws (2 = contempt is not drawn)
CKPLUS_CODES = {"Anger": 1, "Disgust": 3, "Fear": 4, "Happiness": 5, "Sadness": 6, "Surprise": 7}


@functools.lru_cache(maxsize=64)
def _sequence(identity: int, expression: str, n: int) -> tuple:
    return tuple(r.image for r in render_expression_sequence(SEED, identity, expression, frames=(n, n),
                                                             image_size=(200, 150)))


def _save(path: Path, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(buf.tobytes())


def _oulu_frame(path: Path, subject: int, expression: str | None, frame: int, n: int) -> None:
    _save(path, _sequence(subject, expression, n)[frame])


def _ckplus_frame(path: Path, subject: int, label: str | None, frame: int, n: int) -> None:
    code = round(float(label))
    expression = next(e for e, c in CKPLUS_CODES.items() if c == code)
    _save(path, _sequence(100 + subject, expression, n)[frame])


def _casia_image(path: Path, subject: int, expression: str | None, index: int, n: int) -> None:
    _save(path, render_identity_image(SEED, 1000 + subject, index, image_size=(128, 128)).image)


def _params(roots: dict[str, Path], dataset: str) -> dict:
    params = tiny_params(**{
        "folds.k": 2, "folds.run": [0], "finetune.run_methods": ["pretrained", "dynamic", "static"], **TINY_FINETUNE,
        "finetune.common.dataset": dataset, "pretrain.train.dataset": "webface",
        "pretrain.train.verification.dataset": "oulu", "pretrain.train.verification.folds": [0, 1],
        "report.curves_methods": ["dynamic"], "report.bootstrap": 200})
    licensed = {"kind": "licensed"}
    params["datasets"] = {
        "oulu": {"reader": "oulu_casia", "root": str(roots["oulu"]), "role": "finetune", "label_set": "oulu_six",
                 "align_convention": "paper_182_44", "source": licensed, "options": {"keep_first": 1, "keep_last": 3},
                 "expected": {"subjects": 4, "sequences": 24}},
        "ckplus": {"reader": "ckplus", "root": str(roots["ckplus"]), "role": "finetune", "label_set": "ckplus_eight",
                   "align_convention": "paper_182_44", "source": licensed, "options": {},
                   "expected": {"sequences": 24, "labelled_sequences": 24}},
        "webface": {"reader": "casia_webface", "root": str(roots["webface"]), "role": "pretrain", "label_set": None,
                    "align_convention": "paper_182_44", "source": licensed,
                    "options": {"min_images_per_subject": 1}, "expected": {}},
    }
    template = params["folds"]["datasets"]["demo_oulu"]
    params["folds"]["datasets"] = {
        "oulu": template,
        "ckplus": {**template, "pairs": {**template["pairs"], "required": ["happy", "surprise"]}},
    }
    return params


@pytest.fixture(scope="module")
def real_layout_repo(tmp_path_factory):
    base = tmp_path_factory.mktemp("real")
    subjects = {f"P{i:03d}": {e: FRAMES for e in EXPRESSIONS} for i in range(1, 5)}
    sessions = {(f"S{10 + i:03d}", f"{k + 1:03d}"): (FRAMES, f"   {CKPLUS_CODES[e]}.0000000e+00\n")
                for i in range(4) for k, e in enumerate(EXPRESSIONS)}
    identities = {f"{i:07d}": [f"{j:03d}.jpg" for j in range(1, 5)] for i in range(1, 5)}
    roots = {"oulu": build_oulu(base / "oulu", subjects, write=_oulu_frame),
             "ckplus": build_ckplus(base / "ck", sessions, write=_ckplus_frame),
             "webface": build_casia(base / "webface", identities, write=_casia_image)}
    dst = base / "repo"
    env = copy_repo(dst, _params(roots, "oulu"))
    first = run_checked([sys.executable, "-m", "dvc", "repro"], dst, env).stdout
    oulu_table = (dst / "reports/tables.md").read_text()
    oulu_summary = json.loads((dst / "metrics/report.json").read_text())
    write_params(dst / "params.yaml", _params(roots, "ckplus"))
    stale = set(json.loads(run_checked([sys.executable, "-m", "dvc", "status", "--json"], dst, env).stdout))
    second = run_checked([sys.executable, "-m", "dvc", "repro"], dst, env).stdout
    return {"dst": dst, "first": first, "second": second, "stale": stale, "oulu_table": oulu_table,
            "oulu_summary": oulu_summary}


def test_oulu_casia_layout_runs_every_stage_to_the_report(real_layout_repo):
    r = real_layout_repo
    for stage in ("download@oulu", "manifest@oulu", "align@oulu", "folds@oulu", "pretrain", "finetune@0-dynamic",
                  "pixel_baseline@0", "report"):
        assert f"Running stage '{stage}'" in r["first"], stage
    table = r["oulu_table"]
    assert "**Data: Oulu-CASIA** (`oulu`)" in table and "embedded demo" not in table
    last = table.split("## Last epoch")[1].split("## Best epoch")[0]
    dynamic = next(line for line in last.splitlines() if line.startswith("| dynamic (paper) |"))
    # the paper gives Oulu-CASIA's expression accuracy of dynamic only
    assert "| not reported |  | 89.60 |" in dynamic
    static = next(line for line in last.splitlines() if line.startswith("| static MTL |"))
    assert static.count("not reported") == 2
    assert r["oulu_summary"]["demo"] is False and r["oulu_summary"]["demo_checks"] == []
    assert set(r["oulu_summary"]["methods"]) == {"pretrained", "dynamic", "static", "pixel_pca"}


def test_switching_to_ckplus_is_a_params_edit_that_reruns_only_the_fine_tuning_side(real_layout_repo):
    r = real_layout_repo
    # download/manifest/align/folds of every dataset already ran (foreach); the pretrained model is unchanged
    assert not any(s.startswith(("download@", "manifest@", "align@", "folds@")) or s == "pretrain" for s in r["stale"])
    assert {"finetune@0-dynamic", "pixel_baseline@0", "report"} <= r["stale"]
    dst = r["dst"]
    table = (dst / "reports/tables.md").read_text()
    assert "**Data: CK+** (`ckplus`)" in table
    last = table.split("## Last epoch")[1].split("## Best epoch")[0]
    rows = {line.split(" | ")[0][2:]: line for line in last.splitlines() if line.startswith("| ")}
    assert "| 99.00 |" in rows["dynamic (paper)"] and "| 99.50 |" in rows["dynamic (paper)"]
    assert "| 98.50 |" in rows["static MTL"] and "| 99.11 |" in rows["static MTL"]
    assert "| 92.00 |" in rows["pretrained single-task, no fine-tuning"]
    folds = pd.read_csv(dst / "reports/folds.csv")
    assert set(folds["dataset"]) == {"ckplus"} and folds["verification"].notna().all()
    metrics = json.loads((dst / "metrics/finetune/ckplus/fold0-dynamic.json").read_text())
    assert metrics["last"]["expression"]["class_names"][0] == "neutral"  # the 8 CK+ classes, neutral first frames
    assert len(metrics["last"]["expression"]["class_names"]) == 8
    assert "no demo targets: ckplus is not demo data" in (dst / "reports/demo_check.txt").read_text()
