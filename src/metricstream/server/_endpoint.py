"""The ``/metrics/stream`` WebSocket endpoint, as a plain ASGI application.

It speaks raw ASGI rather than going through Starlette's ``WebSocket`` class:
frames leave through the hub's outbox already encoded (as ASGI text, or as
pre-framed bytes written to uvicorn's transport, see ``_wire``), and the
handshake decisions (origin, token, capacity) need nothing more than the
scope.

Each connection runs two coroutines: the ASGI call itself, which waits for the
connection's close code, and a reader task, which answers control messages and
enforces the inbound limits. Writing is the hub's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.types import Message, Receive, Scope, Send

from ..exceptions import InvalidFilterError, ProtocolError
from ..protocol import (
    STREAM_SUBPROTOCOL,
    CloseCode,
    ErrorPayload,
    Filter,
    MessageType,
    PongPayload,
    SubscribePayload,
    WebSocketMessage,
    decode,
    encode,
    make_message,
    now_ms,
    token_from_subprotocols,
)
from ._hub import MetricsHub, Subscriber
from ._limits import (
    AuthThrottle,
    BufferWatchdog,
    RateLimitedLog,
    RefusedHandshakeLog,
    message_cost,
    refusing,
)
from ._settings import ServerSettings
from ._wire import DirectWriter, Transport, find_transport

__all__ = ["StreamEndpoint"]

logger = logging.getLogger("metricstream.server")

# Types a client may send; every other known type gets ``unsupported_type``.
_CLIENT_TYPES: Final = frozenset(
    {
        MessageType.HEARTBEAT,
        MessageType.PING,
        MessageType.SUBSCRIBE,
        MessageType.UNSUBSCRIBE,
    }
)


def _error_frame(code: str, message: str) -> str:
    payload = ErrorPayload(code=code, message=message)
    return encode(make_message(MessageType.ERROR, payload)).decode()


class _TokenBucket:
    """Inbound rate limit of one connection (in messages, or in bytes)."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens", "drops")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        # Messages dropped in a row.
        self.drops = 0

    def take(self, cost: float = 1.0) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= cost:
            self._tokens -= cost
            self.drops = 0
            return True
        self.drops += 1
        return False


class StreamEndpoint:
    """ASGI application serving the stream of ``hub`` over WebSocket.

    Mount it at a WebSocket route (``create_router`` does); it accepts
    ``websocket`` scopes only.
    """

    def __init__(self, hub: MetricsHub, settings: ServerSettings | None = None) -> None:
        self.hub = hub
        self.settings = settings if settings is not None else ServerSettings()
        self._active = 0
        self._auth = AuthThrottle(self.settings.auth_failure_burst, self.settings.auth_failure_rate)
        self._watchdog = BufferWatchdog(hub)
        self._log = RateLimitedLog()
        RefusedHandshakeLog.install()

    def http_refusal(self, scope: Scope) -> int | None:
        """The HTTP status refusing a request for a page guarded by the token.

        ``None`` when the request may proceed: no token is set,
        ``protect_http`` is off, or it carries the token (``Authorization:
        Bearer`` or ``?token=``). Otherwise 401, or 429 while the client's
        address has spent its failed attempts: failures here and on the
        stream share one throttle, so ``/metrics`` is no side door for
        guessing.
        """
        settings = self.settings
        if settings.token is None or not settings.protect_http:
            return None
        peer = _peer(scope)
        if self._auth.blocked(peer):
            self.hub.stats.reject("auth_throttled")
            return 429
        _, authorization, _ = _handshake_headers(scope)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if _token_ok(settings.token, authorization, query):
            return None
        self._auth.failed(peer)
        return 401

    @property
    def active(self) -> int:
        """Connections past the handshake and not yet finished."""
        return self._active

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":  # pragma: no cover - routed as a WebSocket route
            raise RuntimeError("StreamEndpoint serves WebSocket connections only")
        first = await receive()
        if first["type"] != "websocket.connect":
            return
        settings = self.settings
        stats = self.hub.stats
        self._watch(scope, receive)
        origin, authorization, offered = _handshake_headers(scope)
        if not settings.origin_allowed(origin):
            stats.reject("origin")
            self._log.info("origin", "refused a handshake from origin %r", origin)
            # Before accept, uvicorn turns this into an HTTP 403 response.
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if settings.token is not None and not await self._authenticate(
            scope, receive, send, authorization, query, offered
        ):
            return
        if self.hub.closing:
            stats.reject("shutdown")
            await _accept_and_close(send, CloseCode.GOING_AWAY, "server shutting down", offered)
            _abort_later(receive, settings.close_timeout)
            return
        if self._active >= settings.max_connections:
            stats.reject("capacity")
            self._log.info(
                "capacity",
                "refused a connection from %s: %d connections (max_connections %d) (4029)",
                _peer(scope),
                self._active,
                settings.max_connections,
            )
            await _accept_and_close(send, CloseCode.TOO_MANY, "too many connections", offered)
            _abort_later(receive, settings.close_timeout)
            return
        # One check for the query's filter, bounds and names together; the
        # two kinds of failure are answered differently (protocol/filter.py
        # says why): past a bound the connection is refused with 1008, wrong
        # names get an error and no filter.
        filter_error: InvalidFilterError | None = None
        try:
            filt = Filter.from_query(
                query,
                max_entries=settings.max_filter_entries,
                max_chars=settings.max_filter_bytes,
            )
        except InvalidFilterError as exc:
            filt, filter_error = Filter(), exc
        if filter_error is not None and filter_error.bound is not None:
            stats.reject("invalid_filter")
            problem = str(filter_error)
            self._log.info(
                "invalid_filter", "refused a filter from %s: %s (1008)", _peer(scope), problem
            )
            with refusing(CloseCode.POLICY_VIOLATION):
                await send(_accept_message(offered))
            await send({"type": "websocket.send", "text": _error_frame("invalid_filter", problem)})
            await send(
                {
                    "type": "websocket.close",
                    "code": CloseCode.POLICY_VIOLATION,
                    "reason": "bad filter",
                }
            )
            _abort_later(receive, settings.close_timeout)
            return
        self._active += 1
        try:
            await send(_accept_message(offered))
            await self._serve(scope, receive, send, query, filt, filter_error)
        finally:
            self._active -= 1

    def _watch(self, scope: Scope, receive: Receive) -> None:
        """Bound what a client leaves unread, where the server does not.

        The guarded protocols of ``metricstream serve`` bound it themselves at
        each PING; on any other server that exposes its transport the
        endpoint's watchdog does.
        """
        if getattr(getattr(receive, "__self__", None), "bounds_unread", False):
            return
        transport = find_transport(receive)
        if transport is not None:
            self._watchdog.watch(transport, _peer(scope))

    async def _authenticate(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        authorization: str,
        query: dict[str, list[str]],
        offered: tuple[str, ...],
    ) -> bool:
        """Check the token, throttling failures per client address.

        Whether the connection may proceed; when not, it has been answered.
        The token itself is never logged.
        """
        settings = self.settings
        assert settings.token is not None
        stats = self.hub.stats
        peer = _peer(scope)
        if self._auth.blocked(peer):
            # The token is not even compared: guessing must not go on at the
            # rate the throttled address can open sockets.
            # Refused before the WebSocket exists (HTTP 403, as for a foreign
            # origin): the cheapest answer there is.
            stats.reject("auth_throttled")
            await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
            _abort_later(receive, settings.close_timeout)
            return False
        if _token_ok(settings.token, authorization, query, offered):
            return True
        stats.reject("token")
        # Each failure is said: the per-address throttle already bounds how
        # many one address can cause.
        if self._auth.failed(peer):
            logger.info(
                "refused a connection from %s: missing or invalid token (4001); "
                "further attempts from this address are refused for a while",
                peer,
            )
        else:
            logger.info("refused a connection from %s: missing or invalid token (4001)", peer)
        await _accept_and_close(send, CloseCode.BAD_TOKEN, "missing or invalid token", offered)
        _abort_later(receive, settings.close_timeout)
        return False

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        query: dict[str, list[str]],
        filt: Filter,
        filter_error: InvalidFilterError | None,
    ) -> None:
        since = _int_param(query, "since")
        epoch = query.get("epoch", [None])[-1]
        batch = query.get("batch", ["0"])[-1] in ("1", "true")

        def send_text(frame: str) -> Any:
            return send({"type": "websocket.send", "text": frame})

        transport = find_transport(receive)
        direct = None
        if self.settings.direct_write:
            direct, fallback = DirectWriter.check(receive)
            if fallback is not None:
                self.hub.stats.direct_write_fallbacks += 1
        sub = self.hub.attach(
            send_text,
            since=since,
            epoch=epoch,
            types=filt.types,
            models=filt.models,
            batch=batch,
            transport=transport,
            direct=direct,
        )
        if filter_error is not None:
            # As for ``subscribe``: the filter stays what it was (none), and
            # the client is told why, instead of a filter matching nothing.
            sub.send_local(_error_frame("invalid_filter", str(filter_error)))
        if "since" in query and since is None:
            sub.send_local(_error_frame("invalid_query", "`since` must be a non-negative integer"))
        reader = asyncio.get_running_loop().create_task(self._read(receive, sub))
        reader.add_done_callback(functools.partial(_reader_done, sub))
        try:
            try:
                code = await sub.closed
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if code is not None:
                await self._close(send, sub, code, transport)
        finally:
            self.hub.detach(sub)

    async def _close(
        self, send: Send, sub: Subscriber, code: int, transport: Transport | None
    ) -> None:
        timeout = self.settings.close_timeout
        # What is already queued (the last messages, an ``error`` explaining
        # the close) goes out ahead of the close frame; a slow consumer's
        # outbox has been dropped, so this returns at once for 4008.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.drain(), timeout)
        # The subscriber stays attached (but closed to new frames) until the
        # close frame is out: ``close_all`` waits for exactly that.
        message: Message = {"type": "websocket.close", "code": code}
        try:
            await asyncio.wait_for(send(message), timeout)
        except TimeoutError:
            # The peer does not read at all: the close frame cannot even be
            # queued. Cut the connection instead of holding its buffers.
            if transport is not None:
                transport.abort()
            return
        except Exception:  # the peer is already gone
            return
        if transport is not None:
            # The close frame is queued; a peer that never reads it would keep
            # the socket (and its buffered bytes) forever.
            loop = asyncio.get_running_loop()
            loop.call_later(timeout, _abort_if_stuck, transport)

    async def _read(self, receive: Receive, sub: Subscriber) -> None:
        settings = self.settings
        limit = settings.max_message_size
        bucket = _TokenBucket(settings.inbound_rate, settings.inbound_burst)
        byte_bucket = _TokenBucket(
            settings.inbound_byte_rate, max(settings.inbound_byte_burst, limit)
        )
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                sub.request_close(None)
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            payload: str | bytes = text if text is not None else message.get("bytes") or b""
            size = (
                len(payload)
                if isinstance(payload, bytes) or payload.isascii()
                else (len(payload.encode()))
            )
            if size > limit:
                self.hub.stats.reject("message_too_big")
                self._log.info(
                    "message_too_big",
                    "closed a connection: a %d-byte message (limit %d) (1009)",
                    size,
                    limit,
                )
                sub.request_close(CloseCode.MESSAGE_TOO_BIG)
                return
            # A message dropped for its bytes has still spent its message
            # tokens: a client over either limit is slowed on both.
            within = bucket.take(message_cost(payload))
            if within and not byte_bucket.take(size):
                within = False
                bucket.drops = byte_bucket.drops
            if not within:
                if bucket.drops >= settings.inbound_burst:
                    self.hub.stats.reject("inbound_rate")
                    self._log.info("inbound_rate", "closed a connection: inbound flood (4029)")
                    sub.request_close(CloseCode.TOO_MANY)
                    return
                if bucket.drops == 1:
                    sub.send_local(
                        _error_frame(
                            "rate_limited",
                            f"more than {settings.inbound_rate:g} messages or "
                            f"{settings.inbound_byte_rate:g} bytes per second; "
                            "messages are being dropped",
                        )
                    )
                continue
            try:
                self._handle(sub, payload)
            except Exception:
                # A fault of ours must not end the connection or reach the
                # client as anything but a plain error.
                logger.exception("failed to handle a client message")
                sub.send_local(_error_frame("internal_error", "the message could not be handled"))

    def _handle(self, sub: Subscriber, payload: str | bytes) -> None:
        try:
            message = decode(payload)
        except ProtocolError as exc:
            sub.send_local(_error_frame("invalid_message", str(exc)))
            return
        mtype = message.type
        if not message.is_known:
            sub.send_local(_error_frame("unknown_type", f"unknown message type {mtype!r}"))
            return
        if mtype not in _CLIENT_TYPES:
            sub.send_local(
                _error_frame("unsupported_type", f"clients may not send {mtype!r} messages")
            )
            return
        if mtype is MessageType.HEARTBEAT or mtype is MessageType.PING:
            sub.send_local(_pong(message))
        elif mtype is MessageType.SUBSCRIBE:
            data: SubscribePayload = message.data
            try:
                filt = Filter.from_payload(
                    data,
                    max_entries=self.settings.max_filter_entries,
                    max_chars=self.settings.max_filter_bytes,
                )
            except InvalidFilterError as exc:
                # Either kind keeps the filter the connection had; only a
                # bound counts as a refusal by a limit.
                if exc.bound is not None:
                    self.hub.stats.reject("invalid_filter")
                sub.send_local(_error_frame("invalid_filter", str(exc)))
                return
            sub.set_filter(filt)
            sub.send_local(_subscribed(filt))
        else:  # unsubscribe
            sub.set_filter(Filter())
            sub.send_local(_subscribed(Filter()))


# The ``client_time`` a pong may echo: epoch milliseconds a JavaScript
# number holds exactly. Anything else is not a time, and echoing it would only
# hand a client's garbage to whatever reads the pong.
_MAX_CLIENT_TIME: Final = 2**53 - 1


def _client_time(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_CLIENT_TIME:
        return value
    return None


def _pong(message: WebSocketMessage[Any]) -> str:
    client_time = _client_time(getattr(message.data, "client_time", None))
    if client_time is None:
        client_time = _client_time(message.timestamp)
    now = now_ms()
    pong = make_message(
        MessageType.PONG, PongPayload(client_time=client_time, server_time=now), timestamp=now
    )
    return encode(pong).decode()


def _subscribed(filt: Filter) -> str:
    return encode(make_message(MessageType.SUBSCRIBED, filt.to_payload())).decode()


def _handshake_headers(scope: Scope) -> tuple[str | None, str, tuple[str, ...]]:
    """The ``Origin`` (None when absent) and ``Authorization`` headers, and the
    subprotocols offered (``Sec-WebSocket-Protocol``, in order).

    Only these are decoded: the connection's frame lives as long as the
    connection, and a dict of every header would live with it.
    """
    origin: str | None = None
    authorization = ""
    offered: tuple[str, ...] = ()
    for name, value in scope.get("headers", ()):
        lowered = name.lower()
        if lowered == b"origin":
            origin = value.decode("latin-1")
        elif lowered == b"authorization":
            authorization = value.decode("latin-1")
        elif lowered == b"sec-websocket-protocol":
            # The header may be repeated; each carries a comma-separated list.
            offered += tuple(
                item.strip() for item in value.decode("latin-1").split(",") if item.strip()
            )
    return origin, authorization, offered


def _accept_message(offered: tuple[str, ...]) -> Message:
    # Never echo the token entry: only the plain protocol name is selected.
    if STREAM_SUBPROTOCOL in offered:
        return {"type": "websocket.accept", "subprotocol": STREAM_SUBPROTOCOL}
    return {"type": "websocket.accept"}


def _token_ok(
    token: str,
    authorization: str,
    query: dict[str, list[str]],
    offered: tuple[str, ...] = (),
) -> bool:
    """Whether any of the three places a token may come from holds ``token``.

    ``Authorization: Bearer``, a ``metricstream.token.<base64url>``
    subprotocol entry, or the ``token`` query parameter; each compared in
    constant time (``hmac.compare_digest``), so the time taken does not tell
    how much of a guess was right.
    """
    expected = token.encode()
    ok = False
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected):
        ok = True
    given_protocol = token_from_subprotocols(offered)
    if given_protocol is not None and hmac.compare_digest(given_protocol, expected):
        ok = True
    given = query.get("token")
    if given is not None and hmac.compare_digest(given[-1].encode(), expected):
        ok = True
    return ok


def _int_param(query: dict[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        value = int(values[-1])
    except ValueError:
        return None
    return value if value >= 0 else None


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


def _abort_later(receive: Receive, timeout: float) -> None:
    """Cut a refused connection whose close has not completed within ``timeout``.

    A refused peer that never reads would otherwise hold its socket and
    whatever the server still owes it (close frame, pongs) for as long as
    the host server's own close timeout, or forever.
    """
    transport = find_transport(receive)
    if transport is not None:
        asyncio.get_running_loop().call_later(timeout, _abort_if_stuck, transport)


async def _accept_and_close(
    send: Send, code: int, reason: str, offered: tuple[str, ...] = ()
) -> None:
    # Accept first so that a browser sees the close code (a refused handshake
    # only shows up as 1006 there); the server's log says refused all the same.
    with refusing(code):
        await send(_accept_message(offered))
    await send({"type": "websocket.close", "code": code, "reason": reason})


def _reader_done(sub: Subscriber, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # receive() itself failed: the connection cannot be read any more.
        logger.error("reading a connection failed: %r", exc)
        sub.request_close(CloseCode.INTERNAL_ERROR)


def _abort_if_stuck(transport: Transport) -> None:
    if not transport.is_closing() or transport.get_write_buffer_size() > 0:
        transport.abort()
