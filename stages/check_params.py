"""Validate the whole params.yaml before any other stage runs, so that a typo cannot cost a stage its outputs.

DVC deletes a stage's outputs right before it runs the stage's command. A command that then stops on a bad param
would leave that stage with no outputs (the committed ones are gone from the work tree). This stage is therefore
the first of the pipeline: every other stage depends on its output, and it tracks every param that any stage
tracks, so a ``dvc repro`` after an edit runs it first; on a bad value it fails with the same one-line message a
stage would print, and DVC stops before touching any other stage.

Besides the schema (:func:`pipeline.config.load_params`: every key, type, range and cross-reference, the method
blocks of ``finetune.run_methods`` against their weighting and the task set), it checks what a stage would
otherwise check only when it starts: the fine-tuning schedule (a schedule file must exist and parse).

Writes ``data/params-valid.txt``, whose content never changes: a valid edit therefore re-runs nothing through this
stage; only the stages whose own params changed run (DVC keeps the file while the stage runs: ``persist``). No
MLflow run: the check reads and writes nothing else.
"""

from __future__ import annotations

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_file
from pipeline.errors import ParamsError
from stages.common import load_stage_params, user_errors

#: every param section some stage tracks (tests/test_dvc_wiring.py checks that this covers each stage's params);
#: the ``runtime`` settings (device, threads, workers, batch sizes of the detector and of evaluation) are left out
#: like in every stage: they change only the speed
DECLARED = ["base", "demo", "datasets", "manifest", "align.min_face", "align.thresholds", "align.factor", "align.nms",
            "align.resample", "align.max_side", "align.shard_size", "align.format", "align.quality",
            "align.max_failure_fraction", "align.landmark_box", "folds", "task_sets", "pretrain.train",
            "finetune.datasets", "finetune.common", "finetune.methods", "finetune.run_methods", "pixel_baseline",
            "report", "cari", "disjoint"]
#: the output's content (constant, so that no stage downstream re-runs because of it)
CONTENT = "params.yaml passed `python -m stages check_params` (this file never changes; every stage depends on it)\n"


@user_errors
def command(ctx: typer.Context) -> None:
    from pipeline.training.schedule import schedule_from

    sp = load_stage_params(ctx, DECLARED)  # the whole file is validated here (the methods run included)
    sections = {"finetune.common": sp.get("finetune.common")}
    if sp.get("cari") is not None:
        sections["cari.common"] = sp.get("cari").common
    for key, common in sections.items():
        try:
            schedule_from(common.schedule)
        except ValueError as exc:
            raise ParamsError(f"{key}.schedule: {exc}") from None
    out = layout.PARAMS_CHECKED
    if not out.is_file() or out.read_text() != CONTENT:
        with atomic_file(out) as tmp:
            tmp.write_text(CONTENT)
    n = len(sp.get("datasets"))
    typer.echo(f"params.yaml is valid: {n} datasets, {len(sp.get('finetune.methods'))} methods -> {out}")
