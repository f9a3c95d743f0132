"""Every exception metricstream raises on purpose.

The hierarchy, so that callers can catch as broadly or narrowly as they need
(``tests/test_public_api.py`` checks this drawing against the classes)::

    MetricStreamError
    ├── ProtocolError               a frame that is not a valid message (bad JSON,
    │   │                           wrong field type, missing field, ...)
    │   └── InvalidFilterError      a filter naming a type that is not a stream
    │                               type, or past the server's bounds (also a
    │                               ValueError)
    ├── ConfigError                 an invalid configuration value (also a ValueError)
    ├── PublishError                a message the hub cannot publish: not a stream
    │                               type, an invalid payload, too big (also a
    │                               ValueError)
    ├── InvalidMetricError          a value recorded into the collector is invalid
    │                               (also a ValueError)
    ├── QueueFullError              send() with a full offline queue and the
    │                               ``raise`` overflow policy
    ├── ClientClosedError           a client used after close() (also a RuntimeError)
    └── StreamConnectionError       the stream cannot be reached, or the client
        │                           stopped while waited on (also a ConnectionError)
        └── ConnectionRejectedError the server refused us for good (bad token, bad
                                    origin): retrying cannot help

Each "also a ..." base keeps code written against the built-in exception
working. Lower-layer errors (msgspec, websockets, OS errors) are translated at
the boundary and chained with ``raise ... from``, so the original stays
visible in a traceback without leaking into the public contract.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "ClientClosedError",
    "ConfigError",
    "ConnectionRejectedError",
    "InvalidFilterError",
    "InvalidMetricError",
    "MetricStreamError",
    "ProtocolError",
    "PublishError",
    "QueueFullError",
    "StreamConnectionError",
]


class MetricStreamError(Exception):
    """Base class of every error raised by metricstream."""


class ProtocolError(MetricStreamError):
    """A frame could not be decoded into a valid message.

    The message says what was wrong (``"invalid metrics_update message:
    Expected `int`, got `str` - at `$.data.total_requests`"``) and never
    contains more of the frame than needed to find the fault.
    """


class InvalidFilterError(ProtocolError, ValueError):
    """A filter (``subscribe`` payload, ``types`` query parameter) is invalid.

    The server answers it with an ``invalid_filter`` error and keeps the
    filter the connection had. ``bound`` says which of the server's bounds
    the filter is past (``"entries"``: too many names in one dimension;
    ``"chars"``: too many characters of names in all), or is ``None`` when
    the names themselves are wrong (not stream types, not strings): a query
    filter past a bound also closes the connection (1008), one with wrong
    names does not.
    """

    def __init__(self, message: str, *, bound: Literal["entries", "chars"] | None = None) -> None:
        super().__init__(message)
        self.bound: Literal["entries", "chars"] | None = bound


class ConfigError(MetricStreamError, ValueError):
    """A configuration value is invalid; raised when the config is built."""


class PublishError(MetricStreamError, ValueError):
    """The hub refused to publish a message; nothing changed.

    The type is not a stream type, the payload does not fit its type (ranges,
    NaN, missing fields) or the message exceeds the per-client buffer bound.
    """


class InvalidMetricError(MetricStreamError, ValueError):
    """A recorded value is invalid (negative tokens, NaN latency, unknown status...).

    Raised in the caller's thread, before anything is recorded, so a bad value
    never reaches the aggregates or the stream. It is a :class:`ValueError`, so
    code that already guards against bad numbers catches it unchanged.
    """


class QueueFullError(MetricStreamError):
    """The offline send queue is full and its overflow policy is ``raise``."""


class ClientClosedError(MetricStreamError, RuntimeError):
    """The client was closed for good and cannot be used (connected) again."""


class StreamConnectionError(MetricStreamError, ConnectionError):
    """The stream could not be reached, or the client stopped while waited on.

    Handed to ``on_error`` for a failed connection attempt (refused, timed
    out, TLS failure); raised by ``wait_connected()`` and ``run()`` when the
    client gave up (out of reconnect attempts) or was closed meanwhile. The
    message says why.
    """


class ConnectionRejectedError(StreamConnectionError):
    """The server rejected the connection for good (auth or origin).

    ``code`` is the WebSocket close code (4001, 1008) or the HTTP status of a
    rejected handshake (401, 403).
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
