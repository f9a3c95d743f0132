"""MetricsCollector: request events in, the seed's stream messages out."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Protocol, get_args

from .._redact import redact_text
from ..exceptions import ConfigError
from ..protocol import (
    CostUpdatePayload,
    ErrorUpdatePayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    make_message,
)
from ..protocol.messages import CostPeriod, ErrorSeverity, RequestStatus
from ._errors import InvalidMetricError
from ._prices import DEFAULT_PRICES, ModelPrice
from ._system import SystemSample, SystemSampler
from ._tick import every
from ._window import CostWindow, LatencyStats, RollingSamples, RollingWindow, nearest_rank

__all__ = [
    "DEFAULT_SERVICE",
    "OTHER",
    "CollectorSnapshot",
    "CostPeriod",
    "MetricsCollector",
    "Publisher",
]

logger = logging.getLogger(__name__)


#: Service name of requests recorded without one (``breakdown_by_service``).
DEFAULT_SERVICE: Final = "inference"
#: The aggregate that models (services) past ``max_models`` (``max_services``)
#: are counted under, so that a flood of distinct names cannot grow memory.
OTHER: Final = "(other)"

_PERIOD_SECONDS: Final[dict[str, float]] = {
    "hour": 3600.0,
    "day": 86400.0,
    "week": 7 * 86400.0,
    "month": 30 * 86400.0,
}
_MONTH_SECONDS: Final = 30 * 86400.0
#: Spend history needed before a monthly projection is published (or the
#: whole cost period, if shorter): a few seconds of traffic say nothing
#: about a month.
MIN_PROJECTION_SECONDS: Final = 15 * 60.0
_STATUSES: Final = frozenset(get_args(RequestStatus))
_SEVERITIES: Final = frozenset(get_args(ErrorSeverity))


class Publisher(Protocol):
    """Where the collector's messages go: a stream hub, or anything alike.

    ``publish`` is synchronous and is always called on the event loop thread
    the collector was started on; its return value is ignored.
    """

    def publish(self, message: WebSocketMessage[Any], /) -> object:
        """Publish one stream message."""
        ...


# --- validation: every check runs in the caller's thread, before recording --


def _check_name(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMetricError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_optional_str(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidMetricError(f"{name} must be a string or None, got {value!r}")
    return value


def _check_count(name: str, value: object) -> int:
    if type(value) is int and value >= 0:  # the common case, checked first
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidMetricError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise InvalidMetricError(f"{name} must be >= 0, got {value}")
    return value


def _check_amount(name: str, value: object) -> float:
    # The common case first; NaN fails both comparisons, infinity the second.
    if type(value) is float and 0.0 <= value < math.inf:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidMetricError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise InvalidMetricError(f"{name} must be finite, got {value!r}")
    if value < 0:
        raise InvalidMetricError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidMetricError(f"{name} must be a bool, got {value!r}")
    return value


def _round_opt(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _timing(
    latency: float,
    ttft: float | None,
    itl_ms: float | None,
    itl_samples_ms: Sequence[float] | None,
    completion_tokens: int,
) -> _Timing:
    """Validate the streaming timings and derive mean/p50/p95 ITL and TPOT."""
    itl_mean = None if itl_ms is None else _check_amount("itl_ms", itl_ms)
    itl_p50 = itl_p95 = None
    if itl_samples_ms is not None:
        if isinstance(itl_samples_ms, str | bytes) or not isinstance(itl_samples_ms, Sequence):
            raise InvalidMetricError(
                f"itl_samples_ms must be a sequence of numbers, got {itl_samples_ms!r}"
            )
        if itl_samples_ms:
            ordered = sorted(_check_amount("itl_samples_ms[]", v) for v in itl_samples_ms)
            itl_mean = sum(ordered) / len(ordered)
            itl_p50 = nearest_rank(ordered, 50)
            itl_p95 = nearest_rank(ordered, 95)
    tpot = None
    if ttft is not None and completion_tokens > 1:
        # A TTFT past the end (clock skew between two sources) gives 0, not a negative.
        tpot = max(0.0, latency - ttft) / (completion_tokens - 1)
    return _Timing(ttft, itl_mean, itl_p50, itl_p95, tpot)


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return min(100.0, max(0.0, round(100.0 * part / whole, 3)))


def _money(value: float) -> float:
    return round(value, 8)


def _rate(value: float) -> float:
    return round(value, 3)


# --- state ------------------------------------------------------------------


class _ModelStats:
    __slots__ = (
        "completion_tokens",
        "cost",
        "errors",
        "itl",
        "latency_ms",
        "prompt_tokens",
        "requests",
        "ttft",
        "window",
    )

    def __init__(self, window: float, resolution: float, max_samples: int) -> None:
        self.requests = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency_ms = 0.0
        self.cost = 0.0
        self.window = RollingWindow(window, resolution)
        self.ttft = RollingSamples(window, resolution, max_samples)
        self.itl = RollingSamples(window, resolution, max_samples)


class _Timing:
    """The streaming timings of one request, derived once in the caller's thread."""

    __slots__ = ("estimated", "itl_mean", "itl_p50", "itl_p95", "tpot", "ttft")

    def __init__(
        self,
        ttft: float | None,
        itl_mean: float | None,
        itl_p50: float | None,
        itl_p95: float | None,
        tpot: float | None,
    ) -> None:
        self.ttft = ttft
        self.itl_mean = itl_mean
        self.itl_p50 = itl_p50
        self.itl_p95 = itl_p95
        self.tpot = tpot
        self.estimated = False


def _streaming_percentiles(ttft: LatencyStats, itl: LatencyStats) -> dict[str, float | None]:
    """The optional ``ttft_*``/``itl_*`` fields; ``None`` where nothing was measured."""

    def pick(stats: LatencyStats, value: float) -> float | None:
        return round(value, 3) if stats.count else None

    return {
        "ttft_p50_ms": pick(ttft, ttft.p50),
        "ttft_p95_ms": pick(ttft, ttft.p95),
        "ttft_p99_ms": pick(ttft, ttft.p99),
        "itl_p50_ms": pick(itl, itl.p50),
        "itl_p95_ms": pick(itl, itl.p95),
        "itl_p99_ms": pick(itl, itl.p99),
    }


@dataclass(frozen=True, slots=True)
class CollectorSnapshot:
    """Everything the collector would publish, computed now.

    ``latency`` and ``ttft`` are the rolling-window distributions (ms) that
    the seed's payloads have no field for; ``metrics_update`` also carries them
    in its ``metadata``. ``itl`` is the distribution of the requests' mean
    inter-token latency (ms).
    """

    metrics: MetricsUpdatePayload
    models: dict[str, ModelUpdatePayload]
    costs: CostUpdatePayload
    rate_limits: dict[str, RateLimitUpdatePayload]
    kv_cache: KVCacheUpdatePayload | None
    system: SystemUpdatePayload | None
    latency: LatencyStats
    ttft: LatencyStats
    errors_by_type: dict[str, int] = field(default_factory=dict)
    itl: LatencyStats = field(default_factory=LatencyStats)

    def metrics_metadata(self) -> dict[str, Any]:
        """The ``metadata`` of the ``metrics_update`` message."""
        return _metrics_metadata(self.latency, self.ttft)


def _metrics_metadata(latency: LatencyStats, ttft: LatencyStats) -> dict[str, Any]:
    return {
        "latency_p50_ms": round(latency.p50, 3),
        "latency_p90_ms": round(latency.p90, 3),
        "latency_p99_ms": round(latency.p99, 3),
        "latency_max_ms": round(latency.max, 3),
        "ttft_avg_ms": round(ttft.avg, 3),
        "ttft_p50_ms": round(ttft.p50, 3),
        "ttft_p90_ms": round(ttft.p90, 3),
        "ttft_p99_ms": round(ttft.p99, 3),
    }


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
        for name, value in (("interval", interval), ("window", window)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        for name, value in (("max_models", max_models), ("max_services", max_services)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if cost_period not in _PERIOD_SECONDS:
            raise ConfigError(
                f"cost_period must be one of {sorted(_PERIOD_SECONDS)}, got {cost_period!r}"
            )
        self._publisher = publisher
        self._interval = float(interval)
        self._window_seconds = float(window)
        self._resolution = float(resolution) if resolution is not None else window / 60
        self._prices: Mapping[str, ModelPrice] = dict(DEFAULT_PRICES if prices is None else prices)
        for model, price in self._prices.items():
            if not isinstance(price, ModelPrice):
                raise ConfigError(f"price of {model!r} must be a ModelPrice, got {price!r}")
        self._default_price = default_price
        self._connections = connections
        self._cost_period: CostPeriod = cost_period
        self._clock = clock
        self._wall_clock = wall_clock

        self._lock = threading.Lock()
        self._started_at = clock()
        self._window = RollingWindow(window, self._resolution)
        self._latency = RollingSamples(window, self._resolution, max_samples)
        self._ttft = RollingSamples(window, self._resolution, max_samples)
        self._itl = RollingSamples(window, self._resolution, max_samples)
        self._max_samples = max_samples
        period = _PERIOD_SECONDS[cost_period]
        self._costs = CostWindow(period, period / 60)
        self._models: dict[str, _ModelStats] = {}
        self._max_models = max_models
        self._services: set[str] = set()
        self._max_services = max_services
        self._rate_limits: dict[str, RateLimitUpdatePayload] = {}
        self._kv_cache: KVCacheUpdatePayload | None = None
        self._system_sample: SystemSample | None = None
        self._errors_by_type: dict[str, int] = {}
        self._total_requests = 0
        self._total_tokens = 0
        self._total_cost = 0.0
        self._in_flight = 0
        self._active_workers: int | None = None
        self._queue_size = 0
        self._last_published: dict[tuple[str, str], object] = {}
        self._publish_failures = 0
        self._ids = itertools.count(1)
        self._id_prefix = f"req-{os.urandom(4).hex()}"

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
            f"MetricsCollector(interval={self._interval}, window={self._window_seconds}, "
            f"cost_period={self._cost_period!r}, {state})"
        )

    # --- configuration views ---------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between two publications of the changed state messages."""
        return self._interval

    @property
    def window(self) -> float:
        """Length in seconds of the rolling window behind rates and percentiles."""
        return self._window_seconds

    @property
    def prices(self) -> Mapping[str, ModelPrice]:
        """The price table used when a request is recorded without a cost."""
        return self._prices

    @property
    def in_flight(self) -> int:
        """Requests started (:meth:`request_started`) and not yet finished."""
        return self._in_flight

    @property
    def running(self) -> bool:
        """Whether the periodic publishing task is running."""
        return self._task is not None and not self._task.done()

    def price_of(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of a request from the price table (0 for an unknown model
        unless ``default_price`` was given)."""
        price = self._prices.get(model, self._default_price)
        return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)

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
                self._system_sample = await asyncio.to_thread(self._sampler.sample)
            except Exception:
                logger.exception("reading system statistics failed")
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

    def _timestamp_ms(self) -> int:
        return int(self._wall_clock() * 1000)

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
        _check_name("model", model)
        _check_count("prompt_tokens", prompt_tokens)
        _check_count("completion_tokens", completion_tokens)
        latency = _check_amount("latency_ms", latency_ms)
        _check_bool("streaming", streaming)
        if status not in _STATUSES:
            raise InvalidMetricError(f"status must be one of {sorted(_STATUSES)}, got {status!r}")
        _check_optional_str("error_message", error_message)
        if error_message is not None:
            # Every publisher's error text is masked here, once: upstream
            # bodies and exception messages may quote a credential, and the
            # stream reaches every dashboard.
            error_message = redact_text(error_message)
        _check_optional_str("user_id", user_id)
        _check_optional_str("organization_id", organization_id)
        _check_optional_str("request_id", request_id)
        ttft = None if ttft_ms is None else _check_amount("ttft_ms", ttft_ms)
        timing = _timing(latency, ttft, itl_ms, itl_samples_ms, completion_tokens)
        _check_optional_str("finish_reason", finish_reason)
        _check_optional_str("endpoint", endpoint)
        timing.estimated = _check_bool("usage_estimated", usage_estimated)
        service_name = DEFAULT_SERVICE if service is None else _check_name("service", service)
        if cost is None:
            cost = self.price_of(model, prompt_tokens, completion_tokens)
        else:
            cost = _check_amount("cost", cost)
        payload = RequestUpdatePayload(
            id=request_id if request_id is not None else f"{self._id_prefix}-{next(self._ids)}",
            model=model,
            created=round(self._wall_clock(), 3),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            latency_ms=round(latency, 3),
            streaming=streaming,
            status=status,
            error_message=error_message,
            cost=_money(cost),
            user_id=user_id,
            organization_id=organization_id,
            endpoint=endpoint,
            time_to_first_token_ms=_round_opt(timing.ttft),
            inter_token_latency_ms=_round_opt(timing.itl_mean),
            inter_token_latency_p50_ms=_round_opt(timing.itl_p50),
            inter_token_latency_p95_ms=_round_opt(timing.itl_p95),
            time_per_output_token_ms=_round_opt(timing.tpot),
            finish_reason=finish_reason,
        )
        record = (payload, latency, cost, timing, service_name, self._clock())
        self._dispatch(self._apply_request, record)
        return payload

    def _apply_request(
        self,
        record: tuple[RequestUpdatePayload, float, float, _Timing, str, float],
        publish: bool,
    ) -> None:
        payload, latency, cost, timing, service, now = record
        ttft = timing.ttft
        itl = timing.itl_mean
        if payload.status != "in_progress":
            error = payload.status == "error"
            with self._lock:
                self._total_requests += 1
                self._total_tokens += payload.total_tokens
                self._total_cost += cost
                self._window.add(
                    now,
                    error=error,
                    streaming=payload.streaming,
                    prompt_tokens=payload.prompt_tokens,
                    completion_tokens=payload.completion_tokens,
                    latency_ms=latency,
                    cost=cost,
                )
                self._latency.add(now, latency)
                if ttft is not None:
                    self._ttft.add(now, ttft)
                if itl is not None:
                    self._itl.add(now, itl)
                if service not in self._services:
                    if len(self._services) < self._max_services:
                        self._services.add(service)
                    else:
                        service = OTHER
                model = payload.model
                stats = self._models.get(model)
                if stats is None:
                    if len(self._models) >= self._max_models:
                        model = OTHER
                        stats = self._models.get(model)
                    if stats is None:
                        stats = self._models[model] = _ModelStats(
                            self._window_seconds, self._resolution, self._max_samples
                        )
                self._costs.add(now, model, service, cost)
                stats.requests += 1
                stats.errors += error
                stats.prompt_tokens += payload.prompt_tokens
                stats.completion_tokens += payload.completion_tokens
                stats.latency_ms += latency
                stats.cost += cost
                if ttft is not None:
                    stats.ttft.add(now, ttft)
                if itl is not None:
                    stats.itl.add(now, itl)
                stats.window.add(
                    now,
                    error=error,
                    streaming=payload.streaming,
                    prompt_tokens=payload.prompt_tokens,
                    completion_tokens=payload.completion_tokens,
                    latency_ms=latency,
                    cost=cost,
                )
        if publish:
            self._publish(
                make_message(
                    MessageType.REQUEST_UPDATE,
                    payload,
                    metadata={"usage_estimated": True} if timing.estimated else None,
                    timestamp=int(payload.created * 1000),
                )
            )

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
        _check_name("error_type", error_type)
        if not isinstance(error_message, str):
            raise InvalidMetricError(f"error_message must be a string, got {error_message!r}")
        _check_optional_str("model", model)
        if severity not in _SEVERITIES:
            raise InvalidMetricError(
                f"severity must be one of {sorted(_SEVERITIES)}, got {severity!r}"
            )
        _check_optional_str("request_id", request_id)
        _check_optional_str("stack_trace", stack_trace)
        # Masked here for every publisher, like record_request's error_message.
        error_message = redact_text(error_message)
        if stack_trace is not None:
            stack_trace = redact_text(stack_trace)
        payload = ErrorUpdatePayload(
            error_type=error_type,
            error_message=error_message,
            model=model,
            timestamp=self._timestamp_ms(),
            stack_trace=stack_trace,
            request_id=request_id,
            severity=severity,
        )
        self._dispatch(self._apply_error, payload)
        return payload

    def _apply_error(self, payload: ErrorUpdatePayload, publish: bool) -> None:
        with self._lock:
            counts = self._errors_by_type
            counts[payload.error_type] = counts.get(payload.error_type, 0) + 1
        if publish:
            self._publish(
                make_message(MessageType.ERROR_UPDATE, payload, timestamp=payload.timestamp)
            )

    def update_rate_limit(self, endpoint: str, limit: int, remaining: int, reset_time: int) -> None:
        """Set the rate limit of ``endpoint``; published at the next interval if changed.

        ``reset_time`` is when the limit resets, in integer milliseconds since
        the Unix epoch (the unit of every timestamp on the wire).
        """
        _check_name("endpoint", endpoint)
        _check_count("limit", limit)
        _check_count("remaining", remaining)
        _check_count("reset_time", reset_time)
        if remaining > limit:
            raise InvalidMetricError(f"remaining ({remaining}) must not exceed limit ({limit})")
        # A zero limit admits nothing: fully used.
        used = 100.0 if limit == 0 else _percent(limit - remaining, limit)
        payload = RateLimitUpdatePayload(
            endpoint=endpoint,
            limit=limit,
            remaining=remaining,
            reset_time=reset_time,
            percentage_used=used,
        )
        self._dispatch(self._apply_rate_limit, payload)

    def _apply_rate_limit(self, payload: RateLimitUpdatePayload, publish: bool) -> None:
        with self._lock:
            self._rate_limits[payload.endpoint] = payload

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
        hits = _check_count("cache_hits", cache_hits)
        misses = _check_count("cache_misses", cache_misses)
        _check_count("cache_size_bytes", cache_size_bytes)
        _check_count("cache_entries", cache_entries)
        _check_count("evictions", evictions)
        lookup = _check_amount("avg_lookup_time_ms", avg_lookup_time_ms)
        payload = KVCacheUpdatePayload(
            cache_hits=hits,
            cache_misses=misses,
            hit_rate=_percent(hits, hits + misses),
            cache_size_bytes=cache_size_bytes,
            cache_entries=cache_entries,
            evictions=evictions,
            avg_lookup_time_ms=round(lookup, 4),
        )
        self._dispatch(self._apply_kv_cache, payload)

    def _apply_kv_cache(self, payload: KVCacheUpdatePayload, publish: bool) -> None:
        with self._lock:
            self._kv_cache = payload

    def update_load(
        self, *, active_workers: int | None = None, queue_size: int | None = None
    ) -> None:
        """Set the ``active_workers`` and ``queue_size`` of ``system_update``.

        Without a value set, ``active_workers`` is :attr:`in_flight` and
        ``queue_size`` is 0.
        """
        workers = None if active_workers is None else _check_count("active_workers", active_workers)
        queue = None if queue_size is None else _check_count("queue_size", queue_size)
        with self._lock:
            if workers is not None:
                self._active_workers = workers
            if queue is not None:
                self._queue_size = queue

    def request_started(self) -> None:
        """Count a request as in flight (see :attr:`in_flight`)."""
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        """Count an in-flight request as done."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    # --- state -------------------------------------------------------------

    def _span(self, now: float, length: float) -> float:
        # Rates divide by the time actually observed, so they are right from
        # the first second instead of ramping up over the whole window.
        return min(length, max(now - self._started_at, self._resolution, 1e-9))

    def _build(self) -> CollectorSnapshot:
        now = self._clock()
        connections = 0
        if self._connections is not None:
            try:
                connections = max(0, int(self._connections()))
            except Exception:
                logger.exception("the connections callback failed")
        with self._lock:
            span = self._span(now, self._window_seconds)
            w = self._window.totals(now)
            latency = self._latency.stats(now)
            ttft = self._ttft.stats(now)
            itl = self._itl.stats(now)
            metrics = MetricsUpdatePayload(
                total_requests=self._total_requests,
                total_tokens=self._total_tokens,
                total_cost=_money(self._total_cost),
                avg_latency_ms=round(w.latency_ms / w.requests, 3) if w.requests else 0.0,
                error_rate=_percent(w.errors, w.requests),
                streaming_percentage=_percent(w.streaming, w.requests),
                requests_per_second=_rate(w.requests / span),
                tokens_per_second=_rate(w.tokens / span),
                active_connections=connections,
                **_streaming_percentiles(ttft, itl),
            )
            models: dict[str, ModelUpdatePayload] = {}
            for name, stats in self._models.items():
                mw = stats.window.totals(now)
                models[name] = ModelUpdatePayload(
                    model=name,
                    request_count=stats.requests,
                    total_prompt_tokens=stats.prompt_tokens,
                    total_completion_tokens=stats.completion_tokens,
                    total_tokens=stats.prompt_tokens + stats.completion_tokens,
                    total_latency_ms=round(stats.latency_ms, 3),
                    error_count=stats.errors,
                    avg_latency_ms=round(stats.latency_ms / stats.requests, 3),
                    error_rate=_percent(stats.errors, stats.requests),
                    total_cost=_money(stats.cost),
                    tokens_per_second=_rate(mw.tokens / span),
                    **_streaming_percentiles(stats.ttft.stats(now), stats.itl.stats(now)),
                )
            by_model, by_service = self._costs.breakdown(now)
            period_cost = sum(by_model.values())
            period_seconds = _PERIOD_SECONDS[self._cost_period]
            cost_span = self._span(now, period_seconds)
            projectable = now - self._started_at >= min(period_seconds, MIN_PROJECTION_SECONDS)
            costs = CostUpdatePayload(
                period=self._cost_period,
                total_cost=_money(period_cost),
                breakdown_by_model={k: _money(v) for k, v in sorted(by_model.items())},
                breakdown_by_service={k: _money(v) for k, v in sorted(by_service.items())},
                projected_monthly_cost=(
                    _money(period_cost / cost_span * _MONTH_SECONDS) if projectable else 0.0
                ),
                projection_available=projectable,
            )
            system: SystemUpdatePayload | None = None
            sample = self._system_sample
            if sample is not None:
                system = SystemUpdatePayload(
                    cpu_usage=round(sample.cpu_usage, 2),
                    memory_usage=round(sample.memory_usage, 2),
                    gpu_usage=None if sample.gpu_usage is None else round(sample.gpu_usage, 2),
                    gpu_memory_usage=(
                        None
                        if sample.gpu_memory_usage is None
                        else round(sample.gpu_memory_usage, 2)
                    ),
                    disk_usage=round(sample.disk_usage, 2),
                    network_in_bytes=sample.network_in_bytes,
                    network_out_bytes=sample.network_out_bytes,
                    active_workers=(
                        self._in_flight if self._active_workers is None else self._active_workers
                    ),
                    queue_size=self._queue_size,
                )
            return CollectorSnapshot(
                metrics=metrics,
                models=models,
                costs=costs,
                rate_limits=dict(self._rate_limits),
                kv_cache=self._kv_cache,
                system=system,
                latency=latency,
                ttft=ttft,
                errors_by_type=dict(self._errors_by_type),
                itl=itl,
            )

    def snapshot(self) -> CollectorSnapshot:
        """Every state value as it would be published now (any thread)."""
        return self._build()

    def latency_percentiles(self) -> LatencyStats:
        """Latency distribution (ms) of the requests in the window."""
        with self._lock:
            return self._latency.stats(self._clock())

    def sample_system(self) -> SystemSample | None:
        """Read the host now (blocking, off the loop preferably); ``None``
        when system statistics are disabled. The periodic task does this."""
        if self._sampler is None:
            return None
        sample = self._sampler.sample()
        self._system_sample = sample
        return sample

    def flush(self) -> list[WebSocketMessage[Any]]:
        """Publish every state message whose value changed since it was last
        published, and return them. Call it on the loop thread (the periodic
        task does, every ``interval``). Raises :class:`RuntimeError` from another
        thread while the loop is open, rather than call the publisher off it."""
        loop = self._loop
        if loop is not None and not loop.is_closed() and threading.get_ident() != self._loop_thread:
            raise RuntimeError("MetricsCollector.flush() must be called on its event loop thread")
        snap = self._build()
        timestamp = self._timestamp_ms()
        candidates: list[tuple[MessageType, str, Any, dict[str, Any] | None]] = [
            (MessageType.METRICS_UPDATE, "", snap.metrics, snap.metrics_metadata()),
        ]
        candidates.extend(
            (MessageType.MODEL_UPDATE, name, payload, None) for name, payload in snap.models.items()
        )
        candidates.append((MessageType.COST_UPDATE, "", snap.costs, None))
        candidates.extend(
            (MessageType.RATE_LIMIT_UPDATE, endpoint, payload, None)
            for endpoint, payload in snap.rate_limits.items()
        )
        if snap.kv_cache is not None:
            candidates.append((MessageType.KV_CACHE_UPDATE, "", snap.kv_cache, None))
        if snap.system is not None:
            candidates.append((MessageType.SYSTEM_UPDATE, "", snap.system, None))
        published: list[WebSocketMessage[Any]] = []
        for mtype, key, payload, metadata in candidates:
            slot = (mtype.value, key)
            if self._last_published.get(slot) == payload:
                continue
            message = make_message(mtype, payload, metadata=metadata, timestamp=timestamp)
            # Remembered only once published: a value the publisher refused
            # is offered again next interval, not held back until it changes.
            if self._publish(message):
                self._last_published[slot] = payload
                published.append(message)
        return published
