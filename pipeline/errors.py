"""Exceptions whose message is meant for the user, one line, no traceback."""

from __future__ import annotations

__all__ = ["DatasetError", "ImageProblem", "ParamsError", "UserError"]


class UserError(Exception):
    """A problem the user must fix (bad input, missing data, wrong param). Stages print ``str(exc)`` and exit 1."""


class DatasetError(UserError):
    """A dataset is missing, incomplete or malformed."""


class ParamsError(UserError):
    """``params.yaml`` does not match the schema."""


class ImageProblem(Exception):
    """One image file cannot be read; the message is the reason it is skipped (not a user error by itself)."""
