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
