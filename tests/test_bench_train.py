"""Smoke test of ``bench/train.py`` (the training-step benchmark), run as on a torch-only GPU box.

The benchmark must run where only torch and PyYAML are installed, so the run below blocks every other heavy
package (pydantic too: the settings model is plain dataclasses).
"""

from __future__ import annotations

import json

from tests.blocked_imports import run_blocked

#: PyYAML stays: the benchmark reads params.yaml (the GPU box has it); pydantic does not (the settings model is plain)
BLOCKED = ["pandas", "pyarrow", "sklearn", "scipy", "pydantic", "mlflow", "dvc", "typer", "cv2", "PIL", "torchvision",
           "requests", "tqdm", "matplotlib", "facenet_pytorch"]



def test_quick_run_on_torch_only(tmp_path):
    out = tmp_path / "train.json"
    args = ["--quick", "--device", "cpu", "--batch-sizes", "2", "--steps", "1", "--warmup", "0", "--threads", "1",
            "--no-peer", "--out", str(out)]
    res = run_blocked("bench.train", BLOCKED, args, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train" and payload["device"] == "cpu"
    assert payload["machine"]["python"] and payload["versions"]["torch"]
    assert payload["preprocess_source"] == "pipeline.faces.crops"  # torch-only crops: works with pandas blocked
    rows = {(r["model"], r["method"]): r for r in payload["results"]}
    assert set(rows) == {("ours", "dynamic"), ("ours", "single_identity")}
    for r in rows.values():
        assert r["depth"] == "reduced" and r["precision"] == "fp32" and r["batch"] == 2 and r["input"] == 96
        assert r["img_per_s"] > 0 and r["ms_per_step"] > 0
        assert r["img_per_s_with_data"] > 0 and r["preprocess_img_per_s"] > 0
        assert r["gflop_per_img"] > 0.1 and r["tflops"] > 0 and r["peak_mib"] is None
        assert len(r["last_losses"]) == 2 and len(r["last_weights"]) == 2
    assert rows[("ours", "single_identity")]["last_weights"] == [1.0, 0.0]
    # the dynamic unit adds its FC on Mixed_7a, nothing else differs
    assert 0 < rows[("ours", "dynamic")]["gflop_per_img"] - rows[("ours", "single_identity")]["gflop_per_img"] < 0.01
    assert any("bf16" in s["config"] for s in payload["skipped"])  # bf16 rows only on CUDA
    assert "ours dynamic reduced fp32 b2" in res.stdout


def test_pool_labels_follow_the_modality_mask():
    import torch

    from bench.train import StageSettings, pool_labels
    from tests.conftest import REPO

    cari = StageSettings.read_cari(REPO / "params.yaml")
    n_classes = cari.n_classes(195, 6)
    assert n_classes == {"verif": 195, "visual": 195, "cari": 195}
    labels = pool_labels(cari.tasks, n_classes, 10, torch.Generator().manual_seed(0), torch.device("cpu"))
    photo = torch.arange(10) % 2 == 0
    assert (labels["verif"] >= 0).all()  # verif: every image
    assert (labels["visual"][photo] == labels["verif"][photo]).all() and (labels["visual"][~photo] == -1).all()
    assert (labels["cari"][~photo] == labels["verif"][~photo]).all() and (labels["cari"][photo] == -1).all()


def test_auto_variant_as_the_stage_resolves_it():
    from bench.train import AUTO_VARIANTS, StageSettings
    from pipeline.config import AUTO_VARIANTS as STAGE_AUTO_VARIANTS
    from tests.conftest import REPO

    assert AUTO_VARIANTS == STAGE_AUTO_VARIANTS  # the bench's pydantic-free copy
    cari = StageSettings.read_cari(REPO / "params.yaml")
    assert (cari.auto_reader, cari.auto_variant) == ("cavi", "cavi")  # cari.datasets[0] = demo_cavi
    weighting, options = cari.method("dynamic")
    assert weighting == "dynamic" and options["variant"] == "cavi" and len(options["base"]) == 3


def test_three_task_step_beside_the_two_task_step(tmp_path):
    """``--tasks 3``: a 2-task and a 3-task row at the same batch, their ratio, the 3-task target "not measured"."""
    from bench.train import main

    out = tmp_path / "train-tasks3.json"
    payload = main(["--quick", "--device", "cpu", "--tasks", "3", "--batch-sizes", "4", "--input-size", "80",
                    "--steps", "1", "--warmup", "0", "--threads", "1", "--no-peer", "--precisions", "fp32",
                    "--methods", "dynamic", "--cari-methods", "dynamic", "--out", str(out)])
    assert json.loads(out.read_text())["settings"]["tasks"] == 3
    rows = {r["tasks"]: r for r in payload["results"]}
    assert set(rows) == {2, 3}
    two, three = rows[2], rows[3]
    assert (two["section"], two["task_set"], three["section"], three["task_set"]) == ("finetune", "fr_fer", "cari",
                                                                                      "cari")
    for r in (two, three):
        assert r["method"] == "dynamic" and r["batch"] == 4 and r["precision"] == "fp32" and r["depth"] == "reduced"
        assert r["img_per_s"] > 0 and r["img_per_s_with_data"] > 0 and r["gflop_per_img"] > 0
    # the 3-task step really trains three tasks: three losses and weights, every task labelled in the batch
    assert len(two["last_losses"]) == 2
    assert len(three["last_losses"]) == 3 and len(three["last_weights"]) == 3
    assert three["last_present"] == [True, True, True] and all(v > 0 for v in three["last_losses"])
    assert abs(sum(three["last_weights"]) - 1) < 1e-3  # the unit's softmax over three tasks
    assert three["ratio_to_2task"] > 0 and three["paired_2task_method"] == "dynamic"
    (ratio,) = payload["task_ratios"]
    assert ratio["method_3task"] == ratio["method_2task"] == "dynamic"
    assert ratio["ratio"] == three["img_per_s"] / two["img_per_s"] > 0 and ratio["ratio_with_data"] > 0
    cari = payload["settings"]["cari"]
    assert cari["method_blocks"]["dynamic"]["options"]["variant"] == "cavi"  # variant: auto, as on CaVI
    # the center policy (per_branch, all three tasks) gave visual and cari the center blocks params leaves empty
    assert all(cari["task_set"]["tasks"][t]["center"]["matrix"] == "own" for t in ("verif", "visual", "cari"))
    (goal,) = [g for g in payload["targets"] if "3-task" in g["target"]]
    assert goal["value"] is None and goal["met"] == "not measured"  # bf16 batch 256: CUDA only


def test_three_task_settings_on_torch_only(tmp_path):
    """The ``--tasks 3`` path (``cari.common``, the center policy, ``variant: auto``) needs no pydantic: bf16 only on
    a CPU times nothing, so this reads the settings and writes the JSON."""
    out = tmp_path / "train.json"
    res = run_blocked("bench.train", BLOCKED, ["--device", "cpu", "--tasks", "3", "--precisions", "bf16", "--no-peer",
                                               "--out", str(out)], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["results"] == [] and payload["settings"]["cari"]["auto_variant"] == "cavi"
    assert payload["settings"]["batch_sizes"] == [256]
    assert payload["targets"][-1]["met"] == "not measured"
