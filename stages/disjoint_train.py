"""Train the multi-task network on disjoint datasets (each image labelled for one task) with one method; evaluate every
epoch.

One DVC stage instance ``disjoint_train@<fold>-<method>`` per fold in ``disjoint.folds`` × method in
``disjoint.run_methods`` (docs/disjoint.md). Reads ``disjoint.common``, the task set it names, ``disjoint.methods.
<method>``, the view (``disjoint.view``, ``dataset``) and the dataset's label sets; the runs compute with
``finetune.runtime``. The view ``demo_halves`` takes fold ``k`` of ``disjoint.dataset`` as the ``finetune`` stages read
it (same training images, same test pairs, so its rows compare with theirs) and splits the training subjects into an
identity-only and an expression-only half (:mod:`pipeline.disjoint.views`). The training is the fine-tuning loop
(:func:`stages.multitask_run.run_job`) with the method's batch plan (:class:`pipeline.disjoint.plan.DisjointPlan`).

Writes:

- ``data/disjoint/fold<k>-<method>/``: ``model.pt``, ``steps.csv``, ``scores.npz``, ``history.json``, ``curves.png``
  (as ``finetune``; ``history.json`` has each refresh's coverage and mean weight under ``plan``),
  ``pseudo/<epoch>.parquet`` (each refresh's pseudo labels: image, task, pseudo label, each weight factor, weight,
  selected, and the hidden true label ``truth`` on the demo view), ``hidden.parquet`` (the view's masked labels: what
  the report measures the pseudo labels against; no training code reads it);
- ``metrics/disjoint/fold<k>-<method>.json``: ``{last: M, best: {...}, mode, transfer, data: {...}}`` (``data``: the
  fold's counts plus each source's images ``source_<name>`` and the masked labels ``hidden_labels``); each refresh's
  coverage, mean weight and precision are in ``history.json`` (``plan``) and MLflow (``plan_*``).

Resume: the training state (the sampler, the teacher's current targets, the model...) is checkpointed every epoch into
``data/work/disjoint_train/fold<k>-<method>-<key>/`` with the refreshes written so far, so re-running after an
interruption continues from the last epoch and ends as the uninterrupted run.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.errors import UserError
from stages.common import load_stage_params, user_errors
from stages.multitask_run import MultitaskJob, run_job
from stages.provenance import fold_inputs

DECLARED = ["disjoint.view", "disjoint.dataset", "disjoint.common", "disjoint.methods.{method}",
            "task_sets.{disjoint_task_set}", "datasets.{disjoint_dataset}.label_sets",
            "datasets.{disjoint_dataset}.align_convention", "folds.datasets.{disjoint_dataset}.pairs",
            "pretrain.train.dataset"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["finetune.runtime"]
WORK = layout.WORK / "disjoint_train"

log = logging.getLogger("stages.disjoint_train")


def disjoint_item(fold: int, method: str) -> str:
    """``disjoint/fold<k>/<method>``: the ``item`` tag of one disjoint-datasets run."""
    return f"disjoint/fold{fold}/{method}"


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="A fold of disjoint.folds.")],
    method: Annotated[str, typer.Option("--method", help="A method of disjoint.methods.")],
) -> None:
    from pipeline.config import disjoint_transfer, load_params

    params = load_params(ctx.obj["params_path"])
    dj = params.disjoint
    if dj is None:
        raise UserError("params.yaml has no disjoint section (docs/disjoint.md)")
    if method not in dj.methods:
        raise UserError(f"unknown method {method!r}: disjoint.methods defines {', '.join(sorted(dj.methods))}")
    if fold not in dj.folds:
        raise UserError(f"--fold {fold}: not in disjoint.folds {dj.folds}")
    if dj.view != "demo_halves":
        raise UserError(f"disjoint.view {dj.view}: this stage trains the demo_halves view; the sources view needs "
                        "the readers of the disjoint datasets (docs/disjoint.md#views)")
    dataset = dj.dataset
    task_set_name = dj.common.task_set
    sp = load_stage_params(ctx, [s.format(method=method, disjoint_dataset=dataset, disjoint_task_set=task_set_name)
                                 for s in DECLARED] + RUNTIME)
    common = sp.get("disjoint.common")
    method_cfg = sp.get(f"disjoint.methods.{method}")
    task_set = sp.get(f"task_sets.{task_set_name}")
    label_sets = sp.get(f"datasets.{dataset}.label_sets")
    transfer = disjoint_transfer(common, method_cfg)
    p = layout.disjoint_run(dataset, fold, method)
    identity_tasks = task_set.evaluated("verification")
    views: dict = {}
    val = None
    if common.selection == "val_subjects":
        pairs_cfg = sp.get(f"folds.datasets.{dataset}.pairs")
        if pairs_cfg.kind != "expression":
            raise UserError(f"disjoint.common.selection val_subjects makes validation pairs with the 4-type recipe: "
                            f"folds.datasets.{dataset}.pairs.kind must be expression, not {pairs_cfg.kind}")
        from pipeline.training.fold_data import ValidationPairs

        val = ValidationPairs(common.val_fraction, label_sets[pairs_cfg.label_set], list(pairs_cfg.required))

    def load_data():  # noqa: ANN202 - FoldData with the view's training images
        import dataclasses

        from pipeline.data.manifest import read_manifest
        from pipeline.disjoint.views import demo_halves
        from pipeline.training.fold_data import load_fold_data

        manifest = read_manifest(p["manifest"])
        fd = load_fold_data(manifest, p["aligned"], p["fold"], p["pairs"], task_set, label_sets, val=val,
                            seed=common.seed)
        subject_of = dict(zip(manifest["image_id"].astype(str), manifest["subject"].astype(str), strict=True))
        try:
            view = demo_halves(fd.train, subject_of, task_set.names, full=method_cfg.labels == "full")
        except ValueError as exc:
            raise UserError(f"disjoint.view demo_halves on {dataset} fold {fold}: {exc}") from None
        views["view"] = view
        counts = {**fd.counts, **{f"source_{n}": k for n, k in zip(view.source_names, view.sizes, strict=True)},
                  "hidden_labels": len(view.hidden)}
        return dataclasses.replace(fd, train=view.train, counts=counts)

    def plan_for(data, spec, teacher=None, on_refresh=None):  # noqa: ANN001, ANN202 - the run's DisjointPlan
        """The run's plan (``teacher`` None: for its schedule only); a setting it cannot run with (sampler shares,
        ``cluster_k`` against the sources) is a one-line params error before any training."""
        from pipeline.disjoint.plan import DisjointPlan

        view, s = views["view"], spec.settings
        try:
            return DisjointPlan(
                sizes=view.sizes, source_tasks=view.source_tasks, image_ids=view.train.image_ids,
                labels=view.train.labels, n_classes=data.n_classes, identity_tasks=identity_tasks,
                mode=method_cfg.mode, task=method_cfg.task, transfer=transfer, joint=common.joint,
                epoch_size=s.epoch_size, batch_size=s.batch_size, refresh_epochs=common.refresh_epochs, seed=s.seed,
                teacher=teacher, on_refresh=on_refresh)
        except ValueError as exc:
            raise UserError(f"disjoint: {exc}") from None

    def make_plan(data, spec, model, work):  # noqa: ANN001, ANN202 - the plan with its teacher and refresh records
        from pipeline.disjoint.teacher import teacher_outputs

        s = spec.settings
        images = data.train.images
        hidden = views["view"].hidden

        def teacher(m, idx, tasks):  # noqa: ANN001, ANN202
            return teacher_outputs(m, images.index_select(0, idx.to(images.device)), tasks, crop=s.crop.size,
                                   input_size=s.network.input_size, batch_size=spec.runtime.eval_batch_size,
                                   amp=s.precision.amp)

        return plan_for(data, spec, teacher, lambda epoch, records: _write_refresh(work, epoch, records, hidden))

    def images(data, spec) -> int:  # noqa: ANN001 - the images the run trains on (progress bar)
        plan = plan_for(data, spec)
        return sum(plan.epoch_images(e) for e in range(1, spec.settings.epochs + 1))

    def finish(out, work) -> None:  # noqa: ANN001 - the refreshes and the hidden sidecar into the run's folder
        import shutil

        if (work / "pseudo").is_dir():
            shutil.copytree(work / "pseudo", out / "pseudo")
        views["view"].hidden.to_parquet(out / "hidden.parquet", index=False)

    run_job(MultitaskJob(
        stage="disjoint_train", section="disjoint", item=disjoint_item(fold, method),
        label=f"{dataset} fold {fold}", sp=sp, runtime=sp.get("finetune.runtime"), runtime_key="finetune.runtime",
        common=common, method=method, method_cfg=method_cfg, options=method_cfg.options(),
        task_set_name=task_set_name, task_set=task_set, paths=p,
        required=[p[k] for k in ("manifest", "aligned", "fold", "pairs")], inputs=fold_inputs(p, dataset, fold),
        key_inputs=[p["fold"], p["pairs"], p["aligned"] / "alignment.parquet"], load_data=load_data,
        pretrained=layout.pretrained_model(sp.get("pretrain.train.dataset")), work=WORK,
        job=f"fold{fold}-{method}", align_convention=sp.get(f"datasets.{dataset}.align_convention"),
        tags={"fold": str(fold), "dataset": dataset, "mode": method_cfg.mode, "transfer": transfer.kind},
        metrics_extra={"dataset": dataset, "fold": fold, "mode": method_cfg.mode, "transfer": transfer.kind},
        meta={"dataset": dataset, "fold": fold}, runtime_sections=RUNTIME, make_plan=make_plan, images=images,
        finish=finish, target_normalise=common.normalise))


def _write_refresh(work, epoch: int, records: dict, hidden) -> dict[str, float]:  # noqa: ANN001
    """One refresh's pseudo labels, with the hidden true label of each image where the view has one, to
    ``work/pseudo/<epoch>.parquet`` (atomic); returns the precision of the pseudo labels against it (all of them,
    the selected ones: ``precision_<task>``, ``precision_selected_<task>``) for the epoch's history and MLflow."""
    import pandas as pd

    from pipeline.atomic import atomic_files

    if not records:
        return {}
    scalars: dict[str, float] = {}
    table = pd.concat(list(records.values()), ignore_index=True)
    truth = hidden.rename(columns={"label": "truth"})
    table = table.merge(truth, on=["image_id", "task"], how="left")
    table["truth"] = table["truth"].fillna(-1).astype("int64")
    for task, part in table.groupby("task"):
        known = part[part["truth"] >= 0]
        chosen = known[known["selected"]]
        if len(part) and not part["selected"].any():
            log.warning("epoch %d: no pseudo label of %s was selected (its loss is 0 this epoch)", epoch, task)
        if len(known):
            scalars[f"precision_{task}"] = float((known["pseudo"] == known["truth"]).mean())
            if len(chosen):
                scalars[f"precision_selected_{task}"] = float((chosen["pseudo"] == chosen["truth"]).mean())
            log.info("epoch %d: %s pseudo labels: precision %.3f (selected %.3f, %d of %d)", epoch, task,
                     float((known["pseudo"] == known["truth"]).mean()),
                     float((chosen["pseudo"] == chosen["truth"]).mean()) if len(chosen) else float("nan"),
                     len(chosen), len(known))
    target = work / "pseudo" / f"{epoch}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_files(target) as (tmp,):
        table.to_parquet(tmp, index=False)
    return scalars
