"""A reactive store over a stream: the seed's React hooks as Python views.

``MetricsStore(service)`` keeps a :class:`RealtimeMetricsState` current from a
client; ``watch(selector, callback, interval=...)`` tells a UI when the part it
shows changed, at most once per interval.
"""

from ._state import RealtimeMetricsState, StateReducer
from ._store import (
    AggregateStats,
    ConnectionStatus,
    ErrorMonitor,
    MetricsStore,
    RequestHistory,
    StreamSource,
    SystemHealth,
    Watch,
)

__all__ = [
    "AggregateStats",
    "ConnectionStatus",
    "ErrorMonitor",
    "MetricsStore",
    "RealtimeMetricsState",
    "RequestHistory",
    "StateReducer",
    "StreamSource",
    "SystemHealth",
    "Watch",
]
