"""The disjoint-datasets report: methods × task metrics beside the full-label rows, differences, pseudo-label
precision per refresh, and the demo checks.

Reads the metrics of every fold in ``disjoint.folds`` × method in ``disjoint.run_methods``
(``metrics/disjoint/fold<k>-<method>.json``), exactly those files; the refreshes of each run that made pseudo labels
(``data/disjoint/fold<k>-<method>/pseudo/*.parquet``); ``steps.csv`` of ``sa_mtl_dynamic``; and, where
``disjoint.dataset`` is a fine-tuning dataset, the ``finetune`` metrics of the same folds for its ``run_methods``
(every image labelled for both tasks). ``disjoint.common.selection`` picks the epoch (:mod:`pipeline.report.
disjoint_tables`). Writes (all replaced together, never half-written):

- ``reports/disjoint_tables.md``: the demo-or-real header, the methods table (mean ± std over folds; one fold: no
  std; the gap to ``full_labels`` in points; the paper column "not transcribed"), the full-label fine-tuning rows, the
  paired differences to ``disjoint.reference`` (bootstrap interval with ≥ 3 folds), pseudo-label precision per
  refresh, the demo checks;
- ``reports/disjoint_tables.csv``: the methods table in long form (method, column: mean, std, n, gap);
- ``reports/disjoint_demo_check.txt``: on the demo, PASS/FAIL per target with the measured numbers;
- ``metrics/disjoint_report.json``: the tables' numbers, the refreshes' precision and the checks.

MLflow: a ``disjoint_report`` run with the files as artifacts; the runs of its table are nested under it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_files, write_json
from pipeline.errors import DatasetError, UserError
from stages.common import load_stage_params, user_errors
from stages.provenance import Input
from stages.tracking import stage_run

DECLARED = ["disjoint.view", "disjoint.dataset", "disjoint.folds", "disjoint.run_methods", "disjoint.common.task_set",
            "disjoint.common.selection", "disjoint.common.transfer", "disjoint.methods",
            "task_sets.{disjoint_task_set}", "datasets.{disjoint_dataset}.source", "finetune.datasets",
            "finetune.run_methods", "folds.run", "report.val_far", "report.bootstrap", "report.confidence",
            "report.seed", "disjoint.reference"]
REPORTS = layout.REPORTS
TABLES_MD = REPORTS / "disjoint_tables.md"
TABLES_CSV = REPORTS / "disjoint_tables.csv"
CHECKS = REPORTS / "disjoint_demo_check.txt"
SUMMARY = layout.METRICS / "disjoint_report.json"
METRICS = layout.METRICS / "disjoint"
#: the run whose steps.csv the demo checks read
DYNAMIC = "sa_mtl_dynamic"

log = logging.getLogger("stages.disjoint_report")


def _pseudo_tables(folder: Path) -> dict[int, Any]:
    import pandas as pd

    return {int(p.stem): pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))} if folder.is_dir() else {}


@user_errors
def command(ctx: typer.Context,
            quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the demo checks.")] = False) -> None:
    import pandas as pd

    from pipeline.config import DemoExpressionSource, disjoint_transfer, load_params
    from pipeline.report.demo_check import format_checks
    from pipeline.report.disjoint_tables import (
        DisjointHeader,
        demo_checks,
        differences,
        method_rows,
        refresh_precision,
        render_disjoint_markdown,
        variant_of,
    )
    from pipeline.report.tables import columns, read_run_records

    params = load_params(ctx.obj["params_path"])
    dj = params.disjoint
    if dj is None:
        raise UserError("params.yaml has no disjoint section (docs/disjoint.md)")
    dataset = dj.dataset
    sp = load_stage_params(ctx, [s.format(disjoint_task_set=dj.common.task_set, disjoint_dataset=dataset)
                                 for s in DECLARED])
    methods = list(sp.get("disjoint.run_methods"))
    folds = list(sp.get("disjoint.folds"))
    if not methods:
        raise DatasetError("disjoint.run_methods is empty: there is nothing to report")
    reference = sp.get("disjoint.reference")
    task_set = sp.get(f"task_sets.{dj.common.task_set}")
    selection = sp.get("disjoint.common.selection")
    variant = variant_of(selection)
    val_far = sp.get("report.val_far")
    cols = columns(val_far, task_set)
    records = read_run_records(METRICS, {(m, f): (f"{layout.run_tag(f, m)}.json", {"fold": f, "method": m})
                                         for m in methods for f in folds})
    rows = method_rows(records, methods, folds, cols, variant, val_far)
    diffs = differences(records, methods, folds, cols, reference, variant, val_far, n_boot=sp.get("report.bootstrap"),
                        confidence=sp.get("report.confidence"), seed=sp.get("report.seed"))
    ft_methods = list(sp.get("finetune.run_methods"))
    ft_folds = [f for f in folds if f in sp.get("folds.run")]
    finetune_rows = pd.DataFrame()
    read = [Input(str(METRICS / f"{layout.run_tag(f, m)}.json")) for m in methods for f in folds]
    if dataset in sp.get("finetune.datasets") and ft_folds and ft_methods:
        ft_dir = layout.METRICS / "finetune" / dataset
        ft_records = read_run_records(ft_dir, {(m, f): (f"{layout.run_tag(f, m)}.json",
                                                        {"dataset": dataset, "fold": f, "method": m})
                                               for m in ft_methods for f in ft_folds})
        finetune_rows = method_rows(ft_records, ft_methods, ft_folds, cols, variant, val_far)
        read += [Input(str(ft_dir / f"{layout.run_tag(f, m)}.json")) for m in ft_methods for f in ft_folds]
    precision = []
    for m in methods:
        quantile = disjoint_transfer(dj.common, dj.methods[m]).quantile
        for f in folds:
            precision += refresh_precision(m, f, _pseudo_tables(layout.DISJOINT / layout.run_tag(f, m) / "pseudo"),
                                           quantile)
    steps = {}
    if DYNAMIC in methods:  # the demo check reads the first fold's run
        path = layout.DISJOINT / layout.run_tag(folds[0], DYNAMIC) / "steps.csv"
        if not path.is_file():
            raise DatasetError(f"{path} not found: run the disjoint_train stage of {DYNAMIC} (dvc repro)")
        steps[DYNAMIC] = pd.read_csv(path)
    demo = isinstance(sp.get(f"datasets.{dataset}.source"), DemoExpressionSource)
    n_classes = {}
    for t in task_set.evaluated("classification"):
        rec = records[(methods[0], folds[0])]["last"].get(t) or {}
        n_classes[t] = len(rec.get("class_names") or []) or 1
    checks = demo_checks(rows, precision, steps, task_set.names, n_classes, cols) if demo else []
    header = DisjointHeader(sp.get("disjoint.view"), dataset, tuple(folds), demo, selection, reference)
    text = render_disjoint_markdown(header, rows, finetune_rows, diffs, precision, cols, checks)
    check_text = (format_checks(checks) + "\n") if checks else f"no demo targets: {dataset} is not demo data\n"
    long = [{"method": r["method"], "column": c.key, "title": c.title, "mean": r[f"{c.key}_mean"],
             "std": r[f"{c.key}_std"], "n": r[f"{c.key}_n"], "gap_to_full_labels": r[f"{c.key}_gap"]}
            for r in rows.to_dict("records") for c in cols]
    with stage_run("disjoint_report", sp, item=f"disjoint/{dataset}", inputs=read) as run:
        with atomic_files(TABLES_MD, TABLES_CSV, CHECKS, SUMMARY) as (md, csv_file, check_file, summary):
            md.write_text(text)
            pd.DataFrame(long, columns=["method", "column", "title", "mean", "std", "n", "gap_to_full_labels"]).to_csv(
                csv_file, index=False, float_format="%.6g")
            check_file.write_text(check_text)
            write_json({"view": header.view, "dataset": dataset, "folds": folds, "selection": selection,
                        "variant": variant, "methods": rows.to_dict("records"),
                        "differences": diffs.to_dict("records"), "refreshes": [p.to_dict() for p in precision],
                        "demo_checks": [c.to_dict() for c in checks],
                        "demo_passed": all(c.passed for c in checks) if checks else None}, summary)
        run.log_metrics({f"{r['method']}_{c.key}": r[f"{c.key}_mean"] for r in rows.to_dict("records") for c in cols
                         if r[f"{c.key}_mean"] is not None and r[f"{c.key}_mean"] == r[f"{c.key}_mean"]})
        if run.enabled:
            for path in (TABLES_MD, TABLES_CSV, CHECKS, SUMMARY):
                run.log_artifact(path, "disjoint_report")
            run.adopt_runs([f"disjoint/fold{f}/{m}" for m in methods for f in folds])
    typer.echo(f"disjoint_report {dataset}: {len(methods)} methods x {len(folds)} folds -> {TABLES_MD}")
    if checks and not quiet:
        typer.echo(check_text.rstrip())
