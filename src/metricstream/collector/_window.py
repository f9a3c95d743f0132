"""Rolling windows: time-bucketed sums and bounded latency samples.

Recording is O(1): one bucket update, plus one deque append for a sample.
Reading walks the buckets still inside the window (``window / resolution`` of
them, 60 by default) once per publishing interval, so sums are recomputed from
the buckets rather than kept as running totals that would drift under float
subtraction. All three windows share one bucket ring (:class:`_BucketRing`),
so they agree on when an event leaves and on what a clock that steps back does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..exceptions import ConfigError

__all__ = [
    "CostWindow",
    "LatencyStats",
    "RollingSamples",
    "RollingWindow",
    "WindowTotals",
    "nearest_rank",
]


def _check_span(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number of seconds, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


_T = TypeVar("_T")

#: Below every bucket index, so the first event always opens a bucket.
_NO_INDEX = -(2**63)


class _BucketRing(Generic[_T]):
    """The live buckets of a window: time cut into ``span``-second buckets.

    Bucket ``i`` holds the events of ``[i * span, (i + 1) * span)`` and leaves
    once all of it is at or before ``now - window``, so an event expires
    between ``window`` and ``window + span`` seconds after it happened. Only
    buckets that received an event exist, so a jump of many spans costs
    nothing and an idle window holds no memory.

    Buckets are never reordered: an event stamped before the newest bucket (a
    clock that stepped back) is counted in the newest bucket, and so leaves
    with it. The newest bucket is also kept outside the deque, because
    :meth:`current` is on the recording hot path and is nearly always a hit.
    """

    __slots__ = (
        "_buckets",
        "_expire_on_open",
        "_factory",
        "_max_buckets",
        "_newest",
        "_newest_index",
        "_span",
        "_window",
    )

    def __init__(
        self,
        window: float,
        span: float,
        factory: Callable[[], _T],
        *,
        expire_on_open: bool = True,
        max_buckets: int | None = None,
    ) -> None:
        self._window = window
        self._span = span
        self._factory = factory
        self._expire_on_open = expire_on_open
        self._max_buckets = max_buckets
        self._buckets: deque[tuple[int, _T]] = deque()
        self._newest_index = _NO_INDEX
        self._newest: _T | None = None

    def current(self, now: float) -> _T:
        """The bucket that takes an event at ``now``, opened if needed.

        Opening a bucket also drops the expired ones (unless the ring was made
        with ``expire_on_open=False``), which bounds memory by the number of
        buckets in a window, and the oldest past ``max_buckets`` if given.
        """
        index = math.floor(now / self._span)
        newest = self._newest
        if newest is not None and index <= self._newest_index:
            return newest
        newest = self._factory()
        self._buckets.append((index, newest))
        self._newest_index = index
        self._newest = newest
        if self._expire_on_open:
            self.expire(now)
        if self._max_buckets is not None and len(self._buckets) > self._max_buckets:
            self._buckets.popleft()
        return newest

    def expire(self, now: float) -> None:
        """Drop the buckets wholly at or before ``now - window``."""
        horizon = now - self._window
        buckets = self._buckets
        span = self._span
        while buckets and (buckets[0][0] + 1) * span <= horizon:
            buckets.popleft()
        if not buckets:
            self._forget_newest()

    def live(self, now: float) -> Iterator[_T]:
        """The buckets still inside the window at ``now``, oldest first."""
        self.expire(now)
        for _, bucket in self._buckets:
            yield bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_newest(self) -> None:
        # With no bucket left, the next event opens one at its own time, even
        # if that is before the bucket just dropped.
        self._newest_index = _NO_INDEX
        self._newest = None


@dataclass(slots=True)
class WindowTotals:
    """Sums over the requests that finished inside a window."""

    requests: int = 0
    errors: int = 0
    streaming: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    cost: float = 0.0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


class RollingWindow:
    """Sums of the requests recorded in the last ``window`` seconds.

    Time is cut into buckets of ``resolution`` seconds; a bucket leaves the
    window once all of it is older than ``window`` seconds, so an event expires
    between ``window`` and ``window + resolution`` seconds after it happened.
    """

    __slots__ = ("_ring", "_window")

    def __init__(self, window: float, resolution: float) -> None:
        self._window = _check_span("window", window)
        span = _check_span("resolution", resolution)
        if span > self._window:
            raise ConfigError(f"resolution ({resolution}) must not exceed window ({window})")
        self._ring = _BucketRing(self._window, span, WindowTotals)

    @property
    def window(self) -> float:
        """Length of the window in seconds."""
        return self._window

    def add(
        self,
        now: float,
        *,
        error: bool,
        streaming: bool,
        prompt_tokens: int,
        completion_tokens: int,
        latency_ms: float,
        cost: float,
    ) -> None:
        """Count one finished request at time ``now`` (seconds, monotonic)."""
        totals = self._ring.current(now)
        totals.requests += 1
        totals.errors += error
        totals.streaming += streaming
        totals.prompt_tokens += prompt_tokens
        totals.completion_tokens += completion_tokens
        totals.latency_ms += latency_ms
        totals.cost += cost

    def totals(self, now: float) -> WindowTotals:
        """Sums over the buckets still inside the window at ``now``."""
        result = WindowTotals()
        for t in self._ring.live(now):
            result.requests += t.requests
            result.errors += t.errors
            result.streaming += t.streaming
            result.prompt_tokens += t.prompt_tokens
            result.completion_tokens += t.completion_tokens
            result.latency_ms += t.latency_ms
            result.cost += t.cost
        return result


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Distribution of latencies (ms) in a window; all zero when it is empty.

    Percentiles are nearest-rank: the smallest sample with at least ``p`` per
    cent of the samples at or below it.
    """

    count: int = 0
    avg: float = 0.0
    min: float = 0.0
    max: float = 0.0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    #: Added after the seed's fields, so positional construction keeps working.
    p95: float = 0.0


def _nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


def nearest_rank(ordered: Sequence[float], percentile: float) -> float:
    """The nearest-rank ``percentile`` of ``ordered`` (sorted, not empty)."""
    return _nearest_rank(ordered, percentile)


def _one_count() -> list[int]:
    # A bucket of RollingSamples: how many values it received, mutable in place.
    return [0]


class RollingSamples:
    """The values recorded in the last ``window`` seconds, for percentiles.

    Samples expire with the same bucket granularity as :class:`RollingWindow`,
    so both describe the same requests. Memory is bounded by ``max_samples``:
    past it the oldest samples are dropped first, so under very heavy traffic
    the percentiles describe the most recent ``max_samples`` values of the
    window rather than all of them. A value recorded on a clock that stepped
    back is counted in the newest bucket and leaves with it, as in
    :class:`RollingWindow`.
    """

    __slots__ = ("_ring", "_values")

    def __init__(self, window: float, resolution: float, max_samples: int = 10_000) -> None:
        window = _check_span("window", window)
        span = _check_span("resolution", resolution)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        # The values sit in one bounded deque, in the order recorded, so that
        # dropping the oldest past ``max_samples`` costs nothing on the hot
        # path; the ring only counts how many each bucket received. Those
        # counts say how many of the newest values are still in the window.
        self._values: deque[float] = deque(maxlen=max_samples)
        # Expiry waits for the next read, as the values' does. A bucket older
        # than the newest ``max_samples`` buckets has lost all its values (each
        # holds at least one), so dropping it changes no figure.
        self._ring: _BucketRing[list[int]] = _BucketRing(
            window, span, _one_count, expire_on_open=False, max_buckets=max_samples
        )

    def add(self, now: float, value: float) -> None:
        """Record ``value`` at time ``now``."""
        self._values.append(value)
        self._ring.current(now)[0] += 1

    def _live_values(self, now: float) -> deque[float]:
        live = sum(count[0] for count in self._ring.live(now))
        values = self._values
        # Anything before the newest ``live`` values has left the window.
        for _ in range(len(values) - live):
            values.popleft()
        return values

    def stats(self, now: float) -> LatencyStats:
        """Count, average, extremes and p50/p90/p95/p99 of the samples in the window."""
        ordered = sorted(self._live_values(now))
        if not ordered:
            return LatencyStats()
        return LatencyStats(
            count=len(ordered),
            avg=sum(ordered) / len(ordered),
            min=ordered[0],
            max=ordered[-1],
            p50=_nearest_rank(ordered, 50),
            p90=_nearest_rank(ordered, 90),
            p99=_nearest_rank(ordered, 99),
            p95=_nearest_rank(ordered, 95),
        )


class _CostBucket:
    __slots__ = ("by_model", "by_service")

    def __init__(self) -> None:
        self.by_model: dict[str, float] = {}
        self.by_service: dict[str, float] = {}


class CostWindow:
    """Spend per model and per service over the last ``window`` seconds."""

    __slots__ = ("_ring",)

    def __init__(self, window: float, resolution: float) -> None:
        self._ring = _BucketRing(
            _check_span("window", window), _check_span("resolution", resolution), _CostBucket
        )

    def add(self, now: float, model: str, service: str, cost: float) -> None:
        """Add ``cost`` spent at ``now`` on ``model`` through ``service``."""
        bucket = self._ring.current(now)
        bucket.by_model[model] = bucket.by_model.get(model, 0.0) + cost
        bucket.by_service[service] = bucket.by_service.get(service, 0.0) + cost

    def breakdown(self, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Spend in the window, by model and by service."""
        by_model: dict[str, float] = {}
        by_service: dict[str, float] = {}
        for bucket in self._ring.live(now):
            for key, value in bucket.by_model.items():
                by_model[key] = by_model.get(key, 0.0) + value
            for key, value in bucket.by_service.items():
                by_service[key] = by_service.get(key, 0.0) + value
        return by_model, by_service
