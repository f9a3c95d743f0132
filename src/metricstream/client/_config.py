"""Client configuration: one validated, immutable object.

Durations are seconds (floats), unlike the seed's milliseconds: that is what
every asyncio API takes. The defaults follow the seed where the seed was right
and depart from it where its users were bitten (see ``docs/client.md``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import ssl as _ssl
import types as _types
from collections.abc import Iterable, Mapping, Sequence
from typing import Final
from urllib.parse import urlsplit

from .._redact import redact_url as redact_url  # re-exported: the client masks its URL with it
from ..exceptions import ConfigError
from ..protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_RECONNECT_INTERVAL,
    DEFAULT_OFFLINE_QUEUE_SIZE,
    DEFAULT_RECONNECT_DECAY,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_JITTER,
    Backoff,
    ClientSession,
)
from ..protocol.session import LogSink
from ._fakeai import FakeAIDialect

__all__ = ["WebSocketConfig", "Dialect", "OverflowPolicy", "as_config", "make_session"]


class Dialect(enum.StrEnum):
    """Which server protocol the client speaks."""

    NATIVE = "native"
    """metricstream's own protocol (``docs/protocol.md``)."""
    FAKEAI = "fakeai"
    """The FakeAI server's ``/metrics/stream``, adapted into the seed's types."""
    AUTO = "auto"
    """Decided by the first frame of each connection: ``init`` or ``historical_data``."""


class OverflowPolicy(enum.StrEnum):
    """What :meth:`WebSocketService.send` does when the offline queue is full."""

    DROP_OLDEST = "drop_oldest"
    """Make room by dropping the oldest queued message (logged and counted)."""
    DROP_NEWEST = "drop_newest"
    """Drop the message being sent, keep the queue as it is (logged and counted)."""
    RAISE = "raise"
    """Raise :class:`~metricstream.exceptions.QueueFullError`; nothing is dropped."""


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")


def _names(name: str, value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a sequence of strings, not one string: {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or "," in item:
            raise ConfigError(f"{name} entries must be non-empty strings without ',': {item!r}")
    return items


def _protocols(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        # RFC 6455: a subprotocol is an HTTP token (no separators, no spaces).
        if (
            not isinstance(item, str)
            or not item
            or any(c in _TOKEN_SEPARATORS or not c.isprintable() or ord(c) > 126 for c in item)
        ):
            raise ConfigError(f"protocols entries must be HTTP tokens, got {item!r}")
    if not items:
        raise ConfigError("protocols must name at least one subprotocol (or be None)")
    return items


_TOKEN_SEPARATORS: Final = frozenset('()<>@,;:\\"/[]?={} \t')
# Headers the WebSocket handshake itself sets: overriding one breaks it.
_RESERVED_HEADERS: Final = frozenset(
    {
        "host",
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


def _headers(
    value: Mapping[str, str] | Iterable[tuple[str, str]] | None, token: str | None
) -> Mapping[str, str]:
    if value is None:
        return _types.MappingProxyType({})
    pairs = list(value.items()) if isinstance(value, Mapping) else list(value)
    checked: dict[str, str] = {}
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ConfigError(f"headers must map names to values, got {pair!r}")
        name, text = pair
        if (
            not isinstance(name, str)
            or not name
            or any(c in _TOKEN_SEPARATORS or not c.isprintable() or ord(c) > 126 for c in name)
        ):
            raise ConfigError(f"invalid header name {name!r}")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ConfigError(f"header {name} must be a string without line breaks")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"header {name} is set by the WebSocket handshake itself")
        if name.lower() == "authorization" and token is not None:
            raise ConfigError("give either token or an Authorization header, not both")
        checked[name] = text
    return _types.MappingProxyType(checked)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True, repr=False)
class WebSocketConfig:
    """Everything a :class:`WebSocketService` needs to know, validated on construction.

    Invalid values raise :class:`~metricstream.exceptions.ConfigError` at once,
    never later on a reconnect. The repr never shows the token or header values.
    """

    url: str
    """``ws://`` or ``wss://`` URL of the stream, e.g. ``ws://127.0.0.1:8765/metrics/stream``."""
    urls: Sequence[str] = ()
    """Further servers of the same stream (nodes sharing it through Redis), tried
    in turn after ``url`` when a connection is lost or cannot be opened; the
    client resumes on whichever answers (see :attr:`endpoints`)."""
    reconnect_interval: float = DEFAULT_RECONNECT_INTERVAL
    """First reconnect delay (the seed's ``reconnectInterval``)."""
    max_reconnect_interval: float = DEFAULT_MAX_RECONNECT_INTERVAL
    """Ceiling of the reconnect delay (the seed's ``maxReconnectInterval``)."""
    reconnect_decay: float = DEFAULT_RECONNECT_DECAY
    """Growth factor of the delay (the seed's ``reconnectDecay``)."""
    max_reconnect_attempts: int | None = None
    """Give up after this many failed attempts in a row (``None``: never)."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    """Seconds between the client's heartbeats (the seed's ``heartbeatInterval``)."""
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    """Seconds of silence after a heartbeat before the connection is abandoned."""
    debug: bool = False
    """Log raw frames of malformed or unknown messages and every lifecycle step at DEBUG."""
    protocols: str | Sequence[str] | None = None
    """WebSocket subprotocols offered in the handshake (``Sec-WebSocket-Protocol``)."""
    auto_connect: bool = True
    """Connect on entering ``async with`` (and in :func:`create_websocket_service`)."""
    jitter: float = DEFAULT_RECONNECT_JITTER
    """Each reconnect delay is scaled by a random factor in ``[1 - jitter, 1]``."""
    max_queue_size: int = DEFAULT_OFFLINE_QUEUE_SIZE
    """How many outbound messages are kept while disconnected (the seed's 100)."""
    queue_overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    """What ``send()`` does when the offline queue is full."""
    resume: bool = True
    """Reconnect with ``since``/``epoch`` so the server replays what was missed."""
    dialect: Dialect = Dialect.AUTO
    """Server protocol: ``native``, ``fakeai``, or ``auto`` (the default: decided by each
    connection's first frame)."""
    headers: Mapping[str, str] | None = dataclasses.field(default=None, hash=False)
    """Extra handshake headers (a read-only mapping after construction)."""
    token: str | None = None
    """Auth token, sent as ``Authorization: Bearer`` (or in the URL, see ``token_in_query``)."""
    token_in_query: bool = False
    """Send the token as the ``token`` query parameter instead of a header."""
    open_timeout: float = 10.0
    """Seconds allowed for the TCP connect and WebSocket handshake."""
    max_message_size: int = 8 * 1024 * 1024
    """Largest inbound frame, in bytes; a bigger one is skipped (over 4 times: 1009, reconnect)."""
    ssl: _ssl.SSLContext | None = None
    """TLS settings for ``wss://`` (``None``: the system's default verification)."""
    types: tuple[str, ...] | None = None
    """Initial server-side filter: message types wanted (``None``: all)."""
    models: tuple[str, ...] | None = None
    """Initial server-side filter: models wanted (``None``: all)."""
    batch: bool = False
    """Ask the server to coalesce messages into JSON-array frames (``batch=1``)."""
    reconnect: bool = True
    """Reconnect after a lost connection at all."""
    close_timeout: float = 2.0
    """Seconds allowed for the closing handshake of a client-initiated close."""
    message_queue_size: int = 1024
    """Capacity of each :meth:`WebSocketService.messages` iterator's buffer."""

    def __post_init__(self) -> None:
        urls: object = self.urls
        if isinstance(urls, str) or not isinstance(urls, Sequence):
            raise ConfigError(f"urls must be a sequence of URLs, got {urls!r}")
        object.__setattr__(self, "urls", tuple(urls))
        if self.ssl is not None and not isinstance(self.ssl, _ssl.SSLContext):
            raise ConfigError(f"ssl must be an ssl.SSLContext or None, got {self.ssl!r}")
        for url in (self.url, *self.urls):
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
                raise ConfigError(f"url must be a ws:// or wss:// URL with a host, got {url!r}")
            if self.ssl is not None and parts.scheme != "wss":
                raise ConfigError("ssl is only used with a wss:// url")
        try:
            object.__setattr__(self, "dialect", Dialect(self.dialect))
            object.__setattr__(self, "queue_overflow", OverflowPolicy(self.queue_overflow))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.token is not None and (
            not isinstance(self.token, str)
            or not self.token
            or any(c in self.token for c in "\r\n")
        ):
            raise ConfigError("token must be a non-empty string without line breaks")
        for name in ("debug", "auto_connect", "resume", "batch", "reconnect", "token_in_query"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        object.__setattr__(self, "types", _names("types", self.types))
        object.__setattr__(self, "models", _names("models", self.models))
        object.__setattr__(self, "protocols", _protocols(self.protocols))
        object.__setattr__(self, "headers", _headers(self.headers, self.token))
        for name in (
            "reconnect_interval",
            "max_reconnect_interval",
            "heartbeat_interval",
            "heartbeat_timeout",
            "open_timeout",
            "close_timeout",
        ):
            _positive(name, getattr(self, name))
        for name in ("max_message_size", "max_queue_size", "message_queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        # Backoff validates the reconnect numbers with the same rules it runs by.
        self.make_backoff()

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every server URL of the stream, in failover order: ``url``, then ``urls``."""
        return (self.url, *self.urls)

    def __repr__(self) -> str:
        shown = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "url":
                text = repr(redact_url(value))
            elif field.name == "urls":
                text = repr(tuple(redact_url(u) for u in value))
            elif field.name == "token" and value is not None:
                text = "'***'"
            elif field.name == "headers":
                # Header values may be credentials too: only the names are shown.
                text = repr(dict.fromkeys(value, "***")) if value else "None"
            elif isinstance(value, enum.Enum):
                text = repr(value.value)
            else:
                text = repr(value)
            # Defaults are left out: the repr shows what this config changes.
            if field.name == "headers" and not value:
                continue
            if field.default is not dataclasses.MISSING and value == field.default:
                continue
            shown.append(f"{field.name}={text}")
        return f"WebSocketConfig({', '.join(shown)})"

    def make_backoff(self) -> Backoff:
        """A fresh :class:`~metricstream.protocol.Backoff` with these reconnect settings."""
        return Backoff(
            self.reconnect_interval,
            self.reconnect_decay,
            self.max_reconnect_interval,
            max_attempts=self.max_reconnect_attempts,
            jitter=self.jitter,
        )

    def replace(self, **changes: object) -> WebSocketConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def as_config(config: WebSocketConfig | str) -> WebSocketConfig:
    """``config`` itself, or the default config of the stream at URL ``config``."""
    return config if isinstance(config, WebSocketConfig) else WebSocketConfig(url=config)


def make_session(config: WebSocketConfig, log: LogSink) -> ClientSession:
    """The protocol session a client with ``config`` feeds (FakeAI its foreign dialect)."""
    return ClientSession(
        backoff=config.make_backoff(),
        resume=config.resume,
        reconnect=config.reconnect,
        batch=config.batch,
        token=config.token if config.token_in_query else None,
        types=config.types,
        models=config.models,
        dialect=config.dialect.value,
        foreign=FakeAIDialect(),
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        max_message_size=config.max_message_size,
        debug=config.debug,
        log=log,
        endpoints=len(config.endpoints),
    )
