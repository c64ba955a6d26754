"""How long the embedded demo takes to generate (target: the whole default demo in <= 60 s on 2 cores).

Usage (from the repo root, in the project venv)::

    python -m bench.demo_generation [--params params.yaml] [--workers 1 2] [--out reports/bench/demo_generation.json]

Generates every demo dataset of ``params.yaml`` at its configured size into a temp folder, once per worker count,
and prints images, seconds and images/s per dataset plus the total.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import machine, print_table, write_json
from pipeline.config import DemoExpressionSource, DemoIdentitySource, load_params
from pipeline.data import demo as gen


def run(params_path: Path, workers: list[int]) -> list[dict]:
    params = load_params(params_path)
    rows = []
    for w in workers:
        total_images, total_s = 0, 0.0
        for name, ds in params.datasets.items():
            src = ds.source
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                if isinstance(src, DemoExpressionSource):
                    s = gen.generate_expression_dataset(
                        Path(tmp) / "d", seed=params.demo.seed, first_identity=src.first_identity,
                        n_subjects=src.n_subjects, expressions=tuple(src.expressions), frames=tuple(src.frames),
                        image_size=tuple(src.image_size), quality=params.demo.quality, workers=w)
                elif isinstance(src, DemoIdentitySource):
                    s = gen.generate_identity_dataset(
                        Path(tmp) / "d", seed=params.demo.seed, first_identity=src.first_identity,
                        n_identities=src.n_identities, images_per_identity=src.images_per_identity,
                        image_size=tuple(src.image_size), quality=params.demo.quality, workers=w)
                else:
                    continue
                dt_s = time.perf_counter() - t0
            n = s.to_dict()["n_images"]
            rows.append({"dataset": name, "workers": w, "images": n, "seconds": dt_s, "img_per_s": n / dt_s})
            total_images += n
            total_s += dt_s
        rows.append({"dataset": "TOTAL", "workers": w, "images": total_images, "seconds": total_s,
                     "img_per_s": total_images / total_s if total_s else 0.0})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("reports/bench/demo_generation.json"))
    args = ap.parse_args()
    rows = run(args.params, args.workers)
    print_table(rows, ["dataset", "workers", "images", "seconds", "img_per_s"])
    write_json(args.out, {"benchmark": "demo_generation", "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
