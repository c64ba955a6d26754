"""Batched MTCNN face detection (P-Net → R-Net → O-Net) in PyTorch, on CPU or GPU.

This is facenet's ``align/detect_face.py`` (the code the original project modified, docs/method.md §7), reorganised so
that a *batch* of images goes through every stage at once:

- **P-Net**: images are bucketed by size (every image in a bucket has the same pyramid, so a pyramid level is
  one batched forward pass). Buckets rather than padding: padding to a common size would change each image's
  level sizes (``ceil(h·scale)``) and so the detections; with buckets a batch gives exactly the detections of
  single images. A dataset of one image size (LFW, CASIA-WebFace, Oulu-CASIA, the demo) is one bucket.
- per-scale NMS (0.5, Union) and cross-scale NMS (0.7, Union) run for all images with
  :func:`torchvision.ops.batched_nms` (one group per image and scale / per image);
- **R-Net / O-Net crops** for every candidate of every image come out of one zero-padded canvas
  (uint8, ``N×(Hmax+1)×(Wmax+1)×3``) in one call: an index gather for ``nearest``, :func:`torchvision.ops.roi_align`
  for ``bilinear`` (one sample per output pixel), and exact adaptive average pooling through a summed-area table
  for ``area`` (what ``F.interpolate(mode="area")`` gives on each zero-padded crop). Out-of-image parts of a box
  are black, as the original's zero padding.
- the final O-Net NMS (0.7, **Min**) runs per image on the few remaining boxes.

Box conventions follow the original exactly: P-Net cells map to ``fix((2·cell + 1)/scale)`` …
``fix((2·cell + 12)/scale)``, NMS areas count ``+1`` pixels, boxes are squared (``rerec``) and truncated
(``fix``) between stages, and crops take the 1-based inclusive pixel range ``[x1, x2]`` (facenet's ``pad``).

Resampling (pyramid levels and crops) is a parameter: ``nearest`` (the original project's modified
``imresample``), ``area`` (facenet / facenet-pytorch: adaptive average pooling for levels) or ``bilinear``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, roi_align

from pipeline.align.nets import load_nets
from pipeline.align.weights import load_weights

Resample = Literal["nearest", "area", "bilinear"]

__all__ = ["Faces", "MTCNN", "Resample", "pyramid_scales"]


@dataclass
class Faces:
    """The faces found in one image, sorted by score (highest first), in source pixel coordinates.

    Attributes:
        boxes: n×4 float ``x1, y1, x2, y2``.
        scores: n O-Net face probabilities.
        landmarks: n×5×2 ``(x, y)`` of left eye, right eye, nose, left and right mouth corners.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Faces:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))

    def to_list(self, decimals: int = 3) -> list[dict]:
        """JSON-able ``[{"box": [x1, y1, x2, y2], "score": s, "landmarks": [[x, y] × 5]}, ...]``."""
        return [{"box": [round(float(v), decimals) for v in b], "score": round(float(s), 6),
                 "landmarks": [[round(float(x), decimals), round(float(y), decimals)] for x, y in lm]}
                for b, s, lm in zip(self.boxes, self.scores, self.landmarks, strict=True)]


def pyramid_scales(height: int, width: int, min_face: float, factor: float) -> list[float]:
    """Scales ``12/min_face · factor^k`` while the scaled shorter side stays ≥ 12 (empty for tiny images)."""
    m = 12.0 / min_face
    minl = min(height, width) * m
    scales: list[float] = []
    k = 0
    while minl >= 12:
        scales.append(m * factor ** k)
        minl *= factor
        k += 1
    return scales


def _resize(x: torch.Tensor, size: tuple[int, int], mode: Resample) -> torch.Tensor:
    """N×3×H×W float → N×3×h×w."""
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode=mode)


def _rerec(b: torch.Tensor) -> torch.Tensor:
    """Square the boxes around their centres (n×4 → n×4), as facenet's ``rerec``."""
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = torch.maximum(w, h)
    x1 = b[:, 0] + w * 0.5 - side * 0.5
    y1 = b[:, 1] + h * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], 1)


def _bbreg(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply R-/O-Net box regression (facenet's ``bbreg``: widths count +1)."""
    w = (b[:, 2] - b[:, 0] + 1)[:, None]
    h = (b[:, 3] - b[:, 1] + 1)[:, None]
    return b + reg * torch.cat([w, h, w, h], 1)


def _nms_union(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, thr: float) -> torch.Tensor:
    """Indices kept by Union-NMS per group, with the original's ``+1`` pixel areas."""
    plus1 = boxes.double().clone()
    plus1[:, 2:] += 1
    # float64: batched_nms separates groups by offsetting boxes by group × (max coordinate + 1), which can pass
    # 2^24 (float32's exact range) for large batches with many pyramid levels
    return batched_nms(plus1, scores.double(), groups, thr)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, thr: float) -> np.ndarray:
    """facenet's greedy NMS with the 'Min' overlap (intersection / smaller area), for one image's boxes."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = iw * ih / np.minimum(area[i], area[rest])
        order = rest[overlap <= thr]
    return np.asarray(keep, dtype=np.int64)


class MTCNN:
    """Batched MTCNN. ``MTCNN(device="cuda").detect([rgb, ...])`` → one :class:`Faces` per image.

    Args:
        weights: ``None`` (the ``mtcnn`` package's files), a folder of ``*.lz4`` or an exported ``.npz``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or ``"auto"`` (CUDA when available).
        min_face: minimum face size in pixels (20).
        thresholds: P-, R-, O-Net score thresholds (0.6, 0.7, 0.7).
        factor: pyramid scale factor (0.709).
        nms: IoU thresholds: P-Net per scale, P-Net across scales, R-Net (Union), O-Net (Min).
        resample: resampling of pyramid levels and R-/O-Net crops.
        max_side: images with a longer side are shrunk (INTER_AREA) to it before detection; results are mapped
            back to source pixels. Bounds the memory an 8k photo takes.
        pnet_pixels: maximum pixels of one P-Net forward pass (larger buckets are split).
        stage_batch: maximum crops per R-/O-Net forward pass.
        canvas_pixels: maximum pixels of one padded canvas (images × largest height × largest width). A batch of
            very different sizes is split into groups of similar size (sorted by area) that each fit; results do
            not depend on the grouping. ``area`` crops need 24 bytes per canvas pixel (a float64 summed-area table),
            the other modes 3 (``bilinear``: +12).

    Raises:
        ValueError: a setting out of range (min_face < 1, thresholds or NMS outside (0, 1], factor outside (0, 1)).
    """

    def __init__(
        self,
        weights: str | Path | dict | None = None,
        *,
        device: str | torch.device = "cpu",
        min_face: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        nms: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
        resample: Resample = "nearest",
        max_side: int = 4096,
        pnet_pixels: int = 1 << 24,
        stage_batch: int = 8192,
        canvas_pixels: int = 1 << 26,
    ) -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if resample not in ("nearest", "area", "bilinear"):
            raise ValueError(f"resample must be nearest, area or bilinear, not {resample!r}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), not {factor}")
        if not min_face >= 1:
            raise ValueError(f"min_face must be at least 1 pixel, not {min_face}")
        if len(thresholds) != 3 or not all(0 < t < 1 for t in thresholds):
            raise ValueError(f"thresholds must be three values in (0, 1), not {tuple(thresholds)}")
        if len(nms) != 4 or not all(0 < t <= 1 for t in nms):
            raise ValueError(f"nms must be four values in (0, 1], not {tuple(nms)}")
        self.min_face, self.factor, self.resample = float(min_face), float(factor), resample
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms = tuple(float(t) for t in nms)
        self.max_side, self.pnet_pixels, self.stage_batch = int(max_side), int(pnet_pixels), int(stage_batch)
        self.canvas_pixels = int(canvas_pixels) // (8 if resample == "area" else 1)
        w = weights if isinstance(weights, dict) else load_weights(weights)
        # channels-last (NHWC) convolutions and pooling: about 1.7× faster than NCHW with oneDNN on CPU
        self.pnet, self.rnet, self.onet = (n.to(self.device, memory_format=torch.channels_last)
                                           for n in load_nets(w))

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[Faces]:
        """Detect faces in a batch of H×W×3 uint8 RGB images (any sizes). Returns one :class:`Faces` each."""
        if not len(images):
            return []
        arrays, shrink = [], []
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"expected H×W×3 uint8 RGB images, got {im.dtype} {im.shape}")
            f = min(1.0, self.max_side / max(im.shape[:2]))
            if f < 1.0:
                size = (max(1, round(im.shape[1] * f)), max(1, round(im.shape[0] * f)))
                im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
            arrays.append(im)
            shrink.append(f)
        faces: list[Faces] = [Faces.empty()] * len(arrays)
        for group in self._groups([a.shape[:2] for a in arrays]):
            for i, found in zip(group, self._detect_group([arrays[i] for i in group]), strict=True):
                f = shrink[i]
                faces[i] = found if f == 1.0 else Faces(found.boxes / f, found.scores, found.landmarks / f)
        return faces

    def _groups(self, sizes: list[tuple[int, int]]) -> list[list[int]]:
        """Split a batch into groups whose padded canvas stays within ``canvas_pixels`` (one group when it fits)."""
        hm, wm = max(s[0] for s in sizes), max(s[1] for s in sizes)
        if len(sizes) * (hm + 1) * (wm + 1) <= self.canvas_pixels:
            return [list(range(len(sizes)))]
        groups: list[list[int]] = []
        current: list[int] = []
        gh = gw = 0
        for i in sorted(range(len(sizes)), key=lambda i: (sizes[i][0] * sizes[i][1], sizes[i])):
            h, w = max(gh, sizes[i][0]), max(gw, sizes[i][1])
            if current and (len(current) + 1) * (h + 1) * (w + 1) > self.canvas_pixels:
                groups.append(current)
                current, h, w = [], sizes[i][0], sizes[i][1]
            current.append(i)
            gh, gw = h, w
        groups.append(current)
        return groups

    def _detect_group(self, arrays: list[np.ndarray]) -> list[Faces]:
        canvas, sizes = self._canvas(arrays)
        boxes, idx = self._stage1(canvas, sizes)
        source = self._crop_source(canvas)
        boxes, idx = self._stage2(canvas, boxes, idx, source)
        return self._stage3(canvas, boxes, idx, len(arrays), source)

    # ------------------------------------------------------------------ stages
    def _canvas(self, arrays: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """All images, top-left aligned and zero-padded, as one N×(Hmax+1)×(Wmax+1)×3 uint8 tensor on the device.

        uint8 and channels-last: a quarter of the memory (and of the host→GPU transfer) of a float canvas, and
        nearest-neighbour pyramid levels and crops read it directly.
        """
        sizes = [a.shape[:2] for a in arrays]
        hm, wm = max(s[0] for s in sizes), max(s[1] for s in sizes)
        # one extra black row and column: every image then has black beyond its bottom/right edge, whatever else
        # is in the batch (bilinear crops sample there), so a batch gives the same detections as single images
        host = np.zeros((len(arrays), hm + 1, wm + 1, 3), np.uint8)
        for i, a in enumerate(arrays):
            host[i, : a.shape[0], : a.shape[1]] = a
        return torch.from_numpy(host).to(self.device, non_blocking=True), sizes

    def _stage1(self, canvas: torch.Tensor, sizes: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net over every pyramid level of every size bucket → squared, truncated candidate boxes (n×4), image
        index (n)."""
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(sizes):
            buckets[s].append(i)
        n_images = len(sizes)  # NMS group of a candidate: level · n_images + image
        all_boxes, all_scores, all_reg, all_group = [], [], [], []
        for (h, w), members in buckets.items():
            members_t = torch.tensor(members, device=self.device)
            if members == list(range(members[0], members[-1] + 1)):  # a view, no copy (the usual case)
                images = canvas[members[0]:members[-1] + 1, :h, :w]
            else:
                images = canvas[members_t, :h, :w]
            images = images.permute(0, 3, 1, 2)  # N×3×h×w (channels-last memory)
            if self.resample != "nearest" or images.device.type != "cpu":
                images = images.float()
            for si, scale in enumerate(pyramid_scales(h, w, self.min_face, self.factor)):
                hs, ws = int(math.ceil(h * scale)), int(math.ceil(w * scale))
                step = max(1, self.pnet_pixels // (hs * ws))
                for start in range(0, len(members), step):
                    chunk = members_t[start:start + step]
                    level = _resize(images[start:start + step], (hs, ws), self.resample).float()
                    reg, prob = self.pnet(((level - 127.5) * 0.0078125).contiguous(
                        memory_format=torch.channels_last))
                    b, r, c = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
                    if not len(b):
                        continue
                    cell = torch.stack([c, r], 1).double()
                    q1 = torch.trunc((2 * cell + 1) / scale)
                    q2 = torch.trunc((2 * cell + 12) / scale)
                    all_boxes.append(torch.cat([q1, q2], 1))
                    all_scores.append(prob[b, r, c].double())
                    all_reg.append(reg.permute(0, 2, 3, 1)[b, r, c].double())
                    all_group.append(si * n_images + chunk[b])
        if not all_boxes:
            return torch.zeros((0, 4), dtype=torch.float64, device=self.device), torch.zeros(
                0, dtype=torch.long, device=self.device)
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        reg, group = torch.cat(all_reg), torch.cat(all_group)
        keep = _nms_union(boxes, scores, group, self.nms[0])
        boxes, scores, reg, img = boxes[keep], scores[keep], reg[keep], group[keep] % n_images
        keep = _nms_union(boxes, scores, img, self.nms[1])
        boxes, reg, img = boxes[keep], reg[keep], img[keep]
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        boxes = torch.trunc(_rerec(boxes + reg * wh))
        return boxes, img

    def _crops(self, canvas: torch.Tensor, boxes: torch.Tensor, img: torch.Tensor, size: int,
               source: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised n×3×size×size crops of the 1-based inclusive boxes (black outside the image).

        ``nearest`` gathers pixel ``floor(i·side/size)`` (OpenCV/torch nearest) from the uint8 canvas; ``area``
        averages each output pixel's bin ``[floor(i·side/size), ceil((i+1)·side/size))`` exactly like
        ``adaptive_avg_pool2d`` on the zero-padded crop, through a summed-area table (``source``:
        N×(H+1)×(W+1)×3 float64); ``bilinear`` samples bin centres with :func:`torchvision.ops.roi_align` on
        ``source`` (N×3×H×W float).
        """
        x0, y0 = boxes[:, 0] - 1, boxes[:, 1] - 1
        tw, th = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
        hm, wm = canvas.shape[1], canvas.shape[2]
        i = torch.arange(size, device=self.device, dtype=torch.float64)
        out = []
        for s in range(0, len(boxes), self.stage_batch):
            sl = slice(s, s + self.stage_batch)
            if self.resample == "bilinear":
                assert source is not None
                rois = torch.stack([img[sl].double(), x0[sl], y0[sl], x0[sl] + tw[sl], y0[sl] + th[sl]], 1)
                patch = roi_align(source, rois.float(), output_size=size, spatial_scale=1.0, sampling_ratio=1,
                                  aligned=True)
            elif self.resample == "nearest":
                rows = (y0[sl, None] + torch.floor(i * th[sl, None] / size)).long()
                cols = (x0[sl, None] + torch.floor(i * tw[sl, None] / size)).long()
                ok = ((rows >= 0) & (rows < hm))[:, :, None] & ((cols >= 0) & (cols < wm))[:, None, :]
                patch = canvas[img[sl, None, None], rows.clamp(0, hm - 1)[:, :, None],
                               cols.clamp(0, wm - 1)[:, None, :]]  # n×size×size×3 uint8
                patch = (patch * ok[..., None]).permute(0, 3, 1, 2).float()
            else:
                assert source is not None
                r0 = y0[sl, None] + torch.floor(i * th[sl, None] / size)
                r1 = y0[sl, None] + torch.ceil((i + 1) * th[sl, None] / size)
                c0 = x0[sl, None] + torch.floor(i * tw[sl, None] / size)
                c1 = x0[sl, None] + torch.ceil((i + 1) * tw[sl, None] / size)
                area = (r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]
                r0, r1 = r0.clamp(0, hm).long()[:, :, None], r1.clamp(0, hm).long()[:, :, None]
                c0, c1 = c0.clamp(0, wm).long()[:, None, :], c1.clamp(0, wm).long()[:, None, :]
                b = img[sl, None, None]
                total = (source[b, r1, c1] - source[b, r0, c1] - source[b, r1, c0] + source[b, r0, c0])
                patch = (total / area[..., None]).float().permute(0, 3, 1, 2)
            out.append(((patch - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last))
        return torch.cat(out) if out else torch.zeros((0, 3, size, size), device=self.device)

    def _crop_source(self, canvas: torch.Tensor) -> torch.Tensor | None:
        """What ``area`` (summed-area table, N×(H+1)×(W+1)×3 float64) or ``bilinear`` (N×3×H×W float) crops read;
        None for ``nearest``, which reads the uint8 canvas."""
        if self.resample == "area":
            return F.pad(canvas.double().cumsum(1).cumsum(2), (0, 0, 1, 0, 1, 0))
        if self.resample == "bilinear":
            return canvas.permute(0, 3, 1, 2).float()
        return None

    def _valid(self, boxes: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ok = (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
        return boxes[ok], img[ok]

    def _stage2(self, canvas: torch.Tensor, boxes: torch.Tensor, img: torch.Tensor,
                source: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """R-Net on 24×24 crops → refined, squared boxes (n×4) and image index (n)."""
        boxes, img = self._valid(boxes, img)
        if not len(boxes):
            return boxes, img
        crops = self._crops(canvas, boxes, img, 24, source)
        regs, probs = zip(*(self.rnet(crops[s:s + self.stage_batch])
                            for s in range(0, len(crops), self.stage_batch)), strict=True)
        reg, prob = torch.cat(regs).double(), torch.cat(probs).double()
        ok = prob > self.thresholds[1]
        boxes, prob, reg, img = boxes[ok], prob[ok], reg[ok], img[ok]
        keep = _nms_union(boxes, prob, img, self.nms[2])
        return _rerec(_bbreg(boxes[keep], reg[keep])), img[keep]

    def _stage3(self, canvas: torch.Tensor, boxes: torch.Tensor, img: torch.Tensor, n: int,
                source: torch.Tensor | None = None) -> list[Faces]:
        """O-Net on 48×48 crops → final boxes, scores and landmarks, NMS (Min) per image."""
        boxes = torch.trunc(boxes)
        boxes, img = self._valid(boxes, img)
        faces = [Faces.empty() for _ in range(n)]
        if not len(boxes):
            return faces
        crops = self._crops(canvas, boxes, img, 48, source)
        outs = [self.onet(crops[s:s + self.stage_batch]) for s in range(0, len(crops), self.stage_batch)]
        reg, lm, prob = (torch.cat([o[k] for o in outs]).double() for k in range(3))
        ok = prob > self.thresholds[2]
        boxes, reg, lm, prob, img = boxes[ok], reg[ok], lm[ok], prob[ok], img[ok]
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        px = w * lm[:, :5] + boxes[:, :1] - 1
        py = h * lm[:, 5:] + boxes[:, 1:2] - 1
        boxes = _bbreg(boxes, reg)
        b_np, s_np = boxes.cpu().numpy(), prob.cpu().numpy()
        lm_np = torch.stack([px, py], 2).cpu().numpy()
        i_np = img.cpu().numpy()
        for i in np.unique(i_np):
            sel = np.flatnonzero(i_np == i)
            keep = sel[_nms_min(b_np[sel], s_np[sel], self.nms[3])]
            keep = keep[np.argsort(-s_np[keep], kind="stable")]
            faces[i] = Faces(b_np[keep].astype(np.float32), s_np[keep].astype(np.float32),
                             lm_np[keep].astype(np.float32))
        return faces
