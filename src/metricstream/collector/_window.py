"""Rolling windows: time-bucketed sums and bounded latency samples.

Recording is O(1): one bucket update, or one deque append. Reading walks the
buckets still inside the window (``window / resolution`` of them, 60 by
default) once per publishing interval, so sums are recomputed from the buckets
rather than kept as running totals that would drift under float subtraction.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

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


class _Bucket:
    __slots__ = ("index", "totals")

    def __init__(self, index: int) -> None:
        self.index = index
        self.totals = WindowTotals()


class RollingWindow:
    """Sums of the requests recorded in the last ``window`` seconds.

    Time is cut into buckets of ``resolution`` seconds; a bucket leaves the
    window once all of it is older than ``window`` seconds, so an event expires
    between ``window`` and ``window + resolution`` seconds after it happened.
    """

    __slots__ = ("_buckets", "_resolution", "_window")

    def __init__(self, window: float, resolution: float) -> None:
        self._window = _check_span("window", window)
        self._resolution = _check_span("resolution", resolution)
        if self._resolution > self._window:
            raise ConfigError(f"resolution ({resolution}) must not exceed window ({window})")
        self._buckets: deque[_Bucket] = deque()

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
        index = math.floor(now / self._resolution)
        buckets = self._buckets
        if buckets and buckets[-1].index >= index:
            # Same bucket, or a clock that stepped back: never reorder buckets.
            bucket = buckets[-1]
        else:
            bucket = _Bucket(index)
            buckets.append(bucket)
            self._expire(now)
        totals = bucket.totals
        totals.requests += 1
        totals.errors += error
        totals.streaming += streaming
        totals.prompt_tokens += prompt_tokens
        totals.completion_tokens += completion_tokens
        totals.latency_ms += latency_ms
        totals.cost += cost

    def totals(self, now: float) -> WindowTotals:
        """Sums over the buckets still inside the window at ``now``."""
        self._expire(now)
        result = WindowTotals()
        for bucket in self._buckets:
            t = bucket.totals
            result.requests += t.requests
            result.errors += t.errors
            result.streaming += t.streaming
            result.prompt_tokens += t.prompt_tokens
            result.completion_tokens += t.completion_tokens
            result.latency_ms += t.latency_ms
            result.cost += t.cost
        return result

    def _expire(self, now: float) -> None:
        # A bucket [i*r, (i+1)*r) is gone when its end is at or before now - window.
        horizon = now - self._window
        buckets = self._buckets
        resolution = self._resolution
        while buckets and (buckets[0].index + 1) * resolution <= horizon:
            buckets.popleft()


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

    __slots__ = ("_resolution", "_samples", "_window")

    def __init__(self, window: float, resolution: float, max_samples: int = 10_000) -> None:
        self._window = _check_span("window", window)
        self._resolution = _check_span("resolution", resolution)
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ConfigError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        self._samples: deque[tuple[int, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value: float) -> None:
        """Record ``value`` at time ``now``."""
        self._samples.append((math.floor(now / self._resolution), value))

    def stats(self, now: float) -> LatencyStats:
        """Count, average, extremes and p50/p90/p95/p99 of the samples in the window."""
        samples = self._samples
        horizon = now - self._window
        resolution = self._resolution
        while samples and (samples[0][0] + 1) * resolution <= horizon:
            samples.popleft()
        if not samples:
            return LatencyStats()
        ordered = sorted(value for _, value in samples)
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
    __slots__ = ("by_model", "by_service", "index")

    def __init__(self, index: int) -> None:
        self.index = index
        self.by_model: dict[str, float] = {}
        self.by_service: dict[str, float] = {}


class CostWindow:
    """Spend per model and per service over the last ``window`` seconds."""

    __slots__ = ("_buckets", "_resolution", "_window")

    def __init__(self, window: float, resolution: float) -> None:
        self._window = _check_span("window", window)
        self._resolution = _check_span("resolution", resolution)
        self._buckets: deque[_CostBucket] = deque()

    def add(self, now: float, model: str, service: str, cost: float) -> None:
        """Add ``cost`` spent at ``now`` on ``model`` through ``service``."""
        index = math.floor(now / self._resolution)
        buckets = self._buckets
        if buckets and buckets[-1].index >= index:
            bucket = buckets[-1]
        else:
            bucket = _CostBucket(index)
            buckets.append(bucket)
            self._expire(now)
        bucket.by_model[model] = bucket.by_model.get(model, 0.0) + cost
        bucket.by_service[service] = bucket.by_service.get(service, 0.0) + cost

    def breakdown(self, now: float) -> tuple[dict[str, float], dict[str, float]]:
        """Spend in the window, by model and by service."""
        self._expire(now)
        by_model: dict[str, float] = {}
        by_service: dict[str, float] = {}
        for bucket in self._buckets:
            for key, value in bucket.by_model.items():
                by_model[key] = by_model.get(key, 0.0) + value
            for key, value in bucket.by_service.items():
                by_service[key] = by_service.get(key, 0.0) + value
        return by_model, by_service

    def _expire(self, now: float) -> None:
        horizon = now - self._window
        buckets = self._buckets
        resolution = self._resolution
        while buckets and (buckets[0].index + 1) * resolution <= horizon:
            buckets.popleft()
