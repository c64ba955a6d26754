"""How long the verification protocol takes on LFW-size input (target: <= 0.5 s on one CPU core).

6,000 pairs of 512-d float32 embeddings (seeded, half same-identity), full evaluation as ``stages verify`` runs it:
L2 normalisation, squared distances, 10-fold accuracy on the 400-threshold grid, VAL at FAR 1e-3 and 1e-2 on the
4,000-threshold grid, AUC and EER over all pairs, per-fold AUCs. Both modes are timed. One core: BLAS/OpenMP
thread pools are limited to 1 (environment variables set before NumPy loads, plus threadpoolctl) and the process
is pinned to one CPU. Reported: the median (and min, max) of ``--repeats`` timed runs after one warm-up run.

Usage (project venv, repo root)::

    python -m bench.evaluation [--repeats 25] [--out reports/bench/evaluation.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.common import machine, print_table, write_json  # noqa: E402
from pipeline.evaluation.verification import evaluate_verification  # noqa: E402


def pairs(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded pairs: a, b (n, dim) float32; same (n,) bool; same pairs are noisy copies (a realistic ROC)."""
    rng = np.random.default_rng(seed)
    same = np.arange(n) % 2 == 0
    a = rng.standard_normal((n, dim), dtype=np.float32)
    b = np.where(same[:, None], a + 7.0 * rng.standard_normal((n, dim), dtype=np.float32),
                 rng.standard_normal((n, dim), dtype=np.float32))
    return a, b.astype(np.float32), same


def time_mode(a: np.ndarray, b: np.ndarray, same: np.ndarray, mode: str, repeats: int) -> dict:
    result = evaluate_verification(a, b, same, mode=mode)  # warm-up (imports, caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        evaluate_verification(a, b, same, mode=mode)
        times.append(time.perf_counter() - t0)
    vals = result.val_at_far
    return {"mode": mode, "pairs": len(same), "dim": a.shape[1], "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "accuracy": result.accuracy, "auc": result.auc,
            "eer": result.eer, "val@1e-3": vals["0.001"].val, "val@1e-2": vals["0.01"].val}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/evaluation.json"))
    args = ap.parse_args()
    cpu = None
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    a, b, same = pairs(args.pairs, args.dim, args.seed)
    with threadpool_limits(limits=1):
        rows = [time_mode(a, b, same, mode, args.repeats) for mode in ("clean", "faithful")]
    print_table(rows, ["mode", "pairs", "dim", "median_s", "min_s", "max_s", "accuracy", "auc", "eer", "val@1e-3",
                       "val@1e-2"])
    write_json(args.out, {"benchmark": "evaluation", "machine": machine(), "target_s": 0.5, "threads": 1,
                          "pinned_cpu": cpu, "repeats": args.repeats, "seed": args.seed, "numpy": np.__version__,
                          "results": rows})


if __name__ == "__main__":
    main()
