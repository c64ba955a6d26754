"""Builders of tiny datasets in each reader's exact on-disk layout (used by ``tests/test_readers.py``).

Every builder writes into a folder it is given (a pytest ``tmp_path``) and returns the dataset root. Images are
real, small PIL-encoded files; their sizes are module constants so tests can check ``width`` / ``height``.
"""

from __future__ import annotations

import base64
import io
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

OULU_SIZE = (48, 36)  # (width, height)
CKPLUS_SIZE = (40, 30)
LFW_SIZE = (25, 25)
CASIA_SIZE = (20, 24)
MSCELEB_SIZES = ((30, 20), (24, 32), (16, 16))  # cycled over the TSV rows


def image_bytes(size: tuple[int, int], fmt: str = "JPEG", seed: int = 0, noise: bool = False) -> bytes:
    """An encoded RGB image of ``size`` = (width, height): a gradient, or uniform noise (large when encoded)."""
    w, h = size
    rng = np.random.default_rng(seed)
    if noise:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        yy, xx = np.mgrid[0:h, 0:w]
        base = (xx * 255 // max(w - 1, 1) + yy * 255 // max(h - 1, 1) + seed * 37) % 256
        pixels = np.stack([base, 255 - base, np.full_like(base, seed * 50 % 256)], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    """Write a small image at ``path`` (format from the extension: JPEG or PNG)."""
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(size, fmt, seed))
    return path


def truncated_jpeg() -> bytes:
    """The first half of a 200x150 noise JPEG: the header is intact, the entropy-coded data is cut."""
    data = image_bytes((200, 150), "JPEG", seed=7, noise=True)
    return data[: len(data) // 2]


def random_bytes(n: int = 512, seed: int = 3) -> bytes:
    """``n`` random bytes: not any image format."""
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# --------------------------------------------------------------------------------------------- Oulu-CASIA

OULU_DEFAULT: Mapping[str, Mapping[str, int]] = {
    "P001": {"Anger": 6, "Happiness": 4},
    "P002": {"Anger": 2, "Surprise": 5},
}


#: ``write(path, subject_index, expression, frame, n_frames)``: draws one frame of a sequence (default: a gradient)
FrameWriter = Callable[[Path, int, str | None, int, int], None]


def build_oulu(base: Path, subjects: Mapping[str, Mapping[str, int]] = OULU_DEFAULT, *,
               write: FrameWriter | None = None) -> Path:
    """``<base>/Strong/P001/Anger/000.jpeg ...``: ``subjects[subject][expression]`` = number of frames."""
    root = base / "Strong"
    root.mkdir(parents=True)
    for s, (subject, sequences) in enumerate(subjects.items()):
        (root / subject).mkdir()
        for expression, n in sequences.items():
            for i in range(n):
                path = root / subject / expression / f"{i:03d}.jpeg"
                if write is None:
                    write_image(path, OULU_SIZE, seed=s * 10 + i)
                else:
                    write(path, s, expression, i, n)
    return root


# --------------------------------------------------------------------------------------------- CK+

# (subject, session) -> (n_frames, emotion file content or None for no label)
CKPLUS_DEFAULT: Mapping[tuple[str, str], tuple[int, str | None]] = {
    ("S005", "001"): (11, "   3.0000000e+00\n"),
    ("S010", "002"): (5, None),
    ("S011", "001"): (4, "   7.0000000e+00\n"),
}


def build_ckplus(
    base: Path,
    sessions: Mapping[tuple[str, str], tuple[int, str | None]] = CKPLUS_DEFAULT,
    *,
    with_emotion: bool = True,
    write: FrameWriter | None = None,
) -> Path:
    """``<base>/CK+/cohn-kanade-images/S005/001/S005_001_00000001.png`` and ``<base>/CK+/Emotion/S005/001/
    S005_001_00000011_emotion.txt`` (naming the last frame); ``.DS_Store`` files like the real archive.

    ``write`` gets the subject's index in order of first appearance and the session's emotion file content."""
    root = base / "CK+"
    images = root / "cohn-kanade-images"
    subject_index = {subject: i for i, subject in enumerate(dict.fromkeys(s for s, _ in sessions))}
    for k, ((subject, session), (n, label)) in enumerate(sessions.items()):
        folder = images / subject / session
        for i in range(1, n + 1):
            path = folder / f"{subject}_{session}_{i:08d}.png"
            if write is None:
                write_image(path, CKPLUS_SIZE, seed=k * 20 + i)
            else:
                write(path, subject_index[subject], label, i - 1, n)
        (images / subject / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        if with_emotion:
            label_dir = root / "Emotion" / subject / session
            label_dir.mkdir(parents=True, exist_ok=True)  # real archive: unlabelled sessions have empty folders
            if label is not None:
                (label_dir / f"{subject}_{session}_{n:08d}_emotion.txt").write_text(label)
    (images / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return root


# --------------------------------------------------------------------------------------------- LFW

LFW_DEFAULT: Mapping[str, int] = {"Aaron_Eckhart": 1, "Aaron_Peirsol": 3, "George_W_Bush": 2}


def build_lfw(base: Path, people: Mapping[str, int] = LFW_DEFAULT) -> Path:
    """``<base>/lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg``: ``people[name]`` images numbered from 1."""
    root = base / "lfw"
    for p, (name, n) in enumerate(people.items()):
        for i in range(1, n + 1):
            write_image(root / name / f"{name}_{i:04d}.jpg", LFW_SIZE, seed=p * 10 + i)
    return root


# --------------------------------------------------------------------------------------------- CASIA-WebFace

CASIA_DEFAULT: Mapping[str, Sequence[str]] = {
    "0000045": ("001.jpg", "002.jpg", "003.jpg"),
    "0000099": ("001.jpg",),
    "0000100": ("001.jpg", "002.jpg", "img_a.jpg"),
}


def build_casia(base: Path, subjects: Mapping[str, Sequence[str]] = CASIA_DEFAULT, *,
                write: FrameWriter | None = None) -> Path:
    """``<base>/CASIA-WebFace/0000045/001.jpg``: ``subjects[id]`` = file names (``write`` gets no expression)."""
    root = base / "CASIA-WebFace"
    for s, (subject, names) in enumerate(subjects.items()):
        for i, name in enumerate(names):
            if write is None:
                write_image(root / subject / name, CASIA_SIZE, seed=s * 10 + i)
            else:
                write(root / subject / name, s, None, i, len(names))
    return root


# --------------------------------------------------------------------------------------------- MS-Celeb-1M


def msceleb_row(mid: str, rank: int, face_id: str, jpeg: bytes) -> str:
    """One line of the cleaned MS-Celeb-1M TSV (7 TAB-separated fields, no newline)."""
    rect = base64.b64encode(struct.pack("<4f", 0.1, 0.2, 0.5, 0.6)).decode()
    fields = [
        mid,
        str(rank),
        f"http://img.example/{mid}/{rank}.jpg",
        f"http://page.example/{mid}/{rank}",
        face_id,
        rect,
        base64.b64encode(jpeg).decode(),
    ]
    return "\t".join(fields)


def build_msceleb_tsv(path: Path, n_good: int = 23, mids: Sequence[str] = ("m.0abc", "m.01x_y", "m.0zz9")) -> dict:
    """A TSV of ``n_good`` valid rows plus 2 bad ones (line 4: 5 fields; line 15: bad base64).

    Returns ``{member name: jpeg bytes}`` of the good rows (member = ``<MID>/<rank:03d>-<face_id>.jpg``).
    """
    lines: list[str] = []
    members: dict[str, bytes] = {}
    for i in range(n_good):
        mid, rank = mids[i % len(mids)], i // len(mids) + 1
        jpeg = image_bytes(MSCELEB_SIZES[i % len(MSCELEB_SIZES)], "JPEG", seed=i)
        lines.append(msceleb_row(mid, rank, "FaceId-0", jpeg))
        members[f"{mid}/{rank:03d}-FaceId-0.jpg"] = jpeg
    lines.insert(3, "m.0bad\t1\thttp://a\thttp://b\tFaceId-0")  # line 4: wrong field count
    lines.insert(14, msceleb_row("m.0bad", 2, "FaceId-0", b"").rsplit("\t", 1)[0] + "\t!!not base64!!")  # line 15
    path.write_text("\n".join(lines) + "\n")
    return members


# --------------------------------------------------------------------------------------------- CaVI

CAVI_SIZE = (24, 30)
# modality folder -> identity folder -> number of images; like the real CaVI: `Akhilesh_yadav` / `akhilesh_yadav`
# are one identity spelt two ways, `Aravind_Kejriwal` / `arvind_kejriwal` two misspelt identities in both folders
CAVI_DEFAULT: Mapping[str, Mapping[str, int]] = {
    "Caricature": {"Aamir_Khan": 2, "Akhilesh_yadav": 2, "Aravind_Kejriwal": 1, "arvind_kejriwal": 2},
    "Real": {"Aamir_Khan": 3, "akhilesh_yadav": 1, "Aravind_Kejriwal": 2, "arvind_kejriwal": 1},
}


def build_cavi(base: Path, folders: Mapping[str, Mapping[str, int]] = CAVI_DEFAULT) -> Path:
    """``<base>/CaVI_Dataset/Caricature/Aamir_Khan/Aamir_Khan_c_0.jpg`` and ``…/Real/Aamir_Khan/Aamir_Khan_r_0.jpg``
    (``folders[modality][identity]`` images numbered from 0), a ``Thumbs.db`` in every identity folder like the
    real distribution; returns the ``CaVI_Dataset`` folder (the reader's root)."""
    root = base / "CaVI_Dataset"
    for m, (modality, identities) in enumerate(folders.items()):
        letter = "c" if modality == "Caricature" else "r"
        for s, (identity, n) in enumerate(identities.items()):
            for i in range(n):
                write_image(root / modality / identity / f"{identity}_{letter}_{i}.jpg", CAVI_SIZE,
                            seed=m * 50 + s * 10 + i)
            (root / modality / identity).mkdir(parents=True, exist_ok=True)
            (root / modality / identity / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    return root


# --------------------------------------------------------------------------------------------- WebCaricature

WEBCARI_SIZE = (40, 48)
# identity folder (a person's name, with spaces) -> (caricatures, photos)
WEBCARI_DEFAULT: Mapping[str, tuple[int, int]] = {
    "Adele Laurie Blue Adkins": (2, 2),
    "Jeff Bridges": (1, 2),
}
#: landmark files written with LF line ends (the others with CRLF): both occur in the real dataset
WEBCARI_LF: tuple[str, ...] = ("Adele Laurie Blue Adkins/P00002",)


def webcari_landmarks(seed: int = 0, newline: str = "\r\n") -> str:
    """The text of a 17-point landmark file: one ``x y`` line per point inside :data:`WEBCARI_SIZE`, some in
    scientific notation like the real files."""
    w, h = WEBCARI_SIZE
    lines = []
    for k in range(17):
        x, y = 5 + (k * 7 + seed) % (w - 10), 6 + (k * 5 + seed) % (h - 12)
        lines.append(f"{x:.6e} {y}" if k % 4 == 0 else f"{x} {y}.5")
    return newline.join(lines) + newline


def build_webcaricature(base: Path, subjects: Mapping[str, tuple[int, int]] = WEBCARI_DEFAULT, *,
                        lf: Sequence[str] = WEBCARI_LF) -> Path:
    """``<base>/WebCaricature/OriginalImages/<name>/C00001.jpg`` (caricatures) and ``P00001.jpg`` (photos), numbered
    from 1, each with ``FacialPoints/<name>/<C|P>nnnnn.txt`` (CRLF, or LF for the ``<name>/<stem>`` in ``lf``), and
    an ``EvaluationProtocols`` folder with one restricted pair file; returns the ``WebCaricature`` folder."""
    root = base / "WebCaricature"
    for s, (name, (n_cari, n_photo)) in enumerate(subjects.items()):
        for prefix, n in (("C", n_cari), ("P", n_photo)):
            for i in range(1, n + 1):
                stem = f"{prefix}{i:05d}"
                write_image(root / "OriginalImages" / name / f"{stem}.jpg", WEBCARI_SIZE, seed=s * 10 + i)
                points = root / "FacialPoints" / name / f"{stem}.txt"
                points.parent.mkdir(parents=True, exist_ok=True)
                newline = "\n" if f"{name}/{stem}" in lf else "\r\n"
                points.write_bytes(webcari_landmarks(s + i, newline).encode())
    protocol = root / "EvaluationProtocols" / "FaceVerification" / "Restricted" / "RestrictedView2.txt"
    protocol.parent.mkdir(parents=True)
    names = list(subjects)
    protocol.write_bytes(f"1\r\n{names[0]}\tC00001\tP00001\r\n{names[0]}\tC00001\t{names[-1]}\tP00001\r\n".encode())
    (root / "Filenames").mkdir()
    return root


# --------------------------------------------------------------------------------------------- caricature protocols

#: one CaVI image of a pair line: (the id column, the identity folder as the line writes it, the file name)
CaviRef = tuple[str, str, str]


def cavi_pair_line(cari: CaviRef, photo: CaviRef, label: int) -> str:
    """One line of CaVINet's ``testing_1.txt``: ``id_c Caricature/<folder>\\<file> id_r Real/<folder>\\<file> label``
    (a backslash between folder and file, as in the real file)."""
    (cid, cfolder, cfile), (rid, rfolder, rfile) = cari, photo
    return f"{cid} Caricature/{cfolder}\\{cfile} {rid} Real/{rfolder}\\{rfile} {label}"


def write_cavi_pair_file(path: Path, kept: Sequence[str], filler: Sequence[str], *, downsample: int = 20) -> Path:
    """A CaVINet pair file of ``len(kept) * downsample`` lines (CRLF, like the real one): ``kept[i]`` at 0-based line
    ``i * downsample`` (the lines the protocol keeps), ``filler`` cycled over every other line."""
    lines = [kept[i // downsample] if i % downsample == 0 else filler[i % len(filler)]
             for i in range(len(kept) * downsample)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


#: a WebCaricature verification pair: ``(id, cari, photo)`` (same identity) or ``(id_c, cari, id_p, photo)``
WebRow = tuple[str, ...]
#: a probe or gallery entry: ``(id, image name without .jpg)``
WebEntry = tuple[str, str]

WEBCARI_RESTRICTED = "EvaluationProtocols/FaceVerification/Restricted"
WEBCARI_IDENTIFICATION = "EvaluationProtocols/FaceIdentification"


def write_webcari_protocol(root: Path, train: Sequence[WebRow], test: Sequence[WebRow],
                           identification: Mapping[str, tuple[Sequence[WebEntry], Sequence[WebEntry]]]) -> Path:
    """WebCaricature's protocol files under ``root`` (the ``WebCaricature`` folder), CRLF and tab-separated like the
    real ones: ``RestrictedView1_DevTrain.txt`` / ``RestrictedView1_DevTest.txt`` (a count line, then the rows) and
    ``FaceIdentification/<D>/FR_Probe_<D><k>.txt`` / ``FR_Gallery_<D><k>.txt`` for D in C2P, P2C and k in 1..10
    (a header line, then ``id<TAB>img`` rows; ``identification[D]`` = (probe, gallery), the same for every k).
    Returns ``root``."""
    restricted = root / WEBCARI_RESTRICTED
    restricted.mkdir(parents=True, exist_ok=True)
    for name, rows in (("RestrictedView1_DevTrain.txt", train), ("RestrictedView1_DevTest.txt", test)):
        text = "".join(f"{line}\r\n" for line in [str(len(rows)), *("\t".join(r) for r in rows)])
        (restricted / name).write_bytes(text.encode())
    for direction, (probe, gallery) in identification.items():
        folder = root / WEBCARI_IDENTIFICATION / direction
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(1, 11):
            for role, entries in (("Probe", probe), ("Gallery", gallery)):
                lines = ["id\timg", *(f"{i}\t{img}" for i, img in entries)]
                (folder / f"FR_{role}_{direction}{k}.txt").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return root
