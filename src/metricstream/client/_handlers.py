"""The seed's lifecycle handlers, as one object a service is built with."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError
from ..protocol import WebSocketMessage
from ._state import ConnectionState

__all__ = ["EventHandlers", "merge_handlers"]


@dataclasses.dataclass(kw_only=True, slots=True)
class EventHandlers:
    """Lifecycle callbacks of a :class:`WebSocketService` (all optional).

    Each may be a plain function or a coroutine function. A plain one runs
    inline; a coroutine is scheduled as its own task, so a slow handler never
    holds up the reader. An exception in either is logged (logger
    ``metricstream.client``) and never stops the connection. The fields are
    read at each event, so a handler may be set or replaced at any time.
    """

    on_connect: Callable[[], object] | None = None
    """A connection was established (its first message arrived)."""
    on_disconnect: Callable[[str], object] | None = None
    """An established connection ended; the argument says why."""
    on_error: Callable[[BaseException], object] | None = None
    """A connection attempt failed, or the server rejected the client."""
    on_message: Callable[[WebSocketMessage[Any]], object] | None = None
    """Every message delivered (every known type but ``pong``), after subscribers."""
    on_reconnecting: Callable[[int, float], object] | None = None
    """A reconnect attempt (1, 2, …) will be made after ``delay`` seconds."""
    on_reconnected: Callable[[], object] | None = None
    """A connection other than the first was established."""
    on_max_reconnect_attempts_reached: Callable[[], object] | None = None
    """``max_reconnect_attempts`` failed in a row: the client stopped (state ERROR)."""
    on_state_change: Callable[[ConnectionState, ConnectionState], object] | None = None
    """The connection state changed from ``old`` to ``new``."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and not callable(value):
                raise ConfigError(f"{field.name} must be callable or None, got {value!r}")


def merge_handlers(
    handlers: EventHandlers | None, overrides: dict[str, Callable[..., object] | None]
) -> EventHandlers:
    """``handlers`` (or none) with the handlers given as keyword arguments on top.

    Raises :class:`~metricstream.exceptions.ConfigError` for anything but an
    :class:`EventHandlers`, an unknown handler name or a value not callable.
    """
    if handlers is not None and not isinstance(handlers, EventHandlers):
        raise ConfigError(f"handlers must be an EventHandlers, got {handlers!r}")
    handlers = handlers if handlers is not None else EventHandlers()
    if not overrides:
        return handlers
    try:
        return dataclasses.replace(handlers, **overrides)
    except TypeError as exc:
        raise ConfigError(f"unknown handler: {exc}") from None
