"""Terminal widgets: plain views over a :class:`~metricstream.store.MetricsStore`.

No widget touches the network. Each has an ``show(...)`` method that the app
calls with the part of the state it displays; the app decides when.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import DataTable, Sparkline, Static

from ...protocol import (
    CostUpdatePayload,
    ErrorUpdatePayload,
    KVCacheUpdatePayload,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SystemUpdatePayload,
)
from ...store import ConnectionStatus as ConnectionStatusValue
from .._format import fmt_bytes, fmt_count, fmt_latency, fmt_money, fmt_percent, fmt_rate

__all__ = [
    "STATE_COLOURS",
    "ConnectionBadge",
    "ConnectionStats",
    "ConnectionStatus",
    "CostPanel",
    "ErrorFeed",
    "KVCachePanel",
    "MetricsOverview",
    "ModelTable",
    "RateLimitPanel",
    "RequestTable",
    "SystemHealthPanel",
    "TrendPanel",
]

NVIDIA_GREEN = "#76B900"

#: The seed's ConnectionStatus colours.
STATE_COLOURS: Mapping[str, str] = {
    "CONNECTED": NVIDIA_GREEN,
    "CONNECTING": "#F5C400",
    "RECONNECTING": "#FF8C00",
    "ERROR": "#E5383B",
    "DISCONNECTED": "#8A8A8A",
    "CLOSED": "#8A8A8A",
}
_ANIMATED = frozenset({"CONNECTING", "RECONNECTING"})


def _bar(percent: float | None, width: int = 20, *, higher_is_better: bool = False) -> Text:
    """A horizontal gauge coloured by how worrying the value is."""
    if percent is None:
        return Text("n/a", style="dim")
    filled = round(max(0.0, min(percent, 100.0)) / 100 * width)
    load = 100.0 - percent if higher_is_better else percent
    colour = NVIDIA_GREEN if load < 70 else "#F5C400" if load < 90 else "#E5383B"
    bar = Text("█" * filled, style=colour)
    bar.append("░" * (width - filled), style="#3A3A3A")
    bar.append(f" {percent:5.1f}%")
    return bar


class ConnectionBadge(Static):
    """The seed's ConnectionBadge: just a coloured dot."""

    state: reactive[str] = reactive("DISCONNECTED")

    def render(self) -> Text:
        return Text("●", style=STATE_COLOURS.get(self.state, "#8A8A8A"))


class ConnectionStatus(Static):
    """The seed's ConnectionStatus: dot, state, attempts, latency.

    Yellow and orange dots blink while connecting or reconnecting; ``compact``
    shows only the dot and, when connected, the latency.
    """

    status: reactive[ConnectionStatusValue | None] = reactive(None)
    blink: reactive[bool] = reactive(False)

    def __init__(self, *, compact: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.compact = compact

    def on_mount(self) -> None:
        self.set_interval(0.5, self._toggle)

    def _toggle(self) -> None:
        if self.status is not None and self.status.state in _ANIMATED:
            self.blink = not self.blink
        elif self.blink:
            self.blink = False

    def render(self) -> Text:
        status = self.status
        state = status.state if status else "DISCONNECTED"
        colour = STATE_COLOURS.get(state, "#8A8A8A")
        text = Text("○" if self.blink else "●", style=f"bold {colour}")
        latency = (
            f"{status.latency * 1000:.0f} ms"
            if status and status.latency is not None and status.is_connected
            else None
        )
        if self.compact:
            if latency:
                text.append(f" {latency}", style="dim")
            return text
        label = {
            "CONNECTED": "Connected",
            "CONNECTING": "Connecting…",
            "RECONNECTING": "Reconnecting",
            "ERROR": "Error",
            "DISCONNECTED": "Disconnected",
            "CLOSED": "Closed",
        }.get(state, state.title())
        text.append(f" {label}", style=colour)
        if status and state == "RECONNECTING" and status.reconnect_attempts:
            text.append(f" (attempt {status.reconnect_attempts})", style=colour)
        if latency:
            text.append(f"  {latency}", style="dim")
        return text


class ConnectionStats(Static):
    """The seed's ConnectionStats card: the client's counters."""

    DEFAULT_CLASSES = "panel"

    def show(self, info: Mapping[str, object]) -> None:
        """Display the given ``name: value`` pairs."""
        text = Text()
        for name, value in info.items():
            text.append(f"{name:<13}", style="dim")
            text.append(f"{'—' if value is None else value}\n")
        self.update(text)


class MetricsOverview(Horizontal):
    """Service-wide totals as a row of cards."""

    CARDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("requests", "Requests"),
        ("tokens", "Tokens"),
        ("cost", "Cost"),
        ("latency", "Avg latency"),
        ("errors", "Error rate"),
        ("streaming", "Streaming"),
        ("rps", "Requests/s"),
        ("tps", "Tokens/s"),
        ("connections", "Dashboards"),
    )

    def compose(self) -> ComposeResult:
        for key, title in self.CARDS:
            card = Static("—", id=f"card-{key}", classes="card")
            card.border_title = title
            yield card

    def show(
        self,
        metrics: MetricsUpdatePayload | None,
        unknown: frozenset[str] = frozenset(),
        estimated: frozenset[str] = frozenset(),
    ) -> None:
        """Display one ``metrics_update``.

        Fields in ``unknown`` read "n/a" (the source cannot measure them: a
        zero there would be a lie); fields in ``estimated`` get a "~".
        """
        if metrics is None:
            return
        values = {
            "requests": fmt_count(metrics.total_requests),
            "tokens": fmt_count(metrics.total_tokens),
            "cost": fmt_money(metrics.total_cost),
            "latency": fmt_latency(metrics.avg_latency_ms),
            "errors": fmt_percent(metrics.error_rate),
            "streaming": fmt_percent(metrics.streaming_percentage),
            "rps": fmt_rate(metrics.requests_per_second),
            "tps": fmt_rate(metrics.tokens_per_second),
            "connections": str(metrics.active_connections),
        }
        fields = {
            "requests": "total_requests",
            "tokens": "total_tokens",
            "cost": "total_cost",
            "streaming": "streaming_percentage",
        }
        for key, value in values.items():
            field = fields.get(key)
            if field in unknown:
                value = "n/a"
            elif field in estimated:
                value = f"~{value}"
            self.query_one(f"#card-{key}", Static).update(value)


class TrendPanel(Vertical):
    """Sparklines of requests/s, tokens/s, latency, time to first token (p50)
    and inter-token latency (p50) over the last samples.

    A publisher that measures no streaming timings leaves TTFT and ITL
    absent: their lines then read ``—`` and their sparklines stay at zero.
    """

    SERIES: ClassVar[tuple[tuple[str, str], ...]] = (
        ("rps", "requests/s"),
        ("tps", "tokens/s"),
        ("latency", "latency"),
        ("ttft", "TTFT p50"),
        ("itl", "ITL p50"),
    )

    def __init__(self, *, samples: int = 60, id: str | None = None) -> None:
        super().__init__(id=id)
        self._series: dict[str, deque[float]] = {
            name: deque(maxlen=samples) for name, _ in self.SERIES
        }

    def compose(self) -> ComposeResult:
        for name, title in self.SERIES:
            yield Static(title, id=f"trend-{name}-label", classes="trend-label")
            yield Sparkline([], id=f"trend-{name}", summary_function=max)

    def add(self, metrics: MetricsUpdatePayload) -> None:
        """Append one sample of each series."""
        samples = {
            "rps": metrics.requests_per_second,
            "tps": metrics.tokens_per_second,
            "latency": metrics.avg_latency_ms,
            "ttft": metrics.ttft_p50_ms or 0.0,
            "itl": metrics.itl_p50_ms or 0.0,
        }
        for name, value in samples.items():
            series = self._series[name]
            series.append(value)
            self.query_one(f"#trend-{name}", Sparkline).data = list(series)
        labels = {
            "rps": fmt_rate(metrics.requests_per_second),
            "tps": fmt_rate(metrics.tokens_per_second),
            "latency": fmt_latency(metrics.avg_latency_ms),
            "ttft": fmt_latency(metrics.ttft_p50_ms),
            "itl": fmt_latency(metrics.itl_p50_ms),
        }
        for name, title in self.SERIES:
            self.query_one(f"#trend-{name}-label", Static).update(f"{title:<11} {labels[name]}")


class ModelTable(DataTable[str | Text]):
    """One row per model, busiest first."""

    COLUMNS = (
        "Model",
        "Reqs",
        "Tokens",
        "Latency",
        "TTFT p50",
        "ITL p50",
        "Errors",
        "Tok/s",
        "Cost",
    )

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.add_columns(*self.COLUMNS)

    def show(self, models: Mapping[str, ModelUpdatePayload]) -> None:
        """Display every model's aggregates."""
        self.clear()
        for model in sorted(models.values(), key=lambda m: -m.request_count):
            errors = Text(
                fmt_percent(model.error_rate),
                style="#E5383B" if model.error_rate >= 5 else "",
            )
            self.add_row(
                model.model,
                fmt_count(model.request_count),
                fmt_count(model.total_tokens),
                fmt_latency(model.avg_latency_ms),
                fmt_latency(model.ttft_p50_ms),
                fmt_latency(model.itl_p50_ms),
                errors,
                f"{model.tokens_per_second:.1f}",
                fmt_money(model.total_cost),
                key=model.model,
            )


class RequestTable(DataTable[str | Text]):
    """The most recent requests, newest first."""

    # Short headings: with TTFT and ITL the row must still fit a third of a screen.
    COLUMNS = ("Model", "Status", "Tok", "Latency", "TTFT", "ITL", "SSE", "Cost")

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.add_columns(*self.COLUMNS)

    def show(self, requests: Sequence[RequestUpdatePayload]) -> None:
        """Display the given requests."""
        self.clear()
        for request in requests:
            colour = {"success": NVIDIA_GREEN, "error": "#E5383B"}.get(request.status, "#F5C400")
            self.add_row(
                request.model,
                Text(request.status, style=colour),
                fmt_count(request.total_tokens),
                fmt_latency(request.latency_ms),
                fmt_latency(request.time_to_first_token_ms),
                fmt_latency(request.inter_token_latency_ms),
                "yes" if request.streaming else "no",
                fmt_money(request.cost),
                key=request.id,
            )


class ErrorFeed(Static):
    """Recent errors, newest first, coloured by severity."""

    DEFAULT_CLASSES = "panel"
    SEVERITY: ClassVar[Mapping[str, str]] = {
        "low": "#8A8A8A",
        "medium": "#F5C400",
        "high": "#FF8C00",
        "critical": "#E5383B",
    }

    def show(self, errors: Sequence[ErrorUpdatePayload]) -> None:
        """Display the given errors."""
        if not errors:
            self.update(Text("No errors", style="dim"))
            return
        text = Text()
        for error in errors:
            text.append(
                f"{error.severity.upper():<8} ", style=f"bold {self.SEVERITY[error.severity]}"
            )
            text.append(f"{error.error_type}", style="bold")
            if error.model:
                text.append(f" [{error.model}]", style="dim")
            text.append(f" {error.error_message}\n")
        self.update(text)


class SystemHealthPanel(Static):
    """Host load gauges and the health verdict."""

    DEFAULT_CLASSES = "panel"

    def show(self, stats: SystemUpdatePayload | None, healthy: bool) -> None:
        """Display one ``system_update``."""
        if stats is None:
            self.update(Text("Waiting for host stats…", style="dim"))
            return
        text = Text()
        text.append(
            "Healthy\n" if healthy else "Unhealthy\n", style=NVIDIA_GREEN if healthy else "#E5383B"
        )
        rows: list[tuple[str, float | None]] = [
            ("CPU", stats.cpu_usage),
            ("Memory", stats.memory_usage),
            ("Disk", stats.disk_usage),
        ]
        if stats.gpu_usage is not None:
            rows.append(("GPU", stats.gpu_usage))
        if stats.gpu_memory_usage is not None:
            rows.append(("GPU mem", stats.gpu_memory_usage))
        for name, value in rows:
            text.append(f"{name:<8}")
            text.append_text(_bar(value))
            text.append("\n")
        text.append(
            f"Net in {fmt_bytes(stats.network_in_bytes)}"
            f" · out {fmt_bytes(stats.network_out_bytes)}\n"
            f"Workers {stats.active_workers} · queue {stats.queue_size}"
        )
        self.update(text)


class KVCachePanel(Static):
    """KV cache effectiveness."""

    DEFAULT_CLASSES = "panel"

    def show(self, cache: KVCacheUpdatePayload | None) -> None:
        """Display one ``kv_cache_update``."""
        if cache is None:
            self.update(Text("No KV cache data", style="dim"))
            return
        text = Text("Hit rate ")
        text.append_text(_bar(cache.hit_rate, width=16, higher_is_better=True))
        if cache.usage_percentage is not None:
            # Pool usage: only engines report it (scraped vLLM, SGLang, TGI).
            text.append("\nUsage    ")
            text.append_text(_bar(cache.usage_percentage, width=16))
        text.append(
            f"\nHits {fmt_count(cache.cache_hits)} · misses {fmt_count(cache.cache_misses)}"
            f"\nEntries {fmt_count(cache.cache_entries)} · {fmt_bytes(cache.cache_size_bytes)}"
            f"\nEvictions {fmt_count(cache.evictions)} · lookup {cache.avg_lookup_time_ms:.2f} ms"
        )
        self.update(text)


class CostPanel(Static):
    """Spend in the current period, per model, and the monthly projection."""

    DEFAULT_CLASSES = "panel"

    def show(self, costs: CostUpdatePayload | None) -> None:
        """Display one ``cost_update``."""
        if costs is None:
            self.update(Text("No cost data", style="dim"))
            return
        text = Text(f"This {costs.period}: ", style="bold")
        text.append(fmt_money(costs.total_cost), style=f"bold {NVIDIA_GREEN}")
        if costs.projection_available is False:
            # Too little history to extrapolate a month from: say so, not $0.
            text.append("\nProjected month: ")
            text.append("not enough data yet\n", style="dim")
        else:
            text.append(f"\nProjected month: {fmt_money(costs.projected_monthly_cost)}\n")
        for model, cost in sorted(costs.breakdown_by_model.items(), key=lambda kv: -kv[1])[:6]:
            text.append(f"  {model[:28]:<28} {fmt_money(cost):>10}\n", style="dim")
        self.update(text)


class RateLimitPanel(Static):
    """Each endpoint's rate limit use."""

    DEFAULT_CLASSES = "panel"

    def show(self, limits: Mapping[str, RateLimitUpdatePayload]) -> None:
        """Display every endpoint's limit."""
        if not limits:
            self.update(Text("No rate limits", style="dim"))
            return
        text = Text()
        for endpoint, limit in sorted(limits.items()):
            text.append(f"{endpoint[:24]:<24} ")
            text.append_text(_bar(limit.percentage_used, width=12))
            text.append(f" {limit.remaining}/{limit.limit}\n", style="dim")
        self.update(text)
