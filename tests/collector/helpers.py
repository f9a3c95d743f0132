"""Test doubles of the collector tests: a recording publisher and a manual clock.

The publisher is not the thing under test: it stands where the stream hub
would, keeping what it is given.
"""

from __future__ import annotations

import threading
from typing import Any

from metricstream.protocol import MessageType, WebSocketMessage

__all__ = ["ManualClock", "RecordingPublisher"]


class RecordingPublisher:
    """Keeps every published message, and the thread that published it."""

    def __init__(self) -> None:
        self.messages: list[WebSocketMessage[Any]] = []
        self.threads: set[int] = set()

    def publish(self, message: WebSocketMessage[Any]) -> None:
        self.messages.append(message)
        self.threads.add(threading.get_ident())

    def of_type(self, mtype: MessageType) -> list[WebSocketMessage[Any]]:
        return [m for m in self.messages if m.type == mtype]

    def types(self) -> set[str]:
        return {m.type for m in self.messages}


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
