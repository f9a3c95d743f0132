"""Encoding and decoding of wire frames.

A valid message of a known type is decoded in one pass: a tagged union of
one envelope Struct per type (tag ``type``, ``data`` typed with that type's
payload) parses the envelope and its payload together. Anything that pass
refuses (an unknown type, an invalid message, a ``data`` of ``null``) is
decoded again by the reference path, in two steps with one reused decoder
each: the envelope with ``data`` left as raw JSON (``msgspec.Raw``, no copy,
no parse), then ``data`` with the decoder of the payload type that ``type``
names. That path decides every such case, so unknown types are still kept
and every error still names the message type it happened in; the fast pass
only ever accepts what it would accept, with the same result.

Whatever bytes come in, :func:`decode` returns a message or raises
:class:`~metricstream.exceptions.ProtocolError`; it never raises anything else.
"""

from __future__ import annotations

import math
from typing import Any, Final, Union

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


def _typed_envelope(mtype: MessageType, payload: type[Any] | None) -> type[Any]:
    """The envelope Struct of one known type, for the one-pass decoders.

    Mirrors what :func:`_finish` accepts: ``data`` required unless the type
    is in :data:`DATA_OPTIONAL_TYPES` (then absent means an empty payload),
    and ignored (any JSON) for types without a payload.
    """
    data: tuple[str, Any] | tuple[str, Any, Any]
    if payload is None:
        data = ("data", msgspec.Raw, msgspec.field(default_factory=msgspec.Raw))
    elif mtype in DATA_OPTIONAL_TYPES:
        data = ("data", payload, msgspec.field(default_factory=payload))
    else:
        data = ("data", payload)
    return msgspec.defstruct(
        f"_{mtype.name.title().replace('_', '')}Envelope",
        [
            ("timestamp", int | float, 0),
            data,
            ("sequence", int | None, None),
            ("metadata", dict[str, Any] | None, None),
        ],
        kw_only=True,
        tag_field="type",
        tag=mtype.value,
    )


# Each one-pass envelope class, with the type it stands for.
_TYPED: Final[dict[type[Any], MessageType]] = {
    _typed_envelope(t, p): t for t, p in PAYLOAD_TYPES.items()
}
_typed_union: Any = Union[tuple(_TYPED)]  # noqa: UP007 - built from a tuple at run time
_typed_decoder: Final = msgspec.json.Decoder(_typed_union)
_typed_batch_decoder: Final = msgspec.json.Decoder(list[_typed_union] | _typed_union)


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
        typed = _typed_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError):
        # Not a plainly valid message of a known type: the two-step path
        # decides (an unknown type is kept, an error is worded there).
        pass
    else:
        return _finish_typed(typed)
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
        typed = _typed_batch_decoder.decode(frame)
    except (msgspec.MsgspecError, RecursionError, TypeError):
        # Some message is not plainly valid or of a known type: the whole
        # frame goes through the two-step path, which decides.
        pass
    else:
        if isinstance(typed, list):
            return [_finish_typed(envelope) for envelope in typed]
        return [_finish_typed(typed)]
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


def _finish_typed(envelope: Any) -> WebSocketMessage[Any]:
    """The message of a one-pass envelope: the checks :func:`_finish` makes
    after the payload, in the same order, with the same errors."""
    mtype = _TYPED[type(envelope)]
    sequence = envelope.sequence
    if sequence is not None and sequence < 0:
        raise ProtocolError(f"invalid {mtype.value} message: negative sequence {sequence}")
    return WebSocketMessage(
        type=mtype,
        timestamp=normalize_timestamp(envelope.timestamp),
        # Types without a payload ignore whatever ``data`` they carried.
        data=None if PAYLOAD_TYPES[mtype] is None else envelope.data,
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
