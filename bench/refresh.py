"""How long one SA-MTL refresh takes without the forward pass (target: <= 10 s for 10,000 images on the CPU).

A refresh (:class:`pipeline.disjoint.plan.DisjointPlan`) turns the teacher's logits and task features of the images
that need targets into pseudo labels and targets: softmax and argmax, the three weight factors (confidence; density
per pseudo class at ``density_t``; distribution: two seeded full-covariance Gaussian mixtures of ``cluster_k``
components, labelled and pseudo features, and the closed-form EMD), their product, the distilled targets and the
selection. Inputs are seeded: ``--images`` pseudo-labelled and as many labelled images, ``--classes`` classes,
``--dim``-d features (the expression head's 128-d hidden layer). Two feature kinds: ``clustered`` (class blobs, as a
trained teacher gives) and ``structureless`` (one Gaussian: the mixtures' EM runs longest). Reported per kind: the
median (min, max) of ``--repeats`` timed refreshes after one warm-up, and each part's share.

Usage (project venv, repo root)::

    python -m bench.refresh [--images 10000] [--repeats 3] [--out reports/bench/refresh.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import machine, print_table, write_json
from pipeline.disjoint.distill import distill_targets
from pipeline.disjoint.pseudo_weights import combine, confidence, density, distribution
from pipeline.disjoint.selection import select_targets


def inputs(n: int, classes: int, dim: int, kind: str, seed: int) -> dict[str, np.ndarray]:
    """Seeded logits ``[n, C]`` and features ``[n, D]`` of the pseudo-labelled images, features and labels of as many
    labelled ones."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, dim)) * (3.0 if kind == "clustered" else 0.0)
    y_lab = rng.integers(0, classes, n)
    y_ps = rng.integers(0, classes, n)
    lab = centers[y_lab] + rng.standard_normal((n, dim))
    ps = centers[y_ps] + rng.standard_normal((n, dim))
    logits = 2.0 * np.eye(classes)[y_ps] + rng.standard_normal((n, classes))
    return {"labelled": lab.astype(np.float32), "labels": y_lab, "pseudo_features": ps.astype(np.float32),
            "logits": logits.astype(np.float32)}


def refresh(x: dict[str, np.ndarray], *, density_t: float, k: int, seed: int) -> dict[str, float]:
    """One refresh; the seconds of each part."""
    t = {}
    t0 = time.perf_counter()
    z = torch.from_numpy(x["logits"])
    probs = torch.softmax(z, dim=1).numpy()
    pseudo = probs.argmax(axis=1)
    t["softmax"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    conf = confidence(probs)
    t["confidence"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dens = density(x["pseudo_features"], pseudo, density_t)
    t["density"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = distribution(x["labelled"], x["labels"], x["pseudo_features"], pseudo, k=k, seed=seed)
    t["distribution"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = combine({"confidence": conf, "density": dens, "distribution": dist},
                ["confidence", "density", "distribution"])
    distilled = distill_targets(z, 2.0, "row")
    select_targets(torch.from_numpy(pseudo).long(), torch.from_numpy(w.astype(np.float32)), distilled, rule="soft")
    t["combine_select"] = time.perf_counter() - t0
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cluster-k", type=int, default=4)
    ap.add_argument("--density-t", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/refresh.json"))
    args = ap.parse_args()
    rows = []
    for kind in ("clustered", "structureless"):
        x = inputs(args.images, args.classes, args.dim, kind, args.seed)
        refresh(x, density_t=args.density_t, k=args.cluster_k, seed=args.seed)  # warm-up
        runs = [refresh(x, density_t=args.density_t, k=args.cluster_k, seed=args.seed) for _ in range(args.repeats)]
        totals = [sum(r.values()) for r in runs]
        row = {"features": kind, "images": args.images, "dim": args.dim, "classes": args.classes,
               "median_s": statistics.median(totals), "min_s": min(totals), "max_s": max(totals)}
        row.update({f"{part}_s": statistics.median(r[part] for r in runs) for part in runs[0]})
        row["meets_10s"] = row["median_s"] <= 10.0
        rows.append(row)
    print_table(rows, ["features", "images", "median_s", "min_s", "max_s", "density_s", "distribution_s",
                       "combine_select_s", "meets_10s"])
    write_json(args.out, {"benchmark": "refresh", "machine": machine(), "target_s": 10.0,
                          "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "seed": args.seed,
                          "cluster_k": args.cluster_k, "density_t": args.density_t, "results": rows})


if __name__ == "__main__":
    main()
