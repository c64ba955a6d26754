"""Raw-pixel PCA baseline of one fold of one dataset, evaluated with the fine-tuning stages' protocol (a row of the
results).

One DVC stage instance ``pixel_baseline@<dataset>-<fold>`` per dataset in ``finetune.datasets`` × fold in
``folds.run``. The fold's data come from :func:`pipeline.training.fold_data.load_fold_data` and the numbers from
:func:`pipeline.training.evaluate.evaluate`, as in ``finetune``: the same task set, test images, pairs, verification
protocol, seed and centre crop (``finetune.common.{task_set,crop,protocol,seed}``). The model
(:mod:`pipeline.evaluation.pixel_pca`): the crops resized to ``pixel_baseline.size``, PCA fitted on the fold's
training images only, L2-normalised projections as the embeddings of every verification/identification task, a
logistic regression on the training projections per classification task.

Writes, in the finetune stage's formats:

- ``metrics/finetune/<d>/fold<k>-pixel_pca.json``: ``{dataset, fold, method: "pixel_pca", weighting: null,
  selection: "none", data, epochs: 0, last: M, best: {selected_on: "none", <criterion>: M...}}`` (every "epoch" is
  0: there is no training loop);
- ``data/finetune/<d>/fold<k>-pixel_pca/``: ``scores.npz`` (``last_distances``, ``last_same``,
  ``last_<task>_logits``, ``last_<task>_labels``, ``test_image_ids``) and ``pca.json`` (components, explained
  variance, settings).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

import pipeline.paths as layout
from pipeline.errors import DatasetError, UserError
from stages.common import finetune_dataset, load_stage_params, user_errors
from stages.provenance import fold_inputs
from stages.tracking import run_item, stage_run

METHOD = "pixel_pca"  # = pipeline.evaluation.pixel_pca.METHOD, which the commands import lazily (a fast --help)
DECLARED = ["pixel_baseline", "finetune.common.task_set", "finetune.common.crop", "finetune.common.protocol",
            "finetune.common.seed", "task_sets.{task_set}", "datasets.{dataset}.label_sets"]

log = logging.getLogger("stages.pixel_baseline")


def run_fold(data: Any, tasks: Any, settings: Any, *, protocol: Any, seed: int
             ) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Fit the baseline on ``data.train`` (a :class:`~pipeline.training.fold_data.FoldData`) for the task set
    ``tasks``, evaluate on ``data.test``.

    Returns:
        ``(M, scores, model)``: the metrics of :func:`pipeline.training.evaluate.evaluate`, its raw scores and the
        fitted :class:`~pipeline.evaluation.pixel_pca.PixelPCA`.
    """
    from pipeline.training.pixel_eval import evaluate_pixel_baseline

    try:
        return evaluate_pixel_baseline(data, tasks, settings, protocol=protocol, seed=seed)
    except ValueError as exc:
        raise DatasetError(f"pixel baseline: {exc}") from None


def metrics_record(dataset: str, fold: int, counts: dict[str, int], m: dict[str, Any], criteria: list[str]
                   ) -> dict[str, Any]:
    """The metrics file, in the finetune stage's shape (no training: epoch 0 everywhere, nothing selected)."""
    from pipeline.evaluation.pixel_pca import baseline_record

    return baseline_record(m, criteria, counts, dataset=dataset, fold=fold)


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="Fold index (0-based).")],
    dataset: Annotated[str | None, typer.Option(
        "--dataset", help="A dataset of finetune.datasets.", show_default="the only one")] = None,
) -> None:
    from pipeline.config import load_params
    from pipeline.data.manifest import read_manifest
    from pipeline.evaluation.pixel_pca import PixelPCASettings, write_baseline_outputs
    from pipeline.training.evaluate import criteria, describe_accuracies, headline
    from pipeline.training.fold_data import load_fold_data

    params = load_params(ctx.obj["params_path"])
    dataset = finetune_dataset(params, dataset)
    task_set_name = params.finetune.common.task_set
    sp = load_stage_params(ctx, [s.format(dataset=dataset, task_set=task_set_name) for s in DECLARED])
    if fold >= params.folds.k:
        raise UserError(f"--fold {fold}: folds.k is {params.folds.k} (folds 0..{params.folds.k - 1})")
    tasks = sp.get(f"task_sets.{task_set_name}")
    cfg = sp.get("pixel_baseline")
    crop = sp.get("finetune.common.crop").size
    seed = sp.get("finetune.common.seed")
    p = layout.finetune_run(dataset, fold, METHOD)
    for key in ("manifest", "aligned", "fold", "pairs"):
        if not p[key].exists():
            raise DatasetError(f"{p[key]} not found: run the upstream stages first (dvc repro pixel_baseline)")

    manifest = read_manifest(p["manifest"])
    data = load_fold_data(manifest, p["aligned"], p["fold"], p["pairs"], tasks,
                          sp.get(f"datasets.{dataset}.label_sets"), seed=seed)
    stored = int(data.train.images.shape[-1])
    if crop > stored:
        raise UserError(f"finetune.common.crop.size is {crop} but the aligned faces of {dataset} are {stored} px")
    settings = PixelPCASettings(crop=crop, size=cfg.size, grey=cfg.grey, components=cfg.components,
                                whiten=cfg.whiten, probe_c=cfg.probe_c, seed=seed)
    item = run_item(dataset, fold, METHOD)
    with stage_run("pixel_baseline", sp, item=item, inputs=fold_inputs(p, dataset, fold),
                   group=(params, dataset)) as run:
        run.set_tags({"fold": str(fold), "method": METHOD, "dataset": dataset, "task_set": task_set_name})
        run.log_metrics({f"data_{k}": v for k, v in data.counts.items()})
        m, scores, model = run_fold(data, tasks, settings, protocol=sp.get("finetune.common.protocol"), seed=seed)
        metrics = metrics_record(dataset, fold, data.counts, m, list(criteria(tasks)))
        summary = model.summary()
        write_baseline_outputs(p["out"], p["metrics"], metrics, scores, data.test_ids, summary)
        run.log_metrics(headline(m))
        run.log_metrics({"pca_components": summary["components"], "explained_variance": summary["explained_variance"]})
        run.log_dict(metrics, "metrics.json")
        run.log_dict(summary, "pca.json")
    typer.echo(f"{item}: {describe_accuracies(m)} ({summary['components']} components, "
               f"{summary['explained_variance']:.1%} of the variance) -> {p['out']}, {p['metrics']}")
