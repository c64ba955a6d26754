"""Embedded synthetic face datasets (the "demo" data) for running the pipeline end to end.

The real datasets (Oulu-CASIA VIS/Strong for expression, CASIA-WebFace for identity) cannot
be downloaded in every environment, so this module *draws* faces procedurally with numpy and
OpenCV and lays them out exactly like the real datasets:

* :func:`generate_expression_dataset` -> ``<root>/P001/Anger/000.jpeg`` ... (Oulu-CASIA layout):
  one sequence per (subject, expression); frame 0 is neutral, the last frame is the peak
  expression, the frames in between ease in (intensity ``t**2``).
* :func:`generate_identity_dataset` -> ``<root>/0001000/001.jpg`` ... (CASIA-WebFace layout):
  many images per identity with random expressions (incl. neutral) and random scenes.

Design: every image is ``render(identity factors, expression factors, nuisance)``.

* **Identity** (:class:`IdentityParams`, from :func:`identity_params`): constant per global
  identity index and independent of the dataset it is drawn in -- face outline (size, aspect,
  jaw width), skin tone, eye spacing/size/height, iris colour, nose length/width, mouth width
  and position, lip thickness/colour, brow thickness/arch, hair colour and style (short,
  fringe, long, buzz, side part), ear size, and the rare attributes glasses and beard.
* **Expression** (:class:`ExpressionParams`): independent of identity -- mouth opening,
  curvature (smile/frown), width (stretched vs. 'O'), teeth, upper-lip raise, lip press,
  brow height and inner-brow tilt (raised for surprise/fear, lowered and drawn in for anger,
  inner corners up for sadness), eye opening (wide for surprise/fear, narrowed for
  disgust/happiness), nose wrinkle (disgust) and cheek raise (happiness). The six peaks in
  :data:`EXPRESSION_PEAKS` are chosen to be visually distinct; each sequence additionally gets
  a random peak intensity and small random offsets, so expression is learnable but not trivial.
* **Nuisance** (per sequence scene + per frame jitter, or per image for the identity set):
  cluttered background (gradient, low-frequency texture, random rectangles/lines/polygons/large
  discs/stripes -- no face-like blobs), torso/clothing colour, face position and scale (face
  height 35-70 % of the image height, face fully inside), in-plane rotation (+-10 deg),
  directional lighting across the image and a hard side light on the face (one side down to
  15 % of its brightness), brightness/contrast/colour cast, gaussian noise and slight blur, and
  the session's look (:func:`_session_look`): the hair style is redrawn, the hair colour
  brightened or darkened by up to 50 % and the hairline moved, as between days or under a hat.
* **Difficulty**: the nuisance is calibrated so that raw pixels cannot tell the identities
  apart while a network can learn to. A person's hair and the lighting are large, high-contrast
  regions of a face crop; with them fixed per person, a PCA of the aligned crops ("eigenfaces")
  verified 0.76 of the demo pairs; with the session look and the hard side light it verifies
  0.63 (all 10 folds), while the pretrained network stays above 0.9 (docs/demo.md, "How hard the
  demo is").

Why a real MTCNN detects these faces: MTCNN was trained on photographs, so the faces are
drawn with photographic cues rather than flat cartoon colours -- a radially shaded skin oval
with a side light, blurred dark eye sockets, eye whites with dark irises, pupils, lash lines
and a specular dot, a nose-side shadow, dark nostrils and a shadow under the nose tip,
darker lips with a dark lip line and a shadow below the lower lip, hair framing the forehead,
ears, neck and shoulders. ``bench/demo_detection_rate.py`` measures the detection rate with
an independent MTCNN implementation.

Determinism: all randomness comes from ``numpy.random.Generator`` objects seeded from
``(seed, stream, identity, sequence/image index, frame)`` (see :func:`_rng`), so the files are
byte-identical across runs and independent of ``workers``. Images are RGB ``uint8`` arrays of
shape ``(H, W, 3)`` until they are JPEG-encoded with OpenCV.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from pipeline.constants import DEMO_EXPRESSIONS
from pipeline.processes import die_with_parent

__all__ = [
    "EXPRESSIONS",
    "EXPRESSION_PEAKS",
    "NEUTRAL",
    "DemoSummary",
    "ExpressionParams",
    "IdentityParams",
    "Rendered",
    "encode_jpeg",
    "generate_expression_dataset",
    "generate_identity_dataset",
    "identity_params",
    "render_expression_sequence",
    "render_face",
    "render_identity_image",
    "sequence_length",
]

#: the six basic expressions, in Oulu-CASIA's folder spelling (defined with the params schema's names)
EXPRESSIONS: tuple[str, ...] = DEMO_EXPRESSIONS

# Random-stream tags, so that the streams of different purposes never collide.
_STREAM_IDENTITY = 1
_STREAM_SEQUENCE = 2
_STREAM_FRAME = 3
_STREAM_ID_IMAGE = 4

_SHIFT = 4  # OpenCV sub-pixel bits: coordinates are passed multiplied by 16
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------

Color = tuple[float, float, float]


#: the number of hair styles (``IdentityParams.hair_style``: 0 .. HAIR_STYLES - 1)
HAIR_STYLES = 5


@dataclass(frozen=True)
class IdentityParams:
    """Factors that define one person; lengths are canonical pixels or fractions of a/b.

    ``a``/``b`` are the half-width/half-height of the face oval; colours are RGB in [0, 1].
    """

    identity: int
    face_width: float  # a, canonical px
    face_aspect: float  # b / a
    jaw: float  # width of the jaw relative to the cheeks (pointy 0.55 .. square 0.95)
    skin: Color
    eye_spacing: float  # half distance between eye centres / a
    eye_height: float  # eye line above the face centre / b
    eye_size: float  # eye half-width / a
    iris: Color
    nose_length: float  # nose tip below the face centre / b
    nose_width: float  # nostril half-span / a
    mouth_width: float  # mouth half-width / a
    mouth_height: float  # mouth line below the face centre / b
    lip_thickness: float  # multiplier of the default lip thickness
    lip: Color
    brow_thickness: float  # brow thickness / eye half-width
    brow_arch: float  # 0 flat .. 1 strongly arched
    hair: Color
    hair_style: int  # 0 short, 1 fringe, 2 long, 3 buzz, 4 side part (HAIR_STYLES in all)
    hair_volume: float  # hair cap size relative to the head oval
    hairline: float  # hairline height above the face centre / b
    ear_size: float
    glasses: bool
    beard: bool

    @property
    def b(self) -> float:
        """Half-height of the face oval in canonical pixels."""
        return self.face_width * self.face_aspect


@dataclass(frozen=True)
class ExpressionParams:
    """Facial action factors; the all-default instance is the neutral face."""

    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    mouth_curve: float = 0.0  # -1 frown .. 1 smile
    mouth_width: float = 1.0  # multiplier of the identity's mouth width
    teeth: float = 0.0  # 0 .. 1 visible upper teeth
    upper_lip_raise: float = 0.0  # 0 .. 1 (disgust snarl)
    lip_press: float = 0.0  # 0 .. 1 thin pressed lips (anger)
    brow_raise: float = 0.0  # -1 lowered .. 1 raised
    brow_inner: float = 0.0  # -1 inner ends down and in (anger) .. 1 inner ends up (sadness)
    eye_open: float = 1.0  # multiplier of the eye opening
    nose_wrinkle: float = 0.0  # 0 .. 1
    cheek_raise: float = 0.0  # 0 .. 1

    def blend(self, other: ExpressionParams, t: float) -> ExpressionParams:
        """Linear interpolation ``self + t * (other - self)`` of every factor."""
        mine, theirs = asdict(self), asdict(other)
        return ExpressionParams(**{k: mine[k] + t * (theirs[k] - mine[k]) for k in mine})


NEUTRAL = ExpressionParams()

EXPRESSION_PEAKS: dict[str, ExpressionParams] = {
    "Anger": ExpressionParams(
        brow_raise=-0.8, brow_inner=-1.0, eye_open=0.8, mouth_curve=-0.35, mouth_width=0.85, lip_press=1.0
    ),
    "Disgust": ExpressionParams(
        brow_raise=-0.45, brow_inner=-0.35, eye_open=0.5, nose_wrinkle=1.0, mouth_curve=-0.6,
        mouth_open=0.12, upper_lip_raise=1.0, teeth=0.6, mouth_width=0.95,
    ),
    "Fear": ExpressionParams(
        brow_raise=0.65, brow_inner=0.8, eye_open=1.45, mouth_open=0.45, mouth_width=1.2,
        mouth_curve=-0.35, teeth=0.5,
    ),
    "Happiness": ExpressionParams(
        mouth_curve=1.0, mouth_open=0.35, teeth=1.0, mouth_width=1.25, eye_open=0.6, cheek_raise=1.0,
        brow_raise=0.1,
    ),
    "Sadness": ExpressionParams(
        mouth_curve=-0.9, brow_inner=1.0, brow_raise=0.05, eye_open=0.75, mouth_width=0.95, lip_press=0.3
    ),
    "Surprise": ExpressionParams(
        brow_raise=1.0, brow_inner=0.15, eye_open=1.45, mouth_open=0.75, mouth_width=0.75, teeth=0.3
    ),
}
"""Peak (intensity 1) expression factors of the six basic expressions."""

_SKIN_PALETTE = np.array(
    [
        [0.96, 0.82, 0.72],
        [0.90, 0.71, 0.58],
        [0.80, 0.59, 0.44],
        [0.67, 0.47, 0.33],
        [0.52, 0.35, 0.24],
        [0.38, 0.25, 0.17],
    ],
    dtype=np.float64,
)
_HAIR_PALETTE: tuple[Color, ...] = (
    (0.07, 0.06, 0.05),  # black
    (0.20, 0.13, 0.08),  # dark brown
    (0.38, 0.25, 0.15),  # brown
    (0.72, 0.58, 0.36),  # blond
    (0.52, 0.24, 0.11),  # red
    (0.62, 0.61, 0.60),  # grey
)
_HAIR_WEIGHTS = (0.32, 0.28, 0.18, 0.1, 0.06, 0.06)
_IRIS_PALETTE: tuple[Color, ...] = (
    (0.25, 0.15, 0.08),
    (0.12, 0.08, 0.05),
    (0.25, 0.40, 0.60),
    (0.30, 0.42, 0.25),
    (0.42, 0.45, 0.48),
)


def _rng(seed: int, stream: int, *keys: int) -> np.random.Generator:
    """A Generator seeded from ``(seed, stream, *keys)`` (all must be non-negative ints)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *keys])))


def _check_nonneg(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def identity_params(seed: int, identity: int) -> IdentityParams:
    """The identity factors of global identity index ``identity`` (deterministic in both)."""
    _check_nonneg(seed=seed, identity=identity)
    rng = _rng(seed, _STREAM_IDENTITY, identity)
    tone = rng.uniform(0.0, len(_SKIN_PALETTE) - 1.0)
    lo = math.floor(tone)
    hi = min(lo + 1, len(_SKIN_PALETTE) - 1)
    skin = _SKIN_PALETTE[lo] + (tone - lo) * (_SKIN_PALETTE[hi] - _SKIN_PALETTE[lo])
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0.05, 1.0)
    lip = np.clip(skin * np.array([0.80, 0.52, 0.52]) * rng.uniform(0.85, 1.05), 0.03, 1.0)
    hair_idx = int(rng.choice(len(_HAIR_PALETTE), p=_HAIR_WEIGHTS))
    hair = np.clip(np.array(_HAIR_PALETTE[hair_idx]) * rng.uniform(0.8, 1.2), 0.0, 1.0)
    iris = np.array(_IRIS_PALETTE[int(rng.integers(len(_IRIS_PALETTE)))]) * rng.uniform(0.8, 1.2)
    style = int(rng.integers(HAIR_STYLES))
    return IdentityParams(
        identity=identity,
        face_width=float(rng.uniform(55.0, 66.0)),
        face_aspect=float(rng.uniform(1.18, 1.42)),
        jaw=float(rng.uniform(0.55, 0.95)),
        skin=_color(skin),
        eye_spacing=float(rng.uniform(0.36, 0.46)),
        eye_height=float(rng.uniform(0.08, 0.18)),
        eye_size=float(rng.uniform(0.16, 0.22)),
        iris=_color(np.clip(iris, 0, 1)),
        nose_length=float(rng.uniform(0.18, 0.30)),
        nose_width=float(rng.uniform(0.13, 0.20)),
        mouth_width=float(rng.uniform(0.30, 0.42)),
        mouth_height=float(rng.uniform(0.44, 0.55)),
        lip_thickness=float(rng.uniform(0.75, 1.3)),
        lip=_color(lip),
        brow_thickness=float(rng.uniform(0.32, 0.55)),
        brow_arch=float(rng.uniform(0.0, 1.0)),
        hair=_color(hair),
        hair_style=style,
        hair_volume=float(rng.uniform(1.03, 1.14)),
        hairline=float(rng.uniform(0.52, 0.66)),
        ear_size=float(rng.uniform(0.85, 1.15)),
        glasses=bool(rng.random() < 0.1),
        beard=bool(rng.random() < 0.1),
    )


def _color(values: Sequence[float] | np.ndarray) -> Color:
    return (float(values[0]), float(values[1]), float(values[2]))


# --------------------------------------------------------------------------------------------
# Drawing helpers (uint8 canvases, anti-aliased, sub-pixel coordinates)
# --------------------------------------------------------------------------------------------


def _px(points: np.ndarray) -> np.ndarray:
    """Float ``(N, 2)`` points -> int32 ``(N, 1, 2)`` in OpenCV's shifted fixed point."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _c255(color: Sequence[float]) -> tuple[float, ...]:
    return tuple(min(max(float(c), 0.0), 1.0) * 255.0 for c in color)


def _poly(img: np.ndarray, points: np.ndarray, color: Sequence[float] | float) -> None:
    """Fill a polygon; ``color`` is RGB in [0, 1] (or a scalar 0..255 for 1-channel maps)."""
    col = _c255(color) if isinstance(color, tuple) else float(color)
    cv2.fillPoly(img, [_px(points)], col, cv2.LINE_AA, _SHIFT)


def _line(img: np.ndarray, points: np.ndarray, color: Sequence[float] | float, thickness: float) -> None:
    """Draw an open polyline of thickness ``thickness`` (>= 1 px)."""
    col = _c255(color) if isinstance(color, tuple) else float(color)
    cv2.polylines(img, [_px(points)], False, col, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def _ellipse(
    img: np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    color: Sequence[float] | float,
    angle: float = 0.0,
    thickness: float = -1,
    arc: tuple[float, float] = (0.0, 360.0),
) -> None:
    """Draw a (filled when ``thickness < 0``) ellipse or elliptic arc."""
    col = _c255(color) if isinstance(color, tuple) else float(color)
    c = (round(center[0] * _ONE), round(center[1] * _ONE))
    ax = (max(1, round(axes[0] * _ONE)), max(1, round(axes[1] * _ONE)))
    th = -1 if thickness < 0 else max(1, round(thickness))
    cv2.ellipse(img, c, ax, angle, arc[0], arc[1], col, th, cv2.LINE_AA, _SHIFT)


def _curve(x0: float, x1: float, y: Callable[[np.ndarray], np.ndarray], n: int = 17) -> np.ndarray:
    """``(n, 2)`` points of ``y(u)`` for ``u`` in [-1, 1] mapped linearly onto x0..x1."""
    u = np.linspace(-1.0, 1.0, n)
    return np.stack([x0 + (u + 1.0) * 0.5 * (x1 - x0), y(u)], axis=1)


def _shade(color: Color, factor: float | Sequence[float]) -> Color:
    f = np.broadcast_to(np.asarray(factor, dtype=np.float64), (3,))
    return _color(np.clip(np.asarray(color) * f, 0.0, 1.0))


# --------------------------------------------------------------------------------------------
# The face
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Geometry:
    """Face geometry in canvas pixels for one render (scale ``k`` already applied)."""

    k: float
    cx: float
    cy: float
    a: float
    b: float
    width: int
    height: int

    def x(self, frac: float) -> float:
        return self.cx + frac * self.a

    def y(self, frac: float) -> float:
        return self.cy + frac * self.b


def _geometry(ident: IdentityParams, k: float) -> _Geometry:
    """Canvas just large enough for hair, ears and neck: 2.6 a wide, 2.9 b high (times k)."""
    a, b = ident.face_width * k, ident.b * k
    return _Geometry(k=k, cx=1.3 * a, cy=1.25 * b, a=a, b=b, width=math.ceil(2.6 * a),
                     height=math.ceil(2.9 * b))


def _face_outline(g: _Geometry, jaw: float, n: int = 72) -> np.ndarray:
    """``(n, 2)`` outline of the face: an ellipse whose lower half narrows towards the chin."""
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    s, c = np.sin(theta), np.cos(theta)
    w = np.where(s > 0, 1.0 - (1.0 - jaw) * s**2, 1.0)
    return np.stack([g.cx + g.a * c * w, g.cy + g.b * s], axis=1)


def _hair_mask(g: _Geometry, ident: IdentityParams, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 coverage of the hair cap over the head (soft at the hairline).

    ``xx``/``yy`` are broadcastable pixel coordinates of shape ``(1, W)``/``(H, 1)``.
    """
    cap = np.zeros((g.height, g.width), np.uint8)
    v = ident.hair_volume
    _ellipse(cap, (g.cx, g.cy - 0.04 * g.b), (g.a * (v + 0.02), g.b * v), 255.0)
    u = (xx - g.cx) / g.a
    style = ident.hair_style
    if style == 1:  # fringe
        line = g.cy - g.b * 0.36 + g.b * 0.12 * u**2 + g.b * 0.025 * np.sin(u * 13.0)
    elif style == 4:  # side part
        line = g.cy - g.b * (ident.hairline - 0.12 * u) + g.b * 0.2 * u**2
    elif style == 3:  # buzz cut: high hairline
        line = g.cy - g.b * (ident.hairline + 0.08) + g.b * 0.25 * u**2
    else:  # short / long
        line = g.cy - g.b * ident.hairline + g.b * 0.28 * u**2
    if style == 2:  # long hair also covers the sides of the face down to the jaw
        side = (np.abs(u) > 0.8) & (yy < g.cy + 0.55 * g.b)
        line = np.where(side, yy + 10.0 * g.k, line)
    soft = np.clip((line - yy) / (2.0 * g.k) + 0.5, 0.0, 1.0)
    mask = cap.astype(np.float32) / 255.0 * soft.astype(np.float32)
    return mask * (0.5 if style == 3 else 1.0)


def _draw_back(img: np.ndarray, alpha: np.ndarray, g: _Geometry, ident: IdentityParams) -> None:
    """Long hair behind the head, the neck and the ears (drawn before the face oval)."""
    if ident.hair_style == 2:
        hair = _shade(ident.hair, 0.8)
        for target, col in ((img, hair), (alpha, 255.0)):
            _ellipse(target, (g.cx, g.cy - 0.05 * g.b), (g.a * 1.22, g.b * 1.12), col)
            _poly(target, np.array([[g.x(-1.22), g.cy], [g.x(1.22), g.cy], [g.x(1.1), g.y(1.05)],
                                    [g.x(-1.1), g.y(1.05)]]), col)
    neck = np.array([[g.x(-0.48), g.y(0.4)], [g.x(0.48), g.y(0.4)], [g.x(0.52), g.y(1.45)],
                     [g.cx, g.y(1.6)], [g.x(-0.52), g.y(1.45)]])
    _poly(img, neck, _shade(ident.skin, 0.78))
    _poly(alpha, neck, 255.0)
    ey = g.y(-ident.eye_height) + 0.22 * g.b
    for side in (-1.0, 1.0):
        c = (g.cx + side * g.a * 0.96, ey)
        axes = (0.17 * g.a * ident.ear_size, 0.27 * g.b * ident.ear_size)
        _ellipse(img, c, axes, _shade(ident.skin, 0.9), angle=side * 8.0)
        _ellipse(alpha, c, axes, 255.0, angle=side * 8.0)
        _ellipse(img, (c[0] + side * 0.03 * g.a, c[1]), (axes[0] * 0.5, axes[1] * 0.6), _shade(ident.skin, 0.7))


def _draw_eye(
    img: np.ndarray, shadow: np.ndarray, g: _Geometry, ident: IdentityParams, expr: ExpressionParams, side: float
) -> None:
    """One eye: socket shadow, white, clipped iris + pupil + highlight, lash line, lower lid."""
    ex = g.cx + side * ident.eye_spacing * g.a
    ey = g.y(-ident.eye_height)
    ew = ident.eye_size * g.a
    eh = max(0.12 * ew, ew * 0.46 * expr.eye_open)
    _ellipse(shadow, (ex, ey - 0.25 * ew), (ew * 1.55, ew * 1.05), 120.0)
    x0, x1 = int(max(0, ex - 2 * ew)), int(min(g.width, ex + 2 * ew + 1))
    y0, y1 = int(max(0, ey - 2 * ew)), int(min(g.height, ey + 2 * ew + 1))
    roi = img[y0:y1, x0:x1]
    white = np.zeros(roi.shape[:2], np.uint8)
    ctr = (ex - x0, ey - y0)
    _ellipse(white, ctr, (ew, eh), 255.0)
    iris = roi.copy()
    _ellipse(iris, ctr, (ew, eh), (0.86, 0.84, 0.82))
    ir = 0.52 * ew
    _ellipse(iris, ctr, (ir, ir), ident.iris)
    _ellipse(iris, ctr, (ir * 0.45, ir * 0.45), (0.02, 0.02, 0.02))
    _ellipse(iris, (ctr[0] + 0.3 * ir, ctr[1] - 0.3 * ir), (ir * 0.18, ir * 0.18), (0.95, 0.95, 0.95))
    w = white.astype(np.float32)[..., None] / 255.0
    roi[:] = (iris * w + roi * (1.0 - w)).astype(np.uint8)
    lash = (0.08, 0.05, 0.04)
    _ellipse(img, (ex, ey), (ew * 1.04, eh * 1.05 + 0.5 * g.k), lash, thickness=2.2 * g.k, arc=(185.0, 355.0))
    _ellipse(img, (ex, ey), (ew, eh), _shade(ident.skin, 0.55), thickness=0.9 * g.k, arc=(20.0, 160.0))
    if expr.cheek_raise > 0.05:
        _ellipse(shadow, (ex, ey + eh + 0.25 * ew), (ew * 0.9, ew * 0.25), 255.0 - 70.0 * expr.cheek_raise)


def _draw_brow(
    img: np.ndarray,
    g: _Geometry,
    ident: IdentityParams,
    expr: ExpressionParams,
    side: float,
    value: float | None = None,
) -> None:
    """One eyebrow as a thick arched stroke; height and inner-end tilt come from the expression.

    Draws the brow colour, or the scalar ``value`` (for a 1-channel mask) when given.
    """
    ex = g.cx + side * ident.eye_spacing * g.a
    ew = ident.eye_size * g.a
    base = g.y(-ident.eye_height) - ew * (1.15 + 0.9 * expr.brow_raise)
    pull = 0.2 * ew * max(0.0, -expr.brow_inner)
    inner = (ex - side * (0.95 * ew - pull), base - 0.55 * ew * expr.brow_inner)
    outer = (ex + side * 1.3 * ew, base + 0.2 * ew)
    arch = ew * (0.15 + 0.35 * ident.brow_arch)
    u = np.linspace(0.0, 1.0, 11)
    xs = inner[0] + (outer[0] - inner[0]) * u
    ys = inner[1] + (outer[1] - inner[1]) * u - arch * 4.0 * u * (1.0 - u)
    thick = ident.brow_thickness * ew * (1.0 - 0.5 * u)
    top = np.stack([xs, ys - thick * 0.5], axis=1)
    bottom = np.stack([xs, ys + thick * 0.5], axis=1)[::-1]
    # brows are always clearly darker than the skin (also for blond or grey hair), so their position, the main cue of
    # anger, sadness, fear and surprise, survives the lighting, blur and noise of the scene
    skin = np.asarray(ident.skin)
    color = _color(np.minimum(np.asarray(ident.hair) * 0.7 + skin * 0.08, skin * 0.4))
    _poly(img, np.concatenate([top, bottom]), color if value is None else value)


def _draw_nose(
    img: np.ndarray, shadow: np.ndarray, g: _Geometry, ident: IdentityParams, expr: ExpressionParams
) -> None:
    """Nose: side shadow along the ridge, shadow under the tip, nostrils, disgust wrinkles."""
    top_y = g.y(-ident.eye_height) + 0.1 * g.b
    tip_y = g.y(ident.nose_length)
    nw = ident.nose_width * g.a * (1.0 + 0.25 * expr.nose_wrinkle)
    _line(shadow, np.array([[g.cx + 0.12 * nw, top_y], [g.cx + 0.45 * nw, tip_y - 0.3 * nw]]), 150.0, 0.25 * nw)
    _ellipse(shadow, (g.cx, tip_y + 0.25 * nw), (nw * 1.05, nw * 0.38), 130.0)
    nostril = _shade(ident.skin, 0.35)
    for side in (-1.0, 1.0):
        _ellipse(img, (g.cx + side * 0.5 * nw, tip_y + 0.1 * nw), (nw * 0.3, nw * 0.17), nostril, angle=side * 20)
    _ellipse(img, (g.cx, tip_y - 0.15 * nw), (nw * 0.45, nw * 0.3), _shade(ident.skin, 1.08))
    if expr.nose_wrinkle > 0.05:
        level = 255.0 - 110.0 * expr.nose_wrinkle
        for i in range(3):
            y = top_y + (0.15 + 0.12 * i) * (tip_y - top_y)
            _line(shadow, _curve(g.cx - 0.8 * nw, g.cx + 0.8 * nw, lambda u, y=y: y - 0.1 * nw * (1 - u**2)), level,
                  max(1.0, 0.12 * nw))
    if expr.cheek_raise > 0.05:  # nasolabial folds
        for side in (-1.0, 1.0):
            pts = np.array([[g.cx + side * 1.2 * nw, tip_y - 0.1 * nw],
                            [g.cx + side * 1.9 * nw, tip_y + 0.9 * nw],
                            [g.cx + side * 2.3 * nw, g.y(ident.mouth_height) + 0.1 * g.b]])
            _line(shadow, pts, 255.0 - 90.0 * expr.cheek_raise, 0.25 * nw)


def _draw_mouth(
    img: np.ndarray, shadow: np.ndarray, g: _Geometry, ident: IdentityParams, expr: ExpressionParams
) -> None:
    """Lips, opening (dark inside, optional teeth) and the lip line, bent by the expression."""
    base_w = ident.mouth_width * g.a
    w = base_w * expr.mouth_width
    x0, y0 = g.cx, g.y(ident.mouth_height)
    opening = max(0.0, expr.mouth_open) * 0.95 * base_w
    t_up = 0.11 * base_w * ident.lip_thickness * (1.0 - 0.6 * expr.lip_press)
    t_lo = 0.15 * base_w * ident.lip_thickness * (1.0 - 0.6 * expr.lip_press)
    bend = 0.28 * w * expr.mouth_curve

    def mid(u: np.ndarray) -> np.ndarray:
        return y0 - bend * u**2 + 0.35 * bend * (1 - u**2) * (expr.mouth_curve > 0)

    def up_in(u: np.ndarray) -> np.ndarray:
        return mid(u) - (0.35 * opening + 0.4 * t_up * expr.upper_lip_raise) * (1 - u**2) ** 0.8

    def lo_in(u: np.ndarray) -> np.ndarray:
        return mid(u) + 0.65 * opening * (1 - u**2) ** 0.8

    def up_out(u: np.ndarray) -> np.ndarray:
        cupid = 1.0 - 0.35 * np.exp(-((u / 0.18) ** 2))
        return up_in(u) - t_up * (1 - u**2) ** 0.5 * cupid

    def lo_out(u: np.ndarray) -> np.ndarray:
        return lo_in(u) + t_lo * (1 - u**2) ** 0.5

    xl, xr = x0 - w, x0 + w
    _ellipse(shadow, (x0, lo_out(np.zeros(1))[0] + 0.6 * t_lo), (w * 0.6, t_lo * 0.8), 150.0)
    inside = np.concatenate([_curve(xl, xr, up_in), _curve(xl, xr, lo_in)[::-1]])
    _poly(img, inside, (0.32, 0.1, 0.1))
    if expr.teeth > 0.05 and opening > 0.5 * g.k:
        depth = 0.45 * opening * min(1.0, expr.teeth) + 0.4 * t_up * expr.upper_lip_raise

        def teeth_lo(u: np.ndarray) -> np.ndarray:
            return up_in(u) + depth * (1 - u**2) ** 0.8

        _poly(img, np.concatenate([_curve(xl, xr, up_in), _curve(xl, xr, teeth_lo)[::-1]]), (0.9, 0.88, 0.82))
    _poly(img, np.concatenate([_curve(xl, xr, up_out), _curve(xl, xr, up_in)[::-1]]), _shade(ident.lip, 0.9))
    _poly(img, np.concatenate([_curve(xl, xr, lo_in), _curve(xl, xr, lo_out)[::-1]]), ident.lip)
    _line(img, _curve(xl - 0.04 * w, xr + 0.04 * w, mid if opening < 1.0 * g.k else up_in),
          (0.2, 0.08, 0.08), 1.3 * g.k)


def _draw_beard(img: np.ndarray, g: _Geometry, ident: IdentityParams, face: np.ndarray) -> None:
    """A short beard along the jaw and chin plus a moustache, blended softly into the skin."""
    beard = face.copy()
    _ellipse(beard, (g.cx, g.y(ident.nose_length) - 0.2 * g.b), (0.8 * g.a, 0.62 * g.b), 0.0)
    beard[: int(g.y(ident.nose_length))] = 0
    mw = ident.mouth_width * g.a
    top = g.y(ident.nose_length) + 0.08 * g.b
    _poly(beard, np.array([[g.cx - 1.1 * mw, top + 0.12 * g.b], [g.cx - 0.2 * mw, top],
                           [g.cx + 0.2 * mw, top], [g.cx + 1.1 * mw, top + 0.12 * g.b],
                           [g.cx + 0.8 * mw, top + 0.08 * g.b], [g.cx - 0.8 * mw, top + 0.08 * g.b]]), 255.0)
    soft = cv2.GaussianBlur(beard, (0, 0), 0.05 * g.a).astype(np.float32) / 255.0
    cover = (soft * (face.astype(np.float32) / 255.0) * 0.6)[..., None]
    hair = np.array(_c255(ident.hair), np.float32)
    img[:] = (img * (1.0 - cover) + hair * cover).astype(np.uint8)


def _draw_glasses(img: np.ndarray, g: _Geometry, ident: IdentityParams) -> None:
    """Rimmed glasses around both eyes with a bridge."""
    ew = ident.eye_size * g.a
    ey = g.y(-ident.eye_height)
    frame = (0.1, 0.08, 0.08)
    for side in (-1.0, 1.0):
        ex = g.cx + side * ident.eye_spacing * g.a
        _ellipse(img, (ex, ey), (ew * 1.45, ew * 1.05), frame, thickness=1.6 * g.k)
    inner = ident.eye_spacing * g.a - ew * 1.45
    _line(img, np.array([[g.cx - inner, ey - 0.2 * ew], [g.cx + inner, ey - 0.2 * ew]]), frame, 1.6 * g.k)


#: the side light's gain on the face stays within [SIDE_LIGHT_FLOOR, 2 − SIDE_LIGHT_FLOOR]
SIDE_LIGHT_FLOOR = 0.15
#: ``side_light`` of a scene is uniform in [−SIDE_LIGHT_MAX, SIDE_LIGHT_MAX]
SIDE_LIGHT_MAX = 1.2


def _shading(g: _Geometry, xx: np.ndarray, yy: np.ndarray, side_light: float) -> np.ndarray:
    """``(H, W)`` float32 multiplicative shading: radial fall-off of the head + side light.

    The side light is a gain ``1 + side_light · dx`` across the face (``dx`` = −1 at the left edge of the oval,
    +1 at the right), clipped to ``[SIDE_LIGHT_FLOOR, 2 − SIDE_LIGHT_FLOOR]``: at ``|side_light| = 1.2`` one
    cheek is lit at 1.85× and the other falls to 0.15×, a hard studio side light.
    """
    dx = (xx - g.cx) / g.a
    dy = (yy - g.cy) / g.b
    r2 = dx * dx + dy * dy
    radial = np.clip(1.1 - 0.32 * r2 * np.sqrt(r2), 0.6, 1.1)
    side = np.clip(1.0 + side_light * dx, SIDE_LIGHT_FLOOR, 2.0 - SIDE_LIGHT_FLOOR)
    return (radial * side).astype(np.float32)


def render_face(
    ident: IdentityParams, expr: ExpressionParams, k: float = 1.0, side_light: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a head on a transparent canvas; ``k`` scales the identity's canonical lengths.

    With face-oval half-axes ``a = k * face_width`` and ``b = k * face_width * face_aspect``,
    returns ``(rgb, alpha)``: float32 arrays of shape ``(H, W, 3)`` (RGB in [0, 1], *not*
    premultiplied) and ``(H, W)`` (coverage in [0, 1]) with ``H = ceil(2.9 b)``,
    ``W = ceil(2.6 a)``; the oval centre is at ``(1.3 a, 1.25 b)``. ``side_light`` in
    [-1.2, 1.2] brightens one side of the face and darkens the other (see :func:`_shading`).
    """
    g = _geometry(ident, k)
    img = np.zeros((g.height, g.width, 3), np.uint8)
    alpha = np.zeros((g.height, g.width), np.uint8)
    shadow = np.full((g.height, g.width), 255, np.uint8)
    yy, xx = (v.astype(np.float32) for v in np.ogrid[0 : g.height, 0 : g.width])  # (H, 1), (1, W)
    _draw_back(img, alpha, g, ident)
    outline = _face_outline(g, ident.jaw)
    face = np.zeros_like(alpha)
    _poly(face, outline, 255.0)
    _poly(img, outline, ident.skin)
    np.maximum(alpha, face, out=alpha)
    if ident.beard:
        _draw_beard(img, g, ident, face)
    for side in (-1.0, 1.0):
        _draw_eye(img, shadow, g, ident, expr, side)
    _draw_nose(img, shadow, g, ident, expr)
    _draw_mouth(img, shadow, g, ident, expr)
    if expr.brow_raise > 0.4:  # forehead wrinkles
        level = 255.0 - 120.0 * (expr.brow_raise - 0.4)
        for i in range(3):
            y = g.y(-ident.eye_height) - (0.3 + 0.08 * i) * g.b
            _line(shadow, _curve(g.x(-0.4), g.x(0.4), lambda u, y=y: y - 0.03 * g.b * (1 - u**2)), level, 1.2 * g.k)
    hair = _hair_mask(g, ident, xx, yy)
    rgb = img.astype(np.float32) / 255.0
    sh = cv2.GaussianBlur(shadow, (0, 0), 0.06 * g.a).astype(np.float32) / 255.0
    rgb *= (sh * _shading(g, xx, yy, side_light))[..., None]
    # brows after the soft shadows; hair over everything on top of the head
    brows = np.zeros_like(img)
    bmask = np.zeros_like(alpha)
    for side in (-1.0, 1.0):
        _draw_brow(brows, g, ident, expr, side)
        _draw_brow(bmask, g, ident, expr, side, 230.0)
    bm = cv2.GaussianBlur(bmask, (0, 0), 0.6 * g.k).astype(np.float32)[..., None] / 255.0
    rgb = rgb * (1.0 - bm) + brows.astype(np.float32) / 255.0 * bm
    hair_rgb = np.asarray(ident.hair, np.float32) * _shading(g, xx, yy + 0.3 * g.b, side_light)[..., None]
    rgb = rgb * (1.0 - hair[..., None]) + hair_rgb * hair[..., None]
    if ident.glasses:
        g8 = (np.clip(rgb, 0, 1) * 255.0).astype(np.uint8)
        _draw_glasses(g8, g, ident)
        rgb = g8.astype(np.float32) / 255.0
    a = np.maximum(alpha.astype(np.float32) / 255.0, hair)
    return np.clip(rgb, 0.0, 1.0), a


# --------------------------------------------------------------------------------------------
# Scenes: background, pose, lighting, camera
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    """Where the face lands in the image: oval centre (u, v), face height in px, angle in deg."""

    u: float
    v: float
    face_h: float
    angle: float


@dataclass(frozen=True)
class _Camera:
    """Photometric nuisance applied to the whole image."""

    light_dir: float  # radians
    light_strength: float  # 0 .. 0.8: gain 1 ± 2·strength·d across the image (d = −0.5 .. 0.5 along light_dir)
    contrast: float
    brightness: float
    cast: Color
    noise: float  # gaussian sigma in [0, 1] units
    blur: float  # gaussian sigma in px (0 = none)
    side_light: float  # shading of the face itself


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Cluttered background, ``(H, W, 3)`` uint8 RGB: gradient, texture, random shapes."""
    gh, gw = height // 24 + 2, width // 24 + 2
    c1, c2 = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    phi = rng.uniform(0, 2 * np.pi)
    gy, gx = np.mgrid[0:gh, 0:gw]
    t = np.clip((gx * math.cos(phi) + gy * math.sin(phi)) / max(gw, gh) * 0.5 + 0.5, 0, 1)
    small = c1 + (c2 - c1) * t[..., None] + rng.uniform(-1, 1, (gh, gw, 3)) * rng.uniform(0.05, 0.2)
    small = (np.clip(small, 0, 1) * 255).astype(np.float32)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    scale = max(width, height)
    for _ in range(int(rng.integers(6, 16))):
        color = _color(rng.uniform(0, 1, 3))
        kind = int(rng.integers(5))
        center = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height])
        if kind == 0:  # rotated rectangle
            size = rng.uniform(0.05, 0.45, 2) * scale
            box = cv2.boxPoints(((float(center[0]), float(center[1])), (float(size[0]), float(size[1])),
                                 float(rng.uniform(0, 180))))
            _poly(img, box, color)
        elif kind == 1:  # thick line
            end = center + rng.normal(0, 0.4, 2) * scale
            _line(img, np.array([center, end]), color, rng.uniform(1, 0.04 * scale))
        elif kind == 2:  # triangle / quad
            n = int(rng.integers(3, 5))
            pts = center + rng.normal(0, 0.15, (n, 2)) * scale
            _poly(img, pts, color)
        elif kind == 3:  # large disc (too big and too plain to look like an eye)
            r = rng.uniform(0.12, 0.35) * scale
            _ellipse(img, (float(center[0]), float(center[1])), (r, r * rng.uniform(0.6, 1.0)), color,
                     angle=float(rng.uniform(0, 180)))
        else:  # a band of parallel stripes
            _stripes(img, center, rng.uniform(0, np.pi), rng.uniform(5, 14), rng.uniform(0.1, 0.5) * scale,
                     rng.uniform(0.1, 0.6) * scale, color)
    sigma = rng.uniform(0.0, 1.5)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return img


def _stripes(img: np.ndarray, center: np.ndarray, angle: float, period: float, length: float, extent: float,
             color: Color) -> None:
    """Parallel line segments (direction ``angle``) spaced ``period`` px across ``extent`` px."""
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    for off in np.arange(-extent / 2, extent / 2, period):
        mid = center + n * off
        _line(img, np.array([mid - d * length / 2, mid + d * length / 2]), color, max(1.0, period * 0.4))


def _random_pose(rng: np.random.Generator, ident: IdentityParams, width: int, height: int) -> _Pose:
    """Face height 35-70 % of the image height, rotation +-10 deg, oval fully inside."""
    face_h = rng.uniform(0.35, 0.70) * height
    angle = rng.uniform(-10.0, 10.0)
    ex, ey = _oval_extent(ident, face_h, angle)
    u = rng.uniform(min(ex + 2, width / 2), max(width - ex - 2, width / 2))
    v = rng.uniform(min(ey + 2, height / 2), max(height - ey - 2, height / 2))
    return _Pose(u=float(u), v=float(v), face_h=float(face_h), angle=float(angle))


def _jitter_pose(rng: np.random.Generator, pose: _Pose, ident: IdentityParams, width: int, height: int) -> _Pose:
    """Small frame-to-frame head motion of a video sequence, kept inside the image."""
    face_h = pose.face_h * rng.uniform(0.98, 1.02)
    angle = pose.angle + rng.uniform(-1.0, 1.0)
    ex, ey = _oval_extent(ident, face_h, angle)
    u = float(np.clip(pose.u + rng.normal(0, 0.006 * width), min(ex + 1, width / 2), max(width - ex - 1, width / 2)))
    v = float(
        np.clip(pose.v + rng.normal(0, 0.006 * height), min(ey + 1, height / 2), max(height - ey - 1, height / 2))
    )
    return _Pose(u=u, v=v, face_h=float(face_h), angle=float(angle))


def _oval_extent(ident: IdentityParams, face_h: float, angle: float) -> tuple[float, float]:
    """Half-extents (x, y) in px of the rotated face oval whose height is ``face_h``."""
    b = face_h / 2.0
    a = b / ident.face_aspect
    t = math.radians(angle)
    ex = math.hypot(a * math.cos(t), b * math.sin(t))
    ey = math.hypot(a * math.sin(t), b * math.cos(t))
    return ex, ey


def _random_camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        light_dir=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.8)),
        contrast=float(rng.uniform(0.75, 1.15)),
        brightness=float(rng.uniform(-0.12, 0.12)),
        cast=_color(rng.uniform(0.88, 1.12, 3)),
        noise=float(rng.uniform(0.004, 0.025)),
        blur=float(rng.uniform(0.0, 1.0)) if rng.random() < 0.6 else 0.0,
        side_light=float(rng.uniform(-SIDE_LIGHT_MAX, SIDE_LIGHT_MAX)),
    )


_CLEAN_CAMERA = _Camera(0.0, 0.0, 1.0, 0.0, (1.0, 1.0, 1.0), 0.0, 0.0, 0.0)


def _clean_pose(ident: IdentityParams, width: int, height: int) -> _Pose:
    """Nuisance-free placement: centred, upright, face height 55 % of the image height."""
    return _Pose(u=width / 2.0, v=height / 2.0, face_h=0.55 * height, angle=0.0)


def _draw_torso(img: np.ndarray, m: np.ndarray, g: _Geometry, color: Color) -> None:
    """Shoulders/clothing (in image space; extended far below so it is never cut off)."""
    far = g.cy + 30.0 * g.b
    pts = np.array([
        [g.x(-0.45), g.y(1.25)], [g.x(-1.5), g.y(1.45)], [g.x(-2.0), g.y(1.8)], [g.x(-2.3), far],
        [g.x(2.3), far], [g.x(2.0), g.y(1.8)], [g.x(1.5), g.y(1.45)], [g.x(0.45), g.y(1.25)],
    ])
    warped = pts @ m[:, :2].T + m[:, 2]
    _poly(img, warped, color)


def _compose(
    background: np.ndarray,
    ident: IdentityParams,
    expr: ExpressionParams,
    pose: _Pose,
    camera: _Camera,
    clothing: Color,
    rng: np.random.Generator | None,
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Render one image. Returns RGB uint8 ``(H, W, 3)`` and the face-oval box (x0, y0, x1, y1)."""
    height, width = background.shape[:2]
    k = pose.face_h / (2.0 * ident.b)
    g = _geometry(ident, k)
    m = cv2.getRotationMatrix2D((g.cx, g.cy), pose.angle, 1.0)
    m[:, 2] += (pose.u - g.cx, pose.v - g.cy)
    img = background.copy()
    _draw_torso(img, m, g, clothing)
    rgb, alpha = render_face(ident, expr, k, camera.side_light)
    rgba = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=2)
    warped = cv2.warpAffine(rgba, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out = img.astype(np.float32) * np.float32(1.0 / 255.0)
    out *= 1.0 - warped[..., 3:]
    out += warped[..., :3]
    out = _apply_camera(out, camera, rng)
    ex, ey = _oval_extent(ident, pose.face_h, pose.angle)
    return out, (pose.u - ex, pose.v - ey, pose.u + ex, pose.v + ey)


def _apply_camera(img: np.ndarray, cam: _Camera, rng: np.random.Generator | None) -> np.ndarray:
    """Lighting gradient, contrast/brightness, colour cast, blur and noise: float32 -> uint8 RGB.

    ``img`` is float32 ``(H, W, 3)`` in [0, 1] and is modified in place.
    """
    height, width = img.shape[:2]
    if cam.light_strength > 0:
        yy, xx = np.ogrid[0:height, 0:width]
        d = ((xx - width / 2) * math.cos(cam.light_dir) + (yy - height / 2) * math.sin(cam.light_dir)) / max(
            width, height)
        img *= (1.0 + 2.0 * cam.light_strength * d).astype(np.float32)[..., None]
    cast = np.asarray(cam.cast, np.float32)
    img *= cast * np.float32(cam.contrast)
    img += cast * np.float32(0.5 - 0.5 * cam.contrast + cam.brightness)
    if cam.blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    if cam.noise > 0 and rng is not None:
        # luminance noise per pixel + coarser chroma noise (cheaper than full-resolution RGB noise)
        img += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(cam.noise)
        chroma = rng.standard_normal(((height + 1) // 2, (width + 1) // 2, 3), dtype=np.float32)
        img += cv2.resize(chroma, (width, height), interpolation=cv2.INTER_LINEAR) * np.float32(cam.noise * 0.5)
    img *= 255.0
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """One rendered image: RGB uint8 ``(H, W, 3)``, the true face box and its labels."""

    image: np.ndarray
    face_box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the face oval, px
    identity: int
    expression: str  # one of EXPRESSIONS or "Neutral"
    intensity: float  # 0 neutral .. ~1 peak


def _expression_index(expression: str) -> int:
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
    return EXPRESSIONS.index(expression)


def _jittered_peak(rng: np.random.Generator, expression: str) -> ExpressionParams:
    """The expression's peak with a random intensity and small random offsets."""
    peak = NEUTRAL.blend(EXPRESSION_PEAKS[expression], float(rng.uniform(0.75, 1.1)))
    values = asdict(peak)
    for key in values:
        values[key] += float(rng.normal(0.0, 0.06))
    values["mouth_open"] = max(0.0, values["mouth_open"])
    values["eye_open"] = max(0.3, values["eye_open"])
    values["mouth_width"] = max(0.5, values["mouth_width"])
    return ExpressionParams(**values)


def sequence_length(seed: int, identity: int, expression: str, frames: tuple[int, int]) -> int:
    """Number of frames of the (identity, expression) sequence, drawn in ``[frames[0], frames[1]]``."""
    rng = _rng(seed, _STREAM_SEQUENCE, identity, _expression_index(expression))
    return int(rng.integers(frames[0], frames[1] + 1))


def render_expression_sequence(
    seed: int,
    identity: int,
    expression: str,
    *,
    frames: tuple[int, int] = (6, 9),
    image_size: tuple[int, int] = (320, 240),
    nuisance: bool = True,
) -> list[Rendered]:
    """All frames of one Oulu-style sequence (neutral -> apex, see :func:`_intensity`); image_size is (W, H).

    The scene (background, clothing, lighting, head position, the person's hair) is fixed per
    sequence, as in a video; every frame adds a little head motion and fresh sensor noise.
    """
    _check_nonneg(seed=seed, identity=identity)
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be (min, max) with 1 <= min <= max, got {frames}")
    width, height = image_size
    ident = identity_params(seed, identity)
    seq = _expression_index(expression)
    rng = _rng(seed, _STREAM_SEQUENCE, identity, seq)
    n = int(rng.integers(frames[0], frames[1] + 1))
    peak = _jittered_peak(rng, expression)
    background, pose, camera, clothing, ident = _scene(rng, ident, width, height, nuisance)
    out = []
    for f in range(n):
        t = _intensity(f, n)
        frng = _rng(seed, _STREAM_FRAME, identity, seq, f)
        fpose = _jitter_pose(frng, pose, ident, width, height) if nuisance and f > 0 else pose
        image, box = _compose(background, ident, NEUTRAL.blend(peak, t), fpose, camera, clothing,
                              frng if nuisance else None)
        out.append(Rendered(image, box, identity, expression, t))
    return out


APEX_FRAMES = 3
"""Frames at the end of a sequence held near the apex, as the last frames of a posed Oulu-CASIA clip (the frames
the protocol labels): an expression of intensity ≈ 0.4 is hard to tell from neutral even by eye."""


def _intensity(frame: int, n: int) -> float:
    """Expression intensity of ``frame`` (0-based) of an ``n``-frame sequence.

    Neutral at frame 0, an ease-in onset that reaches 0.9 at frame ``n − APEX_FRAMES``, then held near the apex:
    the last three frames are 0.9, 0.95 and 1.0 (9 frames: 0, .025, .1, .225, .4, .625, .9, .95, 1). A sequence
    shorter than ``APEX_FRAMES + 1`` frames keeps its neutral first frame and is near the apex after it.
    """
    if n == 1:
        return 1.0
    onset = max(n - APEX_FRAMES, 1)
    if frame < onset:
        return 0.9 * (frame / onset) ** 2
    return 1.0 - 0.05 * (n - 1 - frame)


#: the session's hair colour is the identity's times a factor in [1 − HAIR_TONE_RANGE, 1 + HAIR_TONE_RANGE]
HAIR_TONE_RANGE = 0.5
#: standard deviation of the session's hairline shift (fraction of the face half-height ``b``)
HAIRLINE_JITTER = 0.05


def _session_look(rng: np.random.Generator, ident: IdentityParams) -> IdentityParams:
    """The person as they look in one session: hair style redrawn, hair colour and hairline varied.

    What stays is the face itself (outline, skin, eyes, nose, mouth, brows, ears, glasses, beard): what a face
    recognition model should use. Without this, the hair (a large, high-contrast region of every crop) gives the
    identity away to raw pixels.
    """
    style = int(rng.integers(HAIR_STYLES))
    tone = rng.uniform(1.0 - HAIR_TONE_RANGE, 1.0 + HAIR_TONE_RANGE)
    hairline = float(np.clip(ident.hairline + rng.normal(0.0, HAIRLINE_JITTER), 0.45, 0.72))
    return replace(ident, hair_style=style, hair=_color(np.clip(np.asarray(ident.hair) * tone, 0.0, 1.0)),
                   hairline=hairline)


def _scene(rng: np.random.Generator, ident: IdentityParams, width: int, height: int, nuisance: bool
           ) -> tuple[np.ndarray, _Pose, _Camera, Color, IdentityParams]:
    """One scene: background ``(H, W, 3)`` uint8, head pose, camera, clothing colour and the session's look of the
    person (:func:`_session_look`); plain, and the identity's own look, when there is no nuisance."""
    if not nuisance:
        background = np.full((height, width, 3), 128, np.uint8)
        return background, _clean_pose(ident, width, height), _CLEAN_CAMERA, (0.4, 0.4, 0.45), ident
    background = _background(rng, width, height)
    pose, camera = _random_pose(rng, ident, width, height), _random_camera(rng)
    clothing = _color(rng.uniform(0.05, 0.9, 3))
    return background, pose, camera, clothing, _session_look(rng, ident)


_ID_SET_EXPRESSIONS = ("Neutral", *EXPRESSIONS)
_ID_SET_WEIGHTS = (0.3,) + (0.7 / len(EXPRESSIONS),) * len(EXPRESSIONS)


def render_identity_image(
    seed: int, identity: int, index: int, *, image_size: tuple[int, int] = (250, 250), nuisance: bool = True
) -> Rendered:
    """Image ``index`` of a CASIA-WebFace-style identity: random expression, scene and camera."""
    _check_nonneg(seed=seed, identity=identity, index=index)
    width, height = image_size
    ident = identity_params(seed, identity)
    rng = _rng(seed, _STREAM_ID_IMAGE, identity, index)
    name = str(_ID_SET_EXPRESSIONS[int(rng.choice(len(_ID_SET_EXPRESSIONS), p=_ID_SET_WEIGHTS))])
    intensity = 0.0 if name == "Neutral" else float(rng.uniform(0.25, 1.0))
    expr = NEUTRAL if name == "Neutral" else NEUTRAL.blend(_jittered_peak(rng, name), intensity)
    background, pose, camera, clothing, ident = _scene(rng, ident, width, height, nuisance)
    image, box = _compose(background, ident, expr, pose, camera, clothing, rng if nuisance else None)
    return Rendered(image, box, identity, name, intensity)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB uint8 ``(H, W, 3)`` image (OpenCV/libjpeg, deterministic)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


# --------------------------------------------------------------------------------------------
# Dataset writers
# --------------------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    """What a generator wrote: image count, subject folder -> global identity, wall time."""

    kind: str  # "expression" or "identity"
    root: str
    seed: int
    image_size: tuple[int, int]  # (W, H)
    n_images: int = 0
    subjects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d


@dataclass(frozen=True)
class _ExpressionTask:
    root: str
    subject: str
    seed: int
    identity: int
    expressions: tuple[str, ...]
    frames: tuple[int, int]
    image_size: tuple[int, int]
    quality: int
    nuisance: bool


@dataclass(frozen=True)
class _IdentityTask:
    root: str
    subject: str
    seed: int
    identity: int
    n_images: int
    image_size: tuple[int, int]
    quality: int
    nuisance: bool


def _run_expression_task(task: _ExpressionTask) -> int:
    """Write all sequences of one subject; returns the number of images written."""
    count = 0
    for expression in task.expressions:
        folder = Path(task.root) / task.subject / expression
        folder.mkdir(parents=True, exist_ok=True)
        seq = render_expression_sequence(task.seed, task.identity, expression, frames=task.frames,
                                         image_size=task.image_size, nuisance=task.nuisance)
        for f, frame in enumerate(seq):
            (folder / f"{f:03d}.jpeg").write_bytes(encode_jpeg(frame.image, task.quality))
        count += len(seq)
    return count


def _run_identity_task(task: _IdentityTask) -> int:
    """Write all images of one identity; returns the number of images written."""
    folder = Path(task.root) / task.subject
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(task.n_images):
        r = render_identity_image(task.seed, task.identity, i, image_size=task.image_size, nuisance=task.nuisance)
        (folder / f"{i + 1:03d}.jpg").write_bytes(encode_jpeg(r.image, task.quality))
    return task.n_images


def _worker_init(parent: int) -> None:
    """A pool worker: one OpenCV thread, killed when ``parent`` (the stage) dies, even by SIGKILL."""
    die_with_parent(parent)
    cv2.setNumThreads(1)


def _run_tasks(
    fn: Callable[[object], int], tasks: Sequence[object], workers: int, progress: Callable[[int], None] | None
) -> int:
    """Run ``fn`` over ``tasks`` (in a spawn Pool when ``workers > 1``); report progress in the parent."""
    total = 0
    if workers > 1 and len(tasks) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(workers, len(tasks)), initializer=_worker_init, initargs=(os.getpid(),)) as pool:
            for n in pool.imap_unordered(fn, tasks, chunksize=1):
                total += n
                if progress is not None:
                    progress(n)
        return total
    for task in tasks:
        n = fn(task)
        total += n
        if progress is not None:
            progress(n)
    return total


def _prepare_root(root: Path) -> Path:
    """Create ``root``; refuse a file or a non-empty directory (ValueError)."""
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"demo dataset root must not exist or be empty: {root}")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _check_common(seed: int, first_identity: int, count: int, image_size: tuple[int, int], quality: int,
                  workers: int) -> None:
    _check_nonneg(seed=seed, first_identity=first_identity, count=count)
    if len(image_size) != 2 or min(image_size) < 48:
        raise ValueError(f"image_size must be (width, height), each >= 48, got {image_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")


def generate_expression_dataset(
    root: Path,
    *,
    seed: int,
    first_identity: int,
    n_subjects: int,
    expressions: Sequence[str] = EXPRESSIONS,
    frames: tuple[int, int] = (6, 9),
    image_size: tuple[int, int] = (320, 240),
    subject_format: str = "P{:03d}",
    quality: int = 95,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    nuisance: bool = True,
) -> DemoSummary:
    """Write an Oulu-CASIA-like expression set: ``<root>/P001/Anger/000.jpeg`` ...

    Subject ``i`` (folder ``subject_format.format(i + 1)``) is global identity
    ``first_identity + i``. Each (subject, expression) is one sequence of ``frames[0]..frames[1]``
    frames, neutral to peak. ``image_size`` is (width, height). ``nuisance=False`` renders a
    plain grey, centred, noise-free version (for tests and inspection).
    """
    start = time.perf_counter()
    _check_common(seed, first_identity, n_subjects, image_size, quality, workers)
    for e in expressions:
        _expression_index(e)
    if not 1 <= frames[0] <= frames[1]:
        raise ValueError(f"frames must be (min, max) with 1 <= min <= max, got {frames}")
    root = _prepare_root(root)
    subjects = {subject_format.format(i + 1): first_identity + i for i in range(n_subjects)}
    tasks = [
        _ExpressionTask(str(root), name, seed, ident, tuple(expressions), (int(frames[0]), int(frames[1])),
                        (int(image_size[0]), int(image_size[1])), int(quality), nuisance)
        for name, ident in subjects.items()
    ]
    n = _run_tasks(_run_expression_task, tasks, workers, progress)  # type: ignore[arg-type]
    return DemoSummary("expression", str(root), seed, (int(image_size[0]), int(image_size[1])), n, subjects,
                       time.perf_counter() - start)


def generate_identity_dataset(
    root: Path,
    *,
    seed: int,
    first_identity: int,
    n_identities: int,
    images_per_identity: int,
    image_size: tuple[int, int] = (250, 250),
    subject_format: str = "{:07d}",
    quality: int = 95,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    nuisance: bool = True,
) -> DemoSummary:
    """Write a CASIA-WebFace-like identity set: ``<root>/<subject_format(identity)>/001.jpg`` ...

    Identity ``i`` is global identity ``first_identity + i``; its images show random
    expressions (30 % neutral) under random scenes, poses and cameras.
    """
    start = time.perf_counter()
    _check_common(seed, first_identity, n_identities, image_size, quality, workers)
    _check_nonneg(images_per_identity=images_per_identity)
    root = _prepare_root(root)
    subjects = {subject_format.format(first_identity + i): first_identity + i for i in range(n_identities)}
    tasks = [
        _IdentityTask(str(root), name, seed, ident, int(images_per_identity),
                      (int(image_size[0]), int(image_size[1])), int(quality), nuisance)
        for name, ident in subjects.items()
    ]
    n = _run_tasks(_run_identity_task, tasks, workers, progress)  # type: ignore[arg-type]
    return DemoSummary("identity", str(root), seed, (int(image_size[0]), int(image_size[1])), n, subjects,
                       time.perf_counter() - start)
