"""The report: tables from known per-fold metrics (mean ± std, rows, paper deltas, VAL floors, paired differences),
stale files never read, figures drawn, demo checks, and the stage's outputs and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.errors import DatasetError
from pipeline.report.demo_check import demo_checks, format_checks
from pipeline.report.figures import confusion_figure, roc_figure, step_tasks, weights_losses_figure
from pipeline.report.markdown import format_cell, format_interval
from pipeline.report.tables import (
    fold_table,
    method_label,
    ordered_methods,
    paired_bootstrap,
    paired_differences,
    read_results,
    summary_table,
)
from stages.app import app
from tests.conftest import tiny_params, write_params
from tests.settings_helpers import task_set

CLASSES = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"]
TASKS = task_set()  # fr_fer


def _metrics(ver: float, auc: float, expr: float | None, *, val: float | None = 0.5, floor: float = 0.01,
             epoch: int = 3) -> dict:
    """One ``M`` block of a finetune metrics file (only the fields the report reads, plus a confusion matrix)."""
    entry = ({"measurable": True, "val": val, "far_floor": floor} if val is not None else
             {"measurable": False, "val": None, "far_floor": floor})
    m = {"epoch": epoch, "verification": {"accuracy": ver, "auc": auc, "val_at_far": {"0.001": entry,
                                                                                      "0.01": entry}}}
    if expr is not None:
        confusion = np.zeros((6, 6), int)
        hits = round(expr * 12)
        confusion[0, 0], confusion[0, 1] = hits, 12 - hits
        m["expression"] = {"accuracy": expr, "class_names": CLASSES, "confusion": confusion.tolist()}
    return m


def _record(dataset: str, fold: int, method: str, last: dict, best: dict | None = None,
            selected_on: str = "test_fold") -> dict:
    best = best or last
    return {"dataset": dataset, "fold": fold, "method": method, "selection": selected_on, "last": last,
            "best": {"selected_on": selected_on, "verification": best, "expression": best, "authentication": best}}


#: (verification, auc, expression) per fold: dynamic, static, pretrained (no expression head), pixel
KNOWN = {
    "dynamic": [(0.90, 0.95, 0.50), (0.94, 0.97, 0.40), (0.86, 0.93, 0.60)],
    "static": [(0.88, 0.94, 0.30), (0.93, 0.96, 0.35), (0.85, 0.92, 0.40)],
    "pretrained": [(0.80, 0.90, None), (0.82, 0.91, None), (0.78, 0.89, None)],
    "pixel_pca": [(0.60, 0.70, 0.25), (0.62, 0.72, 0.20), (0.58, 0.68, 0.30)],
}


def _write_known(metrics_dir: Path, dataset: str = "demo_oulu", folds=(0, 1, 2), methods=tuple(KNOWN)) -> None:
    metrics_dir.mkdir(parents=True, exist_ok=True)
    known = {**KNOWN, "naive_dynamic": KNOWN["static"]}
    for method in methods:
        for fold in folds:
            ver, auc, expr = known[method][fold]
            best = _metrics(min(ver + 0.02, 1.0), auc, None if expr is None else expr + 0.05, epoch=2)
            rec = _record(dataset, fold, method, _metrics(ver, auc, expr), best)
            (metrics_dir / f"fold{fold}-{method}.json").write_text(json.dumps(rec))


def test_summary_is_mean_and_population_std_in_percent_with_paper_deltas(tmp_path):
    _write_known(tmp_path)
    res = read_results(tmp_path, "demo_oulu", [0, 1, 2], ["pixel_pca", "static", "dynamic", "pretrained"])
    table = summary_table(res, 1e-3, "ckplus", TASKS).set_index(["method", "variant"])
    # rows in the paper's order whatever the params order, the pixel baseline last
    assert list(dict.fromkeys(table.index.get_level_values(0))) == ["pretrained", "static", "dynamic", "pixel_pca"]
    dyn = table.loc[("dynamic", "last")]
    assert dyn["verification_mean"] == pytest.approx(90.0)
    assert dyn["verification_std"] == pytest.approx(np.std([90.0, 94.0, 86.0]))  # ddof 0: 3.266
    assert dyn["expression_mean"] == pytest.approx(50.0) and dyn["expression_std"] == pytest.approx(8.16497, 1e-4)
    assert dyn["val_mean"] == pytest.approx(50.0) and dyn["val_std"] == pytest.approx(0.0)
    assert dyn["verification_paper"] == 99.0 and dyn["verification_delta"] == pytest.approx(-9.0)
    assert dyn["expression_paper"] == 99.5 and dyn["expression_delta"] == pytest.approx(-49.5)
    best = table.loc[("dynamic", "best")]
    assert best["verification_mean"] == pytest.approx(92.0) and best["expression_mean"] == pytest.approx(55.0)
    pre = table.loc[("pretrained", "last")]
    assert np.isnan(pre["expression_mean"]) and pre["expression_n"] == 0  # no expression head: no number
    assert pre["verification_paper"] == 92.0 and np.isnan(pre["expression_paper"])
    assert np.isnan(table.loc[("pixel_pca", "last")]["verification_paper"])  # not reported by the paper
    # Oulu-CASIA: the paper gives only dynamic's expression accuracy
    oulu = summary_table(res, 1e-3, "oulu_casia", TASKS).set_index(["method", "variant"])
    assert oulu.loc[("dynamic", "last")]["expression_paper"] == 89.6
    assert np.isnan(oulu.loc[("dynamic", "last")]["verification_paper"])
    assert summary_table(res, 1e-3, None, TASKS)[["verification_paper", "expression_paper"]].isna().all().all()


def test_val_below_the_far_floor_is_not_averaged(tmp_path):
    _write_known(tmp_path, methods=("dynamic",))
    rec = json.loads((tmp_path / "fold1-dynamic.json").read_text())
    rec["last"] = _metrics(0.9, 0.9, 0.5, val=None, floor=0.0125)
    (tmp_path / "fold1-dynamic.json").write_text(json.dumps(rec))
    res = read_results(tmp_path, "demo_oulu", [0, 1, 2], ["dynamic"])
    row = summary_table(res, 1e-3, None, TASKS).set_index("variant").loc["last"]
    assert np.isnan(row["val_mean"]) and row["val_floor"] == 0.0125
    assert format_cell(row["val_mean"], row["val_std"], row["val_floor"]) == "n/a (floor 0.013)"
    assert format_cell(None, None, float("inf")) == "n/a (no different-identity pairs)"
    assert format_cell(None, None) == "–" and format_cell(91.234, 1.5) == "91.23 ± 1.50"
    folds = fold_table(res, 1e-3, TASKS)
    f1 = folds[(folds["fold"] == 1) & (folds["variant"] == "last")].iloc[0]
    assert np.isnan(f1["val"]) and f1["val_floor"] == 0.0125
    assert folds[(folds["fold"] == 0) & (folds["variant"] == "last")].iloc[0]["val"] == 0.5


def test_a_fold_removed_from_the_params_is_not_read_from_a_stale_file(tmp_path):
    _write_known(tmp_path)  # folds 0-2 on disk
    res = read_results(tmp_path, "demo_oulu", [0, 1], ["dynamic"])
    row = summary_table(res, 1e-3, None, TASKS).set_index("variant").loc["last"]
    assert row["verification_n"] == 2 and row["verification_mean"] == pytest.approx(92.0)
    assert sorted(fold_table(res, 1e-3, TASKS)["fold"].unique()) == [0, 1]
    with pytest.raises(DatasetError, match=r"no metrics for fold3-dynamic.json .*dvc repro"):
        read_results(tmp_path, "demo_oulu", [0, 3], ["dynamic"])
    # a file that holds another fold (copied by hand) is refused, not averaged in
    (tmp_path / "fold1-dynamic.json").write_text((tmp_path / "fold2-dynamic.json").read_text())
    with pytest.raises(DatasetError, match="holds dataset/fold/method"):
        read_results(tmp_path, "demo_oulu", [0, 1], ["dynamic"])
    (tmp_path / "fold0-dynamic.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable metrics file"):
        read_results(tmp_path, "demo_oulu", [0], ["dynamic"])


def test_paired_differences_use_the_same_folds_and_a_seeded_bootstrap(tmp_path):
    _write_known(tmp_path)
    res = read_results(tmp_path, "demo_oulu", [0, 1, 2], list(KNOWN))
    diffs = paired_differences(res, "dynamic", 1e-3, TASKS, n_boot=2000, confidence=0.95, seed=0)
    assert "dynamic" not in set(diffs["method"])
    static = diffs[(diffs["method"] == "static") & (diffs["variant"] == "last")].set_index("metric")
    # per fold static − dynamic: −2, −1, −1 points of verification; −20, −5, −20 of expression
    assert static.loc["verification", "mean"] == pytest.approx(-4 / 3)
    assert static.loc["expression", "mean"] == pytest.approx(-15.0)
    assert static.loc["verification", "ci_low"] == pytest.approx(-2.0)  # a resample of fold 0 only
    assert static.loc["verification", "ci_high"] == pytest.approx(-1.0)  # of folds 1 and 2 only
    assert static.loc["expression", "ci_low"] == pytest.approx(-20.0)
    # the pretrained model has no expression: no pairs to difference, no number
    pre = diffs[(diffs["method"] == "pretrained") & (diffs["variant"] == "last")].set_index("metric")
    assert pre.loc["expression", "folds"] == 0 and np.isnan(pre.loc["expression", "mean"])
    assert format_interval(pre.loc["expression", "mean"], 0, 0) == "–"
    again = paired_differences(res, "dynamic", 1e-3, TASKS, n_boot=2000, confidence=0.95, seed=0)
    pd.testing.assert_frame_equal(diffs, again)


def test_paired_bootstrap_interval():
    assert paired_bootstrap([1.5, 1.5, 1.5], n_boot=500, confidence=0.95, seed=1) == (1.5, 1.5, 1.5)
    assert paired_bootstrap([2.0], n_boot=500, confidence=0.95, seed=1) == (2.0, 2.0, 2.0)
    mean, lo, hi = paired_bootstrap([0.0, 1.0, 2.0, 3.0, 4.0], n_boot=5000, confidence=0.9, seed=3)
    assert mean == 2.0 and 0.0 < lo < 2.0 < hi < 4.0
    _, lo2, hi2 = paired_bootstrap([0.0, 2.0, 4.0, 6.0, 8.0], n_boot=5000, confidence=0.9, seed=3)
    assert hi2 - lo2 == pytest.approx(2 * (hi - lo))  # same resamples, twice the spread
    with pytest.raises(ValueError, match="no paired differences"):
        paired_bootstrap([], n_boot=10, confidence=0.9, seed=0)


def test_row_order_and_labels():
    assert ordered_methods(["gradnorm", "dynamic", "pixel_pca", "my_method", "pretrained", "static",
                            "single_expression", "single_identity"], TASKS) == [
        "pretrained", "single_identity", "single_expression", "static", "dynamic", "gradnorm", "my_method",
        "pixel_pca"]
    assert method_label("single_identity", TASKS) == "single-task identity (fine-tuned)"
    assert method_label("single_expression", TASKS) == "single-task expression"
    assert method_label("gradnorm", TASKS) == "GradNorm (Chen et al. 2018)" and method_label("x", TASKS) == "x"


def _png_pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_figures_are_drawn_for_any_number_of_tasks(tmp_path):
    steps = pd.DataFrame({"step": np.arange(1, 21), "loss_identity": np.linspace(5, 1, 20),
                          "loss_expression": np.linspace(2, 1, 20), "loss_cari": np.linspace(3, 2, 20),
                          "weight_identity": np.linspace(0.3, 0.6, 20), "weight_expression": np.full(20, 0.3),
                          "weight_cari": np.linspace(0.4, 0.1, 20), "weight_loss": np.ones(20)})
    assert step_tasks(steps) == ["identity", "expression", "cari"]  # weight_loss is the unit's loss, not a task
    out = weights_losses_figure({"dynamic": steps, "naive_dynamic": steps}, tmp_path / "w.png", title="t")
    pixels = _png_pixels(out)
    assert pixels.shape[0] > 300 and pixels.std() > 0.05  # drawn, not blank
    rng = np.random.default_rng(0)
    same = np.repeat([True, False], 50)
    scores = {"dynamic": [(np.where(same, 0.3, 0.9) + rng.normal(0, 0.1, 100), same)] * 2}
    assert _png_pixels(roc_figure(scores, tmp_path / "roc.png", title="t")).std() > 0.05
    conf = {"a": np.eye(6, dtype=int) * 5, "b": np.ones((6, 6), int)}
    assert _png_pixels(confusion_figure(conf, CLASSES, tmp_path / "c.png", title="t")).std() > 0.05
    with pytest.raises(ValueError, match="no curves"):
        weights_losses_figure({}, tmp_path / "x.png", title="t")


def test_demo_checks_pass_and_fail_on_the_measured_values(tmp_path):
    _write_known(tmp_path)
    res = read_results(tmp_path, "demo_oulu", [0, 1, 2], list(KNOWN))
    summary = summary_table(res, 1e-3, None, TASKS)
    checks = demo_checks(aligned_fractions={"demo_oulu": 0.99, "demo_webface": 0.94}, summary=summary,
                         methods=list(KNOWN), n_classes={"expression": 6})
    verdict = {c.name: c.passed for c in checks}
    assert verdict == {"alignment demo_oulu": True, "alignment demo_webface": False,
                       "dynamic expression accuracy": True,  # 0.50 >= 2/6
                       "dynamic verification accuracy": True,  # 0.90 >= 0.75
                       "pixel_pca verification accuracy": True,  # 0.60 <= 0.65
                       "every method in the table": True}
    text = format_checks(checks)
    assert "FAIL  alignment demo_webface" in text and text.count("PASS") == 5
    # 7 classes: chance 1/7, still passed; 2 classes: 2 x 0.5 = 1.0 > 0.50, failed
    two = {c.name: c.passed for c in demo_checks(aligned_fractions={}, summary=summary, methods=list(KNOWN),
                                                 n_classes={"expression": 2})}
    assert two["dynamic expression accuracy"] is False


# --- the stage ------------------------------------------------------------------------------------------------


def _stage_inputs(root: Path, folds=(0, 1), methods=("pretrained", "static", "dynamic", "naive_dynamic")) -> dict:
    """Synthetic outputs of the finetune/pixel/align stages in ``root``; returns the params."""
    params = tiny_params(**{"folds.run": list(folds), "finetune.run_methods": list(methods)})
    _write_known(root / "metrics/finetune/demo_oulu", folds=folds, methods=(*methods, "pixel_pca"))
    rng = np.random.default_rng(0)
    for method in (*methods, "pixel_pca"):
        for fold in folds:
            d = root / f"data/finetune/demo_oulu/fold{fold}-{method}"
            d.mkdir(parents=True)
            same = np.repeat([True, False], 20)
            np.savez(d / "scores.npz", last_distances=np.where(same, 0.4, 0.8) + rng.normal(0, 0.2, 40),
                     last_same=same)
            n = 24
            pd.DataFrame({"step": np.arange(1, n + 1), "epoch": np.repeat([1, 2], 12), "lr": 1e-3,
                          "loss_identity": np.linspace(6, 1, n), "loss_expression": np.linspace(2, 1.5, n),
                          "weight_identity": np.linspace(0.5, 0.2, n), "weight_expression": np.linspace(0.5, 0.8, n),
                          "weight_loss": 0.1}).to_csv(d / "steps.csv", index=False)
    for name, frac in (("demo_oulu", 0.999), ("demo_webface", 0.97)):
        (root / "metrics/align").mkdir(parents=True, exist_ok=True)
        (root / f"metrics/align/{name}.json").write_text(json.dumps({"aligned_fraction": frac}))
    return params


def _invoke(root: Path, params: dict, *args: str):
    path = write_params(root / "params.yaml", params)
    return CliRunner().invoke(app, ["--params", str(path), "report", *args])


def test_report_stage_writes_tables_figures_checks_and_metrics(tmp_path, monkeypatch, no_mlflow):
    monkeypatch.chdir(tmp_path)
    params = _stage_inputs(tmp_path)
    res = _invoke(tmp_path, params)
    assert res.exit_code == 0, res.output
    assert "report demo_oulu: 5 methods x 2 folds -> reports/tables.md" in res.output
    assert "PASS  dynamic verification accuracy" in res.output
    md = (tmp_path / "reports/tables.md").read_text()
    assert "## Last epoch" in md and "## Best epoch (selected on the test fold" in md
    # last epoch, folds 0-1 of dynamic: verification 90, 94 -> 92.00 ± 2.00; Oulu-CASIA expression 89.60 beside ours
    assert "| dynamic (paper) | 92.00 ± 2.00 | 50.00 ± 0.00 | 96.00 ± 1.00 | 45.00 ± 5.00 | not reported |  | " \
           "89.60 | -44.60 |" in md
    assert "| raw-pixel PCA, no learning |" in md and "Folds 0, 1 of 10" in md
    csv = pd.read_csv(tmp_path / "reports/tables.csv")
    assert len(csv) == 5 * 2 and set(csv["variant"]) == {"last", "best"}
    folds = pd.read_csv(tmp_path / "reports/folds.csv")
    assert len(folds) == 5 * 2 * 2 and sorted(folds["fold"].unique()) == [0, 1]
    assert len(pd.read_csv(tmp_path / "reports/differences.csv")) == 4 * 2 * 3
    for name in ("weights_losses.png", "roc.png", "confusion.png"):
        assert _png_pixels(tmp_path / "reports/figures" / name).std() > 0.05, name
    assert "![Task weights and losses per step](figures/weights_losses.png)" in md
    summary = json.loads((tmp_path / "metrics/report.json").read_text())
    assert summary["methods"]["dynamic"]["last"]["verification"] == 92.0
    assert summary["methods"]["pretrained"]["last"]["expression"] is None
    assert summary["demo_passed"] is True
    by_method = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "metrics/summary").rglob("*.json"))
    assert by_method == sorted(f"metrics/summary/demo_oulu/{m}.json" for m in summary["methods"])
    assert json.loads((tmp_path / "metrics/summary/demo_oulu/dynamic.json").read_text()) == \
        summary["methods"]["dynamic"]["best"]
    checks = (tmp_path / "reports/demo_check.txt").read_text()
    assert checks.count("PASS") == 6 and "FAIL" not in checks
    first = {p: p.read_bytes() for p in sorted((tmp_path / "reports").rglob("*")) if p.is_file()}
    assert _invoke(tmp_path, params).exit_code == 0  # deterministic: the same bytes again
    assert {p: p.read_bytes() for p in sorted((tmp_path / "reports").rglob("*")) if p.is_file()} == first


def test_report_stage_reads_only_the_listed_folds_and_methods(tmp_path, monkeypatch, no_mlflow):
    monkeypatch.chdir(tmp_path)
    params = _stage_inputs(tmp_path, folds=(0, 1, 2))
    res = _invoke(tmp_path, {**params, "folds": {**params["folds"], "run": [0, 2]},
                             "finetune": {**params["finetune"], "run_methods": ["dynamic", "static"]},
                             "report": {**params["report"], "pixel_baseline": False}}, "--quiet")
    assert res.exit_code == 0, res.output
    folds = pd.read_csv(tmp_path / "reports/folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 2] and set(folds["method"]) == {"static", "dynamic"}
    assert "PASS" not in res.output  # --quiet
    md = (tmp_path / "reports/tables.md").read_text()
    # dynamic on folds 0 and 2 (90, 86); the naive variant is not run, so only dynamic's curves are drawn
    assert "| dynamic (paper) | 88.00 ± 2.00 |" in md and "naive dynamic" not in md


def test_report_stage_errors_are_one_line_and_leave_no_partial_outputs(tmp_path, monkeypatch, no_mlflow):
    monkeypatch.chdir(tmp_path)
    params = _stage_inputs(tmp_path)
    (tmp_path / "metrics/finetune/demo_oulu/fold1-static.json").unlink()
    res = _invoke(tmp_path, params)
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "error: metrics/finetune/demo_oulu: no metrics for fold1-static.json (run `dvc repro` to produce them)"]
    assert not (tmp_path / "reports").exists() and not (tmp_path / "metrics/report.json").exists()
    assert not (tmp_path / "metrics/summary").exists()
    _stage_inputs(tmp_path / "again")
    monkeypatch.chdir(tmp_path / "again")
    (tmp_path / "again/data/finetune/demo_oulu/fold0-naive_dynamic/steps.csv").unlink()
    res = _invoke(tmp_path / "again", params)
    assert res.exit_code == 1 and "fold0-naive_dynamic/steps.csv not found" in res.output
    assert not (tmp_path / "again/reports/tables.md").exists()
    assert not (tmp_path / "again/reports/figures").exists()
    assert not list((tmp_path / "again").rglob("*.tmp-*"))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("reference", "nope", "report.reference: 'nope' is not in finetune.run_methods"),
    ("val_far", 0.05, "report.val_far: 0.05 is not one of finetune.common.protocol.far_targets"),
    ("curves_methods", ["dynamc"], "report.curves_methods: unknown method(s) ['dynamc']"),
    ("curves_fold", 7, "report.curves_fold: 7 is not in folds.run"),
    ("bootstrap", 5, "report.bootstrap"),
])
def test_report_stage_refuses_bad_params(tmp_path, monkeypatch, no_mlflow, key, value, message):
    monkeypatch.chdir(tmp_path)
    params = _stage_inputs(tmp_path)
    params["report"][key] = value
    res = _invoke(tmp_path, params)
    assert res.exit_code != 0 and message in res.output, res.output
    assert not (tmp_path / "reports").exists()
