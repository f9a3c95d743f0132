"""A blocking facade over :class:`WebSocketService`, for code without asyncio.

The asyncio client runs on a private event loop in a daemon thread; every
method hands a coroutine to that loop and waits for its result. Nothing of the
client's logic is repeated here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Generator, Iterable
from typing import Any, Self, TypeVar

from ..protocol import MessageType, SubscribePayload, WebSocketMessage
from ._client import Callback, Subscription, WebSocketService
from ._config import WebSocketConfig
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """A :class:`WebSocketService` for blocking code, started on construction::

        with SyncClient("ws://127.0.0.1:8765/metrics/stream") as client:
            client.wait_connected(timeout=10)
            for message in client.messages(timeout=30):
                print(message.type, message.data)

    Keyword arguments are the asyncio client's lifecycle handlers. Every
    callback (handlers, :meth:`subscribe`) runs on the client's own thread, so
    it must be quick and thread-safe; iterate :meth:`messages` to consume on
    the calling thread instead. ``timeout`` arguments are seconds; running out
    raises :class:`TimeoutError`.
    """

    def __init__(self, config: WebSocketConfig | str, **handlers: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="metricstream-sync-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._client = WebSocketService(config, **handlers)
        self._run(self._client.start())

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    async def _value(self, read: Callable[[], T]) -> T:
        # Reads happen on the loop's thread, between two of its steps, so a
        # snapshot is never half-updated.
        return read()

    @property
    def client(self) -> WebSocketService:
        """The asyncio client underneath (use it only from its loop)."""
        return self._client

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._client.state

    def connection_info(self) -> ConnectionInfo:
        """A snapshot of the connection statistics."""
        return self._run(self._value(self._client.connection_info))

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until CONNECTED (see :meth:`WebSocketService.wait_connected`)."""
        self._run(self._client.wait_connected(), timeout)

    def subscribe(self, message_type: MessageType | str, callback: Callback) -> Subscription:
        """Register ``callback(data, message)``; it runs on the client's thread."""

        async def register() -> Subscription:
            return self._client.subscribe(message_type, callback)

        return self._run(register())

    def messages(
        self, timeout: float | None = None
    ) -> Generator[WebSocketMessage[Any], None, None]:
        """Iterate over messages from now on; each wait is bounded by ``timeout``.

        Registration is immediate, so nothing is missed between this call and
        the first ``next()``. Iteration ends when the client is closed; the
        client stops waiting for this consumer once the generator is closed
        or dropped.
        """

        async def open_stream() -> MessageStream:
            return self._client.messages()

        return self._iterate(self._run(open_stream()), timeout)

    def _iterate(
        self, stream: MessageStream, timeout: float | None
    ) -> Generator[WebSocketMessage[Any], None, None]:
        try:
            while not self._closed:
                message = self._run(_next(stream), timeout)
                if message is None:
                    return
                yield message
        finally:
            if not self._closed:
                self._loop.call_soon_threadsafe(stream.close)

    def send(self, message: WebSocketMessage[Any], timeout: float | None = None) -> bool:
        """Send now or queue (see :meth:`WebSocketService.send`)."""
        return self._run(self._client.send(message), timeout)

    def set_filter(
        self,
        types: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
    ) -> SubscribePayload | None:
        """Replace the server-side filter (see :meth:`WebSocketService.set_filter`)."""
        return self._run(self._client.set_filter(types, models))

    def clear_filter(self) -> SubscribePayload | None:
        """Remove the server-side filter."""
        return self._run(self._client.clear_filter())

    def reconnect(self) -> None:
        """Reconnect now (see :meth:`WebSocketService.reconnect`)."""
        self._run(self._client.reconnect())

    def close(self) -> None:
        """Close the client and stop its thread; calling it twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _next(stream: MessageStream) -> WebSocketMessage[Any] | None:
    # None marks the end: StopAsyncIteration cannot cross the thread boundary.
    return await anext(stream, None)
