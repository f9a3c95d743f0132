"""The wire protocol: every rule of it, in one package.

Typed messages and their codec, sequence tracking, the close-code table, the
subscription filter, reconnect delays, every protocol constant, and the
client's whole side of the protocol as a sans-I/O state machine
(:class:`ClientSession`). Pure code:
nothing here imports asyncio or a network library, so every rule of the
protocol is testable without an event loop or a socket.
"""

from .auth import (
    STREAM_SUBPROTOCOL,
    TOKEN_SUBPROTOCOL_PREFIX,
    token_from_subprotocols,
    token_subprotocol,
)
from .backoff import Backoff
from .close import FATAL_HTTP_STATUSES, CloseAction, CloseCode, close_action, handshake_action
from .codec import PAYLOAD_TYPES, decode, decode_frame, encode, encode_batch, normalize_timestamp
from .constants import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_MAX_RECONNECT_INTERVAL,
    DEFAULT_OFFLINE_QUEUE_SIZE,
    DEFAULT_RECONNECT_DECAY,
    DEFAULT_RECONNECT_INTERVAL,
    DEFAULT_RECONNECT_JITTER,
    DEFAULT_SERVER_HEARTBEAT_INTERVAL,
    MAX_KEYS,
    MAX_TRACKED_HOLES,
)
from .filter import Filter
from .messages import (
    CONNECTION_LOCAL_TYPES,
    EVENT_TYPES,
    MODEL_SCOPED_TYPES,
    STATE_TYPES,
    STREAM_TYPES,
    CostPeriod,
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
from .session import (
    NATIVE_DIALECT,
    ClientSession,
    Decision,
    ForeignDialect,
    Opened,
    Resync,
    SessionEvent,
    SessionState,
    Tick,
)

__all__ = [
    "CONNECTION_LOCAL_TYPES",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_MAX_RECONNECT_INTERVAL",
    "DEFAULT_OFFLINE_QUEUE_SIZE",
    "DEFAULT_RECONNECT_DECAY",
    "DEFAULT_RECONNECT_INTERVAL",
    "DEFAULT_RECONNECT_JITTER",
    "DEFAULT_SERVER_HEARTBEAT_INTERVAL",
    "EVENT_TYPES",
    "FATAL_HTTP_STATUSES",
    "MAX_KEYS",
    "MAX_TRACKED_HOLES",
    "MODEL_SCOPED_TYPES",
    "NATIVE_DIALECT",
    "PAYLOAD_TYPES",
    "PROTOCOL_VERSION",
    "STATE_TYPES",
    "STREAM_SUBPROTOCOL",
    "STREAM_TYPES",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "Backoff",
    "ClientSession",
    "CloseAction",
    "CloseCode",
    "CostPeriod",
    "CostUpdatePayload",
    "Decision",
    "ErrorPayload",
    "ErrorUpdatePayload",
    "Filter",
    "ForeignDialect",
    "HeartbeatPayload",
    "InitPayload",
    "KVCacheUpdatePayload",
    "MessageType",
    "MetricsUpdatePayload",
    "ModelUpdatePayload",
    "Opened",
    "Payload",
    "PongPayload",
    "RateLimitUpdatePayload",
    "RequestUpdatePayload",
    "Resync",
    "SequenceResult",
    "SequenceTracker",
    "SequenceVerdict",
    "SessionEvent",
    "SessionState",
    "SubscribePayload",
    "SystemUpdatePayload",
    "Tick",
    "WebSocketMessage",
    "close_action",
    "decode",
    "decode_frame",
    "encode",
    "encode_batch",
    "handshake_action",
    "json_schema",
    "make_message",
    "normalize_timestamp",
    "now_ms",
    "token_from_subprotocols",
    "token_subprotocol",
]
