"""The stream: numbering, the replay log and the snapshot. No connections here.

:class:`Stream` turns a message into the next stream entry (validated,
numbered, encoded once, logged) and keeps the state every new connection's
``init`` carries. It knows nothing of subscribers: the hub hands each entry
to the registry (``_registry``) for fan-out. This is the part a stream shared
by several server processes would replace.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from ..exceptions import ProtocolError, PublishError
from ..protocol import (
    MODEL_SCOPED_TYPES,
    PAYLOAD_TYPES,
    STREAM_TYPES,
    CostUpdatePayload,
    ErrorUpdatePayload,
    Filter,
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
from ..protocol.messages import CheckedMessage
from ._replay import LogEntry, ReplayLog
from ._wire import EncodedFrame

__all__ = ["Stream", "number"]


def number(
    message: WebSocketMessage[Any], seq: int, max_frame: int, *, check: bool = True
) -> tuple[WebSocketMessage[Any], LogEntry]:
    """``message`` as stream entry ``seq``: validated, numbered, encoded once.

    Raises :class:`~metricstream.exceptions.PublishError` for a type that is
    not a stream type, a payload that does not fit its type (checked with
    the clients' own decoder, unless ``check`` is false: the message was
    itself just decoded by it; or it is a
    :class:`~metricstream.protocol.messages.CheckedMessage` carrying its
    type's payload Struct: its builder checked every value as it was
    recorded) or a frame larger than ``max_frame`` bytes. Shared by the
    in-process stream and the Redis one, so that both refuse exactly the
    same messages.
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
    # Each value is validated once: a CheckedMessage's were checked where
    # they were recorded (the collector, in the caller's thread, with a
    # typed error), so decoding its bytes again would only repeat that. A
    # payload that still has to be converted was not the one checked.
    # The exact type: a fifth of isinstance's cost, paid by every plain message.
    checked = type(message) is CheckedMessage
    if not isinstance(data, payload_type):
        checked = False
        try:
            data = msgspec.convert(data, payload_type, from_attributes=True)
        except msgspec.ValidationError as exc:
            raise PublishError(f"invalid {mtype.value} payload: {exc}") from exc
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
    if check and not checked:
        try:
            decode(encoded)
        except ProtocolError as exc:
            raise PublishError(f"cannot publish: {exc}") from None
    frame = EncodedFrame(encoded)
    # A message bigger than a client's whole buffer would evict every
    # client at once, and no resume could ever carry it.
    if frame.size > max_frame:
        raise PublishError(
            f"cannot publish a {frame.size}-byte {mtype.value} message: "
            f"larger than the per-client buffer ({max_frame} bytes)"
        )
    model = data.model if mtype in MODEL_SCOPED_TYPES else None
    return message, LogEntry(seq, mtype, model, frame)


class Stream:
    """One stream's sequence, replay log and snapshot.

    ``max_frame_bytes`` refuses messages no client buffer could hold.
    """

    def __init__(
        self,
        log: ReplayLog,
        *,
        recent_requests: int,
        recent_errors: int,
        max_frame_bytes: int,
        server_version: str,
    ) -> None:
        self.log = log
        self.sequence = 0
        self._max_frame = max_frame_bytes
        self._server_version = server_version
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

    @property
    def epoch(self) -> str:
        """The epoch of the stream (the replay log's)."""
        return self.log.epoch

    def prepare(self, message: WebSocketMessage[Any]) -> tuple[WebSocketMessage[Any], LogEntry]:
        """The next entry for ``message``: validated, numbered, encoded.

        Changes nothing (see :meth:`commit`); raises
        :class:`~metricstream.exceptions.PublishError` for a message that
        cannot be published.
        """
        return number(message, self.sequence + 1, self._max_frame)

    def commit(self, message: WebSocketMessage[Any], entry: LogEntry) -> None:
        """Make a prepared entry part of the stream: logged and folded."""
        self.sequence = entry.sequence
        self.log.append(entry)
        self._fold(message.type, message.data)
        self._snapshot_cache = None

    def restart(self, log: ReplayLog, sequence: int) -> None:
        """Start over from ``sequence`` with ``log`` (empty) and no snapshot state.

        A shared stream calls this when it finds its store wiped (a new
        epoch) or a hole it cannot replay across: nothing from before may be
        replayed or folded into an ``init`` afterwards.
        """
        self.log = log
        self.sequence = sequence
        self._metrics = None
        self._models.clear()
        self._rate_limits.clear()
        self._costs = None
        self._kv_cache = None
        self._system = None
        self._recent_requests.clear()
        self._recent_errors.clear()
        self._snapshot_cache = None

    def fold(self, message: WebSocketMessage[Any]) -> None:
        """Fold one already-numbered message into the snapshot only (no log)."""
        self._fold(message.type, message.data)
        self._snapshot_cache = None

    def _fold(self, mtype: str, data: Any) -> None:
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

    def replay(self, since: int, epoch: str | None, max_bytes: int) -> list[LogEntry] | None:
        """Every entry after ``since`` when a resume can carry them all, else ``None``.

        ``None`` for another epoch, a position the log no longer holds, or a
        replay larger than ``max_bytes``: a resume is never partial.
        """
        if epoch != self.epoch:
            return None
        replay = self.log.entries_after(since)
        if replay is not None and sum(e.size for e in replay) > max_bytes:
            return None
        return replay

    def snapshot(self, filt: Filter) -> InitPayload:
        """The current state as an ``init`` payload, filtered by ``filt``."""

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

    def init_frame(self, *, resumed: bool, filt: Filter) -> EncodedFrame:
        """The encoded ``init`` of a connection (cached for the unfiltered snapshot)."""
        unfiltered = filt.is_everything
        if not resumed and unfiltered:
            cached = self._snapshot_cache
            if cached is not None and cached[0] == self.sequence:
                return cached[1]
        payload = InitPayload() if resumed else self.snapshot(filt)
        # Every section is written out, empty ones included (the payload
        # Struct would omit defaults): clients in other languages can read
        # ``data.recent_requests`` without checking that it exists.
        data = {name: getattr(payload, name) for name in payload.__struct_fields__}
        message = make_message(
            MessageType.INIT,
            data,
            sequence=self.sequence,
            metadata={
                "epoch": self.epoch,
                "resumed": resumed,
                "server_version": self._server_version,
            },
        )
        frame = EncodedFrame(encode(message))
        if not resumed and unfiltered:
            self._snapshot_cache = (self.sequence, frame)
        return frame
