"""End to end: the disjoint-datasets run of the shared e2e repository (``tests/e2e_repo.py``).

Its ``dvc repro`` ran ``disjoint_train@0-sa_mtl`` on fold 0 of the Oulu-CASIA-layout dataset (``disjoint.dataset:
oulu``, view ``demo_halves``): the training subjects split into an identity-only and an expression-only half, two
alternating epochs (one per half), each starting with a refresh of the teacher's pseudo labels (confidence × density
× distribution, soft selection). The run's folder holds each refresh's pseudo labels with the hidden true label, and
the hidden sidecar; the training never saw a masked label.
"""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
import yaml

from tests.e2e_repo import DISJOINT

pytestmark = pytest.mark.e2e


def test_repro_ran_the_disjoint_run_and_locked_it(e2e_repo):
    ran = {line.split("'")[1] for line in e2e_repo["out"].splitlines() if line.startswith("Running stage")}
    assert set(DISJOINT) <= ran, e2e_repo["out"]
    lock = yaml.safe_load((e2e_repo["dst"] / "dvc.lock").read_text())
    assert set(DISJOINT) <= set(lock["stages"])


def test_the_run_wrote_pseudo_labels_per_refresh_against_the_hidden_sidecar(e2e_repo):
    out = e2e_repo["dst"] / "data/disjoint/fold0-sa_mtl"
    hidden = pd.read_parquet(out / "hidden.parquet")
    metrics = json.loads((e2e_repo["dst"] / "metrics/disjoint/fold0-sa_mtl.json").read_text())
    assert (metrics["mode"], metrics["transfer"], metrics["last"]["epoch"]) == ("alternating", "pseudo", 2)
    data = metrics["data"]
    # every masked label of the view is in the sidecar: the expression labels of the identity half and the identity
    # labels of the expression half
    assert len(hidden) == data["hidden_labels"] > 0
    assert set(hidden["task"]) == {"identity", "expression"}
    hidden = hidden[hidden["task"] == "expression"]
    assert data["source_identity_half"] + data["source_expression_half"] == data["train_images"]
    refreshes = sorted(int(p.stem) for p in (out / "pseudo").glob("*.parquet"))
    assert refreshes == [1]  # epoch 1 trains the identity half: its expression pseudo labels; epoch 2 the other half
    table = pd.read_parquet(out / "pseudo/1.parquet")
    assert list(table.columns) == ["image_id", "task", "pseudo", "confidence", "density", "distribution", "weight",
                                   "selected", "truth"]
    assert set(table["image_id"]) == set(hidden["image_id"])  # the identity half's images, each with its truth
    truth = dict(zip(hidden["image_id"], hidden["label"], strict=True))
    assert [truth[i] for i in table["image_id"]] == table["truth"].tolist()
    assert table["weight"].between(0, 1).all() and table["weight"].max() == pytest.approx(1.0)
    history = json.loads((out / "history.json").read_text())
    assert 0 <= history[0]["plan"]["precision_expression"] <= 1
    assert history[0]["plan"]["coverage_expression"] == 1.0  # soft selection: every image gets a target
    with open(out / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["present_identity"] for r in rows} == {"1"} and {r["present_expression"] for r in rows} == {"1"}
