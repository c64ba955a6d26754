"""Face-detection rate of the embedded demo data under an independent, real MTCNN.

The demo generator (:mod:`pipeline.data.demo`) must draw faces that a detector trained on
photographs finds. This script measures that with the ``mtcnn`` PyPI package (1.0.0, a
TensorFlow MTCNN with its own weights, independent of this repo) at the pipeline's detection
settings: minimum face 20 px, stage thresholds 0.6 / 0.7 / 0.7, scale factor 0.709 (the
package's own O-Net default is 0.8; the 0.7 is passed explicitly, and the >= 0.9 score rule
below is stricter than both).

An image counts as *detected* when some face with score >= 0.9 overlaps the true face oval
(IoU >= 0.3); ``detected_any_score`` counts images with any face above the stage thresholds,
wherever it is. The JSON also gives per-expression rates (expression set) and rates per set.

It is run only in a throw-away environment outside the repo, never by the pipeline or CI::

    python3.11 -m venv /tmp/mtcnnref
    /tmp/mtcnnref/bin/pip install mtcnn==1.0.0 tensorflow-cpu opencv-python-headless numpy
    cd /work/main   # the repo root
    /tmp/mtcnnref/bin/python bench/demo_detection_rate.py --out reports/demo_detection_rate.json

Options: ``--subjects/--identities/--images-per-identity`` size the generated sample (the
default sample is 20 subjects x 6 expressions x all frames + 40 identities x 10 images), and
``--folder DIR`` instead scores every ``*.jpg``/``*.jpeg`` under an existing folder (no true
boxes there, so only "any face with score >= 0.9" is counted).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import demo

SETTINGS = {"min_face_size": 20, "threshold_pnet": 0.6, "threshold_rnet": 0.7, "threshold_onet": 0.7,
            "scale_factor": 0.709}
SCORE = 0.9
MIN_IOU = 0.3


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _jpeg_roundtrip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    """The RGB image exactly as the generator's JPEG file decodes."""
    buf = np.frombuffer(demo.encode_jpeg(image, quality), np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class Scorer:
    """Runs the reference MTCNN and accumulates detection counts per group."""

    def __init__(self) -> None:
        from mtcnn import MTCNN

        self.detector = MTCNN()
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: {"images": 0, "detected": 0, "any": 0})
        self.misses: list[str] = []

    def score(self, image: np.ndarray, box: tuple[float, float, float, float] | None, groups: list[str],
              name: str) -> None:
        """Detect on one RGB ``(H, W, 3)`` uint8 image; ``box`` is the true face (None: unknown)."""
        faces = self.detector.detect_faces(image, box_format="xyxy", **SETTINGS)
        any_face = len(faces) > 0
        hit = any(f["confidence"] >= SCORE and (box is None or _iou(tuple(f["box"]), box) >= MIN_IOU) for f in faces)
        for g in groups:
            c = self.counts[g]
            c["images"] += 1
            c["detected"] += int(hit)
            c["any"] += int(any_face)
        if not hit:
            self.misses.append(name)

    def report(self) -> dict[str, dict[str, float]]:
        return {g: {"images": c["images"], "detected": c["detected"], "detected_any_score": c["any"],
                    "rate": round(c["detected"] / max(1, c["images"]), 4)} for g, c in sorted(self.counts.items())}


def score_generated(scorer: Scorer, seed: int, subjects: int, identities: int, per_identity: int) -> None:
    """Score a freshly rendered sample of both demo sets (same pixels as the JPEG files)."""
    for i in range(subjects):
        for expr in demo.EXPRESSIONS:
            seq = demo.render_expression_sequence(seed, i, expr)
            for f, r in enumerate(seq):
                groups = ["expression_set", f"expression/{expr}"]
                if f == len(seq) - 1:
                    groups += ["expression_set/peak", f"peak/{expr}"]
                if f == 0:
                    groups.append("expression_set/neutral")
                scorer.score(_jpeg_roundtrip(r.image), r.face_box, groups, f"P{i + 1:03d}/{expr}/{f:03d}")
    for i in range(identities):
        ident = 1000 + i
        for j in range(per_identity):
            r = demo.render_identity_image(seed, ident, j)
            scorer.score(_jpeg_roundtrip(r.image), r.face_box, ["identity_set", f"identity_set/{r.expression}"],
                         f"{ident:07d}/{j + 1:03d}")


def score_folder(scorer: Scorer, folder: Path) -> None:
    """Score every JPEG under ``folder`` (true boxes unknown)."""
    for path in sorted([*folder.rglob("*.jpg"), *folder.rglob("*.jpeg")]):
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        scorer.score(image, None, ["folder"], str(path.relative_to(folder)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--images-per-identity", type=int, default=10)
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    scorer = Scorer()
    if args.folder is not None:
        score_folder(scorer, args.folder)
    else:
        score_generated(scorer, args.seed, args.subjects, args.identities, args.images_per_identity)
    result = {
        "reference": {"name": "mtcnn", "version": importlib.metadata.version("mtcnn"),
                      "tensorflow": importlib.metadata.version("tensorflow-cpu")},
        "settings": {**SETTINGS, "score": SCORE, "min_iou": MIN_IOU},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": args.seed,
        "source": str(args.folder) if args.folder else "generated",
        "rates": scorer.report(),
        "misses": scorer.misses[:50],
        "seconds": round(time.perf_counter() - start, 1),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
