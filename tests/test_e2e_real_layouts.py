"""End to end on the real datasets' layouts (the shared e2e repository, ``tests/e2e_repo.py``): every stage through
`report` on tiny Oulu-CASIA- and CK+-layout folders (licensed sources), both fine-tuned in the same `dvc repro`
(``finetune.datasets: [oulu, ckplus]``) with a table section each, and a CK+ label-set edit that re-runs only CK+'s
stages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.e2e_repo import METHODS, run, set_params

pytestmark = pytest.mark.e2e

TITLE = "# Face verification with expression and expression recognition: "


def _section(table: str, dataset: str) -> str:
    """One dataset's section of ``tables.md``."""
    return table.split(f"{TITLE}`{dataset}`")[1].split(TITLE)[0]


def _rows(section: str) -> dict[str, str]:
    last = section.split("## Last epoch")[1].split("## Best epoch")[0]
    return {line.split(" | ")[0][2:]: line for line in last.splitlines() if line.startswith("| ")}


def test_the_licensed_layouts_run_every_stage_to_the_report(e2e_repo):
    out = e2e_repo["out"]
    for stage in ("download@oulu", "manifest@oulu", "align@oulu", "folds@oulu", "download@ckplus", "manifest@ckplus",
                  "align@ckplus", "folds@ckplus", "finetune@oulu-0-dynamic", "finetune@ckplus-0-dynamic",
                  "pixel_baseline@oulu-0", "pixel_baseline@ckplus-0", "report"):
        assert f"Running stage '{stage}'" in out, stage
    ckplus = json.loads((e2e_repo["dst"] / "metrics/align/ckplus.json").read_text())
    # CK+: 24 sequences of 5 frames, the first and the last 3 kept; MTCNN finds the drawn faces
    assert ckplus["images"] == 24 * 4 and ckplus["aligned_fraction"] >= 0.95


def test_one_repro_gives_a_table_section_per_dataset_with_its_papers_numbers(e2e_repo):
    dst = e2e_repo["dst"]
    table = (dst / "reports/tables.md").read_text()
    assert [line for line in table.splitlines() if line.startswith(TITLE)] == [
        f"{TITLE}`{d}`" for d in ("oulu", "ckplus")]
    oulu = _section(table, "oulu")
    assert "**Data: Oulu-CASIA** (`oulu`)" in oulu and "embedded demo" not in oulu
    rows = _rows(oulu)
    assert "| not reported |  | 89.60 |" in rows["dynamic (paper)"]  # Oulu-CASIA: dynamic's expression only
    assert rows["static MTL"].count("not reported") == 2
    ck = _section(table, "ckplus")
    assert "**Data: CK+** (`ckplus`)" in ck
    rows = _rows(ck)
    assert "| 99.00 |" in rows["dynamic (paper)"] and "| 99.50 |" in rows["dynamic (paper)"]
    assert "| 98.50 |" in rows["static MTL"] and "| 99.11 |" in rows["static MTL"]
    folds = pd.read_csv(dst / "reports/folds.csv")
    assert set(folds["dataset"]) == {"oulu", "ckplus"} and folds["verification"].notna().all()
    summary = pd.read_csv(dst / "reports/tables.csv")
    assert len(summary) == 2 * (len(METHODS) + 1) * 2  # datasets x (methods + pixel) x variants
    metrics = json.loads((dst / "metrics/finetune/ckplus/fold0-dynamic.json").read_text())
    assert metrics["last"]["expression"]["class_names"][0] == "neutral"  # the 8 CK+ classes, neutral first frames
    assert len(metrics["last"]["expression"]["class_names"]) == 8
    checks = (dst / "reports/demo_check.txt").read_text()
    assert checks == "no demo targets: oulu is not demo data\nno demo targets: ckplus is not demo data\n"
    report = json.loads((dst / "metrics/report.json").read_text())
    assert report["datasets"]["ckplus"]["demo"] is False and report["datasets"]["ckplus"]["demo_checks"] == []


def test_editing_the_demo_generator_leaves_the_real_datasets_stages_past_manifest_up_to_date(e2e_repo):
    """The demo renderer is a code dep of ``download`` only (every dataset's, as they share one command): the manifest,
    alignment, folds, fine-tuning, the pixel baseline and the report of the licensed-layout datasets stay clean."""
    demo = e2e_repo["dst"] / "pipeline/data/demo.py"
    original = demo.read_text()
    try:
        demo.write_text(original + "\n# an edit of the demo generator\n")
        status = set(json.loads(run(e2e_repo, "dvc", "status", "--json").stdout))
        assert status, "the edit must make the demo's own stages stale"
        assert all(name.startswith("download@") for name in status), sorted(status)
        assert {"download@oulu", "download@ckplus"} <= status
    finally:
        demo.write_text(original)
    assert json.loads(run(e2e_repo, "dvc", "status", "--json").stdout) == {}


def test_a_ckplus_label_set_edit_reruns_only_the_ckplus_stages(e2e_repo):
    """CK+ without contempt (7 classes): CK+'s folds, fine-tuning and pixel baseline re-run, and the reports (both
    track the whole ``datasets`` section; the disjoint report reads the folder of the fine-tuning metrics); nothing of
    Oulu-CASIA, of pretraining, of the caricature or the disjoint-datasets runs. (Last
    test of the module: it leaves the repository on the edited params.)"""
    seven = {"classes": ["neutral", "anger", "disgust", "fear", "happy", "sadness", "surprise"],
             "neutral": "neutral", "peak_frames": 3, "neutral_frames": 1}
    set_params(e2e_repo, **{"datasets.ckplus.label_sets.expression": seven})
    ckplus = {"folds@ckplus", "pixel_baseline@ckplus-0", *(f"finetune@ckplus-0-{m}" for m in METHODS)}
    status = set(json.loads(run(e2e_repo, "dvc", "status", "--json").stdout))
    assert status == ckplus | {"report", "cari_report", "check_params"}
    res = run(e2e_repo, "dvc", "repro")
    ran = {line.split("'")[1] for line in res.stdout.splitlines() if line.startswith("Running stage")}
    # and the disjoint report, after them: it depends on the folder of every fine-tuning metric (it reads Oulu's)
    assert ran == ckplus | {"report", "cari_report", "check_params", "disjoint_report"}
    metrics = json.loads((e2e_repo["dst"] / "metrics/finetune/ckplus/fold0-dynamic.json").read_text())
    assert metrics["last"]["expression"]["class_names"] == seven["classes"]
