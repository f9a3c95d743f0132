"""MetricsCollector: drives the :class:`~._aggregate.Aggregator` on an event loop.

The arithmetic (windows, aggregates, costs, percentiles, the checks of every
recorded value) is the aggregator's and knows no time or thread; this module
adds what running it takes: a lock, the hand-off of a call from another
thread to the loop, the clocks, the periodic tick (:func:`~._tick.every`),
the host sampling, and the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol

from ..exceptions import ConfigError
from ..protocol import ErrorUpdatePayload, RequestUpdatePayload, WebSocketMessage
from ..protocol.messages import CheckedMessage, CostPeriod, ErrorSeverity, RequestStatus
from ._aggregate import Aggregator, CollectorSnapshot, RequestRecord
from ._prices import ModelPrice
from ._system import SystemSample, SystemSampler
from ._tick import every
from ._window import LatencyStats

__all__ = ["CostPeriod", "MetricsCollector", "Publisher"]

logger = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where the collector's messages go: a stream hub, or anything alike.

    ``publish`` is synchronous and is always called on the event loop thread
    the collector was started on; its return value is ignored.
    """

    def publish(self, message: WebSocketMessage[Any], /) -> object:
        """Publish one stream message."""
        ...


class MetricsCollector:
    """Turns request events into the seed's stream messages.

    Events (``request_update``, ``error_update``) are published as they are
    recorded. Every ``interval`` seconds, while started, the state messages
    whose value changed since they were last published go out:
    ``metrics_update``, one ``model_update`` per changed model, ``cost_update``,
    one ``rate_limit_update`` per changed endpoint, ``kv_cache_update`` and
    ``system_update``.

    Rates, average latency, percentiles, error rate and streaming percentage
    cover the last ``window`` seconds; totals count since the collector was
    created. ``cost_update`` covers the last ``cost_period``.

    Recording is O(1) and safe from any thread: values are validated in the
    caller's thread (an :class:`InvalidMetricError` is raised there), and a
    call from a thread other than the loop's is handed to the loop with
    ``call_soon_threadsafe``, so the publisher is only ever called on its
    loop. Before the collector is bound to a loop (created outside one and not
    yet started) recording applies and publishes in the caller's thread.

    Use it as ``async with MetricsCollector(hub) as collector: ...``, or call
    :meth:`start` and :meth:`aclose`.

    Options: ``interval`` (seconds between publications), ``window`` (seconds
    of the rolling window) cut into buckets of ``resolution`` seconds
    (``window / 60`` by default); ``prices`` (model -> :class:`ModelPrice`,
    :data:`DEFAULT_PRICES` by default) and ``default_price`` for models not in
    it; ``connections`` (a callback giving ``active_connections``);
    ``system_stats`` (host statistics with psutil, of the disk holding
    ``disk_path``); ``cost_period`` of ``cost_update``; ``max_samples`` kept
    for percentiles; ``max_models`` and ``max_services`` aggregated by name
    before the rest go under :data:`OTHER`. ``clock`` (monotonic seconds) and
    ``wall_clock`` (Unix seconds) are injectable for tests. Invalid options
    raise :class:`~metricstream.exceptions.ConfigError`.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        interval: float = 1.0,
        window: float = 60.0,
        resolution: float | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        default_price: ModelPrice | None = None,
        connections: Callable[[], int] | None = None,
        system_stats: bool = True,
        cost_period: CostPeriod = "hour",
        max_samples: int = 10_000,
        max_models: int = 256,
        max_services: int = 256,
        disk_path: str = "/",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not math.isfinite(interval)
            or interval <= 0
        ):
            raise ConfigError(f"interval must be a finite number of seconds > 0, got {interval!r}")
        self._aggregate = Aggregator(
            started_at=clock(),
            window=window,
            resolution=resolution,
            prices=prices,
            default_price=default_price,
            cost_period=cost_period,
            max_samples=max_samples,
            max_models=max_models,
            max_services=max_services,
        )
        self._publisher = publisher
        self._interval = float(interval)
        self._connections = connections
        self._clock = clock
        self._wall_clock = wall_clock
        # The aggregator is not thread-safe: every call that reads or changes
        # its aggregates holds this lock (recording before the collector is
        # bound applies in the callers' threads; snapshot() reads from any).
        self._lock = threading.Lock()
        self._publish_failures = 0

        self._sampler: SystemSampler | None = None
        if system_stats:
            try:
                self._sampler = SystemSampler(disk_path=disk_path)
            except ImportError:
                logger.warning("psutil is not installed: system_update is disabled")

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(RuntimeError):
            self._bind(asyncio.get_running_loop())

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"MetricsCollector(interval={self._interval}, window={self._aggregate.window}, "
            f"cost_period={self._aggregate.cost_period!r}, {state})"
        )

    # --- configuration views ---------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between two publications of the changed state messages."""
        return self._interval

    @property
    def window(self) -> float:
        """Length in seconds of the rolling window behind rates and percentiles."""
        return self._aggregate.window

    @property
    def prices(self) -> Mapping[str, ModelPrice]:
        """The price table used when a request is recorded without a cost."""
        return self._aggregate.prices

    @property
    def in_flight(self) -> int:
        """Requests started (:meth:`request_started`) and not yet finished."""
        return self._aggregate.in_flight

    @property
    def running(self) -> bool:
        """Whether the periodic publishing task is running."""
        return self._task is not None and not self._task.done()

    def price_of(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of a request from the price table (0 for an unknown model
        unless ``default_price`` was given)."""
        return self._aggregate.price_of(model, prompt_tokens, completion_tokens)

    # --- lifecycle ---------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()

    async def start(self) -> None:
        """Bind to the running loop and start publishing every ``interval``."""
        if self.running:
            return
        self._bind(asyncio.get_running_loop())
        self._task = asyncio.create_task(
            every(self._interval, self._tick), name="metricstream-collector"
        )

    async def aclose(self) -> None:
        """Stop the periodic task and publish the final changed state once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.flush()
        if self._sampler is not None:
            self._sampler.close()

    async def __aenter__(self) -> MetricsCollector:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _tick(self) -> None:
        if self._sampler is not None:
            try:
                # File reads under /proc: kept off the loop.
                sample = await asyncio.to_thread(self._sampler.sample)
            except Exception:
                logger.exception("reading system statistics failed")
            else:
                with self._lock:
                    self._aggregate.set_system(sample)
        try:
            self.flush()
        except Exception:
            logger.exception("publishing the collector's state failed")

    # --- thread hand-off ---------------------------------------------------

    def _dispatch(self, apply: Callable[[Any, bool], None], item: Any) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            apply(item, True)
            return
        try:
            loop.call_soon_threadsafe(apply, item, True)
        except RuntimeError:
            # The loop is closed: nobody can publish any more, but the
            # aggregates (and snapshot()) stay right.
            apply(item, False)

    def _publish(self, message: WebSocketMessage[Any]) -> bool:
        """Hand ``message`` to the publisher; returns whether it took it."""
        try:
            self._publisher.publish(message)
        except Exception:
            # A failing publisher must not break the request path that records.
            self._publish_failures += 1
            if self._publish_failures == 1 or self._publish_failures % 1000 == 0:
                logger.exception(
                    "publishing %s failed (%d failures so far)",
                    message.type,
                    self._publish_failures,
                )
            return False
        return True

    # --- recording ---------------------------------------------------------

    def record_request(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        *,
        streaming: bool = False,
        status: RequestStatus = "success",
        error_message: str | None = None,
        cost: float | None = None,
        user_id: str | None = None,
        organization_id: str | None = None,
        ttft_ms: float | None = None,
        request_id: str | None = None,
        service: str | None = None,
        itl_ms: float | None = None,
        itl_samples_ms: Sequence[float] | None = None,
        finish_reason: str | None = None,
        endpoint: str | None = None,
        usage_estimated: bool = False,
    ) -> RequestUpdatePayload:
        """Record one request and publish its ``request_update``.

        ``cost`` is computed from the price table when ``None``. ``service``
        (the endpoint, e.g. ``/v1/chat/completions``) keys
        ``breakdown_by_service`` of ``cost_update``. A request with status
        ``in_progress`` is published as an event but counted nowhere: count it
        when it finishes (with the same ``request_id``).

        Streaming timings (all optional, in ms): ``ttft_ms`` is the time to
        the first content chunk; ``itl_samples_ms`` are the gaps between
        consecutive content chunks, from which the request's mean, p50 and p95
        inter-token latency are computed -- or ``itl_ms`` gives the mean alone
        when the gaps are not known. Time per output token is derived as
        ``(latency_ms - ttft_ms) / (completion_tokens - 1)``. ``finish_reason``
        and ``endpoint`` (the API path) are published as given. TTFT and the
        mean ITL feed the rolling percentiles of ``metrics_update`` and
        ``model_update``. ``usage_estimated`` says the token counts were
        estimated rather than reported; the message then carries
        ``"usage_estimated": true`` in its ``metadata``. Credentials in
        ``error_message`` (keys, bearer values, tokens) are masked before it
        is published (:func:`metricstream._redact.redact_text`).

        Returns the payload published. Raises :class:`InvalidMetricError` for
        an invalid value, before anything is recorded.
        """
        # Checked and built here, in the caller's thread, where a bad value
        # raises; only the counting is handed to the loop. By position, in
        # Aggregator.request's order: on the hot path, forwarding twenty
        # arguments by name costs more than the call itself.
        record = self._aggregate.request(
            model,
            prompt_tokens,
            completion_tokens,
            latency_ms,
            self._clock(),
            self._wall_clock(),
            streaming,
            status,
            error_message,
            cost,
            user_id,
            organization_id,
            ttft_ms,
            request_id,
            service,
            itl_ms,
            itl_samples_ms,
            finish_reason,
            endpoint,
            usage_estimated,
        )
        self._dispatch(self._apply_request, record)
        return record.message.data

    def _apply_request(self, record: RequestRecord, publish: bool) -> None:
        with self._lock:
            self._aggregate.add_request(record)
        if publish:
            self._publish(record.message)

    def record_error(
        self,
        error_type: str,
        error_message: str,
        *,
        model: str | None = None,
        severity: ErrorSeverity = "medium",
        request_id: str | None = None,
        stack_trace: str | None = None,
    ) -> ErrorUpdatePayload:
        """Record one error and publish its ``error_update``.

        Errors recorded here are events: they do not change ``error_rate``,
        which counts requests recorded with ``status="error"``. Credentials
        in ``error_message`` and ``stack_trace`` are masked before publishing.
        """
        message = self._aggregate.error(
            error_type,
            error_message,
            wall=self._wall_clock(),
            model=model,
            severity=severity,
            request_id=request_id,
            stack_trace=stack_trace,
        )
        self._dispatch(self._apply_error, message)
        return message.data

    def _apply_error(self, message: CheckedMessage[ErrorUpdatePayload], publish: bool) -> None:
        with self._lock:
            self._aggregate.add_error(message.data)
        if publish:
            self._publish(message)

    def update_rate_limit(self, endpoint: str, limit: int, remaining: int, reset_time: int) -> None:
        """Set the rate limit of ``endpoint``; published at the next interval if changed.

        ``reset_time`` is when the limit resets, in integer milliseconds since
        the Unix epoch (the unit of every timestamp on the wire).
        """
        payload = self._aggregate.rate_limit(endpoint, limit, remaining, reset_time)
        self._dispatch(self._apply_state, (self._aggregate.set_rate_limit, payload))

    def update_kv_cache(
        self,
        *,
        cache_hits: int,
        cache_misses: int,
        cache_size_bytes: int,
        cache_entries: int,
        evictions: int,
        avg_lookup_time_ms: float,
    ) -> None:
        """Set the KV cache counters (cumulative); published at the next
        interval if changed. ``hit_rate`` is computed from hits and misses."""
        payload = self._aggregate.kv_cache(
            cache_hits=cache_hits,
            cache_misses=cache_misses,
            cache_size_bytes=cache_size_bytes,
            cache_entries=cache_entries,
            evictions=evictions,
            avg_lookup_time_ms=avg_lookup_time_ms,
        )
        self._dispatch(self._apply_state, (self._aggregate.set_kv_cache, payload))

    def _apply_state(self, item: tuple[Callable[[Any], None], Any], publish: bool) -> None:
        setter, payload = item
        with self._lock:
            setter(payload)

    def update_load(
        self, *, active_workers: int | None = None, queue_size: int | None = None
    ) -> None:
        """Set the ``active_workers`` and ``queue_size`` of ``system_update``.

        Without a value set, ``active_workers`` is :attr:`in_flight` and
        ``queue_size`` is 0.
        """
        with self._lock:
            self._aggregate.set_load(active_workers=active_workers, queue_size=queue_size)

    def request_started(self) -> None:
        """Count a request as in flight (see :attr:`in_flight`)."""
        with self._lock:
            self._aggregate.request_started()

    def request_finished(self) -> None:
        """Count an in-flight request as done."""
        with self._lock:
            self._aggregate.request_finished()

    # --- state -------------------------------------------------------------

    def _active_connections(self) -> int:
        # The user's callback runs outside the lock: it may call back in.
        if self._connections is None:
            return 0
        try:
            return max(0, int(self._connections()))
        except Exception:
            logger.exception("the connections callback failed")
            return 0

    def snapshot(self) -> CollectorSnapshot:
        """Every state value as it would be published now (any thread)."""
        now = self._clock()
        connections = self._active_connections()
        with self._lock:
            return self._aggregate.snapshot(now, connections=connections)

    def latency_percentiles(self) -> LatencyStats:
        """Latency distribution (ms) of the requests in the window."""
        with self._lock:
            return self._aggregate.latency_percentiles(self._clock())

    def sample_system(self) -> SystemSample | None:
        """Read the host now (blocking, off the loop preferably); ``None``
        when system statistics are disabled. The periodic task does this."""
        if self._sampler is None:
            return None
        sample = self._sampler.sample()
        with self._lock:
            self._aggregate.set_system(sample)
        return sample

    def flush(self) -> list[WebSocketMessage[Any]]:
        """Publish every state message whose value changed since it was last
        published, and return them. Call it on the loop thread (the periodic
        task does, every ``interval``). Raises :class:`RuntimeError` from another
        thread while the loop is open, rather than call the publisher off it."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and threading.get_ident() != self._loop_thread:
            raise RuntimeError("MetricsCollector.flush() must be called on its event loop thread")
        now = self._clock()
        connections = self._active_connections()
        wall = self._wall_clock()
        with self._lock:
            messages = self._aggregate.build(now, wall, connections=connections)
        published: list[WebSocketMessage[Any]] = []
        for message in messages:
            # Remembered only once published: a value the publisher refused
            # is offered again next interval, not held back until it changes.
            if self._publish(message):
                with self._lock:
                    self._aggregate.published(message)
                published.append(message)
        return published
