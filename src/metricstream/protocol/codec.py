"""Encoding and decoding of wire frames.

Decoding happens in two steps with one reused decoder each: the envelope is
decoded with ``data`` left as raw JSON (``msgspec.Raw``, no copy, no parse),
then ``data`` is decoded with the decoder of the payload type that ``type``
names. That keeps unknown types cheap to skip and lets every error name the
message type it happened in.

Whatever bytes come in, :func:`decode` returns a message or raises
:class:`~metricstream.exceptions.ProtocolError`; it never raises anything else.
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

from ..exceptions import ProtocolError
from .messages import (
    CostUpdatePayload,
    ErrorPayload,
    ErrorUpdatePayload,
    HeartbeatPayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    PongPayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SubscribePayload,
    SystemUpdatePayload,
    WebSocketMessage,
)

__all__ = [
    "DATA_OPTIONAL_TYPES",
    "PAYLOAD_TYPES",
    "decode",
    "decode_frame",
    "encode",
    "encode_batch",
    "normalize_timestamp",
]

#: The payload Struct of each message type; ``None`` for types without data.
PAYLOAD_TYPES: Final[dict[MessageType, type[Any] | None]] = {
    MessageType.METRICS_UPDATE: MetricsUpdatePayload,
    MessageType.MODEL_UPDATE: ModelUpdatePayload,
    MessageType.REQUEST_UPDATE: RequestUpdatePayload,
    MessageType.ERROR_UPDATE: ErrorUpdatePayload,
    MessageType.SYSTEM_UPDATE: SystemUpdatePayload,
    MessageType.HEARTBEAT: HeartbeatPayload,
    MessageType.PONG: PongPayload,
    MessageType.INIT: InitPayload,
    MessageType.RATE_LIMIT_UPDATE: RateLimitUpdatePayload,
    MessageType.COST_UPDATE: CostUpdatePayload,
    MessageType.KV_CACHE_UPDATE: KVCacheUpdatePayload,
    MessageType.SUBSCRIBE: SubscribePayload,
    MessageType.UNSUBSCRIBE: None,
    MessageType.SUBSCRIBED: SubscribePayload,
    MessageType.ERROR: ErrorPayload,
    MessageType.PING: None,
}

#: Types whose ``data`` may be absent (every payload field has a default).
DATA_OPTIONAL_TYPES: Final[frozenset[MessageType]] = frozenset(
    {
        MessageType.HEARTBEAT,
        MessageType.PONG,
        MessageType.INIT,
        MessageType.SUBSCRIBE,
        MessageType.SUBSCRIBED,
        MessageType.UNSUBSCRIBE,
        MessageType.PING,
    }
)

# Below this a timestamp cannot be milliseconds of any date after 1973, so it
# is taken as seconds (the FakeAI server sends float seconds).
_SECONDS_THRESHOLD: Final = 100_000_000_000
_MAX_TIMESTAMP_MS: Final = 1 << 53


class _Envelope(msgspec.Struct, kw_only=True):
    type: str
    timestamp: int | float = 0
    # Left unparsed until ``type`` is known; empty when the field is absent.
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    sequence: int | None = None
    metadata: dict[str, Any] | None = None


_encoder: Final = msgspec.json.Encoder()
_envelope_decoder: Final = msgspec.json.Decoder(_Envelope)
_batch_decoder: Final = msgspec.json.Decoder(list[_Envelope] | _Envelope)
_any_decoder: Final = msgspec.json.Decoder()
_payload_decoders: Final[dict[MessageType, msgspec.json.Decoder[Any]]] = {
    t: msgspec.json.Decoder(p) for t, p in PAYLOAD_TYPES.items() if p is not None
}
_KNOWN: Final[dict[str, MessageType]] = {t.value: t for t in MessageType}


def encode(message: WebSocketMessage[Any]) -> bytes:
    """Encode one message as a JSON object (UTF-8 bytes)."""
    return _encoder.encode(message)


def encode_batch(messages: list[WebSocketMessage[Any]]) -> bytes:
    """Encode several messages as one JSON array (a ``batch=1`` frame)."""
    return _encoder.encode(messages)


def normalize_timestamp(value: float) -> int:
    """Return ``value`` as integer milliseconds since the Unix epoch.

    Values that can only be seconds (below 10^11, that is before 1973 in
    milliseconds) are scaled; the FakeAI server sends float seconds.
    """
    if not math.isfinite(value) or value < 0 or value > _MAX_TIMESTAMP_MS:
        raise ProtocolError(f"invalid timestamp {value!r}: expected milliseconds since the epoch")
    if 0 < value < _SECONDS_THRESHOLD:
        value *= 1000
    return int(value)


def decode(frame: bytes | str) -> WebSocketMessage[Any]:
    """Decode one frame holding a single JSON object.

    Unknown fields are ignored. An unknown ``type`` gives a message whose
    ``is_known`` is false and whose ``data`` is the raw JSON value. Anything
    else that is not a valid message raises :class:`ProtocolError`.
    """
    try:
        envelope = _envelope_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError) as exc:
        raise ProtocolError(f"invalid message: {_describe(exc)}") from exc
    return _finish(envelope)


def decode_frame(frame: bytes | str) -> list[WebSocketMessage[Any]]:
    """Decode a frame holding one JSON object or a ``batch=1`` JSON array.

    Raises :class:`ProtocolError` when the frame, or any message in it, is
    invalid: a batch is accepted or rejected whole.
    """
    try:
        decoded = _batch_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError) as exc:
        raise ProtocolError(f"invalid frame: {_describe(exc)}") from exc
    if isinstance(decoded, list):
        return [_finish(envelope) for envelope in decoded]
    return [_finish(decoded)]


def _finish(envelope: _Envelope) -> WebSocketMessage[Any]:
    mtype = _KNOWN.get(envelope.type)
    raw = envelope.data
    data: Any
    if mtype is None:
        data = _decode_any(raw, envelope.type)
    else:
        decoder = _payload_decoders.get(mtype)
        if decoder is None:
            # Types without a payload (ping, unsubscribe): data is ignored.
            data = None
        elif not raw or bytes(raw) == b"null":
            if mtype not in DATA_OPTIONAL_TYPES:
                raise ProtocolError(f"invalid {mtype.value} message: `data` is required")
            data = decoder.decode(b"{}")
        else:
            try:
                data = decoder.decode(raw)
            except (msgspec.MsgspecError, RecursionError) as exc:
                detail = _describe(exc).replace("`$", "`$.data")
                raise ProtocolError(f"invalid {mtype.value} message: {detail}") from exc
    sequence = envelope.sequence
    if sequence is not None and sequence < 0:
        raise ProtocolError(f"invalid {envelope.type} message: negative sequence {sequence}")
    return WebSocketMessage(
        type=mtype if mtype is not None else envelope.type,
        timestamp=normalize_timestamp(envelope.timestamp),
        data=data,
        sequence=sequence,
        metadata=envelope.metadata,
    )


def _decode_any(raw: msgspec.Raw, type_name: str) -> Any:
    if not raw:
        return None
    try:
        return _any_decoder.decode(raw)
    except (msgspec.MsgspecError, RecursionError) as exc:  # pragma: no cover - raw is valid JSON
        raise ProtocolError(f"invalid {type_name} message: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    if isinstance(exc, TypeError):
        return f"expected bytes or str, got {exc}"
    return str(exc)
