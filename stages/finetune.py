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
interruption continues from the last epoch and reopens the same MLflow run. The run itself is
:func:`stages.multitask_run.run_job`, which the caricature runs share.
"""

from __future__ import annotations

from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.errors import UserError
from stages.common import finetune_dataset, load_stage_params, user_errors
from stages.multitask_run import MultitaskJob, run_job
from stages.provenance import fold_inputs
from stages.tracking import run_item

#: ``folds.datasets.<d>.pairs`` is used only by ``selection: val_subjects`` (the validation pairs' recipe)
DECLARED = ["finetune.common", "finetune.methods.{method}", "task_sets.{task_set}", "datasets.{dataset}.label_sets",
            "datasets.{dataset}.align_convention", "folds.datasets.{dataset}.pairs", "pretrain.train.dataset"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["finetune.runtime"]
WORK = layout.WORK / "finetune"


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="Fold index (0-based).")],
    method: Annotated[str, typer.Option("--method", help="A method of finetune.methods.")],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset of finetune.datasets.", show_default="the only one")] = None,
) -> None:
    from pipeline.config import load_params

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
    if fold >= params.folds.k:
        raise UserError(f"--fold {fold}: folds.k is {params.folds.k} (folds 0..{params.folds.k - 1})")
    val = None
    if common.selection == "val_subjects":
        pairs_cfg = sp.get(f"folds.datasets.{dataset}.pairs")
        if pairs_cfg.kind != "expression":
            raise UserError(f"finetune.common.selection val_subjects makes validation pairs with the 4-type recipe: "
                            f"folds.datasets.{dataset}.pairs.kind must be expression, not {pairs_cfg.kind}")
        from pipeline.training.fold_data import ValidationPairs

        val = ValidationPairs(common.val_fraction, label_sets[pairs_cfg.label_set], list(pairs_cfg.required))
    p = layout.finetune_run(dataset, fold, method)

    def load_data():  # noqa: ANN202 - FoldData
        from pipeline.data.manifest import read_manifest
        from pipeline.training.fold_data import load_fold_data

        return load_fold_data(read_manifest(p["manifest"]), p["aligned"], p["fold"], p["pairs"], task_set, label_sets,
                              val=val, seed=common.seed)

    run_job(MultitaskJob(
        stage="finetune", section="finetune", item=run_item(dataset, fold, method), label=f"{dataset} fold {fold}",
        sp=sp, runtime=sp.get("finetune.runtime"), runtime_key="finetune.runtime", common=common, method=method,
        method_cfg=method_cfg, options=method_cfg.options(), task_set_name=task_set_name, task_set=task_set,
        paths=p, required=[p[k] for k in ("manifest", "aligned", "fold", "pairs")],
        inputs=fold_inputs(p, dataset, fold), key_inputs=[p["fold"], p["pairs"], p["aligned"] / "alignment.parquet"],
        load_data=load_data, pretrained=layout.pretrained_model(sp.get("pretrain.train.dataset")), work=WORK,
        job=f"{dataset}-fold{fold}-{method}", align_convention=sp.get(f"datasets.{dataset}.align_convention"),
        tags={"fold": str(fold), "dataset": dataset}, metrics_extra={"dataset": dataset, "fold": fold},
        meta={"dataset": dataset, "fold": fold}, group=(params, dataset), runtime_sections=RUNTIME))
