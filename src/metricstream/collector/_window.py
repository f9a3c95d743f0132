"""Rolling windows: time-bucketed sums and bounded latency samples.

Recording is O(1): one bucket update, or one deque append. Reading walks the
buckets still inside the window (``window / resolution`` of them, 60 by
default) once per publishing interval, so sums are recomputed from the buckets
rather than kept as running totals that would drift under float subtraction.
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

    __slots__ = ("_buckets", "_factory", "_newest", "_newest_index", "_span", "_window")

    def __init__(self, window: float, span: float, factory: Callable[[], _T]) -> None:
        self._window = window
        self._span = span
        self._factory = factory
        self._buckets: deque[tuple[int, _T]] = deque()
        self._newest_index = _NO_INDEX
        self._newest: _T | None = None

    def current(self, now: float, *, expire: bool = True) -> _T:
        """The bucket that takes an event at ``now``, opened if needed.

        Opening a bucket also drops the expired ones when ``expire`` is set,
        which bounds memory by the number of buckets in a window.
        """
        index = math.floor(now / self._span)
        newest = self._newest
        if newest is not None and index <= self._newest_index:
            return newest
        newest = self._factory()
        self._buckets.append((index, newest))
        self._newest_index = index
        self._newest = newest
        if expire:
            self.expire(now)
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

    def oldest(self) -> _T | None:
        """The oldest bucket kept, expired or not; ``None`` when there is none."""
        return self._buckets[0][1] if self._buckets else None

    def drop_oldest(self) -> None:
        """Forget the oldest bucket (one emptied by a size bound)."""
        self._buckets.popleft()
        if not self._buckets:
            self._forget_newest()

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


class RollingSamples:
    """The values recorded in the last ``window`` seconds, for percentiles.

    Samples expire with the same bucket granularity as :class:`RollingWindow`,
    so both describe the same requests. Memory is bounded by ``max_samples``:
    past it the oldest samples are dropped first, so under very heavy traffic
    the percentiles describe the most recent ``max_samples`` values of the
    window rather than all of them.
    """

    __slots__ = ("_count", "_max_samples", "_ring")

    def __init__(self, window: float, resolution: float, max_samples: int = 10_000) -> None:
        window = _check_span("window", window)
        span = _check_span("resolution", resolution)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        self._max_samples = max_samples
        self._count = 0
        self._ring: _BucketRing[deque[float]] = _BucketRing(window, span, deque)

    def add(self, now: float, value: float) -> None:
        """Record ``value`` at time ``now``."""
        # Expiry waits for the next read: recording stays one append, and
        # ``max_samples`` already bounds the memory held.
        self._ring.current(now, expire=False).append(value)
        self._count += 1
        if self._count > self._max_samples:
            self._drop_oldest_sample()

    def _drop_oldest_sample(self) -> None:
        ring = self._ring
        oldest = ring.oldest()
        assert oldest is not None  # the count says a sample is held
        oldest.popleft()
        self._count -= 1
        if not oldest:
            ring.drop_oldest()

    def stats(self, now: float) -> LatencyStats:
        """Count, average, extremes and p50/p90/p95/p99 of the samples in the window."""
        ordered = sorted(value for bucket in self._ring.live(now) for value in bucket)
        self._count = len(ordered)
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
