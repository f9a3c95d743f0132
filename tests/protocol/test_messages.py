"""Every message type round-trips, with exactly the seed's field names."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from metricstream.protocol import (
    PAYLOAD_TYPES,
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
    decode,
    encode,
    make_message,
)

# The seed's TypeScript interfaces (src/services/types.ts), field for field.
SEED_FIELDS: dict[type[Any], set[str]] = {
    MetricsUpdatePayload: {
        "total_requests",
        "total_tokens",
        "total_cost",
        "avg_latency_ms",
        "error_rate",
        "streaming_percentage",
        "requests_per_second",
        "tokens_per_second",
        "active_connections",
    },
    ModelUpdatePayload: {
        "model",
        "request_count",
        "total_prompt_tokens",
        "total_completion_tokens",
        "total_tokens",
        "total_latency_ms",
        "error_count",
        "avg_latency_ms",
        "error_rate",
        "total_cost",
        "tokens_per_second",
    },
    RequestUpdatePayload: {
        "id",
        "model",
        "created",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "latency_ms",
        "streaming",
        "status",
        "error_message",
        "cost",
        "user_id",
        "organization_id",
    },
    ErrorUpdatePayload: {
        "error_type",
        "error_message",
        "model",
        "timestamp",
        "stack_trace",
        "request_id",
        "severity",
    },
    SystemUpdatePayload: {
        "cpu_usage",
        "memory_usage",
        "gpu_usage",
        "gpu_memory_usage",
        "disk_usage",
        "network_in_bytes",
        "network_out_bytes",
        "active_workers",
        "queue_size",
    },
    RateLimitUpdatePayload: {"endpoint", "limit", "remaining", "reset_time", "percentage_used"},
    CostUpdatePayload: {
        "period",
        "total_cost",
        "breakdown_by_model",
        "breakdown_by_service",
        "projected_monthly_cost",
    },
    KVCacheUpdatePayload: {
        "cache_hits",
        "cache_misses",
        "hit_rate",
        "cache_size_bytes",
        "cache_entries",
        "evictions",
        "avg_lookup_time_ms",
    },
    HeartbeatPayload: {"server_time", "uptime_seconds", "client_time"},
}

# Fields this protocol adds to the seed's payloads. Every one is optional, so
# the seed's TypeScript client and older publishers and clients keep working.
_STREAM_PERCENTILES = {
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p95_ms",
    "itl_p99_ms",
}
_ENGINE_THROUGHPUT = {"prompt_tokens_per_second", "generation_tokens_per_second"}
EXTENSION_FIELDS: dict[type[Any], set[str]] = {
    MetricsUpdatePayload: _STREAM_PERCENTILES | _ENGINE_THROUGHPUT,
    ModelUpdatePayload: _STREAM_PERCENTILES | _ENGINE_THROUGHPUT,
    KVCacheUpdatePayload: {"usage_percentage"},
    CostUpdatePayload: {"projection_available"},
    RequestUpdatePayload: {
        "endpoint",
        "time_to_first_token_ms",
        "inter_token_latency_ms",
        "inter_token_latency_p50_ms",
        "inter_token_latency_p95_ms",
        "time_per_output_token_ms",
        "finish_reason",
    },
}

SEED_OPTIONAL: dict[type[Any], set[str]] = {
    RequestUpdatePayload: {"error_message", "user_id", "organization_id"},
    ErrorUpdatePayload: {"model", "stack_trace", "request_id"},
    SystemUpdatePayload: {"gpu_usage", "gpu_memory_usage"},
}

METRICS = MetricsUpdatePayload(
    total_requests=1000,
    total_tokens=50_000,
    total_cost=25.5,
    avg_latency_ms=150.0,
    error_rate=5.0,
    streaming_percentage=75.0,
    requests_per_second=10.0,
    tokens_per_second=500.0,
    active_connections=5,
)
MODEL = ModelUpdatePayload(
    model="openai/gpt-oss-120b",
    request_count=10,
    total_prompt_tokens=100,
    total_completion_tokens=200,
    total_tokens=300,
    total_latency_ms=1500.0,
    error_count=1,
    avg_latency_ms=150.0,
    error_rate=10.0,
    total_cost=0.25,
    tokens_per_second=30.0,
)
REQUEST = RequestUpdatePayload(
    id="req-1",
    model="openai/gpt-oss-120b",
    created=1_732_780_800.0,
    prompt_tokens=10,
    completion_tokens=20,
    total_tokens=30,
    latency_ms=123.4,
    streaming=True,
    status="success",
    cost=0.001,
    user_id="u1",
)
ERROR = ErrorUpdatePayload(
    error_type="rate_limit",
    error_message="Too many requests",
    model="openai/gpt-oss-120b",
    timestamp=1_732_780_800_000,
    severity="high",
)
SYSTEM = SystemUpdatePayload(
    cpu_usage=12.5,
    memory_usage=40.0,
    disk_usage=70.0,
    network_in_bytes=1,
    network_out_bytes=2,
    active_workers=4,
    queue_size=0,
)
RATE = RateLimitUpdatePayload(
    endpoint="/v1/chat/completions",
    limit=100,
    remaining=40,
    reset_time=1_732_780_860_000,
    percentage_used=60.0,
)
COST = CostUpdatePayload(
    period="hour",
    total_cost=1.5,
    breakdown_by_model={"a": 1.0, "b": 0.5},
    breakdown_by_service={"chat": 1.5},
    projected_monthly_cost=1080.0,
)
KV = KVCacheUpdatePayload(
    cache_hits=90,
    cache_misses=10,
    hit_rate=90.0,
    cache_size_bytes=1 << 20,
    cache_entries=12,
    evictions=3,
    avg_lookup_time_ms=0.2,
)

EXAMPLES: dict[MessageType, Any] = {
    MessageType.METRICS_UPDATE: METRICS,
    MessageType.MODEL_UPDATE: MODEL,
    MessageType.REQUEST_UPDATE: REQUEST,
    MessageType.ERROR_UPDATE: ERROR,
    MessageType.SYSTEM_UPDATE: SYSTEM,
    MessageType.HEARTBEAT: HeartbeatPayload(server_time=1_732_780_800_000, uptime_seconds=12.5),
    MessageType.PONG: PongPayload(client_time=1, server_time=2),
    MessageType.INIT: InitPayload(
        metrics=METRICS,
        models={MODEL.model: MODEL},
        rate_limits={RATE.endpoint: RATE},
        costs=COST,
        kv_cache=KV,
        system=SYSTEM,
        recent_requests=[REQUEST],
        recent_errors=[ERROR],
    ),
    MessageType.RATE_LIMIT_UPDATE: RATE,
    MessageType.COST_UPDATE: COST,
    MessageType.KV_CACHE_UPDATE: KV,
    MessageType.SUBSCRIBE: SubscribePayload(types=["metrics_update"], models=["a"]),
    MessageType.UNSUBSCRIBE: None,
    MessageType.SUBSCRIBED: SubscribePayload(types=None, models=["a"]),
    MessageType.ERROR: ErrorPayload(code="bad_message", message="unknown type 'x'"),
    MessageType.PING: None,
}


def test_message_types_are_the_seeds_eleven_plus_control() -> None:
    seed = {
        "metrics_update",
        "model_update",
        "request_update",
        "error_update",
        "system_update",
        "heartbeat",
        "pong",
        "init",
        "rate_limit_update",
        "cost_update",
        "kv_cache_update",
    }
    control = {"subscribe", "unsubscribe", "subscribed", "error", "ping"}
    assert {t.value for t in MessageType} == seed | control
    assert set(PAYLOAD_TYPES) == set(MessageType)
    assert set(EXAMPLES) == set(MessageType)


@pytest.mark.parametrize(("payload_type", "fields"), SEED_FIELDS.items(), ids=lambda x: str(x))
def test_payload_field_names_are_the_seeds(payload_type: type[Any], fields: set[str]) -> None:
    extensions = EXTENSION_FIELDS.get(payload_type, set())
    assert set(payload_type.__struct_fields__) == fields | extensions
    info = msgspec.inspect.type_info(payload_type)
    assert isinstance(info, msgspec.inspect.StructType)
    optional = {f.name for f in info.fields if not f.required}
    if payload_type is HeartbeatPayload:
        # Both directions share it: every field is optional.
        assert optional == fields
    else:
        assert optional == SEED_OPTIONAL.get(payload_type, set()) | extensions


@pytest.mark.parametrize("payload_type", list(EXTENSION_FIELDS), ids=lambda x: x.__name__)
def test_a_seed_shaped_payload_decodes_and_encodes_without_the_extensions(
    payload_type: type[Any],
) -> None:
    # What the seed's client sends and expects: no extension field at all.
    seed_example = {
        MetricsUpdatePayload: METRICS,
        ModelUpdatePayload: MODEL,
        RequestUpdatePayload: REQUEST,
        KVCacheUpdatePayload: KV,
        CostUpdatePayload: COST,
    }[payload_type]
    obj = msgspec.to_builtins(seed_example)
    assert set(obj) <= SEED_FIELDS[payload_type]
    assert msgspec.convert(obj, payload_type) == seed_example


def test_streaming_timings_must_not_be_negative() -> None:
    obj = msgspec.to_builtins(REQUEST) | {"time_to_first_token_ms": -1.0}
    with pytest.raises(msgspec.ValidationError, match="time_to_first_token_ms"):
        msgspec.convert(obj, RequestUpdatePayload)


@pytest.mark.parametrize("mtype", list(MessageType), ids=str)
def test_every_message_type_round_trips(mtype: MessageType) -> None:
    sequence = 42 if mtype.value.endswith("_update") else None
    message = make_message(mtype, EXAMPLES[mtype], sequence=sequence, metadata={"k": "v"})
    frame = encode(message)
    decoded = decode(frame)
    assert decoded == message
    assert decoded.type is mtype
    assert decoded.is_known
    # And as text, the way a browser sends it.
    assert decode(frame.decode()) == message


def test_envelope_has_the_seeds_shape_and_omits_absent_fields() -> None:
    message = make_message(MessageType.METRICS_UPDATE, METRICS, sequence=7, timestamp=123)
    obj = json.loads(encode(message))
    assert list(obj) == ["type", "timestamp", "data", "sequence"]
    assert obj["type"] == "metrics_update"
    assert obj["data"]["total_requests"] == 1000
    # Optional payload fields left at None are not sent at all.
    request = json.loads(encode(make_message(MessageType.REQUEST_UPDATE, REQUEST)))
    assert "error_message" not in request["data"]
    assert request["data"]["user_id"] == "u1"


def test_make_message_stamps_current_time() -> None:
    before = msgspec.json.decode(encode(make_message("x", None)))["timestamp"]
    assert before > 1_700_000_000_000


def test_is_stream_tells_stream_from_connection_messages() -> None:
    assert make_message(MessageType.MODEL_UPDATE, MODEL).is_stream
    assert not make_message(MessageType.PONG, PongPayload()).is_stream
    assert not WebSocketMessage(type="custom", data=None).is_stream
