"""uvicorn's protocols with the bounds a server reachable by anyone needs.

``metricstream serve`` runs on uvicorn with httptools and the sans-I/O
``websockets`` implementation. Neither sets these bounds: httptools buffers a
request line or headers of any size for as long as the peer likes, and the
WebSocket protocol answers every PING even when the peer reads nothing.
They are added here as small subclasses of uvicorn's own protocol classes,
so the fan-out path (which writes straight to uvicorn's transport) is
untouched:

- :class:`GuardedHttpProtocol` bounds the request line (414) and headers
  (431), answers and closes a socket that has not finished its request
  within ``handshake_timeout`` (408), counts sockets that have not finished
  their handshake toward ``max_connections`` (503), and keeps
  ``fd_reserve`` file descriptors free below the process limit by closing
  the oldest unfinished handshake;
- :class:`GuardedWebSocketProtocol` charges PINGs to the inbound rate and
  the pongs it owes to the client's unread bound, aborts a connection whose
  close does not complete within ``close_timeout``, closes a client that
  misses a keepalive pong with 4008 (slow consumer), and answers invalid
  UTF-8 with 1007 without a traceback.

:class:`ConnectionGuard` is the state they share (one per server);
:func:`options` builds the ``uvicorn.Config`` options installing them (see
``_limits.guarded_uvicorn_options``). The subclasses use uvicorn's
protocol internals, hence :data:`MIN_UVICORN`.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from typing import Any, ClassVar, Final

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from ..exceptions import ConfigError
from ..protocol import CloseCode
from ._hub import MetricsHub
from ._limits import RateLimitedLog, unread_bound
from ._settings import ServerSettings

__all__ = [
    "MIN_UVICORN",
    "ConnectionGuard",
    "GuardedHttpProtocol",
    "GuardedWebSocketProtocol",
    "options",
]

logger = logging.getLogger("metricstream.server")

#: The uvicorn release these subclasses are built and tested against: they
#: override methods and read attributes of its protocol classes.
MIN_UVICORN: Final = (0, 54)

# Seconds a refused socket is given to read its answer: the socket is shut
# for writing at once and whatever the peer still sends is discarded, so it
# gets the response instead of a reset (what nginx calls a lingering close).
_LINGER: Final = 2.0


class ConnectionGuard:
    """What the guarded protocols of one server share: settings, counters,
    the sockets that have not finished their handshake.

    Counts go to the hub's ``rejections`` (``/metrics``:
    ``metricstream_connections_rejected{reason=...}``).
    """

    def __init__(self, hub: MetricsHub, settings: ServerSettings) -> None:
        self.hub = hub
        self.settings = settings
        #: Sockets still in HTTP (no request finished, or idle keep-alive),
        #: oldest first.
        self.pending: OrderedDict[GuardedHttpProtocol, None] = OrderedDict()
        #: Every socket the guarded protocols hold open now.
        self.sockets = 0
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # Unlimited or huge: the bound never binds.
        self.fd_cap = soft - settings.fd_reserve if 0 < soft < 1 << 30 else None
        self._at_fd_cap = False
        self.log = RateLimitedLog()

    def count(self, reason: str) -> None:
        """Count one limit hit in ``/metrics``."""
        self.hub.stats.reject(reason)

    def admit(self, proto: GuardedHttpProtocol) -> bool:
        """Decide on a new socket: ``False`` when it must be refused."""
        self.sockets += 1
        cap = self.fd_cap
        if cap is not None and self._fds_in_use() >= cap:
            if not self._at_fd_cap:
                self._at_fd_cap = True
                logger.warning(
                    "open sockets reached the file-descriptor limit (%d, %d kept free): "
                    "closing the oldest unfinished handshakes to keep serving",
                    cap + self.settings.fd_reserve,
                    self.settings.fd_reserve,
                )
            if self.pending:
                # The oldest socket still inside its request head, else the
                # oldest HTTP socket at all.
                oldest = next(
                    (p for p in self.pending if p.in_request_head), next(iter(self.pending))
                )
                self.count("fd_limit")
                oldest.cut("file-descriptor limit")
            else:
                self.count("fd_limit")
                return False
        elif self._at_fd_cap and cap is not None and self._fds_in_use() < cap * 0.9:
            self._at_fd_cap = False
            logger.info("open sockets back below the file-descriptor limit")
        if len(self.pending) + self.hub.connection_count >= self.settings.max_connections:
            self.count("capacity")
            self.log.info(
                "capacity",
                "refused a connection from %s: %d connections and unfinished handshakes "
                "(max_connections %d)",
                proto.peer,
                len(self.pending) + self.hub.connection_count,
                self.settings.max_connections,
            )
            return False
        self.pending[proto] = None
        return True

    def _fds_in_use(self) -> int:
        # Sockets are the descriptors that grow with load; a fixed allowance
        # covers the listening socket, the loop's own and the process's files.
        return self.sockets + 16

    def done(self, proto: GuardedHttpProtocol) -> None:
        """``proto`` upgraded to WebSocket or closed: no longer pending."""
        self.pending.pop(proto, None)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request bounds and a handshake timeout.

    A subclass per server binds :attr:`guard` (see
    :func:`guarded_uvicorn_options`).
    """

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._url_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False
        self._counted = False
        self.peer = "?"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else "?"
        self._counted = True
        if not self.guard.admit(self):
            self._refuse(503, "capacity", "too many connections")
            return
        self._arm()

    @property
    def in_request_head(self) -> bool:
        """Whether the socket is still sending its request line and headers."""
        return self._deadline is not None

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(
            self.guard.settings.handshake_timeout, self._handshake_timed_out
        )

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self._refused or self.transport.is_closing():
            return
        # An idle keep-alive socket between requests is uvicorn's business
        # (``timeout_keep_alive``); this fires only inside a request.
        self.guard.count("handshake_timeout")
        self.guard.log.info(
            "handshake_timeout",
            "closed a connection from %s: request not complete within %gs",
            self.peer,
            self.guard.settings.handshake_timeout,
        )
        self._refuse(408, "", "request not complete in time")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self.guard.done(self)
        if self._counted:
            self._counted = False
            self.guard.sockets -= 1
        super().connection_lost(exc)

    def cut(self, why: str) -> None:
        """Close at once (a socket sacrificed so that others are served)."""
        self.guard.done(self)
        self._disarm()
        self._refused = True
        logger.debug("closing an unfinished handshake from %s: %s", self.peer, why)
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: discard until the peer closes or the timer cuts it
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self._disarm()
                self.guard.done(self)
                if self._counted:
                    # From here the WebSocket protocol owns the socket.
                    self._counted = False
                    self.guard.sockets -= 1
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                status, reason, message = self._refusal
                self.guard.count(reason)
                self.guard.log.info(
                    reason, "refused a request from %s: %s (%d)", self.peer, message, status
                )
                self._refuse(status, reason, message)
                return
            self.guard.log.info("bad_request", "refused a request from %s: not HTTP", self.peer)
            self.guard.count("bad_request")
            self._refuse(400, "bad_request", "Invalid HTTP request received.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_count = self._header_bytes = 0
        # The first request is timed from the connection itself; a later one
        # (keep-alive) from its first byte.
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.guard.settings.max_request_line:
            self._refusal = (414, "request_line_too_long", "request line too long")
            raise ValueError("request line too long")  # stops the parser
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        settings = self.guard.settings
        # httptools may hand over one header in pieces; every piece is counted
        # by size, only whole headers by number (an approximation that errs
        # on the side of refusing).
        self._header_count += 1
        self._header_bytes += len(name) + len(value)
        if self._header_count > settings.max_header_count:
            self._refusal = (431, "headers_too_large", "too many headers")
            raise ValueError("too many headers")
        if self._header_bytes > settings.max_header_bytes:
            self._refusal = (431, "headers_too_large", "headers too large")
            raise ValueError("headers too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # The deadline covers the request line and headers only. The socket
        # stays among the pending ones (an HTTP socket) until it upgrades or
        # closes, but it is no longer a handshake the fd limit would cut first.
        self._disarm()
        super().on_headers_complete()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status``, shut the socket for writing, and discard what
        the peer still sends for a moment: it reads the answer, then the
        socket closes (or is cut when the peer does neither)."""
        self._disarm()
        self._refused = True
        self.guard.done(self)
        transport = self.transport
        if transport.is_closing():
            return
        body = message.encode()
        phrase = {
            400: b"Bad Request",
            408: b"Request Timeout",
            414: b"URI Too Long",
            431: b"Request Header Fields Too Large",
            503: b"Service Unavailable",
        }.get(status, b"")
        transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, phrase, len(body), body)
        )
        if transport.can_write_eof():
            transport.write_eof()
        else:  # pragma: no cover - TLS: no half-close
            transport.close()
        self._linger = self.loop.call_later(_LINGER, transport.abort)


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with control-frame and close bounds."""

    guard: ClassVar[ConnectionGuard]
    #: Tells the endpoint that unread bytes are bounded here (at each PING),
    #: so its own watchdog is not needed.
    bounds_unread: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.close_timeout = self.guard.settings.close_timeout
        self._pings = float(self.guard.settings.inbound_burst)
        self._pings_at = time.monotonic()
        self._abort_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.sockets += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.sockets -= 1
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        super().connection_lost(exc)

    @property
    def _peer(self) -> str:
        return self.client[0] if self.client else "?"

    def _cut(self, reason: str, message: str) -> None:
        """Abort the connection now: its buffers are what must not grow."""
        self.guard.count(reason)
        self.guard.log.info(reason, "cut a connection from %s: %s", self._peer, message)
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1006})
        self.transport.abort()

    def handle_ping(self) -> None:
        # The pong is already queued by the protocol; before writing it, the
        # two bounds a PING flood breaks: the rate of control frames, and
        # the bytes the peer leaves unread (a pong it never reads is as much
        # its buffer as a stream message is).
        if self.transport.is_closing():
            self.conn.data_to_send()
            return
        settings = self.guard.settings
        now = time.monotonic()
        refill = (now - self._pings_at) * settings.inbound_rate
        self._pings = min(float(settings.inbound_burst), self._pings + refill)
        self._pings_at = now
        if self._pings < 1.0:
            self.conn.data_to_send()
            self._cut("control_flood", "more PING frames than the inbound rate allows")
            return
        self._pings -= 1.0
        if self.transport.get_write_buffer_size() > unread_bound(self.guard.hub):
            self.conn.data_to_send()
            self._cut("control_flood", "PING frames while leaving the answers unread")
            return
        super().handle_ping()

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                # A client's mistake, not a server fault: one line, no traceback.
                self.frames = []
                self.guard.count("invalid_utf8")
                self.guard.log.info(
                    "invalid_utf8", "closed a connection from %s: invalid UTF-8 (1007)", self._peer
                )
                self.conn.send_close(CloseCode.INVALID_PAYLOAD, "invalid UTF-8")
                self.queue.put_nowait(
                    {"type": "websocket.disconnect", "code": CloseCode.INVALID_PAYLOAD}
                )
                self.transport.write(b"".join(self.conn.data_to_send()))
                self.close_sent = True
                self.transport.close()
                self._abort_later()
                return
        super().send_receive_event_to_app()

    def keepalive_timeout(self) -> None:
        # The keepalive ping is queued behind every frame the client has not
        # read yet, so a missing pong means the client is not reading: a slow
        # consumer, told so with 4008 (resume and catch up) rather than
        # uvicorn's 1011 (a server error), and counted as an eviction.
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():  # pragma: no cover
            return
        self.guard.hub.stats.evictions += 1
        self.guard.log.info(
            "keepalive",
            "closing a slow consumer from %s: keepalive ping not answered within %gs (4008)",
            self._peer,
            self.ping_timeout or 0.0,
        )
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CloseCode.SLOW_CONSUMER})
        self.conn.send_close(CloseCode.SLOW_CONSUMER, "slow consumer: keepalive ping not answered")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()
        self._abort_later()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message.get("type") == "websocket.close" and self.close_timer is not None:
            # uvicorn waits 10 s for the peer's close and then closes
            # gracefully, which waits for a buffer the peer may never read:
            # wait close_timeout, then cut.
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self.close_timer = None
        if not self.disconnected:
            self.transport.abort()

    async def run_asgi(self) -> None:
        await super().run_asgi()
        # However the app finished, the socket is gone within close_timeout.
        self._abort_later()

    def _abort_later(self) -> None:
        if self._abort_handle is None and not self.disconnected:
            self._abort_handle = self.loop.call_later(self.close_timeout, self._abort_if_open)

    def _abort_if_open(self) -> None:
        self._abort_handle = None
        if not self.disconnected:
            self.transport.abort()


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def options(hub: MetricsHub, settings: ServerSettings) -> dict[str, Any]:
    """The ``uvicorn.Config`` options installing the guarded protocols."""
    if _version(uvicorn.__version__) < MIN_UVICORN:
        raise ConfigError(
            f"the guarded protocols need uvicorn >= {'.'.join(map(str, MIN_UVICORN))}, "
            f"found {uvicorn.__version__}"
        )
    guard = ConnectionGuard(hub, settings)
    http = type("GuardedHttp", (GuardedHttpProtocol,), {"guard": guard})
    ws = type("GuardedWebSocket", (GuardedWebSocketProtocol,), {"guard": guard})
    return {
        "http": http,
        "ws": ws,
        # uvicorn's own bound of idle keep-alive sockets, kept at its default
        # but said here: it is the other half of the handshake timeout.
        "timeout_keep_alive": 5,
    }
