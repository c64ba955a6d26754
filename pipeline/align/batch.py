"""One batch of images → detections → chosen face → crops, and the alignment rows (no pandas, no I/O).

Conventions without a detector (``resize_only``, ``landmarks_box``; :mod:`pipeline.align.nodetect`) take the crop
box from the image or its landmarks instead and write the same rows: ``box`` = ``crop_box`` = that box,
``landmarks`` null (the column holds MTCNN's 5 points), ``score`` null (NaN), ``n_faces`` 1.

Shared by the align stage (:mod:`pipeline.align.run`) and the benchmark (``bench/align.py``), which must run on a
machine with only torch, torchvision, numpy, OpenCV and Pillow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pipeline.align.crop import CONVENTIONS, choose_face, crop_box, crop_face
from pipeline.align.detector import MTCNN, Faces
from pipeline.align.nodetect import LandmarkProblem, Landmarks, forced_box
from pipeline.faces.shards import ALIGNED

__all__ = ["ALIGNED", "align_forced", "align_images"]


class _Settings(Protocol):
    convention: str
    min_face: float
    # landmark_box: (width, height) factors, read with getattr by align_forced (landmarks_box only)


def _row(image_id: str, status: str, reason: str = "", n_faces: int = 0) -> dict:
    return {"image_id": image_id, "status": status, "reason": reason, "shard": -1, "offset": -1, "length": 0,
            "crop_size": 0, "box": None, "landmarks": None, "score": np.nan, "n_faces": n_faces, "crop_box": None}


def align_images(images: list[np.ndarray | str], ids: list[str], detector: MTCNN | None, settings: _Settings,
                 landmarks: Sequence[Landmarks | LandmarkProblem | None] | None = None,
                 ) -> tuple[list[dict], list[np.ndarray], list[Faces | None]]:
    """Detect, choose and crop one batch. ``images``: RGB arrays, or a reason string for unreadable files.

    A convention without a detector (``resize_only``, ``landmarks_box``) ignores ``detector`` (None is fine) and
    crops its forced box (:func:`align_forced`); ``landmarks_box`` needs ``landmarks`` (one per image) and
    ``settings.landmark_box``.

    Returns the alignment rows (without shard location), the crops of the aligned rows (in row order) and
    every image's detections (None when the detector did not run on it).
    """
    conv = CONVENTIONS[settings.convention]
    if not conv.detect:
        rows, crops = align_forced(images, ids, settings, landmarks)
        return rows, crops, [None] * len(images)
    if detector is None:
        raise ValueError(f"convention {settings.convention} needs the MTCNN detector")
    todo = [i for i, im in enumerate(images)
            if not isinstance(im, str) and min(im.shape[:2]) >= settings.min_face]
    found = detector.detect([images[i] for i in todo]) if todo else []
    faces_of: dict[int, Faces] = dict(zip(todo, found, strict=True))
    rows, crops, detections = [], [], []
    for i, (im, image_id) in enumerate(zip(images, ids, strict=True)):
        faces = faces_of.get(i)
        detections.append(faces)
        if isinstance(im, str):
            rows.append(_row(image_id, "unreadable", im))
            continue
        h, w = im.shape[:2]
        if faces is None:
            rows.append(_row(image_id, "too_small", f"{w}x{h} px is below min_face={settings.min_face:g}"))
            continue
        if len(faces) == 0:
            rows.append(_row(image_id, "no_face", "no face above the detector thresholds"))
            continue
        j = choose_face(faces, h, w)
        cb = crop_box(faces.boxes[j], conv.margin, h, w)
        try:
            crop = crop_face(im, cb, conv.size)
        except ValueError as exc:
            rows.append(_row(image_id, "no_face", f"face outside the image: {exc}", len(faces)))
            continue
        row = _row(image_id, ALIGNED, "", len(faces))
        row.update(crop_size=conv.size, box=faces.boxes[j].tolist(), landmarks=faces.landmarks[j].T.ravel().tolist(),
                   score=float(faces.scores[j]), crop_box=list(cb))
        rows.append(row)
        crops.append(crop)
    return rows, crops, detections


def align_forced(images: list[np.ndarray | str], ids: list[str], settings: _Settings,
                 landmarks: Sequence[Landmarks | LandmarkProblem | None] | None = None,
                 ) -> tuple[list[dict], list[np.ndarray]]:
    """Crop one batch under a convention without detector (:mod:`pipeline.align.nodetect`): the rows and crops of
    :func:`align_images`. ``min_face`` does not apply (there is no detector to be too small for)."""
    conv = CONVENTIONS[settings.convention]
    factors = getattr(settings, "landmark_box", None)
    if landmarks is None:
        landmarks = [None] * len(images)
    rows, crops = [], []
    for im, image_id, marks in zip(images, ids, landmarks, strict=True):
        if isinstance(im, str):
            rows.append(_row(image_id, "unreadable", im))
            continue
        h, w = im.shape[:2]
        box = forced_box(settings.convention, h, w, marks, factors)
        if isinstance(box, LandmarkProblem):
            rows.append(_row(image_id, box.status, box.reason))
            continue
        crop = crop_face(im, box, conv.size)  # forced boxes are never empty (landmark_box refuses zero area)
        row = _row(image_id, ALIGNED, "", 1)
        row.update(crop_size=conv.size, box=[float(v) for v in box], crop_box=list(box))
        rows.append(row)
        crops.append(crop)
    return rows, crops
