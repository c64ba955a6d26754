"""Tests of the embedded synthetic demo datasets (``pipeline.data.demo``); tiny sizes, fast."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.data.demo import (  # the scene's parts, tested directly
    EXPRESSIONS,
    NEUTRAL,
    SIDE_LIGHT_MAX,
    DemoSummary,
    _scene,
    _session_look,
    generate_expression_dataset,
    generate_identity_dataset,
    identity_params,
    render_expression_sequence,
    render_face,
    render_identity_image,
)

SMALL = (96, 80)  # (W, H)


def _tree(root: Path) -> dict[str, bytes]:
    """Relative path -> file bytes of every file under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, path
    return img.astype(np.float32)


def _expr(root: Path, **kw: object) -> DemoSummary:
    args: dict[str, object] = {"seed": 3, "first_identity": 0, "n_subjects": 2,
                               "expressions": ("Anger", "Surprise"), "frames": (3, 5), "image_size": SMALL}
    args.update(kw)
    return generate_expression_dataset(root, **args)  # type: ignore[arg-type]


def test_expression_layout_matches_oulu(tmp_path: Path) -> None:
    root = tmp_path / "oulu"
    seen: list[int] = []
    summary = _expr(root, first_identity=7, progress=seen.append)
    assert summary.subjects == {"P001": 7, "P002": 8}
    assert sorted(p.name for p in root.iterdir()) == ["P001", "P002"]
    total = 0
    for subject in ("P001", "P002"):
        assert sorted(p.name for p in (root / subject).iterdir()) == ["Anger", "Surprise"]
        for expression in ("Anger", "Surprise"):
            names = sorted(p.name for p in (root / subject / expression).iterdir())
            assert 3 <= len(names) <= 5
            assert names == [f"{i:03d}.jpeg" for i in range(len(names))]  # contiguous from 000
            total += len(names)
            img = cv2.imread(str(root / subject / expression / names[0]))
            assert img.shape == (SMALL[1], SMALL[0], 3)
    assert summary.n_images == total == sum(seen)
    assert all(p.suffix == ".jpeg" for p in root.rglob("*") if p.is_file())  # nothing but images
    d = summary.to_dict()
    assert json.loads(json.dumps(d))["subjects"] == {"P001": 7, "P002": 8}
    assert d["n_images"] == total and d["seconds"] >= 0


def test_sequence_lengths_vary_within_range(tmp_path: Path) -> None:
    lengths = {len(render_expression_sequence(0, i, e, frames=(6, 9), image_size=(64, 64)))
               for i in range(4) for e in EXPRESSIONS}
    assert lengths <= set(range(6, 10)) and len(lengths) > 1


def test_identity_layout_matches_casia_webface(tmp_path: Path) -> None:
    root = tmp_path / "casia"
    summary = generate_identity_dataset(root, seed=1, first_identity=1000, n_identities=2, images_per_identity=3,
                                        image_size=(90, 100))
    assert summary.subjects == {"0001000": 1000, "0001001": 1001}
    assert summary.n_images == 6
    for subject in summary.subjects:
        names = sorted(p.name for p in (root / subject).iterdir())
        assert names == ["001.jpg", "002.jpg", "003.jpg"]
        assert cv2.imread(str(root / subject / "001.jpg")).shape == (100, 90, 3)
    assert len(_tree(root)) == 6


def test_same_seed_is_byte_identical_across_runs_and_workers(tmp_path: Path) -> None:
    a = _tree((_expr(tmp_path / "a", workers=1), tmp_path / "a")[1])
    b = _tree((_expr(tmp_path / "b", workers=2), tmp_path / "b")[1])
    c = _tree((_expr(tmp_path / "c", seed=4), tmp_path / "c")[1])
    assert a == b
    assert a.keys() != c.keys() or any(a[k] != c[k] for k in a)
    common = a.keys() & c.keys()
    assert all(a[k] != c[k] for k in common)  # every image changes with the seed


def test_identity_set_is_deterministic_and_independent_of_the_range(tmp_path: Path) -> None:
    kw = {"seed": 2, "n_identities": 2, "images_per_identity": 2, "image_size": (64, 64)}
    generate_identity_dataset(tmp_path / "x", first_identity=1000, **kw)  # type: ignore[arg-type]
    generate_identity_dataset(tmp_path / "y", first_identity=1001, workers=2, **kw)  # type: ignore[arg-type]
    x, y = _tree(tmp_path / "x"), _tree(tmp_path / "y")
    # identity 1001 looks the same whichever dataset range it is drawn in
    assert x["0001001/001.jpg"] == y["0001001/001.jpg"] and x["0001001/002.jpg"] == y["0001001/002.jpg"]
    assert x["0001001/001.jpg"] != x["0001001/002.jpg"]


def test_identity_params_deterministic_and_ranges_disjoint(tmp_path: Path) -> None:
    assert identity_params(5, 3) == identity_params(5, 3)
    finetune = [replace(identity_params(0, i), identity=-1) for i in range(5)]
    pretrain = [replace(identity_params(0, i), identity=-1) for i in range(1000, 1005)]
    assert not any(f == p for f in finetune for p in pretrain)
    assert len(set(finetune)) == 5 and len(set(pretrain)) == 5
    s1 = generate_expression_dataset(tmp_path / "f", seed=0, first_identity=0, n_subjects=5, expressions=("Fear",),
                                     frames=(1, 1), image_size=(64, 64))
    s2 = generate_identity_dataset(tmp_path / "p", seed=0, first_identity=1000, n_identities=5,
                                   images_per_identity=1, image_size=(64, 64))
    assert set(s1.subjects.values()) == set(range(5))
    assert set(s2.subjects.values()) == set(range(1000, 1005))
    assert not set(s1.subjects.values()) & set(s2.subjects.values())


def _face_rows(seed: int, identity: int, expression: str, size: tuple[int, int]) -> tuple[slice, slice]:
    x0, y0, x1, y1 = render_expression_sequence(seed, identity, expression, frames=(3, 3), image_size=size,
                                                nuisance=False)[0].face_box
    return slice(int(y0), int(y1)), slice(int(x0), int(x1))


def test_neutral_frames_show_the_same_person(tmp_path: Path) -> None:
    """Noise-free render: frame 0 of two sequences of one subject ~ equal; two subjects differ."""
    size = (160, 160)
    root = tmp_path / "clean"
    generate_expression_dataset(root, seed=0, first_identity=0, n_subjects=3, expressions=("Anger", "Happiness"),
                                frames=(3, 3), image_size=size, nuisance=False)
    rows, cols = _face_rows(0, 0, "Anger", size)
    same, different = [], []
    for s in ("P001", "P002", "P003"):
        a, h = _gray(root / s / "Anger" / "000.jpeg"), _gray(root / s / "Happiness" / "000.jpeg")
        same.append(float(np.abs(a - h).mean()))
    for s, t in (("P001", "P002"), ("P001", "P003"), ("P002", "P003")):
        a, b = _gray(root / s / "Anger" / "000.jpeg"), _gray(root / t / "Anger" / "000.jpeg")
        different.append(float(np.abs(a[rows, cols] - b[rows, cols]).mean()))
    assert max(same) < 1.0  # identical up to JPEG rounding
    assert min(different) > 4.0 and min(different) > 10 * max(same)


def test_peak_expressions_differ_in_mouth_and_brows() -> None:
    size = (160, 160)
    peaks = {e: render_expression_sequence(1, 0, e, frames=(6, 6), image_size=size, nuisance=False)
             for e in EXPRESSIONS}
    x0, y0, x1, y1 = (int(v) for v in peaks["Anger"][0].face_box)
    h = y1 - y0
    upper = (slice(y0 + int(0.2 * h), y0 + int(0.5 * h)), slice(x0, x1))  # brows and eyes
    lower = (slice(y0 + int(0.62 * h), y0 + int(0.9 * h)), slice(x0, x1))  # mouth
    gray = {e: cv2.cvtColor(seq[-1].image, cv2.COLOR_RGB2GRAY).astype(np.float32) for e, seq in peaks.items()}
    for i, e in enumerate(EXPRESSIONS):
        for f in EXPRESSIONS[i + 1 :]:
            d_up = float(np.abs(gray[e][upper] - gray[f][upper]).mean())
            d_lo = float(np.abs(gray[e][lower] - gray[f][lower]).mean())
            assert d_up + d_lo > 3.0, (e, f, d_up, d_lo)
    # every expression moves its face away from neutral; the onset starts slowly (frame 1 close to frame 0) and the
    # three frames the Oulu-CASIA protocol labels are all near the apex (the first of them close to the last)
    for e, seq in peaks.items():
        g = [cv2.cvtColor(r.image, cv2.COLOR_RGB2GRAY).astype(np.float32)[y0:y1, x0:x1] for r in seq]
        to_peak = float(np.abs(g[-1] - g[0]).mean())
        assert to_peak > 1.0, e
        assert float(np.abs(g[1] - g[0]).mean()) < 0.5 * to_peak, e
        assert float(np.abs(g[-3] - g[-1]).mean()) < 0.5 * to_peak, e
        assert [round(r.intensity, 3) for r in seq] == [0.0, 0.1, 0.4, 0.9, 0.95, 1.0]


def test_faces_inside_image_with_expected_scale() -> None:
    for i in range(12):
        r = render_identity_image(0, 1000 + i, i, image_size=(120, 100))
        x0, y0, x1, y1 = r.face_box
        assert r.image.shape == (100, 120, 3) and r.image.dtype == np.uint8
        assert 0 <= x0 < x1 <= 120 and 0 <= y0 < y1 <= 100
        assert 0.33 <= (y1 - y0) / 100 <= 0.71
        assert r.expression in ("Neutral", *EXPRESSIONS)


def test_session_look_varies_the_hair_and_keeps_the_face() -> None:
    """Each scene redraws the hair (style, tone, hairline); every other identity factor is the person's own."""
    ident = identity_params(0, 7)
    looks = [_session_look(np.random.default_rng(i), ident) for i in range(40)]
    hair_fields = {"hair_style", "hair", "hairline"}
    for look in looks:
        assert {k: v for k, v in asdict(look).items() if k not in hair_fields} == \
            {k: v for k, v in asdict(ident).items() if k not in hair_fields}
        assert 0.45 <= look.hairline <= 0.72 and all(0.0 <= c <= 1.0 for c in look.hair)
    assert {look.hair_style for look in looks} == set(range(5))
    tones = [np.mean(look.hair) / np.mean(ident.hair) for look in looks if max(look.hair) < 1.0]
    assert min(tones) < 0.8 and max(tones) > 1.2
    # without nuisance the scene keeps the identity's own look (the clean renders of the other tests rely on it)
    assert _scene(np.random.default_rng(0), ident, 64, 64, False)[-1] == ident


def test_hard_side_light_darkens_one_side_of_the_face() -> None:
    ident = identity_params(0, 3)
    sides = {}
    for light in (-SIDE_LIGHT_MAX, 0.0, SIDE_LIGHT_MAX):
        rgb, alpha = render_face(ident, NEUTRAL, side_light=light)
        grey = rgb.mean(axis=2)
        h, w = grey.shape
        rows = slice(int(0.35 * h), int(0.55 * h))  # cheeks, below the eyes
        left, right = grey[rows, int(0.3 * w) : int(0.45 * w)], grey[rows, int(0.55 * w) : int(0.7 * w)]
        sides[light] = float(right.mean() / left.mean())
    # lit from the right, then from the left (the old ±0.35 side light gave ratios of about 1.3)
    assert sides[SIDE_LIGHT_MAX] > 2.0 and sides[-SIDE_LIGHT_MAX] < 1 / 2.0
    assert 0.8 < sides[0.0] < 1.25


def test_identity_set_varies_expression_per_identity() -> None:
    names = {render_identity_image(0, 1000, j, image_size=(64, 64)).expression for j in range(30)}
    assert "Neutral" in names and len(names) >= 4


def test_root_must_be_empty(tmp_path: Path) -> None:
    root = tmp_path / "busy"
    root.mkdir()
    (root / "x.txt").write_text("x")
    with pytest.raises(ValueError):
        _expr(root)
    with pytest.raises(ValueError):
        generate_identity_dataset(root, seed=0, first_identity=0, n_identities=1, images_per_identity=1)
    with pytest.raises(ValueError):
        _expr(root / "x.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _expr(empty, n_subjects=1, frames=(1, 1)).n_images == 2


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        _expr(tmp_path / "a", expressions=("Contempt",))
    with pytest.raises(ValueError):
        _expr(tmp_path / "b", frames=(5, 3))
    with pytest.raises(ValueError):
        identity_params(-1, 0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
