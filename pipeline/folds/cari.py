"""The caricature protocols: CaVI's down-sampled pair split and WebCaricature's pair, probe and gallery files
(docs/method.md §5.7, §5.8, §6.5, §6.6, §9.28).

Pure functions over file text and plain inputs (dataset-relative image paths, identity names); the stage that
writes the split maps them to manifest ids.

CaVI (CaVINet's ``train-test-files/testing_1.txt``)
---------------------------------------------------
One pair per line, fields separated by spaces (the real file has CRLF line ends; both are read)::

    charlie_sheen Caricature/charlie_sheen\\charlie_sheen_c_4.jpg \
        charlie_sheen Real/charlie_sheen\\charlie_sheen_r_5.jpg 1

- A path is ``<top>/<id>\\<file>``; ``\\`` and ``/`` both separate, giving the dataset-relative path
  ``<top>/<id>/<file>``. The first path must be under ``Caricature/``, the second under ``Real/`` (the original
  sets the caricature flag by column; the real file always agrees with the folder). The id column must name the
  path's folder (compared case-insensitively; the real file writes them identically).
- **Down-sampling** keeps pairs ``0, d, 2d, …`` of the file (0-based), i.e. ``pairs[::d]``: the training script
  zips the file's images two by two and keeps ``xx[0::down_sample]`` (``carirecog_dynamic_*_onelayer.py``, after
  ``get_image_paths_and_labels_cavi_fromfile``), ``--downsample 20`` by default. 200 pairs keep 10: 0, 20, …, 180.
- **Test identities** = the upper-cased id columns of the kept pairs (those whose two images are in the
  dataset). **Train** = every image of the dataset that is no kept pair's image and whose upper-cased subject is a
  test identity: closed-set identification, so CaVI's test identities are training identities by design (§9.28)
  and the leakage check is image-level. On CaVINet's ``testing_1.txt`` this keeps 652 of 13,035 pairs and 193
  identities (the file holds 195; the training script's comment says "195 classes").
- **Labels** index the sorted upper-cased training ids. The original sorts the names as written, then upper-cases
  them (``See_id``); the two orders differ only where case changes the order of two names, a permutation of the
  label indices that no metric sees.
- Identification sets (§6.5): the distinct photos (visual-id) and the distinct caricatures (cari-id) of the kept
  pairs, in order of first appearance (the original's ``set`` order is arbitrary).

Pair paths are matched to the dataset's images exactly, else case-insensitively. The public CaVI copy needs the
second rule: ``testing_1.txt`` writes ``Caricature/Will_Smith\\will_smith_c_4.jpg`` where the folder on disk is
``Caricature/will_smith`` (33 of the file's 2,207 distinct images, in 4 identities, differ from the disk only in
case). On Linux the original neither finds these files nor removes them from its training set; we match them
and count them (``n_case_matched``). A kept pair with an image in no form in the dataset is skipped and counted,
with its line and the path.

WebCaricature (``EvaluationProtocols/``)
----------------------------------------
- **Verification pairs** (``FaceVerification/Restricted/RestrictedView1_Dev{Train,Test}.txt``, the original's
  ``--train_pairs`` / ``--test_pairs``): a count line, then tab-separated rows, positive
  ``id  C00001  P00001`` or negative ``id_c  C00039  id_p  P00006``; ``.jpg`` is appended to image names.
  ``RestrictedView2.txt`` repeats a count line before each of its ten folds: a row of one integer starts a new
  block (``WebPair.block``). The original's reader (``get_image_paths_and_labels_webcari``) skips the first line
  and silently ignores rows of any other length; here such a row is an error naming the line.
- **Train** = every image of the training pairs, the caricature flag by column, once each (the original lists an
  image once per pair it appears in, so it samples it that often: ``train_listed`` keeps that count).
- **Labels** index the sorted union of the training and test-pair ids, names as written (the original's
  ``label_list_id_all_set``; it has no case folding there).
- **Identification** (``FaceIdentification/{C2P,P2C}/FR_{Probe,Gallery}_{C2P,P2C}{k}.txt``, k = 1..10; the
  original's ``evaluate_webcavi_identify.py`` reads ``FR_Probe_C2P%d.txt``): a header line (skipped, as the
  original does), then ``id\\timg`` rows. Probe and gallery ids are compared upper-cased (the original's
  ``See_id``). A probe whose id has no gallery image can never be a hit: it is excluded and counted
  (``excluded_probes``), not a silent miss.
- Whether the training ids overlap the probe/gallery ids is unstated; :attr:`IdentificationSplit.train_overlap`
  counts them (upper-cased), for the metrics.

The original's WebCaricature readers cut two characters off the last field (``[:-2]``) only when the row ends in
``\\r\\n``; both ``\\r\\n`` and ``\\n`` rows are read here, trailing tabs included (the original drops an empty last
field).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.folds.split import SplitError

__all__ = [
    "CAVI_DOWNSAMPLE", "CaviPair", "CaviSplit", "IdentificationSplit", "LabelledImages", "WebCariProtocol",
    "WebImage", "WebPair", "cavi_split", "check_cavi_split", "identification_files", "identification_split",
    "parse_cavi_pairs", "parse_webcari_list", "parse_webcari_pairs", "read_cavi_pairs", "read_webcari_list",
    "read_webcari_pairs", "webcari_protocol",
]

#: the original's ``--downsample`` default: every 20th test pair is kept
CAVI_DOWNSAMPLE = 20
CARICATURE, REAL = "Caricature", "Real"
#: the identification directions and splits of WebCaricature's View 2
DIRECTIONS = ("C2P", "P2C")
SPLITS = tuple(range(1, 11))


# --- CaVI --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaviPair:
    """One line of CaVINet's pair file; paths dataset-relative with ``/`` (``Caricature/<id>/<file>``)."""

    index: int
    line: int
    caricature_id: str
    caricature: str
    photo_id: str
    photo: str
    is_same: bool


def read_cavi_pairs(path: str | Path) -> list[CaviPair]:
    """:func:`parse_cavi_pairs` of a file (CRLF or LF)."""
    return parse_cavi_pairs(Path(path).read_text(encoding="utf-8"), str(path))


def parse_cavi_pairs(text: str, source: str = "<pairs>") -> list[CaviPair]:
    """The pairs of a CaVINet pair file, in file order (format in the module docstring). Blank lines are ignored.

    Raises:
        ValueError: a line without 5 fields, a label other than 0/1, a path not ``Caricature/<id>\\<file>`` (first)
            or ``Real/<id>\\<file>`` (second), or an id column that does not name its path's folder; the message
            names ``source`` and the line.
    """
    pairs: list[CaviPair] = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        where = f"{source}: line {number}"
        if len(fields) != 5:
            raise ValueError(f"{where}: expected 5 fields (id_c Caricature/<id>\\<file> id_r Real/<id>\\<file> "
                             f"label), got {len(fields)}")
        id_c, path_c, id_r, path_r, label = fields
        if label not in ("0", "1"):
            raise ValueError(f"{where}: the label must be 0 or 1, got {label!r}")
        cari = _cavi_path(where, path_c, CARICATURE, id_c)
        photo = _cavi_path(where, path_r, REAL, id_r)
        pairs.append(CaviPair(len(pairs), number, id_c, cari, id_r, photo, label == "1"))
    return pairs


def _cavi_path(where: str, path: str, top: str, identity: str) -> str:
    """``<top>/<id>/<file>`` from ``<top>/<id>\\<file>``, checked against the expected folder and id column."""
    parts = path.replace("\\", "/").split("/")
    if len(parts) != 3 or parts[0] != top or not parts[1] or not parts[2]:
        raise ValueError(f"{where}: expected a path {top}/<id>\\<file>, got {path!r}")
    if parts[1].upper() != identity.upper():
        raise ValueError(f"{where}: the id {identity!r} does not name the folder of {path!r}")
    return "/".join(parts)


@dataclass(frozen=True)
class LabelledImages:
    """Dataset-relative image paths with their labels (indices into the split's ``classes``)."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_caricature(self) -> tuple[bool, ...]:
        """The caricature flag of each image, read off its top folder (``Caricature/`` = True)."""
        return tuple(p.split("/", 1)[0] == CARICATURE for p in self.paths)


@dataclass(frozen=True)
class CaviSplit:
    """CaVI's closed-set split (module docstring).

    ``pairs`` are the kept pairs whose images are in the dataset, with the dataset's own paths. ``skipped`` lists
    the kept pairs dropped as ``(line, reason)``. ``unlabelled`` holds the test images whose identity has no
    training image left (no label: excluded from the identification sets, kept in the verification pairs).
    """

    classes: tuple[str, ...]
    train: LabelledImages
    pairs: tuple[CaviPair, ...]
    test_photos: LabelledImages
    test_caricatures: LabelledImages
    test_ids: tuple[str, ...]
    unlabelled: tuple[str, ...]
    skipped: tuple[tuple[int, str], ...]
    n_file_pairs: int
    downsample: int
    n_case_matched: int

    @property
    def test_images(self) -> frozenset[str]:
        """Every image of the kept pairs."""
        return frozenset(p for pair in self.pairs for p in (pair.caricature, pair.photo))

    def counts(self) -> dict[str, int]:
        """The numbers a stage logs as metrics."""
        return {"file_pairs": self.n_file_pairs, "kept_pairs": len(self.pairs) + len(self.skipped),
                "pairs": len(self.pairs), "same_pairs": sum(p.is_same for p in self.pairs),
                "skipped_pairs": len(self.skipped), "test_ids": len(self.test_ids), "classes": len(self.classes),
                "train_images": len(self.train), "test_photos": len(self.test_photos),
                "test_caricatures": len(self.test_caricatures), "unlabelled_test_images": len(self.unlabelled),
                "case_matched_images": self.n_case_matched}


def cavi_split(pairs: Sequence[CaviPair], images: Mapping[str, str], *,
               downsample: int = CAVI_DOWNSAMPLE) -> CaviSplit:
    """Down-sample the pairs and build the closed-set split (rules in the module docstring).

    Args:
        pairs: every pair of the file, in file order (:func:`parse_cavi_pairs`).
        images: every image of the dataset, dataset-relative path (``Caricature/<id>/<file>.jpg``) → subject;
            subjects are compared upper-cased.
        downsample: keep pairs ``0, d, 2d, …``.

    Raises:
        ValueError: ``downsample < 1``, or no kept pair has both images in the dataset.
        SplitError: the split fails :func:`check_cavi_split`.
    """
    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    resolve = _PathIndex(images)
    kept: list[CaviPair] = []
    skipped: list[tuple[int, str]] = []
    for pair in pairs[::downsample]:
        found = [resolve(pair.caricature), resolve(pair.photo)]
        if None in found:
            missing = pair.caricature if found[0] is None else pair.photo
            skipped.append((pair.line, f"image not in the dataset: {missing}"))
            continue
        kept.append(CaviPair(pair.index, pair.line, pair.caricature_id, found[0], pair.photo_id, found[1],
                             pair.is_same))
    if not kept:
        raise ValueError(f"no pair left: {len(pairs)} pairs, down-sampled by {downsample}, {len(skipped)} with an "
                         "image missing from the dataset")
    test_ids = sorted({i.upper() for p in kept for i in (p.caricature_id, p.photo_id)})
    test_images = {x for p in kept for x in (p.caricature, p.photo)}
    wanted = set(test_ids)
    train = sorted(p for p, s in images.items() if p not in test_images and str(s).upper() in wanted)
    classes = sorted({str(images[p]).upper() for p in train})
    label = {c: i for i, c in enumerate(classes)}
    test_sets: dict[bool, dict[str, int]] = {True: {}, False: {}}
    unlabelled: dict[str, None] = {}
    for p in kept:
        for path, identity, cari in ((p.caricature, p.caricature_id, True), (p.photo, p.photo_id, False)):
            if identity.upper() in label:
                test_sets[cari].setdefault(path, label[identity.upper()])
            else:
                unlabelled.setdefault(path)
    split = CaviSplit(
        classes=tuple(classes),
        train=LabelledImages(tuple(train), tuple(label[str(images[p]).upper()] for p in train)),
        pairs=tuple(kept),
        test_photos=LabelledImages(tuple(test_sets[False]), tuple(test_sets[False].values())),
        test_caricatures=LabelledImages(tuple(test_sets[True]), tuple(test_sets[True].values())),
        test_ids=tuple(test_ids), unlabelled=tuple(unlabelled), skipped=tuple(skipped), n_file_pairs=len(pairs),
        downsample=downsample, n_case_matched=resolve.n_case_matched)
    check_cavi_split(split)
    return split


def check_cavi_split(split: CaviSplit) -> None:
    """The image-level leakage checks (CaVI's test identities are training identities by design).

    Raises:
        SplitError: an image both in training and in a kept pair; an image of a kept pair in no test set; an image
            of a test set in no kept pair; a training identity that is not a test identity (the split is closed-set);
            a label outside ``classes``.
    """
    test = split.test_images
    problems: list[str] = []
    both = sorted(set(split.train.paths) & test)
    if both:
        problems.append(f"{len(both)} images both in training and in the test pairs (e.g. {both[0]})")
    listed = set(split.test_photos.paths) | set(split.test_caricatures.paths) | set(split.unlabelled)
    if test - listed:
        problems.append(f"{len(test - listed)} pair images in no test set (e.g. {sorted(test - listed)[0]})")
    if listed - test:
        problems.append(f"{len(listed - test)} test images in no kept pair (e.g. {sorted(listed - test)[0]})")
    extra = sorted(set(split.classes) - set(split.test_ids))
    if extra:
        problems.append(f"training identities that are no test identity: {extra[:3]}")
    for name, part in (("train", split.train), ("test_photos", split.test_photos),
                       ("test_caricatures", split.test_caricatures)):
        if any(not 0 <= label < len(split.classes) for label in part.labels):
            problems.append(f"{name}: a label outside 0..{len(split.classes) - 1}")
    if problems:
        raise SplitError("CaVI split: " + "; ".join(problems))


class _PathIndex:
    """Maps a pair path to the dataset's path: exact, else case-insensitive (unique); counts the latter."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.exact = set(paths)
        folded: dict[str, list[str]] = {}
        for p in self.exact:
            folded.setdefault(p.upper(), []).append(p)
        self.folded = folded
        self.case_matched: set[str] = set()

    def __call__(self, path: str) -> str | None:
        if path in self.exact:
            return path
        found = self.folded.get(path.upper(), [])
        if len(found) != 1:
            return None
        self.case_matched.add(found[0])
        return found[0]

    @property
    def n_case_matched(self) -> int:
        return len(self.case_matched)


# --- WebCaricature -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebImage:
    """One WebCaricature image: its identity and its path relative to the image folder (``<id>/<name>.jpg``)."""

    subject: str
    path: str


@dataclass(frozen=True)
class WebPair:
    """One verification pair: the caricature (first image column) and the photo (last), ``block`` = 0-based fold
    of a multi-block file (``RestrictedView2.txt``), 0 otherwise."""

    line: int
    block: int
    caricature: WebImage
    photo: WebImage
    is_same: bool


def _rows(text: str) -> list[tuple[int, list[str]]]:
    """``(line number, tab-separated fields)`` of the non-blank lines; CRLF/LF, trailing empty fields dropped."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = [f.strip() for f in raw.split("\t")]
        while fields and not fields[-1]:
            fields.pop()
        if fields:
            out.append((number, fields))
    return out


def _image(where: str, subject: str, name: str) -> WebImage:
    if not subject or not name or "/" in subject or "/" in name:
        raise ValueError(f"{where}: expected an identity and an image name, got {subject!r} and {name!r}")
    return WebImage(subject, f"{subject}/{name}.jpg")


def read_webcari_pairs(path: str | Path) -> list[WebPair]:
    """:func:`parse_webcari_pairs` of a file."""
    return parse_webcari_pairs(Path(path).read_text(encoding="utf-8"), str(path))


def parse_webcari_pairs(text: str, source: str = "<pairs>") -> list[WebPair]:
    """The pairs of a WebCaricature verification file, in file order (format in the module docstring).

    Raises:
        ValueError: the first line is not a count, or a row has neither 1 (a block's count), 3 nor 4 fields; the
            message names ``source`` and the line.
    """
    rows = _rows(text)
    if not rows or len(rows[0][1]) != 1 or not rows[0][1][0].isdigit():
        raise ValueError(f"{source}: line {rows[0][0] if rows else 1}: expected the count line (one integer)")
    pairs: list[WebPair] = []
    block = 0
    for number, fields in rows[1:]:
        where = f"{source}: line {number}"
        if len(fields) == 1 and fields[0].isdigit():
            block += 1
        elif len(fields) == 3:
            subject, cari, photo = fields
            pairs.append(WebPair(number, block, _image(where, subject, cari), _image(where, subject, photo), True))
        elif len(fields) == 4:
            id_c, cari, id_p, photo = fields
            pairs.append(WebPair(number, block, _image(where, id_c, cari), _image(where, id_p, photo), False))
        else:
            raise ValueError(f"{where}: expected 3 tab-separated fields (id cari photo) or 4 (id_c cari id_p photo), "
                             f"got {len(fields)}")
    return pairs


def identification_files(direction: str, k: int) -> tuple[str, str]:
    """The probe and gallery file names of split ``k`` (1..10): ``FR_Probe_C2P1.txt``, ``FR_Gallery_C2P1.txt``."""
    if direction not in DIRECTIONS or k not in SPLITS:
        raise ValueError(f"expected a direction in {DIRECTIONS} and k in 1..10, got {direction!r}, {k!r}")
    return f"FR_Probe_{direction}{k}.txt", f"FR_Gallery_{direction}{k}.txt"


def read_webcari_list(path: str | Path) -> list[WebImage]:
    """:func:`parse_webcari_list` of a file."""
    return parse_webcari_list(Path(path).read_text(encoding="utf-8"), str(path))


def parse_webcari_list(text: str, source: str = "<list>") -> list[WebImage]:
    """The images of a probe or gallery file: the first line is a header (skipped), then ``id\\timg`` rows.

    Raises:
        ValueError: the file is empty, or a row has not 2 tab-separated fields; the message names the line.
    """
    rows = _rows(text)
    if not rows:
        raise ValueError(f"{source}: empty file (expected a header line, then id<TAB>img rows)")
    out = []
    for number, fields in rows[1:]:
        where = f"{source}: line {number}"
        if len(fields) != 2:
            raise ValueError(f"{where}: expected 2 tab-separated fields (id img), got {len(fields)}")
        out.append(_image(where, *fields))
    return out


@dataclass(frozen=True)
class IdentificationSplit:
    """One probe/gallery split: the probes whose identity has a gallery image, those without (``excluded_probes``,
    never a hit), and how many of the split's identities (upper-cased) are training identities."""

    direction: str
    k: int
    probe: tuple[WebImage, ...]
    gallery: tuple[WebImage, ...]
    excluded_probes: tuple[WebImage, ...]
    train_overlap: int
    n_ids: int

    def labels(self) -> tuple[list[int], list[int]]:
        """Probe and gallery labels: indices into the sorted upper-cased gallery ids."""
        ids = sorted({g.subject.upper() for g in self.gallery})
        index = {s: i for i, s in enumerate(ids)}
        return [index[p.subject.upper()] for p in self.probe], [index[g.subject.upper()] for g in self.gallery]


def identification_split(probe: Sequence[WebImage], gallery: Sequence[WebImage], *, direction: str, k: int,
                         train_ids: Collection[str] = ()) -> IdentificationSplit:
    """Probes split by whether their identity (upper-cased) has a gallery image; overlap with ``train_ids``.

    Raises:
        ValueError: an empty gallery or probe list, or no probe identity in the gallery.
    """
    if not gallery or not probe:
        raise ValueError(f"{direction} split {k}: empty {'gallery' if not gallery else 'probe'} list")
    in_gallery = {g.subject.upper() for g in gallery}
    kept = tuple(p for p in probe if p.subject.upper() in in_gallery)
    if not kept:
        raise ValueError(f"{direction} split {k}: no probe identity has a gallery image")
    ids = in_gallery | {p.subject.upper() for p in probe}
    train = {t.upper() for t in train_ids}
    return IdentificationSplit(direction, k, kept, tuple(gallery),
                               tuple(p for p in probe if p.subject.upper() not in in_gallery),
                               len(ids & train), len(ids))


@dataclass(frozen=True)
class WebCariProtocol:
    """WebCaricature's training images, test pairs and identification splits (module docstring).

    ``train_is_caricature`` is each training image's flag by column (first image column = caricature);
    ``train_listed`` counts the training images' occurrences in the pair file (the original's sampling weight).
    """

    classes: tuple[str, ...]
    train: tuple[WebImage, ...]
    train_is_caricature: tuple[bool, ...]
    train_listed: int
    test_pairs: tuple[WebPair, ...]
    identification: tuple[IdentificationSplit, ...]
    skipped: tuple[tuple[str, str], ...]

    def train_labels(self) -> list[int]:
        """Each training image's index into ``classes``."""
        index = {c: i for i, c in enumerate(self.classes)}
        return [index[x.subject] for x in self.train]

    def counts(self) -> dict[str, int]:
        """The numbers a stage logs as metrics, overlaps included."""
        train_ids = {x.subject.upper() for x in self.train}
        test_ids = {x.subject.upper() for p in self.test_pairs for x in (p.caricature, p.photo)}
        train_paths = {x.path for x in self.train}
        test_paths = {x.path for p in self.test_pairs for x in (p.caricature, p.photo)}
        out = {"classes": len(self.classes), "train_images": len(self.train), "train_listed": self.train_listed,
               "train_ids": len(train_ids), "test_pairs": len(self.test_pairs),
               "test_same_pairs": sum(p.is_same for p in self.test_pairs), "test_ids": len(test_ids),
               "test_ids_in_train": len(test_ids & train_ids), "test_images_in_train": len(test_paths & train_paths),
               "skipped": len(self.skipped)}
        for s in self.identification:
            key = f"{s.direction}{s.k}"
            out |= {f"{key}_probes": len(s.probe), f"{key}_gallery": len(s.gallery),
                    f"{key}_excluded_probes": len(s.excluded_probes), f"{key}_ids": s.n_ids,
                    f"{key}_ids_in_train": s.train_overlap}
        return out


def webcari_protocol(
    train_pairs: Sequence[WebPair], test_pairs: Sequence[WebPair],
    identification: Mapping[tuple[str, int], tuple[Sequence[WebImage], Sequence[WebImage]]] | None = None,
    images: Collection[str] | None = None,
) -> WebCariProtocol:
    """WebCaricature's protocol from its parsed files.

    Args:
        train_pairs, test_pairs: :func:`parse_webcari_pairs` of the ``--train_pairs`` and ``--test_pairs`` files.
        identification: ``{(direction, k): (probe, gallery)}`` from :func:`parse_webcari_list`.
        images: the available image paths (``<id>/<name>.jpg``), or None to take every listed image as present.
            A training image or a probe/gallery image that is missing is dropped; a test pair with a missing image
            is skipped; each is counted in ``skipped`` as ``(where, reason)``.

    Raises:
        ValueError: no training image or no test pair left, or an identification split without probes or gallery.
    """
    available = None if images is None else frozenset(images)

    def present(x: WebImage) -> bool:
        return available is None or x.path in available

    skipped: list[tuple[str, str]] = []
    seen: dict[WebImage, bool] = {}
    missing_train: set[WebImage] = set()
    listed = 0
    for pair in train_pairs:
        for x, cari in ((pair.caricature, True), (pair.photo, False)):
            if present(x):
                listed += 1
                seen.setdefault(x, cari)
            elif x not in missing_train:
                missing_train.add(x)
                skipped.append((f"train line {pair.line}", f"image not in the dataset: {x.path}"))
    train = tuple(seen)
    tests = []
    for pair in test_pairs:
        missing = [x.path for x in (pair.caricature, pair.photo) if not present(x)]
        if missing:
            skipped.append((f"test line {pair.line}", f"image not in the dataset: {missing[0]}"))
        else:
            tests.append(pair)
    if not train or not tests:
        raise ValueError(f"WebCaricature protocol: {len(train)} training images and {len(tests)} test pairs left")
    classes = sorted({x.subject for x in train} | {x.subject for p in tests for x in (p.caricature, p.photo)})
    train_ids = {x.subject for x in train}
    splits = []
    for (direction, k), (probe, gallery) in sorted((identification or {}).items()):
        for role, group in (("probe", probe), ("gallery", gallery)):
            skipped += [(f"{direction}{k} {role}", f"image not in the dataset: {x.path}")
                        for x in group if not present(x)]
        splits.append(identification_split([x for x in probe if present(x)], [x for x in gallery if present(x)],
                                           direction=direction, k=k, train_ids=train_ids))
    return WebCariProtocol(tuple(classes), train, tuple(seen.values()), listed, tuple(tests), tuple(splits),
                           tuple(skipped))
