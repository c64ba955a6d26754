"""Learning-rate schedules (:class:`~pipeline.settings.ScheduleSettings`): piecewise constant, or a schedule file
in the original format (docs/method.md §5.6).

Piecewise constant: the rate at ``t`` is ``lr · decay^k`` with ``k`` = the number of ``boundaries`` ``<= t``; ``t`` is
the 0-based step when pretraining and the 1-based loop-epoch when fine-tuning (no boundaries: a constant rate).

File format (``data/protocols/learning_rate_schedule_*.txt``): lines ``epoch: lr``; ``#`` starts a comment;
blank lines are ignored. The rate of loop-epoch ``e`` (1-based, the original's ``epoch_current``) is the value on
the last line whose key is ``<= e``. Keys must increase.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.settings import ScheduleSettings

__all__ = ["LrSchedule", "read_schedule", "schedule_from"]


@dataclass(frozen=True)
class LrSchedule:
    """``points``: ``(epoch, lr)`` sorted by epoch; a single ``(0, lr)`` point is a constant rate."""

    points: tuple[tuple[int, float], ...]
    source: str = "constant"

    @classmethod
    def constant(cls, lr: float) -> LrSchedule:
        return cls.piecewise(lr, (), 1.0)

    @classmethod
    def piecewise(cls, lr: float, boundaries: tuple[int, ...] | list[int], decay: float) -> LrSchedule:
        """``lr · decay^k`` from the ``k``-th of the increasing ``boundaries`` on (``lr`` before the first)."""
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        points = [(0, float(lr))] + [(int(b), float(lr) * decay ** k) for k, b in enumerate(boundaries, start=1)]
        return cls(tuple(points), source="constant" if not boundaries else "piecewise")

    def at(self, epoch: int) -> float:
        """The rate of 1-based loop-epoch ``epoch``.

        Raises:
            ValueError: ``epoch`` is before the first key of the file.
        """
        rate = None
        for key, lr in self.points:
            if key <= epoch:
                rate = lr
            else:
                break
        if rate is None:
            raise ValueError(f"{self.source}: no learning rate for epoch {epoch} (first key {self.points[0][0]})")
        return rate


def read_schedule(path: str | Path) -> LrSchedule:
    """Parse a schedule file.

    Raises:
        ValueError: missing file, a malformed line (``file:line: ...``), keys not increasing, no entries.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"learning-rate schedule file not found: {path}")
    points: list[tuple[int, float]] = []
    for no, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        try:
            if not sep:
                raise ValueError
            epoch, lr = int(key.strip()), float(value.strip())
        except ValueError:
            raise ValueError(f"{path}:{no}: expected 'epoch: learning_rate', got {raw.strip()!r}") from None
        if lr <= 0 or epoch < 0:
            raise ValueError(f"{path}:{no}: epoch must be >= 0 and learning rate > 0, got {raw.strip()!r}")
        if points and epoch <= points[-1][0]:
            raise ValueError(f"{path}:{no}: epochs must increase ({epoch} after {points[-1][0]})")
        points.append((epoch, lr))
    if not points:
        raise ValueError(f"{path}: no 'epoch: learning_rate' lines")
    return LrSchedule(tuple(points), source=str(path))


def schedule_from(settings: ScheduleSettings) -> LrSchedule:
    """The schedule ``settings`` describe: its ``file``, or ``lr``/``boundaries``/``decay``.

    Raises:
        ValueError: an unreadable schedule file (see :func:`read_schedule`).
    """
    if settings.file is not None:
        return read_schedule(settings.file)
    return LrSchedule.piecewise(settings.lr, tuple(settings.boundaries), settings.decay)
