"""Dataset readers: one function per on-disk layout, all with the contract of :mod:`.base`.

``READERS`` maps the reader name used in ``params.yaml`` (``datasets.<name>.reader``) to its function and
``OPTION_MODELS`` (from :mod:`pipeline.reader_options`) to the pydantic model of its ``options``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from pipeline.data.readers.base import Check, ReadResult
from pipeline.data.readers.casia_webface import read_casia_webface
from pipeline.data.readers.cavi import read_cavi
from pipeline.data.readers.ckplus import read_ckplus
from pipeline.data.readers.lfw import read_lfw
from pipeline.data.readers.msceleb import read_msceleb
from pipeline.data.readers.oulu_casia import read_oulu_casia
from pipeline.data.readers.webcaricature import read_webcaricature
from pipeline.reader_options import OPTION_MODELS

__all__ = ["OPTION_MODELS", "READERS", "ReaderFn", "get_reader"]


class ReaderFn(Protocol):
    """``read_<layout>(root, dataset, *, options, check) -> ReadResult``."""

    def __call__(self, root: Path, dataset: str, *, options: dict | None = ..., check: Check = ...) -> ReadResult: ...


READERS: dict[str, ReaderFn] = {
    "oulu_casia": read_oulu_casia,
    "ckplus": read_ckplus,
    "lfw": read_lfw,
    "casia_webface": read_casia_webface,
    "msceleb": read_msceleb,
    "cavi": read_cavi,
    "webcaricature": read_webcaricature,
}



def get_reader(name: str) -> ReaderFn:
    """The reader called ``name``.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return READERS[name]
    except KeyError:
        raise ValueError(f"unknown reader {name!r} (valid: {', '.join(sorted(READERS))})") from None
