"""A raw-pixel baseline: PCA of the aligned crops ("eigenfaces") for verification, a linear probe for expression.

The same images the network sees, without any learning beyond PCA and a logistic regression:

1. the evaluation crop of each stored face: the centred ``crop × crop`` window (the network's centre crop,
   :func:`pipeline.data.crops.center_crop`: top-left corner ``((S − crop) // 2, (S − crop) // 2)``);
2. resized to ``size × size`` (Pillow bilinear, antialiased when shrinking, as the alignment's resize), colour or
   grey (ITU-R BT.601 luma);
3. flattened and standardised per image as the network's input (``(x − mean) / max(std, 1/√n)``);
4. PCA (``components``, optionally whitened) fitted on the **training** images only; the L2-normalised
   projections are the identity embeddings;
5. a multinomial logistic regression on the training images' PCA projections predicts the expression; its
   decision values are the expression "logits".

Plain NumPy, Pillow and scikit-learn: no torch. Images are ``uint8 [N, 3, S, S]`` (the layout of
:class:`pipeline.training.data.LabelledImages`), as NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["PixelPCA", "PixelPCASettings", "center_crop", "pixel_features"]

#: BT.601 luma weights (Pillow's ``convert("L")``)
LUMA = np.array([0.299, 0.587, 0.114])
#: decision value given to expression classes absent from the training images (never the argmax)
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
        expression_c: inverse L2 regularisation strength of the logistic regression.
        seed: ``random_state`` of PCA and the logistic regression (both are deterministic with their solvers).
    """

    crop: int = 160
    size: int = 32
    grey: bool = False
    components: int = 64
    whiten: bool = False
    expression_c: float = 1.0
    seed: int = 0


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
    """PCA embedding + expression probe fitted on training images (see the module docstring).

    Attributes (after :meth:`fit`):
        pca: the fitted ``sklearn.decomposition.PCA``.
        classifier: the fitted ``LogisticRegression``, or None when the training images hold one class only.
        n_classes: number of expression classes (columns of :meth:`expression_scores`).
    """

    def __init__(self, settings: PixelPCASettings) -> None:
        self.settings = settings
        self.pca: Any = None
        self.classifier: Any = None
        self.n_classes = 0
        self._only_class: int | None = None

    def features(self, images: np.ndarray) -> np.ndarray:
        s = self.settings
        return pixel_features(images, crop=s.crop, size=s.size, grey=s.grey)

    def fit(self, images: np.ndarray, expression: np.ndarray, n_classes: int) -> PixelPCA:
        """Fit PCA on ``images`` (the training images) and the probe on their ``expression`` labels ``[N]``.

        Labels ``< 0`` (unlabelled) are left out of the probe, not of the PCA.

        Raises:
            ValueError: fewer than 2 training images, no labelled image, or a label ``>= n_classes``.
        """
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        s = self.settings
        x = self.features(images)
        if len(x) < 2:
            raise ValueError(f"PCA needs at least 2 training images, got {len(x)}")
        k = min(s.components, len(x) - 1, x.shape[1])
        self.pca = PCA(n_components=k, whiten=s.whiten, svd_solver="full", random_state=s.seed).fit(x)
        y = np.asarray(expression, dtype=np.int64)
        if len(y) != len(x):
            raise ValueError(f"{len(y)} expression labels for {len(x)} training images")
        if (y >= n_classes).any():
            raise ValueError(f"expression label {int(y.max())} out of range for {n_classes} classes")
        labelled = y >= 0
        if not labelled.any():
            raise ValueError("no labelled training image for the expression probe")
        self.n_classes = n_classes
        z = self.pca.transform(x[labelled])
        classes = np.unique(y[labelled])
        self.classifier, self._only_class = None, None
        if len(classes) == 1:
            self._only_class = int(classes[0])
        else:
            self.classifier = LogisticRegression(C=s.expression_c, max_iter=5000, random_state=s.seed)
            self.classifier.fit(z, y[labelled])
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

    def expression_scores(self, images: np.ndarray | None = None, *, projections: np.ndarray | None = None
                          ) -> np.ndarray:
        """Decision values ``float32 [N, n_classes]`` of the probe (argmax = predicted class).

        Classes absent from the training images get :data:`ABSENT_CLASS`.
        """
        self._check_fitted()
        z = self.project(images) if projections is None else projections
        out = np.full((len(z), self.n_classes), ABSENT_CLASS, dtype=np.float64)
        if self.classifier is None:
            out[:, self._only_class] = 0.0
            return out.astype(np.float32)
        d = self.classifier.decision_function(z)
        classes = self.classifier.classes_
        if d.ndim == 1:  # two classes: sklearn returns the score of classes_[1]
            d = np.stack([-d, d], axis=1)
        out[:, classes] = d
        return out.astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """Fitted sizes and explained variance (JSON-able)."""
        self._check_fitted()
        ratio = self.pca.explained_variance_ratio_
        return {"components": self.n_components, "features": int(self.pca.n_features_in_),
                "train_images": int(self.pca.n_samples_), "explained_variance": float(ratio.sum()),
                "explained_variance_first": [float(r) for r in ratio[:10]],
                "expression_classes_trained": (int(len(self.classifier.classes_)) if self.classifier is not None
                                               else 1),
                **{k: v for k, v in vars(self.settings).items()}}

    def _check_fitted(self) -> None:
        if self.pca is None:
            raise RuntimeError("PixelPCA is not fitted: call fit() first")
