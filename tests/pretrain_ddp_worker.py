"""One pretraining run on synthetic shards, for the multi-process equivalence test (run under torchrun or alone).

Usage: ``python tests/pretrain_ddp_worker.py SHARD_DIR OUT_DIR STEPS GLOBAL_BATCH`` — every rank writes
``OUT_DIR/rank<r>.pt`` with its final parameters, BN buffers and center-loss centers. BN is frozen, dropout and
random augmentation are off: per-rank BN statistics, dropout masks and crops are the only legitimate differences
between N processes and one process with the same global batch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.settings import OptimizerSettings
from pipeline.training.distributed import from_env
from pipeline.training.pretrain import pretrain_spec, run_pretrain
from pipeline.training.shard_data import ShardFaces
from tests.settings_helpers import PRETRAIN_CPU, pretrain_settings


def main(shard_dir: str, out: str, steps: int, batch: int) -> None:
    torch.set_num_threads(1)
    meta = np.load(Path(shard_dir) / "index.npz")
    faces = ShardFaces(shard_dir, meta["shard"], meta["offset"], meta["length"], meta["labels"], int(meta["size"]))
    settings = pretrain_settings(**{
        "network.keep_prob": 1.0, "network.input_size": 80, "crop.size": 80, "crop.random": False, "crop.flip": False,
        "steps": steps, "batch_size": batch, "schedule.lr": 0.01, "schedule.boundaries": [],
        "optimizer": OptimizerSettings(name="rmsprop_tf1", momentum=0.9, rms_decay=0.9, rms_eps=1.0,
                                       weight_decay=5e-5, clip_norm=5.0),
        "center_loss.factor": 0.1, "freeze_bn": True, "checkpoint_every": 1000, "eval_every": 1000, "log_every": 1,
        "precision.amp": False, "seed": 3})
    spec = pretrain_spec(settings, n_classes=int(meta["labels"].max()) + 1, align_convention="paper_182_44",
                         checkpoint=None, runtime=PRETRAIN_CPU)
    dist = from_env("cpu")
    work = Path(out) / f"work-rank{dist.rank}"  # a state per rank: the test compares, it does not resume
    result = run_pretrain(spec, faces, work, dist)
    torch.save({"model": result.model.state_dict(), "centers": result.centers.centers.clone(),
                "rows": result.rows, "world": dist.world}, Path(out) / f"rank{dist.rank}.pt")
    dist.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
