"""Decode any image a dataset may hold into H×W×3 uint8 RGB for the detector.

Handled: grayscale (replicated to 3 channels), RGBA / grayscale+alpha (alpha dropped), 16-bit (scaled to 8 bit),
palette PNG (expanded by OpenCV). EXIF orientation is ignored, as in the original (``scipy.misc.imread``), except
with ``exif_orientation=True``: then the bytes are decoded as ``cv2.imread`` reads a file (orientation applied,
always 8-bit colour), which is how the original's WebCaricature crop (``get_faces_webcari.py``) read its images.
Problems (empty file, undecodable bytes, unsupported pixel format) raise :class:`ImageProblem` with a short reason.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import ImageProblem

__all__ = ["ImageProblem", "decode_rgb", "read_image_bytes"]


def decode_rgb(data: bytes, *, exif_orientation: bool = False) -> np.ndarray:
    """Encoded image bytes → H×W×3 uint8 RGB; ``exif_orientation``: as ``cv2.imread`` (module docstring)."""
    if not data:
        raise ImageProblem("empty file")
    flags = cv2.IMREAD_COLOR if exif_orientation else cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # e.g. a header declaring more pixels than OpenCV accepts
        detail = str(exc).strip().splitlines()[-1].split("error: ")[-1]
        raise ImageProblem(f"not decodable: {detail[:120]}") from exc
    if img is None or img.size == 0:
        raise ImageProblem("not a decodable image")
    try:
        return _to_rgb(img)
    except cv2.error as exc:
        raise ImageProblem(f"unsupported image layout {img.dtype} {img.shape}") from exc


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """What ``cv2.imdecode(IMREAD_UNCHANGED)`` returned → H×W×3 uint8 RGB."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif img.dtype != np.uint8:
        if not np.issubdtype(img.dtype, np.floating):
            raise ImageProblem(f"unsupported pixel type {img.dtype}")
        img = np.clip(np.nan_to_num(img) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # grayscale, grayscale + alpha
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageProblem(f"unsupported channel count {channels}")


def read_image_bytes(root: Path, path: str) -> bytes:
    """The bytes of a manifest image: ``root/path``, or a member ``shard.tar::MID/x.jpg`` of MS-Celeb shards."""
    if "::" in path:
        from pipeline.data.member_shards import open_shard_member

        try:
            return open_shard_member(root, path)
        except (OSError, KeyError, ValueError) as exc:
            raise ImageProblem(f"unreadable: {exc}") from exc
    try:
        return (root / path).read_bytes()
    except OSError as exc:
        raise ImageProblem(f"unreadable: {exc.strerror or exc}") from exc
