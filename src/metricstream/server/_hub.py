"""The hub: one stream, its snapshot, its replay log, and the fan-out to clients.

Everything here runs on the event loop thread and nothing in the publish path
awaits: :meth:`MetricsHub.publish` numbers a message, encodes it once, logs it,
folds it into the snapshot and appends the same encoded text to the outbox of
every subscriber that wants it. A ``call_soon`` callback then flushes every
outbox touched in that loop iteration, so messages published together leave
together (one JSON array per flush for ``batch=1`` subscribers).

Writing
-------
Each message is encoded once into an :class:`EncodedFrame`, which keeps the
complete WebSocket frame only (the JSON bytes and text are derived on the
paths that need them). How a subscriber's outbox reaches its connection is
its :class:`~metricstream.server._writers.FrameWriter`'s business (see
``_writers``): pre-framed bytes written straight to uvicorn's transport
(:class:`DirectWriter`), or ASGI ``send`` awaited in an ordinary task that
lives while the outbox is not empty (:class:`AsgiWriter`). Either way a
stalled client stops at its byte bound and is closed with 4008.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from .._version import __version__
from ..exceptions import ConfigError, ProtocolError, PublishError
from ..protocol import (
    DEFAULT_SERVER_HEARTBEAT_INTERVAL,
    MODEL_SCOPED_TYPES,
    PAYLOAD_TYPES,
    STREAM_TYPES,
    CloseCode,
    CostUpdatePayload,
    ErrorUpdatePayload,
    HeartbeatPayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    decode,
    encode,
    make_message,
)
from ..protocol.filter import Filter
from ._replay import LogEntry, MemoryReplayLog, ReplayLog
from ._wire import DirectWriter, EncodedFrame, Transport, text_frame
from ._writers import AsgiWriter, FrameWriter, SendText, WriteContext

__all__ = ["DEFAULT_MAX_BUFFER_BYTES", "HubStats", "MetricsHub", "Subscriber"]

logger = logging.getLogger("metricstream.server")

#: Default bound of one subscriber's outbox, in bytes of pending frames.
DEFAULT_MAX_BUFFER_BYTES: Final = 512 * 1024

#: The filter of every subscriber that asked for none; shared, so that the
#: fan-out recognises it by identity and skips the call.
_EVERYTHING: Final = Filter()


def _filter_of(types: Iterable[str] | None, models: Iterable[str] | None) -> Filter:
    # As given, unvalidated: the hub serves in-process callers too, and an
    # empty collection is a filter that matches nothing, not "everything"
    # (the endpoint validates what comes off the wire, see Filter.of).
    if types is None and models is None:
        return _EVERYTHING
    return Filter(
        None if types is None else frozenset(types),
        None if models is None else frozenset(models),
    )


@dataclass(slots=True)
class HubStats:
    """Running totals of a hub, read by the Prometheus collector.

    Plain integers updated in place: the fan-out path pays no lock and no
    metric-library call per delivery.
    """

    published: int = 0
    messages_sent: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    evictions: int = 0
    #: Flushes that found a client's transport paused, or its writer still
    #: busy with earlier frames; zero while every client keeps up.
    send_suspensions: int = 0
    #: Connections on uvicorn's sans-I/O implementation that could not be
    #: written directly (its internals were not as expected): written
    #: through ASGI instead.
    direct_write_fallbacks: int = 0
    replay_hits: int = 0
    replay_misses: int = 0
    connections_opened: int = 0
    rejections: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        """Count a connection refused for ``reason``."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1


class Subscriber:
    """One connection's view of the hub: its filter and its bounded outbox.

    Created by :meth:`MetricsHub.attach`. ``closed`` resolves with the close
    code the connection should be closed with (4008 slow consumer, 1001 server
    going away, or whatever :meth:`request_close` was given), or ``None`` when
    the peer went away by itself.
    """

    __slots__ = (
        "_credit",
        "_hub",
        "_inflight",
        "_pending",
        "_pending_bytes",
        "_task",
        "_written",
        "batch",
        "closed",
        "dirty",
        "filter",
        "open",
        "transport",
        "writer",
    )

    def __init__(
        self,
        hub: MetricsHub,
        writer: FrameWriter,
        *,
        filter: Filter,
        batch: bool,
        transport: Transport | None,
    ) -> None:
        self._hub = hub
        #: How this connection is written to (see ``_writers``).
        self.writer = writer
        #: What this connection wants (:meth:`Filter.accepts`).
        self.filter = filter
        self.batch = batch
        self.transport = transport
        # A list, not a deque: an idle connection's outbox is empty, and an
        # empty list is a tenth of an empty deque's size.
        self._pending: list[EncodedFrame] = []
        self._pending_bytes = 0
        # Bytes of the frame a suspended send holds.
        self._inflight = 0
        # Direct writes: bytes left in the transport's buffer at the last look.
        self._written = 0
        # Extra allowance for the initial snapshot or replay (see MetricsHub.attach).
        self._credit = 0
        self._task: asyncio.Task[None] | None = None
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
        """Bytes waiting for this client: the outbox, a suspended frame, and
        (when the transport is known) the transport's write buffer."""
        size = self._pending_bytes + self._inflight
        transport = self.transport
        if transport is not None and not transport.is_closing():
            size += transport.get_write_buffer_size()
        return size

    def set_filter(self, filter: Filter) -> None:
        """Replace the filter; applies to messages published from now on."""
        self.filter = _EVERYTHING if filter.is_everything else filter

    def send_local(self, frame: str) -> None:
        """Queue a connection-local frame (pong, error, subscribed, ...)."""
        if self.open:
            self._hub._enqueue(self, EncodedFrame.of_text(frame))

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
        while self._pending or self._task is not None:
            task = self._task
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
        self._discard()
        self.request_close(None)

    def _discard(self) -> None:
        self._pending.clear()
        self._pending_bytes = 0
        self._written = 0
        self._credit = 0
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def _take(self) -> tuple[str, int, int]:
        """The next ASGI frame to write: (text, bytes, messages in it)."""
        pending = self._pending
        if not self.batch:
            frame = pending[0]
            del pending[0]
            size = frame.size
            self._pending_bytes -= size
            return frame.text, size, 1
        count = len(pending)
        # One decode for the whole array: frames keep only their wire bytes.
        text = "[" + b",".join([f.data for f in pending]).decode() + "]"
        size = self._pending_bytes + count + 1
        pending.clear()
        self._pending_bytes = 0
        return text, size, count

    def _take_wire(self) -> tuple[list[EncodedFrame], bytes, int, int, int]:
        """Everything pending as wire bytes: (the frames taken, bytes, payload
        bytes, messages, frames).

        A plain subscriber gets its frames back to back in one write (one
        system call for the lot); a ``batch=1`` subscriber gets one array.
        The outbox list itself is handed back (a fresh one replaces it), so
        that the flush can recognise other subscribers holding the very same
        frames and give them the same bytes (see ``MetricsHub._pump_direct``).
        """
        pending = self._pending
        count = len(pending)
        size = self._pending_bytes
        if count == 1:
            frame = pending[0]
            data = frame.wire if not self.batch else text_frame(b"[" + frame.data + b"]")
            frames = 1
            size += 2 if self.batch else 0
        elif self.batch:
            data = text_frame(b"[" + b",".join([f.data for f in pending]) + b"]")
            size += count + 1
            frames = 1
        else:
            data = b"".join([f.wire for f in pending])
            frames = count
        self._pending = []
        self._pending_bytes = 0
        return pending, data, size, count, frames


class MetricsHub:
    """The stream: numbering, snapshot, replay log and fan-out.

    ``publish()`` is synchronous and must be called on the event loop thread
    (the hub is the stream's single writer). Usable in-process from any asyncio
    code; the ASGI endpoint (:func:`create_router`) attaches one
    :class:`Subscriber` per WebSocket connection.

    ``recent_requests``/``recent_errors`` size the event history carried in
    ``init``; ``max_buffer_bytes`` bounds each subscriber's outbox;
    ``heartbeat_interval`` (seconds, ``None`` to disable) paces the server
    ``heartbeat`` sent to every subscriber.
    """

    def __init__(
        self,
        *,
        log: ReplayLog | None = None,
        recent_requests: int = 50,
        recent_errors: int = 20,
        max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES,
        heartbeat_interval: float | None = DEFAULT_SERVER_HEARTBEAT_INTERVAL,
        server_version: str = __version__,
    ) -> None:
        if recent_requests < 0 or recent_errors < 0:
            raise ConfigError("recent_requests and recent_errors must not be negative")
        if max_buffer_bytes < 1024:
            raise ConfigError(f"max_buffer_bytes must be at least 1024, got {max_buffer_bytes}")
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ConfigError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        self._log: ReplayLog = log if log is not None else MemoryReplayLog()
        self._sequence = 0
        self._max_buffer = max_buffer_bytes
        self._heartbeat_interval = heartbeat_interval
        self._server_version = server_version
        self._started = time.monotonic()
        self.stats = HubStats()
        self._writing = WriteContext(self.stats, max_buffer_bytes)
        # Snapshot state, derived from the published stream itself.
        self._metrics: MetricsUpdatePayload | None = None
        self._models: dict[str, ModelUpdatePayload] = {}
        self._rate_limits: dict[str, RateLimitUpdatePayload] = {}
        self._costs: CostUpdatePayload | None = None
        self._kv_cache: KVCacheUpdatePayload | None = None
        self._system: SystemUpdatePayload | None = None
        self._recent_requests: deque[RequestUpdatePayload] = deque(maxlen=recent_requests)
        self._recent_errors: deque[ErrorUpdatePayload] = deque(maxlen=recent_errors)
        # Encoded unfiltered snapshot, reused until the next publish.
        self._snapshot_cache: tuple[int, EncodedFrame] | None = None
        self._subscribers: set[Subscriber] = set()
        self._dirty: list[Subscriber] = []
        self._flush_handle: asyncio.Handle | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = False
        # Set whenever no subscriber is attached (close_all waits on it).
        self._empty = asyncio.Event()
        self._empty.set()

    # -- properties ---------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The epoch of the stream (the replay log's)."""
        return self._log.epoch

    @property
    def sequence(self) -> int:
        """The sequence of the newest published message (0: none yet)."""
        return self._sequence

    @property
    def log(self) -> ReplayLog:
        """The replay log."""
        return self._log

    @property
    def connection_count(self) -> int:
        """How many subscribers are attached now."""
        return len(self._subscribers)

    @property
    def max_buffer_bytes(self) -> int:
        """The per-subscriber outbox bound, in bytes."""
        return self._max_buffer

    @property
    def closing(self) -> bool:
        """Whether :meth:`close_all` has been called."""
        return self._closing

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        """The attached subscribers (a copy)."""
        return frozenset(self._subscribers)

    @property
    def uptime(self) -> float:
        """Seconds since the hub was created."""
        return time.monotonic() - self._started

    # -- publishing ---------------------------------------------------------

    def publish(self, message: WebSocketMessage[Any]) -> WebSocketMessage[Any]:
        """Publish one stream message; returns it with its ``sequence`` set.

        Raises :class:`~metricstream.exceptions.PublishError` (a
        ``ValueError``) for a type that is not a stream type (state or
        event), a payload that does not fit its type (checked with the same
        decoder the clients use: ranges, NaN, missing fields), or a message
        larger than the per-client buffer bound; a dict payload is
        converted to the type's Struct; ``RuntimeError`` when called off the
        event loop thread while clients are attached (from another thread,
        use ``loop.call_soon_threadsafe(hub.publish, message)``). Nothing
        changes when it raises. Never awaits any client.
        """
        try:
            mtype = MessageType(message.type)
        except ValueError:
            raise PublishError(f"cannot publish unknown message type {message.type!r}") from None
        if mtype not in STREAM_TYPES:
            raise PublishError(f"cannot publish {mtype.value!r}: not a stream message type")
        data = message.data
        payload_type = PAYLOAD_TYPES[mtype]
        assert payload_type is not None
        if not isinstance(data, payload_type):
            try:
                data = msgspec.convert(data, payload_type, from_attributes=True)
            except msgspec.ValidationError as exc:
                raise PublishError(f"invalid {mtype.value} payload: {exc}") from exc
        # Fails (RuntimeError) before anything changes when called off the
        # event loop thread while clients are attached.
        loop = asyncio.get_running_loop() if self._subscribers else None
        seq = self._sequence + 1
        message = WebSocketMessage(
            type=mtype,
            timestamp=message.timestamp,
            data=data,
            sequence=seq,
            metadata=message.metadata,
        )
        encoded = encode(message)
        # Structs are not validated when built in Python, so a payload with a
        # percentage of 150 or a NaN latency would reach every client, which
        # rejects it, and stay in the snapshot that every new client's init
        # carries. Check the bytes once, here, with the clients' own decoder.
        try:
            decode(encoded)
        except ProtocolError as exc:
            raise PublishError(f"cannot publish: {exc}") from None
        frame = EncodedFrame(encoded)
        # A message bigger than a client's whole buffer would evict every
        # client at once, and no resume could ever carry it.
        if frame.size > self._max_buffer:
            raise PublishError(
                f"cannot publish a {frame.size}-byte {mtype.value} message: "
                f"larger than the per-client buffer ({self._max_buffer} bytes)"
            )
        self._sequence = seq
        self._log.append(
            LogEntry(seq, mtype, data.model if mtype in MODEL_SCOPED_TYPES else None, frame)
        )
        self._fold(mtype, data)
        self._snapshot_cache = None
        self.stats.published += 1
        if loop is not None:
            self._fan_out(loop, mtype, data, frame)
        return message

    def _fold(self, mtype: MessageType, data: Any) -> None:
        """Fold one message into the snapshot: state newest-wins, events kept as recent."""
        if mtype is MessageType.METRICS_UPDATE:
            self._metrics = data
        elif mtype is MessageType.MODEL_UPDATE:
            self._models[data.model] = data
        elif mtype is MessageType.REQUEST_UPDATE:
            self._recent_requests.append(data)
        elif mtype is MessageType.ERROR_UPDATE:
            self._recent_errors.append(data)
        elif mtype is MessageType.SYSTEM_UPDATE:
            self._system = data
        elif mtype is MessageType.RATE_LIMIT_UPDATE:
            self._rate_limits[data.endpoint] = data
        elif mtype is MessageType.COST_UPDATE:
            self._costs = data
        elif mtype is MessageType.KV_CACHE_UPDATE:
            self._kv_cache = data

    def _fan_out(
        self, loop: asyncio.AbstractEventLoop, mtype: MessageType, data: Any, frame: EncodedFrame
    ) -> None:
        model = data.model if mtype in MODEL_SCOPED_TYPES else None
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
            if filt is not _EVERYTHING and not filt.accepts(mtype, model):
                continue
            sub._pending.append(frame)
            sub._pending_bytes += size
            if sub._pending_bytes + sub._inflight + sub._written > limit + sub._credit and (
                self._over_bound(sub)
            ):
                evicted.append(sub)
            elif not sub.dirty:
                sub.dirty = True
                dirty.append(sub)
        for sub in evicted:
            self._evict(sub)
        if dirty and self._flush_handle is None:
            self._flush_handle = loop.call_soon(self._flush)

    def _over_bound(self, sub: Subscriber) -> bool:
        """Whether ``sub`` holds more than its bound, after refreshing the one
        figure that may be stale (what the transport still buffers)."""
        limit = self._max_buffer + sub._credit
        if sub._written:
            sub._written = sub.writer.buffer_size()
        return sub._pending_bytes + sub._inflight + sub._written > limit

    def _evict(self, sub: Subscriber) -> None:
        logger.info(
            "closing a slow consumer: %d bytes held (bound %d)",
            sub._pending_bytes + sub._inflight + sub._written,
            self._max_buffer,
        )
        self.stats.evictions += 1
        sub._discard()
        sub.request_close(CloseCode.SLOW_CONSUMER)

    def heartbeat(self) -> None:
        """Send one server ``heartbeat`` to every subscriber (encoded once)."""
        message = make_message(
            MessageType.HEARTBEAT,
            HeartbeatPayload(server_time=int(time.time() * 1000), uptime_seconds=self.uptime),
        )
        frame = EncodedFrame(encode(message))
        for sub in list(self._subscribers):
            if sub.open:
                self._enqueue(sub, frame)

    # -- snapshot -----------------------------------------------------------

    def snapshot(
        self, *, types: Iterable[str] | None = None, models: Iterable[str] | None = None
    ) -> InitPayload:
        """The current state as an ``init`` payload, optionally filtered.

        State sections hold the newest value per key; ``recent_requests`` and
        ``recent_errors`` hold the latest events, oldest first. A ``types``
        filter empties the sections of types not listed; a ``models`` filter
        keeps model-scoped entries of the listed models only.
        """
        return self._snapshot(_filter_of(types, models))

    def _snapshot(self, filt: Filter) -> InitPayload:
        def want(t: MessageType) -> bool:
            return filt.accepts(t, None)

        def model_ok(model: str | None) -> bool:
            return filt.accepts(MessageType.MODEL_UPDATE, model)

        return InitPayload(
            metrics=self._metrics if want(MessageType.METRICS_UPDATE) else None,
            models={k: v for k, v in self._models.items() if model_ok(k)}
            if want(MessageType.MODEL_UPDATE)
            else {},
            rate_limits=dict(self._rate_limits) if want(MessageType.RATE_LIMIT_UPDATE) else {},
            costs=self._costs if want(MessageType.COST_UPDATE) else None,
            kv_cache=self._kv_cache if want(MessageType.KV_CACHE_UPDATE) else None,
            system=self._system if want(MessageType.SYSTEM_UPDATE) else None,
            recent_requests=[r for r in self._recent_requests if model_ok(r.model)]
            if want(MessageType.REQUEST_UPDATE)
            else [],
            recent_errors=[e for e in self._recent_errors if model_ok(e.model)]
            if want(MessageType.ERROR_UPDATE)
            else [],
        )

    def _init_frame(
        self,
        *,
        resumed: bool,
        filt: Filter,
    ) -> EncodedFrame:
        unfiltered = filt.is_everything
        if not resumed and unfiltered:
            cached = self._snapshot_cache
            if cached is not None and cached[0] == self._sequence:
                return cached[1]
        payload = InitPayload() if resumed else self._snapshot(filt)
        # Every section is written out, empty ones included (the payload
        # Struct would omit defaults): clients in other languages can read
        # ``data.recent_requests`` without checking that it exists.
        data = {name: getattr(payload, name) for name in payload.__struct_fields__}
        message = make_message(
            MessageType.INIT,
            data,
            sequence=self._sequence,
            metadata={
                "epoch": self.epoch,
                "resumed": resumed,
                "server_version": self._server_version,
            },
        )
        frame = EncodedFrame(encode(message))
        if not resumed and unfiltered:
            self._snapshot_cache = (self._sequence, frame)
        return frame

    # -- subscribers --------------------------------------------------------

    def attach(
        self,
        send: SendText,
        *,
        since: int | None = None,
        epoch: str | None = None,
        types: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        batch: bool = False,
        transport: Transport | None = None,
        direct: DirectWriter | None = None,
    ) -> Subscriber:
        """Attach a subscriber; its outbox starts with ``init`` (and a replay).

        ``send(text)`` returns a coroutine that writes one text frame; it is
        awaited in a task (:class:`AsgiWriter`) unless ``direct`` is given. With
        ``since`` and a matching ``epoch`` the subscriber resumes: an empty
        ``init`` with ``resumed: true`` and then every stream message after
        ``since``, in order. The resume happens only when the log still holds
        all of them and they fit in the subscriber's byte bound; otherwise the
        ``init`` carries a full snapshot. Must be called on the event loop.
        """
        filt = _filter_of(types, models)
        writer: FrameWriter = direct if direct is not None else AsgiWriter(send)
        sub = Subscriber(self, writer, filter=filt, batch=batch, transport=transport)
        replay: list[LogEntry] | None = None
        if since is not None:
            if epoch == self.epoch:
                replay = self._log.entries_after(since)
                if replay is not None and sum(e.size for e in replay) > self._max_buffer:
                    replay = None
            if replay is None:
                self.stats.replay_misses += 1
            else:
                self.stats.replay_hits += 1
        # Everything below is synchronous: no message can be published between
        # the snapshot (or replay) and the subscriber joining the fan-out.
        init = self._init_frame(resumed=replay is not None, filt=filt)
        self._enqueue(sub, init, bounded=False)
        for entry in replay or ():
            if filt.accepts(entry.type, entry.model):
                self._enqueue(sub, entry.frame, bounded=False)
        # The snapshot and the replay may exceed the live bound once; they are
        # allowed for until the outbox first drains below the bound.
        sub._credit = sub._pending_bytes
        self._subscribers.add(sub)
        self._empty.clear()
        self.stats.connections_opened += 1
        self._ensure_heartbeat()
        return sub

    def detach(self, sub: Subscriber) -> None:
        """Remove a subscriber and drop whatever it had pending."""
        self._subscribers.discard(sub)
        if not self._subscribers:
            self._empty.set()
        sub.open = False
        sub._discard()
        if not sub.closed.done():
            sub.closed.set_result(None)

    async def close_all(self, code: int = CloseCode.GOING_AWAY, *, grace: float = 5.0) -> None:
        """Ask every subscriber's connection to close with ``code`` and wait
        (up to ``grace`` seconds) until all are detached.

        The hub still accepts new subscribers afterwards, but the ASGI
        endpoint turns them away with 1001 once this has been called.
        """
        self._closing = True
        for sub in list(self._subscribers):
            sub.request_close(code)
        if self._subscribers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._empty.wait()
        task = self._heartbeat_task
        if task is not None:
            task.cancel()
            self._heartbeat_task = None

    # -- outbox flushing ----------------------------------------------------

    def _enqueue(self, sub: Subscriber, frame: EncodedFrame, *, bounded: bool = True) -> None:
        sub._pending.append(frame)
        sub._pending_bytes += frame.size
        if bounded and self._over_bound(sub):
            self._evict(sub)
            return
        if not sub.dirty:
            sub.dirty = True
            self._dirty.append(sub)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

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

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat_interval is None:
            return
        task = self._heartbeat_task
        if task is None or task.done():
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(self._heartbeat_interval)
            )

    async def _heartbeat_loop(self, interval: float) -> None:
        # Runs while anyone listens; the next attach restarts it.
        while self._subscribers:
            await asyncio.sleep(interval)
            self.heartbeat()
        self._heartbeat_task = None
