"""Face choice and crop of the original alignment script (facenet's ``align_dataset_mtcnn.py``, docs/method.md §7).

- Several faces: keep the one maximising ``area − 2·‖box centre − image centre‖²``.
- Crop: the box ± margin/2 on each side in source pixels, truncated to integers and clipped to the image, then
  resized to ``size × size`` with bilinear filtering (``scipy.misc.imresize(..., 'bilinear')`` = Pillow's
  bilinear resize, which antialiases when shrinking; we call Pillow directly).

Conventions (``datasets.<d>.align_convention``):

- ``paper_182_44``: align at 182 px with margin 44; training random-crops 160, evaluation centre-crops 160
  (the original's ``*_mtcnnpy_182_160`` folders; docs/method.md §9.31).
- ``facenet_160_32``: facenet's LFW convention, 160 px with margin 32, used as is.

Without a detector (:mod:`pipeline.align.nodetect`; ``detect`` is False, ``margin`` unused), stored at 182 px like
``paper_182_44`` so that training and evaluation crop 160 of them as for every other dataset:

- ``resize_only``: the whole image resized (the original's CaVI, which resized straight to 160; docs/method.md §5.7);
- ``landmarks_box``: the box around WebCaricature's 17 landmarks (``get_faces_webcari.py``, docs/method.md §5.8),
  resized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.align.detector import Faces

__all__ = ["CONVENTIONS", "Convention", "choose_face", "crop_box", "crop_face"]


@dataclass(frozen=True)
class Convention:
    """Alignment size and margin (source pixels), the size networks see after cropping, and whether MTCNN finds
    the face (False: the crop box comes from the image or its landmarks, :mod:`pipeline.align.nodetect`)."""

    size: int
    margin: int
    train_size: int
    detect: bool = True


CONVENTIONS: dict[str, Convention] = {
    "paper_182_44": Convention(size=182, margin=44, train_size=160),
    "facenet_160_32": Convention(size=160, margin=32, train_size=160),
    "resize_only": Convention(size=182, margin=0, train_size=160, detect=False),
    "landmarks_box": Convention(size=182, margin=0, train_size=160, detect=False),
}


def choose_face(faces: Faces, height: int, width: int) -> int:
    """Index of the face the original keeps: the largest and most central (``area − 2·offset²``)."""
    if len(faces) == 0:
        raise ValueError("no face to choose from")
    b = faces.boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    dx = (b[:, 0] + b[:, 2]) / 2 - width / 2
    dy = (b[:, 1] + b[:, 3]) / 2 - height / 2
    return int(np.argmax(area - 2.0 * (dx * dx + dy * dy)))


def crop_box(box: np.ndarray, margin: float, height: int, width: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)`` integer crop in source pixels: box ± margin/2, clipped (the original's int32 cast)."""
    x1 = int(np.int32(max(box[0] - margin / 2, 0)))
    y1 = int(np.int32(max(box[1] - margin / 2, 0)))
    x2 = int(np.int32(min(box[2] + margin / 2, width)))
    y2 = int(np.int32(min(box[3] + margin / 2, height)))
    return x1, y1, x2, y2


def crop_face(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """The ``size × size × 3`` uint8 crop of ``image`` (H×W×3 RGB) inside ``box`` (bilinear, Pillow)."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty crop box {box}")
    patch = Image.fromarray(np.ascontiguousarray(image[y1:y2, x1:x2]))
    return np.asarray(patch.resize((size, size), resample=Image.Resampling.BILINEAR))
