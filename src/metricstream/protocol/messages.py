"""Typed wire messages: the envelope and one payload Struct per message type.

Field names are exactly the seed's (FakeAI dashboard ``src/services/types.ts``)
so that a TypeScript dashboard and a Python one read the same JSON. Fields the
seed marks optional default to ``None``; every other field is required on the
wire, so a server that forgets one is caught at the edge instead of showing a
silent zero on a dashboard.
"""

from __future__ import annotations

import enum
import time
from typing import Annotated, Any, Generic, Literal, TypeAlias, TypeVar

import msgspec

__all__ = [
    "CONNECTION_LOCAL_TYPES",
    "EVENT_TYPES",
    "MODEL_SCOPED_TYPES",
    "STATE_TYPES",
    "STREAM_TYPES",
    "CheckedMessage",
    "CostPeriod",
    "CostUpdatePayload",
    "ErrorPayload",
    "ErrorSeverity",
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
    "RequestStatus",
    "RequestUpdatePayload",
    "SubscribePayload",
    "SystemUpdatePayload",
    "WebSocketMessage",
    "make_message",
    "now_ms",
]

P = TypeVar("P")

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Percentage = Annotated[float, msgspec.Meta(ge=0, le=100)]
#: A duration in milliseconds (never negative).
Millis = Annotated[float, msgspec.Meta(ge=0)]


class MessageType(enum.StrEnum):
    """Every ``type`` the protocol defines.

    The first eleven are the seed's; the rest are the control messages of
    protocol version 1. A ``MessageType`` compares equal to its string value.
    """

    METRICS_UPDATE = "metrics_update"
    MODEL_UPDATE = "model_update"
    REQUEST_UPDATE = "request_update"
    ERROR_UPDATE = "error_update"
    SYSTEM_UPDATE = "system_update"
    HEARTBEAT = "heartbeat"
    PONG = "pong"
    INIT = "init"
    RATE_LIMIT_UPDATE = "rate_limit_update"
    COST_UPDATE = "cost_update"
    KV_CACHE_UPDATE = "kv_cache_update"
    # Control messages.
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    SUBSCRIBED = "subscribed"
    ERROR = "error"
    PING = "ping"


#: State messages carry the whole current value for their key; the newest wins.
STATE_TYPES: frozenset[MessageType] = frozenset(
    {
        MessageType.METRICS_UPDATE,
        MessageType.MODEL_UPDATE,
        MessageType.SYSTEM_UPDATE,
        MessageType.RATE_LIMIT_UPDATE,
        MessageType.COST_UPDATE,
        MessageType.KV_CACHE_UPDATE,
    }
)
#: Event messages are one event each; a history must hold each exactly once.
EVENT_TYPES: frozenset[MessageType] = frozenset(
    {MessageType.REQUEST_UPDATE, MessageType.ERROR_UPDATE}
)
#: Messages published to the stream: they carry a ``sequence``.
STREAM_TYPES: frozenset[MessageType] = STATE_TYPES | EVENT_TYPES
#: Stream messages whose payload names a ``model``: the ``models`` filter applies.
MODEL_SCOPED_TYPES: frozenset[MessageType] = frozenset(
    {MessageType.MODEL_UPDATE, MessageType.REQUEST_UPDATE, MessageType.ERROR_UPDATE}
)
#: Messages that belong to one connection and carry no ``sequence``.
CONNECTION_LOCAL_TYPES: frozenset[MessageType] = frozenset(
    {MessageType.PONG, MessageType.HEARTBEAT, MessageType.ERROR, MessageType.SUBSCRIBED}
)

RequestStatus: TypeAlias = Literal["success", "error", "in_progress"]
ErrorSeverity: TypeAlias = Literal["low", "medium", "high", "critical"]
#: The period a ``cost_update`` covers.
CostPeriod: TypeAlias = Literal["hour", "day", "week", "month"]


def now_ms() -> int:
    """Current wall-clock time in integer milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


class _Payload(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=False):
    """Base of every payload: unknown fields are ignored on decode.

    Subclasses repeat ``kw_only=True``: msgspec applies it per class, and it
    lets the seed's optional fields stand in the seed's order.
    """


class MetricsUpdatePayload(_Payload, kw_only=True):
    """``metrics_update``: service-wide totals and rates."""

    total_requests: NonNegInt
    total_tokens: NonNegInt
    total_cost: float
    avg_latency_ms: float
    error_rate: Percentage
    streaming_percentage: Percentage
    requests_per_second: float
    tokens_per_second: float
    active_connections: NonNegInt
    # Streaming latency percentiles over the rolling window (protocol.md,
    # "Streaming latency"); absent when no streamed request was measured.
    ttft_p50_ms: Millis | None = None
    ttft_p95_ms: Millis | None = None
    ttft_p99_ms: Millis | None = None
    itl_p50_ms: Millis | None = None
    itl_p95_ms: Millis | None = None
    itl_p99_ms: Millis | None = None
    # Engine throughput split by phase (protocol.md, "Engine figures").
    prompt_tokens_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None
    generation_tokens_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None


class ModelUpdatePayload(_Payload, kw_only=True):
    """``model_update``: aggregates of one model, keyed by ``model``."""

    model: str
    request_count: NonNegInt
    total_prompt_tokens: NonNegInt
    total_completion_tokens: NonNegInt
    total_tokens: NonNegInt
    total_latency_ms: float
    error_count: NonNegInt
    avg_latency_ms: float
    error_rate: Percentage
    total_cost: float
    tokens_per_second: float
    # Same meaning as in ``metrics_update``, for this model only.
    ttft_p50_ms: Millis | None = None
    ttft_p95_ms: Millis | None = None
    ttft_p99_ms: Millis | None = None
    itl_p50_ms: Millis | None = None
    itl_p95_ms: Millis | None = None
    itl_p99_ms: Millis | None = None
    # Engine throughput split by phase (protocol.md, "Engine figures").
    prompt_tokens_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None
    generation_tokens_per_second: Annotated[float, msgspec.Meta(ge=0)] | None = None


class RequestUpdatePayload(_Payload, kw_only=True):
    """``request_update``: one finished (or started) request, an event."""

    id: str
    model: str
    created: float
    prompt_tokens: NonNegInt
    completion_tokens: NonNegInt
    total_tokens: NonNegInt
    latency_ms: float
    streaming: bool
    status: RequestStatus
    error_message: str | None = None
    cost: float
    user_id: str | None = None
    organization_id: str | None = None
    # Streaming timings of this request (protocol.md, "Streaming latency").
    # Optional: absent for non-streamed requests and from older publishers.
    endpoint: str | None = None
    time_to_first_token_ms: Millis | None = None
    inter_token_latency_ms: Millis | None = None
    inter_token_latency_p50_ms: Millis | None = None
    inter_token_latency_p95_ms: Millis | None = None
    time_per_output_token_ms: Millis | None = None
    finish_reason: str | None = None


class ErrorUpdatePayload(_Payload, kw_only=True):
    """``error_update``: one error event."""

    error_type: str
    error_message: str
    model: str | None = None
    timestamp: int
    stack_trace: str | None = None
    request_id: str | None = None
    severity: ErrorSeverity


class SystemUpdatePayload(_Payload, kw_only=True):
    """``system_update``: host load. GPU fields are absent without a GPU."""

    cpu_usage: Percentage
    memory_usage: Percentage
    gpu_usage: Percentage | None = None
    gpu_memory_usage: Percentage | None = None
    disk_usage: Percentage
    network_in_bytes: NonNegInt
    network_out_bytes: NonNegInt
    active_workers: NonNegInt
    queue_size: NonNegInt


class RateLimitUpdatePayload(_Payload, kw_only=True):
    """``rate_limit_update``: one endpoint's limit, keyed by ``endpoint``."""

    endpoint: str
    limit: NonNegInt
    remaining: NonNegInt
    reset_time: int
    percentage_used: Percentage


class CostUpdatePayload(_Payload, kw_only=True):
    """``cost_update``: spend over a period, with a monthly projection."""

    period: CostPeriod
    total_cost: float
    breakdown_by_model: dict[str, float]
    breakdown_by_service: dict[str, float]
    projected_monthly_cost: float
    # False while too little spend history has been seen to extrapolate a
    # month from (protocol.md, "Cost projection"); absent from older publishers.
    projection_available: bool | None = None


class KVCacheUpdatePayload(_Payload, kw_only=True):
    """``kv_cache_update``: KV cache effectiveness."""

    cache_hits: NonNegInt
    cache_misses: NonNegInt
    hit_rate: Percentage
    cache_size_bytes: NonNegInt
    cache_entries: NonNegInt
    evictions: NonNegInt
    avg_lookup_time_ms: float
    # Share of the engine's KV-cache blocks in use (protocol.md, "Engine figures").
    usage_percentage: Percentage | None = None


class HeartbeatPayload(_Payload, kw_only=True):
    """``heartbeat``: from the server ``server_time``/``uptime_seconds``;
    from a client ``client_time`` (echoed back in the ``pong``)."""

    server_time: int | None = None
    uptime_seconds: float | None = None
    client_time: int | None = None


class PongPayload(_Payload, kw_only=True):
    """``pong``: the answer to a ``heartbeat`` or ``ping``."""

    client_time: int | None = None
    server_time: int | None = None


class SubscribePayload(_Payload, kw_only=True):
    """``subscribe`` / ``subscribed``: the connection's server-side filter.

    ``None`` means "no filter" for that dimension.
    """

    types: list[str] | None = None
    models: list[str] | None = None


class ErrorPayload(_Payload, kw_only=True):
    """``error``: the server's answer to a bad client message."""

    code: str
    message: str


class InitPayload(_Payload, kw_only=True):
    """``init``: the snapshot a connection starts from.

    Empty (all defaults) when ``metadata.resumed`` is true: the missed stream
    messages follow instead.
    """

    metrics: MetricsUpdatePayload | None = None
    models: dict[str, ModelUpdatePayload] = msgspec.field(default_factory=dict)
    rate_limits: dict[str, RateLimitUpdatePayload] = msgspec.field(default_factory=dict)
    costs: CostUpdatePayload | None = None
    kv_cache: KVCacheUpdatePayload | None = None
    system: SystemUpdatePayload | None = None
    recent_requests: list[RequestUpdatePayload] = msgspec.field(default_factory=list)
    recent_errors: list[ErrorUpdatePayload] = msgspec.field(default_factory=list)


#: Any payload Struct defined above.
Payload: TypeAlias = (
    MetricsUpdatePayload
    | ModelUpdatePayload
    | RequestUpdatePayload
    | ErrorUpdatePayload
    | SystemUpdatePayload
    | RateLimitUpdatePayload
    | CostUpdatePayload
    | KVCacheUpdatePayload
    | HeartbeatPayload
    | PongPayload
    | SubscribePayload
    | ErrorPayload
    | InitPayload
)


class WebSocketMessage(msgspec.Struct, Generic[P], kw_only=True, omit_defaults=True):
    """The envelope of every message, in both directions.

    ``type`` is a :class:`MessageType` for every known type and the raw string
    for an unknown one (``is_known`` tells which); ``data`` is the typed
    payload, or the raw JSON value for an unknown type. ``sequence`` is set on
    stream messages only; ``timestamp`` is integer milliseconds.
    """

    type: str
    timestamp: int = msgspec.field(default_factory=now_ms)
    data: P
    sequence: int | None = None
    metadata: dict[str, Any] | None = None

    @property
    def is_known(self) -> bool:
        """Whether ``type`` is one this protocol version defines."""
        return isinstance(self.type, MessageType)

    @property
    def is_stream(self) -> bool:
        """Whether this is a stream message (carries a sequence for everyone)."""
        return self.type in STREAM_TYPES


class CheckedMessage(WebSocketMessage[P], Generic[P], kw_only=True, omit_defaults=True):
    """A stream message whose builder has checked every payload value itself.

    The same envelope on the wire; the type only records a promise: its
    ``data`` is the type's payload Struct, and every value in it was checked,
    when it was recorded, against at least what the clients' decoder
    enforces (ranges, finite numbers, required fields). The hub therefore
    encodes it without decoding it again, which it does for any other
    message. Only a builder that keeps that promise makes one: the
    collector, for the events and states it builds straight from the values
    it validated (``InvalidMetricError`` in the recording thread). Anything
    else publishes a :class:`WebSocketMessage` and is checked by the hub.
    """


def make_message(
    type: MessageType | str,
    data: P,
    *,
    sequence: int | None = None,
    metadata: dict[str, Any] | None = None,
    timestamp: int | None = None,
) -> WebSocketMessage[P]:
    """Build an envelope, stamping it with the current time unless given one."""
    return WebSocketMessage(
        type=type,
        timestamp=now_ms() if timestamp is None else timestamp,
        data=data,
        sequence=sequence,
        metadata=metadata,
    )
