"""Smoke test of ``bench/pretrain.py`` (loader / step / loop-with-data throughput of pretraining), one and two
processes, run as on a GPU box that has only torch, numpy, OpenCV and PyYAML.

The one-process run blocks the heavy packages (they look uninstalled), so importing any of them would fail; the
two ranks started by ``torch.distributed.run`` are not blocked, so the JSON's record of what they imported is
checked instead.
"""

from __future__ import annotations

import json

import pytest

from tests.blocked_imports import run_blocked

#: PyYAML stays: the step's settings come from params.yaml (the GPU box has it); pydantic does not
BLOCKED = ["pandas", "pyarrow", "sklearn", "scipy", "pydantic", "mlflow", "dvc", "typer", "PIL", "torchvision",
           "requests", "tqdm", "matplotlib"]


TINY = ["--device", "cpu", "--batch-sizes", "4", "--input-size", "80", "--crop", "80", "--stored-size", "96",
        "--faces", "16", "--identities", "4", "--shards", "2", "--depths", "reduced", "--precisions", "bf16,fp32",
        "--workers", "0,1", "--steps", "1", "--warmup", "0", "--threads", "1", "--processes", "2"]


def test_tiny_run_one_and_two_processes(tmp_path):
    out = tmp_path / "pretrain.json"
    res = run_blocked("bench.pretrain", BLOCKED, [*TINY, "--out", str(out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "pretrain" and payload["device"] == "cpu"
    assert payload["machine"]["python"] and payload["versions"]["torch"] and payload["versions"]["opencv"]
    assert payload["data"]["faces"] == 16 and payload["data"]["stored_size"] == 96
    assert payload["heavy_modules_loaded"] == [] and payload["multi_process"]["heavy_modules_loaded"] == []
    assert payload["multi_process"]["backend"] == "gloo"
    assert any(s["config"] == "all bf16 rows" for s in payload["skipped"])  # bf16 autocast only on CUDA
    assert len(payload["skipped"]) == 1

    rows = {(r["processes"], r["kind"], r.get("workers")): r for r in payload["results"]}
    assert all(r["decode"] == "worker" for r in payload["results"] if r["kind"] != "model")
    assert set(rows) == {(1, "loader", 0), (1, "loader", 1), (1, "model", None), (1, "both", 0), (1, "both", 1),
                         (2, "model", None), (2, "both", 0), (2, "both", 1)}
    for (n, kind, _), r in rows.items():
        assert r["batch"] == 4 and r["local_batch"] == 4 // (1 if kind == "loader" else n)
        assert r["img_per_s"] > 0 and r["ms_per_batch"] > 0
        assert abs(r["img_per_s_per_process"] * n - r["img_per_s"]) < 1e-6 * r["img_per_s"]
        if kind != "loader":
            assert r["precision"] == "fp32" and r["depth"] == "reduced" and r["input"] == 80
        if kind == "both":
            assert 0.0 <= r["stall"] <= r["stall_worst_rank"] <= 1.0
            assert r["loader_over_model"] > 0
            assert r["loop_over_model"] == r["img_per_s"] / rows[(n, "model", None)]["img_per_s_mean"]
    assert rows[(1, "loader", 1)]["steps"] == 8  # at least 2 x prefetch x workers timed batches
    assert {t["met"] for t in payload["targets"]} <= {True, False} and len(payload["targets"]) == 6
    assert "model 2p b4 fp32 reduced" in res.stdout and "loader_over_model" in res.stdout


def test_device_decoding_rows_use_torchvision_and_only_it(tmp_path):
    out = tmp_path / "pretrain.json"
    args = TINY[: TINY.index("--processes")] + ["--decode", "worker,device"]
    args[args.index("--workers") + 1] = "1"
    # the GPU box has torchvision and the Pillow it imports; nothing else heavy is imported
    res = run_blocked("bench.pretrain", [b for b in BLOCKED if b not in ("torchvision", "PIL")],
                      [*args, "--out", str(out)])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = {(r["kind"], r.get("decode")): r for r in payload["results"]}
    assert set(rows) == {("loader", "worker"), ("loader", "device"), ("model", None), ("both", "worker"),
                         ("both", "device")}
    assert all(r["img_per_s"] > 0 for r in rows.values())
    assert payload["heavy_modules_loaded"] == ["PIL", "torchvision"] and payload["versions"]["torchvision"]
    assert len(payload["targets"]) == 3 and "decode=" in payload["targets"][0]["target"]


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-sizes", "5", "--processes", "2"], "--batch-sizes 5 not a multiple of --processes 2"),
    (["--decode", "gpu"], "--decode: unknown ['gpu'], expected worker device"),
    (["--input-size", "64"], "--input-size: input_size must be >= 75 (Mixed_7a needs a 1x1 grid), got 64"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    """Checked before any data is made or any model built: exit status 2 and the reason on the last line (the
    parser's own error path, run in-process)."""
    from bench.pretrain import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", "cpu", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]
