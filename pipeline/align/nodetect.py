"""Crop boxes without a detector: the conventions whose :class:`~pipeline.align.crop.Convention` has ``detect``
False (``datasets.<d>.align_convention``).

- ``resize_only`` (the original's CaVI, docs/method.md §5.7): the box is the whole image, ``(0, 0, width, height)``.
- ``landmarks_box`` (the original's WebCaricature, ``get_faces_webcari.py``, docs/method.md §5.8): the box around
  the image's 17 landmarks (:func:`pipeline.align.landmarks.landmark_box`, factors from
  ``align.landmark_box``), read from ``FacialPoints/<id>/<stem>.txt`` beside the image
  (:func:`pipeline.data.landmarks.landmark_path`).

:func:`pipeline.align.batch.align_images` crops the box and resizes it to the convention's size (182 px) exactly as
it does an MTCNN crop. The landmark file is read by the decoding workers (:func:`read_image_landmarks`); a problem
with it is a failed image, never an exception:

- ``missing_landmarks``: the landmark file does not exist;
- ``bad_landmarks``: it is unreadable, does not hold 17 ``x y`` lines of finite numbers, a point lies outside the
  image, or the box has zero area.

The reason names the landmark file (relative to the dataset root) and what is wrong with it, on one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.align.landmarks import landmark_box, landmark_path, read_landmarks

__all__ = ["BAD_LANDMARKS", "MISSING_LANDMARKS", "LandmarkProblem", "Landmarks", "forced_box",
           "read_image_landmarks"]

MISSING_LANDMARKS = "missing_landmarks"
BAD_LANDMARKS = "bad_landmarks"


class Landmarks(NamedTuple):
    """An image's landmarks and the file they come from (named in error messages)."""

    points: np.ndarray  # (17, 2) x, y
    source: str         # relative to the dataset root


@dataclass(frozen=True)
class LandmarkProblem:
    """Why an image has no usable landmarks: a failure ``status`` and a one-line ``reason``."""

    status: str
    reason: str


def read_image_landmarks(root: str | Path, image_path: str) -> Landmarks | LandmarkProblem:
    """The landmarks of the manifest image ``image_path`` (relative to ``root``), or what is wrong with them."""
    try:
        source = landmark_path(image_path)
    except ValueError as exc:
        return LandmarkProblem(BAD_LANDMARKS, str(exc))
    try:
        return Landmarks(read_landmarks(Path(root) / source, source), source)
    except FileNotFoundError:
        return LandmarkProblem(MISSING_LANDMARKS, f"{source}: landmark file not found")
    except ValueError as exc:
        return LandmarkProblem(BAD_LANDMARKS, str(exc))


def forced_box(convention: str, height: int, width: int, landmarks: Landmarks | LandmarkProblem | None = None,
               factors: tuple[float, float] | list[float] | None = None) -> tuple[int, int, int, int] | LandmarkProblem:
    """The crop box ``(x0, y0, x1, y1)`` of an ``height × width`` image under a convention without detector.

    Args:
        convention: ``resize_only`` or ``landmarks_box``.
        landmarks: ``landmarks_box``: what :func:`read_image_landmarks` returned for the image.
        factors: ``landmarks_box``: ``(width, height)`` factors of the box (``align.landmark_box``).

    Returns:
        The box, or the :class:`LandmarkProblem` that makes the image a failure.

    Raises:
        ValueError: an unknown convention, or ``landmarks_box`` without landmarks or factors (a caller's bug).
    """
    if convention == "resize_only":
        return 0, 0, int(width), int(height)
    if convention != "landmarks_box":
        raise ValueError(f"convention {convention!r} finds faces with the detector, not a forced box")
    if landmarks is None or factors is None:
        raise ValueError("landmarks_box needs every image's landmarks and the box factors (landmark_box)")
    if isinstance(landmarks, LandmarkProblem):
        return landmarks
    try:
        return landmark_box(landmarks.points, (width, height), float(factors[0]), float(factors[1]),
                            source=landmarks.source)
    except ValueError as exc:
        return LandmarkProblem(BAD_LANDMARKS, str(exc))
