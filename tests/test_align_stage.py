"""The align stage on the tiny demo: outputs, failure threshold, resume after an interruption or a SIGKILL,
torchrun on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from pipeline.align.run import AlignJob, AlignSettings, run_job
from pipeline.faces.shards import shard_name
from pipeline.faces.source import FaceSource
from pipeline.faces.table import read_alignment_table
from stages.app import app
from tests.conftest import REPO, sigkill_stage_when, stage_env, still_alive, tiny_params, write_params

runner = CliRunner()

#: 36 images (3 subjects × 6 expressions × first + last frame) in chunks of 8 → 5 shards
TINY_ALIGN = {"align.workers": 0, "align.shard_size": 8, "align.batch_size": 4,
              "datasets.demo_oulu.options.keep_last": 1}
N = 36


def _invoke(*args):
    return runner.invoke(app, ["--params", "params.yaml", *args])


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> Path:
    """A folder with the tiny demo_oulu generated and its manifest written (shared, read-only)."""
    root = tmp_path_factory.mktemp("align-src")
    cwd = os.getcwd()
    os.chdir(root)
    os.environ["DMTL_MLFLOW"] = "0"
    try:
        write_params(root / "params.yaml", tiny_params(**TINY_ALIGN))
        assert _invoke("download", "demo_oulu").exit_code == 0
        assert _invoke("manifest", "demo_oulu").exit_code == 0
    finally:
        os.chdir(cwd)
        del os.environ["DMTL_MLFLOW"]
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_manifest):
    """A fresh stage folder with the shared raw data and manifest symlinked in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "data/manifests").mkdir(parents=True)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/demo_oulu").symlink_to(tiny_manifest / "data/raw/demo_oulu")
    (tmp_path / "data/manifests/demo_oulu.parquet").symlink_to(tiny_manifest / "data/manifests/demo_oulu.parquet")
    write_params(tmp_path / "params.yaml", tiny_params(**TINY_ALIGN))
    return tmp_path


def _job(base: Path, src: Path, name: str, **settings) -> AlignJob:
    return AlignJob(dataset="demo_oulu", manifest=str(src / "data/manifests/demo_oulu.parquet"),
                    root=str(src / "data/raw/demo_oulu/images"), work_dir=str(base / name / "work"),
                    out_dir=str(base / name / "out"),
                    settings=AlignSettings(**{"workers": 0, "shard_size": 8, "batch_size": 4, **settings}))


@pytest.fixture(scope="module")
def reference_run(tiny_manifest, tmp_path_factory) -> AlignJob:
    """One uninterrupted single-process run, the reference the other runs must equal."""
    job = _job(tmp_path_factory.mktemp("ref"), tiny_manifest, "single")
    summary = run_job(job)
    assert summary is not None and summary["images"] == N
    return job


def _same_output(a: Path, b: Path) -> None:
    ta, tb = read_alignment_table(a / "alignment.parquet"), read_alignment_table(b / "alignment.parquet")
    pd.testing.assert_frame_equal(ta.drop(columns=["box", "landmarks", "crop_box"]),
                                  tb.drop(columns=["box", "landmarks", "crop_box"]))
    for col in ("box", "landmarks", "crop_box"):  # detections to float rounding, crop rectangles exactly
        for x, y in zip(ta[col], tb[col], strict=True):
            assert (x is None and y is None) or np.allclose(x, y, rtol=0, atol=0 if col == "crop_box" else 1e-3)
    shards_a = sorted(p.name for p in (a / "shards").iterdir())
    assert shards_a == sorted(p.name for p in (b / "shards").iterdir())
    for name in shards_a:  # byte-identical crops
        assert (a / "shards" / name).read_bytes() == (b / "shards" / name).read_bytes(), name


def test_align_stage_writes_shards_table_and_metrics(workdir, mlflow_uri):
    from mlflow.tracking import MlflowClient

    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 0, res.output
    assert "demo_oulu: aligned" in res.output
    out = workdir / "data/aligned/demo_oulu"
    table = read_alignment_table(out / "alignment.parquet")
    manifest = pd.read_parquet(workdir / "data/manifests/demo_oulu.parquet")
    assert table["image_id"].tolist() == manifest["image_id"].tolist()  # one row per manifest image, in order
    metrics = json.loads((workdir / "metrics/align/demo_oulu.json").read_text())
    assert metrics["images"] == N and metrics["aligned"] + metrics["failed"] == N
    assert metrics["aligned_fraction"] >= 0.95  # the demo target
    assert metrics["convention"] == "paper_182_44" and metrics["shards"] == 5
    assert "images_per_second" not in metrics  # timing varies run to run: not in the DVC metric
    speed = json.loads((workdir / "data/work/align/demo_oulu.last-run.json").read_text())
    assert speed["images_per_second"] > 0 and speed["processed_this_run"] == N and speed["processes"] == 1
    faces = FaceSource(out)
    assert len(faces) == metrics["aligned"] and faces.crop_size == 182
    crop = faces.read(0)
    assert crop.shape == (182, 182, 3) and crop.dtype == np.uint8 and crop.std() > 10
    aligned = table[table["status"] == "aligned"]
    # the chosen box lies inside its crop box, which is the box ± 22 px clipped to the 160×120 image
    for box, cb in zip(aligned["box"], aligned["crop_box"], strict=True):
        assert cb[0] <= box[0] and cb[1] <= box[1] and box[2] <= cb[2] and box[3] <= cb[3]
        assert 0 <= cb[0] < cb[2] <= 160 and 0 <= cb[1] < cb[3] <= 120
    assert [p.name for p in (workdir / "data/work/align").iterdir()] == ["demo_oulu.last-run.json"]  # work cleared
    runs = MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_uri).search_experiments()])
    run = {r.info.run_name: r for r in runs}["align@demo_oulu"]
    assert run.info.status == "FINISHED" and run.data.metrics["aligned"] == metrics["aligned"]
    assert run.data.params["align.resample"] == "nearest"


def test_stage_equals_reference_run(workdir, no_mlflow, reference_run):
    assert _invoke("align", "demo_oulu").exit_code == 0
    _same_output(workdir / "data/aligned/demo_oulu", Path(reference_run.out_dir))


def test_too_many_failures_fail_without_outputs(workdir, no_mlflow):
    write_params(workdir / "params.yaml", tiny_params(**TINY_ALIGN, **{"align.min_face": 130}))
    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: align demo_oulu: {N} of {N} images not aligned")
    assert f"too_small: {N}" in line and "align.max_failure_fraction" in line
    assert not (workdir / "data/aligned/demo_oulu").exists()
    assert not (workdir / "metrics/align/demo_oulu.json").exists()
    assert not list((workdir / "data/aligned").glob(".*tmp*"))


def test_missing_manifest_is_one_clear_line(workdir, no_mlflow):
    (workdir / "data/manifests/demo_oulu.parquet").unlink()
    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "error: align demo_oulu: data/manifests/demo_oulu.parquet not found; run `dvc repro manifest@demo_oulu` first")


def test_interrupted_run_resumes_without_redoing_finished_shards(workdir, no_mlflow, monkeypatch, reference_run):
    import pipeline.align.run as run_mod

    real = run_mod.align_images
    calls = {"n": 0}

    def dies_on_fifth_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # batches of 4, chunks of 8: chunks 0 and 1 are finished
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_mod, "align_images", dies_on_fifth_batch)
    res = _invoke("align", "demo_oulu")
    assert res.exit_code != 0
    assert not (workdir / "data/aligned/demo_oulu").exists()
    (work,) = (workdir / "data/work/align").iterdir()
    assert sorted(p.name for p in work.glob("shard-*.tar")) == [shard_name(0), shard_name(1)]

    monkeypatch.setattr(run_mod, "align_images", real)
    before = {p.name: p.stat().st_ino for p in work.glob("shard-*.tar")}
    assert _invoke("align", "demo_oulu").exit_code == 0
    speed = json.loads((workdir / "data/work/align/demo_oulu.last-run.json").read_text())
    assert speed["processed_this_run"] == N - 16  # the two finished chunks were not redone
    assert json.loads((workdir / "metrics/align/demo_oulu.json").read_text())["images"] == N
    _same_output(workdir / "data/aligned/demo_oulu", Path(reference_run.out_dir))
    shards = workdir / "data/aligned/demo_oulu/shards"
    assert {n: (shards / n).stat().st_ino for n in before} == before  # moved into the output, not rewritten
    assert not work.exists()


def test_a_rank_other_than_zero_writes_only_its_chunks(tiny_manifest, tmp_path):
    job = _job(tmp_path, tiny_manifest, "rank1")
    assert run_job(job, rank=1, world=2) is None
    work = Path(job.work_dir)
    assert sorted(p.name for p in work.glob("shard-*.tar")) == [shard_name(1), shard_name(3)]
    assert json.loads((work / "rank-1.json").read_text())["chunks"] == [1, 3]
    assert not Path(job.out_dir).exists()  # only rank 0 writes the output and the alignment table


def test_torchrun_two_processes_equals_single_process(tiny_manifest, tmp_path, reference_run):
    job = _job(tmp_path, tiny_manifest, "torchrun")
    Path(job.work_dir).mkdir(parents=True)
    job_file = Path(job.work_dir) / "job.json"
    job.to_json(job_file)
    # the same number of CPU threads per process as the reference run (torchrun would default to 1): convolutions
    # sum in a thread-dependent order, which moves boxes in the last float bits
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "pipeline.align.run", str(job_file)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    work = Path(job.work_dir)
    ranks = [json.loads((work / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    c0, c1 = set(ranks[0]["chunks"]), set(ranks[1]["chunks"])
    assert not c0 & c1 and c0 | c1 == set(range(5))  # disjoint slices covering every chunk
    assert ranks[0]["images"] + ranks[1]["images"] == N
    summary = json.loads((work / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["images"] == N
    _same_output(Path(job.out_dir), Path(reference_run.out_dir))


def test_stage_launches_torchrun_when_processes_above_one(workdir, no_mlflow, reference_run, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    write_params(workdir / "params.yaml", tiny_params(**TINY_ALIGN, **{"align.processes": 2}))
    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 0, res.output
    assert json.loads((workdir / "data/work/align/demo_oulu.last-run.json").read_text())["processes"] == 2
    _same_output(workdir / "data/aligned/demo_oulu", Path(reference_run.out_dir))


def test_sigkill_leaves_no_worker_and_the_next_run_cleans_up_and_ends_like_an_uninterrupted_one(
        workdir, mlflow_uri, reference_run):
    """The stage process alone is killed (SIGKILL: no cleanup code runs) after its first chunk: its two decoding
    workers die with it. The next run deletes the stale temporary output folder, ends the killed run KILLED, does not
    redo the finished chunks, and writes the uninterrupted run's output. (Also the default path: DataLoader worker
    processes decode, batches cross no chunk boundary.)"""
    from mlflow.tracking import MlflowClient

    write_params(workdir / "params.yaml", tiny_params(**{**TINY_ALIGN, "align.workers": 2}))
    proc = subprocess.Popen([sys.executable, "-m", "stages", "--params", "params.yaml", "align", "demo_oulu"],
                            cwd=workdir, env=stage_env(workdir, workdir / "mlruns.db"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    workers = sigkill_stage_when(proc, lambda: any((workdir / "data/work/align").glob("*/*.parquet")),
                                 "its first chunk")
    assert len(workers) == 2 and still_alive(workers) == []
    assert [p.name for p in (workdir / "data/aligned").iterdir()] == [f".demo_oulu.tmp-{proc.pid}"]
    (work,) = (p for p in (workdir / "data/work/align").iterdir() if p.is_dir())
    done = len(list(work.glob("*.parquet")))
    assert 1 <= done < 5

    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 0, res.output
    assert [p.name for p in (workdir / "data/aligned").iterdir()] == ["demo_oulu"]  # the stale folder is gone
    speed = json.loads((workdir / "data/work/align/demo_oulu.last-run.json").read_text())
    assert speed["processed_this_run"] == N - 8 * done
    _same_output(workdir / "data/aligned/demo_oulu", Path(reference_run.out_dir))
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("dynamic-mtl-face").experiment_id])
    assert sorted((r.data.tags["pid"], r.info.status) for r in runs) == sorted(
        [(str(proc.pid), "KILLED"), (str(os.getpid()), "FINISHED")])


def test_torchrun_failure_is_one_clear_line_without_outputs(workdir, no_mlflow, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    write_params(workdir / "params.yaml",
                 tiny_params(**TINY_ALIGN, **{"align.processes": 2, "align.min_face": 130}))
    res = _invoke("align", "demo_oulu")
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1].startswith(f"error: align demo_oulu: {N} of {N} images not aligned")
    assert not (workdir / "data/aligned/demo_oulu").exists()
    assert not (workdir / "metrics/align/demo_oulu.json").exists()


def test_work_key_covers_settings_manifest_and_weights(tiny_manifest, tmp_path):
    from pipeline.align.run import work_key
    from pipeline.align.weights import export_npz

    manifest = tiny_manifest / "data/manifests/demo_oulu.parquet"
    base = work_key(manifest, AlignSettings())
    assert work_key(manifest, AlignSettings(batch_size=3, workers=0, device="cpu", processes=4)) == base
    assert work_key(manifest, AlignSettings(quality=90)) != base
    assert work_key(manifest, AlignSettings(resample="area")) != base
    npz = export_npz(tmp_path / "w.npz")
    assert work_key(manifest, AlignSettings(), weights=npz) != base  # other weights file bytes, other key

