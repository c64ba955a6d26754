"""A raw-pixel baseline: PCA of the aligned crops ("eigenfaces") for verification, a linear probe per classification
task (the expression of FR+FER).

The same images the network sees, without any learning beyond PCA and a logistic regression:

1. the evaluation crop of each stored face: the centred ``crop × crop`` window (the network's centre crop,
   :func:`pipeline.faces.crops.center_crop`: top-left corner ``((S − crop) // 2, (S − crop) // 2)``);
2. resized to ``size × size`` (Pillow bilinear, antialiased when shrinking, as the alignment's resize), colour or
   grey (ITU-R BT.601 luma);
3. flattened and standardised per image as the network's input (``(x − mean) / max(std, 1/√n)``);
4. PCA (``components``, optionally whitened) fitted on the **training** images only; the L2-normalised
   projections are the identity embeddings;
5. per classification task, a multinomial logistic regression on the PCA projections of the training images
   labelled for it predicts the task's class; its decision values are the task's "logits".

Plain NumPy, Pillow and scikit-learn: no torch. Images are ``uint8 [N, 3, S, S]`` (the layout of
:class:`pipeline.training.data.LabelledImages`), as NumPy arrays.

What the baseline stages share (``pixel_baseline@<dataset>-<fold>`` on a fold, ``cari_pixel@<dataset>`` on a
caricature split): :func:`fit_predict` (fit on the training images, the test images' embeddings and decision values),
:func:`baseline_record` (the metrics file, in the training stages' shape) and :func:`write_baseline_outputs`
(``scores.npz``, ``pca.json`` and the metrics file, written together).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.atomic import atomic_dir, atomic_files, write_json

__all__ = ["METHOD", "PixelPCA", "PixelPCASettings", "baseline_record", "center_crop", "fit_predict",
           "pixel_features", "write_baseline_outputs"]

#: the baseline's method name: its rows in the tables, its metrics and output names
METHOD = "pixel_pca"

#: BT.601 luma weights (Pillow's ``convert("L")``)
LUMA = np.array([0.299, 0.587, 0.114])
#: decision value given to classes absent from the training images (never the argmax)
ABSENT_CLASS = float(np.finfo(np.float32).min)


@dataclass(frozen=True)
class PixelPCASettings:
    """``pixel_baseline`` params plus the evaluation crop.

    Attributes:
        crop: side of the centre crop taken from the stored faces (the network's evaluation crop).
        size: side the crop is resized to before flattening.
        grey: grey pixels (``size²`` features) instead of colour (``3·size²``).
        components: PCA components (capped at ``min(n_train − 1, n_features)``).
        whiten: scale each component to unit variance on the training images.
        probe_c: inverse L2 regularisation strength of each task's logistic regression.
        seed: ``random_state`` of PCA and the logistic regressions (both are deterministic with their solvers).
    """

    crop: int
    size: int
    grey: bool
    components: int
    whiten: bool
    probe_c: float
    seed: int


@dataclass
class _Probe:
    """One task's logistic regression (or its only class, when the training images hold one)."""

    n_classes: int
    classifier: Any = None
    only_class: int | None = None


def center_crop(images: np.ndarray, crop: int) -> np.ndarray:
    """The centred ``crop × crop`` window of ``uint8 [N, C, S, S]`` images (the network's evaluation crop)."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {images.shape}")
    h, w = images.shape[-2:]
    if not 0 < crop <= min(h, w):
        raise ValueError(f"crop size {crop} does not fit images of {h}x{w}")
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def pixel_features(images: np.ndarray, *, crop: int, size: int, grey: bool) -> np.ndarray:
    """``uint8 [N, 3, S, S]`` → standardised pixel vectors ``float64 [N, size²]`` (grey) or ``[N, 3·size²]``."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    x = center_crop(images, crop)
    n = len(x)
    out = np.empty((n, size, size, 3), dtype=np.float64)
    for i in range(n):
        img = np.ascontiguousarray(x[i].transpose(1, 2, 0))
        if img.shape[0] != size:
            img = np.asarray(Image.fromarray(img).resize((size, size), resample=Image.Resampling.BILINEAR))
        out[i] = img
    if grey:
        out = out @ LUMA
    flat = out.reshape(n, -1)
    mean = flat.mean(axis=1, keepdims=True)
    std = flat.std(axis=1, keepdims=True)
    return (flat - mean) / np.maximum(std, 1.0 / np.sqrt(flat.shape[1]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.maximum(np.sum(x * x, axis=1, keepdims=True), 1e-20))


class PixelPCA:
    """PCA embedding + one probe per classification task, fitted on training images (see the module docstring).

    Attributes (after :meth:`fit`):
        pca: the fitted ``sklearn.decomposition.PCA``.
        probes: per task, its logistic regression (``classifier`` None when the training images hold one class).
    """

    def __init__(self, settings: PixelPCASettings) -> None:
        self.settings = settings
        self.pca: Any = None
        self.probes: dict[str, _Probe] = {}

    def features(self, images: np.ndarray) -> np.ndarray:
        s = self.settings
        return pixel_features(images, crop=s.crop, size=s.size, grey=s.grey)

    def fit(self, images: np.ndarray, labels: dict[str, tuple[np.ndarray, int]]) -> PixelPCA:
        """Fit PCA on ``images`` (the training images) and a probe per task on ``labels[task] = (y [N], n_classes)``.

        Labels ``< 0`` (unlabelled) are left out of that task's probe, not of the PCA.

        Raises:
            ValueError: fewer than 2 training images, a task without a labelled image, or a label ``>= n_classes``.
        """
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        s = self.settings
        x = self.features(images)
        if len(x) < 2:
            raise ValueError(f"PCA needs at least 2 training images, got {len(x)}")
        k = min(s.components, len(x) - 1, x.shape[1])
        self.pca = PCA(n_components=k, whiten=s.whiten, svd_solver="full", random_state=s.seed).fit(x)
        self.probes = {}
        for task, (y, n_classes) in labels.items():
            y = np.asarray(y, dtype=np.int64)
            if len(y) != len(x):
                raise ValueError(f"{len(y)} {task} labels for {len(x)} training images")
            if (y >= n_classes).any():
                raise ValueError(f"{task} label {int(y.max())} out of range for {n_classes} classes")
            labelled = y >= 0
            if not labelled.any():
                raise ValueError(f"no training image labelled for {task} (its probe)")
            z = self.pca.transform(x[labelled])
            classes = np.unique(y[labelled])
            probe = _Probe(n_classes)
            if len(classes) == 1:
                probe.only_class = int(classes[0])
            else:
                probe.classifier = LogisticRegression(C=s.probe_c, max_iter=5000, random_state=s.seed)
                probe.classifier.fit(z, y[labelled])
            self.probes[task] = probe
        return self

    @property
    def n_components(self) -> int:
        return int(self.pca.n_components_)

    def project(self, images: np.ndarray) -> np.ndarray:
        """PCA projections ``float64 [N, k]`` (not normalised)."""
        self._check_fitted()
        return self.pca.transform(self.features(images))

    def embed(self, images: np.ndarray) -> np.ndarray:
        """L2-normalised PCA projections ``float32 [N, k]``: the identity embeddings."""
        return _unit(self.project(images)).astype(np.float32)

    def scores(self, task: str, images: np.ndarray | None = None, *, projections: np.ndarray | None = None
               ) -> np.ndarray:
        """Decision values ``float32 [N, n_classes]`` of ``task``'s probe (argmax = predicted class).

        Classes absent from the training images get :data:`ABSENT_CLASS`.
        """
        self._check_fitted()
        probe = self.probes[task]
        z = self.project(images) if projections is None else projections
        out = np.full((len(z), probe.n_classes), ABSENT_CLASS, dtype=np.float64)
        if probe.classifier is None:
            out[:, probe.only_class] = 0.0
            return out.astype(np.float32)
        d = probe.classifier.decision_function(z)
        classes = probe.classifier.classes_
        if d.ndim == 1:  # two classes: sklearn returns the score of classes_[1]
            d = np.stack([-d, d], axis=1)
        out[:, classes] = d
        return out.astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """Fitted sizes and explained variance (JSON-able); per task ``<task>_classes_trained`` and its ``<task>_c``."""
        self._check_fitted()
        s = self.settings
        ratio = self.pca.explained_variance_ratio_
        out: dict[str, Any] = {"crop": s.crop, "size": s.size, "grey": s.grey, "whiten": s.whiten, "seed": s.seed,
                               "components": self.n_components, "features": int(self.pca.n_features_in_),
                               "train_images": int(self.pca.n_samples_), "explained_variance": float(ratio.sum()),
                               "explained_variance_first": [float(r) for r in ratio[:10]]}
        for task, probe in self.probes.items():
            out[f"{task}_classes_trained"] = int(len(probe.classifier.classes_)) if probe.classifier is not None else 1
            out[f"{task}_c"] = s.probe_c
        return out

    def _check_fitted(self) -> None:
        if self.pca is None:
            raise RuntimeError("PixelPCA is not fitted: call fit() first")


# ------------------------------------------------------------------------------------------- the baseline stages
def fit_predict(settings: PixelPCASettings, train_images: np.ndarray,
                train_labels: Mapping[str, tuple[np.ndarray, int]], test_images: np.ndarray
                ) -> tuple[PixelPCA, np.ndarray, dict[str, np.ndarray]]:
    """Fit the baseline on the training images (a probe per task of ``train_labels``: ``(y [N], n_classes)``,
    ``y < 0`` = unlabelled for that task) and score the test images.

    Returns:
        ``(model, embedding, logits)``: the fitted model, the test images' L2-normalised projections ``float32
        [N, k]`` (every verification/identification task's embedding) and per task of ``train_labels`` its
        decision values ``float32 [N, C]`` (:meth:`PixelPCA.scores`).

    Raises:
        ValueError: as :meth:`PixelPCA.fit`.
    """
    model = PixelPCA(settings).fit(train_images, dict(train_labels))
    z = model.project(test_images)
    embedding = _unit(z).astype(np.float32)
    return model, embedding, {t: model.scores(t, projections=z) for t in train_labels}


def baseline_record(m: Mapping[str, Any], criteria: Sequence[str], counts: Mapping[str, int], **identity: Any
                    ) -> dict[str, Any]:
    """The baseline's metrics file in the training stages' shape: ``{**identity, method, weighting: null,
    selection: "none", data, epochs: 0, last: M, best: {selected_on: "none", <criterion>: M...}}``; there is no
    training loop, so every "epoch" is 0 and every criterion's block is ``M``. ``identity``: the keys naming the
    run (``dataset``, and ``fold`` for a fold's run)."""
    row = {"epoch": 0, **m}
    best: dict[str, Any] = {"selected_on": "none"}
    for crit in criteria:
        best[crit] = dict(row)
    return {**identity, "method": METHOD, "weighting": None, "selection": "none", "data": dict(counts), "epochs": 0,
            "last": dict(row), "best": best}


def write_baseline_outputs(out: Path, metrics_file: Path, metrics: Mapping[str, Any],
                           scores: Mapping[str, np.ndarray], test_ids: Sequence[str], summary: Mapping[str, Any]
                           ) -> None:
    """Write a baseline run, all or nothing: ``out/scores.npz`` (each score as ``last_<key>``, and
    ``test_image_ids``), ``out/pca.json`` (``summary``) and the metrics file."""
    with atomic_files(metrics_file) as (tmp_metrics,), atomic_dir(out) as tmp:
        arrays = {f"last_{k}": np.asarray(v) for k, v in scores.items()}
        arrays["test_image_ids"] = np.asarray(test_ids, dtype=str)
        np.savez_compressed(tmp / "scores.npz", **arrays)
        write_json(dict(summary), tmp / "pca.json")
        write_json(dict(metrics), tmp_metrics)
