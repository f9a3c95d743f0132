"""The collector's arithmetic: recorded values in, stream messages out, nothing else.

:class:`Aggregator` holds the rolling windows (``_window.py``), the per-model
aggregates, the costs and the TTFT/ITL percentiles, and builds the state
messages from them. It has no thread, no lock, no event loop and no clock:
every method that needs the time is given it (``now``, monotonic seconds;
``wall``, Unix seconds, where a timestamp is published), so the same calls
give the same messages. :class:`~metricstream.collector.MetricsCollector`
drives it: the lock, the hand-off to the loop, the periodic tick, the host
sampling and the publishing are there.

Each recorded value is checked once, here, by the method that turns it into
a payload (:meth:`Aggregator.request`, :meth:`~Aggregator.error`,
:meth:`~Aggregator.rate_limit`, :meth:`~Aggregator.kv_cache`), which raises
:class:`InvalidMetricError` before anything is recorded. Those methods read
no mutable state, so the collector calls them in the recording thread. What
they check covers everything the clients' decoder enforces on the fields
built from those values, so the events and the states made of them alone
leave as :class:`~metricstream.protocol.messages.CheckedMessage` and the hub
does not decode them again. State made of sums (``metrics_update``,
``model_update``, ``cost_update``) is not a recorded value: it leaves as a
plain message and the hub checks it, like any other.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import msgspec

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
from ..protocol.messages import CheckedMessage, CostPeriod, ErrorSeverity, RequestStatus
from ._errors import InvalidMetricError
from ._prices import DEFAULT_PRICES, ModelPrice
from ._system import SystemSample
from ._window import CostWindow, LatencyStats, RollingSamples, RollingWindow, nearest_rank

__all__ = [
    "DEFAULT_SERVICE",
    "MIN_PROJECTION_SECONDS",
    "OTHER",
    "Aggregator",
    "CollectorSnapshot",
    "RequestRecord",
]

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


# --- the checks: each recorded value, once --------------------------------


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


def _percent(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return min(100.0, max(0.0, round(100.0 * part / whole, 3)))


def _money(value: float) -> float:
    return round(value, 8)


def _rate(value: float) -> float:
    return round(value, 3)


class _Timing(msgspec.Struct, gc=False):
    """The streaming timings of one request, derived once in the caller's thread."""

    ttft: float | None
    itl_mean: float | None
    itl_p50: float | None
    itl_p95: float | None
    tpot: float | None


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
            count = len(ordered)
            total = sum(ordered)
            # Finite samples can add up past the largest float: the mean of
            # the shares is then taken, so what is published stays finite.
            itl_mean = total / count if total < math.inf else sum(v / count for v in ordered)
            itl_p50 = nearest_rank(ordered, 50)
            itl_p95 = nearest_rank(ordered, 95)
    tpot = None
    if ttft is not None and completion_tokens > 1:
        # A TTFT past the end (clock skew between two sources) gives 0, not a negative.
        tpot = max(0.0, latency - ttft) / (completion_tokens - 1)
    return _Timing(ttft, itl_mean, itl_p50, itl_p95, tpot)


# --- state ----------------------------------------------------------------


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


class RequestRecord(msgspec.Struct, gc=False):
    """One checked request, ready to be added (:meth:`Aggregator.add_request`).

    ``message`` is its ``request_update`` event; ``latency`` and ``cost``
    are the values counted (before rounding), ``ttft`` and ``itl`` (its mean
    inter-token latency) feed the percentiles; ``now`` is when it was
    recorded (monotonic seconds), which places it in the windows. A Struct
    rather than a class: one is built per request, and it is built in C.
    """

    message: CheckedMessage[RequestUpdatePayload]
    latency: float
    cost: float
    ttft: float | None
    itl: float | None
    service: str
    now: float

    @property
    def payload(self) -> RequestUpdatePayload:
        """The ``request_update`` payload."""
        return self.message.data


def _slot(message: WebSocketMessage[Any]) -> tuple[str, str]:
    """The key a state message replaces the previous value of."""
    data = message.data
    if isinstance(data, ModelUpdatePayload):
        return (message.type, data.model)
    if isinstance(data, RateLimitUpdatePayload):
        return (message.type, data.endpoint)
    return (message.type, "")


class Aggregator:
    """Rolling windows, per-model aggregates, costs and percentiles: no I/O, no time of its own.

    ``started_at`` (monotonic seconds) is when counting began: rates divide
    by the time observed since, up to ``window``. Options as
    :class:`~metricstream.collector.MetricsCollector`'s; invalid ones raise
    :class:`~metricstream.exceptions.ConfigError`. ``id_prefix`` starts the
    ids of requests recorded without one (random by default).

    Not thread-safe: the methods that check and build (:meth:`request`,
    :meth:`error`, :meth:`rate_limit`, :meth:`kv_cache`, :meth:`price_of`)
    read only what the constructor fixed and may run in any thread; the
    others change or read the aggregates and need one caller at a time.
    """

    def __init__(
        self,
        *,
        started_at: float,
        window: float = 60.0,
        resolution: float | None = None,
        prices: Mapping[str, ModelPrice] | None = None,
        default_price: ModelPrice | None = None,
        cost_period: CostPeriod = "hour",
        max_samples: int = 10_000,
        max_models: int = 256,
        max_services: int = 256,
        id_prefix: str | None = None,
    ) -> None:
        if (
            isinstance(window, bool)
            or not isinstance(window, int | float)
            or not math.isfinite(window)
            or window <= 0
        ):
            raise ConfigError(f"window must be a finite number of seconds > 0, got {window!r}")
        for name, value in (("max_models", max_models), ("max_services", max_services)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if cost_period not in _PERIOD_SECONDS:
            raise ConfigError(
                f"cost_period must be one of {sorted(_PERIOD_SECONDS)}, got {cost_period!r}"
            )
        self.window = float(window)
        self.resolution = float(resolution) if resolution is not None else window / 60
        self.prices: Mapping[str, ModelPrice] = dict(DEFAULT_PRICES if prices is None else prices)
        for model, price in self.prices.items():
            if not isinstance(price, ModelPrice):
                raise ConfigError(f"price of {model!r} must be a ModelPrice, got {price!r}")
        self.default_price = default_price
        self.cost_period: CostPeriod = cost_period
        self.started_at = started_at

        self._window = RollingWindow(window, self.resolution)
        self._latency = RollingSamples(window, self.resolution, max_samples)
        self._ttft = RollingSamples(window, self.resolution, max_samples)
        self._itl = RollingSamples(window, self.resolution, max_samples)
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
        self.in_flight = 0
        self._active_workers: int | None = None
        self._queue_size = 0
        self._last_published: dict[tuple[str, str], object] = {}
        self._ids = itertools.count(1)
        self._id_prefix = f"req-{os.urandom(4).hex()}" if id_prefix is None else id_prefix

    # --- checking and building (no mutable state read) ---------------------

    def price_of(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of a request from the price table (0 for an unknown model
        unless ``default_price`` was given)."""
        price = self.prices.get(model, self.default_price)
        return 0.0 if price is None else price.cost(prompt_tokens, completion_tokens)

    def request(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        now: float,
        wall: float,
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
    ) -> RequestRecord:
        """Check one request and build its ``request_update`` (see
        :meth:`MetricsCollector.record_request
        <metricstream.collector.MetricsCollector.record_request>`).

        Records nothing: :meth:`add_request` does. ``now`` places it in the
        windows; ``wall`` is its ``created`` time. Raises
        :class:`InvalidMetricError` for an invalid value. Every parameter may
        be passed by position: the collector forwards each request's
        arguments that way, which costs a third of passing them by name.
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
        estimated = _check_bool("usage_estimated", usage_estimated)
        service_name = DEFAULT_SERVICE if service is None else _check_name("service", service)
        if cost is None:
            try:
                cost = self.price_of(model, prompt_tokens, completion_tokens)
            except OverflowError:
                cost = math.inf
            if not math.isfinite(cost):
                # The event leaves unchecked by the hub: it must not carry an
                # infinite cost that every client would refuse.
                raise InvalidMetricError(
                    f"token counts too large to price: {prompt_tokens} + {completion_tokens}"
                )
        else:
            cost = _check_amount("cost", cost)
        created = round(wall, 3)
        payload = RequestUpdatePayload(
            id=request_id if request_id is not None else f"{self._id_prefix}-{next(self._ids)}",
            model=model,
            created=created,
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
        message = CheckedMessage(
            type=MessageType.REQUEST_UPDATE,
            timestamp=int(created * 1000),
            data=payload,
            metadata={"usage_estimated": True} if estimated else None,
        )
        return RequestRecord(
            message, latency, cost, timing.ttft, timing.itl_mean, service_name, now
        )

    def error(
        self,
        error_type: str,
        error_message: str,
        *,
        wall: float,
        model: str | None = None,
        severity: ErrorSeverity = "medium",
        request_id: str | None = None,
        stack_trace: str | None = None,
    ) -> CheckedMessage[ErrorUpdatePayload]:
        """Check one error and build its ``error_update``, stamped ``wall``.

        Records nothing: :meth:`add_error` does. Raises
        :class:`InvalidMetricError` for an invalid value.
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
        # Masked here for every publisher, like request()'s error_message.
        error_message = redact_text(error_message)
        if stack_trace is not None:
            stack_trace = redact_text(stack_trace)
        timestamp = int(wall * 1000)
        payload = ErrorUpdatePayload(
            error_type=error_type,
            error_message=error_message,
            model=model,
            timestamp=timestamp,
            stack_trace=stack_trace,
            request_id=request_id,
            severity=severity,
        )
        return CheckedMessage(type=MessageType.ERROR_UPDATE, timestamp=timestamp, data=payload)

    @staticmethod
    def rate_limit(
        endpoint: str, limit: int, remaining: int, reset_time: int
    ) -> RateLimitUpdatePayload:
        """Check one endpoint's rate limit and build its payload (records nothing)."""
        _check_name("endpoint", endpoint)
        _check_count("limit", limit)
        _check_count("remaining", remaining)
        _check_count("reset_time", reset_time)
        if remaining > limit:
            raise InvalidMetricError(f"remaining ({remaining}) must not exceed limit ({limit})")
        # A zero limit admits nothing: fully used.
        used = 100.0 if limit == 0 else _percent(limit - remaining, limit)
        return RateLimitUpdatePayload(
            endpoint=endpoint,
            limit=limit,
            remaining=remaining,
            reset_time=reset_time,
            percentage_used=used,
        )

    @staticmethod
    def kv_cache(
        *,
        cache_hits: int,
        cache_misses: int,
        cache_size_bytes: int,
        cache_entries: int,
        evictions: int,
        avg_lookup_time_ms: float,
    ) -> KVCacheUpdatePayload:
        """Check the KV cache counters and build their payload (records nothing)."""
        hits = _check_count("cache_hits", cache_hits)
        misses = _check_count("cache_misses", cache_misses)
        _check_count("cache_size_bytes", cache_size_bytes)
        _check_count("cache_entries", cache_entries)
        _check_count("evictions", evictions)
        lookup = _check_amount("avg_lookup_time_ms", avg_lookup_time_ms)
        return KVCacheUpdatePayload(
            cache_hits=hits,
            cache_misses=misses,
            hit_rate=_percent(hits, hits + misses),
            cache_size_bytes=cache_size_bytes,
            cache_entries=cache_entries,
            evictions=evictions,
            avg_lookup_time_ms=round(lookup, 4),
        )

    # --- recording ---------------------------------------------------------

    def add_request(self, record: RequestRecord) -> None:
        """Count a checked request (one with status ``in_progress`` counts nowhere)."""
        payload = record.message.data
        if payload.status == "in_progress":
            return
        now = record.now
        latency = record.latency
        cost = record.cost
        ttft = record.ttft
        itl = record.itl
        error = payload.status == "error"
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
        service = record.service
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
                    self.window, self.resolution, self._max_samples
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

    def add_error(self, payload: ErrorUpdatePayload) -> None:
        """Count a checked error by its type."""
        counts = self._errors_by_type
        counts[payload.error_type] = counts.get(payload.error_type, 0) + 1

    def set_rate_limit(self, payload: RateLimitUpdatePayload) -> None:
        """Set a checked rate limit (:meth:`rate_limit`) of its endpoint."""
        self._rate_limits[payload.endpoint] = payload

    def set_kv_cache(self, payload: KVCacheUpdatePayload) -> None:
        """Set the checked KV cache counters (:meth:`kv_cache`)."""
        self._kv_cache = payload

    def set_load(self, *, active_workers: int | None = None, queue_size: int | None = None) -> None:
        """Set ``active_workers`` and/or ``queue_size`` of ``system_update``
        (checked first: nothing changes when one is invalid)."""
        workers = None if active_workers is None else _check_count("active_workers", active_workers)
        queue = None if queue_size is None else _check_count("queue_size", queue_size)
        if workers is not None:
            self._active_workers = workers
        if queue is not None:
            self._queue_size = queue

    def set_system(self, sample: SystemSample | None) -> None:
        """Set the host statistics ``system_update`` is built from."""
        self._system_sample = sample

    def request_started(self) -> None:
        """Count a request as in flight."""
        self.in_flight += 1

    def request_finished(self) -> None:
        """Count an in-flight request as done."""
        self.in_flight = max(0, self.in_flight - 1)

    # --- reading -----------------------------------------------------------

    def _span(self, now: float, length: float) -> float:
        # Rates divide by the time actually observed, so they are right from
        # the first second instead of ramping up over the whole window.
        return min(length, max(now - self.started_at, self.resolution, 1e-9))

    def latency_percentiles(self, now: float) -> LatencyStats:
        """Latency distribution (ms) of the requests in the window at ``now``."""
        return self._latency.stats(now)

    def snapshot(self, now: float, *, connections: int = 0) -> CollectorSnapshot:
        """Every state value at ``now``; ``connections`` is ``active_connections``."""
        span = self._span(now, self.window)
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
        period_seconds = _PERIOD_SECONDS[self.cost_period]
        cost_span = self._span(now, period_seconds)
        projectable = now - self.started_at >= min(period_seconds, MIN_PROJECTION_SECONDS)
        costs = CostUpdatePayload(
            period=self.cost_period,
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
                    None if sample.gpu_memory_usage is None else round(sample.gpu_memory_usage, 2)
                ),
                disk_usage=round(sample.disk_usage, 2),
                network_in_bytes=sample.network_in_bytes,
                network_out_bytes=sample.network_out_bytes,
                active_workers=(
                    self.in_flight if self._active_workers is None else self._active_workers
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

    def build(
        self, now: float, wall: float, *, connections: int = 0
    ) -> list[WebSocketMessage[Any]]:
        """The state messages whose value changed since last :meth:`published`.

        In the order they are published: ``metrics_update``, one
        ``model_update`` per model, ``cost_update``, one
        ``rate_limit_update`` per endpoint, ``kv_cache_update``,
        ``system_update``; each stamped ``wall`` (Unix seconds). Rate limits
        and KV cache counters, checked as they were set, are
        :class:`~metricstream.protocol.messages.CheckedMessage`; the rest,
        made of sums and host readings, are plain messages for the hub to
        check.
        """
        snap = self.snapshot(now, connections=connections)
        timestamp = int(wall * 1000)
        candidates: list[tuple[MessageType, str, Any, dict[str, Any] | None, bool]] = [
            (MessageType.METRICS_UPDATE, "", snap.metrics, snap.metrics_metadata(), False),
        ]
        candidates.extend(
            (MessageType.MODEL_UPDATE, name, payload, None, False)
            for name, payload in snap.models.items()
        )
        candidates.append((MessageType.COST_UPDATE, "", snap.costs, None, False))
        candidates.extend(
            (MessageType.RATE_LIMIT_UPDATE, endpoint, payload, None, True)
            for endpoint, payload in snap.rate_limits.items()
        )
        if snap.kv_cache is not None:
            candidates.append((MessageType.KV_CACHE_UPDATE, "", snap.kv_cache, None, True))
        if snap.system is not None:
            candidates.append((MessageType.SYSTEM_UPDATE, "", snap.system, None, False))
        messages: list[WebSocketMessage[Any]] = []
        last = self._last_published
        for mtype, key, payload, metadata, checked in candidates:
            if last.get((mtype.value, key)) == payload:
                continue
            if checked:
                messages.append(
                    CheckedMessage(type=mtype, timestamp=timestamp, data=payload, metadata=metadata)
                )
            else:
                messages.append(
                    make_message(mtype, payload, metadata=metadata, timestamp=timestamp)
                )
        return messages

    def published(self, message: WebSocketMessage[Any]) -> None:
        """Remember a state message of :meth:`build` as published: the same
        value is not built again until it changes. A message never marked
        (the publisher refused it) is built again next time."""
        self._last_published[_slot(message)] = message.data
