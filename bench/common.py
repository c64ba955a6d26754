"""Shared helpers of the benchmarks: machine description, a printed table, a JSON record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Where a benchmark ran: host CPU, core count, Python and torch versions (if importable), git commit."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["commit"] = None
    return info


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v: Any) -> str:
    return f"{v:,.3f}" if isinstance(v, float) and abs(v) < 10 else f"{v:,.1f}" if isinstance(v, float) else str(v)


def plain_settings(value: Any) -> Any:
    """A settings dataclass (:mod:`pipeline.settings`) as JSON-able data (tuples as lists), for a result's JSON."""
    return json.loads(json.dumps(dataclasses.asdict(value)))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")


def device_name(device: Any) -> str:
    """The GPU's name for a CUDA ``torch.device``, else the CPU model."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return machine().get("cpu") or platform.processor()


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages (other jobs on the machine skew CPU timings), or None where unsupported."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def print_results(rows: list[dict[str, Any]], columns: list[str], goals: list[dict[str, Any]],
                  skipped: list[dict[str, str]]) -> None:
    """The results table (``-`` for missing cells), the targets table and the skipped configurations."""
    if rows:
        print_table([{c: "-" if r.get(c) is None else r[c] for c in columns} for r in rows], columns)
    if goals:
        print()
        print_table(goals, ["target", "value", "goal", "met"])
    if skipped:
        print("\nskipped: " + "; ".join(f"{k['config']} ({k['why']})" for k in skipped))


def run_info(commit: str | None, cwd: Path | None = None) -> dict[str, Any]:
    """:func:`machine` with ``commit`` overridden when given, else whether the work tree has uncommitted changes."""
    info = machine()
    if commit:
        info["commit"] = commit
        return info
    try:
        out = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                             cwd=cwd).stdout
        info["uncommitted_changes"] = bool(out.strip())
    except (OSError, subprocess.CalledProcessError):
        info["uncommitted_changes"] = None
    return info
