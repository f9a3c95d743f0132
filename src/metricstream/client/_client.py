"""The asyncio client: a thin adapter over the sans-I/O protocol session.

Every rule of the protocol — the dialect of a connection, decoding, ``init``
and epochs, sequence verdicts and the gap resync, the filter, keepalive
timing, what a close code means and how long to back off — is decided by
:class:`~metricstream.protocol.session.ClientSession`. This module owns what
a session cannot: the socket (``websockets``), the tasks and timers, the
callbacks, iterators and handlers, and the offline send queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from .._version import __version__
from ..exceptions import (
    ClientClosedError,
    ConfigError,
    ConnectionRejectedError,
    MetricStreamError,
    QueueFullError,
    StreamConnectionError,
)
from ..protocol import (
    ClientSession,
    CloseAction,
    Decision,
    MessageType,
    Opened,
    Resync,
    SessionState,
    SubscribePayload,
    WebSocketMessage,
    encode,
    handshake_action,
    make_message,
)
from ._config import Dialect, OverflowPolicy, WebSocketConfig, _names, redact_url
from ._dispatch import Dispatcher
from ._fakeai import FAKEAI_PING, FakeAIAdapter, is_fakeai_greeting
from ._handlers import EventHandlers
from ._policy import build_url
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream
from ._subscription import ALL_TYPES, STATE_CHANGES, Callback, Subscription

__all__ = [
    "ALL_TYPES",
    "STATE_CHANGES",
    "Callback",
    "Subscription",
    "WebSocketService",
    "create_websocket_service",
]

logger = logging.getLogger("metricstream.client")

# A frame above max_message_size is read and skipped, up to this many times
# the limit; beyond it the connection is failed (1009) so that no single frame
# can make the client buffer without bound.
_OVERSIZE_CEILING: Final = 4


class _FakeAI:
    """The FakeAI dialect, as the session adapts it."""

    name = Dialect.FAKEAI.value
    ping = FAKEAI_PING

    def __init__(self) -> None:
        self._adapter = FakeAIAdapter()

    def recognises(self, frame: bytes) -> bool:
        return is_fakeai_greeting(frame)

    def adapt(self, frame: bytes) -> list[WebSocketMessage[Any]]:
        return self._adapter.adapt(frame)


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
        handlers = handlers if handlers is not None else EventHandlers()
        if handler_kwargs:
            try:
                handlers = dataclasses.replace(handlers, **handler_kwargs)
            except TypeError as exc:
                raise ConfigError(f"unknown handler: {exc}") from None
        self._out = Dispatcher(handlers)

        config = self._config
        self._session = ClientSession(
            backoff=config.make_backoff(),
            resume=config.resume,
            reconnect=config.reconnect,
            batch=config.batch,
            token=config.token if config.token_in_query else None,
            types=config.types,
            models=config.models,
            dialect=config.dialect.value,
            foreign=_FakeAI(),
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
            max_message_size=config.max_message_size,
            debug=config.debug,
            log=logger.log,
            endpoints=len(config.endpoints),
        )
        self._outbox: deque[bytes] = deque()
        self._ack_waiters: list[asyncio.Future[SubscribePayload | None]] = []

        self._state = ConnectionState.DISCONNECTED
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None  # while a connection is open
        self._keepalive: asyncio.Task[None] | None = None
        self._closing = False  # close() or aclose() was called: final
        self._released = False  # aclose() finished
        self._stopped = False  # the connection loop ended, for whatever reason
        # Bumped by disconnect(): a connection loop of an older generation
        # winds down instead of reconnecting.
        self._generation = 0
        self._fatal: BaseException | None = None
        self._connected_event: asyncio.Event | None = None
        # Set by reconnect(): cut the current backoff wait short.
        self._wake = asyncio.Event()
        self._connected_at: float | None = None
        self._disconnected_at: float | None = None
        self._bytes_sent = 0
        self._dropped = 0

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
        return self._out.handlers

    @property
    def latency(self) -> float | None:
        """The last heartbeat round trip, in seconds."""
        return self._session.latency

    @property
    def filter(self) -> SubscribePayload:
        """The current subscription filter (``None`` fields: everything)."""
        types, models = self._session.types, self._session.models
        return SubscribePayload(
            types=list(types) if types is not None else None,
            models=list(models) if models is not None else None,
        )

    def connection_info(self) -> ConnectionInfo:
        """A snapshot of the connection statistics (the seed's ``getConnectionInfo``)."""
        session = self._session
        tracker = session.tracker
        return ConnectionInfo(
            state=self._state,
            connected_at=self._connected_at,
            disconnected_at=self._disconnected_at,
            reconnect_attempts=session.backoff.attempt,
            last_error=session.last_error,
            latency=session.latency,
            message_count=session.message_count,
            bytes_received=session.bytes_received,
            bytes_sent=self._bytes_sent,
            epoch=tracker.epoch,
            last_sequence=tracker.last_sequence,
            duplicates=tracker.duplicates,
            out_of_order=tracker.out_of_order,
            gaps=tracker.gaps,
            parse_errors=session.parse_errors,
            queued=len(self._outbox),
            dropped=self._dropped,
            resumed=session.resumed,
            dialect=session.dialect,
            connections=session.connections,
            resumes=session.resumes,
            missed=tracker.missed,
            unknown_messages=session.unknown_messages,
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
        return self._out.subscribe(message_type, callback)

    def unsubscribe(self, subscription_id: int | Subscription) -> bool:
        """Remove the subscription with this id; returns whether it existed."""
        return self._out.unsubscribe(subscription_id)

    def watch_state(
        self, callback: Callable[[ConnectionState, ConnectionState], object]
    ) -> Subscription:
        """Call ``callback(old, new)`` on every connection state change.

        Unlike ``EventHandlers.on_state_change`` (one handler, set at
        construction) any number of watchers may come and go.
        """
        return self._out.watch_state(callback)

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
        return self._out.stream(types, size, ended=self._stopped)

    async def connect(self) -> None:
        """Start connecting, and keep the connection up, in the background.

        Idempotent while a connection loop runs. Returns at once and never
        raises for an unreachable or refusing server: failures go to
        ``on_error`` and the reconnect policy (use :meth:`wait_connected` to
        wait). After :meth:`disconnect`, or after the client gave up (state
        ERROR), it starts anew with a fresh backoff. Raises
        :class:`~metricstream.exceptions.ClientClosedError` after
        :meth:`aclose` / :meth:`close`.
        """
        self.connect_nowait()

    def connect_nowait(self) -> None:
        """:meth:`connect` for synchronous code running on the event loop.

        Raises :class:`~metricstream.exceptions.ClientClosedError` after
        :meth:`aclose` / :meth:`close`, and :class:`RuntimeError` when no
        event loop runs in this thread.
        """
        if self._closing:
            raise ClientClosedError("a closed client cannot be connected again")
        task = self._task
        if task is not None and not task.done():
            return
        self._stopped = False
        self._fatal = None
        self._session.start()
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
        server rejected the client for good and
        :class:`~metricstream.exceptions.StreamConnectionError` if the client
        stopped (closed, or out of attempts) first.
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
        the server rejected the client and
        :class:`~metricstream.exceptions.StreamConnectionError` when the reconnect
        attempts ran out.
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
        await self._out.release(self._config.close_timeout)
        self._outbox.clear()

    async def _stop_loop(self, reason: str) -> None:
        ws = self._ws
        self._session.stop(reason)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closing")
        task = self._task
        if task is asyncio.current_task():
            # Called from a callback, on the reader itself: the loop sees the
            # stop when the callback returns and ends on its own.
            return
        if task is not None and not task.done():
            # Let the loop see the close and report the disconnect; a loop
            # that is sleeping or dialling is simply cancelled.
            await asyncio.wait({task}, timeout=self._config.close_timeout if ws else 0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reconnect(self) -> None:
        """Reconnect now: cut a backoff wait short, or drop the connection and resume."""
        self._wake.set()
        ws = self._ws
        if ws is not None:
            self._session.abandon("reconnect requested")
            with contextlib.suppress(Exception):
                await ws.close(1000, "reconnecting")

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
        ws = self._ws
        if ws is not None and self._up:
            try:
                await self._send_frame(ws, frame)
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
        self._session.set_filter(new_types, new_models)
        ws = self._ws
        if ws is None or not self._up:
            return None
        if self._session.dialect == Dialect.FAKEAI:
            for frame in FakeAIAdapter.subscribe_frames(new_models):
                await self._send_frame(ws, frame)
            return None
        message: WebSocketMessage[Any] = (
            make_message(MessageType.UNSUBSCRIBE, None)
            if new_types is None and new_models is None
            else make_message(MessageType.SUBSCRIBE, self.filter)
        )
        waiter: asyncio.Future[SubscribePayload | None]
        waiter = asyncio.get_running_loop().create_future()
        self._ack_waiters.append(waiter)
        try:
            await self._send_frame(ws, encode(message))
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

    @property
    def _up(self) -> bool:
        # The open connection proved itself (its first message arrived).
        return self._session.state in (SessionState.STREAMING, SessionState.RESYNCING)

    async def _run(self, generation: int) -> None:
        session = self._session
        try:
            while not self._stop_requested(generation):
                decision = await self._connect_once()
                if self._stop_requested(generation):
                    break
                delay = decision.delay
                if delay is None:
                    if decision.gave_up:
                        logger.error("%s", session.last_error)
                        self._out.call(self.handlers.on_max_reconnect_attempts_reached)
                    failed = decision.state is SessionState.FAILED
                    self._finish(ConnectionState.ERROR if failed else ConnectionState.CLOSED)
                    return
                self._set_state(ConnectionState.RECONNECTING)
                attempt = session.backoff.attempt
                if self._config.debug:
                    logger.debug("reconnect attempt %d in %.3f s", attempt, delay)
                self._out.call(self.handlers.on_reconnecting, attempt, delay)
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            self._release_waiters()

    async def _connect_once(self) -> Decision:
        config = self._config
        if self._state is not ConnectionState.RECONNECTING:
            self._set_state(ConnectionState.CONNECTING)
        # The session picks the server (failover); the adapter only dials.
        params = self._session.connect()
        target = config.endpoints[self._session.endpoint]
        url = build_url(target, params)
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
                url,
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
            rejected = ConnectionRejectedError(
                f"handshake rejected with HTTP {status}", code=status
            )
            return self._failed(rejected, handshake_action(status))
        except InvalidURI as exc:
            return self._failed(ConfigError(f"invalid url: {exc}"), CloseAction.FATAL)
        except (OSError, TimeoutError, WebSocketException) as exc:
            reason = str(exc) or type(exc).__name__
            error = StreamConnectionError(f"cannot connect to {redact_url(target)}: {reason}")
            return self._failed(error, CloseAction.RETRY)
        if config.debug:
            logger.debug("handshake done (subprotocol %s)", ws.subprotocol)
        return await self._serve(ws)

    def _failed(self, error: MetricStreamError, action: CloseAction) -> Decision:
        decision = self._session.connect_failed(error, action)
        self._error(error, fatal=action is CloseAction.FATAL)
        return decision

    async def _serve(self, ws: ClientConnection) -> Decision:
        session = self._session
        session.opened()
        self._ws = ws
        code: int | None = None
        reason = ""
        try:
            await self._read(ws)
        except ConnectionClosed as exc:
            # The server's close frame if it sent one; else ours, when the
            # client failed the connection itself (1009: frame too big).
            frame = exc.rcvd if exc.rcvd is not None else exc.sent
            if frame is not None:
                code, reason = frame.code, frame.reason
            if exc.rcvd is None and exc.sent is not None and exc.sent.code == 1009:
                session.parse_errors += 1
                logger.warning(
                    "a frame exceeded %d times max_message_size; reconnecting", _OVERSIZE_CEILING
                )
        finally:
            if self._ws is ws:
                self._ws = None
            if (keepalive := self._keepalive) is not None:
                self._keepalive = None
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            ws.transport.abort()  # no-op when closed; frees a dead socket at once
            self._release_waiters()
        decision = session.closed(code, reason)
        if decision.was_open:
            self._disconnected_at = time.time()
            self._out.call(self.handlers.on_disconnect, decision.reason)
        if decision.error is not None:
            self._error(decision.error, fatal=True)
        elif decision.action is not None:
            logger.info("disconnected: %s", decision.reason)
        return decision

    async def _read(self, ws: ClientConnection) -> None:
        """Read frames and act on the session's events until the connection
        ends (``ConnectionClosed``) or a resync was asked for (returns)."""
        session = self._session
        out = self._out
        busy = self._busy
        loop = asyncio.get_running_loop()
        awaiting = SessionState.AWAITING_INIT
        while True:
            if session.state is awaiting:
                # Until a first valid message proves the connection (and
                # starts the keepalive), each frame must come within the
                # heartbeat timeout.
                try:
                    async with asyncio.timeout(self._config.heartbeat_timeout):
                        frame = await ws.recv(decode=False)
                except TimeoutError:
                    session.abandon("no first message within the heartbeat timeout")
                    ws.transport.abort()
                    raise ConnectionClosed(None, None) from None
            else:
                frame = await ws.recv(decode=False)
            for event in session.receive(frame, loop.time()):
                if isinstance(event, Opened):
                    self._opened(ws, first=event.first)
                elif isinstance(event, Resync):
                    # Frames still buffered on this connection would be
                    # judged against the position being abandoned.
                    await ws.close(1000, "resync")
                    return
                else:
                    # A message to deliver: the hot path, inline (one
                    # coroutine less per message).
                    if event.type is MessageType.SUBSCRIBED:
                        self._acknowledged(event.data)
                    await out.deliver(event, busy)
                    if self._outbox:
                        # Queued sends go out once the connection proved
                        # itself with a first message, before anything newer.
                        await self._flush_outbox(ws)

    def _opened(self, ws: ClientConnection, *, first: bool) -> None:
        self._keepalive = asyncio.create_task(
            self._keepalive_loop(ws), name="metricstream-keepalive"
        )
        self._connected_at = time.time()
        self._set_state(ConnectionState.CONNECTED)
        assert self._connected_event is not None
        self._connected_event.set()
        self._connected_event = asyncio.Event()
        self._out.call(self.handlers.on_connect)
        if not first:
            self._out.call(self.handlers.on_reconnected)

    async def _keepalive_loop(self, ws: ClientConnection) -> None:
        """Send the heartbeats the session asks for; abort a silent connection."""
        session = self._session
        loop = asyncio.get_running_loop()
        timeout = self._config.heartbeat_timeout
        while True:
            tick = session.tick(loop.time())
            if tick.abandon is not None:
                logger.warning("abandoning a silent connection: %s", tick.abandon)
                # Abort, not close: a dead peer never answers a closing handshake.
                ws.transport.abort()
                return
            if tick.heartbeat is not None:
                try:
                    async with asyncio.timeout(timeout):
                        await self._send_frame(ws, tick.heartbeat)
                except TimeoutError:
                    session.abandon(f"heartbeat not sent within {timeout:g} s")
                    ws.transport.abort()
                    return
                except ConnectionClosed:
                    return
            await asyncio.sleep(max(tick.next_at - loop.time(), 0))

    def _acknowledged(self, payload: SubscribePayload) -> None:
        for waiter in self._ack_waiters:
            if not waiter.done():
                waiter.set_result(payload)
                break

    def _busy(self, busy: bool) -> None:
        self._session.busy = busy

    # -------------------------------------------------------------- sending

    async def _send_frame(self, ws: ClientConnection, frame: bytes) -> None:
        await ws.send(frame, text=True)
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

    async def _flush_outbox(self, ws: ClientConnection) -> None:
        while self._outbox:
            await self._send_frame(ws, self._outbox[0])
            self._outbox.popleft()

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
        self._out.state_changed(old, state)

    def _finish(self, state: ConnectionState) -> None:
        self._stopped = True
        self._set_state(state)
        self._out.end_streams()
        self._release_waiters()

    def _release_waiters(self) -> None:
        for waiter in self._ack_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _error(self, exc: MetricStreamError, *, fatal: bool = False) -> None:
        if fatal:
            self._fatal = exc
            logger.error("%s", exc)
        else:
            logger.info("%s", exc)
        self._out.call(self.handlers.on_error, exc)

    def _raise_stopped(self) -> None:
        if self._fatal is not None:
            raise self._fatal
        last = self._session.last_error or self._state.value
        raise StreamConnectionError(f"client stopped: {last}")


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
        service.connect_nowait()
    return service
