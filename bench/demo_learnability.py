"""Is the embedded demo learnable, but not trivially? A linear probe on face crops, as a floor for the CNN.

The demo must let training learn identity and expression above chance without being trivially separable. This
probe crops each rendered face with its true box plus a 10 % margin (a stand-in for MTCNN alignment), resizes it
to 32x32 grey, and fits PCA (64 components) + logistic regression (scikit-learn):

- identity: ``n_ids`` identities of the CASIA-WebFace-style set, ``per_id`` images each; the first 2/3 of each
  identity's images train, the rest test (chance = 1 / n_ids);
- expression: the peak frames of the Oulu-style set; subjects are split (first 3/4 train, the rest test), so the
  probe must generalise to unseen people (chance = 1/6).

A small CNN (4 conv layers, 64x64 colour crops, 40 epochs of Adam from scratch, seeded, CPU) gives a second,
less pessimistic floor for expression. Neither is the paper's network: the training stages will measure that.

Usage (project venv, repo root)::

    python -m bench.demo_learnability [--seed 2019] [--out reports/bench/demo_learnability.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.common import machine, print_table, write_json
from pipeline.data import demo


def crop(rendered: demo.Rendered, size: int = 32) -> np.ndarray:
    """The face crop of :func:`crop_rgb` as a flat ``size*size`` grey vector in [0, 1]."""
    grey = cv2.cvtColor(crop_rgb(rendered, size), cv2.COLOR_RGB2GRAY)
    return grey.reshape(-1).astype(np.float32) / 255.0


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), PCA(n_components=64, random_state=0),
                          LogisticRegression(max_iter=2000, C=0.1))
    model.fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def identity_task(seed: int, n_ids: int, per_id: int) -> dict:
    n_train = (2 * per_id) // 3
    xs, ys, train = [], [], []
    for k in range(n_ids):
        for j in range(per_id):
            xs.append(crop(demo.render_identity_image(seed, 1000 + k, j)))
            ys.append(k)
            train.append(j < n_train)
    x, y, t = np.stack(xs), np.array(ys), np.array(train)
    return {"task": "identity", "classes": n_ids, "train": int(t.sum()), "test": int((~t).sum()),
            "chance": 1.0 / n_ids, "accuracy": probe(x[t], y[t], x[~t], y[~t])}


def expression_task(seed: int, n_subjects: int) -> dict:
    n_train = (3 * n_subjects) // 4
    xs, ys, train = [], [], []
    for i in range(n_subjects):
        for label, expression in enumerate(demo.EXPRESSIONS):
            for r in demo.render_expression_sequence(seed, i, expression)[-3:]:  # the 3 peak frames
                xs.append(crop(r))
                ys.append(label)
                train.append(i < n_train)
    x, y, t = np.stack(xs), np.array(ys), np.array(train)
    return {"task": "expression (unseen subjects)", "classes": len(demo.EXPRESSIONS), "train": int(t.sum()),
            "test": int((~t).sum()), "chance": 1.0 / len(demo.EXPRESSIONS), "accuracy": probe(x[t], y[t], x[~t], y[~t])}


def cnn_expression_task(seed: int, n_subjects: int, epochs: int = 40) -> dict:
    """The expression task with a small CNN trained from scratch on 64x64 colour crops (seeded, CPU)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n_train = (3 * n_subjects) // 4
    xs, ys, train = [], [], []
    for i in range(n_subjects):
        for label, expression in enumerate(demo.EXPRESSIONS):
            for r in demo.render_expression_sequence(seed, i, expression)[-3:]:
                xs.append(crop_rgb(r, 64))
                ys.append(label)
                train.append(i < n_train)
    x = torch.tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True)  # per-image standardisation
    y, t = torch.tensor(ys), torch.tensor(train)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                        nn.MaxPool2d(2), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                        nn.Linear(128, len(demo.EXPRESSIONS)))
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    xt, yt = x[t], y[t]
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(xt))
        for k in range(0, len(xt), 32):
            idx = perm[k:k + 32]
            dx, dy = (int(v) for v in rng.integers(-4, 5, 2))
            xb = torch.roll(xt[idx], (dx, dy), (2, 3))
            if rng.random() < 0.5:
                xb = xb.flip(3)
            loss = nn.functional.cross_entropy(net(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[~t]).argmax(1) == y[~t]).float().mean())
    return {"task": "expression, small CNN (unseen subjects)", "classes": len(demo.EXPRESSIONS),
            "train": int(t.sum()), "test": int((~t).sum()), "chance": 1.0 / len(demo.EXPRESSIONS), "accuracy": acc}


def crop_rgb(rendered: demo.Rendered, size: int) -> np.ndarray:
    """The face region (true box + 10 % margin, clipped), resized to ``size x size`` RGB uint8."""
    h, w = rendered.image.shape[:2]
    x0, y0, x1, y1 = rendered.face_box
    mx, my = 0.1 * (x1 - x0), 0.1 * (y1 - y0)
    x0, y0 = max(0, int(x0 - mx)), max(0, int(y0 - my))
    x1, y1 = min(w, int(x1 + mx)), min(h, int(y1 + my))
    return cv2.resize(rendered.image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--ids", type=int, default=50)
    ap.add_argument("--per-id", type=int, default=30)
    ap.add_argument("--subjects", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("reports/bench/demo_learnability.json"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = [identity_task(args.seed, args.ids, args.per_id), expression_task(args.seed, args.subjects),
            cnn_expression_task(args.seed, args.subjects)]
    print_table(rows, ["task", "classes", "train", "test", "chance", "accuracy"])
    write_json(args.out, {"benchmark": "demo_learnability", "machine": machine(), "seed": args.seed,
                          "seconds": round(time.perf_counter() - t0, 1), "results": rows})


if __name__ == "__main__":
    main()
