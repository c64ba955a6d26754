"""pipeline.align.landmarks: WebCaricature's 17-point files and the original's face box around them."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.align.landmarks import landmark_box, parse_landmarks, read_landmarks

#: 17 points: x in [100.7, 200.2], y in [50.9, 170.4] (one in scientific notation, as the dataset's files can be)
POINTS = [(100.7, 60.0), (200.2, 80.0), (150.0, 50.9), (150.0, 170.4)] + [(1.2e2, 100.0)] * 13


def landmark_text(points=POINTS, end: str = "\r\n") -> str:
    return "".join(f"{x} {y}{end}" for x, y in points)


def test_box_by_hand():
    """Truncated: x 100..200, y 50..170. Centre (150, 110). Half-width int(100·1.5/2) = 75, half-height
    int(120·1.2/2) = 72. Box (75, 38, 225, 182)."""
    pts = parse_landmarks(landmark_text())
    assert pts.shape == (17, 2) and pts.dtype == np.float64
    assert landmark_box(pts, (300, 400)) == (75, 38, 225, 182)
    # odd sums floor the centre and the half-sizes truncate: x 101..200 → centre 150, half int(99·1.5/2) = 74
    pts2 = pts.copy()
    pts2[0, 0] = 101.9
    assert landmark_box(pts2, (300, 400)) == (76, 38, 224, 182)
    # the factors are parameters
    assert landmark_box(pts, (300, 400), width_factor=1.0, height_factor=1.0) == (100, 50, 200, 170)


def test_box_is_clipped_to_the_image():
    assert landmark_box(parse_landmarks(landmark_text()), (210, 175)) == (75, 38, 210, 175)
    near_origin = [(x - 95, y - 45) for x, y in POINTS]  # x 5.7..105.2, y 5.9..125.4
    assert landmark_box(np.array(near_origin), (300, 400)) == (0, 0, 130, 137)


def test_crlf_and_lf_files_give_identical_boxes(tmp_path):
    crlf, lf = tmp_path / "crlf.txt", tmp_path / "lf.txt"
    crlf.write_bytes(landmark_text(end="\r\n").encode())
    lf.write_bytes(landmark_text(end="\n").encode().rstrip(b"\n"))  # LF, and no line end after the last line
    a, b = read_landmarks(crlf), read_landmarks(lf)
    np.testing.assert_array_equal(a, b)
    assert landmark_box(a, (300, 400)) == landmark_box(b, (300, 400)) == (75, 38, 225, 182)


@pytest.mark.parametrize(("text", "message"), [
    (landmark_text(POINTS[:16]), "expected 17 landmarks, got 16"),
    (landmark_text(POINTS + [(1.0, 1.0)]), "expected 17 landmarks, got 18"),
    (landmark_text().replace("200.2 80.0", "200.2 eighty", 1), "line 2: not a number"),
    (landmark_text().replace("200.2 80.0", "200.2 nan", 1), "line 2: not a finite number"),
    (landmark_text().replace("200.2 80.0", "200.2 80.0 1", 1), "line 2: expected 'x y', got 3 values"),
])
def test_bad_landmark_files_name_the_file(text: str, message: str):
    with pytest.raises(ValueError, match=message) as err:
        parse_landmarks(text, "FacialPoints/Adele/C00001.txt")
    assert str(err.value).startswith("FacialPoints/Adele/C00001.txt: ")


def test_points_outside_the_image_and_zero_area_boxes():
    pts = parse_landmarks(landmark_text())
    with pytest.raises(ValueError, match=r"C1.txt: landmark 2 \(200.2, 80\) is outside the 200×400 image"):
        landmark_box(pts, (200, 400), source="C1.txt")
    with pytest.raises(ValueError, match="outside"):
        landmark_box(pts - 101, (300, 400))
    flat = np.array([(10.0, 20.0 + k) for k in range(17)])  # all points on one vertical line
    with pytest.raises(ValueError, match="zero area"):
        landmark_box(flat, (300, 400))
