"""The reactive store: the seed's Context and hooks as Python objects.

:class:`MetricsStore` feeds every message of a client into a
:class:`~metricstream.store.StateReducer` and tells interested code when what
it looks at changed. UIs sit on it and never touch the network themselves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ..exceptions import ConfigError
from ..protocol import (
    ErrorUpdatePayload,
    MessageType,
    ModelUpdatePayload,
    RequestUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
)
from ._state import RealtimeMetricsState, StateReducer

__all__ = [
    "AggregateStats",
    "ConnectionStatus",
    "ErrorMonitor",
    "MetricsStore",
    "RequestHistory",
    "StreamSource",
    "SystemHealth",
    "Watch",
]

log = logging.getLogger("metricstream.store")

T = TypeVar("T")
MessageCallback = Callable[[Any, WebSocketMessage[Any]], object]

# The seed's useSystemHealth thresholds.
CPU_LIMIT = 90.0
MEMORY_LIMIT = 90.0
GPU_LIMIT = 95.0
QUEUE_LIMIT = 1000


class _Cancellable(Protocol):
    def unsubscribe(self) -> None: ...


class _ConnectionInfo(Protocol):
    @property
    def state(self) -> Any: ...
    @property
    def reconnect_attempts(self) -> int: ...
    @property
    def latency(self) -> float | None: ...


class StreamSource(Protocol):
    """What the store needs of a client (a ``WebSocketService`` provides it)."""

    def subscribe(self, message_type: str, callback: MessageCallback) -> _Cancellable:
        """Call ``callback(data, message)`` for each message of a type (``"*"``: all)."""
        ...

    def watch_state(self, callback: Callable[[Any, Any], object]) -> _Cancellable:
        """Call ``callback(old, new)`` on every connection state change."""
        ...

    def connection_info(self) -> _ConnectionInfo:
        """The connection's statistics now."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """The seed's ``useConnectionStatus``: state, connected, attempts, latency (s)."""

    state: str
    is_connected: bool
    reconnect_attempts: int
    latency: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class SystemHealth:
    """The seed's ``useSystemHealth``: the latest host stats and a verdict.

    Healthy means cpu < 90 %, memory < 90 %, GPU absent or < 95 %, and fewer
    than 1000 queued requests. With no stats yet the host is not called healthy.
    """

    health: SystemUpdatePayload | None
    is_healthy: bool


@dataclasses.dataclass(frozen=True, slots=True)
class AggregateStats:
    """The seed's ``useAggregateStats``, across every model."""

    total_models: int
    total_requests: int
    total_tokens: int
    total_cost: float
    avg_latency: float
    error_rate: float
    recent_request_count: int
    recent_error_count: int
    requests_per_second: float
    tokens_per_second: float


class Watch(Generic[T]):
    """A live ``watch()``: call :meth:`cancel` to stop it (also a context manager)."""

    _NOTHING: Any = object()

    def __init__(
        self,
        store: MetricsStore,
        selector: Callable[[RealtimeMetricsState], T],
        callback: Callable[[T], object],
        interval: float | None,
    ) -> None:
        self._store = store
        self._selector = selector
        self._callback = callback
        self._interval = interval
        self._last: Any = Watch._NOTHING
        self._last_fired = float("-inf")
        self._timer: asyncio.TimerHandle | None = None
        self.active = True
        self._last = self._select()

    def _select(self) -> Any:
        try:
            return self._selector(self._store.state)
        except Exception:
            log.exception("watch selector failed")
            return self._last

    def _changed(self) -> None:
        if not self.active or self._timer is not None:
            return
        if self._interval is None:
            self._fire()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._fire()  # no loop to defer on: deliver at once
            return
        wait = self._last_fired + self._interval - loop.time()
        if wait <= 0:
            self._fire(loop.time())
        else:
            self._timer = loop.call_later(wait, self._deferred)

    def _deferred(self) -> None:
        self._timer = None
        self._fire(asyncio.get_running_loop().time())

    def _fire(self, now: float | None = None) -> None:
        if not self.active:
            return
        value = self._select()
        if value is self._last or value == self._last:
            return
        self._last = value
        self._last_fired = time.monotonic() if now is None else now
        try:
            self._callback(value)
        except Exception:
            log.exception("watch callback failed")

    def cancel(self) -> None:
        """Stop calling back."""
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._store._watches.discard(self)

    def __enter__(self) -> Watch[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class _Listener:
    __slots__ = ("callback", "id", "store", "type")

    def __init__(self, store: MetricsStore, mtype: str, callback: MessageCallback) -> None:
        self.id = next(_ids)
        self.store = store
        self.type = mtype
        self.callback = callback

    def unsubscribe(self) -> None:
        self.store._listeners.pop(self.id, None)


_ids = itertools.count(1)


class MetricsStore:
    """The seed's RealtimeMetricsState, kept current from a stream.

    Feed it with :meth:`apply` or bind it to a client (``MetricsStore(service)``)
    and read :attr:`state` or one of the views. Memory is bounded: histories
    hold ``max_recent_requests``/``max_recent_errors`` entries and keyed state
    at most :data:`~metricstream.protocol.MAX_KEYS` (1024) keys per table.
    """

    def __init__(
        self,
        service: StreamSource | None = None,
        *,
        max_recent_requests: int = 50,
        max_recent_errors: int = 20,
    ) -> None:
        self._reducer = StateReducer(
            max_recent_requests=max_recent_requests, max_recent_errors=max_recent_errors
        )
        self._service = service
        self._connection_state = "DISCONNECTED"
        self._watches: set[Watch[Any]] = set()
        self._listeners: dict[int, _Listener] = {}
        self._bindings: list[_Cancellable] = []
        if service is not None:
            self._connection_state = str(service.connection_info().state)
            self._bindings.append(service.subscribe("*", self._on_message))
            self._bindings.append(service.watch_state(self._on_state))

    # -- feeding --------------------------------------------------------------------------------

    def apply(self, message: WebSocketMessage[Any]) -> bool:
        """Apply one message; returns whether the state changed."""
        changed = self._reducer.apply(message)
        if changed:
            for listener in list(self._listeners.values()):
                if listener.type in ("*", message.type):
                    try:
                        listener.callback(message.data, message)
                    except Exception:
                        log.exception("store listener for %s failed", listener.type)
            self._notify()
        return changed

    def set_connection_state(self, state: str) -> None:
        """Record the client's connection state (done for you when bound)."""
        state = str(state)
        if state != self._connection_state:
            self._connection_state = state
            self._notify()

    def _on_message(self, data: Any, message: WebSocketMessage[Any]) -> None:
        self.apply(message)

    def _on_state(self, old: Any, new: Any) -> None:
        self.set_connection_state(new)

    def _notify(self) -> None:
        for watch in list(self._watches):
            watch._changed()

    # -- reading --------------------------------------------------------------------------------

    @property
    def state(self) -> RealtimeMetricsState:
        """The current :class:`RealtimeMetricsState` (immutable)."""
        return self._reducer.state(
            connection_state=self._connection_state,
            is_connected=self._connection_state == "CONNECTED",
        )

    def watch(
        self,
        selector: Callable[[RealtimeMetricsState], T],
        callback: Callable[[T], object],
        *,
        interval: float | None = None,
    ) -> Watch[T]:
        """Call ``callback(value)`` whenever ``selector(state)`` changes.

        With ``interval`` (seconds) calls are coalesced to at most one per
        interval, carrying the latest value, so a UI redraws at a human rate
        however fast messages arrive. Without a running event loop calls are
        made at once.
        """
        if interval is not None and not interval > 0:
            raise ConfigError(f"interval must be positive, got {interval!r}")
        watch = Watch(self, selector, callback, interval)
        self._watches.add(watch)
        return watch

    def on(self, message_type: MessageType | str, callback: MessageCallback) -> _Listener:
        """Call ``callback(data, message)`` for each *applied* message of a type.

        Unlike a client subscription, duplicates, stale state and resumed
        ``init`` frames that changed nothing are not passed on.
        """
        listener = _Listener(self, str(message_type), callback)
        self._listeners[listener.id] = listener
        return listener

    def clear_history(self) -> None:
        """Forget recent requests and errors."""
        self._reducer.clear_history()
        self._notify()

    def close(self) -> None:
        """Detach from the client and stop every watch."""
        for binding in self._bindings:
            binding.unsubscribe()
        self._bindings.clear()
        for watch in list(self._watches):
            watch.cancel()
        self._listeners.clear()

    # -- the seed's hooks -----------------------------------------------------------------------

    def realtime_metrics(self) -> RealtimeMetricsState:
        """``useRealtimeMetrics``: the whole state."""
        return self.state

    def connection_status(self) -> ConnectionStatus:
        """``useConnectionStatus``."""
        attempts, latency = 0, None
        if self._service is not None:
            info = self._service.connection_info()
            attempts, latency = info.reconnect_attempts, info.latency
        return ConnectionStatus(
            state=self._connection_state,
            is_connected=self._connection_state == "CONNECTED",
            reconnect_attempts=attempts,
            latency=latency,
        )

    def model_metrics(self, model: str | None) -> ModelUpdatePayload | None:
        """``useModelMetrics``: one model's aggregates, ``None`` if unknown."""
        return None if model is None else self.state.models.get(model)

    def system_health(self) -> SystemHealth:
        """``useSystemHealth``."""
        stats = self.state.system_stats
        healthy = stats is not None and (
            stats.cpu_usage < CPU_LIMIT
            and stats.memory_usage < MEMORY_LIMIT
            and (stats.gpu_usage is None or stats.gpu_usage < GPU_LIMIT)
            and stats.queue_size < QUEUE_LIMIT
        )
        return SystemHealth(health=stats, is_healthy=healthy)

    def request_history(
        self,
        max_size: int = 100,
        filter_fn: Callable[[RequestUpdatePayload], bool] | None = None,
    ) -> RequestHistory:
        """``useRequestHistory``: a history of its own, kept from now on."""
        return RequestHistory(self, max_size=max_size, filter_fn=filter_fn)

    def error_monitor(
        self,
        max_size: int = 50,
        on_error: Callable[[ErrorUpdatePayload], object] | None = None,
    ) -> ErrorMonitor:
        """``useErrorMonitor``: errors kept from now on, with a running count."""
        return ErrorMonitor(self, max_size=max_size, on_error=on_error)

    def aggregate_stats(self) -> AggregateStats:
        """``useAggregateStats``."""
        state = self.state
        metrics = state.metrics
        models = state.models.values()
        if metrics is not None:
            totals = (
                metrics.total_requests,
                metrics.total_tokens,
                metrics.total_cost,
                metrics.avg_latency_ms,
                metrics.error_rate,
                metrics.requests_per_second,
                metrics.tokens_per_second,
            )
        else:
            # Without service totals, add up what the models said.
            requests = sum(m.request_count for m in models)
            errors = sum(m.error_count for m in models)
            totals = (
                requests,
                sum(m.total_tokens for m in models),
                sum(m.total_cost for m in models),
                sum(m.total_latency_ms for m in models) / requests if requests else 0.0,
                100.0 * errors / requests if requests else 0.0,
                0.0,
                sum(m.tokens_per_second for m in models),
            )
        return AggregateStats(
            total_models=len(state.models),
            total_requests=totals[0],
            total_tokens=totals[1],
            total_cost=totals[2],
            avg_latency=totals[3],
            error_rate=totals[4],
            recent_request_count=len(state.recent_requests),
            recent_error_count=len(state.recent_errors),
            requests_per_second=totals[5],
            tokens_per_second=totals[6],
        )


class RequestHistory:
    """A bounded, optionally filtered history of requests, newest first."""

    def __init__(
        self,
        store: MetricsStore,
        *,
        max_size: int = 100,
        filter_fn: Callable[[RequestUpdatePayload], bool] | None = None,
    ) -> None:
        if max_size < 1:
            raise ConfigError(f"max_size must be at least 1, got {max_size!r}")
        self._items: deque[RequestUpdatePayload] = deque(maxlen=max_size)
        self._filter = filter_fn
        self._listener = store.on(MessageType.REQUEST_UPDATE, self._add)

    def _add(self, data: RequestUpdatePayload, message: WebSocketMessage[Any]) -> None:
        if self._filter is None or self._filter(data):
            self._items.append(data)

    @property
    def requests(self) -> list[RequestUpdatePayload]:
        """The kept requests, newest first."""
        return list(reversed(self._items))

    def clear(self) -> None:
        """``clearHistory``."""
        self._items.clear()

    def close(self) -> None:
        """Stop recording."""
        self._listener.unsubscribe()


class ErrorMonitor:
    """A bounded history of errors, newest first, with a running count."""

    def __init__(
        self,
        store: MetricsStore,
        *,
        max_size: int = 50,
        on_error: Callable[[ErrorUpdatePayload], object] | None = None,
    ) -> None:
        if max_size < 1:
            raise ConfigError(f"max_size must be at least 1, got {max_size!r}")
        self._items: deque[ErrorUpdatePayload] = deque(maxlen=max_size)
        self._on_error = on_error
        self.error_count = 0
        """Errors seen since creation or the last :meth:`clear` (not capped)."""
        self._listener = store.on(MessageType.ERROR_UPDATE, self._add)

    def _add(self, data: ErrorUpdatePayload, message: WebSocketMessage[Any]) -> None:
        self._items.append(data)
        self.error_count += 1
        if self._on_error is not None:
            self._on_error(data)

    @property
    def errors(self) -> list[ErrorUpdatePayload]:
        """The kept errors, newest first."""
        return list(reversed(self._items))

    def clear(self) -> None:
        """``clearErrors``: forget the errors and zero the count."""
        self._items.clear()
        self.error_count = 0

    def close(self) -> None:
        """Stop recording."""
        self._listener.unsubscribe()
