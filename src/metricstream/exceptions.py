"""Every exception metricstream raises on purpose.

The hierarchy, so that callers can catch as broadly or narrowly as they need::

    MetricStreamError
    ├── ProtocolError          a frame that is not a valid message (bad JSON,
    │                          wrong field type, missing field, ...)
    ├── ConfigError            an invalid configuration value (also a ValueError)
    ├── QueueFullError         send() with a full offline queue and the
    │                          ``raise`` overflow policy
    └── ConnectionRejectedError
                               the server refused us for good (bad token, bad
                               origin): retrying cannot help

Lower-layer errors (msgspec, websockets, OS errors) are translated at the
boundary and chained with ``raise ... from``, so the original stays visible in a
traceback without leaking into the public contract.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionRejectedError",
    "MetricStreamError",
    "ProtocolError",
    "QueueFullError",
]


class MetricStreamError(Exception):
    """Base class of every error raised by metricstream."""


class ProtocolError(MetricStreamError):
    """A frame could not be decoded into a valid message.

    The message says what was wrong (``"invalid metrics_update message:
    Expected `int`, got `str` - at `$.data.total_requests`"``) and never
    contains more of the frame than needed to find the fault.
    """


class ConfigError(MetricStreamError, ValueError):
    """A configuration value is invalid; raised when the config is built."""


class QueueFullError(MetricStreamError):
    """The offline send queue is full and its overflow policy is ``raise``."""


class ConnectionRejectedError(MetricStreamError):
    """The server rejected the connection for good (auth or origin).

    ``code`` is the WebSocket close code (4001, 1008) or the HTTP status of a
    rejected handshake (401, 403).
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
