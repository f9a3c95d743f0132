"""The hub: one stream and its subscribers, in three parts with one job each.

- :class:`~metricstream.server._stream.Stream` (``_stream``): numbering, the
  replay log and the snapshot; it knows nothing of connections.
- :class:`~metricstream.server._registry.SubscriberRegistry` (``_registry``):
  the attached subscribers, each owning its bounded outbox, and the fan-out.
- :class:`~metricstream.server._writers.FrameWriter` (``_writers``, ``_wire``):
  how an outbox reaches its connection, straight to uvicorn's transport or
  through ASGI ``send`` in a task.

:class:`MetricsHub` composes them and keeps the public API. Everything runs
on the event loop thread and nothing in the publish path awaits:
:meth:`MetricsHub.publish` has the stream number, encode and log a message
once, then the registry appends the same frame to every outbox that wants it;
a ``call_soon`` callback flushes every outbox touched in that loop iteration,
so messages published together leave together (one JSON array per flush for
``batch=1`` subscribers). A stalled client stops at its byte bound and is
closed with 4008.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from .._version import __version__
from ..exceptions import ConfigError
from ..protocol import (
    DEFAULT_SERVER_HEARTBEAT_INTERVAL,
    CloseCode,
    Filter,
    HeartbeatPayload,
    InitPayload,
    MessageType,
    WebSocketMessage,
    encode,
    make_message,
)
from ._registry import EVERYTHING, Subscriber, SubscriberRegistry
from ._replay import MemoryReplayLog, ReplayLog
from ._stats import HubStats
from ._stream import Stream, number
from ._wire import DirectWriter, EncodedFrame, Transport
from ._writers import AsgiWriter, FrameWriter, SendText

__all__ = ["DEFAULT_MAX_BUFFER_BYTES", "HubStats", "MetricsHub", "Subscriber"]

#: Default bound of one subscriber's outbox, in bytes of pending frames.
DEFAULT_MAX_BUFFER_BYTES: Final = 512 * 1024


def _filter_of(types: Iterable[str] | None, models: Iterable[str] | None) -> Filter:
    # As given, unvalidated: the hub serves in-process callers too, and an
    # empty collection is a filter that matches nothing, not "everything"
    # (the endpoint validates what comes off the wire, see Filter.of).
    if types is None and models is None:
        return EVERYTHING
    return Filter(
        None if types is None else frozenset(types),
        None if models is None else frozenset(models),
    )


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
        self._max_buffer = max_buffer_bytes
        self._recent = (recent_requests, recent_errors)
        self._heartbeat_interval = heartbeat_interval
        self._started = time.monotonic()
        self.stats = HubStats()
        self._stream = Stream(
            log if log is not None else MemoryReplayLog(),
            recent_requests=recent_requests,
            recent_errors=recent_errors,
            max_frame_bytes=max_buffer_bytes,
            server_version=server_version,
        )
        self._registry = SubscriberRegistry(self.stats, max_buffer_bytes)
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closing = False
        # Set by a shared stream (``_redis``): where publish() sends a
        # validated message instead of numbering it here.
        self._forward: Callable[[WebSocketMessage[Any]], None] | None = None
        #: Why the hub cannot reach its shared stream now (``None``: it can,
        #: or there is none). ``/healthz`` reports it as ``degraded``.
        self.degraded: str | None = None

    # -- properties ---------------------------------------------------------

    @property
    def epoch(self) -> str:
        """The epoch of the stream (the replay log's)."""
        return self._stream.epoch

    @property
    def sequence(self) -> int:
        """The sequence of the newest published message (0: none yet)."""
        return self._stream.sequence

    @property
    def log(self) -> ReplayLog:
        """The replay log."""
        return self._stream.log

    @property
    def connection_count(self) -> int:
        """How many subscribers are attached now."""
        return len(self._registry)

    @property
    def max_buffer_bytes(self) -> int:
        """The per-subscriber outbox bound, in bytes."""
        return self._max_buffer

    @property
    def recent_limits(self) -> tuple[int, int]:
        """How many request and error events ``init`` carries."""
        return self._recent

    @property
    def closing(self) -> bool:
        """Whether :meth:`close_all` has been called."""
        return self._closing

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        """The attached subscribers (a copy)."""
        return frozenset(self._registry)

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
        decoder the clients use: ranges, NaN, missing fields; not again for
        a :class:`~metricstream.protocol.messages.CheckedMessage`, whose
        builder checked each value as it was recorded), or a message
        larger than the per-client buffer bound; a dict payload is
        converted to the type's Struct; ``RuntimeError`` when called off the
        event loop thread while clients are attached (from another thread,
        use ``loop.call_soon_threadsafe(hub.publish, message)``). Nothing
        changes when it raises. Never awaits any client.
        """
        published, entry = self._stream.prepare(message)
        forward = self._forward
        if forward is not None:
            # A shared stream numbers it; it comes back through ingest().
            forward(published)
            return published
        # Fails (RuntimeError) before anything changes when called off the
        # event loop thread while clients are attached.
        loop = asyncio.get_running_loop() if len(self._registry) else None
        self._stream.commit(published, entry)
        self.stats.published += 1
        if loop is not None:
            self._registry.fan_out(loop, entry.type, entry.model, entry.frame)
        return published

    # -- a shared stream (see _redis) --------------------------------------

    def set_forward(self, forward: Callable[[WebSocketMessage[Any]], None] | None) -> None:
        """Send what :meth:`publish` is given to ``forward`` (a shared stream's
        publisher) instead of numbering it here; ``None`` restores the
        in-process stream. :meth:`publish` still validates first, and then
        returns the message with the sequence it would have had locally."""
        self._forward = forward

    def ingest(self, message: WebSocketMessage[Any], *, decoded: bool = False) -> bool:
        """Take a message the shared stream has numbered: log, fold, fan out.

        A sequence at or below the current one is a duplicate and is
        dropped (returns ``False``). A sequence further ahead than the next
        one is a hole (messages the stream never carried): the replay log
        starts afresh after it, so that no resume is served across it, and
        the clients see the gap and resynchronise. Raises
        :class:`~metricstream.exceptions.PublishError` for a message that
        fails the same checks as :meth:`publish` (``decoded``: it was just
        decoded with the clients' decoder, which has checked its payload).
        """
        seq = message.sequence
        if seq is None or seq <= self._stream.sequence:
            return False
        published, entry = number(message, seq, self._max_buffer, check=not decoded)
        stream = self._stream
        if seq != stream.sequence + 1 and stream.sequence:
            stream.log = _fresh_log(stream.log, stream.epoch)
        loop = asyncio.get_running_loop() if len(self._registry) else None
        stream.commit(published, entry)
        self.stats.published += 1
        if loop is not None:
            self._registry.fan_out(loop, entry.type, entry.model, entry.frame)
        return True

    def restart(
        self,
        epoch: str,
        sequence: int,
        snapshot: Iterable[WebSocketMessage[Any]],
        replay: Iterable[WebSocketMessage[Any]] = (),
    ) -> None:
        """Continue as the shared stream ``epoch`` at ``sequence``, its state
        ``snapshot`` (messages folded in order, nothing logged) and ``replay``
        (the newest numbered messages, contiguous and ending at ``sequence``,
        logged for resumes but not folded again: the snapshot holds them;
        decoded with the clients' decoder, which has checked them).

        Every attached client is closed with 1012 (service restart): its
        view may lack what made the stream start over (a new epoch, or
        messages this node never saw), so it reconnects, and a resume the
        new log cannot serve gets a full snapshot: none mixes the sequences
        of two lives of the stream, and no loss goes unnoticed.
        """
        stream = self._stream
        stream.restart(_fresh_log(stream.log, epoch), sequence)
        for message in snapshot:
            stream.fold(message)
        log = stream.log
        for message in replay:
            seq = message.sequence
            if seq is not None and seq <= sequence:
                log.append(number(message, seq, self._max_buffer, check=False)[1])
        for sub in self._registry:
            sub.request_close(CloseCode.SERVICE_RESTART)

    def heartbeat(self) -> None:
        """Send one server ``heartbeat`` to every subscriber (encoded once)."""
        message = make_message(
            MessageType.HEARTBEAT,
            HeartbeatPayload(server_time=int(time.time() * 1000), uptime_seconds=self.uptime),
        )
        self._registry.broadcast(EncodedFrame(encode(message)))

    def snapshot(
        self, *, types: Iterable[str] | None = None, models: Iterable[str] | None = None
    ) -> InitPayload:
        """The current state as an ``init`` payload, optionally filtered.

        State sections hold the newest value per key; ``recent_requests`` and
        ``recent_errors`` hold the latest events, oldest first. A ``types``
        filter empties the sections of types not listed; a ``models`` filter
        keeps model-scoped entries of the listed models only.
        """
        return self._stream.snapshot(_filter_of(types, models))

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
        registry = self._registry
        sub = registry.new(writer, filter=filt, batch=batch, transport=transport)
        replay = None
        if since is not None:
            replay = self._stream.replay(since, epoch, self._max_buffer)
            if replay is None:
                self.stats.replay_misses += 1
            else:
                self.stats.replay_hits += 1
        # Everything below is synchronous: no message can be published between
        # the snapshot (or replay) and the subscriber joining the fan-out.
        registry.enqueue(
            sub, self._stream.init_frame(resumed=replay is not None, filt=filt), bounded=False
        )
        for entry in replay or ():
            if filt.accepts(entry.type, entry.model):
                registry.enqueue(sub, entry.frame, bounded=False)
        registry.add(sub)
        self.stats.connections_opened += 1
        self._ensure_heartbeat()
        return sub

    def detach(self, sub: Subscriber) -> None:
        """Remove a subscriber and drop whatever it had pending."""
        self._registry.remove(sub)

    async def close_all(self, code: int = CloseCode.GOING_AWAY, *, grace: float = 5.0) -> None:
        """Ask every subscriber's connection to close with ``code`` and wait
        (up to ``grace`` seconds) until all are detached.

        The hub still accepts new subscribers afterwards, but the ASGI
        endpoint turns them away with 1001 once this has been called.
        """
        self._closing = True
        await self._registry.close_all(code, grace)
        task = self._heartbeat_task
        if task is not None:
            task.cancel()
            self._heartbeat_task = None

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
        while len(self._registry):
            await asyncio.sleep(interval)
            self.heartbeat()
        self._heartbeat_task = None


def _fresh_log(log: ReplayLog, epoch: str) -> ReplayLog:
    """An empty log with ``log``'s bounds and the given epoch."""
    if isinstance(log, MemoryReplayLog):
        return MemoryReplayLog(max_entries=log.max_entries, max_age=log.max_age, epoch=epoch)
    return MemoryReplayLog(epoch=epoch)
