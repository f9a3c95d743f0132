"""How a subscriber's frames reach its connection: the :class:`FrameWriter` seam.

The hub decides *what* each subscriber gets (its outbox); a writer decides
*how* it leaves. Two implementations:

- :class:`AsgiWriter`: ASGI ``send``, awaited in an ordinary task that
  drains the outbox and ends when it is empty, so a ``send`` may use
  ``asyncio.timeout()``, ``current_task()`` or be cancelled like any
  coroutine. Works on any ASGI server.
- :class:`~metricstream.server.DirectWriter` (``_wire``): pre-framed bytes
  written straight to a uvicorn connection's transport, synchronously, with a
  task only while the transport is paused.

Both are called once per flush with a :class:`WriteContext`, which carries
the hub's counters, the per-subscriber bound and the bytes already built in
this flush (so identical outboxes are framed once for everyone).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ._registry import Subscriber
    from ._stats import HubStats
    from ._wire import EncodedFrame

__all__ = ["AsgiWriter", "FrameWriter", "SendText", "WriteContext"]

#: Sends one text frame; returns the (not yet started) send coroutine.
SendText = Callable[[str], Coroutine[Any, Any, None]]

# What a direct flush built for one subscriber, reusable for the next one
# holding the same frames: (batch, frames, wire bytes, payload bytes,
# messages, frames written).
Shared = tuple[bool, list["EncodedFrame"], bytes, int, int, int]


@dataclass(slots=True)
class WriteContext:
    """What every writer of one hub shares."""

    stats: HubStats
    max_buffer: int
    #: Bytes built in this flush, by (batch, first frame, frame count):
    #: several kinds of client (batch=1, plain, filtered) interleave in one
    #: flush, and one slot would rebuild at every change of kind.
    shared: dict[tuple[bool, int, int], Shared] = field(default_factory=dict)


class FrameWriter(Protocol):
    """Writes a subscriber's pending frames to its connection."""

    def pump(self, sub: Subscriber, ctx: WriteContext) -> None:
        """Write what ``sub`` has pending: now, or from a task of its own.

        Never awaits. Called on every flush that touched ``sub``, also while
        an earlier write is still under way (a writer that is busy then
        leaves the new frames to it). A connection that cannot be written any
        more is reported with ``sub.fail()``.
        """
        ...

    def buffer_size(self) -> int:
        """Bytes accepted below the outbox and not yet passed to the kernel."""
        ...


class AsgiWriter:
    """A :class:`FrameWriter` over ASGI ``send``, awaited in a real task.

    The task starts when frames are pending and ends when the outbox is
    empty: an idle connection holds no task. A flush that finds the task
    still writing earlier frames counts a send suspension (the client's
    transport is not keeping up).
    """

    __slots__ = ("_send",)

    def __init__(self, send: SendText) -> None:
        self._send = send

    def pump(self, sub: Subscriber, ctx: WriteContext) -> None:
        """Start the drain task, unless one is running already."""
        outbox = sub.outbox
        if outbox.task is not None:
            ctx.stats.send_suspensions += 1
            return
        if not outbox.frames:
            return
        outbox.task = asyncio.get_running_loop().create_task(self._drain(sub, ctx))

    def buffer_size(self) -> int:
        """ASGI hides the transport: only the frame in flight is known (``sub``)."""
        return 0

    async def _drain(self, sub: Subscriber, ctx: WriteContext) -> None:
        stats = ctx.stats
        outbox = sub.outbox
        try:
            # Not ``sub.open``: a closing subscriber still writes what it had
            # (an evicted or failed one has had its outbox cleared).
            while outbox.frames:
                text, size, count = outbox.take(sub.batch)
                outbox.inflight = size
                try:
                    await self._send(text)
                except Exception as exc:
                    sub.fail(exc)
                    return
                outbox.inflight = 0
                stats.messages_sent += count
                stats.frames_sent += 1
                stats.bytes_sent += size
            outbox.settle(ctx.max_buffer)
        finally:
            outbox.inflight = 0
            outbox.task = None
