"""WebCaricature: 252 identities, about 6k caricatures and 5,974 photos, 17 landmarks per image (docs/method.md §5.8).

On-disk layout (``root`` is the unpacked ``WebCaricature`` folder, which also holds ``EvaluationProtocols/`` for the
protocol stage; identity folders are people's names, with spaces)::

    <root>/OriginalImages/Adele Laurie Blue Adkins/C00001.jpg      caricatures: C + 5 digits
    <root>/OriginalImages/Adele Laurie Blue Adkins/P00001.jpg      photos: P + 5 digits
    <root>/FacialPoints/Adele Laurie Blue Adkins/C00001.txt        17 lines "x y" (CRLF or LF line ends)
    <root>/EvaluationProtocols/FaceVerification/...                 pair files, read by the protocol stage
    <root>/EvaluationProtocols/FaceIdentification/...               FR_Probe_* / FR_Gallery_* files

Faces are not detected: the original crops each image around its 17 landmarks (``get_faces_webcari.py``). The
manifest cannot carry the landmark file without a new column, which would change every manifest's bytes; its path
is a function of the image's path instead: :func:`landmark_path` (``OriginalImages/<id>/<stem>.jpg`` →
``FacialPoints/<id>/<stem>.txt``), and :func:`pipeline.data.landmarks.read_landmarks` parses it. The reader keeps
only images whose landmark file parses, so both exist for every manifest row.

Manifest rows: ``subject`` = the identity folder name as on disk, ``is_caricature`` = the ``C`` prefix,
``sequence`` = ``""``, ``n_frames`` = 1, ``frame`` = the 1-based position of the file in the sorted listing of the
identity's image files (``C…`` before ``P…``), image_id ``<dataset>/<subject>/<stem>`` (``web/Adele Laurie Blue
Adkins/C00001``).

Skips: files at the top of ``OriginalImages``, folders nested in an identity folder, files not named
``C<digits>.jpg`` / ``P<digits>.jpg``, empty identity folders, images without a landmark file (``missing
landmarks``), landmark files that do not parse or do not hold 17 points (``bad landmarks``), unreadable images.
Hidden files and Windows' ``Thumbs.db`` are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.landmarks import IMAGES_DIR, LANDMARKS_DIR, N_LANDMARKS, landmark_path, read_landmarks
from pipeline.data.readers._common import add_image, relpath, require_records, user_entries
from pipeline.data.readers.base import Check, ReadResult, require_dir
from pipeline.errors import DatasetError
from pipeline.reader_options import WebCaricatureOptions

__all__ = [
    "IMAGES_DIR", "LANDMARKS_DIR", "N_LANDMARKS", "WebCaricatureOptions", "landmark_path", "read_landmarks",
    "read_webcaricature",
]

IMAGE_NAME = re.compile(r"^([CP])\d+\.(?i:jpg)$")


def read_webcaricature(root: Path, dataset: str, *, options: dict | None = None,
                       check: Check = "decode") -> ReadResult:
    """Read a WebCaricature tree (layout in the module docstring).

    Raises:
        ValueError: any option (the reader has none).
        DatasetError: ``root``, ``OriginalImages`` or ``FacialPoints`` missing; no usable image at all.
    """
    WebCaricatureOptions.parse(options)
    root = require_dir(Path(root), "WebCaricature root")
    for folder, what in ((IMAGES_DIR, "image"), (LANDMARKS_DIR, "landmark")):
        if not (root / folder).is_dir():
            raise DatasetError(f"WebCaricature {what} folder {folder!r} missing under {root}: {_where_root(root)}")
    result = ReadResult()
    for identity in user_entries(root / IMAGES_DIR):
        if identity.is_dir():
            _read_identity(identity, root, dataset, check, result)
        else:
            result.skip(relpath(identity, root), f"stray file: expected identity folders in {IMAGES_DIR}")
    return require_records(result, root, f"WebCaricature dataset {dataset!r}")


def _where_root(root: Path) -> str:
    """How to point ``root`` at the right folder (a hint when it is the folder above ``WebCaricature``)."""
    if (root / "WebCaricature" / IMAGES_DIR).is_dir():
        return f"set root to {root / 'WebCaricature'} (the folder holding {IMAGES_DIR}/ and {LANDMARKS_DIR}/)"
    return f"root must be the unpacked WebCaricature folder, holding {IMAGES_DIR}/ and {LANDMARKS_DIR}/"


def _read_identity(folder: Path, root: Path, dataset: str, check: Check, result: ReadResult) -> None:
    """One record per image of an identity folder with a usable landmark file and a readable image."""
    entries = user_entries(folder)
    if not entries:
        result.skip(relpath(folder, root), "empty identity folder")
        return
    images: list[tuple[Path, bool]] = []
    for entry in entries:
        match = IMAGE_NAME.match(entry.name)
        if entry.is_dir():
            result.skip(relpath(entry, root), "nested folder: expected image files in an identity folder")
        elif match is None:
            result.skip(relpath(entry, root), "unexpected name: expected C<digits>.jpg or P<digits>.jpg")
        else:
            images.append((entry, match.group(1) == "C"))
    for position, (path, is_caricature) in enumerate(images, start=1):
        rel = relpath(path, root)
        landmarks = landmark_path(rel)
        try:
            read_landmarks(root / landmarks, landmarks)
        except FileNotFoundError:
            result.skip(rel, f"missing landmarks: {landmarks} not found")
            continue
        except ValueError as problem:
            result.skip(rel, f"bad landmarks: {problem}")
            continue
        add_image(result, path, root, check, dataset=dataset, subject=folder.name, stem=path.stem, frame=position,
                  is_caricature=is_caricature)
