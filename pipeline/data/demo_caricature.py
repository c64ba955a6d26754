"""Embedded synthetic caricature datasets (``source: {kind: demo_caricature}``), laid out like CaVI or WebCaricature.

The licensed caricature datasets (CaVI, WebCaricature) cannot be downloaded by a script, so the ``download`` stage
*generates* stand-ins with the demo face renderer (:mod:`pipeline.data.demo`). Each holds photos and caricatures of
its own identities (``first_identity .. first_identity + n_identities - 1``, the identity factors of
:func:`pipeline.data.demo.identity_params` with the demo seed) and the dataset's protocol files, so that the
readers (``cavi``, ``webcaricature``) and the protocol parsers (:mod:`pipeline.folds.cari`) run on the demo exactly
as on the real data.

Images
------
* **Photos** (:func:`render_photo`): the demo's CASIA-style photo of the person: random expression, cluttered
  background, pose, camera, lighting and noise, the session's hair look (:func:`pipeline.data.demo._scene`).
* **Caricatures** (:func:`render_caricature`): the same person drawn by one of ``artists`` artists
  (:func:`artist_style`):

  - the identity factors (face aspect, jaw, eye spacing/size/height, nose, mouth, lips, brows, hair volume and
    line, ears) are pushed away from the population mean by a factor ``f`` drawn per image in ``exaggeration``
    (:func:`exaggerate`: ``mean + f · (value − mean)``, clipped so that the face stays a face); the artist also
    enlarges the eyes, nose and mouth by its own factors;
  - the artist's distortion: a horizontal/vertical stretch and a shear of the head, a larger head in the frame;
  - flat colours: the face's shading divided out, the artist's palette shift (hue, saturation, value), a median
    filter and a posterisation (a few brightness levels, coarse saturation and hue steps);
  - ink outlines: the edges of the flat image, thickened to the artist's line weight, in the artist's ink;
  - a flat "paper" background, no camera noise. The hair style is the person's own (artists draw the signature
    hair), where a photo redraws it per session.

  Face shape, features, skin and hair colour survive, so a caricature is recognisable, but colour, proportions
  and texture differ from the photos: matching across the two is meant to be clearly harder than between photos
  (judged by eye; not yet measured with a network).

Every image is deterministic: its random numbers come from ``numpy`` Generators seeded from ``(seed, stream,
identity, index)``; an artist's style from ``(seed, stream, artist)``; the protocol files from ``(seed, stream,
first_identity, n_identities, …)``. The files are byte-identical across runs and independent of ``workers``.

Layouts (``out`` is the stage's output folder ``data/raw/<name>``)
--------------------------------------------------------------------
``cavi`` (:mod:`pipeline.data.readers.cavi`)::

    <out>/CaVI_Dataset/Caricature/Person_5000/Person_5000_c_0.jpg
    <out>/CaVI_Dataset/Real/Person_5000/Person_5000_r_0.jpg
    <out>/CaVI_Dataset/Real/person_5010/person_5010_r_0.jpg        one identity spelt in lower case in Real/
    <out>/train-test-files/testing_1.txt                           CaVINet's pair file (CRLF)

  The pair file holds ``pairs × downsample`` lines ``id_c Caricature/<id>\\<file> id_r Real/<id>\\<file> label``;
  lines ``0, d, 2d, …`` (what the protocol keeps) are ``pairs`` planned pairs, half same, half different, that
  cover every identity and use only a small test subset of each identity's images (fewer than half of its
  caricatures and of its photos), so that CaVI's closed-set training set (every other image of the kept pairs'
  identities) keeps most images of every identity. The other lines reuse any images. The pair file spells the
  lower-cased identity as its Caricature folder does (as CaVINet's ``testing_1.txt`` writes ``Will_Smith`` for
  the folder ``will_smith``): the protocol matches those paths case-insensitively.

``webcaricature`` (:mod:`pipeline.data.readers.webcaricature`)::

    <out>/WebCaricature/OriginalImages/Ada Bauer/C00001.jpg        caricatures, C + 5 digits from 1
    <out>/WebCaricature/OriginalImages/Ada Bauer/P00001.jpg        photos, P + 5 digits from 1
    <out>/WebCaricature/FacialPoints/Ada Bauer/C00001.txt          17 lines "x y" (half the files CRLF, half LF)
    <out>/WebCaricature/EvaluationProtocols/FaceVerification/Restricted/RestrictedView1_DevTrain.txt
    <out>/WebCaricature/EvaluationProtocols/FaceVerification/Restricted/RestrictedView1_DevTest.txt
    <out>/WebCaricature/EvaluationProtocols/FaceIdentification/C2P/FR_Probe_C2P1.txt … FR_Gallery_C2P10.txt
    <out>/WebCaricature/EvaluationProtocols/FaceIdentification/P2C/FR_Probe_P2C1.txt … FR_Gallery_P2C10.txt

  The identities are split once: about two thirds are *training* identities (``DevTrain``: ``pairs`` pairs over
  them), the rest *test* identities (``DevTest``: ``pairs`` pairs; and every identification split). In the real
  dataset the test pairs name identities that the training pairs do not (docs/method.md §9.18); here none of the test
  identities is trained on, so verification and identification (both from embeddings) measure recognition of
  unseen people. Pair files:
  a count line, then TAB-separated rows ``id  Cxxxxx  Pxxxxx`` (same) or ``id_c  Cxxxxx  id_p  Pxxxxx``
  (different), about half each. Identification files: a header line (the number of rows), then ``id<TAB>img``
  rows; C2P probes are caricatures and its gallery photos, P2C the reverse; per test identity two gallery images
  and half of its probe-modality images, each split its own random choice. In split 1 of each direction one test
  identity has one probe and no gallery image, so the protocol's exclusion of such probes is exercised.
  Verification and C2P files have CRLF line ends, P2C files LF.

Landmarks (:data:`LANDMARKS`): 17 points in WebCaricature's grouping (4 face contour, 4 eyebrow, 4 eye, 1 nose, 4
mouth), computed from the renderer's geometry of the image (the drawn face oval, brows, eye corners, nose tip, lip
corners and lip midpoints, after the pose and the artist's distortion): the contour points are the left and right
ends of the face oval, the chin and the top of the forehead, so the original's box (1.5 × the landmarks' width,
1.2 × their height) holds the whole face. :func:`face_region` gives the drawn face oval itself, independently of
the landmarks, for checking the box.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.data import demo as _demo
from pipeline.data.demo import NEUTRAL, ExpressionParams, IdentityParams, encode_jpeg, identity_params

__all__ = [
    "CAVI_PAIRS",
    "CAVI_ROOT",
    "LANDMARKS",
    "LAYOUTS",
    "MAX_NAMES",
    "POPULATION",
    "ROOTS",
    "WEBCARI_IDENTIFICATION",
    "WEBCARI_ROOT",
    "WEBCARI_TEST_PAIRS",
    "WEBCARI_TRAIN_PAIRS",
    "ArtistStyle",
    "CariImage",
    "CaricatureSummary",
    "artist_style",
    "cavi_folders",
    "exaggerate",
    "face_region",
    "generate_caricature_dataset",
    "render_caricature",
    "render_image",
    "render_photo",
    "webcari_name",
    "webcari_names",
    "webcari_split",
]

LAYOUTS = ("cavi", "webcaricature")
#: the dataset root of each layout, relative to the output folder (``datasets.<d>.root`` = ``data/raw/<d>/<this>``)
CAVI_ROOT = "CaVI_Dataset"
WEBCARI_ROOT = "WebCaricature"
ROOTS = {"cavi": CAVI_ROOT, "webcaricature": WEBCARI_ROOT}
#: CaVINet's pair file, relative to the dataset root (``datasets.<d>.protocol.pairs``)
CAVI_PAIRS = "../train-test-files/testing_1.txt"
#: WebCaricature's protocol files, relative to the dataset root (``datasets.<d>.protocol``)
WEBCARI_TRAIN_PAIRS = "EvaluationProtocols/FaceVerification/Restricted/RestrictedView1_DevTrain.txt"
WEBCARI_TEST_PAIRS = "EvaluationProtocols/FaceVerification/Restricted/RestrictedView1_DevTest.txt"
WEBCARI_IDENTIFICATION = "EvaluationProtocols/FaceIdentification"
_DIRECTIONS = ("C2P", "P2C")
_SPLITS = range(1, 11)

#: the 17 landmarks, in file order; left/right as seen in the image
LANDMARKS: tuple[str, ...] = (
    "contour_left", "chin", "contour_right", "forehead_top",
    "brow_left_outer", "brow_left_inner", "brow_right_inner", "brow_right_outer",
    "eye_left_outer", "eye_left_inner", "eye_right_inner", "eye_right_outer",
    "nose_tip",
    "mouth_left", "lip_top", "mouth_right", "lip_bottom",
)

#: gamma on a caricature's face before it is flattened: lifts the renderer's soft shadows (eye sockets, nose)
_SHADOW_LIFT = 0.75

# Random-stream tags (pipeline.data.demo uses 1..4)
_STREAM_PHOTO = 11
_STREAM_CARICATURE = 12
_STREAM_ARTIST = 13
_STREAM_PAIRS = 14
_STREAM_SPLIT = 15

#: identity factor -> (population mean, lowest, highest value after exaggeration). The means are the centres of
#: the uniform ranges :func:`pipeline.data.demo.identity_params` draws from (a test checks them).
POPULATION: dict[str, tuple[float, float, float]] = {
    "face_aspect": (1.30, 1.0, 1.65),
    "jaw": (0.75, 0.4, 1.0),
    "eye_spacing": (0.41, 0.30, 0.52),
    "eye_height": (0.13, 0.02, 0.26),
    "eye_size": (0.19, 0.12, 0.27),
    "nose_length": (0.24, 0.10, 0.38),
    "nose_width": (0.165, 0.10, 0.26),
    "mouth_width": (0.36, 0.24, 0.50),
    "mouth_height": (0.495, 0.40, 0.62),
    "lip_thickness": (1.025, 0.45, 1.7),
    "brow_thickness": (0.435, 0.2, 0.75),
    "brow_arch": (0.5, 0.0, 1.25),
    "hair_volume": (1.085, 1.0, 1.22),
    "hairline": (0.59, 0.42, 0.75),
    "ear_size": (1.0, 0.7, 1.4),
}


# --------------------------------------------------------------------------------------------------------------------
# Identity exaggeration and the artists
# --------------------------------------------------------------------------------------------------------------------


def _bounded(name: str, value: float) -> float:
    _, lo, hi = POPULATION[name]
    return float(min(max(value, lo), hi))


def _consistent(ident: IdentityParams) -> IdentityParams:
    """Keep an exaggerated face drawable: the eyes inside the face, the nose tip above the mouth."""
    eye_size = min(ident.eye_size, 0.8 - ident.eye_spacing)
    nose_length = min(ident.nose_length, ident.mouth_height - 0.14)
    return replace(ident, eye_size=eye_size, nose_length=nose_length)


def exaggerate(ident: IdentityParams, factor: float) -> IdentityParams:
    """The identity with each factor of :data:`POPULATION` moved to ``mean + factor · (value − mean)``, clipped to
    its bounds (``factor`` 1: unchanged apart from the clipping; the colours, hair style, glasses and beard stay)."""
    if not factor >= 1.0:
        raise ValueError(f"the exaggeration factor must be >= 1, got {factor!r}")
    values = {name: _bounded(name, mean + factor * (getattr(ident, name) - mean))
              for name, (mean, _, _) in POPULATION.items()}
    return _consistent(replace(ident, **values))


@dataclass(frozen=True)
class ArtistStyle:
    """How one caricature artist draws: palette, flatness, line, proportions."""

    artist: int
    hue_shift: float  # degrees added to every hue
    saturation: float  # saturation gain
    value: float  # brightness gain
    levels: int  # brightness levels of the posterisation
    smooth: int  # median filter size (odd) before posterising
    line_weight: float  # ink line width in px at a 160 px image
    ink: tuple[float, float, float]  # RGB in [0, 1]
    paper: tuple[float, float, float]  # background RGB in [0, 1]
    stretch_x: float  # head width gain
    stretch_y: float  # head height gain
    shear: float  # x += shear · y (relative to the face centre)
    head: float  # head size in the frame: face height = head × 0.5 .. 0.7 of the image height
    eye_scale: float
    nose_scale: float
    mouth_scale: float


def artist_style(seed: int, artist: int) -> ArtistStyle:
    """The style of artist ``artist`` (deterministic in ``seed`` and ``artist``; shared by every identity)."""
    _demo._check_nonneg(seed=seed, artist=artist)
    rng = _demo._rng(seed, _STREAM_ARTIST, artist)
    paper_kind = rng.random()
    if paper_kind < 0.6:  # white-ish paper
        paper = rng.uniform(0.86, 1.0, 3)
    else:  # a flat coloured ground
        paper = rng.uniform(0.35, 0.95, 3)
    ink = rng.uniform(0.0, 0.18, 3)
    return ArtistStyle(
        artist=artist,
        hue_shift=float(rng.uniform(-90.0, 90.0)),
        saturation=float(rng.uniform(0.6, 1.8)),
        value=float(rng.uniform(0.9, 1.2)),
        levels=int(rng.integers(3, 7)),
        smooth=int(rng.choice([3, 5])),
        line_weight=float(rng.uniform(1.0, 3.0)),
        ink=_demo._color(ink),
        paper=_demo._color(paper),
        stretch_x=float(rng.uniform(0.8, 1.12)),
        stretch_y=float(rng.uniform(0.92, 1.25)),
        shear=float(rng.uniform(-0.16, 0.16)),
        head=float(rng.uniform(1.0, 1.15)),
        eye_scale=float(rng.uniform(0.9, 1.45)),
        nose_scale=float(rng.uniform(0.9, 1.6)),
        mouth_scale=float(rng.uniform(0.85, 1.45)),
    )


def _drawn_by(ident: IdentityParams, style: ArtistStyle) -> IdentityParams:
    """The artist's own feature scales on top of the exaggeration."""
    return _consistent(replace(
        ident,
        eye_size=_bounded("eye_size", ident.eye_size * style.eye_scale),
        nose_width=_bounded("nose_width", ident.nose_width * style.nose_scale),
        nose_length=_bounded("nose_length", ident.nose_length * (0.5 + 0.5 * style.nose_scale)),
        mouth_width=_bounded("mouth_width", ident.mouth_width * style.mouth_scale),
    ))


# --------------------------------------------------------------------------------------------------------------------
# Geometry: landmarks and the face region from the renderer's geometry
# --------------------------------------------------------------------------------------------------------------------


def _canvas_landmarks(g: _demo._Geometry, ident: IdentityParams, expr: ExpressionParams) -> np.ndarray:
    """The 17 :data:`LANDMARKS` in the canvas of :func:`pipeline.data.demo.render_face`, ``(17, 2)``.

    The formulas are those the renderer draws with (``_face_outline``, ``_draw_brow``, ``_draw_eye``,
    ``_draw_nose``, ``_draw_mouth`` of :mod:`pipeline.data.demo`).
    """
    pts: list[tuple[float, float]] = [(g.cx - g.a, g.cy), (g.cx, g.cy + g.b), (g.cx + g.a, g.cy), (g.cx, g.cy - g.b)]
    ew = ident.eye_size * g.a
    ey = g.y(-ident.eye_height)
    brows, eyes = [], []
    for side in (-1.0, 1.0):
        ex = g.cx + side * ident.eye_spacing * g.a
        base = ey - ew * (1.15 + 0.9 * expr.brow_raise)
        pull = 0.2 * ew * max(0.0, -expr.brow_inner)
        inner = (ex - side * (0.95 * ew - pull), base - 0.55 * ew * expr.brow_inner)
        outer = (ex + side * 1.3 * ew, base + 0.2 * ew)
        brows += [outer, inner] if side < 0 else [inner, outer]
        eyes += [(ex - ew, ey), (ex + ew, ey)]
    pts += brows + eyes
    pts.append((g.cx, g.y(ident.nose_length)))
    base_w = ident.mouth_width * g.a
    w = base_w * expr.mouth_width
    y0 = g.y(ident.mouth_height)
    opening = max(0.0, expr.mouth_open) * 0.95 * base_w
    t_up = 0.11 * base_w * ident.lip_thickness * (1.0 - 0.6 * expr.lip_press)
    t_lo = 0.15 * base_w * ident.lip_thickness * (1.0 - 0.6 * expr.lip_press)
    bend = 0.28 * w * expr.mouth_curve
    mid0 = y0 + (0.35 * bend if expr.mouth_curve > 0 else 0.0)
    up_in0 = mid0 - (0.35 * opening + 0.4 * t_up * expr.upper_lip_raise)
    pts += [(g.cx - w, y0 - bend), (g.cx, up_in0 - 0.65 * t_up), (g.cx + w, y0 - bend),
            (g.cx, mid0 + 0.65 * opening + t_lo)]
    return np.asarray(pts, dtype=np.float64)


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points ``(n, 2)`` through the 2×3 affine ``m``."""
    return np.asarray(pts, dtype=np.float64) @ m[:, :2].T + m[:, 2]


@dataclass(frozen=True)
class CariImage:
    """One rendered image of a caricature dataset and its geometry (image pixel coordinates, ``x, y``).

    ``outline`` is the drawn face oval (72 points of the renderer's face outline, jaw included) and ``center`` its
    centre; ``landmarks`` the 17 :data:`LANDMARKS`. ``artist`` is -1 and ``exaggeration`` 1 for a photo.
    """

    image: np.ndarray
    identity: int
    index: int
    is_caricature: bool
    outline: np.ndarray
    center: tuple[float, float]
    landmarks: np.ndarray
    artist: int = -1
    exaggeration: float = 1.0


def _random_expression(rng: np.random.Generator) -> ExpressionParams:
    """The expression of a CASIA-style demo photo: neutral 30 %, else one of six at a random intensity."""
    names = _demo._ID_SET_EXPRESSIONS
    name = str(names[int(rng.choice(len(names), p=_demo._ID_SET_WEIGHTS))])
    if name == "Neutral":
        return NEUTRAL
    intensity = float(rng.uniform(0.25, 1.0))
    return NEUTRAL.blend(_demo._jittered_peak(rng, name), intensity)


def _check_size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(image_size) < 48:
        raise ValueError(f"image_size must be (width, height), each >= 48, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def render_photo(seed: int, identity: int, index: int, *, image_size: Sequence[int] = (160, 160)) -> CariImage:
    """Photo ``index`` of ``identity``: the demo's photo renderer (random expression, scene, pose and camera)."""
    _demo._check_nonneg(seed=seed, identity=identity, index=index)
    width, height = _check_size(image_size)
    rng = _demo._rng(seed, _STREAM_PHOTO, identity, index)
    expr = _random_expression(rng)
    background, pose, camera, clothing, ident = _demo._scene(rng, identity_params(seed, identity), width, height,
                                                              True)
    image, _ = _demo._compose(background, ident, expr, pose, camera, clothing, rng)
    # the transform _compose draws the face with
    g = _demo._geometry(ident, pose.face_h / (2.0 * ident.b))
    m = cv2.getRotationMatrix2D((g.cx, g.cy), pose.angle, 1.0)
    m[:, 2] += (pose.u - g.cx, pose.v - g.cy)
    outline = _apply(m, _demo._face_outline(g, ident.jaw))
    landmarks = _apply(m, _canvas_landmarks(g, ident, expr))
    # the oval lies inside the image; a feature point of an extreme face could stick out by a pixel
    landmarks = np.clip(landmarks, 0.0, [width - 1e-3, height - 1e-3])
    return CariImage(image, identity, index, False, outline, (pose.u, pose.v), landmarks)


def _linear(angle: float, style: ArtistStyle) -> np.ndarray:
    """The 2×2 map of the caricature's head: the artist's stretch and shear, then the rotation (as OpenCV's)."""
    t = math.radians(angle)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return rot @ np.array([[style.stretch_x, style.shear], [0.0, style.stretch_y]])


def _head(g: _demo._Geometry, ident: IdentityParams) -> np.ndarray:
    """Points around the hair cap and the ears (canvas pixels): what the frame should hold besides the face."""
    long_hair = ident.hair_style == 2  # drawn behind the head down to the jaw (demo._draw_back)
    half = g.a * max(ident.hair_volume + 0.02, 0.96 + 0.17 * ident.ear_size, 1.22 if long_hair else 0.0)
    top = g.b * max(ident.hair_volume, 1.12 if long_hair else 0.0)
    theta = np.linspace(np.pi, 2.0 * np.pi, 13)
    cap = np.stack([g.cx + half * np.cos(theta), g.cy - 0.04 * g.b + top * np.sin(theta)], axis=1)
    low = g.y(1.05 if long_hair else 0.3)
    return np.concatenate([cap, [[g.cx - half, low], [g.cx + half, low]]])


def _caricature_layout(rng: np.random.Generator, ident: IdentityParams, expr: ExpressionParams, style: ArtistStyle,
                       width: int, height: int) -> tuple[_demo._Geometry, np.ndarray]:
    """The caricature's scale, rotation and position: the head large in the frame, the face oval and every landmark
    at least 2 px inside the image, the hair and the ears inside too. Returns the canvas geometry and the 2×3
    canvas -> image transform."""
    face_h = rng.uniform(0.5, 0.7) * height * style.head
    angle = float(rng.uniform(-8.0, 8.0))
    lin = _linear(angle, style)
    pos = rng.uniform(0.0, 1.0, 2)
    for _ in range(3):
        g = _demo._geometry(ident, face_h / (2.0 * ident.b))
        pts = np.concatenate([_demo._face_outline(g, ident.jaw), _canvas_landmarks(g, ident, expr), _head(g, ident)])
        rel = (pts - (g.cx, g.cy)) @ lin.T
        lo, hi = rel.min(axis=0), rel.max(axis=0)
        room = np.array([width, height], dtype=np.float64) - 4.0
        fit = float(np.min(room / (hi - lo)))
        if fit >= 1.0:
            break
        face_h *= fit * 0.98
    center = (2.0 - lo) + pos * np.maximum(room - (hi - lo), 0.0)
    m = np.concatenate([lin, (center - lin @ np.array([g.cx, g.cy]))[:, None]], axis=1)
    return g, m


def _flat_style(img: np.ndarray, style: ArtistStyle, scale: float) -> np.ndarray:
    """Palette shift, flat colours and ink outlines: float32 RGB ``(H, W, 3)`` in [0, 1] -> uint8 RGB."""
    hsv = cv2.cvtColor(np.clip(img, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + style.hue_shift, 360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * style.saturation, 0.0, 1.0)
    hsv[..., 2] = np.clip(hsv[..., 2] * style.value, 0.0, 1.0)
    rgb8 = (np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    rgb8 = cv2.medianBlur(rgb8, style.smooth)
    hsv = cv2.cvtColor(rgb8.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    levels = style.levels
    hsv[..., 2] = np.minimum((np.floor(hsv[..., 2] * levels) + 0.5) / levels, 1.0)
    hsv[..., 1] = np.round(hsv[..., 1] * 4.0) / 4.0
    hsv[..., 0] = np.mod(np.round(hsv[..., 0] / 12.0) * 12.0, 360.0)
    flat = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0.0, 1.0)
    flat8 = (flat * 255.0 + 0.5).astype(np.uint8)
    gray = cv2.cvtColor(flat8, cv2.COLOR_RGB2GRAY)
    sat = (hsv[..., 1] * 255.0).astype(np.uint8)
    edges = cv2.Canny(gray, 40, 90) | cv2.Canny(sat, 60, 120)
    size = max(1, round(style.line_weight * scale))
    if size > 1:
        edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    ink = cv2.GaussianBlur(edges.astype(np.float32) / 255.0, (0, 0), 0.5)[..., None]
    out = flat * (1.0 - ink) + np.asarray(style.ink, np.float32) * ink
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_caricature(seed: int, identity: int, index: int, *, image_size: Sequence[int] = (160, 160),
                      exaggeration: Sequence[float] = (1.5, 2.5), artists: int = 4) -> CariImage:
    """Caricature ``index`` of ``identity``: drawn by a random one of ``artists`` artists, the identity exaggerated by
    a factor drawn in ``exaggeration`` (module docstring)."""
    _demo._check_nonneg(seed=seed, identity=identity, index=index)
    width, height = _check_size(image_size)
    lo, hi = float(exaggeration[0]), float(exaggeration[1])
    if not 1.0 <= lo <= hi:
        raise ValueError(f"exaggeration must be [low, high] with 1 <= low <= high, got {list(exaggeration)}")
    if artists < 1:
        raise ValueError(f"artists must be >= 1, got {artists}")
    rng = _demo._rng(seed, _STREAM_CARICATURE, identity, index)
    artist = int(rng.integers(artists))
    style = artist_style(seed, artist)
    factor = float(rng.uniform(lo, hi))
    ident = _drawn_by(exaggerate(identity_params(seed, identity), factor), style)
    expr = _random_expression(rng)
    clothing = _demo._color(rng.uniform(0.1, 0.9, 3))
    g, m = _caricature_layout(rng, ident, expr, style, width, height)
    paper = np.full((height, width, 3), np.round(np.asarray(_demo._c255(style.paper))), np.uint8)
    _demo._draw_torso(paper, m, g, clothing)
    rgb, alpha = _demo.render_face(ident, expr, g.k, 0.0)
    yy, xx = (v.astype(np.float32) for v in np.ogrid[0: g.height, 0: g.width])
    # no shading: the head's fall-off divided out, the soft feature shadows lifted (flat colours)
    rgb = np.clip(rgb / _demo._shading(g, xx, yy, 0.0)[..., None], 0.0, 1.0) ** _SHADOW_LIFT
    rgba = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=2)
    warped = cv2.warpAffine(rgba, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    img = paper.astype(np.float32) / 255.0 * (1.0 - warped[..., 3:]) + warped[..., :3]
    image = _flat_style(img, style, min(width, height) / 160.0)
    outline = _apply(m, _demo._face_outline(g, ident.jaw))
    center = _apply(m, np.array([[g.cx, g.cy]]))[0]
    landmarks = _apply(m, _canvas_landmarks(g, ident, expr))
    return CariImage(image, identity, index, True, outline, (float(center[0]), float(center[1])), landmarks, artist,
                     factor)


def render_image(seed: int, identity: int, index: int, *, is_caricature: bool, image_size: Sequence[int] = (160, 160),
                 exaggeration: Sequence[float] = (1.5, 2.5), artists: int = 4) -> CariImage:
    """:func:`render_caricature` or :func:`render_photo`."""
    if is_caricature:
        return render_caricature(seed, identity, index, image_size=image_size, exaggeration=exaggeration,
                                 artists=artists)
    return render_photo(seed, identity, index, image_size=image_size)


def face_region(seed: int, identity: int, index: int, *, is_caricature: bool,
                image_size: Sequence[int] = (160, 160), exaggeration: Sequence[float] = (1.5, 2.5),
                artists: int = 4) -> tuple[np.ndarray, tuple[float, float]]:
    """The drawn face of an image of a demo caricature dataset: ``(outline, center)``, the face oval as a ``(72, 2)``
    polygon and its centre in image pixels, from the renderer's geometry (not from the landmarks).

    ``index`` is 0-based (WebCaricature's ``C00001`` / ``P00001`` is index 0; CaVI's ``_c_0`` / ``_r_0`` too).
    """
    r = render_image(seed, identity, index, is_caricature=is_caricature, image_size=image_size,
                     exaggeration=exaggeration, artists=artists)
    return r.outline, r.center


# --------------------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------------------

_FIRST = ("Ada", "Boris", "Carmen", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Keiko", "Luca",
          "Maya", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wen", "Ximena", "Yusuf",
          "Zoe")
_LAST = ("Abbott", "Bauer", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Horvath", "Ivanova", "Jensen",
         "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrova", "Quispe", "Romano", "Silva", "Tanaka",
         "Urquhart", "Varga", "Weber", "Xu", "Yilmaz", "Zielinski")
_MIDDLE = ("Laurie", "Marie", "Jose", "Anne", "Lee", "van der")
#: consecutive identities get distinct WebCaricature names up to this many
MAX_NAMES = len(_FIRST) * len(_LAST)


def webcari_name(identity: int) -> str:
    """The WebCaricature folder name of a global identity: ``First [Middle] Last`` (unique over any
    :data:`MAX_NAMES` consecutive identities)."""
    j = identity % MAX_NAMES
    first, last = _FIRST[j % len(_FIRST)], _LAST[j // len(_FIRST)]
    if identity % 5 == 0:
        return f"{first} {_MIDDLE[(identity // 5) % len(_MIDDLE)]} {last}"
    return f"{first} {last}"


def webcari_names(first_identity: int, n_identities: int) -> dict[str, int]:
    """WebCaricature folder name -> global identity of a dataset's identities."""
    if n_identities > MAX_NAMES:
        raise ValueError(f"a WebCaricature demo holds at most {MAX_NAMES} identities, got {n_identities}")
    return {webcari_name(i): i for i in range(first_identity, first_identity + n_identities)}


def _case_variant(first_identity: int, n_identities: int) -> int:
    """The identity whose Real/ folder is spelt in lower case."""
    return first_identity + n_identities // 2


def cavi_folders(first_identity: int, n_identities: int) -> dict[int, tuple[str, str]]:
    """Global identity -> its (Caricature, Real) folder names: ``Person_5003`` in both, except one identity whose
    Real folder is spelt in lower case (``person_5010``), like CaVI's ``Akhilesh_yadav`` / ``akhilesh_yadav``."""
    variant = _case_variant(first_identity, n_identities)
    out = {}
    for i in range(first_identity, first_identity + n_identities):
        name = f"Person_{i}"
        out[i] = (name, name.lower() if i == variant else name)
    return out


def webcari_split(seed: int, first_identity: int, n_identities: int) -> tuple[list[int], list[int]]:
    """The WebCaricature demo's (training, test) identities: about two thirds train, at least two test."""
    if n_identities < 3:
        raise ValueError(f"a WebCaricature demo needs at least 3 identities, got {n_identities}")
    rng = _demo._rng(seed, _STREAM_PAIRS, first_identity, n_identities, 0)
    ids = [int(i) for i in rng.permutation(np.arange(first_identity, first_identity + n_identities))]
    n_test = max(2, n_identities - round(2 * n_identities / 3))
    return sorted(ids[n_test:]), sorted(ids[:n_test])


# --------------------------------------------------------------------------------------------------------------------
# Protocol planning
# --------------------------------------------------------------------------------------------------------------------

#: one planned pair: (caricature identity, caricature index, photo identity, photo index, same)
Pair = tuple[int, int, int, int, bool]


class _Cycle:
    """Each identity's images in a shuffled order, handed out in turn (so pairs spread over the images)."""

    def __init__(self, rng: np.random.Generator, pools: dict[int, list[int]]) -> None:
        self.order = {i: [int(x) for x in rng.permutation(p)] for i, p in pools.items()}
        self.next = dict.fromkeys(pools, 0)

    def __call__(self, identity: int) -> int:
        order = self.order[identity]
        value = order[self.next[identity] % len(order)]
        self.next[identity] += 1
        return value


def _plan_pairs(rng: np.random.Generator, ids: Sequence[int], caricatures: dict[int, list[int]],
                photos: dict[int, list[int]], n_pairs: int) -> list[Pair]:
    """``n_pairs`` pairs over ``ids``: ``n_pairs // 2`` same (more if there is a single identity), the rest different,
    every identity in one when ``n_pairs >= len(ids)``, the images of each identity used in turn; shuffled."""
    n = len(ids)
    n_same = n_pairs if n < 2 else n_pairs // 2
    cari, photo = _Cycle(rng, caricatures), _Cycle(rng, photos)
    out: list[Pair] = []
    for s in range(n_same):
        i = ids[s % n]
        out.append((i, cari(i), i, photo(i), True))
    offset = int(rng.integers(max(n - 1, 1)))
    for d in range(n_pairs - n_same):
        pos, rnd = (n_same + d) % n, (n_same + d) // n
        i, j = ids[pos], ids[(pos + 1 + (rnd + offset) % (n - 1)) % n]
        out.append((i, cari(i), j, photo(j), False))
    order = rng.permutation(len(out))
    return [out[int(k)] for k in order]


def _cavi_test_subsets(rng: np.random.Generator, ids: Sequence[int], n_cari: int, n_photo: int, n_pairs: int
                       ) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """The few images of each identity the kept pairs use: enough for distinct pairs, fewer than half of each
    modality (so that most images stay for CaVI's training set)."""
    want = max(1, math.ceil(n_pairs / (2 * len(ids))))
    tc, tp = max(1, min(want, (n_cari - 1) // 2)), max(1, min(want, (n_photo - 1) // 2))
    caris = {i: sorted(int(x) for x in rng.choice(n_cari, tc, replace=False)) for i in ids}
    photos = {i: sorted(int(x) for x in rng.choice(n_photo, tp, replace=False)) for i in ids}
    return caris, photos


def _cavi_lines(seed: int, first_identity: int, n_identities: int, n_cari: int, n_photo: int, pairs: int,
                downsample: int) -> tuple[list[str], list[Pair]]:
    """The lines of CaVINet's pair file (without line ends) and the planned kept pairs."""
    ids = list(range(first_identity, first_identity + n_identities))
    folders = cavi_folders(first_identity, n_identities)
    rng = _demo._rng(seed, _STREAM_PAIRS, first_identity, n_identities, 1)
    sub_c, sub_p = _cavi_test_subsets(rng, ids, n_cari, n_photo, pairs)
    kept = _plan_pairs(rng, ids, sub_c, sub_p, pairs)

    def line(p: Pair) -> str:
        ic, c, ip, r, same = p
        fc, fr = folders[ic][0], folders[ip][0]  # the pair file spells every id as its Caricature folder does
        return f"{fc} Caricature/{fc}\\{fc}_c_{c}.jpg {fr} Real/{fr}\\{fr}_r_{r}.jpg {int(same)}"

    lines = []
    for n in range(pairs * downsample):
        if n % downsample == 0:
            lines.append(line(kept[n // downsample]))
            continue
        i = ids[int(rng.integers(n_identities))]
        j = i if rng.random() < 0.5 else ids[(ids.index(i) + 1 + int(rng.integers(n_identities - 1))) % n_identities]
        lines.append(line((i, int(rng.integers(n_cari)), j, int(rng.integers(n_photo)), i == j)))
    return lines, kept


def _webcari_pair_rows(pairs: Sequence[Pair], names: dict[int, str]) -> list[str]:
    rows = []
    for ic, c, ip, p, same in pairs:
        if same:
            rows.append(f"{names[ic]}\tC{c + 1:05d}\tP{p + 1:05d}")
        else:
            rows.append(f"{names[ic]}\tC{c + 1:05d}\t{names[ip]}\tP{p + 1:05d}")
    return rows


def _identification_rows(seed: int, first_identity: int, test_ids: Sequence[int], names: dict[int, str],
                         n_cari: int, n_photo: int, direction: str, k: int) -> tuple[list[str], list[str]]:
    """Probe and gallery rows (``name<TAB>stem``) of one identification split."""
    rng = _demo._rng(seed, _STREAM_SPLIT, first_identity, _DIRECTIONS.index(direction), k)
    probe_prefix, gallery_prefix = ("C", "P") if direction == "C2P" else ("P", "C")
    n_probe, n_gallery = (n_cari, n_photo) if direction == "C2P" else (n_photo, n_cari)
    excluded = test_ids[int(rng.integers(len(test_ids)))] if k == 1 else None
    probes, gallery = [], []
    for i in test_ids:
        g = sorted(int(x) for x in rng.choice(n_gallery, min(2, n_gallery), replace=False))
        p = sorted(int(x) for x in rng.choice(n_probe, max(1, n_probe // 2), replace=False))
        if i == excluded:  # a probe whose identity has no gallery image in this split
            p, g = p[:1], []
        probes += [f"{names[i]}\t{probe_prefix}{x + 1:05d}" for x in p]
        gallery += [f"{names[i]}\t{gallery_prefix}{x + 1:05d}" for x in g]
    return probes, gallery


def _write_text(path: Path, rows: Sequence[str], newline: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(r + newline for r in rows).encode("utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    root: str
    layout: str
    seed: int
    identity: int
    folders: tuple[str, str]  # cavi: (Caricature folder, Real folder); webcaricature: (name, name)
    n_photos: int
    n_caricatures: int
    image_size: tuple[int, int]
    exaggeration: tuple[float, float]
    artists: int
    quality: int


def _landmark_text(points: np.ndarray, newline: str) -> str:
    return "".join(f"{x:.2f} {y:.2f}{newline}" for x, y in points)


#: CaVI's images are face crops: the demo cuts its cavi images around the face as WebCaricature's landmark rule
#: does (centre of the landmarks' box, 1.5 x its width, 1.2 x its height), then resizes them to the image size
CAVI_FACE_BOX = (1.5, 1.2)


def face_crop(image: np.ndarray, landmarks: np.ndarray, factors: tuple[float, float] = CAVI_FACE_BOX) -> np.ndarray:
    """``image uint8 [H, W, 3]`` cut to the box around ``landmarks [17, 2]`` (``factors`` × the landmarks' box, clipped
    to the image) and resized back to ``W × H`` (area interpolation): a CaVI-style face crop."""
    h, w = image.shape[:2]
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    cx, cy = (lo + hi) / 2.0
    half_w, half_h = (hi[0] - lo[0]) * factors[0] / 2.0, (hi[1] - lo[1]) * factors[1] / 2.0
    x0, x1 = max(0, int(round(cx - half_w))), min(w, int(round(cx + half_w)))
    y0, y1 = max(0, int(round(cy - half_h))), min(h, int(round(cy + half_h)))
    return cv2.resize(image[y0:y1, x0:x1], (w, h), interpolation=cv2.INTER_AREA)


def _run_task(task: _Task) -> int:
    """Write every image of one identity (and its landmark files); returns the number of images."""
    root = Path(task.root)
    for is_cari, count in ((True, task.n_caricatures), (False, task.n_photos)):
        for n in range(count):
            r = render_image(task.seed, task.identity, n, is_caricature=is_cari, image_size=task.image_size,
                             exaggeration=task.exaggeration, artists=task.artists)
            image = face_crop(r.image, r.landmarks) if task.layout == "cavi" else r.image
            data = encode_jpeg(image, task.quality)
            if task.layout == "cavi":
                folder = task.folders[0] if is_cari else task.folders[1]
                modality, tag = ("Caricature", "c") if is_cari else ("Real", "r")
                path = root / modality / folder / f"{folder}_{tag}_{n}.jpg"
            else:
                stem = f"{'C' if is_cari else 'P'}{n + 1:05d}"
                path = root / "OriginalImages" / task.folders[0] / f"{stem}.jpg"
                newline = "\r\n" if (n + is_cari) % 2 == 0 else "\n"
                points = root / "FacialPoints" / task.folders[0] / f"{stem}.txt"
                points.parent.mkdir(parents=True, exist_ok=True)
                points.write_bytes(_landmark_text(r.landmarks, newline).encode("ascii"))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return task.n_photos + task.n_caricatures


@dataclass
class CaricatureSummary:
    """What :func:`generate_caricature_dataset` wrote."""

    layout: str
    root: str  # the dataset root (``<out>/CaVI_Dataset`` or ``<out>/WebCaricature``)
    seed: int
    image_size: tuple[int, int]
    n_photos: int = 0
    n_caricatures: int = 0
    subjects: dict[str, int] = field(default_factory=dict)  # identity folder (Caricature spelling) -> identity
    protocol_files: list[str] = field(default_factory=list)  # relative to the output folder
    protocol: dict[str, int] = field(default_factory=dict)  # counts: pair-file lines, kept pairs, same pairs, …
    seconds: float = 0.0

    @property
    def n_images(self) -> int:
        return self.n_photos + self.n_caricatures

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        d["n_images"] = self.n_images
        return d


def _check_args(layout: str, seed: int, first_identity: int, n_identities: int, photos_per_identity: int,
                caricatures_per_identity: int, image_size: Sequence[int], exaggeration: Sequence[float], artists: int,
                pairs: int, downsample: int, quality: int, workers: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _demo._check_common(seed, first_identity, n_identities, tuple(image_size), quality, workers)
    if n_identities < (3 if layout == "webcaricature" else 2):
        raise ValueError(f"n_identities must be >= {3 if layout == 'webcaricature' else 2} for layout {layout}, "
                         f"got {n_identities}")
    if layout == "webcaricature" and n_identities > MAX_NAMES:
        raise ValueError(f"n_identities must be <= {MAX_NAMES} for layout webcaricature, got {n_identities}")
    if min(photos_per_identity, caricatures_per_identity) < 2:
        raise ValueError("photos_per_identity and caricatures_per_identity must be >= 2, got "
                         f"{photos_per_identity} and {caricatures_per_identity}")
    if not 1.0 <= float(exaggeration[0]) <= float(exaggeration[1]):
        raise ValueError(f"exaggeration must be [low, high] with 1 <= low <= high, got {list(exaggeration)}")
    if artists < 1:
        raise ValueError(f"artists must be >= 1, got {artists}")
    if pairs < n_identities:
        raise ValueError(f"pairs ({pairs}) must be >= n_identities ({n_identities}) so that every identity is in one")
    if downsample < 1 or (layout == "webcaricature" and downsample != 1):
        raise ValueError(f"downsample must be >= 1 for cavi and 1 for webcaricature, got {downsample}")


def generate_caricature_dataset(
    out: Path,
    *,
    layout: str,
    seed: int,
    first_identity: int,
    n_identities: int,
    photos_per_identity: int,
    caricatures_per_identity: int,
    image_size: Sequence[int] = (160, 160),
    exaggeration: Sequence[float] = (1.5, 2.5),
    artists: int = 4,
    pairs: int = 80,
    downsample: int = 1,
    quality: int = 95,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> CaricatureSummary:
    """Write a caricature dataset in ``layout`` (``cavi`` or ``webcaricature``) with its protocol files under
    ``out`` (which must not exist or be empty); layouts and protocol files in the module docstring.

    ``pairs``: cavi, the pairs kept by the protocol's down-sampling by ``downsample`` (the pair file holds ``pairs
    × downsample`` lines); webcaricature, the test pairs, and as many training pairs (``downsample`` must be 1).
    Images are written by ``workers`` processes (one task per identity), ``progress(n)`` after each identity.

    Raises:
        ValueError: an argument out of range, or ``out`` a file or a non-empty folder.
    """
    start = time.perf_counter()
    size = (int(image_size[0]), int(image_size[1]))
    exag = (float(exaggeration[0]), float(exaggeration[1]))
    _check_args(layout, seed, first_identity, n_identities, photos_per_identity, caricatures_per_identity, size, exag,
                artists, pairs, downsample, quality, workers)
    out = _demo._prepare_root(Path(out))
    root = out / ROOTS[layout]
    ids = list(range(first_identity, first_identity + n_identities))
    if layout == "cavi":
        folders = cavi_folders(first_identity, n_identities)
    else:
        folders = {i: (n, n) for n, i in webcari_names(first_identity, n_identities).items()}
    tasks = [_Task(str(root), layout, seed, i, folders[i], photos_per_identity, caricatures_per_identity, size, exag,
                   artists, quality) for i in ids]
    _demo._run_tasks(_run_task, tasks, workers, progress)  # type: ignore[arg-type]
    summary = CaricatureSummary(layout, str(root), seed, size, n_photos=n_identities * photos_per_identity,
                                n_caricatures=n_identities * caricatures_per_identity,
                                subjects={folders[i][0]: i for i in ids})
    if layout == "cavi":
        _write_cavi_protocol(out, summary, seed, first_identity, n_identities, caricatures_per_identity,
                             photos_per_identity, pairs, downsample)
    else:
        _write_webcari_protocol(out, summary, seed, first_identity, n_identities, caricatures_per_identity,
                                photos_per_identity, pairs)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_cavi_protocol(out: Path, summary: CaricatureSummary, seed: int, first_identity: int, n_identities: int,
                         n_cari: int, n_photo: int, pairs: int, downsample: int) -> None:
    lines, kept = _cavi_lines(seed, first_identity, n_identities, n_cari, n_photo, pairs, downsample)
    path = (out / CAVI_ROOT / CAVI_PAIRS).resolve()
    _write_text(path, lines, "\r\n")
    summary.protocol_files.append(path.relative_to(out.resolve()).as_posix())
    summary.protocol = {"file_pairs": len(lines), "downsample": downsample, "kept_pairs": len(kept),
                        "kept_same_pairs": sum(p[4] for p in kept),
                        "kept_images": len({(p[0], "c", p[1]) for p in kept} | {(p[2], "r", p[3]) for p in kept})}


def _write_webcari_protocol(out: Path, summary: CaricatureSummary, seed: int, first_identity: int, n_identities: int,
                            n_cari: int, n_photo: int, pairs: int) -> None:
    root = out / WEBCARI_ROOT
    names = {i: n for n, i in webcari_names(first_identity, n_identities).items()}
    train_ids, test_ids = webcari_split(seed, first_identity, n_identities)
    counts: dict[str, int] = {"train_ids": len(train_ids), "test_ids": len(test_ids)}
    for key, ids, rel, stream in (("train", train_ids, WEBCARI_TRAIN_PAIRS, 2),
                                  ("test", test_ids, WEBCARI_TEST_PAIRS, 3)):
        rng = _demo._rng(seed, _STREAM_PAIRS, first_identity, n_identities, stream)
        planned = _plan_pairs(rng, ids, {i: list(range(n_cari)) for i in ids}, {i: list(range(n_photo)) for i in ids},
                              pairs)
        rows = _webcari_pair_rows(planned, names)
        _write_text(root / rel, [str(len(rows)), *rows], "\r\n")
        summary.protocol_files.append(f"{WEBCARI_ROOT}/{rel}")
        counts[f"{key}_pairs"] = len(rows)
        counts[f"{key}_same_pairs"] = sum(p[4] for p in planned)
    excluded = 0
    for direction in _DIRECTIONS:
        for k in _SPLITS:
            probes, gallery = _identification_rows(seed, first_identity, test_ids, names, n_cari, n_photo, direction,
                                                   k)
            in_gallery = {g.split("\t")[0] for g in gallery}
            excluded += sum(p.split("\t")[0] not in in_gallery for p in probes)
            newline = "\r\n" if direction == "C2P" else "\n"
            for kind, rows in (("Probe", probes), ("Gallery", gallery)):
                rel = f"{WEBCARI_IDENTIFICATION}/{direction}/FR_{kind}_{direction}{k}.txt"
                _write_text(root / rel, [str(len(rows)), *rows], newline)
                summary.protocol_files.append(f"{WEBCARI_ROOT}/{rel}")
    counts["excluded_probes"] = excluded
    summary.protocol = counts
