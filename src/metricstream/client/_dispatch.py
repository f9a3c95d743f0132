"""Where a client's delivered messages and state changes go.

:class:`Dispatcher` owns everything the application registered: message
callbacks (:class:`Subscription`), state watchers, ``messages()`` iterators
and the lifecycle handlers. The connection code hands it each delivered
message and each state change; it never touches the network.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..exceptions import ConfigError
from ..protocol import MessageType, WebSocketMessage
from ._handlers import EventHandlers
from ._state import ConnectionState
from ._stream import MessageStream
from ._subscription import ALL_TYPES, STATE_CHANGES, Callback, Subscription

__all__ = ["Dispatcher"]

logger = logging.getLogger("metricstream.client")

StateWatcher = Callable[[ConnectionState, ConnectionState], object]


class Dispatcher:
    """Callbacks, state watchers, iterators and handlers of one client."""

    def __init__(self, handlers: EventHandlers) -> None:
        #: The lifecycle handlers (fields may be replaced at any time).
        self.handlers = handlers
        self._callbacks: dict[str, list[Callback]] = {}
        self._watchers: list[StateWatcher] = []
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._streams: weakref.WeakSet[MessageStream] = weakref.WeakSet()
        # Tasks of coroutine handlers: kept referenced until done (asyncio
        # holds tasks only weakly), awaited by release().
        self._tasks: set[asyncio.Future[Any]] = set()

    def subscribe(self, message_type: MessageType | str, callback: Callback) -> Subscription:
        """Register a message callback (see ``WebSocketService.subscribe``)."""
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
        """Remove a subscription by id; returns whether it existed."""
        if isinstance(subscription_id, Subscription):
            subscription_id = subscription_id.id
        subscription = self._subscriptions.get(subscription_id)
        return subscription is not None and subscription._cancel()

    def watch_state(self, callback: StateWatcher) -> Subscription:
        """Register a state watcher (see ``WebSocketService.watch_state``)."""
        self._watchers.append(callback)
        return Subscription(
            self._watchers,
            callback,
            id=next(self._ids),
            type=STATE_CHANGES,
            registry=self._subscriptions,
        )

    def stream(
        self, types: Iterable[MessageType | str] | None, size: object, *, ended: bool
    ) -> MessageStream:
        """A new ``messages()`` iterator (already ended when ``ended``)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"maxsize must be a positive integer, got {size!r}")
        if isinstance(types, str):
            types = (types,)
        wanted = frozenset(str(t) for t in types) if types is not None else None
        stream = MessageStream(size, wanted)
        if ended:
            stream.close()
        self._streams.add(stream)
        return stream

    async def deliver(self, message: WebSocketMessage[Any], busy: Callable[[bool], None]) -> None:
        """Hand one message to its callbacks, ``on_message`` and the iterators.

        ``busy(True)`` / ``busy(False)`` bracket every wait on the
        application (a coroutine callback, a full iterator): silence then is
        ours, not the peer's.
        """
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
                    busy(True)
                    try:
                        await result
                    finally:
                        busy(False)
            except Exception:
                logger.exception("a %s callback failed", message.type)
        if broadcast:
            self.call(self.handlers.on_message, message)
        # Checked first: iterating a WeakSet (a copy under an iteration
        # guard) costs over a microsecond per message even when empty, and
        # most clients never open a ``messages()`` iterator.
        if not self._streams:
            return
        for stream in list(self._streams):
            if not stream.wants(message, broadcast=broadcast):
                continue
            if not stream.offer(message):
                busy(True)
                try:
                    await stream.put(message)
                finally:
                    busy(False)

    def state_changed(self, old: ConnectionState, new: ConnectionState) -> None:
        """Tell ``on_state_change`` and every watcher."""
        self.call(self.handlers.on_state_change, old, new)
        for watcher in list(self._watchers):
            self.call(watcher, old, new)

    def end_streams(self) -> None:
        """End every iterator (the client stopped for good)."""
        for stream in list(self._streams):
            stream.close()

    def call(self, callback: Callable[..., object] | None, *args: Any) -> None:
        """Run a handler: a plain one inline, a coroutine one as its own task."""
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
            self._tasks.add(task)
            task.add_done_callback(self._handler_done)

    def _handler_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("a client handler failed", exc_info=exc)

    async def release(self, grace: float) -> None:
        """Wait (up to ``grace`` seconds) for running coroutine handlers, cancel the
        late ones, and forget every registration."""
        pending = {t for t in self._tasks if t is not asyncio.current_task()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
        for callbacks in self._callbacks.values():
            callbacks.clear()
        self._callbacks.clear()
        self._watchers.clear()
        self._subscriptions.clear()
        self._streams.clear()
