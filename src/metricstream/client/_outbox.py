"""What a client sends: the offline queue, the bytes sent, and the
``subscribe`` requests waiting for the server's answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..exceptions import QueueFullError
from ..protocol import FilterRequest, SubscribePayload
from ._config import OverflowPolicy

__all__ = ["Outbox"]

logger = logging.getLogger("metricstream.client")


class Outbox:
    """Sends frames on a connection, and keeps them while there is none.

    The queue holds at most ``size`` frames; when it is full, ``policy``
    drops the oldest or the newest (logged, counted in :attr:`dropped`) or
    raises :class:`~metricstream.exceptions.QueueFullError`.
    """

    def __init__(self, size: int, policy: OverflowPolicy) -> None:
        self._size = size
        self._policy = policy
        #: The frames waiting for a connection, oldest first.
        self.pending: deque[bytes] = deque()
        self.dropped = 0
        self.bytes_sent = 0
        self._waiters: list[asyncio.Future[SubscribePayload | None]] = []

    async def send(self, ws: ClientConnection, frame: bytes) -> None:
        """Send one text frame now (raises ``ConnectionClosed`` if it cannot)."""
        await ws.send(frame, text=True)
        self.bytes_sent += len(frame)

    def put(self, frame: bytes) -> None:
        """Queue a frame for the next connection."""
        if len(self.pending) >= self._size:
            if self._policy is OverflowPolicy.RAISE:
                raise QueueFullError(f"offline queue full ({self._size} messages)")
            self.dropped += 1
            if self._policy is OverflowPolicy.DROP_NEWEST:
                logger.warning(
                    "offline queue full (%d): dropped the message being sent", self._size
                )
                return
            self.pending.popleft()
            logger.warning("offline queue full (%d): dropped the oldest queued message", self._size)
        self.pending.append(frame)

    async def flush(self, ws: ClientConnection) -> None:
        """Send the queued frames in order; one that fails stays queued."""
        pending = self.pending
        while pending:
            await self.send(ws, pending[0])
            pending.popleft()

    async def request(
        self, ws: ClientConnection, request: FilterRequest, within: float
    ) -> SubscribePayload | None:
        """Send a filter request; when the server answers it, wait (up to
        ``within`` seconds) for its ``subscribed`` and return it.

        ``None`` when it is not answered, no answer comes in time or the
        connection is lost first.
        """
        if not request.answered:
            with contextlib.suppress(ConnectionClosed):
                for frame in request.frames:
                    await self.send(ws, frame)
            return None
        waiter: asyncio.Future[SubscribePayload | None]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            for frame in request.frames:
                await self.send(ws, frame)
            async with asyncio.timeout(within):
                return await waiter
        except (ConnectionClosed, TimeoutError):
            logger.info("no answer to subscribe; the filter applies from the next connection")
            return None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def answered(self, payload: SubscribePayload) -> None:
        """The server's ``subscribed`` answers the oldest request waiting."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(payload)
                break

    def release(self) -> None:
        """No answer can come any more (the connection ended): ``None`` to every request."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
