"""The face box the original cuts around WebCaricature's landmarks (``get_faces_webcari.py``, docs/method.md §5.8).

The landmark files are read by :mod:`pipeline.data.landmarks` (CRLF and LF alike; re-exported here). The file of
a manifest image is :func:`pipeline.data.landmarks.landmark_path` of its path (``OriginalImages/<id>/C00001.jpg`` →
``FacialPoints/<id>/C00001.txt``), the rule of the reader's ``landmark_path``
(:mod:`pipeline.data.readers.webcaricature`), repeated here so that the align stage does not import every reader.

The box (:func:`landmark_box`), as the original computes it:

1. each coordinate truncated to an integer (``int(float(v))``);
2. centre ``(⌊(x_min + x_max) / 2⌋, ⌊(y_min + y_max) / 2⌋)`` of the landmarks' bounding box;
3. half-sizes ``int(1.5 · (x_max − x_min) / 2)`` and ``int(1.2 · (y_max − y_min) / 2)`` (truncated), so the box is
   ``2 × half`` wide, one pixel narrower than ``1.5 × width`` when that is odd;
4. ``(centre − half, centre + half)`` clipped to ``[0, width] × [0, height]``: a half-open pixel range, the crop is
   ``image[y0:y1, x0:x1]``.

The original does not check its input; here a point outside the image (``0 ≤ x ≤ width``, ``0 ≤ y ≤ height``) or a
box of zero area is a :class:`ValueError` naming the file, for the caller to count as a skipped image. The original
reads the image with
``cv2.imread``, which applies the EXIF orientation: ``image_size`` must be the size of the image as oriented the
same way the landmarks were.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.landmarks import (
    IMAGES_DIR,
    LANDMARKS_DIR,
    N_LANDMARKS,
    landmark_path,
    parse_landmarks,
    read_landmarks,
)

__all__ = ["HEIGHT_FACTOR", "IMAGES_DIR", "LANDMARKS_DIR", "N_LANDMARKS", "WIDTH_FACTOR", "landmark_box",
           "landmark_path", "parse_landmarks", "read_landmarks"]

#: ``bb_scale_horizontal`` and ``bb_scale_vertical`` of ``get_faces_webcari.py``
WIDTH_FACTOR = 1.5
HEIGHT_FACTOR = 1.2
def landmark_box(points: np.ndarray, image_size: tuple[int, int], width_factor: float = WIDTH_FACTOR,
                 height_factor: float = HEIGHT_FACTOR, *, source: str = "<landmarks>") -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the original's face box around ``points`` (rule in the module docstring).

    Args:
        points: ``(n, 2)`` ``x, y`` pixel coordinates.
        image_size: ``(width, height)`` of the image (PIL's order).
        width_factor, height_factor: box size over the landmarks' width and height.
        source: named in error messages.

    Raises:
        ValueError: no points, a point outside the image, or a box of zero area after clipping.
    """
    width, height = int(image_size[0]), int(image_size[1])
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"{source}: expected an (n, 2) array of points, got shape {pts.shape}")
    outside = ~((pts[:, 0] >= 0) & (pts[:, 0] <= width) & (pts[:, 1] >= 0) & (pts[:, 1] <= height))
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(f"{source}: landmark {i + 1} ({pts[i, 0]:g}, {pts[i, 1]:g}) is outside the "
                         f"{width}×{height} image")
    xs, ys = np.trunc(pts[:, 0]).astype(np.int64), np.trunc(pts[:, 1]).astype(np.int64)
    x_min, x_max, y_min, y_max = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    x_c, y_c = (x_min + x_max) // 2, (y_min + y_max) // 2
    half_w = int((x_max - x_min) * width_factor / 2)
    half_h = int((y_max - y_min) * height_factor / 2)
    box = (max(0, x_c - half_w), max(0, y_c - half_h), min(width, x_c + half_w), min(height, y_c + half_h))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"{source}: the landmark box {box} has zero area")
    return box
