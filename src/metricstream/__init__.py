"""metricstream: real-time LLM-serving metrics over WebSocket.

The core (this package, :mod:`metricstream.protocol`) needs only ``msgspec``;
the client needs ``websockets``; the server, collector and dashboards come
with the ``server`` and ``tui`` extras.

The client's names are exported here too, but imported only when first used,
so that ``import metricstream`` (and the pure protocol) never loads asyncio or
a network library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    ClientClosedError,
    ConfigError,
    ConnectionRejectedError,
    InvalidFilterError,
    InvalidMetricError,
    MetricStreamError,
    ProtocolError,
    PublishError,
    QueueFullError,
    StreamConnectionError,
)
from .protocol import (
    Backoff,
    CostUpdatePayload,
    ErrorPayload,
    ErrorUpdatePayload,
    HeartbeatPayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    PongPayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SequenceTracker,
    SubscribePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    decode,
    encode,
)

if TYPE_CHECKING:
    from .client import (
        ConnectionInfo,
        ConnectionState,
        EventHandlers,
        Subscription,
        WebSocketConfig,
        WebSocketService,
        create_websocket_service,
    )
    from .store import MetricsStore

from ._version import __version__

# Name -> module, for the names imported on first use.
_LAZY = {
    "ConnectionInfo": ".client",
    "ConnectionState": ".client",
    "EventHandlers": ".client",
    "Subscription": ".client",
    "WebSocketConfig": ".client",
    "WebSocketService": ".client",
    "create_websocket_service": ".client",
    "MetricsStore": ".store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metricstream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Backoff",
    "ClientClosedError",
    "ConfigError",
    "ConnectionInfo",
    "ConnectionRejectedError",
    "ConnectionState",
    "CostUpdatePayload",
    "ErrorPayload",
    "ErrorUpdatePayload",
    "EventHandlers",
    "HeartbeatPayload",
    "InitPayload",
    "InvalidFilterError",
    "InvalidMetricError",
    "KVCacheUpdatePayload",
    "MessageType",
    "MetricStreamError",
    "MetricsStore",
    "MetricsUpdatePayload",
    "ModelUpdatePayload",
    "PongPayload",
    "ProtocolError",
    "PublishError",
    "QueueFullError",
    "RateLimitUpdatePayload",
    "RequestUpdatePayload",
    "SequenceTracker",
    "StreamConnectionError",
    "SubscribePayload",
    "Subscription",
    "SystemUpdatePayload",
    "WebSocketConfig",
    "WebSocketMessage",
    "WebSocketService",
    "__version__",
    "create_websocket_service",
    "decode",
    "encode",
]
