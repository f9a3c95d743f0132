"""The subscribers of a stream, each owning its bounded outbox, and the fan-out.

:class:`SubscriberRegistry` holds the attached :class:`Subscriber` objects.
:meth:`~SubscriberRegistry.fan_out` appends an entry's frame to the
:class:`Outbox` of every subscriber whose filter accepts it, evicting (4008)
any that goes over its byte bound, and schedules one flush per loop
iteration; the flush hands each touched outbox to its subscriber's
:class:`~metricstream.server._writers.FrameWriter`. Nothing here awaits a
client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final

from ..protocol import CloseCode, Filter
from ._stats import HubStats
from ._wire import DirectWriter, EncodedFrame, Transport, text_frame
from ._writers import FrameWriter, WriteContext

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["EVERYTHING", "Outbox", "Subscriber", "SubscriberRegistry"]

logger = logging.getLogger("metricstream.server")

#: The filter of every subscriber that asked for none; shared, so that the
#: fan-out recognises it by identity and skips the call.
EVERYTHING: Final = Filter()


class Outbox:
    """The frames waiting for one connection, and what the bound counts.

    ``held`` is what the bound applies to: the frames pending, the frame a
    writer is sending (``inflight``) and what the transport still buffers
    after a direct write (``written``, refreshed when it matters).
    ``credit`` lets the initial snapshot or replay exceed the bound once.
    """

    __slots__ = ("credit", "frames", "inflight", "size", "task", "written")

    def __init__(self) -> None:
        # A list, not a deque: an idle connection's outbox is empty, and an
        # empty list is a tenth of an empty deque's size.
        self.frames: list[EncodedFrame] = []
        #: Payload bytes of ``frames``.
        self.size = 0
        #: Bytes of the frame an ASGI send is writing.
        self.inflight = 0
        #: Direct writes: bytes left in the transport's buffer at the last look.
        self.written = 0
        self.credit = 0
        #: The writer's task while one runs for this outbox.
        self.task: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """Bytes the bound counts."""
        return self.size + self.inflight + self.written

    def push(self, frame: EncodedFrame) -> None:
        """Append one frame."""
        self.frames.append(frame)
        self.size += frame.size

    def settle(self, bound: int) -> None:
        """The backlog drained below ``bound``: the initial allowance is spent."""
        if self.size + self.written <= bound:
            self.credit = 0

    def clear(self) -> None:
        """Drop everything pending and stop the writer's task."""
        self.frames.clear()
        self.size = 0
        self.written = 0
        self.credit = 0
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    def take(self, batch: bool) -> tuple[str, int, int]:
        """The next ASGI frame to write: (text, bytes, messages in it)."""
        frames = self.frames
        if not batch:
            frame = frames[0]
            del frames[0]
            size = frame.size
            self.size -= size
            return frame.text, size, 1
        count = len(frames)
        # One decode for the whole array: frames keep only their wire bytes.
        text = "[" + b",".join([f.data for f in frames]).decode() + "]"
        size = self.size + count + 1
        frames.clear()
        self.size = 0
        return text, size, count

    def take_wire(self, batch: bool) -> tuple[list[EncodedFrame], bytes, int, int, int]:
        """Everything pending as wire bytes: (the frames taken, bytes, payload
        bytes, messages, frames).

        A plain subscriber gets its frames back to back in one write (one
        system call for the lot); a ``batch=1`` subscriber gets one array.
        The frame list itself is handed back (a fresh one replaces it), so
        that a flush can recognise other subscribers holding the very same
        frames and give them the same bytes (see ``DirectWriter.pump``).
        """
        frames = self.frames
        count = len(frames)
        size = self.size
        if count == 1:
            frame = frames[0]
            data = frame.wire if not batch else text_frame(b"[" + frame.data + b"]")
            written = 1
            size += 2 if batch else 0
        elif batch:
            data = text_frame(b"[" + b",".join([f.data for f in frames]) + b"]")
            size += count + 1
            written = 1
        else:
            data = b"".join([f.wire for f in frames])
            written = count
        self.frames = []
        self.size = 0
        return frames, data, size, count, written


class Subscriber:
    """One connection's view of the hub: its filter, its writer and its outbox.

    Created by :meth:`MetricsHub.attach`. ``closed`` resolves with the close
    code the connection should be closed with (4008 slow consumer, 1001 server
    going away, or whatever :meth:`request_close` was given), or ``None`` when
    the peer went away by itself.
    """

    __slots__ = (
        "_registry",
        "batch",
        "closed",
        "dirty",
        "filter",
        "open",
        "outbox",
        "transport",
        "writer",
    )

    def __init__(
        self,
        registry: SubscriberRegistry,
        writer: FrameWriter,
        *,
        filter: Filter,
        batch: bool,
        transport: Transport | None,
    ) -> None:
        self._registry = registry
        #: How this connection is written to (see ``_writers``).
        self.writer = writer
        #: What this connection wants (:meth:`Filter.accepts`).
        self.filter = EVERYTHING if filter.is_everything else filter
        self.batch = batch
        self.transport = transport
        #: The frames waiting for this connection.
        self.outbox = Outbox()
        self.dirty = False
        self.open = True
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    @property
    def direct(self) -> DirectWriter | None:
        """The direct writer, when frames bypass ASGI (see ``_wire``)."""
        writer = self.writer
        return writer if isinstance(writer, DirectWriter) else None

    @property
    def buffered_bytes(self) -> int:
        """Bytes waiting for this client: the outbox, a frame being sent, and
        (when the transport is known) the transport's write buffer."""
        size = self.outbox.size + self.outbox.inflight
        transport = self.transport
        if transport is not None and not transport.is_closing():
            size += transport.get_write_buffer_size()
        return size

    def set_filter(self, filter: Filter) -> None:
        """Replace the filter; applies to messages published from now on."""
        self.filter = EVERYTHING if filter.is_everything else filter

    def send_local(self, frame: str) -> None:
        """Queue a connection-local frame (pong, error, subscribed, ...)."""
        if self.open:
            self._registry.enqueue(self, EncodedFrame.of_text(frame))

    def request_close(self, code: int | None) -> None:
        """Ask the connection's owner to close with ``code`` (``None``: peer gone)."""
        self.open = False
        if not self.closed.done():
            self.closed.set_result(code)

    async def drain(self) -> None:
        """Wait until everything queued so far has been handed to the transport.

        Works after :meth:`request_close` too: a closing subscriber takes no
        new frames but still writes what it had, so that an ``error`` or the
        last messages before a shutdown go out ahead of the close frame.
        """
        outbox = self.outbox
        while outbox.frames or outbox.task is not None:
            task = outbox.task
            if task is not None:
                # Waits for the task to end without taking on its outcome.
                await asyncio.wait((task,))
            else:
                # The flush scheduled for these frames runs on the next
                # iteration of the loop.
                await asyncio.sleep(0)

    def fail(self, exc: BaseException | None) -> None:
        """The connection cannot be written any more (the ASGI server raises
        on a closed socket): stop writing; the endpoint sees the disconnect
        and detaches."""
        logger.debug("send failed, dropping subscriber: %r", exc)
        self.outbox.clear()
        self.request_close(None)


class SubscriberRegistry:
    """The attached subscribers, their bounds, and the flush that writes them."""

    def __init__(self, stats: HubStats, max_buffer: int) -> None:
        self._stats = stats
        self._max_buffer = max_buffer
        self._subscribers: set[Subscriber] = set()
        self._dirty: list[Subscriber] = []
        self._flush_handle: asyncio.Handle | None = None
        self._writing = WriteContext(stats, max_buffer)
        # Set whenever no subscriber is attached (close_all waits on it).
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._subscribers)

    def __iter__(self) -> Iterator[Subscriber]:
        return iter(list(self._subscribers))

    def new(
        self, writer: FrameWriter, *, filter: Filter, batch: bool, transport: Transport | None
    ) -> Subscriber:
        """A subscriber, not yet attached: fill its outbox, then :meth:`add` it."""
        return Subscriber(self, writer, filter=filter, batch=batch, transport=transport)

    def add(self, sub: Subscriber) -> None:
        """Attach ``sub``; what its outbox holds now may exceed the bound once."""
        sub.outbox.credit = sub.outbox.size
        self._subscribers.add(sub)
        self._empty.clear()

    def remove(self, sub: Subscriber) -> None:
        """Detach ``sub`` and drop whatever it had pending."""
        self._subscribers.discard(sub)
        if not self._subscribers:
            self._empty.set()
        sub.open = False
        sub.outbox.clear()
        if not sub.closed.done():
            sub.closed.set_result(None)

    def fan_out(
        self, loop: asyncio.AbstractEventLoop, mtype: str, model: str | None, frame: EncodedFrame
    ) -> None:
        """Append ``frame`` to every open subscriber whose filter accepts it."""
        size = frame.size
        limit = self._max_buffer
        dirty = self._dirty
        evicted: list[Subscriber] = []
        for sub in self._subscribers:
            if not sub.open:
                continue
            # The common unfiltered subscriber skips the call (fan-out is the
            # hot path); everyone else asks the protocol's one rule.
            filt = sub.filter
            if filt is not EVERYTHING and not filt.accepts(mtype, model):
                continue
            outbox = sub.outbox
            outbox.frames.append(frame)
            outbox.size += size
            if outbox.held > limit + outbox.credit and self._over_bound(sub):
                evicted.append(sub)
            elif not sub.dirty:
                sub.dirty = True
                dirty.append(sub)
        for sub in evicted:
            self._evict(sub)
        if dirty and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)

    def enqueue(self, sub: Subscriber, frame: EncodedFrame, *, bounded: bool = True) -> None:
        """Append one frame to one subscriber (a connection-local message)."""
        sub.outbox.push(frame)
        if bounded and self._over_bound(sub):
            self._evict(sub)
            return
        if not sub.dirty:
            sub.dirty = True
            self._dirty.append(sub)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def broadcast(self, frame: EncodedFrame) -> None:
        """Append one connection-local frame (a heartbeat) to every open subscriber."""
        for sub in list(self._subscribers):
            if sub.open:
                self.enqueue(sub, frame)

    async def close_all(self, code: int, grace: float) -> None:
        """Ask every connection to close with ``code``; wait up to ``grace``
        seconds until all are detached."""
        for sub in list(self._subscribers):
            sub.request_close(code)
        if self._subscribers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._empty.wait()

    def _over_bound(self, sub: Subscriber) -> bool:
        """Whether ``sub`` holds more than its bound, after refreshing the one
        figure that may be stale (what the transport still buffers)."""
        outbox = sub.outbox
        if outbox.written:
            outbox.written = sub.writer.buffer_size()
        return outbox.held > self._max_buffer + outbox.credit

    def _evict(self, sub: Subscriber) -> None:
        logger.info(
            "closing a slow consumer: %d bytes held (bound %d)", sub.outbox.held, self._max_buffer
        )
        self._stats.evictions += 1
        sub.outbox.clear()
        sub.request_close(CloseCode.SLOW_CONSUMER)

    def _flush(self) -> None:
        self._flush_handle = None
        dirty = self._dirty
        self._dirty = []
        writing = self._writing
        writing.shared.clear()
        try:
            for sub in dirty:
                sub.dirty = False
                sub.writer.pump(sub, writing)
        finally:
            # Only shared within one flush: do not pin the bytes afterwards.
            writing.shared.clear()
