"""The download and manifest commands, run through Typer's CliRunner on a tiny demo in a temp folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from pipeline.data.manifest import read_manifest
from stages.app import app
from tests.conftest import descendants, stage_env, still_alive, tiny_params, write_params

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, ["--params", "params.yaml", *args])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    write_params(tmp_path / "params.yaml", tiny_params())
    return tmp_path


def test_download_then_manifest_demo(workdir, mlflow_uri):
    from mlflow.tracking import MlflowClient

    res = _invoke("download", "demo_oulu")
    assert res.exit_code == 0, res.output
    raw = workdir / "data/raw/demo_oulu"
    assert (raw / "images/P001/Anger/000.jpeg").is_file()
    listing = (raw / "listing.tsv").read_text().splitlines()
    n_files = len(listing) - 1
    assert listing[1].startswith("P001/Anger/000.jpeg\t")
    assert 3 * 6 * 4 <= n_files <= 3 * 6 * 5
    assert not list((workdir / "data/raw").glob(".*tmp*"))

    res = _invoke("manifest", "demo_oulu")
    assert res.exit_code == 0, res.output
    df = read_manifest(workdir / "data/manifests/demo_oulu.parquet")
    assert len(df) == 3 * 6 * 4  # first frame + last 3 of every sequence
    assert sorted(df["subject"].unique()) == ["P001", "P002", "P003"]
    assert sorted(df["identity"].unique()) == [0, 1, 2]
    first = df.iloc[0]
    assert first["image_id"] == "demo_oulu/P001/Anger/00000" and first["path"] == "P001/Anger/000.jpeg"
    assert (first["width"], first["height"]) == (160, 120)
    metrics = json.loads((workdir / "metrics/manifest/demo_oulu.json").read_text())
    assert metrics["images"] == len(df) and metrics["subjects"] == 3 and metrics["sequences"] == 18
    assert metrics["skipped"] == 0
    assert metrics["images_per_subject_stats"] == {"min": 24, "median": 24, "max": 24}
    assert metrics["images_per_expression"] == {e: 12 for e in
                                                ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")}
    counts = json.loads((workdir / "metrics/manifest/demo_oulu.counts.json").read_text())
    assert counts["images_per_subject"] == {"P001": 24, "P002": 24, "P003": 24}

    runs = MlflowClient(mlflow_uri).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_uri).search_experiments()])
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == {"download@demo_oulu", "manifest@demo_oulu"}
    m = by_name["manifest@demo_oulu"]
    assert m.info.status == "FINISHED" and m.data.metrics["images"] == len(df)
    assert m.data.params["manifest.max_skip_fraction"] == "0.05"


def test_sigterm_stops_a_stage_with_one_line_143_no_temporary_and_no_worker(tmp_path):
    """What ``timeout`` or a scheduler sends: the stage (here the demo generator with its 2 pool workers) stops its
    workers, deletes its temporary folder, prints one line and exits 143. (That SIGTERM ends the MLflow run KILLED is
    checked in test_tracking.py, without the cost of a new store in a new process.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    write_params(tmp_path / "params.yaml", tiny_params(**{"datasets.demo_oulu.source.n_subjects": 40,
                                                          "demo.workers": 2}))
    proc = subprocess.Popen([sys.executable, "-m", "stages", "--params", "params.yaml", "download", "demo_oulu"],
                            cwd=tmp_path, env=stage_env(tmp_path, None), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (list((tmp_path / "data/raw").glob(".demo_oulu.tmp-*/images/*/*/*"))
                   and len(children := descendants(proc.pid)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the stage did not start its workers"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "error: terminated by SIGTERM" and "Traceback" not in err, err
    assert still_alive(children) == []
    assert list((tmp_path / "data/raw").iterdir()) == []  # neither the temporary folder nor an output


def test_second_download_replaces_output(workdir, no_mlflow):
    assert _invoke("download", "demo_webface").exit_code == 0
    first = (workdir / "data/raw/demo_webface/listing.tsv").read_text()
    assert _invoke("download", "demo_webface").exit_code == 0
    assert (workdir / "data/raw/demo_webface/listing.tsv").read_text() == first  # deterministic generation


def test_missing_licensed_dataset_is_one_clear_line(workdir, no_mlflow):
    params = tiny_params()
    params["datasets"]["oulu"] = {"reader": "oulu_casia", "root": str(workdir / "nowhere"), "role": "finetune",
                                  "label_sets": {"expression": "oulu_six"}, "source": {"kind": "licensed"},
                                  "options": {}, "expected": {"subjects": 80}}
    write_params(workdir / "params.yaml", params)
    res = _invoke("download", "oulu")
    assert res.exit_code == 1
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in res.output
    assert "dataset 'oulu' (Oulu-CASIA" in err and "datasets.oulu.root" in err and "University of Oulu" in err
    assert not (workdir / "data/raw/oulu").exists()


def test_unknown_dataset_and_bad_param(workdir, no_mlflow):
    res = _invoke("download", "nope")
    assert res.exit_code == 1 and "unknown dataset 'nope'" in res.stderr
    write_params(workdir / "params.yaml", tiny_params(**{"demo.seeds": 1}))
    res = _invoke("manifest", "demo_oulu")
    assert res.exit_code == 1 and "demo.seeds: unknown key" in res.stderr and "Traceback" not in res.output


def test_too_many_skips_fail_without_outputs(workdir, no_mlflow):
    assert _invoke("download", "demo_oulu").exit_code == 0
    first_frames = sorted((workdir / "data/raw/demo_oulu/images").rglob("000.jpeg"))
    for path in first_frames[:10]:  # corrupt 10 of the 72 kept frames: > 5 %
        path.write_bytes(b"not a jpeg")
    res = _invoke("manifest", "demo_oulu")
    assert res.exit_code == 1
    assert "max_skip_fraction" in res.stderr and "not an image" in res.stderr
    assert not (workdir / "data/manifests/demo_oulu.parquet").exists()
    assert not (workdir / "metrics/manifest/demo_oulu.json").exists()
    # under the threshold: counted skips, the manifest is written and lists them
    write_params(workdir / "params.yaml", tiny_params(**{"manifest.max_skip_fraction": 0.5}))
    res = _invoke("manifest", "demo_oulu")
    assert res.exit_code == 0, res.output
    skipped = (workdir / "data/manifests/demo_oulu.skipped.tsv").read_text().splitlines()
    assert skipped[0] == "path\treason" and len(skipped) == 11
    metrics = json.loads((workdir / "metrics/manifest/demo_oulu.json").read_text())
    assert metrics["skipped"] == 10 and metrics["skipped_by_reason"] == {"not an image": 10}


def test_lfw_download_from_loopback_then_manifest(workdir, tmp_path_factory, no_mlflow):
    """LFW goes through the real download path (HTTP, md5, extraction) against a local server."""
    import functools
    import hashlib
    import tarfile
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from tests.fixtures_layouts import build_lfw

    served = tmp_path_factory.mktemp("served")
    lfw_root = build_lfw(tmp_path_factory.mktemp("lfwsrc"))
    with tarfile.open(served / "lfw.tgz", "w:gz") as tar:
        tar.add(lfw_root, arcname="lfw")
    pairs = b"1\t1\nAaron_Peirsol\t1\t2\nAaron_Eckhart\t1\tAaron_Peirsol\t1\n"
    (served / "pairs.txt").write_bytes(pairs)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    md5 = lambda b: "md5:" + hashlib.md5(b).hexdigest()  # noqa: E731
    try:
        params = tiny_params()
        params["datasets"]["lfw"] = {
            "reader": "lfw", "root": "data/raw/lfw/lfw", "role": "eval", "label_sets": {},
            "source": {"kind": "lfw", "url": f"{base}/lfw.tgz", "checksum": md5((served / "lfw.tgz").read_bytes()),
                       "pairs_url": f"{base}/pairs.txt", "pairs_checksum": md5(pairs)},
            "options": {}, "expected": {"images": 999}}
        write_params(workdir / "params.yaml", params)
        res = _invoke("download", "lfw")
        assert res.exit_code == 0, res.output
        n_images = sum(1 for p in lfw_root.rglob("*.jpg"))
        assert (workdir / "data/raw/lfw/pairs.txt").read_bytes() == pairs
        assert sorted(p.name for p in (workdir / "data/raw/lfw").iterdir()) == ["lfw", "listing.tsv", "pairs.txt",
                                                                                 "source.json"]
        assert len((workdir / "data/raw/lfw/listing.tsv").read_text().splitlines()) == 1 + n_images
        res = _invoke("manifest", "lfw")
        assert res.exit_code == 0, res.output
        df = read_manifest(workdir / "data/manifests/lfw.parquet")
        assert len(df) == n_images and df["image_id"].str.startswith("lfw/").all()
        metrics = json.loads((workdir / "metrics/manifest/lfw.json").read_text())
        assert metrics["expected_differences"]["images"] == {"expected": 999, "actual": n_images,
                                                             "difference": n_images - 999}
        # a wrong checksum is one clear line, and nothing is left in data/raw
        params["datasets"]["lfw"]["source"]["checksum"] = "md5:" + "0" * 32
        write_params(workdir / "params.yaml", params)
        (workdir / "data/cache/downloads/lfw.tgz").unlink()
        res = _invoke("download", "lfw")
        assert res.exit_code == 1 and "checksum mismatch" in res.stderr and "Traceback" not in res.output
        assert (workdir / "data/raw/lfw/listing.tsv").exists()  # the previous good output is untouched
        assert not list((workdir / "data/raw").glob(".lfw.tmp-*"))
    finally:
        httpd.shutdown()


def test_manifest_outputs_appear_together_or_not_at_all(workdir, no_mlflow, monkeypatch):
    from pipeline.data.build_manifest import ManifestSummary

    assert _invoke("download", "demo_webface").exit_code == 0

    def boom(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ManifestSummary, "counts", boom)  # fails after the parquet and metrics are written
    res = _invoke("manifest", "demo_webface")
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert not list((workdir / "data").rglob("*demo_webface*.parquet"))
    assert not [p for p in (workdir / "metrics").rglob("*") if p.is_file()]
    assert not list(workdir.rglob(".*.tmp-*"))


def test_msceleb_missing_tsv_is_one_clear_line(workdir, no_mlflow):
    params = tiny_params()
    params["datasets"]["ms"] = {"reader": "msceleb", "root": str(workdir / "shards"), "role": "pretrain",
                                "source": {"kind": "licensed", "tsv": str(workdir / "nope.tsv")},
                                "options": {}, "expected": {}}
    write_params(workdir / "params.yaml", params)
    res = _invoke("download", "ms")
    assert res.exit_code == 1 and "Traceback" not in res.output
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "dataset 'ms' (MS-Celeb-1M" in err and "nope.tsv does not exist" in err and "datasets.ms.source.tsv" in err


def test_remove_other_work_deletes_only_the_same_jobs_other_keys(tmp_path):
    """A resume folder made with other params/code can never resume; another job's (a dataset whose name extends
    this one's) and anything not shaped ``<job>-<16 hex>`` are left alone."""
    from stages.common import remove_other_work

    keep = tmp_path / "demo-fold0-dynamic-0123456789abcdef"
    names = ["demo-fold0-dynamic-fedcba9876543210", "demo-fold0-dynamic-x", "demo-fold0-dynamic-extra-0123456789abcdef",
             "demo-fold1-dynamic-fedcba9876543210"]
    for name in [keep.name, *names]:
        (tmp_path / name).mkdir()
    remove_other_work(keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([keep.name, *names[1:]])
