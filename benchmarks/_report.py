"""Result rows, the printed table and the saved JSON."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Row", "machine", "render_table", "save"]


@dataclasses.dataclass
class Row:
    """One figure, its baseline from the same run, and its target.

    ``ratio`` is ``value / baseline_value``; ``passed`` is ``None`` when the
    figure has no target (shown for context).
    """

    benchmark: str
    figure: str
    value: float
    unit: str
    baseline: str = ""
    baseline_value: float | None = None
    target: str = ""
    passed: bool | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """``value / baseline_value``, when there is a baseline."""
        if self.baseline_value is None or not self.baseline_value or math.isnan(self.value):
            return None
        return self.value / self.baseline_value

    def as_dict(self) -> dict[str, Any]:
        """The row as plain JSON data."""
        data = dataclasses.asdict(self)
        data["ratio"] = self.ratio
        return data


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def render_table(rows: list[Row]) -> str:
    """One plain-text table of every row."""
    header = ("benchmark", "figure", "value", "baseline (same run)", "ratio", "target", "result")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        baseline = (
            f"{row.baseline}: {_fmt(row.baseline_value)}"
            if row.baseline_value is not None
            else row.baseline or "-"
        )
        ratio = row.ratio
        result = "-" if row.passed is None else ("pass" if row.passed else "MISS")
        lines.append(
            (
                row.benchmark,
                row.figure,
                f"{_fmt(row.value)} {row.unit}".strip(),
                baseline,
                "-" if ratio is None else f"{ratio:.2f}x",
                row.target or "-",
                result,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in out)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where the figures came from: CPUs, load, Python and library versions."""
    versions: dict[str, str | None] = {}
    for name in (
        "metricstream",
        "websockets",
        "uvicorn",
        "uvloop",
        "httptools",
        "fastapi",
        "starlette",
        "msgspec",
        "redis",
        "hiredis",
    ):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()),
        "versions": versions,
    }


def save(directory: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``directory/<UTC timestamp>.json`` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path
