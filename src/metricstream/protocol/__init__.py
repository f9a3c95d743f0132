"""The wire protocol: typed messages, codec, sequence tracking, backoff.

Pure code: nothing here imports asyncio or a network library, so every rule of
the protocol is testable without an event loop or a socket.
"""

from .backoff import Backoff
from .codec import PAYLOAD_TYPES, decode, decode_frame, encode, encode_batch, normalize_timestamp
from .messages import (
    CONNECTION_LOCAL_TYPES,
    EVENT_TYPES,
    STATE_TYPES,
    STREAM_TYPES,
    CostUpdatePayload,
    ErrorPayload,
    ErrorUpdatePayload,
    HeartbeatPayload,
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    ModelUpdatePayload,
    Payload,
    PongPayload,
    RateLimitUpdatePayload,
    RequestUpdatePayload,
    SubscribePayload,
    SystemUpdatePayload,
    WebSocketMessage,
    make_message,
    now_ms,
)
from .schema import PROTOCOL_VERSION, json_schema
from .sequence import SequenceResult, SequenceTracker, SequenceVerdict

__all__ = [
    "CONNECTION_LOCAL_TYPES",
    "EVENT_TYPES",
    "PAYLOAD_TYPES",
    "PROTOCOL_VERSION",
    "STATE_TYPES",
    "STREAM_TYPES",
    "Backoff",
    "CostUpdatePayload",
    "ErrorPayload",
    "ErrorUpdatePayload",
    "HeartbeatPayload",
    "InitPayload",
    "KVCacheUpdatePayload",
    "MessageType",
    "MetricsUpdatePayload",
    "ModelUpdatePayload",
    "Payload",
    "PongPayload",
    "RateLimitUpdatePayload",
    "RequestUpdatePayload",
    "SequenceResult",
    "SequenceTracker",
    "SequenceVerdict",
    "SubscribePayload",
    "SystemUpdatePayload",
    "WebSocketMessage",
    "decode",
    "decode_frame",
    "encode",
    "encode_batch",
    "json_schema",
    "make_message",
    "normalize_timestamp",
    "now_ms",
]
