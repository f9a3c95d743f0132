"""Number formatting shared by the dashboards: short, fixed-width, unit-aware."""

from __future__ import annotations

__all__ = ["fmt_bytes", "fmt_count", "fmt_latency", "fmt_money", "fmt_percent", "fmt_rate"]


def fmt_count(value: float) -> str:
    """``1234567`` → ``1.23M``."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.2f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def fmt_rate(value: float) -> str:
    """Per-second rates: ``12.3/s``."""
    return f"{fmt_count(value)}/s" if value >= 1000 else f"{value:.1f}/s"


def fmt_latency(ms: float | None) -> str:
    """Milliseconds: ``85 ms``, ``1.24 s``; ``—`` when unknown."""
    if ms is None:
        return "—"
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


def fmt_percent(value: float | None) -> str:
    """``12.3%``; ``—`` when unknown."""
    return "—" if value is None else f"{value:.1f}%"


def fmt_money(value: float) -> str:
    """US dollars with cents, or four decimals below one cent."""
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def fmt_bytes(value: float) -> str:
    """``1536`` → ``1.5 KiB``."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
