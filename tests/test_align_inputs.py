"""Bad and unusual inputs (issue 3 acceptance, "Bad inputs"), face choice and crop (docs/method.md §7).

Every input goes the way the align stage takes it: file bytes → ``read_image_bytes`` → ``decode_rgb`` (an
:class:`ImageProblem` becomes a reason string) → ``align_images``. Each case must end as an RGB array or a row with a
clear status and reason, never an exception.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.align.batch import ALIGNED, align_images
from pipeline.align.crop import CONVENTIONS, choose_face, crop_box, crop_face
from pipeline.align.detector import MTCNN, Faces
from pipeline.align.images import ImageProblem, decode_rgb, read_image_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "align"
PAPER = SimpleNamespace(convention="paper_182_44", min_face=20)


def load(root: Path, name: str) -> np.ndarray | str:
    """What the align stage's dataset does: the RGB array, or the reason the file cannot be used."""
    try:
        return decode_rgb(read_image_bytes(root, name))
    except ImageProblem as exc:
        return str(exc)


def encode(ext: str, array: np.ndarray, *params: int) -> bytes:
    """OpenCV-encode (array in OpenCV channel order)."""
    ok, buf = cv2.imencode(ext, array, list(params))
    assert ok
    return buf.tobytes()


def iou(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN(device="cpu")  # defaults: nearest, min face 20, max side 4096


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return decode_rgb((FIXTURES / "astronaut.png").read_bytes())


@pytest.fixture(scope="module")
def astronaut_faces(detector, astronaut) -> Faces:
    faces = detector.detect([astronaut])[0]
    assert len(faces) == 1 and faces.scores[0] >= 0.9
    return faces


def assert_same_faces(got: Faces, want: Faces, atol: float = 1e-3) -> None:
    assert len(got) == len(want)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=atol)
    np.testing.assert_allclose(got.landmarks, want.landmarks, atol=atol)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


# ----------------------------------------------------------------------------- unreadable files
def test_unreadable_files_give_short_reasons(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "random.jpg").write_bytes(rng.bytes(4096))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    (tmp_path / "truncated.png").write_bytes((FIXTURES / "astronaut.png").read_bytes()[:100])
    (tmp_path / "a_folder.jpg").mkdir()
    reasons = {n: load(tmp_path, n) for n in
               ("random.jpg", "empty.png", "text.png", "truncated.png", "missing.jpg", "a_folder.jpg")}
    for name, reason in reasons.items():
        assert isinstance(reason, str), f"{name} decoded to {type(reason)}"
        assert reason and "\n" not in reason and len(reason) < 200, (name, reason)
    assert reasons["empty.png"] == "empty file"
    assert reasons["random.jpg"] == reasons["text.png"] == reasons["truncated.png"] == "not a decodable image"
    assert reasons["missing.jpg"].startswith("unreadable")


def test_png_header_beyond_opencvs_pixel_limit_is_an_image_problem():
    """A 100,000 × 100,000 PNG header (a decompression bomb) makes OpenCV raise cv2.error: it must become a reason."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    with pytest.raises(ImageProblem) as info:
        decode_rgb(bomb)
    msg = str(info.value)
    assert msg.startswith("not decodable") and "\n" not in msg and len(msg) < 200


def test_read_image_bytes_missing_file_raises_image_problem(tmp_path):
    with pytest.raises(ImageProblem) as info:
        read_image_bytes(tmp_path, "sub/none.jpg")
    msg = str(info.value)
    assert msg.startswith("unreadable") and "\n" not in msg and len(msg) < 200
    assert read_image_bytes(FIXTURES, "chelsea.png") == (FIXTURES / "chelsea.png").read_bytes()


# ----------------------------------------------------------------------------- one batch of every outcome
def test_align_images_gives_every_status_and_the_paper_crop(tmp_path, detector, astronaut):
    rng = np.random.default_rng(4)
    (tmp_path / "random.jpg").write_bytes(rng.bytes(2048))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "tiny.png").write_bytes(encode(".png", np.full((15, 15, 3), 90, np.uint8)))
    (tmp_path / "thin.png").write_bytes(encode(".png", np.full((19, 400, 3), 90, np.uint8)))
    names = ["random.jpg", "empty.jpg", "missing.jpg", "tiny.png", "thin.png", "chelsea.png", "astronaut.png"]
    roots = {"chelsea.png": FIXTURES, "astronaut.png": FIXTURES}
    images = [load(roots.get(n, tmp_path), n) for n in names]
    assert [isinstance(im, str) for im in images] == [True, True, True, False, False, False, False]

    rows, crops, detections = align_images(images, names, detector, PAPER)

    status = {r["image_id"]: r["status"] for r in rows}
    assert [r["image_id"] for r in rows] == names
    assert status == {"random.jpg": "unreadable", "empty.jpg": "unreadable", "missing.jpg": "unreadable",
                      "tiny.png": "too_small", "thin.png": "too_small", "chelsea.png": "no_face",
                      "astronaut.png": ALIGNED}
    for r in rows:
        if r["status"] != ALIGNED:
            assert r["reason"] and "\n" not in r["reason"], r
            assert r["box"] is None and r["crop_box"] is None and r["crop_size"] == 0  # never a fallback crop
    assert rows[0]["reason"] == "not a decodable image" and rows[1]["reason"] == "empty file"
    assert "15x15" in rows[3]["reason"] and "min_face=20" in rows[3]["reason"]
    assert detections[:5] == [None] * 5  # the detector never saw the unreadable or too small images
    assert len(detections[5]) == 0 and rows[5]["n_faces"] == 0

    # Only the astronaut is cropped: 182×182 (paper convention), around the chosen face.
    assert len(crops) == 1
    crop, row, faces = crops[0], rows[6], detections[6]
    assert crop.shape == (182, 182, 3) and crop.dtype == np.uint8
    assert row["crop_size"] == 182 and row["n_faces"] == len(faces) == 1
    assert row["box"] == pytest.approx(faces.boxes[0].tolist())
    assert row["score"] == pytest.approx(float(faces.scores[0]))
    x1, y1, x2, y2 = row["crop_box"]
    assert tuple(row["crop_box"]) == crop_box(faces.boxes[0], 44, 512, 512)
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512 and x2 - x1 < 200  # the face, not the whole image
    np.testing.assert_array_equal(crop, crop_face(astronaut, (x1, y1, x2, y2), 182))
    # Landmarks are stored x1..x5, y1..y5 and map inside the crop, eyes above the mouth.
    lx, ly = np.array(row["landmarks"][:5]), np.array(row["landmarks"][5:])
    np.testing.assert_allclose(np.stack([lx, ly], 1), faces.landmarks[0], atol=1e-4)
    cx, cy = (lx - x1) * 182 / (x2 - x1), (ly - y1) * 182 / (y2 - y1)
    assert np.all((cx > 0) & (cx < 182) & (cy > 0) & (cy < 182)), (cx, cy)
    assert max(cy[0], cy[1]) < min(cy[3], cy[4]) and cx[0] < cx[1] and cx[3] < cx[4]


# ----------------------------------------------------------------------------- converted formats
def test_grayscale_png_and_jpeg_become_rgb_and_still_find_the_face(detector, astronaut, astronaut_faces):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    from_png = decode_rgb(encode(".png", gray))
    from_jpg = decode_rgb(encode(".jpg", gray, cv2.IMWRITE_JPEG_QUALITY, 95))
    for im in (from_png, from_jpg):
        assert im.shape == (512, 512, 3) and im.dtype == np.uint8
        assert np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2])
    np.testing.assert_array_equal(from_png[..., 0], gray)
    assert np.abs(from_jpg[..., 0].astype(int) - gray).mean() < 2
    for faces in detector.detect([from_png, from_jpg]):
        strong = faces.scores >= 0.9
        assert strong.sum() == 1
        assert iou(faces.boxes[strong][0], astronaut_faces.boxes[0]) >= 0.8


def test_alpha_and_16_bit_pngs_decode_to_the_8_bit_rgb_and_detect_the_same(detector, astronaut, astronaut_faces):
    rng = np.random.default_rng(5)
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    alpha = rng.integers(0, 256, astronaut.shape[:2], dtype=np.uint8)  # alpha is dropped, not blended
    rgba = decode_rgb(encode(".png", np.dstack([bgr, alpha])))
    # 16 bit: v·257 is the exact 16-bit version of v; low-bit noise below half an 8-bit step must not change it.
    exact = bgr.astype(np.uint16) * 257
    deep = exact + np.minimum(rng.integers(0, 129, bgr.shape, dtype=np.uint16), 65535 - exact)
    deep_bytes = encode(".png", deep)
    assert cv2.imdecode(np.frombuffer(deep_bytes, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    sixteen = decode_rgb(deep_bytes)
    for im in (rgba, sixteen):
        assert im.shape == (512, 512, 3) and im.dtype == np.uint8
        np.testing.assert_array_equal(im, astronaut)
    for faces in detector.detect([rgba, sixteen]):
        assert_same_faces(faces, astronaut_faces)


def test_other_pixel_formats_decode_to_rgb(astronaut):
    """16-bit gray, gray+alpha and palette PNGs (Pillow-written) and a 16-bit full-range scale check."""
    gray16 = np.array([[0, 65535, 32896, 257]], np.uint16).repeat(3, 0)  # 32896 = 128·257 + 0
    im = decode_rgb(encode(".png", gray16))
    assert im.shape == (3, 4, 3) and im.dtype == np.uint8
    np.testing.assert_array_equal(im[0, :, 0], [0, 255, 128, 1])

    small = astronaut[::8, ::8]

    def pil_png(img: Image.Image) -> bytes:
        import io

        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    gray_alpha = Image.fromarray(small).convert("LA")
    im = decode_rgb(pil_png(gray_alpha))
    assert im.shape == (64, 64, 3)
    np.testing.assert_array_equal(im[..., 0], np.asarray(gray_alpha)[..., 0])
    palette = Image.fromarray(small).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    im = decode_rgb(pil_png(palette))
    np.testing.assert_array_equal(im, np.asarray(palette.convert("RGB")))


def test_huge_8k_image_is_shrunk_for_detection_and_boxes_come_back_in_source_pixels(astronaut, astronaut_faces):
    """An 8000×6000 photo: the astronaut scaled ×4 (2048²) pasted at (4800, 2400) of a grey canvas, JPEG-encoded.

    The default max_side (4096) halves it for detection. A larger min face (160 px; the face is ~360 px wide in
    the source, ~180 px at detection size) only shortens the pyramid to keep this test fast; shrinking and mapping
    back are what is tested.
    """
    detector = MTCNN(device="cpu", min_face=160)
    assert detector.max_side == 4096
    canvas = np.full((6000, 8000, 3), 110, np.uint8)
    x0, y0 = 4800, 2400
    canvas[y0:y0 + 2048, x0:x0 + 2048] = cv2.resize(astronaut, (2048, 2048), interpolation=cv2.INTER_LINEAR)
    image = decode_rgb(encode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), cv2.IMWRITE_JPEG_QUALITY, 90))
    del canvas
    assert image.shape == (6000, 8000, 3)
    rows, crops, detections = align_images([image], ["huge"], detector, PAPER)
    assert rows[0]["status"] == ALIGNED, rows[0]
    expected_box = astronaut_faces.boxes[0] * 4 + [x0, y0, x0, y0]
    assert iou(rows[0]["box"], expected_box) >= 0.8, (rows[0]["box"], expected_box)
    lm = detections[0].landmarks[0]
    expected_lm = astronaut_faces.landmarks[0] * 4 + [x0, y0]
    assert np.linalg.norm(lm - expected_lm, axis=1).max() <= 25  # 4× the source scale: ~6 px at 512 px
    assert crops[0].shape == (182, 182, 3)
    cx1, cy1, cx2, cy2 = rows[0]["crop_box"]
    assert x0 < cx1 < cx2 < x0 + 2048 and y0 <= cy1 < cy2 < y0 + 2048


# ----------------------------------------------------------------------------- face choice and crop
def _faces(boxes) -> Faces:
    n = len(boxes)
    return Faces(np.asarray(boxes, np.float32), np.linspace(0.99, 0.95, n, dtype=np.float32),
                 np.zeros((n, 5, 2), np.float32))


def test_choose_face_prefers_central_over_big_off_centre():
    # Image 800×600, centre (400, 300).
    # Face 0: [450, 250, 650, 450], 200×200 → area 40000; centre (550, 350), offset² = 150² + 50² = 25000;
    #         area − 2·offset² = 40000 − 50000 = −10000.
    # Face 1: [380, 280, 420, 320], 40×40 → area 1600; centred, offset² = 0 → 1600.  → face 1 wins.
    # (With a factor 1 instead of 2, face 0 would win: 15000 > 1600; face 0 also has the higher score.)
    assert choose_face(_faces([[450, 250, 650, 450], [380, 280, 420, 320]]), 600, 800) == 1
    # Face 0 moved to centre (450, 300): [350, 200, 550, 400], offset² = 50² = 2500 → 40000 − 5000 = 35000 > 1600.
    assert choose_face(_faces([[350, 200, 550, 400], [380, 280, 420, 320]]), 600, 800) == 0
    # Height and width are not swapped: a 600 wide, 800 high image has its centre at (300, 400).
    # Face 1 [200, 300, 400, 500] is centred there (score 40000); face 0 [380, 280, 420, 320] has offset²
    # 100² + 100² = 20000 → 1600 − 40000 → face 1 (swapped height/width would pick face 0: 1600 > 0).
    assert choose_face(_faces([[380, 280, 420, 320], [200, 300, 400, 500]]), 800, 600) == 1
    assert choose_face(_faces([[10, 10, 60, 60]]), 100, 100) == 0
    with pytest.raises(ValueError):
        choose_face(Faces.empty(), 100, 100)


def test_conventions():
    assert (CONVENTIONS["paper_182_44"].size, CONVENTIONS["paper_182_44"].margin,
            CONVENTIONS["paper_182_44"].train_size) == (182, 44, 160)
    assert (CONVENTIONS["facenet_160_32"].size, CONVENTIONS["facenet_160_32"].margin,
            CONVENTIONS["facenet_160_32"].train_size) == (160, 32, 160)


@pytest.mark.parametrize("box, margin, expected", [
    # paper 182/44: ±22 px; inside the image, coordinates are truncated (int32 cast), not rounded.
    ([100.7, 80.2, 190.9, 200.6], 44, (78, 58, 212, 222)),
    # facenet 160/32: ±16 px.
    ([50.6, 60.2, 150.3, 170.9], 32, (34, 44, 166, 186)),
    # Clipped at the left/top border (and a box that starts outside the image).
    ([10.7, 5.2, 100.9, 120.4], 44, (0, 0, 122, 142)),
    ([-30.5, -4.0, 60.0, 70.0], 32, (0, 0, 76, 86)),
    # Clipped at the right/bottom border (w = 400, h = 300).
    ([350.0, 250.0, 420.5, 320.2], 44, (328, 228, 400, 300)),
    ([380.0, 285.0, 390.0, 295.0], 32, (364, 269, 400, 300)),
])
def test_crop_box_margin_and_clipping(box, margin, expected):
    assert crop_box(np.array(box, np.float32), margin, 300, 400) == expected


def test_crop_face_shape_dtype_and_content():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = (200, 10, 10)  # left half red
    image[:, 100:] = (10, 10, 200)  # right half blue
    out = crop_face(image, (10, 20, 90, 80), 182)
    assert out.shape == (182, 182, 3) and out.dtype == np.uint8
    assert np.all(out == (200, 10, 10))
    out = crop_face(image, (50, 0, 150, 100), 160)  # half red, half blue
    assert out.shape == (160, 160, 3)
    assert np.all(out[:, :70] == (200, 10, 10)) and np.all(out[:, 90:] == (10, 10, 200))
    # A gradient is preserved in order (no flip or transpose).
    ramp = np.repeat(np.repeat(np.arange(200, dtype=np.uint8)[None, :, None], 50, 0), 3, 2)
    out = crop_face(ramp, (0, 0, 200, 50), 64)
    assert np.all(np.diff(out[32, :, 0].astype(int)) >= 0) and out[32, 0, 0] < 10 and out[32, -1, 0] > 190
    with pytest.raises(ValueError):
        crop_face(image, (50, 50, 50, 80), 160)


def test_facenet_convention_crop_of_the_astronaut(astronaut, astronaut_faces):
    conv = CONVENTIONS["facenet_160_32"]
    box = crop_box(astronaut_faces.boxes[0], conv.margin, 512, 512)
    crop = crop_face(astronaut, box, conv.size)
    assert crop.shape == (160, 160, 3) and crop.dtype == np.uint8
    b = astronaut_faces.boxes[0]
    assert box == (int(b[0] - 16), int(b[1] - 16), int(b[2] + 16), int(b[3] + 16))
