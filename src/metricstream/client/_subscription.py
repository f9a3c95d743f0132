"""Subscriptions: registered callbacks and the handles that remove them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Final, Self

from ..protocol import WebSocketMessage

__all__ = ["ALL_TYPES", "STATE_CHANGES", "Callback", "Subscription"]

#: A message callback, called as ``callback(data, message)`` (the seed's
#: signature): a plain function, or a coroutine function that the reader awaits
#: before it reads on, so every callback sees messages strictly in order.
Callback = Callable[[Any, WebSocketMessage[Any]], object]

#: The message type that :meth:`WebSocketService.subscribe` takes for "every type".
ALL_TYPES: Final = "*"

#: The ``type`` of a :class:`Subscription` made by :meth:`WebSocketService.watch_state`.
STATE_CHANGES: Final = "state"


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
