"""Test doubles of the collector tests: a recording publisher and a manual clock.

The publisher is not the thing under test: it stands where the stream hub
would, keeping what it is given.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from metricstream.protocol import MessageType, WebSocketMessage
from tests.support import scaled

__all__ = ["ManualClock", "RecordingPublisher"]


class RecordingPublisher:
    """Keeps every published message, and the thread that published it."""

    def __init__(self) -> None:
        self.messages: list[WebSocketMessage[Any]] = []
        self.threads: set[int] = set()
        # Created by the first wait_for, inside the loop; publish() runs on it.
        self._changed: asyncio.Event | None = None

    def publish(self, message: WebSocketMessage[Any]) -> None:
        self.messages.append(message)
        self.threads.add(threading.get_ident())
        if self._changed is not None:
            self._changed.set()

    def of_type(self, mtype: MessageType) -> list[WebSocketMessage[Any]]:
        return [m for m in self.messages if m.type == mtype]

    def types(self) -> set[str]:
        return {m.type for m in self.messages}

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        """Wait until ``condition()`` holds, re-checking after each publish."""
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(scaled(within)):
            while not condition():
                self._changed.clear()
                # Also re-check now and then: conditions may not depend on publishes.
                try:
                    async with asyncio.timeout(0.05):
                        await self._changed.wait()
                except TimeoutError:
                    pass


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
