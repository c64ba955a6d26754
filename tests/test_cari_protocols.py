"""pipeline.folds.cari: CaVI's down-sampled closed-set split and WebCaricature's pair, probe and gallery files."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.folds.cari import (
    CaviPair,
    LabelledImages,
    cavi_split,
    check_cavi_split,
    identification_files,
    identification_split,
    parse_cavi_pairs,
    parse_webcari_list,
    parse_webcari_pairs,
    read_cavi_pairs,
    webcari_protocol,
)
from pipeline.folds.split import SplitError

# --- CaVI ---------------------------------------------------------------------------------------------------------


def cavi_line(cid: str, cfile: str, rid: str, rfile: str, label: int, *, cfolder: str | None = None,
              rfolder: str | None = None) -> str:
    """One CaVINet line: ``id_c Caricature/<id>\\<file> id_r Real/<id>\\<file> label``."""
    return (f"{cid} Caricature/{cfolder or cid}\\{cfile} {rid} Real/{rfolder or rid}\\{rfile} {label}")


def cavi_dataset(ids: list[str], n: int = 30) -> dict[str, str]:
    """``{relative path: upper-cased subject}`` for ``n`` caricatures and ``n`` photos per id (as the reader)."""
    return {f"{top}/{i}/{i}_{tag}_{k}.jpg": i.upper()
            for i in ids for top, tag in (("Caricature", "c"), ("Real", "r")) for k in range(n)}


IDS = [f"id{j:02d}" for j in range(10)]


def two_hundred_lines() -> list[str]:
    """200 pairs; pair ``p`` pairs caricature ``p % 30`` of ``IDS[p // 20]`` with a photo, every 20th is kept."""
    lines = []
    for p in range(200):
        a, b = IDS[p // 20], IDS[(p // 20 + p % 2) % 10]
        lines.append(cavi_line(a, f"{a}_c_{p % 30}.jpg", b, f"{b}_r_{p % 30}.jpg", int(a == b)))
    return lines


def test_downsample_keeps_pairs_0_20_40():
    """200 lines, downsample 20 → 10 pairs: indices 0, 20, …, 180, as the original's ``xx[0::down_sample]``."""
    pairs = parse_cavi_pairs("\n".join(two_hundred_lines()))
    assert len(pairs) == 200
    split = cavi_split(pairs, cavi_dataset(IDS), downsample=20)
    assert [p.index for p in split.pairs] == list(range(0, 200, 20))
    assert [p.line for p in split.pairs] == list(range(1, 201, 20))
    assert split.counts()["kept_pairs"] == 10 and split.n_file_pairs == 200
    # pair 0, 20, ... pairs id_k caricature 0 or 20 with its own photo: all kept pairs are same-identity pairs
    assert all(p.is_same for p in split.pairs)
    assert split.test_ids == tuple(i.upper() for i in IDS)
    check_cavi_split(split)


def test_backslash_paths_and_crlf_parse():
    text = ("charlie_sheen Caricature/charlie_sheen\\charlie_sheen_c_4.jpg charlie_sheen "
            "Real/charlie_sheen\\charlie_sheen_r_5.jpg 1\r\n"
            "Jay_Leno Caricature/Jay_Leno\\Jay_Leno_c_5.jpg michael_schumacher "
            "Real/michael_schumacher\\michael_schumacher_r_59.jpg 0\r\n")
    pairs = parse_cavi_pairs(text, "testing_1.txt")
    assert pairs == [
        CaviPair(0, 1, "charlie_sheen", "Caricature/charlie_sheen/charlie_sheen_c_4.jpg", "charlie_sheen",
                 "Real/charlie_sheen/charlie_sheen_r_5.jpg", True),
        CaviPair(1, 2, "Jay_Leno", "Caricature/Jay_Leno/Jay_Leno_c_5.jpg", "michael_schumacher",
                 "Real/michael_schumacher/michael_schumacher_r_59.jpg", False),
    ]


def test_closed_set_split_matches_ids_case_insensitively():
    """Test ids are the kept pairs' upper-cased ids; train = the other images of those ids, whatever the case of
    the folder, and pair paths whose case differs from the disk still find their image."""
    images = cavi_dataset(["Will_Smith", "bob"], n=4)
    # the public CaVI copy: the file writes Caricature/Will_Smith\will_smith_c_0.jpg, the disk has will_smith/...
    images = {p.replace("Caricature/Will_Smith/Will_Smith_c", "Caricature/will_smith/will_smith_c"): s
              for p, s in images.items()}
    images["Caricature/other/other_c_0.jpg"] = "OTHER"  # not a test identity: not in training
    text = "\n".join([
        cavi_line("Will_Smith", "will_smith_c_0.jpg", "will_smith", "Will_Smith_r_0.jpg", 1, rfolder="Will_Smith"),
        cavi_line("bob", "bob_c_0.jpg", "WILL_SMITH", "Will_Smith_r_1.jpg", 0, rfolder="Will_Smith"),
    ])
    split = cavi_split(parse_cavi_pairs(text), images, downsample=1)
    assert split.test_ids == ("BOB", "WILL_SMITH")
    assert split.classes == ("BOB", "WILL_SMITH")
    assert split.pairs[0].caricature == "Caricature/will_smith/will_smith_c_0.jpg"
    assert split.n_case_matched == 1
    assert "Caricature/other/other_c_0.jpg" not in split.train.paths
    # 2 ids × 8 images − 4 test images (2 caricatures, 2 photos)
    assert len(split.train) == 12 and not set(split.train.paths) & split.test_images
    assert split.test_photos.paths == ("Real/Will_Smith/Will_Smith_r_0.jpg", "Real/Will_Smith/Will_Smith_r_1.jpg")
    assert split.test_photos.labels == (1, 1)
    assert split.test_caricatures.labels == (1, 0)
    assert split.test_caricatures.is_caricature == (True, True) and split.test_photos.is_caricature == (False,) * 2
    assert {split.classes[label] for label in split.train.labels} == {"BOB", "WILL_SMITH"}


def test_identity_without_training_images_is_unlabelled():
    images = cavi_dataset(["a", "b"], n=2)
    images.pop("Caricature/b/b_c_1.jpg")
    images.pop("Real/b/b_r_1.jpg")  # b: its only images are in the test pair
    split = cavi_split(parse_cavi_pairs(cavi_line("a", "a_c_0.jpg", "b", "b_r_0.jpg", 0) + "\n"
                                        + cavi_line("b", "b_c_0.jpg", "a", "a_r_0.jpg", 0)), images, downsample=1)
    assert split.classes == ("A",)
    assert sorted(split.unlabelled) == ["Caricature/b/b_c_0.jpg", "Real/b/b_r_0.jpg"]
    assert split.test_photos.paths == ("Real/a/a_r_0.jpg",) and len(split.pairs) == 2


def test_missing_pair_image_is_a_counted_skip():
    images = cavi_dataset(["a"], n=3)
    text = "\n".join([cavi_line("a", "a_c_0.jpg", "a", "a_r_0.jpg", 1),
                      cavi_line("a", "a_c_9.jpg", "a", "a_r_1.jpg", 1)])
    split = cavi_split(parse_cavi_pairs(text), images, downsample=1)
    assert split.skipped == ((2, "image not in the dataset: Caricature/a/a_c_9.jpg"),)
    assert len(split.pairs) == 1 and split.counts()["skipped_pairs"] == 1
    with pytest.raises(ValueError, match="no pair left"):
        cavi_split(parse_cavi_pairs(text), {}, downsample=1)


@pytest.mark.parametrize(("line", "message"), [
    ("a Caricature/a\\a_c_0.jpg a Real/a\\a_r_0.jpg", "expected 5 fields"),
    ("a Caricature/a\\a_c_0.jpg a Real/a\\a_r_0.jpg 1 extra", "expected 5 fields"),
    ("a Caricature/a\\a_c_0.jpg a Real/a\\a_r_0.jpg 2", "label must be 0 or 1"),
    ("a Caricature/a\\a_c_0.jpg a Real/a\\a_r_0.jpg True", "label must be 0 or 1"),
    ("a Sketch/a\\a_c_0.jpg a Real/a\\a_r_0.jpg 1", "expected a path Caricature/<id>"),
    ("a Real/a\\a_r_1.jpg a Real/a\\a_r_0.jpg 1", "expected a path Caricature/<id>"),
    ("a Caricature/a\\a_c_0.jpg a Real/a\\b\\a_r_0.jpg 1", "expected a path Real/<id>"),
    ("a Caricature/b\\b_c_0.jpg a Real/a\\a_r_0.jpg 1", "does not name the folder"),
])
def test_bad_cavi_lines_name_file_and_line(line: str, message: str):
    good = cavi_line("a", "a_c_1.jpg", "a", "a_r_1.jpg", 1)
    with pytest.raises(ValueError, match=message) as err:
        parse_cavi_pairs(f"{good}\n\n{line}\n", "testing_1.txt")
    assert str(err.value).startswith("testing_1.txt: line 3: ")


def test_read_cavi_pairs_from_a_file(tmp_path):
    f = tmp_path / "testing_1.txt"
    f.write_bytes((cavi_line("a", "a_c_1.jpg", "a", "a_r_1.jpg", 1) + "\r\n").encode())
    assert read_cavi_pairs(f)[0].photo == "Real/a/a_r_1.jpg"


def test_check_cavi_split_catches_a_leak():
    split = cavi_split(parse_cavi_pairs("\n".join(two_hundred_lines())), cavi_dataset(IDS), downsample=20)
    leaked = LabelledImages((*split.train.paths, split.pairs[0].photo), (*split.train.labels, 0))
    with pytest.raises(SplitError, match="both in training and in the test pairs"):
        check_cavi_split(dataclasses.replace(split, train=leaked))
    with pytest.raises(ValueError, match="downsample"):
        cavi_split([], {}, downsample=0)


# --- WebCaricature --------------------------------------------------------------------------------------------------

PAIRS = ("2\r\n"
         "Adele Laurie Blue Adkins\tC00001\tP00001\r\n"
         "Alan Rickman\tC00002\tP00003\t\r\n"          # a trailing tab, as the original handles
         "Elizabeth Taylor\tC00039\tJennifer Aniston\tP00006\r\n"
         "Alan Rickman\tC00002\tAdele Laurie Blue Adkins\tP00001\r\n")


def test_webcari_pairs_parse_crlf_and_lf_alike():
    crlf = parse_webcari_pairs(PAIRS, "DevTest.txt")
    assert crlf == parse_webcari_pairs(PAIRS.replace("\r\n", "\n"))
    assert [p.is_same for p in crlf] == [True, True, False, False]
    neg = crlf[2]
    assert (neg.caricature.subject, neg.caricature.path) == ("Elizabeth Taylor", "Elizabeth Taylor/C00039.jpg")
    assert (neg.photo.subject, neg.photo.path) == ("Jennifer Aniston", "Jennifer Aniston/P00006.jpg")
    assert crlf[1].photo.path == "Alan Rickman/P00003.jpg" and crlf[0].line == 2


def test_webcari_view2_blocks_and_bad_rows():
    pairs = parse_webcari_pairs("1\nA\tC00001\tP00001\nB\tC1\tA\tP00001\n1\nB\tC00002\tP00002\nC\tC3\tB\tP00002\n")
    assert [p.block for p in pairs] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"f.txt: line 3: expected 3 tab-separated fields .* got 2"):
        parse_webcari_pairs("1\nA\tC00001\tP00001\nA\tC00001\n", "f.txt")
    with pytest.raises(ValueError, match="line 1: expected the count line"):
        parse_webcari_pairs("A\tC00001\tP00001\n", "f.txt")


def test_identification_lists_and_absent_probe_ids():
    probe = parse_webcari_list("3\r\nalan rickman\tC00002\r\nAdele\tC00001\r\nNobody\tC00005\r\n", "FR_Probe_C2P1.txt")
    gallery = parse_webcari_list("2\nAlan Rickman\tP00001\nAdele\tP00002\n")
    assert probe[0].path == "alan rickman/C00002.jpg"
    s = identification_split(probe, gallery, direction="C2P", k=1, train_ids=["ADELE", "Someone"])
    assert [p.subject for p in s.probe] == ["alan rickman", "Adele"]  # matched upper-cased, as the original
    assert [p.subject for p in s.excluded_probes] == ["Nobody"]       # counted, not a silent miss
    assert s.train_overlap == 1 and s.n_ids == 3
    probe_labels, gallery_labels = s.labels()
    assert probe_labels == [1, 0] and gallery_labels == [1, 0]
    assert identification_files("P2C", 10) == ("FR_Probe_P2C10.txt", "FR_Gallery_P2C10.txt")
    with pytest.raises(ValueError, match="line 2: expected 2 tab-separated fields"):
        parse_webcari_list("1\nAdele\tC1\tx\n")
    with pytest.raises(ValueError, match="no probe identity"):
        identification_split(probe[2:], gallery, direction="C2P", k=1)


def test_webcari_protocol_labels_overlaps_and_missing_images():
    train = parse_webcari_pairs("2\nA\tC1\tP1\nB\tC2\tA\tP1\nB\tC2\tP2\n")
    test = parse_webcari_pairs("1\nC\tC1\tP1\nC\tC2\tA\tP1\nD\tC1\tP9\n")
    probe = parse_webcari_list("h\nA\tC7\nC\tC1\nE\tC1\n")
    gallery = parse_webcari_list("h\nA\tP7\nC\tP1\n")
    images = {f"{s}/{n}.jpg" for s, n in [("A", "C1"), ("A", "P1"), ("B", "C2"), ("B", "P2"), ("C", "C1"),
                                          ("C", "C2"), ("C", "P1"), ("D", "C1"), ("A", "C7"), ("A", "P7"),
                                          ("E", "C1")]}
    w = webcari_protocol(train, test, {("C2P", 1): (probe, gallery)}, images)
    assert [x.path for x in w.train] == ["A/C1.jpg", "A/P1.jpg", "B/C2.jpg", "B/P2.jpg"]
    assert w.train_is_caricature == (True, False, True, False) and w.train_listed == 6
    assert w.classes == ("A", "B", "C")             # sorted union of train and test-pair ids
    assert w.train_labels() == [0, 0, 1, 1]
    assert w.skipped == (("test line 4", "image not in the dataset: D/P9.jpg"),)
    counts = w.counts()
    assert counts["test_pairs"] == 2 and counts["test_ids_in_train"] == 1 and counts["test_images_in_train"] == 1
    assert counts["C2P1_probes"] == 2 and counts["C2P1_excluded_probes"] == 1 and counts["C2P1_ids_in_train"] == 1
