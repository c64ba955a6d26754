"""Fine-tune the multi-task network on one fold of one dataset with one weighting method; evaluate every epoch.

One DVC stage instance ``finetune@<dataset>-<fold>-<method>`` per dataset in ``finetune.datasets`` × fold in
``folds.run`` × method in ``finetune.run_methods``. Reads ``finetune.common``, the task set it names
(``task_sets.<finetune.common.task_set>``), the dataset's label sets and ``finetune.methods.<method>`` only, so
changing one method's block re-runs only that method's stages, and one dataset's label sets only that dataset's.

Writes (``<d>`` = the dataset):

- ``data/finetune/<d>/fold<k>-<method>/``: ``model.pt`` (last epoch, with its config), ``steps.csv`` (per step:
  lr, each task's loss and weight, total and weight losses, gradient norms, whether each task had a labelled sample
  in the batch: ``present_<task>``), ``scores.npz`` (pair distances and labels, each classification task's logits
  and labels, at the last epoch and at each criterion's best epoch), ``history.json`` (every epoch's test and
  validation metrics), ``curves.png`` (weights and losses per step);
- ``metrics/finetune/<d>/fold<k>-<method>.json``: ``{last: M, best: {selected_on, <criterion>: M...}}``.

Resume: the training state is checkpointed every epoch into ``data/work/finetune/<d>-fold<k>-<method>-<key>/``
(``key`` hashes the params, the fold files, the aligned data and the training code), so re-running after an
interruption continues from the last epoch and reopens the same MLflow run.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError, ParamsError, UserError
from stages.common import finetune_dataset, load_stage_params, progress_bar, remove_other_work, user_errors
from stages.provenance import Input, fold_inputs
from stages.tracking import run_item, stage_run
from stages.training_runs import resolve_device, work_key

#: ``folds.datasets.<d>.pairs`` is used only by ``selection: val_subjects`` (the validation pairs' recipe)
DECLARED = ["finetune.common", "finetune.methods.{method}", "task_sets.{task_set}", "datasets.{dataset}.label_sets",
            "datasets.{dataset}.align_convention", "folds.datasets.{dataset}.pairs", "pretrain.train.dataset"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["finetune.runtime"]
WORK = layout.WORK / "finetune"

log = logging.getLogger("stages.finetune")


def resolve_init(init: str, pretrained: Path) -> str | None:
    """The checkpoint ``init`` names (``random`` → None, ``pretrain`` → the pretrain stage's ``model.pt``).

    Raises:
        UserError: the checkpoint does not exist.
    """
    checkpoint = {"random": None, "pretrain": str(pretrained)}.get(init, init)
    if checkpoint is not None and not Path(checkpoint).is_file():
        hint = " (run the pretrain stage: dvc repro pretrain)" if init == "pretrain" else \
            " (use 'random', 'pretrain' or a model.pt path)"
        raise UserError(f"finetune.common.init: checkpoint not found: {checkpoint}{hint}")
    return checkpoint


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="Fold index (0-based).")],
    method: Annotated[str, typer.Option("--method", help="A method of finetune.methods.")],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset of finetune.datasets.", show_default="the only one")] = None,
) -> None:
    import torch

    from pipeline.config import load_params
    from pipeline.data.manifest import read_manifest

    params = load_params(ctx.obj["params_path"])
    if method not in params.finetune.methods:
        raise UserError(f"unknown method {method!r}: finetune.methods defines "
                        f"{', '.join(sorted(params.finetune.methods)) or 'nothing'}")
    dataset = finetune_dataset(params, dataset)
    task_set_name = params.finetune.common.task_set
    sp = load_stage_params(ctx, [s.format(method=method, dataset=dataset, task_set=task_set_name)
                                 for s in DECLARED] + RUNTIME)
    common = sp.get("finetune.common")
    method_cfg = sp.get(f"finetune.methods.{method}")
    task_set = sp.get(f"task_sets.{task_set_name}")
    label_sets = sp.get(f"datasets.{dataset}.label_sets")
    runtime = sp.get("finetune.runtime")
    if fold >= params.folds.k:
        raise UserError(f"--fold {fold}: folds.k is {params.folds.k} (folds 0..{params.folds.k - 1})")
    from pipeline.training.schedule import schedule_from
    from pipeline.weighting.options import parse_weighting

    try:  # params validation checks the methods of run_methods; this one may be any of finetune.methods
        strategy = parse_weighting(method_cfg.weighting, method_cfg.options(), task_set.names)
    except ValueError as exc:
        raise ParamsError(f"finetune.methods.{method}: {exc}") from None

    try:
        schedule_from(common.schedule)
    except ValueError as exc:
        raise UserError(f"finetune.common.schedule: {exc}") from None
    checkpoint = resolve_init(common.init, layout.pretrained_model(sp.get("pretrain.train.dataset")))
    epochs = common.epochs if method_cfg.epochs is None else method_cfg.epochs
    if epochs == 0 and checkpoint is None:
        raise UserError(f"finetune.methods.{method}.epochs is 0 (evaluate the initial model) but "
                        "finetune.common.init is random: there is nothing to evaluate")
    val = None
    if common.selection == "val_subjects":
        pairs_cfg = sp.get(f"folds.datasets.{dataset}.pairs")
        if pairs_cfg.kind != "expression":
            raise UserError(f"finetune.common.selection val_subjects makes validation pairs with the 4-type recipe: "
                            f"folds.datasets.{dataset}.pairs.kind must be expression, not {pairs_cfg.kind}")
        from pipeline.training.fold_data import ValidationPairs

        val = ValidationPairs(common.val_fraction, label_sets[pairs_cfg.label_set], list(pairs_cfg.required))
    p = layout.finetune_run(dataset, fold, method)
    for key in ("manifest", "aligned", "fold", "pairs"):
        if not p[key].exists():
            raise DatasetError(f"{p[key]} not found: run the upstream stages first (dvc repro finetune)")
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = resolve_device(runtime.device, "finetune.runtime.device")

    from pipeline.training.build import finetune_spec
    from pipeline.training.fold_data import load_fold_data

    manifest = read_manifest(p["manifest"])
    data = load_fold_data(manifest, p["aligned"], p["fold"], p["pairs"], task_set, label_sets, val=val,
                          seed=common.seed)
    try:
        spec = finetune_spec(common, task_set, strategy=strategy, epochs=method_cfg.epochs, n_classes=data.n_classes,
                             class_names=data.class_names,
                             align_convention=sp.get(f"datasets.{dataset}.align_convention"), checkpoint=checkpoint,
                             runtime=dataclasses.replace(runtime, device=device))
    except ValueError as exc:
        raise UserError(f"task_sets.{task_set_name}: {exc}") from None
    settings = {k: v for k, v in sp.as_flat_dict().items() if not any(k.startswith(r) for r in RUNTIME)}
    key = work_key(settings, [p["fold"], p["pairs"], p["aligned"] / "alignment.parquet"])
    work = WORK / f"{dataset}-fold{fold}-{method}-{key}"
    remove_other_work(work)
    if spec.checkpoint is not None:
        from pipeline.models.checkpoint import CheckpointError
        from pipeline.training.build import build_model

        try:  # before any run, bar or output: a checkpoint that cannot initialise this model is a one-line error
            build_model(spec, torch.device("cpu"))
        except CheckpointError as exc:
            raise UserError(f"finetune.common.init: {exc}") from None
    s = spec.settings
    total = s.epochs * s.epoch_size * s.batch_size
    item = run_item(dataset, fold, method)
    inputs = fold_inputs(p, dataset, fold) + [Input(f) for f in (spec.checkpoint, common.schedule.file) if f]
    with stage_run("finetune", sp, item=item, inputs=inputs,
                   resume_file=work / "mlflow_run_id", group=(params, dataset)) as run:
        run.set_tags({"fold": str(fold), "method": method, "weighting": method_cfg.weighting, "dataset": dataset,
                      "task_set": task_set_name, "device": device})
        run.log_metrics({f"data_{k}": v for k, v in data.counts.items()})

        def on_resume(rows: list[dict], history: list[dict]) -> None:
            """Log what a killed run checkpointed but had not (fully) logged; MLflow says which steps it has."""
            keys = {k for r in rows for k in r if k != "step"} | {k for e in history for k in _epoch_scalars(e)}
            done = run.logged_steps(sorted(keys))
            for entry in history:
                epoch = entry["epoch"]
                run.log_rows([r for r in rows if r["epoch"] == epoch], skip=done)
                run.log_metrics(_epoch_scalars(entry), step=epoch, skip=done)

        def on_epoch(epoch: int, rows: list[dict], entry: dict) -> None:
            run.log_rows(rows)
            run.log_metrics(_epoch_scalars(entry), step=epoch)
            log.info("epoch %d: %s", epoch, _describe(entry["test"]))

        from pipeline.training.finetune import run_finetune
        from pipeline.training.step import NonFiniteError

        with progress_bar(f"finetune {dataset} fold {fold} {method}", total) as advance:
            try:
                result = run_finetune(spec, data.train, data.test, work, val=data.val, on_epoch=on_epoch,
                                      on_resume=on_resume, progress=advance)
            except NonFiniteError as exc:
                state = work / "state.pt"
                where = (f"the last good epoch is checkpointed in {state}" if state.is_file()
                         else "no epoch finished, so nothing is checkpointed")
                raise UserError(f"{exc}; training stopped, {where} (lower the learning rate or change the method's "
                                "options)") from None

        if result.resumed_from:
            typer.echo(f"resumed after epoch {result.resumed_from} from {work}", err=True)
        metrics = {"dataset": dataset, "fold": fold, "method": method, "weighting": method_cfg.weighting,
                   "selection": s.selection, "data": data.counts, **result.metrics}
        _write_outputs(p, result, metrics, spec, data, fold, method, dataset)
        run.log_metrics({"seconds": result.seconds, "images_per_second": result.images_per_second})
        run.log_metrics(_final_scalars(result.metrics))
        for name in ("steps.csv", "curves.png", "history.json"):
            if (p["out"] / name).is_file():
                run.log_artifact(p["out"] / name)
        run.log_dict(metrics, "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    typer.echo(f"{item}: last epoch {_describe(result.metrics['last'])} "
               f"({result.images_per_second:.0f} img/s on {device}) -> {p['out']}, {p['metrics']}")


def _describe(m: dict[str, Any]) -> str:
    """``verification 0.9150, expression 0.5170`` from an evaluation's accuracies."""
    from pipeline.training.evaluate import describe_accuracies

    return describe_accuracies(m) or "no metrics"


def _epoch_scalars(entry: dict) -> dict[str, float]:
    from pipeline.training.evaluate import headline

    return {f"{split}_{k}": v for split in ("test", "val") for k, v in headline(entry.get(split) or {}).items()}


def _final_scalars(metrics: dict) -> dict[str, float]:
    from pipeline.training.evaluate import headline

    out = {f"last_{k}": v for k, v in headline(metrics["last"]).items() if k != "epoch" and k != "auc"}
    for crit, b in metrics["best"].items():
        if isinstance(b, dict):
            out.update({f"best_{crit}_{k}": v for k, v in headline(b).items() if k != "epoch" and k != "auc"})
    return out


def _write_outputs(p: dict[str, Path], result, metrics: dict, spec, data, fold: int, method: str,
                   dataset: str) -> None:
    import numpy as np

    from pipeline.models.checkpoint import save_model
    from pipeline.report.figures import finetune_curves_figure
    from pipeline.training.finetune import step_columns

    with atomic_files(p["metrics"]) as (tmp_metrics,), atomic_dir(p["out"]) as tmp:
        meta = {"stage": "finetune", "dataset": dataset, "fold": fold, "method": method,
                "epoch": result.metrics["last"]["epoch"], "test_subjects": data.test_subjects}
        save_model(result.model, tmp / "model.pt", meta=meta)
        names = spec.task_names
        extra = sorted({k for r in result.rows for k in r} - set(step_columns(names)))
        with open(tmp / "steps.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=step_columns(names, extra), restval="")
            writer.writeheader()
            writer.writerows(result.rows)
        arrays = {k: np.asarray(v) for k, v in result.scores.items()}
        arrays["test_image_ids"] = np.asarray(data.test_ids, dtype=str)
        np.savez_compressed(tmp / "scores.npz", **arrays)
        write_json(result.history, tmp / "history.json")
        finetune_curves_figure(result.rows, names, tmp / "curves.png", f"{dataset} fold {fold}: {method}")
        write_json(metrics, tmp_metrics)
