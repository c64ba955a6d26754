"""The results report: the paper's table with the paper's numbers beside ours, paired differences, figures.

Reads the metrics of every fold in ``folds.run`` × method in ``finetune.run_methods`` (plus ``pixel_pca`` when
``report.pixel_baseline``), exactly those files: a fold or method removed from the params is not picked up from a
stale file. Writes (all replaced together, never half-written):

- ``reports/tables.md``: last-epoch and best-epoch tables (mean ± std over folds, the paper's numbers and Δ),
  paired differences to ``report.reference`` with bootstrap intervals, the figures;
- ``reports/tables.csv`` (one row per method × variant), ``reports/folds.csv`` (one row per method × fold ×
  variant), ``reports/differences.csv``;
- ``reports/figures/``: ``weights_losses.png`` (task weights above task losses per step, ``report.curves_methods``
  on ``report.curves_fold``), ``roc.png``, ``confusion.png``;
- ``reports/demo_check.txt``: on demo data, PASS/FAIL per demo target (``make demo`` prints it);
- ``metrics/report.json``: the means per method and variant and the demo checks (``dvc metrics diff``).

MLflow: a ``report`` run with the tables and figures as artifacts, tagged with the group key of the
configuration; the fold runs of the table are nested under it (those whose outputs DVC restored from its cache
are listed in ``fold_runs.json``, with the run they came from when this store has it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import DatasetError
from stages.common import atomic_dir, load_stage_params, staged_files, user_errors, write_json_atomic
from stages.tracking import run_item, stage_run

#: as in dvc.yaml; ``${finetune.common.dataset}`` is replaced by the dataset when the stage runs
DATASET_VAR = "${finetune.common.dataset}"
PRETRAIN_VAR = "${pretrain.train.dataset}"
DECLARED = ["report", "folds.k", "folds.run", "finetune.common.dataset", "finetune.common.selection",
            "finetune.common.far_targets", "finetune.run_methods", "pretrain.train.dataset",
            f"datasets.{DATASET_VAR}.reader", f"datasets.{DATASET_VAR}.source", f"datasets.{DATASET_VAR}.label_set",
            f"datasets.{PRETRAIN_VAR}.source", "label_sets"]
METRICS = Path("metrics/finetune")
FINETUNE = Path("data/finetune")
ALIGN_METRICS = Path("metrics/align")
REPORTS = Path("reports")
FIGURES = REPORTS / "figures"
SUMMARY = Path("metrics/report.json")

log = logging.getLogger("stages.report")


def _read_steps(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path} not found: run the finetune stage of that fold and method (dvc repro)")
    return pd.read_csv(path)


def _read_scores(path: Path) -> tuple[Any, Any] | None:
    import numpy as np

    if not path.is_file():
        raise DatasetError(f"{path} not found: run the stage that writes it (dvc repro)")
    with np.load(path) as z:
        if "last_distances" not in z.files:
            return None
        return z["last_distances"], z["last_same"]


def _figures(results: Any, dataset: str, curves_fold: int, curves_methods: list[str], out: Path,
             labels: dict[str, str]) -> list[tuple[str, str]]:
    """Write the three figures into ``out``; returns (title, path relative to reports/) for the markdown."""
    import numpy as np

    from pipeline.report.figures import confusion_figure, roc_figure, weights_losses_figure
    from pipeline.report.tables import ordered_methods

    made = []
    if curves_methods:
        curves = {m: _read_steps(FINETUNE / dataset / f"fold{curves_fold}-{m}" / "steps.csv") for m in curves_methods}
        weights_losses_figure(curves, out / "weights_losses.png", labels=labels,
                              title=f"{dataset}, fold {curves_fold}: task weights (top) and task losses (bottom)")
        made.append(("Task weights and losses per step", "figures/weights_losses.png"))
    methods = ordered_methods(results.methods)
    scores = {}
    for m in methods:
        folds = [_read_scores(FINETUNE / dataset / f"fold{f}-{m}" / "scores.npz") for f in results.folds]
        if all(s is not None for s in folds):
            scores[m] = folds
    if scores:
        roc_figure(scores, out / "roc.png", labels=labels,
                   title=f"{dataset}: verification ROC, folds {', '.join(map(str, results.folds))} pooled (last epoch)")
        made.append(("ROC of the verification pairs", "figures/roc.png"))
    confusions, class_names = {}, None
    for m in methods:
        blocks = [(results.records[(m, f)].get("last") or {}).get("expression") for f in results.folds]
        if all(blocks):
            confusions[m] = np.sum([np.asarray(b["confusion"]) for b in blocks], axis=0)
            class_names = blocks[0]["class_names"]
    if confusions:
        confusion_figure(confusions, class_names, out / "confusion.png", labels=labels,
                         title=f"{dataset}: expression confusion (last epoch, folds summed, rows normalised)")
        made.append(("Expression confusion matrices", "figures/confusion.png"))
    return made


def _demo_sources(sp: Any, dataset: str, pretrain_dataset: str) -> dict[str, bool]:
    from pipeline.config import DemoExpressionSource, DemoIdentitySource

    demo = (DemoExpressionSource, DemoIdentitySource)
    return {d: isinstance(sp.get(f"datasets.{d}.source"), demo) for d in dict.fromkeys([dataset, pretrain_dataset])}


def _aligned_fraction(dataset: str) -> float:
    path = ALIGN_METRICS / f"{dataset}.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the align stage of {dataset} (dvc repro)")
    return float(json.loads(path.read_text())["aligned_fraction"])


@user_errors
def command(ctx: typer.Context,
            quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the demo checks.")] = False) -> None:
    from pipeline.config import load_params
    from pipeline.report.demo_check import demo_checks, format_checks
    from pipeline.report.markdown import ReportHeader, render_markdown
    from pipeline.report.paper import benchmark_of
    from pipeline.report.tables import (
        PIXEL_METHOD,
        fold_table,
        method_label,
        paired_differences,
        read_results,
        summary_table,
    )

    params = load_params(ctx.obj["params_path"])
    dataset = params.finetune.common.dataset
    pretrain_dataset = params.pretrain.train.dataset
    sp = load_stage_params(ctx, [s.replace(DATASET_VAR, dataset).replace(PRETRAIN_VAR, pretrain_dataset)
                                 for s in DECLARED])
    rp = sp.get("report")
    folds = list(sp.get("folds.run"))
    run_methods = list(sp.get("finetune.run_methods"))
    if not run_methods:
        raise DatasetError("finetune.run_methods is empty: there is nothing to report")
    methods = run_methods + ([PIXEL_METHOD] if rp.pixel_baseline else [])
    results = read_results(METRICS / dataset, dataset, folds, methods)
    val_far = rp.val_far
    benchmark = benchmark_of(sp.get(f"datasets.{dataset}.reader"))
    summary = summary_table(results, val_far, benchmark)
    per_fold = fold_table(results, val_far)
    diffs = paired_differences(results, rp.reference, val_far, n_boot=rp.bootstrap, confidence=rp.confidence,
                               seed=rp.seed)
    labels = {m: method_label(m) for m in methods}
    demo = _demo_sources(sp, dataset, pretrain_dataset)
    checks = []
    if demo[dataset]:
        label_set = sp.get(f"label_sets.{sp.get(f'datasets.{dataset}.label_set')}")
        fractions = {d: _aligned_fraction(d) for d, is_demo in demo.items() if is_demo}
        checks = demo_checks(aligned_fractions=fractions, summary=summary, methods=methods,
                             n_classes=len(label_set.classes))
    header = ReportHeader(dataset=dataset, demo=demo[dataset], benchmark=benchmark, folds=tuple(folds),
                          k=sp.get("folds.k"), reference=rp.reference, confidence=rp.confidence,
                          n_boot=rp.bootstrap, selection=sp.get("finetune.common.selection"))
    curves_fold = folds[0] if rp.curves_fold is None else rp.curves_fold
    curves_methods = [m for m in rp.curves_methods if m in run_methods]
    if len(curves_methods) < len(rp.curves_methods):
        log.info("weight/loss figure: %s not in finetune.run_methods, left out",
                 ", ".join(m for m in rp.curves_methods if m not in run_methods))
    check_text = (format_checks(checks) if checks else
                  f"no demo targets: {dataset} is not demo data") + "\n"
    files = [REPORTS / n for n in ("tables.md", "tables.csv", "folds.csv", "differences.csv", "demo_check.txt")]
    with stage_run("report", sp, item=dataset, group=params) as run:
        with staged_files(*files, SUMMARY) as tmps, atomic_dir(FIGURES) as fig_tmp:
            made = _figures(results, dataset, curves_fold, curves_methods, fig_tmp, labels)
            md, tables_csv, folds_csv, diffs_csv, check_file, summary_json = tmps
            md.write_text(render_markdown(header, summary, diffs, val_far, made))
            summary.to_csv(tables_csv, index=False, float_format="%.6g")
            per_fold.to_csv(folds_csv, index=False, float_format="%.6g")
            diffs.to_csv(diffs_csv, index=False, float_format="%.6g")
            check_file.write_text(check_text)
            record = _summary_record(summary, dataset, folds, methods, demo[dataset], checks)
            write_json_atomic(record, summary_json)
        run.log_metrics({f"{m}_{v}_{c}": x for m, by in record["methods"].items() for v, cols in by.items()
                         for c, x in cols.items() if x is not None})
        if checks:
            run.log_metrics({"demo_passed": float(record["demo_passed"])})
        _log_report(run, files + [SUMMARY], made, dataset, folds, methods)
    typer.echo(f"report {dataset}: {len(methods)} methods x {len(folds)} folds -> {REPORTS / 'tables.md'}")
    if checks and not quiet:
        typer.echo(check_text.rstrip())


def _summary_record(summary: Any, dataset: str, folds: list[int], methods: list[str], demo: bool,
                    checks: list[Any]) -> dict[str, Any]:
    """``metrics/report.json``: per method and variant the mean of every column (percent), and the demo checks."""
    import pandas as pd

    from pipeline.report.tables import COLUMN_KEYS as cols

    by: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in methods}
    for _, r in summary.iterrows():
        by[r["method"]][r["variant"]] = {c: None if pd.isna(r[f"{c}_mean"]) else round(float(r[f"{c}_mean"]), 4)
                                         for c in cols}
    return {"dataset": dataset, "folds": folds, "demo": demo, "methods": by,
            "demo_checks": [c.to_dict() for c in checks],
            "demo_passed": all(c.passed for c in checks) if checks else None}


def _log_report(run: Any, files: list[Path], figures: list[tuple[str, str]], dataset: str, folds: list[int],
                methods: list[str]) -> None:
    """Log the written report to its MLflow run and nest the fold runs of the table under it."""
    if not run.enabled:
        return
    for path in files:
        run.log_artifact(path, "report")
    for _, rel in figures:
        run.log_artifact(REPORTS / rel, "report/figures")
    items = [run_item(dataset, f, m) for m in methods for f in folds]
    rows = run.adopt_runs(items)
    run.log_dict(rows, "fold_runs.json")
    restored = [r["item"] for r in rows if r["status"] != "this group"]
    if restored:
        log.info("%d of %d fold runs ran under another group key (another commit or configuration, whose outputs DVC "
                 "restored from its cache) or have no run in this store: see the report run's fold_runs.json",
                 len(restored), len(rows))
