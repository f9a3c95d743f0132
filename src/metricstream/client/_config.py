"""Client configuration: one validated, immutable object.

Durations are seconds (floats), unlike the seed's milliseconds: that is what
every asyncio API takes. The defaults follow the seed where the seed was right
and depart from it where its users were bitten (see ``docs/client.md``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from urllib.parse import urlsplit

from ..exceptions import ConfigError
from ..protocol import Backoff

__all__ = ["WebSocketConfig", "Dialect", "OverflowPolicy"]


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
    RAISE = "raise"
    """Raise :class:`~metricstream.exceptions.QueueFullError`; nothing is dropped."""


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")


def _names(name: str, value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(f"{name} must be a sequence of strings, not one string: {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str) or not item or "," in item:
            raise ConfigError(f"{name} entries must be non-empty strings without ',': {item!r}")
    return items


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class WebSocketConfig:
    """Everything a :class:`WebSocketService` needs to know, validated on construction.

    Invalid values raise :class:`~metricstream.exceptions.ConfigError` at once,
    never later on a reconnect.
    """

    url: str
    """``ws://`` or ``wss://`` URL of the stream, e.g. ``ws://127.0.0.1:8765/metrics/stream``."""
    dialect: Dialect = Dialect.AUTO
    """Server protocol; ``auto`` decides from each connection's first frame."""
    token: str | None = None
    """Auth token, sent as ``Authorization: Bearer`` (or in the URL, see ``token_in_query``)."""
    token_in_query: bool = False
    """Send the token as the ``token`` query parameter instead of a header."""
    types: tuple[str, ...] | None = None
    """Initial server-side filter: message types wanted (``None``: all)."""
    models: tuple[str, ...] | None = None
    """Initial server-side filter: models wanted (``None``: all)."""
    batch: bool = False
    """Ask the server to coalesce messages into JSON-array frames (``batch=1``)."""
    resume: bool = True
    """Reconnect with ``since``/``epoch`` so the server replays what was missed."""
    reconnect: bool = True
    """Reconnect after a lost connection at all."""
    reconnect_interval: float = 1.0
    """First reconnect delay (the seed's ``reconnectInterval``)."""
    max_reconnect_interval: float = 30.0
    """Ceiling of the reconnect delay (the seed's ``maxReconnectInterval``)."""
    reconnect_decay: float = 1.5
    """Growth factor of the delay (the seed's ``reconnectDecay``)."""
    reconnect_jitter: float = 0.5
    """Each delay is scaled by a random factor in ``[1 - jitter, 1]``."""
    max_reconnect_attempts: int | None = None
    """Give up after this many failed attempts in a row (``None``: never)."""
    heartbeat_interval: float = 10.0
    """Seconds between the client's heartbeats."""
    heartbeat_timeout: float = 5.0
    """Seconds of silence after a heartbeat before the connection is abandoned."""
    open_timeout: float = 10.0
    """Seconds allowed for the TCP connect and WebSocket handshake."""
    close_timeout: float = 2.0
    """Seconds allowed for the closing handshake of a client-initiated close."""
    max_frame_size: int = 8 * 1024 * 1024
    """Largest inbound frame, in bytes; a bigger one closes the connection with 1009."""
    offline_queue_size: int = 100
    """How many outbound messages are kept while disconnected (the seed's 100)."""
    overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    """What ``send()`` does when the offline queue is full."""
    message_queue_size: int = 1024
    """Capacity of each :meth:`WebSocketService.messages` iterator's buffer."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ConfigError(f"url must be a ws:// or wss:// URL with a host, got {self.url!r}")
        try:
            object.__setattr__(self, "dialect", Dialect(self.dialect))
            object.__setattr__(self, "overflow", OverflowPolicy(self.overflow))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.token is not None and (not self.token or any(c in self.token for c in "\r\n")):
            raise ConfigError("token must be a non-empty string without line breaks")
        object.__setattr__(self, "types", _names("types", self.types))
        object.__setattr__(self, "models", _names("models", self.models))
        for name in (
            "reconnect_interval",
            "max_reconnect_interval",
            "heartbeat_interval",
            "heartbeat_timeout",
            "open_timeout",
            "close_timeout",
        ):
            _positive(name, getattr(self, name))
        for name in ("max_frame_size", "offline_queue_size", "message_queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        # Backoff validates the reconnect numbers with the same rules it runs by.
        self.make_backoff()

    def make_backoff(self) -> Backoff:
        """A fresh :class:`~metricstream.protocol.Backoff` with these reconnect settings."""
        return Backoff(
            self.reconnect_interval,
            self.reconnect_decay,
            self.max_reconnect_interval,
            max_attempts=self.max_reconnect_attempts,
            jitter=self.reconnect_jitter,
        )

    def replace(self, **changes: object) -> WebSocketConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
