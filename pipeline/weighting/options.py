"""Validation of a weighting's options (a params.yaml method block minus its ``weighting`` key).

Every problem raises :class:`ValueError` with one line that names the method, the option and what is allowed, e.g.
``weighting 'dynamic': option 'variant' is 'foo'; choose one of: fer, cavi, webcari``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["OptionReader"]

_MISSING = object()


class OptionReader:
    """Reads typed, range-checked options of one method and rejects the ones nobody read.

    Usage::

        opts = OptionReader("dynamic", options)
        sigma = opts.number("sigma", 0.01, low=0.0, low_open=True)
        opts.finish()            # unknown keys -> ValueError listing the allowed ones

    Args:
        method: the weighting's registry name (for the messages).
        options: the option mapping (None = no options).
    """

    def __init__(self, method: str, options: Mapping[str, Any] | None) -> None:
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"weighting {method!r}: options must be a mapping, got {type(options).__name__}")
        self.method = method
        self._options = dict(options)
        self._known: list[str] = []

    def _fail(self, key: str, problem: str) -> ValueError:
        return ValueError(f"weighting {self.method!r}: option {key!r} {problem}")

    def has(self, key: str) -> bool:
        """Whether ``key`` was given at all (a given ``None`` counts)."""
        return key in self._options

    def _get(self, key: str, default: Any) -> Any:
        if key not in self._known:
            self._known.append(key)
        return self._options.get(key, default)

    def number(self, key: str, default: float, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        """A finite real number (int or float, not bool) in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
        value = self._get(key, default)
        return self._check_number(key, value, low=low, high=high, low_open=low_open)

    def optional_number(self, key: str, default: float | None, *, low: float | None = None,
                        low_open: bool = False) -> float | None:
        """Like :meth:`number`, but ``None`` (YAML ``null``) is allowed and returned as is."""
        value = self._get(key, default)
        if value is None:
            return None
        return self._check_number(key, value, low=low, high=None, low_open=low_open, allow_null=True)

    def _check_number(self, key: str, value: Any, *, low: float | None, high: float | None, low_open: bool,
                      allow_null: bool = False) -> float:
        bound = _describe_range(low, high, low_open)
        null = " or null" if allow_null else ""
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self._fail(key, f"must be a finite number{bound}{null}, got {value!r}")
        value = float(value)
        if low is not None and (value < low or (low_open and value == low)):
            raise self._fail(key, f"must be a number{bound}{null}, got {value!r}")
        if high is not None and value > high:
            raise self._fail(key, f"must be a number{bound}{null}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        """``true`` or ``false`` (no 0/1, no strings)."""
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        """One of ``choices`` (case-sensitive string)."""
        value = self._get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self._fail(key, f"is {value!r}; choose one of: {', '.join(choices)}")
        return value

    def number_list(self, key: str, default: Sequence[float], length: int, *, low: float | None = None) -> list[float]:
        """A list of exactly ``length`` finite numbers, each ``>= low`` when given."""
        value = self._get(key, default)
        what = f"must be a list of {length} finite numbers" + (f" >= {low:g}" if low is not None else "")
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != length:
            raise self._fail(key, f"{what} (one per task), got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise self._fail(key, f"{what}, got {value!r}")
            if low is not None and v < low:
                raise self._fail(key, f"{what}, got {value!r}")
            out.append(float(v))
        return out

    def finish(self) -> None:
        """Raise for any option that no reader asked for."""
        unknown = [k for k in self._options if k not in self._known]
        if unknown:
            allowed = ", ".join(self._known) if self._known else "none"
            raise ValueError(f"weighting {self.method!r}: unknown option {unknown[0]!r}; allowed options: {allowed}")


def _describe_range(low: float | None, high: float | None, low_open: bool) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" <= {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}]"
