"""metricstream: real-time LLM-serving metrics over WebSocket.

The core (this package, :mod:`metricstream.protocol`) needs only ``msgspec``;
the client needs ``websockets``; the server, collector and dashboards come
with the ``server`` and ``tui`` extras.
"""

from .exceptions import (
    ConfigError,
    ConnectionRejectedError,
    MetricStreamError,
    ProtocolError,
    QueueFullError,
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

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "ConfigError",
    "ConnectionRejectedError",
    "CostUpdatePayload",
    "ErrorPayload",
    "ErrorUpdatePayload",
    "HeartbeatPayload",
    "InitPayload",
    "KVCacheUpdatePayload",
    "MessageType",
    "MetricStreamError",
    "MetricsUpdatePayload",
    "ModelUpdatePayload",
    "PongPayload",
    "ProtocolError",
    "QueueFullError",
    "RateLimitUpdatePayload",
    "RequestUpdatePayload",
    "SequenceTracker",
    "SubscribePayload",
    "SystemUpdatePayload",
    "WebSocketMessage",
    "__version__",
    "decode",
    "encode",
]
