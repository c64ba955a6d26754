"""The batched PyTorch MTCNN (issue 3, items 1, 4, 5): parity with two independent references, batching,
pyramid, weights, TF-SAME pooling, the ``detect`` command and (where a GPU exists) CUDA vs CPU.

The reference numbers are in ``tests/fixtures/align/reference_detections.json`` (see the README there): the
``mtcnn`` package 1.0.0 (TF; area pyramid, bilinear ``crop_and_resize``) and facenet-pytorch 2.6.0 (area pyramid,
area crops). One detector per resampling mode is shared by the whole module and every detection is computed once.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from pipeline.align.detector import MTCNN, Faces, pyramid_scales
from pipeline.align.images import decode_rgb
from pipeline.align.nets import _pool_same
from pipeline.align.weights import NETS, export_npz, load_weights
from pipeline.errors import UserError
from stages.app import app

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "align"
REF = json.loads((FIXTURES / "reference_detections.json").read_text())
IMAGES = sorted(REF["images"])
MODES = ("nearest", "area", "bilinear")
FACE = 0.9  # score above which the references agree on the faces (lower ones are false positives that differ)


# ----------------------------------------------------------------------------- helpers
@cache
def rgb(name: str) -> np.ndarray:
    """A fixture image decoded once (shared: do not modify)."""
    return decode_rgb((FIXTURES / name).read_bytes())


def ref_faces(name: str, ref: str, min_score: float = FACE) -> tuple[np.ndarray, np.ndarray]:
    """The reference's boxes (n×4) and landmarks (n×5×2) with score ≥ min_score."""
    faces = [f for f in REF["images"][name][ref] if f["score"] >= min_score]
    return (np.array([f["box"] for f in faces], np.float64).reshape(-1, 4),
            np.array([f["landmarks"] for f in faces], np.float64).reshape(-1, 5, 2))


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (continuous coordinates) of n×4 and m×4 boxes."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def greedy_match(ref_boxes: np.ndarray, our_boxes: np.ndarray) -> list[tuple[int, int, float]]:
    """Pairs (ref index, our index, IoU), greedily by decreasing IoU; each face is used at most once."""
    if not len(ref_boxes) or not len(our_boxes):
        return []
    m = iou(ref_boxes, our_boxes)
    pairs = []
    for _ in range(min(m.shape)):
        r, o = np.unravel_index(np.argmax(m), m.shape)
        if m[r, o] <= 0:
            break
        pairs.append((int(r), int(o), float(m[r, o])))
        m[r, :], m[:, o] = -1, -1
    return pairs


def assert_faces_close(a: Faces, b: Faces, atol: float = 1e-3, what: str = "") -> None:
    assert len(a) == len(b), f"{what}: {len(a)} vs {len(b)} faces"
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol, err_msg=what)
    np.testing.assert_allclose(a.landmarks, b.landmarks, atol=atol, err_msg=what)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5, err_msg=what)


@pytest.fixture(scope="module")
def detector():
    """One CPU detector per resampling mode, built lazily."""
    made: dict[str, MTCNN] = {}

    def get(mode: str = "nearest") -> MTCNN:
        if mode not in made:
            made[mode] = MTCNN(device="cpu", resample=mode)
        return made[mode]

    return get


@pytest.fixture(scope="module")
def detections(detector):
    """``detections(mode, name)``: the single-image detections of a fixture image, computed once per module."""
    memo: dict[tuple[str, str], Faces] = {}

    def get(mode: str, name: str) -> Faces:
        if (mode, name) not in memo:
            memo[mode, name] = detector(mode).detect([rgb(name)])[0]
        return memo[mode, name]

    return get


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", IMAGES)
def test_decoder_gives_the_references_input(name):
    """Both references were given exactly this array; otherwise parity would compare different inputs."""
    im = rgb(name)
    meta = REF["images"][name]
    assert im.shape == (meta["height"], meta["width"], 3) and im.dtype == np.uint8
    assert hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() == meta["decoded_rgb_sha256"]


# (mode, reference) → (minimum box IoU, maximum landmark distance in px or None).
# Against facenet-pytorch in `area` mode (the same resampling) the targets apply: IoU ≥ 0.9, 3 px.
# Every other pair resamples differently from the reference; there we only require IoU ≥ 0.8, which is the floor of
# the two references' agreement with each other (0.805, landmarks up to 8 px apart; see the fixture README).
TOLERANCES = {(mode, ref): (0.8, None) for mode in MODES for ref in ("facenet_pytorch", "mtcnn")}
TOLERANCES["area", "facenet_pytorch"] = (0.9, 3.0)


@pytest.mark.parametrize("ref", ["facenet_pytorch", "mtcnn"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", IMAGES)
def test_parity_with_reference(detections, name, mode, ref):
    ours = detections(mode, name)
    min_iou, max_px = TOLERANCES[mode, ref]
    ref_boxes, ref_lms = ref_faces(name, ref)
    strong = ours.scores >= FACE
    boxes, lms = ours.boxes[strong], ours.landmarks[strong]
    assert len(boxes) == len(ref_boxes) == REF["images"][name]["n_faces_score_ge_0.9"][ref], (
        f"{name} ({mode}): {len(boxes)} faces ≥ {FACE}, {ref} has {len(ref_boxes)}")
    pairs = greedy_match(ref_boxes, boxes)
    assert len(pairs) == len(ref_boxes), f"{name} ({mode}): unmatched reference faces"
    for r, o, overlap in pairs:
        assert overlap >= min_iou, f"{name} ({mode}) vs {ref}: face {r} IoU {overlap:.3f} < {min_iou}"
        if max_px is not None:
            dist = np.linalg.norm(lms[o] - ref_lms[r], axis=1)
            assert dist.max() <= max_px, f"{name} ({mode}) vs {ref}: face {r} landmarks off by {dist.round(2)} px"
    # Faces come sorted by score, highest first.
    assert np.all(np.diff(ours.scores) <= 0)


@pytest.mark.parametrize("mode", MODES)
def test_cat_gives_no_face_at_any_score(detections, mode):
    faces = detections(mode, "chelsea.png")
    assert len(faces) == 0 and faces.boxes.shape == (0, 4) and faces.landmarks.shape == (0, 5, 2)
    assert faces.to_list() == []


# ----------------------------------------------------------------------------- batching
@pytest.mark.parametrize("mode", MODES)
def test_batch_of_mixed_sizes_equals_single_images(detector, detections, mode):
    """Mixed sizes (640×480, 250², 320×240, and the 250² image again): each output equals that image's
    single-image detections, and a repeated image gets exactly the same faces."""
    names = ["composite.jpg", "demo_webface_0001000_001.jpg", "demo_oulu_P001_Happiness_000.jpeg",
             "demo_webface_0001000_001.jpg"]
    batch = detector(mode).detect([rgb(n) for n in names])
    assert len(batch) == 4
    assert [len(f) for f in batch] == [4, 1, 1, 1]
    for n, got in zip(names, batch, strict=True):
        assert_faces_close(got, detections(mode, n), what=f"{mode} {n}")
    assert_faces_close(batch[3], batch[1], atol=0)


def test_batch_of_same_size_equals_single_images(detector, detections):
    det = detector("nearest")
    flipped = np.ascontiguousarray(rgb("demo_oulu_P001_Happiness_000.jpeg")[:, ::-1])
    images = [rgb("demo_oulu_P001_Happiness_000.jpeg"), rgb("demo_oulu_P002_Surprise_006.jpeg"), flipped]
    batch = det.detect(images)
    singles = [detections("nearest", "demo_oulu_P001_Happiness_000.jpeg"),
               detections("nearest", "demo_oulu_P002_Surprise_006.jpeg"), det.detect([flipped])[0]]
    for i, (got, want) in enumerate(zip(batch, singles, strict=True)):
        assert_faces_close(got, want, what=f"image {i}")
    # The mirrored face is found where the mirror puts it.
    w = flipped.shape[1]
    mirrored = singles[0].boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [w, 0, w, 0]
    assert iou(mirrored, singles[2].boxes).max() >= 0.8


@pytest.mark.parametrize("mode", ["nearest", "area"])
def test_batch_split_into_canvas_groups_equals_one_canvas(detector, detections, mode):
    """With a small canvas budget a mixed batch is cut into groups of similar size: same detections, same order."""
    names = ["composite.jpg", "demo_webface_0001000_001.jpg", "astronaut.png", "chelsea.png",
             "demo_oulu_P001_Happiness_000.jpeg"]
    budget = 700_000 * (8 if mode == "area" else 1)  # area mode divides the budget by 8 (float64 table)
    small = MTCNN(device="cpu", resample=mode, canvas_pixels=budget)
    assert len(small._groups([rgb(n).shape[:2] for n in names])) > 1
    for n, got in zip(names, small.detect([rgb(n) for n in names]), strict=True):
        assert_faces_close(got, detections(mode, n), what=f"{mode} {n} in a split batch")


def test_more_than_64_pyramid_levels_keep_faces_with_their_image():
    """factor 0.98 gives 161 levels for the astronaut: candidates must stay with their own image in a batch."""
    assert len(pyramid_scales(512, 512, 20, 0.98)) > 64
    det = MTCNN(device="cpu", factor=0.98)
    astronaut, cat = det.detect([rgb("astronaut.png"), rgb("chelsea.png")])
    assert len(cat) == 0
    assert (astronaut.scores >= FACE).sum() == 1
    ref, _ = ref_faces("astronaut.png", "facenet_pytorch")
    assert iou(astronaut.boxes[:1], ref).max() >= 0.8


@pytest.mark.parametrize("kwargs", [{"min_face": 0}, {"thresholds": (0.6, 0.7, 1.5)}, {"factor": 1.0},
                                    {"nms": (0.5, 0.7, 0.7)}, {"resample": "cubic"}])
def test_bad_detector_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        MTCNN(device="cpu", **kwargs)


def test_bilinear_batch_equals_single_for_a_face_cut_by_the_image_edge(detector):
    det = detector("bilinear")
    cut = np.ascontiguousarray(rgb("astronaut.png")[:170, :250])  # the face runs off the right and bottom edges
    single = det.detect([cut])[0]
    assert len(single) == 1
    bigger = np.full((200, 300, 3), 120, np.uint8)  # any larger image: the cut one gets padded right and below
    assert_faces_close(det.detect([cut, bigger])[0], single, what="cut face in a mixed batch")


def test_empty_batch(detector):
    assert detector("nearest").detect([]) == []


def test_detect_rejects_non_rgb_uint8(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector("nearest").detect([np.zeros((40, 40), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        detector("nearest").detect([np.zeros((40, 40, 3), np.float32)])


def test_max_side_maps_boxes_back_to_source_pixels(detections):
    """A detector that must shrink the 512 px astronaut to 256 px still reports source-pixel boxes."""
    full = detections("nearest", "astronaut.png")
    half = MTCNN(device="cpu", max_side=256).detect([rgb("astronaut.png")])[0]
    assert len(half) == 1
    assert iou(half.boxes, full.boxes)[0, 0] >= 0.8
    assert np.linalg.norm(half.landmarks[0] - full.landmarks[0], axis=1).max() <= 6


# ----------------------------------------------------------------------------- pyramid
def test_pyramid_scales_hand_checked():
    # 250×250, min face 20: first scale 12/20 = 0.6 (150 px); levels while 150·0.709^k ≥ 12, i.e.
    # k ≤ log(12/150)/log(0.709) = 7.35 → k = 0..7, 8 levels; the last is 0.6·0.709^7 ≈ 0.0542 (13.6 px).
    s = pyramid_scales(250, 250, 20, 0.709)
    assert len(s) == 8
    assert s[0] == pytest.approx(0.6)
    np.testing.assert_allclose(s, [0.6 * 0.709 ** k for k in range(8)], rtol=1e-12)
    assert 250 * s[-1] >= 12 > 250 * s[-1] * 0.709
    # 640×480 (shorter side 480 → 288 px at 0.6): k ≤ log(12/288)/log(0.709) = 9.26 → 10 levels.
    assert len(pyramid_scales(480, 640, 20, 0.709)) == 10
    assert pyramid_scales(480, 640, 20, 0.709) == pyramid_scales(640, 480, 20, 0.709)
    # Larger min face → fewer levels: 250 px with min face 40 starts at 0.3 (75 px); k ≤ 5.33 → 6 levels.
    assert len(pyramid_scales(250, 250, 40, 0.709)) == 6
    assert pyramid_scales(250, 250, 40, 0.709)[0] == pytest.approx(0.3)


@pytest.mark.parametrize("h, w", [(250, 250), (512, 512), (886, 1280), (30, 5000), (20, 20)])
def test_pyramid_scales_follow_the_spec_formula(h, w):
    """Spec §7: 12/minsize · 0.709^k while the scaled shorter side is ≥ 12."""
    s = pyramid_scales(h, w, 20, 0.709)
    n = 0
    while min(h, w) * 12 / 20 * 0.709 ** n >= 12 - 1e-9:
        n += 1
    assert len(s) == n >= 1
    for k, scale in enumerate(s):
        assert scale == pytest.approx(12 / 20 * 0.709 ** k, rel=1e-12)


def test_tiny_image_has_no_pyramid_and_no_faces(detector):
    assert pyramid_scales(19, 300, 20, 0.709) == []
    assert pyramid_scales(5, 5, 20, 0.709) == []
    faces = detector("nearest").detect([np.full((12, 15, 3), 128, np.uint8), np.zeros((1, 1, 3), np.uint8)])
    assert [len(f) for f in faces] == [0, 0]


# ----------------------------------------------------------------------------- weights
def test_exported_npz_gives_identical_detections(tmp_path, detections):
    out = export_npz(tmp_path / "mtcnn_weights.npz")
    assert out.is_file()
    a, b = load_weights(None), load_weights(out)
    for net in NETS:
        assert len(a[net]) == len(b[net])
        for x, y in zip(a[net], b[net], strict=True):
            np.testing.assert_array_equal(x, y)
    faces = MTCNN(out, device="cpu").detect([rgb("astronaut.png")])[0]
    want = detections("nearest", "astronaut.png")
    np.testing.assert_array_equal(faces.boxes, want.boxes)
    np.testing.assert_array_equal(faces.landmarks, want.landmarks)
    np.testing.assert_array_equal(faces.scores, want.scores)


def _one_line_user_error(path) -> str:
    with pytest.raises(UserError) as info:
        MTCNN(path, device="cpu")
    msg = str(info.value)
    assert msg and "\n" not in msg and str(path) in msg and "Traceback" not in msg
    return msg


def test_missing_weights_path_is_a_user_error(tmp_path):
    _one_line_user_error(tmp_path / "nope.npz")
    _one_line_user_error(tmp_path / "no_such_folder")
    (tmp_path / "empty").mkdir()
    assert "pnet.lz4" in _one_line_user_error(tmp_path / "empty")


def test_incomplete_npz_is_a_user_error(tmp_path):
    arrays = load_weights(None)
    partial = {f"{net}_{i:02d}": a for net in ("pnet", "rnet") for i, a in enumerate(arrays[net])}
    np.savez(tmp_path / "partial.npz", **partial)
    assert "onet" in _one_line_user_error(tmp_path / "partial.npz")


@pytest.mark.parametrize("kind", ["random.npz", "empty.npz", "random_lz4_folder"])
def test_corrupt_weights_file_is_a_user_error(tmp_path, kind):
    rng = np.random.default_rng(0)
    path = tmp_path / kind
    if kind == "random.npz":
        path.write_bytes(rng.bytes(600))
    elif kind == "empty.npz":
        path.write_bytes(b"")
    else:
        path.mkdir()
        for net in NETS:
            (path / f"{net}.lz4").write_bytes(rng.bytes(200))
    _one_line_user_error(path)


# ----------------------------------------------------------------------------- TF SAME pooling
def _tf_same_max_pool(x: np.ndarray, k: int, s: int) -> np.ndarray:
    """TensorFlow's SAME max-pool written out: out = ceil(n/s), total pad = max((out-1)·s + k - n, 0), the smaller
    half before and the larger after, padded values never win."""
    n_, c_, h, w = x.shape
    oh, ow = math.ceil(h / s), math.ceil(w / s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    top, left = ph // 2, pw // 2
    padded = np.full((n_, c_, h + ph, w + pw), -np.inf, np.float32)
    padded[:, :, top:top + h, left:left + w] = x
    out = np.empty((n_, c_, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = padded[:, :, i * s:i * s + k, j * s:j * s + k].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_pool_same_equals_tf_same_padding(k, s):
    rng = np.random.default_rng(k * 10 + s)
    for h in range(1, 12):
        for w in (1, 2, 3, 4, 7, 10, 11):
            x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
            got = _pool_same(torch.from_numpy(x), k, s).numpy()
            want = _tf_same_max_pool(x, k, s)
            assert got.shape == want.shape, (h, w, got.shape, want.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{h}×{w}, k={k}, s={s}")


def test_pool_same_differs_from_plain_floor_pooling_on_odd_sizes():
    """Guard that the test above can fail: plain (floor) pooling drops the last row/column on odd sizes."""
    x = torch.arange(49, dtype=torch.float32).reshape(1, 1, 7, 7)
    assert _pool_same(x, 2, 2).shape[-1] == 4 != F.max_pool2d(x, 2, 2).shape[-1]
    assert _pool_same(x, 3, 2)[0, 0, -1, -1] == 48


# ----------------------------------------------------------------------------- the detect command
runner = CliRunner()


def _detect_json(*args: str):
    res = runner.invoke(app, ["detect", *args, "--json", "--device", "cpu"])
    return res, (json.loads(res.stdout) if res.stdout.strip().startswith("[") else None)


def _check_shape(entry: dict) -> None:
    assert set(entry) <= {"path", "faces", "width", "height", "error", "note"}
    for face in entry["faces"]:
        assert set(face) == {"box", "score", "landmarks"}
        assert len(face["box"]) == 4 and all(isinstance(v, float) for v in face["box"])
        assert isinstance(face["score"], float) and 0 <= face["score"] <= 1
        assert len(face["landmarks"]) == 5 and all(len(p) == 2 for p in face["landmarks"])
    scores = [f["score"] for f in entry["faces"]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("resample, min_iou, max_px", [("nearest", 0.9, 3.0), ("area", 0.9, 3.0)])
def test_detect_command_astronaut_json(resample, min_iou, max_px):
    path = FIXTURES / "astronaut.png"
    res, out = _detect_json(str(path), "--resample", resample)
    assert res.exit_code == 0, res.output
    assert isinstance(out, list) and len(out) == 1
    entry = out[0]
    _check_shape(entry)
    assert entry["path"] == str(path) and (entry["width"], entry["height"]) == (512, 512)
    assert len(entry["faces"]) == 1
    face = entry["faces"][0]
    ref_boxes, ref_lms = ref_faces("astronaut.png", "facenet_pytorch")
    assert iou(np.array([face["box"]]), ref_boxes)[0, 0] >= min_iou
    if max_px is not None:
        assert np.linalg.norm(np.array(face["landmarks"]) - ref_lms[0], axis=1).max() <= max_px


def test_detect_command_cat_tiny_and_missing_file(tmp_path):
    import cv2

    missing = tmp_path / "missing.png"
    cat = FIXTURES / "chelsea.png"
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((12, 16, 3), 200, np.uint8))
    res, out = _detect_json(str(missing), str(cat), str(tiny))
    assert res.exit_code == 1
    assert out is not None, res.output
    assert [e["path"] for e in out] == [str(missing), str(cat), str(tiny)]
    assert out[2]["faces"] == [] and "error" not in out[2] and "min_face" in out[2]["note"]
    assert (out[2]["width"], out[2]["height"]) == (16, 12)
    for e in out:
        _check_shape(e)
    assert out[0]["faces"] == [] and out[0]["error"] and "\n" not in out[0]["error"]
    assert out[1]["faces"] == [] and "error" not in out[1]
    assert (out[1]["width"], out[1]["height"]) == (451, 300)


def test_detect_command_text_output_and_bad_resample(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    res = runner.invoke(app, ["detect", str(bad), "--device", "cpu"])
    assert res.exit_code == 1 and "error" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["detect", str(FIXTURES / "chelsea.png"), "--resample", "cubic"])
    assert res.exit_code != 0 and "resample" in res.output


def test_detect_command_rejects_bad_min_face_and_thresholds():
    res = runner.invoke(app, ["detect", str(FIXTURES / "astronaut.png"), "--min-face", "0"])
    assert res.exit_code == 2 and "min-face" in res.output  # Typer's usage error
    res = runner.invoke(app, ["detect", str(FIXTURES / "astronaut.png"), "--thresholds", "0.6", "0.7", "1.5"])
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == (
        "error: detector: thresholds must be three values in (0, 1), not (0.6, 0.7, 1.5)")


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_matches_cpu(detections, mode):
    gpu = MTCNN(device="cuda", resample=mode)
    names = list(IMAGES)
    batch = gpu.detect([rgb(n) for n in names])
    for n, got in zip(names, batch, strict=True):
        cpu = detections(mode, n)
        strong_cpu, strong_gpu = cpu.scores >= FACE, got.scores >= FACE
        assert strong_cpu.sum() == strong_gpu.sum(), f"{mode} {n}"
        pairs = greedy_match(cpu.boxes[strong_cpu], got.boxes[strong_gpu])
        assert len(pairs) == strong_cpu.sum()
        for r, o, overlap in pairs:
            assert overlap >= 0.98, f"{mode} {n}: IoU {overlap:.4f}"
            dist = np.linalg.norm(cpu.landmarks[strong_cpu][r] - got.landmarks[strong_gpu][o], axis=1)
            assert dist.max() <= 1.0, f"{mode} {n}: landmarks {dist.round(3)}"


def test_detect_command_refuses_an_image_over_max_pixels_from_its_header(tmp_path, monkeypatch):
    """A huge image is refused before it is decoded (a 20000 x 20000 one took 3.1 GB and 17 s): the size comes from
    the header; the other images are still detected."""
    import cv2

    import pipeline.align.images as images

    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((400, 400, 3), np.uint8))
    decoded = []
    real = images.decode_rgb
    monkeypatch.setattr(images, "decode_rgb", lambda data: decoded.append(len(data)) or real(data))
    res, out = _detect_json(str(big), str(FIXTURES / "chelsea.png"), "--max-pixels", "140000")
    assert res.exit_code == 1 and out is not None, res.output
    assert out[0]["error"] == "400 x 400 = 160,000 pixels is over --max-pixels 140,000: not decoded"
    assert (out[0]["width"], out[0]["height"]) == (400, 400) and out[0]["faces"] == []
    assert "error" not in out[1] and len(decoded) == 1  # only chelsea (451 x 300 = 135,300 pixels) decoded
    res, out = _detect_json(str(big), "--max-pixels", "160000")  # the limit itself is allowed
    assert res.exit_code == 0 and "error" not in out[0]
