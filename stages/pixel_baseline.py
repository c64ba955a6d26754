"""Raw-pixel PCA baseline of one fold, evaluated with the fine-tuning stages' protocol (a row of the results).

One DVC stage instance ``pixel_baseline@<fold>`` per fold in ``folds.run``. The fold's data come from
:func:`pipeline.training.fold_data.load_fold_data` and the numbers from :func:`pipeline.training.evaluate.evaluate`,
as in ``finetune``: the same test images, pairs, verification folds, seed and FAR targets
(``finetune.common.{eval_mode,eval_folds,far_targets,seed}``) and the same centre crop (``finetune.common.crop``).
The model (:mod:`pipeline.evaluation.pixel_pca`): the crops resized to ``pixel_baseline.size``, PCA fitted on the
fold's training images only, L2-normalised projections as embeddings, a logistic regression on the training
projections for the expression.

Writes (``<d>`` = ``finetune.common.dataset``), in the finetune stage's formats:

- ``metrics/finetune/<d>/fold<k>-pixel_pca.json``: ``{dataset, fold, method: "pixel_pca", weighting: null,
  selection: "none", data, epochs: 0, last: M, best: {selected_on: "none", verification|expression|
  authentication: M}}`` (every "epoch" is 0: there is no training loop);
- ``data/finetune/<d>/fold<k>-pixel_pca/``: ``scores.npz`` (``last_distances``, ``last_same``,
  ``last_expression_logits``, ``last_expression_labels``, ``test_image_ids``) and ``pca.json`` (components,
  explained variance, settings).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import DatasetError, UserError
from stages.common import atomic_dir, load_stage_params, staged_files, user_errors, write_json_atomic
from stages.tracking import run_item, stage_run

METHOD = "pixel_pca"
#: as in dvc.yaml; ``${finetune.common.dataset}`` is replaced by the dataset when the stage runs
DATASET_VAR = "${finetune.common.dataset}"
DECLARED = ["pixel_baseline", "finetune.common.dataset", "finetune.common.crop", "finetune.common.eval_mode",
            "finetune.common.eval_folds", "finetune.common.far_targets", "finetune.common.seed",
            f"datasets.{DATASET_VAR}.label_set", "label_sets"]
MANIFESTS = Path("data/manifests")
ALIGNED = Path("data/aligned")
FOLDS = Path("data/folds")
OUT = Path("data/finetune")
METRICS = Path("metrics/finetune")
CRITERIA = ("verification", "expression", "authentication")

log = logging.getLogger("stages.pixel_baseline")


def paths(dataset: str, fold: int) -> dict[str, Path]:
    """The stage's inputs and outputs (as in dvc.yaml)."""
    tag = f"fold{fold}-{METHOD}"
    return {"manifest": MANIFESTS / f"{dataset}.parquet", "aligned": ALIGNED / dataset,
            "fold": FOLDS / dataset / f"fold{fold}.json", "pairs": FOLDS / dataset / f"fold{fold}-pairs.parquet",
            "out": OUT / dataset / tag, "metrics": METRICS / dataset / f"{tag}.json"}


def run_fold(data: Any, settings: Any, *, eval_mode: str, eval_folds: int, far_targets: tuple[float, ...],
             seed: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Fit the baseline on ``data.train`` (a :class:`~pipeline.training.fold_data.FoldData`), evaluate on
    ``data.test``.

    Returns:
        ``(M, scores, model)``: the metrics of :func:`pipeline.training.evaluate.evaluate`, its raw scores and the
        fitted :class:`~pipeline.evaluation.pixel_pca.PixelPCA`.
    """
    import numpy as np

    from pipeline.evaluation.pixel_pca import PixelPCA
    from pipeline.training.evaluate import Predictions, evaluate

    train_images = data.train.images.cpu().numpy()
    expression = data.train.labels["expression"].cpu().numpy()
    try:
        model = PixelPCA(settings).fit(train_images, expression, len(data.class_names))
    except ValueError as exc:
        raise DatasetError(f"pixel baseline: {exc}") from None
    test_images = np.asarray(data.test.images.cpu().numpy())
    z = model.project(test_images)
    pred = Predictions(embeddings=model.embed(test_images),
                       logits={"expression": model.expression_scores(projections=z)})
    m, scores = evaluate(pred, data.test, mode=eval_mode, far_targets=tuple(far_targets), n_folds=eval_folds,
                         seed=seed)
    return m, scores, model


def metrics_record(dataset: str, fold: int, counts: dict[str, int], m: dict[str, Any]) -> dict[str, Any]:
    """The metrics file, in the finetune stage's shape (no training: epoch 0 everywhere, nothing selected)."""
    row = {"epoch": 0, **m}
    best: dict[str, Any] = {"selected_on": "none"}
    for crit in CRITERIA:
        best[crit] = dict(row)
    return {"dataset": dataset, "fold": fold, "method": METHOD, "weighting": None, "selection": "none",
            "data": dict(counts), "epochs": 0, "last": dict(row), "best": best}


@user_errors
def command(
    ctx: typer.Context,
    fold: Annotated[int, typer.Option("--fold", min=0, help="Fold index (0-based).")],
) -> None:
    from pipeline.config import load_params
    from pipeline.data.manifest import read_manifest
    from pipeline.evaluation.pixel_pca import PixelPCASettings
    from pipeline.training.fold_data import load_fold_data

    params = load_params(ctx.obj["params_path"])
    dataset = params.finetune.common.dataset
    sp = load_stage_params(ctx, [s.replace(DATASET_VAR, dataset) for s in DECLARED])
    if fold >= params.folds.k:
        raise UserError(f"--fold {fold}: folds.k is {params.folds.k} (folds 0..{params.folds.k - 1})")
    label_set_name = sp.get(f"datasets.{dataset}.label_set")
    if label_set_name is None:
        raise UserError(f"finetune.common.dataset: {dataset!r} has no label_set (the baseline's expression probe "
                        "needs one)")
    label_set = sp.get(f"label_sets.{label_set_name}")
    cfg = sp.get("pixel_baseline")
    crop = sp.get("finetune.common.crop")
    seed = sp.get("finetune.common.seed")
    p = paths(dataset, fold)
    for key in ("manifest", "aligned", "fold", "pairs"):
        if not p[key].exists():
            raise DatasetError(f"{p[key]} not found: run the upstream stages first (dvc repro pixel_baseline)")

    manifest = read_manifest(p["manifest"])
    data = load_fold_data(manifest, p["aligned"], p["fold"], p["pairs"], label_set, seed=seed)
    stored = int(data.train.images.shape[-1])
    if crop > stored:
        raise UserError(f"finetune.common.crop is {crop} but the aligned faces of {dataset} are {stored} px")
    settings = PixelPCASettings(crop=crop, size=cfg.size, grey=cfg.grey, components=cfg.components,
                                whiten=cfg.whiten, expression_c=cfg.expression_c, seed=seed)
    item = run_item(dataset, fold, METHOD)
    with stage_run("pixel_baseline", sp, item=item, inputs=[str(p["fold"]), str(p["aligned"])],
                   group=params) as run:
        run.set_tags({"fold": str(fold), "method": METHOD, "dataset": dataset})
        run.log_metrics({f"data_{k}": v for k, v in data.counts.items()})
        m, scores, model = run_fold(data, settings, eval_mode=sp.get("finetune.common.eval_mode"),
                                    eval_folds=sp.get("finetune.common.eval_folds"),
                                    far_targets=tuple(sp.get("finetune.common.far_targets")), seed=seed)
        metrics = metrics_record(dataset, fold, data.counts, m)
        summary = model.summary()
        _write_outputs(p, metrics, scores, data.test_ids, summary)
        run.log_metrics({k: m[k] for k in ("verification_accuracy", "expression_accuracy", "authentication")
                         if m.get(k) is not None})
        if (m.get("verification") or {}).get("auc") is not None:
            run.log_metrics({"auc": m["verification"]["auc"]})
        run.log_metrics({"pca_components": summary["components"], "explained_variance": summary["explained_variance"]})
        run.log_dict(metrics, "metrics.json")
        run.log_dict(summary, "pca.json")
    typer.echo(f"{item}: verification {m.get('verification_accuracy', float('nan')):.4f}, "
               f"expression {m.get('expression_accuracy', float('nan')):.4f} "
               f"({summary['components']} components, {summary['explained_variance']:.1%} of the variance) "
               f"-> {p['out']}, {p['metrics']}")


def _write_outputs(p: dict[str, Path], metrics: dict, scores: dict, test_ids: list[str], summary: dict) -> None:
    import numpy as np

    with staged_files(p["metrics"]) as (tmp_metrics,), atomic_dir(p["out"]) as tmp:
        arrays = {f"last_{k}": np.asarray(v) for k, v in scores.items()}
        arrays["test_image_ids"] = np.asarray(test_ids, dtype=str)
        np.savez_compressed(tmp / "scores.npz", **arrays)
        write_json_atomic(summary, tmp / "pca.json")
        write_json_atomic(metrics, tmp_metrics)
