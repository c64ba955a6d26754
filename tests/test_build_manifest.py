"""Manifest building across readers: identities, duplicate ids, expected counts."""

from __future__ import annotations

from pipeline.config import ExpectedCounts
from pipeline.data.build_manifest import build_manifest
from tests import fixtures_layouts as fx


def test_case_variants_of_one_file_are_a_counted_skip(tmp_path):
    root = fx.build_casia(tmp_path)
    fx.write_image(root / "0000045" / "001.JPG", fx.CASIA_SIZE, seed=9)  # same id as 001.jpg
    df, skipped, summary = build_manifest("web", reader="casia_webface", root=root, options={})
    assert df["image_id"].is_unique
    # the sorted listing puts 001.JPG before 001.jpg: the first keeps the id, the second is the skip
    assert [(s.path, s.reason.split(":")[0]) for s in skipped] == [("0000045/001.jpg", "duplicate image id")]
    assert df.loc[df["image_id"] == "web/0000045/001", "path"].item() == "0000045/001.JPG"
    assert summary.skipped_by_reason == {"duplicate image id": 1}


def test_identities_index_the_sorted_subjects_and_expected_counts(tmp_path):
    root = fx.build_oulu(tmp_path)
    df, skipped, summary = build_manifest("oulu", reader="oulu_casia", root=root, options={},
                                          expected=ExpectedCounts(subjects=80, sequences=summary_sequences(root)))
    subjects = sorted(df["subject"].unique())
    assert [int(df.loc[df["subject"] == s, "identity"].iloc[0]) for s in subjects] == list(range(len(subjects)))
    assert summary.expected_differences == {
        "subjects": {"expected": 80, "actual": len(subjects), "difference": len(subjects) - 80}}


def summary_sequences(root):
    return sum(1 for subject in root.iterdir() for seq in subject.iterdir() if seq.is_dir())
