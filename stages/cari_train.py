"""Train the 3-task caricature–visual model on one caricature dataset with one weighting method; evaluate every epoch.

One DVC stage instance ``cari_train@<dataset>-<method>`` per dataset in ``cari.datasets`` × method in
``cari.run_methods`` (docs/caricature.md). Reads ``cari.common``, the task set it names
(``task_sets.<cari.common.task_set>``, with its center blocks set by ``cari.common.centers``), the dataset's reader
(a ``dynamic`` method's ``variant: auto`` follows it: ``cavi`` on CaVI, ``webcari`` on WebCaricature) and
``cari.methods.<method>`` only; the runs compute with ``finetune.runtime``. The training is the fine-tuning loop of
the FR+FER runs (:func:`stages.multitask_run.run_job`), on the split of stage ``cari_split`` instead of a fold.

Writes (``<d>`` = the dataset):

- ``data/cari/<d>/<method>/``: ``model.pt``, ``steps.csv``, ``scores.npz``, ``history.json``, ``curves.png`` (as
  ``finetune``);
- ``metrics/cari/<d>/<method>.json``: ``{last: M, best: {selected_on, <criterion>: M...}}``; ``M`` holds the pair
  verification of the verification branch (with VAL on the training folds, the original's value), each head's
  accuracy on its modality's test images (``visual_accuracy``: visual-id, ``cari_accuracy``: cari-id,
  ``verif_accuracy``: the original's "mix"), the cross-modal accuracies (``visual_cross_accuracy``: c2v,
  ``cari_cross_accuracy``: v2c) and, on WebCaricature, C2P and P2C Rank-1/Rank-10 (ours and the original code's
  strided Rank-n).

Resume: the training state is checkpointed every epoch into ``data/work/cari_train/<d>-<method>-<key>/``, so
re-running after an interruption continues from the last epoch and reopens the same MLflow run.
"""

from __future__ import annotations

from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.errors import UserError
from stages.common import load_stage_params, user_errors
from stages.multitask_run import MultitaskJob, run_job
from stages.provenance import Input

DECLARED = ["cari.common", "cari.methods.{method}", "task_sets.{cari_task_set}", "datasets.{dataset}.label_sets",
            "datasets.{dataset}.align_convention", "datasets.{dataset}.reader", "pretrain.train.dataset"]
#: read but not tracked by DVC: they change only the speed
RUNTIME = ["finetune.runtime"]
WORK = layout.WORK / "cari_train"


def cari_item(dataset: str, method: str) -> str:
    """``<dataset>/<method>``: the ``item`` tag of one caricature run, which ``cari_report`` looks up."""
    return f"{dataset}/{method}"


@user_errors
def command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset of cari.datasets.")],
    method: Annotated[str, typer.Option("--method", help="A method of cari.methods.")],
) -> None:
    from pipeline.config import cari_method_options, load_params

    params = load_params(ctx.obj["params_path"])
    if params.cari is None:
        raise UserError("params.yaml has no cari section (docs/caricature.md)")
    if dataset not in params.cari.datasets:
        raise UserError(f"--dataset {dataset}: not in cari.datasets ({', '.join(params.cari.datasets) or 'empty'})")
    if method not in params.cari.methods:
        raise UserError(f"unknown method {method!r}: cari.methods defines {', '.join(sorted(params.cari.methods))}")
    task_set_name = params.cari.common.task_set
    sp = load_stage_params(ctx, [s.format(method=method, dataset=dataset, cari_task_set=task_set_name)
                                 for s in DECLARED] + RUNTIME)
    common = sp.get("cari.common")
    method_cfg = sp.get(f"cari.methods.{method}")
    label_sets = sp.get(f"datasets.{dataset}.label_sets")
    reader = sp.get(f"datasets.{dataset}.reader")

    from pipeline.training.center_policy import apply_center_policy

    try:
        task_set = apply_center_policy(sp.get(f"task_sets.{task_set_name}"), common.centers)
    except ValueError as exc:
        raise UserError(f"cari.common.{exc}") from None
    p = layout.cari_run(dataset, method)
    files = {k: p[k] for k in ("split", "pairs", "identification")}
    center_rows = None
    if common.centers.rows == "train_ids":
        from pipeline.training.cari_data import read_split

        rows = int(read_split(p["split"])["train_ids"])
        center_rows = {task_set.matrix_owner(t): rows for t in task_set.names if task_set.tasks[t].center}

    def load_data():  # noqa: ANN202 - FoldData
        from pipeline.data.manifest import read_manifest
        from pipeline.training.cari_data import load_cari_data

        return load_cari_data(read_manifest(p["manifest"]), p["aligned"], files, task_set, label_sets)

    inputs = [Input(str(p["manifest"]), dataset=dataset), Input(str(p["aligned"])),
              Input(str(p["split"]), dataset=f"{dataset} split", context="training"),
              Input(str(p["pairs"]), dataset=f"{dataset} pairs", context="evaluation"),
              Input(str(p["identification"]), dataset=f"{dataset} identification", context="evaluation")]
    run_job(MultitaskJob(
        stage="cari_train", section="cari", item=cari_item(dataset, method), label=dataset, sp=sp,
        runtime=sp.get("finetune.runtime"), runtime_key="finetune.runtime", common=common, method=method,
        method_cfg=method_cfg, options=cari_method_options(method_cfg, reader), task_set_name=task_set_name,
        task_set=task_set, paths=p,
        required=[p[k] for k in ("manifest", "aligned", "split", "pairs", "identification")],
        inputs=inputs, key_inputs=[*files.values(), p["aligned"] / "alignment.parquet"], load_data=load_data,
        pretrained=layout.pretrained_model(sp.get("pretrain.train.dataset")), work=WORK, job=f"{dataset}-{method}",
        align_convention=sp.get(f"datasets.{dataset}.align_convention"), tags={"dataset": dataset},
        metrics_extra={"dataset": dataset}, meta={"dataset": dataset}, group=(params, dataset, "cari"),
        center_rows=center_rows, runtime_sections=RUNTIME))
