"""Align a dataset's faces: crops (182 px, paper convention) in tar shards + the alignment table.

MTCNN finds the face (``paper_182_44``, ``facenet_160_32``), or, with no detector, the crop is the whole image
(``resize_only``) or the box around WebCaricature's landmarks (``landmarks_box``, factors in
``align.landmark_box``); docs/alignment.md."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

import pipeline.paths as layout
from pipeline.atomic import atomic_dir, atomic_files, write_json
from pipeline.errors import DatasetError, UserError
from pipeline.processes import run_child
from stages.common import load_stage_params, progress_bar, remove_other_work, user_errors
from stages.provenance import Input
from stages.tracking import stage_run

#: params DVC tracks: every setting that changes the crops
DECLARED = ["datasets.{name}.root", "datasets.{name}.align_convention", "align.min_face", "align.thresholds",
            "align.factor", "align.nms", "align.resample", "align.max_side", "align.shard_size", "align.format",
            "align.quality", "align.max_failure_fraction", "align.landmark_box"]
#: params read but deliberately not tracked by DVC: they change only the speed (same crops on any device, batch
#: size, number of decoding workers or processes), so changing them must not re-run the stage
RUNTIME = ["align.device", "align.batch_size", "align.workers", "align.processes"]
ALIGNED = layout.ALIGNED
METRICS = layout.METRICS / "align"
WORK = layout.WORK / "align"

log = logging.getLogger("stages.align")


#: per-run throughput, kept out of the DVC metric (see last_run)
RUN_KEYS = ("processes", "processed_this_run", "seconds", "images_per_second")


def last_run(name: str) -> Path:
    """Git-ignored record of the last run's throughput: processes, images aligned by this run (fewer after a
    resume), seconds and img/s."""
    return WORK / f"{name}.last-run.json"


def paths(name: str) -> dict[str, Path]:
    """The stage's outputs for dataset ``name`` (the same paths as in dvc.yaml)."""
    return {"out": ALIGNED / name, "metrics": METRICS / f"{name}.json"}


def _torchrun(job_file: Path, processes: int, work: Path) -> dict:
    """Run the job under ``torchrun --standalone --nproc_per_node=<processes>``; rank 0's summary."""
    import json

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "pipeline.align.run", str(job_file)]
    log.info("launching %s", " ".join(cmd))
    for f in work.glob("error-rank*.txt"):
        f.unlink()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    code = run_child(cmd, env=env)  # ends with this process; SIGTERM to it on an interrupt
    errors = sorted(work.glob("error-rank*.txt"), key=lambda f: int(f.stem.removeprefix("error-rank")))
    if errors:  # the first rank's message; a rank that failed first makes the others fail at the barrier
        raise DatasetError(errors[0].read_text().strip())
    if code != 0:
        raise UserError(f"align: torchrun exited with code {code} (see the log above); finished chunks are kept in "
                        f"{work} and are not redone on the next run")
    return json.loads((work / "summary.json").read_text())


@user_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="DATASET", help="Dataset name (a key of `datasets` in params.yaml).")],
) -> None:
    from pipeline.align.run import (
        AlignJob,
        AlignSettings,
        clear_work,
        manifest_rows,
        pending_images,
        run_job,
        work_key,
    )

    sp = load_stage_params(ctx, [s.format(name=name) for s in DECLARED + RUNTIME])
    root = sp.get(f"datasets.{name}.root")
    convention = sp.get(f"datasets.{name}.align_convention")
    cfg = {key.split(".", 1)[1]: sp.get(key) for key in DECLARED + RUNTIME if key.startswith("align.")}
    box = cfg.pop("landmark_box")
    if convention == "landmarks_box":  # the factors matter (and key the resume folder) only there
        cfg["landmark_box"] = [box.width, box.height]
    manifest = layout.manifest_file(name)
    if not manifest.is_file():
        raise DatasetError(f"align {name}: {manifest} not found; run `dvc repro manifest@{name}` first")
    cfg["thresholds"], cfg["nms"] = list(cfg["thresholds"]), list(cfg["nms"])
    settings = AlignSettings(convention=convention, **cfg)
    work = WORK / f"{name}-{work_key(manifest, settings)}"
    remove_other_work(work)
    work.mkdir(parents=True, exist_ok=True)
    n_images = manifest_rows(manifest)
    out = paths(name)
    with (stage_run("align", sp, item=name,
                    inputs=[Input(str(manifest), dataset=name), Input(str(layout.RAW / name))]) as run,
          atomic_files(out["metrics"]) as (tmp_metrics,), atomic_dir(out["out"]) as tmp):
        job = AlignJob(dataset=name, manifest=str(manifest), root=str(root), work_dir=str(work), out_dir=str(tmp),
                       settings=settings)
        todo = pending_images(job)
        if todo < n_images:
            typer.echo(f"{name}: resuming, {n_images - todo} of {n_images} images already aligned in {work}")
        if settings.processes > 1:
            job_file = work / "job.json"
            job.to_json(job_file)
            summary = _torchrun(job_file, settings.processes, work)
        else:
            with progress_bar(f"align {name}", total=todo) as advance:
                summary = run_job(job, progress=advance)
        # the DVC metric holds only what the data determines (identical on every run); how fast this run was goes
        # to MLflow, the console and the git-ignored last-run file
        speed = {k: summary.pop(k) for k in RUN_KEYS}
        summary = {"dataset": name, "convention": convention, **summary}
        write_json(summary, tmp_metrics)
        numeric = {k: float(v) for k, v in {**summary, **speed}.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric.update({f"failures.{k}": float(v) for k, v in summary["failures_by_reason"].items()})
        run.log_metrics(numeric)
        run.log_dict({**summary, **speed}, f"align/{name}.json")
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_reason"].items()) or "none"
        typer.echo(f"{name}: aligned {summary['aligned']} of {summary['images']} images "
                   f"({100 * summary['aligned_fraction']:.1f} %; failures: {reasons}) at "
                   f"{speed['images_per_second']} img/s -> {out['out']}")
    write_json({"dataset": name, **speed}, last_run(name))
    clear_work(job)
