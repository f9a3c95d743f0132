"""The asyncio client: a thin adapter over the sans-I/O protocol session.

Every rule of the protocol — the dialect of a connection, decoding and frame
bounds, ``init`` and epochs, sequence verdicts and the gap resync, the filter
and how to ask for it, keepalive timing (the first message's deadline too),
what a close code means and how long to back off — is decided by
:class:`~metricstream.protocol.session.ClientSession`. This module owns what
a session cannot: the socket and the tasks, acting on the session's answers.
What it hands on lives beside it: dialling (``_dial.py``), the offline queue
and ``subscribe`` answers (``_outbox.py``), the heartbeat task
(``_keepalive.py``), the connection state and the lifecycle handlers
(``_lifecycle.py``), callbacks and iterators (``_dispatch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Self

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..exceptions import ClientClosedError
from ..protocol import (
    CloseAction,
    Decision,
    MessageType,
    Opened,
    Resync,
    SessionState,
    SubscribePayload,
    WebSocketMessage,
    encode,
)
from ._config import WebSocketConfig, _names, as_config, make_session, redact_url
from ._dial import DialFailure, dial
from ._dispatch import Dispatcher
from ._handlers import EventHandlers, merge_handlers
from ._keepalive import keep_alive
from ._lifecycle import Lifecycle
from ._outbox import Outbox
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
        self._config = config = as_config(config)
        self._out = Dispatcher(merge_handlers(handlers, handler_kwargs))
        self._life = Lifecycle(self._out, debug=config.debug)
        self._session = make_session(config, logger.log)
        self._outbox = Outbox(config.max_queue_size, config.queue_overflow)
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None  # while a connection is open
        self._keepalive: asyncio.Task[None] | None = None
        self._closing = False  # close() or aclose() was called: final
        self._released = False  # aclose() finished
        # Bumped by disconnect(): a connection loop of an older generation
        # winds down instead of reconnecting.
        self._generation = 0
        # Set by reconnect(): cut the current backoff wait short.
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ public

    @property
    def config(self) -> WebSocketConfig:
        """The configuration this client was built with."""
        return self._config

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._life.state

    @property
    def is_connected(self) -> bool:
        """Whether the client is CONNECTED."""
        return self._life.state is ConnectionState.CONNECTED

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
        return self._session.subscription

    def connection_info(self) -> ConnectionInfo:
        """A snapshot of the connection statistics (the seed's ``getConnectionInfo``)."""
        return self._life.info(self._session, self._outbox)

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
        return self._out.stream(types, size, ended=self._life.stopped)

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
        self._life.starting()
        self._session.start()
        self._wake.clear()
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
        assert self._task is not None
        await self._life.wait_connected(self._task, self._session)

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
            raise self._life.stop_error(self._session.last_error)

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
        self._outbox.release()
        self._life.stop(ConnectionState.DISCONNECTED, end_streams=False)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop for good; no reconnect follows.

        The state becomes CLOSED and iterators end; unlike :meth:`aclose`,
        subscriptions and pending handler tasks are left alone.
        """
        self._closing = True
        await self._stop_loop("closed by the client")
        self._life.stop(ConnectionState.CLOSED)
        self._outbox.release()

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
        self._outbox.pending.clear()

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
        if ws is not None and self._session.is_up:
            try:
                await self._outbox.send(ws, frame)
            except ConnectionClosed:
                pass  # Lost meanwhile: queue it for the next connection.
            else:
                return True
        self._outbox.put(frame)
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
        request = self._session.set_filter(_names("types", types), _names("models", models))
        ws = self._ws
        if ws is None or not request.frames:
            return None
        return await self._outbox.request(ws, request, self._config.heartbeat_timeout)

    async def clear_filter(self) -> SubscribePayload | None:
        """Remove the filter, everything from now on; the wire ``unsubscribe``."""
        return await self.set_filter(None, None)

    # ------------------------------------------------------- connection loop

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
                        self._life.gave_up(session.last_error)
                    failed = decision.state is SessionState.FAILED
                    self._life.stop(ConnectionState.ERROR if failed else ConnectionState.CLOSED)
                    return
                self._life.reconnecting(session.backoff.attempt, delay)
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            self._outbox.release()

    async def _connect_once(self) -> Decision:
        self._life.connecting()
        session = self._session
        # The session picks the server (failover); the adapter only dials.
        params = session.connect()
        target = self._config.endpoints[session.endpoint]
        ws = await dial(self._config, target, params, max_size=session.frame_ceiling)
        if isinstance(ws, DialFailure):
            decision = session.connect_failed(ws.error, ws.action)
            self._life.error(ws.error, fatal=ws.action is CloseAction.FATAL)
            return decision
        if self._config.debug:
            logger.debug("handshake done (subprotocol %s)", ws.subprotocol)
        return await self._serve(ws)

    async def _serve(self, ws: ClientConnection) -> Decision:
        session = self._session
        session.opened(asyncio.get_running_loop().time())
        self._ws = ws
        # Until the first message, the keepalive watches that it comes in time.
        self._start_keepalive(ws)
        code: int | None = None
        reason = ""
        ours = False
        try:
            await self._read(ws)
        except ConnectionClosed as exc:
            # The server's close frame if it sent one; else ours, when the
            # client failed the connection itself (1009: frame too big).
            frame = exc.rcvd if exc.rcvd is not None else exc.sent
            if frame is not None:
                code, reason, ours = frame.code, frame.reason, exc.rcvd is None
        finally:
            if self._ws is ws:
                self._ws = None
            if (keepalive := self._keepalive) is not None:
                self._keepalive = None
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            ws.transport.abort()  # no-op when closed; frees a dead socket at once
            self._outbox.release()
        decision = session.closed(code, reason, by_client=ours)
        if decision.was_open:
            self._life.disconnected(decision.reason)
        if decision.error is not None:
            self._life.error(decision.error, fatal=True)
        elif decision.action is not None:
            logger.info("disconnected: %s", decision.reason)
        return decision

    async def _read(self, ws: ClientConnection) -> None:
        """Read frames and act on the session's events until the connection
        ends (``ConnectionClosed``) or a resync was asked for (returns)."""
        session = self._session
        out = self._out
        outbox = self._outbox
        pending = outbox.pending
        busy = self._busy
        loop = asyncio.get_running_loop()
        while True:
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
                        outbox.answered(event.data)
                    await out.deliver(event, busy)
                    if pending:
                        # Queued sends go out once the connection proved
                        # itself with a first message, before anything newer.
                        await outbox.flush(ws)

    def _opened(self, ws: ClientConnection, *, first: bool) -> None:
        # The keepalive slept until the first message's deadline: restarted,
        # it sends the first heartbeat now.
        self._start_keepalive(ws)
        self._life.connected(first=first)

    def _start_keepalive(self, ws: ClientConnection) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        beat = keep_alive(self._session, ws, self._outbox, self._config.heartbeat_timeout)
        self._keepalive = asyncio.create_task(beat, name="metricstream-keepalive")

    def _busy(self, busy: bool) -> None:
        self._session.busy = busy

    # ------------------------------------------------------------- plumbing

    def _stop_requested(self, generation: int) -> bool:
        # A method, not the attribute: mypy would keep the attribute narrowed
        # to False across the await that close() interleaves with.
        return self._closing or generation != self._generation


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
