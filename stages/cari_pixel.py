"""Raw-pixel PCA baseline of one caricature dataset, evaluated with the caricature runs' protocol (a row of the
caricature tables).

One DVC stage instance ``cari_pixel@<dataset>`` per dataset in ``cari.datasets``: the caricature counterpart of
``pixel_baseline``, on the split of stage ``cari_split`` instead of a fold. The data come from
:func:`pipeline.training.cari_data.load_cari_data` and the numbers from :func:`pipeline.training.evaluate.evaluate`,
as in ``cari_train``: the same task set, test images, pairs, probe/gallery splits, verification protocol, seed and
centre crop (``cari.common.{task_set,crop,protocol,seed}``). The model (:mod:`pipeline.evaluation.pixel_pca`, the
``pixel_baseline`` params): PCA fitted on the split's training images only, L2-normalised projections as the
embedding of every verification/identification task, and per classification task a logistic regression on the
training projections of the images labelled for it (the visual task on the training photos, the caricature task on
the training caricatures, the verification task on both); the cross-modal accuracies (c2v, v2c) apply those
regressions to the other modality's test images.

Writes, in the cari_train stage's formats:

- ``metrics/cari/<d>/pixel_pca.json``: ``{dataset, method: "pixel_pca", weighting: null, selection: "none", data,
  epochs: 0, last: M, best: {selected_on: "none", <criterion>: M...}}`` (no training loop: every "epoch" is 0);
- ``data/cari/<d>/pixel_pca/``: ``scores.npz`` (``last_distances``, ``last_same``, ``last_<task>_logits``,
  ``last_<task>_labels``, ``test_image_ids``) and ``pca.json`` (components, explained variance, settings).
"""

from __future__ import annotations

from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.errors import DatasetError, UserError
from stages.common import load_stage_params, user_errors
from stages.provenance import Input
from stages.tracking import stage_run

METHOD = "pixel_pca"  # = pipeline.evaluation.pixel_pca.METHOD, which the commands import lazily (a fast --help)
#: the task set's entry is in dvc.yaml's spelling (it is named by another param, cari.common.task_set): resolved
#: by :func:`declared`
TASK_SET = "task_sets.${cari.common.task_set}"
DECLARED = ["pixel_baseline", "cari.common.task_set", "cari.common.crop", "cari.common.protocol", "cari.common.seed",
            TASK_SET, "datasets.{dataset}.label_sets"]


def declared(dataset: str, task_set: str) -> list[str]:
    """:data:`DECLARED` for one dataset and the task set ``cari.common.task_set`` names."""
    return [s.replace(TASK_SET, f"task_sets.{task_set}").format(dataset=dataset) for s in DECLARED]


def cari_item(dataset: str) -> str:
    """``<dataset>/pixel_pca``: the ``item`` tag of the run (as ``cari_train``'s ``<dataset>/<method>``), which
    ``cari_report`` looks up."""
    return f"{dataset}/{METHOD}"


@user_errors
def command(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", help="A dataset of cari.datasets.")],
) -> None:
    from pipeline.config import load_params
    from pipeline.data.manifest import read_manifest
    from pipeline.evaluation.pixel_pca import PixelPCASettings, baseline_record, write_baseline_outputs
    from pipeline.training.cari_data import load_cari_data
    from pipeline.training.evaluate import criteria, describe_accuracies, headline
    from pipeline.training.pixel_eval import evaluate_pixel_baseline

    params = load_params(ctx.obj["params_path"])
    if params.cari is None:
        raise UserError("params.yaml has no cari section (docs/caricature.md)")
    if dataset not in params.cari.datasets:
        raise UserError(f"--dataset {dataset}: not in cari.datasets ({', '.join(params.cari.datasets) or 'empty'})")
    task_set_name = params.cari.common.task_set
    sp = load_stage_params(ctx, declared(dataset, task_set_name))
    tasks = sp.get(f"task_sets.{task_set_name}")
    cfg = sp.get("pixel_baseline")
    crop = sp.get("cari.common.crop").size
    seed = sp.get("cari.common.seed")
    protocol = sp.get("cari.common.protocol")
    p = layout.cari_run(dataset, METHOD)
    for key in ("manifest", "aligned", "split", "pairs", "identification"):
        if not p[key].exists():
            raise DatasetError(f"{p[key]} not found: run the upstream stages first (dvc repro cari_pixel)")

    files = {k: p[k] for k in ("split", "pairs", "identification")}
    data = load_cari_data(read_manifest(p["manifest"]), p["aligned"], files, tasks,
                          sp.get(f"datasets.{dataset}.label_sets"))
    stored = int(data.train.images.shape[-1])
    if crop > stored:
        raise UserError(f"cari.common.crop.size is {crop} but the aligned faces of {dataset} are {stored} px")
    settings = PixelPCASettings(crop=crop, size=cfg.size, grey=cfg.grey, components=cfg.components,
                                whiten=cfg.whiten, probe_c=cfg.probe_c, seed=seed)
    item = cari_item(dataset)
    inputs = [Input(str(p["manifest"]), dataset=dataset), Input(str(p["aligned"])),
              Input(str(p["split"]), dataset=f"{dataset} split", context="training"),
              Input(str(p["pairs"]), dataset=f"{dataset} pairs", context="evaluation"),
              Input(str(p["identification"]), dataset=f"{dataset} identification", context="evaluation")]
    with stage_run("cari_pixel", sp, item=item, inputs=inputs, group=(params, dataset, "cari")) as run:
        run.set_tags({"method": METHOD, "dataset": dataset, "task_set": task_set_name})
        run.log_metrics({f"data_{k}": v for k, v in data.counts.items()})
        try:
            m, scores, model = evaluate_pixel_baseline(data, tasks, settings, protocol=protocol, seed=seed)
        except ValueError as exc:
            raise DatasetError(f"pixel baseline of {dataset}: {exc}") from None
        metrics = baseline_record(m, list(criteria(tasks)), data.counts, dataset=dataset)
        summary = model.summary()
        write_baseline_outputs(p["out"], p["metrics"], metrics, scores, data.test_ids, summary)
        run.log_metrics(headline(m))
        run.log_metrics({"pca_components": summary["components"], "explained_variance": summary["explained_variance"]})
        run.log_dict(metrics, "metrics.json")
        run.log_dict(summary, "pca.json")
    typer.echo(f"{item}: {describe_accuracies(m)} ({summary['components']} components, "
               f"{summary['explained_variance']:.1%} of the variance) -> {p['out']}, {p['metrics']}")
