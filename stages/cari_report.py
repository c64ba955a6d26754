"""The caricature report: per caricature dataset the paper's tables (I on CaVI; II, III, IV on WebCaricature) with
the paper's numbers beside ours, the headline claim as measured, Fig. 3, and the demo checks.

For every dataset in ``cari.datasets``, reads the metrics of every method in ``cari.run_methods`` plus the pixel
baseline (``metrics/cari/<d>/<method>.json``, ``metrics/cari/<d>/pixel_pca.json``), exactly those files, and the
``steps.csv`` of ``dynamic`` and ``naive_dynamic`` (``data/cari/<d>/<method>/``). The dataset's protocol
(``datasets.<d>.protocol.kind``) picks its tables; ``cari.common.selection`` picks the epoch: under ``test_fold``
each column at its criterion's best epoch on the test split (the original's, optimistic), under ``last`` the last
epoch (:mod:`pipeline.report.cari_tables`). Writes (all replaced together, never half-written):

- ``reports/cari_tables.md``: one section per dataset: the demo-or-real header, the tables (literature rows quoted,
  not reproduced; the pixel baseline; every run method with the paper's number and Δ = ours − paper in points; the
  original code's VAL on the training folds and strided Rank-n where the metrics hold them), the same tables at the
  last epoch, the headline claim (dynamic − naive_dynamic and − single_cari on CaVI's cari-id, one split: the point
  difference; dynamic − naive_dynamic and − single_verif on WebCaricature's Rank-1, paired over the splits with a
  bootstrap interval), Fig. 3;
- ``reports/cari_tables.csv``: the tables in long form (dataset, table, variant, method, column: ours, original
  code, paper, Δ);
- ``reports/cari_figures/cari_<d>_weights_losses.png``: Fig. 3, task weights (top) and task losses (bottom) per
  step, ``dynamic`` beside ``naive_dynamic``;
- ``reports/cari_demo_check.txt``: on the caricature demo, PASS/FAIL per target with the measured numbers
  (:mod:`pipeline.report.cari_checks`; ``make demo`` prints it); empty when ``cari.datasets`` is;
- ``metrics/cari_report.json``: the tables' numbers, the claims and the demo checks per dataset.

MLflow: a ``cari_report`` run with the files as artifacts, tagged with the caricature group key of each dataset;
the runs of its tables (``<dataset>/<method>``) are nested under it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError, UserError
from stages.common import load_stage_params, user_errors
from stages.provenance import Input
from stages.tracking import stage_run

#: the task set's entry is in dvc.yaml's spelling (it is named by another param, cari.common.task_set); ``datasets``
#: whole: the report reads every caricature dataset's source and protocol (DVC cannot template a list)
TASK_SET = "task_sets.${cari.common.task_set}"
DECLARED = ["cari.datasets", "cari.run_methods", "cari.common.task_set", "cari.common.selection", TASK_SET,
            "datasets"]
METRICS = layout.METRICS / "cari"
CARI = layout.CARI
REPORTS = layout.REPORTS
FIGURES = REPORTS / "cari_figures"
TABLES_MD = REPORTS / "cari_tables.md"
TABLES_CSV = REPORTS / "cari_tables.csv"
CHECKS = REPORTS / "cari_demo_check.txt"
SUMMARY = layout.METRICS / "cari_report.json"
#: the methods of Fig. 3, in its column order
CURVES = ("dynamic", "naive_dynamic")
#: the columns of cari_tables.csv (pipeline.report.cari_tables.csv_rows)
CSV_COLUMNS = ["dataset", "table", "variant", "method", "label", "kind", "column", "title", "ours", "ours_std",
               "ours_floor", "epoch", "original", "original_std", "paper", "paper_std", "delta", "delta_original"]
PIXEL = "pixel_pca"  # = pipeline.report.tables.PIXEL_METHOD (imported lazily: a fast --help)

log = logging.getLogger("stages.cari_report")


def declared(task_set: str) -> list[str]:
    """:data:`DECLARED` with the task set ``cari.common.task_set`` names."""
    return [s.replace(TASK_SET, f"task_sets.{task_set}") for s in DECLARED]


def run_item(dataset: str, method: str) -> str:
    """``<dataset>/<method>``: the ``item`` tag of a caricature run (``cari_train``, ``cari_pixel``)."""
    return f"{dataset}/{method}"


@dataclass
class Section:
    """One dataset's report."""

    dataset: str
    protocol: str
    demo: bool
    records: dict[str, Any]
    tables: dict[str, list[Any]]
    claims: list[Any]
    curves: dict[str, Any]
    checks: list[Any]


def _read_steps(path: Path) -> Any:
    import pandas as pd

    if not path.is_file():
        raise DatasetError(f"{path} not found: run the cari_train stage of that dataset and method (dvc repro)")
    return pd.read_csv(path)


def _section(dataset: str, cfg: Any, methods: list[str], roles: Any, variant: str) -> Section:
    from pipeline.config import DemoCaricatureSource
    from pipeline.report.cari_checks import cavi_checks, curve_checks, gallery_chance, webcari_checks
    from pipeline.report.cari_tables import cari_tables, claims, read_cari_results

    if cfg.protocol is None:
        raise UserError(f"datasets.{dataset}: no caricature protocol (datasets.{dataset}.protocol)")
    protocol = cfg.protocol.kind
    records = read_cari_results(METRICS / dataset, dataset, methods)
    tables = {v: cari_tables(dataset, protocol, records, methods, roles, v) for v in dict.fromkeys([variant, "last"])}
    curves = {m: _read_steps(CARI / dataset / m / "steps.csv") for m in CURVES if m in methods}
    demo = isinstance(cfg.source, DemoCaricatureSource)
    checks = []
    if demo:
        if protocol == "cavi":
            checks = cavi_checks(dataset, records, roles)
        else:
            ident = layout.cari_split_files(dataset)["identification"]
            if not ident.is_file():
                raise DatasetError(f"{ident} not found: run the cari_split stage of {dataset} (dvc repro)")
            checks = webcari_checks(dataset, records, gallery_chance(ident))
        checks += curve_checks(dataset, curves)
    return Section(dataset, protocol, demo, records, tables, claims(dataset, protocol, records, roles, variant),
                   curves, checks)


def _check_text(sections: list[Section]) -> str:
    """``cari_demo_check.txt``: each demo dataset's checks (their names start with the dataset)."""
    from pipeline.report.demo_check import format_checks

    checks = [c for s in sections for c in s.checks]
    lines = [format_checks(checks)] if checks else []
    lines += [f"no demo targets: {s.dataset} is not demo data" for s in sections if not s.demo]
    return "".join(f"{line}\n" for line in lines)


@user_errors
def command(ctx: typer.Context,
            quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the demo checks.")] = False) -> None:
    import pandas as pd

    from pipeline.config import load_params
    from pipeline.report.cari_tables import (
        DatasetHeader,
        Roles,
        csv_rows,
        render_cari_markdown,
        selected_variant,
        table_record,
    )
    from pipeline.report.figures import weights_losses_figure

    params = load_params(ctx.obj["params_path"])
    if params.cari is None:
        raise UserError("params.yaml has no cari section (docs/caricature.md)")
    task_set_name = params.cari.common.task_set
    sp = load_stage_params(ctx, declared(task_set_name))
    datasets = list(sp.get("cari.datasets"))
    run_methods = list(sp.get("cari.run_methods"))
    if datasets and not run_methods:
        raise DatasetError("cari.run_methods is empty: there is nothing to report")
    methods = [*run_methods, PIXEL]
    roles = Roles.of(sp.get(f"task_sets.{task_set_name}"))
    selection = sp.get("cari.common.selection")
    variant = selected_variant(selection)
    all_datasets = sp.get("datasets")
    sections = [_section(d, all_datasets[d], methods, roles, variant) for d in datasets]

    check_text = _check_text(sections)
    read = [Input(str(layout.cari_run(d, m)["metrics"])) for d in datasets for m in methods]
    group = (params, datasets, "cari") if datasets else None
    with stage_run("cari_report", sp, item=",".join(datasets) or None, inputs=read, group=group) as run:
        with atomic_files(TABLES_MD, TABLES_CSV, CHECKS, SUMMARY) as tmps, atomic_dir(FIGURES) as fig_tmp:
            md, csv_file, check_file, summary_json = tmps
            texts, rows, records, figures = [], [], {}, []
            for s in sections:
                made = []
                if s.curves:
                    name = f"cari_{s.dataset}_weights_losses.png"
                    weights_losses_figure(
                        s.curves, fig_tmp / name, labels={m: m.replace("_", " ") for m in s.curves},
                        title=f"{s.dataset}: task weights (top) and task losses (bottom) per step (Fig. 3)")
                    made.append(("Fig. 3: task weights (top) and losses (bottom), dynamic vs naive dynamic",
                                 f"{FIGURES.name}/{name}"))
                    figures.append(FIGURES / name)
                header = DatasetHeader(s.dataset, s.protocol, s.demo, selection)
                texts.append(render_cari_markdown(header, s.tables, s.claims, made))
                rows += [r for ts in s.tables.values() for t in ts for r in csv_rows(t)]
                records[s.dataset] = {
                    "dataset": s.dataset, "protocol": s.protocol, "demo": s.demo, "selection": selection,
                    "variant": variant,
                    "tables": {v: {t.key: table_record(t) for t in ts} for v, ts in s.tables.items()},
                    "claims": [c.to_dict() for c in s.claims],
                    "demo_checks": [c.to_dict() for c in s.checks],
                    "demo_passed": all(c.passed for c in s.checks) if s.checks else None}
            md.write_text("\n".join(texts) if texts else
                          "# Caricature-visual recognition\n\nNo caricature dataset: `cari.datasets` is empty.\n")
            pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(csv_file, index=False, float_format="%.6g")
            check_file.write_text(check_text)
            checks = [c for s in sections for c in s.checks]
            write_json({"datasets": records, "demo_passed": all(c.passed for c in checks) if checks else None},
                       summary_json)
        _log(run, sections, figures, methods)
    typer.echo(f"cari_report {', '.join(datasets) or '(no dataset)'}: {len(methods)} methods -> {TABLES_MD}")
    if check_text.strip() and not quiet:
        typer.echo(check_text.rstrip())


def _log(run: Any, sections: list[Section], figures: list[Path], methods: list[str]) -> None:
    """Log the report's numbers and files to its MLflow run and nest the runs of its tables under it."""
    metrics = {}
    for s in sections:
        for c in s.claims:
            if c.mean is not None:
                metrics[f"{s.dataset}_{c.metric}_{c.method}_minus_{c.other}"] = c.mean
        if s.checks:
            metrics[f"{s.dataset}_demo_passed"] = float(all(c.passed for c in s.checks))
    run.log_metrics(metrics)
    if not run.enabled:
        return
    for path in (TABLES_MD, TABLES_CSV, CHECKS, SUMMARY, *figures):
        run.log_artifact(path, "cari_report")
    rows = []
    for s in sections:
        rows += run.adopt_runs([run_item(s.dataset, m) for m in methods], group=run.groups.get(s.dataset))
    run.log_dict(rows, "cari_runs.json")
