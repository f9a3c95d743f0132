"""A client's connection state as the application sees it.

:class:`Lifecycle` holds the seed's :class:`ConnectionState`, when the client
connected and disconnected and why it stopped, and fires the lifecycle
handlers and state watchers (through the :class:`Dispatcher`) on each change;
the connection code only says what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..exceptions import MetricStreamError, StreamConnectionError
from ..protocol import ClientSession
from ._dispatch import Dispatcher
from ._outbox import Outbox
from ._state import ConnectionInfo, ConnectionState

__all__ = ["Lifecycle"]

logger = logging.getLogger("metricstream.client")


class Lifecycle:
    """One client's connection state, its times, and the handlers they fire."""

    def __init__(self, out: Dispatcher, *, debug: bool) -> None:
        self._out = out
        self._debug = debug
        self.state = ConnectionState.DISCONNECTED
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        #: The error that stopped the client for good (a rejection).
        self.fatal: MetricStreamError | None = None
        #: Whether the connection loop ended, for whatever reason.
        self.stopped = False
        self._connected = asyncio.Event()

    def set(self, state: ConnectionState) -> None:
        """Change the state, telling ``on_state_change`` and the watchers."""
        old = self.state
        if state is old:
            return
        self.state = state
        if self._debug:
            logger.debug("state %s -> %s", old.value, state.value)
        self._out.state_changed(old, state)

    def starting(self) -> None:
        """A connection loop starts (anew): forget why the last one stopped."""
        self.stopped = False
        self.fatal = None
        self._connected = asyncio.Event()

    def stop(self, state: ConnectionState, *, end_streams: bool = True) -> None:
        """The connection loop ended in ``state``; ``messages()`` iterators end
        with it unless the client may connect again (``end_streams=False``)."""
        self.stopped = True
        self.set(state)
        if end_streams:
            self._out.end_streams()

    def connecting(self) -> None:
        """An attempt starts: CONNECTING, unless it is a RECONNECTING one."""
        if self.state is not ConnectionState.RECONNECTING:
            self.set(ConnectionState.CONNECTING)

    def connected(self, *, first: bool) -> None:
        """A connection proved itself: CONNECTED, ``on_connect``, ``on_reconnected``."""
        self.connected_at = time.time()
        self.set(ConnectionState.CONNECTED)
        self._connected.set()
        self._connected = asyncio.Event()
        self._out.call(self._out.handlers.on_connect)
        if not first:
            self._out.call(self._out.handlers.on_reconnected)

    def disconnected(self, reason: str) -> None:
        """An established connection ended: ``on_disconnect``."""
        self.disconnected_at = time.time()
        self._out.call(self._out.handlers.on_disconnect, reason)

    def reconnecting(self, attempt: int, delay: float) -> None:
        """Attempt ``attempt`` comes after ``delay`` seconds: RECONNECTING."""
        self.set(ConnectionState.RECONNECTING)
        if self._debug:
            logger.debug("reconnect attempt %d in %.3f s", attempt, delay)
        self._out.call(self._out.handlers.on_reconnecting, attempt, delay)

    def gave_up(self, why: str | None) -> None:
        """The reconnect attempts ran out."""
        logger.error("%s", why)
        self._out.call(self._out.handlers.on_max_reconnect_attempts_reached)

    def error(self, exc: MetricStreamError, *, fatal: bool = False) -> None:
        """An attempt failed (logged at INFO) or the client was rejected (ERROR): ``on_error``."""
        if fatal:
            self.fatal = exc
            logger.error("%s", exc)
        else:
            logger.info("%s", exc)
        self._out.call(self._out.handlers.on_error, exc)

    def stop_error(self, last_error: str | None) -> MetricStreamError:
        """The error that says why the client stopped on its own."""
        if self.fatal is not None:
            return self.fatal
        return StreamConnectionError(f"client stopped: {last_error or self.state.value}")

    async def wait_connected(self, task: asyncio.Task[None], session: ClientSession) -> None:
        """Wait until CONNECTED, or raise :meth:`stop_error` once ``task`` (the loop) ended."""
        while self.state is not ConnectionState.CONNECTED:
            if task.done():
                raise self.stop_error(session.last_error)
            waiter = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()

    def info(self, session: ClientSession, outbox: Outbox) -> ConnectionInfo:
        """A snapshot of the connection statistics (the seed's ``getConnectionInfo``)."""
        tracker = session.tracker
        return ConnectionInfo(
            state=self.state,
            connected_at=self.connected_at,
            disconnected_at=self.disconnected_at,
            reconnect_attempts=session.backoff.attempt,
            last_error=session.last_error,
            latency=session.latency,
            message_count=session.message_count,
            bytes_received=session.bytes_received,
            bytes_sent=outbox.bytes_sent,
            epoch=tracker.epoch,
            last_sequence=tracker.last_sequence,
            duplicates=tracker.duplicates,
            out_of_order=tracker.out_of_order,
            gaps=tracker.gaps,
            parse_errors=session.parse_errors,
            queued=len(outbox.pending),
            dropped=outbox.dropped,
            resumed=session.resumed,
            dialect=session.dialect,
            connections=session.connections,
            resumes=session.resumes,
            missed=tracker.missed,
            unknown_messages=session.unknown_messages,
        )
