"""The ``options`` of each dataset reader (``datasets.<name>.options`` in ``params.yaml``): pydantic models.

Import-light on purpose (pydantic only): the params schema (:mod:`pipeline.config`) validates a dataset's options
with :data:`OPTION_MODELS` before any reader runs, without importing the readers (:mod:`pipeline.data.readers`),
which use these models.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "CKPLUS_EMOTIONS", "OPTION_MODELS", "OULU_EXPRESSIONS", "CasiaWebFaceOptions", "CaviOptions", "CkPlusOptions",
    "FrameSelection", "ImageExt", "LfwOptions", "MsCelebOptions", "OuluCasiaOptions", "ReaderOptions",
    "WebCaricatureOptions",
]


class ReaderOptions(BaseModel):
    """Base of every reader's options model: unknown keys are errors, values are immutable.

    ``reader`` names the reader in error messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    reader: ClassVar[str] = "reader"

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None) -> Self:
        """Validate ``options`` (``None`` = all defaults).

        Raises:
            ValueError: one line naming the unknown or invalid option key.
        """
        try:
            return cls.model_validate(dict(options or {}))
        except ValidationError as exc:
            raise ValueError(_one_line(cls, exc)) from None


def _one_line(cls: type[ReaderOptions], exc: ValidationError) -> str:
    """A one-line message for the first error of ``exc``."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<options>"
    if err["type"] == "extra_forbidden":
        valid = ", ".join(sorted(cls.model_fields)) or "none: this reader takes no options"
        return f"unknown option {key!r} for reader {cls.reader!r} (valid: {valid})"
    return f"bad option {key!r} for reader {cls.reader!r}: {err['msg']}"


def _check_ext(value: str) -> str:
    if not value.startswith(".") or len(value) < 2 or "/" in value:
        raise ValueError(f"image_ext must look like '.jpg', got {value!r}")
    return value


class ImageExt(ReaderOptions):
    """``image_ext``: the extension of the image files (compared case-insensitively)."""

    image_ext: str = ".jpg"

    @field_validator("image_ext")
    @classmethod
    def _ext(cls, value: str) -> str:
        return _check_ext(value)


class FrameSelection(ImageExt):
    """Which frames of a sequence go into the manifest.

    ``keep_first`` first and ``keep_last`` last frames by sorted file order (a frame in both counts once);
    ``None`` for both keeps every frame. Mixing ``None`` and an integer is an error.
    """

    keep_first: int | None = Field(1, ge=0)
    keep_last: int | None = Field(3, ge=0)

    @model_validator(mode="after")
    def _both_or_none(self) -> Self:
        if (self.keep_first is None) != (self.keep_last is None):
            raise ValueError("keep_first and keep_last must both be null (all frames) or both integers")
        if self.keep_first == 0 and self.keep_last == 0:
            raise ValueError("keep_first = keep_last = 0 selects no frame")
        return self

    def select(self, n_frames: int) -> list[int]:
        """Sorted 0-based indices of the kept frames of a sequence of ``n_frames`` frames."""
        if self.keep_first is None or self.keep_last is None:
            return list(range(n_frames))
        first = range(min(self.keep_first, n_frames))
        last = range(max(n_frames - self.keep_last, 0), n_frames)
        return sorted(set(first) | set(last))


class CasiaWebFaceOptions(ImageExt):
    """Options of :func:`read_casia_webface` (``datasets.<name>.options`` in ``params.yaml``)."""

    reader: ClassVar[str] = "casia_webface"

    image_ext: str = ".jpg"
    min_images_per_subject: int = Field(1, ge=1)


CKPLUS_EMOTIONS: tuple[str, ...] = (
    "neutral",
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happy",
    "sadness",
    "surprise",
)


class CkPlusOptions(FrameSelection):
    """Options of :func:`read_ckplus` (``datasets.<name>.options`` in ``params.yaml``)."""

    reader: ClassVar[str] = "ckplus"

    image_ext: str = ".png"
    images_dir: str = "cohn-kanade-images"
    emotion_dir: str = "Emotion"
    emotions: tuple[str, ...] = Field(CKPLUS_EMOTIONS, min_length=1)


class LfwOptions(ImageExt):
    """Options of :func:`read_lfw` (``datasets.<name>.options`` in ``params.yaml``)."""

    reader: ClassVar[str] = "lfw"

    image_ext: str = ".jpg"


class MsCelebOptions(ReaderOptions):
    """Options of :func:`read_msceleb` (none yet; unknown keys are errors)."""

    reader: ClassVar[str] = "msceleb"


class CaviOptions(ReaderOptions):
    """Options of :func:`read_cavi` (none: the layout is fixed; unknown keys are errors)."""

    reader: ClassVar[str] = "cavi"


class WebCaricatureOptions(ReaderOptions):
    """Options of :func:`read_webcaricature` (none: the layout is fixed; unknown keys are errors)."""

    reader: ClassVar[str] = "webcaricature"


OULU_EXPRESSIONS: tuple[str, ...] = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")


class OuluCasiaOptions(FrameSelection):
    """Options of :func:`read_oulu_casia` (``datasets.<name>.options`` in ``params.yaml``)."""

    reader: ClassVar[str] = "oulu_casia"

    image_ext: str = ".jpeg"
    expressions: tuple[str, ...] = OULU_EXPRESSIONS
    subject_pattern: str = r"^P\d{3}$"

    @field_validator("subject_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value


#: reader name (``datasets.<name>.reader``) → the model of its options
OPTION_MODELS: dict[str, type[ReaderOptions]] = {
    "oulu_casia": OuluCasiaOptions,
    "ckplus": CkPlusOptions,
    "lfw": LfwOptions,
    "casia_webface": CasiaWebFaceOptions,
    "msceleb": MsCelebOptions,
    "cavi": CaviOptions,
    "webcaricature": WebCaricatureOptions,
}
