"""The asyncio client: a thin driver around the pure protocol core.

One background task owns the connection loop (connect, read, reconnect); one
more per connection sends heartbeats and watches for silence. Everything the
protocol decides — decoding, sequence verdicts, backoff delays, what a close
code means — is delegated to pure code (:mod:`metricstream.protocol`,
``_policy``, ``_fakeai``); this module only feeds it frames and acts on the
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Self

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from .._version import __version__
from ..exceptions import (
    ClientClosedError,
    ConfigError,
    ConnectionRejectedError,
    ProtocolError,
    QueueFullError,
    StreamConnectionError,
)
from ..protocol import (
    STREAM_TYPES,
    CloseAction,
    Filter,
    HeartbeatPayload,
    MessageType,
    SequenceTracker,
    SubscribePayload,
    WebSocketMessage,
    close_action,
    decode,
    decode_frame,
    encode,
    handshake_action,
    make_message,
    now_ms,
)
from ._config import Dialect, OverflowPolicy, WebSocketConfig, _names, redact_url
from ._fakeai import FAKEAI_PING, FakeAIAdapter, is_fakeai_greeting
from ._handlers import EventHandlers
from ._policy import build_url
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream

__all__ = [
    "ALL_TYPES",
    "STATE_CHANGES",
    "Callback",
    "Subscription",
    "WebSocketService",
    "create_websocket_service",
]

logger = logging.getLogger("metricstream.client")

#: A message callback, called as ``callback(data, message)`` (the seed's
#: signature): a plain function, or a coroutine function that the reader awaits
#: before it reads on, so every callback sees messages strictly in order.
Callback = Callable[[Any, WebSocketMessage[Any]], object]

#: The message type that :meth:`WebSocketService.subscribe` takes for "every type".
ALL_TYPES: Final = "*"

#: The ``type`` of a :class:`Subscription` made by :meth:`WebSocketService.watch_state`.
STATE_CHANGES: Final = "state"

# How much of a raw frame a debug log shows.
_RAW_LOG_LIMIT: Final = 2048

# A frame above max_message_size is read and skipped, up to this many times
# the limit; beyond it the connection is failed (1009) so that no single frame
# can make the client buffer without bound.
_OVERSIZE_CEILING: Final = 4

_raw_list_decoder: Final = msgspec.json.Decoder(list[msgspec.Raw])


def _filter_of(types: tuple[str, ...] | None, models: tuple[str, ...] | None) -> Filter:
    # Unvalidated: the client applies whatever it was configured with (a
    # server decides what it accepts), in the protocol's one rule.
    return Filter(
        None if types is None else frozenset(types),
        None if models is None else frozenset(models),
    )


class Subscription:
    """A registered callback; :meth:`unsubscribe` (or leaving a ``with``) removes it.

    ``id`` is unique within its service (:meth:`WebSocketService.unsubscribe`
    takes it); ``type`` is the message type subscribed to (``"*"`` for every
    type, ``"state"`` for a :meth:`WebSocketService.watch_state` callback).
    """

    __slots__ = ("_callback", "_callbacks", "_registry", "id", "type")

    def __init__(
        self,
        callbacks: list[Any],
        callback: object,
        *,
        id: int,
        type: str,
        registry: dict[int, Subscription],
    ) -> None:
        self._callbacks = callbacks
        self._callback = callback
        self._registry = registry
        self.id: Final = id
        self.type: Final = type
        registry[id] = self

    @property
    def active(self) -> bool:
        """Whether the callback is still registered."""
        return self._registry.get(self.id) is self

    def unsubscribe(self) -> None:
        """Stop calling the callback; calling this twice is harmless."""
        self._cancel()

    def _cancel(self) -> bool:
        if self._registry.get(self.id) is not self:
            return False
        del self._registry[self.id]
        with contextlib.suppress(ValueError):
            self._callbacks.remove(self._callback)
        return True

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"<Subscription id={self.id} type={self.type!r} {state}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unsubscribe()


class _Connection:
    """What the driver knows about one open WebSocket."""

    __slots__ = (
        "busy",
        "connected",
        "dialect",
        "end_reason",
        "gap_check",
        "keepalive",
        "pings",
        "resync",
        "ws",
    )

    def __init__(self, ws: ClientConnection, dialect: Dialect | None) -> None:
        self.ws = ws
        self.dialect = dialect  # None until the first frame decides (auto)
        self.connected = False
        # Set while the reader waits on a handler or a consumer: silence then
        # is ours, not the peer's, and must not count against it.
        self.busy = False
        self.gap_check = False
        self.resync = False
        self.end_reason: str | None = None
        self.pings: deque[float] = deque(maxlen=32)
        self.keepalive: asyncio.Task[None] | None = None


class WebSocketService:
    """A resilient client of a metrics stream (native or FakeAI dialect).

    Connects, reconnects with jittered backoff, resumes from the last applied
    sequence, drops duplicates and stale messages, detects dead peers by
    heartbeat, and hands every message to callbacks and iterators::

        async with WebSocketService("ws://127.0.0.1:8765/metrics/stream") as client:
            client.subscribe(MessageType.METRICS_UPDATE, lambda data, msg: print(data))
            async for message in client.messages():
                ...

    ``handlers`` (:class:`EventHandlers`) are the seed's lifecycle callbacks;
    for brevity they may also be given as keyword arguments of the same names,
    which take precedence over the fields of ``handlers``.

    Lifecycle: :meth:`connect` starts connecting in the background (and
    reconnecting, until :meth:`disconnect`); :meth:`disconnect` closes on
    purpose, after which :meth:`connect` may start anew; :meth:`aclose` is
    final and releases everything, subscriptions included.

    A client belongs to the event loop it was started on; it is not thread-safe.
    """

    def __init__(
        self,
        config: WebSocketConfig | str,
        handlers: EventHandlers | None = None,
        **handler_kwargs: Callable[..., object] | None,
    ) -> None:
        self._config = (
            config if isinstance(config, WebSocketConfig) else WebSocketConfig(url=config)
        )
        if handlers is not None and not isinstance(handlers, EventHandlers):
            raise ConfigError(f"handlers must be an EventHandlers, got {handlers!r}")
        self._handlers = handlers if handlers is not None else EventHandlers()
        if handler_kwargs:
            try:
                self._handlers = dataclasses.replace(self._handlers, **handler_kwargs)
            except TypeError as exc:
                raise ConfigError(f"unknown handler: {exc}") from None
        self._state_watchers: list[Callable[[ConnectionState, ConnectionState], object]] = []
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        # Tasks of coroutine handlers: kept referenced until done (asyncio
        # holds tasks only weakly), awaited by aclose().
        self._handler_tasks: set[asyncio.Future[Any]] = set()

        self._types = self._config.types
        self._models = self._config.models
        self._filter = _filter_of(self._types, self._models)
        self._backoff = self._config.make_backoff()
        self._tracker = SequenceTracker()
        self._adapter = FakeAIAdapter()
        self._callbacks: dict[str, list[Callback]] = {}
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()
        self._outbox: deque[bytes] = deque()
        self._ack_waiters: list[asyncio.Future[SubscribePayload | None]] = []

        self._state = ConnectionState.DISCONNECTED
        self._task: asyncio.Task[None] | None = None
        self._conn: _Connection | None = None
        self._closing = False  # close() or aclose() was called: final
        self._released = False  # aclose() finished
        self._stopped = False  # the connection loop ended, for whatever reason
        # Bumped by disconnect(): a connection loop of an older generation
        # winds down instead of reconnecting.
        self._generation = 0
        self._fatal: BaseException | None = None
        self._connected_event: asyncio.Event | None = None
        # The sequence a gap was last seen after: a second gap at the same
        # place right after a resync means the server cannot fill it.
        self._gap_resync_from: int | None = None
        self._immediate_retry_used = False
        # Set by reconnect(): cut the current backoff wait short.
        self._wake = asyncio.Event()

        self._connected_at: float | None = None
        self._disconnected_at: float | None = None
        self._last_error: str | None = None
        self._latency: float | None = None
        self._dialect: Dialect | None = None
        self._message_count = 0
        self._bytes_received = 0
        self._bytes_sent = 0
        self._connections = 0
        self._resumes = 0
        self._parse_errors = 0
        self._unknown_messages = 0
        self._dropped = 0
        self._resumed = False

    # ------------------------------------------------------------------ public

    @property
    def config(self) -> WebSocketConfig:
        """The configuration this client was built with."""
        return self._config

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._state

    @property
    def is_connected(self) -> bool:
        """Whether the client is CONNECTED."""
        return self._state is ConnectionState.CONNECTED

    @property
    def handlers(self) -> EventHandlers:
        """The lifecycle handlers (fields may be replaced at any time)."""
        return self._handlers

    @property
    def latency(self) -> float | None:
        """The last heartbeat round trip, in seconds."""
        return self._latency

    @property
    def filter(self) -> SubscribePayload:
        """The current subscription filter (``None`` fields: everything)."""
        return SubscribePayload(
            types=list(self._types) if self._types is not None else None,
            models=list(self._models) if self._models is not None else None,
        )

    def connection_info(self) -> ConnectionInfo:
        """A snapshot of the connection statistics (the seed's ``getConnectionInfo``)."""
        tracker = self._tracker
        return ConnectionInfo(
            state=self._state,
            connected_at=self._connected_at,
            disconnected_at=self._disconnected_at,
            reconnect_attempts=self._backoff.attempt,
            last_error=self._last_error,
            latency=self._latency,
            message_count=self._message_count,
            bytes_received=self._bytes_received,
            bytes_sent=self._bytes_sent,
            epoch=tracker.epoch,
            last_sequence=tracker.last_sequence,
            duplicates=tracker.duplicates,
            out_of_order=tracker.out_of_order,
            gaps=tracker.gaps,
            parse_errors=self._parse_errors,
            queued=len(self._outbox),
            dropped=self._dropped,
            resumed=self._resumed,
            dialect=self._dialect.value if self._dialect is not None else None,
            connections=self._connections,
            resumes=self._resumes,
            missed=tracker.missed,
            unknown_messages=self._unknown_messages,
        )

    def subscribe(self, message_type: MessageType | str, callback: Callback) -> Subscription:
        """Call ``callback(data, message)`` for each message of ``message_type``.

        ``"*"`` (:data:`ALL_TYPES`) means every message of a known type but
        ``pong``, which only a callback asking for it by type receives. Calls
        are made in stream order; a coroutine callback is awaited before the
        next message is handled. An exception in a callback is logged and
        does not stop the others. Subscriptions outlive reconnects and
        :meth:`disconnect`; :meth:`aclose` clears them.
        """
        callbacks = self._callbacks.setdefault(str(message_type), [])
        callbacks.append(callback)
        return Subscription(
            callbacks,
            callback,
            id=next(self._ids),
            type=str(message_type),
            registry=self._subscriptions,
        )

    def unsubscribe(self, subscription_id: int | Subscription) -> bool:
        """Remove the subscription with this id; returns whether it existed."""
        if isinstance(subscription_id, Subscription):
            subscription_id = subscription_id.id
        subscription = self._subscriptions.get(subscription_id)
        return subscription is not None and subscription._cancel()

    def watch_state(
        self, callback: Callable[[ConnectionState, ConnectionState], object]
    ) -> Subscription:
        """Call ``callback(old, new)`` on every connection state change.

        Unlike ``EventHandlers.on_state_change`` (one handler, set at
        construction) any number of watchers may come and go.
        """
        self._state_watchers.append(callback)
        return Subscription(
            self._state_watchers,
            callback,
            id=next(self._ids),
            type=STATE_CHANGES,
            registry=self._subscriptions,
        )

    def messages(
        self, types: Iterable[MessageType | str] | None = None, *, maxsize: int | None = None
    ) -> MessageStream:
        """A new iterator over messages from now on (async for).

        Without ``types``, every message of a known type but ``pong``; with
        it, only messages of those types (``pong`` included if named). Its
        buffer holds ``maxsize`` messages (``config.message_queue_size`` by
        default); a full buffer makes the reader wait, it never drops. The
        iterator survives reconnects and :meth:`disconnect`, and ends after
        :meth:`aclose` / :meth:`close` or when the client stopped for good.
        """
        size = self._config.message_queue_size if maxsize is None else maxsize
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"maxsize must be a positive integer, got {size!r}")
        if isinstance(types, str):
            types = (types,)
        wanted = frozenset(str(t) for t in types) if types is not None else None
        stream = MessageStream(size, wanted)
        if self._stopped:
            stream.close()
        self._streams.add(stream)
        return stream

    async def connect(self) -> None:
        """Start connecting, and keep the connection up, in the background.

        Idempotent while a connection loop runs. Returns at once and never
        raises for an unreachable or refusing server: failures go to
        ``on_error`` and the reconnect policy (use :meth:`wait_connected` to
        wait). After :meth:`disconnect`, or after the client gave up (state
        ERROR), it starts anew with a fresh backoff. Raises
        :class:`RuntimeError` after :meth:`aclose` / :meth:`close`.
        """
        if self._closing:
            raise ClientClosedError("a closed client cannot be connected again")
        task = self._task
        if task is not None and not task.done():
            return
        self._begin()

    def _begin(self) -> None:
        self._stopped = False
        self._fatal = None
        self._backoff.reset()
        self._immediate_retry_used = False
        self._wake.clear()
        self._connected_event = asyncio.Event()
        if self._config.debug:
            logger.debug("connecting to %s", redact_url(self._config.url))
        self._task = asyncio.create_task(self._run(self._generation), name="metricstream-client")

    async def start(self) -> None:
        """Start connecting in the background unless already started.

        Like :meth:`connect`, except that a client whose connection loop
        already ended on its own (rejected, out of attempts) is left stopped,
        so that :meth:`run` and :meth:`wait_connected` report why.
        """
        if self._task is not None:
            return
        await self.connect()

    async def wait_connected(self) -> None:
        """Wait until CONNECTED (bound it with ``asyncio.timeout``).

        Raises :class:`~metricstream.exceptions.ConnectionRejectedError` if the
        server rejected the client for good and :class:`ConnectionError` if the
        client stopped (closed, or out of attempts) first.
        """
        await self.start()
        task = self._task
        assert task is not None
        while not self.is_connected:
            if task.done():
                self._raise_stopped()
            event = self._connected_event
            assert event is not None
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    async def run(self) -> None:
        """Start (if needed) and wait until the client stops.

        Returns after :meth:`disconnect`, :meth:`aclose` or :meth:`close`;
        raises :class:`~metricstream.exceptions.ConnectionRejectedError` when
        the server rejected the client and :class:`ConnectionError` when the
        reconnect attempts ran out.
        """
        await self.start()
        generation = self._generation
        assert self._task is not None
        # wait(), not the task itself: a loop cancelled by disconnect() or
        # close() ends run() normally, and cancelling run() leaves the loop be.
        await asyncio.wait({self._task})
        if not self._stop_requested(generation):
            self._raise_stopped()

    async def disconnect(self) -> None:
        """Close the connection on purpose (code 1000); no reconnect follows.

        The state becomes DISCONNECTED; subscriptions, iterators and the
        offline queue are kept, and :meth:`connect` may be called again.
        Harmless when not connected.
        """
        if self._closing or self._task is None:
            return
        self._generation += 1
        await self._stop_loop("disconnected by the client")
        self._task = None
        self._stopped = True
        self._release_waiters()
        self._set_state(ConnectionState.DISCONNECTED)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop for good; no reconnect follows.

        The state becomes CLOSED and iterators end; unlike :meth:`aclose`,
        subscriptions and pending handler tasks are left alone.
        """
        self._closing = True
        await self._stop_loop("closed by the client")
        self._finish(ConnectionState.CLOSED)

    async def aclose(self) -> None:
        """Close for good and release everything (final; idempotent).

        Closes like :meth:`close`, waits (up to ``close_timeout``) for
        coroutine handlers still running, then clears subscriptions, state
        watchers, iterators and the offline queue.
        """
        await self.close()
        if self._released:
            return
        self._released = True
        pending = {t for t in self._handler_tasks if t is not asyncio.current_task()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=self._config.close_timeout)
            for task in late:
                task.cancel()
        for callbacks in self._callbacks.values():
            callbacks.clear()
        self._callbacks.clear()
        self._state_watchers.clear()
        self._subscriptions.clear()
        self._streams.clear()
        self._outbox.clear()

    async def _stop_loop(self, reason: str) -> None:
        conn = self._conn
        if conn is not None:
            conn.end_reason = reason
            with contextlib.suppress(Exception):
                await conn.ws.close(1000, "client closing")
        task = self._task
        if task is asyncio.current_task():
            # Called from a callback, on the reader itself: the loop sees the
            # stop when the callback returns and ends on its own.
            return
        if task is not None and not task.done():
            # Let the loop see the close and report the disconnect; a loop
            # that is sleeping or dialling is simply cancelled.
            await asyncio.wait({task}, timeout=self._config.close_timeout if conn else 0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reconnect(self) -> None:
        """Reconnect now: cut a backoff wait short, or drop the connection and resume."""
        self._wake.set()
        conn = self._conn
        if conn is not None and conn.end_reason is None:
            conn.end_reason = "reconnect requested"
            with contextlib.suppress(Exception):
                await conn.ws.close(1000, "reconnecting")

    async def __aenter__(self) -> Self:
        """Connect (when ``config.auto_connect``) and return the client."""
        if self._config.auto_connect:
            await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """:meth:`aclose` the client."""
        await self.aclose()

    async def send(self, message: WebSocketMessage[Any]) -> bool:
        """Send ``message`` now, or queue it until the next connection.

        Returns whether it was sent now. When the queue is full,
        ``config.queue_overflow`` decides: drop the oldest queued message or
        this one (logged, counted in ``connection_info().dropped``), or raise
        :class:`~metricstream.exceptions.QueueFullError`.
        """
        frame = encode(message)
        conn = self._conn
        if conn is not None and conn.connected:
            try:
                await self._send_frame(conn, frame)
            except ConnectionClosed:
                pass  # Lost meanwhile: queue it for the next connection.
            else:
                return True
        self._enqueue(frame)
        return False

    async def set_filter(
        self,
        types: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
    ) -> SubscribePayload | None:
        """Replace the server-side filter (``None``: everything); the wire ``subscribe``.

        The filter holds across reconnects (it travels in the URL) and is also
        applied by the client itself. When connected to a native server, this
        waits for the server's ``subscribed`` answer and returns it; otherwise
        returns ``None`` and the filter takes effect on the next connection.
        A server that does not answer within the heartbeat timeout, or a
        connection lost meanwhile, also gives ``None``.
        """
        # Validate both before changing either: a bad ``models`` must not
        # leave a new ``types`` behind. ``_names`` also refuses a lone string.
        new_types = _names("types", types)
        new_models = _names("models", models)
        self._types, self._models = new_types, new_models
        self._filter = _filter_of(new_types, new_models)
        conn = self._conn
        if conn is None or not conn.connected:
            return None
        # A filtered stream has gaps by design, and a widened one starts with
        # one: neither may trigger a resync on this connection.
        conn.gap_check = False
        if conn.dialect is Dialect.FAKEAI:
            for frame in self._adapter.subscribe_frames(self._models):
                await self._send_frame(conn, frame)
            return None
        message: WebSocketMessage[Any] = (
            make_message(MessageType.UNSUBSCRIBE, None)
            if self._types is None and self._models is None
            else make_message(MessageType.SUBSCRIBE, self.filter)
        )
        waiter: asyncio.Future[SubscribePayload | None]
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters.append(waiter)
        try:
            await self._send_frame(conn, encode(message))
            async with asyncio.timeout(self._config.heartbeat_timeout):
                return await waiter
        except (ConnectionClosed, TimeoutError):
            logger.info("no answer to subscribe; the filter applies from the next connection")
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._ack_waiters.remove(waiter)

    async def clear_filter(self) -> SubscribePayload | None:
        """Remove the filter, everything from now on; the wire ``unsubscribe``."""
        return await self.set_filter(None, None)

    # ------------------------------------------------------- connection loop

    async def _run(self, generation: int) -> None:
        try:
            while not self._stop_requested(generation):
                retry = await self._connect_once()
                if self._stop_requested(generation):
                    break
                if retry is CloseAction.FATAL or not self._config.reconnect:
                    self._finish(
                        ConnectionState.ERROR
                        if retry is CloseAction.FATAL
                        else ConnectionState.CLOSED
                    )
                    return
                delay: float | None
                if retry is CloseAction.RESET_AND_RETRY and not self._immediate_retry_used:
                    # At once, but only once in a row: a server that keeps
                    # closing us at once gets the backoff like anyone else.
                    self._immediate_retry_used = True
                    delay = 0.0
                else:
                    delay = self._backoff.next_delay()
                if delay is None:
                    self._last_error = (
                        f"gave up after {self._backoff.attempt} reconnect attempts"
                        + (f" ({self._last_error})" if self._last_error else "")
                    )
                    logger.error("%s", self._last_error)
                    self._call(self._handlers.on_max_reconnect_attempts_reached)
                    self._finish(ConnectionState.ERROR)
                    return
                self._set_state(ConnectionState.RECONNECTING)
                if self._config.debug:
                    logger.debug("reconnect attempt %d in %.3f s", self._backoff.attempt, delay)
                self._call(self._handlers.on_reconnecting, self._backoff.attempt, delay)
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            self._release_waiters()

    def _url(self) -> str:
        params: dict[str, str | None] = {
            "types": ",".join(self._types) if self._types is not None else None,
            "models": ",".join(self._models) if self._models is not None else None,
            "batch": "1" if self._config.batch else None,
            "token": self._config.token if self._config.token_in_query else None,
        }
        tracker = self._tracker
        if (
            self._config.resume
            and tracker.last_sequence is not None
            and self._dialect is not Dialect.FAKEAI
        ):
            params["since"] = str(tracker.last_sequence)
            params["epoch"] = tracker.epoch
        return build_url(self._config.url, params)

    async def _connect_once(self) -> CloseAction:
        config = self._config
        if self._state is not ConnectionState.RECONNECTING:
            self._set_state(ConnectionState.CONNECTING)
        headers = dict(config.headers or {})
        if config.token is not None and not config.token_in_query:
            headers["Authorization"] = f"Bearer {config.token}"
        extra: dict[str, Any] = {}
        if config.ssl is not None:
            extra["ssl"] = config.ssl
        if config.protocols is not None:
            extra["subprotocols"] = list(config.protocols)
        try:
            ws = await connect(
                self._url(),
                additional_headers=headers,
                **extra,
                open_timeout=config.open_timeout,
                close_timeout=config.close_timeout,
                # Liveness is the protocol's heartbeat, which both dialects
                # answer; protocol-level pings would be a second, weaker timer.
                ping_interval=None,
                ping_timeout=None,
                max_size=config.max_message_size * _OVERSIZE_CEILING,
                # Frames are small JSON: deflate costs more CPU and memory than
                # it saves (docs/performance.md).
                compression=None,
                user_agent_header=f"metricstream/{__version__}",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            retry = handshake_action(status)
            message = f"handshake rejected with HTTP {status}"
            self._error(
                ConnectionRejectedError(message, code=status), fatal=retry is CloseAction.FATAL
            )
            return retry
        except InvalidURI as exc:
            self._error(ConfigError(f"invalid url: {exc}"), fatal=True)
            return CloseAction.FATAL
        except (OSError, TimeoutError, WebSocketException) as exc:
            self._error(
                StreamConnectionError(
                    f"cannot connect to {redact_url(config.url)}: {str(exc) or type(exc).__name__}"
                )
            )
            return CloseAction.RETRY
        if config.debug:
            logger.debug("handshake done (subprotocol %s)", ws.subprotocol)
        return await self._serve(ws)

    async def _serve(self, ws: ClientConnection) -> CloseAction:
        dialect = None if self._config.dialect is Dialect.AUTO else self._config.dialect
        conn = _Connection(ws, dialect)
        self._conn = conn
        code: int | None = None
        reason = ""
        try:
            await self._read(conn)
        except ConnectionClosed as exc:
            # The server's close frame if it sent one; else ours, when the
            # client failed the connection itself (1009: frame too big).
            frame = exc.rcvd if exc.rcvd is not None else exc.sent
            if frame is not None:
                code, reason = frame.code, frame.reason
            if exc.rcvd is None and exc.sent is not None and exc.sent.code == 1009:
                self._parse_errors += 1
                logger.warning(
                    "a frame exceeded %d times max_message_size; reconnecting", _OVERSIZE_CEILING
                )
        finally:
            if self._conn is conn:
                self._conn = None
            if (keepalive := conn.keepalive) is not None:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            ws.transport.abort()  # no-op when closed; frees a dead socket at once
            self._release_waiters()
        return self._after_close(conn, code, reason)

    def _after_close(self, conn: _Connection, code: int | None, reason: str) -> CloseAction:
        if conn.resync:
            retry = CloseAction.RESET_AND_RETRY
            why = conn.end_reason or "resync"
        elif conn.end_reason is not None:
            retry = CloseAction.RETRY
            why = conn.end_reason
        else:
            retry = close_action(code)
            why = (
                f"closed with code {code}" + (f" ({reason})" if reason else "")
                if code is not None
                else "connection lost"
            )
        if conn.connected:
            self._disconnected_at = time.time()
            self._call(self._handlers.on_disconnect, why)
        if self._closing or conn.end_reason == "disconnected by the client":
            return CloseAction.RETRY
        if retry is CloseAction.FATAL:
            assert code is not None
            self._error(
                ConnectionRejectedError(f"server rejected the client: {why}", code=code), fatal=True
            )
        else:
            self._last_error = why
            logger.info("disconnected: %s", why)
        return retry

    async def _read(self, conn: _Connection) -> None:
        """Read and handle frames until the connection ends.

        Returns after a resync was requested; otherwise ends by raising
        ``ConnectionClosed``.
        """
        ws = conn.ws
        while True:
            if conn.connected:
                frame = await ws.recv(decode=False)
            else:
                # Until a first valid message makes the connection CONNECTED
                # (and starts the keepalive), each frame must come within the
                # heartbeat timeout.
                try:
                    async with asyncio.timeout(self._config.heartbeat_timeout):
                        frame = await ws.recv(decode=False)
                except TimeoutError:
                    conn.end_reason = "no first message within the heartbeat timeout"
                    ws.transport.abort()
                    raise ConnectionClosed(None, None) from None
            self._bytes_received += len(frame)
            if len(frame) > self._config.max_message_size:
                self._parse_errors += 1
                logger.warning(
                    "skipped a %d-byte frame (max_message_size is %d)",
                    len(frame),
                    self._config.max_message_size,
                )
                if self._config.debug:
                    logger.debug("raw oversized frame starts: %r", frame[:_RAW_LOG_LIMIT])
                continue
            for message in self._decode(conn, frame):
                if not conn.connected:
                    self._connect(conn)
                await self._handle(conn, message)
                if conn.resync:
                    # Stop here: frames still buffered on this connection
                    # would be judged against the position being abandoned.
                    await ws.close(1000, "resync")
                    return

    # ------------------------------------------------------------- decoding

    def _decode(self, conn: _Connection, frame: bytes) -> list[WebSocketMessage[Any]]:
        if conn.dialect is None:
            conn.dialect = Dialect.FAKEAI if is_fakeai_greeting(frame) else Dialect.NATIVE
        if self._dialect is not conn.dialect:
            self._dialect = conn.dialect
            logger.debug("speaking the %s dialect", conn.dialect.value)
        try:
            if conn.dialect is Dialect.FAKEAI:
                return self._adapter.adapt(frame)
            return decode_frame(frame)
        except ProtocolError as exc:
            if conn.dialect is Dialect.NATIVE and frame.lstrip()[:1] == b"[":
                return self._decode_batch_leniently(frame)
            self._invalid(exc, frame)
            return []

    def _decode_batch_leniently(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        # One bad message must not take its whole batch down: the good ones
        # are applied, the bad one is skipped (and shows up as a gap).
        try:
            items = _raw_list_decoder.decode(frame)
        except (msgspec.MsgspecError, RecursionError) as exc:
            self._invalid(ProtocolError(f"invalid frame: {exc}"), frame)
            return []
        messages = []
        for item in items:
            try:
                messages.append(decode(bytes(item)))
            except ProtocolError as exc:
                self._invalid(exc, bytes(item))
        return messages

    def _invalid(self, exc: ProtocolError, frame: bytes) -> None:
        self._parse_errors += 1
        logger.warning("skipped an invalid frame: %s", exc)
        if self._config.debug:
            logger.debug("raw invalid frame: %r", frame[:_RAW_LOG_LIMIT])

    # ------------------------------------------------------------- handling

    def _connect(self, conn: _Connection) -> None:
        """The first message arrived: the connection is CONNECTED."""
        conn.connected = True
        conn.keepalive = asyncio.create_task(self._keepalive(conn), name="metricstream-keepalive")
        conn.gap_check = (
            conn.dialect is Dialect.NATIVE
            and self._config.resume
            and self._types is None
            and self._models is None
        )
        first = self._connections == 0
        self._connections += 1
        self._connected_at = time.time()
        self._backoff.reset()
        self._immediate_retry_used = False
        self._set_state(ConnectionState.CONNECTED)
        assert self._connected_event is not None
        self._connected_event.set()
        self._connected_event = asyncio.Event()
        self._call(self._handlers.on_connect)
        if not first:
            self._call(self._handlers.on_reconnected)

    async def _handle(self, conn: _Connection, message: WebSocketMessage[Any]) -> None:
        mtype = message.type
        if not message.is_known:
            self._unknown_messages += 1
            logger.debug("skipped a message of unknown type %r", mtype)
            if self._config.debug:
                logger.debug("raw unknown message: %r", encode(message)[:_RAW_LOG_LIMIT])
            return
        if mtype is MessageType.INIT:
            if not self._start_epoch(conn, message):
                return
        elif mtype in STREAM_TYPES:
            if message.sequence is not None and not self._accept(conn, message.sequence):
                return
            if not self._wanted(message):
                return
        elif mtype is MessageType.PONG:
            self._pong(conn, message)
        elif mtype is MessageType.SUBSCRIBED:
            for waiter in self._ack_waiters:
                if not waiter.done():
                    waiter.set_result(message.data)
                    break
        elif mtype is MessageType.ERROR:
            logger.warning("the server reported an error: %s", message.data.message)
        await self._dispatch(conn, message)
        if self._outbox:
            # Queued sends go out once the connection proved itself with a
            # first message (normally the init), before anything newer.
            await self._flush_outbox(conn)

    def _start_epoch(self, conn: _Connection, message: WebSocketMessage[Any]) -> bool:
        metadata = message.metadata or {}
        epoch = metadata.get("epoch")
        resumed = metadata.get("resumed") is True
        epoch = epoch if isinstance(epoch, str) else None
        kept = self._tracker.start(epoch, message.sequence, resumed=resumed)
        if resumed and not kept:
            # The server offers to continue a stream we hold no position in:
            # the only safe state is a fresh snapshot.
            logger.warning("the server resumed a stream this client cannot continue; resyncing")
            self._tracker.reset()
            conn.resync = True
            conn.end_reason = "resync: unexpected resume"
            return False
        if kept:
            self._resumes += 1
        self._resumed = kept
        if not kept:
            logger.info("fresh snapshot from the server (epoch %s)", epoch)
        return True

    def _accept(self, conn: _Connection, sequence: int) -> bool:
        last = self._tracker.last_sequence
        if conn.gap_check and last is not None and sequence > last + 1:
            if self._gap_resync_from != last:
                self._gap_resync_from = last
                logger.warning(
                    "sequence gap: expected %d, got %d; resuming from %d", last + 1, sequence, last
                )
                conn.resync = True
                conn.end_reason = f"resync: sequence gap after {last}"
                return False
            logger.warning("sequence gap after %d persists after a resync; accepting it", last)
        result = self._tracker.observe(sequence)
        if not result.apply:
            logger.debug("dropped %s message %d", result.verdict.value, sequence)
        return result.apply

    def _wanted(self, message: WebSocketMessage[Any]) -> bool:
        return self._filter.accepts_message(message.type, message.data)

    def _pong(self, conn: _Connection, message: WebSocketMessage[Any]) -> None:
        sent = conn.pings.popleft() if conn.pings else None
        client_time = getattr(message.data, "client_time", None)
        if client_time is not None:
            self._latency = max(now_ms() - client_time, 0) / 1000
        elif sent is not None:
            self._latency = asyncio.get_running_loop().time() - sent

    async def _dispatch(self, conn: _Connection, message: WebSocketMessage[Any]) -> None:
        self._message_count += 1
        # Pongs are the client's own business (latency): only a callback that
        # asked for them by type sees them, so iterators carry data, not noise.
        broadcast = message.type is not MessageType.PONG
        callbacks = [
            *self._callbacks.get(message.type, ()),
            *(self._callbacks.get(ALL_TYPES, ()) if broadcast else ()),
        ]
        for callback in callbacks:
            try:
                result = callback(message.data, message)
                if inspect.isawaitable(result):
                    conn.busy = True
                    try:
                        await result
                    finally:
                        conn.busy = False
            except Exception:
                logger.exception("a %s callback failed", message.type)
        if broadcast:
            self._call(self._handlers.on_message, message)
        # Checked first: iterating a WeakSet (a copy under an iteration
        # guard) costs over a microsecond per message even when empty, and
        # most clients never open a ``messages()`` iterator.
        if not self._streams:
            return
        for stream in list(self._streams):
            if not stream.wants(message, broadcast=broadcast):
                continue
            if not stream.offer(message):
                conn.busy = True
                try:
                    await stream.put(message)
                finally:
                    conn.busy = False

    # -------------------------------------------------------------- sending

    async def _send_frame(self, conn: _Connection, frame: bytes) -> None:
        await conn.ws.send(frame, text=True)
        self._bytes_sent += len(frame)

    def _enqueue(self, frame: bytes) -> None:
        size = self._config.max_queue_size
        if len(self._outbox) >= size:
            policy = self._config.queue_overflow
            if policy is OverflowPolicy.RAISE:
                raise QueueFullError(f"offline queue full ({size} messages)")
            self._dropped += 1
            if policy is OverflowPolicy.DROP_NEWEST:
                logger.warning("offline queue full (%d): dropped the message being sent", size)
                return
            self._outbox.popleft()
            logger.warning("offline queue full (%d): dropped the oldest queued message", size)
        self._outbox.append(frame)

    async def _flush_outbox(self, conn: _Connection) -> None:
        while self._outbox:
            frame = self._outbox[0]
            await self._send_frame(conn, frame)
            self._outbox.popleft()

    async def _keepalive(self, conn: _Connection) -> None:
        """Send heartbeats; abandon the connection when the peer falls silent."""
        loop = asyncio.get_running_loop()
        interval = self._config.heartbeat_interval
        timeout = self._config.heartbeat_timeout
        next_beat = loop.time()
        probe_since: float | None = None  # when we started waiting for any frame
        seen = self._bytes_received
        while True:
            now = loop.time()
            wake = next_beat if probe_since is None else min(next_beat, probe_since + timeout)
            await asyncio.sleep(max(wake - now, 0))
            now = loop.time()
            if self._bytes_received != seen:
                seen = self._bytes_received
                probe_since = None
            if probe_since is not None and conn.busy:
                probe_since = now
            if probe_since is not None and now - probe_since >= timeout:
                conn.end_reason = f"no frame for {timeout:g} s after a heartbeat"
                logger.warning("abandoning a silent connection: %s", conn.end_reason)
                # Abort, not close: a dead peer never answers a closing handshake.
                conn.ws.transport.abort()
                return
            if now >= next_beat:
                if conn.dialect is Dialect.FAKEAI:
                    frame = FAKEAI_PING
                else:
                    frame = encode(
                        make_message(MessageType.HEARTBEAT, HeartbeatPayload(client_time=now_ms()))
                    )
                conn.pings.append(now)
                try:
                    async with asyncio.timeout(timeout):
                        await self._send_frame(conn, frame)
                except TimeoutError:
                    conn.end_reason = f"heartbeat not sent within {timeout:g} s"
                    conn.ws.transport.abort()
                    return
                except ConnectionClosed:
                    return
                if probe_since is None:
                    probe_since = now
                next_beat = now + interval

    # ------------------------------------------------------------- plumbing

    def _stop_requested(self, generation: int) -> bool:
        # A method, not the attribute: mypy would keep the attribute narrowed
        # to False across the await that close() interleaves with.
        return self._closing or generation != self._generation

    def _set_state(self, state: ConnectionState) -> None:
        old = self._state
        if state is old:
            return
        self._state = state
        if self._config.debug:
            logger.debug("state %s -> %s", old.value, state.value)
        self._call(self._handlers.on_state_change, old, state)
        for watcher in list(self._state_watchers):
            self._call(watcher, old, state)

    def _finish(self, state: ConnectionState) -> None:
        self._stopped = True
        self._set_state(state)
        for stream in list(self._streams):
            stream.close()
        self._release_waiters()

    def _release_waiters(self) -> None:
        for waiter in self._ack_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _error(self, exc: BaseException, *, fatal: bool = False) -> None:
        self._last_error = str(exc)
        if fatal:
            self._fatal = exc
            logger.error("%s", exc)
        else:
            logger.info("%s", exc)
        self._call(self._handlers.on_error, exc)

    def _raise_stopped(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        raise StreamConnectionError(f"client stopped: {self._last_error or self._state.value}")

    def _call(self, callback: Callable[..., object] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception:
            logger.exception("a client handler failed")
            return
        if inspect.isawaitable(result):
            # Scheduled, not awaited: a slow handler must not hold up the
            # reader (nor the heartbeat that the reader's silence would trip).
            task = asyncio.ensure_future(result)
            self._handler_tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._handler_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("a client handler failed", exc_info=exc)


def create_websocket_service(
    config: WebSocketConfig | str,
    handlers: EventHandlers | None = None,
    **handler_kwargs: Callable[..., object] | None,
) -> WebSocketService:
    """Build a :class:`WebSocketService` (the seed's factory).

    Like the seed's constructor, it starts connecting at once when
    ``config.auto_connect`` is set and an event loop is running in this
    thread; otherwise call ``await service.connect()`` (or use ``async with``).
    """
    service = WebSocketService(config, handlers, **handler_kwargs)
    if service.config.auto_connect:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return service
        service._begin()
    return service
