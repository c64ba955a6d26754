"""The disjoint-datasets report (stage ``disjoint_report``) on fabricated metrics, refreshes and steps: the gap to
``full_labels``, mean ± std only with several folds, bootstrap intervals only with ≥ 3, pseudo-label precision by
confidence alone, the demo checks flipping with the numbers, and one-line errors for missing runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.config import load_params
from pipeline.report.disjoint_tables import differences, method_rows, refresh_precision
from pipeline.report.tables import columns
from stages.app import app
from tests.conftest import REPO, tiny_params, write_params

TASKS = load_params(REPO / "params.yaml").task_sets["fr_fer"]
COLS = columns(1e-3, TASKS)
METHODS = ["all_in_one", "alternating_none", "sa_mtl", "sa_mtl_hard", "sa_mtl_dynamic", "full_labels"]
CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise"]


def block(epoch: int, ver: float, expr: float) -> dict:
    return {"epoch": epoch, "verification_accuracy": ver, "expression_accuracy": expr,
            "verification": {"accuracy": ver, "auc": ver, "val_at_far": {
                "0.001": {"val": None, "measurable": False, "far_floor": 0.005},
                "0.01": {"val": 0.3, "measurable": True, "far_floor": 0.005}}},
            "expression": {"accuracy": expr, "class_names": CLASSES}}


def record(method: str, fold: int, ver: float, expr: float) -> dict:
    m = block(4, ver, expr)
    return {"dataset": "demo_oulu", "fold": fold, "method": method, "mode": "joint", "transfer": "none",
            "weighting": "static", "last": m, "best": {"selected_on": "test_fold", "verification": m,
                                                       "expression": m, "authentication": m}}


def pseudo_table(confidence: list[float], pseudo: list[int], truth: list[int], selected: list[bool]) -> pd.DataFrame:
    n = len(pseudo)
    return pd.DataFrame({"image_id": [f"i{k}" for k in range(n)], "task": "expression", "pseudo": pseudo,
                         "confidence": confidence, "density": 1.0, "distribution": 1.0, "weight": confidence,
                         "selected": selected, "truth": truth})


#: 10 pseudo labels: the 2 most confident are right, 2 of the other 8 (precision of all: 4/10)
GOOD = pseudo_table([0.9, 0.8, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55], [1, 2, 0, 0, 0, 0, 0, 0, 3, 4],
                    [1, 2, 5, 5, 5, 5, 5, 5, 3, 4], [True] * 2 + [False] * 8)


def test_method_rows_give_the_gap_to_full_labels_and_no_std_with_one_fold():
    records = {(m, 0): record(m, 0, 0.8, 0.3) for m in METHODS}
    records[("full_labels", 0)] = record("full_labels", 0, 0.85, 0.45)
    rows = method_rows(records, METHODS, [0], COLS, "last", 1e-3).set_index("method")
    assert rows.loc["sa_mtl", "expression_gap"] == pytest.approx(-15.0)
    assert rows.loc["sa_mtl", "verification_gap"] == pytest.approx(-5.0)
    assert rows.loc["full_labels", "expression_gap"] == pytest.approx(0.0)
    assert rows.loc["sa_mtl", "verification_n"] == 1
    assert rows.loc["sa_mtl", "val_floor"] == 0.005  # VAL@1e-3 below the floor: not measurable


def test_differences_have_an_interval_only_with_three_folds():
    folds = [0, 1, 2]
    records = {(m, f): record(m, f, 0.8, 0.3 + 0.01 * f) for m in ("sa_mtl", "all_in_one") for f in folds}
    for f in folds:
        records[("all_in_one", f)] = record("all_in_one", f, 0.8, 0.35 + 0.02 * f)
    d = differences(records, ["all_in_one", "sa_mtl"], folds, COLS, "sa_mtl", "last", 1e-3, n_boot=200,
                    confidence=0.95, seed=0).set_index("metric")
    assert d.loc["expression", "mean"] == pytest.approx(np.mean([5.0, 6.0, 7.0]))
    assert 5.0 - 1e-9 <= d.loc["expression", "ci_low"] <= d.loc["expression", "ci_high"] <= 7.0 + 1e-9
    two = differences(records, ["all_in_one", "sa_mtl"], folds[:2], COLS, "sa_mtl", "last", 1e-3, n_boot=200,
                      confidence=0.95, seed=0).set_index("metric")
    assert two.loc["expression", "mean"] == pytest.approx(5.5) and np.isnan(two.loc["expression", "ci_low"])


def test_refresh_precision_counts_the_confidence_alone_selection_at_the_methods_quantile():
    (p,) = refresh_precision("sa_mtl_hard", 0, {3: GOOD}, 0.8)
    assert (p.epoch, p.task, p.images, p.selected) == (3, "expression", 10, 2)
    assert p.precision_all == pytest.approx(0.4)
    assert p.precision_selected == pytest.approx(1.0)
    # int(0.8 * 10) = 8: the threshold is the 9th smallest confidence (0.8), kept strictly above it: only 0.9
    assert p.precision_confidence == pytest.approx(1.0)
    # int(0.3 * 10) = 3: threshold 0.35; kept 0.4, 0.45 (wrong) and 0.5, 0.55, 0.8, 0.9 (right)
    (q,) = refresh_precision("sa_mtl_hard", 0, {3: GOOD}, 0.3)
    assert q.precision_confidence == pytest.approx(4 / 6)
    assert p.coverage == pytest.approx(0.2)


def write_layout(root, records: dict, pseudo: dict[str, pd.DataFrame], *, steps: bool = True) -> None:
    for (m, f), rec in records.items():
        path = root / "metrics/disjoint" / f"fold{f}-{m}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))
    for m, table in pseudo.items():
        folder = root / "data/disjoint" / f"fold0-{m}" / "pseudo"
        folder.mkdir(parents=True, exist_ok=True)
        table.to_parquet(folder / "3.parquet", index=False)
    if steps:
        folder = root / "data/disjoint/fold0-sa_mtl_dynamic"
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"step": [1, 2], "weight_identity": [0.5, 0.6], "weight_expression": [0.5, 0.4],
                      "present_identity": [1, 0], "present_expression": [1, 1]}).to_csv(folder / "steps.csv")


def run_report(root, monkeypatch, **overrides):
    write_params(root / "params.yaml", tiny_params(**{"finetune.datasets": [], **overrides}))
    monkeypatch.chdir(root)
    monkeypatch.setenv("DMTL_MLFLOW", "0")
    return CliRunner().invoke(app, ["--params", "params.yaml", "disjoint_report"])


def test_the_stage_writes_the_tables_and_the_demo_checks_flip_with_the_numbers(tmp_path, monkeypatch):
    records = {(m, 0): record(m, 0, 0.8, 0.4) for m in METHODS}
    write_layout(tmp_path, records, {"sa_mtl_hard": GOOD})
    res = run_report(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "reports/disjoint_tables.md").read_text()
    assert "synthetic demo numbers" in md and "not transcribed" in md
    assert "| sa_mtl_hard | 0 | 3 | expression | 10 | 20.0 | 40.0 | 100.0 | 100.0 |" in md
    checks = (tmp_path / "reports/disjoint_demo_check.txt").read_text()
    assert "PASS  all_in_one expression accuracy" in checks  # 0.40 >= 2/6
    assert "PASS  sa_mtl_hard epoch 3 expression" in checks
    assert "PASS  sa_mtl_dynamic steps.csv" in checks
    summary = json.loads((tmp_path / "metrics/disjoint_report.json").read_text())
    assert summary["demo_passed"] is True
    # weaker expression and pseudo labels whose confident ones are wrong: the same checks fail
    records[("all_in_one", 0)] = record("all_in_one", 0, 0.8, 0.3)
    bad = GOOD.assign(truth=[0, 0, 0, 0, 0, 0, 0, 0, 3, 4])
    write_layout(tmp_path, records, {"sa_mtl_hard": bad})
    res = run_report(tmp_path, monkeypatch)
    assert res.exit_code == 0, res.output
    checks = (tmp_path / "reports/disjoint_demo_check.txt").read_text()
    assert "FAIL  all_in_one expression accuracy" in checks
    assert "FAIL  sa_mtl_hard epoch 3 expression" in checks
    assert json.loads((tmp_path / "metrics/disjoint_report.json").read_text())["demo_passed"] is False


def test_a_missing_run_is_one_line_and_leaves_no_report(tmp_path, monkeypatch):
    records = {(m, 0): record(m, 0, 0.8, 0.4) for m in METHODS if m != "sa_mtl"}
    write_layout(tmp_path, records, {})
    res = run_report(tmp_path, monkeypatch)
    assert res.exit_code != 0
    assert "metrics/disjoint: no metrics for fold0-sa_mtl.json (run `dvc repro` to produce them)" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "reports/disjoint_tables.md").exists()
