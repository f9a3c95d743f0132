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

from ..exceptions import ClientClosedError
from ..protocol import MessageType, SubscribePayload, WebSocketMessage
from ._client import Callback, Subscription, WebSocketService
from ._config import WebSocketConfig
from ._handlers import EventHandlers
from ._state import ConnectionInfo, ConnectionState
from ._stream import MessageStream

__all__ = ["SyncWebSocketService"]

T = TypeVar("T")


class SyncWebSocketService:
    """A :class:`WebSocketService` for blocking code (scripts, notebooks)::

        with SyncWebSocketService("ws://127.0.0.1:8765/metrics/stream") as client:
            client.wait_connected(timeout=10)
            for message in client.messages(timeout=30):
                print(message.type, message.data)

    The same API as the asyncio client without ``await``. It connects on
    construction when ``config.auto_connect`` is set (the default), else on
    :meth:`connect`. Every callback (handlers, :meth:`subscribe`) runs on the
    client's own thread, so it must be quick and thread-safe; iterate
    :meth:`messages` to consume on the calling thread instead. ``timeout``
    arguments are seconds; running out raises :class:`TimeoutError`.
    :meth:`close` is final: it releases the client and stops its thread.
    """

    def __init__(
        self,
        config: WebSocketConfig | str,
        handlers: EventHandlers | None = None,
        **handler_kwargs: Callable[..., object] | None,
    ) -> None:
        self._client = WebSocketService(config, handlers, **handler_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="metricstream-sync-client", daemon=True
        )
        self._thread.start()
        self._closed = False
        if self._client.config.auto_connect:
            self.connect()

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coroutine.close()
            raise ClientClosedError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def _on_loop(self, call: Callable[[], T], timeout: float | None = None) -> T:
        async def run() -> T:
            # On the loop's thread, between two of its steps: a snapshot is
            # never half-updated and the client's lists are never raced.
            return call()

        return self._run(run(), timeout)

    @property
    def client(self) -> WebSocketService:
        """The asyncio client underneath (use it only from its loop)."""
        return self._client

    @property
    def config(self) -> WebSocketConfig:
        """The configuration."""
        return self._client.config

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        return self._client.state

    @property
    def is_connected(self) -> bool:
        """Whether the client is CONNECTED."""
        return self._client.is_connected

    def connection_info(self) -> ConnectionInfo:
        """A snapshot of the connection statistics."""
        if self._closed:
            return self._client.connection_info()
        return self._on_loop(self._client.connection_info)

    def connect(self) -> None:
        """Start connecting in the background (see :meth:`WebSocketService.connect`)."""
        self._run(self._client.connect())

    def disconnect(self) -> None:
        """Close on purpose, no reconnect (see :meth:`WebSocketService.disconnect`)."""
        self._run(self._client.disconnect())

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until CONNECTED (see :meth:`WebSocketService.wait_connected`)."""
        self._run(self._client.wait_connected(), timeout)

    def subscribe(self, message_type: MessageType | str, callback: Callback) -> Subscription:
        """Register ``callback(data, message)``; it runs on the client's thread."""
        return self._on_loop(lambda: self._client.subscribe(message_type, callback))

    def unsubscribe(self, subscription_id: int | Subscription) -> bool:
        """Remove a subscription by id; returns whether it existed."""
        return self._on_loop(lambda: self._client.unsubscribe(subscription_id))

    def watch_state(
        self, callback: Callable[[ConnectionState, ConnectionState], object]
    ) -> Subscription:
        """Call ``callback(old, new)`` (on the client's thread) on each state change."""
        return self._on_loop(lambda: self._client.watch_state(callback))

    def messages(
        self, types: Iterable[MessageType | str] | None = None, timeout: float | None = None
    ) -> Generator[WebSocketMessage[Any], None, None]:
        """Iterate over messages from now on (optionally only ``types``).

        Each wait is bounded by ``timeout``. Registration is immediate, so
        nothing is missed between this call and the first ``next()``.
        Iteration ends when the client is closed; the client stops waiting
        for this consumer once the generator is closed or dropped.
        """
        wanted = list(types) if types is not None else None
        stream = self._on_loop(lambda: self._client.messages(wanted))
        return self._iterate(stream, timeout)

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
        """Close for good, release everything and stop the thread; harmless twice."""
        if self._closed:
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._closed = True
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
