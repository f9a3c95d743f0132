"""The terminal dashboard: a Textual app over a :class:`~metricstream.store.MetricsStore`."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from ...store import MetricsStore, RealtimeMetricsState
from ._widgets import (
    ConnectionBadge,
    ConnectionStats,
    ConnectionStatus,
    CostPanel,
    ErrorFeed,
    KVCachePanel,
    MetricsOverview,
    ModelTable,
    RateLimitPanel,
    RequestTable,
    SystemHealthPanel,
    TrendPanel,
)

__all__ = ["MetricsDashboard"]

HELP = """\
[b]metricstream dashboard[/b]

  [b]q[/b]  quit
  [b]p[/b]  pause / resume the display (the stream keeps flowing)
  [b]c[/b]  clear the request and error history
  [b]r[/b]  reconnect now (skip the backoff wait)
  [b]?[/b]  this help

Press any key to close."""


# The client statistics the Connection panel shows, with their labels.
_STATS = (
    ("state", "State"),
    ("reconnect_attempts", "Attempts"),
    ("message_count", "Messages"),
    ("bytes_received", "Bytes in"),
    ("epoch", "Epoch"),
    ("last_sequence", "Sequence"),
    ("duplicates", "Duplicates"),
    ("gaps", "Gaps"),
    ("last_error", "Last error"),
)


W = TypeVar("W", bound=Widget)


def _titled(widget: W, title: str) -> W:
    """``widget`` with a title in its border."""
    widget.border_title = title
    return widget


class HelpScreen(ModalScreen[None]):
    """The key reference."""

    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self) -> None:
        self.dismiss()


class MetricsDashboard(App[None]):
    """Live metrics in the terminal, in the NVIDIA theme (#76B900 on dark).

    ``store`` supplies the data; ``connection_info`` (optional) the client's
    statistics; ``reconnect`` (optional) is called for the ``r`` key. The app
    redraws at most ``refresh_interval`` times a second, whatever the rate of
    messages.
    """

    TITLE = "metricstream"
    CSS = """
    Screen { background: #0d0d0d; color: #e6e6e6; }
    #top { height: 1; background: #1a1a1a; }
    #title { width: 1fr; color: #76B900; text-style: bold; padding: 0 1; }
    #status { width: auto; padding: 0 1; }
    #badge { width: 2; }
    MetricsOverview { height: 3; }
    .card { width: 1fr; height: 3; border: round #76B900; content-align: center middle;
            text-style: bold; border-title-color: #9fd63a; }
    #middle { height: 12; }
    TrendPanel { width: 1fr; border: round #3a3a3a; border-title-color: #76B900; }
    Sparkline { height: 1; }
    Sparkline > .sparkline--max-color { color: #76B900; }
    Sparkline > .sparkline--min-color { color: #2f4a00; }
    .trend-label { height: 1; color: #9a9a9a; }
    .panel { border: round #3a3a3a; border-title-color: #76B900; padding: 0 1; height: 1fr; }
    #side { width: 46; }
    ModelTable { width: 2fr; border: round #3a3a3a; border-title-color: #76B900; height: 12; }
    #bottom { height: 1fr; }
    RequestTable { width: 2fr; height: 1fr; border: round #3a3a3a;
                   border-title-color: #76B900; }
    #right { width: 1fr; }
    DataTable > .datatable--header { background: #1f2a0a; color: #76B900; text-style: bold; }
    #help { width: 66; height: auto; padding: 1 2; border: thick #76B900; background: #141414; }
    HelpScreen { align: center middle; }
    .paused #title { color: #F5C400; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("p", "pause", "Pause"),
        Binding("c", "clear", "Clear history"),
        Binding("r", "reconnect", "Reconnect"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(
        self,
        store: MetricsStore,
        *,
        source: str = "",
        connection_info: Callable[[], Any] | None = None,
        reconnect: Callable[[], Awaitable[object] | object] | None = None,
        refresh_interval: float = 0.25,
    ) -> None:
        super().__init__()
        self.store = store
        self.source = source
        self._connection_info = connection_info
        self._reconnect = reconnect
        self._refresh_interval = refresh_interval
        self.paused = False
        self._last_metrics: object = None
        self._owns_store = False

    @classmethod
    def for_service(cls, service: Any, *, source: str = "", **options: Any) -> MetricsDashboard:
        """A dashboard on a client (a ``WebSocketService``), with a store bound to it.

        The caller starts and closes the client; the store is closed with the app.
        """
        store = MetricsStore(service)
        app = cls(
            store,
            source=source,
            connection_info=service.connection_info,
            reconnect=service.reconnect,
            **options,
        )
        app._owns_store = True
        return app

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield ConnectionBadge(id="badge")
            yield Static(f"metricstream  {self.source}", id="title")
            yield ConnectionStatus(id="status")
        yield MetricsOverview()
        with Horizontal(id="middle"):
            yield _titled(ModelTable(id="models"), "Models")
            yield _titled(TrendPanel(id="trends"), "Trends")
        with Horizontal(id="bottom"):
            yield _titled(RequestTable(id="requests"), "Recent requests")
            with Vertical(id="right"):
                yield _titled(ErrorFeed(id="errors"), "Errors")
                yield _titled(RateLimitPanel(id="rate-limits"), "Rate limits")
            with VerticalScroll(id="side"):
                yield _titled(SystemHealthPanel(id="system"), "System health")
                yield _titled(KVCachePanel(id="kv-cache"), "KV cache")
                yield _titled(CostPanel(id="costs"), "Costs")
                yield _titled(ConnectionStats(id="connection-stats"), "Connection")
        yield Footer()

    def on_mount(self) -> None:
        self.theme = "textual-dark"
        self._draw(self.store.state)
        # One coalesced watch drives every panel: a burst of messages costs
        # one redraw per interval, not one per message.
        self._watch = self.store.watch(lambda s: s, self._draw, interval=self._refresh_interval)
        self.set_interval(1.0, self._tick_connection)

    def on_unmount(self) -> None:
        self._watch.cancel()
        if self._owns_store:
            self.store.close()

    def _draw(self, state: RealtimeMetricsState) -> None:
        if self.paused:
            return
        self.query_one(MetricsOverview).show(
            state.metrics, state.metrics_unknown, state.metrics_estimated
        )
        if state.metrics is not None and state.metrics is not self._last_metrics:
            self._last_metrics = state.metrics
            self.query_one(TrendPanel).add(state.metrics)
        self.query_one(ModelTable).show(state.models)
        self.query_one(RequestTable).show(state.recent_requests)
        self.query_one(ErrorFeed).show(state.recent_errors)
        self.query_one(RateLimitPanel).show(state.rate_limits)
        self.query_one(SystemHealthPanel).show(
            state.system_stats, self.store.system_health().is_healthy
        )
        self.query_one(KVCachePanel).show(state.kv_cache)
        self.query_one(CostPanel).show(state.costs)
        self._draw_connection()

    def _tick_connection(self) -> None:
        # The interval can fire once more while the app shuts down and its
        # widgets are already gone: then there is nothing left to draw.
        with contextlib.suppress(NoMatches):
            self._draw_connection()

    def _draw_connection(self) -> None:
        status = self.store.connection_status()
        self.query_one(ConnectionStatus).status = status
        self.query_one(ConnectionBadge).state = status.state
        if self._connection_info is not None:
            info = self._connection_info()
            fields = (
                dataclasses.asdict(info)
                if dataclasses.is_dataclass(info) and not isinstance(info, type)
                else dict(info)
            )
            shown = {label: fields.get(name) for name, label in _STATS if name in fields}
            self.query_one(ConnectionStats).show(shown)

    def action_pause(self) -> None:
        """Freeze or unfreeze the display; the store keeps up either way."""
        self.paused = not self.paused
        self.set_class(self.paused, "paused")
        self.sub_title = "paused" if self.paused else ""
        self.notify("Display paused" if self.paused else "Display resumed")
        if not self.paused:
            self._draw(self.store.state)

    def action_clear(self) -> None:
        """Forget the request and error history."""
        self.store.clear_history()
        self._draw(self.store.state)

    async def action_reconnect(self) -> None:
        """Reconnect at once instead of waiting out the backoff."""
        if self._reconnect is None:
            return
        result = self._reconnect()
        if inspect.isawaitable(result):
            await result
        self.notify("Reconnecting…")

    def action_help(self) -> None:
        """Show the key reference."""
        self.push_screen(HelpScreen())
