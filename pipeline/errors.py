"""Exceptions whose message is meant for the user, one line, no traceback."""

from __future__ import annotations

__all__ = ["DatasetError", "ParamsError", "UserError"]


class UserError(Exception):
    """A problem the user must fix (bad input, missing data, wrong param). Stages print ``str(exc)`` and exit 1."""


class DatasetError(UserError):
    """A dataset is missing, incomplete or malformed."""


class ParamsError(UserError):
    """``params.yaml`` does not match the schema."""
