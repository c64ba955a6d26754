"""Pretrain the trunk + identity branch on an identity dataset (softmax + center loss); verify every N steps.

The paper fine-tunes from a face-recognition model pretrained on MS-Celeb-1M that is no longer available; this
stage trains that model (docs/method.md §4.5) on the align stage's shards of ``pretrain.train.dataset`` (the demo's
``demo_webface``, CASIA-WebFace or MS-Celeb-1M), on one process or, with ``pretrain.train.processes > 1``, under
``torchrun`` (DDP; NCCL on CUDA, gloo on CPU), which the stage launches itself. Only rank 0 writes.

Writes (``<d>`` = ``pretrain.train.dataset``):

- ``data/pretrain/<d>/``: ``model.pt`` (trunk + identity branch + classifier, with its config: the
  ``finetune.common.init: pretrain`` checkpoint), ``steps.csv`` (every ``log_every`` steps: lr, loss, cross
  entropy, center loss, batch accuracy, gradient norm), ``history.json`` (each verification), ``curves.png``;
- ``metrics/pretrain/<d>.json``: last losses, verification accuracy on the configured pairs (last and best step),
  data counts.

Resume: the state is checkpointed every ``checkpoint_every`` steps into ``data/work/pretrain/<d>-<key>/`` (``key``
hashes the params, the inputs and the training code); re-running after an interruption continues from there and
reopens the same MLflow run.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError, UserError
from pipeline.processes import die_with_parent, run_child
from stages.common import load_stage_params, progress_bar, remove_other_work, user_errors
from stages.provenance import Input
from stages.tracking import RunLogger, stage_run
from stages.training_runs import resolve_device, work_key

#: params DVC tracks (``{pretrain_dataset}`` = pretrain.train.dataset)
DECLARED = ["pretrain.train", "datasets.{pretrain_dataset}.align_convention"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["pretrain.runtime"]
ALIGNED = layout.ALIGNED
OUT = layout.PRETRAIN
METRICS = layout.METRICS / "pretrain"
WORK = layout.WORK / "pretrain"

log = logging.getLogger("stages.pretrain")


def paths(dataset: str, verify: str, folds: list[int]) -> dict[str, Any]:
    """The stage's inputs and outputs (as in dvc.yaml)."""
    return {"manifest": layout.manifest_file(dataset), "aligned": ALIGNED / dataset, "verify_aligned": ALIGNED / verify,
            "pairs": [layout.fold_files(verify, k)[1] for k in folds], "out": OUT / dataset,
            "metrics": METRICS / f"{dataset}.json"}


def _inputs(p: dict[str, Any], dataset: str, verify: str, checkpoint: str | None) -> list[Input]:
    """What the run reads: the identity dataset (training), the verification pairs (evaluation), both datasets'
    aligned faces, and the init checkpoint."""
    pairs = [Input(str(f), dataset=f"{verify} {f.name.removesuffix('-pairs.parquet')} pairs", context="evaluation")
             for f in p["pairs"]]
    init = [Input(checkpoint)] if checkpoint is not None else []
    aligned = [Input(str(p["aligned"]))] + ([Input(str(p["verify_aligned"]))] if verify != dataset else [])
    return [Input(str(p["manifest"]), dataset=dataset, context="training"), *pairs, *aligned, *init]


def resolve_init(init: str) -> str | None:
    """The checkpoint ``pretrain.train.init`` names (``random`` → None).

    Raises:
        UserError: the checkpoint does not exist.
    """
    if init == "random":
        return None
    if not Path(init).is_file():
        raise UserError(f"pretrain.train.init: checkpoint not found: {init} (use 'random' or a checkpoint path)")
    return init


def _torchrun(ctx: typer.Context, processes: int) -> None:
    """Run this command under ``torchrun --standalone --nproc_per_node=<processes>`` and wait."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "stages", "--params", str(ctx.obj["params_path"]), "pretrain"]
    log.info("launching %s", " ".join(cmd))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    code = run_child(cmd, env=env)  # ends with this process; SIGTERM to it on an interrupt
    if code != 0:
        raise UserError(f"pretrain: torchrun exited with code {code} (the failing rank's message is above); the "
                        f"last checkpoint in {WORK} is resumed by the next run")


@user_errors
def command(ctx: typer.Context) -> None:
    import torch

    from pipeline.config import load_params
    from pipeline.training.distributed import from_env, launched_by_torchrun

    params = load_params(ctx.obj["params_path"])
    t = params.pretrain.train
    dataset, vds = t.dataset, t.verification.dataset
    sp = load_stage_params(ctx, [s.format(pretrain_dataset=dataset) for s in DECLARED] + RUNTIME)
    t = sp.get("pretrain.train")
    p = paths(dataset, vds, list(t.verification.folds))
    for f in [p["manifest"], p["aligned"], p["verify_aligned"], *p["pairs"]]:
        if not f.exists():
            raise DatasetError(f"{f} not found: run the upstream stages first (dvc repro pretrain)")
    if t.processes > 1 and not launched_by_torchrun():
        _torchrun(ctx, t.processes)
        return
    if launched_by_torchrun():
        die_with_parent(sig=signal.SIGTERM)  # a rank ends (cleanly: SIGTERM) with its torchrun
    runtime = sp.get("pretrain.runtime")
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    dist = from_env(resolve_device(runtime.device, "pretrain.runtime.device"))
    try:
        _train(sp, t, dataset, p, dist)
    finally:
        dist.close()


def _train(sp, t, dataset: str, p: dict[str, Any], dist) -> None:
    from pipeline.data.manifest import read_manifest
    from pipeline.training.pretrain_data import load_identity_faces, load_verification_pairs

    ids = load_identity_faces(read_manifest(p["manifest"]), p["aligned"])
    if len(ids.faces) < t.batch_size:
        raise DatasetError(f"{p['aligned']}: {len(ids.faces)} aligned faces are fewer than one batch "
                           f"(pretrain.train.batch_size {t.batch_size})")
    verify, vcounts = load_verification_pairs(p["verify_aligned"], p["pairs"])
    from pipeline.training.pretrain import pretrain_spec

    runtime = dataclasses.replace(sp.get("pretrain.runtime"), device=dist.device)
    spec = pretrain_spec(t, n_classes=ids.n_classes, align_convention=sp.get(f"datasets.{dataset}.align_convention"),
                         checkpoint=resolve_init(t.init), runtime=runtime)
    where = (f"on {dist.device} in the training process (pretrain.runtime.decode: device)"
             if runtime.decode == "device"
             else f"in {runtime.workers} loader worker processes (pretrain.runtime.decode: worker)" if runtime.workers
             else "in the training process by OpenCV (pretrain.runtime.workers: 0)")
    log.info("faces decoded %s", where)
    if spec.checkpoint is not None and dist.is_main:
        from pipeline.models.checkpoint import CheckpointError
        from pipeline.training.pretrain import build_pretrain_model

        try:  # a checkpoint that cannot initialise this model is a one-line error before anything runs
            build_pretrain_model(spec)
        except CheckpointError as exc:
            raise UserError(f"pretrain.train.init: {exc}") from None
    settings = {k: v for k, v in sp.as_flat_dict().items() if not any(k.startswith(r) for r in RUNTIME)}
    inputs = [p["aligned"] / "alignment.parquet", p["verify_aligned"] / "alignment.parquet", *p["pairs"]]
    work = WORK / f"{dataset}-{work_key(settings, inputs)}"
    if dist.is_main:
        remove_other_work(work)
    dist.barrier()
    counts = {**ids.counts, **{f"verification_{k}": v for k, v in vcounts.items()}}
    read = _inputs(p, dataset, t.verification.dataset, spec.checkpoint)
    run_ctx = (stage_run("pretrain", sp, item=dataset, inputs=read, resume_file=work / "mlflow_run_id")
               if dist.is_main else contextlib.nullcontext(RunLogger(None)))
    with run_ctx as run:
        run.set_tags({"dataset": dataset, "device": dist.device, "processes": str(dist.world)})
        run.log_metrics({f"data_{k}": v for k, v in counts.items()})

        def on_resume(rows: list[dict], history: list[dict]) -> None:
            keys = {k for r in rows for k in r if k != "step"} | {"verification_accuracy"}
            done = run.logged_steps(sorted(keys))
            run.log_rows(rows, skip=done)
            for e in history:
                run.log_metrics({"verification_accuracy": e["verification_accuracy"]}, step=e["step"], skip=done)

        def on_eval(entry: dict) -> None:
            run.log_metrics({"verification_accuracy": entry["verification_accuracy"]}, step=entry["step"])
            log.info("step %d: verification accuracy %.4f", entry["step"], entry["verification_accuracy"])

        from pipeline.training.pretrain import run_pretrain
        from pipeline.training.step import NonFiniteError

        bar = progress_bar(f"pretrain {dataset}", t.steps * t.batch_size) if dist.is_main \
            else contextlib.nullcontext(None)
        with bar as advance:
            try:
                result = run_pretrain(spec, ids.faces, work, dist, verify=verify, on_log=run.log_rows,
                                      on_eval=on_eval, on_resume=on_resume, progress=advance)
            except NonFiniteError as exc:
                raise UserError(f"{exc}; training stopped, {_kept_state(work)} (lower pretrain.train.lr)") from None
        if not dist.is_main:
            return
        if result.resumed_from:
            typer.echo(f"resumed after step {result.resumed_from} from {work}", err=True)
        metrics = {"dataset": dataset, "verification_dataset": t.verification.dataset,
                   "verification_folds": list(t.verification.folds), "data": counts, **result.metrics}
        _write_outputs(p, result, metrics, spec, ids, dataset)
        speed = {"seconds": result.seconds, "images_per_second": result.images_per_second,
                 "data_wait_fraction": result.data_wait_fraction}
        run.log_metrics(speed)
        for name in ("steps.csv", "curves.png", "history.json"):
            run.log_artifact(p["out"] / name)
        run.log_dict(metrics, "metrics.json")
    shutil.rmtree(work, ignore_errors=True)
    acc = (result.metrics.get("verification") or {}).get("last", {}).get("verification_accuracy")
    typer.echo(f"pretrain {dataset}: {t.steps} steps, last loss {result.metrics['last']['loss']:.4f}, "
               f"verification {acc if acc is None else f'{acc:.4f}'} ({result.images_per_second:.0f} img/s on "
               f"{dist.world} x {dist.device}, data wait {100 * result.data_wait_fraction:.1f} %) -> {p['out']}")


def _kept_state(work: Path) -> str:
    """What a stopped run leaves to resume from: the state file that exists and its step, or that there is none."""
    from pipeline.training.state import FILE

    state = work / FILE
    if not state.is_file():
        return "no checkpoint was written (none is kept)"
    import torch

    step = torch.load(state, map_location="cpu", weights_only=False).get("step")
    return f"the state of step {step} is kept in {state}"


def _write_outputs(p: dict[str, Any], result, metrics: dict, spec, ids, dataset: str) -> None:
    from pipeline.models.checkpoint import save_model
    from pipeline.report.figures import pretrain_curves_figure
    from pipeline.training.pretrain import ROW_COLUMNS

    with atomic_files(p["metrics"]) as (tmp_metrics,), atomic_dir(p["out"]) as tmp:
        meta = {"stage": "pretrain", "dataset": dataset, "steps": spec.settings.steps, "identities": ids.n_classes}
        save_model(result.model, tmp / "model.pt", meta=meta)
        with open(tmp / "steps.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=ROW_COLUMNS)
            writer.writeheader()
            writer.writerows(result.rows)
        write_json(result.history, tmp / "history.json")
        pretrain_curves_figure(result.rows, result.history, tmp / "curves.png", f"pretrain {dataset}")
        write_json(metrics, tmp_metrics)
