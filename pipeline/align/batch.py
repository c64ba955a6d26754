"""One batch of images → detections → chosen face → crops, and the alignment rows (no pandas, no I/O).

Shared by the align stage (:mod:`pipeline.align.run`) and the benchmark (``bench/align.py``), which must run on a
machine with only torch, torchvision, numpy, OpenCV and Pillow.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pipeline.align.crop import CONVENTIONS, choose_face, crop_box, crop_face
from pipeline.align.detector import MTCNN, Faces
from pipeline.faces.shards import ALIGNED

__all__ = ["ALIGNED", "align_images"]


class _Settings(Protocol):
    convention: str
    min_face: float


def _row(image_id: str, status: str, reason: str = "", n_faces: int = 0) -> dict:
    return {"image_id": image_id, "status": status, "reason": reason, "shard": -1, "offset": -1, "length": 0,
            "crop_size": 0, "box": None, "landmarks": None, "score": np.nan, "n_faces": n_faces, "crop_box": None}


def align_images(images: list[np.ndarray | str], ids: list[str], detector: MTCNN, settings: _Settings
                 ) -> tuple[list[dict], list[np.ndarray], list[Faces | None]]:
    """Detect, choose and crop one batch. ``images``: RGB arrays, or a reason string for unreadable files.

    Returns the alignment rows (without shard location), the crops of the aligned rows (in row order) and
    every image's detections (None when the detector did not run on it).
    """
    conv = CONVENTIONS[settings.convention]
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


