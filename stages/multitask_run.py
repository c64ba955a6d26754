"""What the multi-task training stages (``finetune``, ``cari_train``) share: one run of the fine-tuning loop, from
checked settings to its outputs, resume folder and MLflow run.

A stage command resolves its own params and paths into a :class:`MultitaskJob` (which section, which files, which
data loader) and hands it to :func:`run_job`; the loop, the checks, the outputs and the logging are this one code
path, so the caricature runs are the same training as the FR+FER runs (docs/caricature.md).

Writes (``out`` = the run's folder):

- ``out/``: ``model.pt`` (last epoch, with its config), ``steps.csv`` (per step: lr, each task's loss and weight,
  total and weight losses, gradient norms, ``present_<task>``), ``scores.npz`` (pair distances and labels, each
  classification task's logits and labels, at the last epoch and at each criterion's best epoch), ``history.json``
  (every epoch's test and validation metrics), ``curves.png`` (weights and losses per step);
- the metrics JSON: ``{last: M, best: {selected_on, <criterion>: M...}}``.

Resume: the training state is checkpointed every epoch into the job's ``work`` folder (its name ends in a key hashing
the params, the inputs and the training code), so re-running after an interruption continues from the last epoch
and reopens the same MLflow run.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError, ParamsError, UserError
from stages.common import progress_bar, remove_other_work
from stages.provenance import Input
from stages.tracking import stage_run
from stages.training_runs import resolve_device, work_key

__all__ = ["MultitaskJob", "resolve_init", "run_job"]

log = logging.getLogger("stages.multitask_run")


def resolve_init(init: str, pretrained: Path, key: str) -> str | None:
    """The checkpoint ``init`` names (``random`` → None, ``pretrain`` → the pretrain stage's ``model.pt``).

    Raises:
        UserError: the checkpoint does not exist (naming the params ``key``).
    """
    checkpoint = {"random": None, "pretrain": str(pretrained)}.get(init, init)
    if checkpoint is not None and not Path(checkpoint).is_file():
        hint = " (run the pretrain stage: dvc repro pretrain)" if init == "pretrain" else \
            " (use 'random', 'pretrain' or a model.pt path)"
        raise UserError(f"{key}: checkpoint not found: {checkpoint}{hint}")
    return checkpoint


@dataclass
class MultitaskJob:
    """One multi-task run as a stage resolved it.

    Attributes:
        stage: the command (``finetune`` | ``cari_train``): the MLflow run's stage.
        section: the params section of the run's settings (``finetune`` | ``cari``): names keys in messages.
        item: the run's name in its family (``<dataset>/fold<k>/<method>``, ``<dataset>/<method>``).
        label: how the progress bar and the log name the run.
        sp: the stage's declared params (:class:`pipeline.config.StageParams`).
        runtime: the runtime settings (device not yet resolved) and ``runtime_key`` their params key.
        common: the shared settings; ``method``/``method_cfg``: the method's name and block; ``options``: its
            weighting options (``variant: auto`` resolved).
        task_set_name, task_set: the task set (center policy applied).
        paths: ``out`` (the run's folder), ``metrics`` (its JSON) and the files whose absence means "run the
            upstream stages" (``required``).
        inputs: what the run reads, for provenance tags; ``key_inputs``: the files whose content keys the resume
            folder.
        load_data: reads the run's :class:`~pipeline.training.fold_data.FoldData`.
        pretrained: the pretrain stage's model (``init: pretrain``).
        work: the folder the resume folder is made in, and ``job`` its name before the key.
        align_convention: the dataset's crop convention (stored in the model).
        tags: extra MLflow tags; ``metrics_extra``: extra keys of the metrics JSON; ``meta``: extra keys of the
            model's metadata.
        group: ``(params, dataset)`` for the results table's ``group`` tag, or None.
        center_rows: rows of center matrices smaller than their classes (``centers.rows: train_ids``).
        make_plan: ``(data, spec, model, work) -> BatchPlan``: where the run's batches come from (the
            disjoint-datasets runs), or None (``epoch_size`` batches of one permutation stream); ``images``: the
            images the plan trains on, for the progress bar.
        finish: ``(out, work)``: writes the job's own files into the run's folder before it is published.
        target_normalise: the denominator of soft-target losses (``rows`` | ``weights``).
    """

    stage: str
    section: str
    item: str
    label: str
    sp: Any
    runtime: Any
    runtime_key: str
    common: Any
    method: str
    method_cfg: Any
    options: dict[str, Any]
    task_set_name: str
    task_set: Any
    paths: dict[str, Path]
    required: Sequence[Path]
    inputs: list[Input]
    key_inputs: list[Path]
    load_data: Callable[[], Any]
    pretrained: Path
    work: Path
    job: str
    align_convention: str
    tags: dict[str, str] = field(default_factory=dict)
    metrics_extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    group: Any | None = None
    center_rows: Mapping[str, int] | None = None
    runtime_sections: Sequence[str] = ()
    make_plan: Callable[..., Any] | None = None
    images: Callable[[Any, Any], int] | None = None
    finish: Callable[[Path, Path], None] | None = None
    target_normalise: str = "rows"


def run_job(job: MultitaskJob) -> None:
    """Check, train, evaluate, write and log one run (module docstring)."""
    import torch

    from pipeline.training.schedule import schedule_from
    from pipeline.weighting.options import parse_weighting

    common, method_cfg, method = job.common, job.method_cfg, job.method
    try:  # params validation checks the methods of run_methods; this one may be any method of the section
        strategy = parse_weighting(method_cfg.weighting, job.options, job.task_set.names)
    except ValueError as exc:
        raise ParamsError(f"{job.section}.methods.{method}: {exc}") from None
    try:
        schedule_from(common.schedule)
    except ValueError as exc:
        raise UserError(f"{job.section}.common.schedule: {exc}") from None
    checkpoint = resolve_init(common.init, job.pretrained, f"{job.section}.common.init")
    epochs = common.epochs if method_cfg.epochs is None else method_cfg.epochs
    if epochs == 0 and checkpoint is None:
        raise UserError(f"{job.section}.methods.{method}.epochs is 0 (evaluate the initial model) but "
                        f"{job.section}.common.init is random: there is nothing to evaluate")
    for path in job.required:
        if not path.exists():
            raise DatasetError(f"{path} not found: run the upstream stages first (dvc repro {job.stage})")
    runtime = job.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    device = resolve_device(runtime.device, f"{job.runtime_key}.device")

    from pipeline.training.build import finetune_spec

    data = job.load_data()
    try:
        spec = finetune_spec(common, job.task_set, strategy=strategy, epochs=method_cfg.epochs,
                             n_classes=data.n_classes, class_names=data.class_names,
                             align_convention=job.align_convention, checkpoint=checkpoint,
                             runtime=dataclasses.replace(runtime, device=device), center_rows=job.center_rows)
        spec = dataclasses.replace(spec, target_normalise=job.target_normalise)
    except ValueError as exc:
        raise UserError(f"task_sets.{job.task_set_name}: {exc}") from None
    settings = {k: v for k, v in job.sp.as_flat_dict().items()
                if not any(k.startswith(r) for r in job.runtime_sections)}
    key = work_key(settings, job.key_inputs)
    work = job.work / f"{job.job}-{key}"
    remove_other_work(work)
    if spec.checkpoint is not None:
        from pipeline.models.checkpoint import CheckpointError
        from pipeline.training.build import build_model

        try:  # before any run, bar or output: a checkpoint that cannot initialise this model is a one-line error
            build_model(spec, torch.device("cpu"))
        except CheckpointError as exc:
            raise UserError(f"{job.section}.common.init: {exc}") from None
    s = spec.settings
    total = job.images(data, spec) if job.images is not None else s.epochs * s.epoch_size * s.batch_size
    p = job.paths
    inputs = job.inputs + [Input(f) for f in (spec.checkpoint, common.schedule.file) if f]
    with stage_run(job.stage, job.sp, item=job.item, inputs=inputs, resume_file=work / "mlflow_run_id",
                   group=job.group) as run:
        run.set_tags({"method": method, "weighting": method_cfg.weighting, "task_set": job.task_set_name,
                      "device": device, **job.tags})
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

        with progress_bar(f"{job.stage} {job.label} {method}", total) as advance:
            try:
                plan = None
                if job.make_plan is not None:
                    def plan(model):  # noqa: ANN001, ANN202 - the loop's plan factory
                        return job.make_plan(data, spec, model, work)
                result = run_finetune(spec, data.train, data.test, work, val=data.val, on_epoch=on_epoch,
                                      on_resume=on_resume, progress=advance, plan=plan)
            except NonFiniteError as exc:
                state = work / "state.pt"
                where = (f"the last good epoch is checkpointed in {state}" if state.is_file()
                         else "no epoch finished, so nothing is checkpointed")
                raise UserError(f"{exc}; training stopped, {where} (lower the learning rate or change the method's "
                                "options)") from None

        if result.resumed_from:
            typer.echo(f"resumed after epoch {result.resumed_from} from {work}", err=True)
        metrics = {**job.metrics_extra, "method": method, "weighting": method_cfg.weighting,
                   "selection": s.selection, "data": data.counts, **result.metrics}
        meta = {"stage": job.stage, **job.meta, "method": method, "epoch": result.metrics["last"]["epoch"],
                "test_subjects": data.test_subjects}
        _write_outputs(p, result, metrics, spec, data, meta, f"{job.label}: {method}",
                       finish=(lambda out: job.finish(out, work)) if job.finish is not None else None)
        run.log_metrics({"seconds": result.seconds, "images_per_second": result.images_per_second})
        run.log_metrics(_final_scalars(result.metrics))
        for name in ("steps.csv", "curves.png", "history.json"):
            if (p["out"] / name).is_file():
                run.log_artifact(p["out"] / name)
        run.log_dict(metrics, "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    typer.echo(f"{job.item}: last epoch {_describe(result.metrics['last'])} "
               f"({result.images_per_second:.0f} img/s on {device}) -> {p['out']}, {p['metrics']}")


def _describe(m: dict[str, Any]) -> str:
    """``verification 0.9150, expression 0.5170`` from an evaluation's accuracies."""
    from pipeline.training.evaluate import describe_accuracies

    return describe_accuracies(m) or "no metrics"


def _epoch_scalars(entry: dict) -> dict[str, float]:
    """An epoch's test and validation headline metrics, and its batch plan's scalars (``plan_<name>``: a disjoint
    run's refresh)."""
    from pipeline.training.evaluate import headline

    out = {f"{split}_{k}": v for split in ("test", "val") for k, v in headline(entry.get(split) or {}).items()}
    out.update({f"plan_{k}": v for k, v in (entry.get("plan") or {}).items()})
    return out


def _final_scalars(metrics: dict) -> dict[str, float]:
    from pipeline.training.evaluate import headline

    out = {f"last_{k}": v for k, v in headline(metrics["last"]).items() if k != "epoch" and k != "auc"}
    for crit, b in metrics["best"].items():
        if isinstance(b, dict):
            out.update({f"best_{crit}_{k}": v for k, v in headline(b).items() if k != "epoch" and k != "auc"})
    return out


def _write_outputs(p: dict[str, Path], result, metrics: dict, spec, data, meta: dict, title: str,
                   finish: Callable[[Path], None] | None = None) -> None:
    import numpy as np

    from pipeline.models.checkpoint import save_model
    from pipeline.report.figures import finetune_curves_figure
    from pipeline.training.finetune import step_columns

    with atomic_files(p["metrics"]) as (tmp_metrics,), atomic_dir(p["out"]) as tmp:
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
        finetune_curves_figure(result.rows, names, tmp / "curves.png", title)
        if finish is not None:
            finish(tmp)
        write_json(metrics, tmp_metrics)
