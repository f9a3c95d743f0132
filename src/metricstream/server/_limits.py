"""Limits against a hostile network: the pieces that need no particular server.

The endpoint applies these itself, on any ASGI server: :class:`AuthThrottle`
(failed tokens per client address), :func:`message_cost` (a ``subscribe``
costs more than a ``ping``), :func:`refusing` with :class:`RefusedHandshakeLog`
(a handshake accepted only to be closed is not logged as accepted),
:class:`BufferWatchdog` (a client leaving more than :func:`unread_bound`
unread is cut) and :class:`RateLimitedLog` (one INFO line per event, a flood
summarised). Under ``metricstream serve`` those lines reach stderr, tokens
hidden, through the command line's logging set-up (``metricstream._logging``).

The bounds that live below the ASGI application (request line, headers,
handshake time, control frames, closes) are subclasses of uvicorn's own
protocol classes, in ``_guarded``; :func:`guarded_uvicorn_options` installs
them, importing that module only when called, so that importing the server
package never depends on uvicorn's internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Final

from ._hub import MetricsHub
from ._settings import ServerSettings

__all__ = [
    "SUBSCRIBE_COST",
    "AuthThrottle",
    "BufferWatchdog",
    "RateLimitedLog",
    "RefusedHandshakeLog",
    "guarded_uvicorn_options",
    "message_cost",
    "refusing",
    "unread_bound",
]

logger = logging.getLogger("metricstream.server")

#: Message tokens a ``subscribe`` / ``unsubscribe`` costs: each one rebuilds
#: the connection's filter and answers with the whole filter, so a client may
#: send several pings for the price of one.
SUBSCRIBE_COST: Final = 5

# How often a limit that fires per socket (handshake timeouts, oversized
# requests) is logged for one address: once per event, but a flood of them
# from one address is summarised instead of printed line by line.
_LOG_EVERY: Final = 10.0


def message_cost(payload: str | bytes) -> int:
    """Message tokens ``payload`` costs: a ``subscribe`` costs :data:`SUBSCRIBE_COST`.

    A substring test, not a decode: it runs before the message is parsed,
    and a false positive only charges an honest client a little more.
    """
    if isinstance(payload, str):
        return SUBSCRIBE_COST if "subscribe" in payload else 1
    return SUBSCRIBE_COST if b"subscribe" in payload else 1


# The close code of the refusal the current task is accepting a handshake
# for, while it does: uvicorn logs the accept synchronously inside ``send``,
# in the endpoint's own task, so the log filter sees this.
_refusing: ContextVar[int | None] = ContextVar("metricstream_refusing", default=None)

# What the WebSocket servers log when a handshake is accepted: uvicorn's
# access line (``'%s - "WebSocket %s" [accepted]'``, every implementation)
# and the ``websockets`` library's own line, through uvicorn's logger.
_ACCEPTED_SUFFIX: Final = "[accepted]"
_CONNECTION_OPEN: Final = "connection open"


@contextlib.contextmanager
def refusing(code: int) -> Iterator[None]:
    """Mark the handshake accepted in this block as one about to be closed with ``code``.

    A refusal that must reach a browser as a close code (4001, 4029, 1008,
    1001) is accepted first; :class:`RefusedHandshakeLog` then logs it as
    refused instead of accepted.
    """
    token = _refusing.set(code)
    try:
        yield
    finally:
        _refusing.reset(token)


class RefusedHandshakeLog(logging.Filter):
    """On the WebSocket server's logger: a refused handshake is not logged as accepted.

    uvicorn logs ``"WebSocket /path" [accepted]`` (and ``websockets``
    ``connection open``) for every handshake the application accepts, and
    the endpoint accepts a refused one too, to close it with a code a
    browser can see. Inside :func:`refusing` the access line reads
    ``[refused <code>]`` instead and ``connection open`` is dropped, so an
    operator reading the log does not see a refused client let in.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        code = _refusing.get()
        if code is None or not isinstance(record.msg, str):
            return True
        if record.msg.endswith(_ACCEPTED_SUFFIX):
            record.msg = record.msg[: -len(_ACCEPTED_SUFFIX)] + "[refused %d]"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), code)
            return True
        return record.msg != _CONNECTION_OPEN

    @classmethod
    def install(cls, logger_name: str = "uvicorn.error") -> None:
        """Add this filter to ``logger_name`` (uvicorn's), once however often called."""
        target = logging.getLogger(logger_name)
        if not any(isinstance(f, cls) for f in target.filters):
            target.addFilter(cls())


def unread_bound(hub: MetricsHub) -> int:
    """Bytes a connection's transport may hold before the client counts as
    not reading at all: twice the hub's per-client bound.

    The hub bounds what it queues and writes (outbox and transport buffer
    together) and evicts past that with 4008; what else lands in the
    transport buffer is the pongs the WebSocket layer owes. Twice the bound
    leaves every ordinary backlog to the hub's eviction and still caps a
    PING flood's pongs at a few hundred KiB.
    """
    return 2 * hub.max_buffer_bytes


class BufferWatchdog:
    """Cuts connections whose transport holds more than :func:`unread_bound`.

    On a server without the guarded protocols (the stream embedded in an
    app on plain uvicorn) PINGs are answered below the application, and the
    pongs a client never reads pile up in the transport unseen by the hub.
    One timer per endpoint looks at every connection's transport twice a
    second while there are any; a connection's entry goes when its transport
    has closed.
    """

    def __init__(self, hub: MetricsHub, interval: float = 0.5) -> None:
        self._hub = hub
        self._interval = interval
        self._watched: dict[Any, str] = {}
        # A timer rather than a task: nothing is left pending when the
        # loop stops.
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, transport: Any, peer: str) -> None:
        """Watch ``transport`` (from ``peer``) until it has closed."""
        self._watched[transport] = peer
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)

    def __len__(self) -> int:
        return len(self._watched)

    def _sweep(self) -> None:
        self._timer = None
        bound = unread_bound(self._hub)
        for transport, peer in list(self._watched.items()):
            size = transport.get_write_buffer_size()
            if size > bound:
                del self._watched[transport]
                self._hub.stats.reject("control_flood")
                logger.info(
                    "cut a connection from %s: %d bytes left unread (bound %d)", peer, size, bound
                )
                transport.abort()
            elif transport.is_closing() and size == 0:
                del self._watched[transport]
        if self._watched:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._sweep)


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


class AuthThrottle:
    """Failed token checks per client address, as a token bucket each.

    An address that used up ``auth_failure_burst`` failures is refused
    (without the token being checked) until the bucket refills at
    ``auth_failure_rate`` per second. At most ``max_addresses`` addresses are
    remembered (the least recently failing are forgotten first), so an
    attacker rotating addresses cannot grow this without bound.
    """

    def __init__(self, burst: int, rate: float, *, max_addresses: int = 10_000) -> None:
        self._burst = float(burst)
        self._rate = rate
        self._max = max_addresses
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _refill(self, address: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.last) * self._rate)
        bucket.last = now
        if bucket.tokens >= self._burst:
            del self._buckets[address]
            return None
        return bucket

    def blocked(self, address: str) -> bool:
        """Whether ``address`` has no failed attempt left just now."""
        bucket = self._refill(address, time.monotonic())
        return bucket is not None and bucket.tokens < 1.0

    def failed(self, address: str) -> bool:
        """Record a failed check; ``True`` when this failure used the last attempt."""
        now = time.monotonic()
        bucket = self._refill(address, now)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(self._burst, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
        bucket.tokens -= 1.0
        return bucket.tokens < 1.0

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitedLog:
    """One INFO line per event, but at most one per ``every`` seconds per
    kind, the rest counted and said in the next line: a flood of
    handshake timeouts must not become a flood of log lines."""

    def __init__(self, every: float = _LOG_EVERY) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def info(self, kind: str, message: str, *args: object) -> None:
        """Log ``message % args`` at INFO, unless ``kind`` was logged just now."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._every:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += " (and %d more like it since the last such line)"
            args = (*args, skipped)
        logger.info(message, *args)


def guarded_uvicorn_options(hub: MetricsHub, settings: ServerSettings) -> dict[str, Any]:
    """``uvicorn.Config`` options installing the guarded protocols for ``hub``.

    Pass them to :func:`uvicorn_config` (``metricstream serve`` does) or to
    ``uvicorn.Config`` / ``uvicorn.run`` for an app that embeds the stream:
    ``uvicorn.run(app, **guarded_uvicorn_options(hub, settings))``. They
    select httptools and the sans-I/O ``websockets`` implementation (the
    classes they extend); ``ConfigError`` when the installed uvicorn is
    older than the one they are built against.
    """
    # Imported here: the subclasses rely on uvicorn internals, which only
    # this call needs.
    from ._guarded import options

    return options(hub, settings)
