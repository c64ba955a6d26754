"""The results report: per fine-tuning dataset, the paper's table with the paper's numbers beside ours, paired
differences, figures.

For every dataset in ``finetune.datasets``, reads the metrics of every fold in ``folds.run`` × method in
``finetune.run_methods`` (plus ``pixel_pca`` when ``report.pixel_baseline``), exactly those files: a fold or method
removed from the params is not picked up from a stale file. The columns follow the task set's evaluations. Writes
(all replaced together, never half-written):

- ``reports/tables.md``: one section per dataset: last-epoch and best-epoch tables (mean ± std over folds, the
  paper's numbers and Δ), paired differences to ``report.reference`` with bootstrap intervals, the figures;
- ``reports/tables.csv`` (one row per dataset × method × variant), ``reports/folds.csv`` (one row per dataset ×
  method × fold × variant), ``reports/differences.csv``;
- ``reports/figures/``: ``weights_losses.png`` (task weights above task losses per step, ``report.curves_methods``
  on ``report.curves_fold``), ``roc.png``, ``confusion.png`` (``confusion_<task>.png`` with several classification
  tasks); with several datasets each dataset's figures are in ``reports/figures/<dataset>/``;
- ``reports/demo_check.txt``: on demo data, PASS/FAIL per demo target (``make demo`` prints it);
- ``metrics/summary/<dataset>/<method>.json``: the table's means (percent) of the selected epoch (the best one,
  or the last with ``finetune.common.selection: last``), one small file per row of the table: what ``dvc metrics
  show`` and ``dvc metrics diff`` list (a few columns: one per task evaluation);
- ``metrics/report.json``: the means per method and variant and the demo checks (a plain file); with several
  datasets one such record per dataset under ``datasets``.

MLflow: a ``report`` run with the tables and figures as artifacts, tagged with the group key of each dataset's
configuration; the fold runs of the tables are nested under it (those whose outputs DVC restored from its cache
are listed in ``fold_runs.json``, with the run they came from when this store has it).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError
from stages.common import load_stage_params, user_errors
from stages.provenance import Input
from stages.tracking import run_item, stage_run

#: ``datasets`` whole: the report reads every fine-tuning dataset's reader and source (DVC cannot template a list)
DECLARED = ["report", "folds.k", "folds.run", "finetune.datasets", "finetune.common.task_set",
            "finetune.common.selection", "finetune.common.protocol", "finetune.run_methods", "task_sets.{task_set}",
            "pretrain.train.dataset", "datasets"]
METRICS = layout.METRICS / "finetune"
FINETUNE = layout.FINETUNE
ALIGN_METRICS = layout.METRICS / "align"
REPORTS = layout.REPORTS
FIGURES = REPORTS / "figures"
SUMMARY = layout.METRICS / "report.json"
#: ``<dataset>/<method>.json``: the table's means of the selected epoch, the files ``dvc metrics show`` lists
BY_METHOD = layout.METRICS / "summary"

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


@dataclass
class Section:
    """One dataset's tables."""

    dataset: str
    results: Any
    summary: Any
    per_fold: Any
    diffs: Any
    labels: dict[str, str]
    demo: bool
    benchmark: str | None
    checks: list[Any]


def _figures(s: Section, tasks: Any, curves_fold: int, curves_methods: list[str], out: Path, prefix: str
             ) -> list[tuple[str, str]]:
    """Write one dataset's figures into ``out``; returns (title, path relative to reports/) for the markdown."""
    import numpy as np

    from pipeline.report.figures import confusion_figure, roc_figure, weights_losses_figure
    from pipeline.report.tables import ordered_methods

    dataset, results, labels = s.dataset, s.results, s.labels
    made = []
    if curves_methods:
        curves = {m: _read_steps(FINETUNE / dataset / layout.run_tag(curves_fold, m) / "steps.csv")
                  for m in curves_methods}
        weights_losses_figure(curves, out / "weights_losses.png", labels=labels,
                              title=f"{dataset}, fold {curves_fold}: task weights (top) and task losses (bottom)")
        made.append(("Task weights and losses per step", f"{prefix}weights_losses.png"))
    methods = ordered_methods(results.methods, tasks)
    scores = {}
    for m in methods:
        folds = [_read_scores(FINETUNE / dataset / layout.run_tag(f, m) / "scores.npz") for f in results.folds]
        if all(sc is not None for sc in folds):
            scores[m] = folds
    if scores:
        roc_figure(scores, out / "roc.png", labels=labels,
                   title=f"{dataset}: verification ROC, folds {', '.join(map(str, results.folds))} pooled (last epoch)")
        made.append(("ROC of the verification pairs", f"{prefix}roc.png"))
    classified = tasks.evaluated("classification")
    for task in classified:
        confusions, class_names = {}, None
        for m in methods:
            blocks = [(results.records[(m, f)].get("last") or {}).get(task) for f in results.folds]
            if all(blocks):
                confusions[m] = np.sum([np.asarray(b["confusion"]) for b in blocks], axis=0)
                class_names = blocks[0].get("class_names") or [str(i) for i in range(len(blocks[0]["confusion"]))]
        if confusions:
            name = "confusion.png" if len(classified) == 1 else f"confusion_{task}.png"
            confusion_figure(confusions, class_names, out / name, labels=labels,
                             title=f"{dataset}: {task} confusion (last epoch, folds summed, rows normalised)")
            made.append((f"{task[:1].upper()}{task[1:]} confusion matrices", f"{prefix}{name}"))
    return made


def _is_demo(source: Any) -> bool:
    from pipeline.config import DemoExpressionSource, DemoIdentitySource

    return isinstance(source, (DemoExpressionSource, DemoIdentitySource))


def _aligned_fraction(dataset: str) -> float:
    path = ALIGN_METRICS / f"{dataset}.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the align stage of {dataset} (dvc repro)")
    return float(json.loads(path.read_text())["aligned_fraction"])


def _class_counts(results: Any, task_names: list[str]) -> dict[str, int]:
    """Classes of each classification task, from the confusion matrices in the metrics."""
    out = {}
    for task in task_names:
        block = next((r["last"][task] for r in results.records.values() if (r.get("last") or {}).get(task)), None)
        if block is not None:
            out[task] = len(block["confusion"])
    return out


@user_errors
def command(ctx: typer.Context,
            quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the demo checks.")] = False) -> None:
    from pipeline.config import load_params
    from pipeline.report.demo_check import demo_checks, format_checks
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
    task_set_name = params.finetune.common.task_set
    sp = load_stage_params(ctx, [s.format(task_set=task_set_name) for s in DECLARED])
    rp = sp.get("report")
    folds = list(sp.get("folds.run"))
    datasets = list(sp.get("finetune.datasets"))
    tasks = sp.get(f"task_sets.{task_set_name}")
    run_methods = list(sp.get("finetune.run_methods"))
    if not run_methods:
        raise DatasetError("finetune.run_methods is empty: there is nothing to report")
    if not datasets:
        raise DatasetError("finetune.datasets is empty: there is nothing to report")
    methods = run_methods + ([PIXEL_METHOD] if rp.pixel_baseline else [])
    val_far = rp.val_far
    pretrain_dataset = sp.get("pretrain.train.dataset")
    all_datasets = sp.get("datasets")
    sections = []
    for dataset in datasets:
        results = read_results(METRICS / dataset, dataset, folds, methods)
        benchmark = benchmark_of(all_datasets[dataset].reader)
        summary = summary_table(results, val_far, benchmark, tasks)
        demo = _is_demo(all_datasets[dataset].source)
        checks = []
        if demo:
            demo_sets = [d for d in dict.fromkeys([dataset, pretrain_dataset]) if _is_demo(all_datasets[d].source)]
            checks = demo_checks(aligned_fractions={d: _aligned_fraction(d) for d in demo_sets}, summary=summary,
                                 methods=methods,
                                 n_classes=_class_counts(results, tasks.evaluated("classification")))
        sections.append(Section(
            dataset=dataset, results=results, summary=summary, per_fold=fold_table(results, val_far, tasks),
            diffs=paired_differences(results, rp.reference, val_far, tasks, n_boot=rp.bootstrap,
                                     confidence=rp.confidence, seed=rp.seed),
            labels={m: method_label(m, tasks) for m in methods}, demo=demo, benchmark=benchmark, checks=checks))
    curves_fold = folds[0] if rp.curves_fold is None else rp.curves_fold
    curves_methods = [m for m in rp.curves_methods if m in run_methods]
    if len(curves_methods) < len(rp.curves_methods):
        log.info("weight/loss figure: %s not in finetune.run_methods, left out",
                 ", ".join(m for m in rp.curves_methods if m not in run_methods))
    several = len(sections) > 1
    check_text = _check_text(sections, several, format_checks)
    files = [REPORTS / n for n in ("tables.md", "tables.csv", "folds.csv", "differences.csv", "demo_check.txt")]
    read = [Input(str(layout.finetune_run(d, f, m)["metrics"])) for d in datasets for f in folds for m in methods]
    with stage_run("report", sp, item=",".join(datasets), inputs=read, group=(params, datasets)) as run:
        with (atomic_files(*files, SUMMARY) as tmps, atomic_dir(FIGURES) as fig_tmp,
              atomic_dir(BY_METHOD) as by_method_tmp):
            md, tables_csv, folds_csv, diffs_csv, check_file, summary_json = tmps
            texts, figures = [], {}
            for s in sections:
                prefix = f"figures/{s.dataset}/" if several else "figures/"
                out = fig_tmp / s.dataset if several else fig_tmp
                figures[s.dataset] = _figures(s, tasks, curves_fold, curves_methods, out, prefix)
                texts.append(_markdown(s, tasks, sp, rp, folds, figures[s.dataset]))
            md.write_text("\n".join(texts))
            _concat([s.summary for s in sections]).to_csv(tables_csv, index=False, float_format="%.6g")
            _concat([s.per_fold for s in sections]).to_csv(folds_csv, index=False, float_format="%.6g")
            _concat([s.diffs for s in sections]).to_csv(diffs_csv, index=False, float_format="%.6g")
            check_file.write_text(check_text)
            records = {s.dataset: _summary_record(s, folds, methods, tasks) for s in sections}
            if several:
                checks = [c for s in sections for c in s.checks]
                record = {"datasets": records, "demo_passed": all(c.passed for c in checks) if checks else None}
            else:
                record = records[datasets[0]]
            write_json(record, summary_json)
            variant = "last" if sp.get("finetune.common.selection") == "last" else "best"
            for dataset, r in records.items():
                for method, by in r["methods"].items():
                    write_json(by.get(variant) or {}, by_method_tmp / dataset / f"{method}.json")
        for dataset, r in records.items():
            prefix = f"{dataset}_" if several else ""
            run.log_metrics({f"{prefix}{m}_{v}_{c}": x for m, by in r["methods"].items() for v, cols in by.items()
                             for c, x in cols.items() if x is not None})
        if record.get("demo_passed") is not None:
            run.log_metrics({"demo_passed": float(record["demo_passed"])})
        _log_report(run, files + [SUMMARY], figures, datasets, folds, methods)
    typer.echo(f"report {', '.join(datasets)}: {len(methods)} methods x {len(folds)} folds -> "
               f"{REPORTS / 'tables.md'}")
    if any(s.checks for s in sections) and not quiet:
        typer.echo(check_text.rstrip())


def _markdown(s: Section, tasks: Any, sp: Any, rp: Any, folds: list[int], figures: list[tuple[str, str]]) -> str:
    from pipeline.report.markdown import ReportHeader, render_markdown

    header = ReportHeader(dataset=s.dataset, tasks=tasks, demo=s.demo, benchmark=s.benchmark, folds=tuple(folds),
                          k=sp.get("folds.k"), reference=rp.reference, confidence=rp.confidence,
                          n_boot=rp.bootstrap, selection=sp.get("finetune.common.selection"))
    return render_markdown(header, s.summary, s.diffs, rp.val_far, figures)


def _concat(frames: list[Any]) -> Any:
    import pandas as pd

    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def _check_text(sections: list[Section], several: bool, format_checks: Any) -> str:
    """``demo_check.txt``: the checks of each demo dataset (prefixed by the dataset when there are several)."""
    blocks = []
    for s in sections:
        if not s.checks:
            blocks.append(f"no demo targets: {s.dataset} is not demo data")
        elif several:
            blocks.append("\n".join(f"{s.dataset}: {line}" for line in format_checks(s.checks).splitlines()))
        else:
            blocks.append(format_checks(s.checks))
    return "\n".join(blocks) + "\n"


def _summary_record(s: Section, folds: list[int], methods: list[str], tasks: Any) -> dict[str, Any]:
    """One dataset's ``metrics/report.json`` record: per method and variant the mean of every column (percent), and
    the demo checks."""
    import pandas as pd

    from pipeline.report.tables import column_keys

    cols = column_keys(tasks)
    by: dict[str, dict[str, dict[str, float | None]]] = {m: {} for m in methods}
    for _, r in s.summary.iterrows():
        by[r["method"]][r["variant"]] = {c: None if pd.isna(r[f"{c}_mean"]) else round(float(r[f"{c}_mean"]), 4)
                                         for c in cols}
    return {"dataset": s.dataset, "folds": folds, "demo": s.demo, "methods": by,
            "demo_checks": [c.to_dict() for c in s.checks],
            "demo_passed": all(c.passed for c in s.checks) if s.checks else None}


def _log_report(run: Any, files: list[Path], figures: dict[str, list[tuple[str, str]]], datasets: list[str],
                folds: list[int], methods: list[str]) -> None:
    """Log the written report to its MLflow run and nest the fold runs of the tables under it."""
    if not run.enabled:
        return
    for path in files:
        run.log_artifact(path, "report")
    for made in figures.values():
        for _, rel in made:
            run.log_artifact(REPORTS / rel, str(Path("report") / Path(rel).parent))
    rows = []
    for dataset in datasets:
        rows += run.adopt_runs([run_item(dataset, f, m) for m in methods for f in folds], group=run.groups[dataset])
    run.log_dict(rows, "fold_runs.json")
    restored = [r["item"] for r in rows if r["status"] != "this group"]
    if restored:
        log.info("%d of %d fold runs ran under another group key (another commit or configuration, whose outputs DVC "
                 "restored from its cache) or have no run in this store: see the report run's fold_runs.json",
                 len(restored), len(rows))
