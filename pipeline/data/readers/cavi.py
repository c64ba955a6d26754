"""CaVI: caricatures and photos ("visual images") of 205 public figures, from CaVINet (docs/method.md §5.7).

On-disk layout (``root`` is the ``CaVI_Dataset`` folder itself: CaVINet's pair files name images relative to it,
e.g. ``Caricature/Aamir_Khan\\Aamir_Khan_c_0.jpg``, and the original's ``--data_dir`` points at it)::

    <root>/Caricature/Aamir_Khan/Aamir_Khan_c_0.jpg
    <root>/Caricature/Aamir_Khan/Aamir_Khan_c_16(1).jpg
    <root>/Caricature/Aamir_Khan/Thumbs.db
    <root>/Caricature/Akhilesh_yadav/Akhilesh_yadav_c_1.jpg
    <root>/Real/Aamir_Khan/Aamir_Khan_r_0.jpg
    <root>/Real/akhilesh_yadav/akhilesh_yadav_r_0.jpg

- two modality folders, ``Caricature`` (``is_caricature`` = True) and ``Real`` (photos, False); both must exist;
- inside each, one folder per identity, the images inside (``.jpg``; the original lists ``<id>/*.jpg``).

Subjects: the identity folder name **upper-cased**, as the original matches identities (docs/method.md §5.7): CaVI
spells some identities differently in its two folders (``Caricature/Akhilesh_yadav``, ``Real/akhilesh_yadav``:
one subject ``AKHILESH_YADAV``), while misspellings stay apart (``Aravind_Kejriwal`` and ``arvind_kejriwal`` are
two subjects, as in the original). ``path`` keeps the folder's own spelling (``Real/akhilesh_yadav/…``): it is the
pair files' path with ``\\`` replaced by ``/``.

Manifest rows: ``sequence`` = ``""``, ``n_frames`` = 1, ``frame`` = the 1-based position of the file in the path
order of all the subject's image files (caricatures first, so two files of a subject never share a frame),
image_id ``<dataset>/<SUBJECT>/<file stem>`` (CaVI's stems carry ``_c_`` / ``_r_``: unique per subject).

Skips: files at root level or in a modality folder, folders other than ``Caricature`` / ``Real`` at root level,
folders nested in an identity folder (CaVINet's ``Real/Vladimir_Putin`` holds 47 folders of other people's photos,
which the original never lists), files without the ``.jpg`` extension, empty identity folders, unreadable images.
Hidden files and Windows' ``Thumbs.db`` (in most CaVI folders) are ignored.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipeline.data.readers._common import add_image, has_ext, relpath, require_records, user_entries
from pipeline.data.readers.base import Check, ReadResult, require_dir
from pipeline.errors import DatasetError
from pipeline.reader_options import CaviOptions

__all__ = ["CAVI_MODALITIES", "CaviOptions", "read_cavi"]

#: modality folder → ``is_caricature``
CAVI_MODALITIES: dict[str, bool] = {"Caricature": True, "Real": False}
IMAGE_EXT = ".jpg"


def read_cavi(root: Path, dataset: str, *, options: dict | None = None, check: Check = "decode") -> ReadResult:
    """Read a CaVI tree (layout in the module docstring).

    Raises:
        ValueError: any option (the reader has none).
        DatasetError: ``root``, ``Caricature`` or ``Real`` missing; no usable image at all.
    """
    CaviOptions.parse(options)
    root = require_dir(Path(root), "CaVI root")
    for modality in CAVI_MODALITIES:
        if not (root / modality).is_dir():
            raise DatasetError(f"CaVI folder {modality!r} missing under {root}: {_where_root(root)}")
    result = ReadResult()
    images: dict[str, list[tuple[Path, bool]]] = defaultdict(list)  # SUBJECT -> (image, is_caricature)
    for entry in user_entries(root):
        if not entry.is_dir():
            result.skip(relpath(entry, root), "stray file: expected the Caricature and Real folders at root level")
        elif entry.name not in CAVI_MODALITIES:
            result.skip(relpath(entry, root), f"unknown folder: {entry.name!r}, expected Caricature or Real")
        else:
            _list_modality(entry, root, CAVI_MODALITIES[entry.name], images, result)
    for subject in sorted(images):
        _add_subject(subject, sorted(images[subject]), root, dataset, check, result)
    return require_records(result, root, f"CaVI dataset {dataset!r}")


def _where_root(root: Path) -> str:
    """How to point ``root`` at the right folder (a hint when it is the folder above ``CaVI_Dataset``)."""
    if (root / "CaVI_Dataset").is_dir():
        return f"set root to {root / 'CaVI_Dataset'} (root is the CaVI_Dataset folder itself)"
    return "root must be the CaVI_Dataset folder, holding Caricature/ and Real/"


def _list_modality(folder: Path, root: Path, is_caricature: bool, images: dict[str, list[tuple[Path, bool]]],
                   result: ReadResult) -> None:
    """Add the image files of every identity folder of one modality folder to ``images`` (by upper-cased id)."""
    for identity in user_entries(folder):
        if not identity.is_dir():
            result.skip(relpath(identity, root), "stray file: expected identity folders in a modality folder")
            continue
        found = False
        for entry in user_entries(identity):
            found = True
            if entry.is_dir():
                result.skip(relpath(entry, root), "nested folder: expected image files in an identity folder")
            elif has_ext(entry, IMAGE_EXT):
                images[identity.name.upper()].append((entry, is_caricature))
            else:
                result.skip(relpath(entry, root), f"not an image: expected a {IMAGE_EXT} file")
        if not found:
            result.skip(relpath(identity, root), "empty identity folder")


def _add_subject(subject: str, files: list[tuple[Path, bool]], root: Path, dataset: str, check: Check,
                 result: ReadResult) -> None:
    """One record per readable image of a subject; ``files`` are in path order (``frame`` = position + 1)."""
    for position, (path, is_caricature) in enumerate(files, start=1):
        add_image(result, path, root, check, dataset=dataset, subject=subject, stem=path.name[: -len(IMAGE_EXT)],
                  frame=position, is_caricature=is_caricature)
