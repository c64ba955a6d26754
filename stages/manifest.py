"""Read data/raw/<DATASET> with the dataset's reader and write its manifest (parquet), skip list and summary metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_files, write_json
from pipeline.errors import DatasetError
from stages.common import load_stage_params, user_errors
from stages.tracking import stage_run

DECLARED = ["datasets.{name}.reader", "datasets.{name}.root", "datasets.{name}.options",
            "datasets.{name}.expected", "manifest"]
METRICS = layout.METRICS / "manifest"

log = logging.getLogger("stages.manifest")


def paths(name: str) -> dict[str, Path]:
    """The stage's outputs for dataset ``name`` (the same paths as in dvc.yaml)."""
    return {
        "manifest": layout.manifest_file(name),
        "skipped": layout.MANIFESTS / f"{name}.skipped.tsv",
        "metrics": METRICS / f"{name}.json",
        "counts": METRICS / f"{name}.counts.json",
    }


@user_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name (a key of `datasets` in params.yaml).")],
) -> None:
    from pipeline.data.build_manifest import build_manifest
    from pipeline.data.manifest import write_manifest

    sp = load_stage_params(ctx, [s.format(name=name) for s in DECLARED])
    keys = ("reader", "root", "options", "expected")
    reader, root, options, expected = (sp.get(f"datasets.{name}.{k}") for k in keys)
    cfg = sp.get("manifest")
    out = paths(name)
    with stage_run("manifest", sp, item=name, inputs=[f"data/raw/{name}"]) as run:
        df, skipped, summary = build_manifest(name, reader=reader, root=Path(root), options=options,
                                              expected=expected, check=cfg.check)
        if summary.skip_fraction > cfg.max_skip_fraction:
            by_count = sorted(summary.skipped_by_reason.items(), key=lambda kv: -kv[1])
            reasons = ", ".join(f"{k}: {v}" for k, v in by_count)
            raise DatasetError(
                f"dataset {name!r}: {summary.skipped} of {summary.images + summary.skipped} files skipped "
                f"({summary.skip_fraction:.1%} > manifest.max_skip_fraction={cfg.max_skip_fraction}); {reasons}; "
                f"first: {skipped[0].path}: {skipped[0].reason}"
            )
        for key, diff in summary.expected_differences.items():
            log.warning("%s: %s = %d, the published dataset has %d (%+d)", name, key, diff["actual"],
                        diff["expected"], diff["difference"])
        keys = ("manifest", "skipped", "metrics", "counts")
        with atomic_files(*(out[k] for k in keys)) as tmp:
            tmp_of = dict(zip(keys, tmp, strict=True))
            write_manifest(df, tmp_of["manifest"])
            _write_skipped(skipped, tmp_of["skipped"])
            write_json(summary.metrics(), tmp_of["metrics"])
            write_json(summary.counts(), tmp_of["counts"])
        run.log_metrics({k: getattr(summary, k) for k in
                         ("images", "subjects", "sequences", "labelled_sequences", "skipped", "skip_fraction")})
        run.log_dict(summary.to_dict(), "summary.json")
        run.log_artifact(out["skipped"])
    typer.echo(f"{name}: {summary.images} images, {summary.subjects} subjects, {summary.sequences} sequences, "
               f"{summary.skipped} skipped -> {out['manifest']}")


def _write_skipped(skipped, path: Path) -> None:
    with open(path, "w") as fh:
        fh.write("path\treason\n")
        for s in skipped:
            fh.write(f"{s.path}\t{s.reason}\n")
