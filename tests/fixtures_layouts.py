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
