"""Licensed datasets: where each is obtained and how its root must look, for one clear message when it is missing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DatasetError

__all__ = ["LICENSED", "LicensedInfo", "verify_licensed_file", "verify_licensed_root"]


@dataclass(frozen=True)
class LicensedInfo:
    title: str
    obtain: str
    layout: str


LICENSED: dict[str, LicensedInfo] = {
    "oulu_casia": LicensedInfo(
        "Oulu-CASIA NIR&VIS facial expression database (VIS, Strong illumination)",
        "request it from the University of Oulu, Center for Machine Vision and Signal Analysis",
        "the folder holding P001/Anger/000.jpeg (OriginalImg/VL/Strong)"),
    "ckplus": LicensedInfo(
        "CK+ (Extended Cohn-Kanade)",
        "request it from the University of Pittsburgh (Jeffrey Cohn's lab, after signing its agreement)",
        "the folder holding cohn-kanade-images/ and Emotion/"),
    "casia_webface": LicensedInfo(
        "CASIA-WebFace",
        "request it from CASIA's Center for Biometrics and Security Research",
        "the folder holding one sub-folder per identity (0000045/001.jpg)"),
    "msceleb": LicensedInfo(
        "MS-Celeb-1M (cleaned, aligned TSV)",
        "it was withdrawn by Microsoft in 2019; use a copy your institution holds under its original terms",
        "the path of FaceImageCroppedWithAlignment.tsv (root is where its shards are extracted)"),
    "cavi": LicensedInfo(
        "CaVI (caricature and visual images, from CaVINet)",
        "it is for research use only, distributed by the CaVINet authors: get it through the CaVINet project page "
        "(https://lsaiml.github.io/CaVINet/), whose repository holds the CaVI_Dataset folder",
        "the CaVI_Dataset folder itself (holding Caricature/ and Real/)"),
    "webcaricature": LicensedInfo(
        "WebCaricature",
        "request it through its authors' page at Nanjing University (https://cs.nju.edu.cn/rl/WebCaricature.htm)",
        "the unpacked WebCaricature folder (holding OriginalImages/, FacialPoints/ and EvaluationProtocols/)"),
    "lfw": LicensedInfo(
        "Labeled Faces in the Wild", "it is public: use source.kind: lfw to download it",
        "the folder holding Aaron_Eckhart/Aaron_Eckhart_0001.jpg"),
}


def verify_licensed_root(name: str, reader: str, root: Path, *, param: str) -> Path:
    """Return ``root`` if it is a non-empty folder, else raise a one-line :class:`DatasetError`.

    The message names the dataset, where it is obtained, and the param to set.
    """
    if root.is_dir() and any(root.iterdir()):
        return root
    state = "is empty" if root.is_dir() else "is not a folder" if root.exists() else "does not exist"
    raise _missing(name, reader, root, state, param)


def verify_licensed_file(name: str, reader: str, path: Path, *, param: str) -> Path:
    """Return ``path`` if it is a non-empty file (e.g. the MS-Celeb-1M TSV).

    Raises:
        DatasetError: as :func:`verify_licensed_root` does for a folder.
    """
    if path.is_file() and path.stat().st_size > 0:
        return path
    state = "is empty" if path.is_file() else "is not a file" if path.exists() else "does not exist"
    raise _missing(name, reader, path, state, param)


def _missing(name: str, reader: str, path: Path, state: str, param: str) -> DatasetError:
    info = LICENSED[reader]
    return DatasetError(
        f"dataset '{name}' ({info.title}) not found: {path} {state}. It is licensed: {info.obtain}; "
        f"then set {param} in params.yaml to {info.layout}."
    )
