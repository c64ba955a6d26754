"""End to end on the caricature datasets' real layouts: "real data is a params edit".

The shared e2e repository (``tests/e2e_repo.py``) holds, besides the FR+FER datasets, two licensed datasets
``cavi`` and ``webcari`` at tiny CaVI- and WebCaricature-layout folders outside the repository (the real folder trees,
CaVINet's pair file beside ``CaVI_Dataset`` as in the real download, WebCaricature's ``EvaluationProtocols``), set
only in ``params.yaml`` with ``cari.datasets: [cavi, webcari]``. Its ``dvc repro`` ran the caricature chain for both
(from the pretrain stage's model, as the demo); the report shows Table I for CaVI and Tables II-IV for WebCaricature
with the paper's numbers under a real-data (not demo) header, and ``dvc repro cari_report`` then has nothing to do.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.e2e_repo import CARI, CARI_DATASETS, CARI_METHODS, run

pytestmark = pytest.mark.e2e

DATASETS = CARI_DATASETS
METHODS = CARI_METHODS


def _ran(out: str) -> set[str]:
    """The stages a ``dvc repro`` output says it ran."""
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_repro_ran_the_caricature_chain_of_the_two_datasets(e2e_repo):
    """Every caricature stage of ``cari.datasets`` ran (and is in dvc.lock), with the splits the protocols say."""
    ran = _ran(e2e_repo["out"])
    assert set(CARI) <= ran, e2e_repo["out"]
    dst = e2e_repo["dst"]
    lock = yaml.safe_load((dst / "dvc.lock").read_text())
    assert set(CARI) <= set(lock["stages"])
    cavi = json.loads((dst / "metrics/cari/cavi/split.json").read_text())
    # 16 lines, every 2nd kept: the 8 pairs of CAVI_KEPT, 4 identities (two spellings of Akhilesh Yadav are one)
    assert (cavi["protocol"], cavi["file_pairs"], cavi["pairs"], cavi["same_pairs"], cavi["classes"],
            cavi["train_images"], cavi["skipped"]) == ("cavi", 16, 8, 4, 4, 8, 0)
    web = json.loads((dst / "metrics/cari/webcari/split.json").read_text())
    assert (web["protocol"], web["classes"], web["train_images"], web["test_pairs"], web["test_same_pairs"],
            web["skipped"]) == ("webcaricature", 4, 16, 8, 4, 0)
    assert web["C2P1_probes"] == web["P2C10_gallery"] == 4


def test_the_report_has_table_i_for_cavi_and_tables_ii_to_iv_for_webcari_with_the_papers_numbers(e2e_repo):
    dst = e2e_repo["dst"]
    table = (dst / "reports/cari_tables.md").read_text()
    cavi, web = table.split("# Caricature-visual recognition: `webcari` (WebCaricature protocol)")
    assert cavi.startswith("# Caricature-visual recognition: `cavi` (CaVI protocol)")
    # the real-data header, not the demo's ("These are synthetic demo numbers, not CaVI/WebCaricature")
    assert "**Data: CaVI** (`cavi`, the CaVI protocol)" in cavi
    assert "**Data: WebCaricature** (`webcari`, the WebCaricature protocol)" in web
    assert "demo numbers" not in table and "embedded caricature demo" not in table
    assert "## Table I: CaVI accuracy (%)" in cavi and "Table II" not in cavi and "Table III" not in cavi
    ours = [line for line in cavi.splitlines() if line.startswith("| dynamic — Ours (Multi-task) |")]
    assert len(ours) == 2 and all("| 94.92 |" in line and "| 85.61 |" in line for line in ours)  # selected, last
    assert "Table I:" not in web
    for title in ("## Table II: WebCaricature verification", "## Table III: WebCaricature caricature → photo (C2P)",
                  "## Table IV: WebCaricature photo → caricature (P2C)"):
        assert title in web, title
    ours = [line for line in web.splitlines() if line.startswith("| dynamic — Ours (Multi-task) |")]
    assert len(ours) == 6  # Tables II-IV, at the selected and at the last epoch
    assert "| 45.82 ± 1.65 |" in ours[0] and "| 83.20 ± 2.00 |" in ours[0]  # Table II: VAL at FAR 0.1 %, 1 %
    assert "| 87.30 ± 1.20 |" in ours[1] and "| 84.00 ± 1.60 |" in ours[2]  # Tables III, IV: Rank-1
    checks = (dst / "reports/cari_demo_check.txt").read_text()
    assert checks == "no demo targets: cavi is not demo data\nno demo targets: webcari is not demo data\n"
    report = json.loads((dst / "metrics/cari_report.json").read_text())
    assert {d: report["datasets"][d]["demo"] for d in DATASETS} == {"cavi": False, "webcari": False}


def test_each_run_writes_its_metrics(e2e_repo):
    for d in DATASETS:
        for method in (*METHODS, "pixel_pca"):
            metrics = json.loads((e2e_repo["dst"] / f"metrics/cari/{d}/{method}.json").read_text())
            last = metrics["last"]
            assert metrics["dataset"] == d and metrics["method"] == method
            for key in ("verification_accuracy", "visual_accuracy", "cari_accuracy"):
                assert 0.0 <= last[key] <= 1.0, (d, method, key)
    web = json.loads((e2e_repo["dst"] / "metrics/cari/webcari/dynamic.json").read_text())["last"]
    assert set(web["identification"]["directions"]) == {"C2P", "P2C"}
    cavi = json.loads((e2e_repo["dst"] / "metrics/cari/cavi/dynamic.json").read_text())
    assert cavi["epochs"] == 1 and "identification" not in cavi["last"]  # CaVI: no probe/gallery files


def test_a_second_repro_has_nothing_to_do(e2e_repo):
    out = run(e2e_repo, "dvc", "repro", "cari_report").stdout
    assert _ran(out) == set(), out
    assert "Data and pipelines are up to date" in out
    for stage in CARI:
        assert f"Stage '{stage}' didn't change, skipping" in out, stage
