"""pipeline.folds: subject-disjoint splits and their checks, the 4-type pair recipe, the pair file, LFW folds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import KFold

from pipeline.config import STANDARD_LABEL_SETS
from pipeline.data.readers.lfw import read_lfw_pairs
from pipeline.folds.lfw import lfw_fold_pairs, lfw_test_subjects
from pipeline.folds.pair_file import map_original_pairs, parse_image_path, read_pair_file
from pipeline.folds.pairs import PAIR_COLUMNS, expression_pairs
from pipeline.folds.split import (
    Fold,
    SplitError,
    assign_test_subjects,
    build_folds,
    check_folds,
    folds_from_subject_lists,
)
from tests.conftest import REPO

PAIR_FILE = REPO / "data/protocols/oulu_casia_identity_split_fold4_pairs_six.txt"
LFW_PAIRS = REPO / "data/protocols/lfw_pairs.txt"
PREFIX = "/data/zming/datasets/Oulu-Casia/VL_Strong_mtcnnpy_182_160/"
FOLD4 = ["P018", "P019", "P022", "P030", "P043", "P055", "P069", "P078"]
OULU = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
LABEL_SETS = STANDARD_LABEL_SETS


def oulu_manifest(subjects, expressions=OULU, n_frames=9, frames=None) -> pd.DataFrame:
    """A manifest like the oulu_casia reader's: first frame + last 3 of each (subject, expression) sequence.

    ``frames`` maps ``(subject, expression)`` to the kept frame indices when they are not the default ones.
    """
    rows = []
    for s in subjects:
        for e in expressions:
            kept = (frames or {}).get((s, e), [0, n_frames - 3, n_frames - 2, n_frames - 1])
            n = max(kept) + 1
            for f in kept:
                rows.append(dict(image_id=f"d/{s}/{e}/{f:05d}", subject=s, sequence=e, expression=e, frame=f,
                                 n_frames=n))
    df = pd.DataFrame(rows)
    df["expression"] = df["expression"].astype(pd.StringDtype())
    return df


def subjects(n, start=1):
    return [f"P{i:03d}" for i in range(start, start + n)]


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize(("n", "k"), [(80, 10), (23, 5), (40, 10), (11, 2)])
def test_contiguous_is_kfold_without_shuffle_on_sorted_subjects(n, k):
    subs = subjects(n)
    shuffled = list(np.random.default_rng(0).permutation(subs))
    got = assign_test_subjects(shuffled, k)
    want = [[subs[i] for i in test] for _, test in KFold(n_splits=k).split(subs)]
    assert got == want


def test_explicit_fold4_is_exact_and_the_rest_are_chunks_of_the_remaining():
    subs = subjects(80)
    tests = assign_test_subjects(subs, 10, explicit={4: FOLD4})
    assert tests[4] == FOLD4
    rest = [s for s in subs if s not in FOLD4]
    free = [f for f in range(10) if f != 4]
    want = [[rest[i] for i in t] for _, t in KFold(n_splits=9).split(rest)]
    assert [tests[f] for f in free] == want
    assert all(len(t) == 8 for t in tests)
    assert sorted(s for t in tests for s in t) == subs


def test_hash_assignment_is_stable_under_added_subjects_and_seeded():
    base = subjects(80)
    a = assign_test_subjects(base, 10, assignment="hash", seed=3)
    assert a == assign_test_subjects(list(reversed(base)), 10, assignment="hash", seed=3)  # order-free
    fold_of = {s: f for f, t in enumerate(a) for s in t}
    more = assign_test_subjects(base + subjects(40, start=200), 10, assignment="hash", seed=3)
    fold_of_more = {s: f for f, t in enumerate(more) for s in t}
    assert all(fold_of_more[s] == fold_of[s] for s in base)  # no existing subject moved
    other = assign_test_subjects(base, 10, assignment="hash", seed=4)
    assert other != a
    sizes = [len(t) for t in a]
    assert sum(sizes) == 80 and min(sizes) >= 1  # balanced only statistically (documented)
    # an explicit list keeps its subjects out of the hash; the other subjects keep their folds if the lists don't move
    with_explicit = assign_test_subjects(base, 10, assignment="hash", seed=3, explicit={4: FOLD4})
    assert with_explicit[4] == FOLD4


def test_contiguous_moves_subjects_when_one_is_added():
    """Documented trade-off: contiguous folds are balanced but not stable under additions."""
    a = assign_test_subjects(subjects(40), 10)
    b = assign_test_subjects(subjects(41), 10)  # P041 added: fold 0 grows to 5 subjects, every boundary shifts
    fold_a = {s: f for f, t in enumerate(a) for s in t}
    fold_b = {s: f for f, t in enumerate(b) for s in t}
    assert any(fold_a[s] != fold_b[s] for s in fold_a)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"explicit": {4: ["P018", "P999"]}}, "test_subjects.4: unknown subject(s) ['P999']"),
    ({"explicit": {1: ["P001"], 2: ["P001"]}}, "'P001' is listed for folds 1 and 2"),
    ({"explicit": {10: ["P001"]}}, "fold 10 is not in 0..9"),
    ({"exclude": ["P777"]}, "exclude_subjects: unknown subject(s) ['P777']"),
    ({"explicit": {0: ["P001"]}, "exclude": ["P001"]}, "also in exclude_subjects"),
])
def test_bad_explicit_lists_are_errors(kwargs, message):
    with pytest.raises(SplitError) as err:
        assign_test_subjects(subjects(30), 10, **kwargs)
    assert message in str(err.value)


def test_too_few_subjects_for_k():
    with pytest.raises(SplitError, match=r"fold\(s\) \[3, 4\] would have no test subject .*lower folds.k"):
        assign_test_subjects(subjects(3), 5)


def test_build_folds_is_disjoint_and_covers_every_image_once():
    m = oulu_manifest(subjects(12))
    folds = build_folds(m, 4, exclude=["P012"])
    seen = Counter(i for f in folds for i in f.test_image_ids)
    excluded_images = set(m.loc[m["subject"] == "P012", "image_id"])
    assert set(seen) == set(m["image_id"]) - excluded_images and set(seen.values()) == {1}
    for f in folds:
        assert not set(f.test_subjects) & set(f.train_subjects)
        assert "P012" not in f.train_subjects + f.test_subjects
        assert len(f.test_image_ids) + len(f.train_image_ids) == len(m) - len(excluded_images)
    assert build_folds(m, 4, exclude=["P012"]) == folds  # deterministic


def _crafted(m: pd.DataFrame) -> list[Fold]:
    """Two good folds of the 4-subject manifest ``m``: fold 0 tests P001, P002; fold 1 tests P003, P004."""
    ids = {s: tuple(sorted(g["image_id"])) for s, g in m.groupby("subject")}
    return [Fold(0, ("P001", "P002"), ("P003", "P004"), ids["P001"] + ids["P002"], ids["P003"] + ids["P004"]),
            Fold(1, ("P003", "P004"), ("P001", "P002"), ids["P003"] + ids["P004"], ids["P001"] + ids["P002"])]


def test_leakage_in_a_crafted_split_is_detected():
    m = oulu_manifest(subjects(4))
    good = _crafted(m)
    check_folds(good, m)  # passes
    f0, f1 = good
    bad_subject = Fold(0, f0.test_subjects, f0.train_subjects + ("P001",), f0.test_image_ids, f0.train_image_ids)
    with pytest.raises(SplitError, match="fold 0: 1 subject.* in both train and test .first: P001"):
        check_folds([bad_subject, f1], m)
    leaked_image = f0.test_image_ids[0]
    bad_image = Fold(0, f0.test_subjects, f0.train_subjects, f0.test_image_ids, f0.train_image_ids + (leaked_image,))
    with pytest.raises(SplitError, match="fold 0: 1 image.* in both train and test"):
        check_folds([bad_image, f1], m)
    p1_only = tuple(i for i in f0.test_image_ids if "/P001/" in i)
    rest_p2 = tuple(i for i in f0.test_image_ids if "/P002/" in i)
    # P001's images moved into train while P001 is still named a test subject: train images of a test subject
    sneaky = Fold(0, f0.test_subjects, f0.train_subjects, rest_p2, f0.train_image_ids + p1_only)
    with pytest.raises(SplitError, match="train image.* of test subjects .first: d/P001/"):
        check_folds([sneaky, f1], m)
    twice = Fold(1, ("P001", "P003", "P004"), ("P002",), tuple(sorted(p1_only + f1.test_image_ids)),
                 tuple(i for i in f1.train_image_ids if "/P002/" in i))
    with pytest.raises(SplitError, match=r"24 image\(s\) in more than one test fold"):
        check_folds([f0, twice], m)
    with pytest.raises(SplitError, match=r"48 image\(s\) in no test fold"):
        check_folds([f0], m)
    check_folds([f0], m, require_cover=False)


# ---------------------------------------------------------------- 4-type pair recipe


def _check_recipe(pairs: pd.DataFrame, m: pd.DataFrame, required) -> None:
    info = m.set_index("image_id")
    subj_in = info.loc[pairs["input_id"], "subject"].to_numpy()
    subj_ref = info.loc[pairs["reference_id"], "subject"].to_numpy()
    assert (pairs["is_same"].to_numpy() == (subj_in == subj_ref)).all()
    assert (pairs["is_required"].to_numpy() == (pairs["expression_actual"] == pairs["expression_required"])).all()
    assert (info.loc[pairs["reference_id"], "frame"].to_numpy() == 0).all()  # neutral first frames
    frame = info.loc[pairs["input_id"], "frame"].to_numpy()
    assert (frame >= info.loc[pairs["input_id"], "n_frames"].to_numpy() - 3).all()  # peak frames only
    assert (info.loc[pairs["input_id"], "expression"].to_numpy() == pairs["expression_actual"].to_numpy()).all()
    assert set(pairs["expression_required"]) <= set(required)
    want_type = np.where(pairs["is_same"], np.where(pairs["is_required"], 1, 2), np.where(pairs["is_required"], 3, 4))
    assert (pairs["type"].to_numpy() == want_type).all()
    assert (np.diff(pairs["type"].to_numpy()) >= 0).all()  # appended type by type
    assert list(pairs["row"]) == list(range(len(pairs)))


def test_recipe_types_counts_and_flags():
    m = oulu_manifest(subjects(8))
    test = ["P002", "P003", "P005", "P007"]
    ps = expression_pairs(m, LABEL_SETS["oulu_six"], test, ["Happiness", "Surprise"], seed=[0, 4])
    pairs = ps.pairs
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert ps.counts_by_type() == {"1": 48, "2": 48, "3": 48, "4": 48}  # 4 subjects x 6 references x 2 required
    assert not ps.skipped
    _check_recipe(pairs, m, ["Happiness", "Surprise"])
    assert set(m.set_index("image_id").loc[pairs["input_id"], "subject"]) <= set(test)
    # order within a type: reference (subject, sequence) then required expression, as the original file
    t1 = pairs[pairs["type"] == 1]
    assert list(t1["reference_id"][:4]) == ["d/P002/Anger/00000"] * 2 + ["d/P002/Disgust/00000"] * 2
    assert list(t1["expression_required"][:2]) == ["Happiness", "Surprise"]


def test_recipe_is_seeded():
    m = oulu_manifest(subjects(6))
    args = (m, LABEL_SETS["oulu_six"], subjects(6), ["Happiness", "Surprise"])
    a = expression_pairs(*args, seed=[0, 1]).pairs
    pd.testing.assert_frame_equal(a, expression_pairs(*args, seed=[0, 1]).pairs)
    b = expression_pairs(*args, seed=[0, 2]).pairs
    assert not a["input_id"].equals(b["input_id"])
    assert a["reference_id"].equals(b["reference_id"])  # only the draws change


def test_combinations_without_candidates_are_skipped_and_counted():
    subs = subjects(3)
    m = oulu_manifest(subs)
    m = m[~((m["subject"] == "P001") & (m["sequence"] == "Happiness"))]  # P001 has no happy sequence
    ps = expression_pairs(m, LABEL_SETS["oulu_six"], subs, ["Happiness", "Surprise"], seed=0)
    # P001 has 5 references (its Happiness sequence with its first frame is gone)
    assert ps.skipped == Counter({"type1:Happiness": 5})
    assert ps.counts_by_type() == {"1": 12 + 17, "2": 34, "3": 34, "4": 34}
    _check_recipe(ps.pairs, m, ["Happiness", "Surprise"])
    one = expression_pairs(m, LABEL_SETS["oulu_six"], ["P002"], ["Happiness"], seed=0)
    assert one.skipped == Counter({"type3:Happiness": 6, "type4:Happiness": 6})
    assert one.counts_by_type() == {"1": 6, "2": 6}


def test_ckplus_names_and_unlabelled_sequences():
    """CK+: required happy/surprise by name; references = first frames of labelled sequences only."""
    rows = []
    for s, seqs in {"S005": [("001", "happy", 10), ("002", None, 8)], "S010": [("001", "surprise", 12)],
                    "S011": [("003", "anger", 9), ("004", "happy", 7)]}.items():
        for seq, expr, n in seqs:
            for f in (0, n - 3, n - 2, n - 1):
                rows.append(dict(image_id=f"ck/{s}/{seq}/{f:08d}", subject=s, sequence=seq, expression=expr,
                                 frame=f, n_frames=n))
    m = pd.DataFrame(rows)
    m["expression"] = m["expression"].astype(pd.StringDtype())
    ps = expression_pairs(m, LABEL_SETS["ckplus_eight"], ["S005", "S010", "S011"], ["happy", "surprise"], seed=1)
    refs = set(ps.pairs["reference_id"])
    assert refs == {"ck/S005/001/00000000", "ck/S010/001/00000000", "ck/S011/003/00000000", "ck/S011/004/00000000"}
    assert "neutral" not in set(ps.pairs["expression_actual"])
    assert not ps.pairs["input_id"].str.startswith("ck/S005/002/").any()  # unlabelled: no candidate
    # S005 has no surprise, S010 no happy and nothing non-happy/non-surprise... skips are counted per combination
    assert ps.skipped["type1:surprise"] == 1 + 2 and ps.skipped["type1:happy"] == 1
    assert ps.skipped["type2:happy"] == 1 + 0 and ps.skipped["type2:surprise"] == 1
    _check_recipe(ps.pairs, m, ["happy", "surprise"])


def test_unknown_required_expression():
    with pytest.raises(ValueError, match=r"required expression\(s\) \['Happy'\]"):
        expression_pairs(oulu_manifest(subjects(2)), LABEL_SETS["oulu_six"], ["P001"], ["Happy"], seed=0)


# ---------------------------------------------------------------- the original pair file


def _fold4_manifest(lines) -> pd.DataFrame:
    """80 subjects; fold-4 subjects keep the frames the pair file names (plus frame 0 and the sequence's last 3)."""
    frames: dict[tuple[str, str], set[int]] = {}
    for p in lines:
        for path in (p.input_path, p.reference_path):
            s, e, f = parse_image_path(path, PREFIX)
            frames.setdefault((s, e), {0}).add(f)
    full = {key: sorted(fs | {max(fs) - 2, max(fs) - 1} if max(fs) >= 3 else fs) for key, fs in frames.items()}
    return oulu_manifest(subjects(80), frames=full, n_frames=9)


def test_original_pair_file_parses():
    lines = read_pair_file(PAIR_FILE)
    assert len(lines) == 384 and [p.row for p in lines] == list(range(384))
    assert all(p.is_same for p in lines[:192]) and not any(p.is_same for p in lines[192:])
    assert {p.expression_ref for p in lines} == {-1}
    assert all(p.reference_path.endswith("_000.png") for p in lines)
    subs = {parse_image_path(x, PREFIX)[0] for p in lines for x in (p.input_path, p.reference_path)}
    assert sorted(subs) == FOLD4
    assert parse_image_path(lines[0].input_path, PREFIX) == ("P022", "Happiness", 23)
    assert parse_image_path(lines[0].input_path, None) == ("P022", "Happiness", 23)
    assert parse_image_path(lines[0].input_path, "/elsewhere/") is None


def test_original_pair_file_maps_to_manifest_ids():
    lines = read_pair_file(PAIR_FILE)
    m = _fold4_manifest(lines)
    ps = map_original_pairs(lines, m, LABEL_SETS["oulu_six"].classes, prefix=PREFIX)
    assert not ps.unmatched and len(ps.pairs) == 384
    assert ps.counts_by_type() == {"1": 96, "2": 96, "3": 96, "4": 96}
    first = ps.pairs.iloc[0]
    assert (first["input_id"], first["reference_id"]) == ("d/P022/Happiness/00023", "d/P022/Anger/00000")
    assert (first["expression_actual"], first["expression_required"], first["type"]) == ("Happiness", "Happiness", 1)
    assert ps.pairs.iloc[96]["type"] == 2 and ps.pairs.iloc[96]["expression_actual"] == "Surprise"
    info = m.set_index("image_id")
    same = info.loc[ps.pairs["input_id"], "subject"].to_numpy() == info.loc[ps.pairs["reference_id"], "subject"]
    assert (ps.pairs["is_same"].to_numpy() == same).all()
    # without the images of one sequence: those lines are unmatched, with the reason
    gone = m[~((m["subject"] == "P022") & (m["sequence"] == "Anger"))]
    ps = map_original_pairs(lines, gone, LABEL_SETS["oulu_six"].classes, prefix=PREFIX)
    assert ps.unmatched and len(ps.pairs) + len(ps.unmatched) == 384
    assert ps.unmatched[0] == (0, "image not in the manifest: subject P022, sequence Anger, frame 0")
    wrong_prefix = map_original_pairs(lines, m, LABEL_SETS["oulu_six"].classes, prefix="/data/other/")
    assert len(wrong_prefix.unmatched) == 384 and wrong_prefix.unmatched[0][1].startswith("unexpected path")


def test_pair_file_flags_that_contradict_paths_are_unmatched(tmp_path):
    text = PAIR_FILE.read_text().splitlines()
    text[1] = text[1].replace("  True  3  3  -1  True", "  False  3  3  -1  True")
    text[2] = text[2].replace("  True  5  5  -1  True", "  True  4  5  -1  False")
    (tmp_path / "p.txt").write_text("\n".join(text) + "\n")
    lines = read_pair_file(tmp_path / "p.txt")
    ps = map_original_pairs(lines, _fold4_manifest(lines), LABEL_SETS["oulu_six"].classes, prefix=PREFIX)
    assert [r for r, _ in ps.unmatched] == [0, 1]
    assert "IdentityIssame = False but the subjects are P022 and P022" in ps.unmatched[0][1]
    assert "Expression_actual = 4 (Sadness) but the input is a Surprise frame" in ps.unmatched[1][1]


@pytest.mark.parametrize(("line", "message"), [
    ("0  /a/P1/Anger/P1_Anger_001.png  /a/P1/Anger/P1_Anger_000.png  True  0  3  -1", "line 2: expected 8 fields"),
    ("0  /a/P1/Anger/P1_Anger_001.png  /a/P1/Anger/P1_Anger_000.png  yes  0  3  -1  True",
     "line 2: IdentityIssame must be True or False, got 'yes'"),
    ("x  /a/P1/Anger/P1_Anger_001.png  /a/P1/Anger/P1_Anger_000.png  True  0  3  -1  True",
     "line 2: No must be an integer"),
])
def test_bad_pair_file_lines(tmp_path, line, message):
    header = PAIR_FILE.read_text().splitlines()[0]
    (tmp_path / "p.txt").write_text(f"{header}\n{line}\n")
    with pytest.raises(ValueError, match=message):
        read_pair_file(tmp_path / "p.txt")
    (tmp_path / "q.txt").write_text(f"{line}\n")
    with pytest.raises(ValueError, match="line 1: expected the header"):
        read_pair_file(tmp_path / "q.txt")


# ---------------------------------------------------------------- LFW


def _lfw_manifest(pairs, drop=()) -> pd.DataFrame:
    images = {(p.name1, p.i1) for p in pairs} | {(p.name2, p.i2) for p in pairs}
    images -= set(drop)
    rows = [dict(image_id=f"lfw/{n}/{n}_{i:04d}", subject=n, frame=i) for n, i in sorted(images)]
    return pd.DataFrame(rows)


def test_lfw_folds_are_the_official_blocks():
    pairs = read_lfw_pairs(LFW_PAIRS)
    missing = (pairs.pairs[5].name1, pairs.pairs[5].i1)
    m = _lfw_manifest(pairs, drop=[missing])
    fold1 = lfw_fold_pairs(pairs, m, 1)
    assert list(fold1.pairs["row"]) == list(range(600, 1200))
    assert fold1.pairs["is_same"].tolist() == [True] * 300 + [False] * 300
    first = pairs.pairs[600]
    assert fold1.pairs.iloc[0]["input_id"] == f"lfw/{first.name1}/{first.name1}_{first.i1:04d}"
    assert (fold1.pairs["type"] == 0).all() and fold1.pairs["expression_actual"].isna().all()
    fold0 = lfw_fold_pairs(pairs, m, 0)
    dropped = [r for r, p in enumerate(pairs.pairs[:600]) if missing in ((p.name1, p.i1), (p.name2, p.i2))]
    assert 5 in dropped and len(fold0.pairs) == 600 - len(dropped)
    assert [r for r, _ in fold0.unmatched] == dropped
    assert fold0.unmatched[0][1] == f"image not in the manifest: {missing[0]} {missing[1]}"
    tests = lfw_test_subjects(pairs, set(m["subject"]))
    assert len(tests) == 10 and sum(map(len, tests)) == len(set().union(*map(set, tests)))  # disjoint people
    folds = folds_from_subject_lists(m, tests)
    check_folds(folds, m, require_cover=False)


def test_drop_unaligned_removes_and_counts_pairs_touching_failed_images():
    from pipeline.folds.pairs import drop_unaligned, pairs_frame

    rows = [{"input_id": i, "reference_id": r, "is_same": s, "expression_actual": "Happiness",
             "expression_required": "Happiness", "is_required": True, "type": 1 if s else 3, "row": k}
            for k, (i, r, s) in enumerate([("a1", "a0", True), ("b1", "a0", False), ("a2", "x0", True),
                                           ("y1", "z0", False)])]
    pairs = pairs_frame(rows)
    kept, counts = drop_unaligned(pairs, ["a0", "a1", "a2", "b1", "y1"])  # x0 and z0 failed alignment
    assert kept["row"].tolist() == [0, 1]  # original order kept
    assert counts == {"input_not_aligned": 0, "reference_not_aligned": 2, "dropped": 2}
    kept, counts = drop_unaligned(pairs, ["a0"])
    assert kept.empty and counts == {"input_not_aligned": 4, "reference_not_aligned": 2, "dropped": 4}
