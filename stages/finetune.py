"""Fine-tune the multi-task network on one fold with one weighting method; evaluate every epoch; select.

One DVC stage instance ``finetune@<fold>-<method>`` per fold in ``folds.run`` × method in
``finetune.run_methods``. Reads ``finetune.common`` and ``finetune.methods.<method>`` only, so changing one
method's block re-runs only that method's stages.

Writes (``<d>`` = ``finetune.common.dataset``):

- ``data/finetune/<d>/fold<k>-<method>/``: ``model.pt`` (last epoch, with its config), ``steps.csv`` (per step:
  lr, each task loss and weight, total and weight losses, gradient norms), ``scores.npz`` (pair distances and
  labels, expression logits and labels, at the last epoch and at each criterion's best epoch), ``history.json``
  (every epoch's test and validation metrics), ``curves.png`` (weights and losses per step);
- ``metrics/finetune/<d>/fold<k>-<method>.json``: ``{last: M, best: {selected_on, verification, expression,
  authentication}}``.

Resume: the training state is checkpointed every epoch into ``data/work/finetune/<d>-fold<k>-<method>-<key>/``
(``key`` hashes the params, the fold files, the aligned data and the training code), so re-running after an
interruption continues from the last epoch and reopens the same MLflow run.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import DatasetError, ParamsError, UserError
from stages.common import atomic_dir, load_stage_params, progress_bar, staged_files, user_errors, write_json_atomic
from stages.tracking import run_item, stage_run
from stages.training_runs import resolve_device, work_key

#: ``folds.datasets.<d>.pairs.required`` is used only by ``selection: val_subjects`` (the validation pairs)
DECLARED = ["finetune.common", "finetune.methods.{method}", "datasets.{dataset}.label_set",
            "datasets.{dataset}.align_convention", "folds.datasets.{dataset}.pairs.required", "label_sets",
            "pretrain.train.dataset"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["finetune.device", "finetune.eval_batch_size", "finetune.threads", "finetune.compile"]
MANIFESTS = Path("data/manifests")
ALIGNED = Path("data/aligned")
FOLDS = Path("data/folds")
OUT = Path("data/finetune")
METRICS = Path("metrics/finetune")
WORK = Path("data/work/finetune")

log = logging.getLogger("stages.finetune")


def paths(dataset: str, fold: int, method: str) -> dict[str, Path]:
    """The stage's inputs and outputs (as in dvc.yaml)."""
    tag = f"fold{fold}-{method}"
    return {"manifest": MANIFESTS / f"{dataset}.parquet", "aligned": ALIGNED / dataset,
            "fold": FOLDS / dataset / f"fold{fold}.json", "pairs": FOLDS / dataset / f"fold{fold}-pairs.parquet",
            "out": OUT / dataset / tag, "metrics": METRICS / dataset / f"{tag}.json"}


def build_spec(common: Any, method_name: str, method: Any, n_identities: int, class_names: list[str],
               alignment: str, device: str, eval_batch_size: int, pretrained: Path | None = None, *,
               compile: bool = False):
    """The :class:`~pipeline.training.finetune.FinetuneSpec` of one method from its params (``pretrained``: the
    checkpoint ``init: pretrain`` stands for)."""
    from pipeline.models.network import HeadSpec, ModelConfig
    from pipeline.training.finetune import FinetuneSpec
    from pipeline.training.schedule import LrSchedule, read_schedule
    from pipeline.training.step import TaskSpec

    heads = (HeadSpec("identity", n_identities),
             HeadSpec("expression", len(class_names), common.expression_hidden or None, common.expression_relu_logits))
    model = ModelConfig(heads=heads, depth=common.depth, keep_prob=common.keep_prob, input_size=common.input_size,
                        alignment=alignment, crop=common.crop, class_names={"expression": list(class_names)},
                        bn_decay=common.bn_decay)
    try:
        schedule = read_schedule(common.lr_schedule) if common.lr_schedule else LrSchedule.constant(common.lr)
    except ValueError as exc:
        raise UserError(f"finetune.common.lr_schedule: {exc}") from None
    init = {"random": None, "pretrain": str(pretrained)}.get(common.init, common.init)
    if init is not None and not Path(init).is_file():
        hint = " (run the pretrain stage: dvc repro pretrain)" if common.init == "pretrain" else \
            " (use 'random', 'pretrain' or a model.pt path)"
        raise UserError(f"finetune.common.init: checkpoint not found: {init}{hint}")
    epochs = common.epochs if method.epochs is None else method.epochs
    if epochs == 0 and init is None:
        raise UserError(f"finetune.methods.{method_name}.epochs is 0 (evaluate the initial model) but "
                        "finetune.common.init is random: there is nothing to evaluate")
    return FinetuneSpec(
        model=model, tasks=[TaskSpec("identity", common.center_loss_factor), TaskSpec("expression")],
        weighting=method.weighting, weighting_options=method.options(), schedule=schedule, epochs=epochs,
        batch_size=common.batch_size, epoch_size=common.epoch_size, init=init, optimizer=common.optimizer,
        weights_optimizer=common.weights_optimizer,
        momentum=common.momentum, rms_decay=common.rms_decay, rms_eps=common.rms_eps,
        weight_decay=common.weight_decay, clip_norm=common.clip_norm, center_loss_alpha=common.center_loss_alpha,
        crop=common.crop, random_crop=common.random_crop, flip=common.flip,
        frozen_bn=("trunk", "identity") if common.freeze_pretrained_bn else (),
        dropout_off=() if common.identity_dropout else ("identity",),
        selection=common.selection, eval_mode=common.eval_mode, far_targets=tuple(common.far_targets),
        eval_folds=common.eval_folds, seed=common.seed, amp=common.amp, channels_last=common.channels_last,
        eval_batch_size=eval_batch_size, device=device, compile=compile,
    )


def check_weighting(name: str, method: Any, n_tasks: int = 2) -> None:
    """Build the strategy once so a bad option fails before any data is read."""
    from pipeline.weighting import build_weighting

    try:
        build_weighting(method.weighting, method.options(), ["identity", "expression"][:n_tasks], 16)
    except ValueError as exc:
        raise ParamsError(f"finetune.methods.{name}: {exc}") from None


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="Fold index (0-based).")],
    method: Annotated[str, typer.Option("--method", help="A method of finetune.methods.")],
) -> None:
    import torch

    from pipeline.config import load_params
    from pipeline.data.manifest import read_manifest

    params = load_params(ctx.obj["params_path"])
    if method not in params.finetune.methods:
        raise UserError(f"unknown method {method!r}: finetune.methods defines "
                        f"{', '.join(sorted(params.finetune.methods)) or 'nothing'}")
    dataset = params.finetune.common.dataset
    sp = load_stage_params(ctx, [s.format(method=method, dataset=dataset) for s in DECLARED] + RUNTIME)
    common = sp.get("finetune.common")
    method_cfg = sp.get(f"finetune.methods.{method}")
    if fold >= params.folds.k:
        raise UserError(f"--fold {fold}: folds.k is {params.folds.k} (folds 0..{params.folds.k - 1})")
    check_weighting(method, method_cfg)
    label_set = sp.get(f"label_sets.{sp.get(f'datasets.{dataset}.label_set')}")
    p = paths(dataset, fold, method)
    for key in ("manifest", "aligned", "fold", "pairs"):
        if not p[key].exists():
            raise DatasetError(f"{p[key]} not found: run the upstream stages first (dvc repro finetune)")
    threads = sp.get("finetune.threads")
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(sp.get("finetune.device"))

    from pipeline.training.fold_data import load_fold_data

    manifest = read_manifest(p["manifest"])
    data = load_fold_data(manifest, p["aligned"], p["fold"], p["pairs"], label_set,
                          val_fraction=common.val_fraction if common.selection == "val_subjects" else None,
                          val_required=list(sp.get(f"folds.datasets.{dataset}.pairs.required")), seed=common.seed)
    alignment = sp.get(f"datasets.{dataset}.align_convention")
    from stages.pretrain import checkpoint_path

    spec = build_spec(common, method, method_cfg, data.n_identities, data.class_names, alignment, device,
                      sp.get("finetune.eval_batch_size"), checkpoint_path(sp.get("pretrain.train.dataset")),
                      compile=sp.get("finetune.compile"))
    settings = {k: v for k, v in sp.as_flat_dict().items() if not any(k.startswith(r) for r in RUNTIME)}
    key = work_key(settings, [p["fold"], p["pairs"], p["aligned"] / "alignment.parquet"])
    work = WORK / f"{dataset}-fold{fold}-{method}-{key}"
    _clean_stale(dataset, fold, method, keep=work)
    if spec.init is not None:
        from pipeline.models.checkpoint import CheckpointError
        from pipeline.training.build import build_model

        try:  # before any run, bar or output: a checkpoint that cannot initialise this model is a one-line error
            build_model(spec, torch.device("cpu"))
        except CheckpointError as exc:
            raise UserError(f"finetune.common.init: {exc}") from None
    total = spec.epochs * spec.epoch_size * spec.batch_size
    item = run_item(dataset, fold, method)
    with stage_run("finetune", sp, item=item, inputs=[str(p["fold"]), str(p["aligned"])],
                   resume_file=work / "mlflow_run_id", group=params) as run:
        run.set_tags({"fold": str(fold), "method": method, "weighting": method_cfg.weighting, "dataset": dataset,
                      "device": device})
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
            test = entry["test"]
            log.info("epoch %d: verification %.4f, expression %.4f", epoch, test.get("verification_accuracy", -1),
                     test.get("expression_accuracy", -1))

        from pipeline.training.finetune import run_finetune
        from pipeline.training.step import NonFiniteError

        with progress_bar(f"finetune fold {fold} {method}", total) as advance:
            try:
                result = run_finetune(spec, data.train, data.test, work, val=data.val, on_epoch=on_epoch,
                                      on_resume=on_resume, progress=advance)
            except NonFiniteError as exc:
                raise UserError(f"{exc}; training stopped, the last good epoch is checkpointed in {work}/state.pt "
                                "(lower the learning rate or change the method's options)") from None

        if result.resumed_from:
            typer.echo(f"resumed after epoch {result.resumed_from} from {work}", err=True)
        metrics = {"dataset": dataset, "fold": fold, "method": method, "weighting": method_cfg.weighting,
                   "selection": spec.selection, "data": data.counts, **result.metrics}
        _write_outputs(p, result, metrics, spec, data, fold, method, dataset)
        run.log_metrics({"seconds": result.seconds, "images_per_second": result.images_per_second})
        run.log_metrics(_final_scalars(result.metrics))
        for name in ("steps.csv", "curves.png", "history.json"):
            if (p["out"] / name).is_file():
                run.log_artifact(p["out"] / name)
        run.log_dict(metrics, "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    last = result.metrics["last"]
    typer.echo(f"{item}: last epoch verification {last.get('verification_accuracy', float('nan')):.4f}, "
               f"expression {last.get('expression_accuracy', float('nan')):.4f} "
               f"({result.images_per_second:.0f} img/s on {device}) -> {p['out']}, {p['metrics']}")


def _clean_stale(dataset: str, fold: int, method: str, keep: Path) -> None:
    """Delete checkpoint folders of this (fold, method) made with other params/code (they can never resume)."""
    for d in WORK.glob(f"{dataset}-fold{fold}-{method}-*"):
        if d != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)


def _epoch_scalars(entry: dict) -> dict[str, float]:
    out = {}
    for split in ("test", "val"):
        m = entry.get(split) or {}
        for k in ("verification_accuracy", "expression_accuracy", "authentication"):
            if m.get(k) is not None:
                out[f"{split}_{k}"] = m[k]
        auc = (m.get("verification") or {}).get("auc")
        if auc is not None:
            out[f"{split}_auc"] = auc
    return out


def _final_scalars(metrics: dict) -> dict[str, float]:
    out = {}
    for k in ("verification_accuracy", "expression_accuracy", "authentication"):
        if metrics["last"].get(k) is not None:
            out[f"last_{k}"] = metrics["last"][k]
        for crit, b in metrics["best"].items():
            if isinstance(b, dict) and b.get(k) is not None:
                out[f"best_{crit}_{k}"] = b[k]
    return out


def _write_outputs(p: dict[str, Path], result, metrics: dict, spec, data, fold: int, method: str,
                   dataset: str) -> None:
    import numpy as np

    from pipeline.models.checkpoint import save_model
    from pipeline.training.finetune import step_columns

    with staged_files(p["metrics"]) as (tmp_metrics,), atomic_dir(p["out"]) as tmp:
        meta = {"stage": "finetune", "dataset": dataset, "fold": fold, "method": method,
                "epoch": result.metrics["last"]["epoch"], "test_subjects": data.test_subjects}
        save_model(result.model, tmp / "model.pt", meta=meta)
        names = [t.name for t in spec.tasks]
        extra = sorted({k for r in result.rows for k in r} - set(step_columns(names)))
        with open(tmp / "steps.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=step_columns(names, extra), restval="")
            writer.writeheader()
            writer.writerows(result.rows)
        arrays = {k: np.asarray(v) for k, v in result.scores.items()}
        arrays["test_image_ids"] = np.asarray(data.test_ids, dtype=str)
        np.savez_compressed(tmp / "scores.npz", **arrays)
        write_json_atomic(result.history, tmp / "history.json")
        _plot_curves(result.rows, names, tmp / "curves.png", f"{dataset} fold {fold}: {method}")
        write_json_atomic(metrics, tmp_metrics)


def _plot_curves(rows: list[dict], names: list[str], path: Path, title: str) -> None:
    """Task weights (top) and task losses (bottom) per step, the paper's Fig. 2/3 layout."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for t in names:
        top.plot(steps, [r[f"weight_{t}"] for r in rows], label=t, linewidth=1)
        bottom.plot(steps, [r[f"loss_{t}"] for r in rows], label=t, linewidth=1)
    top.set_ylabel("weight")
    bottom.set_ylabel("loss")
    bottom.set_xlabel("step")
    top.legend(loc="best", fontsize=8)
    top.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
