"""The collector's one error type."""

from __future__ import annotations

from ..exceptions import MetricStreamError

__all__ = ["InvalidMetricError"]


class InvalidMetricError(MetricStreamError, ValueError):
    """A recorded value is invalid (negative tokens, NaN latency, unknown status...).

    Raised in the caller's thread, before anything is recorded, so a bad value
    never reaches the aggregates or the stream. It is a :class:`ValueError`, so
    code that already guards against bad numbers catches it unchanged.
    """
