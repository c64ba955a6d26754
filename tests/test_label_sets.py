"""Frame-level labels from sequence labels: the Oulu Six/Seven and CK+ 8-class protocols."""

from __future__ import annotations

import pandas as pd

from pipeline.config import STANDARD_LABEL_SETS
from pipeline.data.label_sets import apply_label_set


def _manifest(rows):
    """rows: (subject, sequence, expression, n_frames, frames kept)."""
    out = []
    for subject, seq, expr, n, frames in rows:
        for f in frames:
            out.append(dict(image_id=f"d/{subject}/{seq}/{f:05d}", subject=subject, sequence=seq, expression=expr,
                            frame=f, n_frames=n))
    df = pd.DataFrame(out)
    df["expression"] = df["expression"].astype(pd.StringDtype())
    return df


def test_oulu_six_and_seven():
    sets = STANDARD_LABEL_SETS
    df = _manifest([("P001", "Anger", "Anger", 10, [0, 7, 8, 9]), ("P001", "Surprise", "Surprise", 6, [0, 3, 4, 5])])
    six = apply_label_set(df, sets["oulu_six"])
    assert list(six["frame"]) == [7, 8, 9, 3, 4, 5]
    assert list(six["label_name"]) == ["Anger"] * 3 + ["Surprise"] * 3
    assert list(six["label"]) == [0, 0, 0, 5, 5, 5]
    seven = apply_label_set(df, sets["oulu_seven"])
    assert len(seven) == 8
    first = seven[seven["frame"] == 0]
    assert set(first["label_name"]) == {"Neutral"} and set(first["label"]) == {0}
    assert list(seven[seven["sequence"] == "Anger"]["label"]) == [0, 1, 1, 1]


def test_ckplus_unlabelled_sequences_give_nothing():
    sets = STANDARD_LABEL_SETS
    df = _manifest([("S005", "001", "disgust", 11, [0, 8, 9, 10]), ("S005", "002", None, 9, [0, 6, 7, 8])])
    eight = apply_label_set(df, sets["ckplus_eight"])
    assert list(eight["sequence"]) == ["001"] * 4
    assert list(eight["label"]) == [0, 3, 3, 3]


def test_short_sequence_frames_count_as_peak():
    sets = STANDARD_LABEL_SETS
    df = _manifest([("P002", "Fear", "Fear", 3, [0, 1, 2])])
    seven = apply_label_set(df, sets["oulu_seven"])
    assert list(seven["label_name"]) == ["Fear"] * 3
