"""The FakeAI dialect adapter, on frames as FakeAI 0.3.2 sends them."""

from __future__ import annotations

import pytest

from metricstream.client import FakeAIAdapter
from metricstream.client._fakeai import FAKEAI_PING, is_fakeai_greeting
from metricstream.exceptions import ProtocolError
from metricstream.protocol import (
    InitPayload,
    KVCacheUpdatePayload,
    MessageType,
    MetricsUpdatePayload,
    decode,
)

# Captured from a live FakeAI 0.3.2 server after three chat completions.
HISTORICAL = (
    '{"type": "historical_data", "timestamp": 1795837936.277273, "data": {"throughput": '
    '{"requests_per_sec": {"/v1/chat/completions": 15.68}, "responses_per_sec": '
    '{"/v1/chat/completions": 16.1}, "tokens_per_sec": {"/v1/chat/completions": 164.6}, '
    '"total_requests_per_sec": 15.68, "total_tokens_per_sec": 164.6}, "latency": '
    '{"/v1/chat/completions": {"avg": 4.34, "min": 2.63, "max": 5.26, "p50": 5.14, '
    '"p90": 5.23, "p99": 5.25}}, "cache": {}, "queue": {"active_streams": 0, "queue_depth": 0}, '
    '"streaming": {"active_streams": 0, "completed_streams": 0, "failed_streams": 0}, '
    '"error": {"errors_per_sec": {}, "total_errors_per_sec": 0}}}'
)
UPDATE = (
    '{"type": "metrics_update", "timestamp": 1795837937.38, "data": {"throughput": '
    '{"responses_per_sec": {"/a": 3.0, "/b": 1.0}, "total_requests_per_sec": 4.0, '
    '"total_tokens_per_sec": 40.0}, "latency": {"/a": {"avg": 10.0}, "/b": {"avg": 50.0}}, '
    '"cache": {"hit_rate": 0.5, "total_lookups": 8, "cache_hits": 6}, '
    '"queue": {"active_streams": 2, "queue_depth": 2}, '
    '"error": {"errors_per_sec": {"/a": 1.0}, "total_errors_per_sec": 1.0}}, '
    '"deltas": {"throughput": {"total_requests_per_sec": -1.4}}}'
)

adapter = FakeAIAdapter()


def test_historical_data_becomes_a_full_snapshot() -> None:
    [init] = adapter.adapt(HISTORICAL)
    assert init.type is MessageType.INIT
    assert init.timestamp == 1795837936277
    assert init.sequence is None
    assert init.metadata is not None
    assert init.metadata["resumed"] is False
    assert init.metadata["fakeai"]["queue"] == {"active_streams": 0, "queue_depth": 0}
    assert isinstance(init.data, InitPayload)
    metrics = init.data.metrics
    assert isinstance(metrics, MetricsUpdatePayload)
    assert metrics.requests_per_second == 15.68
    assert metrics.tokens_per_second == 164.6
    assert metrics.avg_latency_ms == 4.34
    assert metrics.error_rate == 0.0
    assert init.data.kv_cache is None


def test_metrics_update_is_weighted_and_brings_the_cache() -> None:
    metrics_msg, cache_msg = adapter.adapt(UPDATE)
    assert metrics_msg.type is MessageType.METRICS_UPDATE
    metrics = metrics_msg.data
    assert metrics.avg_latency_ms == pytest.approx((10.0 * 3 + 50.0 * 1) / 4)
    assert metrics.error_rate == pytest.approx(25.0)
    assert metrics.active_connections == 2
    assert cache_msg.type is MessageType.KV_CACHE_UPDATE
    assert cache_msg.data == KVCacheUpdatePayload(
        cache_hits=6,
        cache_misses=2,
        hit_rate=75.0,
        cache_size_bytes=0,
        cache_entries=0,
        evictions=0,
        avg_lookup_time_ms=0.0,
    )


def test_adapted_messages_survive_the_native_codec() -> None:
    from metricstream.protocol import encode

    for frame in (HISTORICAL, UPDATE):
        for message in adapter.adapt(frame):
            assert decode(encode(message)).data == message.data


def test_control_frames() -> None:
    [pong] = adapter.adapt('{"type": "pong", "timestamp": 1795837938.389}')
    assert pong.type is MessageType.PONG
    assert pong.data.server_time == 1795837938389
    [error] = adapter.adapt(
        '{"type":"error","timestamp":1.5e9,"message":"Unknown message type: x"}'
    )
    assert error.type is MessageType.ERROR
    assert error.data.code == "server_error"
    assert error.data.message == "Unknown message type: x"
    [sub] = adapter.adapt(
        '{"type":"subscribed","filters":{"endpoints":[],"models":["x"],"metric_types":["all"]}}'
    )
    assert sub.type is MessageType.SUBSCRIBED
    assert sub.data.models == ["x"]
    [unsub] = adapter.adapt('{"type":"unsubscribed","timestamp":1.5e9}')
    assert unsub.type is MessageType.SUBSCRIBED
    assert unsub.data.models is None
    [other] = adapter.adapt('{"type":"novel","data":{"a":1}}')
    assert not other.is_known
    assert other.data == {"a": 1}


def test_odd_numbers_are_clamped_not_fatal() -> None:
    frame = (
        '{"type":"metrics_update","timestamp":1.5e9,"data":{"throughput":'
        '{"total_requests_per_sec":-1e-9,"total_tokens_per_sec":-2},'
        '"error":{"total_errors_per_sec":5},"latency":{"/a":{"avg":7}},'
        '"cache":{"total_lookups":3,"cache_hits":9}}}'
    )
    metrics_msg, cache_msg = adapter.adapt(frame)
    assert metrics_msg.data.requests_per_second == 0.0
    assert metrics_msg.data.tokens_per_second == 0.0
    assert metrics_msg.data.error_rate == 0.0
    assert metrics_msg.data.avg_latency_ms == 7.0
    assert cache_msg.data.hit_rate == 100.0


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "nope",
        "[]",
        '{"no_type": 1}',
        '{"type": "metrics_update", "data": {"throughput": {"total_requests_per_sec": "fast"}}}',
        '{"type": "metrics_update", "data": {"latency": {"/a": {"avg": null}}}}',
        b"\xff\xfe",
    ],
)
def test_invalid_frames_raise_protocol_error(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        adapter.adapt(frame)


def test_greeting_detection_and_outbound_frames() -> None:
    assert is_fakeai_greeting(HISTORICAL)
    assert not is_fakeai_greeting('{"type":"init","data":{}}')
    assert not is_fakeai_greeting("[1]")
    assert not is_fakeai_greeting(b"\x00")
    assert FAKEAI_PING == b'{"type":"ping"}'
    assert adapter.subscribe_frames(None) == [b'{"type":"unsubscribe"}']
    assert adapter.subscribe_frames(("a", "b"))[1:] == [
        b'{"type":"subscribe","filters":{"model":"a"}}',
        b'{"type":"subscribe","filters":{"model":"b"}}',
    ]


def snapshot_frame(kind: str, at: float, requests: float, tokens: float) -> str:
    return (
        f'{{"type":"{kind}","timestamp":{at},"data":{{"throughput":'
        f'{{"total_requests_per_sec":{requests},"total_tokens_per_sec":{tokens}}}}}}}'
    )


def test_totals_are_integrated_from_the_rates_never_a_confident_zero() -> None:
    fresh = FakeAIAdapter()
    [init] = fresh.adapt(snapshot_frame("historical_data", 100.0, 2.0, 20.0))
    assert init.data.metrics.total_requests == 0  # nothing seen yet
    [first] = fresh.adapt(snapshot_frame("metrics_update", 101.0, 4.0, 40.0))
    assert first.data.total_requests == 3  # (2 + 4) / 2 over 1 s
    assert first.data.total_tokens == 30
    [second] = fresh.adapt(snapshot_frame("metrics_update", 103.0, 4.0, 0.0))
    assert second.data.total_requests == 11  # + 4 req/s over 2 s
    assert second.data.total_tokens == 70
    assert second.metadata is not None
    assert second.metadata["estimated"] == ["total_requests", "total_tokens"]
    assert second.metadata["unknown"] == ["total_cost", "streaming_percentage"]
    # A frame from the past (clock step) adds nothing and moves nothing back.
    [late] = fresh.adapt(snapshot_frame("metrics_update", 102.0, 100.0, 100.0))
    assert late.data.total_requests == 11
    # A reconnection's greeting restarts the integral without the gap.
    [again] = fresh.adapt(snapshot_frame("historical_data", 200.0, 1.0, 1.0))
    assert again.data.metrics.total_requests == 11
    [after] = fresh.adapt(snapshot_frame("metrics_update", 201.0, 1.0, 1.0))
    assert after.data.total_requests == 12
