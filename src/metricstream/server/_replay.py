"""The replay log: the recent stream, kept so that a reconnecting client can resume.

:class:`ReplayLog` is the interface the hub needs; :class:`MemoryReplayLog` is
the single-process implementation, a ring buffer bounded by message count and
by age. Every log has an *epoch*: an opaque string that changes whenever the
log starts afresh (a new process, a wiped store), so that a ``since`` offset
from an older life of the stream is never mistaken for one of this life.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..exceptions import ConfigError, PublishError
from ..protocol import WebSocketMessage
from ._wire import EncodedFrame

__all__ = ["LogEntry", "MemoryReplayLog", "ReplayLog", "new_epoch"]


def new_epoch() -> str:
    """A fresh, practically unique epoch string (16 hex digits)."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One published stream message, as the log keeps it.

    ``frame`` is the message encoded once: every client that is sent this
    message (live or replayed) is sent these very bytes. The message Struct
    itself is not kept (the snapshot folds it in separately): a replay needs
    only the frame, and a subscriber's filter only the ``type`` and, for
    model-scoped types, the ``model``.
    """

    sequence: int
    type: str
    model: str | None
    frame: EncodedFrame

    @classmethod
    def of(cls, message: WebSocketMessage[Any], frame: EncodedFrame) -> LogEntry:
        """The entry of a published ``message`` (its ``sequence`` set) and its frame."""
        if message.sequence is None:
            raise PublishError("a logged message must have a sequence")
        model = getattr(message.data, "model", None)
        # ``type`` as given: a ``MessageType`` member is shared by every
        # entry, where ``str()`` of it would be a new string per entry.
        return cls(message.sequence, message.type, model if isinstance(model, str) else None, frame)

    @property
    def size(self) -> int:
        """Bytes of the encoded message (what buffer bounds count)."""
        return self.frame.size


@runtime_checkable
class ReplayLog(Protocol):
    """What the hub needs from a replay log.

    Methods are synchronous because the hub publishes synchronously on the
    event loop thread; a log backed by a remote store keeps a local mirror of
    the part it serves replays from.
    """

    @property
    def epoch(self) -> str:
        """The epoch of the stream this log holds."""
        ...

    def append(self, entry: LogEntry) -> None:
        """Add the newest entry; its sequence is one more than the previous."""
        ...

    def entries_after(self, sequence: int) -> list[LogEntry] | None:
        """Every entry with a sequence greater than ``sequence``, in order.

        ``None`` when the log no longer holds all of them (or ``sequence`` is
        beyond the newest entry): a resume from there is impossible.
        """
        ...

    def __len__(self) -> int:
        """How many entries the log holds now."""
        ...


class MemoryReplayLog:
    """A :class:`ReplayLog` in memory: a ring buffer bounded by count and age.

    ``max_entries`` caps the number of messages kept; ``max_age`` (seconds)
    drops messages older than that, so a quiet stream does not pin hours-old
    messages and a busy one does not keep more than ``max_entries``. ``epoch``
    defaults to a fresh random one, so a new process is a new epoch. ``clock``
    is a monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_age: float = 300.0,
        epoch: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be at least 1, got {max_entries}")
        if not max_age > 0:
            raise ConfigError(f"max_age must be positive, got {max_age}")
        self._entries: deque[LogEntry] = deque(maxlen=max_entries)
        # When each entry was appended, in step with ``_entries``.
        self._times: deque[float] = deque(maxlen=max_entries)
        self._max_age = max_age
        self._epoch = epoch if epoch is not None else new_epoch()
        self._clock = clock
        # Sequence of the newest entry ever appended (0: none yet).
        self._last = 0

    @property
    def epoch(self) -> str:
        """The epoch of this log (fixed for its lifetime)."""
        return self._epoch

    @property
    def max_entries(self) -> int:
        """The count bound."""
        maxlen = self._entries.maxlen
        assert maxlen is not None
        return maxlen

    @property
    def max_age(self) -> float:
        """The age bound, in seconds."""
        return self._max_age

    def append(self, entry: LogEntry) -> None:
        """Add the newest entry (the deque drops the oldest past the count bound)."""
        self._entries.append(entry)
        self._times.append(self._clock())
        self._last = entry.sequence
        self._expire()

    def entries_after(self, sequence: int) -> list[LogEntry] | None:
        """Entries after ``sequence``, or ``None`` if any of them is gone."""
        self._expire()
        if sequence > self._last or sequence < 0:
            return None
        if sequence == self._last:
            return []
        entries = self._entries
        if not entries or entries[0].sequence > sequence + 1:
            return None
        # Sequences in the log are contiguous, so the position is arithmetic.
        start = sequence + 1 - entries[0].sequence
        return [entries[i] for i in range(start, len(entries))]

    def _expire(self) -> None:
        times = self._times
        if not times:
            return
        cutoff = self._clock() - self._max_age
        while times and times[0] < cutoff:
            times.popleft()
            self._entries.popleft()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return (
            f"MemoryReplayLog(epoch={self._epoch!r}, entries={len(self._entries)}, "
            f"max_entries={self.max_entries}, max_age={self._max_age})"
        )
