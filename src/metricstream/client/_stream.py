"""A bounded, closable buffer between the client's reader and one consumer."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final, Self

from ..protocol import WebSocketMessage

__all__ = ["MessageStream"]


class MessageStream:
    """Messages of one :meth:`WebSocketService.messages` consumer, in order.

    An async iterator over a bounded buffer. When the buffer is full the
    client's reader waits for the consumer (back-pressure all the way to the
    server, which resumes a client it had to drop) instead of dropping a
    message. Iteration ends once the client is closed and the buffer drained.
    Use it as ``async with client.messages() as stream`` or just iterate; a
    stream that is closed or garbage collected stops holding the reader up.
    """

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_closed",
        "_maxsize",
        "_not_empty",
        "_not_full",
        "types",
    )

    def __init__(self, maxsize: int, types: frozenset[str] | None = None) -> None:
        self._buffer: deque[WebSocketMessage[Any]] = deque()
        self._maxsize = maxsize
        self.types: Final = types
        """The message types this stream carries (``None``: all but ``pong``)."""
        self._closed = False
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    @property
    def closed(self) -> bool:
        """Whether no more messages will be added."""
        return self._closed

    def __len__(self) -> int:
        return len(self._buffer)

    def wants(self, message: WebSocketMessage[Any], *, broadcast: bool = True) -> bool:
        """Whether ``message`` belongs in this stream.

        ``broadcast`` is false for messages only an explicit type asks for (``pong``).
        """
        if self.types is None:
            return broadcast
        return message.type in self.types

    def offer(self, message: WebSocketMessage[Any]) -> bool:
        """Add ``message`` if there is room; ``False`` when the buffer is full."""
        if self._closed:
            return True  # A closed stream takes (and discards) everything.
        if len(self._buffer) >= self._maxsize:
            return False
        self._buffer.append(message)
        self._not_empty.set()
        if len(self._buffer) >= self._maxsize:
            self._not_full.clear()
        return True

    async def put(self, message: WebSocketMessage[Any]) -> None:
        """Add ``message``, waiting while the buffer is full."""
        while not self.offer(message):
            await self._not_full.wait()

    def close(self) -> None:
        """End the stream: buffered messages are still delivered, then iteration stops."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WebSocketMessage[Any]:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._not_empty.clear()
            await self._not_empty.wait()
        message = self._buffer.popleft()
        self._not_full.set()
        return message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        self._buffer.clear()
